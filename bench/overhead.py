"""Wall-time overhead of the fputrace plugin on whole recordings.

Two scenarios: the demo (kvm-pingpong:200, sparse events) and
fpu-switch:50000 (100,000 context switches that each cross the user/kernel
boundary, dense events). Each boots the same kernel and workload without a
plugin and with fputrace as `record` runs it (task layout, probes,
boundaries). `--compare` adds a plugin that does nothing
(bench/empty-plugin.c: QEMU's plugin machinery by itself) and QEMU's contrib
execlog plugin filtered to the same instructions (what a user would reach
for instead). All runs are interleaved round by round, so that the
machine's noise hits every variant alike.

Per scenario it prints the median and the fastest wall times, the ratio
fputrace / no plugin and the cost per recorded event: the extra wall time
over the plugin-free run divided by the trace's events. On a deterministic
machine every run of a variant does the same work, and the host's noise
can only slow it down, so the fastest runs compare the work itself. The
last line is the worst scenario's ratio, `ratio=X.XX` (target <= 1.10).

`--variant no-icount` adds fputrace without the events' instruction count
(`icount=off`); its line gives the count's cost, fputrace's ratio minus its
own (target <= 0.02 on the demo), from the medians, from the fastest runs,
and as the median of the differences within each round. `--variant
count-floor` adds the empty plugin with and without the same count
(`count=on`: an inline add per block, the least an exact count costs
through the plugin API); its line gives the count's cost there, the floor
for fputrace's. `--variant block-floor` adds the empty plugin doing what
fputrace adds to every block it runs: the same count, and at each block of
kernel code the test for a timed probe's return (returns=on, a conditional
callback that never fires); its line is the floor of fputrace's cost over
the empty plugin, below which no work per event can bring it.

`--variant deterministic` adds fputrace on a deterministic machine (what
`record` runs by default: instruction-counted time, fputrace.record.machine), and
`--variant deterministic-none` the same machine without a plugin; each such
variant's line also gives its ratio to its non-deterministic counterpart.

`--deterministic` runs every variant on the deterministic machine: the
guest then does the same work in every run (its time is its instruction
count), so what is left between runs is the host's noise alone. That is
the machine `record` uses by default, and the way to resolve a difference
of a few percent, such as the instruction count's.

With `--arch arm64` the same runs on the arm64 kernel (VHE); execlog's
filter there is ERET, every MSR and the STP/LDP pairs that the save and
load sequences are made of (execlog matches mnemonics only).

usage: bench/overhead [--arch x86_64|arm64] [--kernel 6.1] [--rounds 3] [--compare]
                      [--deterministic]
                      [--scenario NAME=WORKLOAD ...]
                      [--variant NAME=ARGS | no-icount | count-floor | block-floor
                                 | deterministic
                                 | deterministic-none ...]
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from fputrace.errors import FputraceError
from fputrace.kernel.layout import kernel_cmdline, kernel_layout, resolve_kernel
from fputrace.paths import build_dir, cache_dir
from fputrace.record.machine import MachineSpec, run_machine
from fputrace.record.recorder import build_initramfs, plugin_arguments, plugin_path
from fputrace.record.workloads import parse_workloads
from fputrace.trace.reader import read_trace

DEFAULT_SCENARIOS = ("demo=kvm-pingpong:200", "dense=fpu-switch:50000")

# execlog matches mnemonics by prefix: "xsave" covers xsaveopt/xsavec/xsaves.
EXECLOG_FILTERS = {
    "x86_64": ("xsave", "xrstor", "fxsave", "fxrstor", "xsetbv", "wrmsr", "vmrun"),
    "arm64": ("eret", "msr", "stp", "ldp"),
}


@dataclass
class Variant:
    plugin: str | None  # the -plugin argument, or None for no plugin
    extra: list[str] = field(default_factory=list)  # more QEMU arguments
    deterministic: bool = False
    baseline: str = "none"  # the variant its own ratio is taken against


# The deterministic machine's variants, by name: the same plugin (or none) as
# the variant named second, on a machine that counts instructions.
DETERMINISTIC_VARIANTS = {"deterministic": "fputrace", "deterministic-none": "none"}
# Variants of fputrace by name: its plugin arguments.
NAMED_VARIANTS = {"no-icount": "icount=off"}
# Floors by name: the empty plugin's arguments that do a part of fputrace's
# work per block and nothing else (bench/empty-plugin.c).
FLOOR_VARIANTS = {"count-floor": "count=on", "block-floor": "count=on,returns=on"}


@dataclass
class Scenario:
    name: str
    workload: str
    initramfs: Path
    wall: dict[str, list[float]] = field(default_factory=dict)
    cpu: dict[str, list[float]] = field(default_factory=dict)
    events: int = 0


def build_execlog() -> Path:
    """Build QEMU's contrib execlog plugin from the source fetched by the set-up."""
    sources = sorted((cache_dir() / "qemu-plugin-header").glob("*/execlog.c"))
    if not sources:
        raise FputraceError("execlog.c not in the cache: run 'make setup'")
    src = sources[-1]
    out = build_dir() / "bench" / "libexeclog.so"
    if out.exists() and out.stat().st_mtime >= src.stat().st_mtime:
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    cflags = subprocess.run(["pkg-config", "--cflags", "glib-2.0"], capture_output=True,
                            text=True, check=True).stdout.split()
    subprocess.run(["gcc", "-O2", "-shared", "-fPIC", *cflags, f"-I{src.parent}", "-o",
                    str(out), str(src)], check=True)
    return out


def _cost(wall: dict[str, float], variant: str, without: str) -> float:
    """What variant adds over without, in units of the plugin-free run."""
    return (wall[variant] - wall[without]) / wall["none"]


def _paired_cost(runs: dict[str, list[float]], variant: str, without: str) -> float:
    """The median of _cost() taken within each round: the runs of one round
    follow each other, so a slow spell of the machine lasting a round or
    more falls on both sides of the difference."""
    return statistics.median((a - b) / n for a, b, n in
                             zip(runs[variant], runs[without], runs["none"], strict=True))


def parse_scenario(text: str) -> tuple[str, str]:
    name, sep, workload = text.partition("=")
    if not sep or not name or not workload:
        raise FputraceError(f"--scenario {text!r}: write NAME=WORKLOAD, "
                            "e.g. dense=fpu-switch:50000")
    parse_workloads(workload)  # refuses an unknown workload before anything boots
    return name, workload


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", choices=("x86_64", "arm64"), default="x86_64")
    ap.add_argument("--kernel", default="6.1")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--scenario", action="append", metavar="NAME=WORKLOAD",
                    help="replace the default scenarios (repeatable): "
                         + ", ".join(DEFAULT_SCENARIOS))
    ap.add_argument("--deterministic", action="store_true",
                    help="run every variant on the deterministic machine")
    ap.add_argument("--compare", action="store_true",
                    help="also run an empty plugin and QEMU's execlog")
    ap.add_argument("--variant", action="append", default=[], metavar="NAME=ARG[,ARG...]",
                    help="also run fputrace with these extra plugin arguments "
                         "(repeatable), e.g. no-bounds=boundaries=off; no-icount "
                         "(icount=off); count-floor (the empty plugin counting "
                         "instructions as fputrace does, beside the empty plugin); "
                         "block-floor (the same, and the test for a timed probe's "
                         "return at every kernel block); or "
                         + " / ".join(DETERMINISTIC_VARIANTS)
                         + ": fputrace / no plugin on a deterministic machine")
    args = ap.parse_args()
    if args.rounds < 1:
        raise FputraceError(f"--rounds {args.rounds}: give at least 1")

    target = resolve_kernel(args.kernel, "arm64" if args.arch == "arm64" else "amd64")
    kernel_layout(target)
    with tempfile.TemporaryDirectory(prefix="fputrace-bench-") as tmp_s:
        tmp = Path(tmp_s)
        trace = tmp / "bench.ftr"
        fputrace_plugin = ",".join([str(plugin_path()), *plugin_arguments(target, trace)])
        variants: dict[str, Variant] = {"none": Variant(None),
                                        "fputrace": Variant(fputrace_plugin)}
        for text in args.variant:
            name, sep, extra_args = text.partition("=")
            if name in NAMED_VARIANTS and not sep:
                variants[name] = Variant(f"{fputrace_plugin},{NAMED_VARIANTS[name]}")
                continue
            if name in FLOOR_VARIANTS and not sep:
                variants[name] = Variant(None)  # placed beside the empty plugin below
                continue
            if name in DETERMINISTIC_VARIANTS and not sep and args.deterministic:
                raise FputraceError(f"--variant {name}: with --deterministic every "
                                    "variant runs on the deterministic machine already")
            if name in DETERMINISTIC_VARIANTS and not sep:
                like = DETERMINISTIC_VARIANTS[name]
                variants[name] = Variant(variants[like].plugin, deterministic=True,
                                         baseline=like)
                continue
            if not sep or not name or name in variants:
                raise FputraceError(f"--variant {text!r}: write NAME=ARG[,ARG...] "
                                    "with a new name, or one of "
                                    + ", ".join([*NAMED_VARIANTS, *FLOOR_VARIANTS,
                                                 *DETERMINISTIC_VARIANTS]))
            variants[name] = Variant(f"{fputrace_plugin},{extra_args}")
        empty = str(build_dir() / "libemptyplugin.so")
        floors = [name for name in FLOOR_VARIANTS if name in variants]
        if args.compare or floors:
            variants["empty"] = Variant(empty)
        for name in floors:
            # After "empty" in the order of runs, as the baseline they are taken against.
            del variants[name]
            variants[name] = Variant(f"{empty},{FLOOR_VARIANTS[name]}", baseline="empty")
        if args.compare:
            execlog = build_execlog()
            variants["execlog"] = Variant(
                ",".join([str(execlog), *(f"ifilter={f}" for f in EXECLOG_FILTERS[args.arch])]),
                ["-d", "plugin", "-D", str(tmp / "execlog.log")])

        scenarios: list[Scenario] = []
        for text in args.scenario or DEFAULT_SCENARIOS:
            name, workload = parse_scenario(text)
            initramfs = tmp / f"initramfs-{name}.gz"
            build_initramfs(target, parse_workloads(workload, target.arch), initramfs)
            scenarios.append(Scenario(name, workload, initramfs,
                                      {v: [] for v in variants}, {v: [] for v in variants}))

        print(f"kernel {target.identity}, {args.rounds} rounds, variants "
              + " ".join(variants))
        runs = [(s, v) for s in scenarios for v in variants]
        for i in range(args.rounds):
            shift = i % len(runs)  # rotate so that no variant always runs first
            for scenario, variant in runs[shift:] + runs[:shift]:
                v = variants[variant]
                console = tmp / f"console-{scenario.name}-{variant}.log"
                spec = MachineSpec(target.arch, target.vmlinuz, scenario.initramfs,
                                   kernel_cmdline(target.arch), plugin=v.plugin,
                                   serial_files=[console, tmp / "syms"], extra_args=v.extra,
                                   deterministic=v.deterministic or args.deterministic)
                before = resource.getrusage(resource.RUSAGE_CHILDREN)
                result = run_machine(spec, 900)
                after = resource.getrusage(resource.RUSAGE_CHILDREN)
                cpu_s = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
                if (result.status != "shutdown"
                        or "FPUTRACE-DONE" not in console.read_text(errors="replace")):
                    raise FputraceError(f"{scenario.name}/{variant} run failed: "
                                        f"{result.status} {result.detail}")
                if variant == "fputrace":
                    scenario.events = len(read_trace(trace).events)
                scenario.wall[variant].append(result.wall_s)
                scenario.cpu[variant].append(cpu_s)
                print(f"round {i + 1} {scenario.name:6s} {variant:18s} "
                      f"wall {result.wall_s:7.2f} s  cpu {cpu_s:7.2f} s", flush=True)

        worst = 0.0
        for s in scenarios:
            wall = {k: statistics.median(v) for k, v in s.wall.items()}
            fastest = {k: min(v) for k, v in s.wall.items()}
            cpu = {k: statistics.median(v) for k, v in s.cpu.items()}
            print(f"{s.name} ({s.workload}, {s.events} events):")
            for variant, v in variants.items():
                own = "" if not v.deterministic else \
                    f"  {variant}/{v.baseline}={wall[variant] / wall[v.baseline]:.2f}"
                if variant in NAMED_VARIANTS:
                    own = ("  fputrace costs "
                           f"{_cost(wall, 'fputrace', variant):+.3f} over it "
                           f"(fastest runs: {_cost(fastest, 'fputrace', variant):+.3f}, "
                           f"by round: {_paired_cost(s.wall, 'fputrace', variant):+.3f})")
                elif variant in FLOOR_VARIANTS:
                    own = (f"  costs {_cost(wall, variant, 'empty'):+.3f} over the empty plugin "
                           f"(fastest runs: {_cost(fastest, variant, 'empty'):+.3f}, "
                           f"by round: {_paired_cost(s.wall, variant, 'empty'):+.3f})")
                print(f"  median {variant:18s} wall {wall[variant]:7.2f} s  "
                      f"fastest {fastest[variant]:7.2f} s  "
                      f"cpu {cpu[variant]:7.2f} s  x{wall[variant] / wall['none']:.2f}{own}")
            ratio = wall["fputrace"] / wall["none"]
            per_event_us = (wall["fputrace"] - wall["none"]) / max(s.events, 1) * 1e6
            print(f"  {s.name}: ratio={ratio:.2f} "
                  f"cpu-ratio={cpu['fputrace'] / cpu['none']:.2f} "
                  f"per-event={per_event_us:.2f} us")
            worst = max(worst, ratio)
        print(f"ratio={worst:.2f}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except FputraceError as e:
        print(f"bench/overhead: {e}", file=sys.stderr)
        sys.exit(2)
