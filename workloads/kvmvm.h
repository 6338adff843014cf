/*
 * kvmvm.h: the /dev/kvm set-up both kvm-pingpong workloads (x86_64 and
 * arm64) share: a VM with one slot of anonymous guest memory. What differs
 * (the guest's code and the vCPU's initial state) stays in each program.
 * Include it after fpcheck.h.
 */
#ifndef KVMVM_H
#define KVMVM_H

#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>

static void die(const char *what)
{
    fprintf(stderr, "kvm-pingpong: %s: %s\n", what, strerror(errno));
    exit(1);
}

/*
 * A new VM (into *vm; /dev/kvm into *kvm) with size bytes of memory at guest
 * physical address guest_phys; returns the memory as this process sees it.
 * Dies on failure.
 */
static uint8_t *kvm_vm_with_memory(uint64_t guest_phys, size_t size, int *kvm, int *vm)
{
    uint8_t *mem;

    *kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
    if (*kvm < 0)
        die("open /dev/kvm");
    *vm = ioctl(*kvm, KVM_CREATE_VM, 0);
    if (*vm < 0)
        die("KVM_CREATE_VM");
    mem = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED)
        die("mmap guest memory");
    struct kvm_userspace_memory_region region = {
        .slot = 0, .guest_phys_addr = guest_phys, .memory_size = size,
        .userspace_addr = (uintptr_t)mem,
    };
    if (ioctl(*vm, KVM_SET_USER_MEMORY_REGION, &region) < 0)
        die("KVM_SET_USER_MEMORY_REGION");
    return mem;
}

#ifdef __x86_64__
/*
 * vCPU 0 of vm in real mode, flat at address 0, FPU and SSE usable (CR0.MP
 * without EM or TS; CR4.OSFXSR, OSXMMEXCPT), to start at rip; its kvm_run
 * into *run (kvm: /dev/kvm). Returns the vCPU; dies on failure.
 */
static int kvm_real_mode_vcpu(int kvm, int vm, uint64_t rip, struct kvm_run **run)
{
    struct kvm_sregs sregs;
    struct kvm_regs regs = { .rip = rip, .rflags = 0x2 };
    int vcpu = ioctl(vm, KVM_CREATE_VCPU, 0);

    if (vcpu < 0)
        die("KVM_CREATE_VCPU");
    int run_size = ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
    *run = mmap(NULL, run_size, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu, 0);
    if (*run == MAP_FAILED)
        die("mmap kvm_run");
    if (ioctl(vcpu, KVM_GET_SREGS, &sregs) < 0)
        die("KVM_GET_SREGS");
    sregs.cs.base = sregs.cs.selector = 0;
    sregs.ds.base = sregs.ds.selector = 0;
    sregs.cr0 = (sregs.cr0 & ~0xcull) | 0x2;
    sregs.cr4 |= 1u << 9 | 1u << 10;
    if (ioctl(vcpu, KVM_SET_SREGS, &sregs) < 0)
        die("KVM_SET_SREGS");
    if (ioctl(vcpu, KVM_SET_REGS, &regs) < 0)
        die("KVM_SET_REGS");
    return vcpu;
}
#endif

/*
 * One KVM_RUN with the registers loaded from *in just before it and stored
 * to *out right after (fpcheck.h): returns whether they came back as they
 * went in. Dies if KVM_RUN fails.
 */
static inline int kvm_run_checked(int vcpu, const struct fp_file *in, struct fp_file *out)
{
    long ret = syscall3_checked(SYS_ioctl, vcpu, KVM_RUN, 0, in, out);

    if (ret < 0) {
        errno = -ret;
        die("KVM_RUN");
    }
    return fp_equal(in, out);
}

#endif
