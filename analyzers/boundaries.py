"""Ground truth at the kernel's boundaries: did a task or a guest get its FPU
registers back as it left them?

- A task: when it returns to user mode, its FP/SIMD register file must equal
  what it held when the task last entered the kernel, unless the kernel
  changed it on purpose in between (signal delivery, sigreturn, exec, a
  ptrace regset write) or the task is a forked child returning for the first
  time (then it must equal the parent's registers at the fork copy).
- A vCPU: at each VM entry, the guest's FP registers must equal those at the
  vCPU's previous VM exit, unless user space set them in between: after
  KVM_SET_XSAVE (fpu_copy_uabi_to_guest_fpstate()) they must hold the
  image it wrote.

A difference with no purposeful change is a `corrupted_state` finding, with
the operation in between that explains it and the events that tell how
(where the state was saved, which kernel FPU section and which SIMD code,
which restore), each with its site. Kernel SIMD use outside a
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
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from analyzers.findings import Kind
from fputrace.trace import format as fmt
from fputrace.trace.symbols import Symbols

if TYPE_CHECKING:
    from analyzers.native import BoundaryPass

M64 = (1 << 64) - 1

# Probes whose function changes the calling task's user FPU state on purpose
# (docs/analysis.md, "Purposeful changes").
TASK_PURPOSEFUL = {
    fmt.Probe.SIGFRAME_SAVE: "signal delivery",
    fmt.Probe.SIGRETURN: "sigreturn",
    fmt.Probe.EXEC_RESET: "exec",
    fmt.Probe.RESTORE_FAULT: "init state after a faulting restore",
}
# What the last purposeful change before a return gives the task, where the
# kernel's code fixes it (docs/analysis.md, "Purposeful changes"): INIT,
# the init state (fpa_user_init_hash()); ENTRY_OR_ZERO, the registers the
# task entered the kernel with, or all zero. Changes not listed (sigreturn,
# a ptrace regset write) give what user space wrote, which the trace does
# not show: they stay "changed on purpose".
INIT, ENTRY_OR_ZERO = "init", "entry or zero"
PURPOSE_RESULT: dict[int, dict[str, tuple[str, str]]] = {
    # why -> (what the task gets, what the check is called)
    fmt.Arch.X86_64: {
        # handle_signal() -> fpu__clear_user_states() ->
        # restore_fpregs_from_init_fpstate() (6.1 arch/x86/kernel/fpu/core.c;
        # 5.10: fpu__clear(fpu, true)): the handler starts from init.
        "signal delivery": (INIT, "signal handler's init state"),
        # flush_thread() -> fpu_flush_thread() -> fpu_reset_fpregs() copies
        # init_fpstate into the task's buffer, loaded at the return (5.10:
        # fpu__clear_all() loads it at once).
        "exec": (INIT, "exec's init state"),
        # fpu_reset_from_exception_fixup() -> restore_fpregs_from_init_fpstate().
        "init state after a faulting restore": (INIT, "init state after a faulting restore"),
    },
    fmt.Arch.AARCH64: {
        # setup_rt_frame() copies the state to the frame and leaves the
        # registers to the handler; setup_return() zeroes the FPSIMD state
        # only of a task that was in SME streaming mode (6.1
        # arch/arm64/kernel/signal.c), which the trace does not tell.
        "signal delivery": (ENTRY_OR_ZERO, "signal handler's registers"),
        # fpsimd_flush_thread() memsets the task's user_fpsimd_state.
        "exec": (INIT, "exec's init state"),
    },
}
# The kernel function whose result each check judges, for the findings.
PURPOSE_FUNCTION = {
    "signal delivery": "the signal handler's start (handle_signal())",
    "exec": "the first return after exec",
    "init state after a faulting restore": "the return after a faulting restore",
}

# What a register hash covers at the boundaries, and what it leaves out,
# per arch (docs/trace-format.md, "Boundaries").
BOUNDARY_REGISTERS: dict[int, tuple[str, str]] = {
    fmt.Arch.X86_64: ("FCW, FSW, MXCSR, ST0-7, XMM0-15",
                      "the YMM upper halves, AVX-512 state and PKRU (QEMU 10.0's plugin "
                      "register API does not expose them)"),
    fmt.Arch.AARCH64: ("V0-V31, FPSR, FPCR",
                       "SVE's Z upper bits, P0-P15 and FFR (not recorded: the plugin ran with "
                       "boundary_state=off, or predates it), and SME's ZA and ZT0 (not read)"),
}
# ... arm64 where the trace has the SVE state at user boundaries
# (Feature.BOUNDARY_STATE).
AARCH64_SVE_REGISTERS = ("V0-V31, FPSR, FPCR; with SVE enabled for user mode, Z0-Z31 above "
                         "their low 128 bits, P0-P15 and FFR at the returns from exceptions "
                         "(after a system call: all zero or as they were) and in signal frames",
                         "SME's streaming-mode SVE state, ZA and ZT0 (not read)")

# ESR_ELx.EC of an SVC from AArch64 (a system call), of an SVE access trap.
ESR_EC_SVC64, ESR_EC_SVE = 0x15, 0x19
SVE_TRAP_ZEROED = "SVE access trap's zeroed state"
SVE_FRAME = "signal frame's SVE record"
SVE_HANDLER = "signal handler's SVE state"
SVE_SYSCALL = "system call's kept or zeroed SVE state"
SVE_KEPT_ENABLED = "SVE kept enabled after an exception"
# The encoding of CPACR_EL1 (op0:op1:CRn:CRm:op2) as a control register
# write names it: under HCR_EL2.E2H the host's writes reach CPTR_EL2.
CPACR_EL1_ENCODING = 0xC082
SVE_SIGRETURN = "sigreturn's SVE record"
SVE_SIG_FLAG_SM = 0x1  # struct sve_context.flags: streaming mode's (SME)

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
    kind: Kind  # CORRUPTED_STATE or KERNEL_FPU_MISUSE
    # "task"; "purpose" (before: the purposeful change whose result the
    # return lacks); "signal_frame" (after: the frame's save); "vcpu"
    context: str
    task: int  # announcement index of the task (or the vCPU thread), -1
    vmcb: int  # vcpu findings: the VMCB, else 0
    before: int  # event index: the entry / VM exit the state is compared with, -1
    after: int  # event index: the return / VM entry where it differs (misuse: the event)
    cause: int  # event index of the operation that explains it, -1
    explanation: str
    simd_pc: int = 0  # kernel_fpu_misuse: the SIMD instruction's address
    # corrupted_state: the events that explain it (Explanation.trail)
    trail: list[tuple[str, int]] = field(default_factory=list)


@dataclass
class BoundaryCheck:
    """Counts for one kind of boundary (user returns, VM entries)."""

    checked: int = 0
    quiet: int = 0  # of checked: no FP activity in between, equal by construction
    violations: int = 0
    changed_on_purpose: Counter[str] = field(default_factory=Counter)
    unchecked: Counter[str] = field(default_factory=Counter)
    # Of checked: purposeful changes checked against their purpose, by what.
    purpose_checked: Counter[str] = field(default_factory=Counter)


@dataclass
class Boundaries:
    user: BoundaryCheck
    vcpu: BoundaryCheck
    per_task: dict[int, tuple[int, int]]  # task key -> (checked, violations)
    per_vcpu: dict[tuple[int, int], tuple[int, int]]  # (VMCB, thread's task key) -> counts
    findings: list[BoundaryFinding]
    kfpu_sections: int
    keys: TaskKeys  # the task keys above, and the announcement naming each
    # BOUNDARY_REGISTERS of the trace's arch: (compared, not compared)
    registers: tuple[str, str] = ("", "")
    # arm64: the SVE state beyond V0-V31 at user returns (flag SVE_VALID)
    sve: BoundaryCheck = field(default_factory=BoundaryCheck)

    @property
    def checked(self) -> int:
        return self.user.checked + self.vcpu.checked + self.sve.checked

    @property
    def violations(self) -> int:
        return self.user.violations + self.vcpu.violations + self.sve.violations


class TaskKeys:
    """A key per task lifetime: its task_struct pointer, pid and tgid
    (pointers are reused after a task exits; pids are not reused that soon;
    a nested guest's tasks, known without pids, are told apart by their
    lifetime in tgid, analyzers.run.guest_view()), found from an event's
    task announcement; -1 where the task is unknown. Computed for the events
    asked about, never for the whole trace."""

    def __init__(self, tasks: npt.NDArray[np.void], ident: npt.NDArray[np.int64]) -> None:
        self.ident = ident
        self.latest: dict[int, int] = {}  # key -> its latest announcement (after exec)
        if len(tasks):
            pairs = np.stack([tasks["task"], tasks["pid"].astype(np.uint64),
                              tasks["tgid"].astype(np.uint64)], axis=1)
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


@dataclass
class Explanation:
    """Why a context's registers differ at a boundary: the event that
    explains it, what happened, and the events that tell it, in trace order
    (role, event index; a "simd" role's site is the event's simd_pc)."""

    cause: int
    text: str
    trail: list[tuple[str, int]] = field(default_factory=list)


class _Explainer:
    """Finds, between two boundaries of a context, the operations that
    explain a difference of its registers."""

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

    # How the events are named in the text.
    def site(self, i: int) -> str:
        return self.symbols.describe(int(self.ev["pc"][i]))

    def simd_site(self, i: int) -> str:
        return self.symbols.describe(int(self.ev["simd_pc"][i]) | self.text_high)

    def call(self, i: int) -> str:
        """A probe event as 'kernel_fpu_begin_mask() called from f+0x1c
        (seq N)': its caller from the return address at its entry."""
        fn = self.site(i).split("+", 1)[0]
        caller = int(self.ev[fmt.PROBE_CALLER][i])
        by = f" called from {self.symbols.describe(caller)}" if caller else ""
        return f"{fn}(){by} (seq {int(self.ev['seq'][i])})"

    def _probes(self, events: list[int], probe: int) -> list[int]:
        ev = self.ev
        return [i for i in events if int(ev["kind"][i]) == fmt.Kind.PROBE and
                int(ev["index"][i]) == probe]

    def section_around(self, mine: list[int], i: int) -> tuple[int, int]:
        """(begin, end) probe events of the context's kernel_fpu section open
        at event i (end -1 if it did not end before the window's end), or
        (-1, -1)."""
        begins = [b for b in self._probes(mine, fmt.Probe.KFPU_BEGIN) if b < i]
        if not begins:
            return -1, -1
        b = begins[-1]
        ends = self._probes(mine, fmt.Probe.KFPU_END)
        if any(b < e < i for e in ends):
            return -1, -1
        return b, next((e for e in ends if e > i), -1)

    def sections_between(self, mine: list[int], lo: int, hi: int) -> list[tuple[int, int]]:
        """The context's kernel_fpu sections with a part between events lo and
        hi: (begin, end) probe events, end -1 if the window holds none."""
        out = []
        ends = self._probes(mine, fmt.Probe.KFPU_END)
        for b in self._probes(mine, fmt.Probe.KFPU_BEGIN):
            e = next((x for x in ends if x > b), -1)
            if b < hi and (e < 0 or e > lo):
                out.append((b, e))
        return out

    def explain(self, lo: int, hi: int, key: int, want: int, vcpu: int,
                until: str = "the return") -> Explanation:
        """Events lo+1..hi (indices: the earlier boundary excluded, the later
        one included, since it may carry the KERNEL_SIMD flag) of the task
        `key`; `want` the hash the registers should have held; `until`: what
        event hi is, in words."""
        ev = self.ev
        window = np.arange(lo + 1, hi + 1)
        mine = window[self.keys.at(window) == key].tolist()
        for i in mine:
            if i in self.misuse:
                return Explanation(i, "kernel SIMD use outside kernel_fpu_begin()/"
                                   f"kernel_fpu_end() at {self.simd_site(i)} overwrote the "
                                   "registers", [("simd", i)])
            if not self.sections and int(ev["flags"][i]) & fmt.Flag.KERNEL_SIMD and \
                    not (self.saves[i] or self.restores[i]):
                return Explanation(i, f"kernel SIMD use at {self.simd_site(i)} between the "
                                   "entry and the return (the trace has no kernel_fpu section "
                                   "probes to tell whether a section was open)", [("simd", i)])
        last_restore = next((i for i in reversed(mine) if self.restores[i]), -1)
        if last_restore < 0:
            return self._missed_restore(window, mine, key, vcpu, until)
        if int(ev["flags"][last_restore]) & fmt.Flag.REGS_AFTER_VALID and \
                int(ev["regs_after_hash"][last_restore]) == want:
            # The restore loaded what the boundary wants (its registers were
            # read after it): what changed them came after it, as if
            # nothing had been restored (a kernel FPU section that took the
            # registers without a restore to follow).
            later = window[window > last_restore]
            return self._missed_restore(later, [i for i in mine if i > last_restore], key,
                                        vcpu, until)
        return self._bad_restore(mine, key, want, last_restore)

    def _missed_restore(self, window: npt.NDArray[np.int64], mine: list[int], key: int,
                        vcpu: int, until: str) -> Explanation:
        """Nothing loaded this context's state before its return: whatever is
        in the registers is not its own. Where did its state go, and what
        changed the registers after it left?"""
        ev = self.ev
        tail = f"no restore of this context's state followed before {until}"
        on_cpu = window[ev["vcpu"][window] == vcpu].tolist()
        saves = [i for i in mine if self.saves[i]]
        s = saves[-1] if saves else -1
        # Who held the registers last: another task's save or restore on
        # the CPU of the return, after this context's own save.
        other = next((i for i in reversed(on_cpu) if i > s and
                      (self.saves[i] or self.restores[i]) and self.keys.of(i) != key), -1)
        synced = f"; the registers were last synced by another task at {self.site(other)} " \
            f"(seq {int(ev['seq'][other])})" if other >= 0 else ""
        trail: list[tuple[str, int]] = [("other_task", other)] if other >= 0 else []
        if s < 0:
            # Nothing saved (the state was already in memory:
            # TIF_NEED_FPU_LOAD); kernel SIMD code may still have changed
            # the registers the boundary then took as the context's.
            simd = next((i for i in mine if int(ev["flags"][i]) & fmt.Flag.KERNEL_SIMD), -1)
            if simd < 0:
                return Explanation(other, f"missed restore: {tail}{synced}", trail)
            trail.append(("simd", simd))
            begins = [b for b in self._probes(mine, fmt.Probe.KFPU_BEGIN) if b < simd]
            inside = ""
            if begins:
                inside = f", in the kernel FPU section that {self.call(begins[-1])} began"
                trail.append(("section_begin", begins[-1]))
            trail.sort(key=lambda t: t[1])
            return Explanation(simd, f"missed restore: kernel SIMD code at "
                               f"{self.simd_site(simd)} changed the registers{inside}{synced}; "
                               f"{tail}", trail)
        begin, end = self.section_around(mine, s)
        took = (f"its registers were saved to {int(ev['addr'][s]):#x} at {self.site(s)} "
                f"(seq {int(ev['seq'][s])})")
        if begin >= 0:
            took += f" when {self.call(begin)} began a kernel FPU section"
            trail.append(("section_begin", begin))
        trail.append(("save", s))
        # The first kernel SIMD code after the save: it changed the
        # registers the return then handed back.
        simd = next((i for i in mine if i > s and int(ev["flags"][i]) & fmt.Flag.KERNEL_SIMD), -1)
        what = ""
        if simd >= 0:
            what = f"; kernel SIMD code at {self.simd_site(simd)} then changed them"
            trail.append(("simd", simd))
        if end >= 0:
            what += f"; the section ended at {self.call(end)}"
            trail.append(("section_end", end))
        trail.sort(key=lambda t: t[1])
        cause = simd if simd >= 0 else other if other >= 0 else s
        return Explanation(cause, f"missed restore: {took}{what}{synced}; {tail}", trail)

    def _bad_restore(self, mine: list[int], key: int, want: int,
                     last_restore: int) -> Explanation:
        """The context's state was restored, and what was loaded is wrong."""
        ev = self.ev
        r_site = self.site(last_restore)
        buf = int(ev["addr"][last_restore])
        before = np.flatnonzero(self.saves[:last_restore] & (ev["addr"][:last_restore] == buf))
        if not len(before):
            return Explanation(last_restore, f"the restore from {buf:#x} at {r_site} loaded "
                               "state that differs from what the context entered with",
                               [("restore", last_restore)])
        s = int(before[-1])
        s_at = f"{self.site(s)} (seq {int(ev['seq'][s])})"
        # Whose registers did that save write? Those of the last restore
        # on its CPU, if another task's restore left them there.
        cpu = int(ev["vcpu"][s])
        earlier = np.flatnonzero(self.restores[:s] & (ev["vcpu"][:s] == cpu))
        r = int(earlier[-1]) if len(earlier) else -1
        if r >= 0 and self.keys.of(r) != self.keys.of(s) and \
                (ev["flags"][s] & fmt.Flag.REGS_VALID) and int(ev["regs_hash"][s]) != want and \
                int(ev["regs_hash"][s]) == int(ev["regs_after_hash"][r]):
            return Explanation(s, f"foreign save: buffer {buf:#x} was written at {s_at} with "
                               "registers holding another task's state (loaded at "
                               f"{self.site(r)}, seq {int(ev['seq'][r])}), then restored into "
                               "this context",
                               [("foreign_restore", r), ("save", s), ("restore", last_restore)])
        loaded = int(ev["mem_hash"][last_restore])
        if int(ev["mem_hash"][s]) != loaded:
            # An older state of this very context, copied over the newer
            # save (arm64: sve_to_fpsimd() from a stale SVE buffer)?
            older = np.flatnonzero(self.saves[:s] & (ev["mem_hash"][:s] == loaded))
            older = older[self.keys.at(older) == key] if len(older) else older
            if len(older):
                o = int(older[-1])
                return Explanation(last_restore, (
                    f"buffer {buf:#x} was overwritten after its save at {s_at} with an older "
                    f"state of this context, saved at {self.site(o)} (seq "
                    f"{int(ev['seq'][o])}) to {int(ev['addr'][o]):#x}, and the restore at "
                    f"{r_site} loaded that"),
                    [("older_save", o), ("save", s), ("restore", last_restore)])
            # Memory changed under the saved state: name the kernel FPU
            # sections this context had open meanwhile, where code may
            # legitimately reach the buffer (kernel_fpu_begin() saved it).
            trail = [("save", s), ("restore", last_restore)]
            inside = ""
            sections = self.sections_between(mine, s, last_restore)
            if sections:
                b, e = sections[-1]
                inside = f"; meanwhile {self.call(b)} began a kernel FPU section"
                trail.append(("section_begin", b))
                if e >= 0:
                    inside += f", which ended at {self.call(e)}"
                    trail.append(("section_end", e))
                trail.sort(key=lambda t: t[1])
            return Explanation(last_restore, (
                f"buffer {buf:#x} changed in memory between its save at {s_at} and its "
                f"restore at {r_site}{inside}: the restore loaded state the context never "
                "had"), trail)
        return Explanation(last_restore, f"the restore from {buf:#x} at {r_site} loaded state "
                           "that differs from what the context entered with; it was saved at "
                           f"{s_at} with the same contents", [("save", s), ("restore",
                                                                            last_restore)])


def kfpu_misuse(ev: npt.NDArray[np.void], symbols: Symbols
                ) -> tuple[list[int], int]:
    """Events whose KERNEL_SIMD flag says kernel SIMD code ran outside a
    kernel_fpu_begin()/kernel_fpu_end() section on that CPU (and outside the
    FPU core's own code), and how many sections there were. Without the
    section probes nothing can be said: no event is returned."""
    probes = np.flatnonzero(ev["kind"] == fmt.Kind.PROBE)
    if not np.any(ev["index"][probes] == fmt.Probe.KFPU_BEGIN):
        return [], 0
    kinds = ev["kind"]
    is_probe = kinds == fmt.Kind.PROBE
    begin = is_probe & (ev["index"] == fmt.Probe.KFPU_BEGIN)
    end = is_probe & (ev["index"] == fmt.Probe.KFPU_END)
    # The nested guest's kernel SIMD is its own model's to judge.
    simd = ((ev["flags"] & fmt.Flag.KERNEL_SIMD) != 0) & ((ev["flags"] & fmt.Flag.L2) == 0)
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


# A boundary whose registers differ from those it is checked against, with
# records of the trace missing in between: what happened there is unknown
# (the context may have been renamed, its state moved on purpose), so it is
# neither a violation nor a check.
# x86-64 user addresses lie below the canonical hole.
USER_TOP = 1 << 47

GAP_UNCHECKED = "records of the trace are missing in between (a damaged or lost block)"


# How the kernel loads an image the plugin read at a probe
# (docs/trace-format.md, "Probes") into the state; see image_hash().
IMAGE_RESTORE, IMAGE_UABI, IMAGE_FX = "restore", "uabi", "fx"


def image_hash(ev: npt.NDArray[np.void], j: int, how: str, request: int = 0) -> int | None:
    """The register hash that the image read at probe j gives, or None when
    the kernel's code leaves part of it unknown. Its x87 and SSE shares come
    from the image where its XSTATE_BV has them, else from their init state:
    - IMAGE_RESTORE: XRSTOR (or FXRSTOR, request 3) of the image with
      `request`, then init_fpstate for what the request left out
      (__restore_fpregs_from_user(), 6.1 arch/x86/kernel/fpu/signal.c): a
      component comes from the image only where the request has it too;
      MXCSR comes from it where the request has SSE (AVX without SSE:
      unknown, 5.10 and 6.1 differ);
    - IMAGE_UABI: copy_uabi_to_xstate() (6.1 arch/x86/kernel/fpu/xstate.c;
      5.10 copy_user_to_xstate()) copies each component in XSTATE_BV, and
      MXCSR with FP (it lies in the FP component's 160 bytes), SSE or YMM;
      with none of them MXCSR keeps its old value: unknown;
    - IMAGE_FX: xfpregs_set() copies the whole FXSAVE region and marks FP
      and SSE in use."""
    from analyzers import native

    bv = int(ev["mem_features"][j])
    if how == IMAGE_FX:
        bv, mxcsr_from_image = 3, True
    elif how == IMAGE_UABI:
        mxcsr_from_image = bool(bv & 7)
        if not mxcsr_from_image:
            return None
    else:
        if request & 4 and not request & 2:
            return None
        bv &= request
        mxcsr_from_image = bool(request & 2)
    x87, sse = int(ev["mem_legacy_hash"][j]), int(ev["mem_ext_hash"][j])
    mxcsr = int(ev["mem_hash"][j]) - x87 - sse
    i_x87, i_mxcsr, i_sse = native.x86_init_shares()
    return ((x87 if bv & 1 else i_x87) + (mxcsr if mxcsr_from_image else i_mxcsr) +
            (sse if bv & 2 else i_sse)) & M64


# arm64: fpr_set() copies the whole struct user_fpsimd_state (V0-V31, FPSR,
# FPCR) into the tracee's state (__fpr_set(), 6.1 arch/arm64/kernel/ptrace.c):
# the image the plugin read (mem_hash) is what it gets.
IMAGE_A64_FPSIMD = "a64 fpsimd"
# The regset writes whose image the plugin reads, by function.
REGSET_IMAGE = {"xstateregs_set": IMAGE_UABI, "xfpregs_set": IMAGE_FX,
                "fpr_set": IMAGE_A64_FPSIMD}


def spans_gap(gaps: npt.NDArray[np.uint64], lo_seq: int, hi_seq: int) -> bool:
    """Whether a gap of the trace (Trace.gaps: inclusive seq ranges) lies
    anywhere from lo_seq to hi_seq."""
    return bool(len(gaps)) and bool(np.any((gaps[:, 0] <= hi_seq) & (gaps[:, 1] >= lo_seq)))


def check_boundaries(ev: npt.NDArray[np.void], tasks: npt.NDArray[np.void],
                     ident: npt.NDArray[np.int64], symbols: Symbols,
                     uabi_probed: bool, arch: int,
                     gaps: npt.NDArray[np.uint64] | None = None,
                     boundary_state: bool = False) -> Boundaries:
    """Check every user return and VM entry of a trace (events in seq order)
    of a kernel of `arch` (fmt.Arch). `uabi_probed`: KVM's KVM_SET_XSAVE/
    KVM_SET_FPU copies were probed (kernels with
    fpu_copy_uabi_to_guest_fpstate()). `gaps`: where the trace lost
    records (Trace.gaps). `boundary_state`: the user boundaries carry the
    arch's state beyond the register hash (Feature.BOUNDARY_STATE). The
    linear part runs in the compiled pass
    (fpa_boundaries); the events that need a look, one by one."""
    from analyzers import native

    gaps = np.zeros((0, 2), dtype=np.uint64) if gaps is None else gaps
    seqs = ev["seq"]

    keys = TaskKeys(tasks, ident)
    probe_kinds = [int(p) for p in (*TASK_PURPOSEFUL, fmt.Probe.REGSET_SET, fmt.Probe.FORK_COPY)]
    bp = native.boundary_pass(ev, ident, keys.key_of_ident, probe_kinds)
    # Whether a kernel SIMD instruction lies in the FPU core's own code is
    # told by its function's name: without the kernel's symbols it is not
    # judged, rather than every such instruction taken for a misuse.
    misuse_list, sections = kfpu_misuse(ev, symbols) \
        if bp.kfpu_begins and symbols.values else ([], 0)
    explainer = _Explainer(ev, keys, set(misuse_list), symbols, sections)
    findings: list[BoundaryFinding] = []
    for i in misuse_list:
        pc = int(ev["simd_pc"][i]) | explainer.text_high
        findings.append(BoundaryFinding(
            Kind.KERNEL_FPU_MISUSE, "task", int(ident[i]), 0, -1, i, i,
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
    # (a quarter to a half of all returns): plain ints, not numpy scalars
    # and enum members, keep it at a microsecond or two each. A column is
    # read through a memoryview of its field, whose items are Python ints:
    # nearly as fast as a list, with no copy (a list costs ~36 bytes an
    # event, 3.6 GiB for two columns of 50 million).
    regs_hash, all_flags = ev["regs_hash"].data, ev["flags"].data
    regs_valid, no_entry, l2 = int(fmt.Flag.REGS_VALID), int(fmt.Flag.NO_ENTRY), int(fmt.Flag.L2)
    k_entry, k_probe = int(fmt.Kind.USER_ENTRY), int(fmt.Kind.PROBE)
    k_return = int(fmt.Kind.USER_RETURN)
    p_fork, p_regset = int(fmt.Probe.FORK_COPY), int(fmt.Probe.REGSET_SET)
    p_sigframe = int(fmt.Probe.SIGFRAME_SAVE)
    purposeful = {int(p_): why for p_, why in TASK_PURPOSEFUL.items()}
    results = PURPOSE_RESULT.get(arch, {})
    init_hash = native.user_init_hash(arch)
    # A sigreturn or a regset write whose image the plugin read (x86:
    # docs/trace-format.md, "Probes") is checked against it.
    mem_valid = int(fmt.Flag.MEM_VALID)
    # arm64 frames (SIGFRAME events, sigreturn probes): their records'
    # hashes (docs/trace-format.md, "arm64").
    def column(name: str) -> Callable[[int], int]:
        return ev[name].data.__getitem__

    mem_hash, mem_legacy_hash = column("mem_hash"), column("mem_legacy_hash")
    mem_ext_hash, mem_features, kind_of = column("mem_ext_hash"), column("mem_features"), \
        column("kind")
    k_sigframe = int(fmt.Kind.SIGFRAME)

    def judge_frame(i: int, k: int, cpu: int, last_return: int, probe_at: int) -> None:
        """The signal frame of task k's delivery (probe probe_at), against
        the registers the task entered the kernel with; i is the event that
        shows the frame's FP state:
        - x86, the save into the frame: copy_fpstate_to_sigframe() (6.1
          arch/x86/kernel/fpu/signal.c) first reloads the task's own state
          when it is not in the registers (TIF_NEED_FPU_LOAD), then saves
          the registers into the frame;
        - arm64, the frame read at the handler's start (a SIGFRAME event):
          setup_rt_frame() -> fpsimd_signal_preserve_current_state() saves
          the live registers into the task's state (with TIF_SVE,
          sve_to_fpsimd() copies their V part), and preserve_fpsimd_context()
          copies that into the frame's FP/SIMD record (6.1
          arch/arm64/kernel/signal.c).
        What the frame gets must be what the task left user mode with.
        (Linux 5.2's Go/AVX corruption wrote another task's registers
        here.)"""
        e = entry.get(k, -1)
        if e <= last_return:
            # The entry seen is of an earlier stay in the kernel.
            user.unchecked["a signal frame save whose task's entry the trace did not "
                           "show"] += 1
            return
        read = kind_of(i) == k_sigframe
        if read and not all_flags[i] & mem_valid:
            user.unchecked["a signal frame whose FP/SIMD record could not be read"] += 1
            return
        if not (read or all_flags[i] & regs_valid) or not all_flags[e] & regs_valid:
            user.unchecked["a signal frame save whose task's registers at the entry were "
                           "not read"] += 1
            return
        # A change on purpose earlier in the same stay in the kernel (a
        # sigreturn whose frame failed to load, so fpu__restore_sig() left
        # the init state; an earlier frame, after which the registers hold
        # the handler's init state) makes the entry's registers the wrong
        # yardstick for this frame.
        before = [why for j, why in reasons.get(k, []) if e < j < probe_at]
        if before:
            user.unchecked[f"a signal frame after {before[-1]} in the same stay in the "
                           "kernel"] += 1
            return
        want = regs_hash[e]
        got = mem_hash(i) if read else regs_hash[i]
        if read:
            judge_frame_sve(i, k, e, probe_at)
        if got == want:
            user.checked += 1
            user.purpose_checked["signal frame"] += 1
            count(k, False)
        elif spans_gap(gaps, int(seqs[e]), int(seqs[i])):
            user.unchecked[GAP_UNCHECKED] += 1
        else:
            user.checked += 1
            user.violations += 1
            user.purpose_checked["signal frame"] += 1
            count(k, True)
            # What happened before the frame's save, the save itself left out.
            x = explainer.explain(e, probe_at if read else i - 1, k, want, cpu,
                                  "the signal frame's save")
            how = (f"written by {explainer.call(probe_at)}, read at the handler's start"
                   if read else f"saved at {explainer.site(i)}")
            findings.append(BoundaryFinding(
                Kind.CORRUPTED_STATE, "signal_frame", int(ident[i]), 0, e, i, x.cause,
                f"the signal frame at {int(ev['addr'][i]):#x} got FP registers that are not "
                f"those the task entered the kernel with ({how}): " + x.text, trail=x.trail))

    def sve_frame_source(k: int, e: int, probe_at: int, i: int, stale: bool) -> Explanation:
        """Where the SVE record of task k's frame (delivery probe probe_at,
        entry e, read at event i) came from: fpsimd_signal_preserve_current_state()
        saves the registers first. preserve_sve_context() copies the task's
        sve_state buffer, which only an SVE save writes; after an FP/SIMD
        only save (a system call discards the rest: 6.12's
        fpsimd_syscall_enter()) that buffer is older than the registers.
        stale: the record's data is wrong, so name its last SVE save."""
        window = np.arange(e + 1, i)
        mine = window[keys.at(window) == k].tolist()
        saves = [j for j in mine if kind_of(j) in (fmt.Kind.FPSIMD_SAVE, fmt.Kind.SVE_SAVE)]
        trail: list[tuple[str, int]] = [("purpose", probe_at)]
        text = f"written by {explainer.call(probe_at)}"
        if not saves:
            return Explanation(probe_at, text, trail)
        last = saves[-1]
        only_fp = kind_of(last) == fmt.Kind.FPSIMD_SAVE
        text += (f"; the task's registers were last saved at {explainer.site(last)} (seq "
                 f"{int(seqs[last])}), {'FP/SIMD only' if only_fp else 'as SVE'}")
        trail.append(("save", last))
        if stale and only_fp:
            older = np.flatnonzero(ev["kind"][:last] == fmt.Kind.SVE_SAVE)
            older = older[keys.at(older) == k] if len(older) else older
            if len(older):
                o = int(older[-1])
                text += (f"; the record holds the task's SVE buffer as its last SVE save "
                         f"left it, at {explainer.site(o)} (seq {int(seqs[o])})")
                trail.append(("sve_save", o))
            else:
                text += "; the record holds an SVE buffer that no SVE save in the trace wrote"
        trail.sort(key=lambda t: t[1])
        return Explanation(probe_at, text, trail)

    def judge_frame_sve(i: int, k: int, e: int, probe_at: int) -> None:
        """arm64: the SVE record of the frame read at event i (task k, entry
        e). preserve_sve_context() (6.1 arch/arm64/kernel/signal.c) writes
        the task's SVE registers where its state is saved in SVE form, and
        no register data otherwise. With data:
        - Z0-Z31's low 128 bits must be the FP/SIMD record's V0-V31: both
          come from the one saved state (sve_to_fpsimd() made the latter
          from it); 61da7c8e2a60 ("arm64/signal: Don't assume that TIF_SVE
          means we saved SVE state") fixed a frame that took a stale SVE
          buffer after a system call had saved only FP/SIMD;
        - the rest is what judge_sve() says a return gives: all zero after
          an SVE access trap, zero or the entry's after a system call, the
          entry's after any other exception.
        Without data, an exception other than a system call that kept the
        task's SVE state (the entry shows it) leaves it out of the frame,
        and sigreturn would load FP/SIMD only: a loss. Streaming mode's
        (SVE_SIG_FLAG_SM) is SME's state, not checked."""
        if e < 0 or not all_flags[i] & mem_valid:
            return
        has = all_flags[i] & sve_valid
        vl, record_flags = mem_features(i) & 0xFFFF, mem_features(i) >> 16
        ec = (values[e] >> 26) & 0x3F
        trap = ec == ESR_EC_SVE and not all_flags[e] & sve_valid
        what = "the signal frame's SVE record"
        if has and record_flags & SVE_SIG_FLAG_SM:
            sve.unchecked["a signal frame of SME's streaming mode"] += 1
            return
        if not has:
            if ec == ESR_EC_SVC64 or trap or not all_flags[e] & sve_valid:
                return
            failed = f"{what} has no registers, while the task's SVE state (VL " \
                     f"{index_of(e)} bytes) was live at the entry (ESR {values[e]:#x}), " \
                     "which keeps it: sigreturn will load FP/SIMD only"
        elif mem_legacy_hash(i) != mem_hash(i):
            failed = f"{what}'s Z0-Z31 (VL {vl} bytes) do not hold the V0-V31 of the frame's " \
                     "FP/SIMD record (a stale SVE buffer)"
        else:
            entered = bool(all_flags[e] & sve_valid) and index_of(e) == vl
            zero = native.a64_sve_zero_hash(vl)
            if trap:
                want = zero
            elif entered:
                # (a system call may also have zeroed it: judge_sve())
                want = sve_hash(e)
            elif ec == ESR_EC_SVC64:
                want = zero
            else:
                sve.unchecked["a signal frame whose task's SVE state at the entry the trace "
                              "did not show, at the frame's vector length"] += 1
                return
            if mem_ext_hash(i) == want or (ec == ESR_EC_SVC64 and mem_ext_hash(i) == zero):
                sve.checked += 1
                sve.purpose_checked[SVE_FRAME] += 1
                return
            failed = (f"{what}'s registers beyond V0-V31 (VL {vl} bytes) are neither all "
                      "zero nor the task's at the entry, after a system call"
                      if ec == ESR_EC_SVC64 else
                      f"{what}'s registers beyond V0-V31 (VL {vl} bytes) are not all zero, "
                      "as an SVE access trap leaves them" if trap else
                      f"{what}'s registers beyond V0-V31 (VL {vl} bytes) differ from those "
                      f"the task entered with (ESR {values[e]:#x})")
        if spans_gap(gaps, int(seqs[e]), int(seqs[i])):
            sve.unchecked[GAP_UNCHECKED] += 1
            return
        sve.checked += 1
        sve.violations += 1
        sve.purpose_checked[SVE_FRAME] += 1
        x = sve_frame_source(k, e, probe_at, i, stale=bool(has))
        findings.append(BoundaryFinding(
            Kind.CORRUPTED_STATE, "signal_frame", int(ident[i]), 0, e, i, x.cause,
            f"{failed} (frame at {int(ev['addr'][i]):#x}): " + x.text, trail=x.trail))

    def settle(i: int, k: int, j: int, wants: tuple[int | None, ...], label: str,
               explain_from: int, what: str, trail: list[tuple[str, int]]) -> None:
        """Return i of task k, judged against what the purposeful change of
        probe j gives (`wants`, the first the one a difference is explained
        against): counted under `label`; a difference is a finding whose
        text starts with `what`, explained by what happened after event
        explain_from (the probe, or the restore that carried out the
        change)."""
        want = wants[0]
        assert want is not None
        if not all_flags[i] & regs_valid:
            user.unchecked["a register file could not be read"] += 1
            return
        if regs_hash[i] in wants:
            user.checked += 1
            user.purpose_checked[label] += 1
            count(k, False)
            return
        if spans_gap(gaps, int(seqs[j]), int(seqs[i])):
            user.unchecked[GAP_UNCHECKED] += 1
            return
        user.checked += 1
        user.violations += 1
        user.purpose_checked[label] += 1
        count(k, True)
        x = explainer.explain(explain_from, i, k, want, int(ev["vcpu"][i]))
        findings.append(BoundaryFinding(
            Kind.CORRUPTED_STATE, "purpose", int(ident[i]), 0, j, i, x.cause, what + x.text,
            trail=[*trail, *x.trail]))

    def judge_purpose(i: int, k: int, j: int, why: str, e: int) -> None:
        """Return i of task k, whose last purposeful change (event j, `why`)
        gives a known state (PURPOSE_RESULT); e its entry in this stay in
        the kernel, or -1."""
        result, label = results[why]
        if result == INIT:
            wants: tuple[int | None, ...] = (init_hash,)
        elif e >= 0 and all_flags[e] & regs_valid:
            # (arm64: the init state is all zero)
            wants = (regs_hash[e], init_hash)
        else:
            user.unchecked[f"a {label} check whose task's entry the trace did not "
                           "show"] += 1
            return
        got = "the init state" if result == INIT else \
            "the registers the task entered the kernel with"
        settle(i, k, j, wants, label, j,
               f"{PURPOSE_FUNCTION[why]} after {explainer.call(j)} does not hold {got}: ", [])

    def judge_sigreturn(i: int, k: int, j: int) -> bool:
        """Return i of task k after the sigreturn of probe j, whose frame the
        plugin read, against that frame as the handler left it; False when
        the trace cannot tell what the frame gives (then it stays "changed
        on purpose"). x86: fpu__restore_sig() (6.1 arch/x86/kernel/fpu/
        signal.c) restores the 64-bit frame straight from user memory:
        __restore_fpregs_from_user() runs XRSTOR with the frame's
        fx_sw.xfeatures as the request (FXRSTOR for a frame without the
        extended magic), then loads init_fpstate for the user features
        left out; 5.10's copy_user_to_fpregs_zeroing() does the same in the
        other order (image_hash(), IMAGE_RESTORE). The restore from the
        frame must be in the trace, for its request."""
        if arch == fmt.Arch.AARCH64:
            # restore_fpsimd_context() and restore_sve_fpsimd_context()
            # (6.1 arch/arm64/kernel/signal.c) copy V0-V31, FPSR and FPCR
            # from the frame's FP/SIMD record into the task's state
            # (fpsimd_update_current_state(); with SVE, into the V part of
            # its SVE registers), loaded on the way back to user mode.
            settle(i, k, j, (mem_hash(j),), "sigreturn's frame", j,
                   f"the return after sigreturn ({explainer.call(j)}) does not hold the FP/SIMD "
                   "record of the signal frame as the handler left it (read at its SVC): ", [])
            return True
        buf = values[j]
        window = np.arange(j + 1, i)
        mine = window[keys.at(window) == k]
        from_frame = mine[fmt.RESTORE_TABLE[ev["kind"][mine]] & (ev["addr"][mine] == buf)]
        if not len(from_frame):
            return False
        r = int(from_frame[-1])
        # FXRSTOR (a frame without the extended magic) loads x87 and SSE.
        fx = int(ev["kind"][r]) == fmt.Kind.FXRSTOR
        want = image_hash(ev, j, IMAGE_RESTORE,
                          3 if fx else int(ev["value"][r]) & int(ev["xcr0"][r]))
        if want is None:
            user.unchecked["a sigreturn whose frame asks for AVX without SSE"] += 1
            return True
        settle(i, k, j, (want,), "sigreturn's frame", r,
               f"the return after sigreturn ({explainer.call(j)}) does not hold the signal "
               f"frame's FP state at {buf:#x} as the handler left it (restored at "
               f"{explainer.site(r)}, seq {int(seqs[r])}): ", [("frame_restore", r)])
        return True

    def judge_regset(i: int, k: int, j: int, e: int) -> bool:
        """Return i of task k after the regset write of probe j (by its
        tracer), whose image the plugin read: the return holds the image as
        the function copies it (REGSET_IMAGE), or, where the write was
        refused (a bad MXCSR, a bad header: -EINVAL before anything is
        copied), the registers of its entry e. False for a function whose
        image is not read (fpregs_set(), the fsave layout; arm64's sve_set()
        and the SME ones)."""
        how = REGSET_IMAGE.get(symbols.function(int(ev["pc"][j])))
        if how is None:
            return False
        want = mem_hash(j) if how == IMAGE_A64_FPSIMD else image_hash(ev, j, how)
        if want is None:
            user.unchecked["a ptrace regset write that leaves MXCSR as it was"] += 1
            return True
        refused = regs_hash[e] if e >= 0 and all_flags[e] & regs_valid else None
        settle(i, k, j, (want, refused), "ptrace regset write", j,
               f"the tracee's return after the regset write {explainer.call(j)} holds "
               "neither what the tracer wrote nor its registers before: ", [])
        return True

    sve = BoundaryCheck()
    sve_valid = int(fmt.Flag.SVE_VALID)
    sve_hash = column("regs_after_hash")

    def judge_sve(i: int, k: int, e: int, changes: list[tuple[int, str]]) -> None:
        """arm64 return i of task k with EL0's SVE enabled, against its entry
        e: the SVE state beyond V0-V31 (Z upper bits, P0-P15, FFR) must come
        back as it went in from an exception other than a system call. A
        system call discards it (below: all zero, or kept); an SVE access
        trap enables it from a zeroed state (do_sve_acc());
        every other exception keeps it: fpsimd_save() saves the SVE
        registers of a TIF_SVE task, task_fpsimd_load() loads them back
        (arch/arm64/kernel/fpsimd.c). The SVE access trap itself, taken
        with SVE disabled for EL0, gives that state all zero:
        do_sve_acc() -> sve_alloc(current, true) clears the task's buffer,
        then sve_init_regs() either zeroes the live registers
        (sve_flush_live()) or copies V0-V31 into the cleared buffer
        (fpsimd_to_sve())."""
        if e < 0:
            sve.unchecked["the entry was not seen"] += 1
            return
        ec = (values[e] >> 26) & 0x3F
        trap = ec == ESR_EC_SVE and not all_flags[e] & sve_valid
        if changes and changes[-1][1] == "sigreturn" and \
                all_flags[changes[-1][0]] & sve_valid:
            judge_sve_sigreturn(i, k, changes[-1][0])
            return
        # A signal handler starts with the SVE state the task was
        # interrupted with: setup_return() (6.1 arch/arm64/kernel/signal.c)
        # leaves the registers, and its SMSTOP changes them only for a task
        # in streaming mode (left zeroed).
        handler = bool(changes) and all(r == "signal delivery" for _, r in changes)
        if changes and not handler:
            sve.unchecked[f"after {changes[-1][1]}"] += 1
            return
        if not trap and not all_flags[e] & sve_valid and ec != ESR_EC_SVC64:
            sve.unchecked["SVE was not enabled for user mode at the entry, and the entry "
                          "was no SVE access trap"] += 1
            return
        entered = all_flags[e] & sve_valid and index_of(e) == index_of(i)
        if not trap and all_flags[e] & sve_valid and not entered:
            sve.unchecked["the vector length changed"] += 1
            return
        zero = native.a64_sve_zero_hash(index_of(i))
        svc = ec == ESR_EC_SVC64
        # A system call: Documentation/arch/arm64/sve.rst ("System call
        # behaviour") gives the state beyond V0-V31 as zero on return, "in
        # practice preserved or replaced with zeros": 6.1's fp_user_discard()
        # drops TIF_SVE (SVE then trapped for EL0, so no such return), 6.12's
        # fpsimd_syscall_enter() zeroes the live registers (sve_flush_live())
        # and a state saved during the call is FP/SIMD only, after which
        # task_fpsimd_load() drops TIF_SVE. Anything else is stale.
        want = zero if trap or (svc and not entered) else sve_hash(e)
        if sve_hash(i) != want and spans_gap(gaps, int(seqs[e]), int(seqs[i])):
            sve.unchecked[GAP_UNCHECKED] += 1
            return
        sve.checked += 1
        if handler:
            sve.purpose_checked[SVE_HANDLER] += 1
        elif trap:
            sve.purpose_checked[SVE_TRAP_ZEROED] += 1
        elif svc:
            sve.purpose_checked[SVE_SYSCALL] += 1
        if sve_hash(i) == want or ((handler or svc) and sve_hash(i) == zero):
            return
        sve.violations += 1
        x = explainer.explain(e, i, k, regs_hash[e], int(ev["vcpu"][i]))
        got = "are not all zero after an SVE access trap (do_sve_acc())" if trap else \
            ("are neither all zero nor those the task entered with, after a system call "
             "(fp_user_discard(), fpsimd_syscall_enter())" if svc else
             f"differ from those the task entered with, after an exception (ESR "
             f"{values[e]:#x}) that keeps them")
        findings.append(BoundaryFinding(
            Kind.CORRUPTED_STATE, "task", int(ident[i]), 0, e, i, x.cause,
            f"the SVE registers beyond V0-V31 (Z0-Z31 above 128 bits, P0-P15, FFR, at VL "
            f"{index_of(i)} bytes) {got}: " + x.text, trail=x.trail))

    def judge_sve_dropped(i: int, k: int, e: int, changes: list[tuple[int, str]]) -> None:
        """arm64 return i of task k with SVE disabled for EL0 (no SVE state
        read), after entry e with it enabled and read. From an exception
        other than a system call the state must come back (judge_sve()):
        fpsimd_save() saves a TIF_SVE task's SVE registers, and
        task_fpsimd_load() / fpsimd_bind_task_to_cpu() enable EL0's SVE
        again from TIF_SVE (6.12 arch/arm64/kernel/fpsimd.c). A return with
        it disabled has dropped it: the next SVE use traps, and do_sve_acc()
        starts from zero. Nothing is lost if it was all zero."""
        ec = (values[e] >> 26) & 0x3F
        handler = bool(changes) and all(r == "signal delivery" for _, r in changes)
        if ec == ESR_EC_SVC64 or (changes and not handler):
            return  # discarded by the ABI, or changed on purpose (judged elsewhere)
        if sve_hash(e) == native.a64_sve_zero_hash(index_of(e)):
            sve.checked += 1
            sve.purpose_checked[SVE_KEPT_ENABLED] += 1
            return
        if spans_gap(gaps, int(seqs[e]), int(seqs[i])):
            sve.unchecked[GAP_UNCHECKED] += 1
            return
        sve.checked += 1
        sve.violations += 1
        sve.purpose_checked[SVE_KEPT_ENABLED] += 1
        # What the kernel did: its last save of the task's registers, and
        # the last write before the entry that enabled SVE for EL0 (a
        # CPACR_EL1.ZEN of 0b11 the kernel's TIF_SVE did not follow).
        window = np.arange(e + 1, i)
        mine = window[keys.at(window) == k].tolist()
        saves = [j for j in mine if kind_of(j) in (fmt.Kind.FPSIMD_SAVE, fmt.Kind.SVE_SAVE)]
        trail: list[tuple[str, int]] = []
        text = ""
        cause = i
        if saves:
            s = saves[-1]
            text = (f"the task's registers were last saved at {explainer.site(s)} (seq "
                    f"{int(seqs[s])}), "
                    f"{'FP/SIMD only' if kind_of(s) == fmt.Kind.FPSIMD_SAVE else 'as SVE'}")
            trail.append(("save", s))
            cause = s
        writes = np.flatnonzero(((ev["kind"][:e] == fmt.Kind.CPACR_WRITE) |
                                 ((ev["kind"][:e] == fmt.Kind.CPTR_WRITE) &
                                  ((ev["index"][:e] & 0xFFFF) == CPACR_EL1_ENCODING))) &
                                (ev["vcpu"][:e] == ev["vcpu"][e]) &
                                (((ev["value"][:e] >> np.uint64(16)) & np.uint64(3)) == 3) &
                                (((ev["aux"][:e] >> np.uint64(16)) & np.uint64(3)) != 3))
        if len(writes):
            w = int(writes[-1])
            text += ("; " if text else "") + (
                f"SVE was last enabled for user mode at {explainer.site(w)} (seq "
                f"{int(seqs[w])})")
            trail.append(("sve_enabled", w))
            cause = w if not saves or kind_of(saves[-1]) == fmt.Kind.FPSIMD_SAVE else cause
        trail.sort(key=lambda t: t[1])
        findings.append(BoundaryFinding(
            Kind.CORRUPTED_STATE, "task", int(ident[i]), 0, e, i, cause,
            f"the task returned with SVE disabled for user mode after an exception (ESR "
            f"{values[e]:#x}) that keeps its SVE state, which was not all zero (VL "
            f"{index_of(e)} bytes): Z0-Z31 above 128 bits, P0-P15 and FFR are lost, its next "
            f"SVE use trapping to a zeroed state (do_sve_acc())" +
            (f": {text}" if text else ""), trail=trail))

    def judge_sve_sigreturn(i: int, k: int, j: int) -> None:
        """arm64 return i of task k with EL0's SVE enabled, after the
        sigreturn of probe j whose frame had SVE registers:
        restore_sve_fpsimd_context() (6.1 arch/arm64/kernel/signal.c)
        copies them into the task's SVE buffer and sets TIF_SVE, so the
        return holds them beyond V0-V31 (rt_sigreturn's own entry, a system
        call, discarded the task's earlier ones first)."""
        vl, record_flags = mem_features(j) & 0xFFFF, mem_features(j) >> 16
        if record_flags & SVE_SIG_FLAG_SM:
            sve.unchecked["a signal frame of SME's streaming mode"] += 1
            return
        if vl != index_of(i):
            sve.unchecked["the vector length changed"] += 1
            return
        want = mem_ext_hash(j)
        if sve_hash(i) != want and spans_gap(gaps, int(seqs[j]), int(seqs[i])):
            sve.unchecked[GAP_UNCHECKED] += 1
            return
        sve.checked += 1
        sve.purpose_checked[SVE_SIGRETURN] += 1
        if sve_hash(i) == want:
            return
        sve.violations += 1
        x = explainer.explain(j, i, k, regs_hash[i], int(ev["vcpu"][i]))
        findings.append(BoundaryFinding(
            Kind.CORRUPTED_STATE, "purpose", int(ident[i]), 0, j, i, x.cause,
            f"the return after sigreturn ({explainer.call(j)}) does not hold the SVE registers "
            f"beyond V0-V31 of the signal frame's SVE record (VL {vl} bytes) as the handler "
            "left it: " + x.text, trail=x.trail))

    def judge(i: int, k: int, before: int, window: list[str], what: str) -> None:
        """Return i of task k against the register hash of event `before`."""
        want = regs_hash[before]
        if regs_hash[i] == want:
            user.checked += 1
            count(k, False)
        elif window:
            user.changed_on_purpose[window[0]] += 1
        elif spans_gap(gaps, int(seqs[before]), int(seqs[i])):
            user.unchecked[GAP_UNCHECKED] += 1
        else:
            user.checked += 1
            user.violations += 1
            count(k, True)
            x = explainer.explain(before, i, k, want, int(ev["vcpu"][i]))
            findings.append(BoundaryFinding(Kind.CORRUPTED_STATE, "task", int(ident[i]), 0,
                                            before, i, x.cause, what + x.text,
                                            trail=x.trail))

    entry: dict[int, int] = {}  # key -> its latest USER_ENTRY event
    reasons: dict[int, list[tuple[int, str]]] = {}  # key -> (event index, reason)
    fork_probe: dict[tuple[int, int], int] = {}  # (vcpu, parent key) -> probe event
    fork_copy: dict[int, int] = {}  # child task pointer -> the save that copied its state
    # (vcpu, key) -> the probe of a frame due, and the key's last return then
    sigframe_probe: dict[tuple[int, int], tuple[int, int]] = {}
    key_of_ptr: dict[int, int] = {}
    rel = bp.rel
    rel_keys = keys.at(rel)
    values = ev["value"].data
    index_of = column("index")
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
            if flags & l2:
                # The nested guest's kernel changes its own tasks' state
                # (its model's, analyzers.run.guest_view), not that of
                # the vCPU thread it runs on.
                pass
            elif probe == p_fork:
                fork_probe[(cpu, k)] = i
            elif probe == p_regset:
                target = key_of_ptr.get(values[i])
                if target is not None:
                    reasons.setdefault(target, []).append((i, "ptrace regset write"))
            elif probe in purposeful:
                reasons.setdefault(k, []).append((i, purposeful[probe]))
                if probe == p_sigframe:
                    sigframe_probe[(cpu, k)] = (i, p)
        elif kind == k_sigframe:
            # arm64: the frame read at the handler's start.
            due = sigframe_probe.pop((cpu, k), None)
            if due is not None:
                judge_frame(i, k, cpu, due[1], due[0])
            else:
                user.unchecked["a signal frame read whose delivery the trace did not "
                               "show"] += 1
        elif kind != k_return:
            # L2's own frames (the nested guest's kernel, on the vCPU
            # thread's task) are its model's (analyzers.run.guest_view).
            if (cpu, k) in sigframe_probe and addr < USER_TOP and not flags & l2 and \
                    arch == fmt.Arch.X86_64:
                # The first save into user memory after the probe: the frame's.
                judge_frame(i, k, cpu, p, sigframe_probe.pop((cpu, k))[0])
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
            changes = [(j, r) for j, r in reasons.pop(k, []) if j > p]
            window = [r for _, r in changes]
            e = entry.get(k, -1)
            if e <= p:
                e = -1
            if flags & sve_valid and arch == fmt.Arch.AARCH64:
                judge_sve(i, k, e, changes)
            elif arch == fmt.Arch.AARCH64 and e >= 0 and all_flags[e] & sve_valid:
                judge_sve_dropped(i, k, e, changes)
            if changes and changes[-1][1] in results:
                judge_purpose(i, k, changes[-1][0], changes[-1][1], e)
                continue
            if changes and all_flags[changes[-1][0]] & mem_valid:
                j, why = changes[-1]
                if why == "sigreturn" and judge_sigreturn(i, k, j):
                    continue
                if why == "ptrace regset write" and judge_regset(i, k, j, e):
                    continue
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

    vcpu, per_vcpu, vfind = _check_vcpus(ev, bp, keys, ident, uabi_probed, explainer, gaps,
                                         arch)
    findings += vfind
    findings.sort(key=lambda f: (f.after, f.kind))
    return Boundaries(user, vcpu, {k_: (v[0], v[1]) for k_, v in per_task.items()},
                      per_vcpu, findings, sections, keys,
                      AARCH64_SVE_REGISTERS if boundary_state and arch == fmt.Arch.AARCH64
                      else BOUNDARY_REGISTERS.get(arch, ("", "")), sve)


def _guest_moves(x: _Explainer, mine: list[int]) -> tuple[int, str, list[tuple[str, int]]]:
    """Where the vCPU thread moved state between a VM exit and the entry
    that found the guest's registers changed: its last save and the restore
    after it, each with its site (the guest's state goes out at the exit's
    fpu_swap_kvm_fpstate() or a preemption, and comes back before the
    entry)."""
    ev = x.ev
    saves = [i for i in mine if x.saves[i]]
    restores = [i for i in mine if x.restores[i]]
    if not saves and not restores:
        return -1, "; the vCPU thread saved and restored nothing in between", []
    trail: list[tuple[str, int]] = []
    parts = []
    if saves:
        s = saves[-1]
        trail.append(("save", s))
        parts.append(f"its last save was to {int(ev['addr'][s]):#x} at {x.site(s)} "
                     f"(seq {int(ev['seq'][s])})")
    after = [r for r in restores if not saves or r > saves[-1]]
    if after:
        r = after[-1]
        trail.append(("restore", r))
        parts.append(f"the restore before the entry loaded {int(ev['addr'][r]):#x} at "
                     f"{x.site(r)} (seq {int(ev['seq'][r])})")
        if saves and int(ev["addr"][r]) == int(ev["addr"][saves[-1]]) and \
                int(ev["mem_hash"][r]) != int(ev["mem_hash"][saves[-1]]):
            parts.append("the buffer changed in memory between them")
    else:
        parts.append("no restore followed it before the entry")
    return (trail[-1][1], "; in between, " + ", ".join(parts), trail)


# A vCPU's registers set by user space, or reset (KVM_ARM_VCPU_INIT).
VCPU_SET_ON_PURPOSE = "set by user space (KVM_SET_ONE_REG) or reset"
# KVM_SET_FPU writes the guest's fpstate by memcpy inside kvm.ko
# (kvm_arch_vcpu_ioctl_set_fpu(), 6.1 arch/x86/kvm/x86.c), which is not
# probed: a guest state whose buffer changed while the vCPU thread was back
# in user space may have been set so.
VCPU_SET_FPU_UNSEEN = ("the guest's saved state changed in memory while KVM_RUN had returned "
                       "to user space: KVM_SET_FPU (copied inside kvm.ko, not observed) or "
                       "damage")
VCPU_SET_XSAVE = "KVM_SET_XSAVE's image"


def _vcpu_key(ev: npt.NDArray[np.void], i: int, key: int) -> int:
    """The per-vCPU row of VM entry i by the thread of task key `key`: its
    VMCB's low 48 bits with the key above (as the compiled pass keys it)."""
    return (int(ev["addr"][i]) & ((1 << 48) - 1)) | ((key + 1) << 48)


def _buffer_changed(x: _Explainer, mine: list[int]) -> bool:
    """Whether the guest's buffer changed in memory between the vCPU
    thread's last save in `mine` and the restore of the same buffer after
    it."""
    ev = x.ev
    saves = [i for i in mine if x.saves[i]]
    if not saves:
        return False
    s = saves[-1]
    return any(x.restores[r] and int(ev["addr"][r]) == int(ev["addr"][s]) and
               int(ev["mem_hash"][r]) != int(ev["mem_hash"][s]) for r in mine if r > s)


def _entered_fpu_guest(x: _Explainer, mine: list[int]) -> int | None:
    """The struct fpu_guest whose state the vCPU thread last loaded for its
    guest among `mine`: fpu_swap_kvm_fpstate(guest_fpu, enter_guest) with
    enter_guest set, at KVM_RUN (6.1 arch/x86/kernel/fpu/core.c), timed
    as an FPU path; None when the trace does not show it."""
    ev = x.ev
    for i in reversed(mine):
        if int(ev["kind"][i]) == fmt.Kind.PROBE and int(ev["index"][i]) == fmt.Probe.FPU_PATH and \
                int(ev["addr"][i]) & 0xFF and \
                x.symbols.function(int(ev["pc"][i])) == "fpu_swap_kvm_fpstate":
            return int(ev["value"][i])
    return None


def _check_vcpus(ev: npt.NDArray[np.void], bp: BoundaryPass, keys: TaskKeys,
                 ident: npt.NDArray[np.int64], uabi_probed: bool, explainer: _Explainer,
                 gaps: npt.NDArray[np.uint64], arch: int = fmt.Arch.X86_64
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
    kinds, flags = ev["kind"], ev["flags"]
    for i, x in zip(bp.diff_entry.tolist(), bp.diff_exit.tolist(), strict=True):
        key = keys.of(i)
        between = np.arange(x + 1, i)
        mine = between[keys.at(between) == key]
        probes = mine[(kinds[mine] == fmt.Kind.PROBE) & ((flags[mine] & fmt.Flag.L2) == 0)]
        sets = probes[ev["index"][probes] == fmt.Probe.KVM_UABI_SET].tolist()
        resets = probes[ev["index"][probes] == fmt.Probe.KVM_VCPU_RESET].tolist()
        what = ("the guest's FP registers at this VM entry differ from those at its "
                "previous VM exit, and KVM did not set them on purpose in between")
        trail0: list[tuple[str, int]] = []
        if resets or (sets and (arch != fmt.Arch.X86_64
                                or not flags[sets[-1]] & fmt.Flag.MEM_VALID)):
            check.changed_on_purpose[VCPU_SET_ON_PURPOSE] += 1
            continue
        if sets:
            # KVM_SET_XSAVE(2): kvm_vcpu_ioctl_x86_set_xsave() ->
            # fpu_copy_uabi_to_guest_fpstate() -> copy_uabi_from_kernel_to_xstate()
            # (6.1 arch/x86/kernel/fpu/core.c), the rules of a regset write
            # (IMAGE_UABI); a refused one (-EINVAL) copies nothing, and the
            # entry would have equalled the exit. The next KVM_RUN loads the
            # result (fpu_swap_kvm_fpstate()).
            j = sets[-1]
            entered = _entered_fpu_guest(explainer, mine.tolist())
            if entered is not None and entered != int(ev["value"][j]):
                check.unchecked["a KVM_SET_XSAVE of another vCPU by this vCPU's thread"] += 1
                continue
            want = image_hash(ev, j, IMAGE_UABI)
            if want is None:
                check.unchecked["a KVM_SET_XSAVE that leaves MXCSR as it was"] += 1
                continue
            if int(ev["regs_hash"][i]) == want:
                check.checked += 1
                check.purpose_checked[VCPU_SET_XSAVE] += 1
                row = per.setdefault(_vcpu_key(ev, i, key), [0, 0])
                row[0] += 1
                continue
            # The set's own return, then the KVM_RUN: more returns are other
            # system calls, among which an unseen KVM_SET_FPU may be.
            if int(np.count_nonzero(kinds[mine[mine > j]] == fmt.Kind.USER_RETURN)) > 1:
                check.unchecked["a KVM_SET_XSAVE followed by other system calls of the vCPU "
                                "thread before KVM_RUN (KVM_SET_FPU, copied inside kvm.ko, "
                                "is not observed)"] += 1
                continue
            check.purpose_checked[VCPU_SET_XSAVE] += 1
            what = ("the guest's FP registers at this VM entry do not hold the image that "
                    f"KVM_SET_XSAVE wrote ({explainer.call(j)})")
            trail0 = [("purpose", j)]
        elif np.any(kinds[mine] == fmt.Kind.USER_RETURN):
            if not uabi_probed:
                check.unchecked["changed while KVM_RUN had returned to user space, on a "
                                "kernel whose KVM_SET_XSAVE copies are not observable"] += 1
                continue
            if _buffer_changed(explainer, mine.tolist()):
                check.unchecked[VCPU_SET_FPU_UNSEEN] += 1
                continue
        if spans_gap(gaps, int(ev["seq"][x]), int(ev["seq"][i])):
            check.unchecked[GAP_UNCHECKED] += 1
            continue
        check.checked += 1
        check.violations += 1
        row = per.setdefault(_vcpu_key(ev, i, key), [0, 0])
        row[0] += 1
        row[1] += 1
        cause, why, trail = _guest_moves(explainer, mine.tolist())
        findings.append(BoundaryFinding(
            Kind.CORRUPTED_STATE, "vcpu", int(ident[i]), int(ev["addr"][i]), x, i, cause,
            what + why, trail=sorted(trail0 + trail, key=lambda t: t[1])))
    mask = (1 << 48) - 1
    return check, {(k_ & mask, (k_ >> 48) - 1): (r[0], r[1]) for k_, r in per.items()
                   if r[0]}, findings
