/*
 * tables.c: the report's tables (enum fpa_tables), counted per kind, pc,
 * task, buffer, feature set and vCPU as fpa_classify() goes.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "fpa-tables.h"

int agg_init(struct agg *a, uint64_t *small)
{
    memset(a, 0, sizeof(*a));
    a->small = small;
    memset(small, 0, FPA_S_SIZE * sizeof(uint64_t));
    return keyed_init(&a->pcs, FPA_ROW) || keyed_init(&a->tasks, FPA_ROW) ||
           keyed_init(&a->bufs, BUF_ROW) || keyed_init(&a->feats, 4) ||
           keyed_init(&a->optasks, 4) || keyed_init(&a->vmcbs, 1) ||
           keyed_init(&a->vcpus, BUF_ROW) ? -1 : 0;
}

void agg_free(struct agg *a)
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
int agg_event(struct agg *a, const struct ftr_event *e, int64_t ident,
              uint64_t **pc_row, uint64_t **task_row)
{
    uint8_t k = e->kind < FPA_NKIND ? e->kind : 0;
    int l2 = !!(e->flags & FTR_FLAG_L2);
    uint64_t *pr = keyed_row(&a->pcs, e->pc), *tr = keyed_row(&a->tasks, (uint64_t)ident);

    if (!pr || !tr) {
        return -1;
    }
    *pc_row = pr;
    *task_row = tr;
    a->small[FPA_S_KIND + k]++;
    if (e->flags & 0x008) {
        a->small[FPA_S_KIND64 + k]++;
    }
    a->small[FPA_S_KIND_BYTES + k] += e->mem_bytes;
    a->small[FPA_S_CPU_KIND + (e->vcpu % FPA_NCPU) * FPA_NKIND + k]++;
    a->small[FPA_S_LEVEL_KIND + l2 * FPA_NKIND + k]++;
    pr[k]++;
    tr[k]++;
    if (k == FTR_KIND_VM_ENTRY && !l2) {
        /* By task announcement: a task_struct is reused once its task exits. */
        uint64_t *orow = keyed_row(&a->optasks, (uint64_t)ident);
        uint64_t *vrow = keyed_row(&a->vmcbs, vcpu_id(e->addr, ident));
        if (!orow || !vrow) {
            return -1;
        }
        orow[3] = 1;
        vrow[0]++;
        a->small[FPA_S_OPS + FPA_OP_ENTRIES]++;
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
    row[FPA_NCLS + c] += e->mem_bytes;
    row[2 * FPA_NCLS + (is_save(e->kind) ? 0 : 1)]++;
    row[2 * FPA_NCLS + 2] += e->mem_bytes;
}

/*
 * A classified save or restore (ctx: its context as known when classified;
 * vmcb: the vCPU whose guest state it moved, or 0; pr, tr: its pc and task
 * rows from agg_event(), still valid since only other tables grew in
 * between).
 */
int agg_classified(struct agg *a, const struct ftr_event *e, int64_t ident,
                   uint64_t *pr, uint64_t *tr, uint8_t c, uint8_t why, int8_t ctx,
                   uint64_t vmcb)
{
    int l2 = !!(e->flags & FTR_FLAG_L2);
    int save = is_save(e->kind);
    int redundant = c == FPA_REDUNDANT_SAVE || c == FPA_REDUNDANT_RESTORE;
    uint64_t *fr = keyed_row(&a->feats, e->mem_features);

    if (!fr) {
        return -1;
    }
    a->small[FPA_S_CLS + c]++;
    a->small[FPA_S_CLS_BYTES + c] += e->mem_bytes;
    if (c == FPA_UNKNOWN) {
        a->small[FPA_S_WHY + (why & 7)]++;
    }
    a->small[FPA_S_LEVEL_CLS + l2 * FPA_NCLS + c]++;
    a->small[FPA_S_LEVEL_CLS_BYTES + l2 * FPA_NCLS + c] += e->mem_bytes;
    pr[FPA_NKIND + c]++;
    pr[FPA_NKIND + FPA_NCLS + c] += e->mem_bytes;
    tr[FPA_NKIND + c]++;
    tr[FPA_NKIND + FPA_NCLS + c] += e->mem_bytes;
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
    } else if (ctx == FPA_CTX_TASK) {
        uint64_t *br = keyed_row(&a->bufs, e->addr);
        if (!br) {
            return -1;
        }
        buf_row_count(br, e, c);
    }
    orow[save ? 0 : 1]++;
    orow[2] += e->mem_bytes;
    if (ctx == FPA_CTX_SIGNAL_FRAME || ctx == FPA_CTX_INIT) {
        a->small[FPA_S_OPS + FPA_OP_AROUND_SIG + (save ? 0 : 1)]++;
        a->small[FPA_S_OPS + FPA_OP_AROUND_SIG + 2] += e->mem_bytes;
        if (ctx == FPA_CTX_SIGNAL_FRAME && save) {
            a->small[FPA_S_OPS + FPA_OP_SIGNALS]++;
        }
    }
    return 0;
}

/* A restore counted as necessary turned out to be a lost state. */
int agg_relabel_lost(struct agg *a, const struct ftr_event *e, int64_t ident, int8_t ctx,
                     uint64_t vmcb)
{
    uint64_t *pr = keyed_row(&a->pcs, e->pc), *tr = keyed_row(&a->tasks, (uint64_t)ident);
    uint64_t b = e->mem_bytes;

    if (!pr || !tr) {
        return -1;
    }
    a->small[FPA_S_CLS + FPA_NECESSARY]--;
    a->small[FPA_S_CLS + FPA_LOST_STATE]++;
    a->small[FPA_S_CLS_BYTES + FPA_NECESSARY] -= b;
    a->small[FPA_S_CLS_BYTES + FPA_LOST_STATE] += b;
    a->small[FPA_S_LEVEL_CLS + FPA_NECESSARY]--;
    a->small[FPA_S_LEVEL_CLS + FPA_LOST_STATE]++;
    a->small[FPA_S_LEVEL_CLS_BYTES + FPA_NECESSARY] -= b;
    a->small[FPA_S_LEVEL_CLS_BYTES + FPA_LOST_STATE] += b;
    pr[FPA_NKIND + FPA_NECESSARY]--;
    pr[FPA_NKIND + FPA_LOST_STATE]++;
    pr[FPA_NKIND + FPA_NCLS + FPA_NECESSARY] -= b;
    pr[FPA_NKIND + FPA_NCLS + FPA_LOST_STATE] += b;
    tr[FPA_NKIND + FPA_NECESSARY]--;
    tr[FPA_NKIND + FPA_LOST_STATE]++;
    tr[FPA_NKIND + FPA_NCLS + FPA_NECESSARY] -= b;
    tr[FPA_NKIND + FPA_NCLS + FPA_LOST_STATE] += b;
    if (vmcb || ctx == FPA_CTX_TASK) {
        uint64_t *br = vmcb ? keyed_row(&a->vcpus, vmcb) : keyed_row(&a->bufs, e->addr);
        if (!br) {
            return -1;
        }
        br[FPA_NECESSARY]--;
        br[FPA_LOST_STATE]++;
        br[FPA_NCLS + FPA_NECESSARY] -= b;
        br[FPA_NCLS + FPA_LOST_STATE] += b;
    }
    return 0;
}

/*
 * Output of the tables. out: FPA_S_SIZE u64, then for each keyed table (per pc
 * FPA_ROW, per task announcement FPA_ROW, per vCPU (VMCB) BUF_ROW, per feature set
 * 4, per task announcement 4, per VMCB 1) a keys and a rows pointer in
 * ptrs[], each with capacity cap. Guest buffers' operations were counted as
 * task buffers' while they were not yet known to be guest buffers: moved
 * to their vCPU here.
 */
int agg_output(struct agg *a, struct map *guest_map, const uint64_t *guest_vmcb,
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
