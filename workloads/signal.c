/*
 * signal: FP/SIMD state across signal delivery and sigreturn. The main flow
 * holds a pattern in its registers (xmm0-15 on x86_64, V0-V31 on arm64)
 * and sends itself SIGUSR1 with kill(); the handler loads a different
 * pattern into every register before returning. After sigreturn the main
 * flow's registers must be exactly as before: the kernel saved them to the
 * signal frame and restored them from it.
 *
 * A second round checks sigreturn against the frame as the handler left
 * it: a SIGUSR2 handler replaces the registers in its frame with a third
 * pattern (fp_frame_edit()), and the main flow must come back from the
 * kill() holding that one.
 *
 * On arm64 with SVE it then does the same with the whole SVE state (Z0-Z31
 * and P0-P15 at the task's vector length) across a BRK: a system call
 * would discard it, an exception does not, so the kernel must put it in
 * the frame's SVE record and load it back. Last, signals sent by kill()
 * right after SVE use, whose handler checks that the frame's SVE record
 * agrees with its FP/SIMD record.
 *
 * On x86_64 the handler also checks, at its first instruction, that it
 * starts from the init state (fpu__clear_user_states()).
 *
 * usage: signal [N]    (default 100 signals)
 * prints: signal: signals=N handled=N mismatches=0 edited=N edit_mismatches=0
 *         (x86_64: handler_not_init=0)
 *         (arm64 with SVE also: sve_signals=N sve_vl=BYTES sve_mismatches=0
 *          sve_syscall_signals=N sve_frame_disagreements=0
 *          sve_syscall_mismatches=0)
 */
#define _GNU_SOURCE
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "fpcheck.h"

static volatile sig_atomic_t handled, edited;
static struct fp_file clobber, edit;

static void on_usr2(int sig, siginfo_t *info, void *context)
{
    (void)sig;
    (void)info;
    edited += fp_frame_edit(context, &edit);
}

static void on_usr1(int sig)
{
    (void)sig;
    fp_load_all(&clobber);
    handled++;
}

#ifdef __aarch64__
#define handler_entry on_usr1
#define handler_not_init 0L
#else
/* The registers the handler started with: its entry saves them first. */
static volatile sig_atomic_t handler_not_init;
struct fp_start at_handler;
FP_DEFINE_START_CAPTURE(handler_entry, at_handler, on_usr1_checked);
void handler_entry(int sig);
void on_usr1_checked(int sig);

void on_usr1_checked(int sig)
{
    if (!fp_start_is_init(&at_handler))
        handler_not_init++;
    on_usr1(sig);
}
#endif

#ifdef __aarch64__
static struct sve_packed sve_clobber;
static unsigned sve_len;
static volatile sig_atomic_t sve_handled;

static void on_trap(int sig, siginfo_t *info, void *context)
{
    (void)sig;
    (void)info;
    sve_load_all(&sve_clobber, sve_len);
    brk_skip(context);
    sve_handled++;
}

static volatile sig_atomic_t sve_syscall_handled, sve_frame_disagreements;

/*
 * A signal delivered from a system call made right after SVE use, V0-V31
 * written just before it (which zeroes Z0-Z31 above them): the frame's SVE
 * record must have no register data, or data whose low halves are the
 * V0-V31 of its FP/SIMD record and the rest zero (61da7c8e2a60,
 * "arm64/signal: Don't assume that TIF_SVE means we saved SVE state").
 */
static void on_urg(int sig, siginfo_t *info, void *context)
{
    (void)sig;
    (void)info;
    if (fp_frame_sve_agrees(context, 1) == 0)
        sve_frame_disagreements++;
    sve_syscall_handled++;
}

/* The SVE round: n BRKs with Z and P live. Prints its part of the summary. */
static int sve_round(long n)
{
    static struct sve_packed in, out;
    long mismatches = 0;

    if (!sve_supported())
        return 0;
    if (brk_catch(on_trap) < 0) {
        perror("signal: sigaction SIGTRAP");
        return -1;
    }
    sve_len = sve_vl();
    sve_pattern(&in, 4);
    sve_pattern(&sve_clobber, 98);
    for (long i = 0; i < n; i++) {
        sve_checked(&in, &out, sve_len, 0);
        if (!sve_equal(&in, &out, sve_len))
            mismatches++;
    }
    /* Then n signals from kill() right after SVE use, V0-V31 live. */
    struct sigaction sa = { .sa_sigaction = on_urg, .sa_flags = SA_SIGINFO };
    struct fp_file v_in, v_out;
    long v_mismatches = 0;

    sigemptyset(&sa.sa_mask);
    if (sigaction(SIGURG, &sa, NULL) < 0) {
        perror("signal: sigaction SIGURG");
        return -1;
    }
    fp_pattern(&v_in, 21);
    for (long i = 0; i < n; i++) {
        sve_load_all(&in, sve_len);     /* SVE in use again: TIF_SVE */
        syscall3_checked(SYS_kill, getpid(), SIGURG, 0, &v_in, &v_out);
        if (!fp_equal(&v_in, &v_out))
            v_mismatches++;
    }
    printf(" sve_signals=%ld sve_vl=%u sve_mismatches=%ld sve_syscall_signals=%ld "
           "sve_frame_disagreements=%ld sve_syscall_mismatches=%ld", (long)sve_handled,
           sve_len, mismatches, (long)sve_syscall_handled, (long)sve_frame_disagreements,
           v_mismatches);
    return sve_handled == n && mismatches == 0 && sve_syscall_handled == n &&
           sve_frame_disagreements == 0 && v_mismatches == 0 ? 0 : -1;
}
#else
static int sve_round(long n)
{
    (void)n;
    return 0;
}
#endif

int main(int argc, char **argv)
{
    long n = argc > 1 ? strtol(argv[1], NULL, 0) : 100;
    struct sigaction sa;
    struct fp_file in, out;
    long mismatches = 0, edit_mismatches = 0;
    pid_t self = getpid();
    int sve_failed;

    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = handler_entry;
    sigemptyset(&sa.sa_mask);
    if (sigaction(SIGUSR1, &sa, NULL) < 0) {
        perror("signal: sigaction");
        return 1;
    }
    fp_pattern(&in, 3);
    fp_pattern(&clobber, 99);
    for (long i = 0; i < n; i++) {
        /* The signal is delivered on the way out of this very syscall. */
        syscall3_checked(SYS_kill, self, SIGUSR1, 0, &in, &out);
        if (!fp_equal(&in, &out))
            mismatches++;
    }
    memset(&sa, 0, sizeof(sa));
    sa.sa_sigaction = on_usr2;
    sa.sa_flags = SA_SIGINFO;
    sigemptyset(&sa.sa_mask);
    if (sigaction(SIGUSR2, &sa, NULL) < 0) {
        perror("signal: sigaction SIGUSR2");
        return 1;
    }
    fp_pattern(&edit, 55);
    for (long i = 0; i < n; i++) {
        syscall3_checked(SYS_kill, self, SIGUSR2, 0, &in, &out);
        if (!fp_equal(&edit, &out))
            edit_mismatches++;
    }
    printf("signal: signals=%ld handled=%ld mismatches=%ld edited=%ld edit_mismatches=%ld", n,
           (long)handled, mismatches, (long)edited, edit_mismatches);
#ifndef __aarch64__
    printf(" handler_not_init=%ld", (long)handler_not_init);
#endif
    sve_failed = sve_round(n);
    printf("\n");
    return (handled == n && mismatches == 0 && edited == n && edit_mismatches == 0 &&
            !handler_not_init && !sve_failed) ? 0 : 1;
}
