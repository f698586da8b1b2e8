/*  cm_ratelimit.h: a rate limiter (GCRA, the generic cell rate algorithm)
    with one shared bucket and a bounded table of keyed buckets.

    A limit is a rate (requests per second, fractional allowed) and a burst:
    up to `burst` requests pass at once, then one every 1/rate seconds. GCRA
    keeps one number per bucket, the theoretical arrival time (TAT) of the
    next request if requests came exactly at the rate; a request passes when
    it is at most burst/rate seconds early. It is the token bucket with the
    refill folded into arithmetic: no timer, no counter to refill.

    Time is passed in, as microseconds on any clock that does not go
    backwards (cm_clock_mono_us, for example); the limiter reads no clock, so tests are
    exact. Internally it counts in nanoseconds, so that the interval 1/rate
    keeps its precision at high rates (100k/s is 10 µs a request) and
    fractional rates (3/s is 333333.333 µs, kept to the nanosecond).

    Keys (for example an API key's identity) each get their own bucket in a
    table of at most `max_keys` buckets. When the table is full, a new key
    evicts the least recently used one, and an evicted key that comes back
    starts fresh, with its whole burst: that is the price of bounded
    memory, the same one nginx's limit_req zone pays. A key idle for
    burst/rate seconds has its whole burst again anyway, so eviction only
    forgets something when more than max_keys keys were active within that
    time. Keys are told apart by a 128-bit keyed hash (SipHash, a random key
    per limiter): a collision between two given keys has odds of 2^-128, and
    no caller can aim for one. Tables above 128 keys are split into up to 64
    stripes by hash, each with its own lock and its own LRU order, so the
    eviction is least-recently-used within the new key's stripe.

    Threading: every function may be called from any thread. Decisions are
    exact under concurrency: the shared bucket changes by compare-and-swap,
    a keyed bucket under its stripe's mutex, so N threads asking at the same
    instant never get more than `burst` requests through. */
#ifndef CM_RATELIMIT_H_INCLUDED
#define CM_RATELIMIT_H_INCLUDED

#include "cm_common.h"

typedef struct cm_ratelimit_s cm_ratelimit_t;

typedef enum {
    CM_RATELIMIT_ALLOWED = 0, //  the request passes (and was counted)
    CM_RATELIMIT_REJECTED,    //  over the limit: nothing was counted
} cm_ratelimit_outcome_t;

//  A decision, with what response headers need.
typedef struct {
    cm_ratelimit_outcome_t outcome; //  as returned
    int64_t remaining;              //  requests that would pass right now, after
                                    //  this one (0 when rejected)
    int64_t reset_us;               //  until the whole burst is back, if no more
                                    //  requests come
    int64_t retry_after_us;         //  rejected: until the next request would pass
                                    //  (asking exactly then passes; 1 µs earlier
                                    //  does not); allowed: 0
    int64_t undo_from, undo_to;     //  private: the TAT change, for cm_ratelimit_undo
} cm_ratelimit_result_t;

//  A limiter of `rate` requests per second (0: unlimited, every request
//  passes, with remaining INT64_MAX) with bursts of `burst` requests (at least 1), and a
//  table of at most max_keys keyed buckets (0: the shared bucket only). Bounds
//  (asserted): rate <= 1e9, burst / rate <= 1e6 seconds. Caller owns it.
cm_ratelimit_t *cm_ratelimit_new (double rate, int64_t burst, size_t max_keys);
//  Destroy; NULL-safe; nulls the pointer.
void cm_ratelimit_destroy (cm_ratelimit_t **self_p);

//  Decide one request at now_us, and count it when it passes. key: NULL for
//  the shared bucket, or a NUL-terminated key of the table (borrowed; the
//  limiter needs max_keys > 0). result: NULL, or filled in.
cm_ratelimit_outcome_t cm_ratelimit_take (cm_ratelimit_t *self, const char *key,
                                          int64_t now_us, cm_ratelimit_result_t *result);
//  The decision cm_ratelimit_take would make, without counting anything (a
//  key not in the table is neither added nor made more recent).
cm_ratelimit_outcome_t cm_ratelimit_peek (cm_ratelimit_t *self, const char *key,
                                          int64_t now_us, cm_ratelimit_result_t *result);
//  Take back an ALLOWED decision (another limit refused the same request),
//  as if the request had never come: exact when nobody took from that
//  bucket since; otherwise the token stays taken (never more than the rate
//  passes; at worst one request fewer). Rejected results: no effect.
void cm_ratelimit_undo (cm_ratelimit_t *self, const char *key,
                        const cm_ratelimit_result_t *result);

//  True when the rate is 0 (every request passes).
bool cm_ratelimit_unlimited (cm_ratelimit_t *self);
double cm_ratelimit_rate (cm_ratelimit_t *self);
int64_t cm_ratelimit_burst (cm_ratelimit_t *self);
//  Seconds from an empty burst to a whole one (burst / rate), rounded up;
//  the window of the IETF RateLimit-Policy field. 0 when unlimited.
int64_t cm_ratelimit_window_s (cm_ratelimit_t *self);
//  Keyed buckets held now, and keys evicted so far to make room.
size_t cm_ratelimit_keys (cm_ratelimit_t *self);
uint64_t cm_ratelimit_evictions (cm_ratelimit_t *self);

//  Microseconds as whole seconds for headers, rounded up (never early).
int64_t cm_ratelimit_seconds (int64_t us);

#endif
