/*
 * fputrace.h: what the plugin's files share (fputrace.c, the core and its
 * callbacks; trace.c, the trace writer; xsave-hash.c, the content hash of
 * XSAVE images; x86.c and arm64.c, each architecture behind struct
 * arch_ops). Not an interface to anything outside plugin/: the trace's
 * bytes are ftr-format.h's, the hash ftr-hash.h's.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#ifndef FPUTRACE_H
#define FPUTRACE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <glib.h>

#include <qemu-plugin.h>

#include "ftr-format.h"
#include "ftr-hash.h"

/* ---- limits ------------------------------------------------------------ */

#define MSR_IA32_XFD            0x1c4
#define MSR_IA32_XFD_ERR        0x1c5
#define MAX_EXTRA_MSRS          16
#define SITE_TABLE_SIZE         1024    /* power of two */
#define TASK_TABLE_SIZE         (1u << 16)
#define BUFFER_TABLE_SIZE       (1u << 16)
#define MAX_PROBES              64
#define MAX_PENDING_RETURNS     4       /* timed probes awaiting their return, per vCPU */
#define GUEST_UNNAMED_MAX       16      /* guest tasks named at the next VM exit, per vCPU */

/* ---- x86 ------------------------------------------------------------- */

/* Segment registers in the encoding's order (ModRM sreg, prefixes). */
enum x86_sreg { SREG_ES, SREG_CS, SREG_SS, SREG_DS, SREG_FS, SREG_GS, SREG_NONE = 7 };

/*
 * The CPU mode an instruction was translated in, from CR0.PE, EFLAGS.VM and
 * EFER.LMA read at translation time: what its bytes mean depends on it.
 * CS.L and CS.D (64-bit against compatibility mode, 32- against 16-bit
 * segments) are not readable, so a second decoding for the other one is
 * kept and the instruction's memory accesses decide (x86_fpu_mem()).
 */
enum x86_mode {
    MODE_LONG,                  /* EFER.LMA: 64-bit, or compatibility mode */
    MODE_PROTECTED,             /* 32-bit (or 16-bit) protected mode */
    MODE_REAL,                  /* real or virtual-8086 mode: segment base = selector << 4 */
};

/* How an operand's effective address is formed: [seg + base + index*scale + disp]. */
struct x86_modrm_addr {
    int8_t base;                /* GPR number, -1 none, -2 RIP-relative */
    int8_t index;               /* GPR number, -1 none */
    uint8_t scale;
    uint8_t segment;            /* enum x86_sreg: the override, or the default (DS/SS) */
    uint8_t addr_size;          /* enum ftr_addr_size */
    uint8_t mode;               /* enum x86_mode */
    bool cs64;                  /* 64-bit mode (not compatibility mode) */
    int32_t disp;
};

/* What translation learnt about one instruction; shared by all its TBs. */
/* Instructions at the user/kernel boundary (not events by themselves). */
enum boundary_insn {
    BOUNDARY_NONE,
    BOUNDARY_SWAPGS,
    BOUNDARY_SYSRET,
    BOUNDARY_IRET,
};

struct fpu_insn {
    uint64_t vaddr;
    uint8_t len;
    uint8_t kind;
    uint8_t flags;              /* FTR_FLAG_FORM64 */
    uint8_t boundary;           /* enum boundary_insn; kind is 0 then */
    bool is_save;
    bool is_restore;
    bool has_alt;               /* ea_alt: the other CS.L/CS.D reading */
    bool prefer_alt;            /* the accesses chose ea_alt last time (a benign race) */
    /* arm64: what an instrumented A64 instruction names (ea is x86's). */
    struct a64_operands {
        uint8_t el;             /* the EL it was translated at */
        uint8_t reg;            /* Rt of an MSR, Rn of a save/load sequence */
        uint8_t vl_reg;         /* ZA save/load: the register RDSVL set to SVL in bytes */
        uint8_t zt_reg;         /* ... the one that says whether ZT0 is moved (32: never) */
        uint8_t crm;            /* MSR (immediate): CRm */
        bool imm;               /* MSR (immediate): SMSTART/SMSTOP */
        bool hyp;               /* nVHE hypervisor code (EL2 without E2H) */
        uint16_t sysreg;        /* MSR: the register named */
        uint16_t vector;        /* exception vector: the offset from VBAR */
    } a64;
    struct x86_modrm_addr ea, ea_alt;
};

/* Where the nested guest's memory is, as a VM exit left it (x86_guest_mmu()). */
struct x86_guest_mmu {
    uint64_t dmap;              /* L1's direct map */
    bool npt;                   /* nested paging: the guest's tables are guest-physical */
    uint64_t ncr3;
    unsigned nlevels;           /* 5 when L1 runs with LA57: NPT follows the host's mode */
    uint64_t cr3;               /* without NPT: KVM's shadow tables, L1-physical */
    unsigned levels;
};

/* x86.c's part of a vCPU's state. */
struct x86_vcpu {
    uint64_t kernel_gs_base;    /* last per-cpu base seen; see x86_current_task() */
    uint64_t pending_alt_addr;  /* the other reading's address (fpu_insn.has_alt) */
    bool pending_xmm_hi;        /* XMM8-15 moved: the instruction ran in 64-bit mode */
    struct xsave_image *image;  /* the bytes the pending save/restore moved so far */
    struct x86_guest_mmu guest_mmu;     /* for the reads after a VM exit */
    bool guest_mmu_ok;
};

/* arm64.c's part of a vCPU's state. */
/*
 * The FP/SIMD and SVE records of an arm64 signal frame, read from user
 * memory (a64_frame_read()).
 */
struct a64_frame {
    uint64_t task;              /* whose frame (0: none read) */
    uint64_t fpsimd;            /* the FP/SIMD record's address (0: not found) */
    uint64_t v_hash;            /* its V0-V31, FPSR and FPCR, hashed as the registers */
    uint64_t fpsr_fpcr_hash;    /* ... the share of FPSR and FPCR in it */
    uint64_t sve_hash;          /* the SVE record's registers beyond V0-V31 */
    uint64_t sve_v_hash;        /* ... its Z0-Z31's low 128 bits (V0-V31) */
    uint32_t sve;               /* that record's VL in bytes | its flags << 16 (0: none) */
};

struct a64_vcpu {
    uint64_t host_task;         /* the host's current task: see a64_current_ptr() */
    uint64_t va;                /* the pending save/load's buffer, as its code names it */
    bool save;                  /* the pending operation is a save */
    bool hyp;                   /* ... run by nVHE hypervisor code */
    bool placed;                /* ... its first access gave the physical address */
    const struct fpu_insn *za_insn;     /* the pending operation is a ZA save or load */
    bool guest_fp_trapped;      /* the guest runs with FP/SIMD access trapped to EL2 */
    uint64_t entry_esr;         /* the pending user entry's ESR (0: an interrupt) */
    /*
     * Signal frames, which the kernel reads and writes with PAN set (its
     * own loads of user memory are unprivileged LDTR/STTR), so that a read
     * of them at EL1 faults: the task whose signal delivery writes a frame
     * (0: none), read at the handler's first user-mode block; the frame
     * rt_sigreturn is about to load, read at its SVC.
     */
    uint64_t frame_task;
    struct a64_frame sigreturn_frame;
    /*
     * The image a tracer's PTRACE_SETREGSET NT_PRFPREG is about to write
     * (struct user_fpsimd_state, at its iovec), read at its SVC: fpr_set()
     * takes it through PAN too.
     */
    struct a64_frame regset_image;
};

/*
 * A level's user-mode boundary state: L1's and L2's are kept apart, the
 * running level's in vcpu_state.ub (entry_pending is a scoreboard word:
 * its offset is fixed, so the levels swap contents, not places).
 */
struct user_boundary {
    /*
     * A user entry awaits its register hash (tested by a conditional
     * callback on kernel SIMD).
     */
    uint64_t entry_pending;
    bool in_user;               /* returned to user mode, no entry since */
    /* The last entry from user mode on this vCPU. */
    bool entry_seen;
    bool entry_materialized;    /* its USER_ENTRY event was written */
    uint64_t entry_pc;
    uint64_t entry_icount;
    uint64_t entry_task;
    unsigned entry_pl;          /* the kernel's privilege level at the entry */
};

/*
 * Per-vCPU state, in a scoreboard: only its own vCPU thread touches it
 * while running, and the exit callback after all vCPUs stopped.
 */
struct vcpu_state {
    /*
     * Instructions retired: an inline add of each block's length when the
     * block starts, so an instruction's own count is insns - insn_tail, its
     * distance from the block's end stored inline before its callback
     * (insn_exec_cb()). Scoreboard words, like entry_pending below.
     */
    uint64_t insns;
    uint64_t insn_tail;
    struct user_boundary ub;            /* the running level's */
    bool in_l2;
    struct user_boundary other_level;   /* the level not running now: L2's while in L1 */
    uint64_t l1_task_at_entry;
    /*
     * The nested guest's current task: the next task of its kernel's last
     * __switch_to() on this vCPU (a guest probe), 0 before the first.
     */
    uint64_t guest_current;
    uint64_t guest_next;        /* switched to, but prev's save may still come */
    /*
     * The guest's tasks switched to since the last VM exit, each with the
     * sequence number its announcement takes: named at the exit, when the
     * guest's memory can be read (guest_tasks_name()).
     */
    struct { uint64_t task, seq; } guest_unnamed[GUEST_UNNAMED_MAX];
    unsigned n_guest_unnamed;
    /*
     * The nested guest ran an IRET (scoreboard word): its frame cannot be
     * read here, so the first user-mode block after it is the return.
     */
    uint64_t l2_iret_pending;
    /*
     * The architecture asks for a callback at the next user-mode block
     * (scoreboard word; arm64: a signal frame to read from user mode).
     */
    uint64_t user_block_due;
    uint64_t vmcb;              /* of the last VM entry */
    /*
     * The register file's hash as last read (at a save, after a restore, at
     * a VM exit or a boundary), while nothing can have changed it since: no
     * restore, VM entry or kernel SIMD instruction after the read.
     */
    uint64_t last_regs;
    bool last_regs_ok;
    /*
     * Set by an inline store at every FP/SIMD instruction, whatever its
     * mode or address (boot code, user code): the registers may have
     * changed since last_regs. Cleared when they are read or derived.
     */
    uint64_t regs_dirty;
    /*
     * The task whose pid, tgid and comm were read last, and probe_generation
     * then: x86_current_task() reads them again only when either changed.
     */
    uint64_t identity_task;
    uint64_t identity_generation;
    uint64_t return_generation; /* probe_generation at the last user return */
    /* A task pointer already read for the event being begun (0: read it). */
    uint64_t known_task;
    uint64_t xcr0;
    /* An inline store of its pc when kernel code runs an FP/SIMD instruction. */
    uint64_t kernel_simd;
    /* A save/restore whose memory callbacks are still arriving. */
    bool pending;
    uint64_t pending_next_pc;   /* for a restore: where regs_after_hash is read */
    struct ftr_event pending_event;
    const struct fpu_insn *pending_insn;
    bool pending_checked;       /* the first access has placed the area */
    bool pending_ignore;        /* ... outside it: hashes are not valid */
    bool pending_derive;        /* register hashes from the bytes moved (regs=derive) */
    bool pending_sealed;        /* its bytes are hashed (x86_seal_pending()) */
    bool pending_entry;         /* entry_event awaits the register hash of this save */
    struct ftr_event entry_event;
    /*
     * Timed probes whose function has not returned yet, oldest first; the
     * number is a scoreboard word that the blocks of kernel code test
     * inline (vcpu_return_exec() runs only while it is not zero).
     */
    uint64_t n_returns;
    struct pending_return {
        uint64_t return_pc;     /* the return address read at the entry */
        uint64_t entry_pc;
        uint64_t entry_icount;
        uint32_t id;
    } returns[MAX_PENDING_RETURNS];
    /* What only one architecture's code keeps (x86.c, arm64.c). */
    union {
        struct x86_vcpu x86;
        struct a64_vcpu a64;
    };
    struct ftr_event *events;
    size_t n_events;
    struct ftr_task *tasks;
    size_t n_tasks;
    uint64_t events_by_kind[FTR_KIND_MAX];
    uint64_t tasks_total;
    GByteArray *scratch;
};

/*
 * What the code shared by both architectures asks of the one being traced
 * (x86_ops, a64_ops; chosen at install).
 */
struct arch_ops {
    unsigned user_pl;           /* the privilege level of user mode: CPL 3, EL0 */
    unsigned (*privilege)(struct vcpu_state *vs);
    /* The current task, announcing its identity when new (task_announce()). */
    uint64_t (*current_task)(struct vcpu_state *vs, unsigned int vcpu_index, unsigned pl,
                             bool use_cached, uint64_t seq, bool *valid);
    /* The current task pointer alone (0: not known). */
    uint64_t (*current_ptr)(struct vcpu_state *vs);
    /*
     * Read the nested guest's memory at one of its virtual addresses, in L1
     * after a VM exit (NULL: the architecture cannot).
     */
    bool (*guest_read)(struct vcpu_state *vs, uint64_t vaddr, void *out, size_t len);
    /* The register file's content hash, read register by register. */
    uint64_t (*regs_hash)(struct vcpu_state *vs, bool *ok);
    /* Commit the save or restore in progress, if any. */
    void (*finish_pending)(struct vcpu_state *vs, unsigned int vcpu_index);
    /*
     * A probed function's first three arguments, and its return address
     * (args[3], 0 if unreadable), read at its first instruction.
     */
    void (*probe_args)(struct vcpu_state *vs, uint64_t args[4]);
    /*
     * What a probe's arguments point at, where the analysis needs it (a
     * sigreturn's frame): into the probe event's memory fields. Optional.
     */
    void (*probe_state)(struct vcpu_state *vs, uint32_t probe, const uint64_t args[4],
                        struct ftr_event *ev);
    /*
     * At a user entry or return whose registers are read: what else of the
     * task's state the architecture records there (arm64: the SVE
     * registers). Optional.
     */
    void (*boundary_state)(struct vcpu_state *vs, struct ftr_event *ev);
    void (*tb_trans)(struct qemu_plugin_tb *tb);
    void (*regs_resolve)(void);
    void (*init)(void);                         /* at install, after the arguments */
    void (*vcpu_init)(struct vcpu_state *vs);   /* its part of a new vCPU's state */
};

extern const struct arch_ops x86_ops, a64_ops;
extern const struct arch_ops *arch;             /* the one being traced */

/* ---- XSAVE images (xsave-hash.c) --------------------------------------- */

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

/* ---- global state (fputrace.c) ----------------------------------------- */

/* The plugin's arguments (fputrace.c, parse_arg()). */
struct probe {
    uint64_t pc;
    uint32_t id;                /* enum ftr_probe */
    bool guest;                 /* a function of the nested guest's kernel (gprobe=) */
    bool timed;                 /* its return is recorded too (PROBE_RETURN) */
    bool quiet;                 /* it neither renames tasks nor rewrites buffers */
};

/* Where a kernel keeps a task's pid, tgid and comm in its task_struct (-1: not known). */
struct task_layout {
    int64_t pid_off, tgid_off, comm_off;
};

struct ftr_config {
    int fd;
    char *path;
    char *end_path;             /* end=: where the recorder says how the run ended */
    size_t block_events;
    uint64_t current_addr;      /* 0: task tracking off */
    struct task_layout task;    /* L1's kernel */
    struct task_layout gtask;   /* the nested guest's kernel (gtask_*=) */
    uint64_t dmap;              /* x86: where L1's direct map of physical memory begins */
    uint64_t dmap_var;          /* ... or L1's variable that holds it (page_offset_base) */
    uint32_t extra_msrs[MAX_EXTRA_MSRS];
    unsigned n_extra_msrs;
    struct probe probes[MAX_PROBES];
    unsigned n_probes;
    bool boundaries;
    bool guest_tasks;           /* a guest context switch probe: L2's tasks are followed */
    bool derive_regs;           /* regs=derive (default) or regs=read */
    bool icount;                /* events carry the instruction count (default on) */
    bool boundary_state;        /* boundary_state=on (default): arch->boundary_state() */
    bool timed_probes;          /* some probe is timed: returns are watched */
    char *kernel_id, *qemu_id, *args;
    const char *target;
};
extern struct ftr_config cfg;

/* A scoreboard word of struct vcpu_state that inline operations touch. */
extern qemu_plugin_u64 regs_dirty_entry;        /* vcpu_state.regs_dirty */
extern qemu_plugin_u64 l2_iret_entry;           /* vcpu_state.l2_iret_pending */
extern qemu_plugin_u64 user_block_due_entry;    /* vcpu_state.user_block_due */
extern uint64_t blocks_written;                 /* atomic */
extern uint64_t write_errors;                   /* atomic */
/* Translation-time tables, touched only under insn_lock. */
extern GMutex insn_lock;
extern GHashTable *insn_table;                  /* (vaddr, bytes) -> struct fpu_insn */

/*
 * Instructions that follow a traced one and need a callback of their own:
 * the instruction after VMRUN (VM exit) and after a restore (registers
 * after it). Open addressing; see site_lookup() for the locking.
 */
enum site_type {
    SITE_VM_EXIT = 1,
    SITE_AFTER_RESTORE = 2,
    SITE_SEQ_END = 4,           /* arm64: after a save or load sequence */
};

/* ---- fputrace.c -------------------------------------------------------- */

void vcpu_commit_after_entry(struct vcpu_state *vs, unsigned int vcpu_index, struct ftr_event *ev);
struct vcpu_state *vcpu_get(unsigned int vcpu_index);
bool reg_read(struct vcpu_state *vs, struct qemu_plugin_register *reg, uint8_t *out, size_t want);
uint64_t reg_read_u64(struct vcpu_state *vs, struct qemu_plugin_register *reg);
bool mem_read(struct vcpu_state *vs, uint64_t vaddr, void *out, size_t len);
void task_announce(struct vcpu_state *vs, unsigned int vcpu_index, uint64_t task, uint64_t seq);
void guest_tasks_name(struct vcpu_state *vs, unsigned int vcpu_index, bool readable);
void event_begin(struct vcpu_state *vs, unsigned int vcpu_index, struct ftr_event *ev,
                 uint8_t kind, uint64_t pc, int known_cpl);
void event_read_regs(struct vcpu_state *vs, struct ftr_event *ev, bool remember);
void vcpu_materialize_entry(struct vcpu_state *vs, unsigned int vcpu_index,
                            const uint64_t *regs_hash, bool defer);
void vcpu_user_return(struct vcpu_state *vs, unsigned int vcpu_index, uint64_t user_pc);
void vcpu_probe_exec(unsigned int vcpu_index, void *udata);
void vcpu_switch_level(struct vcpu_state *vs, bool to_l2);
bool buffer_first_save(uint64_t addr);
const struct fpu_insn *insn_intern(const struct fpu_insn *fi, const uint8_t *bytes, size_t len,
                                   uint8_t mode);
uint32_t site_lookup(uint64_t pc);
void site_add(uint64_t pc, uint32_t type);
uint64_t translation_reg_u64(struct qemu_plugin_register *reg);
const struct probe *probe_lookup(uint64_t pc);
void simd_instrument(struct qemu_plugin_insn *insn, uint64_t vaddr, bool host_kernel);
void insn_begin(size_t index, size_t n_insns);
void insn_mark(struct qemu_plugin_insn *insn);
void insn_exec_cb(struct qemu_plugin_insn *insn, qemu_plugin_vcpu_udata_cb_t cb, void *udata);

/* ---- trace.c ----------------------------------------------------------- */

void trace_write_block(uint16_t type, uint16_t vcpu, const void *payload, uint32_t count,
                       uint32_t payload_size);
bool trace_write_header(uint32_t api_version);
void trace_write_footer(struct ftr_footer *footer);
void vcpu_flush_events(struct vcpu_state *vs, unsigned int vcpu_index);
void vcpu_flush_tasks(struct vcpu_state *vs, unsigned int vcpu_index);
void vcpu_commit_event(struct vcpu_state *vs, unsigned int vcpu_index, const struct ftr_event *ev);

/* ---- xsave-hash.c ------------------------------------------------------ */

void xsave_tables_init(void);
uint64_t xsave_word_hash(uint32_t w, uint64_t value, uint32_t present);
uint64_t xsave_hash_run(uint32_t off, const uint8_t *bytes, size_t len);
void xsave_image_put(struct xsave_image *im, uint64_t off, unsigned size, uint64_t lo,
                     uint64_t hi);

/* ---- x86.c, arm64.c ---------------------------------------------------- */

bool a64_fp_code_add(uint64_t start, uint64_t end);

#endif /* FPUTRACE_H */
