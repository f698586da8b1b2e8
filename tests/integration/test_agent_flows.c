/*  test_agent_flows.c: agent flows end to end. Each test starts a small
    HTTP server on loopback (tests/agent_http) and the suite with
    AGENT_HTTP_ALLOWLIST=localhost, then talks HTTP to the gateway: flows
    are checked when saved; a run sends the right request with its
    variables substituted and keeps the response; directOutput ends a flow;
    a failing step stops it with its error; loopback is refused without the
    allowlist, also behind a redirect from an allowed host; runs stream SSE
    step events; six slow runs never go more than two at a time (the queue);
    a client that hangs up cancels the call in flight and frees its slot;
    an origin that keeps failing (5xx, not a flow's own 4xx) opens its own
    circuit, so its flow fails fast while every other flow runs on, and the
    LLM provider failing opens the `agent` circuit (503 for every run);
    unsafe values (line breaks in headers, oversized substitutions) are
    refused and error messages stay valid JSON. */
#include <criterion/criterion.h>
#include <curl/curl.h>
#include <pthread.h>
#include <unistd.h>
#include "agent_http_server.h"
#include "it_harness.h"
#include <signal.h>

static it_suite_t s_suite;
static ah_server_t *s_server;

//  The server, then the suite with these settings and extra ones
//  (NULL-terminated; may be NULL).
static void
s_start_with (const char *const *extra)
{
    s_server = ah_server_start ();
    const char *env[16] = {"AGENT_HTTP_ALLOWLIST=localhost",
                           "AGENT_CIRCUIT_FAILURE_THRESHOLD=3",
                           "AGENT_CIRCUIT_RESET_MS=60000", "AGENT_STEP_TIMEOUT_MS=20000"};
    size_t n = 4;
    for (size_t i = 0; extra && extra[i] && n < 15; i++)
        env[n++] = extra[i];
    env[n] = NULL;
    it_suite_start (&s_suite, env);
}

static void
s_start (void)
{
    s_start_with (NULL);
}

static void
s_stop (void)
{
    it_suite_stop (&s_suite);
    ah_server_stop (&s_server);
}

//  "http://localhost:PORT" + path, in a static buffer per call site's use.
static char *
s_target (char *out, size_t size, const char *host, const char *path)
{
    snprintf (out, size, "http://%.64s:%d%.200s", host, ah_server_port (s_server), path);
    return out;
}

static json_t *
s_request (const char *method, const char *path, const char *body, long *status)
{
    char url[512];
    it_url (&s_suite, url, sizeof url, path);
    it_response_t r;
    it_http (method, url, body, true, &r);
    *status = r.status;
    json_t *json = it_json (&r);
    it_response_free (&r);
    return json;
}

//  Create a flow from its steps (JSON text); return its uuid (static).
static const char *
s_create (const char *steps)
{
    static char uuid[64];
    char *body = malloc (strlen (steps) + 64);
    sprintf (body, "{\"name\":\"test flow\",\"steps\":%s}", steps);
    long status;
    json_t *reply = s_request ("POST", "/api/v1/agent-flows", body, &status);
    free (body);
    cr_assert_eq (status, 200, "create: %ld %s", status, json_dumps (reply, 0));
    const char *value = it_str (json_object_get (reply, "flow"), "uuid");
    cr_assert (value);
    snprintf (uuid, sizeof uuid, "%s", value);
    json_decref (reply);
    return uuid;
}

static json_t *
s_run (const char *uuid, const char *body, long *status)
{
    char path[160];
    snprintf (path, sizeof path, "/api/v1/agent-flows/%s/run", uuid);
    return s_request ("POST", path, body, status);
}

//  The error a flow definition gets when saved.
static char *
s_refused (const char *steps)
{
    char *body = malloc (strlen (steps) + 64);
    sprintf (body, "{\"name\":\"bad\",\"steps\":%s}", steps);
    long status;
    json_t *reply = s_request ("POST", "/api/v1/agent-flows", body, &status);
    free (body);
    cr_assert_eq (status, 400, "%s was accepted", steps);
    char *error = strdup (it_str (reply, "error"));
    json_decref (reply);
    return error;
}

Test (agent_flows, crud_validation_toggle_and_not_found, .timeout = 180)
{
    s_start ();
    long status;
    //  Bad definitions, each with its message.
    struct {
        const char *steps, *message;
    } bad[] = {
        {"[{\"type\":\"teleport\",\"config\":{}}]",
         "steps[0]: unknown step type 'teleport'"},
        {"[{\"type\":\"apiCall\",\"config\":{\"method\":\"GET\"}}]",
         "steps[0] (apiCall): config.url is required"},
        {"[{\"type\":\"start\",\"config\":{}},{\"type\":\"llmInstruction\",\"config\":"
         "{\"instruction\":\"hi ${who}\"}}]",
         "steps[1] (llmInstruction): config.instruction uses ${who}, which no start "
         "variable or earlier step defines"},
        {"[{\"type\":\"webScraping\",\"config\":{\"url\":\"http://x\",\"querySelector\":"
         "\"a:hover\"}}]",
         "steps[0] (webScraping): config.querySelector"},
        {"{\"not\":\"steps\"}", "steps must be an array"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char *error = s_refused (bad[i].steps);
        cr_expect (strstr (error, bad[i].message), "'%s' does not say '%s'", error,
                   bad[i].message);
        free (error);
    }
    json_t *reply = s_request ("POST", "/api/v1/agent-flows", "{\"steps\":[]}", &status);
    cr_assert_eq (status, 400);
    cr_assert_str_eq (it_str (reply, "error"), "name is required (a non-empty string)");
    json_decref (reply);

    //  Create, list, get, update, toggle, delete.
    const char *uuid = s_create ("[{\"type\":\"start\",\"config\":{\"variables\":"
                                 "[{\"name\":\"a\",\"value\":\"1\"}]}}]");
    char path[160], uuid_copy[64];
    snprintf (uuid_copy, sizeof uuid_copy, "%s", uuid);
    reply = s_request ("GET", "/api/v1/agent-flows", NULL, &status);
    cr_assert_eq (status, 200);
    cr_assert_eq (json_array_size (json_object_get (reply, "flows")), 1);
    json_decref (reply);
    snprintf (path, sizeof path, "/api/v1/agent-flows/%s", uuid_copy);
    reply =
        s_request ("PUT", path, "{\"name\":\"renamed\",\"description\":\"d\"}", &status);
    cr_assert_eq (status, 200);
    cr_assert_str_eq (it_str (json_object_get (reply, "flow"), "name"), "renamed");
    json_decref (reply);
    reply = s_request ("PUT", path, "{\"steps\":[{\"type\":\"nope\",\"config\":{}}]}",
                       &status);
    cr_assert_eq (status, 400);
    json_decref (reply);
    reply = s_request ("GET", path, NULL, &status);
    cr_assert_eq (status, 200);
    json_t *flow = json_object_get (reply, "flow");
    cr_assert_str_eq (it_str (flow, "name"), "renamed");
    cr_assert_str_eq (it_str (flow, "description"), "d");
    cr_assert (json_is_true (json_object_get (flow, "active")));
    cr_assert_eq (json_array_size (json_object_get (flow, "steps")), 1);
    json_decref (reply);

    snprintf (path, sizeof path, "/api/v1/agent-flows/%s/toggle", uuid_copy);
    reply = s_request ("POST", path, "{\"active\":false}", &status);
    cr_assert_eq (status, 200);
    cr_assert (
        json_is_false (json_object_get (json_object_get (reply, "flow"), "active")));
    json_decref (reply);
    reply = s_run (uuid_copy, "{}", &status);
    cr_assert_eq (status, 409, "an inactive flow ran: %ld", status);
    cr_assert (strstr (it_str (reply, "error"), "inactive"));
    json_decref (reply);
    reply = s_request ("POST", path, "{}", &status); //  no active: flips
    cr_assert (
        json_is_true (json_object_get (json_object_get (reply, "flow"), "active")));
    json_decref (reply);
    reply = s_run (uuid_copy, "{\"variables\":{\"a\":\"2\"}}", &status);
    cr_assert_eq (status, 200);
    cr_assert (json_is_true (json_object_get (reply, "success")));
    cr_assert_str_eq (it_str (json_object_get (reply, "variables"), "a"), "2");
    json_decref (reply);

    snprintf (path, sizeof path, "/api/v1/agent-flows/%s", uuid_copy);
    reply = s_request ("DELETE", path, NULL, &status);
    cr_assert_eq (status, 200);
    json_decref (reply);
    const char *missing[][2] = {
        {"GET", ""}, {"DELETE", ""}, {"POST", "/run"}, {"POST", "/toggle"}, {"PUT", ""}};
    for (size_t i = 0; i < sizeof missing / sizeof missing[0]; i++) {
        snprintf (path, sizeof path, "/api/v1/agent-flows/%s%s", uuid_copy,
                  missing[i][1]);
        reply = s_request (missing[i][0], path, "{}", &status);
        cr_expect_eq (status, 404, "%s %s: %ld", missing[i][0], path, status);
        cr_expect (strstr (it_str (reply, "error"), "not found"));
        json_decref (reply);
    }
    s_stop ();
}

//  One change of a flow, on a thread.
typedef struct {
    const char *method;
    char path[160];
    const char *body;
    long status;
    pthread_t thread;
} s_change_t;

static void *
s_change (void *arg)
{
    s_change_t *change = (s_change_t *) arg;
    json_decref (s_request (change->method, change->path, change->body, &change->status));
    return NULL;
}

//  Two changes of one flow at once, then the flow as it is.
static json_t *
s_race (const char *uuid, s_change_t changes[2])
{
    for (int i = 0; i < 2; i++)
        pthread_create (&changes[i].thread, NULL, s_change, &changes[i]);
    for (int i = 0; i < 2; i++) {
        pthread_join (changes[i].thread, NULL);
        cr_assert_eq (changes[i].status, 200, "%s %s", changes[i].method,
                      changes[i].path);
    }
    char path[160];
    snprintf (path, sizeof path, "/api/v1/agent-flows/%s", uuid);
    long status;
    json_t *reply = s_request ("GET", path, NULL, &status);
    cr_assert_eq (status, 200);
    return reply;
}

//  A concurrency audit: agentd read a flow and wrote it back in two steps,
//  so of two changes at once one could be lost while both answered 200 (a
//  flip of two toggles in 31 of 100 pairs, a field of two PUTs in 41).
Test (agent_flows, changes_of_one_flow_at_once_are_all_kept, .timeout = 180)
{
    s_start ();
    const char *steps = "[{\"type\":\"start\",\"config\":{\"variables\":[]}}]";
    for (int round = 0; round < 25; round++) {
        char uuid[64];
        snprintf (uuid, sizeof uuid, "%s", s_create (steps));
        s_change_t flips[2] = {{.method = "POST", .body = "{}"},
                               {.method = "POST", .body = "{}"}};
        for (int i = 0; i < 2; i++)
            snprintf (flips[i].path, sizeof flips[i].path,
                      "/api/v1/agent-flows/%s/toggle", uuid);
        json_t *reply = s_race (uuid, flips);
        json_t *flow = json_object_get (reply, "flow");
        cr_assert (json_is_true (json_object_get (flow, "active")),
                   "round %d: two flips left the flow inactive", round);
        json_decref (reply);

        s_change_t edits[2] = {{.method = "PUT", .body = "{\"name\":\"n1\"}"},
                               {.method = "PUT", .body = "{\"description\":\"d1\"}"}};
        for (int i = 0; i < 2; i++)
            snprintf (edits[i].path, sizeof edits[i].path, "/api/v1/agent-flows/%s",
                      uuid);
        reply = s_race (uuid, edits);
        flow = json_object_get (reply, "flow");
        cr_assert_str_eq (it_str (flow, "name"), "n1", "round %d: a PUT was lost", round);
        cr_assert_str_eq (it_str (flow, "description"), "d1", "round %d: a PUT was lost",
                          round);
        json_decref (reply);
    }
    s_stop ();
}

Test (agent_flows, runs_substitute_call_store_and_stop, .timeout = 180)
{
    s_start ();
    long status;
    char url[256], steps[4096];
    //  A call with substituted variables: method, path, header and body.
    snprintf (
        steps, sizeof steps,
        "[{\"type\":\"start\",\"config\":{\"variables\":[{\"name\":\"city\",\"value\":"
        "\"Paris\"},{\"name\":\"token\",\"value\":\"t0\"}]}},"
        "{\"type\":\"apiCall\",\"config\":{\"url\":\"%s\",\"method\":\"POST\","
        "\"headers\":[{\"key\":\"X-Token\",\"value\":\"${token}\"}],\"bodyType\":"
        "\"json\","
        "\"body\":\"{\\\"city\\\":\\\"${city}\\\"}\",\"responseVariable\":\"reply\"}},"
        "{\"type\":\"llmInstruction\",\"config\":{\"instruction\":\"Say ${reply.method} "
        "${reply.headers.x-token}\",\"resultVariable\":\"said\"}}]",
        s_target (url, sizeof url, "localhost", "/echo/${city}?q=${token}"));
    char uuid[64];
    snprintf (uuid, sizeof uuid, "%s", s_create (steps));
    json_t *reply = s_run (uuid, "{\"variables\":{\"token\":\"secret-1\"}}", &status);
    cr_assert_eq (status, 200);
    cr_assert (json_is_true (json_object_get (reply, "success")), "%s",
               json_dumps (reply, 0));
    char *last = ah_server_last (s_server);
    json_t *seen = json_loads (last, 0, NULL);
    free (last);
    cr_assert_str_eq (it_str (seen, "method"), "POST");
    cr_assert_str_eq (it_str (seen, "path"), "/echo/Paris?q=secret-1");
    cr_assert_str_eq (it_str (json_object_get (seen, "headers"), "x-token"), "secret-1");
    cr_assert_str_eq (it_str (json_object_get (seen, "headers"), "content-type"),
                      "application/json");
    cr_assert_str_eq (it_str (seen, "body"), "{\"city\":\"Paris\"}");
    json_decref (seen);
    //  The response, parsed, is in the variable; the LLM step used it.
    json_t *vars = json_object_get (reply, "variables");
    cr_assert_str_eq (it_str (json_object_get (vars, "reply"), "path"),
                      "/echo/Paris?q=secret-1");
    cr_assert (strstr (it_str (vars, "said"), "Say POST secret-1"), "%s",
               it_str (vars, "said"));
    cr_assert_eq (json_array_size (json_object_get (reply, "results")), 3);
    cr_assert (json_is_null (json_object_get (reply, "directOutput")));
    json_decref (reply);

    //  directOutput ends the flow with that step's output.
    snprintf (steps, sizeof steps,
              "[{\"type\":\"webScraping\",\"config\":{\"url\":\"%s\",\"querySelector\":"
              "\"#main p.lead\",\"resultVariable\":\"lead\",\"directOutput\":true}},"
              "{\"type\":\"apiCall\",\"config\":{\"url\":\"%s\"}}]",
              s_target (url, sizeof url, "localhost", "/page"),
              s_target (url + 128, 128, "localhost", "/echo/never"));
    snprintf (uuid, sizeof uuid, "%s", s_create (steps));
    ah_server_reset (s_server);
    reply = s_run (uuid, NULL, &status);
    cr_assert_eq (status, 200);
    cr_assert (json_is_true (json_object_get (reply, "success")));
    cr_assert_str_eq (it_str (reply, "directOutput"), "First bold para");
    cr_assert_eq (json_array_size (json_object_get (reply, "results")), 1);
    cr_assert_eq (ah_server_hits (s_server, "/echo"), 0, "a step after directOutput ran");
    json_decref (reply);

    //  A failing step stops the flow with its error.
    snprintf (steps, sizeof steps,
              "[{\"type\":\"apiCall\",\"config\":{\"url\":\"%s\"}},"
              "{\"type\":\"apiCall\",\"config\":{\"url\":\"%s\"}}]",
              s_target (url, sizeof url, "localhost", "/status/404"),
              s_target (url + 128, 128, "localhost", "/echo/never"));
    snprintf (uuid, sizeof uuid, "%s", s_create (steps));
    reply = s_run (uuid, NULL, &status);
    cr_assert_eq (status, 200);
    cr_assert (json_is_false (json_object_get (reply, "success")));
    cr_assert (strstr (it_str (reply, "error"), "steps[0] (apiCall)"), "%s",
               it_str (reply, "error"));
    cr_assert (strstr (it_str (reply, "error"), "HTTP 404"), "%s",
               it_str (reply, "error"));
    cr_assert_eq (json_array_size (json_object_get (reply, "results")), 1);
    cr_assert_eq (ah_server_hits (s_server, "/echo"), 0, "a step after the failure ran");
    json_decref (reply);

    //  SSRF: loopback by address is not allowlisted (only "localhost" is).
    snprintf (steps, sizeof steps, "[{\"type\":\"apiCall\",\"config\":{\"url\":\"%s\"}}]",
              s_target (url, sizeof url, "127.0.0.1", "/echo/ssrf"));
    snprintf (uuid, sizeof uuid, "%s", s_create (steps));
    reply = s_run (uuid, NULL, &status);
    cr_assert (json_is_false (json_object_get (reply, "success")));
    cr_assert (strstr (it_str (reply, "error"), "refused to connect to 127.0.0.1"), "%s",
               it_str (reply, "error"));
    cr_assert (strstr (it_str (reply, "error"), "AGENT_HTTP_ALLOWLIST"));
    json_decref (reply);
    //  ... also behind a redirect from the allowlisted host.
    char target[128];
    s_target (target, sizeof target, "127.0.0.1", "/echo/ssrf");
    char path[256];
    snprintf (path, sizeof path, "/redirect?to=%s", target);
    snprintf (steps, sizeof steps, "[{\"type\":\"apiCall\",\"config\":{\"url\":\"%s\"}}]",
              s_target (url, sizeof url, "localhost", path));
    snprintf (uuid, sizeof uuid, "%s", s_create (steps));
    reply = s_run (uuid, NULL, &status);
    cr_assert (json_is_false (json_object_get (reply, "success")));
    cr_assert (strstr (it_str (reply, "error"), "refused to connect to 127.0.0.1"), "%s",
               it_str (reply, "error"));
    json_decref (reply);
    cr_assert_eq (ah_server_hits (s_server, "/redirect"), 1);
    cr_assert_eq (ah_server_hits (s_server, "/echo"), 0, "loopback was reached");

    //  Streaming: flowStarted, stepStarted/stepFinished per step, flowFinished.
    snprintf (steps, sizeof steps,
              "[{\"type\":\"start\",\"config\":{\"variables\":[{\"name\":\"x\",\"value\":"
              "\"1\"}]}},{\"type\":\"apiCall\",\"config\":{\"url\":\"%s\","
              "\"responseVariable\":\"r\"}},{\"type\":\"apiCall\",\"config\":{\"url\":\"%"
              "s\"}}]",
              s_target (url, sizeof url, "localhost", "/echo/${x}"),
              s_target (url + 128, 128, "localhost", "/status/500"));
    snprintf (uuid, sizeof uuid, "%s", s_create (steps));
    char stream_url[256];
    snprintf (path, sizeof path, "/api/v1/agent-flows/%s/run", uuid);
    it_url (&s_suite, stream_url, sizeof stream_url, path);
    it_stream_t stream;
    it_stream_init (&stream, stream_url, "{\"stream\":true}", 0);
    it_stream_run (&stream);
    cr_assert_eq (stream.status, 200);
    cr_assert (strstr (stream.headers, "text/event-stream"));
    json_t *events = it_events (stream.data);
    const char *types[] = {"flowStarted",  "stepStarted", "stepFinished", "stepStarted",
                           "stepFinished", "stepStarted", "stepFinished", "flowFinished"};
    cr_assert_eq (json_array_size (events), 8, "%s", stream.data);
    for (size_t i = 0; i < 8; i++)
        cr_assert_str_eq (it_str (json_array_get (events, i), "type"), types[i]);
    cr_assert (json_is_true (json_object_get (json_array_get (events, 4), "success")));
    cr_assert_str_eq (
        it_str (json_object_get (json_array_get (events, 4), "output"), "path"),
        "/echo/1");
    json_t *failed = json_array_get (events, 6);
    cr_assert (json_is_false (json_object_get (failed, "success")));
    cr_assert (strstr (it_str (failed, "error"), "HTTP 500"));
    json_t *finished = json_array_get (events, 7);
    cr_assert (json_is_false (json_object_get (finished, "success")));
    cr_assert_str_eq (it_str (json_object_get (finished, "variables"), "x"), "1");
    json_decref (events);
    it_stream_free (&stream);
    s_stop ();
}

//  Values that must not reach a request, and messages that must stay JSON:
//  a line break in a header value (from a variable) would add headers of
//  its own; a field naming a large variable many times must not take all
//  memory; an error that quotes a URL or name cut inside a UTF-8 character
//  still has its result entry and error (and a 409 stays a 409).
Test (agent_flows, unsafe_values_and_cut_messages, .timeout = 180)
{
    s_start ();
    long status;
    char url[256], steps[4096], uuid[64];
    //  Header injection through a run's variable.
    snprintf (steps, sizeof steps,
              "[{\"type\":\"start\",\"config\":{\"variables\":[{\"name\":\"v\","
              "\"value\":\"ok\"}]}},{\"type\":\"apiCall\",\"config\":{\"url\":\"%s\","
              "\"headers\":[{\"key\":\"X-A\",\"value\":\"${v}\"}]}}]",
              s_target (url, sizeof url, "localhost", "/echo/header"));
    snprintf (uuid, sizeof uuid, "%s", s_create (steps));
    json_t *reply =
        s_run (uuid, "{\"variables\":{\"v\":\"a\\r\\nX-Injected: 1\"}}", &status);
    cr_assert_eq (status, 200);
    cr_assert (json_is_false (json_object_get (reply, "success")), "%s",
               json_dumps (reply, 0));
    cr_assert (strstr (it_str (reply, "error"), "steps[1] (apiCall)"), "%s",
               it_str (reply, "error"));
    cr_assert (strstr (it_str (reply, "error"), "line break"), "%s",
               it_str (reply, "error"));
    cr_assert_eq (json_array_size (json_object_get (reply, "results")), 2);
    json_decref (reply);
    cr_assert_eq (ah_server_hits (s_server, "/echo"), 0, "the header was sent");

    //  17 times a 1 MiB variable: past AGENT_FLOW_MAX_TEXT (16 MiB).
    snprintf (steps, sizeof steps,
              "[{\"type\":\"start\",\"config\":{\"variables\":[{\"name\":\"big\","
              "\"value\":\"\"}]}},{\"type\":\"apiCall\",\"config\":{\"url\":\"%s\","
              "\"method\":\"POST\",\"bodyType\":\"text\",\"body\":\"%s\"}}]",
              s_target (url, sizeof url, "localhost", "/echo/big"),
              "${big}${big}${big}${big}${big}${big}${big}${big}${big}${big}${big}${big}"
              "${big}${big}${big}${big}${big}");
    snprintf (uuid, sizeof uuid, "%s", s_create (steps));
    size_t big = 1 << 20;
    char *body = malloc (big + 64);
    strcpy (body, "{\"variables\":{\"big\":\"");
    size_t used = strlen (body);
    memset (body + used, 'x', big);
    strcpy (body + used + big, "\"}}");
    reply = s_run (uuid, body, &status);
    free (body);
    cr_assert_eq (status, 200);
    cr_assert (json_is_false (json_object_get (reply, "success")));
    cr_assert (strstr (it_str (reply, "error"), "config.body is longer than"), "%s",
               it_str (reply, "error"));
    json_decref (reply);
    cr_assert_eq (ah_server_hits (s_server, "/echo"), 0, "the body was sent");

    //  An error quoting a URL cut at 200 bytes, inside a 3-byte character.
    char bad_url[512] = "ftp://";
    for (int i = 0; i < 100; i++)
        strcat (bad_url, "\xe2\x82\xac");
    snprintf (steps, sizeof steps, "[{\"type\":\"apiCall\",\"config\":{\"url\":\"%s\"}}]",
              bad_url);
    snprintf (uuid, sizeof uuid, "%s", s_create (steps));
    reply = s_run (uuid, NULL, &status);
    cr_assert_eq (status, 200);
    cr_assert (json_is_false (json_object_get (reply, "success")));
    cr_assert (it_str (reply, "error") &&
                   strstr (it_str (reply, "error"), "only http and https"),
               "%s", json_dumps (reply, 0));
    json_t *results = json_object_get (reply, "results");
    cr_assert_eq (json_array_size (results), 1, "%s", json_dumps (reply, 0));
    cr_assert (strstr (it_str (json_array_get (results, 0), "error"), "only http"));
    json_decref (reply);

    //  An inactive flow whose name is cut inside a character: still 409.
    char create[512] = "{\"active\":false,\"steps\":[],\"name\":\"";
    for (int i = 0; i < 40; i++)
        strcat (create, "\xe2\x82\xac");
    strcat (create, "\"}");
    reply = s_request ("POST", "/api/v1/agent-flows", create, &status);
    cr_assert_eq (status, 200);
    snprintf (uuid, sizeof uuid, "%s", it_str (json_object_get (reply, "flow"), "uuid"));
    json_decref (reply);
    reply = s_run (uuid, NULL, &status);
    cr_assert_eq (status, 409, "%ld %s", status, json_dumps (reply, 0));
    cr_assert (strstr (it_str (reply, "error"), "inactive"));
    json_decref (reply);
    s_stop ();
}

//  One run on its own thread.
typedef struct {
    const char *uuid;
    const char *body;
    long status;
    bool success;
    char error[512]; //  the reply's error, "" when none
} s_runner_t;

static void *
s_runner (void *arg)
{
    s_runner_t *runner = (s_runner_t *) arg;
    json_t *reply = s_run (runner->uuid, runner->body, &runner->status);
    runner->success = json_is_true (json_object_get (reply, "success"));
    const char *error = it_str (reply, "error");
    snprintf (runner->error, sizeof runner->error, "%s", error ? error : "");
    json_decref (reply);
    return NULL;
}

//  A streaming run whose client hangs up after timeout_ms.
static void *
s_hang_up (void *arg)
{
    const char *uuid = (const char *) arg;
    char path[160], url[256];
    snprintf (path, sizeof path, "/api/v1/agent-flows/%s/run", uuid);
    it_url (&s_suite, url, sizeof url, path);
    CURL *curl = curl_easy_init ();
    struct curl_slist *headers =
        curl_slist_append (NULL, "Authorization: Bearer " IT_ADMIN_KEY);
    headers = curl_slist_append (headers, "Content-Type: application/json");
    curl_easy_setopt (curl, CURLOPT_URL, url);
    curl_easy_setopt (curl, CURLOPT_HTTPHEADER, headers);
    curl_easy_setopt (curl, CURLOPT_POSTFIELDS, "{\"stream\":true}");
    curl_easy_setopt (curl, CURLOPT_TIMEOUT_MS, 1500L);
    curl_easy_setopt (curl, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt (curl, CURLOPT_WRITEFUNCTION, fwrite);
    FILE *sink = fopen ("/dev/null", "w");
    curl_easy_setopt (curl, CURLOPT_WRITEDATA, sink);
    curl_easy_perform (curl);
    fclose (sink);
    curl_slist_free_all (headers);
    curl_easy_cleanup (curl);
    return NULL;
}

//  The value of a series family of agentd in /api/metrics's aggregate (the
//  service's snapshot: one instance here); -1 when it is missing.
static double
s_agent_metric (json_t *metrics, const char *name)
{
    json_t *agent = json_object_get (
        json_object_get (json_object_get (metrics, "aggregate"), "services"), "agent");
    json_t *families = json_object_get (json_object_get (agent, "snapshot"), "families");
    size_t i;
    json_t *family;
    json_array_foreach (families, i, family)
    {
        if (strcmp (it_str (family, "name"), name))
            continue;
        json_t *series = json_object_get (family, "series");
        cr_assert_eq (json_array_size (series), 1, "%s has labels", name);
        return json_number_value (json_object_get (json_array_get (series, 0), "value"));
    }
    return -1;
}

//  The aggregate says one origin's circuit is open and two steps were
//  refused by it (the sync run and the streamed one).
static bool
s_origin_open_reported (void *arg)
{
    (void) arg;
    long status;
    json_t *metrics = it_get_json (&s_suite, "/api/metrics", &status);
    bool ok = status == 200 &&
              s_agent_metric (metrics, "llmrt_agent_origin_circuits_open") == 1 &&
              s_agent_metric (metrics, "llmrt_agent_origin_calls_refused_total") == 2;
    json_decref (metrics);
    return ok;
}

static bool
s_two_gone (void *arg)
{
    (void) arg;
    return ah_server_gone (s_server) >= 2;
}

Test (agent_flows, queue_bounds_runs_cancel_frees_slots_breaker_trips, .timeout = 240)
{
    s_start ();
    long status;
    char url[256], steps[1024];
    //  Six slow runs at once: never more than two at a time reach the server.
    snprintf (steps, sizeof steps, "[{\"type\":\"apiCall\",\"config\":{\"url\":\"%s\"}}]",
              s_target (url, sizeof url, "localhost", "/slow?ms=500"));
    char uuid[64];
    snprintf (uuid, sizeof uuid, "%s", s_create (steps));
    s_runner_t runners[6];
    pthread_t threads[6];
    for (int i = 0; i < 6; i++) {
        runners[i] = (s_runner_t){uuid, "{}", 0, false, ""};
        pthread_create (&threads[i], NULL, s_runner, &runners[i]);
    }
    for (int i = 0; i < 6; i++) {
        pthread_join (threads[i], NULL);
        cr_expect_eq (runners[i].status, 200);
        cr_expect (runners[i].success, "run %d failed", i);
    }
    cr_assert_eq (ah_server_hits (s_server, "/slow"), 6);
    cr_assert_eq (ah_server_max_concurrent (s_server), 2,
                  "%d runs reached the server at once (AGENT_FLOW_QUEUE_CONCURRENCY=2)",
                  ah_server_max_concurrent (s_server));

    //  Two streaming clients hang up in the middle of a 30 s call: the server
    //  sees both go, and both queue slots come back (a quick run completes).
    ah_server_reset (s_server);
    snprintf (steps, sizeof steps, "[{\"type\":\"apiCall\",\"config\":{\"url\":\"%s\"}}]",
              s_target (url, sizeof url, "localhost", "/slow?ms=30000"));
    char slow[64];
    snprintf (slow, sizeof slow, "%s", s_create (steps));
    pthread_t hang[2];
    for (int i = 0; i < 2; i++)
        pthread_create (&hang[i], NULL, s_hang_up, slow);
    for (int i = 0; i < 2; i++)
        pthread_join (hang[i], NULL);
    cr_assert (it_wait (s_two_gone, NULL, 10000), "the server saw %d of 2 clients go",
               ah_server_gone (s_server));
    snprintf (steps, sizeof steps, "[{\"type\":\"apiCall\",\"config\":{\"url\":\"%s\"}}]",
              s_target (url, sizeof url, "localhost", "/echo/quick"));
    char quick[64];
    snprintf (quick, sizeof quick, "%s", s_create (steps));
    long long before = it_now_ms ();
    json_t *reply = s_run (quick, NULL, &status);
    cr_assert_eq (status, 200);
    cr_assert (json_is_true (json_object_get (reply, "success")));
    json_decref (reply);
    cr_log_info ("a run after two cancelled ones took %lld ms", it_now_ms () - before);

    //  A flow's own 4xx opens nothing: every run still reaches the server.
    snprintf (steps, sizeof steps, "[{\"type\":\"apiCall\",\"config\":{\"url\":\"%s\"}}]",
              s_target (url, sizeof url, "localhost", "/status/400"));
    char own[64];
    snprintf (own, sizeof own, "%s", s_create (steps));
    for (int i = 0; i < 4; i++) {
        reply = s_run (own, NULL, &status);
        cr_assert_eq (status, 200, "a 4xx flow opened the agent circuit");
        cr_assert (strstr (it_str (reply, "error"), "HTTP 400"), "run %d: %s", i,
                   it_str (reply, "error"));
        json_decref (reply);
    }
    cr_assert_eq (ah_server_hits (s_server, "/status/400"), 4,
                  "a 4xx opened the origin's circuit");

    //  A flow whose partner API (another origin) answers 503: after three
    //  runs (AGENT_CIRCUIT_FAILURE_THRESHOLD=3) that origin's circuit is
    //  open, and the next run fails at once without calling it...
    ah_server_t *partner = ah_server_start ();
    char target[128];
    snprintf (target, sizeof target, "http://localhost:%d/status/503",
              ah_server_port (partner));
    snprintf (steps, sizeof steps,
              "[{\"type\":\"start\",\"config\":{}},"
              "{\"type\":\"apiCall\",\"config\":{\"url\":\"%s\"}}]",
              target);
    char broken[64];
    snprintf (broken, sizeof broken, "%s", s_create (steps));
    for (int i = 0; i < 3; i++) {
        reply = s_run (broken, NULL, &status);
        cr_assert_eq (status, 200);
        cr_assert (strstr (it_str (reply, "error"), "HTTP 503"), "run %d: %s", i,
                   it_str (reply, "error"));
        json_decref (reply);
    }
    cr_assert_eq (ah_server_hits (partner, "/status/503"), 3);
    char expected[256];
    snprintf (expected, sizeof expected,
              "steps[1] (apiCall): the circuit for http://localhost:%d is open after 3 "
              "consecutive failures; retry after ",
              ah_server_port (partner));
    reply = s_run (broken, NULL, &status);
    cr_assert_eq (status, 200, "the broken flow got %ld", status);
    cr_assert (json_is_false (json_object_get (reply, "success")));
    cr_assert (strstr (it_str (reply, "error"), expected), "%s", it_str (reply, "error"));
    json_t *results = json_object_get (reply, "results");
    cr_assert_eq (json_array_size (results), 2, "%s", json_dumps (reply, 0));
    cr_assert (strstr (it_str (json_array_get (results, 1), "error"), expected));
    json_decref (reply);
    //  ... also streamed: the step's error event, then flowFinished.
    char path[160], stream_url[256];
    snprintf (path, sizeof path, "/api/v1/agent-flows/%s/run", broken);
    it_url (&s_suite, stream_url, sizeof stream_url, path);
    it_stream_t stream;
    it_stream_init (&stream, stream_url, "{\"stream\":true}", 0);
    it_stream_run (&stream);
    cr_assert_eq (stream.status, 200);
    json_t *events = it_events (stream.data);
    cr_assert_eq (json_array_size (events), 6, "%s", stream.data);
    json_t *failed = json_array_get (events, 4);
    cr_assert_str_eq (it_str (failed, "type"), "stepFinished");
    cr_assert (json_is_false (json_object_get (failed, "success")));
    cr_assert (strstr (it_str (failed, "error"), expected), "%s",
               it_str (failed, "error"));
    cr_assert_str_eq (it_str (json_array_get (events, 5), "type"), "flowFinished");
    json_decref (events);
    it_stream_free (&stream);
    cr_assert_eq (ah_server_hits (partner, NULL), 3, "a run called the open origin");
    ah_server_stop (&partner);

    //  Every other flow runs on: one calling another origin, one that only
    //  asks the LLM. Neither is answered 503 by the agent circuit.
    ah_server_reset (s_server);
    reply = s_run (quick, NULL, &status);
    cr_assert_eq (status, 200, "one bad origin paused other flows: %ld %s", status,
                  json_dumps (reply, 0));
    cr_assert (json_is_true (json_object_get (reply, "success")), "%s",
               json_dumps (reply, 0));
    json_decref (reply);
    cr_assert_eq (ah_server_hits (s_server, "/echo/quick"), 1);
    char llm_only[64];
    snprintf (llm_only, sizeof llm_only, "%s",
              s_create ("[{\"type\":\"llmInstruction\",\"config\":{\"instruction\":"
                        "\"Say hi\",\"directOutput\":true}}]"));
    reply = s_run (llm_only, NULL, &status);
    cr_assert_eq (status, 200, "%ld %s", status, json_dumps (reply, 0));
    cr_assert (json_is_true (json_object_get (reply, "success")), "%s",
               json_dumps (reply, 0));
    json_decref (reply);

    //  The metrics say so, without the origin as a label.
    cr_assert (it_wait (s_origin_open_reported, NULL, 10000),
               "llmrt_agent_origin_circuits_open never read 1");
    s_stop ();
}

//  The LLM provider is the upstream every flow shares: when it keeps
//  failing, the `agent` circuit opens and every run is answered 503 with
//  Retry-After before it starts. The provider here is the test server,
//  which answers HTTP 500 to the provider's POST (LLM_BASE_URL's path is
//  /status/500, so the call goes to /status/500/chat/completions).
static bool
s_slow_reached (void *arg)
{
    (void) arg;
    return ah_server_hits (s_server, "/slow") >= 1;
}

Test (agent_flows, a_run_cut_short_by_agentds_shutdown_says_so, .timeout = 120)
{
    //  agentd is stopped (SIGTERM) while a run waits on a 30 s call, and
    //  its drain (300 ms) runs out: the client, still there, hears 503 and
    //  why, not a run "cancelled" as if it had left itself.
    const char *extra[] = {"DRAIN_TIMEOUT_MS=300", NULL};
    s_start_with (extra);
    char url[256], steps[1024];
    snprintf (steps, sizeof steps, "[{\"type\":\"apiCall\",\"config\":{\"url\":\"%s\"}}]",
              s_target (url, sizeof url, "localhost", "/slow?ms=30000"));
    char uuid[64];
    snprintf (uuid, sizeof uuid, "%s", s_create (steps));
    s_runner_t runner = {uuid, "{}", 0, false, ""};
    pthread_t thread;
    pthread_create (&thread, NULL, s_runner, &runner);
    cr_assert (it_wait (s_slow_reached, NULL, 10000), "the run never made its call");
    pid_t agentd[2];
    cr_assert_eq (it_children (s_suite.supervisor, "agentd", agentd, 2), 1);
    kill (agentd[0], SIGTERM);
    pthread_join (thread, NULL);
    cr_assert_eq (runner.status, 503, "%ld %s", runner.status, runner.error);
    cr_assert_not (runner.success);
    cr_assert (strstr (runner.error, "agentd shut down"), "%s", runner.error);
    s_stop ();
}

Test (agent_flows, llm_failures_open_the_agent_circuit, .timeout = 180)
{
    //  The server's port is known once it runs: start it first, then the
    //  suite pointed at it.
    ah_server_t *provider = ah_server_start ();
    char base_url[128];
    snprintf (base_url, sizeof base_url, "LLM_BASE_URL=http://127.0.0.1:%d/status/500",
              ah_server_port (provider));
    const char *extra[] = {"LLM_PROVIDER=openai", base_url, NULL};
    s_start_with (extra);
    long status;
    char uuid[64];
    snprintf (uuid, sizeof uuid, "%s",
              s_create ("[{\"type\":\"llmInstruction\",\"config\":{\"instruction\":"
                        "\"Say hi\"}}]"));
    //  A flow that never asks the LLM says nothing about it: its success
    //  between the provider's failures does not reset their count.
    char url[256], steps[512];
    snprintf (steps, sizeof steps, "[{\"type\":\"apiCall\",\"config\":{\"url\":\"%s\"}}]",
              s_target (url, sizeof url, "localhost", "/echo/fine"));
    char other[64];
    snprintf (other, sizeof other, "%s", s_create (steps));
    for (int i = 0; i < 3; i++) {
        json_t *reply = s_run (uuid, NULL, &status);
        cr_assert_eq (status, 200, "run %d: %ld", i, status);
        cr_assert (json_is_false (json_object_get (reply, "success")));
        cr_assert (strstr (it_str (reply, "error"), "the LLM provider failed"), "%s",
                   it_str (reply, "error"));
        json_decref (reply);
        if (i == 1) {
            reply = s_run (other, NULL, &status);
            cr_assert_eq (status, 200);
            cr_assert (json_is_true (json_object_get (reply, "success")));
            json_decref (reply);
        }
    }
    int calls = ah_server_hits (provider, "/status/500/chat/completions");
    cr_assert_geq (calls, 3, "the provider saw %d calls", calls);

    char path[160];
    snprintf (path, sizeof path, "/api/v1/agent-flows/%s/run", uuid);
    it_url (&s_suite, url, sizeof url, path);
    const char *bodies[] = {"{}", "{\"stream\":true}"};
    for (int i = 0; i < 2; i++) {
        it_response_t r;
        it_http ("POST", url, bodies[i], true, &r);
        cr_assert_eq (r.status, 503, "the agent circuit did not open: %ld %s", r.status,
                      r.body);
        cr_assert (strcasestr (r.headers, "Retry-After:"), "%s", r.headers);
        cr_assert (strstr (r.body, "The agent circuit is open"), "%s", r.body);
        cr_assert (strstr (r.body, "LLM provider"), "%s", r.body);
        it_response_free (&r);
    }
    cr_assert_eq (ah_server_hits (provider, "/status/500/chat/completions"), calls,
                  "a refused run reached the provider");
    //  A flow that never asks the LLM runs on while its circuit is open.
    json_t *reply = s_run (other, NULL, &status);
    cr_assert_eq (status, 200, "an apiCall-only flow was refused: %ld", status);
    cr_assert (json_is_true (json_object_get (reply, "success")));
    json_decref (reply);
    s_stop ();
    ah_server_stop (&provider);
}
