/*
 * Multiboot (v1) entry for the conformance image: QEMU's -kernel loads a
 * 32-bit ELF only, so this stub builds identity-mapped page tables, enters
 * long mode and jumps to the 64-bit payload linked at PAYLOAD_BASE.
 */
#include "longmode.h"

#define MB_MAGIC        0x1badb002
#define MB_FLAGS        0
#define PAYLOAD_BASE    0x200000

        .section .multiboot, "a"
        .align 4
        .long MB_MAGIC, MB_FLAGS, -(MB_MAGIC + MB_FLAGS)

        .section .text32, "ax"
        .code32
        .globl _start
_start:
        cli
        mov     $boot_stack_top, %esp

        /* PML4[0] -> PDPT; PDPT[0] -> PD; PD maps 0..1 GiB with 2 MiB pages. */
        /* User-accessible too: the payload runs part of its test at CPL 3. */
        mov     $pdpt, %eax
        or      $0x7, %eax
        mov     %eax, pml4
        /* PML4[511] too: the same memory at 0xffffff80_00000000 (kernel-half). */
        mov     %eax, pml4 + 511 * 8
        mov     $pd, %eax
        or      $0x7, %eax
        mov     %eax, pdpt
        IDENTITY_MAP_1G(pd, 0x87)       /* present, writable, user, 2 MiB */
        ENABLE_LONG_MODE(pml4)

        lgdt    gdt_desc
        ljmp    $0x08, $long_entry

        .code64
long_entry:
        mov     $0x10, %ax
        mov     %ax, %ds
        mov     %ax, %es
        mov     %ax, %ss
        mov     $PAYLOAD_BASE, %rax
        jmp     *%rax

        .section .data32, "aw"
        .align 8
gdt:
        .quad 0
        .quad 0x00af9a000000ffff        /* 0x08: 64-bit code */
        .quad 0x00cf92000000ffff        /* 0x10: data */
        .quad 0x00cff2000000ffff        /* 0x18: user data (SYSRET: STAR.63:48 + 8) */
        .quad 0x00affa000000ffff        /* 0x20: user 64-bit code (STAR.63:48 + 16) */
gdt_desc:
        .word gdt_desc - gdt - 1
        .long gdt

        .section .bss32, "aw", @nobits
        .align 4096
pml4:   .skip 4096
pdpt:   .skip 4096
pd:     .skip 4096
        .skip 4096
boot_stack_top:

        .section .payload, "a"
        .incbin PAYLOAD_BIN
