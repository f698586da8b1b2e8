/*  gw_server.c: see gw_server.h. */
#include "gw_server.h"
#include "cm_utf8.h"
#include "cm_form.h"
#include "cm_log.h"
#include "cm_msg.h"
#include "cm_redis.h"
#include "cm_reporter.h"
#include "gw_broker.h"
#include "gw_exchange.h"
#include "gw_health.h"
#include "gw_keys.h"
#include "gw_metrics.h"
#include "gw_routes.h"
#include <arpa/inet.h>
#include <jansson.h>
#include <microhttpd.h>
#include <poll.h>
#include <stdarg.h>
#include <sodium.h>
#include <strings.h>
#include <sys/ioctl.h>
#include <stdatomic.h>
#include <unistd.h>

static const cm_conf_entry_t s_table[] = {
    {"SERVER_PORT", CM_CONF_INT, "3001", 0, 65535, offsetof (gw_config_t, port),
     "HTTP port of the gateway"},
    {"SERVER_HOST", CM_CONF_STR, "0.0.0.0", 0, 0, offsetof (gw_config_t, host),
     "IPv4 address the HTTP port binds (dotted quad, e.g. 127.0.0.1)"},
    {"GATEWAY_BACKEND_BIND", CM_CONF_BIND, "tcp://127.0.0.1:5555", 0, 0,
     offsetof (gw_config_t, backend_bind),
     "ZeroMQ endpoint the gateway binds for daemons (tcp://host:port, host may be "
     "'*'; or ipc://path)"},
    {"REQUEST_TIMEOUT_MS", CM_CONF_INT, "120000", 1, 86400000,
     offsetof (gw_config_t, timeout_ms), "deadline of a forwarded request (then 504)"},
    {"MAX_BODY_BYTES", CM_CONF_INT, "16777216", 1, 60 * 1024 * 1024,
     offsetof (gw_config_t, max_body), "largest request body accepted (then 413)"},
    {"GATEWAY_HTTP_THREADS", CM_CONF_INT, "0", 0, 256, offsetof (gw_config_t, threads),
     "HTTP threads (0: one per CPU)"},
    {"GATEWAY_MAX_CONNECTIONS", CM_CONF_INT, "10000", 16, 1000000,
     offsetof (gw_config_t, max_connections), "open HTTP connections at most"},
    {"GATEWAY_IDLE_TIMEOUT_SECONDS", CM_CONF_INT, "120", 1, 86400,
     offsetof (gw_config_t, idle_timeout_s),
     "an HTTP connection on which nothing moves for this long is closed (a "
     "keep-alive between requests, headers or a body that stopped coming, an answer "
     "the client stopped reading); one waiting for its daemon's answer is not"},
    {"GATEWAY_STREAM_BUFFER_BYTES", CM_CONF_INT, "1048576", 65536, 1073741824,
     offsetof (gw_config_t, stream_buffer),
     "most of a stream held for a client that reads slower than the answer comes; "
     "past it the stream ends with its failure event and the daemon is told to stop"},
    {"GATEWAY_CONNECTION_MEMORY_BYTES", CM_CONF_INT, "8192", 4096, 1048576,
     offsetof (gw_config_t, connection_memory),
     "memory pool of one HTTP connection; request headers may take all but 2 KiB (then "
     "431)"},
    {"HEARTBEAT_INTERVAL_MS", CM_CONF_INT, "1000", 10, 60000,
     offsetof (gw_config_t, heartbeat_ms), "heartbeat period, both directions"},
    {"HEARTBEAT_LIVENESS", CM_CONF_INT, "3", 1, 100, offsetof (gw_config_t, liveness),
     "missed heartbeats before a peer counts as dead"},
    {"GATEWAY_INSTANCE_WAIT_MS", CM_CONF_INT, "3000", 0, 600000,
     offsetof (gw_config_t, instance_wait_ms),
     "how long a request waits for an instance of its service while none is live "
     "(a daemon or the gateway restarting; then 503; 0: 503 at once)"},
    //  Rate limits of forwarded routes (gw_limits.h); a rate of 0 is no limit.
    {"RATE_LIMIT_GLOBAL_RPS", CM_CONF_DOUBLE, "0", 0, 1000000,
     offsetof (gw_config_t, limits.global_rps),
     "requests/s over all forwarded routes (0: unlimited; fractions allowed)"},
    {"RATE_LIMIT_GLOBAL_BURST", CM_CONF_INT, "0", 0, 1000000000,
     offsetof (gw_config_t, limits.global_burst),
     "requests that may come at once (0: the rate, rounded up)"},
    {"RATE_LIMIT_CHAT_RPS", CM_CONF_DOUBLE, "0", 0, 1000000,
     offsetof (gw_config_t, limits.chat_rps), "requests/s over the chat routes"},
    {"RATE_LIMIT_CHAT_BURST", CM_CONF_INT, "0", 0, 1000000000,
     offsetof (gw_config_t, limits.chat_burst), "burst of the chat routes"},
    {"RATE_LIMIT_INGESTION_RPS", CM_CONF_DOUBLE, "0", 0, 1000000,
     offsetof (gw_config_t, limits.ingestion_rps),
     "requests/s over the ingestion routes"},
    {"RATE_LIMIT_INGESTION_BURST", CM_CONF_INT, "0", 0, 1000000000,
     offsetof (gw_config_t, limits.ingestion_burst), "burst of the ingestion routes"},
    {"RATE_LIMIT_AGENT_RPS", CM_CONF_DOUBLE, "0", 0, 1000000,
     offsetof (gw_config_t, limits.agent_rps), "requests/s over the agent-flow routes"},
    {"RATE_LIMIT_AGENT_BURST", CM_CONF_INT, "0", 0, 1000000000,
     offsetof (gw_config_t, limits.agent_burst), "burst of the agent-flow routes"},
    {"RATE_LIMIT_KEY_RPS", CM_CONF_DOUBLE, "0", 0, 1000000,
     offsetof (gw_config_t, limits.key_rps), "requests/s of each API key"},
    {"RATE_LIMIT_KEY_BURST", CM_CONF_INT, "0", 0, 1000000000,
     offsetof (gw_config_t, limits.key_burst), "burst of each API key"},
    {"RATE_LIMIT_MAX_KEYS", CM_CONF_INT, "100000", 1, 10000000,
     offsetof (gw_config_t, limits.max_keys),
     "API keys tracked at most (least recently used forgotten first)"},
    {"RUN_DIR", CM_CONF_STR, "./var", 0, 0, offsetof (gw_config_t, run_dir),
     "runtime directory; STORAGE_DIR defaults under it"},
    {"STORAGE_DIR", CM_CONF_STR, NULL, 0, 0, offsetof (gw_config_t, storage_dir),
     "directory of the SQLite database, checked for health (default $RUN_DIR/storage)"},
    {"REDIS_URL", CM_CONF_URL, "redis://127.0.0.1:6379", 0, 0,
     offsetof (gw_config_t, redis_url), "the queue backend, checked for health"},
    {"HEALTH_CHECK_INTERVAL_MS", CM_CONF_INT, "1000", 50, 60000,
     offsetof (gw_config_t, health_interval),
     "how often the database and Redis are checked"},
    {"SUPERVISOR_ENDPOINT", CM_CONF_ENDPOINT, CM_REPORTER_ENDPOINT, 0, 0,
     offsetof (gw_config_t, supervisor),
     "the supervisor's metrics hub: the gateway reports there and asks it for "
     "the aggregate behind /api/metrics"},
    {"METRICS_REPORT_INTERVAL_MS", CM_CONF_INT, "1000", 10, 600000,
     offsetof (gw_config_t, report_ms), "how often the gateway reports its metrics"},
    {"METRICS_QUERY_TIMEOUT_MS", CM_CONF_INT, "250", 1, 60000,
     offsetof (gw_config_t, metrics_timeout_ms),
     "how long /api/metrics waits for the supervisor's aggregate"},
    //  It travels in an Authorization header: no space or control character.
    {"ADMIN_API_KEY", CM_CONF_TOKEN, NULL, 0, 4096, offsetof (gw_config_t, admin_key),
     "bearer key with full access (the local run generates one): printable ASCII, no "
     "spaces, at most 4096 bytes"},
    {"API_KEY_CACHE_TTL_MS", CM_CONF_INT, "500", 0, 60000,
     offsetof (gw_config_t, key_cache_ttl_ms),
     "how long a database API key is trusted before it is read again: a revoked "
     "key is refused within this long on every gateway (0: read it every time)"},
    CM_LOG_CONF_ENTRY (gw_config_t, log_level),
    {NULL, 0, NULL, 0, 0, 0, NULL},
};

const cm_conf_entry_t *
gw_config_table (void)
{
    return s_table;
}

int
gw_config_check (const gw_config_t *config, char *err, size_t errlen)
{
    assert (config && config->host && config->run_dir && config->redis_url);
    struct in_addr addr;
    if (inet_pton (AF_INET, config->host, &addr) != 1) {
        snprintf (err, errlen,
                  "SERVER_HOST: '%s' is not an IPv4 address (a dotted quad such as "
                  "127.0.0.1 or 0.0.0.0)",
                  config->host);
        return -1;
    }
    if (gw_limits_config_check (&config->limits, err, errlen) ||
        cm_redis_url_check ("REDIS_URL", config->redis_url, err, errlen) ||
        cm_config_check_storage (config->storage_dir, config->run_dir, err, errlen) ||
        cm_log_level_apply (config->log_level, err, errlen))
        return -1;
    return 0;
}

struct gw_server_s {
    const gw_config_t *config;    //  borrowed settings
    gw_broker_t *broker;          //  the ZeroMQ side
    gw_health_t *health;          //  database and Redis checks
    gw_limits_t *limits;          //  rate limits
    cm_metrics_t *metrics;        //  the gateway's registry
    gw_metrics_t *observer;       //  its series and routes
    struct MHD_Daemon *daemon;    //  the HTTP side
    gw_keys_t *keys;              //  API keys (and their cache)
    char id_prefix[20];           //  random per start, for request ids
    atomic_uint_fast64_t next_id; //  request counter
    atomic_bool stopping;         //  destroy has begun: no new forwarding
    atomic_int open_exchanges;    //  forwarded requests not yet completed
    int64_t started_ms;           //  mono ms at start, for uptime
    int port;                     //  bound port
};

//  Per-request state, created by the URI callback before the handler runs.
typedef struct {
    char *uri;               //  raw URI with query string
    const gw_route_t *route; //  matched route
    int early_status;        //  decided on the first call, answered later
    char *early_message;     //  its error text
    char allow[64];          //  for 405
    char *body;              //  body so far
    size_t body_size, body_capacity;
    bool too_large;         //  body over MAX_BODY_BYTES
    bool first_call_done;   //  first access-handler call has passed
    int64_t content_length; //  the request's Content-Length (-1: none, chunked)
    uint64_t received;      //  body bytes received so far, kept or dropped
    //  Form routes (GW_ROUTE_FORM): the body goes through the post processor
    //  into form, which is encoded into body once the request is in.
    struct MHD_PostProcessor *post; //  NULL: none, or given up
    cm_form_t *form;                //  the parts so far
    char *form_error;               //  why the form is refused (400), or NULL
    gw_exchange_t *exchange;        //  once forwarded
    char identity[32];              //  authenticated caller ("admin", "key:<id>")
    bool admin;                     //  the caller's key may use admin routes
    //  The rate-limit decision (.limit NULL: no limit applies).
    gw_limits_verdict_t limits;
    int64_t complete_us; //  mono µs when the request was in (0: never)
} s_request_t;

static void *
s_uri_logger (void *cls, const char *uri, struct MHD_Connection *connection)
{
    (void) cls;
    (void) connection;
    s_request_t *request = cm_calloc (1, sizeof *request);
    request->uri = cm_strdup (uri);
    return request;
}

static enum MHD_Result
s_reply_json (struct MHD_Connection *connection, unsigned status, json_t *body,
              const char *retry_after, const char *allow)
{
    //  json_pack gives NULL for a string that is not UTF-8: never a crash.
    char *text = body ? json_dumps (body, JSON_COMPACT) : NULL;
    json_decref (body);
    if (!text) {
        cm_error ("a reply (status %u) could not be encoded as JSON", status);
        text = cm_strdup ("{\"error\":\"The reply could not be encoded.\"}");
        status = 500;
    }
    struct MHD_Response *response =
        MHD_create_response_from_buffer (strlen (text), text, MHD_RESPMEM_MUST_FREE);
    MHD_add_response_header (response, MHD_HTTP_HEADER_CONTENT_TYPE, "application/json");
    if (retry_after)
        MHD_add_response_header (response, MHD_HTTP_HEADER_RETRY_AFTER, retry_after);
    if (allow)
        MHD_add_response_header (response, MHD_HTTP_HEADER_ALLOW, allow);
    enum MHD_Result rc = MHD_queue_response (connection, status, response);
    MHD_destroy_response (response);
    return rc;
}

static enum MHD_Result
s_reply_error (struct MHD_Connection *connection, unsigned status, const char *message)
{
    char *text = cm_utf8_dup (message);
    json_t *body = json_pack ("{s:s}", "error", text);
    free (text);
    return s_reply_json (connection, status, body, status == 503 ? "1" : NULL, NULL);
}

//  An answer on a route that went through the rate limits: it carries their
//  headers (RateLimit-Policy, RateLimit; Retry-After when refused).
static enum MHD_Result
s_reply_limited (struct MHD_Connection *connection, s_request_t *request, unsigned status,
                 json_t *body)
{
    const gw_limits_verdict_t *verdict = &request->limits;
    char *text = json_dumps (body, JSON_COMPACT);
    json_decref (body);
    struct MHD_Response *response =
        MHD_create_response_from_buffer (strlen (text), text, MHD_RESPMEM_MUST_FREE);
    MHD_add_response_header (response, MHD_HTTP_HEADER_CONTENT_TYPE, "application/json");
    if (*verdict->retry_after)
        MHD_add_response_header (response, MHD_HTTP_HEADER_RETRY_AFTER,
                                 verdict->retry_after);
    else if (status == 503)
        MHD_add_response_header (response, MHD_HTTP_HEADER_RETRY_AFTER, "1");
    if (verdict->limit) {
        MHD_add_response_header (response, "RateLimit-Policy", verdict->policy);
        MHD_add_response_header (response, "RateLimit", verdict->state);
    }
    enum MHD_Result rc = MHD_queue_response (connection, status, response);
    MHD_destroy_response (response);
    return rc;
}

//  Check "Authorization: Bearer <key>": ADMIN_API_KEY or a key in the
//  database (gw_keys.h: constant-time compares, a short-lived cache).
static gw_keys_result_t
s_authenticate (gw_server_t *self, struct MHD_Connection *connection,
                s_request_t *request)
{
    const char *auth = MHD_lookup_connection_value (connection, MHD_HEADER_KIND,
                                                    MHD_HTTP_HEADER_AUTHORIZATION);
    if (!auth || strncasecmp (auth, "Bearer ", 7))
        return GW_KEYS_INVALID;
    const char *secret = auth + 7;
    while (*secret == ' ')
        secret++;
    gw_key_t key;
    gw_keys_result_t result =
        gw_keys_authenticate (self->keys, secret, cm_clock_mono_ms (), &key);
    if (result == GW_KEYS_VALID) {
        snprintf (request->identity, sizeof request->identity, "%s", key.identity);
        request->admin = key.admin;
    }
    return result;
}

//  The admin routes of API keys, answered here from the database.
static enum MHD_Result
s_keys (gw_server_t *self, struct MHD_Connection *connection, s_request_t *request)
{
    json_t *reply = NULL;
    int status;
    if (request->route->local == GW_LOCAL_KEYS_LIST)
        status = gw_keys_list (self->keys, &reply);
    else if (request->route->local == GW_LOCAL_KEYS_CREATE) {
        json_t *body = request->body_size
                           ? json_loadb (request->body, request->body_size, 0, NULL)
                           : json_object ();
        status = gw_keys_create (self->keys, body, request->identity, &reply);
        json_decref (body);
    } else {
        //  The id is the path's last segment (the query string and a
        //  trailing slash aside).
        char *path = cm_strdup (request->uri);
        path[strcspn (path, "?")] = 0;
        size_t length = strlen (path);
        if (length > 1 && path[length - 1] == '/')
            path[length - 1] = 0;
        const char *slash = strrchr (path, '/');
        //  Decoded, as every route parameter is (docs/api.md).
        const char *raw = slash ? slash + 1 : "";
        size_t size;
        char *id = cm_percent_decode (raw, strlen (raw), false, &size);
        status = gw_keys_revoke (self->keys, strlen (id) == size ? id : "", &reply);
        free (id);
        free (path);
    }
    return s_reply_json (connection, (unsigned) status, reply, status == 503 ? "1" : NULL,
                         NULL);
}

//  The daemon program behind a service name, as users know it.
static const char *
s_daemon_name (const char *service)
{
    return !strcmp (service, "chat")     ? "chatd"
           : !strcmp (service, "ingest") ? "ingestd"
           : !strcmp (service, "agent")  ? "agentd"
                                         : service;
}

//  Ready: the database answers, every daemon has an instance, and we are
//  not stopping. Health adds the detail, and "degraded" when Redis is down
//  (ingestion then takes its synchronous path, so we still serve).
static enum MHD_Result
s_health (gw_server_t *self, struct MHD_Connection *connection, bool ready_only)
{
    json_t *snap = gw_broker_snapshot (self->broker);
    json_t *live = json_object_get (snap, "live");
    json_t *reasons = json_array ();
    json_t *services = json_object ();
    if (atomic_load (&self->stopping))
        json_array_append_new (reasons, json_string ("the gateway is draining"));
    json_t *deps = gw_health_report (self->health);
    if (!gw_health_database_ok (self->health)) {
        const char *error = json_string_value (
            json_object_get (json_object_get (deps, "database"), "error"));
        json_array_append_new (reasons,
                               json_sprintf ("the database is not usable%s%s",
                                             error ? ": " : "", error ? error : ""));
    }
    for (const char *const *s = gw_routes_services (); *s; s++) {
        json_t *count = json_object_get (live, *s);
        json_int_t n = count ? json_integer_value (count) : 0;
        json_object_set_new (
            services, *s,
            json_pack ("{s:s, s:I}", "daemon", s_daemon_name (*s), "instances", n));
        if (n == 0)
            json_array_append_new (reasons, json_sprintf ("no %s instance is registered",
                                                          s_daemon_name (*s)));
    }
    bool ready = json_array_size (reasons) == 0;
    json_t *body;
    if (ready_only) {
        body = json_pack ("{s:s, s:o}", "status", ready ? "ready" : "unready", "reasons",
                          reasons);
        json_decref (services);
        json_decref (deps);
    } else {
        json_t *warnings = json_array ();
        if (!gw_health_redis_ok (self->health)) {
            const char *error = json_string_value (
                json_object_get (json_object_get (deps, "queue_backend"), "error"));
            json_array_append_new (
                warnings, json_sprintf ("Redis (the queue backend) is unreachable%s%s; "
                                        "ingestion runs synchronously",
                                        error ? ": " : "", error ? error : ""));
        }
        //  A program the supervisor gave up restarting (it crashed too often):
        //  the suite may still serve, with less.
        json_t *given_up = self->observer ? gw_metrics_given_up (self->observer) : NULL;
        const char *program;
        json_t *count;
        json_object_foreach (given_up, program, count)
        {
            if (json_number_value (count) >= 1)
                json_array_append_new (
                    warnings,
                    json_sprintf ("the supervisor gave up restarting %s (%d instance%s); "
                                  "restart the suite to start it again",
                                  program, (int) json_number_value (count),
                                  json_number_value (count) >= 2 ? "s" : ""));
        }
        json_decref (given_up);
        const char *status = !ready                       ? "unready"
                             : json_array_size (warnings) ? "degraded"
                                                          : "ok";
        body = json_pack (
            "{s:s, s:{s:i, s:I}, s:O, s:O, s:o, s:O, s:O, s:o, s:o}", "status", status,
            "process", "pid", (int) getpid (), "uptime_ms",
            (json_int_t) (cm_clock_mono_ms () - self->started_ms), "database",
            json_object_get (deps, "database"), "queue_backend",
            json_object_get (deps, "queue_backend"), "services", services, "instances",
            json_object_get (snap, "instances"), "broker",
            json_object_get (snap, "counters"), "reasons", reasons, "warnings", warnings);
        json_decref (deps);
        //  Breaker states as the daemons last reported them (per instance:
        //  a sum over instances is not a state).
        int64_t age_ms = -1;
        json_t *breakers =
            self->observer ? gw_metrics_breakers (self->observer, &age_ms) : NULL;
        json_object_set_new (body, "breakers", breakers ? breakers : json_null ());
        if (breakers)
            json_object_set_new (body, "breakers_age_ms", json_integer (age_ms));
    }
    json_decref (snap);
    return s_reply_json (connection, ready ? 200 : 503, body, ready ? NULL : "1", NULL);
}

//  A new request id: this start's random prefix, then a counter of fixed
//  width, so that ids sort in the order they were made (chatd keeps them
//  with its turns).
static void
s_request_id (gw_server_t *self, char *id, size_t size)
{
    snprintf (id, size, "%s-%010llx", self->id_prefix,
              (unsigned long long) atomic_fetch_add (&self->next_id, 1));
}

//  /api/metrics and /api/metrics/prometheus: answered by the metrics
//  thread (it asks the supervisor), on a suspended connection, like a
//  forwarded request.
static enum MHD_Result
s_metrics (gw_server_t *self, struct MHD_Connection *connection, s_request_t *request)
{
    atomic_fetch_add (&self->open_exchanges, 1);
    if (atomic_load (&self->stopping)) {
        atomic_fetch_sub (&self->open_exchanges, 1);
        return s_reply_error (connection, 503, "The gateway is shutting down.");
    }
    char request_id[48];
    s_request_id (self, request_id, sizeof request_id);
    request->exchange = gw_metrics_request (self->observer, connection, request_id,
                                            request->route->local == GW_LOCAL_PROMETHEUS);
    return MHD_YES;
}

static enum MHD_Result
s_local (gw_server_t *self, struct MHD_Connection *connection, s_request_t *request)
{
    switch (request->route->local) {
        case GW_LOCAL_PING:
            return s_reply_json (connection, 200, json_pack ("{s:b}", "online", 1), NULL,
                                 NULL);
        case GW_LOCAL_LIVE:
            return s_reply_json (
                connection, 200,
                json_pack ("{s:s, s:i}", "status", "ok", "pid", (int) getpid ()), NULL,
                NULL);
        case GW_LOCAL_AUTH:
            return s_reply_json (connection, 200, json_pack ("{s:b}", "authenticated", 1),
                                 NULL, NULL);
        case GW_LOCAL_READY:
        case GW_LOCAL_HEALTH:
            return s_health (self, connection, request->route->local == GW_LOCAL_READY);
        case GW_LOCAL_METRICS:
        case GW_LOCAL_PROMETHEUS:
            return s_metrics (self, connection, request);
        case GW_LOCAL_KEYS_LIST:
        case GW_LOCAL_KEYS_CREATE:
        case GW_LOCAL_KEYS_REVOKE:
            return s_keys (self, connection, request);
        case GW_LOCAL_NONE:
            break;
    }
    return s_reply_error (connection, 500, "Unknown local route.");
}

//  Forward to the owning service: build the REQUEST, suspend, hand over.
//  GATEWAY_STREAM_BUFFER_BYTES when a test's config leaves it 0.
#define S_STREAM_BUFFER_DEFAULT (1024 * 1024)

static enum MHD_Result
s_forward (gw_server_t *self, struct MHD_Connection *connection, s_request_t *request)
{
    //  Count first, then look at the flag: destroy sets the flag, then waits
    //  for the count, so it never misses a request on its way in.
    atomic_fetch_add (&self->open_exchanges, 1);
    if (atomic_load (&self->stopping)) {
        atomic_fetch_sub (&self->open_exchanges, 1);
        return s_reply_limited (
            connection, request, 503,
            json_pack ("{s:s}", "error", "The gateway is shutting down."));
    }
    char request_id[48];
    s_request_id (self, request_id, sizeof request_id);
    cm_msg_t *msg = cm_msg_new (CM_MSG_REQUEST);
    cm_msg_set_request_id (msg, request_id);
    cm_msg_set_service (msg, request->route->service);
    //  The route's method: a HEAD is forwarded as its GET (libmicrohttpd
    //  leaves the body out of the answer).
    cm_msg_set_method (msg, request->route->method);
    cm_msg_set_route (msg, request->uri);
    cm_msg_set_identity (msg, request->identity);
    cm_msg_set_deadline (msg, cm_clock_wall_ms () + self->config->timeout_ms);
    //  Content-Type first: a form route replaces it (the body is a cm_form).
    static const char *forwarded[] = {"Content-Type", "Accept", "Last-Event-ID",
                                      "User-Agent"};
    bool form = (request->route->flags & GW_ROUTE_FORM) != 0;
    if (form)
        cm_msg_header_add (msg, "Content-Type", CM_FORM_CONTENT_TYPE);
    for (size_t i = form ? 1 : 0; i < sizeof forwarded / sizeof *forwarded; i++) {
        const char *value =
            MHD_lookup_connection_value (connection, MHD_HEADER_KIND, forwarded[i]);
        if (value)
            cm_msg_header_add (msg, forwarded[i], value);
    }
    if (request->body_size)
        cm_msg_set_body_owned (msg, &request->body, request->body_size);
    else if (request->route->flags & GW_ROUTE_JSON)
        cm_msg_set_body (msg, "{}", 2);
    request->exchange = gw_exchange_new (request_id, connection,
                                         (size_t) (self->config->stream_buffer
                                                       ? self->config->stream_buffer
                                                       : S_STREAM_BUFFER_DEFAULT));
    if (request->limits.limit) {
        gw_exchange_header_add (request->exchange, "RateLimit-Policy",
                                request->limits.policy);
        gw_exchange_header_add (request->exchange, "RateLimit", request->limits.state);
    }
    //  Suspend before the broker can answer, so its resume always follows.
    gw_exchange_respond (request->exchange);
    gw_broker_submit (self->broker, gw_exchange_ref (request->exchange), &msg,
                      cm_clock_mono_ms () + self->config->timeout_ms,
                      (request->route->flags & GW_ROUTE_RETRY) != 0);
    return MHD_YES;
}

//  A body the gateway refuses: {error}, or on chat routes the abort shape
//  chatd gives its own errors before any output (API.md), so that a client
//  handles both alike.
static json_t *
s_bad_body (const gw_route_t *route, const char *text)
{
    //  The message may quote the request (its Content-Type, a JSON error).
    char message[512];
    snprintf (message, sizeof message, "%s", text);
    cm_utf8_fix (message);
    //  Upstream's document routes fail as {success:false, error}.
    if (route && ((route->flags & GW_ROUTE_FORM) ||
                  !strncmp (route->pattern, "/api/v1/document/", 17)))
        return json_pack ("{s:b, s:s}", "success", 0, "error", message);
    if (!route || !(route->flags & GW_ROUTE_CHAT))
        return json_pack ("{s:s}", "error", message);
    unsigned char bytes[16];
    randombytes_buf (bytes, sizeof bytes);
    bytes[6] = (unsigned char) ((bytes[6] & 0x0F) | 0x40);
    bytes[8] = (unsigned char) ((bytes[8] & 0x3F) | 0x80);
    char id[37];
    snprintf (id, sizeof id,
              "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x",
              bytes[0], bytes[1], bytes[2], bytes[3], bytes[4], bytes[5], bytes[6],
              bytes[7], bytes[8], bytes[9], bytes[10], bytes[11], bytes[12], bytes[13],
              bytes[14], bytes[15]);
    return json_pack ("{s:s, s:s, s:n, s:[], s:b, s:s}", "id", id, "type", "abort",
                      "textResponse", "sources", "close", 1, "error", message);
}

//  413: in the route's error shape (upstream's for document routes). Queued
//  on the first call, it also closes the connection: right for a body we
//  will not read.
static enum MHD_Result
s_reply_too_large (gw_server_t *self, struct MHD_Connection *connection,
                   s_request_t *request)
{
    char message[128];
    snprintf (message, sizeof message, "Request body is larger than %lld bytes.",
              (long long) self->config->max_body);
    if (request->route && !(request->route->flags & GW_ROUTE_CHAT))
        return s_reply_json (connection, 413, s_bad_body (request->route, message), NULL,
                             NULL);
    return s_reply_error (connection, 413, message);
}

//  The post processor's callback: one piece of one form value. A value
//  comes in pieces (off > 0 for all but the first); a new value of a name
//  that repeats starts a new part. (libmicrohttpd may announce a value
//  with an empty first piece at off 0 and then send its data at off 0
//  again: an empty part is continued, not doubled, unless what follows
//  names another file.) A part without a name (no name="..." that
//  libmicrohttpd can read) refuses the form.
static bool
s_same_text (const char *a, const char *b)
{
    return a == b || (a && b && !strcmp (a, b));
}

static enum MHD_Result
s_form_iterator (void *cls, enum MHD_ValueKind kind, const char *key,
                 const char *filename, const char *content_type,
                 const char *transfer_encoding, const char *data, uint64_t off,
                 size_t size)
{
    (void) kind;
    (void) transfer_encoding;
    s_request_t *request = cls;
    if (!key) {
        free (request->form_error);
        request->form_error =
            cm_strdup ("Invalid request: a form part has no name (Content-Disposition: "
                       "form-data; name=\"...\").");
        return MHD_NO;
    }
    size_t count = cm_form_count (request->form);
    const cm_form_part_t *last = count ? cm_form_at (request->form, count - 1) : NULL;
    bool continues =
        last && !strcmp (last->name, key) &&
        (off > 0 || (last->size == 0 && s_same_text (last->filename, filename)));
    if (continues) {
        cm_form_add (request->form, key, filename, content_type, data, size);
        return MHD_YES;
    }
    if (count >= CM_FORM_MAX_PARTS) {
        char message[96];
        snprintf (message, sizeof message,
                  "Invalid request: the form has more than %d fields.",
                  CM_FORM_MAX_PARTS);
        free (request->form_error);
        request->form_error = cm_strdup (message);
        return MHD_NO;
    }
    cm_form_add_part (request->form, key, filename, content_type, data, size);
    return MHD_YES;
}

//  A form route: parse the body as it comes, with libmicrohttpd's post
//  processor, which knows multipart/form-data (with a boundary) and
//  application/x-www-form-urlencoded; anything else is refused (400).
static void
s_form_start (s_request_t *request, struct MHD_Connection *connection)
{
    request->post =
        MHD_create_post_processor (connection, 32 * 1024, s_form_iterator, request);
    if (request->post) {
        request->form = cm_form_new ();
        return;
    }
    const char *type = MHD_lookup_connection_value (connection, MHD_HEADER_KIND,
                                                    MHD_HTTP_HEADER_CONTENT_TYPE);
    char message[400];
    snprintf (message, sizeof message,
              "Invalid request: expected Content-Type multipart/form-data (with a "
              "boundary) or application/x-www-form-urlencoded, got %s%.200s%s.",
              type ? "\"" : "", type ? type : "none", type ? "\"" : "");
    request->form_error = cm_utf8_dup (message);
}

//  Give up parsing (body too large, malformed): the rest is dropped.
static void
s_form_drop (s_request_t *request)
{
    if (request->post)
        MHD_destroy_post_processor (request->post);
    request->post = NULL;
    cm_form_destroy (&request->form);
}

//  The body is in: finish the form and make its encoding the body to
//  forward. Returns false with form_error set when the form is refused.
static bool
s_form_finish (s_request_t *request)
{
    if (request->post) {
        //  Destroying flushes the last urlencoded value, and says whether a
        //  multipart body ended where it should.
        if (MHD_destroy_post_processor (request->post) != MHD_YES && !request->form_error)
            request->form_error =
                cm_strdup ("Invalid request: the multipart body is malformed or "
                           "truncated (no closing boundary).");
        request->post = NULL;
    }
    if (request->form_error || !request->form) {
        if (!request->form_error)
            request->form_error = cm_strdup ("Invalid request: malformed form body.");
        cm_form_destroy (&request->form);
        return false;
    }
    free (request->body);
    request->body = NULL;
    cm_form_encode (request->form, &request->body, &request->body_size);
    cm_form_destroy (&request->form);
    return true;
}

//  libmicrohttpd's memory pool per connection (a config from a test may
//  leave it 0: the default).
static size_t
s_connection_memory (const gw_config_t *config)
{
    return (size_t) (config->connection_memory ? config->connection_memory : 8192);
}

//  What one header costs the connection's pool besides its text: libmicrohttpd's
//  record of it (and rounding).
#define S_HEADER_OVERHEAD 64

static enum MHD_Result
s_count_header (void *cls, enum MHD_ValueKind kind, const char *key, const char *value)
{
    (void) kind;
    size_t *bytes = cls;
    *bytes += strlen (key) + (value ? strlen (value) : 0) + S_HEADER_OVERHEAD;
    return MHD_YES;
}

//  What a response needs of the connection's pool: its status line and
//  headers, and a write buffer for a stream's chunks.
#define S_RESPONSE_RESERVE 2048

//  Bytes the request line and headers take of the connection's pool.
//  libmicrohttpd builds the response's headers in what is left, and when
//  that is too little it closes the connection without an answer, after
//  the request was already served. So requests whose headers leave less
//  than S_RESPONSE_RESERVE are refused with 431 before anything is done.
static size_t
s_header_bytes (struct MHD_Connection *connection, const char *method, const char *url)
{
    size_t bytes = strlen (method) + strlen (url) + S_HEADER_OVERHEAD;
    MHD_get_connection_values (connection, MHD_HEADER_KIND | MHD_GET_ARGUMENT_KIND,
                               s_count_header, &bytes);
    return bytes;
}

//  First call: headers are in. Decide what we can (route, auth, size) but
//  queue nothing yet, to keep the connection alive.
static void
s_first_call (gw_server_t *self, struct MHD_Connection *connection, s_request_t *request,
              const char *method)
{
    size_t header_bytes = s_header_bytes (connection, method, request->uri);
    size_t header_max = s_connection_memory (self->config) - S_RESPONSE_RESERVE;
    if (header_bytes > header_max) {
        request->early_status = 431;
        char message[200];
        snprintf (message, sizeof message,
                  "Request headers too large: %zu bytes, at most %zu "
                  "(GATEWAY_CONNECTION_MEMORY_BYTES less 2048).",
                  header_bytes, header_max);
        request->early_message = cm_strdup (message);
        return;
    }
    //  Routes are matched on the path as the client sent it, not on
    //  libmicrohttpd's decoded url: a "%2F" inside a segment stays inside
    //  it, and a "%00" cannot cut the path short. The daemon matches the
    //  same raw path and decodes the parameters (cm_worker).
    char *path = cm_strdup (request->uri);
    path[strcspn (path, "?#")] = 0;
    const gw_route_t *route;
    gw_route_result_t found =
        gw_routes_lookup (method, path, &route, request->allow, sizeof request->allow);
    free (path);
    if (found == GW_ROUTE_NOT_FOUND) {
        request->early_status = 404;
        request->early_message = cm_strdup ("Not found.");
        return;
    }
    if (found == GW_ROUTE_BAD_METHOD) {
        request->early_status = 405;
        request->early_message = cm_strdup ("Method not allowed.");
        return;
    }
    request->route = route;
    if (route->flags & GW_ROUTE_AUTH) {
        gw_keys_result_t auth = s_authenticate (self, connection, request);
        if (auth == GW_KEYS_UNAVAILABLE) {
            request->early_status = 503;
            request->early_message = cm_strdup (
                "API keys cannot be checked right now: the database is unavailable.");
            return;
        }
        if (auth != GW_KEYS_VALID) {
            request->early_status = 403;
            request->early_message = cm_strdup ("No valid api key found.");
            return;
        }
        if ((route->flags & GW_ROUTE_ADMIN) && !request->admin) {
            request->early_status = 403;
            request->early_message = cm_strdup ("This API key may not use admin routes.");
            return;
        }
    }
    if (request->content_length > self->config->max_body) {
        request->too_large = true;
        return;
    }
    //  Rate limits: after auth (a bad key is not counted), before the body
    //  (a refused body is dropped, not buffered). Answered on a later call.
    if (route->service &&
        gw_limits_check (self->limits, route->service, request->identity,
                         cm_clock_mono_us (), &request->limits) == CM_RATELIMIT_REJECTED)
        request->early_status = 429;
    else if (route->flags & GW_ROUTE_FORM)
        s_form_start (request, connection);
}

//  A refused request's body up to this size is read and dropped, so that
//  its connection can serve the next request; past it, the connection is
//  closed.
#define S_DROP_MAX (64 * 1024)

//  The answer to a request refused on its first call (early_status).
static enum MHD_Result
s_reply_early (struct MHD_Connection *connection, s_request_t *request)
{
    if (request->early_status == 429)
        return s_reply_limited (connection, request, 429,
                                gw_limits_verdict_body (&request->limits));
    if (request->early_status == 405)
        return s_reply_json (connection, 405,
                             json_pack ("{s:s}", "error", request->early_message), NULL,
                             request->allow);
    return s_reply_error (connection, (unsigned) request->early_status,
                          request->early_message);
}

//  Answer a refused request before its body, rather than read the body
//  and drop it: when the client waits to be told to send it (Expect:
//  100-continue; libmicrohttpd then sends no "100 Continue") or it is
//  larger than we drop. The connection closes after the answer.
static bool
s_refuse_before_the_body (struct MHD_Connection *connection, s_request_t *request)
{
    const char *expect =
        MHD_lookup_connection_value (connection, MHD_HEADER_KIND, MHD_HTTP_HEADER_EXPECT);
    return (expect && strcasestr (expect, "100-continue")) ||
           request->content_length > S_DROP_MAX;
}

//  Has the client closed its side with nothing more to read? libmicrohttpd
//  0.9.75 in epoll mode can miss such a close when the last of a body and
//  the FIN arrive together (its edge-triggered read stops at the short
//  read), and then holds the connection, with what it read of the body,
//  until its idle timeout: an operator's audit held 10,000 connections and
//  4 GB that way with aborted uploads. A client still sending has bytes in
//  the socket or no FIN yet; one that half-closes after a whole body never
//  gets here (the body is complete).
static bool
s_client_left (struct MHD_Connection *connection)
{
    const union MHD_ConnectionInfo *info =
        MHD_get_connection_info (connection, MHD_CONNECTION_INFO_CONNECTION_FD);
    if (!info)
        return false;
    struct pollfd pfd = {.fd = info->connect_fd, .events = POLLRDHUP};
    int pending = 0;
    return poll (&pfd, 1, 0) > 0 && (pfd.revents & (POLLRDHUP | POLLHUP | POLLERR)) &&
           ioctl (info->connect_fd, FIONREAD, &pending) == 0 && pending == 0;
}

static enum MHD_Result
s_handler (void *cls, struct MHD_Connection *connection, const char *url,
           const char *method, const char *version, const char *upload_data,
           size_t *upload_data_size, void **con_cls)
{
    (void) version;
    (void) url; //  decoded; routes are matched on the raw request->uri
    gw_server_t *self = cls;
    s_request_t *request = *con_cls;
    if (!request->first_call_done) {
        request->first_call_done = true;
        const char *length = MHD_lookup_connection_value (connection, MHD_HEADER_KIND,
                                                          MHD_HTTP_HEADER_CONTENT_LENGTH);
        unsigned long long parsed = length ? strtoull (length, NULL, 10) : 0;
        request->content_length = !length              ? -1
                                  : parsed > INT64_MAX ? INT64_MAX
                                                       : (int64_t) parsed;
        s_first_call (self, connection, request, method);
        if (request->too_large)
            return s_reply_too_large (self, connection, request);
        if (request->early_status && s_refuse_before_the_body (connection, request))
            return s_reply_early (connection, request);
        return MHD_YES;
    }
    if (request->exchange)
        return gw_exchange_respond (request->exchange);
    if (*upload_data_size) {
        request->received += *upload_data_size;
        //  Bodies of refused requests are read and dropped, up to a point:
        //  past it the connection is closed (a refused request's answer can
        //  only be queued before its body or after all of it). A body found
        //  too large on the way (chunked) is drained to its end for its 413.
        if (request->early_status && request->received > S_DROP_MAX) {
            *upload_data_size = 0;
            return MHD_NO;
        }
        if (!request->early_status && !request->too_large) {
            if (request->body_size + *upload_data_size >
                (size_t) self->config->max_body) {
                request->too_large = true;
                s_form_drop (request);
            } else if (request->route->flags & GW_ROUTE_FORM) {
                //  The raw bytes count against MAX_BODY_BYTES; the parts
                //  are kept, not the multipart text.
                request->body_size += *upload_data_size;
                if (request->post && MHD_post_process (request->post, upload_data,
                                                       *upload_data_size) != MHD_YES) {
                    if (!request->form_error)
                        request->form_error =
                            cm_strdup ("Invalid request: malformed form body.");
                    s_form_drop (request);
                }
            } else {
                if (request->body_size + *upload_data_size + 1 > request->body_capacity) {
                    request->body_capacity =
                        (request->body_size + *upload_data_size + 1) * 2;
                    request->body = cm_realloc (request->body, request->body_capacity);
                }
                memcpy (request->body + request->body_size, upload_data,
                        *upload_data_size);
                request->body_size += *upload_data_size;
            }
        }
        *upload_data_size = 0;
        //  A client that left before its body was all sent: close now, as
        //  libmicrohttpd may not (s_client_left).
        if (request->content_length >= 0 &&
            request->received < (uint64_t) request->content_length &&
            s_client_left (connection)) {
            cm_debug ("%s: the client left after %llu of %lld body bytes", request->uri,
                      (unsigned long long) request->received,
                      (long long) request->content_length);
            return MHD_NO;
        }
        return MHD_YES;
    }
    //  The whole request is in: from here to the completion callback is
    //  the request's latency, and it is in flight.
    if (!request->complete_us) {
        request->complete_us = cm_clock_mono_us ();
        gw_metrics_begin (self->observer, gw_metrics_class (request->route));
    }
    if (request->early_status)
        return s_reply_early (connection, request);
    if (request->too_large)
        return s_reply_too_large (self, connection, request);
    if ((request->route->flags & GW_ROUTE_FORM) && !s_form_finish (request))
        return s_reply_limited (connection, request, 400,
                                s_bad_body (request->route, request->form_error));
    if ((request->route->flags & GW_ROUTE_JSON) && request->body_size) {
        json_error_t error;
        json_t *parsed = json_loadb (request->body, request->body_size, 0, &error);
        char message[300] = "";
        //  jansson names its own flag for a \u0000; say what it means.
        if (!parsed && strstr (error.text, "JSON_ALLOW_NUL"))
            snprintf (message, sizeof message,
                      "Invalid JSON body: a string holds \\u0000 (a NUL character), "
                      "which is not accepted (line %d, column %d).",
                      error.line, error.column);
        else if (!parsed)
            snprintf (message, sizeof message,
                      "Invalid JSON body: %s (line %d, column %d).", error.text,
                      error.line, error.column);
        else if (!json_is_object (parsed))
            snprintf (message, sizeof message, "Invalid JSON body: expected an object.");
        json_decref (parsed);
        if (*message)
            return s_reply_limited (connection, request, 400,
                                    s_bad_body (request->route, message));
    }
    if (!request->route->service)
        return s_local (self, connection, request);
    return s_forward (self, connection, request);
}

static void
s_completed (void *cls, struct MHD_Connection *connection, void **con_cls,
             enum MHD_RequestTerminationCode toe)
{
    (void) connection;
    (void) toe;
    gw_server_t *self = cls;
    s_request_t *request = *con_cls;
    if (!request)
        return;
    if (request->first_call_done) {
        //  The status queued, if any (none: the client left first).
        const union MHD_ConnectionInfo *info =
            MHD_get_connection_info (connection, MHD_CONNECTION_INFO_HTTP_STATUS);
        unsigned status = info ? info->http_status : 0;
        //  499 is how the broker ends a request whose client left while
        //  it waited: nobody received it.
        if (status == 499)
            status = 0;
        gw_metrics_class_t route_class = gw_metrics_class (request->route);
        if (request->complete_us)
            gw_metrics_end (self->observer, route_class, status,
                            (double) (cm_clock_mono_us () - request->complete_us) / 1e6);
        else
            gw_metrics_count (self->observer, route_class, status);
    }
    if (request->exchange) {
        //  Still open at the daemon: the client left or MHD gave up.
        if (gw_exchange_close (request->exchange))
            gw_broker_cancel (self->broker, gw_exchange_request_id (request->exchange));
        gw_exchange_unref (&request->exchange);
        atomic_fetch_sub (&self->open_exchanges, 1);
    }
    s_form_drop (request);
    free (request->form_error);
    free (request->uri);
    free (request->body);
    free (request->early_message);
    free (request);
    *con_cls = NULL;
}

//  libmicrohttpd's own messages ("Connection was closed by remote side with
//  incomplete request.", one per client that left): through our log, with
//  its time and program, and one line a second at most (a flood of such
//  clients wrote thousands).
static void
s_mhd_log (void *cls, const char *fmt, va_list ap)
{
    (void) cls;
    static atomic_int_fast64_t logged_ms;
    static atomic_uint_fast64_t quiet;
    int64_t now = cm_clock_mono_ms ();
    int64_t last = atomic_load (&logged_ms);
    if (now - last < 1000 || !atomic_compare_exchange_strong (&logged_ms, &last, now)) {
        atomic_fetch_add (&quiet, 1);
        return;
    }
    char line[512];
    vsnprintf (line, sizeof line, fmt, ap);
    line[strcspn (line, "\n")] = 0;
    cm_warn ("libmicrohttpd: %s (%llu more of its lines since the last)", line,
             (unsigned long long) atomic_exchange (&quiet, 0));
}

gw_server_t *
gw_server_new (const gw_config_t *config)
{
    assert (config);
    if (sodium_init () < 0)
        abort ();
    gw_server_t *self = cm_calloc (1, sizeof *self);
    self->config = config;
    self->metrics = cm_metrics_new ();
    char err[256];
    self->limits = gw_limits_new (&config->limits, err, sizeof err);
    if (!self->limits) {
        cm_error ("%s", err);
        cm_metrics_destroy (&self->metrics);
        free (self);
        return NULL;
    }
    self->started_ms = cm_clock_mono_ms ();
    if (!config->admin_key || !*config->admin_key)
        cm_warn ("ADMIN_API_KEY is not set: only API keys already in the database are "
                 "accepted");
    //  64 random bits: request ids must not repeat across the gateway's
    //  restarts (chatd saves a turn once per request id).
    uint64_t prefix;
    randombytes_buf (&prefix, sizeof prefix);
    snprintf (self->id_prefix, sizeof self->id_prefix, "%016llx",
              (unsigned long long) prefix);

    gw_broker_config_t broker_config = {.bind = config->backend_bind,
                                        .heartbeat_ms = config->heartbeat_ms,
                                        .liveness = config->liveness,
                                        .instance_wait_ms = config->instance_wait_ms};
    self->broker = gw_broker_new (&broker_config);
    if (!self->broker)
        goto fail;
    gw_metrics_config_t metrics_config = {.broker = self->broker,
                                          .limits = self->limits,
                                          .supervisor = config->supervisor,
                                          .report_ms = config->report_ms,
                                          .query_timeout_ms = config->metrics_timeout_ms};
    self->observer = gw_metrics_new (self->metrics, &metrics_config);
    char storage_dir[1024];
    if (config->storage_dir && *config->storage_dir)
        snprintf (storage_dir, sizeof storage_dir, "%s", config->storage_dir);
    else
        snprintf (storage_dir, sizeof storage_dir, "%s/storage", config->run_dir);
    self->health =
        gw_health_new (storage_dir, config->redis_url, config->health_interval, 250);
    self->keys = gw_keys_new (storage_dir, config->admin_key, config->key_cache_ttl_ms);

    struct sockaddr_in addr = {0};
    addr.sin_family = AF_INET;
    addr.sin_port = htons ((uint16_t) config->port);
    if (inet_pton (AF_INET, config->host, &addr.sin_addr) != 1) {
        cm_error ("SERVER_HOST: '%s' is not an IPv4 address", config->host);
        goto fail;
    }
    unsigned threads = (unsigned) config->threads;
    if (threads == 0) {
        long cpus = sysconf (_SC_NPROCESSORS_ONLN);
        threads = cpus > 0 ? (unsigned) cpus : 1;
    }
    self->daemon = MHD_start_daemon (
        MHD_USE_EPOLL_INTERNAL_THREAD | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ERROR_LOG, 0,
        NULL, NULL, s_handler, self,
        //  First, or some messages go to libmicrohttpd's own logger.
        MHD_OPTION_EXTERNAL_LOGGER, s_mhd_log, NULL, MHD_OPTION_SOCK_ADDR,
        (struct sockaddr *) &addr, MHD_OPTION_THREAD_POOL_SIZE, threads,
        MHD_OPTION_URI_LOG_CALLBACK, s_uri_logger, self, MHD_OPTION_NOTIFY_COMPLETED,
        s_completed, self, MHD_OPTION_CONNECTION_LIMIT,
        (unsigned) config->max_connections, MHD_OPTION_CONNECTION_TIMEOUT,
        (unsigned) (config->idle_timeout_s ? config->idle_timeout_s : 120),
        //  libmicrohttpd's default is 32 KiB per connection, most of a held
        //  stream's cost in the gateway; 8 KiB holds several KiB of headers.
        MHD_OPTION_CONNECTION_MEMORY_LIMIT, s_connection_memory (config),
        MHD_OPTION_LISTENING_ADDRESS_REUSE, 1, MHD_OPTION_END);
    if (!self->daemon) {
        cm_error ("cannot listen on %s:%lld (in use, or not allowed)", config->host,
                  (long long) config->port);
        goto fail;
    }
    const union MHD_DaemonInfo *info =
        MHD_get_daemon_info (self->daemon, MHD_DAEMON_INFO_BIND_PORT);
    self->port = info ? info->port : (int) config->port;
    cm_info ("gateway listening on http://%s:%d, backend %s, %u HTTP threads",
             config->host, self->port, config->backend_bind, threads);
    return self;
fail:
    gw_metrics_destroy (&self->observer);
    gw_broker_destroy (&self->broker);
    gw_limits_destroy (&self->limits);
    gw_health_destroy (&self->health);
    gw_keys_destroy (&self->keys);
    cm_metrics_destroy (&self->metrics);
    free (self);
    return NULL;
}

void
gw_server_destroy (gw_server_t **self_p)
{
    assert (self_p);
    gw_server_t *self = *self_p;
    if (!self)
        return;
    //  No new forwarding; the broker answers and resumes every suspended
    //  connection; MHD must not be stopped while one is still suspended.
    //  (No MHD_quiesce_daemon: with an epoll thread pool, 0.9.75 can abort
    //  in it ("Failed to remove listen FD from epoll set"). New requests
    //  meanwhile are answered 503 by the stopping flag.)
    atomic_store (&self->stopping, true);
    gw_broker_close (self->broker);
    gw_metrics_close (self->observer);
    int64_t until = cm_clock_mono_ms () + 5000;
    while (atomic_load (&self->open_exchanges) > 0 && cm_clock_mono_ms () < until)
        usleep (5 * 1000);
    if (atomic_load (&self->open_exchanges) > 0)
        cm_warn ("%d requests still open at shutdown",
                 atomic_load (&self->open_exchanges));
    MHD_stop_daemon (self->daemon);
    //  Its collector reads the broker and the limits: it goes first.
    gw_metrics_destroy (&self->observer);
    gw_broker_destroy (&self->broker);
    gw_limits_destroy (&self->limits);
    gw_health_destroy (&self->health);
    gw_keys_destroy (&self->keys);
    cm_metrics_destroy (&self->metrics);
    free (self);
    *self_p = NULL;
}

int
gw_server_port (gw_server_t *self)
{
    assert (self);
    return self->port;
}

gw_limits_t *
gw_server_limits (gw_server_t *self)
{
    assert (self);
    return self->limits;
}

cm_metrics_t *
gw_server_metrics (gw_server_t *self)
{
    assert (self);
    return self->metrics;
}
