/*  gw_limits.h: the gateway's rate limits on forwarded routes.

    Three kinds of limit, each a cm_ratelimit (GCRA: a rate and a burst),
    each off when its rate is 0:
      - global: every forwarded request, together;
      - per route class: "chat", "ingestion", "agent", by the route's
        service (chat, ingest, agent);
      - per API key: each caller identity its own bucket, in a table of at
        most RATE_LIMIT_MAX_KEYS identities (least recently used evicted;
        an evicted identity starts with a whole burst).
    A request passes only when every limit that applies lets it pass. The
    most specific limit is asked first (key, class, global), so a client
    over its own limit is refused without taking from the shared ones; when
    a later limit refuses, the earlier ones are given their request back.

    Every decision also says what the response headers say, in the form of
    draft-ietf-httpapi-ratelimit-headers-11 (structured fields; the form is
    the same since draft -08):
        RateLimit-Policy: "chat";q=20;w=2     q: the burst, w: seconds from
                                              an empty burst to a whole one
        RateLimit: "chat";r=5;t=1             r: requests left now, t: seconds
                                              until the burst is whole again
    naming the most restrictive limit (fewest requests left; when refused,
    the one whose wait is longest), and on a refusal Retry-After in whole
    seconds, rounded up, so never before the next request would pass.

    Threading: gw_limits_check and gw_limits_stats may be called from any
    thread at once. */
#ifndef GW_LIMITS_H_INCLUDED
#define GW_LIMITS_H_INCLUDED

#include "cm_common.h"
#include "cm_ratelimit.h"
#include <jansson.h>

//  Settings (see the gateway's config table).
typedef struct {
    double global_rps;       //  RATE_LIMIT_GLOBAL_RPS (0: unlimited)
    int64_t global_burst;    //  RATE_LIMIT_GLOBAL_BURST (0: the rate, rounded up)
    double chat_rps;         //  RATE_LIMIT_CHAT_RPS
    int64_t chat_burst;      //  RATE_LIMIT_CHAT_BURST
    double ingestion_rps;    //  RATE_LIMIT_INGESTION_RPS
    int64_t ingestion_burst; //  RATE_LIMIT_INGESTION_BURST
    double agent_rps;        //  RATE_LIMIT_AGENT_RPS
    int64_t agent_burst;     //  RATE_LIMIT_AGENT_BURST
    double key_rps;          //  RATE_LIMIT_KEY_RPS (per API key)
    int64_t key_burst;       //  RATE_LIMIT_KEY_BURST
    int64_t max_keys;        //  RATE_LIMIT_MAX_KEYS
} gw_limits_config_t;

//  The limits, by name.
typedef enum {
    GW_LIMIT_KEY = 0,   //  "key": per API key
    GW_LIMIT_CHAT,      //  "chat": routes of the chat service
    GW_LIMIT_INGESTION, //  "ingestion": routes of the ingest service
    GW_LIMIT_AGENT,     //  "agent": routes of the agent service
    GW_LIMIT_GLOBAL,    //  "global": every forwarded route
    GW_LIMIT_COUNT,
} gw_limit_t;

//  What one request gets: the outcome and the response headers' values.
typedef struct {
    cm_ratelimit_outcome_t outcome; //  CM_RATELIMIT_ALLOWED or _REJECTED
    const char *limit;              //  the limit the headers describe (static
                                    //  name); NULL: no limit applies, no headers
    char policy[80];                //  RateLimit-Policy value
    char state[80];                 //  RateLimit value
    char retry_after[24];           //  Retry-After value when rejected, else ""
    char message[160];              //  error text when rejected, else ""
} gw_limits_verdict_t;

typedef struct gw_limits_s gw_limits_t;

//  Check the settings: 0, or -1 with a message naming the variables in err
//  when they make no sense (a burst that takes more than 10^8 s to refill
//  at its rate: RATE_LIMIT_GLOBAL_RPS=1 with RATE_LIMIT_GLOBAL_BURST=10^9).
//  The gateway checks them at start-up, as a bad setting (exit 2).
int gw_limits_config_check (const gw_limits_config_t *config, char *err, size_t errlen);

//  The limits of config (borrowed only during the call). NULL, with the
//  message of gw_limits_config_check in err, when a setting makes no sense.
gw_limits_t *gw_limits_new (const gw_limits_config_t *config, char *err, size_t errlen);
//  Destroy; NULL-safe; nulls the pointer.
void gw_limits_destroy (gw_limits_t **self_p);

//  Decide one request to service (a route's service name) from identity
//  (the authenticated caller; NULL or "": no per-key limit) at now_us
//  (cm_clock_mono_us). Counts it when it passes; fills verdict.
cm_ratelimit_outcome_t gw_limits_check (gw_limits_t *self, const char *service,
                                        const char *identity, int64_t now_us,
                                        gw_limits_verdict_t *verdict);

//  The 429 body of a refusal (new reference):
//  {"error": "Rate limit exceeded: chat (10 requests/s, burst 20).", "limit": "chat"}
json_t *gw_limits_verdict_body (const gw_limits_verdict_t *verdict);

//  The limits' settings and counters (new reference):
//    {"<limit>": {"requests_per_second": r, "burst": b, "window_seconds": w,
//                 "allowed": n, "rejected": n}, ...,
//     "key": {..., "keys": n, "max_keys": n, "evictions": n}}
//  allowed: requests this limit let through that were forwarded; rejected:
//  requests refused in this limit's name (each refusal counts once, under
//  the limit its 429 names). A rate of 0 means unlimited.
json_t *gw_limits_stats (gw_limits_t *self);

//  A limit's name ("key", "chat", ...).
const char *gw_limits_name (gw_limit_t limit);

#endif
