/*
 * Steps the conformance images share on their way from 32-bit protected
 * mode (where multiboot leaves them) to long mode. Assembler macros for
 * boot32.S and modes/modes.S; each clobbers EAX, ECX, EDX.
 */
#ifndef CONFORMANCE_LONGMODE_H
#define CONFORMANCE_LONGMODE_H

/* PD entries 0-511: 2 MiB pages mapping 0..1 GiB, with page flags FLAGS. */
#define IDENTITY_MAP_1G(pd, flags)                                      \
        xor     %ecx, %ecx;                                             \
1:      mov     %ecx, %eax;                                             \
        shl     $21, %eax;                                              \
        or      $(flags), %eax;                                         \
        mov     %eax, pd(,%ecx,8);                                      \
        inc     %ecx;                                                   \
        cmp     $512, %ecx;                                             \
        jne     1b

/* PAE, CR3 = PML4, EFER.LME, then paging on: long mode (compatibility until a far jump). */
#define ENABLE_LONG_MODE(pml4)                                          \
        mov     %cr4, %eax;                                             \
        or      $0x20, %eax;                                            \
        mov     %eax, %cr4;                                             \
        mov     $pml4, %eax;                                            \
        mov     %eax, %cr3;                                             \
        mov     $0xc0000080, %ecx;                                      \
        rdmsr;                                                          \
        or      $0x100, %eax;                                           \
        wrmsr;                                                          \
        mov     %cr0, %eax;                                             \
        or      $0x80000001, %eax;                                      \
        mov     %eax, %cr0

#endif
