"""Record a trace: build the initramfs, boot the kernel under QEMU with the
plugin, and save the trace with what belongs beside it.

For a trace run.ftr the recording writes:
  run.ftr             the trace (docs/trace-format.md)
  run.console.log     the guest console
  run.kallsyms.gz     kernel symbols, plus the guest's /proc/modules and module
                      symbols after the boot and after every workload and command
  run.meta.json       what was run and how it ended (status, partial, workloads)
"""

from __future__ import annotations

import gzip
import json
import re
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from fputrace import __version__
from fputrace.errors import FputraceError
from fputrace.kernel.busybox import applets_busybox, busybox_for
from fputrace.kernel.layout import (
    SERIAL_DEVICE,
    KernelTarget,
    builtin_modules,
    kernel_cmdline,
    kernel_layout,
)
from fputrace.kernel.modules import MODULE_SUFFIXES, ModuleTree, module_bytes, module_name
from fputrace.kernel.probes import fp_core_code, resolve_probes
from fputrace.kernel.probes import plugin_args as probe_args
from fputrace.kernel.seedmod import MODULE_NAME as SEED_MODULE
from fputrace.kernel.seedmod import seed_module_for
from fputrace.paths import build_dir
from fputrace.record.foreign import AddedFile, ForeignRun, busybox_applets, guest_path
from fputrace.record.guest import (
    GUEST_MARK,
    HOST_MEMORY_MB,
    SHARE_MODULES,
    GuestPlan,
    guest_console,
)
from fputrace.record.initramfs import busybox_initramfs
from fputrace.record.machine import (
    MachineSpec,
    deterministic_args,
    qemu_version,
    resolve_deterministic,
    run_machine,
)
from fputrace.record.workloads import WorkloadRun, parse_summary
from fputrace.trace.format import Probe
from fputrace.trace.run import sidecar
from fputrace.trace.symbols import MODULE_LINE, Symbols

MARK = "FPUTRACE"
# Loaded for --run commands when the kernel has them (KVM users need them).
FOREIGN_MODULES = {"x86_64": ("kvm_amd",), "aarch64": ()}  # arm64: KVM is built in


@dataclass
class WorkloadOutcome:
    label: str
    exit_status: int | None = None
    summary: dict[str, str] = field(default_factory=dict)


@dataclass
class RunOutcome:
    """A --run command: how it ended and the last line it printed."""

    command: str
    exit_status: int | None = None
    last_line: str = ""


@dataclass
class RecordResult:
    trace: str
    status: str  # ok, workload-failed, kernel-panic, timeout, qemu-crashed, incomplete
    detail: str
    partial: bool
    kernel: str
    qemu: str
    smp: int
    wall_s: float
    workloads: list[WorkloadOutcome]
    modules: list[str]
    runs: list[RunOutcome] = field(default_factory=list)
    vmlinuz: str = ""  # the kernel image booted (the viewer disassembles from it)
    # module name -> the file it was loaded from, at boot or from --add (the
    # viewer disassembles module code from it)
    module_files: dict[str, str] = field(default_factory=dict)
    modules_dir: str = ""  # the kernel's modules directory, if it has one
    deterministic: bool = False  # the same inputs give the same trace
    deterministic_options: list[str] = field(default_factory=list)  # what QEMU was given
    guest_kernel: str = ""  # the L2 guest's kernel (--guest-kernel), if any
    guest_workloads: list[WorkloadOutcome] = field(default_factory=list)
    signal: str = ""  # status "interrupted": the signal (SIGINT, SIGTERM)
    fputrace_version: str = __version__

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=1) + "\n")


def plugin_path() -> Path:
    p = build_dir() / "libfputrace.so"
    if not p.exists():
        raise FputraceError(f"plugin not built ({p} missing): run 'make setup'")
    return p


def _init_script(modules: list[str], runs: list[WorkloadRun],
                 foreign: list[ForeignRun], tty: str = "ttyS",
                 added: list[AddedFile] | None = None,
                 guest: GuestPlan | None = None, polled: bool = False) -> str:
    """/init. polled: everything it prints goes through the kernel's log
    (/dev/kmsg), whose console writes poll the UART, so that the console
    raises no interrupt (the L2 guest's: fputrace.record.guest.POLLED_CONSOLE)."""
    lines = [
        "#!/bin/sh",
        "mount -t proc proc /proc",
        "mount -t sysfs sys /sys",
        "mount -t devtmpfs dev /dev",
        f"export PATH={guest_path(added or [])}",
    ]
    if polled:
        # One write per line: a record of /dev/kmsg is one line of the console.
        lines += ["exec >/dev/kmsg 2>&1",
                  "relay() { while IFS= read -r line; do echo \"$line\"; done <\"$1\"; }"]
    lines.append(f"echo {MARK}-BOOTED")

    def command(cmd: str) -> list[str]:
        """cmd, then its status in $rc (its output relayed line by line when polled)."""
        if not polled:
            return [cmd, "rc=$?"]
        return [f"{cmd} >/tmp/fputrace-out 2>&1", "rc=$?", "relay /tmp/fputrace-out"]

    for m in modules:
        lines.append(f"insmod /modules/{m}.ko || echo {MARK}-INSMOD-FAILED {m}")
    # Where modules lie and their symbols, for symbolizing module code: after
    # the boot's own loads, and again after every workload and command, since
    # a command may load (or unload) modules (fputrace.trace.symbols). Not
    # from a polled console's kernel: nothing reads its second serial port.
    dump_modules = [] if polled else [
        f"{{ sed 's/^/{MODULE_LINE}/' /proc/modules; grep '\\[' /proc/kallsyms; }}"
        f" >> /dev/{tty}1"]
    if not polled:
        lines.append(f"stty -F /dev/{tty}1 raw -echo")
    lines += dump_modules
    for r in runs:
        lines += [
            f"echo {MARK}-WORKLOAD-BEGIN {r.label}",
            *command(" ".join([f"/workloads/{r.workload.binary_name}", str(r.count),
                               *r.workload.args])),
            f"echo {MARK}-WORKLOAD-END {r.label} $rc",
        ]
    if runs:
        lines += dump_modules
    for i, f in enumerate(foreign):
        lines += [f"echo {MARK}-RUN-BEGIN {i}", *command(f.script),
                  f"echo {MARK}-RUN-END {i} $rc", *dump_modules]
    if guest is not None:
        lines += [*guest.script(), *dump_modules]
    lines += [f"echo {MARK}-DONE", "poweroff -f", ""]
    return "\n".join(lines)


KERNEL_MESSAGE = re.compile(r"^\[\s*\d+\.\d+\] ")


@dataclass
class ConsoleSummary:
    workloads: list[WorkloadOutcome]
    runs: list[RunOutcome]
    done: bool
    panic: bool
    insmod_failed: list[str]


def _parse_console(text: str, runs: list[WorkloadRun], foreign: list[ForeignRun]
                   ) -> ConsoleSummary:
    outcomes = {r.label: WorkloadOutcome(r.label) for r in runs}
    run_outcomes = [RunOutcome(f.command) for f in foreign]
    current: str | None = None
    in_run: int | None = None
    done = panic = False
    insmod_failed: list[str] = []
    for line in text.splitlines():
        s = line.strip()
        if GUEST_MARK in s:
            continue  # the L2 guest's console (guest_outcome())
        if "Kernel panic" in s:
            panic = True
        if s.startswith(f"{MARK}-RUN-BEGIN "):
            in_run = int(s.split()[1])
            continue
        if s.startswith(f"{MARK}-RUN-END "):
            parts = s.split()
            if len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit() and \
                    int(parts[1]) < len(run_outcomes):
                run_outcomes[int(parts[1])].exit_status = int(parts[2])
            in_run = None
            continue
        if in_run is not None and in_run < len(run_outcomes) and s and \
                not KERNEL_MESSAGE.match(s):
            run_outcomes[in_run].last_line = s[:500]
        if s.startswith(f"{MARK}-WORKLOAD-BEGIN "):
            current = s.split()[1]
        elif s.startswith(f"{MARK}-WORKLOAD-END "):
            parts = s.split()
            if len(parts) == 3 and parts[1] in outcomes and parts[2].isdigit():
                outcomes[parts[1]].exit_status = int(parts[2])
            current = None
        elif s.startswith(f"{MARK}-INSMOD-FAILED "):
            insmod_failed.append(s.split()[1])
        elif s == f"{MARK}-DONE":
            done = True
        elif current in outcomes and (parsed := parse_summary(s)) is not None:
            outcomes[current].summary = parsed[1]
    return ConsoleSummary(list(outcomes.values()), run_outcomes, done, panic, insmod_failed)


def build_initramfs(target: KernelTarget, runs: list[WorkloadRun], path: Path,
                    added: list[AddedFile] | None = None,
                    foreign: list[ForeignRun] | None = None,
                    extra_modules: list[str] | None = None,
                    guest: GuestPlan | None = None,
                    alongside: list[WorkloadRun] | None = None,
                    polled: bool = False) -> dict[str, Path]:
    """Write the initramfs that loads the modules the workloads need (and
    extra_modules, --module) and runs them, then the --run commands with the
    --add files under /added; return the modules loaded at boot, by name in
    load order, with the files they came from."""
    added = added or []
    foreign = foreign or []
    busybox = busybox_for(target.arch)
    for r in [*runs, *(alongside or [])]:
        if not r.binary.exists():
            raise FputraceError(f"workload {r.workload.name} not built ({r.binary} missing): "
                                "run 'make setup'")
    # What the kernel has built in needs no loading (CONFIG_KVM_AMD=y).
    builtin = builtin_modules(target)
    wanted = sorted({m for r in runs for m in r.modules} | set(extra_modules or []))
    wanted = [m for m in wanted if m.replace("-", "_") not in builtin]
    kvm_modules = [m for m in FOREIGN_MODULES[target.arch] if m not in builtin]
    if (foreign or guest) and kvm_modules and target.modules_dir is not None and \
            ModuleTree(target.modules_dir).has(kvm_modules[0]):
        # The user's programs may be KVM users, the guest's VMM is: /dev/kvm.
        wanted = sorted({*wanted, *kvm_modules})
    if guest is not None:
        wanted = sorted({*wanted, *(m for m in SHARE_MODULES[target.arch]
                                    if m not in builtin)})
    module_files: list[Path] = []
    if wanted:
        if target.modules_dir is None:
            raise FputraceError(f"kernel modules {', '.join(wanted)} are wanted: pass "
                                "--modules DIR with the kernel's modules")
        module_files = ModuleTree(target.modules_dir).load_order(wanted)
    names = [module_name(p) for p in module_files]
    if any(r.workload.seed_module for r in runs):
        module_files.append(seed_module_for(target.debian, target.modules_dir,
                                            target.state_dir))
        names.append(SEED_MODULE)
    ramfs = busybox_initramfs(busybox, _init_script(names, runs, foreign,
                                                    SERIAL_DEVICE[target.arch], added, guest,
                                                    polled),
                              busybox_applets(applets_busybox()) if foreign else None)
    for p, n in zip(module_files, names, strict=True):
        # Decompressed here, so busybox insmod needs no xz/zstd support.
        ramfs.file(f"modules/{n}.ko", module_bytes(p))
    for r in [*runs, *(alongside or [])]:
        ramfs.copy(f"workloads/{r.workload.binary_name}", r.binary, 0o755)
    for f in added:
        ramfs.copy(f.guest, f.src)
    ramfs.write(path)
    return dict(zip(names, module_files, strict=True))


def added_modules(added: list[AddedFile]) -> dict[str, Path]:
    """The kernel modules among the --add files, by module name: a command
    may load them."""
    return {module_name(f.src): f.src for f in added if f.src.name.endswith(MODULE_SUFFIXES)}


def plugin_arguments(target: KernelTarget, out: Path) -> list[str]:
    """The plugin's arguments for a kernel: the trace file, the task layout,
    the probes and (arm64) the FP core's code (the kernel's symbols must
    have been collected)."""
    layout = kernel_layout(target)
    symbols = Symbols.load(target.state_dir / "kallsyms")
    probes = resolve_probes(symbols, target.arch)
    fpcode = [f"fpcode={start:#x}:{size:#x}" for start, size in fp_core_code(symbols, target.arch)]
    return [f"out={out}", *layout.plugin_args(), *probe_args(probes), *fpcode,
            *x86_direct_map(target.arch, symbols)]


def x86_direct_map(arch: str, symbols: Symbols) -> list[str]:
    """Where L1's direct map begins, for the plugin's reads of the VMCB (a VM
    exit's code and RIP) and of a guest's memory: page_offset_base where the
    kernel has that variable (arch/x86/mm/kaslr.c leaves it at its initial
    value under nokaslr; it differs with 5-level paging), else the fixed
    4-level base of kernels without it."""
    if arch != "x86_64":
        return []
    dmap_var = symbols.values.get("page_offset_base")
    return [f"dmap_var={dmap_var:#x}" if dmap_var else f"dmap={X86_DIRECT_MAP_L4:#x}"]


MAX_SMP = 16  # guest CPUs; the report's per-CPU tables hold far more


# arch/x86/include/asm/page_64_types.h: __PAGE_OFFSET_BASE_L4, the direct
# map's base when the kernel has no page_offset_base variable
# (CONFIG_DYNAMIC_MEMORY_LAYOUT unset) and so no 5-level paging either.
X86_DIRECT_MAP_L4 = 0xFFFF888000000000


def guest_plugin_arguments(target: KernelTarget, guest: KernelTarget) -> list[str]:
    """The nested guest kernel's probes, as L1's (fputrace.kernel.probes), so
    that its model sees its purposeful changes (fork, exec, signals) too.
    Its context switch, __switch_to(prev, next), names its current task from
    then on: L2's events carry it and its user boundaries are recorded
    (plugin/fputrace.c, gprobe=). Its task layout and L1's direct map
    (x86_direct_map()) let the plugin read each task's pid and comm at the
    next VM exit."""
    symbols = Symbols.load(guest.state_dir / "kallsyms")
    probes = resolve_probes(symbols, guest.arch)
    if not any(p.probe == Probe.CONTEXT_SWITCH for p in probes):
        raise FputraceError(f"guest kernel {guest.identity} has no __switch_to symbol: "
                            "its tasks cannot be followed")
    layout = kernel_layout(guest)
    return [f"gprobe={p.addr:#x}:{int(p.probe)}" + (":q" if p.quiet else "") for p in probes] + [
        f"gtask_pid={layout.task_pid}", f"gtask_tgid={layout.task_tgid}",
        f"gtask_comm={layout.task_comm}"]


def check_smp(smp: int) -> None:
    """The one range of guest CPUs, for the command and the library."""
    if not 1 <= smp <= MAX_SMP:
        raise FputraceError(f"--smp {smp}: give 1 to {MAX_SMP} guest CPUs")


def record(target: KernelTarget, runs: list[WorkloadRun], out: Path, smp: int = 1,
           timeout_s: float = 600, memory_mb: int = 1024, extra_msrs: list[int] | None = None,
           tick: Callable[[str, float], None] | None = None,
           added: list[AddedFile] | None = None,
           foreign: list[ForeignRun] | None = None, kvm_mode: str = "vhe",
           extra_modules: list[str] | None = None,
           deterministic: bool | None = None,
           guest_target: KernelTarget | None = None,
           guest_runs: list[WorkloadRun] | None = None,
           alongside: list[WorkloadRun] | None = None) -> RecordResult:
    """Boot, run the workloads, and leave the trace and its sidecars at `out`.
    deterministic: pin what the guest draws from the host (machine.py), so
    that the same inputs give the same trace event for event; None: where
    the machine allows it (resolve_deterministic). guest_target: an L2
    Linux guest to boot inside, under a VMM in L1 (fputrace.record.guest), running
    guest_runs, with the host's `alongside` workloads in the background."""
    plugin = plugin_path()
    check_smp(smp)
    deterministic = resolve_deterministic(deterministic, smp)
    if tick:
        tick("collecting kernel symbols (first use of this kernel only)", 0.0)
    kernel_layout(target)
    if guest_target is not None:
        kernel_layout(guest_target)
    out.parent.mkdir(parents=True, exist_ok=True)
    console = sidecar(out, "console.log")
    modsyms_tmp = sidecar(out, "modsyms.tmp")
    for stale in (out, console, sidecar(out, "meta.json"), sidecar(out, "kallsyms.gz"),
                  sidecar(out, "guest.kallsyms.gz")):
        stale.unlink(missing_ok=True)
    qemu = qemu_version(target.arch)
    with tempfile.TemporaryDirectory(prefix="fputrace-rec-") as tmp_s:
        tmp = Path(tmp_s)
        guest = None
        if guest_target is not None:
            guest = GuestPlan(guest_target, tmp / "guest-initramfs.gz", target.arch,
                              alongside or [])
            build_initramfs(guest_target, guest_runs or [], guest.initramfs, polled=True)
            memory_mb = max(memory_mb, HOST_MEMORY_MB)
        loaded = build_initramfs(target, runs, tmp / "initramfs.gz", added, foreign,
                                 extra_modules, guest, alongside or [])
        end_file = tmp / "end"
        plugin_args = [*plugin_arguments(target, out.resolve()), f"end={end_file}",
                       f"kernel={target.identity.replace(',', ';')}", f"qemu={qemu}"]
        if guest_target is not None and target.arch == "x86_64":
            plugin_args += guest_plugin_arguments(target, guest_target)
        plugin_args += [f"msr={m:#x}" for m in extra_msrs or []]
        spec = MachineSpec(target.arch, target.vmlinuz, tmp / "initramfs.gz",
                           kernel_cmdline(target.arch, kvm_mode),
                           smp=smp, memory_mb=memory_mb,
                           plugin=",".join([str(plugin), *plugin_args]),
                           serial_files=[console, modsyms_tmp], deterministic=deterministic,
                           extra_args=guest.qemu_args() if guest else [],
                           end_file=end_file, finished=lambda: _console_done(console))

        def machine_tick(elapsed: float) -> None:
            if tick:
                tick(_last_line(console), elapsed)

        started = time.monotonic()
        result = run_machine(spec, timeout_s, machine_tick)
    wall = time.monotonic() - started

    text = console.read_text(errors="replace") if console.exists() else ""
    seen = _parse_console(text, [*runs, *(alongside or [])], foreign or [])
    guest_seen = _parse_console(guest_console(text), guest_runs or [], []) \
        if guest_target is not None else None
    base_syms = target.state_dir / "kallsyms"
    with gzip.open(sidecar(out, "kallsyms.gz"), "wb", compresslevel=6) as z:
        z.write(base_syms.read_bytes())
        if modsyms_tmp.exists():
            z.write(modsyms_tmp.read_bytes())
    modsyms_tmp.unlink(missing_ok=True)
    if guest_target is not None:
        # The guest kernel's own symbols, for its analysis (analyzers.run.guest_view).
        with gzip.open(sidecar(out, "guest.kallsyms.gz"), "wb", compresslevel=6) as z:
            z.write((guest_target.state_dir / "kallsyms").read_bytes())

    if not out.exists():
        raise FputraceError(f"QEMU wrote no trace ({result.status}: {result.detail}); "
                            f"QEMU said: {result.stderr.strip()[-300:] or 'nothing'}")
    status, detail = "ok", "all workloads finished"
    mode_problem = _kvm_mode_problem(text, kvm_mode) if target.arch == "aarch64" else None
    if mode_problem and seen.done:
        status, detail = "kvm-mode-unsupported", mode_problem
    elif result.status in ("timeout", "interrupted"):
        status, detail = result.status, result.detail
    elif seen.panic or result.status == "reset":
        status, detail = "kernel-panic", "the kernel panicked (see the console log)"
    elif result.status == "crashed":
        status, detail = "qemu-crashed", result.detail
    elif seen.insmod_failed:
        status, detail = "workload-failed", f"insmod failed for {', '.join(seen.insmod_failed)}"
    elif not seen.done:
        status, detail = "incomplete", "the guest stopped before its workloads finished"
    else:
        failed = [o.label for o in seen.workloads if o.exit_status != 0]
        failed += [f"--run {r.command!r} (exit {r.exit_status})"
                   for r in seen.runs if r.exit_status != 0]
        if guest_seen is not None:
            failed += [f"L2 {o.label}" for o in guest_seen.workloads if o.exit_status != 0]
            if not guest_seen.done:
                failed.append("the L2 guest (it stopped before its workloads finished)")
        if failed:
            status, detail = "workload-failed", f"workload {', '.join(failed)} failed"
    rec = RecordResult(str(out), status, detail,
                       status not in ("ok", "workload-failed", "kvm-mode-unsupported"),
                       target.identity, qemu, smp, round(wall, 2), seen.workloads, list(loaded),
                       seen.runs, str(target.vmlinuz),
                       {n: str(p.resolve()) for n, p in
                        {**added_modules(added or []), **loaded}.items()},
                       str(target.modules_dir.resolve()) if target.modules_dir else "",
                       deterministic, deterministic_args() if deterministic else [],
                       guest_target.identity if guest_target else "",
                       guest_seen.workloads if guest_seen else [], result.signal)
    rec.save(sidecar(out, "meta.json"))
    return rec


# What arm64 KVM prints once it runs (kvm_arm_init(), arch/arm64/kvm/arm.c).
KVM_MODE_BANNERS = {"vhe": "VHE mode initialized successfully",
                    "nvhe": "Hyp mode initialized successfully"}


def _kvm_mode_problem(console: str, asked: str) -> str | None:
    """Why the arm64 kernel did not run KVM in the mode asked for, or None."""
    ran = [mode for mode, banner in KVM_MODE_BANNERS.items() if banner in console]
    if asked in ran:
        return None
    if ran:
        # e.g. a kernel without kvm-arm.mode=nvhe (before 5.12) stays in VHE.
        return (f"this kernel ran KVM in {ran[0]} mode, not the {asked} mode asked for: "
                f"use --kvm-mode {ran[0]}")
    return ("this kernel did not initialize KVM (no 'kvm [...]: ... initialized "
            "successfully' on its console): see the console log; recording needs a kernel "
            "built with CONFIG_KVM booted at EL2")


def _console_done(console: Path) -> bool:
    """Whether the guest's init got to the end of its script: the guest's
    shutdown is then the end of the run (fputrace.record.machine)."""
    try:
        text = console.read_text(errors="replace")
    except OSError:
        return False
    return _parse_console(text, [], []).done


def _last_line(path: Path) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(0, size - 400))
            lines = f.read().decode(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return lines[-1][:100] if lines else ""
