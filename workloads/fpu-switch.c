/*
 * fpu-switch: two tasks pinned to one CPU, each holding its own values in
 * its widest registers checked across a system call (AVX ymm0-15 on x86_64,
 * V0-V31 on arm64), hand a token back and forth through two pipes. Every
 * hand-off blocks one task in read() and wakes the other, so each one is a
 * context switch in which the kernel must save one task's FP/SIMD state
 * and (lazily) restore the other's. Both tasks check all their registers
 * across every blocking read; the parent prints the totals.
 *
 * Pipes rather than sched_yield(): CFS does not switch on a yield to a task
 * whose vruntime is far ahead, so yields do not guarantee a switch.
 *
 * On arm64 with SVE both tasks then spin with their whole SVE state live
 * (a system call would discard it), so that timer ticks preempt them with
 * it: the switches save and load Z0-Z31 and P0-P15, checked around every
 * spin. The kernel's own count of involuntary switches (ru_nivcsw) says
 * how many preemptions there were.
 *
 * usage: fpu-switch [N]    (round trips, default 200)
 * prints: fpu-switch: tasks=2 round_trips=N switches=2N mismatches=0
 *         (arm64 with SVE also: sve_spins=S sve_preempted=P sve_mismatches=0)
 */
#define _GNU_SOURCE
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "fpcheck.h"

/* Wait for the token on `from` (registers checked across the block), pass it on `to`. */
static long relay(unsigned seed, long n, int from, int to, int first_writes)
{
    static struct wide_file in, out;
    long mismatches = 0;
    char token = 't';

    wide_pattern(&in, seed);
    for (long i = 0; i < n; i++) {
        if (first_writes && write(to, &token, 1) != 1)
            return -1;
        if (syscall3_checked_wide(SYS_read, from, (long)&token, 1, &in, &out) != 1)
            return -1;
        if (memcmp(&in, &out, sizeof(in)))
            mismatches++;
        if (!first_writes && write(to, &token, 1) != 1)
            return -1;
    }
    return mismatches;
}

#ifdef __aarch64__
/* 20 spins of about 10 ms under QEMU each: some timer ticks, whatever N is. */
#define SVE_SPINS 20
#define SVE_SPIN_ITERATIONS 2000000ul

/* spins rounds of an SVE-live busy loop; into out[0..1]: mismatches, preemptions. */
static void sve_spins(unsigned seed, long spins, long *out)
{
    static struct sve_packed in, got;
    unsigned vl = sve_vl();
    struct rusage before, after;

    sve_pattern(&in, seed);
    getrusage(RUSAGE_SELF, &before);
    out[0] = 0;
    for (long i = 0; i < spins; i++) {
        sve_checked(&in, &got, vl, SVE_SPIN_ITERATIONS);
        if (!sve_equal(&in, &got, vl))
            out[0]++;
    }
    getrusage(RUSAGE_SELF, &after);
    out[1] = after.ru_nivcsw - before.ru_nivcsw;
}
#endif

int main(int argc, char **argv)
{
    long n = argc > 1 ? strtol(argv[1], NULL, 0) : 200;
    int ping[2], pong[2], status;
    cpu_set_t one;
    long *shared = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);

    if (shared == MAP_FAILED || pipe(ping) < 0 || pipe(pong) < 0) {
        perror("fpu-switch: setup");
        return 1;
    }
    CPU_ZERO(&one);
    CPU_SET(0, &one);
    if (sched_setaffinity(0, sizeof(one), &one) < 0) {
        perror("fpu-switch: sched_setaffinity");
        return 1;
    }
    pid_t child = fork();
    if (child < 0) {
        perror("fpu-switch: fork");
        return 1;
    }
    long spins = 0, sve_mine[2] = { 0, 0 };
#ifdef __aarch64__
    if (sve_supported())
        spins = SVE_SPINS;
#endif
    if (child == 0) {
        shared[0] = relay(2, n, ping[0], pong[1], 0);
#ifdef __aarch64__
        if (spins)
            sve_spins(4, spins, &shared[1]);
#endif
        _exit(shared[0] < 0);
    }
    long mine = relay(1, n, pong[0], ping[1], 1);
#ifdef __aarch64__
    if (spins)
        sve_spins(3, spins, sve_mine);
#endif
    if (waitpid(child, &status, 0) < 0 || !WIFEXITED(status) || WEXITSTATUS(status) ||
        mine < 0) {
        fprintf(stderr, "fpu-switch: a task failed\n");
        return 1;
    }
    long total = mine + shared[0];
    printf("fpu-switch: tasks=2 round_trips=%ld switches=%ld mismatches=%ld", n, 2 * n, total);
    if (spins) {
        long sve_bad = sve_mine[0] + shared[1];
        printf(" sve_spins=%ld sve_preempted=%ld sve_mismatches=%ld", 2 * spins,
               sve_mine[1] + shared[2], sve_bad);
        total += sve_bad;
    }
    printf("\n");
    return total == 0 ? 0 : 1;
}
