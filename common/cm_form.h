/*  cm_form.h: a parsed HTML form (multipart/form-data or urlencoded) as one
    binary-safe msgpack message.

    The gateway parses an upload with libmicrohttpd's post processor and
    forwards the parts to a daemon as the REQUEST body, with the content
    type CM_FORM_CONTENT_TYPE, so that no daemon parses multipart again and
    file bytes (NULs included) arrive intact. Wire shape (docs/protocol.md):
        [version, [[name, filename|nil, content_type|nil, data(bin)], ...]]
    cm_form_decode refuses another version, a truncated or malformed buffer,
    trailing bytes and more than CM_FORM_MAX_PARTS parts; it never asserts on
    input. A form belongs to one thread. */
#ifndef CM_FORM_H_INCLUDED
#define CM_FORM_H_INCLUDED

#include "cm_common.h"

#define CM_FORM_VERSION      1
#define CM_FORM_CONTENT_TYPE "application/vnd.llmrt.form+msgpack"
//  Parts a form may have (the gateway refuses more; decode too).
#define CM_FORM_MAX_PARTS 1024

typedef struct cm_form_s cm_form_t;

//  One part; every pointer is borrowed from the form.
typedef struct {
    const char *name;         //  field name
    const char *filename;     //  file name of a file part, NULL otherwise
    const char *content_type; //  the part's Content-Type, NULL when not given
    const char *data;         //  the bytes, NUL-terminated for convenience
    size_t size;              //  their length without that NUL
} cm_form_part_t;

//  An empty form. Caller owns it.
cm_form_t *cm_form_new (void);
//  Destroy; NULL-safe; nulls the pointer.
void cm_form_destroy (cm_form_t **self_p);

//  Add bytes to the field name. When the last part has the same name they
//  are appended to it (the post processor delivers a value in pieces);
//  otherwise they start a new part. filename and content_type (NULL: none)
//  are taken from the call that starts the part. Strings are copied.
void cm_form_add (cm_form_t *self, const char *name, const char *filename,
                  const char *content_type, const void *data, size_t size);
//  Always start a new part (a field that repeats: two "file" parts).
void cm_form_add_part (cm_form_t *self, const char *name, const char *filename,
                       const char *content_type, const void *data, size_t size);

//  The first part of that name, or NULL. Borrowed until the form changes.
const cm_form_part_t *cm_form_get (cm_form_t *self, const char *name);
//  Number of parts, and the index-th one (borrowed).
size_t cm_form_count (cm_form_t *self);
const cm_form_part_t *cm_form_at (cm_form_t *self, size_t index);
//  Bytes of data over all parts.
size_t cm_form_data_size (cm_form_t *self);

//  Encode into a newly allocated buffer; caller frees *data_p.
void cm_form_encode (cm_form_t *self, char **data_p, size_t *size_p);
//  Decode. Returns a new form, or NULL with the reason in err.
cm_form_t *cm_form_decode (const void *data, size_t size, char *err, size_t errlen);

#endif
