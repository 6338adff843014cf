"""Time in instructions: what the FPU paths cost, from the events' icount
(format version 4, Feature.ICOUNT: the instructions the vCPU retired before
the event's instruction).

Three figures, each from events of one CPU (docs/analysis.md, "Time in
instructions"):

- Per timed function (a `probe` and its `probe_return`): its calls and the
  instructions from its first instruction to the one it returned to, all it
  called and any interrupt it took included. The timed functions are the
  FPU paths (fputrace.kernel.probes: x86 fpu_swap_kvm_fpstate(), which
  swaps the host's and the guest's fpstate around vcpu_run(), and
  switch_fpu_return(); arm64 kvm_arch_vcpu_load_fp()/_put_fp(),
  kvm_arch_vcpu_ctxflush_fp()/_ctxsync_fp(), do_fpsimd_acc()/do_sve_acc()
  and fpsimd_restore_current_state()) and __switch_to().
- Per VM exit: the host's instructions from an L1 VM exit to the same task's
  next VM entry on that CPU, and of them those inside the FPU paths; apart
  for the exits KVM handles in the kernel (the KVM_RUN loop goes round:
  vcpu_run() on x86, kvm_arch_vcpu_ioctl_run() on arm64) and those that
  return to the VMM in user mode first (KVM_RUN returns and is called
  again: the fpstate swap happens twice, kvm_put_guest_fpu() and
  kvm_load_guest_fpu()); on arm64 apart also the exits for a guest FP/SIMD
  or SVE access trap that the world switch handles itself and re-enters
  (kvm_hyp_handle_fpsimd() from fixup_guest_exit(), inlined in the
  __kvm_vcpu_run() loop at EL2): their whole window is that trap handler's.
  A window in which the CPU switched tasks (the vCPU thread was preempted)
  is counted apart: its instructions are other tasks'.
- Per context switch: the instructions of __switch_to(), which saves prev's
  registers (switch_fpu_prepare(), fpsimd_thread_switch()).

Arrays and symbols in, results out; nothing is printed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from analyzers.ratio import ratio
from fputrace.trace import format as fmt
from fputrace.trace.symbols import Symbols

K, P = fmt.Kind, fmt.Probe

# The probes whose functions are FPU paths (the rest timed: __switch_to).
FPU_PATH_PROBES = (P.FPU_PATH, P.KVM_LOAD_FP, P.KVM_PUT_FP)


@dataclass
class PathCost:
    name: str
    calls: int = 0
    instructions: int = 0
    most: int = 0

    @property
    def mean(self) -> float | None:
        return ratio(self.instructions, self.calls, 1)

    def as_json(self) -> dict[str, int | float | str | None]:
        return {"function": self.name, "calls": self.calls, "instructions": self.instructions,
                "mean": self.mean, "max": self.most}


@dataclass
class ExitCost:
    """VM exit to the same task's next entry, one kind of window."""

    count: int = 0
    instructions: int = 0
    fpu_path_instructions: int = 0  # ... of them inside FPU paths

    def as_json(self) -> dict[str, float | int | None]:
        n = self.count
        return {"count": n, "instructions": ratio(self.instructions, n, 1),
                "fpu_path_instructions": ratio(self.fpu_path_instructions, n, 1)}


@dataclass
class InstructionCosts:
    paths: list[PathCost] = field(default_factory=list)  # FPU paths, most instructions first
    in_kernel: ExitCost = field(default_factory=ExitCost)  # exits KVM handled in the kernel
    via_user: ExitCost = field(default_factory=ExitCost)  # ... that returned to the VMM first
    fp_trap: ExitCost = field(default_factory=ExitCost)  # arm64: a guest FP trap, at EL2
    preempted_exits: int = 0  # the CPU switched tasks between the exit and the entry
    switches: int = 0  # __switch_to calls seen returning
    switch_instructions: int = 0

    def windows(self) -> tuple[ExitCost, ExitCost, ExitCost]:
        return self.in_kernel, self.via_user, self.fp_trap

    def all_exits(self) -> ExitCost:
        return ExitCost(sum(w.count for w in self.windows()),
                        sum(w.instructions for w in self.windows()),
                        sum(w.fpu_path_instructions for w in self.windows()))

    def per_exit(self) -> dict[str, object]:
        return {**self.all_exits().as_json(), "in_kernel": self.in_kernel.as_json(),
                "via_user_mode": self.via_user.as_json(),
                "guest_fp_trap": self.fp_trap.as_json(), "preempted": self.preempted_exits}

    def per_switch(self) -> float | None:
        return ratio(self.switch_instructions, self.switches, 1)

    def per_operation(self, operation: str) -> float | None:
        """Instructions per operation of the report's per-operation table
        (Costs.per_operation and "context_switch"): a VM entry's are those
        from the exit before it to it; None for the operations they are not
        measured for."""
        if operation == "vm_entry":
            return self.all_exits().as_json()["instructions"]
        if operation == "context_switch":
            return self.per_switch()
        return None

    def as_json(self) -> dict[str, object]:
        return {"fpu_paths": [p.as_json() for p in self.paths],
                "per_vm_exit": self.per_exit(),
                "per_context_switch": {"count": self.switches,
                                       "instructions": self.per_switch()}}


def _outermost(starts: npt.NDArray[np.uint64], ends: npt.NDArray[np.uint64]
               ) -> npt.NDArray[np.bool_]:
    """Which spans no earlier span contains (nested timed functions count once)."""
    keep = np.ones(len(starts), dtype=bool)
    reach = -1
    for j in np.argsort(starts, kind="stable").tolist():
        if int(ends[j]) <= reach:
            keep[j] = False
        reach = max(reach, int(ends[j]))
    return keep


def instruction_costs(ev: npt.NDArray[np.void], symbols: Symbols, has_icount: bool
                      ) -> InstructionCosts | None:
    """None when the events carry no instruction count (before format 4)."""
    if not has_icount:
        return None
    out = InstructionCosts()
    kinds, cpus, icount = ev["kind"], ev["vcpu"], ev["icount"]
    l1 = (ev["flags"] & np.uint32(fmt.Flag.L2)) == 0
    ret = (kinds == K.PROBE_RETURN) & l1
    spent = icount - ev["aux"]
    fpu_path = ret & np.isin(ev["index"], [int(p) for p in FPU_PATH_PROBES])
    by_name: dict[str, PathCost] = {}
    for pc, n in zip(ev["pc"][fpu_path].tolist(), spent[fpu_path].tolist(), strict=True):
        name = symbols.function(pc)
        p = by_name.setdefault(name, PathCost(name))
        p.calls += 1
        p.instructions += n
        p.most = max(p.most, n)
    out.paths = sorted(by_name.values(), key=lambda p: (-p.instructions, p.name))
    sw = ret & (ev["index"] == P.CONTEXT_SWITCH)
    out.switches = int(np.count_nonzero(sw))
    out.switch_instructions = int(spent[sw].sum())

    switch = (kinds == K.PROBE) & (ev["index"] == P.CONTEXT_SWITCH) & l1
    vm = ((kinds == K.VM_EXIT) | (kinds == K.VM_ENTRY)) & l1
    user_return = (kinds == K.USER_RETURN) & l1
    trap = kinds == K.FP_TRAP
    for cpu in np.unique(cpus[vm]).tolist():
        on_cpu = cpus == cpu
        idx = np.flatnonzero(on_cpu & (vm | switch | user_return | trap))
        path_idx = np.flatnonzero(on_cpu & fpu_path)
        p_start, p_end = ev["aux"][path_idx], icount[path_idx]
        keep = _outermost(p_start, p_end)
        p_start, p_end = p_start[keep], p_end[keep]
        p_spent = (p_end - p_start).astype(np.int64)
        order = np.argsort(p_start, kind="stable")
        p_start, p_end, p_spent = p_start[order], p_end[order], p_spent[order]
        cum = np.r_[0, np.cumsum(p_spent)]
        exit_at = exit_task = -1
        preempted = via_user = trapped = False
        for i in idx.tolist():
            k = int(kinds[i])
            if k == K.VM_EXIT:
                exit_at, exit_task = int(icount[i]), int(ev["task"][i])
                preempted = via_user = trapped = False
            elif k == K.PROBE:
                preempted = True
            elif k == K.USER_RETURN:
                via_user = True
            elif k == K.FP_TRAP:
                # The guest's own trap (the host's are from its user mode,
                # which a window through user mode counts already).
                trapped = trapped or exit_at >= 0
            elif exit_at >= 0 and int(ev["task"][i]) == exit_task:
                entry_at = int(icount[i])
                if preempted:
                    out.preempted_exits += 1
                else:
                    window = out.via_user if via_user else out.fp_trap if trapped \
                        else out.in_kernel
                    window.count += 1
                    window.instructions += entry_at - exit_at
                    # The outermost FPU paths wholly inside [exit, entry].
                    lo = int(np.searchsorted(p_start, np.uint64(exit_at), side="left"))
                    hi = int(np.searchsorted(p_start, np.uint64(entry_at), side="right"))
                    inside = p_end[lo:hi] <= np.uint64(entry_at)
                    window.fpu_path_instructions += int(cum[hi] - cum[lo]) if np.all(inside) \
                        else int(p_spent[lo:hi][inside].sum())
                exit_at = -1
            else:
                exit_at = -1  # another task's entry: this exit's window is not one
    return out


def machine_time(ev: npt.NDArray[np.void]) -> npt.NDArray[np.int64]:
    """Each event's time in instructions, for one axis across CPUs: the
    instructions all CPUs retired up to it, each other CPU's as of its last
    event before it (their counts are only known at their events). Never
    decreasing in trace order; with one CPU, exactly that CPU's count.
    A user entry, written when it is first needed, carries the count of
    the entry itself and may be older than the event before it: a CPU's
    count here is the largest it has shown."""
    cpus = ev["vcpu"]
    icount = ev["icount"].astype(np.int64)
    step = np.zeros(len(ev), dtype=np.int64)
    for cpu in np.unique(cpus).tolist():
        idx = np.flatnonzero(cpus == cpu)
        seen = np.maximum.accumulate(icount[idx])
        step[idx] = np.diff(seen, prepend=0)
    out: npt.NDArray[np.int64] = np.cumsum(step)
    return out


# How many of a CPU's timed calls that began before an event are looked at
# for one containing it: FPU paths nest a few deep, and a containing call
# is one of the latest to begin.
ENCLOSING_LOOKBACK = 64


def enclosing_paths(ev: npt.NDArray[np.void], symbols: Symbols, events: list[int]
                    ) -> dict[int, str]:
    """The FPU path (a timed function, FPU_PATH_PROBES) each of the events
    ran inside, the innermost where they nest: the kernel function that
    called the saving or restoring helper, which an event's own site
    (save_fpregs_to_fpstate(), fpsimd_save_state()) does not say. From a
    call's first instruction to its return on the event's CPU, by the
    instruction count; events outside every timed call, or a trace without
    instruction counts, are left out."""
    if not events or not len(ev):
        return {}
    l1 = (ev["flags"] & np.uint32(fmt.Flag.L2)) == 0
    ret = np.flatnonzero((ev["kind"] == K.PROBE_RETURN) & l1 &
                         np.isin(ev["index"], [int(p) for p in FPU_PATH_PROBES]))
    out: dict[int, str] = {}
    by_cpu: dict[int, tuple[npt.NDArray[np.uint64], npt.NDArray[np.uint64],
                            npt.NDArray[np.intp]]] = {}
    for i in sorted(set(events)):
        cpu = int(ev["vcpu"][i])
        if cpu not in by_cpu:
            mine = ret[ev["vcpu"][ret] == cpu]
            order = np.argsort(ev["aux"][mine], kind="stable")
            mine = mine[order]
            by_cpu[cpu] = (ev["aux"][mine], ev["icount"][mine], mine)
        starts, ends, which = by_cpu[cpu]
        t = ev["icount"][i]
        hi = int(np.searchsorted(starts, t, side="right"))
        for j in range(hi - 1, max(hi - 1 - ENCLOSING_LOOKBACK, -1), -1):
            if ends[j] >= t:
                out[i] = symbols.function(int(ev["pc"][which[j]]))
                break
    return out
