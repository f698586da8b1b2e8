/*  test_cm_msg.c: every message type round-trips; bad frames are refused. */
#include <criterion/criterion.h>
#include <msgpack.h>
#include "cm_msg.h"

static cm_msg_t *
s_roundtrip (cm_msg_t *msg)
{
    char *data;
    size_t size;
    cm_msg_encode (msg, &data, &size);
    char err[256] = "";
    cm_msg_t *copy = cm_msg_decode (data, size, err, sizeof err);
    cr_assert_not_null (copy, "decode failed: %s", err);
    free (data);
    return copy;
}

Test (cm_msg, walkthrough_request_roundtrip)
{
    cm_msg_t *msg = cm_msg_new (CM_MSG_REQUEST);
    cm_msg_set_request_id (msg, "gw-1");
    cm_msg_set_service (msg, "chat");
    cm_msg_set_method (msg, "POST");
    cm_msg_set_route (msg, "/api/v1/workspace/x/chat?y=1");
    cm_msg_set_deadline (msg, 1700000000123);
    cm_msg_set_identity (msg, "admin");
    cm_msg_header_add (msg, "Content-Type", "application/json");
    cm_msg_set_body (msg, "{\"message\":\"hi\"}", 16);
    cm_msg_t *copy = s_roundtrip (msg);
    cr_assert_eq (cm_msg_type (copy), CM_MSG_REQUEST);
    cr_assert_str_eq (cm_msg_request_id (copy), "gw-1");
    cr_assert_str_eq (cm_msg_service (copy), "chat");
    cr_assert_str_eq (cm_msg_method (copy), "POST");
    cr_assert_str_eq (cm_msg_route (copy), "/api/v1/workspace/x/chat?y=1");
    cr_assert_eq (cm_msg_deadline (copy), 1700000000123);
    cr_assert_str_eq (cm_msg_identity (copy), "admin");
    cr_assert_str_eq (cm_msg_header (copy, "content-type"), "application/json");
    size_t size;
    const char *body = cm_msg_body (copy, &size);
    cr_assert_eq (size, 16);
    cr_assert_eq (memcmp (body, "{\"message\":\"hi\"}", 16), 0);
    cm_msg_destroy (&msg);
    cm_msg_destroy (&copy);
    cr_assert_null (copy);
}

Test (cm_msg, every_type_roundtrips)
{
    for (int type = CM_MSG_READY; type <= CM_MSG_LAST; type++) {
        cm_msg_t *msg = cm_msg_new ((cm_msg_type_t) type);
        cm_msg_set_service (msg, "chat");
        cm_msg_set_instance (msg, "chat-1");
        cm_msg_set_capacity (msg, 7);
        cm_msg_set_request_id (msg, "r1");
        cm_msg_set_status (msg, 429);
        cm_msg_set_content_type (msg, "text/event-stream");
        cm_msg_set_reason (msg, "bye");
        cm_msg_header_add (msg, "Retry-After", "2");
        cm_msg_set_body (msg, "\0binary\xff", 8);
        cm_msg_set_held (msg, true);
        cm_msg_set_partials (msg, 4000000000u);
        cm_msg_set_generation (msg, 77);
        cm_msg_t *copy = s_roundtrip (msg);
        cr_assert_eq ((int) cm_msg_type (copy), type);
        switch (type) {
            case CM_MSG_READY:
                cr_assert_str_eq (cm_msg_service (copy), "chat");
                cr_assert_str_eq (cm_msg_instance (copy), "chat-1");
                cr_assert_eq (cm_msg_capacity (copy), 7);
                break;
            case CM_MSG_HEARTBEAT:
                cr_assert_eq (cm_msg_capacity (copy), 7);
                cr_assert_str_eq (cm_msg_request_id (copy), "");
                break;
            case CM_MSG_PARTIAL:
            case CM_MSG_FINAL: {
                cr_assert_str_eq (cm_msg_request_id (copy), "r1");
                cr_assert_eq (cm_msg_status (copy), 429);
                cr_assert_str_eq (cm_msg_content_type (copy), "text/event-stream");
                cr_assert_str_eq (cm_msg_header (copy, "retry-after"), "2");
                size_t size;
                const char *body = cm_msg_body (copy, &size);
                cr_assert_eq (size, 8);
                cr_assert_eq (memcmp (body, "\0binary\xff", 8), 0);
                break;
            }
            case CM_MSG_CANCEL:
                cr_assert_str_eq (cm_msg_request_id (copy), "r1");
                cr_assert_str_eq (cm_msg_reason (copy), "bye");
                break;
            case CM_MSG_DISCONNECT:
                cr_assert_str_eq (cm_msg_reason (copy), "bye");
                break;
            case CM_MSG_CHECK:
                cr_assert_str_eq (cm_msg_request_id (copy), "r1");
                cr_assert_eq (cm_msg_generation (copy), 77);
                cr_assert_not (cm_msg_held (copy));
                break;
            case CM_MSG_CHECKED:
                cr_assert_str_eq (cm_msg_request_id (copy), "r1");
                cr_assert (cm_msg_held (copy));
                cr_assert_eq (cm_msg_partials (copy), 4000000000u);
                cr_assert_eq (cm_msg_generation (copy), 77);
                cr_assert_str_eq (cm_msg_reason (copy), "");
                break;
            default:
                break;
        }
        cm_msg_destroy (&msg);
        cm_msg_destroy (&copy);
    }
}

static void
s_refused (const void *data, size_t size, const char *expect)
{
    char err[256] = "";
    cm_msg_t *msg = cm_msg_decode (data, size, err, sizeof err);
    cr_assert_null (msg);
    cr_assert (strstr (err, expect), "error '%s' does not mention '%s'", err, expect);
}

Test (cm_msg, truncated_frames_are_refused)
{
    cm_msg_t *msg = cm_msg_new (CM_MSG_REQUEST);
    cm_msg_set_request_id (msg, "r1");
    cm_msg_set_body (msg, "hello", 5);
    char *data;
    size_t size;
    cm_msg_encode (msg, &data, &size);
    for (size_t cut = 0; cut < size; cut++) {
        char err[256];
        cr_assert_null (cm_msg_decode (data, cut, err, sizeof err), "cut at %zu accepted",
                        cut);
    }
    free (data);
    cm_msg_destroy (&msg);
}

Test (cm_msg, malformed_and_wrong_version_are_refused)
{
    s_refused ("\xc1", 1, "malformed");
    //  A map, not an array.
    s_refused ("\x80", 1, "array");
    //  [2, 6, 1]: version 2 heartbeat.
    s_refused ("\x93\x02\x06\x01", 4, "version");
    //  [1, 99]: unknown type.
    s_refused ("\x92\x01\x63", 3, "type");
    //  [1, 6]: heartbeat without its capacity.
    s_refused ("\x92\x01\x06", 3, "fields");
    //  [1, 6, "x"]: capacity of the wrong type.
    s_refused ("\x93\x01\x06\xa1x", 5, "wrong type");
    //  [1, 10]: one past the last type.
    s_refused ("\x92\x01\x0a", 3, "type");
    //  [1, 9, "r", 0, 2, 0]: CHECKED whose held is neither 0 nor 1.
    s_refused ("\x96\x01\x09\xa1r\x00\x02\x00", 8, "wrong type");
    //  A valid heartbeat followed by junk.
    s_refused ("\x93\x01\x06\x01\x00", 5, "trailing");
}

Test (cm_msg, hostile_container_sizes_are_refused_before_allocating)
{
    //  [1, 2, <array of 2^32-1 items>]: would make msgpack-c allocate ~100 GB.
    s_refused ("\x93\x01\x02\xdd\xff\xff\xff\xff", 8, "malformed");
    //  A map claiming 65535 pairs in a 5-byte frame.
    s_refused ("\x93\x01\x06\xde\xff\xff", 6, "malformed");
    //  A bin claiming 4 GB.
    s_refused ("\x93\x01\x06\xc6\xff\xff\xff\xff", 8, "malformed");
}

//  msgpack-c gives an empty string a NULL pointer when no longer string
//  came before it in the frame; found by tests/fuzz/fuzz_msg (it aborted).
Test (cm_msg, empty_strings_decode_wherever_they_are)
{
    char err[256] = "";
    //  [1, 5, "", ""]: a CANCEL whose strings are both empty.
    cm_msg_t *msg = cm_msg_decode ("\x94\x01\x05\xa0\xa0", 5, err, sizeof err);
    cr_assert_not_null (msg, "%s", err);
    cr_assert_str_eq (cm_msg_request_id (msg), "");
    cr_assert_str_eq (cm_msg_reason (msg), "");
    cm_msg_destroy (&msg);
    //  [1, 1, "", "", 4]: a READY without names.
    msg = cm_msg_decode ("\x95\x01\x01\xa0\xa0\x04", 6, err, sizeof err);
    cr_assert_not_null (msg, "%s", err);
    cr_assert_str_eq (cm_msg_service (msg), "");
    cr_assert_eq (cm_msg_capacity (msg), 4);
    cm_msg_destroy (&msg);
}

Test (cm_msg, oversized_frame_is_refused)
{
    size_t size = CM_MSG_MAX_BYTES + 1;
    char *data = calloc (1, size);
    s_refused (data, size, "limit");
    free (data);
}

Test (cm_msg, random_bytes_never_crash)
{
    srand (42);
    char buf[64];
    for (int i = 0; i < 20000; i++) {
        size_t size = (size_t) (rand () % (int) sizeof buf);
        for (size_t j = 0; j < size; j++)
            buf[j] = (char) rand ();
        //  Bias toward plausible prefixes so decoding goes deep.
        if (size > 2 && i % 2) {
            buf[0] = (char) (0x90 | (rand () % 10));
            buf[1] = 1;
            buf[2] = (char) (1 + rand () % 7);
        }
        char err[256];
        cm_msg_t *msg = cm_msg_decode (buf, size, err, sizeof err);
        cm_msg_destroy (&msg);
    }
}

Test (cm_msg, type_names)
{
    cr_assert_str_eq (cm_msg_type_name (CM_MSG_FINAL), "FINAL");
    cr_assert_str_eq (cm_msg_type_name (0), "?");
    cr_assert_str_eq (cm_msg_type_name (99), "?");
}
