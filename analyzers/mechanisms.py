"""Which FPU-handling designs the recorded kernel implements, detected from
its symbols (never from a version string), for the reports and the reading
of their numbers (docs/analysis.md)."""

from __future__ import annotations

from dataclasses import dataclass

from fputrace.trace.symbols import Symbols


@dataclass(frozen=True)
class Mechanism:
    name: str
    present: bool
    evidence: str  # the symbol that decided it
    description: str


def kernel_mechanisms(symbols: Symbols) -> list[Mechanism]:
    has = symbols.values.__contains__
    out: list[Mechanism] = []
    if has("fpsimd_save_state"):
        # arm64. KVM's lazy FPSIMD switch ("KVM: arm64: Optimise FPSIMD
        # handling to reduce guest/host thrashing", v4.17): the guest runs with
        # FP trapped until its first use, and the host takes the guest's
        # registers over with fpsimd_bind_state_to_cpu() in
        # kvm_arch_vcpu_ctxsync_fp().
        out.append(Mechanism("kvm_lazy_fpsimd", has("kvm_arch_vcpu_ctxsync_fp"),
                             "kvm_arch_vcpu_ctxsync_fp",
                             "the guest's FP/SIMD registers are loaded on its first FP trap "
                             "after each vcpu_load, and saved by the host after the run"))
        return out
    # KVM and the FPU: one guest fpstate swapped into the vCPU thread's FPU
    # around vcpu_run() (series "x86/fpu/kvm: Sanitize the FPU guest/user
    # handling", v5.16), or the older pair of user_fpu/guest_fpu structs copied
    # on every KVM_RUN (kvm_load_guest_fpu / kvm_put_guest_fpu).
    if has("fpu_swap_kvm_fpstate"):
        out.append(Mechanism("kvm_fpstate_swap", True, "fpu_swap_kvm_fpstate",
                             "KVM swaps the guest fpstate into the vCPU thread's FPU around "
                             "vcpu_run(): expect 2 saves and 2 restores per KVM_RUN, no copies"))
    elif has("kvm_save_current_fpu"):
        out.append(Mechanism("kvm_fpstate_swap", False, "kvm_save_current_fpu",
                             "KVM keeps separate user_fpu and guest_fpu structs and saves/"
                             "restores both on every KVM_RUN (memory copies when "
                             "TIF_NEED_FPU_LOAD is set are not visible in the trace)"))
    # Lazy restore on return to user space (TIF_NEED_FPU_LOAD, the series
    # "x86: load FPU registers on return to userland", v5.2).
    out.append(Mechanism("lazy_user_restore", has("switch_fpu_return"), "switch_fpu_return",
                         "user FPU registers are restored on return to user space "
                         "(TIF_NEED_FPU_LOAD), skipped while fpregs_state_valid() holds"))
    # Dynamic XSAVE features and XFD (AMX) with KVM support.
    out.append(Mechanism("xfd", has("fpu_update_guest_xfd"), "fpu_update_guest_xfd",
                         "XFD-based dynamic features (AMX), with the guest's XFD switched "
                         "with its fpstate"))
    return out
