"""arm64-specific costs: FP/SIMD, SVE and SME access traps.

Linux and KVM on arm64 switch FP state lazily by trapping: a context whose
state is not in the registers runs with FP (or SVE) access disabled, and its
first use traps and loads it. Each trap is an exception round trip, so the
FPSIMD maintainers count them:

- traps per KVM_RUN: the guest's traps (kvm_hyp_handle_fpsimd() loads the
  guest's registers on the first FP use after every vcpu_load);
- traps per context switch: the host's own traps (do_sve_acc(),
  do_sme_acc());
- traps whose context's state was saved just before and is loaded back just
  after (on that CPU, the state operation before the trap is a save, the one
  after is a load of the same buffer): a save immediately undone;
- SVE-to-FPSIMD downgrades followed by a new SVE trap: the kernel dropped a
  task's SVE state by disabling its EL0 SVE access (CPACR_EL1.ZEN, or
  CPTR_EL2.ZEN under VHE; at system calls, el0_svc_common() ->
  fp_user_discard() -> sve_user_disable() in arch/arm64/kernel/syscall.c),
  and the task then used SVE again.

Arrays in, numbers out: depends on the trace layer only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from analyzers.ratio import ratio
from fputrace.trace import format as fmt

CPACR_EL1_ENCODING = 0xC082     # op0 3, op1 0, CRn 1, CRm 0, op2 2, as an MSR names it

ESR_EC_NAMES = {0x07: "fp", 0x19: "sve", 0x1D: "sme"}


def el0_sve_allowed(cpacr: int) -> bool:
    """CPACR_EL1.ZEN (bits 17:16; CPTR_EL2 under E2H): 0b11 traps nothing,
    0b01 traps EL0 only, 0b00 and 0b10 trap EL0 and EL1."""
    return (cpacr >> 16) & 3 == 3


@dataclass
class TrapCosts:
    traps: dict[str, dict[str, int]] = field(default_factory=dict)  # context -> kind -> n
    kvm_runs: int = 0
    guest_traps: int = 0
    host_traps: int = 0
    context_switches: int = 0
    save_undone: int = 0
    sve_downgrades: int = 0
    sve_retraps: int = 0

    def per(self, n: int, d: int) -> float | None:
        return ratio(n, d, 3)

    def as_json(self) -> dict[str, object]:
        return {
            "traps": self.traps,
            "kvm_runs": self.kvm_runs,
            "guest_traps_per_kvm_run": self.per(self.guest_traps, self.kvm_runs),
            "context_switches": self.context_switches,
            "host_traps_per_context_switch": self.per(self.host_traps, self.context_switches),
            "traps_after_own_save": self.save_undone,
            "sve_downgrades": self.sve_downgrades,
            "sve_traps_after_downgrade": self.sve_retraps,
        }


def trap_costs(ev: npt.NDArray[np.void], ident: npt.NDArray[np.int64]) -> TrapCosts:
    """The trap costs of an arm64 trace (events in seq order; ident: each
    event's task identity, analyzers.counts.task_identity())."""
    out = TrapCosts()
    kinds = ev["kind"]
    flags = ev["flags"]
    is_state = fmt.SAVE_TABLE[kinds] | fmt.RESTORE_TABLE[kinds]
    last_state: dict[int, int] = {}         # cpu -> index of its last save/load
    pending_trap: dict[int, list[int]] = {}  # cpu -> traps since that save
    last_task: dict[int, int] = {}          # cpu -> task of its last host event
    entered_since_user: dict[int, bool] = {}
    downgraded: dict[int, bool] = {}        # task -> EL0 SVE access dropped since its last trap
    watched = np.isin(kinds, [fmt.Kind.FP_TRAP, fmt.Kind.VM_ENTRY, fmt.Kind.USER_ENTRY,
                              fmt.Kind.USER_RETURN, fmt.Kind.CPACR_WRITE, fmt.Kind.CPTR_WRITE])
    for i in np.flatnonzero(is_state | watched).tolist():
        cpu = int(ev["vcpu"][i])
        k = int(kinds[i])
        task = int(ident[i])
        l2 = bool(int(flags[i]) & fmt.Flag.L2)
        if not l2 and k != fmt.Kind.FP_TRAP:
            if cpu in last_task and last_task[cpu] != task and k in (fmt.Kind.USER_ENTRY,
                                                                     fmt.Kind.USER_RETURN):
                out.context_switches += 1
            if k in (fmt.Kind.USER_ENTRY, fmt.Kind.USER_RETURN):
                last_task[cpu] = task
        if k == fmt.Kind.USER_ENTRY:
            entered_since_user[cpu] = False
        elif k == fmt.Kind.VM_ENTRY:
            if not entered_since_user.get(cpu, True):
                out.kvm_runs += 1
            entered_since_user[cpu] = True
        elif k in (fmt.Kind.CPACR_WRITE, fmt.Kind.CPTR_WRITE) and not l2:
            old, new = int(ev["aux"][i]), int(ev["value"][i])
            # Only a write that reached the CPACR layout: CPACR_EL1, or
            # CPTR_EL2 written as CPACR_EL1 under E2H (index: named | reached << 16).
            named = int(ev["index"][i]) & 0xFFFF
            if (k == fmt.Kind.CPACR_WRITE or named == CPACR_EL1_ENCODING) and \
                    el0_sve_allowed(old) and not el0_sve_allowed(new):
                downgraded[task] = True
                out.sve_downgrades += 1
        elif k == fmt.Kind.FP_TRAP:
            ec = (int(ev["value"][i]) >> 26) & 0x3F
            context = "guest" if l2 else ("user" if int(ev["pc"][i]) >> 48 == 0 else "kernel")
            row = out.traps.setdefault(context, {})
            name = ESR_EC_NAMES.get(ec, f"ec{ec:#x}")
            row[name] = row.get(name, 0) + 1
            if l2:
                out.guest_traps += 1
            else:
                out.host_traps += 1
                if ec == 0x19:
                    out.sve_retraps += downgraded.pop(task, False)
            p = last_state.get(cpu)
            if p is not None and fmt.SAVE_TABLE[kinds[p]]:
                pending_trap.setdefault(cpu, []).append(p)
        if is_state[i]:
            for p in pending_trap.pop(cpu, []):
                if fmt.RESTORE_TABLE[kinds[i]] and int(ev["addr"][i]) == int(ev["addr"][p]):
                    out.save_undone += 1
            last_state[cpu] = i
    return out
