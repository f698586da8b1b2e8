/*  test_cm_metrics_msg.c: the metrics channel's frames: each type round
    trips, and frames from outside that are malformed are refused with a
    reason, never trusted (random bytes included). */
#include <criterion/criterion.h>
#include "cm_metrics_msg.h"

static cm_metrics_msg_t *
s_round_trip (cm_metrics_msg_t *msg)
{
    char *data, err[256] = "";
    size_t size;
    cm_metrics_msg_encode (msg, &data, &size);
    cm_metrics_msg_t *copy = cm_metrics_msg_decode (data, size, err, sizeof err);
    cr_assert_not_null (copy, "decode: %s", err);
    free (data);
    return copy;
}

Test (cm_metrics_msg, walk_through)
{
    //  An instance reports its snapshot...
    cm_metrics_msg_t *report = cm_metrics_msg_new (CM_METRICS_MSG_REPORT);
    cm_metrics_msg_set_service (report, "chat");
    cm_metrics_msg_set_instance (report, "chat-host-42");
    cm_metrics_msg_set_id (report, 7);
    cm_metrics_msg_set_sent_ms (report, 1700000000123);
    cm_metrics_msg_set_body (report, json_pack ("{s:[]}", "families"));
    cm_metrics_msg_t *copy = s_round_trip (report);
    cr_assert_eq (cm_metrics_msg_type (copy), CM_METRICS_MSG_REPORT);
    cr_assert_str_eq (cm_metrics_msg_service (copy), "chat");
    cr_assert_str_eq (cm_metrics_msg_instance (copy), "chat-host-42");
    cr_assert_eq (cm_metrics_msg_id (copy), 7);
    cr_assert_eq (cm_metrics_msg_sent_ms (copy), 1700000000123);
    cr_assert (json_equal (cm_metrics_msg_body (copy), cm_metrics_msg_body (report)));
    cm_metrics_msg_destroy (&copy);
    cm_metrics_msg_destroy (&report);
    cr_assert_null (report);
    //  ...the gateway asks...
    cm_metrics_msg_t *query = cm_metrics_msg_new (CM_METRICS_MSG_QUERY);
    cm_metrics_msg_set_id (query, 123456789012ULL);
    copy = s_round_trip (query);
    cr_assert_eq (cm_metrics_msg_type (copy), CM_METRICS_MSG_QUERY);
    cr_assert_eq (cm_metrics_msg_id (copy), 123456789012ULL);
    cr_assert_null (cm_metrics_msg_body (copy));
    cm_metrics_msg_destroy (&copy);
    cm_metrics_msg_destroy (&query);
    //  ...and the supervisor answers with the same id.
    cm_metrics_msg_t *aggregate = cm_metrics_msg_new (CM_METRICS_MSG_AGGREGATE);
    cm_metrics_msg_set_id (aggregate, 123456789012ULL);
    cm_metrics_msg_set_body (aggregate, json_pack ("{s:{}}", "services"));
    copy = s_round_trip (aggregate);
    cr_assert_eq (cm_metrics_msg_id (copy), 123456789012ULL);
    cr_assert_not_null (json_object_get (cm_metrics_msg_body (copy), "services"));
    cm_metrics_msg_destroy (&copy);
    cm_metrics_msg_destroy (&aggregate);
}

Test (cm_metrics_msg, negative_and_large_times_survive)
{
    int64_t times[] = {0, -1, -200, -70000, -5000000000LL, INT64_MIN, INT64_MAX, 200};
    for (size_t i = 0; i < sizeof times / sizeof times[0]; i++) {
        cm_metrics_msg_t *report = cm_metrics_msg_new (CM_METRICS_MSG_REPORT);
        cm_metrics_msg_set_service (report, "s");
        cm_metrics_msg_set_instance (report, "i");
        cm_metrics_msg_set_sent_ms (report, times[i]);
        cm_metrics_msg_t *copy = s_round_trip (report);
        cr_assert_eq (cm_metrics_msg_sent_ms (copy), times[i]);
        cm_metrics_msg_destroy (&copy);
        cm_metrics_msg_destroy (&report);
    }
}

Test (cm_metrics_msg, malformed_frames_are_refused_with_a_reason)
{
    struct {
        const char *bytes;
        size_t size;
    } bad[] = {
        {"", 0},
        {"\x92\x01\x02", 3},                          //  too few items
        {"\x93\x02\x02\x01", 4},                      //  version 2
        {"\x93\x01\x09\x01", 4},                      //  unknown type
        {"\x93\x01\x02\xa1x", 5},                     //  QUERY id is a string
        {"\x93\x01\x02\x01\x00", 5},                  //  trailing byte
        {"\x94\x01\x03\x01\xa2[]", 6},                //  AGGREGATE body not an object
        {"\x94\x01\x03\x01\xa3{x}", 7},               //  body not JSON
        {"\x97\x01\x01\xa0\xa1i\x01\x01\xa2{}", 11},  //  empty service name
        {"\x97\x01\x01\xa1s\xa1i\x01\x01\xa5{}", 11}, //  string longer than the frame
        {"\xdd\xff\xff\xff\xff", 5},                  //  array32 of 4 billion items
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char err[256] = "";
        cm_metrics_msg_t *msg =
            cm_metrics_msg_decode (bad[i].bytes, bad[i].size, err, sizeof err);
        cr_assert_null (msg, "frame %zu was accepted", i);
        cr_assert_neq (err[0], 0, "frame %zu: no reason", i);
    }
}

Test (cm_metrics_msg, random_bytes_never_crash)
{
    unsigned seed = 12345;
    char frame[64], err[256];
    for (int n = 0; n < 20000; n++) {
        size_t size = (size_t) (rand_r (&seed) % (int) sizeof frame);
        for (size_t i = 0; i < size; i++)
            frame[i] = (char) rand_r (&seed);
        //  Half of them with a plausible start, to get further in.
        if (size > 2 && n % 2) {
            frame[0] = (char) (0x93 + rand_r (&seed) % 5);
            frame[1] = 1;
            frame[2] = (char) (1 + rand_r (&seed) % 3);
        }
        cm_metrics_msg_t *msg = cm_metrics_msg_decode (frame, size, err, sizeof err);
        cm_metrics_msg_destroy (&msg);
    }
}
