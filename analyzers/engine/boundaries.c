/*
 * boundaries.c: fpa_boundaries(), the boundary checks' linear part: the
 * pairs and windows that analyzers/boundaries.py then judges one by one.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "fpa-internal.h"
#include "fpa-map.h"

/* ---- the boundary checks' linear part (analyzers/boundaries.py) ---- */

/*
 * The saves on a CPU after a fork probe or a signal frame probe that are
 * looked at one by one: fpu_clone()'s copy of the parent's registers into
 * the child, copy_fpstate_to_sigframe()'s save into the signal frame.
 */
#define PROBED_SAVE_WINDOW 16

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
    uint32_t saves_since_probe[FPA_NCPU];
    int rc = -1;

    o->rel_len = o->vcpu_len = o->diff_len = 0;
    o->first_entries = o->unreadable = o->kfpu_begins = 0;
    memset(o->quiet_per_key, 0, (n_keys + 1) * sizeof(int64_t));
    for (size_t c = 0; c < FPA_NCPU; c++) {
        saves_since_probe[c] = PROBED_SAVE_WINDOW;
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
        unsigned cpu = e->vcpu % FPA_NCPU;

        if ((e->kind == FTR_KIND_USER_ENTRY || e->kind == FTR_KIND_USER_RETURN) &&
            (e->flags & FTR_FLAG_L2)) {
            continue;           /* the nested guest's own boundaries: its model's */
        }
        switch (e->kind) {
        case FTR_KIND_USER_ENTRY:
        case FTR_KIND_SIGFRAME:
            rel = 1;
            break;
        case FTR_KIND_USER_RETURN: {
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
        case FTR_KIND_PROBE:
            if (e->index == FTR_PROBE_FORK_COPY || e->index == FTR_PROBE_SIGFRAME_SAVE) {
                saves_since_probe[cpu] = 0;
            } else if (e->index == FTR_PROBE_KFPU_BEGIN) {
                o->kfpu_begins++;
            }
            rel = e->index < 64 && (probe_mask >> e->index & 1);
            break;
        case FTR_KIND_VM_ENTRY:
        case FTR_KIND_VM_EXIT: {
            if (e->kind == FTR_KIND_VM_ENTRY && (e->flags & FTR_FLAG_L2)) {
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
            if (e->kind != FTR_KIND_VM_ENTRY) {
                break;
            }
            if (x < 0) {
                o->first_entries++;
            } else if (ev[x].kind == FTR_KIND_VM_EXIT) {
                if (!(e->flags & FTR_FLAG_REGS_VALID) || !(ev[x].flags & FTR_FLAG_REGS_VALID)) {
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
            if (is_save(e->kind) && saves_since_probe[cpu] < PROBED_SAVE_WINDOW) {
                saves_since_probe[cpu]++;
                rel = 1;
            }
            break;
        }
        if (rel) {
            if (o->rel_len < o->rel_cap) {
                o->rel[o->rel_len] = (int64_t)i;
                /* A return's is its key's previous return, set above; any
                 * other event's, its key's latest return so far. */
                if (e->kind != FTR_KIND_USER_RETURN) {
                    o->rel_prev_return[o->rel_len] =
                        last_return[key_of(ident, key_of_ident, i) + 1];
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

