/*  test_chat_service.c: chatd's routes against API.md's shapes.

    The handlers are called directly with a fake cm_call_t: this file
    defines every cm_call_* function itself (a link seam), so the test needs
    no gateway and no ZeroMQ, and can cancel a stream at an exact event. */
#include <criterion/criterion.h>
#include "chat_service.h"
#include "cm_storage.h"
#include "cm_storage_docs.h"
#include "test_dir.h"

//  --- the fake call ----------------------------------------------------------------

struct cm_call_s {
    const char *method;    //  request method
    const char *pattern;   //  the route it was matched to
    const char *params[4]; //  name, value, name, value of {param}s
    const char *query[6];  //  name, value pairs of the query string
    json_t *body;          //  request body (owned)
    int cancel_after;      //  cancelled once this many SSE events went out (0: never)
    int status;            //  status of the reply
    json_t *reply;         //  a JSON FINAL, parsed
    char *text;            //  a non-JSON FINAL body
    json_t *events;        //  SSE events, in order
    bool ended;            //  cm_call_stream_end was called
    int finals;            //  FINAL messages sent (must end at 1)
    json_t *headers;       //  response headers added, name: value
    char request_id[32];   //  unique per call, as the gateway's are
    bool resent;           //  the gateway sent it a second time
};

const char *
cm_call_request_id (cm_call_t *self)
{
    return self->request_id;
}

const char *
cm_call_method (cm_call_t *self)
{
    return self->method;
}

const char *
cm_call_path (cm_call_t *self)
{
    return self->pattern;
}

static const char *
s_lookup (const char *const *pairs, size_t count, const char *name)
{
    for (size_t i = 0; i + 1 < count && pairs[i]; i += 2)
        if (!strcmp (pairs[i], name))
            return pairs[i + 1];
    return NULL;
}

const char *
cm_call_param (cm_call_t *self, const char *name)
{
    return s_lookup (self->params, 4, name);
}

const char *
cm_call_query (cm_call_t *self, const char *name)
{
    return s_lookup (self->query, 6, name);
}

size_t
cm_call_query_count (cm_call_t *self)
{
    size_t count = 0;
    for (size_t i = 0; i + 1 < 6 && self->query[i]; i += 2)
        count++;
    return count;
}

const char *
cm_call_identity (cm_call_t *self)
{
    (void) self;
    return "test-key";
}

const char *
cm_call_header (cm_call_t *self, const char *name)
{
    (void) self, (void) name;
    return NULL;
}

int64_t
cm_call_twice_from_us (cm_call_t *self)
{
    return self->resent ? 0 : INT64_MAX;
}

const char *
cm_call_body (cm_call_t *self, size_t *size_p)
{
    (void) self;
    *size_p = 0;
    return "";
}

json_t *
cm_call_json (cm_call_t *self)
{
    return self->body;
}

int64_t
cm_call_deadline (cm_call_t *self)
{
    (void) self;
    return 0;
}

bool
cm_call_shutting_down (cm_call_t *self)
{
    (void) self;
    return false;
}

bool
cm_call_cancelled (cm_call_t *self)
{
    return self->cancel_after &&
           (int) json_array_size (self->events) >= self->cancel_after;
}

void
cm_call_header_add (cm_call_t *self, const char *name, const char *value)
{
    cr_assert_eq (self->finals, 0, "headers go before the reply");
    json_object_set_new (self->headers, name, json_string (value));
}

void
cm_call_reply (cm_call_t *self, int status, const char *content_type, const void *body,
               size_t size)
{
    (void) content_type;
    cr_assert_eq (self->finals, 0, "one FINAL per call");
    self->finals++;
    self->status = status;
    self->reply = json_loadb (body, size, 0, NULL);
    self->text = strndup (body, size);
}

void
cm_call_reply_json (cm_call_t *self, int status, json_t *value)
{
    cr_assert_not_null (value, "a reply was built from a bad json_pack");
    char *text = json_dumps (value, JSON_COMPACT);
    json_decref (value);
    cm_call_reply (self, status, "application/json", text, strlen (text));
    free (text);
}

void
cm_call_reply_error (cm_call_t *self, int status, const char *message)
{
    cm_call_reply_json (self, status, json_pack ("{s:s}", "error", message));
}

//  Raw stream data (the OpenAI route's "data: [DONE]") is kept among the
//  events as a JSON string.
void
cm_call_stream (cm_call_t *self, int status, const char *content_type, const void *data,
                size_t size)
{
    cr_assert_eq (self->finals, 0, "no data after the end");
    cr_assert_str_eq (content_type, "text/event-stream");
    self->status = status;
    json_array_append_new (self->events, json_stringn (data, size));
}

void
cm_call_sse (cm_call_t *self, json_t *event)
{
    cr_assert_not_null (event, "an event was built from a bad json_pack");
    cr_assert_eq (self->finals, 0, "no event after the end");
    self->status = 200;
    json_array_append_new (self->events, event);
}

void
cm_call_stream_end (cm_call_t *self)
{
    cr_assert_eq (self->finals, 0, "one FINAL per call");
    self->finals++;
    self->ended = true;
}

bool
cm_call_replied (cm_call_t *self)
{
    return self->finals > 0;
}

//  --- harness ------------------------------------------------------------------------

static char s_dir[64];
static chat_service_t *s_service;
static const char *s_query[6]; //  query string of the next s_serve (then cleared)

static void
s_setup (void)
{
    test_dir_make (s_dir, sizeof s_dir, "/tmp/llmrt-chatd-XXXXXX");
    char err[512] = "";
    chat_provider_t *provider = chat_provider_new_builtin (0);
    s_service = chat_service_new (s_dir, &provider, err, sizeof err);
    cr_assert_not_null (s_service, "%s", err);
    cr_assert_null (provider);
}

static void
s_teardown (void)
{
    chat_service_destroy (&s_service);
    test_dir_remove (s_dir);
}

//  When set, the request id of every call (as when the gateway resends),
//  and whether it comes marked as sent again.
static const char *s_resend_id;
static bool s_resent;

//  Serve one request: the route by method and pattern, params "slug" and
//  "threadSlug", a JSON body (text, may be NULL).
static cm_call_t *
s_serve (const char *method, const char *pattern, const char *slug, const char *thread,
         const char *body, int cancel_after)
{
    static int requests;
    cm_call_t *call = calloc (1, sizeof *call);
    snprintf (call->request_id, sizeof call->request_id, "test-request-%d", ++requests);
    if (s_resend_id) { //  the gateway sends this request again
        snprintf (call->request_id, sizeof call->request_id, "%s", s_resend_id);
        call->resent = s_resent;
    }
    call->method = method;
    call->pattern = pattern;
    call->params[0] = "slug";
    call->params[1] = slug;
    if (thread) {
        call->params[2] = "threadSlug";
        call->params[3] = thread;
    }
    call->body = body ? json_loads (body, 0, NULL) : NULL;
    cr_assert (!body || call->body, "bad test body: %s", body);
    call->cancel_after = cancel_after;
    call->events = json_array ();
    call->headers = json_object ();
    memcpy (call->query, s_query, sizeof s_query);
    memset (s_query, 0, sizeof s_query);
    const cm_route_t *route = chat_service_routes ();
    while (route->method &&
           (strcmp (route->method, method) || strcmp (route->pattern, pattern)))
        route++;
    cr_assert_not_null (route->method, "no route %s %s", method, pattern);
    route->handler (call, s_service);
    cr_assert_eq (call->finals, 1, "%s %s sent %d FINAL(s)", method, pattern,
                  call->finals);
    return call;
}

static void
s_call_free (cm_call_t **call_p)
{
    cm_call_t *call = *call_p;
    json_decref (call->body);
    json_decref (call->reply);
    json_decref (call->events);
    json_decref (call->headers);
    free (call->text);
    free (call);
    *call_p = NULL;
}

static const char *
s_str (json_t *object, const char *key)
{
    return json_string_value (json_object_get (object, key));
}

static void
s_new_workspace (const char *body)
{
    cm_call_t *call = s_serve ("POST", "/api/v1/workspace/new", NULL, NULL, body, 0);
    cr_assert_eq (call->status, 200, "%s", call->text);
    s_call_free (&call);
}

//  The abort shape of errors before output.
static void
s_assert_abort (cm_call_t *call, int status, const char *error)
{
    cr_assert_eq (call->status, status, "status %d: %s", call->status, call->text);
    cr_assert_eq (json_array_size (call->events), 0);
    json_t *r = call->reply;
    cr_assert_eq (json_object_size (r), 6, "%s", call->text);
    cr_assert_eq (strlen (s_str (r, "id")), 36);
    cr_assert_str_eq (s_str (r, "type"), "abort");
    cr_assert (json_is_null (json_object_get (r, "textResponse")));
    cr_assert_eq (json_array_size (json_object_get (r, "sources")), 0);
    cr_assert (json_is_array (json_object_get (r, "sources")));
    cr_assert (json_is_true (json_object_get (r, "close")));
    cr_assert_str_eq (s_str (r, "error"), error);
}

static void
s_assert_metrics (json_t *metrics)
{
    const char *keys[] = {"prompt_tokens", "completion_tokens", "total_tokens",
                          "outputTps", "duration"};
    cr_assert_eq (json_object_size (metrics), 5);
    for (int i = 0; i < 5; i++)
        cr_assert (json_is_number (json_object_get (metrics, keys[i])), "metrics.%s",
                   keys[i]);
    cr_assert_gt (json_integer_value (json_object_get (metrics, "completion_tokens")), 0);
}

TestSuite (chat_service, .init = s_setup, .fini = s_teardown);

//  --- tests -------------------------------------------------------------------------

Test (chat_service, walkthrough)
{
    //  Create a workspace.
    cm_call_t *call = s_serve ("POST", "/api/v1/workspace/new", NULL, NULL,
                               "{\"name\":\"Demo Space\",\"openAiHistory\":5}", 0);
    cr_assert_eq (call->status, 200);
    json_t *workspace = json_object_get (call->reply, "workspace");
    cr_assert_str_eq (s_str (workspace, "slug"), "demo-space");
    cr_assert_eq (json_integer_value (json_object_get (workspace, "openAiHistory")), 5);
    cr_assert (json_object_get (call->reply, "message"));
    cr_assert (json_is_null (json_object_get (call->reply, "message")));
    s_call_free (&call);

    //  Ask it something.
    call = s_serve ("POST", "/api/v1/workspace/{slug}/chat", "demo-space", NULL,
                    "{\"message\":\"Hello there\",\"mode\":\"chat\"}", 0);
    cr_assert_eq (call->status, 200, "%s", call->text);
    json_t *r = call->reply;
    const char *keys[] = {"id",     "type",         "close",   "error",
                          "chatId", "textResponse", "sources", "metrics"};
    cr_assert_eq (json_object_size (r), 8, "%s", call->text);
    for (int i = 0; i < 8; i++)
        cr_assert (json_object_get (r, keys[i]), "missing %s", keys[i]);
    cr_assert_str_eq (s_str (r, "type"), "textResponse");
    cr_assert (json_is_true (json_object_get (r, "close")));
    cr_assert (json_is_null (json_object_get (r, "error")));
    cr_assert_gt (json_integer_value (json_object_get (r, "chatId")), 0);
    cr_assert (strstr (s_str (r, "textResponse"), "\"Hello there\""));
    s_assert_metrics (json_object_get (r, "metrics"));
    s_call_free (&call);

    //  The history shows the turn as a user and an assistant entry.
    call = s_serve ("GET", "/api/v1/workspace/{slug}/chats", "demo-space", NULL, NULL, 0);
    cr_assert_eq (call->status, 200);
    json_t *history = json_object_get (call->reply, "history");
    cr_assert_eq (json_array_size (history), 2);
    json_t *user = json_array_get (history, 0), *assistant = json_array_get (history, 1);
    cr_assert_str_eq (s_str (user, "role"), "user");
    cr_assert_str_eq (s_str (user, "content"), "Hello there");
    cr_assert_gt (json_integer_value (json_object_get (user, "sentAt")), 1600000000);
    cr_assert_str_eq (s_str (assistant, "role"), "assistant");
    cr_assert_str_eq (s_str (assistant, "type"), "chat");
    s_assert_metrics (json_object_get (assistant, "metrics"));
    s_call_free (&call);

    //  Listing and reading it back.
    call = s_serve ("GET", "/api/v1/workspaces", NULL, NULL, NULL, 0);
    json_t *list = json_object_get (call->reply, "workspaces");
    cr_assert_eq (json_array_size (list), 1);
    cr_assert (json_is_array (json_object_get (json_array_get (list, 0), "threads")));
    s_call_free (&call);
    call = s_serve ("GET", "/api/v1/workspace/{slug}", "demo-space", NULL, NULL, 0);
    json_t *found = json_object_get (call->reply, "workspace");
    cr_assert (json_is_array (found));
    cr_assert_eq (json_array_size (found), 1);
    cr_assert (json_is_array (json_object_get (json_array_get (found, 0), "documents")));
    s_call_free (&call);
}

Test (chat_service, workspace_new_without_name_is_400)
{
    const char *bodies[] = {NULL, "{}", "{\"name\":\"\"}", "{\"name\":null}", "[1,2]"};
    for (size_t i = 0; i < sizeof bodies / sizeof bodies[0]; i++) {
        cm_call_t *call =
            s_serve ("POST", "/api/v1/workspace/new", NULL, NULL, bodies[i], 0);
        cr_assert_eq (call->status, 400);
        cr_assert_eq (json_object_size (call->reply), 2);
        cr_assert (json_is_null (json_object_get (call->reply, "workspace")));
        cr_assert_str_eq (s_str (call->reply, "message"), "name cannot be null");
        s_call_free (&call);
    }
}

Test (chat_service, unknown_slug_is_an_empty_array)
{
    cm_call_t *call = s_serve ("GET", "/api/v1/workspace/{slug}", "ghost", NULL, NULL, 0);
    cr_assert_eq (call->status, 200);
    cr_assert_str_eq (call->text, "{\"workspace\":[]}");
    s_call_free (&call);
}

Test (chat_service, workspaces_list_threads_with_upstream_keys)
{
    s_new_workspace ("{\"name\":\"Threads\"}");
    cm_call_t *call = s_serve ("POST", "/api/v1/workspace/{slug}/thread/new", "threads",
                               NULL, "{\"name\":\"Side talk\",\"slug\":\"side\"}", 0);
    cr_assert_eq (call->status, 200, "%s", call->text);
    json_t *thread = json_object_get (call->reply, "thread");
    cr_assert_str_eq (s_str (thread, "slug"), "side");
    cr_assert_str_eq (s_str (thread, "name"), "Side talk");
    cr_assert (json_is_null (json_object_get (call->reply, "message")));
    s_call_free (&call);

    call = s_serve ("GET", "/api/v1/workspaces", NULL, NULL, NULL, 0);
    json_t *threads = json_object_get (
        json_array_get (json_object_get (call->reply, "workspaces"), 0), "threads");
    cr_assert_eq (json_array_size (threads), 1);
    json_t *first = json_array_get (threads, 0);
    cr_assert_eq (json_object_size (first), 3);
    cr_assert (json_is_null (json_object_get (first, "user_id")));
    cr_assert_str_eq (s_str (first, "slug"), "side");
    cr_assert_str_eq (s_str (first, "name"), "Side talk");
    s_call_free (&call);

    call = s_serve ("GET", "/api/v1/workspace/{slug}", "threads", NULL, NULL, 0);
    threads = json_object_get (
        json_array_get (json_object_get (call->reply, "workspace"), 0), "threads");
    cr_assert_eq (json_object_size (json_array_get (threads, 0)), 2,
                  "get shows user_id, slug");
    s_call_free (&call);

    //  Unknown workspace: upstream's bare 400.
    call = s_serve ("POST", "/api/v1/workspace/{slug}/thread/new", "nope", NULL, "{}", 0);
    cr_assert_eq (call->status, 400);
    cr_assert_str_eq (call->text, "Bad Request");
    s_call_free (&call);
}

Test (chat_service, chat_errors_before_output)
{
    s_new_workspace ("{\"name\":\"Errors\"}");
    const char *routes[] = {"/api/v1/workspace/{slug}/chat",
                            "/api/v1/workspace/{slug}/stream-chat"};
    for (int i = 0; i < 2; i++) {
        cm_call_t *call =
            s_serve ("POST", routes[i], "missing", NULL, "{\"message\":\"hi\"}", 0);
        s_assert_abort (call, 400, "Workspace missing is not a valid workspace.");
        s_call_free (&call);
        call = s_serve ("POST", routes[i], "errors", NULL, "{\"message\":\"\"}", 0);
        s_assert_abort (call, 400, "Message is empty");
        s_call_free (&call);
        call = s_serve ("POST", routes[i], "errors", NULL, NULL, 0);
        s_assert_abort (call, 400, "Message is empty");
        s_call_free (&call);
        call = s_serve ("POST", routes[i], "errors", NULL,
                        "{\"message\":\"hi\",\"mode\":\"bogus\"}", 0);
        s_assert_abort (call, 400, "bogus is not a valid mode.");
        s_call_free (&call);
        //  An empty message wins over a bad mode, as upstream checks it first.
        call = s_serve ("POST", routes[i], "errors", NULL, "{\"mode\":\"bogus\"}", 0);
        s_assert_abort (call, 400, "Message is empty");
        s_call_free (&call);
        //  What the error quotes may be cut inside a character, or not be
        //  UTF-8 at all (a slug from the path): still the 400 abort, once
        //  500 "The reply could not be encoded.".
        char body[1024] = "{\"message\":\"hi\",\"mode\":\"";
        for (int e = 0; e < 300; e++)
            strcat (body, "\xc3\xa9");
        strcat (body, "\"}");
        call = s_serve ("POST", routes[i], "errors", NULL, body, 0);
        cr_assert_eq (call->status, 400, "%s", call->text);
        const char *error = json_string_value (json_object_get (call->reply, "error"));
        cr_assert (error && strstr (error, " is not a valid mode."), "%s", call->text);
        s_call_free (&call);
        call = s_serve ("POST", routes[i], "\xff", NULL, "{\"message\":\"hi\"}", 0);
        s_assert_abort (call, 400, "Workspace ? is not a valid workspace.");
        s_call_free (&call);
    }
    //  Nothing was saved.
    cm_call_t *call =
        s_serve ("GET", "/api/v1/workspace/{slug}/chats", "errors", NULL, NULL, 0);
    cr_assert_eq (json_array_size (json_object_get (call->reply, "history")), 0);
    s_call_free (&call);
}

Test (chat_service, chat_message_not_a_string_is_named)
{
    s_new_workspace ("{\"name\":\"Typed\"}");
    cm_call_t *call = s_serve ("POST", "/api/v1/workspace/{slug}/thread/new", "typed",
                               NULL, "{\"slug\":\"t1\"}", 0);
    s_call_free (&call);
    const char *routes[] = {"/api/v1/workspace/{slug}/chat",
                            "/api/v1/workspace/{slug}/stream-chat",
                            "/api/v1/workspace/{slug}/thread/{threadSlug}/chat",
                            "/api/v1/workspace/{slug}/thread/{threadSlug}/stream-chat"};
    //  A message of the wrong type is named as such (before a bad mode, as
    //  an empty one is); null and missing stay upstream's "Message is empty".
    const char *mistyped[] = {"{\"message\":123}", "{\"message\":[\"hi\"]}",
                              "{\"message\":{\"text\":\"hi\"}}", "{\"message\":true}",
                              "{\"message\":1.5,\"mode\":\"bogus\"}"};
    const char *missing[] = {"{\"message\":null}", "{\"message\":\"\"}", "{}"};
    for (size_t r = 0; r < sizeof routes / sizeof *routes; r++) {
        const char *thread = strstr (routes[r], "thread") ? "t1" : NULL;
        for (size_t i = 0; i < sizeof mistyped / sizeof *mistyped; i++) {
            call = s_serve ("POST", routes[r], "typed", thread, mistyped[i], 0);
            s_assert_abort (call, 400, "message must be a string");
            s_call_free (&call);
        }
        for (size_t i = 0; i < sizeof missing / sizeof *missing; i++) {
            call = s_serve ("POST", routes[r], "typed", thread, missing[i], 0);
            s_assert_abort (call, 400, "Message is empty");
            s_call_free (&call);
        }
    }
    call = s_serve ("GET", "/api/v1/workspace/{slug}/chats", "typed", NULL, NULL, 0);
    cr_assert_eq (json_array_size (json_object_get (call->reply, "history")), 0);
    s_call_free (&call);
}

Test (chat_service, stream_chat_events_in_upstream_order)
{
    s_new_workspace ("{\"name\":\"Stream\"}");
    cm_call_t *sync =
        s_serve ("POST", "/api/v1/workspace/{slug}/chat", "stream", NULL,
                 "{\"message\":\"Tell me a story\",\"sessionId\":\"a\"}", 0);
    cm_call_t *call =
        s_serve ("POST", "/api/v1/workspace/{slug}/stream-chat", "stream", NULL,
                 "{\"message\":\"Tell me a story\",\"sessionId\":\"b\"}", 0);
    cr_assert_eq (call->status, 200);
    cr_assert (call->ended);
    size_t count = json_array_size (call->events);
    cr_assert_gt (count, 3);

    //  1. token chunks with uuid (not id) ...
    char text[4096] = "";
    const char *uuid = s_str (json_array_get (call->events, 0), "uuid");
    cr_assert_eq (strlen (uuid), 36);
    for (size_t i = 0; i + 2 < count; i++) {
        json_t *e = json_array_get (call->events, i);
        cr_assert_eq (json_object_size (e), 6);
        cr_assert_str_eq (s_str (e, "uuid"), uuid);
        cr_assert_null (json_object_get (e, "id"));
        cr_assert_str_eq (s_str (e, "type"), "textResponseChunk");
        cr_assert (json_is_false (json_object_get (e, "close")));
        cr_assert (json_is_false (json_object_get (e, "error")));
        cr_assert (json_is_array (json_object_get (e, "sources")));
        strcat (text, s_str (e, "textResponse"));
    }
    //  ... that add up to what the non-streaming route answers ...
    cr_assert_str_eq (text, s_str (sync->reply, "textResponse"));
    //  2. the close:true chunk that is not the end ...
    json_t *closing = json_array_get (call->events, count - 2);
    cr_assert_str_eq (s_str (closing, "type"), "textResponseChunk");
    cr_assert_str_eq (s_str (closing, "textResponse"), "");
    cr_assert (json_is_true (json_object_get (closing, "close")));
    cr_assert (json_is_false (json_object_get (closing, "error")));
    cr_assert_str_eq (s_str (closing, "uuid"), uuid);
    //  3. and finalizeResponseStream with chatId, metrics and sources.
    json_t *last = json_array_get (call->events, count - 1);
    cr_assert_str_eq (s_str (last, "type"), "finalizeResponseStream");
    cr_assert_str_eq (s_str (last, "uuid"), uuid);
    cr_assert (json_is_true (json_object_get (last, "close")));
    cr_assert (json_is_false (json_object_get (last, "error")));
    cr_assert_gt (json_integer_value (json_object_get (last, "chatId")), 0);
    cr_assert (json_is_array (json_object_get (last, "sources")));
    s_assert_metrics (json_object_get (last, "metrics"));
    s_call_free (&call);
    s_call_free (&sync);
}

Test (chat_service, cancelled_stream_saves_the_partial_answer)
{
    s_new_workspace ("{\"name\":\"Cancel\"}");
    cm_call_t *call =
        s_serve ("POST", "/api/v1/workspace/{slug}/stream-chat", "cancel", NULL,
                 "{\"message\":\"Go on and on\",\"sessionId\":\"s1\"}", 4);
    //  Four tokens went out; then the client was gone: no close, no finalize.
    cr_assert_eq (json_array_size (call->events), 4);
    cr_assert (call->ended);
    char shown[1024] = "";
    for (size_t i = 0; i < 4; i++) {
        json_t *e = json_array_get (call->events, i);
        cr_assert_str_eq (s_str (e, "type"), "textResponseChunk");
        strcat (shown, s_str (e, "textResponse"));
    }
    s_call_free (&call);

    //  The partial answer is in history, under its session.
    s_query[0] = "apiSessionId";
    s_query[1] = "s1";
    call = s_serve ("GET", "/api/v1/workspace/{slug}/chats", "cancel", NULL, NULL, 0);
    json_t *history = json_object_get (call->reply, "history");
    cr_assert_eq (json_array_size (history), 2, "%s", call->text);
    json_t *assistant = json_array_get (history, 1);
    cr_assert_str_eq (s_str (assistant, "content"), shown);
    cr_assert_eq (json_integer_value (json_object_get (
                      json_object_get (assistant, "metrics"), "completion_tokens")),
                  4);
    s_call_free (&call);
}

Test (chat_service, history_feeds_the_next_prompt_and_reset_clears_it)
{
    s_new_workspace ("{\"name\":\"Memory\"}");
    const char *route = "/api/v1/workspace/{slug}/chat";
    cm_call_t *call = s_serve ("POST", route, "memory", NULL,
                               "{\"message\":\"first\",\"sessionId\":\"m\"}", 0);
    cr_assert (strstr (s_str (call->reply, "textResponse"), "0 earlier turns"));
    s_call_free (&call);
    call = s_serve ("POST", route, "memory", NULL,
                    "{\"message\":\"second\",\"sessionId\":\"m\"}", 0);
    cr_assert (strstr (s_str (call->reply, "textResponse"), "1 earlier turn "));
    s_call_free (&call);
    //  Another session has its own history.
    call = s_serve ("POST", route, "memory", NULL,
                    "{\"message\":\"other\",\"sessionId\":\"n\"}", 0);
    cr_assert (strstr (s_str (call->reply, "textResponse"), "0 earlier turns"));
    s_call_free (&call);

    //  reset without a message: just the confirmation.
    call = s_serve ("POST", route, "memory", NULL, "{\"sessionId\":\"m\",\"reset\":true}",
                    0);
    cr_assert_eq (call->status, 200, "%s", call->text);
    cr_assert_str_eq (s_str (call->reply, "type"), "textResponse");
    cr_assert_str_eq (s_str (call->reply, "textResponse"), "Chat history was reset!");
    cr_assert (json_is_object (json_object_get (call->reply, "metrics")));
    s_call_free (&call);
    call = s_serve ("POST", route, "memory", NULL,
                    "{\"message\":\"third\",\"sessionId\":\"m\"}", 0);
    cr_assert (strstr (s_str (call->reply, "textResponse"), "0 earlier turns"));
    s_call_free (&call);

    //  The same on the streaming route: one textResponse event.
    call = s_serve ("POST", "/api/v1/workspace/{slug}/stream-chat", "memory", NULL,
                    "{\"sessionId\":\"m\",\"reset\":true}", 0);
    cr_assert_eq (json_array_size (call->events), 1);
    json_t *e = json_array_get (call->events, 0);
    cr_assert_str_eq (s_str (e, "textResponse"), "Chat history was reset!");
    cr_assert (json_is_true (json_object_get (e, "close")));
    cr_assert (call->ended);
    s_call_free (&call);
}

Test (chat_service, query_mode_without_documents_refuses)
{
    s_new_workspace ("{\"name\":\"Strict\",\"chatMode\":\"query\","
                     "\"queryRefusalResponse\":\"Nothing on that here.\"}");
    //  No mode in the body: the workspace's chatMode applies.
    cm_call_t *call = s_serve ("POST", "/api/v1/workspace/{slug}/chat", "strict", NULL,
                               "{\"message\":\"What is in my files?\"}", 0);
    cr_assert_eq (call->status, 200);
    cr_assert_str_eq (s_str (call->reply, "type"), "textResponse");
    cr_assert_str_eq (s_str (call->reply, "textResponse"), "Nothing on that here.");
    cr_assert (json_is_null (json_object_get (call->reply, "error")));
    s_call_free (&call);

    call = s_serve ("POST", "/api/v1/workspace/{slug}/stream-chat", "strict", NULL,
                    "{\"message\":\"Anything?\"}", 0);
    cr_assert_eq (json_array_size (call->events), 1);
    cr_assert_str_eq (s_str (json_array_get (call->events, 0), "textResponse"),
                      "Nothing on that here.");
    s_call_free (&call);

    //  Refusals are saved but are not history (include = false).
    call = s_serve ("GET", "/api/v1/workspace/{slug}/chats", "strict", NULL, NULL, 0);
    cr_assert_eq (json_array_size (json_object_get (call->reply, "history")), 0);
    s_call_free (&call);

    //  An explicit mode wins over the workspace's.
    call = s_serve ("POST", "/api/v1/workspace/{slug}/chat", "strict", NULL,
                    "{\"message\":\"Chat anyway\",\"mode\":\"automatic\"}", 0);
    cr_assert (strstr (s_str (call->reply, "textResponse"), "offline responder"));
    s_call_free (&call);
}

Test (chat_service, thread_chat_routes)
{
    s_new_workspace ("{\"name\":\"Threaded\"}");
    cm_call_t *call = s_serve ("POST", "/api/v1/workspace/{slug}/thread/new", "threaded",
                               NULL, "{\"slug\":\"t1\"}", 0);
    s_call_free (&call);
    call = s_serve ("POST", "/api/v1/workspace/{slug}/thread/{threadSlug}/chat",
                    "threaded", "t1", "{\"message\":\"in a thread\"}", 0);
    cr_assert_eq (call->status, 200, "%s", call->text);
    cr_assert_gt (json_integer_value (json_object_get (call->reply, "chatId")), 0);
    s_call_free (&call);
    call = s_serve ("POST", "/api/v1/workspace/{slug}/thread/{threadSlug}/stream-chat",
                    "threaded", "t1", "{\"message\":\"again\"}", 0);
    json_t *last = json_array_get (call->events, json_array_size (call->events) - 1);
    cr_assert_str_eq (s_str (last, "type"), "finalizeResponseStream");
    s_call_free (&call);
    call = s_serve ("POST", "/api/v1/workspace/{slug}/thread/{threadSlug}/chat",
                    "threaded", "nope", "{\"message\":\"lost\"}", 0);
    s_assert_abort (call, 400, "Workspace threaded or thread nope is not valid.");
    s_call_free (&call);

    //  Thread turns are not in the workspace's own history.
    call = s_serve ("GET", "/api/v1/workspace/{slug}/chats", "threaded", NULL, NULL, 0);
    cr_assert_eq (json_array_size (json_object_get (call->reply, "history")), 0);
    s_call_free (&call);
}

Test (chat_service, chats_of_unknown_workspace_is_bare_400)
{
    cm_call_t *call =
        s_serve ("GET", "/api/v1/workspace/{slug}/chats", "ghost", NULL, NULL, 0);
    cr_assert_eq (call->status, 400);
    cr_assert_str_eq (call->text, "Bad Request");
    s_call_free (&call);
}

Test (chat_service, chats_limit_and_order_query)
{
    s_new_workspace ("{\"name\":\"Paged\"}");
    const char *messages[] = {"{\"message\":\"one\"}", "{\"message\":\"two\"}",
                              "{\"message\":\"three\"}"};
    for (int i = 0; i < 3; i++) {
        cm_call_t *call = s_serve ("POST", "/api/v1/workspace/{slug}/chat", "paged", NULL,
                                   messages[i], 0);
        s_call_free (&call);
    }
    s_query[0] = "limit";
    s_query[1] = "2";
    s_query[2] = "orderBy";
    s_query[3] = "desc";
    cm_call_t *call =
        s_serve ("GET", "/api/v1/workspace/{slug}/chats", "paged", NULL, NULL, 0);
    json_t *history = json_object_get (call->reply, "history");
    cr_assert_eq (json_array_size (history), 4);
    cr_assert_str_eq (s_str (json_array_get (history, 0), "content"), "three");
    cr_assert_str_eq (s_str (json_array_get (history, 2), "content"), "two");
    s_call_free (&call);

    //  Default: oldest first, and limit below 1 means 1.
    s_query[0] = "limit";
    s_query[1] = "0";
    call = s_serve ("GET", "/api/v1/workspace/{slug}/chats", "paged", NULL, NULL, 0);
    history = json_object_get (call->reply, "history");
    cr_assert_eq (json_array_size (history), 2);
    cr_assert_str_eq (s_str (json_array_get (history, 0), "content"), "one");
    s_call_free (&call);
}

//  A provider that misbehaves: a good token, a token that is not UTF-8,
//  then a failure.
static chat_provider_result_t
s_broken_complete (void *state, const chat_request_t *request, char **text_p,
                   chat_metrics_t *metrics, char *err, size_t errlen)
{
    (void) state, (void) request, (void) text_p, (void) metrics;
    snprintf (err, errlen, "upstream exploded");
    return CHAT_PROVIDER_FAILED;
}

static chat_provider_result_t
s_broken_stream (void *state, const chat_request_t *request, chat_token_fn *on_token,
                 void *arg, chat_metrics_t *metrics, char *err, size_t errlen)
{
    (void) state, (void) request;
    on_token ("partial ", 8, arg);
    on_token ("\xff\xfe ", 3, arg);
    metrics->completion_tokens = 2;
    snprintf (err, errlen, "upstream exploded");
    return CHAT_PROVIDER_FAILED;
}

static const chat_provider_ops_t s_broken_ops = {"broken", s_broken_complete,
                                                 s_broken_stream, NULL};

Test (chat_service, provider_failure_after_validation)
{
    chat_service_destroy (&s_service);
    chat_provider_t *provider = chat_provider_new (&s_broken_ops, NULL);
    char err[256];
    s_service = chat_service_new (s_dir, &provider, err, sizeof err);
    cr_assert_not_null (s_service);
    s_new_workspace ("{\"name\":\"Fragile\"}");

    //  Non-streaming: 200 with type abort and the provider's reason.
    cm_call_t *call = s_serve ("POST", "/api/v1/workspace/{slug}/chat", "fragile", NULL,
                               "{\"message\":\"hi\"}", 0);
    cr_assert_eq (call->status, 200);
    cr_assert_str_eq (s_str (call->reply, "type"), "abort");
    cr_assert (json_is_null (json_object_get (call->reply, "textResponse")));
    cr_assert_str_eq (s_str (call->reply, "error"), "upstream exploded");
    s_call_free (&call);

    //  Streaming: the good token, no event for the broken one, abort, finalize.
    call = s_serve ("POST", "/api/v1/workspace/{slug}/stream-chat", "fragile", NULL,
                    "{\"message\":\"hi\"}", 0);
    cr_assert_eq (json_array_size (call->events), 3);
    cr_assert_str_eq (s_str (json_array_get (call->events, 0), "textResponse"),
                      "partial ");
    json_t *abort = json_array_get (call->events, 1);
    cr_assert_str_eq (s_str (abort, "type"), "abort");
    cr_assert_str_eq (s_str (abort, "error"), "upstream exploded");
    cr_assert (json_is_null (json_object_get (abort, "textResponse")));
    cr_assert (json_is_true (json_object_get (abort, "close")));
    json_t *last = json_array_get (call->events, 2);
    cr_assert_str_eq (s_str (last, "type"), "finalizeResponseStream");
    cr_assert_gt (json_integer_value (json_object_get (last, "chatId")), 0,
                  "partial saved");
    cr_assert (call->ended);
    s_call_free (&call);
}

//  --- the circuit breaker around the provider ---------------------------------------

//  A provider whose next outcome the test chooses, counting its calls.
static struct {
    chat_provider_result_t result; //  what calls return (DONE: the text "fine answer")
    int calls;                     //  calls made
} s_switch;

static void
s_switch_error (char *err, size_t errlen)
{
    snprintf (err, errlen, "%s",
              s_switch.result == CHAT_PROVIDER_REJECTED
                  ? "This model's maximum context length is 8 tokens."
                  : "upstream unreachable");
}

static chat_provider_result_t
s_switch_complete (void *state, const chat_request_t *request, char **text_p,
                   chat_metrics_t *metrics, char *err, size_t errlen)
{
    (void) state, (void) request;
    s_switch.calls++;
    if (s_switch.result != CHAT_PROVIDER_DONE) {
        s_switch_error (err, errlen);
        return s_switch.result;
    }
    *text_p = strdup ("fine answer");
    metrics->completion_tokens = 2;
    return CHAT_PROVIDER_DONE;
}

static chat_provider_result_t
s_switch_stream (void *state, const chat_request_t *request, chat_token_fn *on_token,
                 void *arg, chat_metrics_t *metrics, char *err, size_t errlen)
{
    (void) state, (void) request;
    s_switch.calls++;
    if (s_switch.result != CHAT_PROVIDER_DONE) {
        s_switch_error (err, errlen);
        return s_switch.result;
    }
    const char *tokens[] = {"fine ", "answer"};
    for (int i = 0; i < 2; i++) {
        if (on_token (tokens[i], strlen (tokens[i]), arg) == CHAT_TOKEN_STOP)
            return CHAT_PROVIDER_STOPPED;
        metrics->completion_tokens++;
    }
    return CHAT_PROVIDER_DONE;
}

static const chat_provider_ops_t s_switch_ops = {"switch", s_switch_complete,
                                                 s_switch_stream, NULL};

//  The breaker's clock, moved by hand.
static int64_t s_now_ms;

static int64_t
s_clock (void *arg)
{
    (void) arg;
    return s_now_ms;
}

//  Serve with the switch provider behind a breaker of this threshold,
//  cool-down and probes, on a workspace "guarded".
static void
s_guarded (int64_t threshold, int64_t reset_ms, int64_t probes)
{
    chat_service_destroy (&s_service);
    chat_provider_t *provider = chat_provider_new (&s_switch_ops, NULL);
    char err[256];
    s_service = chat_service_new (s_dir, &provider, err, sizeof err);
    cr_assert_not_null (s_service, "%s", err);
    cm_breaker_config_t config;
    cm_breaker_config_defaults (&config);
    config.failure_threshold = threshold;
    config.reset_ms = reset_ms;
    config.max_reset_ms = 8 * reset_ms;
    config.half_open_probes = probes;
    cm_breaker_t *breaker = cm_breaker_new ("chat", &config);
    chat_service_set_breaker (s_service, &breaker);
    cr_assert_null (breaker);
    chat_service_set_clock (s_service, s_clock, NULL);
    s_now_ms = 1000000;
    s_switch.result = CHAT_PROVIDER_DONE;
    s_switch.calls = 0;
    s_new_workspace ("{\"name\":\"Guarded\"}");
}

static cm_call_t *
s_guarded_chat (bool streaming, int cancel_after)
{
    return s_serve ("POST",
                    streaming ? "/api/v1/workspace/{slug}/stream-chat"
                              : "/api/v1/workspace/{slug}/chat",
                    "guarded", NULL, "{\"message\":\"hello\"}", cancel_after);
}

//  The 503 of an open circuit: the abort shape, Retry-After in seconds.
static void
s_assert_circuit_open (cm_call_t *call, const char *retry_after)
{
    cr_assert_eq (call->status, 503, "%s", call->text);
    cr_assert_eq (json_array_size (call->events), 0, "no stream started");
    json_t *r = call->reply;
    cr_assert_eq (json_object_size (r), 6, "%s", call->text);
    cr_assert_str_eq (s_str (r, "type"), "abort");
    cr_assert (json_is_null (json_object_get (r, "textResponse")));
    cr_assert (json_is_array (json_object_get (r, "sources")));
    cr_assert (json_is_true (json_object_get (r, "close")));
    cr_assert (strstr (s_str (r, "error"), "chat circuit is open"), "%s", call->text);
    cr_assert_str_eq (s_str (call->headers, "Retry-After"), retry_after);
}

Test (chat_service, breaker_opens_after_threshold_provider_failures)
{
    s_guarded (3, 10000, 1);
    s_switch.result = CHAT_PROVIDER_FAILED;
    //  Failures answer 200 abort (non-streaming) or abort + finalize (streaming).
    for (int i = 0; i < 3; i++) {
        cm_call_t *call = s_guarded_chat (i == 2, 0);
        cr_assert_eq (call->status, 200);
        if (i == 2) {
            cr_assert_eq (json_array_size (call->events), 2);
            cr_assert_str_eq (s_str (json_array_get (call->events, 0), "type"), "abort");
            cr_assert_str_eq (s_str (json_array_get (call->events, 1), "type"),
                              "finalizeResponseStream");
        } else
            cr_assert_str_eq (s_str (call->reply, "type"), "abort");
        s_call_free (&call);
    }
    cr_assert_eq (s_switch.calls, 3);
    cr_assert_eq (cm_breaker_state (chat_service_breaker (s_service)), CM_BREAKER_OPEN);

    //  Open: 503 at once, on both routes, without calling the provider.
    cm_call_t *call = s_guarded_chat (false, 0);
    s_assert_circuit_open (call, "10");
    s_call_free (&call);
    s_now_ms += 1;
    call = s_guarded_chat (true, 0);
    s_assert_circuit_open (call, "10"); //  9999 ms: rounded up
    s_call_free (&call);
    s_now_ms += 9000;
    call = s_guarded_chat (false, 0);
    s_assert_circuit_open (call, "1"); //  999 ms
    s_call_free (&call);
    cr_assert_eq (s_switch.calls, 3);
    //  The OpenAI route answers in OpenAI's error shape, which its client
    //  libraries read (it was the abort shape).
    call = s_serve ("POST", "/api/v1/openai/chat/completions", NULL, NULL,
                    "{\"model\":\"guarded\",\"messages\":[{\"role\":\"user\","
                    "\"content\":\"hello\"}]}",
                    0);
    cr_assert_eq (call->status, 503, "%s", call->text);
    json_t *error = json_object_get (call->reply, "error");
    cr_assert (json_is_object (error), "%s", call->text);
    cr_assert (strstr (s_str (error, "message"), "chat circuit is open"), "%s",
               call->text);
    cr_assert_str_eq (s_str (error, "type"), "server_error");
    cr_assert_str_eq (s_str (call->headers, "Retry-After"), "1");
    s_call_free (&call);
    cr_assert_eq (s_switch.calls, 3);

    cm_breaker_stats_t stats;
    cm_breaker_stats (chat_service_breaker (s_service), &stats);
    cr_assert_eq (stats.failed, 3);
    cr_assert_eq (stats.rejected, 4);
}

Test (chat_service, breaker_half_open_probe_success_closes)
{
    s_guarded (2, 5000, 1);
    s_switch.result = CHAT_PROVIDER_FAILED;
    for (int i = 0; i < 2; i++) {
        cm_call_t *call = s_guarded_chat (false, 0);
        s_call_free (&call);
    }
    //  The upstream recovers; after the cool-down one probe goes through.
    s_switch.result = CHAT_PROVIDER_DONE;
    s_now_ms += 5000;
    cm_call_t *call = s_guarded_chat (true, 0);
    cr_assert_eq (call->status, 200);
    json_t *last = json_array_get (call->events, json_array_size (call->events) - 1);
    cr_assert_str_eq (s_str (last, "type"), "finalizeResponseStream");
    cr_assert_gt (json_integer_value (json_object_get (last, "chatId")), 0);
    s_call_free (&call);
    cr_assert_eq (s_switch.calls, 3);
    cm_breaker_t *breaker = chat_service_breaker (s_service);
    cr_assert_eq (cm_breaker_state (breaker), CM_BREAKER_CLOSED);
    call = s_guarded_chat (false, 0);
    cr_assert_eq (call->status, 200);
    cr_assert_str_eq (s_str (call->reply, "textResponse"), "fine answer");
    s_call_free (&call);
    cm_breaker_stats_t stats;
    cm_breaker_stats (breaker, &stats);
    cr_assert_eq (stats.transitions[CM_BREAKER_HALF_OPEN][CM_BREAKER_CLOSED], 1);
}

Test (chat_service, breaker_probe_failure_reopens_longer)
{
    s_guarded (1, 2000, 1);
    s_switch.result = CHAT_PROVIDER_FAILED;
    cm_call_t *call = s_guarded_chat (false, 0);
    s_call_free (&call);
    s_now_ms += 2000;
    call = s_guarded_chat (false, 0); //  the probe, failing
    cr_assert_eq (call->status, 200);
    cr_assert_str_eq (s_str (call->reply, "type"), "abort");
    s_call_free (&call);
    call = s_guarded_chat (false, 0);
    s_assert_circuit_open (call, "4");
    s_call_free (&call);
    cr_assert_eq (s_switch.calls, 2);
}

Test (chat_service, request_faults_and_cancels_do_not_trip_the_breaker)
{
    s_guarded (1, 10000, 1);
    //  The upstream refuses the request itself: the client learns why, and
    //  the circuit stays closed.
    s_switch.result = CHAT_PROVIDER_REJECTED;
    cm_call_t *call = s_guarded_chat (false, 0);
    cr_assert_eq (call->status, 200);
    cr_assert_str_eq (s_str (call->reply, "type"), "abort");
    cr_assert_str_eq (s_str (call->reply, "error"),
                      "This model's maximum context length is 8 tokens.");
    s_call_free (&call);
    call = s_guarded_chat (true, 0);
    cr_assert_str_eq (s_str (json_array_get (call->events, 0), "type"), "abort");
    s_call_free (&call);

    //  A client that leaves mid-stream neither.
    s_switch.result = CHAT_PROVIDER_DONE;
    call = s_guarded_chat (true, 1);
    cr_assert_eq (json_array_size (call->events), 1);
    s_call_free (&call);

    cm_breaker_t *breaker = chat_service_breaker (s_service);
    cm_breaker_stats_t stats;
    cm_breaker_stats (breaker, &stats);
    cr_assert_eq (stats.state, CM_BREAKER_CLOSED);
    cr_assert_eq (stats.failed, 0);
    cr_assert_eq (stats.released, 3);
    cr_assert_eq (s_switch.calls, 3);

    //  Turns that never reach the provider never ask the breaker.
    call = s_serve ("POST", "/api/v1/workspace/{slug}/chat", "guarded", NULL,
                    "{\"message\":\"\"}", 0);
    s_call_free (&call);
    cm_breaker_stats (breaker, &stats);
    cr_assert_eq (stats.allowed, 3);

    //  And one real failure opens this threshold-1 circuit.
    s_switch.result = CHAT_PROVIDER_FAILED;
    call = s_guarded_chat (false, 0);
    s_call_free (&call);
    cr_assert_eq (cm_breaker_state (breaker), CM_BREAKER_OPEN);
}

//  --- the OpenAI-compatible routes ----------------------------------------------------

#define S_COMPLETIONS "/api/v1/openai/chat/completions"

Test (chat_service, openai_walkthrough)
{
    //  Workspaces are the models.
    s_new_workspace ("{\"name\":\"Open Models\"}");
    cm_call_t *call = s_serve ("GET", "/api/v1/openai/models", NULL, NULL, NULL, 0);
    cr_assert_eq (call->status, 200);
    cr_assert_str_eq (s_str (call->reply, "object"), "list");
    json_t *model = json_array_get (json_object_get (call->reply, "data"), 0);
    cr_assert_eq (json_object_size (model), 4, "%s", call->text);
    cr_assert_str_eq (s_str (model, "id"), "open-models");
    cr_assert_str_eq (s_str (model, "object"), "model");
    cr_assert_gt (json_integer_value (json_object_get (model, "created")), 1600000000);
    cr_assert_str_eq (s_str (model, "owned_by"), "builtin");
    s_call_free (&call);

    //  A completion: the last message is the prompt.
    call = s_serve ("POST", S_COMPLETIONS, NULL, NULL,
                    "{\"model\":\"open-models\",\"messages\":[{\"role\":\"user\","
                    "\"content\":\"Hello there\"}]}",
                    0);
    cr_assert_eq (call->status, 200, "%s", call->text);
    json_t *r = call->reply;
    cr_assert_eq (json_object_size (r), 6, "%s", call->text);
    cr_assert_eq (strlen (s_str (r, "id")), 36);
    cr_assert_str_eq (s_str (r, "object"), "chat.completion");
    cr_assert_gt (json_integer_value (json_object_get (r, "created")), 1600000000);
    cr_assert_str_eq (s_str (r, "model"), "open-models");
    json_t *choice = json_array_get (json_object_get (r, "choices"), 0);
    cr_assert_eq (json_array_size (json_object_get (r, "choices")), 1);
    cr_assert_eq (json_integer_value (json_object_get (choice, "index")), 0);
    cr_assert (json_is_null (json_object_get (choice, "logprobs")));
    cr_assert_str_eq (s_str (choice, "finish_reason"), "stop");
    json_t *message = json_object_get (choice, "message");
    cr_assert_str_eq (s_str (message, "role"), "assistant");
    cr_assert (strstr (s_str (message, "content"), "\"Hello there\""), "%s", call->text);
    s_assert_metrics (json_object_get (r, "usage"));
    s_call_free (&call);

    //  Saved to the workspace's history like any chat turn.
    call =
        s_serve ("GET", "/api/v1/workspace/{slug}/chats", "open-models", NULL, NULL, 0);
    json_t *history = json_object_get (call->reply, "history");
    cr_assert_eq (json_array_size (history), 2);
    cr_assert_str_eq (s_str (json_array_get (history, 0), "content"), "Hello there");
    s_call_free (&call);

    //  Vector stores: the workspaces again; any query parameter, an empty page.
    call = s_serve ("GET", "/api/v1/openai/vector_stores", NULL, NULL, NULL, 0);
    cr_assert_eq (call->status, 200);
    cr_assert_str_eq (s_str (call->reply, "first_id"), "open-models");
    cr_assert_str_eq (s_str (call->reply, "last_id"), "open-models");
    cr_assert (json_is_false (json_object_get (call->reply, "has_more")));
    json_t *store = json_array_get (json_object_get (call->reply, "data"), 0);
    cr_assert_str_eq (s_str (store, "id"), "open-models");
    cr_assert_str_eq (s_str (store, "object"), "vector_store");
    cr_assert_str_eq (s_str (store, "name"), "Open Models");
    cr_assert_eq (json_integer_value (
                      json_object_get (json_object_get (store, "file_counts"), "total")),
                  0);
    cr_assert_str_eq (s_str (store, "provider"), "sqlite");
    s_call_free (&call);
    s_query[0] = "after";
    s_query[1] = "open-models";
    call = s_serve ("GET", "/api/v1/openai/vector_stores", NULL, NULL, NULL, 0);
    cr_assert_str_eq (call->text, "{\"data\":[],\"has_more\":false}");
    s_call_free (&call);
}

Test (chat_service, openai_lists_are_empty_without_workspaces)
{
    cm_call_t *call = s_serve ("GET", "/api/v1/openai/models", NULL, NULL, NULL, 0);
    cr_assert_str_eq (call->text, "{\"object\":\"list\",\"data\":[]}");
    s_call_free (&call);
    //  Upstream leaves first_id and last_id out (undefined in JSON).
    call = s_serve ("GET", "/api/v1/openai/vector_stores", NULL, NULL, NULL, 0);
    cr_assert_str_eq (call->text, "{\"data\":[],\"has_more\":false}");
    s_call_free (&call);
}

Test (chat_service, openai_stream_chunks_then_done)
{
    s_new_workspace ("{\"name\":\"Streamer\"}");
    cm_call_t *call = s_serve ("POST", S_COMPLETIONS, NULL, NULL,
                               "{\"model\":\"streamer\",\"stream\":true,\"messages\":[{"
                               "\"role\":\"user\",\"content\":\"Tell me a story\"}]}",
                               0);
    cr_assert_eq (call->status, 200);
    size_t events = json_array_size (call->events);
    cr_assert_gt (events, 3);
    //  Token chunks: a delta each, no finish reason yet.
    char *text = calloc (1, 1);
    for (size_t i = 0; i + 2 < events; i++) {
        json_t *chunk = json_array_get (call->events, i);
        cr_assert_str_eq (s_str (chunk, "object"), "chat.completion.chunk");
        cr_assert_str_eq (s_str (chunk, "model"), "streamer");
        json_t *choice = json_array_get (json_object_get (chunk, "choices"), 0);
        cr_assert (json_is_null (json_object_get (choice, "finish_reason")));
        json_t *delta = json_object_get (choice, "delta");
        cr_assert_str_eq (s_str (delta, "role"), "assistant");
        const char *piece = s_str (delta, "content");
        text = realloc (text, strlen (text) + strlen (piece) + 1);
        strcat (text, piece);
    }
    //  The last chunk says stop and carries the usage; then [DONE].
    json_t *last = json_array_get (call->events, events - 2);
    json_t *choice = json_array_get (json_object_get (last, "choices"), 0);
    cr_assert_str_eq (s_str (choice, "finish_reason"), "stop");
    cr_assert_str_eq (s_str (json_object_get (choice, "delta"), "content"), "");
    s_assert_metrics (json_object_get (last, "usage"));
    cr_assert_str_eq (json_string_value (json_array_get (call->events, events - 1)),
                      "data: [DONE]\n\n");
    cr_assert (call->ended);
    //  Every chunk has the same id; the text is the builtin's whole answer.
    cr_assert_str_eq (s_str (last, "id"), s_str (json_array_get (call->events, 0), "id"));
    cr_assert (strstr (text, "\"Tell me a story\""), "%s", text);
    s_call_free (&call);
    call = s_serve ("GET", "/api/v1/workspace/{slug}/chats", "streamer", NULL, NULL, 0);
    json_t *answer = json_array_get (json_object_get (call->reply, "history"), 1);
    cr_assert_str_eq (s_str (answer, "content"), text);
    s_call_free (&call);
    free (text);
}

Test (chat_service, openai_unknown_model_is_401_with_no_body)
{
    s_new_workspace ("{\"name\":\"Known\"}");
    const char *bodies[] = {
        "{\"model\":\"unknown\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}",
        "{\"model\":\"unknown\",\"stream\":true,\"messages\":[]}",
        "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}",
        "{\"model\":7,\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}",
        NULL,
    };
    for (size_t i = 0; i < sizeof bodies / sizeof *bodies; i++) {
        cm_call_t *call = s_serve ("POST", S_COMPLETIONS, NULL, NULL, bodies[i], 0);
        cr_assert_eq (call->status, 401, "%s", bodies[i]);
        cr_assert_str_eq (call->text, "", "no body at all");
        cr_assert_eq (json_array_size (call->events), 0);
        s_call_free (&call);
    }
}

Test (chat_service, openai_last_message_must_be_the_users)
{
    s_new_workspace ("{\"name\":\"Strict\"}");
    const char *bodies[] = {
        "{\"model\":\"strict\",\"messages\":[]}",
        "{\"model\":\"strict\"}",
        "{\"model\":\"strict\",\"messages\":\"hi\"}",
        "{\"model\":\"strict\",\"messages\":[{\"role\":\"user\",\"content\":\"a\"},"
        "{\"role\":\"assistant\",\"content\":\"b\"}]}",
        "{\"model\":\"strict\",\"stream\":true,\"messages\":[{\"content\":\"a\"}]}",
    };
    for (size_t i = 0; i < sizeof bodies / sizeof *bodies; i++) {
        cm_call_t *call = s_serve ("POST", S_COMPLETIONS, NULL, NULL, bodies[i], 0);
        s_assert_abort (call, 400,
                        "No user prompt found. Must be last element in message array "
                        "with 'user' role.");
        s_call_free (&call);
    }
}

//  OpenAI's error object for a bad request, exactly: {error:{message, type,
//  param, code}}.
static void
s_assert_openai_bad_request (cm_call_t *call, const char *param, const char *message)
{
    cr_assert_eq (call->status, 400, "status %d: %s", call->status, call->text);
    cr_assert_eq (json_array_size (call->events), 0, "no stream started");
    cr_assert_eq (json_object_size (call->reply), 1, "%s", call->text);
    json_t *error = json_object_get (call->reply, "error");
    cr_assert_eq (json_object_size (error), 4, "%s", call->text);
    cr_assert_str_eq (s_str (error, "message"), message);
    cr_assert_str_eq (s_str (error, "type"), "invalid_request_error");
    cr_assert_str_eq (s_str (error, "param"), param);
    cr_assert (json_is_null (json_object_get (error, "code")), "%s", call->text);
}

Test (chat_service, openai_prompt_without_text_is_an_openai_400)
{
    s_new_workspace ("{\"name\":\"Wordless\"}");
    static const struct {
        const char *content; //  the last user message's "content" (NULL: left out)
        const char *error;   //  the answer's error.message
    } cases[] = {
        {"\"\"", "messages[2].content is empty"},
        {"{\"text\":\"hello\"}",
         "messages[2].content must be a string or an array of text parts"},
        {"123", "messages[2].content must be a string or an array of text parts"},
        {"null", "messages[2].content must be a string or an array of text parts"},
        {NULL, "messages[2].content is required"},
        {"[]", "messages[2].content must be a string or an array of text parts: it has "
               "no text part (only text is supported)"},
        {"[{\"type\":\"image_url\",\"image_url\":{\"url\":\"data:x\"}}]",
         "messages[2].content must be a string or an array of text parts: it has no "
         "text part (only text is supported)"},
        {"[{\"type\":\"text\",\"text\":\"\"}]", "messages[2].content is empty"},
        {"[{\"type\":\"text\",\"text\":\"ok\"},{\"type\":\"text\",\"text\":7}]",
         "messages[2].content[1].text must be a string"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++)
        for (int stream = 0; stream < 2; stream++) {
            char body[512], content[256] = "";
            if (cases[i].content)
                snprintf (content, sizeof content, ",\"content\":%s", cases[i].content);
            snprintf (body, sizeof body,
                      "{\"model\":\"wordless\",\"stream\":%s,\"messages\":["
                      "{\"role\":\"user\",\"content\":\"q1\"},"
                      "{\"role\":\"assistant\",\"content\":\"a1\"},"
                      "{\"role\":\"user\"%s}]}",
                      stream ? "true" : "false", content);
            cm_call_t *call = s_serve ("POST", S_COMPLETIONS, NULL, NULL, body, 0);
            s_assert_openai_bad_request (call, "messages", cases[i].error);
            s_call_free (&call);
        }
    //  The model was not asked, and no empty turn was saved.
    cm_call_t *call =
        s_serve ("GET", "/api/v1/workspace/{slug}/chats", "wordless", NULL, NULL, 0);
    cr_assert_eq (json_array_size (json_object_get (call->reply, "history")), 0, "%s",
                  call->text);
    s_call_free (&call);
}

Test (chat_service, openai_prompt_as_text_parts_is_answered)
{
    s_new_workspace ("{\"name\":\"Parts\"}");
    //  OpenAI's other form of content: text parts (images beside them are
    //  left out), sync and streamed.
    cm_call_t *call =
        s_serve ("POST", S_COMPLETIONS, NULL, NULL,
                 "{\"model\":\"parts\",\"messages\":[{\"role\":\"user\",\"content\":["
                 "{\"type\":\"text\",\"text\":\"hello\"}]}]}",
                 0);
    cr_assert_eq (call->status, 200, "%s", call->text);
    json_t *choice = json_array_get (json_object_get (call->reply, "choices"), 0);
    cr_assert (
        strstr (s_str (json_object_get (choice, "message"), "content"), "\"hello\""),
        "%s", call->text);
    s_call_free (&call);
    call = s_serve ("POST", S_COMPLETIONS, NULL, NULL,
                    "{\"model\":\"parts\",\"stream\":true,\"messages\":[{\"role\":"
                    "\"user\",\"content\":[{\"type\":\"image_url\",\"image_url\":{"
                    "\"url\":\"data:x\"}},{\"type\":\"text\",\"text\":\"again\"}]}]}",
                    0);
    cr_assert_eq (call->status, 200);
    size_t events = json_array_size (call->events);
    cr_assert_gt (events, 2);
    cr_assert_str_eq (json_string_value (json_array_get (call->events, events - 1)),
                      "data: [DONE]\n\n");
    s_call_free (&call);
    //  Both prompts saved as their text.
    call = s_serve ("GET", "/api/v1/workspace/{slug}/chats", "parts", NULL, NULL, 0);
    json_t *history = json_object_get (call->reply, "history");
    cr_assert_eq (json_array_size (history), 4, "%s", call->text);
    cr_assert_str_eq (s_str (json_array_get (history, 0), "content"), "hello");
    cr_assert_str_eq (s_str (json_array_get (history, 2), "content"), "again");
    s_call_free (&call);
}

//  Link count documents (locations "<prefix>-<i>") to the workspace slug,
//  through a connection of its own, as ingestd does.
static void
s_link_documents (cm_storage_t *storage, const char *slug, const char *prefix, int count)
{
    json_t *workspace = NULL;
    cr_assert_eq (cm_storage_workspace_get (storage, slug, &workspace), CM_STORAGE_OK);
    int64_t id = json_integer_value (json_object_get (workspace, "id"));
    json_decref (workspace);
    for (int i = 0; i < count; i++) {
        char location[128];
        snprintf (location, sizeof location, "custom-documents/%s-%d.json", prefix, i);
        json_t *fields = json_pack ("{s:s, s:s}", "location", location, "name", location);
        cm_storage_status_t status =
            cm_storage_document_add (storage, fields, "text", NULL);
        cr_assert (status == CM_STORAGE_OK || status == CM_STORAGE_CONFLICT);
        json_decref (fields);
        cr_assert_eq (cm_storage_workspace_doc_link (storage, id, location, NULL),
                      CM_STORAGE_OK, "%s", cm_storage_errmsg (storage));
    }
}

//  file_counts.total of the vector store id in a vector_stores reply.
static int64_t
s_store_total (cm_call_t *call, const char *id)
{
    size_t i;
    json_t *store;
    json_array_foreach (json_object_get (call->reply, "data"), i, store)
    {
        if (!strcmp (s_str (store, "id"), id))
            return json_integer_value (
                json_object_get (json_object_get (store, "file_counts"), "total"));
    }
    cr_assert_fail ("no vector store %s in %s", id, call->text);
    return -1;
}

Test (chat_service, openai_vector_stores_count_each_workspaces_documents)
{
    s_new_workspace ("{\"name\":\"Three Docs\"}");
    s_new_workspace ("{\"name\":\"One Doc\"}");
    s_new_workspace ("{\"name\":\"No Docs\"}");
    char err[512] = "";
    cm_storage_t *storage = cm_storage_new (s_dir, err, sizeof err);
    cr_assert_not_null (storage, "%s", err);
    s_link_documents (storage, "three-docs", "doc", 3);
    //  doc-0 again: a document shared by two workspaces counts in each.
    s_link_documents (storage, "one-doc", "doc", 1);

    cm_call_t *call =
        s_serve ("GET", "/api/v1/openai/vector_stores", NULL, NULL, NULL, 0);
    cr_assert_eq (call->status, 200, "%s", call->text);
    cr_assert_eq (s_store_total (call, "three-docs"), 3, "%s", call->text);
    cr_assert_eq (s_store_total (call, "one-doc"), 1, "%s", call->text);
    cr_assert_eq (s_store_total (call, "no-docs"), 0, "%s", call->text);
    s_call_free (&call);

    //  The count follows the links: one removed, one fewer.
    json_t *workspace = NULL;
    cr_assert_eq (cm_storage_workspace_get (storage, "three-docs", &workspace),
                  CM_STORAGE_OK);
    cr_assert_eq (cm_storage_workspace_doc_unlink (
                      storage, json_integer_value (json_object_get (workspace, "id")),
                      "custom-documents/doc-2.json"),
                  CM_STORAGE_OK);
    json_decref (workspace);
    call = s_serve ("GET", "/api/v1/openai/vector_stores", NULL, NULL, NULL, 0);
    cr_assert_eq (s_store_total (call, "three-docs"), 2, "%s", call->text);
    cr_assert_eq (s_store_total (call, "one-doc"), 1, "%s", call->text);
    s_call_free (&call);
    cm_storage_destroy (&storage);
}

//  A provider that keeps what it was asked, and answers "ok".
static struct {
    json_t *messages; //  [{role, content}] of the last call
    double temperature;
} s_seen;

static void
s_capture (const chat_request_t *request)
{
    static const char *roles[] = {"system", "user", "assistant"};
    json_decref (s_seen.messages);
    s_seen.messages = json_array ();
    for (size_t i = 0; i < request->count; i++)
        json_array_append_new (s_seen.messages,
                               json_pack ("{s:s, s:s}", "role",
                                          roles[request->messages[i].role], "content",
                                          request->messages[i].content));
    s_seen.temperature = request->temperature;
}

static chat_provider_result_t
s_capture_complete (void *state, const chat_request_t *request, char **text_p,
                    chat_metrics_t *metrics, char *err, size_t errlen)
{
    (void) state, (void) err, (void) errlen;
    s_capture (request);
    *text_p = strdup ("ok");
    metrics->completion_tokens = 1;
    return CHAT_PROVIDER_DONE;
}

static chat_provider_result_t
s_capture_stream (void *state, const chat_request_t *request, chat_token_fn *on_token,
                  void *arg, chat_metrics_t *metrics, char *err, size_t errlen)
{
    (void) state, (void) err, (void) errlen;
    s_capture (request);
    on_token ("ok", 2, arg);
    metrics->completion_tokens = 1;
    return CHAT_PROVIDER_DONE;
}

static const chat_provider_ops_t s_capture_ops = {"capture", s_capture_complete,
                                                  s_capture_stream, NULL};

//  The messages the provider saw, as "role:content|role:content|...".
static char *
s_seen_text (void)
{
    char *text = calloc (1, 1);
    size_t i;
    json_t *m;
    json_array_foreach (s_seen.messages, i, m)
    {
        const char *role = s_str (m, "role"), *content = s_str (m, "content");
        text = realloc (text, strlen (text) + strlen (role) + strlen (content) + 3);
        if (i)
            strcat (text, "|");
        strcat (text, role);
        strcat (text, ":");
        strcat (text, content);
    }
    return text;
}

Test (chat_service, openai_messages_replace_the_stored_history)
{
    chat_service_destroy (&s_service);
    chat_provider_t *provider = chat_provider_new (&s_capture_ops, NULL);
    char err[256];
    s_service = chat_service_new (s_dir, &provider, err, sizeof err);
    cr_assert_not_null (s_service);
    s_new_workspace ("{\"name\":\"Talk\",\"openAiPrompt\":\"Workspace prompt\","
                     "\"openAiTemp\":0.3}");
    //  A stored turn, which the OpenAI route must not add to its prompt.
    cm_call_t *call = s_serve ("POST", "/api/v1/workspace/{slug}/chat", "talk", NULL,
                               "{\"message\":\"stored\"}", 0);
    s_call_free (&call);

    //  The workspace's prompt and temperature when the request has none.
    call = s_serve ("POST", S_COMPLETIONS, NULL, NULL,
                    "{\"model\":\"talk\",\"messages\":[{\"role\":\"user\",\"content\":"
                    "\"first\"}]}",
                    0);
    char *seen = s_seen_text ();
    cr_assert_str_eq (seen, "system:Workspace prompt|user:first");
    free (seen);
    cr_assert_float_eq (s_seen.temperature, 0.3, 1e-9);
    s_call_free (&call);

    //  The request's: its first system message, its conversation (system
    //  messages and unknown roles left out; content parts joined), then the
    //  prompt.
    call = s_serve (
        "POST", S_COMPLETIONS, NULL, NULL,
        "{\"model\":\"talk\",\"temperature\":0.9,\"stream\":true,\"messages\":["
        "{\"role\":\"system\",\"content\":\"Be brief\"},"
        "{\"role\":\"user\",\"content\":\"q1\"},"
        "{\"role\":\"assistant\",\"content\":\"a1\"},"
        "{\"role\":\"system\",\"content\":\"ignored\"},"
        "{\"role\":\"tool\",\"content\":\"skipped\"},"
        "{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"part one\"},"
        "{\"type\":\"image_url\",\"image_url\":{\"url\":\"data:x\"}},"
        "{\"type\":\"text\",\"text\":\"part two\"}]}]}",
        0);
    seen = s_seen_text ();
    cr_assert_str_eq (seen,
                      "system:Be brief|user:q1|assistant:a1|user:part one\npart two");
    free (seen);
    cr_assert_float_eq (s_seen.temperature, 0.9, 1e-9);
    s_call_free (&call);
    json_decref (s_seen.messages);
    s_seen.messages = NULL;
}

Test (chat_service, openai_query_mode_refuses_with_finish_reason_abort)
{
    s_new_workspace ("{\"name\":\"Docs only\",\"chatMode\":\"query\"}");
    const char *body = "{\"model\":\"docs-only\",\"messages\":[{\"role\":\"user\","
                       "\"content\":\"anything?\"}]}";
    cm_call_t *call = s_serve ("POST", S_COMPLETIONS, NULL, NULL, body, 0);
    cr_assert_eq (call->status, 200);
    json_t *choice = json_array_get (json_object_get (call->reply, "choices"), 0);
    cr_assert_str_eq (s_str (choice, "finish_reason"), "abort");
    cr_assert_str_eq (s_str (json_object_get (choice, "message"), "content"),
                      "There is no relevant information in this workspace to answer "
                      "your query.");
    s_call_free (&call);
    call = s_serve ("POST", S_COMPLETIONS, NULL, NULL,
                    "{\"model\":\"docs-only\",\"stream\":true,\"messages\":[{\"role\":"
                    "\"user\",\"content\":\"anything?\"}]}",
                    0);
    cr_assert_eq (json_array_size (call->events), 2);
    choice =
        json_array_get (json_object_get (json_array_get (call->events, 0), "choices"), 0);
    cr_assert_str_eq (s_str (choice, "finish_reason"), "abort");
    cr_assert_str_eq (json_string_value (json_array_get (call->events, 1)),
                      "data: [DONE]\n\n");
    s_call_free (&call);
}

Test (chat_service, openai_provider_failure_is_an_openai_error)
{
    chat_service_destroy (&s_service);
    chat_provider_t *provider = chat_provider_new (&s_broken_ops, NULL);
    char err[256];
    s_service = chat_service_new (s_dir, &provider, err, sizeof err);
    cr_assert_not_null (s_service);
    s_new_workspace ("{\"name\":\"Fragile\"}");

    //  Sync: 500 (upstream's status), with OpenAI's error object.
    cm_call_t *call = s_serve ("POST", S_COMPLETIONS, NULL, NULL,
                               "{\"model\":\"fragile\",\"messages\":[{\"role\":\"user\","
                               "\"content\":\"hi\"}]}",
                               0);
    cr_assert_eq (call->status, 500);
    json_t *error = json_object_get (call->reply, "error");
    cr_assert_str_eq (s_str (error, "message"), "upstream exploded");
    cr_assert_str_eq (s_str (error, "type"), "server_error");
    s_call_free (&call);

    //  Stream: the good token, then the error event (which OpenAI's clients
    //  raise), no [DONE]; the partial answer is saved.
    call = s_serve ("POST", S_COMPLETIONS, NULL, NULL,
                    "{\"model\":\"fragile\",\"stream\":true,\"messages\":[{\"role\":"
                    "\"user\",\"content\":\"hi\"}]}",
                    0);
    cr_assert_eq (json_array_size (call->events), 2);
    json_t *first =
        json_array_get (json_object_get (json_array_get (call->events, 0), "choices"), 0);
    cr_assert_str_eq (s_str (json_object_get (first, "delta"), "content"), "partial ");
    error = json_object_get (json_array_get (call->events, 1), "error");
    cr_assert_str_eq (s_str (error, "message"), "upstream exploded");
    cr_assert (call->ended);
    s_call_free (&call);
    call = s_serve ("GET", "/api/v1/workspace/{slug}/chats", "fragile", NULL, NULL, 0);
    cr_assert_eq (json_array_size (json_object_get (call->reply, "history")), 2);
    s_call_free (&call);
}

//  The answer's text: a sync reply's textResponse, or a stream's chunks.
static char *
s_answer_text (cm_call_t *call, bool stream)
{
    if (!stream)
        return strdup (s_str (call->reply, "textResponse"));
    char *text = strdup ("");
    for (size_t i = 0; i < json_array_size (call->events); i++) {
        const char *chunk = s_str (json_array_get (call->events, i), "textResponse");
        if (!chunk)
            continue;
        size_t len = strlen (text);
        text = realloc (text, len + strlen (chunk) + 1);
        strcpy (text + len, chunk);
    }
    return text;
}

//  The gateway resends a chat whose instance died (or went unreachable)
//  before it answered; the first run may have saved its turn already. Both
//  runs answer, with the same chatId, and history holds the turn once;
//  sync and streaming alike. The second run does not take the first's turn
//  for an earlier one: the builtin's answer, which counts earlier turns, is
//  the same.
Test (chat_service, a_chat_resent_by_the_gateway_is_saved_once)
{
    s_new_workspace ("{\"name\":\"Resent\"}");
    const char *paths[] = {"/api/v1/workspace/{slug}/chat",
                           "/api/v1/workspace/{slug}/stream-chat"};
    for (int p = 0; p < 2; p++) {
        json_int_t ids[2];
        char *texts[2];
        s_resend_id = p ? "gw-resent-stream" : "gw-resent-sync";
        for (int run = 0; run < 2; run++) {
            s_resent = run == 1;
            cm_call_t *call = s_serve ("POST", paths[p], "resent", NULL,
                                       "{\"message\":\"say it once\"}", 0);
            cr_assert_eq (call->status, 200);
            json_t *last =
                p ? json_array_get (call->events, json_array_size (call->events) - 1)
                  : call->reply;
            ids[run] = json_integer_value (json_object_get (last, "chatId"));
            cr_assert_gt (ids[run], 0, "%s run %d: no chatId", paths[p], run);
            texts[run] = s_answer_text (call, p == 1);
            s_call_free (&call);
        }
        cr_assert_str_eq (texts[1], texts[0], "%s: the second run answered otherwise",
                          paths[p]);
        free (texts[0]);
        free (texts[1]);
        s_resend_id = NULL;
        s_resent = false;
        cr_assert_eq (ids[1], ids[0],
                      "%s: the second run saved chat %lld, the first %lld", paths[p],
                      (long long) ids[1], (long long) ids[0]);
    }
    cm_call_t *call =
        s_serve ("GET", "/api/v1/workspace/{slug}/chats", "resent", NULL, NULL, 0);
    json_t *history = json_object_get (call->reply, "history");
    cr_assert_eq (json_array_size (history), 4, "two turns, each a user and an answer");
    s_call_free (&call);
}
