/*  agent_http.h: the outbound HTTP of agent flows (apiCall, webScraping),
    made safe to point at user-written URLs.

    - Only http and https. Redirects are followed here, not by libcurl (at
      most AGENT_HTTP_MAX_REDIRECTS), so every hop is checked again.
    - Server-side request forgery: unless a hop's host is in the allowlist
      (exact host names, case-insensitive), the address libcurl is about to
      connect to (after DNS resolution, in its open-socket callback) must
      be public: loopback, "this network" (0/8), private (10/8,
      172.16/12, 192.168/16, fc00::/7), shared (100.64/10), link-local
      (169.254/16, fe80::/10), multicast, reserved (240/4) and their
      IPv4-mapped IPv6 forms are refused. Checking the socket's own address
      leaves no gap between the check and the use (DNS rebinding).
    - The response body is capped (max_bytes: beyond it the transfer stops
      and the call fails); the call has a timeout and a cancel callback,
      polled while libcurl waits, which aborts the transfer.

    Threading: one call per thread at a time; calls on several threads at
    once are fine (curl_global_init must have run). */
#ifndef AGENT_HTTP_H_INCLUDED
#define AGENT_HTTP_H_INCLUDED

#include "cm_common.h"
#include <sys/socket.h>

#define AGENT_HTTP_MAX_REDIRECTS 5

//  True when a flow must not reach this address unless its host is allowed.
bool agent_http_addr_blocked (const struct sockaddr *address);
//  The same for a numeric address in text ("10.0.0.1", "::1"); false when
//  text is not an address.
bool agent_http_text_blocked (const char *text);
//  Is host in the comma-separated allowlist (NULL: empty)? Items are exact
//  host names (any case) or IP addresses (compared by value); spaces around
//  an item are ignored.
bool agent_http_allowed (const char *allowlist, const char *host);
//  Check AGENT_HTTP_ALLOWLIST (NULL: unset, fine): every item must be what
//  agent_http_allowed can match, a host name or an IP address (IPv6 without
//  brackets, IPv4 as a dotted quad); not a URL, a host:port, a wildcard, a
//  mask or an empty item. Returns 0, or -1 with a message naming the
//  variable and the item in err.
int agent_http_allowlist_check (const char *allowlist, char *err, size_t errlen);

//  Polled while the call waits; true: abort now.
typedef bool (agent_http_cancelled_fn) (void *arg);

typedef struct {
    const char *method;         //  "GET", "POST", ...
    const char *url;            //  http(s) URL
    const char *const *headers; //  "Name: value" lines, NULL-terminated (may be NULL)
    const char *body;           //  request body, or NULL
    size_t body_size;           //  its length
    const char *allowlist;      //  AGENT_HTTP_ALLOWLIST (may be NULL)
    size_t max_bytes;           //  response body cap
    int64_t timeout_ms;         //  the whole call, redirects included
    agent_http_cancelled_fn *cancelled; //  may be NULL
    void *cancel_arg;
} agent_http_request_t;

typedef enum {
    AGENT_HTTP_OK = 0,      //  a response came (any status); see status
    AGENT_HTTP_REFUSED = 1, //  refused before sending: bad URL, scheme, blocked address,
                            //  a header with a line break, too many redirects (the
                            //  flow's fault)
    AGENT_HTTP_TOO_LARGE = 2, //  the body passed max_bytes
    AGENT_HTTP_CANCELLED = 3, //  the cancel callback said so
    AGENT_HTTP_TIMEOUT = -1,  //  timeout_ms passed (the upstream's fault)
    AGENT_HTTP_FAILED = -2,   //  network error (the upstream's fault)
} agent_http_result_t;

typedef struct {
    long status;            //  HTTP status of the last hop
    char *body;             //  NUL-terminated, malloc'd (free it)
    size_t size;            //  body length
    char content_type[128]; //  Content-Type of the last hop ("" when none)
    char url[1024];         //  the last hop's URL
} agent_http_response_t;

//  Make the call. response is filled on OK (and partly otherwise); err gets
//  a reason fit for the flow's user on any other result. Free the
//  response's body with agent_http_response_free in every case.
agent_http_result_t agent_http_call (const agent_http_request_t *request,
                                     agent_http_response_t *response, char *err,
                                     size_t errlen);
void agent_http_response_free (agent_http_response_t *response);

#endif
