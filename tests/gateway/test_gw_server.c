/*  test_gw_server.c: the gateway in this process, as its users see it.

    In front, an HTTP client (libcurl; a call that has to wait for a daemon
    runs on its own thread). Behind, fake daemons: each one a czmq actor
    that owns a DEALER socket named by its instance id, says READY,
    heartbeats by itself (so the test thread never has to), and hands every
    other frame it receives to the test, which answers with cm_msg frames
    as a real daemon would (all in gw_harness). Every wait is a poll with a
    generous timeout; no timing is asserted. */
#include <errno.h>
#include <criterion/criterion.h>
#include <msgpack.h>
#include <sys/socket.h>
#include <unistd.h>
#include "gw_harness.h"

#define S_HEARTBEAT_MS 100   //  the gateway's heartbeat interval
#define S_LIVENESS     3     //  missed intervals before expiry
#define S_TIMEOUT_MS   30000 //  request deadline, unless a test wants one

static void
s_setup (void)
{
    gwh_setup ("test_gw_server", CM_LOG_WARN);
}

TestSuite (gw_server, .init = s_setup, .fini = gwh_teardown, .timeout = 120);

//  Start a gateway on the database in storage_dir (NULL: its own),
//  trusting database API keys for key_ttl_ms.
static void
s_gateway_start_on (gwh_gateway_t *self, int64_t timeout_ms, int64_t max_body,
                    const char *storage_dir, int64_t key_ttl_ms)
{
    gw_config_t config = {.timeout_ms = timeout_ms,
                          .max_body = max_body,
                          .heartbeat_ms = S_HEARTBEAT_MS,
                          .liveness = S_LIVENESS,
                          .health_interval = 100,
                          .storage_dir = (char *) storage_dir,
                          .key_cache_ttl_ms = key_ttl_ms};
    gwh_gateway_start (self, &config);
}

static void
s_gateway_start (gwh_gateway_t *self, int64_t timeout_ms, int64_t max_body)
{
    s_gateway_start_on (self, timeout_ms, max_body, NULL, 500);
}

//  Start a gateway whose requests wait up to wait_ms for an instance
//  (GATEWAY_INSTANCE_WAIT_MS; the others here have 0: 503 at once).
static void
s_gateway_start_waiting (gwh_gateway_t *self, int64_t timeout_ms, int64_t wait_ms)
{
    gw_config_t config = {.timeout_ms = timeout_ms,
                          .heartbeat_ms = S_HEARTBEAT_MS,
                          .liveness = S_LIVENESS,
                          .health_interval = 100,
                          .key_cache_ttl_ms = 500,
                          .instance_wait_ms = wait_ms};
    gwh_gateway_start (self, &config);
}

//  --- tests -----------------------------------------------------------------

Test (gw_server, walkthrough_forward_a_chat_to_a_daemon)
{
    //  A gateway, and one chat daemon that registers with it.
    gwh_gateway_t gateway;
    s_gateway_start (&gateway, S_TIMEOUT_MS, 1 << 20);
    gwh_daemon_t *chatd = gwh_daemon_new (&gateway, "chat", "chat-1", 4);
    gwh_wait_health (&gateway, "services.chat.instances", 1);

    //  A client asks for a chat turn; the call waits on its own thread.
    gwh_call_t *call = gwh_call_new (&gateway, "POST", "/api/v1/workspace/demo/chat",
                                     GWH_KEY, "{\"message\":\"hello\"}");
    gwh_call_start (call);

    //  The daemon gets it as a REQUEST and answers with one FINAL.
    cm_msg_t *request = gwh_daemon_expect (chatd, CM_MSG_REQUEST);
    cr_assert_str_eq (cm_msg_route (request), "/api/v1/workspace/demo/chat");
    gwh_daemon_reply (chatd, CM_MSG_FINAL, cm_msg_request_id (request), 200,
                      "application/json", "{\"textResponse\":\"hi there\"}");
    cm_msg_destroy (&request);

    //  The client has the daemon's answer.
    gwh_call_join (call);
    cr_assert_eq (call->code, CURLE_OK);
    cr_assert_eq (call->status, 200);
    cr_assert_str_eq (call->reply, "{\"textResponse\":\"hi there\"}");
    gwh_call_destroy (&call);

    gwh_daemon_destroy (&chatd);
    gwh_gateway_stop (&gateway);
}

Test (gw_server, operational_routes_need_no_key)
{
    gwh_gateway_t gateway;
    s_gateway_start (&gateway, S_TIMEOUT_MS, 1 << 20);

    gwh_call_t *call = gwh_http (&gateway, "GET", "/api/ping", NULL, NULL);
    cr_assert_eq (call->status, 200);
    cr_assert_str_eq (call->reply, "{\"online\":true}");
    gwh_call_destroy (&call);

    call = gwh_http (&gateway, "GET", "/api/health/live", NULL, NULL);
    cr_assert_eq (call->status, 200);
    json_t *json = gwh_call_json (call);
    cr_assert_str_eq (json_string_value (json_object_get (json, "status")), "ok");
    cr_assert_eq (json_integer_value (json_object_get (json, "pid")), getpid (),
                  "the gateway runs in this process");
    json_decref (json);
    gwh_call_destroy (&call);

    //  No daemon yet: health answers, but says why it is not ready.
    call = gwh_http (&gateway, "GET", "/api/health", NULL, NULL);
    cr_assert_eq (call->status, 503);
    cr_assert_str_eq (gwh_call_header (call, "Retry-After"), "1");
    json = gwh_call_json (call);
    cr_assert_str_eq (json_string_value (json_object_get (json, "status")), "unready");
    //  One reason per missing daemon, each named as users know it (the
    //  database check may not have run yet: that is a reason too).
    char *reasons = json_dumps (json_object_get (json, "reasons"), 0);
    cr_assert (strstr (reasons, "no chatd instance"), "%s", reasons);
    cr_assert (strstr (reasons, "no ingestd instance"), "%s", reasons);
    cr_assert (strstr (reasons, "no agentd instance"), "%s", reasons);
    free (reasons);
    cr_assert (json_is_object (json_object_get (json, "broker")));
    cr_assert (json_is_integer (
        json_object_get (json_object_get (json, "broker"), "dropped_frames")));
    json_decref (json);
    gwh_call_destroy (&call);

    call = gwh_http (&gateway, "GET", "/api/health/ready", NULL, NULL);
    cr_assert_eq (call->status, 503);
    json = gwh_call_json (call);
    cr_assert_str_eq (json_string_value (json_object_get (json, "status")), "unready");
    json_decref (json);
    gwh_call_destroy (&call);

    //  /api/v1/auth is answered by the gateway too, but needs the key.
    call = gwh_http (&gateway, "GET", "/api/v1/auth", GWH_KEY, NULL);
    cr_assert_eq (call->status, 200);
    cr_assert_str_eq (call->reply, "{\"authenticated\":true}");
    gwh_call_destroy (&call);

    gwh_gateway_stop (&gateway);
}

Test (gw_server, health_answers_from_the_first_moment)
{
    //  A probe that comes before the broker has settled (a supervisor or
    //  an orchestrator polling from start-up) gets the whole report.
    for (int round = 0; round < 20; round++) {
        gwh_gateway_t gateway;
        s_gateway_start (&gateway, S_TIMEOUT_MS, 1 << 20);
        gwh_call_t *call = gwh_http (&gateway, "GET", "/api/health", NULL, NULL);
        cr_assert_eq (call->code, CURLE_OK, "round %d: %s", round,
                      curl_easy_strerror (call->code));
        cr_assert_eq (call->status, 503);
        json_t *json = gwh_call_json (call);
        cr_assert (json_is_array (json_object_get (json, "instances")), "%s",
                   call->reply);
        cr_assert (json_is_object (json_object_get (json, "broker")), "%s", call->reply);
        json_decref (json);
        gwh_call_destroy (&call);
        gwh_gateway_stop (&gateway);
    }
}

Test (gw_server, ready_once_every_service_has_an_instance)
{
    gwh_gateway_t gateway;
    s_gateway_start (&gateway, S_TIMEOUT_MS, 1 << 20);
    gwh_daemon_t *chatd = gwh_daemon_new (&gateway, "chat", "chat-1", 4);
    gwh_daemon_t *ingestd = gwh_daemon_new (&gateway, "ingest", "ingest-1", 3);
    gwh_daemon_t *agentd = gwh_daemon_new (&gateway, "agent", "agent-1", 2);
    gwh_wait_health (&gateway, "services.agent.instances", 1);
    gwh_wait_health (&gateway, "services.ingest.instances", 1);
    gwh_wait_health (&gateway, "services.chat.instances", 1);

    //  The database check runs on the health thread: poll until it has.
    gwh_call_t *call = NULL;
    for (int64_t until = cm_clock_mono_ms () + GWH_WAIT_MS;
         cm_clock_mono_ms () < until;) {
        gwh_call_destroy (&call);
        call = gwh_http (&gateway, "GET", "/api/health/ready", NULL, NULL);
        if (call->status == 200)
            break;
        gwh_sleep_ms (20);
    }
    cr_assert_eq (call->status, 200, "%s", call->reply);
    json_t *json = gwh_call_json (call);
    cr_assert_str_eq (json_string_value (json_object_get (json, "status")), "ready");
    cr_assert_eq (json_array_size (json_object_get (json, "reasons")), 0);
    json_decref (json);
    gwh_call_destroy (&call);

    gwh_daemon_destroy (&agentd);
    gwh_daemon_destroy (&ingestd);
    gwh_daemon_destroy (&chatd);
    gwh_gateway_stop (&gateway);
}

Test (gw_server, api_routes_refuse_a_missing_or_wrong_key)
{
    gwh_gateway_t gateway;
    s_gateway_start (&gateway, S_TIMEOUT_MS, 1 << 20);
    const char *keys[] = {NULL, "wrong-key", GWH_KEY "x", ""};
    for (size_t i = 0; i < sizeof keys / sizeof *keys; i++) {
        gwh_call_t *call =
            gwh_http (&gateway, "GET", "/api/v1/workspaces", keys[i], NULL);
        gwh_assert_error (call, 403, "No valid api key found.");
        cr_assert_str_eq (call->reply, "{\"error\":\"No valid api key found.\"}");
        gwh_call_destroy (&call);
    }
    //  Also for a POST with a body, and for a local route that needs a key.
    gwh_call_t *call = gwh_http (&gateway, "POST", "/api/v1/workspace/demo/chat", "nope",
                                 "{\"message\":\"x\"}");
    cr_assert_str_eq (call->reply, "{\"error\":\"No valid api key found.\"}");
    cr_assert_eq (call->status, 403);
    gwh_call_destroy (&call);
    call = gwh_http (&gateway, "GET", "/api/v1/auth", NULL, NULL);
    cr_assert_eq (call->status, 403);
    gwh_call_destroy (&call);
    //  The key must come as a bearer token.
    call = gwh_call_new (&gateway, "GET", "/api/v1/auth", NULL, NULL);
    call->extra[0] = "Authorization: Basic " GWH_KEY;
    gwh_call_run (call);
    cr_assert_eq (call->status, 403);
    gwh_call_destroy (&call);
    gwh_gateway_stop (&gateway);
}

Test (gw_server, unknown_route_is_404_json)
{
    gwh_gateway_t gateway;
    s_gateway_start (&gateway, S_TIMEOUT_MS, 1 << 20);
    gwh_call_t *call = gwh_http (&gateway, "GET", "/api/v1/nothing-here", GWH_KEY, NULL);
    gwh_assert_error (call, 404, "Not found.");
    gwh_call_destroy (&call);
    call = gwh_http (&gateway, "POST", "/nowhere?x=1", NULL, "{}");
    gwh_assert_error (call, 404, "Not found.");
    gwh_call_destroy (&call);
    gwh_gateway_stop (&gateway);
}

Test (gw_server, wrong_method_is_405_with_allow)
{
    gwh_gateway_t gateway;
    s_gateway_start (&gateway, S_TIMEOUT_MS, 1 << 20);
    gwh_call_t *call = gwh_http (&gateway, "DELETE", "/api/ping", NULL, NULL);
    gwh_assert_error (call, 405, "Method not allowed.");
    cr_assert_str_eq (gwh_call_header (call, "Allow"), "GET, HEAD");
    gwh_call_destroy (&call);
    //  HEAD is GET without the body.
    call = gwh_http (&gateway, "HEAD", "/api/ping", NULL, NULL);
    cr_assert_eq (call->status, 200);
    cr_assert_eq (call->reply_size, 0);
    gwh_call_destroy (&call);
    call =
        gwh_http (&gateway, "GET", "/api/v1/workspace/demo/stream-chat", GWH_KEY, NULL);
    gwh_assert_error (call, 405, "Method not allowed.");
    cr_assert_str_eq (gwh_call_header (call, "Allow"), "POST");
    gwh_call_destroy (&call);
    call = gwh_http (&gateway, "PUT", "/api/v1/workspace/new", GWH_KEY, "{}");
    gwh_assert_error (call, 405, "Method not allowed.");
    cr_assert_str_eq (gwh_call_header (call, "Allow"), "POST, GET, HEAD");
    gwh_call_destroy (&call);
    gwh_gateway_stop (&gateway);
}

Test (gw_server, bad_json_body_is_400_naming_the_problem)
{
    gwh_gateway_t gateway;
    s_gateway_start (&gateway, S_TIMEOUT_MS, 1 << 20);
    //  Checked before routing: no daemon is needed to refuse it.
    gwh_call_t *call =
        gwh_http (&gateway, "POST", "/api/v1/workspace/new", GWH_KEY, "{\"name\": ");
    gwh_assert_error (call, 400, NULL);
    json_t *json = gwh_call_json (call);
    const char *error = json_string_value (json_object_get (json, "error"));
    cr_assert (strstr (error, "Invalid JSON body") && strstr (error, "line 1"), "%s",
               error);
    json_decref (json);
    gwh_call_destroy (&call);

    call = gwh_http (&gateway, "POST", "/api/v1/workspace/new", GWH_KEY, "[1, 2]");
    gwh_assert_error (call, 400, "Invalid JSON body: expected an object.");
    gwh_call_destroy (&call);

    //  A \u0000 is refused in words, not by jansson's flag name.
    call = gwh_http (&gateway, "POST", "/api/v1/workspace/new", GWH_KEY,
                     "{\"name\":\"a\\u0000b\"}");
    gwh_assert_error (
        call, 400,
        "Invalid JSON body: a string holds \\u0000 (a NUL character), which "
        "is not accepted (line 1, column 18).");
    gwh_call_destroy (&call);

    //  On chat routes, in the abort shape chatd answers its own errors in
    //  before any output (API.md), still naming the problem.
    const char *chats[] = {
        "/api/v1/workspace/demo/chat", "/api/v1/workspace/demo/stream-chat",
        "/api/v1/workspace/demo/thread/t/chat",
        "/api/v1/workspace/demo/thread/t/stream-chat", "/api/v1/openai/chat/completions"};
    for (size_t i = 0; i < sizeof chats / sizeof *chats; i++) {
        const char *bodies[] = {"{\"message\": ", "[1, 2]"};
        for (size_t b = 0; b < 2; b++) {
            call = gwh_http (&gateway, "POST", chats[i], GWH_KEY, bodies[b]);
            cr_assert_eq (call->status, 400, "%s: %ld", chats[i], call->status);
            json = gwh_call_json (call);
            cr_assert_eq (json_object_size (json), 6, "%s", call->reply);
            cr_assert_eq (strlen (json_string_value (json_object_get (json, "id"))), 36);
            cr_assert_str_eq (json_string_value (json_object_get (json, "type")),
                              "abort");
            cr_assert (json_is_null (json_object_get (json, "textResponse")));
            cr_assert_eq (json_array_size (json_object_get (json, "sources")), 0);
            cr_assert (json_is_true (json_object_get (json, "close")));
            error = json_string_value (json_object_get (json, "error"));
            cr_assert (b ? !strcmp (error, "Invalid JSON body: expected an object.")
                         : strstr (error, "Invalid JSON body") != NULL,
                       "%s", error);
            json_decref (json);
            gwh_call_destroy (&call);
        }
    }
    gwh_gateway_stop (&gateway);
}

//  A body of n bytes that is a JSON object: {"p":"aaa...a"}.
static char *
s_json_body (size_t n)
{
    cr_assert_geq (n, 8);
    char *body = malloc (n + 1);
    memcpy (body, "{\"p\":\"", 6);
    memset (body + 6, 'a', n - 8);
    memcpy (body + n - 2, "\"}", 3);
    return body;
}

Test (gw_server, body_over_max_is_413)
{
    gwh_gateway_t gateway;
    s_gateway_start (&gateway, S_TIMEOUT_MS, 1000);
    char *big = s_json_body (4000);

    //  Announced by Content-Length: refused without reading it.
    gwh_call_t *call = gwh_http (&gateway, "POST", "/api/v1/workspace/new", GWH_KEY, big);
    gwh_assert_error (call, 413, "Request body is larger than 1000 bytes.");
    gwh_call_destroy (&call);

    //  Chunked: refused once it has grown past the limit.
    call = gwh_call_new (&gateway, "POST", "/api/v1/workspace/new", GWH_KEY, big);
    call->chunked = true;
    gwh_call_run (call);
    gwh_assert_error (call, 413, "Request body is larger than 1000 bytes.");
    gwh_call_destroy (&call);

    //  Exactly the limit is accepted (and then finds no chat instance).
    char *fits = s_json_body (1000);
    call = gwh_http (&gateway, "POST", "/api/v1/workspace/new", GWH_KEY, fits);
    gwh_assert_error (call, 503, NULL);
    gwh_call_destroy (&call);
    call = gwh_call_new (&gateway, "POST", "/api/v1/workspace/new", GWH_KEY, fits);
    call->chunked = true;
    gwh_call_run (call);
    gwh_assert_error (call, 503, NULL);
    gwh_call_destroy (&call);
    free (fits);
    free (big);
    gwh_gateway_stop (&gateway);
}

Test (gw_server, no_instance_is_503_json)
{
    gwh_gateway_t gateway;
    s_gateway_start (&gateway, S_TIMEOUT_MS, 1 << 20);
    gwh_call_t *call = gwh_http (&gateway, "POST", "/api/v1/workspace/demo/chat", GWH_KEY,
                                 "{\"message\":\"hi\"}");
    gwh_assert_error (call, 503, "No chat service instance is available.");
    cr_assert_str_eq (gwh_call_header (call, "Retry-After"), "1");
    gwh_call_destroy (&call);
    gwh_wait_health (&gateway, "broker.no_instance", 1);

    //  An instance of another service does not help.
    gwh_daemon_t *ingestd = gwh_daemon_new (&gateway, "ingest", "ingest-1", 3);
    gwh_wait_health (&gateway, "services.ingest.instances", 1);
    call = gwh_http (&gateway, "GET", "/api/v1/workspaces", GWH_KEY, NULL);
    gwh_assert_error (call, 503, "No chat service instance is available.");
    gwh_call_destroy (&call);
    gwh_daemon_destroy (&ingestd);
    gwh_gateway_stop (&gateway);
}

Test (gw_server, requests_wait_for_an_instance_to_register)
{
    //  A daemon restarting (or a gateway just started): its requests wait
    //  for it, and go to it in the order they came, retryable or not.
    gwh_gateway_t gateway;
    s_gateway_start_waiting (&gateway, S_TIMEOUT_MS, 60000);
    gwh_call_t *create = gwh_call_new (&gateway, "POST", "/api/v1/workspace/new", GWH_KEY,
                                       "{\"name\":\"first\"}");
    gwh_call_start (create);
    gwh_wait_health (&gateway, "broker.waiting", 1);
    gwh_call_t *list =
        gwh_call_new (&gateway, "GET", "/api/v1/workspaces", GWH_KEY, NULL);
    gwh_call_start (list);
    gwh_wait_health (&gateway, "broker.waiting", 2);
    //  One that leaves while it waits is forgotten, and nothing is sent.
    gwh_call_t *leaves =
        gwh_call_new (&gateway, "GET", "/api/v1/workspace/gone", GWH_KEY, NULL);
    leaves->timeout_ms = 200;
    gwh_call_run (leaves);
    gwh_wait_health (&gateway, "broker.client_gone", 1);
    gwh_wait_health (&gateway, "broker.waiting", 2);

    gwh_daemon_t *chatd = gwh_daemon_new (&gateway, "chat", "chat-late", 4);
    cm_msg_t *first = gwh_daemon_expect (chatd, CM_MSG_REQUEST);
    cm_msg_t *second = gwh_daemon_expect (chatd, CM_MSG_REQUEST);
    cr_assert_str_eq (cm_msg_route (first), "/api/v1/workspace/new");
    cr_assert_str_eq (cm_msg_route (second), "/api/v1/workspaces");
    cr_assert_null (cm_msg_header (first, "X-Llmrt-Attempt"), "a first run");
    cr_assert_null (gwh_daemon_recv (chatd, 200), "the one that left is not sent");
    gwh_daemon_reply (chatd, CM_MSG_FINAL, cm_msg_request_id (first), 200,
                      "application/json", "{\"created\":true}");
    gwh_daemon_reply (chatd, CM_MSG_FINAL, cm_msg_request_id (second), 200,
                      "application/json", "{\"workspaces\":[]}");
    gwh_call_join (create);
    gwh_call_join (list);
    cr_assert_eq (create->status, 200, "%s", create->reply);
    cr_assert_str_eq (create->reply, "{\"created\":true}");
    cr_assert_eq (list->status, 200, "%s", list->reply);
    gwh_wait_health (&gateway, "broker.waited", 2);
    gwh_wait_health (&gateway, "broker.waiting", 0);
    cr_assert_eq (gwh_health_number (&gateway, "broker.no_instance"), 0);
    gwh_wait_health (&gateway, "broker.in_flight", 0);
    cm_msg_destroy (&first);
    cm_msg_destroy (&second);
    gwh_call_destroy (&create);
    gwh_call_destroy (&list);
    gwh_call_destroy (&leaves);
    gwh_daemon_destroy (&chatd);
    gwh_gateway_stop (&gateway);
}

Test (gw_server, a_wait_for_an_instance_ends_in_503_by_its_deadline_at_the_latest)
{
    gwh_gateway_t gateway;
    s_gateway_start_waiting (&gateway, S_TIMEOUT_MS, 300);
    int64_t start = cm_clock_mono_ms ();
    gwh_call_t *call = gwh_http (&gateway, "POST", "/api/v1/workspace/demo/chat", GWH_KEY,
                                 "{\"message\":\"hi\"}");
    gwh_assert_error (call, 503, "No chat service instance is available.");
    cr_assert_geq (cm_clock_mono_ms () - start, 300, "it did not wait");
    gwh_call_destroy (&call);
    gwh_wait_health (&gateway, "broker.no_instance", 1);
    gwh_wait_health (&gateway, "broker.waiting", 0);
    cr_assert_eq (gwh_health_number (&gateway, "broker.waited"), 0);
    gwh_gateway_stop (&gateway);

    //  A deadline shorter than the wait ends it: 503 still (it never ran).
    s_gateway_start_waiting (&gateway, 200, 60000);
    start = cm_clock_mono_ms ();
    call = gwh_http (&gateway, "GET", "/api/v1/workspaces", GWH_KEY, NULL);
    gwh_assert_error (call, 503, "No chat service instance is available.");
    cr_assert_lt (cm_clock_mono_ms () - start, 30000);
    gwh_call_destroy (&call);
    cr_assert_eq (gwh_health_number (&gateway, "broker.timeouts"), 0);
    gwh_gateway_stop (&gateway);
}

//  Start a call that reaches daemon, which then falls silent (muted): the
//  call (running on its thread) and the REQUEST daemon got.
static gwh_call_t *
s_call_then_mute (gwh_gateway_t *gateway, gwh_daemon_t *daemon, const char *method,
                  const char *path, const char *body, cm_msg_t **request_p)
{
    gwh_call_t *call = gwh_call_new (gateway, method, path, GWH_KEY, body);
    gwh_call_start (call);
    *request_p = gwh_daemon_expect (daemon, CM_MSG_REQUEST);
    gwh_daemon_mute (daemon);
    return call;
}

Test (gw_server, a_retryable_request_waits_for_its_dead_instances_successor)
{
    gwh_gateway_t gateway;
    s_gateway_start_waiting (&gateway, S_TIMEOUT_MS, 60000);
    gwh_daemon_t *dies = gwh_daemon_new (&gateway, "chat", "chat-dies", 2);
    gwh_wait_health (&gateway, "services.chat.instances", 1);
    cm_msg_t *request;
    gwh_call_t *call =
        s_call_then_mute (&gateway, dies, "GET", "/api/v1/workspaces", NULL, &request);
    //  Given up, with no other instance: the request waits (a
    //  non-retryable one is answered 502, as before).
    gwh_wait_health (&gateway, "broker.expired_instances", 1);
    gwh_wait_health (&gateway, "broker.waiting", 1);
    cr_assert_not (atomic_load (&call->done));
    gwh_daemon_t *successor = gwh_daemon_new (&gateway, "chat", "chat-next", 2);
    cm_msg_t *again = gwh_daemon_expect (successor, CM_MSG_REQUEST);
    cr_assert_str_eq (cm_msg_request_id (again), cm_msg_request_id (request));
    cr_assert_str_eq (cm_msg_header (again, "X-Llmrt-Attempt"), "2");
    gwh_daemon_reply (successor, CM_MSG_FINAL, cm_msg_request_id (again), 200,
                      "application/json", "{\"workspaces\":[]}");
    gwh_call_join (call);
    cr_assert_eq (call->status, 200, "%s", call->reply);
    gwh_wait_health (&gateway, "broker.retries", 1);
    gwh_wait_health (&gateway, "broker.waited", 1);
    cm_msg_destroy (&request);
    cm_msg_destroy (&again);
    gwh_call_destroy (&call);
    gwh_daemon_destroy (&dies);
    gwh_daemon_destroy (&successor);
    gwh_gateway_stop (&gateway);
}

Test (gw_server, a_wait_that_runs_out_cancels_at_the_frozen_instance)
{
    //  A retryable request on an instance that stops heartbeating (frozen,
    //  perhaps not dead) waits for another, none comes: 503, and the
    //  frozen one is told to stop, as with a 502, so that a chat its client
    //  was told failed (and will send again) is not saved when it wakes.
    gwh_gateway_t gateway;
    s_gateway_start_waiting (&gateway, S_TIMEOUT_MS, 300);
    gwh_daemon_t *frozen = gwh_daemon_new (&gateway, "chat", "chat-frozen", 2);
    gwh_wait_health (&gateway, "services.chat.instances", 1);
    cm_msg_t *request;
    gwh_call_t *call =
        s_call_then_mute (&gateway, frozen, "POST", "/api/v1/workspace/demo/chat",
                          "{\"message\":\"hi\"}", &request);
    gwh_call_join (call);
    gwh_assert_error (call, 503, "No chat service instance is available.");
    cm_msg_t *cancel = gwh_daemon_expect (frozen, CM_MSG_CANCEL);
    cr_assert_str_eq (cm_msg_request_id (cancel), cm_msg_request_id (request));
    cr_assert_str_eq (cm_msg_reason (cancel), "instance given up");
    cm_msg_destroy (&cancel);
    cm_msg_destroy (&request);
    gwh_call_destroy (&call);
    gwh_daemon_destroy (&frozen);
    gwh_gateway_stop (&gateway);
}

Test (gw_server, request_reaches_the_daemon_and_its_reply_the_client)
{
    gwh_gateway_t gateway;
    s_gateway_start (&gateway, S_TIMEOUT_MS, 1 << 20);
    gwh_daemon_t *chatd = gwh_daemon_new (&gateway, "chat", "chat-1", 4);
    gwh_wait_health (&gateway, "services.chat.instances", 1);

    const char *body = "{\"message\":\"caf\xc3\xa9 \\u00e9\",\"mode\":\"query\"}";
    gwh_call_t *call = gwh_call_new (
        &gateway, "POST", "/api/v1/workspace/demo/chat?mode=query&x=%2F", GWH_KEY, body);
    call->extra[0] = "Accept: application/json";
    call->extra[1] = "User-Agent: gw-test/1.0";
    call->extra[2] = "X-Not-Forwarded: secret";
    int64_t before = cm_clock_wall_ms ();
    gwh_call_start (call);

    cm_msg_t *request = gwh_daemon_expect (chatd, CM_MSG_REQUEST);
    int64_t after = cm_clock_wall_ms ();
    cr_assert_neq (*cm_msg_request_id (request), 0);
    cr_assert_str_eq (cm_msg_service (request), "chat");
    cr_assert_str_eq (cm_msg_method (request), "POST");
    cr_assert_str_eq (cm_msg_route (request),
                      "/api/v1/workspace/demo/chat?mode=query&x=%2F");
    cr_assert_str_eq (cm_msg_identity (request), "admin");
    cr_assert_str_eq (cm_msg_header (request, "Content-Type"), "application/json");
    cr_assert_str_eq (cm_msg_header (request, "Accept"), "application/json");
    cr_assert_str_eq (cm_msg_header (request, "User-Agent"), "gw-test/1.0");
    cr_assert_null (cm_msg_header (request, "X-Not-Forwarded"));
    cr_assert_null (cm_msg_header (request, "Authorization"),
                    "the key stays at the gateway");
    size_t size;
    const char *received = cm_msg_body (request, &size);
    cr_assert_eq (size, strlen (body));
    cr_assert_eq (memcmp (received, body, size), 0);
    //  The deadline is the request timeout from when it was forwarded.
    cr_assert_geq (cm_msg_deadline (request), before + S_TIMEOUT_MS);
    cr_assert_leq (cm_msg_deadline (request), after + S_TIMEOUT_MS);

    //  Whatever the daemon says comes back as it is.
    cm_msg_t *reply = cm_msg_new (CM_MSG_FINAL);
    cm_msg_set_request_id (reply, cm_msg_request_id (request));
    cm_msg_set_status (reply, 429);
    cm_msg_set_content_type (reply, "application/json; charset=utf-8");
    cm_msg_header_add (reply, "Retry-After", "7");
    cm_msg_header_add (reply, "X-Queue", "chat");
    const char *answer = "{\"error\":\"The chat queue is full.\",\"n\":\"\xc3\xa9\"}";
    cm_msg_set_body (reply, answer, strlen (answer));
    gwh_daemon_send (chatd, &reply);

    gwh_call_join (call);
    cr_assert_eq (call->code, CURLE_OK);
    cr_assert_eq (call->status, 429);
    cr_assert_str_eq (gwh_call_header (call, "Content-Type"),
                      "application/json; charset=utf-8");
    cr_assert_str_eq (gwh_call_header (call, "Retry-After"), "7");
    cr_assert_str_eq (gwh_call_header (call, "X-Queue"), "chat");
    cr_assert_str_eq (gwh_call_header (call, "X-Request-Id"),
                      cm_msg_request_id (request));
    cr_assert_eq (call->reply_size, strlen (answer));
    cr_assert_str_eq (call->reply, answer);
    gwh_call_destroy (&call);
    cm_msg_destroy (&request);
    gwh_wait_health (&gateway, "broker.replies", 1);
    gwh_wait_health (&gateway, "broker.in_flight", 0);

    gwh_daemon_destroy (&chatd);
    gwh_gateway_stop (&gateway);
}

//  A header of size bytes, "X-Pad: AAA...", in a static buffer.
static const char *
s_pad_header (size_t size)
{
    static char header[20000];
    cr_assert_lt (size + 8, sizeof header);
    int at = snprintf (header, sizeof header, "X-Pad: ");
    memset (header + at, 'A', size);
    header[at + (int) size] = '\0';
    return header;
}

//  libmicrohttpd builds a response's headers in the connection's pool: a
//  request whose headers left too little of it was served, and then the
//  connection closed without an answer. Such requests are refused first.
Test (gw_server, headers_that_leave_no_room_for_the_answer_are_431_before_forwarding)
{
    gwh_gateway_t gateway;
    s_gateway_start (&gateway, S_TIMEOUT_MS, 1 << 20);
    gwh_daemon_t *chatd = gwh_daemon_new_answering (&gateway, "chat", "chat-1");
    gwh_wait_instance (&gateway, "chat");

    //  4 KB of headers: within the default 8 KiB pool less its 2 KiB reserve.
    gwh_call_t *call =
        gwh_call_new (&gateway, "POST", "/api/v1/workspace/demo/chat", GWH_KEY, "{}");
    call->extra[0] = s_pad_header (4000);
    gwh_call_run (call);
    cr_assert_eq (call->status, 200, "status %ld (curl %d)", call->status, call->code);
    cr_assert_eq (atomic_load (&chatd->requests), 1);
    gwh_call_destroy (&call);

    //  6 and 6.5 KB: answered 431 in JSON, and never forwarded (7.4 KB used
    //  to be served, and then answered with nothing).
    size_t sizes[] = {6000, 6500};
    for (size_t i = 0; i < 2; i++) {
        call =
            gwh_call_new (&gateway, "POST", "/api/v1/workspace/demo/chat", GWH_KEY, "{}");
        call->extra[0] = s_pad_header (sizes[i]);
        gwh_call_run (call);
        cr_assert_eq (call->status, 431, "%zu bytes: status %ld (curl %d)", sizes[i],
                      call->status, call->code);
        json_t *reply = gwh_call_json (call);
        const char *error = json_string_value (json_object_get (reply, "error"));
        cr_assert (error && strstr (error, "Request headers too large") &&
                       strstr (error, "GATEWAY_CONNECTION_MEMORY_BYTES"),
                   "error: %s", call->reply);
        json_decref (reply);
        gwh_call_destroy (&call);
    }
    cr_assert_eq (atomic_load (&chatd->requests), 1);
    gwh_daemon_destroy (&chatd);
    gwh_gateway_stop (&gateway);
}

Test (gw_server, empty_json_body_is_sent_as_an_empty_object)
{
    gwh_gateway_t gateway;
    s_gateway_start (&gateway, S_TIMEOUT_MS, 1 << 20);
    gwh_daemon_t *chatd = gwh_daemon_new (&gateway, "chat", "chat-1", 4);
    gwh_wait_health (&gateway, "services.chat.instances", 1);
    gwh_call_t *call =
        gwh_call_new (&gateway, "POST", "/api/v1/workspace/new", GWH_KEY, "");
    gwh_call_start (call);
    cm_msg_t *request = gwh_daemon_expect (chatd, CM_MSG_REQUEST);
    size_t size;
    const char *body = cm_msg_body (request, &size);
    cr_assert_eq (size, 2);
    cr_assert_eq (memcmp (body, "{}", 2), 0);
    gwh_daemon_reply (chatd, CM_MSG_FINAL, cm_msg_request_id (request), 200,
                      "application/json", "{}");
    cm_msg_destroy (&request);
    gwh_call_join (call);
    cr_assert_eq (call->status, 200);
    gwh_call_destroy (&call);
    gwh_daemon_destroy (&chatd);
    gwh_gateway_stop (&gateway);
}

Test (gw_server, stream_chunks_reach_the_client_as_they_are_sent)
{
    gwh_gateway_t gateway;
    s_gateway_start (&gateway, S_TIMEOUT_MS, 1 << 20);
    gwh_daemon_t *chatd = gwh_daemon_new (&gateway, "chat", "chat-1", 4);
    gwh_wait_health (&gateway, "services.chat.instances", 1);

    gwh_call_t *call =
        gwh_call_new (&gateway, "POST", "/api/v1/workspace/demo/stream-chat", GWH_KEY,
                      "{\"message\":\"tell me\"}");
    call->extra[0] = "Accept: text/event-stream";
    gwh_call_start (call);
    cm_msg_t *request = gwh_daemon_expect (chatd, CM_MSG_REQUEST);
    const char *id = cm_msg_request_id (request);

    //  Each chunk is at the client before the daemon sends the next one:
    //  nothing is held back until the end.
    const char *chunks[] = {"data: {\"n\":1}\n\n", "data: {\"n\":2}\n\n"};
    for (size_t i = 0; i < 2; i++) {
        gwh_daemon_reply (chatd, CM_MSG_PARTIAL, id, 200, "text/event-stream", chunks[i]);
        cr_assert (gwh_call_wait_for (call, chunks[i]),
                   "chunk %zu did not reach the client", i);
        cr_assert (!atomic_load (&call->done), "the stream is still open");
    }
    gwh_daemon_reply (chatd, CM_MSG_FINAL, id, 200, "text/event-stream",
                      "data: {\"n\":3,\"close\":true}\n\n");
    gwh_call_join (call);
    cr_assert_eq (call->code, CURLE_OK);
    cr_assert_eq (call->status, 200);
    cr_assert_str_eq (gwh_call_header (call, "Content-Type"), "text/event-stream");
    cr_assert_str_eq (gwh_call_header (call, "Cache-Control"), "no-cache");
    cr_assert_str_eq (call->reply, "data: {\"n\":1}\n\n"
                                   "data: {\"n\":2}\n\n"
                                   "data: {\"n\":3,\"close\":true}\n\n");
    gwh_call_destroy (&call);
    cm_msg_destroy (&request);
    gwh_wait_health (&gateway, "broker.in_flight", 0);
    gwh_daemon_destroy (&chatd);
    gwh_gateway_stop (&gateway);
}

Test (gw_server, no_answer_within_the_timeout_is_504_and_cancel)
{
    gwh_gateway_t gateway;
    s_gateway_start (&gateway, 500, 1 << 20);
    gwh_daemon_t *chatd = gwh_daemon_new (&gateway, "chat", "chat-1", 4);
    gwh_wait_health (&gateway, "services.chat.instances", 1);

    gwh_call_t *call = gwh_call_new (&gateway, "POST", "/api/v1/workspace/demo/chat",
                                     GWH_KEY, "{\"message\":\"?\"}");
    gwh_call_start (call);
    cm_msg_t *request = gwh_daemon_expect (chatd, CM_MSG_REQUEST);
    //  The daemon says nothing; the client gets 504 and the daemon a CANCEL.
    gwh_call_join (call);
    gwh_assert_error (call, 504, "The request timed out.");
    gwh_call_destroy (&call);
    cm_msg_t *cancel = gwh_daemon_expect (chatd, CM_MSG_CANCEL);
    cr_assert_str_eq (cm_msg_request_id (cancel), cm_msg_request_id (request));
    cr_assert_str_eq (cm_msg_reason (cancel), "deadline");
    cm_msg_destroy (&cancel);
    gwh_wait_health (&gateway, "broker.timeouts", 1);

    //  An answer that comes too late is counted, not delivered anywhere.
    gwh_daemon_reply (chatd, CM_MSG_FINAL, cm_msg_request_id (request), 200,
                      "application/json", "{}");
    gwh_wait_health (&gateway, "broker.late_replies", 1);
    gwh_wait_health (&gateway, "broker.in_flight", 0);
    cm_msg_destroy (&request);
    gwh_daemon_destroy (&chatd);
    gwh_gateway_stop (&gateway);
}

Test (gw_server, client_leaving_mid_stream_cancels_at_the_daemon)
{
    gwh_gateway_t gateway;
    s_gateway_start (&gateway, S_TIMEOUT_MS, 1 << 20);
    gwh_daemon_t *chatd = gwh_daemon_new (&gateway, "chat", "chat-1", 4);
    gwh_wait_health (&gateway, "services.chat.instances", 1);

    gwh_call_t *call =
        gwh_call_new (&gateway, "POST", "/api/v1/workspace/demo/stream-chat", GWH_KEY,
                      "{\"message\":\"long story\"}");
    call->hang_up = true;
    gwh_call_start (call);
    cm_msg_t *request = gwh_daemon_expect (chatd, CM_MSG_REQUEST);
    const char *id = cm_msg_request_id (request);
    gwh_daemon_reply (chatd, CM_MSG_PARTIAL, id, 200, "text/event-stream",
                      "data: {\"n\":0}\n\n");
    //  The client hangs up on the first chunk.
    gwh_call_join (call);
    cr_assert_eq (call->code, CURLE_WRITE_ERROR, "%s", curl_easy_strerror (call->code));
    gwh_call_destroy (&call);

    //  The daemon goes on streaming tokens, as an LLM would, until the
    //  CANCEL comes: a suspended connection is noticed gone when the
    //  gateway next writes to it.
    cm_msg_t *cancel = NULL;
    int64_t until = cm_clock_mono_ms () + GWH_WAIT_MS;
    for (int n = 1; !cancel && cm_clock_mono_ms () < until; n++) {
        char chunk[64];
        snprintf (chunk, sizeof chunk, "data: {\"n\":%d}\n\n", n);
        gwh_daemon_reply (chatd, CM_MSG_PARTIAL, id, 200, "text/event-stream", chunk);
        cancel = gwh_daemon_recv (chatd, 20);
    }
    cr_assert_not_null (cancel, "no CANCEL after the client left");
    cr_assert_eq (cm_msg_type (cancel), CM_MSG_CANCEL);
    cr_assert_str_eq (cm_msg_request_id (cancel), id);
    cr_assert_str_eq (cm_msg_reason (cancel), "client disconnected");
    cm_msg_destroy (&cancel);
    gwh_wait_health (&gateway, "broker.in_flight", 0);
    //  Counted, though the HTTP side saw it go (an audit found 256 of 2000
    //  such clients counted).
    gwh_wait_health (&gateway, "broker.client_gone", 1);
    cm_msg_destroy (&request);
    gwh_daemon_destroy (&chatd);
    gwh_gateway_stop (&gateway);
}

//  The client gives up while the daemon is silent: the connection is
//  suspended (MHD does not watch it), yet the CANCEL must still come, at
//  once and without the daemon writing anything.
Test (gw_server, client_leaving_a_silent_request_cancels_at_the_daemon)
{
    gwh_gateway_t gateway;
    s_gateway_start (&gateway, S_TIMEOUT_MS, 1 << 20);
    gwh_daemon_t *chatd = gwh_daemon_new (&gateway, "chat", "chat-1", 4);
    gwh_wait_health (&gateway, "services.chat.instances", 1);

    //  A non-streamed request: the client gives up after 300 ms.
    gwh_call_t *call = gwh_call_new (&gateway, "POST", "/api/v1/workspace/demo/chat",
                                     GWH_KEY, "{\"message\":\"slow\"}");
    call->timeout_ms = 300;
    gwh_call_start (call);
    cm_msg_t *request = gwh_daemon_expect (chatd, CM_MSG_REQUEST);
    gwh_call_join (call);
    cr_assert_eq (call->code, CURLE_OPERATION_TIMEDOUT, "%s",
                  curl_easy_strerror (call->code));
    int64_t left = cm_clock_mono_ms ();
    cm_msg_t *cancel = gwh_daemon_expect (chatd, CM_MSG_CANCEL);
    cr_assert_str_eq (cm_msg_request_id (cancel), cm_msg_request_id (request));
    cr_log_info ("CANCEL reached the daemon %lld ms after the client left",
                 (long long) (cm_clock_mono_ms () - left));
    cm_msg_destroy (&cancel);
    cm_msg_destroy (&request);
    gwh_call_destroy (&call);
    //  Counted as a request without a response ("none"), not as the 499
    //  the broker ends it with internally.
    int64_t until = cm_clock_mono_ms () + GWH_WAIT_MS;
    json_t *metrics = NULL;
    do {
        json_decref (metrics);
        gwh_sleep_ms (10);
        metrics = gwh_get_json (&gateway, "/api/metrics");
    } while (!gwh_json_at (metrics, "gateway.requests.chat.none") &&
             cm_clock_mono_ms () < until);
    cr_assert_eq (gwh_json_int (metrics, "gateway.requests.chat.none"), 1);
    cr_assert_null (gwh_json_at (metrics, "gateway.requests.chat.4xx"));
    json_decref (metrics);

    //  A stream whose daemon pauses between tokens: the client hangs up on
    //  the first chunk and the daemon writes nothing more.
    call = gwh_call_new (&gateway, "POST", "/api/v1/workspace/demo/stream-chat", GWH_KEY,
                         "{\"message\":\"slow\"}");
    call->hang_up = true;
    gwh_call_start (call);
    request = gwh_daemon_expect (chatd, CM_MSG_REQUEST);
    gwh_daemon_reply (chatd, CM_MSG_PARTIAL, cm_msg_request_id (request), 200,
                      "text/event-stream", "data: {\"n\":0}\n\n");
    gwh_call_join (call);
    cancel = gwh_daemon_expect (chatd, CM_MSG_CANCEL);
    cr_assert_str_eq (cm_msg_request_id (cancel), cm_msg_request_id (request));
    cm_msg_destroy (&cancel);
    cm_msg_destroy (&request);
    gwh_call_destroy (&call);
    gwh_wait_health (&gateway, "broker.in_flight", 0);
    cr_assert_geq (gwh_health_number (&gateway, "broker.client_gone"), 1);
    gwh_daemon_destroy (&chatd);
    gwh_gateway_stop (&gateway);
}

Test (gw_server, silent_instance_expires_and_its_requests_are_answered)
{
    gwh_gateway_t gateway;
    s_gateway_start (&gateway, S_TIMEOUT_MS, 1 << 20);
    gwh_daemon_t *chatd = gwh_daemon_new (&gateway, "chat", "chat-1", 4);
    gwh_wait_health (&gateway, "services.chat.instances", 1);

    //  One plain request and one stream in flight at the same instance.
    gwh_call_t *plain = gwh_call_new (&gateway, "POST", "/api/v1/workspace/new", GWH_KEY,
                                      "{\"name\":\"w\"}");
    gwh_call_start (plain);
    cm_msg_t *first = gwh_daemon_expect (chatd, CM_MSG_REQUEST);
    gwh_call_t *stream =
        gwh_call_new (&gateway, "POST", "/api/v1/workspace/demo/stream-chat", GWH_KEY,
                      "{\"message\":\"hi\"}");
    gwh_call_start (stream);
    cm_msg_t *second = gwh_daemon_expect (chatd, CM_MSG_REQUEST);
    cr_assert_str_eq (cm_msg_route (second), "/api/v1/workspace/demo/stream-chat");
    gwh_daemon_reply (chatd, CM_MSG_PARTIAL, cm_msg_request_id (second), 200,
                      "text/event-stream", "data: {\"n\":1}\n\n");
    cr_assert (gwh_call_wait_for (stream, "data: {\"n\":1}\n\n"));

    //  The daemon hangs: no more heartbeats.
    gwh_daemon_mute (chatd);
    gwh_call_join (plain);
    gwh_assert_error (plain, 502, NULL);
    json_t *json = gwh_call_json (plain);
    const char *error = json_string_value (json_object_get (json, "error"));
    cr_assert (strstr (error, "chat-1") && strstr (error, "missed its heartbeats"), "%s",
               error);
    json_decref (json);

    //  The stream ends with an abort event after what it had.
    gwh_call_join (stream);
    cr_assert_eq (stream->code, CURLE_OK);
    cr_assert_eq (stream->status, 200);
    const char *prefix = "data: {\"n\":1}\n\ndata: ";
    cr_assert_eq (strncmp (stream->reply, prefix, strlen (prefix)), 0, "%s",
                  stream->reply);
    //  Then the abort event and the finalize event (API.md), with the
    //  request's id for the stream's uuid, as the stream named none.
    const char *event = stream->reply + strlen (prefix);
    const char *second_event = strstr (event, "\n\ndata: ");
    cr_assert_not_null (second_event, "%s", stream->reply);
    json_error_t parse;
    json = json_loadb (event, (size_t) (second_event - event), 0, &parse);
    cr_assert_not_null (json, "abort event is not JSON: %s", event);
    cr_assert_str_eq (json_string_value (json_object_get (json, "type")), "abort");
    cr_assert_str_eq (json_string_value (json_object_get (json, "uuid")),
                      cm_msg_request_id (second));
    cr_assert (json_is_true (json_object_get (json, "close")));
    cr_assert (json_is_string (json_object_get (json, "error")));
    json_decref (json);
    const char *final_event = second_event + 8;
    size_t length = strlen (final_event);
    cr_assert (length > 2 && !strcmp (final_event + length - 2, "\n\n"), "%s",
               stream->reply);
    json = json_loadb (final_event, length - 2, 0, &parse);
    cr_assert_not_null (json, "finalize event is not JSON: %s", final_event);
    cr_assert_str_eq (json_string_value (json_object_get (json, "type")),
                      "finalizeResponseStream");
    cr_assert_str_eq (json_string_value (json_object_get (json, "uuid")),
                      cm_msg_request_id (second));
    json_decref (json);

    gwh_wait_health (&gateway, "broker.expired_instances", 1);
    gwh_wait_health (&gateway, "services.chat.instances", 0);
    gwh_wait_health (&gateway, "broker.in_flight", 0);
    gwh_call_destroy (&plain);
    gwh_call_destroy (&stream);
    cm_msg_destroy (&first);
    cm_msg_destroy (&second);
    gwh_daemon_destroy (&chatd);
    gwh_gateway_stop (&gateway);
}

Test (gw_server, requests_go_to_the_instance_with_most_free_credit)
{
    gwh_gateway_t gateway;
    s_gateway_start (&gateway, S_TIMEOUT_MS, 1 << 20);
    gwh_daemon_t *daemons[2] = {gwh_daemon_new (&gateway, "chat", "chat-small", 1),
                                gwh_daemon_new (&gateway, "chat", "chat-big", 4)};
    gwh_wait_health (&gateway, "services.chat.instances", 2);

    //  Five requests, each sent once the one before has reached a daemon,
    //  none answered yet.
    gwh_call_t *calls[5];
    cm_msg_t *requests[5];
    size_t where[5];
    for (size_t i = 0; i < 5; i++) {
        calls[i] = gwh_call_new (&gateway, "POST", "/api/v1/workspace/demo/chat", GWH_KEY,
                                 "{\"message\":\"hi\"}");
        gwh_call_start (calls[i]);
        requests[i] = gwh_daemons_expect_request (daemons, 2, &where[i]);
    }
    //  Free credit: big 4 / small 1, then 3/1, 2/1: the big one each time.
    for (size_t i = 0; i < 3; i++)
        cr_assert_eq (where[i], 1, "request %zu went to %s", i, daemons[where[i]]->id);
    //  Then 1/1 (a tie) and the other one: each gets what it can hold.
    size_t big = 0;
    for (size_t i = 0; i < 5; i++)
        big += where[i] == 1;
    cr_assert_eq (big, 4, "the big instance got %zu of 5", big);

    for (size_t i = 0; i < 5; i++) {
        char answer[64];
        snprintf (answer, sizeof answer, "{\"from\":\"%s\"}", daemons[where[i]]->id);
        gwh_daemon_reply (daemons[where[i]], CM_MSG_FINAL,
                          cm_msg_request_id (requests[i]), 200, "application/json",
                          answer);
    }
    for (size_t i = 0; i < 5; i++) {
        gwh_call_join (calls[i]);
        cr_assert_eq (calls[i]->status, 200);
        cr_assert (strstr (calls[i]->reply, daemons[where[i]]->id), "%s",
                   calls[i]->reply);
        gwh_call_destroy (&calls[i]);
        cm_msg_destroy (&requests[i]);
    }
    gwh_wait_health (&gateway, "broker.in_flight", 0);

    //  Credit comes back with each FINAL: with both idle again, the big
    //  one is first once more.
    gwh_call_t *busy =
        gwh_call_new (&gateway, "POST", "/api/v1/workspace/demo/chat", GWH_KEY, "{}");
    gwh_call_start (busy);
    size_t at;
    cm_msg_t *held = gwh_daemons_expect_request (daemons, 2, &at);
    cr_assert_eq (at, 1, "an idle big instance comes first");
    cm_msg_t *more[3];
    gwh_call_t *others[3];
    for (size_t i = 0; i < 3; i++) {
        others[i] =
            gwh_call_new (&gateway, "POST", "/api/v1/workspace/demo/chat", GWH_KEY, "{}");
        gwh_call_start (others[i]);
        more[i] = gwh_daemons_expect_request (daemons, 2, &where[i]);
    }
    //  Big free 3, 2, 1 against small 1: big, big, then either.
    cr_assert_eq (where[0], 1);
    cr_assert_eq (where[1], 1);
    gwh_daemon_reply (daemons[at], CM_MSG_FINAL, cm_msg_request_id (held), 200,
                      "application/json", "{}");
    for (size_t i = 0; i < 3; i++)
        gwh_daemon_reply (daemons[where[i]], CM_MSG_FINAL, cm_msg_request_id (more[i]),
                          200, "application/json", "{}");
    gwh_call_join (busy);
    cr_assert_eq (busy->status, 200);
    gwh_call_destroy (&busy);
    cm_msg_destroy (&held);
    for (size_t i = 0; i < 3; i++) {
        gwh_call_join (others[i]);
        cr_assert_eq (others[i]->status, 200);
        gwh_call_destroy (&others[i]);
        cm_msg_destroy (&more[i]);
    }
    gwh_daemon_destroy (&daemons[0]);
    gwh_daemon_destroy (&daemons[1]);
    gwh_gateway_stop (&gateway);
}

Test (gw_server, one_busy_instance_sends_the_next_request_to_the_other)
{
    gwh_gateway_t gateway;
    s_gateway_start (&gateway, S_TIMEOUT_MS, 1 << 20);
    gwh_daemon_t *daemons[2] = {gwh_daemon_new (&gateway, "chat", "chat-a", 2),
                                gwh_daemon_new (&gateway, "chat", "chat-b", 2)};
    gwh_wait_health (&gateway, "services.chat.instances", 2);
    gwh_call_t *first =
        gwh_call_new (&gateway, "GET", "/api/v1/workspaces", GWH_KEY, NULL);
    gwh_call_start (first);
    size_t one, two;
    cm_msg_t *a = gwh_daemons_expect_request (daemons, 2, &one);
    gwh_call_t *second =
        gwh_call_new (&gateway, "GET", "/api/v1/workspaces", GWH_KEY, NULL);
    gwh_call_start (second);
    cm_msg_t *b = gwh_daemons_expect_request (daemons, 2, &two);
    cr_assert_neq (one, two, "both went to %s", daemons[one]->id);
    gwh_daemon_reply (daemons[one], CM_MSG_FINAL, cm_msg_request_id (a), 200,
                      "application/json", "[]");
    gwh_daemon_reply (daemons[two], CM_MSG_FINAL, cm_msg_request_id (b), 200,
                      "application/json", "[]");
    gwh_call_join (first);
    gwh_call_join (second);
    cr_assert_eq (first->status, 200);
    cr_assert_eq (second->status, 200);
    gwh_call_destroy (&first);
    gwh_call_destroy (&second);
    cm_msg_destroy (&a);
    cm_msg_destroy (&b);
    gwh_daemon_destroy (&daemons[0]);
    gwh_daemon_destroy (&daemons[1]);
    gwh_gateway_stop (&gateway);
}

//  A msgpack frame [version, HEARTBEAT, 4] of another protocol version.
static void
s_send_wrong_version (gwh_daemon_t *daemon)
{
    msgpack_sbuffer buffer;
    msgpack_sbuffer_init (&buffer);
    msgpack_packer packer;
    msgpack_packer_init (&packer, &buffer, msgpack_sbuffer_write);
    msgpack_pack_array (&packer, 3);
    msgpack_pack_int (&packer, CM_MSG_VERSION + 1);
    msgpack_pack_int (&packer, CM_MSG_HEARTBEAT);
    msgpack_pack_unsigned_int (&packer, 4);
    gwh_daemon_send_raw (daemon, buffer.data, buffer.size);
    msgpack_sbuffer_destroy (&buffer);
}

Test (gw_server, malformed_frames_are_counted_and_dropped)
{
    gwh_gateway_t gateway;
    s_gateway_start (&gateway, S_TIMEOUT_MS, 1 << 20);
    gwh_daemon_t *chatd = gwh_daemon_new (&gateway, "chat", "chat-1", 4);
    gwh_wait_health (&gateway, "services.chat.instances", 1);
    gwh_wait_health (&gateway, "broker.dropped_frames", 0);

    //  0xc1 is never used in msgpack.
    gwh_daemon_send_raw (chatd, "\xc1\xff garbage \x00\x01", 14);
    s_send_wrong_version (chatd);
    gwh_daemon_send_raw (chatd, "", 0);
    //  [1, READY, "", "", 4]: a READY without a service.
    gwh_daemon_send_raw (chatd, "\x95\x01\x01\xa0\xa0\x04", 6);
    gwh_wait_health (&gateway, "broker.dropped_frames", 4);
    //  A peer that set no routing id (libzmq gives it a binary one): its
    //  well-formed READY is dropped, not registered under an empty name.
    zsock_t *anonymous = zsock_new_dealer (gateway.backend);
    cr_assert_not_null (anonymous);
    cm_msg_t *ready = cm_msg_new (CM_MSG_READY);
    cm_msg_set_service (ready, "chat");
    cm_msg_set_instance (ready, "chat-2");
    cm_msg_set_capacity (ready, 4);
    char *frame;
    size_t frame_size;
    cm_msg_encode (ready, &frame, &frame_size);
    zframe_t *zframe = zframe_new (frame, frame_size);
    cr_assert_eq (zframe_send (&zframe, anonymous, 0), 0);
    free (frame);
    cm_msg_destroy (&ready);
    gwh_wait_health (&gateway, "broker.dropped_frames", 5);
    zsock_destroy (&anonymous);
    gwh_wait_health (&gateway, "services.chat.instances", 1);

    //  The gateway and the instance go on working.
    gwh_call_t *call = gwh_call_new (&gateway, "POST", "/api/v1/workspace/demo/chat",
                                     GWH_KEY, "{\"message\":\"?\"}");
    gwh_call_start (call);
    cm_msg_t *request = gwh_daemon_expect (chatd, CM_MSG_REQUEST);
    gwh_daemon_reply (chatd, CM_MSG_FINAL, cm_msg_request_id (request), 200,
                      "application/json", "{\"ok\":true}");
    gwh_call_join (call);
    cr_assert_eq (call->status, 200);
    cr_assert_str_eq (call->reply, "{\"ok\":true}");
    gwh_call_destroy (&call);
    cm_msg_destroy (&request);
    gwh_wait_health (&gateway, "services.chat.instances", 1);
    gwh_daemon_destroy (&chatd);
    gwh_gateway_stop (&gateway);
}

Test (gw_server, unknown_instance_is_told_to_register)
{
    gwh_gateway_t gateway;
    s_gateway_start (&gateway, S_TIMEOUT_MS, 1 << 20);
    //  An instance that heartbeats without READY (as after a gateway
    //  restart) gets DISCONNECT, and registers when it says READY.
    gwh_daemon_t *chatd = gwh_daemon_start (&gateway, "chat", "chat-1", 4, false);
    cm_msg_t *bye = gwh_daemon_expect (chatd, CM_MSG_DISCONNECT);
    cr_assert_str_eq (cm_msg_reason (bye), "unknown instance; send READY");
    cm_msg_destroy (&bye);
    gwh_wait_health (&gateway, "services.chat.instances", 0);

    cm_msg_t *ready = cm_msg_new (CM_MSG_READY);
    cm_msg_set_service (ready, "chat");
    cm_msg_set_instance (ready, "chat-1");
    cm_msg_set_capacity (ready, 4);
    gwh_daemon_send (chatd, &ready);
    gwh_wait_health (&gateway, "services.chat.instances", 1);
    gwh_daemon_destroy (&chatd);
    gwh_gateway_stop (&gateway);
}

Test (gw_server, gateway_heartbeats_its_instances)
{
    gwh_gateway_t gateway;
    s_gateway_start (&gateway, S_TIMEOUT_MS, 1 << 20);
    gwh_daemon_t *chatd = gwh_daemon_new (&gateway, "chat", "chat-1", 4);
    gwh_wait_health (&gateway, "services.chat.instances", 1);
    int64_t until = cm_clock_mono_ms () + GWH_WAIT_MS;
    while (atomic_load (&chatd->heartbeats) < 2 && cm_clock_mono_ms () < until)
        gwh_sleep_ms (10);
    cr_assert_geq (atomic_load (&chatd->heartbeats), 2);
    gwh_daemon_destroy (&chatd);
    gwh_gateway_stop (&gateway);
}

Test (gw_server, retryable_request_is_resent_when_its_instance_dies)
{
    gwh_gateway_t gateway;
    s_gateway_start (&gateway, S_TIMEOUT_MS, 1 << 20);
    gwh_daemon_t *daemons[2] = {gwh_daemon_new (&gateway, "chat", "chat-a", 2),
                                gwh_daemon_new (&gateway, "chat", "chat-b", 2)};
    gwh_wait_health (&gateway, "services.chat.instances", 2);

    const char *body = "{\"message\":\"again\"}";
    gwh_call_t *call =
        gwh_call_new (&gateway, "POST", "/api/v1/workspace/demo/chat?x=1", GWH_KEY, body);
    gwh_call_start (call);
    size_t dies;
    cm_msg_t *request = gwh_daemons_expect_request (daemons, 2, &dies);
    gwh_daemon_t *other = daemons[1 - dies];
    gwh_daemon_mute (daemons[dies]);

    //  Once the silent one expires, the same request goes to the other.
    cm_msg_t *again = gwh_daemon_expect (other, CM_MSG_REQUEST);
    cr_assert_str_eq (cm_msg_request_id (again), cm_msg_request_id (request));
    //  Marked as sent again (chatd then looks for a turn the first run saved).
    cr_assert_null (cm_msg_header (request, "X-Llmrt-Attempt"));
    cr_assert_str_eq (cm_msg_header (again, "X-Llmrt-Attempt"), "2");
    cr_assert_str_eq (cm_msg_route (again), "/api/v1/workspace/demo/chat?x=1");
    size_t size;
    const char *received = cm_msg_body (again, &size);
    cr_assert_eq (size, strlen (body));
    cr_assert_eq (memcmp (received, body, size), 0);
    //  The first instance was only slow: it registers again and answers
    //  first. The request is the other's now; that late answer is dropped.
    cm_msg_t *ready = cm_msg_new (CM_MSG_READY);
    cm_msg_set_service (ready, "chat");
    cm_msg_set_instance (ready, dies ? "chat-b" : "chat-a");
    cm_msg_set_capacity (ready, 2);
    gwh_daemon_send (daemons[dies], &ready);
    gwh_daemon_unmute (daemons[dies]);
    gwh_wait_health (&gateway, "services.chat.instances", 2);
    gwh_daemon_reply (daemons[dies], CM_MSG_PARTIAL, cm_msg_request_id (request), 200,
                      "application/json", "{\"textResponse\":");
    gwh_daemon_reply (daemons[dies], CM_MSG_FINAL, cm_msg_request_id (request), 200,
                      "application/json", "\"first try\"}");
    gwh_wait_health (&gateway, "broker.late_replies", 2);
    gwh_daemon_reply (other, CM_MSG_FINAL, cm_msg_request_id (again), 200,
                      "application/json", "{\"textResponse\":\"second try\"}");
    gwh_call_join (call);
    cr_assert_eq (call->status, 200);
    cr_assert_str_eq (call->reply, "{\"textResponse\":\"second try\"}");
    gwh_wait_health (&gateway, "broker.retries", 1);
    gwh_wait_health (&gateway, "broker.expired_instances", 1);
    gwh_wait_health (&gateway, "broker.in_flight", 0);
    gwh_call_destroy (&call);
    cm_msg_destroy (&request);
    cm_msg_destroy (&again);
    gwh_daemon_destroy (&daemons[0]);
    gwh_daemon_destroy (&daemons[1]);
    gwh_gateway_stop (&gateway);
}

Test (gw_server, non_retryable_request_is_502_when_its_instance_dies)
{
    gwh_gateway_t gateway;
    s_gateway_start (&gateway, S_TIMEOUT_MS, 1 << 20);
    gwh_daemon_t *daemons[2] = {gwh_daemon_new (&gateway, "chat", "chat-a", 2),
                                gwh_daemon_new (&gateway, "chat", "chat-b", 2)};
    gwh_wait_health (&gateway, "services.chat.instances", 2);

    //  Creating a workspace twice would be wrong: no second try.
    gwh_call_t *call = gwh_call_new (&gateway, "POST", "/api/v1/workspace/new", GWH_KEY,
                                     "{\"name\":\"once\"}");
    gwh_call_start (call);
    size_t dies;
    cm_msg_t *request = gwh_daemons_expect_request (daemons, 2, &dies);
    gwh_daemon_mute (daemons[dies]);
    gwh_call_join (call);
    gwh_assert_error (call, 502, NULL);
    cr_assert_null (gwh_daemon_recv (daemons[1 - dies], 0), "nothing was resent");
    //  The silent instance may only be frozen: when it wakes it finds the
    //  request cancelled, as its client was told it failed.
    cm_msg_t *cancel = gwh_daemon_expect (daemons[dies], CM_MSG_CANCEL);
    cr_assert_str_eq (cm_msg_request_id (cancel), cm_msg_request_id (request));
    cr_assert_str_eq (cm_msg_reason (cancel), "instance given up");
    cm_msg_destroy (&cancel);
    gwh_wait_health (&gateway, "broker.retries", 0);
    gwh_wait_health (&gateway, "services.chat.instances", 1);
    gwh_call_destroy (&call);
    cm_msg_destroy (&request);
    gwh_daemon_destroy (&daemons[0]);
    gwh_daemon_destroy (&daemons[1]);
    gwh_gateway_stop (&gateway);
}

Test (gw_server, an_instance_whose_connection_closes_is_given_up_at_once)
{
    //  Heartbeats a minute apart: only the closed connection can tell the
    //  gateway within the harness's waits (GWH_WAIT_MS).
    gwh_gateway_t gateway;
    gw_config_t config = {.timeout_ms = 120000,
                          .heartbeat_ms = 60000,
                          .liveness = S_LIVENESS,
                          .health_interval = 100,
                          .key_cache_ttl_ms = 500};
    gwh_gateway_start (&gateway, &config);
    //  The one that dies has more free slots: both requests go to it.
    gwh_daemon_t *dies = gwh_daemon_new (&gateway, "chat", "chat-dies", 4);
    gwh_daemon_t *survivor = gwh_daemon_new (&gateway, "chat", "chat-lives", 1);
    gwh_wait_health (&gateway, "services.chat.instances", 2);
    int64_t start = cm_clock_mono_ms ();
    //  A retryable request and one that is not.
    gwh_call_t *read =
        gwh_call_new (&gateway, "GET", "/api/v1/workspaces", GWH_KEY, NULL);
    gwh_call_start (read);
    cm_msg_t *first = gwh_daemon_expect (dies, CM_MSG_REQUEST);
    gwh_call_t *create = gwh_call_new (&gateway, "POST", "/api/v1/workspace/new", GWH_KEY,
                                       "{\"name\":\"once\"}");
    gwh_call_start (create);
    cm_msg_t *second = gwh_daemon_expect (dies, CM_MSG_REQUEST);
    gwh_daemon_destroy (&dies);

    //  The read goes to the survivor, the creation is answered 502.
    cm_msg_t *again = gwh_daemon_expect (survivor, CM_MSG_REQUEST);
    cr_assert_str_eq (cm_msg_request_id (again), cm_msg_request_id (first));
    gwh_daemon_reply (survivor, CM_MSG_FINAL, cm_msg_request_id (again), 200,
                      "application/json", "{\"workspaces\":[]}");
    gwh_call_join (read);
    cr_assert_eq (read->status, 200, "%s", read->reply);
    gwh_call_join (create);
    gwh_assert_error (create, 502, NULL);
    cr_assert (strstr (create->reply, "its connection closed"), "%s", create->reply);
    gwh_wait_health (&gateway, "broker.disconnected_instances", 1);
    gwh_wait_health (&gateway, "services.chat.instances", 1);
    cr_assert_eq (gwh_health_number (&gateway, "broker.expired_instances"), 0);
    cr_assert_lt (cm_clock_mono_ms () - start, 60000, "not by a heartbeat");
    cm_msg_destroy (&first);
    cm_msg_destroy (&second);
    cm_msg_destroy (&again);
    gwh_call_destroy (&read);
    gwh_call_destroy (&create);
    gwh_daemon_destroy (&survivor);
    gwh_gateway_stop (&gateway);
}

Test (gw_server, retry_to_a_vanished_instance_is_answered_502)
{
    //  Instance A hangs with a retryable request; B is still registered but
    //  its socket is gone, so the retry cannot be sent there either. The
    //  client gets 502 and the gateway keeps running. Both id orders, since
    //  the broker walks its instances in hash order.
    const char *ids[2][2] = {{"chat-x", "chat-y"}, {"chat-y", "chat-x"}};
    for (size_t round = 0; round < 2; round++) {
        gwh_gateway_t gateway;
        s_gateway_start (&gateway, S_TIMEOUT_MS, 1 << 20);
        //  A has more credit, so it gets the request.
        gwh_daemon_t *a = gwh_daemon_new (&gateway, "chat", ids[round][0], 2);
        gwh_daemon_t *b = gwh_daemon_new (&gateway, "chat", ids[round][1], 1);
        gwh_wait_health (&gateway, "services.chat.instances", 2);
        gwh_call_t *call = gwh_call_new (&gateway, "POST", "/api/v1/workspace/demo/chat",
                                         GWH_KEY, "{\"message\":\"hi\"}");
        gwh_call_start (call);
        cm_msg_t *request = gwh_daemon_expect (a, CM_MSG_REQUEST);
        gwh_daemon_mute (a);
        //  Let A fall silent for a while, B not, then B's socket goes.
        int64_t until = cm_clock_mono_ms () + GWH_WAIT_MS;
        json_int_t silence = gwh_health_silence (&gateway, a->id);
        while (silence >= 0 && silence < S_HEARTBEAT_MS && cm_clock_mono_ms () < until) {
            gwh_sleep_ms (5);
            silence = gwh_health_silence (&gateway, a->id);
        }
        gwh_daemon_destroy (&b);
        gwh_call_join (call);
        gwh_assert_error (call, 502, NULL);
        gwh_wait_health (&gateway, "services.chat.instances", 0);
        gwh_call_destroy (&call);
        //  Still serving.
        call = gwh_http (&gateway, "GET", "/api/ping", NULL, NULL);
        cr_assert_eq (call->status, 200);
        gwh_call_destroy (&call);
        cm_msg_destroy (&request);
        gwh_daemon_destroy (&a);
        gwh_gateway_stop (&gateway);
    }
}

Test (gw_server, keep_alive_reuses_the_connection)
{
    gwh_gateway_t gateway;
    s_gateway_start (&gateway, S_TIMEOUT_MS, 1 << 20);
    gwh_daemon_t *chatd = gwh_daemon_new (&gateway, "chat", "chat-1", 4);
    gwh_wait_health (&gateway, "services.chat.instances", 1);
    CURL *curl = curl_easy_init ();

    //  Local answers, refusals, and forwarded requests alike.
    struct {
        const char *method, *path, *key, *body;
        long status;
        bool forwarded;
    } steps[] = {
        {"GET", "/api/ping", NULL, NULL, 200, false},
        {"GET", "/api/ping", NULL, NULL, 200, false},
        {"GET", "/api/v1/workspaces", NULL, NULL, 403, false},
        {"GET", "/api/nothing", NULL, NULL, 404, false},
        {"POST", "/api/v1/workspace/demo/chat", GWH_KEY, "{\"message\":\"1\"}", 200,
         true},
        {"POST", "/api/v1/workspace/demo/chat", GWH_KEY, "{\"message\":\"2\"}", 200,
         true},
        {"GET", "/api/health/live", NULL, NULL, 200, false},
    };
    for (size_t i = 0; i < sizeof steps / sizeof *steps; i++) {
        gwh_call_t *call = gwh_call_new (&gateway, steps[i].method, steps[i].path,
                                         steps[i].key, steps[i].body);
        call->curl = curl;
        if (steps[i].forwarded) {
            gwh_call_start (call);
            cm_msg_t *request = gwh_daemon_expect (chatd, CM_MSG_REQUEST);
            gwh_daemon_reply (chatd, CM_MSG_FINAL, cm_msg_request_id (request), 200,
                              "application/json", "{}");
            cm_msg_destroy (&request);
            gwh_call_join (call);
        } else
            gwh_call_run (call);
        cr_assert_eq (call->code, CURLE_OK);
        cr_assert_eq (call->status, steps[i].status, "step %zu", i);
        cr_assert_eq (call->connects, i == 0 ? 1 : 0,
                      "step %zu (%s %s) opened a connection", i, steps[i].method,
                      steps[i].path);
        gwh_call_destroy (&call);
    }
    curl_easy_cleanup (curl);
    gwh_daemon_destroy (&chatd);
    gwh_gateway_stop (&gateway);
}

//  --- API keys ---------------------------------------------------------------

//  Create a key through the admin route with this key; returns the reply's
//  apiKey (new reference).
static json_t *
s_create_key (gwh_gateway_t *gateway, const char *admin, const char *body)
{
    gwh_call_t *call =
        gwh_http (gateway, "POST", "/api/v1/admin/api-keys/new", admin, body);
    cr_assert_eq (call->status, 200, "create: %ld %s", call->status, call->reply);
    json_t *json = gwh_call_json (call);
    json_t *key = json_incref (json_object_get (json, "apiKey"));
    cr_assert (json_is_null (json_object_get (json, "error")));
    json_decref (json);
    gwh_call_destroy (&call);
    return key;
}

static const char *
s_secret (json_t *key)
{
    return json_string_value (json_object_get (key, "secret"));
}

Test (gw_server, api_keys_are_created_used_and_revoked)
{
    gwh_gateway_t gateway;
    s_gateway_start (&gateway, S_TIMEOUT_MS, 1 << 20);
    gwh_daemon_t *chatd = gwh_daemon_new (&gateway, "chat", "chat-1", 4);
    gwh_wait_health (&gateway, "services.chat.instances", 1);

    //  The admin key makes a key for an application.
    json_t *key = s_create_key (&gateway, GWH_KEY, "{\"name\":\"app\"}");
    const char *secret = s_secret (key);
    json_int_t id = json_integer_value (json_object_get (key, "id"));
    cr_assert_str_eq (json_string_value (json_object_get (key, "role")), "default");

    //  It works on the /api/v1 routes; daemons see the key's id as the
    //  caller (so per-key rate limits count per key).
    gwh_call_t *call = gwh_http (&gateway, "GET", "/api/v1/auth", secret, NULL);
    cr_assert_eq (call->status, 200);
    cr_assert_str_eq (call->reply, "{\"authenticated\":true}");
    gwh_call_destroy (&call);
    call = gwh_call_new (&gateway, "GET", "/api/v1/openai/models", secret, NULL);
    gwh_call_start (call);
    cm_msg_t *request = gwh_daemon_expect (chatd, CM_MSG_REQUEST);
    char identity[32];
    snprintf (identity, sizeof identity, "key:%lld", (long long) id);
    cr_assert_str_eq (cm_msg_identity (request), identity);
    gwh_daemon_reply (chatd, CM_MSG_FINAL, cm_msg_request_id (request), 200,
                      "application/json", "{\"object\":\"list\",\"data\":[]}");
    cm_msg_destroy (&request);
    gwh_call_join (call);
    cr_assert_eq (call->status, 200);
    gwh_call_destroy (&call);

    //  Not the admin routes.
    const char *admin_routes[][2] = {{"GET", "/api/v1/admin/api-keys"},
                                     {"POST", "/api/v1/admin/api-keys/new"},
                                     {"DELETE", "/api/v1/admin/api-keys/1"}};
    for (size_t i = 0; i < 3; i++) {
        call = gwh_http (&gateway, admin_routes[i][0], admin_routes[i][1], secret,
                         strcmp (admin_routes[i][0], "POST") ? NULL : "{}");
        gwh_assert_error (call, 403, "This API key may not use admin routes.");
        gwh_call_destroy (&call);
    }

    //  An admin key from the database may: it makes another key.
    json_t *admin = s_create_key (&gateway, GWH_KEY, "{\"role\":\"admin\"}");
    json_t *other = s_create_key (&gateway, s_secret (admin), "{\"name\":\"other\"}");
    snprintf (identity, sizeof identity, "key:%lld",
              (long long) json_integer_value (json_object_get (admin, "id")));
    cr_assert_str_eq (json_string_value (json_object_get (other, "createdBy")), identity);

    //  The list: three keys, no secrets.
    call = gwh_http (&gateway, "GET", "/api/v1/admin/api-keys", s_secret (admin), NULL);
    cr_assert_eq (call->status, 200);
    json_t *json = gwh_call_json (call);
    cr_assert_eq (json_array_size (json_object_get (json, "apiKeys")), 3);
    cr_assert_null (strstr (call->reply, "\"secret\""), "%s", call->reply);
    cr_assert_null (strstr (call->reply, secret + 10), "%s", call->reply);
    json_decref (json);
    gwh_call_destroy (&call);

    //  Revoked: refused at once here, with upstream's 403; twice is 404.
    //  The id is a route parameter, percent-decoded as every one is: its
    //  first digit sent as %3N.
    char path[64];
    char digits[32];
    snprintf (digits, sizeof digits, "%lld", (long long) id);
    snprintf (path, sizeof path, "/api/v1/admin/api-keys/%%3%c%s", digits[0], digits + 1);
    call = gwh_http (&gateway, "DELETE", path, GWH_KEY, NULL);
    cr_assert_eq (call->status, 200, "%s", call->reply);
    cr_assert_str_eq (call->reply, "{\"success\":true,\"error\":null}");
    gwh_call_destroy (&call);
    call = gwh_http (&gateway, "GET", "/api/v1/auth", secret, NULL);
    gwh_assert_error (call, 403, "No valid api key found.");
    gwh_call_destroy (&call);
    call = gwh_http (&gateway, "DELETE", path, GWH_KEY, NULL);
    cr_assert_eq (call->status, 404);
    json = gwh_call_json (call);
    cr_assert (json_is_false (json_object_get (json, "success")));
    json_decref (json);
    gwh_call_destroy (&call);

    //  A bad role is refused, in the create route's shape.
    call = gwh_http (&gateway, "POST", "/api/v1/admin/api-keys/new", GWH_KEY,
                     "{\"role\":\"root\"}");
    cr_assert_eq (call->status, 400);
    cr_assert_str_eq (call->reply,
                      "{\"apiKey\":null,\"error\":\"role must be \\\"admin\\\" or "
                      "\\\"default\\\"\"}");
    gwh_call_destroy (&call);

    json_decref (other);
    json_decref (admin);
    json_decref (key);
    gwh_daemon_destroy (&chatd);
    gwh_gateway_stop (&gateway);
}

//  Is this key refused by this gateway now?
static bool
s_refused (gwh_gateway_t *gateway, const char *secret)
{
    gwh_call_t *call = gwh_http (gateway, "GET", "/api/v1/auth", secret, NULL);
    cr_assert (call->status == 200 || call->status == 403, "%ld %s", call->status,
               call->reply);
    bool refused = call->status == 403;
    gwh_call_destroy (&call);
    return refused;
}

Test (gw_server, a_revoked_key_is_refused_within_a_second_on_every_gateway)
{
    //  Two gateways on one database (as replicas behind a balancer), with
    //  the default cache TTL (500 ms). Both have just trusted the key.
    gwh_gateway_t here, there;
    s_gateway_start (&here, S_TIMEOUT_MS, 1 << 20);
    char storage[128];
    snprintf (storage, sizeof storage, "%s/storage", here.run_dir);
    s_gateway_start_on (&there, S_TIMEOUT_MS, 1 << 20, storage, 500);
    json_t *key = s_create_key (&here, GWH_KEY, "{}");
    const char *secret = s_secret (key);
    cr_assert_not (s_refused (&here, secret));
    cr_assert_not (s_refused (&there, secret));

    //  Revoked through the first; the second refuses it within a second
    //  (its TTL, at most), however often it is asked meanwhile.
    char path[64];
    snprintf (path, sizeof path, "/api/v1/admin/api-keys/%lld",
              (long long) json_integer_value (json_object_get (key, "id")));
    cr_assert_not (s_refused (&there, secret));
    int64_t revoked = cm_clock_mono_ms ();
    gwh_call_t *call = gwh_http (&here, "DELETE", path, GWH_KEY, NULL);
    cr_assert_eq (call->status, 200);
    gwh_call_destroy (&call);
    cr_assert (s_refused (&here, secret), "the revoking gateway refuses it at once");
    int64_t refused = -1;
    while (cm_clock_mono_ms () - revoked < 2000) {
        if (s_refused (&there, secret)) {
            refused = cm_clock_mono_ms ();
            break;
        }
        gwh_sleep_ms (1);
    }
    cr_assert_geq (refused, 0, "still accepted 2 s after its revocation");
    cr_assert_lt (refused - revoked, 1000, "refused after %lld ms",
                  (long long) (refused - revoked));
    fprintf (stderr, "revocation reached the other gateway after %lld ms (TTL 500)\n",
             (long long) (refused - revoked));
    cr_assert (s_refused (&there, secret), "and stays refused");

    json_decref (key);
    gwh_gateway_stop (&there);
    gwh_gateway_stop (&here);
}

Test (gw_server, a_key_that_cannot_be_checked_is_503_never_a_pass)
{
    //  The database cannot be opened (its directory is a file).
    gwh_gateway_t gateway;
    char storage[128];
    snprintf (storage, sizeof storage, "/tmp/llmrt-gw-nodb-%d", (int) getpid ());
    FILE *file = fopen (storage, "w");
    cr_assert_not_null (file);
    fclose (file);
    s_gateway_start_on (&gateway, S_TIMEOUT_MS, 1 << 20, storage, 500);
    gwh_call_t *call =
        gwh_http (&gateway, "GET", "/api/v1/workspaces",
                  "llmrt_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", NULL);
    gwh_assert_error (
        call, 503, "API keys cannot be checked right now: the database is unavailable.");
    cr_assert_str_eq (gwh_call_header (call, "Retry-After"), "1");
    gwh_call_destroy (&call);
    //  The admin key from the environment still works; a key that is not
    //  ours is still simply wrong.
    call = gwh_http (&gateway, "GET", "/api/v1/auth", GWH_KEY, NULL);
    cr_assert_eq (call->status, 200);
    gwh_call_destroy (&call);
    call = gwh_http (&gateway, "GET", "/api/v1/auth", "wrong", NULL);
    cr_assert_eq (call->status, 403);
    gwh_call_destroy (&call);
    call = gwh_http (&gateway, "GET", "/api/v1/admin/api-keys", GWH_KEY, NULL);
    gwh_assert_error (call, 503, NULL);
    gwh_call_destroy (&call);
    gwh_gateway_stop (&gateway);
    unlink (storage);
}

Test (gw_server, a_503_from_a_draining_instance_is_resent_when_retryable)
{
    //  A daemon that has said DISCONNECT answers 503 to what crossed it on
    //  the wire (cm_worker): that request never ran there.
    gwh_gateway_t gateway;
    s_gateway_start (&gateway, S_TIMEOUT_MS, 1 << 20);
    gwh_daemon_t *daemons[2] = {gwh_daemon_new (&gateway, "chat", "chat-a", 2),
                                gwh_daemon_new (&gateway, "chat", "chat-b", 2)};
    gwh_wait_health (&gateway, "services.chat.instances", 2);

    gwh_call_t *call =
        gwh_call_new (&gateway, "POST", "/api/v1/workspace/demo/chat", GWH_KEY, "{}");
    gwh_call_start (call);
    size_t drains;
    cm_msg_t *request = gwh_daemons_expect_request (daemons, 2, &drains);
    gwh_daemon_t *other = daemons[1 - drains];
    cm_msg_t *bye = cm_msg_new (CM_MSG_DISCONNECT);
    cm_msg_set_reason (bye, "draining");
    gwh_daemon_send (daemons[drains], &bye);
    gwh_daemon_reply (daemons[drains], CM_MSG_FINAL, cm_msg_request_id (request), 503,
                      "application/json",
                      "{\"error\":\"The service is shutting down.\"}");
    cm_msg_t *again = gwh_daemon_expect (other, CM_MSG_REQUEST);
    cr_assert_str_eq (cm_msg_request_id (again), cm_msg_request_id (request));
    //  Marked as sent again (chatd then looks for a turn the first run saved).
    cr_assert_null (cm_msg_header (request, "X-Llmrt-Attempt"));
    cr_assert_str_eq (cm_msg_header (again, "X-Llmrt-Attempt"), "2");
    gwh_daemon_reply (other, CM_MSG_FINAL, cm_msg_request_id (again), 200,
                      "application/json", "{\"textResponse\":\"elsewhere\"}");
    gwh_call_join (call);
    cr_assert_eq (call->status, 200);
    cr_assert_str_eq (call->reply, "{\"textResponse\":\"elsewhere\"}");
    gwh_wait_health (&gateway, "broker.retries", 1);
    gwh_call_destroy (&call);
    cm_msg_destroy (&request);
    cm_msg_destroy (&again);

    //  Not retryable (a second workspace would be wrong): the 503 is the
    //  answer, Retry-After and all.
    call = gwh_call_new (&gateway, "POST", "/api/v1/workspace/new", GWH_KEY,
                         "{\"name\":\"once\"}");
    gwh_call_start (call);
    request = gwh_daemon_expect (other, CM_MSG_REQUEST);
    bye = cm_msg_new (CM_MSG_DISCONNECT);
    cm_msg_set_reason (bye, "draining");
    gwh_daemon_send (other, &bye);
    gwh_daemon_reply (other, CM_MSG_FINAL, cm_msg_request_id (request), 503,
                      "application/json",
                      "{\"error\":\"The service is shutting down.\"}");
    gwh_call_join (call);
    cr_assert_eq (call->status, 503);
    gwh_wait_health (&gateway, "broker.retries", 1);
    gwh_call_destroy (&call);
    cm_msg_destroy (&request);
    gwh_daemon_destroy (&daemons[0]);
    gwh_daemon_destroy (&daemons[1]);
    gwh_gateway_stop (&gateway);
}

//  --- a connection that broke ----------------------------------------------------

//  The daemon says READY again, as cm_worker does on a new connection.
static void
s_ready_again (gwh_daemon_t *daemon)
{
    cm_msg_t *ready = cm_msg_new (CM_MSG_READY);
    cm_msg_set_service (ready, daemon->service);
    cm_msg_set_instance (ready, daemon->id);
    cm_msg_set_capacity (ready, daemon->capacity);
    gwh_daemon_send (daemon, &ready);
}

//  The daemon's answer to a CHECK.
static void
s_checked (gwh_daemon_t *daemon, cm_msg_t *check, bool held, uint32_t partials)
{
    cm_msg_t *checked = cm_msg_new (CM_MSG_CHECKED);
    cm_msg_set_request_id (checked, cm_msg_request_id (check));
    cm_msg_set_generation (checked, cm_msg_generation (check));
    cm_msg_set_held (checked, held);
    cm_msg_set_partials (checked, partials);
    gwh_daemon_send (daemon, &checked);
}

//  The next CHECK, which must be about one of these two requests.
static cm_msg_t *
s_expect_check (gwh_daemon_t *daemon, cm_msg_t *one, cm_msg_t *other)
{
    cm_msg_t *check = gwh_daemon_expect (daemon, CM_MSG_CHECK);
    const char *id = cm_msg_request_id (check);
    cr_assert (!strcmp (id, cm_msg_request_id (one)) ||
                   (other && !strcmp (id, cm_msg_request_id (other))),
               "CHECK of an unknown request %s", id);
    return check;
}

Test (gw_server, requests_lost_in_a_broken_connection_are_resent_or_answered)
{
    //  A daemon's connection broke and was made again (the gateway stood
    //  still past the daemon's patience): what was on the old one may be
    //  lost. Before the CHECK, such requests waited for their deadline.
    gwh_gateway_t gateway;
    s_gateway_start (&gateway, S_TIMEOUT_MS, 1 << 20);
    gwh_daemon_t *chatd = gwh_daemon_new (&gateway, "chat", "chat-a", 4);
    gwh_wait_health (&gateway, "services.chat.instances", 1);
    gwh_call_t *read =
        gwh_call_new (&gateway, "GET", "/api/v1/workspaces", GWH_KEY, NULL);
    gwh_call_start (read);
    cm_msg_t *first = gwh_daemon_expect (chatd, CM_MSG_REQUEST);
    gwh_call_t *create = gwh_call_new (&gateway, "POST", "/api/v1/workspace/new", GWH_KEY,
                                       "{\"name\":\"once\"}");
    gwh_call_start (create);
    cm_msg_t *second = gwh_daemon_expect (chatd, CM_MSG_REQUEST);

    //  READY on its new connection: the gateway asks about both.
    s_ready_again (chatd);
    cm_msg_t *check1 = s_expect_check (chatd, first, second);
    cm_msg_t *check2 = s_expect_check (chatd, first, second);
    cr_assert_str_neq (cm_msg_request_id (check1), cm_msg_request_id (check2));
    //  Neither reached it (or their answers went down with the old one).
    s_checked (chatd, check1, false, 0);
    s_checked (chatd, check2, false, 0);

    //  The read runs again, marked as a second sending; the creation may
    //  have run, so it is not sent again: 502, not a wait for the deadline.
    cm_msg_t *again = gwh_daemon_expect (chatd, CM_MSG_REQUEST);
    cr_assert_str_eq (cm_msg_request_id (again), cm_msg_request_id (first));
    cr_assert_str_eq (cm_msg_header (again, "X-Llmrt-Attempt"), "2");
    gwh_daemon_reply (chatd, CM_MSG_FINAL, cm_msg_request_id (again), 200,
                      "application/json", "{\"workspaces\":[]}");
    gwh_call_join (read);
    cr_assert_eq (read->status, 200);
    cr_assert_str_eq (read->reply, "{\"workspaces\":[]}");
    gwh_call_join (create);
    gwh_assert_error (create, 502,
                      "The request or its answer was lost in a broken connection to the "
                      "chat service instance chat-a.");
    gwh_wait_health (&gateway, "broker.lost", 2);
    gwh_wait_health (&gateway, "broker.in_flight", 0);
    cr_assert_eq (gwh_health_number (&gateway, "broker.timeouts"), 0);
    cr_assert_eq (gwh_health_number (&gateway, "services.chat.instances"), 1);
    gwh_call_destroy (&read);
    gwh_call_destroy (&create);
    cm_msg_destroy (&first);
    cm_msg_destroy (&second);
    cm_msg_destroy (&check1);
    cm_msg_destroy (&check2);
    cm_msg_destroy (&again);
    gwh_daemon_destroy (&chatd);
    gwh_gateway_stop (&gateway);
}

//  Two reconnections in a row: two CHECKs of one request. The first answer
//  (not held) has it sent again to the same instance; the second, about
//  the first sending, comes after that and must not count against the
//  second run, which is live (a review found it answered 502).
Test (gw_server, an_answer_about_an_earlier_sending_is_ignored)
{
    gwh_gateway_t gateway;
    s_gateway_start (&gateway, S_TIMEOUT_MS, 1 << 20);
    gwh_daemon_t *chatd = gwh_daemon_new (&gateway, "chat", "chat-a", 4);
    gwh_wait_health (&gateway, "services.chat.instances", 1);
    gwh_call_t *read =
        gwh_call_new (&gateway, "GET", "/api/v1/workspaces", GWH_KEY, NULL);
    gwh_call_start (read);
    cm_msg_t *first = gwh_daemon_expect (chatd, CM_MSG_REQUEST);
    s_ready_again (chatd);
    cm_msg_t *check1 = s_expect_check (chatd, first, NULL);
    s_ready_again (chatd);
    cm_msg_t *check2 = s_expect_check (chatd, first, NULL);
    s_checked (chatd, check1, false, 0);
    cm_msg_t *again = gwh_daemon_expect (chatd, CM_MSG_REQUEST);
    cr_assert_str_eq (cm_msg_header (again, "X-Llmrt-Attempt"), "2");
    //  Late: about the first sending.
    s_checked (chatd, check2, false, 0);
    gwh_sleep_ms (300); //  past the broker's grace for a lost request
    gwh_daemon_reply (chatd, CM_MSG_FINAL, cm_msg_request_id (again), 200,
                      "application/json", "{\"workspaces\":[]}");
    gwh_call_join (read);
    cr_assert_eq (read->status, 200, "%s", read->reply);
    cr_assert_eq (gwh_health_number (&gateway, "broker.lost"), 1);
    gwh_call_destroy (&read);
    cm_msg_destroy (&first);
    cm_msg_destroy (&check1);
    cm_msg_destroy (&check2);
    cm_msg_destroy (&again);
    gwh_daemon_destroy (&chatd);
    gwh_gateway_stop (&gateway);
}

//  A CANCEL may go down with a connection that breaks (a client that left
//  while the gateway stood still is reaped as it wakes): when the instance
//  connects again, what it was told to cancel lately is sent again (the
//  review of this session: the daemon ran such requests to their end).
Test (gw_server, cancels_are_sent_again_when_an_instance_connects_again)
{
    gwh_gateway_t gateway;
    s_gateway_start (&gateway, S_TIMEOUT_MS, 1 << 20);
    gwh_daemon_t *chatd = gwh_daemon_new (&gateway, "chat", "chat-a", 4);
    gwh_wait_health (&gateway, "services.chat.instances", 1);
    gwh_call_t *call = gwh_call_new (&gateway, "POST", "/api/v1/workspace/demo/chat",
                                     GWH_KEY, "{\"message\":\"slow\"}");
    call->timeout_ms = 300;
    gwh_call_start (call);
    cm_msg_t *request = gwh_daemon_expect (chatd, CM_MSG_REQUEST);
    gwh_call_join (call);
    cm_msg_t *cancel = gwh_daemon_expect (chatd, CM_MSG_CANCEL);
    cr_assert_str_eq (cm_msg_request_id (cancel), cm_msg_request_id (request));
    cm_msg_destroy (&cancel);
    //  As if that CANCEL had been lost: the instance connects again.
    s_ready_again (chatd);
    cancel = gwh_daemon_expect (chatd, CM_MSG_CANCEL);
    cr_assert_str_eq (cm_msg_request_id (cancel), cm_msg_request_id (request));
    cr_assert_str_eq (cm_msg_reason (cancel), "client disconnected");
    cm_msg_destroy (&cancel);
    cr_assert_null (gwh_daemon_recv (chatd, 200),
                    "nothing else (no CHECK: nothing in flight)");
    gwh_call_destroy (&call);
    cm_msg_destroy (&request);
    gwh_daemon_destroy (&chatd);
    gwh_gateway_stop (&gateway);
}

Test (gw_server, requests_held_across_a_broken_connection_go_on)
{
    gwh_gateway_t gateway;
    s_gateway_start (&gateway, S_TIMEOUT_MS, 1 << 20);
    gwh_daemon_t *chatd = gwh_daemon_new (&gateway, "chat", "chat-a", 4);
    gwh_wait_health (&gateway, "services.chat.instances", 1);
    gwh_call_t *stream =
        gwh_call_new (&gateway, "POST", "/api/v1/workspace/demo/stream-chat", GWH_KEY,
                      "{\"message\":\"hi\"}");
    gwh_call_start (stream);
    cm_msg_t *request = gwh_daemon_expect (chatd, CM_MSG_REQUEST);
    gwh_daemon_reply (chatd, CM_MSG_PARTIAL, cm_msg_request_id (request), 200,
                      "text/event-stream", "data: {\"n\":1}\n\n");
    gwh_daemon_reply (chatd, CM_MSG_PARTIAL, cm_msg_request_id (request), 200,
                      "text/event-stream", "data: {\"n\":2}\n\n");
    cr_assert (gwh_call_wait_for (stream, "data: {\"n\":2}\n\n"));
    s_ready_again (chatd);
    cm_msg_t *check = s_expect_check (chatd, request, NULL);
    //  Held, and both parts it sent arrived: nothing to do.
    s_checked (chatd, check, true, 2);
    gwh_daemon_reply (chatd, CM_MSG_PARTIAL, cm_msg_request_id (request), 200,
                      "text/event-stream", "data: {\"n\":3}\n\n");
    gwh_daemon_reply (chatd, CM_MSG_FINAL, cm_msg_request_id (request), 200,
                      "text/event-stream", "");
    gwh_call_join (stream);
    cr_assert_str_eq (stream->reply,
                      "data: {\"n\":1}\n\ndata: {\"n\":2}\n\ndata: {\"n\":3}\n\n");
    gwh_wait_health (&gateway, "broker.in_flight", 0);
    cr_assert_eq (gwh_health_number (&gateway, "broker.lost"), 0);
    cr_assert_null (gwh_daemon_recv (chatd, 200), "no CANCEL, nothing resent");
    gwh_call_destroy (&stream);
    cm_msg_destroy (&request);
    cm_msg_destroy (&check);
    gwh_daemon_destroy (&chatd);
    gwh_gateway_stop (&gateway);
}

Test (gw_server, a_stream_that_lost_parts_in_a_broken_connection_ends_with_abort)
{
    gwh_gateway_t gateway;
    s_gateway_start (&gateway, S_TIMEOUT_MS, 1 << 20);
    gwh_daemon_t *chatd = gwh_daemon_new (&gateway, "chat", "chat-a", 4);
    gwh_wait_health (&gateway, "services.chat.instances", 1);
    gwh_call_t *stream =
        gwh_call_new (&gateway, "POST", "/api/v1/workspace/demo/stream-chat", GWH_KEY,
                      "{\"message\":\"hi\"}");
    gwh_call_start (stream);
    cm_msg_t *request = gwh_daemon_expect (chatd, CM_MSG_REQUEST);
    gwh_daemon_reply (chatd, CM_MSG_PARTIAL, cm_msg_request_id (request), 200,
                      "text/event-stream", "data: {\"n\":1}\n\n");
    cr_assert (gwh_call_wait_for (stream, "data: {\"n\":1}\n\n"));
    s_ready_again (chatd);
    cm_msg_t *check = s_expect_check (chatd, request, NULL);
    //  It sent three; two went down with the old connection.
    s_checked (chatd, check, true, 3);
    gwh_call_join (stream);
    cr_assert (gwh_call_has (stream, "\"type\":\"abort\""), "%s", stream->reply);
    cr_assert (gwh_call_has (stream, "was lost in a broken connection"), "%s",
               stream->reply);
    //  The daemon is told to stop: nobody reads the rest.
    cm_msg_t *cancel = gwh_daemon_expect (chatd, CM_MSG_CANCEL);
    cr_assert_str_eq (cm_msg_request_id (cancel), cm_msg_request_id (request));
    gwh_wait_health (&gateway, "broker.lost", 1);
    gwh_wait_health (&gateway, "broker.in_flight", 0);
    gwh_call_destroy (&stream);
    cm_msg_destroy (&request);
    cm_msg_destroy (&check);
    cm_msg_destroy (&cancel);
    gwh_daemon_destroy (&chatd);
    gwh_gateway_stop (&gateway);
}

//  Send a message from a socket without a routing id of ours.
static void
s_send_unnamed (zsock_t *dealer, cm_msg_t **msg_p)
{
    char *data;
    size_t size;
    cm_msg_encode (*msg_p, &data, &size);
    cr_assert_eq (zmq_send (zsock_resolve (dealer), data, size, 0), (int) size);
    free (data);
    cm_msg_destroy (msg_p);
}

Test (gw_server, a_whole_answer_from_a_replaced_connection_is_delivered)
{
    //  When an instance connects again while its old connection is open,
    //  libzmq renames the old one (ROUTER_HANDOVER) and what still comes
    //  on it reaches the broker without the instance's name, as from this
    //  socket without one. A whole answer is taken by its request id (the
    //  request ran: it must not run again); a stream's part is not (it
    //  could be out of order with the new connection's).
    gwh_gateway_t gateway;
    s_gateway_start (&gateway, S_TIMEOUT_MS, 1 << 20);
    gwh_daemon_t *chatd = gwh_daemon_new (&gateway, "chat", "chat-a", 4);
    gwh_wait_health (&gateway, "services.chat.instances", 1);
    gwh_call_t *create = gwh_call_new (&gateway, "POST", "/api/v1/workspace/new", GWH_KEY,
                                       "{\"name\":\"once\"}");
    gwh_call_start (create);
    cm_msg_t *request = gwh_daemon_expect (chatd, CM_MSG_REQUEST);
    gwh_call_t *stream =
        gwh_call_new (&gateway, "POST", "/api/v1/workspace/demo/stream-chat", GWH_KEY,
                      "{\"message\":\"hi\"}");
    gwh_call_start (stream);
    cm_msg_t *streamed = gwh_daemon_expect (chatd, CM_MSG_REQUEST);

    zsock_t *old = zsock_new_dealer (gateway.backend);
    cr_assert_not_null (old);
    json_int_t dropped = gwh_health_number (&gateway, "broker.dropped_frames");
    cm_msg_t *part = cm_msg_new (CM_MSG_PARTIAL);
    cm_msg_set_request_id (part, cm_msg_request_id (streamed));
    cm_msg_set_status (part, 200);
    cm_msg_set_content_type (part, "text/event-stream");
    cm_msg_set_body (part, "data: {\"n\":1}\n\n", 15);
    s_send_unnamed (old, &part);
    gwh_wait_health (&gateway, "broker.dropped_frames", dropped + 1);
    cm_msg_t *answer = cm_msg_new (CM_MSG_FINAL);
    cm_msg_set_request_id (answer, cm_msg_request_id (request));
    cm_msg_set_status (answer, 200);
    cm_msg_set_content_type (answer, "application/json");
    cm_msg_set_body (answer, "{\"workspace\":{\"slug\":\"once\"}}", 29);
    s_send_unnamed (old, &answer);
    gwh_call_join (create);
    cr_assert_eq (create->status, 200);
    cr_assert_str_eq (create->reply, "{\"workspace\":{\"slug\":\"once\"}}");
    cr_assert_eq (gwh_health_number (&gateway, "broker.dropped_frames"), dropped + 1);

    //  The new connection's READY; the stream's instance still holds it and
    //  sent one part, which did not count: as nothing had reached the client
    //  yet, 502, not a stream without its beginning.
    s_ready_again (chatd);
    cm_msg_t *check = s_expect_check (chatd, streamed, NULL);
    s_checked (chatd, check, true, 1);
    gwh_call_join (stream);
    gwh_assert_error (
        stream, 502,
        "Part of the answer of the chat service instance chat-a was lost in "
        "a broken connection.");
    gwh_wait_health (&gateway, "broker.lost", 1);
    gwh_wait_health (&gateway, "broker.in_flight", 0);
    zsock_destroy (&old);
    gwh_call_destroy (&create);
    gwh_call_destroy (&stream);
    cm_msg_destroy (&request);
    cm_msg_destroy (&streamed);
    cm_msg_destroy (&check);
    gwh_daemon_destroy (&chatd);
    gwh_gateway_stop (&gateway);
}

//  --- settings ----------------------------------------------------------------

//  Load the gateway's settings from the environment and check them:
//  cm_config_load, then gw_config_check (as main does; -1 means exit 2).
static int
s_settings_check (char *err, size_t errlen)
{
    gw_config_t config = {0};
    int rc = cm_config_load (gw_config_table (), &config, err, errlen);
    if (rc == 0)
        rc = gw_config_check (&config, err, errlen);
    cm_config_free (gw_config_table (), &config);
    return rc;
}

Test (gw_server, bad_settings_are_named_before_anything_starts)
{
    char dir[] = "/tmp/llmrt-gw-conf-XXXXXX";
    cr_assert_not_null (mkdtemp (dir));
    char file[64];
    snprintf (file, sizeof file, "%s/file", dir);
    FILE *f = fopen (file, "w");
    cr_assert_not_null (f);
    fclose (f);
    //  Each alone, the rest at their defaults (RUN_DIR: the temporary one).
    const struct {
        const char *name, *value, *also, *also_value;
    } bad[] = {
        {"SERVER_HOST", "abc", NULL, NULL},
        {"SERVER_HOST", "localhost", NULL, NULL},
        {"SERVER_HOST", "::1", NULL, NULL},
        {"SERVER_HOST", "256.0.0.1", NULL, NULL},
        {"SERVER_HOST", "127.0.0.1 ", NULL, NULL},
        {"SERVER_HOST", "0", NULL, NULL},
        {"RATE_LIMIT_GLOBAL_BURST", "1000000000", "RATE_LIMIT_GLOBAL_RPS", "1"},
        {"REDIS_URL", "redis://127.0.0.1:notaport", NULL, NULL},
        {"REDIS_URL", "http://127.0.0.1:6379", NULL, NULL},
        {"REDIS_URL", "redis://:6990", NULL, NULL},
        {"REDIS_URL", "redis://h:99999", NULL, NULL},
        {"REDIS_URL", "redis://h:6990/abc", NULL, NULL},
        {"ADMIN_API_KEY", " ", NULL, NULL},
        {"ADMIN_API_KEY", "a b", NULL, NULL},
        {"ADMIN_API_KEY", "key\n", NULL, NULL},
        {"LOG_LEVEL", "verbose", NULL, NULL},
        {"GATEWAY_BACKEND_BIND", "tcp://127.0.0.1:0", NULL, NULL},
        {"GATEWAY_BACKEND_BIND", "tcp://127.0.0.1:*", NULL, NULL},
        {"GATEWAY_BACKEND_BIND", "tcp://127.0.0.1: 5990", NULL, NULL},
        {"GATEWAY_BACKEND_BIND", "tcp://127.0.0.1:+5990", NULL, NULL},
        {"GATEWAY_BACKEND_BIND", "inproc://gateway", NULL, NULL},
        {"SUPERVISOR_ENDPOINT", "tcp://*:5556", NULL, NULL},
        {"STORAGE_DIR", file, NULL, NULL},
        {"RUN_DIR", file, NULL, NULL},
    };
    char err[512];
    setenv ("RUN_DIR", dir, 1);
    cr_assert_eq (s_settings_check (err, sizeof err), 0, "defaults: %s", err);
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        setenv (bad[i].name, bad[i].value, 1);
        if (bad[i].also)
            setenv (bad[i].also, bad[i].also_value, 1);
        err[0] = 0;
        cr_assert_eq (s_settings_check (err, sizeof err), -1, "%s='%s' was accepted",
                      bad[i].name, bad[i].value);
        cr_assert (strstr (err, bad[i].name), "error was: %s", err);
        unsetenv (bad[i].name);
        if (bad[i].also)
            unsetenv (bad[i].also);
        setenv ("RUN_DIR", dir, 1);
    }
    //  What deploy/ uses, and a burst that refills within 10^8 s.
    setenv ("SERVER_HOST", "0.0.0.0", 1);
    setenv ("GATEWAY_BACKEND_BIND", "tcp://0.0.0.0:5555", 1);
    setenv ("SUPERVISOR_ENDPOINT", "tcp://supervisor:5556", 1);
    setenv ("REDIS_URL", "redis://redis:6379", 1);
    setenv ("RATE_LIMIT_GLOBAL_RPS", "10", 1);
    setenv ("RATE_LIMIT_GLOBAL_BURST", "1000000000", 1);
    setenv ("LOG_LEVEL", "Debug", 1);
    cr_assert_eq (s_settings_check (err, sizeof err), 0, "%s", err);
    const char *names[] = {"SERVER_HOST",
                           "GATEWAY_BACKEND_BIND",
                           "SUPERVISOR_ENDPOINT",
                           "REDIS_URL",
                           "RATE_LIMIT_GLOBAL_RPS",
                           "RATE_LIMIT_GLOBAL_BURST",
                           "LOG_LEVEL",
                           "RUN_DIR"};
    for (size_t i = 0; i < sizeof names / sizeof *names; i++)
        unsetenv (names[i]);
    cm_log_set_level (CM_LOG_WARN);
    unlink (file);
    rmdir (dir);
}

//  --- slow readers and stream flavours ---------------------------------------

//  A client that stops reading its stream: the gateway holds at most
//  GATEWAY_STREAM_BUFFER_BYTES for it, then ends its stream and tells the
//  daemon to stop (an operator's audit: 17-21 MB held per stuck reader, and
//  the daemon went on producing).
Test (gw_server, a_client_that_stops_reading_has_its_stream_ended)
{
    gwh_gateway_t gateway;
    gw_config_t config = {.timeout_ms = S_TIMEOUT_MS,
                          .heartbeat_ms = S_HEARTBEAT_MS,
                          .liveness = S_LIVENESS,
                          .health_interval = 100,
                          .key_cache_ttl_ms = 500,
                          .stream_buffer = 65536};
    gwh_gateway_start (&gateway, &config);
    gwh_daemon_t *chatd = gwh_daemon_new (&gateway, "chat", "chat-a", 4);
    gwh_wait_health (&gateway, "services.chat.instances", 1);
    int fd = gwh_connect (&gateway, 4096);
    const char *request =
        "POST /api/v1/workspace/demo/stream-chat HTTP/1.1\r\nHost: x\r\n"
        "Authorization: Bearer " GWH_KEY "\r\n"
        "Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{}";
    cr_assert_eq (send (fd, request, strlen (request), MSG_NOSIGNAL),
                  (ssize_t) strlen (request));
    cm_msg_t *streamed = gwh_daemon_expect (chatd, CM_MSG_REQUEST);
    //  16 KiB events until the gateway says stop: more than the kernel's
    //  socket buffers take, then GATEWAY_STREAM_BUFFER_BYTES.
    static char event[16 * 1024 + 1];
    memset (event, 'x', sizeof event - 1);
    memcpy (event, "data: {\"uuid\":\"u-1\",\"t\":\"", 25);
    memcpy (event + sizeof event - 5, "\"}\n\n", 4);
    cm_msg_t *cancel = NULL;
    for (int sent = 0; sent < 2000 && !cancel; sent++) {
        gwh_daemon_reply (chatd, CM_MSG_PARTIAL, cm_msg_request_id (streamed), 200,
                          "text/event-stream", event);
        cancel = gwh_daemon_recv (chatd, 0);
    }
    if (!cancel)
        cancel = gwh_daemon_recv (chatd, GWH_WAIT_MS);
    cr_assert_not_null (cancel, "the daemon was never told to stop");
    cr_assert_eq (cm_msg_type (cancel), CM_MSG_CANCEL);
    cr_assert_str_eq (cm_msg_reason (cancel), "the client reads too slowly");
    gwh_wait_health (&gateway, "broker.slow_clients", 1);
    gwh_wait_health (&gateway, "broker.in_flight", 0);
    //  The client, reading at last, finds its stream's end: the abort event
    //  (with the stream's uuid) and the finalize event.
    char tail[512] = "";
    size_t kept = 0;
    char chunk[65536];
    ssize_t n;
    struct timeval wait = {.tv_sec = GWH_WAIT_MS / 1000};
    setsockopt (fd, SOL_SOCKET, SO_RCVTIMEO, &wait, sizeof wait);
    while ((n = recv (fd, chunk, sizeof chunk, 0)) > 0) {
        //  Keep the last bytes only.
        size_t take = (size_t) n < sizeof tail - 1 ? (size_t) n : sizeof tail - 1;
        if (kept + take > sizeof tail - 1) {
            size_t drop = kept + take - (sizeof tail - 1);
            memmove (tail, tail + drop, kept - drop);
            kept -= drop;
        }
        memcpy (tail + kept, chunk + n - take, take);
        kept += take;
        tail[kept] = 0;
        if (strstr (tail, "finalizeResponseStream"))
            break;
    }
    cr_assert (strstr (tail, "\"uuid\":\"u-1\",\"type\":\"abort\""), "%s", tail);
    cr_assert (strstr (tail, "read the answer too slowly"), "%s", tail);
    cr_assert (strstr (tail, "finalizeResponseStream"), "%s", tail);
    close (fd);
    cm_msg_destroy (&cancel);
    cm_msg_destroy (&streamed);
    gwh_daemon_destroy (&chatd);
    gwh_gateway_stop (&gateway);
}

//  An OpenAI stream the gateway must end (its instance died) ends with
//  OpenAI's error event, which the client libraries raise, not the chat
//  routes' abort event.
Test (gw_server, an_openai_stream_that_fails_ends_with_openais_error_event)
{
    gwh_gateway_t gateway;
    s_gateway_start (&gateway, S_TIMEOUT_MS, 1 << 20);
    gwh_daemon_t *chatd = gwh_daemon_new (&gateway, "chat", "chat-1", 4);
    gwh_wait_health (&gateway, "services.chat.instances", 1);
    gwh_call_t *stream =
        gwh_call_new (&gateway, "POST", "/api/v1/openai/chat/completions", GWH_KEY,
                      "{\"model\":\"demo\",\"stream\":true,\"messages\":[]}");
    gwh_call_start (stream);
    cm_msg_t *request = gwh_daemon_expect (chatd, CM_MSG_REQUEST);
    const char *chunk = "data: {\"id\":\"c-1\",\"object\":\"chat.completion.chunk\","
                        "\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"}}]}\n\n";
    gwh_daemon_reply (chatd, CM_MSG_PARTIAL, cm_msg_request_id (request), 200,
                      "text/event-stream", chunk);
    cr_assert (gwh_call_wait_for (stream, "chat.completion.chunk"));
    gwh_daemon_mute (chatd);
    gwh_call_join (stream);
    const char *rest = stream->reply + strlen (chunk);
    cr_assert (!strncmp (rest, "data: {\"error\":{\"message\":\"The chat service", 43),
               "%s", stream->reply);
    cr_assert (strstr (rest, "\"type\":\"server_error\""), "%s", stream->reply);
    cr_assert_null (strstr (rest, "abort"), "%s", stream->reply);
    gwh_call_destroy (&stream);
    cm_msg_destroy (&request);
    gwh_daemon_destroy (&chatd);
    gwh_gateway_stop (&gateway);
}

//  GATEWAY_IDLE_TIMEOUT_SECONDS: a connection that says nothing is closed
//  (it was a fixed 120 s, undocumented).
Test (gw_server, a_silent_connection_is_closed_after_the_idle_timeout)
{
    gwh_gateway_t gateway;
    gw_config_t config = {.timeout_ms = S_TIMEOUT_MS,
                          .heartbeat_ms = S_HEARTBEAT_MS,
                          .liveness = S_LIVENESS,
                          .health_interval = 100,
                          .key_cache_ttl_ms = 500,
                          .idle_timeout_s = 1};
    gwh_gateway_start (&gateway, &config);
    int fd = gwh_connect (&gateway, 0);
    //  Half a request line, then silence.
    cr_assert_eq (send (fd, "GET /api/pi", 11, MSG_NOSIGNAL), 11);
    struct timeval wait = {.tv_sec = GWH_WAIT_MS / 1000};
    setsockopt (fd, SOL_SOCKET, SO_RCVTIMEO, &wait, sizeof wait);
    int64_t start = cm_clock_mono_ms ();
    char byte;
    ssize_t n = recv (fd, &byte, 1, 0);
    cr_assert (n == 0 || (n < 0 && errno == ECONNRESET), "still open after %lld ms",
               (long long) (cm_clock_mono_ms () - start));
    close (fd);
    gwh_gateway_stop (&gateway);
}
