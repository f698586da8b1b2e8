/*  cm_http.h: the libcurl pieces our HTTP clients share.

    chatd's openai provider and the openai embedder talk to an
    OpenAI-compatible server; agentd's flows call user-written URLs. All of
    them check a base URL the same way, join it with an endpoint path, send
    a bearer key, share DNS and TLS sessions between threads, and drive one
    easy handle on a curl_multi of its own so the calling thread looks at
    cancellation (and its clocks) every few milliseconds while libcurl
    waits: curl_easy_perform would only give the progress callback, which
    libcurl calls about once a second while the upstream is silent, too
    late for a caller that left. Each user keeps its own messages: the
    helpers that speak take the words that differ (variable names, who
    failed).

    Threading: cm_http_share_t is made for transfers on several threads at
    once; everything else is a plain function. */
#ifndef CM_HTTP_H_INCLUDED
#define CM_HTTP_H_INCLUDED

#include "cm_common.h"
#include <curl/curl.h>

typedef struct cm_http_share_s cm_http_share_t;

//  Check a base URL of an OpenAI-compatible server (e.g.
//  http://127.0.0.1:11434/v1): set, http or https, "//" and a host (not
//  "http:///v1", which libcurl would read as the host "v1"), a port 1..65535
//  when one is given, no query or fragment. On failure -1 with err naming the variable
//  name (e.g. "LLM_BASE_URL: ... has no host"); required_by says when it is required in
//  the "required" message (e.g. "LLM_PROVIDER=openai").
int cm_http_check_base_url (const char *url, const char *name, const char *required_by,
                            char *err, size_t errlen);

//  base_url without its trailing slashes, then path ("/chat/completions").
//  Returns a string the caller frees.
char *cm_http_endpoint (const char *base_url, const char *path);

//  "Authorization: Bearer <api_key>", or NULL when api_key is NULL or
//  empty. Returns a string the caller frees.
char *cm_http_bearer (const char *api_key);

//  The headers of a JSON POST: Content-Type: application/json, then
//  Accept: accept (when not NULL), an empty Expect: (no 100-continue round
//  trip), and auth (a whole header line, when not NULL). Free the list
//  with curl_slist_free_all.
struct curl_slist *cm_http_json_headers (const char *accept, const char *auth);

//  What one JSON POST to an OpenAI-compatible server needs.
typedef struct {
    const char *url;             //  the endpoint
    struct curl_slist *headers;  //  the request headers (borrowed)
    const char *body;            //  the body, NUL-terminated (borrowed)
    const char *user_agent;      //  the User-Agent
    curl_write_callback on_data; //  where the response body goes
    void *arg;                   //  its argument
    char *curl_err;              //  CURL_ERROR_SIZE bytes for libcurl's message
    int64_t connect_timeout_ms;  //  TCP/TLS set-up limit
    cm_http_share_t *share;      //  DNS cache and TLS sessions, or NULL
} cm_http_post_t;

//  An easy handle for that POST (http and https only, no signals, no
//  Nagle). The pointers in post must outlive the handle. Free it with
//  curl_easy_cleanup.
CURL *cm_http_post_new (const cm_http_post_t *post);

//  Polled while a transfer waits: 0 to go on, a positive value to stop it.
typedef int (cm_http_poll_fn) (void *arg);

//  How cm_http_perform ended.
typedef struct {
    CURLcode code;   //  the transfer's result, when it ended by itself
    CURLMcode multi; //  curl_multi_perform's failure, or CURLM_OK
    int stop;        //  poll's value, when poll stopped the transfer, else 0
} cm_http_outcome_t;

//  Run curl to its end on a multi handle of its own, calling poll_fn (may be
//  NULL) after each read while the transfer runs, and waiting at most
//  poll_ms for the network in between. A transfer that poll_fn stops (or
//  that curl_multi_perform fails on) is removed at once, which closes its
//  connection: the upstream sees the client leave. Returns 0 when the
//  transfer ended by itself (see outcome->code), poll_fn's value when it
//  stopped it, -1 when curl_multi_perform failed (see outcome->multi).
int cm_http_perform (CURL *curl, int poll_ms, cm_http_poll_fn *poll_fn, void *arg,
                     cm_http_outcome_t *outcome);

//  An ended transfer that failed (code is not CURLE_OK) in words, for an
//  upstream whose operator reads them: "<who> cannot be reached: <why>
//  (<errno text>)", "<who> cannot be reached: no connection within N ms
//  (<connect_var>)", or "<who>'s connection failed: <why>". curl_err is
//  the handle's error buffer (may be empty).
void cm_http_describe_failure (CURL *curl, CURLcode code, const char *curl_err,
                               const char *who, int64_t connect_timeout_ms,
                               const char *connect_var, char *out, size_t outlen);

//  Whose fault an HTTP error status is, for the circuit breaker.
typedef enum {
    CM_HTTP_UPSTREAM = 0, //  the upstream's (5xx, 429, 401, 403, 408, ...)
    CM_HTTP_REQUEST = 1,  //  the request's (the other 4xx)
} cm_http_fault_t;

//  A non-2xx status and the upstream's message in words ("<who> is rate
//  limiting us (HTTP 429): <message>", "<who> refused our credentials
//  (HTTP 401; check <key_var>): ...", "<who> refused the request (HTTP
//  400): ...", "<who> failed (HTTP 500): ..."), and whose fault it is.
cm_http_fault_t cm_http_describe_status (long status, const char *message,
                                         const char *who, const char *key_var, char *out,
                                         size_t outlen);

//  --- cm_http_share_t --------------------------------------------------------------

//  A libcurl share handle for the DNS cache and TLS sessions, with its
//  locks, and a curl_global_init reference. Not the connection cache:
//  libcurl cannot share it between threads that run transfers at the same
//  time. NULL when libcurl could not be initialised.
cm_http_share_t *cm_http_share_new (void);
//  NULL-safe; nulls the pointer. The handles that used it must be gone.
void cm_http_share_destroy (cm_http_share_t **self_p);
//  The CURLSH for CURLOPT_SHARE (borrowed).
CURLSH *cm_http_share_handle (cm_http_share_t *self);

#endif
