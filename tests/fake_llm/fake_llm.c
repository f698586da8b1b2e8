/*  fake_llm: a fake OpenAI-compatible LLM server, for llmrt's tests.

    Usage:
        fake_llm [--host ADDR] [--port N] [--mode MODE] [--pace-ms N] [--tokens N]

    --host is 127.0.0.1 by default; --port 0 (the default) takes a free port.
    Either way the first line on stdout is "fake_llm listening on HOST:PORT".
    SIGINT or SIGTERM stops it.

    Routes:
        POST /v1/embeddings        OpenAI embeddings: "input" is a string or an
                                   array of strings; each gets a vector of
                                   embed_dim (default 8) numbers derived from
                                   a hash of its text (the same text always
                                   gets the same vector; not normalised). The
                                   "data" items come in REVERSE index order,
                                   so clients must sort them by "index".
        POST /v1/chat/completions  an OpenAI chat completion, streamed as
                                   server-sent events when the body says
                                   "stream": true (chat.completion.chunk
                                   events, a finish_reason "stop" chunk, a
                                   usage chunk when stream_options.
                                   include_usage, then "data: [DONE]"), else
                                   one chat.completion JSON
        GET  /v1/models            {"object":"list","data":[{"id":"fake-model",...}]}
        GET  /stats                what it saw (below)
        POST /control              change behaviour at run time: a JSON object
                                   with any of "mode", "pace_ms", "tokens",
                                   "embed_mode", "embed_fail_next",
                                   "embed_dim", "embed_pace_ms", and "reset":
                                   true to zero the counters; answers the
                                   settings in force

    The answer is the words "tok1 tok2 ... tokN" (N = tokens, default 5),
    one word per streamed chunk ("tok1", " tok2", ...), with pace_ms
    (default 0) before each; a non-streamed answer waits the same total
    before it is sent. The prompt is ignored.

    Modes:
        ok           answer as above
        fail500      HTTP 500 {"error":{"message":...,"type":"server_error"}}
        fail429      HTTP 429 with Retry-After: 1
        bad_request  HTTP 400, an invalid_request_error ("context length")
        hang         accept the request, then send nothing at all (not even
                     headers) until the client leaves
        malformed    streamed: one good token, then a data line that is not
                     JSON, then the rest; not streamed: a body that is not JSON

    Embeddings have their own settings, so chat and embedding tests do not
    disturb each other:
        embed_mode       the modes above, for POST /v1/embeddings (hang: no
                         answer until the client leaves; malformed: a body
                         that is not JSON)
        embed_fail_next  the next N embedding requests answer HTTP 500
                         whatever embed_mode says (then embed_mode again):
                         "an upstream that fails twice, then succeeds"
        embed_dim        numbers per vector (1..4096, default 8)
        embed_pace_ms    pause before an embedding answer (default 0)
    and their own statistics in /stats: embedding_requests (received),
    embedding_inputs (texts in them), embedding_failed (answered with an
    error status), embedding_max_batch (most texts in one request),
    embedding_disconnects (clients that left first), last_embedding_request
    (the last body).

    GET /stats answers, for POST /v1/chat/completions only:
        requests               requests received (completely read)
        in_progress            requests not finished right now (a request
                               stops counting just before the last byte of
                               its answer goes out, or when its client left)
        max_in_progress        the most ever in progress at once
        completed              answers sent in full
        disconnects            requests whose client went away first
        last_disconnect_ms     when the last one left: CLOCK_MONOTONIC ms,
                               comparable with any process on this host
        last_disconnect_after_ms  how long after its request arrived
        now_ms                 CLOCK_MONOTONIC ms at the time of the answer
        last_request           the last request body (JSON)
        last_authorization     its Authorization header, or null
        mode, pace_ms, tokens, answer   the settings and the full answer text

    A client that leaves is seen at once, also while the fake is silent
    (pacing, or hanging): each request runs on its own thread (MHD's thread
    per connection), and every wait is a poll of the client's socket for a
    hang-up (POLLRDHUP). A write that fails is caught by MHD's completion
    callback, whose termination code says the client left. */
#include <jansson.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define S_DEFAULT_TOKENS    5
#define S_DEFAULT_EMBED_DIM 8
#define S_MAX_EMBED_DIM     4096

//  What the fake does and what it saw (guarded by lock).
static struct {
    pthread_mutex_t lock;
    char mode[32];                    //  behaviour of the next requests
    int64_t pace_ms;                  //  pause before each token
    int64_t tokens;                   //  words in the answer
    int64_t requests;                 //  chat completions received
    int64_t in_progress;              //  not finished yet
    int64_t max_in_progress;          //  high-water mark of in_progress
    int64_t completed;                //  answered in full
    int64_t disconnects;              //  client left before the end
    int64_t last_disconnect_ms;       //  monotonic time of the last one
    int64_t last_disconnect_after_ms; //  its time since the request came
    json_t *last_request;             //  last request body
    char *last_authorization;         //  its Authorization header
    char embed_mode[32];              //  behaviour of the next embedding requests
    int64_t embed_fail_next;          //  embedding requests still to fail with 500
    int64_t embed_dim;                //  numbers per embedding vector
    int64_t embed_pace_ms;            //  pause before an embedding answer
    int64_t embedding_requests;       //  embedding requests received
    int64_t embedding_inputs;         //  texts in them
    int64_t embedding_failed;         //  answered with an error status
    int64_t embedding_max_batch;      //  most texts in one request
    int64_t embedding_disconnects;    //  clients that left before the answer
    json_t *last_embedding_request;   //  last embedding request body
} s_state = {.lock = PTHREAD_MUTEX_INITIALIZER,
             .mode = "ok",
             .tokens = S_DEFAULT_TOKENS,
             .embed_mode = "ok",
             .embed_dim = S_DEFAULT_EMBED_DIM};

static atomic_bool s_stopping;

//  One connection's request.
typedef struct {
    int fd;             //  the client's socket
    char *body;         //  request body
    size_t size;        //  its length
    bool counted;       //  a chat completion, counted in progress
    bool embedding;     //  an embedding request
    bool finished;      //  no longer counted in progress
    bool gone;          //  its disconnect is recorded
    int64_t started;    //  when it was read, monotonic ms
    char mode[32];      //  the mode when it came
    int64_t pace_ms;    //  its pace
    int64_t tokens;     //  its answer length
    bool usage;         //  stream_options.include_usage
    char model[128];    //  the model it asked for
    int phase;          //  streamed: which part comes next
    int64_t next;       //  streamed: next token (0-based)
    char *pending;      //  streamed: bytes produced, not yet handed to MHD
    size_t pending_len; //  their length
    size_t pending_off; //  handed over so far
} s_conn_t;

static int64_t
s_now_ms (void)
{
    struct timespec ts;
    clock_gettime (CLOCK_MONOTONIC, &ts);
    return (int64_t) ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

//  The request is no longer in progress: said before its last byte is
//  sent, so a client that starts another request once it has the whole
//  answer never finds this one still counted.
static void
s_finish (s_conn_t *conn)
{
    if (!conn->counted || conn->finished)
        return;
    conn->finished = true;
    pthread_mutex_lock (&s_state.lock);
    s_state.in_progress--;
    pthread_mutex_unlock (&s_state.lock);
}

static void
s_record_gone (s_conn_t *conn)
{
    if (conn->gone || (!conn->counted && !conn->embedding))
        return;
    conn->gone = true;
    if (conn->embedding) {
        pthread_mutex_lock (&s_state.lock);
        s_state.embedding_disconnects++;
        pthread_mutex_unlock (&s_state.lock);
        return;
    }
    int64_t now = s_now_ms ();
    pthread_mutex_lock (&s_state.lock);
    s_state.disconnects++;
    s_state.last_disconnect_ms = now;
    s_state.last_disconnect_after_ms = now - conn->started;
    pthread_mutex_unlock (&s_state.lock);
    s_finish (conn);
}

//  Wait ms (forever when < 0) watching the client's socket. True when the
//  client hung up (recorded) or the fake is stopping.
static bool
s_wait_gone (s_conn_t *conn, int64_t ms)
{
    int64_t until = ms < 0 ? INT64_MAX : s_now_ms () + ms;
    for (;;) {
        if (atomic_load (&s_stopping))
            return true;
        int64_t left = until == INT64_MAX ? 50 : until - s_now_ms ();
        struct pollfd pfd = {conn->fd, POLLRDHUP, 0};
        int rc = poll (&pfd, 1, (int) (left < 0 ? 0 : left > 50 ? 50 : left));
        if (rc > 0 && (pfd.revents & (POLLRDHUP | POLLHUP | POLLERR))) {
            s_record_gone (conn);
            return true;
        }
        if (until != INT64_MAX && s_now_ms () >= until)
            return false;
    }
}

static char *
s_answer (int64_t tokens)
{
    size_t size = 1;
    for (int64_t i = 1; i <= tokens; i++)
        size += 24;
    char *text = calloc (1, size);
    size_t len = 0;
    for (int64_t i = 1; i <= tokens; i++)
        len += (size_t) snprintf (text + len, size - len, "%stok%lld", i > 1 ? " " : "",
                                  (long long) i);
    return text;
}

static enum MHD_Result
s_reply (struct MHD_Connection *connection, unsigned status, const char *type,
         const char *body, const char *retry_after)
{
    struct MHD_Response *response = MHD_create_response_from_buffer (
        strlen (body), (void *) body, MHD_RESPMEM_MUST_COPY);
    MHD_add_response_header (response, "Content-Type", type);
    if (retry_after)
        MHD_add_response_header (response, "Retry-After", retry_after);
    enum MHD_Result rc = MHD_queue_response (connection, status, response);
    MHD_destroy_response (response);
    return rc;
}

static enum MHD_Result
s_reply_json (struct MHD_Connection *connection, unsigned status, json_t *value,
              const char *retry_after)
{
    char *text = json_dumps (value, JSON_COMPACT);
    json_decref (value);
    enum MHD_Result rc =
        s_reply (connection, status, "application/json", text, retry_after);
    free (text);
    return rc;
}

static json_t *
s_settings_json (void)
{
    char *answer = s_answer (s_state.tokens);
    json_t *json = json_pack (
        "{s:s, s:I, s:I, s:s, s:s, s:I, s:I, s:I}", "mode", s_state.mode, "pace_ms",
        (json_int_t) s_state.pace_ms, "tokens", (json_int_t) s_state.tokens, "answer",
        answer, "embed_mode", s_state.embed_mode, "embed_fail_next",
        (json_int_t) s_state.embed_fail_next, "embed_dim", (json_int_t) s_state.embed_dim,
        "embed_pace_ms", (json_int_t) s_state.embed_pace_ms);
    free (answer);
    return json;
}

static enum MHD_Result
s_stats (struct MHD_Connection *connection)
{
    pthread_mutex_lock (&s_state.lock);
    json_t *json = s_settings_json ();
    json_object_update_new (
        json,
        json_pack ("{s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:O?, s:s?}", "requests",
                   (json_int_t) s_state.requests, "in_progress",
                   (json_int_t) s_state.in_progress, "max_in_progress",
                   (json_int_t) s_state.max_in_progress, "completed",
                   (json_int_t) s_state.completed, "disconnects",
                   (json_int_t) s_state.disconnects, "last_disconnect_ms",
                   (json_int_t) s_state.last_disconnect_ms, "last_disconnect_after_ms",
                   (json_int_t) s_state.last_disconnect_after_ms, "now_ms",
                   (json_int_t) s_now_ms (), "last_request", s_state.last_request,
                   "last_authorization", s_state.last_authorization));
    json_object_update_new (
        json,
        json_pack ("{s:I, s:I, s:I, s:I, s:I, s:O?}", "embedding_requests",
                   (json_int_t) s_state.embedding_requests, "embedding_inputs",
                   (json_int_t) s_state.embedding_inputs, "embedding_failed",
                   (json_int_t) s_state.embedding_failed, "embedding_max_batch",
                   (json_int_t) s_state.embedding_max_batch, "embedding_disconnects",
                   (json_int_t) s_state.embedding_disconnects, "last_embedding_request",
                   s_state.last_embedding_request));
    pthread_mutex_unlock (&s_state.lock);
    return s_reply_json (connection, 200, json, NULL);
}

static bool
s_mode_valid (const char *mode)
{
    static const char *modes[] = {"ok",   "fail500",   "fail429", "bad_request",
                                  "hang", "malformed", NULL};
    for (int i = 0; modes[i]; i++)
        if (!strcmp (mode, modes[i]))
            return true;
    return false;
}

static enum MHD_Result
s_control (struct MHD_Connection *connection, s_conn_t *conn)
{
    json_t *body = json_loadb (conn->body ? conn->body : "", conn->size, 0, NULL);
    if (!json_is_object (body)) {
        json_decref (body);
        return s_reply_json (
            connection, 400,
            json_pack ("{s:s}", "error", "the body is not a JSON object"), NULL);
    }
    json_t *mode = json_object_get (body, "mode");
    json_t *pace = json_object_get (body, "pace_ms");
    json_t *tokens = json_object_get (body, "tokens");
    json_t *embed_mode = json_object_get (body, "embed_mode");
    json_t *embed_fail_next = json_object_get (body, "embed_fail_next");
    json_t *embed_dim = json_object_get (body, "embed_dim");
    json_t *embed_pace = json_object_get (body, "embed_pace_ms");
    if ((mode && (!json_is_string (mode) || !s_mode_valid (json_string_value (mode)))) ||
        (pace && (!json_is_integer (pace) || json_integer_value (pace) < 0)) ||
        (tokens && (!json_is_integer (tokens) || json_integer_value (tokens) < 0 ||
                    json_integer_value (tokens) > 100000)) ||
        (embed_mode && (!json_is_string (embed_mode) ||
                        !s_mode_valid (json_string_value (embed_mode)))) ||
        (embed_fail_next && (!json_is_integer (embed_fail_next) ||
                             json_integer_value (embed_fail_next) < 0)) ||
        (embed_dim &&
         (!json_is_integer (embed_dim) || json_integer_value (embed_dim) < 1 ||
          json_integer_value (embed_dim) > S_MAX_EMBED_DIM)) ||
        (embed_pace &&
         (!json_is_integer (embed_pace) || json_integer_value (embed_pace) < 0))) {
        json_decref (body);
        return s_reply_json (connection, 400,
                             json_pack ("{s:s}", "error",
                                        "bad mode, pace_ms, tokens, embed_mode, "
                                        "embed_fail_next, embed_dim or embed_pace_ms"),
                             NULL);
    }
    pthread_mutex_lock (&s_state.lock);
    if (mode)
        snprintf (s_state.mode, sizeof s_state.mode, "%s", json_string_value (mode));
    if (pace)
        s_state.pace_ms = json_integer_value (pace);
    if (tokens)
        s_state.tokens = json_integer_value (tokens);
    if (embed_mode)
        snprintf (s_state.embed_mode, sizeof s_state.embed_mode, "%s",
                  json_string_value (embed_mode));
    if (embed_fail_next)
        s_state.embed_fail_next = json_integer_value (embed_fail_next);
    if (embed_dim)
        s_state.embed_dim = json_integer_value (embed_dim);
    if (embed_pace)
        s_state.embed_pace_ms = json_integer_value (embed_pace);
    if (json_is_true (json_object_get (body, "reset"))) {
        s_state.embedding_requests = s_state.embedding_inputs = 0;
        s_state.embedding_failed = s_state.embedding_max_batch = 0;
        s_state.embedding_disconnects = 0;
        s_state.requests = s_state.completed = s_state.disconnects = 0;
        s_state.max_in_progress = s_state.in_progress;
        s_state.last_disconnect_ms = s_state.last_disconnect_after_ms = 0;
    }
    json_t *settings = s_settings_json ();
    pthread_mutex_unlock (&s_state.lock);
    json_decref (body);
    return s_reply_json (connection, 200, settings, NULL);
}

//  --- chat completions ---------------------------------------------------------------

static char *
s_chunk (s_conn_t *conn, json_t *delta, const char *finish)
{
    json_t *choice = json_pack ("{s:i, s:o, s:s?}", "index", 0, "delta", delta,
                                "finish_reason", finish);
    if (!finish)
        json_object_set_new (choice, "finish_reason", json_null ());
    json_t *chunk =
        json_pack ("{s:s, s:s, s:I, s:s, s:[o]}", "id", "chatcmpl-fake", "object",
                   "chat.completion.chunk", "created", (json_int_t) time (NULL), "model",
                   conn->model, "choices", choice);
    char *text = json_dumps (chunk, JSON_COMPACT);
    json_decref (chunk);
    size_t size = strlen (text) + 9;
    char *event = malloc (size);
    snprintf (event, size, "data: %s\n\n", text);
    free (text);
    return event;
}

//  The next piece of a streamed answer, or NULL at the end.
static char *
s_next_event (s_conn_t *conn)
{
    for (;;) {
        switch (conn->phase) {
            case 0:
                conn->phase = 1;
                return s_chunk (
                    conn, json_pack ("{s:s, s:s}", "role", "assistant", "content", ""),
                    NULL);
            case 1:
                if (conn->next >= conn->tokens) {
                    conn->phase = 2;
                    continue;
                }
                if (!strcmp (conn->mode, "malformed") && conn->next == 1) {
                    conn->phase = 10;
                    return strdup (
                        "data: {\"choices\":[{\"delta\":{\"content\":\"tok\n\n");
                }
                conn->next++;
                {
                    char token[32];
                    snprintf (token, sizeof token, "%stok%lld", conn->next > 1 ? " " : "",
                              (long long) conn->next);
                    return s_chunk (conn, json_pack ("{s:s}", "content", token), NULL);
                }
            case 10: //  after the malformed line, carry on as if nothing happened
                conn->phase = 1;
                conn->next++;
                continue;
            case 2:
                conn->phase = 3;
                return s_chunk (conn, json_object (), "stop");
            case 3: {
                conn->phase = 4;
                if (!conn->usage)
                    continue;
                json_t *chunk =
                    json_pack ("{s:s, s:s, s:I, s:s, s:[], s:{s:I, s:I, s:I}}", "id",
                               "chatcmpl-fake", "object", "chat.completion.chunk",
                               "created", (json_int_t) time (NULL), "model", conn->model,
                               "choices", "usage", "prompt_tokens", (json_int_t) 7,
                               "completion_tokens", (json_int_t) conn->tokens,
                               "total_tokens", (json_int_t) (7 + conn->tokens));
                char *text = json_dumps (chunk, JSON_COMPACT);
                json_decref (chunk);
                size_t size = strlen (text) + 9;
                char *event = malloc (size);
                snprintf (event, size, "data: %s\n\n", text);
                free (text);
                return event;
            }
            case 4:
                conn->phase = 5;
                return strdup ("data: [DONE]\n\n");
            default:
                return NULL;
        }
    }
}

//  MHD's content reader: the stream, paced, watching for a client that left.
static ssize_t
s_reader (void *cls, uint64_t pos, char *buf, size_t max)
{
    (void) pos;
    s_conn_t *conn = cls;
    if (conn->pending_off == conn->pending_len) {
        free (conn->pending);
        conn->pending = NULL;
        conn->pending_len = conn->pending_off = 0;
        //  The pause comes before each token, not before the other events.
        if (conn->phase == 1 && conn->next < conn->tokens && conn->pace_ms > 0 &&
            s_wait_gone (conn, conn->pace_ms))
            return MHD_CONTENT_READER_END_WITH_ERROR;
        if (atomic_load (&s_stopping))
            return MHD_CONTENT_READER_END_WITH_ERROR;
        conn->pending = s_next_event (conn);
        if (!conn->pending) {
            pthread_mutex_lock (&s_state.lock);
            s_state.completed++;
            pthread_mutex_unlock (&s_state.lock);
            s_finish (conn);
            return MHD_CONTENT_READER_END_OF_STREAM;
        }
        conn->pending_len = strlen (conn->pending);
    }
    size_t n = conn->pending_len - conn->pending_off;
    if (n > max)
        n = max;
    memcpy (buf, conn->pending + conn->pending_off, n);
    conn->pending_off += n;
    return (ssize_t) n;
}

static enum MHD_Result
s_completions (struct MHD_Connection *connection, s_conn_t *conn)
{
    json_t *body = json_loadb (conn->body ? conn->body : "", conn->size, 0, NULL);
    const char *auth =
        MHD_lookup_connection_value (connection, MHD_HEADER_KIND, "Authorization");
    conn->started = s_now_ms ();
    conn->counted = true;
    pthread_mutex_lock (&s_state.lock);
    s_state.requests++;
    if (++s_state.in_progress > s_state.max_in_progress)
        s_state.max_in_progress = s_state.in_progress;
    json_decref (s_state.last_request);
    s_state.last_request = body ? json_incref (body) : json_null ();
    free (s_state.last_authorization);
    s_state.last_authorization = auth ? strdup (auth) : NULL;
    snprintf (conn->mode, sizeof conn->mode, "%s", s_state.mode);
    conn->pace_ms = s_state.pace_ms;
    conn->tokens = s_state.tokens;
    pthread_mutex_unlock (&s_state.lock);

    if (!json_is_object (body)) {
        json_decref (body);
        s_finish (conn);
        return s_reply_json (connection, 400,
                             json_pack ("{s:{s:s, s:s}}", "error", "message",
                                        "the body is not JSON", "type",
                                        "invalid_request_error"),
                             NULL);
    }
    const char *model = json_string_value (json_object_get (body, "model"));
    snprintf (conn->model, sizeof conn->model, "%s", model ? model : "fake-model");
    bool stream = json_is_true (json_object_get (body, "stream"));
    conn->usage = json_is_true (
        json_object_get (json_object_get (body, "stream_options"), "include_usage"));
    json_decref (body);

    if (!strcmp (conn->mode, "hang")) {
        s_wait_gone (conn, -1);
        return MHD_NO; //  close the connection without a word
    }
    if (!strcmp (conn->mode, "fail500")) {
        s_finish (conn);
        return s_reply_json (connection, 500,
                             json_pack ("{s:{s:s, s:s}}", "error", "message",
                                        "The fake upstream failed on purpose.", "type",
                                        "server_error"),
                             NULL);
    }
    if (!strcmp (conn->mode, "fail429")) {
        s_finish (conn);
        return s_reply_json (connection, 429,
                             json_pack ("{s:{s:s, s:s}}", "error", "message",
                                        "Rate limit reached for fake-model.", "type",
                                        "rate_limit_exceeded"),
                             "1");
    }
    if (!strcmp (conn->mode, "bad_request")) {
        s_finish (conn);
        return s_reply_json (
            connection, 400,
            json_pack ("{s:{s:s, s:s, s:s}}", "error", "message",
                       "This model's maximum context length is 8 tokens (fake).", "type",
                       "invalid_request_error", "code", "context_length_exceeded"),
            NULL);
    }
    if (stream) {
        struct MHD_Response *response = MHD_create_response_from_callback (
            MHD_SIZE_UNKNOWN, 4096, s_reader, conn, NULL);
        MHD_add_response_header (response, "Content-Type", "text/event-stream");
        MHD_add_response_header (response, "Cache-Control", "no-cache");
        enum MHD_Result rc = MHD_queue_response (connection, 200, response);
        MHD_destroy_response (response);
        return rc;
    }
    //  Not streamed: think for the whole answer's time, then say it at once.
    if (conn->pace_ms > 0 && s_wait_gone (conn, conn->pace_ms * conn->tokens))
        return MHD_NO;
    if (!strcmp (conn->mode, "malformed")) {
        s_finish (conn);
        return s_reply (connection, 200, "application/json", "{\"choices\": [", NULL);
    }
    char *answer = s_answer (conn->tokens);
    json_t *reply = json_pack (
        "{s:s, s:s, s:I, s:s, s:[{s:i, s:{s:s, s:s}, s:s}], s:{s:I, s:I, s:I}}", "id",
        "chatcmpl-fake", "object", "chat.completion", "created", (json_int_t) time (NULL),
        "model", conn->model, "choices", "index", 0, "message", "role", "assistant",
        "content", answer, "finish_reason", "stop", "usage", "prompt_tokens",
        (json_int_t) 7, "completion_tokens", (json_int_t) conn->tokens, "total_tokens",
        (json_int_t) (7 + conn->tokens));
    free (answer);
    pthread_mutex_lock (&s_state.lock);
    s_state.completed++;
    pthread_mutex_unlock (&s_state.lock);
    s_finish (conn);
    return s_reply_json (connection, 200, reply, NULL);
}

//  --- embeddings ----------------------------------------------------------------------

//  The fake's vector of one text: FNV-1a of the text, stretched by
//  splitmix64 into dim numbers in [-1, 1).
static json_t *
s_embedding (const char *text, size_t size, int64_t dim)
{
    uint64_t hash = 14695981039346656037ull;
    for (size_t i = 0; i < size; i++)
        hash = (hash ^ (unsigned char) text[i]) * 1099511628211ull;
    json_t *vector = json_array ();
    for (int64_t j = 0; j < dim; j++) {
        uint64_t z = (hash += 0x9e3779b97f4a7c15ull);
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
        z ^= z >> 31;
        double value = (double) (z >> 11) / 9007199254740992.0 * 2.0 - 1.0;
        json_array_append_new (vector, json_real (value));
    }
    return vector;
}

static enum MHD_Result
s_embed_error (struct MHD_Connection *connection, unsigned status, const char *message,
               const char *type, const char *retry_after)
{
    pthread_mutex_lock (&s_state.lock);
    s_state.embedding_failed++;
    pthread_mutex_unlock (&s_state.lock);
    return s_reply_json (
        connection, status,
        json_pack ("{s:{s:s, s:s}}", "error", "message", message, "type", type),
        retry_after);
}

static enum MHD_Result
s_embeddings (struct MHD_Connection *connection, s_conn_t *conn)
{
    json_t *body = json_loadb (conn->body ? conn->body : "", conn->size, 0, NULL);
    json_t *input = json_object_get (body, "input");
    size_t count = json_is_array (input) ? json_array_size (input) : input ? 1 : 0;
    conn->embedding = true;
    char mode[32];
    bool fail;
    pthread_mutex_lock (&s_state.lock);
    s_state.embedding_requests++;
    s_state.embedding_inputs += (int64_t) count;
    if ((int64_t) count > s_state.embedding_max_batch)
        s_state.embedding_max_batch = (int64_t) count;
    json_decref (s_state.last_embedding_request);
    s_state.last_embedding_request = body ? json_incref (body) : json_null ();
    snprintf (mode, sizeof mode, "%s", s_state.embed_mode);
    fail = s_state.embed_fail_next > 0;
    if (fail)
        s_state.embed_fail_next--;
    int64_t dim = s_state.embed_dim;
    int64_t pace_ms = s_state.embed_pace_ms;
    pthread_mutex_unlock (&s_state.lock);

    enum MHD_Result rc;
    if (fail) {
        rc = s_embed_error (connection, 500, "The fake upstream failed on purpose.",
                            "server_error", NULL);
        goto done;
    }
    if (!strcmp (mode, "hang")) {
        s_wait_gone (conn, -1);
        rc = MHD_NO;
        goto done;
    }
    if (pace_ms > 0 && s_wait_gone (conn, pace_ms)) {
        rc = MHD_NO;
        goto done;
    }
    if (!strcmp (mode, "fail500")) {
        rc = s_embed_error (connection, 500, "The fake upstream failed on purpose.",
                            "server_error", NULL);
        goto done;
    }
    if (!strcmp (mode, "fail429")) {
        rc = s_embed_error (connection, 429, "Rate limit reached for fake-model.",
                            "rate_limit_exceeded", "1");
        goto done;
    }
    if (!strcmp (mode, "bad_request")) {
        rc = s_embed_error (connection, 400,
                            "This model's maximum context length is 8 tokens (fake).",
                            "invalid_request_error", NULL);
        goto done;
    }
    if (!strcmp (mode, "malformed")) {
        rc = s_reply (connection, 200, "application/json", "{\"data\": [", NULL);
        goto done;
    }
    if (!json_is_object (body) || !count ||
        (json_is_array (input) ? false : !json_is_string (input))) {
        rc = s_embed_error (connection, 400,
                            "'input' must be a string or an array of strings",
                            "invalid_request_error", NULL);
        goto done;
    }
    for (size_t i = 0; i < count; i++) {
        json_t *item = json_is_array (input) ? json_array_get (input, i) : input;
        if (!json_is_string (item)) {
            rc = s_embed_error (connection, 400, "'input' items must be strings",
                                "invalid_request_error", NULL);
            goto done;
        }
    }
    const char *model = json_string_value (json_object_get (body, "model"));
    json_t *data = json_array ();
    int64_t tokens = 0;
    for (size_t i = count; i-- > 0;) { //  reverse order: clients must sort
        json_t *item = json_is_array (input) ? json_array_get (input, i) : input;
        size_t size = json_string_length (item);
        tokens += (int64_t) (size + 3) / 4;
        json_array_append_new (
            data,
            json_pack ("{s:s, s:I, s:o}", "object", "embedding", "index", (json_int_t) i,
                       "embedding", s_embedding (json_string_value (item), size, dim)));
    }
    rc = s_reply_json (connection, 200,
                       json_pack ("{s:s, s:o, s:s, s:{s:I, s:I}}", "object", "list",
                                  "data", data, "model", model ? model : "fake-embed",
                                  "usage", "prompt_tokens", (json_int_t) tokens,
                                  "total_tokens", (json_int_t) tokens),
                       NULL);
done:
    json_decref (body);
    return rc;
}

static enum MHD_Result
s_handler (void *cls, struct MHD_Connection *connection, const char *url,
           const char *method, const char *version, const char *upload_data,
           size_t *upload_data_size, void **con_cls)
{
    (void) cls, (void) version;
    s_conn_t *conn = *con_cls;
    if (!conn) {
        conn = calloc (1, sizeof *conn);
        const union MHD_ConnectionInfo *info =
            MHD_get_connection_info (connection, MHD_CONNECTION_INFO_CONNECTION_FD);
        conn->fd = info ? info->connect_fd : -1;
        *con_cls = conn;
        return MHD_YES;
    }
    if (*upload_data_size) {
        conn->body = realloc (conn->body, conn->size + *upload_data_size + 1);
        memcpy (conn->body + conn->size, upload_data, *upload_data_size);
        conn->size += *upload_data_size;
        conn->body[conn->size] = 0;
        *upload_data_size = 0;
        return MHD_YES;
    }
    if (!strcmp (method, "POST") && !strcmp (url, "/v1/chat/completions"))
        return s_completions (connection, conn);
    if (!strcmp (method, "POST") && !strcmp (url, "/v1/embeddings"))
        return s_embeddings (connection, conn);
    if (!strcmp (method, "GET") && !strcmp (url, "/v1/models"))
        return s_reply_json (connection, 200,
                             json_pack ("{s:s, s:[{s:s, s:s, s:i, s:s}]}", "object",
                                        "list", "data", "id", "fake-model", "object",
                                        "model", "created", 0, "owned_by", "fake_llm"),
                             NULL);
    if (!strcmp (method, "GET") && !strcmp (url, "/stats"))
        return s_stats (connection);
    if (!strcmp (method, "POST") && !strcmp (url, "/control"))
        return s_control (connection, conn);
    return s_reply_json (connection, 404,
                         json_pack ("{s:{s:s, s:s}}", "error", "message", "no such route",
                                    "type", "invalid_request_error"),
                         NULL);
}

//  The end of a request, however it ended: the in-progress count drops, and
//  a termination other than "completed" means the client left.
static void
s_completed (void *cls, struct MHD_Connection *connection, void **con_cls,
             enum MHD_RequestTerminationCode toe)
{
    (void) cls, (void) connection;
    s_conn_t *conn = *con_cls;
    if (!conn)
        return;
    if (toe != MHD_REQUEST_TERMINATED_COMPLETED_OK &&
        toe != MHD_REQUEST_TERMINATED_DAEMON_SHUTDOWN)
        s_record_gone (conn);
    s_finish (conn);
    free (conn->pending);
    free (conn->body);
    free (conn);
    *con_cls = NULL;
}

static void
s_usage (FILE *out)
{
    fprintf (out, "usage: fake_llm [--host ADDR] [--port N] [--mode MODE] [--pace-ms N] "
                  "[--tokens N]\n"
                  "modes: ok fail500 fail429 bad_request hang malformed\n"
                  "routes: POST /v1/chat/completions, POST /v1/embeddings, GET "
                  "/v1/models, GET /stats, POST /control\n");
}

int
main (int argc, char **argv)
{
    const char *host = "127.0.0.1";
    long port = 0;
    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i];
        const char *value = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp (arg, "--help") || !strcmp (arg, "-h")) {
            s_usage (stdout);
            return 0;
        }
        if (!value) {
            s_usage (stderr);
            return 2;
        }
        i++;
        if (!strcmp (arg, "--host"))
            host = value;
        else if (!strcmp (arg, "--port"))
            port = strtol (value, NULL, 10);
        else if (!strcmp (arg, "--mode") && s_mode_valid (value))
            snprintf (s_state.mode, sizeof s_state.mode, "%s", value);
        else if (!strcmp (arg, "--pace-ms"))
            s_state.pace_ms = strtoll (value, NULL, 10);
        else if (!strcmp (arg, "--tokens"))
            s_state.tokens = strtoll (value, NULL, 10);
        else {
            fprintf (stderr, "fake_llm: bad argument %s %s\n", arg, value);
            s_usage (stderr);
            return 2;
        }
    }
    struct sockaddr_in addr = {0};
    addr.sin_family = AF_INET;
    addr.sin_port = htons ((uint16_t) port);
    if (port < 0 || port > 65535 || inet_pton (AF_INET, host, &addr.sin_addr) != 1) {
        fprintf (stderr, "fake_llm: bad --host or --port\n");
        return 2;
    }
    //  Signals go to sigwait below, never to MHD's threads.
    sigset_t signals;
    sigemptyset (&signals);
    sigaddset (&signals, SIGINT);
    sigaddset (&signals, SIGTERM);
    pthread_sigmask (SIG_BLOCK, &signals, NULL);
    signal (SIGPIPE, SIG_IGN);

    struct MHD_Daemon *daemon = MHD_start_daemon (
        //  No MHD_USE_ERROR_LOG: a hang-up is logged there as an error
        //  each time, and hang-ups are what this program is for.
        MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_THREAD_PER_CONNECTION, 0, NULL, NULL,
        s_handler, NULL, MHD_OPTION_SOCK_ADDR, (struct sockaddr *) &addr,
        MHD_OPTION_NOTIFY_COMPLETED, s_completed, NULL,
        MHD_OPTION_LISTENING_ADDRESS_REUSE, (unsigned) 1, MHD_OPTION_END);
    if (!daemon) {
        fprintf (stderr, "fake_llm: cannot listen on %s:%ld\n", host, port);
        return 1;
    }
    const union MHD_DaemonInfo *info =
        MHD_get_daemon_info (daemon, MHD_DAEMON_INFO_BIND_PORT);
    printf ("fake_llm listening on %s:%u\n", host, info ? info->port : (unsigned) port);
    fflush (stdout);
    int signal_number;
    sigwait (&signals, &signal_number);
    atomic_store (&s_stopping, true);
    MHD_stop_daemon (daemon);
    json_decref (s_state.last_request);
    json_decref (s_state.last_embedding_request);
    free (s_state.last_authorization);
    return 0;
}
