/*  agent_service.c: see agent_service.h. */
#include "agent_service.h"
#include "cm_utf8.h"
#include "agent_flow.h"
#include "agent_html.h"
#include "agent_http.h"
#include "agent_origins.h"
#include "cm_log.h"
#include "cm_storage.h"
#include "cm_storage_flows.h"
#include <curl/curl.h>

struct agent_service_s {
    cm_storage_pool_t *pool;   //  database connections lent to handler threads
    chat_provider_t *provider; //  llmInstruction's LLM, shared by all handlers
    cm_breaker_t *breaker;     //  the `agent` circuit: the LLM provider (thread-safe)
    agent_origins_t *origins;  //  a circuit per origin steps call (thread-safe)
    char *allowlist;           //  AGENT_HTTP_ALLOWLIST (NULL: none)
    size_t max_bytes;          //  AGENT_HTTP_MAX_BYTES
    int64_t step_timeout_ms;   //  AGENT_STEP_TIMEOUT_MS
};

//  Why a step (so the run) failed: what the `agent` circuit hears of it.
//  Only the LLM provider, which every flow shares, counts against it; an
//  origin a step called is counted by its own circuit (agent_origins), in
//  the step, so one flow's dead URL cannot pause every flow.
typedef enum {
    S_FAIL_NONE = 0,  //  no failure
    S_FAIL_FLOW,      //  the flow's own fault (4xx, refused, too large): not counted
    S_FAIL_ORIGIN,    //  an origin failed or its circuit is open: that origin's
                      //  circuit counted it, the agent circuit does not
    S_FAIL_LLM,       //  the LLM provider failed (network, timeout, 5xx): counted
    S_FAIL_CANCELLED, //  the client left or the deadline passed: not counted
} s_fail_t;

//  One run being served.
typedef struct {
    agent_service_t *service;
    cm_call_t *call;
    bool streaming;
    json_t *flow;       //  the flow row
    json_t *vars;       //  the variables so far
    json_t *results;    //  [{index, type, success, output | error}]
    json_t *direct;     //  directOutput's value, or NULL
    int64_t step_until; //  monotonic ms when the step in flight must end
    const char *what;   //  the step in flight, "steps[1] (apiCall)"
    bool llm_answered;  //  an llmInstruction step got the LLM's answer
    s_fail_t fail;
    char error[1024];
} s_run_t;

static void s_flow_create (cm_call_t *call, void *arg);
static void s_flow_list (cm_call_t *call, void *arg);
static void s_flow_get (cm_call_t *call, void *arg);
static void s_flow_update (cm_call_t *call, void *arg);
static void s_flow_delete (cm_call_t *call, void *arg);
static void s_flow_toggle (cm_call_t *call, void *arg);
static void s_flow_run (cm_call_t *call, void *arg);

static const cm_route_t s_routes[] = {
    //  Quick: managing flows never waits behind runs.
    {"POST", "/api/v1/agent-flows", s_flow_create, true},
    {"GET", "/api/v1/agent-flows", s_flow_list, true},
    {"GET", "/api/v1/agent-flows/{uuid}", s_flow_get, true},
    {"PUT", "/api/v1/agent-flows/{uuid}", s_flow_update, true},
    {"DELETE", "/api/v1/agent-flows/{uuid}", s_flow_delete, true},
    {"POST", "/api/v1/agent-flows/{uuid}/toggle", s_flow_toggle, true},
    {"POST", "/api/v1/agent-flows/{uuid}/run", s_flow_run, false},
    {NULL, NULL, NULL, false},
};

agent_service_t *
agent_service_new (const char *storage_dir, const agent_service_config_t *config,
                   chat_provider_t **provider_p, cm_breaker_t **breaker_p, char *err,
                   size_t errlen)
{
    assert (storage_dir && config && config->origin_breaker);
    assert (provider_p && *provider_p);
    assert (breaker_p && *breaker_p);
    cm_storage_pool_t *pool = cm_storage_pool_new (storage_dir, err, errlen);
    if (!pool) {
        chat_provider_destroy (provider_p);
        cm_breaker_destroy (breaker_p);
        return NULL;
    }
    agent_service_t *self = cm_calloc (1, sizeof *self);
    self->pool = pool;
    self->provider = *provider_p;
    *provider_p = NULL;
    self->breaker = *breaker_p;
    *breaker_p = NULL;
    self->origins = agent_origins_new (config->origin_breaker, 0);
    self->allowlist =
        config->allowlist && *config->allowlist ? cm_strdup (config->allowlist) : NULL;
    self->max_bytes = (size_t) config->max_bytes;
    self->step_timeout_ms = config->step_timeout_ms;
    agent_html_init ();
    return self;
}

void
agent_service_destroy (agent_service_t **self_p)
{
    assert (self_p);
    agent_service_t *self = *self_p;
    if (!self)
        return;
    cm_storage_pool_destroy (&self->pool);
    chat_provider_destroy (&self->provider);
    cm_breaker_destroy (&self->breaker);
    agent_origins_destroy (&self->origins);
    free (self->allowlist);
    free (self);
    *self_p = NULL;
}

cm_breaker_t *
agent_service_breaker (agent_service_t *self)
{
    assert (self);
    return self->breaker;
}

agent_origins_t *
agent_service_origins (agent_service_t *self)
{
    assert (self);
    return self->origins;
}

const cm_route_t *
agent_service_routes (void)
{
    return s_routes;
}

//  --- helpers ------------------------------------------------------------------------

static void
s_reply_storage_error (cm_call_t *call)
{
    cm_call_reply_error (call, 500, "the database failed; see agentd's log");
}

static void
s_reply_not_found (cm_call_t *call, const char *uuid)
{
    char message[160];
    snprintf (message, sizeof message, "agent flow '%.64s' not found", uuid);
    cm_utf8_fix (message);
    cm_call_reply_error (call, 404, message);
}

//  A connection, or NULL after answering 500.
static cm_storage_t *
s_storage (agent_service_t *self, cm_call_t *call)
{
    cm_storage_t *storage = cm_storage_pool_acquire (self->pool);
    if (!storage)
        s_reply_storage_error (call);
    return storage;
}

//  Validate a flow's fields; answer 400 and return -1 when they are wrong.
static int
s_check_fields (cm_call_t *call, json_t *name, json_t *description, json_t *active,
                json_t *steps)
{
    char err[512];
    if (!json_is_string (name) || !json_string_length (name))
        snprintf (err, sizeof err, "name is required (a non-empty string)");
    else if (description && !json_is_null (description) && !json_is_string (description))
        snprintf (err, sizeof err, "description must be a string");
    else if (active && !json_is_boolean (active))
        snprintf (err, sizeof err, "active must be true or false");
    else if (!steps)
        snprintf (err, sizeof err, "steps is required (an array of {type, config})");
    else if (agent_flow_validate (steps, err, sizeof err) == 0)
        return 0;
    cm_call_reply_error (call, 400, err);
    return -1;
}

static void
s_reply_flow (cm_call_t *call, cm_storage_t *storage, cm_storage_status_t status,
              json_t *flow, const char *uuid)
{
    if (status == CM_STORAGE_OK)
        cm_call_reply_json (call, 200, json_pack ("{s:o}", "flow", flow));
    else if (status == CM_STORAGE_NOT_FOUND)
        s_reply_not_found (call, uuid);
    else if (status == CM_STORAGE_INVALID)
        cm_call_reply_error (call, 400, cm_storage_errmsg (storage));
    else
        s_reply_storage_error (call);
}

//  --- CRUD ---------------------------------------------------------------------------

static void
s_flow_create (cm_call_t *call, void *arg)
{
    agent_service_t *self = (agent_service_t *) arg;
    json_t *body = cm_call_json (call);
    json_t *name = json_object_get (body, "name");
    json_t *description = json_object_get (body, "description");
    json_t *active = json_object_get (body, "active");
    json_t *steps = json_object_get (body, "steps");
    if (s_check_fields (call, name, description, active, steps))
        return;
    cm_storage_t *storage = s_storage (self, call);
    if (!storage)
        return;
    json_t *flow = NULL;
    cm_storage_status_t status = cm_storage_flow_create (
        storage, json_string_value (name), json_string_value (description),
        active ? json_is_true (active) : true, steps, &flow);
    s_reply_flow (call, storage, status, flow, "");
    cm_storage_pool_release (self->pool, &storage);
}

static void
s_flow_list (cm_call_t *call, void *arg)
{
    agent_service_t *self = (agent_service_t *) arg;
    cm_storage_t *storage = s_storage (self, call);
    if (!storage)
        return;
    json_t *flows = NULL;
    if (cm_storage_flow_list (storage, &flows) == CM_STORAGE_OK)
        cm_call_reply_json (call, 200, json_pack ("{s:o}", "flows", flows));
    else
        s_reply_storage_error (call);
    cm_storage_pool_release (self->pool, &storage);
}

static void
s_flow_get (cm_call_t *call, void *arg)
{
    agent_service_t *self = (agent_service_t *) arg;
    const char *uuid = cm_call_param (call, "uuid");
    cm_storage_t *storage = s_storage (self, call);
    if (!storage)
        return;
    json_t *flow = NULL;
    cm_storage_status_t status = cm_storage_flow_get (storage, uuid, &flow);
    s_reply_flow (call, storage, status, flow, uuid);
    cm_storage_pool_release (self->pool, &storage);
}

//  End a read-merge-write of a flow in its transaction (cm_storage_begin):
//  commit what was written, or roll back, and answer.
static void
s_flow_written (cm_call_t *call, cm_storage_t *storage, cm_storage_status_t status,
                json_t *flow, const char *uuid)
{
    if (status == CM_STORAGE_OK)
        status = cm_storage_commit (storage);
    else
        cm_storage_rollback (storage);
    if (status != CM_STORAGE_OK) {
        json_decref (flow);
        flow = NULL;
    }
    s_reply_flow (call, storage, status, flow, uuid);
}

//  PUT: the fields given replace the stored ones; the result is checked as a
//  whole. The read and the write are one transaction: two PUTs of the same
//  flow at once (one its name, one its description) each keep their change
//  (a concurrency audit: one was lost in 41 of 100 such pairs).
static void
s_flow_update (cm_call_t *call, void *arg)
{
    agent_service_t *self = (agent_service_t *) arg;
    const char *uuid = cm_call_param (call, "uuid");
    cm_storage_t *storage = s_storage (self, call);
    if (!storage)
        return;
    json_t *flow = NULL;
    cm_storage_status_t status = cm_storage_begin (storage);
    if (status == CM_STORAGE_OK)
        status = cm_storage_flow_get (storage, uuid, &flow);
    if (status != CM_STORAGE_OK) {
        s_flow_written (call, storage, status, NULL, uuid);
        cm_storage_pool_release (self->pool, &storage);
        return;
    }
    json_t *body = cm_call_json (call);
    json_t *merged = json_deep_copy (flow);
    const char *keys[] = {"name", "description", "active", "steps", NULL};
    for (size_t i = 0; keys[i]; i++) {
        json_t *value = json_object_get (body, keys[i]);
        if (value)
            json_object_set (merged, keys[i], value);
    }
    json_t *name = json_object_get (merged, "name");
    json_t *description = json_object_get (merged, "description");
    json_t *active = json_object_get (merged, "active");
    json_t *steps = json_object_get (merged, "steps");
    if (!s_check_fields (call, name, description, active, steps)) {
        json_t *updated = NULL;
        status = cm_storage_flow_update (storage, uuid, json_string_value (name),
                                         json_string_value (description),
                                         json_is_true (active), steps, &updated);
        s_flow_written (call, storage, status, updated, uuid);
    } else
        cm_storage_rollback (storage);
    json_decref (merged);
    json_decref (flow);
    cm_storage_pool_release (self->pool, &storage);
}

static void
s_flow_delete (cm_call_t *call, void *arg)
{
    agent_service_t *self = (agent_service_t *) arg;
    const char *uuid = cm_call_param (call, "uuid");
    cm_storage_t *storage = s_storage (self, call);
    if (!storage)
        return;
    cm_storage_status_t status = cm_storage_flow_delete (storage, uuid);
    if (status == CM_STORAGE_OK)
        cm_call_reply_json (call, 200, json_pack ("{s:b}", "success", 1));
    else
        s_reply_flow (call, storage, status, NULL, uuid);
    cm_storage_pool_release (self->pool, &storage);
}

//  Toggle: set `active`, or flip it when the body names none. The read and
//  the write are one transaction: two flips at once are two flips (an
//  audit: one was lost in 31 of 100 pairs), and a flow disabled while it is
//  edited stays disabled.
static void
s_flow_toggle (cm_call_t *call, void *arg)
{
    agent_service_t *self = (agent_service_t *) arg;
    const char *uuid = cm_call_param (call, "uuid");
    json_t *active = json_object_get (cm_call_json (call), "active");
    if (active && !json_is_boolean (active)) {
        cm_call_reply_error (call, 400, "active must be true or false");
        return;
    }
    cm_storage_t *storage = s_storage (self, call);
    if (!storage)
        return;
    json_t *flow = NULL;
    cm_storage_status_t status = cm_storage_begin (storage);
    if (status == CM_STORAGE_OK)
        status = cm_storage_flow_get (storage, uuid, &flow);
    if (status == CM_STORAGE_OK) {
        bool value = active ? json_is_true (active)
                            : !json_is_true (json_object_get (flow, "active"));
        json_decref (flow);
        flow = NULL;
        status = cm_storage_flow_set_active (storage, uuid, value, &flow);
    }
    s_flow_written (call, storage, status, flow, uuid);
    cm_storage_pool_release (self->pool, &storage);
}

//  --- the executor -------------------------------------------------------------------

//  The run must stop: the client left, the deadline passed, or the step's
//  own time is up.
static bool
s_cancelled (void *arg)
{
    s_run_t *run = (s_run_t *) arg;
    return cm_call_cancelled (run->call) || cm_clock_mono_ms () >= run->step_until;
}

//  Only the client or the deadline (not the step's timeout).
static bool
s_call_cancelled (void *arg)
{
    return cm_call_cancelled (((s_run_t *) arg)->call);
}

static void s_fail (s_run_t *run, s_fail_t fail, const char *format, ...)
    __attribute__ ((format (printf, 3, 4)));
static void
s_fail (s_run_t *run, s_fail_t fail, const char *format, ...)
{
    run->fail = fail;
    va_list args;
    va_start (args, format);
    vsnprintf (run->error, sizeof run->error, format, args);
    va_end (args);
    cm_utf8_fix (run->error);
}

//  A substituted string field of config ("" when absent). When the
//  substitution is too long the step fails (run->fail set) and the field is
//  "".
static char *
s_field (s_run_t *run, json_t *config, const char *name)
{
    json_t *value = json_object_get (config, name);
    char *text = NULL;
    if (json_is_string (value))
        text = agent_flow_subst (json_string_value (value), run->vars);
    else if (json_is_object (value) || json_is_array (value)) {
        char *dumped = json_dumps (value, AGENT_FLOW_JSON);
        text = agent_flow_subst (dumped ? dumped : "", run->vars);
        free (dumped);
    } else
        return cm_strdup ("");
    if (!text) {
        if (!run->fail)
            s_fail (run, S_FAIL_FLOW,
                    "%s: config.%s is longer than %d bytes once its variables are "
                    "substituted",
                    run->what, name, AGENT_FLOW_MAX_TEXT);
        text = cm_strdup ("");
    }
    return text;
}

//  key=value pairs, percent-encoded.
static char *
s_form (s_run_t *run, json_t *pairs)
{
    size_t size = 0;
    char *text = cm_strdup ("");
    size_t i;
    json_t *pair;
    CURL *curl = curl_easy_init ();
    json_array_foreach (pairs, i, pair)
    {
        const char *key = json_string_value (json_object_get (pair, "key"));
        if (!key || !*key)
            continue;
        char *value = s_field (run, pair, "value");
        char *k = curl_easy_escape (curl, key, 0);
        char *v = curl_easy_escape (curl, value, 0);
        size_t add = strlen (k) + strlen (v) + 2;
        text = cm_realloc (text, size + add + 1);
        size +=
            (size_t) snprintf (text + size, add + 1, "%s%s=%s", size ? "&" : "", k, v);
        curl_free (k);
        curl_free (v);
        free (value);
    }
    curl_easy_cleanup (curl);
    return text;
}

//  Map an HTTP call's outcome to a failure; true when the call gave a 2xx.
static bool
s_http_outcome (s_run_t *run, const char *what, agent_http_result_t result,
                const agent_http_response_t *response, const char *err)
{
    switch (result) {
        case AGENT_HTTP_OK:
            break;
        case AGENT_HTTP_REFUSED:
        case AGENT_HTTP_TOO_LARGE:
            s_fail (run, S_FAIL_FLOW, "%s: %s", what, err);
            return false;
        case AGENT_HTTP_CANCELLED:
            if (cm_call_cancelled (run->call))
                s_fail (run, S_FAIL_CANCELLED,
                        "%s: the run was cancelled (client gone or "
                        "deadline passed)",
                        what);
            else
                s_fail (run, S_FAIL_ORIGIN, "%s: %s", what, err);
            return false;
        case AGENT_HTTP_TIMEOUT:
            if (cm_call_cancelled (run->call))
                s_fail (run, S_FAIL_CANCELLED, "%s: the request's deadline passed", what);
            else
                s_fail (run, S_FAIL_ORIGIN, "%s: %s (AGENT_STEP_TIMEOUT_MS)", what, err);
            return false;
        case AGENT_HTTP_FAILED:
            s_fail (run, S_FAIL_ORIGIN, "%s: %s", what, err);
            return false;
    }
    if (response->status >= 200 && response->status < 300)
        return true;
    s_fail (run, response->status >= 500 ? S_FAIL_ORIGIN : S_FAIL_FLOW,
            "%s: %s answered HTTP %ld: %.300s", what, response->url, response->status,
            response->body ? response->body : "");
    return false;
}

//  Tell the origin's circuit how its call ended: a network error, DNS
//  failure, timeout or 5xx is its failure; any other status is a success
//  (it answered, even to refuse the flow's request: a 4xx is the flow's
//  fault, and counting it against the origin would let one bad flow open
//  the circuit of an origin other flows use well). A cancelled call, a
//  refused address or a body too large says nothing about the origin, nor
//  does a timeout that the request's deadline made shorter than
//  AGENT_STEP_TIMEOUT_MS (the run was out of time, not the origin slow).
static void
s_origin_outcome (s_run_t *run, const agent_origins_ticket_t *ticket,
                  const agent_http_request_t *request, agent_http_result_t result,
                  const agent_http_response_t *response)
{
    agent_origins_t *origins = run->service->origins;
    int64_t now = cm_clock_mono_ms ();
    bool timed_out = result == AGENT_HTTP_TIMEOUT && !cm_call_cancelled (run->call) &&
                     request->timeout_ms >= run->service->step_timeout_ms;
    bool failed = result == AGENT_HTTP_FAILED || timed_out ||
                  (result == AGENT_HTTP_OK && response->status >= 500);
    if (failed)
        agent_origins_failure (origins, ticket, now);
    else if (result == AGENT_HTTP_OK)
        agent_origins_success (origins, ticket, now);
    else
        agent_origins_release (origins, ticket);
}

//  Has the flow an llmInstruction step (so a run may call the provider)?
static bool
s_asks_llm (const json_t *steps)
{
    size_t i;
    const json_t *step;
    json_array_foreach (steps, i, step)
    {
        const char *type = json_string_value (json_object_get (step, "type"));
        if (type && !strcmp (type, "llmInstruction"))
            return true;
    }
    return false;
}

//  Make the step's call through its origin's circuit; true when it answered
//  2xx (response filled), else the step failed (run->fail set). A step
//  whose fields already failed calls nothing. While the origin's circuit
//  is open nothing is sent: the step fails at once, naming the origin.
static bool
s_http (s_run_t *run, const char *what, const agent_http_request_t *request,
        agent_http_response_t *response)
{
    if (run->fail)
        return false;
    agent_origins_ticket_t ticket;
    if (agent_origins_acquire (run->service->origins, request->url, cm_clock_mono_ms (),
                               &ticket) == AGENT_ORIGINS_REJECTED) {
        s_fail (run, S_FAIL_ORIGIN,
                "%s: the circuit for %s is open after %lld consecutive failures; retry "
                "after %lld s",
                what, ticket.origin, (long long) ticket.failures,
                (long long) ((ticket.retry_after_ms + 999) / 1000));
        return false;
    }
    char err[512];
    agent_http_result_t result = agent_http_call (request, response, err, sizeof err);
    s_origin_outcome (run, &ticket, request, result, response);
    return s_http_outcome (run, what, result, response, err);
}

//  How long the step in flight may take: the step limit, cut by the
//  request's deadline.
static int64_t
s_step_timeout (s_run_t *run)
{
    int64_t timeout = run->service->step_timeout_ms;
    int64_t deadline = cm_call_deadline (run->call);
    if (deadline > 0) {
        int64_t left = deadline - cm_clock_wall_ms ();
        if (left < timeout)
            timeout = left > 1 ? left : 1;
    }
    return timeout;
}

static json_t *
s_api_call (s_run_t *run, json_t *config, const char *what)
{
    agent_service_t *self = run->service;
    json_t *output = NULL;
    char *url = s_field (run, config, "url");
    const char *method = json_string_value (json_object_get (config, "method"));
    method = method ? method : "GET";
    const char *body_type = json_string_value (json_object_get (config, "bodyType"));
    body_type = body_type ? body_type : "json";

    json_t *pairs = json_object_get (config, "headers");
    size_t count = json_array_size (pairs);
    char **headers = cm_calloc (count + 2, sizeof *headers);
    size_t used = 0;
    bool has_type = false;
    for (size_t i = 0; i < count; i++) {
        json_t *pair = json_array_get (pairs, i);
        const char *key = json_string_value (json_object_get (pair, "key"));
        if (!key || !*key)
            continue;
        char *value = s_field (run, pair, "value");
        size_t size = strlen (key) + strlen (value) + 3;
        headers[used] = cm_malloc (size);
        snprintf (headers[used++], size, "%s: %s", key, value);
        free (value);
        has_type |= !strcasecmp (key, "content-type");
    }
    char *body = NULL;
    if (strcmp (method, "GET") && strcmp (method, "HEAD")) {
        if (!strcmp (body_type, "form") &&
            json_is_array (json_object_get (config, "formData")))
            body = s_form (run, json_object_get (config, "formData"));
        else if (json_object_get (config, "body"))
            body = s_field (run, config, "body");
        if (body && !has_type)
            headers[used++] = cm_strdup (
                !strcmp (body_type, "form")
                    ? "Content-Type: application/x-www-form-urlencoded"
                : !strcmp (body_type, "text") ? "Content-Type: text/plain; charset=utf-8"
                                              : "Content-Type: application/json");
    }
    agent_http_request_t request = {
        .method = method,
        .url = url,
        .headers = (const char *const *) headers,
        .body = body,
        .body_size = body ? strlen (body) : 0,
        .allowlist = self->allowlist,
        .max_bytes = self->max_bytes,
        .timeout_ms = s_step_timeout (run),
        .cancelled = s_call_cancelled,
        .cancel_arg = run,
    };
    agent_http_response_t response = {0};
    if (s_http (run, what, &request, &response)) {
        if (strstr (response.content_type, "json"))
            output = json_loadb (response.body, response.size, JSON_DECODE_ANY, NULL);
        if (!output)
            output = json_stringn (response.body, response.size);
        if (!output)
            output = json_string ("");
    }
    agent_http_response_free (&response);
    for (size_t i = 0; i < used; i++)
        free (headers[i]);
    free (headers);
    free (body);
    free (url);
    return output;
}

static json_t *
s_web_scraping (s_run_t *run, json_t *config, const char *what)
{
    agent_service_t *self = run->service;
    json_t *output = NULL;
    char *url = s_field (run, config, "url");
    char *selector = s_field (run, config, "querySelector");
    const char *capture = json_string_value (json_object_get (config, "captureAs"));
    bool as_html = capture && !strcmp (capture, "html");
    const char *headers[] = {"Accept: text/html,application/xhtml+xml;q=0.9,*/*;q=0.5",
                             NULL};
    agent_http_request_t request = {
        .method = "GET",
        .url = url,
        .headers = headers,
        .allowlist = self->allowlist,
        .max_bytes = self->max_bytes,
        .timeout_ms = s_step_timeout (run),
        .cancelled = s_call_cancelled,
        .cancel_arg = run,
    };
    agent_http_response_t response = {0};
    if (s_http (run, what, &request, &response)) {
        char err[512];
        char *text = agent_html_extract (response.body, response.size, selector, as_html,
                                         err, sizeof err);
        if (text)
            output = json_string (text);
        if (!output)
            s_fail (run, S_FAIL_FLOW, "%s: %s", what,
                    text ? "the page is not valid UTF-8 text" : err);
        free (text);
    }
    agent_http_response_free (&response);
    free (selector);
    free (url);
    return output;
}

static json_t *
s_llm_instruction (s_run_t *run, json_t *config, const char *what)
{
    char *instruction = s_field (run, config, "instruction");
    if (run->fail) {
        free (instruction);
        return NULL;
    }
    chat_message_t message = {CHAT_ROLE_USER, instruction};
    run->step_until = cm_clock_mono_ms () + s_step_timeout (run);
    chat_request_t request = {
        .messages = &message,
        .count = 1,
        .temperature = -1,
        .cancelled = s_cancelled,
        .cancel_arg = run,
    };
    char *text = NULL, err[512] = "";
    chat_metrics_t metrics;
    chat_provider_result_t result = chat_provider_complete (
        run->service->provider, &request, &text, &metrics, err, sizeof err);
    json_t *output = NULL;
    if (result == CHAT_PROVIDER_DONE) {
        run->llm_answered = true;
        output = json_string (text ? text : "");
    } else if (result == CHAT_PROVIDER_REJECTED)
        s_fail (run, S_FAIL_FLOW, "%s: the LLM refused the instruction: %s", what, err);
    else if (result == CHAT_PROVIDER_FAILED)
        s_fail (run, S_FAIL_LLM, "%s: the LLM provider failed: %s", what, err);
    else if (cm_call_cancelled (run->call))
        s_fail (run, S_FAIL_CANCELLED, "%s: the run was cancelled", what);
    else
        s_fail (run, S_FAIL_LLM, "%s: the LLM did not answer within %lld ms", what,
                (long long) run->service->step_timeout_ms);
    if (result == CHAT_PROVIDER_DONE && !output)
        s_fail (run, S_FAIL_LLM, "%s: the LLM's answer is not valid UTF-8", what);
    free (text);
    free (instruction);
    return output;
}

static void
s_event (s_run_t *run, json_t *event)
{
    if (run->streaming && event && !cm_call_cancelled (run->call))
        cm_call_sse (run->call, event);
    else
        json_decref (event);
}

//  Run every step in order; stop at the first error or directOutput.
static void
s_execute (s_run_t *run)
{
    json_t *steps = json_object_get (run->flow, "steps");
    size_t index;
    json_t *step;
    json_array_foreach (steps, index, step)
    {
        const char *type = json_string_value (json_object_get (step, "type"));
        json_t *config = json_object_get (step, "config");
        if (cm_call_cancelled (run->call)) {
            s_fail (run, S_FAIL_CANCELLED,
                    "steps[%zu] (%s): the run was cancelled before the step", index,
                    type);
            break;
        }
        s_event (run, json_pack ("{s:s, s:i, s:s}", "type", "stepStarted", "index",
                                 (json_int_t) index, "stepType", type));
        char what[64];
        snprintf (what, sizeof what, "steps[%zu] (%s)", index, type);
        run->what = what;
        json_t *output = NULL;
        const char *variable = NULL;
        if (!strcmp (type, "start"))
            output = json_deep_copy (run->vars);
        else if (!strcmp (type, "apiCall")) {
            output = s_api_call (run, config, what);
            variable = json_string_value (json_object_get (config, "responseVariable"));
        } else if (!strcmp (type, "llmInstruction")) {
            output = s_llm_instruction (run, config, what);
            variable = json_string_value (json_object_get (config, "resultVariable"));
        } else if (!strcmp (type, "webScraping")) {
            output = s_web_scraping (run, config, what);
            variable = json_string_value (json_object_get (config, "resultVariable"));
        } else
            s_fail (run, S_FAIL_FLOW, "%s: unknown step type", what);

        if (!output) {
            json_array_append_new (run->results,
                                   json_pack ("{s:i, s:s, s:b, s:s}", "index",
                                              (json_int_t) index, "type", type, "success",
                                              0, "error", run->error));
            s_event (run, json_pack ("{s:s, s:i, s:s, s:b, s:s}", "type", "stepFinished",
                                     "index", (json_int_t) index, "stepType", type,
                                     "success", 0, "error", run->error));
            break;
        }
        if (variable && *variable)
            json_object_set (run->vars, variable, output);
        json_array_append_new (run->results, json_pack ("{s:i, s:s, s:b, s:O}", "index",
                                                        (json_int_t) index, "type", type,
                                                        "success", 1, "output", output));
        s_event (run, json_pack ("{s:s, s:i, s:s, s:b, s:O}", "type", "stepFinished",
                                 "index", (json_int_t) index, "stepType", type, "success",
                                 1, "output", output));
        if (json_is_true (json_object_get (config, "directOutput"))) {
            run->direct = output;
            break;
        }
        json_decref (output);
    }
}

static void
s_flow_run (cm_call_t *call, void *arg)
{
    agent_service_t *self = (agent_service_t *) arg;
    const char *uuid = cm_call_param (call, "uuid");
    json_t *body = cm_call_json (call);
    json_t *overrides = json_object_get (body, "variables");
    if (overrides && !json_is_null (overrides) && !json_is_object (overrides)) {
        cm_call_reply_error (call, 400, "variables must be an object {name: value}");
        return;
    }
    cm_storage_t *storage = s_storage (self, call);
    if (!storage)
        return;
    json_t *flow = NULL;
    cm_storage_status_t status = cm_storage_flow_get (storage, uuid, &flow);
    if (status != CM_STORAGE_OK)
        s_reply_flow (call, storage, status, NULL, uuid);
    cm_storage_pool_release (self->pool, &storage);
    if (status != CM_STORAGE_OK)
        return;
    if (!json_is_true (json_object_get (flow, "active"))) {
        char message[256];
        snprintf (message, sizeof message,
                  "agent flow '%.64s' is inactive; activate it first (POST "
                  "/api/v1/agent-flows/%s/toggle {\"active\": true})",
                  json_string_value (json_object_get (flow, "name")), uuid);
        cm_utf8_fix (message);
        cm_call_reply_error (call, 409, message);
        json_decref (flow);
        return;
    }
    //  The agent circuit guards the LLM provider, the upstream flows share:
    //  while it is failing, runs of flows that ask it are refused here, at
    //  once. A flow without an llmInstruction step never calls it, so it
    //  neither waits on it nor tells it anything (docs/breaker.md).
    bool asks_llm = s_asks_llm (json_object_get (flow, "steps"));
    cm_breaker_permit_t permit = {0};
    int64_t retry_ms = 0;
    if (asks_llm && cm_breaker_acquire (self->breaker, cm_clock_mono_ms (), &permit,
                                        &retry_ms) == CM_BREAKER_REJECTED) {
        int64_t seconds = cm_call_retry_after (call, retry_ms);
        char message[256];
        snprintf (message, sizeof message,
                  "The %s circuit is open: the LLM provider of llmInstruction steps "
                  "is failing, so runs are paused. Retry after %lld s.",
                  cm_breaker_name (self->breaker), (long long) seconds);
        cm_call_reply_error (call, 503, message);
        json_decref (flow);
        return;
    }

    s_run_t run = {
        .service = self,
        .call = call,
        .streaming = json_is_true (json_object_get (body, "stream")),
        .flow = flow,
        .vars = agent_flow_variables (json_object_get (flow, "steps"), overrides),
        .results = json_array (),
        .step_until = INT64_MAX,
    };
    int64_t started = cm_clock_mono_ms ();
    s_event (&run,
             json_pack ("{s:s, s:s, s:O, s:i}", "type", "flowStarted", "uuid", uuid,
                        "name", json_object_get (flow, "name"), "steps",
                        (json_int_t) json_array_size (json_object_get (flow, "steps"))));
    s_execute (&run);

    //  The agent circuit hears only of the LLM provider: a run in which it
    //  answered is a success, a run it failed a failure. A run that never
    //  reached it (no llmInstruction step, or a step before it failed) says
    //  nothing about it: counted as a success it would reset the provider's
    //  run of failures, or close the circuit as a probe that never probed.
    if (asks_llm && run.fail == S_FAIL_LLM)
        cm_breaker_failure (self->breaker, permit, cm_clock_mono_ms ());
    else if (asks_llm && run.llm_answered)
        cm_breaker_success (self->breaker, permit, cm_clock_mono_ms ());
    else if (asks_llm)
        cm_breaker_release (self->breaker, permit);
    cm_info ("%s: flow %s ran in %lld ms: %s%s", cm_call_request_id (call), uuid,
             (long long) (cm_clock_mono_ms () - started),
             run.fail ? "failed: " : "succeeded", run.fail ? run.error : "");

    //  Cut short by this daemon's shutdown (its drain ran out), not by the
    //  client: say so, and answer 503 (a stream ends 503 and the gateway
    //  gives its client an abort event).
    bool shut_down = run.fail == S_FAIL_CANCELLED && cm_call_shutting_down (call);
    if (shut_down)
        snprintf (run.error, sizeof run.error,
                  "agentd shut down before the run ended (DRAIN_TIMEOUT_MS ran out); "
                  "the steps after the last result did not run");
    json_t *result =
        json_pack ("{s:b, s:O, s:O, s:O}", "success", run.fail == S_FAIL_NONE, "results",
                   run.results, "variables", run.vars, "directOutput",
                   run.direct ? run.direct : json_null ());
    if (run.fail)
        json_object_set_new (result, "error", json_string (run.error));
    if (run.streaming) {
        json_object_set_new (result, "type", json_string ("flowFinished"));
        s_event (&run, result);
        cm_call_stream_end (call);
    } else if (shut_down) {
        cm_call_header_add (call, "Retry-After", "1");
        cm_call_reply_json (call, 503, result);
    } else
        cm_call_reply_json (call, 200, result);
    json_decref (run.direct);
    json_decref (run.results);
    json_decref (run.vars);
    json_decref (flow);
}
