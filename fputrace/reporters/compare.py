"""fputrace compare's output: the rows of two runs' metrics side by side
(A | B | delta | change) and of the kernel functions that changed most, as
JSON rows and as rich tables. Renders only; the metrics are fputrace.metrics'."""

from __future__ import annotations

import math
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from fputrace.metrics import SECTIONS, Metrics, change_pct, section_of


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
    names.sort(key=lambda n: (order.get(section_of(n), len(order)), n))
    out = []
    for n in names:
        va, vb = a.get(n, 0.0), b.get(n, 0.0)
        if va == vb and not all_rows:
            continue
        # An unknown figure (None) has no change.
        pct = None if va is None or vb is None else change_pct(va, vb)
        out.append({"metric": n, "section": section_of(n), "a": va, "b": vb,
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


def render_compare(console: Console, a: str, b: str, rows: list[dict[str, Any]],
                   sites: list[dict[str, Any]], results: list[tuple[Any, bool]]) -> None:
    """The comparison as tables: a and b name the runs (path and kernel)."""
    console.print(escape(f"A: {a}"))
    console.print(escape(f"B: {b}"))
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
