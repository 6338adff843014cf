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
    pointer at or before the event), or -1."""
    out = np.full(len(events), -1, dtype=np.int64)
    if not len(tasks) or not len(events):
        return out
    valid = (events["flags"] & fmt.Flag.TASK_VALID) != 0
    ev_task = events["task"]
    for ptr in np.unique(tasks["task"]):
        t_idx = np.flatnonzero(tasks["task"] == ptr)
        t_seq = tasks["seq"][t_idx]
        order = np.argsort(t_seq, kind="stable")
        t_idx, t_seq = t_idx[order], t_seq[order]
        e_idx = np.flatnonzero(valid & (ev_task == ptr))
        if not len(e_idx):
            continue
        pos = np.searchsorted(t_seq, events["seq"][e_idx], side="right") - 1
        ok = pos >= 0
        out[e_idx[ok]] = t_idx[pos[ok]]
    return out


def task_label(tasks: npt.NDArray[np.void], i: int) -> str:
    if i < 0:
        return "(unknown task)"
    comm = bytes(tasks["comm"][i]).split(b"\0", 1)[0].decode(errors="replace")
    return f"{int(tasks['pid'][i])} {comm}"


def _groups(keys: npt.NDArray[np.int64], kinds: npt.NDArray[np.uint8],
            label_of: dict[int, str]) -> list[Group]:
    groups: list[Group] = []
    if not len(keys):
        return groups
    order = np.argsort(keys, kind="stable")
    sk = keys[order]
    starts = np.flatnonzero(np.r_[True, sk[1:] != sk[:-1]])
    ends = np.r_[starts[1:], len(sk)]
    for s, e in zip(starts, ends, strict=True):
        key = int(sk[s])
        groups.append(Group(label_of.get(key, str(key)), int(e - s),
                            _by_kind(kinds[order[s:e]])))
    groups.sort(key=lambda g: (-g.events, g.label))
    return groups


def count_events(events: npt.NDArray[np.void], tasks: npt.NDArray[np.void],
                 symbols: Symbols) -> Counts:
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

    fn_idx = symbols.locate(events["pc"]) if len(symbols) else np.full(len(events), -1)
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
