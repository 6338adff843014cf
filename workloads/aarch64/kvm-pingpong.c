/*
 * kvm-pingpong (arm64): a minimal KVM user. One vCPU at EL1, MMU off,
 * enables FP/SIMD with CPACR_EL1.FPEN, adds 1.0 to d1, and leaves to user
 * space with a store of d1's bits to an address no memory slot covers (an
 * MMIO exit). Each KVM_RUN is one VM entry and exit that the trace must
 * show; the program counts them itself and checks that its own V registers
 * survive every KVM_RUN.
 *
 * With "sve" the vCPU has SVE (KVM_ARM_VCPU_SVE, finalized), and the guest
 * also enables SVE (CPACR_EL1.ZEN), asks for its longest vector length
 * (ZCR_EL1.LEN) and adds 1 to every 64-bit lane of z2 each round. It exits
 * with z2's last lane in the low half of the stored value and d1 in the
 * high half: both must count the rounds, so the guest's whole Z register
 * (its last lane is beyond 128 bits whenever the VL is) survives every exit.
 *
 * With "svehog" (the kvm-sve-hog workload) the guest uses no FP/SIMD at
 * all (it counts its exits in x2), and the VMM holds an SVE pattern in Z0-Z31
 * and P0-P15 through a long spin after every KVM_RUN, with no system call
 * in between, while a CPU-bound child holding its own SVE pattern shares the
 * CPU: the VMM is preempted with its SVE state live, right after KVM_RUN
 * put the vCPU. Both check their SVE registers after every spin.
 *
 * usage: kvm-pingpong [N] [sve|svehog]   (default 200 round trips)
 * prints: kvm-pingpong: kvm_run=N mmio_exits=N fpu_mismatches=0 guest_result=N
 *         (sve also: guest_sve_mismatches=0;
 *          svehog: vmm_sve_mismatches=0 hog_rounds=N hog_mismatches=0)
 */
#include <errno.h>
#include <fcntl.h>
#include <stddef.h>
#include <linux/kvm.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <signal.h>
#include <unistd.h>

#include "fpcheck.h"
#include "../kvmvm.h"

#define GUEST_MEM_BASE  0x10000
#define GUEST_MEM_SIZE  0x10000
#define GUEST_MMIO      0x100000        /* no slot: a store here exits */

/*
 *   mov  x0, #(3 << 20); msr cpacr_el1, x0; isb   FPEN: FP/SIMD at EL1/EL0
 *   fmov d0, #1.0
 *   mov  x1, #GUEST_MMIO
 * loop:
 *   fadd d1, d1, d0
 *   fmov x2, d1
 *   str  x2, [x1]                                  MMIO exit
 *   b    loop
 *
 * The store is of a general register: a data abort of an FP/SIMD register
 * store carries no syndrome KVM can emulate from (KVM_RUN fails ENOSYS).
 */
static const uint32_t guest_fp_code[] = {
    0xd2a00600,     /* mov x0, #0x300000 */
    0xd5181040,     /* msr cpacr_el1, x0 */
    0xd5033fdf,     /* isb */
    0x1e6e1000,     /* fmov d0, #1.0 */
    0xd2a00201,     /* mov x1, #0x100000 */
    0x1e602821,     /* loop: fadd d1, d1, d0 */
    0x9e660022,     /* fmov x2, d1 */
    0xf9000022,     /* str x2, [x1] */
    0x17fffffd,     /* b loop */
};

/*
 * The SVE guest: as above, and
 *   mov x0, #0x1ff; msr zcr_el1, x0; isb           LEN: the longest VL
 *   ptrue p0.d; mov z3.d, #1
 * loop:
 *   fadd d1, d1, d0; add z2.d, z2.d, z3.d
 *   fcvtzu x5, d1; lastb x2, p0, z2.d; add x2, x2, x5, lsl #32
 *   str x2, [x1]; b loop
 */
static const uint32_t guest_sve_code[] = {
    0xd2a00660,     /* mov x0, #0x330000: FPEN and ZEN */
    0xd5181040,     /* msr cpacr_el1, x0 */
    0xd5033fdf,     /* isb */
    0xd2803fe0,     /* mov x0, #0x1ff */
    0xd5181200,     /* msr zcr_el1, x0 */
    0xd5033fdf,     /* isb */
    0x1e6e1000,     /* fmov d0, #1.0 */
    0x25d8e3e0,     /* ptrue p0.d */
    0x25f8c023,     /* mov z3.d, #1 */
    0xd2a00201,     /* mov x1, #0x100000 */
    0x1e602821,     /* loop: fadd d1, d1, d0 */
    0x04e30042,     /* add z2.d, z2.d, z3.d */
    0x9e790025,     /* fcvtzu x5, d1 */
    0x05e1a042,     /* lastb x2, p0, z2.d */
    0x8b058042,     /* add x2, x2, x5, lsl #32 */
    0xf9000022,     /* str x2, [x1] */
    0x17fffffa,     /* b loop */
};

/*
 * The svehog guest: no FP/SIMD.
 *   mov x1, #GUEST_MMIO
 * loop:
 *   add x2, x2, #1; str x2, [x1]; b loop
 */
static const uint32_t guest_int_code[] = {
    0xd2a00201,     /* mov x1, #0x100000 */
    0x91000442,     /* loop: add x2, x2, #1 */
    0xf9000022,     /* str x2, [x1] */
    0x17fffffe,     /* b loop */
};

/* Iterations of each SVE hold: long enough to span a few ticks. */
#define SVE_HOLD_SPIN 3000000UL

/* The CPU-bound child: its own SVE pattern through long spins, checked. */
static void sve_hog(unsigned vl, volatile long *rounds, volatile long *mismatches)
{
    static struct sve_packed in, out;

    sve_pattern(&in, 77);
    for (;;) {
        sve_checked(&in, &out, vl, SVE_HOLD_SPIN);
        *mismatches += !sve_equal(&in, &out, vl);
        (*rounds)++;
    }
}

int main(int argc, char **argv)
{
    long n = argc > 1 ? strtol(argv[1], NULL, 0) : 200;
    int sve = argc > 2 && strcmp(argv[2], "sve") == 0;
    int svehog = argc > 2 && strcmp(argv[2], "svehog") == 0;
    static struct sve_packed vmm_in, vmm_out;
    long vmm_sve_mismatches = 0;
    volatile long *shared = NULL;
    pid_t hog_pid = -1;
    unsigned vl = 0;
    long runs = 0, mmio_exits = 0, mismatches = 0, sve_mismatches = 0;
    struct kvm_vcpu_init init;
    struct kvm_run *run;
    struct fp_file in, out;
    double result = 0;
    int kvm, vm, vcpu;
    uint8_t *mem;

    mem = kvm_vm_with_memory(GUEST_MEM_BASE, GUEST_MEM_SIZE, &kvm, &vm);
    if (sve && ioctl(kvm, KVM_CHECK_EXTENSION, KVM_CAP_ARM_SVE) <= 0) {
        fprintf(stderr, "kvm-pingpong: this KVM gives no SVE to guests (KVM_CAP_ARM_SVE)\n");
        return 1;
    }
    if (svehog && !sve_supported()) {
        fprintf(stderr, "kvm-pingpong: svehog needs SVE\n");
        return 1;
    }
    if (sve)
        memcpy(mem, guest_sve_code, sizeof(guest_sve_code));
    else if (svehog)
        memcpy(mem, guest_int_code, sizeof(guest_int_code));
    else
        memcpy(mem, guest_fp_code, sizeof(guest_fp_code));
    vcpu = ioctl(vm, KVM_CREATE_VCPU, 0);
    if (vcpu < 0)
        die("KVM_CREATE_VCPU");
    if (ioctl(vm, KVM_ARM_PREFERRED_TARGET, &init) < 0)
        die("KVM_ARM_PREFERRED_TARGET");
    if (sve)
        init.features[0] |= 1u << KVM_ARM_VCPU_SVE;
    if (ioctl(vcpu, KVM_ARM_VCPU_INIT, &init) < 0)
        die("KVM_ARM_VCPU_INIT");
    if (sve) {
        int feature = KVM_ARM_VCPU_SVE;     /* the vector lengths: the default, all */

        if (ioctl(vcpu, KVM_ARM_VCPU_FINALIZE, &feature) < 0)
            die("KVM_ARM_VCPU_FINALIZE SVE");
    }
    uint64_t pc = GUEST_MEM_BASE;
    struct kvm_one_reg reg = {
        .id = KVM_REG_ARM64 | KVM_REG_SIZE_U64 | KVM_REG_ARM_CORE |
              (offsetof(struct kvm_regs, regs.pc) / sizeof(uint32_t)),
        .addr = (uintptr_t)&pc,
    };
    if (ioctl(vcpu, KVM_SET_ONE_REG, &reg) < 0)
        die("KVM_SET_ONE_REG pc");
    int run_size = ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
    run = mmap(NULL, run_size, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu, 0);
    if (run == MAP_FAILED)
        die("mmap kvm_run");

    if (svehog) {
        vl = sve_vl();
        sve_pattern(&vmm_in, 5);
        shared = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
        if (shared == MAP_FAILED)
            die("mmap shared counters");
        hog_pid = fork();
        if (hog_pid < 0)
            die("fork");
        if (hog_pid == 0)
            sve_hog(vl, &shared[0], &shared[1]);
        /* SVE in use before the first KVM_RUN, as after every later one. */
        sve_checked(&vmm_in, &vmm_out, vl, 1);
    }
    fp_pattern(&in, 7);
    for (long i = 0; i < n; i++) {
        runs++;
        if (!kvm_run_checked(vcpu, &in, &out))
            mismatches++;
        if (svehog) {
            sve_checked(&vmm_in, &vmm_out, vl, SVE_HOLD_SPIN);
            vmm_sve_mismatches += !sve_equal(&vmm_in, &vmm_out, vl);
        }
        if (run->exit_reason == KVM_EXIT_MMIO && run->mmio.phys_addr == GUEST_MMIO &&
            run->mmio.is_write) {
            mmio_exits++;
            if (sve) {
                uint64_t value;

                memcpy(&value, run->mmio.data, sizeof(value));
                result = (double)(value >> 32);
                if ((value & 0xffffffffu) != (uint64_t)mmio_exits)
                    sve_mismatches++;
            } else if (svehog) {
                uint64_t value;

                memcpy(&value, run->mmio.data, sizeof(value));
                result = (double)value;
            } else {
                memcpy(&result, run->mmio.data, sizeof(result));
            }
        } else {
            fprintf(stderr, "kvm-pingpong: unexpected exit reason %u\n", run->exit_reason);
        }
    }
    printf("kvm-pingpong: kvm_run=%ld mmio_exits=%ld fpu_mismatches=%ld guest_result=%g",
           runs, mmio_exits, mismatches, result);
    if (sve)
        printf(" guest_sve_mismatches=%ld", sve_mismatches);
    if (svehog) {
        kill(hog_pid, SIGKILL);
        waitpid(hog_pid, NULL, 0);
        printf(" vmm_sve_mismatches=%ld hog_rounds=%ld hog_mismatches=%ld",
               vmm_sve_mismatches, shared[0], shared[1]);
        mismatches += vmm_sve_mismatches + shared[1];
    }
    printf("\n");
    /* d1 (and z2's lanes) count the guest's loop iterations: one per exit. */
    return (mmio_exits == n && mismatches == 0 && sve_mismatches == 0 &&
            result == (double)n) ? 0 : 1;
}
