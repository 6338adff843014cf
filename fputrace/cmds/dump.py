"""fputrace dump FILE: the header and every record as text."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from fputrace.render import dump_lines
from fputrace.run import load_run
from fputrace.trace.reader import describe_incomplete


def add_parser(sub: Any) -> None:
    p = sub.add_parser("dump", help="print a trace's header and records as text")
    p.add_argument("trace", type=Path)
    p.add_argument("--limit", type=int, default=0, help="print at most N events")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    r = load_run(args.trace)
    out = sys.stdout
    for line in dump_lines(r, args.limit):
        out.write(line + "\n")
    if not r.trace.complete:
        print(f"fputrace: warning: {describe_incomplete(r.trace)}", file=sys.stderr)
    return 0
