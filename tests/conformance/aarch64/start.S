/*
 * arm64 conformance image: entry, exception vectors, the lowering of the
 * exception level, and every instruction that touches the FP/SIMD state or
 * an FP control register. conformance.c (built -mgeneral-regs-only) drives
 * the sequence and says what each step did.
 *
 * QEMU's virt machine with virtualization=on starts an ELF at EL2, MMU off.
 */
        .arch   armv8.6-a+sve
        .arch_extension sme

#define FRAME_SIZE      272     /* x0-x30, ELR, SPSR, padding */
#define FRAME_ELR       248
#define FRAME_SPSR      256

        .section .text.entry, "ax"
        .globl  _start
_start:
        ldr     x0, =stack_el2_top
        mov     sp, x0
        ldr     x0, =vectors_el2
        msr     vbar_el2, x0
        isb
        bl      conformance_main
        /* Semihosting SYS_EXIT: ADP_Stopped_ApplicationExit with the status. */
        ldr     x1, =exit_block
        mov     x2, #0x26
        movk    x2, #2, lsl #16
        str     x2, [x1]
        str     x0, [x1, #8]
        mov     x0, #0x18
        hlt     #0xf000
1:      wfi
        b       1b

        .text
/*
 * Vector tables: sixteen 0x80-byte slots. Each saves x0/x1, puts its offset
 * in x0 and joins exception_common for its EL, which calls
 * on_exception(el, offset, esr, frame) in C. A nonzero answer means the
 * lower EL asked to go back to whoever lowered it (drop_to_elN): that call
 * returns the lower EL's x0. Otherwise the frame is restored and ERET
 * resumes at the (possibly changed) ELR.
 */
.macro vector_slot el, off
        .balign 0x80
        sub     sp, sp, #FRAME_SIZE
        stp     x0, x1, [sp]
        mov     x0, #\off
        b       exception_common_el\el
.endm

.macro vector_table el
        .balign 0x800
        .globl  vectors_el\el
vectors_el\el:
        .irp    off, 0x000, 0x080, 0x100, 0x180, 0x200, 0x280, 0x300, 0x380, \
                     0x400, 0x480, 0x500, 0x580, 0x600, 0x680, 0x700, 0x780
        vector_slot \el, \off
        .endr
.endm

.macro exception_common el
exception_common_el\el:
        stp     x2, x3, [sp, #16]
        stp     x4, x5, [sp, #32]
        stp     x6, x7, [sp, #48]
        stp     x8, x9, [sp, #64]
        stp     x10, x11, [sp, #80]
        stp     x12, x13, [sp, #96]
        stp     x14, x15, [sp, #112]
        stp     x16, x17, [sp, #128]
        stp     x18, x19, [sp, #144]
        stp     x20, x21, [sp, #160]
        stp     x22, x23, [sp, #176]
        stp     x24, x25, [sp, #192]
        stp     x26, x27, [sp, #208]
        stp     x28, x29, [sp, #224]
        str     x30, [sp, #240]
        mrs     x2, elr_el\el
        mrs     x3, spsr_el\el
        stp     x2, x3, [sp, #FRAME_ELR]
        mov     x1, x0
        mov     x0, #\el
        mrs     x2, esr_el\el
        mov     x3, sp
        bl      on_exception
        cbnz    x0, 2f
        ldp     x2, x3, [sp, #FRAME_ELR]
        msr     elr_el\el, x2
        msr     spsr_el\el, x3
        ldp     x2, x3, [sp, #16]
        ldp     x4, x5, [sp, #32]
        ldp     x6, x7, [sp, #48]
        ldp     x8, x9, [sp, #64]
        ldp     x10, x11, [sp, #80]
        ldp     x12, x13, [sp, #96]
        ldp     x14, x15, [sp, #112]
        ldp     x16, x17, [sp, #128]
        ldp     x18, x19, [sp, #144]
        ldp     x20, x21, [sp, #160]
        ldp     x22, x23, [sp, #176]
        ldp     x24, x25, [sp, #192]
        ldp     x26, x27, [sp, #208]
        ldp     x28, x29, [sp, #224]
        ldr     x30, [sp, #240]
        ldp     x0, x1, [sp]
        add     sp, sp, #FRAME_SIZE
        eret
2:      /* Back to drop_to_el\el's caller, with the lower EL's x0. */
        ldr     x0, [sp]
        ldr     x9, =lowered_el\el
        ldp     x19, x20, [x9]
        ldp     x21, x22, [x9, #16]
        ldp     x23, x24, [x9, #32]
        ldp     x25, x26, [x9, #48]
        ldp     x27, x28, [x9, #64]
        ldp     x29, x30, [x9, #80]
        ldr     x10, [x9, #96]
        mov     sp, x10
        ret

/*
 * uint64_t drop_to_el\el(pc, spsr, arg): ERET to pc in the mode spsr names,
 * with x0 = arg; returns when that code makes an HVC #0 or SVC #0 back.
 */
        .globl  drop_to_el\el
drop_to_el\el:
        ldr     x9, =lowered_el\el
        stp     x19, x20, [x9]
        stp     x21, x22, [x9, #16]
        stp     x23, x24, [x9, #32]
        stp     x25, x26, [x9, #48]
        stp     x27, x28, [x9, #64]
        stp     x29, x30, [x9, #80]
        mov     x10, sp
        str     x10, [x9, #96]
        msr     elr_el\el, x0
        msr     spsr_el\el, x1
        mov     x0, x2
        eret
.endm

        vector_table 2
        vector_table 1
        exception_common 2
        exception_common 1

/* ---- control registers ---------------------------------------------- */

.macro accessors name, reg
        .globl  read_\name, write_\name
read_\name:
        mrs     x0, \reg
        ret
write_\name:
        msr     \reg, x0
        isb
        ret
.endm

        accessors cptr_el2, cptr_el2
        accessors cpacr_el1, cpacr_el1
        accessors cpacr_el12, cpacr_el12
        accessors zcr_el1, zcr_el1
        accessors zcr_el2, zcr_el2
        accessors zcr_el12, zcr_el12
        accessors smcr_el1, smcr_el1
        accessors smcr_el2, smcr_el2
        accessors smcr_el12, smcr_el12
        accessors svcr, svcr
        accessors hcr_el2, hcr_el2
        accessors vttbr_el2, vttbr_el2
        accessors vtcr_el2, vtcr_el2
        accessors vmpidr_el2, vmpidr_el2
        accessors vbar_el1, vbar_el1
        accessors sp_el1, sp_el1

/* SP_EL0: at EL1 the kernel names its current task with it. */
        .globl  write_sp_el0
write_sp_el0:
        msr     sp_el0, x0
        ret

        .globl  sm_start, sm_stop
sm_start:
        smstart
        ret
sm_stop:
        smstop
        ret

/* ---- FP/SIMD instructions that may trap --------------------------------- */

/* Each is one instruction and a RET: a trap handler skips it by ELR += 4. */
        .globl  touch_fp, touch_sve, touch_sme
touch_fp:
        fmov    d31, xzr
        ret
touch_sve:
        rdvl    x0, #1
        ret
touch_sme:
        rdsvl   x0, #1
        ret

/* The streaming vector length in bytes, and ID_AA64SMFR0_EL1 (SMEver: SME2). */
        .globl  sme_vl, read_id_aa64smfr0
sme_vl:
        rdsvl   x0, #1
        ret
read_id_aa64smfr0:
        mrs     x0, id_aa64smfr0_el1
        ret

/* fill_regs(p): V0-V31 from p[0..511], FPSR and FPCR from p[512..519]. */
        .globl  fill_regs
fill_regs:
        ld1     {v0.16b-v3.16b}, [x0], #64
        ld1     {v4.16b-v7.16b}, [x0], #64
        ld1     {v8.16b-v11.16b}, [x0], #64
        ld1     {v12.16b-v15.16b}, [x0], #64
        ld1     {v16.16b-v19.16b}, [x0], #64
        ld1     {v20.16b-v23.16b}, [x0], #64
        ld1     {v24.16b-v27.16b}, [x0], #64
        ld1     {v28.16b-v31.16b}, [x0], #64
        ldr     w1, [x0]
        msr     fpsr, x1
        ldr     w1, [x0, #4]
        msr     fpcr, x1
        ret

/*
 * The save and load routines, instruction for instruction the sequences of
 * the kernel's fpsimd_save/fpsimd_restore and sve_save/sve_load macros
 * (arch/arm64/include/asm/fpsimdmacros.h), which the plugin recognises.
 */
        .balign 16
        .globl  fpsimd_save_state
fpsimd_save_state:                      /* x0: V0-V31, FPSR, FPCR */
        stp     q0, q1, [x0, #16 * 0]
        stp     q2, q3, [x0, #16 * 2]
        stp     q4, q5, [x0, #16 * 4]
        stp     q6, q7, [x0, #16 * 6]
        stp     q8, q9, [x0, #16 * 8]
        stp     q10, q11, [x0, #16 * 10]
        stp     q12, q13, [x0, #16 * 12]
        stp     q14, q15, [x0, #16 * 14]
        stp     q16, q17, [x0, #16 * 16]
        stp     q18, q19, [x0, #16 * 18]
        stp     q20, q21, [x0, #16 * 20]
        stp     q22, q23, [x0, #16 * 22]
        stp     q24, q25, [x0, #16 * 24]
        stp     q26, q27, [x0, #16 * 26]
        stp     q28, q29, [x0, #16 * 28]
        stp     q30, q31, [x0, #16 * 30]!
        mrs     x8, fpsr
        str     w8, [x0, #16 * 2]
        mrs     x8, fpcr
        str     w8, [x0, #16 * 2 + 4]
        ret

        .balign 16
        .globl  fpsimd_load_state
fpsimd_load_state:
        ldp     q0, q1, [x0, #16 * 0]
        ldp     q2, q3, [x0, #16 * 2]
        ldp     q4, q5, [x0, #16 * 4]
        ldp     q6, q7, [x0, #16 * 6]
        ldp     q8, q9, [x0, #16 * 8]
        ldp     q10, q11, [x0, #16 * 10]
        ldp     q12, q13, [x0, #16 * 12]
        ldp     q14, q15, [x0, #16 * 14]
        ldp     q16, q17, [x0, #16 * 16]
        ldp     q18, q19, [x0, #16 * 18]
        ldp     q20, q21, [x0, #16 * 20]
        ldp     q22, q23, [x0, #16 * 22]
        ldp     q24, q25, [x0, #16 * 24]
        ldp     q26, q27, [x0, #16 * 26]
        ldp     q28, q29, [x0, #16 * 28]
        ldp     q30, q31, [x0, #16 * 30]!
        ldr     w8, [x0, #16 * 2]
        msr     fpsr, x8
        ldr     w8, [x0, #16 * 2 + 4]
        mrs     x9, fpcr
        cmp     x8, x9
        b.eq    1f
        msr     fpcr, x8
1:      ret

/*
 * sve_save_state(base, fpsr_fpcr): Z0-Z31 at base - 34 VL .. base - 2 VL,
 * P0-P15 after them, FFR at base; FPSR and FPCR where x1 points.
 */
        .balign 16
        .globl  sve_save_state
sve_save_state:
        .irp    n, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, \
                   16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31
        str     z\n, [x0, #\n - 34, mul vl]
        .endr
        .irp    n, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15
        str     p\n, [x0, #\n - 16, mul vl]
        .endr
        rdffr   p0.b
        str     p0, [x0]
        ldr     p0, [x0, #-16, mul vl]
        mrs     x2, fpsr
        str     w2, [x1]
        mrs     x2, fpcr
        str     w2, [x1, #4]
        ret

        .balign 16
        .globl  sve_load_state
sve_load_state:
        .irp    n, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, \
                   16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31
        ldr     z\n, [x0, #\n - 34, mul vl]
        .endr
        ldr     p0, [x0]
        wrffr   p0.b
        .irp    n, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15
        ldr     p\n, [x0, #\n - 16, mul vl]
        .endr
        ldr     w2, [x1]
        msr     fpsr, x2
        ldr     w2, [x1, #4]
        msr     fpcr, x2
        ret

/*
 * ZA saves and loads in both of the kernel's forms (entry-fpsimd.S and the
 * sme_save_za/sme_load_za macros): sme_save_state(buf, zt_count) as since
 * 6.4, with ZT0 after ZA, and za_save_state(buf) as before, ZA alone. SVL
 * rows of SVL bytes, then ZT0's 64 bytes. ZT0 (SME2) by encoding, as the
 * kernel writes it.
 */
        .balign 16
        .globl  sme_save_state
sme_save_state:
        rdsvl   x2, #1
        mov     w12, #0
1:      str     za[w12, 0], [x0]
        add     x0, x0, x2
        add     x12, x12, #1
        cmp     x2, x12
        b.ne    1b
        cbz     w1, 2f
        .inst   0xe13f8000              /* str zt0, [x0] */
2:      ret

        .balign 16
        .globl  sme_load_state
sme_load_state:
        rdsvl   x2, #1
        mov     w12, #0
1:      ldr     za[w12, 0], [x0]
        add     x0, x0, x2
        add     x12, x12, #1
        cmp     x2, x12
        b.ne    1b
        cbz     w1, 2f
        .inst   0xe11f8000              /* ldr zt0, [x0] */
2:      ret

        .balign 16
        .globl  za_save_state
za_save_state:
        rdsvl   x1, #1
        mov     w12, #0
1:      str     za[w12, 0], [x0]
        add     x0, x0, x1
        add     x12, x12, #1
        cmp     x1, x12
        b.ne    1b
        ret

/* ---- code run below EL2 ------------------------------------------------- */

/*
 * user_main(request list): at EL0. Loads the registers from user_regs,
 * then makes one SVC #1 per request (x8 = request) and leaves with SVC #0.
 */
        .globl  user_main
user_main:
        mov     x19, x0
        ldr     x0, =user_regs
        bl      fill_regs
1:      ldr     x8, [x19], #8
        cbz     x8, 2f
        svc     #1
        fmov    x9, d31         /* reads only: traps when EL0 may not use FP/SIMD */
        b       1b
2:      svc     #0

/*
 * guest_main: at EL1 with HCR_EL2.VM set. Enables FP/SIMD for itself in
 * CPACR_EL1 (the value in x0), writes d0 (trapping to EL2 first when the
 * hypervisor traps FP/SIMD) and leaves with HVC #0.
 */
        .globl  guest_main
guest_main:
        msr     cpacr_el1, x0
        isb
        fmov    d0, #1.0
        hvc     #0

/* guest_quiet: at EL1 with HCR_EL2.VM set, leaves at once. */
        .globl  guest_quiet
guest_quiet:
        hvc     #0

        .ltorg

        .bss
        .balign 16
lowered_el2:    .skip 112
lowered_el1:    .skip 112
exit_block:     .skip 16
        .balign 16
        .skip   16384
        .globl  stack_el2_top
stack_el2_top:
