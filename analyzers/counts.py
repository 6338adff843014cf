"""Event counts of a trace: per kind, per task, per CPU, per L1/L2, per kernel
function. Pure functions from trace arrays to results; nothing is printed here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from fputrace.kernel.symbols import Symbols
from fputrace.trace import format as fmt


@dataclass
class Group:
    """Events of one task, CPU, level or function, by kind."""

    label: str
    events: int
    by_kind: dict[str, int]
    extra: dict[str, object] = field(default_factory=dict)


@dataclass
class Counts:
    events_total: int
    events_by_kind: dict[str, int]
    events_by_instruction: dict[str, int]  # xsaveopt64 and xsaveopt apart
    bytes_saved: int
    bytes_restored: int
    per_task: list[Group]
    per_cpu: list[Group]
    per_level: list[Group]
    per_function: list[Group]


def _by_kind(kinds: npt.NDArray[np.uint8]) -> dict[str, int]:
    values, counts = np.unique(kinds, return_counts=True)
    return {fmt.kind_name(int(k)): int(n) for k, n in zip(values, counts, strict=True)}


def task_identity(events: npt.NDArray[np.void], tasks: npt.NDArray[np.void]
                  ) -> npt.NDArray[np.int64]:
    """For each event, the index in `tasks` of the announcement that names its
    task at that point of the trace (the latest one for the same task_struct
    pointer at or before the event), or -1. One vectorized pass: the key
    (pointer rank, seq) orders announcements and events alike."""
    out = np.full(len(events), -1, dtype=np.int64)
    if not len(tasks) or not len(events):
        return out
    order = np.lexsort((tasks["seq"], tasks["task"]))
    ptrs = tasks["task"][order]
    uniq = np.unique(ptrs)
    t_key = (np.searchsorted(uniq, ptrs).astype(np.uint64) << np.uint64(40)) | \
        tasks["seq"][order]
    ev_task = events["task"]
    rank = np.minimum(np.searchsorted(uniq, ev_task), len(uniq) - 1)
    known = (uniq[rank] == ev_task) & ((events["flags"] & fmt.Flag.TASK_VALID) != 0)
    e_key = (rank.astype(np.uint64) << np.uint64(40)) | events["seq"]
    j = np.searchsorted(t_key, e_key, side="right") - 1
    jc = np.maximum(j, 0)
    ok = known & (j >= 0) & ((t_key[jc] >> np.uint64(40)) == rank.astype(np.uint64))
    out[ok] = order[jc[ok]]
    return out


def task_label(tasks: npt.NDArray[np.void], i: int) -> str:
    if i < 0:
        return "(unknown task)"
    comm = bytes(tasks["comm"][i]).split(b"\0", 1)[0].decode(errors="replace")
    return f"{int(tasks['pid'][i])} {comm}"


def _groups(keys: npt.NDArray[np.int64], kinds: npt.NDArray[np.uint8],
            label_of: dict[int, str]) -> list[Group]:
    """Events per key and kind, counted in one pass (a 2-D bincount)."""
    if not len(keys):
        return []
    uniq, inv = np.unique(keys, return_inverse=True)
    table = np.bincount(inv.astype(np.int64) * fmt.KIND_MAX + kinds,
                        minlength=len(uniq) * fmt.KIND_MAX).reshape(len(uniq), fmt.KIND_MAX)
    groups = [Group(label_of.get(int(key), str(int(key))), int(row.sum()),
                    {fmt.kind_name(int(k)): int(row[k]) for k in np.flatnonzero(row)})
              for key, row in zip(uniq.tolist(), table, strict=True)]
    groups.sort(key=lambda g: (-g.events, g.label))
    return groups


def locate_functions(symbols: Symbols, pcs: npt.NDArray[np.uint64]) -> npt.NDArray[np.int64]:
    """Symbol index of each pc (-1: none), looking up each distinct pc once."""
    if not len(symbols):
        return np.full(len(pcs), -1, dtype=np.int64)
    uniq, inv = np.unique(pcs, return_inverse=True)
    located: npt.NDArray[np.int64] = symbols.locate(uniq)[inv]
    return located


def count_events(events: npt.NDArray[np.void], tasks: npt.NDArray[np.void],
                 symbols: Symbols, ident: npt.NDArray[np.int64] | None = None) -> Counts:
    """ident: task_identity(events, tasks), when the caller has it already."""
    kinds = events["kind"]
    flags = events["flags"]
    form64 = (flags & fmt.Flag.FORM64) != 0
    instr: dict[str, int] = {}
    for k, n in _by_kind(kinds).items():
        instr[k] = n
    for k in np.unique(kinds[form64]):
        name = fmt.kind_name(int(k))
        n64 = int(np.count_nonzero(form64 & (kinds == k)))
        instr[name + "64"] = n64
        instr[name] -= n64
        if not instr[name]:
            del instr[name]

    save = np.isin(kinds, [int(k) for k in fmt.SAVE_KINDS])
    restore = np.isin(kinds, [int(k) for k in fmt.RESTORE_KINDS])
    mem_bytes = events["mem_bytes"].astype(np.int64)

    if ident is None:
        ident = task_identity(events, tasks)
    task_labels = {i: task_label(tasks, i) for i in np.unique(ident).tolist()}
    per_task = _groups(ident, kinds, task_labels)
    # Several announcements (exec renames) of one pid/comm collapse into one row.
    merged: dict[str, Group] = {}
    for g in per_task:
        m = merged.setdefault(g.label, Group(g.label, 0, {}))
        m.events += g.events
        for k, n in g.by_kind.items():
            m.by_kind[k] = m.by_kind.get(k, 0) + n
    per_task = sorted(merged.values(), key=lambda g: (-g.events, g.label))

    cpus = events["vcpu"].astype(np.int64)
    per_cpu = _groups(cpus, kinds, {c: f"cpu{c}" for c in np.unique(cpus).tolist()})
    level = ((flags & fmt.Flag.L2) != 0).astype(np.int64)
    per_level = _groups(level, kinds, {0: "L1 host", 1: "L2 guest"})

    fn_idx = locate_functions(symbols, events["pc"])
    labels: dict[int, str] = {}
    for i in np.unique(fn_idx).tolist():
        if i < 0:
            labels[i] = "(no symbol)"
        else:
            mod = symbols.modules[i]
            labels[i] = symbols.names[i] + (f" [{mod}]" if mod else "")
    per_function = _groups(fn_idx.astype(np.int64), kinds, labels)

    return Counts(
        events_total=len(events),
        events_by_kind=_by_kind(kinds),
        events_by_instruction=dict(sorted(instr.items())),
        bytes_saved=int(mem_bytes[save].sum()),
        bytes_restored=int(mem_bytes[restore].sum()),
        per_task=per_task,
        per_cpu=per_cpu,
        per_level=per_level,
        per_function=per_function,
    )
