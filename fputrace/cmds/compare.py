"""fputrace compare A.ftr B.ftr: two runs side by side, A | B | delta, for
judging a kernel change by its before and after: events per kind, classes
and findings, bytes per component, costs per operation (per VM entry,
context switch, signal; traps per KVM_RUN on arm64), and the kernel
functions whose saves and restores changed most.

Exit status: 0; 1 when a --fail-if expression holds; 4 when A or B is
incomplete or damaged (the comparison covers only what could be read), unless
--allow-partial, or when a --fail-if names a figure a run has as unknown (per
VM entry, in a run without VM entries); 2 for bad input."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from analyzers.run import analyze_run
from fputrace.cmds.runs import EXIT_PARTIAL, add_run_options, count, load
from fputrace.metrics import (
    FAIL_IF_HELP,
    MetricUnknown,
    callsite_events,
    check_gate,
    metrics_of,
    parse_gate,
)
from fputrace.reporters.compare import callsite_rows, metric_rows, render_compare
from fputrace.reporters.text import console

EXIT_GATE = 1

def add_parser(sub: Any) -> None:
    p = sub.add_parser("compare", help="two runs side by side (A | B | delta), with CI gates",
                       description=__doc__, epilog=FAIL_IF_HELP,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("a", type=Path, metavar="A.ftr")
    p.add_argument("b", type=Path, metavar="B.ftr")
    p.add_argument("--fail-if", action="append", default=[], metavar="EXPR",
                   help="exit 1 if EXPR holds (repeatable); grammar below")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--top", type=count, default=10,
                   help="kernel functions that changed most (default 10)")
    p.add_argument("--all", action="store_true",
                   help="also rows that are equal in both runs")
    add_run_options(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    gates = [parse_gate(e) for e in args.fail_if]     # bad expressions before any work
    ra, rb = load(args, args.a), load(args, args.b)
    aa, ab = analyze_run(ra), analyze_run(rb)
    ma, mb = metrics_of(aa), metrics_of(ab)
    try:
        results = [(g, check_gate(g, ma, mb)) for g in gates]
    except MetricUnknown as e:
        # Neither held nor passed: the gate was not judged.
        print(f"fputrace: compare: {e}", file=sys.stderr)
        return EXIT_PARTIAL
    rows = metric_rows(ma, mb, args.all)
    sites = callsite_rows(callsite_events(aa), callsite_events(ab), args.top)
    if args.json:
        json.dump({"a": str(args.a), "b": str(args.b),
                   "kernels": [ra.trace.header.kernel, rb.trace.header.kernel],
                   "metrics": {n: {"a": ma.get(n, 0.0), "b": mb.get(n, 0.0)}
                               for n in sorted(set(ma) | set(mb))},
                   "changed": rows, "functions": sites,
                   "fail_if": [{"expr": g.expr, "holds": held} for g, held in results]},
                  sys.stdout, indent=1, allow_nan=False, default=str)
        sys.stdout.write("\n")
    else:
        render_compare(console(), f"{args.a} ({ra.trace.header.kernel or '-'})",
                       f"{args.b} ({rb.trace.header.kernel or '-'})", rows, sites, results)
    if any(held for _, held in results):
        return EXIT_GATE
    # --allow-partial shows what was read; a gate still never passes on it.
    if gates and not (ra.complete and rb.complete):
        return EXIT_PARTIAL
    return 0


