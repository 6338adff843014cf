/*
 * fpanalysis: the per-event passes of fputrace's analyzers, in C, for traces
 * of tens of millions of events. Loaded by analyzers/native.py with ctypes.
 *
 * fpa_classify() is the one implementation of the ownership rules
 * (docs/analysis.md): one linear pass with per-CPU and per-buffer state that
 * classifies every save and restore, reports lost and stale state and foreign
 * saves, and fills every table of the report on the way. tests/oracle.py
 * restates the rules event by event, and the tests require both to agree.
 * It also computes each event's task announcement (task_identity()).
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include <stdint.h>
#include <stdlib.h>
#include <string.h>


#include "../../plugin/ftr-crc32c.h"
#include "../../plugin/ftr-format.h"

enum {
    KIND_PROBE = FTR_KIND_PROBE, KIND_USER_ENTRY = FTR_KIND_USER_ENTRY,
    KIND_USER_RETURN = FTR_KIND_USER_RETURN,
    KIND_XSAVE = FTR_KIND_XSAVE, KIND_XSAVEOPT = FTR_KIND_XSAVEOPT, KIND_XSAVEC = FTR_KIND_XSAVEC,
    KIND_XSAVES = FTR_KIND_XSAVES, KIND_XRSTOR = FTR_KIND_XRSTOR, KIND_XRSTORS = FTR_KIND_XRSTORS,
    KIND_FXSAVE = FTR_KIND_FXSAVE, KIND_FXRSTOR = FTR_KIND_FXRSTOR,
    KIND_VM_ENTRY = FTR_KIND_VM_ENTRY, KIND_VM_EXIT = FTR_KIND_VM_EXIT,
    KIND_FPSIMD_SAVE = FTR_KIND_FPSIMD_SAVE, KIND_FPSIMD_LOAD = FTR_KIND_FPSIMD_LOAD,
    KIND_SVE_SAVE = FTR_KIND_SVE_SAVE, KIND_SVE_LOAD = FTR_KIND_SVE_LOAD,
};

#define FLAG_L2             FTR_FLAG_L2
#define FLAG_TASK_VALID     FTR_FLAG_TASK_VALID
#define FLAG_MEM_VALID      FTR_FLAG_MEM_VALID
#define FLAG_REGS_VALID     FTR_FLAG_REGS_VALID
#define FLAG_KERNEL_SIMD    FTR_FLAG_KERNEL_SIMD
#define FLAG_AFTER_VALID    FTR_FLAG_REGS_AFTER_VALID

/* analyzers/ownership.py: Class, Unknown, ContextKind, FindingKind */
enum { NECESSARY, REDUNDANT_SAVE, REDUNDANT_RESTORE, LOST_STATE, STALE_RESTORE, UNKNOWN,
       NOT_CLASSIFIED = 255 };
/* A finding's kind: the first two are also classes. */
enum { FINDING_LOST = LOST_STATE, FINDING_STALE = STALE_RESTORE, FINDING_FOREIGN_SAVE = 6,
       FINDING_DROPPED_SAVE = 7 };
/*
 * A task's fpstate lies inside its task_struct allocation (struct fpu ends
 * thread_struct, which ends task_struct; the fpstate is embedded or follows).
 */
#define TASK_STRUCT_SPAN (1ull << 16)

/*
 * A vCPU instance: its VMCB (page aligned) and the task announcement of the
 * thread that entered it. A VMCB, like a guest buffer, is freed with its VM
 * and reused by the next one; the thread tells the two apart.
 */
static inline uint64_t vcpu_id(uint64_t vmcb, int64_t ident)
{
    return ((uint64_t)ident & 0xffffffull) << 40 | ((vmcb >> 12) & 0xffffffffffull);
}
enum { WHY_NONE, NO_MEMORY_ACCESS, FIRST_SIGHT, NO_PREVIOUS_OWNER, REGISTERS_NOT_READ,
       MASKS_DIFFER, NESTED_GUEST, USER_MODE };
enum { CTX_TASK, CTX_GUEST, CTX_SIGNAL_FRAME, CTX_INIT };

#define USER_LIMIT (1ull << 47)

/* ---- a growable open-addressing map: u64 key -> slot number ---- */

struct map {
    uint64_t *keys;
    uint32_t *slots;
    uint8_t *used;
    size_t cap, len;
    /* The last key found or added; slot numbers never change, so it stays valid. */
    uint64_t last_key;
    uint32_t last_slot;
    int have_last;
};

static inline uint64_t mix64(uint64_t x)
{
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    return x;
}

static int map_init(struct map *m, size_t cap)
{
    m->cap = cap;
    m->len = 0;
    m->have_last = 0;
    m->keys = calloc(cap, sizeof(*m->keys));
    m->slots = calloc(cap, sizeof(*m->slots));
    m->used = calloc(cap, 1);
    return m->keys && m->slots && m->used ? 0 : -1;
}

static void map_free(struct map *m)
{
    free(m->keys);
    free(m->slots);
    free(m->used);
}

/* The slot of key, or UINT32_MAX. */
static inline uint32_t map_get(struct map *m, uint64_t key)
{
    size_t i;

    if (m->have_last && m->last_key == key) {
        return m->last_slot;
    }
    i = mix64(key) & (m->cap - 1);
    while (m->used[i]) {
        if (m->keys[i] == key) {
            m->last_key = key;
            m->last_slot = m->slots[i];
            m->have_last = 1;
            return m->slots[i];
        }
        i = (i + 1) & (m->cap - 1);
    }
    return UINT32_MAX;
}

static int map_grow(struct map *m);

/* The slot of key, given the next free slot number if new (*created set). */
static inline int map_put(struct map *m, uint64_t key, uint32_t *slot, int *created)
{
    size_t i;

    if (m->have_last && m->last_key == key) {
        *slot = m->last_slot;
        *created = 0;
        return 0;
    }
    if ((m->len + 1) * 2 > m->cap && map_grow(m) < 0) {
        return -1;
    }
    i = mix64(key) & (m->cap - 1);
    while (m->used[i]) {
        if (m->keys[i] == key) {
            *slot = m->slots[i];
            *created = 0;
            m->last_key = key;
            m->last_slot = *slot;
            m->have_last = 1;
            return 0;
        }
        i = (i + 1) & (m->cap - 1);
    }
    m->used[i] = 1;
    m->keys[i] = key;
    m->slots[i] = (uint32_t)m->len;
    *slot = (uint32_t)m->len++;
    *created = 1;
    m->last_key = key;
    m->last_slot = *slot;
    m->have_last = 1;
    return 0;
}

static int map_grow(struct map *m)
{
    struct map bigger;

    if (map_init(&bigger, m->cap * 2) < 0) {
        map_free(&bigger);
        return -1;
    }
    for (size_t i = 0; i < m->cap; i++) {
        if (m->used[i]) {
            size_t j = mix64(m->keys[i]) & (bigger.cap - 1);
            while (bigger.used[j]) {
                j = (j + 1) & (bigger.cap - 1);
            }
            bigger.used[j] = 1;
            bigger.keys[j] = m->keys[i];
            bigger.slots[j] = m->slots[i];
        }
    }
    bigger.len = m->len;
    bigger.last_key = m->last_key;
    bigger.last_slot = m->last_slot;
    bigger.have_last = m->have_last;
    map_free(m);
    *m = bigger;
    return 0;
}

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

static inline int is_save(uint8_t k)
{
    return k == KIND_XSAVE || k == KIND_XSAVEOPT || k == KIND_XSAVEC || k == KIND_XSAVES ||
           k == KIND_FXSAVE || k == KIND_FPSIMD_SAVE || k == KIND_SVE_SAVE;
}

static inline int is_restore(uint8_t k)
{
    return k == KIND_XRSTOR || k == KIND_XRSTORS || k == KIND_FXRSTOR ||
           k == KIND_FPSIMD_LOAD || k == KIND_SVE_LOAD;
}

static inline uint64_t covers(const struct ftr_event *e)
{
    return (e->kind == KIND_FXSAVE || e->kind == KIND_FXRSTOR) ? 3 : e->value & e->xcr0;
}

/* ---- the report's tables, filled during classification ---- */

#define NKIND   64
#define NCLS    6
#define NCPU    256
/* out_small layout (u64 each), mirrored in analyzers/native.py */
#define S_KIND          0                       /* [NKIND] events per kind */
#define S_KIND64        (S_KIND + NKIND)        /* [NKIND] of them REX.W forms */
#define S_KIND_BYTES    (S_KIND64 + NKIND)      /* [NKIND] bytes moved */
#define S_CPU_KIND      (S_KIND_BYTES + NKIND)  /* [NCPU][NKIND] */
#define S_LEVEL_KIND    (S_CPU_KIND + NCPU * NKIND)     /* [2][NKIND] */
#define S_CLS           (S_LEVEL_KIND + 2 * NKIND)      /* [NCLS] */
#define S_CLS_BYTES     (S_CLS + NCLS)                  /* [NCLS] */
#define S_WHY           (S_CLS_BYTES + NCLS)            /* [8] unknown reasons */
#define S_LEVEL_CLS     (S_WHY + 8)                     /* [2][NCLS] */
#define S_LEVEL_CLS_B   (S_LEVEL_CLS + 2 * NCLS)        /* [2][NCLS] */
#define S_OPS           (S_LEVEL_CLS_B + 2 * NCLS)      /* see OP_* */
#define OP_ENTRIES      0
#define OP_SWITCHES     1
#define OP_TASKBUF      2       /* [3] saves, restores, bytes on task buffers */
#define OP_SIGNALS      5
#define OP_AROUND_SIG   6       /* [3] saves, restores, bytes on signal frames and init */
#define S_SIZE          (S_OPS + 16)

/* Per pc and per task: kinds [NKIND], classes [NCLS], class bytes [NCLS]. */
#define ROW (NKIND + 2 * NCLS)
/*
 * Per buffer, of the operations classified as on a task buffer (the only
 * ones that turn out guest buffers'): classes, class bytes, then saves,
 * restores, bytes.
 */
#define BUF_ROW (2 * NCLS + 3)

struct keyed {
    struct map map;
    uint64_t *keys;
    uint64_t *rows;
    size_t width, cap, len;
};

static int keyed_init(struct keyed *k, size_t width)
{
    k->width = width;
    k->cap = 64;
    k->len = 0;
    k->keys = malloc(k->cap * sizeof(uint64_t));
    k->rows = calloc(k->cap * width, sizeof(uint64_t));
    return map_init(&k->map, 128) == 0 && k->keys && k->rows ? 0 : -1;
}

static void keyed_free(struct keyed *k)
{
    map_free(&k->map);
    free(k->keys);
    free(k->rows);
}

static uint64_t *keyed_row(struct keyed *k, uint64_t key)
{
    uint32_t slot;
    int created;

    if (map_put(&k->map, key, &slot, &created) < 0) {
        return NULL;
    }
    if (created) {
        if (slot >= k->cap) {
            uint64_t *keys = realloc(k->keys, k->cap * 2 * sizeof(uint64_t));
            if (!keys) {
                return NULL;
            }
            k->keys = keys;
            uint64_t *rows = realloc(k->rows, k->cap * 2 * k->width * sizeof(uint64_t));
            if (!rows) {
                return NULL;
            }
            memset(rows + k->cap * k->width, 0, k->cap * k->width * sizeof(uint64_t));
            k->rows = rows;
            k->cap *= 2;
        }
        k->keys[slot] = key;
        k->len = slot + 1;
    }
    return k->rows + (size_t)slot * k->width;
}

/* Copy a keyed table out; returns its length, or -(length) if cap is too small. */
static int64_t keyed_out(const struct keyed *k, uint64_t *keys, uint64_t *rows, size_t cap)
{
    if (k->len > cap) {
        return -(int64_t)k->len;
    }
    memcpy(keys, k->keys, k->len * sizeof(uint64_t));
    memcpy(rows, k->rows, k->len * k->width * sizeof(uint64_t));
    return (int64_t)k->len;
}

struct agg {
    uint64_t *small;
    struct keyed pcs, tasks, bufs, feats, optasks, vmcbs, vcpus;
    uint64_t last_task[NCPU];
    uint8_t have_last[NCPU];
};

static int agg_init(struct agg *a, uint64_t *small)
{
    memset(a, 0, sizeof(*a));
    a->small = small;
    memset(small, 0, S_SIZE * sizeof(uint64_t));
    return keyed_init(&a->pcs, ROW) || keyed_init(&a->tasks, ROW) ||
           keyed_init(&a->bufs, BUF_ROW) || keyed_init(&a->feats, 4) ||
           keyed_init(&a->optasks, 4) || keyed_init(&a->vmcbs, 1) ||
           keyed_init(&a->vcpus, BUF_ROW) ? -1 : 0;
}

static void agg_free(struct agg *a)
{
    keyed_free(&a->pcs);
    keyed_free(&a->tasks);
    keyed_free(&a->bufs);
    keyed_free(&a->feats);
    keyed_free(&a->optasks);
    keyed_free(&a->vmcbs);
    keyed_free(&a->vcpus);
}

/*
 * Every event: kinds per CPU, level, pc and task; VM entries. *pc_row and
 * *task_row are left pointing at the event's rows for agg_classified().
 */
static int agg_event(struct agg *a, const struct ftr_event *e, int64_t ident,
                     uint64_t **pc_row, uint64_t **task_row)
{
    uint8_t k = e->kind < NKIND ? e->kind : 0;
    int l2 = !!(e->flags & FLAG_L2);
    uint64_t *pr = keyed_row(&a->pcs, e->pc), *tr = keyed_row(&a->tasks, (uint64_t)ident);

    if (!pr || !tr) {
        return -1;
    }
    *pc_row = pr;
    *task_row = tr;
    a->small[S_KIND + k]++;
    if (e->flags & 0x008) {
        a->small[S_KIND64 + k]++;
    }
    a->small[S_KIND_BYTES + k] += e->mem_bytes;
    a->small[S_CPU_KIND + (e->vcpu % NCPU) * NKIND + k]++;
    a->small[S_LEVEL_KIND + l2 * NKIND + k]++;
    pr[k]++;
    tr[k]++;
    if (k == KIND_VM_ENTRY && !l2) {
        /* By task announcement: a task_struct is reused once its task exits. */
        uint64_t *orow = keyed_row(&a->optasks, (uint64_t)ident);
        uint64_t *vrow = keyed_row(&a->vmcbs, vcpu_id(e->addr, ident));
        if (!orow || !vrow) {
            return -1;
        }
        orow[3] = 1;
        vrow[0]++;
        a->small[S_OPS + OP_ENTRIES]++;
    }
    return 0;
}

static void buf_row_add(uint64_t *row, const uint64_t *add)
{
    for (int j = 0; j < BUF_ROW; j++) {
        row[j] += add[j];
    }
}

static void buf_row_count(uint64_t *row, const struct ftr_event *e, uint8_t c)
{
    row[c]++;
    row[NCLS + c] += e->mem_bytes;
    row[2 * NCLS + (is_save(e->kind) ? 0 : 1)]++;
    row[2 * NCLS + 2] += e->mem_bytes;
}

/*
 * A classified save or restore (ctx: its context as known when classified;
 * vmcb: the vCPU whose guest state it moved, or 0; pr, tr: its pc and task
 * rows from agg_event(), still valid since only other tables grew in
 * between).
 */
static int agg_classified(struct agg *a, const struct ftr_event *e, int64_t ident,
                          uint64_t *pr, uint64_t *tr, uint8_t c, uint8_t why, int8_t ctx,
                          uint64_t vmcb)
{
    int l2 = !!(e->flags & FLAG_L2);
    int save = is_save(e->kind);
    int redundant = c == REDUNDANT_SAVE || c == REDUNDANT_RESTORE;
    uint64_t *fr = keyed_row(&a->feats, e->mem_features);

    if (!fr) {
        return -1;
    }
    a->small[S_CLS + c]++;
    a->small[S_CLS_BYTES + c] += e->mem_bytes;
    if (c == UNKNOWN) {
        a->small[S_WHY + (why & 7)]++;
    }
    a->small[S_LEVEL_CLS + l2 * NCLS + c]++;
    a->small[S_LEVEL_CLS_B + l2 * NCLS + c] += e->mem_bytes;
    pr[NKIND + c]++;
    pr[NKIND + NCLS + c] += e->mem_bytes;
    tr[NKIND + c]++;
    tr[NKIND + NCLS + c] += e->mem_bytes;
    fr[save + 2 * redundant]++;
    if (ctx < 0) {
        return 0;       /* not an L1 operation that moved state */
    }
    uint64_t *orow = keyed_row(&a->optasks, (uint64_t)ident);
    if (!orow) {
        return -1;
    }
    if (vmcb) {
        /* Guest state, wherever it was saved or restored from. */
        uint64_t *vr = keyed_row(&a->vcpus, vmcb);
        if (!vr) {
            return -1;
        }
        buf_row_count(vr, e, c);
    } else if (ctx == CTX_TASK) {
        uint64_t *br = keyed_row(&a->bufs, e->addr);
        if (!br) {
            return -1;
        }
        buf_row_count(br, e, c);
    }
    orow[save ? 0 : 1]++;
    orow[2] += e->mem_bytes;
    unsigned cpu = e->vcpu % NCPU;
    if (a->have_last[cpu] && a->last_task[cpu] != e->task) {
        a->small[S_OPS + OP_SWITCHES]++;
    }
    a->have_last[cpu] = 1;
    a->last_task[cpu] = e->task;
    if (ctx == CTX_TASK && !vmcb) {
        a->small[S_OPS + OP_TASKBUF + (save ? 0 : 1)]++;
        a->small[S_OPS + OP_TASKBUF + 2] += e->mem_bytes;
    }
    if (ctx == CTX_SIGNAL_FRAME || ctx == CTX_INIT) {
        a->small[S_OPS + OP_AROUND_SIG + (save ? 0 : 1)]++;
        a->small[S_OPS + OP_AROUND_SIG + 2] += e->mem_bytes;
        if (ctx == CTX_SIGNAL_FRAME && save) {
            a->small[S_OPS + OP_SIGNALS]++;
        }
    }
    return 0;
}

/* A restore counted as necessary turned out to be a lost state. */
static int agg_relabel_lost(struct agg *a, const struct ftr_event *e, int64_t ident, int8_t ctx,
                            uint64_t vmcb)
{
    uint64_t *pr = keyed_row(&a->pcs, e->pc), *tr = keyed_row(&a->tasks, (uint64_t)ident);
    uint64_t b = e->mem_bytes;

    if (!pr || !tr) {
        return -1;
    }
    a->small[S_CLS + NECESSARY]--;
    a->small[S_CLS + LOST_STATE]++;
    a->small[S_CLS_BYTES + NECESSARY] -= b;
    a->small[S_CLS_BYTES + LOST_STATE] += b;
    a->small[S_LEVEL_CLS + NECESSARY]--;
    a->small[S_LEVEL_CLS + LOST_STATE]++;
    a->small[S_LEVEL_CLS_B + NECESSARY] -= b;
    a->small[S_LEVEL_CLS_B + LOST_STATE] += b;
    pr[NKIND + NECESSARY]--;
    pr[NKIND + LOST_STATE]++;
    pr[NKIND + NCLS + NECESSARY] -= b;
    pr[NKIND + NCLS + LOST_STATE] += b;
    tr[NKIND + NECESSARY]--;
    tr[NKIND + LOST_STATE]++;
    tr[NKIND + NCLS + NECESSARY] -= b;
    tr[NKIND + NCLS + LOST_STATE] += b;
    if (vmcb || ctx == CTX_TASK) {
        uint64_t *br = vmcb ? keyed_row(&a->vcpus, vmcb) : keyed_row(&a->bufs, e->addr);
        if (!br) {
            return -1;
        }
        br[NECESSARY]--;
        br[LOST_STATE]++;
        br[NCLS + NECESSARY] -= b;
        br[NCLS + LOST_STATE] += b;
    }
    return 0;
}

/*
 * Output of the tables. out: S_SIZE u64, then for each keyed table (per pc
 * ROW, per task announcement ROW, per vCPU (VMCB) BUF_ROW, per feature set
 * 4, per task announcement 4, per VMCB 1) a keys and a rows pointer in
 * ptrs[], each with capacity cap. Guest buffers' operations were counted as
 * task buffers' while they were not yet known to be guest buffers: moved
 * to their vCPU here.
 */
static int agg_output(struct agg *a, struct map *guest_map, const uint64_t *guest_vmcb,
                      size_t n_guest, uint64_t **ptrs, size_t cap, int64_t *n_out)
{
    int rc = 0;

    for (size_t slot = 0; slot < a->bufs.len; slot++) {
        uint64_t buf = a->bufs.keys[slot];
        const uint64_t *row = a->bufs.rows + slot * BUF_ROW;
        uint32_t g = map_get(guest_map, buf);
        if (g == UINT32_MAX || g >= n_guest) {
            continue;
        }
        uint64_t *vr = keyed_row(&a->vcpus, guest_vmcb[g]);
        if (!vr) {
            return -1;
        }
        buf_row_add(vr, row);
        a->small[S_OPS + OP_TASKBUF] -= row[2 * NCLS];
        a->small[S_OPS + OP_TASKBUF + 1] -= row[2 * NCLS + 1];
        a->small[S_OPS + OP_TASKBUF + 2] -= row[2 * NCLS + 2];
    }
    n_out[0] = keyed_out(&a->pcs, ptrs[0], ptrs[1], cap);
    n_out[1] = keyed_out(&a->tasks, ptrs[2], ptrs[3], cap);
    n_out[2] = keyed_out(&a->vcpus, ptrs[4], ptrs[5], cap);
    n_out[3] = keyed_out(&a->feats, ptrs[6], ptrs[7], cap);
    n_out[4] = keyed_out(&a->optasks, ptrs[8], ptrs[9], cap);
    n_out[5] = keyed_out(&a->vmcbs, ptrs[10], ptrs[11], cap);
    for (int t = 0; t < 6; t++) {
        if (n_out[t] < 0) {
            n_out[t] = -n_out[t];
            rc = 1;
        }
    }
    return rc;
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

            if (!(is_save(e->kind) || is_restore(e->kind)) || !(e->flags & FLAG_TASK_VALID) ||
                (e->flags & FLAG_L2) ||
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
 * Returns 0; 1 if a table did not fit agg_cap (agg_n_out says how much is
 * needed: call again); -1 when memory ran out. Outputs, all of length n:
 * cls, why, ctx (-1 for events that are not L1 saves/restores), ident (task
 * announcement index or -1), guest_of (the vCPU, vcpu_id(), whose guest
 * state a save or restore moved, or 0). Guest buffers go to guest_buf/guest_vmcb (*n_guest
 * of them, at most guest_cap); findings to the f_* arrays. With agg_small
 * non-NULL, the report's tables are filled on the way (agg_output).
 */
int fpa_classify(const struct ftr_event *ev, size_t n,
                 const struct ftr_task *tasks, size_t n_tasks,
                 uint64_t init_lo, uint64_t init_hi, uint64_t avx_init_hash,
                 uint8_t *cls, uint8_t *why, int8_t *ctx, int64_t *ident, uint64_t *guest_of,
                 uint64_t *guest_buf, uint64_t *guest_vmcb, size_t guest_cap, size_t *n_guest,
                 int64_t *f_event, int64_t *f_last, int64_t *f_resumed, uint64_t *f_buffer,
                 uint8_t *f_cls, size_t f_cap, size_t *f_len, size_t *f_total,
                 uint64_t *agg_small, uint64_t **agg_ptrs, size_t agg_cap, int64_t *agg_n_out)
{
    struct agg aggregate, *A = NULL;
    struct map task_map = { 0 }, buf_map = { 0 }, guest_map = { 0 };
    /* The registered guest buffers lie in [guest_lo, guest_hi]: a quick "no". */
    uint64_t guest_lo = UINT64_MAX, guest_hi = 0;
    struct buf_state *bufs = NULL;
    size_t bufs_cap = 1024;
    int64_t *task_announcement = malloc((n_tasks + 1) * sizeof(int64_t));
    struct cpu_state cpus[65536 / 256];         /* vCPU indices < 256 in practice */
    struct cpu_state *cs_big = NULL;
    uint32_t max_cpu = 0;
    size_t ti = 0;
    struct fpa_findings f = { f_event, f_last, f_resumed, f_buffer, f_cls, f_cap, 0, 0 };
    uint64_t fpu_offset = fpa_fpu_buffer_offset(ev, n);
    int rc = -1;

    for (size_t i = 0; i < n; i++) {
        if (ev[i].vcpu > max_cpu) {
            max_cpu = ev[i].vcpu;
        }
    }
    struct cpu_state *cpu_states = cpus;
    if (max_cpu >= sizeof(cpus) / sizeof(cpus[0])) {
        cs_big = calloc(max_cpu + 1, sizeof(*cs_big));
        if (!cs_big) {
            free(task_announcement);
            return -1;
        }
        cpu_states = cs_big;
    }
    for (uint32_t c = 0; c <= max_cpu; c++) {
        memset(&cpu_states[c], 0, sizeof(cpu_states[c]));
        cpu_states[c].last_op = -1;
        cpu_states[c].live_since = -1;
    }
    if (map_init(&task_map, 1024) < 0 || map_init(&buf_map, 4096) < 0 ||
        map_init(&guest_map, 64) < 0) {
        goto out;
    }
    bufs = malloc(bufs_cap * sizeof(*bufs));
    if (!bufs || !task_announcement) {
        goto out;
    }
    if (agg_small) {
        A = &aggregate;
        if (agg_init(A, agg_small) < 0) {
            goto out;
        }
    }
    *n_guest = 0;

    for (size_t i = 0; i < n; i++) {
        const struct ftr_event *e = &ev[i];
        struct cpu_state *cs = &cpu_states[e->vcpu];
        uint32_t slot;
        int created;

        /* The task announcement in force: the latest for this pointer so far. */
        while (ti < n_tasks && tasks[ti].seq <= e->seq) {
            if (map_put(&task_map, tasks[ti].task, &slot, &created) < 0) {
                goto out;
            }
            task_announcement[slot] = (int64_t)ti++;
        }
        ident[i] = -1;
        if (e->flags & FLAG_TASK_VALID) {
            uint32_t ts = map_get(&task_map, e->task);
            if (ts != UINT32_MAX) {
                ident[i] = task_announcement[ts];
            }
        }
        cls[i] = NOT_CLASSIFIED;
        why[i] = WHY_NONE;
        ctx[i] = -1;
        guest_of[i] = 0;
        uint64_t *pc_row = NULL, *task_row = NULL;
        if (A && agg_event(A, e, ident[i], &pc_row, &task_row) < 0) {
            goto out;
        }
        /*
         * Operations that cannot be judged: the nested guest's own (its
         * kernel's contexts), user-mode code's own (an XSAVE in a program
         * changes no kernel state: the registers are the task's either way),
         * and those that moved nothing.
         */
        uint8_t unjudged = (e->flags & FLAG_L2) ? NESTED_GUEST
                         : (e->flags & FTR_FLAG_PL_MASK) == 3 ? USER_MODE
                         : !(e->flags & FLAG_MEM_VALID) ? NO_MEMORY_ACCESS : WHY_NONE;
        if (unjudged && (is_save(e->kind) || is_restore(e->kind))) {
            cls[i] = UNKNOWN;
            why[i] = unjudged;
            if (A && agg_classified(A, e, ident[i], pc_row, task_row, UNKNOWN, unjudged, -1,
                                    0) < 0) {
                goto out;
            }
        }
        if (e->flags & FLAG_L2) {
            continue;
        }
        if (e->flags & FLAG_KERNEL_SIMD) {
            /*
             * __cpu_invalidate_fpregs_state(): kernel scratch, nobody's state
             * (before any owner is known, e.g. the boot's own FPU probing,
             * there was nobody's state to lose).
             */
            cs->kernel_simd = 1;
            if (cs->live != LIVE_UNKNOWN) {
                cs->live = LIVE_NOBODY;
            }
            cs->live_vmcb = 0;
        }
        switch (e->kind) {
        case KIND_VM_ENTRY:
            /*
             * The state live at a VM entry is a guest's. The buffer it came
             * from is that vCPU's guest buffer, unless it is a buffer that
             * only holds guest state saved there on a preemption inside
             * KVM_RUN (5.10: the vCPU thread's own thread.fpu).
             */
            if (!cs->live_vmcb && cs->owner_known) {
                if (map_put(&guest_map, cs->owner, &slot, &created) < 0) {
                    goto out;
                }
                if (cs->owner < guest_lo) {
                    guest_lo = cs->owner;
                }
                if (cs->owner > guest_hi) {
                    guest_hi = cs->owner;
                }
                if (created && *n_guest < guest_cap) {
                    guest_buf[*n_guest] = cs->owner;
                    guest_vmcb[*n_guest] = vcpu_id(e->addr, ident[i]);
                    (*n_guest)++;
                } else if (!created && slot < *n_guest) {
                    guest_vmcb[slot] = vcpu_id(e->addr, ident[i]);    /* reused by a new VM */
                }
            }
            cs->live_vmcb = vcpu_id(e->addr, ident[i]);
            continue;
        case KIND_USER_ENTRY:
        case KIND_USER_RETURN:
            /*
             * In user mode the registers are the task's user state, whatever
             * they hold (whether they hold the right thing is the boundary
             * check's question, analyzers/boundaries.py).
             */
            cs->live_vmcb = 0;
            if (e->flags & FLAG_TASK_VALID) {
                cs->live = LIVE_TASK;
                cs->live_task = e->task;
                cs->live_since = (int64_t)i;
            }
            continue;
        case KIND_PROBE:
            if (e->index == FTR_PROBE_FORK_COPY) {
                cs->fork_parent = e->task;
                cs->fork_child = e->value;
            } else if (e->index == FTR_PROBE_TASK_EXIT && cs->live == LIVE_TASK &&
                       cs->live_task == e->task && cs->owner_known) {
                /*
                 * exit_thread(): the task's context ends and never resumes
                 * (the last switch away may still save its registers).
                 */
                uint32_t os = map_get(&buf_map, cs->owner);
                if (os != UINT32_MAX) {
                    bufs[os].pending_overwrite = -1;
                }
            } else if (e->index == FTR_PROBE_SIGRETURN && cs->live == LIVE_TASK &&
                       cs->live_task == e->task) {
                /*
                 * sigreturn sets the task's state from its signal frame on
                 * purpose: the registers' newer content (the handler's) is
                 * dropped, and the buffer rewritten in memory is loaded
                 * (arm64: restore_fpsimd_context() -> fpsimd_update_current_state();
                 * x86: __fpu_restore_sig()'s copy into the task's fpstate).
                 * That load neither is stale nor loses anything.
                 */
                cs->sigreturn = 1;
            } else if (e->index == FTR_PROBE_EXEC_RESET && cs->live == LIVE_TASK &&
                       cs->live_task == e->task) {
                /*
                 * exec: fpu__drop() leaves the registers nobody's, and the
                 * task's buffer is rewritten in memory (init_fpstate).
                 */
                cs->live = LIVE_NOBODY;
                cs->live_vmcb = 0;
                if (cs->owner_known) {
                    uint32_t os = map_get(&buf_map, cs->owner);
                    if (os != UINT32_MAX) {
                        bufs[os].last_op = -1;
                        bufs[os].pending_overwrite = -1;
                    }
                    cs->owner_known = 0;
                }
            }
            continue;
        default:
            break;
        }
        if (unjudged || (!is_save(e->kind) && !is_restore(e->kind))) {
            continue;
        }

        int save = is_save(e->kind);
        int regs_ok = !!(e->flags & FLAG_REGS_VALID);
        int after_ok = !!(e->flags & FLAG_AFTER_VALID);
        int8_t my_ctx = CTX_TASK;
        if (e->addr < USER_LIMIT && (e->flags & FLAG_TASK_VALID)) {
            my_ctx = CTX_SIGNAL_FRAME;
        }
        if (init_hi && e->addr >= init_lo && e->addr < init_hi) {
            my_ctx = CTX_INIT;
        }
        ctx[i] = my_ctx;

        int64_t p = cs->last_op;
        int has_p = p >= 0;
        int known = has_p && cs->sync_ok && regs_ok;
        int modified = known && e->regs_hash != cs->sync;
        int kernel_use = has_p && cs->kernel_simd;
        int owner_same = has_p && cs->owner_known && cs->owner == e->addr;
        int owner_dirty = modified && !kernel_use;
        uint64_t my_sync = save ? e->regs_hash : e->regs_after_hash;
        int my_sync_ok = save ? regs_ok : after_ok;

        if (map_put(&buf_map, e->addr, &slot, &created) < 0) {
            goto out;
        }
        if (slot >= bufs_cap) {
            struct buf_state *more = realloc(bufs, bufs_cap * 2 * sizeof(*bufs));
            if (!more) {
                goto out;
            }
            bufs = more;
            bufs_cap *= 2;
        }
        struct buf_state *bs = &bufs[slot];
        if (created) {
            bs->last_op = -1;
            bs->pending_overwrite = -1;
            bs->holds_vmcb = 0;
        }
        /*
         * fpu_clone() / fpu__copy(): the parent saves its live registers
         * into the child's new buffer, inside the child's task_struct. A
         * new context begins there: what the address held before is gone.
         */
        int fork_copy = 0;
        if (save && cs->fork_parent != 0 && cs->fork_parent == e->task) {
            /*
             * It is the parent's first save after the probe, or there is
             * none: with TIF_NEED_FPU_LOAD set, 5.10's fpu__copy() copies
             * the parent's buffer with memcpy() (6.x's fpu_clone() restores
             * it first and then saves).
             */
            fork_copy = fpu_offset != 0 && e->addr == cs->fork_child + fpu_offset;
            cs->fork_parent = 0;
        }
        if (fork_copy) {
            bs->last_op = -1;
            bs->pending_overwrite = -1;
        }
        /* This is the next operation on a context that was overwritten: a lost
         * state if it resumes with exactly the bytes of its last sync. */
        if (bs->pending_overwrite >= 0) {
            if (!save && after_ok && e->regs_after_hash == bs->pending_sync) {
                int64_t r = bs->pending_overwrite;
                cls[r] = LOST_STATE;
                if (A && agg_relabel_lost(A, &ev[r], ident[r], ctx[r], guest_of[r]) < 0) {
                    goto out;
                }
                finding_add(&f, bs->pending_overwrite, bs->pending_last_sync, (int64_t)i,
                            e->addr, LOST_STATE);
            }
            bs->pending_overwrite = -1;
        }
        int64_t q = bs->last_op;

        if (save && !fork_copy && my_ctx != CTX_INIT && (e->flags & FLAG_TASK_VALID)) {
            /*
             * The kernel saves only current's registers (switch_fpu_prepare()
             * runs as the outgoing task, kernel_fpu_begin(), fpu_clone(),
             * fpu_swap_kvm_fpstate(), the signal frame): a save by a task
             * whose state is not live writes another context's registers, or
             * nobody's, into its buffer. A fork copy is sanctioned; what the
             * child got is checked at its first return.
             */
            if (cs->live == LIVE_TASK && cs->live_task != e->task) {
                finding_add(&f, (int64_t)i, cs->live_since, -1, e->addr, FINDING_FOREIGN_SAVE);
            } else if (cs->live == LIVE_NOBODY) {
                finding_add(&f, (int64_t)i, cs->live_since, -1, e->addr, FINDING_DROPPED_SAVE);
            }
        }
        if (save) {
            guest_of[i] = cs->live == LIVE_TASK ? cs->live_vmcb : 0;
            bs->holds_vmcb = guest_of[i];
            if (!cs->owner_known) {
                /* No restore seen on this CPU: the saving task's state was live. */
                cpu_take(cs, e, my_ctx, (int64_t)i);
            }
        } else {
            /* A guest buffer of one of this thread's vCPUs (not of an old VM's). */
            uint32_t gs = e->addr >= guest_lo && e->addr <= guest_hi
                        ? map_get(&guest_map, e->addr) : UINT32_MAX;
            uint64_t registered = gs != UINT32_MAX && gs < *n_guest ? guest_vmcb[gs] : 0;
            if (registered >> 40 != ((uint64_t)ident[i] & 0xffffffull)) {
                registered = 0;
            }
            guest_of[i] = bs->holds_vmcb ? bs->holds_vmcb : registered;
        }
        if (fork_copy) {
            cls[i] = NECESSARY;
        } else if (save) {
            if (q < 0 && (e->flags & FTR_FLAG_PRIOR_VALID) && (e->flags & FLAG_MEM_VALID)) {
                /* The plugin read the buffer before this first save to it. */
                cls[i] = e->aux == e->mem_hash ? REDUNDANT_SAVE : NECESSARY;
            } else if (q < 0) {
                cls[i] = UNKNOWN;
                why[i] = FIRST_SIGHT;
            } else {
                const struct ftr_event *eq = &ev[q];
                int q_save = is_save(eq->kind);
                uint64_t mask_s = covers(e), mask_q = covers(eq);
                int redundant, undecidable;
                if (q_save) {
                    redundant = e->mem_hash == eq->mem_hash && mask_s == mask_q;
                    undecidable = !redundant && mask_s != mask_q;
                } else {
                    int both_read = regs_ok && (eq->flags & FLAG_AFTER_VALID);
                    uint64_t avx = e->mem_hash - e->mem_legacy_hash;
                    uint64_t avx_q = (eq->xstate_bv & 4) ? eq->mem_hash - eq->mem_legacy_hash
                                                         : avx_init_hash;
                    int wants_avx = (mask_s & 4) != 0;
                    redundant = both_read && e->regs_hash == eq->regs_after_hash &&
                                (!wants_avx || avx == avx_q);
                    undecidable = !redundant && (!both_read || (wants_avx && !(mask_q & 4)));
                    if (undecidable) {
                        why[i] = !both_read ? REGISTERS_NOT_READ : MASKS_DIFFER;
                    }
                }
                if (redundant) {
                    cls[i] = REDUNDANT_SAVE;
                } else if (undecidable) {
                    cls[i] = UNKNOWN;
                    if (q_save) {
                        why[i] = MASKS_DIFFER;
                    }
                } else {
                    cls[i] = NECESSARY;
                }
            }
        } else {
            int unchanged = after_ok && regs_ok && e->regs_after_hash == e->regs_hash;
            int buffer_unchanged = after_ok && has_p && cs->sync_ok &&
                                   e->regs_after_hash == cs->sync;
            uint8_t c = NECESSARY;
            if (owner_same && known && !modified && unchanged) {
                c = REDUNDANT_RESTORE;
            }
            if (owner_same && owner_dirty && buffer_unchanged && my_ctx != CTX_INIT &&
                !cs->sigreturn) {
                c = STALE_RESTORE;
            }
            if (has_p && cs->owner_known && !owner_same && owner_dirty &&
                cs->owner_ctx != CTX_INIT && cs->sync_ok && !cs->sigreturn) {
                /* Another context's newer registers are overwritten without a
                 * save. It is lost if that context's next operation, none
                 * having happened since its last sync, reloads that sync. */
                uint32_t vslot = map_get(&buf_map, cs->owner);
                if (vslot != UINT32_MAX && bufs[vslot].last_op == p) {
                    bufs[vslot].pending_overwrite = (int64_t)i;
                    bufs[vslot].pending_last_sync = p;
                    bufs[vslot].pending_sync = cs->sync;
                }
            }
            if (!has_p) {
                c = UNKNOWN;
                why[i] = NO_PREVIOUS_OWNER;
            } else if (!known && c == NECESSARY) {
                c = UNKNOWN;
                why[i] = REGISTERS_NOT_READ;
            }
            cls[i] = c;
            if (c == STALE_RESTORE) {
                finding_add(&f, (int64_t)i, p, -1, e->addr, STALE_RESTORE);
            }
            /* The kernel loads only current's state: it owns the registers now. */
            cpu_take(cs, e, my_ctx, (int64_t)i);
            cs->live_vmcb = guest_of[i];
        }
        if (A && agg_classified(A, e, ident[i], pc_row, task_row, cls[i], why[i], my_ctx,
                                guest_of[i]) < 0) {
            goto out;
        }
        cs->last_op = (int64_t)i;
        cs->sync = my_sync;
        cs->sync_ok = my_sync_ok;
        cs->kernel_simd = 0;
        cs->sigreturn = 0;
        bs->last_op = (int64_t)i;
    }
    /*
     * Guest buffers are known once their VM entries are seen: label their
     * operations (where no other kind, signal frame or init, took
     * precedence) and the guest state they moved.
     */
    for (size_t i = 0; i < n; i++) {
        if (ctx[i] < 0) {
            continue;
        }
        uint32_t gs = ev[i].addr >= guest_lo && ev[i].addr <= guest_hi
                    ? map_get(&guest_map, ev[i].addr) : UINT32_MAX;
        if (ctx[i] == CTX_TASK && gs != UINT32_MAX) {
            ctx[i] = CTX_GUEST;
            if (!guest_of[i] && gs < *n_guest) {
                guest_of[i] = guest_vmcb[gs];
            }
        } else if (guest_of[i] && ctx[i] == CTX_TASK) {
            ctx[i] = CTX_GUEST;
        }
    }
    rc = A ? agg_output(A, &guest_map, guest_vmcb, *n_guest, agg_ptrs, agg_cap, agg_n_out) : 0;
out:
    if (A) {
        agg_free(A);
    }
    *f_len = f.len;
    *f_total = f.total;
    map_free(&task_map);
    map_free(&buf_map);
    map_free(&guest_map);
    free(bufs);
    free(cs_big);
    free(task_announcement);
    return rc;
}

/* ---- the boundary checks' linear part (analyzers/boundaries.py) ---- */

struct fpa_bounds_out {
    /* Events the checks look at one by one: user entries, returns that are
     * not QUIET, probes whose index is in probe_mask, and the first saves on
     * a CPU after a fork probe there; with, for returns, the previous return
     * of the same task key (QUIET ones included), else -1. */
    int64_t *rel, *rel_prev_return;
    size_t rel_cap, rel_len;
    int64_t *quiet_per_key;     /* [n_keys + 1]: QUIET returns per task key (0: unknown) */
    /* VM entries against their vCPU's previous VM exit (a vCPU: VMCB and task key). */
    uint64_t *vcpu_keys, *vcpu_equal;
    size_t vcpu_cap, vcpu_len;
    int64_t *diff_entry, *diff_exit;
    size_t diff_cap, diff_len;
    uint64_t first_entries, unreadable;
    uint64_t kfpu_begins;       /* kernel_fpu_begin probes */
};

#define FORK_COPY_WINDOW 16

static int64_t key_of(const int64_t *ident, const int64_t *key_of_ident, size_t i)
{
    return ident[i] >= 0 ? key_of_ident[ident[i]] : -1;
}

/*
 * Returns 0, or 1 if an output did not fit its capacity (the *_len fields
 * then say how much was needed: call again), -1 when memory ran out.
 */
int fpa_boundaries(const struct ftr_event *ev, size_t n, const int64_t *ident,
                   const int64_t *key_of_ident, size_t n_keys, uint64_t probe_mask,
                   struct fpa_bounds_out *o)
{
    struct map vcpus = { 0 };
    int64_t *last_return = malloc((n_keys + 1) * sizeof(int64_t));
    int64_t *last_vm = NULL;            /* per vCPU slot: its last VM event */
    size_t last_vm_cap = 64;
    uint32_t saves_since_fork[NCPU];
    int rc = -1;

    o->rel_len = o->vcpu_len = o->diff_len = 0;
    o->first_entries = o->unreadable = o->kfpu_begins = 0;
    memset(o->quiet_per_key, 0, (n_keys + 1) * sizeof(int64_t));
    for (size_t c = 0; c < NCPU; c++) {
        saves_since_fork[c] = FORK_COPY_WINDOW;
    }
    last_vm = malloc(last_vm_cap * sizeof(int64_t));
    if (!last_return || !last_vm || map_init(&vcpus, 64) < 0) {
        goto out;
    }
    for (size_t k = 0; k <= n_keys; k++) {
        last_return[k] = -1;
    }
    for (size_t i = 0; i < n; i++) {
        const struct ftr_event *e = &ev[i];
        int rel = 0;
        unsigned cpu = e->vcpu % NCPU;

        switch (e->kind) {
        case KIND_USER_ENTRY:
            rel = 1;
            break;
        case KIND_USER_RETURN: {
            int64_t k = key_of(ident, key_of_ident, i) + 1;
            if (e->flags & FTR_FLAG_QUIET) {
                o->quiet_per_key[k]++;
            } else {
                if (o->rel_len < o->rel_cap) {
                    o->rel_prev_return[o->rel_len] = last_return[k];
                }
                rel = 1;
            }
            last_return[k] = (int64_t)i;
            break;
        }
        case KIND_PROBE:
            if (e->index == FTR_PROBE_FORK_COPY) {
                saves_since_fork[cpu] = 0;
            } else if (e->index == FTR_PROBE_KFPU_BEGIN) {
                o->kfpu_begins++;
            }
            rel = e->index < 64 && (probe_mask >> e->index & 1);
            break;
        case KIND_VM_ENTRY:
        case KIND_VM_EXIT: {
            if (e->kind == KIND_VM_ENTRY && (e->flags & FLAG_L2)) {
                break;
            }
            /*
             * arm64's lazy switch: a guest that runs with FP/SIMD trapped
             * to EL2 neither sees nor leaves its registers; they are the
             * host's. Its state is checked at the next entry that gives it
             * the registers, against the last exit that took them back.
             */
            if (e->flags & FTR_FLAG_GUEST_FP_TRAPPED) {
                break;
            }
            uint64_t vk = (e->addr & ((1ull << 48) - 1)) |
                          (uint64_t)(key_of(ident, key_of_ident, i) + 1) << 48;
            uint32_t slot;
            int created;
            if (map_put(&vcpus, vk, &slot, &created) < 0) {
                goto out;
            }
            if (slot >= last_vm_cap) {
                int64_t *more = realloc(last_vm, last_vm_cap * 2 * sizeof(int64_t));
                if (!more) {
                    goto out;
                }
                last_vm = more;
                last_vm_cap *= 2;
            }
            if (created) {
                last_vm[slot] = -1;
                if (o->vcpu_len < o->vcpu_cap) {
                    o->vcpu_keys[o->vcpu_len] = vk;
                    o->vcpu_equal[o->vcpu_len] = 0;
                }
                o->vcpu_len++;
            }
            int64_t x = last_vm[slot];
            last_vm[slot] = (int64_t)i;
            if (e->kind != KIND_VM_ENTRY) {
                break;
            }
            if (x < 0) {
                o->first_entries++;
            } else if (ev[x].kind == KIND_VM_EXIT) {
                if (!(e->flags & FLAG_REGS_VALID) || !(ev[x].flags & FLAG_REGS_VALID)) {
                    o->unreadable++;
                } else if (e->regs_hash == ev[x].regs_hash) {
                    if (slot < o->vcpu_cap) {
                        o->vcpu_equal[slot]++;
                    }
                } else {
                    if (o->diff_len < o->diff_cap) {
                        o->diff_entry[o->diff_len] = (int64_t)i;
                        o->diff_exit[o->diff_len] = x;
                    }
                    o->diff_len++;
                }
            }
            break;
        }
        default:
            if (is_save(e->kind) && saves_since_fork[cpu] < FORK_COPY_WINDOW) {
                saves_since_fork[cpu]++;
                rel = 1;
            }
            break;
        }
        if (rel) {
            if (o->rel_len < o->rel_cap) {
                o->rel[o->rel_len] = (int64_t)i;
                if (e->kind != KIND_USER_RETURN) {
                    o->rel_prev_return[o->rel_len] = -1;
                }
            }
            o->rel_len++;
        }
    }
    rc = o->rel_len > o->rel_cap || o->vcpu_len > o->vcpu_cap || o->diff_len > o->diff_cap;
out:
    map_free(&vcpus);
    free(last_return);
    free(last_vm);
    return rc;
}

/* ---- CRC-32C of block payloads (plugin/ftr-crc32c.h) ---- */

uint32_t fpa_crc32c(const void *data, size_t len)
{
    return ftr_crc32c(data, len);
}

/*
 * Copy block payloads out of a mapped trace file into one array, checking
 * each block's CRC-32C on the way (one read of the source). Mapped source
 * pages already copied are released every 64 MiB, so the file is never
 * resident twice. Returns how many blocks were copied before the first
 * whose checksum failed (all of them if none).
 */
#include <sys/mman.h>

#define RELEASE_CHUNK (64u << 20)

#if defined(__x86_64__)
__attribute__((target("sse4.2")))
static uint32_t copy_crc32c_sse42(uint8_t *dst, const uint8_t *src, size_t len)
{
    uint64_t c = 0xffffffffu;
    uint32_t crc;

    while (len >= 8) {
        uint64_t v;
        memcpy(&v, src, 8);
        c = _mm_crc32_u64(c, v);
        memcpy(dst, &v, 8);
        src += 8;
        dst += 8;
        len -= 8;
    }
    crc = (uint32_t)c;
    while (len--) {
        crc = _mm_crc32_u8(crc, *src);
        *dst++ = *src++;
    }
    return crc ^ 0xffffffffu;
}
#endif

size_t fpa_copy_blocks(const uint8_t *base, size_t map_size, const uint64_t *offsets,
                       const uint32_t *sizes, const uint32_t *crcs, size_t n_blocks,
                       uint8_t *dest, uint8_t *ok)
{
    const uint8_t *released = base;
    size_t out = 0, good = 0;

    int hw = ftr_crc32c_has_hw();
    for (size_t b = 0; b < n_blocks; b++) {
        const uint8_t *src = base + offsets[b];
        uint32_t crc;

#if defined(__x86_64__)
        if (hw) {
            crc = copy_crc32c_sse42(dest + out, src, sizes[b]);
        } else
#endif
        {
            memcpy(dest + out, src, sizes[b]);
            crc = fpa_crc32c(src, sizes[b]);
        }
        (void)hw;
        /* A damaged block costs that block: the next one is copied over it. */
        ok[b] = crc == crcs[b];
        if (!ok[b]) {
            continue;
        }
        good++;
        out += sizes[b];
        const uint8_t *done = (const uint8_t *)((uintptr_t)(src + sizes[b]) & ~(uintptr_t)4095);
        if (done > released && (size_t)(done - released) >= RELEASE_CHUNK &&
            done <= base + map_size) {
            madvise((void *)released, done - released, MADV_DONTNEED);
            released = done;
        }
    }
    return good;
}
