/*  gw_broker.c: see gw_broker.h. Everything here runs on the broker thread
    except the functions that post to its mailbox and read the snapshot. */
#include "gw_broker.h"
#include "cm_log.h"
#include "cm_mailbox.h"
#include "cm_monitor.h"
#include <czmq.h>
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>

typedef struct {
    char *id;               //  routing id == instance id
    char *service;          //  service it serves
    uint32_t capacity;      //  slots it announced
    int64_t inflight;       //  requests we sent that have not ended
    int64_t last_seen;      //  mono ms of the last frame from it
    uint32_t reported;      //  free slots it last reported
    bool draining;          //  said DISCONNECT: no new work
    int64_t unreachable_at; //  mono ms of the first failed probe in a row (0: none)
    uint64_t served;        //  requests sent to it
} s_instance_t;

typedef struct {
    gw_exchange_t *exchange; //  our reference
    s_instance_t *instance;  //  where it went
    cm_msg_t *request;       //  kept for a retry, or while it waits; else NULL
    bool retry;              //  may run again elsewhere
    int attempts;            //  instances it was sent to
    uint32_t partials;       //  PARTIALs received from its current instance
    int64_t lost_at;         //  mono ms: its instance said it does not hold it
                             //  (0: not); see s_checked
    uint32_t sent_at_check;  //  the broker's CHECK count when it was last sent
    int64_t deadline;        //  mono ms
    int64_t wait_until;      //  mono ms: waiting for an instance until then (0: not)
    char *abandoned;         //  a frozen instance it was taken from, to CANCEL at
                             //  if it ends unanswered by another (owned, or NULL)
} s_pending_t;

#define S_MAX_RETRIES 1

typedef enum { S_CMD_SUBMIT, S_CMD_CANCEL, S_CMD_CLOSE } s_cmd_type_t;

//  A CANCEL sent lately: sent again if its instance connects again (it may
//  have gone down with the old connection).
typedef struct {
    char *instance;   //  where it went
    char *request_id; //  what it cancelled
    char *reason;     //  why
    int64_t at;       //  mono ms
} s_cancel_t;

//  CANCELs remembered: at most this many, for at most as long as a daemon's
//  connection may take to break (four times the patience, cm_worker).
#define S_CANCELS_KEPT 4096

typedef struct {
    s_cmd_type_t type;       //  what to do
    gw_exchange_t *exchange; //  SUBMIT: reference handed over
    cm_msg_t *request;       //  SUBMIT: the REQUEST
    char *request_id;        //  CANCEL
    int64_t deadline;        //  SUBMIT: mono ms
    bool retry;              //  SUBMIT: may run again elsewhere
} s_cmd_t;

struct gw_broker_s {
    gw_broker_config_t config; //  copy (bind string owned below)
    char *bind;                //  endpoint
    zsock_t *router;           //  backend socket (broker thread only)
    cm_monitor_t *monitor;     //  its closed connections, or NULL
    int64_t probe_until;       //  mono ms: look for closed instances until then
    int64_t last_tick;         //  mono ms of the last tick (0: none yet)
    int64_t unroutable_logged; //  mono ms of the last "cannot send" warning
    uint64_t unroutable_quiet; //  such warnings left out since
    int64_t unnamed_logged;    //  the same for frames from unnamed peers
    uint64_t unnamed_quiet;
    cm_mailbox_t *inbox; //  commands from HTTP threads
    pthread_t thread;    //  the broker thread
    atomic_bool stop;    //  tell the thread to finish
    bool closing;        //  answer everything 503 (broker thread)
    zhashx_t *instances; //  id -> s_instance_t
    zhashx_t *pending;   //  request id -> s_pending_t
    zlistx_t *waiting;   //  ids of requests waiting for an instance, oldest first
    size_t waiting_now;  //  of those, the ones still waiting (some ended)
    uint64_t rotate;     //  tie-breaker for instance choice
    uint32_t checks;     //  CHECKs sent (each one's generation)
    zlistx_t *cancels;   //  CANCELs sent lately (s_cancel_t), oldest first
    //  Counters (broker thread writes; snapshot reads under snap_lock).
    uint64_t routed, replies, late_replies, dropped_frames, unroutable, timeouts,
        expired_instances, disconnected_instances, no_instance, retries, client_gone,
        waited, lost, slow_clients;
    pthread_mutex_t snap_lock; //  guards snapshot
    json_t *snapshot;          //  last published state
};

static void *s_thread (void *arg);
static void s_tick (gw_broker_t *self, int64_t now, bool beat);

static void
s_string_free (void **item)
{
    free (*item);
    *item = NULL;
}

static void
s_cancel_free (void **item)
{
    s_cancel_t *cancel = *item;
    free (cancel->instance);
    free (cancel->request_id);
    free (cancel->reason);
    free (cancel);
    *item = NULL;
}

static void
s_instance_free (void **item)
{
    s_instance_t *instance = *item;
    free (instance->id);
    free (instance->service);
    free (instance);
    *item = NULL;
}

gw_broker_t *
gw_broker_new (const gw_broker_config_t *config)
{
    assert (config && config->bind);
    gw_broker_t *self = cm_calloc (1, sizeof *self);
    self->config = *config;
    self->bind = cm_strdup (config->bind);
    self->router = zsock_new (ZMQ_ROUTER);
    assert (self->router);
    //  An unroutable reply is an error we count, not a silent drop.
    zsock_set_router_mandatory (self->router, 1);
    //  A restarted daemon reconnecting with its id takes its place at once.
    zsock_set_router_handover (self->router, 1);
    zsock_set_sndhwm (self->router, 0);
    zsock_set_rcvhwm (self->router, 0);
    zsock_set_linger (self->router, 0);
    if (zsock_bind (self->router, "%s", self->bind) < 0) {
        cm_error ("cannot bind the backend at %s: %s", self->bind,
                  zmq_strerror (zmq_errno ()));
        zsock_destroy (&self->router);
        free (self->bind);
        free (self);
        return NULL;
    }
    //  A daemon that dies closes its connection at once; the monitor says
    //  so, and the broker finds which instance it was (s_probe) instead of
    //  waiting for its heartbeats to lapse.
    self->monitor = cm_monitor_new (self->router, ZMQ_EVENT_DISCONNECTED,
                                    "the gateway's backend connections");
    self->inbox = cm_mailbox_new ();
    self->instances = zhashx_new ();
    zhashx_set_destructor (self->instances, s_instance_free);
    self->pending = zhashx_new ();
    self->waiting = zlistx_new ();
    self->cancels = zlistx_new ();
    zlistx_set_destructor (self->cancels, s_cancel_free);
    zlistx_set_destructor (self->waiting, s_string_free);
    pthread_mutex_init (&self->snap_lock, NULL);
    //  Publish a whole first snapshot before any reader can look: health
    //  asked before the thread's first tick must find every field.
    s_tick (self, cm_clock_mono_ms (), false);
    if (pthread_create (&self->thread, NULL, s_thread, self))
        abort ();
    return self;
}

static void
s_cmd_free (void *item)
{
    s_cmd_t *cmd = item;
    if (cmd->exchange) {
        gw_exchange_fail (cmd->exchange, 503, "The gateway is shutting down.");
        gw_exchange_unref (&cmd->exchange);
    }
    cm_msg_destroy (&cmd->request);
    free (cmd->request_id);
    free (cmd);
}

void
gw_broker_destroy (gw_broker_t **self_p)
{
    assert (self_p);
    gw_broker_t *self = *self_p;
    if (!self)
        return;
    atomic_store (&self->stop, true);
    uint64_t one = 1;
    ssize_t rc = write (cm_mailbox_fd (self->inbox), &one, sizeof one);
    (void) rc;
    pthread_join (self->thread, NULL);
    cm_mailbox_destroy (&self->inbox, s_cmd_free);
    zhashx_destroy (&self->pending);
    zlistx_destroy (&self->waiting);
    zlistx_destroy (&self->cancels);
    zhashx_destroy (&self->instances);
    cm_monitor_destroy (&self->monitor);
    zsock_destroy (&self->router);
    json_decref (self->snapshot);
    pthread_mutex_destroy (&self->snap_lock);
    free (self->bind);
    free (self);
    *self_p = NULL;
}

void
gw_broker_submit (gw_broker_t *self, gw_exchange_t *exchange, cm_msg_t **request_p,
                  int64_t deadline_mono, bool retry)
{
    assert (self && exchange && request_p && *request_p);
    s_cmd_t *cmd = cm_calloc (1, sizeof *cmd);
    cmd->type = S_CMD_SUBMIT;
    cmd->exchange = exchange;
    cmd->request = *request_p;
    cmd->deadline = deadline_mono;
    cmd->retry = retry;
    *request_p = NULL;
    cm_mailbox_post (self->inbox, cmd);
}

void
gw_broker_close (gw_broker_t *self)
{
    assert (self);
    s_cmd_t *cmd = cm_calloc (1, sizeof *cmd);
    cmd->type = S_CMD_CLOSE;
    cm_mailbox_post (self->inbox, cmd);
}

void
gw_broker_cancel (gw_broker_t *self, const char *request_id)
{
    assert (self && request_id);
    s_cmd_t *cmd = cm_calloc (1, sizeof *cmd);
    cmd->type = S_CMD_CANCEL;
    cmd->request_id = cm_strdup (request_id);
    cm_mailbox_post (self->inbox, cmd);
}

size_t
gw_broker_live (gw_broker_t *self, const char *service)
{
    json_t *snap = gw_broker_snapshot (self);
    json_t *live = json_object_get (json_object_get (snap, "live"), service);
    size_t count = live ? (size_t) json_integer_value (live) : 0;
    json_decref (snap);
    return count;
}

json_t *
gw_broker_snapshot (gw_broker_t *self)
{
    assert (self);
    pthread_mutex_lock (&self->snap_lock);
    json_t *copy = json_deep_copy (self->snapshot);
    pthread_mutex_unlock (&self->snap_lock);
    return copy;
}

//  --- broker thread ---------------------------------------------------------

//  Send one message to an instance. Returns 0, or -1 when it is unreachable
//  (logged and counted as unroutable unless quiet).
static int
s_send_to (gw_broker_t *self, const char *id, cm_msg_t *msg, bool quiet)
{
    char *data;
    size_t size;
    cm_msg_encode (msg, &data, &size);
    void *sock = zsock_resolve (self->router);
    int rc = zmq_send (sock, id, strlen (id), ZMQ_SNDMORE | ZMQ_DONTWAIT);
    if (rc >= 0)
        rc = zmq_send (sock, data, size, ZMQ_DONTWAIT);
    free (data);
    if (rc < 0 && quiet)
        return -1;
    if (rc < 0) {
        self->unroutable++;
        //  One line a second at most: after a stall hundreds may fail at once.
        int64_t now = cm_clock_mono_ms ();
        if (now - self->unroutable_logged >= 1000) {
            cm_warn ("cannot send %s to %s: %s (%llu more since the last such line)",
                     cm_msg_type_name (cm_msg_type (msg)), id,
                     zmq_strerror (zmq_errno ()),
                     (unsigned long long) self->unroutable_quiet);
            self->unroutable_logged = now;
            self->unroutable_quiet = 0;
        } else
            self->unroutable_quiet++;
        return -1;
    }
    return 0;
}

static int
s_send (gw_broker_t *self, const char *id, cm_msg_t *msg)
{
    return s_send_to (self, id, msg, false);
}

static void
s_pending_end (gw_broker_t *self, const char *request_id)
{
    s_pending_t *pending = zhashx_lookup (self->pending, request_id);
    if (!pending)
        return;
    if (pending->instance)
        pending->instance->inflight--;
    if (pending->wait_until)
        self->waiting_now--; //  ended while it waited (cancelled, shutdown)
    //  First out of the table: request_id may be the request's own.
    zhashx_delete (self->pending, request_id);
    gw_exchange_unref (&pending->exchange);
    cm_msg_destroy (&pending->request);
    free (pending->abandoned);
    free (pending);
}

static bool s_dispatch (gw_broker_t *self, s_pending_t *pending, cm_msg_t *request);

//  No instance took a request: 503, and it ends.
static void s_cancel_at (gw_broker_t *self, const char *instance_id,
                         const char *request_id, const char *reason, bool quiet);

static void
s_no_instance (gw_broker_t *self, const char *request_id, s_pending_t *pending)
{
    //  Taken from a frozen instance and never run elsewhere: that one is
    //  told, as for a 502 (s_instance_remove).
    if (pending->abandoned)
        s_cancel_at (self, pending->abandoned, request_id, "instance given up", true);
    self->no_instance++;
    char message[160];
    snprintf (message, sizeof message, "No %s service instance is available.",
              cm_msg_service (pending->request));
    gw_exchange_fail (pending->exchange, 503, message);
    s_pending_end (self, request_id);
}

//  No instance took a request (none is registered, or the one it was on
//  died): hold it for one to register, GATEWAY_INSTANCE_WAIT_MS at most and
//  never past its deadline, as a restarted daemon or gateway is back within
//  a second; else 503. until: when the wait ends (0: from now).
static void
s_wait (gw_broker_t *self, const char *request_id, s_pending_t *pending, int64_t until)
{
    int64_t now = cm_clock_mono_ms ();
    if (!until)
        until = now + self->config.instance_wait_ms;
    if (pending->deadline && until > pending->deadline)
        until = pending->deadline;
    if (self->closing || self->config.instance_wait_ms <= 0 || until <= now) {
        s_no_instance (self, request_id, pending);
        return;
    }
    pending->wait_until = until;
    self->waiting_now++;
    zlistx_add_end (self->waiting, cm_strdup (request_id));
}

//  Send a request again, to another instance. It says so ("X-Llmrt-
//  Attempt: 2"): its first run may have done its work before it died, and
//  a daemon whose work must happen once (chatd saving a turn) looks for
//  that first. False when no instance took it.
static bool
s_resend (gw_broker_t *self, s_pending_t *pending)
{
    self->retries++;
    if (!cm_msg_header (pending->request, "X-Llmrt-Attempt")) {
        char attempt[16];
        snprintf (attempt, sizeof attempt, "%d", pending->attempts + 1);
        cm_msg_header_add (pending->request, "X-Llmrt-Attempt", attempt);
    }
    return s_dispatch (self, pending, pending->request);
}

//  A request whose instance died (or refused it, draining) before it
//  started: send it elsewhere, or let it wait for an instance. False when
//  it may not run again (not retryable, tried enough, or started) or no
//  instance took it and it may not wait: the caller answers it.
static bool
s_resend_or_wait (gw_broker_t *self, const char *request_id, s_pending_t *pending)
{
    if (!pending->retry || pending->attempts > S_MAX_RETRIES ||
        gw_exchange_started (pending->exchange))
        return false;
    if (s_resend (self, pending))
        return true;
    if (self->config.instance_wait_ms <= 0 || self->closing)
        return false;
    s_wait (self, request_id, pending, 0);
    return true;
}

//  The reason an instance is given up for when it stops heartbeating.
#define S_MISSED_HEARTBEATS "missed its heartbeats"

//  Send a CANCEL of a request to an instance. quiet: it may well be gone (a
//  frame it cannot get is then neither logged nor counted as unroutable).
static void
s_send_cancel (gw_broker_t *self, const char *instance_id, const char *request_id,
               const char *reason, bool quiet)
{
    cm_msg_t *cancel = cm_msg_new (CM_MSG_CANCEL);
    cm_msg_set_request_id (cancel, request_id);
    cm_msg_set_reason (cancel, reason);
    s_send_to (self, instance_id, cancel, quiet);
    cm_msg_destroy (&cancel);
}

//  CANCEL a request at an instance, and remember it (s_cancel_again).
static void
s_cancel_at (gw_broker_t *self, const char *instance_id, const char *request_id,
             const char *reason, bool quiet)
{
    s_send_cancel (self, instance_id, request_id, reason, quiet);
    //  Remembered, and forgotten once old or too many (s_tick trims by age).
    if (zlistx_size (self->cancels) >= S_CANCELS_KEPT) {
        zlistx_first (self->cancels);
        zlistx_delete (self->cancels, zlistx_cursor (self->cancels));
    }
    s_cancel_t *kept = cm_calloc (1, sizeof *kept);
    kept->instance = cm_strdup (instance_id);
    kept->request_id = cm_strdup (request_id);
    kept->reason = cm_strdup (reason);
    kept->at = cm_clock_mono_ms ();
    zlistx_add_end (self->cancels, kept);
}

//  An instance connected again: the CANCELs sent to it lately may have gone
//  down with its old connection (a client that left while this gateway
//  stood still is reaped the moment it wakes, into that connection), and
//  without them the daemon would run those requests to their end: an agent
//  flow's calls, a model's tokens nobody reads. Sent again, quietly; a
//  daemon ignores a CANCEL of a request it does not hold.
static void
s_cancel_again (gw_broker_t *self, s_instance_t *instance)
{
    for (s_cancel_t *kept = zlistx_first (self->cancels); kept;
         kept = zlistx_next (self->cancels)) {
        if (!strcmp (kept->instance, instance->id))
            s_send_cancel (self, instance->id, kept->request_id, kept->reason, true);
    }
}

//  Forget an instance; every request that was on it is sent elsewhere (when
//  retryable and not started) or answered. An instance that only missed
//  its heartbeats may be frozen rather than dead: it is told to cancel the
//  requests answered here, so that work its client was told failed stops
//  when it wakes (an agent-flow run, a fallback upload) instead of going
//  on unseen. A resent request is not cancelled there: its first run may
//  be the one that saves (protocol.md, "A request that runs twice").
static void
s_instance_remove (gw_broker_t *self, s_instance_t *instance, const char *why)
{
    cm_warn ("%s instance %s removed: %s", instance->service, instance->id, why);
    char message[256];
    snprintf (message, sizeof message, "The %s service instance %s failed (%s).",
              instance->service, instance->id, why);
    //  Take it out of routing first, so no retry goes back to it.
    instance->draining = true;
    bool silent = !strcmp (why, S_MISSED_HEARTBEATS);
    zlistx_t *ids = zhashx_keys (self->pending);
    for (char *id = zlistx_first (ids); id; id = zlistx_next (ids)) {
        s_pending_t *pending = zhashx_lookup (self->pending, id);
        if (!pending || pending->instance != instance)
            continue; //  (ended meanwhile by a nested removal)
        instance->inflight--;
        pending->instance = NULL;
        //  Should it end unanswered by another instance (its wait for one
        //  runs out), the frozen one is told then.
        if (silent && !pending->abandoned)
            pending->abandoned = cm_strdup (instance->id);
        if (s_resend_or_wait (self, id, pending))
            continue;
        gw_exchange_fail (pending->exchange, 502, message);
        if (silent)
            s_cancel_at (self, instance->id, id, "instance given up", true);
        s_pending_end (self, id);
    }
    zlistx_destroy (&ids);
    zhashx_delete (self->instances, instance->id);
}

//  Probe every instance at each tick for the next second: a connection
//  has closed (the monitor says so), or a send failed.
static void
s_probe_for_a_while (gw_broker_t *self, int64_t now)
{
    if (self->probe_until < now + 1000)
        self->probe_until = now + 1000;
}

//  The live instance of a service with the most free capacity.
static s_instance_t *
s_choose (gw_broker_t *self, const char *service)
{
    s_instance_t *best = NULL;
    int64_t best_free = INT64_MIN;
    size_t count = zhashx_size (self->instances);
    if (!count)
        return NULL;
    //  Start the scan at a rotating offset so ties spread evenly.
    size_t skip = (size_t) (self->rotate++ % count);
    s_instance_t *instance = zhashx_first (self->instances);
    for (size_t i = 0; i < skip; i++)
        instance = zhashx_next (self->instances);
    for (size_t n = 0; n < count; n++) {
        if (!instance)
            instance = zhashx_first (self->instances);
        if (!instance->draining && !instance->unreachable_at &&
            !strcmp (instance->service, service)) {
            int64_t free_slots = (int64_t) instance->capacity - instance->inflight;
            if (free_slots > best_free) {
                best = instance;
                best_free = free_slots;
            }
        }
        instance = zhashx_next (self->instances);
    }
    return best;
}

//  Send a request to the best live instance. Tries the next one when a
//  send fails at once (ROUTER_MANDATORY: the peer is gone, and the request
//  has not started anywhere); the one that failed is left out of routing
//  until a probe reaches it again, or gives it up (it may only be between
//  two connections). Returns false when no instance took it.
static bool
s_dispatch (gw_broker_t *self, s_pending_t *pending, cm_msg_t *request)
{
    const char *service = cm_msg_service (request);
    for (int attempt = 0; attempt < 4; attempt++) {
        s_instance_t *instance = s_choose (self, service);
        if (!instance)
            return false;
        if (s_send (self, instance->id, request) == 0) {
            //  Sent again: the first run is left alone (protocol.md).
            free (pending->abandoned);
            pending->abandoned = NULL;
            pending->instance = instance;
            pending->partials = 0;
            pending->lost_at = 0;
            pending->sent_at_check = self->checks;
            pending->attempts++;
            instance->inflight++;
            instance->served++;
            self->routed++;
            return true;
        }
        int64_t now = cm_clock_mono_ms ();
        if (!instance->unreachable_at)
            instance->unreachable_at = now;
        s_probe_for_a_while (self, now);
    }
    return false;
}

static void
s_submit (gw_broker_t *self, s_cmd_t *cmd)
{
    s_pending_t *pending = cm_calloc (1, sizeof *pending);
    pending->exchange = cmd->exchange;
    pending->deadline = cmd->deadline;
    pending->request = cmd->request;
    pending->retry = cmd->retry;
    cmd->exchange = NULL;
    cmd->request = NULL;
    const char *request_id = cm_msg_request_id (pending->request);
    zhashx_insert (self->pending, request_id, pending);
    if (self->closing) {
        gw_exchange_fail (pending->exchange, 503, "The gateway is shutting down.");
        s_pending_end (self, request_id);
        return;
    }
    if (s_dispatch (self, pending, pending->request)) {
        if (!pending->retry)
            cm_msg_destroy (&pending->request);
        return;
    }
    s_wait (self, request_id, pending, 0);
}

//  An instance of `service` is ready: send it the requests waiting for one,
//  oldest first. Taken off the list before any is sent (a send that fails
//  removes an instance, which may put requests back on it).
static void
s_release_waiting (gw_broker_t *self, const char *service)
{
    zlistx_t *ready = zlistx_new ();
    zlistx_set_destructor (ready, s_string_free);
    for (char *id = zlistx_first (self->waiting); id; id = zlistx_next (self->waiting)) {
        s_pending_t *pending = zhashx_lookup (self->pending, id);
        if (pending && pending->wait_until &&
            strcmp (cm_msg_service (pending->request), service))
            continue;
        zlistx_detach_cur (self->waiting);
        if (pending && pending->wait_until)
            zlistx_add_end (ready, id);
        else
            free (id); //  ended meanwhile (cancelled, timed out)
    }
    for (char *id = zlistx_first (ready); id; id = zlistx_next (ready)) {
        s_pending_t *pending = zhashx_lookup (self->pending, id);
        if (!pending)
            continue;
        int64_t until = pending->wait_until;
        pending->wait_until = 0;
        self->waiting_now--;
        if (s_dispatch (self, pending, pending->request)) {
            self->waited++;
            if (!pending->retry)
                cm_msg_destroy (&pending->request);
        } else
            s_wait (self, id, pending, until);
    }
    zlistx_destroy (&ready);
}

//  Requests that waited for an instance as long as they may: 503.
static void
s_expire_waiting (gw_broker_t *self, int64_t now)
{
    for (char *id = zlistx_first (self->waiting); id; id = zlistx_next (self->waiting)) {
        s_pending_t *pending = zhashx_lookup (self->pending, id);
        if (pending && pending->wait_until && now < pending->wait_until)
            continue;
        zlistx_detach_cur (self->waiting);
        if (pending && pending->wait_until) {
            pending->wait_until = 0;
            self->waiting_now--;
            s_no_instance (self, id, pending);
        }
        free (id);
    }
}

static void
s_cancel (gw_broker_t *self, const char *request_id, const char *reason)
{
    s_pending_t *pending = zhashx_lookup (self->pending, request_id);
    if (!pending)
        return;
    if (pending->instance)
        s_cancel_at (self, pending->instance->id, request_id, reason, false);
    s_pending_end (self, request_id);
}

//  Answer a request 502 (its stream's abort event once one started) with
//  a message naming its instance: format takes the service, then the id.
static void
s_fail_at (gw_exchange_t *exchange, const s_instance_t *instance, const char *format)
{
    char message[256];
    snprintf (message, sizeof message, format, instance->service, instance->id);
    gw_exchange_fail (exchange, 502, message);
}

//  An instance said READY again: it made a new connection, because the
//  old one broke (its heartbeat timed out while this gateway stood still,
//  or the network failed). Frames in flight on the old connection are
//  lost: a REQUEST sent into it (this gateway woke and sent before libzmq
//  saw the close), or a reply of the instance's. Ask about every request
//  that is on it: the CHECK goes on the new connection, after anything
//  sent on it before, and the instance answers in order (s_checked).
static void
s_check_requests (gw_broker_t *self, s_instance_t *instance)
{
    for (s_pending_t *pending = zhashx_first (self->pending); pending;
         pending = zhashx_next (self->pending)) {
        if (pending->instance != instance)
            continue;
        cm_msg_t *check = cm_msg_new (CM_MSG_CHECK);
        cm_msg_set_request_id (check, zhashx_cursor (self->pending));
        cm_msg_set_generation (check, ++self->checks);
        s_send (self, instance->id, check);
        cm_msg_destroy (&check);
    }
}

//  The answer to a CHECK. Everything the instance sent on its new
//  connection before it has been read, so a stream that has fewer PARTIALs
//  here than it sent has a hole: its client gets the abort event at once.
//  A request it no longer holds will never be answered by it (it never got
//  it, or its reply went down with the old connection), but that reply
//  may still be read from the old one (s_handle_unnamed: libzmq reads the
//  two connections in turn): it is handled as lost a moment later
//  (s_lost), unless the answer came meanwhile.
static void
s_checked (gw_broker_t *self, s_instance_t *instance, cm_msg_t *msg)
{
    const char *request_id = cm_msg_request_id (msg);
    s_pending_t *pending = zhashx_lookup (self->pending, request_id);
    if (!pending || pending->instance != instance)
        return; //  answered meanwhile, or already sent elsewhere
    //  About an earlier sending of it (sent again to the same instance
    //  since; a review found that a late answer then had the live second
    //  run answered 502).
    if ((int32_t) (cm_msg_generation (msg) - pending->sent_at_check) <= 0)
        return;
    if (!cm_msg_held (msg)) {
        if (!pending->lost_at)
            pending->lost_at = cm_clock_mono_ms ();
        return;
    }
    if (pending->partials >= cm_msg_partials (msg))
        return; //  nothing lost: it goes on
    self->lost++;
    cm_warn ("%u of the %u stream parts %s sent for request %s were lost in a broken "
             "connection",
             cm_msg_partials (msg) - pending->partials, cm_msg_partials (msg),
             instance->id, request_id);
    s_fail_at (pending->exchange, instance,
               "Part of the answer of the %s service instance %s was lost in a broken "
               "connection.");
    char *id = cm_strdup (request_id);
    s_cancel (self, id, "part of the answer was lost");
    free (id);
}

//  How long a request its instance does not hold waits for its reply to
//  turn up from the instance's old connection before it counts as lost.
#define S_LOST_GRACE_MS 100

//  A request its instance does not hold, and whose reply has not come:
//  handled as if the instance had died with it. Sent again when that is
//  safe (a retryable request that had not started answering: it never ran
//  there, or chatd finds the turn its first run saved), else answered 502
//  (or the stream's abort event), so that the client does not wait for
//  its deadline.
static void
s_lost (gw_broker_t *self, const char *request_id, s_pending_t *pending)
{
    s_instance_t *instance = pending->instance;
    self->lost++;
    instance->inflight--;
    pending->instance = NULL;
    pending->lost_at = 0;
    bool again = s_resend_or_wait (self, request_id, pending);
    //  (A resend never removes an instance: instance is still there.)
    cm_warn ("request %s was lost in a broken connection to %s (%s)", request_id,
             instance->id, again ? "sent again" : "answered 502");
    if (again)
        return;
    s_fail_at (pending->exchange, instance,
               "The request or its answer was lost in a broken connection to the %s "
               "service instance %s.");
    s_pending_end (self, request_id);
}

static void
s_handle_frame (gw_broker_t *self, const char *id, cm_msg_t *msg)
{
    s_instance_t *instance = zhashx_lookup (self->instances, id);
    cm_msg_type_t type = cm_msg_type (msg);
    if (type == CM_MSG_READY) {
        if (!*cm_msg_service (msg)) {
            self->dropped_frames++;
            cm_warn ("dropped a READY without a service from %s", id);
            return;
        }
        if (instance && strcmp (instance->service, cm_msg_service (msg))) {
            s_instance_remove (self, instance, "re-registered as another service");
            instance = NULL;
        }
        bool known = instance != NULL;
        if (!instance) {
            instance = cm_calloc (1, sizeof *instance);
            instance->id = cm_strdup (id);
            instance->service = cm_strdup (cm_msg_service (msg));
            zhashx_insert (self->instances, id, instance);
            cm_info ("%s instance %s registered (capacity %u)", instance->service, id,
                     cm_msg_capacity (msg));
        }
        instance->capacity = cm_msg_capacity (msg);
        instance->reported = cm_msg_capacity (msg);
        instance->draining = false;
        instance->unreachable_at = 0;
        instance->last_seen = cm_clock_mono_ms ();
        //  A known instance says READY on a new connection: what was sent
        //  to it, or by it, may have gone down with the old one.
        if (known) {
            s_check_requests (self, instance);
            s_cancel_again (self, instance);
        }
        if (zlistx_size (self->waiting))
            s_release_waiting (self, instance->service);
        return;
    }
    if (!instance) {
        //  We restarted, or expired it: ask it to register again.
        cm_msg_t *bye = cm_msg_new (CM_MSG_DISCONNECT);
        cm_msg_set_reason (bye, "unknown instance; send READY");
        s_send (self, id, bye);
        cm_msg_destroy (&bye);
        if (type != CM_MSG_HEARTBEAT)
            self->late_replies++;
        return;
    }
    instance->last_seen = cm_clock_mono_ms ();
    switch (type) {
        case CM_MSG_HEARTBEAT:
            instance->reported = cm_msg_capacity (msg);
            break;
        case CM_MSG_DISCONNECT:
            if (!instance->draining)
                cm_info ("%s instance %s is draining (%s)", instance->service, id,
                         cm_msg_reason (msg));
            instance->draining = true;
            break;
        case CM_MSG_CHECKED:
            s_checked (self, instance, msg);
            break;
        case CM_MSG_PARTIAL:
        case CM_MSG_FINAL: {
            s_pending_t *pending = zhashx_lookup (self->pending, cm_msg_request_id (msg));
            if (!pending || pending->instance != instance) {
                //  Cancelled or timed out already: nothing waits for it. Or
                //  it was resent elsewhere when this instance was taken for
                //  dead: the client hears from one run only, or a stream
                //  would mix the tokens of two.
                self->late_replies++;
                break;
            }
            self->replies++;
            if (type == CM_MSG_PARTIAL)
                pending->partials++;
            //  A draining daemon refuses with 503 what reaches it after its
            //  DISCONNECT (the two crossed on the wire), and what it had
            //  not started when its drain ended: such a request never ran
            //  there, so a retryable one goes to another instance.
            if (type == CM_MSG_FINAL && instance->draining &&
                cm_msg_status (msg) == 503 && pending->retry &&
                pending->attempts <= S_MAX_RETRIES &&
                !gw_exchange_started (pending->exchange)) {
                instance->inflight--;
                pending->instance = NULL;
                if (s_resend_or_wait (self, cm_msg_request_id (msg), pending))
                    break;
            }
            //  A stream its daemon cut short as it shut down (its drain
            //  ended): the client gets the abort event of an instance that
            //  failed, not an end that looks complete.
            if (type == CM_MSG_FINAL && cm_msg_status (msg) == 503 &&
                gw_exchange_started (pending->exchange)) {
                s_fail_at (pending->exchange, instance,
                           "The %s service instance %s shut down before the answer "
                           "was complete.");
                s_pending_end (self, cm_msg_request_id (msg));
                break;
            }
            gw_delivery_t delivered = gw_exchange_deliver (pending->exchange, msg);
            if (delivered == GW_DELIVERY_TOO_SLOW) {
                //  Its client reads slower than the answer comes: the
                //  stream was ended for it, and the daemon stops.
                self->slow_clients++;
                s_cancel (self, cm_msg_request_id (msg), "the client reads too slowly");
            } else if (delivered == GW_DELIVERED_LAST)
                s_pending_end (self, cm_msg_request_id (msg));
            break;
        }
        default:
            self->dropped_frames++;
            cm_warn ("dropped an unexpected %s from %s", cm_msg_type_name (type), id);
    }
}

//  A frame from a peer without our kind of routing id. libzmq gives one to
//  the old connection of an instance that connected again (ROUTER_HANDOVER
//  renames it, and its unread frames then come under that name): replies
//  sent while this gateway stood still. One that is the whole answer of a
//  request sent once is that request's (its id says which; it can have
//  come from nowhere else) and is delivered: the request ran, and need not
//  run again. Anything else is dropped, counted: a stream's parts could
//  not be put back in order with those on the new connection, so its CHECK
//  finds the gap (s_checked). Any other unnamed peer's frames are refused
//  the same way: its id, as a string, would alias every other such peer.
static void
s_handle_unnamed (gw_broker_t *self, cm_msg_t *msg, size_t id_size)
{
    s_pending_t *pending = cm_msg_type (msg) == CM_MSG_FINAL
                               ? zhashx_lookup (self->pending, cm_msg_request_id (msg))
                               : NULL;
    if (pending && pending->instance && pending->attempts == 1 && !pending->partials &&
        !gw_exchange_started (pending->exchange) &&
        strcmp (cm_msg_content_type (msg), "text/event-stream")) {
        s_handle_frame (self, pending->instance->id, msg);
        return;
    }
    self->dropped_frames++;
    int64_t now = cm_clock_mono_ms ();
    if (now - self->unnamed_logged < 1000) {
        self->unnamed_quiet++;
        return;
    }
    cm_warn ("dropped a %s from a peer without an instance id (a routing id of %zu "
             "bytes: a connection its instance replaced, or a stranger) (%llu more "
             "since the last such line)",
             cm_msg_type_name (cm_msg_type (msg)), id_size,
             (unsigned long long) self->unnamed_quiet);
    self->unnamed_logged = now;
    self->unnamed_quiet = 0;
}

static void
s_receive (gw_broker_t *self)
{
    void *sock = zsock_resolve (self->router);
    char err[256];
    for (int burst = 0; burst < 1024; burst++) {
        zmq_msg_t id_frame, body;
        zmq_msg_init (&id_frame);
        if (zmq_msg_recv (&id_frame, sock, ZMQ_DONTWAIT) < 0) {
            zmq_msg_close (&id_frame);
            return;
        }
        zmq_msg_init (&body);
        bool more = zmq_msg_more (&id_frame);
        if (more)
            zmq_msg_recv (&body, sock, 0);
        //  Anything after the body frame is a protocol error; swallow it.
        bool extra = more && zmq_msg_more (&body);
        while (extra) {
            zmq_msg_t skip;
            zmq_msg_init (&skip);
            zmq_msg_recv (&skip, sock, 0);
            extra = zmq_msg_more (&skip);
            zmq_msg_close (&skip);
            more = false;
        }
        char id[256];
        size_t id_size = zmq_msg_size (&id_frame);
        //  Instances are known by the routing id they set (their INSTANCE_ID,
        //  cm_worker). A peer without one has libzmq's binary id, which as a
        //  string would alias every other such peer: refuse it.
        bool named = id_size > 0 && id_size < sizeof id &&
                     !memchr (zmq_msg_data (&id_frame), 0, id_size);
        if (id_size >= sizeof id)
            id_size = sizeof id - 1;
        memcpy (id, zmq_msg_data (&id_frame), id_size);
        id[id_size] = 0;
        cm_msg_t *msg = NULL;
        if (more)
            msg = cm_msg_decode (zmq_msg_data (&body), zmq_msg_size (&body), err,
                                 sizeof err);
        else
            snprintf (err, sizeof err, "wrong number of frames");
        size_t unnamed_size = named ? 0 : zmq_msg_size (&id_frame);
        zmq_msg_close (&id_frame);
        zmq_msg_close (&body);
        if (msg && !named) {
            s_handle_unnamed (self, msg, unnamed_size);
            cm_msg_destroy (&msg);
            continue;
        }
        if (!msg) {
            self->dropped_frames++;
            cm_warn ("dropped a frame from %s: %s (%llu dropped)", id, err,
                     (unsigned long long) self->dropped_frames);
            continue;
        }
        s_handle_frame (self, id, msg);
        cm_msg_destroy (&msg);
    }
}

//  Clients that hung up while their connection was suspended (MHD cannot
//  see them then): cancel at the daemon at once and end the exchange, so
//  MHD resumes the connection and closes it.
static void
s_reap_gone_clients (gw_broker_t *self)
{
    size_t count = zhashx_size (self->pending);
    if (!count)
        return;
    struct pollfd *fds = cm_calloc (count, sizeof *fds);
    char **ids = cm_calloc (count, sizeof *ids);
    size_t n = 0;
    for (s_pending_t *pending = zhashx_first (self->pending); pending && n < count;
         pending = zhashx_next (self->pending)) {
        int fd = gw_exchange_suspended_fd (pending->exchange);
        if (fd < 0)
            continue;
        fds[n].fd = fd;
        fds[n].events = POLLRDHUP;
        ids[n++] = cm_strdup (zhashx_cursor (self->pending));
    }
    if (n && poll (fds, n, 0) > 0) {
        for (size_t i = 0; i < n; i++) {
            if (!(fds[i].revents & (POLLRDHUP | POLLHUP | POLLERR)))
                continue;
            s_pending_t *pending = zhashx_lookup (self->pending, ids[i]);
            if (!pending)
                continue;
            self->client_gone++;
            gw_exchange_t *exchange = gw_exchange_ref (pending->exchange);
            s_cancel (self, ids[i], "client disconnected");
            gw_exchange_fail (exchange, 499, "The client closed the connection.");
            gw_exchange_unref (&exchange);
        }
    }
    for (size_t i = 0; i < n; i++)
        free (ids[i]);
    free (ids);
    free (fds);
}

//  The reason an instance is given up for when its connection is gone.
#define S_CONNECTION_CLOSED "its connection closed"

//  HEARTBEAT every instance; one that cannot be sent to (ROUTER_MANDATORY:
//  libzmq has dropped its connection) is gone, and its requests are
//  resent or answered now. Every heartbeat is such a probe, and so is every
//  tick for a while after the monitor saw a connection close: libzmq drops
//  the peer a moment after it reports the close.
//  An instance is given up once probes have failed for this long: a daemon
//  that only reconnects (its connection broke while this gateway stood
//  still) is back on a new connection by then (cm_worker reconnects within
//  10-20 ms); a dead one is not. Whatever went down with the old
//  connection is found by a CHECK (s_check_requests).
#define S_UNREACHABLE_MS 100

static void
s_probe (gw_broker_t *self)
{
    int64_t now = cm_clock_mono_ms ();
    zlistx_t *keys = zhashx_keys (self->instances);
    for (char *id = zlistx_first (keys); id; id = zlistx_next (keys)) {
        s_instance_t *instance = zhashx_lookup (self->instances, id);
        if (!instance)
            continue; //  (removed meanwhile: a retry found it unreachable)
        cm_msg_t *hb = cm_msg_new (CM_MSG_HEARTBEAT);
        if (s_send_to (self, id, hb, true) == 0) {
            if (instance->unreachable_at) {
                //  Back (it was between connections): routable again.
                instance->unreachable_at = 0;
                if (zlistx_size (self->waiting))
                    s_release_waiting (self, instance->service);
            }
        } else if (!instance->unreachable_at)
            instance->unreachable_at = now;
        else if (now - instance->unreachable_at >= S_UNREACHABLE_MS) {
            self->disconnected_instances++;
            s_instance_remove (self, instance, S_CONNECTION_CLOSED);
        }
        cm_msg_destroy (&hb);
    }
    zlistx_destroy (&keys);
}

//  The broker itself stood still (the process was stopped, the VM
//  stalled, the machine starved): its instances' silence meanwhile is
//  its own, not theirs. Each keeps the age it had at the last tick, and
//  the frames that waited in the socket are read before anyone expires.
static void
s_after_stall (gw_broker_t *self, int64_t now, int64_t gap)
{
    cm_warn ("the gateway's broker stood still for %lld ms; its instances are not "
             "blamed for the silence",
             (long long) gap);
    //  Every instance not heard since the broker woke (frames read at the
    //  wake are newer than now - a tick); capped at now. Those heard just
    //  before it froze are moved too: their age was small then.
    for (s_instance_t *i = zhashx_first (self->instances); i;
         i = zhashx_next (self->instances))
        i->last_seen = i->last_seen + gap > now ? now : i->last_seen + gap;
    s_receive (self);
}

static void
s_tick (gw_broker_t *self, int64_t now, bool beat)
{
    //  Ticks come every 100 ms at most; a gap of a heartbeat is a stall.
    if (self->last_tick && now - self->last_tick > self->config.heartbeat_ms)
        s_after_stall (self, now, now - self->last_tick);
    self->last_tick = now;
    //  CANCELs older than a connection may take to break are forgotten.
    int64_t kept_for = 4 * self->config.heartbeat_ms * self->config.liveness;
    s_cancel_t *oldest;
    while ((oldest = zlistx_first (self->cancels)) && now - oldest->at > kept_for)
        zlistx_delete (self->cancels, zlistx_cursor (self->cancels));
    s_reap_gone_clients (self);
    //  Waits for an instance end before the deadline (503, not 504).
    s_expire_waiting (self, now);
    //  Deadlines: answer 504 and tell the daemon to stop.
    zlistx_t *ids = zhashx_keys (self->pending);
    for (char *id = zlistx_first (ids); id; id = zlistx_next (ids)) {
        s_pending_t *pending = zhashx_lookup (self->pending, id);
        if (!pending)
            continue;
        if (pending->deadline && now >= pending->deadline) {
            self->timeouts++;
            gw_exchange_fail (pending->exchange, 504, "The request timed out.");
            s_cancel (self, id, "deadline");
        } else if (pending->lost_at && pending->instance &&
                   now - pending->lost_at >= S_LOST_GRACE_MS)
            s_lost (self, id, pending);
    }
    zlistx_destroy (&ids);
    //  Liveness: expire the silent, heartbeat the rest.
    int64_t limit = self->config.heartbeat_ms * self->config.liveness;
    zlistx_t *keys = zhashx_keys (self->instances);
    for (char *id = zlistx_first (keys); id; id = zlistx_next (keys)) {
        s_instance_t *instance = zhashx_lookup (self->instances, id);
        if (!instance)
            continue; //  (removed meanwhile: a retry found it unreachable)
        if (now - instance->last_seen > limit) {
            self->expired_instances++;
            s_instance_remove (self, instance, S_MISSED_HEARTBEATS);
        }
    }
    zlistx_destroy (&keys);
    if (beat || now < self->probe_until)
        s_probe (self);
    //  Publish a snapshot for health and metrics readers.
    json_t *snap = json_object ();
    json_t *live = json_object ();
    json_t *list = json_array ();
    for (s_instance_t *i = zhashx_first (self->instances); i;
         i = zhashx_next (self->instances)) {
        json_array_append_new (
            list,
            json_pack ("{s:s, s:s, s:I, s:I, s:I, s:b, s:I, s:I}", "id", i->id, "service",
                       i->service, "capacity", (json_int_t) i->capacity, "inflight",
                       (json_int_t) i->inflight, "free", (json_int_t) i->reported,
                       "draining", i->draining, "served", (json_int_t) i->served,
                       "last_seen_ms_ago", (json_int_t) (now - i->last_seen)));
        if (!i->draining) {
            json_t *count = json_object_get (live, i->service);
            json_object_set_new (
                live, i->service,
                json_integer (count ? json_integer_value (count) + 1 : 1));
        }
    }
    json_object_set_new (snap, "instances", list);
    json_object_set_new (snap, "live", live);
    const struct {
        const char *name;
        uint64_t value;
    } counters[] = {{"client_gone", self->client_gone},
                    {"retries", self->retries},
                    {"routed", self->routed},
                    {"replies", self->replies},
                    {"late_replies", self->late_replies},
                    {"dropped_frames", self->dropped_frames},
                    {"unroutable", self->unroutable},
                    {"timeouts", self->timeouts},
                    {"expired_instances", self->expired_instances},
                    {"disconnected_instances", self->disconnected_instances},
                    {"no_instance", self->no_instance},
                    {"waited", self->waited},
                    {"lost", self->lost},
                    {"slow_clients", self->slow_clients},
                    {"waiting", self->waiting_now},
                    {"in_flight", zhashx_size (self->pending)}};
    json_t *counts = json_object ();
    for (size_t i = 0; i < sizeof counters / sizeof counters[0]; i++)
        json_object_set_new (counts, counters[i].name,
                             json_integer ((json_int_t) counters[i].value));
    json_object_set_new (snap, "counters", counts);
    pthread_mutex_lock (&self->snap_lock);
    json_decref (self->snapshot);
    self->snapshot = snap;
    pthread_mutex_unlock (&self->snap_lock);
}

//  Shutdown: answer everything open and everything to come, so no client
//  hangs and no connection stays suspended.
static void
s_fail_all (gw_broker_t *self)
{
    self->closing = true;
    zlistx_t *ids = zhashx_keys (self->pending);
    for (char *id = zlistx_first (ids); id; id = zlistx_next (ids)) {
        s_pending_t *pending = zhashx_lookup (self->pending, id);
        if (pending->instance)
            s_cancel_at (self, pending->instance->id, id, "gateway shutting down", false);
        if (pending->abandoned)
            s_cancel_at (self, pending->abandoned, id, "gateway shutting down", true);
        gw_exchange_fail (pending->exchange, 503, "The gateway is shutting down.");
        s_pending_end (self, id);
    }
    zlistx_destroy (&ids);
    zlistx_purge (self->waiting);
}

static void *
s_thread (void *arg)
{
    gw_broker_t *self = arg;
    int64_t interval = self->config.heartbeat_ms;
    int64_t next_beat = cm_clock_mono_ms () + interval;
    int64_t next_tick = cm_clock_mono_ms ();
    while (!atomic_load (&self->stop)) {
        zmq_pollitem_t items[] = {
            {zsock_resolve (self->router), 0, ZMQ_POLLIN, 0},
            {NULL, cm_mailbox_fd (self->inbox), ZMQ_POLLIN, 0},
            {self->monitor ? cm_monitor_socket (self->monitor) : NULL, 0, ZMQ_POLLIN, 0}};
        int64_t timeout = next_tick - cm_clock_mono_ms ();
        if (timeout < 0)
            timeout = 0;
        if (zmq_poll (items, self->monitor ? 3 : 2, (long) timeout) < 0 &&
            zmq_errno () != EINTR)
            break;
        if (items[1].revents & ZMQ_POLLIN) {
            s_cmd_t *cmd;
            while ((cmd = cm_mailbox_take (self->inbox))) {
                if (cmd->type == S_CMD_SUBMIT)
                    s_submit (self, cmd);
                else if (cmd->type == S_CMD_CANCEL) {
                    //  The HTTP side saw the client leave (the broker's own
                    //  look at suspended sockets counts in s_reap_gone_clients).
                    if (zhashx_lookup (self->pending, cmd->request_id))
                        self->client_gone++;
                    s_cancel (self, cmd->request_id, "client disconnected");
                } else
                    s_fail_all (self);
                s_cmd_free (cmd);
            }
        }
        if (items[0].revents & ZMQ_POLLIN)
            s_receive (self);
        //  After the frames: what a daemon sent before it died is read
        //  before it is given up.
        if (self->monitor && (items[2].revents & ZMQ_POLLIN) &&
            cm_monitor_count (self->monitor, ZMQ_EVENT_DISCONNECTED) > 0) {
            s_probe_for_a_while (self, cm_clock_mono_ms ());
            s_probe (self);
        }
        int64_t now = cm_clock_mono_ms ();
        if (now >= next_tick) {
            bool beat = now >= next_beat;
            if (beat)
                next_beat = now + interval;
            s_tick (self, now, beat);
            //  Ten ticks per heartbeat, at most 100 ms apart: deadlines and
            //  expiry are then accurate to a tenth of an interval.
            int64_t step = interval / 10;
            step = step > 100 ? 100 : step < 5 ? 5 : step;
            //  While a closed connection is looked for, probe twice as often
            //  as a dead instance takes to be given up.
            if (now < self->probe_until && step > S_UNREACHABLE_MS / 2)
                step = S_UNREACHABLE_MS / 2;
            next_tick = now + step;
        }
    }
    s_fail_all (self);
    return NULL;
}
