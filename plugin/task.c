/*
 * task.c: who is current on each vCPU, and the names of the tasks
 * seen: a task record is written once per (task, pid, comm) identity, from
 * the host kernel's memory or, for the nested guest's tasks, at the next VM
 * exit through the guest's page tables (arch_ops.guest_read).
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include <string.h>

#include "fputrace.h"

/* Task identities already announced: a lock-free set (seen_set_add()). */
static uint64_t task_seen[TASK_TABLE_SIZE];

/*
 * A lock-free set of nonzero keys: true the first time a key is added;
 * when_full once the table is full (announcing a task twice beats never;
 * no prior read of a buffer beats a wrong one).
 */
static bool seen_set_add(uint64_t *table, uint32_t size, uint64_t key, bool when_full)
{
    uint32_t slot = ftr_hash_mix64(key) & (size - 1);

    for (uint32_t probe = 0; probe < size; probe++) {
        uint64_t *p = &table[(slot + probe) & (size - 1)];
        uint64_t expected = 0;
        uint64_t cur = __atomic_load_n(p, __ATOMIC_RELAXED);

        if (cur == key) {
            return false;
        }
        if (cur == 0 &&
            __atomic_compare_exchange_n(p, &expected, key, false,
                                        __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
            return true;
        }
        if (expected == key) {
            return false;
        }
    }
    return when_full;
}

/*
 * A task's pid, tgid and comm. They lie within a few hundred bytes of each
 * other in task_struct, so one read of the span costs one page walk (two if
 * it crosses a page) where three reads would cost three: this runs for
 * every event.
 */
#define TASK_SPAN_MAX           1024

typedef bool (*mem_reader)(struct vcpu_state *vs, uint64_t vaddr, void *out, size_t len);

static bool task_identity(struct vcpu_state *vs, const struct task_layout *lay,
                          mem_reader read, uint64_t task, struct ftr_task *t)
{
    int64_t lo = lay->pid_off, hi = lay->pid_off + (int64_t)sizeof(t->pid);
    uint8_t span[TASK_SPAN_MAX];
    bool ok;

    if (lay->tgid_off >= 0) {
        lo = MIN(lo, lay->tgid_off);
        hi = MAX(hi, lay->tgid_off + (int64_t)sizeof(t->tgid));
    }
    if (lay->comm_off >= 0) {
        lo = MIN(lo, lay->comm_off);
        hi = MAX(hi, lay->comm_off + (int64_t)sizeof(t->comm) - 1);
    }
    if (hi - lo <= TASK_SPAN_MAX) {
        if (!read(vs, task + lo, span, hi - lo)) {
            return false;
        }
        memcpy(&t->pid, span + lay->pid_off - lo, sizeof(t->pid));
        if (lay->tgid_off >= 0) {
            memcpy(&t->tgid, span + lay->tgid_off - lo, sizeof(t->tgid));
        }
        if (lay->comm_off >= 0) {
            memcpy(t->comm, span + lay->comm_off - lo, sizeof(t->comm) - 1);
        }
        return true;
    }
    ok = read(vs, task + lay->pid_off, &t->pid, sizeof(t->pid));
    if (lay->tgid_off >= 0) {
        ok &= read(vs, task + lay->tgid_off, &t->tgid, sizeof(t->tgid));
    }
    if (lay->comm_off >= 0) {
        ok &= read(vs, task + lay->comm_off, t->comm, sizeof(t->comm) - 1);
    }
    return ok;
}

/* An identity's key in task_seen: its pointer, pid and comm, and its level. */
static uint64_t task_key(const struct ftr_task *t)
{
    uint64_t comm_words[2];

    memcpy(comm_words, t->comm, sizeof(comm_words));
    uint64_t who = ftr_hash_mix64(t->task ^
                                  ftr_hash_mix64(t->pid ^ ((uint64_t)t->flags << 32)));

    return (who ^ ftr_hash_mix64(comm_words[0] ^ ftr_hash_mix64(comm_words[1]))) | 1;
}

/* Write a task record once per identity (task_key()). */
static void task_record(struct vcpu_state *vs, unsigned int vcpu_index,
                        struct ftr_task *t)
{
    if (seen_set_add(task_seen, TASK_TABLE_SIZE, task_key(t), true)) {
        t->vcpu = vcpu_index;
        vs->tasks[vs->n_tasks++] = *t;
        vs->tasks_total++;
        if (vs->n_tasks == cfg.block_events) {
            vcpu_flush_tasks(vs, vcpu_index);
        }
    }
}

/*
 * Announce a task's (pid, tgid, comm) when this identity was not announced
 * before. Reads them only when the task changed or a probe hit since the
 * last read on this vCPU: the same task as at the last read, no probe hit
 * since, means the same pid and comm (probe_generation). Without probes
 * there is no such guarantee, so every event reads them. exec sets the new
 * comm after its probe (begin_new_exec(): flush_thread(), then
 * __set_task_comm()), so the first user return after any probe hit reads
 * them again (vcpu_user_return()). A comm set by prctl() or through /proc
 * shows from the next read on.
 */
void task_announce(struct vcpu_state *vs, unsigned int vcpu_index, uint64_t task,
                   uint64_t seq)
{
    struct ftr_task t = { .task = task, .seq = seq };
    uint64_t generation;

    if (cfg.task.pid_off < 0) {
        return;
    }
    generation = probe_generation_now();
    if (cfg.n_probes && task == vs->identity_task &&
        generation == vs->identity_generation) {
        return;
    }
    task_identity(vs, &cfg.task, mem_read, task, &t);
    vs->identity_task = task;
    vs->identity_generation = generation;
    task_record(vs, vcpu_index, &t);
}

/* Queue a guest task for naming at the next VM exit; false when the queue is full. */
static bool guest_unnamed_add(struct vcpu_state *vs, uint64_t task, uint64_t seq)
{
    for (unsigned i = 0; i < vs->n_guest_unnamed; i++) {
        if (vs->guest_unnamed[i].task == task) {
            return true;        /* queued already, at its first switch */
        }
    }
    if (vs->n_guest_unnamed == GUEST_UNNAMED_MAX) {
        return false;
    }
    vs->guest_unnamed[vs->n_guest_unnamed].task = task;
    vs->guest_unnamed[vs->n_guest_unnamed++].seq = seq;
    return true;
}

/*
 * A context switch in the nested guest's kernel: __switch_to(prev, next)
 * makes next its current task. The pointer comes from the argument
 * register. Its pid and comm wait for the next VM exit, where the guest's
 * memory can be read (mem_read(), guest_tasks_name()); the task record
 * takes this point's sequence number all the same. Where the guest cannot
 * be read, or too many tasks ran since the last exit, the task is
 * announced by its pointer alone.
 */
void guest_task_switch(struct vcpu_state *vs, unsigned int vcpu_index, uint64_t next)
{
    uint64_t seq = __atomic_load_n(&next_seq, __ATOMIC_RELAXED);
    bool nameable = arch->guest_read && cfg.gtask.pid_off >= 0;

    if (!(next >> 63)) {
        return;
    }
    if (next != vs->guest_current && !(nameable && guest_unnamed_add(vs, next, seq))) {
        struct ftr_task t = { .task = next, .seq = seq, .flags = FTR_TASK_FLAG_L2 };

        task_record(vs, vcpu_index, &t);
    }
    vs->guest_next = next;      /* current from the next event that is not prev's save */
}

/*
 * After a VM exit: the pid, tgid and comm of the guest's tasks switched to
 * while it ran, read through its page tables (arch_ops.guest_read). When
 * the recording ends in the guest (readable false), or a read fails, by
 * pointer alone.
 */
void guest_tasks_name(struct vcpu_state *vs, unsigned int vcpu_index, bool readable)
{
    struct ftr_task cur = { .task = vs->guest_current,
                            .seq = __atomic_load_n(&next_seq, __ATOMIC_RELAXED),
                            .flags = FTR_TASK_FLAG_L2 };

    for (unsigned i = 0; i < vs->n_guest_unnamed; i++) {
        const struct ftr_task bare = { .task = vs->guest_unnamed[i].task,
                                       .seq = vs->guest_unnamed[i].seq,
                                       .flags = FTR_TASK_FLAG_L2 };
        struct ftr_task t = bare;

        if (!readable || !task_identity(vs, &cfg.gtask, arch->guest_read, t.task, &t)) {
            t = bare;           /* a failed read may have filled some fields */
        }
        task_record(vs, vcpu_index, &t);
    }
    vs->n_guest_unnamed = 0;
    /*
     * The current task again, at every exit: exec() renames a task without
     * a switch (begin_new_exec(): __set_task_comm()), so one named at its
     * first switch, before its exec, would keep its parent's comm. A new
     * identity only is written (task_record()), from this point on.
     */
    if (readable && (cur.task >> 63) && cfg.gtask.pid_off >= 0 && arch->guest_read &&
        task_identity(vs, &cfg.gtask, arch->guest_read, cur.task, &cur)) {
        task_record(vs, vcpu_index, &cur);
    }
}

