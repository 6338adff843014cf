"""fputrace export FILE --format perfetto|csv -o OUT: the analysed trace for
other tools. perfetto: a Chrome JSON trace for the Perfetto UI (per-CPU
ownership slices, saves, restores and traps as instants, VM runs per vCPU,
findings flagged); csv: one row per event with its class, for spreadsheets
and pandas. docs/export.md describes both."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from analyzers.run import analyze_run
from fputrace.cmds.runs import add_run_options, load
from fputrace.errors import FputraceError
from fputrace.reporters.export import WRITERS, export


def add_parser(sub: Any) -> None:
    p = sub.add_parser("export", help="write the analysed trace for Perfetto (JSON) or as CSV",
                       description=__doc__)
    p.add_argument("trace", type=Path)
    p.add_argument("--format", choices=sorted(WRITERS), required=True)
    p.add_argument("-o", "--output", type=Path, required=True)
    add_run_options(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if not args.output.parent.is_dir():
        raise FputraceError(f"-o {args.output}: no directory {args.output.parent}")
    r = load(args, args.trace)
    export(analyze_run(r), args.format, args.output)
    partial = "" if r.complete else ", of an incomplete run: partial"
    print(f"wrote {args.output} ({args.format}, {len(r.trace.events)} events{partial})")
    return 0
