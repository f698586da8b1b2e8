/*  sup_metrics.c: see sup_metrics.h.

    Instances live in a hash keyed "service\x1finstance". A report replaces
    the instance's last snapshot (snapshots are totals, not deltas, so a
    lost report loses nothing but freshness). The aggregate is built per
    query: a few instances times a few dozen series is cheap next to a
    round trip, and there is no cache to keep consistent. */
#include "sup_metrics.h"
#include "cm_log.h"
#include "cm_metrics_msg.h"
#include "cm_reporter.h"
#include <czmq.h>
#include <errno.h>
#include <sys/timerfd.h>
#include <unistd.h>

//  Frames handled per call, so that signals and children are not starved.
#define S_BURST 256

typedef struct {
    char *service;      //  service name
    char *instance;     //  instance id
    json_t *snapshot;   //  its last snapshot
    int64_t seen_ms;    //  mono ms of its last report (here)
    int64_t sent_at_ms; //  wall ms the instance said it sent it
    uint64_t seq;       //  the report's number
} s_instance_t;

struct sup_metrics_s {
    zsock_t *router;                  //  bound to the endpoint (hub), or NULL
    cm_reporter_t *reporter;          //  to the hub (reporting role), or NULL
    int64_t refresh_ms;               //  reporting role: series refresh period
    int timerfd;                      //  reporting role: its timer, or -1
    char *endpoint;                   //  as bound, with the real port
    int64_t ttl_ms;                   //  silence after which an instance goes
    zhashx_t *instances;              //  "service\x1finstance" -> s_instance_t
    cm_metrics_t *registry;           //  the hub's own series
    sup_supervisor_t *supervisor;     //  attached loop, or NULL
    cm_metric_t *accepted, *rejected; //  llmrt_supervisor_reports_total
    cm_metric_t *queries;             //  llmrt_supervisor_queries_total
    cm_metric_t *expired;             //  llmrt_supervisor_instances_expired_total
    cm_metric_t *reporting;           //  llmrt_supervisor_instances_reporting
    uint64_t rejected_logged;         //  rejections already logged (rate limit)
};

static void
s_instance_free (void **item)
{
    s_instance_t *instance = *item;
    free (instance->service);
    free (instance->instance);
    json_decref (instance->snapshot);
    free (instance);
    *item = NULL;
}

sup_metrics_t *
sup_metrics_new (const char *endpoint, int64_t ttl_ms)
{
    assert (endpoint && ttl_ms > 0);
    zsock_t *router = zsock_new (ZMQ_ROUTER);
    assert (router);
    //  A reply to a gateway that left fails at once (counted), a frame over
    //  the limit is refused by libzmq before we allocate for it.
    zsock_set_router_mandatory (router, 1);
    zsock_set_maxmsgsize (router, (int) CM_METRICS_MSG_MAX_BYTES);
    zsock_set_linger (router, 0);
    int port = zsock_bind (router, "%s", endpoint);
    if (port < 0) {
        cm_error ("SUPERVISOR_ENDPOINT: cannot bind %s: %s", endpoint,
                  zmq_strerror (zmq_errno ()));
        zsock_destroy (&router);
        return NULL;
    }
    sup_metrics_t *self = cm_calloc (1, sizeof *self);
    self->router = router;
    self->ttl_ms = ttl_ms;
    self->timerfd = -1;
    //  With "tcp://host:*" (tests), say which port was taken.
    const char *colon = strrchr (endpoint, ':');
    if (!strncmp (endpoint, "tcp://", 6) && colon && port > 0) {
        size_t len = (size_t) (colon - endpoint);
        self->endpoint = cm_malloc (len + 16);
        snprintf (self->endpoint, len + 16, "%.*s:%d", (int) len, endpoint, port);
    } else
        self->endpoint = cm_strdup (endpoint);
    self->instances = zhashx_new ();
    zhashx_set_destructor (self->instances, s_instance_free);
    self->registry = cm_metrics_new ();
    const char *help = "Metrics reports received from instances, by outcome (rejected: "
                       "malformed, or from one instance too many).";
    const char *accepted[] = {"outcome", "accepted", NULL};
    const char *rejected[] = {"outcome", "rejected", NULL};
    self->accepted = cm_metrics_counter (self->registry, "llmrt_supervisor_reports_total",
                                         help, accepted);
    self->rejected = cm_metrics_counter (self->registry, "llmrt_supervisor_reports_total",
                                         help, rejected);
    self->queries = cm_metrics_counter (self->registry, "llmrt_supervisor_queries_total",
                                        "Aggregate queries answered.", NULL);
    self->expired = cm_metrics_counter (
        self->registry, "llmrt_supervisor_instances_expired_total",
        "Instances forgotten after reporting nothing for METRICS_INSTANCE_TTL_MS.", NULL);
    self->reporting =
        cm_metrics_gauge (self->registry, "llmrt_supervisor_instances_reporting",
                          "Instances whose reports are in the aggregate.", NULL);
    cm_info ("metrics hub listening on %s (instances expire after %lld ms)",
             self->endpoint, (long long) ttl_ms);
    return self;
}

sup_metrics_t *
sup_metrics_new_reporter (const char *endpoint, const char *instance, int64_t interval_ms)
{
    assert (endpoint && instance && interval_ms > 0);
    sup_metrics_t *self = cm_calloc (1, sizeof *self);
    self->endpoint = cm_strdup (endpoint);
    self->ttl_ms = 1;
    self->timerfd = -1;
    self->refresh_ms = interval_ms;
    self->instances = zhashx_new ();
    self->registry = cm_metrics_new ();
    //  The reporter's thread inherits the signal mask of this one: the
    //  supervisor has blocked its signals by now (main's order).
    self->reporter =
        cm_reporter_new (&(cm_reporter_config_t){.metrics = self->registry,
                                                 .endpoint = endpoint,
                                                 .service = "supervisor",
                                                 .instance = instance,
                                                 .interval_ms = interval_ms});
    cm_info ("metrics: reporting this supervisor's series to the hub at %s as %s",
             endpoint, instance);
    return self;
}

void
sup_metrics_destroy (sup_metrics_t **self_p)
{
    assert (self_p);
    sup_metrics_t *self = *self_p;
    if (!self)
        return;
    //  The reporter snapshots the registry: it stops first.
    cm_reporter_destroy (&self->reporter);
    if (self->timerfd >= 0)
        close (self->timerfd);
    zhashx_destroy (&self->instances);
    cm_metrics_destroy (&self->registry);
    zsock_destroy (&self->router);
    free (self->endpoint);
    free (self);
    *self_p = NULL;
}

const char *
sup_metrics_endpoint (sup_metrics_t *self)
{
    assert (self);
    return self->endpoint;
}

void *
sup_metrics_socket (sup_metrics_t *self)
{
    assert (self);
    return self->router ? zsock_resolve (self->router) : NULL;
}

cm_metrics_t *
sup_metrics_registry (sup_metrics_t *self)
{
    assert (self);
    return self->registry;
}

//  Collector: the supervisor's programs as series, read at each snapshot.
static void
s_collect_programs (cm_metrics_t *metrics, void *arg)
{
    sup_metrics_t *self = arg;
    for (size_t i = 0; i < sup_supervisor_programs (self->supervisor); i++) {
        sup_program_stats_t stats;
        sup_supervisor_program_stats (self->supervisor, i, &stats);
        const char *labels[] = {"program", stats.name, NULL};
        cm_metric_set (cm_metrics_counter (metrics, "llmrt_supervisor_restarts_total",
                                           "Restarts of the program's instances "
                                           "(starts after each one's first).",
                                           labels),
                       (double) stats.restarts);
        cm_metric_set (cm_metrics_gauge (metrics, "llmrt_supervisor_children_up",
                                         "Instances of the program running now.", labels),
                       (double) stats.running);
        cm_metric_set (cm_metrics_gauge (metrics, "llmrt_supervisor_children_configured",
                                         "Instances of the program the suite asks for.",
                                         labels),
                       (double) stats.replicas);
        cm_metric_set (cm_metrics_gauge (metrics, "llmrt_supervisor_children_given_up",
                                         "Instances of the program given up after "
                                         "crashing too often.",
                                         labels),
                       (double) stats.given_up);
    }
}

static void
s_readable (sup_supervisor_t *supervisor, void *socket, int fd, void *arg)
{
    (void) supervisor;
    (void) socket;
    (void) fd;
    sup_metrics_handle (arg, cm_clock_mono_ms ());
}

//  Reporting role: the timer fired. The series are refreshed here, on the
//  supervisor's thread, because the reporter snapshots on its own thread
//  and the programs' state belongs to this one.
static void
s_refresh (sup_supervisor_t *supervisor, void *socket, int fd, void *arg)
{
    (void) supervisor;
    (void) socket;
    uint64_t expirations;
    ssize_t rc = read (fd, &expirations, sizeof expirations);
    (void) rc;
    sup_metrics_t *self = arg;
    s_collect_programs (self->registry, self);
}

int
sup_metrics_attach (sup_metrics_t *self, sup_supervisor_t *supervisor)
{
    assert (self && supervisor && !self->supervisor);
    if (self->router) {
        if (sup_supervisor_reader (supervisor, sup_metrics_socket (self), -1, s_readable,
                                   self))
            return -1;
        self->supervisor = supervisor;
        cm_metrics_collector (self->registry, s_collect_programs, self);
        return 0;
    }
    self->timerfd = timerfd_create (CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    if (self->timerfd < 0) {
        cm_error ("metrics: cannot create a timer: %s", strerror (errno));
        return -1;
    }
    struct timespec period = {.tv_sec = (time_t) (self->refresh_ms / 1000),
                              .tv_nsec = (long) (self->refresh_ms % 1000) * 1000000};
    struct itimerspec spec = {.it_interval = period, .it_value = period};
    if (timerfd_settime (self->timerfd, 0, &spec, NULL) ||
        sup_supervisor_reader (supervisor, NULL, self->timerfd, s_refresh, self))
        return -1;
    self->supervisor = supervisor;
    s_collect_programs (self->registry, self);
    return 0;
}

//  A frame we will not use: counted, and logged at 1, 2, 4, 8... so that a
//  stream of garbage does not flood the log.
static void
s_reject (sup_metrics_t *self, const char *why)
{
    cm_metric_add (self->rejected, 1);
    uint64_t n = (uint64_t) cm_metric_value (self->rejected);
    if ((n & (n - 1)) == 0)
        cm_warn ("metrics: refused a frame: %s (%llu refused so far)", why,
                 (unsigned long long) n);
}

static void
s_answer (sup_metrics_t *self, zmq_msg_t *identity, uint64_t id, int64_t now_ms)
{
    cm_metrics_msg_t *answer = cm_metrics_msg_new (CM_METRICS_MSG_AGGREGATE);
    cm_metrics_msg_set_id (answer, id);
    cm_metrics_msg_set_body (answer, sup_metrics_aggregate (self, now_ms));
    char *data;
    size_t size;
    cm_metrics_msg_encode (answer, &data, &size);
    cm_metrics_msg_destroy (&answer);
    void *handle = zsock_resolve (self->router);
    //  Never block the supervisor's loop: a gateway that is gone or not
    //  reading loses its answer (it has a timeout).
    if (zmq_send (handle, zmq_msg_data (identity), zmq_msg_size (identity),
                  ZMQ_SNDMORE | ZMQ_DONTWAIT) < 0 ||
        zmq_send (handle, data, size, ZMQ_DONTWAIT) < 0)
        cm_debug ("metrics: could not answer a query: %s", zmq_strerror (zmq_errno ()));
    else
        cm_metric_add (self->queries, 1);
    free (data);
}

void
sup_metrics_handle (sup_metrics_t *self, int64_t now_ms)
{
    assert (self);
    void *handle = zsock_resolve (self->router);
    for (int burst = 0; burst < S_BURST; burst++) {
        zmq_msg_t identity, frame;
        zmq_msg_init (&identity);
        if (zmq_msg_recv (&identity, handle, ZMQ_DONTWAIT) < 0) {
            zmq_msg_close (&identity);
            break;
        }
        zmq_msg_init (&frame);
        bool more =
            zmq_msg_more (&identity) && zmq_msg_recv (&frame, handle, ZMQ_DONTWAIT) >= 0;
        //  One content frame, no more: drain and refuse anything else.
        bool extra = more && zmq_msg_more (&frame);
        while (more && zmq_msg_more (&frame)) {
            zmq_msg_close (&frame);
            zmq_msg_init (&frame);
            if (zmq_msg_recv (&frame, handle, ZMQ_DONTWAIT) < 0)
                break;
        }
        if (!more || extra) {
            s_reject (self, "not one frame after the routing id");
            zmq_msg_close (&frame);
            zmq_msg_close (&identity);
            continue;
        }
        char err[256];
        cm_metrics_msg_t *msg = cm_metrics_msg_decode (
            zmq_msg_data (&frame), zmq_msg_size (&frame), err, sizeof err);
        zmq_msg_close (&frame);
        if (!msg)
            s_reject (self, err);
        else if (cm_metrics_msg_type (msg) == CM_METRICS_MSG_REPORT) {
            json_t *snapshot = json_incref (cm_metrics_msg_body (msg));
            if (!sup_metrics_report (self, cm_metrics_msg_service (msg),
                                     cm_metrics_msg_instance (msg), snapshot,
                                     cm_metrics_msg_sent_ms (msg),
                                     cm_metrics_msg_id (msg), now_ms))
                s_reject (self, "too many instances");
        } else if (cm_metrics_msg_type (msg) == CM_METRICS_MSG_QUERY)
            s_answer (self, &identity, cm_metrics_msg_id (msg), now_ms);
        else
            s_reject (self, "an AGGREGATE is only ever sent by the hub");
        cm_metrics_msg_destroy (&msg);
        zmq_msg_close (&identity);
    }
}

bool
sup_metrics_report (sup_metrics_t *self, const char *service, const char *instance,
                    json_t *snapshot, int64_t sent_at_ms, uint64_t seq, int64_t now_ms)
{
    assert (self && service && instance && snapshot);
    size_t key_size = strlen (service) + strlen (instance) + 2;
    char *key = cm_malloc (key_size);
    snprintf (key, key_size, "%s\x1f%s", service, instance);
    s_instance_t *entry = zhashx_lookup (self->instances, key);
    if (!entry) {
        //  Make room first: the silent ones go before a new one is refused.
        if (zhashx_size (self->instances) >= SUP_METRICS_INSTANCES_MAX)
            sup_metrics_expire (self, now_ms);
        if (zhashx_size (self->instances) >= SUP_METRICS_INSTANCES_MAX) {
            free (key);
            json_decref (snapshot);
            return false;
        }
        entry = cm_calloc (1, sizeof *entry);
        entry->service = cm_strdup (service);
        entry->instance = cm_strdup (instance);
        zhashx_insert (self->instances, key, entry);
        cm_info ("metrics: %s instance %s reports", service, instance);
    }
    free (key);
    json_decref (entry->snapshot);
    entry->snapshot = snapshot;
    entry->seen_ms = now_ms;
    entry->sent_at_ms = sent_at_ms;
    entry->seq = seq;
    cm_metric_add (self->accepted, 1);
    return true;
}

size_t
sup_metrics_expire (sup_metrics_t *self, int64_t now_ms)
{
    assert (self);
    size_t count = 0;
    zlistx_t *keys = zhashx_keys (self->instances);
    for (const char *key = zlistx_first (keys); key; key = zlistx_next (keys)) {
        s_instance_t *entry = zhashx_lookup (self->instances, key);
        if (now_ms - entry->seen_ms < self->ttl_ms)
            continue;
        cm_info ("metrics: %s instance %s has not reported for %lld ms: forgotten",
                 entry->service, entry->instance, (long long) (now_ms - entry->seen_ms));
        zhashx_delete (self->instances, key);
        count++;
    }
    zlistx_destroy (&keys);
    cm_metric_add (self->expired, (double) count);
    return count;
}

static int
s_compare (const void *a, const void *b)
{
    const s_instance_t *x = *(s_instance_t *const *) a, *y = *(s_instance_t *const *) b;
    int rc = strcmp (x->service, y->service);
    return rc ? rc : strcmp (x->instance, y->instance);
}

json_t *
sup_metrics_aggregate (sup_metrics_t *self, int64_t now_ms)
{
    assert (self);
    sup_metrics_expire (self, now_ms);
    size_t count = zhashx_size (self->instances);
    s_instance_t **sorted = cm_calloc (count, sizeof *sorted);
    size_t n = 0;
    for (s_instance_t *entry = zhashx_first (self->instances); entry;
         entry = zhashx_next (self->instances))
        sorted[n++] = entry;
    qsort (sorted, n, sizeof *sorted, s_compare);
    cm_metric_set (self->reporting, (double) n);
    json_t *services = json_object ();
    json_t *instances = json_array ();
    for (size_t i = 0; i < n; i++) {
        s_instance_t *entry = sorted[i];
        json_t *service = json_object_get (services, entry->service);
        if (!service) {
            service = json_pack ("{s:i, s:{}}", "instances", 0, "snapshot");
            json_object_set_new (services, entry->service, service);
        }
        json_object_set_new (
            service, "instances",
            json_integer (json_integer_value (json_object_get (service, "instances")) +
                          1));
        cm_metrics_merge (json_object_get (service, "snapshot"), entry->snapshot);
        json_array_append_new (
            instances, json_pack ("{s:s, s:s, s:I, s:I, s:I, s:O}", "service",
                                  entry->service, "instance", entry->instance, "age_ms",
                                  (json_int_t) (now_ms - entry->seen_ms), "sent_at_ms",
                                  (json_int_t) entry->sent_at_ms, "seq",
                                  (json_int_t) entry->seq, "snapshot", entry->snapshot));
    }
    free (sorted);
    return json_pack ("{s:I, s:I, s:o, s:o, s:o}", "generated_at_ms",
                      (json_int_t) cm_clock_wall_ms (), "ttl_ms",
                      (json_int_t) self->ttl_ms, "services", services, "instances",
                      instances, "supervisor", cm_metrics_snapshot (self->registry));
}

size_t
sup_metrics_instances (sup_metrics_t *self)
{
    assert (self);
    return zhashx_size (self->instances);
}
