/*  chat_service.c: see chat_service.h. Shapes follow upstream AnythingLLM's
    developer API (server/endpoints/api/workspace, utils/chats/
    apiChatHandler): where upstream is quirky, so are we, on purpose. */
#include "chat_service.h"
#include "cm_utf8.h"
#include "cm_log.h"
#include "cm_storage.h"
#include "cm_storage_docs.h"
#include "cm_vsearch.h"
#include <time.h>

//  Upstream's default system prompt (utils/chats chatPrompt).
#define S_DEFAULT_PROMPT                                                                 \
    "Given the following conversation, relevant context, and a follow up question, "     \
    "reply "                                                                             \
    "with an answer to the current question the user is asking. Return only your "       \
    "response "                                                                          \
    "to the question given the above information following the users instructions as "   \
    "needed."
#define S_DEFAULT_REFUSAL                                                                \
    "There is no relevant information in this workspace to answer your query."
#define S_NO_COMPLETION "No text completion could be completed with this input."
#define S_RESET_DONE    "Chat history was reset!"
//  The vector store the OpenAI route names (upstream: VECTOR_DB, "lancedb";
//  ours keeps vectors in the database).
#define S_VECTOR_PROVIDER "sqlite"

struct chat_service_s {
    cm_storage_pool_t *pool;   //  database connections lent to handler threads
    chat_provider_t *provider; //  the LLM provider, shared by all handlers
    cm_breaker_t *breaker;     //  circuit breaker around the provider (thread-safe)
    chat_clock_fn *clock;      //  monotonic ms for the breaker; NULL: cm_clock_mono_ms
    void *clock_arg;           //  argument of clock
    cm_embedder_t *embedder;   //  embeds a message to search the workspace's documents
    cm_vsearch_t *vsearch;     //  the workspaces' vector sets, cached
};

//  Most chunks a turn takes as context (a workspace's topN is clamped).
#define S_TOP_N_MAX 64

//  One chat turn being served (the state a handler and its token callback
//  share).
typedef struct {
    chat_service_t *service; //  the service (borrowed)
    cm_call_t *call;         //  the request (borrowed)
    cm_storage_t *storage;   //  a connection lent by the pool
    bool streaming;          //  stream-chat (SSE) or chat (one JSON reply)
    bool openai;             //  the OpenAI-compatible route: its shapes, not upstream's
    json_t *history;         //  openai: the request's conversation before the prompt,
                             //  [{role, content}] with string contents; else NULL
    json_t *system;          //  openai: the request's system prompt (string), or NULL
    json_t *prompt;          //  openai: the prompt's text (string); message points in
    double temperature;      //  openai: the request's temperature (< 0: the workspace's)
    int64_t created;         //  openai: the response's time, unix seconds
    json_t *workspace;       //  the workspace row
    json_t *thread;          //  the thread row, or NULL
    int64_t workspace_id;    //  workspace.id
    int64_t thread_id;       //  thread.id, 0 when none
    int64_t user_id;         //  userId of a thread chat, 0 when none
    const char *message;     //  the user's message (borrowed from the body)
    char *mode;              //  automatic | chat | query (or what the client sent)
    char *session_id;        //  the caller's sessionId, or NULL
    json_t *attachments;     //  as sent (array), saved with the turn
    char uuid[CM_UUID_SIZE]; //  id of this response
    json_t *sources;         //  the chunks found for the message (chat's "sources")
    char *system_context;    //  the system prompt with the chunks as context, or NULL
    char *text;              //  the answer so far (streaming)
    size_t text_size;        //  bytes in text
    size_t text_max;         //  bytes allocated

    cm_breaker_permit_t permit; //  the breaker's ticket for the provider call
} s_turn_t;

static void s_workspace_new (cm_call_t *call, void *arg);
static void s_workspace_list (cm_call_t *call, void *arg);
static void s_workspace_get (cm_call_t *call, void *arg);
static void s_workspace_chats (cm_call_t *call, void *arg);
static void s_thread_new (cm_call_t *call, void *arg);
static void s_chat (cm_call_t *call, void *arg);
static void s_stream_chat (cm_call_t *call, void *arg);
static void s_thread_chat (cm_call_t *call, void *arg);
static void s_thread_stream_chat (cm_call_t *call, void *arg);
static void s_openai_models (cm_call_t *call, void *arg);
static void s_openai_completions (cm_call_t *call, void *arg);
static void s_openai_vector_stores (cm_call_t *call, void *arg);

//  Literal routes first: a matcher that takes the first match never reads
//  "new" as a slug.
static const cm_route_t s_routes[] = {
    //  Quick: reads and small writes never wait behind chat turns.
    {"POST", "/api/v1/workspace/new", s_workspace_new, true},
    {"GET", "/api/v1/workspaces", s_workspace_list, true},
    {"GET", "/api/v1/workspace/{slug}", s_workspace_get, true},
    {"GET", "/api/v1/workspace/{slug}/chats", s_workspace_chats, true},
    {"POST", "/api/v1/workspace/{slug}/thread/new", s_thread_new, true},
    {"POST", "/api/v1/workspace/{slug}/chat", s_chat, false},
    {"POST", "/api/v1/workspace/{slug}/stream-chat", s_stream_chat, false},
    {"POST", "/api/v1/workspace/{slug}/thread/{threadSlug}/chat", s_thread_chat, false},
    {"POST", "/api/v1/workspace/{slug}/thread/{threadSlug}/stream-chat",
     s_thread_stream_chat, false},
    {"GET", "/api/v1/openai/models", s_openai_models, true},
    {"POST", "/api/v1/openai/chat/completions", s_openai_completions, false},
    {"GET", "/api/v1/openai/vector_stores", s_openai_vector_stores, true},
    {NULL, NULL, NULL, false},
};

chat_service_t *
chat_service_new (const char *storage_dir, chat_provider_t **provider_p, char *err,
                  size_t errlen)
{
    assert (storage_dir);
    assert (provider_p && *provider_p);
    cm_storage_pool_t *pool = cm_storage_pool_new (storage_dir, err, errlen);
    if (!pool) {
        chat_provider_destroy (provider_p);
        return NULL;
    }
    chat_service_t *self = cm_calloc (1, sizeof *self);
    self->pool = pool;
    self->provider = *provider_p;
    *provider_p = NULL;
    cm_breaker_config_t config;
    cm_breaker_config_defaults (&config);
    self->breaker = cm_breaker_new ("chat", &config);
    cm_embed_config_t embed;
    cm_embed_config_defaults (&embed);
    self->embedder = cm_embedder_new (&embed, err, errlen);
    assert (self->embedder);
    self->vsearch = cm_vsearch_new ();
    return self;
}

void
chat_service_destroy (chat_service_t **self_p)
{
    assert (self_p);
    chat_service_t *self = *self_p;
    if (!self)
        return;
    cm_storage_pool_destroy (&self->pool);
    chat_provider_destroy (&self->provider);
    cm_breaker_destroy (&self->breaker);
    cm_embedder_destroy (&self->embedder);
    cm_vsearch_destroy (&self->vsearch);
    free (self);
    *self_p = NULL;
}

void
chat_service_set_breaker (chat_service_t *self, cm_breaker_t **breaker_p)
{
    assert (self && breaker_p && *breaker_p);
    cm_breaker_destroy (&self->breaker);
    self->breaker = *breaker_p;
    *breaker_p = NULL;
}

void
chat_service_set_embedder (chat_service_t *self, cm_embedder_t **embedder_p)
{
    assert (self && embedder_p && *embedder_p);
    cm_embedder_destroy (&self->embedder);
    self->embedder = *embedder_p;
    *embedder_p = NULL;
}

cm_vsearch_t *
chat_service_vsearch (chat_service_t *self)
{
    assert (self);
    return self->vsearch;
}

cm_breaker_t *
chat_service_breaker (chat_service_t *self)
{
    assert (self);
    return self->breaker;
}

void
chat_service_set_clock (chat_service_t *self, chat_clock_fn *clock, void *arg)
{
    assert (self);
    self->clock = clock;
    self->clock_arg = arg;
}

const cm_route_t *
chat_service_routes (void)
{
    return s_routes;
}

//  --- helpers ----------------------------------------------------------------------

//  The request body as an object; an empty object when absent or not one.
static json_t *
s_body (cm_call_t *call)
{
    json_t *body = cm_call_json (call);
    return json_is_object (body) ? json_incref (body) : json_object ();
}

//  JavaScript truthiness of a JSON value.
static bool
s_truthy (const json_t *value)
{
    if (!value || json_is_null (value) || json_is_false (value))
        return false;
    if (json_is_integer (value))
        return json_integer_value (value) != 0;
    if (json_is_real (value))
        return json_real_value (value) != 0;
    if (json_is_string (value))
        return json_string_length (value) > 0;
    return true;
}

//  String(value) for a truthy value, else NULL (upstream's sessionId rule).
static char *
s_js_string (const json_t *value)
{
    if (!s_truthy (value))
        return NULL;
    if (json_is_string (value))
        return cm_strdup (json_string_value (value));
    return json_dumps (value, JSON_ENCODE_ANY | JSON_COMPACT);
}

static json_t *
s_metrics_json (const chat_metrics_t *m)
{
    return json_pack ("{s:I, s:I, s:I, s:f, s:f}", "prompt_tokens",
                      (json_int_t) m->prompt_tokens, "completion_tokens",
                      (json_int_t) m->completion_tokens, "total_tokens",
                      (json_int_t) m->total_tokens, "outputTps", m->output_tps,
                      "duration", m->duration);
}

//  Reply JSON built by json_pack, which gives NULL when a string is not
//  valid UTF-8 (a provider's fault, never worth an assert in cm_worker).
static void
s_reply_json (cm_call_t *call, int status, json_t *value)
{
    if (!value) {
        cm_error ("%s: a reply could not be encoded as JSON", cm_call_request_id (call));
        value = json_pack ("{s:s}", "error", "The reply could not be encoded.");
        status = 500;
    }
    cm_call_reply_json (call, status, value);
}

//  Send one SSE event built by json_pack; one that failed to encode is
//  dropped with a log line rather than asserting.
static void
s_send_event (cm_call_t *call, json_t *event)
{
    if (event)
        cm_call_sse (call, event);
    else
        cm_error ("%s: an event could not be encoded as JSON", cm_call_request_id (call));
}

//  Errors before any output: {id, type:"abort", textResponse:null,
//  sources:[], close:true, error}.
static void
s_reply_abort (cm_call_t *call, int status, const char *error)
{
    char id[CM_UUID_SIZE];
    cm_uuid (id);
    //  The error quotes the request (a slug, a mode), cut at a byte count.
    char *text = cm_utf8_dup (error);
    s_reply_json (call, status,
                  json_pack ("{s:s, s:s, s:n, s:[], s:b, s:s}", "id", id, "type", "abort",
                             "textResponse", "sources", "close", 1, "error", text));
    free (text);
}

static json_t *s_openai_error (const char *message, bool request_fault,
                               const char *param);

//  A turn that fails before any output, in its route's shape: OpenAI's
//  error object on the OpenAI route (its client libraries read that), the
//  abort shape on the others.
static void
s_turn_fail (s_turn_t *turn, int status, const char *error)
{
    if (turn->openai)
        s_reply_json (turn->call, status, s_openai_error (error, false, NULL));
    else
        s_reply_abort (turn->call, status, error);
}

//  The breaker refused the provider call: 503 with Retry-After in whole
//  seconds, rounded up (at least 1), naming the circuit.
static void
s_reply_circuit_open (s_turn_t *turn, int64_t retry_ms)
{
    int64_t seconds = cm_call_retry_after (turn->call, retry_ms);
    char error[256];
    snprintf (error, sizeof error,
              "The %s circuit is open: the LLM provider is failing, so chat is paused. "
              "Retry after %lld s.",
              cm_breaker_name (turn->service->breaker), (long long) seconds);
    s_turn_fail (turn, 503, error);
}

static int64_t
s_now (chat_service_t *self)
{
    return self->clock ? self->clock (self->clock_arg) : cm_clock_mono_ms ();
}

//  Report a provider call's end to the breaker: an upstream failure counts
//  against it; a stop (the client left) or the request's own fault says
//  nothing about the upstream.
static void
s_breaker_report (s_turn_t *turn, chat_provider_result_t result)
{
    chat_service_t *self = turn->service;
    if (result == CHAT_PROVIDER_DONE)
        cm_breaker_success (self->breaker, turn->permit, s_now (self));
    else if (result == CHAT_PROVIDER_FAILED)
        cm_breaker_failure (self->breaker, turn->permit, s_now (self));
    else
        cm_breaker_release (self->breaker, turn->permit);
}

//  Upstream's sendStatus(400): a plain-text body.
static void
s_reply_bad_request (cm_call_t *call)
{
    cm_call_reply (call, 400, "text/plain; charset=utf-8", "Bad Request", 11);
}

//  A workspace row with only the thread keys a route shows.
static void
s_trim_threads (json_t *threads, bool with_name)
{
    size_t i;
    json_t *thread;
    json_array_foreach (threads, i, thread)
    {
        json_t *trimmed =
            json_pack ("{s:O, s:O}", "user_id", json_object_get (thread, "user_id"),
                       "slug", json_object_get (thread, "slug"));
        if (with_name)
            json_object_set (trimmed, "name", json_object_get (thread, "name"));
        json_array_set_new (threads, i, trimmed);
    }
}

//  Seconds since the epoch of our stored "YYYY-MM-DDTHH:MM:SS.sssZ".
static int64_t
s_unix_seconds (const char *iso)
{
    struct tm tm = {0};
    if (!iso || sscanf (iso, "%d-%d-%dT%d:%d:%d", &tm.tm_year, &tm.tm_mon, &tm.tm_mday,
                        &tm.tm_hour, &tm.tm_min, &tm.tm_sec) != 6)
        return 0;
    tm.tm_year -= 1900;
    tm.tm_mon -= 1;
    return (int64_t) timegm (&tm);
}

//  --- workspace routes ----------------------------------------------------------------

static void
s_workspace_new (cm_call_t *call, void *arg)
{
    chat_service_t *self = (chat_service_t *) arg;
    json_t *body = s_body (call);
    const char *name = json_string_value (json_object_get (body, "name"));
    if (!name || !*name) {
        s_reply_json (
            call, 400,
            json_pack ("{s:n, s:s}", "workspace", "message", "name cannot be null"));
        json_decref (body);
        return;
    }
    cm_storage_t *storage = cm_storage_pool_acquire (self->pool);
    if (!storage) {
        s_reply_json (
            call, 500,
            json_pack ("{s:n, s:s}", "workspace", "message", "storage unavailable"));
        json_decref (body);
        return;
    }
    json_t *workspace = NULL;
    cm_storage_status_t status = cm_storage_workspace_create (storage, body, &workspace);
    if (status == CM_STORAGE_OK)
        s_reply_json (call, 200,
                      json_pack ("{s:o, s:n}", "workspace", workspace, "message"));
    else
        s_reply_json (call, status == CM_STORAGE_INVALID ? 400 : 500,
                      json_pack ("{s:n, s:s}", "workspace", "message",
                                 cm_storage_errmsg (storage)));
    cm_storage_pool_release (self->pool, &storage);
    json_decref (body);
}

//  Every workspace with its threads (new reference), or NULL after
//  answering the call 500.
static json_t *
s_workspaces (chat_service_t *self, cm_call_t *call)
{
    cm_storage_t *storage = cm_storage_pool_acquire (self->pool);
    json_t *workspaces = NULL;
    if (!storage || cm_storage_workspace_list (storage, &workspaces) != CM_STORAGE_OK) {
        cm_call_reply_error (call, 500, "Internal Server Error");
        workspaces = NULL;
    }
    cm_storage_pool_release (self->pool, &storage);
    return workspaces;
}

static void
s_workspace_list (cm_call_t *call, void *arg)
{
    chat_service_t *self = (chat_service_t *) arg;
    json_t *workspaces = s_workspaces (self, call);
    if (!workspaces)
        return;
    size_t i;
    json_t *workspace;
    json_array_foreach (workspaces, i, workspace)
        s_trim_threads (json_object_get (workspace, "threads"), true);
    s_reply_json (call, 200, json_pack ("{s:o}", "workspaces", workspaces));
}

static void
s_workspace_get (cm_call_t *call, void *arg)
{
    chat_service_t *self = (chat_service_t *) arg;
    const char *slug = cm_call_param (call, "slug");
    cm_storage_t *storage = cm_storage_pool_acquire (self->pool);
    json_t *workspace = NULL, *threads = NULL;
    cm_storage_status_t status = CM_STORAGE_ERROR;
    if (storage && slug)
        status = cm_storage_workspace_get (storage, slug, &workspace);
    if (status == CM_STORAGE_OK &&
        cm_storage_thread_list (storage,
                                json_integer_value (json_object_get (workspace, "id")),
                                &threads) != CM_STORAGE_OK)
        status = CM_STORAGE_ERROR;

    if (status == CM_STORAGE_ERROR)
        cm_call_reply_error (call, 500, "Internal Server Error");
    else {
        //  Quirk: an array, and [] (with 200) for an unknown slug.
        json_t *list = json_array ();
        if (workspace) {
            s_trim_threads (threads, false);
            json_t *documents = NULL;
            if (cm_storage_workspace_doc_list (
                    storage, json_integer_value (json_object_get (workspace, "id")),
                    &documents) != CM_STORAGE_OK)
                documents = json_array ();
            json_object_set_new (workspace, "documents", documents);
            json_object_set (workspace, "threads", threads);
            json_array_append (list, workspace);
        }
        s_reply_json (call, 200, json_pack ("{s:o}", "workspace", list));
    }
    json_decref (workspace);
    json_decref (threads);
    cm_storage_pool_release (self->pool, &storage);
}

static void
s_workspace_chats (cm_call_t *call, void *arg)
{
    chat_service_t *self = (chat_service_t *) arg;
    const char *slug = cm_call_param (call, "slug");
    cm_storage_t *storage = cm_storage_pool_acquire (self->pool);
    json_t *workspace = NULL, *chats = NULL;
    if (!storage) {
        cm_call_reply_error (call, 500, "Internal Server Error");
        return;
    }
    cm_storage_status_t status =
        cm_storage_workspace_get (storage, slug ? slug : "", &workspace);
    if (status == CM_STORAGE_NOT_FOUND) {
        s_reply_bad_request (call);
        goto cleanup;
    }
    if (status != CM_STORAGE_OK)
        goto failed;

    //  Upstream: limit = max(1, parseInt(limit)) (default 100); orderBy asc|desc.
    int64_t limit = 100;
    const char *text = cm_call_query (call, "limit");
    if (text && *text) {
        char *end;
        long long v = strtoll (text, &end, 10);
        if (end != text)
            limit = v < 1 ? 1 : v;
    }
    const char *order = cm_call_query (call, "orderBy");
    const char *session = cm_call_query (call, "apiSessionId");
    cm_storage_chat_filter_t filter = {
        .session_id = session && *session ? session : NULL,
        .user_id = session && *session ? 0 : -1,
        .included_only = !(session && *session),
        .limit = limit,
        .newest_first = order && !strcmp (order, "desc"),
    };
    if (cm_storage_chat_list (storage,
                              json_integer_value (json_object_get (workspace, "id")),
                              &filter, &chats) != CM_STORAGE_OK)
        goto failed;

    //  Upstream's convertToChatHistory: each turn as a user and an assistant
    //  entry; a turn whose response has no text is skipped.
    json_t *history = json_array ();
    size_t i;
    json_t *chat;
    json_array_foreach (chats, i, chat)
    {
        json_t *response = json_object_get (chat, "response");
        json_t *prompt = json_object_get (chat, "prompt");
        json_t *answer = json_object_get (response, "text");
        if (!json_is_string (prompt) || !json_is_string (answer))
            continue;
        json_int_t sent =
            s_unix_seconds (json_string_value (json_object_get (chat, "createdAt")));
        json_t *id = json_object_get (chat, "id");
        json_t *attachments = json_object_get (response, "attachments");
        json_t *sources = json_object_get (response, "sources");
        json_t *metrics = json_object_get (response, "metrics");
        json_t *feedback = json_object_get (chat, "feedbackScore");
        const char *type = json_string_value (json_object_get (response, "type"));
        json_array_append_new (
            history, json_pack ("{s:s, s:O, s:I, s:o, s:O}", "role", "user", "content",
                                prompt, "sentAt", sent, "attachments",
                                json_is_array (attachments) ? json_incref (attachments)
                                                            : json_array (),
                                "chatId", id));
        json_array_append_new (
            history,
            json_pack (
                "{s:s, s:s, s:O, s:o, s:O, s:I, s:o, s:o}", "type", type ? type : "chart",
                "role", "assistant", "content", answer, "sources",
                json_is_array (sources) ? json_incref (sources) : json_array (), "chatId",
                id, "sentAt", sent, "feedbackScore",
                feedback ? json_incref (feedback) : json_null (), "metrics",
                json_is_object (metrics) ? json_incref (metrics) : json_object ()));
    }
    s_reply_json (call, 200, json_pack ("{s:o}", "history", history));
    goto cleanup;

failed:
    cm_call_reply_error (call, 500, "Internal Server Error");
cleanup:
    json_decref (workspace);
    json_decref (chats);
    cm_storage_pool_release (self->pool, &storage);
}

static void
s_thread_new (cm_call_t *call, void *arg)
{
    chat_service_t *self = (chat_service_t *) arg;
    const char *slug = cm_call_param (call, "slug");
    json_t *body = s_body (call);
    json_t *workspace = NULL, *thread = NULL;
    cm_storage_t *storage = cm_storage_pool_acquire (self->pool);
    if (!storage) {
        cm_call_reply_error (call, 500, "Internal Server Error");
        json_decref (body);
        return;
    }
    cm_storage_status_t status =
        cm_storage_workspace_get (storage, slug ? slug : "", &workspace);
    if (status == CM_STORAGE_NOT_FOUND)
        s_reply_bad_request (call);
    else if (status != CM_STORAGE_OK)
        cm_call_reply_error (call, 500, "Internal Server Error");
    else {
        status = cm_storage_thread_create (
            storage, json_integer_value (json_object_get (workspace, "id")), body,
            &thread);
        if (status == CM_STORAGE_OK)
            s_reply_json (call, 200,
                          json_pack ("{s:o, s:n}", "thread", thread, "message"));
        else if (status == CM_STORAGE_ERROR)
            cm_call_reply_error (call, 500, "Internal Server Error");
        else //  upstream answers a refused thread with 200 and the reason
            s_reply_json (call, 200,
                          json_pack ("{s:n, s:s}", "thread", "message",
                                     cm_storage_errmsg (storage)));
    }
    json_decref (workspace);
    json_decref (body);
    cm_storage_pool_release (self->pool, &storage);
}

//  --- chat -----------------------------------------------------------------------------

static void
s_append (s_turn_t *turn, const char *data, size_t size)
{
    if (turn->text_size + size + 1 > turn->text_max) {
        turn->text_max = (turn->text_size + size + 1) * 2;
        turn->text = cm_realloc (turn->text, turn->text_max);
    }
    memcpy (turn->text + turn->text_size, data, size);
    turn->text_size += size;
    turn->text[turn->text_size] = 0;
}

//  Save the turn; returns its chatId or -1 (logged by storage).
static int64_t
s_save (s_turn_t *turn, const char *text, const chat_metrics_t *metrics, bool include)
{
    json_t *response =
        json_pack ("{s:s, s:O, s:s, s:O, s:o}", "text", text, "sources", turn->sources,
                   "type", turn->mode, "attachments", turn->attachments, "metrics",
                   metrics ? s_metrics_json (metrics) : json_object ());
    if (!response) {
        cm_error ("%s: the answer could not be encoded for history",
                  cm_call_request_id (turn->call));
        return -1;
    }
    if (!turn->storage)
        turn->storage = cm_storage_pool_acquire (turn->service->pool);
    if (!turn->storage) {
        json_decref (response);
        return -1;
    }
    cm_storage_chat_t chat = {
        .workspace_id = turn->workspace_id,
        .prompt = turn->message ? turn->message : "",
        .response = response,
        .session_id = turn->session_id,
        .thread_id = turn->thread_id,
        .user_id = turn->user_id,
        .include = include,
        .request_id = cm_call_request_id (turn->call),
        //  Sent here a second time (its first instance died, or seemed to,
        //  before answering), or this chatd stalled while it ran, so the
        //  gateway may have sent it elsewhere too: the other run may have
        //  saved this turn already.
        .twice_from_us = cm_call_twice_from_us (turn->call),
    };
    int64_t id = cm_storage_chat_add (turn->storage, &chat);
    json_decref (response);
    return id;
}

//  Why a turn was not saved, for its client: the database's reason when
//  there is one ("database or disk is full"), as the upload routes say.
static const char *
s_unsaved (s_turn_t *turn, char *buf, size_t size)
{
    const char *why = turn->storage ? cm_storage_errmsg (turn->storage) : "";
    if (*why)
        snprintf (buf, size, "The chat could not be saved: %s.", why);
    else
        snprintf (buf, size, "The chat could not be saved.");
    return cm_utf8_fix (buf);
}

//  --- OpenAI-compatible shapes (upstream's utils/chats/openaiCompatible) -----------

//  A completion, or with chunk a chunk of one: {id, object, created, model,
//  choices:[{index:0, message|delta:{role:"assistant", content}, logprobs:null,
//  finish_reason}]}; content NULL gives null, finish_reason NULL too. NULL
//  when content is not valid UTF-8.
static json_t *
s_openai_object (s_turn_t *turn, bool chunk, const char *content, size_t size,
                 const char *finish_reason)
{
    json_t *message =
        content ? json_pack ("{s:s, s:s%}", "role", "assistant", "content", content, size)
                : json_pack ("{s:s, s:n}", "role", "assistant", "content");
    if (!message)
        return NULL;
    const char *slug = json_string_value (json_object_get (turn->workspace, "slug"));
    return json_pack ("{s:s, s:s, s:I, s:s, s:[{s:i, s:o, s:n, s:s?}]}", "id", turn->uuid,
                      "object", chunk ? "chat.completion.chunk" : "chat.completion",
                      "created", (json_int_t) turn->created, "model", slug ? slug : "",
                      "choices", "index", 0, chunk ? "delta" : "message", message,
                      "logprobs", "finish_reason", finish_reason);
}

//  OpenAI's error object, which its client libraries raise as an APIError,
//  in a reply and in a stream alike. param names the request's field at
//  fault, or NULL (null) when none is.
static json_t *
s_openai_error (const char *message, bool request_fault, const char *param)
{
    char *text = cm_utf8_dup (message);
    json_t *error = json_pack (
        "{s:{s:s, s:s, s:s?, s:n}}", "error", "message", text, "type",
        request_fault ? "invalid_request_error" : "server_error", "param", param, "code");
    free (text);
    return error;
}

//  The end of an OpenAI stream. Upstream AnythingLLM just ends the response;
//  OpenAI sends this line, which its client libraries stop at (and clients
//  that read until it, rather than to the end of the body, need).
static void
s_openai_done (s_turn_t *turn)
{
    static const char done[] = "data: [DONE]\n\n";
    cm_call_stream (turn->call, 200, "text/event-stream", done, sizeof done - 1);
}

//  An answer that is not the model's (a query-mode refusal), as upstream's
//  OpenAI route sends it: finish_reason "abort"; streaming, one chunk.
static void
s_openai_text (s_turn_t *turn, const char *text)
{
    json_t *answer =
        s_openai_object (turn, turn->streaming, text, strlen (text), "abort");
    if (answer)
        json_object_set_new (answer, "usage", json_object ());
    if (!turn->streaming) {
        s_reply_json (turn->call, 200, answer);
        return;
    }
    s_send_event (turn->call, answer);
    s_openai_done (turn);
    cm_call_stream_end (turn->call);
}

//  An answer that is not the model's: a reset confirmation or a refusal.
//  Streaming sends it as the one and only event, as upstream does.
static void
s_reply_text (s_turn_t *turn, const char *text)
{
    if (turn->openai) {
        s_openai_text (turn, text);
        return;
    }
    if (turn->streaming) {
        s_send_event (turn->call,
                      json_pack ("{s:s, s:s, s:s, s:[], s:[], s:b, s:n, s:{}}", "id",
                                 turn->uuid, "type", "textResponse", "textResponse", text,
                                 "sources", "attachments", "close", 1, "error",
                                 "metrics"));
        cm_call_stream_end (turn->call);
    } else
        s_reply_json (turn->call, 200,
                      json_pack ("{s:s, s:s, s:s, s:[], s:b, s:n, s:{}}", "id",
                                 turn->uuid, "type", "textResponse", "textResponse", text,
                                 "sources", "close", 1, "error", "metrics"));
}

//  Recent turns, newest first, as storage hands them over.
typedef struct {
    char **texts;    //  prompt, answer, prompt, answer, ... (owned)
    size_t count;    //  strings in texts
    size_t capacity; //  slots in texts
} s_context_t;

static void
s_context_add (const char *prompt, const char *answer, void *arg)
{
    s_context_t *context = (s_context_t *) arg;
    if (context->count + 2 > context->capacity) {
        context->capacity = context->capacity ? context->capacity * 2 : 16;
        context->texts = cm_realloc (context->texts, context->capacity * sizeof (char *));
    }
    context->texts[context->count++] = cm_strdup (prompt);
    context->texts[context->count++] = cm_strdup (answer);
}

static void
s_context_free (s_context_t *context)
{
    for (size_t i = 0; i < context->count; i++)
        free (context->texts[i]);
    free (context->texts);
    memset (context, 0, sizeof *context);
}

//  The prompt: system prompt, then the recent turns of this conversation
//  (oldest first), then the message. Fills messages (caller frees the array;
//  strings are borrowed from *context, which the caller frees).
static int
s_build_messages (s_turn_t *turn, chat_message_t **messages_p, size_t *count_p,
                  s_context_t *context)
{
    //  Upstream: workspace.openAiHistory || 20 (so 0 means 20).
    int64_t depth =
        json_integer_value (json_object_get (turn->workspace, "openAiHistory"));
    cm_storage_chat_filter_t filter = {
        .session_id = turn->session_id,
        .thread_id = turn->thread_id,
        .user_id = turn->user_id,
        .included_only = true,
        .limit = depth > 0 ? depth : 20,
        .newest_first = true,
        //  A request that may have run at another instance too (sent here
        //  again, or after a stall) must not see that run's turn as an
        //  earlier one: it answers the same conversation.
        .not_request_id =
            cm_call_twice_from_us (turn->call) ? NULL : cm_call_request_id (turn->call),
    };
    if (cm_storage_chat_context (turn->storage, turn->workspace_id, &filter,
                                 s_context_add, context) != CM_STORAGE_OK)
        return -1;
    size_t turns = context->count / 2;
    chat_message_t *messages = cm_calloc (2 * turns + 2, sizeof *messages);
    size_t count = 0;
    const char *prompt =
        json_string_value (json_object_get (turn->workspace, "openAiPrompt"));
    messages[count++] =
        (chat_message_t){CHAT_ROLE_SYSTEM, turn->system_context ? turn->system_context
                                           : prompt && *prompt  ? prompt
                                                                : S_DEFAULT_PROMPT};
    for (size_t i = turns; i-- > 0;) {
        messages[count++] = (chat_message_t){CHAT_ROLE_USER, context->texts[2 * i]};
        messages[count++] =
            (chat_message_t){CHAT_ROLE_ASSISTANT, context->texts[2 * i + 1]};
    }
    messages[count++] = (chat_message_t){CHAT_ROLE_USER, turn->message};
    *messages_p = messages;
    *count_p = count;
    return 0;
}

//  The provider polls this while it waits on the upstream, so a client that
//  left stops the upstream call even when no token comes.
static bool
s_call_cancelled (void *arg)
{
    return cm_call_cancelled ((cm_call_t *) arg);
}

static chat_token_action_t
s_on_token (const char *token, size_t size, void *arg)
{
    s_turn_t *turn = (s_turn_t *) arg;
    if (cm_call_cancelled (turn->call))
        return CHAT_TOKEN_STOP;
    json_t *event = turn->openai
                        ? s_openai_object (turn, true, token, size, NULL)
                        : json_pack ("{s:s, s:[], s:s, s:s%, s:b, s:b}", "uuid",
                                     turn->uuid, "sources", "type", "textResponseChunk",
                                     "textResponse", token, size, "close", 0, "error", 0);
    //  A token that is not valid UTF-8 is neither shown nor kept.
    if (event)
        s_append (turn, token, size);
    s_send_event (turn->call, event);
    return CHAT_TOKEN_CONTINUE;
}

static void
s_finalize (s_turn_t *turn, int64_t chat_id, const chat_metrics_t *metrics)
{
    json_t *event = json_pack ("{s:s, s:s, s:b, s:b}", "uuid", turn->uuid, "type",
                               "finalizeResponseStream", "close", 1, "error", 0);
    if (chat_id > 0) {
        json_object_set_new (event, "chatId", json_integer (chat_id));
        json_object_set_new (event, "metrics", s_metrics_json (metrics));
        json_object_set (event, "sources", turn->sources);
    }
    s_send_event (turn->call, event);
}

static void
s_complete_sync (s_turn_t *turn, const chat_request_t *request)
{
    chat_metrics_t metrics;
    char err[256] = "";
    char *text = NULL;
    chat_provider_result_t result = chat_provider_complete (
        turn->service->provider, request, &text, &metrics, err, sizeof err);
    s_breaker_report (turn, result);
    cm_utf8_fix (err); //  an upstream's message, cut at a byte count
    if (!text) {
        //  Failure after validation: 200 with type abort and the provider's
        //  reason (upstream answers its e.message). A client that left
        //  (STOPPED) is not there to read it.
        bool rejected = result == CHAT_PROVIDER_REJECTED;
        if (result == CHAT_PROVIDER_STOPPED && cm_call_shutting_down (turn->call)) {
            //  No reply: the worker answers 503, and the gateway sends the
            //  chat to another replica (nothing was saved here).
            cm_info ("chat %s: cut short by the shutdown; left to another replica",
                     cm_call_request_id (turn->call));
            return;
        }
        if (result == CHAT_PROVIDER_STOPPED)
            cm_info ("chat %s: cancelled while the provider was answering",
                     cm_call_request_id (turn->call));
        else if (*err)
            cm_warn ("chat %s: provider %s: %s", cm_call_request_id (turn->call),
                     rejected ? "refused the request" : "failed", err);
        if (turn->openai) {
            //  Upstream's OpenAI route answers a failed completion 500; ours
            //  says why, in OpenAI's error shape (400 for the request's own).
            s_reply_json (turn->call, rejected ? 400 : 500,
                          s_openai_error (*err ? err : S_NO_COMPLETION, rejected, NULL));
            return;
        }
        s_reply_json (turn->call, 200,
                      json_pack ("{s:s, s:s, s:n, s:[], s:b, s:s, s:o}", "id", turn->uuid,
                                 "type", "abort", "textResponse", "sources", "close", 1,
                                 "error", *err ? err : S_NO_COMPLETION, "metrics",
                                 s_metrics_json (&metrics)));
        return;
    }
    int64_t chat_id = s_save (turn, text, &metrics, true);
    char unsaved[640];
    if (chat_id < 0)
        s_turn_fail (turn, 500, s_unsaved (turn, unsaved, sizeof unsaved));
    else if (turn->openai) {
        json_t *answer = s_openai_object (turn, false, text, strlen (text), "stop");
        if (answer)
            json_object_set_new (answer, "usage", s_metrics_json (&metrics));
        s_reply_json (turn->call, 200, answer);
    } else
        s_reply_json (turn->call, 200,
                      json_pack ("{s:s, s:s, s:b, s:n, s:I, s:s, s:O, s:o}", "id",
                                 turn->uuid, "type", "textResponse", "close", 1, "error",
                                 "chatId", (json_int_t) chat_id, "textResponse", text,
                                 "sources", turn->sources, "metrics",
                                 s_metrics_json (&metrics)));
    free (text);
}

static void
s_complete_stream (s_turn_t *turn, const chat_request_t *request)
{
    chat_metrics_t metrics;
    char err[256] = "";
    chat_provider_result_t result = chat_provider_stream (
        turn->service->provider, request, s_on_token, turn, &metrics, err, sizeof err);
    s_breaker_report (turn, result);
    cm_utf8_fix (err); //  an upstream's message, cut at a byte count
    const char *text = turn->text ? turn->text : "";
    if (result == CHAT_PROVIDER_STOPPED) {
        //  The client is gone: keep what it was shown, send nothing more.
        if (*text) {
            int64_t chat_id = s_save (turn, text, &metrics, true);
            cm_info ("chat %s: cancelled after %lld token(s); partial answer saved as "
                     "chat %lld",
                     cm_call_request_id (turn->call),
                     (long long) metrics.completion_tokens, (long long) chat_id);
        }
        cm_call_stream_end (turn->call);
        return;
    }
    if (result == CHAT_PROVIDER_FAILED || result == CHAT_PROVIDER_REJECTED) {
        cm_warn ("chat %s: provider %s mid-stream: %s", cm_call_request_id (turn->call),
                 result == CHAT_PROVIDER_REJECTED ? "refused the request" : "failed",
                 err);
        if (turn->openai) {
            //  OpenAI's error event: its client libraries raise it.
            s_send_event (turn->call,
                          s_openai_error (*err ? err : S_NO_COMPLETION,
                                          result == CHAT_PROVIDER_REJECTED, NULL));
            if (*text)
                s_save (turn, text, &metrics, true);
            cm_call_stream_end (turn->call);
            return;
        }
        s_send_event (turn->call,
                      json_pack ("{s:s, s:s, s:n, s:[], s:b, s:s}", "uuid", turn->uuid,
                                 "type", "abort", "textResponse", "sources", "close", 1,
                                 "error", *err ? err : S_NO_COMPLETION));
        int64_t chat_id = *text ? s_save (turn, text, &metrics, true) : -1;
        s_finalize (turn, chat_id, &metrics);
        cm_call_stream_end (turn->call);
        return;
    }
    if (turn->openai) {
        //  Upstream's last chunk: finish_reason "stop" and the usage.
        int64_t chat_id = s_save (turn, text, &metrics, true);
        char unsaved[640];
        json_t *last =
            chat_id < 0
                ? s_openai_error (s_unsaved (turn, unsaved, sizeof unsaved), false, NULL)
                : s_openai_object (turn, true, "", 0, "stop");
        if (chat_id >= 0)
            json_object_set_new (last, "usage", s_metrics_json (&metrics));
        s_send_event (turn->call, last);
        if (chat_id >= 0)
            s_openai_done (turn);
        cm_call_stream_end (turn->call);
        return;
    }
    //  Quirk: this close:true chunk is not the end; finalize follows.
    s_send_event (turn->call,
                  json_pack ("{s:s, s:O, s:s, s:s, s:b, s:b}", "uuid", turn->uuid,
                             "sources", turn->sources, "type", "textResponseChunk",
                             "textResponse", "", "close", 1, "error", 0));
    int64_t chat_id = s_save (turn, text, &metrics, true);
    char unsaved[640];
    if (chat_id < 0)
        s_send_event (turn->call,
                      json_pack ("{s:s, s:s, s:n, s:[], s:b, s:s}", "uuid", turn->uuid,
                                 "type", "abort", "textResponse", "sources", "close", 1,
                                 "error", s_unsaved (turn, unsaved, sizeof unsaved)));
    s_finalize (turn, chat_id, &metrics);
    cm_call_stream_end (turn->call);
}

//  The OpenAI route's prompt: the request's system prompt (else the
//  workspace's), the request's conversation (not the stored history, as
//  upstream's chatHistoryOverride), then the prompt. Strings are borrowed
//  from the turn.
static int
s_openai_messages (s_turn_t *turn, chat_message_t **messages_p, size_t *count_p)
{
    size_t turns = json_array_size (turn->history);
    chat_message_t *messages = cm_calloc (turns + 2, sizeof *messages);
    size_t count = 0;
    const char *prompt =
        json_string_value (json_object_get (turn->workspace, "openAiPrompt"));
    if (turn->system)
        prompt = json_string_value (turn->system);
    if (turn->system_context)
        prompt = turn->system_context;
    messages[count++] =
        (chat_message_t){CHAT_ROLE_SYSTEM, prompt && *prompt ? prompt : S_DEFAULT_PROMPT};
    size_t i;
    json_t *entry;
    json_array_foreach (turn->history, i, entry)
    {
        const char *role = json_string_value (json_object_get (entry, "role"));
        messages[count++] = (chat_message_t){
            !strcmp (role, "assistant") ? CHAT_ROLE_ASSISTANT : CHAT_ROLE_USER,
            json_string_value (json_object_get (entry, "content"))};
    }
    messages[count++] = (chat_message_t){CHAT_ROLE_USER, turn->message};
    *messages_p = messages;
    *count_p = count;
    return 0;
}

//  Search the workspace's documents for the message: its chunks that pass
//  the workspace's similarityThreshold, at most topN, become the turn's
//  sources and, in the system prompt, its context (upstream's
//  "Context:\n[CONTEXT 0]:\n...\n[END CONTEXT 0]" blocks). A workspace
//  without embeddings costs one version read: the message is embedded only
//  when there is something to search. 0, or -1 after answering the call.
static int
s_retrieve (s_turn_t *turn)
{
    chat_service_t *self = turn->service;
    if (!turn->message)
        return 0;
    size_t total = 0, count = 0;
    if (cm_vsearch_search (self->vsearch, turn->storage, turn->workspace_id, NULL, 0, 0,
                           0, NULL, &count, &total) == CM_STORAGE_ERROR) {
        s_turn_fail (turn, 500, "The database is unavailable.");
        return -1;
    }
    if (total == 0)
        return 0;
    float *vector = NULL;
    size_t dim = 0;
    char err[512] = "";
    cm_embed_status_t status = cm_embed (self->embedder, &turn->message, 1, &vector, &dim,
                                         s_call_cancelled, turn->call, err, sizeof err);
    if (status != CM_EMBED_OK) {
        char error[640];
        snprintf (error, sizeof error, "The message could not be embedded for search: %s",
                  err);
        cm_utf8_fix (error);
        if (turn->openai)
            s_reply_json (turn->call, 500, s_openai_error (error, false, NULL));
        else if (turn->streaming) {
            //  A failure after validation, streamed: the abort event, then
            //  the finalize event (API.md), as for a provider that fails.
            s_send_event (turn->call,
                          json_pack ("{s:s, s:s, s:n, s:[], s:b, s:s}", "uuid",
                                     turn->uuid, "type", "abort", "textResponse",
                                     "sources", "close", 1, "error", error));
            s_finalize (turn, -1, NULL);
            cm_call_stream_end (turn->call);
        } else
            s_reply_json (turn->call, 200,
                          json_pack ("{s:s, s:s, s:n, s:[], s:b, s:s}", "id", turn->uuid,
                                     "type", "abort", "textResponse", "sources", "close",
                                     1, "error", error));
        return -1;
    }
    json_t *top = json_object_get (turn->workspace, "topN");
    json_t *floor = json_object_get (turn->workspace, "similarityThreshold");
    size_t top_n = json_is_integer (top) && json_integer_value (top) > 0
                       ? (size_t) json_integer_value (top)
                       : 4;
    if (top_n > S_TOP_N_MAX)
        top_n = S_TOP_N_MAX;
    cm_vsearch_hit_t hits[S_TOP_N_MAX];
    json_t *sources = NULL;
    cm_storage_status_t found = cm_vsearch_search (
        self->vsearch, turn->storage, turn->workspace_id, vector, dim, top_n,
        json_is_number (floor) ? json_number_value (floor) : 0.25, hits, &count, NULL);
    free (vector);
    if (found == CM_STORAGE_ERROR ||
        cm_vsearch_sources (turn->storage, hits, count, &sources) != CM_STORAGE_OK) {
        s_turn_fail (turn, 500, "The database is unavailable.");
        return -1;
    }
    json_decref (turn->sources);
    turn->sources = sources;
    if (!json_array_size (sources))
        return 0;
    //  Upstream's sources carry the chunk as "text"; its API docs show
    //  {title, chunk}: both are there.
    const char *prompt =
        json_string_value (json_object_get (turn->workspace, "openAiPrompt"));
    if (turn->system)
        prompt = json_string_value (turn->system);
    size_t size = strlen (prompt && *prompt ? prompt : S_DEFAULT_PROMPT) + 32;
    size_t i;
    json_t *source;
    json_array_foreach (sources, i, source)
    {
        json_object_set (source, "chunk", json_object_get (source, "text"));
        size += json_string_length (json_object_get (source, "text")) + 64;
    }
    char *system = cm_malloc (size);
    size_t used = (size_t) snprintf (system, size, "%s\n\nContext:\n",
                                     prompt && *prompt ? prompt : S_DEFAULT_PROMPT);
    json_array_foreach (sources, i, source) used += (size_t) snprintf (
        system + used, size - used, "[CONTEXT %zu]:\n%s\n[END CONTEXT %zu]\n\n", i,
        json_string_value (json_object_get (source, "text")), i);
    turn->system_context = system;
    return 0;
}

//  A chat turn after its route validated it, the same for every route: the
//  query-mode refusal, or the prompt, the breaker, the provider, history
//  and the answer in the route's shapes.
static void
s_turn_run (s_turn_t *turn)
{
    chat_service_t *self = turn->service;
    s_context_t context = {0};
    chat_message_t *messages = NULL;
    if (s_retrieve (turn))
        goto done;
    //  Query mode answers from the documents only: with nothing relevant
    //  found, upstream's refusal, kept out of history.
    if (!strcmp (turn->mode, "query") && !json_array_size (turn->sources)) {
        json_t *refusal = json_object_get (turn->workspace, "queryRefusalResponse");
        const char *text =
            json_is_string (refusal) ? json_string_value (refusal) : S_DEFAULT_REFUSAL;
        s_save (turn, text, NULL, false);
        s_reply_text (turn, text);
        goto done;
    }

    size_t count = 0;
    int rc = turn->openai ? s_openai_messages (turn, &messages, &count)
                          : s_build_messages (turn, &messages, &count, &context);
    if (rc) {
        s_turn_fail (turn, 500, "The database is unavailable.");
        goto done;
    }
    json_t *temp = json_object_get (turn->workspace, "openAiTemp");
    chat_request_t request = {
        .messages = messages,
        .count = count,
        .model = json_string_value (json_object_get (turn->workspace, "chatModel")),
        .temperature = turn->temperature >= 0  ? turn->temperature
                       : json_is_number (temp) ? json_number_value (temp)
                                               : -1,
        .cancelled = s_call_cancelled,
        .cancel_arg = turn->call,
    };
    //  The breaker guards the provider: an open circuit is answered at once,
    //  before any stream starts.
    int64_t retry_ms = 0;
    if (cm_breaker_acquire (self->breaker, s_now (self), &turn->permit, &retry_ms) ==
        CM_BREAKER_REJECTED) {
        s_reply_circuit_open (turn, retry_ms);
        goto done;
    }
    //  Give the database connection back while the model talks: a stream
    //  may last minutes, and a pooled SQLite connection is ~100 KiB (with
    //  2,000 open streams that was most of the suite's memory). s_save takes
    //  one again for the answer.
    cm_storage_pool_release (self->pool, &turn->storage);
    if (turn->streaming) {
        //  Likewise the stack pages the database and JSON work touched: the
        //  handler thread now waits on the model for the stream's length.
        cm_thread_trim_stack ();
        s_complete_stream (turn, &request);
    } else
        s_complete_sync (turn, &request);

done:
    free (messages);
    s_context_free (&context);
}

//  Both chat routes, on a workspace or on one of its threads.
static void
s_chat_turn (cm_call_t *call, chat_service_t *self, bool streaming, bool threaded)
{
    s_turn_t turn = {.service = self,
                     .call = call,
                     .streaming = streaming,
                     .temperature = -1,
                     .sources = json_array ()};
    cm_uuid (turn.uuid);
    json_t *body = s_body (call);
    const char *slug = cm_call_param (call, "slug");
    const char *thread_slug = threaded ? cm_call_param (call, "threadSlug") : NULL;
    char error[512];

    turn.storage = cm_storage_pool_acquire (self->pool);
    if (!turn.storage) {
        s_reply_abort (call, 500, "The database is unavailable.");
        goto cleanup;
    }
    cm_storage_status_t status =
        cm_storage_workspace_get (turn.storage, slug ? slug : "", &turn.workspace);
    if (status == CM_STORAGE_OK) {
        turn.workspace_id = json_integer_value (json_object_get (turn.workspace, "id"));
        if (threaded)
            status = cm_storage_thread_get (turn.storage, turn.workspace_id,
                                            thread_slug ? thread_slug : "", &turn.thread);
    }
    if (status == CM_STORAGE_ERROR) {
        s_reply_abort (call, 500, "The database is unavailable.");
        goto cleanup;
    }
    if (status == CM_STORAGE_NOT_FOUND) {
        if (threaded)
            snprintf (error, sizeof error,
                      "Workspace %.200s or thread %.200s is not valid.", slug ? slug : "",
                      thread_slug ? thread_slug : "");
        else
            snprintf (error, sizeof error, "Workspace %.400s is not a valid workspace.",
                      slug ? slug : "");
        s_reply_abort (call, 400, error);
        goto cleanup;
    }
    turn.thread_id = json_integer_value (json_object_get (turn.thread, "id"));

    json_t *message = json_object_get (body, "message");
    turn.message = json_string_value (message);
    if (turn.message && !*turn.message)
        turn.message = NULL;
    //  A number, array or object is no message either, but "empty" would
    //  send the client looking in the wrong place; null counts as missing.
    bool message_mistyped =
        message && !json_is_null (message) && !json_is_string (message);
    //  Upstream: mode ?? workspace.chatMode; only these three are valid.
    json_t *mode = json_object_get (body, "mode");
    if (!mode || json_is_null (mode))
        mode = json_object_get (turn.workspace, "chatMode");
    if (json_is_string (mode))
        turn.mode = cm_strdup (json_string_value (mode));
    else if (!mode || json_is_null (mode))
        turn.mode = cm_strdup ("automatic");
    else
        turn.mode = json_dumps (mode, JSON_ENCODE_ANY | JSON_COMPACT);
    bool mode_valid = !strcmp (turn.mode, "automatic") || !strcmp (turn.mode, "chat") ||
                      !strcmp (turn.mode, "query");
    bool reset = s_truthy (json_object_get (body, "reset"));
    if ((!turn.message || !mode_valid) && !reset) {
        if (!turn.message)
            snprintf (error, sizeof error, "%s",
                      message_mistyped ? "message must be a string" : "Message is empty");
        else
            snprintf (error, sizeof error, "%.400s is not a valid mode.", turn.mode);
        s_reply_abort (call, 400, error);
        goto cleanup;
    }
    turn.session_id = s_js_string (json_object_get (body, "sessionId"));
    if (threaded) {
        json_t *user = json_object_get (body, "userId");
        if (json_is_integer (user) && json_integer_value (user) > 0)
            turn.user_id = json_integer_value (user);
    }
    json_t *attachments = json_object_get (body, "attachments");
    turn.attachments =
        json_is_array (attachments) ? json_incref (attachments) : json_array ();

    //  reset: forget this conversation's history first; without a message
    //  that is all the caller wanted.
    if (reset) {
        cm_storage_chat_filter_t filter = {
            .session_id = turn.session_id,
            .thread_id = turn.thread_id,
            .user_id = turn.user_id ? turn.user_id : -1,
        };
        if (cm_storage_chat_reset (turn.storage, turn.workspace_id, &filter) < 0) {
            s_reply_abort (call, 500, "The database is unavailable.");
            goto cleanup;
        }
        if (!turn.message) {
            s_reply_text (&turn, S_RESET_DONE);
            goto cleanup;
        }
    }

    s_turn_run (&turn);

cleanup:
    cm_storage_pool_release (self->pool, &turn.storage);
    json_decref (turn.workspace);
    json_decref (turn.thread);
    json_decref (turn.attachments);
    json_decref (turn.sources);
    free (turn.system_context);
    json_decref (body);
    free (turn.mode);
    free (turn.session_id);
    free (turn.text);
}

static void
s_chat (cm_call_t *call, void *arg)
{
    s_chat_turn (call, (chat_service_t *) arg, false, false);
}

static void
s_stream_chat (cm_call_t *call, void *arg)
{
    s_chat_turn (call, (chat_service_t *) arg, true, false);
}

static void
s_thread_chat (cm_call_t *call, void *arg)
{
    s_chat_turn (call, (chat_service_t *) arg, false, true);
}

static void
s_thread_stream_chat (cm_call_t *call, void *arg)
{
    s_chat_turn (call, (chat_service_t *) arg, true, true);
}

//  --- OpenAI-compatible routes ----------------------------------------------------

//  The text of an OpenAI message's content (new reference, a string): a
//  string as it is; an array of parts, its "text" parts joined by newlines
//  (upstream's extractTextContent; images are not supported); else "".
static json_t *
s_openai_content (const json_t *content)
{
    if (json_is_string (content))
        return json_incref ((json_t *) content);
    char *text = cm_strdup ("");
    size_t size = 0, i;
    json_t *part;
    json_array_foreach (content, i, part)
    {
        const char *piece = json_string_value (json_object_get (part, "text"));
        const char *type = json_string_value (json_object_get (part, "type"));
        if (!piece || !type || strcmp (type, "text"))
            continue;
        size_t length = strlen (piece);
        text = cm_realloc (text, size + length + 2);
        if (size)
            text[size++] = '\n';
        memcpy (text + size, piece, length + 1);
        size += length;
    }
    json_t *value = json_string (text);
    free (text);
    return value ? value : json_string ("");
}

//  Whether the prompt, messages[index].content, has text to send: 0, or -1
//  with the reason in error. A prompt without text would ask the model
//  about nothing and save an empty turn to history; OpenAI refuses such a
//  request (400, invalid_request_error), as the chat routes refuse an
//  empty message. Parts other than text (images) are left out, as
//  s_openai_content does, so they alone are no prompt.
static int
s_openai_prompt_check (const json_t *content, size_t index, char *error, size_t size)
{
    if (!content) {
        snprintf (error, size, "messages[%zu].content is required", index);
        return -1;
    }
    if (json_is_string (content)) {
        if (json_string_length (content) > 0)
            return 0;
        snprintf (error, size, "messages[%zu].content is empty", index);
        return -1;
    }
    if (!json_is_array (content)) {
        snprintf (error, size,
                  "messages[%zu].content must be a string or an array of text parts",
                  index);
        return -1;
    }
    bool any_part = false, any_text = false;
    size_t i;
    json_t *part;
    json_array_foreach (content, i, part)
    {
        const char *type = json_string_value (json_object_get (part, "type"));
        if (!type || strcmp (type, "text"))
            continue;
        //  A text part whose text is not a string is the client's mistake,
        //  not a part to skip quietly.
        json_t *text = json_object_get (part, "text");
        if (!json_is_string (text)) {
            snprintf (error, size, "messages[%zu].content[%zu].text must be a string",
                      index, i);
            return -1;
        }
        any_part = true;
        if (json_string_length (text) > 0)
            any_text = true;
    }
    if (!any_part) {
        snprintf (error, size,
                  "messages[%zu].content must be a string or an array of text parts: "
                  "it has no text part (only text is supported)",
                  index);
        return -1;
    }
    if (!any_text) {
        snprintf (error, size, "messages[%zu].content is empty", index);
        return -1;
    }
    return 0;
}

//  GET /api/v1/openai/models: every workspace as a model (upstream 1.16):
//  {object:"list", data:[{id:<slug>, object:"model", created, owned_by}]}.
static void
s_openai_models (cm_call_t *call, void *arg)
{
    chat_service_t *self = (chat_service_t *) arg;
    json_t *workspaces = s_workspaces (self, call);
    if (!workspaces)
        return;
    json_t *data = json_array ();
    size_t i;
    json_t *workspace;
    json_array_foreach (workspaces, i, workspace)
    {
        //  Upstream: workspace.chatProvider || LLM_PROVIDER.
        const char *owner =
            json_string_value (json_object_get (workspace, "chatProvider"));
        json_array_append_new (
            data,
            json_pack ("{s:O, s:s, s:I, s:s}", "id", json_object_get (workspace, "slug"),
                       "object", "model", "created",
                       (json_int_t) s_unix_seconds (
                           json_string_value (json_object_get (workspace, "createdAt"))),
                       "owned_by",
                       owner && *owner ? owner : chat_provider_name (self->provider)));
    }
    json_decref (workspaces);
    s_reply_json (call, 200, json_pack ("{s:s, s:o}", "object", "list", "data", data));
}

//  GET /api/v1/openai/vector_stores: every workspace as a vector store. Quirk
//  (upstream): everything comes on the first page, and since OpenAI's
//  clients ask for the next page anyway (?after=...), any query parameter
//  gets an empty page.
static void
s_openai_vector_stores (cm_call_t *call, void *arg)
{
    chat_service_t *self = (chat_service_t *) arg;
    if (cm_call_query_count (call) > 0) {
        s_reply_json (call, 200, json_pack ("{s:[], s:b}", "data", "has_more", 0));
        return;
    }
    //  The workspaces and their document counts on one connection, the
    //  counts in one query for all of them (not one per workspace).
    cm_storage_t *storage = cm_storage_pool_acquire (self->pool);
    json_t *workspaces = NULL, *counts = NULL;
    if (!storage || cm_storage_workspace_list (storage, &workspaces) != CM_STORAGE_OK ||
        cm_storage_workspace_doc_counts (storage, &counts) != CM_STORAGE_OK) {
        //  A count of 0 would claim an empty store: say it failed instead.
        cm_call_reply_error (call, 500, "Internal Server Error");
        json_decref (workspaces);
        cm_storage_pool_release (self->pool, &storage);
        return;
    }
    cm_storage_pool_release (self->pool, &storage);
    json_t *data = json_array ();
    size_t i;
    json_t *workspace;
    json_array_foreach (workspaces, i, workspace)
    {
        //  Upstream: Document.count({workspaceId}), the workspace's documents.
        char key[32];
        snprintf (key, sizeof key, "%lld",
                  (long long) json_integer_value (json_object_get (workspace, "id")));
        json_array_append_new (
            data,
            json_pack ("{s:O, s:s, s:O, s:{s:I}, s:s}", "id",
                       json_object_get (workspace, "slug"), "object", "vector_store",
                       "name", json_object_get (workspace, "name"), "file_counts",
                       "total", json_integer_value (json_object_get (counts, key)),
                       "provider", S_VECTOR_PROVIDER));
    }
    json_decref (counts);
    json_decref (workspaces);
    json_t *reply = json_object ();
    //  Upstream leaves first_id and last_id out when there is no store.
    size_t stores = json_array_size (data);
    if (stores) {
        json_object_set (reply, "first_id",
                         json_object_get (json_array_get (data, 0), "id"));
        json_object_set (reply, "last_id",
                         json_object_get (json_array_get (data, stores - 1), "id"));
    }
    json_object_set_new (reply, "data", data);
    json_object_set_new (reply, "has_more", json_false ());
    s_reply_json (call, 200, reply);
}

//  POST /api/v1/openai/chat/completions {model:<slug>, messages, temperature?,
//  stream?}: a chat turn of that workspace (queue, breaker, provider,
//  history: s_turn_run), in OpenAI's shapes. As upstream: an unknown model
//  is 401 with an empty body; the last message must be the user's (else
//  400 in the abort shape); its content must have text (else 400 in
//  OpenAI's error shape, ours); the first system message replaces the
//  workspace's prompt; the other messages are the conversation, instead of
//  the stored history; the turn is saved to the workspace's history.
static void
s_openai_completions (cm_call_t *call, void *arg)
{
    chat_service_t *self = (chat_service_t *) arg;
    s_turn_t turn = {.service = self,
                     .sources = json_array (),
                     .call = call,
                     .openai = true,
                     .temperature = -1,
                     .created = (int64_t) time (NULL)};
    cm_uuid (turn.uuid);
    json_t *body = s_body (call);
    json_t *model = json_object_get (body, "model");
    //  Upstream looks up String(model): only a string can name a workspace.
    const char *slug = json_is_string (model) ? json_string_value (model) : NULL;

    turn.storage = cm_storage_pool_acquire (self->pool);
    if (!turn.storage) {
        s_reply_abort (call, 500, "The database is unavailable.");
        goto cleanup;
    }
    cm_storage_status_t status =
        slug && *slug ? cm_storage_workspace_get (turn.storage, slug, &turn.workspace)
                      : CM_STORAGE_NOT_FOUND;
    if (status == CM_STORAGE_ERROR) {
        s_reply_abort (call, 500, "The database is unavailable.");
        goto cleanup;
    }
    if (status == CM_STORAGE_NOT_FOUND) {
        //  Quirk (upstream): 401, and no body at all.
        cm_call_reply (call, 401, "text/plain; charset=utf-8", "", 0);
        goto cleanup;
    }
    turn.workspace_id = json_integer_value (json_object_get (turn.workspace, "id"));

    json_t *messages = json_object_get (body, "messages");
    size_t count = json_array_size (messages);
    json_t *last = count ? json_array_get (messages, count - 1) : NULL;
    const char *role = json_string_value (json_object_get (last, "role"));
    if (!role || strcmp (role, "user")) {
        s_reply_abort (call, 400,
                       "No user prompt found. Must be last element in message array "
                       "with 'user' role.");
        goto cleanup;
    }
    char error[256];
    if (s_openai_prompt_check (json_object_get (last, "content"), count - 1, error,
                               sizeof error)) {
        s_reply_json (call, 400, s_openai_error (error, true, "messages"));
        goto cleanup;
    }
    turn.prompt = s_openai_content (json_object_get (last, "content"));
    turn.message = json_string_value (turn.prompt);
    turn.history = json_array ();
    for (size_t i = 0; i + 1 < count; i++) {
        json_t *entry = json_array_get (messages, i);
        const char *entry_role = json_string_value (json_object_get (entry, "role"));
        if (!entry_role)
            continue;
        json_t *text = s_openai_content (json_object_get (entry, "content"));
        if (!strcmp (entry_role, "system")) {
            //  Upstream: the first system message is the system prompt.
            if (!turn.system)
                turn.system = json_incref (text);
        } else if (!strcmp (entry_role, "user") || !strcmp (entry_role, "assistant"))
            json_array_append_new (turn.history, json_pack ("{s:s, s:O}", "role",
                                                            entry_role, "content", text));
        json_decref (text);
    }
    json_t *temperature = json_object_get (body, "temperature");
    if (json_is_number (temperature) && json_number_value (temperature) >= 0)
        turn.temperature = json_number_value (temperature);
    turn.streaming = s_truthy (json_object_get (body, "stream"));
    //  Upstream: the workspace's chat mode (a query-mode workspace refuses
    //  without documents, as on the chat routes).
    const char *mode = json_string_value (json_object_get (turn.workspace, "chatMode"));
    turn.mode = cm_strdup (mode ? mode : "automatic");
    turn.attachments = json_array ();
    s_turn_run (&turn);

cleanup:
    cm_storage_pool_release (self->pool, &turn.storage);
    json_decref (turn.workspace);
    json_decref (turn.attachments);
    json_decref (turn.sources);
    free (turn.system_context);
    json_decref (turn.history);
    json_decref (turn.system);
    json_decref (turn.prompt);
    json_decref (body);
    free (turn.mode);
    free (turn.text);
}
