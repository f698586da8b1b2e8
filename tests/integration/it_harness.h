/*  it_harness.h: what integration tests share: free ports, the real suite
    under the real supervisor (with a real redis-server) in a temporary
    RUN_DIR, an HTTP client (libcurl), and polls with timeouts instead of
    sleeps. */
#ifndef IT_HARNESS_H_INCLUDED
#define IT_HARNESS_H_INCLUDED

#include <curl/curl.h>
#include <jansson.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdatomic.h>
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

//  url = the suite's base + path.
void it_url (const it_suite_t *suite, char *url, size_t size, const char *path);
//  Create a workspace with this request body (admin key); fails the test
//  unless the answer is 200.
void it_create_workspace (const it_suite_t *suite, const char *body);
//  GET the suite's base + path with no key; *status is the HTTP status;
//  returns the body as JSON (new reference; fails the test when not JSON).
json_t *it_get_json (const it_suite_t *suite, const char *path, long *status);
//  A string member of a JSON object (borrowed), NULL when absent.
const char *it_str (json_t *object, const char *key);

//  The suite's database (RUN_DIR/storage/llmrt.db), read-only, with a
//  5 s busy timeout; fails the test when it cannot be opened.
sqlite3 *it_db_open (const it_suite_t *suite);
//  The first column of the first row sql gives, as an integer (0 when no
//  row), with text bound to ?1 unless NULL; fails the test on an error.
int64_t it_db_int (sqlite3 *db, const char *sql, const char *text);

//  An SSE client for the stream-chat routes: a POST with the admin key
//  whose body is collected as it arrives (run it here, or on a thread for
//  a stream the test watches while it runs).
typedef struct {
    char url[256];          //  stream-chat URL
    const char *body;       //  request body (borrowed)
    int close_after;        //  hang up once this many token events came (0: never)
    pthread_mutex_t lock;   //  guards data, size, tokens
    char *data;             //  everything received
    size_t size;            //  its length
    int tokens;             //  textResponseChunk events with text, so far
    long status;            //  HTTP status
    char headers[4096];     //  response headers
    CURLcode result;        //  transfer result
    atomic_llong closed_at; //  when our socket was closed (it_now_ms)
    atomic_bool done;       //  the transfer is over
} it_stream_t;

//  Prepare a stream to url with this request body (borrowed until it
//  ends); it hangs up after close_after token events (0: never).
void it_stream_init (it_stream_t *stream, const char *url, const char *body,
                     int close_after);
//  Free what the stream holds (not the struct).
void it_stream_free (it_stream_t *stream);
//  Run the stream to its end; a pthread start routine (arg: it_stream_t).
void *it_stream_run (void *arg);
//  it_wait conditions (arg: it_stream_t): some data came; the transfer is
//  over.
bool it_stream_started (void *arg);
bool it_stream_done (void *arg);
//  The events of a finished stream, each "data: <JSON>\n\n" (text may be
//  NULL: none), as a JSON array (new reference); fails the test on any
//  other form.
json_t *it_events (const char *text);

#endif
