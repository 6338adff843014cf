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
 *   HANDLER  SIGUSR1 to the caller, and when its delivery has loaded the
 *            init state for the handler (fpu__clear_user_states()
 *            returns), CORRUPT's damage: the handler starts with XMM0 not
 *            in its init state.
 *   EXEC     the caller's next exec, once the FPU reset has run
 *            (fpu_flush_thread(), or fpu__clear_all() before v5.14), gets
 *            CORRUPT's damage: the new program starts with XMM0 not in its
 *            init state.
 *   SIGRETURN SIGUSR1 to the caller, and when its sigreturn has loaded the
 *            frame (fpu__restore_sig() returns), CORRUPT's damage: the task
 *            resumes with XMM0 other than the frame held.
 *   REGSET   the caller's next ptrace regset write of a tracee's FP state
 *            (xfpregs_set(), xstateregs_set()) gets XMM0 flipped in the
 *            tracee's buffer once written: the tracee resumes with XMM0
 *            other than the tracer wrote.
 *   KVM_XSAVE the caller's next KVM_SET_XSAVE gets XMM0 flipped in the
 *            guest's fpstate once copied (fpu_copy_uabi_to_guest_fpstate()
 *            returns): the vCPU's next entry holds XMM0 other than user
 *            space wrote.
 * HANDLER, EXEC, SIGRETURN, REGSET and KVM_XSAVE act through kretprobes on
 * those functions, armed for the calling task and fired once.
 *
 * Two ioctls have no bug of their own; they are a trigger for the kernel's:
 *   IRQ_FPU_START  a hard interrupt (an hrtimer, HRTIMER_MODE_REL_HARD)
 *            every arg nanoseconds that uses the FPU as irq_fpu_usable()
 *            allows: kernel_fpu_begin(); clobber XMM0/XMM1;
 *            kernel_fpu_end(). A kernel that lets it in while the
 *            interrupted task is inside fpregs_lock() corrupts that task's
 *            state (59f5ede3bc0f, "x86/fpu: Prevent FPU state corruption",
 *            fixed one);
 *   IRQ_FPU_STOP   stops it; writes to arg (long[2]) how many times it
 *            used the FPU and how many times irq_fpu_usable() refused it.
 *
 * Built out of tree against the Debian kernel's own headers by
 * fputrace/kernel/seedmod.py.
 */
#include <linux/fs.h>
#include <linux/hrtimer.h>
#include <linux/kprobes.h>
#include <linux/mutex.h>
#include <linux/miscdevice.h>
#include <linux/module.h>
#include <linux/sched.h>
#include <linux/sched/signal.h>
#include <linux/uaccess.h>
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
	struct xregs_state *xsave;

	kernel_fpu_begin();
	/*
	 * The v5.16 FPU rework moved the task's buffer behind fpu->fpstate
	 * (struct fpstate); before it was fpu->state.
	 */
#if LINUX_VERSION_CODE >= KERNEL_VERSION(5, 16, 0)
	xsave = &current->thread.fpu.fpstate->regs.xsave;
#else
	xsave = &current->thread.fpu.state.xsave;
#endif
	xsave->i387.xmm_space[0] ^= 0x5a5a5a5a;
	/*
	 * A buffer just reset to init_fpstate (exec) has XSTATE_BV clear, and
	 * XRSTOR would load XMM0 from its init state whatever the buffer
	 * holds: mark SSE in use, so that the damage is what is loaded.
	 */
	xsave->header.xfeatures |= XFEATURE_MASK_SSE;
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

/*
 * The task each kretprobe damages on its next return, once: set by the
 * ioctl, taken by the probe.
 */
static struct task_struct *seed_handler_task, *seed_exec_task, *seed_sigreturn_task;
static struct task_struct *seed_regset_task;

static int seed_handler_ret(struct kretprobe_instance *ri, struct pt_regs *regs)
{
	if (cmpxchg(&seed_handler_task, current, NULL) == current)
		seed_corrupt_saved();
	return 0;
}

static int seed_exec_ret(struct kretprobe_instance *ri, struct pt_regs *regs)
{
	if (cmpxchg(&seed_exec_task, current, NULL) == current)
		seed_corrupt_saved();
	return 0;
}

static int seed_sigreturn_ret(struct kretprobe_instance *ri, struct pt_regs *regs)
{
	if (cmpxchg(&seed_sigreturn_task, current, NULL) == current)
		seed_corrupt_saved();
	return 0;
}

/* The tracee, the regset write's first argument, kept from its entry. */
static int seed_regset_entry(struct kretprobe_instance *ri, struct pt_regs *regs)
{
	*(struct task_struct **)ri->data = (struct task_struct *)regs_get_kernel_argument(regs, 0);
	return 0;
}

/*
 * The tracee is stopped and its buffer holds its state (the write called
 * fpu_force_restore()), so the damage goes there, with no kernel_fpu
 * section: the registers are not the tracee's.
 */
static int seed_regset_ret(struct kretprobe_instance *ri, struct pt_regs *regs)
{
	struct task_struct *target = *(struct task_struct **)ri->data;
	struct xregs_state *xsave;

	if (cmpxchg(&seed_regset_task, current, NULL) != current || regs_return_value(regs))
		return 0;
#if LINUX_VERSION_CODE >= KERNEL_VERSION(5, 16, 0)
	xsave = &target->thread.fpu.fpstate->regs.xsave;
#else
	xsave = &target->thread.fpu.state.xsave;
#endif
	xsave->i387.xmm_space[0] ^= 0x5a5a5a5a;
	return 0;
}

/*
 * The vCPU's struct fpu_guest, the copy's first argument, kept from its
 * entry. The v5.16 FPU rework brought struct fpu_guest and the copy into the
 * FPU core ("x86/fpu/kvm: Sanitize the FPU guest/user handling"); before it
 * the copy was kvm.ko's own and there is nothing to probe.
 */
static struct task_struct *seed_kvm_xsave_task;

static int seed_kvm_xsave_entry(struct kretprobe_instance *ri, struct pt_regs *regs)
{
	*(unsigned long *)ri->data = regs_get_kernel_argument(regs, 0);
	return 0;
}

static int seed_kvm_xsave_ret(struct kretprobe_instance *ri, struct pt_regs *regs)
{
#if LINUX_VERSION_CODE >= KERNEL_VERSION(5, 16, 0)
	struct fpu_guest *gfpu = *(struct fpu_guest **)ri->data;

	if (cmpxchg(&seed_kvm_xsave_task, current, NULL) != current || regs_return_value(regs))
		return 0;
	/* The guest's state is not in the registers: KVM_RUN loads it. */
	gfpu->fpstate->regs.xsave.i387.xmm_space[0] ^= 0x5a5a5a5a;
#endif
	return 0;
}

struct seed_probe {
	struct kretprobe rp;
	const char *const *symbols;	/* the function's names, newest kernel first */
	bool registered;
};

static const char *const seed_handler_symbols[] = { "fpu__clear_user_states", NULL };
/* v5.14's FPU rework renamed the exec reset (fpu__clear_all() before it). */
static const char *const seed_exec_symbols[] = { "fpu_flush_thread", "fpu__clear_all", NULL };

static const char *const seed_sigreturn_symbols[] = { "fpu__restore_sig", NULL };
static const char *const seed_fpregs_symbols[] = { "xfpregs_set", NULL };
static const char *const seed_xstate_symbols[] = { "xstateregs_set", NULL };
static const char *const seed_kvm_xsave_symbols[] = { "fpu_copy_uabi_to_guest_fpstate", NULL };

static struct seed_probe seed_kvm_xsave_probe = {
	.rp = { .handler = seed_kvm_xsave_ret, .entry_handler = seed_kvm_xsave_entry,
		.data_size = sizeof(unsigned long), .maxactive = 8 },
	.symbols = seed_kvm_xsave_symbols,
};

static struct seed_probe seed_fpregs_probe = {
	.rp = { .handler = seed_regset_ret, .entry_handler = seed_regset_entry,
		.data_size = sizeof(struct task_struct *), .maxactive = 8 },
	.symbols = seed_fpregs_symbols,
};
static struct seed_probe seed_xstate_probe = {
	.rp = { .handler = seed_regset_ret, .entry_handler = seed_regset_entry,
		.data_size = sizeof(struct task_struct *), .maxactive = 8 },
	.symbols = seed_xstate_symbols,
};

static struct seed_probe seed_sigreturn_probe = {
	.rp = { .handler = seed_sigreturn_ret, .maxactive = 8 },
	.symbols = seed_sigreturn_symbols,
};
static struct seed_probe seed_handler_probe = {
	.rp = { .handler = seed_handler_ret, .maxactive = 8 },
	.symbols = seed_handler_symbols,
};
static struct seed_probe seed_exec_probe = {
	.rp = { .handler = seed_exec_ret, .maxactive = 8 },
	.symbols = seed_exec_symbols,
};
static DEFINE_MUTEX(seed_probe_lock);

/* Register the probe on the first of its functions this kernel has. */
static int seed_probe_arm(struct seed_probe *sp)
{
	const char *const *sym;
	int ret = -ENOENT;

	mutex_lock(&seed_probe_lock);
	for (sym = sp->symbols; !sp->registered && *sym; sym++) {
		sp->rp.kp.symbol_name = *sym;
		sp->rp.kp.addr = NULL;
		ret = register_kretprobe(&sp->rp);
		sp->registered = ret == 0;
	}
	if (sp->registered)
		ret = 0;
	mutex_unlock(&seed_probe_lock);
	return ret;
}

static void seed_probe_disarm(struct seed_probe *sp)
{
	if (sp->registered)
		unregister_kretprobe(&sp->rp);
	sp->registered = false;
}

/* Arm probe sp for the calling task: its handler takes *slot, once. */
static int seed_arm(struct seed_probe *sp, struct task_struct **slot)
{
	int ret = seed_probe_arm(sp);

	if (!ret)
		WRITE_ONCE(*slot, current);
	return ret;
}

static struct hrtimer seed_irq_timer;
static u64 seed_irq_period_ns, seed_irq_lcg;
static atomic_long_t seed_irq_used, seed_irq_refused;
static bool seed_irq_running;
static DEFINE_MUTEX(seed_irq_lock);

/* In hard interrupt context: the kernel FPU user irq_fpu_usable() admits. */
static enum hrtimer_restart seed_irq_fpu_timer(struct hrtimer *timer)
{
	if (irq_fpu_usable()) {
		kernel_fpu_begin();
		seed_clobber_xmm();
		kernel_fpu_end();
		atomic_long_inc(&seed_irq_used);
	} else {
		atomic_long_inc(&seed_irq_refused);
	}
	/*
	 * The next one from half to one and a half periods on, by a linear
	 * congruential sequence: at a fixed period the interrupt would keep
	 * one phase against a loop of fixed length (a deterministic
	 * recording), and never land in some of its code.
	 */
	seed_irq_lcg = seed_irq_lcg * 6364136223846793005ULL + 1442695040888963407ULL;
	hrtimer_forward_now(timer, ns_to_ktime(seed_irq_period_ns / 2 +
					       (seed_irq_lcg >> 33) % seed_irq_period_ns));
	return HRTIMER_RESTART;
}

static long seed_irq_fpu(bool start, unsigned long arg)
{
	long counts[2];

	mutex_lock(&seed_irq_lock);
	if (start) {
		if (seed_irq_running || arg < 1000) {
			mutex_unlock(&seed_irq_lock);
			return seed_irq_running ? -EBUSY : -EINVAL;
		}
		seed_irq_period_ns = arg;
		seed_irq_lcg = 1;
		atomic_long_set(&seed_irq_used, 0);
		atomic_long_set(&seed_irq_refused, 0);
		seed_irq_running = true;
		hrtimer_start(&seed_irq_timer, ns_to_ktime(arg), HRTIMER_MODE_REL_HARD);
		mutex_unlock(&seed_irq_lock);
		return 0;
	}
	if (seed_irq_running)
		hrtimer_cancel(&seed_irq_timer);
	seed_irq_running = false;
	counts[0] = atomic_long_read(&seed_irq_used);
	counts[1] = atomic_long_read(&seed_irq_refused);
	mutex_unlock(&seed_irq_lock);
	if (arg && copy_to_user((void __user *)arg, counts, sizeof(counts)))
		return -EFAULT;
	return 0;
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
	case FPUTRACE_SEED_HANDLER:
	case FPUTRACE_SEED_SIGRETURN: {
		int ret = cmd == FPUTRACE_SEED_HANDLER ?
			seed_arm(&seed_handler_probe, &seed_handler_task) :
			seed_arm(&seed_sigreturn_probe, &seed_sigreturn_task);

		if (!ret)
			send_sig(SIGUSR1, current, 0);
		return ret;
	}
	case FPUTRACE_SEED_REGSET:
		return seed_probe_arm(&seed_fpregs_probe) ?:
			seed_arm(&seed_xstate_probe, &seed_regset_task);
	case FPUTRACE_SEED_EXEC:
		return seed_arm(&seed_exec_probe, &seed_exec_task);
	case FPUTRACE_SEED_KVM_XSAVE:
		return seed_arm(&seed_kvm_xsave_probe, &seed_kvm_xsave_task);
	case FPUTRACE_SEED_IRQ_FPU_START:
	case FPUTRACE_SEED_IRQ_FPU_STOP:
		return seed_irq_fpu(cmd == FPUTRACE_SEED_IRQ_FPU_START, arg);
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

static int __init seed_init(void)
{
	hrtimer_init(&seed_irq_timer, CLOCK_MONOTONIC, HRTIMER_MODE_REL_HARD);
	seed_irq_timer.function = seed_irq_fpu_timer;
	return misc_register(&seed_dev);
}

static void __exit seed_exit(void)
{
	misc_deregister(&seed_dev);
	seed_irq_fpu(false, 0);
	seed_probe_disarm(&seed_handler_probe);
	seed_probe_disarm(&seed_exec_probe);
	seed_probe_disarm(&seed_sigreturn_probe);
	seed_probe_disarm(&seed_fpregs_probe);
	seed_probe_disarm(&seed_xstate_probe);
	seed_probe_disarm(&seed_kvm_xsave_probe);
}

module_init(seed_init);
module_exit(seed_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("fputrace test module with deliberate FPU state bugs");
