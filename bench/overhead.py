"""Wall-time overhead of the fputrace plugin on a whole recording.

The same boot and workload runs without a plugin, with fputrace, and with
QEMU's contrib execlog plugin filtered to the same instructions (what a user
would reach for instead), interleaved in one run so that machine noise hits
all alike. fputrace runs as `record` runs it (task layout, probes,
boundaries), and once more with the boundaries off (`boundaries=off`), so
their own cost shows side by side; a plugin that does nothing
(bench/empty-plugin.c) shows what QEMU's plugin machinery costs by itself.
Prints each run's wall time and QEMU's CPU time (user + system, less
sensitive to the machine's other load), the medians, and last
`ratio=X.XX`: fputrace's median wall time over no plugin's (target <= 1.05).

usage: bench/overhead [--kernel 6.1] [--workload kvm-pingpong:200] [--rounds 3]
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from fputrace.errors import FputraceError
from fputrace.kernel.layout import KERNEL_CMDLINE, kernel_layout, resolve_kernel
from fputrace.machine import MachineSpec, run_machine
from fputrace.paths import build_dir, cache_dir
from fputrace.record import build_initramfs, plugin_arguments, plugin_path
from fputrace.workloads import parse_workloads

# execlog matches mnemonics by prefix: "xsave" covers xsaveopt/xsavec/xsaves.
EXECLOG_FILTERS = ("xsave", "xrstor", "fxsave", "fxrstor", "xsetbv", "wrmsr", "vmrun")


def build_execlog() -> Path:
    """Build QEMU's contrib execlog plugin from the source fetched by the set-up."""
    headers = sorted((cache_dir() / "qemu-plugin-header").glob("*/execlog.c"))
    if not headers:
        raise FputraceError("execlog.c not in the cache: run 'make setup'")
    src = headers[-1]
    out = build_dir() / "bench" / "libexeclog.so"
    if out.exists() and out.stat().st_mtime >= src.stat().st_mtime:
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    cflags = subprocess.run(["pkg-config", "--cflags", "glib-2.0"], capture_output=True,
                            text=True, check=True).stdout.split()
    subprocess.run(["gcc", "-O2", "-shared", "-fPIC", *cflags, f"-I{src.parent}", "-o",
                    str(out), str(src)], check=True)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kernel", default="6.1")
    ap.add_argument("--workload", default="kvm-pingpong:200")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()

    target = resolve_kernel(args.kernel)
    kernel_layout(target)
    runs = parse_workloads(args.workload)
    execlog = build_execlog()
    with tempfile.TemporaryDirectory(prefix="fputrace-bench-") as tmp_s:
        tmp = Path(tmp_s)
        build_initramfs(target, runs, tmp / "initramfs.gz")
        variants: dict[str, tuple[str | None, list[str]]] = {
            "none": (None, []),
            "empty": (str(build_dir() / "libemptyplugin.so"), []),
            "fputrace": (",".join([str(plugin_path()),
                                   *plugin_arguments(target, tmp / "bench.ftr")]), []),
            "no-bounds": (",".join([str(plugin_path()),
                                    *plugin_arguments(target, tmp / "bench.ftr"),
                                    "boundaries=off"]), []),
            "execlog": (",".join([str(execlog), *(f"ifilter={f}" for f in EXECLOG_FILTERS)]),
                        ["-d", "plugin", "-D", str(tmp / "execlog.log")]),
        }
        times: dict[str, list[float]] = {v: [] for v in variants}
        cpu: dict[str, list[float]] = {v: [] for v in variants}
        names = list(variants)
        print(f"kernel {target.identity}, workload {args.workload}, {args.rounds} rounds")
        for i in range(args.rounds):
            order = names[i % len(names):] + names[:i % len(names)]
            for name in order:
                plugin, extra = variants[name]
                spec = MachineSpec(target.arch, target.vmlinuz, tmp / "initramfs.gz",
                                   KERNEL_CMDLINE, plugin=plugin,
                                   serial_files=[tmp / f"console-{name}.log", tmp / "syms"],
                                   extra_args=extra)
                before = resource.getrusage(resource.RUSAGE_CHILDREN)
                result = run_machine(spec, 600)
                after = resource.getrusage(resource.RUSAGE_CHILDREN)
                cpu_s = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
                console = (tmp / f"console-{name}.log").read_text(errors="replace")
                if result.status != "shutdown" or "FPUTRACE-DONE" not in console:
                    raise FputraceError(f"{name} run failed: {result.status} {result.detail}")
                times[name].append(result.wall_s)
                cpu[name].append(cpu_s)
                print(f"round {i + 1} {name:9s} wall {result.wall_s:7.2f} s  cpu {cpu_s:7.2f} s",
                      flush=True)
        med = {k: statistics.median(v) for k, v in times.items()}
        med_cpu = {k: statistics.median(v) for k, v in cpu.items()}
        for name in names:
            print(f"median {name:9s} wall {med[name]:7.2f} s  cpu {med_cpu[name]:7.2f} s")
        print(f"cpu: execlog/none={med_cpu['execlog'] / med_cpu['none']:.2f} "
              f"fputrace/none={med_cpu['fputrace'] / med_cpu['none']:.2f}")
        print(f"execlog/none={med['execlog'] / med['none']:.2f}")
        print(f"fputrace without boundaries/none={med['no-bounds'] / med['none']:.2f}")
        print(f"empty plugin/none={med['empty'] / med['none']:.2f} "
              f"cpu={med_cpu['empty'] / med_cpu['none']:.2f}")
        print(f"fputrace/empty plugin={med['fputrace'] / med['empty']:.2f}")
        print(f"fputrace/execlog={med['fputrace'] / med['execlog']:.2f}")
        print(f"ratio={med['fputrace'] / med['none']:.2f}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except FputraceError as e:
        print(f"bench/overhead: {e}", file=sys.stderr)
        sys.exit(2)
