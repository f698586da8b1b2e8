/*  cm_breaker_metrics.c: publishes a cm_breaker in a cm_metrics registry
    (see cm_breaker_collect in cm_breaker.h). Series are looked up by name
    and labels at each collection: the registry returns the same series for
    the same name and labels, and the breaker keeps no pointer into a
    registry. */
#include "cm_breaker.h"
#include "cm_metrics.h"

//  The four transitions the state machine can make.
static const cm_breaker_state_t s_transitions[][2] = {
    {CM_BREAKER_CLOSED, CM_BREAKER_OPEN},
    {CM_BREAKER_OPEN, CM_BREAKER_HALF_OPEN},
    {CM_BREAKER_HALF_OPEN, CM_BREAKER_CLOSED},
    {CM_BREAKER_HALF_OPEN, CM_BREAKER_OPEN},
};

static void
s_calls (cm_metrics_t *metrics, const char *circuit, const char *outcome, uint64_t value)
{
    const char *labels[] = {"circuit", circuit, "outcome", outcome, NULL};
    cm_metric_set (
        cm_metrics_counter (metrics, "llmrt_circuit_calls_total",
                            "Calls through the circuit breaker by outcome (rejected: "
                            "refused while open or half-open; released: ended neither "
                            "way, e.g. cancelled).",
                            labels),
        (double) value);
}

void
cm_breaker_collect (cm_metrics_t *metrics, void *breaker)
{
    assert (metrics && breaker);
    cm_breaker_t *self = (cm_breaker_t *) breaker;
    const char *circuit = cm_breaker_name (self);
    cm_breaker_stats_t stats;
    cm_breaker_stats (self, &stats);

    const char *labels[] = {"circuit", circuit, NULL};
    cm_metric_set (cm_metrics_gauge (metrics, "llmrt_circuit_state",
                                     "Circuit breaker state: 0 closed, 1 open, 2 "
                                     "half-open.",
                                     labels),
                   (double) stats.state);
    for (size_t i = 0; i < sizeof s_transitions / sizeof s_transitions[0]; i++) {
        cm_breaker_state_t from = s_transitions[i][0], to = s_transitions[i][1];
        const char *transition[] = {"circuit", circuit,
                                    "from",    cm_breaker_state_name (from),
                                    "to",      cm_breaker_state_name (to),
                                    NULL};
        cm_metric_set (cm_metrics_counter (metrics, "llmrt_circuit_transitions_total",
                                           "Circuit breaker state transitions.",
                                           transition),
                       (double) stats.transitions[from][to]);
    }
    s_calls (metrics, circuit, "rejected", stats.rejected);
    s_calls (metrics, circuit, "succeeded", stats.succeeded);
    s_calls (metrics, circuit, "failed", stats.failed);
    s_calls (metrics, circuit, "released", stats.released);
}

void
cm_breaker_attach_metrics (cm_breaker_t *self, cm_metrics_t *metrics)
{
    assert (self && metrics);
    //  Register now, so every series exists (at zero) before the first
    //  snapshot runs the collector.
    cm_breaker_collect (metrics, self);
    cm_metrics_collector (metrics, cm_breaker_collect, self);
}
