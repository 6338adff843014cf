/*
 * fputrace: a QEMU TCG plugin that records FPU state operations.
 *
 * It watches the instructions with which a kernel (and KVM inside it) moves
 * FPU/SIMD register state between the register file and memory, changes
 * which state components exist, or enters and leaves a nested guest:
 *
 *   x86_64: XSAVE XSAVEOPT XSAVEC XSAVES XRSTOR XRSTORS FXSAVE FXRSTOR
 *           (and their REX.W forms), XSETBV, WRMSR, VMRUN.
 *
 * Instructions are recognised from their bytes at translation time; only
 * those get an exec callback (plus memory callbacks on the saves and
 * restores), so every other instruction runs at full speed.
 *
 * It also records the boundaries where the truth about a task's FPU state
 * is visible: every return to user mode, and the entry from user mode that
 * preceded it, with the register file's hash at both. Returns are the
 * SYSRET and IRET instructions (an IRET whose frame holds a user CS);
 * entries are the first SWAPGS after a return, which every entry path from
 * user mode executes before anything else touches the kernel's state. Only
 * those instructions get callbacks. An entry's register hash is read only
 * when something may change the registers before the return (a save, a
 * restore, kernel SIMD code): a return with nothing in between is recorded
 * as QUIET without reading a register.
 *
 * Probes: an exec callback on the first instruction of kernel functions
 * the recorder names (probe=ADDR:ID) records the function's arguments, so
 * fork copies, exec resets, signal frames and kernel_fpu sections show up.
 *
 * Each event becomes a fixed-size record in a per-vCPU buffer; full buffers
 * are written to the trace file as self-checking blocks with a single
 * write(2) on an O_APPEND descriptor, so the exec path takes no lock and a
 * trace cut short by a crash stays readable up to its last whole block.
 * docs/trace-format.md describes every byte written here.
 *
 * Files: this one holds the state and code both architectures share and
 * the plugin's callbacks; trace.c writes the trace, xsave-hash.c hashes
 * XSAVE images (ftr-hash.h defines the hash), and x86.c and arm64.c each
 * decode, instrument and read one architecture behind struct arch_ops
 * (fputrace.h), chosen at install.
 *
 * Arguments (key=value, comma separated by QEMU):
 *   out=PATH            trace file to create (required)
 *   end=PATH            a file that says how the run ended (an FTR_ENDS name),
 *                       read when QEMU exits; without it the footer says EXITED
 *   current=ADDR        per-cpu address of the kernel's current task pointer
 *                       (read through GS base, i.e. %gs:ADDR)
 *   task_pid=OFF, task_tgid=OFF, task_comm=OFF
 *                       offsets in struct task_struct
 *   gtask_pid=OFF, gtask_tgid=OFF, gtask_comm=OFF
 *                       the same in the nested guest kernel's task_struct
 *   dmap=ADDR, dmap_var=ADDR
 *                       x86: where L1's direct map of physical memory begins,
 *                       or the address of L1's variable holding it; the
 *                       guest's tasks are named through it (x86_guest_read())
 *   msr=INDEX           also record WRMSR to INDEX (may repeat); IA32_XFD
 *                       and IA32_XFD_ERR are always recorded
 *   kernel=STR, qemu=STR
 *                       identity strings copied into the trace header
 *   block_events=N      events per block (default 512)
 *   probe=ADDR:ID[:FLAGS]
 *                       record entry to the kernel function at ADDR as a
 *                       probe event of kind ID (enum ftr_probe; may repeat).
 *                       FLAGS: t (timed: its return is a PROBE_RETURN event),
 *                       q (quiet: it renames no task and rewrites no buffer)
 *   icount=on|off       events carry the vCPU's instruction count (default on)
 *   boundaries=on|off   record user entry/return boundaries (default on)
 *   boundary_state=on|off
 *                       with them, the state beyond the register hash where
 *                       the architecture has one (arm64: the SVE registers
 *                       above V0-V31; default on)
 *   regs=derive|read    register hashes at 64-bit saves and restores from the
 *                       bytes they move (default), or read register by register
 *   fpcode=ADDR:LEN     arm64: kernel FP core code whose FP/SIMD instructions are
 *                       state handling, not kernel SIMD use (may repeat)
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fputrace.h"

QEMU_PLUGIN_EXPORT int qemu_plugin_version = QEMU_PLUGIN_VERSION;

const struct arch_ops *arch;

/* ---- global state ----------------------------------------------------- */

struct ftr_config cfg = {
    .fd = -1,
    .block_events = 512,
    .task = { .pid_off = -1, .tgid_off = -1, .comm_off = -1 },
    .gtask = { .pid_off = -1, .tgid_off = -1, .comm_off = -1 },
    .boundaries = true,
    .boundary_state = true,
    .derive_regs = true,
    .icount = true,
};

static struct qemu_plugin_scoreboard *vcpus;
static qemu_plugin_u64 kernel_simd_entry;       /* vcpu_state.kernel_simd */
static qemu_plugin_u64 entry_pending_entry;     /* vcpu_state.entry_pending */
static qemu_plugin_u64 insns_entry;             /* vcpu_state.insns */
static qemu_plugin_u64 insn_tail_entry;         /* vcpu_state.insn_tail */
static qemu_plugin_u64 n_returns_entry;         /* vcpu_state.n_returns */
qemu_plugin_u64 regs_dirty_entry;        /* vcpu_state.regs_dirty */
qemu_plugin_u64 l2_iret_entry;           /* vcpu_state.l2_iret_pending */
qemu_plugin_u64 user_block_due_entry;    /* vcpu_state.user_block_due */
static uint64_t next_seq;               /* atomic */
/*
 * Bumped by every probe hit (atomic). The probes include exec and task
 * exit: a task's comm changes at exec, and its task_struct can hold
 * another task only after it exits, so between two probe hits a task
 * pointer names the same pid and comm (see x86_current_task()).
 */
static uint64_t probe_generation;
uint64_t blocks_written;         /* atomic */
uint64_t write_errors;           /* atomic */

/* Translation-time tables, touched only under insn_lock. */
GMutex insn_lock;
GHashTable *insn_table;          /* (vaddr, bytes) -> struct fpu_insn */
static uint64_t site_pc[SITE_TABLE_SIZE];       /* 0: empty slot */
static uint32_t site_types[SITE_TABLE_SIZE];

static bool regs_resolved;        /* arch->regs_resolve() ran */

/* Task identities already announced (a lock-free set), and save areas already read. */
static uint64_t task_seen[TASK_TABLE_SIZE];
static uint64_t buffer_seen[BUFFER_TABLE_SIZE];     /* see buffer_first_save() */


/*
 * Commit a save, after the user entry that waited for its register hash
 * (vcpu_materialize_entry(..., defer)): the save stored the registers the
 * task entered with, and the entry comes first in sequence.
 */
void vcpu_commit_after_entry(struct vcpu_state *vs, unsigned int vcpu_index,
                             struct ftr_event *ev)
{
    if (vs->pending_entry) {
        vs->pending_entry = false;
        if (ev->flags & FTR_FLAG_REGS_VALID) {
            vs->entry_event.regs_hash = ev->regs_hash;
            vs->entry_event.flags |= FTR_FLAG_REGS_VALID;
        }
        vcpu_commit_event(vs, vcpu_index, &vs->entry_event);
    }
    vcpu_commit_event(vs, vcpu_index, ev);
}

/* ---- helpers: guest state ------------------------------------------- */

struct vcpu_state *vcpu_get(unsigned int vcpu_index)
{
    return qemu_plugin_scoreboard_find(vcpus, vcpu_index);
}

bool reg_read(struct vcpu_state *vs, struct qemu_plugin_register *reg,
              uint8_t *out, size_t want)
{
    int n;

    if (!reg) {
        return false;
    }
    g_byte_array_set_size(vs->scratch, 0);
    n = qemu_plugin_read_register(reg, vs->scratch);
    if (n <= 0) {
        return false;
    }
    memset(out, 0, want);
    memcpy(out, vs->scratch->data, MIN((size_t)n, want));
    return true;
}

uint64_t reg_read_u64(struct vcpu_state *vs, struct qemu_plugin_register *reg)
{
    uint64_t v = 0;

    reg_read(vs, reg, (uint8_t *)&v, sizeof(v));
    return v;
}

/*
 * Read guest memory at a virtual address of the running level. Not in the
 * nested guest: QEMU 10.0 translates a plugin's read without the nested
 * page tables, so it would return L1's memory at the guest's physical
 * address (the guest's per-cpu current pointer read back as garbage).
 */
bool mem_read(struct vcpu_state *vs, uint64_t vaddr, void *out, size_t len)
{
    if (vs->in_l2) {
        return false;
    }
    g_byte_array_set_size(vs->scratch, 0);
    if (!qemu_plugin_read_memory_vaddr(vaddr, vs->scratch, len) ||
        vs->scratch->len < len) {
        return false;
    }
    memcpy(out, vs->scratch->data, len);
    return true;
}

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
 * The kernel's current task: %gs:current while in the kernel; in user mode
 * the kernel's GS base waits in KERNEL_GS_BASE until the next swapgs.
 *
 * Around VMRUN that does not hold: KVM's SVM entry code runs VMLOAD with the
 * guest's VMCB first, which loads the guest's GS base. A CPU's per-cpu base
 * never changes once set up, so the last one seen on this vCPU stands in
 * there (use_cached).
 *
 * A new (task, pid, comm) identity is announced once, so exec() renames and
 * task_struct reuse both show up.
 */
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
    return (ftr_hash_mix64(t->task ^ ftr_hash_mix64(t->pid ^ ((uint64_t)t->flags << 32))) ^
            ftr_hash_mix64(comm_words[0] ^ ftr_hash_mix64(comm_words[1]))) | 1;
}

/* Write a task record once per identity (task_key()). */
static void task_record(struct vcpu_state *vs, unsigned int vcpu_index, struct ftr_task *t)
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
    generation = __atomic_load_n(&probe_generation, __ATOMIC_ACQUIRE);
    if (cfg.n_probes && task == vs->identity_task &&
        generation == vs->identity_generation) {
        return;
    }
    task_identity(vs, &cfg.task, mem_read, task, &t);
    vs->identity_task = task;
    vs->identity_generation = generation;
    task_record(vs, vcpu_index, &t);
}

/* Fill the fields every event has; known_cpl < 0: read it from CS. */
void event_begin(struct vcpu_state *vs, unsigned int vcpu_index,
                 struct ftr_event *ev, uint8_t kind, uint64_t pc, int known_cpl)
{
    unsigned cpl = known_cpl >= 0 ? (unsigned)known_cpl : arch->privilege(vs);
    bool task_valid = false;

    memset(ev, 0, sizeof(*ev));
    ev->seq = __atomic_fetch_add(&next_seq, 1, __ATOMIC_RELAXED);
    ev->pc = pc;
    ev->kind = kind;
    ev->vcpu = vcpu_index;
    ev->xcr0 = vs->xcr0;
    if (cfg.icount) {
        ev->icount = vs->insns - vs->insn_tail;
    }
    ev->flags = cpl;
    if (vs->kernel_simd) {
        ev->flags |= FTR_FLAG_KERNEL_SIMD;
        ev->simd_pc = (uint32_t)vs->kernel_simd;
        vs->kernel_simd = 0;
        vs->last_regs_ok = false;
    }
    if (vs->in_l2) {
        /* GS base belongs to the nested guest here: use the L1 task that entered it. */
        ev->flags |= FTR_FLAG_L2;
        ev->task = vs->l1_task_at_entry;
        task_valid = ev->task != 0;
        /*
         * __switch_to() saves prev's registers (switch_fpu_prepare()) before
         * it writes current_task: a save right after the guest's switch
         * probe is still prev's; anything else runs as next.
         */
        if (vs->guest_next && ftr_kind_role(kind) != FTR_ROLE_SAVE) {
            vs->guest_current = vs->guest_next;
            vs->guest_next = 0;
        }
        ev->guest_task = vs->guest_current;
    } else {
        ev->task = arch->current_task(vs, vcpu_index, cpl, kind == FTR_KIND_VM_ENTRY,
                                    ev->seq, &task_valid);
    }
    if (task_valid) {
        ev->flags |= FTR_FLAG_TASK_VALID;
    }
}

/*
 * Read the register file's hash into an event; remember: it is also what
 * the registers hold from here on, until something changes them.
 */
void event_read_regs(struct vcpu_state *vs, struct ftr_event *ev, bool remember)
{
    bool ok;

    ev->regs_hash = arch->regs_hash(vs, &ok);
    if (ok) {
        ev->flags |= FTR_FLAG_REGS_VALID;
    }
    if (remember) {
        vs->last_regs = ev->regs_hash;
        vs->last_regs_ok = ok;
    }
}

/*
 * The register file of a task that entered from user mode, written as a
 * USER_ENTRY event the first time something may change it: nothing between
 * the entry and now can have (no save, restore or kernel SIMD instruction
 * ran), so it is the state the task entered with. regs_hash: the hash the
 * caller has just read, or NULL to read it here.
 */
void vcpu_materialize_entry(struct vcpu_state *vs, unsigned int vcpu_index,
                            const uint64_t *regs_hash, bool defer)
{
    struct ftr_event ev;
    bool ok = true;

    if (!vs->ub.entry_pending) {
        return;
    }
    vs->ub.entry_pending = 0;
    vs->ub.entry_materialized = true;
    /*
     * A task can leave the CPU with no FP event at all: when its registers
     * are not live (TIF_NEED_FPU_LOAD, e.g. after exec dropped them), the
     * switch saves nothing. Its entry state is then unknown, and what the
     * registers hold now is not it.
     */
    if (arch->current_ptr(vs) != vs->ub.entry_task) {
        return;
    }
    event_begin(vs, vcpu_index, &ev, FTR_KIND_USER_ENTRY, vs->ub.entry_pc, vs->ub.entry_pl);
    if (cfg.icount) {
        ev.icount = vs->ub.entry_icount;   /* when it entered, not now */
    }
    if (arch->boundary_state && cfg.boundary_state) {
        arch->boundary_state(vs, &ev);     /* nothing changed it since the entry either */
    }
    if (defer) {
        /* A save comes next: its bytes are the registers (x86_finish_pending()). */
        vs->entry_event = ev;
        vs->pending_entry = true;
        return;
    }
    ev.regs_hash = regs_hash ? *regs_hash : arch->regs_hash(vs, &ok);
    if (ok) {
        ev.flags |= FTR_FLAG_REGS_VALID;
    }
    vs->last_regs = ev.regs_hash;
    vs->last_regs_ok = ok;
    vcpu_commit_event(vs, vcpu_index, &ev);
}

/*
 * A return to user mode, at the SYSRET or IRET that does it (user_pc: where
 * it returns to). When the same task entered on this vCPU and nothing could
 * change its registers since, the return is QUIET: equal to the entry by
 * construction, and no register is read.
 */
void vcpu_user_return(struct vcpu_state *vs, unsigned int vcpu_index,
                      uint64_t user_pc)
{
    struct ftr_event ev;
    uint64_t task, generation;
    bool quiet, ok;

    vs->ub.in_user = true;
    arch->finish_pending(vs, vcpu_index);
    /* Without task tracking (no current=), a switch is not seen: same task assumed. */
    generation = __atomic_load_n(&probe_generation, __ATOMIC_ACQUIRE);
    if (generation != vs->return_generation) {
        vs->identity_task = 0;  /* a probe hit since: see x86_current_task() */
        vs->return_generation = generation;
    }
    task = arch->current_ptr(vs);
    quiet = vs->ub.entry_seen && !vs->ub.entry_materialized &&
            (!cfg.current_addr || (vs->ub.entry_task != 0 && task == vs->ub.entry_task));
    /*
     * event_begin() need not read it again. Not in L2: there the event
     * carries L1's task, and the guest's pointer left here would name L1's
     * next event (KVM's XSETBV after the exit).
     */
    vs->known_task = vs->in_l2 ? 0 : task;
    event_begin(vs, vcpu_index, &ev, FTR_KIND_USER_RETURN, user_pc, arch->user_pl);
    ev.addr = vs->ub.entry_seen ? vs->ub.entry_pc : 0;
    if (!vs->ub.entry_seen) {
        ev.flags |= FTR_FLAG_NO_ENTRY;
    }
    if (quiet) {
        ev.flags |= FTR_FLAG_QUIET;
    } else if (vs->last_regs_ok && !vs->regs_dirty) {
        /* Read at the last restore or save, and unchanged since. */
        ev.regs_hash = vs->last_regs;
        ev.flags |= FTR_FLAG_REGS_VALID;
    } else {
        ev.regs_hash = arch->regs_hash(vs, &ok);
        if (ok) {
            ev.flags |= FTR_FLAG_REGS_VALID;
        }
        vs->last_regs = ev.regs_hash;
        vs->last_regs_ok = ok;
    }
    if (!quiet && arch->boundary_state && cfg.boundary_state) {
        arch->boundary_state(vs, &ev);
    }
    vs->ub.entry_seen = false;
    vs->ub.entry_pending = 0;
    vcpu_commit_event(vs, vcpu_index, &ev);
}

/* The first kernel FP/SIMD instruction after an entry, before it runs. */
static void vcpu_simd_after_entry_exec(unsigned int vcpu_index, void *udata G_GNUC_UNUSED)
{
    struct vcpu_state *vs = vcpu_get(vcpu_index);

    arch->finish_pending(vs, vcpu_index);
    vcpu_materialize_entry(vs, vcpu_index, NULL, false);
}

static void probe_await_return(struct vcpu_state *vs, const struct probe *pr,
                               uint64_t return_pc, uint64_t icount);

/*
 * Entering or leaving the nested guest: each level's user boundaries are
 * its own (an L2 task in user mode when the guest exits is not L1's, and
 * L1's pending entry waits while L2 runs).
 */
void vcpu_switch_level(struct vcpu_state *vs, bool to_l2)
{
    struct user_boundary now = vs->ub;

    vs->ub = vs->other_level;
    vs->other_level = now;
    vs->in_l2 = to_l2;
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
static void guest_task_switch(struct vcpu_state *vs, unsigned int vcpu_index, uint64_t next)
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

/*
 * A timed probe's function is entered: watch for its return address. A
 * slot of the same probe still waiting lost its return (the function left
 * some other way), and is taken over; when all are taken the oldest goes.
 */
static void probe_await_return(struct vcpu_state *vs, const struct probe *pr,
                               uint64_t return_pc, uint64_t icount)
{
    unsigned slot = vs->n_returns;

    for (unsigned i = 0; i < vs->n_returns; i++) {
        if (vs->returns[i].id == pr->id) {
            slot = i;
        }
    }
    if (slot == MAX_PENDING_RETURNS) {
        memmove(&vs->returns[0], &vs->returns[1], sizeof(vs->returns[0]) * (slot - 1));
        slot--;
    }
    vs->returns[slot] = (struct pending_return){
        .return_pc = return_pc, .entry_pc = pr->pc, .entry_icount = icount, .id = pr->id,
    };
    if (slot == vs->n_returns) {
        vs->n_returns++;
    }
}

/*
 * The first instruction of a block of kernel code while a timed probe's
 * function has not returned. A return is a jump, so the instruction at a
 * return address always starts a block. udata packs the block's address
 * (a kernel address: its top 17 bits are ones) above its length.
 */
static void vcpu_return_exec(unsigned int vcpu_index, void *udata)
{
    struct vcpu_state *vs = vcpu_get(vcpu_index);
    uint64_t pc = (uint64_t)((int64_t)(uintptr_t)udata >> 16);
    uint64_t n_insns = (uintptr_t)udata & 0xffff;
    struct ftr_event ev;

    if (vs->in_l2) {
        return;                 /* L1's return addresses */
    }
    for (unsigned i = vs->n_returns; i-- > 0;) {
        const struct pending_return *r = &vs->returns[i];
        if (r->return_pc != pc) {
            continue;
        }
        arch->finish_pending(vs, vcpu_index);
        event_begin(vs, vcpu_index, &ev, FTR_KIND_PROBE_RETURN, r->entry_pc, 0);
        ev.icount = cfg.icount ? vs->insns - n_insns : 0;
        ev.index = r->id;
        ev.addr = pc;
        ev.aux = r->entry_icount;
        vcpu_commit_event(vs, vcpu_index, &ev);
        memmove(&vs->returns[i], &vs->returns[i + 1],
                sizeof(vs->returns[0]) * (vs->n_returns - i - 1));
        vs->n_returns--;
        return;
    }
}

/*
 * Whether a save to addr is the first to that buffer since the last probe
 * hit: then what the buffer holds is read before it (x86_prior_hash()).
 * A probe marks where the analysis starts a buffer over (exec resets it,
 * fork copies into it, both by memcpy the trace does not see), so a buffer
 * is read again after any. A direct-mapped table of address and generation:
 * a collision or a race between vCPUs costs one more read, never one less.
 */
bool buffer_first_save(uint64_t addr)
{
    uint64_t generation = __atomic_load_n(&probe_generation, __ATOMIC_ACQUIRE);
    uint64_t key = ftr_hash_mix64(addr ^ ftr_hash_mix64(generation)) | 1;
    uint64_t *slot = &buffer_seen[ftr_hash_mix64(addr) & (BUFFER_TABLE_SIZE - 1)];

    if (__atomic_load_n(slot, __ATOMIC_RELAXED) == key) {
        return false;
    }
    __atomic_store_n(slot, key, __ATOMIC_RELAXED);
    return true;
}

const struct fpu_insn *insn_intern(const struct fpu_insn *fi,
                                   const uint8_t *bytes, size_t len, uint8_t mode)
{
    uint8_t keybuf[sizeof(fi->vaddr) + 1 + 16];
    g_autoptr(GBytes) key = NULL;
    struct fpu_insn *found;

    /* The same bytes at the same address mean something else in another mode. */
    memcpy(keybuf, &fi->vaddr, sizeof(fi->vaddr));
    keybuf[sizeof(fi->vaddr)] = mode;
    memcpy(keybuf + sizeof(fi->vaddr) + 1, bytes, len);
    key = g_bytes_new(keybuf, sizeof(fi->vaddr) + 1 + len);
    found = g_hash_table_lookup(insn_table, key);
    if (!found) {
        found = g_memdup2(fi, sizeof(*fi));
        g_hash_table_insert(insn_table, g_bytes_ref(key), found);
    }
    return found;
}

/*
 * Sites are added under insn_lock; a slot's types are set before its pc is
 * published with a release store, so translation looks sites up without a
 * lock. A type added to a published site can be missed by a translation
 * running at that moment: the callback is then absent from that one TB.
 */
uint32_t site_lookup(uint64_t pc)
{
    for (uint32_t i = 0; i < SITE_TABLE_SIZE; i++) {
        uint32_t slot = (ftr_hash_mix64(pc) + i) & (SITE_TABLE_SIZE - 1);
        uint64_t p = __atomic_load_n(&site_pc[slot], __ATOMIC_ACQUIRE);

        if (p == 0) {
            return 0;
        }
        if (p == pc) {
            return __atomic_load_n(&site_types[slot], __ATOMIC_RELAXED);
        }
    }
    return 0;
}

void site_add(uint64_t pc, uint32_t type)
{
    for (uint32_t i = 0; i < SITE_TABLE_SIZE; i++) {
        uint32_t slot = (ftr_hash_mix64(pc) + i) & (SITE_TABLE_SIZE - 1);

        if (site_pc[slot] == pc) {
            __atomic_fetch_or(&site_types[slot], type, __ATOMIC_RELAXED);
            return;
        }
        if (site_pc[slot] == 0) {
            site_types[slot] = type;
            __atomic_store_n(&site_pc[slot], pc, __ATOMIC_RELEASE);
            return;
        }
    }
    /* Table full: these sites go without the follow-up callback. */
}

/* A register at translation time: the CPU is in the mode the TB is for. */
uint64_t translation_reg_u64(struct qemu_plugin_register *reg)
{
    g_autoptr(GByteArray) buf = g_byte_array_new();
    uint64_t v = 0;
    int n = reg ? qemu_plugin_read_register(reg, buf) : 0;

    if (n > 0) {
        memcpy(&v, buf->data, MIN((size_t)n, sizeof(v)));
    }
    return v;
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

/*
 * A translated FP/SIMD instruction outside the state handling code: it may
 * change the registers (regs_dirty, for regs=derive), and in the host
 * kernel it is kernel SIMD use. Inline stores, no callback, so that SIMD
 * loops stay at full speed; only the first one after a user entry calls
 * back, to read the registers the task entered with.
 */
void simd_instrument(struct qemu_plugin_insn *insn, uint64_t vaddr, bool host_kernel)
{
    if (cfg.derive_regs) {
        qemu_plugin_register_vcpu_insn_exec_inline_per_vcpu(
            insn, QEMU_PLUGIN_INLINE_STORE_U64, regs_dirty_entry, 1);
    }
    if (!host_kernel) {
        return;
    }
    if (cfg.boundaries) {
        qemu_plugin_register_vcpu_insn_exec_cond_cb(
            insn, vcpu_simd_after_entry_exec, QEMU_PLUGIN_CB_R_REGS,
            QEMU_PLUGIN_COND_EQ, entry_pending_entry, 1, NULL);
    }
    qemu_plugin_register_vcpu_insn_exec_inline_per_vcpu(
        insn, QEMU_PLUGIN_INLINE_STORE_U64, kernel_simd_entry, vaddr);
}

/*
 * The instruction being instrumented, as its distance from its block's end
 * (the block's inline add counted it and those after it ahead). A block is
 * translated by one thread: thread-local, no lock.
 */
static __thread uint64_t insn_tail_now;
static __thread const struct qemu_plugin_insn *insn_tail_marked;

void insn_begin(size_t index, size_t n_insns)
{
    insn_tail_now = n_insns - index;
    insn_tail_marked = NULL;
}

/*
 * Every instruction callback that may begin an event is registered here:
 * first an inline store of the instruction's distance from its block's end
 * (once per instruction), so event_begin() knows its instruction count.
 */
void insn_mark(struct qemu_plugin_insn *insn)
{
    if (cfg.icount && insn_tail_marked != insn) {
        qemu_plugin_register_vcpu_insn_exec_inline_per_vcpu(
            insn, QEMU_PLUGIN_INLINE_STORE_U64, insn_tail_entry, insn_tail_now);
        insn_tail_marked = insn;
    }
}

void insn_exec_cb(struct qemu_plugin_insn *insn, qemu_plugin_vcpu_udata_cb_t cb, void *udata)
{
    insn_mark(insn);
    qemu_plugin_register_vcpu_insn_exec_cb(insn, cb, QEMU_PLUGIN_CB_R_REGS, udata);
}

/* ---- callbacks -------------------------------------------------------- */

static void vcpu_tb_trans(qemu_plugin_id_t id G_GNUC_UNUSED, struct qemu_plugin_tb *tb)
{
    size_t n = qemu_plugin_tb_n_insns(tb);
    uint64_t vaddr = qemu_plugin_tb_vaddr(tb);

    if (cfg.icount) {
        /* Counted inline when the block starts: no callback (see vcpu_state.insns). */
        qemu_plugin_register_vcpu_tb_exec_inline_per_vcpu(tb, QEMU_PLUGIN_INLINE_ADD_U64,
                                                          insns_entry, n);
    }
    /* Kernel blocks, whose address and length pack into udata (vcpu_return_exec()). */
    if (cfg.timed_probes && n && n < 0x10000 &&
        (uint64_t)((int64_t)(vaddr << 16) >> 16) == vaddr && (vaddr >> 63)) {
        qemu_plugin_register_vcpu_insn_exec_cond_cb(
            qemu_plugin_tb_get_insn(tb, 0), vcpu_return_exec, QEMU_PLUGIN_CB_NO_REGS,
            QEMU_PLUGIN_COND_NE, n_returns_entry, 0,
            (void *)(uintptr_t)((vaddr << 16) | n));
    }
    arch->tb_trans(tb);
}

static void vcpu_init(qemu_plugin_id_t id G_GNUC_UNUSED, unsigned int vcpu_index)
{
    struct vcpu_state *vs = vcpu_get(vcpu_index);

    g_mutex_lock(&insn_lock);
    if (!regs_resolved) {
        arch->regs_resolve();
        regs_resolved = true;
    }
    g_mutex_unlock(&insn_lock);
    vs->events = g_new0(struct ftr_event, cfg.block_events);
    vs->tasks = g_new0(struct ftr_task, cfg.block_events);
    vs->scratch = g_byte_array_new();
    arch->vcpu_init(vs);
}

static void plugin_exit(qemu_plugin_id_t id G_GNUC_UNUSED, void *udata G_GNUC_UNUSED)
{
    g_autofree struct ftr_footer *footer = g_new0(struct ftr_footer, 1);
    int n = qemu_plugin_num_vcpus();

    for (int i = 0; i < n; i++) {
        struct vcpu_state *vs = vcpu_get(i);
        if (!vs->events) {
            continue;
        }
        arch->finish_pending(vs, i);
        guest_tasks_name(vs, i, false);
        vcpu_flush_tasks(vs, i);
        vcpu_flush_events(vs, i);
        for (int k = 0; k < FTR_KIND_MAX; k++) {
            footer->events_by_kind[k] += vs->events_by_kind[k];
            footer->events_total += vs->events_by_kind[k];
        }
        footer->tasks_total += vs->tasks_total;
    }
    trace_write_footer(footer);
    fsync(cfg.fd);
    close(cfg.fd);
    cfg.fd = -1;
}

/* ---- arguments ----------------------------------------------------- */

static bool parse_u64(const char *s, uint64_t *out)
{
    char *end;

    errno = 0;
    *out = g_ascii_strtoull(s, &end, 0);
    return *s && !*end && !errno;
}

static bool parse_offset(const char *s, int64_t *out)
{
    uint64_t v;

    if (!parse_u64(s, &v) || v > 0x100000) {
        return false;
    }
    *out = v;
    return true;
}

static bool parse_arg(const char *arg)
{
    g_auto(GStrv) kv = g_strsplit(arg, "=", 2);
    const char *k = kv[0], *v = kv[1];
    uint64_t n;

    if (!v) {
        return false;
    }
    if (!strcmp(k, "out")) {
        g_free(cfg.path);
        cfg.path = g_strdup(v);
        return true;
    }
    if (!strcmp(k, "end")) {
        g_free(cfg.end_path);
        cfg.end_path = g_strdup(v);
        return true;
    }
    if (!strcmp(k, "current")) {
        return parse_u64(v, &cfg.current_addr);
    }
    if (g_str_has_prefix(k, "task_") || g_str_has_prefix(k, "gtask_")) {
        struct task_layout *lay = k[0] == 'g' ? &cfg.gtask : &cfg.task;
        const char *member = strchr(k, '_') + 1;
        if (!strcmp(member, "pid")) {
            return parse_offset(v, &lay->pid_off);
        }
        if (!strcmp(member, "tgid")) {
            return parse_offset(v, &lay->tgid_off);
        }
        if (!strcmp(member, "comm")) {
            return parse_offset(v, &lay->comm_off);
        }
        return false;
    }
    if (!strcmp(k, "dmap")) {
        return parse_u64(v, &cfg.dmap);
    }
    if (!strcmp(k, "dmap_var")) {
        return parse_u64(v, &cfg.dmap_var);
    }
    if (!strcmp(k, "msr")) {
        if (!parse_u64(v, &n) || n > 0xffffffffull ||
            cfg.n_extra_msrs == MAX_EXTRA_MSRS) {
            return false;
        }
        cfg.extra_msrs[cfg.n_extra_msrs++] = n;
        return true;
    }
    if (!strcmp(k, "kernel")) {
        g_free(cfg.kernel_id);
        cfg.kernel_id = g_strdup(v);
        return true;
    }
    if (!strcmp(k, "qemu")) {
        g_free(cfg.qemu_id);
        cfg.qemu_id = g_strdup(v);
        return true;
    }
    if (!strcmp(k, "probe") || !strcmp(k, "gprobe")) {
        g_auto(GStrv) parts = g_strsplit(v, ":", 3);
        uint64_t pc, pid;
        struct probe pr;
        if (!parts[1] || !parse_u64(parts[0], &pc) || !parse_u64(parts[1], &pid) ||
            pid == 0 || pid >= FTR_PROBE_MAX || cfg.n_probes == MAX_PROBES) {
            return false;
        }
        pr = (struct probe){ .pc = pc, .id = pid, .guest = k[0] == 'g' };
        for (const char *f = parts[2] ? parts[2] : ""; *f; f++) {
            if (*f == 't') {
                pr.timed = true;
            } else if (*f == 'q') {
                pr.quiet = true;
            } else {
                return false;
            }
        }
        cfg.timed_probes |= pr.timed && !pr.guest;
        cfg.guest_tasks |= pr.guest && pid == FTR_PROBE_CONTEXT_SWITCH;
        cfg.probes[cfg.n_probes++] = pr;
        return true;
    }
    if (!strcmp(k, "boundaries")) {
        return qemu_plugin_bool_parse(k, v, &cfg.boundaries);
    }
    if (!strcmp(k, "icount")) {
        return qemu_plugin_bool_parse(k, v, &cfg.icount);
    }
    if (!strcmp(k, "boundary_state")) {
        return qemu_plugin_bool_parse(k, v, &cfg.boundary_state);
    }
    if (!strcmp(k, "regs")) {
        if (strcmp(v, "derive") && strcmp(v, "read")) {
            return false;
        }
        cfg.derive_regs = !strcmp(v, "derive");
        return true;
    }
    if (!strcmp(k, "fpcode")) {
        g_auto(GStrv) parts = g_strsplit(v, ":", 2);
        uint64_t start, len;
        if (!parts[1] || !parse_u64(parts[0], &start) || !parse_u64(parts[1], &len) ||
            !len || len > 0x100000) {
            return false;
        }
        return a64_fp_code_add(start, start + len);
    }
    if (!strcmp(k, "block_events")) {
        if (!parse_u64(v, &n) || n < 1 || n > 65536) {
            return false;
        }
        cfg.block_events = n;
        return true;
    }
    return false;
}

QEMU_PLUGIN_EXPORT int qemu_plugin_install(qemu_plugin_id_t id,
                                           const qemu_info_t *info,
                                           int argc, char **argv)
{
    if (!strcmp(info->target_name, "x86_64")) {
        arch = &x86_ops;
    } else if (!strcmp(info->target_name, "aarch64")) {
        arch = &a64_ops;
    } else {
        fprintf(stderr, "fputrace: target %s is not supported (x86_64, aarch64)\n",
                info->target_name);
        return -1;
    }
    cfg.target = info->target_name;
    for (int i = 0; i < argc; i++) {
        if (!parse_arg(argv[i])) {
            fprintf(stderr, "fputrace: bad plugin argument '%s'\n", argv[i]);
            return -1;
        }
    }
    if (!cfg.path) {
        fprintf(stderr, "fputrace: missing argument out=PATH\n");
        return -1;
    }
    {
        /* argv is argc long, not NULL-terminated: g_strjoinv() would run off its end. */
        g_autoptr(GString) joined = g_string_new(NULL);
        for (int i = 0; i < argc; i++) {
            g_string_append_printf(joined, "%s%s", i ? "," : "", argv[i]);
        }
        cfg.args = g_string_free(g_steal_pointer(&joined), FALSE);
    }
    cfg.fd = open(cfg.path, O_WRONLY | O_CREAT | O_TRUNC | O_APPEND | O_CLOEXEC, 0644);
    if (cfg.fd < 0) {
        fprintf(stderr, "fputrace: cannot create %s: %s\n", cfg.path, strerror(errno));
        return -1;
    }
    if (!trace_write_header(info->version.cur)) {
        fprintf(stderr, "fputrace: cannot write %s: %s\n", cfg.path, strerror(errno));
        return -1;
    }
    arch->init();
    insn_table = g_hash_table_new_full(g_bytes_hash, g_bytes_equal,
                                       (GDestroyNotify)g_bytes_unref, g_free);
    vcpus = qemu_plugin_scoreboard_new(sizeof(struct vcpu_state));
    kernel_simd_entry = qemu_plugin_scoreboard_u64_in_struct(vcpus, struct vcpu_state,
                                                             kernel_simd);
    entry_pending_entry = qemu_plugin_scoreboard_u64_in_struct(vcpus, struct vcpu_state,
                                                               ub.entry_pending);
    regs_dirty_entry = qemu_plugin_scoreboard_u64_in_struct(vcpus, struct vcpu_state,
                                                            regs_dirty);
    l2_iret_entry = qemu_plugin_scoreboard_u64_in_struct(vcpus, struct vcpu_state,
                                                         l2_iret_pending);
    user_block_due_entry = qemu_plugin_scoreboard_u64_in_struct(vcpus, struct vcpu_state,
                                                                user_block_due);
    insns_entry = qemu_plugin_scoreboard_u64_in_struct(vcpus, struct vcpu_state, insns);
    insn_tail_entry = qemu_plugin_scoreboard_u64_in_struct(vcpus, struct vcpu_state,
                                                           insn_tail);
    n_returns_entry = qemu_plugin_scoreboard_u64_in_struct(vcpus, struct vcpu_state,
                                                           n_returns);
    qemu_plugin_register_vcpu_init_cb(id, vcpu_init);
    qemu_plugin_register_vcpu_tb_trans_cb(id, vcpu_tb_trans);
    qemu_plugin_register_atexit_cb(id, plugin_exit, NULL);
    return 0;
}

