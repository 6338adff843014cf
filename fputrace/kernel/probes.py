"""Which kernel functions the plugin probes, found by symbol.

A probe is an exec callback on a function's first instruction that records
its first three arguments (rdi, rsi, rdx) as a PROBE event whose `index`
says what the function does to FPU state (fputrace.trace.format.Probe).
The analyzers use them to tell purposeful changes of a task's or a guest's
FP registers (a signal frame, exec, a fork copy, KVM_SET_XSAVE) from lost
ones, and to know when kernel code may use SIMD registers.

Each probe lists the functions that do the job in the kernels we support,
newest first; a kernel has whichever of them exist (docs/analysis.md has
the table per kernel, with the code each comes from). Functions of modules
(kvm.ko, kvm-amd.ko) cannot be probed: their addresses are not known when
QEMU starts.
"""

from __future__ import annotations

from dataclasses import dataclass

from fputrace.kernel.symbols import Symbols
from fputrace.trace.format import Probe


@dataclass(frozen=True)
class ProbeDef:
    probe: Probe
    symbols: tuple[str, ...]
    all_of: bool  # probe every symbol present (else the first one present)
    why: str


PROBES: tuple[ProbeDef, ...] = (
    # fpu_clone() since the v5.14 FPU rework, fpu__copy() before: the child's
    # fpstate is written by a save of the parent's live registers (or a
    # memcpy when TIF_NEED_FPU_LOAD is set, 5.10). arg0: the child task_struct.
    ProbeDef(Probe.FORK_COPY, ("fpu_clone", "fpu__copy"), False,
             "fork/clone copies the parent's FPU state into the child"),
    # exec: fpu_flush_thread() (v5.14) / fpu__clear_all() (5.10) drop the live
    # registers and reset the task's buffer to init_fpstate by memcpy.
    ProbeDef(Probe.EXEC_RESET, ("fpu_flush_thread", "fpu__clear_all"), False,
             "exec resets the task's FPU state to the init state"),
    # do_exit() -> exit_thread(): fpu__drop() of the exiting task.
    ProbeDef(Probe.TASK_EXIT, ("exit_thread",), False,
             "the task exits: its FPU context ends"),
    # handle_signal() -> get_sigframe() -> copy_fpstate_to_sigframe(), then
    # fpu__clear_user_states() loads the init state for the handler.
    ProbeDef(Probe.SIGFRAME_SAVE, ("copy_fpstate_to_sigframe",), False,
             "signal delivery: the state goes to the signal frame, the handler starts "
             "from the init state"),
    # rt_sigreturn -> restore_sigcontext() -> fpu__restore_sig().
    ProbeDef(Probe.SIGRETURN, ("fpu__restore_sig",), False,
             "sigreturn loads the state from the signal frame"),
    # PTRACE_SETREGSET / PTRACE_SETFPREGS / core regset writes.
    ProbeDef(Probe.REGSET_SET, ("xstateregs_set", "xfpregs_set", "fpregs_set"), True,
             "a ptrace regset write replaces the task's FPU state"),
    # v5.16, "x86/fpu: Move KVMs FPU swapping to FPU core" and its series.
    ProbeDef(Probe.KVM_FPSTATE_ALLOC, ("fpu_alloc_guest_fpstate",), False,
             "KVM allocates a vCPU's guest fpstate"),
    ProbeDef(Probe.KVM_FPSTATE_FREE, ("fpu_free_guest_fpstate",), False,
             "KVM frees a vCPU's guest fpstate"),
    # KVM_SET_XSAVE(2) and KVM_SET_FPU go through the FPU core since v5.16
    # ("x86/fpu/kvm: Sanitize the FPU guest/user handling"); 5.10 copies
    # inside kvm.ko, unprobed.
    ProbeDef(Probe.KVM_UABI_SET, ("fpu_copy_uabi_to_guest_fpstate",), False,
             "KVM_SET_XSAVE/KVM_SET_FPU replaces the guest's FPU state"),
    ProbeDef(Probe.KVM_UABI_GET, ("fpu_copy_guest_fpstate_to_uabi",), False,
             "KVM_GET_XSAVE/KVM_GET_FPU reads the guest's FPU state"),
    # kernel_fpu_begin() is an inline wrapper of kernel_fpu_begin_mask() in the
    # kernels we support (5.10 included); an older kernel has only the former.
    ProbeDef(Probe.KFPU_BEGIN, ("kernel_fpu_begin_mask", "kernel_fpu_begin"), False,
             "in-kernel FPU section begins"),
    ProbeDef(Probe.KFPU_END, ("kernel_fpu_end",), False, "in-kernel FPU section ends"),
    ProbeDef(Probe.FPSTATE_FREE, ("fpstate_free",), False,
             "a task's dynamically allocated fpstate is freed"),
    # A restore of user state that faults (a corrupt signal frame, a bad
    # XSTATE header) is fixed up by loading the init state instead:
    # ex_handler_fprestore() -> fpu_reset_from_exception_fixup() since the
    # v5.14 rework, ex_handler_fprestore() loading init_fpstate itself in 5.10.
    ProbeDef(Probe.RESTORE_FAULT, ("fpu_reset_from_exception_fixup", "ex_handler_fprestore"),
             False, "a faulting restore: the task gets the init state"),
)


@dataclass(frozen=True)
class ResolvedProbe:
    probe: Probe
    symbol: str
    addr: int


def resolve_probes(symbols: Symbols) -> list[ResolvedProbe]:
    """The probes this kernel has, with the addresses of their functions."""
    out: list[ResolvedProbe] = []
    for d in PROBES:
        present = [s for s in d.symbols if symbols.values.get(s)]
        for name in present if d.all_of else present[:1]:
            out.append(ResolvedProbe(d.probe, name, symbols.values[name]))
    return out


def plugin_args(probes: list[ResolvedProbe]) -> list[str]:
    return [f"probe={p.addr:#x}:{int(p.probe)}" for p in probes]
