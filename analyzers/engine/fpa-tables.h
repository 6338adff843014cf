/*
 * fpa-tables.h: the report's tables, filled during classification
 * (tables.c).
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#ifndef FPA_TABLES_H
#define FPA_TABLES_H

#include "fpa-internal.h"
#include "fpa-map.h"

/* ---- the report's tables, filled during classification ---- */

/*
 * The layout of the fixed-size tables and the keyed tables' rows: enum
 * fpa_tables (fpanalysis.h). Per buffer, of the operations classified as on
 * a task buffer (the only ones that turn out guest buffers'): classes, class
 * bytes, then saves, restores, bytes.
 */
#define BUF_ROW FPA_VCPU_ROW

struct agg {
    uint64_t *small;
    struct keyed pcs, tasks, bufs, feats, optasks, vmcbs, vcpus;
};

/* tables.c: each described where it is defined. */
FPA_INTERNAL int agg_init(struct agg *a, uint64_t *small);
FPA_INTERNAL void agg_free(struct agg *a);
FPA_INTERNAL int agg_event(struct agg *a, const struct ftr_event *e, int64_t ident,
                           uint64_t **pc_row, uint64_t **task_row);
FPA_INTERNAL int agg_classified(struct agg *a, const struct ftr_event *e, int64_t ident,
                                uint64_t *pr, uint64_t *tr, uint8_t c, uint8_t why,
                                int8_t ctx, uint64_t vmcb);
FPA_INTERNAL int agg_relabel_lost(struct agg *a, const struct ftr_event *e, int64_t ident,
                                  int8_t ctx, uint64_t vmcb);
FPA_INTERNAL int agg_output(struct agg *a, struct map *guest_map, const uint64_t *guest_vmcb,
                            size_t n_guest, uint64_t **ptrs, size_t cap, int64_t *n_out);

#endif
