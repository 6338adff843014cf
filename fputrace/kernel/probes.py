"""Which kernel functions the plugin probes, found by symbol.

A probe is an exec callback on a function's first instruction that records
its first three arguments (rdi, rsi, rdx; x0, x1, x2) as a PROBE event whose `index`
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

import numpy as np

from fputrace.trace.format import Probe
from fputrace.trace.symbols import Symbols


@dataclass(frozen=True)
class ProbeDef:
    probe: Probe
    symbols: tuple[str, ...]
    all_of: bool  # probe every symbol present (else the first one present)
    why: str
    # Its return is recorded too (a PROBE_RETURN event), so the instructions
    # spent inside it are known.
    timed: bool = False
    # It renames no task and rewrites no buffer: the plugin reads no
    # identity or buffer again after it, nor the pending user entry.
    quiet: bool = False


X86_PROBES: tuple[ProbeDef, ...] = (
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
    # KVM_SET_XSAVE(2) goes through the FPU core since v5.16 ("x86/fpu/kvm:
    # Sanitize the FPU guest/user handling"); 5.10 copies inside kvm.ko,
    # unprobed, and KVM_SET_FPU still does (kvm_arch_vcpu_ioctl_set_fpu()).
    ProbeDef(Probe.KVM_UABI_SET, ("fpu_copy_uabi_to_guest_fpstate",), False,
             "KVM_SET_XSAVE replaces the guest's FPU state"),
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
    # Every context switch: context_switch() -> switch_to() -> __switch_to(prev,
    # next), which saves prev's registers in switch_fpu_prepare() (if it
    # still owns them: no TIF_NEED_FPU_LOAD), marks next's to be loaded at
    # its return to user mode (switch_fpu_finish(), switch_fpu_return()) and
    # writes the per-cpu current task pointer.
    ProbeDef(Probe.CONTEXT_SWITCH, ("__switch_to",), False,
             "a context switch from arg0 to arg1", timed=True, quiet=True),
    # The FPU paths timed in instructions (arch/x86/kernel/fpu/core.c):
    # fpu_swap_kvm_fpstate() (v5.16 on; 5.10 swaps inside kvm.ko, not
    # probed) saves the host's registers and loads the guest's around
    # vcpu_run(), and back; switch_fpu_return() loads a task's registers on
    # its way to user mode (exit_to_user_mode_prepare(), TIF_NEED_FPU_LOAD).
    ProbeDef(Probe.FPU_PATH, ("fpu_swap_kvm_fpstate", "switch_fpu_return"), True,
             "an FPU path, timed in instructions", timed=True, quiet=True),
)


# arm64 (arch/arm64/kernel/fpsimd.c, process.c, signal.c, ptrace.c).
AARCH64_PROBES: tuple[ProbeDef, ...] = (
    # copy_process() -> arch_dup_task_struct(dst, src): fpsimd_preserve_current_state()
    # saves the parent's registers into its own buffer, then *dst = *src copies it.
    ProbeDef(Probe.FORK_COPY, ("arch_dup_task_struct",), False,
             "fork/clone copies the parent's FPU state into the child"),
    # flush_thread() -> fpsimd_flush_thread(): the state is zeroed by memset.
    ProbeDef(Probe.EXEC_RESET, ("fpsimd_flush_thread",), False,
             "exec resets the task's FPU state to the init state"),
    # setup_rt_frame() -> fpsimd_signal_preserve_current_state() saves the
    # live state into the task's buffers, then setup_sigframe() ->
    # preserve_fpsimd_context() and preserve_sve_context() (inlined in
    # Debian's builds: no symbol) copy them to the frame, and setup_return()
    # points the handler's SP at it; the plugin reads it there, in user mode.
    ProbeDef(Probe.SIGFRAME_SAVE, ("fpsimd_signal_preserve_current_state",), False,
             "signal delivery: the state goes to the signal frame"),
    # rt_sigreturn -> restore_sigframe() -> restore_fpsimd_context() / restore_sve_fpsimd_context().
    ProbeDef(Probe.SIGRETURN, ("restore_fpsimd_context", "restore_sve_fpsimd_context"), True,
             "sigreturn loads the state from the signal frame"),
    ProbeDef(Probe.REGSET_SET, ("fpr_set", "sve_set", "ssve_set", "za_set"), True,
             "a ptrace regset write replaces the task's FPU state"),
    ProbeDef(Probe.KFPU_BEGIN, ("kernel_neon_begin",), False,
             "in-kernel FP/SIMD (NEON) section begins"),
    ProbeDef(Probe.KFPU_END, ("kernel_neon_end",), False,
             "in-kernel FP/SIMD (NEON) section ends"),
    # KVM (arch/arm64/kvm, built in): kvm_arch_vcpu_load() and _put() call
    # these on every vcpu_load()/vcpu_put() (each vCPU ioctl, and each
    # preemption inside KVM_RUN): the host's state is saved and the CPU's
    # registers given up to the vCPU's lazy switch, then the guest's saved.
    # arg0: the vcpu.
    ProbeDef(Probe.KVM_LOAD_FP, ("kvm_arch_vcpu_load_fp",), False,
             "KVM loads a vCPU: the host task's FP state goes out for the guest's",
             timed=True),
    ProbeDef(Probe.KVM_PUT_FP, ("kvm_arch_vcpu_put_fp",), False,
             "KVM puts a vCPU: the guest's FP state is saved if it was loaded", timed=True),
    # KVM_SET_ONE_REG (any register, the V, FPSR/FPCR and SVE ones among
    # them: the probe sits on kvm_arm_set_reg(), as set_core_reg() and
    # set_sve_reg() are inlined) and KVM_ARM_VCPU_INIT's kvm_reset_vcpu():
    # user space sets the guest's registers on purpose.
    ProbeDef(Probe.KVM_UABI_SET, ("kvm_arm_set_reg",), False,
             "KVM_SET_ONE_REG sets a vCPU register"),
    ProbeDef(Probe.KVM_VCPU_RESET, ("kvm_reset_vcpu",), False,
             "KVM resets a vCPU: its FP registers are zeroed"),
    # __switch_to(prev, next) (arch/arm64/kernel/process.c):
    # fpsimd_thread_switch(next) saves prev's live state (fpsimd_save()) and
    # sets TIF_FOREIGN_FPSTATE on next unless its state is still in this
    # CPU's registers; do_notify_resume() -> fpsimd_restore_current_state()
    # loads it on the way to user mode; cpu_switch_to() writes SP_EL0.
    ProbeDef(Probe.CONTEXT_SWITCH, ("__switch_to",), False,
             "a context switch from arg0 to arg1", timed=True, quiet=True),
    # The FPU paths timed in instructions (arch/arm64/kernel/fpsimd.c,
    # arch/arm64/kvm/fpsimd.c): the host's FP/SIMD and SVE access traps
    # (do_fpsimd_acc(), do_sve_acc()), the load of a task's registers on its
    # way to user mode (do_notify_resume() -> fpsimd_restore_current_state()),
    # and KVM's around each guest run (kvm_arch_vcpu_ctxflush_fp() before,
    # kvm_arch_vcpu_ctxsync_fp() after).
    ProbeDef(Probe.FPU_PATH, ("do_fpsimd_acc", "do_sve_acc", "fpsimd_restore_current_state",
                              "kvm_arch_vcpu_ctxflush_fp", "kvm_arch_vcpu_ctxsync_fp"), True,
             "an FPU path, timed in instructions", timed=True, quiet=True),
)

PROBES = {"x86_64": X86_PROBES, "aarch64": AARCH64_PROBES}

# arm64 code whose FP/SIMD instructions handle the state itself: the
# routines of arch/arm64/kernel/entry-fpsimd.S and, for VHE, KVM's copies in
# arch/arm64/kvm/hyp/fpsimd.S. Kernel-mode NEON is everything else.
AARCH64_FP_CORE = (
    "fpsimd_save_state", "fpsimd_load_state", "sve_get_vl", "sve_set_vq",
    "sve_save_state", "sve_load_state", "sve_flush_live", "sme_get_vl", "sme_set_vq",
    "sme_save_state", "sme_load_state", "za_save_state", "za_load_state",
    "__fpsimd_save_state", "__fpsimd_restore_state", "__sve_save_state",
    "__sve_restore_state",
)


def fp_core_code(symbols: Symbols, arch: str) -> list[tuple[int, int]]:
    """(start, size) of the FP core's functions this kernel has (arm64; the
    x86 plugin recognises its FPU core by instruction instead). A function
    ends where the next text symbol starts."""
    if arch != "aarch64":
        return []
    out: list[tuple[int, int]] = []
    for name in AARCH64_FP_CORE:
        addr = symbols.values.get(name)
        if not addr:
            continue
        i = int(np.searchsorted(symbols.addrs, np.uint64(addr), side="right"))
        if i < len(symbols.addrs):
            out.append((addr, min(int(symbols.addrs[i]) - addr, 0x1000)))
    return out


@dataclass(frozen=True)
class ResolvedProbe:
    probe: Probe
    symbol: str
    addr: int
    timed: bool = False
    quiet: bool = False


def resolve_probes(symbols: Symbols, arch: str = "x86_64") -> list[ResolvedProbe]:
    """The probes this kernel has, with the addresses of their functions."""
    out: list[ResolvedProbe] = []
    for d in PROBES[arch]:
        present = [s for s in d.symbols if symbols.values.get(s)]
        for name in present if d.all_of else present[:1]:
            out.append(ResolvedProbe(d.probe, name, symbols.values[name], d.timed, d.quiet))
    return out


def plugin_args(probes: list[ResolvedProbe]) -> list[str]:
    """probe=ADDR:ID[:FLAGS] (plugin/fputrace.c): t timed, q quiet."""
    out = []
    for p in probes:
        flags = ("t" if p.timed else "") + ("q" if p.quiet else "")
        out.append(f"probe={p.addr:#x}:{int(p.probe)}" + (f":{flags}" if flags else ""))
    return out
