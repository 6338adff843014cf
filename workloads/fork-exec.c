/*
 * fork-exec: the process life cycle around FPU state, as every shell script
 * runs it. Each round:
 *   1. fork(): the child checks that it returns from fork() holding the
 *      parent's registers at the fork (the kernel copied them), then exits;
 *   2. the parent, before the child has run, loads new values into every
 *      XMM register and execs itself;
 *   3. the freshly exec'd image loads XMM values and execs again at once,
 *      before any switch (what a "#!" interpreter chain does);
 *   4. the final image reaps the child and checks that its registers
 *      survive a system call.
 * Each exec'd image checks that it started from the init state: its entry
 * point saves the registers before the C library's start-up code uses
 * them (FP_DEFINE_START_CAPTURE).
 *
 * usage: fork-exec [N]    (default 20 rounds)
 * prints: fork-exec: rounds=N execs=2N child_mismatches=0 syscall_mismatches=0
 *                    exec_not_init=0
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "fpcheck.h"

#define SELF "/proc/self/exe"

static char *const *environment;

/* What this image started with (its entry point is fork_exec_entry). */
struct fp_start at_exec;
FP_DEFINE_START_CAPTURE(fork_exec_entry, at_exec, _start);

/* Re-exec this program at `stage` with the running counts in argv. */
static void exec_stage(const char *stage, long round, long n, long counts[3], unsigned seed)
{
    char a[6][32];
    char *argv[] = { "fork-exec", a[0], a[1], a[2], a[3], a[4], a[5], NULL };
    struct fp_file in, out;

    snprintf(a[0], sizeof(a[0]), "%ld", n);
    snprintf(a[1], sizeof(a[1]), "%s", stage);
    snprintf(a[2], sizeof(a[2]), "%ld", round);
    for (int i = 0; i < 3; i++)
        snprintf(a[3 + i], sizeof(a[3 + i]), "%ld", counts[i]);
    /* execve with every XMM register loaded: the kernel must drop them. */
    fp_pattern(&in, seed);
    syscall3_checked(SYS_execve, (long)SELF, (long)argv, (long)environment, &in, &out);
    perror("fork-exec: execve");
    exit(1);
}

int main(int argc, char **argv, char **envp)
{
    long n = argc > 1 ? strtol(argv[1], NULL, 0) : 20;
    const char *stage = argc > 2 ? argv[2] : "fork";
    long round = argc > 3 ? strtol(argv[3], NULL, 0) : 0;
    /* child and syscall mismatches, and execs that gave no init state, so far */
    long counts[3] = { argc > 4 ? strtol(argv[4], NULL, 0) : 0,
                       argc > 5 ? strtol(argv[5], NULL, 0) : 0,
                       argc > 6 ? strtol(argv[6], NULL, 0) : 0 };
    struct fp_file in, out;
    int status;

    environment = envp;
    if (!fp_start_is_init(&at_exec))
        counts[2]++;
    if (strcmp(stage, "again") == 0)
        exec_stage("reap", round, n, counts, 200 + (unsigned)round);
    if (strcmp(stage, "reap") == 0) {
        if (wait(&status) < 0 || !WIFEXITED(status) || WEXITSTATUS(status) != 0)
            counts[0]++;
        fp_pattern(&in, 300 + (unsigned)round);
        syscall3_checked(SYS_getpid, 0, 0, 0, &in, &out);
        if (!fp_equal(&in, &out))
            counts[1]++;
        round++;
    }
    if (round < n) {
        long pid;

        fp_pattern(&in, 100 + (unsigned)round);
        /* Parent and child both come back here: each checks its registers. */
        pid = syscall3_checked(SYS_fork, 0, 0, 0, &in, &out);
        if (pid == 0)
            _exit(fp_equal(&in, &out) ? 0 : 1);
        if (pid < 0) {
            perror("fork-exec: fork");
            return 1;
        }
        if (!fp_equal(&in, &out))
            counts[1]++;
        exec_stage("again", round, n, counts, 150 + (unsigned)round);
    }
    printf("fork-exec: rounds=%ld execs=%ld child_mismatches=%ld syscall_mismatches=%ld "
           "exec_not_init=%ld\n", n, 2 * n, counts[0], counts[1], counts[2]);
    return counts[0] || counts[1] || counts[2];
}
