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
#include "cm_metrics.h"
#include "gw_limits.h"

typedef struct {
    int64_t port;              //  SERVER_PORT
    char *host;                //  SERVER_HOST
    char *backend_bind;        //  GATEWAY_BACKEND_BIND
    int64_t timeout_ms;        //  REQUEST_TIMEOUT_MS
    int64_t max_body;          //  MAX_BODY_BYTES
    int64_t threads;           //  GATEWAY_HTTP_THREADS (0: one per CPU)
    int64_t heartbeat_ms;      //  HEARTBEAT_INTERVAL_MS
    int64_t liveness;          //  HEARTBEAT_LIVENESS
    int64_t instance_wait_ms;  //  GATEWAY_INSTANCE_WAIT_MS
    char *admin_key;           //  ADMIN_API_KEY
    int64_t max_connections;   //  GATEWAY_MAX_CONNECTIONS
    int64_t connection_memory; //  GATEWAY_CONNECTION_MEMORY_BYTES
    int64_t stream_buffer;     //  GATEWAY_STREAM_BUFFER_BYTES (0: its default)
    int64_t idle_timeout_s;    //  GATEWAY_IDLE_TIMEOUT_SECONDS (0: its default)
    //  RATE_LIMIT_* (see gw_limits.h)
    gw_limits_config_t limits;
    char *run_dir;              //  RUN_DIR
    char *storage_dir;          //  STORAGE_DIR (NULL: $RUN_DIR/storage)
    char *redis_url;            //  REDIS_URL
    int64_t health_interval;    //  HEALTH_CHECK_INTERVAL_MS
    char *supervisor;           //  SUPERVISOR_ENDPOINT (NULL: no metrics hub)
    int64_t report_ms;          //  METRICS_REPORT_INTERVAL_MS
    int64_t metrics_timeout_ms; //  METRICS_QUERY_TIMEOUT_MS
    int64_t key_cache_ttl_ms;   //  API_KEY_CACHE_TTL_MS (gw_keys.h)
    char *log_level;            //  LOG_LEVEL
} gw_config_t;

//  The gateway's settings table (for cm_config_load and --help).
const cm_conf_entry_t *gw_config_table (void);

//  After cm_config_load: the checks one value's type cannot make, each a
//  bad setting (the gateway exits 2): SERVER_HOST an IPv4 address, the
//  rate limits' rates with their bursts (gw_limits_config_check), REDIS_URL
//  (cm_redis_url_check), STORAGE_DIR or RUN_DIR not a file
//  (cm_config_check_storage), LOG_LEVEL (applied). Returns 0, or -1 with a
//  message naming the variable in err.
int gw_config_check (const gw_config_t *config, char *err, size_t errlen);

typedef struct gw_server_s gw_server_t;

//  Start the broker and the HTTP server. NULL (logged) when a port or
//  endpoint cannot be bound (or a setting is bad: check them first with
//  gw_config_check). The config is borrowed for the server's life.
gw_server_t *gw_server_new (const gw_config_t *config);
//  Stop accepting, answer what is open, free. NULL-safe.
void gw_server_destroy (gw_server_t **self_p);
//  The HTTP port actually bound (useful with SERVER_PORT=0).
int gw_server_port (gw_server_t *self);
//  The rate limits (borrowed), for their counters: gw_limits_stats.
gw_limits_t *gw_server_limits (gw_server_t *self);
//  The gateway's metrics registry (borrowed): its own series (gw_metrics.h),
//  reported to the supervisor as service "gateway". Modules of the gateway
//  may register theirs in it.
cm_metrics_t *gw_server_metrics (gw_server_t *self);

#endif
