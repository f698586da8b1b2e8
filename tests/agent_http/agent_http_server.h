/*  agent_http_server.h: a small HTTP/1.1 server for agentd's tests, run on
    a thread of the test process on 127.0.0.1 (an ephemeral port). It
    records what flows send it and how they behave:

    - /echo...            200, JSON {method, path, headers:{lower-case name:
                          value}, body}; the request is kept (ah_server_last)
    - /status/NNN         that status, JSON {"error":"status NNN"}
    - /slow?ms=N          waits N ms, then 200 {"slow":N}; counts requests in
                          flight (ah_server_max_concurrent) and clients that
                          hang up while it waits (ah_server_gone)
    - /redirect?to=URL    302 to URL (taken verbatim)
    - /page               a small HTML page (see AH_PAGE)
    - /big                2 MiB of 'x'
    Every response closes the connection. */
#ifndef AGENT_HTTP_SERVER_H_INCLUDED
#define AGENT_HTTP_SERVER_H_INCLUDED

#include <stdbool.h>
#include <stddef.h>

typedef struct ah_server_s ah_server_t;

#define AH_PAGE                                                                          \
    "<!doctype html><html><head><title>T</title><style>p{}</style></head><body>"         \
    "<div id=\"main\" class=\"post big\"><h1>Hello</h1><p class=\"lead\">First "         \
    "<b>bold</b> para</p><p>Second</p></div><p class=\"lead\">Outside</p>"               \
    "<script>var x = 1;</script></body></html>"

//  Start on a free port. Fails the test (criterion) when it cannot.
ah_server_t *ah_server_start (void);
//  Stop and free; waits for open connections to end.
void ah_server_stop (ah_server_t **self_p);
int ah_server_port (ah_server_t *self);
//  Requests received whose path starts with prefix (NULL: all).
int ah_server_hits (ah_server_t *self, const char *prefix);
//  Most /slow requests in flight at once so far.
int ah_server_max_concurrent (ah_server_t *self);
//  /slow requests whose client went away before the answer.
int ah_server_gone (ah_server_t *self);
//  The last /echo request as JSON text {method, path, headers, body}
//  (new string, caller frees; NULL when none).
char *ah_server_last (ah_server_t *self);
//  Forget the counts (not the port).
void ah_server_reset (ah_server_t *self);

#endif
