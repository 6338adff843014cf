// SPDX-License-Identifier: GPL-2.0
/*
 * fputrace-seed: a test module with deliberate FPU state bugs, so that
 * fputrace's findings can be checked against bugs known to be there.
 *
 * /dev/fputrace-seed takes these ioctls (fputrace_seed.h), each acting on
 * the calling task:
 *   CORRECT  kernel_fpu_begin(); clobber XMM0/XMM1; kernel_fpu_end()
 *            - the task's registers come back intact;
 *   CLOBBER  clobber XMM0/XMM1 with no kernel_fpu_begin() - the task
 *            returns to user mode with registers it never set;
 *   CORRUPT  kernel_fpu_begin() (which saves the task's registers into its
 *            fpstate and sets TIF_NEED_FPU_LOAD); flip bits of XMM0 in that
 *            saved buffer; kernel_fpu_end() - the return to user mode
 *            restores the corrupted buffer;
 *   MISSED   kernel_fpu_begin() (the save, and TIF_NEED_FPU_LOAD set);
 *            clear TIF_NEED_FPU_LOAD; clobber XMM0/XMM1; kernel_fpu_end()
 *            - exit_to_user_mode_prepare() sees no flag, so nothing
 *            restores the task's state: it returns with the kernel's values.
 *   SIGFRAME MISSED, then SIGUSR1 to the caller: the signal's delivery
 *            saves the kernel's values into the signal frame as the task's
 *            (copy_fpstate_to_sigframe() sees no TIF_NEED_FPU_LOAD), and
 *            sigreturn loads them: the signal frame is the damage.
 *
 * Built out of tree against the Debian kernel's own headers by
 * fputrace/kernel/seedmod.py.
 */
#include <linux/fs.h>
#include <linux/miscdevice.h>
#include <linux/module.h>
#include <linux/sched.h>
#include <linux/sched/signal.h>
#include <linux/version.h>
#include <asm/fpu/api.h>
#include <asm/fpu/types.h>

#include "fputrace_seed.h"

/* Deliberately no clobber list: the damage is the point. */
static noinline void seed_clobber_xmm(void)
{
	asm volatile("pxor %%xmm0, %%xmm0\n\tpcmpeqd %%xmm1, %%xmm1" ::: "memory");
}

static void seed_corrupt_saved(void)
{
	u32 *xmm;

	kernel_fpu_begin();
	/*
	 * The v5.16 FPU rework moved the task's buffer behind fpu->fpstate
	 * (struct fpstate); before it was fpu->state.
	 */
#if LINUX_VERSION_CODE >= KERNEL_VERSION(5, 16, 0)
	xmm = current->thread.fpu.fpstate->regs.xsave.i387.xmm_space;
#else
	xmm = current->thread.fpu.state.xsave.i387.xmm_space;
#endif
	xmm[0] ^= 0x5a5a5a5a;
	kernel_fpu_end();
}

/*
 * The flag that tells the return to user mode to load the task's saved
 * state (arch_exit_to_user_mode_prepare() in arch/x86/include/asm/entry-common.h),
 * wrongly cleared while the registers hold the kernel's values.
 */
static noinline void seed_missed_restore(void)
{
	kernel_fpu_begin();
	clear_thread_flag(TIF_NEED_FPU_LOAD);
	seed_clobber_xmm();
	kernel_fpu_end();
}

static long seed_ioctl(struct file *file, unsigned int cmd, unsigned long arg)
{
	switch (cmd) {
	case FPUTRACE_SEED_CORRECT:
		kernel_fpu_begin();
		seed_clobber_xmm();
		kernel_fpu_end();
		return 0;
	case FPUTRACE_SEED_CLOBBER:
		seed_clobber_xmm();
		return 0;
	case FPUTRACE_SEED_CORRUPT:
		seed_corrupt_saved();
		return 0;
	case FPUTRACE_SEED_MISSED:
		seed_missed_restore();
		return 0;
	case FPUTRACE_SEED_SIGFRAME:
		seed_missed_restore();
		send_sig(SIGUSR1, current, 0);
		return 0;
	}
	return -ENOTTY;
}

static const struct file_operations seed_fops = {
	.owner = THIS_MODULE,
	.unlocked_ioctl = seed_ioctl,
};

static struct miscdevice seed_dev = {
	.minor = MISC_DYNAMIC_MINOR,
	.name = "fputrace-seed",
	.fops = &seed_fops,
};

module_misc_device(seed_dev);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("fputrace test module with deliberate FPU state bugs");
