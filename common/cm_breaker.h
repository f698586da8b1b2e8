/*  cm_breaker.h: a circuit breaker around one upstream (the seed's
    CircuitBreaker), with resilience4j's state machine as the reference.

    A breaker sits in front of calls to an upstream (chatd's LLM provider,
    ingestd's embedder, agentd's LLM provider, and in agentd one per origin
    that flows call: agent_origins). Each call asks first
    (cm_breaker_acquire); when the upstream has been failing the breaker
    refuses at once, so the caller answers 503 with Retry-After instead of
    queueing work behind a dead dependency. An allowed call reports how it
    ended: exactly one of cm_breaker_success, cm_breaker_failure or
    cm_breaker_release, with the permit acquire gave it.

        CLOSED ──(threshold consecutive failures, or failure rate ≥ limit)──▶ OPEN
        OPEN ──(cool-down elapsed; checked at the next acquire)──▶ HALF_OPEN
        HALF_OPEN ──(all probes succeeded)──▶ CLOSED   (cool-down back to reset_ms)
        HALF_OPEN ──(a probe failed)──▶ OPEN           (cool-down doubled, capped)

    CLOSED: every call is allowed. The circuit opens when failure_threshold
    calls fail in a row (a success resets the count; the seed's rule), or,
    when failure_rate > 0, when of the last `window` calls (a count-based
    sliding window) at least min_calls have ended and failures make up at
    least failure_rate percent of them.

    OPEN: every call is refused (CM_BREAKER_REJECTED) with retry_after_ms =
    the time left until the cool-down ends. The first cool-down is reset_ms;
    each trip that follows a failed probe doubles it, up to max_reset_ms.
    The move to HALF_OPEN is lazy: the first acquire at or after the end of
    the cool-down makes it (and is the first probe), so the state (and its
    gauge) reads OPEN until someone asks.

    HALF_OPEN: at most half_open_probes calls are let through as probes;
    other callers are refused with retry_after_ms = min (reset_ms, 1000),
    since a probe's outcome is due soon. The first probe that fails reopens
    the circuit at once (the longer cool-down starts then); when all
    half_open_probes probes have succeeded the circuit closes, its counts
    start afresh and the cool-down goes back to reset_ms. A released probe
    (cancelled) frees its slot for another caller.

    Outcomes:
    - success: the upstream did its job.
    - failure: the upstream failed (a network error, a 5xx, a timeout).
    - release: the call ended neither way and says nothing about the
      upstream: the client went away, or the upstream refused the request
      for the request's own fault (a 4xx such as "context too long"). It is
      not counted as a failure nor a success, and gives back a probe slot.
      Counting a request's own 4xx as a success would let a client keep a
      failing upstream's circuit closed with bad requests.

    Permits: acquire hands out a permit that records the state epoch (a
    number that grows at every transition). An outcome whose permit is from
    an earlier epoch is counted in the statistics but does not move the
    state: calls still running when the circuit opened cannot reopen or
    close it later, and a call allowed while CLOSED can never be mistaken
    for a probe.

    Where this differs from resilience4j's CircuitBreaker:
    - resilience4j opens on the failure rate of a sliding window only; we
      open on consecutive failures (the seed's rule, always on) and,
      optionally, on the rate of a count-based window (its COUNT_BASED
      window; no TIME_BASED one, and no slow-call rate).
    - resilience4j's HALF_OPEN waits for all permitted probes and closes
      when their failure rate is under the threshold; we reopen at the
      first failed probe and close when all probes succeeded. With one
      probe (our default) both rules are the same.
    - resilience4j waits the same time in OPEN each trip unless given an
      interval function; ours is exponential and capped by default (as
      its IntervalFunction.ofExponentialBackoff), reset on close.
    - resilience4j records outcomes of calls permitted in an earlier state
      into the current state; we drop them (see permits).
    - Like resilience4j (automaticTransitionFromOpenToHalfOpenEnabled
      false), OPEN becomes HALF_OPEN at the next call, not on a timer.
    - resilience4j's ignored exceptions and releasePermission are our
      cm_breaker_release.

    Time: every function that depends on time takes now_ms, milliseconds of
    a monotonic clock (cm_clock_mono_ms in production), so tests need no
    sleeps.

    Threading: every function may be called from any thread; one mutex
    guards the state. */
#ifndef CM_BREAKER_H_INCLUDED
#define CM_BREAKER_H_INCLUDED

#include "cm_common.h"
#include "cm_config.h"

typedef struct cm_breaker_s cm_breaker_t;

//  The breaker's state; the values are those of the llmrt_circuit_state
//  gauge.
typedef enum {
    CM_BREAKER_CLOSED = 0,    //  calls flow; failures are counted
    CM_BREAKER_OPEN = 1,      //  calls are refused until the cool-down ends
    CM_BREAKER_HALF_OPEN = 2, //  a few probe calls test the upstream
} cm_breaker_state_t;

//  What acquire decided.
typedef enum {
    CM_BREAKER_ALLOWED = 0,  //  make the call, then report its outcome
    CM_BREAKER_REJECTED = 1, //  do not call; answer 503 with Retry-After
} cm_breaker_result_t;

//  An allowed call's ticket, passed back with its outcome. Treat as opaque.
typedef struct {
    uint64_t epoch; //  the state epoch the call was allowed in
} cm_breaker_permit_t;

//  Settings. cm_breaker_config_defaults fills the defaults below; programs
//  read them from the environment with CM_BREAKER_CONF_ENTRIES.
typedef struct {
    int64_t failure_threshold; //  consecutive failures that open the circuit (>= 1)
    int64_t reset_ms;          //  first cool-down in OPEN (>= 1)
    int64_t max_reset_ms;      //  cap of the doubled cool-down (>= reset_ms)
    int64_t half_open_probes;  //  calls let through in HALF_OPEN (>= 1)
    int64_t failure_rate;      //  percent 1..100 that opens the circuit; 0 = off
    int64_t min_calls;         //  calls in the window before the rate counts
    int64_t window;            //  calls in the sliding window (>= min_calls)
} cm_breaker_config_t;

#define CM_BREAKER_DEFAULT_FAILURE_THRESHOLD 5
#define CM_BREAKER_DEFAULT_RESET_MS          30000
#define CM_BREAKER_DEFAULT_MAX_RESET_MS      300000
#define CM_BREAKER_DEFAULT_HALF_OPEN_PROBES  1
#define CM_BREAKER_DEFAULT_FAILURE_RATE      0
#define CM_BREAKER_DEFAULT_MIN_CALLS         20
#define CM_BREAKER_DEFAULT_WINDOW            100
//  Longest cool-down and window one may configure: a day; 10000 calls.
#define CM_BREAKER_MAX_MS     86400000
#define CM_BREAKER_MAX_WINDOW 10000

#define CM_BREAKER_STR_(x) #x
#define CM_BREAKER_STR(x)  CM_BREAKER_STR_ (x)

//  The breaker's settings as cm_config table entries, named
//  <prefix>_CIRCUIT_FAILURE_THRESHOLD, _RESET_MS, _MAX_RESET_MS,
//  _HALF_OPEN_PROBES, _FAILURE_RATE, _MIN_CALLS, _WINDOW. prefix is a string
//  literal ("CHAT"); type the settings struct and member its
//  cm_breaker_config_t field. After cm_config_load, call
//  cm_breaker_config_check for the rules that join two settings.
// clang-format off
#define CM_BREAKER_CONF_ENTRIES(prefix, type, member)                                  \
    {prefix "_CIRCUIT_FAILURE_THRESHOLD", CM_CONF_INT,                                 \
     CM_BREAKER_STR (CM_BREAKER_DEFAULT_FAILURE_THRESHOLD), 1, 1000000,                \
     offsetof (type, member.failure_threshold),                                        \
     "consecutive upstream failures that open the circuit (then 503)"},                \
    {prefix "_CIRCUIT_RESET_MS", CM_CONF_INT,                                          \
     CM_BREAKER_STR (CM_BREAKER_DEFAULT_RESET_MS), 1, CM_BREAKER_MAX_MS,               \
     offsetof (type, member.reset_ms),                                                 \
     "ms the circuit stays open after it first opens"},                                \
    {prefix "_CIRCUIT_MAX_RESET_MS", CM_CONF_INT,                                      \
     CM_BREAKER_STR (CM_BREAKER_DEFAULT_MAX_RESET_MS), 1, CM_BREAKER_MAX_MS,           \
     offsetof (type, member.max_reset_ms),                                             \
     "cap of the open time, which doubles each time a probe fails (>= RESET_MS)"},     \
    {prefix "_CIRCUIT_HALF_OPEN_PROBES", CM_CONF_INT,                                  \
     CM_BREAKER_STR (CM_BREAKER_DEFAULT_HALF_OPEN_PROBES), 1, 1000,                    \
     offsetof (type, member.half_open_probes),                                         \
     "trial calls let through after the open time; all must succeed to close"},        \
    {prefix "_CIRCUIT_FAILURE_RATE", CM_CONF_INT,                                      \
     CM_BREAKER_STR (CM_BREAKER_DEFAULT_FAILURE_RATE), 0, 100,                         \
     offsetof (type, member.failure_rate),                                             \
     "also open when this percentage of the last WINDOW calls failed (0: off)"},       \
    {prefix "_CIRCUIT_MIN_CALLS", CM_CONF_INT,                                         \
     CM_BREAKER_STR (CM_BREAKER_DEFAULT_MIN_CALLS), 1, CM_BREAKER_MAX_WINDOW,          \
     offsetof (type, member.min_calls),                                                \
     "calls in the window before the failure rate counts (<= WINDOW)"},               \
    {prefix "_CIRCUIT_WINDOW", CM_CONF_INT,                                            \
     CM_BREAKER_STR (CM_BREAKER_DEFAULT_WINDOW), 1, CM_BREAKER_MAX_WINDOW,             \
     offsetof (type, member.window),                                                   \
     "calls in the failure-rate sliding window (the last N that ended)"}
// clang-format on

//  Fill config with the defaults.
void cm_breaker_config_defaults (cm_breaker_config_t *config);
//  Check the rules between settings (bounds are the table's): MAX_RESET_MS
//  >= RESET_MS, MIN_CALLS <= WINDOW. prefix names the variables in err
//  ("CHAT" gives CHAT_CIRCUIT_MAX_RESET_MS). Returns 0, or -1 with err set.
int cm_breaker_config_check (const cm_breaker_config_t *config, const char *prefix,
                             char *err, size_t errlen);

//  Create a breaker, CLOSED. name labels its logs and metrics ("chat"; copied).
//  config must pass cm_breaker_config_check. Caller owns the breaker.
cm_breaker_t *cm_breaker_new (const char *name, const cm_breaker_config_t *config);
//  Destroy; NULL-safe; nulls the pointer.
void cm_breaker_destroy (cm_breaker_t **self_p);

//  Ask to call the upstream at now_ms. ALLOWED: *permit is set; make the
//  call and report it with exactly one of success, failure or release.
//  REJECTED: do not call; *retry_after_ms (may be NULL) is how long until a
//  call may be allowed again (> 0).
cm_breaker_result_t cm_breaker_acquire (cm_breaker_t *self, int64_t now_ms,
                                        cm_breaker_permit_t *permit,
                                        int64_t *retry_after_ms);
//  The allowed call succeeded.
void cm_breaker_success (cm_breaker_t *self, cm_breaker_permit_t permit, int64_t now_ms);
//  The allowed call failed because of the upstream.
void cm_breaker_failure (cm_breaker_t *self, cm_breaker_permit_t permit, int64_t now_ms);
//  The allowed call ended neither way (client gone, the request's own 4xx):
//  not counted for or against the upstream; a probe's slot is freed.
void cm_breaker_release (cm_breaker_t *self, cm_breaker_permit_t permit);

//  Current state (OPEN until an acquire finds the cool-down over).
cm_breaker_state_t cm_breaker_state (cm_breaker_t *self);
//  The breaker's name (borrowed).
const char *cm_breaker_name (cm_breaker_t *self);
//  "closed", "open" or "half_open" (static).
const char *cm_breaker_state_name (cm_breaker_state_t state);

//  Snapshot of the breaker.
typedef struct {
    cm_breaker_state_t state;   //  now
    int64_t consecutive;        //  consecutive failures while CLOSED
    int64_t cooldown_ms;        //  OPEN: this trip's cool-down; else the next trip's
    int64_t open_until_ms;      //  OPEN: when probes may start; else 0
    int64_t probes_in_flight;   //  HALF_OPEN: probes not yet reported
    int64_t probes_succeeded;   //  HALF_OPEN: probes that succeeded
    int64_t window_calls;       //  calls in the sliding window
    int64_t window_failures;    //  failures among them
    uint64_t allowed;           //  acquires allowed
    uint64_t rejected;          //  acquires refused
    uint64_t succeeded;         //  allowed calls reported as success
    uint64_t failed;            //  allowed calls reported as failure
    uint64_t released;          //  allowed calls released (neither)
    uint64_t transitions[3][3]; //  [from][to], indexed by cm_breaker_state_t
} cm_breaker_stats_t;
void cm_breaker_stats (cm_breaker_t *self, cm_breaker_stats_t *stats);

//  --- metrics (cm_breaker_metrics.c, so programs without metrics do not
//  link them) ----------------------------------------------------------------

//  A cm_metrics collector (breaker is a cm_breaker_t *): sets, labelled
//  circuit="<name>",
//    gauge   llmrt_circuit_state                     0 closed, 1 open, 2 half-open
//    counter llmrt_circuit_transitions_total{from,to} (the four legal ones)
//    counter llmrt_circuit_calls_total{outcome}       rejected|succeeded|failed|released
//  registering them on first use.
struct cm_metrics_s;
void cm_breaker_collect (struct cm_metrics_s *metrics, void *breaker);
//  Register the series at once and add cm_breaker_collect as a collector of
//  metrics. Call once. Take no snapshot after the breaker is destroyed.
void cm_breaker_attach_metrics (cm_breaker_t *self, struct cm_metrics_s *metrics);

#endif
