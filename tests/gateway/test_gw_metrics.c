/*  test_gw_metrics.c: the gateway's metrics routes in this process.

    Behind the gateway runs the real metrics hub (sup_metrics) on a thread
    of its own (a czmq actor); the test reports instances to it as daemons
    do, and reads /api/metrics and /api/metrics/prometheus with libcurl.
    The hub can also be absent (nothing listens) or mute (a ROUTER that
    never answers): the routes must still answer, with the gateway's own
    metrics. Every wait is a poll with a generous timeout. */
#include <criterion/criterion.h>
#include <unistd.h>
#include "cm_metrics_msg.h"
#include "gw_harness.h"
#include "gw_metrics.h"
#include "sup_metrics.h"
#include "test_port.h"

#define S_WAIT_MS 15000

static void
s_setup (void)
{
    gwh_setup ("test_gw_metrics", CM_LOG_ERROR);
}

TestSuite (gw_metrics, .init = s_setup, .fini = gwh_teardown, .timeout = 120);

//  --- the metrics hub on its own thread ---------------------------------------

//  Actor: creates the hub on the endpoint given, sends back the endpoint
//  bound, and serves reports and queries until told to stop.
static void
s_hub_actor (zsock_t *pipe, void *arg)
{
    sup_metrics_t *hub = sup_metrics_new ((const char *) arg, 10000);
    zsock_signal (pipe, 0);
    zstr_send (pipe, hub ? sup_metrics_endpoint (hub) : "");
    while (hub) {
        zmq_pollitem_t items[] = {{zsock_resolve (pipe), 0, ZMQ_POLLIN, 0},
                                  {sup_metrics_socket (hub), 0, ZMQ_POLLIN, 0}};
        if (zmq_poll (items, 2, -1) < 0)
            break;
        if (items[0].revents & ZMQ_POLLIN) {
            char *command = zstr_recv (pipe);
            bool term = !command || streq (command, "$TERM");
            free (command);
            if (term)
                break;
        }
        if (items[1].revents & ZMQ_POLLIN)
            sup_metrics_handle (hub, cm_clock_mono_ms ());
    }
    sup_metrics_destroy (&hub);
}

//  --- the gateway ---------------------------------------------------------

//  Start a gateway that asks the metrics hub at supervisor (NULL: none)
//  and waits timeout_ms for its answer.
static void
s_gateway_start (gwh_gateway_t *self, const char *supervisor, int64_t timeout_ms)
{
    gw_config_t config = {.supervisor = (char *) supervisor,
                          .report_ms = 20,
                          .metrics_timeout_ms = timeout_ms};
    gwh_gateway_start (self, &config);
}

//  --- text -----------------------------------------------------------------

//  Does text hold line as a whole line?
static bool
s_has_line (const char *text, const char *line)
{
    size_t len = strlen (line);
    for (const char *p = text; (p = strstr (p, line)); p++)
        if ((p == text || p[-1] == '\n') && (p[len] == '\n' || p[len] == 0))
            return true;
    return false;
}

//  promtool check metrics on text; -1 when promtool is not installed.
static int
s_promtool (const char *text, char *output, size_t size)
{
    if (access ("/usr/bin/promtool", X_OK))
        return -1;
    char path[] = "/tmp/llmrt-promtool-XXXXXX";
    int fd = mkstemp (path);
    cr_assert_geq (fd, 0);
    cr_assert_eq (write (fd, text, strlen (text)), (ssize_t) strlen (text));
    close (fd);
    char command[128];
    snprintf (command, sizeof command, "promtool check metrics < %s 2>&1", path);
    FILE *pipe = popen (command, "r");
    size_t n = fread (output, 1, size - 1, pipe);
    output[n] = 0;
    int status = pclose (pipe);
    unlink (path);
    return WIFEXITED (status) ? WEXITSTATUS (status) : 255;
}

//  --- reports as daemons send them -------------------------------------------

//  The snapshot a chat instance would report: its queue, breaker and
//  worker series, with these numbers.
static json_t *
s_chat_snapshot (double depth, double active, double state, double served)
{
    cm_metrics_t *metrics = cm_metrics_new ();
    const char *queue[] = {"queue", "chat", NULL};
    cm_metric_set (cm_metrics_gauge (metrics, "llmrt_queue_depth", "Waiting.", queue),
                   depth);
    cm_metric_set (cm_metrics_gauge (metrics, "llmrt_queue_active", "Running.", queue),
                   active);
    cm_metric_set (cm_metrics_gauge (metrics, "llmrt_queue_concurrency", "Limit.", queue),
                   4);
    cm_metric_set (cm_metrics_gauge (metrics, "llmrt_queue_max_pending", "Line.", queue),
                   64);
    const char *done[] = {"queue", "chat", "outcome", "completed", NULL};
    cm_metric_set (
        cm_metrics_counter (metrics, "llmrt_queue_tasks_total", "Tasks.", done), served);
    cm_metric_observe (cm_metrics_histogram (metrics, "llmrt_queue_wait_seconds", "Wait.",
                                             queue, cm_metrics_latency_buckets,
                                             cm_metrics_latency_bucket_count),
                       0.002);
    const char *circuit[] = {"circuit", "llm", NULL};
    cm_metric_set (cm_metrics_gauge (metrics, "llmrt_circuit_state", "State.", circuit),
                   state);
    const char *route[] = {"method", "POST", "route", "/api/v1/workspace/{slug}/chat",
                           NULL};
    cm_metric_add (
        cm_metrics_counter (metrics, "llmrt_worker_requests_total", "Requests.", route),
        served);
    cm_metric_observe (
        cm_metrics_histogram (metrics, "llmrt_worker_request_duration_seconds",
                              "Duration.", route, cm_metrics_latency_buckets,
                              cm_metrics_latency_bucket_count),
        0.03);
    json_t *snapshot = cm_metrics_snapshot (metrics);
    cm_metrics_destroy (&metrics);
    return snapshot;
}

static void
s_report (zsock_t *dealer, const char *service, const char *instance, json_t *snapshot)
{
    cm_metrics_msg_t *report = cm_metrics_msg_new (CM_METRICS_MSG_REPORT);
    cm_metrics_msg_set_service (report, service);
    cm_metrics_msg_set_instance (report, instance);
    cm_metrics_msg_set_id (report, 1);
    cm_metrics_msg_set_sent_ms (report, cm_clock_wall_ms ());
    cm_metrics_msg_set_body (report, snapshot);
    char *data;
    size_t size;
    cm_metrics_msg_encode (report, &data, &size);
    cr_assert_eq (zmq_send (zsock_resolve (dealer), data, size, 0), (int) size);
    free (data);
    cm_metrics_msg_destroy (&report);
}

//  --- tests -----------------------------------------------------------------

Test (gw_metrics, walk_through_json_and_prometheus_from_the_aggregate)
{
    //  The hub, as the supervisor binds it; two chat instances report to it.
    zactor_t *hub = zactor_new (s_hub_actor, "tcp://127.0.0.1:*");
    char *endpoint = zstr_recv (hub);
    cr_assert_neq (endpoint[0], 0, "the hub did not bind");
    zsock_t *chat = zsock_new_dealer (endpoint);
    s_report (chat, "chat", "chat-a", s_chat_snapshot (2, 4, 0, 5));
    s_report (chat, "chat", "chat-b", s_chat_snapshot (1, 3, 1, 7));
    gwh_gateway_t gateway;
    s_gateway_start (&gateway, endpoint, 2000);
    //  Some traffic for the gateway's own series.
    gwh_call_t *r;
    r = gwh_http (&gateway, "GET", "/api/ping", NULL, NULL);
    cr_assert_eq (r->status, 200);
    gwh_call_destroy (&r);
    r = gwh_http (&gateway, "GET", "/api/nowhere", NULL, NULL);
    cr_assert_eq (r->status, 404);
    gwh_call_destroy (&r);

    //  Poll until both instances and the gateway's first report are in.
    json_t *metrics = NULL;
    int64_t until = cm_clock_mono_ms () + S_WAIT_MS;
    while (true) {
        metrics = gwh_get_json (&gateway, "/api/metrics");
        json_t *services = gwh_json_at (metrics, "aggregate.services");
        if (json_object_get (services, "chat") && json_object_get (services, "gateway"))
            break;
        cr_assert_lt (cm_clock_mono_ms (), until, "no aggregate: %s",
                      json_string_value (json_object_get (metrics, "aggregate_error")));
        json_decref (metrics);
        usleep (20 * 1000);
    }
    cr_assert (json_is_null (json_object_get (metrics, "aggregate_error")));
    //  Queues: merged over the instances, and per instance.
    cr_assert_eq (gwh_json_int (metrics, "queues.chat.depth"), 3);
    cr_assert_eq (gwh_json_int (metrics, "queues.chat.active"), 7);
    cr_assert_eq (gwh_json_int (metrics, "queues.chat.limit"), 8);
    cr_assert_eq (gwh_json_int (metrics, "queues.chat.tasks.completed"), 12);
    cr_assert_eq (gwh_json_int (metrics, "queues.chat.instances.chat-b.depth"), 1);
    cr_assert (json_is_number (gwh_json_at (metrics, "queues.chat.wait_seconds.p50")));
    //  Breakers: the state of each instance's.
    cr_assert_str_eq (
        json_string_value (gwh_json_at (metrics, "breakers.chat.llm.instances.chat-a")),
        "closed");
    cr_assert_str_eq (
        json_string_value (gwh_json_at (metrics, "breakers.chat.llm.instances.chat-b")),
        "open");
    cr_assert_eq (gwh_json_int (metrics, "breakers.chat.llm.states.open"), 1);
    //  Latency per route of the daemons, and per route class at the gateway.
    json_t *route = json_object_get (gwh_json_at (metrics, "latency.services.chat"),
                                     "POST /api/v1/workspace/{slug}/chat");
    cr_assert_eq (json_integer_value (json_object_get (route, "count")), 2);
    cr_assert (json_number_value (json_object_get (route, "p50")) > 0.025);
    cr_assert_geq (gwh_json_int (metrics, "latency.gateway.ops.count"), 1);
    //  The gateway's own counts, by route class and status class.
    cr_assert_geq (gwh_json_int (metrics, "gateway.requests.ops.2xx"), 1);
    cr_assert_eq (gwh_json_int (metrics, "gateway.requests.unmatched.4xx"), 1);
    cr_assert_eq (gwh_json_int (metrics, "gateway.requests.unmatched.total"), 1);
    //  Concurrency, the instances, the rate limits (all unlimited here).
    cr_assert_eq (gwh_json_int (metrics, "concurrency.services.chat.active"), 7);
    cr_assert_geq (gwh_json_int (metrics, "concurrency.gateway_in_flight"), 1,
                   "this very request");
    cr_assert_geq (json_array_size (json_object_get (metrics, "instances")), 3);
    cr_assert (json_is_object (json_object_get (metrics, "rate_limits")));
    cr_assert (json_is_object (gwh_json_at (metrics, "supervisor.restarts")));
    json_decref (metrics);

    //  The same in the Prometheus text format.
    r = gwh_http (&gateway, "GET", "/api/metrics/prometheus", NULL, NULL);
    cr_assert_eq (r->status, 200);
    cr_assert (strcasestr (r->headers, "Content-Type: text/plain; version=0.0.4"), "%s",
               r->headers);
    const char *lines[] = {
        "llmrt_metrics_aggregate_up 1",
        "# TYPE llmrt_queue_depth gauge",
        "llmrt_queue_depth{service=\"chat\",queue=\"chat\"} 3",
        "llmrt_queue_depth{service=\"chat\",instance=\"chat-a\",queue=\"chat\"} 2",
        "llmrt_metrics_instances{service=\"chat\"} 2",
        "# TYPE llmrt_gateway_request_duration_seconds histogram",
        "llmrt_gateway_requests_total{service=\"gateway\",route_class=\"unmatched\","
        "status_class=\"4xx\"} 1",
    };
    for (size_t i = 0; i < sizeof lines / sizeof lines[0]; i++)
        cr_assert (s_has_line (r->reply, lines[i]), "missing '%s' in:\n%s", lines[i],
                   r->reply);
    char output[4096];
    int rc = s_promtool (r->reply, output, sizeof output);
    if (rc < 0)
        cr_log_warn ("promtool is not installed: the text was not checked with it");
    else
        cr_assert_eq (rc, 0, "promtool check metrics: %s", output);
    gwh_call_destroy (&r);
    gwh_gateway_stop (&gateway);
    zsock_destroy (&chat);
    zstr_free (&endpoint);
    zactor_destroy (&hub);
}

Test (gw_metrics, unreachable_supervisor_still_answers_with_the_gateway_alone)
{
    //  Nothing listens there (test_port_refusing).
    int holder;
    int port = test_port_refusing (&holder);
    char endpoint[64];
    snprintf (endpoint, sizeof endpoint, "tcp://127.0.0.1:%d", port);
    gwh_gateway_t gateway;
    s_gateway_start (&gateway, endpoint, 2000);
    int64_t before = cm_clock_mono_ms ();
    json_t *metrics = gwh_get_json (&gateway, "/api/metrics");
    //  No connection: the answer is at once, not after the timeout.
    cr_assert_lt (cm_clock_mono_ms () - before, 1500);
    cr_assert (json_is_null (json_object_get (metrics, "aggregate")));
    const char *error = json_string_value (json_object_get (metrics, "aggregate_error"));
    cr_assert (error && strstr (error, "not reachable"), "%s", error);
    cr_assert_not_null (gwh_json_at (metrics, "gateway.requests.ops"));
    cr_assert (json_is_null (json_object_get (metrics, "supervisor")));
    json_decref (metrics);
    gwh_call_t *r;
    r = gwh_http (&gateway, "GET", "/api/metrics/prometheus", NULL, NULL);
    cr_assert_eq (r->status, 200);
    cr_assert (s_has_line (r->reply, "llmrt_metrics_aggregate_up 0"), "%s", r->reply);
    cr_assert (strstr (r->reply, "llmrt_gateway_requests_total{service=\"gateway\""),
               "%s", r->reply);
    char output[4096];
    int rc = s_promtool (r->reply, output, sizeof output);
    cr_assert (rc <= 0, "promtool check metrics: %s", output);
    gwh_call_destroy (&r);
    gwh_gateway_stop (&gateway);
    close (holder);
}

Test (gw_metrics, mute_supervisor_costs_one_timeout)
{
    //  Bound and connected, but it never answers.
    zsock_t *mute = zsock_new (ZMQ_ROUTER);
    int port = zsock_bind (mute, "tcp://127.0.0.1:*");
    char endpoint[64];
    snprintf (endpoint, sizeof endpoint, "tcp://127.0.0.1:%d", port);
    gwh_gateway_t gateway;
    s_gateway_start (&gateway, endpoint, 100);
    //  The DEALER connects in the background: wait until the QUERY goes out
    //  (the reporter's frames show the connection is up).
    zpoller_t *poller = zpoller_new (mute, NULL);
    cr_assert_eq (zpoller_wait (poller, S_WAIT_MS), mute);
    zpoller_destroy (&poller);
    //  The metrics thread's own connection may still be on its way: until
    //  it is up, the answer says "not reachable"; then it times out.
    int64_t until = cm_clock_mono_ms () + S_WAIT_MS;
    while (true) {
        json_t *metrics = gwh_get_json (&gateway, "/api/metrics");
        const char *error =
            json_string_value (json_object_get (metrics, "aggregate_error"));
        cr_assert_not_null (error);
        bool timed_out = strstr (error, "did not answer within 100 ms") != NULL;
        cr_assert (timed_out || strstr (error, "not reachable"), "%s", error);
        json_decref (metrics);
        if (timed_out)
            break;
        cr_assert_lt (cm_clock_mono_ms (), until, "never timed out");
    }
    gwh_gateway_stop (&gateway);
    zsock_destroy (&mute);
}

Test (gw_metrics, no_supervisor_configured)
{
    gwh_gateway_t gateway;
    s_gateway_start (&gateway, NULL, 100);
    json_t *metrics = gwh_get_json (&gateway, "/api/metrics");
    const char *error = json_string_value (json_object_get (metrics, "aggregate_error"));
    cr_assert (error && strstr (error, "SUPERVISOR_ENDPOINT"), "%s", error);
    cr_assert_not_null (json_object_get (metrics, "gateway"));
    cr_assert_not_null (gw_server_metrics (gateway.server));
    json_decref (metrics);
    gwh_gateway_stop (&gateway);
}

Test (gw_metrics, route_classes)
{
    const gw_route_t *route;
    cr_assert_eq (gw_routes_lookup ("POST", "/api/v1/workspace/a/chat", &route, NULL, 0),
                  GW_ROUTE_FOUND);
    cr_assert_eq (gw_metrics_class (route), GW_METRICS_CHAT);
    cr_assert_eq (gw_routes_lookup ("GET", "/api/metrics", &route, NULL, 0),
                  GW_ROUTE_FOUND);
    cr_assert_eq (gw_metrics_class (route), GW_METRICS_OPS);
    cr_assert_eq (gw_routes_lookup ("GET", "/api/metrics/prometheus", &route, NULL, 0),
                  GW_ROUTE_FOUND);
    cr_assert_eq (route->local, GW_LOCAL_PROMETHEUS);
    cr_assert_eq (gw_metrics_class (NULL), GW_METRICS_UNMATCHED);
    cr_assert_str_eq (gw_metrics_class_name (GW_METRICS_INGESTION), "ingestion");
}

//  What a container's supervisor (SUPERVISOR_METRICS_ROLE=report) sends:
//  its one program's restarts and children.
static json_t *
s_supervisor_snapshot (const char *program, double restarts, double up)
{
    cm_metrics_t *metrics = cm_metrics_new ();
    const char *labels[] = {"program", program, NULL};
    cm_metric_set (
        cm_metrics_counter (metrics, "llmrt_supervisor_restarts_total", "R.", labels),
        restarts);
    cm_metric_set (
        cm_metrics_gauge (metrics, "llmrt_supervisor_children_up", "U.", labels), up);
    json_t *snapshot = cm_metrics_snapshot (metrics);
    cm_metrics_destroy (&metrics);
    return snapshot;
}

Test (gw_metrics, restarts_reported_by_container_supervisors_are_summed)
{
    zactor_t *hub = zactor_new (s_hub_actor, "tcp://127.0.0.1:*");
    char *endpoint = zstr_recv (hub);
    cr_assert_neq (endpoint[0], 0, "the hub did not bind");
    zsock_t *dealer = zsock_new_dealer (endpoint);
    s_report (dealer, "supervisor", "supervisor-c1-1",
              s_supervisor_snapshot ("chatd", 2, 1));
    s_report (dealer, "supervisor", "supervisor-c2-1",
              s_supervisor_snapshot ("chatd", 3, 1));
    s_report (dealer, "supervisor", "supervisor-c3-1",
              s_supervisor_snapshot ("ingestd", 0, 1));
    gwh_gateway_t gateway;
    s_gateway_start (&gateway, endpoint, 2000);

    json_t *metrics = NULL;
    int64_t until = cm_clock_mono_ms () + S_WAIT_MS;
    while (true) {
        metrics = gwh_get_json (&gateway, "/api/metrics");
        if (json_is_integer (gwh_json_at (metrics, "supervisor.restarts.ingestd")))
            break;
        cr_assert_lt (cm_clock_mono_ms (), until, "no supervisor section");
        json_decref (metrics);
        usleep (20 * 1000);
    }
    cr_assert_eq (gwh_json_int (metrics, "supervisor.restarts.chatd"), 5);
    cr_assert_eq (gwh_json_int (metrics, "supervisor.children_up.chatd"), 2);
    cr_assert_eq (gwh_json_int (metrics, "supervisor.restarts.ingestd"), 0);
    json_decref (metrics);

    gwh_call_t *r;
    r = gwh_http (&gateway, "GET", "/api/metrics/prometheus", NULL, NULL);
    cr_assert_eq (r->status, 200);
    const char *lines[] = {
        "llmrt_supervisor_restarts_total{service=\"supervisor\",program=\"chatd\"} 5",
        "llmrt_supervisor_restarts_total{service=\"supervisor\",instance=\"supervisor-c2-"
        "1\","
        "program=\"chatd\"} 3",
        "llmrt_metrics_instances{service=\"supervisor\"} 3",
    };
    for (size_t i = 0; i < sizeof lines / sizeof lines[0]; i++)
        cr_assert (s_has_line (r->reply, lines[i]), "missing '%s' in:\n%s", lines[i],
                   r->reply);
    char output[4096];
    int rc = s_promtool (r->reply, output, sizeof output);
    if (rc >= 0)
        cr_assert_eq (rc, 0, "promtool check metrics: %s", output);
    gwh_call_destroy (&r);
    gwh_gateway_stop (&gateway);
    zsock_destroy (&dealer);
    zstr_free (&endpoint);
    zactor_destroy (&hub);
}
