/*
 * ftr-format.h: the fputrace trace format, the one definition of its bytes.
 *
 * Included by the plugin (plugin/trace.c, the writer) and by the
 * analyzers' compiled passes (analyzers/engine/). The Python
 * reader mirrors it in fputrace/trace/format.py, and tests/test_format_abi.py
 * checks the mirror, entry for entry, against what tests/format_abi.c prints
 * from the lists below. docs/trace-format.md explains every field.
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
 * Version 4 appended the event's instruction count (icount) and the nested
 * guest's current task (guest_task): its event record is 144 bytes, which no
 * earlier reader decodes.
 * Version 5 appended to the footer how the run ended (enum ftr_end) and a
 * copy of the header's arch and features, from which a reader recovers a
 * damaged header: its 560-byte footer is no block to an earlier reader.
 */
#define FTR_VERSION             5
#define FTR_MIN_READER_VERSION  5
#define FTR_BLOCK_MAGIC         0x4b425446u     /* "FTBK" */

/*
 * The format's numbers and records are defined once, as X-macro lists:
 * each list below expands to the C declarations after it, and
 * tests/format_abi.c expands the same lists to print them all, so that the
 * Python mirror (fputrace/trace/format.py) is checked against every entry.
 * Numbers are part of the format: never reuse one.
 */

/* Header feature bits: X(name, bit) */
#define FTR_FEATURES(X) \
    X(MEM_HASH, 0)              /* content hashes of memory */ \
    X(REGS_HASH, 1)             /* register-file hashes */ \
    X(TASKS, 2)                 /* task tracking */ \
    X(BOUNDARIES, 3)            /* user entry/return events */ \
    X(PROBES, 4)                /* kernel function probes */ \
    /* events carry the vCPU's instruction count (version 4) */ \
    X(ICOUNT, 5) \
    X(BOUNDARY_STATE, 6)        /* user boundaries carry the arch's state beyond the \
                                 * register hash where it has one (arm64: SVE_VALID) */

#define FTR_DEFINE_FEATURE(name, bit) FTR_FEAT_##name = 1u << (bit),
enum ftr_feature { FTR_FEATURES(FTR_DEFINE_FEATURE) };

/* X(name, number) */
#define FTR_ARCHES(X) \
    X(X86_64, 1) \
    X(AARCH64, 2)

#define FTR_DEFINE_ARCH(name, number) FTR_ARCH_##name = number,
enum ftr_arch { FTR_ARCHES(FTR_DEFINE_ARCH) };

/* X(name, number) */
#define FTR_BLOCK_TYPES(X) \
    X(EVENTS, 1) \
    X(TASKS, 2) \
    X(FOOTER, 3)

#define FTR_DEFINE_BLOCK(name, number) FTR_BLOCK_##name = number,
enum ftr_block_type { FTR_BLOCK_TYPES(FTR_DEFINE_BLOCK) };

/*
 * Event kinds: X(name, number, role). The role says what the analysis
 * makes of it: SAVE and RESTORE move FP/SIMD register state to or from a
 * buffer (the content model, docs/analysis.md), BUFFER moves other state
 * (SME's ZA) between registers and a buffer, OTHER moves none.
 * 32..63 are arm64's.
 */
#define FTR_KINDS(X) \
    X(XSAVE, 1, SAVE) \
    X(XSAVEOPT, 2, SAVE) \
    X(XSAVEC, 3, SAVE) \
    X(XSAVES, 4, SAVE) \
    X(XRSTOR, 5, RESTORE) \
    X(XRSTORS, 6, RESTORE) \
    X(FXSAVE, 7, SAVE) \
    X(FXRSTOR, 8, RESTORE) \
    X(XSETBV, 9, OTHER) \
    X(WRMSR_XFD, 10, OTHER) \
    X(WRMSR_XFD_ERR, 11, OTHER) \
    X(WRMSR, 12, OTHER) \
    X(VM_ENTRY, 13, OTHER) \
    X(VM_EXIT, 14, OTHER) \
    X(USER_ENTRY, 15, OTHER) \
    X(USER_RETURN, 16, OTHER) \
    X(PROBE, 17, OTHER) \
    X(PROBE_RETURN, 18, OTHER)  /* a timed probe's function returned (version 4) */ \
    X(FP_TRAP, 32, OTHER) \
    X(CPACR_WRITE, 33, OTHER) \
    X(CPTR_WRITE, 34, OTHER) \
    X(ZCR_WRITE, 35, OTHER) \
    X(FPSIMD_SAVE, 36, SAVE) \
    X(FPSIMD_LOAD, 37, RESTORE) \
    X(SVE_SAVE, 38, SAVE) \
    X(SVE_LOAD, 39, RESTORE) \
    X(SMCR_WRITE, 40, OTHER) \
    X(SVCR_WRITE, 41, OTHER)    /* MSR SVCR / SMSTART / SMSTOP */ \
    X(SME_SAVE, 42, BUFFER)     /* ZA (and ZT0): the kernel's sme_save_za sequence */ \
    X(SME_LOAD, 43, BUFFER) \
    X(SIGFRAME, 44, OTHER)      /* a signal frame's FP/SIMD and SVE records as delivery \
                                 * wrote them, read at the handler's start */

#define FTR_KIND_MAX 64

#define FTR_DEFINE_KIND(name, number, role) FTR_KIND_##name = number,
enum ftr_kind { FTR_KINDS(FTR_DEFINE_KIND) };

enum ftr_kind_role { FTR_ROLE_OTHER, FTR_ROLE_SAVE, FTR_ROLE_RESTORE, FTR_ROLE_BUFFER };

#define FTR_KIND_ROLE_IF(name, number, role) \
    if (kind == (number)) {                  \
        return FTR_ROLE_##role;              \
    }
static inline enum ftr_kind_role ftr_kind_role(unsigned int kind)
{
    FTR_KINDS(FTR_KIND_ROLE_IF)
    return FTR_ROLE_OTHER;
}

/*
 * What a probe event's function does to FPU state (event field `index`):
 * X(name, number). The recorder maps kernel symbols to these
 * (fputrace/kernel/probes.py).
 */
#define FTR_PROBES(X) \
    X(FORK_COPY, 1)             /* fpu_clone / fpu__copy: arg0 = child task */ \
    X(EXEC_RESET, 2)            /* fpu_flush_thread / fpu__clear_all */ \
    X(TASK_EXIT, 3)             /* exit_thread: the task's FPU context ends */ \
    X(SIGFRAME_SAVE, 4)         /* copy_fpstate_to_sigframe */ \
    X(SIGRETURN, 5)             /* fpu__restore_sig */ \
    X(REGSET_SET, 6)            /* xstateregs_set, xfpregs_set, fpregs_set */ \
    X(KVM_FPSTATE_ALLOC, 7)     /* fpu_alloc_guest_fpstate */ \
    X(KVM_FPSTATE_FREE, 8)      /* fpu_free_guest_fpstate */ \
    X(KVM_UABI_SET, 9)          /* KVM_SET_XSAVE(2) copies into guest state */ \
    X(KVM_UABI_GET, 10)         /* KVM_GET_XSAVE(2)/KVM_GET_FPU copies out of it */ \
    X(KFPU_BEGIN, 11)           /* kernel_fpu_begin_mask / kernel_fpu_begin */ \
    X(KFPU_END, 12)             /* kernel_fpu_end */ \
    X(KVM_VCPU_RESET, 13)       /* kvm_vcpu_reset: guest FPU state reset */ \
    X(KVM_EMULATE_SSE, 14)      /* instruction emulation writing guest SSE registers */ \
    X(FPSTATE_FREE, 15)         /* fpstate_free */ \
    /* a faulting restore: the init state is loaded instead */ \
    X(RESTORE_FAULT, 16) \
    X(KVM_LOAD_FP, 17)          /* arm64 kvm_arch_vcpu_load_fp: a vCPU is loaded */ \
    X(KVM_PUT_FP, 18)           /* arm64 kvm_arch_vcpu_put_fp: a vCPU is put */ \
    X(CONTEXT_SWITCH, 19)       /* __switch_to: arg0 = prev task, arg1 = next */ \
    /* \
     * a timed FPU path: fpu_swap_kvm_fpstate, switch_fpu_return, arm64's \
     * FP access traps and KVM's FP flush/sync \
     */ \
    X(FPU_PATH, 20)

#define FTR_PROBE_MAX 32

#define FTR_DEFINE_PROBE(name, number) FTR_PROBE_##name = number,
enum ftr_probe { FTR_PROBES(FTR_DEFINE_PROBE) };

/* Event flags: X(name, value) */
#define FTR_FLAGS(X) \
    X(PL_MASK, 0x003)           /* CPL (x86) or EL (arm64) */ \
    X(L2, 0x004)                /* executed inside the nested guest */ \
    X(FORM64, 0x008)            /* REX.W form (xsave64, ...) */ \
    X(TASK_VALID, 0x010) \
    X(MEM_VALID, 0x020)         /* memory accesses were observed */ \
    X(REGS_VALID, 0x040) \
    X(KERNEL_SIMD, 0x080)       /* kernel code used FP/SIMD since the last event */ \
    X(REGS_AFTER_VALID, 0x100)  /* regs_after_hash was read */ \
    X(QUIET, 0x200)             /* user return: no FP activity since the entry */ \
    X(NO_ENTRY, 0x400)          /* user return: no entry seen on this vCPU before */ \
    /* save: aux holds the buffer's content hash before it */ \
    X(PRIOR_VALID, 0x800) \
    X(ADDR_UNVERIFIED, 0x1000)  /* no memory access fell in the area at addr: the \
                                 * content hashes and byte counts are not valid */ \
    X(ADDR_SIZE_MASK, 0x6000)   /* how the effective address was formed (version 3): \
                                 * enum ftr_addr_size, from bit 13 */ \
    X(ADDR_HYP, 0x8000)         /* arm64: an nVHE hypervisor address, given as the \
                                 * kernel address of the same memory */ \
    X(GUEST_FP_TRAPPED, 0x10000) /* arm64 VM entry/exit: the guest ran with its FP/SIMD \
                                  * access trapped to EL2: the registers were not its */ \
    /* \
     * arm64 user entry/return: SVE was enabled for EL0, and regs_after_hash \
     * holds the SVE registers beyond V0-V31 \
     */ \
    X(SVE_VALID, 0x20000)

#define FTR_DEFINE_FLAG(name, value) FTR_FLAG_##name = value,
enum ftr_flag { FTR_FLAGS(FTR_DEFINE_FLAG) };

#define FTR_FLAG_ADDR_SIZE_SHIFT 13

/* X(name, number) */
#define FTR_ADDR_SIZES(X) \
    X(64, 0)                    /* 64-bit mode */ \
    /* 32-bit addressing: protected or compatibility mode, or 0x67 */ \
    X(32, 1) \
    /* 16-bit addressing: real, virtual-8086, 16-bit segments */ \
    X(16, 2)

#define FTR_DEFINE_ADDR_SIZE(name, number) FTR_ADDR_##name = number,
enum ftr_addr_size { FTR_ADDR_SIZES(FTR_DEFINE_ADDR_SIZE) };

/* Kernel text lies in the top 2 GiB: a SIMD pc is stored as its low half. */
#define FTR_KERNEL_TEXT_HIGH    0xffffffff00000000ull

/* The records: X(type, name, array dimension or an empty comment) */
#define FTR_EVENT_FIELDS(X) \
    X(uint64_t, seq, /**/) \
    X(uint64_t, pc, /**/) \
    X(uint64_t, task, /**/) \
    X(uint64_t, addr, /**/) \
    X(uint64_t, value, /**/) \
    X(uint64_t, xcr0, /**/) \
    X(uint64_t, mem_hash, /**/)             /* content bytes below 832: x87, SSE, AVX */ \
    X(uint64_t, mem_legacy_hash, /**/)      /* content bytes below 512: x87, SSE */ \
    /* content bytes from 832: MPX, AVX-512, PKRU... */ \
    X(uint64_t, mem_ext_hash, /**/) \
    X(uint64_t, regs_hash, /**/)            /* register file before the instruction */ \
    X(uint64_t, regs_after_hash, /**/)      /* restores: register file right after it */ \
    /* \
     * XSTATE_BV stored (save) or loaded (restore); probe: the return \
     * address (the caller) \
     */ \
    X(uint64_t, xstate_bv, /**/) \
    X(uint64_t, aux, /**/) \
    X(uint32_t, index, /**/) \
    X(uint32_t, mem_bytes, /**/) \
    X(uint32_t, mem_features, /**/) \
    X(uint32_t, flags, /**/) \
    X(uint16_t, vcpu, /**/) \
    X(uint8_t, kind, /**/) \
    X(uint8_t, reserved8, /**/) \
    /* KERNEL_SIMD: low half of the last such pc */ \
    X(uint32_t, simd_pc, /**/) \
    /* \
     * instructions the vCPU retired before the event's instruction \
     * (version 4, FTR_FEAT_ICOUNT) \
     */ \
    X(uint64_t, icount, /**/) \
    /* \
     * L2 events: the nested guest kernel's current task (version 4, \
     * guest_current=; 0: unknown) \
     */ \
    X(uint64_t, guest_task, /**/)

/* Task record flags: X(name, value) */
#define FTR_TASK_FLAGS(X) \
    X(L2, 0x1)                  /* a task of the nested guest's kernel (version 4) */

#define FTR_DEFINE_TASK_FLAG(name, value) FTR_TASK_FLAG_##name = value,
enum ftr_task_flag { FTR_TASK_FLAGS(FTR_DEFINE_TASK_FLAG) };

#define FTR_TASK_FIELDS(X) \
    X(uint64_t, seq, /**/) \
    X(uint64_t, task, /**/) \
    X(uint32_t, pid, /**/) \
    X(uint32_t, tgid, /**/) \
    X(char, comm, [16]) \
    X(uint16_t, vcpu, /**/) \
    X(uint16_t, flags, /**/) \
    X(uint32_t, reserved, /**/)

#define FTR_BLOCK_HEADER_FIELDS(X) \
    X(uint32_t, magic, /**/) \
    X(uint16_t, type, /**/) \
    X(uint16_t, vcpu, /**/) \
    X(uint32_t, count, /**/) \
    X(uint32_t, payload_size, /**/) \
    X(uint32_t, crc32, /**/)                /* CRC-32C of the payload */ \
    /* CRC-32C of the 20 bytes above (version 3) */ \
    X(uint32_t, header_crc32, /**/)

/*
 * The file header's fixed part; identity strings follow it. header_crc32 is
 * the CRC-32C of the whole header (header_size bytes, padding included) with
 * this field taken as zero (version 3; 0 in version 2).
 */
#define FTR_FILE_HEADER_FIELDS(X) \
    X(char, magic, [8]) \
    X(uint16_t, version, /**/) \
    X(uint16_t, min_reader_version, /**/) \
    X(uint32_t, header_size, /**/) \
    X(uint64_t, features, /**/) \
    X(uint16_t, arch, /**/) \
    X(uint16_t, event_size, /**/) \
    X(uint16_t, task_size, /**/) \
    X(uint16_t, reserved, /**/) \
    X(uint32_t, plugin_api, /**/) \
    X(uint32_t, header_crc32, /**/)

/*
 * How the run ended, as the footer records it (version 5): X(name, number).
 * The recorder says why it stops QEMU, in the file named by the plugin's
 * end= argument (one of these names), before it stops it; the plugin reads
 * that file when QEMU exits. Only DONE is a finished run.
 */
#define FTR_ENDS(X) \
    /* \
     * QEMU exited with no word from the recorder: it failed, crashed, or \
     * its machine ended itself \
     */ \
    X(EXITED, 0) \
    X(DONE, 1)                  /* the workloads finished and the guest powered off */ \
    /* the guest shut down, reset or panicked before the end */ \
    X(GUEST_STOPPED, 2) \
    X(TIMEOUT, 3)               /* the recorder stopped QEMU at its time limit */ \
    X(INTERRUPTED, 4)           /* the recorder was interrupted (SIGINT, SIGTERM) */

#define FTR_DEFINE_END(name, number) FTR_END_##name = number,
enum ftr_end { FTR_ENDS(FTR_DEFINE_END) };

#define FTR_FOOTER_FIELDS(X) \
    X(uint64_t, events_total, /**/) \
    X(uint64_t, tasks_total, /**/) \
    X(uint64_t, blocks_total, /**/) \
    X(uint64_t, write_errors, /**/) \
    X(uint64_t, events_by_kind, [FTR_KIND_MAX]) \
    X(uint32_t, end, /**/)                  /* enum ftr_end (version 5) */ \
    /* the file header's arch and features, again (version 5) */ \
    X(uint16_t, arch, /**/) \
    X(uint16_t, reserved, /**/) \
    X(uint64_t, features, /**/)

#define FTR_DECLARE_FIELD(type, name, dim) type name dim;

struct ftr_event { FTR_EVENT_FIELDS(FTR_DECLARE_FIELD) };
struct ftr_task { FTR_TASK_FIELDS(FTR_DECLARE_FIELD) };
struct ftr_block_header { FTR_BLOCK_HEADER_FIELDS(FTR_DECLARE_FIELD) };
struct ftr_file_header { FTR_FILE_HEADER_FIELDS(FTR_DECLARE_FIELD) };
struct ftr_footer { FTR_FOOTER_FIELDS(FTR_DECLARE_FIELD) };

_Static_assert(sizeof(struct ftr_event) == 144, "event record is 144 bytes");
_Static_assert(sizeof(struct ftr_task) == 48, "task record is 48 bytes");
_Static_assert(sizeof(struct ftr_block_header) == 24, "block header is 24 bytes");
_Static_assert(sizeof(struct ftr_file_header) == 40, "fixed file header is 40 bytes");
_Static_assert(sizeof(struct ftr_footer) == 560, "footer is 560 bytes");

#endif /* FTR_FORMAT_H */
