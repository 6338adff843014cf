/*
 * probe.c: probed kernel functions. An exec callback on a function's
 * first instruction records its arguments (fork copies, exec resets,
 * signal frames, kernel_fpu sections); a timed probe's return is caught by
 * an inline test at the start of every block of kernel code: whether the
 * block starts at the return address awaited.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include <string.h>

#include "fputrace.h"

/*
 * Bumped by every probe hit (atomic). The probes include exec and task
 * exit: a task's comm changes at exec, and its task_struct can hold
 * another task only after it exits, so between two probe hits a task
 * pointer names the same pid and comm (task_announce()).
 */
static uint64_t probe_generation;

/* Save areas already read, by address and probe generation (buffer_first_save()). */
static uint64_t buffer_seen[BUFFER_TABLE_SIZE];

uint64_t probe_generation_now(void)
{
    return __atomic_load_n(&probe_generation, __ATOMIC_ACQUIRE);
}

const struct probe *probe_lookup(uint64_t pc)
{
    /* Written once at install, read-only afterwards: no lock. */
    for (unsigned i = 0; i < cfg.n_probes; i++) {
        if (cfg.probes[i].pc == pc) {
            return &cfg.probes[i];
        }
    }
    return NULL;
}

/* The probe of this level at a probed pc (both kernels may be the same image). */
static const struct probe *probe_of_level(const struct probe *pr, bool l2)
{
    if (pr->guest == l2) {
        return pr;
    }
    for (unsigned i = 0; i < cfg.n_probes; i++) {
        if (cfg.probes[i].pc == pr->pc && cfg.probes[i].guest == l2) {
            return &cfg.probes[i];
        }
    }
    return NULL;
}

static void probe_await_return(struct vcpu_state *vs, const struct probe *pr,
                               uint64_t return_pc, uint64_t icount);

/*
 * The first instruction of a probed kernel function: its first arguments,
 * and who called it (the analysis names the caller of kernel_fpu_begin()).
 */
void vcpu_probe_exec(unsigned int vcpu_index, void *udata)
{
    struct vcpu_state *vs = vcpu_get(vcpu_index);
    const struct probe *pr = probe_of_level(udata, vs->in_l2);
    struct ftr_event ev;
    uint64_t args[4];

    if (!pr) {
        return;                 /* the other kernel's function: not one here */
    }
    arch->finish_pending(vs, vcpu_index);
    if (!pr->quiet) {
        /*
         * The entry this probe follows comes first in sequence: a finding's
         * window (entry to return) must hold the probes inside it, such as
         * the kernel_fpu_begin() whose save took the task's state.
         */
        vcpu_materialize_entry(vs, vcpu_index, NULL, false);
        __atomic_fetch_add(&probe_generation, 1, __ATOMIC_RELEASE);
    }
    /*
     * A quiet probe (a context switch, a timed FPU path) is left out of
     * both: it rewrites no buffer and renames no task (another task is seen
     * by its pointer), so the saves and identities after it need not be
     * read again; and the save that follows it gives the pending entry its
     * registers without a read.
     */
    event_begin(vs, vcpu_index, &ev, FTR_KIND_PROBE, pr->pc, 0);
    ev.index = pr->id;
    arch->probe_args(vs, args);
    ev.value = args[0];
    ev.addr = args[1];
    ev.aux = args[2];
    ev.xstate_bv = args[3];     /* 0 in the guest: its stack is not readable */
    if (arch->probe_state) {
        arch->probe_state(vs, pr->id, args, &ev);
    }
    vcpu_commit_event(vs, vcpu_index, &ev);
    if (pr->guest && pr->id == FTR_PROBE_CONTEXT_SWITCH) {
        guest_task_switch(vs, vcpu_index, ev.addr);
    }
    if (pr->timed && !pr->guest && args[3]) {
        probe_await_return(vs, pr, args[3], ev.icount);
    }
}

/* The newest pending return is the next one: kernel code calls and returns in turn. */
static void probe_set_return_due(struct vcpu_state *vs)
{
    vs->inl.return_due = vs->n_returns ? vs->returns[vs->n_returns - 1].return_pc : 0;
}

static void probe_drop_return(struct vcpu_state *vs, unsigned i)
{
    memmove(&vs->returns[i], &vs->returns[i + 1],
            sizeof(vs->returns[0]) * (vs->n_returns - i - 1));
    vs->n_returns--;
}

/*
 * A timed probe's function is entered: watch for its return address. A
 * slot of the same probe still waiting lost its return (the function left
 * some other way), and is given up; when all are taken the oldest goes.
 */
static void probe_await_return(struct vcpu_state *vs, const struct probe *pr,
                               uint64_t return_pc, uint64_t icount)
{
    for (unsigned i = vs->n_returns; i-- > 0;) {
        if (vs->returns[i].id == pr->id) {
            probe_drop_return(vs, i);
            break;
        }
    }
    if (vs->n_returns == MAX_PENDING_RETURNS) {
        probe_drop_return(vs, 0);
    }
    vs->returns[vs->n_returns++] = (struct pending_return){
        .return_pc = return_pc, .entry_pc = pr->pc, .entry_icount = icount, .id = pr->id,
    };
    probe_set_return_due(vs);
}

/*
 * The first instruction of a block of kernel code at the address the
 * newest pending timed probe returns to (vcpu_inline.return_due). A
 * return is a jump, so the instruction at a return address always starts
 * a block. udata packs the block's address (a kernel address: its top 17
 * bits are ones) above its length.
 */
static void vcpu_return_exec(unsigned int vcpu_index, void *udata)
{
    struct vcpu_state *vs = vcpu_get(vcpu_index);
    uint64_t pc = (uint64_t)((int64_t)(uintptr_t)udata >> 16);
    uint64_t n_insns = (uintptr_t)udata & 0xffff;
    const struct pending_return *r;
    struct ftr_event ev;

    if (vs->in_l2 || !vs->n_returns) {
        return;                 /* L1's return addresses */
    }
    r = &vs->returns[vs->n_returns - 1];
    if (r->return_pc != pc) {
        return;
    }
    arch->finish_pending(vs, vcpu_index);
    event_begin(vs, vcpu_index, &ev, FTR_KIND_PROBE_RETURN, r->entry_pc, 0);
    ev.icount = cfg.icount ? vs->inl.insns - n_insns : 0;
    ev.index = r->id;
    ev.addr = pc;
    ev.aux = r->entry_icount;
    vcpu_commit_event(vs, vcpu_index, &ev);
    probe_drop_return(vs, vs->n_returns - 1);
    probe_set_return_due(vs);
}

/*
 * Whether a save to addr is the first to that buffer since the last probe
 * hit: then what the buffer holds is read before it (the architecture reads it then).
 * A probe marks where the analysis starts a buffer over (exec resets it,
 * fork copies into it, both by memcpy the trace does not see), so a buffer
 * is read again after any. A direct-mapped table of address and generation:
 * a collision or a race between vCPUs costs one more read, never one less.
 */
bool buffer_first_save(uint64_t addr)
{
    uint64_t generation = probe_generation_now();
    uint64_t key = ftr_hash_mix64(addr ^ ftr_hash_mix64(generation)) | 1;
    uint64_t *slot = &buffer_seen[ftr_hash_mix64(addr) & (BUFFER_TABLE_SIZE - 1)];

    if (__atomic_load_n(slot, __ATOMIC_RELAXED) == key) {
        return false;
    }
    __atomic_store_n(slot, key, __ATOMIC_RELAXED);
    return true;
}


/*
 * Kernel blocks: a conditional callback when the block's address is where
 * a pending timed probe returns to. Its address and length pack into udata
 * (vcpu_return_exec()).
 */
void probe_tb_trans(struct qemu_plugin_tb *tb)
{
    size_t n = qemu_plugin_tb_n_insns(tb);
    uint64_t vaddr = qemu_plugin_tb_vaddr(tb);

    if (n && n < 0x10000 && (uint64_t)((int64_t)(vaddr << 16) >> 16) == vaddr &&
        (vaddr >> 63)) {
        qemu_plugin_register_vcpu_insn_exec_cond_cb(
            qemu_plugin_tb_get_insn(tb, 0), vcpu_return_exec, QEMU_PLUGIN_CB_NO_REGS,
            QEMU_PLUGIN_COND_EQ, inline_entry.return_due, vaddr,
            (void *)(uintptr_t)((vaddr << 16) | n));
    }
}
