"""fputrace check: record and judge in one step, for `git bisect run`.

It records as `record` does (the same options), reports, and exits with
what git bisect reads:
  0    the run is clean;
  1    it has a finding, a --fail-if gate holds, or a workload or --run
       command failed its own check (a lost-state regression looks so);
  125  this commit's kernel could not be recorded or judged (skip it): it
       did not boot or panicked, the recording timed out or failed, or the
       trace is incomplete (unless --allow-partial, and then still never 0),
       or a --fail-if names a figure this run has as unknown (per VM entry,
       with no VM entries);
  128  the command itself is wrong (a bad option, --fail-if, metric or
       --baseline), found before anything boots: git bisect run stops on a
       status above 127, instead of blaming or skipping every commit.
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path
from typing import Any

from analyzers.run import analyze_run
from fputrace.cmds.record import add_record_options, plan_from_args, record_from_args
from fputrace.cmds.runs import add_run_options, describe_run, load
from fputrace.errors import FputraceError
from fputrace.metrics import (
    FAIL_IF_HELP,
    Metrics,
    MetricUnknown,
    check_gate,
    metrics_of,
    parse_gate,
)
from fputrace.trace.run import load_run

EXIT_BAD = 1
EXIT_SKIP = 125
# git bisect run: a status above 127 aborts the bisect.
EXIT_ABORT = 128
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
    # An incomplete trace cannot be judged: skip the commit. A mistake of
    # the user's that only shows later still stops the bisect.
    p.set_defaults(run=run, partial_status=EXIT_SKIP, error_status=EXIT_ABORT)


def _baseline(path: Path) -> Metrics:
    """The baseline's metrics; a baseline that is not whole is the user's
    mistake: gates against it would judge by numbers that are not its own."""
    r = load_run(path)
    if not r.complete:
        raise FputraceError(f"--baseline {describe_run(path, r)}: give a complete recording "
                            "as the baseline")
    return metrics_of(analyze_run(r))


def run(args: argparse.Namespace) -> int:
    try:
        gates = [parse_gate(e) for e in args.fail_if]
        if args.baseline is None and any(g.mode != "value" for g in gates):
            raise FputraceError("--fail-if with +N or N% compares with a baseline: add "
                                "--baseline A.ftr")
        baseline = _baseline(args.baseline) if args.baseline else {}
        plan = plan_from_args(args)
    except FputraceError as e:
        print(f"fputrace: check: {e} (the bisect stops: exit {EXIT_ABORT})", file=sys.stderr)
        return EXIT_ABORT
    try:
        result = record_from_args(args, plan)
    except FputraceError as e:
        print(f"fputrace: check: not judged, skipping: {e}", file=sys.stderr)
        return EXIT_SKIP
    if result.signal:
        return 128 + signal.Signals[result.signal].value
    if result.status not in JUDGED:
        print(f"fputrace: check: not judged ({result.status}: {result.detail}), skipping",
              file=sys.stderr)
        return EXIT_SKIP
    r = load(args, args.output)
    a = analyze_run(r)
    if gates:
        metrics = metrics_of(a)
        try:
            held = [g.expr for g in gates if check_gate(g, baseline, metrics)]
        except MetricUnknown as e:
            print(f"fputrace: check: not judged, skipping: {e}", file=sys.stderr)
            return EXIT_SKIP
        verdict = f"--fail-if {', '.join(held)} holds" if held else "no --fail-if holds"
    else:
        held = [f.kind for f in a.verdict.findings]
        verdict = f"{len(held)} finding(s)" if held else "no finding"
    if result.status == "workload-failed":
        held.append(result.detail)
        verdict += f"; {result.detail} (its own check)"
    print(f"fputrace: check: {verdict} ({args.output})", file=sys.stderr)
    if held:
        return EXIT_BAD
    # --allow-partial judges what was read, but a clean verdict needs all of it.
    return 0 if r.complete else EXIT_SKIP
