"""fputrace report FILE: what the trace holds, counted and attributed."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from rich.console import Console

from analyzers.counts import count_events
from fputrace.render import counts_json, render_counts
from fputrace.run import load_run
from fputrace.trace.reader import describe_incomplete


def add_parser(sub: Any) -> None:
    p = sub.add_parser("report", help="counts per kind, task, CPU, L1/L2 and kernel function")
    p.add_argument("trace", type=Path)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--top", type=int, default=15, help="rows per table (default 15)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    r = load_run(args.trace)
    counts = count_events(r.trace.events, r.trace.tasks, r.symbols)
    if args.json:
        json.dump(counts_json(r, counts), sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        console = Console(emoji=False, highlight=False)
        if not console.is_terminal:
            console = Console(emoji=False, highlight=False, width=200)
        render_counts(console, r, counts, args.top)
    if not r.trace.complete:
        print(f"fputrace: warning: {describe_incomplete(r.trace)}", file=sys.stderr)
    return 0
