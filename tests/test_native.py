"""The compiled analysis pass (analyzers/engine/classify.c) against the
oracle (tests/oracle.py): on random traces drawn from small pools of
buffers, CPUs, tasks, register contents, flags and kernel probes, so that
every class, finding and corner case occurs, both must give the same answer
for every event, and the same report tables."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from oracle import classify, compute_costs, count_events

from analyzers.costs import costs_from_aggregates
from analyzers.counts import counts_from_aggregates, task_identity
from analyzers.ownership import analyze
from fputrace.trace import format as fmt
from fputrace.trace.symbols import Symbols

INIT = 0xFFFFFFFF8241B5C0
TASKS = [0xFFFF888100000000, 0xFFFF888100004000]
# Task buffers lie inside their task_struct (as the kernel's do), so that a
# save after a fork probe naming that task is the fork copy.
BUFFERS = [TASKS[0] + 0x1640, TASKS[1] + 0x1640, 0xFFFF888003000040, INIT + 0x40,
           0x7FFFBC735900]
# Weighted by repetition: mostly saves and restores of two task buffers, so
# that chains of operations on one context (where lost and stale states
# arise) are common.
KINDS = [fmt.Kind.XSAVEOPT, fmt.Kind.XSAVEOPT, fmt.Kind.XRSTOR, fmt.Kind.XRSTOR,
         fmt.Kind.XRSTOR, fmt.Kind.FXSAVE, fmt.Kind.FXRSTOR, fmt.Kind.VM_ENTRY,
         fmt.Kind.VM_EXIT, fmt.Kind.XSETBV, fmt.Kind.XSAVEC, fmt.Kind.PROBE,
         fmt.Kind.USER_RETURN, fmt.Kind.USER_ENTRY,
         # arm64's saves and loads go through the same rules
         fmt.Kind.FPSIMD_SAVE, fmt.Kind.FPSIMD_LOAD, fmt.Kind.SVE_SAVE, fmt.Kind.SVE_LOAD]
PROBES = [fmt.Probe.FORK_COPY, fmt.Probe.EXEC_RESET, fmt.Probe.TASK_EXIT,
          fmt.Probe.KFPU_BEGIN, fmt.Probe.SIGRETURN]

event = st.fixed_dictionaries({
    "kind": st.sampled_from(KINDS),
    "vcpu": st.integers(0, 1),
    "addr": st.sampled_from([*BUFFERS, BUFFERS[0], BUFFERS[1], BUFFERS[0], BUFFERS[1]]),
    "regs": st.integers(1, 2),
    "after": st.integers(1, 2),
    "avx": st.sampled_from([0, 10, 20]),
    "prior": st.sampled_from([1, 2, 11]),  # a first save's buffer before it (aux)
    "value": st.sampled_from([3, 7]),
    "xstate_bv": st.sampled_from([3, 7]),
    "task": st.sampled_from(TASKS),
    "probe": st.sampled_from(PROBES),
    "probe_arg": st.sampled_from(TASKS),
    "flags": st.sets(st.sampled_from([fmt.Flag.MEM_VALID, fmt.Flag.REGS_VALID,
                                      fmt.Flag.REGS_AFTER_VALID, fmt.Flag.KERNEL_SIMD,
                                      fmt.Flag.L2, fmt.Flag.TASK_VALID, fmt.Flag.PL_MASK,
                                      fmt.Flag.PRIOR_VALID])),
})


def build(rows: list[dict[str, object]]) -> np.ndarray:
    ev = np.zeros(len(rows), dtype=fmt.EVENT_DTYPE)
    for i, r in enumerate(rows):
        flags = 0
        for f in r["flags"]:  # type: ignore[attr-defined]
            flags |= int(f)
        # Most events carry the common flags, so that most get judged.
        if i % 4:
            flags |= int(fmt.Flag.MEM_VALID | fmt.Flag.REGS_VALID | fmt.Flag.REGS_AFTER_VALID
                         | fmt.Flag.TASK_VALID)
        kind = int(r["kind"])  # type: ignore[call-overload]
        regs, after, avx = int(r["regs"]), int(r["after"]), int(r["avx"])  # type: ignore[call-overload]
        restore = kind in {int(k) for k in fmt.RESTORE_KINDS}
        value, index = r["value"], 0
        if kind == fmt.Kind.PROBE:
            value, index = r["probe_arg"], int(r["probe"])  # type: ignore[call-overload]
        ev[i] = (i, 0xFFFFFFFF81000000 + i, r["task"], r["addr"], value, 7,
                 (after if restore else regs) + avx, after if restore else regs,
                 0, regs, after, r["xstate_bv"], 0 if kind == fmt.Kind.PROBE else r["prior"],
                 index, 64, 7, flags, r["vcpu"], kind, 0, 0, 100 * i, 0)
    ev["addr"][ev["kind"] == fmt.Kind.VM_ENTRY] = 0x6370000
    return ev


@settings(max_examples=1500, deadline=None)
@given(st.lists(event, min_size=1, max_size=60))
def test_compiled_pass_equals_oracle(rows: list[dict[str, object]]) -> None:
    ev = build(rows)
    want = classify(ev, INIT)
    got = analyze(ev, INIT)
    assert got.cls.tolist() == want.cls
    assert got.unknown_reason.tolist() == want.why
    assert got.context_kind.tolist() == want.ctx
    assert got.guest_of.tolist() == want.guest_of
    assert got.guest_buffers == want.guest
    assert got.owner.tolist() == want.owner
    assert got.owner_kind.tolist() == want.owner_ctx
    assert sorted((int(f.event), int(f.last_sync), int(f.resumed), int(f.context_buffer),
                   int(f.kind)) for f in got.findings) == sorted(want.findings)


@settings(max_examples=100, deadline=None)
@given(st.lists(event, min_size=1, max_size=40),
       st.lists(st.tuples(st.integers(0, 39), st.sampled_from(TASKS)), max_size=6))
def test_compiled_task_identity_equals_numpy(rows: list[dict[str, object]],
                                            announcements: list[tuple[int, int]]) -> None:
    ev = build(rows)
    tasks = np.zeros(len(announcements), dtype=fmt.TASK_DTYPE)
    for i, (seq, ptr) in enumerate(sorted(announcements)):
        tasks[i] = (seq, ptr, 100 + i, 100 + i, b"t", 0, 0, 0)
    fast = analyze(ev, INIT, tasks)
    assert fast.task_ident is not None
    assert fast.task_ident.tolist() == task_identity(ev, tasks).tolist()


SYMBOLS_TEXT = "ffffffff81000000 T _stext\nffffffff81000010 t save_fpregs_to_fpstate\n"


@settings(max_examples=600, deadline=None)
@given(st.lists(event, min_size=1, max_size=50),
       st.lists(st.tuples(st.integers(0, 49), st.sampled_from(TASKS)), max_size=5))
def test_tables_filled_during_the_pass_equal_the_oracle(
        rows: list[dict[str, object]], announcements: list[tuple[int, int]]) -> None:
    ev = build(rows)
    tasks = np.zeros(len(announcements), dtype=fmt.TASK_DTYPE)
    for i, (seq, ptr) in enumerate(sorted(announcements)):
        tasks[i] = (seq, ptr, 100 + i, 100 + i, b"t", 0, 0, 0)
    symbols = Symbols.parse(SYMBOLS_TEXT)
    own = analyze(ev, INIT, tasks, tables=True)
    assert own.tables is not None
    assert counts_from_aggregates(own.tables, len(ev), tasks, symbols) == \
        count_events(ev, tasks, symbols)
    assert costs_from_aggregates(own.tables, own, tasks, symbols) == \
        compute_costs(ev, tasks, own, symbols)


def test_python_names_of_the_pass_results_are_the_headers() -> None:
    # analyzers.ownership names the numbers the compiled pass writes; the
    # numbers are fpanalysis.h's (read by cffi from the header itself).
    from analyzers.native import layout
    from analyzers.ownership import Class, ContextKind, FindingKind, Unknown

    lib = layout()
    assert {c.name: int(c) for c in Class} == {
        c.name: getattr(lib, f"FPA_{c.name}") for c in Class}
    assert {u.name: int(u) for u in Unknown if u} == {
        u.name: getattr(lib, f"FPA_{u.name}") for u in Unknown if u}
    assert int(Unknown.NONE) == lib.FPA_WHY_NONE
    assert {k.name: int(k) for k in ContextKind} == {
        k.name: getattr(lib, f"FPA_CTX_{k.name}") for k in ContextKind}
    assert [int(k) for k in FindingKind] == [
        lib.FPA_FINDING_LOST, lib.FPA_FINDING_STALE, lib.FPA_FINDING_FOREIGN_SAVE,
        lib.FPA_FINDING_DROPPED_SAVE]
