/*
 * fpanalysis.h: the interface of libfpanalysis (classify.c, tables.c,
 * hashes.c, boundaries.c; fpa-internal.h is what they share), the one
 * declaration of its functions, argument structs and result codes.
 *
 * analyzers/native.py hands this file, with its preprocessor lines
 * dropped, to cffi: Python calls the functions through these declarations
 * and reads the tables' layout and the vCPU packing from here. Four
 * enumerations (fpa_class, fpa_finding, fpa_unknown, fpa_context) are
 * also Python IntEnums in analyzers/ownership.py, so that the type checker
 * knows their members; tests/test_native.py requires the two to agree
 * member for member. Keep it to what cffi's parser takes: no macros,
 * integer constants as enumerators.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#ifndef FPANALYSIS_H
#define FPANALYSIS_H

#include <stddef.h>
#include <stdint.h>

struct ftr_event;       /* plugin/ftr-format.h */
struct ftr_task;

/* A save or restore's class (docs/analysis.md, "Classes"). */
enum fpa_class {
    FPA_NECESSARY, FPA_REDUNDANT_SAVE, FPA_REDUNDANT_RESTORE, FPA_LOST_STATE,
    FPA_STALE_RESTORE, FPA_UNKNOWN,
    FPA_NOT_CLASSIFIED = 255,   /* not a save or restore */
};

/* A finding's kind: the first two are also classes. */
enum fpa_finding {
    FPA_FINDING_LOST = FPA_LOST_STATE, FPA_FINDING_STALE = FPA_STALE_RESTORE,
    FPA_FINDING_FOREIGN_SAVE = 6, FPA_FINDING_DROPPED_SAVE = 7,
};

/* Why an operation is FPA_UNKNOWN. */
enum fpa_unknown {
    FPA_WHY_NONE, FPA_NO_MEMORY_ACCESS, FPA_FIRST_SIGHT, FPA_NO_PREVIOUS_OWNER,
    FPA_REGISTERS_NOT_READ, FPA_MASKS_DIFFER, FPA_NESTED_GUEST, FPA_USER_MODE,
};

/* The kind of context a buffer holds (docs/analysis.md's table). */
enum fpa_context {
    FPA_CTX_TASK, FPA_CTX_GUEST, FPA_CTX_SIGNAL_FRAME, FPA_CTX_INIT,
};

/*
 * A vCPU instance, as the tables key it (vcpu_id()): the announcement of
 * the thread that entered it, in the bits from FPA_VCPU_IDENT_SHIFT, above
 * its VMCB's page number (the VMCB's bits from FPA_VCPU_PAGE_SHIFT). A
 * VMCB is freed with its VM and reused by the next one; the thread tells
 * the two apart.
 */
enum fpa_vcpu_packing {
    FPA_VCPU_PAGE_SHIFT = 12, FPA_VCPU_IDENT_SHIFT = 40, FPA_VCPU_IDENT_BITS = 24,
};

/*
 * The report's fixed-size tables, one uint64_t array of FPA_S_SIZE
 * (agg_small); [a][b] arrays are row-major.
 */
enum fpa_tables {
    FPA_NKIND = 64, FPA_NCLS = 6, FPA_NCPU = 256, FPA_NWHY = 8, FPA_NOPS = 16,
    FPA_S_KIND = 0,                                     /* [NKIND] events per kind */
    FPA_S_KIND64 = FPA_S_KIND + FPA_NKIND,              /* [NKIND] of them REX.W forms */
    FPA_S_KIND_BYTES = FPA_S_KIND64 + FPA_NKIND,        /* [NKIND] bytes moved */
    FPA_S_CPU_KIND = FPA_S_KIND_BYTES + FPA_NKIND,      /* [NCPU][NKIND] */
    FPA_S_LEVEL_KIND = FPA_S_CPU_KIND + FPA_NCPU * FPA_NKIND,   /* [2][NKIND] */
    FPA_S_CLS = FPA_S_LEVEL_KIND + 2 * FPA_NKIND,       /* [NCLS] */
    FPA_S_CLS_BYTES = FPA_S_CLS + FPA_NCLS,             /* [NCLS] */
    FPA_S_WHY = FPA_S_CLS_BYTES + FPA_NCLS,             /* [NWHY] unknown reasons */
    FPA_S_LEVEL_CLS = FPA_S_WHY + FPA_NWHY,             /* [2][NCLS] */
    FPA_S_LEVEL_CLS_BYTES = FPA_S_LEVEL_CLS + 2 * FPA_NCLS,     /* [2][NCLS] */
    FPA_S_OPS = FPA_S_LEVEL_CLS_BYTES + 2 * FPA_NCLS,   /* [NOPS], FPA_OP_* */
    FPA_S_SIZE = FPA_S_OPS + FPA_NOPS,
    /* FPA_S_OPS entries */
    FPA_OP_ENTRIES = 0,
    FPA_OP_SIGNALS = 1,
    FPA_OP_AROUND_SIG = 2,      /* [3] saves, restores, bytes on signal frames and init */
    /*
     * The keyed tables (agg_ptrs: keys, rows for each, in this order): per
     * pc and per task announcement (rows of FPA_ROW: kind counts, class
     * counts, class bytes), per vCPU (FPA_VCPU_ROW: classes, class bytes,
     * saves, restores, bytes), per feature set and per announcement's
     * operations (4), VM entries per VMCB (1).
     */
    FPA_ROW = FPA_NKIND + 2 * FPA_NCLS,
    FPA_VCPU_ROW = 2 * FPA_NCLS + 3,
    FPA_N_KEYED = 6,
};

/*
 * fpa_classify()'s arguments: inputs, then the per-event outputs (each of
 * n entries, allocated by the caller), then the bounded outputs with their
 * capacities and lengths.
 */
struct fpa_classify_args {
    const struct ftr_event *ev;         /* in seq order */
    size_t n;
    const struct ftr_task *tasks;       /* announcements, in seq order */
    size_t n_tasks;
    uint64_t init_lo, init_hi;          /* init_fpstate's span, or 0, 0 */

    uint8_t *cls;                       /* enum fpa_class */
    uint8_t *why;                       /* enum fpa_unknown */
    int8_t *ctx;                        /* enum fpa_context of the buffer, or -1 */
    int64_t *ident;                     /* task announcement index, or -1 */
    uint64_t *guest_of;                 /* vCPU whose guest state it moved, or 0 */
    uint64_t *owner;                    /* the registers' owner after it (buffer), or 0 */
    int8_t *owner_ctx;                  /* that owner's enum fpa_context, or -1 */

    uint64_t *guest_buf, *guest_vmcb;   /* guest buffers and their vCPUs */
    size_t guest_cap, n_guest;
    int64_t *f_event, *f_last, *f_resumed;      /* findings */
    uint64_t *f_buffer;
    uint8_t *f_cls;                     /* enum fpa_finding */
    size_t f_cap, f_len, f_total;
    uint64_t *agg_small;                /* NULL, or the tables: FPA_S_SIZE entries */
    uint64_t **agg_ptrs;                /* [2 * FPA_N_KEYED] keys, rows */
    size_t agg_cap;                     /* rows each keyed table can take */
    int64_t *agg_n_out;                 /* [FPA_N_KEYED] rows each needed */
};

/*
 * Returns 0; 1 if a keyed table did not fit agg_cap (agg_n_out says how
 * much is needed: call again); -1 when memory ran out.
 */
int fpa_classify(struct fpa_classify_args *a);

/*
 * The register hash of the user state the kernel's init state gives a task
 * (arch: enum ftr_arch): what exec, a signal handler on x86 and a faulting
 * restore give.
 */
uint64_t fpa_user_init_hash(uint16_t arch);

/*
 * arm64: the hash of the SVE state beyond V0-V31 all zero, at vector
 * length vl bytes (ftr-hash.h): what an SVE access trap gives a task.
 */
uint64_t fpa_a64_sve_zero_hash(uint32_t vl);

/* x86's register hash in shares: x87 (FCW, FSW, ST0-7), MXCSR, SSE (XMM0-15). */
enum fpa_x86_share { FPA_X86_X87, FPA_X86_MXCSR, FPA_X86_SSE };

/* A share of x86's init state, as fpa_user_init_hash() defines it. */
uint64_t fpa_x86_init_share(enum fpa_x86_share part);

/* A task's FPU buffer as an offset from its task pointer, or 0. */
uint64_t fpa_fpu_buffer_offset(const struct ftr_event *ev, size_t n);

struct fpa_bounds_out {
    /*
     * Events the checks look at one by one: user entries, returns that are
     * not QUIET, probes whose index is in probe_mask, and the first saves
     * on a CPU after a fork or signal frame probe there; with, for returns,
     * the previous return of the same task key (QUIET ones included), for
     * the rest the key's latest return so far; -1 for none.
     */
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

/*
 * Returns 0, or 1 if an output did not fit its capacity (the *_len fields
 * then say how much was needed: call again), -1 when memory ran out.
 */
int fpa_boundaries(const struct ftr_event *ev, size_t n, const int64_t *ident,
                   const int64_t *key_of_ident, size_t n_keys, uint64_t probe_mask,
                   struct fpa_bounds_out *o);

#endif /* FPANALYSIS_H */
