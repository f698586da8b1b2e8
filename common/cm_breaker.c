/*  cm_breaker.c: see cm_breaker.h. */
#include "cm_breaker.h"
#include "cm_log.h"
#include <pthread.h>

//  Retry-After while HALF_OPEN's probes are all out: a probe's outcome is
//  due soon (at most reset_ms, when that is shorter).
#define S_PROBE_RETRY_MS 1000

struct cm_breaker_s {
    char *name;                 //  circuit name, for logs and metric labels
    cm_breaker_config_t config; //  settings (checked)
    pthread_mutex_t lock;       //  guards everything below
    cm_breaker_state_t state;   //  current state
    uint64_t epoch;             //  grows at every transition; permits carry it
    int64_t consecutive;        //  CLOSED: failures in a row
    int64_t cooldown_ms;        //  OPEN: this trip's cool-down; else the next trip's
    int64_t open_until_ms;      //  OPEN: first moment a probe may go
    int64_t probes_in_flight;   //  HALF_OPEN: probes allowed, not yet reported
    int64_t probes_succeeded;   //  HALF_OPEN: probes that succeeded
    bool *ring;                 //  sliding window: true = failure (window slots)
    int64_t ring_next;          //  slot the next outcome goes to
    int64_t ring_calls;         //  outcomes in the window (<= window)
    int64_t ring_failures;      //  failures among them
    cm_breaker_stats_t stats;   //  counters (state fields filled on read)
};

static void s_trip (cm_breaker_t *self, int64_t now_ms);
static void s_move (cm_breaker_t *self, cm_breaker_state_t to);
static void s_window_add (cm_breaker_t *self, bool failure);
static bool s_rate_exceeded (cm_breaker_t *self);

void
cm_breaker_config_defaults (cm_breaker_config_t *config)
{
    assert (config);
    *config = (cm_breaker_config_t){
        .failure_threshold = CM_BREAKER_DEFAULT_FAILURE_THRESHOLD,
        .reset_ms = CM_BREAKER_DEFAULT_RESET_MS,
        .max_reset_ms = CM_BREAKER_DEFAULT_MAX_RESET_MS,
        .half_open_probes = CM_BREAKER_DEFAULT_HALF_OPEN_PROBES,
        .failure_rate = CM_BREAKER_DEFAULT_FAILURE_RATE,
        .min_calls = CM_BREAKER_DEFAULT_MIN_CALLS,
        .window = CM_BREAKER_DEFAULT_WINDOW,
    };
}

int
cm_breaker_config_check (const cm_breaker_config_t *config, const char *prefix, char *err,
                         size_t errlen)
{
    assert (config && prefix);
    //  The bounds of each setting are the table's; these are for code that
    //  builds a config by hand.
    struct {
        const char *suffix;
        int64_t value, min, max;
    } bounds[] = {
        {"FAILURE_THRESHOLD", config->failure_threshold, 1, 1000000},
        {"RESET_MS", config->reset_ms, 1, CM_BREAKER_MAX_MS},
        {"MAX_RESET_MS", config->max_reset_ms, 1, CM_BREAKER_MAX_MS},
        {"HALF_OPEN_PROBES", config->half_open_probes, 1, 1000},
        {"FAILURE_RATE", config->failure_rate, 0, 100},
        {"MIN_CALLS", config->min_calls, 1, CM_BREAKER_MAX_WINDOW},
        {"WINDOW", config->window, 1, CM_BREAKER_MAX_WINDOW},
    };
    for (size_t i = 0; i < sizeof bounds / sizeof bounds[0]; i++)
        if (bounds[i].value < bounds[i].min || bounds[i].value > bounds[i].max) {
            snprintf (err, errlen, "%s_CIRCUIT_%s: %lld is out of range %lld..%lld",
                      prefix, bounds[i].suffix, (long long) bounds[i].value,
                      (long long) bounds[i].min, (long long) bounds[i].max);
            return -1;
        }
    if (config->max_reset_ms < config->reset_ms) {
        snprintf (err, errlen,
                  "%s_CIRCUIT_MAX_RESET_MS: %lld is below %s_CIRCUIT_RESET_MS (%lld)",
                  prefix, (long long) config->max_reset_ms, prefix,
                  (long long) config->reset_ms);
        return -1;
    }
    if (config->min_calls > config->window) {
        snprintf (err, errlen,
                  "%s_CIRCUIT_MIN_CALLS: %lld is above %s_CIRCUIT_WINDOW (%lld), so "
                  "the failure rate could never count",
                  prefix, (long long) config->min_calls, prefix,
                  (long long) config->window);
        return -1;
    }
    return 0;
}

cm_breaker_t *
cm_breaker_new (const char *name, const cm_breaker_config_t *config)
{
    assert (name && config);
    char err[256];
    int rc = cm_breaker_config_check (config, "BREAKER", err, sizeof err);
    assert (rc == 0);
    (void) rc;
    cm_breaker_t *self = cm_calloc (1, sizeof *self);
    self->name = cm_strdup (name);
    self->config = *config;
    pthread_mutex_init (&self->lock, NULL);
    self->state = CM_BREAKER_CLOSED;
    self->cooldown_ms = config->reset_ms;
    self->ring = cm_calloc ((size_t) config->window, sizeof *self->ring);
    return self;
}

void
cm_breaker_destroy (cm_breaker_t **self_p)
{
    assert (self_p);
    cm_breaker_t *self = *self_p;
    if (!self)
        return;
    pthread_mutex_destroy (&self->lock);
    free (self->ring);
    free (self->name);
    free (self);
    *self_p = NULL;
}

cm_breaker_result_t
cm_breaker_acquire (cm_breaker_t *self, int64_t now_ms, cm_breaker_permit_t *permit,
                    int64_t *retry_after_ms)
{
    assert (self && permit);
    cm_breaker_result_t result = CM_BREAKER_ALLOWED;
    int64_t retry = 0;
    pthread_mutex_lock (&self->lock);
    if (self->state == CM_BREAKER_OPEN) {
        if (now_ms >= self->open_until_ms) {
            //  The cool-down is over: this caller is the first probe.
            s_move (self, CM_BREAKER_HALF_OPEN);
            cm_info ("circuit %s: half-open after %lld ms, probing with up to %lld "
                     "call(s)",
                     self->name, (long long) self->cooldown_ms,
                     (long long) self->config.half_open_probes);
        } else {
            result = CM_BREAKER_REJECTED;
            retry = self->open_until_ms - now_ms;
            //  A clock that went backwards must not promise more than a cool-down.
            if (retry > self->cooldown_ms)
                retry = self->cooldown_ms;
        }
    }
    if (self->state == CM_BREAKER_HALF_OPEN) {
        if (self->probes_in_flight + self->probes_succeeded <
            self->config.half_open_probes)
            self->probes_in_flight++;
        else {
            result = CM_BREAKER_REJECTED;
            retry = self->config.reset_ms < S_PROBE_RETRY_MS ? self->config.reset_ms
                                                             : S_PROBE_RETRY_MS;
        }
    }
    if (result == CM_BREAKER_ALLOWED) {
        permit->epoch = self->epoch;
        self->stats.allowed++;
    } else
        self->stats.rejected++;
    pthread_mutex_unlock (&self->lock);
    if (retry_after_ms)
        *retry_after_ms = retry;
    return result;
}

void
cm_breaker_success (cm_breaker_t *self, cm_breaker_permit_t permit, int64_t now_ms)
{
    assert (self);
    (void) now_ms; //  the window counts calls, not time
    pthread_mutex_lock (&self->lock);
    assert (permit.epoch <= self->epoch);
    self->stats.succeeded++;
    if (permit.epoch == self->epoch) {
        if (self->state == CM_BREAKER_CLOSED) {
            self->consecutive = 0;
            s_window_add (self, false);
        } else if (self->state == CM_BREAKER_HALF_OPEN) {
            assert (self->probes_in_flight > 0);
            self->probes_in_flight--;
            self->probes_succeeded++;
            if (self->probes_succeeded >= self->config.half_open_probes) {
                s_move (self, CM_BREAKER_CLOSED);
                cm_info ("circuit %s: closed, the upstream answers again", self->name);
            }
        }
    }
    pthread_mutex_unlock (&self->lock);
}

void
cm_breaker_failure (cm_breaker_t *self, cm_breaker_permit_t permit, int64_t now_ms)
{
    assert (self);
    pthread_mutex_lock (&self->lock);
    assert (permit.epoch <= self->epoch);
    self->stats.failed++;
    if (permit.epoch == self->epoch) {
        if (self->state == CM_BREAKER_CLOSED) {
            self->consecutive++;
            s_window_add (self, true);
            if (self->consecutive >= self->config.failure_threshold ||
                s_rate_exceeded (self))
                s_trip (self, now_ms);
        } else if (self->state == CM_BREAKER_HALF_OPEN) {
            assert (self->probes_in_flight > 0);
            self->probes_in_flight--;
            s_trip (self, now_ms);
        }
    }
    pthread_mutex_unlock (&self->lock);
}

void
cm_breaker_release (cm_breaker_t *self, cm_breaker_permit_t permit)
{
    assert (self);
    pthread_mutex_lock (&self->lock);
    assert (permit.epoch <= self->epoch);
    self->stats.released++;
    if (permit.epoch == self->epoch && self->state == CM_BREAKER_HALF_OPEN) {
        assert (self->probes_in_flight > 0);
        self->probes_in_flight--;
    }
    pthread_mutex_unlock (&self->lock);
}

cm_breaker_state_t
cm_breaker_state (cm_breaker_t *self)
{
    assert (self);
    pthread_mutex_lock (&self->lock);
    cm_breaker_state_t state = self->state;
    pthread_mutex_unlock (&self->lock);
    return state;
}

const char *
cm_breaker_name (cm_breaker_t *self)
{
    assert (self);
    return self->name;
}

const char *
cm_breaker_state_name (cm_breaker_state_t state)
{
    switch (state) {
        case CM_BREAKER_CLOSED:
            return "closed";
        case CM_BREAKER_OPEN:
            return "open";
        case CM_BREAKER_HALF_OPEN:
            return "half_open";
    }
    return "unknown";
}

void
cm_breaker_stats (cm_breaker_t *self, cm_breaker_stats_t *stats)
{
    assert (self && stats);
    pthread_mutex_lock (&self->lock);
    *stats = self->stats;
    stats->state = self->state;
    stats->consecutive = self->consecutive;
    stats->cooldown_ms = self->cooldown_ms;
    stats->open_until_ms = self->state == CM_BREAKER_OPEN ? self->open_until_ms : 0;
    stats->probes_in_flight = self->probes_in_flight;
    stats->probes_succeeded = self->probes_succeeded;
    stats->window_calls = self->ring_calls;
    stats->window_failures = self->ring_failures;
    pthread_mutex_unlock (&self->lock);
}

//  --- private helpers (called with the lock held) ------------------------------------

//  Open the circuit at now_ms. From HALF_OPEN (a probe failed) the cool-down
//  doubles, capped; from CLOSED it is the one set on the last close.
static void
s_trip (cm_breaker_t *self, int64_t now_ms)
{
    if (self->state == CM_BREAKER_HALF_OPEN) {
        self->cooldown_ms = self->cooldown_ms > self->config.max_reset_ms / 2
                                ? self->config.max_reset_ms
                                : self->cooldown_ms * 2;
        cm_warn ("circuit %s: a probe failed; open again for %lld ms", self->name,
                 (long long) self->cooldown_ms);
    } else
        cm_warn ("circuit %s: open for %lld ms after %lld consecutive failure(s) "
                 "(%lld of the last %lld calls failed)",
                 self->name, (long long) self->cooldown_ms, (long long) self->consecutive,
                 (long long) self->ring_failures, (long long) self->ring_calls);
    self->open_until_ms = now_ms + self->cooldown_ms;
    s_move (self, CM_BREAKER_OPEN);
}

//  Change state: count the transition, start a new epoch (outcomes of calls
//  allowed before it no longer move the state) and reset what the new
//  state counts.
static void
s_move (cm_breaker_t *self, cm_breaker_state_t to)
{
    self->stats.transitions[self->state][to]++;
    self->state = to;
    self->epoch++;
    self->probes_in_flight = 0;
    self->probes_succeeded = 0;
    self->consecutive = 0;
    if (to == CM_BREAKER_CLOSED) {
        self->cooldown_ms = self->config.reset_ms;
        self->ring_next = self->ring_calls = self->ring_failures = 0;
    }
}

//  Record one outcome in the count-based sliding window.
static void
s_window_add (cm_breaker_t *self, bool failure)
{
    if (self->ring_calls == self->config.window) {
        if (self->ring[self->ring_next])
            self->ring_failures--;
    } else
        self->ring_calls++;
    self->ring[self->ring_next] = failure;
    if (failure)
        self->ring_failures++;
    self->ring_next = (self->ring_next + 1) % self->config.window;
}

//  Whether the window's failure rate opens the circuit: on, enough calls,
//  and failures/calls >= failure_rate% (resilience4j: "equal or greater").
static bool
s_rate_exceeded (cm_breaker_t *self)
{
    return self->config.failure_rate > 0 && self->ring_calls >= self->config.min_calls &&
           self->ring_failures * 100 >= self->config.failure_rate * self->ring_calls;
}
