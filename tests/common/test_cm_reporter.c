/*  test_cm_reporter.c: an instance's reports reach a supervisor (a real
    ROUTER socket here), and a supervisor that is not there costs the
    instance nothing but dropped (counted) reports. Waits are polls. */
#include <criterion/criterion.h>
#include <czmq.h>
#include "cm_metrics_msg.h"
#include "cm_reporter.h"
#include "test_port.h"
#include <unistd.h>

#define S_PATIENCE_MS 20000

Test (cm_reporter, reports_reach_the_supervisor)
{
    zsock_t *router = zsock_new (ZMQ_ROUTER);
    int port = zsock_bind (router, "tcp://127.0.0.1:*");
    cr_assert_gt (port, 0);
    char endpoint[64];
    snprintf (endpoint, sizeof endpoint, "tcp://127.0.0.1:%d", port);
    cm_metrics_t *metrics = cm_metrics_new ();
    cm_metric_add (cm_metrics_counter (metrics, "llmrt_x_total", "X.", NULL), 5);
    cm_reporter_config_t config = {.metrics = metrics,
                                   .endpoint = endpoint,
                                   .service = "chat",
                                   .instance = "chat-1",
                                   .interval_ms = 20};
    cm_reporter_t *reporter = cm_reporter_new (&config);
    //  Two reports in order, with the snapshot.
    uint64_t last = 0;
    for (int n = 0; n < 2; n++) {
        zpoller_t *poller = zpoller_new (router, NULL);
        cr_assert_eq (zpoller_wait (poller, S_PATIENCE_MS), router);
        zpoller_destroy (&poller);
        zframe_t *id = zframe_recv (router);
        zframe_t *frame = zframe_recv (router);
        char err[256];
        cm_metrics_msg_t *report = cm_metrics_msg_decode (
            zframe_data (frame), zframe_size (frame), err, sizeof err);
        cr_assert_not_null (report, "%s", err);
        cr_assert_eq (cm_metrics_msg_type (report), CM_METRICS_MSG_REPORT);
        cr_assert_str_eq (cm_metrics_msg_service (report), "chat");
        cr_assert_str_eq (cm_metrics_msg_instance (report), "chat-1");
        cr_assert_gt (cm_metrics_msg_id (report), last);
        last = cm_metrics_msg_id (report);
        cr_assert_eq (
            cm_metrics_sum (cm_metrics_msg_body (report), "llmrt_x_total", NULL), 5);
        cm_metrics_msg_destroy (&report);
        zframe_destroy (&id);
        zframe_destroy (&frame);
    }
    cm_reporter_destroy (&reporter);
    cr_assert_null (reporter);
    //  Its own counter is in the registry.
    json_t *snapshot = cm_metrics_snapshot (metrics);
    const char *sent[] = {"outcome", "sent", NULL};
    cr_assert_geq (cm_metrics_sum (snapshot, "llmrt_metrics_reports_total", sent), 2);
    json_decref (snapshot);
    cm_metrics_destroy (&metrics);
    zsock_destroy (&router);
}

Test (cm_reporter, absent_supervisor_costs_only_dropped_reports)
{
    //  Nothing listens on this port: every report is dropped at once.
    int holder;
    int port = test_port_refusing (&holder);
    char endpoint[64];
    snprintf (endpoint, sizeof endpoint, "tcp://127.0.0.1:%d", port);
    cm_metrics_t *metrics = cm_metrics_new ();
    cm_reporter_config_t config = {.metrics = metrics,
                                   .endpoint = endpoint,
                                   .service = "chat",
                                   .instance = "chat-1",
                                   .interval_ms = 5};
    cm_reporter_t *reporter = cm_reporter_new (&config);
    int64_t until = cm_clock_mono_ms () + S_PATIENCE_MS;
    while (cm_reporter_dropped (reporter) < 10 && cm_clock_mono_ms () < until)
        usleep (1000);
    cr_assert_geq (cm_reporter_dropped (reporter), 10);
    cr_assert_eq (cm_reporter_sent (reporter), 0);
    //  Stopping does not wait for anyone.
    int64_t before = cm_clock_mono_ms ();
    cm_reporter_destroy (&reporter);
    cr_assert_lt (cm_clock_mono_ms () - before, 5000);
    json_t *snapshot = cm_metrics_snapshot (metrics);
    const char *dropped[] = {"outcome", "dropped", NULL};
    cr_assert_geq (cm_metrics_sum (snapshot, "llmrt_metrics_reports_total", dropped), 10);
    json_decref (snapshot);
    cm_metrics_destroy (&metrics);
    close (holder);
}
