/*  cm_worker.c: see cm_worker.h.

    Two kinds of threads: the I/O thread owns the DEALER socket and is the
    only one that touches ZeroMQ; the queue's threads run handlers and hand
    encoded replies back through a mailbox. The table of live calls (for
    CANCEL) is shared and guarded by a mutex. */
#include "cm_worker.h"
#include "cm_monitor.h"
#include "cm_utf8.h"
#include "cm_config.h"
#include "cm_log.h"
#include "cm_mailbox.h"
#include "cm_msg.h"
#include "cm_queue.h"
#include "cm_reporter.h"
#include <ctype.h>
#include <czmq.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <unistd.h>

#define S_MAX_PARAMS 8

//  How long calls cancelled at the end of a drain get to stop (handlers
//  look at cm_call_cancelled every few milliseconds).
#define S_CANCEL_GRACE_MS 1000

struct cm_call_s {
    cm_worker_t *worker;             //  owning worker
    cm_msg_t *request;               //  the REQUEST message
    const cm_route_t *route;         //  matched route
    char *path;                      //  path without query
    char *param_names[S_MAX_PARAMS]; //  "{name}" segments of the route
    char *param_values[S_MAX_PARAMS];
    size_t param_count;
    zhash_t *query;          //  decoded query string, built on first use
    json_t *json;            //  parsed body, built on first use
    bool json_parsed;        //  json was attempted
    atomic_bool cancelled;   //  CANCEL came or client gone
    atomic_bool shutdown;    //  cancelled because the drain ended
    bool replied;            //  FINAL sent
    int status;              //  status of the reply (its first part's)
    bool streaming;          //  a PARTIAL was sent
    atomic_uint partials;    //  PARTIALs posted (for the gateway's CHECK)
    cm_msg_t *reply_headers; //  headers for the next reply (FINAL type as holder)
    int64_t received_us;     //  mono µs when the REQUEST arrived (for its duration)
    int64_t twice_from_us;   //  see cm_call_twice_from_us
    struct cm_call_s *next;  //  link in the live-call list
};

typedef struct {
    char *data; //  encoded frame
    size_t size;
} s_frame_t;

struct cm_worker_s {
    cm_worker_config_t config; //  copy; strings below are owned copies
    char *service;             //  service name
    char *instance;            //  instance id
    char *endpoint;            //  gateway backend
    cm_queue_t *queue;         //  bounded handler queue
    cm_queue_t *quick;         //  the quick routes' own, or NULL
    cm_mailbox_t *outbox;      //  frames from handler threads to the I/O thread
    pthread_t io_thread;       //  owns the socket
    cm_monitor_t *monitor;     //  the socket's connection events, or NULL
    atomic_bool stopping;      //  destroy has begun: say DISCONNECT, drain
    atomic_bool stopped;       //  I/O thread should exit
    int64_t last_beat_us;      //  mono µs of our last HEARTBEAT (I/O thread)
    int64_t stall_end_us;      //  mono µs when the I/O thread last found it
                               //  had stood still (I/O thread)
    int64_t window_us;         //  half the gateway's patience: heartbeat x
                               //  liveness / 2

    pthread_mutex_t calls_lock;  //  guards calls
    cm_call_t *calls;            //  live calls (for CANCEL)
    pthread_mutex_t parts_lock;  //  a PARTIAL's post and count as one step
                                 //  (s_handle_check)
    atomic_uint_fast64_t served; //  requests received
    uint64_t dropped;            //  malformed frames (I/O thread only)
    cm_metrics_t *metrics;       //  the registry reported (owned when own_metrics)
    bool own_metrics;            //  we made the registry
    cm_metric_t **requests;      //  llmrt_worker_requests_total, one per route
    cm_metric_t **durations;     //  llmrt_worker_request_duration_seconds, per route
    cm_metric_t *unmatched;      //  llmrt_worker_unmatched_requests_total
    cm_metric_t *dropped_frames; //  llmrt_worker_dropped_frames_total
    cm_reporter_t *reporter;     //  sends snapshots to the supervisor, or NULL
};

static void *s_io_thread (void *arg);
static void s_metrics_init (cm_worker_t *self);
static cm_queue_outcome_t s_run_call (void *task, void *arg);
static void s_drop_call (void *task, cm_queue_drop_t why, void *arg);
static void s_call_destroy (cm_call_t **self_p);

cm_worker_t *
cm_worker_new (const cm_worker_config_t *config)
{
    assert (config && config->service && config->endpoint && config->routes);
    //  A ZeroMQ routing id is 1..255 bytes (INSTANCE_ID is checked so).
    assert (!config->instance || strlen (config->instance) < 256);
    cm_worker_t *self = cm_calloc (1, sizeof *self);
    self->config = *config;
    self->service = cm_strdup (config->service);
    self->endpoint = cm_strdup (config->endpoint);
    if (config->instance && *config->instance)
        self->instance = cm_strdup (config->instance);
    else {
        char host[128] = "host";
        gethostname (host, sizeof host - 1);
        self->instance = cm_malloc (strlen (host) + strlen (config->service) + 32);
        sprintf (self->instance, "%s-%s-%d", config->service, host, (int) getpid ());
    }
    if (self->config.heartbeat_ms <= 0)
        self->config.heartbeat_ms = 1000;
    if (self->config.liveness <= 0)
        self->config.liveness = 3;
    pthread_mutex_init (&self->calls_lock, NULL);
    pthread_mutex_init (&self->parts_lock, NULL);
    self->outbox = cm_mailbox_new ();
    self->queue = cm_queue_new (self->service, config->concurrency, config->max_pending,
                                s_run_call, s_drop_call, self);
    if (config->quick_concurrency) {
        char name[64];
        snprintf (name, sizeof name, "%s-quick", self->service);
        self->quick =
            cm_queue_new (name, config->quick_concurrency, config->quick_max_pending,
                          s_run_call, s_drop_call, self);
    }
    s_metrics_init (self);
    //  The queues' series join the same registry (depth, active, limits,
    //  wait and run time, outcomes).
    cm_queue_attach_metrics (self->queue, self->metrics);
    if (self->quick)
        cm_queue_attach_metrics (self->quick, self->metrics);
    if (config->supervisor && *config->supervisor) {
        cm_reporter_config_t reporter = {.metrics = self->metrics,
                                         .endpoint = config->supervisor,
                                         .service = self->service,
                                         .instance = self->instance,
                                         .interval_ms = config->report_ms};
        self->reporter = cm_reporter_new (&reporter);
    }
    if (pthread_create (&self->io_thread, NULL, s_io_thread, self))
        abort ();
    return self;
}

//  The worker's own series, registered up front so that every route shows
//  (at zero) from the first report on; request paths only add to them.
static void
s_metrics_init (cm_worker_t *self)
{
    self->own_metrics = self->config.metrics == NULL;
    self->metrics = self->own_metrics ? cm_metrics_new () : self->config.metrics;
    size_t routes = 0;
    while (self->config.routes[routes].method)
        routes++;
    self->requests = cm_calloc (routes, sizeof *self->requests);
    self->durations = cm_calloc (routes, sizeof *self->durations);
    for (size_t i = 0; i < routes; i++) {
        const cm_route_t *route = &self->config.routes[i];
        const char *labels[] = {"method", route->method, "route", route->pattern, NULL};
        self->requests[i] = cm_metrics_counter (
            self->metrics, "llmrt_worker_requests_total",
            "Requests received by this instance, by route (before the queue decides).",
            labels);
        self->durations[i] = cm_metrics_histogram (
            self->metrics, "llmrt_worker_request_duration_seconds",
            "From a request's arrival to the end of its handler (waiting in the "
            "queue included), for requests that ran.",
            labels, cm_metrics_latency_buckets, cm_metrics_latency_bucket_count);
    }
    self->unmatched = cm_metrics_counter (
        self->metrics, "llmrt_worker_unmatched_requests_total",
        "Requests for no route of this daemon (answered 404 or 405).", NULL);
    self->dropped_frames = cm_metrics_counter (
        self->metrics, "llmrt_worker_dropped_frames_total",
        "Frames from the gateway dropped as malformed or unexpected.", NULL);
}

static void
s_frame_free (void *item)
{
    s_frame_t *frame = item;
    free (frame->data);
    free (frame);
}

//  Calls still running (or, with waiting, also waiting) on either queue?
static bool
s_busy (cm_worker_t *self, bool waiting)
{
    cm_queue_t *queues[] = {self->queue, self->quick};
    for (size_t i = 0; i < 2; i++) {
        if (!queues[i])
            continue;
        cm_queue_stats_t stats;
        cm_queue_stats (queues[i], &stats);
        if (stats.active || (waiting && stats.pending))
            return true;
    }
    return false;
}

void
cm_worker_destroy (cm_worker_t **self_p)
{
    assert (self_p);
    cm_worker_t *self = *self_p;
    if (!self)
        return;
    //  Stop new work first, then let open calls finish for up to drain_ms.
    atomic_store (&self->stopping, true);
    int64_t until = cm_clock_mono_ms () + self->config.drain_ms;
    while (cm_clock_mono_ms () < until && s_busy (self, true))
        usleep (10 * 1000);
    //  Whatever still runs is told to stop, and given a moment to: its
    //  answer (503, or a stream ended 503) must leave before the I/O
    //  thread does, or the gateway only sees the connection close.
    pthread_mutex_lock (&self->calls_lock);
    for (cm_call_t *call = self->calls; call; call = call->next) {
        atomic_store (&call->shutdown, true);
        atomic_store (&call->cancelled, true);
    }
    pthread_mutex_unlock (&self->calls_lock);
    int64_t grace = cm_clock_mono_ms () + S_CANCEL_GRACE_MS;
    while (cm_clock_mono_ms () < grace && s_busy (self, false))
        usleep (5 * 1000);
    //  Close (not free) the queues: the I/O thread still reads their stats
    //  and sends the replies of the calls that finish now.
    cm_queue_close (self->queue);
    if (self->quick)
        cm_queue_close (self->quick);
    atomic_store (&self->stopped, true);
    uint64_t one = 1;
    ssize_t rc = write (cm_mailbox_fd (self->outbox), &one, sizeof one);
    (void) rc;
    pthread_join (self->io_thread, NULL);
    //  Reports stop before the queue goes: a snapshot reads the queue.
    cm_reporter_destroy (&self->reporter);
    cm_queue_destroy (&self->queue);
    cm_queue_destroy (&self->quick);
    cm_mailbox_destroy (&self->outbox, s_frame_free);
    pthread_mutex_destroy (&self->calls_lock);
    pthread_mutex_destroy (&self->parts_lock);
    free (self->requests);
    free (self->durations);
    if (self->own_metrics)
        cm_metrics_destroy (&self->metrics);
    free (self->service);
    free (self->instance);
    free (self->endpoint);
    free (self);
    *self_p = NULL;
}

const char *
cm_worker_instance (cm_worker_t *self)
{
    assert (self);
    return self->instance;
}

uint64_t
cm_worker_served (cm_worker_t *self)
{
    assert (self);
    return atomic_load (&self->served);
}

cm_metrics_t *
cm_worker_metrics (cm_worker_t *self)
{
    assert (self);
    return self->metrics;
}

//  --- I/O thread ------------------------------------------------------------

static void
s_send_msg (zsock_t *sock, cm_msg_t *msg)
{
    char *data;
    size_t size;
    cm_msg_encode (msg, &data, &size);
    zmq_send (zsock_resolve (sock), data, size, ZMQ_DONTWAIT);
    free (data);
}

static void
s_post_msg (cm_worker_t *self, cm_msg_t *msg)
{
    s_frame_t *frame = cm_malloc (sizeof *frame);
    cm_msg_encode (msg, &frame->data, &frame->size);
    cm_mailbox_post (self->outbox, frame);
}

static uint32_t
s_free_slots (cm_worker_t *self)
{
    cm_queue_stats_t stats;
    cm_queue_stats (self->queue, &stats);
    size_t busy = stats.active + stats.pending;
    return busy >= stats.concurrency ? 0 : (uint32_t) (stats.concurrency - busy);
}

//  READY: our service, instance id and capacity.
static void
s_send_ready (cm_worker_t *self, zsock_t *sock)
{
    cm_msg_t *ready = cm_msg_new (CM_MSG_READY);
    cm_msg_set_service (ready, self->service);
    cm_msg_set_instance (ready, self->instance);
    cm_msg_set_capacity (ready, (uint32_t) self->config.concurrency);
    s_send_msg (sock, ready);
    cm_msg_destroy (&ready);
}

//  HEARTBEAT with our free slots (none once we say goodbye).
static void
s_send_beat (cm_worker_t *self, zsock_t *sock, bool said_goodbye)
{
    cm_msg_t *beat = cm_msg_new (CM_MSG_HEARTBEAT);
    cm_msg_set_capacity (beat, said_goodbye ? 0 : s_free_slots (self));
    s_send_msg (sock, beat);
    cm_msg_destroy (&beat);
    self->last_beat_us = cm_clock_mono_us ();
}

//  The one socket to the gateway, for the life of the worker. libzmq
//  reconnects it by itself when the connection breaks (a restarted
//  gateway), and ZMTP heartbeats break a connection that went silent (a
//  lost peer that closed nothing). It is never replaced by a new socket:
//  the old one would linger to flush its queue, connect with the same
//  routing id as the new one, take the id over at the gateway (ROUTER
//  handover) and leave the instance unreachable when it closed.
static zsock_t *
s_connect (cm_worker_t *self)
{
    zsock_t *sock = zsock_new (ZMQ_DEALER);
    assert (sock);
    zsock_set_identity (sock, self->instance);
    zsock_set_linger (sock, 1000);
    //  Replies must not pile up without bound when the gateway is away.
    zsock_set_sndhwm (sock, 100000);
    int64_t silence = self->config.heartbeat_ms * self->config.liveness;
    zsock_set_heartbeat_ivl (sock, (int) self->config.heartbeat_ms);
    //  ZMTP's heartbeat breaks a connection that went silent without
    //  closing (a lost peer), so that libzmq makes it again. Not as soon as
    //  our own patience ends: a gateway that only stood still that long
    //  (its process stopped, its VM stalled) keeps the connection and
    //  everything on it; a broken one loses frames, which the gateway must
    //  then find (CHECK, protocol.md: "A connection that broke"). Four
    //  times the patience: streams through gateway freezes of 4.5 s, 8 of
    //  312 aborted with a timeout of one patience, none with four.
    zsock_set_heartbeat_timeout (sock, (int) (4 * silence));
    //  A connection that broke (our heartbeat timed out while the gateway
    //  stood still) is made again within 10-20 ms, not libzmq's 100-200:
    //  the gateway gives up an instance it cannot reach for S_UNREACHABLE_MS
    //  (gw_broker.c), and one that only reconnects must be back by then.
    //  While the gateway is down, a try every 100 ms at most.
    zsock_set_reconnect_ivl (sock, 10);
    zsock_set_reconnect_ivl_max (sock, 100);
    //  libzmq's monitor reports each connection the socket makes, so that
    //  a reconnect (a restarted gateway) is answered with READY at once
    //  rather than at our next heartbeat. Without it (it could not be set
    //  up) the heartbeat still does it, up to one interval later.
    self->monitor = cm_monitor_new (sock, ZMQ_EVENT_CONNECTED, "the gateway connection");
    if (zsock_connect (sock, "%s", self->endpoint)) {
        cm_error ("cannot connect to the gateway at %s", self->endpoint);
        cm_monitor_destroy (&self->monitor);
        zsock_destroy (&sock);
        return NULL;
    }
    s_send_ready (self, sock);
    return sock;
}

//  Match "/a/{x}/b" against "/a/7/b"; fills the call's params. As Express
//  (upstream's router) does: the raw path is matched segment by segment, a
//  parameter's value is then percent-decoded ("d%6Fcs" is "docs", "a%2Fb"
//  stays one segment "a/b"), and one trailing slash is allowed. A value
//  that decodes to a NUL byte matches nothing (it would cut the string).
static void s_call_params_clear (cm_call_t *call);

static bool
s_route_match (const char *pattern, const char *path, cm_call_t *call)
{
    call->param_count = 0;
    const char *p = pattern, *s = path;
    while (*p && *s) {
        if (*p == '{') {
            const char *close = strchr (p, '}');
            assert (close);
            const char *end = strchr (s, '/');
            size_t len = end ? (size_t) (end - s) : strlen (s);
            if (len == 0 || call->param_count == S_MAX_PARAMS)
                return false;
            size_t size;
            char *value = cm_percent_decode (s, len, false, &size);
            if (strlen (value) != size) {
                free (value);
                return false;
            }
            call->param_names[call->param_count] =
                cm_strndup (p + 1, (size_t) (close - p - 1));
            call->param_values[call->param_count] = value;
            call->param_count++;
            p = close + 1;
            s += len;
        } else if (tolower ((unsigned char) *p++) != tolower ((unsigned char) *s++))
            return false; //  literal segments ignore case, as Express's do
    }
    return *p == 0 && (*s == 0 || (s[0] == '/' && s[1] == 0));
}

bool
cm_route_match (const char *pattern, const char *path)
{
    cm_call_t scratch = {0};
    bool match = s_route_match (pattern, path, &scratch);
    s_call_params_clear (&scratch);
    return match;
}

static void
s_call_params_clear (cm_call_t *call)
{
    for (size_t i = 0; i < call->param_count; i++) {
        free (call->param_names[i]);
        free (call->param_values[i]);
    }
    call->param_count = 0;
}

static void
s_reply_direct (zsock_t *sock, cm_msg_t *request, int status, const char *error,
                const char *retry_after)
{
    cm_msg_t *reply = cm_msg_new (CM_MSG_FINAL);
    cm_msg_set_request_id (reply, cm_msg_request_id (request));
    cm_msg_set_status (reply, (uint16_t) status);
    cm_msg_set_content_type (reply, "application/json");
    if (retry_after)
        cm_msg_header_add (reply, "Retry-After", retry_after);
    json_t *body = json_pack ("{s:s}", "error", error);
    char *text = json_dumps (body, JSON_COMPACT);
    cm_msg_set_body (reply, text, strlen (text));
    free (text);
    json_decref (body);
    s_send_msg (sock, reply);
    cm_msg_destroy (&reply);
}

static void
s_handle_request (cm_worker_t *self, zsock_t *sock, cm_msg_t **request_p)
{
    cm_msg_t *request = *request_p;
    atomic_fetch_add (&self->served, 1);
    cm_call_t *call = cm_calloc (1, sizeof *call);
    call->worker = self;
    call->received_us = cm_clock_mono_us ();
    //  The gateway gives an instance up after HEARTBEAT_LIVENESS silent
    //  intervals, and then sends its requests elsewhere. A request that
    //  has run here for half of that may have spanned such a silence (the
    //  process frozen or starved: its handler can go on before its I/O
    //  thread even notices), and one that arrives after we sent nothing for
    //  that long (it waited in the socket while we stood still) may have
    //  gone elsewhere already. Quick calls, nearly all when the model is
    //  fast, never look; slow ones (a real model's seconds) can afford to.
    bool after_stall = call->received_us - self->stall_end_us < self->window_us ||
                       call->received_us - self->last_beat_us >= self->window_us;
    call->twice_from_us = after_stall ? 0 : call->received_us + self->window_us;
    const char *route = cm_msg_route (request);
    const char *q = strchr (route, '?');
    call->path = q ? cm_strndup (route, (size_t) (q - route)) : cm_strdup (route);
    bool path_known = false;
    for (const cm_route_t *r = self->config.routes; r->method; r++) {
        if (s_route_match (r->pattern, call->path, call)) {
            path_known = true;
            if (!strcmp (r->method, cm_msg_method (request))) {
                call->route = r;
                break;
            }
        }
        s_call_params_clear (call);
    }
    if (!call->route) {
        //  The gateway routes by the same table, so this is a version skew.
        cm_metric_add (self->unmatched, 1);
        if (path_known)
            s_reply_direct (sock, request, 405, "Method not allowed.", NULL);
        else
            s_reply_direct (sock, request, 404, "Not found.", NULL);
        s_call_destroy (&call);
        return;
    }
    cm_metric_add (self->requests[call->route - self->config.routes], 1);
    call->request = request;
    *request_p = NULL;
    pthread_mutex_lock (&self->calls_lock);
    call->next = self->calls;
    self->calls = call;
    pthread_mutex_unlock (&self->calls_lock);
    cm_queue_t *queue = call->route->quick && self->quick ? self->quick : self->queue;
    cm_queue_result_t rc = cm_queue_submit (queue, cm_msg_request_id (request), call,
                                            cm_msg_deadline (request));
    if (rc != CM_QUEUE_ACCEPTED) {
        //  Full: refuse at once so the client can retry elsewhere or later.
        s_reply_direct (sock, request, rc == CM_QUEUE_FULL ? 429 : 503,
                        rc == CM_QUEUE_FULL ? "The queue is full; retry later."
                                            : "The service is shutting down.",
                        "1");
        s_drop_call (call, CM_QUEUE_DROP_CANCELLED, self);
    }
}

static void
s_handle_cancel (cm_worker_t *self, cm_msg_t *msg)
{
    const char *id = cm_msg_request_id (msg);
    pthread_mutex_lock (&self->calls_lock);
    for (cm_call_t *call = self->calls; call; call = call->next)
        if (!strcmp (cm_msg_request_id (call->request), id))
            atomic_store (&call->cancelled, true);
    pthread_mutex_unlock (&self->calls_lock);
    //  Still waiting: it never runs (s_drop_call frees it).
    cm_queue_cancel (self->queue, id);
    if (self->quick)
        cm_queue_cancel (self->quick, id);
}

//  Send the frames handler threads posted.
static void
s_flush_outbox (cm_worker_t *self, zsock_t *sock)
{
    s_frame_t *frame;
    while ((frame = cm_mailbox_take (self->outbox))) {
        zmq_send (zsock_resolve (sock), frame->data, frame->size, ZMQ_DONTWAIT);
        s_frame_free (frame);
    }
}

//  The gateway asks whether we hold a request (our connection broke, and
//  frames on it may have been lost). A call leaves the list only after it
//  posted its last reply, so the list is read first and the outbox sent
//  after: a call not found has its reply on the wire before our answer.
//  For one found, its count and the outbox are taken under parts_lock,
//  which a PARTIAL's post and count share: exactly the parts counted leave
//  before the answer (counted first, a part posted meanwhile would go
//  uncounted and could hide a lost one from the gateway; a review found
//  that).
static void
s_handle_check (cm_worker_t *self, zsock_t *sock, cm_msg_t *msg)
{
    const char *id = cm_msg_request_id (msg);
    bool held = false;
    uint32_t partials = 0;
    pthread_mutex_lock (&self->calls_lock);
    pthread_mutex_lock (&self->parts_lock);
    for (cm_call_t *call = self->calls; call; call = call->next)
        if (!strcmp (cm_msg_request_id (call->request), id)) {
            held = true;
            partials = atomic_load (&call->partials);
            break;
        }
    s_flush_outbox (self, sock);
    pthread_mutex_unlock (&self->parts_lock);
    pthread_mutex_unlock (&self->calls_lock);
    cm_msg_t *reply = cm_msg_new (CM_MSG_CHECKED);
    cm_msg_set_request_id (reply, id);
    cm_msg_set_generation (reply, cm_msg_generation (msg));
    cm_msg_set_held (reply, held);
    cm_msg_set_partials (reply, partials);
    s_send_msg (sock, reply);
    cm_msg_destroy (&reply);
}

static void *
s_io_thread (void *arg)
{
    cm_worker_t *self = arg;
    zsock_t *sock = s_connect (self);
    int64_t interval = self->config.heartbeat_ms;
    int64_t now = cm_clock_mono_ms ();
    int64_t next_beat = now + interval;
    int64_t last_heard = now;
    int64_t last_turn_us = now * 1000;
    self->last_beat_us = now * 1000;
    self->stall_end_us = INT64_MIN / 2;
    self->window_us = self->config.heartbeat_ms * 1000 * self->config.liveness / 2;
    int64_t ready_at = INT64_MIN / 2; //  when a reconnect or DISCONNECT made us say READY
    bool lost = false;                //  the gateway has been silent too long
    int64_t lost_at = 0;              //  since when
    bool said_goodbye = false;
    int connects = 0; //  connections made, the monitor says
    char err[256];
    while (!atomic_load (&self->stopped)) {
        if (!sock) {
            //  Could not connect (bad endpoint resolution): retry each beat.
            usleep ((useconds_t) interval * 1000);
            sock = s_connect (self);
            last_heard = cm_clock_mono_ms ();
            continue;
        }
        zmq_pollitem_t items[] = {
            {zsock_resolve (sock), 0, ZMQ_POLLIN, 0},
            {NULL, cm_mailbox_fd (self->outbox), ZMQ_POLLIN, 0},
            {self->monitor ? cm_monitor_socket (self->monitor) : NULL, 0, ZMQ_POLLIN, 0}};
        int64_t timeout = next_beat - cm_clock_mono_ms ();
        if (timeout > 100)
            timeout = 100; //  also the tick for expiring waiting calls
        if (timeout < 0)
            timeout = 0;
        if (zmq_poll (items, self->monitor ? 3 : 2, (long) timeout) < 0)
            continue;
        //  Goodbye first: the gateway must know we are draining before it
        //  reads any 503 we answer from now on, or it passes that 503 to the
        //  client instead of sending the request elsewhere.
        if (atomic_load (&self->stopping) && !said_goodbye) {
            cm_msg_t *bye = cm_msg_new (CM_MSG_DISCONNECT);
            cm_msg_set_reason (bye, "draining");
            s_send_msg (sock, bye);
            cm_msg_destroy (&bye);
            said_goodbye = true;
        }
        //  This loop comes round every 100 ms at most; a longer gap, or no
        //  heartbeat sent for as long, means we stood still (or the gateway
        //  was lost), and requests read now may have waited in the socket
        //  meanwhile (cm_call_twice_from_us).
        int64_t turn_us = cm_clock_mono_us ();
        if (turn_us - last_turn_us >= self->window_us ||
            turn_us - self->last_beat_us >= self->window_us)
            self->stall_end_us = turn_us;
        last_turn_us = turn_us;
        if (self->monitor && (items[2].revents & ZMQ_POLLIN)) {
            //  The first connection gets the READY queued at start. Any
            //  other is a gateway that restarted (or a connection that
            //  broke): it may not know us, so say READY and our free
            //  slots now, also while the gateway was lost: the READY
            //  queued then may have gone into the connection that broke
            //  (libzmq's heartbeat ends it as our patience ends), and a
            //  gateway that gave us up would never hear from us again (an
            //  operator's audit: a gateway frozen for 3.5 s lost two live
            //  chatd for good). A second READY is harmless. A restarted
            //  gateway also asks for READY in answer to frames queued for
            //  its predecessor; ready_at makes that wait an interval.
            int made = cm_monitor_count (self->monitor, ZMQ_EVENT_CONNECTED);
            if (made > 0 && connects + made > 1 && !said_goodbye) {
                cm_info ("connected to the gateway at %s again; saying READY",
                         self->endpoint);
                s_send_ready (self, sock);
                s_send_beat (self, sock, said_goodbye);
                ready_at = cm_clock_mono_ms ();
            }
            connects += made;
        }
        if (items[1].revents & ZMQ_POLLIN)
            s_flush_outbox (self, sock);
        if (items[0].revents & ZMQ_POLLIN) {
            for (int burst = 0; burst < 256; burst++) {
                zmq_msg_t frame;
                zmq_msg_init (&frame);
                if (zmq_msg_recv (&frame, zsock_resolve (sock), ZMQ_DONTWAIT) < 0) {
                    zmq_msg_close (&frame);
                    break;
                }
                last_heard = cm_clock_mono_ms ();
                cm_msg_t *msg = cm_msg_decode (zmq_msg_data (&frame),
                                               zmq_msg_size (&frame), err, sizeof err);
                zmq_msg_close (&frame);
                if (!msg) {
                    self->dropped++;
                    cm_metric_add (self->dropped_frames, 1);
                    cm_warn ("dropped a frame from the gateway: %s (%llu dropped)", err,
                             (unsigned long long) self->dropped);
                    continue;
                }
                switch (cm_msg_type (msg)) {
                    case CM_MSG_REQUEST:
                        if (atomic_load (&self->stopping))
                            s_reply_direct (sock, msg, 503,
                                            "The service is shutting down.", "1");
                        else
                            s_handle_request (self, sock, &msg);
                        break;
                    case CM_MSG_CANCEL:
                        s_handle_cancel (self, msg);
                        break;
                    case CM_MSG_CHECK:
                        s_handle_check (self, sock, msg);
                        break;
                    case CM_MSG_DISCONNECT:
                        //  The gateway does not know us (it restarted): say READY
                        //  again. It asks once for every frame of ours it gets
                        //  (a restarted one gets the replies queued for its
                        //  predecessor too): one READY per heartbeat is enough.
                        if (last_heard - ready_at >= interval) {
                            cm_info ("gateway asked us to register again (%s)",
                                     cm_msg_reason (msg));
                            s_send_ready (self, sock);
                            ready_at = last_heard;
                        }
                        break;
                    case CM_MSG_HEARTBEAT:
                        break;
                    default:
                        self->dropped++;
                        cm_metric_add (self->dropped_frames, 1);
                        cm_warn ("dropped an unexpected %s from the gateway",
                                 cm_msg_type_name (cm_msg_type (msg)));
                }
                cm_msg_destroy (&msg);
            }
        }
        now = cm_clock_mono_ms ();
        cm_queue_expire (self->queue, cm_clock_wall_ms ());
        if (self->quick)
            cm_queue_expire (self->quick, cm_clock_wall_ms ());
        //  While the gateway is silent, heartbeats would only pile up in the
        //  socket's queue: one READY waits there instead, and is the first
        //  thing the gateway (restarted, or reachable again) hears.
        if (lost && last_heard > lost_at) {
            cm_info ("the gateway at %s answers again after %lld ms", self->endpoint,
                     (long long) (last_heard - lost_at));
            lost = false;
        }
        if (now >= next_beat) {
            if (!lost)
                s_send_beat (self, sock, said_goodbye);
            next_beat = now + interval;
        }
        if (!lost && !said_goodbye &&
            now - last_heard > interval * self->config.liveness) {
            cm_warn ("no heartbeat from the gateway at %s for %lld ms; waiting for it",
                     self->endpoint, (long long) (now - last_heard));
            lost = true;
            lost_at = now;
            s_send_ready (self, sock);
        }
    }
    //  Flush the last replies before closing (linger sends them), and say
    //  goodbye if the stop came too fast for the loop to.
    if (sock && !said_goodbye) {
        cm_msg_t *bye = cm_msg_new (CM_MSG_DISCONNECT);
        cm_msg_set_reason (bye, "stopping");
        s_send_msg (sock, bye);
        cm_msg_destroy (&bye);
    }
    if (sock) {
        s_flush_outbox (self, sock);
        cm_monitor_destroy (&self->monitor);
        zsock_destroy (&sock);
    }
    return NULL;
}

//  --- queue callbacks -----------------------------------------------------

static void
s_call_unlink (cm_worker_t *self, cm_call_t *call)
{
    pthread_mutex_lock (&self->calls_lock);
    for (cm_call_t **link = &self->calls; *link; link = &(*link)->next)
        if (*link == call) {
            *link = call->next;
            break;
        }
    pthread_mutex_unlock (&self->calls_lock);
}

static cm_queue_outcome_t
s_run_call (void *task, void *arg)
{
    cm_worker_t *self = arg;
    cm_call_t *call = task;
    if (!atomic_load (&call->cancelled))
        call->route->handler (call, self->config.arg);
    if (!call->replied) {
        if (call->streaming)
            cm_call_stream_end (call);
        else if (atomic_load (&call->shutdown)) {
            //  Cut short by our shutdown: the gateway sends a retryable
            //  request to another instance (protocol.md, "Draining").
            cm_call_header_add (call, "Retry-After", "1");
            cm_call_reply_error (call, 503, "The service is shutting down.");
        } else if (!atomic_load (&call->cancelled))
            cm_call_reply_error (call, 500, "The handler returned no reply.");
    }
    //  For the queue's counters: a 5xx is a failure, a call that saw its
    //  client leave or its deadline pass stopped early.
    cm_queue_outcome_t outcome = atomic_load (&call->cancelled) ? CM_QUEUE_ABORTED
                                 : call->status >= 500          ? CM_QUEUE_FAILED
                                                                : CM_QUEUE_COMPLETED;
    cm_metric_observe (self->durations[call->route - self->config.routes],
                       (double) (cm_clock_mono_us () - call->received_us) / 1e6);
    s_call_unlink (self, call);
    s_call_destroy (&call);
    return outcome;
}

static void
s_drop_call (void *task, cm_queue_drop_t why, void *arg)
{
    cm_worker_t *self = arg;
    cm_call_t *call = task;
    if (why == CM_QUEUE_DROP_TIMEOUT)
        cm_call_reply_error (call, 504,
                             "The request waited in the queue past its deadline.");
    else if (why == CM_QUEUE_DROP_SHUTDOWN) {
        //  It never ran, so it is safe to retry: say so, like every other 503.
        cm_call_header_add (call, "Retry-After", "1");
        cm_call_reply_error (call, 503, "The service is shutting down.");
    }
    s_call_unlink (self, call);
    s_call_destroy (&call);
}

static void
s_call_destroy (cm_call_t **self_p)
{
    cm_call_t *self = *self_p;
    if (!self)
        return;
    s_call_params_clear (self);
    cm_msg_destroy (&self->request);
    cm_msg_destroy (&self->reply_headers);
    zhash_destroy (&self->query);
    json_decref (self->json);
    free (self->path);
    free (self);
    *self_p = NULL;
}

//  --- cm_call -------------------------------------------------------------

const char *
cm_call_request_id (cm_call_t *self)
{
    assert (self);
    return cm_msg_request_id (self->request);
}

const char *
cm_call_method (cm_call_t *self)
{
    assert (self);
    return cm_msg_method (self->request);
}

const char *
cm_call_path (cm_call_t *self)
{
    assert (self);
    return self->path;
}

const char *
cm_call_param (cm_call_t *self, const char *name)
{
    assert (self && name);
    for (size_t i = 0; i < self->param_count; i++)
        if (!strcmp (self->param_names[i], name))
            return self->param_values[i];
    return NULL;
}

const char *
cm_call_query (cm_call_t *self, const char *name)
{
    assert (self && name);
    if (!self->query) {
        self->query = zhash_new ();
        zhash_autofree (self->query);
        const char *q = strchr (cm_msg_route (self->request), '?');
        while (q && *q) {
            q++;
            const char *end = strchr (q, '&');
            size_t len = end ? (size_t) (end - q) : strlen (q);
            const char *eq = memchr (q, '=', len);
            char *key = cm_percent_decode (q, eq ? (size_t) (eq - q) : len, true, NULL);
            char *value =
                eq ? cm_percent_decode (eq + 1, len - (size_t) (eq - q) - 1, true, NULL)
                   : cm_strdup ("");
            if (*key && !zhash_lookup (self->query, key))
                zhash_insert (self->query, key, value);
            free (key);
            free (value);
            q = end;
        }
    }
    return zhash_lookup (self->query, name);
}

size_t
cm_call_query_count (cm_call_t *self)
{
    assert (self);
    //  Builds the table on first use; the name looked up does not matter.
    cm_call_query (self, "?");
    return zhash_size (self->query);
}

const char *
cm_call_identity (cm_call_t *self)
{
    assert (self);
    return cm_msg_identity (self->request);
}

int64_t
cm_call_twice_from_us (cm_call_t *self)
{
    assert (self);
    return cm_msg_header (self->request, "X-Llmrt-Attempt") ? 0 : self->twice_from_us;
}

const char *
cm_call_header (cm_call_t *self, const char *name)
{
    assert (self);
    return cm_msg_header (self->request, name);
}

const char *
cm_call_body (cm_call_t *self, size_t *size_p)
{
    assert (self);
    return cm_msg_body (self->request, size_p);
}

json_t *
cm_call_json (cm_call_t *self)
{
    assert (self);
    if (!self->json_parsed) {
        self->json_parsed = true;
        size_t size;
        const char *body = cm_msg_body (self->request, &size);
        if (size)
            self->json = json_loadb (body, size, 0, NULL);
    }
    return self->json;
}

int64_t
cm_call_deadline (cm_call_t *self)
{
    assert (self);
    return cm_msg_deadline (self->request);
}

bool
cm_call_cancelled (cm_call_t *self)
{
    assert (self);
    if (atomic_load (&self->cancelled))
        return true;
    int64_t deadline = cm_msg_deadline (self->request);
    if (deadline && cm_clock_wall_ms () >= deadline) {
        atomic_store (&self->cancelled, true);
        return true;
    }
    return false;
}

void
cm_call_header_add (cm_call_t *self, const char *name, const char *value)
{
    assert (self && name && value);
    if (!self->reply_headers)
        self->reply_headers = cm_msg_new (CM_MSG_FINAL);
    cm_msg_header_add (self->reply_headers, name, value);
}

//  Build and post one reply message of this type.
static void
s_call_send (cm_call_t *self, cm_msg_type_t type, int status, const char *content_type,
             const void *data, size_t size)
{
    assert (!self->replied);
    cm_msg_t *msg = cm_msg_new (type);
    cm_msg_set_request_id (msg, cm_msg_request_id (self->request));
    cm_msg_set_status (msg, (uint16_t) status);
    cm_msg_set_content_type (msg, content_type ? content_type : "");
    if (self->reply_headers) {
        for (size_t i = 0; i < cm_msg_header_count (self->reply_headers); i++) {
            const char *name, *value;
            cm_msg_header_at (self->reply_headers, i, &name, &value);
            cm_msg_header_add (msg, name, value);
        }
        cm_msg_destroy (&self->reply_headers);
    }
    cm_msg_set_body (msg, data, size);
    if (type == CM_MSG_PARTIAL) {
        //  Posted and counted together: a CHECK's answer counts exactly the
        //  parts that leave before it.
        pthread_mutex_lock (&self->worker->parts_lock);
        s_post_msg (self->worker, msg);
        atomic_fetch_add (&self->partials, 1);
        pthread_mutex_unlock (&self->worker->parts_lock);
        self->streaming = true;
    } else {
        s_post_msg (self->worker, msg);
        self->replied = true;
    }
    if (!self->status)
        self->status = status;
    cm_msg_destroy (&msg);
}

void
cm_call_reply (cm_call_t *self, int status, const char *content_type, const void *body,
               size_t size)
{
    assert (self);
    s_call_send (self, CM_MSG_FINAL, status, content_type, body, size);
}

//  Floats as people wrote them (0.7, not 0.69999999999999996).
#define S_JSON_FLAGS (JSON_COMPACT | JSON_REAL_PRECISION (15))

void
cm_call_reply_json (cm_call_t *self, int status, json_t *value)
{
    assert (self);
    //  NULL comes from json_pack on bad input (invalid UTF-8 upstream).
    char *text = value ? json_dumps (value, S_JSON_FLAGS) : NULL;
    json_decref (value);
    if (!text) {
        const char *error = "{\"error\":\"The reply could not be encoded as JSON.\"}";
        cm_call_reply (self, 500, "application/json", error, strlen (error));
        return;
    }
    cm_call_reply (self, status, "application/json", text, strlen (text));
    free (text);
}

void
cm_call_reply_error (cm_call_t *self, int status, const char *message)
{
    //  Messages quote what came in (a name, a path), which JSON may not take.
    char *text = cm_utf8_dup (message);
    cm_call_reply_json (self, status, json_pack ("{s:s}", "error", text));
    free (text);
}

void
cm_call_stream (cm_call_t *self, int status, const char *content_type, const void *data,
                size_t size)
{
    assert (self);
    s_call_send (self, CM_MSG_PARTIAL, status, content_type, data, size);
}

void
cm_call_sse (cm_call_t *self, json_t *event)
{
    assert (self);
    char *text = event ? json_dumps (event, S_JSON_FLAGS) : NULL;
    json_decref (event);
    if (!text)
        text = cm_strdup (
            "{\"type\":\"abort\",\"textResponse\":null,\"sources\":[],"
            "\"close\":true,\"error\":\"The event could not be encoded as JSON.\"}");
    size_t len = strlen (text);
    char *line = cm_malloc (len + 9);
    memcpy (line, "data: ", 6);
    memcpy (line + 6, text, len);
    memcpy (line + 6 + len, "\n\n", 2);
    free (text);
    cm_call_stream (self, 200, "text/event-stream", line, len + 8);
    free (line);
}

void
cm_call_stream_end (cm_call_t *self)
{
    assert (self);
    //  A stream cut short by our shutdown ends 503: the gateway tells the
    //  client with an abort event (or sends it elsewhere if nothing was
    //  streamed yet), as when an instance dies.
    s_call_send (self, CM_MSG_FINAL, atomic_load (&self->shutdown) ? 503 : 200,
                 "text/event-stream", "", 0);
}

bool
cm_call_shutting_down (cm_call_t *self)
{
    assert (self);
    return atomic_load (&self->shutdown);
}

bool
cm_call_replied (cm_call_t *self)
{
    assert (self);
    return self->replied;
}

//  --- standard daemon main -----------------------------------------------

typedef struct {
    char *endpoint;
    char *instance;
    int64_t quick_concurrency;
    int64_t quick_max_pending;
    int64_t heartbeat_ms;
    int64_t liveness;
    int64_t drain_ms;
    char *supervisor;
    int64_t report_ms;
    char *log_level;
} s_daemon_config_t;

static const cm_conf_entry_t s_daemon_table[] = {
    {"GATEWAY_ENDPOINT", CM_CONF_ENDPOINT, "tcp://127.0.0.1:5555", 0, 0,
     offsetof (s_daemon_config_t, endpoint),
     "the gateway's ZeroMQ backend to connect to"},
    //  It is the ZeroMQ routing id the gateway knows us by: 1..255 bytes,
    //  and printable so that logs and metrics can show it.
    {"INSTANCE_ID", CM_CONF_TOKEN, NULL, 0, 255, offsetof (s_daemon_config_t, instance),
     "this instance's id, unique per replica: 1 to 255 printable ASCII characters, "
     "no spaces (default service-host-pid)"},
    {"QUICK_QUEUE_CONCURRENCY", CM_CONF_INT, "2", 0, 1024,
     offsetof (s_daemon_config_t, quick_concurrency),
     "requests of the quick routes (reads, small writes) served at once, on a lane "
     "of their own beside the daemon's queue, so that they never wait behind its long "
     "calls (0: no lane; they share the queue)"},
    {"QUICK_QUEUE_MAX_PENDING", CM_CONF_INT, "64", 0, 100000,
     offsetof (s_daemon_config_t, quick_max_pending),
     "quick requests that may wait; beyond that 429 with Retry-After"},
    {"HEARTBEAT_INTERVAL_MS", CM_CONF_INT, "1000", 10, 60000,
     offsetof (s_daemon_config_t, heartbeat_ms), "heartbeat period, both directions"},
    {"HEARTBEAT_LIVENESS", CM_CONF_INT, "3", 1, 100,
     offsetof (s_daemon_config_t, liveness),
     "missed heartbeats before a peer counts as dead"},
    {"DRAIN_TIMEOUT_MS", CM_CONF_INT, "10000", 0, 3600000,
     offsetof (s_daemon_config_t, drain_ms),
     "on SIGTERM, how long open requests may finish"},
    {"SUPERVISOR_ENDPOINT", CM_CONF_ENDPOINT, CM_REPORTER_ENDPOINT, 0, 0,
     offsetof (s_daemon_config_t, supervisor),
     "the supervisor's metrics endpoint, where this instance reports"},
    {"METRICS_REPORT_INTERVAL_MS", CM_CONF_INT, "1000", 10, 600000,
     offsetof (s_daemon_config_t, report_ms),
     "how often this instance reports its metrics to the supervisor"},
    CM_LOG_CONF_ENTRY (s_daemon_config_t, log_level),
    {NULL, 0, NULL, 0, 0, 0, NULL},
};

const cm_conf_entry_t *
cm_worker_config_table (void)
{
    return s_daemon_table;
}

//  Load the common daemon settings and apply LOG_LEVEL; -1 with err.
static int
s_daemon_config_load (s_daemon_config_t *conf, char *err, size_t errlen)
{
    if (cm_config_load (s_daemon_table, conf, err, errlen) ||
        cm_log_level_apply (conf->log_level, err, errlen))
        return -1;
    return 0;
}

int
cm_worker_config_check (char *err, size_t errlen)
{
    s_daemon_config_t conf = {0};
    int rc = s_daemon_config_load (&conf, err, errlen);
    cm_config_free (s_daemon_table, &conf);
    return rc;
}

int
cm_worker_main (const char *service, const cm_route_t *routes, void *arg,
                size_t concurrency, size_t max_pending, cm_metrics_t *metrics)
{
    s_daemon_config_t conf = {0};
    char err[512];
    if (s_daemon_config_load (&conf, err, sizeof err)) {
        cm_error ("bad configuration: %s", err);
        fprintf (stderr, "%s: bad configuration: %s\n", service, err);
        cm_config_free (s_daemon_table, &conf);
        return 2;
    }
    //  Signals are taken by sigwait here, so no thread is interrupted.
    sigset_t set;
    sigemptyset (&set);
    sigaddset (&set, SIGINT);
    sigaddset (&set, SIGTERM);
    pthread_sigmask (SIG_BLOCK, &set, NULL);
    zsys_handler_set (NULL);

    cm_worker_config_t config = {
        .service = service,
        .instance = conf.instance,
        .endpoint = conf.endpoint,
        .concurrency = concurrency,
        .max_pending = max_pending,
        .quick_concurrency = (size_t) conf.quick_concurrency,
        .quick_max_pending = (size_t) conf.quick_max_pending,
        .heartbeat_ms = conf.heartbeat_ms,
        .liveness = conf.liveness,
        .drain_ms = conf.drain_ms,
        .routes = routes,
        .arg = arg,
        .metrics = metrics,
        .supervisor = conf.supervisor,
        .report_ms = conf.report_ms,
    };
    cm_worker_t *worker = cm_worker_new (&config);
    cm_info ("%s instance %s connecting to %s (concurrency %zu, waiting line %zu)",
             service, cm_worker_instance (worker), conf.endpoint, concurrency,
             max_pending);
    int sig = 0;
    sigwait (&set, &sig);
    cm_info ("signal %d: draining for up to %lld ms", sig, (long long) conf.drain_ms);
    cm_worker_destroy (&worker);
    cm_config_free (s_daemon_table, &conf);
    cm_info ("stopped");
    return 0;
}

int
cm_worker_args (int argc, char **argv, const char *program, const char *summary,
                const struct cm_conf_entry_s *table)
{
    int rc = cm_main_args (argc, argv, program, summary, table);
    if (rc > 0 && argc > 1 && (!strcmp (argv[1], "--help") || !strcmp (argv[1], "-h"))) {
        printf ("\nCommon daemon settings:\n");
        cm_config_usage (cm_worker_config_table (), stdout);
    }
    return rc > 0 ? 0 : rc < 0 ? 2 : -1;
}
