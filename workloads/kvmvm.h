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

/*
 * One KVM_RUN with the registers loaded from *in just before it and stored
 * to *out right after (fpcheck.h): returns whether they came back as they
 * went in. Dies if KVM_RUN fails.
 */
static int kvm_run_checked(int vcpu, const struct fp_file *in, struct fp_file *out)
{
    long ret = syscall3_checked(SYS_ioctl, vcpu, KVM_RUN, 0, in, out);

    if (ret < 0) {
        errno = -ret;
        die("KVM_RUN");
    }
    return fp_equal(in, out);
}

#endif
