"""fputrace report FILE: whether any FPU state was lost or corrupted, and
how much of the saving and restoring was needed. By default a short summary:
the findings, the boundary checks, and the redundancy and cost per
operation; --full adds the tables (per call site, task, vCPU, kind,
component); --json prints everything as one object.

Exit status: 0; 3 when there is a finding (FPU state lost or corrupted, so
CI can gate on it), or when a workload or --run command of the recording
failed its own check (run.meta.json); 4 when the trace is incomplete or damaged (the report
covers only what could be read), unless --allow-partial (fputrace.cmds.runs);
2 for bad input."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from analyzers.run import analyze_run
from fputrace.cmds.runs import add_run_options, count, load
from fputrace.reporters.json_report import analysis_json, counts_json, timeline_json
from fputrace.reporters.text import (
    console,
    render_analysis,
    render_counts,
    render_summary,
    render_timeline,
)

EXIT_FINDINGS = 3


def add_parser(sub: Any) -> None:
    p = sub.add_parser("report", help="FPU ownership, redundant saves/restores, lost state, "
                                      "and counts per kind, task, CPU and function",
                       description=__doc__)
    p.add_argument("trace", type=Path)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--full", action="store_true",
                   help="the full report: every table after the summary's lines")
    p.add_argument("--top", type=count, default=15, help="rows per table (default 15)")
    p.add_argument("--max-findings", type=count, default=50,
                   help="list at most N findings, in trace order (default 50; "
                        "0: all); the counts always cover all")
    p.add_argument("--timeline", type=count, default=0, metavar="N",
                   help="also show the first N intervals of the per-CPU ownership timeline")
    add_run_options(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    r = load(args, args.trace)
    a = analyze_run(r)
    timeline = a.timeline() if args.timeline > 0 else None
    if args.json:
        extra = {"timeline": timeline_json(timeline, args.timeline)} if timeline is not None \
            else {}
        json.dump({**counts_json(r, a.counts), **analysis_json(a, args.max_findings), **extra},
                  sys.stdout,
                  indent=1)
        sys.stdout.write("\n")
    else:
        out = console()
        if args.full:
            render_analysis(out, a, args.top, args.max_findings)
        else:
            render_summary(out, a, args.max_findings)
        if timeline is not None:
            render_timeline(out, timeline, args.timeline)
        if args.full:
            render_counts(out, r, a.counts, args.top)
    found = a.verdict.findings or (a.guest is not None and a.guest.verdict.findings)
    # A run whose own check failed is never reported clean (render says which).
    return EXIT_FINDINGS if found or r.own_check_failures else 0
