/* SPDX-License-Identifier: MIT */
/*
 * qcow2-snapshot.c: the snapshot table (qcow2.txt, "Snapshots"): decode
 * and encode, keeping unknown extra data so a rewrite preserves it; reading
 * a snapshot's content (a read-only view through its L1 table).
 */
#include <assert.h>
#include <stdlib.h>
#include <string.h>

#include "formats/qcow2/qcow2.h"
#include "vimg-endian.h"

/* Snapshot table entry: fixed part (qcow2.txt) */
enum {
    SN_L1_OFFSET = 0,
    SN_L1_SIZE = 8,
    SN_ID_SIZE = 12,
    SN_NAME_SIZE = 14,
    SN_DATE_SEC = 16,
    SN_DATE_NSEC = 20,
    SN_VM_CLOCK = 24,
    SN_VM_STATE_SIZE = 32,
    SN_EXTRA_SIZE = 36,
    SN_FIXED_LEN = 40,
    /* extra data, relative to its start */
    SN_EXTRA_VM_STATE = 0,
    SN_EXTRA_DISK_SIZE = 8,
    SN_EXTRA_ICOUNT = 16,
};

static char *dup_bytes(const uint8_t *p, size_t len)
{
    char *s = malloc(len + 1);

    if (s) {
        memcpy(s, p, len);
        s[len] = '\0';
    }
    return s;
}

void qcow2_snapshots_free(struct qcow2_snapshot *sn, size_t nb)
{
    if (!sn) {
        return;
    }
    for (size_t i = 0; i < nb; i++) {
        free(sn[i].extra_data);
        free(sn[i].id);
        free(sn[i].name);
    }
    free(sn);
}

int qcow2_snapshots_decode(struct qcow2_snapshot **out, uint32_t nb,
                           const uint8_t *buf, size_t len, size_t *used_out)
{
    struct qcow2_snapshot *sn = calloc(nb ? nb : 1, sizeof(*sn));
    size_t off = 0;
    int ret = 0;

    if (!sn) {
        return vimg_error(-ENOMEM, "out of memory");
    }
    for (uint32_t i = 0; i < nb; i++) {
        struct qcow2_snapshot *s = &sn[i];
        if (len - off < SN_FIXED_LEN) {
            ret = -ENODATA; /* the caller reads more and retries */
            goto fail;
        }
        const uint8_t *e = buf + off;
        s->l1_table_offset = load_be64(e + SN_L1_OFFSET);
        s->l1_size = load_be32(e + SN_L1_SIZE);
        const size_t id_size = load_be16(e + SN_ID_SIZE);
        const size_t name_size = load_be16(e + SN_NAME_SIZE);
        s->date_sec = load_be32(e + SN_DATE_SEC);
        s->date_nsec = load_be32(e + SN_DATE_NSEC);
        s->vm_clock_nsec = load_be64(e + SN_VM_CLOCK);
        s->vm_state_size = load_be32(e + SN_VM_STATE_SIZE);
        s->extra_data_size = load_be32(e + SN_EXTRA_SIZE);
        if (s->extra_data_size > QCOW2_MAX_SNAPSHOT_EXTRA) {
            ret = vimg_error(-EIO,
                             "qcow2: corrupt snapshot table: entry %u has "
                             "%u bytes of extra data (at most %d)",
                             i, s->extra_data_size, QCOW2_MAX_SNAPSHOT_EXTRA);
            goto fail;
        }
        /* the padding of the last entry may be missing at end of file */
        const size_t data_len =
            SN_FIXED_LEN + s->extra_data_size + id_size + name_size;
        const size_t entry_len = (data_len + 7) & ~(size_t)7;
        if (len - off < data_len) {
            ret = -ENODATA;
            goto fail;
        }
        const uint8_t *extra = e + SN_FIXED_LEN;
        if (s->extra_data_size) {
            s->extra_data = malloc(s->extra_data_size);
            if (!s->extra_data) {
                goto nomem;
            }
            memcpy(s->extra_data, extra, s->extra_data_size);
        }
        if (s->extra_data_size >= SN_EXTRA_VM_STATE + 8) {
            s->vm_state_size = load_be64(extra + SN_EXTRA_VM_STATE);
        }
        if (s->extra_data_size >= SN_EXTRA_DISK_SIZE + 8) {
            s->disk_size = load_be64(extra + SN_EXTRA_DISK_SIZE);
            s->has_disk_size = true;
        }
        if (s->extra_data_size >= SN_EXTRA_ICOUNT + 8) {
            s->icount = load_be64(extra + SN_EXTRA_ICOUNT);
            s->has_icount = s->icount != UINT64_MAX;
        }
        s->id = dup_bytes(extra + s->extra_data_size, id_size);
        s->name = dup_bytes(extra + s->extra_data_size + id_size, name_size);
        if (!s->id || !s->name) {
            goto nomem;
        }
        off += VIMG_MIN(entry_len, len - off);
    }
    *out = sn;
    if (used_out) {
        *used_out = off;
    }
    return 0;
nomem:
    ret = vimg_error(-ENOMEM, "out of memory");
fail:
    qcow2_snapshots_free(sn, nb);
    return ret;
}

size_t qcow2_snapshots_encode(const struct qcow2_snapshot *sn, size_t nb,
                              uint8_t *buf)
{
    size_t off = 0;

    for (size_t i = 0; i < nb; i++) {
        const struct qcow2_snapshot *s = &sn[i];
        const size_t id_size = strlen(s->id);
        const size_t name_size = strlen(s->name);
        const size_t entry_len = (SN_FIXED_LEN + s->extra_data_size +
                                  id_size + name_size + 7) & ~(size_t)7;
        if (buf) {
            uint8_t *e = buf + off;
            memset(e, 0, entry_len);
            store_be64(e + SN_L1_OFFSET, s->l1_table_offset);
            store_be32(e + SN_L1_SIZE, s->l1_size);
            store_be16(e + SN_ID_SIZE, (uint16_t)id_size);
            store_be16(e + SN_NAME_SIZE, (uint16_t)name_size);
            store_be32(e + SN_DATE_SEC, s->date_sec);
            store_be32(e + SN_DATE_NSEC, s->date_nsec);
            store_be64(e + SN_VM_CLOCK, s->vm_clock_nsec);
            store_be32(e + SN_VM_STATE_SIZE,
                       s->vm_state_size > UINT32_MAX
                           ? 0
                           : (uint32_t)s->vm_state_size);
            store_be32(e + SN_EXTRA_SIZE, s->extra_data_size);
            uint8_t *extra = e + SN_FIXED_LEN;
            if (s->extra_data_size) {
                memcpy(extra, s->extra_data, s->extra_data_size);
            }
            if (s->extra_data_size >= SN_EXTRA_VM_STATE + 8) {
                store_be64(extra + SN_EXTRA_VM_STATE, s->vm_state_size);
            }
            if (s->extra_data_size >= SN_EXTRA_DISK_SIZE + 8) {
                store_be64(extra + SN_EXTRA_DISK_SIZE, s->disk_size);
            }
            if (s->extra_data_size >= SN_EXTRA_ICOUNT + 8) {
                store_be64(extra + SN_EXTRA_ICOUNT,
                           s->has_icount ? s->icount : UINT64_MAX);
            }
            memcpy(extra + s->extra_data_size, s->id, id_size);
            memcpy(extra + s->extra_data_size + id_size, s->name, name_size);
        }
        off += entry_len;
    }
    return off;
}

/* Is snapshot SN the one asked for?  A NULL ID or NAME is not compared. */
static bool snapshot_matches(const struct qcow2_snapshot *sn, const char *id,
                             const char *name)
{
    return (!id || strcmp(sn->id, id) == 0) &&
           (!name || strcmp(sn->name, name) == 0);
}

int qcow2_snapshot_view(struct vimg_image *img, const char *id,
                        const char *name)
{
    struct qcow2_state *s = img->priv;
    const struct qcow2_snapshot *sn = NULL;

    assert(!img->is_writable && (id || name));
    for (size_t i = 0; i < s->nb_snapshots && !sn; i++) {
        if (snapshot_matches(&s->snapshots[i], id, name)) {
            sn = &s->snapshots[i];
        }
    }
    if (!sn) {
        return vimg_error(-ENOENT, "Can't find snapshot");
    }
    /* The table comes from the file: check it before reading it */
    const uint64_t bytes = (uint64_t)sn->l1_size * 8;
    if (bytes > QCOW2_MAX_L1_BYTES) {
        return qcow2_corrupt(img, "snapshot '%s': L1 table of %u entries is "
                                  "too large",
                             sn->id, sn->l1_size);
    }
    if (bytes && ((sn->l1_table_offset & (s->cluster_size - 1)) ||
                  sn->l1_table_offset >= s->file_size ||
                  s->file_size - sn->l1_table_offset < bytes)) {
        return qcow2_corrupt(img, "snapshot '%s': L1 table at 0x%llx is not "
                                  "aligned or past the end of the file",
                             sn->id,
                             (unsigned long long)sn->l1_table_offset);
    }
    uint64_t *l1 = calloc(sn->l1_size ? sn->l1_size : 1, sizeof(*l1));
    if (!l1) {
        return vimg_error(-ENOMEM, "out of memory");
    }
    int ret = bytes ? vimg_io_pread(img->io, l1, (size_t)bytes,
                                    sn->l1_table_offset)
                    : 0;
    if (ret < 0) {
        free(l1);
        return ret;
    }
    load_be64_array(l1, sn->l1_size);
    /* L2 tables are cached by file offset and never change in a
     * read-only image, so the cache stays valid. */
    pthread_mutex_lock(&s->lock);
    free(s->l1);
    s->l1 = l1;
    s->h.l1_size = sn->l1_size;
    s->h.l1_table_offset = sn->l1_table_offset;
    pthread_mutex_unlock(&s->lock);
    return 0;
}
