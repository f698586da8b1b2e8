/*  test_sup_metrics.c: the supervisor's metrics hub. Reports and queries go
    over real sockets (a DEALER per instance, as cm_reporter and the gateway
    use); expiry is driven by now_ms, so no test sleeps. */
#include <criterion/criterion.h>
#include <czmq.h>
#include "cm_log.h"
#include "cm_metrics_msg.h"
#include "sup_metrics.h"

#define S_PATIENCE_MS 20000
#define S_TTL_MS      5000

//  A snapshot with one counter, llmrt_requests_total{route="chat"} = value,
//  and one histogram observation of seconds.
static json_t *
s_snapshot (double value, double seconds)
{
    cm_metrics_t *metrics = cm_metrics_new ();
    const char *labels[] = {"route", "chat", NULL};
    cm_metric_add (cm_metrics_counter (metrics, "llmrt_requests_total", "R.", labels),
                   value);
    cm_metric_observe (cm_metrics_histogram (metrics, "llmrt_latency_seconds", "L.", NULL,
                                             cm_metrics_latency_buckets,
                                             cm_metrics_latency_bucket_count),
                       seconds);
    json_t *snapshot = cm_metrics_snapshot (metrics);
    cm_metrics_destroy (&metrics);
    return snapshot;
}

static zsock_t *
s_dealer (sup_metrics_t *hub)
{
    zsock_t *dealer = zsock_new (ZMQ_DEALER);
    cr_assert_eq (zsock_connect (dealer, "%s", sup_metrics_endpoint (hub)), 0);
    return dealer;
}

static void
s_send (zsock_t *dealer, cm_metrics_msg_t **msg_p)
{
    char *data;
    size_t size;
    cm_metrics_msg_encode (*msg_p, &data, &size);
    cr_assert_eq (zmq_send (zsock_resolve (dealer), data, size, 0), (int) size);
    free (data);
    cm_metrics_msg_destroy (msg_p);
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
    s_send (dealer, &report);
}

//  Handle frames until the hub knows count instances.
static void
s_pump_until (sup_metrics_t *hub, size_t count)
{
    int64_t until = cm_clock_mono_ms () + S_PATIENCE_MS;
    while (sup_metrics_instances (hub) < count) {
        cr_assert_lt (cm_clock_mono_ms (), until, "only %zu instances reported",
                      sup_metrics_instances (hub));
        zmq_pollitem_t item = {sup_metrics_socket (hub), 0, ZMQ_POLLIN, 0};
        zmq_poll (&item, 1, 10);
        sup_metrics_handle (hub, cm_clock_mono_ms ());
    }
}

//  Ask the hub for the aggregate as the gateway does; handles frames while
//  waiting for the answer.
static json_t *
s_query (sup_metrics_t *hub, zsock_t *dealer, uint64_t id)
{
    cm_metrics_msg_t *query = cm_metrics_msg_new (CM_METRICS_MSG_QUERY);
    cm_metrics_msg_set_id (query, id);
    s_send (dealer, &query);
    int64_t until = cm_clock_mono_ms () + S_PATIENCE_MS;
    while (true) {
        cr_assert_lt (cm_clock_mono_ms (), until, "no answer to the query");
        zmq_pollitem_t items[] = {{sup_metrics_socket (hub), 0, ZMQ_POLLIN, 0},
                                  {zsock_resolve (dealer), 0, ZMQ_POLLIN, 0}};
        zmq_poll (items, 2, 10);
        sup_metrics_handle (hub, cm_clock_mono_ms ());
        zframe_t *frame = zframe_recv_nowait (dealer);
        if (!frame)
            continue;
        char err[256];
        cm_metrics_msg_t *answer = cm_metrics_msg_decode (
            zframe_data (frame), zframe_size (frame), err, sizeof err);
        zframe_destroy (&frame);
        cr_assert_not_null (answer, "%s", err);
        cr_assert_eq (cm_metrics_msg_type (answer), CM_METRICS_MSG_AGGREGATE);
        cr_assert_eq (cm_metrics_msg_id (answer), id,
                      "the answer carries the query's id");
        json_t *aggregate = json_incref (cm_metrics_msg_body (answer));
        cm_metrics_msg_destroy (&answer);
        return aggregate;
    }
}

static json_t *
s_instance (json_t *aggregate, size_t index)
{
    return json_array_get (json_object_get (aggregate, "instances"), index);
}

Test (sup_metrics, walk_through)
{
    cm_log_init ("test_sup_metrics");
    //  The supervisor binds the hub (here on a free port)...
    sup_metrics_t *hub = sup_metrics_new ("tcp://127.0.0.1:*", S_TTL_MS);
    cr_assert_not_null (hub);
    //  ...two chat instances report their snapshots...
    zsock_t *chat1 = s_dealer (hub), *chat2 = s_dealer (hub);
    s_report (chat1, "chat", "chat-1", s_snapshot (3, 0.2));
    s_report (chat2, "chat", "chat-2", s_snapshot (4, 0.4));
    s_pump_until (hub, 2);
    //  ...and the gateway asks for the aggregate: per service the merged
    //  snapshot, and every instance's own.
    zsock_t *gateway = s_dealer (hub);
    json_t *aggregate = s_query (hub, gateway, 42);
    json_t *chat = json_object_get (json_object_get (aggregate, "services"), "chat");
    cr_assert_eq (json_integer_value (json_object_get (chat, "instances")), 2);
    json_t *merged = json_object_get (chat, "snapshot");
    cr_assert_eq (cm_metrics_sum (merged, "llmrt_requests_total", NULL), 7);
    cr_assert_eq (cm_metrics_sum (merged, "llmrt_latency_seconds", NULL), 2,
                  "histograms merged: two observations");
    cr_assert_eq (json_array_size (json_object_get (aggregate, "instances")), 2);
    cr_assert_str_eq (
        json_string_value (json_object_get (s_instance (aggregate, 0), "instance")),
        "chat-1");
    cr_assert_eq (cm_metrics_sum (json_object_get (s_instance (aggregate, 1), "snapshot"),
                                  "llmrt_requests_total", NULL),
                  4);
    cr_assert_eq (json_integer_value (json_object_get (aggregate, "ttl_ms")), S_TTL_MS);
    //  The hub's own series come along.
    json_t *own = json_object_get (aggregate, "supervisor");
    const char *accepted[] = {"outcome", "accepted", NULL};
    cr_assert_eq (cm_metrics_sum (own, "llmrt_supervisor_reports_total", accepted), 2);
    cr_assert_eq (cm_metrics_sum (own, "llmrt_supervisor_instances_reporting", NULL), 2);
    json_decref (aggregate);
    zsock_destroy (&chat1);
    zsock_destroy (&chat2);
    zsock_destroy (&gateway);
    sup_metrics_destroy (&hub);
    cr_assert_null (hub);
    sup_metrics_destroy (&hub);
}

Test (sup_metrics, a_newer_report_replaces_the_older)
{
    sup_metrics_t *hub = sup_metrics_new ("tcp://127.0.0.1:*", S_TTL_MS);
    //  Snapshots hold totals: the last one is the truth, never a sum.
    cr_assert (
        sup_metrics_report (hub, "chat", "chat-1", s_snapshot (3, 0.1), 0, 1, 1000));
    cr_assert (
        sup_metrics_report (hub, "chat", "chat-1", s_snapshot (5, 0.1), 0, 2, 2000));
    //  The same instance id under another service is another instance.
    cr_assert (
        sup_metrics_report (hub, "agent", "chat-1", s_snapshot (1, 0.1), 0, 1, 2000));
    json_t *aggregate = sup_metrics_aggregate (hub, 2500);
    json_t *services = json_object_get (aggregate, "services");
    cr_assert_eq (
        cm_metrics_sum (json_object_get (json_object_get (services, "chat"), "snapshot"),
                        "llmrt_requests_total", NULL),
        5);
    cr_assert_eq (json_array_size (json_object_get (aggregate, "instances")), 2);
    //  Instances are listed by service, then id; each with its age and number.
    json_t *first = s_instance (aggregate, 0);
    cr_assert_str_eq (json_string_value (json_object_get (first, "service")), "agent");
    json_t *second = s_instance (aggregate, 1);
    cr_assert_eq (json_integer_value (json_object_get (second, "age_ms")), 500);
    cr_assert_eq (json_integer_value (json_object_get (second, "seq")), 2);
    json_decref (aggregate);
    sup_metrics_destroy (&hub);
}

Test (sup_metrics, a_silent_instance_leaves_after_the_ttl)
{
    sup_metrics_t *hub = sup_metrics_new ("tcp://127.0.0.1:*", S_TTL_MS);
    sup_metrics_report (hub, "chat", "chat-1", s_snapshot (3, 0.1), 0, 1, 1000);
    sup_metrics_report (hub, "chat", "chat-2", s_snapshot (4, 0.1), 0, 1, 3000);
    //  Just before chat-1's TTL ends, both count.
    json_t *aggregate = sup_metrics_aggregate (hub, 1000 + S_TTL_MS - 1);
    cr_assert_eq (json_array_size (json_object_get (aggregate, "instances")), 2);
    json_decref (aggregate);
    //  Then chat-1 is gone from the breakdown and from the service's sums.
    aggregate = sup_metrics_aggregate (hub, 1000 + S_TTL_MS);
    cr_assert_eq (json_array_size (json_object_get (aggregate, "instances")), 1);
    json_t *chat = json_object_get (json_object_get (aggregate, "services"), "chat");
    cr_assert_eq (json_integer_value (json_object_get (chat, "instances")), 1);
    cr_assert_eq (
        cm_metrics_sum (json_object_get (chat, "snapshot"), "llmrt_requests_total", NULL),
        4);
    cr_assert_eq (cm_metrics_sum (json_object_get (aggregate, "supervisor"),
                                  "llmrt_supervisor_instances_expired_total", NULL),
                  1);
    json_decref (aggregate);
    //  When every instance of a service is gone, so is the service.
    cr_assert_eq (sup_metrics_expire (hub, 3000 + S_TTL_MS), 1);
    aggregate = sup_metrics_aggregate (hub, 3000 + S_TTL_MS);
    cr_assert_eq (json_object_size (json_object_get (aggregate, "services")), 0);
    json_decref (aggregate);
    sup_metrics_destroy (&hub);
}

Test (sup_metrics, malformed_frames_are_counted_and_serving_goes_on)
{
    cm_log_init ("test_sup_metrics");
    sup_metrics_t *hub = sup_metrics_new ("tcp://127.0.0.1:*", S_TTL_MS);
    zsock_t *dealer = s_dealer (hub);
    zsock_t *gateway = s_dealer (hub);
    //  Garbage, a two-frame message, and an AGGREGATE (only the hub sends those).
    zstr_send (dealer, "not msgpack");
    zstr_sendm (dealer, "two");
    zstr_send (dealer, "frames");
    cm_metrics_msg_t *aggregate_msg = cm_metrics_msg_new (CM_METRICS_MSG_AGGREGATE);
    cm_metrics_msg_set_body (aggregate_msg, json_object ());
    s_send (dealer, &aggregate_msg);
    s_report (dealer, "chat", "chat-1", s_snapshot (1, 0.1));
    s_pump_until (hub, 1);
    json_t *aggregate = s_query (hub, gateway, 7);
    const char *rejected[] = {"outcome", "rejected", NULL};
    cr_assert_eq (cm_metrics_sum (json_object_get (aggregate, "supervisor"),
                                  "llmrt_supervisor_reports_total", rejected),
                  3);
    json_decref (aggregate);
    zsock_destroy (&dealer);
    zsock_destroy (&gateway);
    sup_metrics_destroy (&hub);
}

Test (sup_metrics, an_endpoint_in_use_is_refused)
{
    sup_metrics_t *hub = sup_metrics_new ("tcp://127.0.0.1:*", S_TTL_MS);
    cr_assert_null (sup_metrics_new (sup_metrics_endpoint (hub), S_TTL_MS));
    sup_metrics_destroy (&hub);
}

Test (sup_metrics, supervisor_restarts_and_children_per_program)
{
    cm_log_init ("test_sup_metrics");
    char err[512];
    sup_conf_t *conf = sup_conf_parse ("[program:crasher]\ncommand = sh -c 'exit 3'\n"
                                       "replicas = 2\n",
                                       "test.conf", err, sizeof err);
    cr_assert_not_null (conf, "%s", err);
    sup_settings_t settings = {.restart_initial_ms = 1,
                               .restart_max_ms = 20,
                               .restart_reset_ms = 10000,
                               .max_crashes = 3,
                               .crash_window_ms = 60000,
                               .grace_ms = 5000};
    sup_supervisor_t *supervisor = sup_supervisor_new (&conf, &settings);
    sup_metrics_t *hub = sup_metrics_new ("tcp://127.0.0.1:*", S_TTL_MS);
    cr_assert_eq (sup_metrics_attach (hub, supervisor), 0);
    //  Both replicas crash until they are given up; run returns then.
    cr_assert_eq (sup_supervisor_run (supervisor), 1);
    sup_program_stats_t stats;
    sup_supervisor_program_stats (supervisor, 0, &stats);
    cr_assert_str_eq (stats.name, "crasher");
    cr_assert_eq (stats.given_up, 2);
    cr_assert_geq (stats.restarts, 2, "each replica was restarted");
    json_t *aggregate = sup_metrics_aggregate (hub, cm_clock_mono_ms ());
    json_t *own = json_object_get (aggregate, "supervisor");
    const char *crasher[] = {"program", "crasher", NULL};
    cr_assert_eq (cm_metrics_sum (own, "llmrt_supervisor_restarts_total", crasher),
                  (double) stats.restarts);
    cr_assert_eq (cm_metrics_sum (own, "llmrt_supervisor_children_up", crasher), 0);
    cr_assert_eq (cm_metrics_sum (own, "llmrt_supervisor_children_configured", crasher),
                  2);
    cr_assert_eq (cm_metrics_sum (own, "llmrt_supervisor_children_given_up", crasher), 2);
    json_decref (aggregate);
    sup_metrics_destroy (&hub);
    sup_supervisor_destroy (&supervisor);
}

//  SUPERVISOR_METRICS_ROLE=report: a supervisor that binds nothing and
//  reports its programs' series to a hub elsewhere, as service "supervisor".
Test (sup_metrics, a_reporting_supervisor_sends_its_restarts_to_the_hub)
{
    cm_log_init ("test_sup_metrics");
    char err[512];
    sup_conf_t *conf = sup_conf_parse ("[program:crasher]\n"
                                       "command = sh -c 'sleep 0.05; exit 3'\n",
                                       "test.conf", err, sizeof err);
    cr_assert_not_null (conf, "%s", err);
    sup_settings_t settings = {.restart_initial_ms = 1,
                               .restart_max_ms = 20,
                               .restart_reset_ms = 10000,
                               .max_crashes = 4,
                               .crash_window_ms = 60000,
                               .grace_ms = 5000};
    sup_supervisor_t *supervisor = sup_supervisor_new (&conf, &settings);
    sup_metrics_t *hub = sup_metrics_new ("tcp://127.0.0.1:*", S_TTL_MS);
    sup_metrics_t *reporter =
        sup_metrics_new_reporter (sup_metrics_endpoint (hub), "supervisor-c1", 20);
    cr_assert_null (sup_metrics_socket (reporter), "a reporter binds nothing");
    cr_assert_str_eq (sup_metrics_endpoint (reporter), sup_metrics_endpoint (hub));
    cr_assert_eq (sup_metrics_attach (reporter, supervisor), 0);
    //  The crasher is restarted until it is given up; run returns then.
    cr_assert_eq (sup_supervisor_run (supervisor), 1);
    sup_program_stats_t stats;
    sup_supervisor_program_stats (supervisor, 0, &stats);
    cr_assert_geq (stats.restarts, 1);

    //  The hub hears of the restarts from the reporter, under its service.
    const char *crasher[] = {"program", "crasher", NULL};
    zsock_t *gateway = s_dealer (hub);
    json_t *aggregate = NULL;
    double restarts = 0;
    int64_t until = cm_clock_mono_ms () + S_PATIENCE_MS;
    for (uint64_t id = 1; restarts < 1; id++) {
        cr_assert_lt (cm_clock_mono_ms (), until, "no restart reached the hub");
        json_decref (aggregate);
        aggregate = s_query (hub, gateway, id);
        json_t *service =
            json_object_get (json_object_get (aggregate, "services"), "supervisor");
        restarts = cm_metrics_sum (json_object_get (service, "snapshot"),
                                   "llmrt_supervisor_restarts_total", crasher);
    }
    json_t *instance = s_instance (aggregate, 0);
    cr_assert_str_eq (json_string_value (json_object_get (instance, "service")),
                      "supervisor");
    cr_assert_str_eq (json_string_value (json_object_get (instance, "instance")),
                      "supervisor-c1");
    json_t *snapshot = json_object_get (instance, "snapshot");
    cr_assert_eq (
        cm_metrics_sum (snapshot, "llmrt_supervisor_children_configured", crasher), 1);
    //  The hub's own series say nothing of a program it does not run.
    cr_assert_eq (cm_metrics_sum (json_object_get (aggregate, "supervisor"),
                                  "llmrt_supervisor_restarts_total", NULL),
                  0);
    json_decref (aggregate);
    zsock_destroy (&gateway);
    sup_metrics_destroy (&reporter);
    sup_metrics_destroy (&hub);
    sup_supervisor_destroy (&supervisor);
}
