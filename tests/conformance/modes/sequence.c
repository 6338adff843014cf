/*
 * The save/restore sequence of the CPU-mode conformance image, compiled
 * twice: -m32 (run in 32-bit protected mode and in compatibility mode) and
 * -m64 (run in 64-bit mode). Each operand is named once absolutely (a
 * global: disp32 in 32-bit code, RIP-relative in 64-bit code) and once
 * through a register, and every operation prints one line on COM1 with
 * the address it used and the class the analysis must give it.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include <stdint.h>

#define XSAVE_SIZE      1024

struct area {
    uint8_t bytes[XSAVE_SIZE];
} __attribute__((aligned(64)));

static struct area buf_x, buf_f;

static inline void outb(uint16_t port, uint8_t v)
{
    __asm__ volatile("outb %0, %1" : : "a"(v), "Nd"(port));
}

static void putc_serial(char c)
{
    outb(0x3f8, (uint8_t)c);
}

static void puts_serial(const char *s)
{
    while (*s) {
        putc_serial(*s++);
    }
}

static void put_hex(uint64_t v)
{
    char tmp[17];
    int n = 0;

    puts_serial("0x");
    do {
        tmp[n++] = "0123456789abcdef"[v & 15];
        v >>= 4;
    } while (v);
    while (n) {
        putc_serial(tmp[--n]);
    }
}

static void report(const char *mode, const char *kind, const char *form, const void *addr,
                   const char *expect)
{
    puts_serial("OP mode=");
    puts_serial(mode);
    puts_serial(" kind=");
    puts_serial(kind);
    puts_serial(" form=");
    puts_serial(form);
    puts_serial(" addr=");
    put_hex((uintptr_t)addr);
    puts_serial(" expect=");
    puts_serial(expect);
    puts_serial("\n");
}

/* Distinct register contents per mode: XMM0-7 and the x87 stack. */
static void load_registers(uint32_t seed)
{
    static uint32_t words[4] __attribute__((aligned(16)));

    for (int i = 0; i < 4; i++) {
        words[i] = seed * 0x9e3779b9u + i;
    }
    __asm__ volatile("fninit\n\t"
                     "fld1\n\t"
                     "movups %0, %%xmm0\n\t"
                     "movups %0, %%xmm3\n\t"
                     "pxor %%xmm7, %%xmm7\n\t"
                     "paddd %%xmm0, %%xmm7\n\t"
                     "paddd %%xmm0, %%xmm7"
                     : : "m"(words) : "memory");  /* no compiler code uses XMM (-mgeneral-regs-only) */
}

void mode_sequence(const char *mode, uint32_t seed)
{
    struct area *p;

    load_registers(seed);
    /* A first save: the buffer held zeros, not these registers. */
    __asm__ volatile("xsave %0" : "=m"(buf_x) : "a"(7), "d"(0) : "memory");
    report(mode, "xsave", "absolute", &buf_x, "necessary");
    p = &buf_x;
    __asm__ volatile("xsave (%0)" : : "r"(p), "a"(7), "d"(0) : "memory");
    report(mode, "xsave", "register", p, "redundant_save");
    __asm__ volatile("xrstor %0" : : "m"(buf_x), "a"(7), "d"(0) : "memory");
    report(mode, "xrstor", "absolute", &buf_x, "-");
    __asm__ volatile("fxsave %0" : "=m"(buf_f) : : "memory");
    report(mode, "fxsave", "absolute", &buf_f, "necessary");
    p = &buf_f;
    __asm__ volatile("fxsave (%0)" : : "r"(p) : "memory");
    report(mode, "fxsave", "register", p, "redundant_save");
    __asm__ volatile("fxrstor (%0)" : : "r"(p) : "memory");
    report(mode, "fxrstor", "register", p, "-");
}
