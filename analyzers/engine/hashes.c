/*
 * hashes.c: the register-file hashes of the kernel's init states, for the
 * boundary checks (ftr-hash.h defines the hash).
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "fpa-internal.h"

/*
 * The hash of the user register file the kernel's init state gives a task
 * (docs/analysis.md, "Purposeful changes"):
 * - x86: restore_fpregs_from_init_fpstate() (6.1 arch/x86/kernel/fpu/core.c;
 *   copy_init_fpstate_to_fpregs() in 5.10) restores init_fpstate, whose
 *   XSTATE_BV puts x87 and SSE in their init configuration (FCW 0x37f, FSW,
 *   ST0-7 and XMM0-15 zero: SDM vol. 1, 13.6) while MXCSR, which XRSTOR
 *   always loads from memory, is init_fpstate's MXCSR_DEFAULT (0x1f80);
 * - arm64: fpsimd_flush_thread() (arch/arm64/kernel/fpsimd.c) memsets the
 *   task's user_fpsimd_state: V0-V31, FPSR and FPCR zero.
 */
uint64_t fpa_x86_init_share(enum fpa_x86_share part)
{
    switch (part) {
    case FPA_X86_X87:           /* FCW 0x37f, FSW 0, ST0-7 */
        return ftr_hash_word(0, 0x037f, ftr_xsave_word_content(0)) +
               ftr_xsave_zero_hash(32, 160);
    case FPA_X86_MXCSR:
        return ftr_hash_word(3, 0x1f80, ftr_xsave_word_content(3));
    case FPA_X86_SSE:           /* XMM0-15 */
        return ftr_xsave_zero_hash(160, 416);
    }
    return 0;
}

uint64_t fpa_user_init_hash(uint16_t arch)
{
    uint64_t h = 0;

    if (arch == FTR_ARCH_AARCH64) {
        for (uint32_t w = 0; w <= FTR_A64_WORD_FPSR_FPCR; w++) {
            h += ftr_a64_word_hash(w, 0);
        }
        return h;
    }
    return fpa_x86_init_share(FPA_X86_X87) + fpa_x86_init_share(FPA_X86_MXCSR) +
           fpa_x86_init_share(FPA_X86_SSE);
}

uint64_t fpa_a64_sve_zero_hash(uint32_t vl)
{
    return ftr_a64_sve_zero_hash(vl);
}
