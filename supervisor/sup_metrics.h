/*  sup_metrics.h: the supervisor's metrics hub.

    Binds SUPERVISOR_ENDPOINT (a ROUTER socket polled by the supervisor's
    loop through sup_supervisor_reader). Every daemon instance and the
    gateway REPORT their registry's snapshot there about once a second
    (cm_reporter); the hub keeps the last snapshot of each instance (by
    service and instance id) with the time it came, and forgets an instance
    that has not reported for METRICS_INSTANCE_TTL_MS. A QUERY (from the
    gateway, behind /api/metrics) is answered at once with the AGGREGATE
    (cm_metrics_msg.h):

        {"generated_at_ms": wall ms, "ttl_ms": n,
         "services": {"<service>": {"instances": n, "snapshot": merged}},
         "instances": [{"service", "instance", "age_ms", "sent_at_ms", "seq",
                        "snapshot"}],
         "supervisor": the hub's own snapshot}

    "merged" is cm_metrics_merge over the service's live instances:
    counters and gauges summed, histograms summed bucket by bucket.
    Instances are listed by service, then instance id.

    The hub's own registry holds, once attached to a supervisor,
    llmrt_supervisor_restarts_total{program}, llmrt_supervisor_children_up
    {program}, llmrt_supervisor_children_configured{program} and
    llmrt_supervisor_children_given_up{program}, and always its own counts:
    llmrt_supervisor_reports_total{outcome="accepted"|"rejected"},
    llmrt_supervisor_queries_total, llmrt_supervisor_instances_expired_total,
    llmrt_supervisor_instances_reporting.

    The reporting role (SUPERVISOR_METRICS_ROLE=report, one supervisor per
    container): sup_metrics_new_reporter binds nothing; once attached, the
    four program series above are refreshed on the supervisor's loop every
    interval (a timerfd reader) and a cm_reporter sends the registry to the
    hub at the endpoint as service "supervisor", like any instance. The hub
    sums them over every reporting supervisor (and its own), so restarts in
    any container show in the aggregate.

    Threading: one thread (the supervisor's loop); a reporter adds its own
    thread, which only snapshots the registry. Time: the methods that
    depend on it take now_ms (monotonic), so tests need no sleeps. */
#ifndef SUP_METRICS_H_INCLUDED
#define SUP_METRICS_H_INCLUDED

#include "cm_common.h"
#include "cm_metrics.h"
#include "sup_supervisor.h"
#include <jansson.h>

typedef struct sup_metrics_s sup_metrics_t;

//  Instances the hub keeps at most; reports from more are refused (counted).
#define SUP_METRICS_INSTANCES_MAX 4096

//  Bind endpoint (a tcp port of 0 or "*" picks a free one). ttl_ms: an
//  instance silent this long leaves the aggregate. NULL (logged) when the
//  endpoint cannot be bound. Caller owns the hub.
sup_metrics_t *sup_metrics_new (const char *endpoint, int64_t ttl_ms);
//  The reporting role: report this supervisor's series to the hub at
//  endpoint (connected, not bound) as service "supervisor" and instance,
//  every interval_ms. Create it after sup_supervisor_new, so that the
//  reporter's thread inherits the blocked signals. Caller owns it.
sup_metrics_t *sup_metrics_new_reporter (const char *endpoint, const char *instance,
                                         int64_t interval_ms);
//  Destroy; NULL-safe; nulls the pointer.
void sup_metrics_destroy (sup_metrics_t **self_p);

//  The endpoint as bound, with the port chosen (reporting role: the hub's
//  endpoint as given) (borrowed).
const char *sup_metrics_endpoint (sup_metrics_t *self);
//  The bound libzmq socket, for a loop to poll (borrowed; attach does it);
//  NULL in the reporting role.
void *sup_metrics_socket (sup_metrics_t *self);
//  The hub's own registry (borrowed).
cm_metrics_t *sup_metrics_registry (sup_metrics_t *self);

//  Join supervisor's loop (its reader hook) and publish its programs'
//  restarts and children among the hub's series (reporting role: refreshed
//  by a timer on the loop). The supervisor must outlive the hub's
//  snapshots. Returns 0, or -1 when the loop has no room for another
//  reader (or, reporting, no timer could be made).
int sup_metrics_attach (sup_metrics_t *self, sup_supervisor_t *supervisor);

//  Handle the frames waiting on the socket (at most a burst, so the loop
//  stays responsive; it calls again while more wait): store reports,
//  answer queries. Malformed frames are counted and logged, never fatal.
void sup_metrics_handle (sup_metrics_t *self, int64_t now_ms);

//  Keep snapshot (the reference is taken) as the last report of this
//  instance of service at now_ms. Returns false (and drops it) when the
//  hub is full of other instances.
bool sup_metrics_report (sup_metrics_t *self, const char *service, const char *instance,
                         json_t *snapshot, int64_t sent_at_ms, uint64_t seq,
                         int64_t now_ms);
//  Forget instances that have not reported since now_ms - ttl_ms. Returns
//  how many were forgotten.
size_t sup_metrics_expire (sup_metrics_t *self, int64_t now_ms);
//  The aggregate at now_ms (expires first). New reference.
json_t *sup_metrics_aggregate (sup_metrics_t *self, int64_t now_ms);
//  Instances known now.
size_t sup_metrics_instances (sup_metrics_t *self);

#endif
