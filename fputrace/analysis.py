"""The whole analysis of a recorded run, computed once for every command
that shows it (report, compare, export, view): ownership and classes,
counts, costs, boundary checks and the findings that combine them."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from analyzers.arm64 import TrapCosts, trap_costs
from analyzers.boundaries import check_boundaries
from analyzers.costs import Costs, costs_from_aggregates
from analyzers.counts import Counts, counts_from_aggregates
from analyzers.ownership import Ownership, analyze
from analyzers.timeline import cpu_timeline
from analyzers.verdict import Verdict, combine
from fputrace.run import Run
from fputrace.trace import format as fmt


@dataclass
class Analysis:
    run: Run
    own: Ownership
    ident: npt.NDArray[np.int64]  # each event's task announcement index, -1
    counts: Counts
    costs: Costs
    verdict: Verdict
    traps: TrapCosts | None  # arm64 only

    @property
    def arm64(self) -> bool:
        return self.run.trace.header.arch == fmt.Arch.AARCH64

    def timeline(self) -> npt.NDArray[np.void]:
        """Per-CPU ownership intervals (analyzers.timeline)."""
        return cpu_timeline(self.run.trace.events, self.own)


def analyze_run(r: Run) -> Analysis:
    events, tasks = r.trace.events, r.trace.tasks
    own = analyze(events, r.symbols.values.get("init_fpstate"), tasks, tables=True)
    assert own.tables is not None and own.task_ident is not None
    # Classes and every table from one compiled pass.
    counts = counts_from_aggregates(own.tables, len(events), tasks, r.symbols)
    costs = costs_from_aggregates(own.tables, own, tasks, r.symbols)
    ident = own.task_ident
    bounds = check_boundaries(events, tasks, ident, r.symbols,
                              "fpu_copy_uabi_to_guest_fpstate" in r.symbols.values)
    verdict = combine(events, ident, own, bounds)
    traps = trap_costs(events, ident) if r.trace.header.arch == fmt.Arch.AARCH64 else None
    return Analysis(r, own, ident, counts, costs, verdict, traps)
