/*
 * compat32: a 32-bit program (gcc -m32 -static) that runs in compatibility
 * mode under the 64-bit kernel and saves and restores its own FPU state:
 * XSAVE and FXSAVE to globals named by absolute (disp32) operands, FXSAVE
 * through a register, XRSTOR and FXRSTOR back. Between rounds it makes
 * system calls through int $0x80 and checks that XMM0-7 survive them.
 *
 * For the first round it prints each operation with the address it used
 * and, for saves, the 512-byte legacy area it stored, so that a test can
 * compute the content hash the trace must hold. Last, one summary line.
 *
 * usage: compat32 N
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NR_GETPPID_32   64      /* arch/x86/entry/syscalls/syscall_32.tbl */
#define NR_SCHED_YIELD_32 158
#define XSAVE_SIZE      1024    /* x87 and SSE requested: legacy area and header */

struct area {
    uint8_t bytes[XSAVE_SIZE];
} __attribute__((aligned(64)));

struct xmm8 {
    uint8_t r[8][16];
} __attribute__((aligned(16)));

static struct area buf_x, buf_f, buf_r;

static void xmm8_pattern(struct xmm8 *f, unsigned seed)
{
    for (int i = 0; i < 8; i++) {
        for (int j = 0; j < 16; j++) {
            f->r[i][j] = (uint8_t)(seed * 29 + i * 13 + j * 7 + 1);
        }
    }
}

/* XMM0-7 and two x87 stack entries from the round's seed. */
static void load_registers(unsigned seed)
{
    static struct xmm8 f;
    static double x87[2];

    xmm8_pattern(&f, seed);
    x87[0] = seed + 0.25;
    x87[1] = -(double)seed / 3.0;
    __asm__ volatile("fninit\n\t"
                     "fldl %1\n\t"
                     "fldl %2\n\t"
                     "movdqa 0(%0), %%xmm0\n movdqa 16(%0), %%xmm1\n"
                     "movdqa 32(%0), %%xmm2\n movdqa 48(%0), %%xmm3\n"
                     "movdqa 64(%0), %%xmm4\n movdqa 80(%0), %%xmm5\n"
                     "movdqa 96(%0), %%xmm6\n movdqa 112(%0), %%xmm7\n"
                     : : "r"(&f), "m"(x87[0]), "m"(x87[1])
                     : "memory", "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6",
                       "xmm7");
}

/* int $0x80 with XMM0-7 holding *in; their values afterwards go to *out. */
static long int80_checked(long nr, const struct xmm8 *in, struct xmm8 *out)
{
    long ret;

    __asm__ volatile("movdqa 0(%1), %%xmm0\n movdqa 16(%1), %%xmm1\n"
                     "movdqa 32(%1), %%xmm2\n movdqa 48(%1), %%xmm3\n"
                     "movdqa 64(%1), %%xmm4\n movdqa 80(%1), %%xmm5\n"
                     "movdqa 96(%1), %%xmm6\n movdqa 112(%1), %%xmm7\n"
                     "int $0x80\n"
                     "movdqa %%xmm0, 0(%2)\n movdqa %%xmm1, 16(%2)\n"
                     "movdqa %%xmm2, 32(%2)\n movdqa %%xmm3, 48(%2)\n"
                     "movdqa %%xmm4, 64(%2)\n movdqa %%xmm5, 80(%2)\n"
                     "movdqa %%xmm6, 96(%2)\n movdqa %%xmm7, 112(%2)\n"
                     : "=a"(ret)
                     : "r"(in), "r"(out), "a"(nr)
                     : "memory", "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6",
                       "xmm7");
    return ret;
}

static void print_op(const char *kind, const char *form, const void *addr,
                     const struct area *stored)
{
    printf("compat32-op kind=%s form=%s addr=%#lx", kind, form, (unsigned long)addr);
    if (stored) {
        printf(" legacy=");
        for (int i = 0; i < 512; i++) {
            printf("%02x", stored->bytes[i]);
        }
    }
    printf("\n");
}

int main(int argc, char **argv)
{
    unsigned rounds = argc > 1 ? (unsigned)strtoul(argv[1], NULL, 0) : 20;
    unsigned ops = 0, syscalls = 0, mismatches = 0;
    struct area *p = &buf_r;
    struct xmm8 in, out;

    setvbuf(stdout, NULL, _IOLBF, 0);
    for (unsigned i = 0; i < rounds; i++) {
        int show = i == 0;

        load_registers(i + 1);
        /* Absolute operands: disp32 in 32-bit code. EDX:EAX = 3: x87 and SSE. */
        __asm__ volatile("xsave %0" : "=m"(buf_x) : "a"(3), "d"(0) : "memory");
        __asm__ volatile("fxsave %0" : "=m"(buf_f) : : "memory");
        __asm__ volatile("fxsave (%0)" : : "r"(p) : "memory");
        __asm__ volatile("xrstor %0" : : "m"(buf_x), "a"(3), "d"(0) : "memory");
        __asm__ volatile("fxrstor (%0)" : : "r"(p) : "memory");
        ops += 5;
        if (show) {
            print_op("xsave", "absolute", &buf_x, &buf_x);
            print_op("fxsave", "absolute", &buf_f, &buf_f);
            print_op("fxsave", "register", p, p);
            print_op("xrstor", "absolute", &buf_x, NULL);
            print_op("fxrstor", "register", p, NULL);
        }

        xmm8_pattern(&in, 1000 + i);
        int80_checked(i % 2 ? NR_SCHED_YIELD_32 : NR_GETPPID_32, &in, &out);
        syscalls++;
        if (memcmp(&in, &out, sizeof(in)) != 0) {
            mismatches++;
        }
    }
    printf("compat32: rounds=%u ops=%u syscalls=%u mismatches=%u\n", rounds, ops, syscalls,
           mismatches);
    return mismatches != 0;
}
