/*  gw_harness.h: what the gateway tests share: the gateway started in this
    process, an HTTP client call (libcurl) that can run on its own thread,
    fake daemons (czmq actors with a DEALER socket) behind the gateway,
    /api/health polls, and temporary directories. Every wait is a poll with
    a generous timeout (GWH_WAIT_MS); the helpers fail the test (Criterion)
    when something they need does not happen. */
#ifndef GW_HARNESS_H_INCLUDED
#define GW_HARNESS_H_INCLUDED

#include <curl/curl.h>
#include <czmq.h>
#include <jansson.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include "cm_log.h"
#include "cm_msg.h"
#include "gw_server.h"

#define GWH_KEY     "gw-test-admin-key-0123456789" //  the gateway's ADMIN_API_KEY
#define GWH_WAIT_MS 10000 //  upper bound for anything a test waits for
#define GWH_BEAT_MS 20    //  fake daemons beat faster: no expiry by accident

//  --- the test process ----------------------------------------------------------

//  Suite set-up: ignore SIGPIPE, log as name at this level, init libcurl.
void gwh_setup (const char *name, cm_log_level_t level);
//  Suite tear-down: the counterpart of gwh_setup.
void gwh_teardown (void);
//  Sleep this many milliseconds (for poll loops only).
void gwh_sleep_ms (int ms);
//  A TCP port free on 127.0.0.1 right now.
int gwh_free_port (void);

//  --- the gateway under test ---------------------------------------------------

typedef struct {
    gw_config_t config;  //  borrowed by the server
    char host[16];       //  config.host
    char backend[128];   //  config.backend_bind
    char key[64];        //  config.admin_key
    char run_dir[64];    //  config.run_dir: a temporary directory
    char redis[64];      //  config.redis_url: nothing listens there
    char storage[128];   //  config.storage_dir, when given
    char supervisor[96]; //  config.supervisor, when given
    char base[64];       //  "http://127.0.0.1:PORT"
    gw_server_t *server; //  the gateway
} gwh_gateway_t;

//  Start a gateway on an ephemeral HTTP port with the test's settings in
//  config (copied). The harness sets host (127.0.0.1), backend_bind (a
//  free TCP port, tried again if another process takes it first),
//  admin_key (GWH_KEY), run_dir (a new temporary directory) and redis_url
//  (where nothing listens); storage_dir and supervisor are copied when set.
//  Zero timeout_ms, max_body, threads, heartbeat_ms, liveness,
//  max_connections and health_interval take 30000, 1 MiB, 2, 100, 3, 64
//  and 1000. Fails the test when the gateway does not start.
void gwh_gateway_start (gwh_gateway_t *self, const gw_config_t *config);
//  Stop the gateway and remove its run_dir.
void gwh_gateway_stop (gwh_gateway_t *self);

//  --- HTTP client ------------------------------------------------------------------

//  A raw TCP connection to the gateway's HTTP port, for clients that
//  misbehave; rcvbuf > 0 sets its receive buffer first (a slow reader).
//  The caller closes it.
int gwh_connect (gwh_gateway_t *gateway, int rcvbuf);

typedef struct {
    //  The request, set before the call.
    const char *method;   //  "GET", "POST", ...
    char url[320];        //  base + path and query
    const char *key;      //  bearer key, NULL: none
    const char *body;     //  request body, NULL: none
    bool chunked;         //  send the body with Transfer-Encoding: chunked
    const char *extra[4]; //  more request headers, NULL-terminated
    bool hang_up;         //  close the connection once some body arrived
    long timeout_ms;      //  give up (and close) after this long; 0: 3 x GWH_WAIT_MS
    CURL *curl;           //  a handle to reuse (borrowed), NULL: its own
    //  The response, filled while the call runs.
    pthread_mutex_t lock; //  guards reply while the call runs
    char *reply;          //  body so far, NUL-terminated
    size_t reply_size;    //  its length
    char headers[4096];   //  raw headers of the last response
    long status;          //  HTTP status, 0 when the transfer failed early
    CURLcode code;        //  transfer result
    long connects;        //  new connections the call opened
    size_t sent;          //  chunked upload offset
    pthread_t thread;     //  when started on a thread
    atomic_bool done;     //  the call has returned
} gwh_call_t;

//  A call to gateway's base + path (not yet run); the caller destroys it.
//  method, key and body are borrowed until the call ends.
gwh_call_t *gwh_call_new (gwh_gateway_t *gateway, const char *method, const char *path,
                          const char *key, const char *body);
//  Free a call that is not running. NULL-safe; nulls the pointer.
void gwh_call_destroy (gwh_call_t **self_p);
//  Run the call on a thread (for calls that wait on a daemon).
void gwh_call_start (gwh_call_t *self);
//  Wait for a started call to end; fails the test after GWH_WAIT_MS.
void gwh_call_join (gwh_call_t *self);
//  Run a call here, to its end.
void gwh_call_run (gwh_call_t *self);
//  Has the body received so far got this text?
bool gwh_call_has (gwh_call_t *self, const char *text);
//  Poll until the body received so far has this text; false after
//  GWH_WAIT_MS.
bool gwh_call_wait_for (gwh_call_t *self, const char *text);
//  A response header's value (the first one), "" when absent. Static
//  buffer, valid until the next call.
const char *gwh_call_header (gwh_call_t *self, const char *name);
//  The body as JSON (new reference); fails the test when it is not JSON.
json_t *gwh_call_json (gwh_call_t *self);
//  Assert that the call ended with this status and a body that is exactly
//  {"error": message} (any message when NULL).
void gwh_assert_error (gwh_call_t *self, long status, const char *message);
//  One synchronous call on its own handle; returns it (caller destroys).
gwh_call_t *gwh_http (gwh_gateway_t *gateway, const char *method, const char *path,
                      const char *key, const char *body);
//  The same on a handle to reuse (borrowed), which keeps the connection.
gwh_call_t *gwh_http_on (gwh_gateway_t *gateway, CURL *curl, const char *method,
                         const char *path, const char *key, const char *body);
//  GET path, which must answer 200 with a JSON body; returns the body
//  (new reference).
json_t *gwh_get_json (gwh_gateway_t *gateway, const char *path);

//  --- JSON and health -------------------------------------------------------------

//  The value at a dotted path of object keys ("broker.dropped_frames") in
//  json (borrowed), or NULL.
json_t *gwh_json_at (json_t *json, const char *path);
//  The integer at a dotted path; fails the test when there is none.
json_int_t gwh_json_int (json_t *json, const char *path);
//  GET /api/health (needs no key), as JSON (new reference).
json_t *gwh_health (gwh_gateway_t *gateway);
//  A number in /api/health by dotted path; fails the test when absent.
json_int_t gwh_health_number (gwh_gateway_t *gateway, const char *path);
//  Poll /api/health until the number at path has this value.
void gwh_wait_health (gwh_gateway_t *gateway, const char *path, json_int_t value);
//  Poll /api/health until the service has at least one instance.
void gwh_wait_instance (gwh_gateway_t *gateway, const char *service);
//  How long ago the gateway heard from an instance, -1 when it does not
//  know it.
json_int_t gwh_health_silence (gwh_gateway_t *gateway, const char *id);

//  --- fake daemons ----------------------------------------------------------------

//  A fake daemon instance: a czmq actor that owns a DEALER socket named by
//  its instance id, says READY (when it announces), heartbeats by itself
//  every GWH_BEAT_MS (so the test thread never has to), and hands every
//  other frame from the gateway to the test, which answers as a real
//  daemon would. An answering daemon answers every REQUEST itself at once
//  with a FINAL 200 {"ok":true} instead.
typedef struct {
    zactor_t *actor;       //  owns the DEALER socket
    char endpoint[128];    //  the gateway's backend
    char service[16];      //  what it serves
    char id[32];           //  routing id == instance id
    uint32_t capacity;     //  slots it announces
    bool announce;         //  says READY when it starts
    bool answer;           //  answers every REQUEST itself
    atomic_bool muted;     //  sends nothing more by itself (as if hung)
    atomic_int heartbeats; //  HEARTBEATs received from the gateway
    atomic_int requests;   //  REQUESTs received from the gateway
} gwh_daemon_t;

//  A fake daemon connected to the gateway; when announce, it says READY
//  with this capacity. The caller destroys it.
gwh_daemon_t *gwh_daemon_start (gwh_gateway_t *gateway, const char *service,
                                const char *id, uint32_t capacity, bool announce);
//  The same, announcing.
gwh_daemon_t *gwh_daemon_new (gwh_gateway_t *gateway, const char *service, const char *id,
                              uint32_t capacity);
//  An announcing daemon of capacity 64 that answers every request itself
//  and counts them (requests).
gwh_daemon_t *gwh_daemon_new_answering (gwh_gateway_t *gateway, const char *service,
                                        const char *id);
//  Stop the actor and free. NULL-safe; nulls the pointer.
void gwh_daemon_destroy (gwh_daemon_t **self_p);
//  Stop heartbeating, as a hung daemon would.
void gwh_daemon_mute (gwh_daemon_t *self);
//  Heartbeat again after gwh_daemon_mute.
void gwh_daemon_unmute (gwh_daemon_t *self);
//  Send these bytes to the gateway as one frame.
void gwh_daemon_send_raw (gwh_daemon_t *self, const void *data, size_t size);
//  Send a message to the gateway (takes it).
void gwh_daemon_send (gwh_daemon_t *self, cm_msg_t **msg_p);
//  Answer a request with a PARTIAL or FINAL.
void gwh_daemon_reply (gwh_daemon_t *self, cm_msg_type_t type, const char *request_id,
                       uint16_t status, const char *content_type, const char *body);
//  The next frame from the gateway other than a HEARTBEAT (caller
//  destroys), or NULL after timeout_ms; fails the test on a frame the
//  codec refuses.
cm_msg_t *gwh_daemon_recv (gwh_daemon_t *self, int timeout_ms);
//  The next frame, which must be of this type (within GWH_WAIT_MS).
cm_msg_t *gwh_daemon_expect (gwh_daemon_t *self, cm_msg_type_t type);
//  The next REQUEST at any of these daemons (within GWH_WAIT_MS); *which
//  is its index.
cm_msg_t *gwh_daemons_expect_request (gwh_daemon_t **daemons, size_t count,
                                      size_t *which);

#endif
