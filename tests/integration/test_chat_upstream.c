/*  test_chat_upstream.c: the suite with a real LLM upstream. Each test
    starts tests/fake_llm (an OpenAI-compatible server) on a free port and
    the suite with LLM_PROVIDER=openai pointing at it, one chatd replica,
    then talks HTTP to the gateway: answers come from the upstream; the
    circuit breaker opens on upstream failures and a probe closes it; the
    queue bounds what reaches the upstream; a client that leaves mid-stream
    closes the upstream's connection within 200 ms, frees its slot and
    keeps its partial answer; a silent upstream ends in an abort. */
#include <criterion/criterion.h>
#include <curl/curl.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <sys/wait.h>
#include <unistd.h>
#include "fake_llm_client.h"
#include "it_harness.h"

static it_suite_t s_suite;
static fake_llm_t s_fake;

//  Environment strings handed to putenv must outlive the suite's start.
static char s_env[24][256];

static bool
s_ready (void *arg)
{
    (void) arg;
    char url[128];
    snprintf (url, sizeof url, "%s/api/health/ready", s_suite.base);
    it_response_t r;
    it_http ("GET", url, NULL, false, &r);
    bool ok = r.status == 200;
    it_response_free (&r);
    return ok;
}

//  The fake, then the suite pointed at it with one chatd and these extra
//  settings (NULL-terminated).
static void
s_start (const char *const *extra)
{
    fake_llm_start (&s_fake, NULL);
    const char *env[24];
    size_t n = 0;
    snprintf (s_env[n], sizeof s_env[n], "LLM_BASE_URL=%s", s_fake.base_url);
    env[n] = s_env[n], n++;
    env[n++] = "LLM_PROVIDER=openai";
    env[n++] = "LLM_API_KEY=sk-integration";
    env[n++] = "LLM_MODEL=fake-default";
    env[n++] = "CHAT_REPLICAS=1";
    for (size_t i = 0; extra && extra[i] && n < 23; i++)
        env[n++] = extra[i];
    env[n] = NULL;
    //  The harness's ready wait wants two chat replicas: wait for ready here.
    it_suite_start_live (&s_suite, env);
    cr_assert (it_wait (s_ready, NULL, 30000), "the suite never became ready");
}

static void
s_stop (void)
{
    it_suite_stop (&s_suite);
    fake_llm_stop (&s_fake);
}

static json_t *
s_chat (const char *slug, const char *message, long *status, char *headers,
        size_t headers_size)
{
    char url[256], path[128], body[256];
    snprintf (path, sizeof path, "/api/v1/workspace/%s/chat", slug);
    it_url (&s_suite, url, sizeof url, path);
    snprintf (body, sizeof body, "{\"message\":\"%s\"}", message);
    it_response_t r;
    it_http ("POST", url, body, true, &r);
    *status = r.status;
    if (headers)
        snprintf (headers, headers_size, "%s", r.headers);
    json_t *json = it_json (&r);
    it_response_free (&r);
    return json;
}

//  --- SSE client ------------------------------------------------------------------

//  A stream-chat to this workspace (it_stream_t).
static void
s_stream_init (it_stream_t *stream, const char *slug, int close_after)
{
    char path[128], url[256];
    snprintf (path, sizeof path, "/api/v1/workspace/%s/stream-chat", slug);
    it_url (&s_suite, url, sizeof url, path);
    it_stream_init (stream, url, "{\"message\":\"tell me a story\"}", close_after);
}

//  The answer's text: the token chunks' textResponse, concatenated.
static char *
s_stream_text (json_t *events)
{
    size_t size = 1;
    char *text = calloc (1, size);
    for (size_t i = 0; i < json_array_size (events); i++) {
        json_t *event = json_array_get (events, i);
        if (strcmp (it_str (event, "type"), "textResponseChunk"))
            continue;
        const char *token = it_str (event, "textResponse");
        size += strlen (token ? token : "");
        text = realloc (text, size);
        strcat (text, token ? token : "");
    }
    return text;
}

//  --- tests -----------------------------------------------------------------------

Test (chat_upstream, answers_come_from_the_upstream, .timeout = 120)
{
    s_start (NULL);
    fake_llm_control (&s_fake, "{\"tokens\":6,\"pace_ms\":10}");
    it_create_workspace (&s_suite, "{\"name\":\"Upstream\",\"openAiTemp\":0.4,"
                                   "\"chatModel\":\"ws-model\"}");
    it_create_workspace (&s_suite, "{\"name\":\"Plain\"}");

    //  Non-streaming: the upstream's words, its usage as the metrics.
    long status;
    json_t *reply = s_chat ("upstream", "hello", &status, NULL, 0);
    cr_assert_eq (status, 200);
    cr_assert_str_eq (it_str (reply, "type"), "textResponse");
    cr_assert_str_eq (it_str (reply, "textResponse"), "tok1 tok2 tok3 tok4 tok5 tok6");
    cr_assert_eq (json_integer_value (json_object_get (json_object_get (reply, "metrics"),
                                                       "completion_tokens")),
                  6);
    json_decref (reply);
    //  The workspace's model and temperature, the configured key.
    json_t *stats = fake_llm_stats (&s_fake);
    json_t *asked = json_object_get (stats, "last_request");
    cr_assert_str_eq (it_str (asked, "model"), "ws-model");
    cr_assert_float_eq (json_number_value (json_object_get (asked, "temperature")), 0.4,
                        1e-9);
    cr_assert (json_is_true (json_object_get (asked, "stream")));
    json_t *messages = json_object_get (asked, "messages");
    cr_assert_str_eq (
        it_str (json_array_get (messages, json_array_size (messages) - 1), "content"),
        "hello");
    cr_assert_str_eq (it_str (stats, "last_authorization"), "Bearer sk-integration");
    json_decref (stats);

    //  Streaming: one chunk per upstream token, then close, then finalize.
    it_stream_t stream;
    s_stream_init (&stream, "plain", 0);
    it_stream_run (&stream);
    cr_assert_eq (stream.result, CURLE_OK);
    cr_assert_eq (stream.status, 200);
    json_t *events = it_events (stream.data);
    size_t count = json_array_size (events);
    cr_assert_eq (count, 6 + 2, "events: %s", stream.data);
    char *text = s_stream_text (events);
    cr_assert_str_eq (text, "tok1 tok2 tok3 tok4 tok5 tok6");
    cr_assert_str_eq (it_str (json_array_get (events, 0), "textResponse"), "tok1");
    json_t *last = json_array_get (events, count - 1);
    cr_assert_str_eq (it_str (last, "type"), "finalizeResponseStream");
    cr_assert_gt (json_integer_value (json_object_get (last, "chatId")), 0);
    free (text);
    json_decref (events);
    it_stream_free (&stream);
    //  No chatModel: the configured LLM_MODEL.
    stats = fake_llm_stats (&s_fake);
    asked = json_object_get (stats, "last_request");
    cr_assert_str_eq (it_str (asked, "model"), "fake-default");
    cr_assert_null (json_object_get (asked, "temperature"));
    json_decref (stats);
    s_stop ();
}

//  One chat in the fake's current mode that the upstream must fail: 200
//  abort with the provider's message.
static void
s_chat_fails (const char *needle)
{
    long status;
    json_t *reply = s_chat ("fragile", "hi", &status, NULL, 0);
    cr_assert_eq (status, 200);
    cr_assert_str_eq (it_str (reply, "type"), "abort");
    cr_assert (json_is_null (json_object_get (reply, "textResponse")));
    cr_assert (strstr (it_str (reply, "error"), needle), "error: %s",
               it_str (reply, "error"));
    json_decref (reply);
}

static bool
s_chat_succeeds (void *arg)
{
    (void) arg;
    long status;
    json_t *reply = s_chat ("fragile", "anyone there?", &status, NULL, 0);
    bool ok = status == 200 && !strcmp (it_str (reply, "type"), "textResponse");
    cr_assert (ok || status == 503, "only the open circuit may refuse: %ld", status);
    json_decref (reply);
    return ok;
}

Test (chat_upstream, the_breaker_opens_on_upstream_failures_and_a_probe_closes_it,
      .timeout = 120)
{
    const char *extra[] = {"CHAT_CIRCUIT_FAILURE_THRESHOLD=3",
                           "CHAT_CIRCUIT_RESET_MS=1500", NULL};
    s_start (extra);
    it_create_workspace (&s_suite, "{\"name\":\"Fragile\"}");

    //  Failures of the upstream count, with their message for the client;
    //  a request the upstream refused as its own fault does not.
    fake_llm_control (&s_fake, "{\"mode\":\"fail500\"}");
    s_chat_fails ("The LLM provider failed (HTTP 500): The fake upstream failed");
    fake_llm_control (&s_fake, "{\"mode\":\"bad_request\"}");
    s_chat_fails (
        "The LLM provider refused the request (HTTP 400): This model's maximum");
    fake_llm_control (&s_fake, "{\"mode\":\"fail429\"}");
    s_chat_fails ("The LLM provider is rate limiting us (HTTP 429)");
    fake_llm_control (&s_fake, "{\"mode\":\"fail500\"}");
    s_chat_fails ("HTTP 500");
    cr_assert_eq (fake_llm_stat (&s_fake, "requests"), 4);

    //  Three in a row: open. Chats are refused at once, the fake sees none.
    fake_llm_control (&s_fake, "{\"mode\":\"ok\",\"tokens\":3}");
    char headers[4096];
    long status;
    json_t *reply = s_chat ("fragile", "hi", &status, headers, sizeof headers);
    cr_assert_eq (status, 503, "%ld", status);
    cr_assert_str_eq (it_str (reply, "type"), "abort");
    cr_assert (strstr (it_str (reply, "error"), "circuit is open"), "%s",
               it_str (reply, "error"));
    const char *retry = strcasestr (headers, "\nRetry-After: ");
    cr_assert_not_null (retry, "%s", headers);
    cr_assert_geq (atoi (retry + 14), 1);
    json_decref (reply);
    //  Streaming too: 503 before any stream starts.
    it_stream_t stream;
    s_stream_init (&stream, "fragile", 0);
    it_stream_run (&stream);
    cr_assert_eq (stream.status, 503);
    cr_assert (strcasestr (stream.headers, "\nRetry-After: "), "%s", stream.headers);
    cr_assert_null (strstr (stream.data, "data: "), "%s", stream.data);
    it_stream_free (&stream);
    cr_assert_eq (fake_llm_stat (&s_fake, "requests"), 4, "the open circuit let one by");

    //  After the cool-down the next chat is a probe; the fake has recovered,
    //  so it closes the circuit and chats flow again.
    cr_assert (it_wait (s_chat_succeeds, NULL, 10000), "the circuit never closed");
    cr_assert_eq (fake_llm_stat (&s_fake, "requests"), 5, "one probe");
    for (int i = 0; i < 3; i++)
        cr_assert (s_chat_succeeds (NULL), "chat %d after the probe", i);
    cr_assert_eq (fake_llm_stat (&s_fake, "requests"), 8);
    s_stop ();
}

Test (chat_upstream, the_queue_bounds_what_reaches_the_upstream, .timeout = 120)
{
    const char *extra[] = {"CHAT_QUEUE_CONCURRENCY=2", "CHAT_QUEUE_MAX_PENDING=1", NULL};
    s_start (extra);
    it_create_workspace (&s_suite, "{\"name\":\"Busy\"}");
    //  Each answer takes about a second.
    fake_llm_control (&s_fake, "{\"tokens\":10,\"pace_ms\":100,\"reset\":true}");
    enum { CLIENTS = 6 };
    it_stream_t streams[CLIENTS];
    pthread_t threads[CLIENTS];
    for (int i = 0; i < CLIENTS; i++) {
        s_stream_init (&streams[i], "busy", 0);
        pthread_create (&threads[i], NULL, it_stream_run, &streams[i]);
    }
    int ok = 0, limited = 0;
    for (int i = 0; i < CLIENTS; i++) {
        pthread_join (threads[i], NULL);
        it_stream_t *s = &streams[i];
        if (s->status == 200) {
            json_t *events = it_events (s->data);
            char *text = s_stream_text (events);
            cr_assert_str_eq (text, "tok1 tok2 tok3 tok4 tok5 tok6 tok7 tok8 tok9 tok10");
            free (text);
            json_decref (events);
            ok++;
        } else {
            //  Refused before any stream started: JSON, with Retry-After.
            cr_assert_eq (s->status, 429, "%ld %s", s->status, s->data);
            cr_assert (strcasestr (s->headers, "\nRetry-After: "), "%s", s->headers);
            cr_assert (strcasestr (s->headers, "\nContent-Type: application/json"), "%s",
                       s->headers);
            cr_assert_null (strstr (s->data, "data: "), "%s", s->data);
            limited++;
        }
        it_stream_free (s);
    }
    //  Two run, one waits, the others are turned away; the upstream never
    //  has more than two at once. (Three are admitted; two when the slot of
    //  the workspace/new before is given back a moment after its answer.)
    cr_assert (ok == 3 || ok == 2, "%d answered", ok);
    cr_assert_eq (ok + limited, CLIENTS);
    json_t *stats = fake_llm_stats (&s_fake);
    cr_assert_eq (json_integer_value (json_object_get (stats, "max_in_progress")), 2);
    cr_assert_eq (json_integer_value (json_object_get (stats, "requests")), ok);
    json_decref (stats);
    s_stop ();
}

static bool
s_fake_saw_disconnect (void *arg)
{
    (void) arg;
    return fake_llm_stat (&s_fake, "disconnects") > 0;
}

//  With one slot and no waiting line, the answer to the previous request
//  can reach the client a moment before the worker gives its slot back; a
//  429 then is that moment, not a busy service. These ask again, polling,
//  until admitted.
static void
s_stream_admitted (it_stream_t *stream, const char *slug, int close_after)
{
    long long until = it_now_ms () + 5000;
    for (;;) {
        s_stream_init (stream, slug, close_after);
        it_stream_run (stream);
        if (stream->status != 429 || it_now_ms () > until)
            return;
        it_stream_free (stream);
        usleep (20 * 1000);
    }
}

static void
s_http_admitted (const char *method, const char *url, it_response_t *r)
{
    long long until = it_now_ms () + 5000;
    for (;;) {
        it_http (method, url, NULL, true, r);
        if (r->status != 429 || it_now_ms () > until)
            return;
        it_response_free (r);
        usleep (20 * 1000);
    }
}

static bool
s_slot_free (void *arg)
{
    (void) arg;
    long status;
    json_t *reply = s_chat ("leaving", "after you", &status, NULL, 0);
    cr_assert (status == 200 || status == 429, "%ld", status);
    if (status == 200)
        cr_assert_str_eq (it_str (reply, "textResponse"), "tok1 tok2 tok3");
    json_decref (reply);
    return status == 200;
}

Test (chat_upstream, a_client_that_leaves_mid_stream_stops_the_upstream, .timeout = 120)
{
    //  One slot and no waiting line: the next chat runs only if the slot
    //  was given back.
    const char *extra[] = {"CHAT_QUEUE_CONCURRENCY=1", "CHAT_QUEUE_MAX_PENDING=0", NULL};
    s_start (extra);
    it_create_workspace (&s_suite, "{\"name\":\"Leaving\"}");
    //  A slow upstream: after each token it is silent for 400 ms, so the
    //  hang-up must reach it through cancellation, not a failed write.
    fake_llm_control (&s_fake, "{\"tokens\":100,\"pace_ms\":400,\"reset\":true}");
    it_stream_t stream;
    s_stream_admitted (&stream, "leaving", 2);
    cr_assert_eq (stream.result, CURLE_WRITE_ERROR, "the client hung up itself: %ld %s",
                  stream.status, stream.data);
    long long closed_at = atomic_load (&stream.closed_at);
    cr_assert_gt (closed_at, 0);

    cr_assert (it_wait (s_fake_saw_disconnect, NULL, 5000),
               "the upstream never saw the client leave");
    json_t *stats = fake_llm_stats (&s_fake);
    long long seen = json_integer_value (json_object_get (stats, "last_disconnect_ms"));
    cr_assert_eq (json_integer_value (json_object_get (stats, "disconnects")), 1);
    json_decref (stats);
    long long took = seen - closed_at;
    cr_log_info ("client hang-up to upstream hang-up: %lld ms", took);
    fprintf (stderr, "chat_upstream: client hang-up to upstream hang-up: %lld ms\n",
             took);
    cr_assert_leq (took, 200, "the upstream saw the hang-up %lld ms after the client",
                   took);

    //  The slot is free again: a following chat runs (not 429).
    fake_llm_control (&s_fake, "{\"tokens\":3,\"pace_ms\":0}");
    cr_assert (it_wait (s_slot_free, NULL, 5000), "the slot was not given back");

    //  The partial answer was kept: history holds it, then the next turn.
    char url[256];
    it_url (&s_suite, url, sizeof url, "/api/v1/workspace/leaving/chats");
    it_response_t r;
    s_http_admitted ("GET", url, &r);
    cr_assert_eq (r.status, 200);
    json_t *body = it_json (&r);
    it_response_free (&r);
    json_t *history = json_object_get (body, "history");
    cr_assert_eq (json_array_size (history), 4, "two turns: %s", json_dumps (body, 0));
    const char *partial = it_str (json_array_get (history, 1), "content");
    cr_assert_str_eq (it_str (json_array_get (history, 1), "role"), "assistant");
    cr_assert (!strncmp (partial, "tok1 tok2", 9) && strlen (partial) < 40,
               "partial answer: %s", partial);
    cr_assert_str_eq (it_str (json_array_get (history, 3), "content"), "tok1 tok2 tok3");
    json_decref (body);
    it_stream_free (&stream);
    s_stop ();
}

static bool
s_fake_all_hung_up (void *arg)
{
    (void) arg;
    json_t *stats = fake_llm_stats (&s_fake);
    bool done = json_integer_value (json_object_get (stats, "disconnects")) == 2 &&
                json_integer_value (json_object_get (stats, "in_progress")) == 0;
    json_decref (stats);
    return done;
}

Test (chat_upstream, a_silent_upstream_ends_in_an_abort, .timeout = 120)
{
    const char *extra[] = {"LLM_FIRST_TOKEN_TIMEOUT_MS=500", NULL};
    s_start (extra);
    it_create_workspace (&s_suite, "{\"name\":\"Silent\"}");
    fake_llm_control (&s_fake, "{\"mode\":\"hang\",\"reset\":true}");

    //  Non-streaming: 200 with type abort and the reason.
    long status;
    long long start = it_now_ms ();
    json_t *reply = s_chat ("silent", "hello?", &status, NULL, 0);
    long long took = it_now_ms () - start;
    cr_assert_eq (status, 200);
    cr_assert_str_eq (it_str (reply, "type"), "abort");
    cr_assert (json_is_null (json_object_get (reply, "textResponse")));
    cr_assert_str_eq (it_str (reply, "error"), "The LLM provider sent no token within "
                                               "500 ms (LLM_FIRST_TOKEN_TIMEOUT_MS)");
    cr_assert (took >= 500 && took < 5000, "took %lld ms", took);
    json_decref (reply);

    //  Streaming: an abort event, then finalize.
    it_stream_t stream;
    s_stream_init (&stream, "silent", 0);
    it_stream_run (&stream);
    cr_assert_eq (stream.result, CURLE_OK);
    cr_assert_eq (stream.status, 200);
    json_t *events = it_events (stream.data);
    cr_assert_eq (json_array_size (events), 2, "events: %s", stream.data);
    json_t *abort_event = json_array_get (events, 0);
    cr_assert_str_eq (it_str (abort_event, "type"), "abort");
    cr_assert (strstr (it_str (abort_event, "error"), "sent no token within 500 ms"));
    cr_assert (json_is_true (json_object_get (abort_event, "close")));
    cr_assert_str_eq (it_str (json_array_get (events, 1), "type"),
                      "finalizeResponseStream");
    json_decref (events);
    it_stream_free (&stream);
    //  Both upstream calls were hung up on, none is left open (the fake's
    //  note of the last hang-up may come a moment after our answer).
    cr_assert (it_wait (s_fake_all_hung_up, NULL, 5000), "the upstream calls stay open");
    cr_assert_eq (fake_llm_stat (&s_fake, "requests"), 2);
    s_stop ();
}

//  chatd alone with these settings: its exit code and stderr.
static int
s_run_chatd (const char *const *env, char *out, size_t outlen)
{
    const char *bin = getenv ("LLMRT_BIN_DIR");
    cr_assert_not_null (bin);
    char program[512];
    snprintf (program, sizeof program, "%s/chatd", bin);
    int pipefd[2];
    cr_assert_eq (pipe (pipefd), 0);
    pid_t pid = fork ();
    if (pid == 0) {
        dup2 (pipefd[1], STDERR_FILENO);
        close (pipefd[0]);
        for (size_t i = 0; env[i]; i++)
            putenv ((char *) env[i]);
        execl (program, "chatd", (char *) NULL);
        _exit (127);
    }
    close (pipefd[1]);
    size_t used = 0;
    ssize_t n;
    while (used + 1 < outlen && (n = read (pipefd[0], out + used, outlen - 1 - used)) > 0)
        used += (size_t) n;
    out[used] = 0;
    close (pipefd[0]);
    int status;
    waitpid (pid, &status, 0);
    return WIFEXITED (status) ? WEXITSTATUS (status) : -1;
}

Test (chat_upstream, bad_settings_stop_chatd_naming_the_variable, .timeout = 30)
{
    char out[1024];
    const char *missing[] = {"LLM_PROVIDER=openai",
                             "LLM_BASE_URL=", "RUN_DIR=/nonexistent", NULL};
    cr_assert_eq (s_run_chatd (missing, out, sizeof out), 2, "%s", out);
    cr_assert (strstr (out, "LLM_BASE_URL: required when LLM_PROVIDER=openai"), "%s",
               out);
    const char *bad[] = {"LLM_PROVIDER=openai", "LLM_BASE_URL=localhost:11434",
                         "RUN_DIR=/nonexistent", NULL};
    cr_assert_eq (s_run_chatd (bad, out, sizeof out), 2, "%s", out);
    cr_assert (strstr (out, "LLM_BASE_URL: 'localhost:11434'"), "%s", out);
    const char *unknown[] = {"LLM_PROVIDER=ollama", "RUN_DIR=/nonexistent", NULL};
    cr_assert_eq (s_run_chatd (unknown, out, sizeof out), 2, "%s", out);
    cr_assert (strstr (out, "LLM_PROVIDER: 'ollama' is not supported"), "%s", out);
    const char *timeout[] = {"LLM_PROVIDER=openai", "LLM_BASE_URL=http://127.0.0.1:1/v1",
                             "LLM_FIRST_TOKEN_TIMEOUT_MS=0", "RUN_DIR=/nonexistent",
                             NULL};
    cr_assert_eq (s_run_chatd (timeout, out, sizeof out), 2, "%s", out);
    cr_assert (strstr (out, "LLM_FIRST_TOKEN_TIMEOUT_MS"), "%s", out);
}
