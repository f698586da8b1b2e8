/*  chat_openai.c: see chat_openai.h.

    One call is one curl easy handle driven by its own curl_multi, so the
    calling thread (a chat handler) keeps control between reads: it polls
    for at most S_POLL_MS, then checks cancellation and the time limits
    itself. curl_easy_perform would only give us the progress callback,
    which libcurl calls about once a second while the upstream is silent:
    too late for a client that left. */
#include "chat_openai.h"
#include "chat_sse.h"
#include "cm_http.h"
#include "cm_log.h"
#include <curl/curl.h>
#include <jansson.h>
#include <stdarg.h>
#include <time.h>

//  Longest wait inside curl before we look at cancellation and the clock.
#define S_POLL_MS 10
//  Longest SSE line or event, and longest JSON body (an error, or a whole
//  completion from a server that does not stream): beyond, the upstream is
//  broken.
#define S_MAX_EVENT (1u << 20)
#define S_MAX_BODY  (8u << 20)
//  The upstream's own error message is shown up to this many bytes.
#define S_UPSTREAM_MESSAGE 160

typedef struct {
    char *endpoint;                 //  {base_url}/chat/completions
    char *auth;                     //  "Authorization: Bearer <key>", or NULL
    char *model;                    //  default model, or NULL
    int64_t connect_timeout_ms;     //  TCP/TLS set-up limit
    int64_t first_token_timeout_ms; //  call start to first token
    int64_t timeout_ms;             //  the whole call
    cm_http_share_t *share;         //  DNS cache and TLS sessions, shared by calls
} s_openai_t;

//  One call in progress: what curl's callbacks and the poll loop share.
typedef struct {
    s_openai_t *provider;           //  the provider (borrowed)
    const chat_request_t *request;  //  what to complete (borrowed)
    chat_token_fn *on_token;        //  where tokens go
    void *arg;                      //  its argument
    CURL *curl;                     //  the transfer
    chat_sse_t *sse;                //  parser of a streamed answer
    char curl_err[CURL_ERROR_SIZE]; //  libcurl's message for a failed transfer
    long status;                    //  HTTP status, once the body starts
    bool looked;                    //  status and content type read
    bool collect;                   //  the body is kept whole (error, or JSON answer)
    char *body;                     //  that body (NUL-terminated)
    size_t body_size;               //  bytes in body
    bool body_cut;                  //  more came than S_MAX_BODY
    bool done;                      //  [DONE] seen
    bool finished;                  //  a finish_reason seen
    bool first;                     //  a token (or reasoning) arrived
    int64_t delivered;              //  tokens handed to on_token
    bool usage;                     //  the upstream reported usage
    int64_t usage_prompt;           //  its prompt_tokens
    int64_t usage_completion;       //  its completion_tokens
    double started;                 //  call start, seconds (monotonic)
    int64_t started_ms;             //  transfer start, ms (cm_clock_mono_ms)
    double last_token;              //  last token delivered, seconds (0: none)
    bool ended;                     //  result decided by us, not by curl's outcome
    chat_provider_result_t result;  //  how the call ended
    char *err;                      //  the caller's message buffer
    size_t errlen;                  //  its size
} s_call_t;

static const chat_provider_ops_t s_ops;

int
chat_openai_config_check (const chat_openai_config_t *config, char *err, size_t errlen)
{
    assert (config);
    if (cm_http_check_base_url (config->base_url, "LLM_BASE_URL", "LLM_PROVIDER=openai",
                                err, errlen))
        return -1;
    if (config->api_key && strpbrk (config->api_key, "\r\n")) {
        snprintf (err, errlen, "LLM_API_KEY: contains a line break");
        return -1;
    }
    //  The model goes into the JSON body and the logs: no control character.
    for (const char *c = config->model; c && *c; c++)
        if ((unsigned char) *c < 0x20 || *c == 0x7f) {
            snprintf (err, errlen, "LLM_MODEL: contains a control character (byte %zu)",
                      (size_t) (c - config->model) + 1);
            return -1;
        }
    if (config->connect_timeout_ms <= 0 || config->first_token_timeout_ms <= 0 ||
        config->timeout_ms <= 0) {
        snprintf (err, errlen, "%s: must be positive",
                  config->connect_timeout_ms <= 0       ? "LLM_CONNECT_TIMEOUT_MS"
                  : config->first_token_timeout_ms <= 0 ? "LLM_FIRST_TOKEN_TIMEOUT_MS"
                                                        : "LLM_TIMEOUT_MS");
        return -1;
    }
    return 0;
}

char *
chat_openai_endpoint (const char *base_url)
{
    assert (base_url);
    return cm_http_endpoint (base_url, "/chat/completions");
}

chat_provider_t *
chat_openai_new (const chat_openai_config_t *config, char *err, size_t errlen)
{
    assert (config);
    if (chat_openai_config_check (config, err, errlen))
        return NULL;
    cm_http_share_t *share = cm_http_share_new ();
    if (!share) {
        snprintf (err, errlen, "libcurl could not be initialised");
        return NULL;
    }
    s_openai_t *self = cm_calloc (1, sizeof *self);
    self->share = share;
    self->endpoint = chat_openai_endpoint (config->base_url);
    self->auth = cm_http_bearer (config->api_key);
    self->model = config->model && *config->model ? cm_strdup (config->model) : NULL;
    self->connect_timeout_ms = config->connect_timeout_ms;
    self->first_token_timeout_ms = config->first_token_timeout_ms;
    self->timeout_ms = config->timeout_ms;
    return chat_provider_new (&s_ops, self);
}

static void
s_destroy (void *state)
{
    s_openai_t *self = (s_openai_t *) state;
    if (!self)
        return;
    cm_http_share_destroy (&self->share);
    free (self->endpoint);
    free (self->auth);
    free (self->model);
    free (self);
}

//  --- private ---------------------------------------------------------------------

static double
s_seconds (void)
{
    struct timespec ts;
    clock_gettime (CLOCK_MONOTONIC, &ts);
    return (double) ts.tv_sec + (double) ts.tv_nsec / 1e9;
}

//  Decide how the call ends, with the message (format may be NULL).
static void s_end (s_call_t *call, chat_provider_result_t result, const char *format, ...)
    __attribute__ ((format (printf, 3, 4)));

static void
s_end (s_call_t *call, chat_provider_result_t result, const char *format, ...)
{
    if (call->ended)
        return;
    call->ended = true;
    call->result = result;
    if (format && call->err && call->errlen) {
        va_list args;
        va_start (args, format);
        vsnprintf (call->err, call->errlen, format, args);
        va_end (args);
    }
}

//  The request body: messages, model, temperature, stream with usage.
static char *
s_request_body (s_openai_t *self, const chat_request_t *request)
{
    static const char *roles[] = {"system", "user", "assistant"};
    json_t *messages = json_array ();
    for (size_t i = 0; i < request->count; i++) {
        const chat_message_t *message = &request->messages[i];
        json_t *item = json_pack ("{s:s, s:s}", "role", roles[message->role], "content",
                                  message->content ? message->content : "");
        if (!item) { //  not UTF-8: nothing a server could read either
            json_decref (messages);
            return NULL;
        }
        json_array_append_new (messages, item);
    }
    json_t *body = json_pack ("{s:o, s:b, s:{s:b}}", "messages", messages, "stream", 1,
                              "stream_options", "include_usage", 1);
    const char *model = request->model && *request->model ? request->model : self->model;
    if (model)
        json_object_set_new (body, "model", json_string (model));
    if (request->temperature >= 0)
        json_object_set_new (body, "temperature", json_real (request->temperature));
    char *text = json_dumps (body, JSON_COMPACT);
    json_decref (body);
    return text;
}

//  Copy text into out for a message: one line, at most S_UPSTREAM_MESSAGE
//  bytes, whole UTF-8 characters only (anything else becomes '?'), so the
//  message can go into a JSON reply.
static void
s_clean (const char *text, size_t size, char *out, size_t outlen)
{
    assert (outlen > 0);
    size_t limit = outlen - 1 < S_UPSTREAM_MESSAGE ? outlen - 1 : S_UPSTREAM_MESSAGE;
    size_t n = 0, i = 0;
    while (i < size && n < limit) {
        unsigned char c = (unsigned char) text[i];
        if (c < 0x20 || c == 0x7f) {
            if (n && out[n - 1] != ' ')
                out[n++] = ' ';
            i++;
            continue;
        }
        size_t len = c < 0x80             ? 1
                     : (c & 0xE0) == 0xC0 ? 2
                     : (c & 0xF0) == 0xE0 ? 3
                     : (c & 0xF8) == 0xF0 ? 4
                                          : 0;
        bool whole = len > 0 && i + len <= size;
        for (size_t k = 1; whole && k < len; k++)
            whole = ((unsigned char) text[i + k] & 0xC0) == 0x80;
        if (!whole) {
            out[n++] = '?';
            i++;
            continue;
        }
        if (n + len > limit)
            break;
        memcpy (out + n, text + i, len);
        n += len, i += len;
    }
    while (n && out[n - 1] == ' ')
        n--;
    out[n] = 0;
    //  Overlong forms and surrogates pass the shape test above: let jansson,
    //  which will encode the message, have the last word.
    json_t *check = json_stringn (out, n);
    if (!check)
        for (size_t k = 0; k < n; k++)
            if ((unsigned char) out[k] >= 0x80)
                out[k] = '?';
    json_decref (check);
}

//  The message of an OpenAI-style error value: {"message":...}, a string,
//  or the whole value as JSON.
static void
s_error_message (json_t *error, char *out, size_t outlen)
{
    json_t *message = json_is_object (error) ? json_object_get (error, "message") : error;
    if (json_is_string (message)) {
        s_clean (json_string_value (message), json_string_length (message), out, outlen);
        return;
    }
    char *text = json_dumps (error, JSON_COMPACT | JSON_ENCODE_ANY);
    s_clean (text ? text : "", text ? strlen (text) : 0, out, outlen);
    free (text);
}

//  What an error body says: OpenAI's {"error":{"message"}}, or
//  {"error":"..."} (llama.cpp, Ollama), {"message"}, {"detail"} (FastAPI
//  servers), or the text itself.
static void
s_body_message (s_call_t *call, char *out, size_t outlen)
{
    json_t *body = call->body ? json_loadb (call->body, call->body_size, 0, NULL) : NULL;
    json_t *value = NULL;
    if (json_is_object (body)) {
        value = json_object_get (body, "error");
        if (!value)
            value = json_object_get (body, "message");
        if (!value)
            value = json_object_get (body, "detail");
    }
    if (value)
        s_error_message (value, out, outlen);
    else
        s_clean (call->body ? call->body : "", call->body_size, out, outlen);
    if (!*out)
        snprintf (out, outlen, "no message");
    json_decref (body);
}

//  Hand one token over; false when the callback says stop.
static bool
s_deliver (s_call_t *call, const char *token, size_t size)
{
    call->first = true;
    if (call->on_token (token, size, call->arg) == CHAT_TOKEN_STOP) {
        s_end (call, CHAT_PROVIDER_STOPPED, NULL);
        return false;
    }
    call->delivered++;
    call->last_token = s_seconds ();
    return true;
}

static void
s_take_usage (s_call_t *call, json_t *usage)
{
    if (!json_is_object (usage))
        return;
    json_t *prompt = json_object_get (usage, "prompt_tokens");
    json_t *completion = json_object_get (usage, "completion_tokens");
    if (json_is_integer (prompt) && json_is_integer (completion)) {
        call->usage = true;
        call->usage_prompt = json_integer_value (prompt);
        call->usage_completion = json_integer_value (completion);
    }
}

//  An error the upstream reported inside a 200 stream or body. vLLM and
//  others give the HTTP code it stands for; a 4xx (not 429) is the
//  request's fault.
static void
s_end_with_error_value (s_call_t *call, json_t *error)
{
    char message[S_UPSTREAM_MESSAGE + 8];
    s_error_message (error, message, sizeof message);
    json_t *code = json_object_get (error, "code");
    const char *type = json_string_value (json_object_get (error, "type"));
    int64_t status = json_is_integer (code) ? json_integer_value (code) : 0;
    if ((status >= 400 && status < 500 && status != 429 && status != 401 &&
         status != 403 && status != 408) ||
        (type && !strcmp (type, "invalid_request_error")))
        s_end (call, CHAT_PROVIDER_REJECTED, "The LLM provider refused the request: %s",
               message);
    else
        s_end (call, CHAT_PROVIDER_FAILED, "The LLM provider reported an error: %s",
               message);
}

//  One SSE event of a streamed completion.
static int
s_on_event (const char *data, size_t size, void *arg)
{
    s_call_t *call = (s_call_t *) arg;
    if (call->done)
        return 0; //  nothing counts after [DONE]
    if (size == 6 && !memcmp (data, "[DONE]", 6)) {
        call->done = true;
        return 0;
    }
    json_error_t error;
    json_t *chunk = json_loadb (data, size, 0, &error);
    if (!json_is_object (chunk)) {
        char excerpt[48];
        s_clean (data, size < 40 ? size : 40, excerpt, sizeof excerpt);
        s_end (call, CHAT_PROVIDER_FAILED,
               "The LLM provider sent a malformed stream: an event is not a JSON object "
               "(\"%s\")",
               excerpt);
        json_decref (chunk);
        return -1;
    }
    int rc = 0;
    json_t *upstream_error = json_object_get (chunk, "error");
    json_t *choices = json_object_get (chunk, "choices");
    if (upstream_error && !json_is_null (upstream_error)) {
        s_end_with_error_value (call, upstream_error);
        rc = -1;
    } else if (choices && !json_is_array (choices)) {
        s_end (call, CHAT_PROVIDER_FAILED,
               "The LLM provider sent a malformed stream: choices is not an array");
        rc = -1;
    } else {
        json_t *choice = json_array_get (choices, 0);
        json_t *delta = json_object_get (choice, "delta");
        json_t *content = json_object_get (delta, "content");
        json_t *reasoning = json_object_get (delta, "reasoning_content");
        //  A reasoning model's thoughts are not the answer, but they show it
        //  is working: they satisfy the first-token limit.
        if (json_is_string (reasoning) && json_string_length (reasoning))
            call->first = true;
        if (json_is_string (content) && json_string_length (content) &&
            !s_deliver (call, json_string_value (content), json_string_length (content)))
            rc = -1;
        if (json_is_string (json_object_get (choice, "finish_reason")))
            call->finished = true;
        s_take_usage (call, json_object_get (chunk, "usage"));
    }
    json_decref (chunk);
    return rc;
}

//  libcurl's write callback: the response body as it arrives.
static size_t
s_on_data (char *data, size_t size, size_t nmemb, void *arg)
{
    s_call_t *call = (s_call_t *) arg;
    size_t n = size * nmemb;
    if (!call->looked) {
        call->looked = true;
        curl_easy_getinfo (call->curl, CURLINFO_RESPONSE_CODE, &call->status);
        const char *type = NULL;
        curl_easy_getinfo (call->curl, CURLINFO_CONTENT_TYPE, &type);
        //  A 2xx without event-stream (a server that ignored stream:true) is
        //  one chat.completion; anything else is an error to read whole.
        call->collect =
            call->status < 200 || call->status >= 300 || (type && strstr (type, "json"));
    }
    if (call->collect) {
        //  Any body is a sign of life; the first-token limit is for silence.
        call->first = true;
        size_t room = call->body_size < S_MAX_BODY ? S_MAX_BODY - call->body_size : 0;
        size_t take = n < room ? n : room;
        call->body_cut |= take < n;
        call->body = cm_realloc (call->body, call->body_size + take + 1);
        memcpy (call->body + call->body_size, data, take);
        call->body_size += take;
        call->body[call->body_size] = 0;
        return n;
    }
    if (chat_sse_feed (call->sse, data, n)) {
        if (chat_sse_status (call->sse) == CHAT_SSE_TOO_LONG)
            s_end (call, CHAT_PROVIDER_FAILED,
                   "The LLM provider sent a malformed stream: an event longer than %u "
                   "bytes",
                   S_MAX_EVENT);
        return 0; //  abort the transfer
    }
    return n;
}

//  A 2xx JSON body: one whole chat.completion.
static void
s_conclude_json (s_call_t *call)
{
    json_t *body =
        call->body_cut ? NULL : json_loadb (call->body, call->body_size, 0, NULL);
    json_t *error = json_object_get (body, "error");
    json_t *message = json_object_get (
        json_object_get (json_array_get (json_object_get (body, "choices"), 0),
                         "message"),
        "content");
    if (error && !json_is_null (error))
        s_end_with_error_value (call, error);
    else if (!json_is_string (message) && !json_is_null (message))
        s_end (call, CHAT_PROVIDER_FAILED,
               "The LLM provider sent a malformed answer: no choices[0].message.content");
    else {
        s_take_usage (call, json_object_get (body, "usage"));
        size_t size = json_string_length (message);
        if (!size || s_deliver (call, json_string_value (message), size))
            s_end (call, CHAT_PROVIDER_DONE, NULL);
    }
    json_decref (body);
}

//  A non-2xx answer: classify by status for the breaker.
static void
s_conclude_http_error (s_call_t *call)
{
    char message[S_UPSTREAM_MESSAGE + 8];
    s_body_message (call, message, sizeof message);
    char text[S_UPSTREAM_MESSAGE + 160];
    cm_http_fault_t fault = cm_http_describe_status (
        call->status, message, "The LLM provider", "LLM_API_KEY", text, sizeof text);
    s_end (call, fault == CM_HTTP_REQUEST ? CHAT_PROVIDER_REJECTED : CHAT_PROVIDER_FAILED,
           "%s", text);
}

//  The transfer ended by itself with code: what did it bring?
static void
s_conclude (s_call_t *call, CURLcode code)
{
    if (code != CURLE_OK) {
        char text[CURL_ERROR_SIZE + 256];
        cm_http_describe_failure (call->curl, code, call->curl_err, "The LLM provider",
                                  call->provider->connect_timeout_ms,
                                  "LLM_CONNECT_TIMEOUT_MS", text, sizeof text);
        s_end (call, CHAT_PROVIDER_FAILED, "%s", text);
        return;
    }
    if (!call->looked)
        curl_easy_getinfo (call->curl, CURLINFO_RESPONSE_CODE, &call->status);
    if (call->status < 200 || call->status >= 300) {
        s_conclude_http_error (call);
        return;
    }
    if (call->collect) {
        s_conclude_json (call);
        return;
    }
    if (chat_sse_finish (call->sse)) {
        s_end (call, CHAT_PROVIDER_FAILED,
               "The LLM provider sent a malformed stream: an event longer than %u bytes",
               S_MAX_EVENT);
        return;
    }
    if (!call->done && !call->finished)
        s_end (call, CHAT_PROVIDER_FAILED,
               "The LLM provider's stream ended before [DONE] (%zu event(s))",
               chat_sse_events (call->sse));
    else
        s_end (call, CHAT_PROVIDER_DONE, NULL);
}

//  Between reads: has the caller left, or a time limit passed?
static int
s_poll (void *arg)
{
    s_call_t *call = (s_call_t *) arg;
    s_openai_t *self = call->provider;
    const chat_request_t *request = call->request;
    if (call->ended)
        return 1;
    if (request->cancelled && request->cancelled (request->cancel_arg)) {
        s_end (call, CHAT_PROVIDER_STOPPED, NULL);
        return 1;
    }
    int64_t elapsed = cm_clock_mono_ms () - call->started_ms;
    if (elapsed >= self->timeout_ms) {
        s_end (call, CHAT_PROVIDER_FAILED,
               "The LLM provider did not finish within %lld ms (LLM_TIMEOUT_MS)",
               (long long) self->timeout_ms);
        return 1;
    }
    if (!call->first && elapsed >= self->first_token_timeout_ms) {
        s_end (call, CHAT_PROVIDER_FAILED,
               "The LLM provider sent no token within %lld ms "
               "(LLM_FIRST_TOKEN_TIMEOUT_MS)",
               (long long) self->first_token_timeout_ms);
        return 1;
    }
    return 0;
}

//  Run the transfer to its end, watching cancellation and the time limits.
static void
s_perform (s_call_t *call)
{
    call->started_ms = cm_clock_mono_ms ();
    cm_http_outcome_t outcome;
    if (cm_http_perform (call->curl, S_POLL_MS, s_poll, call, &outcome) < 0)
        s_end (call, CHAT_PROVIDER_FAILED, "libcurl failed: %s",
               curl_multi_strerror (outcome.multi));
    if (!call->ended)
        s_conclude (call, outcome.code);
}

static void
s_metrics (s_call_t *call, chat_metrics_t *metrics)
{
    const chat_request_t *request = call->request;
    if (call->usage)
        metrics->prompt_tokens = call->usage_prompt;
    else
        for (size_t i = 0; i < request->count; i++)
            if (request->messages[i].content)
                metrics->prompt_tokens +=
                    chat_provider_count_tokens (request->messages[i].content);
    //  The upstream's count of a whole answer; what was delivered otherwise.
    metrics->completion_tokens = call->usage && call->result == CHAT_PROVIDER_DONE
                                     ? call->usage_completion
                                     : call->delivered;
    metrics->total_tokens = metrics->prompt_tokens + metrics->completion_tokens;
    double end = call->last_token > 0 ? call->last_token : s_seconds ();
    metrics->duration = end > call->started ? end - call->started : 0;
    metrics->output_tps = metrics->duration > 0
                              ? (double) metrics->completion_tokens / metrics->duration
                              : 0;
}

static chat_provider_result_t
s_stream (void *state, const chat_request_t *request, chat_token_fn *on_token, void *arg,
          chat_metrics_t *metrics, char *err, size_t errlen)
{
    s_openai_t *self = (s_openai_t *) state;
    s_call_t call = {
        .provider = self,
        .request = request,
        .on_token = on_token,
        .arg = arg,
        .err = err,
        .errlen = errlen,
        .started = s_seconds (),
    };
    if (err && errlen)
        *err = 0;
    char *body = s_request_body (self, request);
    if (!body) {
        s_end (&call, CHAT_PROVIDER_REJECTED, "The prompt is not valid UTF-8.");
        s_metrics (&call, metrics);
        return call.result;
    }
    call.sse = chat_sse_new (s_on_event, &call, S_MAX_EVENT);
    struct curl_slist *headers = cm_http_json_headers ("text/event-stream", self->auth);
    CURL *curl = call.curl = cm_http_post_new (&(cm_http_post_t){
        .url = self->endpoint,
        .headers = headers,
        .body = body,
        .user_agent = "llmrt-chatd/" LLMRT_VERSION,
        .on_data = s_on_data,
        .arg = &call,
        .curl_err = call.curl_err,
        .connect_timeout_ms = self->connect_timeout_ms,
        .share = self->share,
    });

    s_perform (&call);
    if (call.result == CHAT_PROVIDER_FAILED || call.result == CHAT_PROVIDER_REJECTED)
        cm_debug ("openai %s: %s", self->endpoint, err ? err : "");
    s_metrics (&call, metrics);
    curl_easy_cleanup (curl);
    curl_slist_free_all (headers);
    chat_sse_destroy (&call.sse);
    free (call.body);
    free (body);
    return call.result;
}

//  complete(): the same streamed call, collected.
typedef struct {
    char *text;  //  the answer so far
    size_t size; //  bytes in text
} s_collect_t;

static chat_token_action_t
s_collect (const char *token, size_t size, void *arg)
{
    s_collect_t *collect = (s_collect_t *) arg;
    collect->text = cm_realloc (collect->text, collect->size + size + 1);
    memcpy (collect->text + collect->size, token, size);
    collect->size += size;
    collect->text[collect->size] = 0;
    return CHAT_TOKEN_CONTINUE;
}

static chat_provider_result_t
s_complete (void *state, const chat_request_t *request, char **text_p,
            chat_metrics_t *metrics, char *err, size_t errlen)
{
    s_collect_t collect = {NULL, 0};
    chat_provider_result_t result =
        s_stream (state, request, s_collect, &collect, metrics, err, errlen);
    if (result == CHAT_PROVIDER_DONE)
        *text_p = collect.text ? collect.text : cm_strdup ("");
    else
        free (collect.text);
    return result;
}

static const chat_provider_ops_t s_ops = {
    "openai",
    s_complete,
    s_stream,
    s_destroy,
};
