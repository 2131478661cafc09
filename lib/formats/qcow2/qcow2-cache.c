/* SPDX-License-Identifier: MIT */
/*
 * qcow2-cache.c: a bounded cache of metadata tables (L2 tables), keyed by
 * their file offset, with least-recently-used eviction.  An open-addressed
 * hash index finds a table in O(1); a doubly linked list in use order makes
 * eviction O(1) too.  The caller serialises access.
 *
 * Tables changed in memory are marked dirty and written back through the
 * owner's callback when evicted or flushed; the callback is where the
 * owner enforces write ordering (an L2 table is written only after the
 * refcounts it depends on are durable).
 */
#include <stdlib.h>
#include <string.h>

#include "formats/qcow2/qcow2.h"

#define EMPTY UINT64_MAX

struct cache_slot {
    uint64_t offset; /* EMPTY when unused */
    bool is_dirty;
    size_t prev, next; /* LRU list: head is most recently used */
};

struct qcow2_cache {
    size_t table_bytes;
    size_t nb_slots;
    struct cache_slot *slots;
    uint8_t *tables;         /* nb_slots * table_bytes */
    size_t index_size;       /* power of two, >= 2 * nb_slots */
    int32_t *index;          /* slot number, -1 empty, -2 deleted */
    size_t head, tail;
    uint64_t hits, misses;
    qcow2_cache_writeback_fn writeback;
    void *writeback_opaque;
};

static size_t hash_offset(uint64_t offset, size_t mask)
{
    offset ^= offset >> 29;
    offset *= 0x9e3779b97f4a7c15ull;
    return (size_t)(offset >> 17) & mask;
}

struct qcow2_cache *qcow2_cache_new(size_t table_bytes, size_t nb_slots)
{
    struct qcow2_cache *c = calloc(1, sizeof(*c));

    if (!c || nb_slots == 0 || table_bytes == 0) {
        free(c);
        return NULL;
    }
    c->table_bytes = table_bytes;
    c->nb_slots = nb_slots;
    c->index_size = 4;
    while (c->index_size < nb_slots * 2) {
        c->index_size *= 2;
    }
    c->slots = calloc(nb_slots, sizeof(*c->slots));
    c->tables = malloc(nb_slots * table_bytes);
    c->index = malloc(c->index_size * sizeof(*c->index));
    if (!c->slots || !c->tables || !c->index) {
        qcow2_cache_free(c);
        return NULL;
    }
    for (size_t i = 0; i < nb_slots; i++) {
        c->slots[i].offset = EMPTY;
        c->slots[i].prev = i == 0 ? SIZE_MAX : i - 1;
        c->slots[i].next = i + 1 == nb_slots ? SIZE_MAX : i + 1;
    }
    c->head = 0;
    c->tail = nb_slots - 1;
    for (size_t i = 0; i < c->index_size; i++) {
        c->index[i] = -1;
    }
    return c;
}

void qcow2_cache_free(struct qcow2_cache *c)
{
    if (!c) {
        return;
    }
    free(c->slots);
    free(c->tables);
    free(c->index);
    free(c);
}

/* Position in the index of OFFSET, or -1. */
static long find(const struct qcow2_cache *c, uint64_t offset)
{
    const size_t mask = c->index_size - 1;

    for (size_t i = hash_offset(offset, mask), n = 0; n < c->index_size;
         i = (i + 1) & mask, n++) {
        if (c->index[i] == -1) {
            return -1;
        }
        if (c->index[i] >= 0 && c->slots[c->index[i]].offset == offset) {
            return (long)i;
        }
    }
    return -1;
}

static void insert(struct qcow2_cache *c, uint64_t offset, int32_t slot)
{
    const size_t mask = c->index_size - 1;
    size_t i = hash_offset(offset, mask);

    while (c->index[i] >= 0) {
        i = (i + 1) & mask;
    }
    c->index[i] = slot;
}

/* Move slot S to the head of the LRU list. */
static void touch(struct qcow2_cache *c, size_t s)
{
    struct cache_slot *slot = &c->slots[s];

    if (c->head == s) {
        return;
    }
    c->slots[slot->prev].next = slot->next;
    if (slot->next != SIZE_MAX) {
        c->slots[slot->next].prev = slot->prev;
    } else {
        c->tail = slot->prev;
    }
    slot->prev = SIZE_MAX;
    slot->next = c->head;
    c->slots[c->head].prev = s;
    c->head = s;
}

/* Rebuild the index when tombstones pile up, so probes stay short. */
static void rehash(struct qcow2_cache *c)
{
    for (size_t i = 0; i < c->index_size; i++) {
        c->index[i] = -1;
    }
    for (size_t s = 0; s < c->nb_slots; s++) {
        if (c->slots[s].offset != EMPTY) {
            insert(c, c->slots[s].offset, (int32_t)s);
        }
    }
}

int qcow2_cache_get(struct qcow2_cache *c, uint64_t file_offset,
                    qcow2_cache_load_fn load, void *opaque,
                    const uint8_t **out)
{
    long pos = find(c, file_offset);

    if (pos >= 0) {
        touch(c, (size_t)c->index[pos]);
        c->hits++;
        *out = c->tables + (size_t)c->index[pos] * c->table_bytes;
        return 0;
    }
    c->misses++;

    /* The tail is empty or the least recently used slot */
    const size_t victim = c->tail;
    struct cache_slot *slot = &c->slots[victim];
    if (slot->offset != EMPTY && slot->is_dirty) {
        int ret = c->writeback(c->writeback_opaque, slot->offset,
                               c->tables + victim * c->table_bytes,
                               c->table_bytes);
        if (ret < 0) {
            return ret;
        }
        slot->is_dirty = false;
    }
    if (slot->offset != EMPTY) {
        long old = find(c, slot->offset);
        if (old >= 0) {
            c->index[old] = -2;
        }
        slot->offset = EMPTY;
    }
    uint8_t *table = c->tables + victim * c->table_bytes;
    int ret = load(opaque, file_offset, table, c->table_bytes);
    if (ret < 0) {
        return ret;
    }
    slot->offset = file_offset;
    touch(c, victim);
    if (c->misses % (c->index_size * 4) == 0) {
        rehash(c);
    } else {
        insert(c, file_offset, (int32_t)victim);
    }
    *out = table;
    return 0;
}

void qcow2_cache_stats(const struct qcow2_cache *c, uint64_t *hits,
                       uint64_t *misses)
{
    *hits = c->hits;
    *misses = c->misses;
}

void qcow2_cache_set_writeback(struct qcow2_cache *c,
                               qcow2_cache_writeback_fn fn, void *opaque)
{
    c->writeback = fn;
    c->writeback_opaque = opaque;
}

static long slot_of(const struct qcow2_cache *c, const uint8_t *table)
{
    if (table < c->tables ||
        table >= c->tables + c->nb_slots * c->table_bytes) {
        return -1;
    }
    return (long)((size_t)(table - c->tables) / c->table_bytes);
}

void qcow2_cache_mark_dirty(struct qcow2_cache *c, const uint8_t *table)
{
    const long s = slot_of(c, table);

    if (s >= 0) {
        c->slots[s].is_dirty = true;
    }
}

bool qcow2_cache_has_dirty(const struct qcow2_cache *c)
{
    for (size_t s = 0; s < c->nb_slots; s++) {
        if (c->slots[s].offset != EMPTY && c->slots[s].is_dirty) {
            return true;
        }
    }
    return false;
}

int qcow2_cache_flush(struct qcow2_cache *c)
{
    for (size_t s = 0; s < c->nb_slots; s++) {
        struct cache_slot *slot = &c->slots[s];
        if (slot->offset == EMPTY || !slot->is_dirty) {
            continue;
        }
        int ret = c->writeback(c->writeback_opaque, slot->offset,
                               c->tables + s * c->table_bytes,
                               c->table_bytes);
        if (ret < 0) {
            return ret;
        }
        slot->is_dirty = false;
    }
    return 0;
}

void qcow2_cache_drop(struct qcow2_cache *c, uint64_t file_offset)
{
    const long pos = find(c, file_offset);

    if (pos >= 0) {
        struct cache_slot *slot = &c->slots[c->index[pos]];
        slot->offset = EMPTY;
        slot->is_dirty = false;
        c->index[pos] = -2;
    }
}
