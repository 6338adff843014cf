"""The workloads that run inside the recorded kernel (sources in workloads/).

A spec is a comma-separated list of NAME[:N]; `all` stands for every workload
but those that need the test module (workloads/seed/: deliberate bugs, and
irq-fpu's hard-interrupt FPU user).
Each workload prints one summary line `NAME: key=value ...` of what it did.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from fputrace.errors import FputraceError
from fputrace.paths import build_dir


@dataclass(frozen=True)
class WorkloadDef:
    name: str
    default_count: int
    modules: tuple[str, ...]  # kernel modules it needs (dependencies found automatically)
    help: str
    seed_module: bool = False  # needs the fputrace-seed test module (workloads/seed/)
    program: str = ""  # the built program, when not named like the workload
    args: tuple[str, ...] = ()  # arguments after the count
    # Trace events per unit of count, rounded up from recordings (for the
    # free-space check before a recording starts).
    events_per_count: int = 20
    # Built for arm64 too (workloads/aarch64/), with the modules it needs
    # there; None: x86_64 only.
    aarch64_modules: tuple[str, ...] | None = None
    x86_64: bool = True  # False: arm64 only


    @property
    def binary_name(self) -> str:
        return self.program or self.name

    def runs_on(self, arch: str) -> bool:
        return (arch == "x86_64" and self.x86_64) or \
            (arch == "aarch64" and self.aarch64_modules is not None)

    def modules_for(self, arch: str) -> tuple[str, ...]:
        return self.modules if arch == "x86_64" else self.aarch64_modules or ()


WORKLOADS: dict[str, WorkloadDef] = {
    w.name: w
    for w in (
        WorkloadDef("kvm-pingpong", 200, ("kvm_amd",),
                    "a KVM guest using FP/SIMD (x87/SSE; arm64 FP) that exits to user "
                    "space N times", events_per_count=30, aarch64_modules=()),
        WorkloadDef("kvm-halt", 20, ("kvm_amd",),
                    "a vCPU halted in the kernel (in-kernel local APIC) and woken by a "
                    "signal N times, KVM_RUN returning EINTR, with a task holding SSE state "
                    "on the same CPU; the guest reports its xmm0 after each halt",
                    events_per_count=60),
        WorkloadDef("kvm-xsave", 20, ("kvm_amd",),
                    "a KVM user setting its guest's XMM registers, FCW and MXCSR with "
                    "KVM_SET_XSAVE before each of N KVM_RUNs, the guest reporting what it "
                    "got", events_per_count=40),
        WorkloadDef("kvm-xsave-seed", 5, ("kvm_amd",),
                    "a deliberate KVM_SET_XSAVE bug of the test module: kvm-xsave with each "
                    "set damaged in the guest's fpstate after its copy (kernels from 5.16)",
                    seed_module=True, program="kvm-xsave", args=("seed",),
                    events_per_count=40),
        WorkloadDef("fpu-switch", 200, (),
                    "two tasks on one CPU holding AVX (arm64: NEON) state, N round trips "
                    "through pipes; on arm64 then SVE state across preemptions",
                    aarch64_modules=()),
        WorkloadDef("signal", 100, (),
                    "FPU state across N signal deliveries and sigreturns, and (x86_64) the "
                    "handler's init state (arm64: also the SVE state across N SIGTRAPs)",
                    aarch64_modules=()),
        WorkloadDef("kernel-fpu", 50, ("algif_hash", "sha256_ssse3"),
                    "in-kernel FPU use: N SHA-256 hashes through AF_ALG (sha256-ssse3.ko; "
                    "arm64: sha2-ce.ko under kernel_neon_begin)",
                    aarch64_modules=("algif_hash", "sha2_ce")),
        WorkloadDef("kvm-hog", 100, ("kvm_amd",),
                    "kvm-pingpong with a CPU-bound task holding SSE state on the same CPU: "
                    "the vCPU thread is preempted inside KVM_RUN",
                    program="kvm-pingpong", args=("hog",)),
        WorkloadDef("fpu-hog", 0, (),
                    "a CPU-bound task holding SSE state through long spins, checking it "
                    "after each: N rounds, or with 0 (the default) until the recording "
                    "stops it (record --alongside: it preempts the L2 guest's vCPU thread)",
                    events_per_count=2),
        WorkloadDef("fork-exec", 20, (),
                    "N rounds of fork, then exec twice before the child runs, checking the "
                    "child's, the parent's and every exec'd image's registers (the init "
                    "state, at its first instruction)", events_per_count=400),
        WorkloadDef("ptrace-fp", 20, (),
                    "a tracer writing its stopped tracee's XMM registers N times "
                    "(PTRACE_SETFPREGS and PTRACE_SETREGSET NT_X86_XSTATE in turn; arm64: "
                    "V0-V31 with PTRACE_SETREGSET NT_PRFPREG), the tracee checking it "
                    "resumes with what was written", events_per_count=60, aarch64_modules=()),
        WorkloadDef("regset-seed", 5, (),
                    "a deliberate ptrace bug of the test module: ptrace-fp with each write "
                    "damaged in the tracee's buffer after it", seed_module=True,
                    program="ptrace-fp", args=("seed",), events_per_count=60),
        WorkloadDef("compat32", 20, (),
                    "a 32-bit process (compatibility mode) running XSAVE, FXSAVE, XRSTOR "
                    "and FXRSTOR itself with absolute and register operands, N rounds, "
                    "checking XMM0-7 across int $0x80 system calls", events_per_count=30),
        WorkloadDef("kvm-sve", 200, (),
                    "arm64: kvm-pingpong with an SVE guest (KVM_ARM_VCPU_SVE) that adds to "
                    "every lane of z2 at its longest vector length before each exit",
                    program="kvm-pingpong", args=("sve",), events_per_count=30,
                    aarch64_modules=(), x86_64=False),
        WorkloadDef("kvm-sve-hog", 20, (),
                    "arm64: a VMM whose guest uses no FP/SIMD, holding an SVE pattern in "
                    "Z and P through a long spin after each of N KVM_RUNs (no system call "
                    "in between), with a task holding its own SVE state on the same CPU",
                    program="kvm-pingpong", args=("svehog",), events_per_count=60,
                    aarch64_modules=(), x86_64=False),
        WorkloadDef("vl-change", 20, (),
                    "arm64: V0-V31 across N prctl(PR_SVE_SET_VL) vector length changes, "
                    "with the task's SVE state saved by a SIGTRAP before each",
                    events_per_count=40, aarch64_modules=(), x86_64=False),
        WorkloadDef("fpu-seed", 5, (),
                    "deliberate FPU bugs of a test module: N calls each of a correct "
                    "kernel_fpu section, XMM use without one, a corrupted saved state, and "
                    "TIF_NEED_FPU_LOAD cleared inside a section (a missed restore)",
                    seed_module=True),
        WorkloadDef("sigframe-seed", 5, (),
                    "a deliberate signal frame bug of the test module: N calls that leave "
                    "the kernel's values in the registers without TIF_NEED_FPU_LOAD and "
                    "send the caller SIGUSR1, whose frame then gets them",
                    seed_module=True, program="fpu-seed", args=("sigframe",)),
        WorkloadDef("sigreturn-seed", 5, (),
                    "a deliberate sigreturn bug of the test module: N SIGUSR1s after whose "
                    "sigreturn the task resumes with XMM0 other than its frame held",
                    seed_module=True, program="fpu-seed", args=("sigreturn",)),
        WorkloadDef("handler-seed", 5, (),
                    "a deliberate signal delivery bug of the test module: N SIGUSR1s whose "
                    "handler starts with XMM0 not in its init state (checked by the "
                    "handler at its first instruction)",
                    seed_module=True, program="fpu-seed", args=("handler",)),
        WorkloadDef("exec-seed", 5, (),
                    "a deliberate exec bug of the test module: N children whose exec hands "
                    "the new program XMM0 not in its init state (checked at its first "
                    "instruction)", seed_module=True, program="fpu-seed", args=("exec",),
                    events_per_count=200),
        WorkloadDef("irq-fpu", 300, (),
                    "a correct hard-interrupt FPU user of the test module (an hrtimer "
                    "every 2 us, inside kernel_fpu_begin/end where irq_fpu_usable() "
                    "allows) while N signals are delivered and returned from, the task "
                    "checking its XMM registers after each", seed_module=True,
                    program="fpu-seed", args=("irqfpu",), events_per_count=80),
    )
}


@dataclass(frozen=True)
class WorkloadRun:
    workload: WorkloadDef
    count: int
    arch: str = "x86_64"

    @property
    def binary(self) -> Path:
        sub = () if self.arch == "x86_64" else (self.arch,)
        return build_dir().joinpath("workloads", *sub, self.workload.binary_name)

    @property
    def modules(self) -> tuple[str, ...]:
        return self.workload.modules_for(self.arch)

    @property
    def label(self) -> str:
        return f"{self.workload.name}:{self.count}"


# The workloads that run a KVM guest of their own: inside an L2 guest they
# would need an L3, which made no progress in 10 minutes under TCG.
KVM_WORKLOADS = frozenset({"kvm-pingpong", "kvm-halt", "kvm-hog", "kvm-sve", "kvm-sve-hog",
                           "kvm-xsave", "kvm-xsave-seed"})


def parse_workloads(spec: str, arch: str = "x86_64", alongside: bool = False,
                    in_guest: bool = False) -> list[WorkloadRun]:
    """alongside: they run in the background while an L2 guest runs
    (record --alongside), so one that runs until stopped (count 0) may.
    in_guest: they run inside the L2 guest, where 'all' leaves out the KVM
    ones (KVM_WORKLOADS) and naming one is refused."""
    runs: list[WorkloadRun] = []
    for item in filter(None, (s.strip() for s in spec.split(","))):
        name, _, count_s = item.partition(":")
        if name == "all":
            if count_s:
                raise FputraceError("'all' takes no count: name the workloads one by one")
            runs += [WorkloadRun(w, w.default_count, arch) for w in WORKLOADS.values()
                     if not w.seed_module and w.default_count and w.runs_on(arch)
                     and not (in_guest and w.name in KVM_WORKLOADS)]
            continue
        if name not in WORKLOADS:
            raise FputraceError(f"unknown workload '{name}': choose from "
                                f"{', '.join([*WORKLOADS, 'all'])}")
        # isascii(): str.isdigit() takes '²' and other digits int() refuses.
        if count_s and not (count_s.isascii() and count_s.isdigit()
                            and 0 < int(count_s) <= 10_000_000):
            raise FputraceError(f"workload count '{count_s}' of {name} is not a whole "
                                "number from 1 to 10000000")
        w = WORKLOADS[name]
        if in_guest and name in KVM_WORKLOADS:
            raise FputraceError(f"{name} runs a KVM guest of its own: inside the L2 guest "
                                "that is an L3, which makes no progress under TCG; run it "
                                "in the host (--workload)")
        if not w.runs_on(arch):
            ours = [n for n, d in WORKLOADS.items() if d.runs_on(arch)]
            raise FputraceError(f"workload {name} is not built for {arch}: choose from "
                                f"{', '.join([*ours, 'all'])}")
        run = WorkloadRun(w, int(count_s) if count_s else w.default_count, arch)
        if not run.count and not alongside:
            raise FputraceError(f"{name} runs until it is stopped: give it a count "
                                f"({name}:1000), or run it with --alongside next to a guest")
        runs.append(run)
    if not runs:
        raise FputraceError("no workload given: try --workload kvm-pingpong:200, or --run")
    return runs


SUMMARY_RE = re.compile(r"^([a-z0-9-]+): ((?:[a-z_]+=\S+ ?)+)$")


def parse_summary(line: str) -> tuple[str, dict[str, str]] | None:
    """('kvm-pingpong', {'kvm_run': '200', ...}) from a workload's summary line."""
    m = SUMMARY_RE.match(line.strip())
    if not m or m.group(1) not in WORKLOADS:
        return None
    return m.group(1), dict(kv.split("=", 1) for kv in m.group(2).split())
