/*  test_cm_metrics.c: the metrics registry, its snapshot, merging,
    quantiles and the Prometheus text exposition. Quantile cases are those
    of Prometheus's own promql/testdata/histograms.test, so that our p50/p90
    agree with what histogram_quantile says about the same series. */
#include <criterion/criterion.h>
#include <math.h>
#include <pthread.h>
#include "cm_metrics.h"

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

//  How many times needle occurs in text.
static int
s_count (const char *text, const char *needle)
{
    int n = 0;
    for (const char *p = text; (p = strstr (p, needle)); p += strlen (needle))
        n++;
    return n;
}

Test (cm_metrics, walk_through)
{
    //  A daemon registers its series once, with labels fixed by code...
    cm_metrics_t *metrics = cm_metrics_new ();
    const char *chat[] = {"route", "chat", NULL};
    cm_metric_t *requests =
        cm_metrics_counter (metrics, "llmrt_requests_total", "Requests served.", chat);
    cm_metric_t *busy = cm_metrics_gauge (metrics, "llmrt_busy", "Busy slots.", NULL);
    cm_metric_t *latency = cm_metrics_histogram (
        metrics, "llmrt_latency_seconds", "Time to answer.", chat,
        cm_metrics_latency_buckets, cm_metrics_latency_bucket_count);
    //  ...updates them on its request paths (lock-free)...
    cm_metric_add (requests, 1);
    cm_metric_add (requests, 1);
    cm_metric_set (busy, 3);
    cm_metric_observe (latency, 0.2);
    cr_assert_eq (cm_metric_value (requests), 2);
    //  ...and reports a snapshot, which the supervisor merges with the
    //  snapshots of the other instances.
    json_t *snapshot = cm_metrics_snapshot (metrics);
    json_t *aggregate = json_object ();
    cm_metrics_merge (aggregate, snapshot);
    cm_metrics_merge (aggregate, snapshot);
    cr_assert_eq (cm_metrics_sum (aggregate, "llmrt_requests_total", NULL), 4);
    //  The gateway reads quantiles from it and writes it for Prometheus.
    const json_t *series = cm_metrics_series (aggregate, "llmrt_latency_seconds", chat);
    double p50 = cm_metrics_quantile (series, 0.5);
    cr_assert (p50 > 0.1 && p50 <= 0.25, "p50 %g", p50);
    const char *service[] = {"service", "chat", NULL};
    char *text = cm_metrics_prometheus (aggregate, service);
    cr_assert (
        s_has_line (text, "llmrt_requests_total{service=\"chat\",route=\"chat\"} 4"),
        "%s", text);
    free (text);
    json_decref (aggregate);
    json_decref (snapshot);
    cm_metrics_destroy (&metrics);
    cr_assert_null (metrics);
    cm_metrics_destroy (&metrics); //  NULL-safe
}

Test (cm_metrics, same_name_and_labels_give_the_same_series)
{
    cm_metrics_t *metrics = cm_metrics_new ();
    const char *ab[] = {"a", "1", "b", "2", NULL};
    const char *ba[] = {"b", "2", "a", "1", NULL};
    cm_metric_t *one = cm_metrics_counter (metrics, "llmrt_x_total", "First help.", ab);
    cm_metric_t *two = cm_metrics_counter (metrics, "llmrt_x_total", "Other help.", ba);
    cr_assert_eq (one, two, "label order does not make another series");
    cr_assert_eq (cm_metrics_gauge (metrics, "llmrt_g", NULL, NULL),
                  cm_metrics_gauge (metrics, "llmrt_g", NULL, NULL));
    json_t *snapshot = cm_metrics_snapshot (metrics);
    json_t *family = json_array_get (json_object_get (snapshot, "families"), 0);
    cr_assert_str_eq (json_string_value (json_object_get (family, "help")),
                      "First help.");
    cr_assert_eq (json_array_size (json_object_get (family, "series")), 1);
    json_decref (snapshot);
    cm_metrics_destroy (&metrics);
}

Test (cm_metrics, labels_tell_series_apart)
{
    cm_metrics_t *metrics = cm_metrics_new ();
    const char *ok[] = {"status", "2xx", NULL};
    const char *bad[] = {"status", "5xx", NULL};
    cm_metric_add (cm_metrics_counter (metrics, "llmrt_r_total", "R.", ok), 3);
    cm_metric_add (cm_metrics_counter (metrics, "llmrt_r_total", "R.", bad), 1);
    cm_metric_add (cm_metrics_counter (metrics, "llmrt_r_total", "R.", NULL), 7);
    json_t *snapshot = cm_metrics_snapshot (metrics);
    cr_assert_eq (cm_metrics_sum (snapshot, "llmrt_r_total", ok), 3);
    cr_assert_eq (cm_metrics_sum (snapshot, "llmrt_r_total", bad), 1);
    cr_assert_eq (cm_metrics_sum (snapshot, "llmrt_r_total", NULL), 11);
    const json_t *none = cm_metrics_series (snapshot, "llmrt_r_total", NULL);
    cr_assert_not_null (none);
    cr_assert_eq (json_number_value (json_object_get (none, "value")), 7);
    cr_assert_null (cm_metrics_series (snapshot, "llmrt_missing", NULL));
    json_decref (snapshot);
    cm_metrics_destroy (&metrics);
}

//  --- several threads -------------------------------------------------------

#define S_THREADS 8
#define S_PER     20000

typedef struct {
    cm_metrics_t *metrics;
    int index;
} s_worker_t;

static void *
s_hammer (void *arg)
{
    s_worker_t *worker = arg;
    //  Each thread registers too: registration races with updates.
    cm_metric_t *counter =
        cm_metrics_counter (worker->metrics, "llmrt_c_total", "C.", NULL);
    cm_metric_t *gauge = cm_metrics_gauge (worker->metrics, "llmrt_g", "G.", NULL);
    const double bounds[] = {1, 2, 3};
    cm_metric_t *histogram =
        cm_metrics_histogram (worker->metrics, "llmrt_h_seconds", "H.", NULL, bounds, 3);
    for (int i = 0; i < S_PER; i++) {
        cm_metric_add (counter, 1);
        cm_metric_add (gauge, 0.5);
        cm_metric_observe (histogram, (double) (i % 4) + 0.5); //  one per bucket
        if (i % 1000 == 0)
            json_decref (cm_metrics_snapshot (worker->metrics));
    }
    return NULL;
}

Test (cm_metrics, updates_from_several_threads_are_all_counted)
{
    cm_metrics_t *metrics = cm_metrics_new ();
    pthread_t threads[S_THREADS];
    s_worker_t workers[S_THREADS];
    for (int t = 0; t < S_THREADS; t++) {
        workers[t] = (s_worker_t){metrics, t};
        pthread_create (&threads[t], NULL, s_hammer, &workers[t]);
    }
    for (int t = 0; t < S_THREADS; t++)
        pthread_join (threads[t], NULL);
    json_t *snapshot = cm_metrics_snapshot (metrics);
    double total = S_THREADS * S_PER;
    cr_assert_eq (cm_metrics_sum (snapshot, "llmrt_c_total", NULL), total);
    cr_assert_eq (cm_metrics_sum (snapshot, "llmrt_g", NULL), total / 2);
    const json_t *h = cm_metrics_series (snapshot, "llmrt_h_seconds", NULL);
    json_t *buckets = json_object_get (h, "buckets");
    for (size_t b = 0; b < 4; b++)
        cr_assert_eq (json_integer_value (json_array_get (buckets, b)),
                      (json_int_t) (total / 4 * (double) (b + 1)), "bucket %zu", b);
    cr_assert_eq (json_integer_value (json_object_get (h, "count")), (json_int_t) total);
    //  0.5 + 1.5 + 2.5 + 3.5 = 8 per four observations.
    cr_assert_eq (json_number_value (json_object_get (h, "sum")), total / 4 * 8);
    json_decref (snapshot);
    cm_metrics_destroy (&metrics);
}

Test (cm_metrics, snapshot_has_the_documented_shape)
{
    cm_metrics_t *metrics = cm_metrics_new ();
    const char *labels[] = {"queue", "chat", NULL};
    cm_metric_set (cm_metrics_gauge (metrics, "llmrt_depth", "Depth.", labels), 2);
    const double bounds[] = {0.1, 1};
    cm_metric_t *h =
        cm_metrics_histogram (metrics, "llmrt_wait_seconds", "Wait.", labels, bounds, 2);
    cm_metric_observe (h, 0.05);
    cm_metric_observe (h, 0.1); //  le: the bound itself is in the bucket
    cm_metric_observe (h, 0.5);
    cm_metric_observe (h, 5);
    json_t *snapshot = cm_metrics_snapshot (metrics);
    json_t *expected = json_loads (
        "{\"families\": ["
        " {\"name\": \"llmrt_depth\", \"help\": \"Depth.\", \"type\": \"gauge\","
        "  \"series\": [{\"labels\": {\"queue\": \"chat\"}, \"value\": 2}]},"
        " {\"name\": \"llmrt_wait_seconds\", \"help\": \"Wait.\", \"type\": "
        "\"histogram\","
        "  \"series\": [{\"labels\": {\"queue\": \"chat\"}, \"bounds\": [0.1, 1.0],"
        "               \"buckets\": [2, 3, 4], \"count\": 4}]}]}",
        0, NULL);
    cr_assert_not_null (expected);
    //  The sum is a float sum: compared on its own, with a tolerance.
    json_t *series = json_array_get (
        json_object_get (json_array_get (json_object_get (snapshot, "families"), 1),
                         "series"),
        0);
    cr_assert_float_eq (json_number_value (json_object_get (series, "sum")), 5.65, 1e-12);
    json_object_del (series, "sum");
    char *have = json_dumps (snapshot, JSON_SORT_KEYS);
    cr_assert (json_equal (snapshot, expected), "snapshot: %s", have);
    free (have);
    json_decref (expected);
    json_decref (snapshot);
    cm_metrics_destroy (&metrics);
}

static void
s_collect (cm_metrics_t *metrics, void *arg)
{
    int *calls = arg;
    (*calls)++;
    cm_metric_set (cm_metrics_gauge (metrics, "llmrt_collected", "Collected.", NULL),
                   *calls);
}

Test (cm_metrics, collectors_run_before_each_snapshot_until_removed)
{
    cm_metrics_t *metrics = cm_metrics_new ();
    int calls = 0;
    cm_metrics_collector (metrics, s_collect, &calls);
    json_t *snapshot = cm_metrics_snapshot (metrics);
    cr_assert_eq (cm_metrics_sum (snapshot, "llmrt_collected", NULL), 1);
    json_decref (snapshot);
    snapshot = cm_metrics_snapshot (metrics);
    cr_assert_eq (cm_metrics_sum (snapshot, "llmrt_collected", NULL), 2);
    json_decref (snapshot);
    cr_assert (cm_metrics_collector_remove (metrics, s_collect, &calls));
    cr_assert_not (cm_metrics_collector_remove (metrics, s_collect, &calls));
    json_decref (cm_metrics_snapshot (metrics));
    cr_assert_eq (calls, 2);
    cm_metrics_destroy (&metrics);
}

//  --- merging -------------------------------------------------------------

Test (cm_metrics, merge_sums_counters_and_gauges)
{
    json_t *aggregate = json_object ();
    const char *labels[] = {"queue", "chat", NULL};
    for (int instance = 1; instance <= 3; instance++) {
        cm_metrics_t *metrics = cm_metrics_new ();
        cm_metric_add (cm_metrics_counter (metrics, "llmrt_done_total", "Done.", labels),
                       instance * 10);
        cm_metric_set (cm_metrics_gauge (metrics, "llmrt_active", "Active.", labels),
                       instance);
        //  A series only one instance has is carried over as it is.
        if (instance == 2)
            cm_metric_set (cm_metrics_gauge (metrics, "llmrt_only_two", "Two.", NULL), 9);
        json_t *snapshot = cm_metrics_snapshot (metrics);
        cm_metrics_merge (aggregate, snapshot);
        json_decref (snapshot);
        cm_metrics_destroy (&metrics);
    }
    cr_assert_eq (cm_metrics_sum (aggregate, "llmrt_done_total", labels), 60);
    cr_assert_eq (cm_metrics_sum (aggregate, "llmrt_active", labels), 6);
    cr_assert_eq (cm_metrics_sum (aggregate, "llmrt_only_two", NULL), 9);
    cr_assert_eq (json_array_size (json_object_get (aggregate, "families")), 3);
    cr_assert_null (json_object_get (aggregate, "merge_conflicts"));
    json_decref (aggregate);
}

//  Prometheus's request_duration_seconds test histograms: per job and
//  instance, buckets 0.1, 0.2, +Inf, cumulative counts as given.
static json_t *
s_instance_snapshot (int le01, int le02, int inf, const char *job)
{
    cm_metrics_t *metrics = cm_metrics_new ();
    const double bounds[] = {0.1, 0.2};
    const char *labels[] = {"job", job, NULL};
    cm_metric_t *h = cm_metrics_histogram (metrics, "request_duration_seconds", "D.",
                                           labels, bounds, 2);
    for (int i = 0; i < le01; i++)
        cm_metric_observe (h, 0.05);
    for (int i = le01; i < le02; i++)
        cm_metric_observe (h, 0.15);
    for (int i = le02; i < inf; i++)
        cm_metric_observe (h, 0.5);
    json_t *snapshot = cm_metrics_snapshot (metrics);
    cm_metrics_destroy (&metrics);
    return snapshot;
}

Test (cm_metrics, merge_sums_histograms_bucket_by_bucket)
{
    //  job1/ins1, job1/ins2, job2/ins1, job2/ins2.
    json_t *snapshots[] = {
        s_instance_snapshot (1, 3, 4, "job1"), s_instance_snapshot (2, 5, 6, "job1"),
        s_instance_snapshot (3, 4, 6, "job2"), s_instance_snapshot (4, 7, 9, "job2")};
    json_t *by_job = json_object ();
    json_t *all = json_object ();
    for (int i = 0; i < 4; i++) {
        cm_metrics_merge (by_job, snapshots[i]);
        const char *none[] = {"job", "any", NULL};
        json_t *relabelled = cm_metrics_relabel (snapshots[i], none);
        cm_metrics_merge (all, relabelled);
        json_decref (relabelled);
    }
    const char *job1[] = {"job", "job1", NULL};
    const json_t *series = cm_metrics_series (by_job, "request_duration_seconds", job1);
    json_t *expected = json_loads ("[3, 8, 10]", 0, NULL);
    cr_assert (json_equal (json_object_get (series, "buckets"), expected));
    cr_assert_eq (json_integer_value (json_object_get (series, "count")), 10);
    json_decref (expected);
    const char *any[] = {"job", "any", NULL};
    series = cm_metrics_series (all, "request_duration_seconds", any);
    expected = json_loads ("[10, 19, 25]", 0, NULL);
    cr_assert (json_equal (json_object_get (series, "buckets"), expected));
    json_decref (expected);
    //  sum: 10 × 0.05 + 9 × 0.15 + 6 × 0.5
    cr_assert_float_eq (json_number_value (json_object_get (series, "sum")), 4.85, 1e-9);
    for (int i = 0; i < 4; i++)
        json_decref (snapshots[i]);
    json_decref (by_job);
    json_decref (all);
}

Test (cm_metrics, merge_leaves_out_histograms_with_other_bounds)
{
    json_t *aggregate = json_object ();
    const double first[] = {0.1, 1}, second[] = {0.5, 1};
    for (int i = 0; i < 2; i++) {
        cm_metrics_t *metrics = cm_metrics_new ();
        cm_metric_observe (cm_metrics_histogram (metrics, "llmrt_h_seconds", "H.", NULL,
                                                 i ? second : first, 2),
                           0.3);
        cm_metric_add (cm_metrics_counter (metrics, "llmrt_c_total", "C.", NULL), 1);
        json_t *snapshot = cm_metrics_snapshot (metrics);
        cm_metrics_merge (aggregate, snapshot);
        json_decref (snapshot);
        cm_metrics_destroy (&metrics);
    }
    //  The first bounds stay; the other series is counted, not mixed in.
    const json_t *h = cm_metrics_series (aggregate, "llmrt_h_seconds", NULL);
    cr_assert_eq (json_integer_value (json_object_get (h, "count")), 1);
    cr_assert_eq (json_number_value (json_array_get (json_object_get (h, "bounds"), 0)),
                  0.1);
    cr_assert_eq (json_integer_value (json_object_get (aggregate, "merge_conflicts")), 1);
    //  Everything else merged as usual.
    cr_assert_eq (cm_metrics_sum (aggregate, "llmrt_c_total", NULL), 2);
    //  A family whose type differs conflicts as a whole.
    json_t *gauge =
        json_loads ("{\"families\": [{\"name\": \"llmrt_c_total\", \"type\": "
                    "\"gauge\", \"series\": [{\"labels\": {}, \"value\": 1}]}]}",
                    0, NULL);
    cm_metrics_merge (aggregate, gauge);
    cr_assert_eq (json_integer_value (json_object_get (aggregate, "merge_conflicts")), 2);
    cr_assert_eq (cm_metrics_sum (aggregate, "llmrt_c_total", NULL), 2);
    json_decref (gauge);
    json_decref (aggregate);
}

Test (cm_metrics, merge_skips_malformed_input)
{
    json_t *aggregate = json_object ();
    const char *bad[] = {
        "{}",
        "{\"families\": 3}",
        "{\"families\": [1, {\"name\": 2}, {\"name\": \"x\", \"type\": \"gauge\"}]}",
        "{\"families\": [{\"name\": \"llmrt_h\", \"type\": \"histogram\", \"series\": "
        "[{\"labels\": {}, \"bounds\": [1], \"buckets\": [1]}, 7]}]}",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        json_t *snapshot = json_loads (bad[i], 0, NULL);
        cm_metrics_merge (aggregate, snapshot);
        json_decref (snapshot);
    }
    cr_assert_eq (cm_metrics_sum (aggregate, "llmrt_h", NULL), 0);
    json_decref (aggregate);
}

//  --- quantiles -----------------------------------------------------------

static json_t *
s_histogram (const char *bounds, const char *buckets)
{
    char text[256];
    snprintf (text, sizeof text, "{\"labels\": {}, \"bounds\": %s, \"buckets\": %s}",
              bounds, buckets);
    json_t *series = json_loads (text, 0, NULL);
    cr_assert_not_null (series, "%s", text);
    return series;
}

Test (cm_metrics, quantile_matches_prometheus_histogram_quantile)
{
    //  promql/testdata/histograms.test, testhistogram_bucket at 50m.
    json_t *positive = s_histogram ("[0.1, 0.2, 1]", "[50, 70, 110, 120]");
    json_t *negative = s_histogram ("[-0.2, -0.1, 0.3]", "[10, 20, 20, 30]");
    struct {
        double q, positive, negative;
    } cases[] = {
        {-0.1, -INFINITY, -INFINITY},
        {1.01, INFINITY, INFINITY},
        {0, 0, -0.2},
        {1, 1, 0.3},
        {0.2, 0.048, -0.2},
        {0.5, 0.15, -0.15},
        {0.8, 0.72, 0.3},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        double p = cm_metrics_quantile (positive, cases[i].q);
        double n = cm_metrics_quantile (negative, cases[i].q);
        if (isinf (cases[i].positive)) {
            cr_assert (isinf (p) && (p > 0) == (cases[i].positive > 0), "q %g",
                       cases[i].q);
            cr_assert (isinf (n) && (n > 0) == (cases[i].negative > 0), "q %g",
                       cases[i].q);
        } else {
            cr_assert_float_eq (p, cases[i].positive, 1e-9, "positive q %g: %g",
                                cases[i].q, p);
            cr_assert_float_eq (n, cases[i].negative, 1e-9, "negative q %g: %g",
                                cases[i].q, n);
        }
    }
    //  No observations, no +Inf-only histogram, NaN q: NaN.
    json_t *empty = s_histogram ("[0.1]", "[0, 0]");
    json_t *no_bounds = s_histogram ("[]", "[5]");
    cr_assert (isnan (cm_metrics_quantile (empty, 0.5)));
    cr_assert (isnan (cm_metrics_quantile (no_bounds, 0.5)));
    cr_assert (isnan (cm_metrics_quantile (positive, NAN)));
    cr_assert (isnan (cm_metrics_quantile (NULL, 0.5)));
    json_decref (empty);
    json_decref (no_bounds);
    json_decref (positive);
    json_decref (negative);
}

Test (cm_metrics, quantile_of_merged_histograms_matches_prometheus_sum_by_le)
{
    json_t *snapshots[] = {
        s_instance_snapshot (1, 3, 4, "job1"), s_instance_snapshot (2, 5, 6, "job1"),
        s_instance_snapshot (3, 4, 6, "job2"), s_instance_snapshot (4, 7, 9, "job2")};
    json_t *by_job = json_object ();
    json_t *all = json_object ();
    const char *any[] = {"job", "any", NULL};
    for (int i = 0; i < 4; i++) {
        cm_metrics_merge (by_job, snapshots[i]);
        json_t *relabelled = cm_metrics_relabel (snapshots[i], any);
        cm_metrics_merge (all, relabelled);
        json_decref (relabelled);
    }
    //  histogram_quantile(q, sum(rate(..[5m])) by (le)) and by (le, job).
    const json_t *everything = cm_metrics_series (all, "request_duration_seconds", any);
    cr_assert_float_eq (cm_metrics_quantile (everything, 0.3), 0.075, 1e-12);
    cr_assert_float_eq (cm_metrics_quantile (everything, 0.5), 0.1277777777777778, 1e-12);
    const char *job1[] = {"job", "job1", NULL};
    const char *job2[] = {"job", "job2", NULL};
    const json_t *one = cm_metrics_series (by_job, "request_duration_seconds", job1);
    const json_t *two = cm_metrics_series (by_job, "request_duration_seconds", job2);
    cr_assert_float_eq (cm_metrics_quantile (one, 0.3), 0.1, 1e-12);
    cr_assert_float_eq (cm_metrics_quantile (two, 0.3), 0.0642857142857143, 1e-12);
    cr_assert_float_eq (cm_metrics_quantile (one, 0.5), 0.14, 1e-12);
    cr_assert_float_eq (cm_metrics_quantile (two, 0.5), 0.1125, 1e-12);
    for (int i = 0; i < 4; i++)
        json_decref (snapshots[i]);
    json_decref (by_job);
    json_decref (all);
}

//  --- Prometheus text -------------------------------------------------------

Test (cm_metrics, prometheus_writes_help_and_type_once_per_family)
{
    cm_metrics_t *metrics = cm_metrics_new ();
    const char *a[] = {"route", "a", NULL};
    const char *b[] = {"route", "b", NULL};
    cm_metric_add (
        cm_metrics_counter (metrics, "llmrt_r_total", "Requests\\served\nok.", a), 1);
    cm_metric_add (cm_metrics_counter (metrics, "llmrt_r_total", NULL, b), 2);
    cm_metric_set (cm_metrics_gauge (metrics, "llmrt_g", "G.", NULL), 0.1);
    json_t *snapshot = cm_metrics_snapshot (metrics);
    char *text = cm_metrics_prometheus (snapshot, NULL);
    cr_assert_eq (s_count (text, "# HELP llmrt_r_total "), 1, "%s", text);
    cr_assert_eq (s_count (text, "# TYPE llmrt_r_total "), 1, "%s", text);
    cr_assert (s_has_line (text, "# HELP llmrt_r_total Requests\\\\served\\nok."), "%s",
               text);
    cr_assert (s_has_line (text, "# TYPE llmrt_r_total counter"), "%s", text);
    cr_assert (s_has_line (text, "llmrt_r_total{route=\"a\"} 1"), "%s", text);
    cr_assert (s_has_line (text, "llmrt_r_total{route=\"b\"} 2"), "%s", text);
    cr_assert (s_has_line (text, "# TYPE llmrt_g gauge"), "%s", text);
    cr_assert (s_has_line (text, "llmrt_g 0.1"), "%s", text);
    //  HELP comes first, then TYPE, then the samples.
    cr_assert (strstr (text, "# HELP llmrt_r_total") <
               strstr (text, "# TYPE llmrt_r_total"));
    cr_assert (strstr (text, "# TYPE llmrt_r_total") < strstr (text, "llmrt_r_total{"));
    free (text);
    json_decref (snapshot);
    cm_metrics_destroy (&metrics);
}

Test (cm_metrics, prometheus_escapes_label_values)
{
    cm_metrics_t *metrics = cm_metrics_new ();
    const char *labels[] = {"path", "a\\b\"c\nd", NULL};
    cm_metric_add (cm_metrics_counter (metrics, "llmrt_e_total", "E.", labels), 1);
    json_t *snapshot = cm_metrics_snapshot (metrics);
    const char *extra[] = {"instance", "x\"y", NULL};
    char *text = cm_metrics_prometheus (snapshot, extra);
    cr_assert (s_has_line (
                   text, "llmrt_e_total{instance=\"x\\\"y\",path=\"a\\\\b\\\"c\\nd\"} 1"),
               "%s", text);
    free (text);
    json_decref (snapshot);
    cm_metrics_destroy (&metrics);
}

Test (cm_metrics, prometheus_histogram_has_cumulative_buckets_sum_and_count)
{
    cm_metrics_t *metrics = cm_metrics_new ();
    const double bounds[] = {0.005, 0.1, 2.5};
    const char *labels[] = {"class", "chat", NULL};
    cm_metric_t *h =
        cm_metrics_histogram (metrics, "llmrt_d_seconds", "D.", labels, bounds, 3);
    //  Binary fractions, so that the sum is exact.
    cm_metric_observe (h, 0.00390625);
    cm_metric_observe (h, 0.0625);
    cm_metric_observe (h, 0.09375);
    cm_metric_observe (h, 10);
    json_t *snapshot = cm_metrics_snapshot (metrics);
    char *text = cm_metrics_prometheus (snapshot, NULL);
    const char *lines[] = {
        "# TYPE llmrt_d_seconds histogram",
        "llmrt_d_seconds_bucket{class=\"chat\",le=\"0.005\"} 1",
        "llmrt_d_seconds_bucket{class=\"chat\",le=\"0.1\"} 3",
        "llmrt_d_seconds_bucket{class=\"chat\",le=\"2.5\"} 3",
        "llmrt_d_seconds_bucket{class=\"chat\",le=\"+Inf\"} 4",
        "llmrt_d_seconds_sum{class=\"chat\"} 10.16015625",
        "llmrt_d_seconds_count{class=\"chat\"} 4",
    };
    for (size_t i = 0; i < sizeof lines / sizeof lines[0]; i++)
        cr_assert (s_has_line (text, lines[i]), "missing '%s' in:\n%s", lines[i], text);
    free (text);
    json_decref (snapshot);
    cm_metrics_destroy (&metrics);
}

Test (cm_metrics, prometheus_leaves_out_invalid_names)
{
    //  A snapshot from another process is not trusted.
    json_t *snapshot = json_loads (
        "{\"families\": ["
        " {\"name\": \"bad name\", \"type\": \"gauge\", \"series\": [{\"labels\": {}, "
        "\"value\": 1}]},"
        " {\"name\": \"9lives\", \"type\": \"gauge\", \"series\": [{\"labels\": {}, "
        "\"value\": 1}]},"
        " {\"name\": \"llmrt_ok\", \"type\": \"summary\", \"series\": []},"
        " {\"name\": \"llmrt_ok\", \"type\": \"gauge\", \"help\": \"Ok.\", \"series\": ["
        "   {\"labels\": {\"bad-label\": \"x\"}, \"value\": 1},"
        "   {\"labels\": {\"__reserved\": \"x\"}, \"value\": 1},"
        "   {\"labels\": {\"n\": 3}, \"value\": 1},"
        "   {\"labels\": {\"good\": \"x\"}, \"value\": 2}]},"
        " {\"name\": \"llmrt_ok\", \"type\": \"gauge\", \"series\": [{\"labels\": {}, "
        "\"value\": 5}]},"
        " {\"name\": \"llmrt_h\", \"type\": \"histogram\", \"series\": ["
        "   {\"labels\": {\"le\": \"1\"}, \"bounds\": [1], \"buckets\": [1, 1]}]}"
        "]}",
        0, NULL);
    cr_assert_not_null (snapshot);
    char *text = cm_metrics_prometheus (snapshot, NULL);
    cr_assert_str_eq (text, "# HELP llmrt_ok Ok.\n# TYPE llmrt_ok gauge\n"
                            "llmrt_ok{good=\"x\"} 2\n");
    free (text);
    json_decref (snapshot);
}

Test (cm_metrics, prometheus_writes_special_values)
{
    cm_metrics_t *metrics = cm_metrics_new ();
    cm_metric_set (cm_metrics_gauge (metrics, "llmrt_nan", "N.", NULL), NAN);
    cm_metric_set (cm_metrics_gauge (metrics, "llmrt_big", "B.", NULL), 1e21);
    cm_metric_set (cm_metrics_gauge (metrics, "llmrt_small", "S.", NULL), -0.000125);
    cm_metric_set (cm_metrics_gauge (metrics, "llmrt_whole", "W.", NULL), 20);
    cm_metric_set (cm_metrics_gauge (metrics, "llmrt_tiny", "T.", NULL), 0.00001);
    cm_metric_set (cm_metrics_gauge (metrics, "llmrt_third", "T.", NULL), 1.0 / 3);
    json_t *snapshot = cm_metrics_snapshot (metrics);
    char *text = cm_metrics_prometheus (snapshot, NULL);
    cr_assert (s_has_line (text, "llmrt_nan NaN"), "%s", text);
    cr_assert (s_has_line (text, "llmrt_big 1e+21"), "%s", text);
    cr_assert (s_has_line (text, "llmrt_small -0.000125"), "%s", text);
    cr_assert (s_has_line (text, "llmrt_whole 20"), "%s", text);
    cr_assert (s_has_line (text, "llmrt_tiny 1e-05"), "%s", text);
    cr_assert (s_has_line (text, "llmrt_third 0.3333333333333333"), "%s", text);
    free (text);
    json_decref (snapshot);
    cm_metrics_destroy (&metrics);
}

Test (cm_metrics, relabel_puts_the_new_labels_first_and_replaces)
{
    cm_metrics_t *metrics = cm_metrics_new ();
    const char *labels[] = {"route", "r", "service", "old", NULL};
    cm_metric_add (cm_metrics_counter (metrics, "llmrt_x_total", "X.", labels), 1);
    json_t *snapshot = cm_metrics_snapshot (metrics);
    const char *extra[] = {"service", "chat", "instance", "chat-1", NULL};
    json_t *relabelled = cm_metrics_relabel (snapshot, extra);
    char *text = cm_metrics_prometheus (relabelled, NULL);
    cr_assert (
        s_has_line (text,
                    "llmrt_x_total{service=\"chat\",instance=\"chat-1\",route=\"r\"} 1"),
        "%s", text);
    free (text);
    json_decref (relabelled);
    json_decref (snapshot);
    cm_metrics_destroy (&metrics);
}
