"""fputrace check: record and judge in one step, for `git bisect run`.

It records as `record` does (the same options), reports, and exits with
what git bisect reads: 0 when the run is clean, 1 when it has a finding (or
a --fail-if gate holds), 125 (skip this commit) when the run could not be
judged: the kernel did not boot or panicked, the recording timed out or
failed, or the trace is incomplete (unless --allow-partial). A workload
that reports a mismatch in its own registers is judged: that is what a
lost-state regression looks like.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from fputrace.analysis import analyze_run
from fputrace.cmds.record import add_record_options, record_from_args
from fputrace.cmds.runs import add_run_options, load
from fputrace.errors import FputraceError
from fputrace.metrics import FAIL_IF_HELP, check_gate, metrics_of, parse_gate

EXIT_BAD = 1
EXIT_SKIP = 125
JUDGED = ("ok", "workload-failed")


def add_parser(sub: Any) -> None:
    p = sub.add_parser("check", help="record, report, and exit 0/1/125 for git bisect run",
                       description=__doc__, epilog=FAIL_IF_HELP,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_record_options(p, Path("fputrace-check.ftr"))
    p.add_argument("--fail-if", action="append", default=[], metavar="EXPR",
                   help="exit 1 if EXPR holds instead of on any finding (may repeat; as "
                        "compare's, with this run as B)")
    p.add_argument("--baseline", type=Path, metavar="A.ftr",
                   help="the run that +N and N%% gates compare against")
    add_run_options(p)
    # An incomplete trace cannot be judged: skip the commit.
    p.set_defaults(run=run, partial_status=EXIT_SKIP)


def run(args: argparse.Namespace) -> int:
    gates = [parse_gate(e) for e in args.fail_if]     # bad expressions before any work
    if args.baseline is None and any(g.mode != "value" for g in gates):
        raise FputraceError("--fail-if with +N or N% compares with a baseline: add "
                            "--baseline A.ftr")
    baseline = metrics_of(analyze_run(load(args, args.baseline))) if args.baseline else {}
    try:
        result = record_from_args(args)
    except FputraceError as e:
        print(f"fputrace: check: not judged, skipping: {e}", file=sys.stderr)
        return EXIT_SKIP
    if result.status not in JUDGED:
        print(f"fputrace: check: not judged ({result.status}: {result.detail}), skipping",
              file=sys.stderr)
        return EXIT_SKIP
    a = analyze_run(load(args, args.output))
    if gates:
        metrics = metrics_of(a)
        held = [g.expr for g in gates if check_gate(g, baseline, metrics)]
        verdict = f"--fail-if {', '.join(held)} holds" if held else "no --fail-if holds"
    else:
        held = [f.kind for f in a.verdict.findings]
        verdict = f"{len(held)} finding(s)" if held else "no finding"
    print(f"fputrace: check: {verdict} ({args.output})", file=sys.stderr)
    return EXIT_BAD if held else 0
