/*
 * x86.c: the x86_64 side of fputrace (struct arch_ops x86_ops).
 *
 * Translation: instructions are recognised from their bytes (XSAVE*,
 * XRSTOR*, FXSAVE/FXRSTOR, XSETBV, WRMSR, VMRUN, the user/kernel boundary
 * instructions, kernel SIMD use; x86-decode.c) and only those get
 * callbacks. Execution: the callbacks fill an event, the memory callbacks
 * of a save or restore place its area and collect the bytes it moved
 * (x86-xsave.c), and the register file is read through the register
 * handles resolved once by name.
 *
 * User boundaries: returns are the SYSRET and IRET instructions (an IRET
 * whose frame holds a user CS); entries are the first SWAPGS after a
 * return, which every entry path from user mode executes before anything
 * else touches the kernel's state. The current task is %gs:current=.
 *
 * Its own arguments (x86_parse_arg()):
 *   dmap=ADDR, dmap_var=ADDR
 *                       where L1's direct map of physical memory begins, or
 *                       the address of L1's variable holding it; the nested
 *                       guest's tasks are named through it (x86-mmu.c)
 *   msr=INDEX           also record WRMSR to INDEX (may repeat, up to 16);
 *                       IA32_XFD and IA32_XFD_ERR are always recorded
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

#define MSR_IA32_XFD            0x1c4
#define MSR_IA32_XFD_ERR        0x1c5
#define MAX_EXTRA_MSRS          16

/* ---- configuration ---------------------------------------------------- */

static struct {
    uint64_t dmap;              /* where L1's direct map of physical memory begins */
    /* ... or L1's variable that holds it (page_offset_base) */
    uint64_t dmap_var;
    uint32_t extra_msrs[MAX_EXTRA_MSRS];
    unsigned n_extra_msrs;
} x86_cfg;

/* ---- x86 register state ---------------------------------------------- */

/* Register handles, resolved once by name. */
static struct {
    struct qemu_plugin_register *gpr[16];
    struct qemu_plugin_register *cs, *fs_base, *gs_base, *k_gs_base;
    struct qemu_plugin_register *sreg[6];       /* selectors, enum x86_sreg order */
    struct qemu_plugin_register *cr0, *cr4, *efer, *eflags;
    struct qemu_plugin_register *fctrl, *fstat, *mxcsr;
    struct qemu_plugin_register *st[8], *xmm[16];
} x86_regs;

static uint64_t x86_regs_hash(struct vcpu_state *vs, bool *ok);


/*
 * The register file's hash from the bytes a 64-bit save or restore moved:
 * x87 and SSE hash like the register file (xsave_offset_is_content()), and
 * a component XRSTOR did not read (clear in XSTATE_BV) was loaded with its
 * init state. False when the bytes do not cover both.
 */
static uint64_t x87_init_hash, sse_init_hash;

static bool x86_regs_from_bytes(const struct ftr_event *ev, bool restore, uint64_t *out)
{
    uint64_t bv = ev->kind == FTR_KIND_FXRSTOR || ev->kind == FTR_KIND_FXSAVE
                  ? 3 : ev->xstate_bv;
    uint32_t moved = ev->mem_features;

    if (!(ev->flags & FTR_FLAG_MEM_VALID) || (ev->flags & FTR_FLAG_ADDR_UNVERIFIED)) {
        return false;
    }
    if (!restore) {
        if ((moved & 3) != 3) {
            return false;
        }
        *out = ev->mem_legacy_hash;
        return true;
    }
    /* What XRSTOR read is what it loaded; XSTATE_BV says what it read. */
    if ((bv & 1) != (moved & 1) || (bv & 2) != (moved & 2)) {
        return false;
    }
    *out = ev->mem_legacy_hash + (bv & 1 ? 0 : x87_init_hash) +
           (bv & 2 ? 0 : sse_init_hash);
    return true;
}

/*
 * The pending save or restore is done: hash the bytes it moved, note the
 * components they belong to and XSTATE_BV, and empty the image.
 */
static void x86_seal_pending(struct vcpu_state *vs)
{
    struct ftr_event *ev = &vs->pending_event;
    struct xsave_image *im = vs->x86.image;
    bool fx = ev->kind == FTR_KIND_FXSAVE || ev->kind == FTR_KIND_FXRSTOR;

    if (vs->pending_sealed) {
        return;
    }
    vs->pending_sealed = true;
    for (uint32_t i = 0; i < im->n_touched; i++) {
        uint32_t w = im->touched[i];
        uint64_t h = xsave_word_hash(w, im->word[w], im->present[w]);

        ev->mem_features |= xsave_word_feature[w];
        vs->x86.pending_xmm_hi |= w >= 288 / 8 && w < 416 / 8;
        if (w == XSAVE_WORD_XSTATE_BV && !fx) {
            ev->xstate_bv = im->word[w] & ftr_hash_bytes_of_mask(im->present[w]);
        }
        if (w >= XSAVE_WORD_EXT) {
            ev->mem_ext_hash += h;
        } else {
            ev->mem_hash += h;
            if (w < XSAVE_WORD_LEGACY_END) {
                ev->mem_legacy_hash += h;
            }
        }
        im->present[w] = 0;
    }
    im->n_touched = 0;
}

/*
 * Only 64-bit mode moves XMM8-15. When SSE state moved without them, the
 * instruction ran in compatibility mode, where both decodings named the
 * same address: relabel it, and read the registers instead of deriving.
 */
static void x86_confirm_64bit(struct vcpu_state *vs)
{
    struct ftr_event *ev = &vs->pending_event;

    if (!(ev->mem_features & 2) || vs->x86.pending_xmm_hi) {
        return;
    }
    vs->pending_derive = false;
    if ((ev->flags & FTR_FLAG_ADDR_SIZE_MASK) >> FTR_FLAG_ADDR_SIZE_SHIFT ==
        FTR_ADDR_64) {
        ev->flags = (ev->flags & ~FTR_FLAG_ADDR_SIZE_MASK) |
                    (uint32_t)FTR_ADDR_32 << FTR_FLAG_ADDR_SIZE_SHIFT;
    }
}

/*
 * A save or restore whose memory accesses are all in. A save's register
 * hash is the bytes it stored (regs=derive); a user entry waiting for it
 * goes out first, in order of sequence.
 */
static void x86_finish_pending(struct vcpu_state *vs, unsigned int vcpu_index)
{
    struct ftr_event *ev = &vs->pending_event;
    uint64_t h;

    if (!vs->pending) {
        return;
    }
    vs->pending = false;
    x86_seal_pending(vs);
    x86_confirm_64bit(vs);
    if (vs->pending_insn->is_save && !vs->pending_derive &&
        !(ev->flags & FTR_FLAG_REGS_VALID) && !vs->inl.regs_dirty) {
        /* Not derivable after all; a save leaves the registers, so read them now. */
        bool ok;
        ev->regs_hash = x86_regs_hash(vs, &ok);
        if (ok) {
            ev->flags |= FTR_FLAG_REGS_VALID;
        }
    }
    if (vs->pending_derive && vs->pending_insn->is_save) {
        if (x86_regs_from_bytes(ev, false, &h)) {
            ev->regs_hash = h;
            ev->flags |= FTR_FLAG_REGS_VALID;
        } else if (!vs->inl.regs_dirty) {
            /*
             * The bytes do not cover x87 and SSE (XSAVEOPT leaves out
             * components in their init state): the save left the
             * registers as they were, so read them.
             */
            bool ok;
            ev->regs_hash = x86_regs_hash(vs, &ok);
            if (ok) {
                ev->flags |= FTR_FLAG_REGS_VALID;
            }
        }
        /* The save left the registers as they were, unless SIMD code ran since. */
        vs->last_regs = ev->regs_hash;
        vs->last_regs_ok = (ev->flags & FTR_FLAG_REGS_VALID) != 0 && !vs->inl.regs_dirty;
    }
    vcpu_commit_after_entry(vs, vcpu_index, ev);
}

static unsigned x86_cpl(struct vcpu_state *vs)
{
    return reg_read_u64(vs, x86_regs.cs) & 3;
}

/* The register file as an XSAVE legacy area would hold it, hashed. */
static uint64_t x86_regs_hash(struct vcpu_state *vs, bool *ok)
{
    uint8_t buf[16], fcw_fsw[4];
    uint64_t h = 0;

    *ok = true;
    vs->inl.regs_dirty = 0;
    if (!reg_read(vs, x86_regs.fctrl, buf, 2)) {
        *ok = false;
        return 0;
    }
    memcpy(fcw_fsw, buf, 2);
    *ok &= reg_read(vs, x86_regs.fstat, buf, 2);
    memcpy(fcw_fsw + 2, buf, 2);
    h += xsave_hash_run(0, fcw_fsw, 4);
    *ok &= reg_read(vs, x86_regs.mxcsr, buf, 4);
    h += xsave_hash_run(24, buf, 4);
    for (int r = 0; r < 8; r++) {
        *ok &= reg_read(vs, x86_regs.st[r], buf, 10);
        h += xsave_hash_run(32 + 16 * r, buf, 10);
    }
    for (int r = 0; r < 16; r++) {
        *ok &= reg_read(vs, x86_regs.xmm[r], buf, 16);
        h += xsave_hash_run(160 + 16 * r, buf, 16);
    }
    return h;
}

/*
 * The linear address an operand names, as the CPU forms it in ea's mode.
 * Segment bases: in long mode only FS and GS have one (readable); in real
 * and virtual-8086 mode a base is the selector times 16; in protected mode
 * the hidden base of CS/DS/ES/SS cannot be read and is taken as 0 (flat
 * segments), which the instruction's memory accesses then confirm or not.
 */
static uint64_t x86_effective_address(struct vcpu_state *vs, const struct fpu_insn *fi,
                                      const struct x86_modrm_addr *ea)
{
    static const uint64_t size_mask[] = {
        [FTR_ADDR_64] = UINT64_MAX, [FTR_ADDR_32] = 0xffffffffull, [FTR_ADDR_16] = 0xffff,
    };
    uint64_t addr = (int64_t)ea->disp, base = 0;

    if (ea->base == -2) {
        addr += fi->vaddr + fi->len;
    } else if (ea->base >= 0) {
        addr += reg_read_u64(vs, x86_regs.gpr[ea->base]);
    }
    if (ea->index >= 0) {
        addr += reg_read_u64(vs, x86_regs.gpr[ea->index]) << ea->scale;
    }
    addr &= size_mask[ea->addr_size];
    if (ea->segment == SREG_FS || ea->segment == SREG_GS) {
        base = reg_read_u64(vs, ea->segment == SREG_FS ? x86_regs.fs_base
                                                       : x86_regs.gs_base);
    } else if (ea->mode == MODE_REAL) {
        base = (reg_read_u64(vs, x86_regs.sreg[ea->segment]) & 0xffff) << 4;
    }
    addr += base;
    /* Outside 64-bit mode linear addresses are 32 bits wide. */
    return ea->cs64 ? addr : addr & 0xffffffffull;
}

static uint64_t x86_current_task(struct vcpu_state *vs, unsigned int vcpu_index,
                                 unsigned cpl, bool use_cached, uint64_t seq,
                                 bool *valid)
{
    uint64_t base, task = 0;

    *valid = false;
    if (!cfg.current_addr) {
        return 0;
    }
    if (vs->known_task) {
        task = vs->known_task;
        vs->known_task = 0;
        base = vs->x86.kernel_gs_base;
    } else if (use_cached) {
        base = vs->x86.kernel_gs_base;
    } else {
        base = reg_read_u64(vs, cpl == 0 ? x86_regs.gs_base : x86_regs.k_gs_base);
        if (!(base >> 63)) {
            base = vs->x86.kernel_gs_base;      /* not a kernel address */
        }
    }
    if (!task && (!base || !mem_read(vs, base + cfg.current_addr, &task, sizeof(task)))) {
        return 0;
    }
    if (!(task >> 63)) {
        return 0;
    }
    vs->x86.kernel_gs_base = base;
    *valid = true;
    task_announce(vs, vcpu_index, task, seq);
    return task;
}

/*
 * The current task pointer alone, through the vCPU's per-cpu base: what a
 * boundary needs to tell whether the task that returns is the one that
 * entered. 0 before the first event has found the per-cpu base.
 */
static uint64_t x86_current_ptr(struct vcpu_state *vs)
{
    uint64_t task = 0;

    if (vs->in_l2) {
        /* The guest's own, from its switches (a boundary is never prev's save). */
        return vs->guest_next ? vs->guest_next : vs->guest_current;
    }
    if (!cfg.current_addr || !vs->x86.kernel_gs_base ||
        !mem_read(vs, vs->x86.kernel_gs_base + cfg.current_addr, &task, sizeof(task))) {
        return 0;
    }
    return task;
}

/* ---- x86 decoding (translation time) ---------------------------------- */

static const char *const x86_gpr_names[16] = {
    "rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi",
    "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15",
};

/* ---- x86 callbacks -------------------------------------------------- */

/*
 * SWAPGS: the first one after a return to user mode is the entry from it
 * (entry_SYSCALL_64 starts with it, error_entry and the compat entries run
 * it first thing). The kernel's own SWAPGS pairs (__rdgsbase_inactive,
 * asm_load_gs_index) run while in the kernel and are ignored.
 */
static void x86_swapgs_exec(unsigned int vcpu_index, void *udata)
{
    struct vcpu_state *vs = vcpu_get(vcpu_index);

    if (!vs->ub.in_user || (vs->in_l2 && !cfg.guest_tasks)) {
        return;                 /* the nested guest's own, untracked without its tasks */
    }
    vs->ub.in_user = false;
    vs->last_regs_ok = false;   /* user code ran since anything was read */
    vs->ub.entry_seen = true;
    vs->ub.entry_materialized = false;
    vs->ub.entry_pc = (uintptr_t)udata;
    vs->ub.entry_task = x86_current_ptr(vs);
    vs->ub.entry_icount = vs->inl.insns - vs->inl.insn_tail;
    vs->inl.entry_pending = 1;
}

/* SYSRET always returns to user mode, to RCX. */
static void x86_sysret_exec(unsigned int vcpu_index, void *udata G_GNUC_UNUSED)
{
    struct vcpu_state *vs = vcpu_get(vcpu_index);

    if (!vs->in_l2 || cfg.guest_tasks) {
        vcpu_user_return(vs, vcpu_index, reg_read_u64(vs, x86_regs.gpr[1]));
    }
}

/* IRET returns to user mode when the CS in its frame (RIP, CS, ...) is. */
static void x86_iret_exec(unsigned int vcpu_index, void *udata G_GNUC_UNUSED)
{
    struct vcpu_state *vs = vcpu_get(vcpu_index);
    uint64_t frame[2];

    if (vs->in_l2) {
        /* The guest's memory is not readable through its nested page tables. */
        vs->inl.user_block_due = cfg.guest_tasks;
        return;
    }
    if (!mem_read(vs, reg_read_u64(vs, x86_regs.gpr[4]), frame, sizeof(frame)) ||
        (frame[1] & 3) != 3) {
        return;
    }
    vcpu_user_return(vs, vcpu_index, frame[0]);
}

/*
 * The first instruction of a user-mode block after the nested guest's IRET:
 * the IRET returned to user mode (udata: where).
 */
static void x86_l2_user_block_exec(unsigned int vcpu_index, void *udata)
{
    struct vcpu_state *vs = vcpu_get(vcpu_index);

    vs->inl.user_block_due = 0;
    if (vs->in_l2 && !vs->ub.in_user) {
        vcpu_user_return(vs, vcpu_index, (uintptr_t)udata);
    }
}

/*
 * What a buffer held before the first save to it the trace sees, hashed
 * over the bytes the save will store (the requested x87/SSE/AVX
 * components, MXCSR with SSE or AVX, XMM8-15 in 64-bit mode only), so that
 * the save can be judged against it: the analysis would otherwise not know.
 */
static bool x86_prior_hash(struct vcpu_state *vs, uint64_t addr, uint32_t requested,
                           bool cs64, uint64_t *out)
{
    uint8_t bytes[832];
    size_t len = requested & 4 ? 832 : 416;
    uint64_t h = 0;

    if (!mem_read(vs, addr, bytes, len)) {
        return false;
    }
    for (uint32_t w = 0; w < len / 8; w++) {
        uint64_t v;
        bool stored = w == 3 ? (requested & 6) != 0     /* MXCSR: with SSE or AVX */
                             : (xsave_word_feature[w] & requested) != 0;
        if (!cs64 && w >= 288 / 8 && w < 416 / 8) {
            stored = false;             /* XMM8-15 exist in 64-bit mode only */
        }
        if (stored) {
            memcpy(&v, bytes + 8 * w, 8);
            h += xsave_word_hash(w, v, 0xff);
        }
    }
    *out = h;
    return true;
}

static void x86_fpu_op_exec(unsigned int vcpu_index, void *udata)
{
    const struct fpu_insn *fi = udata;
    struct vcpu_state *vs = vcpu_get(vcpu_index);
    const struct x86_modrm_addr *ea = fi->x86.prefer_alt ? &fi->x86.ea_alt : &fi->x86.ea;
    struct ftr_event ev;
    uint64_t rfbm, requested, regs_hash = 0;
    bool ok = false, derive;

    x86_finish_pending(vs, vcpu_index);
    rfbm = (reg_read_u64(vs, x86_regs.gpr[0]) & 0xffffffffull) |
           reg_read_u64(vs, x86_regs.gpr[2]) << 32;                 /* EDX:EAX */
    requested = fi->kind == FTR_KIND_FXSAVE || fi->kind == FTR_KIND_FXRSTOR
                ? 3 : rfbm & vs->xcr0;
    /*
     * In 64-bit mode, with x87 and SSE both moved, the register hashes come
     * from the bytes (64-bit mode: all 16 XMM registers are moved). A save
     * leaves the registers alone; before a restore they are the last ones
     * read or derived, if nothing could change them since.
     */
    derive = cfg.derive_regs && ea->cs64 && (requested & 3) == 3 &&
             (fi->kind == FTR_KIND_XSAVE || fi->kind == FTR_KIND_XSAVEOPT ||
              fi->kind == FTR_KIND_FXSAVE || fi->kind == FTR_KIND_XRSTOR ||
              /* TCG runs XSAVEC/S, XRSTORS as no-ops */
              fi->kind == FTR_KIND_FXRSTOR);
    if (!derive || (fi->is_restore && (!vs->last_regs_ok || vs->inl.regs_dirty))) {
        regs_hash = x86_regs_hash(vs, &ok);
    } else if (fi->is_restore) {
        regs_hash = vs->last_regs;
        ok = true;
    }
    if (derive && fi->is_save && vs->inl.entry_pending) {
        vcpu_materialize_entry(vs, vcpu_index, NULL, true);
    } else if (vs->inl.entry_pending) {
        if (!ok && !derive) {
            regs_hash = x86_regs_hash(vs, &ok);
        }
        vcpu_materialize_entry(vs, vcpu_index, ok ? &regs_hash : NULL, false);
    }
    event_begin(vs, vcpu_index, &ev, fi->kind, fi->vaddr, -1);
    ev.flags |= fi->flags | (uint32_t)ea->addr_size << FTR_FLAG_ADDR_SIZE_SHIFT;
    ev.addr = x86_effective_address(vs, fi, ea);
    ev.value = rfbm;
    if (ok) {
        ev.regs_hash = regs_hash;
        ev.flags |= FTR_FLAG_REGS_VALID;
    }
    if (fi->is_save && buffer_first_save(ev.addr) &&
        x86_prior_hash(vs, ev.addr, requested, ea->cs64, &ev.aux)) {
        ev.flags |= FTR_FLAG_PRIOR_VALID;
    }
    /* A restore changes the registers: they are known again right after it. */
    vs->last_regs = regs_hash;
    vs->last_regs_ok = ok && !fi->is_restore;
    if (derive && fi->is_save) {
        vs->last_regs_ok = false;               /* until x86_finish_pending() */
        vs->inl.regs_dirty = 0;                     /* the registers are what it stores */
    }
    /* The memory callbacks that follow fill in the content hash. */
    vs->pending_event = ev;
    vs->pending_insn = fi;
    vs->x86.pending_alt_addr = 0;
    if (fi->x86.has_alt) {
        const struct x86_modrm_addr *alt =
            fi->x86.prefer_alt ? &fi->x86.ea : &fi->x86.ea_alt;

        vs->x86.pending_alt_addr = x86_effective_address(vs, fi, alt);
    }
    vs->pending_checked = vs->pending_ignore = false;
    vs->x86.pending_xmm_hi = false;
    vs->pending_sealed = false;
    vs->pending_derive = derive;
    vs->pending_next_pc = fi->is_restore ? fi->vaddr + fi->len : 0;
    vs->pending = true;
}

/*
 * The first access places the area: it must fall inside it. If it does not
 * but falls inside the other reading's (compatibility mode, a 16-bit code
 * segment), that one was the CPU's; if neither, the address is flagged and
 * the bytes are not hashed against it.
 */
static bool x86_place_area(struct vcpu_state *vs, uint64_t vaddr)
{
    struct ftr_event *ev = &vs->pending_event;
    const struct fpu_insn *fi = vs->pending_insn;

    vs->pending_checked = true;
    if (vaddr - ev->addr < XSAVE_AREA_MAX) {
        return true;
    }
    if (fi->x86.has_alt && vaddr - vs->x86.pending_alt_addr < XSAVE_AREA_MAX) {
        const struct x86_modrm_addr *other =
            fi->x86.prefer_alt ? &fi->x86.ea : &fi->x86.ea_alt;
        ev->addr = vs->x86.pending_alt_addr;
        ev->flags = (ev->flags & ~(FTR_FLAG_ADDR_SIZE_MASK | FTR_FLAG_PRIOR_VALID)) |
                    (uint32_t)other->addr_size << FTR_FLAG_ADDR_SIZE_SHIFT;
        ev->aux = 0;
        vs->pending_derive = vs->pending_derive && other->cs64;
        /* Shared by every vCPU: a racy flip costs one more check, nothing else. */
        ((struct fpu_insn *)fi)->x86.prefer_alt = !fi->x86.prefer_alt;
        return true;
    }
    ev->flags |= FTR_FLAG_ADDR_UNVERIFIED;
    ev->flags &= ~FTR_FLAG_PRIOR_VALID;
    vs->pending_ignore = true;
    return false;
}

static void x86_fpu_mem(unsigned int vcpu_index, qemu_plugin_meminfo_t info,
                         uint64_t vaddr, void *udata G_GNUC_UNUSED)
{
    struct vcpu_state *vs = vcpu_get(vcpu_index);
    struct ftr_event *ev = &vs->pending_event;
    qemu_plugin_mem_value mv;
    unsigned size = 1u << qemu_plugin_mem_size_shift(info);
    uint64_t off, lo, hi = 0;

    if (!vs->pending || vs->pending_ignore ||
        (!vs->pending_checked && !x86_place_area(vs, vaddr))) {
        return;
    }
    mv = qemu_plugin_mem_get_value(info);
    switch (mv.type) {
    case QEMU_PLUGIN_MEM_VALUE_U8:
        lo = mv.data.u8;
        break;
    case QEMU_PLUGIN_MEM_VALUE_U16:
        lo = mv.data.u16;
        break;
    case QEMU_PLUGIN_MEM_VALUE_U32:
        lo = mv.data.u32;
        break;
    case QEMU_PLUGIN_MEM_VALUE_U64:
        lo = mv.data.u64;
        break;
    default:
        lo = mv.data.u128.low;
        hi = mv.data.u128.high;
        break;
    }
    off = vaddr - ev->addr;
    ev->flags |= FTR_FLAG_MEM_VALID;
    ev->mem_bytes += size;
    if (off < XSAVE_AREA_MAX) {         /* else not part of the area (wrapped) */
        xsave_image_put(vs->x86.image, off, size, lo, hi);
    }
}

/*
 * The instruction after a restore: the register file now holds what the
 * restore loaded, init components included: from the bytes it read
 * (regs=derive, 64-bit mode), else read register by register.
 */
static void x86_after_restore_exec(unsigned int vcpu_index, void *udata)
{
    struct vcpu_state *vs = vcpu_get(vcpu_index);
    struct ftr_event *ev = &vs->pending_event;
    bool ok;

    if (!vs->pending || vs->pending_next_pc != (uintptr_t)udata) {
        return;
    }
    x86_seal_pending(vs);
    x86_confirm_64bit(vs);
    if (vs->pending_derive) {
        ok = x86_regs_from_bytes(ev, true, &ev->regs_after_hash);
        vs->inl.regs_dirty = 0;
    } else {
        ev->regs_after_hash = x86_regs_hash(vs, &ok);
    }
    if (ok) {
        ev->flags |= FTR_FLAG_REGS_AFTER_VALID;
    }
    vs->last_regs = ev->regs_after_hash;
    vs->last_regs_ok = ok;
    vs->pending_next_pc = 0;
}

static void x86_xsetbv_exec(unsigned int vcpu_index, void *udata)
{
    const struct fpu_insn *fi = udata;
    struct vcpu_state *vs = vcpu_get(vcpu_index);
    struct ftr_event ev;

    x86_finish_pending(vs, vcpu_index);
    event_begin(vs, vcpu_index, &ev, fi->kind, fi->vaddr, -1);
    ev.index = reg_read_u64(vs, x86_regs.gpr[1]);
    ev.value = (reg_read_u64(vs, x86_regs.gpr[0]) & 0xffffffffull) |
               reg_read_u64(vs, x86_regs.gpr[2]) << 32;
    /* A nested guest's XSETBV is intercepted by its host: it changes nothing here. */
    if (ev.index == 0 && !vs->in_l2) {
        vs->xcr0 = ev.value;
    }
    vcpu_commit_event(vs, vcpu_index, &ev);
}

static void x86_wrmsr_exec(unsigned int vcpu_index, void *udata)
{
    const struct fpu_insn *fi = udata;
    struct vcpu_state *vs = vcpu_get(vcpu_index);
    uint32_t msr = reg_read_u64(vs, x86_regs.gpr[1]);
    struct ftr_event ev;
    uint8_t kind;

    if (msr == MSR_IA32_XFD) {
        kind = FTR_KIND_WRMSR_XFD;
    } else if (msr == MSR_IA32_XFD_ERR) {
        kind = FTR_KIND_WRMSR_XFD_ERR;
    } else {
        unsigned i = 0;

        while (i < x86_cfg.n_extra_msrs && x86_cfg.extra_msrs[i] != msr) {
            i++;
        }
        if (i == x86_cfg.n_extra_msrs) {
            return;
        }
        kind = FTR_KIND_WRMSR;
    }
    x86_finish_pending(vs, vcpu_index);
    event_begin(vs, vcpu_index, &ev, kind, fi->vaddr, -1);
    ev.index = msr;
    ev.value = (reg_read_u64(vs, x86_regs.gpr[0]) & 0xffffffffull) |
               reg_read_u64(vs, x86_regs.gpr[2]) << 32;
    vcpu_commit_event(vs, vcpu_index, &ev);
}

static void x86_vmrun_exec(unsigned int vcpu_index, void *udata)
{
    const struct fpu_insn *fi = udata;
    struct vcpu_state *vs = vcpu_get(vcpu_index);
    struct ftr_event ev;

    x86_finish_pending(vs, vcpu_index);
    event_begin(vs, vcpu_index, &ev, FTR_KIND_VM_ENTRY, fi->vaddr, 0);
    ev.addr = reg_read_u64(vs, x86_regs.gpr[0]);    /* VMCB physical address */
    /* SVM's VMRUN leaves the FP registers alone: these are the guest's. */
    event_read_regs(vs, &ev, false);
    vs->vmcb = ev.addr;
    vs->last_regs_ok = false;   /* the guest runs */
    vcpu_commit_event(vs, vcpu_index, &ev);
    vs->l1_task_at_entry = ev.task;
    vcpu_switch_level(vs, true);
}

/* arch_ops.guest_read: through the roots that x86_vmexit_exec() found for this exit. */
static bool x86_guest_read(struct vcpu_state *vs, uint64_t vaddr, void *out, size_t len)
{
    if (vs->in_l2 || !vs->x86.guest_mmu_ok) {
        return false;
    }
    return x86_guest_mem_read(vs, &vs->x86.guest_mmu, vaddr, out, len);
}

/* The instruction after a VMRUN runs when the nested guest has exited. */
static void x86_vmexit_exec(unsigned int vcpu_index, void *udata)
{
    struct vcpu_state *vs = vcpu_get(vcpu_index);
    struct ftr_event ev;

    if (!vs->in_l2) {
        return;
    }
    x86_finish_pending(vs, vcpu_index);
    /*
     * Still inside KVM's VMLOAD window, with the guest's GS base: the task
     * is the one that entered, which cannot have been switched out between.
     */
    event_begin(vs, vcpu_index, &ev, FTR_KIND_VM_EXIT, (uintptr_t)udata, 0);
    vcpu_switch_level(vs, false);
    /* Kernel SIMD since the last event ran in the guest's kernel: not L1's to judge. */
    ev.flags &= ~(FTR_FLAG_L2 | FTR_FLAG_KERNEL_SIMD);
    ev.simd_pc = 0;
    ev.guest_task = 0;
    ev.addr = vs->vmcb;
    /*
     * Why and where the guest left, from the VMCB that #VMEXIT wrote; and
     * the guest's roots, once for all the names this exit reads.
     */
    vs->x86.guest_mmu_ok = x86_guest_mmu_load(
        vs, &vs->x86.guest_mmu, x86_cfg.dmap, x86_cfg.dmap_var,
        reg_read_u64(vs, x86_regs.cr4) & X86_CR4_LA57);
    if (vs->x86.guest_mmu_ok &&
        !x86_vmcb_exit_read(vs, &vs->x86.guest_mmu, &ev.value, &ev.aux)) {
        ev.value = ev.aux = 0;
    }
    event_read_regs(vs, &ev, true);     /* the guest's registers as it left them */
    vcpu_commit_event(vs, vcpu_index, &ev);
    guest_tasks_name(vs, vcpu_index, true);
    vs->x86.guest_mmu_ok = false;
}

static bool x86_ea_equal(const struct x86_modrm_addr *a, const struct x86_modrm_addr *b)
{
    return a->base == b->base && a->index == b->index && a->scale == b->scale &&
           a->segment == b->segment && a->addr_size == b->addr_size &&
           a->mode == b->mode && a->cs64 == b->cs64 && a->disp == b->disp;
}

static enum x86_mode x86_translation_mode(void)
{
    if (translation_reg_u64(x86_regs.efer) & (1u << 10)) {          /* EFER.LMA */
        return MODE_LONG;
    }
    if (!(translation_reg_u64(x86_regs.cr0) & 1) ||                 /* CR0.PE */
        (translation_reg_u64(x86_regs.eflags) & (1u << 17))) {      /* EFLAGS.VM */
        return MODE_REAL;
    }
    return MODE_PROTECTED;
}

static void x86_instrument(struct qemu_plugin_insn *insn, uint64_t vaddr,
                            const uint8_t *bytes, size_t len)
{
    struct fpu_insn fi = { .vaddr = vaddr };
    struct x86_decoded first = { 0 }, other = { 0 };
    const struct fpu_insn *shared;
    enum x86_mode mode = x86_translation_mode();
    uint8_t key[1 + 16];

    /*
     * Long mode: 64-bit first, compatibility mode as the other reading;
     * protected mode: 32-bit segments first, 16-bit as the other.
     */
    if (!x86_decode(bytes, len, mode == MODE_LONG, mode == MODE_REAL, &first)) {
        return;
    }
    fi.kind = first.kind;
    fi.flags = first.flags;
    fi.x86.boundary = first.boundary;
    fi.x86.ea = first.ea;
    /* Which kinds save and which restore is the format's (FTR_KINDS). */
    fi.is_save = ftr_kind_role(fi.kind) == FTR_ROLE_SAVE;
    fi.is_restore = ftr_kind_role(fi.kind) == FTR_ROLE_RESTORE;
    fi.x86.ea.mode = mode;
    if (mode != MODE_REAL && (fi.is_save || fi.is_restore) &&
        x86_decode(bytes, len, false, mode == MODE_LONG ? false : true, &other) &&
        other.kind == fi.kind) {
        fi.x86.ea_alt = other.ea;
        fi.x86.ea_alt.mode = mode;
        fi.x86.has_alt = !x86_ea_equal(&fi.x86.ea, &fi.x86.ea_alt);
    }
    if (fi.x86.boundary) {
        if (mode != MODE_LONG) {
            return;             /* the boundaries watched are a 64-bit kernel's */
        }
        static void (*const boundary_cb[])(unsigned int, void *) = {
            [BOUNDARY_SWAPGS] = x86_swapgs_exec,
            [BOUNDARY_SYSRET] = x86_sysret_exec,
            [BOUNDARY_IRET] = x86_iret_exec,
        };
        if (cfg.boundaries) {
            insn_exec_cb(insn, boundary_cb[fi.x86.boundary], (void *)(uintptr_t)vaddr);
        }
        return;
    }
    fi.len = qemu_plugin_insn_size(insn);
    g_mutex_lock(&insn_lock);
    /* The same bytes at the same address mean something else in another mode. */
    key[0] = mode;
    memcpy(key + 1, bytes, MIN(len, sizeof(key) - 1));
    shared = insn_intern(&fi, key, 1 + MIN(len, sizeof(key) - 1));
    if (fi.kind == FTR_KIND_VM_ENTRY) {
        site_add(vaddr + fi.len, SITE_VM_EXIT);
    } else if (fi.is_restore) {
        site_add(vaddr + fi.len, SITE_AFTER_RESTORE);
    }
    g_mutex_unlock(&insn_lock);

    switch (fi.kind) {
    case FTR_KIND_XSETBV:
        insn_exec_cb(insn, x86_xsetbv_exec, (void *)shared);
        break;
    case FTR_KIND_WRMSR:
        insn_exec_cb(insn, x86_wrmsr_exec, (void *)shared);
        break;
    case FTR_KIND_VM_ENTRY:
        insn_exec_cb(insn, x86_vmrun_exec, (void *)shared);
        break;
    default:
        insn_exec_cb(insn, x86_fpu_op_exec, (void *)shared);
        /*
         * Only the stores of a save and the loads of a restore (XSAVE reads its header).
         */
        qemu_plugin_register_vcpu_mem_cb(
            insn, x86_fpu_mem, QEMU_PLUGIN_CB_NO_REGS,
            shared->is_save ? QEMU_PLUGIN_MEM_W : QEMU_PLUGIN_MEM_R, (void *)shared);
        break;
    }
}

static void x86_tb_trans(struct qemu_plugin_tb *tb)
{
    size_t n = qemu_plugin_tb_n_insns(tb);

    if (cfg.guest_tasks && cfg.boundaries && n && !(qemu_plugin_tb_vaddr(tb) >> 63)) {
        /* User code, L1's or L2's: tested inline, called only after L2's IRET. */
        insn_begin(0, n);
        insn_mark(qemu_plugin_tb_get_insn(tb, 0));
        qemu_plugin_register_vcpu_insn_exec_cond_cb(
            qemu_plugin_tb_get_insn(tb, 0), x86_l2_user_block_exec, QEMU_PLUGIN_CB_R_REGS,
            QEMU_PLUGIN_COND_EQ, inline_entry.user_block_due, 1,
            (void *)(uintptr_t)qemu_plugin_tb_vaddr(tb));
    }

    for (size_t i = 0; i < n; i++) {
        struct qemu_plugin_insn *insn = qemu_plugin_tb_get_insn(tb, i);
        uint64_t vaddr = qemu_plugin_insn_vaddr(insn);
        uint8_t bytes[16];
        size_t len = qemu_plugin_insn_data(insn, bytes, sizeof(bytes));
        uint32_t site = site_lookup(vaddr);

        insn_begin(i, n);
        /* Registered first: they must run before this instruction's own callback. */
        if (site & SITE_AFTER_RESTORE) {
            insn_exec_cb(insn, x86_after_restore_exec, (void *)(uintptr_t)vaddr);
        }
        if (site & SITE_VM_EXIT) {
            insn_exec_cb(insn, x86_vmexit_exec, (void *)(uintptr_t)vaddr);
        }
        if (cfg.n_probes) {
            const struct probe *pr = probe_lookup(vaddr);
            if (pr) {
                insn_exec_cb(insn, vcpu_probe_exec, (void *)pr);
            }
        }
        if (x86_is_fp_simd(bytes, len)) {
            simd_instrument(insn, vaddr, vaddr >> 63);
        }
        if (x86_maybe_traced(bytes, len, cfg.boundaries)) {
            x86_instrument(insn, vaddr, bytes, len);
        }
    }
}

static void x86_regs_resolve(void)
{
    static const struct {
        const char *name;
        struct qemu_plugin_register **handle;
    } named[] = {
        { "cs", &x86_regs.cs }, { "cr0", &x86_regs.cr0 }, { "cr4", &x86_regs.cr4 },
        { "efer", &x86_regs.efer },
        { "eflags", &x86_regs.eflags }, { "fs_base", &x86_regs.fs_base },
        { "gs_base", &x86_regs.gs_base }, { "k_gs_base", &x86_regs.k_gs_base },
        { "fctrl", &x86_regs.fctrl }, { "fstat", &x86_regs.fstat },
        { "mxcsr", &x86_regs.mxcsr },
    };
    g_autoptr(GArray) list = qemu_plugin_get_registers();

    for (guint i = 0; i < list->len; i++) {
        qemu_plugin_reg_descriptor *rd =
            &g_array_index(list, qemu_plugin_reg_descriptor, i);
        const char *nm = rd->name;
        int k;

        for (k = 0; k < 16; k++) {
            if (!g_ascii_strcasecmp(nm, x86_gpr_names[k])) {
                x86_regs.gpr[k] = rd->handle;
            }
        }
        for (k = 0; k < 6; k++) {
            static const char *const sreg_names[6] = {
                "es", "cs", "ss", "ds", "fs", "gs",
            };
            if (!g_ascii_strcasecmp(nm, sreg_names[k])) {
                x86_regs.sreg[k] = rd->handle;
            }
        }
        for (k = 0; k < (int)G_N_ELEMENTS(named); k++) {
            if (!g_ascii_strcasecmp(nm, named[k].name)) {
                *named[k].handle = rd->handle;
            }
        }
        if (sscanf(nm, "st%d", &k) == 1 && k >= 0 && k < 8 && strlen(nm) == 3) {
            x86_regs.st[k] = rd->handle;
        } else if (sscanf(nm, "xmm%d", &k) == 1 && k >= 0 && k < 16) {
            x86_regs.xmm[k] = rd->handle;
        }
    }
}

/*
 * The System V calling convention: rdi, rsi, rdx; at a function's first
 * instruction the CALL's return address is at [rsp].
 */
static void x86_probe_args(struct vcpu_state *vs, uint64_t args[4])
{
    args[0] = reg_read_u64(vs, x86_regs.gpr[7]);
    args[1] = reg_read_u64(vs, x86_regs.gpr[6]);
    args[2] = reg_read_u64(vs, x86_regs.gpr[2]);
    if (!mem_read(vs, reg_read_u64(vs, x86_regs.gpr[4]), &args[3], sizeof(args[3]))) {
        args[3] = 0;
    }
}

/*
 * The FP state in an FXSAVE/XSAVE-layout image at vaddr, hashed like the
 * register file into the probe event: its x87 and SSE shares kept apart,
 * since a restore of the image loads either from its init state where the
 * image's XSTATE_BV or the request leaves it out (docs/trace-format.md,
 * "Probes").
 */
static void x86_probe_image(struct vcpu_state *vs, uint64_t vaddr, size_t len,
                            struct ftr_event *ev)
{
    /* the legacy region, XSTATE_BV */
    uint8_t image[8 * XSAVE_WORD_XSTATE_BV + 8] = { 0 };
    uint64_t x87, mxcsr, sse, bv;

    if (!vaddr || !mem_read(vs, vaddr, image, MIN(len, sizeof(image)))) {
        return;
    }
    x87 = xsave_hash_run(0, image, 8) + xsave_hash_run(32, image + 32, 128);
    mxcsr = xsave_hash_run(24, image + 24, 8);
    sse = xsave_hash_run(160, image + 160, 256);
    memcpy(&bv, image + 8 * XSAVE_WORD_XSTATE_BV, sizeof(bv));
    ev->mem_hash = x87 + mxcsr + sse;
    ev->mem_legacy_hash = x87;
    ev->mem_ext_hash = sse;
    ev->mem_features = (uint32_t)bv;
    ev->mem_bytes = MIN(len, sizeof(image));
    ev->flags |= FTR_FLAG_MEM_VALID;
}

/*
 * The images that probed functions load into a task's or a guest's state,
 * read at their first instruction, before the kernel reads them:
 * - fpu__restore_sig(buf, ia32_frame) (6.1 and 5.10 arch/x86/kernel/fpu/
 *   signal.c): a 64-bit signal frame as the handler left it (a 32-bit one,
 *   an fsave header first, is not read);
 * - the regset writes xstateregs_set() and xfpregs_set() (target, regset,
 *   pos, count, kbuf, ubuf): what the tracer wrote, at kbuf or else ubuf,
 *   when it writes the whole legacy region from its start;
 * - fpu_copy_uabi_to_guest_fpstate(gfpu, buf, xcr0, vpkru) (v5.16 on,
 *   arch/x86/kernel/fpu/core.c): the struct kvm_xsave region KVM_SET_XSAVE
 *   copied into the kernel (kvm_vcpu_ioctl_x86_set_xsave()).
 */
static void x86_probe_state(struct vcpu_state *vs, uint32_t probe, const uint64_t args[4],
                            struct ftr_event *ev)
{
    const size_t whole = 8 * XSAVE_WORD_XSTATE_BV + 8;

    switch (probe) {
    case FTR_PROBE_SIGRETURN:
        if (!args[1]) {
            x86_probe_image(vs, args[0], whole, ev);
        }
        break;
    case FTR_PROBE_REGSET_SET: {
        /* count: xfpregs_set() takes the 512-byte FXSAVE region, no XSTATE_BV */
        uint64_t count = reg_read_u64(vs, x86_regs.gpr[1]);
        uint64_t kbuf = reg_read_u64(vs, x86_regs.gpr[8]);

        if (!args[2] && count >= 8 * XSAVE_WORD_XSTATE_BV) {
            x86_probe_image(vs, kbuf ? kbuf : reg_read_u64(vs, x86_regs.gpr[9]),
                            MIN(count, whole), ev);
        }
        break;
    }
    case FTR_PROBE_KVM_UABI_SET:
        x86_probe_image(vs, args[1], whole, ev);
        break;
    }
}

/* At install: the tables and hashes of the XSAVE layout. */
static void x86_init(void)
{
    xsave_tables_init();
    /* The register hashes of x87 and SSE in their init state (FCW 0x037f, all else 0). */
    {
        static const uint8_t fcw_fsw_init[4] = { 0x7f, 0x03, 0, 0 };
        static const uint8_t zeros[256];
        x87_init_hash = xsave_hash_run(0, fcw_fsw_init, 4);
        for (int r = 0; r < 8; r++) {
            x87_init_hash += xsave_hash_run(32 + 16 * r, zeros, 10);
        }
        sse_init_hash = xsave_hash_run(160, zeros, 256);
    }
}

static void x86_vcpu_init(struct vcpu_state *vs)
{
    vs->xcr0 = 1;                       /* XCR0's reset value: x87 only */
    vs->x86.image = g_new0(struct xsave_image, 1);
}

static void x86_vcpu_exit(struct vcpu_state *vs)
{
    g_free(vs->x86.image);
    vs->x86.image = NULL;
}

static enum arg_result x86_parse_arg(const char *key, const char *value, char **why)
{
    uint64_t n;

    if (!strcmp(key, "dmap") || !strcmp(key, "dmap_var")) {
        return parse_address(key, value, key[4] ? &x86_cfg.dmap_var : &x86_cfg.dmap, why);
    }
    if (!strcmp(key, "msr")) {
        if (!parse_u64(value, &n) || n > 0xffffffffull) {
            *why = g_strdup_printf("msr=%s: an MSR index is a 32-bit number", value);
            return ARG_BAD;
        }
        if (x86_cfg.n_extra_msrs == MAX_EXTRA_MSRS) {
            *why = g_strdup_printf("msr=%s: more than %d MSRs", value, MAX_EXTRA_MSRS);
            return ARG_BAD;
        }
        x86_cfg.extra_msrs[x86_cfg.n_extra_msrs++] = n;
        return ARG_OK;
    }
    return ARG_UNKNOWN;
}

const struct arch_ops x86_ops = {
    .target = "x86_64",
    .ftr_arch = FTR_ARCH_X86_64,
    .user_pl = 3,
    .privilege = x86_cpl,
    .current_task = x86_current_task,
    .current_ptr = x86_current_ptr,
    .guest_read = x86_guest_read,
    .regs_hash = x86_regs_hash,
    .finish_pending = x86_finish_pending,
    .probe_args = x86_probe_args,
    .probe_state = x86_probe_state,
    .tb_trans = x86_tb_trans,
    .regs_resolve = x86_regs_resolve,
    .parse_arg = x86_parse_arg,
    .init = x86_init,
    .vcpu_init = x86_vcpu_init,
    .vcpu_exit = x86_vcpu_exit,
};
