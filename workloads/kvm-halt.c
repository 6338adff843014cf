/*
 * kvm-halt: a vCPU that halts in the kernel and is woken by a signal, as a
 * VMM's vCPU thread is when its guest idles: KVM_RUN returns EINTR from
 * inside the halt, with the vCPU thread having slept while another task
 * used the FPU.
 *
 * The VM has an in-kernel local APIC (KVM_CREATE_IRQCHIP), so the guest's
 * HLT blocks in kvm_vcpu_halt() instead of exiting to user space. A
 * SIGALRM every millisecond (setitimer, no SA_RESTART) ends the block:
 * vcpu_run() sees the signal and KVM_RUN returns EINTR, leaving the guest
 * fpstate as the context switch saved it. A CPU-bound child holding its
 * own SSE pattern shares the CPU, so the registers hold the child's state
 * when the vCPU thread comes back. (c9aef3b85f42, "KVM: x86: Handle
 * TIF_NEED_FPU_LOAD in kvm_{load,put}_guest_fpu()", is the fix for a
 * kvm_put_guest_fpu() that saved those registers into the guest.)
 *
 * Round i: the guest loads xmm0 from guest memory (pattern i, written by
 * this program), halts with interrupts off, and once made runnable again
 * (KVM_SET_MP_STATE) sends xmm0's low 32 bits to port 0x10. The program
 * checks them, and its own SSE registers across every KVM_RUN; the child
 * checks its own across every preemption.
 *
 * usage: kvm-halt [N]       (default 20 rounds)
 * prints: kvm-halt: rounds=N halt_wakes=N guest_mismatches=0 fpu_mismatches=0
 *         hog_rounds=N hog_mismatches=0
 */
#include <errno.h>
#include <linux/kvm.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

#include "fpcheck.h"
#include "kvmvm.h"

#define GUEST_MEM_SIZE  0x10000
#define GUEST_CODE      0x1000
#define GUEST_PATTERN   0x2000      /* xmm0 for this round, 16 bytes */
#define PORT_REPORT     0x10
#define HOG_SPIN        200000
/* Rounds whose KVM_RUN never returns EINTR from the halt check nothing. */
#define MAX_RUNS_PER_ROUND 10000

/*
 * Real-mode guest:
 *   loop: movdqu xmm0, [0x2000]   ; this round's pattern
 *         cli
 *         hlt                     ; blocks in the kernel until a signal
 *         movd eax, xmm0
 *         out 0x10, eax           ; what xmm0 held after the halt
 *         jmp loop
 */
static const uint8_t guest_code[] = {
    0xf3, 0x0f, 0x6f, 0x06, 0x00, 0x20,     /* movdqu xmm0, [0x2000] */
    0xfa,                                   /* cli */
    0xf4,                                   /* hlt */
    0x66, 0x0f, 0x7e, 0xc0,                 /* movd eax, xmm0 */
    0x66, 0xe7, PORT_REPORT,                /* out 0x10, eax */
    0xeb, 0xef,                             /* jmp loop */
};

static void on_alarm(int sig)
{
    (void)sig;
}

/* The CPU-bound child: counts rounds and mismatches of its own SSE state. */
static void hog(volatile long *rounds, volatile long *mismatches)
{
    for (unsigned seed = 1;; seed++) {
        *mismatches += xmm_hold_round(seed, HOG_SPIN);
        (*rounds)++;
    }
}

int main(int argc, char **argv)
{
    long n = argc > 1 ? strtol(argv[1], NULL, 0) : 20;
    long halt_wakes = 0, guest_mismatches = 0, fpu_mismatches = 0, rounds = 0;
    int kvm, vm, vcpu;
    struct kvm_run *run;
    struct fp_file in, out;
    uint8_t *mem;

    mem = kvm_vm_with_memory(0, GUEST_MEM_SIZE, &kvm, &vm);
    /* Before the vCPU: its local APIC is created with it. */
    if (ioctl(vm, KVM_CREATE_IRQCHIP, 0) < 0)
        die("KVM_CREATE_IRQCHIP");
    memcpy(mem + GUEST_CODE, guest_code, sizeof(guest_code));
    vcpu = kvm_real_mode_vcpu(kvm, vm, GUEST_CODE, &run);

    volatile long *shared = mmap(NULL, 4096, PROT_READ | PROT_WRITE,
                                 MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (shared == MAP_FAILED)
        die("mmap shared counters");
    pid_t hog_pid = fork();
    if (hog_pid < 0)
        die("fork");
    if (hog_pid == 0)
        hog(&shared[0], &shared[1]);

    struct sigaction sa = { .sa_handler = on_alarm };   /* no SA_RESTART */
    struct itimerval tick = { { 0, 1000 }, { 0, 1000 } };
    if (sigaction(SIGALRM, &sa, NULL) < 0 || setitimer(ITIMER_REAL, &tick, NULL) < 0)
        die("SIGALRM timer");

    fp_pattern(&in, 7);
    for (long i = 0; i < n; i++, rounds++) {
        struct fp_file want;
        uint32_t got = 0;
        int reported = 0;

        fp_pattern(&want, 1000 + i);
        memcpy(mem + GUEST_PATTERN, want.r[0], 16);
        for (int k = 0; k < MAX_RUNS_PER_ROUND && !reported; k++) {
            long ret = syscall3_checked(SYS_ioctl, vcpu, KVM_RUN, 0, &in, &out);

            if (!fp_equal(&in, &out))
                fpu_mismatches++;
            if (ret == -EINTR) {
                struct kvm_mp_state mp;

                if (ioctl(vcpu, KVM_GET_MP_STATE, &mp) < 0)
                    die("KVM_GET_MP_STATE");
                if (mp.mp_state == KVM_MP_STATE_HALTED) {
                    halt_wakes++;
                    mp.mp_state = KVM_MP_STATE_RUNNABLE;
                    if (ioctl(vcpu, KVM_SET_MP_STATE, &mp) < 0)
                        die("KVM_SET_MP_STATE");
                }
                continue;
            }
            if (ret < 0) {
                errno = -ret;
                die("KVM_RUN");
            }
            if (run->exit_reason != KVM_EXIT_IO || run->io.port != PORT_REPORT ||
                run->io.size != 4) {
                fprintf(stderr, "kvm-halt: unexpected exit reason %u\n", run->exit_reason);
                break;
            }
            memcpy(&got, (uint8_t *)run + run->io.data_offset, 4);
            reported = 1;
        }
        uint32_t expected;
        memcpy(&expected, want.r[0], 4);
        if (!reported || got != expected) {
            guest_mismatches++;
            if (reported)
                fprintf(stderr, "kvm-halt: round %ld: guest xmm0 %#x after the halt, "
                        "not %#x\n", i, got, expected);
        }
    }
    struct itimerval off = { { 0, 0 }, { 0, 0 } };
    setitimer(ITIMER_REAL, &off, NULL);
    kill(hog_pid, SIGKILL);
    waitpid(hog_pid, NULL, 0);
    printf("kvm-halt: rounds=%ld halt_wakes=%ld guest_mismatches=%ld fpu_mismatches=%ld "
           "hog_rounds=%ld hog_mismatches=%ld\n", rounds, halt_wakes, guest_mismatches,
           fpu_mismatches, shared[0], shared[1]);
    return (halt_wakes > 0 && guest_mismatches == 0 && fpu_mismatches == 0 &&
            shared[1] == 0) ? 0 : 1;
}
