/* SPDX-License-Identifier: MIT */
/*
 * options.c: format options (vimg_opts).  Each driver declares its
 * create/amend options in a table; a list is checked against the table of
 * its format as values are set, with qemu-img's words.  Also qemu's size
 * syntax, the `-o help` listing, and the lists the deprecated fixed
 * struct vimg_create_opts turns into.
 */
#include <ctype.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "formats/format.h"

/* One value of a list. */
struct opt_value {
    const struct vimg_option *desc;
    char *key;   /* as set (a prefix option's full key) */
    char *text;  /* as given */
    uint64_t num; /* SIZE, NUMBER; BOOL: 0 or 1 */
};

struct vimg_opts {
    const struct vimg_format *drv;
    unsigned purpose;
    size_t nb, cap;
    struct opt_value *v;
};

/* The options of the file an image is created on, which qemu-img measure
 * takes besides the format's own (qemu's "file" protocol). */
static const struct vimg_option file_options[] = {
    {"nocow", VIMG_OPTION_BOOL, NULL, NULL, 0},
    {"extent_size_hint", VIMG_OPTION_SIZE, NULL, NULL, 0},
    {NULL, 0, NULL, NULL, 0},
};

/* ------------------------------------------------------------ sizes */

/* The full 128-bit product of A and B, as *HI:*LO. */
static void mul_64x64(uint64_t a, uint64_t b, uint64_t *hi, uint64_t *lo)
{
    const uint64_t a_lo = a & 0xffffffffu, a_hi = a >> 32;
    const uint64_t b_lo = b & 0xffffffffu, b_hi = b >> 32;
    const uint64_t ll = a_lo * b_lo, lh = a_lo * b_hi;
    const uint64_t hl = a_hi * b_lo, hh = a_hi * b_hi;
    const uint64_t mid = (ll >> 32) + (lh & 0xffffffffu) + (hl & 0xffffffffu);

    *lo = (mid << 32) | (ll & 0xffffffffu);
    *hi = hh + (lh >> 32) + (hl >> 32) + (mid >> 32);
}

/* The multiplier of suffix C, or 0 if C is not one. */
static uint64_t size_suffix(char c)
{
    static const char suffixes[] = "kmgtpe";
    const char *p = strchr(suffixes, c | 0x20);

    if (c == 'b' || c == 'B') {
        return 1;
    }
    if (!c || !p) {
        return 0;
    }
    return 1ull << (10 * (unsigned)(p - suffixes + 1));
}

/* Parse the integral part: decimal, or hex after "0x".  Returns 0, -EINVAL
 * or -ERANGE; *end is past what was read. */
static int parse_size_integer(const char *s, const char **end,
                              uint64_t *out, bool *is_hex)
{
    const char *p = s;
    char *e;

    while (isspace((unsigned char)*p)) {
        p++;
    }
    if (*p == '+') {
        p++;
    }
    *end = s;
    if (!isdigit((unsigned char)*p)) {
        return -EINVAL;
    }
    errno = 0;
    uint64_t v = strtoull(p, &e, 10);
    *is_hex = false;
    if (errno == 0 && v == 0 && (*e == 'x' || *e == 'X') &&
        isxdigit((unsigned char)e[1])) {
        errno = 0;
        v = strtoull(p, &e, 16);
        *is_hex = true;
    }
    *end = e;
    *out = v;
    return errno == ERANGE ? -ERANGE : 0;
}

int vimg_parse_size(const char *s, uint64_t *out)
{
    const char *end;
    uint64_t val = 0, frac = 0;
    bool is_hex;

    if (!s || !out) {
        return -EINVAL;
    }
    int ret = parse_size_integer(s, &end, &val, &is_hex);
    if (ret == 0 && *end == '.' && is_hex) {
        ret = -EINVAL;
        end = s;
    } else if (ret == 0 && *end == '.') {
        char *e;
        errno = 0;
        const double f = strtod(end, &e);
        if (e == end) {
            end++; /* "1." and "1.k" have no digits after the point */
        } else if (memchr(end, 'e', (size_t)(e - end)) ||
                   memchr(end, 'E', (size_t)(e - end))) {
            ret = -EINVAL;
            end = s;
        } else {
            /* as 64-bit fixed point; a fraction that rounds to 1.0 counts
             * as none, as in qemu-img */
            frac = f < 1.0 ? (uint64_t)ldexp(f, 64) : 0;
            end = e;
        }
    }
    if (ret == 0) {
        uint64_t mul = size_suffix(*end);
        if (mul) {
            end++;
        } else {
            mul = 1;
        }
        if (mul == 1 && frac) {
            ret = -EINVAL;
            end = s;
        } else if (mul > 1) {
            uint64_t hi, lo, frac_hi, frac_lo;
            mul_64x64(val, mul, &hi, &lo);
            mul_64x64(frac, mul, &frac_hi, &frac_lo);
            /* add the whole bytes of the fraction, then round */
            const uint64_t add = frac_hi + (frac_lo >> 63);
            val = lo + add;
            if (hi || val < lo) {
                ret = -ERANGE;
            }
        }
    }
    if (*end) {
        return -EINVAL;
    }
    if (ret == 0) {
        *out = val;
    }
    return ret;
}

int vimg_prealloc_parse(const char *mode, enum vimg_prealloc *out)
{
    static const char *const names[] = {"off", "metadata", "falloc", "full"};

    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        if (!mode || strcmp(mode, names[i]) == 0) {
            *out = (enum vimg_prealloc)(mode ? i : 0);
            return 0;
        }
    }
    return -EINVAL;
}

/* ----------------------------------------------------- option tables */

static const struct vimg_option *find_in(const struct vimg_option *table,
                                         const char *key)
{
    for (const struct vimg_option *o = table; o && o->name; o++) {
        const size_t n = strlen(o->name);
        if ((o->flags & VIMG_OPTION_PREFIX) ? strncmp(key, o->name, n) == 0
                                            : strcmp(key, o->name) == 0) {
            return o;
        }
    }
    return NULL;
}

const char *vimg_format_name(size_t index)
{
    const struct vimg_format *drv = vimg_format_at(index);

    return drv ? drv->name : NULL;
}

const struct vimg_option *vimg_format_options(const char *format)
{
    const struct vimg_format *drv = format ? vimg_format_find(format) : NULL;

    return drv ? drv->options : NULL;
}

static const char *type_name(enum vimg_option_type t)
{
    switch (t) {
    case VIMG_OPTION_BOOL:
        return "bool";
    case VIMG_OPTION_SIZE:
        return "size";
    case VIMG_OPTION_NUMBER:
        return "num";
    default:
        return "str";
    }
}

int vimg_format_print_options(const char *format, unsigned purpose,
                              FILE *out)
{
    const struct vimg_option *table = vimg_format_options(format);

    if (!table || !out) {
        return vimg_error(-EINVAL, "Unknown file format '%s'",
                          format ? format : "");
    }
    fprintf(out, "Supported options:\n");
    for (const struct vimg_option *o = table; o->name; o++) {
        if (!o->help || (purpose == VIMG_OPTS_AMEND &&
                         !(o->flags & VIMG_OPTION_AMENDABLE))) {
            continue;
        }
        char field[64];
        snprintf(field, sizeof(field), "%s=<%s>", o->name, type_name(o->type));
        /* later lines of the help line up under the first */
        fprintf(out, "  %-22s ", field);
        for (const char *h = o->help; *h; h++) {
            fputc(*h, out);
            if (*h == '\n') {
                fprintf(out, "%25s", "");
            }
        }
        fputc('\n', out);
    }
    return 0;
}

/* ------------------------------------------------------------- lists */

int vimg_opts_new(vimg_opts **out, const char *format, unsigned purpose)
{
    if (!out || !format || purpose > VIMG_OPTS_MEASURE) {
        return vimg_error(-EINVAL, "vimg_opts_new: bad argument");
    }
    *out = NULL;
    const struct vimg_format *drv = vimg_format_find(format);
    if (!drv) {
        return vimg_error(-EINVAL, "Unknown file format '%s'", format);
    }
    if (purpose == VIMG_OPTS_AMEND && !drv->amend) {
        return vimg_error(-ENOTSUP, "Format driver '%s' does not support "
                                    "option amendment",
                          drv->name);
    }
    if (purpose != VIMG_OPTS_AMEND && (!drv->create || !drv->options)) {
        return vimg_error(-ENOTSUP, "Format driver '%s' does not support "
                                    "image creation",
                          drv->name);
    }
    struct vimg_opts *o = calloc(1, sizeof(*o));
    if (!o) {
        return vimg_error(-ENOMEM, "out of memory");
    }
    o->drv = drv;
    o->purpose = purpose;
    *out = o;
    return 0;
}

void vimg_opts_free(vimg_opts *opts)
{
    if (!opts) {
        return;
    }
    for (size_t i = 0; i < opts->nb; i++) {
        free(opts->v[i].key);
        free(opts->v[i].text);
    }
    free(opts->v);
    free(opts);
}

int vimg_opts_copy(vimg_opts **out, const vimg_opts *src)
{
    if (!out || !src) {
        return vimg_error(-EINVAL, "vimg_opts_copy: NULL argument");
    }
    int ret = vimg_opts_new(out, src->drv->name, src->purpose);
    for (size_t i = 0; ret == 0 && i < src->nb; i++) {
        ret = vimg_opts_set(*out, src->v[i].key, src->v[i].text);
    }
    if (ret < 0) {
        vimg_opts_free(*out);
        *out = NULL;
    }
    return ret;
}

static bool parse_bool(const char *v, bool *out)
{
    if (!strcmp(v, "on") || !strcmp(v, "yes") || !strcmp(v, "true")) {
        *out = true;
    } else if (!strcmp(v, "off") || !strcmp(v, "no") || !strcmp(v, "false")) {
        *out = false;
    } else {
        return false;
    }
    return true;
}

/* VALUE as D's type into *NUM, or the error in qemu-img's words (those of
 * measure for a measure list, as qemu-img's differ there). */
static int parse_typed(const struct vimg_opts *o, const struct vimg_option *d,
                       const char *key, const char *value, uint64_t *num)
{
    const bool is_measure = o->purpose == VIMG_OPTS_MEASURE;
    bool b;

    switch (d->type) {
    case VIMG_OPTION_BOOL:
        if (!parse_bool(value, &b)) {
            return is_measure ? vimg_error(-EINVAL, "Parameter '%s' expects "
                                                    "'on' or 'off'",
                                           key)
                              : vimg_error(-EINVAL, "Parameter '%s' expects "
                                                    "a boolean (on or off), "
                                                    "not '%s'",
                                           key, value);
        }
        *num = b;
        return 0;
    case VIMG_OPTION_SIZE:
        if (vimg_parse_size(value, num) < 0) {
            return is_measure ? vimg_error(-EINVAL, "Parameter '%s' expects "
                                                    "a non-negative number "
                                                    "below 2^64",
                                           key)
                              : vimg_error(-EINVAL, "Parameter '%s' expects "
                                                    "a size (with an "
                                                    "optional k, M, G, T "
                                                    "suffix), not '%s'",
                                           key, value);
        }
        return 0;
    case VIMG_OPTION_NUMBER: {
        char *end;
        errno = 0;
        *num = strtoull(value, &end, 10);
        if (!isdigit((unsigned char)*value) || *end || errno) {
            return vimg_error(-EINVAL, "Parameter '%s' expects a number, "
                                       "not '%s'",
                              key, value);
        }
        return 0;
    }
    default:
        *num = 0;
        return 0;
    }
}

/* The option KEY is, for O's purpose; NULL (and the error) when unknown. */
static const struct vimg_option *lookup(const struct vimg_opts *o,
                                        const char *key)
{
    const struct vimg_option *d = find_in(o->drv->options, key);

    if (!d && o->purpose == VIMG_OPTS_MEASURE) {
        d = find_in(file_options, key);
    }
    if (!d) {
        vimg_error(-ENOENT, "Invalid parameter '%s'", key);
    }
    return d;
}

int vimg_opts_set(vimg_opts *o, const char *key, const char *value)
{
    if (!o || !key) {
        return vimg_error(-EINVAL, "vimg_opts_set: NULL argument");
    }
    const struct vimg_option *d = lookup(o, key);
    if (!d) {
        return -ENOENT;
    }
    if (o->purpose == VIMG_OPTS_AMEND && !(d->flags & VIMG_OPTION_AMENDABLE)) {
        return vimg_error(-EINVAL, "Invalid parameter '%s'\nThis option is "
                                   "only supported for image creation",
                          key);
    }
    if (!value) {
        return vimg_error(-EINVAL, "Invalid option '%s': expected key=value",
                          key);
    }
    int ret = o->drv->check_option && d != find_in(file_options, key)
                  ? o->drv->check_option(key, value, o->purpose)
                  : 0;
    uint64_t num = 0;
    if (ret == 0) {
        ret = parse_typed(o, d, key, value, &num);
    }
    if (ret < 0) {
        return ret;
    }
    char *k = strdup(key), *t = strdup(value);
    if (!k || !t) {
        free(k);
        free(t);
        return vimg_error(-ENOMEM, "out of memory");
    }
    /* a later value replaces the earlier one */
    size_t i = 0;
    while (i < o->nb && strcmp(o->v[i].key, key) != 0) {
        i++;
    }
    if (i == o->nb && o->nb == o->cap) {
        const size_t cap = o->cap ? 2 * o->cap : 8;
        struct opt_value *v = realloc(o->v, cap * sizeof(*v));
        if (!v) {
            free(k);
            free(t);
            return vimg_error(-ENOMEM, "out of memory");
        }
        o->v = v;
        o->cap = cap;
    }
    if (i == o->nb) {
        o->nb++;
    } else {
        free(o->v[i].key);
        free(o->v[i].text);
    }
    o->v[i] = (struct opt_value){.desc = d, .key = k, .text = t, .num = num};
    return 0;
}

/*
 * The next item of a comma-separated LIST at *POS into BUF (",," is a
 * comma); false at the end.  Empty items are skipped.
 */
static bool next_item(const char *list, size_t *pos, char *buf)
{
    size_t n = 0;
    const char *p = list + *pos;

    while (*p == ',' && p[1] != ',') {
        p++;
    }
    for (; *p; p++) {
        if (*p == ',' && p[1] == ',') {
            p++;
        } else if (*p == ',') {
            p++;
            break;
        }
        buf[n++] = *p;
    }
    buf[n] = '\0';
    *pos = (size_t)(p - list);
    return n > 0;
}

int vimg_opts_parse(vimg_opts *o, const char *list)
{
    if (!o || !list) {
        return vimg_error(-EINVAL, "vimg_opts_parse: NULL argument");
    }
    char *buf = malloc(strlen(list) + 1);
    size_t pos = 0;
    int ret = buf ? 0 : vimg_error(-ENOMEM, "out of memory");

    while (ret == 0 && next_item(list, &pos, buf)) {
        char *eq = strchr(buf, '=');
        if (eq) {
            *eq = '\0';
        }
        ret = vimg_opts_set(o, buf, eq ? eq + 1 : NULL);
    }
    free(buf);
    return ret;
}

static const struct opt_value *find_value(const struct vimg_opts *o,
                                          const char *key)
{
    for (size_t i = 0; o && key && i < o->nb; i++) {
        if (strcmp(o->v[i].key, key) == 0) {
            return &o->v[i];
        }
    }
    return NULL;
}

const char *vimg_opts_get(const vimg_opts *o, const char *key)
{
    const struct opt_value *v = find_value(o, key);

    return v ? v->text : NULL;
}

uint64_t vimg_opts_number(const struct vimg_opts *o, const char *key,
                          uint64_t def)
{
    const struct opt_value *v = find_value(o, key);

    return v ? v->num : def;
}

bool vimg_opts_bool(const struct vimg_opts *o, const char *key, bool def)
{
    const struct opt_value *v = find_value(o, key);

    return v ? v->num != 0 : def;
}

bool vimg_opts_has_prefix(const struct vimg_opts *o, const char *prefix)
{
    for (size_t i = 0; o && i < o->nb; i++) {
        if (strncmp(o->v[i].key, prefix, strlen(prefix)) == 0) {
            return true;
        }
    }
    return false;
}

const char *vimg_opts_format(const vimg_opts *o)
{
    return o ? o->drv->name : NULL;
}

const struct vimg_format *vimg_opts_driver(const struct vimg_opts *o)
{
    return o->drv;
}

unsigned vimg_opts_purpose(const struct vimg_opts *o)
{
    return o->purpose;
}

/* Set values in the table's order, as "key=value" separated by spaces */
static void describe_generic(const struct vimg_opts *o, FILE *f)
{
    const char *sep = "";

    for (const struct vimg_option *d = o->drv->options; d && d->name; d++) {
        for (size_t i = 0; i < o->nb; i++) {
            if (o->v[i].desc == d) {
                fprintf(f, "%s%s=%s", sep, o->v[i].key, o->v[i].text);
                sep = " ";
            }
        }
    }
}

char *vimg_opts_describe(const vimg_opts *o)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *f = o ? open_memstream(&buf, &len) : NULL;

    if (!f) {
        return NULL;
    }
    if (o->drv->describe_options) {
        o->drv->describe_options(o, f);
    } else {
        describe_generic(o, f);
    }
    if (fclose(f) != 0) {
        free(buf);
        return NULL;
    }
    return buf;
}

/* ------------------------------------- the deprecated fixed struct */

int vimg_create_opts_copy(const struct vimg_create_opts *opts,
                          struct vimg_create_opts *out)
{
    memset(out, 0, sizeof(*out));
    if (!opts) {
        return -EINVAL;
    }
    if (opts->version == 1) {
        memcpy(out, opts, offsetof(struct vimg_create_opts, data_file_keep));
    } else if (opts->version == VIMG_CREATE_OPTS_VERSION) {
        *out = *opts;
    } else {
        return -EINVAL;
    }
    out->version = VIMG_CREATE_OPTS_VERSION;
    return 0;
}

/* Set KEY to the decimal N when IS_SET. */
static int set_number(vimg_opts *o, bool is_set, const char *key, uint64_t n)
{
    char buf[32];

    snprintf(buf, sizeof(buf), "%llu", (unsigned long long)n);
    return is_set ? vimg_opts_set(o, key, buf) : 0;
}

static int set_string(vimg_opts *o, const char *key, const char *value)
{
    return value ? vimg_opts_set(o, key, value) : 0;
}

static int set_flag(vimg_opts *o, bool is_set, const char *key, bool value)
{
    return is_set ? vimg_opts_set(o, key, value ? "on" : "off") : 0;
}

int vimg_opts_from_create_opts(const struct vimg_create_opts *caller,
                               unsigned purpose, unsigned which,
                               vimg_opts **out)
{
    struct vimg_create_opts c;

    *out = NULL;
    if (vimg_create_opts_copy(caller, &c) < 0 || !c.format) {
        return vimg_error(-EINVAL, "bad argument: vimg_create_opts");
    }
    const bool is_create = purpose != VIMG_OPTS_AMEND;
    /* what each field means: set when named (amend) or not a default */
    const bool has[] = {
        is_create || (which & VIMG_AMEND_SIZE),
        is_create ? c.qcow2_version != 0 : (which & VIMG_AMEND_COMPAT) != 0,
        is_create ? c.lazy_refcounts : (which & VIMG_AMEND_LAZY_REFCOUNTS),
        is_create ? c.refcount_bits != 0 : (which & VIMG_AMEND_REFCOUNT_BITS),
        is_create ? c.data_file_raw : (which & VIMG_AMEND_DATA_FILE_RAW),
    };
    const char *compat = c.qcow2_version == 2   ? "0.10"
                         : c.qcow2_version == 3 ? "1.1"
                                                : NULL;
    vimg_opts *o = NULL;
    int ret = vimg_opts_new(&o, c.format, purpose);
    if (ret == 0) {
        ret = set_number(o, has[0], "size", c.size);
    }
    if (ret == 0 && has[1]) {
        ret = compat ? vimg_opts_set(o, "compat", compat)
                     : set_number(o, true, "compat", c.qcow2_version);
    }
    if (ret == 0) {
        ret = set_flag(o, has[2], "lazy_refcounts", c.lazy_refcounts);
    }
    if (ret == 0) {
        ret = set_number(o, has[3], "refcount_bits", c.refcount_bits);
    }
    if (ret == 0) {
        ret = set_flag(o, has[4], "data_file_raw", c.data_file_raw);
    }
    if (ret == 0 && (is_create || (which & VIMG_AMEND_DATA_FILE))) {
        ret = set_string(o, "data_file", c.data_file);
    }
    if (ret == 0 && (is_create || (which & VIMG_AMEND_BACKING_FILE))) {
        ret = set_string(o, "backing_file", c.backing_file);
    }
    if (ret == 0 && (is_create || (which & VIMG_AMEND_BACKING_FMT))) {
        ret = set_string(o, "backing_fmt", c.backing_format);
    }
    if (ret == 0 && is_create) {
        ret = set_number(o, c.cluster_size != 0, "cluster_size",
                         c.cluster_size);
    }
    if (ret == 0 && is_create) {
        ret = set_flag(o, c.extended_l2, "extended_l2", true);
    }
    if (ret == 0 && is_create) {
        ret = set_string(o, "compression_type", c.compression_type);
    }
    if (ret == 0 && is_create) {
        ret = set_string(o, "preallocation", c.preallocation);
    }
    if (ret == 0 && is_create) {
        ret = set_flag(o, c.data_file_keep, "data_file_keep", true);
    }
    if (ret < 0) {
        vimg_opts_free(o);
        return ret;
    }
    *out = o;
    return 0;
}
