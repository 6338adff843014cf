/*
 * arm64.h: the aarch64 side's types (arm64.c, struct arch_ops a64_ops).
 * fputrace.h includes it for the per-vCPU and per-instruction unions
 * only; the core uses none of it.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#ifndef FPUTRACE_ARM64_H
#define FPUTRACE_ARM64_H

#include <stdbool.h>
#include <stdint.h>

struct fpu_insn;

/* What an instrumented A64 instruction names (struct fpu_insn's arm64 part). */
struct a64_insn {
    uint8_t el;         /* the EL it was translated at */
    uint8_t reg;        /* Rt of an MSR, Rn of a save/load sequence */
    uint8_t vl_reg;     /* ZA save/load: the register RDSVL set to SVL in bytes */
    uint8_t zt_reg;     /* ... the one that says whether ZT0 is moved (32: never) */
    uint8_t crm;        /* MSR (immediate): CRm */
    bool imm;           /* MSR (immediate): SMSTART/SMSTOP */
    bool hyp;           /* nVHE hypervisor code (EL2 without E2H) */
    uint16_t sysreg;    /* MSR: the register named */
    uint16_t vector;    /* exception vector: the offset from VBAR */
};

/*
 * The FP/SIMD and SVE records of an arm64 signal frame, read from user
 * memory (a64_frame_read()).
 */
struct a64_frame {
    uint64_t task;              /* whose frame (0: none read) */
    uint64_t fpsimd;            /* the FP/SIMD record's address (0: not found) */
    uint64_t v_hash;            /* its V0-V31, FPSR and FPCR, hashed as the registers */
    uint64_t fpsr_fpcr_hash;    /* ... the share of FPSR and FPCR in it */
    uint64_t sve_hash;          /* the SVE record's registers beyond V0-V31 */
    uint64_t sve_v_hash;        /* ... its Z0-Z31's low 128 bits (V0-V31) */
    /* that record's VL in bytes | its flags << 16 (0: none) */
    uint32_t sve;
};

/* arm64.c's part of a vCPU's state. */
struct a64_vcpu {
    uint64_t host_task;         /* the host's current task: see a64_current_ptr() */
    uint64_t va;                /* the pending save/load's buffer, as its code names it */
    bool save;                  /* the pending operation is a save */
    bool hyp;                   /* ... run by nVHE hypervisor code */
    bool placed;                /* ... its first access gave the physical address */
    const struct fpu_insn *za_insn;     /* the pending operation is a ZA save or load */
    bool guest_fp_trapped;      /* the guest runs with FP/SIMD access trapped to EL2 */
    uint64_t entry_esr;         /* the pending user entry's ESR (0: an interrupt) */
    /*
     * Signal frames, which the kernel reads and writes with PAN set (its
     * own loads of user memory are unprivileged LDTR/STTR), so that a read
     * of them at EL1 faults: the task whose signal delivery writes a frame
     * (0: none), read at the handler's first user-mode block; the frame
     * rt_sigreturn is about to load, read at its SVC.
     */
    uint64_t frame_task;
    struct a64_frame sigreturn_frame;
    /*
     * The image a tracer's PTRACE_SETREGSET NT_PRFPREG is about to write
     * (struct user_fpsimd_state, at its iovec), read at its SVC: fpr_set()
     * takes it through PAN too.
     */
    struct a64_frame regset_image;
};

#endif /* FPUTRACE_ARM64_H */
