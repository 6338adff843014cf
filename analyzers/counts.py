"""Event counts of a trace: per kind, per task, per CPU, per L1/L2, per kernel
function. Pure functions from trace arrays to results; nothing is printed here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from fputrace.trace.symbols import Symbols

if TYPE_CHECKING:
    from analyzers.native import Aggregates
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
    if not comm and not int(tasks["pid"][i]):
        # A nested guest's task, known by its pointer alone (guest_view()).
        return f"task {int(tasks['task'][i]):#x}"
    return f"{int(tasks['pid'][i])} {comm}"


def _table_groups(keys: list[int], table: npt.NDArray[np.generic],
                  label_of: dict[int, str]) -> list[Group]:
    """Groups from a (key x kind) count table, merged by label, largest first."""
    merged: dict[str, Group] = {}
    for key, row in zip(keys, table, strict=True):
        label = label_of.get(key, str(key))
        g = merged.setdefault(label, Group(label, 0, {}))
        for k in np.flatnonzero(row).tolist():
            name = fmt.kind_name(k)
            g.by_kind[name] = g.by_kind.get(name, 0) + int(row[k])
            g.events += int(row[k])
    return sorted(merged.values(), key=lambda g: (-g.events, g.label))


def _function_labels(symbols: Symbols, pcs: npt.NDArray[np.uint64]) -> dict[int, str]:
    """Position in pcs -> 'function [module]' (or '(no symbol)')."""
    fn = symbols.locate(pcs) if len(symbols) else np.full(len(pcs), -1)
    return {j: "(no symbol)" if i < 0 else symbols.names[i] + (
        f" [{symbols.modules[i]}]" if symbols.modules[i] else "")
            for j, i in enumerate(fn.tolist())}


def _counts_from_tables(n_events: int, by_kind: npt.NDArray[np.generic],
                       by_kind64: npt.NDArray[np.generic], kind_bytes: npt.NDArray[np.generic],
                       task_keys: list[int], task_table: npt.NDArray[np.generic],
                       cpu_keys: list[int], cpu_table: npt.NDArray[np.generic],
                       level_keys: list[int], level_table: npt.NDArray[np.generic],
                       pcs: npt.NDArray[np.uint64], pc_table: npt.NDArray[np.generic],
                       tasks: npt.NDArray[np.void], symbols: Symbols) -> Counts:
    """Counts from per-kind tables, however they were computed."""
    kinds = np.flatnonzero(by_kind).tolist()
    instr: dict[str, int] = {}
    for k in kinds:
        name = fmt.kind_name(k)
        if int(by_kind[k]) - int(by_kind64[k]):
            instr[name] = int(by_kind[k]) - int(by_kind64[k])
        if by_kind64[k]:
            instr[name + "64"] = int(by_kind64[k])
    return Counts(
        events_total=n_events,
        events_by_kind={fmt.kind_name(k): int(by_kind[k]) for k in kinds},
        events_by_instruction=dict(sorted(instr.items())),
        bytes_saved=sum(int(kind_bytes[int(k)]) for k in fmt.SAVE_KINDS),
        bytes_restored=sum(int(kind_bytes[int(k)]) for k in fmt.RESTORE_KINDS),
        per_task=_table_groups(task_keys, task_table,
                               {i: task_label(tasks, i) for i in task_keys}),
        per_cpu=_table_groups(cpu_keys, cpu_table, {c: f"cpu{c}" for c in cpu_keys}),
        per_level=_table_groups(level_keys, level_table, {0: "L1 host", 1: "L2 guest"}),
        per_function=_table_groups(list(range(len(pcs))), pc_table,
                                   _function_labels(symbols, pcs)),
    )


def counts_from_aggregates(agg: Aggregates, n_events: int, tasks: npt.NDArray[np.void],
                           symbols: Symbols) -> Counts:
    """The counts, from the tables the compiled pass filled (Ownership.tables)."""
    from analyzers.native import layout

    NKIND = layout().FPA_NKIND  # fpanalysis.h, enum fpa_tables

    t_keys, t_rows = agg.task
    pcs, p_rows = agg.pc
    cpus = np.flatnonzero(agg.cpu_kind.sum(axis=1)).tolist()
    levels = np.flatnonzero(agg.level_kind.sum(axis=1)).tolist()
    return _counts_from_tables(
        n_events, agg.kind, agg.kind64, agg.kind_bytes, t_keys.view(np.int64).tolist(),
        t_rows[:, :NKIND], cpus, agg.cpu_kind[cpus], levels, agg.level_kind[levels], pcs,
        p_rows[:, :NKIND], tasks, symbols)
