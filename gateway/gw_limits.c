/*  gw_limits.c: see gw_limits.h. */
#include "gw_limits.h"
#include <math.h>
#include <stdatomic.h>

//  Longest refill (burst / rate) accepted, in seconds: about three years.
#define S_MAX_WINDOW_S 1e8

//  The limits' table: name, the service it limits (NULL: any), settings.
static const struct {
    const char *name;      //  in headers, the 429 body and stats
    const char *service;   //  route service it applies to; NULL: every one
    const char *rps_var;   //  its rate's variable, for error messages
    const char *burst_var; //  its burst's variable, for error messages
    size_t rps_offset;     //  in gw_limits_config_t
    size_t burst_offset;   //  in gw_limits_config_t
} s_limits[GW_LIMIT_COUNT] = {
    [GW_LIMIT_KEY] = {"key", NULL, "RATE_LIMIT_KEY_RPS", "RATE_LIMIT_KEY_BURST",
                      offsetof (gw_limits_config_t, key_rps),
                      offsetof (gw_limits_config_t, key_burst)},
    [GW_LIMIT_CHAT] = {"chat", "chat", "RATE_LIMIT_CHAT_RPS", "RATE_LIMIT_CHAT_BURST",
                       offsetof (gw_limits_config_t, chat_rps),
                       offsetof (gw_limits_config_t, chat_burst)},
    [GW_LIMIT_INGESTION] = {"ingestion", "ingest", "RATE_LIMIT_INGESTION_RPS",
                            "RATE_LIMIT_INGESTION_BURST",
                            offsetof (gw_limits_config_t, ingestion_rps),
                            offsetof (gw_limits_config_t, ingestion_burst)},
    [GW_LIMIT_AGENT] = {"agent", "agent", "RATE_LIMIT_AGENT_RPS",
                        "RATE_LIMIT_AGENT_BURST",
                        offsetof (gw_limits_config_t, agent_rps),
                        offsetof (gw_limits_config_t, agent_burst)},
    [GW_LIMIT_GLOBAL] = {"global", NULL, "RATE_LIMIT_GLOBAL_RPS",
                         "RATE_LIMIT_GLOBAL_BURST",
                         offsetof (gw_limits_config_t, global_rps),
                         offsetof (gw_limits_config_t, global_burst)},
};

struct gw_limits_s {
    cm_ratelimit_t *limiters[GW_LIMIT_COUNT];      //  by gw_limit_t; key: keyed table
    char policies[GW_LIMIT_COUNT][64];             //  RateLimit-Policy value of each
    atomic_uint_fast64_t allowed[GW_LIMIT_COUNT];  //  passed and forwarded
    atomic_uint_fast64_t rejected[GW_LIMIT_COUNT]; //  refused in its name
    int64_t max_keys;                              //  RATE_LIMIT_MAX_KEYS
};

//  The rates and bursts of config, a burst of 0 made one second's worth;
//  -1 with a message naming the variables when a pair makes no sense.
static int
s_settings (const gw_limits_config_t *config, double *rates, int64_t *bursts, char *err,
            size_t errlen)
{
    const char *base = (const char *) config;
    for (int i = 0; i < GW_LIMIT_COUNT; i++) {
        rates[i] = *(const double *) (base + s_limits[i].rps_offset);
        bursts[i] = *(const int64_t *) (base + s_limits[i].burst_offset);
        if (rates[i] < 0 || rates[i] > 1e9) {
            snprintf (err, errlen, "%s: %g is not a rate", s_limits[i].rps_var, rates[i]);
            return -1;
        }
        if (bursts[i] < 0) {
            snprintf (err, errlen, "%s: %lld is not a burst", s_limits[i].burst_var,
                      (long long) bursts[i]);
            return -1;
        }
        if (rates[i] == 0)
            continue;
        //  No burst given: one second's worth.
        if (bursts[i] == 0)
            bursts[i] = (int64_t) fmax (1, ceil (rates[i]));
        if ((double) bursts[i] / rates[i] > S_MAX_WINDOW_S) {
            snprintf (err, errlen,
                      "%s, %s: a burst of %lld at a rate of %g/s takes more than %.0e s "
                      "to refill (burst / rate must be at most %.0e s)",
                      s_limits[i].burst_var, s_limits[i].rps_var, (long long) bursts[i],
                      rates[i], S_MAX_WINDOW_S, S_MAX_WINDOW_S);
            return -1;
        }
    }
    if (rates[GW_LIMIT_KEY] > 0 && config->max_keys < 1) {
        snprintf (err, errlen, "RATE_LIMIT_MAX_KEYS: must be at least 1");
        return -1;
    }
    return 0;
}

int
gw_limits_config_check (const gw_limits_config_t *config, char *err, size_t errlen)
{
    assert (config);
    double rates[GW_LIMIT_COUNT];
    int64_t bursts[GW_LIMIT_COUNT];
    return s_settings (config, rates, bursts, err, errlen);
}

gw_limits_t *
gw_limits_new (const gw_limits_config_t *config, char *err, size_t errlen)
{
    assert (config);
    //  Check everything before building anything.
    double rates[GW_LIMIT_COUNT];
    int64_t bursts[GW_LIMIT_COUNT];
    if (s_settings (config, rates, bursts, err, errlen))
        return NULL;
    gw_limits_t *self = cm_calloc (1, sizeof *self);
    self->max_keys = config->max_keys;
    for (int i = 0; i < GW_LIMIT_COUNT; i++) {
        bool keyed = i == GW_LIMIT_KEY && rates[i] > 0;
        self->limiters[i] = cm_ratelimit_new (rates[i], bursts[i] ? bursts[i] : 1,
                                              keyed ? (size_t) config->max_keys : 0);
        snprintf (self->policies[i], sizeof self->policies[i], "\"%s\";q=%lld;w=%lld",
                  s_limits[i].name, (long long) cm_ratelimit_burst (self->limiters[i]),
                  (long long) cm_ratelimit_window_s (self->limiters[i]));
        atomic_init (&self->allowed[i], 0);
        atomic_init (&self->rejected[i], 0);
    }
    return self;
}

void
gw_limits_destroy (gw_limits_t **self_p)
{
    assert (self_p);
    gw_limits_t *self = *self_p;
    if (!self)
        return;
    for (int i = 0; i < GW_LIMIT_COUNT; i++)
        cm_ratelimit_destroy (&self->limiters[i]);
    free (self);
    *self_p = NULL;
}

//  Fill the verdict from one limit's result.
static void
s_verdict (gw_limits_t *self, gw_limit_t limit, const cm_ratelimit_result_t *result,
           gw_limits_verdict_t *verdict)
{
    verdict->outcome = result->outcome;
    verdict->limit = s_limits[limit].name;
    snprintf (verdict->policy, sizeof verdict->policy, "%s", self->policies[limit]);
    snprintf (verdict->state, sizeof verdict->state, "\"%s\";r=%lld;t=%lld",
              s_limits[limit].name, (long long) result->remaining,
              (long long) cm_ratelimit_seconds (result->reset_us));
    if (result->outcome == CM_RATELIMIT_REJECTED) {
        cm_ratelimit_t *limiter = self->limiters[limit];
        snprintf (verdict->retry_after, sizeof verdict->retry_after, "%lld",
                  (long long) cm_ratelimit_seconds (result->retry_after_us));
        snprintf (verdict->message, sizeof verdict->message,
                  "Rate limit exceeded: %s (%g request%s/s%s, burst %lld).",
                  s_limits[limit].name, cm_ratelimit_rate (limiter),
                  cm_ratelimit_rate (limiter) == 1 ? "" : "s",
                  limit == GW_LIMIT_KEY ? " per API key" : "",
                  (long long) cm_ratelimit_burst (limiter));
    }
}

cm_ratelimit_outcome_t
gw_limits_check (gw_limits_t *self, const char *service, const char *identity,
                 int64_t now_us, gw_limits_verdict_t *verdict)
{
    assert (self && service && verdict);
    memset (verdict, 0, sizeof *verdict);
    verdict->outcome = CM_RATELIMIT_ALLOWED;
    //  The limits that apply, most specific first.
    gw_limit_t order[3];
    const char *keys[3];
    size_t count = 0;
    for (int i = 0; i < GW_LIMIT_COUNT; i++) {
        if (cm_ratelimit_unlimited (self->limiters[i]))
            continue;
        if (i == GW_LIMIT_KEY) {
            if (!identity || !*identity)
                continue;
            keys[count] = identity;
        } else if (s_limits[i].service && strcmp (s_limits[i].service, service))
            continue;
        else
            keys[count] = NULL;
        order[count++] = (gw_limit_t) i;
    }
    if (!count)
        return CM_RATELIMIT_ALLOWED;

    cm_ratelimit_result_t results[3];
    size_t taken = 0;
    while (taken < count &&
           cm_ratelimit_take (self->limiters[order[taken]], keys[taken], now_us,
                              &results[taken]) == CM_RATELIMIT_ALLOWED)
        taken++;
    size_t pick = 0;
    if (taken < count) {
        //  Refused by order[taken]. The limits before it give the request
        //  back; those after it are only asked, so that Retry-After covers
        //  the longest wait among them all.
        for (size_t i = 0; i < taken; i++)
            cm_ratelimit_undo (self->limiters[order[i]], keys[i], &results[i]);
        pick = taken;
        for (size_t i = taken + 1; i < count; i++) {
            cm_ratelimit_peek (self->limiters[order[i]], keys[i], now_us, &results[i]);
            if (results[i].outcome == CM_RATELIMIT_REJECTED &&
                results[i].retry_after_us > results[pick].retry_after_us)
                pick = i;
        }
        atomic_fetch_add (&self->rejected[order[pick]], 1);
    } else {
        //  Passed: the headers describe the limit closest to refusing.
        for (size_t i = 0; i < count; i++) {
            atomic_fetch_add (&self->allowed[order[i]], 1);
            if (results[i].remaining < results[pick].remaining ||
                (results[i].remaining == results[pick].remaining &&
                 results[i].reset_us > results[pick].reset_us))
                pick = i;
        }
    }
    s_verdict (self, order[pick], &results[pick], verdict);
    return verdict->outcome;
}

json_t *
gw_limits_verdict_body (const gw_limits_verdict_t *verdict)
{
    assert (verdict && verdict->limit);
    return json_pack ("{s:s, s:s}", "error", verdict->message, "limit", verdict->limit);
}

json_t *
gw_limits_stats (gw_limits_t *self)
{
    assert (self);
    json_t *stats = json_object ();
    for (int i = 0; i < GW_LIMIT_COUNT; i++) {
        cm_ratelimit_t *limiter = self->limiters[i];
        bool unlimited = cm_ratelimit_unlimited (limiter);
        json_t *entry =
            json_pack ("{s:f, s:I, s:I, s:I, s:I}", "requests_per_second",
                       cm_ratelimit_rate (limiter), "burst",
                       (json_int_t) (unlimited ? 0 : cm_ratelimit_burst (limiter)),
                       "window_seconds", (json_int_t) cm_ratelimit_window_s (limiter),
                       "allowed", (json_int_t) atomic_load (&self->allowed[i]),
                       "rejected", (json_int_t) atomic_load (&self->rejected[i]));
        if (i == GW_LIMIT_KEY) {
            json_object_set_new (entry, "keys",
                                 json_integer ((json_int_t) cm_ratelimit_keys (limiter)));
            json_object_set_new (entry, "max_keys", json_integer (self->max_keys));
            json_object_set_new (
                entry, "evictions",
                json_integer ((json_int_t) cm_ratelimit_evictions (limiter)));
        }
        json_object_set_new (stats, s_limits[i].name, entry);
    }
    return stats;
}

const char *
gw_limits_name (gw_limit_t limit)
{
    assert (limit >= 0 && limit < GW_LIMIT_COUNT);
    return s_limits[limit].name;
}
