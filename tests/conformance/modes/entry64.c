/*
 * The 64-bit part of the CPU-mode conformance image: modes.S jumps here in
 * 64-bit mode after the protected-mode and compatibility-mode runs.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include <stdint.h>

void mode_sequence(const char *mode, uint32_t seed);

__attribute__((section(".text.entry"), noreturn)) void modes64_entry(void)
{
    mode_sequence("long64", 3);
    /* isa-debug-exit: QEMU ends with status (0x10 << 1) | 1. */
    __asm__ volatile("outb %0, %1" : : "a"((uint8_t)0x10), "Nd"((uint16_t)0xf4));
    for (;;) {
        __asm__ volatile("hlt");
    }
}
