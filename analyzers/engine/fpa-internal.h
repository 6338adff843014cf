/*
 * fpa-internal.h: what the engine's files share: the trace format, the
 * hash, the interface, and the helpers on events that every pass uses.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#ifndef FPA_INTERNAL_H
#define FPA_INTERNAL_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../../plugin/ftr-format.h"
#include "../../plugin/ftr-hash.h"
#include "fpanalysis.h"

/* Shared between the engine's files, not part of libfpanalysis's interface. */
#define FPA_INTERNAL __attribute__((visibility("hidden")))

_Static_assert(FPA_NKIND == FTR_KIND_MAX, "a table row per kind number");


/*
 * A task's fpstate lies inside its task_struct allocation (struct fpu ends
 * thread_struct, which ends task_struct; the fpstate is embedded or follows).
 */
#define TASK_STRUCT_SPAN (1ull << 16)

/* A vCPU instance: enum fpa_vcpu_packing. */
static inline uint64_t vcpu_id(uint64_t vmcb, int64_t ident)
{
    const uint64_t page_mask = (1ull << (FPA_VCPU_IDENT_SHIFT - FPA_VCPU_PAGE_SHIFT)) - 1;
    const uint64_t ident_mask = (1ull << FPA_VCPU_IDENT_BITS) - 1;

    return ((uint64_t)ident & ident_mask) << FPA_VCPU_IDENT_SHIFT |
           ((vmcb >> FPA_VCPU_PAGE_SHIFT) & page_mask);
}

#define USER_LIMIT (1ull << 47)

/* The kinds' roles are ftr-format.h's (FTR_KINDS). */
static inline int is_save(uint8_t k)
{
    return ftr_kind_role(k) == FTR_ROLE_SAVE;
}

static inline int is_restore(uint8_t k)
{
    return ftr_kind_role(k) == FTR_ROLE_RESTORE;
}

static inline uint64_t covers(const struct ftr_event *e)
{
    return (e->kind == FTR_KIND_FXSAVE || e->kind == FTR_KIND_FXRSTOR) ? 3 : e->value & e->xcr0;
}

#endif
