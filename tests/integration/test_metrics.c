/*  test_metrics.c: aggregated metrics from the whole suite, as users run
    it: every instance reports to the supervisor, the gateway asks it for
    the aggregate. The Prometheus text must pass `promtool check metrics`
    (Debian's prometheus package, installed by scripts/deps.sh); chats
    through the two chatd replicas must add up in the aggregate and show in
    the per-instance breakdown; a restart must be counted. */
#include <criterion/criterion.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>
#include "cm_metrics.h"
#include "it_harness.h"

#define S_CHATS      20
#define S_CHAT_ROUTE "/api/v1/workspace/{slug}/chat"

//  Reports come often and silent instances leave soon, so polls are short.
static const char *const s_env[] = {"METRICS_REPORT_INTERVAL_MS=100",
                                    "METRICS_INSTANCE_TTL_MS=1500", NULL};

static it_suite_t s_suite;

//  GET /api/metrics (no key needed): 200 and JSON, always.
static json_t *
s_metrics (void)
{
    char url[256];
    it_url (&s_suite, url, sizeof url, "/api/metrics");
    it_response_t r;
    it_http ("GET", url, NULL, false, &r);
    cr_assert_eq (r.status, 200, "/api/metrics: %ld %s", r.status, r.body);
    json_t *json = it_json (&r);
    it_response_free (&r);
    return json;
}

//  Chat requests on the chat route in a snapshot.
static double
s_chats (const json_t *snapshot)
{
    const char *labels[] = {"method", "POST", "route", S_CHAT_ROUTE, NULL};
    return cm_metrics_sum (snapshot, "llmrt_worker_requests_total", labels);
}

//  The aggregate counts every chat, in both replicas' reports.
static bool
s_all_counted (void *arg)
{
    (void) arg;
    json_t *metrics = s_metrics ();
    json_t *aggregate = json_object_get (metrics, "aggregate");
    json_t *chat = json_object_get (json_object_get (aggregate, "services"), "chat");
    bool done = json_integer_value (json_object_get (chat, "instances")) == 2 &&
                s_chats (json_object_get (chat, "snapshot")) == S_CHATS;
    json_decref (metrics);
    return done;
}

//  promtool check metrics on text: its exit status, its output in output.
static int
s_promtool (const char *text, char *output, size_t size)
{
    char path[] = "/tmp/llmrt-it-metrics-XXXXXX";
    int fd = mkstemp (path);
    cr_assert_geq (fd, 0);
    cr_assert_eq (write (fd, text, strlen (text)), (ssize_t) strlen (text));
    close (fd);
    char command[128];
    snprintf (command, sizeof command, "promtool check metrics < %s 2>&1", path);
    FILE *pipe = popen (command, "r");
    cr_assert_not_null (pipe);
    size_t n = fread (output, 1, size - 1, pipe);
    output[n] = 0;
    int status = pclose (pipe);
    unlink (path);
    return WIFEXITED (status) ? WEXITSTATUS (status) : 255;
}

Test (metrics, chats_add_up_over_both_replicas_and_promtool_accepts_the_text,
      .timeout = 120)
{
    cr_assert_eq (
        access ("/usr/bin/promtool", X_OK), 0,
        "promtool is missing: scripts/deps.sh installs it (package prometheus)");
    it_suite_start (&s_suite, s_env);
    char url[256];
    it_create_workspace (&s_suite, "{\"name\":\"Metrics Test\"}");
    it_response_t r;
    //  N chats; the gateway spreads them over both replicas.
    it_url (&s_suite, url, sizeof url, "/api/v1/workspace/metrics-test/chat");
    for (int i = 0; i < S_CHATS; i++) {
        it_http ("POST", url, "{\"message\":\"count me\",\"mode\":\"chat\"}", true, &r);
        cr_assert_eq (r.status, 200, "chat %d: %ld %s", i, r.status, r.body);
        it_response_free (&r);
    }
    //  Reports lag by up to an interval: poll.
    cr_assert (it_wait (s_all_counted, NULL, 20000),
               "the aggregate never counted %d chats over two instances", S_CHATS);

    //  The breakdown: both instances served some, and they add up.
    json_t *metrics = s_metrics ();
    cr_assert (json_is_null (json_object_get (metrics, "aggregate_error")));
    json_t *aggregate = json_object_get (metrics, "aggregate");
    size_t i, replicas = 0;
    double sum = 0;
    json_t *entry;
    json_array_foreach (json_object_get (aggregate, "instances"), i, entry)
    {
        if (strcmp (json_string_value (json_object_get (entry, "service")), "chat"))
            continue;
        double chats = s_chats (json_object_get (entry, "snapshot"));
        cr_assert_gt (chats, 0, "instance %s served no chat",
                      json_string_value (json_object_get (entry, "instance")));
        sum += chats;
        replicas++;
    }
    cr_assert_eq (replicas, 2);
    cr_assert_eq (sum, S_CHATS);
    //  The gateway counted them too, and the supervisor's programs are there.
    json_t *gateway = json_object_get (metrics, "gateway");
    json_t *chat_class = json_object_get (json_object_get (gateway, "requests"), "chat");
    cr_assert_geq (json_integer_value (json_object_get (chat_class, "2xx")), S_CHATS + 1);
    json_t *supervisor = json_object_get (metrics, "supervisor");
    cr_assert_eq (json_integer_value (json_object_get (
                      json_object_get (supervisor, "children_up"), "chatd")),
                  2);
    cr_assert_eq (json_integer_value (json_object_get (
                      json_object_get (supervisor, "restarts"), "chatd")),
                  0);
    json_decref (metrics);

    //  The Prometheus text: valid for promtool, with the same numbers.
    it_url (&s_suite, url, sizeof url, "/api/metrics/prometheus");
    it_http ("GET", url, NULL, false, &r);
    cr_assert_eq (r.status, 200);
    cr_assert (strcasestr (r.headers, "Content-Type: text/plain; version=0.0.4"), "%s",
               r.headers);
    char output[8192];
    int rc = s_promtool (r.body, output, sizeof output);
    cr_assert_eq (rc, 0, "promtool check metrics exited %d:\n%s", rc, output);
    char line[256];
    snprintf (
        line, sizeof line,
        "\nllmrt_worker_requests_total{service=\"chat\",method=\"POST\",route=\"%s\"} "
        "%d\n",
        S_CHAT_ROUTE, S_CHATS);
    cr_assert (strstr (r.body, line), "missing%sin:\n%s", line, r.body);
    cr_assert (strstr (r.body, "\nllmrt_metrics_aggregate_up 1\n"));
    cr_assert (strstr (r.body, "\nllmrt_metrics_instances{service=\"chat\"} 2\n"));
    cr_assert (strstr (r.body, "\nllmrt_supervisor_restarts_total{service=\"supervisor\","
                               "program=\"chatd\"} 0\n"));
    it_response_free (&r);
    it_suite_stop (&s_suite);
}

static json_int_t s_seen_restarts; //  as last polled, for the message
static size_t s_seen_chat;

//  The supervisor counted the restart and the dead instance left the
//  breakdown, so that two chat instances report again.
static bool
s_restart_counted (void *arg)
{
    (void) arg;
    json_t *metrics = s_metrics ();
    json_t *supervisor = json_object_get (metrics, "supervisor");
    json_int_t restarts = json_integer_value (
        json_object_get (json_object_get (supervisor, "restarts"), "chatd"));
    size_t i, chat = 0;
    json_t *entry;
    json_array_foreach (json_object_get (metrics, "instances"), i, entry)
    {
        if (!strcmp (json_string_value (json_object_get (entry, "service")), "chat"))
            chat++;
    }
    json_decref (metrics);
    s_seen_restarts = restarts;
    s_seen_chat = chat;
    return restarts == 1 && chat == 2;
}

Test (metrics, a_restart_is_counted_and_the_dead_instance_leaves, .timeout = 120)
{
    it_suite_start (&s_suite, s_env);
    pid_t pids[8];
    cr_assert_eq (it_children (s_suite.supervisor, "chatd", pids, 8), 2);
    cr_assert_eq (kill (pids[0], SIGKILL), 0);
    //  Three chat instances (the dead one until its TTL) turn into two.
    cr_assert (it_wait (s_restart_counted, NULL, 30000),
               "the restart was not counted, or the dead instance stayed: %lld "
               "restarts, %zu chat instances",
               (long long) s_seen_restarts, s_seen_chat);
    it_suite_stop (&s_suite);
}
