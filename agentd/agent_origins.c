/*  agent_origins.c: see agent_origins.h. */
#include "agent_origins.h"
#include "cm_log.h"
#include "cm_metrics.h"
#include <ctype.h>
#include <curl/curl.h>
#include <czmq.h>
#include <pthread.h>

//  One origin's breaker.
typedef struct {
    uint64_t id;           //  unique in the map's life; tickets carry it
    char *origin;          //  the key, "scheme://host:port"
    cm_breaker_t *breaker; //  its circuit (named after the origin, for logs)
    int64_t failures;      //  consecutive failures reported (a success resets)
    void *handle;          //  its place in the LRU list
} s_entry_t;

struct agent_origins_s {
    cm_breaker_config_t config; //  every breaker's settings
    size_t max_origins;         //  entries at most
    pthread_mutex_t lock;       //  guards everything below
    zhashx_t *entries;          //  origin -> s_entry_t (owns them)
    zlistx_t *lru;              //  the entries, least recently asked first
    uint64_t next_id;           //  the next entry's id (0 means "not tracked")
    uint64_t refused;           //  acquires refused
    uint64_t evicted;           //  entries dropped for room
};

static void s_entry_free (void **item_p);
static void s_evict (agent_origins_t *self);
static s_entry_t *s_entry_of (agent_origins_t *self,
                              const agent_origins_ticket_t *ticket);

agent_origins_t *
agent_origins_new (const cm_breaker_config_t *config, size_t max_origins)
{
    assert (config);
    agent_origins_t *self = cm_calloc (1, sizeof *self);
    self->config = *config;
    self->max_origins = max_origins ? max_origins : AGENT_ORIGINS_DEFAULT_MAX;
    pthread_mutex_init (&self->lock, NULL);
    self->entries = zhashx_new ();
    zhashx_set_destructor (self->entries, s_entry_free);
    self->lru = zlistx_new ();
    self->next_id = 1;
    return self;
}

void
agent_origins_destroy (agent_origins_t **self_p)
{
    assert (self_p);
    agent_origins_t *self = *self_p;
    if (!self)
        return;
    //  The list only points at entries; the hash owns them.
    zlistx_destroy (&self->lru);
    zhashx_destroy (&self->entries);
    pthread_mutex_destroy (&self->lock);
    free (self);
    *self_p = NULL;
}

int
agent_origins_parse (const char *url, char *origin, size_t size)
{
    assert (url && origin && size);
    *origin = 0;
    CURLU *parsed = curl_url ();
    char *scheme = NULL, *host = NULL, *port = NULL;
    int rc = -1;
    //  Parsed as agent_http parses it, so the origin is the one it calls:
    //  libcurl also writes IPv4 and IPv6 literals in one canonical form.
    if (curl_url_set (parsed, CURLUPART_URL, url, 0) == CURLUE_OK &&
        curl_url_get (parsed, CURLUPART_SCHEME, &scheme, 0) == CURLUE_OK &&
        (!strcasecmp (scheme, "http") || !strcasecmp (scheme, "https")) &&
        curl_url_get (parsed, CURLUPART_HOST, &host, 0) == CURLUE_OK && *host &&
        curl_url_get (parsed, CURLUPART_PORT, &port, CURLU_DEFAULT_PORT) == CURLUE_OK) {
        int length = snprintf (origin, size, "%s://%s:%s", scheme, host, port);
        if (length > 0 && (size_t) length < size) {
            //  Host names are case-insensitive; one origin, one breaker.
            for (char *p = origin; *p; p++)
                *p = (char) tolower ((unsigned char) *p);
            rc = 0;
        } else
            *origin = 0;
    }
    curl_free (scheme);
    curl_free (host);
    curl_free (port);
    curl_url_cleanup (parsed);
    return rc;
}

agent_origins_result_t
agent_origins_acquire (agent_origins_t *self, const char *url, int64_t now_ms,
                       agent_origins_ticket_t *ticket)
{
    assert (self && url && ticket);
    memset (ticket, 0, sizeof *ticket);
    //  No origin: agent_http refuses the URL without sending anything, so
    //  there is nothing to guard.
    if (agent_origins_parse (url, ticket->origin, sizeof ticket->origin))
        return AGENT_ORIGINS_ALLOWED;

    pthread_mutex_lock (&self->lock);
    s_entry_t *entry = (s_entry_t *) zhashx_lookup (self->entries, ticket->origin);
    if (entry)
        zlistx_move_end (self->lru, entry->handle);
    else {
        if (zhashx_size (self->entries) >= self->max_origins)
            s_evict (self);
        entry = cm_calloc (1, sizeof *entry);
        entry->id = self->next_id++;
        entry->origin = cm_strdup (ticket->origin);
        entry->breaker = cm_breaker_new (ticket->origin, &self->config);
        entry->handle = zlistx_add_end (self->lru, entry);
        zhashx_insert (self->entries, entry->origin, entry);
    }
    int64_t retry_ms = 0;
    agent_origins_result_t result = AGENT_ORIGINS_ALLOWED;
    if (cm_breaker_acquire (entry->breaker, now_ms, &ticket->permit, &retry_ms) ==
        CM_BREAKER_REJECTED) {
        result = AGENT_ORIGINS_REJECTED;
        ticket->retry_after_ms = retry_ms;
        ticket->failures = entry->failures;
        self->refused++;
    } else
        ticket->entry = entry->id;
    pthread_mutex_unlock (&self->lock);
    return result;
}

void
agent_origins_success (agent_origins_t *self, const agent_origins_ticket_t *ticket,
                       int64_t now_ms)
{
    assert (self && ticket);
    pthread_mutex_lock (&self->lock);
    s_entry_t *entry = s_entry_of (self, ticket);
    if (entry) {
        entry->failures = 0;
        cm_breaker_success (entry->breaker, ticket->permit, now_ms);
    }
    pthread_mutex_unlock (&self->lock);
}

void
agent_origins_failure (agent_origins_t *self, const agent_origins_ticket_t *ticket,
                       int64_t now_ms)
{
    assert (self && ticket);
    pthread_mutex_lock (&self->lock);
    s_entry_t *entry = s_entry_of (self, ticket);
    if (entry) {
        entry->failures++;
        cm_breaker_failure (entry->breaker, ticket->permit, now_ms);
    }
    pthread_mutex_unlock (&self->lock);
}

void
agent_origins_release (agent_origins_t *self, const agent_origins_ticket_t *ticket)
{
    assert (self && ticket);
    pthread_mutex_lock (&self->lock);
    s_entry_t *entry = s_entry_of (self, ticket);
    if (entry)
        cm_breaker_release (entry->breaker, ticket->permit);
    pthread_mutex_unlock (&self->lock);
}

bool
agent_origins_lookup (agent_origins_t *self, const char *origin,
                      cm_breaker_state_t *state)
{
    assert (self && origin);
    pthread_mutex_lock (&self->lock);
    s_entry_t *entry = (s_entry_t *) zhashx_lookup (self->entries, origin);
    if (entry && state)
        *state = cm_breaker_state (entry->breaker);
    pthread_mutex_unlock (&self->lock);
    return entry != NULL;
}

void
agent_origins_stats (agent_origins_t *self, agent_origins_stats_t *stats)
{
    assert (self && stats);
    memset (stats, 0, sizeof *stats);
    pthread_mutex_lock (&self->lock);
    stats->origins = zhashx_size (self->entries);
    for (s_entry_t *entry = (s_entry_t *) zlistx_first (self->lru); entry;
         entry = (s_entry_t *) zlistx_next (self->lru))
        if (cm_breaker_state (entry->breaker) != CM_BREAKER_CLOSED)
            stats->open++;
    stats->refused = self->refused;
    stats->evicted = self->evicted;
    pthread_mutex_unlock (&self->lock);
}

void
agent_origins_collect (cm_metrics_t *metrics, void *origins)
{
    assert (metrics && origins);
    agent_origins_stats_t stats;
    agent_origins_stats ((agent_origins_t *) origins, &stats);
    //  One series each, never an origin label: origins come from flows,
    //  which users write, so labelled series would have no bound.
    cm_metric_set (cm_metrics_gauge (metrics, "llmrt_agent_origins",
                                     "Origins (scheme://host:port) agent flows called "
                                     "that have a circuit breaker now (at most 1024).",
                                     NULL),
                   (double) stats.origins);
    cm_metric_set (cm_metrics_gauge (metrics, "llmrt_agent_origin_circuits_open",
                                     "Origins whose circuit is open or half-open now: "
                                     "steps calling them fail at once.",
                                     NULL),
                   (double) stats.open);
    cm_metric_set (
        cm_metrics_counter (metrics, "llmrt_agent_origin_calls_refused_total",
                            "apiCall/webScraping steps failed at once, without "
                            "a call, because their origin's circuit was open.",
                            NULL),
        (double) stats.refused);
    cm_metric_set (cm_metrics_counter (metrics, "llmrt_agent_origin_evictions_total",
                                       "Origins' circuit breakers forgotten to make room "
                                       "for new origins.",
                                       NULL),
                   (double) stats.evicted);
}

void
agent_origins_attach_metrics (agent_origins_t *self, cm_metrics_t *metrics)
{
    assert (self && metrics);
    //  Register now, so the series exist (at zero) before the first snapshot.
    agent_origins_collect (metrics, self);
    cm_metrics_collector (metrics, agent_origins_collect, self);
}

//  --- private helpers ----------------------------------------------------------------

static void
s_entry_free (void **item_p)
{
    s_entry_t *entry = (s_entry_t *) *item_p;
    if (entry) {
        cm_breaker_destroy (&entry->breaker);
        free (entry->origin);
        free (entry);
        *item_p = NULL;
    }
}

//  Lock held, map full: drop the least recently asked closed origin, which
//  forgets only a count of recent failures below the threshold; when every
//  origin is open or half-open, the least recently asked one.
static void
s_evict (agent_origins_t *self)
{
    s_entry_t *victim = NULL;
    for (s_entry_t *entry = (s_entry_t *) zlistx_first (self->lru); entry;
         entry = (s_entry_t *) zlistx_next (self->lru))
        if (cm_breaker_state (entry->breaker) == CM_BREAKER_CLOSED) {
            victim = entry;
            break;
        }
    if (!victim) {
        victim = (s_entry_t *) zlistx_first (self->lru);
        cm_warn ("agent origins: all %zu tracked origins have open circuits; "
                 "forgetting %s",
                 zhashx_size (self->entries), victim->origin);
    }
    zlistx_delete (self->lru, victim->handle);
    //  The hash frees the entry, whose origin is the key being looked up.
    char key[AGENT_ORIGIN_SIZE];
    snprintf (key, sizeof key, "%s", victim->origin);
    zhashx_delete (self->entries, key);
    self->evicted++;
}

//  Lock held: the entry that gave ticket its permit, NULL when the call was
//  not tracked or its entry was evicted since (a new entry for the same
//  origin did not allow that call, and its epochs are not the permit's).
static s_entry_t *
s_entry_of (agent_origins_t *self, const agent_origins_ticket_t *ticket)
{
    if (!ticket->entry)
        return NULL;
    s_entry_t *entry = (s_entry_t *) zhashx_lookup (self->entries, ticket->origin);
    return entry && entry->id == ticket->entry ? entry : NULL;
}
