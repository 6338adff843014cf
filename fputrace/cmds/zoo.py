"""fputrace zoo [ENTRY ...] [--check-patches] [--list]: real upstream FPU bugs
brought back into Debian kernels (zoo/), each recorded with the bug and
without it; prints the table (fputrace.zoo)."""

from __future__ import annotations

import argparse
import time
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from fputrace import zoo
from fputrace.errors import FputraceError


def add_parser(sub: Any) -> None:
    p = sub.add_parser("zoo", help="build, record and judge the bug zoo's entries")
    p.add_argument("entries", nargs="*", metavar="ENTRY",
                   help="entry names (zoo/ENTRY; default: all)")
    p.add_argument("--check-patches", action="store_true",
                   help="only check that every entry's patches apply to the source the "
                        "cache holds now")
    p.add_argument("--list", action="store_true", help="list the entries and exit")
    p.add_argument("--markdown", action="store_true",
                   help="print the table as Markdown (for the README)")
    p.set_defaults(run=run)


def _select(names: list[str]) -> list[zoo.Entry]:
    every = zoo.entries()
    if not names:
        return every
    by_name = {e.name: e for e in every}
    by_fix = {e.fix: e for e in every}
    out = []
    for n in names:
        e = by_name.get(n) or by_fix.get(n)
        if e is None:
            raise FputraceError(f"no zoo entry '{n}': one of {', '.join(by_name)}")
        out.append(e)
    return out


def _finding_cell(r: zoo.EntryResult) -> str:
    e = r.entry
    if e.not_run:
        return "not run: " + e.not_run
    assert e.expect is not None and r.bug is not None
    hits = r.bug.matching(e.expect)
    if hits:
        return f"{e.expect.kind} ({len(hits)}), names {e.expect.culprit}"
    kinds = sorted({f["kind"] for f in r.bug.findings})
    got = f"{', '.join(kinds)}, not naming {e.expect.culprit}" if kinds else "no finding"
    return f"MISSED: {got} (expected {e.expect.kind})"


def _clean_cell(r: zoo.EntryResult) -> str:
    if r.clean is None:
        return "-"
    if r.clean_ok:
        return "clean, workload passed"
    parts = []
    if r.clean.findings_total:
        kinds = sorted({f["kind"] for f in r.clean.findings})
        parts.append(f"{r.clean.findings_total} findings ({', '.join(kinds)})")
    if not r.clean.workload_ok:
        parts.append(f"workload failed: {r.clean.workload_summary}")
    return "NOT CLEAN: " + "; ".join(parts)


# The summary keys that count what a workload's own check saw go wrong.
SAW = ("mismatch", "changed", "disagree", "not_init")


def _own_cell(run: zoo.RunVerdict | None) -> str:
    if run is None:
        return "-"
    if run.workload_ok:
        return "passed (saw nothing wrong)"
    saw = [kv for kv in run.workload_summary.replace(";", " ").split()
           if "=" in kv and any(w in kv.split("=")[0] for w in SAW)
           and kv.split("=")[1] not in ("0", "")]
    return "failed: " + (" ".join(saw) if saw else run.workload_summary)


def _rows(results: list[zoo.EntryResult]) -> list[list[str]]:
    rows = []
    for r in results:
        e = r.entry
        kernel = f"{e.series} {e.arch}"
        own = _own_cell(r.bug)
        rows.append([f"{e.fix} {e.title}", e.had_bug, kernel, e.workload or "-", own,
                     _finding_cell(r), _clean_cell(r)])
    return rows


HEADERS = ["bug (fix)", "shipped in", "kernel", "trigger", "workload's own verdict",
           "fputrace, bug brought back", "fputrace, without it"]


def run(args: argparse.Namespace) -> int:
    selected = _select(args.entries)
    console = Console(highlight=False)
    if args.list:
        for e in selected:
            state = f"not run: {e.not_run}" if e.not_run else \
                f"{e.workload} -> {e.expect.kind if e.expect else '?'}"
            console.print(escape(f"{e.name}: {e.fix} {e.title} [{e.series} {e.arch}] {state}"))
        return 0
    if args.check_patches:
        for e in selected:
            version = zoo.check_patches(e)
            console.print(escape(f"{e.name}: {len(e.bug) + len(e.clean)} patches apply to "
                                 f"linux {version}"))
        return 0
    t0 = time.monotonic()
    results = []
    for e in selected:
        console.print(escape(f"zoo {e.name}: {e.fix} {e.title}"))
        results.append(zoo.run_entry(e))
    rows = _rows(results)
    if args.markdown:
        print("| " + " | ".join(HEADERS) + " |")
        print("|" + "---|" * len(HEADERS))
        for row in rows:
            print("| " + " | ".join(c.replace("|", "\\|") for c in row) + " |")
    else:
        table = Table(*HEADERS, show_lines=True)
        for row in rows:
            table.add_row(*(escape(c) for c in row))
        console.print(table)
    ran = [r for r in results if not r.entry.not_run]
    failed = [r.entry.name for r in ran if not r.passed]
    console.print(escape(f"{len(ran) - len(failed)} of {len(ran)} entries found and clean "
                         f"without their bug, {len(results) - len(ran)} not run; "
                         f"{time.monotonic() - t0:.0f} s"))
    if failed:
        console.print(escape(f"not as expected: {', '.join(failed)}"))
    return 1 if failed else 0
