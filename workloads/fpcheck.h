/*
 * Helpers shared by the workloads (x86_64): fill the SSE registers with a
 * pattern, make one system call, and check that the pattern survived it.
 * Everything happens in one asm block, so the compiler cannot touch the
 * registers in between; a mismatch is the kernel's doing.
 *
 * The names without "xmm"/"ymm" (struct fp_file, fp_pattern(), fp_equal(),
 * fp_load_all(), syscall3_checked(), and struct wide_file with its *_wide
 * forms) are the ones aarch64/fpcheck.h defines too: workloads written with
 * them build for both architectures.
 */
#ifndef FPCHECK_H
#define FPCHECK_H

#ifdef __aarch64__
#include "aarch64/fpcheck.h"
#else

#include <stdint.h>
#include <string.h>
#include <ucontext.h>

struct fp_file {
    uint8_t r[16][16];
} __attribute__((aligned(16)));

/* Fill 16 registers of `width` bytes with a pattern of their own per seed. */
static inline void reg_pattern(uint8_t *regs, int width, unsigned seed)
{
    for (int i = 0; i < 16; i++)
        for (int j = 0; j < width; j++)
            regs[i * width + j] = (uint8_t)(seed * 131 + i * 17 + j);
}

static inline void fp_pattern(struct fp_file *f, unsigned seed)
{
    reg_pattern(&f->r[0][0], 16, seed);
}

#define XMM_LOAD_ALL(src)                                                   \
    "movdqa 0(" src "), %%xmm0\n movdqa 16(" src "), %%xmm1\n"              \
    "movdqa 32(" src "), %%xmm2\n movdqa 48(" src "), %%xmm3\n"             \
    "movdqa 64(" src "), %%xmm4\n movdqa 80(" src "), %%xmm5\n"             \
    "movdqa 96(" src "), %%xmm6\n movdqa 112(" src "), %%xmm7\n"            \
    "movdqa 128(" src "), %%xmm8\n movdqa 144(" src "), %%xmm9\n"           \
    "movdqa 160(" src "), %%xmm10\n movdqa 176(" src "), %%xmm11\n"         \
    "movdqa 192(" src "), %%xmm12\n movdqa 208(" src "), %%xmm13\n"         \
    "movdqa 224(" src "), %%xmm14\n movdqa 240(" src "), %%xmm15\n"

#define XMM_STORE_ALL(dst)                                                  \
    "movdqa %%xmm0, 0(" dst ")\n movdqa %%xmm1, 16(" dst ")\n"              \
    "movdqa %%xmm2, 32(" dst ")\n movdqa %%xmm3, 48(" dst ")\n"             \
    "movdqa %%xmm4, 64(" dst ")\n movdqa %%xmm5, 80(" dst ")\n"             \
    "movdqa %%xmm6, 96(" dst ")\n movdqa %%xmm7, 112(" dst ")\n"            \
    "movdqa %%xmm8, 128(" dst ")\n movdqa %%xmm9, 144(" dst ")\n"           \
    "movdqa %%xmm10, 160(" dst ")\n movdqa %%xmm11, 176(" dst ")\n"         \
    "movdqa %%xmm12, 192(" dst ")\n movdqa %%xmm13, 208(" dst ")\n"         \
    "movdqa %%xmm14, 224(" dst ")\n movdqa %%xmm15, 240(" dst ")\n"

/*
 * syscall(nr, a1, a2, a3) with xmm0-15 holding *in on entry; their values
 * on return go to *out. Returns the syscall's return value.
 */
static inline long syscall3_checked(long nr, long a1, long a2, long a3,
                                    const struct fp_file *in, struct fp_file *out)
{
    long ret;
    register long r10 __asm__("r10") = 0;

    __asm__ volatile(XMM_LOAD_ALL("%[in]")
                     "syscall\n"
                     XMM_STORE_ALL("%[out]")
                     : "=a"(ret), "+r"(r10)
                     : "a"(nr), "D"(a1), "S"(a2), "d"(a3), [in] "r"(in), [out] "r"(out)
                     : "rcx", "r11", "memory", "xmm0", "xmm1", "xmm2", "xmm3", "xmm4",
                       "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10", "xmm11",
                       "xmm12", "xmm13", "xmm14", "xmm15");
    return ret;
}

static inline int fp_equal(const struct fp_file *a, const struct fp_file *b)
{
    return memcmp(a, b, sizeof(*a)) == 0;
}

/*
 * One round of a CPU hog: hold a pattern in xmm0-15 through an integer spin
 * of `spin` iterations (where the task gets preempted), then compare them.
 * Returns 1 when the registers did not survive.
 */
static inline int xmm_hold_round(unsigned seed, unsigned spin)
{
    struct fp_file in, out;

    fp_pattern(&in, seed);
    __asm__ volatile(XMM_LOAD_ALL("%[in]")
                     "mov %[spin], %%ecx\n"
                     "1: dec %%ecx\n jnz 1b\n"
                     XMM_STORE_ALL("%[out]")
                     : : [in] "r"(&in), [out] "r"(&out), [spin] "r"(spin)
                     : "rcx", "memory", "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5",
                       "xmm6", "xmm7", "xmm8", "xmm9", "xmm10", "xmm11", "xmm12",
                       "xmm13", "xmm14", "xmm15");
    return !fp_equal(&in, &out);
}

/* Every register of xmm0-15, loaded from *f (a signal handler's clobber). */
static inline void fp_load_all(const struct fp_file *f)
{
    __asm__ volatile(XMM_LOAD_ALL("%0")
                     : : "r"(f)
                     : "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7",
                       "xmm8", "xmm9", "xmm10", "xmm11", "xmm12", "xmm13", "xmm14", "xmm15");
}

/* The widest registers a workload checks: here the 256-bit AVX ymm0-15. */
struct wide_file {
    uint8_t r[16][32];
} __attribute__((aligned(32)));

static inline void wide_pattern(struct wide_file *f, unsigned seed)
{
    reg_pattern(&f->r[0][0], 32, seed);
}

#define YMM_MOVE_ALL(op, a, b)                                                          \
    op(a, b, 0, 0) op(a, b, 1, 32) op(a, b, 2, 64) op(a, b, 3, 96)                      \
    op(a, b, 4, 128) op(a, b, 5, 160) op(a, b, 6, 192) op(a, b, 7, 224)                \
    op(a, b, 8, 256) op(a, b, 9, 288) op(a, b, 10, 320) op(a, b, 11, 352)               \
    op(a, b, 12, 384) op(a, b, 13, 416) op(a, b, 14, 448) op(a, b, 15, 480)
#define YMM_LOAD_ONE(src, _, n, off) "vmovdqa " #off "(" src "), %%ymm" #n "\n"
#define YMM_STORE_ONE(dst, _, n, off) "vmovdqa %%ymm" #n ", " #off "(" dst ")\n"

static inline long syscall3_checked_wide(long nr, long a1, long a2, long a3,
                                         const struct wide_file *in, struct wide_file *out)
{
    long ret;
    register long r10 __asm__("r10") = 0;

    __asm__ volatile(YMM_MOVE_ALL(YMM_LOAD_ONE, "%[in]", _)
                     "syscall\n"
                     YMM_MOVE_ALL(YMM_STORE_ONE, "%[out]", _)
                     "vzeroupper\n"
                     : "=a"(ret), "+r"(r10)
                     : "a"(nr), "D"(a1), "S"(a2), "d"(a3), [in] "r"(in), [out] "r"(out)
                     : "rcx", "r11", "memory", "xmm0", "xmm1", "xmm2", "xmm3", "xmm4",
                       "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10", "xmm11",
                       "xmm12", "xmm13", "xmm14", "xmm15");
    return ret;
}

/*
 * The registers a program or a signal handler started with, caught at its
 * very first instruction, before any compiled code (the C library's
 * start-up, a handler's prologue) can use them: XMM0-15, MXCSR and the x87
 * control word.
 */
struct fp_start {
    struct fp_file xmm;
    uint32_t mxcsr;
    uint16_t fcw;
} __attribute__((aligned(16)));

/*
 * Define `entry`, a code address that saves the registers into the
 * struct fp_start `where` and jumps to `then`: a program's ELF entry point
 * (link with -Wl,-e,entry; then is _start) or a signal handler (then is the
 * C handler, which gets the signal number in %edi untouched).
 */
#define FP_DEFINE_START_CAPTURE(entry, where, then)                         \
    __asm__(".text\n.globl " #entry "\n.type " #entry ", @function\n"       \
            #entry ":\n"                                                    \
            FP_CAPTURE_XMM(where)                                           \
            "stmxcsr " #where "+256(%rip)\n"                                \
            "fnstcw " #where "+260(%rip)\n"                                 \
            "jmp " #then "\n")
#define FP_CAPTURE_ONE(where, n) "movdqu %xmm" #n ", " #where "+" #n "*16(%rip)\n"
#define FP_CAPTURE_XMM(w)                                                   \
    FP_CAPTURE_ONE(w, 0) FP_CAPTURE_ONE(w, 1) FP_CAPTURE_ONE(w, 2)          \
    FP_CAPTURE_ONE(w, 3) FP_CAPTURE_ONE(w, 4) FP_CAPTURE_ONE(w, 5)          \
    FP_CAPTURE_ONE(w, 6) FP_CAPTURE_ONE(w, 7) FP_CAPTURE_ONE(w, 8)          \
    FP_CAPTURE_ONE(w, 9) FP_CAPTURE_ONE(w, 10) FP_CAPTURE_ONE(w, 11)        \
    FP_CAPTURE_ONE(w, 12) FP_CAPTURE_ONE(w, 13) FP_CAPTURE_ONE(w, 14)       \
    FP_CAPTURE_ONE(w, 15)

/*
 * The init state, as the x86-64 psABI gives a new program and as Linux
 * gives a signal handler (fpu__clear_user_states()): XMM0-15 zero, MXCSR
 * 0x1f80, FCW 0x37f.
 */
static inline int fp_start_is_init(const struct fp_start *s)
{
    static const struct fp_file zero;

    return fp_equal(&s->xmm, &zero) && s->mxcsr == 0x1f80 && s->fcw == 0x37f;
}

/*
 * A signal handler's edit of its frame: XMM0-15 in the frame's FXSAVE
 * region (uc_mcontext.fpregs) replaced by *f, which sigreturn must load
 * (fpu__restore_sig()). In an XSAVE frame (sw_reserved's magic1,
 * FP_XSTATE_MAGIC1, at byte 464) SSE is also marked in XSTATE_BV (byte
 * 512), so that the restore takes XMM from the frame, not from the init
 * state. 0 if the frame has no FP state.
 */
static inline int fp_frame_edit(void *context, const struct fp_file *f)
{
    uint8_t *fx = (uint8_t *)((ucontext_t *)context)->uc_mcontext.fpregs;
    uint32_t magic1;
    uint64_t bv;

    if (!fx)
        return 0;
    memcpy(fx + 160, f->r, sizeof(f->r));
    memcpy(&magic1, fx + 464, sizeof(magic1));
    if (magic1 == 0x46505853u) {
        memcpy(&bv, fx + 512, sizeof(bv));
        bv |= 2;
        memcpy(fx + 512, &bv, sizeof(bv));
    }
    return 1;
}

#endif /* __aarch64__ */

#endif
