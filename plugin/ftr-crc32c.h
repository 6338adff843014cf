/*
 * CRC-32C (Castagnoli, reflected polynomial 0x82f63b78), the checksum of
 * trace file headers and blocks (docs/trace-format.md). Shared by the
 * plugin, which writes it, and the compiled analysis pass, which checks it.
 * On x86-64 hosts with SSE4.2 the crc32 instruction does 8 bytes at a
 * time; elsewhere a byte table.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#ifndef FTR_CRC32C_H
#define FTR_CRC32C_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#if defined(__x86_64__)
#include <nmmintrin.h>
#endif

#define FTR_CRC32C_POLY 0x82f63b78u

/* The byte table, filled on first use (filling it twice is harmless). */
static inline const uint32_t *ftr_crc32c_table(void)
{
    static uint32_t table[256];

    if (!__atomic_load_n(&table[1], __ATOMIC_ACQUIRE)) {
        for (uint32_t i = 255; i > 0; i--) {       /* table[1] last: it flags "ready" */
            uint32_t c = i;
            for (int k = 0; k < 8; k++) {
                c = (c & 1) ? FTR_CRC32C_POLY ^ (c >> 1) : c >> 1;
            }
            __atomic_store_n(&table[i], c, __ATOMIC_RELEASE);
        }
    }
    return table;
}

/* Continue a CRC (pre-inverted state, as the instruction keeps it) over len bytes. */
static inline uint32_t ftr_crc32c_soft(uint32_t crc, const uint8_t *p, size_t len)
{
    const uint32_t *table = ftr_crc32c_table();

    while (len--) {
        crc = table[(crc ^ *p++) & 0xff] ^ (crc >> 8);
    }
    return crc;
}

#if defined(__x86_64__)
__attribute__((target("sse4.2")))
static inline uint32_t ftr_crc32c_sse42(uint32_t crc, const uint8_t *p, size_t len)
{
    uint64_t c = crc;

    while (len >= 8) {
        uint64_t v;
        memcpy(&v, p, 8);
        c = _mm_crc32_u64(c, v);
        p += 8;
        len -= 8;
    }
    crc = (uint32_t)c;
    while (len--) {
        crc = _mm_crc32_u8(crc, *p++);
    }
    return crc;
}
#endif

static inline int ftr_crc32c_has_hw(void)
{
#if defined(__x86_64__)
    return __builtin_cpu_supports("sse4.2");
#else
    return 0;
#endif
}

/* The CRC-32C of len bytes, as stored in the trace. */
static inline uint32_t ftr_crc32c(const void *data, size_t len)
{
    uint32_t crc = 0xffffffffu;

#if defined(__x86_64__)
    if (ftr_crc32c_has_hw()) {
        return ftr_crc32c_sse42(crc, data, len) ^ 0xffffffffu;
    }
#endif
    return ftr_crc32c_soft(crc, data, len) ^ 0xffffffffu;
}

#endif /* FTR_CRC32C_H */
