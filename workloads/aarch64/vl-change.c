/*
 * vl-change: V0-V31 across prctl(PR_SVE_SET_VL) that changes the vector
 * length, with SVE state of the task saved in memory before.
 *
 * Each round:
 *   1. loads Z0-Z31 and P0-P15 with a pattern and takes a BRK: SIGTRAP is
 *      delivered with the SVE state live, so the kernel saves it, and the
 *      sigreturn puts it back in the task's SVE buffer (TIF_SVE set);
 *   2. loads V0-V31 with another pattern with NEON loads, which leave SVE
 *      on, and changes the vector length with prctl() with those live;
 *   3. reads V0-V31 back right after the SVC.
 * Documentation/arch/arm64/sve.rst: changing the vector length makes all
 * of Z0-Z31 but their low 128 bits, P0-P15 and FFR unspecified; V0-V31
 * are kept, as across any system call. So what step 3 reads must be what
 * step 2 loaded.
 *
 * usage: vl-change [N]   (default 20 vector length changes)
 * prints: vl-change: changes=N sve_vl=A/B mismatches=0 sve_mismatches=0
 */
#define _GNU_SOURCE
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "fpcheck.h"

static void on_trap(int sig, siginfo_t *info, void *context)
{
    (void)sig;
    (void)info;
    brk_skip(context);
}

int main(int argc, char **argv)
{
    long n = argc > 1 ? strtol(argv[1], NULL, 0) : 20;
    static struct sve_packed sve_in, sve_out;
    struct fp_file in, out;
    long changes = 0, mismatches = 0, sve_mismatches = 0;
    unsigned vls[2];

    if (!sve_supported()) {
        printf("vl-change: changes=0 mismatches=0 (no SVE)\n");
        return 0;
    }
    if (brk_catch(on_trap) < 0) {
        perror("vl-change: sigaction SIGTRAP");
        return 1;
    }
    /* Two lengths the CPU supports: the default and the smallest, 16 bytes. */
    vls[0] = sve_vl();
    vls[1] = vls[0] > 16 ? 16 : 32;
    sve_pattern(&sve_in, 5);
    fp_pattern(&in, 7);
    for (long i = 0; i < n; i++) {
        unsigned vl = sve_vl();
        unsigned next = vls[(i + 1) % 2];
        long ret;

        sve_checked(&sve_in, &sve_out, vl, 0);
        if (!sve_equal(&sve_in, &sve_out, vl))
            sve_mismatches++;
        ret = syscall3_checked(SYS_prctl, PR_SVE_SET_VL, next, 0, &in, &out);
        if (ret < 0 || (unsigned)(ret & PR_SVE_VL_LEN_MASK) != next) {
            fprintf(stderr, "vl-change: PR_SVE_SET_VL %u: %ld\n", next, ret);
            return 1;
        }
        changes++;
        if (!fp_equal(&in, &out))
            mismatches++;
    }
    printf("vl-change: changes=%ld sve_vl=%u/%u mismatches=%ld sve_mismatches=%ld\n",
           changes, vls[0], vls[1], mismatches, sve_mismatches);
    return mismatches == 0 && sve_mismatches == 0 ? 0 : 1;
}
