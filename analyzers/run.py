"""The whole analysis of a recorded run, computed once for every command
that shows it (report, compare, export, view): ownership and classes,
counts, costs, boundary checks and the findings that combine them."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import numpy.typing as npt

from analyzers.arm64 import TrapCosts, trap_costs
from analyzers.boundaries import check_boundaries
from analyzers.costs import Costs, costs_from_aggregates, vcpu_instance, vcpu_label
from analyzers.counts import Counts, counts_from_aggregates, task_label
from analyzers.instructions import (
    InstructionCosts,
    enclosing_paths,
    instruction_costs,
    machine_time,
)
from analyzers.ownership import Class, ContextKind, Ownership, analyze
from analyzers.switches import SwitchCosts, switch_costs
from analyzers.timeline import cpu_timeline
from analyzers.verdict import Verdict, combine
from fputrace.trace import format as fmt
from fputrace.trace.run import Run, load_symbols

# The units of a TimeAxis.
AXIS_INSTRUCTIONS = "instructions (all CPUs)"
AXIS_SEQ = "event seq"


@dataclass
class TimeAxis:
    """The time the viewer and the exports draw on: instructions when the
    events carry them (format 4: analyzers.instructions.machine_time()),
    else the event order."""

    time: npt.NDArray[np.int64]  # each event's time, never decreasing
    seqs: npt.NDArray[np.uint64]  # each event's seq
    instructions: bool

    @property
    def unit(self) -> str:
        return AXIS_INSTRUCTIONS if self.instructions else AXIS_SEQ

    def of_seq(self, seqs: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
        """The time of the events with these seqs (or of the next one there is)."""
        if not len(self.seqs):
            return seqs
        at = np.minimum(np.searchsorted(self.seqs.astype(np.int64), seqs), len(self.seqs) - 1)
        out: npt.NDArray[np.int64] = self.time[at]
        return out


@dataclass
class Analysis:
    """One kernel's analysis: the classification and the verdict, made at
    once; the tables of costs and counts when first asked for (the viewer
    never asks, and opens sooner)."""

    run: Run
    own: Ownership
    ident: npt.NDArray[np.int64]  # each event's task announcement index, -1
    verdict: Verdict
    # The nested guest's own kernel, analysed alike (guest_view()), when the
    # trace follows its tasks (record --guest-kernel).
    guest: Analysis | None = None

    @property
    def arm64(self) -> bool:
        return self.run.trace.header.arch == fmt.Arch.AARCH64

    @cached_property
    def counts(self) -> Counts:
        assert self.own.tables is not None
        return counts_from_aggregates(self.own.tables, len(self.run.trace.events),
                                      self.run.trace.tasks, self.run.symbols)

    @cached_property
    def costs(self) -> Costs:
        assert self.own.tables is not None
        return costs_from_aggregates(self.own.tables, self.own, self.run.trace.tasks,
                                     self.run.symbols)

    @cached_property
    def switches(self) -> SwitchCosts | None:
        """None: the trace has no context switch probes."""
        return switch_costs(self.run.trace.events)

    @cached_property
    def traps(self) -> TrapCosts | None:
        """arm64 only."""
        if not self.arm64:
            return None
        traps = trap_costs(self.run.trace.events, self.ident)
        if self.switches is not None:
            # Host traps per real context switch (__switch_to calls), where
            # the trace has them.
            traps.context_switches = self.switches.switches
        return traps

    @cached_property
    def instructions(self) -> InstructionCosts | None:
        """None: no instruction counts (format < 4)."""
        return instruction_costs(self.run.trace.events, self.run.symbols,
                                 bool(self.run.trace.header.features & fmt.Feature.ICOUNT))

    def time_axis(self) -> TimeAxis:
        ev = self.run.trace.events
        if self.run.trace.header.features & fmt.Feature.ICOUNT:
            return TimeAxis(machine_time(ev), ev["seq"], True)
        return TimeAxis(ev["seq"].astype(np.int64), ev["seq"], False)

    def timeline(self) -> npt.NDArray[np.void]:
        """Per-CPU ownership intervals (analyzers.timeline)."""
        return cpu_timeline(self.run.trace.events, self.own)


def _main_task(addr: npt.NDArray[np.uint64], ident: npt.NDArray[np.int64]
               ) -> dict[int, tuple[int, int]]:
    """Per buffer: the task that moves it most often (not the first: a fork
    saves the parent's registers into the child's buffer, fpu_clone()), and
    the position of one of its operations."""
    order = np.lexsort((ident, addr))
    a_s, i_s = addr[order], ident[order]
    n = len(order)
    if not n:
        return {}
    change = np.r_[True, (a_s[1:] != a_s[:-1]) | (i_s[1:] != i_s[:-1])]
    starts = np.flatnonzero(change)
    lengths = np.diff(np.r_[starts, n])
    # Per buffer the longest run, known tasks before unknown ones.
    known = (i_s[starts] >= 0).astype(np.int64)
    best = np.lexsort((-lengths, -known, a_s[starts]))
    first = np.r_[True, a_s[starts][best][1:] != a_s[starts][best][:-1]]
    chosen = starts[best][first]
    return {int(a_s[j]): (int(i_s[j]), int(order[j])) for j in chosen.tolist()}


def owner_labels(a: Analysis, owners: npt.NDArray[np.uint64]) -> dict[int, str]:
    """A name for each owner buffer: its task ('pid comm', the one whose
    saves and restores move it most), 'guest of vcpu ...', 'init state' or
    'signal frame'; 0 is 'unknown'."""
    ev = a.run.trace.events
    tasks = a.run.trace.tasks
    is_op = np.flatnonzero(a.own.cls != Class.NOT_CLASSIFIED)
    main = _main_task(ev["addr"][is_op], a.ident[is_op])
    out: dict[int, str] = {0: "unknown"}
    for buf in np.unique(owners).tolist():
        if buf == 0 or buf not in main:
            continue
        who, pos = main[buf]
        ck = int(a.own.context_kind[is_op[pos]])
        if ck == ContextKind.INIT:
            out[buf] = "init state"
        elif ck == ContextKind.GUEST:
            out[buf] = "guest of " + vcpu_label(a.own.guest_buffers.get(buf, 0), tasks)
        elif ck == ContextKind.SIGNAL_FRAME:
            out[buf] = "signal frame"
        else:
            out[buf] = task_label(tasks, who) if who >= 0 else f"buffer {buf:#x}"
    return out


def vm_runs(ev: npt.NDArray[np.void], ident: npt.NDArray[np.int64]
            ) -> list[tuple[int, int, int, int]]:
    """(vCPU instance, CPU, entry index, exit index) for every L1 VM entry
    that an exit on the same CPU ends; an entry the trace does not see end is
    left out."""
    l1 = (ev["flags"] & np.uint32(fmt.Flag.L2)) == 0
    idx = np.flatnonzero(l1 & np.isin(ev["kind"], [fmt.Kind.VM_ENTRY, fmt.Kind.VM_EXIT]))
    entry = int(fmt.Kind.VM_ENTRY)
    open_entry: dict[int, tuple[int, int]] = {}  # CPU -> (its open entry, that vCPU)
    out = []
    for i, kind, cpu, vmcb, who in zip(idx.tolist(), ev["kind"][idx].tolist(),
                                       ev["vcpu"][idx].tolist(), ev["addr"][idx].tolist(),
                                       ident[idx].tolist(), strict=True):
        if kind == entry:
            open_entry[cpu] = (i, vcpu_instance(vmcb, who))
        elif cpu in open_entry:
            e, vcpu = open_entry.pop(cpu)
            out.append((vcpu, cpu, e, i))
    return out


def host_view(r: Run) -> Run:
    """The run as the L1 kernel's model sees it: without the nested guest's
    task records (the two kernels' task pointers may coincide)."""
    tasks = r.trace.tasks
    l2 = (tasks["flags"] & np.uint16(fmt.TaskFlag.L2)) != 0
    if not np.any(l2):
        return r
    return dataclasses.replace(r, trace=dataclasses.replace(r.trace, tasks=tasks[~l2]))


def guest_view(r: Run) -> Run | None:
    """The nested guest's own run: its events (L2), each with the guest's
    task, as if its kernel had been recorded alone; None when the trace does
    not follow the guest's tasks. Its symbols are the guest kernel's
    (run.guest.kallsyms.gz), else the host's."""
    tasks = r.trace.tasks
    l2_tasks = (tasks["flags"] & np.uint16(fmt.TaskFlag.L2)) != 0
    if not np.any(l2_tasks):
        return None
    ev = r.trace.events
    mine = (ev["flags"] & np.uint32(fmt.Flag.L2)) != 0
    gev = ev[mine].copy()
    gev["task"] = gev["guest_task"]
    flags = gev["flags"] & ~np.uint32(fmt.Flag.L2 | fmt.Flag.TASK_VALID)
    gev["flags"] = flags | np.where(gev["guest_task"] != 0, np.uint32(fmt.Flag.TASK_VALID),
                                    np.uint32(0))
    gtasks = tasks[l2_tasks].copy()
    gtasks["flags"] &= ~np.uint16(fmt.TaskFlag.L2)
    if not np.any(gtasks["pid"]):
        # The guest's tasks known by pointer alone (a trace whose plugin
        # could not read the guest's memory): a task_struct is reused after
        # its task exits, so each fork's child (the guest's fork probe,
        # arg0) is a new lifetime, numbered in tgid.
        forks = gev[(gev["kind"] == fmt.Kind.PROBE) & (gev["index"] == fmt.Probe.FORK_COPY)]
        born = np.zeros(len(forks), dtype=fmt.TASK_DTYPE)
        born["seq"], born["task"], born["vcpu"] = forks["seq"], forks["value"], forks["vcpu"]
        born["tgid"] = np.arange(1, len(forks) + 1, dtype=np.uint32)
        gtasks = np.sort(np.concatenate([gtasks, born]), order="seq", kind="stable")
    symbols = load_symbols(r.trace.path, "guest.kallsyms.gz") or r.symbols
    trace = dataclasses.replace(r.trace, events=gev, tasks=gtasks)
    return Run(trace, symbols, r.meta)


def analyze_run(r: Run) -> Analysis:
    """The L1 kernel's analysis and, nested, the guest kernel's."""
    guest = guest_view(r)
    a = _analyze_level(host_view(r))
    if guest is not None:
        a.guest = _analyze_level(guest)
    return a


def _analyze_level(r: Run) -> Analysis:
    events, tasks = r.trace.events, r.trace.tasks
    # Classes and every table from one compiled pass.
    own = analyze(events, r.symbols.values.get("init_fpstate"), tasks, tables=True)
    assert own.tables is not None and own.task_ident is not None
    ident = own.task_ident
    bounds = check_boundaries(events, tasks, ident, r.symbols,
                              "fpu_copy_uabi_to_guest_fpstate" in r.symbols.values,
                              r.trace.header.arch, r.trace.gaps,
                              bool(r.trace.header.features & fmt.Feature.BOUNDARY_STATE))
    verdict = combine(events, ident, own, bounds, r.trace.gaps)
    if r.trace.header.features & fmt.Feature.ICOUNT:
        verdict.within = enclosing_paths(
            events, r.symbols, [i for f in verdict.findings
                                for i in (f.event, *f.events.values()) if i >= 0])
    return Analysis(r, own, ident, verdict)
