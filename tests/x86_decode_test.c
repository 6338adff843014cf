/*
 * The plugin's x86 decoder (plugin/x86-decode.c) against a table of
 * encodings, each expectation derived by hand from the Intel SDM vol. 2
 * (2.1 instruction format, ModRM and SIB tables 2-1 to 2-3; the opcode map
 * of appendix A for 0F AE and 0F C7's groups 15 and 9). Prints one line per
 * case that disagrees and exits 1 if any does; tests/test_x86_decode.py
 * runs it.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include <stdio.h>
#include <string.h>

#include "ftr-format.h"
#include "x86.h"

#define NONE    (-1)
#define RIP     (-2)

struct decode_case {
    const char *what;
    unsigned char bytes[16];
    unsigned len;
    bool cs64, default16;
    bool traced;                /* x86_decode() recognises it */
    unsigned kind, boundary, flags;
    int base, index;
    unsigned scale, segment, addr_size;
    int disp;
};

static const struct decode_case cases[] = {
    /* Group 15 (0F AE), memory forms without a mandatory prefix: /0 /1 /4 /5 /6. */
    { "fxsave [rdi]", { 0x0f, 0xae, 0x07 }, 3, true, false, true,
      FTR_KIND_FXSAVE, 0, 0, 7, NONE, 0, SREG_DS, FTR_ADDR_64, 0 },
    { "fxrstor [rdi]", { 0x0f, 0xae, 0x0f }, 3, true, false, true,
      FTR_KIND_FXRSTOR, 0, 0, 7, NONE, 0, SREG_DS, FTR_ADDR_64, 0 },
    { "xsave [rcx]", { 0x0f, 0xae, 0x21 }, 3, true, false, true,
      FTR_KIND_XSAVE, 0, 0, 1, NONE, 0, SREG_DS, FTR_ADDR_64, 0 },
    { "xrstor [rdi]", { 0x0f, 0xae, 0x2f }, 3, true, false, true,
      FTR_KIND_XRSTOR, 0, 0, 7, NONE, 0, SREG_DS, FTR_ADDR_64, 0 },
    { "xsaveopt [rdi]", { 0x0f, 0xae, 0x37 }, 3, true, false, true,
      FTR_KIND_XSAVEOPT, 0, 0, 7, NONE, 0, SREG_DS, FTR_ADDR_64, 0 },
    /* REX.W: the 64-bit forms (xsave64 ...). */
    { "xsave64 [rdi]", { 0x48, 0x0f, 0xae, 0x27 }, 4, true, false, true,
      FTR_KIND_XSAVE, 0, FTR_FLAG_FORM64, 7, NONE, 0, SREG_DS, FTR_ADDR_64, 0 },
    /* Group 9 (0F C7): /3 XRSTORS, /4 XSAVEC, /5 XSAVES. */
    { "xrstors [rdi]", { 0x0f, 0xc7, 0x1f }, 3, true, false, true,
      FTR_KIND_XRSTORS, 0, 0, 7, NONE, 0, SREG_DS, FTR_ADDR_64, 0 },
    { "xsavec [rdi]", { 0x0f, 0xc7, 0x27 }, 3, true, false, true,
      FTR_KIND_XSAVEC, 0, 0, 7, NONE, 0, SREG_DS, FTR_ADDR_64, 0 },
    { "xsaves [rdi]", { 0x0f, 0xc7, 0x2f }, 3, true, false, true,
      FTR_KIND_XSAVES, 0, 0, 7, NONE, 0, SREG_DS, FTR_ADDR_64, 0 },
    /* Addressing: SIB with RSP as base (SS by default), disp8. */
    { "xsave [rsp+8]", { 0x0f, 0xae, 0x64, 0x24, 0x08 }, 5, true, false, true,
      FTR_KIND_XSAVE, 0, 0, 4, NONE, 0, SREG_SS, FTR_ADDR_64, 8 },
    { "xsave [rbx+rcx*4]", { 0x0f, 0xae, 0x24, 0x8b }, 4, true, false, true,
      FTR_KIND_XSAVE, 0, 0, 3, 1, 2, SREG_DS, FTR_ADDR_64, 0 },
    { "xsave [rbp+0x100]", { 0x0f, 0xae, 0xa5, 0x00, 0x01, 0x00, 0x00 }, 7, true, false,
      true, FTR_KIND_XSAVE, 0, 0, 5, NONE, 0, SREG_SS, FTR_ADDR_64, 0x100 },
    { "xsave [r8] (REX.B)", { 0x41, 0x0f, 0xae, 0x20 }, 4, true, false, true,
      FTR_KIND_XSAVE, 0, 0, 8, NONE, 0, SREG_DS, FTR_ADDR_64, 0 },
    { "xsave gs:[rax]", { 0x65, 0x0f, 0xae, 0x20 }, 4, true, false, true,
      FTR_KIND_XSAVE, 0, 0, 0, NONE, 0, SREG_GS, FTR_ADDR_64, 0 },
    /* mod 00 r/m 101: RIP-relative in 64-bit mode, an absolute disp32 elsewhere. */
    { "xsave [rip+0x10]", { 0x0f, 0xae, 0x25, 0x10, 0, 0, 0 }, 7, true, false, true,
      FTR_KIND_XSAVE, 0, 0, RIP, NONE, 0, SREG_DS, FTR_ADDR_64, 0x10 },
    { "xsave [0x10] (32-bit)", { 0x0f, 0xae, 0x25, 0x10, 0, 0, 0 }, 7, false, false, true,
      FTR_KIND_XSAVE, 0, 0, NONE, NONE, 0, SREG_DS, FTR_ADDR_32, 0x10 },
    /* 0x67 in 64-bit mode: 32-bit addressing. */
    { "xsave [eax] (0x67)", { 0x67, 0x0f, 0xae, 0x20 }, 4, true, false, true,
      FTR_KIND_XSAVE, 0, 0, 0, NONE, 0, SREG_DS, FTR_ADDR_32, 0 },
    /* 16-bit addressing (the 8086 table): r/m 010 is [BP+SI], SS by default. */
    { "xsave [bp+si] (16-bit)", { 0x0f, 0xae, 0x22 }, 3, false, true, true,
      FTR_KIND_XSAVE, 0, 0, 5, 6, 0, SREG_SS, FTR_ADDR_16, 0 },
    /* Outside 64-bit mode 0x48 is DEC EAX, not REX.W. */
    { .what = "dec eax (32-bit)", .bytes = { 0x48, 0x0f, 0xae, 0x27 }, .len = 4 },
    /* The other traced instructions. */
    { .what = "xsetbv", .bytes = { 0x0f, 0x01, 0xd1 }, .len = 3, .cs64 = true,
      .traced = true, .kind = FTR_KIND_XSETBV },
    { .what = "wrmsr", .bytes = { 0x0f, 0x30 }, .len = 2, .cs64 = true, .traced = true,
      .kind = FTR_KIND_WRMSR },
    { .what = "vmrun", .bytes = { 0x0f, 0x01, 0xd8 }, .len = 3, .cs64 = true,
      .traced = true, .kind = FTR_KIND_VM_ENTRY },
    { .what = "swapgs", .bytes = { 0x0f, 0x01, 0xf8 }, .len = 3, .cs64 = true,
      .traced = true, .boundary = BOUNDARY_SWAPGS },
    { .what = "sysretq", .bytes = { 0x48, 0x0f, 0x07 }, .len = 3, .cs64 = true,
      .traced = true, .boundary = BOUNDARY_SYSRET, .flags = FTR_FLAG_FORM64 },
    { .what = "iretq", .bytes = { 0x48, 0xcf }, .len = 2, .cs64 = true, .traced = true,
      .boundary = BOUNDARY_IRET },
    /* Same opcodes, other instructions. */
    { .what = "lfence (mod 3)", .bytes = { 0x0f, 0xae, 0xe8 }, .len = 3,
      .cs64 = true },
    { .what = "clwb [rdi] (66)", .bytes = { 0x66, 0x0f, 0xae, 0x37 }, .len = 4,
      .cs64 = true },
    { .what = "rdfsbase eax (f3)", .bytes = { 0xf3, 0x0f, 0xae, 0xc0 }, .len = 4,
      .cs64 = true },
    { .what = "ldmxcsr [rdi] (/2)", .bytes = { 0x0f, 0xae, 0x17 }, .len = 3,
      .cs64 = true },
    { .what = "cmpxchg8b [rdi] (/1)", .bytes = { 0x0f, 0xc7, 0x0f }, .len = 3,
      .cs64 = true },
    { .what = "xgetbv", .bytes = { 0x0f, 0x01, 0xd0 }, .len = 3,
      .cs64 = true },
    /* Bytes that run out. */
    { .what = "xsave [rsp+8] cut", .bytes = { 0x0f, 0xae, 0x64, 0x24 }, .len = 4,
      .cs64 = true },
};

struct simd_case {
    const char *what;
    unsigned char bytes[8];
    unsigned len;
    bool fp_simd;
};

static const struct simd_case simd_cases[] = {
    { "movaps xmm0, xmm1", { 0x0f, 0x28, 0xc1 }, 3, true },
    { "pxor xmm0, xmm0", { 0x66, 0x0f, 0xef, 0xc0 }, 4, true },
    { "vzeroupper", { 0xc5, 0xf8, 0x77 }, 3, true },
    { "fld1", { 0xd9, 0xe8 }, 2, true },
    { "pshufb (0f 38 00)", { 0x66, 0x0f, 0x38, 0x00, 0xc1 }, 5, true },
    { "ldmxcsr [rdi]", { 0x0f, 0xae, 0x17 }, 3, true },
    { "movbe eax, [rdi] (0f 38 f0)", { 0x0f, 0x38, 0xf0, 0x07 }, 4, false },
    { "movnti [rdi], eax (0f c3)", { 0x0f, 0xc3, 0x07 }, 3, false },
    { "fxsave [rdi]", { 0x0f, 0xae, 0x07 }, 3, false },
    { "mov rbx, rax", { 0x48, 0x89, 0xc3 }, 3, false },
};

static int failures;

static void check(bool ok, const char *what, const char *field, long got, long want)
{
    if (!ok) {
        printf("%s: %s is %ld, want %ld\n", what, field, got, want);
        failures++;
    }
}

#define CHECK(c, got, field) check((long)(got) == (long)(c)->field, (c)->what, #field, \
                                   (long)(got), (long)(c)->field)

int main(void)
{
    unsigned n = 0;

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++, n++) {
        const struct decode_case *c = &cases[i];
        struct x86_decoded d;
        bool traced;

        memset(&d, 0, sizeof(d));
        traced = x86_decode(c->bytes, c->len, c->cs64, c->default16, &d);
        CHECK(c, traced, traced);
        if (!traced || !c->traced) {
            continue;
        }
        CHECK(c, d.kind, kind);
        CHECK(c, d.boundary, boundary);
        CHECK(c, d.flags, flags);
        if (!c->kind || c->kind == FTR_KIND_XSETBV || c->kind == FTR_KIND_WRMSR ||
            c->kind == FTR_KIND_VM_ENTRY) {
            continue;           /* no memory operand */
        }
        CHECK(c, d.ea.base, base);
        CHECK(c, d.ea.index, index);
        CHECK(c, d.ea.scale, scale);
        CHECK(c, d.ea.segment, segment);
        CHECK(c, d.ea.addr_size, addr_size);
        CHECK(c, d.ea.disp, disp);
    }
    for (size_t i = 0; i < sizeof(simd_cases) / sizeof(simd_cases[0]); i++, n++) {
        const struct simd_case *c = &simd_cases[i];

        CHECK(c, x86_is_fp_simd(c->bytes, c->len), fp_simd);
    }
    /*
     * The cheap filter passes every traced instruction; IRET and SYSRET only
     * with boundaries (SWAPGS shares 0F 01 with XSETBV and VMRUN).
     */
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++, n++) {
        const struct decode_case *c = &cases[i];
        bool returns = c->boundary == BOUNDARY_IRET || c->boundary == BOUNDARY_SYSRET;

        if (c->traced) {
            check(x86_maybe_traced(c->bytes, c->len, true), c->what, "maybe_traced", 0, 1);
            check(x86_maybe_traced(c->bytes, c->len, false) == !returns, c->what,
                  "maybe_traced without boundaries", returns, !returns);
        }
    }
    printf("%u cases, %d failed\n", n, failures);
    return failures ? 1 : 0;
}
