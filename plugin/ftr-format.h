/*
 * ftr-format.h: the fputrace trace format, the one definition of its bytes.
 *
 * Included by the plugin (plugin/fputrace.c, the writer) and by the
 * analyzers' compiled pass (analyzers/native/fpanalysis.c). The Python
 * reader mirrors it in fputrace/trace/format.py, and tests/test_format_abi.py
 * checks the mirror against a program compiled from this header.
 * docs/trace-format.md explains every field.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#ifndef FTR_FORMAT_H
#define FTR_FORMAT_H

#include <stdint.h>

#define FTR_MAGIC               "FPUTRACE"
/*
 * Version 3 added the header and block-header checksums (fields that were
 * reserved zeros in version 2), so a version 2 reader still decodes it.
 */
#define FTR_VERSION             3
#define FTR_MIN_READER_VERSION  2
#define FTR_BLOCK_MAGIC         0x4b425446u     /* "FTBK" */

#define FTR_FEAT_MEM_HASH       (1u << 0)
#define FTR_FEAT_REGS_HASH      (1u << 1)
#define FTR_FEAT_TASKS          (1u << 2)
#define FTR_FEAT_BOUNDARIES     (1u << 3)       /* user entry/return events */
#define FTR_FEAT_PROBES         (1u << 4)       /* kernel function probes */

enum ftr_arch {
    FTR_ARCH_X86_64 = 1,
    FTR_ARCH_AARCH64 = 2,
};

enum ftr_block_type {
    FTR_BLOCK_EVENTS = 1,
    FTR_BLOCK_TASKS = 2,
    FTR_BLOCK_FOOTER = 3,
};

/* Event kinds. Numbers are part of the format: never reuse one. */
enum ftr_kind {
    FTR_KIND_XSAVE = 1,
    FTR_KIND_XSAVEOPT = 2,
    FTR_KIND_XSAVEC = 3,
    FTR_KIND_XSAVES = 4,
    FTR_KIND_XRSTOR = 5,
    FTR_KIND_XRSTORS = 6,
    FTR_KIND_FXSAVE = 7,
    FTR_KIND_FXRSTOR = 8,
    FTR_KIND_XSETBV = 9,
    FTR_KIND_WRMSR_XFD = 10,
    FTR_KIND_WRMSR_XFD_ERR = 11,
    FTR_KIND_WRMSR = 12,
    FTR_KIND_VM_ENTRY = 13,
    FTR_KIND_VM_EXIT = 14,
    FTR_KIND_USER_ENTRY = 15,
    FTR_KIND_USER_RETURN = 16,
    FTR_KIND_PROBE = 17,
    /* 32..63 are reserved for arm64. */
    FTR_KIND_FP_TRAP = 32,
    FTR_KIND_CPACR_WRITE = 33,
    FTR_KIND_CPTR_WRITE = 34,
    FTR_KIND_ZCR_WRITE = 35,
    FTR_KIND_FPSIMD_SAVE = 36,
    FTR_KIND_FPSIMD_LOAD = 37,
    FTR_KIND_SVE_SAVE = 38,
    FTR_KIND_SVE_LOAD = 39,
    FTR_KIND_SMCR_WRITE = 40,
    FTR_KIND_SVCR_WRITE = 41,       /* MSR SVCR / SMSTART / SMSTOP */
    FTR_KIND_SME_SAVE = 42,         /* ZA (and ZT0): the kernel's sme_save_za sequence */
    FTR_KIND_SME_LOAD = 43,
    FTR_KIND_MAX = 64,
};

/*
 * What a probe event's function does to FPU state (event field `index`).
 * The recorder maps kernel symbols to these (fputrace/kernel/probes.py).
 */
enum ftr_probe {
    FTR_PROBE_FORK_COPY = 1,        /* fpu_clone / fpu__copy: arg0 = child task */
    FTR_PROBE_EXEC_RESET = 2,       /* fpu_flush_thread / fpu__clear_all */
    FTR_PROBE_TASK_EXIT = 3,        /* exit_thread: the task's FPU context ends */
    FTR_PROBE_SIGFRAME_SAVE = 4,    /* copy_fpstate_to_sigframe */
    FTR_PROBE_SIGRETURN = 5,        /* fpu__restore_sig */
    FTR_PROBE_REGSET_SET = 6,       /* xstateregs_set, xfpregs_set, fpregs_set */
    FTR_PROBE_KVM_FPSTATE_ALLOC = 7,/* fpu_alloc_guest_fpstate */
    FTR_PROBE_KVM_FPSTATE_FREE = 8, /* fpu_free_guest_fpstate */
    FTR_PROBE_KVM_UABI_SET = 9,     /* KVM_SET_XSAVE(2)/KVM_SET_FPU copies into guest state */
    FTR_PROBE_KVM_UABI_GET = 10,    /* KVM_GET_XSAVE(2)/KVM_GET_FPU copies out of it */
    FTR_PROBE_KFPU_BEGIN = 11,      /* kernel_fpu_begin_mask / kernel_fpu_begin */
    FTR_PROBE_KFPU_END = 12,        /* kernel_fpu_end */
    FTR_PROBE_KVM_VCPU_RESET = 13,  /* kvm_vcpu_reset: guest FPU state reset */
    FTR_PROBE_KVM_EMULATE_SSE = 14, /* instruction emulation writing guest SSE registers */
    FTR_PROBE_FPSTATE_FREE = 15,    /* fpstate_free */
    FTR_PROBE_RESTORE_FAULT = 16,   /* a faulting restore: the init state is loaded instead */
    FTR_PROBE_KVM_LOAD_FP = 17,     /* arm64 kvm_arch_vcpu_load_fp: a vCPU is loaded */
    FTR_PROBE_KVM_PUT_FP = 18,      /* arm64 kvm_arch_vcpu_put_fp: a vCPU is put */
    FTR_PROBE_MAX = 32,
};

#define FTR_FLAG_PL_MASK        0x003   /* CPL (x86) or EL (arm64) */
#define FTR_FLAG_L2             0x004   /* executed inside the nested guest */
#define FTR_FLAG_FORM64         0x008   /* REX.W form (xsave64, ...) */
#define FTR_FLAG_TASK_VALID     0x010
#define FTR_FLAG_MEM_VALID      0x020   /* memory accesses were observed */
#define FTR_FLAG_REGS_VALID     0x040
#define FTR_FLAG_KERNEL_SIMD    0x080   /* kernel code used FP/SIMD since the last event */
#define FTR_FLAG_REGS_AFTER_VALID 0x100 /* regs_after_hash was read */
#define FTR_FLAG_QUIET          0x200   /* user return: no FP activity since the entry */
#define FTR_FLAG_NO_ENTRY       0x400   /* user return: no entry seen on this vCPU before */
#define FTR_FLAG_PRIOR_VALID    0x800   /* save: aux holds the buffer's content hash before it */
#define FTR_FLAG_ADDR_UNVERIFIED 0x1000 /* no memory access fell in the area at addr: the
                                         * content hashes and byte counts are not valid */
/* How the save/restore's effective address was formed (version 3). */
#define FTR_FLAG_ADDR_SIZE_MASK 0x6000
#define FTR_FLAG_ADDR_SIZE_SHIFT 13
#define FTR_FLAG_ADDR_HYP       0x8000  /* arm64: an nVHE hypervisor address, given as the
                                         * kernel address of the same memory */
#define FTR_FLAG_GUEST_FP_TRAPPED 0x10000 /* arm64 VM entry/exit: the guest ran with its FP/SIMD
                                         * access trapped to EL2: the registers were not its */
enum ftr_addr_size {
    FTR_ADDR_64 = 0,            /* 64-bit mode */
    FTR_ADDR_32 = 1,            /* 32-bit addressing: protected or compatibility mode, or 0x67 */
    FTR_ADDR_16 = 2,            /* 16-bit addressing: real, virtual-8086, 16-bit segments */
};

/* Kernel text lies in the top 2 GiB: a SIMD pc is stored as its low half. */
#define FTR_KERNEL_TEXT_HIGH    0xffffffff00000000ull

struct ftr_event {
    uint64_t seq;
    uint64_t pc;
    uint64_t task;
    uint64_t addr;
    uint64_t value;
    uint64_t xcr0;
    uint64_t mem_hash;          /* content bytes below 832: x87, SSE, AVX */
    uint64_t mem_legacy_hash;   /* content bytes below 512: x87, SSE */
    uint64_t mem_ext_hash;      /* content bytes from 832: MPX, AVX-512, PKRU... */
    uint64_t regs_hash;         /* register file before the instruction */
    uint64_t regs_after_hash;   /* restores: register file right after it */
    uint64_t xstate_bv;         /* XSTATE_BV stored (save) or loaded (restore) */
    uint64_t aux;
    uint32_t index;
    uint32_t mem_bytes;
    uint32_t mem_features;
    uint32_t flags;
    uint16_t vcpu;
    uint8_t kind;
    uint8_t reserved8;
    uint32_t simd_pc;           /* KERNEL_SIMD: low half of the last such pc */
};

struct ftr_task {
    uint64_t seq;
    uint64_t task;
    uint32_t pid;
    uint32_t tgid;
    char comm[16];
    uint16_t vcpu;
    uint16_t flags;
    uint32_t reserved;
};

struct ftr_block_header {
    uint32_t magic;
    uint16_t type;
    uint16_t vcpu;
    uint32_t count;
    uint32_t payload_size;
    uint32_t crc32;             /* CRC-32C of the payload */
    uint32_t header_crc32;      /* CRC-32C of the 20 bytes above (version 3) */
};

/*
 * The file header's fixed part; identity strings follow it. header_crc32 is
 * the CRC-32C of the whole header (header_size bytes, padding included) with
 * this field taken as zero (version 3; 0 in version 2).
 */
struct ftr_file_header {
    char magic[8];
    uint16_t version;
    uint16_t min_reader_version;
    uint32_t header_size;
    uint64_t features;
    uint16_t arch;
    uint16_t event_size;
    uint16_t task_size;
    uint16_t reserved;
    uint32_t plugin_api;
    uint32_t header_crc32;
};

struct ftr_footer {
    uint64_t events_total;
    uint64_t tasks_total;
    uint64_t blocks_total;
    uint64_t write_errors;
    uint64_t events_by_kind[FTR_KIND_MAX];
};

_Static_assert(sizeof(struct ftr_event) == 128, "event record is 128 bytes");
_Static_assert(sizeof(struct ftr_task) == 48, "task record is 48 bytes");
_Static_assert(sizeof(struct ftr_block_header) == 24, "block header is 24 bytes");
_Static_assert(sizeof(struct ftr_file_header) == 40, "fixed file header is 40 bytes");
_Static_assert(sizeof(struct ftr_footer) == 544, "footer is 544 bytes");

#endif /* FTR_FORMAT_H */
