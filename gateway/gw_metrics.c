/*  gw_metrics.c: see gw_metrics.h.

    Request paths only touch pre-registered series (atomics). The metrics
    thread owns the supervisor socket; HTTP threads reach it through a
    mailbox, like the broker. At most one QUERY is out at a time: the
    requests that wait share its answer, and an answer that comes after its
    query timed out is recognised by its id and dropped. */
#include "gw_metrics.h"
#include "cm_log.h"
#include "cm_mailbox.h"
#include "cm_metrics_msg.h"
#include "cm_reporter.h"
#include <czmq.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <unistd.h>

#define S_DEFAULT_TIMEOUT_MS 250
//  QUERYs the socket holds for a connected but slow supervisor.
#define S_SNDHWM 16

static const char *s_class_names[GW_METRICS_CLASSES] = {"chat", "ingestion", "agent",
                                                        "ops", "unmatched"};

//  Status classes, the status_class label; "none": no response was queued.
#define S_STATUS_CLASSES 6
static const char *s_status_names[S_STATUS_CLASSES] = {"none", "1xx", "2xx",
                                                       "3xx",  "4xx", "5xx"};

typedef enum {
    S_QUERY_ANSWERED = 0, //  the supervisor answered in time
    S_QUERY_TIMEOUT,      //  it did not, within the timeout
    S_QUERY_UNREACHABLE,  //  no connection to it (or not configured)
    S_QUERY_OUTCOMES,
} s_query_outcome_t;

static const char *s_query_names[S_QUERY_OUTCOMES] = {"answered", "timeout",
                                                      "unreachable"};

//  The broker's counters (gw_broker_snapshot "counters") as series.
static const struct {
    const char *key;  //  in the broker's snapshot
    const char *name; //  series name
    const char *help; //  its help
} s_broker_counters[] = {
    {"routed", "llmrt_gateway_broker_routed_total",
     "Requests sent to a daemon instance."},
    {"replies", "llmrt_gateway_broker_replies_total",
     "Reply frames (partial or final) received from daemons for waiting requests."},
    {"retries", "llmrt_gateway_broker_retries_total",
     "Requests sent again to another instance after the first died before replying."},
    {"timeouts", "llmrt_gateway_broker_timeouts_total",
     "Requests answered 504 at their deadline."},
    {"no_instance", "llmrt_gateway_broker_no_instance_total",
     "Requests answered 503 for want of a live instance."},
    {"waited", "llmrt_gateway_broker_waited_total",
     "Requests that waited for an instance to register and were then sent to it."},
    {"client_gone", "llmrt_gateway_broker_client_gone_total",
     "Requests whose client left before the reply ended (CANCEL sent)."},
    {"late_replies", "llmrt_gateway_broker_late_replies_total",
     "Replies for requests that had already ended (cancelled or timed out)."},
    {"dropped_frames", "llmrt_gateway_broker_dropped_frames_total",
     "Frames from daemons dropped as undecodable."},
    {"unroutable", "llmrt_gateway_broker_unroutable_total",
     "Frames that could not be sent to an instance."},
    {"expired_instances", "llmrt_gateway_broker_expired_instances_total",
     "Instances expired after missing their heartbeats."},
    {"disconnected_instances", "llmrt_gateway_broker_disconnected_instances_total",
     "Instances given up because their connection closed (the daemon died)."},
    {"slow_clients", "llmrt_gateway_broker_slow_clients_total",
     "Streams ended because their client read slower than the answer came "
     "(GATEWAY_STREAM_BUFFER_BYTES waiting for it)."},
    {"lost", "llmrt_gateway_broker_lost_total",
     "Requests found lost in a connection that broke (the instance no longer held "
     "them, or part of a stream was missing): resent, or answered 502."},
};

//  One metrics request waiting for the supervisor's answer.
typedef struct {
    gw_exchange_t *exchange; //  our reference
    bool prometheus;         //  text format, else JSON
} s_job_t;

struct gw_metrics_s {
    cm_metrics_t *registry; //  the gateway's registry (borrowed)
    gw_broker_t *broker;    //  borrowed
    gw_limits_t *limits;    //  borrowed, or NULL
    char *instance;         //  this gateway's id
    char *supervisor;       //  SUPERVISOR_ENDPOINT, or NULL
    int64_t timeout_ms;     //  for one QUERY
    cm_metric_t *requests[GW_METRICS_CLASSES][S_STATUS_CLASSES]; //  by status
    cm_metric_t *durations[GW_METRICS_CLASSES];                  //  latency
    cm_metric_t *in_flight[GW_METRICS_CLASSES];                  //  live concurrency
    cm_metric_t *queries[S_QUERY_OUTCOMES]; //  aggregate queries by outcome
    cm_reporter_t *reporter;                //  to the supervisor, or NULL
    cm_mailbox_t *inbox;                    //  jobs from HTTP threads
    pthread_t thread;                       //  the metrics thread
    atomic_bool closing;                    //  answer 503 from now on
    atomic_bool stop;                       //  the thread should end
    int64_t refresh_ms;                     //  period of background queries
    pthread_mutex_t cache_lock;             //  guards breakers, given_up, breakers_at
    json_t *breakers;                       //  last breakers section, or NULL
    json_t *given_up;                       //  and its programs given up, or NULL
    int64_t breakers_at;                    //  mono ms it was built
};

static void *s_thread (void *arg);
static void s_collect (cm_metrics_t *metrics, void *arg);

gw_metrics_t *
gw_metrics_new (cm_metrics_t *registry, const gw_metrics_config_t *config)
{
    assert (registry && config && config->broker);
    gw_metrics_t *self = cm_calloc (1, sizeof *self);
    self->registry = registry;
    self->broker = config->broker;
    self->limits = config->limits;
    if (config->instance && *config->instance)
        self->instance = cm_strdup (config->instance);
    else {
        char host[128] = "host";
        gethostname (host, sizeof host - 1);
        self->instance = cm_malloc (strlen (host) + 32);
        sprintf (self->instance, "gateway-%s-%d", host, (int) getpid ());
    }
    if (config->supervisor && *config->supervisor)
        self->supervisor = cm_strdup (config->supervisor);
    self->timeout_ms =
        config->query_timeout_ms > 0 ? config->query_timeout_ms : S_DEFAULT_TIMEOUT_MS;
    self->refresh_ms = config->report_ms > 0 ? config->report_ms : 1000;
    pthread_mutex_init (&self->cache_lock, NULL);
    for (int c = 0; c < GW_METRICS_CLASSES; c++) {
        for (int s = 0; s < S_STATUS_CLASSES; s++) {
            const char *labels[] = {"route_class", s_class_names[c], "status_class",
                                    s_status_names[s], NULL};
            self->requests[c][s] = cm_metrics_counter (
                registry, "llmrt_gateway_requests_total",
                "HTTP requests answered by the gateway, by route class and status class "
                "(none: the client left before a response).",
                labels);
        }
        const char *labels[] = {"route_class", s_class_names[c], NULL};
        self->durations[c] = cm_metrics_histogram (
            registry, "llmrt_gateway_request_duration_seconds",
            "From a request being complete to its response being finished.", labels,
            cm_metrics_latency_buckets, cm_metrics_latency_bucket_count);
        self->in_flight[c] = cm_metrics_gauge (
            registry, "llmrt_gateway_requests_in_flight",
            "Complete requests whose response is not finished yet.", labels);
    }
    for (int q = 0; q < S_QUERY_OUTCOMES; q++) {
        const char *labels[] = {"outcome", s_query_names[q], NULL};
        self->queries[q] = cm_metrics_counter (
            registry, "llmrt_gateway_aggregate_queries_total",
            "Queries for the supervisor's aggregate, by outcome.", labels);
    }
    cm_metrics_collector (registry, s_collect, self);
    if (self->supervisor) {
        cm_reporter_config_t reporter = {.metrics = registry,
                                         .endpoint = self->supervisor,
                                         .service = "gateway",
                                         .instance = self->instance,
                                         .interval_ms = config->report_ms};
        self->reporter = cm_reporter_new (&reporter);
    }
    self->inbox = cm_mailbox_new ();
    //  czmq's set-up is not safe from two threads at once: done here.
    zsys_init ();
    if (pthread_create (&self->thread, NULL, s_thread, self))
        abort ();
    return self;
}

static void
s_job_fail (void *item)
{
    s_job_t *job = item;
    gw_exchange_fail (job->exchange, 503, "The gateway is shutting down.");
    gw_exchange_unref (&job->exchange);
    free (job);
}

void
gw_metrics_destroy (gw_metrics_t **self_p)
{
    assert (self_p);
    gw_metrics_t *self = *self_p;
    if (!self)
        return;
    atomic_store (&self->closing, true);
    atomic_store (&self->stop, true);
    uint64_t one = 1;
    ssize_t rc = write (cm_mailbox_fd (self->inbox), &one, sizeof one);
    (void) rc;
    pthread_join (self->thread, NULL);
    cm_mailbox_destroy (&self->inbox, s_job_fail);
    //  No snapshot may run the collector once the broker is gone.
    cm_reporter_destroy (&self->reporter);
    cm_metrics_collector_remove (self->registry, s_collect, self);
    json_decref (self->given_up);
    json_decref (self->breakers);
    pthread_mutex_destroy (&self->cache_lock);
    free (self->instance);
    free (self->supervisor);
    free (self);
    *self_p = NULL;
}

const char *
gw_metrics_instance (gw_metrics_t *self)
{
    assert (self);
    return self->instance;
}

gw_metrics_class_t
gw_metrics_class (const gw_route_t *route)
{
    if (!route)
        return GW_METRICS_UNMATCHED;
    if (!route->service)
        return GW_METRICS_OPS;
    if (!strcmp (route->service, "chat"))
        return GW_METRICS_CHAT;
    if (!strcmp (route->service, "ingest"))
        return GW_METRICS_INGESTION;
    if (!strcmp (route->service, "agent"))
        return GW_METRICS_AGENT;
    return GW_METRICS_UNMATCHED;
}

const char *
gw_metrics_class_name (gw_metrics_class_t route_class)
{
    assert (route_class < GW_METRICS_CLASSES);
    return s_class_names[route_class];
}

void
gw_metrics_begin (gw_metrics_t *self, gw_metrics_class_t route_class)
{
    assert (self && route_class < GW_METRICS_CLASSES);
    cm_metric_add (self->in_flight[route_class], 1);
}

void
gw_metrics_count (gw_metrics_t *self, gw_metrics_class_t route_class, unsigned status)
{
    assert (self && route_class < GW_METRICS_CLASSES);
    int s = status >= 100 && status < 600 ? (int) (status / 100) : 0;
    cm_metric_add (self->requests[route_class][s], 1);
}

void
gw_metrics_end (gw_metrics_t *self, gw_metrics_class_t route_class, unsigned status,
                double seconds)
{
    assert (self && route_class < GW_METRICS_CLASSES);
    cm_metric_add (self->in_flight[route_class], -1);
    cm_metric_observe (self->durations[route_class], seconds);
    gw_metrics_count (self, route_class, status);
}

gw_exchange_t *
gw_metrics_request (gw_metrics_t *self, struct MHD_Connection *connection,
                    const char *request_id, bool prometheus)
{
    assert (self && connection && request_id);
    gw_exchange_t *exchange = gw_exchange_new (request_id, connection, 0);
    //  Suspend before the thread can answer, so its resume always follows.
    gw_exchange_respond (exchange);
    s_job_t *job = cm_calloc (1, sizeof *job);
    job->exchange = gw_exchange_ref (exchange);
    job->prometheus = prometheus;
    if (atomic_load (&self->closing))
        s_job_fail (job);
    else
        cm_mailbox_post (self->inbox, job);
    return exchange;
}

void
gw_metrics_close (gw_metrics_t *self)
{
    assert (self);
    atomic_store (&self->closing, true);
    uint64_t one = 1;
    ssize_t rc = write (cm_mailbox_fd (self->inbox), &one, sizeof one);
    (void) rc;
}

//  --- collectors -----------------------------------------------------------

static void
s_collect_limits (gw_metrics_t *self, cm_metrics_t *metrics)
{
    json_t *stats = gw_limits_stats (self->limits);
    const char *name;
    json_t *limit;
    json_object_foreach (stats, name, limit)
    {
        const char *labels[] = {"limit", name, NULL};
        static const char *outcomes[] = {"allowed", "rejected"};
        for (size_t i = 0; i < 2; i++) {
            const char *with[] = {"limit", name, "outcome", outcomes[i], NULL};
            cm_metric_set (
                cm_metrics_counter (metrics, "llmrt_gateway_ratelimit_requests_total",
                                    "Requests decided by a rate limit: allowed (and "
                                    "forwarded) or rejected (429) in its name.",
                                    with),
                json_number_value (json_object_get (limit, outcomes[i])));
        }
        cm_metric_set (
            cm_metrics_gauge (metrics, "llmrt_gateway_ratelimit_requests_per_second",
                              "A rate limit's rate (0: unlimited).", labels),
            json_number_value (json_object_get (limit, "requests_per_second")));
        cm_metric_set (cm_metrics_gauge (metrics,
                                         "llmrt_gateway_ratelimit_burst_requests",
                                         "A rate limit's burst.", labels),
                       json_number_value (json_object_get (limit, "burst")));
        if (json_object_get (limit, "keys")) {
            cm_metric_set (cm_metrics_gauge (metrics, "llmrt_gateway_ratelimit_keys",
                                             "API keys the per-key limit tracks now.",
                                             NULL),
                           json_number_value (json_object_get (limit, "keys")));
            cm_metric_set (cm_metrics_counter (
                               metrics, "llmrt_gateway_ratelimit_key_evictions_total",
                               "API keys forgotten to make room for others.", NULL),
                           json_number_value (json_object_get (limit, "evictions")));
        }
    }
    json_decref (stats);
}

//  Refresh the series mirrored from the broker and the limits.
static void
s_collect (cm_metrics_t *metrics, void *arg)
{
    gw_metrics_t *self = arg;
    json_t *snap = gw_broker_snapshot (self->broker);
    json_t *counters = json_object_get (snap, "counters");
    for (size_t i = 0; i < sizeof s_broker_counters / sizeof s_broker_counters[0]; i++)
        cm_metric_set (
            cm_metrics_counter (metrics, s_broker_counters[i].name,
                                s_broker_counters[i].help, NULL),
            json_number_value (json_object_get (counters, s_broker_counters[i].key)));
    cm_metric_set (cm_metrics_gauge (metrics, "llmrt_gateway_broker_requests_in_flight",
                                     "Requests the broker waits on a daemon for.", NULL),
                   json_number_value (json_object_get (counters, "in_flight")));
    cm_metric_set (cm_metrics_gauge (metrics, "llmrt_gateway_broker_requests_waiting",
                                     "Requests waiting for an instance of their service "
                                     "to register.",
                                     NULL),
                   json_number_value (json_object_get (counters, "waiting")));
    json_t *live = json_object_get (snap, "live");
    for (const char *const *s = gw_routes_services (); *s; s++) {
        const char *labels[] = {"backend", *s, NULL};
        cm_metric_set (cm_metrics_gauge (metrics, "llmrt_gateway_backend_instances",
                                         "Live (registered, not draining) instances of a "
                                         "daemon service.",
                                         labels),
                       json_number_value (json_object_get (live, *s)));
    }
    json_decref (snap);
    if (self->limits)
        s_collect_limits (self, metrics);
}

//  --- the view: the aggregate with this gateway's live snapshot ------------

//  {"services": {..}, "instances": [..], "supervisor": .. | null}, where this
//  gateway's instance carries own (its live snapshot) and the "gateway"
//  service is merged again from its instances.
static json_t *
s_view (gw_metrics_t *self, const json_t *aggregate, json_t *own)
{
    json_t *instances = json_array ();
    size_t i;
    json_t *entry;
    json_array_foreach (json_object_get (aggregate, "instances"), i, entry)
    {
        const char *service = json_string_value (json_object_get (entry, "service"));
        const char *instance = json_string_value (json_object_get (entry, "instance"));
        if (!service || !instance ||
            !json_is_object (json_object_get (entry, "snapshot")))
            continue;
        if (!strcmp (service, "gateway") && !strcmp (instance, self->instance))
            continue;
        json_array_append (instances, entry);
    }
    json_array_append_new (instances, json_pack ("{s:s, s:s, s:i, s:O}", "service",
                                                 "gateway", "instance", self->instance,
                                                 "age_ms", 0, "snapshot", own));
    json_t *services = json_object ();
    const char *name;
    json_t *service;
    json_object_foreach (json_object_get (aggregate, "services"), name, service)
    {
        if (strcmp (name, "gateway") &&
            json_is_object (json_object_get (service, "snapshot")))
            json_object_set (services, name, service);
    }
    json_t *gateway = json_pack ("{s:i, s:{}}", "instances", 0, "snapshot");
    json_array_foreach (instances, i, entry)
    {
        if (strcmp (json_string_value (json_object_get (entry, "service")), "gateway"))
            continue;
        json_object_set_new (
            gateway, "instances",
            json_integer (json_integer_value (json_object_get (gateway, "instances")) +
                          1));
        cm_metrics_merge (json_object_get (gateway, "snapshot"),
                          json_object_get (entry, "snapshot"));
    }
    json_object_set_new (services, "gateway", gateway);
    json_t *supervisor = json_object_get (aggregate, "supervisor");
    return json_pack ("{s:o, s:o, s:O}", "services", services, "instances", instances,
                      "supervisor",
                      json_is_object (supervisor) ? supervisor : json_null ());
}

//  --- JSON ---------------------------------------------------------------

//  The series array of family name in snapshot (borrowed), or NULL.
static json_t *
s_series_of (const json_t *snapshot, const char *name)
{
    size_t i;
    json_t *family;
    json_array_foreach (json_object_get (snapshot, "families"), i, family)
    {
        const char *n = json_string_value (json_object_get (family, "name"));
        if (n && !strcmp (n, name))
            return json_object_get (family, "series");
    }
    return NULL;
}

static const char *
s_label (const json_t *series, const char *name)
{
    return json_string_value (json_object_get (json_object_get (series, "labels"), name));
}

//  A number for JSON: null when it is not one (a quantile of nothing).
static json_t *
s_number (double value)
{
    if (!isfinite (value))
        return json_null ();
    if (value == floor (value) && fabs (value) < 9007199254740992.0)
        return json_integer ((json_int_t) value);
    return json_real (value);
}

//  {"count", "p50", "p90", "p99"} of a histogram series (NULL: all null).
static json_t *
s_latency (const json_t *series)
{
    return json_pack (
        "{s:o, s:o, s:o, s:o}", "count",
        s_number (series ? json_number_value (json_object_get (series, "count")) : 0),
        "p50", s_number (cm_metrics_quantile (series, 0.5)), "p90",
        s_number (cm_metrics_quantile (series, 0.9)), "p99",
        s_number (cm_metrics_quantile (series, 0.99)));
}

//  Add value to object[key] (numbers).
static void
s_add (json_t *object, const char *key, double value)
{
    json_t *have = json_object_get (object, key);
    json_object_set_new (object, key,
                         s_number ((have ? json_number_value (have) : 0) + value));
}

//  The gateway's own section, from its live snapshot.
static json_t *
s_gateway_section (gw_metrics_t *self, json_t *own)
{
    json_t *requests = json_object ();
    json_t *latency = json_object ();
    json_t *in_flight = json_object ();
    for (int c = 0; c < GW_METRICS_CLASSES; c++) {
        json_t *by_status = json_pack ("{s:i}", "total", 0);
        json_object_set_new (requests, s_class_names[c], by_status);
        const char *labels[] = {"route_class", s_class_names[c], NULL};
        json_object_set_new (latency, s_class_names[c],
                             s_latency (cm_metrics_series (
                                 own, "llmrt_gateway_request_duration_seconds", labels)));
        json_object_set_new (
            in_flight, s_class_names[c],
            s_number (cm_metrics_sum (own, "llmrt_gateway_requests_in_flight", labels)));
    }
    json_object_set_new (
        in_flight, "total",
        s_number (cm_metrics_sum (own, "llmrt_gateway_requests_in_flight", NULL)));
    size_t i;
    json_t *series;
    json_array_foreach (s_series_of (own, "llmrt_gateway_requests_total"), i, series)
    {
        json_t *by_status = json_object_get (requests, s_label (series, "route_class"));
        const char *status = s_label (series, "status_class");
        double value = json_number_value (json_object_get (series, "value"));
        if (!by_status || !status || value == 0)
            continue;
        s_add (by_status, status, value);
        s_add (by_status, "total", value);
    }
    json_t *broker = gw_broker_snapshot (self->broker);
    json_t *body =
        json_pack ("{s:s, s:o, s:o, s:o, s:O}", "instance", self->instance, "requests",
                   requests, "latency_seconds", latency, "in_flight", in_flight, "broker",
                   json_object_get (broker, "counters"));
    json_decref (broker);
    return body;
}

//  The value of family name in snapshot for queue (its "queue" label).
static double
s_queue_value (const json_t *snapshot, const char *name, const char *queue)
{
    const char *labels[] = {"queue", queue, NULL};
    return cm_metrics_sum (snapshot, name, labels);
}

//  Every queue: its depth, active, limit, outcomes and timing, per service
//  (merged) and per instance.
static json_t *
s_queues_section (json_t *view)
{
    json_t *queues = json_object ();
    const char *service;
    json_t *entry;
    json_object_foreach (json_object_get (view, "services"), service, entry)
    {
        json_t *merged = json_object_get (entry, "snapshot");
        size_t i;
        json_t *series;
        json_array_foreach (s_series_of (merged, "llmrt_queue_concurrency"), i, series)
        {
            const char *queue = s_label (series, "queue");
            if (!queue || json_object_get (queues, queue))
                continue;
            json_t *tasks = json_object ();
            size_t j;
            json_t *task;
            json_array_foreach (s_series_of (merged, "llmrt_queue_tasks_total"), j, task)
            {
                const char *outcome = s_label (task, "outcome");
                const char *of = s_label (task, "queue");
                if (outcome && of && !strcmp (of, queue))
                    s_add (tasks, outcome,
                           json_number_value (json_object_get (task, "value")));
            }
            const char *labels[] = {"queue", queue, NULL};
            json_object_set_new (
                queues, queue,
                json_pack (
                    "{s:s, s:o, s:o, s:o, s:o, s:o, s:o, s:o, s:{}}", "service", service,
                    "depth",
                    s_number (s_queue_value (merged, "llmrt_queue_depth", queue)),
                    "active",
                    s_number (s_queue_value (merged, "llmrt_queue_active", queue)),
                    "limit",
                    s_number (s_queue_value (merged, "llmrt_queue_concurrency", queue)),
                    "max_pending",
                    s_number (s_queue_value (merged, "llmrt_queue_max_pending", queue)),
                    "tasks", tasks, "wait_seconds",
                    s_latency (
                        cm_metrics_series (merged, "llmrt_queue_wait_seconds", labels)),
                    "run_seconds",
                    s_latency (
                        cm_metrics_series (merged, "llmrt_queue_run_seconds", labels)),
                    "instances"));
        }
    }
    size_t i;
    json_array_foreach (json_object_get (view, "instances"), i, entry)
    {
        json_t *snapshot = json_object_get (entry, "snapshot");
        size_t j;
        json_t *series;
        json_array_foreach (s_series_of (snapshot, "llmrt_queue_concurrency"), j, series)
        {
            const char *queue = s_label (series, "queue");
            json_t *into = json_object_get (json_object_get (queues, queue), "instances");
            if (!into)
                continue;
            json_object_set_new (
                into, json_string_value (json_object_get (entry, "instance")),
                json_pack (
                    "{s:o, s:o, s:o}", "depth",
                    s_number (s_queue_value (snapshot, "llmrt_queue_depth", queue)),
                    "active",
                    s_number (s_queue_value (snapshot, "llmrt_queue_active", queue)),
                    "limit",
                    s_number (
                        s_queue_value (snapshot, "llmrt_queue_concurrency", queue))));
        }
    }
    return queues;
}

//  Per service, p50/p90/p99 of each route the daemons serve.
static json_t *
s_service_latency (json_t *view)
{
    json_t *services = json_object ();
    const char *service;
    json_t *entry;
    json_object_foreach (json_object_get (view, "services"), service, entry)
    {
        json_t *routes = json_object ();
        size_t i;
        json_t *series;
        json_array_foreach (s_series_of (json_object_get (entry, "snapshot"),
                                         "llmrt_worker_request_duration_seconds"),
                            i, series)
        {
            const char *method = s_label (series, "method");
            const char *route = s_label (series, "route");
            if (!method || !route)
                continue;
            char key[512];
            snprintf (key, sizeof key, "%s %s", method, route);
            json_object_set_new (routes, key, s_latency (series));
        }
        if (json_object_size (routes))
            json_object_set_new (services, service, routes);
        else
            json_decref (routes);
    }
    return services;
}

static const char *
s_breaker_state (double value)
{
    return value == 0   ? "closed"
           : value == 1 ? "open"
           : value == 2 ? "half_open"
                        : "unknown";
}

//  Per service and circuit: the state of each instance's breaker, how many
//  instances are in each state, and the calls by outcome (summed).
static json_t *
s_breakers_section (json_t *view)
{
    json_t *breakers = json_object ();
    size_t i;
    json_t *entry;
    json_array_foreach (json_object_get (view, "instances"), i, entry)
    {
        const char *service = json_string_value (json_object_get (entry, "service"));
        const char *instance = json_string_value (json_object_get (entry, "instance"));
        size_t j;
        json_t *series;
        json_array_foreach (
            s_series_of (json_object_get (entry, "snapshot"), "llmrt_circuit_state"), j,
            series)
        {
            const char *circuit = s_label (series, "circuit");
            if (!circuit)
                continue;
            json_t *of_service = json_object_get (breakers, service);
            if (!of_service) {
                of_service = json_object ();
                json_object_set_new (breakers, service, of_service);
            }
            json_t *of_circuit = json_object_get (of_service, circuit);
            if (!of_circuit) {
                of_circuit =
                    json_pack ("{s:{s:i, s:i, s:i}, s:{}, s:{}}", "states", "closed", 0,
                               "open", 0, "half_open", 0, "instances", "calls");
                json_object_set_new (of_service, circuit, of_circuit);
            }
            const char *state =
                s_breaker_state (json_number_value (json_object_get (series, "value")));
            json_object_set_new (json_object_get (of_circuit, "instances"), instance,
                                 json_string (state));
            s_add (json_object_get (of_circuit, "states"), state, 1);
        }
    }
    const char *service;
    json_t *of_service;
    json_object_foreach (breakers, service, of_service)
    {
        json_t *merged = json_object_get (
            json_object_get (json_object_get (view, "services"), service), "snapshot");
        size_t j;
        json_t *series;
        json_array_foreach (s_series_of (merged, "llmrt_circuit_calls_total"), j, series)
        {
            json_t *of_circuit =
                json_object_get (of_service, s_label (series, "circuit"));
            const char *outcome = s_label (series, "outcome");
            if (of_circuit && outcome)
                s_add (json_object_get (of_circuit, "calls"), outcome,
                       json_number_value (json_object_get (series, "value")));
        }
    }
    return breakers;
}

//  The live concurrency: in flight at the gateway, running and waiting in
//  each service's queues against their limits.
static json_t *
s_concurrency_section (json_t *view, json_t *own)
{
    json_t *services = json_object ();
    const char *service;
    json_t *entry;
    json_object_foreach (json_object_get (view, "services"), service, entry)
    {
        json_t *merged = json_object_get (entry, "snapshot");
        if (!s_series_of (merged, "llmrt_queue_concurrency"))
            continue;
        json_object_set_new (
            services, service,
            json_pack (
                "{s:o, s:o, s:o, s:o, s:O}", "active",
                s_number (cm_metrics_sum (merged, "llmrt_queue_active", NULL)), "waiting",
                s_number (cm_metrics_sum (merged, "llmrt_queue_depth", NULL)), "limit",
                s_number (cm_metrics_sum (merged, "llmrt_queue_concurrency", NULL)),
                "max_pending",
                s_number (cm_metrics_sum (merged, "llmrt_queue_max_pending", NULL)),
                "instances", json_object_get (entry, "instances")));
    }
    return json_pack (
        "{s:o, s:o}", "gateway_in_flight",
        s_number (cm_metrics_sum (own, "llmrt_gateway_requests_in_flight", NULL)),
        "services", services);
}

//  Restarts and children per program: the hub's own series, plus those of
//  the supervisors that report to it (SUPERVISOR_METRICS_ROLE=report, one
//  per container), summed per program.
static json_t *
s_supervisor_section (json_t *view)
{
    json_t *own = json_object_get (view, "supervisor");
    if (!json_is_object (own))
        return json_null ();
    json_t *snapshot = json_object ();
    cm_metrics_merge (snapshot, own);
    json_t *reporting =
        json_object_get (json_object_get (view, "services"), "supervisor");
    if (json_is_object (json_object_get (reporting, "snapshot")))
        cm_metrics_merge (snapshot, json_object_get (reporting, "snapshot"));
    static const struct {
        const char *key, *name;
    } fields[] = {
        {"restarts", "llmrt_supervisor_restarts_total"},
        {"children_up", "llmrt_supervisor_children_up"},
        {"children_configured", "llmrt_supervisor_children_configured"},
        {"children_given_up", "llmrt_supervisor_children_given_up"},
    };
    json_t *section = json_object ();
    for (size_t f = 0; f < sizeof fields / sizeof fields[0]; f++) {
        json_t *by_program = json_object ();
        size_t i;
        json_t *series;
        json_array_foreach (s_series_of (snapshot, fields[f].name), i, series)
        {
            const char *program = s_label (series, "program");
            if (program)
                json_object_set_new (
                    by_program, program,
                    s_number (json_number_value (json_object_get (series, "value"))));
        }
        json_object_set_new (section, fields[f].key, by_program);
    }
    json_decref (snapshot);
    return section;
}

json_t *
gw_metrics_json (gw_metrics_t *self, const json_t *aggregate, const char *error)
{
    assert (self);
    json_t *own = cm_metrics_snapshot (self->registry);
    json_t *view = s_view (self, aggregate, own);
    json_t *instances = json_array ();
    size_t i;
    json_t *entry;
    json_array_foreach (json_object_get (view, "instances"), i, entry)
    {
        json_array_append_new (instances,
                               json_pack ("{s:O, s:O, s:O}", "service",
                                          json_object_get (entry, "service"), "instance",
                                          json_object_get (entry, "instance"), "age_ms",
                                          json_object_get (entry, "age_ms")));
    }
    json_t *gateway = s_gateway_section (self, own);
    json_t *body = json_pack (
        "{s:I, s:o, s:o, s:{s:O, s:o}, s:o, s:o, s:o, s:o, s:o, s:O, s:s?}",
        "generated_at_ms", (json_int_t) cm_clock_wall_ms (), "gateway", gateway, "queues",
        s_queues_section (view), "latency", "gateway",
        json_object_get (gateway, "latency_seconds"), "services",
        s_service_latency (view), "breakers", s_breakers_section (view), "rate_limits",
        self->limits ? gw_limits_stats (self->limits) : json_object (), "concurrency",
        s_concurrency_section (view, own), "instances", instances, "supervisor",
        s_supervisor_section (view), "aggregate",
        aggregate ? (json_t *) aggregate : json_null (), "aggregate_error",
        aggregate ? NULL : (error ? error : "no aggregate"));
    json_decref (view);
    json_decref (own);
    return body;
}

//  --- Prometheus -----------------------------------------------------------

//  Merge snapshot into combined with labels added (the series stay apart).
static void
s_merge_labelled (json_t *combined, const json_t *snapshot, const char *const *labels)
{
    json_t *relabelled = cm_metrics_relabel (snapshot, labels);
    cm_metrics_merge (combined, relabelled);
    json_decref (relabelled);
}

char *
gw_metrics_prometheus (gw_metrics_t *self, const json_t *aggregate)
{
    assert (self);
    json_t *own = cm_metrics_snapshot (self->registry);
    json_t *view = s_view (self, aggregate, own);
    //  Series about the aggregate itself, made here.
    cm_metrics_t *meta = cm_metrics_new ();
    cm_metric_set (
        cm_metrics_gauge (meta, "llmrt_metrics_aggregate_up",
                          "1 when the supervisor's aggregate of every instance "
                          "is included, 0 when only the gateway's own metrics "
                          "are.",
                          NULL),
        aggregate ? 1 : 0);
    json_t *combined = json_object ();
    const char *service;
    json_t *entry;
    json_object_foreach (json_object_get (view, "services"), service, entry)
    {
        const char *labels[] = {"service", service, NULL};
        s_merge_labelled (combined, json_object_get (entry, "snapshot"), labels);
        cm_metric_set (cm_metrics_gauge (meta, "llmrt_metrics_instances",
                                         "Instances of a service in the aggregate.",
                                         labels),
                       json_number_value (json_object_get (entry, "instances")));
    }
    size_t i;
    json_array_foreach (json_object_get (view, "instances"), i, entry)
    {
        const char *labels[] = {
            "service", json_string_value (json_object_get (entry, "service")), "instance",
            json_string_value (json_object_get (entry, "instance")), NULL};
        s_merge_labelled (combined, json_object_get (entry, "snapshot"), labels);
        cm_metric_set (cm_metrics_gauge (meta, "llmrt_metrics_report_age_seconds",
                                         "Time since the instance's last report reached "
                                         "the supervisor.",
                                         labels),
                       json_number_value (json_object_get (entry, "age_ms")) / 1000.0);
    }
    json_t *supervisor = json_object_get (view, "supervisor");
    if (json_is_object (supervisor)) {
        const char *labels[] = {"service", "supervisor", NULL};
        s_merge_labelled (combined, supervisor, labels);
    }
    json_t *meta_snapshot = cm_metrics_snapshot (meta);
    cm_metrics_merge (combined, meta_snapshot);
    char *text = cm_metrics_prometheus (combined, NULL);
    json_decref (meta_snapshot);
    cm_metrics_destroy (&meta);
    json_decref (combined);
    json_decref (view);
    json_decref (own);
    return text;
}

//  --- the metrics thread -----------------------------------------------------

typedef struct {
    s_job_t **items; //  waiting jobs
    size_t size, capacity;
} s_waiting_t;

//  Answer every waiting job from aggregate (NULL: missing, for reason).
static void
s_answer_all (gw_metrics_t *self, s_waiting_t *waiting, const json_t *aggregate,
              const char *reason)
{
    for (size_t i = 0; i < waiting->size; i++) {
        s_job_t *job = waiting->items[i];
        cm_msg_t *reply = cm_msg_new (CM_MSG_FINAL);
        cm_msg_set_status (reply, 200);
        if (job->prometheus) {
            char *text = gw_metrics_prometheus (self, aggregate);
            cm_msg_set_content_type (reply, "text/plain; version=0.0.4; charset=utf-8");
            cm_msg_set_body (reply, text, strlen (text));
            free (text);
        } else {
            json_t *body = gw_metrics_json (self, aggregate, reason);
            char *text = json_dumps (body, JSON_COMPACT | JSON_REAL_PRECISION (15));
            json_decref (body);
            cm_msg_set_content_type (reply, "application/json");
            cm_msg_set_body (reply, text, strlen (text));
            free (text);
        }
        gw_exchange_deliver (job->exchange, reply);
        cm_msg_destroy (&reply);
        gw_exchange_unref (&job->exchange);
        free (job);
    }
    waiting->size = 0;
}

static void
s_fail_all (s_waiting_t *waiting)
{
    for (size_t i = 0; i < waiting->size; i++)
        s_job_fail (waiting->items[i]);
    waiting->size = 0;
}

//  Keep the breakers section of an aggregate for gw_metrics_breakers.
static void
s_cache (gw_metrics_t *self, const json_t *aggregate)
{
    json_t *body = gw_metrics_json (self, aggregate, NULL);
    json_t *breakers = json_incref (json_object_get (body, "breakers"));
    json_t *given_up = json_incref (
        json_object_get (json_object_get (body, "supervisor"), "children_given_up"));
    json_decref (body);
    pthread_mutex_lock (&self->cache_lock);
    json_decref (self->breakers);
    json_decref (self->given_up);
    self->breakers = breakers;
    self->given_up = given_up;
    self->breakers_at = cm_clock_mono_ms ();
    pthread_mutex_unlock (&self->cache_lock);
}

json_t *
gw_metrics_breakers (gw_metrics_t *self, int64_t *age_ms)
{
    assert (self);
    pthread_mutex_lock (&self->cache_lock);
    json_t *copy = self->breakers ? json_deep_copy (self->breakers) : NULL;
    if (age_ms)
        *age_ms = self->breakers ? cm_clock_mono_ms () - self->breakers_at : -1;
    pthread_mutex_unlock (&self->cache_lock);
    return copy;
}

json_t *
gw_metrics_given_up (gw_metrics_t *self)
{
    assert (self);
    pthread_mutex_lock (&self->cache_lock);
    json_t *copy = self->given_up ? json_deep_copy (self->given_up) : NULL;
    pthread_mutex_unlock (&self->cache_lock);
    return copy;
}

static void *
s_thread (void *arg)
{
    gw_metrics_t *self = arg;
    zsock_t *sock = NULL;
    if (self->supervisor) {
        sock = zsock_new (ZMQ_DEALER);
        assert (sock);
        //  Queue a QUERY only towards a live connection: with the supervisor
        //  down the send fails at once and the answer says so at once.
        zsock_set_immediate (sock, 1);
        zsock_set_sndhwm (sock, S_SNDHWM);
        zsock_set_linger (sock, 0);
        zsock_set_maxmsgsize (sock, (int) CM_METRICS_MSG_MAX_BYTES);
        if (zsock_connect (sock, "%s", self->supervisor))
            cm_error ("metrics: cannot connect to the supervisor at %s",
                      self->supervisor);
    }
    s_waiting_t waiting = {0};
    uint64_t query_id = 0;
    bool asking = false;  //  a QUERY is out
    int64_t deadline = 0; //  mono ms when it times out
    //  Without requests, still ask once a period, so /api/health can show
    //  breaker states without waiting for the supervisor.
    int64_t next_refresh = cm_clock_mono_ms () + self->refresh_ms;
    char reason[256];
    while (!atomic_load (&self->stop)) {
        zmq_pollitem_t items[] = {{NULL, cm_mailbox_fd (self->inbox), ZMQ_POLLIN, 0},
                                  {sock ? zsock_resolve (sock) : NULL, 0, ZMQ_POLLIN, 0}};
        int64_t left = (asking ? deadline : next_refresh) - cm_clock_mono_ms ();
        long timeout = left > 0 ? (long) left : 0;
        zmq_poll (items, sock ? 2 : 1, timeout);
        s_job_t *job;
        while ((job = cm_mailbox_take (self->inbox))) {
            if (waiting.size == waiting.capacity) {
                waiting.capacity = waiting.capacity ? 2 * waiting.capacity : 8;
                waiting.items =
                    cm_realloc (waiting.items, waiting.capacity * sizeof *waiting.items);
            }
            waiting.items[waiting.size++] = job;
        }
        if (atomic_load (&self->closing)) {
            s_fail_all (&waiting);
            asking = false;
            continue;
        }
        //  Answers: ours, or a late one to a query that timed out (dropped).
        while (sock) {
            zframe_t *frame = zframe_recv_nowait (sock);
            if (!frame)
                break;
            char err[256];
            cm_metrics_msg_t *msg = cm_metrics_msg_decode (
                zframe_data (frame), zframe_size (frame), err, sizeof err);
            zframe_destroy (&frame);
            if (!msg)
                cm_warn ("metrics: dropped a frame from the supervisor: %s", err);
            else if (asking && cm_metrics_msg_type (msg) == CM_METRICS_MSG_AGGREGATE &&
                     cm_metrics_msg_id (msg) == query_id) {
                cm_metric_add (self->queries[S_QUERY_ANSWERED], 1);
                s_cache (self, cm_metrics_msg_body (msg));
                s_answer_all (self, &waiting, cm_metrics_msg_body (msg), NULL);
                asking = false;
            }
            cm_metrics_msg_destroy (&msg);
        }
        if (asking && cm_clock_mono_ms () >= deadline) {
            cm_metric_add (self->queries[S_QUERY_TIMEOUT], 1);
            snprintf (reason, sizeof reason,
                      "the supervisor at %s did not answer within %lld ms "
                      "(METRICS_QUERY_TIMEOUT_MS)",
                      self->supervisor, (long long) self->timeout_ms);
            s_answer_all (self, &waiting, NULL, reason);
            asking = false;
        }
        bool refresh = sock && !asking && cm_clock_mono_ms () >= next_refresh;
        if (refresh)
            next_refresh = cm_clock_mono_ms () + self->refresh_ms;
        if ((waiting.size || refresh) && !asking) {
            if (!sock) {
                cm_metric_add (self->queries[S_QUERY_UNREACHABLE], 1);
                s_answer_all (self, &waiting, NULL,
                              "SUPERVISOR_ENDPOINT is not set: no supervisor to ask");
                continue;
            }
            cm_metrics_msg_t *query = cm_metrics_msg_new (CM_METRICS_MSG_QUERY);
            cm_metrics_msg_set_id (query, ++query_id);
            char *data;
            size_t size;
            cm_metrics_msg_encode (query, &data, &size);
            cm_metrics_msg_destroy (&query);
            if (zmq_send (zsock_resolve (sock), data, size, ZMQ_DONTWAIT) == (int) size) {
                asking = true;
                deadline = cm_clock_mono_ms () + self->timeout_ms;
            } else {
                cm_metric_add (self->queries[S_QUERY_UNREACHABLE], 1);
                snprintf (reason, sizeof reason,
                          "the supervisor at %s is not reachable (SUPERVISOR_ENDPOINT)",
                          self->supervisor);
                s_answer_all (self, &waiting, NULL, reason);
            }
            free (data);
        }
    }
    s_fail_all (&waiting);
    free (waiting.items);
    zsock_destroy (&sock);
    return NULL;
}
