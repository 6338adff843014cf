"""What the classified saves and restores cost, and to whom: counts and bytes
per class, per call site, per task, per vCPU, per L1/L2, per XSAVE component,
and per operation (VM entry, context switch, signal). Pure functions; the
definitions are in docs/analysis.md."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from analyzers.counts import task_identity, task_label
from analyzers.ownership import UNKNOWN_REASONS, Class, ContextKind, Ownership, Unknown
from fputrace.kernel.symbols import Symbols
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


def _rows(keys: npt.NDArray[np.int64], cls: npt.NDArray[np.uint8],
          nbytes: npt.NDArray[np.int64], labels: dict[int, str]) -> list[Row]:
    """Group classified events by key: counts and bytes per class."""
    rows: list[Row] = []
    if not len(keys):
        return rows
    uniq, inv = np.unique(keys, return_inverse=True)
    k = len(uniq)
    for c in CLASSES:
        sel = cls == c
        counts = np.bincount(inv[sel], minlength=k)
        sums = np.bincount(inv[sel], weights=nbytes[sel], minlength=k)
        if not rows:
            rows = [Row(labels.get(int(u), str(int(u))), {}, {}) for u in uniq]
        for r, n, b in zip(rows, counts.tolist(), sums.tolist(), strict=True):
            if n:
                r.by_class[c.name.lower()] = int(n)
                r.bytes_by_class[c.name.lower()] = int(b)
    return rows


def _pct(part: int, whole: int) -> float:
    return round(100.0 * part / whole, 2) if whole else 0.0


def compute_costs(ev: npt.NDArray[np.void], tasks: npt.NDArray[np.void], own: Ownership,
                  symbols: Symbols, ident: npt.NDArray[np.int64] | None = None) -> Costs:
    """ident: task_identity(ev, tasks), when the caller has it already."""
    classified = np.flatnonzero(own.cls != Class.NOT_CLASSIFIED)
    cls = own.cls[classified]
    nbytes = ev["mem_bytes"][classified].astype(np.int64)
    kinds = ev["kind"][classified]
    is_save = np.isin(kinds, [int(k) for k in fmt.SAVE_KINDS])

    classes = {c.name.lower(): int(np.count_nonzero(cls == c)) for c in CLASSES}
    class_bytes = {c.name.lower(): int(nbytes[cls == c].sum()) for c in CLASSES}
    why = own.unknown_reason[classified][cls == Class.UNKNOWN]
    unknown_reasons = {UNKNOWN_REASONS[Unknown(int(u))]: int(n)
                       for u, n in zip(*np.unique(why, return_counts=True), strict=True)}
    saves = int(is_save.sum())
    restores = int((~is_save).sum())
    redundant_pct = {
        "saves": _pct(int(np.count_nonzero(cls == Class.REDUNDANT_SAVE)), saves),
        "restores": _pct(int(np.count_nonzero(cls == Class.REDUNDANT_RESTORE)), restores),
        "bytes": _pct(int(nbytes[np.isin(cls, REDUNDANT)].sum()), int(nbytes.sum())),
    }

    # Call sites: the instruction's own kernel location.
    pcs = ev["pc"][classified].view(np.int64)  # grouping key; labels from the unsigned pc
    site_labels = {p: symbols.describe(p & ((1 << 64) - 1)) for p in np.unique(pcs).tolist()}
    per_callsite = _rows(pcs, cls, nbytes, site_labels)
    per_callsite.sort(key=lambda r: (-r.redundant_bytes, -r.events, r.label))

    if ident is None:
        ident = task_identity(ev, tasks)
    ident = ident[classified]
    task_labels = {int(i): task_label(tasks, int(i)) for i in np.unique(ident).tolist()}
    per_task = _merge_by_label(_rows(ident, cls, nbytes, task_labels))

    # vCPUs: operations on a vCPU's guest buffers, keyed by its VMCB.
    vmcb_of = own.guest_buffers
    vkeys = np.full(len(classified), -1, np.int64)
    if vmcb_of:
        bufs = np.array(sorted(vmcb_of), dtype=np.uint64)
        vmcbs = np.array([vmcb_of[int(b)] for b in bufs], dtype=np.int64)
        addrs = ev["addr"][classified]
        pos = np.minimum(np.searchsorted(bufs, addrs), len(bufs) - 1)
        vkeys = np.where(bufs[pos] == addrs, vmcbs[pos], -1)
    on_guest = vkeys >= 0
    entries = ev["kind"] == fmt.Kind.VM_ENTRY
    per_vcpu = _rows(vkeys[on_guest], cls[on_guest], nbytes[on_guest],
                     {v: f"vcpu vmcb={v:#x}" for v in set(vmcb_of.values())})
    for r in per_vcpu:
        vmcb = int(r.label.split("=", 1)[1], 16)
        r.extra["vm_entries"] = int(np.count_nonzero(entries & (ev["addr"] == vmcb)))

    level = ((ev["flags"][classified] & fmt.Flag.L2) != 0).astype(np.int64)
    per_level = _rows(level, cls, nbytes, {0: "L1 host", 1: "L2 guest"})

    per_component = _components(ev["mem_features"][classified], is_save, cls)
    per_operation = _per_operation(ev, own, classified, is_save, nbytes)
    return Costs(classes, class_bytes, unknown_reasons, redundant_pct, per_callsite, per_task,
                 per_vcpu, per_level, per_component, per_operation)


def _merge_by_label(rows: list[Row]) -> list[Row]:
    merged: dict[str, Row] = {}
    for r in rows:
        m = merged.setdefault(r.label, Row(r.label, {}, {}))
        for k, v in r.by_class.items():
            m.by_class[k] = m.by_class.get(k, 0) + v
        for k, v in r.bytes_by_class.items():
            m.bytes_by_class[k] = m.bytes_by_class.get(k, 0) + v
    return sorted(merged.values(), key=lambda r: (-r.redundant_bytes, -r.events, r.label))


def _components(features: npt.NDArray[np.uint32], is_save: npt.NDArray[np.bool_],
                cls: npt.NDArray[np.uint8]) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    redundant = np.isin(cls, REDUNDANT)
    for bit, (name, size) in COMPONENT_BYTES.items():
        has = (features & np.uint32(1 << bit)) != 0
        if not has.any():
            continue
        out[name] = {
            "saved": int(np.count_nonzero(has & is_save)) * size,
            "restored": int(np.count_nonzero(has & ~is_save)) * size,
            "redundant": int(np.count_nonzero(has & redundant)) * size,
        }
    return out


def _per_operation(ev: npt.NDArray[np.void], own: Ownership,
                   classified: npt.NDArray[np.int64], is_save: npt.NDArray[np.bool_],
                   nbytes: npt.NDArray[np.int64]) -> dict[str, dict[str, float | int]]:
    """Saves, restores and bytes per VM entry, per context switch, per signal."""
    l1 = (ev["flags"] & fmt.Flag.L2) == 0
    kind = ev["kind"]
    # L1 saves and restores that moved state.
    ops_l1 = l1[classified] & (own.unknown_reason[classified] != Unknown.NO_MEMORY_ACCESS)

    # KVM_RUN: the FPU work of the vCPU threads (tasks that entered a guest).
    entries = np.flatnonzero((kind == fmt.Kind.VM_ENTRY) & l1)
    vcpu_tasks = np.unique(ev["task"][entries])
    by_vcpu_thread = np.isin(ev["task"][classified], vcpu_tasks) & ops_l1

    # Context switches the FPU saw: consecutive L1 operations on one CPU by
    # different tasks.
    cpus = ev["vcpu"][classified]
    tasks_of = ev["task"][classified]
    switches = 0
    for cpu in np.unique(cpus):
        t = tasks_of[(cpus == cpu) & ops_l1]
        switches += int(np.count_nonzero(t[1:] != t[:-1])) if len(t) > 1 else 0
    on_task_buffers = (own.context_kind[classified] == ContextKind.TASK) & ops_l1

    # Signals: deliveries that wrote an FPU frame (saves to signal frames).
    frames = own.context_kind[classified] == ContextKind.SIGNAL_FRAME
    signals = int(np.count_nonzero(frames & is_save))
    around_signals = frames | (own.context_kind[classified] == ContextKind.INIT)

    def per(sel: npt.NDArray[np.bool_], n: int) -> dict[str, float | int]:
        return {
            "count": n,
            "saves": round(int(np.count_nonzero(sel & is_save)) / n, 3) if n else 0.0,
            "restores": round(int(np.count_nonzero(sel & ~is_save)) / n, 3) if n else 0.0,
            "bytes": round(float(nbytes[sel].sum()) / n, 1) if n else 0.0,
        }

    return {
        "vm_entry": per(by_vcpu_thread, len(entries)),
        "context_switch": per(on_task_buffers, switches),
        "signal": per(around_signals & ops_l1, signals),
    }
