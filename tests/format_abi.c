/*
 * Prints the trace format as plugin/ftr-format.h defines it, as JSON, for
 * tests/test_format_abi.py to compare with the Python mirror.
 */
#include <stddef.h>
#include <stdio.h>

#include "ftr-format.h"

#define FIELD(type, f) printf("%s\"%s\": [%zu, %zu]", first++ ? ", " : "", #f, \
                              offsetof(struct type, f), sizeof(((struct type *)0)->f))
#define NAMED(prefix, n) printf("%s\"%s\": %lld", first++ ? ", " : "", #n, (long long)prefix##n)

int main(void)
{
    int first = 0;

    printf("{\"version\": %d, \"min_reader\": %d, \"magic\": \"%s\", \"block_magic\": %u,\n",
           FTR_VERSION, FTR_MIN_READER_VERSION, FTR_MAGIC, FTR_BLOCK_MAGIC);
    printf(" \"sizes\": {\"event\": %zu, \"task\": %zu, \"block\": %zu, \"footer\": %zu},\n",
           sizeof(struct ftr_event), sizeof(struct ftr_task),
           sizeof(struct ftr_block_header), sizeof(struct ftr_footer));
    printf(" \"event\": {");
    FIELD(ftr_event, seq); FIELD(ftr_event, pc); FIELD(ftr_event, task);
    FIELD(ftr_event, addr); FIELD(ftr_event, value); FIELD(ftr_event, xcr0);
    FIELD(ftr_event, mem_hash); FIELD(ftr_event, mem_legacy_hash);
    FIELD(ftr_event, mem_ext_hash); FIELD(ftr_event, regs_hash);
    FIELD(ftr_event, regs_after_hash); FIELD(ftr_event, xstate_bv); FIELD(ftr_event, aux);
    FIELD(ftr_event, index); FIELD(ftr_event, mem_bytes); FIELD(ftr_event, mem_features);
    FIELD(ftr_event, flags); FIELD(ftr_event, vcpu); FIELD(ftr_event, kind);
    FIELD(ftr_event, reserved8); FIELD(ftr_event, simd_pc);
    first = 0;
    printf("},\n \"task\": {");
    FIELD(ftr_task, seq); FIELD(ftr_task, task); FIELD(ftr_task, pid); FIELD(ftr_task, tgid);
    FIELD(ftr_task, comm); FIELD(ftr_task, vcpu); FIELD(ftr_task, flags);
    FIELD(ftr_task, reserved);
    first = 0;
    printf("},\n \"footer\": {");
    FIELD(ftr_footer, events_total); FIELD(ftr_footer, tasks_total);
    FIELD(ftr_footer, blocks_total); FIELD(ftr_footer, write_errors);
    FIELD(ftr_footer, events_by_kind);
    first = 0;
    printf("},\n \"block_header\": {");
    FIELD(ftr_block_header, magic); FIELD(ftr_block_header, type);
    FIELD(ftr_block_header, vcpu); FIELD(ftr_block_header, count);
    FIELD(ftr_block_header, payload_size); FIELD(ftr_block_header, crc32);
    FIELD(ftr_block_header, header_crc32);
    first = 0;
    printf("},\n \"file_header\": {");
    FIELD(ftr_file_header, magic); FIELD(ftr_file_header, version);
    FIELD(ftr_file_header, min_reader_version); FIELD(ftr_file_header, header_size);
    FIELD(ftr_file_header, features); FIELD(ftr_file_header, arch);
    FIELD(ftr_file_header, event_size); FIELD(ftr_file_header, task_size);
    FIELD(ftr_file_header, reserved); FIELD(ftr_file_header, plugin_api);
    FIELD(ftr_file_header, header_crc32);
    first = 0;
    printf("},\n \"kinds\": {");
    NAMED(FTR_KIND_, XSAVE); NAMED(FTR_KIND_, XSAVEOPT); NAMED(FTR_KIND_, XSAVEC);
    NAMED(FTR_KIND_, XSAVES); NAMED(FTR_KIND_, XRSTOR); NAMED(FTR_KIND_, XRSTORS);
    NAMED(FTR_KIND_, FXSAVE); NAMED(FTR_KIND_, FXRSTOR); NAMED(FTR_KIND_, XSETBV);
    NAMED(FTR_KIND_, WRMSR_XFD); NAMED(FTR_KIND_, WRMSR_XFD_ERR); NAMED(FTR_KIND_, WRMSR);
    NAMED(FTR_KIND_, VM_ENTRY); NAMED(FTR_KIND_, VM_EXIT); NAMED(FTR_KIND_, USER_ENTRY);
    NAMED(FTR_KIND_, USER_RETURN); NAMED(FTR_KIND_, PROBE); NAMED(FTR_KIND_, FP_TRAP);
    NAMED(FTR_KIND_, CPACR_WRITE); NAMED(FTR_KIND_, CPTR_WRITE); NAMED(FTR_KIND_, ZCR_WRITE);
    NAMED(FTR_KIND_, FPSIMD_SAVE); NAMED(FTR_KIND_, FPSIMD_LOAD); NAMED(FTR_KIND_, SVE_SAVE);
    NAMED(FTR_KIND_, SVE_LOAD); NAMED(FTR_KIND_, SMCR_WRITE);
    NAMED(FTR_KIND_, SVCR_WRITE); NAMED(FTR_KIND_, SME_SAVE);
    NAMED(FTR_KIND_, SME_LOAD); NAMED(FTR_KIND_, MAX);
    first = 0;
    printf("},\n \"flags\": {");
    NAMED(FTR_FLAG_, PL_MASK); NAMED(FTR_FLAG_, L2); NAMED(FTR_FLAG_, FORM64);
    NAMED(FTR_FLAG_, TASK_VALID); NAMED(FTR_FLAG_, MEM_VALID); NAMED(FTR_FLAG_, REGS_VALID);
    NAMED(FTR_FLAG_, KERNEL_SIMD); NAMED(FTR_FLAG_, REGS_AFTER_VALID); NAMED(FTR_FLAG_, QUIET);
    NAMED(FTR_FLAG_, NO_ENTRY); NAMED(FTR_FLAG_, PRIOR_VALID);
    NAMED(FTR_FLAG_, ADDR_UNVERIFIED); NAMED(FTR_FLAG_, ADDR_SIZE_MASK);
    NAMED(FTR_FLAG_, ADDR_HYP); NAMED(FTR_FLAG_, GUEST_FP_TRAPPED);
    first = 0;
    printf("},\n \"features\": {");
    NAMED(FTR_FEAT_, MEM_HASH); NAMED(FTR_FEAT_, REGS_HASH); NAMED(FTR_FEAT_, TASKS);
    NAMED(FTR_FEAT_, BOUNDARIES); NAMED(FTR_FEAT_, PROBES);
    first = 0;
    printf("},\n \"probes\": {");
    NAMED(FTR_PROBE_, FORK_COPY); NAMED(FTR_PROBE_, EXEC_RESET); NAMED(FTR_PROBE_, TASK_EXIT);
    NAMED(FTR_PROBE_, SIGFRAME_SAVE); NAMED(FTR_PROBE_, SIGRETURN); NAMED(FTR_PROBE_, REGSET_SET);
    NAMED(FTR_PROBE_, KVM_FPSTATE_ALLOC); NAMED(FTR_PROBE_, KVM_FPSTATE_FREE);
    NAMED(FTR_PROBE_, KVM_UABI_SET); NAMED(FTR_PROBE_, KVM_UABI_GET);
    NAMED(FTR_PROBE_, KFPU_BEGIN); NAMED(FTR_PROBE_, KFPU_END); NAMED(FTR_PROBE_, KVM_VCPU_RESET);
    NAMED(FTR_PROBE_, KVM_EMULATE_SSE); NAMED(FTR_PROBE_, FPSTATE_FREE);
    NAMED(FTR_PROBE_, RESTORE_FAULT); NAMED(FTR_PROBE_, KVM_LOAD_FP);
    NAMED(FTR_PROBE_, KVM_PUT_FP); NAMED(FTR_PROBE_, MAX);
    first = 0;
    printf("},\n \"blocks\": {");
    NAMED(FTR_BLOCK_, EVENTS); NAMED(FTR_BLOCK_, TASKS); NAMED(FTR_BLOCK_, FOOTER);
    first = 0;
    printf("},\n \"addr_sizes\": {");
    NAMED(FTR_ADDR_, 64); NAMED(FTR_ADDR_, 32); NAMED(FTR_ADDR_, 16);
    printf("}, \"addr_size_shift\": %d}\n", FTR_FLAG_ADDR_SIZE_SHIFT);
    return 0;
}
