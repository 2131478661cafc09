/* SPDX-License-Identifier: MIT */
/*
 * qcow-create.c: the options a QCOW v1 image is created with (those of
 * `qemu-img create -f qcow -o help`), create, and info.
 */
#include <stdlib.h>
#include <string.h>

#include "formats/qcow/qcow.h"

/* In the order `qemu-img create -f qcow -o help` lists them */
const struct vimg_option qcow_options[] = {
    {"backing_file", VIMG_OPTION_STRING, NULL, "File name of a base image",
     0},
    {"backing_fmt", VIMG_OPTION_STRING, NULL, "Format of the backing image",
     0},
    {"encrypt.format", VIMG_OPTION_STRING, NULL,
     "Encrypt the image, format choices: 'aes'\n"
     "(not supported by vimg yet)",
     0},
    {"encrypt.key-secret", VIMG_OPTION_STRING, NULL,
     "ID of the secret that provides the AES\n"
     "encryption key (not supported by vimg yet)",
     0},
    {"encryption", VIMG_OPTION_BOOL, NULL,
     "Encrypt the image with format 'aes'.\n"
     "(Deprecated in favor of encrypt.format=aes)",
     0},
    {"size", VIMG_OPTION_SIZE, NULL, "Virtual disk size", 0},
    {NULL, 0, NULL, NULL, 0},
};

static int refuse_encryption(void)
{
    return vimg_error(-ENOTSUP, "qcow: encrypted images (encryption=on, "
                                "encrypt.format=aes) are not supported yet");
}

int qcow_check_option(const char *key, const char *value, unsigned purpose)
{
    (void)purpose;
    if (!strcmp(key, "encrypt.format")) {
        if (strcmp(value, "aes") != 0) {
            return vimg_error(-EINVAL, "Parameter 'format' does not accept "
                                       "value '%s'",
                              value);
        }
        return refuse_encryption();
    }
    if (!strcmp(key, "encryption") &&
        (!strcmp(value, "on") || !strcmp(value, "yes") ||
         !strcmp(value, "true"))) {
        return refuse_encryption();
    }
    return 0;
}

/* qemu-img's "Formatting" line: the size first, then what was set */
void qcow_describe_options(const struct vimg_opts *o, FILE *out)
{
    static const char *const keys[] = {"backing_file", "backing_fmt",
                                       "encryption", "encrypt.format",
                                       "encrypt.key-secret"};

    fprintf(out, "size=%llu",
            (unsigned long long)vimg_opts_number(o, "size", 0));
    for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++) {
        const char *v = vimg_opts_get(o, keys[i]);
        if (v) {
            fprintf(out, " %s=%s", keys[i], v);
        }
    }
}

/* The header, backing name and zeroed L1 table of a new image */
static int write_new_image(struct vimg_io *io, const struct qcow_header *h,
                           const char *backing)
{
    const size_t l1_bytes = (size_t)h->l1_size * 8;
    /* qemu writes the L1 table in whole sectors */
    const size_t len = (size_t)h->l1_table_offset +
                       ((l1_bytes + 511) & ~(size_t)511);
    uint8_t *buf = calloc(1, len);

    if (!buf) {
        return vimg_error(-ENOMEM, "out of memory");
    }
    qcow_header_encode(h, buf);
    if (backing) {
        memcpy(buf + h->backing_file_offset, backing, h->backing_file_size);
    }
    int ret = vimg_io_truncate(io, 0);
    if (ret == 0) {
        ret = vimg_io_pwrite(io, buf, len, 0);
    }
    if (ret == 0) {
        ret = vimg_io_flush(io);
    }
    free(buf);
    return ret;
}

int qcow_create(const char *path, const struct vimg_opts *o)
{
    const char *backing = vimg_opts_get(o, "backing_file");
    struct qcow_header h;

    if (vimg_opts_get(o, "encrypt.format") ||
        vimg_opts_bool(o, "encryption", false)) {
        return refuse_encryption();
    }
    memset(&h, 0, sizeof(h));
    h.size = (vimg_opts_number(o, "size", 0) + 511) & ~511ull;
    if (h.size == 0) {
        return vimg_error(-EINVAL, "%s: Image size is too small, cannot be "
                                   "zero length",
                          path);
    }
    uint64_t header_len = QCOW_HDR_LEN;
    if (backing && *backing) {
        const size_t n = strlen(backing);
        if (n > QCOW_MAX_BACKING_NAME) {
            return vimg_error(-EINVAL, "%s: Backing file name too long",
                              path);
        }
        h.backing_file_offset = QCOW_HDR_LEN;
        h.backing_file_size = (uint32_t)n;
        header_len += n;
        /* qemu's choice: small clusters over a backing file */
        h.cluster_bits = 9;
        h.l2_bits = 12;
    } else {
        backing = NULL;
        h.cluster_bits = 12;
        h.l2_bits = 9;
    }
    h.l1_table_offset = (header_len + 7) & ~7ull;
    int ret = qcow_l1_size(h.size, h.cluster_bits, h.l2_bits, &h.l1_size);
    if (ret < 0) {
        vimg_error_prefix("%s", path);
        return ret;
    }
    struct vimg_io *io = NULL;
    ret = vimg_io_file_open(&io, path, true, true);
    if (ret < 0) {
        return ret;
    }
    ret = write_new_image(io, &h, backing);
    vimg_io_close(io);
    return ret;
}

/* qemu-img info shows no format-specific part for qcow */
int qcow_info(struct vimg_image *img, struct vimg_info *info)
{
    const struct qcow_state *s = img->priv;

    info->cluster_size = s->cluster_size;
    info->encrypted = s->h.crypt_method != QCOW_CRYPT_NONE;
    info->encrypt_format = info->encrypted ? "aes" : NULL;
    return 0;
}
