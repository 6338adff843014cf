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
import math
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from analyzers.run import analyze_run
from fputrace.cmds.runs import EXIT_PARTIAL, add_run_options, count, load
from fputrace.metrics import (
    FAIL_IF_HELP,
    Metrics,
    MetricUnknown,
    callsite_events,
    change_pct,
    check_gate,
    metrics_of,
    parse_gate,
)

EXIT_GATE = 1

# The sections of the table, by metric name prefix or name.
SECTIONS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("events per kind", ("events", "events.")),
    ("classes and findings", ("findings", "saves_restores", "necessary", "redundant_save",
                              "redundant_restore", "unknown", "lost_state", "stale_restore",
                              "redundant_save_pct", "redundant_restore_pct",
                              "redundant_bytes_pct")),
    ("bytes moved", ("bytes_moved", "redundant_bytes", "bytes.")),
    ("per operation", ("vm_entry.", "context_switch.", "signal.", "saves_per_",
                       "restores_per_", "bytes_per_", "redundant_save_per_vm_entry",
                       "redundant_restore_per_vm_entry", "kvm_runs", "traps",
                       "guest_traps_per_kvm_run", "host_traps_per_context_switch",
                       "traps_after_own_save", "sve_downgrades",
                       "sve_traps_after_downgrade")),
)


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


def _section(name: str) -> str:
    for title, keys in SECTIONS:
        for k in keys:
            if name == k or (k.endswith((".", "_")) and name.startswith(k)):
                return title
    return "other"


def _fmt(v: float | None) -> str:
    if v is None:
        return "unknown"
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return str(int(v)) if float(v).is_integer() else f"{v:.4g}"


def _delta(a: float | None, b: float | None) -> tuple[str, str]:
    if a is None or b is None:
        return "", ""
    d = b - a
    pct = change_pct(a, b)
    sign = "+" if d > 0 else ""
    return f"{sign}{_fmt(d)}", "" if d == 0 else f"{'+' if pct > 0 else ''}{_fmt(round(pct, 1))}%"


def metric_rows(a: Metrics, b: Metrics, all_rows: bool) -> list[dict[str, Any]]:
    names = sorted(set(a) | set(b))
    order = {t: i for i, (t, _) in enumerate(SECTIONS)}
    names.sort(key=lambda n: (order.get(_section(n), len(order)), n))
    out = []
    for n in names:
        va, vb = a.get(n, 0.0), b.get(n, 0.0)
        if va == vb and not all_rows:
            continue
        # An unknown figure (None) has no change.
        pct = None if va is None or vb is None else change_pct(va, vb)
        out.append({"metric": n, "section": _section(n), "a": va, "b": vb,
                    "delta": None if va is None or vb is None else vb - va,
                    "change_pct": None if pct is None or math.isinf(pct) else round(pct, 2)})
    return out


def callsite_rows(a: dict[str, dict[str, int]], b: dict[str, dict[str, int]], top: int
                  ) -> list[dict[str, Any]]:
    zero = {"events": 0, "redundant": 0, "redundant_bytes": 0}
    rows: list[dict[str, Any]] = []
    for fn in set(a) | set(b):
        ra, rb = a.get(fn, zero), b.get(fn, zero)
        if ra == rb:
            continue
        rows.append({"function": fn, "a": ra["events"], "b": rb["events"],
                     "delta": rb["events"] - ra["events"],
                     "redundant_a": ra["redundant"], "redundant_b": rb["redundant"]})
    rows.sort(key=lambda r: (-abs(int(r["delta"])),
                             -abs(int(r["redundant_b"]) - int(r["redundant_a"])),
                             str(r["function"])))
    return rows[:top]


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
        _render(args, ra.trace.header.kernel, rb.trace.header.kernel, rows, sites, results)
    if any(held for _, held in results):
        return EXIT_GATE
    # --allow-partial shows what was read; a gate still never passes on it.
    if gates and not (ra.complete and rb.complete):
        return EXIT_PARTIAL
    return 0


def _render(args: argparse.Namespace, kernel_a: str, kernel_b: str, rows: list[dict[str, Any]],
            sites: list[dict[str, Any]], results: list[tuple[Any, bool]]) -> None:
    console = Console(emoji=False, highlight=False)
    if not console.is_terminal:
        console = Console(emoji=False, highlight=False, width=160)
    console.print(escape(f"A: {args.a} ({kernel_a or '-'})"))
    console.print(escape(f"B: {args.b} ({kernel_b or '-'})"))
    table = Table(show_edge=False)
    for name in ("metric", "A", "B", "delta", "change"):
        table.add_column(name, justify="left" if name == "metric" else "right")
    section = None
    for r in rows:
        if r["section"] != section:
            section = r["section"]
            table.add_row(f"[bold]{section}[/]", "", "", "", "")
        d, pct = _delta(r["a"], r["b"])
        table.add_row("  " + escape(r["metric"]), _fmt(r["a"]), _fmt(r["b"]), d, pct)
    if rows:
        console.print(table)
    else:
        console.print("every metric is equal in both runs")
    if sites:
        t = Table(title="kernel functions whose saves and restores changed most",
                  title_justify="left", show_edge=False)
        for name in ("function", "A", "B", "delta", "redundant A", "redundant B"):
            t.add_column(name, justify="left" if name == "function" else "right")
        for s in sites:
            t.add_row(escape(s["function"]), str(s["a"]), str(s["b"]),
                      f"{'+' if s['delta'] > 0 else ''}{s['delta']}",
                      str(s["redundant_a"]), str(s["redundant_b"]))
        console.print(t)
    for g, held in results:
        console.print(escape(f"--fail-if {g.expr}: {'HOLDS' if held else 'does not hold'}"))
