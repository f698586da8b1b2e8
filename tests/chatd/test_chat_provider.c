/*  test_chat_provider.c: the builtin offline responder: honest, deterministic,
    streams tokens that add up to the whole text, stops when told to. */
#include <criterion/criterion.h>
#include "chat_provider.h"

static const chat_message_t s_messages[] = {
    {CHAT_ROLE_SYSTEM, "You are helpful."},
    {CHAT_ROLE_USER, "What is the capital of France?"},
    {CHAT_ROLE_ASSISTANT, "Paris."},
    {CHAT_ROLE_USER, "And   of\nItaly?"},
};
static const chat_request_t s_request = {
    .messages = s_messages, .count = 4, .temperature = -1};

typedef struct {
    char text[4096]; //  tokens concatenated
    size_t size;     //  bytes in text
    int tokens;      //  tokens received
    int stop_after;  //  say stop at this token (0: never)
} s_sink_t;

static chat_token_action_t
s_collect (const char *token, size_t size, void *arg)
{
    s_sink_t *sink = (s_sink_t *) arg;
    if (sink->stop_after && sink->tokens == sink->stop_after)
        return CHAT_TOKEN_STOP;
    cr_assert (size > 0);
    cr_assert_lt (sink->size + size, sizeof sink->text);
    memcpy (sink->text + sink->size, token, size);
    sink->size += size;
    sink->text[sink->size] = 0;
    sink->tokens++;
    return CHAT_TOKEN_CONTINUE;
}

Test (chat_provider, walkthrough)
{
    chat_provider_t *provider = chat_provider_new_builtin (0);
    cr_assert_str_eq (chat_provider_name (provider), "builtin");

    //  All at once: an honest answer about the last user message.
    chat_metrics_t metrics;
    char err[256] = "";
    char *text = NULL;
    cr_assert_eq (
        chat_provider_complete (provider, &s_request, &text, &metrics, err, sizeof err),
        CHAT_PROVIDER_DONE);
    cr_assert_not_null (text);
    cr_assert (strstr (text, "llmrt's built-in offline responder"), "text: %s", text);
    cr_assert (strstr (text, "no language model was called"));
    cr_assert (strstr (text, "\"And of Italy?\""), "blanks collapsed in the quote: %s",
               text);
    cr_assert (strstr (text, "3 words"));
    cr_assert (strstr (text, "1 earlier turn "), "text: %s", text);
    cr_assert_eq (metrics.completion_tokens, chat_provider_count_tokens (text));
    cr_assert_eq (metrics.prompt_tokens, 3 + 6 + 1 + 3);
    cr_assert_eq (metrics.total_tokens,
                  metrics.prompt_tokens + metrics.completion_tokens);
    cr_assert_geq (metrics.duration, 0);
    cr_assert_geq (metrics.output_tps, 0);

    //  Token by token: the same text.
    s_sink_t sink = {0};
    cr_assert_eq (chat_provider_stream (provider, &s_request, s_collect, &sink, &metrics,
                                        err, sizeof err),
                  CHAT_PROVIDER_DONE);
    cr_assert_str_eq (sink.text, text);
    cr_assert_eq (sink.tokens, metrics.completion_tokens);
    free (text);
    chat_provider_destroy (&provider);
    cr_assert_null (provider);
    chat_provider_destroy (&provider);
}

Test (chat_provider, builtin_is_deterministic)
{
    chat_provider_t *one = chat_provider_new_builtin (0);
    chat_provider_t *two = chat_provider_new_builtin (0);
    chat_metrics_t m1, m2;
    char err[64];
    char *a = NULL;
    cr_assert_eq (chat_provider_complete (one, &s_request, &a, &m1, err, sizeof err),
                  CHAT_PROVIDER_DONE);
    char *b = NULL;
    cr_assert_eq (chat_provider_complete (two, &s_request, &b, &m2, err, sizeof err),
                  CHAT_PROVIDER_DONE);
    char *c = NULL;
    cr_assert_eq (chat_provider_complete (one, &s_request, &c, &m2, err, sizeof err),
                  CHAT_PROVIDER_DONE);
    cr_assert_str_eq (a, b);
    cr_assert_str_eq (a, c);
    cr_assert_eq (m1.completion_tokens, m2.completion_tokens);
    cr_assert_eq (m1.prompt_tokens, m2.prompt_tokens);

    //  A different message gives a different answer.
    chat_message_t other[] = {{CHAT_ROLE_USER, "What is the capital of Spain?"}};
    chat_request_t request = {.messages = other, .count = 1, .temperature = -1};
    char *d = NULL;
    cr_assert_eq (chat_provider_complete (one, &request, &d, &m1, err, sizeof err),
                  CHAT_PROVIDER_DONE);
    cr_assert_str_neq (a, d);
    cr_assert (strstr (d, "0 earlier turns"));
    free (a);
    free (b);
    free (c);
    free (d);
    chat_provider_destroy (&one);
    chat_provider_destroy (&two);
}

Test (chat_provider, stream_stops_when_told)
{
    chat_provider_t *provider = chat_provider_new_builtin (0);
    chat_metrics_t metrics;
    char err[64];
    s_sink_t sink = {.stop_after = 5};
    cr_assert_eq (chat_provider_stream (provider, &s_request, s_collect, &sink, &metrics,
                                        err, sizeof err),
                  CHAT_PROVIDER_STOPPED);
    cr_assert_eq (sink.tokens, 5);
    cr_assert_eq (metrics.completion_tokens, 5, "the refused token is not counted");
    char *full = NULL;
    cr_assert_eq (
        chat_provider_complete (provider, &s_request, &full, &metrics, err, sizeof err),
        CHAT_PROVIDER_DONE);
    cr_assert (!strncmp (full, sink.text, sink.size), "the partial text is a prefix");
    cr_assert_lt (sink.size, strlen (full));
    free (full);
    chat_provider_destroy (&provider);
}

Test (chat_provider, stream_is_paced_by_token_delay)
{
    //  Only a lower bound: a paced stream cannot be faster than its pauses.
    chat_provider_t *provider = chat_provider_new_builtin (5);
    chat_metrics_t metrics;
    char err[64];
    s_sink_t sink = {.stop_after = 4};
    int64_t started = cm_clock_mono_ms ();
    chat_provider_stream (provider, &s_request, s_collect, &sink, &metrics, err,
                          sizeof err);
    cr_assert_geq (cm_clock_mono_ms () - started, 5 * 4);
    cr_assert_geq (metrics.duration, 0.020);

    //  complete never waits: it is what the non-streaming route uses.
    char *text = NULL;
    cr_assert_eq (
        chat_provider_complete (provider, &s_request, &text, &metrics, err, sizeof err),
        CHAT_PROVIDER_DONE);
    cr_assert_lt (metrics.duration, 5.0 * (double) metrics.completion_tokens / 1000.0);
    free (text);
    chat_provider_destroy (&provider);
}

Test (chat_provider, long_and_unicode_messages_stay_valid_utf8)
{
    char message[2048] = "";
    for (int i = 0; i < 200; i++)
        strcat (message, "\xE6\x97\xA5 "); //  a CJK character and a space
    chat_message_t messages[] = {{CHAT_ROLE_USER, message}};
    chat_request_t request = {.messages = messages, .count = 1, .temperature = -1};
    chat_provider_t *provider = chat_provider_new_builtin (0);
    chat_metrics_t metrics;
    char err[64];
    char *text = NULL;
    cr_assert_eq (
        chat_provider_complete (provider, &request, &text, &metrics, err, sizeof err),
        CHAT_PROVIDER_DONE);
    cr_assert (strstr (text, "200 words and 400 characters"), "text: %s", text);
    cr_assert (strstr (text, "\xE2\x80\xA6\""),
               "a long message is shortened with an ellipsis");
    //  Every token is whole UTF-8: no token starts with a continuation byte.
    for (const char *p = text; *p; p += chat_provider_token_length (p))
        cr_assert_neq ((unsigned char) *p & 0xC0, 0x80);
    free (text);

    chat_message_t empty[] = {{CHAT_ROLE_SYSTEM, "sys"}};
    request = (chat_request_t){.messages = empty, .count = 1, .temperature = -1};
    cr_assert_eq (
        chat_provider_complete (provider, &request, &text, &metrics, err, sizeof err),
        CHAT_PROVIDER_DONE);
    cr_assert (strstr (text, "0 words"));
    free (text);
    chat_provider_destroy (&provider);
}

Test (chat_provider, tokenizer_rule)
{
    cr_assert_eq (chat_provider_token_length ("Hello world"), 6);
    cr_assert_eq (chat_provider_token_length ("world"), 5);
    cr_assert_eq (chat_provider_token_length (""), 0);
    cr_assert_eq (chat_provider_token_length ("  lead"), 2);
    cr_assert_eq (chat_provider_count_tokens ("one two  three\n"), 3);
    cr_assert_eq (chat_provider_count_tokens (""), 0);
}

//  The one-pass count is the number of steps token_length takes, for
//  blanks anywhere (leading, trailing, runs, only blanks) and UTF-8.
Test (chat_provider, count_tokens_matches_token_length)
{
    const char *texts[] = {
        "x",         " ",      "  lead",         "trail  ",
        "\t\n\r ",   "a b",    "a  \t b\n\nc  ", "caf\xC3\xA9 na\xC3\xAFve",
        " a b c d ", "\n\nx\n"};
    for (size_t i = 0; i < sizeof texts / sizeof *texts; i++) {
        int64_t steps = 0;
        for (const char *p = texts[i]; *p; p += chat_provider_token_length (p))
            steps++;
        cr_assert_eq (chat_provider_count_tokens (texts[i]), steps, "text %zu", i);
    }
    cr_assert_eq (chat_provider_count_tokens ("  lead"), 2);
    cr_assert_eq (chat_provider_count_tokens (" "), 1);
}
