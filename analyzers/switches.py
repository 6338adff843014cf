"""What the kernel does to FPU state per context switch, from the trace's
`context_switch` probes on __switch_to(prev, next).

The kernel's own rules (docs/analysis.md, "Per context switch"):

- x86 (arch/x86/kernel/process_64.c, __switch_to()): switch_fpu_prepare()
  saves prev's registers into its fpstate unless TIF_NEED_FPU_LOAD says
  they are no longer prev's (or prev is a kernel thread); switch_fpu_finish()
  sets TIF_NEED_FPU_LOAD on next. At next's return to user mode,
  switch_fpu_return() -> fpregs_restore_userregs() restores next's fpstate
  unless fpregs_state_valid(): the CPU's registers still hold next's state
  (nothing else used them since next left this CPU), and the restore is
  skipped.
- arm64 (arch/arm64/kernel/fpsimd.c, fpsimd_thread_switch()): fpsimd_save()
  saves prev's live state unless TIF_FOREIGN_FPSTATE; next gets
  TIF_FOREIGN_FPSTATE unless its state is still this CPU's
  (fpsimd_last_state, fpsimd_cpu); do_notify_resume() ->
  fpsimd_restore_current_state() loads it on the way to user mode.

So each switch is attributed: the saves on its CPU after the probe and
before the CPU runs anything of next's (they are prev's, made inside
__switch_to), and the restore of next's state right before next's first
return to user mode on that CPU, if next returns there before the CPU's next
switch. A return with no restore between it and the switch is a skipped
restore: the registers were still valid. A switch whose next does not
return to user mode before the next switch (a kernel thread, a task that
blocks again in the kernel) or goes through KVM_RUN first (its restores are
KVM's fpstate swaps, counted per VM entry) is not judged.

Arrays in, results out; nothing is printed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import numpy.typing as npt

from analyzers.ratio import ratio
from fputrace.trace import format as fmt


@dataclass
class SwitchCosts:
    switches: int = 0  # __switch_to calls in L1
    saves: int = 0  # prev's saves inside __switch_to
    save_bytes: int = 0
    restores: int = 0  # next's restores right before its first return to user mode
    restore_bytes: int = 0
    skipped_restores: int = 0  # next returned with no restore: its registers were still valid
    not_judged: int = 0  # next did not return to user mode before the next switch, or ran a guest

    def per_switch(self) -> dict[str, float | int | None]:
        n = self.switches
        return {"count": n, "saves": ratio(self.saves, n, 3),
                "restores": ratio(self.restores, n, 3),
                "bytes": ratio(self.save_bytes + self.restore_bytes, n, 1),
                "skipped_restores": ratio(self.skipped_restores, n, 3)}

    def as_json(self) -> dict[str, int | float]:
        return {**asdict(self), "per_switch": self.per_switch()}


def switch_costs(ev: npt.NDArray[np.void]) -> SwitchCosts | None:
    """None when the trace has no context switch probes (recorded before
    they existed, or without probes)."""
    kinds = ev["kind"]
    l1 = (ev["flags"] & fmt.Flag.L2) == 0
    switch = (kinds == fmt.Kind.PROBE) & (ev["index"] == fmt.Probe.CONTEXT_SWITCH) & l1
    if not np.any(switch):
        return None
    save = fmt.SAVE_TABLE[kinds] & l1
    restore = fmt.RESTORE_TABLE[kinds] & l1
    vm = (kinds == fmt.Kind.VM_ENTRY) | (kinds == fmt.Kind.VM_EXIT)
    ret = (kinds == fmt.Kind.USER_RETURN) & l1
    out = SwitchCosts(switches=int(np.count_nonzero(switch)))
    tasks, nbytes = ev["task"], ev["mem_bytes"]
    cpus = ev["vcpu"]
    # Per CPU, in trace order, the events that matter (plain ints in the loop).
    for cpu in np.unique(cpus[switch]).tolist():
        idx = np.flatnonzero((cpus == cpu) & (switch | save | restore | vm | ret))
        role = np.select([switch[idx], save[idx], restore[idx], vm[idx]], [0, 1, 2, 3], 4)
        prev = next_task = -1
        in_switch = False  # still inside __switch_to: saves are prev's
        pending = False  # a switch whose next has not returned to user mode yet
        last_restore = -1  # next's restore since the switch, with nothing after it
        for i, r, task, b in zip(idx.tolist(), role.tolist(), tasks[idx].tolist(),
                                 nbytes[idx].tolist(), strict=True):
            if r == 0:
                if pending:
                    out.not_judged += 1
                prev, next_task = int(ev["value"][i]), int(ev["addr"][i])
                in_switch, pending, last_restore = True, True, -1
                continue
            if in_switch and task == prev and r == 1:
                out.saves += 1
                out.save_bytes += b
                continue
            in_switch = in_switch and task == prev
            if not pending or task != next_task:
                continue
            if r == 2:
                last_restore = b
            elif r == 1:
                last_restore = -1  # saved again: a restore before it was not the return's
            elif r == 3:
                out.not_judged += 1  # a guest ran: KVM's swaps, not the switch's
                pending = False
            else:
                if last_restore >= 0:
                    out.restores += 1
                    out.restore_bytes += last_restore
                else:
                    out.skipped_restores += 1
                pending = False
        if pending:
            out.not_judged += 1
    return out
