/*  gw_broker.h: the gateway's ZeroMQ side.

    The broker thread owns a ROUTER socket bound to GATEWAY_BACKEND_BIND.
    Daemon instances connect, say READY (service, instance id, capacity),
    and heartbeat. Each submitted request goes to the live instance of its
    service with the most free capacity (capacity minus requests in flight
    there; ties rotate), and its replies are delivered to the exchange.
    While a service has no live instance, its requests wait for one to
    register (instance_wait_ms at most, never past their deadline; then
    503), and so does a retryable request whose instance died before it
    started when no other instance takes it. An instance that misses its heartbeats is
   expired and its requests are answered (502 before any reply, an abort event
   mid-stream); a request whose deadline passes is answered 504 and cancelled at the
   daemon. A frame that cannot be delivered or decoded is counted, never silent.

    Threading: gw_broker_submit/cancel/stats/snapshot may be called from
    any thread (they post to the broker's mailbox or read a snapshot). */
#ifndef GW_BROKER_H_INCLUDED
#define GW_BROKER_H_INCLUDED

#include "cm_common.h"
#include "cm_msg.h"
#include "gw_exchange.h"
#include <jansson.h>

typedef struct gw_broker_s gw_broker_t;

typedef struct {
    const char *bind;     //  ZeroMQ endpoint to bind
    int64_t heartbeat_ms; //  heartbeat interval
    int64_t liveness;     //  missed heartbeats before expiry
    int64_t
        instance_wait_ms; //  how long a request may wait for an instance (0: 503 at once)
} gw_broker_config_t;

//  Bind and start the broker thread. NULL (logged) when the bind fails.
gw_broker_t *gw_broker_new (const gw_broker_config_t *config);
//  Begin shutdown: every pending and every later request is answered 503
//  by the broker thread (so every suspended connection is resumed).
void gw_broker_close (gw_broker_t *self);
//  Stop the thread, answer whatever is still pending (503), free.
void gw_broker_destroy (gw_broker_t **self_p);

//  Route a REQUEST (takes ownership of *request_p and a reference to
//  exchange). deadline_mono is the monotonic ms after which it is 504.
//  retry: when the instance dies before any reply started, send the request
//  to another instance (once) instead of answering 502; only for routes
//  where running twice is harmless.
void gw_broker_submit (gw_broker_t *self, gw_exchange_t *exchange, cm_msg_t **request_p,
                       int64_t deadline_mono, bool retry);
//  The HTTP client of this request id is gone: CANCEL at the daemon.
void gw_broker_cancel (gw_broker_t *self, const char *request_id);

//  Live (registered, not draining) instances of a service.
size_t gw_broker_live (gw_broker_t *self, const char *service);
//  A JSON snapshot of instances and counters (new reference), refreshed by
//  the broker thread at every tick.
json_t *gw_broker_snapshot (gw_broker_t *self);

#endif
