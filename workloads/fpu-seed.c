/*
 * fpu-seed: drive the fputrace-seed test module (workloads/seed/) and say
 * what each of its ioctls did to this task's registers. xmm0-15 hold a
 * known pattern across every ioctl; the workload compares them afterwards,
 * so it reports the damage independently of the trace.
 *
 * usage: fpu-seed [N]    (default 5 calls of each ioctl)
 * prints: fpu-seed: correct=N correct_changed=0 clobber=N clobber_changed=N
 *                   corrupt=N corrupt_changed=N missed=N missed_changed=N failed=0
 *         fpu-seed N sigframe: only the SIGFRAME ioctl, N times, each with its
 *         SIGUSR1 handled (the registers are compared after the sigreturn):
 * prints: fpu-seed: sigframe=N sigframe_changed=N signals=N failed=0
 *         fpu-seed N sigreturn: the same with the SIGRETURN ioctl:
 * prints: fpu-seed: sigreturn=N sigreturn_changed=N signals=N failed=0
 *         fpu-seed N handler: only the HANDLER ioctl, N times: each SIGUSR1
 *         handler checks, at its first instruction, that it starts from
 *         the init state:
 * prints: fpu-seed: handler=N handler_not_init=N signals=N failed=0
 *         fpu-seed N exec: N children that each arm the EXEC ioctl and
 *         exec this program, whose first instruction checks that it
 *         starts from the init state:
 * prints: fpu-seed: exec=N exec_not_init=N failed=0
 *         fpu-seed N irqfpu: the module's hard-interrupt FPU user every
 *         IRQ_FPU_PERIOD_NS (no bug of its own) while N signals from
 *         kill() are delivered and returned from, each checked:
 * prints: fpu-seed: irqfpu=N irqfpu_changed=0 irq_fpu_uses=N irq_fpu_refused=N
 *                   signals=N clocksource=NAME failed=0
 * Exit status 0 when the module answered every call (changed registers are
 * the expected outcome of the buggy ioctls, not a failure of the workload);
 * with irqfpu, a changed register is the kernel's bug, and fails it.
 */
#include <fcntl.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "fpcheck.h"
#include "seed/fputrace_seed.h"

/* 2 us: several interrupts in each signal delivery and sigreturn. */
#define IRQ_FPU_PERIOD_NS 2000

/*
 * Wait (at most 10 s) for a clocksource that high-resolution timers can
 * use: until one is, an hrtimer fires only at the tick. Early in boot x86
 * runs on tsc-early, and tsc replaces it about a second later
 * (tsc_refine_calibration_work()); a small kernel gets here sooner. Then
 * one more tick for the switch to high resolution. Returns its name.
 */
static const char *hres_clocksource(void)
{
    static char name[64];

    for (int i = 0; i < 1000; i++) {
        FILE *f = fopen("/sys/devices/system/clocksource/clocksource0/current_clocksource", "r");

        name[0] = 0;
        if (f) {
            if (!fgets(name, sizeof(name), f))
                name[0] = 0;
            fclose(f);
        }
        name[strcspn(name, "\n")] = 0;
        if (name[0] && strcmp(name, "tsc-early") && strcmp(name, "jiffies") &&
            strcmp(name, "refined-jiffies"))
            break;
        usleep(10000);
    }
    usleep(20000);
    return name[0] ? name : "unknown";
}

static long run(int fd, unsigned long cmd, long n, unsigned seed, long *failed)
{
    struct fp_file in, out;
    long changed = 0;

    for (long i = 0; i < n; i++) {
        fp_pattern(&in, seed + (unsigned)i);
        if (syscall3_checked(SYS_ioctl, fd, (long)cmd, 0, &in, &out) != 0)
            (*failed)++;
        if (!fp_equal(&in, &out))
            changed++;
    }
    return changed;
}

static volatile sig_atomic_t signals, handler_not_init;

static void on_sigusr1(int sig)
{
    (void)sig;
    signals++;
}

/*
 * The registers this program and its SIGUSR1 handler (in handler mode)
 * started with, caught before any compiled code ran. The program's entry
 * point is fpu_seed_entry (meson.build: -e).
 */
struct fp_start at_exec, at_handler;
FP_DEFINE_START_CAPTURE(fpu_seed_entry, at_exec, _start);
FP_DEFINE_START_CAPTURE(on_sigusr1_entry, at_handler, on_sigusr1_checked);
void on_sigusr1_entry(int sig);
void on_sigusr1_checked(int sig);

void on_sigusr1_checked(int sig)
{
    (void)sig;
    signals++;
    if (!fp_start_is_init(&at_handler))
        handler_not_init++;
}

/* N children, each exec'ing this program with the EXEC ioctl armed. */
static int exec_children(int fd, long n)
{
    long not_init = 0, failed = 0;

    for (long i = 0; i < n; i++) {
        int status;
        pid_t pid = fork();

        if (pid == 0) {
            if (ioctl(fd, FPUTRACE_SEED_EXEC) != 0)
                _exit(3);
            execl("/proc/self/exe", "fpu-seed", "1", "exec-child", (char *)NULL);
            _exit(4);
        }
        if (pid < 0 || waitpid(pid, &status, 0) != pid || !WIFEXITED(status))
            failed++;
        else if (WEXITSTATUS(status) == 2)
            not_init++;
        else if (WEXITSTATUS(status) != 0)
            failed++;
    }
    printf("fpu-seed: exec=%ld exec_not_init=%ld failed=%ld\n", n, not_init, failed);
    return failed ? 1 : 0;
}

int main(int argc, char **argv)
{
    long n = argc > 1 ? strtol(argv[1], NULL, 0) : 5;
    long failed = 0, correct, clobber, corrupt, missed;
    int fd;

    /* An exec'd child: did the kernel hand it the init state? */
    if (argc > 2 && !strcmp(argv[2], "exec-child"))
        return fp_start_is_init(&at_exec) ? 0 : 2;
    fd = open(FPUTRACE_SEED_DEVICE, O_RDWR);
    if (fd < 0) {
        perror("fpu-seed: " FPUTRACE_SEED_DEVICE);
        return 1;
    }
    if (argc > 2 && (!strcmp(argv[2], "sigframe") || !strcmp(argv[2], "sigreturn"))) {
        struct sigaction sa = { .sa_handler = on_sigusr1 };
        bool frame = !strcmp(argv[2], "sigframe");
        long changed;

        if (sigaction(SIGUSR1, &sa, NULL) != 0) {
            perror("fpu-seed: sigaction");
            return 1;
        }
        changed = run(fd, frame ? FPUTRACE_SEED_SIGFRAME : FPUTRACE_SEED_SIGRETURN, n,
                      frame ? 130 : 160, &failed);
        printf("fpu-seed: %s=%ld %s_changed=%ld signals=%ld failed=%ld\n",
               argv[2], n, argv[2], changed, (long)signals, failed);
        return failed || signals != n ? 1 : 0;
    }
    if (argc > 2 && !strcmp(argv[2], "handler")) {
        struct sigaction sa = { .sa_handler = on_sigusr1_entry };

        if (sigaction(SIGUSR1, &sa, NULL) != 0) {
            perror("fpu-seed: sigaction");
            return 1;
        }
        for (long i = 0; i < n; i++)
            if (ioctl(fd, FPUTRACE_SEED_HANDLER) != 0)
                failed++;
        printf("fpu-seed: handler=%ld handler_not_init=%ld signals=%ld failed=%ld\n",
               n, (long)handler_not_init, (long)signals, failed);
        return failed || signals != n ? 1 : 0;
    }
    if (argc > 2 && !strcmp(argv[2], "exec"))
        return exec_children(fd, n);
    if (argc > 2 && !strcmp(argv[2], "irqfpu")) {
        struct sigaction sa = { .sa_handler = on_sigusr1 };
        struct fp_file in, out;
        long changed = 0;

        if (sigaction(SIGUSR1, &sa, NULL) != 0) {
            perror("fpu-seed: sigaction");
            return 1;
        }
        const char *clock = hres_clocksource();

        if (ioctl(fd, FPUTRACE_SEED_IRQ_FPU_START, IRQ_FPU_PERIOD_NS) != 0) {
            perror("fpu-seed: IRQ_FPU_START");
            return 1;
        }
        for (long i = 0; i < n; i++) {
            fp_pattern(&in, 190 + (unsigned)i);
            syscall3_checked(SYS_kill, getpid(), SIGUSR1, 0, &in, &out);
            if (!fp_equal(&in, &out))
                changed++;
        }
        long counts[2] = { 0, 0 };
        int stopped = ioctl(fd, FPUTRACE_SEED_IRQ_FPU_STOP, counts);
        printf("fpu-seed: irqfpu=%ld irqfpu_changed=%ld irq_fpu_uses=%ld irq_fpu_refused=%ld "
               "signals=%ld clocksource=%s failed=%d\n", n, changed, counts[0], counts[1],
               (long)signals, clock, stopped != 0);
        return stopped != 0 || signals != n || changed ? 1 : 0;
    }
    correct = run(fd, FPUTRACE_SEED_CORRECT, n, 10, &failed);
    clobber = run(fd, FPUTRACE_SEED_CLOBBER, n, 40, &failed);
    corrupt = run(fd, FPUTRACE_SEED_CORRUPT, n, 70, &failed);
    missed = run(fd, FPUTRACE_SEED_MISSED, n, 100, &failed);
    printf("fpu-seed: correct=%ld correct_changed=%ld clobber=%ld clobber_changed=%ld "
           "corrupt=%ld corrupt_changed=%ld missed=%ld missed_changed=%ld failed=%ld\n",
           n, correct, n, clobber, n, corrupt, n, missed, failed);
    return failed ? 1 : 0;
}
