/*  test_chat_openai.c: the "openai" provider against tests/fake_llm, a
    real OpenAI-compatible HTTP server: tokens arrive as the upstream sends
    them; the workspace's model and temperature reach it; every way an
    upstream fails ends as FAILED or REJECTED with a clear message; the time
    limits hold; a call that is cancelled while the upstream is silent
    closes the upstream's connection at once; bad settings are refused,
    naming the variable. */
#include <criterion/criterion.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>
#include "chat_openai.h"
#include "fake_llm_client.h"

TestSuite (chat_openai, .init = fake_llm_suite_start, .fini = fake_llm_suite_stop,
           .timeout = 30);

static const chat_message_t s_messages[] = {
    {CHAT_ROLE_SYSTEM, "You are terse."},
    {CHAT_ROLE_USER, "Say five words."},
};

static chat_provider_t *
s_provider (const char *model, int64_t first_token_ms, int64_t total_ms)
{
    chat_openai_config_t config = {
        .base_url = fake_llm_suite.base_url,
        .api_key = "sk-test-key",
        .model = model,
        .connect_timeout_ms = 2000,
        .first_token_timeout_ms = first_token_ms,
        .timeout_ms = total_ms,
    };
    char err[256] = "";
    chat_provider_t *provider = chat_openai_new (&config, err, sizeof err);
    cr_assert_not_null (provider, "%s", err);
    return provider;
}

typedef struct {
    char text[1024]; //  tokens so far
    int tokens;      //  how many
    int stop_after;  //  say stop when this many came (0: never)
    int64_t last_at; //  when the last came (ms)
} s_sink_t;

static chat_token_action_t
s_collect (const char *token, size_t size, void *arg)
{
    s_sink_t *sink = arg;
    if (sink->stop_after && sink->tokens == sink->stop_after)
        return CHAT_TOKEN_STOP;
    strncat (sink->text, token, size);
    sink->tokens++;
    sink->last_at = fake_llm_now_ms ();
    return CHAT_TOKEN_CONTINUE;
}

Test (chat_openai, walkthrough)
{
    chat_provider_t *provider = s_provider ("fake-default", 5000, 10000);
    cr_assert_str_eq (chat_provider_name (provider), "openai");

    //  Streaming: one callback per token the upstream sent.
    fake_llm_control (&fake_llm_suite, "{\"tokens\":5,\"pace_ms\":20}");
    chat_request_t request = {.messages = s_messages, .count = 2, .temperature = -1};
    s_sink_t sink = {0};
    chat_metrics_t metrics;
    char err[256] = "";
    cr_assert_eq (chat_provider_stream (provider, &request, s_collect, &sink, &metrics,
                                        err, sizeof err),
                  CHAT_PROVIDER_DONE, "%s", err);
    cr_assert_eq (sink.tokens, 5);
    cr_assert_str_eq (sink.text, "tok1 tok2 tok3 tok4 tok5");
    //  The upstream's usage is the count.
    cr_assert_eq (metrics.prompt_tokens, 7);
    cr_assert_eq (metrics.completion_tokens, 5);
    cr_assert_eq (metrics.total_tokens, 12);
    cr_assert_gt (metrics.duration, 0.05);
    cr_assert_gt (metrics.output_tps, 0);

    //  What the upstream was asked: the messages, streamed, with usage, the
    //  configured model, no temperature; the key as a bearer token.
    json_t *stats = fake_llm_stats (&fake_llm_suite);
    json_t *asked = json_object_get (stats, "last_request");
    cr_assert (json_is_true (json_object_get (asked, "stream")));
    cr_assert (json_is_true (
        json_object_get (json_object_get (asked, "stream_options"), "include_usage")));
    cr_assert_str_eq (json_string_value (json_object_get (asked, "model")),
                      "fake-default");
    cr_assert_null (json_object_get (asked, "temperature"));
    json_t *messages = json_object_get (asked, "messages");
    cr_assert_eq (json_array_size (messages), 2);
    cr_assert_str_eq (
        json_string_value (json_object_get (json_array_get (messages, 0), "role")),
        "system");
    cr_assert_str_eq (
        json_string_value (json_object_get (json_array_get (messages, 1), "content")),
        "Say five words.");
    cr_assert_str_eq (json_string_value (json_object_get (stats, "last_authorization")),
                      "Bearer sk-test-key");
    json_decref (stats);

    //  All at once: the same call, collected.
    char *text = NULL;
    cr_assert_eq (
        chat_provider_complete (provider, &request, &text, &metrics, err, sizeof err),
        CHAT_PROVIDER_DONE, "%s", err);
    cr_assert_str_eq (text, "tok1 tok2 tok3 tok4 tok5");
    free (text);
    chat_provider_destroy (&provider);
    cr_assert_null (provider);
}

//  Note when the first token came.
static int64_t s_first_at;

static chat_token_action_t
s_note_first (const char *token, size_t size, void *arg)
{
    (void) token, (void) size, (void) arg;
    if (!s_first_at)
        s_first_at = fake_llm_now_ms ();
    return CHAT_TOKEN_CONTINUE;
}

Test (chat_openai, the_first_token_is_not_held_back)
{
    chat_provider_t *provider = s_provider (NULL, 5000, 10000);
    fake_llm_control (&fake_llm_suite, "{\"tokens\":2,\"pace_ms\":400}");
    chat_request_t request = {.messages = s_messages, .count = 2, .temperature = -1};
    chat_metrics_t metrics;
    char err[256];
    s_first_at = 0;
    int64_t start = fake_llm_now_ms ();
    cr_assert_eq (chat_provider_stream (provider, &request, s_note_first, NULL, &metrics,
                                        err, sizeof err),
                  CHAT_PROVIDER_DONE, "%s", err);
    int64_t end = fake_llm_now_ms ();
    //  Token 1 comes at ~400 ms, token 2 at ~800 ms.
    cr_assert_lt (s_first_at - start, 700, "first token after %lld ms",
                  (long long) (s_first_at - start));
    cr_assert_gt (end - s_first_at, 250);
    chat_provider_destroy (&provider);
}

Test (chat_openai, the_workspace_model_and_temperature_win)
{
    chat_provider_t *provider = s_provider ("fake-default", 5000, 10000);
    chat_request_t request = {
        .messages = s_messages, .count = 2, .model = "ws-model", .temperature = 0.25};
    char *text = NULL;
    chat_metrics_t metrics;
    char err[256];
    cr_assert_eq (
        chat_provider_complete (provider, &request, &text, &metrics, err, sizeof err),
        CHAT_PROVIDER_DONE);
    free (text);
    json_t *stats = fake_llm_stats (&fake_llm_suite);
    json_t *asked = json_object_get (stats, "last_request");
    cr_assert_str_eq (json_string_value (json_object_get (asked, "model")), "ws-model");
    cr_assert_float_eq (json_number_value (json_object_get (asked, "temperature")), 0.25,
                        1e-9);
    json_decref (stats);
    chat_provider_destroy (&provider);

    //  No model anywhere: none is sent (llama.cpp and vLLM serve their one).
    provider = s_provider (NULL, 5000, 10000);
    request.model = NULL;
    cr_assert_eq (
        chat_provider_complete (provider, &request, &text, &metrics, err, sizeof err),
        CHAT_PROVIDER_DONE);
    free (text);
    stats = fake_llm_stats (&fake_llm_suite);
    cr_assert_null (json_object_get (json_object_get (stats, "last_request"), "model"));
    json_decref (stats);
    chat_provider_destroy (&provider);
}

//  One call in the fake's current mode: its result, message in err.
static chat_provider_result_t
s_call (chat_provider_t *provider, char *err, size_t errlen)
{
    chat_request_t request = {.messages = s_messages, .count = 2, .temperature = -1};
    s_sink_t sink = {0};
    chat_metrics_t metrics;
    *err = 0;
    return chat_provider_stream (provider, &request, s_collect, &sink, &metrics, err,
                                 errlen);
}

Test (chat_openai, upstream_failures_are_failed_with_a_clear_message)
{
    chat_provider_t *provider = s_provider (NULL, 5000, 10000);
    char err[256];

    fake_llm_control (&fake_llm_suite, "{\"mode\":\"fail500\"}");
    cr_assert_eq (s_call (provider, err, sizeof err), CHAT_PROVIDER_FAILED);
    cr_assert_str_eq (err, "The LLM provider failed (HTTP 500): The fake upstream failed "
                           "on purpose.");

    fake_llm_control (&fake_llm_suite, "{\"mode\":\"fail429\"}");
    cr_assert_eq (s_call (provider, err, sizeof err), CHAT_PROVIDER_FAILED);
    cr_assert_str_eq (err, "The LLM provider is rate limiting us (HTTP 429): Rate limit "
                           "reached for fake-model.");

    fake_llm_control (&fake_llm_suite, "{\"mode\":\"malformed\"}");
    cr_assert_eq (s_call (provider, err, sizeof err), CHAT_PROVIDER_FAILED);
    cr_assert (strstr (err, "malformed stream"), "%s", err);

    //  The request's own fault: REJECTED, which the breaker does not count.
    fake_llm_control (&fake_llm_suite, "{\"mode\":\"bad_request\"}");
    cr_assert_eq (s_call (provider, err, sizeof err), CHAT_PROVIDER_REJECTED);
    cr_assert_str_eq (err, "The LLM provider refused the request (HTTP 400): This "
                           "model's maximum context length is 8 tokens (fake).");
    chat_provider_destroy (&provider);
}

Test (chat_openai, an_upstream_that_refuses_connections_is_failed)
{
    //  A port nobody listens on.
    int fd = socket (AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in addr = {.sin_family = AF_INET,
                               .sin_addr.s_addr = htonl (INADDR_LOOPBACK)};
    cr_assert_eq (bind (fd, (struct sockaddr *) &addr, sizeof addr), 0);
    socklen_t len = sizeof addr;
    getsockname (fd, (struct sockaddr *) &addr, &len);
    close (fd);
    char url[64];
    snprintf (url, sizeof url, "http://127.0.0.1:%d/v1", ntohs (addr.sin_port));
    chat_openai_config_t config = {
        .base_url = url,
        .connect_timeout_ms = 2000,
        .first_token_timeout_ms = 2000,
        .timeout_ms = 2000,
    };
    char err[256];
    chat_provider_t *provider = chat_openai_new (&config, err, sizeof err);
    cr_assert_not_null (provider);
    cr_assert_eq (s_call (provider, err, sizeof err), CHAT_PROVIDER_FAILED);
    cr_assert (strstr (err, "The LLM provider cannot be reached"), "%s", err);
    cr_assert (strstr (err, "refused"), "%s", err);
    chat_provider_destroy (&provider);
}

Test (chat_openai, a_silent_upstream_fails_at_the_first_token_limit)
{
    chat_provider_t *provider = s_provider (NULL, 300, 10000);
    fake_llm_control (&fake_llm_suite, "{\"mode\":\"hang\",\"reset\":true}");
    char err[256];
    int64_t start = fake_llm_now_ms ();
    cr_assert_eq (s_call (provider, err, sizeof err), CHAT_PROVIDER_FAILED);
    int64_t took = fake_llm_now_ms () - start;
    cr_assert_str_eq (err, "The LLM provider sent no token within 300 ms "
                           "(LLM_FIRST_TOKEN_TIMEOUT_MS)");
    cr_assert (took >= 300 && took < 1000, "took %lld ms", (long long) took);
    //  And the upstream saw us leave (its note of it may lag a little).
    int64_t until = fake_llm_now_ms () + 2000;
    while (fake_llm_stat (&fake_llm_suite, "disconnects") == 0 &&
           fake_llm_now_ms () < until)
        usleep (5000);
    cr_assert_eq (fake_llm_stat (&fake_llm_suite, "disconnects"), 1);
    chat_provider_destroy (&provider);
}

Test (chat_openai, a_slow_answer_fails_at_the_total_limit)
{
    chat_provider_t *provider = s_provider (NULL, 5000, 400);
    fake_llm_control (&fake_llm_suite, "{\"tokens\":100,\"pace_ms\":50}");
    char err[256];
    int64_t start = fake_llm_now_ms ();
    cr_assert_eq (s_call (provider, err, sizeof err), CHAT_PROVIDER_FAILED);
    int64_t took = fake_llm_now_ms () - start;
    cr_assert_str_eq (err, "The LLM provider did not finish within 400 ms "
                           "(LLM_TIMEOUT_MS)");
    cr_assert (took >= 400 && took < 1000, "took %lld ms", (long long) took);
    chat_provider_destroy (&provider);
}

//  Cancelled from this moment on (ms), as a gone client would be.
static int64_t s_cancel_at;

static bool
s_cancelled (void *arg)
{
    (void) arg;
    return fake_llm_now_ms () >= s_cancel_at;
}

static bool
s_disconnect_seen (void)
{
    return fake_llm_stat (&fake_llm_suite, "disconnects") > 0;
}

Test (chat_openai, cancel_while_the_upstream_is_silent_closes_it_at_once)
{
    chat_provider_t *provider = s_provider (NULL, 60000, 60000);
    fake_llm_control (&fake_llm_suite, "{\"mode\":\"hang\",\"reset\":true}");
    chat_request_t request = {
        .messages = s_messages, .count = 2, .temperature = -1, .cancelled = s_cancelled};
    s_cancel_at = fake_llm_now_ms () + 300;
    char *text = NULL;
    chat_metrics_t metrics;
    char err[256] = "";
    cr_assert_eq (
        chat_provider_complete (provider, &request, &text, &metrics, err, sizeof err),
        CHAT_PROVIDER_STOPPED);
    int64_t returned = fake_llm_now_ms () - s_cancel_at;
    cr_assert_null (text);
    cr_assert_str_eq (err, "", "a stop is no error");
    cr_assert_lt (returned, 100, "returned %lld ms after the cancel",
                  (long long) returned);
    //  The fake records the hang-up when it happens; ask until it says so.
    int64_t until = fake_llm_now_ms () + 2000;
    while (!s_disconnect_seen () && fake_llm_now_ms () < until)
        usleep (5000);
    json_t *stats = fake_llm_stats (&fake_llm_suite);
    cr_assert_eq (json_integer_value (json_object_get (stats, "disconnects")), 1);
    int64_t seen = json_integer_value (json_object_get (stats, "last_disconnect_ms"));
    json_decref (stats);
    cr_assert_lt (seen - s_cancel_at, 200, "the upstream saw the hang-up %lld ms late",
                  (long long) (seen - s_cancel_at));
    chat_provider_destroy (&provider);
}

Test (chat_openai, a_callback_stop_ends_the_call)
{
    chat_provider_t *provider = s_provider (NULL, 5000, 10000);
    fake_llm_control (&fake_llm_suite, "{\"tokens\":50,\"pace_ms\":20,\"reset\":true}");
    chat_request_t request = {.messages = s_messages, .count = 2, .temperature = -1};
    s_sink_t sink = {.stop_after = 2};
    chat_metrics_t metrics;
    char err[256] = "";
    cr_assert_eq (chat_provider_stream (provider, &request, s_collect, &sink, &metrics,
                                        err, sizeof err),
                  CHAT_PROVIDER_STOPPED);
    cr_assert_str_eq (sink.text, "tok1 tok2");
    cr_assert_eq (metrics.completion_tokens, 2, "what was delivered");
    int64_t until = fake_llm_now_ms () + 2000;
    while (!s_disconnect_seen () && fake_llm_now_ms () < until)
        usleep (5000);
    cr_assert_eq (fake_llm_stat (&fake_llm_suite, "disconnects"), 1);
    chat_provider_destroy (&provider);
}

Test (chat_openai, bad_settings_name_the_variable, .init = NULL, .fini = NULL)
{
    struct {
        const char *url;
        const char *needle;
    } cases[] = {
        {NULL, "LLM_BASE_URL: required when LLM_PROVIDER=openai"},
        {"", "LLM_BASE_URL: required"},
        {"localhost:11434/v1", "LLM_BASE_URL: "},
        {"ftp://example.com/v1", "is not an http:// or https:// URL"},
        {"http://", "LLM_BASE_URL: "},
        {"http://127.0.0.1:11434/v1?x=1", "has a query or fragment"},
        {"not a url", "LLM_BASE_URL: "},
        {"http:///v1", "LLM_BASE_URL: 'http:///v1' has no host"},
        {"http://127.0.0.1:0/v1", "LLM_BASE_URL: 'http://127.0.0.1:0/v1' has port 0"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        chat_openai_config_t config = {.base_url = cases[i].url,
                                       .connect_timeout_ms = 1,
                                       .first_token_timeout_ms = 1,
                                       .timeout_ms = 1};
        char err[256] = "";
        cr_assert_eq (chat_openai_config_check (&config, err, sizeof err), -1, "%s",
                      cases[i].url);
        cr_assert (strstr (err, cases[i].needle), "%s: %s", cases[i].url, err);
        cr_assert_null (chat_openai_new (&config, err, sizeof err));
    }
    chat_openai_config_t config = {.base_url = "https://api.openai.com/v1/",
                                   .api_key = "bad\nkey",
                                   .connect_timeout_ms = 1,
                                   .first_token_timeout_ms = 1,
                                   .timeout_ms = 1};
    char err[256];
    cr_assert_eq (chat_openai_config_check (&config, err, sizeof err), -1);
    cr_assert (strstr (err, "LLM_API_KEY"), "%s", err);
    config.api_key = "sk-fine";
    cr_assert_eq (chat_openai_config_check (&config, err, sizeof err), 0, "%s", err);
    //  The model goes into the JSON body and the logs: no control character.
    const char *bad_models[] = {"llama3\n", "a\rb", "tab\tbed", "del\x7f"};
    for (size_t i = 0; i < sizeof bad_models / sizeof *bad_models; i++) {
        config.model = bad_models[i];
        cr_assert_eq (chat_openai_config_check (&config, err, sizeof err), -1, "%s",
                      bad_models[i]);
        cr_assert (strstr (err, "LLM_MODEL"), "%s", err);
    }
    config.model = "llama3.2:latest";
    cr_assert_eq (chat_openai_config_check (&config, err, sizeof err), 0, "%s", err);
    //  The endpoint: one slash between, whatever the base ends with.
    char *endpoint = chat_openai_endpoint (config.base_url);
    cr_assert_str_eq (endpoint, "https://api.openai.com/v1/chat/completions");
    free (endpoint);
    endpoint = chat_openai_endpoint ("http://127.0.0.1:8080/v1");
    cr_assert_str_eq (endpoint, "http://127.0.0.1:8080/v1/chat/completions");
    free (endpoint);
}
