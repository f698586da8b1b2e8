/*  gw_server.h: the gateway: libmicrohttpd on its own threads (epoll, a
    thread pool) in front of the broker.

    For each request it authenticates, looks the route up, reads and checks
    the body, then either answers itself (ping, health) or turns the request
    into a REQUEST message, suspends the connection and hands it to the
    broker; the response is queued when the broker resumes it. Responses
    are queued only after the first call of the access handler, so
    keep-alive survives (libmicrohttpd closes connections otherwise). */
#ifndef GW_SERVER_H_INCLUDED
#define GW_SERVER_H_INCLUDED

#include "cm_common.h"
#include "cm_config.h"

typedef struct {
    int64_t port;            //  SERVER_PORT
    char *host;              //  SERVER_HOST
    char *backend_bind;      //  GATEWAY_BACKEND_BIND
    int64_t timeout_ms;      //  REQUEST_TIMEOUT_MS
    int64_t max_body;        //  MAX_BODY_BYTES
    int64_t threads;         //  GATEWAY_HTTP_THREADS (0: one per CPU)
    int64_t heartbeat_ms;    //  HEARTBEAT_INTERVAL_MS
    int64_t liveness;        //  HEARTBEAT_LIVENESS
    char *admin_key;         //  ADMIN_API_KEY
    int64_t max_connections; //  GATEWAY_MAX_CONNECTIONS
} gw_config_t;

//  The gateway's settings table (for cm_config_load and --help).
const cm_conf_entry_t *gw_config_table (void);

typedef struct gw_server_s gw_server_t;

//  Start the broker and the HTTP server. NULL (logged) when a port or
//  endpoint cannot be bound. The config is borrowed for the server's life.
gw_server_t *gw_server_new (const gw_config_t *config);
//  Stop accepting, answer what is open, free. NULL-safe.
void gw_server_destroy (gw_server_t **self_p);
//  The HTTP port actually bound (useful with SERVER_PORT=0).
int gw_server_port (gw_server_t *self);

#endif
