/*
 * fputrace: a QEMU TCG plugin that records FPU state operations.
 *
 * It watches the instructions with which a kernel (and KVM inside it) moves
 * FPU/SIMD register state between the register file and memory, changes
 * which state components exist, or enters and leaves a nested guest:
 *
 *   x86_64: XSAVE XSAVEOPT XSAVEC XSAVES XRSTOR XRSTORS FXSAVE FXRSTOR
 *           (and their REX.W forms), XSETBV, WRMSR, VMRUN.
 *
 * Instructions are recognised from their bytes at translation time; only
 * those get an exec callback (plus memory callbacks on the saves and
 * restores), so every other instruction runs at full speed.
 *
 * It also records the boundaries where the truth about a task's FPU state
 * is visible: every return to user mode, and the entry from user mode that
 * preceded it, with the register file's hash at both. Returns are the
 * SYSRET and IRET instructions (an IRET whose frame holds a user CS);
 * entries are the first SWAPGS after a return, which every entry path from
 * user mode executes before anything else touches the kernel's state. Only
 * those instructions get callbacks. An entry's register hash is read only
 * when something may change the registers before the return (a save, a
 * restore, kernel SIMD code): a return with nothing in between is recorded
 * as QUIET without reading a register.
 *
 * Probes: an exec callback on the first instruction of kernel functions
 * the recorder names (probe=ADDR:ID) records the function's arguments, so
 * fork copies, exec resets, signal frames and kernel_fpu sections show up.
 *
 * Each event becomes a fixed-size record in a per-vCPU buffer; full buffers
 * are written to the trace file as self-checking blocks with a single
 * write(2) on an O_APPEND descriptor, so the exec path takes no lock and a
 * trace cut short by a crash stays readable up to its last whole block.
 * docs/trace-format.md describes every byte written here.
 *
 * Arguments (key=value, comma separated by QEMU):
 *   out=PATH            trace file to create (required)
 *   current=ADDR        per-cpu address of the kernel's current task pointer
 *                       (read through GS base, i.e. %gs:ADDR)
 *   task_pid=OFF, task_tgid=OFF, task_comm=OFF
 *                       offsets in struct task_struct
 *   msr=INDEX           also record WRMSR to INDEX (may repeat); IA32_XFD
 *                       and IA32_XFD_ERR are always recorded
 *   kernel=STR, qemu=STR
 *                       identity strings copied into the trace header
 *   block_events=N      events per block (default 512)
 *   probe=ADDR:ID       record entry to the kernel function at ADDR as a
 *                       probe event of kind ID (enum ftr_probe; may repeat)
 *   boundaries=on|off   record user entry/return boundaries (default on)
 *   regs=derive|read    register hashes at 64-bit saves and restores from the
 *                       bytes they move (default), or read register by register
 *   fpcode=ADDR:LEN     arm64: kernel FP core code whose FP/SIMD instructions are
 *                       state handling, not kernel SIMD use (may repeat)
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stddef.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <glib.h>

#include <qemu-plugin.h>

#include "ftr-crc32c.h"
#include "ftr-format.h"
#include "ftr-hash.h"

QEMU_PLUGIN_EXPORT int qemu_plugin_version = QEMU_PLUGIN_VERSION;

/* ---- x86 definitions ----------------------------------------------- */

#define MSR_IA32_XFD            0x1c4
#define MSR_IA32_XFD_ERR        0x1c5
#define MAX_EXTRA_MSRS          16
#define SITE_TABLE_SIZE         1024    /* power of two */
#define TASK_TABLE_SIZE         (1u << 16)
#define BUFFER_TABLE_SIZE       (1u << 16)
#define MAX_PROBES              64

/* Segment registers in the encoding's order (ModRM sreg, prefixes). */
enum x86_sreg { SREG_ES, SREG_CS, SREG_SS, SREG_DS, SREG_FS, SREG_GS, SREG_NONE = 7 };

/*
 * The CPU mode an instruction was translated in, from CR0.PE, EFLAGS.VM and
 * EFER.LMA read at translation time: what its bytes mean depends on it.
 * CS.L and CS.D (64-bit against compatibility mode, 32- against 16-bit
 * segments) are not readable, so a second decoding for the other one is
 * kept and the instruction's memory accesses decide (vcpu_fpu_mem()).
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

/*
 * Per-vCPU state, in a scoreboard: only its own vCPU thread touches it
 * while running, and the exit callback after all vCPUs stopped.
 */
struct vcpu_state {
    uint64_t entry_pending;     /* a user entry awaits its register hash (scoreboard word
                                 * tested by a conditional callback on kernel SIMD) */
    bool in_user;               /* returned to user mode, no entry since */
    /* The last entry from user mode on this vCPU. */
    bool entry_seen;
    bool entry_materialized;    /* its USER_ENTRY event was written */
    uint64_t entry_pc;
    uint64_t entry_task;
    unsigned entry_pl;          /* the kernel's privilege level at the entry */
    bool in_l2;
    uint64_t l1_task_at_entry;
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
    uint64_t kernel_gs_base;    /* last per-cpu base seen; see x86_current_task() */
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
    uint64_t pending_alt_addr;  /* the other reading's address (has_alt) */
    const struct fpu_insn *pending_insn;
    bool pending_checked;       /* the first access has placed the area */
    bool pending_ignore;        /* ... outside it: hashes are not valid */
    bool pending_derive;        /* register hashes from the bytes moved (regs=derive) */
    bool pending_xmm_hi;        /* XMM8-15 moved: the instruction ran in 64-bit mode */
    bool pending_sealed;        /* its bytes are hashed (vcpu_seal_pending()) */
    struct xsave_image *image;  /* the bytes it moved so far */
    bool pending_entry;         /* entry_event awaits the register hash of this save */
    struct ftr_event entry_event;
    /* arm64 */
    uint64_t host_task;         /* the host's current task: see a64_current_ptr() */
    uint64_t a64_va;            /* the pending save/load's buffer, as its code names it */
    bool a64_save;              /* the pending operation is a save */
    bool a64_hyp;               /* ... run by nVHE hypervisor code */
    bool a64_placed;            /* ... its first access gave the physical address */
    const struct fpu_insn *a64_za_insn; /* the pending operation is a ZA save or load */
    bool guest_fp_trapped;      /* the guest runs with FP/SIMD access trapped to EL2 */
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
    /* The register file's content hash, read register by register. */
    uint64_t (*regs_hash)(struct vcpu_state *vs, bool *ok);
    /* Commit the save or restore in progress, if any. */
    void (*finish_pending)(struct vcpu_state *vs, unsigned int vcpu_index);
    /* A probed function's first three arguments. */
    void (*probe_args)(struct vcpu_state *vs, uint64_t args[3]);
    void (*tb_trans)(struct qemu_plugin_tb *tb);
    void (*regs_resolve)(void);
};
static const struct arch_ops *arch;

/* ---- global state ----------------------------------------------------- */

static struct {
    int fd;
    char *path;
    size_t block_events;
    uint64_t current_addr;      /* 0: task tracking off */
    int64_t task_pid_off, task_tgid_off, task_comm_off;
    uint32_t extra_msrs[MAX_EXTRA_MSRS];
    unsigned n_extra_msrs;
    struct probe { uint64_t pc; uint32_t id; } probes[MAX_PROBES];
    unsigned n_probes;
    bool boundaries;
    bool derive_regs;           /* regs=derive (default) or regs=read */
    char *kernel_id, *qemu_id, *args;
    const char *target;
} cfg = {
    .fd = -1,
    .block_events = 512,
    .task_pid_off = -1,
    .task_tgid_off = -1,
    .task_comm_off = -1,
    .boundaries = true,
    .derive_regs = true,
};

static struct qemu_plugin_scoreboard *vcpus;
static qemu_plugin_u64 kernel_simd_entry;       /* vcpu_state.kernel_simd */
static qemu_plugin_u64 entry_pending_entry;     /* vcpu_state.entry_pending */
static qemu_plugin_u64 regs_dirty_entry;        /* vcpu_state.regs_dirty */
static uint64_t next_seq;               /* atomic */
/*
 * Bumped by every probe hit (atomic). The probes include exec and task
 * exit: a task's comm changes at exec, and its task_struct can hold
 * another task only after it exits, so between two probe hits a task
 * pointer names the same pid and comm (see x86_current_task()).
 */
static uint64_t probe_generation;
static uint64_t blocks_written;         /* atomic */
static uint64_t write_errors;           /* atomic */

/* Translation-time tables, touched only under insn_lock. */
static GMutex insn_lock;
static GHashTable *insn_table;          /* (vaddr, bytes) -> struct fpu_insn */
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
static uint64_t site_pc[SITE_TABLE_SIZE];       /* 0: empty slot */
static uint32_t site_types[SITE_TABLE_SIZE];

/* Task identities already announced (a lock-free set), and save areas already read. */
static uint64_t task_seen[TASK_TABLE_SIZE];
static uint64_t buffer_seen[BUFFER_TABLE_SIZE];     /* see buffer_first_save() */

/* Register handles, resolved once by name. */
static struct {
    struct qemu_plugin_register *gpr[16];
    struct qemu_plugin_register *cs, *fs_base, *gs_base, *k_gs_base;
    struct qemu_plugin_register *sreg[6];       /* selectors, enum x86_sreg order */
    struct qemu_plugin_register *cr0, *efer, *eflags;
    struct qemu_plugin_register *fctrl, *fstat, *mxcsr;
    struct qemu_plugin_register *st[8], *xmm[16];
    bool resolved;
} regs;

/* ---- helpers: hashing --------------------------------------------------- */

/*
 * The content hash (ftr-hash.h) of an XSAVE-layout image is summed word by
 * word once an instruction is done: the memory callback runs for every
 * access of every save and restore, and only copies the value.
 */

/*
 * Standard-format offsets of the XSAVE components (CPUID 0xd, as QEMU).
 * MXCSR (24..31) counts for no component: XRSTOR loads it whenever RFBM
 * has SSE or AVX, even for components in their init state, so the SSE bit
 * means XMM registers were moved.
 */
static uint32_t xsave_feature_of_offset(uint64_t off)
{
    static const struct { uint32_t start, end, bit; } areas[] = {
        { 0, 24, 0 }, { 32, 160, 0 }, { 160, 416, 1 },
        { 576, 832, 2 }, { 960, 1024, 3 }, { 1024, 1088, 4 },
        { 1088, 1152, 5 }, { 1152, 1664, 6 }, { 1664, 2688, 7 },
        { 2688, 2696, 9 },
    };
    for (size_t i = 0; i < G_N_ELEMENTS(areas); i++) {
        if (off >= areas[i].start && off < areas[i].end) {
            return 1u << areas[i].bit;
        }
    }
    return 0;
}

/* The largest XSAVE area (AVX-512 and PKRU, standard format) fits in this. */
#define XSAVE_AREA_MAX          0x3000
#define XSAVE_WORDS             (XSAVE_AREA_MAX / 8)
#define XSAVE_WORD_XSTATE_BV    (512 / 8)       /* the header's first word */
#define XSAVE_WORD_LEGACY_END   (512 / 8)       /* x87 and SSE: mem_legacy_hash */
#define XSAVE_WORD_EXT          (832 / 8)       /* from here on: mem_ext_hash */

/* Per word: which of its bytes are content, and the component it belongs to. */
static uint8_t xsave_word_content[XSAVE_WORDS];
static uint16_t xsave_word_feature[XSAVE_WORDS];

static void xsave_tables_init(void)
{
    for (uint32_t w = 0; w < XSAVE_WORDS; w++) {
        xsave_word_content[w] = ftr_xsave_word_content(w);
        for (uint32_t b = 0; b < 8; b++) {
            xsave_word_feature[w] |= xsave_feature_of_offset(8 * w + b);
        }
    }
}

/* One word's share of a content hash: present says which bytes hold a value. */
static inline uint64_t xsave_word_hash(uint32_t w, uint64_t value, uint32_t present)
{
    return ftr_hash_word(w, value, present & xsave_word_content[w]);
}

/* The hash of len bytes at an 8-aligned offset, the only ones present in their words. */
static uint64_t xsave_hash_run(uint32_t off, const uint8_t *bytes, size_t len)
{
    uint64_t h = 0;

    for (size_t i = 0; i < len; i += 8) {
        size_t n = MIN(len - i, 8);
        uint64_t v = 0;
        memcpy(&v, bytes + i, n);       /* little-endian host, as the guest */
        h += xsave_word_hash((off + i) / 8, v, (1u << n) - 1);
    }
    return h;
}

/*
 * The bytes a save stored or a restore loaded, as the memory callbacks
 * deliver them, hashed once the instruction is done (vcpu_seal_pending()).
 */
struct xsave_image {
    uint64_t word[XSAVE_WORDS];
    uint8_t present[XSAVE_WORDS];
    uint16_t touched[XSAVE_WORDS];      /* the words with a present byte */
    uint32_t n_touched;
};

static inline void xsave_image_put_byte(struct xsave_image *im, uint64_t off, uint8_t byte)
{
    uint32_t w = off / 8, b = off % 8;

    if (!im->present[w]) {
        im->touched[im->n_touched++] = w;
    }
    im->present[w] |= 1u << b;
    im->word[w] = (im->word[w] & ~(0xffull << (8 * b))) | (uint64_t)byte << (8 * b);
}

static inline void xsave_image_put_word(struct xsave_image *im, uint32_t w, uint64_t v)
{
    if (!im->present[w]) {
        im->touched[im->n_touched++] = w;
    }
    im->present[w] = 0xff;
    im->word[w] = v;
}

/* An access of size bytes (at most 16) at off: lo holds the first 8. */
static inline void xsave_image_put(struct xsave_image *im, uint64_t off, unsigned size,
                                   uint64_t lo, uint64_t hi)
{
    if (off % 8 == 0 && size >= 8 && off + size <= XSAVE_AREA_MAX) {
        xsave_image_put_word(im, off / 8, lo);
        if (size == 16) {
            xsave_image_put_word(im, off / 8 + 1, hi);
        }
        return;
    }
    for (unsigned b = 0; b < size && off + b < XSAVE_AREA_MAX; b++) {
        xsave_image_put_byte(im, off + b, b < 8 ? lo >> (8 * b) : hi >> (8 * (b - 8)));
    }
}

/* ---- helpers: trace file ---------------------------------------------- */

static bool trace_write_all(const void *buf, size_t len)
{
    const uint8_t *p = buf;

    while (len > 0) {
        ssize_t n = write(cfg.fd, p, len);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n <= 0) {
            __atomic_fetch_add(&write_errors, 1, __ATOMIC_RELAXED);
            return false;
        }
        p += n;
        len -= n;
    }
    return true;
}

/*
 * One block, one write(2): with O_APPEND the kernel places it whole at the
 * end of the file, so vCPU threads need no lock between them.
 */
static void trace_write_block(uint16_t type, uint16_t vcpu, const void *payload,
                              uint32_t count, uint32_t payload_size)
{
    size_t total = sizeof(struct ftr_block_header) + payload_size;
    g_autofree uint8_t *buf = g_malloc(total);
    struct ftr_block_header hdr = {
        .magic = FTR_BLOCK_MAGIC,
        .type = type,
        .vcpu = vcpu,
        .count = count,
        .payload_size = payload_size,
        .crc32 = ftr_crc32c(payload, payload_size),
    };

    /* Its own checksum lets a reader tell a damaged header from a block. */
    hdr.header_crc32 = ftr_crc32c(&hdr, offsetof(struct ftr_block_header, header_crc32));
    memcpy(buf, &hdr, sizeof(hdr));
    memcpy(buf + sizeof(hdr), payload, payload_size);
    if (trace_write_all(buf, total)) {
        __atomic_fetch_add(&blocks_written, 1, __ATOMIC_RELAXED);
    }
}

static void header_put_string(GByteArray *out, const char *s)
{
    uint16_t len = s ? strlen(s) : 0;

    g_byte_array_append(out, (const guint8 *)&len, sizeof(len));
    if (len) {
        g_byte_array_append(out, (const guint8 *)s, len);
    }
}

static bool trace_write_header(uint32_t api_version)
{
    g_autoptr(GByteArray) out = g_byte_array_new();
    struct ftr_file_header fh = {
        .version = FTR_VERSION,
        .min_reader_version = FTR_MIN_READER_VERSION,
        .features = FTR_FEAT_MEM_HASH | FTR_FEAT_REGS_HASH |
                    (cfg.current_addr ? FTR_FEAT_TASKS : 0) |
                    (cfg.boundaries ? FTR_FEAT_BOUNDARIES : 0) |
                    (cfg.n_probes ? FTR_FEAT_PROBES : 0),
        .arch = strcmp(cfg.target, "aarch64") == 0 ? FTR_ARCH_AARCH64 : FTR_ARCH_X86_64,
        .event_size = sizeof(struct ftr_event),
        .task_size = sizeof(struct ftr_task),
        .plugin_api = api_version,
    };
    uint32_t header_crc;

    memcpy(fh.magic, FTR_MAGIC, sizeof(fh.magic));
    g_byte_array_append(out, (const guint8 *)&fh, sizeof(fh));
    header_put_string(out, cfg.qemu_id);
    header_put_string(out, cfg.kernel_id);
    header_put_string(out, cfg.args);
    /* Pad to 8 so that blocks are aligned in the file. */
    while (out->len % 8) {
        g_byte_array_append(out, (const guint8 *)"", 1);
    }
    fh.header_size = out->len;
    memcpy(out->data + offsetof(struct ftr_file_header, header_size), &fh.header_size,
           sizeof(fh.header_size));
    /* Over the whole header, this field still zero. */
    header_crc = ftr_crc32c(out->data, out->len);
    memcpy(out->data + offsetof(struct ftr_file_header, header_crc32), &header_crc,
           sizeof(header_crc));
    return trace_write_all(out->data, out->len);
}

static void vcpu_flush_events(struct vcpu_state *vs, unsigned int vcpu_index)
{
    if (vs->n_events) {
        trace_write_block(FTR_BLOCK_EVENTS, vcpu_index, vs->events, vs->n_events,
                          vs->n_events * sizeof(struct ftr_event));
        vs->n_events = 0;
    }
}

static void vcpu_flush_tasks(struct vcpu_state *vs, unsigned int vcpu_index)
{
    if (vs->n_tasks) {
        trace_write_block(FTR_BLOCK_TASKS, vcpu_index, vs->tasks, vs->n_tasks,
                          vs->n_tasks * sizeof(struct ftr_task));
        vs->n_tasks = 0;
    }
}

/*
 * Task announcements go out before the events that name them: a reader that
 * stops at the last whole block then never sees an event with an unknown task
 * that the trace could have told it about.
 */
static void vcpu_commit_event(struct vcpu_state *vs, unsigned int vcpu_index,
                              const struct ftr_event *ev)
{
    vs->events[vs->n_events++] = *ev;
    vs->events_by_kind[ev->kind]++;
    if (vs->n_events == cfg.block_events) {
        vcpu_flush_tasks(vs, vcpu_index);
        vcpu_flush_events(vs, vcpu_index);
    }
}

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
static void vcpu_seal_pending(struct vcpu_state *vs)
{
    struct ftr_event *ev = &vs->pending_event;
    struct xsave_image *im = vs->image;
    bool fx = ev->kind == FTR_KIND_FXSAVE || ev->kind == FTR_KIND_FXRSTOR;

    if (vs->pending_sealed) {
        return;
    }
    vs->pending_sealed = true;
    for (uint32_t i = 0; i < im->n_touched; i++) {
        uint32_t w = im->touched[i];
        uint64_t h = xsave_word_hash(w, im->word[w], im->present[w]);

        ev->mem_features |= xsave_word_feature[w];
        vs->pending_xmm_hi |= w >= 288 / 8 && w < 416 / 8;
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
static void vcpu_confirm_64bit(struct vcpu_state *vs)
{
    struct ftr_event *ev = &vs->pending_event;

    if (!(ev->mem_features & 2) || vs->pending_xmm_hi) {
        return;
    }
    vs->pending_derive = false;
    if (((ev->flags & FTR_FLAG_ADDR_SIZE_MASK) >> FTR_FLAG_ADDR_SIZE_SHIFT) == FTR_ADDR_64) {
        ev->flags = (ev->flags & ~FTR_FLAG_ADDR_SIZE_MASK) |
                    (uint32_t)FTR_ADDR_32 << FTR_FLAG_ADDR_SIZE_SHIFT;
    }
}

/*
 * Commit a save, after the user entry that waited for its register hash
 * (vcpu_materialize_entry(..., defer)): the save stored the registers the
 * task entered with, and the entry comes first in sequence.
 */
static void vcpu_commit_after_entry(struct vcpu_state *vs, unsigned int vcpu_index,
                                    struct ftr_event *ev)
{
    if (vs->pending_entry) {
        vs->pending_entry = false;
        if (ev->flags & FTR_FLAG_REGS_VALID) {
            vs->entry_event.regs_hash = ev->regs_hash;
            vs->entry_event.flags |= FTR_FLAG_REGS_VALID;
        }
        vcpu_commit_event(vs, vcpu_index, &vs->entry_event);
    }
    vcpu_commit_event(vs, vcpu_index, ev);
}

/*
 * A save or restore whose memory accesses are all in. A save's register
 * hash is the bytes it stored (regs=derive); a user entry waiting for it
 * goes out first, in order of sequence.
 */
static void vcpu_finish_pending(struct vcpu_state *vs, unsigned int vcpu_index)
{
    struct ftr_event *ev = &vs->pending_event;
    uint64_t h;

    if (!vs->pending) {
        return;
    }
    vs->pending = false;
    vcpu_seal_pending(vs);
    vcpu_confirm_64bit(vs);
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

/* ---- helpers: guest state ------------------------------------------- */

static struct vcpu_state *vcpu_get(unsigned int vcpu_index)
{
    return qemu_plugin_scoreboard_find(vcpus, vcpu_index);
}

static bool reg_read(struct vcpu_state *vs, struct qemu_plugin_register *reg,
                     uint8_t *out, size_t want)
{
    int n;

    if (!reg) {
        return false;
    }
    g_byte_array_set_size(vs->scratch, 0);
    n = qemu_plugin_read_register(reg, vs->scratch);
    if (n <= 0) {
        return false;
    }
    memset(out, 0, want);
    memcpy(out, vs->scratch->data, MIN((size_t)n, want));
    return true;
}

static uint64_t reg_read_u64(struct vcpu_state *vs, struct qemu_plugin_register *reg)
{
    uint64_t v = 0;

    reg_read(vs, reg, (uint8_t *)&v, sizeof(v));
    return v;
}

static bool mem_read(struct vcpu_state *vs, uint64_t vaddr, void *out, size_t len)
{
    g_byte_array_set_size(vs->scratch, 0);
    if (!qemu_plugin_read_memory_vaddr(vaddr, vs->scratch, len) ||
        vs->scratch->len < len) {
        return false;
    }
    memcpy(out, vs->scratch->data, len);
    return true;
}

static unsigned x86_cpl(struct vcpu_state *vs)
{
    return reg_read_u64(vs, regs.cs) & 3;
}

/* The register file as an XSAVE legacy area would hold it, hashed. */
static uint64_t x86_regs_hash(struct vcpu_state *vs, bool *ok)
{
    uint8_t buf[16], fcw_fsw[4];
    uint64_t h = 0;

    *ok = true;
    vs->regs_dirty = 0;
    if (!reg_read(vs, regs.fctrl, buf, 2)) {
        *ok = false;
        return 0;
    }
    memcpy(fcw_fsw, buf, 2);
    *ok &= reg_read(vs, regs.fstat, buf, 2);
    memcpy(fcw_fsw + 2, buf, 2);
    h += xsave_hash_run(0, fcw_fsw, 4);
    *ok &= reg_read(vs, regs.mxcsr, buf, 4);
    h += xsave_hash_run(24, buf, 4);
    for (int r = 0; r < 8; r++) {
        *ok &= reg_read(vs, regs.st[r], buf, 10);
        h += xsave_hash_run(32 + 16 * r, buf, 10);
    }
    for (int r = 0; r < 16; r++) {
        *ok &= reg_read(vs, regs.xmm[r], buf, 16);
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
        addr += reg_read_u64(vs, regs.gpr[ea->base]);
    }
    if (ea->index >= 0) {
        addr += reg_read_u64(vs, regs.gpr[ea->index]) << ea->scale;
    }
    addr &= size_mask[ea->addr_size];
    if (ea->segment == SREG_FS || ea->segment == SREG_GS) {
        base = reg_read_u64(vs, ea->segment == SREG_FS ? regs.fs_base : regs.gs_base);
    } else if (ea->mode == MODE_REAL) {
        base = (reg_read_u64(vs, regs.sreg[ea->segment]) & 0xffff) << 4;
    }
    addr += base;
    /* Outside 64-bit mode linear addresses are 32 bits wide. */
    return ea->cs64 ? addr : addr & 0xffffffffull;
}

/*
 * A lock-free set of nonzero keys: true the first time a key is added;
 * when_full once the table is full (announcing a task twice beats never;
 * no prior read of a buffer beats a wrong one).
 */
static bool seen_set_add(uint64_t *table, uint32_t size, uint64_t key, bool when_full)
{
    uint32_t slot = ftr_hash_mix64(key) & (size - 1);

    for (uint32_t probe = 0; probe < size; probe++) {
        uint64_t *p = &table[(slot + probe) & (size - 1)];
        uint64_t expected = 0;
        uint64_t cur = __atomic_load_n(p, __ATOMIC_RELAXED);

        if (cur == key) {
            return false;
        }
        if (cur == 0 &&
            __atomic_compare_exchange_n(p, &expected, key, false,
                                        __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
            return true;
        }
        if (expected == key) {
            return false;
        }
    }
    return when_full;
}

/*
 * The kernel's current task: %gs:current while in the kernel; in user mode
 * the kernel's GS base waits in KERNEL_GS_BASE until the next swapgs.
 *
 * Around VMRUN that does not hold: KVM's SVM entry code runs VMLOAD with the
 * guest's VMCB first, which loads the guest's GS base. A CPU's per-cpu base
 * never changes once set up, so the last one seen on this vCPU stands in
 * there (use_cached).
 *
 * A new (task, pid, comm) identity is announced once, so exec() renames and
 * task_struct reuse both show up.
 */
/*
 * A task's pid, tgid and comm. They lie within a few hundred bytes of each
 * other in task_struct, so one read of the span costs one page walk (two if
 * it crosses a page) where three reads would cost three: this runs for
 * every event.
 */
#define TASK_SPAN_MAX           1024

static void task_identity(struct vcpu_state *vs, uint64_t task, struct ftr_task *t)
{
    int64_t lo = cfg.task_pid_off, hi = cfg.task_pid_off + (int64_t)sizeof(t->pid);
    uint8_t span[TASK_SPAN_MAX];

    if (cfg.task_tgid_off >= 0) {
        lo = MIN(lo, cfg.task_tgid_off);
        hi = MAX(hi, cfg.task_tgid_off + (int64_t)sizeof(t->tgid));
    }
    if (cfg.task_comm_off >= 0) {
        lo = MIN(lo, cfg.task_comm_off);
        hi = MAX(hi, cfg.task_comm_off + (int64_t)sizeof(t->comm) - 1);
    }
    if (hi - lo <= TASK_SPAN_MAX) {
        if (!mem_read(vs, task + lo, span, hi - lo)) {
            return;
        }
        memcpy(&t->pid, span + cfg.task_pid_off - lo, sizeof(t->pid));
        if (cfg.task_tgid_off >= 0) {
            memcpy(&t->tgid, span + cfg.task_tgid_off - lo, sizeof(t->tgid));
        }
        if (cfg.task_comm_off >= 0) {
            memcpy(t->comm, span + cfg.task_comm_off - lo, sizeof(t->comm) - 1);
        }
        return;
    }
    mem_read(vs, task + cfg.task_pid_off, &t->pid, sizeof(t->pid));
    if (cfg.task_tgid_off >= 0) {
        mem_read(vs, task + cfg.task_tgid_off, &t->tgid, sizeof(t->tgid));
    }
    if (cfg.task_comm_off >= 0) {
        mem_read(vs, task + cfg.task_comm_off, t->comm, sizeof(t->comm) - 1);
    }
}

/*
 * Announce a task's (pid, tgid, comm) when this identity was not announced
 * before. Reads them only when the task changed or a probe hit since the
 * last read on this vCPU: the same task as at the last read, no probe hit
 * since, means the same pid and comm (probe_generation). Without probes
 * there is no such guarantee, so every event reads them. exec sets the new
 * comm after its probe (begin_new_exec(): flush_thread(), then
 * __set_task_comm()), so the first user return after any probe hit reads
 * them again (vcpu_user_return()). A comm set by prctl() or through /proc
 * shows from the next read on.
 */
static void task_announce(struct vcpu_state *vs, unsigned int vcpu_index, uint64_t task,
                          uint64_t seq)
{
    struct ftr_task t = { 0 };
    uint64_t key, generation, comm_words[2];

    if (cfg.task_pid_off < 0) {
        return;
    }
    generation = __atomic_load_n(&probe_generation, __ATOMIC_ACQUIRE);
    if (cfg.n_probes && task == vs->identity_task &&
        generation == vs->identity_generation) {
        return;
    }
    task_identity(vs, task, &t);
    vs->identity_task = task;
    vs->identity_generation = generation;
    memcpy(comm_words, t.comm, sizeof(comm_words));
    key = ftr_hash_mix64(task ^ ftr_hash_mix64(t.pid)) ^
          ftr_hash_mix64(comm_words[0] ^ ftr_hash_mix64(comm_words[1]));
    if (seen_set_add(task_seen, TASK_TABLE_SIZE, key | 1, true)) {
        t.seq = seq;
        t.task = task;
        t.vcpu = vcpu_index;
        vs->tasks[vs->n_tasks++] = t;
        vs->tasks_total++;
        if (vs->n_tasks == cfg.block_events) {
            vcpu_flush_tasks(vs, vcpu_index);
        }
    }
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
        base = vs->kernel_gs_base;
    } else if (use_cached) {
        base = vs->kernel_gs_base;
    } else {
        base = reg_read_u64(vs, cpl == 0 ? regs.gs_base : regs.k_gs_base);
        if (!(base >> 63)) {
            base = vs->kernel_gs_base;      /* not a kernel address */
        }
    }
    if (!task && (!base || !mem_read(vs, base + cfg.current_addr, &task, sizeof(task)))) {
        return 0;
    }
    if (!(task >> 63)) {
        return 0;
    }
    vs->kernel_gs_base = base;
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

    if (!cfg.current_addr || !vs->kernel_gs_base ||
        !mem_read(vs, vs->kernel_gs_base + cfg.current_addr, &task, sizeof(task))) {
        return 0;
    }
    return task;
}

/* Fill the fields every event has; known_cpl < 0: read it from CS. */
static void event_begin(struct vcpu_state *vs, unsigned int vcpu_index,
                        struct ftr_event *ev, uint8_t kind, uint64_t pc, int known_cpl)
{
    unsigned cpl = known_cpl >= 0 ? (unsigned)known_cpl : arch->privilege(vs);
    bool task_valid = false;

    memset(ev, 0, sizeof(*ev));
    ev->seq = __atomic_fetch_add(&next_seq, 1, __ATOMIC_RELAXED);
    ev->pc = pc;
    ev->kind = kind;
    ev->vcpu = vcpu_index;
    ev->xcr0 = vs->xcr0;
    ev->flags = cpl;
    if (vs->kernel_simd) {
        ev->flags |= FTR_FLAG_KERNEL_SIMD;
        ev->simd_pc = (uint32_t)vs->kernel_simd;
        vs->kernel_simd = 0;
        vs->last_regs_ok = false;
    }
    if (vs->in_l2) {
        /* GS base belongs to the nested guest here: use the L1 task that entered it. */
        ev->flags |= FTR_FLAG_L2;
        ev->task = vs->l1_task_at_entry;
        task_valid = ev->task != 0;
    } else {
        ev->task = arch->current_task(vs, vcpu_index, cpl, kind == FTR_KIND_VM_ENTRY,
                                    ev->seq, &task_valid);
    }
    if (task_valid) {
        ev->flags |= FTR_FLAG_TASK_VALID;
    }
}

/*
 * Read the register file's hash into an event; remember: it is also what
 * the registers hold from here on, until something changes them.
 */
static void event_read_regs(struct vcpu_state *vs, struct ftr_event *ev, bool remember)
{
    bool ok;

    ev->regs_hash = arch->regs_hash(vs, &ok);
    if (ok) {
        ev->flags |= FTR_FLAG_REGS_VALID;
    }
    if (remember) {
        vs->last_regs = ev->regs_hash;
        vs->last_regs_ok = ok;
    }
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
        case 0: fi->kind = FTR_KIND_FXSAVE; fi->is_save = true; return true;
        case 1: fi->kind = FTR_KIND_FXRSTOR; fi->is_restore = true; return true;
        case 4: fi->kind = FTR_KIND_XSAVE; fi->is_save = true; return true;
        case 5: fi->kind = FTR_KIND_XRSTOR; fi->is_restore = true; return true;
        case 6: fi->kind = FTR_KIND_XSAVEOPT; fi->is_save = true; return true;
        default: return false;                  /* LDMXCSR, STMXCSR, CLFLUSH */
        }
    case 0xc7:
        if (mandatory_prefix ||
            !x86_decode_modrm(p + i + 1, n - i - 1, rex, cs64, addr_size, segment,
                              ea, &reg)) {
            return false;
        }
        switch (reg) {
        case 3: fi->kind = FTR_KIND_XRSTORS; fi->is_restore = true; return true;
        case 4: fi->kind = FTR_KIND_XSAVEC; fi->is_save = true; return true;
        case 5: fi->kind = FTR_KIND_XSAVES; fi->is_save = true; return true;
        default: return false;                  /* CMPXCHG8B/16B, VMPTRLD... */
        }
    default:
        return false;
    }
}

/* ---- callbacks ------------------------------------------------------ */

/*
 * The register file of a task that entered from user mode, written as a
 * USER_ENTRY event the first time something may change it: nothing between
 * the entry and now can have (no save, restore or kernel SIMD instruction
 * ran), so it is the state the task entered with. regs_hash: the hash the
 * caller has just read, or NULL to read it here.
 */
static void vcpu_materialize_entry(struct vcpu_state *vs, unsigned int vcpu_index,
                                   const uint64_t *regs_hash, bool defer)
{
    struct ftr_event ev;
    bool ok = true;

    if (!vs->entry_pending) {
        return;
    }
    vs->entry_pending = 0;
    vs->entry_materialized = true;
    /*
     * A task can leave the CPU with no FP event at all: when its registers
     * are not live (TIF_NEED_FPU_LOAD, e.g. after exec dropped them), the
     * switch saves nothing. Its entry state is then unknown, and what the
     * registers hold now is not it.
     */
    if (arch->current_ptr(vs) != vs->entry_task) {
        return;
    }
    event_begin(vs, vcpu_index, &ev, FTR_KIND_USER_ENTRY, vs->entry_pc, vs->entry_pl);
    if (defer) {
        /* A save comes next: its bytes are the registers (vcpu_finish_pending()). */
        vs->entry_event = ev;
        vs->pending_entry = true;
        return;
    }
    ev.regs_hash = regs_hash ? *regs_hash : arch->regs_hash(vs, &ok);
    if (ok) {
        ev.flags |= FTR_FLAG_REGS_VALID;
    }
    vs->last_regs = ev.regs_hash;
    vs->last_regs_ok = ok;
    vcpu_commit_event(vs, vcpu_index, &ev);
}

/*
 * SWAPGS: the first one after a return to user mode is the entry from it
 * (entry_SYSCALL_64 starts with it, error_entry and the compat entries run
 * it first thing). The kernel's own SWAPGS pairs (__rdgsbase_inactive,
 * asm_load_gs_index) run while in the kernel and are ignored.
 */
static void vcpu_swapgs_exec(unsigned int vcpu_index, void *udata)
{
    struct vcpu_state *vs = vcpu_get(vcpu_index);

    if (!vs->in_user || vs->in_l2) {
        return;                 /* the nested guest's own entries are its kernel's */
    }
    vs->in_user = false;
    vs->last_regs_ok = false;   /* user code ran since anything was read */
    vs->entry_seen = true;
    vs->entry_materialized = false;
    vs->entry_pc = (uintptr_t)udata;
    vs->entry_task = x86_current_ptr(vs);
    vs->entry_pending = 1;
}

/*
 * A return to user mode, at the SYSRET or IRET that does it (user_pc: where
 * it returns to). When the same task entered on this vCPU and nothing could
 * change its registers since, the return is QUIET: equal to the entry by
 * construction, and no register is read.
 */
static void vcpu_user_return(struct vcpu_state *vs, unsigned int vcpu_index,
                             uint64_t user_pc)
{
    struct ftr_event ev;
    uint64_t task, generation;
    bool quiet, ok;

    vs->in_user = true;
    arch->finish_pending(vs, vcpu_index);
    /* Without task tracking (no current=), a switch is not seen: same task assumed. */
    generation = __atomic_load_n(&probe_generation, __ATOMIC_ACQUIRE);
    if (generation != vs->return_generation) {
        vs->identity_task = 0;  /* a probe hit since: see x86_current_task() */
        vs->return_generation = generation;
    }
    task = arch->current_ptr(vs);
    quiet = vs->entry_seen && !vs->entry_materialized &&
            (!cfg.current_addr || (vs->entry_task != 0 && task == vs->entry_task));
    vs->known_task = task;      /* event_begin() need not read it again */
    event_begin(vs, vcpu_index, &ev, FTR_KIND_USER_RETURN, user_pc, arch->user_pl);
    ev.addr = vs->entry_seen ? vs->entry_pc : 0;
    if (!vs->entry_seen) {
        ev.flags |= FTR_FLAG_NO_ENTRY;
    }
    if (quiet) {
        ev.flags |= FTR_FLAG_QUIET;
    } else if (vs->last_regs_ok && !vs->regs_dirty) {
        /* Read at the last restore or save, and unchanged since. */
        ev.regs_hash = vs->last_regs;
        ev.flags |= FTR_FLAG_REGS_VALID;
    } else {
        ev.regs_hash = arch->regs_hash(vs, &ok);
        if (ok) {
            ev.flags |= FTR_FLAG_REGS_VALID;
        }
        vs->last_regs = ev.regs_hash;
        vs->last_regs_ok = ok;
    }
    vs->entry_seen = false;
    vs->entry_pending = 0;
    vcpu_commit_event(vs, vcpu_index, &ev);
}

/* SYSRET always returns to user mode, to RCX. */
static void vcpu_sysret_exec(unsigned int vcpu_index, void *udata G_GNUC_UNUSED)
{
    struct vcpu_state *vs = vcpu_get(vcpu_index);

    if (!vs->in_l2) {
        vcpu_user_return(vs, vcpu_index, reg_read_u64(vs, regs.gpr[1]));
    }
}

/* IRET returns to user mode when the CS in its frame (RIP, CS, ...) is. */
static void vcpu_iret_exec(unsigned int vcpu_index, void *udata G_GNUC_UNUSED)
{
    struct vcpu_state *vs = vcpu_get(vcpu_index);
    uint64_t frame[2];

    if (vs->in_l2 ||
        !mem_read(vs, reg_read_u64(vs, regs.gpr[4]), frame, sizeof(frame)) ||
        (frame[1] & 3) != 3) {
        return;
    }
    vcpu_user_return(vs, vcpu_index, frame[0]);
}

/* The first kernel FP/SIMD instruction after an entry, before it runs. */
static void vcpu_simd_after_entry_exec(unsigned int vcpu_index, void *udata G_GNUC_UNUSED)
{
    struct vcpu_state *vs = vcpu_get(vcpu_index);

    arch->finish_pending(vs, vcpu_index);
    vcpu_materialize_entry(vs, vcpu_index, NULL, false);
}

/* The first instruction of a probed kernel function: its first arguments. */
static void vcpu_probe_exec(unsigned int vcpu_index, void *udata)
{
    const struct probe *pr = udata;
    struct vcpu_state *vs = vcpu_get(vcpu_index);
    struct ftr_event ev;
    uint64_t args[3];

    arch->finish_pending(vs, vcpu_index);
    __atomic_fetch_add(&probe_generation, 1, __ATOMIC_RELEASE);
    event_begin(vs, vcpu_index, &ev, FTR_KIND_PROBE, pr->pc, 0);
    ev.index = pr->id;
    arch->probe_args(vs, args);
    ev.value = args[0];
    ev.addr = args[1];
    ev.aux = args[2];
    vcpu_commit_event(vs, vcpu_index, &ev);
}

/*
 * Whether a save to addr is the first to that buffer since the last probe
 * hit: then what the buffer holds is read before it (x86_prior_hash()).
 * A probe marks where the analysis starts a buffer over (exec resets it,
 * fork copies into it, both by memcpy the trace does not see), so a buffer
 * is read again after any. A direct-mapped table of address and generation:
 * a collision or a race between vCPUs costs one more read, never one less.
 */
static bool buffer_first_save(uint64_t addr)
{
    uint64_t generation = __atomic_load_n(&probe_generation, __ATOMIC_ACQUIRE);
    uint64_t key = ftr_hash_mix64(addr ^ ftr_hash_mix64(generation)) | 1;
    uint64_t *slot = &buffer_seen[ftr_hash_mix64(addr) & (BUFFER_TABLE_SIZE - 1)];

    if (__atomic_load_n(slot, __ATOMIC_RELAXED) == key) {
        return false;
    }
    __atomic_store_n(slot, key, __ATOMIC_RELAXED);
    return true;
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

static void vcpu_fpu_op_exec(unsigned int vcpu_index, void *udata)
{
    const struct fpu_insn *fi = udata;
    struct vcpu_state *vs = vcpu_get(vcpu_index);
    const struct x86_modrm_addr *ea = fi->prefer_alt ? &fi->ea_alt : &fi->ea;
    struct ftr_event ev;
    uint64_t rfbm, requested, regs_hash = 0;
    bool ok = false, derive;

    vcpu_finish_pending(vs, vcpu_index);
    rfbm = (reg_read_u64(vs, regs.gpr[0]) & 0xffffffffull) |
           reg_read_u64(vs, regs.gpr[2]) << 32;                 /* EDX:EAX */
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
    if (derive && fi->is_save && vs->entry_pending) {
        vcpu_materialize_entry(vs, vcpu_index, NULL, true);
    } else if (vs->entry_pending) {
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
        vs->last_regs_ok = false;               /* until vcpu_finish_pending() */
        vs->regs_dirty = 0;                     /* the registers are what it stores */
    }
    /* The memory callbacks that follow fill in the content hash. */
    vs->pending_event = ev;
    vs->pending_insn = fi;
    vs->pending_alt_addr = fi->has_alt
                           ? x86_effective_address(vs, fi, fi->prefer_alt ? &fi->ea : &fi->ea_alt)
                           : 0;
    vs->pending_checked = vs->pending_ignore = false;
    vs->pending_xmm_hi = false;
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
static bool vcpu_place_area(struct vcpu_state *vs, uint64_t vaddr)
{
    struct ftr_event *ev = &vs->pending_event;
    const struct fpu_insn *fi = vs->pending_insn;

    vs->pending_checked = true;
    if (vaddr - ev->addr < XSAVE_AREA_MAX) {
        return true;
    }
    if (fi->has_alt && vaddr - vs->pending_alt_addr < XSAVE_AREA_MAX) {
        const struct x86_modrm_addr *other = fi->prefer_alt ? &fi->ea : &fi->ea_alt;
        ev->addr = vs->pending_alt_addr;
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

static void vcpu_fpu_mem(unsigned int vcpu_index, qemu_plugin_meminfo_t info,
                         uint64_t vaddr, void *udata G_GNUC_UNUSED)
{
    struct vcpu_state *vs = vcpu_get(vcpu_index);
    struct ftr_event *ev = &vs->pending_event;
    qemu_plugin_mem_value mv;
    unsigned size = 1u << qemu_plugin_mem_size_shift(info);
    uint64_t off, lo, hi = 0;

    if (!vs->pending || vs->pending_ignore ||
        (!vs->pending_checked && !vcpu_place_area(vs, vaddr))) {
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
        xsave_image_put(vs->image, off, size, lo, hi);
    }
}

/*
 * The instruction after a restore: the register file now holds what the
 * restore loaded, init components included: from the bytes it read
 * (regs=derive, 64-bit mode), else read register by register.
 */
static void vcpu_after_restore_exec(unsigned int vcpu_index, void *udata)
{
    struct vcpu_state *vs = vcpu_get(vcpu_index);
    struct ftr_event *ev = &vs->pending_event;
    bool ok;

    if (!vs->pending || vs->pending_next_pc != (uintptr_t)udata) {
        return;
    }
    vcpu_seal_pending(vs);
    vcpu_confirm_64bit(vs);
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

static void vcpu_xsetbv_exec(unsigned int vcpu_index, void *udata)
{
    const struct fpu_insn *fi = udata;
    struct vcpu_state *vs = vcpu_get(vcpu_index);
    struct ftr_event ev;

    vcpu_finish_pending(vs, vcpu_index);
    event_begin(vs, vcpu_index, &ev, fi->kind, fi->vaddr, -1);
    ev.index = reg_read_u64(vs, regs.gpr[1]);
    ev.value = (reg_read_u64(vs, regs.gpr[0]) & 0xffffffffull) |
               reg_read_u64(vs, regs.gpr[2]) << 32;
    /* A nested guest's XSETBV is intercepted by its host: it changes nothing here. */
    if (ev.index == 0 && !vs->in_l2) {
        vs->xcr0 = ev.value;
    }
    vcpu_commit_event(vs, vcpu_index, &ev);
}

static void vcpu_wrmsr_exec(unsigned int vcpu_index, void *udata)
{
    const struct fpu_insn *fi = udata;
    struct vcpu_state *vs = vcpu_get(vcpu_index);
    uint32_t msr = reg_read_u64(vs, regs.gpr[1]);
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
    vcpu_finish_pending(vs, vcpu_index);
    event_begin(vs, vcpu_index, &ev, kind, fi->vaddr, -1);
    ev.index = msr;
    ev.value = (reg_read_u64(vs, regs.gpr[0]) & 0xffffffffull) |
               reg_read_u64(vs, regs.gpr[2]) << 32;
    vcpu_commit_event(vs, vcpu_index, &ev);
}

static void vcpu_vmrun_exec(unsigned int vcpu_index, void *udata)
{
    const struct fpu_insn *fi = udata;
    struct vcpu_state *vs = vcpu_get(vcpu_index);
    struct ftr_event ev;

    vcpu_finish_pending(vs, vcpu_index);
    event_begin(vs, vcpu_index, &ev, FTR_KIND_VM_ENTRY, fi->vaddr, 0);
    ev.addr = reg_read_u64(vs, regs.gpr[0]);    /* VMCB physical address */
    /* SVM's VMRUN leaves the FP registers alone: these are the guest's. */
    event_read_regs(vs, &ev, false);
    vs->vmcb = ev.addr;
    vs->last_regs_ok = false;   /* the guest runs */
    vcpu_commit_event(vs, vcpu_index, &ev);
    vs->l1_task_at_entry = ev.task;
    vs->in_l2 = true;
}

/* The instruction after a VMRUN runs when the nested guest has exited. */
static void vcpu_vmexit_exec(unsigned int vcpu_index, void *udata)
{
    struct vcpu_state *vs = vcpu_get(vcpu_index);
    struct ftr_event ev;

    if (!vs->in_l2) {
        return;
    }
    vcpu_finish_pending(vs, vcpu_index);
    /*
     * Still inside KVM's VMLOAD window, with the guest's GS base: the task
     * is the one that entered, which cannot have been switched out between.
     */
    event_begin(vs, vcpu_index, &ev, FTR_KIND_VM_EXIT, (uintptr_t)udata, 0);
    vs->in_l2 = false;
    ev.flags &= ~FTR_FLAG_L2;
    ev.addr = vs->vmcb;
    event_read_regs(vs, &ev, true);     /* the guest's registers as it left them */
    vcpu_commit_event(vs, vcpu_index, &ev);
}

static const struct fpu_insn *insn_intern(const struct fpu_insn *fi,
                                          const uint8_t *bytes, size_t len, uint8_t mode)
{
    uint8_t keybuf[sizeof(fi->vaddr) + 1 + 16];
    g_autoptr(GBytes) key = NULL;
    struct fpu_insn *found;

    /* The same bytes at the same address mean something else in another mode. */
    memcpy(keybuf, &fi->vaddr, sizeof(fi->vaddr));
    keybuf[sizeof(fi->vaddr)] = mode;
    memcpy(keybuf + sizeof(fi->vaddr) + 1, bytes, len);
    key = g_bytes_new(keybuf, sizeof(fi->vaddr) + 1 + len);
    found = g_hash_table_lookup(insn_table, key);
    if (!found) {
        found = g_memdup2(fi, sizeof(*fi));
        g_hash_table_insert(insn_table, g_bytes_ref(key), found);
    }
    return found;
}

/*
 * Sites are added under insn_lock; a slot's types are set before its pc is
 * published with a release store, so translation looks sites up without a
 * lock. A type added to a published site can be missed by a translation
 * running at that moment: the callback is then absent from that one TB.
 */
static uint32_t site_lookup(uint64_t pc)
{
    for (uint32_t i = 0; i < SITE_TABLE_SIZE; i++) {
        uint32_t slot = (ftr_hash_mix64(pc) + i) & (SITE_TABLE_SIZE - 1);
        uint64_t p = __atomic_load_n(&site_pc[slot], __ATOMIC_ACQUIRE);

        if (p == 0) {
            return 0;
        }
        if (p == pc) {
            return __atomic_load_n(&site_types[slot], __ATOMIC_RELAXED);
        }
    }
    return 0;
}

static void site_add(uint64_t pc, uint32_t type)
{
    for (uint32_t i = 0; i < SITE_TABLE_SIZE; i++) {
        uint32_t slot = (ftr_hash_mix64(pc) + i) & (SITE_TABLE_SIZE - 1);

        if (site_pc[slot] == pc) {
            __atomic_fetch_or(&site_types[slot], type, __ATOMIC_RELAXED);
            return;
        }
        if (site_pc[slot] == 0) {
            site_types[slot] = type;
            __atomic_store_n(&site_pc[slot], pc, __ATOMIC_RELEASE);
            return;
        }
    }
    /* Table full: these sites go without the follow-up callback. */
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

/* A register at translation time: the CPU is in the mode the TB is for. */
static uint64_t translation_reg_u64(struct qemu_plugin_register *reg)
{
    g_autoptr(GByteArray) buf = g_byte_array_new();
    uint64_t v = 0;
    int n = reg ? qemu_plugin_read_register(reg, buf) : 0;

    if (n > 0) {
        memcpy(&v, buf->data, MIN((size_t)n, sizeof(v)));
    }
    return v;
}

static enum x86_mode x86_translation_mode(void)
{
    if (translation_reg_u64(regs.efer) & (1u << 10)) {          /* EFER.LMA */
        return MODE_LONG;
    }
    if (!(translation_reg_u64(regs.cr0) & 1) ||                 /* CR0.PE */
        (translation_reg_u64(regs.eflags) & (1u << 17))) {      /* EFLAGS.VM */
        return MODE_REAL;
    }
    return MODE_PROTECTED;
}

static void insn_instrument(struct qemu_plugin_insn *insn, uint64_t vaddr,
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
            [BOUNDARY_SWAPGS] = vcpu_swapgs_exec,
            [BOUNDARY_SYSRET] = vcpu_sysret_exec,
            [BOUNDARY_IRET] = vcpu_iret_exec,
        };
        if (cfg.boundaries) {
            qemu_plugin_register_vcpu_insn_exec_cb(insn, boundary_cb[fi.boundary],
                                                   QEMU_PLUGIN_CB_R_REGS,
                                                   (void *)(uintptr_t)vaddr);
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
        qemu_plugin_register_vcpu_insn_exec_cb(insn, vcpu_xsetbv_exec,
                                               QEMU_PLUGIN_CB_R_REGS, (void *)shared);
        break;
    case FTR_KIND_WRMSR:
        qemu_plugin_register_vcpu_insn_exec_cb(insn, vcpu_wrmsr_exec,
                                               QEMU_PLUGIN_CB_R_REGS, (void *)shared);
        break;
    case FTR_KIND_VM_ENTRY:
        qemu_plugin_register_vcpu_insn_exec_cb(insn, vcpu_vmrun_exec,
                                               QEMU_PLUGIN_CB_R_REGS, (void *)shared);
        break;
    default:
        qemu_plugin_register_vcpu_insn_exec_cb(insn, vcpu_fpu_op_exec,
                                               QEMU_PLUGIN_CB_R_REGS, (void *)shared);
        /* Only the stores of a save and the loads of a restore (XSAVE reads its header). */
        qemu_plugin_register_vcpu_mem_cb(insn, vcpu_fpu_mem, QEMU_PLUGIN_CB_NO_REGS,
                                         shared->is_save ? QEMU_PLUGIN_MEM_W : QEMU_PLUGIN_MEM_R,
                                         (void *)shared);
        break;
    }
}

static const struct probe *probe_lookup(uint64_t pc)
{
    /* Written once at install, read-only afterwards: no lock. */
    for (unsigned i = 0; i < cfg.n_probes; i++) {
        if (cfg.probes[i].pc == pc) {
            return &cfg.probes[i];
        }
    }
    return NULL;
}

static void x86_tb_trans(struct qemu_plugin_tb *tb)
{
    size_t n = qemu_plugin_tb_n_insns(tb);

    for (size_t i = 0; i < n; i++) {
        struct qemu_plugin_insn *insn = qemu_plugin_tb_get_insn(tb, i);
        uint64_t vaddr = qemu_plugin_insn_vaddr(insn);
        uint8_t bytes[16];
        size_t len = qemu_plugin_insn_data(insn, bytes, sizeof(bytes));
        uint32_t site = site_lookup(vaddr);

        /* Registered first: they must run before this instruction's own callback. */
        if (site & SITE_AFTER_RESTORE) {
            qemu_plugin_register_vcpu_insn_exec_cb(insn, vcpu_after_restore_exec,
                                                   QEMU_PLUGIN_CB_R_REGS,
                                                   (void *)(uintptr_t)vaddr);
        }
        if (site & SITE_VM_EXIT) {
            qemu_plugin_register_vcpu_insn_exec_cb(insn, vcpu_vmexit_exec,
                                                   QEMU_PLUGIN_CB_R_REGS,
                                                   (void *)(uintptr_t)vaddr);
        }
        if (cfg.n_probes) {
            const struct probe *pr = probe_lookup(vaddr);
            if (pr) {
                qemu_plugin_register_vcpu_insn_exec_cb(insn, vcpu_probe_exec,
                                                       QEMU_PLUGIN_CB_R_REGS, (void *)pr);
            }
        }
        if (cfg.derive_regs && x86_is_fp_simd(bytes, len)) {
            qemu_plugin_register_vcpu_insn_exec_inline_per_vcpu(
                insn, QEMU_PLUGIN_INLINE_STORE_U64, regs_dirty_entry, 1);
        }
        if ((vaddr >> 63) && x86_is_fp_simd(bytes, len)) {
            if (cfg.boundaries) {
                /* Before the first one after a user entry, the entry's registers. */
                qemu_plugin_register_vcpu_insn_exec_cond_cb(
                    insn, vcpu_simd_after_entry_exec, QEMU_PLUGIN_CB_R_REGS,
                    QEMU_PLUGIN_COND_EQ, entry_pending_entry, 1, NULL);
            }
            /* An inline store of its pc, no callback: SIMD loops stay at full speed. */
            qemu_plugin_register_vcpu_insn_exec_inline_per_vcpu(
                insn, QEMU_PLUGIN_INLINE_STORE_U64, kernel_simd_entry, vaddr);
        }
        if (x86_maybe_traced(bytes, len)) {
            insn_instrument(insn, vaddr, bytes, len);
        }
    }
}

static void x86_regs_resolve(void)
{
    static const struct {
        const char *name;
        struct qemu_plugin_register **handle;
    } named[] = {
        { "cs", &regs.cs }, { "cr0", &regs.cr0 }, { "efer", &regs.efer },
        { "eflags", &regs.eflags }, { "fs_base", &regs.fs_base },
        { "gs_base", &regs.gs_base }, { "k_gs_base", &regs.k_gs_base },
        { "fctrl", &regs.fctrl }, { "fstat", &regs.fstat }, { "mxcsr", &regs.mxcsr },
    };
    g_autoptr(GArray) list = qemu_plugin_get_registers();

    for (guint i = 0; i < list->len; i++) {
        qemu_plugin_reg_descriptor *rd =
            &g_array_index(list, qemu_plugin_reg_descriptor, i);
        const char *nm = rd->name;
        int k;

        for (k = 0; k < 16; k++) {
            if (!g_ascii_strcasecmp(nm, x86_gpr_names[k])) {
                regs.gpr[k] = rd->handle;
            }
        }
        for (k = 0; k < 6; k++) {
            static const char *const sreg_names[6] = { "es", "cs", "ss", "ds", "fs", "gs" };
            if (!g_ascii_strcasecmp(nm, sreg_names[k])) {
                regs.sreg[k] = rd->handle;
            }
        }
        for (k = 0; k < (int)G_N_ELEMENTS(named); k++) {
            if (!g_ascii_strcasecmp(nm, named[k].name)) {
                *named[k].handle = rd->handle;
            }
        }
        if (sscanf(nm, "st%d", &k) == 1 && k >= 0 && k < 8 && strlen(nm) == 3) {
            regs.st[k] = rd->handle;
        } else if (sscanf(nm, "xmm%d", &k) == 1 && k >= 0 && k < 16) {
            regs.xmm[k] = rd->handle;
        }
    }
}

/* The System V calling convention: rdi, rsi, rdx. */
static void x86_probe_args(struct vcpu_state *vs, uint64_t args[3])
{
    args[0] = reg_read_u64(vs, regs.gpr[7]);
    args[1] = reg_read_u64(vs, regs.gpr[6]);
    args[2] = reg_read_u64(vs, regs.gpr[2]);
}

static const struct arch_ops x86_ops = {
    .user_pl = 3,
    .privilege = x86_cpl,
    .current_task = x86_current_task,
    .current_ptr = x86_current_ptr,
    .regs_hash = x86_regs_hash,
    .finish_pending = vcpu_finish_pending,
    .probe_args = x86_probe_args,
    .tb_trans = x86_tb_trans,
    .regs_resolve = x86_regs_resolve,
};

/* ---- arm64 ------------------------------------------------------------ */

/*
 * A system register as an MSR/MRS instruction names it: op0:op1:CRn:CRm:op2,
 * the 16 bits 20:5 of the instruction.
 */
#define A64_SYSREG(op0, op1, crn, crm, op2) \
    ((op0) << 14 | (op1) << 11 | (crn) << 7 | (crm) << 3 | (op2))

#define SYSREG_CPACR_EL1        A64_SYSREG(3, 0, 1, 0, 2)
#define SYSREG_CPACR_EL12       A64_SYSREG(3, 5, 1, 0, 2)
#define SYSREG_CPTR_EL2         A64_SYSREG(3, 4, 1, 1, 2)
#define SYSREG_ZCR_EL1          A64_SYSREG(3, 0, 1, 2, 0)
#define SYSREG_ZCR_EL2          A64_SYSREG(3, 4, 1, 2, 0)
#define SYSREG_ZCR_EL12         A64_SYSREG(3, 5, 1, 2, 0)
#define SYSREG_SMCR_EL1         A64_SYSREG(3, 0, 1, 2, 6)
#define SYSREG_SMCR_EL2         A64_SYSREG(3, 4, 1, 2, 6)
#define SYSREG_SMCR_EL12        A64_SYSREG(3, 5, 1, 2, 6)
#define SYSREG_SVCR             A64_SYSREG(3, 3, 4, 2, 2)
#define SYSREG_SP_EL0           A64_SYSREG(3, 0, 4, 1, 0)

#define HCR_VM                  (1ull << 0)
#define HCR_TGE                 (1ull << 27)
#define HCR_E2H                 (1ull << 34)

#define ESR_EC_FP               0x07    /* FP/SIMD access trapped (CPACR/CPTR) */
#define ESR_EC_SVE              0x19
#define ESR_EC_SME              0x1d

#define A64_INSN_ERET           0xd69f03e0u
#define A64_INSN_ERETAA         0xd69f0bffu
#define A64_INSN_ERETAB         0xd69f0fffu
#define A64_INSN_RET            0xd65f03c0u

/*
 * The kernel's linear map: [PAGE_OFFSET, PAGE_END). PAGE_OFFSET is
 * -(1 << VA_BITS): 0xffff000000000000 with 48-bit VAs, 0xfff0000000000000
 * with 52-bit ones (Debian's 6.12); PAGE_END is -(1 << 47) with either
 * (VA_BITS_MIN, arch/arm64/include/asm/memory.h). Below 0xffff000000000000
 * a 48-bit kernel has no valid address, so the wider range serves both.
 */
#define A64_LINEAR_START        0xfff0000000000000ull
#define A64_LINEAR_END          0xffff800000000000ull

/*
 * The FP/SIMD content image of the hashes: V0-V31 (the low 128 bits of
 * Z0-Z31) in words 0-63, FPSR | FPCR << 32 in word 64; with SVE the rest of
 * each Z register, the P registers and FFR from word A64_WORD_EXT on
 * (mem_ext_hash). The register file hashes like a buffer that holds it.
 */
#define A64_FPSIMD_BYTES        520     /* struct user_fpsimd_state less padding */
#define A64_WORD_EXT            1024
#define A64_VL_MAX              256     /* bytes: SVE's 2048-bit maximum */
/* ZA (SVL x SVL bytes) and ZT0 (64 bytes) hash as words of their own. */
#define A64_WORD_ZA             16384
#define A64_WORD_ZT0            (A64_WORD_ZA + A64_VL_MAX * A64_VL_MAX / 8)
#define A64_ZT0_BYTES           64

/* The kernel's save/load sequences (arch/arm64/include/asm/fpsimdmacros.h). */
enum a64_seq {
    SEQ_NONE,
    SEQ_FPSIMD_SAVE,            /* fpsimd_save: stp q0, q1, [xN] ... */
    SEQ_FPSIMD_LOAD,            /* fpsimd_restore: ldp q0, q1, [xN] ... */
    SEQ_SVE_SAVE,               /* sve_save: str z0, [xN, #-34, MUL VL] ... */
    SEQ_SVE_LOAD,               /* sve_load: ldr z0, [xN, #-34, MUL VL] ... */
};

/* Instructions the sequences are made of, bits of Rn (and Rt) cleared. */
#define A64_STP_Q_OFF           0xad000000u     /* STP (SIMD&FP) 128-bit, signed offset */
#define A64_LDP_Q_OFF           0xad400000u
#define A64_STP_Q_PRE           0xad800000u     /* ... pre-index */
#define A64_LDP_Q_PRE           0xadc00000u
#define A64_SVE_STR_Z           0xe5804000u     /* STR (vector), imm9 MUL VL */
#define A64_SVE_LDR_Z           0x85804000u
/*
 * sme_save_za/sme_load_za, with RDSVL before them and the ZT0 store or
 * load after them where the kernel has ZT0 (sme_save_state, 6.4 on;
 * za_save_state before): rdsvl xV, #1; mov wW, #0; 1: str za[wW, 0], [xN];
 * add xN, xN, xV; add xW, xW, #1; cmp xV, xW; b.ne 1b [; cbz wZ, 2f;
 * str zt0, [xN]; 2:].
 */
#define A64_SME_RDSVL_1         0x04bf5820u     /* RDSVL Xd, #1 */
#define A64_MOVZ_W_0            0x52800000u     /* MOV Wd, #0 */
#define A64_SME_STR_ZA          0xe1200000u     /* STR ZA[Wv, #0], [Xn] */
#define A64_SME_LDR_ZA          0xe1000000u
#define A64_ADD_X_REG           0x8b000000u     /* ADD Xd, Xn, Xm */
#define A64_ADD_X_1             0x91000400u     /* ADD Xd, Xn, #1 */
#define A64_CMP_X_REG           0xeb00001fu     /* CMP Xn, Xm */
#define A64_BNE_BACK_4          0x54ffff81u     /* B.NE, four instructions back */
#define A64_CBZ_W_FWD_2         0x34000040u     /* CBZ Wt, two instructions on */
#define A64_SME_STR_ZT0         0xe13f8000u     /* STR ZT0, [Xn] */
#define A64_SME_LDR_ZT0         0xe11f8000u
#define A64_ZT_NONE             32

static inline uint32_t a64_pair_q(uint32_t base, unsigned rt, unsigned rn, int imm16)
{
    return base | (uint32_t)(imm16 & 0x7f) << 15 | (rt + 1) << 10 | rn << 5 | rt;
}

static inline uint32_t a64_sve_z(uint32_t base, unsigned zt, unsigned rn, int imm9)
{
    uint32_t u = (uint32_t)imm9 & 0x1ff;
    return base | (u >> 3) << 16 | (u & 7) << 10 | rn << 5 | zt;
}

/* Register handles, resolved once by name (QEMU's own system register names). */
static struct {
    struct qemu_plugin_register *x[31];
    struct qemu_plugin_register *cpsr, *z[32], *fpsr, *fpcr, *vg;
    struct qemu_plugin_register *hcr_el2, *esr_el1, *esr_el2, *elr_el1, *elr_el2;
    struct qemu_plugin_register *spsr_el1, *spsr_el2, *vbar_el1, *vbar_el2;
    struct qemu_plugin_register *vttbr_el2, *vmpidr_el2, *svcr;
    struct qemu_plugin_register *cpacr_el1, *cptr_el2, *zcr_el1, *zcr_el2;
    struct qemu_plugin_register *smcr_el1, *smcr_el2;
} a64;

/*
 * The kernel address of physical address 0 in the linear map, learnt from
 * the first state operation on a linear-map buffer (atomic; 0: not yet):
 * nVHE hypervisor code names the same buffers by its own addresses.
 */
static uint64_t a64_linear_offset;

static unsigned a64_el(struct vcpu_state *vs)
{
    return (reg_read_u64(vs, a64.cpsr) >> 2) & 3;
}

static uint64_t a64_xreg(struct vcpu_state *vs, unsigned r)
{
    return r < 31 ? reg_read_u64(vs, a64.x[r]) : 0;     /* 31: XZR */
}

/* The hash of 16-byte vector registers (V0-V31 order) and of FPSR/FPCR. */
static uint64_t a64_v_hash(unsigned n, const uint8_t *v16)
{
    uint64_t lo, hi;

    memcpy(&lo, v16, 8);
    memcpy(&hi, v16 + 8, 8);
    return ftr_a64_word_hash(2 * n, lo) + ftr_a64_word_hash(2 * n + 1, hi);
}

static uint64_t a64_fpsr_fpcr_hash(uint32_t fpsr, uint32_t fpcr)
{
    return ftr_a64_word_hash(FTR_A64_WORD_FPSR_FPCR, fpsr | (uint64_t)fpcr << 32);
}

/* Z0-Z31 (their low 128 bits), FPSR and FPCR, register by register. */
static uint64_t a64_regs_hash(struct vcpu_state *vs, bool *ok)
{
    uint8_t v[16];
    uint32_t fpsr = 0, fpcr = 0;
    uint64_t h = 0;

    *ok = true;
    for (unsigned n = 0; n < 32; n++) {
        if (!reg_read(vs, a64.z[n], v, sizeof(v))) {
            *ok = false;
            return 0;
        }
        h += a64_v_hash(n, v);
    }
    *ok = reg_read(vs, a64.fpsr, (uint8_t *)&fpsr, 4) && reg_read(vs, a64.fpcr, (uint8_t *)&fpcr, 4);
    return h + a64_fpsr_fpcr_hash(fpsr, fpcr);
}

/*
 * The current task is what the kernel last wrote to SP_EL0 while the host
 * ran (vcpu_state.host_task, a64_sp_el0_exec()): kernel_entry sets it from
 * __entry_task at every entry from EL0 and cpu_switch_to() at every switch
 * (arch/arm64/kernel/entry.S). Reading SP_EL0 would not do: it holds the
 * user stack pointer from kernel_exit's `msr sp_el0` to the next entry, and
 * KVM's world switch loads the guest's value into it.
 */
static uint64_t a64_current_ptr(struct vcpu_state *vs)
{
    return vs->host_task;
}

static uint64_t a64_current_task(struct vcpu_state *vs, unsigned int vcpu_index,
                                 unsigned pl G_GNUC_UNUSED, bool use_cached G_GNUC_UNUSED,
                                 uint64_t seq, bool *valid)
{
    uint64_t task = vs->host_task;

    *valid = task != 0;
    if (task) {
        task_announce(vs, vcpu_index, task, seq);
    }
    return task;
}


/* `msr sp_el0, xN`: the host kernel names its current task (see a64_current_ptr()). */
static void a64_sp_el0_exec(unsigned int vcpu_index, void *udata)
{
    struct vcpu_state *vs = vcpu_get(vcpu_index);
    uint64_t v = a64_xreg(vs, (uintptr_t)udata);

    /* A user stack pointer (kernel_exit) or the guest's value (HCR_EL2.VM: KVM's switch). */
    if (v < A64_LINEAR_START || (reg_read_u64(vs, a64.hcr_el2) & HCR_VM)) {
        return;
    }
    vs->host_task = v;
}

/*
 * The pending save or load is done: hash the FP/SIMD content of its buffer
 * (what a save stored, or what a load read) and commit it. fpsr/fpcr of an
 * SVE save are stored after the Z and P registers, behind a branch: the
 * registers still hold them.
 */
/*
 * The FP/SIMD content hash of a buffer: FPSIMD (struct user_fpsimd_state:
 * V0-V31, FPSR, FPCR), or SVE (Z0-Z31 and P0-P15 at vector length vl, as
 * sve_save lays them out; FPSR and FPCR live elsewhere and are given).
 */
static bool a64_buffer_hash(struct vcpu_state *vs, bool sve, uint64_t va, unsigned vl,
                            const uint32_t *sve_fpsr_fpcr, uint64_t *h, uint64_t *ext,
                            uint32_t *bytes)
{
    g_autofree uint8_t *b = NULL;
    uint32_t fpsr_fpcr[2];
    size_t len;

    *h = *ext = 0;
    if (!sve) {
        uint8_t v[A64_FPSIMD_BYTES];
        if (!mem_read(vs, va, v, sizeof(v))) {
            return false;
        }
        for (unsigned n = 0; n < 32; n++) {
            *h += a64_v_hash(n, v + 16 * n);
        }
        memcpy(fpsr_fpcr, v + 512, 8);
        *h += a64_fpsr_fpcr_hash(fpsr_fpcr[0], fpsr_fpcr[1]);
        *bytes = A64_FPSIMD_BYTES;
        return true;
    }
    if (vl < 16 || vl > A64_VL_MAX || vl % 16) {
        return false;
    }
    len = 32 * vl + 16 * (vl / 8);
    b = g_malloc(len);
    if (!mem_read(vs, va, b, len)) {
        return false;
    }
    for (unsigned n = 0; n < 32; n++) {
        *h += a64_v_hash(n, b + vl * n);
        for (unsigned w = 2; w < vl / 8; w++) {
            uint64_t v;
            memcpy(&v, b + vl * n + 8 * w, 8);
            *ext += ftr_a64_word_hash(A64_WORD_EXT + 32 * n + w, v);
        }
    }
    /* P0-P15, vl / 8 bytes each: 2 * vl bytes, hashed as one run of words. */
    for (unsigned w = 0; w < 2 * vl / 8; w++) {
        uint64_t v;
        memcpy(&v, b + 32 * vl + 8 * w, 8);
        *ext += ftr_a64_word_hash(A64_WORD_EXT + 1024 + w, v);
    }
    *h += a64_fpsr_fpcr_hash(sve_fpsr_fpcr[0], sve_fpsr_fpcr[1]);
    *bytes = len + 8;
    return true;
}

/*
 * A ZA save or load is done: hash its buffer, SVL rows of SVL bytes from
 * where the sequence began, then ZT0 where the sequence moved it. The
 * registers still hold SVL and the ZT0 count.
 */
static void a64_za_finish(struct vcpu_state *vs, struct ftr_event *ev)
{
    const struct fpu_insn *fi = vs->a64_za_insn;
    uint64_t svl = a64_xreg(vs, fi->a64.vl_reg);
    bool zt0 = fi->a64.zt_reg != A64_ZT_NONE && (uint32_t)a64_xreg(vs, fi->a64.zt_reg) != 0;
    size_t za_bytes, len;
    g_autofree uint8_t *b = NULL;

    vs->a64_za_insn = NULL;
    if (svl < 16 || svl > A64_VL_MAX || svl % 16) {
        return;
    }
    za_bytes = svl * svl;
    len = za_bytes + (zt0 ? A64_ZT0_BYTES : 0);
    b = g_malloc(len);
    if (!mem_read(vs, vs->a64_va, b, len)) {
        return;
    }
    ev->index = svl;
    ev->value = zt0 ? 4 | 8 : 4;        /* ZA, and ZT0 */
    for (size_t w = 0; w < len / 8; w++) {
        uint64_t v;
        memcpy(&v, b + 8 * w, 8);
        ev->mem_hash += ftr_a64_word_hash(w < za_bytes / 8 ? A64_WORD_ZA + w
                                                       : A64_WORD_ZT0 + w - za_bytes / 8, v);
    }
    ev->mem_bytes = len;
    ev->flags |= FTR_FLAG_MEM_VALID;
}

/*
 * The pending save or load is done: a save's content hash comes from what
 * its buffer holds now (FPSR and FPCR of an SVE save, stored after the Z
 * and P registers behind a branch, from the registers, which still hold
 * them); then the event is committed.
 */
static void a64_finish_pending(struct vcpu_state *vs, unsigned int vcpu_index)
{
    struct ftr_event *ev = &vs->pending_event;
    bool sve = ev->kind == FTR_KIND_SVE_SAVE;
    uint32_t regs[2] = { 0, 0 };

    if (!vs->pending) {
        return;
    }
    vs->pending = false;
    if (vs->a64_za_insn) {
        a64_za_finish(vs, ev);
        vcpu_commit_event(vs, vcpu_index, ev);
        return;
    }
    if (vs->a64_save &&
        (!sve || (reg_read(vs, a64.fpsr, (uint8_t *)&regs[0], 4) &&
                  reg_read(vs, a64.fpcr, (uint8_t *)&regs[1], 4))) &&
        a64_buffer_hash(vs, sve, vs->a64_va, ev->index, regs, &ev->mem_hash,
                        &ev->mem_ext_hash, &ev->mem_bytes)) {
        ev->mem_legacy_hash = ev->mem_hash;
        ev->flags |= FTR_FLAG_MEM_VALID;
        if (!(ev->flags & FTR_FLAG_REGS_VALID)) {
            /* regs=derive: a save stores the registers as they are. */
            ev->regs_hash = ev->mem_hash;
            ev->flags |= FTR_FLAG_REGS_VALID;
        }
        vs->last_regs = ev->regs_hash;
        vs->last_regs_ok = !vs->regs_dirty;
    }
    vcpu_commit_after_entry(vs, vcpu_index, ev);
}

/*
 * The first instruction of a save or load sequence (a64_seq_at()): its
 * buffer, and for a load the content it is about to read. A save is
 * hashed once its stores are done (a64_seq_end_exec()), from memory.
 */
static void a64_state_op_exec(unsigned int vcpu_index, void *udata)
{
    const struct fpu_insn *fi = udata;
    struct vcpu_state *vs = vcpu_get(vcpu_index);
    struct ftr_event ev;
    bool sve = fi->kind == FTR_KIND_SVE_SAVE || fi->kind == FTR_KIND_SVE_LOAD;
    unsigned vl = sve ? 8 * reg_read_u64(vs, a64.vg) : 16;
    uint64_t base = a64_xreg(vs, fi->a64.reg), regs_hash = 0;
    bool ok = false;

    a64_finish_pending(vs, vcpu_index);
    /* Before a load, or with regs=read, the registers as they are now. */
    if (fi->is_restore && vs->last_regs_ok && !vs->regs_dirty) {
        regs_hash = vs->last_regs;
        ok = true;
    } else if (fi->is_restore || !cfg.derive_regs) {
        regs_hash = a64_regs_hash(vs, &ok);
    }
    if (vs->entry_pending) {
        /*
         * No kernel FP/SIMD code ran since the entry (it would have written
         * the entry already): a save stores the registers the task entered
         * with, and the entry takes its hash (a64_finish_pending()).
         */
        bool defer = fi->is_save && cfg.derive_regs;
        vcpu_materialize_entry(vs, vcpu_index, ok ? &regs_hash : NULL, defer);
    }
    event_begin(vs, vcpu_index, &ev, fi->kind, fi->vaddr, fi->a64.el);
    /* sve_save/sve_load address Z0 at -34 vector lengths from their base register. */
    vs->a64_va = sve ? base - 34ull * vl : base;
    ev.addr = vs->a64_va;
    ev.index = vl;
    ev.value = sve ? 3 : 1;     /* FP/SIMD, and the SVE extension */
    ev.xcr0 = 3;
    if (ok) {
        ev.regs_hash = regs_hash;
        ev.flags |= FTR_FLAG_REGS_VALID;
    }
    vs->a64_save = fi->is_save;
    vs->a64_hyp = fi->a64.hyp;
    vs->a64_placed = false;
    if (fi->is_save) {
        uint64_t ext;
        uint32_t bytes;
        /* What it held before the first save to it (an SVE buffer's FPSR/FPCR are elsewhere). */
        if (!sve && buffer_first_save(ev.addr) &&
            a64_buffer_hash(vs, false, ev.addr, 0, NULL, &ev.aux, &ext, &bytes)) {
            ev.flags |= FTR_FLAG_PRIOR_VALID;
        }
        vs->regs_dirty = 0;
    } else {
        uint32_t fpsr_fpcr[2];
        /* sve_load takes FPSR and FPCR from where its second argument points. */
        if ((!sve || mem_read(vs, a64_xreg(vs, 1), fpsr_fpcr, sizeof(fpsr_fpcr))) &&
            a64_buffer_hash(vs, sve, ev.addr, vl, fpsr_fpcr, &ev.mem_hash,
                            &ev.mem_ext_hash, &ev.mem_bytes)) {
            ev.mem_legacy_hash = ev.mem_hash;
            ev.flags |= FTR_FLAG_MEM_VALID;
            /* What a load reads is what the registers hold after it. */
            ev.regs_after_hash = ev.mem_hash;
            ev.flags |= FTR_FLAG_REGS_AFTER_VALID;
        }
        vs->last_regs = ev.regs_after_hash;
        vs->last_regs_ok = false;       /* until its last instruction (a64_seq_end_exec()) */
    }
    vs->pending_event = ev;
    vs->pending = true;
}

/*
 * The first instruction of a ZA save or load (RDSVL): its buffer. The ZA
 * array and ZT0 are state of their own, outside the register hash; the
 * content is hashed when the sequence is done (a64_za_finish()).
 */
static void a64_za_op_exec(unsigned int vcpu_index, void *udata)
{
    const struct fpu_insn *fi = udata;
    struct vcpu_state *vs = vcpu_get(vcpu_index);
    struct ftr_event ev;

    a64_finish_pending(vs, vcpu_index);
    if (vs->entry_pending) {
        bool ok;
        uint64_t regs_hash = a64_regs_hash(vs, &ok);
        vcpu_materialize_entry(vs, vcpu_index, ok ? &regs_hash : NULL, false);
    }
    event_begin(vs, vcpu_index, &ev, fi->kind, fi->vaddr, fi->a64.el);
    ev.addr = vs->a64_va = a64_xreg(vs, fi->a64.reg);
    vs->a64_save = fi->kind == FTR_KIND_SME_SAVE;
    vs->a64_hyp = fi->a64.hyp;
    vs->a64_za_insn = fi;
    vs->pending_event = ev;
    vs->pending = true;
}

/*
 * The first memory access of a save or load sequence: its physical address.
 * nVHE hypervisor code (EL2 without HCR_EL2.E2H) names buffers by its own
 * mapping of the kernel's linear map; they are given the kernel's address,
 * learnt from the linear-map buffers the kernel itself saves and loads.
 */
static void a64_state_mem(unsigned int vcpu_index, qemu_plugin_meminfo_t info,
                          uint64_t vaddr, void *udata G_GNUC_UNUSED)
{
    struct vcpu_state *vs = vcpu_get(vcpu_index);
    struct ftr_event *ev = &vs->pending_event;
    struct qemu_plugin_hwaddr *hw = qemu_plugin_get_hwaddr(info, vaddr);
    uint64_t phys, off, linear;

    if (!vs->pending || vs->a64_placed || !hw || qemu_plugin_hwaddr_is_io(hw)) {
        return;
    }
    vs->a64_placed = true;
    off = vaddr - vs->a64_va;
    phys = qemu_plugin_hwaddr_phys_addr(hw) - off;
    if (vs->a64_hyp) {
        linear = __atomic_load_n(&a64_linear_offset, __ATOMIC_RELAXED);
        if (linear) {
            ev->addr = phys + linear;
            ev->flags |= FTR_FLAG_ADDR_HYP;
        }
    } else if (ev->addr >= A64_LINEAR_START && ev->addr < A64_LINEAR_END) {
        __atomic_store_n(&a64_linear_offset, ev->addr - phys, __ATOMIC_RELAXED);
    }
}

/*
 * The instruction after a sequence: a save's stores are all done; after a
 * load the registers hold what it read.
 */
static void a64_seq_end_exec(unsigned int vcpu_index, void *udata G_GNUC_UNUSED)
{
    struct vcpu_state *vs = vcpu_get(vcpu_index);

    if (!vs->pending) {
        return;
    }
    if (!vs->a64_save && !vs->a64_za_insn) {
        vs->regs_dirty = 0;
        vs->last_regs_ok = (vs->pending_event.flags & FTR_FLAG_REGS_AFTER_VALID) != 0;
    }
    a64_finish_pending(vs, vcpu_index);
}

/* A write of an FP control register: which one it reaches, and old and new value. */
static void a64_msr_exec(unsigned int vcpu_index, void *udata)
{
    const struct fpu_insn *fi = udata;
    struct vcpu_state *vs = vcpu_get(vcpu_index);
    unsigned named = fi->a64.sysreg, el = fi->a64.el, reached = named;
    uint64_t hcr = reg_read_u64(vs, a64.hcr_el2), old, new;
    struct qemu_plugin_register *reg;
    struct ftr_event ev;
    uint8_t kind;

    /* With HCR_EL2.E2H, EL2 reaches the EL2 register by the EL1 name, EL1's by EL12. */
    if (el == 2 && (hcr & HCR_E2H)) {
        switch (named) {
        case SYSREG_CPACR_EL1: reached = SYSREG_CPTR_EL2; break;
        case SYSREG_ZCR_EL1: reached = SYSREG_ZCR_EL2; break;
        case SYSREG_SMCR_EL1: reached = SYSREG_SMCR_EL2; break;
        case SYSREG_CPACR_EL12: reached = SYSREG_CPACR_EL1; break;
        case SYSREG_ZCR_EL12: reached = SYSREG_ZCR_EL1; break;
        case SYSREG_SMCR_EL12: reached = SYSREG_SMCR_EL1; break;
        }
    }
    switch (reached) {
    case SYSREG_CPACR_EL1: kind = FTR_KIND_CPACR_WRITE; reg = a64.cpacr_el1; break;
    case SYSREG_CPTR_EL2: kind = FTR_KIND_CPTR_WRITE; reg = a64.cptr_el2; break;
    case SYSREG_ZCR_EL1: kind = FTR_KIND_ZCR_WRITE; reg = a64.zcr_el1; break;
    case SYSREG_ZCR_EL2: kind = FTR_KIND_ZCR_WRITE; reg = a64.zcr_el2; break;
    case SYSREG_SMCR_EL1: kind = FTR_KIND_SMCR_WRITE; reg = a64.smcr_el1; break;
    case SYSREG_SMCR_EL2: kind = FTR_KIND_SMCR_WRITE; reg = a64.smcr_el2; break;
    case SYSREG_SVCR: kind = FTR_KIND_SVCR_WRITE; reg = a64.svcr; break;
    default: return;            /* an EL12 name without E2H: UNDEFINED, it traps */
    }
    old = reg_read_u64(vs, reg);
    if (fi->a64.imm) {
        /* MSR SVCRSM/SVCRZA/SVCRSMZA, #imm (SMSTART, SMSTOP): CRm bit 0 is the value. */
        uint64_t bits = (fi->a64.crm >> 1) & 3, set = fi->a64.crm & 1;
        new = set ? old | bits : old & ~bits;
    } else {
        new = a64_xreg(vs, fi->a64.reg);
    }
    a64_finish_pending(vs, vcpu_index);
    event_begin(vs, vcpu_index, &ev, kind, fi->vaddr, el);
    if ((hcr & HCR_VM) && !(hcr & HCR_TGE) && el < 2) {
        ev.flags |= FTR_FLAG_L2;
    }
    ev.index = named | reached << 16;
    ev.value = new;
    ev.aux = old;
    vcpu_commit_event(vs, vcpu_index, &ev);
}

/* An identity for the guest vCPU that runs: stage-2 base and VMID, vCPU affinity. */
static uint64_t a64_guest_id(struct vcpu_state *vs)
{
    return (reg_read_u64(vs, a64.vttbr_el2) & ~0xfffull) |
           (reg_read_u64(vs, a64.vmpidr_el2) & 0xff) << 1 | 1;
}

static void a64_vm_exit(struct vcpu_state *vs, unsigned int vcpu_index, uint64_t pc,
                        uint64_t esr, unsigned vector)
{
    struct ftr_event ev;

    event_begin(vs, vcpu_index, &ev, FTR_KIND_VM_EXIT, pc, 2);
    vs->in_l2 = false;
    ev.flags &= ~FTR_FLAG_L2;
    if (vs->guest_fp_trapped) {
        ev.flags |= FTR_FLAG_GUEST_FP_TRAPPED;
    }
    ev.addr = vs->vmcb;
    ev.value = esr;
    ev.index = vector;
    event_read_regs(vs, &ev, true);
    vcpu_commit_event(vs, vcpu_index, &ev);
}

/*
 * An exception vector's first instruction (fi->a64: its EL and offset): an
 * FP/SIMD, SVE or SME access trap (a synchronous exception with ESR_ELx.EC
 * 0x07, 0x19 or 0x1d), a VM exit (to EL2 from the guest: HCR_EL2.VM
 * without TGE), or an entry from the host's user mode (to EL1, or to EL2
 * with HCR_EL2.TGE, i.e. VHE).
 */
static void a64_vector_exec(unsigned int vcpu_index, void *udata)
{
    const struct fpu_insn *fi = udata;
    struct vcpu_state *vs = vcpu_get(vcpu_index);
    unsigned offset = fi->a64.vector, el = fi->a64.el, ec = 0;
    bool sync = ((offset >> 7) & 3) == 0, from_lower = offset >= 0x400;
    uint64_t hcr = reg_read_u64(vs, a64.hcr_el2), esr = 0;
    bool guest_regime = (hcr & HCR_VM) && !(hcr & HCR_TGE);
    bool from_guest = guest_regime && (el < 2 || from_lower);

    /* The ZA loop branches back per row: an interrupt can come in between. */
    if (!vs->a64_za_insn) {
        a64_finish_pending(vs, vcpu_index);
    }
    if (sync) {
        esr = reg_read_u64(vs, el == 2 ? a64.esr_el2 : a64.esr_el1);
        ec = (esr >> 26) & 0x3f;
    }
    if (el == 2 && from_lower && guest_regime) {
        a64_vm_exit(vs, vcpu_index, fi->vaddr, esr, offset);
    }
    if (ec == ESR_EC_FP || ec == ESR_EC_SVE || ec == ESR_EC_SME) {
        struct ftr_event ev;
        event_begin(vs, vcpu_index, &ev, FTR_KIND_FP_TRAP,
                    reg_read_u64(vs, el == 2 ? a64.elr_el2 : a64.elr_el1), el);
        if (from_guest) {
            ev.flags |= FTR_FLAG_L2;
            ev.addr = vs->vmcb;
        }
        ev.value = esr;
        ev.index = offset;
        vcpu_commit_event(vs, vcpu_index, &ev);
    }
    if (from_lower && !guest_regime && (el == 1 || (hcr & HCR_TGE)) && vs->in_user) {
        /* An entry from the host's user mode (as vcpu_swapgs_exec() on x86). */
        vs->in_user = false;
        vs->last_regs_ok = false;
        vs->entry_seen = true;
        vs->entry_materialized = false;
        vs->entry_pc = reg_read_u64(vs, el == 2 ? a64.elr_el2 : a64.elr_el1);
        vs->entry_pl = el;
        vs->entry_task = vs->host_task;
        vs->entry_pending = 1;
    }
}

/*
 * ERET (fi->a64.el: the EL it runs at): into the guest (from EL2 with HCR_EL2.VM
 * and not TGE, to EL1 or EL0), or back to the host's user mode.
 */
static void a64_eret_exec(unsigned int vcpu_index, void *udata)
{
    const struct fpu_insn *fi = udata;
    struct vcpu_state *vs = vcpu_get(vcpu_index);
    unsigned el = fi->a64.el;
    uint64_t hcr = reg_read_u64(vs, a64.hcr_el2);
    bool guest_regime = (hcr & HCR_VM) && !(hcr & HCR_TGE);
    uint64_t spsr, target;

    if (el == 1 && guest_regime) {
        return;                 /* the guest's own return */
    }
    spsr = reg_read_u64(vs, el == 2 ? a64.spsr_el2 : a64.spsr_el1);
    target = (spsr >> 2) & 3;
    if (el == 2 && guest_regime && target < 2) {
        struct ftr_event ev;
        a64_finish_pending(vs, vcpu_index);
        event_begin(vs, vcpu_index, &ev, FTR_KIND_VM_ENTRY, fi->vaddr, 2);
        ev.addr = vs->vmcb = a64_guest_id(vs);
        /*
         * Whether the guest may use the FP/SIMD registers, or traps to EL2
         * first (KVM's lazy switch: __activate_traps() clears FPEN unless
         * guest_owns_fp_regs()). With HCR_EL2.E2H, CPTR_EL2 has CPACR's
         * layout (FPEN, bits 21:20, 0b11: no trap); without, TFP (bit 10).
         */
        {
            uint64_t cptr = reg_read_u64(vs, a64.cptr_el2);
            vs->guest_fp_trapped = (hcr & HCR_E2H) ? ((cptr >> 20) & 3) != 3
                                                   : (cptr >> 10) & 1;
        }
        if (vs->guest_fp_trapped) {
            ev.flags |= FTR_FLAG_GUEST_FP_TRAPPED;
        }
        /* The registers the guest starts with: its own unless trapped. */
        event_read_regs(vs, &ev, false);
        vs->last_regs_ok = false;
        vcpu_commit_event(vs, vcpu_index, &ev);
        vs->l1_task_at_entry = ev.task;
        vs->in_l2 = true;
        return;
    }
    if (target == 0 && !guest_regime && (el == 1 || (hcr & HCR_TGE))) {
        a64_finish_pending(vs, vcpu_index);
        vcpu_user_return(vs, vcpu_index, reg_read_u64(vs, el == 2 ? a64.elr_el2 : a64.elr_el1));
    }
}

/* ---- arm64 translation ------------------------------------------------ */

/*
 * Code ranges whose FP/SIMD instructions are the state handling itself:
 * the sequences recognised here, and the kernel's FP core functions the
 * recorder names (fpcode=ADDR:LEN). Their instructions are not kernel
 * SIMD use. Appended under insn_lock, read without it (a stale count only
 * misses the newest range).
 */
#define MAX_FP_CODE             64
static struct { uint64_t start, end; } fp_code[MAX_FP_CODE];
static unsigned n_fp_code;              /* atomic */

static bool fp_code_has(uint64_t pc)
{
    unsigned n = __atomic_load_n(&n_fp_code, __ATOMIC_ACQUIRE);

    for (unsigned i = 0; i < n; i++) {
        if (pc >= fp_code[i].start && pc < fp_code[i].end) {
            return true;
        }
    }
    return false;
}

static void fp_code_add(uint64_t start, uint64_t end)
{
    unsigned n = n_fp_code;

    if (fp_code_has(start) || n == MAX_FP_CODE) {
        return;
    }
    fp_code[n].start = start;
    fp_code[n].end = end;
    __atomic_store_n(&n_fp_code, n + 1, __ATOMIC_RELEASE);
}

/*
 * Whether an A64 instruction reads or writes FP/SIMD or SVE registers: the
 * "Data Processing -- Scalar Floating-Point and Advanced SIMD" group
 * (op0 x111), loads and stores with V set (op0 x1x0, bit 26), SVE (op0
 * 0010), and MSR to FPCR and FPSR. The kernel is built with
 * -mgeneral-regs-only: these appear only in kernel_neon_begin() sections
 * and in the FP core.
 */
static bool a64_is_fp_simd(uint32_t op)
{
    uint32_t op0 = (op >> 25) & 0xf;

    if ((op0 & 7) == 7 || op0 == 2) {
        return true;
    }
    if ((op0 & 5) == 4 && (op & (1u << 26))) {
        return true;
    }
    if ((op & 0xfff00000u) == 0xd5100000u) {        /* MSR, op0 = 3 */
        uint32_t sr = (op >> 5) & 0xffff;
        return sr == A64_SYSREG(3, 3, 4, 4, 0) || sr == A64_SYSREG(3, 3, 4, 4, 1);
    }
    return false;
}

/*
 * A ZA save or load sequence starting at op, RDSVL (see A64_SME_RDSVL_1).
 * Its base register is the one the first ZA store or load names.
 */
static uint8_t a64_za_seq_at(uint64_t vaddr, uint32_t op, struct a64_operands *ops,
                             unsigned *len)
{
    uint32_t next[8];
    unsigned v = op & 31, w, n;
    bool save;
    g_autoptr(GByteArray) buf = g_byte_array_new();

    if (!qemu_plugin_read_memory_vaddr(vaddr + 4, buf, sizeof(next)) ||
        buf->len < sizeof(next)) {
        return 0;
    }
    memcpy(next, buf->data, sizeof(next));
    w = next[0] & 31;
    n = (next[1] >> 5) & 31;
    if ((next[0] & ~31u) != A64_MOVZ_W_0 || w < 12 || w > 15) {
        return 0;
    }
    save = next[1] == (A64_SME_STR_ZA | (w & 3) << 13 | n << 5);
    if ((!save && next[1] != (A64_SME_LDR_ZA | (w & 3) << 13 | n << 5)) ||
        next[2] != (A64_ADD_X_REG | v << 16 | n << 5 | n) ||
        next[3] != (A64_ADD_X_1 | w << 5 | w) ||
        next[4] != (A64_CMP_X_REG | w << 16 | v << 5) ||
        next[5] != A64_BNE_BACK_4) {
        return 0;
    }
    ops->reg = n;
    ops->vl_reg = v;
    ops->zt_reg = A64_ZT_NONE;
    *len = 4 * 7;
    if ((next[6] & ~31u) == A64_CBZ_W_FWD_2 &&
        next[7] == ((save ? A64_SME_STR_ZT0 : A64_SME_LDR_ZT0) | n << 5)) {
        ops->zt_reg = next[6] & 31;
        *len = 4 * 9;
    }
    return save ? FTR_KIND_SME_SAVE : FTR_KIND_SME_LOAD;
}

/*
 * A save or load sequence starting at op, checked against the instructions
 * that follow in memory. Returns its kind, in ops its base register (and
 * for ZA its other registers), and in *len the bytes up to the instruction
 * after it.
 */
static uint8_t a64_seq_at(uint64_t vaddr, uint32_t op, struct a64_operands *ops,
                          unsigned *len)
{
    uint32_t next[16];
    unsigned n = (op >> 5) & 31;
    g_autoptr(GByteArray) buf = g_byte_array_new();

    if ((op & ~31u) == A64_SME_RDSVL_1) {
        return a64_za_seq_at(vaddr, op, ops, len);
    }
    ops->reg = n;
    if (op == a64_pair_q(A64_STP_Q_OFF, 0, n, 0) || op == a64_pair_q(A64_LDP_Q_OFF, 0, n, 0)) {
        bool save = op == a64_pair_q(A64_STP_Q_OFF, 0, n, 0);
        /* stp/ldp q2k, q2k+1, [xN, #32k] for k = 1..14, then k = 15 with writeback. */
        if (!qemu_plugin_read_memory_vaddr(vaddr + 4, buf, sizeof(next)) ||
            buf->len < sizeof(next)) {
            return 0;
        }
        memcpy(next, buf->data, sizeof(next));
        for (unsigned k = 1; k < 16; k++) {
            uint32_t form = save ? (k < 15 ? A64_STP_Q_OFF : A64_STP_Q_PRE)
                                 : (k < 15 ? A64_LDP_Q_OFF : A64_LDP_Q_PRE);
            if (next[k - 1] != a64_pair_q(form, 2 * k, n, 2 * k)) {
                return 0;
            }
        }
        /*
         * fpsimd_save: 16 pairs, mrs/str FPSR, mrs/str FPCR. fpsimd_restore:
         * 16 pairs, ldr/msr FPSR, ldr FPCR and fpsimd_restore_fpcr (mrs, cmp,
         * b.eq over the msr).
         */
        *len = 4 * (save ? 20 : 23);
        return save ? FTR_KIND_FPSIMD_SAVE : FTR_KIND_FPSIMD_LOAD;
    }
    if (op == a64_sve_z(A64_SVE_STR_Z, 0, n, -34) || op == a64_sve_z(A64_SVE_LDR_Z, 0, n, -34)) {
        bool save = op == a64_sve_z(A64_SVE_STR_Z, 0, n, -34);
        if (!qemu_plugin_read_memory_vaddr(vaddr + 4, buf, sizeof(next)) ||
            buf->len < sizeof(next)) {
            return 0;
        }
        memcpy(next, buf->data, sizeof(next));
        for (unsigned k = 1; k < 16; k++) {
            if (next[k - 1] != a64_sve_z(save ? A64_SVE_STR_Z : A64_SVE_LDR_Z, k, n, k - 34)) {
                return 0;
            }
        }
        /*
         * sve_save: 32 Z and 16 P stores, then FFR behind a branch; the Z
         * and P registers are all stored at the branch. sve_load: 32 Z
         * loads, FFR and 16 P loads, FPSR and FPCR: the loads are done when
         * it returns (its caller's next instruction is not known here).
         */
        *len = 4 * (save ? 48 : 0);
        return save ? FTR_KIND_SVE_SAVE : FTR_KIND_SVE_LOAD;
    }
    return 0;
}

static const struct fpu_insn *a64_intern(const struct fpu_insn *fi, uint32_t op)
{
    uint8_t keybuf[sizeof(fi->vaddr) + 2 + sizeof(op)];
    g_autoptr(GBytes) key = NULL;
    struct fpu_insn *found;

    memcpy(keybuf, &fi->vaddr, sizeof(fi->vaddr));
    keybuf[sizeof(fi->vaddr)] = 0xa6;                   /* not an x86 mode */
    keybuf[sizeof(fi->vaddr) + 1] = fi->a64.el;        /* the EL */
    memcpy(keybuf + sizeof(fi->vaddr) + 2, &op, sizeof(op));
    key = g_bytes_new(keybuf, sizeof(keybuf));
    g_mutex_lock(&insn_lock);
    found = g_hash_table_lookup(insn_table, key);
    if (!found) {
        found = g_memdup2(fi, sizeof(*fi));
        g_hash_table_insert(insn_table, g_bytes_ref(key), found);
    }
    g_mutex_unlock(&insn_lock);
    return found;
}

static bool a64_is_fp_sysreg(unsigned sr)
{
    switch (sr) {
    case SYSREG_CPACR_EL1: case SYSREG_CPACR_EL12: case SYSREG_CPTR_EL2:
    case SYSREG_ZCR_EL1: case SYSREG_ZCR_EL2: case SYSREG_ZCR_EL12:
    case SYSREG_SMCR_EL1: case SYSREG_SMCR_EL2: case SYSREG_SMCR_EL12:
    case SYSREG_SVCR:
        return true;
    }
    return false;
}

static void a64_instrument(struct qemu_plugin_insn *insn, uint64_t vaddr, uint32_t op,
                           unsigned el, bool hyp)
{
    struct fpu_insn fi = { .vaddr = vaddr, .len = 4, .a64.hyp = hyp };
    const struct fpu_insn *shared;
    unsigned len;

    fi.a64.el = el;
    if (op == A64_INSN_ERET || op == A64_INSN_ERETAA || op == A64_INSN_ERETAB) {
        shared = a64_intern(&fi, op);
        qemu_plugin_register_vcpu_insn_exec_cb(insn, a64_eret_exec, QEMU_PLUGIN_CB_R_REGS,
                                               (void *)shared);
        return;
    }
    if ((op & 0xfff00000u) == 0xd5100000u) {            /* MSR (register), op0 = 3 */
        unsigned sr = (op >> 5) & 0xffff;
        fi.a64.reg = op & 31;
        fi.a64.sysreg = sr;
        if (sr == SYSREG_SP_EL0) {
            qemu_plugin_register_vcpu_insn_exec_cb(insn, a64_sp_el0_exec, QEMU_PLUGIN_CB_R_REGS,
                                                   (void *)(uintptr_t)fi.a64.reg);
        } else if (a64_is_fp_sysreg(sr)) {
            shared = a64_intern(&fi, op);
            qemu_plugin_register_vcpu_insn_exec_cb(insn, a64_msr_exec, QEMU_PLUGIN_CB_R_REGS,
                                                   (void *)shared);
        }
        return;
    }
    if ((op & 0xfffff0ffu) == 0xd503407fu && ((op >> 9) & 3) != 0) {
        /* MSR SVCRSM/SVCRZA/SVCRSMZA, #imm: op1 3, CRn 4, CRm 0b0xx?, op2 3. */
        fi.a64.sysreg = SYSREG_SVCR;
        fi.a64.crm = (op >> 8) & 0xf;
        fi.a64.imm = true;
        shared = a64_intern(&fi, op);
        qemu_plugin_register_vcpu_insn_exec_cb(insn, a64_msr_exec, QEMU_PLUGIN_CB_R_REGS,
                                               (void *)shared);
        return;
    }
    fi.kind = a64_seq_at(vaddr, op, &fi.a64, &len);
    if (!fi.kind) {
        return;
    }
    if (fi.kind == FTR_KIND_SME_SAVE || fi.kind == FTR_KIND_SME_LOAD) {
        shared = a64_intern(&fi, op);
        g_mutex_lock(&insn_lock);
        fp_code_add(vaddr, vaddr + len);
        site_add(vaddr + len, SITE_SEQ_END);
        g_mutex_unlock(&insn_lock);
        qemu_plugin_register_vcpu_insn_exec_cb(insn, a64_za_op_exec, QEMU_PLUGIN_CB_R_REGS,
                                               (void *)shared);
        return;
    }
    fi.is_save = ftr_kind_role(fi.kind) == FTR_ROLE_SAVE;
    fi.is_restore = !fi.is_save;
    shared = a64_intern(&fi, op);
    g_mutex_lock(&insn_lock);
    fp_code_add(vaddr, vaddr + (len ? len : 4 * 64));
    if (len) {
        site_add(vaddr + len, SITE_SEQ_END);
    }
    g_mutex_unlock(&insn_lock);
    qemu_plugin_register_vcpu_insn_exec_cb(insn, a64_state_op_exec, QEMU_PLUGIN_CB_R_REGS,
                                           (void *)shared);
    qemu_plugin_register_vcpu_mem_cb(insn, a64_state_mem, QEMU_PLUGIN_CB_NO_REGS,
                                     fi.is_save ? QEMU_PLUGIN_MEM_W : QEMU_PLUGIN_MEM_R,
                                     (void *)shared);
}

static void a64_tb_trans(struct qemu_plugin_tb *tb)
{
    size_t n = qemu_plugin_tb_n_insns(tb);
    unsigned el = (translation_reg_u64(a64.cpsr) >> 2) & 3;
    uint64_t vbar = 0, hcr = 0;
    bool host_kernel;

    if (el == 0) {
        /* User code: only whether it may change the FP/SIMD registers. */
        for (size_t i = 0; i < n && cfg.derive_regs; i++) {
            struct qemu_plugin_insn *insn = qemu_plugin_tb_get_insn(tb, i);
            uint32_t op = 0;
            qemu_plugin_insn_data(insn, &op, sizeof(op));
            if (a64_is_fp_simd(op)) {
                qemu_plugin_register_vcpu_insn_exec_inline_per_vcpu(
                    insn, QEMU_PLUGIN_INLINE_STORE_U64, regs_dirty_entry, 1);
            }
        }
        return;
    }
    hcr = translation_reg_u64(a64.hcr_el2);
    vbar = translation_reg_u64(el == 2 ? a64.vbar_el2 : a64.vbar_el1);
    /* The host kernel: EL1 outside a guest, or EL2 with E2H (VHE); not nVHE's hypervisor. */
    host_kernel = el == 1 ? !(hcr & HCR_VM) || (hcr & HCR_TGE) : (hcr & HCR_E2H) != 0;
    for (size_t i = 0; i < n; i++) {
        struct qemu_plugin_insn *insn = qemu_plugin_tb_get_insn(tb, i);
        uint64_t vaddr = qemu_plugin_insn_vaddr(insn);
        uint32_t op = 0;
        uint32_t site = site_lookup(vaddr);

        qemu_plugin_insn_data(insn, &op, sizeof(op));
        if (site & SITE_SEQ_END) {
            qemu_plugin_register_vcpu_insn_exec_cb(insn, a64_seq_end_exec,
                                                   QEMU_PLUGIN_CB_R_REGS, NULL);
        }
        if (vbar && vaddr - vbar < 0x800 && !((vaddr - vbar) & 0x7f)) {
            struct fpu_insn fi = { .vaddr = vaddr, .len = 4 };
            fi.a64.el = el;
            fi.a64.vector = vaddr - vbar;
            qemu_plugin_register_vcpu_insn_exec_cb(insn, a64_vector_exec, QEMU_PLUGIN_CB_R_REGS,
                                                   (void *)a64_intern(&fi, op));
        }
        if (cfg.n_probes && host_kernel) {
            const struct probe *pr = probe_lookup(vaddr);
            if (pr) {
                qemu_plugin_register_vcpu_insn_exec_cb(insn, vcpu_probe_exec,
                                                       QEMU_PLUGIN_CB_R_REGS, (void *)pr);
            }
        }
        if (a64_is_fp_simd(op) && !fp_code_has(vaddr)) {
            if (cfg.derive_regs) {
                qemu_plugin_register_vcpu_insn_exec_inline_per_vcpu(
                    insn, QEMU_PLUGIN_INLINE_STORE_U64, regs_dirty_entry, 1);
            }
            if (host_kernel) {
                if (cfg.boundaries) {
                    qemu_plugin_register_vcpu_insn_exec_cond_cb(
                        insn, vcpu_simd_after_entry_exec, QEMU_PLUGIN_CB_R_REGS,
                        QEMU_PLUGIN_COND_EQ, entry_pending_entry, 1, NULL);
                }
                qemu_plugin_register_vcpu_insn_exec_inline_per_vcpu(
                    insn, QEMU_PLUGIN_INLINE_STORE_U64, kernel_simd_entry, vaddr);
            }
        }
        a64_instrument(insn, vaddr, op, el, el == 2 && !(hcr & HCR_E2H));
    }
}

static void a64_regs_resolve(void)
{
    static const struct {
        const char *name;
        struct qemu_plugin_register **handle;
    } named[] = {
        { "cpsr", &a64.cpsr }, { "fpsr", &a64.fpsr }, { "fpcr", &a64.fpcr },
        { "vg", &a64.vg }, { "HCR_EL2", &a64.hcr_el2 }, { "ESR_EL1", &a64.esr_el1 },
        { "ESR_EL2", &a64.esr_el2 }, { "ELR_EL1", &a64.elr_el1 }, { "ELR_EL2", &a64.elr_el2 },
        { "SPSR_EL1", &a64.spsr_el1 }, { "SPSR_EL2", &a64.spsr_el2 },
        { "VBAR", &a64.vbar_el1 }, { "VBAR_EL2", &a64.vbar_el2 },
        { "VTTBR_EL2", &a64.vttbr_el2 }, { "VMPIDR_EL2", &a64.vmpidr_el2 },
        { "SVCR", &a64.svcr }, { "CPACR", &a64.cpacr_el1 }, { "CPTR_EL2", &a64.cptr_el2 },
        { "ZCR_EL1", &a64.zcr_el1 }, { "ZCR_EL2", &a64.zcr_el2 },
        { "SMCR_EL1", &a64.smcr_el1 }, { "SMCR_EL2", &a64.smcr_el2 },
    };
    g_autoptr(GArray) list = qemu_plugin_get_registers();

    for (guint i = 0; i < list->len; i++) {
        qemu_plugin_reg_descriptor *rd = &g_array_index(list, qemu_plugin_reg_descriptor, i);
        const char *nm = rd->name;
        int k;
        char tail;

        for (k = 0; k < (int)G_N_ELEMENTS(named); k++) {
            if (!g_ascii_strcasecmp(nm, named[k].name)) {
                *named[k].handle = rd->handle;
            }
        }
        if (sscanf(nm, "x%d%c", &k, &tail) == 1 && k >= 0 && k < 31) {
            a64.x[k] = rd->handle;
        } else if (sscanf(nm, "z%d%c", &k, &tail) == 1 && k >= 0 && k < 32) {
            a64.z[k] = rd->handle;
        }
    }
}

/* AAPCS64: x0, x1, x2. */
static void a64_probe_args(struct vcpu_state *vs, uint64_t args[3])
{
    for (unsigned i = 0; i < 3; i++) {
        args[i] = a64_xreg(vs, i);
    }
}

static const struct arch_ops a64_ops = {
    .user_pl = 0,
    .privilege = a64_el,
    .current_task = a64_current_task,
    .current_ptr = a64_current_ptr,
    .regs_hash = a64_regs_hash,
    .finish_pending = a64_finish_pending,
    .probe_args = a64_probe_args,
    .tb_trans = a64_tb_trans,
    .regs_resolve = a64_regs_resolve,
};

/* ---- callbacks -------------------------------------------------------- */

static void vcpu_tb_trans(qemu_plugin_id_t id G_GNUC_UNUSED, struct qemu_plugin_tb *tb)
{
    arch->tb_trans(tb);
}

static void vcpu_init(qemu_plugin_id_t id G_GNUC_UNUSED, unsigned int vcpu_index)
{
    struct vcpu_state *vs = vcpu_get(vcpu_index);

    g_mutex_lock(&insn_lock);
    if (!regs.resolved) {
        arch->regs_resolve();
        regs.resolved = true;
    }
    g_mutex_unlock(&insn_lock);
    /* x86: XCR0's reset value, x87 only; arm64: FP/SIMD and SVE (a save's `value`). */
    vs->xcr0 = arch == &a64_ops ? 3 : 1;
    vs->events = g_new0(struct ftr_event, cfg.block_events);
    vs->tasks = g_new0(struct ftr_task, cfg.block_events);
    vs->scratch = g_byte_array_new();
    vs->image = g_new0(struct xsave_image, 1);
}

static void plugin_exit(qemu_plugin_id_t id G_GNUC_UNUSED, void *udata G_GNUC_UNUSED)
{
    g_autofree struct ftr_footer *footer = g_new0(struct ftr_footer, 1);
    int n = qemu_plugin_num_vcpus();

    for (int i = 0; i < n; i++) {
        struct vcpu_state *vs = vcpu_get(i);
        if (!vs->events) {
            continue;
        }
        arch->finish_pending(vs, i);
        vcpu_flush_tasks(vs, i);
        vcpu_flush_events(vs, i);
        for (int k = 0; k < FTR_KIND_MAX; k++) {
            footer->events_by_kind[k] += vs->events_by_kind[k];
            footer->events_total += vs->events_by_kind[k];
        }
        footer->tasks_total += vs->tasks_total;
    }
    /* The footer block counts the blocks before it. */
    footer->blocks_total = __atomic_load_n(&blocks_written, __ATOMIC_RELAXED);
    footer->write_errors = __atomic_load_n(&write_errors, __ATOMIC_RELAXED);
    trace_write_block(FTR_BLOCK_FOOTER, 0, footer, 1, sizeof(*footer));
    fsync(cfg.fd);
    close(cfg.fd);
    cfg.fd = -1;
}

/* ---- arguments ----------------------------------------------------- */

static bool parse_u64(const char *s, uint64_t *out)
{
    char *end;

    errno = 0;
    *out = g_ascii_strtoull(s, &end, 0);
    return *s && !*end && !errno;
}

static bool parse_offset(const char *s, int64_t *out)
{
    uint64_t v;

    if (!parse_u64(s, &v) || v > 0x100000) {
        return false;
    }
    *out = v;
    return true;
}

static bool parse_arg(const char *arg)
{
    g_auto(GStrv) kv = g_strsplit(arg, "=", 2);
    const char *k = kv[0], *v = kv[1];
    uint64_t n;

    if (!v) {
        return false;
    }
    if (!strcmp(k, "out")) {
        g_free(cfg.path);
        cfg.path = g_strdup(v);
        return true;
    }
    if (!strcmp(k, "current")) {
        return parse_u64(v, &cfg.current_addr);
    }
    if (!strcmp(k, "task_pid")) {
        return parse_offset(v, &cfg.task_pid_off);
    }
    if (!strcmp(k, "task_tgid")) {
        return parse_offset(v, &cfg.task_tgid_off);
    }
    if (!strcmp(k, "task_comm")) {
        return parse_offset(v, &cfg.task_comm_off);
    }
    if (!strcmp(k, "msr")) {
        if (!parse_u64(v, &n) || n > 0xffffffffull ||
            cfg.n_extra_msrs == MAX_EXTRA_MSRS) {
            return false;
        }
        cfg.extra_msrs[cfg.n_extra_msrs++] = n;
        return true;
    }
    if (!strcmp(k, "kernel")) {
        g_free(cfg.kernel_id);
        cfg.kernel_id = g_strdup(v);
        return true;
    }
    if (!strcmp(k, "qemu")) {
        g_free(cfg.qemu_id);
        cfg.qemu_id = g_strdup(v);
        return true;
    }
    if (!strcmp(k, "probe")) {
        g_auto(GStrv) parts = g_strsplit(v, ":", 2);
        uint64_t pc, pid;
        if (!parts[1] || !parse_u64(parts[0], &pc) || !parse_u64(parts[1], &pid) ||
            pid == 0 || pid >= FTR_PROBE_MAX || cfg.n_probes == MAX_PROBES) {
            return false;
        }
        cfg.probes[cfg.n_probes++] = (struct probe){ .pc = pc, .id = pid };
        return true;
    }
    if (!strcmp(k, "boundaries")) {
        return qemu_plugin_bool_parse(k, v, &cfg.boundaries);
    }
    if (!strcmp(k, "regs")) {
        if (strcmp(v, "derive") && strcmp(v, "read")) {
            return false;
        }
        cfg.derive_regs = !strcmp(v, "derive");
        return true;
    }
    if (!strcmp(k, "fpcode")) {
        g_auto(GStrv) parts = g_strsplit(v, ":", 2);
        uint64_t start, len;
        if (!parts[1] || !parse_u64(parts[0], &start) || !parse_u64(parts[1], &len) ||
            !len || len > 0x100000 || n_fp_code == MAX_FP_CODE) {
            return false;
        }
        fp_code_add(start, start + len);
        return true;
    }
    if (!strcmp(k, "block_events")) {
        if (!parse_u64(v, &n) || n < 1 || n > 65536) {
            return false;
        }
        cfg.block_events = n;
        return true;
    }
    return false;
}

QEMU_PLUGIN_EXPORT int qemu_plugin_install(qemu_plugin_id_t id,
                                           const qemu_info_t *info,
                                           int argc, char **argv)
{
    if (!strcmp(info->target_name, "x86_64")) {
        arch = &x86_ops;
    } else if (!strcmp(info->target_name, "aarch64")) {
        arch = &a64_ops;
    } else {
        fprintf(stderr, "fputrace: target %s is not supported (x86_64, aarch64)\n",
                info->target_name);
        return -1;
    }
    cfg.target = info->target_name;
    for (int i = 0; i < argc; i++) {
        if (!parse_arg(argv[i])) {
            fprintf(stderr, "fputrace: bad plugin argument '%s'\n", argv[i]);
            return -1;
        }
    }
    if (!cfg.path) {
        fprintf(stderr, "fputrace: missing argument out=PATH\n");
        return -1;
    }
    {
        /* argv is argc long, not NULL-terminated: g_strjoinv() would run off its end. */
        g_autoptr(GString) joined = g_string_new(NULL);
        for (int i = 0; i < argc; i++) {
            g_string_append_printf(joined, "%s%s", i ? "," : "", argv[i]);
        }
        cfg.args = g_string_free(g_steal_pointer(&joined), FALSE);
    }
    cfg.fd = open(cfg.path, O_WRONLY | O_CREAT | O_TRUNC | O_APPEND | O_CLOEXEC, 0644);
    if (cfg.fd < 0) {
        fprintf(stderr, "fputrace: cannot create %s: %s\n", cfg.path, strerror(errno));
        return -1;
    }
    if (!trace_write_header(info->version.cur)) {
        fprintf(stderr, "fputrace: cannot write %s: %s\n", cfg.path, strerror(errno));
        return -1;
    }
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
    insn_table = g_hash_table_new_full(g_bytes_hash, g_bytes_equal,
                                       (GDestroyNotify)g_bytes_unref, g_free);
    vcpus = qemu_plugin_scoreboard_new(sizeof(struct vcpu_state));
    kernel_simd_entry = qemu_plugin_scoreboard_u64_in_struct(vcpus, struct vcpu_state,
                                                             kernel_simd);
    entry_pending_entry = qemu_plugin_scoreboard_u64_in_struct(vcpus, struct vcpu_state,
                                                               entry_pending);
    regs_dirty_entry = qemu_plugin_scoreboard_u64_in_struct(vcpus, struct vcpu_state,
                                                            regs_dirty);
    qemu_plugin_register_vcpu_init_cb(id, vcpu_init);
    qemu_plugin_register_vcpu_tb_trans_cb(id, vcpu_tb_trans);
    qemu_plugin_register_atexit_cb(id, plugin_exit, NULL);
    return 0;
}
