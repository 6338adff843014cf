"""What the classified saves and restores cost, and to whom: counts and bytes
per class, per call site, per task, per vCPU, per L1/L2, per XSAVE component,
and per operation (VM entry, context switch, signal). Pure functions; the
definitions are in docs/analysis.md."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from analyzers.counts import task_identity, task_label
from analyzers.ownership import (
    SAVE_TABLE,
    UNKNOWN_REASONS,
    Class,
    ContextKind,
    Ownership,
    Unknown,
)
from fputrace.kernel.symbols import Symbols

if TYPE_CHECKING:
    from analyzers.native import Aggregates
from fputrace.trace import format as fmt

CLASSES = [c for c in Class if c != Class.NOT_CLASSIFIED]
REDUNDANT = (Class.REDUNDANT_SAVE, Class.REDUNDANT_RESTORE)

# Bytes of each XSAVE component in the standard format (CPUID 0xd, as QEMU):
# x87 is FCW..FDP plus ST0-7 (MXCSR is counted apart, under "mxcsr").
COMPONENT_BYTES = {0: ("x87", 152), 1: ("sse", 256), 2: ("avx", 256), 3: ("bndregs", 64),
                   4: ("bndcsr", 64), 5: ("opmask", 64), 6: ("zmm_hi256", 512),
                   7: ("hi16_zmm", 1024), 9: ("pkru", 8)}


@dataclass
class Row:
    """Counts and bytes per class for one call site, task, vCPU or level."""

    label: str
    by_class: dict[str, int]
    bytes_by_class: dict[str, int]
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def events(self) -> int:
        return sum(self.by_class.values())

    @property
    def redundant_bytes(self) -> int:
        return sum(self.bytes_by_class.get(c.name.lower(), 0) for c in REDUNDANT)


@dataclass
class Costs:
    classes: dict[str, int]
    class_bytes: dict[str, int]
    unknown_reasons: dict[str, int]
    redundant_pct: dict[str, float]  # of saves / of restores / of bytes
    per_callsite: list[Row]
    per_task: list[Row]
    per_vcpu: list[Row]
    per_level: list[Row]
    per_component: dict[str, dict[str, int]]  # component -> saved/restored/redundant bytes
    per_operation: dict[str, dict[str, float | int]]


def _rows_from(keys: list[int], counts: npt.NDArray[np.generic], sums: npt.NDArray[np.generic],
               labels: dict[int, str]) -> list[Row]:
    """Rows from (key x class) count and byte tables, merged by label,
    largest redundant bytes first."""
    merged: dict[str, Row] = {}
    for key, crow, srow in zip(keys, counts, sums, strict=True):
        label = labels.get(key, str(key))
        r = merged.setdefault(label, Row(label, {}, {}))
        for c in np.flatnonzero(crow).tolist():
            name = Class(c).name.lower()
            r.by_class[name] = r.by_class.get(name, 0) + int(crow[c])
            r.bytes_by_class[name] = r.bytes_by_class.get(name, 0) + int(srow[c])
    return sorted(merged.values(), key=lambda r: (-r.redundant_bytes, -r.events, r.label))


def _pct(part: int, whole: int) -> float:
    return round(100.0 * part / whole, 2) if whole else 0.0


def compute_costs(ev: npt.NDArray[np.void], tasks: npt.NDArray[np.void], own: Ownership,
                  symbols: Symbols, ident: npt.NDArray[np.int64] | None = None) -> Costs:
    """ident: task_identity(ev, tasks), when the caller has it already."""
    from analyzers import native

    ncls = len(CLASSES)  # class numbers 0..ncls-1; NOT_CLASSIFIED is left out
    cls = own.cls
    nbytes = ev["mem_bytes"]
    kind = ev["kind"]
    classified = cls < ncls
    is_save = SAVE_TABLE[kind]

    by_cls = np.bincount(cls, minlength=256)[:ncls]
    bytes_cls = np.bincount(cls, weights=nbytes, minlength=256)[:ncls]
    classes = {c.name.lower(): int(by_cls[c]) for c in CLASSES}
    class_bytes = {c.name.lower(): int(bytes_cls[c]) for c in CLASSES}
    why = np.bincount(own.unknown_reason[cls == Class.UNKNOWN], minlength=len(Unknown))
    unknown_reasons = {UNKNOWN_REASONS[Unknown(u)]: int(why[u])
                       for u in np.flatnonzero(why).tolist()}
    saves = int(np.count_nonzero(classified & is_save))
    restores = int(np.count_nonzero(classified)) - saves
    redundant_bytes = int(bytes_cls[Class.REDUNDANT_SAVE] + bytes_cls[Class.REDUNDANT_RESTORE])
    redundant_pct = {
        "saves": _pct(classes["redundant_save"], saves),
        "restores": _pct(classes["redundant_restore"], restores),
        "bytes": _pct(redundant_bytes, int(bytes_cls.sum())),
    }

    # Call sites: the instruction's own kernel location.
    pcs, counts, sums = native.group(ev["pc"], cls, ncls, nbytes)
    pc_list = pcs.tolist()
    per_callsite = _rows_from(pc_list, counts, sums, {p: symbols.describe(p) for p in pc_list})

    if ident is None:
        ident = task_identity(ev, tasks)
    t_keys, counts, sums = native.group(ident, cls, ncls, nbytes)
    t_list = t_keys.view(np.int64).tolist()
    per_task = _rows_from(t_list, counts, sums, {i: task_label(tasks, i) for i in t_list})

    # vCPUs: operations on a vCPU's guest buffers, keyed by its VMCB.
    per_vcpu: list[Row] = []
    if own.guest_buffers:
        bufs, counts, sums = native.group(ev["addr"], cls, ncls, nbytes,
                                          own.context_kind == ContextKind.GUEST)
        vmcbs = [own.guest_buffers.get(int(b), -1) for b in bufs.tolist()]
        per_vcpu = _rows_from(vmcbs, counts, sums, {v: f"vcpu vmcb={v:#x}" for v in vmcbs})
        entries = (kind == fmt.Kind.VM_ENTRY) & ((ev["flags"] & fmt.Flag.L2) == 0)
        entry_vmcbs, entry_counts = np.unique(ev["addr"][entries], return_counts=True)
        per_entry = dict(zip(entry_vmcbs.tolist(), entry_counts.tolist(), strict=True))
        for r in per_vcpu:
            r.extra["vm_entries"] = int(per_entry.get(int(r.label.split("=", 1)[1], 16), 0))

    level = ((ev["flags"] & fmt.Flag.L2) != 0).astype(np.int64)
    sel = classified
    lc = np.bincount(level[sel] * ncls + cls[sel], minlength=2 * ncls).reshape(2, ncls)
    ls = np.bincount(level[sel] * ncls + cls[sel], weights=nbytes[sel],
                     minlength=2 * ncls).reshape(2, ncls)
    present = [lv for lv in (0, 1) if lc[lv].any()]
    per_level = _rows_from(present, lc[present], ls[present], {0: "L1 host", 1: "L2 guest"})

    per_component = _components(ev["mem_features"], is_save, cls, classified)
    per_operation = _per_operation(ev, own, classified, is_save, nbytes)
    return Costs(classes, class_bytes, unknown_reasons, redundant_pct, per_callsite, per_task,
                 per_vcpu, per_level, per_component, per_operation)


def _component_bytes(features: list[int], table: npt.NDArray[np.generic]
                     ) -> dict[str, dict[str, int]]:
    """Split (feature set x [restored, saved, redundant restored, redundant
    saved]) counts into bytes per component."""
    out: dict[str, dict[str, int]] = {}
    for feat, row in zip(features, table, strict=True):
        for bit, (name, size) in COMPONENT_BYTES.items():
            if not feat >> bit & 1:
                continue
            b = out.setdefault(name, {"saved": 0, "restored": 0, "redundant": 0})
            for c in range(4):
                n = int(row[c]) * size
                b["saved" if c & 1 else "restored"] += n
                if c & 2:
                    b["redundant"] += n
    return out


def _components(features: npt.NDArray[np.uint32], is_save: npt.NDArray[np.bool_],
                cls: npt.NDArray[np.uint8], classified: npt.NDArray[np.bool_]
                ) -> dict[str, dict[str, int]]:
    """Bytes per XSAVE component: the classified operations are counted per
    distinct feature set and category (restored/saved, redundant or not),
    then split by component."""
    from analyzers import native

    redundant = (cls == Class.REDUNDANT_SAVE) | (cls == Class.REDUNDANT_RESTORE)
    cat = (is_save.astype(np.uint8) + 2 * redundant.astype(np.uint8))[classified]
    keys, counts, _ = native.group(features[classified].astype(np.uint64), cat, 4)
    return _component_bytes(keys.tolist(), counts)


def _per_operation(ev: npt.NDArray[np.void], own: Ownership,
                   classified: npt.NDArray[np.bool_], is_save: npt.NDArray[np.bool_],
                   nbytes: npt.NDArray[np.generic]) -> dict[str, dict[str, float | int]]:
    """Saves, restores and bytes per VM entry, per context switch, per signal."""
    l1 = (ev["flags"] & fmt.Flag.L2) == 0
    kind = ev["kind"]
    task = ev["task"]
    ctx = own.context_kind
    # L1 saves and restores that moved state.
    ops = classified & l1 & (own.unknown_reason != Unknown.NO_MEMORY_ACCESS)

    # KVM_RUN: the FPU work of the vCPU threads (tasks that entered a guest).
    entries = (kind == fmt.Kind.VM_ENTRY) & l1
    vcpu_tasks = np.unique(task[entries])
    by_vcpu_thread = ops & np.isin(task, vcpu_tasks) if len(vcpu_tasks) else ops & False

    # Context switches the FPU saw: consecutive operations on one CPU by
    # different tasks.
    idx = np.flatnonzero(ops)
    cpus = ev["vcpu"][idx]
    order = np.argsort(cpus, kind="stable")
    t, c = task[idx][order], cpus[order]
    switches = int(np.count_nonzero((t[1:] != t[:-1]) & (c[1:] == c[:-1])))
    del idx, cpus, order, t, c
    on_task_buffers = ops & (ctx == ContextKind.TASK)

    # Signals: deliveries that wrote an FPU frame (saves to signal frames).
    frames = ctx == ContextKind.SIGNAL_FRAME
    signals = int(np.count_nonzero(frames & is_save & ops))
    around_signals = ops & (frames | (ctx == ContextKind.INIT))

    def per(sel: npt.NDArray[np.bool_], n: int) -> dict[str, float | int]:
        saves = int(np.count_nonzero(sel & is_save))
        return _per(saves, int(np.count_nonzero(sel)) - saves, int(nbytes[sel].sum()), n)

    return {
        "vm_entry": per(by_vcpu_thread, int(np.count_nonzero(entries))),
        "context_switch": per(on_task_buffers, switches),
        "signal": per(around_signals, signals),
    }


def _per(saves: int, restores: int, nbytes: int, n: int) -> dict[str, float | int]:
    return {
        "count": n,
        "saves": round(saves / n, 3) if n else 0.0,
        "restores": round(restores / n, 3) if n else 0.0,
        "bytes": round(float(nbytes) / n, 1) if n else 0.0,
    }


def costs_from_aggregates(agg: Aggregates, own: Ownership, tasks: npt.NDArray[np.void],
                          symbols: Symbols) -> Costs:
    """compute_costs() from the tables the compiled pass filled (Ownership.tables)."""
    from analyzers.native import (
        NCLS,
        NKIND,
        OP_AROUND_SIG,
        OP_ENTRIES,
        OP_SIGNALS,
        OP_SWITCHES,
        OP_TASKBUF,
    )

    by_cls = agg.cls.astype(np.int64)
    bytes_cls = agg.cls_bytes.astype(np.int64)
    classes = {c.name.lower(): int(by_cls[c]) for c in CLASSES}
    class_bytes = {c.name.lower(): int(bytes_cls[c]) for c in CLASSES}
    unknown_reasons = {UNKNOWN_REASONS[Unknown(u)]: int(agg.why[u])
                       for u in np.flatnonzero(agg.why).tolist()}
    feat_keys, feat_rows = agg.features
    restores = int(feat_rows[:, 0].sum() + feat_rows[:, 2].sum())
    saves = int(feat_rows[:, 1].sum() + feat_rows[:, 3].sum())
    redundant_bytes = int(bytes_cls[Class.REDUNDANT_SAVE] + bytes_cls[Class.REDUNDANT_RESTORE])
    redundant_pct = {
        "saves": _pct(classes["redundant_save"], saves),
        "restores": _pct(classes["redundant_restore"], restores),
        "bytes": _pct(redundant_bytes, int(bytes_cls.sum())),
    }

    def keyed_rows(keys: npt.NDArray[np.uint64], rows: npt.NDArray[np.uint64],
                   labels: dict[int, str], signed: bool = False) -> list[Row]:
        counts, sums = rows[:, NKIND:NKIND + NCLS], rows[:, NKIND + NCLS:]
        has = counts.sum(axis=1) > 0  # keys with classified operations only
        key_list = (keys.view(np.int64) if signed else keys)[has].tolist()
        return _rows_from(key_list, counts[has], sums[has], labels)

    pcs, p_rows = agg.pc
    per_callsite = keyed_rows(pcs, p_rows, {p: symbols.describe(p) for p in pcs.tolist()})
    t_keys, t_rows = agg.task
    per_task = keyed_rows(t_keys, t_rows, {i: task_label(tasks, i)
                                           for i in t_keys.view(np.int64).tolist()}, True)

    per_vcpu: list[Row] = []
    g_keys, g_rows = agg.guest
    if len(g_keys):
        vmcbs = [own.guest_buffers.get(int(b), -1) for b in g_keys.tolist()]
        per_vcpu = _rows_from(vmcbs, g_rows[:, :NCLS], g_rows[:, NCLS:],
                              {v: f"vcpu vmcb={v:#x}" for v in vmcbs})
        v_keys, v_rows = agg.vmcb_entries
        per_entry = dict(zip(v_keys.tolist(), v_rows[:, 0].tolist(), strict=True))
        for r in per_vcpu:
            r.extra["vm_entries"] = int(per_entry.get(int(r.label.split("=", 1)[1], 16), 0))

    present = [lv for lv in (0, 1) if agg.level_cls[lv].any()]
    per_level = _rows_from(present, agg.level_cls[present], agg.level_cls_bytes[present],
                           {0: "L1 host", 1: "L2 guest"})
    per_component = _component_bytes(feat_keys.tolist(), feat_rows)

    ops = agg.ops.astype(np.int64)
    _, o_rows = agg.op_tasks
    entered = o_rows[:, 3] > 0
    per_operation = {
        "vm_entry": _per(int(o_rows[entered, 0].sum()), int(o_rows[entered, 1].sum()),
                         int(o_rows[entered, 2].sum()), int(ops[OP_ENTRIES])),
        "context_switch": _per(int(ops[OP_TASKBUF]), int(ops[OP_TASKBUF + 1]),
                               int(ops[OP_TASKBUF + 2]), int(ops[OP_SWITCHES])),
        "signal": _per(int(ops[OP_AROUND_SIG]), int(ops[OP_AROUND_SIG + 1]),
                       int(ops[OP_AROUND_SIG + 2]), int(ops[OP_SIGNALS])),
    }
    return Costs(classes, class_bytes, unknown_reasons, redundant_pct, per_callsite, per_task,
                 per_vcpu, per_level, per_component, per_operation)
