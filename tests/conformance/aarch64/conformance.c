/*
 * arm64 conformance image: a known sequence of every event the plugin
 * records on arm64, run with no operating system at EL2, EL1 and EL0 and
 * in a guest at EL1 with HCR_EL2.VM set. On the first PL011 it prints one
 * line per event, saying what happened; tests/test_conformance_arm64.py
 * compares the lines with the trace, record by record.
 *
 * Line format:  OP key=value ...
 *   kind     the trace's kind name (fp_trap, cptr_write, fpsimd_save, ...)
 *   el       the exception level the event is recorded at
 *   l2       1: inside the guest (HCR_EL2.VM set, TGE clear)
 *   value    a register write's new value; an access trap's ESR
 *   old      a register write's old value
 *   index    a register write's encoding named | the one reached << 16
 *   vector   an exception's vector offset
 *   pc       the event's pc (a save or load routine's address)
 *   addr     a save or load's buffer (Z0 for SVE); a VM entry's vCPU id
 *   vl       a save or load's vector length in bytes
 *   sum      checksum of the FP/SIMD content moved (V0-V31 or the low 128
 *            bits of Z0-Z31, FPSR, FPCR): equal sums <=> equal content
 *   ext      checksum of the rest of an SVE state (Z high parts, P, FFR)
 *   trapped  1: a VM entry or exit with the guest's FP/SIMD trapped to EL2
 *   task     the current task the kernel named in SP_EL0
 *   quiet    1: a user return with nothing in between since the entry
 *   noentry  1: a user return with no entry before it
 *   finding  what the analysis must find at this event: the sequence stages
 *            a task switch that leaves one task's registers to another
 *            (foreign_save), a system call that returns other registers,
 *            and a guest entered with registers that are not its own
 *            (corrupted_state)
 *
 * Built with -mgeneral-regs-only: the compiler never touches the FP/SIMD
 * registers; start.S does, where the sequence says.
 */
#include <stdint.h>

#define UART_DR         ((volatile uint32_t *)0x09000000)

#define SYSREG(op0, op1, crn, crm, op2) \
    ((op0) << 14 | (op1) << 11 | (crn) << 7 | (crm) << 3 | (op2))
#define SR_CPACR_EL1    SYSREG(3, 0, 1, 0, 2)
#define SR_CPACR_EL12   SYSREG(3, 5, 1, 0, 2)
#define SR_CPTR_EL2     SYSREG(3, 4, 1, 1, 2)
#define SR_ZCR_EL1      SYSREG(3, 0, 1, 2, 0)
#define SR_ZCR_EL2      SYSREG(3, 4, 1, 2, 0)
#define SR_ZCR_EL12     SYSREG(3, 5, 1, 2, 0)
#define SR_SMCR_EL1     SYSREG(3, 0, 1, 2, 6)
#define SR_SMCR_EL2     SYSREG(3, 4, 1, 2, 6)
#define SR_SMCR_EL12    SYSREG(3, 5, 1, 2, 6)
#define SR_SVCR         SYSREG(3, 3, 4, 2, 2)

#define HCR_VM          (1ull << 0)
#define HCR_TGE         (1ull << 27)
#define HCR_RW          (1ull << 31)
#define HCR_E2H         (1ull << 34)

/* CPTR_EL2 without E2H: RES1 bits, TZ, TFP, TSM. */
#define CPTR_RES1       0x22ffull
#define CPTR_TZ         (1ull << 8)
#define CPTR_TFP        (1ull << 10)
#define CPTR_TSM        (1ull << 12)
/* CPACR_EL1, and CPTR_EL2 with E2H: 0b11 in each field is "no trap". */
#define CPACR_ZEN       (3ull << 16)
#define CPACR_FPEN      (3ull << 20)
#define CPACR_FPEN_EL1  (1ull << 20)    /* FP/SIMD for EL1 only: EL0 traps */
#define CPACR_SMEN      (3ull << 24)

#define SPSR_EL1H       0x3c5           /* EL1, SP_EL1, DAIF masked */
#define SPSR_EL0T       0x3c0

#define EC_SVC64        0x15
#define EC_HVC64        0x16
#define EC_FP           0x07
#define EC_SVE          0x19
#define EC_SME          0x1d

#define VL_BYTES        32              /* ZCR_ELx.LEN = 1: 256-bit vectors */
#define SMCR_LEN_256    1ull            /* SMCR_ELx.LEN = 1: 256-bit streaming vectors */
#define SMCR_EZT0       (1ull << 30)
#define SVL_MAX         64              /* bytes: what za_image holds */
#define ZT0_BYTES       64
#define VMID            7ull
#define VCPU_AFF0       3ull
#define TASK_A          0xffff0000c0de0000ull
#define TASK_B          0xfff00000c0de4000ull     /* 52-bit VA linear map */

struct frame {
    uint64_t x[31];
    uint64_t elr, spsr, pad;
};

/* start.S */
uint64_t drop_to_el2(void (*pc)(void), uint64_t spsr, uint64_t arg);
uint64_t drop_to_el1(void (*pc)(void), uint64_t spsr, uint64_t arg);
#define ACCESSORS(name) uint64_t read_##name(void); void write_##name(uint64_t v)
ACCESSORS(cptr_el2); ACCESSORS(cpacr_el1); ACCESSORS(cpacr_el12);
ACCESSORS(zcr_el1); ACCESSORS(zcr_el2); ACCESSORS(zcr_el12);
ACCESSORS(smcr_el1); ACCESSORS(smcr_el2); ACCESSORS(smcr_el12);
ACCESSORS(svcr); ACCESSORS(hcr_el2); ACCESSORS(vttbr_el2); ACCESSORS(vtcr_el2);
ACCESSORS(vmpidr_el2); ACCESSORS(vbar_el1); ACCESSORS(sp_el1);
void write_sp_el0(uint64_t v);
void sm_start(void);
void sm_stop(void);
void touch_fp(void);
void touch_sve(void);
void touch_sme(void);
void fill_regs(const void *image);
void fpsimd_save_state(void *buf);
void fpsimd_load_state(const void *buf);
void sve_save_state(void *base, uint32_t *fpsr_fpcr);
void sve_load_state(const void *base, const uint32_t *fpsr_fpcr);
uint64_t sme_vl(void);
uint64_t read_id_aa64smfr0(void);
void sme_save_state(void *buf, uint32_t zt_count);
void sme_load_state(const void *buf, uint32_t zt_count);
void za_save_state(void *buf);
void user_main(void);
void guest_main(void);
void guest_quiet(void);
extern char vectors_el1[];

/* An FPSIMD image as the kernel lays it out: V0-V31, FPSR, FPCR. */
struct fpsimd_image {
    uint8_t v[32][16];
    uint32_t fpsr, fpcr;
    uint64_t pad;
} __attribute__((aligned(16)));

/* An SVE buffer at VL_BYTES: 32 Z, 16 P, FFR; base = &z[34]. */
struct sve_image {
    uint8_t z[32][VL_BYTES];
    uint8_t p[17][VL_BYTES / 8];
    uint8_t pad[32];
} __attribute__((aligned(16)));

static struct fpsimd_image img_a, img_c, img_g, img_h, user_img_l;
static struct fpsimd_image save_1, save_2, save_3, save_4, save_5;
static struct fpsimd_image host_save, guest_save, user_save_1, user_save_2;
static struct sve_image sve_1, sve_2, sve_3;
static uint32_t sve_ctl_1[2], sve_ctl_2[2], sve_ctl_3[2];
struct fpsimd_image user_regs;
static uint64_t stage2[512] __attribute__((aligned(4096)));
static uint8_t stack_el1[16384] __attribute__((aligned(16)));
static uint8_t stack_el0[16384] __attribute__((aligned(16)));
static uint8_t stack_guest[16384] __attribute__((aligned(16)));

/* ---- output -------------------------------------------------------------- */

static void put_char(char c)
{
    *UART_DR = (uint32_t)c;
}

static void put_str(const char *s)
{
    while (*s) {
        put_char(*s++);
    }
}

static void put_hex(uint64_t v)
{
    put_str("0x");
    for (int shift = 60; shift >= 0; shift -= 4) {
        if ((v >> shift) || !shift) {
            put_char("0123456789abcdef"[(v >> shift) & 15]);
        }
    }
}

static void put_kv(const char *key, uint64_t v)
{
    put_char(' ');
    put_str(key);
    put_char('=');
    put_hex(v);
}

static void op_begin(const char *kind, unsigned el)
{
    put_str("OP kind=");
    put_str(kind);
    put_kv("el", el);
}

static const char *next_finding;

static void op_end(void)
{
    if (next_finding) {
        put_str(" finding=");
        put_str(next_finding);
        next_finding = 0;
    }
    put_char('\n');
}

/* ---- content ------------------------------------------------------------- */

/* FNV-1a, 64-bit: a checksum of bytes, here only to compare contents. */
static uint64_t fnv_bytes(uint64_t h, const void *p, unsigned len)
{
    const uint8_t *b = p;

    for (unsigned i = 0; i < len; i++) {
        h = (h ^ b[i]) * 0x100000001b3ull;
    }
    return h;
}

#define FNV_INIT 0xcbf29ce484222325ull

static uint64_t fpsimd_sum(const struct fpsimd_image *im)
{
    return fnv_bytes(FNV_INIT, im, 32 * 16 + 8);
}

/* The same image from an SVE buffer: the low 128 bits of each Z. */
static uint64_t sve_sum(const struct sve_image *im, const uint32_t *fpsr_fpcr)
{
    uint64_t h = FNV_INIT;

    for (unsigned n = 0; n < 32; n++) {
        h = fnv_bytes(h, im->z[n], 16);
    }
    return fnv_bytes(h, fpsr_fpcr, 8);
}

static uint64_t sve_ext_sum(const struct sve_image *im)
{
    uint64_t h = FNV_INIT;

    for (unsigned n = 0; n < 32; n++) {
        h = fnv_bytes(h, im->z[n] + 16, VL_BYTES - 16);
    }
    return fnv_bytes(h, im->p, 16 * (VL_BYTES / 8));
}

static void fill_pattern(struct fpsimd_image *im, uint8_t seed, uint32_t fpcr)
{
    for (unsigned n = 0; n < 32; n++) {
        for (unsigned i = 0; i < 16; i++) {
            im->v[n][i] = (uint8_t)(seed + 7 * n + 13 * i);
        }
    }
    im->fpsr = 0;
    im->fpcr = fpcr;
}

/* A ZA buffer as the kernel lays it out: SVL rows of SVL bytes, then ZT0. */
struct za_image {
    uint8_t b[SVL_MAX * SVL_MAX + ZT0_BYTES];
} __attribute__((aligned(16)));

static struct za_image za_src, za_1, za_2, za_3, za_4;

static uint64_t za_sum(const struct za_image *im, uint64_t svl, uint32_t zt)
{
    return fnv_bytes(FNV_INIT, im->b, svl * svl + (zt ? ZT0_BYTES : 0));
}

/* ---- operations, each with its OP line ----------------------------------- */

static unsigned current_el(void)
{
    uint64_t el;

    __asm__ volatile("mrs %0, CurrentEL" : "=r"(el));
    return (el >> 2) & 3;
}

static uint64_t current_task;   /* what SP_EL0 last named at EL1, 0: none */
static int in_guest;

static void op_task(void)
{
    if (current_task && current_el() == 1) {
        put_kv("task", current_task);
    }
}

/* A write of a control register by name; reached: the one it lands in. */
static void control_write(const char *kind, unsigned named, unsigned reached,
                          uint64_t (*rd)(void), void (*wr)(uint64_t), uint64_t value)
{
    uint64_t old = rd();

    op_begin(kind, current_el());
    put_kv("index", named | (uint64_t)reached << 16);
    put_kv("value", value);
    put_kv("old", old);
    put_kv("l2", in_guest);
    op_task();
    op_end();
    wr(value);
}

static void fpsimd_save(struct fpsimd_image *buf)
{
    op_begin("fpsimd_save", current_el());
    put_kv("pc", (uint64_t)fpsimd_save_state);
    put_kv("addr", (uint64_t)buf);
    put_kv("vl", 16);
    op_task();
    fpsimd_save_state(buf);
    put_kv("sum", fpsimd_sum(buf));
    op_end();
}

static void fpsimd_load(const struct fpsimd_image *buf)
{
    op_begin("fpsimd_load", current_el());
    put_kv("pc", (uint64_t)fpsimd_load_state);
    put_kv("addr", (uint64_t)buf);
    put_kv("vl", 16);
    put_kv("sum", fpsimd_sum(buf));
    op_task();
    op_end();
    fpsimd_load_state(buf);
}

static void sve_save(struct sve_image *buf, uint32_t *ctl)
{
    op_begin("sve_save", current_el());
    put_kv("pc", (uint64_t)sve_save_state);
    put_kv("addr", (uint64_t)buf);
    put_kv("vl", VL_BYTES);
    sve_save_state(buf->z[0] + 34 * VL_BYTES, ctl);
    put_kv("sum", sve_sum(buf, ctl));
    put_kv("ext", sve_ext_sum(buf));
    op_end();
}

static void sve_load(const struct sve_image *buf, const uint32_t *ctl)
{
    op_begin("sve_load", current_el());
    put_kv("pc", (uint64_t)sve_load_state);
    put_kv("addr", (uint64_t)buf);
    put_kv("vl", VL_BYTES);
    put_kv("sum", sve_sum(buf, ctl));
    put_kv("ext", sve_ext_sum(buf));
    op_end();
    sve_load_state(buf->z[0] + 34 * VL_BYTES, ctl);
}

/*
 * ZA (and ZT0 when zt is set) saved or loaded through sme_save_state/
 * sme_load_state; old_form: za_save_state, the form before ZT0.
 */
static void za_save(struct za_image *buf, uint64_t svl, uint32_t zt, int old_form)
{
    op_begin("sme_save", current_el());
    put_kv("pc", old_form ? (uint64_t)za_save_state : (uint64_t)sme_save_state);
    put_kv("addr", (uint64_t)buf);
    put_kv("vl", svl);
    put_kv("zt", zt);
    if (old_form) {
        za_save_state(buf);
    } else {
        sme_save_state(buf, zt);
    }
    put_kv("sum", za_sum(buf, svl, zt));
    op_end();
}

static void za_load(const struct za_image *buf, uint64_t svl, uint32_t zt)
{
    op_begin("sme_load", current_el());
    put_kv("pc", (uint64_t)sme_load_state);
    put_kv("addr", (uint64_t)buf);
    put_kv("vl", svl);
    put_kv("zt", zt);
    put_kv("sum", za_sum(buf, svl, zt));
    op_end();
    sme_load_state(buf, zt);
}

/* SMSTART (value 3: PSTATE.SM and ZA set) or SMSTOP (0): the immediate forms. */
static void sm_set(uint64_t value)
{
    if (value) {
        sm_start();
    } else {
        sm_stop();
    }
}

/* ---- exceptions -------------------------------------------------------------- */

static volatile uint64_t last_esr;
static int failed;
static volatile unsigned trap_count;
static uint64_t guest_id;

static void op_trap(unsigned el, unsigned vector, uint64_t esr)
{
    op_begin("fp_trap", el);
    put_kv("value", esr);
    put_kv("vector", vector);
    put_kv("l2", in_guest);
    op_task();
    op_end();
}

static void op_vm_entry(int trapped)
{
    op_begin("vm_entry", 2);
    put_kv("addr", guest_id);
    put_kv("trapped", trapped);
    op_end();
    in_guest = 1;
}

static void op_vm_exit(uint64_t esr, unsigned vector, int trapped)
{
    in_guest = 0;
    op_begin("vm_exit", 2);
    put_kv("addr", guest_id);
    put_kv("value", esr);
    put_kv("vector", vector);
    put_kv("trapped", trapped);
    op_end();
}

static void op_user_return(int quiet, int noentry, const struct fpsimd_image *regs)
{
    op_begin("user_return", 0);
    put_kv("quiet", quiet);
    put_kv("noentry", noentry);
    if (regs) {
        put_kv("sum", fpsimd_sum(regs));
    }
    op_task();
    op_end();
}

static void op_user_entry(const struct fpsimd_image *regs)
{
    op_begin("user_entry", 1);
    put_kv("sum", fpsimd_sum(regs));
    op_task();
    op_end();
}

/*
 * A system call from EL0 (SVC #1, x8 the request): what the kernel side
 * does with the user's registers before it returns.
 */
enum request {
    REQ_END,
    REQ_NOTHING,        /* a quiet return */
    REQ_SAVE,           /* save them (the entry is written first) */
    REQ_LOAD_OTHER,     /* save them, then load other registers */
    REQ_FP_EL1_ONLY,    /* CPACR_EL1: FP/SIMD for EL1 only; EL0 then traps */
};

static void syscall_el1(struct frame *f)
{
    switch (f->x[8]) {
    case REQ_NOTHING:
        op_user_return(1, 0, 0);
        break;
    case REQ_SAVE:
        op_user_entry(&user_regs);
        fpsimd_save(&user_save_1);
        op_user_return(0, 0, &user_regs);
        break;
    case REQ_LOAD_OTHER:
        op_user_entry(&user_regs);
        fpsimd_save(&user_save_2);
        fpsimd_load(&user_img_l);
        next_finding = "corrupted_state";
        op_user_return(0, 0, &user_img_l);
        break;
    case REQ_FP_EL1_ONLY:
        control_write("cpacr_write", SR_CPACR_EL1, SR_CPACR_EL1, read_cpacr_el1,
                      write_cpacr_el1, CPACR_FPEN_EL1 | CPACR_ZEN | CPACR_SMEN);
        op_user_return(1, 0, 0);
        break;         /* user_main's next FP/SIMD instruction traps */
    }
}

/*
 * Every exception: el, the vector offset, ESR. Returns nonzero when the
 * lower EL asks to go back (HVC #0 to EL2, SVC #0 to EL1).
 */
uint64_t on_exception(unsigned el, unsigned vector, uint64_t esr, struct frame *f);
uint64_t on_exception(unsigned el, unsigned vector, uint64_t esr, struct frame *f)
{
    unsigned ec = (esr >> 26) & 0x3f;
    int from_lower = vector >= 0x400;
    int guest = el == 2 && from_lower && (read_hcr_el2() & (HCR_VM | HCR_TGE)) == HCR_VM;

    last_esr = esr;
    if ((vector & 0x180) != 0) {
        put_str("FAIL: asynchronous exception\n");
        failed = 1;
        return 0;
    }
    if (guest) {
        uint64_t hcr = read_hcr_el2(), cptr = read_cptr_el2();
        int trapped = (hcr & HCR_E2H) ? (cptr & CPACR_FPEN) != CPACR_FPEN : !!(cptr & CPTR_TFP);
        op_vm_exit(esr, vector, trapped);
    }
    if (ec == EC_FP || ec == EC_SVE || ec == EC_SME) {
        trap_count++;
        if (guest) {
            /*
             * KVM's lazy switch (kvm_hyp_handle_fpsimd()): save the host's
             * registers, stop trapping, load the guest's, re-run the
             * instruction.
             */
            in_guest = 1;
            op_trap(el, vector, esr);
            in_guest = 0;
            control_write("cptr_write", SR_CPTR_EL2, SR_CPTR_EL2, read_cptr_el2, write_cptr_el2,
                          CPTR_RES1);
            next_finding = "foreign_save";  /* still A's registers, B current */
            fpsimd_save(&host_save);
            fpsimd_load(&img_g);
            op_vm_entry(0);
            return 0;
        }
        op_trap(el, vector, esr);
        if (el == 1 && from_lower) {
            /* EL0's FP/SIMD trap: enable it for EL0 too, and re-run. */
            control_write("cpacr_write", SR_CPACR_EL1, SR_CPACR_EL1, read_cpacr_el1,
                          write_cpacr_el1, CPACR_FPEN | CPACR_ZEN | CPACR_SMEN);
            op_user_return(1, 0, 0);
            return 0;
        }
        f->elr += 4;            /* skip it: touch_* is one instruction and RET */
        return 0;
    }
    if (el == 2 && from_lower && ec == EC_HVC64) {
        return 1;
    }
    if (el == 1 && from_lower && ec == EC_SVC64) {
        if (((esr & 0xffff) == 0)) {
            return 1;
        }
        syscall_el1(f);
        return 0;
    }
    failed = 1;
    put_str("FAIL: unexpected exception esr=");
    put_hex(esr);
    put_str(" el=");
    put_hex(el);
    put_str(" elr=");
    put_hex(f->elr);
    put_char('\n');
    return 0;
}

/* ---- the sequence ------------------------------------------------------------ */

static void expect_trap(void (*touch)(void), unsigned ec)
{
    unsigned before = trap_count;

    touch();
    if (trap_count != before + 1 || ((last_esr >> 26) & 0x3f) != ec) {
        failed = 1;
        put_str("FAIL: no trap with EC ");
        put_hex(ec);
        put_char('\n');
    }
}

/* EL2 without E2H: CPTR_EL2's trap bits, the EL2 registers, saves and loads. */
static void part_el2(void)
{
    put_str("PART el2\n");
    control_write("cptr_write", SR_CPTR_EL2, SR_CPTR_EL2, read_cptr_el2, write_cptr_el2,
                  CPTR_RES1 | CPTR_TFP);
    expect_trap(touch_fp, EC_FP);
    control_write("cptr_write", SR_CPTR_EL2, SR_CPTR_EL2, read_cptr_el2, write_cptr_el2,
                  CPTR_RES1 | CPTR_TZ);
    expect_trap(touch_sve, EC_SVE);
    control_write("cptr_write", SR_CPTR_EL2, SR_CPTR_EL2, read_cptr_el2, write_cptr_el2,
                  CPTR_RES1 | CPTR_TSM);
    expect_trap(touch_sme, EC_SME);
    control_write("cptr_write", SR_CPTR_EL2, SR_CPTR_EL2, read_cptr_el2, write_cptr_el2,
                  CPTR_RES1);
    control_write("zcr_write", SR_ZCR_EL2, SR_ZCR_EL2, read_zcr_el2, write_zcr_el2,
                  VL_BYTES / 16 - 1);
    control_write("smcr_write", SR_SMCR_EL2, SR_SMCR_EL2, read_smcr_el2, write_smcr_el2, 0);

    /* SMSTART and SMSTOP (MSR SVCRSMZA, #imm: SM and ZA together), then MSR SVCR, xN. */
    control_write("svcr_write", SR_SVCR, SR_SVCR, read_svcr, sm_set, 3);
    control_write("svcr_write", SR_SVCR, SR_SVCR, read_svcr, sm_set, 0);
    control_write("svcr_write", SR_SVCR, SR_SVCR, read_svcr, write_svcr, 2);
    control_write("svcr_write", SR_SVCR, SR_SVCR, read_svcr, write_svcr, 0);

    /* Saves and loads: A twice, then C loaded and saved, then as SVE. */
    fill_pattern(&img_a, 0x11, 0);
    fill_pattern(&img_c, 0x5a, 0x03000000);     /* FPCR.RMode, to be seen */
    fill_regs(&img_a);
    fpsimd_save(&save_1);
    fpsimd_save(&save_2);
    fpsimd_load(&img_c);
    fpsimd_save(&save_3);
    sve_save(&sve_1, sve_ctl_1);
    /* New high parts and predicates, same low parts: ext changes, sum does not. */
    for (unsigned n = 0; n < 32; n++) {
        for (unsigned i = 16; i < VL_BYTES; i++) {
            sve_1.z[n][i] ^= 0xa5;
        }
    }
    for (unsigned p = 0; p < 16; p++) {
        sve_1.p[p][0] ^= 0x11;
    }
    sve_ctl_2[0] = sve_ctl_1[0];
    sve_ctl_2[1] = sve_ctl_1[1];
    sve_load(&sve_1, sve_ctl_2);
    sve_save(&sve_2, sve_ctl_3);
    /* Only a predicate bit changes: ext changes too. */
    sve_2.p[15][VL_BYTES / 8 - 1] ^= 0x80;
    sve_load(&sve_2, sve_ctl_3);
    sve_save(&sve_3, sve_ctl_1);
    fpsimd_save(&save_4);

    /*
     * ZA (and ZT0 with SME2): a pattern loaded and saved, a last ZA byte
     * changed, then a last ZT0 byte, and ZA saved in the form before ZT0.
     * Enabling ZA zeroes it; ZT0 needs SMCR_EL2.EZT0.
     */
    uint32_t zt = ((read_id_aa64smfr0() >> 56) & 0xf) != 0;
    control_write("smcr_write", SR_SMCR_EL2, SR_SMCR_EL2, read_smcr_el2, write_smcr_el2,
                  SMCR_LEN_256 | (zt ? SMCR_EZT0 : 0));
    control_write("svcr_write", SR_SVCR, SR_SVCR, read_svcr, write_svcr, 2);
    uint64_t svl = sme_vl();
    if (svl > SVL_MAX) {
        put_str("FAIL streaming vector length too long for za_image\n");
        return;
    }
    for (unsigned i = 0; i < sizeof(za_src.b); i++) {
        za_src.b[i] = (uint8_t)(0x3c + 11 * i + (i >> 8));
    }
    za_load(&za_src, svl, zt);
    za_save(&za_1, svl, zt, 0);
    za_src.b[svl * svl - 1] ^= 0x40;
    za_load(&za_src, svl, zt);
    za_save(&za_2, svl, zt, 0);
    if (zt) {
        za_src.b[svl * svl + ZT0_BYTES - 1] ^= 0x02;
        za_load(&za_src, svl, zt);
        za_save(&za_3, svl, zt, 0);
    }
    za_save(&za_4, svl, 0, 1);
    control_write("svcr_write", SR_SVCR, SR_SVCR, read_svcr, write_svcr, 0);
}

/* EL1 as a host kernel (HCR_EL2.VM clear), and EL0 under it. */
static uint64_t user_requests[] = {
    REQ_NOTHING, REQ_SAVE, REQ_LOAD_OTHER, REQ_FP_EL1_ONLY, REQ_END,
};

static void host_el1(void)
{
    write_vbar_el1((uint64_t)vectors_el1);
    write_sp_el0(TASK_A);
    current_task = TASK_A;
    control_write("cpacr_write", SR_CPACR_EL1, SR_CPACR_EL1, read_cpacr_el1, write_cpacr_el1, 0);
    expect_trap(touch_fp, EC_FP);
    control_write("cpacr_write", SR_CPACR_EL1, SR_CPACR_EL1, read_cpacr_el1, write_cpacr_el1,
                  CPACR_FPEN);
    expect_trap(touch_sve, EC_SVE);
    control_write("cpacr_write", SR_CPACR_EL1, SR_CPACR_EL1, read_cpacr_el1, write_cpacr_el1,
                  CPACR_FPEN | CPACR_ZEN | CPACR_SMEN);
    control_write("zcr_write", SR_ZCR_EL1, SR_ZCR_EL1, read_zcr_el1, write_zcr_el1,
                  VL_BYTES / 16 - 1);
    control_write("smcr_write", SR_SMCR_EL1, SR_SMCR_EL1, read_smcr_el1, write_smcr_el1, 0);

    /* EL0: its registers, four system calls, an FP/SIMD trap, and SVC #0 back. */
    fill_pattern(&user_regs, 0x33, 0);
    fill_pattern(&user_img_l, 0x77, 0);
    op_user_return(0, 1, 0);
    write_sp_el0((uint64_t)(stack_el0 + sizeof(stack_el0)));   /* user SP: not a task */
    drop_to_el1(user_main, SPSR_EL0T, (uint64_t)user_requests);
    /* A switch to another task: its saves are not the entry's. */
    write_sp_el0(TASK_B);
    current_task = TASK_B;
    next_finding = "foreign_save";      /* task A's registers, saved as B's */
    fpsimd_save(&save_5);
    current_task = 0;
    __asm__ volatile("hvc #0");
}

/* A guest vCPU: stage 2 maps IPA = PA for the first 4 GiB. */
static void guest_setup(void)
{
    /* 1 GiB blocks at level 1: device for 0-1 GiB (the UART), normal after. */
    stage2[0] = 0x00000000ull | 0x4c5;  /* AF, S2AP RW, MemAttr device, block */
    for (uint64_t i = 1; i < 4; i++) {
        stage2[i] = (i << 30) | 0x7fd;  /* ... inner shareable, normal WB */
    }
    /* T0SZ 32, SL0 1 (level 1), WB WA, inner shareable, 4K granule, 40-bit PA. */
    write_vtcr_el2(1ull << 31 | 2ull << 16 | 3ull << 12 | 1ull << 10 | 1ull << 8 |
                   1ull << 6 | 32);
    write_vttbr_el2((uint64_t)stage2 | VMID << 48);
    write_vmpidr_el2(1ull << 31 | VCPU_AFF0);
    guest_id = (uint64_t)stage2 | VMID << 48 | VCPU_AFF0 << 1 | 1;
    write_sp_el1((uint64_t)(stack_guest + sizeof(stack_guest)));
}

/* nVHE: the guest traps on FP/SIMD, the hypervisor switches lazily. */
static void part_guest_nvhe(void)
{
    put_str("PART guest-nvhe\n");
    guest_setup();
    fill_pattern(&img_h, 0x21, 0);
    fill_pattern(&img_g, 0x42, 0x00400000);
    fill_regs(&img_h);
    write_hcr_el2(HCR_RW | HCR_VM);
    control_write("cptr_write", SR_CPTR_EL2, SR_CPTR_EL2, read_cptr_el2, write_cptr_el2,
                  CPTR_RES1 | CPTR_TFP);
    op_vm_entry(1);
    /* The guest enables FP/SIMD for itself: a write of CPACR_EL1 in the guest. */
    in_guest = 1;
    op_begin("cpacr_write", 1);
    put_kv("index", SR_CPACR_EL1 | (uint64_t)SR_CPACR_EL1 << 16);
    put_kv("value", CPACR_FPEN);
    put_kv("old", read_cpacr_el1());
    put_kv("l2", 1);
    op_end();
    drop_to_el2(guest_main, SPSR_EL1H, CPACR_FPEN);
    /* The guest's d0 = 1.0 over img_g: save it; the exit saw the same. */
    fpsimd_save(&guest_save);
    fpsimd_load(&img_h);
    write_hcr_el2(HCR_RW);
}

/* VHE: E2H redirects the EL1 names at EL2; EL12 names reach EL1. */
static void part_vhe(void)
{
    put_str("PART vhe\n");
    write_hcr_el2(HCR_E2H | HCR_TGE | HCR_RW);
    /* With E2H, CPTR_EL2 has CPACR's layout: its old value has FPEN clear. */
    control_write("cptr_write", SR_CPACR_EL1, SR_CPTR_EL2, read_cpacr_el1, write_cpacr_el1,
                  CPACR_FPEN | CPACR_ZEN | CPACR_SMEN);
    control_write("cpacr_write", SR_CPACR_EL12, SR_CPACR_EL1, read_cpacr_el12, write_cpacr_el12,
                  CPACR_FPEN);
    control_write("zcr_write", SR_ZCR_EL1, SR_ZCR_EL2, read_zcr_el1, write_zcr_el1, 0);
    control_write("zcr_write", SR_ZCR_EL12, SR_ZCR_EL1, read_zcr_el12, write_zcr_el12, 0);
    control_write("smcr_write", SR_SMCR_EL1, SR_SMCR_EL2, read_smcr_el1, write_smcr_el1, 1);
    control_write("smcr_write", SR_SMCR_EL12, SR_SMCR_EL1, read_smcr_el12, write_smcr_el12, 1);
    control_write("cptr_write", SR_CPACR_EL1, SR_CPTR_EL2, read_cpacr_el1, write_cpacr_el1,
                  CPACR_ZEN);
    expect_trap(touch_fp, EC_FP);
    /* A guest entered with FP/SIMD trapped (FPEN clear), which leaves at once. */
    write_hcr_el2(HCR_E2H | HCR_RW | HCR_VM);
    op_vm_entry(1);
    drop_to_el2(guest_quiet, SPSR_EL1H, 0);
    control_write("cptr_write", SR_CPACR_EL1, SR_CPTR_EL2, read_cpacr_el1, write_cpacr_el1,
                  CPACR_FPEN | CPACR_ZEN | CPACR_SMEN);
    /* Untrapped, but its registers were never loaded: not what it left with. */
    next_finding = "corrupted_state";
    op_vm_entry(0);
    drop_to_el2(guest_quiet, SPSR_EL1H, 0);
    write_hcr_el2(HCR_RW);
}

int conformance_main(void);
int conformance_main(void)
{
    if (current_el() != 2) {
        put_str("FAIL: not started at EL2\n");
        return 1;
    }
    put_str("START\n");
    write_hcr_el2(HCR_RW);
    part_el2();

    put_str("PART el1\n");
    write_sp_el1((uint64_t)(stack_el1 + sizeof(stack_el1)));
    drop_to_el2(host_el1, SPSR_EL1H, 0);

    part_guest_nvhe();
    part_vhe();
    put_str("DONE traps=");
    put_hex(trap_count);
    put_char('\n');
    return failed;
}
