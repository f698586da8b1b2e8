/*  cm_queue_metrics.c: publishes a cm_queue in a cm_metrics registry (see
    cm_queue_attach_metrics in cm_queue.h). */
#include "cm_metrics.h"
#include "cm_queue.h"

typedef struct {
    cm_queue_t *queue;     //  the queue published
    cm_metrics_t *metrics; //  where
    cm_metric_t *wait;     //  llmrt_queue_wait_seconds
    cm_metric_t *run;      //  llmrt_queue_run_seconds
} s_binding_t;

static void
s_timing (void *arg, double waited, double ran)
{
    s_binding_t *binding = arg;
    cm_metric_observe (binding->wait, waited);
    cm_metric_observe (binding->run, ran);
}

static void
s_gauge (cm_metrics_t *metrics, const char *name, const char *help, const char *queue,
         double value)
{
    const char *labels[] = {"queue", queue, NULL};
    cm_metric_set (cm_metrics_gauge (metrics, name, help, labels), value);
}

static void
s_total (cm_metrics_t *metrics, const char *queue, const char *outcome, uint64_t value)
{
    const char *labels[] = {"queue", queue, "outcome", outcome, NULL};
    cm_metric_set (cm_metrics_counter (metrics, "llmrt_queue_tasks_total",
                                       "Tasks by how they left the queue.", labels),
                   (double) value);
}

static void
s_collect (cm_metrics_t *metrics, void *arg)
{
    s_binding_t *binding = arg;
    const char *name = cm_queue_name (binding->queue);
    cm_queue_stats_t stats;
    cm_queue_stats (binding->queue, &stats);
    s_gauge (metrics, "llmrt_queue_depth", "Tasks waiting for a slot.", name,
             (double) stats.pending);
    s_gauge (metrics, "llmrt_queue_active", "Tasks running now.", name,
             (double) stats.active);
    s_gauge (metrics, "llmrt_queue_concurrency", "Tasks that may run at once.", name,
             (double) stats.concurrency);
    s_gauge (metrics, "llmrt_queue_max_pending", "Tasks that may wait.", name,
             (double) stats.max_pending);
    s_total (metrics, name, "completed", stats.completed);
    s_total (metrics, name, "failed", stats.failed);
    s_total (metrics, name, "aborted", stats.aborted);
    s_total (metrics, name, "rejected", stats.rejected);
    s_total (metrics, name, "timed_out", stats.timed_out);
    s_total (metrics, name, "cancelled", stats.cancelled);
}

//  The queue is going: the registry must not read it any more.
static void
s_binding_free (void *arg)
{
    s_binding_t *binding = arg;
    cm_metrics_collector_remove (binding->metrics, s_collect, binding);
    free (binding);
}

void
cm_queue_attach_metrics (cm_queue_t *self, cm_metrics_t *metrics)
{
    assert (self && metrics);
    //  The queue owns the binding and frees it when destroyed.
    s_binding_t *binding = cm_calloc (1, sizeof *binding);
    binding->queue = self;
    binding->metrics = metrics;
    const char *labels[] = {"queue", cm_queue_name (self), NULL};
    binding->wait = cm_metrics_histogram (
        metrics, "llmrt_queue_wait_seconds", "Time from submit to start.", labels,
        cm_metrics_latency_buckets, cm_metrics_latency_bucket_count);
    binding->run = cm_metrics_histogram (
        metrics, "llmrt_queue_run_seconds", "Time from start to end.", labels,
        cm_metrics_latency_buckets, cm_metrics_latency_bucket_count);
    cm_metrics_collector (metrics, s_collect, binding);
    cm_queue_set_timing (self, s_timing, binding, s_binding_free);
}
