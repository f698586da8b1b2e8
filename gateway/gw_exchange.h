/*  gw_exchange.h: one HTTP request in flight between an HTTP thread and the
    broker thread.

    The HTTP thread creates it, suspends the connection and hands it to the
    broker; the broker delivers the daemon's replies (PARTIAL, FINAL) or a
    gateway-made failure, and resumes the connection; the HTTP thread then
    queues a response (whole, or a streamed one whose reader drains what
    the broker delivered, suspending while there is nothing new).

    Threading: every method may be called from any thread; a mutex guards
    the state. Reference counted: the HTTP side and the broker each hold a
    reference and drop it with gw_exchange_unref. */
#ifndef GW_EXCHANGE_H_INCLUDED
#define GW_EXCHANGE_H_INCLUDED

#include "cm_common.h"
#include "cm_msg.h"
#include <microhttpd.h>

typedef struct gw_exchange_s gw_exchange_t;

//  New exchange for a suspended connection; one reference, the caller's.
//  buffer_limit: most bytes of a stream held for a client that reads slower
//  than they come (GATEWAY_STREAM_BUFFER_BYTES); 0: no limit.
gw_exchange_t *gw_exchange_new (const char *request_id, struct MHD_Connection *connection,
                                size_t buffer_limit);
//  Take another reference.
gw_exchange_t *gw_exchange_ref (gw_exchange_t *self);
//  Drop a reference; frees on the last. Nulls the pointer; NULL-safe.
void gw_exchange_unref (gw_exchange_t **self_p);

const char *gw_exchange_request_id (gw_exchange_t *self);

typedef enum {
    GW_DELIVERED = 0,         //  passed on; more to come
    GW_DELIVERED_LAST = 1,    //  passed on; it was the last part
    GW_DELIVERY_TOO_SLOW = 2, //  not passed on: the client has not read
                              //  buffer_limit bytes; its stream was ended
                              //  (gw_exchange_fail), the daemon should stop
} gw_delivery_t;

//  Broker: deliver a PARTIAL or FINAL from the daemon (the message is
//  borrowed).
gw_delivery_t gw_exchange_deliver (gw_exchange_t *self, cm_msg_t *reply);
//  Broker: end the exchange from the gateway's side. Before any reply this
//  answers `status` with {"error": message}; mid-stream it ends the stream
//  with its route's failure: on the chat routes API.md's abort event (with
//  the stream's uuid) and then its finalizeResponseStream event, on the
//  OpenAI route OpenAI's error event.
void gw_exchange_fail (gw_exchange_t *self, int status, const char *message);
//  True once a reply started (a daemon PARTIAL or FINAL arrived).
bool gw_exchange_started (gw_exchange_t *self);

//  HTTP thread, before handing the exchange to the broker: a header for the
//  response, whatever it turns out to be (a daemon's reply or a gateway-made
//  failure), for example the rate-limit headers. Strings are copied.
void gw_exchange_header_add (gw_exchange_t *self, const char *name, const char *value);

//  Broker: the client socket's fd while the connection is suspended (MHD
//  does not watch suspended sockets, so the broker polls them for a peer
//  that hung up), or -1.
int gw_exchange_suspended_fd (gw_exchange_t *self);

//  HTTP thread: the handler was called again after a resume. Queues the
//  response if one is ready and returns MHD_YES, or suspends again.
enum MHD_Result gw_exchange_respond (gw_exchange_t *self);
//  HTTP thread: the request is finished (completed or the client left).
//  After this the broker never touches the connection. Returns true when
//  the exchange had not ended (so the daemon should be told to CANCEL).
bool gw_exchange_close (gw_exchange_t *self);

#endif
