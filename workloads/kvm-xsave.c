/*
 * kvm-xsave: a KVM user that sets its guest's FP state with KVM_SET_XSAVE
 * before every KVM_RUN, and a guest that reports what it got. Each round
 * writes a new pattern into XMM0-15, a new rounding mode into FCW and
 * MXCSR (KVM_GET_XSAVE, the fields changed, KVM_SET_XSAVE), then runs the
 * vCPU at once: its real-mode guest stores XMM0-7, MXCSR and FCW to its
 * memory and leaves with an OUT. The program compares them with what it
 * wrote (its own truth), and checks its own registers across each KVM_RUN.
 *
 * Nothing runs between the set and the KVM_RUN, so fputrace can hold the
 * VM entry to the image (docs/analysis.md, "KVM_SET_XSAVE").
 *
 * With "seed" (the kvm-xsave-seed workload), each set is damaged after its
 * copy by the fputrace-seed module (workloads/seed/, FPUTRACE_SEED_KVM_XSAVE):
 * the guest then finds XMM0 other than was written, every round.
 *
 * usage: kvm-xsave [N [seed]]    (default 20 rounds)
 * prints: kvm-xsave: rounds=N mismatches=M fpu_mismatches=0 failed=0
 *         (mismatches: rounds whose guest saw other than was set; 0, or N
 *         with seed)
 */
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include "fpcheck.h"
#include "kvmvm.h"
#include "seed/fputrace_seed.h"

#define GUEST_MEM_SIZE  0x10000
#define GUEST_CODE      0x1000
#define GUEST_SEEN      0x2000      /* XMM0-7, then MXCSR, then FCW */
#define PORT_EXIT       0x10

/* The standard XSAVE layout (Intel SDM vol. 1, 13.4). */
#define XSAVE_FCW       0
#define XSAVE_MXCSR     24
#define XSAVE_XMM       160
#define XSAVE_BV        512
#define XFEATURE_FP_SSE 3

/*
 * Real-mode guest, 16-bit addressing:
 *   loop: movdqu [0x2000 + 16 * r], xmm<r>     ; r = 0..7
 *         stmxcsr [0x2080]
 *         fnstcw [0x2084]
 *         out 0x10, al                          ; exit to user space
 *         jmp loop
 */
static const uint8_t guest_code[] = {
    0xf3, 0x0f, 0x7f, 0x06, 0x00, 0x20,     /* movdqu [0x2000], xmm0 */
    0xf3, 0x0f, 0x7f, 0x0e, 0x10, 0x20,     /* movdqu [0x2010], xmm1 */
    0xf3, 0x0f, 0x7f, 0x16, 0x20, 0x20,     /* movdqu [0x2020], xmm2 */
    0xf3, 0x0f, 0x7f, 0x1e, 0x30, 0x20,     /* movdqu [0x2030], xmm3 */
    0xf3, 0x0f, 0x7f, 0x26, 0x40, 0x20,     /* movdqu [0x2040], xmm4 */
    0xf3, 0x0f, 0x7f, 0x2e, 0x50, 0x20,     /* movdqu [0x2050], xmm5 */
    0xf3, 0x0f, 0x7f, 0x36, 0x60, 0x20,     /* movdqu [0x2060], xmm6 */
    0xf3, 0x0f, 0x7f, 0x3e, 0x70, 0x20,     /* movdqu [0x2070], xmm7 */
    0x0f, 0xae, 0x1e, 0x80, 0x20,           /* stmxcsr [0x2080] */
    0xd9, 0x3e, 0x84, 0x20,                 /* fnstcw [0x2084] */
    0xe6, PORT_EXIT,                        /* out 0x10, al */
    0xeb, 0xc3,                             /* jmp loop (-61) */
};

/* What round i writes: XMM0-15, and FCW and MXCSR with rounding mode i & 3. */
struct written {
    uint32_t xmm[16][4];
    uint32_t mxcsr;
    uint16_t fcw;
};

static void pattern(struct written *w, long i)
{
    for (int r = 0; r < 16; r++)
        for (int l = 0; l < 4; l++)
            w->xmm[r][l] = 0x9e3779b9u * (uint32_t)(i * 64 + r * 4 + l + 1);
    w->mxcsr = 0x1f80 | (uint32_t)(i & 3) << 13;
    w->fcw = (uint16_t)(0x037f | (i & 3) << 10);
}

/* KVM_GET_XSAVE, the fields of w written in, KVM_SET_XSAVE. Dies on failure. */
static void set_xsave(int vcpu, const struct written *w)
{
    static struct kvm_xsave xs;
    uint8_t *region = (uint8_t *)xs.region;
    uint64_t bv;

    if (ioctl(vcpu, KVM_GET_XSAVE, &xs) < 0)
        die("KVM_GET_XSAVE");
    memcpy(region + XSAVE_FCW, &w->fcw, sizeof(w->fcw));
    memcpy(region + XSAVE_MXCSR, &w->mxcsr, sizeof(w->mxcsr));
    memcpy(region + XSAVE_XMM, w->xmm, sizeof(w->xmm));
    memcpy(&bv, region + XSAVE_BV, sizeof(bv));
    bv |= XFEATURE_FP_SSE;
    memcpy(region + XSAVE_BV, &bv, sizeof(bv));
    if (ioctl(vcpu, KVM_SET_XSAVE, &xs) < 0)
        die("KVM_SET_XSAVE");
}

/* Whether the guest saw what w set: XMM0-7, MXCSR and FCW as it stored them. */
static int guest_saw(const uint8_t *mem, const struct written *w)
{
    uint32_t mxcsr;
    uint16_t fcw;

    memcpy(&mxcsr, mem + GUEST_SEEN + 0x80, sizeof(mxcsr));
    memcpy(&fcw, mem + GUEST_SEEN + 0x84, sizeof(fcw));
    return !memcmp(mem + GUEST_SEEN, w->xmm, 8 * sizeof(w->xmm[0])) &&
        mxcsr == w->mxcsr && fcw == w->fcw;
}

int main(int argc, char **argv)
{
    long n = argc > 1 ? strtol(argv[1], NULL, 0) : 20;
    int seed_fd = -1, kvm, vm, vcpu;
    long mismatches = 0, fpu_mismatches = 0, failed = 0;
    struct kvm_run *run;
    struct fp_file in, out;
    struct written w;
    uint8_t *mem;

    if (argc > 2 && !strcmp(argv[2], "seed")) {
        seed_fd = open(FPUTRACE_SEED_DEVICE, O_RDWR);
        if (seed_fd < 0) {
            perror("kvm-xsave: " FPUTRACE_SEED_DEVICE);
            return 1;
        }
    }
    mem = kvm_vm_with_memory(0, GUEST_MEM_SIZE, &kvm, &vm);
    memcpy(mem + GUEST_CODE, guest_code, sizeof(guest_code));
    vcpu = kvm_real_mode_vcpu(kvm, vm, GUEST_CODE, &run);

    /*
     * A first run, so that the trace has seen the vCPU exit before the
     * first set: a vCPU's first entry has nothing to be compared with.
     */
    fp_pattern(&in, 11);
    if (!kvm_run_checked(vcpu, &in, &out))
        fpu_mismatches++;
    for (long i = 0; i < n; i++) {
        pattern(&w, i);
        if (seed_fd >= 0 && ioctl(seed_fd, FPUTRACE_SEED_KVM_XSAVE) != 0) {
            perror("kvm-xsave: FPUTRACE_SEED_KVM_XSAVE");
            failed++;
            break;
        }
        set_xsave(vcpu, &w);
        if (!kvm_run_checked(vcpu, &in, &out))
            fpu_mismatches++;
        if (run->exit_reason != KVM_EXIT_IO || run->io.port != PORT_EXIT) {
            fprintf(stderr, "kvm-xsave: unexpected exit reason %u\n", run->exit_reason);
            failed++;
            break;
        }
        if (!guest_saw(mem, &w))
            mismatches++;
    }
    printf("kvm-xsave: rounds=%ld mismatches=%ld fpu_mismatches=%ld failed=%ld\n", n,
           mismatches, fpu_mismatches, failed);
    /* Seeded, every round must have seen the damage; else none. */
    return failed || fpu_mismatches || mismatches != (seed_fd >= 0 ? n : 0);
}
