/*
 * fpu-hog: a CPU-bound task that holds its own pattern in xmm0-15 through
 * long integer spins and checks it after each, until SIGTERM (or N rounds,
 * when N > 0). Run alongside a KVM guest on one CPU (record --alongside), it
 * preempts the vCPU thread inside KVM_RUN while the guest's state is loaded.
 *
 * usage: fpu-hog [N]    (0, the default: until SIGTERM)
 * prints: fpu-hog: rounds=R mismatches=M
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>

#include "fpcheck.h"

#define HOG_SPIN 200000

static volatile sig_atomic_t stop;

static void on_term(int sig)
{
    (void)sig;
    stop = 1;
}

int main(int argc, char **argv)
{
    long n = argc > 1 ? strtol(argv[1], NULL, 0) : 0;
    long rounds = 0, mismatches = 0;

    signal(SIGTERM, on_term);
    for (unsigned seed = 1; !stop && (n <= 0 || rounds < n); seed++) {
        mismatches += xmm_hold_round(seed, HOG_SPIN);
        rounds++;
    }
    printf("fpu-hog: rounds=%ld mismatches=%ld\n", rounds, mismatches);
    return mismatches != 0;
}
