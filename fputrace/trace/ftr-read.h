/*
 * ftr-read.h: the trace reader's compiled helpers (ftr-read.c), declared
 * once: fputrace/trace/native.py hands this file to cffi.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#ifndef FTR_READ_H
#define FTR_READ_H

#include <stddef.h>
#include <stdint.h>

/* CRC-32C (Castagnoli) of a block payload. */
uint32_t ftr_read_crc32c(const void *data, size_t len);

/*
 * Copy n_blocks block payloads (at offsets[] in a mapping of map_size bytes
 * at base) to dest back to back, checking each against crcs[]: ok[b] says
 * whether block b matched; a damaged block is left out. Returns how many
 * blocks were copied.
 */
size_t ftr_read_copy_blocks(const uint8_t *base, size_t map_size, const uint64_t *offsets,
                            const uint32_t *sizes, const uint32_t *crcs, size_t n_blocks,
                            uint8_t *dest, uint8_t *ok);

#endif /* FTR_READ_H */
