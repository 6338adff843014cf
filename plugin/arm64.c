/*
 * arm64.c: the aarch64 side of fputrace (struct arch_ops a64_ops).
 *
 * FP/SIMD and SVE access traps, CPACR_EL1/CPTR_EL2/ZCR/SMCR writes, the
 * kernel's FPSIMD, SVE and ZA save/load sequences (recognised from their
 * instructions at translation time), VM entries and exits at EL2 (VHE and
 * nVHE), and the current task from SP_EL0.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fputrace.h"

/* ---- arm64 ------------------------------------------------------------ */

/*
 * A system register as an MSR/MRS instruction names it: op0:op1:CRn:CRm:op2,
 * the 16 bits 20:5 of the instruction.
 */
#define A64_SYSREG(op0, op1, crn, crm, op2) \
    ((op0) << 14 | (op1) << 11 | (crn) << 7 | (crm) << 3 | (op2))

#define SYSREG_CPACR_EL1        A64_SYSREG(3, 0, 1, 0, 2)
#define SYSREG_CPACR_EL12       A64_SYSREG(3, 5, 1, 0, 2)
#define SYSREG_CPTR_EL2         A64_SYSREG(3, 4, 1, 1, 2)
#define SYSREG_ZCR_EL1          A64_SYSREG(3, 0, 1, 2, 0)
#define SYSREG_ZCR_EL2          A64_SYSREG(3, 4, 1, 2, 0)
#define SYSREG_ZCR_EL12         A64_SYSREG(3, 5, 1, 2, 0)
#define SYSREG_SMCR_EL1         A64_SYSREG(3, 0, 1, 2, 6)
#define SYSREG_SMCR_EL2         A64_SYSREG(3, 4, 1, 2, 6)
#define SYSREG_SMCR_EL12        A64_SYSREG(3, 5, 1, 2, 6)
#define SYSREG_SVCR             A64_SYSREG(3, 3, 4, 2, 2)
#define SYSREG_SP_EL0           A64_SYSREG(3, 0, 4, 1, 0)

#define HCR_VM                  (1ull << 0)
#define HCR_TGE                 (1ull << 27)
#define HCR_E2H                 (1ull << 34)

#define ESR_EC_FP               0x07    /* FP/SIMD access trapped (CPACR/CPTR) */
#define ESR_EC_SVE              0x19
#define ESR_EC_SME              0x1d

#define PSR_MODE32              (1ull << 4)     /* PSTATE.nRW: AArch32 */

#define A64_INSN_SVC_MASK       0xffe0001fu     /* SVC #imm16 */
#define A64_INSN_SVC            0xd4000001u
#define A64_NR_RT_SIGRETURN     139             /* include/uapi/asm-generic/unistd.h */
#define A64_NR_PTRACE           117
#define A64_PTRACE_SETREGSET    0x4205          /* include/uapi/linux/ptrace.h */
#define A64_NT_PRFPREG          2               /* include/uapi/linux/elf.h */

/*
 * The signal frame (arch/arm64/include/uapi/asm/sigcontext.h, ucontext.h):
 * struct rt_sigframe is a 128-byte siginfo, then a ucontext whose
 * uc_mcontext (a 16-aligned struct sigcontext) starts at 176 and has its
 * 4096-byte __reserved[] at 288; the records there are a list of
 * {magic, size} heads ended by a zero one, and an extra_context record
 * points at more of them beyond (datap, size).
 */
#define A64_SIGFRAME_RECORDS    (128 + 176 + 288)
#define A64_SIGFRAME_RESERVED   4096
#define A64_FRAME_RECORDS_MAX   32
#define A64_FRAME_EXTRA_MAX     (1u << 20)
#define A64_FPSIMD_MAGIC        0x46508001u     /* struct fpsimd_context: 528 bytes */
#define A64_FPSIMD_CONTEXT      528
/* struct sve_context: 16 bytes + registers */
#define A64_SVE_MAGIC           0x53564501u
#define A64_SVE_CONTEXT         16
#define A64_EXTRA_MAGIC         0x45585401u     /* struct extra_context */

#define A64_INSN_ERET           0xd69f03e0u
#define A64_INSN_ERETAA         0xd69f0bffu
#define A64_INSN_ERETAB         0xd69f0fffu
#define A64_INSN_RET            0xd65f03c0u

/*
 * The kernel's linear map: [PAGE_OFFSET, PAGE_END). PAGE_OFFSET is
 * -(1 << VA_BITS): 0xffff000000000000 with 48-bit VAs, 0xfff0000000000000
 * with 52-bit ones (Debian's 6.12); PAGE_END is -(1 << 47) with either
 * (VA_BITS_MIN, arch/arm64/include/asm/memory.h). Below 0xffff000000000000
 * a 48-bit kernel has no valid address, so the wider range serves both.
 */
#define A64_LINEAR_START        0xfff0000000000000ull
#define A64_LINEAR_END          0xffff800000000000ull

/*
 * The FP/SIMD content image of the hashes: V0-V31 (the low 128 bits of
 * Z0-Z31) in words 0-63, FPSR | FPCR << 32 in word 64; with SVE the rest of
 * each Z register, the P registers and FFR from word A64_WORD_EXT on
 * (mem_ext_hash). The register file hashes like a buffer that holds it.
 */
#define A64_FPSIMD_BYTES        520     /* struct user_fpsimd_state less padding */
#define A64_WORD_EXT            1024
#define A64_VL_MAX              256     /* bytes: SVE's 2048-bit maximum */
/* ZA (SVL x SVL bytes) and ZT0 (64 bytes) hash as words of their own. */
#define A64_WORD_ZA             16384
#define A64_WORD_ZT0            (A64_WORD_ZA + A64_VL_MAX * A64_VL_MAX / 8)
#define A64_ZT0_BYTES           64

/* The kernel's save/load sequences (arch/arm64/include/asm/fpsimdmacros.h). */
enum a64_seq {
    SEQ_NONE,
    SEQ_FPSIMD_SAVE,            /* fpsimd_save: stp q0, q1, [xN] ... */
    SEQ_FPSIMD_LOAD,            /* fpsimd_restore: ldp q0, q1, [xN] ... */
    SEQ_SVE_SAVE,               /* sve_save: str z0, [xN, #-34, MUL VL] ... */
    SEQ_SVE_LOAD,               /* sve_load: ldr z0, [xN, #-34, MUL VL] ... */
};

/* Instructions the sequences are made of, bits of Rn (and Rt) cleared. */
#define A64_STP_Q_OFF           0xad000000u     /* STP (SIMD&FP) 128-bit, signed offset */
#define A64_LDP_Q_OFF           0xad400000u
#define A64_STP_Q_PRE           0xad800000u     /* ... pre-index */
#define A64_LDP_Q_PRE           0xadc00000u
#define A64_SVE_STR_Z           0xe5804000u     /* STR (vector), imm9 MUL VL */
#define A64_SVE_LDR_Z           0x85804000u
/*
 * sme_save_za/sme_load_za, with RDSVL before them and the ZT0 store or
 * load after them where the kernel has ZT0 (sme_save_state, 6.4 on;
 * za_save_state before): rdsvl xV, #1; mov wW, #0; 1: str za[wW, 0], [xN];
 * add xN, xN, xV; add xW, xW, #1; cmp xV, xW; b.ne 1b [; cbz wZ, 2f;
 * str zt0, [xN]; 2:].
 */
#define A64_SME_RDSVL_1         0x04bf5820u     /* RDSVL Xd, #1 */
#define A64_MOVZ_W_0            0x52800000u     /* MOV Wd, #0 */
#define A64_SME_STR_ZA          0xe1200000u     /* STR ZA[Wv, #0], [Xn] */
#define A64_SME_LDR_ZA          0xe1000000u
#define A64_ADD_X_REG           0x8b000000u     /* ADD Xd, Xn, Xm */
#define A64_ADD_X_1             0x91000400u     /* ADD Xd, Xn, #1 */
#define A64_CMP_X_REG           0xeb00001fu     /* CMP Xn, Xm */
#define A64_BNE_BACK_4          0x54ffff81u     /* B.NE, four instructions back */
#define A64_CBZ_W_FWD_2         0x34000040u     /* CBZ Wt, two instructions on */
#define A64_SME_STR_ZT0         0xe13f8000u     /* STR ZT0, [Xn] */
#define A64_SME_LDR_ZT0         0xe11f8000u
#define A64_ZT_NONE             32

static inline uint32_t a64_pair_q(uint32_t base, unsigned rt, unsigned rn, int imm16)
{
    return base | (uint32_t)(imm16 & 0x7f) << 15 | (rt + 1) << 10 | rn << 5 | rt;
}

static inline uint32_t a64_sve_z(uint32_t base, unsigned zt, unsigned rn, int imm9)
{
    uint32_t u = (uint32_t)imm9 & 0x1ff;
    return base | (u >> 3) << 16 | (u & 7) << 10 | rn << 5 | zt;
}

/* Register handles, resolved once by name (QEMU's own system register names). */
static struct {
    struct qemu_plugin_register *x[31], *sp;
    struct qemu_plugin_register *cpsr, *z[32], *p[16], *ffr, *fpsr, *fpcr, *vg;
    struct qemu_plugin_register *hcr_el2, *esr_el1, *esr_el2, *elr_el1, *elr_el2;
    struct qemu_plugin_register *spsr_el1, *spsr_el2, *vbar_el1, *vbar_el2;
    struct qemu_plugin_register *vttbr_el2, *vmpidr_el2, *svcr;
    struct qemu_plugin_register *cpacr_el1, *cptr_el2, *zcr_el1, *zcr_el2;
    struct qemu_plugin_register *smcr_el1, *smcr_el2;
} a64;

/*
 * The kernel address of physical address 0 in the linear map, learnt from
 * the first state operation on a linear-map buffer (atomic; 0: not yet):
 * nVHE hypervisor code names the same buffers by its own addresses.
 */
static uint64_t a64_linear_offset;

static unsigned a64_el(struct vcpu_state *vs)
{
    return (reg_read_u64(vs, a64.cpsr) >> 2) & 3;
}

static uint64_t a64_xreg(struct vcpu_state *vs, unsigned r)
{
    return r < 31 ? reg_read_u64(vs, a64.x[r]) : 0;     /* 31: XZR */
}

/* The hash of 16-byte vector registers (V0-V31 order) and of FPSR/FPCR. */
static uint64_t a64_v_hash(unsigned n, const uint8_t *v16)
{
    uint64_t lo, hi;

    memcpy(&lo, v16, 8);
    memcpy(&hi, v16 + 8, 8);
    return ftr_a64_word_hash(2 * n, lo) + ftr_a64_word_hash(2 * n + 1, hi);
}

static uint64_t a64_fpsr_fpcr_hash(uint32_t fpsr, uint32_t fpcr)
{
    return ftr_a64_word_hash(FTR_A64_WORD_FPSR_FPCR, fpsr | (uint64_t)fpcr << 32);
}

/* Z0-Z31 (their low 128 bits), FPSR and FPCR, register by register. */
static uint64_t a64_regs_hash(struct vcpu_state *vs, bool *ok)
{
    uint8_t v[16];
    uint32_t fpsr = 0, fpcr = 0;
    uint64_t h = 0;

    *ok = true;
    for (unsigned n = 0; n < 32; n++) {
        if (!reg_read(vs, a64.z[n], v, sizeof(v))) {
            *ok = false;
            return 0;
        }
        h += a64_v_hash(n, v);
    }
    *ok = reg_read(vs, a64.fpsr, (uint8_t *)&fpsr, 4) &&
          reg_read(vs, a64.fpcr, (uint8_t *)&fpcr, 4);
    return h + a64_fpsr_fpcr_hash(fpsr, fpcr);
}

/* The longest SVE vector the hash covers, in bytes (the architecture's maximum). */
#define A64_SVE_VL_MAX          256

/*
 * Whether EL0 may use SVE now, as the host's user mode will run: its
 * CPACR_EL1.ZEN (bits 17:16, 0b11: no trap), which a VHE kernel at EL2
 * (HCR_EL2.E2H) reaches as CPTR_EL2 in CPACR's layout.
 */
static bool a64_el0_sve_enabled(struct vcpu_state *vs)
{
    unsigned el = (reg_read_u64(vs, a64.cpsr) >> 2) & 3;
    uint64_t cpacr = el == 2 && (reg_read_u64(vs, a64.hcr_el2) & HCR_E2H)
        ? reg_read_u64(vs, a64.cptr_el2) : reg_read_u64(vs, a64.cpacr_el1);

    return ((cpacr >> 16) & 3) == 3;
}

/* The bytes [from, len) of an SVE register's image, as hash words base + k. */
static uint64_t a64_sve_bytes_hash(const uint8_t *bytes, size_t from, size_t len,
                                   uint32_t base)
{
    uint64_t h = 0;

    for (size_t k = from / 8; k < (len + 7) / 8; k++) {
        uint64_t w = 0;

        memcpy(&w, bytes + 8 * k, MIN((size_t)8, len - 8 * k));
        h += ftr_a64_word_hash(base + (uint32_t)k, w);
    }
    return h;
}

/* The bytes [from, len) of register reg, as hash words base + k. */
static bool a64_sve_reg_hash(struct vcpu_state *vs, struct qemu_plugin_register *reg,
                             size_t from, size_t len, uint32_t base, uint64_t *h)
{
    uint8_t bytes[A64_SVE_VL_MAX] = { 0 };

    if (!reg_read(vs, reg, bytes, len)) {
        return false;
    }
    *h += a64_sve_bytes_hash(bytes, from, len, base);
    return true;
}

/*
 * A user boundary (entry or return) of the host, while EL0 may use SVE:
 * the SVE registers beyond V0-V31 at the current vector length (Z0-Z31
 * above their low 128 bits, P0-P15, FFR) into regs_after_hash, the length
 * in bytes into index (docs/trace-format.md, "arm64"); an entry's value
 * gets the ESR of its exception (0: an interrupt), so that a system call,
 * which discards this state by the ABI (fp_user_discard()), is told apart.
 */
static void a64_boundary_state(struct vcpu_state *vs, struct ftr_event *ev)
{
    unsigned vl;
    uint64_t h = 0;
    bool ok = true;

    if (ev->kind == FTR_KIND_USER_ENTRY) {
        ev->value = vs->a64.entry_esr;
    }
    if (!a64.vg || !a64.ffr || !a64_el0_sve_enabled(vs)) {
        return;
    }
    vl = 8 * reg_read_u64(vs, a64.vg);
    if (vl < 16 || vl > A64_SVE_VL_MAX) {
        return;
    }
    for (unsigned n = 0; ok && n < 32; n++) {
        ok = a64_sve_reg_hash(vs, a64.z[n], 16, vl, FTR_A64_WORD_Z + 32 * n, &h);
    }
    for (unsigned n = 0; ok && n < 16; n++) {
        ok = a64_sve_reg_hash(vs, a64.p[n], 0, vl / 8, FTR_A64_WORD_P + 4 * n, &h);
    }
    if (ok && a64_sve_reg_hash(vs, a64.ffr, 0, vl / 8, FTR_A64_WORD_P + 64, &h)) {
        ev->regs_after_hash = h;
        ev->index = vl;
        ev->flags |= FTR_FLAG_SVE_VALID;
    }
}

/* ---- arm64 signal frames ---------------------------------------------- */

/*
 * V0-V31 at vregs, FPSR and FPCR at their addresses, hashed as the
 * registers are, into f (f->fpsimd: vregs).
 */
static void a64_frame_fpsimd_at(struct vcpu_state *vs, uint64_t vregs, uint64_t fpsr_at,
                                uint64_t fpcr_at, struct a64_frame *f)
{
    uint8_t v[512];
    uint32_t fpsr, fpcr;
    uint64_t h = 0;

    if (!mem_read(vs, vregs, v, sizeof(v)) || !mem_read(vs, fpsr_at, &fpsr, 4) ||
        !mem_read(vs, fpcr_at, &fpcr, 4)) {
        return;
    }
    for (unsigned n = 0; n < 32; n++) {
        h += a64_v_hash(n, v + 16 * n);
    }
    f->fpsr_fpcr_hash = a64_fpsr_fpcr_hash(fpsr, fpcr);
    f->v_hash = h + f->fpsr_fpcr_hash;
    f->fpsimd = vregs;
}

/* A struct fpsimd_context at addr: its head, fpsr, fpcr, then vregs[32]. */
static void a64_frame_fpsimd(struct vcpu_state *vs, uint64_t addr, struct a64_frame *f)
{
    a64_frame_fpsimd_at(vs, addr + 16, addr + 8, addr + 12, f);
    if (f->fpsimd) {
        f->fpsimd = addr;
    }
}

/*
 * A struct sve_context at addr, size bytes: with register data (size past
 * the 16-byte head), Z0-Z31 above their low 128 bits, P0-P15 and FFR at
 * its vl, laid out as SVE_SIG_ZREG_OFFSET() and the rest say: each Z vl
 * bytes, then each P vl / 8 bytes, then FFR.
 */
static void a64_frame_sve(struct vcpu_state *vs, uint64_t addr, uint32_t size,
                          struct a64_frame *f)
{
    uint16_t head[2];
    unsigned vl, pl;
    uint64_t h = 0;
    g_autofree uint8_t *regs = NULL;

    if (size <= A64_SVE_CONTEXT || !mem_read(vs, addr + 8, head, sizeof(head))) {
        return;
    }
    vl = head[0];
    pl = vl / 8;
    if (vl < 16 || vl > A64_SVE_VL_MAX || vl % 16 ||
        size < A64_SVE_CONTEXT + 32 * vl + 17 * pl) {
        return;
    }
    regs = g_malloc(32 * vl + 17 * pl);
    if (!mem_read(vs, addr + A64_SVE_CONTEXT, regs, 32 * vl + 17 * pl)) {
        return;
    }
    f->sve_v_hash = 0;
    for (unsigned n = 0; n < 32; n++) {
        h += a64_sve_bytes_hash(regs + n * vl, 16, vl, FTR_A64_WORD_Z + 32 * n);
        f->sve_v_hash += a64_v_hash(n, regs + n * vl);
    }
    for (unsigned n = 0; n <= 16; n++) {        /* P0-P15, then FFR */
        h += a64_sve_bytes_hash(regs + 32 * vl + n * pl, 0, pl, FTR_A64_WORD_P + 4 * n);
    }
    f->sve_hash = h;
    f->sve = vl | (uint32_t)head[1] << 16;
}

/*
 * The FP/SIMD and SVE records of the signal frame records list at addr,
 * walked as parse_user_sigframe() (arch/arm64/kernel/signal.c) walks it:
 * head by head to the terminator, then into an extra_context's space. Read
 * in user mode, or as user mode would (see struct a64_vcpu).
 */
static void a64_frame_read(struct vcpu_state *vs, uint64_t addr, struct a64_frame *f)
{
    uint64_t end = addr + A64_SIGFRAME_RESERVED, extra = 0;
    uint32_t extra_size = 0;

    memset(f, 0, sizeof(*f));
    f->task = vs->a64.host_task;
    for (unsigned n = 0; n < A64_FRAME_RECORDS_MAX; n++) {
        uint32_t head[2];

        if (end - addr < sizeof(head) || !mem_read(vs, addr, head, sizeof(head))) {
            return;
        }
        if (!head[0]) {
            if (!extra) {
                return;
            }
            addr = extra;
            end = extra + extra_size;
            extra = 0;
            continue;
        }
        if (head[1] < sizeof(head) || head[1] > end - addr) {
            return;
        }
        switch (head[0]) {
        case A64_FPSIMD_MAGIC:
            if (head[1] >= A64_FPSIMD_CONTEXT) {
                a64_frame_fpsimd(vs, addr, f);
            }
            break;
        case A64_SVE_MAGIC:
            a64_frame_sve(vs, addr, head[1], f);
            break;
        case A64_EXTRA_MAGIC: {
            struct { uint64_t datap; uint32_t size; } ex;

            if (head[1] >= 8 + 12 && mem_read(vs, addr + 8, &ex.datap, 8) &&
                mem_read(vs, addr + 16, &ex.size, 4) && ex.size <= A64_FRAME_EXTRA_MAX) {
                extra = ex.datap;
                extra_size = ex.size;
            }
            break;
        }
        }
        addr += head[1];
    }
}

/* A frame's records into an event's memory fields (docs/trace-format.md, "arm64"). */
static void a64_frame_to_event(const struct a64_frame *f, struct ftr_event *ev)
{
    if (!f->fpsimd) {
        return;
    }
    ev->mem_hash = f->v_hash;
    ev->mem_bytes = A64_FPSIMD_CONTEXT;
    ev->flags |= FTR_FLAG_MEM_VALID;
    if (f->sve) {
        /*
         * Z0-Z31's V part with the FP/SIMD record's FPSR and FPCR, as mem_hash has them.
         */
        ev->mem_legacy_hash = f->sve_v_hash + f->fpsr_fpcr_hash;
        ev->mem_ext_hash = f->sve_hash;
        ev->mem_features = f->sve;
        ev->flags |= FTR_FLAG_SVE_VALID;
    }
}

/*
 * ptrace(PTRACE_SETREGSET, pid, NT_PRFPREG, iov): the struct
 * user_fpsimd_state at iov->iov_base (V0-V31, FPSR, FPCR: 520 bytes and
 * padding) that fpr_set() copies whole into the tracee's state, when the
 * write covers all of it.
 */
static void a64_regset_read(struct vcpu_state *vs, uint64_t iov, struct a64_frame *f)
{
    uint64_t vec[2];            /* struct iovec: iov_base, iov_len */

    memset(f, 0, sizeof(*f));
    if (!mem_read(vs, iov, vec, sizeof(vec)) || vec[1] < A64_FPSIMD_BYTES) {
        return;
    }
    f->task = vs->a64.host_task;
    a64_frame_fpsimd_at(vs, vec[0], vec[0] + 512, vec[0] + 516, f);
}

/*
 * An SVC in AArch64 user mode, read now, while user mode can: if it is
 * rt_sigreturn (x8), the frame it is about to load, at the user stack
 * pointer (sys_rt_sigreturn() takes the frame at regs->sp); if it is a
 * PTRACE_SETREGSET of NT_PRFPREG, the image it writes.
 */
static void a64_svc_exec(unsigned int vcpu_index, void *udata G_GNUC_UNUSED)
{
    struct vcpu_state *vs = vcpu_get(vcpu_index);
    uint64_t nr = a64_xreg(vs, 8);

    if (nr == A64_NR_RT_SIGRETURN) {
        a64_frame_read(vs, reg_read_u64(vs, a64.sp) + A64_SIGFRAME_RECORDS,
                       &vs->a64.sigreturn_frame);
    } else if (nr == A64_NR_PTRACE && a64_xreg(vs, 0) == A64_PTRACE_SETREGSET &&
               a64_xreg(vs, 2) == A64_NT_PRFPREG) {
        a64_regset_read(vs, a64_xreg(vs, 3), &vs->a64.regset_image);
    }
}

/*
 * The first user-mode block after a return that delivered a signal (the
 * handler's, udata its address): the frame setup_return() left at the
 * stack pointer, its records as setup_sigframe() wrote them, as a
 * SIGFRAME event (addr: the FP/SIMD record, else the records' start).
 */
static void a64_frame_exec(unsigned int vcpu_index, void *udata)
{
    struct vcpu_state *vs = vcpu_get(vcpu_index);
    struct a64_frame frame;
    struct ftr_event ev;
    uint64_t records;

    vs->inl.user_block_due = 0;
    if (!vs->a64.frame_task || vs->a64.frame_task != vs->a64.host_task) {
        vs->a64.frame_task = 0;
        return;
    }
    vs->a64.frame_task = 0;
    records = reg_read_u64(vs, a64.sp) + A64_SIGFRAME_RECORDS;
    a64_frame_read(vs, records, &frame);
    event_begin(vs, vcpu_index, &ev, FTR_KIND_SIGFRAME, (uint64_t)(uintptr_t)udata, 0);
    ev.addr = frame.fpsimd ? frame.fpsimd : records;
    a64_frame_to_event(&frame, &ev);
    vcpu_commit_event(vs, vcpu_index, &ev);
}

/*
 * Signal delivery (fpsimd_signal_preserve_current_state(), called by
 * setup_rt_frame() alone): its frame is read at the handler's start; and
 * rt_sigreturn's frame, read at its SVC, into the sigreturn probe's memory
 * fields (restore_fpsimd_context() and restore_sve_fpsimd_context() both
 * load V0-V31, FPSR and FPCR from its FP/SIMD record; the latter the SVE
 * registers from its SVE record).
 */
static void a64_probe_state(struct vcpu_state *vs, uint32_t probe,
                            const uint64_t args[4] G_GNUC_UNUSED, struct ftr_event *ev)
{
    const struct a64_frame *f = &vs->a64.sigreturn_frame;

    switch (probe) {
    case FTR_PROBE_SIGFRAME_SAVE:
        vs->a64.frame_task = vs->a64.host_task;
        break;
    case FTR_PROBE_SIGRETURN:
        if (f->task && f->task == vs->a64.host_task) {
            a64_frame_to_event(f, ev);
        }
        break;
    case FTR_PROBE_REGSET_SET:
        /* fpr_set(); sve_set() and the others take other notes, never read. */
        if (vs->a64.regset_image.task && vs->a64.regset_image.task == vs->a64.host_task) {
            a64_frame_to_event(&vs->a64.regset_image, ev);
            ev->mem_bytes = A64_FPSIMD_BYTES;
        }
        break;
    }
}

/*
 * The current task is what the kernel last wrote to SP_EL0 while the host
 * ran (vcpu_state.a64.host_task, a64_sp_el0_exec()): kernel_entry sets it from
 * __entry_task at every entry from EL0 and cpu_switch_to() at every switch
 * (arch/arm64/kernel/entry.S). Reading SP_EL0 would not do: it holds the
 * user stack pointer from kernel_exit's `msr sp_el0` to the next entry, and
 * KVM's world switch loads the guest's value into it.
 */
static uint64_t a64_current_ptr(struct vcpu_state *vs)
{
    return vs->a64.host_task;
}

static uint64_t a64_current_task(struct vcpu_state *vs, unsigned int vcpu_index,
                                 unsigned pl G_GNUC_UNUSED, bool use_cached G_GNUC_UNUSED,
                                 uint64_t seq, bool *valid)
{
    uint64_t task = vs->a64.host_task;

    *valid = task != 0;
    if (task) {
        task_announce(vs, vcpu_index, task, seq);
    }
    return task;
}


/* `msr sp_el0, xN`: the host kernel names its current task (see a64_current_ptr()). */
static void a64_sp_el0_exec(unsigned int vcpu_index, void *udata)
{
    struct vcpu_state *vs = vcpu_get(vcpu_index);
    uint64_t v = a64_xreg(vs, (uintptr_t)udata);

    /*
     * A user stack pointer (kernel_exit) or the guest's value (HCR_EL2.VM: KVM's
     * switch).
     */
    if (v < A64_LINEAR_START || (reg_read_u64(vs, a64.hcr_el2) & HCR_VM)) {
        return;
    }
    vs->a64.host_task = v;
}

/*
 * The pending save or load is done: hash the FP/SIMD content of its buffer
 * (what a save stored, or what a load read) and commit it. fpsr/fpcr of an
 * SVE save are stored after the Z and P registers, behind a branch: the
 * registers still hold them.
 */
/*
 * The FP/SIMD content hash of a buffer: FPSIMD (struct user_fpsimd_state:
 * V0-V31, FPSR, FPCR), or SVE (Z0-Z31 and P0-P15 at vector length vl, as
 * sve_save lays them out; FPSR and FPCR live elsewhere and are given).
 */
static bool a64_buffer_hash(struct vcpu_state *vs, bool sve, uint64_t va, unsigned vl,
                            const uint32_t *sve_fpsr_fpcr, uint64_t *h, uint64_t *ext,
                            uint32_t *bytes)
{
    g_autofree uint8_t *b = NULL;
    uint32_t fpsr_fpcr[2];
    size_t len;

    *h = *ext = 0;
    if (!sve) {
        uint8_t v[A64_FPSIMD_BYTES];
        if (!mem_read(vs, va, v, sizeof(v))) {
            return false;
        }
        for (unsigned n = 0; n < 32; n++) {
            *h += a64_v_hash(n, v + 16 * n);
        }
        memcpy(fpsr_fpcr, v + 512, 8);
        *h += a64_fpsr_fpcr_hash(fpsr_fpcr[0], fpsr_fpcr[1]);
        *bytes = A64_FPSIMD_BYTES;
        return true;
    }
    if (vl < 16 || vl > A64_VL_MAX || vl % 16) {
        return false;
    }
    len = 32 * vl + 16 * (vl / 8);
    b = g_malloc(len);
    if (!mem_read(vs, va, b, len)) {
        return false;
    }
    for (unsigned n = 0; n < 32; n++) {
        *h += a64_v_hash(n, b + vl * n);
        for (unsigned w = 2; w < vl / 8; w++) {
            uint64_t v;
            memcpy(&v, b + vl * n + 8 * w, 8);
            *ext += ftr_a64_word_hash(A64_WORD_EXT + 32 * n + w, v);
        }
    }
    /* P0-P15, vl / 8 bytes each: 2 * vl bytes, hashed as one run of words. */
    for (unsigned w = 0; w < 2 * vl / 8; w++) {
        uint64_t v;
        memcpy(&v, b + 32 * vl + 8 * w, 8);
        *ext += ftr_a64_word_hash(A64_WORD_EXT + 1024 + w, v);
    }
    *h += a64_fpsr_fpcr_hash(sve_fpsr_fpcr[0], sve_fpsr_fpcr[1]);
    *bytes = len + 8;
    return true;
}

/*
 * A ZA save or load is done: hash its buffer, SVL rows of SVL bytes from
 * where the sequence began, then ZT0 where the sequence moved it. The
 * registers still hold SVL and the ZT0 count.
 */
static void a64_za_finish(struct vcpu_state *vs, struct ftr_event *ev)
{
    const struct fpu_insn *fi = vs->a64.za_insn;
    uint64_t svl = a64_xreg(vs, fi->a64.vl_reg);
    bool zt0 = fi->a64.zt_reg != A64_ZT_NONE &&
               (uint32_t)a64_xreg(vs, fi->a64.zt_reg) != 0;
    size_t za_bytes, len;
    g_autofree uint8_t *b = NULL;

    vs->a64.za_insn = NULL;
    if (svl < 16 || svl > A64_VL_MAX || svl % 16) {
        return;
    }
    za_bytes = svl * svl;
    len = za_bytes + (zt0 ? A64_ZT0_BYTES : 0);
    b = g_malloc(len);
    if (!mem_read(vs, vs->a64.va, b, len)) {
        return;
    }
    ev->index = svl;
    ev->value = zt0 ? 4 | 8 : 4;        /* ZA, and ZT0 */
    for (size_t w = 0; w < len / 8; w++) {
        uint64_t v;
        memcpy(&v, b + 8 * w, 8);
        uint32_t word = w < za_bytes / 8 ? A64_WORD_ZA + w
                                         : A64_WORD_ZT0 + w - za_bytes / 8;

        ev->mem_hash += ftr_a64_word_hash(word, v);
    }
    ev->mem_bytes = len;
    ev->flags |= FTR_FLAG_MEM_VALID;
}

/*
 * The pending save or load is done: a save's content hash comes from what
 * its buffer holds now (FPSR and FPCR of an SVE save, stored after the Z
 * and P registers behind a branch, from the registers, which still hold
 * them); then the event is committed.
 */
static void a64_finish_pending(struct vcpu_state *vs, unsigned int vcpu_index)
{
    struct ftr_event *ev = &vs->pending_event;
    bool sve = ev->kind == FTR_KIND_SVE_SAVE;
    uint32_t regs[2] = { 0, 0 };

    if (!vs->pending) {
        return;
    }
    vs->pending = false;
    if (vs->a64.za_insn) {
        a64_za_finish(vs, ev);
        vcpu_commit_event(vs, vcpu_index, ev);
        return;
    }
    if (vs->a64.save &&
        (!sve || (reg_read(vs, a64.fpsr, (uint8_t *)&regs[0], 4) &&
                  reg_read(vs, a64.fpcr, (uint8_t *)&regs[1], 4))) &&
        a64_buffer_hash(vs, sve, vs->a64.va, ev->index, regs, &ev->mem_hash,
                        &ev->mem_ext_hash, &ev->mem_bytes)) {
        ev->mem_legacy_hash = ev->mem_hash;
        ev->flags |= FTR_FLAG_MEM_VALID;
        if (!(ev->flags & FTR_FLAG_REGS_VALID)) {
            /* regs=derive: a save stores the registers as they are. */
            ev->regs_hash = ev->mem_hash;
            ev->flags |= FTR_FLAG_REGS_VALID;
        }
        vs->last_regs = ev->regs_hash;
        vs->last_regs_ok = !vs->inl.regs_dirty;
    }
    vcpu_commit_after_entry(vs, vcpu_index, ev);
}

/*
 * The first instruction of a save or load sequence (a64_seq_at()): its
 * buffer, and for a load the content it is about to read. A save is
 * hashed once its stores are done (a64_seq_end_exec()), from memory.
 */
static void a64_state_op_exec(unsigned int vcpu_index, void *udata)
{
    const struct fpu_insn *fi = udata;
    struct vcpu_state *vs = vcpu_get(vcpu_index);
    struct ftr_event ev;
    bool sve = fi->kind == FTR_KIND_SVE_SAVE || fi->kind == FTR_KIND_SVE_LOAD;
    unsigned vl = sve ? 8 * reg_read_u64(vs, a64.vg) : 16;
    uint64_t base = a64_xreg(vs, fi->a64.reg), regs_hash = 0;
    bool ok = false;

    a64_finish_pending(vs, vcpu_index);
    /* Before a load, or with regs=read, the registers as they are now. */
    if (fi->is_restore && vs->last_regs_ok && !vs->inl.regs_dirty) {
        regs_hash = vs->last_regs;
        ok = true;
    } else if (fi->is_restore || !cfg.derive_regs) {
        regs_hash = a64_regs_hash(vs, &ok);
    }
    if (vs->inl.entry_pending) {
        /*
         * No kernel FP/SIMD code ran since the entry (it would have written
         * the entry already): a save stores the registers the task entered
         * with, and the entry takes its hash (a64_finish_pending()).
         */
        bool defer = fi->is_save && cfg.derive_regs;
        vcpu_materialize_entry(vs, vcpu_index, ok ? &regs_hash : NULL, defer);
    }
    event_begin(vs, vcpu_index, &ev, fi->kind, fi->vaddr, fi->a64.el);
    /* sve_save/sve_load address Z0 at -34 vector lengths from their base register. */
    vs->a64.va = sve ? base - 34ull * vl : base;
    ev.addr = vs->a64.va;
    ev.index = vl;
    ev.value = sve ? 3 : 1;     /* FP/SIMD, and the SVE extension */
    ev.xcr0 = 3;
    if (ok) {
        ev.regs_hash = regs_hash;
        ev.flags |= FTR_FLAG_REGS_VALID;
    }
    vs->a64.save = fi->is_save;
    vs->a64.hyp = fi->a64.hyp;
    vs->a64.placed = false;
    if (fi->is_save) {
        uint64_t ext;
        uint32_t bytes;
        /*
         * What it held before the first save to it (an SVE buffer's FPSR/FPCR are
         * elsewhere).
         */
        if (!sve && buffer_first_save(ev.addr) &&
            a64_buffer_hash(vs, false, ev.addr, 0, NULL, &ev.aux, &ext, &bytes)) {
            ev.flags |= FTR_FLAG_PRIOR_VALID;
        }
        vs->inl.regs_dirty = 0;
    } else {
        uint32_t fpsr_fpcr[2];
        /* sve_load takes FPSR and FPCR from where its second argument points. */
        if ((!sve || mem_read(vs, a64_xreg(vs, 1), fpsr_fpcr, sizeof(fpsr_fpcr))) &&
            a64_buffer_hash(vs, sve, ev.addr, vl, fpsr_fpcr, &ev.mem_hash,
                            &ev.mem_ext_hash, &ev.mem_bytes)) {
            ev.mem_legacy_hash = ev.mem_hash;
            ev.flags |= FTR_FLAG_MEM_VALID;
            /* What a load reads is what the registers hold after it. */
            ev.regs_after_hash = ev.mem_hash;
            ev.flags |= FTR_FLAG_REGS_AFTER_VALID;
        }
        vs->last_regs = ev.regs_after_hash;
        /* until its last instruction (a64_seq_end_exec()) */
        vs->last_regs_ok = false;
    }
    vs->pending_event = ev;
    vs->pending = true;
}

/*
 * The first instruction of a ZA save or load (RDSVL): its buffer. The ZA
 * array and ZT0 are state of their own, outside the register hash; the
 * content is hashed when the sequence is done (a64_za_finish()).
 */
static void a64_za_op_exec(unsigned int vcpu_index, void *udata)
{
    const struct fpu_insn *fi = udata;
    struct vcpu_state *vs = vcpu_get(vcpu_index);
    struct ftr_event ev;

    a64_finish_pending(vs, vcpu_index);
    if (vs->inl.entry_pending) {
        bool ok;
        uint64_t regs_hash = a64_regs_hash(vs, &ok);
        vcpu_materialize_entry(vs, vcpu_index, ok ? &regs_hash : NULL, false);
    }
    event_begin(vs, vcpu_index, &ev, fi->kind, fi->vaddr, fi->a64.el);
    ev.addr = vs->a64.va = a64_xreg(vs, fi->a64.reg);
    vs->a64.save = fi->kind == FTR_KIND_SME_SAVE;
    vs->a64.hyp = fi->a64.hyp;
    vs->a64.za_insn = fi;
    vs->pending_event = ev;
    vs->pending = true;
}

/*
 * The first memory access of a save or load sequence: its physical address.
 * nVHE hypervisor code (EL2 without HCR_EL2.E2H) names buffers by its own
 * mapping of the kernel's linear map; they are given the kernel's address,
 * learnt from the linear-map buffers the kernel itself saves and loads.
 */
static void a64_state_mem(unsigned int vcpu_index, qemu_plugin_meminfo_t info,
                          uint64_t vaddr, void *udata G_GNUC_UNUSED)
{
    struct vcpu_state *vs = vcpu_get(vcpu_index);
    struct ftr_event *ev = &vs->pending_event;
    struct qemu_plugin_hwaddr *hw = qemu_plugin_get_hwaddr(info, vaddr);
    uint64_t phys, off, linear;

    if (!vs->pending || vs->a64.placed || !hw || qemu_plugin_hwaddr_is_io(hw)) {
        return;
    }
    vs->a64.placed = true;
    off = vaddr - vs->a64.va;
    phys = qemu_plugin_hwaddr_phys_addr(hw) - off;
    if (vs->a64.hyp) {
        linear = __atomic_load_n(&a64_linear_offset, __ATOMIC_RELAXED);
        if (linear) {
            ev->addr = phys + linear;
            ev->flags |= FTR_FLAG_ADDR_HYP;
        }
    } else if (ev->addr >= A64_LINEAR_START && ev->addr < A64_LINEAR_END) {
        __atomic_store_n(&a64_linear_offset, ev->addr - phys, __ATOMIC_RELAXED);
    }
}

/*
 * The instruction after a sequence: a save's stores are all done; after a
 * load the registers hold what it read.
 */
static void a64_seq_end_exec(unsigned int vcpu_index, void *udata G_GNUC_UNUSED)
{
    struct vcpu_state *vs = vcpu_get(vcpu_index);

    if (!vs->pending) {
        return;
    }
    if (!vs->a64.save && !vs->a64.za_insn) {
        vs->inl.regs_dirty = 0;
        vs->last_regs_ok = (vs->pending_event.flags & FTR_FLAG_REGS_AFTER_VALID) != 0;
    }
    a64_finish_pending(vs, vcpu_index);
}

/* A write of an FP control register: which one it reaches, and old and new value. */
static void a64_msr_exec(unsigned int vcpu_index, void *udata)
{
    const struct fpu_insn *fi = udata;
    struct vcpu_state *vs = vcpu_get(vcpu_index);
    unsigned named = fi->a64.sysreg, el = fi->a64.el, reached = named;
    uint64_t hcr = reg_read_u64(vs, a64.hcr_el2), old, new;
    struct qemu_plugin_register *reg;
    struct ftr_event ev;
    uint8_t kind;

    /* With HCR_EL2.E2H, EL2 reaches the EL2 register by the EL1 name, EL1's by EL12. */
    if (el == 2 && (hcr & HCR_E2H)) {
        switch (named) {
        case SYSREG_CPACR_EL1:
            reached = SYSREG_CPTR_EL2;
            break;
        case SYSREG_ZCR_EL1:
            reached = SYSREG_ZCR_EL2;
            break;
        case SYSREG_SMCR_EL1:
            reached = SYSREG_SMCR_EL2;
            break;
        case SYSREG_CPACR_EL12:
            reached = SYSREG_CPACR_EL1;
            break;
        case SYSREG_ZCR_EL12:
            reached = SYSREG_ZCR_EL1;
            break;
        case SYSREG_SMCR_EL12:
            reached = SYSREG_SMCR_EL1;
            break;
        }
    }
    switch (reached) {
    case SYSREG_CPACR_EL1:
        kind = FTR_KIND_CPACR_WRITE;
        reg = a64.cpacr_el1;
        break;
    case SYSREG_CPTR_EL2:
        kind = FTR_KIND_CPTR_WRITE;
        reg = a64.cptr_el2;
        break;
    case SYSREG_ZCR_EL1:
        kind = FTR_KIND_ZCR_WRITE;
        reg = a64.zcr_el1;
        break;
    case SYSREG_ZCR_EL2:
        kind = FTR_KIND_ZCR_WRITE;
        reg = a64.zcr_el2;
        break;
    case SYSREG_SMCR_EL1:
        kind = FTR_KIND_SMCR_WRITE;
        reg = a64.smcr_el1;
        break;
    case SYSREG_SMCR_EL2:
        kind = FTR_KIND_SMCR_WRITE;
        reg = a64.smcr_el2;
        break;
    case SYSREG_SVCR:
        kind = FTR_KIND_SVCR_WRITE;
        reg = a64.svcr;
        break;
    default: /* an EL12 name without E2H: UNDEFINED, it traps */
        return;
    }
    old = reg_read_u64(vs, reg);
    if (fi->a64.imm) {
        /* MSR SVCRSM/SVCRZA/SVCRSMZA, #imm (SMSTART, SMSTOP): CRm bit 0 is the value. */
        uint64_t bits = (fi->a64.crm >> 1) & 3, set = fi->a64.crm & 1;
        new = set ? old | bits : old & ~bits;
    } else {
        new = a64_xreg(vs, fi->a64.reg);
    }
    a64_finish_pending(vs, vcpu_index);
    event_begin(vs, vcpu_index, &ev, kind, fi->vaddr, el);
    if ((hcr & HCR_VM) && !(hcr & HCR_TGE) && el < 2) {
        ev.flags |= FTR_FLAG_L2;
    }
    ev.index = named | reached << 16;
    ev.value = new;
    ev.aux = old;
    vcpu_commit_event(vs, vcpu_index, &ev);
}

/* An identity for the guest vCPU that runs: stage-2 base and VMID, vCPU affinity. */
static uint64_t a64_guest_id(struct vcpu_state *vs)
{
    return (reg_read_u64(vs, a64.vttbr_el2) & ~0xfffull) |
           (reg_read_u64(vs, a64.vmpidr_el2) & 0xff) << 1 | 1;
}

static void a64_vm_exit(struct vcpu_state *vs, unsigned int vcpu_index, uint64_t pc,
                        uint64_t esr, unsigned vector)
{
    struct ftr_event ev;

    event_begin(vs, vcpu_index, &ev, FTR_KIND_VM_EXIT, pc, 2);
    vs->in_l2 = false;
    ev.flags &= ~FTR_FLAG_L2;
    if (vs->a64.guest_fp_trapped) {
        ev.flags |= FTR_FLAG_GUEST_FP_TRAPPED;
    }
    ev.addr = vs->vmcb;
    ev.value = esr;
    ev.index = vector;
    event_read_regs(vs, &ev, true);
    vcpu_commit_event(vs, vcpu_index, &ev);
}

/*
 * An exception vector's first instruction (fi->a64: its EL and offset): an
 * FP/SIMD, SVE or SME access trap (a synchronous exception with ESR_ELx.EC
 * 0x07, 0x19 or 0x1d), a VM exit (to EL2 from the guest: HCR_EL2.VM
 * without TGE), or an entry from the host's user mode (to EL1, or to EL2
 * with HCR_EL2.TGE, i.e. VHE).
 */
static void a64_vector_exec(unsigned int vcpu_index, void *udata)
{
    const struct fpu_insn *fi = udata;
    struct vcpu_state *vs = vcpu_get(vcpu_index);
    unsigned offset = fi->a64.vector, el = fi->a64.el, ec = 0;
    bool sync = ((offset >> 7) & 3) == 0, from_lower = offset >= 0x400;
    uint64_t hcr = reg_read_u64(vs, a64.hcr_el2), esr = 0;
    bool guest_regime = (hcr & HCR_VM) && !(hcr & HCR_TGE);
    bool from_guest = guest_regime && (el < 2 || from_lower);

    /* The ZA loop branches back per row: an interrupt can come in between. */
    if (!vs->a64.za_insn) {
        a64_finish_pending(vs, vcpu_index);
    }
    if (sync) {
        esr = reg_read_u64(vs, el == 2 ? a64.esr_el2 : a64.esr_el1);
        ec = (esr >> 26) & 0x3f;
    }
    if (el == 2 && from_lower && guest_regime) {
        a64_vm_exit(vs, vcpu_index, fi->vaddr, esr, offset);
    }
    if (ec == ESR_EC_FP || ec == ESR_EC_SVE || ec == ESR_EC_SME) {
        struct ftr_event ev;
        event_begin(vs, vcpu_index, &ev, FTR_KIND_FP_TRAP,
                    reg_read_u64(vs, el == 2 ? a64.elr_el2 : a64.elr_el1), el);
        if (from_guest) {
            ev.flags |= FTR_FLAG_L2;
            ev.addr = vs->vmcb;
        }
        ev.value = esr;
        ev.index = offset;
        vcpu_commit_event(vs, vcpu_index, &ev);
    }
    if (from_lower && !guest_regime && (el == 1 || (hcr & HCR_TGE)) && vs->ub.in_user) {
        /* An entry from the host's user mode (as x86_swapgs_exec() on x86). */
        vs->ub.in_user = false;
        vs->last_regs_ok = false;
        vs->ub.entry_seen = true;
        vs->ub.entry_materialized = false;
        vs->ub.entry_pc = reg_read_u64(vs, el == 2 ? a64.elr_el2 : a64.elr_el1);
        vs->ub.entry_pl = el;
        vs->ub.entry_icount = vs->inl.insns - vs->inl.insn_tail;
        vs->ub.entry_task = vs->a64.host_task;
        vs->a64.entry_esr = esr;
        vs->inl.entry_pending = 1;
    }
}

/*
 * ERET (fi->a64.el: the EL it runs at): into the guest (from EL2 with HCR_EL2.VM
 * and not TGE, to EL1 or EL0), or back to the host's user mode.
 */
static void a64_eret_exec(unsigned int vcpu_index, void *udata)
{
    const struct fpu_insn *fi = udata;
    struct vcpu_state *vs = vcpu_get(vcpu_index);
    unsigned el = fi->a64.el;
    uint64_t hcr = reg_read_u64(vs, a64.hcr_el2);
    bool guest_regime = (hcr & HCR_VM) && !(hcr & HCR_TGE);
    uint64_t spsr, target;

    if (el == 1 && guest_regime) {
        return;                 /* the guest's own return */
    }
    spsr = reg_read_u64(vs, el == 2 ? a64.spsr_el2 : a64.spsr_el1);
    target = (spsr >> 2) & 3;
    if (el == 2 && guest_regime && target < 2) {
        struct ftr_event ev;
        a64_finish_pending(vs, vcpu_index);
        event_begin(vs, vcpu_index, &ev, FTR_KIND_VM_ENTRY, fi->vaddr, 2);
        ev.addr = vs->vmcb = a64_guest_id(vs);
        /*
         * Whether the guest may use the FP/SIMD registers, or traps to EL2
         * first (KVM's lazy switch: __activate_traps() clears FPEN unless
         * guest_owns_fp_regs()). With HCR_EL2.E2H, CPTR_EL2 has CPACR's
         * layout (FPEN, bits 21:20, 0b11: no trap); without, TFP (bit 10).
         */
        {
            uint64_t cptr = reg_read_u64(vs, a64.cptr_el2);
            vs->a64.guest_fp_trapped = (hcr & HCR_E2H) ? ((cptr >> 20) & 3) != 3
                                                   : (cptr >> 10) & 1;
        }
        if (vs->a64.guest_fp_trapped) {
            ev.flags |= FTR_FLAG_GUEST_FP_TRAPPED;
        }
        /* The registers the guest starts with: its own unless trapped. */
        event_read_regs(vs, &ev, false);
        vs->last_regs_ok = false;
        vcpu_commit_event(vs, vcpu_index, &ev);
        vs->l1_task_at_entry = ev.task;
        vs->in_l2 = true;
        return;
    }
    if (target == 0 && !guest_regime && (el == 1 || (hcr & HCR_TGE))) {
        a64_finish_pending(vs, vcpu_index);
        vcpu_user_return(vs, vcpu_index,
                         reg_read_u64(vs, el == 2 ? a64.elr_el2 : a64.elr_el1));
        /*
         * A frame the task's handler starts on is read in user mode, at its first block.
         */
        if (vs->a64.frame_task && vs->a64.frame_task == vs->a64.host_task) {
            vs->inl.user_block_due = 1;
        } else {
            vs->a64.frame_task = 0;
        }
        vs->a64.sigreturn_frame.task = 0;
        vs->a64.regset_image.task = 0;
    }
}

/* ---- arm64 translation ------------------------------------------------ */

/*
 * Code ranges whose FP/SIMD instructions are the state handling itself:
 * the sequences recognised here, and the kernel's FP core functions the
 * recorder names (fpcode=ADDR:LEN). Their instructions are not kernel
 * SIMD use. Appended under insn_lock, read without it (a stale count only
 * misses the newest range).
 */
#define MAX_FP_CODE             64
static struct { uint64_t start, end; } fp_code[MAX_FP_CODE];
static unsigned n_fp_code;              /* atomic */

static bool fp_code_has(uint64_t pc)
{
    unsigned n = __atomic_load_n(&n_fp_code, __ATOMIC_ACQUIRE);

    for (unsigned i = 0; i < n; i++) {
        if (pc >= fp_code[i].start && pc < fp_code[i].end) {
            return true;
        }
    }
    return false;
}

/* False when the table is full (the range is not recorded). */
static bool a64_fp_code_add(uint64_t start, uint64_t end)
{
    unsigned n = n_fp_code;

    if (fp_code_has(start)) {
        return true;
    }
    if (n == MAX_FP_CODE) {
        return false;
    }
    fp_code[n].start = start;
    fp_code[n].end = end;
    __atomic_store_n(&n_fp_code, n + 1, __ATOMIC_RELEASE);
    return true;
}

/*
 * Whether an A64 instruction reads or writes FP/SIMD or SVE registers: the
 * "Data Processing -- Scalar Floating-Point and Advanced SIMD" group
 * (op0 x111), loads and stores with V set (op0 x1x0, bit 26), SVE (op0
 * 0010), and MSR to FPCR and FPSR. The kernel is built with
 * -mgeneral-regs-only: these appear only in kernel_neon_begin() sections
 * and in the FP core.
 */
static bool a64_is_fp_simd(uint32_t op)
{
    uint32_t op0 = (op >> 25) & 0xf;

    if ((op0 & 7) == 7 || op0 == 2) {
        return true;
    }
    if ((op0 & 5) == 4 && (op & (1u << 26))) {
        return true;
    }
    if ((op & 0xfff00000u) == 0xd5100000u) {        /* MSR, op0 = 3 */
        uint32_t sr = (op >> 5) & 0xffff;
        return sr == A64_SYSREG(3, 3, 4, 4, 0) || sr == A64_SYSREG(3, 3, 4, 4, 1);
    }
    return false;
}

/*
 * A ZA save or load sequence starting at op, RDSVL (see A64_SME_RDSVL_1).
 * Its base register is the one the first ZA store or load names.
 */
static uint8_t a64_za_seq_at(uint64_t vaddr, uint32_t op, struct a64_insn *ops,
                             unsigned *len)
{
    uint32_t next[8];
    unsigned v = op & 31, w, n;
    bool save;
    g_autoptr(GByteArray) buf = g_byte_array_new();

    if (!qemu_plugin_read_memory_vaddr(vaddr + 4, buf, sizeof(next)) ||
        buf->len < sizeof(next)) {
        return 0;
    }
    memcpy(next, buf->data, sizeof(next));
    w = next[0] & 31;
    n = (next[1] >> 5) & 31;
    if ((next[0] & ~31u) != A64_MOVZ_W_0 || w < 12 || w > 15) {
        return 0;
    }
    save = next[1] == (A64_SME_STR_ZA | (w & 3) << 13 | n << 5);
    if ((!save && next[1] != (A64_SME_LDR_ZA | (w & 3) << 13 | n << 5)) ||
        next[2] != (A64_ADD_X_REG | v << 16 | n << 5 | n) ||
        next[3] != (A64_ADD_X_1 | w << 5 | w) ||
        next[4] != (A64_CMP_X_REG | w << 16 | v << 5) ||
        next[5] != A64_BNE_BACK_4) {
        return 0;
    }
    ops->reg = n;
    ops->vl_reg = v;
    ops->zt_reg = A64_ZT_NONE;
    *len = 4 * 7;
    if ((next[6] & ~31u) == A64_CBZ_W_FWD_2 &&
        next[7] == ((save ? A64_SME_STR_ZT0 : A64_SME_LDR_ZT0) | n << 5)) {
        ops->zt_reg = next[6] & 31;
        *len = 4 * 9;
    }
    return save ? FTR_KIND_SME_SAVE : FTR_KIND_SME_LOAD;
}

/*
 * A save or load sequence starting at op, checked against the instructions
 * that follow in memory. Returns its kind, in ops its base register (and
 * for ZA its other registers), and in *len the bytes up to the instruction
 * after it.
 */
static uint8_t a64_seq_at(uint64_t vaddr, uint32_t op, struct a64_insn *ops,
                          unsigned *len)
{
    uint32_t next[16];
    unsigned n = (op >> 5) & 31;
    g_autoptr(GByteArray) buf = g_byte_array_new();

    if ((op & ~31u) == A64_SME_RDSVL_1) {
        return a64_za_seq_at(vaddr, op, ops, len);
    }
    ops->reg = n;
    if (op == a64_pair_q(A64_STP_Q_OFF, 0, n, 0) ||
        op == a64_pair_q(A64_LDP_Q_OFF, 0, n, 0)) {
        bool save = op == a64_pair_q(A64_STP_Q_OFF, 0, n, 0);
        /* stp/ldp q2k, q2k+1, [xN, #32k] for k = 1..14, then k = 15 with writeback. */
        if (!qemu_plugin_read_memory_vaddr(vaddr + 4, buf, sizeof(next)) ||
            buf->len < sizeof(next)) {
            return 0;
        }
        memcpy(next, buf->data, sizeof(next));
        for (unsigned k = 1; k < 16; k++) {
            uint32_t form = save ? (k < 15 ? A64_STP_Q_OFF : A64_STP_Q_PRE)
                                 : (k < 15 ? A64_LDP_Q_OFF : A64_LDP_Q_PRE);
            if (next[k - 1] != a64_pair_q(form, 2 * k, n, 2 * k)) {
                return 0;
            }
        }
        /*
         * fpsimd_save: 16 pairs, mrs/str FPSR, mrs/str FPCR. fpsimd_restore:
         * 16 pairs, ldr/msr FPSR, ldr FPCR and fpsimd_restore_fpcr (mrs, cmp,
         * b.eq over the msr).
         */
        *len = 4 * (save ? 20 : 23);
        return save ? FTR_KIND_FPSIMD_SAVE : FTR_KIND_FPSIMD_LOAD;
    }
    if (op == a64_sve_z(A64_SVE_STR_Z, 0, n, -34) ||
        op == a64_sve_z(A64_SVE_LDR_Z, 0, n, -34)) {
        bool save = op == a64_sve_z(A64_SVE_STR_Z, 0, n, -34);
        if (!qemu_plugin_read_memory_vaddr(vaddr + 4, buf, sizeof(next)) ||
            buf->len < sizeof(next)) {
            return 0;
        }
        memcpy(next, buf->data, sizeof(next));
        for (unsigned k = 1; k < 16; k++) {
            uint32_t want = a64_sve_z(save ? A64_SVE_STR_Z : A64_SVE_LDR_Z, k, n, k - 34);

            if (next[k - 1] != want) {
                return 0;
            }
        }
        /*
         * sve_save: 32 Z and 16 P stores, then FFR behind a branch; the Z
         * and P registers are all stored at the branch. sve_load: 32 Z
         * loads, FFR and 16 P loads, FPSR and FPCR: the loads are done when
         * it returns (its caller's next instruction is not known here).
         */
        *len = 4 * (save ? 48 : 0);
        return save ? FTR_KIND_SVE_SAVE : FTR_KIND_SVE_LOAD;
    }
    return 0;
}

static const struct fpu_insn *a64_intern(const struct fpu_insn *fi, uint32_t op)
{
    uint8_t key[1 + sizeof(op)];
    const struct fpu_insn *found;

    /* The same opcode at the same address means something else at another EL. */
    key[0] = fi->a64.el;
    memcpy(key + 1, &op, sizeof(op));
    g_mutex_lock(&insn_lock);
    found = insn_intern(fi, key, sizeof(key));
    g_mutex_unlock(&insn_lock);
    return found;
}

static bool a64_is_fp_sysreg(unsigned sr)
{
    switch (sr) {
    case SYSREG_CPACR_EL1: case SYSREG_CPACR_EL12: case SYSREG_CPTR_EL2:
    case SYSREG_ZCR_EL1: case SYSREG_ZCR_EL2: case SYSREG_ZCR_EL12:
    case SYSREG_SMCR_EL1: case SYSREG_SMCR_EL2: case SYSREG_SMCR_EL12:
    case SYSREG_SVCR:
        return true;
    }
    return false;
}

static void a64_instrument(struct qemu_plugin_insn *insn, uint64_t vaddr, uint32_t op,
                           unsigned el, bool hyp)
{
    struct fpu_insn fi = { .vaddr = vaddr, .len = 4, .a64.hyp = hyp };
    const struct fpu_insn *shared;
    unsigned len;

    fi.a64.el = el;
    if (op == A64_INSN_ERET || op == A64_INSN_ERETAA || op == A64_INSN_ERETAB) {
        shared = a64_intern(&fi, op);
        insn_exec_cb(insn, a64_eret_exec, (void *)shared);
        return;
    }
    if ((op & 0xfff00000u) == 0xd5100000u) {            /* MSR (register), op0 = 3 */
        unsigned sr = (op >> 5) & 0xffff;
        fi.a64.reg = op & 31;
        fi.a64.sysreg = sr;
        if (sr == SYSREG_SP_EL0) {
            insn_exec_cb(insn, a64_sp_el0_exec, (void *)(uintptr_t)fi.a64.reg);
        } else if (a64_is_fp_sysreg(sr)) {
            shared = a64_intern(&fi, op);
            insn_exec_cb(insn, a64_msr_exec, (void *)shared);
        }
        return;
    }
    if ((op & 0xfffff0ffu) == 0xd503407fu && ((op >> 9) & 3) != 0) {
        /* MSR SVCRSM/SVCRZA/SVCRSMZA, #imm: op1 3, CRn 4, CRm 0b0xx?, op2 3. */
        fi.a64.sysreg = SYSREG_SVCR;
        fi.a64.crm = (op >> 8) & 0xf;
        fi.a64.imm = true;
        shared = a64_intern(&fi, op);
        insn_exec_cb(insn, a64_msr_exec, (void *)shared);
        return;
    }
    fi.kind = a64_seq_at(vaddr, op, &fi.a64, &len);
    if (!fi.kind) {
        return;
    }
    if (fi.kind == FTR_KIND_SME_SAVE || fi.kind == FTR_KIND_SME_LOAD) {
        shared = a64_intern(&fi, op);
        g_mutex_lock(&insn_lock);
        a64_fp_code_add(vaddr, vaddr + len);
        site_add(vaddr + len, SITE_SEQ_END);
        g_mutex_unlock(&insn_lock);
        insn_exec_cb(insn, a64_za_op_exec, (void *)shared);
        return;
    }
    fi.is_save = ftr_kind_role(fi.kind) == FTR_ROLE_SAVE;
    fi.is_restore = ftr_kind_role(fi.kind) == FTR_ROLE_RESTORE;
    shared = a64_intern(&fi, op);
    g_mutex_lock(&insn_lock);
    a64_fp_code_add(vaddr, vaddr + (len ? len : 4 * 64));
    if (len) {
        site_add(vaddr + len, SITE_SEQ_END);
    }
    g_mutex_unlock(&insn_lock);
    insn_exec_cb(insn, a64_state_op_exec, (void *)shared);
    qemu_plugin_register_vcpu_mem_cb(insn, a64_state_mem, QEMU_PLUGIN_CB_NO_REGS,
                                     fi.is_save ? QEMU_PLUGIN_MEM_W : QEMU_PLUGIN_MEM_R,
                                     (void *)shared);
}

static void a64_tb_trans(struct qemu_plugin_tb *tb)
{
    size_t n = qemu_plugin_tb_n_insns(tb);
    unsigned el = (translation_reg_u64(a64.cpsr) >> 2) & 3;
    uint64_t vbar = 0, hcr = 0;
    bool host_kernel;

    if (el == 0) {
        /*
         * User code: whether it may change the FP/SIMD registers; and,
         * with the signal probes, the signal frames only user mode can
         * read (struct a64_vcpu): a handler's first block tests inline
         * whether one is due, an AArch64 SVC may be rt_sigreturn.
         */
        bool frames = cfg.boundaries && cfg.n_probes &&
                      !(translation_reg_u64(a64.cpsr) & PSR_MODE32);

        if (frames && n) {
            struct qemu_plugin_insn *insn = qemu_plugin_tb_get_insn(tb, 0);

            insn_begin(0, n);
            insn_mark(insn);
            qemu_plugin_register_vcpu_insn_exec_cond_cb(
                insn, a64_frame_exec, QEMU_PLUGIN_CB_R_REGS, QEMU_PLUGIN_COND_NE,
                inline_entry.user_block_due, 0,
                (void *)(uintptr_t)qemu_plugin_insn_vaddr(insn));
        }
        for (size_t i = 0; i < n; i++) {
            struct qemu_plugin_insn *insn = qemu_plugin_tb_get_insn(tb, i);
            uint32_t op = 0;
            qemu_plugin_insn_data(insn, &op, sizeof(op));
            if (cfg.derive_regs && a64_is_fp_simd(op)) {
                qemu_plugin_register_vcpu_insn_exec_inline_per_vcpu(
                    insn, QEMU_PLUGIN_INLINE_STORE_U64, inline_entry.regs_dirty, 1);
            }
            if (frames && (op & A64_INSN_SVC_MASK) == A64_INSN_SVC) {
                /* It writes no event: no instruction count to mark. */
                qemu_plugin_register_vcpu_insn_exec_cb(insn, a64_svc_exec,
                                                       QEMU_PLUGIN_CB_R_REGS, NULL);
            }
        }
        return;
    }
    hcr = translation_reg_u64(a64.hcr_el2);
    vbar = translation_reg_u64(el == 2 ? a64.vbar_el2 : a64.vbar_el1);
    /*
     * The host kernel: EL1 outside a guest, or EL2 with E2H (VHE); not nVHE's
     * hypervisor.
     */
    host_kernel = el == 1 ? !(hcr & HCR_VM) || (hcr & HCR_TGE) : (hcr & HCR_E2H) != 0;
    for (size_t i = 0; i < n; i++) {
        struct qemu_plugin_insn *insn = qemu_plugin_tb_get_insn(tb, i);
        uint64_t vaddr = qemu_plugin_insn_vaddr(insn);
        uint32_t op = 0;
        uint32_t site = site_lookup(vaddr);

        insn_begin(i, n);
        qemu_plugin_insn_data(insn, &op, sizeof(op));
        if (site & SITE_SEQ_END) {
            insn_exec_cb(insn, a64_seq_end_exec, NULL);
        }
        if (vbar && vaddr - vbar < 0x800 && !((vaddr - vbar) & 0x7f)) {
            struct fpu_insn fi = { .vaddr = vaddr, .len = 4 };
            fi.a64.el = el;
            fi.a64.vector = vaddr - vbar;
            insn_exec_cb(insn, a64_vector_exec, (void *)a64_intern(&fi, op));
        }
        if (cfg.n_probes && host_kernel) {
            const struct probe *pr = probe_lookup(vaddr);
            if (pr) {
                insn_exec_cb(insn, vcpu_probe_exec, (void *)pr);
            }
        }
        if (a64_is_fp_simd(op) && !fp_code_has(vaddr)) {
            simd_instrument(insn, vaddr, host_kernel);
        }
        a64_instrument(insn, vaddr, op, el, el == 2 && !(hcr & HCR_E2H));
    }
}

static void a64_regs_resolve(void)
{
    static const struct {
        const char *name;
        struct qemu_plugin_register **handle;
    } named[] = {
        { "sp", &a64.sp }, { "cpsr", &a64.cpsr },
        { "fpsr", &a64.fpsr }, { "fpcr", &a64.fpcr },
        { "vg", &a64.vg }, { "HCR_EL2", &a64.hcr_el2 }, { "ESR_EL1", &a64.esr_el1 },
        { "ESR_EL2", &a64.esr_el2 }, { "ELR_EL1", &a64.elr_el1 },
        { "ELR_EL2", &a64.elr_el2 },
        { "SPSR_EL1", &a64.spsr_el1 }, { "SPSR_EL2", &a64.spsr_el2 },
        { "VBAR", &a64.vbar_el1 }, { "VBAR_EL2", &a64.vbar_el2 },
        { "VTTBR_EL2", &a64.vttbr_el2 }, { "VMPIDR_EL2", &a64.vmpidr_el2 },
        { "SVCR", &a64.svcr }, { "CPACR", &a64.cpacr_el1 }, { "CPTR_EL2", &a64.cptr_el2 },
        { "ZCR_EL1", &a64.zcr_el1 }, { "ZCR_EL2", &a64.zcr_el2 },
        { "SMCR_EL1", &a64.smcr_el1 }, { "SMCR_EL2", &a64.smcr_el2 },
    };
    g_autoptr(GArray) list = qemu_plugin_get_registers();

    for (guint i = 0; i < list->len; i++) {
        qemu_plugin_reg_descriptor *rd =
            &g_array_index(list, qemu_plugin_reg_descriptor, i);
        const char *nm = rd->name;
        int k;
        char tail;

        for (k = 0; k < (int)G_N_ELEMENTS(named); k++) {
            if (!g_ascii_strcasecmp(nm, named[k].name)) {
                *named[k].handle = rd->handle;
            }
        }
        if (sscanf(nm, "x%d%c", &k, &tail) == 1 && k >= 0 && k < 31) {
            a64.x[k] = rd->handle;
        } else if (sscanf(nm, "z%d%c", &k, &tail) == 1 && k >= 0 && k < 32) {
            a64.z[k] = rd->handle;
        } else if (sscanf(nm, "p%d%c", &k, &tail) == 1 && k >= 0 && k < 16) {
            a64.p[k] = rd->handle;
        } else if (!strcmp(nm, "ffr")) {
            a64.ffr = rd->handle;
        }
    }
}

/*
 * AAPCS64: x0, x1, x2; the return address is in the link register, x30,
 * still unsigned at the first instruction (before any PACIASP).
 */
static void a64_probe_args(struct vcpu_state *vs, uint64_t args[4])
{
    for (unsigned i = 0; i < 3; i++) {
        args[i] = a64_xreg(vs, i);
    }
    args[3] = a64_xreg(vs, 30);
}

/* Nothing to prepare at install. */
static void a64_init(void)
{
}

static void a64_vcpu_init(struct vcpu_state *vs)
{
    vs->xcr0 = 3;                       /* FP/SIMD and SVE: a save's `value` */
}

/* Nothing of its own to free. */
static void a64_vcpu_exit(struct vcpu_state *vs G_GNUC_UNUSED)
{
}

static enum arg_result a64_parse_arg(const char *key, const char *value, char **why)
{
    g_auto(GStrv) parts = NULL;
    uint64_t start, len;

    if (strcmp(key, "fpcode")) {
        return ARG_UNKNOWN;
    }
    parts = g_strsplit(value, ":", 2);
    if (!parts[0] || !parts[1] || !parse_u64(parts[0], &start) ||
        !parse_u64(parts[1], &len)) {
        *why = g_strdup_printf("fpcode=%s: give ADDR:LEN", value);
        return ARG_BAD;
    }
    if (!len || len > 0x100000) {
        *why = g_strdup_printf("fpcode=%s: a length of 1 byte to 1 MiB", value);
        return ARG_BAD;
    }
    if (!a64_fp_code_add(start, start + len)) {
        *why = g_strdup_printf("fpcode=%s: more than %d ranges", value, MAX_FP_CODE);
        return ARG_BAD;
    }
    return ARG_OK;
}

const struct arch_ops a64_ops = {
    .target = "aarch64",
    .ftr_arch = FTR_ARCH_AARCH64,
    .user_pl = 0,
    .privilege = a64_el,
    .current_task = a64_current_task,
    .current_ptr = a64_current_ptr,
    .regs_hash = a64_regs_hash,
    .finish_pending = a64_finish_pending,
    .probe_args = a64_probe_args,
    .probe_state = a64_probe_state,
    .boundary_state = a64_boundary_state,
    .tb_trans = a64_tb_trans,
    .regs_resolve = a64_regs_resolve,
    .parse_arg = a64_parse_arg,
    .init = a64_init,
    .vcpu_init = a64_vcpu_init,
    .vcpu_exit = a64_vcpu_exit,
};
