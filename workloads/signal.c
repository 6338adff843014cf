/*
 * signal: FPU state across signal delivery and sigreturn. The main flow holds
 * a pattern in xmm0-15 and sends itself SIGUSR1 with kill(); the handler
 * loads a different pattern into every register before returning. After
 * sigreturn the main flow's registers must be exactly as before: the kernel
 * saved them to the signal frame and restored them from it.
 *
 * usage: signal [N]    (default 100 signals)
 * prints: signal: signals=N handled=N mismatches=0
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "fpcheck.h"

static volatile sig_atomic_t handled;
static struct xmm_file clobber;

static void on_usr1(int sig)
{
    (void)sig;
    __asm__ volatile(XMM_LOAD_ALL("%0")
                     : : "r"(&clobber)
                     : "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7",
                       "xmm8", "xmm9", "xmm10", "xmm11", "xmm12", "xmm13", "xmm14", "xmm15");
    handled++;
}

int main(int argc, char **argv)
{
    long n = argc > 1 ? strtol(argv[1], NULL, 0) : 100;
    struct sigaction sa;
    struct xmm_file in, out;
    long mismatches = 0;
    pid_t self = getpid();

    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_usr1;
    sigemptyset(&sa.sa_mask);
    if (sigaction(SIGUSR1, &sa, NULL) < 0) {
        perror("signal: sigaction");
        return 1;
    }
    xmm_pattern(&in, 3);
    xmm_pattern(&clobber, 99);
    for (long i = 0; i < n; i++) {
        /* The signal is delivered on the way out of this very syscall. */
        syscall3_checked(SYS_kill, self, SIGUSR1, 0, &in, &out);
        if (!xmm_equal(&in, &out))
            mismatches++;
    }
    printf("signal: signals=%ld handled=%ld mismatches=%ld\n", n, (long)handled, mismatches);
    return (handled == n && mismatches == 0) ? 0 : 1;
}
