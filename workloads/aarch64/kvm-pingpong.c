/*
 * kvm-pingpong (arm64): a minimal KVM user. One vCPU at EL1, MMU off,
 * enables FP/SIMD with CPACR_EL1.FPEN, adds 1.0 to d1, and leaves to user
 * space with a store of d1's bits to an address no memory slot covers (an
 * MMIO exit). Each KVM_RUN is one VM entry and exit that the trace must
 * show; the program counts them itself and checks that its own V registers
 * survive every KVM_RUN.
 *
 * usage: kvm-pingpong [N]    (default 200 round trips)
 * prints: kvm-pingpong: kvm_run=N mmio_exits=N fpu_mismatches=0 guest_result=N
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
static const uint32_t guest_code[] = {
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

int main(int argc, char **argv)
{
    long n = argc > 1 ? strtol(argv[1], NULL, 0) : 200;
    long runs = 0, mmio_exits = 0, mismatches = 0;
    struct kvm_vcpu_init init;
    struct kvm_run *run;
    struct fp_file in, out;
    double result = 0;
    int kvm, vm, vcpu;
    uint8_t *mem;

    mem = kvm_vm_with_memory(GUEST_MEM_BASE, GUEST_MEM_SIZE, &kvm, &vm);
    memcpy(mem, guest_code, sizeof(guest_code));
    vcpu = ioctl(vm, KVM_CREATE_VCPU, 0);
    if (vcpu < 0)
        die("KVM_CREATE_VCPU");
    if (ioctl(vm, KVM_ARM_PREFERRED_TARGET, &init) < 0)
        die("KVM_ARM_PREFERRED_TARGET");
    if (ioctl(vcpu, KVM_ARM_VCPU_INIT, &init) < 0)
        die("KVM_ARM_VCPU_INIT");
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

    fp_pattern(&in, 7);
    for (long i = 0; i < n; i++) {
        runs++;
        if (!kvm_run_checked(vcpu, &in, &out))
            mismatches++;
        if (run->exit_reason == KVM_EXIT_MMIO && run->mmio.phys_addr == GUEST_MMIO &&
            run->mmio.is_write) {
            mmio_exits++;
            memcpy(&result, run->mmio.data, sizeof(result));
        } else {
            fprintf(stderr, "kvm-pingpong: unexpected exit reason %u\n", run->exit_reason);
        }
    }
    printf("kvm-pingpong: kvm_run=%ld mmio_exits=%ld fpu_mismatches=%ld guest_result=%g\n",
           runs, mmio_exits, mismatches, result);
    /* d1 counts the guest's loop iterations: one per exit. */
    return (mmio_exits == n && mismatches == 0 && result == (double)n) ? 0 : 1;
}
