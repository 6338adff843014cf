/*
 * ftr-hash.h: the content hash of register state, the one definition.
 *
 * The plugin hashes what a save stored, what a restore loaded and what the
 * register file holds; the analyzers' compiled passes (analyzers/engine/
 * hashes.c) compute the hashes of known contents (a component in its init
 * state) with the same functions. docs/trace-format.md ("Content
 * hashes") defines the hash in words.
 *
 * A hash is a sum over 8-byte words of mix(word index, which bytes of the
 * word are present, their value). A sum does not depend on the order or
 * width of the accesses QEMU's helpers make, and the register file hashes
 * to the same value as a buffer that holds it, so saves, restores and
 * registers compare directly.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#ifndef FTR_HASH_H
#define FTR_HASH_H

#include <stdbool.h>
#include <stdint.h>

/* splitmix64's finalizer */
static inline uint64_t ftr_hash_mix64(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

/* A byte mask (bit i: byte i) as the 64-bit mask of those bytes. */
static inline uint64_t ftr_hash_bytes_of_mask(uint32_t mask)
{
    uint64_t m = mask & 0xff;

    /* spread bit i to bit 8i, then fill each byte */
    m = (m | m << 28) & 0x0000000f0000000full;
    m = (m | m << 14) & 0x0003000300030003ull;
    m = (m | m << 7) & 0x0101010101010101ull;
    return m * 0xff;
}

/*
 * One word's share of a hash: word index w, mask the bytes of the word
 * that hold a value (0: none, the word adds nothing), value the word
 * (little-endian; bytes outside mask are ignored).
 */
static inline uint64_t ftr_hash_word(uint32_t w, uint64_t value, uint32_t mask)
{
    if (!mask) {
        return 0;
    }
    return ftr_hash_mix64(ftr_hash_mix64((uint64_t)w << 8 | mask) ^
                          (value & ftr_hash_bytes_of_mask(mask)));
}

/* ---- x86: XSAVE layout ----------------------------------------------- */

/*
 * Which bytes of an XSAVE-layout image (standard, non-compacted offsets)
 * count. Only architectural register contents: FTW, FOP, FIP/FDP,
 * MXCSR_MASK, reserved bytes and the XSAVE header are left out because
 * saves and restores do not touch them symmetrically. No two components
 * share a word, so hashes of components add up.
 */
static inline bool ftr_xsave_offset_is_content(uint64_t off)
{
    if (off < 4) {
        return true;                            /* FCW, FSW */
    }
    if (off < 24) {
        return false;                           /* FTW, FOP, FIP, FDP */
    }
    if (off < 28) {
        return true;                            /* MXCSR */
    }
    if (off < 32) {
        return false;                           /* MXCSR_MASK */
    }
    if (off < 160) {
        return ((off - 32) & 15) < 10;          /* ST0-7: 80 bits per 16 */
    }
    if (off < 416) {
        return true;                            /* XMM0-15 */
    }
    return off >= 576;                          /* extended components */
}

/* The content bytes of XSAVE word w, as a byte mask. */
static inline uint32_t ftr_xsave_word_content(uint32_t w)
{
    uint32_t m = 0;

    for (uint32_t b = 0; b < 8; b++) {
        m |= (uint32_t)ftr_xsave_offset_is_content(8ull * w + b) << b;
    }
    return m;
}

/* The AVX upper halves (YMM_Hi128), standard offsets [576, 832). */
#define FTR_XSAVE_AVX_START     576
#define FTR_XSAVE_AVX_END       832

/*
 * The hash of the content bytes in [start, end) (8-aligned) when they are
 * all zero: a component in its init state, as a restore whose XSTATE_BV
 * leaves it out loads it.
 */
static inline uint64_t ftr_xsave_zero_hash(uint32_t start, uint32_t end)
{
    uint64_t h = 0;

    for (uint32_t w = start / 8; w < end / 8; w++) {
        h += ftr_hash_word(w, 0, ftr_xsave_word_content(w));
    }
    return h;
}

/* ---- arm64: the FPSIMD/SVE register image ------------------------------ */

/*
 * V0-V31 are words 0..63 (two per register), FPSR and FPCR word 64; every
 * byte counts (docs/trace-format.md, "arm64").
 */
#define FTR_A64_WORD_FPSR_FPCR  64

static inline uint64_t ftr_a64_word_hash(uint32_t w, uint64_t value)
{
    return ftr_hash_word(w, value, 0xff);
}

/*
 * The SVE state beyond V0-V31, at a vector length of at most 256 bytes:
 * Z<n>'s 8-byte word k (k >= 2: the bytes above its V part) is word
 * FTR_A64_WORD_Z + 32 n + k, P<n>'s word k is FTR_A64_WORD_P + 4 n + k,
 * FFR's FTR_A64_WORD_P + 64 + k.
 */
#define FTR_A64_WORD_Z          128
#define FTR_A64_WORD_P          (FTR_A64_WORD_Z + 32 * 32)

/* That state all zero at vector length vl bytes (P and FFR: vl / 8 bytes each). */
static inline uint64_t ftr_a64_sve_zero_hash(uint32_t vl)
{
    uint64_t h = 0;

    for (uint32_t n = 0; n < 32; n++) {
        for (uint32_t k = 2; k < vl / 8; k++) {
            h += ftr_a64_word_hash(FTR_A64_WORD_Z + 32 * n + k, 0);
        }
    }
    for (uint32_t n = 0; n <= 16; n++) {        /* P0-P15, then FFR */
        for (uint32_t k = 0; k < (vl / 8 + 7) / 8; k++) {
            h += ftr_a64_word_hash(FTR_A64_WORD_P + 4 * n + k, 0);
        }
    }
    return h;
}

#endif /* FTR_HASH_H */
