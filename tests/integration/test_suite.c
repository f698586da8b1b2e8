/*  test_suite.c: the whole suite as users run it: the supervisor starts
    redis-server, the gateway, two chatd replicas, ingestd and agentd; tests
    talk HTTP to the gateway and kill processes for real. */
#include <criterion/criterion.h>
#include <dirent.h>
#include <sched.h>
#include <curl/curl.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <sys/wait.h>
#include <unistd.h>
#include "it_harness.h"

static it_suite_t s_suite;

static void
s_create_workspace (const char *name)
{
    char body[128];
    snprintf (body, sizeof body, "{\"name\":\"%s\"}", name);
    it_create_workspace (&s_suite, body);
}

//  A stream-chat at path (it_stream_t).
static void
s_stream_init (it_stream_t *stream, const char *path)
{
    char url[256];
    it_url (&s_suite, url, sizeof url, path);
    it_stream_init (stream, url, "{\"message\":\"tell me a long story\"}", 0);
}

//  POST body to /api/v1/workspace/SLUG/chat; the answer must be 200.
static void
s_chat (const char *slug, const char *body, it_response_t *r)
{
    char url[256], path[128];
    snprintf (path, sizeof path, "/api/v1/workspace/%s/chat", slug);
    it_url (&s_suite, url, sizeof url, path);
    it_http ("POST", url, body, true, r);
    cr_assert_eq (r->status, 200, "chat: %ld %s", r->status, r->body);
}

static const char *
s_type (json_t *event)
{
    return it_str (event, "type");
}

//  --- tests ---------------------------------------------------------------

Test (suite, chat_and_stream_chat_have_the_api_shapes, .timeout = 90)
{
    it_suite_start (&s_suite, NULL);
    s_create_workspace ("Shapes Test");
    char url[256];
    it_response_t r;
    s_chat ("shapes-test", "{\"message\":\"hello there\",\"mode\":\"chat\"}", &r);
    json_t *chat = it_json (&r);
    cr_assert_str_eq (s_type (chat), "textResponse");
    cr_assert (json_is_true (json_object_get (chat, "close")));
    cr_assert (json_is_null (json_object_get (chat, "error")));
    cr_assert (json_is_string (json_object_get (chat, "id")));
    cr_assert_not_null (json_object_get (chat, "chatId"));
    cr_assert (json_string_length (json_object_get (chat, "textResponse")) > 0);
    cr_assert (json_is_array (json_object_get (chat, "sources")));
    json_t *metrics = json_object_get (chat, "metrics");
    cr_assert (json_is_integer (json_object_get (metrics, "total_tokens")) ||
               json_is_number (json_object_get (metrics, "total_tokens")));
    json_decref (chat);
    it_response_free (&r);

    //  Unknown workspace: 400 with the abort shape.
    it_url (&s_suite, url, sizeof url, "/api/v1/workspace/nope/chat");
    it_http ("POST", url, "{\"message\":\"hi\"}", true, &r);
    cr_assert_eq (r.status, 400, "%ld %s", r.status, r.body);
    json_t *abort_reply = it_json (&r);
    cr_assert_str_eq (s_type (abort_reply), "abort");
    cr_assert (json_is_null (json_object_get (abort_reply, "textResponse")));
    cr_assert_str_eq (json_string_value (json_object_get (abort_reply, "error")),
                      "Workspace nope is not a valid workspace.");
    json_decref (abort_reply);
    it_response_free (&r);

    //  Streaming: chunks with uuid, a close:true chunk, then finalize last.
    it_stream_t stream;
    s_stream_init (&stream, "/api/v1/workspace/shapes-test/stream-chat");
    it_stream_run (&stream);
    cr_assert_eq (stream.result, CURLE_OK);
    cr_assert_eq (stream.status, 200);
    json_t *events = it_events (stream.data);
    size_t count = json_array_size (events);
    cr_assert_geq (count, 3, "too few events: %s", stream.data);
    for (size_t i = 0; i + 2 < count; i++) {
        json_t *e = json_array_get (events, i);
        cr_assert_str_eq (s_type (e), "textResponseChunk");
        cr_assert (json_is_string (json_object_get (e, "uuid")));
        cr_assert (json_is_false (json_object_get (e, "close")));
    }
    json_t *closing = json_array_get (events, count - 2);
    cr_assert_str_eq (s_type (closing), "textResponseChunk");
    cr_assert (json_is_true (json_object_get (closing, "close")));
    json_t *last = json_array_get (events, count - 1);
    cr_assert_str_eq (s_type (last), "finalizeResponseStream");
    cr_assert_not_null (json_object_get (last, "chatId"));
    json_decref (events);
    it_stream_free (&stream);
    it_suite_stop (&s_suite);
}

typedef struct {
    pid_t old;
} s_restart_t;

static bool
s_replaced (void *arg)
{
    s_restart_t *restart = arg;
    pid_t pids[8];
    size_t n = it_children (s_suite.supervisor, "chatd", pids, 8);
    if (n < 2)
        return false;
    for (size_t i = 0; i < n; i++)
        if (pids[i] == restart->old)
            return false;
    return true;
}

Test (suite, killed_chatd_is_restarted_while_the_other_serves, .timeout = 90)
{
    it_suite_start (&s_suite, NULL);
    s_create_workspace ("Restart");
    pid_t pids[8];
    cr_assert_eq (it_children (s_suite.supervisor, "chatd", pids, 8), 2);
    s_restart_t restart = {pids[0]};
    kill (pids[0], SIGKILL);
    //  Requests keep succeeding while the replacement starts.
    char url[256];
    it_url (&s_suite, url, sizeof url, "/api/v1/workspace/restart/chat");
    int served = 0;
    long long until = it_now_ms () + 1500;
    while (it_now_ms () < until || served < 20) {
        it_response_t r;
        it_http ("POST", url, "{\"message\":\"still there?\"}", true, &r);
        cr_assert_eq (r.status, 200, "request %d after the kill: %ld %s", served,
                      r.status, r.body);
        it_response_free (&r);
        served++;
    }
    cr_assert (it_wait (s_replaced, &restart, 15000), "no new chatd replaced pid %d",
               (int) restart.old);
    it_suite_stop (&s_suite);
}

typedef struct {
    char url[256];
    atomic_int ok;
} s_load_t;

static void *
s_one_chat (void *arg)
{
    s_load_t *load = arg;
    it_response_t r;
    it_http ("POST", load->url, "{\"message\":\"concurrent hello\"}", true, &r);
    if (r.status == 200 && strstr (r.body, "\"textResponse\""))
        atomic_fetch_add (&load->ok, 1);
    it_response_free (&r);
    return NULL;
}

static char s_last_health[4096];

//  True when /api/health shows two chat instances that together served at
//  least 100 requests, each some.
static bool
s_spread (void *arg)
{
    (void) arg;
    char url[256];
    it_url (&s_suite, url, sizeof url, "/api/health");
    it_response_t r;
    it_http ("GET", url, NULL, false, &r);
    snprintf (s_last_health, sizeof s_last_health, "%s", r.body);
    json_t *health = json_loads (r.body, 0, NULL);
    it_response_free (&r);
    json_t *instances = json_object_get (health, "instances");
    int chat_instances = 0, idle = 0;
    json_int_t total = 0;
    for (size_t i = 0; i < json_array_size (instances); i++) {
        json_t *instance = json_array_get (instances, i);
        if (strcmp (json_string_value (json_object_get (instance, "service")), "chat"))
            continue;
        chat_instances++;
        json_int_t served = json_integer_value (json_object_get (instance, "served"));
        idle += served == 0;
        total += served;
    }
    json_decref (health);
    return chat_instances == 2 && idle == 0 && total >= 100;
}

Test (suite, concurrent_chats_spread_over_both_replicas, .timeout = 120)
{
    const char *extra[] = {"CHAT_QUEUE_MAX_PENDING=200", NULL};
    it_suite_start (&s_suite, extra);
    s_create_workspace ("Load");
    s_load_t load = {.ok = 0};
    it_url (&s_suite, load.url, sizeof load.url, "/api/v1/workspace/load/chat");
    pthread_t threads[100];
    for (int i = 0; i < 100; i++)
        pthread_create (&threads[i], NULL, s_one_chat, &load);
    for (int i = 0; i < 100; i++)
        pthread_join (threads[i], NULL);
    cr_assert_eq (atomic_load (&load.ok), 100);
    //  The gateway's view (a snapshot refreshed every few ms): each chat
    //  instance served some of them.
    cr_assert (it_wait (s_spread, NULL, 5000), "requests did not spread: %s",
               s_last_health);
    it_suite_stop (&s_suite);
}

//  The one CPU every thread of pid is pinned to, or -1 when some thread
//  may run on more than one, or they differ.
static int
s_pinned_cpu (pid_t pid)
{
    char path[64];
    snprintf (path, sizeof path, "/proc/%d/task", (int) pid);
    DIR *tasks = opendir (path);
    if (!tasks)
        return -1;
    int pinned = -1, threads = 0;
    struct dirent *entry;
    while ((entry = readdir (tasks))) {
        if (entry->d_name[0] == '.')
            continue;
        cpu_set_t set;
        if (sched_getaffinity (atoi (entry->d_name), sizeof set, &set) ||
            CPU_COUNT (&set) != 1) {
            pinned = -1;
            break;
        }
        int cpu = 0;
        while (!CPU_ISSET (cpu, &set))
            cpu++;
        if (threads++ > 0 && cpu != pinned) {
            pinned = -1;
            break;
        }
        pinned = cpu;
    }
    closedir (tasks);
    return threads > 1 ? pinned : -1;
}

Test (suite, chat_cpu_affinity_auto_gives_each_replica_its_own_cpu, .timeout = 90)
{
    const char *extra[] = {"CHAT_CPU_AFFINITY=auto", NULL};
    it_suite_start (&s_suite, extra);
    s_create_workspace ("Pinned");
    it_response_t r;
    s_chat ("pinned", "{\"message\":\"hello\"}", &r);
    it_response_free (&r);
    pid_t pids[8];
    cr_assert_eq (it_children (s_suite.supervisor, "chatd", pids, 8), 2);
    int first = s_pinned_cpu (pids[0]), second = s_pinned_cpu (pids[1]);
    cr_assert (first >= 0 && second >= 0, "not every thread pinned: %d %d", first,
               second);
    cpu_set_t allowed;
    cr_assert_eq (sched_getaffinity (0, sizeof allowed, &allowed), 0);
    if (CPU_COUNT (&allowed) > 1) {
        cr_assert_neq (first, second, "both replicas on CPU %d", first);
        //  The gateway is never pinned by it.
        cr_assert_eq (it_children (s_suite.supervisor, "gateway", pids, 8), 1);
        cr_assert_eq (s_pinned_cpu (pids[0]), -1);
    }
    it_suite_stop (&s_suite);
}

//  The pid of the chat instance with a request in flight (ids end in -pid).
static pid_t
s_busy_chat_pid (void)
{
    char url[256];
    it_url (&s_suite, url, sizeof url, "/api/health");
    it_response_t r;
    it_http ("GET", url, NULL, false, &r);
    json_t *health = it_json (&r);
    json_t *instances = json_object_get (health, "instances");
    pid_t pid = 0;
    for (size_t i = 0; i < json_array_size (instances); i++) {
        json_t *instance = json_array_get (instances, i);
        if (json_integer_value (json_object_get (instance, "inflight")) > 0 &&
            !strcmp (json_string_value (json_object_get (instance, "service")), "chat")) {
            const char *id = json_string_value (json_object_get (instance, "id"));
            pid = (pid_t) atoi (strrchr (id, '-') + 1);
        }
    }
    json_decref (health);
    it_response_free (&r);
    return pid;
}

//  Start the suite with extra settings, create the workspace `name` (slug
//  `slug`) and a stream-chat in it, run on *thread, started once this
//  returns.
static void
s_start_streaming (const char *const *extra, const char *name, const char *slug,
                   it_stream_t *stream, pthread_t *thread)
{
    it_suite_start (&s_suite, extra);
    s_create_workspace (name);
    char path[128];
    snprintf (path, sizeof path, "/api/v1/workspace/%s/stream-chat", slug);
    s_stream_init (stream, path);
    pthread_create (thread, NULL, it_stream_run, stream);
    cr_assert (it_wait (it_stream_started, stream, 10000), "the stream never started");
}

//  Wait (up to timeout_ms) for the stream of s_start_streaming to end
//  without a transport error; its events (new reference).
static json_t *
s_finish_stream (it_stream_t *stream, pthread_t thread, int timeout_ms)
{
    cr_assert (it_wait (it_stream_done, stream, timeout_ms), "the stream hangs");
    pthread_join (thread, NULL);
    cr_assert_eq (stream->result, CURLE_OK, "the stream ended with a transport error %d",
                  stream->result);
    return it_events (stream->data);
}

//  The end of a stream that failed mid-way, as API.md has it: the abort
//  event with the stream's uuid, then the finalize event. Returns the abort
//  event (borrowed from events).
static json_t *
s_assert_aborted (json_t *events, const char *data)
{
    size_t count = json_array_size (events);
    cr_assert_geq (count, 3, "%s", data);
    json_t *abort = json_array_get (events, count - 2);
    json_t *last = json_array_get (events, count - 1);
    cr_assert_str_eq (s_type (abort), "abort", "%s", data);
    cr_assert (json_is_string (json_object_get (abort, "error")), "%s", data);
    cr_assert_str_eq (s_type (last), "finalizeResponseStream", "%s", data);
    const char *uuid = it_str (json_array_get (events, 0), "uuid");
    cr_assert_str_eq (it_str (abort, "uuid"), uuid, "%s", data);
    cr_assert_str_eq (it_str (last, "uuid"), uuid, "%s", data);
    return abort;
}

Test (suite, chatd_killed_mid_stream_gives_an_abort_event, .timeout = 90)
{
    const char *extra[] = {"BUILTIN_LLM_TOKEN_DELAY_MS=50", NULL};
    it_stream_t stream;
    pthread_t thread;
    s_start_streaming (extra, "Midstream", "midstream", &stream, &thread);
    pid_t pid = s_busy_chat_pid ();
    cr_assert_gt (pid, 0, "no chat instance has the stream in flight");
    kill (pid, SIGKILL);
    long long killed_at = it_now_ms ();
    json_t *events = s_finish_stream (&stream, thread, 10000);
    long long took = it_now_ms () - killed_at;
    s_assert_aborted (events, stream.data);
    cr_log_info ("stream ended %lld ms after the kill", took);
    json_decref (events);
    it_stream_free (&stream);
    it_suite_stop (&s_suite);
}

Test (suite, a_stream_cut_short_by_a_drain_ends_with_an_abort_event, .timeout = 90)
{
    //  Streams of ~10 s against a drain of 500 ms: SIGTERM to the chatd
    //  serving one cuts it short, and the client must be told so (not
    //  see an end that looks complete).
    const char *extra[] = {"BUILTIN_LLM_TOKEN_DELAY_MS=200", "DRAIN_TIMEOUT_MS=500",
                           NULL};
    it_stream_t stream;
    pthread_t thread;
    s_start_streaming (extra, "Drained", "drained", &stream, &thread);
    pid_t pid = s_busy_chat_pid ();
    cr_assert_gt (pid, 0, "no chat instance has the stream in flight");
    kill (pid, SIGTERM);
    json_t *events = s_finish_stream (&stream, thread, 10000);
    json_t *abort = s_assert_aborted (events, stream.data);
    cr_assert (strstr (it_str (abort, "error"), "shut down"), "%s", stream.data);
    json_decref (events);
    it_stream_free (&stream);
    it_suite_stop (&s_suite);
}

Test (suite, a_gateway_that_stood_still_blames_no_instance, .timeout = 90)
{
    //  The gateway frozen for 5 s (longer than its patience with a silent
    //  instance, 3 s) in the middle of a stream: when it runs again the
    //  silence was its own. The stream goes on to its end; no instance is
    //  given up.
    const char *extra[] = {"BUILTIN_LLM_TOKEN_DELAY_MS=100", NULL};
    it_stream_t stream;
    pthread_t thread;
    s_start_streaming (extra, "Frozen", "frozen", &stream, &thread);
    pid_t gateway[2];
    cr_assert_eq (it_children (s_suite.supervisor, "gateway", gateway, 2), 1);
    kill (gateway[0], SIGSTOP);
    sleep (5);
    kill (gateway[0], SIGCONT);
    json_t *events = s_finish_stream (&stream, thread, 60000);
    json_t *last = json_array_get (events, json_array_size (events) - 1);
    cr_assert_str_eq (s_type (last), "finalizeResponseStream", "%s", stream.data);
    for (size_t i = 0; i < json_array_size (events); i++)
        cr_assert_str_neq (s_type (json_array_get (events, i)), "abort", "%s",
                           stream.data);
    json_decref (events);
    it_stream_free (&stream);
    char url[256];
    it_url (&s_suite, url, sizeof url, "/api/health");
    it_response_t r;
    it_http ("GET", url, NULL, false, &r);
    json_t *health = it_json (&r);
    json_t *broker = json_object_get (health, "broker");
    cr_assert_eq (json_integer_value (json_object_get (broker, "expired_instances")), 0,
                  "%s", r.body);
    json_decref (health);
    it_response_free (&r);
    it_suite_stop (&s_suite);
}

Test (suite, sigterm_stops_every_child_within_the_grace_period, .timeout = 90)
{
    it_suite_start (&s_suite, NULL);
    pid_t pids[16];
    size_t n = it_children (s_suite.supervisor, "", pids, 16);
    cr_assert_geq (n, 6, "expected redis, gateway, 2 chatd, ingestd, agentd; got %zu", n);
    long long start = it_now_ms ();
    kill (s_suite.supervisor, SIGTERM);
    int status = 0;
    while (waitpid (s_suite.supervisor, &status, WNOHANG) == 0 &&
           it_now_ms () - start < 15000)
        usleep (10 * 1000);
    long long took = it_now_ms () - start;
    cr_assert (WIFEXITED (status) && WEXITSTATUS (status) == 0, "supervisor status %d",
               status);
    //  Grace is 5 s in the harness: everything must be gone by then.
    cr_assert_leq (took, 6000, "supervisor took %lld ms", took);
    for (size_t i = 0; i < n; i++)
        cr_assert_not (it_alive (pids[i]), "child %d outlived the supervisor",
                       (int) pids[i]);
    s_suite.supervisor = 0;
    it_suite_stop (&s_suite);
}

typedef struct {
    char url[256];
    long status;
    char headers[4096];
    char body[512];
} s_limited_t;

static void *
s_limited_chat (void *arg)
{
    s_limited_t *call = arg;
    it_response_t r;
    it_http ("POST", call->url, "{\"message\":\"limited\"}", true, &r);
    call->status = r.status;
    snprintf (call->headers, sizeof call->headers, "%s", r.headers);
    snprintf (call->body, sizeof call->body, "%s", r.body);
    it_response_free (&r);
    return NULL;
}

Test (suite, a_burst_over_the_chat_limit_gets_429_with_headers, .timeout = 90)
{
    //  Burst 4 at 0.1 request/s: creating the workspace takes one (every
    //  route of the chat service is in the chat class); of 6 chats at once,
    //  exactly 3 pass.
    const char *extra[] = {"RATE_LIMIT_CHAT_RPS=0.1", "RATE_LIMIT_CHAT_BURST=4", NULL};
    it_suite_start (&s_suite, extra);
    s_create_workspace ("Limited");
    s_limited_t calls[6];
    pthread_t threads[6];
    for (int i = 0; i < 6; i++) {
        memset (&calls[i], 0, sizeof calls[i]);
        it_url (&s_suite, calls[i].url, sizeof calls[i].url,
                "/api/v1/workspace/limited/chat");
        pthread_create (&threads[i], NULL, s_limited_chat, &calls[i]);
    }
    int ok = 0, limited = 0;
    for (int i = 0; i < 6; i++) {
        pthread_join (threads[i], NULL);
        //  Every response of a limited route carries both draft headers.
        cr_assert (strcasestr (calls[i].headers, "\nRateLimit-Policy: \"chat\";q=4;"),
                   "no RateLimit-Policy: %s", calls[i].headers);
        cr_assert (strcasestr (calls[i].headers, "\nRateLimit: \"chat\";r="),
                   "no RateLimit: %s", calls[i].headers);
        if (calls[i].status == 200)
            ok++;
        else {
            cr_assert_eq (calls[i].status, 429, "%ld %s", calls[i].status, calls[i].body);
            limited++;
            //  10 s until the next token: Retry-After is never earlier.
            const char *retry = strcasestr (calls[i].headers, "\nRetry-After: ");
            cr_assert_not_null (retry, "%s", calls[i].headers);
            cr_assert_geq (atoi (retry + 14), 9, "%s", calls[i].headers);
            cr_assert (strstr (calls[i].body, "\"limit\":\"chat\""), "%s", calls[i].body);
        }
    }
    cr_assert_eq (ok, 3);
    cr_assert_eq (limited, 3);
    it_suite_stop (&s_suite);
}
