"""fputrace kernel fetch VERSION [--arch amd64|arm64]"""

from __future__ import annotations

import argparse
from typing import Any

from fputrace.kernel import debian
from fputrace.kernel.layout import kernel_layout, resolve_kernel


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
