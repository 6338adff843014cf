/*
 * fpa-map.h: the engine's keyed storage: a growable open-addressing map
 * from u64 keys to dense slot numbers, and the tables whose rows it numbers.
 * Inline: every pass looks keys up once or more per event.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#ifndef FPA_MAP_H
#define FPA_MAP_H

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../../plugin/ftr-hash.h"

/* ---- a growable open-addressing map: u64 key -> slot number ---- */

struct map {
    uint64_t *keys;
    uint32_t *slots;
    uint8_t *used;
    size_t cap, len;
    /* The last key found or added; slot numbers never change, so it stays valid. */
    uint64_t last_key;
    uint32_t last_slot;
    int have_last;
};

static inline int map_init(struct map *m, size_t cap)
{
    m->cap = cap;
    m->len = 0;
    m->have_last = 0;
    m->keys = calloc(cap, sizeof(*m->keys));
    m->slots = calloc(cap, sizeof(*m->slots));
    m->used = calloc(cap, 1);
    return m->keys && m->slots && m->used ? 0 : -1;
}

static inline void map_free(struct map *m)
{
    free(m->keys);
    free(m->slots);
    free(m->used);
}

/* The slot of key, or UINT32_MAX. */
static inline uint32_t map_get(struct map *m, uint64_t key)
{
    size_t i;

    if (m->have_last && m->last_key == key) {
        return m->last_slot;
    }
    i = ftr_hash_mix64(key) & (m->cap - 1);
    while (m->used[i]) {
        if (m->keys[i] == key) {
            m->last_key = key;
            m->last_slot = m->slots[i];
            m->have_last = 1;
            return m->slots[i];
        }
        i = (i + 1) & (m->cap - 1);
    }
    return UINT32_MAX;
}

static inline int map_grow(struct map *m);

/* The slot of key, given the next free slot number if new (*created set). */
static inline int map_put(struct map *m, uint64_t key, uint32_t *slot, int *created)
{
    size_t i;

    if (m->have_last && m->last_key == key) {
        *slot = m->last_slot;
        *created = 0;
        return 0;
    }
    if ((m->len + 1) * 2 > m->cap && map_grow(m) < 0) {
        return -1;
    }
    i = ftr_hash_mix64(key) & (m->cap - 1);
    while (m->used[i]) {
        if (m->keys[i] == key) {
            *slot = m->slots[i];
            *created = 0;
            m->last_key = key;
            m->last_slot = *slot;
            m->have_last = 1;
            return 0;
        }
        i = (i + 1) & (m->cap - 1);
    }
    m->used[i] = 1;
    m->keys[i] = key;
    m->slots[i] = (uint32_t)m->len;
    *slot = (uint32_t)m->len++;
    *created = 1;
    m->last_key = key;
    m->last_slot = *slot;
    m->have_last = 1;
    return 0;
}

static inline int map_grow(struct map *m)
{
    struct map bigger;

    if (map_init(&bigger, m->cap * 2) < 0) {
        map_free(&bigger);
        return -1;
    }
    for (size_t i = 0; i < m->cap; i++) {
        if (m->used[i]) {
            size_t j = ftr_hash_mix64(m->keys[i]) & (bigger.cap - 1);
            while (bigger.used[j]) {
                j = (j + 1) & (bigger.cap - 1);
            }
            bigger.used[j] = 1;
            bigger.keys[j] = m->keys[i];
            bigger.slots[j] = m->slots[i];
        }
    }
    bigger.len = m->len;
    bigger.last_key = m->last_key;
    bigger.last_slot = m->last_slot;
    bigger.have_last = m->have_last;
    map_free(m);
    *m = bigger;
    return 0;
}


/* ---- keyed tables: a row of width u64 per key, in order of first use ---- */

struct keyed {
    struct map map;
    uint64_t *keys;
    uint64_t *rows;
    size_t width, cap, len;
};

static inline int keyed_init(struct keyed *k, size_t width)
{
    k->width = width;
    k->cap = 64;
    k->len = 0;
    k->keys = malloc(k->cap * sizeof(uint64_t));
    k->rows = calloc(k->cap * width, sizeof(uint64_t));
    return map_init(&k->map, 128) == 0 && k->keys && k->rows ? 0 : -1;
}

static inline void keyed_free(struct keyed *k)
{
    map_free(&k->map);
    free(k->keys);
    free(k->rows);
}

static inline uint64_t *keyed_row(struct keyed *k, uint64_t key)
{
    uint32_t slot;
    int created;

    if (map_put(&k->map, key, &slot, &created) < 0) {
        return NULL;
    }
    if (created) {
        if (slot >= k->cap) {
            uint64_t *keys = realloc(k->keys, k->cap * 2 * sizeof(uint64_t));
            if (!keys) {
                return NULL;
            }
            k->keys = keys;
            uint64_t *rows = realloc(k->rows, k->cap * 2 * k->width * sizeof(uint64_t));
            if (!rows) {
                return NULL;
            }
            memset(rows + k->cap * k->width, 0, k->cap * k->width * sizeof(uint64_t));
            k->rows = rows;
            k->cap *= 2;
        }
        k->keys[slot] = key;
        k->len = slot + 1;
    }
    return k->rows + (size_t)slot * k->width;
}

/* Copy a keyed table out; returns its length, or -(length) if cap is too small. */
static inline int64_t keyed_out(const struct keyed *k, uint64_t *keys, uint64_t *rows, size_t cap)
{
    if (k->len > cap) {
        return -(int64_t)k->len;
    }
    memcpy(keys, k->keys, k->len * sizeof(uint64_t));
    memcpy(rows, k->rows, k->len * k->width * sizeof(uint64_t));
    return (int64_t)k->len;
}


#endif
