/*
 * Conformance payload: runs a known sequence of FPU state operations with
 * no operating system underneath and prints, on COM1, one line per
 * operation saying exactly what it did. tests/test_conformance.py compares
 * those lines with the trace the plugin wrote, record by record.
 *
 * Line format:  OP key=value key=value ...
 *   kind    the trace's kind name (xsave, xrstor, wrmsr_xfd, vm_entry, ...)
 *   form64  1 for the REX.W form
 *   addr    the memory operand's address
 *   rfbm    EDX:EAX at the instruction
 *   faulted 1 if the instruction raised #UD or #GP
 *   sum     a checksum of the register contents the instruction moved,
 *           computed here from the buffer: equal sums <=> equal bytes
 *   l2      1 if executed inside the nested (SVM) guest
 *   expect  the class the ownership analysis must give the operation
 *           (docs/analysis.md), known here from what the sequence did
 *   cpl     3 for operations run in user mode (absent: 0)
 *
 * The last part runs at CPL 3 and makes system calls (SYSCALL/SYSRET) whose
 * kernel side does nothing, saves and restores the same registers, loads
 * other registers, or runs an SSE instruction: the user-mode XSAVEs around
 * each call say what the registers held at the boundaries, and OP lines for
 * user_entry/user_return say where the plugin must record them.
 *
 * Built with -mgeneral-regs-only so that the compiler never touches the
 * FP/SIMD registers behind the test's back.
 */
#include <stdint.h>

#define COM1            0x3f8
#define DEBUG_EXIT_PORT 0xf4

#define XFEATURE_X87    (1u << 0)
#define XFEATURE_SSE    (1u << 1)
#define XFEATURE_AVX    (1u << 2)

#define MSR_EFER        0xc0000080
#define MSR_STAR        0xc0000081
#define MSR_LSTAR       0xc0000082
#define MSR_FMASK       0xc0000084
#define MSR_GS_BASE     0xc0000101
#define MSR_TSC_AUX     0xc0000103
#define MSR_VM_HSAVE_PA 0xc0010117
#define MSR_IA32_XFD    0x1c4
#define MSR_IA32_XFD_ERR 0x1c5

struct xsave_area {
    uint8_t bytes[4096];
} __attribute__((aligned(64)));

static struct xsave_area buf_a, buf_b, buf_c, buf_d, buf_e, buf_f, buf_g, buf_gs;
static uint8_t vmcb[4096] __attribute__((aligned(4096)));
static uint8_t hsave[4096] __attribute__((aligned(4096)));
static uint8_t guest_stack[4096] __attribute__((aligned(16)));
static uint8_t user_stack[16384] __attribute__((aligned(16)));
static struct xsave_area buf_user[8], buf_k1, buf_k2;

/* Exception fix-up: where a faulting instruction resumes, and a count. */
uint64_t fault_resume;
uint64_t fault_count;

struct idt_entry {
    uint16_t off_lo, sel;
    uint8_t ist, type;
    uint16_t off_mid;
    uint32_t off_hi, zero;
} __attribute__((packed));

static struct idt_entry idt[32];

void ud_handler(void);
void gp_handler(void);
void other_handler(void);
void payload_entry(void);
void payload_main(void);
void l2_guest(void);
void syscall_entry(void);
void enter_user(void (*fn)(void), void *stack);
void kernel_side(uint64_t request);
void sse_leaf(void);
void counted_run(uint64_t xcr0);
uint64_t kernel_rsp;
/* The boot maps the first GiB here too: code run through it is kernel-half. */
#define KERNEL_HALF_ALIAS 0xffffff8000000000ull

/*
 * #UD has no error code, #GP has one; both resume at fault_resume. Any
 * other exception ends the run with a failure status.
 */
__asm__(
    ".section .text.entry, \"ax\"\n"
    ".globl payload_entry\n"
    "payload_entry:\n"
    "  lea stack_top(%rip), %rsp\n"
    "  call payload_main\n"
    "1: hlt\n"
    "  jmp 1b\n"
    ".text\n"
    ".globl ud_handler\n"
    "ud_handler:\n"
    "  push %rax\n"
    "  incq fault_count(%rip)\n"
    "  mov fault_resume(%rip), %rax\n"
    "  mov %rax, 8(%rsp)\n"
    "  pop %rax\n"
    "  iretq\n"
    ".globl gp_handler\n"
    "gp_handler:\n"
    "  add $8, %rsp\n"
    "  jmp ud_handler\n"
    ".globl other_handler\n"
    "other_handler:\n"
    "  mov $0x3f, %al\n"
    "  out %al, $0xf4\n"
    "2: hlt\n"
    "  jmp 2b\n"
    /*
     * enter_user(fn, stack): SYSRET to fn at CPL 3 (IOPL 3, so that it can
     * print on COM1). SYSCALL comes back to syscall_entry, on the user's
     * stack; request 9 returns from enter_user. SWAPGS on the way in and out,
     * as Linux does: the first one after a return is where the plugin sees
     * the entry.
     */
    ".globl enter_user\n"
    "enter_user:\n"
    "  push %rbx\n push %rbp\n push %r12\n push %r13\n push %r14\n push %r15\n"
    "  mov %rsp, kernel_rsp(%rip)\n"
    "  mov %rdi, %rcx\n"
    "  mov $0x3002, %r11\n"
    "  mov %rsi, %rsp\n"
    "  swapgs\n"
    "  sysretq\n"
    ".globl syscall_entry\n"
    "syscall_entry:\n"
    "  swapgs\n"
    "  cmp $9, %rax\n"
    "  je 4f\n"
    "  push %rbp\n mov %rsp, %rbp\n and $-16, %rsp\n"
    "  push %rcx\n push %r11\n"
    "  mov %rax, %rdi\n"
    "  call kernel_side\n"
    /* Where kernel_side returns to: its probe's caller. */
    ".globl kernel_side_return\n"
    "kernel_side_return:\n"
    "  pop %r11\n pop %rcx\n"
    "  mov %rbp, %rsp\n pop %rbp\n"
    "  swapgs\n"
    "  sysretq\n"
    "4:\n"
    "  mov kernel_rsp(%rip), %rsp\n"
    "  pop %r15\n pop %r14\n pop %r13\n pop %r12\n pop %rbp\n pop %rbx\n"
    "  ret\n"
    /* Position-independent: called through its kernel-half alias. */
    ".globl sse_leaf\n"
    "sse_leaf:\n"
    "  pcmpeqd %xmm3, %xmm3\n"
    "  ret\n"
    /*
     * counted_run(xcr0), called through its kernel-half alias: two XSETBVs
     * with a known number of instructions between them, for the events'
     * instruction counts. The first XSETBV, the MOV, COUNTED_LOOPS times DEC
     * and JNZ, then the second: 2 + 2 * COUNTED_LOOPS instructions from one
     * to the other, across blocks and a loop that QEMU chains. Then a call
     * of counted_leaf (relative: to its alias too), three instructions from
     * its entry to its return address, for the return of a timed probe.
     */
    ".globl counted_run\n"
    "counted_run:\n"
    "  mov %rdi, %rax\n"
    "  xor %edx, %edx\n"
    "  xor %ecx, %ecx\n"
    "  xsetbv\n"
    "  mov $1000, %ecx\n"
    "5: dec %ecx\n"
    "  jnz 5b\n"
    "  xsetbv\n"
    "  call counted_leaf\n"
    ".globl counted_leaf_return\n"
    "counted_leaf_return:\n"
    "  ret\n"
    ".globl counted_leaf\n"
    "counted_leaf:\n"
    "  nop\n"
    "  nop\n"
    "  ret\n"
    ".globl l2_guest\n"
    "l2_guest:\n"
    "  mov $7, %eax\n"
    "  xor %edx, %edx\n"
    "  xsave64 (%rdi)\n"
    "  vmmcall\n"
    "3: jmp 3b\n"
    ".bss\n"
    ".align 16\n"
    ".skip 16384\n"
    "stack_top:\n"
    ".text\n");

/* ---- output ---- */

static inline void outb(uint16_t port, uint8_t v)
{
    __asm__ volatile("outb %0, %1" : : "a"(v), "Nd"(port));
}

static void putc_serial(char c)
{
    outb(COM1, c);
}

static void puts_serial(const char *s)
{
    while (*s) {
        putc_serial(*s++);
    }
}

static void put_hex(uint64_t v)
{
    static const char digits[] = "0123456789abcdef";
    char tmp[17];
    int n = 0;

    puts_serial("0x");
    do {
        tmp[n++] = digits[v & 15];
        v >>= 4;
    } while (v);
    while (n) {
        putc_serial(tmp[--n]);
    }
}

static void put_field(const char *key, uint64_t v)
{
    putc_serial(' ');
    puts_serial(key);
    putc_serial('=');
    put_hex(v);
}

/* ---- machine helpers ---- */

static inline void wrmsr(uint32_t msr, uint64_t v)
{
    __asm__ volatile("wrmsr" : : "c"(msr), "a"((uint32_t)v), "d"((uint32_t)(v >> 32)));
}

static inline uint64_t rdmsr(uint32_t msr)
{
    uint32_t lo, hi;
    __asm__ volatile("rdmsr" : "=a"(lo), "=d"(hi) : "c"(msr));
    return (uint64_t)hi << 32 | lo;
}

static void idt_set(int vec, void (*fn)(void))
{
    uint64_t a = (uint64_t)fn;

    idt[vec] = (struct idt_entry){
        .off_lo = a & 0xffff, .sel = 0x08, .type = 0x8e,
        .off_mid = (a >> 16) & 0xffff, .off_hi = a >> 32,
    };
}

static void idt_load(void)
{
    struct { uint16_t limit; uint64_t base; } __attribute__((packed)) d = {
        sizeof(idt) - 1, (uint64_t)idt,
    };

    for (int i = 0; i < 32; i++) {
        idt_set(i, other_handler);
    }
    idt_set(6, ud_handler);
    idt_set(13, gp_handler);
    __asm__ volatile("lidt %0" : : "m"(d));
}

/*
 * The bytes of an XSAVE-layout buffer that hold register contents, in the
 * components of mask: the same set the plugin hashes (FCW, FSW, MXCSR,
 * ST0-7, XMM0-15, and the AVX upper halves at 576..831).
 */
static uint64_t content_sum(const struct xsave_area *b, uint32_t mask)
{
    uint64_t h = 0xcbf29ce484222325ull;
    const uint8_t *p = b->bytes;

#define MIX(off) do { h ^= (uint64_t)(off) << 8 | p[off]; h *= 0x100000001b3ull; } while (0)
    if (mask & XFEATURE_X87) {
        for (int i = 0; i < 4; i++) MIX(i);
        for (int r = 0; r < 8; r++) for (int i = 0; i < 10; i++) MIX(32 + 16 * r + i);
    }
    if (mask & (XFEATURE_SSE | XFEATURE_AVX)) {
        for (int i = 24; i < 28; i++) MIX(i);
    }
    if (mask & XFEATURE_SSE) {
        for (int i = 160; i < 416; i++) MIX(i);
    }
    if (mask & XFEATURE_AVX) {
        for (int i = 576; i < 832; i++) MIX(i);
    }
#undef MIX
    return h;
}

static uint64_t xstate_bv(const struct xsave_area *b)
{
    return *(const uint64_t *)(b->bytes + 512);
}

/* The class the next reported operation must get; set by EXPECT() ("-": none). */
static const char *expected_class = "-";
#define EXPECT(cls) (expected_class = (cls))

static void report_op(const char *kind, int form64, const void *addr, uint64_t rfbm,
                      uint64_t faults_before, uint64_t sum)
{
    puts_serial("OP kind=");
    puts_serial(kind);
    put_field("form64", form64);
    put_field("addr", (uint64_t)addr);
    put_field("rfbm", rfbm);
    put_field("faulted", fault_count != faults_before);
    put_field("sum", sum);
    puts_serial(" l2=0x0 expect=");
    puts_serial(expected_class);
    puts_serial("\n");
    expected_class = "-";
}

/* Change xmm0 without a traced instruction: the registers become newer than any buffer. */
static void dirty_registers(void)
{
    __asm__ volatile("pcmpeqd %%xmm0, %%xmm0" : : : "memory");
    puts_serial("DIRTY xmm0\n");
}

/*
 * One macro per instruction shape. fault_resume is set to the label after
 * the instruction, so a #UD/#GP lands there.
 */
#define FPU_OP(insn, ptr, rfbm)                                             \
    __asm__ volatile("lea 1f(%%rip), %%r11\n"                              \
                     "mov %%r11, fault_resume(%%rip)\n"                     \
                     insn " (%0)\n"                                         \
                     "1:\n"                                                 \
                     : : "r"(ptr), "a"((uint32_t)(rfbm)),                  \
                         "d"((uint32_t)((uint64_t)(rfbm) >> 32))            \
                     : "r11", "memory")

#define SAVE(kind, insn, form64, buf, rfbm, mask) do {                      \
        uint64_t f0 = fault_count;                                          \
        FPU_OP(insn, (buf)->bytes, rfbm);                                   \
        report_op(kind, form64, (buf)->bytes, rfbm, f0,                     \
                  fault_count != f0 ? 0 : content_sum(buf, mask));          \
    } while (0)

#define RESTORE(kind, insn, form64, buf, rfbm, mask) do {                   \
        uint64_t f0 = fault_count;                                          \
        uint64_t s = content_sum(buf, mask);                                \
        FPU_OP(insn, (buf)->bytes, rfbm);                                   \
        report_op(kind, form64, (buf)->bytes, rfbm, f0, s);                 \
    } while (0)

static void msr_op(const char *kind, uint32_t msr, uint64_t value)
{
    uint64_t f0 = fault_count;

    __asm__ volatile("lea 1f(%%rip), %%r11\n"
                     "mov %%r11, fault_resume(%%rip)\n"
                     "wrmsr\n"
                     "1:\n"
                     : : "c"(msr), "a"((uint32_t)value), "d"((uint32_t)(value >> 32))
                     : "r11", "memory");
    puts_serial("OP kind=");
    puts_serial(kind);
    put_field("index", msr);
    put_field("value", value);
    put_field("faulted", fault_count != f0);
    puts_serial("\n");
}

static void load_registers(uint8_t seed)
{
    static uint8_t pattern[16 * 16] __attribute__((aligned(16)));

    for (int i = 0; i < (int)sizeof(pattern); i++) {
        pattern[i] = (uint8_t)(seed * 31 + i * 7);
    }
    __asm__ volatile(
        "fninit\n fld1\n fldpi\n fldl2e\n"
        "movdqu 0(%0), %%xmm0\n movdqu 16(%0), %%xmm1\n"
        "movdqu 32(%0), %%xmm2\n movdqu 48(%0), %%xmm3\n"
        "movdqu 64(%0), %%xmm4\n movdqu 80(%0), %%xmm5\n"
        "movdqu 96(%0), %%xmm6\n movdqu 112(%0), %%xmm7\n"
        "movdqu 128(%0), %%xmm8\n movdqu 144(%0), %%xmm9\n"
        "movdqu 160(%0), %%xmm10\n movdqu 176(%0), %%xmm11\n"
        "movdqu 192(%0), %%xmm12\n movdqu 208(%0), %%xmm13\n"
        "movdqu 224(%0), %%xmm14\n movdqu 240(%0), %%xmm15\n"
        : : "r"(pattern) : "memory");
}

/* Instructions that share opcode bytes with the traced ones but are not FPU state operations. */
static void look_alikes(void)
{
    static uint8_t line[64] __attribute__((aligned(64)));
    static uint32_t mxcsr;
    static uint64_t cmp16[2] __attribute__((aligned(16)));

    __asm__ volatile("lfence\n mfence\n sfence\n"
                     "stmxcsr %0\n ldmxcsr %0\n"
                     "clflush %1\n"
                     "lock cmpxchg16b %2\n"
                     "xgetbv\n"
                     : "+m"(mxcsr), "+m"(line[0]), "+m"(cmp16)
                     : "c"(0)
                     : "rax", "rdx", "rbx", "memory");
    puts_serial("LOOKALIKES done\n");
}

/* 64-bit code segment attributes in VMCB form (type, S, DPL, P | L, G). */
#define VMCB_ATTR_CODE64 0xa9b
#define VMCB_ATTR_DATA   0xc93

static void vmcb_seg(int off, uint16_t sel, uint16_t attr)
{
    *(uint16_t *)(vmcb + off) = sel;
    *(uint16_t *)(vmcb + off + 2) = attr;
    *(uint32_t *)(vmcb + off + 4) = 0xffffffff;
    *(uint64_t *)(vmcb + off + 8) = 0;
}

/* Enter an SVM guest that saves its FPU state once and leaves with VMMCALL. */
static void nested_guest_run(void)
{
    struct { uint16_t limit; uint64_t base; } __attribute__((packed)) gdtr, idtr;
    uint64_t cr0, cr3, cr4, exit_code, f0 = fault_count;

    wrmsr(MSR_EFER, rdmsr(MSR_EFER) | (1u << 12));         /* SVME */
    wrmsr(MSR_VM_HSAVE_PA, (uint64_t)hsave);
    __asm__ volatile("mov %%cr0, %0\n mov %%cr3, %1\n mov %%cr4, %2\n sgdt %3\n sidt %4"
                     : "=r"(cr0), "=r"(cr3), "=r"(cr4), "=m"(gdtr), "=m"(idtr));
    *(uint32_t *)(vmcb + 0x00c) = 0;
    *(uint32_t *)(vmcb + 0x010) = 0x3;                      /* VMRUN, VMMCALL */
    *(uint32_t *)(vmcb + 0x058) = 1;                        /* ASID */
    vmcb_seg(0x400, 0x10, VMCB_ATTR_DATA);                  /* ES */
    vmcb_seg(0x410, 0x08, VMCB_ATTR_CODE64);                /* CS */
    vmcb_seg(0x420, 0x10, VMCB_ATTR_DATA);                  /* SS */
    vmcb_seg(0x430, 0x10, VMCB_ATTR_DATA);                  /* DS */
    *(uint64_t *)(vmcb + 0x468) = gdtr.base;
    *(uint32_t *)(vmcb + 0x484) = idtr.limit;
    *(uint64_t *)(vmcb + 0x488) = idtr.base;
    *(uint32_t *)(vmcb + 0x464) = gdtr.limit;
    *(uint64_t *)(vmcb + 0x4d0) = rdmsr(MSR_EFER);
    *(uint64_t *)(vmcb + 0x548) = cr4;
    *(uint64_t *)(vmcb + 0x550) = cr3;
    *(uint64_t *)(vmcb + 0x558) = cr0;
    *(uint64_t *)(vmcb + 0x560) = 0x400;                    /* DR7 */
    *(uint64_t *)(vmcb + 0x568) = 0xffff0ff0;               /* DR6 */
    *(uint64_t *)(vmcb + 0x570) = 2;                        /* RFLAGS */
    *(uint64_t *)(vmcb + 0x578) = (uint64_t)l2_guest;
    *(uint64_t *)(vmcb + 0x5d8) = (uint64_t)(guest_stack + sizeof(guest_stack));
    *(uint64_t *)(vmcb + 0x668) = 0x0007040600070406ull;    /* G_PAT */

    __asm__ volatile("lea 1f(%%rip), %%r11\n"
                     "mov %%r11, fault_resume(%%rip)\n"
                     "mov %0, %%rax\n"
                     "vmrun\n"
                     "1:\n"
                     : : "r"((uint64_t)vmcb), "D"(buf_g.bytes)
                     : "rax", "rbx", "rcx", "rdx", "rsi", "r8", "r9", "r10", "r11",
                       "r12", "r13", "r14", "r15", "memory");
    exit_code = *(uint64_t *)(vmcb + 0x070);
    puts_serial("OP kind=vm_entry");
    put_field("addr", (uint64_t)vmcb);
    put_field("faulted", fault_count != f0);
    puts_serial("\n");
    /* What the guest did, now that it is known to have run. */
    puts_serial("OP kind=xsave");
    put_field("form64", 1);
    put_field("addr", (uint64_t)buf_g.bytes);
    put_field("rfbm", 7);
    put_field("faulted", 0);
    put_field("sum", content_sum(&buf_g, 7));
    puts_serial(" l2=0x1 expect=unknown\n");
    puts_serial("OP kind=vm_exit");
    put_field("exitcode", exit_code);
    puts_serial("\n");
}

/* ---- user mode: boundaries ---- */

#define REQ_NOTHING     0   /* a quiet return: nothing touches the registers */
#define REQ_SAVE_LOAD   1   /* save the registers and load them back: unchanged */
#define REQ_LOAD_OTHER  2   /* load another buffer: the task gets other registers */
#define REQ_KERNEL_SSE  3   /* an SSE instruction in kernel mode, no save first */
#define REQ_EXIT        9   /* back to payload_main */

/* An operation without an expected class (report_op prints one). */
static void report_cpl3(const char *kind, const void *addr, uint64_t sum)
{
    puts_serial("OP kind=");
    puts_serial(kind);
    if (addr) {
        put_field("form64", 1);
        put_field("addr", (uint64_t)addr);
        put_field("rfbm", 7);
        put_field("faulted", 0);
        put_field("sum", sum);
    }
    puts_serial(" cpl=0x3\n");
}

/* What the kernel side of a system call does; runs at CPL 0. */
void kernel_side(uint64_t request)
{
    if (request == REQ_NOTHING) {
        return;
    }
    /* The plugin writes the entry at the first thing that may change the registers. */
    puts_serial("OP kind=user_entry\n");
    if (request == REQ_SAVE_LOAD) {
        FPU_OP("xsave64", buf_k1.bytes, 7);
        report_op("xsave", 1, buf_k1.bytes, 7, fault_count, content_sum(&buf_k1, 7));
        FPU_OP("xrstor64", buf_k1.bytes, 7);
        /* The registers' owner is still the buffer last loaded, not buf_k1. */
        EXPECT("necessary");
        report_op("xrstor", 1, buf_k1.bytes, 7, fault_count, content_sum(&buf_k1, 7));
    } else if (request == REQ_LOAD_OTHER) {
        FPU_OP("xrstor64", buf_k2.bytes, 7);
        EXPECT("necessary");
        report_op("xrstor", 1, buf_k2.bytes, 7, fault_count, content_sum(&buf_k2, 7));
    } else if (request == REQ_KERNEL_SSE) {
        /* Kernel SIMD is kernel-text SIMD: run it from the kernel half. */
        ((void (*)(void))((uint64_t)sse_leaf + KERNEL_HALF_ALIAS))();
    }
}

static int user_saves;

/* An XSAVE in user mode: what the registers hold now, for the test to compare. */
static uint64_t user_snapshot(void)
{
    struct xsave_area *b = &buf_user[user_saves++];

    __asm__ volatile("xsave64 (%0)" : : "r"(b->bytes), "a"(7), "d"(0) : "memory");
    report_cpl3("xsave", b->bytes, content_sum(b, 7));
    return content_sum(b, 7);
}

static void user_syscall(uint64_t request)
{
    uint64_t before = user_snapshot(), after;

    __asm__ volatile("syscall"
                     : "+a"(request)
                     : : "rcx", "r11", "rdi", "rsi", "rdx", "r8", "r9", "r10", "memory");
    if (request != REQ_EXIT) {
        report_cpl3("user_return", 0, 0);
        after = user_snapshot();
        puts_serial("BOUNDARY");
        put_field("request", request);
        put_field("changed", before != after);
        puts_serial("\n");
    }
}

static void user_main(void)
{
    report_cpl3("user_return", 0, 0);       /* the first: no entry before it */
    load_registers(5);
    user_syscall(REQ_NOTHING);
    user_syscall(REQ_SAVE_LOAD);
    user_syscall(REQ_LOAD_OTHER);
    load_registers(6);
    user_syscall(REQ_KERNEL_SSE);
    user_syscall(REQ_EXIT);
    for (;;) {
    }
}

static void user_mode_boundaries(void)
{
    wrmsr(MSR_EFER, rdmsr(MSR_EFER) | 1);                   /* SCE */
    wrmsr(MSR_STAR, (0x10ull << 48) | (0x08ull << 32));
    wrmsr(MSR_LSTAR, (uint64_t)syscall_entry);
    wrmsr(MSR_FMASK, 0x700);                                /* TF, IF, DF */
    load_registers(7);
    FPU_OP("xsave64", buf_k2.bytes, 7);                     /* other registers to load */
    report_op("xsave", 1, buf_k2.bytes, 7, fault_count, content_sum(&buf_k2, 7));
    enter_user(user_main, user_stack + sizeof(user_stack));
    puts_serial("USER done\n");
}

void payload_main(void)
{
    uint64_t cr0, cr4;
    uint32_t all = XFEATURE_X87 | XFEATURE_SSE | XFEATURE_AVX;

    idt_load();
    __asm__ volatile("mov %%cr0, %0\n mov %%cr4, %1" : "=r"(cr0), "=r"(cr4));
    cr0 = (cr0 & ~(uint64_t)0xc) | 0x22;                    /* clear EM, TS; set MP, NE */
    cr4 |= (1u << 9) | (1u << 10) | (1u << 18);             /* OSFXSR, OSXMMEXCPT, OSXSAVE */
    __asm__ volatile("mov %0, %%cr0\n mov %1, %%cr4" : : "r"(cr0), "r"(cr4));
    puts_serial("BEGIN fputrace conformance\n");
    {
        /* The fix-up path itself must work, or "faulted=" below means nothing. */
        uint64_t f0 = fault_count;
        __asm__ volatile("lea 1f(%%rip), %%r11\n mov %%r11, fault_resume(%%rip)\n"
                         "ud2\n1:\n" : : : "r11", "memory");
        put_field("SELFTEST ud2 faulted", fault_count != f0);
        puts_serial("\n");
    }

    /* XCR0 = x87 | SSE | AVX */
    __asm__ volatile("xsetbv" : : "c"(0), "a"(all), "d"(0));
    puts_serial("OP kind=xsetbv index=0x0 value=0x7 faulted=0x0\n");
    /* Kernel-half code, as the timed probes' returns are watched there. */
    ((void (*)(uint64_t))((uint64_t)counted_run + KERNEL_HALF_ALIAS))(all);
    puts_serial("OP kind=xsetbv index=0x0 value=0x7 faulted=0x0 counted=first\n");
    puts_serial("OP kind=xsetbv index=0x0 value=0x7 faulted=0x0 counted=second loops=0x3e8\n");

    load_registers(1);
    /* Saving the same registers three times: three equal sums. Each buffer is
     * seen for the first time, so what it held before is unknown. */
    SAVE("xsave", "xsave64", 1, &buf_a, all, all);
    SAVE("xsave", "xsave64", 1, &buf_b, all, all);
    SAVE("xsaveopt", "xsaveopt64", 1, &buf_c, all, all);
    /* The 32-bit-operand form, x87|SSE only. */
    SAVE("xsave", "xsave", 0, &buf_d, XFEATURE_X87 | XFEATURE_SSE, XFEATURE_X87 | XFEATURE_SSE);

    /* New register contents: a different sum. */
    load_registers(2);
    SAVE("xsave", "xsave64", 1, &buf_e, all, all);

    /* Back to the first contents, twice: the second restore is of bytes already loaded. */
    EXPECT("necessary");
    RESTORE("xrstor", "xrstor64", 1, &buf_a, all, all & xstate_bv(&buf_a));
    EXPECT("redundant_restore");
    RESTORE("xrstor", "xrstor64", 1, &buf_a, all, all & xstate_bv(&buf_a));
    /* Saving now writes what buf_c already holds. */
    EXPECT("redundant_save");
    SAVE("xsaveopt", "xsaveopt64", 1, &buf_c, all, all);
    EXPECT("necessary");
    RESTORE("xrstor", "xrstor", 0, &buf_e, all, all & xstate_bv(&buf_e));

    /*
     * A save copies the registers and changes no owner (the kernel's
     * fpu_fpregs_owner_ctx): buf_e's context still owns them, so loading
     * buf_f is loading another context, necessary though its bytes are
     * already there. From then on buf_f's context owns them.
     */
    SAVE("fxsave", "fxsave64", 1, &buf_f, 0, XFEATURE_X87 | XFEATURE_SSE);
    EXPECT("necessary");
    RESTORE("fxrstor", "fxrstor64", 1, &buf_f, 0, XFEATURE_X87 | XFEATURE_SSE);
    EXPECT("redundant_save");
    SAVE("fxsave", "fxsave", 0, &buf_f, 0, XFEATURE_X87 | XFEATURE_SSE);
    EXPECT("redundant_restore");
    RESTORE("fxrstor", "fxrstor", 0, &buf_f, 0, XFEATURE_X87 | XFEATURE_SSE);

    /* Compacted and supervisor forms: QEMU's TCG raises #UD, the attempt is still traced. */
    SAVE("xsavec", "xsavec64", 1, &buf_b, all, all);
    SAVE("xsaves", "xsaves", 0, &buf_b, all, all);
    RESTORE("xrstors", "xrstors64", 1, &buf_b, all, 0);

    /* GS-relative and SIB addressing. */
    wrmsr(MSR_GS_BASE, (uint64_t)buf_gs.bytes - 0x40);
    {
        uint64_t f0 = fault_count;
        __asm__ volatile("lea 1f(%%rip), %%r11\n mov %%r11, fault_resume(%%rip)\n"
                         "xsave64 %%gs:0x40\n1:\n"
                         : : "a"(all), "d"(0) : "r11", "memory");
        report_op("xsave", 1, buf_gs.bytes, all, f0, content_sum(&buf_gs, all));
        f0 = fault_count;
        __asm__ volatile("lea 1f(%%rip), %%r11\n mov %%r11, fault_resume(%%rip)\n"
                         "xrstor64 0x20(%%rbx,%%rcx,4)\n1:\n"
                         : : "a"(all), "d"(0), "b"((uintptr_t)buf_gs.bytes - 0x60), "c"(0x10)
                         : "r11", "memory");
        /* buf_gs was saved into, never loaded: loading it changes the owner. */
        EXPECT("necessary");
        report_op("xrstor", 1, buf_gs.bytes, all, f0,
                  content_sum(&buf_gs, all & xstate_bv(&buf_gs)));
    }

    /*
     * Lost state: buf_a's context is loaded, its registers change, and another
     * buffer is restored over them without a save; then buf_a's context
     * resumes from its buffer, which lacks the change.
     */
    EXPECT("necessary");
    RESTORE("xrstor", "xrstor64", 1, &buf_a, all, all & xstate_bv(&buf_a));
    dirty_registers();
    EXPECT("lost_state");
    RESTORE("xrstor", "xrstor64", 1, &buf_e, all, all & xstate_bv(&buf_e));
    EXPECT("necessary");
    RESTORE("xrstor", "xrstor64", 1, &buf_a, all, all & xstate_bv(&buf_a));
    /* Stale restore: the registers change again and buf_a is restored over them. */
    dirty_registers();
    EXPECT("stale_restore");
    RESTORE("xrstor", "xrstor64", 1, &buf_a, all, all & xstate_bv(&buf_a));
    /* Unchanged since that restore: saving writes what buf_a holds. */
    EXPECT("redundant_save");
    SAVE("xsave", "xsave64", 1, &buf_a, all, all);

    msr_op("wrmsr_xfd", MSR_IA32_XFD, 0x40000);
    msr_op("wrmsr_xfd_err", MSR_IA32_XFD_ERR, 0);
    msr_op("wrmsr", MSR_TSC_AUX, 0x1234);       /* traced when asked for with msr= */
    msr_op("wrmsr_untraced", MSR_GS_BASE, 0);   /* never traced */

    look_alikes();
    nested_guest_run();
    user_mode_boundaries();

    puts_serial("END\n");
    outb(DEBUG_EXIT_PORT, 0x10);
}
