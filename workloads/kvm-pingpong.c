/*
 * kvm-pingpong: a minimal KVM user: one vCPU in real mode runs x87 and SSE
 * arithmetic, then leaves to user space with an OUT. Each KVM_RUN is one VM
 * entry and exit that the trace must show; the program counts them itself
 * and checks that its own SSE registers survive every KVM_RUN.
 *
 * usage: kvm-pingpong [N [hog]]    (default 200 round trips)
 * prints: kvm-pingpong: kvm_run=N io_exits=N fpu_mismatches=0 guest_result=...
 *
 * With "hog" (the kvm-hog workload), a CPU-bound child holding its own SSE
 * state shares the CPU, and the guest spins a while before each exit, so
 * the vCPU thread is preempted inside KVM_RUN with the guest's state live.
 * The child checks its registers across every preemption; the summary then
 * starts with "kvm-hog:" and adds hog_rounds and hog_mismatches. KVM_RUN
 * goes on past N until the child has checked at least HOG_MIN_ROUNDS
 * times, so kvm_run may exceed N.
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <signal.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "fpcheck.h"
#include "kvmvm.h"

#define GUEST_MEM_SIZE  0x10000
#define GUEST_CODE      0x1000
#define GUEST_DATA      0x2000
#define GUEST_SPIN      0x2004      /* guest iterations before each exit */
#define PORT_EXIT       0x10
#define HOG_GUEST_SPIN  20000
#define HOG_SPIN        200000
/*
 * KVM_RUN goes on past N until the hog has checked its registers this many
 * times, each round held across the vCPU thread's time on the CPU: with N
 * alone it could be killed before its first check, which then checked
 * nothing (hog_rounds=0).
 */
#define HOG_MIN_ROUNDS  2
#define HOG_MAX_EXTRA   100000      /* ... but no more runs than this */

/*
 * Real-mode guest; its SSE state changes on every round trip (xmm0 counts
 * down), so each save of the guest's registers has something new to save:
 *         pcmpeqd xmm1, xmm1                        ; xmm1 = -1 in every lane
 *   loop: fld1; fadd st0,st0; fstp dword [0x2000]   ; x87: 2.0
 *         paddd xmm0, xmm1                          ; SSE: xmm0 -= 1
 *         mov cx, [0x2004]; jcxz out; spin: loop spin
 *   out:  out 0x10, al                              ; exit to user space
 *         jmp loop
 */
static const uint8_t guest_code[] = {
    0x66, 0x0f, 0x76, 0xc9,         /* pcmpeqd xmm1, xmm1 */
    0xd9, 0xe8,                     /* loop: fld1 */
    0xd8, 0xc0,                     /* fadd st0, st0 */
    0xd9, 0x1e, 0x00, 0x20,         /* fstp dword [0x2000] */
    0x66, 0x0f, 0xfe, 0xc1,         /* paddd xmm0, xmm1 */
    0x8b, 0x0e, 0x04, 0x20,         /* mov cx, [0x2004] */
    0xe3, 0x02,                     /* jcxz out */
    0xe2, 0xfe,                     /* spin: loop spin */
    0xe6, PORT_EXIT,                /* out: out 0x10, al */
    0xeb, 0xe8,                     /* jmp loop */
};

/*
 * The CPU hog: holds a pattern in xmm0-15 through a long integer spin (where
 * it is preempted), then checks it; counts rounds and mismatches in memory
 * shared with the parent, until the parent kills it.
 */
static void hog(volatile long *rounds, volatile long *mismatches)
{
    for (unsigned seed = 1;; seed++) {
        *mismatches += xmm_hold_round(seed, HOG_SPIN);
        (*rounds)++;
    }
}

int main(int argc, char **argv)
{
    long n = argc > 1 ? strtol(argv[1], NULL, 0) : 200;
    int with_hog = argc > 2 && strcmp(argv[2], "hog") == 0;
    volatile long *shared;
    pid_t hog_pid = -1;
    int kvm, vm, vcpu;
    long runs = 0, io_exits = 0, mismatches = 0;
    struct kvm_run *run;
    uint8_t *mem;
    struct fp_file in, out;

    mem = kvm_vm_with_memory(0, GUEST_MEM_SIZE, &kvm, &vm);
    memcpy(mem + GUEST_CODE, guest_code, sizeof(guest_code));
    *(uint16_t *)(mem + GUEST_SPIN) = with_hog ? HOG_GUEST_SPIN : 0;
    vcpu = kvm_real_mode_vcpu(kvm, vm, GUEST_CODE, &run);

    shared = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (shared == MAP_FAILED)
        die("mmap shared counters");
    if (with_hog) {
        hog_pid = fork();
        if (hog_pid < 0)
            die("fork");
        if (hog_pid == 0)
            hog(&shared[0], &shared[1]);
    }
    fp_pattern(&in, 7);
    for (long i = 0; i < n || (with_hog && shared[0] < HOG_MIN_ROUNDS && i < n + HOG_MAX_EXTRA);
         i++) {
        runs++;
        if (!kvm_run_checked(vcpu, &in, &out))
            mismatches++;
        if (run->exit_reason == KVM_EXIT_IO && run->io.port == PORT_EXIT)
            io_exits++;
        else
            fprintf(stderr, "kvm-pingpong: unexpected exit reason %u\n", run->exit_reason);
    }
    float result;
    memcpy(&result, mem + GUEST_DATA, sizeof(result));
    if (with_hog) {
        kill(hog_pid, SIGKILL);
        waitpid(hog_pid, NULL, 0);
        printf("kvm-hog: kvm_run=%ld io_exits=%ld fpu_mismatches=%ld guest_result=%g "
               "hog_rounds=%ld hog_mismatches=%ld\n", runs, io_exits, mismatches,
               (double)result, shared[0], shared[1]);
        mismatches += shared[1];
    } else {
        printf("kvm-pingpong: kvm_run=%ld io_exits=%ld fpu_mismatches=%ld guest_result=%g\n",
               runs, io_exits, mismatches, (double)result);
    }
    if (with_hog && shared[0] < HOG_MIN_ROUNDS)
        fprintf(stderr, "kvm-hog: the hog finished %ld rounds in %ld runs\n", shared[0], runs);
    return (io_exits == runs && runs >= n && mismatches == 0 && result == 2.0f &&
            (!with_hog || shared[0] >= HOG_MIN_ROUNDS)) ? 0 : 1;
}
