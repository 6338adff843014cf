/*
 * xsave-hash.c: the content hash of XSAVE-layout images.
 *
 * ftr-hash.h defines the hash; here the bytes a save stored or a restore
 * loaded are collected word by word as the memory callbacks deliver them
 * and summed once the instruction is done.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include <string.h>

#include "fputrace.h"

/*
 * The content hash (ftr-hash.h) of an XSAVE-layout image is summed word by
 * word once an instruction is done: the memory callback runs for every
 * access of every save and restore, and only copies the value.
 */

/*
 * Standard-format offsets of the XSAVE components (CPUID 0xd, as QEMU).
 * MXCSR (24..31) counts for no component: XRSTOR loads it whenever RFBM
 * has SSE or AVX, even for components in their init state, so the SSE bit
 * means XMM registers were moved.
 */
static uint32_t xsave_feature_of_offset(uint64_t off)
{
    static const struct { uint32_t start, end, bit; } areas[] = {
        { 0, 24, 0 }, { 32, 160, 0 }, { 160, 416, 1 },
        { 576, 832, 2 }, { 960, 1024, 3 }, { 1024, 1088, 4 },
        { 1088, 1152, 5 }, { 1152, 1664, 6 }, { 1664, 2688, 7 },
        { 2688, 2696, 9 },
    };
    for (size_t i = 0; i < G_N_ELEMENTS(areas); i++) {
        if (off >= areas[i].start && off < areas[i].end) {
            return 1u << areas[i].bit;
        }
    }
    return 0;
}


/* Per word: which of its bytes are content, and the component it belongs to. */
static uint8_t xsave_word_content[XSAVE_WORDS];
uint16_t xsave_word_feature[XSAVE_WORDS];

void xsave_tables_init(void)
{
    for (uint32_t w = 0; w < XSAVE_WORDS; w++) {
        xsave_word_content[w] = ftr_xsave_word_content(w);
        for (uint32_t b = 0; b < 8; b++) {
            xsave_word_feature[w] |= xsave_feature_of_offset(8 * w + b);
        }
    }
}

/* One word's share of a content hash: present says which bytes hold a value. */
uint64_t xsave_word_hash(uint32_t w, uint64_t value, uint32_t present)
{
    return ftr_hash_word(w, value, present & xsave_word_content[w]);
}

/* The hash of len bytes at an 8-aligned offset, the only ones present in their words. */
uint64_t xsave_hash_run(uint32_t off, const uint8_t *bytes, size_t len)
{
    uint64_t h = 0;

    for (size_t i = 0; i < len; i += 8) {
        size_t n = MIN(len - i, 8);
        uint64_t v = 0;
        memcpy(&v, bytes + i, n);       /* little-endian host, as the guest */
        h += xsave_word_hash((off + i) / 8, v, (1u << n) - 1);
    }
    return h;
}


static inline void xsave_image_put_byte(struct xsave_image *im, uint64_t off,
                                        uint8_t byte)
{
    uint32_t w = off / 8, b = off % 8;

    if (!im->present[w]) {
        im->touched[im->n_touched++] = w;
    }
    im->present[w] |= 1u << b;
    im->word[w] = (im->word[w] & ~(0xffull << (8 * b))) | (uint64_t)byte << (8 * b);
}

static inline void xsave_image_put_word(struct xsave_image *im, uint32_t w, uint64_t v)
{
    if (!im->present[w]) {
        im->touched[im->n_touched++] = w;
    }
    im->present[w] = 0xff;
    im->word[w] = v;
}

/* An access of size bytes (at most 16) at off: lo holds the first 8. */
void xsave_image_put(struct xsave_image *im, uint64_t off, unsigned size,
                     uint64_t lo, uint64_t hi)
{
    if (off % 8 == 0 && size >= 8 && off + size <= XSAVE_AREA_MAX) {
        xsave_image_put_word(im, off / 8, lo);
        if (size == 16) {
            xsave_image_put_word(im, off / 8 + 1, hi);
        }
        return;
    }
    for (unsigned b = 0; b < size && off + b < XSAVE_AREA_MAX; b++) {
        xsave_image_put_byte(im, off + b, b < 8 ? lo >> (8 * b) : hi >> (8 * (b - 8)));
    }
}
