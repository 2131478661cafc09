/* SPDX-License-Identifier: MIT */
/*
 * qcow2-options.c: the options a QCOW2 image is created and amended with
 * (qemu-img create -o, amend -o): the table `-o help` lists, the checks
 * qemu-img makes as each value is given, the "Formatting" line, and the
 * step from a format-neutral option list to struct qcow2_create_params.
 * Combinations of options are checked by create, amend and measure.
 */
#include <stdlib.h>
#include <string.h>

#include "codec/codec.h"
#include "formats/qcow2/qcow2.h"

/* In the order `vimg create -f qcow2 -o help` lists them */
const struct vimg_option qcow2_options[] = {
    {"size", VIMG_OPTION_SIZE, NULL, "Virtual disk size",
     VIMG_OPTION_AMENDABLE},
    {"preallocation", VIMG_OPTION_STRING, "off",
     "off, metadata, falloc, full", 0},
    {"backing_file", VIMG_OPTION_STRING, NULL, "File name of a base image",
     VIMG_OPTION_AMENDABLE},
    {"backing_fmt", VIMG_OPTION_STRING, NULL,
     "Image format of the base image", VIMG_OPTION_AMENDABLE},
    {"cluster_size", VIMG_OPTION_SIZE, "65536",
     "qcow2 cluster size (512 to 2M)", 0},
    {"compat", VIMG_OPTION_STRING, "1.1", "0.10 (v2) or 1.1 (v3)",
     VIMG_OPTION_AMENDABLE},
    {"compression_type", VIMG_OPTION_STRING, "zlib", "zlib or zstd", 0},
    {"compression_level", VIMG_OPTION_NUMBER, NULL,
     "vimg only: effort of convert -c, zlib 1\n"
     "(fastest) to 9, zstd 1 to 19; default:\n"
     "output no larger than qemu-img's",
     0},
    {"data_file", VIMG_OPTION_STRING, NULL,
     "File name of an external data file", VIMG_OPTION_AMENDABLE},
    {"data_file_raw", VIMG_OPTION_BOOL, "off",
     "The external data file is a raw image", VIMG_OPTION_AMENDABLE},
    {"data_file_keep", VIMG_OPTION_BOOL, "off",
     "vimg only: keep the bytes of an existing\n"
     "data file (qemu-img empties it; use with\n"
     "data_file_raw=on to wrap a raw disk)",
     0},
    {"extended_l2", VIMG_OPTION_BOOL, "off",
     "Extended L2 tables (subclusters)", 0},
    {"lazy_refcounts", VIMG_OPTION_BOOL, "off", "Postpone refcount updates",
     VIMG_OPTION_AMENDABLE},
    {"refcount_bits", VIMG_OPTION_NUMBER, "16",
     "Width of a reference count (1..64)", VIMG_OPTION_AMENDABLE},
    /* known to qemu-img, refused by vimg */
    {"encryption", VIMG_OPTION_BOOL, NULL, NULL, 0},
    {"encrypt.", VIMG_OPTION_STRING, NULL, NULL, VIMG_OPTION_PREFIX},
    {NULL, 0, NULL, NULL, 0},
};

/* 2 or 3 for a compat value, 0 for none */
static unsigned compat_version(const char *v)
{
    if (!strcmp(v, "0.10") || !strcmp(v, "v2")) {
        return 2;
    }
    if (!strcmp(v, "1.1") || !strcmp(v, "v3")) {
        return 3;
    }
    return 0;
}

int qcow2_check_option(const char *key, const char *value, unsigned purpose)
{
    if (!strcmp(key, "compat") && !compat_version(value)) {
        /* qemu-img's words differ between create and amend */
        return purpose == VIMG_OPTS_AMEND
                   ? vimg_error(-EINVAL, "Unknown compatibility level %s",
                                value)
                   : vimg_error(-EINVAL, "Invalid compatibility level: '%s'",
                                value);
    }
    if (!strcmp(key, "refcount_bits")) {
        char *end;
        const unsigned long v = strtoul(value, &end, 10);
        if (*end || v == 0 || v > 64) {
            return vimg_error(-EINVAL, "Refcount width must be a power of "
                                       "two and may not exceed 64 bits");
        }
    }
    uint64_t n;
    if (!strcmp(key, "cluster_size") && vimg_parse_size(value, &n) == 0 &&
        n > UINT32_MAX) {
        return vimg_error(-EINVAL, "Parameter '%s' expects a size (with an "
                                   "optional k, M, G, T suffix), not '%s'",
                          key, value);
    }
    if (!strcmp(key, "encryption") || !strncmp(key, "encrypt.", 8)) {
        return vimg_error(-ENOTSUP, "encrypted images are not supported yet");
    }
    return 0;
}

int qcow2_params_from_opts(const struct vimg_opts *o,
                           struct qcow2_create_params *p, unsigned *which)
{
    static const struct {
        const char *key;
        unsigned which;
    } amendable[] = {
        {"size", VIMG_AMEND_SIZE},
        {"compat", VIMG_AMEND_COMPAT},
        {"lazy_refcounts", VIMG_AMEND_LAZY_REFCOUNTS},
        {"refcount_bits", VIMG_AMEND_REFCOUNT_BITS},
        {"data_file", VIMG_AMEND_DATA_FILE},
        {"data_file_raw", VIMG_AMEND_DATA_FILE_RAW},
        {"backing_file", VIMG_AMEND_BACKING_FILE},
        {"backing_fmt", VIMG_AMEND_BACKING_FMT},
    };
    const char *compat = vimg_opts_get(o, "compat");

    if (vimg_opts_get(o, "encryption") || vimg_opts_has_prefix(o, "encrypt.")) {
        return vimg_error(-ENOTSUP, "encrypted images are not supported yet");
    }
    memset(p, 0, sizeof(*p));
    p->size = vimg_opts_number(o, "size", 0);
    p->cluster_size = (uint32_t)vimg_opts_number(o, "cluster_size", 0);
    p->qcow2_version = compat ? compat_version(compat) : 0;
    p->lazy_refcounts = vimg_opts_bool(o, "lazy_refcounts", false);
    p->refcount_bits = (unsigned)vimg_opts_number(o, "refcount_bits", 0);
    p->extended_l2 = vimg_opts_bool(o, "extended_l2", false);
    p->data_file = vimg_opts_get(o, "data_file");
    p->data_file_raw = vimg_opts_bool(o, "data_file_raw", false);
    p->data_file_keep = vimg_opts_bool(o, "data_file_keep", false);
    p->compression_type = vimg_opts_get(o, "compression_type");
    const char *level = vimg_opts_get(o, "compression_level");
    if (level) {
        const bool is_zstd =
            p->compression_type && !strcmp(p->compression_type, "zstd");
        const uint64_t max =
            is_zstd ? VIMG_ZSTD_LEVEL_MAX : VIMG_DEFLATE_LEVEL_MAX;
        const uint64_t v = vimg_opts_number(o, "compression_level", 0);
        if (v < 1 || v > max) {
            return vimg_error(-EINVAL,
                              "compression_level must be 1 to %u for "
                              "compression_type %s, not '%s'",
                              (unsigned)max, is_zstd ? "zstd" : "zlib", level);
        }
    }
    p->preallocation = vimg_opts_get(o, "preallocation");
    p->backing_file = vimg_opts_get(o, "backing_file");
    p->backing_format = vimg_opts_get(o, "backing_fmt");
    *which = 0;
    for (size_t i = 0; i < sizeof(amendable) / sizeof(amendable[0]); i++) {
        if (vimg_opts_get(o, amendable[i].key)) {
            *which |= amendable[i].which;
        }
    }
    return 0;
}

/* As the "Formatting" line of vimg 0.1 showed a new image: defaults
 * included, the backing file and data file when there are some. */
void qcow2_describe_options(const struct vimg_opts *o, FILE *out)
{
    struct qcow2_create_params p;
    unsigned which;

    if (qcow2_params_from_opts(o, &p, &which) < 0) {
        return;
    }
    fprintf(out, "cluster_size=%u extended_l2=%s",
            p.cluster_size ? p.cluster_size : 65536,
            p.extended_l2 ? "on" : "off");
    if (p.preallocation) {
        fprintf(out, " preallocation=%s", p.preallocation);
    }
    fprintf(out, " compression_type=%s size=%llu",
            p.compression_type ? p.compression_type : "zlib",
            (unsigned long long)p.size);
    if (p.backing_file) {
        fprintf(out, " backing_file=%s backing_fmt=%s", p.backing_file,
                p.backing_format ? p.backing_format : "(null)");
    }
    if (p.data_file) {
        fprintf(out, " data_file=%s data_file_raw=%s", p.data_file,
                p.data_file_raw ? "on" : "off");
    }
    fprintf(out, " compat=%s lazy_refcounts=%s refcount_bits=%u",
            p.qcow2_version == 2 ? "0.10" : "1.1",
            p.lazy_refcounts ? "on" : "off",
            p.refcount_bits ? p.refcount_bits : 16);
}

int qcow2_create_from_opts(const char *path, const struct vimg_opts *o)
{
    struct qcow2_create_params p;
    unsigned which;
    int ret = qcow2_params_from_opts(o, &p, &which);

    return ret < 0 ? ret : qcow2_create(path, &p);
}

int qcow2_amend_from_opts(struct vimg_image *img, const struct vimg_opts *o)
{
    struct qcow2_create_params p;
    unsigned which;
    int ret = qcow2_params_from_opts(o, &p, &which);

    return ret < 0 ? ret : qcow2_amend(img, &p, which);
}
