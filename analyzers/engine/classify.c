/*
 * classify.c: fpa_classify(), the one implementation of the ownership
 * rules (docs/analysis.md): one linear pass with per-CPU and per-buffer
 * state that classifies every save and restore, reports lost and stale
 * state and foreign saves, and fills every table of the report on the way
 * (tables.c). tests/oracle.py restates the rules event by event, and the
 * tests require both to agree. It also computes each event's task
 * announcement (task_identity()).
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "fpa-internal.h"
#include "fpa-map.h"
#include "fpa-tables.h"

/* ---- classification ---- */

/*
 * The kernel's model of a CPU's registers (docs/analysis.md): they are owned
 * by the context last restored into them (fpu_fpregs_owner_ctx), and a save
 * copies them without changing that. The live state belongs to a task (its
 * user state, or a vCPU's guest state it loaded); kernel SIMD use, exec and
 * exit leave them owned by nobody.
 */
enum live { LIVE_UNKNOWN, LIVE_TASK, LIVE_NOBODY };

struct cpu_state {
    int64_t last_op;            /* the previous L1 save/restore on this CPU, or -1 */
    uint64_t sync;              /* register content it left behind */
    int sync_ok;
    uint64_t owner;             /* the buffer last restored (or adopted at a first save) */
    int owner_known;
    int8_t owner_ctx;
    int kernel_simd;            /* KERNEL_SIMD seen since last_op */
    enum live live;
    uint64_t live_task;         /* LIVE_TASK: whose state the registers hold */
    int64_t live_since;         /* the event that made it live */
    uint64_t live_vmcb;         /* the live state is this vCPU's guest state, or 0 */
    uint64_t fork_parent, fork_child;   /* an fpu_clone() in progress */
    int sigreturn;              /* the live task's sigreturn replaces its registers */
};

struct buf_state {
    int64_t last_op;
    int64_t pending_overwrite;  /* a restore that overwrote this context's newer registers */
    int64_t pending_last_sync;
    uint64_t pending_sync;
    uint64_t holds_vmcb;        /* it holds that vCPU's guest state (saved there), or 0 */
};

/* e's buffer owns the registers of its CPU, and e's task's state is live. */
static void cpu_take(struct cpu_state *cs, const struct ftr_event *e, int8_t ctx, int64_t i)
{
    cs->owner = e->addr;
    cs->owner_known = 1;
    cs->owner_ctx = ctx;
    cs->live = LIVE_TASK;
    cs->live_task = e->task;
    cs->live_since = i;
}


struct fpa_findings {
    int64_t *event, *last_sync, *resumed;
    uint64_t *buffer;
    uint8_t *cls;
    size_t cap, len, total;
};

static void finding_add(struct fpa_findings *f, int64_t event, int64_t last, int64_t resumed,
                        uint64_t buffer, uint8_t cls)
{
    f->total++;
    if (f->len < f->cap) {
        f->event[f->len] = event;
        f->last_sync[f->len] = last;
        f->resumed[f->len] = resumed;
        f->buffer[f->len] = buffer;
        f->cls[f->len] = cls;
        f->len++;
    }
}

/*
 * Where a task's FPU register buffer lies in its task_struct, as an offset
 * from the task pointer: thread.fpu.state (5.10) or the fpstate embedded at
 * the end of struct fpu (fpu->__fpstate.regs, v5.16), the same for every
 * task. Taken from the trace itself: switch_fpu_prepare() saves every
 * switched-out task's registers into its own buffer and switch_fpu_return()
 * restores them from there, so the offset of most saves and restores that
 * land inside the task's own allocation is it (a majority vote, then a
 * count). 0 when no offset has a majority.
 */
uint64_t fpa_fpu_buffer_offset(const struct ftr_event *ev, size_t n)
{
    uint64_t candidate = 0, votes = 0, total = 0, agree = 0;

    for (int pass = 0; pass < 2; pass++) {
        for (size_t i = 0; i < n; i++) {
            const struct ftr_event *e = &ev[i];
            uint64_t off = e->addr - e->task;

            if (!(is_save(e->kind) || is_restore(e->kind)) || !(e->flags & FTR_FLAG_TASK_VALID) ||
                (e->flags & FTR_FLAG_L2) ||
                e->addr <= e->task || off >= TASK_STRUCT_SPAN) {
                continue;
            }
            if (pass == 0) {
                total++;
                if (votes == 0) {
                    candidate = off;
                }
                votes += off == candidate ? 1 : -1;
            } else {
                agree += off == candidate;
            }
        }
    }
    return 2 * agree > total ? candidate : 0;
}

/*
 * The classification pass: one walk over the events in seq order with
 * per-CPU and per-buffer state. Each event goes to the handler of its kind;
 * the handlers come in the order of docs/analysis.md ("The kernel's
 * ownership model": VM entries, user boundaries, probes, then every save
 * and restore, "Classes" and "Findings").
 */
struct classify {
    struct fpa_classify_args *a;
    const struct ftr_event *ev;
    struct agg aggregate, *A;
    struct map task_map, buf_map, guest_map;
    /* The registered guest buffers lie in [guest_lo, guest_hi]: a quick "no". */
    uint64_t guest_lo, guest_hi;
    struct buf_state *bufs;
    size_t bufs_cap;
    int64_t *task_announcement;
    struct cpu_state *cpus;
    struct fpa_findings f;
    uint64_t fpu_offset;        /* fpa_fpu_buffer_offset() */
    uint64_t avx_init_hash;     /* AVX upper halves in their init state */
    uint64_t *pc_row, *task_row;        /* the event's rows of the tables */
};

/*
 * The registers' owner after event i on its CPU, for the timelines: the
 * buffer and its context kind, or 0 and -1 while no owner is known.
 */
static void classify_owner_out(struct classify *c, const struct cpu_state *cs, size_t i)
{
    c->a->owner[i] = cs->owner_known ? cs->owner : 0;
    c->a->owner_ctx[i] = cs->owner_known ? cs->owner_ctx : -1;
}

/*
 * __cpu_invalidate_fpregs_state(): kernel scratch, nobody's state (before
 * any owner is known, e.g. the boot's own FPU probing, there was nobody's
 * state to lose).
 */
static void on_kernel_simd(struct cpu_state *cs)
{
    cs->kernel_simd = 1;
    if (cs->live != LIVE_UNKNOWN) {
        cs->live = LIVE_NOBODY;
    }
    cs->live_vmcb = 0;
}

/*
 * The state live at a VM entry is a guest's. The buffer it came from is
 * that vCPU's guest buffer, unless it is a buffer that only holds guest
 * state saved there on a preemption inside KVM_RUN (5.10: the vCPU
 * thread's own thread.fpu).
 */
static int on_vm_entry(struct classify *c, struct cpu_state *cs, size_t i)
{
    struct fpa_classify_args *a = c->a;
    const struct ftr_event *e = &c->ev[i];
    uint64_t vcpu = vcpu_id(e->addr, a->ident[i]);
    uint32_t slot;
    int created;

    if (!cs->live_vmcb && cs->owner_known) {
        if (map_put(&c->guest_map, cs->owner, &slot, &created) < 0) {
            return -1;
        }
        if (cs->owner < c->guest_lo) {
            c->guest_lo = cs->owner;
        }
        if (cs->owner > c->guest_hi) {
            c->guest_hi = cs->owner;
        }
        if (created && a->n_guest < a->guest_cap) {
            a->guest_buf[a->n_guest] = cs->owner;
            a->guest_vmcb[a->n_guest] = vcpu;
            a->n_guest++;
        } else if (!created && slot < a->n_guest) {
            a->guest_vmcb[slot] = vcpu;                 /* reused by a new VM */
        }
    }
    cs->live_vmcb = vcpu;
    return 0;
}

/*
 * In user mode the registers are the task's user state, whatever they hold
 * (whether they hold the right thing is the boundary check's question,
 * analyzers/boundaries.py).
 */
static void on_user_boundary(struct cpu_state *cs, const struct ftr_event *e, size_t i)
{
    cs->live_vmcb = 0;
    if (e->flags & FTR_FLAG_TASK_VALID) {
        cs->live = LIVE_TASK;
        cs->live_task = e->task;
        cs->live_since = (int64_t)i;
    }
}

static struct buf_state *classify_owner_buf(struct classify *c, const struct cpu_state *cs)
{
    uint32_t os = cs->owner_known ? map_get(&c->buf_map, cs->owner) : UINT32_MAX;

    return os != UINT32_MAX ? &c->bufs[os] : NULL;
}

static void on_probe(struct classify *c, struct cpu_state *cs, const struct ftr_event *e)
{
    int live_is_caller = cs->live == LIVE_TASK && cs->live_task == e->task;
    struct buf_state *owner;

    switch (e->index) {
    case FTR_PROBE_FORK_COPY:
        cs->fork_parent = e->task;
        cs->fork_child = e->value;
        break;
    case FTR_PROBE_TASK_EXIT:
        /*
         * exit_thread(): the task's context ends and never resumes (the
         * last switch away may still save its registers).
         */
        if (live_is_caller && (owner = classify_owner_buf(c, cs))) {
            owner->pending_overwrite = -1;
        }
        break;
    case FTR_PROBE_SIGRETURN:
        /*
         * sigreturn sets the task's state from its signal frame on purpose:
         * the registers' newer content (the handler's) is dropped, and the
         * buffer rewritten in memory is loaded (arm64:
         * restore_fpsimd_context() -> fpsimd_update_current_state(); x86:
         * __fpu_restore_sig()'s copy into the task's fpstate). That load
         * neither is stale nor loses anything.
         */
        if (live_is_caller) {
            cs->sigreturn = 1;
        }
        break;
    case FTR_PROBE_EXEC_RESET:
        /*
         * exec: fpu__drop() leaves the registers nobody's, and the task's
         * buffer is rewritten in memory (init_fpstate).
         */
        if (!live_is_caller) {
            break;
        }
        cs->live = LIVE_NOBODY;
        cs->live_vmcb = 0;
        if ((owner = classify_owner_buf(c, cs))) {
            owner->last_op = -1;
            owner->pending_overwrite = -1;
        }
        cs->owner_known = 0;
        break;
    default:
        break;
    }
}

/* The context kind of a save or restore's buffer (docs/analysis.md's table). */
static int8_t op_context(const struct classify *c, const struct ftr_event *e)
{
    const struct fpa_classify_args *a = c->a;

    if (a->init_hi && e->addr >= a->init_lo && e->addr < a->init_hi) {
        return FPA_CTX_INIT;
    }
    if (e->addr < USER_LIMIT && (e->flags & FTR_FLAG_TASK_VALID)) {
        return FPA_CTX_SIGNAL_FRAME;
    }
    return FPA_CTX_TASK;
}

static struct buf_state *classify_buf(struct classify *c, uint64_t addr)
{
    uint32_t slot;
    int created;

    if (map_put(&c->buf_map, addr, &slot, &created) < 0) {
        return NULL;
    }
    if (slot >= c->bufs_cap) {
        struct buf_state *more = realloc(c->bufs, c->bufs_cap * 2 * sizeof(*more));
        if (!more) {
            return NULL;
        }
        c->bufs = more;
        c->bufs_cap *= 2;
    }
    struct buf_state *bs = &c->bufs[slot];
    if (created) {
        bs->last_op = -1;
        bs->pending_overwrite = -1;
        bs->holds_vmcb = 0;
    }
    return bs;
}

/*
 * fpu_clone() / fpu__copy(): the parent saves its live registers into the
 * child's new buffer, inside the child's task_struct. A new context begins
 * there: what the address held before is gone. It is the parent's first
 * save after the probe, or there is none: with TIF_NEED_FPU_LOAD set,
 * 5.10's fpu__copy() copies the parent's buffer with memcpy() (6.x's
 * fpu_clone() restores it first and then saves).
 */
static int op_is_fork_copy(const struct classify *c, struct cpu_state *cs,
                           const struct ftr_event *e)
{
    int fork_copy = 0;

    if (is_save(e->kind) && cs->fork_parent != 0 && cs->fork_parent == e->task) {
        fork_copy = c->fpu_offset != 0 && e->addr == cs->fork_child + c->fpu_offset;
        cs->fork_parent = 0;
    }
    return fork_copy;
}

/*
 * The next operation on a context that was overwritten: a lost state if it
 * resumes with exactly the bytes of its last sync.
 */
static int op_confirm_overwrite(struct classify *c, struct buf_state *bs, size_t i)
{
    struct fpa_classify_args *a = c->a;
    const struct ftr_event *e = &c->ev[i];
    int64_t r = bs->pending_overwrite;

    if (r < 0) {
        return 0;
    }
    bs->pending_overwrite = -1;
    if (is_save(e->kind) || !(e->flags & FTR_FLAG_REGS_AFTER_VALID) ||
        e->regs_after_hash != bs->pending_sync) {
        return 0;
    }
    a->cls[r] = FPA_LOST_STATE;
    finding_add(&c->f, r, bs->pending_last_sync, (int64_t)i, e->addr, FPA_LOST_STATE);
    return c->A ? agg_relabel_lost(c->A, &c->ev[r], a->ident[r], a->ctx[r], a->guest_of[r]) : 0;
}

/*
 * The kernel saves only current's registers (switch_fpu_prepare() runs as
 * the outgoing task, kernel_fpu_begin(), fpu_clone(),
 * fpu_swap_kvm_fpstate(), the signal frame): a save by a task whose state
 * is not live writes another context's registers, or nobody's, into its
 * buffer. A fork copy is sanctioned; what the child got is checked at its
 * first return.
 */
static void save_check_foreign(struct classify *c, const struct cpu_state *cs,
                               const struct ftr_event *e, size_t i)
{
    if (cs->live == LIVE_TASK && cs->live_task != e->task) {
        finding_add(&c->f, (int64_t)i, cs->live_since, -1, e->addr, FPA_FINDING_FOREIGN_SAVE);
    } else if (cs->live == LIVE_NOBODY) {
        finding_add(&c->f, (int64_t)i, cs->live_since, -1, e->addr, FPA_FINDING_DROPPED_SAVE);
    }
}

/* A save: redundant when it wrote what the buffer already held ("Classes"). */
static void save_classify(struct classify *c, const struct buf_state *bs, size_t i)
{
    struct fpa_classify_args *a = c->a;
    const struct ftr_event *e = &c->ev[i];
    int64_t q = bs->last_op;

    if (q < 0) {
        if ((e->flags & FTR_FLAG_PRIOR_VALID) && (e->flags & FTR_FLAG_MEM_VALID)) {
            /* The plugin read the buffer before this first save to it. */
            a->cls[i] = e->aux == e->mem_hash ? FPA_REDUNDANT_SAVE : FPA_NECESSARY;
        } else {
            a->cls[i] = FPA_UNKNOWN;
            a->why[i] = FPA_FIRST_SIGHT;
        }
        return;
    }
    const struct ftr_event *eq = &c->ev[q];
    uint64_t mask_s = covers(e), mask_q = covers(eq);
    int redundant, undecidable;
    uint8_t why = FPA_MASKS_DIFFER;

    if (is_save(eq->kind)) {
        redundant = e->mem_hash == eq->mem_hash && mask_s == mask_q;
        undecidable = !redundant && mask_s != mask_q;
    } else {
        /*
         * After a restore the buffer holds what the registers got, AVX
         * halves included: a restore whose XSTATE_BV leaves AVX out loaded
         * them in their init state.
         */
        int both_read = (e->flags & FTR_FLAG_REGS_VALID) && (eq->flags & FTR_FLAG_REGS_AFTER_VALID);
        uint64_t avx = e->mem_hash - e->mem_legacy_hash;
        uint64_t avx_q = (eq->xstate_bv & 4) ? eq->mem_hash - eq->mem_legacy_hash
                                             : c->avx_init_hash;
        int wants_avx = (mask_s & 4) != 0;
        redundant = both_read && e->regs_hash == eq->regs_after_hash &&
                    (!wants_avx || avx == avx_q);
        undecidable = !redundant && (!both_read || (wants_avx && !(mask_q & 4)));
        if (!both_read) {
            why = FPA_REGISTERS_NOT_READ;
        }
    }
    if (redundant) {
        a->cls[i] = FPA_REDUNDANT_SAVE;
    } else if (undecidable) {
        a->cls[i] = FPA_UNKNOWN;
        a->why[i] = why;
    } else {
        a->cls[i] = FPA_NECESSARY;
    }
}

/*
 * A restore: redundant when the buffer already owned unchanged registers,
 * stale when it went over its own newer registers; one that overwrites
 * another context's newer registers is remembered on that context's buffer
 * (op_confirm_overwrite() decides at its next operation).
 */
static void restore_classify(struct classify *c, struct cpu_state *cs, int8_t my_ctx, size_t i)
{
    struct fpa_classify_args *a = c->a;
    const struct ftr_event *e = &c->ev[i];
    int64_t p = cs->last_op;
    int has_p = p >= 0;
    int regs_ok = !!(e->flags & FTR_FLAG_REGS_VALID), after_ok = !!(e->flags & FTR_FLAG_REGS_AFTER_VALID);
    int known = has_p && cs->sync_ok && regs_ok;
    int modified = known && e->regs_hash != cs->sync;
    int owner_same = has_p && cs->owner_known && cs->owner == e->addr;
    /* modified by the owner, not discarded by kernel SIMD use */
    int owner_dirty = modified && !(has_p && cs->kernel_simd);
    int unchanged = after_ok && regs_ok && e->regs_after_hash == e->regs_hash;
    int buffer_unchanged = after_ok && has_p && cs->sync_ok && e->regs_after_hash == cs->sync;
    uint8_t cls = FPA_NECESSARY;

    if (owner_same && known && !modified && unchanged) {
        cls = FPA_REDUNDANT_RESTORE;
    }
    if (owner_same && owner_dirty && buffer_unchanged && my_ctx != FPA_CTX_INIT &&
        !cs->sigreturn) {
        cls = FPA_STALE_RESTORE;
    }
    if (has_p && cs->owner_known && !owner_same && owner_dirty &&
        cs->owner_ctx != FPA_CTX_INIT && cs->sync_ok && !cs->sigreturn) {
        /*
         * Another context's newer registers are overwritten without a
         * save. It is lost if that context's next operation, none having
         * happened since its last sync, reloads that sync.
         */
        struct buf_state *victim = classify_owner_buf(c, cs);
        if (victim && victim->last_op == p) {
            victim->pending_overwrite = (int64_t)i;
            victim->pending_last_sync = p;
            victim->pending_sync = cs->sync;
        }
    }
    if (!has_p) {
        cls = FPA_UNKNOWN;
        a->why[i] = FPA_NO_PREVIOUS_OWNER;
    } else if (!known && cls == FPA_NECESSARY) {
        cls = FPA_UNKNOWN;
        a->why[i] = FPA_REGISTERS_NOT_READ;
    }
    a->cls[i] = cls;
    if (cls == FPA_STALE_RESTORE) {
        finding_add(&c->f, (int64_t)i, p, -1, e->addr, FPA_STALE_RESTORE);
    }
}

/* A save or restore executed in L1 by the kernel that moved state. */
static int on_operation(struct classify *c, struct cpu_state *cs, size_t i)
{
    struct fpa_classify_args *a = c->a;
    const struct ftr_event *e = &c->ev[i];
    int save = is_save(e->kind);
    int8_t my_ctx = op_context(c, e);
    struct buf_state *bs = classify_buf(c, e->addr);

    if (!bs) {
        return -1;
    }
    a->ctx[i] = my_ctx;
    int fork_copy = op_is_fork_copy(c, cs, e);
    if (fork_copy) {
        bs->last_op = -1;
        bs->pending_overwrite = -1;
    }
    if (op_confirm_overwrite(c, bs, i) < 0) {
        return -1;
    }
    if (save) {
        if (!fork_copy && my_ctx != FPA_CTX_INIT && (e->flags & FTR_FLAG_TASK_VALID)) {
            save_check_foreign(c, cs, e, i);
        }
        a->guest_of[i] = cs->live == LIVE_TASK ? cs->live_vmcb : 0;
        bs->holds_vmcb = a->guest_of[i];
        if (!cs->owner_known) {
            /* No restore seen on this CPU: the saving task's state was live. */
            cpu_take(cs, e, my_ctx, (int64_t)i);
        }
        if (fork_copy) {
            a->cls[i] = FPA_NECESSARY;
        } else {
            save_classify(c, bs, i);
        }
    } else {
        /* A guest buffer of one of this thread's vCPUs (not of an old VM's). */
        uint32_t gs = e->addr >= c->guest_lo && e->addr <= c->guest_hi
                    ? map_get(&c->guest_map, e->addr) : UINT32_MAX;
        uint64_t registered = gs != UINT32_MAX && gs < a->n_guest ? a->guest_vmcb[gs] : 0;
        if (registered >> 40 != ((uint64_t)a->ident[i] & 0xffffffull)) {
            registered = 0;
        }
        a->guest_of[i] = bs->holds_vmcb ? bs->holds_vmcb : registered;
        restore_classify(c, cs, my_ctx, i);
        /* The kernel loads only current's state: it owns the registers now. */
        cpu_take(cs, e, my_ctx, (int64_t)i);
        cs->live_vmcb = a->guest_of[i];
    }
    if (c->A && agg_classified(c->A, e, a->ident[i], c->pc_row, c->task_row, a->cls[i],
                               a->why[i], my_ctx, a->guest_of[i]) < 0) {
        return -1;
    }
    cs->last_op = (int64_t)i;
    cs->sync = save ? e->regs_hash : e->regs_after_hash;
    cs->sync_ok = !!(e->flags & (save ? FTR_FLAG_REGS_VALID : FTR_FLAG_REGS_AFTER_VALID));
    cs->kernel_simd = 0;
    cs->sigreturn = 0;
    bs->last_op = (int64_t)i;
    return 0;
}

/* The task announcement in force at event i: the latest for its pointer so far. */
static int classify_ident(struct classify *c, size_t *ti, size_t i)
{
    struct fpa_classify_args *a = c->a;
    const struct ftr_event *e = &c->ev[i];
    uint32_t slot;
    int created;

    while (*ti < a->n_tasks && a->tasks[*ti].seq <= e->seq) {
        if (map_put(&c->task_map, a->tasks[*ti].task, &slot, &created) < 0) {
            return -1;
        }
        c->task_announcement[slot] = (int64_t)(*ti)++;
    }
    a->ident[i] = -1;
    if (e->flags & FTR_FLAG_TASK_VALID) {
        uint32_t ts = map_get(&c->task_map, e->task);
        if (ts != UINT32_MAX) {
            a->ident[i] = c->task_announcement[ts];
        }
    }
    return 0;
}

/*
 * Operations that cannot be judged: the nested guest's own (its kernel's
 * contexts), user-mode code's own (an XSAVE in a program changes no kernel
 * state: the registers are the task's either way), and those that moved
 * nothing.
 */
static uint8_t op_unjudged(const struct ftr_event *e)
{
    if (!is_save(e->kind) && !is_restore(e->kind)) {
        return FPA_WHY_NONE;
    }
    return (e->flags & FTR_FLAG_L2) ? FPA_NESTED_GUEST
         : (e->flags & FTR_FLAG_PL_MASK) == 3 ? FPA_USER_MODE
         : !(e->flags & FTR_FLAG_MEM_VALID) ? FPA_NO_MEMORY_ACCESS : FPA_WHY_NONE;
}

static int classify_event(struct classify *c, size_t *ti, size_t i)
{
    struct fpa_classify_args *a = c->a;
    const struct ftr_event *e = &c->ev[i];
    struct cpu_state *cs = &c->cpus[e->vcpu];

    if (classify_ident(c, ti, i) < 0) {
        return -1;
    }
    a->cls[i] = FPA_NOT_CLASSIFIED;
    a->why[i] = FPA_WHY_NONE;
    a->ctx[i] = -1;
    a->guest_of[i] = 0;
    if (c->A && agg_event(c->A, e, a->ident[i], &c->pc_row, &c->task_row) < 0) {
        return -1;
    }
    uint8_t unjudged = op_unjudged(e);
    if (unjudged) {
        a->cls[i] = FPA_UNKNOWN;
        a->why[i] = unjudged;
        if (c->A && agg_classified(c->A, e, a->ident[i], c->pc_row, c->task_row, FPA_UNKNOWN,
                                   unjudged, -1, 0) < 0) {
            return -1;
        }
    }
    if (!(e->flags & FTR_FLAG_L2)) {
        if (e->flags & FTR_FLAG_KERNEL_SIMD) {
            on_kernel_simd(cs);
        }
        switch (e->kind) {
        case FTR_KIND_VM_ENTRY:
            if (on_vm_entry(c, cs, i) < 0) {
                return -1;
            }
            break;
        case FTR_KIND_USER_ENTRY:
        case FTR_KIND_USER_RETURN:
            on_user_boundary(cs, e, i);
            break;
        case FTR_KIND_PROBE:
            on_probe(c, cs, e);
            break;
        default:
            if (!unjudged && (is_save(e->kind) || is_restore(e->kind)) &&
                on_operation(c, cs, i) < 0) {
                return -1;
            }
            break;
        }
    }
    classify_owner_out(c, cs, i);
    return 0;
}

/*
 * Guest buffers are known once their VM entries are seen: label their
 * operations (where no other kind, signal frame or init, took precedence)
 * and the guest state they moved; so too the owners.
 */
static void classify_label_guests(struct classify *c)
{
    struct fpa_classify_args *a = c->a;

    for (size_t i = 0; i < a->n; i++) {
        if (a->owner_ctx[i] == FPA_CTX_TASK && a->owner[i] >= c->guest_lo &&
            a->owner[i] <= c->guest_hi && map_get(&c->guest_map, a->owner[i]) != UINT32_MAX) {
            a->owner_ctx[i] = FPA_CTX_GUEST;
        }
        if (a->ctx[i] < 0) {
            continue;
        }
        uint32_t gs = c->ev[i].addr >= c->guest_lo && c->ev[i].addr <= c->guest_hi
                    ? map_get(&c->guest_map, c->ev[i].addr) : UINT32_MAX;
        if (a->ctx[i] == FPA_CTX_TASK && gs != UINT32_MAX) {
            a->ctx[i] = FPA_CTX_GUEST;
            if (!a->guest_of[i] && gs < a->n_guest) {
                a->guest_of[i] = a->guest_vmcb[gs];
            }
        } else if (a->guest_of[i] && a->ctx[i] == FPA_CTX_TASK) {
            a->ctx[i] = FPA_CTX_GUEST;
        }
    }
}

int fpa_classify(struct fpa_classify_args *a)
{
    struct classify c = {
        .a = a, .ev = a->ev, .guest_lo = UINT64_MAX, .bufs_cap = 1024,
        .f = { a->f_event, a->f_last, a->f_resumed, a->f_buffer, a->f_cls, a->f_cap, 0, 0 },
        .avx_init_hash = ftr_xsave_zero_hash(FTR_XSAVE_AVX_START, FTR_XSAVE_AVX_END),
    };
    uint32_t max_cpu = 0;
    size_t ti = 0;
    int rc = -1;

    for (size_t i = 0; i < a->n; i++) {
        if (a->ev[i].vcpu > max_cpu) {
            max_cpu = a->ev[i].vcpu;
        }
    }
    a->n_guest = 0;
    c.cpus = calloc(max_cpu + 1, sizeof(*c.cpus));
    c.task_announcement = malloc((a->n_tasks + 1) * sizeof(int64_t));
    c.bufs = malloc(c.bufs_cap * sizeof(*c.bufs));
    if (!c.cpus || !c.task_announcement || !c.bufs || map_init(&c.task_map, 1024) < 0 ||
        map_init(&c.buf_map, 4096) < 0 || map_init(&c.guest_map, 64) < 0) {
        goto out;
    }
    for (uint32_t cpu = 0; cpu <= max_cpu; cpu++) {
        c.cpus[cpu].last_op = -1;
        c.cpus[cpu].live_since = -1;
    }
    c.fpu_offset = fpa_fpu_buffer_offset(a->ev, a->n);
    if (a->agg_small) {
        c.A = &c.aggregate;
        if (agg_init(c.A, a->agg_small) < 0) {
            goto out;
        }
    }
    for (size_t i = 0; i < a->n; i++) {
        if (classify_event(&c, &ti, i) < 0) {
            goto out;
        }
    }
    classify_label_guests(&c);
    rc = c.A ? agg_output(c.A, &c.guest_map, a->guest_vmcb, a->n_guest, a->agg_ptrs,
                          a->agg_cap, a->agg_n_out) : 0;
out:
    if (c.A) {
        agg_free(c.A);
    }
    a->f_len = c.f.len;
    a->f_total = c.f.total;
    map_free(&c.task_map);
    map_free(&c.buf_map);
    map_free(&c.guest_map);
    free(c.bufs);
    free(c.cpus);
    free(c.task_announcement);
    return rc;
}

