"""The compiled analysis pass (analyzers/native) against the numpy reference
(analyze_reference): on random traces drawn from small pools of buffers,
CPUs, register contents and flags, so that every class and corner case
occurs, both must give the same answer for every event."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import require
from hypothesis import given, settings
from hypothesis import strategies as st

from analyzers import native
from analyzers.counts import task_identity
from analyzers.ownership import AVX_INIT_HASH, analyze, analyze_reference
from fputrace.trace import format as fmt

INIT = 0xFFFFFFFF8241B5C0
BUFFERS = [0xFFFF888001000040, 0xFFFF888002000040, 0xFFFF888003000040, INIT + 0x40,
           0x7FFFBC735900]
# Weighted by repetition: mostly saves and restores of two task buffers, so
# that chains of operations on one context (where lost and stale states
# arise) are common.
KINDS = [fmt.Kind.XSAVEOPT, fmt.Kind.XRSTOR, fmt.Kind.XRSTOR, fmt.Kind.XRSTOR,
         fmt.Kind.FXSAVE, fmt.Kind.FXRSTOR, fmt.Kind.VM_ENTRY, fmt.Kind.VM_EXIT,
         fmt.Kind.XSETBV, fmt.Kind.XSAVEC]
TASKS = [0xFFFF888100000000, 0xFFFF888100004000]

event = st.fixed_dictionaries({
    "kind": st.sampled_from(KINDS),
    "vcpu": st.integers(0, 1),
    "addr": st.sampled_from([*BUFFERS, BUFFERS[0], BUFFERS[1], BUFFERS[0], BUFFERS[1]]),
    "regs": st.integers(1, 2),
    "after": st.integers(1, 2),
    "avx": st.sampled_from([0, 10, 20]),
    "value": st.sampled_from([3, 7]),
    "xstate_bv": st.sampled_from([3, 7]),
    "task": st.sampled_from(TASKS),
    "flags": st.sets(st.sampled_from([fmt.Flag.MEM_VALID, fmt.Flag.REGS_VALID,
                                      fmt.Flag.REGS_AFTER_VALID, fmt.Flag.KERNEL_SIMD,
                                      fmt.Flag.L2, fmt.Flag.TASK_VALID])),
})


def build(rows: list[dict[str, object]]) -> np.ndarray:
    ev = np.zeros(len(rows), dtype=fmt.EVENT_DTYPE)
    for i, r in enumerate(rows):
        flags = 0
        for f in r["flags"]:  # type: ignore[attr-defined]
            flags |= int(f)
        # Most events carry the common flags, so that most get judged.
        if i % 4:
            flags |= int(fmt.Flag.MEM_VALID | fmt.Flag.REGS_VALID | fmt.Flag.REGS_AFTER_VALID)
        regs, after, avx = int(r["regs"]), int(r["after"]), int(r["avx"])  # type: ignore[call-overload]
        ev[i] = (i, 0xFFFFFFFF81000000 + i, r["task"], r["addr"], r["value"], 7,
                 (after if int(r["kind"]) in (5, 8) else regs) + avx,  # type: ignore[call-overload]
                 after if int(r["kind"]) in (5, 8) else regs,  # type: ignore[call-overload]
                 0, regs, after, r["xstate_bv"], 0, 0, 64, 7, flags, r["vcpu"], r["kind"], 0, 0)
    return ev


@pytest.fixture(autouse=True)
def _native_built() -> None:
    require(native.available(), "build/libfpanalysis.so not built (make setup)")


@settings(max_examples=800, deadline=None)
@given(st.lists(event, min_size=1, max_size=60))
def test_native_pass_equals_reference(rows: list[dict[str, object]]) -> None:
    ev = build(rows)
    ref = analyze_reference(ev, INIT)
    fast = analyze(ev, INIT)
    assert fast.cls.tolist() == ref.cls.tolist()
    assert fast.unknown_reason.tolist() == ref.unknown_reason.tolist()
    assert fast.context_kind.tolist() == ref.context_kind.tolist()
    assert fast.guest_buffers == ref.guest_buffers
    assert [(f.cls, f.event, f.context_buffer, f.last_sync, f.resumed, f.description)
            for f in fast.findings] == [
        (f.cls, f.event, f.context_buffer, f.last_sync, f.resumed, f.description)
        for f in ref.findings]


@settings(max_examples=100, deadline=None)
@given(st.lists(event, min_size=1, max_size=40),
       st.lists(st.tuples(st.integers(0, 39), st.sampled_from(TASKS)), max_size=6))
def test_native_task_identity_equals_reference(rows: list[dict[str, object]],
                                               announcements: list[tuple[int, int]]) -> None:
    ev = build(rows)
    tasks = np.zeros(len(announcements), dtype=fmt.TASK_DTYPE)
    for i, (seq, ptr) in enumerate(sorted(announcements)):
        tasks[i] = (seq, ptr, 100 + i, 100 + i, b"t", 0, 0, 0)
    fast = analyze(ev, INIT, tasks)
    assert fast.task_ident is not None
    assert fast.task_ident.tolist() == task_identity(ev, tasks).tolist()


def test_group_counts_and_sums() -> None:
    # keys 5, 9, 5, 9, 5 with categories 0, 1, 1, 1, 0 and weights 1..5, the
    # third event masked out: key 5 -> counts [2, 0], sums [6, 0]; key 9 ->
    # counts [0, 2], sums [0, 6].
    keys = np.array([5, 9, 5, 9, 5], dtype=np.uint64)
    cats = np.array([0, 1, 1, 1, 0], dtype=np.uint8)
    weights = np.array([1, 2, 3, 4, 5], dtype=np.uint32)
    mask = np.array([True, True, False, True, True])
    k, counts, sums = native.group(keys, cats, 2, weights, mask)
    table = {int(key): (c.tolist(), s.tolist()) for key, c, s in zip(k, counts, sums, strict=True)}
    assert table == {5: ([2, 0], [6, 0]), 9: ([0, 2], [0, 6])}
    # Strided views into a record array work the same way.
    ev = np.zeros(3, dtype=fmt.EVENT_DTYPE)
    ev["pc"] = [7, 7, 8]
    ev["kind"] = [1, 2, 1]
    ev["mem_bytes"] = [10, 20, 30]
    k, counts, sums = native.group(ev["pc"], ev["kind"], 64, ev["mem_bytes"])
    assert dict(zip(k.tolist(), counts[:, 1].tolist(), strict=True)) == {7: 1, 8: 1}
    assert int(sums[0, 2]) == 20
    assert AVX_INIT_HASH != 0


def report_tables(ev: np.ndarray, tasks: np.ndarray, symbols: object, compiled: bool
                  ) -> tuple[object, object]:
    """Counts and costs by the compiled one-pass aggregation or by numpy."""
    from analyzers.costs import compute_costs, costs_from_aggregates
    from analyzers.counts import count_events, counts_from_aggregates

    own = analyze(ev, INIT, tasks, tables=compiled)
    assert own.task_ident is not None
    if compiled:
        agg = own.tables
        assert agg is not None
        return (counts_from_aggregates(agg, len(ev), tasks, symbols),  # type: ignore[arg-type]
                costs_from_aggregates(agg, own, tasks, symbols))  # type: ignore[arg-type]
    return (count_events(ev, tasks, symbols, own.task_ident),  # type: ignore[arg-type]
            compute_costs(ev, tasks, own, symbols, own.task_ident))  # type: ignore[arg-type]


SYMBOLS_TEXT = "ffffffff81000000 T _stext\nffffffff81000010 t save_fpregs_to_fpstate\n"


@settings(max_examples=600, deadline=None)
@given(st.lists(event, min_size=1, max_size=50),
       st.lists(st.tuples(st.integers(0, 49), st.sampled_from(TASKS)), max_size=5))
def test_aggregation_equals_numpy_tables(rows: list[dict[str, object]],
                                         announcements: list[tuple[int, int]]) -> None:
    from fputrace.kernel.symbols import Symbols

    ev = build(rows)
    ev["addr"][ev["kind"] == fmt.Kind.VM_ENTRY] = 0x6370000
    tasks = np.zeros(len(announcements), dtype=fmt.TASK_DTYPE)
    for i, (seq, ptr) in enumerate(sorted(announcements)):
        tasks[i] = (seq, ptr, 100 + i, 100 + i, b"t", 0, 0, 0)
    symbols = Symbols.parse(SYMBOLS_TEXT)
    assert report_tables(ev, tasks, symbols, True) == report_tables(ev, tasks, symbols, False)
