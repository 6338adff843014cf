/*
 * x86-decode.c: what an x86 instruction's bytes do, for the plugin's
 * translation callback: the FPU state operations and boundary instructions
 * it traces (x86_decode()), with the memory operand's addressing, and the
 * instructions that use FP/SIMD registers (x86_is_fp_simd()). Pure
 * functions of the bytes and the mode: tests/x86_decode_test.c checks them
 * against a table of encodings (Intel SDM vol. 2, chapters 2 and 3).
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include <string.h>

#include "ftr-format.h"
#include "x86.h"

/*
 * Decode the memory operand of a ModRM byte at p, for an address size of
 * 64 (64-bit mode: RIP-relative for mod 00 r/m 101), 32 (disp32 there) or
 * 16 bits (the 8086 table: [BX+SI], ..., disp16 for mod 00 r/m 110).
 * Returns false for a register operand (mod == 3) or bytes that run out.
 */
static bool x86_decode_modrm(const uint8_t *p, size_t n, uint8_t rex, bool cs64,
                             uint8_t addr_size, uint8_t seg_override,
                             struct x86_modrm_addr *ea, uint8_t *reg_field)
{
    /* BX BX BP BP SI DI BP BX */
    static const int8_t base16[8] = { 3, 3, 5, 5, 6, 7, 5, 3 };
    static const int8_t index16[8] = { 6, 7, 6, 7, -1, -1, -1, -1 }; /* SI DI SI DI */
    uint8_t modrm, mod, rm;
    size_t i = 1;
    bool ss_default = false;

    if (n < 1) {
        return false;
    }
    modrm = p[0];
    mod = modrm >> 6;
    rm = modrm & 7;
    *reg_field = (modrm >> 3) & 7;
    if (mod == 3) {
        return false;
    }
    ea->base = -1;
    ea->index = -1;
    ea->scale = 0;
    ea->addr_size = addr_size;
    ea->cs64 = cs64;
    ea->disp = 0;
    if (addr_size == FTR_ADDR_16) {
        if (mod == 0 && rm == 6) {
            mod = 2;                    /* disp16, no base */
        } else {
            ea->base = base16[rm];
            ea->index = index16[rm];
            ss_default = ea->base == 5;
        }
        if (mod == 2) {
            if (n < i + 2) {
                return false;
            }
            ea->disp = (int16_t)(p[i] | p[i + 1] << 8);
            mod = 0;
        }
    } else if (rm == 4) {
        uint8_t sib, base, index;
        if (n < 2) {
            return false;
        }
        sib = p[1];
        i = 2;
        ea->scale = sib >> 6;
        index = ((sib >> 3) & 7) | ((rex & 0x2) ? 8 : 0);
        base = (sib & 7) | ((rex & 0x1) ? 8 : 0);
        if (index != 4) {
            ea->index = index;
        }
        if ((sib & 7) == 5 && mod == 0) {
            mod = 2;                    /* disp32, no base */
        } else {
            ea->base = base;
        }
    } else if (rm == 5 && mod == 0) {
        /*
         * RIP-relative only in 64-bit mode (also with 0x67); an absolute disp32
         * elsewhere.
         */
        ea->base = cs64 ? -2 : -1;
        mod = 2;
    } else {
        ea->base = rm | ((rex & 0x1) ? 8 : 0);
    }
    if (addr_size != FTR_ADDR_16 && (ea->base & 7) == 4 && ea->base >= 0) {
        ss_default = true;              /* [RSP+...] */
    } else if (addr_size != FTR_ADDR_16 && ea->base == 5 && mod != 0) {
        ss_default = true;              /* [RBP+disp] */
    }
    if (mod == 1) {
        if (n < i + 1) {
            return false;
        }
        ea->disp = (int8_t)p[i];
    } else if (mod == 2) {
        if (n < i + 4) {
            return false;
        }
        memcpy(&ea->disp, p + i, 4);
    }
    if (seg_override != SREG_NONE) {
        ea->segment = seg_override;
    } else {
        ea->segment = ss_default ? SREG_SS : SREG_DS;
    }
    return true;
}

/*
 * Recognise the instructions we trace. 0F AE and 0F C7 encode several
 * unrelated instructions; only the memory forms without a mandatory
 * 66/F2/F3 prefix are FPU state operations (mod == 3 is LFENCE, MFENCE,
 * SFENCE, RDRAND...; F3 0F AE is RDFSBASE & co; 66 0F AE /6 is CLWB).
 */
bool x86_decode(const uint8_t *p, size_t n, bool cs64, bool default16,
                struct x86_decoded *d)
{
    struct x86_modrm_addr *ea = &d->ea;
    size_t i = 0;
    uint8_t rex = 0, segment = SREG_NONE, reg, addr_size;
    bool mandatory_prefix = false, addr_prefix = false;

    for (; i < n; i++) {
        uint8_t b = p[i];
        if (b == 0x66 || b == 0xf2 || b == 0xf3) {
            mandatory_prefix = true;
        } else if (b == 0x67) {
            addr_prefix = true;
        } else if (b == 0x26 || b == 0x2e || b == 0x36 || b == 0x3e) {
            segment = (b >> 3) & 3;             /* ES CS SS DS */
        } else if (b == 0x64 || b == 0x65) {
            segment = b - 0x64 + SREG_FS;
        } else if (b == 0xf0) {
            /* lock */
        } else {
            break;
        }
    }
    /* Outside 64-bit mode 40-4F are INC/DEC, instructions of their own. */
    if (cs64 && i < n && (p[i] & 0xf0) == 0x40) {
        rex = p[i++];
    }
    if (cs64) {
        addr_size = addr_prefix ? FTR_ADDR_32 : FTR_ADDR_64;
    } else {
        addr_size = addr_prefix == default16 ? FTR_ADDR_32 : FTR_ADDR_16;
    }
    if (i < n && p[i] == 0xcf) {                /* IRET */
        d->boundary = BOUNDARY_IRET;
        return true;
    }
    if (i + 1 >= n || p[i] != 0x0f) {
        return false;
    }
    i++;
    if (rex & 0x8) {
        d->flags |= FTR_FLAG_FORM64;
    }

    switch (p[i]) {
    case 0x07:                                  /* SYSRET */
        d->boundary = BOUNDARY_SYSRET;
        return true;
    case 0x30:                                  /* WRMSR */
        d->kind = FTR_KIND_WRMSR;
        return true;
    case 0x01:
        if (i + 1 >= n) {
            return false;
        }
        if (p[i + 1] == 0xd1 && !mandatory_prefix) {
            d->kind = FTR_KIND_XSETBV;
            return true;
        }
        if (p[i + 1] == 0xd8) {
            d->kind = FTR_KIND_VM_ENTRY;       /* VMRUN */
            return true;
        }
        if (p[i + 1] == 0xf8) {
            d->boundary = BOUNDARY_SWAPGS;
            return true;
        }
        return false;
    case 0xae:
        if (mandatory_prefix ||
            !x86_decode_modrm(p + i + 1, n - i - 1, rex, cs64, addr_size, segment,
                              ea, &reg)) {
            return false;
        }
        switch (reg) {
        case 0:
            d->kind = FTR_KIND_FXSAVE;
            return true;
        case 1:
            d->kind = FTR_KIND_FXRSTOR;
            return true;
        case 4:
            d->kind = FTR_KIND_XSAVE;
            return true;
        case 5:
            d->kind = FTR_KIND_XRSTOR;
            return true;
        case 6:
            d->kind = FTR_KIND_XSAVEOPT;
            return true;
        default: /* LDMXCSR, STMXCSR, CLFLUSH */
            return false;
        }
    case 0xc7:
        if (mandatory_prefix ||
            !x86_decode_modrm(p + i + 1, n - i - 1, rex, cs64, addr_size, segment,
                              ea, &reg)) {
            return false;
        }
        switch (reg) {
        case 3:
            d->kind = FTR_KIND_XRSTORS;
            return true;
        case 4:
            d->kind = FTR_KIND_XSAVEC;
            return true;
        case 5:
            d->kind = FTR_KIND_XSAVES;
            return true;
        default: /* CMPXCHG8B/16B, VMPTRLD... */
            return false;
        }
    default:
        return false;
    }
}

/*
 * Whether an instruction reads or writes FP/SIMD registers: x87 (D8-DF),
 * VEX/EVEX (C4, C5, 62 in 64-bit mode), and the 0F-map SSE ranges, less
 * the GPR instructions that share them (0F 38 F0-FF: MOVBE, CRC32, ADX;
 * 0F C3 MOVNTI). Kernel code uses these only between kernel_fpu_begin()
 * and kernel_fpu_end() (the kernel is built without SIMD code generation),
 * and in the FPU code itself (FNINIT, LDMXCSR).
 */
bool x86_is_fp_simd(const uint8_t *p, size_t n)
{
    size_t i = 0;
    uint8_t b, op;

    while (i < n && (p[i] == 0x66 || p[i] == 0x67 || p[i] == 0xf2 || p[i] == 0xf3 ||
                     p[i] == 0xf0 || p[i] == 0x2e || p[i] == 0x36 || p[i] == 0x3e ||
                     p[i] == 0x26 || p[i] == 0x64 || p[i] == 0x65)) {
        i++;
    }
    if (i < n && (p[i] & 0xf0) == 0x40) {
        i++;
    }
    if (i >= n) {
        return false;
    }
    b = p[i];
    if ((b >= 0xd8 && b <= 0xdf) || b == 0xc4 || b == 0xc5 || b == 0x62) {
        return true;
    }
    if (b != 0x0f || i + 1 >= n) {
        return false;
    }
    op = p[i + 1];
    if (op == 0x38) {
        return i + 2 < n && p[i + 2] < 0xf0;
    }
    if (op == 0x3a) {
        return true;
    }
    if ((op >= 0x10 && op <= 0x17) || (op >= 0x28 && op <= 0x2f) ||
        (op >= 0x50 && op <= 0x7f) || op == 0xc2 || (op >= 0xc4 && op <= 0xc6) ||
        op >= 0xd0) {
        return true;
    }
    if (op == 0xae && i + 2 < n) {                      /* LDMXCSR, STMXCSR */
        uint8_t modrm = p[i + 2], reg = (modrm >> 3) & 7;
        return (modrm >> 6) != 3 && (reg == 2 || reg == 3);
    }
    return false;
}

/*
 * Cheap filter before decoding: every traced instruction has 0F 01, 0F 07,
 * 0F 30, 0F AE or 0F C7 after at most four legacy prefixes and a REX byte,
 * or is an IRET (CF, REX.W CF). Almost every instruction of a kernel fails
 * this, without taking a lock.
 */
bool x86_maybe_traced(const uint8_t *p, size_t n, bool boundaries)
{
    if (n > 0 && (p[0] == 0xcf || (n > 1 && p[0] == 0x48 && p[1] == 0xcf))) {
        return boundaries;
    }
    for (size_t i = 0; i + 1 < n && i < 6; i++) {
        if (p[i] == 0x0f) {
            uint8_t op = p[i + 1];
            return op == 0x01 || op == 0x30 || op == 0xae || op == 0xc7 ||
                   (op == 0x07 && boundaries);
        }
    }
    return false;
}
