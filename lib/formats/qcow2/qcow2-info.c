/* SPDX-License-Identifier: MIT */
/*
 * qcow2-info.c: what `vimg info` shows of a QCOW2 image: the cluster
 * size and flags, the snapshots and bitmaps, the encryption header, and
 * the "Format specific information" tree in qemu-img's order.
 */
#include <stdlib.h>
#include <string.h>

#include "crypto/luks.h"
#include "formats/qcow2/qcow2.h"

/* The encryption qemu-img info shows: the format, and for LUKS the
 * header the crypto header extension points at (no key needed). */
static int encrypt_info(struct vimg_image *img, struct vimg_info *info)
{
    struct qcow2_state *s = img->priv;

    if (s->h.crypt_method == QCOW2_CRYPT_AES) {
        info->encrypt_format = "aes";
        return 0;
    }
    info->encrypt_format = "luks";
    if (!s->ext.has_crypto) {
        return vimg_error(-EINVAL, "%s: LUKS encryption without a crypto "
                                   "header extension",
                          img->filename);
    }
    uint8_t buf[VIMG_LUKS_HEADER_LEN];
    if (s->ext.crypto_length < sizeof(buf) ||
        s->ext.crypto_offset > s->file_size ||
        s->file_size - s->ext.crypto_offset < sizeof(buf)) {
        return vimg_error(-EINVAL, "%s: the LUKS header at 0x%llx (%llu "
                                   "bytes) is not in the file",
                          img->filename,
                          (unsigned long long)s->ext.crypto_offset,
                          (unsigned long long)s->ext.crypto_length);
    }
    int ret = vimg_io_pread(img->io, buf, sizeof(buf), s->ext.crypto_offset);
    if (ret < 0) {
        return ret;
    }
    info->luks = calloc(1, sizeof(*info->luks));
    if (!info->luks) {
        return vimg_error(-ENOMEM, "out of memory");
    }
    ret = vimg_luks_parse(buf, sizeof(buf), info->luks);
    if (ret < 0) {
        vimg_error_prefix("%s", img->filename);
    }
    return ret;
}

/* qemu-img info's "encrypt" object (its key order) */
static void add_encrypt(int *err, struct vimg_info_entry *data,
                        const struct vimg_info *info)
{
    struct vimg_info_entry *e =
        vimg_info_add(err, data, "encrypt", VIMG_INFO_OBJECT);
    const struct vimg_luks_info *l = info->luks;

    if (!l) {
        vimg_info_add_string(err, e, "format", info->encrypt_format);
        return;
    }
    if (*l->ivgen_alg) {
        vimg_info_add_string(err, e, "ivgen-alg", l->ivgen_alg);
    }
    vimg_info_add_string(err, e, "hash-alg", l->hash_alg);
    vimg_info_add_string(err, e, "cipher-alg", l->cipher_alg);
    vimg_info_add_string(err, e, "uuid", l->uuid);
    if (*l->ivgen_hash_alg) {
        vimg_info_add_string(err, e, "ivgen-hash-alg", l->ivgen_hash_alg);
    }
    vimg_info_add_string(err, e, "format", "luks");
    vimg_info_add_string(err, e, "cipher-mode", l->cipher_mode);
    struct vimg_info_entry *slots =
        vimg_info_add(err, e, "slots", VIMG_INFO_LIST);
    for (unsigned i = 0; i < VIMG_LUKS_SLOTS; i++) {
        const struct vimg_luks_slot *k = &l->slots[i];
        struct vimg_info_entry *o =
            vimg_info_add(err, slots, NULL, VIMG_INFO_OBJECT);
        vimg_info_add_bool(err, o, "active", k->active);
        if (k->active) {
            vimg_info_add_int(err, o, "iters", k->iters);
        }
        vimg_info_add_int(err, o, "key-offset", (int64_t)k->key_offset);
        if (k->active) {
            vimg_info_add_int(err, o, "stripes", k->stripes);
        }
    }
    vimg_info_add_int(err, e, "payload-offset", (int64_t)l->payload_offset);
    vimg_info_add_int(err, e, "master-key-iters", l->master_key_iters);
}

/* The persistent bitmaps, as qemu-img info lists them */
static void add_bitmaps(int *err, struct vimg_info_entry *data,
                        const struct vimg_info *info)
{
    struct vimg_info_entry *list =
        vimg_info_add(err, data, "bitmaps", VIMG_INFO_LIST);

    for (size_t i = 0; i < info->nb_bitmaps; i++) {
        const struct vimg_bitmap_info *b = &info->bitmaps[i];
        struct vimg_info_entry *o =
            vimg_info_add(err, list, NULL, VIMG_INFO_OBJECT);
        struct vimg_info_entry *flags =
            vimg_info_add(err, o, "flags", VIMG_INFO_LIST);
        if (b->in_use) {
            vimg_info_add_string(err, flags, NULL, "in-use");
        }
        if (b->auto_) {
            vimg_info_add_string(err, flags, NULL, "auto");
        }
        vimg_info_add_string(err, o, "name", b->name);
        vimg_info_add_int(err, o, "granularity", b->granularity);
    }
}

/* qemu-img info's "Format specific information" of a qcow2 image, in
 * its order */
static int format_specific(struct vimg_image *img, struct vimg_info *info)
{
    const struct qcow2_state *s = img->priv;
    const struct qcow2_header *h = &s->h;
    const bool is_v3 = h->version >= 3;
    int err = 0;
    struct vimg_info_entry *d =
        vimg_info_add(&err, NULL, "qcow2", VIMG_INFO_OBJECT);

    info->format_specific = d;
    vimg_info_add_string(&err, d, "compat", is_v3 ? "1.1" : "0.10");
    vimg_info_add_string(&err, d, "compression-type",
                         h->compression_type == QCOW2_COMPRESSION_ZSTD
                             ? "zstd"
                             : "zlib");
    if (is_v3) {
        vimg_info_add_bool(&err, d, "lazy-refcounts",
                           h->compatible_features &
                               QCOW2_COMPAT_LAZY_REFCOUNTS);
    }
    if (info->nb_bitmaps) {
        add_bitmaps(&err, d, info);
    }
    vimg_info_add_int(&err, d, "refcount-bits", 1 << h->refcount_order);
    if (info->encrypt_format) {
        add_encrypt(&err, d, info);
    }
    if (s->has_data_file) {
        vimg_info_add_string(&err, d, "data-file", s->ext.data_file);
        vimg_info_add_bool(&err, d, "data-file-raw", s->is_data_file_raw);
    }
    if (is_v3) {
        vimg_info_add_bool(&err, d, "corrupt",
                           h->incompatible_features & QCOW2_INCOMPAT_CORRUPT);
        vimg_info_add_bool(&err, d, "extended-l2", s->has_subclusters);
    }
    return err;
}

int qcow2_info(struct vimg_image *img, struct vimg_info *info)
{
    struct qcow2_state *s = img->priv;
    const struct qcow2_header *h = &s->h;

    info->cluster_size = (uint32_t)s->cluster_size;
    info->dirty = h->incompatible_features & QCOW2_INCOMPAT_DIRTY;
    info->encrypted = h->crypt_method != QCOW2_CRYPT_NONE;
    if (info->encrypted) {
        int ret = encrypt_info(img, info);
        if (ret < 0) {
            return ret;
        }
    }
    if (s->nb_snapshots) {
        info->snapshots = calloc(s->nb_snapshots, sizeof(*info->snapshots));
        if (!info->snapshots) {
            return vimg_error(-ENOMEM, "out of memory");
        }
        for (size_t i = 0; i < s->nb_snapshots; i++) {
            const struct qcow2_snapshot *sn = &s->snapshots[i];
            struct vimg_snapshot_info *o = &info->snapshots[i];
            info->nb_snapshots = i + 1;
            o->id = strdup(sn->id);
            o->name = strdup(sn->name);
            if (!o->id || !o->name) {
                return vimg_error(-ENOMEM, "out of memory");
            }
            o->vm_state_size = sn->vm_state_size;
            o->disk_size = sn->disk_size;
            o->has_disk_size = sn->has_disk_size;
            o->date_sec = sn->date_sec;
            o->date_nsec = sn->date_nsec;
            o->vm_clock_nsec = sn->vm_clock_nsec;
            o->icount = sn->icount;
            o->has_icount = sn->has_icount;
        }
    }
    if (s->nb_bitmaps) {
        info->bitmaps = calloc(s->nb_bitmaps, sizeof(*info->bitmaps));
        if (!info->bitmaps) {
            return vimg_error(-ENOMEM, "out of memory");
        }
        for (size_t i = 0; i < s->nb_bitmaps; i++) {
            const struct qcow2_bitmap *b = &s->bitmaps[i];
            struct vimg_bitmap_info *o = &info->bitmaps[i];
            info->nb_bitmaps = i + 1;
            o->name = strdup(b->name);
            if (!o->name) {
                return vimg_error(-ENOMEM, "out of memory");
            }
            o->granularity = b->granularity_bits < 32
                                 ? 1u << b->granularity_bits
                                 : 0;
            o->in_use = b->flags & QCOW2_BITMAP_IN_USE;
            o->auto_ = b->flags & QCOW2_BITMAP_AUTO;
        }
    }
    return format_specific(img, info);
}

/* Persistent dirty bitmaps need version 3 */
unsigned qcow2_capabilities(const struct vimg_image *img)
{
    const struct qcow2_state *s = img->priv;

    return s->h.version >= 3 ? VIMG_CAN_BITMAPS : 0;
}
