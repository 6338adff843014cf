"""What the classified saves and restores cost, and to whom: counts and bytes
per class, per call site, per task, per vCPU, per L1/L2, per XSAVE component,
and per operation (VM entry, context switch, signal), from the tables the
compiled pass filled. Pure functions; the definitions are in
docs/analysis.md."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from analyzers.counts import task_label
from analyzers.ownership import Class, Ownership, Unknown
from analyzers.ratio import ratio
from fputrace.trace.symbols import Symbols

if TYPE_CHECKING:
    from analyzers.native import Aggregates

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
    by_class: dict[Class, int]
    bytes_by_class: dict[Class, int]
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def events(self) -> int:
        return sum(self.by_class.values())

    @property
    def redundant_bytes(self) -> int:
        return sum(self.bytes_by_class.get(c, 0) for c in REDUNDANT)


@dataclass
class Costs:
    classes: dict[Class, int]
    class_bytes: dict[Class, int]
    unknown_reasons: dict[Unknown, int]  # rendered with ownership.UNKNOWN_REASONS
    redundant_pct: dict[str, float | None]  # of saves / of restores / of bytes (None: none)
    per_callsite: list[Row]
    per_task: list[Row]
    per_vcpu: list[Row]
    per_level: list[Row]
    per_component: dict[str, dict[str, int]]  # component -> saved/restored/redundant bytes
    per_operation: dict[str, dict[str, float | int | None]]


def _rows_from(keys: list[int], counts: npt.NDArray[np.generic], sums: npt.NDArray[np.generic],
               labels: dict[int, str]) -> list[Row]:
    """Rows from (key x class) count and byte tables, merged by label,
    largest redundant bytes first."""
    merged: dict[str, Row] = {}
    for key, crow, srow in zip(keys, counts, sums, strict=True):
        label = labels.get(key, str(key))
        r = merged.setdefault(label, Row(label, {}, {}))
        for c in np.flatnonzero(crow).tolist():
            cls = Class(c)
            r.by_class[cls] = r.by_class.get(cls, 0) + int(crow[c])
            r.bytes_by_class[cls] = r.bytes_by_class.get(cls, 0) + int(srow[c])
    return sorted(merged.values(), key=lambda r: (-r.redundant_bytes, -r.events, r.label))


@cache
def _packing() -> tuple[int, int, int]:
    """The vCPU instance's packing, as fpanalysis.h defines it."""
    from analyzers.native import layout
    lay = layout()
    return int(lay.FPA_VCPU_PAGE_SHIFT), int(lay.FPA_VCPU_IDENT_SHIFT), \
        int(lay.FPA_VCPU_IDENT_BITS)


def vcpu_instance(vmcb: int, ident: int) -> int:
    """A vCPU instance from a VM entry's vCPU address (VMCB, or arm64's
    guest id) and the announcement of the thread that entered it: the
    compiled pass's vcpu_id() (enum fpa_vcpu_packing)."""
    page, shift, bits = _packing()
    return (ident & ((1 << bits) - 1)) << shift | ((vmcb >> page) & ((1 << (shift - page)) - 1))


def vcpu_vmcb(vcpu: int) -> int:
    """The VMCB of a vCPU instance."""
    page, shift, _ = _packing()
    return (vcpu & ((1 << (shift - page)) - 1)) << page


def vcpu_ident(vcpu: int) -> int:
    """The announcement of the thread that entered a vCPU instance."""
    return vcpu >> _packing()[1]


def vcpu_label(vcpu: int, tasks: npt.NDArray[np.void]) -> str:
    """'vcpu vmcb=0x... (pid comm)': a vCPU instance by its VMCB and the
    thread that ran it (a VMCB is reused by the next VM)."""
    ident = vcpu_ident(vcpu)
    no_thread = (1 << _packing()[2]) - 1  # an ident of -1, masked
    who = task_label(tasks, -1 if ident == no_thread else ident)
    return f"vcpu vmcb={vcpu_vmcb(vcpu):#x} ({who})"


def vcpu_rows(vcpus: list[int], counts: npt.NDArray[np.generic], sums: npt.NDArray[np.generic],
              entries: dict[int, int], tasks: npt.NDArray[np.void]) -> list[Row]:
    """Per-vCPU rows, each with its number of VM entries."""
    labels = {v: vcpu_label(v, tasks) for v in vcpus}
    rows = _rows_from(vcpus, counts, sums, labels)
    entries_of = {labels[v]: n for v, n in entries.items() if v in labels}
    for r in rows:
        r.extra["vm_entries"] = int(entries_of.get(r.label, 0))
    return rows


def _pct(part: int, whole: int) -> float | None:
    return ratio(100.0 * part, whole, 2)


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


def _per(saves: int, restores: int, nbytes: int, n: int) -> dict[str, float | int | None]:
    return {"count": n, "saves": ratio(saves, n, 3), "restores": ratio(restores, n, 3),
            "bytes": ratio(float(nbytes), n, 1)}


def costs_from_aggregates(agg: Aggregates, own: Ownership, tasks: npt.NDArray[np.void],
                          symbols: Symbols) -> Costs:
    """The costs from the tables the compiled pass filled (Ownership.tables).
    `own` is the classification they came with."""
    from analyzers.native import layout

    lay = layout()  # fpanalysis.h, enum fpa_tables
    NKIND, NCLS = lay.FPA_NKIND, lay.FPA_NCLS
    OP_ENTRIES, OP_SIGNALS, OP_AROUND_SIG = lay.FPA_OP_ENTRIES, lay.FPA_OP_SIGNALS, \
        lay.FPA_OP_AROUND_SIG

    by_cls = agg.cls.astype(np.int64)
    bytes_cls = agg.cls_bytes.astype(np.int64)
    classes: dict[Class, int] = {c: int(by_cls[c]) for c in CLASSES}
    class_bytes: dict[Class, int] = {c: int(bytes_cls[c]) for c in CLASSES}
    unknown_reasons = {Unknown(u): int(agg.why[u]) for u in np.flatnonzero(agg.why).tolist()}
    feat_keys, feat_rows = agg.features
    restores = int(feat_rows[:, 0].sum() + feat_rows[:, 2].sum())
    saves = int(feat_rows[:, 1].sum() + feat_rows[:, 3].sum())
    redundant_bytes = int(bytes_cls[Class.REDUNDANT_SAVE] + bytes_cls[Class.REDUNDANT_RESTORE])
    redundant_pct = {
        "saves": _pct(classes[Class.REDUNDANT_SAVE], saves),
        "restores": _pct(classes[Class.REDUNDANT_RESTORE], restores),
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

    # vCPUs: the guest state each moved, wherever it was saved (5.10 saves it
    # into the vCPU thread's own buffer when preempted inside KVM_RUN).
    per_vcpu: list[Row] = []
    g_keys, g_rows = agg.guest
    if len(g_keys):
        v_keys, v_rows = agg.vmcb_entries
        per_vcpu = vcpu_rows(g_keys.tolist(), g_rows[:, :NCLS], g_rows[:, NCLS:2 * NCLS],
                             dict(zip(v_keys.tolist(), v_rows[:, 0].tolist(), strict=True)),
                             tasks)

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
        "signal": _per(int(ops[OP_AROUND_SIG]), int(ops[OP_AROUND_SIG + 1]),
                       int(ops[OP_AROUND_SIG + 2]), int(ops[OP_SIGNALS])),
    }
    return Costs(classes, class_bytes, unknown_reasons, redundant_pct, per_callsite, per_task,
                 per_vcpu, per_level, per_component, per_operation)
