/*
 * x86.c: the x86_64 side of fputrace (struct arch_ops x86_ops).
 *
 * Translation: instructions are recognised from their bytes (XSAVE*,
 * XRSTOR*, FXSAVE/FXRSTOR, XSETBV, WRMSR, VMRUN, the user/kernel boundary
 * instructions, kernel SIMD use) and only those get callbacks. Execution:
 * the callbacks fill an event, the memory callbacks of a save or restore
 * place its area and collect the bytes it moved (xsave-hash.c), and the
 * register file is read through the register handles resolved once by
 * name.
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
    *out = ev->mem_legacy_hash + (bv & 1 ? 0 : x87_init_hash) + (bv & 2 ? 0 : sse_init_hash);
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
    if (((ev->flags & FTR_FLAG_ADDR_SIZE_MASK) >> FTR_FLAG_ADDR_SIZE_SHIFT) == FTR_ADDR_64) {
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
    if (vs->pending_insn->is_save && !vs->pending_derive && !(ev->flags & FTR_FLAG_REGS_VALID) &&
        !vs->regs_dirty) {
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
        } else if (!vs->regs_dirty) {
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
        vs->last_regs_ok = (ev->flags & FTR_FLAG_REGS_VALID) != 0 && !vs->regs_dirty;
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
    vs->regs_dirty = 0;
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
        base = reg_read_u64(vs, ea->segment == SREG_FS ? x86_regs.fs_base : x86_regs.gs_base);
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

/*
 * Decode the memory operand of a ModRM byte at p, for an address size of
 * 64 (64-bit mode: RIP-relative for mod 00 r/m 101), 32 (disp32 there) or
 * 16 bits (the 8086 table: [BX+SI], ..., disp16 for mod 00 r/m 110).
 * Returns false for a register operand (mod == 3) or bytes that run out.
 */
static bool x86_decode_modrm(const uint8_t *p, size_t n, uint8_t rex, bool cs64,
                             uint8_t addr_size, uint8_t seg_override,
                             struct x86_modrm_addr *ea, uint8_t *reg_field)
{
    static const int8_t base16[8] = { 3, 3, 5, 5, 6, 7, 5, 3 };     /* BX BX BP BP SI DI BP BX */
    static const int8_t index16[8] = { 6, 7, 6, 7, -1, -1, -1, -1 }; /* SI DI SI DI */
    uint8_t modrm, mod, rm;
    size_t i = 1;
    bool ss_default = false;

    if (n < 1) {
        return false;
    }
    modrm = p[0];
    mod = modrm >> 6;
    rm = modrm & 7;
    *reg_field = (modrm >> 3) & 7;
    if (mod == 3) {
        return false;
    }
    ea->base = -1;
    ea->index = -1;
    ea->scale = 0;
    ea->addr_size = addr_size;
    ea->cs64 = cs64;
    ea->disp = 0;
    if (addr_size == FTR_ADDR_16) {
        if (mod == 0 && rm == 6) {
            mod = 2;                    /* disp16, no base */
        } else {
            ea->base = base16[rm];
            ea->index = index16[rm];
            ss_default = ea->base == 5;
        }
        if (mod == 2) {
            if (n < i + 2) {
                return false;
            }
            ea->disp = (int16_t)(p[i] | p[i + 1] << 8);
            mod = 0;
        }
    } else if (rm == 4) {
        uint8_t sib, base, index;
        if (n < 2) {
            return false;
        }
        sib = p[1];
        i = 2;
        ea->scale = sib >> 6;
        index = ((sib >> 3) & 7) | ((rex & 0x2) ? 8 : 0);
        base = (sib & 7) | ((rex & 0x1) ? 8 : 0);
        if (index != 4) {
            ea->index = index;
        }
        if ((sib & 7) == 5 && mod == 0) {
            mod = 2;                    /* disp32, no base */
        } else {
            ea->base = base;
        }
    } else if (rm == 5 && mod == 0) {
        /* RIP-relative only in 64-bit mode (also with 0x67); an absolute disp32 elsewhere. */
        ea->base = cs64 ? -2 : -1;
        mod = 2;
    } else {
        ea->base = rm | ((rex & 0x1) ? 8 : 0);
    }
    if (addr_size != FTR_ADDR_16 && (ea->base & 7) == 4 && ea->base >= 0) {
        ss_default = true;              /* [RSP+...] */
    } else if (addr_size != FTR_ADDR_16 && ea->base == 5 && mod != 0) {
        ss_default = true;              /* [RBP+disp] */
    }
    if (mod == 1) {
        if (n < i + 1) {
            return false;
        }
        ea->disp = (int8_t)p[i];
    } else if (mod == 2) {
        if (n < i + 4) {
            return false;
        }
        memcpy(&ea->disp, p + i, 4);
    }
    ea->segment = seg_override != SREG_NONE ? seg_override : ss_default ? SREG_SS : SREG_DS;
    return true;
}

/*
 * Recognise the instructions we trace. 0F AE and 0F C7 encode several
 * unrelated instructions; only the memory forms without a mandatory
 * 66/F2/F3 prefix are FPU state operations (mod == 3 is LFENCE, MFENCE,
 * SFENCE, RDRAND...; F3 0F AE is RDFSBASE & co; 66 0F AE /6 is CLWB).
 */
static bool x86_decode(const uint8_t *p, size_t n, bool cs64, bool default16,
                       struct fpu_insn *fi, struct x86_modrm_addr *ea)
{
    size_t i = 0;
    uint8_t rex = 0, segment = SREG_NONE, reg, addr_size;
    bool mandatory_prefix = false, addr_prefix = false;

    for (; i < n; i++) {
        uint8_t b = p[i];
        if (b == 0x66 || b == 0xf2 || b == 0xf3) {
            mandatory_prefix = true;
        } else if (b == 0x67) {
            addr_prefix = true;
        } else if (b == 0x26 || b == 0x2e || b == 0x36 || b == 0x3e) {
            segment = (b >> 3) & 3;             /* ES CS SS DS */
        } else if (b == 0x64 || b == 0x65) {
            segment = b - 0x64 + SREG_FS;
        } else if (b == 0xf0) {
            /* lock */
        } else {
            break;
        }
    }
    /* Outside 64-bit mode 40-4F are INC/DEC, instructions of their own. */
    if (cs64 && i < n && (p[i] & 0xf0) == 0x40) {
        rex = p[i++];
    }
    if (cs64) {
        addr_size = addr_prefix ? FTR_ADDR_32 : FTR_ADDR_64;
    } else {
        addr_size = addr_prefix == default16 ? FTR_ADDR_32 : FTR_ADDR_16;
    }
    if (i < n && p[i] == 0xcf) {                /* IRET */
        fi->boundary = BOUNDARY_IRET;
        return true;
    }
    if (i + 1 >= n || p[i] != 0x0f) {
        return false;
    }
    i++;
    if (rex & 0x8) {
        fi->flags |= FTR_FLAG_FORM64;
    }

    switch (p[i]) {
    case 0x07:                                  /* SYSRET */
        fi->boundary = BOUNDARY_SYSRET;
        return true;
    case 0x30:                                  /* WRMSR */
        fi->kind = FTR_KIND_WRMSR;
        return true;
    case 0x01:
        if (i + 1 >= n) {
            return false;
        }
        if (p[i + 1] == 0xd1 && !mandatory_prefix) {
            fi->kind = FTR_KIND_XSETBV;
            return true;
        }
        if (p[i + 1] == 0xd8) {
            fi->kind = FTR_KIND_VM_ENTRY;       /* VMRUN */
            return true;
        }
        if (p[i + 1] == 0xf8) {
            fi->boundary = BOUNDARY_SWAPGS;
            return true;
        }
        return false;
    case 0xae:
        if (mandatory_prefix ||
            !x86_decode_modrm(p + i + 1, n - i - 1, rex, cs64, addr_size, segment,
                              ea, &reg)) {
            return false;
        }
        switch (reg) {
        case 0: fi->kind = FTR_KIND_FXSAVE; return true;
        case 1: fi->kind = FTR_KIND_FXRSTOR; return true;
        case 4: fi->kind = FTR_KIND_XSAVE; return true;
        case 5: fi->kind = FTR_KIND_XRSTOR; return true;
        case 6: fi->kind = FTR_KIND_XSAVEOPT; return true;
        default: return false;                  /* LDMXCSR, STMXCSR, CLFLUSH */
        }
    case 0xc7:
        if (mandatory_prefix ||
            !x86_decode_modrm(p + i + 1, n - i - 1, rex, cs64, addr_size, segment,
                              ea, &reg)) {
            return false;
        }
        switch (reg) {
        case 3: fi->kind = FTR_KIND_XRSTORS; return true;
        case 4: fi->kind = FTR_KIND_XSAVEC; return true;
        case 5: fi->kind = FTR_KIND_XSAVES; return true;
        default: return false;                  /* CMPXCHG8B/16B, VMPTRLD... */
        }
    default:
        return false;
    }
}

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
    vs->ub.entry_icount = vs->insns - vs->insn_tail;
    vs->ub.entry_pending = 1;
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
        vs->l2_iret_pending = cfg.guest_tasks;
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

    vs->l2_iret_pending = 0;
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
    const struct x86_modrm_addr *ea = fi->prefer_alt ? &fi->ea_alt : &fi->ea;
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
              fi->kind == FTR_KIND_FXRSTOR);        /* TCG runs XSAVEC/S, XRSTORS as no-ops */
    if (!derive || (fi->is_restore && (!vs->last_regs_ok || vs->regs_dirty))) {
        regs_hash = x86_regs_hash(vs, &ok);
    } else if (fi->is_restore) {
        regs_hash = vs->last_regs;
        ok = true;
    }
    if (derive && fi->is_save && vs->ub.entry_pending) {
        vcpu_materialize_entry(vs, vcpu_index, NULL, true);
    } else if (vs->ub.entry_pending) {
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
        vs->regs_dirty = 0;                     /* the registers are what it stores */
    }
    /* The memory callbacks that follow fill in the content hash. */
    vs->pending_event = ev;
    vs->pending_insn = fi;
    vs->x86.pending_alt_addr = fi->has_alt
                           ? x86_effective_address(vs, fi, fi->prefer_alt ? &fi->ea : &fi->ea_alt)
                           : 0;
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
    if (fi->has_alt && vaddr - vs->x86.pending_alt_addr < XSAVE_AREA_MAX) {
        const struct x86_modrm_addr *other = fi->prefer_alt ? &fi->ea : &fi->ea_alt;
        ev->addr = vs->x86.pending_alt_addr;
        ev->flags = (ev->flags & ~(FTR_FLAG_ADDR_SIZE_MASK | FTR_FLAG_PRIOR_VALID)) |
                    (uint32_t)other->addr_size << FTR_FLAG_ADDR_SIZE_SHIFT;
        ev->aux = 0;
        vs->pending_derive = vs->pending_derive && other->cs64;
        /* Shared by every vCPU: a racy flip costs one more check, nothing else. */
        ((struct fpu_insn *)fi)->prefer_alt = !fi->prefer_alt;
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
    case QEMU_PLUGIN_MEM_VALUE_U8: lo = mv.data.u8; break;
    case QEMU_PLUGIN_MEM_VALUE_U16: lo = mv.data.u16; break;
    case QEMU_PLUGIN_MEM_VALUE_U32: lo = mv.data.u32; break;
    case QEMU_PLUGIN_MEM_VALUE_U64: lo = mv.data.u64; break;
    default: lo = mv.data.u128.low; hi = mv.data.u128.high; break;
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
        vs->regs_dirty = 0;
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
        unsigned i;
        for (i = 0; i < cfg.n_extra_msrs && cfg.extra_msrs[i] != msr; i++) {
        }
        if (i == cfg.n_extra_msrs) {
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

/*
 * The nested guest's memory, read in L1 after a VM exit. QEMU 10.0's
 * plugin reads translate without the nested page tables (mem_read()), so
 * the walk is done here: the guest's page tables map its virtual address
 * to a guest-physical one, KVM's nested page tables (NPT) map that and
 * every table the walk reads to L1-physical, and L1's direct map makes an
 * L1-physical address readable. The VMCB, where the CPU stored the guest's
 * CR3 and CR4 at the exit, gives the roots (AMD APM vol. 2, appendix B;
 * Linux's struct vmcb_control_area and vmcb_save_area).
 */
#define VMCB_EXITCODE           0x070
#define VMCB_NESTED_CTL         0x090   /* bit 0: nested paging enabled */
#define VMCB_NESTED_CR3         0x0b0
#define VMCB_SAVE_CR4           0x548   /* the save area (0x400) + 0x148 */
#define VMCB_SAVE_CR3           0x550
#define VMCB_SAVE_RIP           0x578
#define X86_CR4_LA57            (1ull << 12)
#define X86_PTE_PRESENT         (1ull << 0)
#define X86_PTE_LARGE           (1ull << 7)     /* a 1 GiB or 2 MiB page (PS) */
#define X86_PTE_ADDR            0x000ffffffffff000ull
#define X86_PAGE_SIZE           4096u

static bool x86_l1_phys_read(struct vcpu_state *vs, const struct x86_guest_mmu *m, uint64_t pa,
                             void *out, size_t len)
{
    return mem_read(vs, m->dmap + pa, out, len);
}

static bool x86_npt_translate(struct vcpu_state *vs, const struct x86_guest_mmu *m,
                              uint64_t gpa, uint64_t *pa);

/*
 * A 4- or 5-level walk from root of va; guest_tables: the tables are at
 * guest-physical addresses, each translated through the NPT first.
 */
static bool x86_pt_walk(struct vcpu_state *vs, const struct x86_guest_mmu *m, bool guest_tables,
                        uint64_t root, unsigned levels, uint64_t va, uint64_t *out)
{
    uint64_t table = root & X86_PTE_ADDR;

    for (unsigned level = levels; level >= 1; level--) {
        unsigned shift = 12 + 9 * (level - 1);
        uint64_t slot = table + ((va >> shift) & 511) * 8, where = slot, entry;

        if ((guest_tables && !x86_npt_translate(vs, m, slot, &where)) ||
            !x86_l1_phys_read(vs, m, where, &entry, sizeof(entry)) ||
            !(entry & X86_PTE_PRESENT)) {
            return false;
        }
        if (level == 1 || (level <= 3 && (entry & X86_PTE_LARGE))) {
            uint64_t offset_mask = (1ull << shift) - 1;
            *out = (entry & X86_PTE_ADDR & ~offset_mask) | (va & offset_mask);
            return true;
        }
        table = entry & X86_PTE_ADDR;
    }
    return false;
}

static bool x86_npt_translate(struct vcpu_state *vs, const struct x86_guest_mmu *m,
                              uint64_t gpa, uint64_t *pa)
{
    if (!m->npt) {
        *pa = gpa;
        return true;
    }
    return x86_pt_walk(vs, m, false, m->ncr3, m->nlevels, gpa, pa);
}

/* The roots of the last VM entry's guest, as the exit left them. */
static bool x86_guest_mmu(struct vcpu_state *vs, struct x86_guest_mmu *m)
{
    uint64_t vmcb = vs->vmcb, nested_ctl, cr4;

    m->dmap = cfg.dmap;
    if (cfg.dmap_var && !mem_read(vs, cfg.dmap_var, &m->dmap, sizeof(m->dmap))) {
        return false;
    }
    if (!m->dmap || !vmcb ||
        !x86_l1_phys_read(vs, m, vmcb + VMCB_NESTED_CTL, &nested_ctl, sizeof(nested_ctl)) ||
        !x86_l1_phys_read(vs, m, vmcb + VMCB_NESTED_CR3, &m->ncr3, sizeof(m->ncr3)) ||
        !x86_l1_phys_read(vs, m, vmcb + VMCB_SAVE_CR4, &cr4, sizeof(cr4)) ||
        !x86_l1_phys_read(vs, m, vmcb + VMCB_SAVE_CR3, &m->cr3, sizeof(m->cr3))) {
        return false;
    }
    m->npt = nested_ctl & 1;
    m->levels = cr4 & X86_CR4_LA57 ? 5 : 4;
    m->nlevels = reg_read_u64(vs, x86_regs.cr4) & X86_CR4_LA57 ? 5 : 4;
    return true;
}

/* Through the roots that x86_vmexit_exec() found for this exit's reads. */
static bool x86_guest_read(struct vcpu_state *vs, uint64_t vaddr, void *out, size_t len)
{
    const struct x86_guest_mmu *m = &vs->x86.guest_mmu;
    uint8_t *dst = out;

    if (vs->in_l2 || !vs->x86.guest_mmu_ok) {
        return false;
    }
    while (len) {
        size_t n = MIN(len, X86_PAGE_SIZE - (vaddr & (X86_PAGE_SIZE - 1)));
        uint64_t gpa, pa;

        if (!x86_pt_walk(vs, m, m->npt, m->cr3, m->levels, vaddr, &gpa) ||
            !x86_npt_translate(vs, m, gpa, &pa) ||
            !x86_l1_phys_read(vs, m, pa, dst, n)) {
            return false;
        }
        vaddr += n;
        dst += n;
        len -= n;
    }
    return true;
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
    vs->x86.guest_mmu_ok = x86_guest_mmu(vs, &vs->x86.guest_mmu);
    if (vs->x86.guest_mmu_ok) {
        const struct x86_guest_mmu *m = &vs->x86.guest_mmu;

        if (!x86_l1_phys_read(vs, m, vs->vmcb + VMCB_EXITCODE, &ev.value, sizeof(ev.value)) ||
            !x86_l1_phys_read(vs, m, vs->vmcb + VMCB_SAVE_RIP, &ev.aux, sizeof(ev.aux))) {
            ev.value = ev.aux = 0;
        }
    }
    event_read_regs(vs, &ev, true);     /* the guest's registers as it left them */
    vcpu_commit_event(vs, vcpu_index, &ev);
    guest_tasks_name(vs, vcpu_index, true);
    vs->x86.guest_mmu_ok = false;
}

/*
 * Whether an instruction reads or writes FP/SIMD registers: x87 (D8-DF),
 * VEX/EVEX (C4, C5, 62 in 64-bit mode), and the 0F-map SSE ranges, less
 * the GPR instructions that share them (0F 38 F0-FF: MOVBE, CRC32, ADX;
 * 0F C3 MOVNTI). Kernel code uses these only between kernel_fpu_begin()
 * and kernel_fpu_end() (the kernel is built without SIMD code generation),
 * and in the FPU code itself (FNINIT, LDMXCSR).
 */
static bool x86_is_fp_simd(const uint8_t *p, size_t n)
{
    size_t i = 0;
    uint8_t b, op;

    while (i < n && (p[i] == 0x66 || p[i] == 0x67 || p[i] == 0xf2 || p[i] == 0xf3 ||
                     p[i] == 0xf0 || p[i] == 0x2e || p[i] == 0x36 || p[i] == 0x3e ||
                     p[i] == 0x26 || p[i] == 0x64 || p[i] == 0x65)) {
        i++;
    }
    if (i < n && (p[i] & 0xf0) == 0x40) {
        i++;
    }
    if (i >= n) {
        return false;
    }
    b = p[i];
    if ((b >= 0xd8 && b <= 0xdf) || b == 0xc4 || b == 0xc5 || b == 0x62) {
        return true;
    }
    if (b != 0x0f || i + 1 >= n) {
        return false;
    }
    op = p[i + 1];
    if (op == 0x38) {
        return i + 2 < n && p[i + 2] < 0xf0;
    }
    if (op == 0x3a) {
        return true;
    }
    if ((op >= 0x10 && op <= 0x17) || (op >= 0x28 && op <= 0x2f) ||
        (op >= 0x50 && op <= 0x7f) || op == 0xc2 || (op >= 0xc4 && op <= 0xc6) ||
        op >= 0xd0) {
        return true;
    }
    if (op == 0xae && i + 2 < n) {                      /* LDMXCSR, STMXCSR */
        uint8_t modrm = p[i + 2], reg = (modrm >> 3) & 7;
        return (modrm >> 6) != 3 && (reg == 2 || reg == 3);
    }
    return false;
}

/*
 * Cheap filter before decoding: every traced instruction has 0F 01, 0F 07,
 * 0F 30, 0F AE or 0F C7 after at most four legacy prefixes and a REX byte,
 * or is an IRET (CF, REX.W CF). Almost every instruction of a kernel fails
 * this, without taking a lock.
 */
static bool x86_maybe_traced(const uint8_t *p, size_t n)
{
    if (n > 0 && (p[0] == 0xcf || (n > 1 && p[0] == 0x48 && p[1] == 0xcf))) {
        return cfg.boundaries;
    }
    for (size_t i = 0; i + 1 < n && i < 6; i++) {
        if (p[i] == 0x0f) {
            uint8_t op = p[i + 1];
            return op == 0x01 || op == 0x30 || op == 0xae || op == 0xc7 ||
                   (op == 0x07 && cfg.boundaries);
        }
    }
    return false;
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
    struct fpu_insn fi = { .vaddr = vaddr }, other = { .vaddr = vaddr };
    const struct fpu_insn *shared;
    enum x86_mode mode = x86_translation_mode();

    /*
     * Long mode: 64-bit first, compatibility mode as the other reading;
     * protected mode: 32-bit segments first, 16-bit as the other.
     */
    fi.ea.mode = fi.ea_alt.mode = mode;
    if (!x86_decode(bytes, len, mode == MODE_LONG, mode == MODE_REAL, &fi, &fi.ea)) {
        return;
    }
    /* Which kinds save and which restore is the format's (FTR_KINDS). */
    fi.is_save = ftr_kind_role(fi.kind) == FTR_ROLE_SAVE;
    fi.is_restore = ftr_kind_role(fi.kind) == FTR_ROLE_RESTORE;
    if (mode != MODE_REAL && (fi.is_save || fi.is_restore)) {
        fi.has_alt = x86_decode(bytes, len, false, mode == MODE_LONG ? false : true,
                                &other, &fi.ea_alt) &&
                     other.kind == fi.kind && memcmp(&fi.ea, &fi.ea_alt, sizeof(fi.ea));
    }
    if (fi.boundary) {
        if (mode != MODE_LONG) {
            return;             /* the boundaries watched are a 64-bit kernel's */
        }
        static void (*const boundary_cb[])(unsigned int, void *) = {
            [BOUNDARY_SWAPGS] = x86_swapgs_exec,
            [BOUNDARY_SYSRET] = x86_sysret_exec,
            [BOUNDARY_IRET] = x86_iret_exec,
        };
        if (cfg.boundaries) {
            insn_exec_cb(insn, boundary_cb[fi.boundary], (void *)(uintptr_t)vaddr);
        }
        return;
    }
    fi.len = qemu_plugin_insn_size(insn);
    g_mutex_lock(&insn_lock);
    shared = insn_intern(&fi, bytes, len, mode);
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
        /* Only the stores of a save and the loads of a restore (XSAVE reads its header). */
        qemu_plugin_register_vcpu_mem_cb(insn, x86_fpu_mem, QEMU_PLUGIN_CB_NO_REGS,
                                         shared->is_save ? QEMU_PLUGIN_MEM_W : QEMU_PLUGIN_MEM_R,
                                         (void *)shared);
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
            QEMU_PLUGIN_COND_EQ, l2_iret_entry, 1, (void *)(uintptr_t)qemu_plugin_tb_vaddr(tb));
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
        if (x86_maybe_traced(bytes, len)) {
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
        { "fctrl", &x86_regs.fctrl }, { "fstat", &x86_regs.fstat }, { "mxcsr", &x86_regs.mxcsr },
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
            static const char *const sreg_names[6] = { "es", "cs", "ss", "ds", "fs", "gs" };
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
    uint8_t image[8 * XSAVE_WORD_XSTATE_BV + 8] = { 0 };  /* the legacy region, XSTATE_BV */
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

const struct arch_ops x86_ops = {
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
    .init = x86_init,
    .vcpu_init = x86_vcpu_init,
};
