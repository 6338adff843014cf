/*
 * x86.h: the x86_64 side's types, shared by its files: x86.c (struct
 * arch_ops x86_ops: the callbacks and the register file), x86-decode.c
 * (instruction bytes to what they do), x86-mmu.c (the nested guest's
 * memory through its page tables) and x86-xsave.c (the content hash of
 * XSAVE images). fputrace.h includes it for the per-vCPU and
 * per-instruction unions only; the core uses none of it.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#ifndef FPUTRACE_X86_H
#define FPUTRACE_X86_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct vcpu_state;

#define X86_CR4_LA57            (1ull << 12)    /* 5-level paging */

/* ---- decoding (x86-decode.c) ------------------------------------------ */

/* Segment registers in the encoding's order (ModRM sreg, prefixes). */
enum x86_sreg {
    SREG_ES, SREG_CS, SREG_SS, SREG_DS, SREG_FS, SREG_GS, SREG_NONE = 7
};

/*
 * The CPU mode an instruction was translated in, from CR0.PE, EFLAGS.VM and
 * EFER.LMA read at translation time: what its bytes mean depends on it.
 * CS.L and CS.D (64-bit against compatibility mode, 32- against 16-bit
 * segments) are not readable, so a second decoding for the other one is
 * kept and the instruction's memory accesses decide (x86_fpu_mem()).
 */
enum x86_mode {
    MODE_LONG,          /* EFER.LMA: 64-bit, or compatibility mode */
    MODE_PROTECTED,     /* 32-bit (or 16-bit) protected mode */
    MODE_REAL,          /* real or virtual-8086 mode: base = selector << 4 */
};

/* Instructions at the user/kernel boundary (not events by themselves). */
enum x86_boundary {
    BOUNDARY_NONE,
    BOUNDARY_SWAPGS,
    BOUNDARY_SYSRET,
    BOUNDARY_IRET,
};

/* How an operand's effective address is formed: [seg + base + index*scale + disp]. */
struct x86_modrm_addr {
    int8_t base;        /* GPR number, -1 none, -2 RIP-relative */
    int8_t index;       /* GPR number, -1 none */
    uint8_t scale;
    uint8_t segment;    /* enum x86_sreg: the override, or the default (DS/SS) */
    uint8_t addr_size;  /* enum ftr_addr_size */
    uint8_t mode;       /* enum x86_mode */
    bool cs64;          /* 64-bit mode (not compatibility mode) */
    int32_t disp;
};

/* What x86_decode() makes of an instruction's bytes. */
struct x86_decoded {
    uint8_t kind;       /* enum ftr_kind; 0 for a boundary instruction */
    uint8_t boundary;   /* enum x86_boundary */
    uint8_t flags;      /* FTR_FLAG_FORM64 */
    struct x86_modrm_addr ea;
};

bool x86_decode(const uint8_t *p, size_t n, bool cs64, bool default16,
                struct x86_decoded *d);
bool x86_is_fp_simd(const uint8_t *p, size_t n);
bool x86_maybe_traced(const uint8_t *p, size_t n, bool boundaries);

/* What translation learnt about an instruction (struct fpu_insn's x86 part). */
struct x86_insn {
    uint8_t boundary;   /* enum x86_boundary; fpu_insn.kind is 0 then */
    bool has_alt;       /* ea_alt: the other CS.L/CS.D reading */
    bool prefer_alt;    /* the accesses chose ea_alt last time (a benign race) */
    struct x86_modrm_addr ea, ea_alt;
};

/* ---- the nested guest's memory (x86-mmu.c) ---------------------------- */

/* Where the nested guest's memory is, as a VM exit left it. */
struct x86_guest_mmu {
    uint64_t dmap;      /* L1's direct map */
    bool npt;           /* nested paging: the guest's tables are guest-physical */
    uint64_t ncr3;
    unsigned nlevels;   /* 5 when L1 runs with LA57: NPT follows the host's mode */
    uint64_t cr3;       /* without NPT: KVM's shadow tables, L1-physical */
    unsigned levels;
};

bool x86_guest_mmu_load(struct vcpu_state *vs, struct x86_guest_mmu *m,
                        uint64_t dmap, uint64_t dmap_var, bool host_la57);
bool x86_vmcb_exit_read(struct vcpu_state *vs, const struct x86_guest_mmu *m,
                        uint64_t *exit_code, uint64_t *rip);
bool x86_guest_mem_read(struct vcpu_state *vs, const struct x86_guest_mmu *m,
                        uint64_t vaddr, void *out, size_t len);

/* ---- per-vCPU state (x86.c) ------------------------------------------- */

struct x86_vcpu {
    uint64_t kernel_gs_base;    /* last per-cpu base seen: x86_current_task() */
    uint64_t pending_alt_addr;  /* the other reading's address (has_alt) */
    bool pending_xmm_hi;        /* XMM8-15 moved: it ran in 64-bit mode */
    struct xsave_image *image;  /* the bytes the pending save/restore moved */
    struct x86_guest_mmu guest_mmu;     /* for the reads after a VM exit */
    bool guest_mmu_ok;
};

/* ---- XSAVE images (x86-xsave.c) --------------------------------------- */

/* The largest XSAVE area (AVX-512 and PKRU, standard format) fits in this. */
#define XSAVE_AREA_MAX          0x3000
#define XSAVE_WORDS             (XSAVE_AREA_MAX / 8)
#define XSAVE_WORD_XSTATE_BV    (512 / 8)       /* the header's first word */
#define XSAVE_WORD_LEGACY_END   (512 / 8)       /* x87 and SSE: mem_legacy_hash */
#define XSAVE_WORD_EXT          (832 / 8)       /* from here on: mem_ext_hash */

/*
 * The bytes a save stored or a restore loaded, as the memory callbacks
 * deliver them, hashed once the instruction is done (x86_seal_pending()).
 */
struct xsave_image {
    uint64_t word[XSAVE_WORDS];
    uint8_t present[XSAVE_WORDS];
    uint16_t touched[XSAVE_WORDS];      /* the words with a present byte */
    uint32_t n_touched;
};

/* Per word: the XSAVE components its bytes belong to. */
extern uint16_t xsave_word_feature[XSAVE_WORDS];

void xsave_tables_init(void);
uint64_t xsave_word_hash(uint32_t w, uint64_t value, uint32_t present);
uint64_t xsave_hash_run(uint32_t off, const uint8_t *bytes, size_t len);
void xsave_image_put(struct xsave_image *im, uint64_t off, unsigned size,
                     uint64_t lo, uint64_t hi);

#endif /* FPUTRACE_X86_H */
