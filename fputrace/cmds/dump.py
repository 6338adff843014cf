"""fputrace dump FILE: the header and every record as text."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from fputrace.cmds.runs import add_run_options, count, load
from fputrace.reporters.dump import dump_lines, header_lines


def add_parser(sub: Any) -> None:
    p = sub.add_parser("dump", help="print a trace's header and records as text")
    p.add_argument("trace", type=Path)
    p.add_argument("--limit", type=count, default=0, help="print at most N events")
    p.add_argument("--header", action="store_true",
                   help="print only the header: the trace's identity, how its run ended "
                        "and every problem found in it")
    add_run_options(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    r = load(args, args.trace)
    out = sys.stdout
    for line in header_lines(r) if args.header else dump_lines(r, args.limit):
        out.write(line + "\n")
    return 0
