"""The test oracle: the ownership rules and the report's tables computed a
second way, to check the compiled pass (analyzers/engine/classify.c), the
one implementation the analyzers use.

classify() restates the rules of docs/analysis.md event by event in plain
Python, state machine for state machine, with nothing shared with the C code
but the trace format. count_events() and compute_costs() compute the report's
tables with numpy from the per-event results instead of during the pass.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
from contenthash import AVX_INIT_HASH

from analyzers.costs import CLASSES, Costs, _component_bytes, _pct, _per, _rows_from, vcpu_rows
from analyzers.counts import Counts, _counts_from_tables, task_identity, task_label
from analyzers.ownership import (
    INIT_FPSTATE_SPAN,
    Class,
    ContextKind,
    FindingKind,
    Ownership,
    Unknown,
)
from fputrace.trace import format as fmt
from fputrace.trace.symbols import Symbols

M64 = (1 << 64) - 1
USER_LIMIT = 1 << 47
TASK_STRUCT_SPAN = 1 << 16
SAVES = {int(k) for k in fmt.SAVE_KINDS}
RESTORES = {int(k) for k in fmt.RESTORE_KINDS}
F = fmt.Flag


@dataclass
class Cpu:
    last_op: int = -1
    sync: int = 0
    sync_ok: bool = False
    owner: int = 0
    owner_known: bool = False
    owner_ctx: int = 0
    kernel_simd: bool = False
    live: str = "unknown"  # unknown, task, nobody
    live_task: int = 0
    live_since: int = -1
    live_vmcb: int = 0
    fork_parent: int = 0
    fork_child: int = 0
    sigreturn: bool = False  # the live task's sigreturn replaces its registers


@dataclass
class Buf:
    last_op: int = -1
    pending: int = -1  # a restore that overwrote this context's newer registers
    pending_last_sync: int = -1
    pending_sync: int = 0
    holds_vmcb: int = 0


@dataclass
class Result:
    cls: list[int]
    why: list[int]
    ctx: list[int]
    guest_of: list[int]
    guest: dict[int, int]
    owner: list[int]
    owner_ctx: list[int]
    findings: list[tuple[int, int, int, int, int]] = field(default_factory=list)


def _covers(e: Any) -> int:
    if int(e["kind"]) in (fmt.Kind.FXSAVE, fmt.Kind.FXRSTOR):
        return 3
    return int(e["value"]) & int(e["xcr0"])


def vcpu_id(vmcb: int, ident: int) -> int:
    """A vCPU instance: VMCB page and the entering thread's announcement."""
    return ((ident & 0xFFFFFF) << 40) | ((vmcb >> 12) & 0xFFFFFFFFFF)


def fpu_buffer_offset(ev: npt.NDArray[np.void]) -> int:
    """The offset of a task's FPU buffer from its task pointer that more
    than half of the tasks' saves and restores inside their own allocation
    use, or 0."""
    offsets: Counter[int] = Counter()
    for e in ev:
        kind, flags = int(e["kind"]), int(e["flags"])
        off = int(e["addr"]) - int(e["task"])
        if (kind in SAVES or kind in RESTORES) and flags & F.TASK_VALID \
                and not flags & F.L2 and 0 < off < TASK_STRUCT_SPAN:
            offsets[off] += 1
    if not offsets:
        return 0
    off, count = offsets.most_common(1)[0]
    return off if 2 * count > sum(offsets.values()) else 0


def classify(ev: npt.NDArray[np.void], init_fpstate: int | None,
             tasks: npt.NDArray[np.void] | None = None) -> Result:
    n = len(ev)
    fpu_offset = fpu_buffer_offset(ev)
    r = Result([Class.NOT_CLASSIFIED] * n, [0] * n, [-1] * n, [0] * n, {}, [0] * n, [-1] * n)
    cpus: dict[int, Cpu] = {}
    bufs: dict[int, Buf] = {}
    init_lo = init_fpstate or 0
    init_hi = init_lo + INIT_FPSTATE_SPAN if init_fpstate is not None else 0
    ident = task_identity(ev, tasks if tasks is not None else
                          np.empty(0, dtype=fmt.TASK_DTYPE)).tolist()
    for i in range(n):
        try:
            e = ev[i]
            kind, flags = int(e["kind"]), int(e["flags"])
            addr, task = int(e["addr"]), int(e["task"])
            c = cpus.setdefault(int(e["vcpu"]), Cpu())
            is_op = kind in SAVES or kind in RESTORES
            if flags & F.L2:
                if is_op:
                    r.cls[i], r.why[i] = Class.UNKNOWN, Unknown.NESTED_GUEST
                continue
            if flags & F.KERNEL_SIMD:
                c.kernel_simd, c.live_vmcb = True, 0
                if c.live != "unknown":
                    c.live = "nobody"
            if kind == fmt.Kind.VM_ENTRY:
                if not c.live_vmcb and c.owner_known:
                    r.guest[c.owner] = vcpu_id(addr, ident[i])
                c.live_vmcb = vcpu_id(addr, ident[i])
                continue
            if kind in (fmt.Kind.USER_ENTRY, fmt.Kind.USER_RETURN):
                c.live_vmcb = 0
                if flags & F.TASK_VALID:
                    c.live, c.live_task, c.live_since = "task", task, i
                continue
            if kind == fmt.Kind.PROBE:
                probe = int(e["index"])
                if probe == fmt.Probe.FORK_COPY:
                    c.fork_parent, c.fork_child = task, int(e["value"])
                elif probe == fmt.Probe.TASK_EXIT and c.live == "task" and c.live_task == task \
                        and c.owner_known:
                    if c.owner in bufs:
                        bufs[c.owner].pending = -1
                elif probe == fmt.Probe.SIGRETURN and c.live == "task" and c.live_task == task:
                    c.sigreturn = True
                elif probe == fmt.Probe.EXEC_RESET and c.live == "task" and c.live_task == task:
                    c.live, c.live_vmcb = "nobody", 0
                    if c.owner_known:
                        if c.owner in bufs:
                            bufs[c.owner].last_op = bufs[c.owner].pending = -1
                        c.owner_known = False
                continue
            if not is_op:
                continue
            if flags & F.PL_MASK == 3:
                r.cls[i], r.why[i] = Class.UNKNOWN, Unknown.USER_MODE
                continue
            if not flags & F.MEM_VALID:
                r.cls[i], r.why[i] = Class.UNKNOWN, Unknown.NO_MEMORY_ACCESS
                continue

            save = kind in SAVES
            regs_ok, after_ok = bool(flags & F.REGS_VALID), bool(flags & F.REGS_AFTER_VALID)
            regs, after = int(e["regs_hash"]), int(e["regs_after_hash"])
            ctx = ContextKind.TASK
            if addr < USER_LIMIT and flags & F.TASK_VALID:
                ctx = ContextKind.SIGNAL_FRAME
            if init_hi and init_lo <= addr < init_hi:
                ctx = ContextKind.INIT
            r.ctx[i] = ctx
            p = c.last_op
            has_p = p >= 0
            known = has_p and c.sync_ok and regs_ok
            modified = known and regs != c.sync
            owner_same = has_p and c.owner_known and c.owner == addr
            owner_dirty = modified and not (has_p and c.kernel_simd)
            b = bufs.setdefault(addr, Buf())
            fork_copy = False
            if save and c.fork_parent != 0 and c.fork_parent == task:
                # The parent's first save after the probe is the copy, or none was.
                fork_copy = fpu_offset != 0 and addr == c.fork_child + fpu_offset
                c.fork_parent = 0
            if fork_copy:
                b.last_op = b.pending = -1
            if b.pending >= 0:
                if not save and after_ok and after == b.pending_sync:
                    r.cls[b.pending] = Class.LOST_STATE
                    r.findings.append((b.pending, b.pending_last_sync, i, addr,
                                       FindingKind.LOST_STATE))
                b.pending = -1
            q = b.last_op

            if save and not fork_copy and ctx != ContextKind.INIT and flags & F.TASK_VALID:
                if c.live == "task" and c.live_task != task:
                    r.findings.append((i, c.live_since, -1, addr, FindingKind.FOREIGN_SAVE))
                elif c.live == "nobody":
                    r.findings.append((i, c.live_since, -1, addr, FindingKind.DROPPED_SAVE))
            if save:
                r.guest_of[i] = c.live_vmcb if c.live == "task" else 0
                b.holds_vmcb = r.guest_of[i]
                if not c.owner_known:
                    c.owner, c.owner_known, c.owner_ctx = addr, True, ctx
                    c.live, c.live_task, c.live_since = "task", task, i
            else:
                registered = r.guest.get(addr, 0)
                if registered >> 40 != ident[i] & 0xFFFFFF:
                    registered = 0
                r.guest_of[i] = b.holds_vmcb or registered

            if fork_copy:
                r.cls[i] = Class.NECESSARY
            elif save:
                r.cls[i], r.why[i] = _save_class(e, ev[q] if q >= 0 else None)
            else:
                cl = Class.NECESSARY
                unchanged = after_ok and regs_ok and after == regs
                buffer_unchanged = after_ok and has_p and c.sync_ok and after == c.sync
                if owner_same and known and not modified and unchanged:
                    cl = Class.REDUNDANT_RESTORE
                if owner_same and owner_dirty and buffer_unchanged and ctx != ContextKind.INIT \
                        and not c.sigreturn:
                    cl = Class.STALE_RESTORE
                if has_p and c.owner_known and not owner_same and owner_dirty and \
                        c.owner_ctx != ContextKind.INIT and c.sync_ok and not c.sigreturn:
                    victim = bufs.get(c.owner)
                    if victim is not None and victim.last_op == p:
                        victim.pending, victim.pending_last_sync, victim.pending_sync = i, p, c.sync
                if not has_p:
                    cl, r.why[i] = Class.UNKNOWN, Unknown.NO_PREVIOUS_OWNER
                elif not known and cl == Class.NECESSARY:
                    cl, r.why[i] = Class.UNKNOWN, Unknown.REGISTERS_NOT_READ
                r.cls[i] = cl
                if cl == Class.STALE_RESTORE:
                    r.findings.append((i, p, -1, addr, FindingKind.STALE_RESTORE))
                c.owner, c.owner_known, c.owner_ctx = addr, True, ctx
                c.live, c.live_task, c.live_since, c.live_vmcb = "task", task, i, r.guest_of[i]
            c.last_op = i
            c.sync, c.sync_ok = (regs, regs_ok) if save else (after, after_ok)
            c.kernel_simd = False
            c.sigreturn = False
            b.last_op = i
        finally:
            # the registers' owner after the event (fpanalysis.h: owner, owner_ctx)
            c = cpus.setdefault(int(ev["vcpu"][i]), Cpu())
            r.owner[i] = c.owner if c.owner_known else 0
            r.owner_ctx[i] = c.owner_ctx if c.owner_known else -1
    for i in range(n):
        if r.owner_ctx[i] == ContextKind.TASK and r.owner[i] in r.guest:
            r.owner_ctx[i] = ContextKind.GUEST
        if r.ctx[i] == ContextKind.TASK and int(ev["addr"][i]) in r.guest:
            r.ctx[i] = ContextKind.GUEST
            r.guest_of[i] = r.guest_of[i] or r.guest[int(ev["addr"][i])]
        elif r.ctx[i] == ContextKind.TASK and r.guest_of[i]:
            r.ctx[i] = ContextKind.GUEST
    return r


def _save_class(e: Any, q: Any) -> tuple[int, int]:
    """A save against the previous operation on its buffer."""
    if q is None:
        flags = int(e["flags"])
        if flags & F.PRIOR_VALID and flags & F.MEM_VALID:
            # What the buffer held before: equal to what was stored, or not.
            same = int(e["aux"]) == int(e["mem_hash"])
            return (Class.REDUNDANT_SAVE if same else Class.NECESSARY), 0
        return Class.UNKNOWN, Unknown.FIRST_SIGHT
    mask_s, mask_q = _covers(e), _covers(q)
    if int(q["kind"]) in SAVES:
        if int(e["mem_hash"]) == int(q["mem_hash"]) and mask_s == mask_q:
            return Class.REDUNDANT_SAVE, 0
        if mask_s != mask_q:
            return Class.UNKNOWN, Unknown.MASKS_DIFFER
        return Class.NECESSARY, 0
    both_read = bool(int(e["flags"]) & F.REGS_VALID) and bool(int(q["flags"]) &
                                                              F.REGS_AFTER_VALID)
    avx = (int(e["mem_hash"]) - int(e["mem_legacy_hash"])) & M64
    avx_q = ((int(q["mem_hash"]) - int(q["mem_legacy_hash"])) & M64
             if int(q["xstate_bv"]) & 4 else AVX_INIT_HASH)
    wants_avx = bool(mask_s & 4)
    if both_read and int(e["regs_hash"]) == int(q["regs_after_hash"]) and \
            (not wants_avx or avx == avx_q):
        return Class.REDUNDANT_SAVE, 0
    if not both_read:
        return Class.UNKNOWN, Unknown.REGISTERS_NOT_READ
    if wants_avx and not mask_q & 4:
        return Class.UNKNOWN, Unknown.MASKS_DIFFER
    return Class.NECESSARY, 0


# ---- the report's tables, with numpy, from the per-event results ----

def group(keys: npt.NDArray[np.generic], cats: npt.NDArray[np.generic], ncat: int,
          weights: npt.NDArray[np.generic] | None = None,
          mask: npt.NDArray[np.bool_] | None = None
          ) -> tuple[npt.NDArray[np.uint64], npt.NDArray[np.uint64], npt.NDArray[np.uint64]]:
    """Distinct keys; per key and category (< ncat) the count and weight sum."""
    sel: npt.NDArray[np.bool_] = np.asarray(cats) < ncat
    if mask is not None:
        sel &= mask
    k = keys.view(np.uint64)[sel] if keys.dtype != np.uint64 else keys[sel]
    c = cats[sel].astype(np.int64)
    uniq, inv = np.unique(k, return_inverse=True)
    size = len(uniq) * ncat
    counts = np.bincount(inv * ncat + c, minlength=size).astype(np.uint64)
    w = weights[sel].astype(np.float64) if weights is not None else None
    sums = (np.bincount(inv * ncat + c, weights=w, minlength=size).astype(np.uint64)
            if w is not None else np.zeros(size, dtype=np.uint64))
    return uniq, counts.reshape(-1, ncat), sums.reshape(-1, ncat)


def _small_key_table(keys: npt.NDArray[np.generic], kinds: npt.NDArray[np.uint8]
                     ) -> tuple[list[int], npt.NDArray[np.int64]]:
    size = int(keys.max()) + 1 if len(keys) else 0
    table = np.bincount(keys.astype(np.int64) * fmt.KIND_MAX + kinds,
                        minlength=size * fmt.KIND_MAX).reshape(size, fmt.KIND_MAX)
    present = np.flatnonzero(table.sum(axis=1))
    return present.tolist(), table[present]


def count_events(events: npt.NDArray[np.void], tasks: npt.NDArray[np.void],
                 symbols: Symbols) -> Counts:
    kinds = events["kind"]
    flags = events["flags"]
    form64 = (flags & F.FORM64) != 0
    ident = task_identity(events, tasks)
    t_keys, t_table, _ = group(ident, kinds, fmt.KIND_MAX)
    c_keys, c_table = _small_key_table(events["vcpu"], kinds)
    l_keys, l_table = _small_key_table(((flags & F.L2) != 0).astype(np.uint8), kinds)
    pcs, f_table, _ = group(events["pc"], kinds, fmt.KIND_MAX)
    return _counts_from_tables(
        len(events), np.bincount(kinds, minlength=fmt.KIND_MAX),
        np.bincount(kinds[form64], minlength=fmt.KIND_MAX),
        np.bincount(kinds, weights=events["mem_bytes"], minlength=fmt.KIND_MAX),
        t_keys.view(np.int64).tolist(), t_table, c_keys, c_table, l_keys, l_table, pcs, f_table,
        tasks, symbols)


def compute_costs(ev: npt.NDArray[np.void], tasks: npt.NDArray[np.void], own: Ownership,
                  symbols: Symbols) -> Costs:
    ncls = len(CLASSES)
    cls = own.cls
    nbytes = ev["mem_bytes"]
    kind = ev["kind"]
    classified = cls < ncls
    is_save = np.isin(kind, list(SAVES))
    by_cls = np.bincount(cls, minlength=256)[:ncls]
    bytes_cls = np.bincount(cls, weights=nbytes, minlength=256)[:ncls]
    classes: dict[Class, int] = {c: int(by_cls[c]) for c in CLASSES}
    class_bytes: dict[Class, int] = {c: int(bytes_cls[c]) for c in CLASSES}
    why = np.bincount(own.unknown_reason[cls == Class.UNKNOWN], minlength=len(Unknown))
    unknown_reasons = {Unknown(u): int(why[u]) for u in np.flatnonzero(why).tolist()}
    saves = int(np.count_nonzero(classified & is_save))
    restores = int(np.count_nonzero(classified)) - saves
    redundant_bytes = int(bytes_cls[Class.REDUNDANT_SAVE] + bytes_cls[Class.REDUNDANT_RESTORE])
    redundant_pct = {
        "saves": _pct(classes[Class.REDUNDANT_SAVE], saves),
        "restores": _pct(classes[Class.REDUNDANT_RESTORE], restores),
        "bytes": _pct(redundant_bytes, int(bytes_cls.sum())),
    }
    pcs, counts, sums = group(ev["pc"], cls, ncls, nbytes)
    pc_list = pcs.tolist()
    per_callsite = _rows_from(pc_list, counts, sums, {p: symbols.describe(p) for p in pc_list})
    ident = task_identity(ev, tasks)
    t_keys, counts, sums = group(ident, cls, ncls, nbytes)
    t_list = t_keys.view(np.int64).tolist()
    per_task = _rows_from(t_list, counts, sums, {i: task_label(tasks, i) for i in t_list})

    l1 = (ev["flags"] & F.L2) == 0
    entries = (kind == fmt.Kind.VM_ENTRY) & l1
    per_vcpu = []
    moved = own.guest_of != 0
    if moved.any():
        vm, counts, sums = group(own.guest_of, cls, ncls, nbytes, moved)
        ids = [vcpu_id(int(a), int(t)) for a, t in zip(ev["addr"][entries], ident[entries],
                                                      strict=True)]
        per_vcpu = vcpu_rows(vm.tolist(), counts, sums, dict(Counter(ids)), tasks)

    level = ((ev["flags"] & F.L2) != 0).astype(np.int64)
    lc = np.bincount(level[classified] * ncls + cls[classified],
                     minlength=2 * ncls).reshape(2, ncls)
    ls = np.bincount(level[classified] * ncls + cls[classified], weights=nbytes[classified],
                     minlength=2 * ncls).reshape(2, ncls)
    present = [lv for lv in (0, 1) if lc[lv].any()]
    per_level = _rows_from(present, lc[present], ls[present], {0: "L1 host", 1: "L2 guest"})

    redundant = (cls == Class.REDUNDANT_SAVE) | (cls == Class.REDUNDANT_RESTORE)
    cat = (is_save.astype(np.uint8) + 2 * redundant.astype(np.uint8))[classified]
    fkeys, fcounts, _ = group(ev["mem_features"][classified].astype(np.uint64), cat, 4)
    per_component = _component_bytes(fkeys.tolist(), fcounts)

    # Per operation.
    ctx = own.context_kind
    ops = classified & l1 & (own.unknown_reason != Unknown.NO_MEMORY_ACCESS) & \
        (own.unknown_reason != Unknown.USER_MODE)
    vcpu_threads = np.unique(ident[entries])
    by_vcpu_thread = ops & np.isin(ident, vcpu_threads)
    frames = ctx == ContextKind.SIGNAL_FRAME
    signals = int(np.count_nonzero(frames & is_save & ops))
    around_signals = ops & (frames | (ctx == ContextKind.INIT))

    def per(sel: npt.NDArray[np.bool_], count: int) -> dict[str, float | int | None]:
        s = int(np.count_nonzero(sel & is_save))
        return _per(s, int(np.count_nonzero(sel)) - s, int(nbytes[sel].sum()), count)

    per_operation = {
        "vm_entry": per(by_vcpu_thread, int(np.count_nonzero(entries))),
        "signal": per(around_signals, signals),
    }
    return Costs(classes, class_bytes, unknown_reasons, redundant_pct, per_callsite, per_task,
                 per_vcpu, per_level, per_component, per_operation)
