/*  cm_metrics.h: a registry of counters, gauges and histograms, and its
    exposition (JSON snapshot, Prometheus text) and merging.

    Series are named as Prometheus wants (snake_case, unit suffix:
    `_seconds`, `_bytes`, `_total` for counters) and carry labels fixed by
    code at registration, never taken from user input, so the set of series
    is bounded. Registering the same name and labels again returns the same
    series.

    Each daemon instance owns one registry, snapshots it about once a second
    and reports the snapshot to the supervisor, which merges the snapshots of
    all instances: counters and gauges summed per service, histograms merged
    bucket by bucket, plus the per-instance breakdown.

    Threading: every function may be called from any thread. Updates of a
    series are lock-free atomics; registration and snapshots take the
    registry's mutex. Collectors run inside cm_metrics_snapshot, on the
    calling thread. */
#ifndef CM_METRICS_H_INCLUDED
#define CM_METRICS_H_INCLUDED

#include "cm_common.h"
#include <jansson.h>

typedef struct cm_metrics_s cm_metrics_t;
typedef struct cm_metric_s cm_metric_t;

typedef enum {
    CM_METRIC_COUNTER = 0,
    CM_METRIC_GAUGE,
    CM_METRIC_HISTOGRAM,
} cm_metric_kind_t;

//  Latency buckets in seconds (upper bounds) that most series use: 0.5 ms
//  to 60 s.
extern const double cm_metrics_latency_buckets[];
extern const size_t cm_metrics_latency_bucket_count;

//  Create an empty registry. Caller owns it.
cm_metrics_t *cm_metrics_new (void);
//  Destroy; NULL-safe; nulls the pointer. Series handed out die with it.
void cm_metrics_destroy (cm_metrics_t **self_p);

//  Get or create a series. labels: NULL, or a NULL-terminated array of
//  name, value, name, value... (copied). help is kept from the first call
//  for this name. The returned series is borrowed from the registry.
cm_metric_t *cm_metrics_counter (cm_metrics_t *self, const char *name, const char *help,
                                 const char *const *labels);
cm_metric_t *cm_metrics_gauge (cm_metrics_t *self, const char *name, const char *help,
                               const char *const *labels);
//  bounds: ascending upper bounds (copied); +Inf is implied.
cm_metric_t *cm_metrics_histogram (cm_metrics_t *self, const char *name, const char *help,
                                   const char *const *labels, const double *bounds,
                                   size_t count);

//  Counter or gauge: add value (a counter only grows: value >= 0).
void cm_metric_add (cm_metric_t *self, double value);
//  Gauge: set. Counter: set the running total (for collectors that mirror
//  a total kept elsewhere; it must never decrease).
void cm_metric_set (cm_metric_t *self, double value);
//  Histogram: count one observation.
void cm_metric_observe (cm_metric_t *self, double value);
//  Current value of a counter or gauge (histograms: the sum).
double cm_metric_value (cm_metric_t *self);

//  A collector refreshes series from state kept elsewhere (a queue's
//  stats, a breaker's state) just before each snapshot.
typedef void (cm_metrics_collect_fn) (cm_metrics_t *metrics, void *arg);
void cm_metrics_collector (cm_metrics_t *self, cm_metrics_collect_fn *fn, void *arg);
//  Remove a collector added with the same fn and arg (before what it reads
//  is freed while the registry lives on). Returns true when one was found.
bool cm_metrics_collector_remove (cm_metrics_t *self, cm_metrics_collect_fn *fn,
                                  void *arg);

//  Snapshot (new reference), after running the collectors:
//    {"families": [{"name", "help", "type": "counter"|"gauge"|"histogram",
//                   "series": [{"labels": {..}, "value": n} |
//                              {"labels": {..}, "bounds": [..],
//                               "buckets": [cumulative counts.., +Inf count],
//                               "sum": s, "count": c}]}]}
//  Labels are sorted by name. A value that is NaN or infinite is null (JSON
//  has no such numbers) and reads back as NaN. Registering a name again
//  with another type, a histogram again with other bounds, an invalid name
//  or label name, or a label "le" on a histogram is API misuse (asserted).
json_t *cm_metrics_snapshot (cm_metrics_t *self);

//  Merge snapshot into aggregate (both in the snapshot format; aggregate
//  may start as an empty object): counters and gauges with the same name
//  and labels are summed, histograms with the same bounds are summed bucket
//  by bucket (different bounds: the series is left out and counted under
//  "merge_conflicts").
void cm_metrics_merge (json_t *aggregate, const json_t *snapshot);

//  Quantile q (0..1) of a histogram series of a snapshot, by linear
//  interpolation inside the bucket, as Prometheus's histogram_quantile
//  does; NaN when it has no observations.
double cm_metrics_quantile (const json_t *series, double q);

//  A copy of snapshot (new reference) with labels (a NULL-terminated
//  name/value array) added to every series, replacing a label of the same
//  name. Merging such copies into one snapshot keeps the series of
//  different sources apart: the per-instance breakdown.
json_t *cm_metrics_relabel (const json_t *snapshot, const char *const *labels);

//  The series of family name in snapshot whose labels are exactly labels
//  (NULL: none), borrowed; NULL when there is none.
const json_t *cm_metrics_series (const json_t *snapshot, const char *name,
                                 const char *const *labels);

//  Sum over the series of family name whose labels include labels (NULL:
//  every series) of their value (histograms: their observation count); 0
//  when there is none.
double cm_metrics_sum (const json_t *snapshot, const char *name,
                       const char *const *labels);

//  Prometheus text exposition (format 0.0.4) of a snapshot: HELP and TYPE
//  once per family, then every series. extra_labels (NULL or a
//  NULL-terminated name/value array) are added to every series. Families
//  or series that are malformed or carry invalid names are left out (the
//  snapshot may come from another process). Caller frees the result.
char *cm_metrics_prometheus (const json_t *snapshot, const char *const *extra_labels);

#endif
