"""How every command loads a run, with the one policy for a trace that is
cut short or damaged.

Such a trace is read up to what survived (fputrace.trace.reader). The
command works on that and says so on stderr, one line per trace; its exit
status is then 4, whatever it would have been, unless --allow-partial was
given: a CI gate (report's findings, compare --fail-if) never passes on
partial data unnoticed. fputrace.cli applies the status, so that no command
decides it on its own.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from fputrace.trace.reader import describe_incomplete
from fputrace.trace.run import Run, load_run

EXIT_PARTIAL = 4

ALLOW_PARTIAL_HELP = ("work on what could be read of an incomplete or damaged trace and exit "
                      "with the usual status, instead of 4")


def count(text: str) -> int:
    """An argparse type: a whole number, 0 or more (rows, findings, events)."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if n < 0:
        raise argparse.ArgumentTypeError(f"{n} is negative: give 0 or more")
    return n


def add_run_options(p: Any) -> None:
    """The options of every command that loads a run."""
    p.add_argument("--allow-partial", action="store_true", help=ALLOW_PARTIAL_HELP)


def load(args: argparse.Namespace, path: Path) -> Run:
    """Load a run for a command, noting whether it is whole."""
    r = load_run(path)
    if not r.complete:
        hint = "" if getattr(args, "allow_partial", False) else \
            (f" (exit status {getattr(args, 'partial_status', EXIT_PARTIAL)}; "
             "--allow-partial accepts what was read)")
        print(f"fputrace: warning: {describe_run(path, r)}{hint}", file=sys.stderr)
        args.partial_runs = [*getattr(args, "partial_runs", []), path]
    return r


def describe_run(path: Path, r: Run) -> str:
    """One line for a run that is not complete: the trace's problem, else
    its first missing or damaged sidecar, and how many more there are."""
    what = [describe_incomplete(r.trace)] if not r.trace.complete else []
    what += [f"{path}: {p}" for p in r.context_problems]
    more = f" (and {len(what) - 1} more: fputrace dump --header)" if len(what) > 1 else ""
    return what[0] + more


def exit_status(args: argparse.Namespace, status: int) -> int:
    """A command's status under the policy: 4 if it used a partial run,
    unless --allow-partial (check says 125, skip, as git bisect reads it)."""
    if getattr(args, "partial_runs", None) and not getattr(args, "allow_partial", False):
        return int(getattr(args, "partial_status", EXIT_PARTIAL))
    return status
