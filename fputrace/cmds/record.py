"""fputrace record: boot a kernel under QEMU with the plugin and run workloads."""

from __future__ import annotations

import argparse
import platform
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape

from fputrace.errors import FputraceError
from fputrace.kernel.busybox import DEBIAN_ARCH, applets_busybox
from fputrace.kernel.debian import RELEASES
from fputrace.kernel.layout import KVM_MODES, resolve_kernel
from fputrace.record.foreign import (
    AddedFile,
    ForeignRun,
    busybox_applets,
    check_commands,
    prepare_added,
)
from fputrace.record.machine import deterministic_refusal, resolve_deterministic
from fputrace.record.output import OutputLock, check_output, estimated_trace_bytes
from fputrace.record.recorder import RecordResult, check_smp, record
from fputrace.record.workloads import WORKLOADS, WorkloadRun, parse_workloads
from fputrace.trace.reader import read_trace
from fputrace.trace.run import sidecar

DEFAULT_WORKLOAD = "kvm-pingpong:200"
# Inside an L2 guest: the workloads that need no KVM of their own.
GUEST_DEFAULT_WORKLOAD = "fpu-switch:200,signal:50,fork-exec:5"


def add_parser(sub: Any) -> None:
    p = sub.add_parser("record", help="record the FPU traffic of a kernel running workloads",
                       description="Boot a Linux kernel under QEMU TCG with the fputrace "
                                   "plugin, run workloads in it, and write a trace.")
    add_record_options(p, Path("fputrace.ftr"))
    p.set_defaults(run=run)


def add_record_options(p: Any, default_output: Path) -> None:
    """What to record and how: record's options, which check shares."""
    p.add_argument("--arch", default="x86_64", choices=("x86_64", "arm64"),
                   help="the guest's architecture (default x86_64)")
    p.add_argument("--kvm-mode", default="vhe", choices=KVM_MODES,
                   help="arm64: run KVM with the host at EL2 (vhe, the default) or with "
                        "the host at EL1 and KVM's world switch at EL2 (nvhe)")
    p.add_argument("--kernel", default="6.1",
                   help="Debian series (5.10, 6.1, 6.12), the name of a kernel of "
                        "'fputrace kernel build', or the path of a kernel image (bzImage, "
                        "arm64 Image) (default: 6.1)")
    p.add_argument("--modules", type=Path, help="modules directory of a --kernel PATH build "
                                                "(lib/modules/RELEASE)")
    p.add_argument("--vmlinux", type=Path,
                   help="vmlinux with DWARF, for struct offsets of a kernel without BTF")
    p.add_argument("--workload",
                   help="comma-separated NAME[:N]: " + ", ".join([*WORKLOADS, "all"])
                        + f" (default: {DEFAULT_WORKLOAD}, unless --run is given)")
    p.add_argument("--run", action="append", default=[], metavar="'CMD ARGS'", dest="commands",
                   help="also run this shell command in the guest, after the workloads "
                        "(may repeat); it finds --add files by name")
    p.add_argument("--add", action="append", default=[], type=Path, metavar="PATH",
                   help="copy a static binary, script or directory into the guest's /added "
                        "(may repeat)")
    p.add_argument("--module", action="append", default=[], metavar="NAME", dest="modules_load",
                   help="also load this kernel module, with what it depends on, before the "
                        "workloads (may repeat): e.g. sha2_ce for AF_ALG users")
    p.add_argument("--deterministic", action=argparse.BooleanOptionalAction, default=None,
                   help="pin what the guest draws from the host (instruction-counted "
                        "time, a fixed RTC date, seeded guest randomness), so that the same "
                        "kernel, workloads and QEMU give the same trace event for event "
                        "(default with one CPU; --no-deterministic follows the host clock "
                        "and runs 1.5-1.8x faster)")
    p.add_argument("--guest-kernel", metavar="SERIES|PATH",
                   help="also boot this kernel as an L2 Linux guest of the recorded host, "
                        "under this machine's QEMU run with KVM inside it")
    p.add_argument("--guest-workload", metavar="SPEC",
                   help="the L2 guest's workloads, in --workload's syntax, less the KVM "
                        f"ones ('all': the rest; default {GUEST_DEFAULT_WORKLOAD})")
    p.add_argument("--alongside", metavar="SPEC",
                   help="host workloads run in the background while the L2 guest runs, "
                        "stopped when it ends (e.g. fpu-hog: it preempts the vCPU thread)")
    p.add_argument("--smp", type=int, default=1, help="guest CPUs (default 1)")
    p.add_argument("--memory", type=int, default=1024, help="guest memory in MiB (default 1024)")
    p.add_argument("--timeout", type=float, default=600, help="seconds before giving up "
                                                              "(default 600)")
    p.add_argument("--msr", action="append", default=[], metavar="INDEX",
                   help="also record WRMSR to this MSR (IA32_XFD/XFD_ERR always are)")
    p.add_argument("-o", "--output", type=Path, default=default_output,
                   help=f"trace file (default {default_output}); sidecars go beside it")


def _parse_msr(text: str) -> int:
    try:
        value = int(text, 0)
    except ValueError:
        raise FputraceError(f"--msr {text}: not a number (write 0x1d9 or 473)") from None
    if not 0 <= value <= 0xFFFFFFFF:
        raise FputraceError(f"--msr {text}: MSR indices are 32-bit")
    return value


def run(args: argparse.Namespace) -> int:
    result = record_from_args(args)
    if result.signal:
        return 128 + signal.Signals[result.signal].value  # 130, 143: as the shell says
    return 0 if result.status == "ok" else 1


@dataclass
class RecordPlan:
    """What record_from_args() will record: the options, checked."""

    arch: str
    runs: list[WorkloadRun]
    guest_runs: list[WorkloadRun]
    alongside: list[WorkloadRun]
    added: list[AddedFile]
    foreign: list[ForeignRun]
    msrs: list[int]
    deterministic: bool
    lock: OutputLock


def plan_from_args(args: argparse.Namespace) -> RecordPlan:
    """Every check of the user's options, before anything is fetched or
    booted: a mistake here is the user's (check aborts a bisect on it), and
    costs a second, not a recording. Takes the output's lock."""
    if args.workload is not None and not args.workload.strip():
        raise FputraceError("--workload '': name a workload (e.g. kvm-pingpong:200), or leave "
                            "--workload out")
    spec = args.workload
    if spec is None:
        spec = "" if args.commands else DEFAULT_WORKLOAD
    arch = "aarch64" if args.arch == "arm64" else "x86_64"
    if args.kvm_mode != "vhe" and arch != "aarch64":
        raise FputraceError(f"--kvm-mode {args.kvm_mode} is an arm64 mode: add --arch arm64, "
                            "or leave --kvm-mode out")
    if args.kernel in RELEASES:
        for given, option in ((args.modules, "--modules"), (args.vmlinux, "--vmlinux")):
            if given is not None:
                raise FputraceError(f"{option} {given} belongs to a kernel you built "
                                    f"(--kernel PATH): Debian's {args.kernel} brings its own; "
                                    f"leave {option} out")
    runs = parse_workloads(spec, arch) if spec else []
    if args.guest_kernel is not None and arch != platform.machine():
        # The VMM that L1 runs is this machine's own (fputrace/record/guest.py).
        raise FputraceError(f"--guest-kernel needs an L1 of this machine's architecture "
                            f"({platform.machine()}): L1 runs this machine's own QEMU as "
                            f"the guest's VMM, and {arch} cannot run its binaries")
    if args.guest_workload is not None and args.guest_kernel is None:
        raise FputraceError("--guest-workload needs --guest-kernel: name the L2 guest's kernel, "
                            "e.g. --guest-kernel 6.1")
    guest_runs = parse_workloads(args.guest_workload or GUEST_DEFAULT_WORKLOAD, arch,
                                 in_guest=True) if args.guest_kernel is not None else []
    if args.alongside is not None and args.guest_kernel is None:
        raise FputraceError("--alongside runs next to an L2 guest: add --guest-kernel, "
                            "e.g. --guest-kernel 6.1")
    alongside = parse_workloads(args.alongside, arch, alongside=True) \
        if args.alongside is not None else []
    foreign = []
    added = []
    if args.commands or args.add:
        applets = busybox_applets(applets_busybox())
        added = prepare_added(args.add, arch, applets)
        foreign = check_commands(args.commands, added, applets)
    msrs = [_parse_msr(m) for m in args.msr]
    check_smp(args.smp)                       # before any preparation
    if args.memory < 256:
        raise FputraceError(f"--memory {args.memory}: the guest needs at least 256 MiB")
    if not args.timeout > 0:
        raise FputraceError(f"--timeout {args.timeout}: give a positive number of seconds")
    deterministic = resolve_deterministic(args.deterministic, args.smp)
    check_output(args.output, estimated_trace_bytes(runs, len(foreign)))
    return RecordPlan(arch, runs, guest_runs, alongside, added, foreign, msrs, deterministic,
                      OutputLock(args.output))


def record_from_args(args: argparse.Namespace, plan: RecordPlan | None = None
                     ) -> RecordResult:
    """Record as the options say (checked by plan_from_args() unless `plan`
    is given), telling the user on stderr how it went."""
    plan = plan or plan_from_args(args)
    with plan.lock:
        return _record(args, plan)


def _record(args: argparse.Namespace, plan: RecordPlan) -> RecordResult:
    console = Console(stderr=True, emoji=False, highlight=False, soft_wrap=True)
    arch, runs, foreign = plan.arch, plan.runs, plan.foreign
    if args.deterministic is None and not plan.deterministic:
        console.print(escape(f"note: {deterministic_refusal(args.smp)}; recording with the "
                             "host clock (not reproducible)"))
    target = resolve_kernel(args.kernel, DEBIAN_ARCH[arch], args.modules, args.vmlinux)
    guest_target = resolve_kernel(args.guest_kernel, DEBIAN_ARCH[arch]) \
        if args.guest_kernel is not None else None
    labels = ", ".join([*(r.label for r in runs), *(f"'{f.command}'" for f in foreign)])
    with console.status(f"recording {labels} on {target.identity}") as status:

        def tick(line: str, elapsed: float) -> None:
            status.update(f"[bold]{elapsed:5.1f}s[/] {escape(labels)} on "
                          f"{escape(target.identity)}  [dim]{escape(line)}[/]")

        result = record(target, runs, args.output, smp=args.smp, timeout_s=args.timeout,
                        memory_mb=args.memory, extra_msrs=plan.msrs, tick=tick,
                        added=plan.added, foreign=foreign, kvm_mode=args.kvm_mode,
                        extra_modules=args.modules_load, deterministic=plan.deterministic,
                        guest_target=guest_target, guest_runs=plan.guest_runs,
                        alongside=plan.alongside)
    for w in result.workloads:
        summary = " ".join(f"{k}={v}" for k, v in w.summary.items()) or "no summary printed"
        console.print(escape(f"  {w.label}: exit {w.exit_status}, {summary}"))
    for w in result.guest_workloads:
        summary = " ".join(f"{k}={v}" for k, v in w.summary.items()) or "no summary printed"
        console.print(escape(f"  L2 {w.label}: exit {w.exit_status}, {summary}"))
    for f in result.runs:
        console.print(escape(f"  --run {f.command!r}: exit {f.exit_status}, last line: "
                             f"{f.last_line or '(none)'}"))
    log = sidecar(args.output, "console.log")
    if result.status == "ok":
        console.print("[green]recorded[/] "
                      + escape(f"{args.output} in {result.wall_s:.1f}s (console: {log})"))
        return result
    label = "partial trace" if result.partial else "trace"
    console.print(f"[red]{result.status}[/]: "
                  + escape(f"{result.detail}; {label} kept at {args.output} "
                           f"({_holds(args.output)}; console: {log})"))
    return result


def _holds(path: Path) -> str:
    """How much a kept trace holds, in a few words."""
    try:
        trace = read_trace(path)
    except FputraceError as e:
        return f"unreadable: {e}"
    return f"{len(trace.events)} events, {len(trace.tasks)} task records"
