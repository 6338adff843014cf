/*
 * fpu-switch: two tasks pinned to one CPU, each holding its own values in
 * the AVX registers ymm0-15, hand a token back and forth through two pipes.
 * Every hand-off blocks one task in read() and wakes the other, so each one
 * is a context switch in which the kernel must save one task's FPU state
 * and (lazily) restore the other's. Both tasks check all their registers
 * across every blocking read; the parent prints the totals.
 *
 * Pipes rather than sched_yield(): CFS does not switch on a yield to a task
 * whose vruntime is far ahead, so yields do not guarantee a switch.
 *
 * usage: fpu-switch [N]    (round trips, default 200)
 * prints: fpu-switch: tasks=2 round_trips=N switches=2N mismatches=0
 */
#define _GNU_SOURCE
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "fpcheck.h"

/* Wait for the token on `from` (registers checked across the block), pass it on `to`. */
static long relay(unsigned seed, long n, int from, int to, int first_writes)
{
    static struct ymm_file in, out;
    long mismatches = 0;
    char token = 't';

    ymm_pattern(&in, seed);
    for (long i = 0; i < n; i++) {
        if (first_writes && write(to, &token, 1) != 1)
            return -1;
        if (syscall3_checked_avx(SYS_read, from, (long)&token, 1, &in, &out) != 1)
            return -1;
        if (memcmp(&in, &out, sizeof(in)))
            mismatches++;
        if (!first_writes && write(to, &token, 1) != 1)
            return -1;
    }
    return mismatches;
}

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
    if (child == 0) {
        shared[0] = relay(2, n, ping[0], pong[1], 0);
        _exit(shared[0] < 0);
    }
    long mine = relay(1, n, pong[0], ping[1], 1);
    if (waitpid(child, &status, 0) < 0 || !WIFEXITED(status) || WEXITSTATUS(status) ||
        mine < 0) {
        fprintf(stderr, "fpu-switch: a task failed\n");
        return 1;
    }
    long total = mine + shared[0];
    printf("fpu-switch: tasks=2 round_trips=%ld switches=%ld mismatches=%ld\n", n, 2 * n, total);
    return total == 0 ? 0 : 1;
}
