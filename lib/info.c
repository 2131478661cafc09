/* SPDX-License-Identifier: MIT */
/*
 * info.c: the format-specific information tree of struct vimg_info, as
 * drivers build it (key order kept) and vimg_info_free() frees it.
 */
#include <stdlib.h>
#include <string.h>

#include "vimg-internal.h"

struct vimg_info_entry *vimg_info_add(int *err,
                                      struct vimg_info_entry *parent,
                                      const char *key,
                                      enum vimg_info_type type)
{
    if (*err) {
        return NULL;
    }
    struct vimg_info_entry *e = calloc(1, sizeof(*e));
    char *k = key ? strdup(key) : NULL;
    if (!e || (key && !k)) {
        free(e);
        free(k);
        *err = vimg_error(-ENOMEM, "out of memory");
        return NULL;
    }
    e->key = k;
    e->type = type;
    if (parent) {
        struct vimg_info_entry **tail = &parent->children;
        while (*tail) {
            tail = &(*tail)->next;
        }
        *tail = e;
    }
    return e;
}

void vimg_info_add_string(int *err, struct vimg_info_entry *parent,
                          const char *key, const char *value)
{
    struct vimg_info_entry *e =
        vimg_info_add(err, parent, key, VIMG_INFO_STRING);

    if (e) {
        e->string = strdup(value);
        if (!e->string) {
            *err = vimg_error(-ENOMEM, "out of memory");
        }
    }
}

void vimg_info_add_bool(int *err, struct vimg_info_entry *parent,
                        const char *key, bool value)
{
    struct vimg_info_entry *e = vimg_info_add(err, parent, key,
                                              VIMG_INFO_BOOL);

    if (e) {
        e->boolean = value;
    }
}

void vimg_info_add_int(int *err, struct vimg_info_entry *parent,
                       const char *key, int64_t value)
{
    struct vimg_info_entry *e = vimg_info_add(err, parent, key,
                                              VIMG_INFO_INT);

    if (e) {
        e->integer = value;
    }
}

void vimg_info_entry_free(struct vimg_info_entry *e)
{
    while (e) {
        struct vimg_info_entry *next = e->next;
        vimg_info_entry_free(e->children);
        free((char *)e->key);
        free((char *)e->string);
        free(e);
        e = next;
    }
}
