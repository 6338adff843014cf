"""fputrace kernel fetch VERSION [--arch amd64|arm64]
fputrace kernel selftests VERSION [--arch amd64|arm64]"""

from __future__ import annotations

import argparse
from typing import Any

from fputrace.kernel import debian
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
