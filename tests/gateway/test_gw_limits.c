/*  test_gw_limits.c: the gateway's rate limits.

    First the gw_limits module alone, with time passed in (exact, no
    sleeps): which limits apply, the headers' values, the order in which
    limits are asked, per-key independence. Then the gateway in this
    process, as test_gw_server.c runs it: libcurl in front, a fake daemon
    behind (a czmq DEALER on its own thread that says READY, heartbeats and
    answers every REQUEST with a FINAL at once; all from gw_harness). */
#include <criterion/criterion.h>
#include "gw_harness.h"
#include "gw_limits.h"

#define S_SECOND 1000000 //  µs

static void
s_setup (void)
{
    gwh_setup ("test_gw_limits", CM_LOG_WARN);
}

TestSuite (gw_limits, .init = s_setup, .fini = gwh_teardown, .timeout = 120);

//  --- the module alone -------------------------------------------------------

Test (gw_limits, walkthrough)
{
    //  Chat: 1 request/s, bursts of 3. Nothing else is limited.
    gw_limits_config_t config = {.chat_rps = 1, .chat_burst = 3, .max_keys = 16};
    char err[256];
    gw_limits_t *limits = gw_limits_new (&config, err, sizeof err);
    cr_assert_not_null (limits, "%s", err);
    gw_limits_verdict_t verdict;
    int64_t now = 100 * S_SECOND;

    //  A chat request passes; the headers say what is left.
    cr_assert_eq (gw_limits_check (limits, "chat", "admin", now, &verdict),
                  CM_RATELIMIT_ALLOWED);
    cr_assert_str_eq (verdict.limit, "chat");
    cr_assert_str_eq (verdict.policy, "\"chat\";q=3;w=3");
    cr_assert_str_eq (verdict.state, "\"chat\";r=2;t=1");
    cr_assert_str_eq (verdict.retry_after, "");

    //  Two more pass; the fourth is refused, with a 429 body naming the
    //  limit and a Retry-After of whole seconds.
    gw_limits_check (limits, "chat", "admin", now, &verdict);
    gw_limits_check (limits, "chat", "admin", now, &verdict);
    cr_assert_str_eq (verdict.state, "\"chat\";r=0;t=3");
    cr_assert_eq (gw_limits_check (limits, "chat", "admin", now, &verdict),
                  CM_RATELIMIT_REJECTED);
    cr_assert_str_eq (verdict.retry_after, "1");
    cr_assert_str_eq (verdict.state, "\"chat\";r=0;t=3");
    json_t *body = gw_limits_verdict_body (&verdict);
    char *text = json_dumps (body, JSON_COMPACT | JSON_SORT_KEYS);
    cr_assert_str_eq (
        text,
        "{\"error\":\"Rate limit exceeded: chat (1 request/s, burst 3).\",\"limit\":"
        "\"chat\"}");
    free (text);
    json_decref (body);

    //  Other services are not limited: no headers at all.
    cr_assert_eq (gw_limits_check (limits, "ingest", "admin", now, &verdict),
                  CM_RATELIMIT_ALLOWED);
    cr_assert_null (verdict.limit);

    //  The counters, for metrics.
    json_t *stats = gw_limits_stats (limits);
    json_t *chat = json_object_get (stats, "chat");
    cr_assert_eq (json_integer_value (json_object_get (chat, "allowed")), 3);
    cr_assert_eq (json_integer_value (json_object_get (chat, "rejected")), 1);
    cr_assert_eq (json_real_value (json_object_get (chat, "requests_per_second")), 1);
    cr_assert_eq (json_integer_value (json_object_get (chat, "burst")), 3);
    json_decref (stats);
    gw_limits_destroy (&limits);
    cr_assert_null (limits);
}

Test (gw_limits, each_api_key_has_its_own_bucket)
{
    gw_limits_config_t config = {.key_rps = 1, .key_burst = 2, .max_keys = 16};
    char err[256];
    gw_limits_t *limits = gw_limits_new (&config, err, sizeof err);
    cr_assert_not_null (limits, "%s", err);
    gw_limits_verdict_t verdict;
    const char *callers[] = {"alice", "bob", "carol"};
    for (size_t i = 0; i < 3; i++) {
        cr_assert_eq (gw_limits_check (limits, "chat", callers[i], 0, &verdict),
                      CM_RATELIMIT_ALLOWED);
        cr_assert_eq (gw_limits_check (limits, "agent", callers[i], 0, &verdict),
                      CM_RATELIMIT_ALLOWED, "the key limit spans every service");
        cr_assert_eq (gw_limits_check (limits, "ingest", callers[i], 0, &verdict),
                      CM_RATELIMIT_REJECTED, "%s", callers[i]);
        cr_assert_str_eq (verdict.limit, "key");
        cr_assert_str_eq (verdict.message,
                          "Rate limit exceeded: key (1 request/s per API key, burst 2).");
    }
    //  No identity (a route without auth): no per-key limit.
    cr_assert_eq (gw_limits_check (limits, "chat", "", 0, &verdict),
                  CM_RATELIMIT_ALLOWED);
    cr_assert_null (verdict.limit);
    json_t *stats = gw_limits_stats (limits);
    json_t *key = json_object_get (stats, "key");
    cr_assert_eq (json_integer_value (json_object_get (key, "keys")), 3);
    cr_assert_eq (json_integer_value (json_object_get (key, "max_keys")), 16);
    cr_assert_eq (json_integer_value (json_object_get (key, "allowed")), 6);
    cr_assert_eq (json_integer_value (json_object_get (key, "rejected")), 3);
    json_decref (stats);
    gw_limits_destroy (&limits);
}

Test (gw_limits, headers_describe_the_most_restrictive_limit)
{
    //  Global is generous, chat is tight: chat runs out first.
    gw_limits_config_t config = {.global_rps = 100,
                                 .global_burst = 100,
                                 .chat_rps = 2,
                                 .chat_burst = 4,
                                 .key_rps = 10,
                                 .key_burst = 10,
                                 .max_keys = 16};
    char err[256];
    gw_limits_t *limits = gw_limits_new (&config, err, sizeof err);
    cr_assert_not_null (limits, "%s", err);
    gw_limits_verdict_t verdict;
    gw_limits_check (limits, "chat", "admin", 0, &verdict);
    cr_assert_str_eq (verdict.limit, "chat");
    cr_assert_str_eq (verdict.state, "\"chat\";r=3;t=1");
    cr_assert_str_eq (verdict.policy, "\"chat\";q=4;w=2");
    //  Agent routes have no class limit: the key limit (9 left) is tighter
    //  than global (98 left).
    gw_limits_check (limits, "agent", "admin", 0, &verdict);
    cr_assert_str_eq (verdict.limit, "key");
    cr_assert_str_eq (verdict.state, "\"key\";r=8;t=1");
    gw_limits_destroy (&limits);
}

Test (gw_limits, a_client_over_its_own_limit_takes_nothing_from_the_shared_ones)
{
    //  Global: 2 at once. Per key: 1 at once.
    gw_limits_config_t config = {
        .global_rps = 1, .global_burst = 2, .key_rps = 1, .key_burst = 1, .max_keys = 16};
    char err[256];
    gw_limits_t *limits = gw_limits_new (&config, err, sizeof err);
    cr_assert_not_null (limits, "%s", err);
    gw_limits_verdict_t verdict;
    cr_assert_eq (gw_limits_check (limits, "chat", "alice", 0, &verdict),
                  CM_RATELIMIT_ALLOWED);
    //  Alice again and again: refused by her key limit, before global.
    for (int i = 0; i < 10; i++) {
        cr_assert_eq (gw_limits_check (limits, "chat", "alice", 0, &verdict),
                      CM_RATELIMIT_REJECTED);
        cr_assert_str_eq (verdict.limit, "key");
    }
    //  So global still has room for Bob; then it is full for Carol.
    cr_assert_eq (gw_limits_check (limits, "chat", "bob", 0, &verdict),
                  CM_RATELIMIT_ALLOWED);
    cr_assert_eq (gw_limits_check (limits, "chat", "carol", 0, &verdict),
                  CM_RATELIMIT_REJECTED);
    cr_assert_str_eq (verdict.limit, "global");
    //  Carol's key limit gave her request back: once global refills (1 s),
    //  she passes.
    cr_assert_eq (gw_limits_check (limits, "chat", "carol", S_SECOND, &verdict),
                  CM_RATELIMIT_ALLOWED);
    gw_limits_destroy (&limits);
}

Test (gw_limits, retry_after_covers_the_longest_wait)
{
    //  Per key 1/s, global one every 5 s. A second request from the same
    //  key is refused by the key limit (1 s), but global would refuse it
    //  for 5 s: the answer names global and says 5.
    gw_limits_config_t config = {.global_rps = 0.2,
                                 .global_burst = 1,
                                 .key_rps = 1,
                                 .key_burst = 1,
                                 .max_keys = 16};
    char err[256];
    gw_limits_t *limits = gw_limits_new (&config, err, sizeof err);
    cr_assert_not_null (limits, "%s", err);
    gw_limits_verdict_t verdict;
    int64_t now = 7 * S_SECOND;
    gw_limits_check (limits, "chat", "alice", now, &verdict);
    cr_assert_eq (gw_limits_check (limits, "chat", "alice", now, &verdict),
                  CM_RATELIMIT_REJECTED);
    cr_assert_str_eq (verdict.limit, "global");
    cr_assert_str_eq (verdict.retry_after, "5");
    cr_assert_str_eq (verdict.policy, "\"global\";q=1;w=5");
    //  And indeed: 1 µs early is still refused, on time passes.
    cr_assert_eq (
        gw_limits_check (limits, "chat", "alice", now + 5 * S_SECOND - 1, &verdict),
        CM_RATELIMIT_REJECTED);
    cr_assert_eq (gw_limits_check (limits, "chat", "alice", now + 5 * S_SECOND, &verdict),
                  CM_RATELIMIT_ALLOWED);
    gw_limits_destroy (&limits);
}

Test (gw_limits, zero_is_unlimited)
{
    gw_limits_config_t config = {.max_keys = 16};
    char err[256];
    gw_limits_t *limits = gw_limits_new (&config, err, sizeof err);
    cr_assert_not_null (limits, "%s", err);
    gw_limits_verdict_t verdict;
    for (int i = 0; i < 10000; i++) {
        cr_assert_eq (gw_limits_check (limits, "chat", "admin", 0, &verdict),
                      CM_RATELIMIT_ALLOWED);
        cr_assert_null (verdict.limit, "no limit, no headers");
    }
    gw_limits_destroy (&limits);
}

Test (gw_limits, bad_settings_are_start_up_errors_naming_the_variable)
{
    //  From the environment: cm_config_load names the variable.
    static const struct {
        const char *name, *value;
    } bad[] = {
        {"RATE_LIMIT_CHAT_RPS", "fast"},     {"RATE_LIMIT_GLOBAL_RPS", "-1"},
        {"RATE_LIMIT_AGENT_RPS", "2000000"}, {"RATE_LIMIT_INGESTION_BURST", "1.5"},
        {"RATE_LIMIT_KEY_BURST", "-3"},      {"RATE_LIMIT_MAX_KEYS", "0"},
        {"RATE_LIMIT_KEY_RPS", "nan"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        setenv (bad[i].name, bad[i].value, 1);
        gw_config_t config = {0};
        char err[512] = "";
        cr_assert_eq (cm_config_load (gw_config_table (), &config, err, sizeof err), -1,
                      "%s=%s was accepted", bad[i].name, bad[i].value);
        cr_assert (strstr (err, bad[i].name), "error was: %s", err);
        cm_config_free (gw_config_table (), &config);
        unsetenv (bad[i].name);
    }
    //  Good values, fractions included.
    setenv ("RATE_LIMIT_CHAT_RPS", "0.5", 1);
    setenv ("RATE_LIMIT_CHAT_BURST", "4", 1);
    gw_config_t config = {0};
    char err[512] = "";
    cr_assert_eq (cm_config_load (gw_config_table (), &config, err, sizeof err), 0, "%s",
                  err);
    cr_assert_eq (config.limits.chat_rps, 0.5);
    cr_assert_eq (config.limits.chat_burst, 4);
    cr_assert_eq (config.limits.global_rps, 0, "unlimited by default");
    cr_assert_eq (config.limits.max_keys, 100000);
    cm_config_free (gw_config_table (), &config);
    unsetenv ("RATE_LIMIT_CHAT_RPS");
    unsetenv ("RATE_LIMIT_CHAT_BURST");

    //  A combination that makes no sense is refused by gw_limits_config_check
    //  (the gateway's start-up check: exit 2) and by gw_limits_new, naming
    //  both variables.
    gw_limits_config_t limits = {.chat_rps = 1e-7, .chat_burst = 100, .max_keys = 1};
    cr_assert_eq (gw_limits_config_check (&limits, err, sizeof err), -1);
    cr_assert (strstr (err, "RATE_LIMIT_CHAT_RPS") &&
                   strstr (err, "RATE_LIMIT_CHAT_BURST"),
               "error was: %s", err);
    cr_assert_null (gw_limits_new (&limits, err, sizeof err));
    cr_assert (strstr (err, "RATE_LIMIT_CHAT_RPS"), "error was: %s", err);
    gw_limits_config_t global = {.global_rps = 1, .global_burst = 1000000000};
    cr_assert_eq (gw_limits_config_check (&global, err, sizeof err), -1);
    cr_assert (strstr (err, "RATE_LIMIT_GLOBAL_BURST, RATE_LIMIT_GLOBAL_RPS: a burst of "
                            "1000000000"),
               "error was: %s", err);
    global.global_rps = 10;
    cr_assert_eq (gw_limits_config_check (&global, err, sizeof err), 0, "%s", err);
}

//  --- the gateway in this process --------------------------------------------

//  Start a gateway with these rate limits.
static void
s_gateway_start (gwh_gateway_t *self, const gw_limits_config_t *limits)
{
    gw_config_t config = {.limits = *limits};
    gwh_gateway_start (self, &config);
}

//  One call on a reused handle (keeps the connection alive); the call
//  replaces *reply_p (destroyed first). Fails the test on a transport error.
static void
s_call (gwh_gateway_t *gateway, CURL *curl, const char *method, const char *path,
        const char *key, const char *body, gwh_call_t **reply_p)
{
    gwh_call_destroy (reply_p);
    *reply_p = gwh_http_on (gateway, curl, method, path, key, body);
    cr_assert_eq ((*reply_p)->code, CURLE_OK, "%s: %s", path,
                  curl_easy_strerror ((*reply_p)->code));
}

static json_int_t
s_stat (gwh_gateway_t *gateway, const char *limit, const char *counter)
{
    json_t *stats = gw_limits_stats (gw_server_limits (gateway->server));
    json_int_t value =
        json_integer_value (json_object_get (json_object_get (stats, limit), counter));
    json_decref (stats);
    return value;
}

Test (gw_limits, a_burst_of_six_gets_three_through_and_three_429)
{
    //  1 request/s, bursts of 3: six requests in a row, well within a
    //  second, are three forwarded and three refused. (Should the machine
    //  be so slow that the six took most of a second, a request may have
    //  been earned back: then the round is run again, with a new gateway.)
    for (int attempt = 0; attempt < 3; attempt++) {
        gw_limits_config_t limits = {.chat_rps = 1, .chat_burst = 3, .max_keys = 100};
        gwh_gateway_t gateway;
        s_gateway_start (&gateway, &limits);
        gwh_daemon_t *chatd = gwh_daemon_new_answering (&gateway, "chat", "chat-1");
        CURL *curl = curl_easy_init ();
        gwh_wait_instance (&gateway, "chat");

        gwh_call_t *replies[6] = {0};
        int64_t started = cm_clock_mono_us ();
        for (int i = 0; i < 6; i++)
            s_call (&gateway, curl, "POST", "/api/v1/workspace/demo/chat", GWH_KEY,
                    "{\"message\":\"hi\"}", &replies[i]);
        int64_t took = cm_clock_mono_us () - started;
        if (took > 800000 && attempt < 2) {
            for (int i = 0; i < 6; i++)
                gwh_call_destroy (&replies[i]);
            curl_easy_cleanup (curl);
            gwh_daemon_destroy (&chatd);
            gwh_gateway_stop (&gateway);
            continue;
        }
        int forwarded = 0, refused = 0;
        for (int i = 0; i < 6; i++) {
            gwh_call_t *reply = replies[i];
            //  Every response of a limited route carries both headers.
            cr_assert_str_eq (gwh_call_header (reply, "RateLimit-Policy"),
                              "\"chat\";q=3;w=3", "response %d", i);
            cr_assert (!strncmp (gwh_call_header (reply, "RateLimit"), "\"chat\";r=", 9),
                       "response %d: RateLimit '%s'", i,
                       gwh_call_header (reply, "RateLimit"));
            //  One connection for all six: refusals keep it alive.
            if (i > 0)
                cr_assert_eq (reply->connects, 0, "response %d opened a connection", i);
            if (reply->status == 200) {
                forwarded++;
                cr_assert_str_eq (reply->reply, "{\"ok\":true}");
                char expected[32];
                snprintf (expected, sizeof expected, "\"chat\";r=%d;t=", 2 - i);
                cr_assert (!strncmp (gwh_call_header (reply, "RateLimit"), expected,
                                     strlen (expected)),
                           "response %d: '%s'", i, gwh_call_header (reply, "RateLimit"));
                continue;
            }
            refused++;
            cr_assert_eq (reply->status, 429, "response %d: %ld %s", i, reply->status,
                          reply->reply);
            cr_assert_str_eq (gwh_call_header (reply, "Content-Type"),
                              "application/json");
            cr_assert_str_eq (reply->reply,
                              "{\"error\":\"Rate limit exceeded: chat (1 request/s, "
                              "burst 3).\",\"limit\":\"chat\"}");
            cr_assert_geq (atoi (gwh_call_header (reply, "Retry-After")), 1);
            cr_assert (
                !strncmp (gwh_call_header (reply, "RateLimit"), "\"chat\";r=0;t=", 13));
        }
        cr_assert_eq (forwarded, 3);
        cr_assert_eq (refused, 3);
        cr_assert_eq (replies[3]->status, 429, "the first three pass, in order");
        cr_assert_eq (atomic_load (&chatd->requests), 3, "refusals never reach chatd");
        cr_assert_eq (s_stat (&gateway, "chat", "allowed"), 3);
        cr_assert_eq (s_stat (&gateway, "chat", "rejected"), 3);

        for (int i = 0; i < 6; i++)
            gwh_call_destroy (&replies[i]);
        curl_easy_cleanup (curl);
        gwh_daemon_destroy (&chatd);
        gwh_gateway_stop (&gateway);
        return;
    }
}

Test (gw_limits, per_key_limit_and_what_it_does_not_count)
{
    //  The admin key: 2 at once, one every 100 s (so none comes back).
    gw_limits_config_t limits = {.key_rps = 0.01, .key_burst = 2, .max_keys = 100};
    gwh_gateway_t gateway;
    s_gateway_start (&gateway, &limits);
    gwh_daemon_t *chatd = gwh_daemon_new_answering (&gateway, "chat", "chat-1");
    CURL *curl = curl_easy_init ();
    gwh_wait_instance (&gateway, "chat");
    gwh_call_t *reply = NULL;

    //  A wrong key is 403 and is not counted.
    for (int i = 0; i < 5; i++) {
        s_call (&gateway, curl, "GET", "/api/v1/workspaces", "wrong-key", NULL, &reply);
        cr_assert_eq (reply->status, 403);
        cr_assert_str_eq (gwh_call_header (reply, "RateLimit"), "");
    }
    //  Local routes are not limited, and carry no headers.
    for (int i = 0; i < 5; i++) {
        s_call (&gateway, curl, "GET", "/api/ping", NULL, NULL, &reply);
        cr_assert_eq (reply->status, 200);
        cr_assert_str_eq (gwh_call_header (reply, "RateLimit-Policy"), "");
        s_call (&gateway, curl, "GET", "/api/v1/auth", GWH_KEY, NULL, &reply);
        cr_assert_eq (reply->status, 200);
    }
    //  A request refused for its body (400) went through the limits: it
    //  counts, and says so.
    s_call (&gateway, curl, "POST", "/api/v1/workspace/demo/chat", GWH_KEY, "[1]",
            &reply);
    cr_assert_eq (reply->status, 400);
    cr_assert_str_eq (gwh_call_header (reply, "RateLimit-Policy"), "\"key\";q=2;w=200");
    cr_assert_str_eq (gwh_call_header (reply, "RateLimit"), "\"key\";r=1;t=100");
    //  One left, then refused by the key limit.
    s_call (&gateway, curl, "GET", "/api/v1/workspaces", GWH_KEY, NULL, &reply);
    cr_assert_eq (reply->status, 200);
    cr_assert_str_eq (gwh_call_header (reply, "RateLimit"), "\"key\";r=0;t=200");
    s_call (&gateway, curl, "GET", "/api/v1/workspaces", GWH_KEY, NULL, &reply);
    cr_assert_eq (reply->status, 429);
    cr_assert_str_eq (reply->reply,
                      "{\"error\":\"Rate limit exceeded: key (0.01 requests/s "
                      "per API key, burst 2).\",\"limit\":\"key\"}");
    int retry = atoi (gwh_call_header (reply, "Retry-After"));
    cr_assert (retry >= 99 && retry <= 100, "Retry-After %d", retry);
    cr_assert_eq (s_stat (&gateway, "key", "allowed"), 2);
    cr_assert_eq (s_stat (&gateway, "key", "rejected"), 1);
    cr_assert_eq (s_stat (&gateway, "key", "keys"), 1);
    cr_assert_eq (atomic_load (&chatd->requests), 1, "the 400 never reached chatd");

    gwh_call_destroy (&reply);
    curl_easy_cleanup (curl);
    gwh_daemon_destroy (&chatd);
    gwh_gateway_stop (&gateway);
}

Test (gw_limits, gateway_made_failures_carry_the_headers_too)
{
    //  No daemon: the broker answers 503, built in gw_exchange, which
    //  carries the headers the HTTP thread attached.
    gw_limits_config_t limits = {.global_rps = 100, .global_burst = 10, .max_keys = 100};
    gwh_gateway_t gateway;
    s_gateway_start (&gateway, &limits);
    CURL *curl = curl_easy_init ();
    gwh_call_t *reply = NULL;
    s_call (&gateway, curl, "GET", "/api/v1/workspaces", GWH_KEY, NULL, &reply);
    cr_assert_eq (reply->status, 503, "%s", reply->reply);
    cr_assert_str_eq (gwh_call_header (reply, "RateLimit-Policy"), "\"global\";q=10;w=1");
    cr_assert_str_eq (gwh_call_header (reply, "RateLimit"), "\"global\";r=9;t=1");
    cr_assert_str_eq (gwh_call_header (reply, "Retry-After"), "1");
    gwh_call_destroy (&reply);
    curl_easy_cleanup (curl);
    gwh_gateway_stop (&gateway);
}

Test (gw_limits, no_limit_configured_forwards_everything_without_headers)
{
    gw_limits_config_t limits = {.max_keys = 100};
    gwh_gateway_t gateway;
    s_gateway_start (&gateway, &limits);
    gwh_daemon_t *chatd = gwh_daemon_new_answering (&gateway, "chat", "chat-1");
    CURL *curl = curl_easy_init ();
    gwh_wait_instance (&gateway, "chat");
    for (int i = 0; i < 30; i++) {
        gwh_call_t *reply = NULL;
        s_call (&gateway, curl, "POST", "/api/v1/workspace/demo/chat", GWH_KEY,
                "{\"message\":\"hi\"}", &reply);
        cr_assert_eq (reply->status, 200);
        cr_assert_str_eq (gwh_call_header (reply, "RateLimit"), "");
        cr_assert_str_eq (gwh_call_header (reply, "RateLimit-Policy"), "");
        gwh_call_destroy (&reply);
    }
    cr_assert_eq (atomic_load (&chatd->requests), 30);
    curl_easy_cleanup (curl);
    gwh_daemon_destroy (&chatd);
    gwh_gateway_stop (&gateway);
}
