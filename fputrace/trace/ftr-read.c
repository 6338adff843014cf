/*
 * ftr-read.c: what the trace reader (fputrace/trace/reader.py) does in C,
 * for traces of gigabytes: the CRC-32C of block payloads and the copy of
 * every intact block's payload into one array. Declared in ftr-read.h,
 * loaded by fputrace/trace/native.py with cffi.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include <stdint.h>
#include <string.h>
#include <sys/mman.h>

#include "../../plugin/ftr-crc32c.h"
#include "ftr-read.h"

uint32_t ftr_read_crc32c(const void *data, size_t len)
{
    return ftr_crc32c(data, len);
}

/*
 * Copy block payloads out of a mapped trace file into one array, checking
 * each block's CRC-32C on the way (one read of the source). Mapped source
 * pages already copied are released every 64 MiB, so the file is never
 * resident twice. A damaged block is left out (ok[b] = 0); returns how many
 * blocks were copied.
 */
#define RELEASE_CHUNK (64u << 20)

#if defined(__x86_64__)
__attribute__((target("sse4.2")))
static uint32_t copy_crc32c_sse42(uint8_t *dst, const uint8_t *src, size_t len)
{
    uint64_t c = 0xffffffffu;
    uint32_t crc;

    while (len >= 8) {
        uint64_t v;
        memcpy(&v, src, 8);
        c = _mm_crc32_u64(c, v);
        memcpy(dst, &v, 8);
        src += 8;
        dst += 8;
        len -= 8;
    }
    crc = (uint32_t)c;
    while (len--) {
        crc = _mm_crc32_u8(crc, *src);
        *dst++ = *src++;
    }
    return crc ^ 0xffffffffu;
}
#endif

size_t ftr_read_copy_blocks(const uint8_t *base, size_t map_size, const uint64_t *offsets,
                       const uint32_t *sizes, const uint32_t *crcs, size_t n_blocks,
                       uint8_t *dest, uint8_t *ok)
{
    const uint8_t *released = base;
    size_t out = 0, good = 0;

    int hw = ftr_crc32c_has_hw();
    for (size_t b = 0; b < n_blocks; b++) {
        const uint8_t *src = base + offsets[b];
        uint32_t crc;

#if defined(__x86_64__)
        if (hw) {
            crc = copy_crc32c_sse42(dest + out, src, sizes[b]);
        } else
#endif
        {
            memcpy(dest + out, src, sizes[b]);
            crc = ftr_read_crc32c(src, sizes[b]);
        }
        (void)hw;
        /* A damaged block costs that block: the next one is copied over it. */
        ok[b] = crc == crcs[b];
        if (!ok[b]) {
            continue;
        }
        good++;
        out += sizes[b];
        const uint8_t *done = (const uint8_t *)((uintptr_t)(src + sizes[b]) & ~(uintptr_t)4095);
        if (done > released && (size_t)(done - released) >= RELEASE_CHUNK &&
            done <= base + map_size) {
            madvise((void *)released, done - released, MADV_DONTNEED);
            released = done;
        }
    }
    return good;
}
