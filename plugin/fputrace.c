/*
 * fputrace: a QEMU TCG plugin that records FPU state operations.
 *
 * It watches the instructions with which a kernel (and KVM inside it) moves
 * FPU/SIMD register state between the register file and memory, changes
 * which state components exist or may be used, or enters and leaves a
 * nested guest:
 *
 *   x86_64:  XSAVE XSAVEOPT XSAVEC XSAVES XRSTOR XRSTORS FXSAVE FXRSTOR,
 *            XSETBV, WRMSR, VMRUN and the VM exit after it;
 *   aarch64: the kernel's FPSIMD, SVE and ZA save/load sequences, FP/SVE
 *            access traps, writes of CPACR_EL1, CPTR_EL2, ZCR and SMCR,
 *            and VM entries and exits at EL2 (VHE and nVHE).
 *
 * Instructions are recognised from their bytes at translation time; only
 * those get an exec callback (plus memory callbacks on the saves and
 * restores), so every other instruction runs at full speed.
 *
 * It also records the boundaries where the truth about a task's FPU state
 * is visible: every return to user mode, and the entry from user mode that
 * preceded it, with the register file's hash at both. An entry's register
 * hash is read only when something may change the registers before the
 * return (a save, a restore, kernel SIMD code): a return with nothing in
 * between is recorded as QUIET without reading a register.
 *
 * Probes: an exec callback on the first instruction of kernel functions
 * the recorder names (probe=ADDR:ID) records the function's arguments, so
 * fork copies, exec resets, signal frames and kernel_fpu sections show up.
 *
 * Each event becomes a fixed-size record in a per-vCPU buffer; full buffers
 * are written to the trace file as self-checking blocks with a single
 * write on an O_APPEND descriptor, so the exec path takes no lock and a
 * trace cut short by a crash stays readable up to its last whole block.
 * docs/trace-format.md describes every byte written here.
 *
 * The plugin degrades rather than aborts: it has no assertion on the exec
 * path. What it cannot read or place is recorded as such in the event
 * (REGS_VALID or MEM_VALID clear, ADDR_UNVERIFIED, TASK_VALID clear, a
 * task announced by its pointer alone), and the analysis leaves it
 * unjudged; a failed write is counted in the footer.
 *
 * Files: this one holds the events, the user-boundary state machine, the
 * callbacks, the arguments and install; task.c, probe.c and translate.c
 * the rest of the core; trace.c writes the trace. Each architecture sits
 * behind struct arch_ops (fputrace.h), chosen at install by QEMU's target
 * name: x86.c with x86-decode.c, x86-mmu.c and x86-xsave.c, and arm64.c.
 *
 * Arguments (key=value, comma separated by QEMU):
 *   out=PATH            trace file to create (required)
 *   end=PATH            a file that says how the run ended (an FTR_ENDS name),
 *                       read when QEMU exits; without it the footer says EXITED
 *   current=ADDR        where the kernel keeps its current task pointer
 *                       (x86: a per-cpu address, %gs:ADDR; arm64: any nonzero
 *                       value turns task tracking on, the pointer is SP_EL0)
 *   task_pid=OFF, task_tgid=OFF, task_comm=OFF
 *                       offsets in struct task_struct
 *   gtask_pid=OFF, gtask_tgid=OFF, gtask_comm=OFF
 *                       the same in the nested guest kernel's task_struct
 *   kernel=STR, qemu=STR
 *                       identity strings copied into the trace header
 *   block_events=N      events per block (1-65536, default 512)
 *   probe=ADDR:ID[:FLAGS], gprobe=ADDR:ID[:FLAGS]
 *                       record entry to the kernel function at ADDR (gprobe:
 *                       of the nested guest's kernel) as a probe event of
 *                       kind ID (enum ftr_probe; may repeat). FLAGS: t
 *                       (timed: its return is a PROBE_RETURN event), q (quiet:
 *                       it renames no task and rewrites no buffer)
 *   icount=on|off       events carry the vCPU's instruction count (default on)
 *   boundaries=on|off   record user entry/return boundaries (default on)
 *   boundary_state=on|off
 *                       with them, the state beyond the register hash where
 *                       the architecture has one (arm64: the SVE registers
 *                       above V0-V31; default on)
 *   regs=derive|read    register hashes at 64-bit saves and restores from the
 *                       bytes they move (default), or read register by register
 * and the architecture's own (its parse_arg):
 *   x86_64:  dmap=ADDR, dmap_var=ADDR, msr=INDEX (x86.c)
 *   aarch64: fpcode=ADDR:LEN (arm64.c)
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

/* The architectures, by QEMU's target name; the one traced is chosen at install. */
static const struct arch_ops *const arches[] = { &x86_ops, &a64_ops };
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
struct vcpu_inline_entries inline_entry;
uint64_t next_seq;
uint64_t blocks_written;
uint64_t write_errors;
static bool regs_resolved;      /* arch->regs_resolve() ran; under insn_lock */

/* ---- helpers: events -------------------------------------------------- */

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

/*
 * A register's bytes, zero-extended to want. The buffer's length says how
 * many were read: qemu_plugin_read_register() returns a byte count in QEMU
 * 10.0 and a boolean in later versions, positive on success in both.
 */
bool reg_read(struct vcpu_state *vs, struct qemu_plugin_register *reg,
              uint8_t *out, size_t want)
{
    if (!reg) {
        return false;
    }
    g_byte_array_set_size(vs->scratch, 0);
    if (qemu_plugin_read_register(reg, vs->scratch) <= 0 || !vs->scratch->len) {
        return false;
    }
    memset(out, 0, want);
    memcpy(out, vs->scratch->data, MIN((size_t)vs->scratch->len, want));
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
        ev->icount = vs->inl.insns - vs->inl.insn_tail;
    }
    ev->flags = cpl;
    if (vs->inl.kernel_simd) {
        ev->flags |= FTR_FLAG_KERNEL_SIMD;
        ev->simd_pc = (uint32_t)vs->inl.kernel_simd;
        vs->inl.kernel_simd = 0;
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

    if (!vs->inl.entry_pending) {
        return;
    }
    vs->inl.entry_pending = 0;
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
    event_begin(vs, vcpu_index, &ev, FTR_KIND_USER_ENTRY, vs->ub.entry_pc,
                vs->ub.entry_pl);
    if (cfg.icount) {
        ev.icount = vs->ub.entry_icount;   /* when it entered, not now */
    }
    if (arch->boundary_state && cfg.boundary_state) {
        arch->boundary_state(vs, &ev);     /* nothing changed it since the entry either */
    }
    if (defer) {
        /* A save comes next: its bytes are the registers (arch_ops.finish_pending). */
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
    generation = probe_generation_now();
    if (generation != vs->return_generation) {
        vs->identity_task = 0;  /* a probe hit since: see task_announce() */
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
    } else if (vs->last_regs_ok && !vs->inl.regs_dirty) {
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
    vs->inl.entry_pending = 0;
    vcpu_commit_event(vs, vcpu_index, &ev);
}

/* The first kernel FP/SIMD instruction after an entry, before it runs. */
void vcpu_simd_after_entry_exec(unsigned int vcpu_index, void *udata G_GNUC_UNUSED)
{
    struct vcpu_state *vs = vcpu_get(vcpu_index);

    arch->finish_pending(vs, vcpu_index);
    vcpu_materialize_entry(vs, vcpu_index, NULL, false);
}

/*
 * Entering or leaving the nested guest: each level's user boundaries are
 * its own (an L2 task in user mode when the guest exits is not L1's, and
 * L1's pending entry waits while L2 runs).
 */
void vcpu_switch_level(struct vcpu_state *vs, bool to_l2)
{
    struct user_boundary now = vs->ub;
    uint64_t now_pending = vs->inl.entry_pending;

    vs->ub = vs->other_level;
    vs->other_level = now;
    vs->inl.entry_pending = vs->other_entry_pending;
    vs->other_entry_pending = now_pending;
    vs->in_l2 = to_l2;
}

/* ---- callbacks -------------------------------------------------------- */

static void vcpu_tb_trans(qemu_plugin_id_t id G_GNUC_UNUSED, struct qemu_plugin_tb *tb)
{
    if (cfg.icount) {
        /* Counted inline when the block starts: no callback (vcpu_inline.insns). */
        qemu_plugin_register_vcpu_tb_exec_inline_per_vcpu(
            tb, QEMU_PLUGIN_INLINE_ADD_U64, inline_entry.insns,
            qemu_plugin_tb_n_insns(tb));
    }
    if (cfg.timed_probes) {
        probe_tb_trans(tb);
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

/* What install and vcpu_init allocated, once the footer is written. */
static void plugin_free(void)
{
    int n = qemu_plugin_num_vcpus();

    for (int i = 0; i < n; i++) {
        struct vcpu_state *vs = vcpu_get(i);

        if (!vs->events) {
            continue;
        }
        arch->vcpu_exit(vs);
        g_free(vs->events);
        g_free(vs->tasks);
        g_byte_array_unref(vs->scratch);
        vs->events = NULL;
        vs->tasks = NULL;
        vs->scratch = NULL;
    }
    qemu_plugin_scoreboard_free(vcpus);
    vcpus = NULL;
    translate_exit();
    g_free(cfg.path);
    g_free(cfg.end_path);
    g_free(cfg.kernel_id);
    g_free(cfg.qemu_id);
    g_free(cfg.args);
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
    plugin_free();
}

/* ---- arguments ----------------------------------------------------- */

bool parse_u64(const char *s, uint64_t *out)
{
    char *end;

    errno = 0;
    *out = g_ascii_strtoull(s, &end, 0);
    return *s && !*end && !errno;
}

/* A struct task_struct member's offset: within the first MiB. */
static enum arg_result parse_offset(const char *key, const char *s, int64_t *out,
                                    char **why)
{
    uint64_t v;

    if (!parse_u64(s, &v) || v > 0x100000) {
        *why = g_strdup_printf("%s=%s: an offset in struct task_struct is a number "
                               "from 0 to 0x100000", key, s);
        return ARG_BAD;
    }
    *out = v;
    return ARG_OK;
}

enum arg_result parse_address(const char *key, const char *s, uint64_t *out, char **why)
{
    if (!parse_u64(s, out)) {
        *why = g_strdup_printf("%s=%s: not a number", key, s);
        return ARG_BAD;
    }
    return ARG_OK;
}

static enum arg_result parse_bool(const char *key, const char *s, bool *out, char **why)
{
    if (!qemu_plugin_bool_parse(key, s, out)) {
        *why = g_strdup_printf("%s=%s: give on or off", key, s);
        return ARG_BAD;
    }
    return ARG_OK;
}

static enum arg_result parse_string(const char *s, char **out)
{
    g_free(*out);
    *out = g_strdup(s);
    return ARG_OK;
}

/* probe=ADDR:ID[:FLAGS], gprobe=...: a probed function (struct probe). */
static enum arg_result parse_probe(const char *key, const char *v, char **why)
{
    g_auto(GStrv) parts = g_strsplit(v, ":", 3);
    uint64_t pc, id;
    struct probe pr;

    if (!parts[1] || !parse_u64(parts[0], &pc) || !parse_u64(parts[1], &id)) {
        *why = g_strdup_printf("%s=%s: give ADDR:ID[:FLAGS]", key, v);
        return ARG_BAD;
    }
    if (id == 0 || id >= FTR_PROBE_MAX) {
        *why = g_strdup_printf("%s=%s: probe id %" PRIu64 " out of range 1-%d",
                               key, v, id, FTR_PROBE_MAX - 1);
        return ARG_BAD;
    }
    if (cfg.n_probes == MAX_PROBES) {
        *why = g_strdup_printf("%s=%s: more than %d probes", key, v, MAX_PROBES);
        return ARG_BAD;
    }
    pr = (struct probe){ .pc = pc, .id = id, .guest = key[0] == 'g' };
    for (const char *f = parts[2] ? parts[2] : ""; *f; f++) {
        if (*f == 't') {
            pr.timed = true;
        } else if (*f == 'q') {
            pr.quiet = true;
        } else {
            *why = g_strdup_printf("%s=%s: flag '%c' is not t (timed) or q (quiet)",
                                   key, v, *f);
            return ARG_BAD;
        }
    }
    cfg.timed_probes |= pr.timed && !pr.guest;
    cfg.guest_tasks |= pr.guest && id == FTR_PROBE_CONTEXT_SWITCH;
    cfg.probes[cfg.n_probes++] = pr;
    return ARG_OK;
}

/* task_pid=, gtask_comm=, ...: a member of L1's or the guest's task_struct. */
static enum arg_result parse_task_member(const char *k, const char *v, char **why)
{
    struct task_layout *lay = k[0] == 'g' ? &cfg.gtask : &cfg.task;
    const char *member = strchr(k, '_') + 1;

    if (!strcmp(member, "pid")) {
        return parse_offset(k, v, &lay->pid_off, why);
    }
    if (!strcmp(member, "tgid")) {
        return parse_offset(k, v, &lay->tgid_off, why);
    }
    if (!strcmp(member, "comm")) {
        return parse_offset(k, v, &lay->comm_off, why);
    }
    return ARG_UNKNOWN;
}

static enum arg_result parse_core_arg(const char *k, const char *v, char **why)
{
    uint64_t n;

    if (!strcmp(k, "out")) {
        return parse_string(v, &cfg.path);
    }
    if (!strcmp(k, "end")) {
        return parse_string(v, &cfg.end_path);
    }
    if (!strcmp(k, "kernel")) {
        return parse_string(v, &cfg.kernel_id);
    }
    if (!strcmp(k, "qemu")) {
        return parse_string(v, &cfg.qemu_id);
    }
    if (!strcmp(k, "current")) {
        return parse_address(k, v, &cfg.current_addr, why);
    }
    if (g_str_has_prefix(k, "task_") || g_str_has_prefix(k, "gtask_")) {
        return parse_task_member(k, v, why);
    }
    if (!strcmp(k, "probe") || !strcmp(k, "gprobe")) {
        return parse_probe(k, v, why);
    }
    if (!strcmp(k, "boundaries")) {
        return parse_bool(k, v, &cfg.boundaries, why);
    }
    if (!strcmp(k, "icount")) {
        return parse_bool(k, v, &cfg.icount, why);
    }
    if (!strcmp(k, "boundary_state")) {
        return parse_bool(k, v, &cfg.boundary_state, why);
    }
    if (!strcmp(k, "regs")) {
        if (strcmp(v, "derive") && strcmp(v, "read")) {
            *why = g_strdup_printf("regs=%s: give derive or read", v);
            return ARG_BAD;
        }
        cfg.derive_regs = !strcmp(v, "derive");
        return ARG_OK;
    }
    if (!strcmp(k, "block_events")) {
        if (!parse_u64(v, &n) || n < 1 || n > 65536) {
            *why = g_strdup_printf("block_events=%s: give 1 to 65536 events", v);
            return ARG_BAD;
        }
        cfg.block_events = n;
        return ARG_OK;
    }
    return ARG_UNKNOWN;
}

/* One key=value: the core's, or the architecture's; false with the reason printed. */
static bool parse_arg(const char *arg)
{
    g_auto(GStrv) kv = g_strsplit(arg, "=", 2);
    g_autofree char *why = NULL;
    enum arg_result r;

    if (!kv[0] || !kv[1]) {
        fprintf(stderr, "fputrace: plugin argument '%s' is not key=value\n", arg);
        return false;
    }
    r = parse_core_arg(kv[0], kv[1], &why);
    if (r == ARG_UNKNOWN) {
        r = arch->parse_arg(kv[0], kv[1], &why);
    }
    if (r == ARG_UNKNOWN) {
        fprintf(stderr, "fputrace: unknown plugin argument '%s' (for target %s)\n",
                kv[0], arch->target);
        return false;
    }
    if (r == ARG_BAD) {
        fprintf(stderr, "fputrace: plugin argument %s\n", why);
        return false;
    }
    return true;
}

/* ---- install -------------------------------------------------------- */

static const struct arch_ops *arch_of_target(const char *target)
{
    for (size_t i = 0; i < G_N_ELEMENTS(arches); i++) {
        if (!strcmp(arches[i]->target, target)) {
            return arches[i];
        }
    }
    return NULL;
}

static void scoreboard_init(void)
{
    vcpus = qemu_plugin_scoreboard_new(sizeof(struct vcpu_state));
#define INLINE_ENTRY(word) \
    inline_entry.word = qemu_plugin_scoreboard_u64_in_struct(vcpus, struct vcpu_state, \
                                                             inl.word)
    INLINE_ENTRY(insns);
    INLINE_ENTRY(insn_tail);
    INLINE_ENTRY(entry_pending);
    INLINE_ENTRY(regs_dirty);
    INLINE_ENTRY(kernel_simd);
    INLINE_ENTRY(return_due);
    INLINE_ENTRY(user_block_due);
#undef INLINE_ENTRY
}

QEMU_PLUGIN_EXPORT int qemu_plugin_install(qemu_plugin_id_t id,
                                           const qemu_info_t *info,
                                           int argc, char **argv)
{
    g_autoptr(GString) joined = g_string_new(NULL);

    arch = arch_of_target(info->target_name);
    if (!arch) {
        fprintf(stderr, "fputrace: target %s is not supported (x86_64, aarch64)\n",
                info->target_name);
        return -1;
    }
    for (int i = 0; i < argc; i++) {
        if (!parse_arg(argv[i])) {
            return -1;
        }
    }
    if (!cfg.path) {
        fprintf(stderr, "fputrace: missing argument out=PATH\n");
        return -1;
    }
    /* argv is argc long, not NULL-terminated: g_strjoinv() would run off its end. */
    for (int i = 0; i < argc; i++) {
        g_string_append_printf(joined, "%s%s", i ? "," : "", argv[i]);
    }
    cfg.args = g_string_free(g_steal_pointer(&joined), FALSE);
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
    translate_init();
    scoreboard_init();
    qemu_plugin_register_vcpu_init_cb(id, vcpu_init);
    qemu_plugin_register_vcpu_tb_trans_cb(id, vcpu_tb_trans);
    qemu_plugin_register_atexit_cb(id, plugin_exit, NULL);
    return 0;
}
