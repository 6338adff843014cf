/*
 * ptrace-fp: a tracer writes its tracee's FP registers, as a debugger
 * does. Each round the child holds a pattern in xmm0-15 and stops itself
 * inside a system call (SIGSTOP, a signal-delivery-stop); the parent reads
 * the child's FP state, puts a second pattern in its XMM registers and
 * writes it back, alternately with PTRACE_SETFPREGS (xfpregs_set(), the
 * FXSAVE layout) and PTRACE_SETREGSET NT_X86_XSTATE (xstateregs_set(), the
 * XSAVE layout), then resumes it. The child checks that it comes back from
 * the system call holding exactly what the tracer wrote.
 *
 * On arm64 each write is PTRACE_SETREGSET NT_PRFPREG (fpr_set(), struct
 * user_fpsimd_state) with the second pattern in V0-V31.
 *
 * With "seed", the parent first arms the fputrace-seed module's REGSET
 * ioctl before each write (workloads/seed/): the write is then damaged in
 * the tracee's buffer, and the child sees it.
 *
 * usage: ptrace-fp [N [seed]]    (default 20 rounds)
 * prints: ptrace-fp: rounds=N fpregs=N/2 xstate=N/2 mismatches=0 failed=0
 *         (arm64: rounds=N fpsimd=N mismatches=0 failed=0)
 */
#include <elf.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/ptrace.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/user.h>
#include <sys/wait.h>
#include <unistd.h>

#include "fpcheck.h"
#include "seed/fputrace_seed.h"

/* Where XMM0 starts in both layouts: the FXSAVE region's xmm_space. */
#define XMM_OFFSET 160

static unsigned written_seed(long round)
{
    return 500 + (unsigned)round;
}

/* The child: stop in kill() with one pattern, come back with the tracer's. */
static int child(long n)
{
    struct fp_file in, out, want;
    int mismatches = 0;

    if (ptrace(PTRACE_TRACEME, 0, NULL, NULL) != 0)
        _exit(100);
    for (long i = 0; i < n; i++) {
        fp_pattern(&in, 400 + (unsigned)i);
        fp_pattern(&want, written_seed(i));
        syscall3_checked(SYS_kill, getpid(), SIGSTOP, 0, &in, &out);
        if (!fp_equal(&want, &out))
            mismatches++;
    }
    _exit(mismatches);
}

#ifdef __aarch64__
/* Write round i's pattern into the stopped child's V0-V31. */
static int write_fp(pid_t pid, long i, int seed_fd)
{
    struct fp_file f;
    struct user_fpsimd_struct fpsimd;
    struct iovec iov = { &fpsimd, sizeof(fpsimd) };

    fp_pattern(&f, written_seed(i));
    if (seed_fd >= 0 && ioctl(seed_fd, FPUTRACE_SEED_REGSET) != 0)
        return -1;
    if (ptrace(PTRACE_GETREGSET, pid, (void *)NT_PRFPREG, &iov) != 0)
        return -1;
    memcpy(fpsimd.vregs, f.v, sizeof(f.v));
    return (int)ptrace(PTRACE_SETREGSET, pid, (void *)NT_PRFPREG, &iov);
}
#else
/* Write round i's pattern into the stopped child's XMM registers. */
static int write_fp(pid_t pid, long i, int seed_fd)
{
    struct fp_file f;

    fp_pattern(&f, written_seed(i));
    if (seed_fd >= 0 && ioctl(seed_fd, FPUTRACE_SEED_REGSET) != 0)
        return -1;
    if (i % 2 == 0) {
        struct user_fpregs_struct fx;

        if (ptrace(PTRACE_GETFPREGS, pid, NULL, &fx) != 0)
            return -1;
        memcpy((char *)&fx + XMM_OFFSET, &f, sizeof(f));
        return (int)ptrace(PTRACE_SETFPREGS, pid, NULL, &fx);
    } else {
        static char xstate[16384] __attribute__((aligned(64)));
        struct iovec iov = { xstate, sizeof(xstate) };

        if (ptrace(PTRACE_GETREGSET, pid, (void *)NT_X86_XSTATE, &iov) != 0)
            return -1;
        memcpy(xstate + XMM_OFFSET, &f, sizeof(f));
        /* XSTATE_BV: SSE in use, or the write would put XMM in its init state. */
        xstate[512] |= 2;
        return (int)ptrace(PTRACE_SETREGSET, pid, (void *)NT_X86_XSTATE, &iov);
    }
}
#endif

int main(int argc, char **argv)
{
    long n = argc > 1 ? strtol(argv[1], NULL, 0) : 20;
    int seed_fd = -1, status;
    long failed = 0;
    pid_t pid;

    if (argc > 2 && !strcmp(argv[2], "seed")) {
        seed_fd = open(FPUTRACE_SEED_DEVICE, O_RDWR);
        if (seed_fd < 0) {
            perror("ptrace-fp: " FPUTRACE_SEED_DEVICE);
            return 1;
        }
    }
    pid = fork();
    if (pid < 0) {
        perror("ptrace-fp: fork");
        return 1;
    }
    if (pid == 0)
        child(n);
    for (long i = 0; i < n; i++) {
        if (waitpid(pid, &status, 0) != pid || !WIFSTOPPED(status)) {
            failed++;
            break;
        }
        if (write_fp(pid, i, seed_fd) != 0)
            failed++;
        if (ptrace(PTRACE_CONT, pid, NULL, NULL) != 0)
            failed++;
    }
    if (waitpid(pid, &status, 0) != pid || !WIFEXITED(status) || WEXITSTATUS(status) >= 100) {
        fprintf(stderr, "ptrace-fp: the child did not finish its rounds\n");
        return 1;
    }
#ifdef __aarch64__
    printf("ptrace-fp: rounds=%ld fpsimd=%ld mismatches=%d failed=%ld\n",
           n, n, WEXITSTATUS(status), failed);
#else
    printf("ptrace-fp: rounds=%ld fpregs=%ld xstate=%ld mismatches=%d failed=%ld\n",
           n, (n + 1) / 2, n / 2, WEXITSTATUS(status), failed);
#endif
    return failed || (seed_fd < 0 && WEXITSTATUS(status)) ? 1 : 0;
}
