/*  cm_reporter.h: sends a registry's snapshot to the supervisor, about once
    per interval, on a thread of its own.

    The reporter owns a DEALER socket connected to SUPERVISOR_ENDPOINT and
    sends one REPORT (cm_metrics_msg.h) per interval. It never waits for the
    supervisor: the socket queues only towards a live connection
    (ZMQ_IMMEDIATE) and at most a few reports (a small send high-water
    mark); a report that cannot be queued at once is dropped and counted,
    so a supervisor that is down or slow costs the daemon one snapshot per
    interval and nothing else. Its own counts are series of the registry:
    llmrt_metrics_reports_total{outcome="sent"|"dropped"}.

    Threading: new and destroy are called by the owner's thread; the
    counters may be read from any thread. The registry is borrowed and
    must outlive the reporter (its collectors run on the reporter's thread). */
#ifndef CM_REPORTER_H_INCLUDED
#define CM_REPORTER_H_INCLUDED

#include "cm_common.h"
#include "cm_metrics.h"

//  Where the supervisor listens by default (SUPERVISOR_ENDPOINT).
#define CM_REPORTER_ENDPOINT "tcp://127.0.0.1:5556"

typedef struct cm_reporter_s cm_reporter_t;

typedef struct {
    cm_metrics_t *metrics; //  the registry to report (borrowed)
    const char *endpoint;  //  the supervisor's metrics endpoint (copied)
    const char *service;   //  "chat", "gateway", ... (copied)
    const char *instance;  //  this instance's id (copied)
    int64_t interval_ms;   //  between reports (<= 0: 1000)
} cm_reporter_config_t;

//  Start reporting. Caller owns the reporter.
cm_reporter_t *cm_reporter_new (const cm_reporter_config_t *config);
//  Stop the thread and free. NULL-safe; nulls the pointer.
void cm_reporter_destroy (cm_reporter_t **self_p);
//  Reports handed to the socket so far.
uint64_t cm_reporter_sent (cm_reporter_t *self);
//  Reports dropped so far (no live connection, or the queue was full).
uint64_t cm_reporter_dropped (cm_reporter_t *self);

#endif
