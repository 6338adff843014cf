/*
 * fpcheck.h (arm64): a known pattern in V0-V31, a system call made with it
 * live, and the registers read back right after: what the kernel returns
 * with must be what user space entered with. The names are those of
 * ../fpcheck.h (x86_64), so that workloads written with them build for
 * both; the SVE helpers (sve_*) are arm64's own.
 */
#ifndef FPCHECK_A64_H
#define FPCHECK_A64_H

#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/auxv.h>
#include <ucontext.h>
#include <asm/sigcontext.h>

struct fp_file {
    uint8_t v[32][16];
} __attribute__((aligned(16)));

static inline void fp_pattern(struct fp_file *f, unsigned seed)
{
    for (unsigned r = 0; r < 32; r++)
        for (unsigned b = 0; b < 16; b++)
            f->v[r][b] = (uint8_t)(seed * 131 + r * 17 + b * 7 + 1);
}

static inline int fp_equal(const struct fp_file *a, const struct fp_file *b)
{
    return memcmp(a, b, sizeof(*a)) == 0;
}

#define V_MOVE_ALL(op, base)                                               \
    op " q0, q1, [" base ", #0]\n"   op " q2, q3, [" base ", #32]\n"        \
    op " q4, q5, [" base ", #64]\n"  op " q6, q7, [" base ", #96]\n"        \
    op " q8, q9, [" base ", #128]\n" op " q10, q11, [" base ", #160]\n"     \
    op " q12, q13, [" base ", #192]\n" op " q14, q15, [" base ", #224]\n"   \
    op " q16, q17, [" base ", #256]\n" op " q18, q19, [" base ", #288]\n"   \
    op " q20, q21, [" base ", #320]\n" op " q22, q23, [" base ", #352]\n"   \
    op " q24, q25, [" base ", #384]\n" op " q26, q27, [" base ", #416]\n"   \
    op " q28, q29, [" base ", #448]\n" op " q30, q31, [" base ", #480]\n"

#define V_CLOBBERS                                                          \
    "v0", "v1", "v2", "v3", "v4", "v5", "v6", "v7", "v8", "v9", "v10",      \
    "v11", "v12", "v13", "v14", "v15", "v16", "v17", "v18", "v19", "v20",   \
    "v21", "v22", "v23", "v24", "v25", "v26", "v27", "v28", "v29", "v30",   \
    "v31"

/*
 * A three-argument system call with V0-V31 loaded from *in just before the
 * SVC and stored to *out right after it. Returns the kernel's result.
 */
static inline long syscall3_checked(long nr, long a1, long a2, long a3,
                                    const struct fp_file *in, struct fp_file *out)
{
    register long x8 __asm__("x8") = nr;
    register long x0 __asm__("x0") = a1;
    register long x1 __asm__("x1") = a2;
    register long x2 __asm__("x2") = a3;

    __asm__ volatile(V_MOVE_ALL("ldp", "%[in]")
                     "svc #0\n"
                     V_MOVE_ALL("stp", "%[out]")
                     : "+r"(x0)
                     : "r"(x8), "r"(x1), "r"(x2), [in] "r"(in), [out] "r"(out)
                     : "memory", V_CLOBBERS);
    return x0;
}

/* V0-V31 loaded from *f (a signal handler's clobber). */
static inline void fp_load_all(const struct fp_file *f)
{
    __asm__ volatile(V_MOVE_ALL("ldp", "%0") : : "r"(f) : "memory", V_CLOBBERS);
}

/*
 * The widest registers checked across a system call: V0-V31. A system call
 * discards the rest of the SVE state (fp_user_discard() in
 * arch/arm64/kernel/syscall.c), so only their low 128 bits survive it.
 */
#define wide_file fp_file
#define wide_pattern fp_pattern
#define syscall3_checked_wide syscall3_checked

/*
 * SVE: Z0-Z31 and P0-P15 at the task's vector length vl (bytes, at most
 * 256), laid out as the instructions store them: Z0..Z31 vl bytes each,
 * then P0..P15 vl / 8 bytes each. They survive exceptions other than
 * system calls (interrupts, faults, BRK), and signal delivery and
 * sigreturn must keep them whole.
 */
#define SVE_BYTES_MAX 256

struct sve_packed {
    uint8_t bytes[32 * SVE_BYTES_MAX + 16 * SVE_BYTES_MAX / 8];
} __attribute__((aligned(16)));

static inline int sve_supported(void)
{
    return (getauxval(AT_HWCAP) & HWCAP_SVE) != 0;
}

static inline unsigned sve_vl(void)
{
    unsigned long vl;

    __asm__ volatile(".arch_extension sve\n rdvl %0, #1" : "=r"(vl));
    return (unsigned)vl;
}

static inline void sve_pattern(struct sve_packed *f, unsigned seed)
{
    for (unsigned i = 0; i < sizeof(f->bytes); i++)
        f->bytes[i] = (uint8_t)(seed * 29 + i * 3 + i / 251);
}

static inline int sve_equal(const struct sve_packed *a, const struct sve_packed *b, unsigned vl)
{
    return memcmp(a->bytes, b->bytes, 32 * vl + 2 * vl) == 0;
}

/* Z and P register n at its slot of a struct sve_packed (from z and p, in VLs). */
#define SVE_Z(op, n) op " z" #n ", [%[z], #" #n ", mul vl]\n"
#define SVE_P(op, n) op " p" #n ", [%[p], #" #n ", mul vl]\n"
#define SVE_ALL(op)                                                              \
    SVE_Z(op, 0) SVE_Z(op, 1) SVE_Z(op, 2) SVE_Z(op, 3) SVE_Z(op, 4) SVE_Z(op, 5)       \
    SVE_Z(op, 6) SVE_Z(op, 7) SVE_Z(op, 8) SVE_Z(op, 9) SVE_Z(op, 10) SVE_Z(op, 11)     \
    SVE_Z(op, 12) SVE_Z(op, 13) SVE_Z(op, 14) SVE_Z(op, 15) SVE_Z(op, 16) SVE_Z(op, 17) \
    SVE_Z(op, 18) SVE_Z(op, 19) SVE_Z(op, 20) SVE_Z(op, 21) SVE_Z(op, 22) SVE_Z(op, 23) \
    SVE_Z(op, 24) SVE_Z(op, 25) SVE_Z(op, 26) SVE_Z(op, 27) SVE_Z(op, 28) SVE_Z(op, 29) \
    SVE_Z(op, 30) SVE_Z(op, 31)                                                       \
    SVE_P(op, 0) SVE_P(op, 1) SVE_P(op, 2) SVE_P(op, 3) SVE_P(op, 4) SVE_P(op, 5)       \
    SVE_P(op, 6) SVE_P(op, 7) SVE_P(op, 8) SVE_P(op, 9) SVE_P(op, 10) SVE_P(op, 11)     \
    SVE_P(op, 12) SVE_P(op, 13) SVE_P(op, 14) SVE_P(op, 15)
#define SVE_CLOBBERS V_CLOBBERS, "p0", "p1", "p2", "p3", "p4", "p5", "p6", "p7", "p8", \
    "p9", "p10", "p11", "p12", "p13", "p14", "p15"

/*
 * Load Z0-Z31 and P0-P15 from in, run `between` (instructions that leave
 * them alone; %[n] is a counter it may use), store them to out.
 */
#define SVE_AROUND(between)                                                              \
    __asm__ volatile(".arch_extension sve\n"                                              \
                     SVE_ALL("ldr")                                                       \
                     between                                                              \
                     "mov %[z], %[zo]\n mov %[p], %[po]\n"                                 \
                     SVE_ALL("str")                                                       \
                     : [z] "+&r"(z), [p] "+&r"(p), [n] "+&r"(n)                           \
                     : [zo] "r"(zo), [po] "r"(po)                                         \
                     : "memory", SVE_CLOBBERS)

/*
 * Z and P across a busy loop of `spin` iterations, which a timer tick may
 * preempt, or with spin 0 across a BRK, for which the kernel delivers
 * SIGTRAP with the SVE state live.
 */
static inline void sve_checked(const struct sve_packed *in, struct sve_packed *out,
                               unsigned vl, unsigned long spin)
{
    const uint8_t *z = in->bytes, *p = in->bytes + 32 * vl;
    uint8_t *zo = out->bytes, *po = out->bytes + 32 * vl;
    unsigned long n = spin;

    if (spin)
        SVE_AROUND("1: subs %[n], %[n], #1\n b.ne 1b\n");
    else
        SVE_AROUND("brk #0x5e\n");
}

/* Z and P loaded from in (a signal handler's clobber). */
static inline void sve_load_all(const struct sve_packed *in, unsigned vl)
{
    const uint8_t *z = in->bytes, *p = in->bytes + 32 * vl;

    __asm__ volatile(".arch_extension sve\n"
                     SVE_ALL("ldr")
                     : : [z] "r"(z), [p] "r"(p)
                     : "memory", SVE_CLOBBERS);
}

/*
 * SIGTRAP, which the BRK of sve_checked(..., 0) raises, to handler, with
 * the signal's context; the handler steps over the BRK with brk_skip().
 */
static inline int brk_catch(void (*handler)(int, siginfo_t *, void *))
{
    struct sigaction sa;

    memset(&sa, 0, sizeof(sa));
    sa.sa_sigaction = handler;
    sa.sa_flags = SA_SIGINFO;
    sigemptyset(&sa.sa_mask);
    return sigaction(SIGTRAP, &sa, NULL);
}

static inline void brk_skip(void *context)
{
    ((ucontext_t *)context)->uc_mcontext.pc += 4;
}

/*
 * A signal handler's edit of its frame: V0-V31 in the frame's FP/SIMD
 * record (struct fpsimd_context, found by its magic among the records of
 * uc_mcontext.__reserved) replaced by *f, which sigreturn must load
 * (restore_fpsimd_context(); with an SVE record, V0-V31 still come from
 * this one). 0 if the frame has no such record.
 */
static inline int fp_frame_edit(void *context, const struct fp_file *f)
{
    uint8_t *rec = ((ucontext_t *)context)->uc_mcontext.__reserved;
    uint8_t *end = rec + sizeof(((ucontext_t *)context)->uc_mcontext.__reserved);

    while (rec + 8 <= end) {
        struct _aarch64_ctx *head = (struct _aarch64_ctx *)rec;

        if (!head->magic || head->size < 8)
            return 0;
        if (head->magic == FPSIMD_MAGIC) {
            memcpy(((struct fpsimd_context *)rec)->vregs, f->v, sizeof(f->v));
            return 1;
        }
        rec += head->size;
    }
    return 0;
}

/*
 * Whether a signal frame's SVE record agrees with its FP/SIMD record: where
 * the SVE record holds register data, each Zn's low 128 bits are Vn, as
 * they are in the registers (Documentation/arch/arm64/sve.rst, "Signal
 * handling"). The records are walked as the kernel lays them out, into an
 * extra_context when the SVE record did not fit. With upper_zero, Z0-Z31
 * beyond their low 128 bits must be zero too: what a signal delivered from
 * a system call made right after an AdvSIMD write of V0-V31 (which zeroes
 * them) may hold, the kernel keeping or zeroing them. 1: they agree; 0:
 * they do not; -1: no SVE register data (or no FP/SIMD record) to compare.
 */
static inline int fp_frame_sve_agrees(void *context, int upper_zero)
{
    uint8_t *rec = ((ucontext_t *)context)->uc_mcontext.__reserved;
    uint8_t *end = rec + sizeof(((ucontext_t *)context)->uc_mcontext.__reserved);
    struct fpsimd_context *fp = NULL;
    struct sve_context *sve = NULL;
    int extra_taken = 0;

    while (rec + 8 <= end) {
        struct _aarch64_ctx *head = (struct _aarch64_ctx *)rec;

        if (!head->magic || head->size < 8)
            break;
        if (head->magic == FPSIMD_MAGIC)
            fp = (struct fpsimd_context *)rec;
        else if (head->magic == SVE_MAGIC)
            sve = (struct sve_context *)rec;
        else if (head->magic == EXTRA_MAGIC && !extra_taken) {
            struct extra_context *extra = (struct extra_context *)rec;

            extra_taken = 1;
            rec = (uint8_t *)(uintptr_t)extra->datap;
            end = rec + extra->size;
            continue;
        }
        rec += head->size;
    }
    if (!fp || !sve)
        return -1;
    unsigned vq = sve_vq_from_vl(sve->vl);
    if (sve->head.size < SVE_SIG_CONTEXT_SIZE(vq))
        return -1;
    for (unsigned n = 0; n < 32; n++) {
        const uint8_t *z = (uint8_t *)sve + SVE_SIG_ZREG_OFFSET(vq, n);

        if (memcmp(z, &fp->vregs[n], 16))
            return 0;
        for (unsigned b = 16; upper_zero && b < sve->vl; b++)
            if (z[b])
                return 0;
    }
    return 1;
}

#endif
