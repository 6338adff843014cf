/*
 * fputrace.h: what the plugin's core files share with each other and with
 * the architectures behind struct arch_ops. The core: fputrace.c (events,
 * user boundaries, callbacks, arguments, install), task.c (who is
 * current), probe.c (probed kernel functions), translate.c (translation
 * tables) and trace.c (the trace writer). The architectures: x86*.c
 * (x86.h) and arm64.c (arm64.h), whose types appear here only in the
 * per-vCPU and per-instruction unions. Not an interface to anything
 * outside plugin/: the trace's bytes are ftr-format.h's, the hash
 * ftr-hash.h's.
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
#include "x86.h"
#include "arm64.h"

/* ---- limits ------------------------------------------------------------ */

#define SITE_TABLE_SIZE         1024    /* power of two */
#define TASK_TABLE_SIZE         (1u << 16)
#define BUFFER_TABLE_SIZE       (1u << 16)
#define MAX_PROBES              64
#define MAX_PENDING_RETURNS     4       /* timed probes awaiting their return, per vCPU */
/* guest tasks named at the next VM exit, per vCPU */
#define GUEST_UNNAMED_MAX       16

/* What translation learnt about one instruction; shared by all its TBs. */
struct fpu_insn {
    uint64_t vaddr;
    uint8_t len;
    uint8_t kind;               /* enum ftr_kind */
    uint8_t flags;              /* FTR_FLAG_FORM64 */
    bool is_save;
    bool is_restore;
    union {                     /* the architecture's own (x86.h, arm64.h) */
        struct x86_insn x86;
        struct a64_insn a64;
    };
};

/*
 * A level's user-mode boundary state: L1's and L2's are kept apart, the
 * running level's in vcpu_state.ub (and vcpu_inline.entry_pending).
 */
struct user_boundary {
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
 * The words of a vCPU's state that inline operations and conditional
 * callbacks touch, at fixed offsets in the scoreboard (inline_entry).
 */
struct vcpu_inline {
    /*
     * Instructions retired: an inline add of each block's length when the
     * block starts, so an instruction's own count is insns - insn_tail, its
     * distance from the block's end stored inline before its callback
     * (insn_exec_cb()).
     */
    uint64_t insns;
    uint64_t insn_tail;
    /*
     * The running level's user entry awaits its register hash (tested by a
     * conditional callback on kernel SIMD).
     */
    uint64_t entry_pending;
    /*
     * Set by an inline store at every FP/SIMD instruction, whatever its
     * mode or address (boot code, user code): the registers may have
     * changed since last_regs. Cleared when they are read or derived.
     */
    uint64_t regs_dirty;
    /* An inline store of its pc when kernel code runs an FP/SIMD instruction. */
    uint64_t kernel_simd;
    /*
     * Where the newest timed probe whose function has not returned will
     * return to (0: none pending). Every block of kernel code compares its
     * own address with it, so vcpu_return_exec() runs at that return only,
     * not at every block the function runs.
     */
    uint64_t return_due;
    /*
     * The architecture asks for a callback at the next user-mode block
     * (arm64: a signal frame to read from user mode; x86: the nested guest
     * ran an IRET, whose frame cannot be read there, so the first user-mode
     * block after it is the return).
     */
    uint64_t user_block_due;
};

/* Each vcpu_inline word's scoreboard entry (fputrace.c, at install). */
extern struct vcpu_inline_entries {
    qemu_plugin_u64 insns, insn_tail, entry_pending, regs_dirty, kernel_simd;
    qemu_plugin_u64 return_due, user_block_due;
} inline_entry;

/*
 * Per-vCPU state, in a scoreboard: only its own vCPU thread touches it
 * while running, and the exit callback after all vCPUs stopped.
 */
struct vcpu_state {
    struct vcpu_inline inl;
    struct user_boundary ub;            /* the running level's */
    bool in_l2;
    struct user_boundary other_level;   /* the level not running now: L2's while in L1 */
    uint64_t other_entry_pending;       /* ... and its vcpu_inline.entry_pending */
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
    uint64_t vmcb;              /* of the last VM entry */
    /*
     * The register file's hash as last read (at a save, after a restore, at
     * a VM exit or a boundary), while nothing can have changed it since: no
     * restore, VM entry or kernel SIMD instruction after the read.
     */
    uint64_t last_regs;
    bool last_regs_ok;
    /*
     * The task whose pid, tgid and comm were read last, and probe_generation
     * then: task_announce() reads them again only when either changed.
     */
    uint64_t identity_task;
    uint64_t identity_generation;
    uint64_t return_generation; /* probe_generation at the last user return */
    /* A task pointer already read for the event being begun (0: read it). */
    uint64_t known_task;
    /* x86: XCR0; arm64: 3 (FP/SIMD and SVE), a save's value */
    uint64_t xcr0;
    /* A save/restore whose memory callbacks are still arriving. */
    bool pending;
    uint64_t pending_next_pc;   /* for a restore: where regs_after_hash is read */
    struct ftr_event pending_event;
    const struct fpu_insn *pending_insn;
    bool pending_checked;       /* the first access has placed the area */
    bool pending_ignore;        /* ... outside it: hashes are not valid */
    bool pending_derive;        /* register hashes from the bytes moved (regs=derive) */
    bool pending_sealed;        /* its bytes are hashed (x86.c) */
    bool pending_entry;         /* entry_event awaits the register hash of this save */
    struct ftr_event entry_event;
    /* Timed probes whose function has not returned yet, oldest first. */
    unsigned n_returns;
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

/* A plugin argument, as its parser took it. */
enum arg_result {
    ARG_UNKNOWN,                /* not this parser's key */
    ARG_OK,
    ARG_BAD,                    /* its key, with a value it rejects (and why) */
};

/*
 * What the code shared by both architectures asks of the one being traced
 * (x86.c, arm64.c; chosen at install by the target's name).
 */
struct arch_ops {
    const char *target;         /* QEMU's target name */
    uint16_t ftr_arch;          /* enum ftr_arch: the trace header's */
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
    /*
     * A plugin argument the core does not know: ARG_UNKNOWN if it is not
     * the architecture's either, ARG_BAD with the reason in *why.
     */
    enum arg_result (*parse_arg)(const char *key, const char *value, char **why);
    void (*init)(void);                         /* at install, after the arguments */
    void (*vcpu_init)(struct vcpu_state *vs);   /* its part of a new vCPU's state */
    void (*vcpu_exit)(struct vcpu_state *vs);   /* ... freed after the last flush */
};

extern const struct arch_ops x86_ops;          /* x86.c */
extern const struct arch_ops a64_ops;          /* arm64.c */
extern const struct arch_ops *arch;             /* the one being traced */

/* ---- global state (fputrace.c) ----------------------------------------- */

/* A probed kernel function (probe=, gprobe=). */
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

/* The plugin's arguments that the core reads (parse_arg()). */
struct ftr_config {
    int fd;
    char *path;
    char *end_path;             /* end=: where the recorder says how the run ended */
    size_t block_events;
    uint64_t current_addr;      /* 0: task tracking off */
    struct task_layout task;    /* L1's kernel */
    struct task_layout gtask;   /* the nested guest's kernel (gtask_*=) */
    struct probe probes[MAX_PROBES];
    unsigned n_probes;
    bool boundaries;
    /* a guest context switch probe: L2's tasks are followed */
    bool guest_tasks;
    bool derive_regs;           /* regs=derive (default) or regs=read */
    bool icount;                /* events carry the instruction count (default on) */
    bool boundary_state;        /* boundary_state=on (default): arch->boundary_state() */
    bool timed_probes;          /* some probe is timed: returns are watched */
    char *kernel_id, *qemu_id, *args;
};
extern struct ftr_config cfg;

extern uint64_t next_seq;                       /* the next event's; atomic */
extern uint64_t blocks_written;                 /* atomic */
extern uint64_t write_errors;                   /* atomic */
/* Translation-time tables, touched only under insn_lock. */
extern GMutex insn_lock;

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

/* ---- fputrace.c: exec helpers, events, user boundaries ------------------ */

struct vcpu_state *vcpu_get(unsigned int vcpu_index);
bool reg_read(struct vcpu_state *vs, struct qemu_plugin_register *reg,
              uint8_t *out, size_t want);
uint64_t reg_read_u64(struct vcpu_state *vs, struct qemu_plugin_register *reg);
bool mem_read(struct vcpu_state *vs, uint64_t vaddr, void *out, size_t len);
void event_begin(struct vcpu_state *vs, unsigned int vcpu_index, struct ftr_event *ev,
                 uint8_t kind, uint64_t pc, int known_cpl);
void event_read_regs(struct vcpu_state *vs, struct ftr_event *ev, bool remember);
void vcpu_commit_after_entry(struct vcpu_state *vs, unsigned int vcpu_index,
                             struct ftr_event *ev);
void vcpu_materialize_entry(struct vcpu_state *vs, unsigned int vcpu_index,
                            const uint64_t *regs_hash, bool defer);
void vcpu_user_return(struct vcpu_state *vs, unsigned int vcpu_index, uint64_t user_pc);
void vcpu_switch_level(struct vcpu_state *vs, bool to_l2);
void vcpu_simd_after_entry_exec(unsigned int vcpu_index, void *udata);

/* ---- task.c: who is current, and their names ---------------------------- */

void task_announce(struct vcpu_state *vs, unsigned int vcpu_index, uint64_t task,
                   uint64_t seq);
void guest_task_switch(struct vcpu_state *vs, unsigned int vcpu_index, uint64_t next);
void guest_tasks_name(struct vcpu_state *vs, unsigned int vcpu_index, bool readable);

/* ---- probe.c: probed kernel functions and their returns ----------------- */

uint64_t probe_generation_now(void);
const struct probe *probe_lookup(uint64_t pc);
void vcpu_probe_exec(unsigned int vcpu_index, void *udata);
void probe_tb_trans(struct qemu_plugin_tb *tb);
bool buffer_first_save(uint64_t addr);

/* ---- translate.c: translation-time tables and helpers ------------------- */

void translate_init(void);
void translate_exit(void);
const struct fpu_insn *insn_intern(const struct fpu_insn *fi, const void *key_bytes,
                                   size_t key_len);
uint32_t site_lookup(uint64_t pc);
void site_add(uint64_t pc, uint32_t type);
uint64_t translation_reg_u64(struct qemu_plugin_register *reg);
void simd_instrument(struct qemu_plugin_insn *insn, uint64_t vaddr, bool host_kernel);
void insn_begin(size_t index, size_t n_insns);
void insn_mark(struct qemu_plugin_insn *insn);
void insn_exec_cb(struct qemu_plugin_insn *insn, qemu_plugin_vcpu_udata_cb_t cb,
                  void *udata);

/* ---- trace.c: the trace writer ------------------------------------------ */

bool trace_write_header(uint32_t api_version);
void trace_write_footer(struct ftr_footer *footer);
void vcpu_flush_events(struct vcpu_state *vs, unsigned int vcpu_index);
void vcpu_flush_tasks(struct vcpu_state *vs, unsigned int vcpu_index);
void vcpu_commit_event(struct vcpu_state *vs, unsigned int vcpu_index,
                       const struct ftr_event *ev);

/* ---- argument parsing helpers (fputrace.c) ------------------------------ */

bool parse_u64(const char *s, uint64_t *out);
enum arg_result parse_address(const char *key, const char *s, uint64_t *out, char **why);

#endif /* FPUTRACE_H */
