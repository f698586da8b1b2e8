/*  agent_origins.h: a circuit breaker per origin that agent flows call
    (the URLs of apiCall and webScraping steps), in a bounded map.

    Flow URLs are written by whoever writes the flow, so one flow pointing
    at a dead partner API or a misspelt host must not stop the others.
    agentd's `agent` circuit guards only the upstream every flow shares (the
    LLM provider); each origin a step calls (scheme://host:port, the port
    spelled out, host in lower case) gets a cm_breaker of its own with the
    same settings (AGENT_CIRCUIT_*). A step asks its origin's breaker before
    it calls (refused: the step fails at once, nothing is sent) and reports
    how the call ended: bulkheading, as Envoy's outlier detection per
    upstream host.

    What counts for an origin (the caller decides, see agent_service.c):
    a network error, DNS failure, timeout or 5xx is a failure; any other
    answer (2xx, 3xx, 4xx: it answered) a success; a cancelled call, a
    refused address or a body too large is released (neither).

    The map holds at most max_origins breakers. A new origin beyond that
    evicts the least recently asked one whose circuit is closed; when none
    is closed, the least recently asked one of all (forgetting that it was
    failing: the price of bounded memory). Outcomes of calls whose entry
    was evicted meanwhile are dropped: every entry has an id, and a ticket
    only reports to the entry that gave it.

    Time is passed in (now_ms, cm_clock_mono_ms in production).

    Threading: every function may be called from any thread; one mutex
    guards the map (each breaker has its own, taken inside it). */
#ifndef AGENT_ORIGINS_H_INCLUDED
#define AGENT_ORIGINS_H_INCLUDED

#include "cm_common.h"
#include "cm_breaker.h"

typedef struct agent_origins_s agent_origins_t;

//  Origins the map tracks at most when the caller says 0 (about 1 KiB
//  each with the default window).
#define AGENT_ORIGINS_DEFAULT_MAX 1024
//  Room for an origin's text: "https://" + a host of up to 255 bytes
//  (IPv6 in brackets) + ":65535" + NUL.
#define AGENT_ORIGIN_SIZE 272

//  What acquire decided.
typedef enum {
    AGENT_ORIGINS_ALLOWED = 0,  //  make the call, then report it with the ticket
    AGENT_ORIGINS_REJECTED = 1, //  the origin's circuit is open: do not call
} agent_origins_result_t;

//  One call's ticket, filled by acquire. Read origin, retry_after_ms and
//  failures; pass the rest back untouched.
typedef struct {
    char origin[AGENT_ORIGIN_SIZE]; //  the call's origin; "" when the URL has none
    uint64_t entry;                 //  the entry that allowed it (0: not tracked)
    cm_breaker_permit_t permit;     //  that entry's breaker permit
    int64_t retry_after_ms;         //  REJECTED: time until a call may go (> 0)
    int64_t failures;               //  REJECTED: the origin's consecutive failures
} agent_origins_ticket_t;

//  Statistics of the map.
typedef struct {
    size_t origins;   //  origins tracked now
    size_t open;      //  of them, circuits not closed (open or half-open)
    uint64_t refused; //  acquires refused because the circuit was open
    uint64_t evicted; //  origins forgotten to make room for others
} agent_origins_stats_t;

//  Create an empty map whose breakers use config (it must pass
//  cm_breaker_config_check; copied). max_origins: at most that many
//  origins (0: AGENT_ORIGINS_DEFAULT_MAX). Caller owns the map.
agent_origins_t *agent_origins_new (const cm_breaker_config_t *config,
                                    size_t max_origins);
//  Destroy; NULL-safe; nulls the pointer.
void agent_origins_destroy (agent_origins_t **self_p);

//  The origin of an http(s) URL, "scheme://host:port" in lower case with
//  the scheme's default port spelled out ("https://api.example.com:443",
//  "http://[::1]:8080"), into origin (size bytes). 0, or -1 when url is not
//  an http(s) URL with a host, or the origin does not fit.
int agent_origins_parse (const char *url, char *origin, size_t size);

//  Ask to call url at now_ms. ALLOWED: make the call and report it with
//  exactly one of success, failure or release (a URL without an origin is
//  allowed untracked; reporting it does nothing). REJECTED: do not call;
//  ticket's origin, retry_after_ms and failures say why.
agent_origins_result_t agent_origins_acquire (agent_origins_t *self, const char *url,
                                              int64_t now_ms,
                                              agent_origins_ticket_t *ticket);
//  The origin answered (any status below 500).
void agent_origins_success (agent_origins_t *self, const agent_origins_ticket_t *ticket,
                            int64_t now_ms);
//  The origin failed: network error, DNS, timeout, 5xx.
void agent_origins_failure (agent_origins_t *self, const agent_origins_ticket_t *ticket,
                            int64_t now_ms);
//  The call said nothing about the origin (cancelled, refused address,
//  body too large).
void agent_origins_release (agent_origins_t *self, const agent_origins_ticket_t *ticket);

//  Is origin (as agent_origins_parse writes it) tracked? When it is and
//  state is not NULL, *state is its circuit's state.
bool agent_origins_lookup (agent_origins_t *self, const char *origin,
                           cm_breaker_state_t *state);
void agent_origins_stats (agent_origins_t *self, agent_origins_stats_t *stats);

//  A cm_metrics collector (origins is an agent_origins_t *): sets
//    gauge   llmrt_agent_origins                      origins tracked
//    gauge   llmrt_agent_origin_circuits_open         of them, not closed
//    counter llmrt_agent_origin_calls_refused_total   steps failed fast
//    counter llmrt_agent_origin_evictions_total       origins forgotten
//  without an origin label, so the number of series stays fixed.
struct cm_metrics_s;
void agent_origins_collect (struct cm_metrics_s *metrics, void *origins);
//  Register the series at once and add the collector. Call once; take no
//  snapshot after the map is destroyed.
void agent_origins_attach_metrics (agent_origins_t *self, struct cm_metrics_s *metrics);

#endif
