/*  test_chat_sse.c: the incremental server-sent-events parser: events come
    out whole however the bytes are cut, with every line ending the
    standard allows; what a chat stream does not use is skipped; limits and
    a callback that stops end the parse. */
#include <criterion/criterion.h>
#include "chat_sse.h"

typedef struct {
    char events[16][256]; //  data of each event
    size_t count;         //  events seen
    size_t stop_at;       //  return -1 on this event (1-based; 0: never)
} s_seen_t;

static int
s_on_event (const char *data, size_t size, void *arg)
{
    s_seen_t *seen = arg;
    cr_assert_eq (strlen (data), size, "data is NUL-terminated at size");
    cr_assert_lt (seen->count, 16);
    snprintf (seen->events[seen->count], sizeof seen->events[0], "%s", data);
    seen->count++;
    return seen->stop_at && seen->count == seen->stop_at ? -1 : 0;
}

Test (chat_sse, walkthrough)
{
    s_seen_t seen = {0};
    chat_sse_t *sse = chat_sse_new (s_on_event, &seen, 1024);
    //  An OpenAI stream: one data line per event, a blank line after each.
    const char *stream = "data: {\"choices\":[{\"delta\":{\"content\":\"Hi\"}}]}\n\n"
                         ": keep-alive comment\n\n"
                         "data: [DONE]\n\n";
    cr_assert_eq (chat_sse_feed (sse, stream, strlen (stream)), 0);
    cr_assert_eq (seen.count, 2);
    cr_assert_str_eq (seen.events[0], "{\"choices\":[{\"delta\":{\"content\":\"Hi\"}}]}");
    cr_assert_str_eq (seen.events[1], "[DONE]");
    cr_assert_eq (chat_sse_events (sse), 2);
    cr_assert_eq (chat_sse_finish (sse), 0);
    cr_assert_eq (chat_sse_status (sse), CHAT_SSE_OK);
    chat_sse_destroy (&sse);
    cr_assert_null (sse);
    chat_sse_destroy (&sse);
}

//  Every way to cut the stream in two gives the same events.
Test (chat_sse, any_cut_gives_the_same_events)
{
    const char *stream = "data: one\r\n\r\n"
                         "data:two\r\rdata: three\n"
                         "data:  four\n\n"
                         "event: ignored\nid: 7\nretry: 10\ndata\n\n"
                         "data: last\n\n";
    size_t size = strlen (stream);
    for (size_t cut = 0; cut <= size; cut++) {
        s_seen_t seen = {0};
        chat_sse_t *sse = chat_sse_new (s_on_event, &seen, 1024);
        cr_assert_eq (chat_sse_feed (sse, stream, cut), 0);
        cr_assert_eq (chat_sse_feed (sse, stream + cut, size - cut), 0);
        cr_assert_eq (chat_sse_finish (sse), 0);
        cr_assert_eq (seen.count, 5, "cut at %zu: %zu events", cut, seen.count);
        cr_assert_str_eq (seen.events[0], "one");
        cr_assert_str_eq (seen.events[1], "two");
        //  Data lines of one event are joined with \n; one space is dropped.
        cr_assert_str_eq (seen.events[2], "three\n four", "cut at %zu", cut);
        //  A "data" field without a colon is an empty data line.
        cr_assert_str_eq (seen.events[3], "");
        cr_assert_str_eq (seen.events[4], "last");
        chat_sse_destroy (&sse);
    }
}

Test (chat_sse, byte_by_byte)
{
    const char *stream = "data: a\r\n\r\ndata: b\r\n\r\n";
    s_seen_t seen = {0};
    chat_sse_t *sse = chat_sse_new (s_on_event, &seen, 64);
    for (size_t i = 0; stream[i]; i++)
        cr_assert_eq (chat_sse_feed (sse, stream + i, 1), 0);
    cr_assert_eq (seen.count, 2);
    cr_assert_str_eq (seen.events[1], "b");
    chat_sse_destroy (&sse);
}

Test (chat_sse, finish_dispatches_an_unterminated_event)
{
    s_seen_t seen = {0};
    chat_sse_t *sse = chat_sse_new (s_on_event, &seen, 64);
    cr_assert_eq (chat_sse_feed (sse, "data: x\n\ndata: tail", 19), 0);
    cr_assert_eq (seen.count, 1);
    cr_assert_eq (chat_sse_finish (sse), 0);
    cr_assert_eq (seen.count, 2);
    cr_assert_str_eq (seen.events[1], "tail");
    //  Nothing pending: nothing more.
    cr_assert_eq (chat_sse_finish (sse), 0);
    cr_assert_eq (seen.count, 2);
    chat_sse_destroy (&sse);
}

Test (chat_sse, a_line_over_the_limit_is_an_error)
{
    s_seen_t seen = {0};
    chat_sse_t *sse = chat_sse_new (s_on_event, &seen, 16);
    cr_assert_eq (chat_sse_feed (sse, "data: 0123456789", 16), 0);
    cr_assert_eq (chat_sse_feed (sse, "x", 1), -1);
    cr_assert_eq (chat_sse_status (sse), CHAT_SSE_TOO_LONG);
    //  Once stopped, it stays stopped.
    cr_assert_eq (chat_sse_feed (sse, "\n\n", 2), -1);
    cr_assert_eq (chat_sse_finish (sse), -1);
    cr_assert_eq (seen.count, 0);
    chat_sse_destroy (&sse);

    //  So is an event whose lines add up to more.
    sse = chat_sse_new (s_on_event, &seen, 16);
    cr_assert_eq (chat_sse_feed (sse, "data: 01234567\n", 15), 0);
    cr_assert_eq (chat_sse_feed (sse, "data: 01234567\n", 15), -1);
    cr_assert_eq (chat_sse_status (sse), CHAT_SSE_TOO_LONG);
    chat_sse_destroy (&sse);
}

Test (chat_sse, the_callback_can_stop_the_parse)
{
    s_seen_t seen = {.stop_at = 1};
    chat_sse_t *sse = chat_sse_new (s_on_event, &seen, 64);
    cr_assert_eq (chat_sse_feed (sse, "data: a\n\ndata: b\n\n", 18), -1);
    cr_assert_eq (chat_sse_status (sse), CHAT_SSE_STOPPED);
    cr_assert_eq (seen.count, 1, "nothing after the stop");
    chat_sse_destroy (&sse);
}
