/*  fuzz_form.c: cm_form_decode on any buffer (ingestd's upload input). A
    form it accepts must re-encode to the same parts. */
#include "fuzz.h"

#include "cm_form.h"

#include <string.h>

//  Same string or both NULL.
static int
s_same (const char *a, const char *b)
{
    return a == b || (a && b && !strcmp (a, b));
}

int
LLVMFuzzerTestOneInput (const uint8_t *data, size_t size)
{
    char err[256];
    cm_form_t *form = cm_form_decode (data, size, err, sizeof err);
    if (!form) {
        FUZZ_CHECK (err[0]);
        return 0;
    }
    FUZZ_CHECK (cm_form_count (form) <= CM_FORM_MAX_PARTS);
    char *encoded = NULL;
    size_t encoded_size = 0;
    cm_form_encode (form, &encoded, &encoded_size);
    cm_form_t *again = cm_form_decode (encoded, encoded_size, err, sizeof err);
    FUZZ_CHECK (again);
    FUZZ_CHECK (cm_form_count (again) == cm_form_count (form));
    size_t total = 0;
    for (size_t i = 0; i < cm_form_count (form); i++) {
        const cm_form_part_t *a = cm_form_at (form, i), *b = cm_form_at (again, i);
        FUZZ_CHECK (s_same (a->name, b->name));
        FUZZ_CHECK (s_same (a->filename, b->filename));
        FUZZ_CHECK (s_same (a->content_type, b->content_type));
        FUZZ_CHECK (a->size == b->size && !memcmp (a->data, b->data, a->size));
        FUZZ_CHECK (a->data[a->size] == '\0');
        FUZZ_CHECK (cm_form_get (form, a->name));
        total += a->size;
    }
    FUZZ_CHECK (cm_form_data_size (form) == total);
    free (encoded);
    cm_form_destroy (&again);
    cm_form_destroy (&form);
    return 0;
}
