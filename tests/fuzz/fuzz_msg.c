/*  fuzz_msg.c: cm_msg_decode on any frame (the gateway's and the daemons'
    ZeroMQ input). A frame it accepts must re-encode to a frame that decodes
    to the same encoding. */
#include "fuzz.h"

#include "cm_msg.h"

#include <string.h>

//  Encode msg; caller frees.
static char *
s_encode (cm_msg_t *msg, size_t *size_p)
{
    char *data = NULL;
    cm_msg_encode (msg, &data, size_p);
    FUZZ_CHECK (data);
    return data;
}

int
LLVMFuzzerTestOneInput (const uint8_t *data, size_t size)
{
    char err[256];
    cm_msg_t *msg = cm_msg_decode (data, size, err, sizeof err);
    if (!msg) {
        FUZZ_CHECK (err[0]);
        return 0;
    }
    //  Every getter on whatever the frame held.
    FUZZ_CHECK (strcmp (cm_msg_type_name (cm_msg_type (msg)), "?"));
    size_t body_size;
    cm_msg_body (msg, &body_size);
    for (size_t i = 0; i < cm_msg_header_count (msg); i++) {
        const char *name, *value;
        cm_msg_header_at (msg, i, &name, &value);
        FUZZ_CHECK (name && value);
        FUZZ_CHECK (cm_msg_header (msg, name));
    }
    size_t first_size, second_size;
    char *first = s_encode (msg, &first_size);
    cm_msg_t *again = cm_msg_decode (first, first_size, err, sizeof err);
    if (!again)
        fprintf (stderr, "re-encoded frame refused: %s\n", err);
    FUZZ_CHECK (again);
    char *second = s_encode (again, &second_size);
    FUZZ_CHECK (first_size == second_size && !memcmp (first, second, first_size));
    free (first);
    free (second);
    cm_msg_destroy (&again);
    cm_msg_destroy (&msg);
    return 0;
}
