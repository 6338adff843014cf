"""fputrace kernel fetch VERSION [--arch amd64|arm64]
fputrace kernel selftests VERSION [--arch amd64|arm64]
fputrace kernel build SERIES [--arch amd64|arm64] [--patch FILE ...] [--config FRAGMENT ...]
fputrace kernel list"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from fputrace.kernel import build, debian
from fputrace.kernel.layout import kernel_layout, resolve_kernel
from fputrace.kernel.selftests import build_selftests


def add_parser(sub: Any) -> None:
    p = sub.add_parser("kernel", help="download and prepare Debian kernels")
    ksub = p.add_subparsers(dest="kernel_command", required=True, metavar="ACTION")
    f = ksub.add_parser("fetch", help="download a Debian kernel into the cache and collect "
                                      "its symbols")
    f.add_argument("version", help=f"kernel series: {', '.join(debian.RELEASES)}")
    f.add_argument("--arch", default="amd64", choices=debian.ARCHES)
    f.add_argument("--refresh", action="store_true",
                   help="update the package lists even if they are recent")
    f.add_argument("--no-symbols", action="store_true",
                   help="only download; collect symbols on first recording")
    f.set_defaults(run=run_fetch)
    s = ksub.add_parser("selftests", help="build the kernel's own FP selftests from the Debian "
                                          "source of a fetched kernel, for record --run")
    s.add_argument("version", help=f"kernel series: {', '.join(debian.RELEASES)}")
    s.add_argument("--arch", default="amd64", choices=debian.ARCHES)
    s.add_argument("--refresh", action="store_true", help="build again even if built before")
    s.set_defaults(run=run_selftests)
    b = ksub.add_parser("build", help="build Debian's kernel source of a series with your "
                                      "patches, for record --kernel NAME")
    b.add_argument("series", help=f"kernel series: {', '.join(debian.RELEASES)}")
    b.add_argument("--arch", default="amd64", choices=tuple(build.KERNEL_ARCHES))
    b.add_argument("--patch", action="append", default=[], type=Path, metavar="FILE",
                   dest="patches", help="a unified diff to apply (-p1), in the order given")
    b.add_argument("--config", action="append", default=[], type=Path, metavar="FRAGMENT",
                   dest="fragments", help="a configuration fragment merged on top")
    b.add_argument("--config-base", default="small", choices=build.BASES,
                   help="small: tinyconfig and what a recording needs, minutes to build "
                        "(default); debian: Debian's own configuration, every module")
    b.add_argument("--name", help="what record --kernel calls it (default: "
                                  "SERIES-ARCH-DIGEST)")
    b.add_argument("--check", action="store_true",
                   help="only check that the patches apply, and build nothing")
    b.set_defaults(run=run_build)
    ls = ksub.add_parser("list", help="the kernels built with 'kernel build'")
    ls.set_defaults(run=run_list)


def run_fetch(args: argparse.Namespace) -> int:
    info = debian.fetch_kernel(args.version, args.arch, refresh=args.refresh)
    print(f"{info.package}: {info.root}")
    if not args.no_symbols:
        layout = kernel_layout(resolve_kernel(args.version, args.arch))
        where = (f"%gs:{layout.current_addr:#x} ({layout.current_symbol})"
                 if layout.current_addr else layout.current_symbol)
        print(f"current task: {where}; task_struct pid@{layout.task_pid} "
              f"tgid@{layout.task_tgid} comm@{layout.task_comm}")
    return 0


def run_selftests(args: argparse.Namespace) -> int:
    root, build = build_selftests(args.version, args.arch, refresh=args.refresh)
    source = f"linux {build.source_version}" + (
        "" if build.exact else f" (the archive does not serve {build.kernel_version})")
    print(f"{build.kernel}: FP selftests built from {source}, "
          f"{len(build.patches)} Debian patches applied")
    for name, programs in build.programs.items():
        print(f"  {root / name}: {' '.join(programs)}")
        if build.failed.get(name):
            print(f"  not built (they do not build in this version): "
                  f"{' '.join(build.failed[name])}")
    if args.arch == "arm64":
        first = next(iter(build.programs))
        # fp-stress (v6.1) starts every test per CPU and vector length; without
        # it, one test at a time runs until a timeout stops it.
        command = ("./fp-stress -t 5" if "fp-stress" in build.programs[first]
                   else "timeout -s TERM 5 ./sve-test")
        print(f"run them with: fputrace record --arch {args.arch} --kernel {args.version} "
              f"--add {root / first} --run 'cd {first} && {command}'")
        return 0
    # Each program prints its own verdict; KVM's need /dev/kvm, which --run
    # commands get (kvm_amd is loaded for them).
    adds = " ".join(f"--add {root / name}" for name in build.programs)
    runs = " ".join(f"--run 'cd {name} && ./{p}'" for name, progs in build.programs.items()
                    for p in progs[:1])
    print(f"run one of them with: fputrace record --kernel {args.version} {adds} {runs}")
    return 0


def run_build(args: argparse.Namespace) -> int:
    patches = tuple(args.patches)
    if args.check:
        version = build.check_patches(args.series, patches)
        print(f"{len(patches)} patches apply to linux {version}")
        return 0
    req = build.BuildRequest(args.series, args.arch, patches, tuple(args.fragments),
                             args.config_base)
    kernel, built_now = build.build_kernel(req, args.name)
    how = f"built in {kernel.seconds:.0f} s" if built_now else \
        f"built before ({kernel.built}, {kernel.seconds:.0f} s)"
    print(f"{kernel.name}: linux {kernel.source_version} ({kernel.release}) {kernel.arch}, "
          f"{len(kernel.patches)} patches, {kernel.base} configuration, {how}")
    arch = " --arch arm64" if kernel.arch == "arm64" else ""
    print(f"record it with: fputrace record{arch} --kernel {kernel.name}")
    return 0


def run_list(args: argparse.Namespace) -> int:
    builds = build.list_builds()
    if not builds:
        print("no kernels built yet: fputrace kernel build SERIES --patch FILE")
        return 0
    width = max(len(b.name) for b in builds)
    for b in builds:
        patches = ", ".join(b.patches) or "no patches"
        print(f"{b.name:<{width}}  {b.arch:<5}  linux {b.source_version:<10}  {b.base:<6}  "
              f"{b.seconds:5.0f} s  {b.built}  {patches}")
    return 0
