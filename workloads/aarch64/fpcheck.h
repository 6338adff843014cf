/*
 * fpcheck.h (arm64): a known pattern in V0-V31, a system call made with it
 * live, and the registers read back right after: what the kernel returns
 * with must be what user space entered with.
 */
#ifndef FPCHECK_A64_H
#define FPCHECK_A64_H

#include <stdint.h>
#include <string.h>

struct v_file {
    uint8_t v[32][16];
} __attribute__((aligned(16)));

static inline void v_pattern(struct v_file *f, unsigned seed)
{
    for (unsigned r = 0; r < 32; r++)
        for (unsigned b = 0; b < 16; b++)
            f->v[r][b] = (uint8_t)(seed * 131 + r * 17 + b * 7 + 1);
}

static inline int v_equal(const struct v_file *a, const struct v_file *b)
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
                                    const struct v_file *in, struct v_file *out)
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

#endif
