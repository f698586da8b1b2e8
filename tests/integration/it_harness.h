/*  it_harness.h: what integration tests share: free ports, the real suite
    under the real supervisor (with a real redis-server) in a temporary
    RUN_DIR, an HTTP client (libcurl), and polls with timeouts instead of
    sleeps. */
#ifndef IT_HARNESS_H_INCLUDED
#define IT_HARNESS_H_INCLUDED

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

#define IT_ADMIN_KEY "it-admin-key-0123456789"

typedef struct {
    pid_t supervisor;  //  the supervisor process
    int http_port;     //  gateway HTTP port
    int backend_port;  //  gateway ZeroMQ port
    int redis_port;    //  redis-server port
    char run_dir[256]; //  temporary RUN_DIR
    char base[64];     //  "http://127.0.0.1:PORT"
} it_suite_t;

//  A TCP port free on 127.0.0.1 right now.
int it_free_port (void);

//  Start the local suite (deploy/local/suite.conf) under the supervisor with
//  fast heartbeats; extra is a NULL-terminated list of "NAME=VALUE" added to
//  its environment. Waits until /api/health/ready answers 200.
void it_suite_start (it_suite_t *suite, const char *const *extra);
//  The same, but wait only until the gateway answers /api/health/live (for
//  suites that are meant not to become ready).
void it_suite_start_live (it_suite_t *suite, const char *const *extra);
//  SIGTERM the supervisor, wait for it; kill leftovers; remove RUN_DIR.
void it_suite_stop (it_suite_t *suite);

//  Pids of the supervisor's children whose command line contains name.
size_t it_children (pid_t parent, const char *name, pid_t *pids, size_t max);
//  Is this pid still alive (and not a zombie)?
bool it_alive (pid_t pid);

typedef struct {
    long status;        //  HTTP status, 0 on a transport error
    char *body;         //  response body (malloc'd, NUL-terminated)
    size_t size;        //  its length
    char headers[4096]; //  raw response headers
} it_response_t;

//  One HTTP request with the admin key (auth=true) or none. body may be NULL.
void it_http (const char *method, const char *url, const char *body, bool auth,
              it_response_t *response);
//  The same with this bearer key (NULL: none).
void it_http_key (const char *method, const char *url, const char *body, const char *key,
                  it_response_t *response);
void it_response_free (it_response_t *response);
//  The body as JSON (new reference; fails the test when it is not JSON).
json_t *it_json (it_response_t *response);

//  Poll fn(arg) every 20 ms until it returns true or timeout_ms passes.
bool it_wait (bool (*fn) (void *arg), void *arg, int timeout_ms);
//  Milliseconds on a monotonic clock.
long long it_now_ms (void);

#endif
