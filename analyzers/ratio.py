"""A figure per operation: unknown, never 0, over no operations."""

from __future__ import annotations


def ratio(n: float, d: float, digits: int) -> float | None:
    """n / d rounded to `digits`, or None when there is nothing to divide by
    (a figure per VM entry of a run with no VM entries is unknown, not 0)."""
    return round(n / d, digits) if d else None
