/*  cm_worker.h: a daemon's side of the gateway protocol.

    A cm_worker owns one DEALER socket connected to the gateway (on its own
    I/O thread) and a bounded queue (cm_queue) of handler threads. It says
    READY with its service name, instance id and capacity, heartbeats, and
    reconnects (READY again) when the gateway stops answering or says it does
    not know us. Each REQUEST is matched against the route table and its
    handler runs on a queue thread with a cm_call_t; a full queue is answered
    429 with Retry-After at once. CANCEL marks the call cancelled (or drops
    it while it still waits in the queue).

    Threading: cm_worker_* functions are called by the thread that created
    the worker. A cm_call_t belongs to the handler thread that runs it;
    cm_call_cancelled may be read from any thread. Replies are handed to the
    I/O thread through a mailbox, so handlers never touch ZeroMQ. */
#ifndef CM_WORKER_H_INCLUDED
#define CM_WORKER_H_INCLUDED

#include "cm_common.h"
#include "cm_metrics.h"
#include <jansson.h>

typedef struct cm_worker_s cm_worker_t;
typedef struct cm_call_s cm_call_t;

typedef void (cm_worker_handler_fn) (cm_call_t *call, void *arg);

//  One route: method and a path pattern whose "{name}" segments match one
//  path segment each (read them with cm_call_param). Tables end with a NULL
//  method. A quick route (a read, a small write) runs on the worker's
//  quick lane when it has one (quick_concurrency), so that it never waits
//  behind the long calls of the main queue (a stream can hold its slot for
//  minutes).
typedef struct {
    const char *method;
    const char *pattern;
    cm_worker_handler_fn *handler;
    bool quick;
} cm_route_t;

typedef struct {
    const char *service;      //  "chat", "ingest", "agent"
    const char *instance;     //  unique id of this instance (NULL: host-pid)
    const char *endpoint;     //  the gateway's backend (GATEWAY_ENDPOINT)
    size_t concurrency;       //  handler threads (the queue's concurrency)
    size_t max_pending;       //  waiting line beyond the running ones
    size_t quick_concurrency; //  the quick lane's handler threads (0: none;
                              //  quick routes then share the main queue)
    size_t quick_max_pending; //  its waiting line
    int64_t heartbeat_ms;     //  heartbeat interval
    int64_t liveness;         //  missed heartbeats before the peer is dead
    int64_t drain_ms;         //  on stop, how long open calls may finish
    const cm_route_t *routes; //  the route table (borrowed)
    void *arg;                //  passed to every handler
    cm_metrics_t *metrics;    //  registry (borrowed; NULL: the worker makes its own)
    const char *supervisor;   //  SUPERVISOR_ENDPOINT to report metrics to (NULL: none)
    int64_t report_ms;        //  METRICS_REPORT_INTERVAL_MS (<= 0: 1000)
} cm_worker_config_t;

//  Create and start a worker (connects at once). Caller owns it.
cm_worker_t *cm_worker_new (const cm_worker_config_t *config);
//  Stop: say DISCONNECT so no new work comes, let open calls finish for up
//  to drain_ms, then cancel the rest and free. NULL-safe; nulls the pointer.
void cm_worker_destroy (cm_worker_t **self_p);
//  Instance id in use (borrowed).
const char *cm_worker_instance (cm_worker_t *self);
//  Calls received, for tests and metrics.
uint64_t cm_worker_served (cm_worker_t *self);
//  The registry the worker reports (borrowed: the config's, or its own).
//  It holds the worker's series: llmrt_worker_requests_total{method,route},
//  llmrt_worker_request_duration_seconds{method,route} (from receipt to the
//  end of the handler), llmrt_worker_unmatched_requests_total and
//  llmrt_worker_dropped_frames_total. With a supervisor endpoint, a
//  cm_reporter sends its snapshot there every report_ms, as service
//  `service`, instance `instance`.
cm_metrics_t *cm_worker_metrics (cm_worker_t *self);

//  Standard daemon main: read the common daemon settings from the
//  environment, run a worker for this service until SIGINT/SIGTERM, drain,
//  exit. metrics: the daemon's registry, whose series (breakers...) are
//  reported with the worker's (borrowed; NULL: the worker makes its own).
//  Returns the process exit code.
int cm_worker_main (const char *service, const cm_route_t *routes, void *arg,
                    size_t concurrency, size_t max_pending, cm_metrics_t *metrics);

//  A daemon's command line: --help (its settings, then the common daemon
//  settings) and --version, as cm_main_args. Returns -1 when the daemon
//  should go on, else its exit code (0 after help or version, 2 for an
//  unknown argument).
int cm_worker_args (int argc, char **argv, const char *program, const char *summary,
                    const struct cm_conf_entry_s *table);

//  The common daemon settings (GATEWAY_ENDPOINT, INSTANCE_ID, heartbeats,
//  drain, SUPERVISOR_ENDPOINT, METRICS_REPORT_INTERVAL_MS, LOG_LEVEL), for
//  --help and the README.
const struct cm_conf_entry_s *cm_worker_config_table (void);

//  Read the common daemon settings from the environment and check them (an
//  INSTANCE_ID that cannot be a routing id, an endpoint that cannot work, a
//  LOG_LEVEL that is none), and apply LOG_LEVEL. Returns 0, or -1 with a
//  message naming the variable in err. Daemons call it before they open
//  anything, so that a bad setting stops them (exit 2) at once;
//  cm_worker_main checks the same again.
int cm_worker_config_check (char *err, size_t errlen);

//  Match a path against a route pattern whose "{name}" segments match one
//  non-empty path segment. Returns true on a match.
bool cm_route_match (const char *pattern, const char *path);

//  --- cm_call: one request being served -----------------------------------

const char *cm_call_request_id (cm_call_t *self);
const char *cm_call_method (cm_call_t *self);
//  Path without the query string.
const char *cm_call_path (cm_call_t *self);
//  Value of a "{name}" segment of the matched route (borrowed), or NULL.
const char *cm_call_param (cm_call_t *self, const char *name);
//  A query-string parameter, percent-decoded (borrowed), or NULL.
const char *cm_call_query (cm_call_t *self, const char *name);
//  How many distinct named parameters the query string has (0: none).
size_t cm_call_query_count (cm_call_t *self);
//  Caller identity as the gateway authenticated it.
const char *cm_call_identity (cm_call_t *self);
//  A request header the gateway forwarded (borrowed), or NULL.
const char *cm_call_header (cm_call_t *self, const char *name);
const char *cm_call_body (cm_call_t *self, size_t *size_p);
//  The body parsed as JSON (borrowed; NULL when empty or not JSON).
json_t *cm_call_json (cm_call_t *self);
//  Wall-clock deadline in ms (0: none).
int64_t cm_call_deadline (cm_call_t *self);
//  True once the client is gone, a CANCEL came, or the deadline passed.
//  Long handlers poll this and stop early.
bool cm_call_cancelled (cm_call_t *self);
//  True when the call was cancelled because this daemon is shutting down
//  (its drain ended), not by its client: a handler that returns without
//  a reply is answered 503 (the gateway may send it elsewhere), and a
//  stream it ends is ended 503 (the client gets an abort event).
bool cm_call_shutting_down (cm_call_t *self);
//  From when (cm_clock_mono_us) this request may run (or have run) at
//  another instance too: at once (0) when the gateway sent it a second
//  time (its first instance died, or seemed to) or when it came after this
//  worker sent nothing for half of HEARTBEAT_LIVENESS intervals; else once
//  it has run here for that long. Either spans a silence after which the
//  gateway may give this instance up and send its requests elsewhere.
//  Work that must happen once (chatd saving a turn) then looks for the
//  other run's first, under the same lock as its own write.
int64_t cm_call_twice_from_us (cm_call_t *self);

//  Add a response header to the next reply message (e.g. Retry-After).
void cm_call_header_add (cm_call_t *self, const char *name, const char *value);
//  Send the whole reply (FINAL). At most one FINAL per call.
void cm_call_reply (cm_call_t *self, int status, const char *content_type,
                    const void *body, size_t size);
//  Reply with JSON; takes the reference to value.
void cm_call_reply_json (cm_call_t *self, int status, json_t *value);
//  Reply {"error": message} style errors in one call.
void cm_call_reply_error (cm_call_t *self, int status, const char *message);
//  Stream: the first chunk fixes status and content type (PARTIAL).
void cm_call_stream (cm_call_t *self, int status, const char *content_type,
                     const void *data, size_t size);
//  Stream one SSE event "data: <json>\n\n" (status 200, text/event-stream);
//  takes the reference to event.
void cm_call_sse (cm_call_t *self, json_t *event);
//  End a stream (FINAL with an empty body; status 503 when shutting down).
void cm_call_stream_end (cm_call_t *self);
//  True once a FINAL was sent.
bool cm_call_replied (cm_call_t *self);

//  Add Retry-After for a wait of retry_ms (an open breaker's), in whole
//  seconds rounded up, at least 1. Returns those seconds, for the message.
//  (Inline: built only on cm_call_header_add, which tests may stand in for.)
static inline int64_t
cm_call_retry_after (cm_call_t *self, int64_t retry_ms)
{
    int64_t seconds = retry_ms > 1000 ? (retry_ms + 999) / 1000 : 1;
    char value[24];
    snprintf (value, sizeof value, "%lld", (long long) seconds);
    cm_call_header_add (self, "Retry-After", value);
    return seconds;
}

#endif
