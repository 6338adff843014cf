/*
 * The CPU-mode conformance image: QEMU boots it with -kernel (multiboot,
 * 32-bit protected mode). It runs mode_sequence() (sequence.c) three
 * times: in 32-bit protected mode, in compatibility mode (a 32-bit code
 * segment under long mode) and in 64-bit mode (the -m64 build, embedded at
 * PAYLOAD_BASE), each printing what it did on COM1.
 */
#include "../longmode.h"

#define MB_MAGIC        0x1badb002
#define PAYLOAD_BASE    0x300000

        .section .multiboot, "a"
        .align 4
        .long MB_MAGIC, 0, -MB_MAGIC

        .section .text32, "ax"
        .code32
        .globl _start
_start:
        cli
        mov     $stack_top, %esp
        /* x87/SSE/XSAVE usable: CR0.MP, not EM/TS; CR4.OSFXSR|OSXMMEXCPT|OSXSAVE. */
        mov     %cr0, %eax
        and     $~0xc, %eax
        or      $0x2, %eax
        mov     %eax, %cr0
        mov     %cr4, %eax
        or      $0x40600, %eax
        mov     %eax, %cr4
        xor     %ecx, %ecx
        mov     $7, %eax                /* XCR0: x87 | SSE | AVX */
        xor     %edx, %edx
        xsetbv

        push    $1
        push    $mode_protected
        call    mode_sequence
        add     $8, %esp

        /* Identity-mapped 1 GiB, then long mode (../longmode.h). */
        mov     $pdpt, %eax
        or      $0x3, %eax
        mov     %eax, pml4
        mov     $pd, %eax
        or      $0x3, %eax
        mov     %eax, pdpt
        IDENTITY_MAP_1G(pd, 0x83)       /* present, writable, 2 MiB */
        ENABLE_LONG_MODE(pml4)
        lgdt    gdt_desc
        ljmp    $0x08, $long_entry

        .code64
long_entry:
        mov     $0x10, %ax
        mov     %ax, %ds
        mov     %ax, %es
        mov     %ax, %ss
        /* Into compatibility mode: a far jump to the 32-bit code segment. */
        mov     $compat_target, %eax
        ljmpl   *(%rax)

        .code32
compat_entry:
        push    $2
        push    $mode_compat
        call    mode_sequence
        add     $8, %esp
        ljmp    $0x08, $back_to_64

        .code64
back_to_64:
        and     $-16, %rsp
        mov     $PAYLOAD_BASE, %rax
        jmp     *%rax

        .section .data32, "aw"
        .align 8
gdt:
        .quad 0
        .quad 0x00af9a000000ffff        /* 0x08: 64-bit code */
        .quad 0x00cf92000000ffff        /* 0x10: data */
        .quad 0x00cf9a000000ffff        /* 0x18: 32-bit code (compatibility mode) */
gdt_desc:
        .word gdt_desc - gdt - 1
        .long gdt
compat_target:
        .long compat_entry
        .word 0x18
mode_protected:
        .asciz "protected32"
mode_compat:
        .asciz "compat32"

        .section .bss32, "aw", @nobits
        .align 4096
pml4:   .skip 4096
pdpt:   .skip 4096
pd:     .skip 4096
        .skip 16384
stack_top:

        .section .payload, "a"
        .incbin PAYLOAD_BIN

        /* no executable stack: this image has no stack segment of its own */
        .section .note.GNU-stack, "", @progbits
