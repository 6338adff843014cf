"""Ground truth at the kernel's boundaries: did a task or a guest get its FPU
registers back as it left them?

- A task: when it returns to user mode, its FP/SIMD register file must equal
  what it held when the task last entered the kernel, unless the kernel
  changed it on purpose in between (signal delivery, sigreturn, exec, a
  ptrace regset write) or the task is a forked child returning for the first
  time (then it must equal the parent's registers at the fork copy).
- A vCPU: at each VM entry, the guest's FP registers must equal those at the
  vCPU's previous VM exit, unless KVM changed them on purpose (KVM_SET_XSAVE
  and KVM_SET_FPU through fpu_copy_uabi_to_guest_fpstate()).

A difference with no purposeful change is a `corrupted_state` finding, with
the first operation in between that explains it. Kernel SIMD use outside a
kernel_fpu_begin()/kernel_fpu_end() section is a `kernel_fpu_misuse`
finding, whether or not it changed a task's registers.

The plugin marks a return QUIET when nothing could change the registers
since the same task's entry on that vCPU (no save, restore or kernel SIMD
instruction ran): such a return is checked by construction. docs/analysis.md
explains the rules and cites the kernel code they come from.

Arrays in, results out; nothing is printed.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from fputrace.trace import format as fmt
from fputrace.trace.symbols import Symbols

if TYPE_CHECKING:
    from analyzers.native import BoundaryPass

K = fmt.Kind
P = fmt.Probe
F = fmt.Flag

# Probes whose function changes the calling task's user FPU state on purpose
# (docs/analysis.md, "Purposeful changes").
TASK_PURPOSEFUL = {
    P.SIGFRAME_SAVE: "signal delivery",
    P.SIGRETURN: "sigreturn",
    P.EXEC_RESET: "exec",
    P.RESTORE_FAULT: "init state after a faulting restore",
}
# Functions of the FPU core that execute x87/SSE instructions outside a
# kernel_fpu section, by design:
# - fpu__init_cpu(), fpu__init_system(): FNINIT/FNSTSW/FNSTCW at CPU bring-up
#   (arch/x86/kernel/fpu/init.c);
# - restore_fpregs_from_fpstate(): FNCLEX/EMMS/FILD before the restore on CPUs
#   with X86_BUG_FXSAVE_LEAK (arch/x86/kernel/fpu/core.c);
# - fpu__init_system_early_generic(), fpu__init_cpu_generic(): their helpers.
FPU_CORE_SIMD = frozenset({
    "fpu__init_cpu", "fpu__init_system", "fpu__init_cpu_generic",
    "fpu__init_system_early_generic", "restore_fpregs_from_fpstate",
})


@dataclass
class BoundaryFinding:
    kind: str  # "corrupted_state" or "kernel_fpu_misuse"
    context: str  # "task" or "vcpu"
    task: int  # announcement index of the task (or the vCPU thread), -1
    vmcb: int  # vcpu findings: the VMCB, else 0
    before: int  # event index: the entry / VM exit the state is compared with, -1
    after: int  # event index: the return / VM entry where it differs (misuse: the event)
    cause: int  # event index of the operation that explains it, -1
    explanation: str
    simd_pc: int = 0  # kernel_fpu_misuse: the SIMD instruction's address


@dataclass
class BoundaryCheck:
    """Counts for one kind of boundary (user returns, VM entries)."""

    checked: int = 0
    quiet: int = 0  # of checked: no FP activity in between, equal by construction
    violations: int = 0
    changed_on_purpose: Counter[str] = field(default_factory=Counter)
    unchecked: Counter[str] = field(default_factory=Counter)


@dataclass
class Boundaries:
    user: BoundaryCheck
    vcpu: BoundaryCheck
    per_task: dict[int, tuple[int, int]]  # task key -> (checked, violations)
    per_vcpu: dict[tuple[int, int], tuple[int, int]]  # (VMCB, thread's task key) -> counts
    findings: list[BoundaryFinding]
    kfpu_sections: int
    keys: TaskKeys  # the task keys above, and the announcement naming each

    @property
    def checked(self) -> int:
        return self.user.checked + self.vcpu.checked

    @property
    def violations(self) -> int:
        return self.user.violations + self.vcpu.violations


class TaskKeys:
    """A key per task lifetime: its task_struct pointer and pid (pointers are
    reused after a task exits; pids are not reused that soon), found from an
    event's task announcement; -1 where the task is unknown. Computed for the
    events asked about, never for the whole trace."""

    def __init__(self, tasks: npt.NDArray[np.void], ident: npt.NDArray[np.int64]) -> None:
        self.ident = ident
        self.latest: dict[int, int] = {}  # key -> its latest announcement (after exec)
        if len(tasks):
            pairs = np.stack([tasks["task"], tasks["pid"].astype(np.uint64)], axis=1)
            inv = np.unique(pairs, axis=0, return_inverse=True)[1].reshape(-1)
            self.key_of_ident = inv.astype(np.int64)
            for a in np.argsort(tasks["seq"], kind="stable").tolist():
                self.latest[int(inv[a])] = a
        else:
            self.key_of_ident = np.zeros(0, dtype=np.int64)

    def at(self, idx: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
        a = self.ident[idx]
        if not len(self.key_of_ident):
            return np.full(len(a), -1, dtype=np.int64)
        return np.where(a >= 0, self.key_of_ident[np.maximum(a, 0)], -1)

    def of(self, i: int) -> int:
        a = int(self.ident[i])
        return int(self.key_of_ident[a]) if a >= 0 and len(self.key_of_ident) else -1


def kernel_text_high(symbols: Symbols) -> int:
    """The high 32 bits of kernel text addresses, to complete an event's
    simd_pc (its low half): from _stext where the symbols have it (arm64's
    kernel text is at 0xffff8000xxxxxxxx), else x86's top 2 GiB."""
    stext = symbols.values.get("_stext")
    return stext & ~0xFFFFFFFF if stext else fmt.KERNEL_TEXT_HIGH


class _Explainer:
    """Finds, between two boundaries of a context, the operation that
    explains a difference of its registers."""

    def __init__(self, ev: npt.NDArray[np.void], keys: TaskKeys,
                 misuse_events: set[int], symbols: Symbols, sections: int) -> None:
        self.ev = ev
        self.sections = sections
        self.keys = keys
        self.misuse = misuse_events
        self.symbols = symbols
        self.text_high = kernel_text_high(symbols)
        self._saves: npt.NDArray[np.bool_] | None = None
        self._restores: npt.NDArray[np.bool_] | None = None

    # Whole-trace masks, made only when a violation needs explaining.
    @property
    def saves(self) -> npt.NDArray[np.bool_]:
        if self._saves is None:
            self._saves = fmt.SAVE_TABLE[self.ev["kind"]]
        return self._saves

    @property
    def restores(self) -> npt.NDArray[np.bool_]:
        if self._restores is None:
            self._restores = fmt.RESTORE_TABLE[self.ev["kind"]]
        return self._restores

    def explain(self, lo: int, hi: int, key: int, want: int, vcpu: int) -> tuple[int, str]:
        """Events lo+1..hi (indices: the earlier boundary excluded, the later
        one included, since it may carry the KERNEL_SIMD flag) of the task
        `key`; `want` the hash the registers should have held. Returns (event
        index or -1, explanation)."""
        ev = self.ev
        window = np.arange(lo + 1, hi + 1)
        mine = window[self.keys.at(window) == key]
        for i in mine.tolist():
            if i in self.misuse:
                pc = int(ev["simd_pc"][i]) | self.text_high
                return i, ("kernel SIMD use outside kernel_fpu_begin()/kernel_fpu_end() at "
                           f"{self.symbols.describe(pc)} overwrote the registers")
            if not self.sections and int(ev["flags"][i]) & F.KERNEL_SIMD and \
                    not (self.saves[i] or self.restores[i]):
                pc = int(ev["simd_pc"][i]) | self.text_high
                return i, (f"kernel SIMD use at {self.symbols.describe(pc)} between the entry "
                           "and the return (the trace has no kernel_fpu section probes to "
                           "tell whether a section was open)")
        last_restore = next((i for i in reversed(mine.tolist()) if self.restores[i]), -1)
        if last_restore < 0:
            # Nothing loaded this task's state: whatever is in the registers is
            # someone else's.
            on_cpu = window[ev["vcpu"][window] == vcpu]
            other = next((i for i in reversed(on_cpu.tolist())
                          if (self.saves[i] or self.restores[i]) and self.keys.of(i) != key),
                         -1)
            if other >= 0:
                return other, ("missed restore: no restore of this context's state before the "
                               "return; the registers were last synced by another task at "
                               f"{self.symbols.describe(int(ev['pc'][other]))}")
            return -1, "missed restore: no restore of this context's state before the return"
        buf = int(ev["addr"][last_restore])
        before = np.flatnonzero(self.saves[:last_restore] & (ev["addr"][:last_restore] == buf))
        if len(before):
            s = int(before[-1])
            # Whose registers did that save write? Those of the last restore
            # on its CPU, if another task's restore left them there.
            cpu = int(ev["vcpu"][s])
            earlier = np.flatnonzero(self.restores[:s] & (ev["vcpu"][:s] == cpu))
            r = int(earlier[-1]) if len(earlier) else -1
            if r >= 0 and self.keys.of(r) != self.keys.of(s) and \
                    (ev["flags"][s] & F.REGS_VALID) and int(ev["regs_hash"][s]) != want and \
                    int(ev["regs_hash"][s]) == int(ev["regs_after_hash"][r]):
                return s, (f"foreign save: buffer {buf:#x} was written at "
                           f"{self.symbols.describe(int(ev['pc'][s]))} (seq "
                           f"{int(ev['seq'][s])}) with registers holding another task's state "
                           f"(loaded at {self.symbols.describe(int(ev['pc'][r]))}, seq "
                           f"{int(ev['seq'][r])}), then restored into this context")
            loaded = int(ev["mem_hash"][last_restore])
            if int(ev["mem_hash"][s]) != loaded:
                # An older state of this very context, copied over the newer
                # save (arm64: sve_to_fpsimd() from a stale SVE buffer)?
                older = np.flatnonzero(self.saves[:s] & (ev["mem_hash"][:s] == loaded))
                older = older[self.keys.at(older) == key] if len(older) else older
                if len(older):
                    o = int(older[-1])
                    return last_restore, (
                        f"buffer {buf:#x} was overwritten after its save at "
                        f"{self.symbols.describe(int(ev['pc'][s]))} (seq {int(ev['seq'][s])}) "
                        "with an older state of this context, saved at "
                        f"{self.symbols.describe(int(ev['pc'][o]))} (seq {int(ev['seq'][o])}) "
                        f"to {int(ev['addr'][o]):#x}, and the restore at "
                        f"{self.symbols.describe(int(ev['pc'][last_restore]))} loaded that")
                return last_restore, (
                    f"buffer {buf:#x} changed in memory between its save at "
                    f"{self.symbols.describe(int(ev['pc'][s]))} (seq {int(ev['seq'][s])}) "
                    f"and its restore at {self.symbols.describe(int(ev['pc'][last_restore]))}:"
                    " the restore loaded state the context never had")
        return last_restore, (f"the restore from {buf:#x} at "
                              f"{self.symbols.describe(int(ev['pc'][last_restore]))} loaded "
                              "state that differs from what the context entered with")


def kfpu_misuse(ev: npt.NDArray[np.void], symbols: Symbols
                ) -> tuple[list[int], int]:
    """Events whose KERNEL_SIMD flag says kernel SIMD code ran outside a
    kernel_fpu_begin()/kernel_fpu_end() section on that CPU (and outside the
    FPU core's own code), and how many sections there were. Without the
    section probes nothing can be said: no event is returned."""
    probes = np.flatnonzero(ev["kind"] == K.PROBE)
    if not np.any(ev["index"][probes] == P.KFPU_BEGIN):
        return [], 0
    kinds = ev["kind"]
    is_probe = kinds == K.PROBE
    begin = is_probe & (ev["index"] == P.KFPU_BEGIN)
    end = is_probe & (ev["index"] == P.KFPU_END)
    simd = (ev["flags"] & F.KERNEL_SIMD) != 0
    open_on: dict[int, bool] = {}
    out: list[int] = []
    allowed: dict[int, bool] = {}
    high = kernel_text_high(symbols)
    for i in np.flatnonzero(begin | end | simd).tolist():
        cpu = int(ev["vcpu"][i])
        if simd[i] and not open_on.get(cpu, False) and not end[i]:
            pc = int(ev["simd_pc"][i])
            if pc not in allowed:
                name = symbols.function(pc | high).split(" ", 1)[0]
                allowed[pc] = name in FPU_CORE_SIMD
            if not allowed[pc]:
                out.append(i)
        if begin[i]:
            open_on[cpu] = True
        elif end[i]:
            open_on[cpu] = False
    return out, int(begin.sum())


def check_boundaries(ev: npt.NDArray[np.void], tasks: npt.NDArray[np.void],
                     ident: npt.NDArray[np.int64], symbols: Symbols,
                     uabi_probed: bool) -> Boundaries:
    """Check every user return and VM entry of a trace (events in seq order).
    `uabi_probed`: KVM's KVM_SET_XSAVE/KVM_SET_FPU copies were probed (kernels
    with fpu_copy_uabi_to_guest_fpstate()). The linear part runs in the
    compiled pass (fpa_boundaries); the events that need a look, one by one."""
    from analyzers import native

    keys = TaskKeys(tasks, ident)
    probe_kinds = [int(p) for p in (*TASK_PURPOSEFUL, P.REGSET_SET, P.FORK_COPY)]
    bp = native.boundary_pass(ev, ident, keys.key_of_ident, probe_kinds)
    misuse_list, sections = kfpu_misuse(ev, symbols) if bp.kfpu_begins else ([], 0)
    explainer = _Explainer(ev, keys, set(misuse_list), symbols, sections)
    findings: list[BoundaryFinding] = []
    for i in misuse_list:
        pc = int(ev["simd_pc"][i]) | explainer.text_high
        findings.append(BoundaryFinding(
            "kernel_fpu_misuse", "task", int(ident[i]), 0, -1, i, i,
            f"kernel SIMD instruction at {symbols.describe(pc)} ran outside "
            "kernel_fpu_begin()/kernel_fpu_end()", pc))

    user = BoundaryCheck()
    per_task: dict[int, list[int]] = {}
    # QUIET returns: checked by construction.
    for k_ in np.flatnonzero(bp.quiet_per_key).tolist():
        per_task[k_ - 1] = [int(bp.quiet_per_key[k_]), 0]
    user.checked = user.quiet = int(bp.quiet_per_key.sum())

    def count(key: int, violation: bool) -> None:
        row = per_task.setdefault(key, [0, 0])
        row[0] += 1
        row[1] += int(violation)

    # The loop below visits every return with FP activity since its entry
    # (a quarter to a half of all returns): plain ints and lists, not numpy
    # scalars and enum members, keep it at a microsecond or two each.
    regs_hash = ev["regs_hash"].tolist()
    all_flags = ev["flags"].tolist()
    regs_valid, no_entry = int(F.REGS_VALID), int(F.NO_ENTRY)
    k_entry, k_probe, k_return = int(K.USER_ENTRY), int(K.PROBE), int(K.USER_RETURN)
    p_fork, p_regset = int(P.FORK_COPY), int(P.REGSET_SET)
    purposeful = {int(p_): why for p_, why in TASK_PURPOSEFUL.items()}

    def judge(i: int, k: int, before: int, window: list[str], what: str) -> None:
        """Return i of task k against the register hash of event `before`."""
        want = regs_hash[before]
        if regs_hash[i] == want:
            user.checked += 1
            count(k, False)
        elif window:
            user.changed_on_purpose[window[0]] += 1
        else:
            user.checked += 1
            user.violations += 1
            count(k, True)
            c, why = explainer.explain(before, i, k, want, int(ev["vcpu"][i]))
            findings.append(BoundaryFinding("corrupted_state", "task", int(ident[i]), 0,
                                            before, i, c, what + why))

    entry: dict[int, int] = {}  # key -> its latest USER_ENTRY event
    reasons: dict[int, list[tuple[int, str]]] = {}  # key -> (event index, reason)
    fork_probe: dict[tuple[int, int], int] = {}  # (vcpu, parent key) -> probe event
    fork_copy: dict[int, int] = {}  # child task pointer -> the save that copied its state
    key_of_ptr: dict[int, int] = {}
    rel = bp.rel
    rel_keys = keys.at(rel)
    values = ev["value"].tolist()
    for i, k, p, kind, task, cpu, index, addr in zip(
            rel.tolist(), rel_keys.tolist(), bp.rel_prev_return.tolist(),
            ev["kind"][rel].tolist(), ev["task"][rel].tolist(), ev["vcpu"][rel].tolist(),
            ev["index"][rel].tolist(), ev["addr"][rel].tolist(), strict=True):
        flags = all_flags[i]
        if k >= 0:
            key_of_ptr[task] = k
        if kind == k_entry:
            entry[k] = i
        elif kind == k_probe:
            probe = index
            if probe == p_fork:
                fork_probe[(cpu, k)] = i
            elif probe == p_regset:
                target = key_of_ptr.get(values[i])
                if target is not None:
                    reasons.setdefault(target, []).append((i, "ptrace regset write"))
            elif probe in purposeful:
                reasons.setdefault(k, []).append((i, purposeful[probe]))
        elif kind != k_return:
            # The parent's first save on its CPU after a fork probe:
            # fpu_clone() / fpu__copy() save its live registers into the
            # child's buffer, at the child's task pointer plus the kernel's
            # buffer offset. If the save lands elsewhere there was none:
            # 5.10's fpu__copy() copies memory when TIF_NEED_FPU_LOAD is set,
            # and the child's first return is left unchecked.
            fp = fork_probe.pop((cpu, k), None)
            if fp is not None and bp.fpu_offset:
                child = values[fp]
                if addr == child + bp.fpu_offset:
                    fork_copy[child] = i
        else:  # a return that needs its entry
            window = [r for j, r in reasons.pop(k, []) if j > p]
            e = entry.get(k, -1)
            if e <= p:
                e = -1
            copy = fork_copy.pop(task, -1) if p < 0 and e < 0 else -1
            before = e if e >= 0 else copy
            if before < 0:
                if flags & no_entry:
                    user.unchecked["the trace began while the task was in the kernel"] += 1
                elif p < 0:
                    user.unchecked["first return of a task whose fork copy the trace did "
                                   "not show (a memory copy, or a fork before the trace)"] += 1
                else:
                    user.unchecked["the register file at the entry was not read"] += 1
            elif not (flags & regs_valid and all_flags[before] & regs_valid):
                user.unchecked["a register file could not be read"] += 1
            else:
                judge(i, k, before, window, "" if e >= 0 else
                      "a forked child's first return does not hold the parent's registers "
                      "of the fork copy: ")

    vcpu, per_vcpu, vfind = _check_vcpus(ev, bp, keys, ident, uabi_probed)
    findings += vfind
    findings.sort(key=lambda f: (f.after, f.kind))
    return Boundaries(user, vcpu, {k_: (v[0], v[1]) for k_, v in per_task.items()},
                      per_vcpu, findings, sections, keys)


# A vCPU's registers set by user space, or reset (KVM_ARM_VCPU_INIT).
VCPU_SET_ON_PURPOSE = "set by user space (KVM_SET_XSAVE, KVM_SET_FPU, KVM_SET_ONE_REG) or reset"


def _check_vcpus(ev: npt.NDArray[np.void], bp: BoundaryPass, keys: TaskKeys,
                 ident: npt.NDArray[np.int64], uabi_probed: bool
                 ) -> tuple[BoundaryCheck, dict[tuple[int, int], tuple[int, int]],
                            list[BoundaryFinding]]:
    """A vCPU is its VMCB with the thread that runs it: a VMCB is freed with
    its VM and reused by the next one, whose first entry is not a check. The
    compiled pass paired every VM entry with its vCPU's previous exit; only
    the differences are looked at here."""
    check = BoundaryCheck()
    findings: list[BoundaryFinding] = []
    if bp.first_entries:
        check.unchecked["first entry of the vCPU in the trace"] += bp.first_entries
    if bp.unreadable:
        check.unchecked["a register file could not be read"] += bp.unreadable
    check.checked = int(bp.vcpu_equal.sum())
    per = {int(v): [int(c), 0] for v, c in zip(bp.vcpus, bp.vcpu_equal, strict=True)}
    kinds = ev["kind"]
    for i, x in zip(bp.diff_entry.tolist(), bp.diff_exit.tolist(), strict=True):
        key = keys.of(i)
        between = np.arange(x + 1, i)
        mine = between[keys.at(between) == key]
        set_on_purpose = (kinds[mine] == K.PROBE) & np.isin(
            ev["index"][mine], [int(P.KVM_UABI_SET), int(P.KVM_VCPU_RESET)])
        if np.any(set_on_purpose):
            check.changed_on_purpose[VCPU_SET_ON_PURPOSE] += 1
            continue
        if not uabi_probed and np.any(kinds[mine] == K.USER_RETURN):
            check.unchecked["changed while KVM_RUN had returned to user space, on a kernel "
                            "whose KVM_SET_XSAVE copies are not observable"] += 1
            continue
        vk = (int(ev["addr"][i]) & ((1 << 48) - 1)) | ((key + 1) << 48)
        check.checked += 1
        check.violations += 1
        row = per.setdefault(vk, [0, 0])
        row[0] += 1
        row[1] += 1
        findings.append(BoundaryFinding(
            "corrupted_state", "vcpu", int(ident[i]), int(ev["addr"][i]), x, i, -1,
            "the guest's FP registers at this VM entry differ from those at its previous VM "
            "exit, and KVM did not set them on purpose in between"))
    mask = (1 << 48) - 1
    return check, {(k_ & mask, (k_ >> 48) - 1): (r[0], r[1]) for k_, r in per.items()
                   if r[0]}, findings
