/*  fuzz_metrics_msg.c: cm_metrics_msg_decode on any frame (the supervisor's
    and the gateway's metrics channel). A frame it accepts must re-encode
    to a frame that decodes to the same encoding. */
#include "fuzz.h"

#include "cm_metrics_msg.h"

#include <string.h>

int
LLVMFuzzerTestOneInput (const uint8_t *data, size_t size)
{
    char err[256];
    cm_metrics_msg_t *msg = cm_metrics_msg_decode (data, size, err, sizeof err);
    if (!msg) {
        FUZZ_CHECK (err[0]);
        return 0;
    }
    if (cm_metrics_msg_type (msg) != CM_METRICS_MSG_QUERY)
        FUZZ_CHECK (json_is_object (cm_metrics_msg_body (msg)));
    char *first = NULL, *second = NULL;
    size_t first_size = 0, second_size = 0;
    cm_metrics_msg_encode (msg, &first, &first_size);
    cm_metrics_msg_t *again = cm_metrics_msg_decode (first, first_size, err, sizeof err);
    FUZZ_CHECK (again);
    cm_metrics_msg_encode (again, &second, &second_size);
    FUZZ_CHECK (first_size == second_size && !memcmp (first, second, first_size));
    free (first);
    free (second);
    cm_metrics_msg_destroy (&again);
    cm_metrics_msg_destroy (&msg);
    return 0;
}
