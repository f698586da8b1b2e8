/*  gw_metrics.h: the gateway's metrics and its two metrics routes.

    The gateway's own series live in its registry (the server's
    cm_metrics_t): requests by route class and status class, latency per
    route class (from the moment the request is complete to the moment its
    response is finished, measured in MHD's completion callback), requests
    in flight (the live concurrency), and, refreshed by collectors at each
    snapshot, the broker's counters and live instances and the rate
    limits' counters. A cm_reporter sends the registry to the supervisor
    every METRICS_REPORT_INTERVAL_MS as service "gateway", like a daemon.

    GET /api/metrics and GET /api/metrics/prometheus need the aggregate of
    every instance, which the supervisor holds. Asking for it must not hold
    an HTTP thread (each serves many connections), so the route suspends
    its connection and hands it to the metrics thread, which owns a DEALER
    socket to SUPERVISOR_ENDPOINT: it sends one QUERY, waits for the
    AGGREGATE for at most METRICS_QUERY_TIMEOUT_MS (requests that arrive
    meanwhile share the answer), builds the body and resumes the
    connection. When the supervisor is unreachable (no live connection:
    the QUERY cannot even be queued) or slow, the routes still answer 200
    with the gateway's own metrics and say the aggregate is missing (JSON:
    "aggregate": null, "aggregate_error"; Prometheus:
    llmrt_metrics_aggregate_up 0). In the aggregate the gateway's own
    report is replaced by its live snapshot, so its series are never a
    report interval old. See docs/metrics.md for every series.

    Threading: gw_metrics_begin, _end, _count and _request are called from
    HTTP threads; the rest by the thread that created the object. */
#ifndef GW_METRICS_H_INCLUDED
#define GW_METRICS_H_INCLUDED

#include "cm_common.h"
#include "cm_metrics.h"
#include "gw_broker.h"
#include "gw_exchange.h"
#include "gw_limits.h"
#include "gw_routes.h"
#include <jansson.h>

typedef struct gw_metrics_s gw_metrics_t;

//  Route classes, the route_class label.
typedef enum {
    GW_METRICS_CHAT = 0,  //  "chat": routes of the chat service
    GW_METRICS_INGESTION, //  "ingestion": routes of the ingest service
    GW_METRICS_AGENT,     //  "agent": routes of the agent service
    GW_METRICS_OPS,       //  "ops": answered by the gateway (health, metrics...)
    GW_METRICS_UNMATCHED, //  "unmatched": no route (404, 405)
    GW_METRICS_CLASSES,
} gw_metrics_class_t;

typedef struct {
    gw_broker_t *broker;      //  its snapshot feeds the broker series (borrowed)
    gw_limits_t *limits;      //  rate limits to publish (borrowed; NULL: none)
    const char *supervisor;   //  SUPERVISOR_ENDPOINT (NULL or "": no reports,
                              //  and the routes say the aggregate is missing)
    int64_t report_ms;        //  METRICS_REPORT_INTERVAL_MS (<= 0: 1000)
    int64_t query_timeout_ms; //  METRICS_QUERY_TIMEOUT_MS (<= 0: 250)
    const char *instance;     //  this gateway's id (NULL: gateway-host-pid)
} gw_metrics_config_t;

//  Register the gateway's series in registry (borrowed; it must outlive
//  this object), start reporting and the metrics thread. Caller owns it.
gw_metrics_t *gw_metrics_new (cm_metrics_t *registry, const gw_metrics_config_t *config);
//  Answer what still waits (503), stop the threads, free. NULL-safe; nulls
//  the pointer. Call before the broker and the limits are destroyed.
void gw_metrics_destroy (gw_metrics_t **self_p);

//  The circuit breakers of every daemon instance, from the last aggregate
//  (the metrics thread asks the supervisor once a report interval): a new
//  reference, or NULL before the first answer. *age_ms (may be NULL) gets
//  how old it is.
json_t *gw_metrics_breakers (gw_metrics_t *self, int64_t *age_ms);
//  From the same aggregate: instances the supervisors gave up restarting,
//  by program ({"chatd": 1}); a new reference, or NULL before the first.
json_t *gw_metrics_given_up (gw_metrics_t *self);

//  This gateway's instance id (borrowed).
const char *gw_metrics_instance (gw_metrics_t *self);
//  The class of a route (NULL: unmatched); its label with gw_metrics_class_name.
gw_metrics_class_t gw_metrics_class (const gw_route_t *route);
const char *gw_metrics_class_name (gw_metrics_class_t route_class);

//  A request of this class is complete and being answered: in flight.
void gw_metrics_begin (gw_metrics_t *self, gw_metrics_class_t route_class);
//  Its response is finished (or the client left): no longer in flight;
//  counted under its status (0: none was queued) with its latency.
void gw_metrics_end (gw_metrics_t *self, gw_metrics_class_t route_class, unsigned status,
                     double seconds);
//  A request that ended before it was complete (refused on its headers,
//  413): counted, with no latency and never in flight.
void gw_metrics_count (gw_metrics_t *self, gw_metrics_class_t route_class,
                       unsigned status);

//  HTTP thread, for GET /api/metrics (prometheus false) or
//  /api/metrics/prometheus: suspend connection and hand the request to the
//  metrics thread, which answers it. Returns the exchange (the caller's
//  reference), for gw_exchange_respond and gw_exchange_close as with a
//  forwarded request.
gw_exchange_t *gw_metrics_request (gw_metrics_t *self, struct MHD_Connection *connection,
                                   const char *request_id, bool prometheus);
//  Shutdown has begun: answer every waiting and every later metrics
//  request 503 at once.
void gw_metrics_close (gw_metrics_t *self);

//  The bodies of the two routes, from an aggregate (NULL when missing,
//  with the reason in error). New reference / caller frees. For the
//  metrics thread, and tests.
json_t *gw_metrics_json (gw_metrics_t *self, const json_t *aggregate, const char *error);
char *gw_metrics_prometheus (gw_metrics_t *self, const json_t *aggregate);

#endif
