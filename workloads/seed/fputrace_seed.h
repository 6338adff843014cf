/*
 * The ioctls of the fputrace-seed test module (fputrace_seed.c): each does
 * one thing to the calling task's FPU state, two of them deliberately wrong.
 * Shared by the module and the fpu-seed workload.
 */
#ifndef FPUTRACE_SEED_H
#define FPUTRACE_SEED_H

#include <linux/ioctl.h>

#define FPUTRACE_SEED_DEVICE "/dev/fputrace-seed"

/* (c) correct: SIMD inside kernel_fpu_begin()/kernel_fpu_end(). */
#define FPUTRACE_SEED_CORRECT   _IO('F', 1)
/* (a) bug: write XMM0/XMM1 without kernel_fpu_begin(). */
#define FPUTRACE_SEED_CLOBBER   _IO('F', 2)
/* (b) bug: inside a kernel_fpu section, overwrite the task's saved XMM0. */
#define FPUTRACE_SEED_CORRUPT   _IO('F', 3)
/*
 * (d) bug: inside a kernel_fpu section, clear TIF_NEED_FPU_LOAD after
 * kernel_fpu_begin() saved the task's registers, then use SIMD: no restore
 * follows, the task returns with the kernel's values (x86 only).
 */
#define FPUTRACE_SEED_MISSED    _IO('F', 4)
/*
 * (e) bug: MISSED, then a SIGUSR1 to the caller: its delivery on the way
 * back to user mode takes the registers for the task's own (no
 * TIF_NEED_FPU_LOAD) and copy_fpstate_to_sigframe() saves the kernel's
 * values into the signal frame, which sigreturn then loads. Linux 5.2's
 * Go/AVX corruption had this shape: another task's registers in the frame.
 */
#define FPUTRACE_SEED_SIGFRAME  _IO('F', 5)

/*
 * (f) bug: SIGUSR1 to the caller, whose handler then starts with XMM0 not
 * in its init state: the init state that fpu__clear_user_states() loaded
 * for it is saved and damaged in the task's buffer, which the return loads.
 */
#define FPUTRACE_SEED_HANDLER   _IO('F', 6)
/*
 * (g) bug: the caller's next exec hands the new program XMM0 not in its
 * init state, damaged in the task's buffer after the exec's FPU reset.
 */
#define FPUTRACE_SEED_EXEC      _IO('F', 7)
/*
 * (h) bug: SIGUSR1 to the caller, whose sigreturn then resumes it with
 * XMM0 other than the frame held: damaged in the task's buffer after
 * fpu__restore_sig() loaded the frame.
 */
#define FPUTRACE_SEED_SIGRETURN _IO('F', 8)
/*
 * (i) bug: the caller's next ptrace regset write of a tracee's FP state
 * (xfpregs_set(), xstateregs_set()) is damaged in the tracee's buffer
 * after the write: the tracee resumes with XMM0 other than was written.
 */
#define FPUTRACE_SEED_REGSET    _IO('F', 9)
/*
 * (j) bug: the caller's next KVM_SET_XSAVE (fpu_copy_uabi_to_guest_fpstate(),
 * v5.16 on) is damaged in the guest's fpstate after the copy: the vCPU's
 * next entry holds XMM0 other than was written. -ENOENT on older kernels.
 */
#define FPUTRACE_SEED_KVM_XSAVE _IO('F', 10)
/*
 * (k) no bug: a hard interrupt every arg nanoseconds (>= 1000) that uses
 * the FPU where irq_fpu_usable() allows it, until IRQ_FPU_STOP, which
 * writes to arg (long[2]) how many times it did, and how many times
 * irq_fpu_usable() refused. A trigger for kernels whose
 * irq_fpu_usable() admits it inside the interrupted task's fpregs_lock().
 */
#define FPUTRACE_SEED_IRQ_FPU_START _IO('F', 11)
#define FPUTRACE_SEED_IRQ_FPU_STOP  _IO('F', 12)

#endif
