/*  test_agent_origins.c: the circuit breakers per origin of agent flows'
    outbound calls: origins parsed from URLs (default ports, case, IPv6
    literals), counting, open, half-open and closed again with time passed
    in, origins kept apart, the LRU bound, stale tickets, threads and the
    metrics. */
#include <criterion/criterion.h>
#include "agent_origins.h"
#include "cm_metrics.h"
#include <pthread.h>

//  The defaults with this threshold and first cool-down.
static agent_origins_t *
s_origins (int64_t threshold, int64_t reset_ms, size_t max_origins)
{
    cm_breaker_config_t config;
    cm_breaker_config_defaults (&config);
    config.failure_threshold = threshold;
    config.reset_ms = reset_ms;
    config.max_reset_ms = reset_ms * 4;
    return agent_origins_new (&config, max_origins);
}

typedef enum { S_OK, S_FAIL, S_RELEASE } s_outcome_t;

//  One call to url at now_ms that ends as outcome (unless refused).
static agent_origins_result_t
s_call (agent_origins_t *origins, const char *url, int64_t now_ms, s_outcome_t outcome)
{
    agent_origins_ticket_t ticket;
    agent_origins_result_t result = agent_origins_acquire (origins, url, now_ms, &ticket);
    if (result == AGENT_ORIGINS_ALLOWED) {
        if (outcome == S_OK)
            agent_origins_success (origins, &ticket, now_ms);
        else if (outcome == S_FAIL)
            agent_origins_failure (origins, &ticket, now_ms);
        else
            agent_origins_release (origins, &ticket);
    }
    return result;
}

static cm_breaker_state_t
s_state (agent_origins_t *origins, const char *origin)
{
    cm_breaker_state_t state = CM_BREAKER_CLOSED;
    cr_assert (agent_origins_lookup (origins, origin, &state), "%s is not tracked",
               origin);
    return state;
}

Test (agent_origins, walkthrough)
{
    //  Each origin a flow calls gets a breaker with agentd's settings.
    agent_origins_t *origins = s_origins (3, 30000, 0);
    int64_t now = 1000;

    //  Ask before the call; report how it ended with the ticket.
    agent_origins_ticket_t ticket;
    cr_assert_eq (
        agent_origins_acquire (origins, "https://API.example.com/v1/x?q=1", now, &ticket),
        AGENT_ORIGINS_ALLOWED);
    cr_assert_str_eq (ticket.origin, "https://api.example.com:443");
    agent_origins_failure (origins, &ticket, now);

    //  Three failures in a row open that origin's circuit...
    s_call (origins, "https://api.example.com/other", now, S_FAIL);
    s_call (origins, "https://api.example.com:443/", now, S_FAIL);
    cr_assert_eq (s_state (origins, "https://api.example.com:443"), CM_BREAKER_OPEN);
    //  ... so the next call is refused without being made, with the reason.
    cr_assert_eq (agent_origins_acquire (origins, "https://api.example.com/v1",
                                         now + 1000, &ticket),
                  AGENT_ORIGINS_REJECTED);
    cr_assert_str_eq (ticket.origin, "https://api.example.com:443");
    cr_assert_eq (ticket.failures, 3);
    cr_assert_eq (ticket.retry_after_ms, 29000);
    //  Other origins are not touched.
    cr_assert_eq (s_call (origins, "https://partner.example.org/", now, S_OK),
                  AGENT_ORIGINS_ALLOWED);

    agent_origins_stats_t stats;
    agent_origins_stats (origins, &stats);
    cr_assert_eq (stats.origins, 2);
    cr_assert_eq (stats.open, 1);
    cr_assert_eq (stats.refused, 1);
    cr_assert_eq (stats.evicted, 0);
    agent_origins_destroy (&origins);
    cr_assert_null (origins);
    agent_origins_destroy (&origins); //  NULL-safe
}

Test (agent_origins, parse_default_ports_case_and_ipv6)
{
    struct {
        const char *url, *origin;
    } good[] = {
        {"http://example.com", "http://example.com:80"},
        {"http://example.com/", "http://example.com:80"},
        {"https://example.com/a/b?c=d#e", "https://example.com:443"},
        {"HTTPS://Example.COM:8443/x", "https://example.com:8443"},
        {"http://example.com:80/x", "http://example.com:80"},
        {"https://user:secret@example.com/x", "https://example.com:443"},
        {"http://93.184.216.34:8080/", "http://93.184.216.34:8080"},
        {"http://[::1]/", "http://[::1]:80"},
        {"https://[2001:DB8::1]:8443/x", "https://[2001:db8::1]:8443"},
        {"http://[2001:db8:0:0:0:0:0:1]/", "http://[2001:db8::1]:80"},
    };
    char origin[AGENT_ORIGIN_SIZE];
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
        cr_expect_eq (agent_origins_parse (good[i].url, origin, sizeof origin), 0, "%s",
                      good[i].url);
        cr_expect_str_eq (origin, good[i].origin, "%s", good[i].url);
    }
    //  http and https origins are apart, and so are ports.
    char other[AGENT_ORIGIN_SIZE];
    agent_origins_parse ("http://example.com", origin, sizeof origin);
    agent_origins_parse ("https://example.com", other, sizeof other);
    cr_assert_str_neq (origin, other);

    const char *bad[] = {"ftp://example.com/", "file:///etc/passwd",
                         "example.com/x",      "http://",
                         "not a url",          "",
                         "gopher://[::1]/"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        cr_expect_eq (agent_origins_parse (bad[i], origin, sizeof origin), -1, "%s",
                      bad[i]);
        cr_expect_str_empty (origin, "%s", bad[i]);
    }
    //  An origin that does not fit is not cut (two origins could then meet).
    char small[20];
    cr_assert_eq (
        agent_origins_parse ("https://a-long-host.example.com/", small, sizeof small),
        -1);
    cr_assert_str_empty (small);
}

//  A URL with no origin is let through untracked: agent_http refuses it.
Test (agent_origins, url_without_origin_is_not_tracked)
{
    agent_origins_t *origins = s_origins (1, 1000, 0);
    for (int i = 0; i < 3; i++)
        cr_assert_eq (s_call (origins, "ftp://example.com/", 0, S_FAIL),
                      AGENT_ORIGINS_ALLOWED);
    agent_origins_stats_t stats;
    agent_origins_stats (origins, &stats);
    cr_assert_eq (stats.origins, 0);
    agent_origins_destroy (&origins);
}

//  Failures must be consecutive; a success (any answer) resets them; a
//  release counts neither way.
Test (agent_origins, counts_consecutive_failures)
{
    agent_origins_t *origins = s_origins (3, 1000, 0);
    const char *url = "https://api.example.com/";
    const char *origin = "https://api.example.com:443";
    s_call (origins, url, 0, S_FAIL);
    s_call (origins, url, 0, S_FAIL);
    s_call (origins, url, 0, S_OK); //  e.g. a 404: it answered
    s_call (origins, url, 0, S_FAIL);
    s_call (origins, url, 0, S_RELEASE); //  cancelled, refused address, too large
    s_call (origins, url, 0, S_FAIL);
    cr_assert_eq (s_state (origins, origin), CM_BREAKER_CLOSED);
    s_call (origins, url, 0, S_FAIL);
    cr_assert_eq (s_state (origins, origin), CM_BREAKER_OPEN);
    agent_origins_destroy (&origins);
}

//  Open, then half-open at the first call after the cool-down; a probe
//  that fails reopens for twice as long, one that succeeds closes.
Test (agent_origins, opens_probes_and_closes)
{
    agent_origins_t *origins = s_origins (2, 1000, 0);
    const char *url = "http://dead.example.net:8080/x";
    const char *origin = "http://dead.example.net:8080";
    int64_t now = 50000;
    s_call (origins, url, now, S_FAIL);
    s_call (origins, url, now, S_FAIL);
    cr_assert_eq (s_state (origins, origin), CM_BREAKER_OPEN);

    agent_origins_ticket_t ticket;
    cr_assert_eq (agent_origins_acquire (origins, url, now + 999, &ticket),
                  AGENT_ORIGINS_REJECTED);
    cr_assert_eq (ticket.retry_after_ms, 1);
    //  The cool-down is over: this call is the probe; others wait for it.
    agent_origins_ticket_t probe;
    cr_assert_eq (agent_origins_acquire (origins, url, now + 1000, &probe),
                  AGENT_ORIGINS_ALLOWED);
    cr_assert_eq (s_state (origins, origin), CM_BREAKER_HALF_OPEN);
    cr_assert_eq (agent_origins_acquire (origins, url, now + 1000, &ticket),
                  AGENT_ORIGINS_REJECTED);
    agent_origins_failure (origins, &probe, now + 1100);
    cr_assert_eq (s_state (origins, origin), CM_BREAKER_OPEN);
    cr_assert_eq (agent_origins_acquire (origins, url, now + 1100, &ticket),
                  AGENT_ORIGINS_REJECTED);
    cr_assert_eq (ticket.retry_after_ms, 2000, "the cool-down doubles");
    cr_assert_eq (ticket.failures, 3);

    cr_assert_eq (agent_origins_acquire (origins, url, now + 3100, &probe),
                  AGENT_ORIGINS_ALLOWED);
    agent_origins_success (origins, &probe, now + 3200);
    cr_assert_eq (s_state (origins, origin), CM_BREAKER_CLOSED);
    cr_assert_eq (s_call (origins, url, now + 3200, S_OK), AGENT_ORIGINS_ALLOWED);
    agent_origins_destroy (&origins);
}

//  The bound: a new origin evicts the least recently asked closed one, and
//  an open circuit outlives closed ones that are more recent.
Test (agent_origins, lru_bound_keeps_open_circuits)
{
    agent_origins_t *origins = s_origins (1, 60000, 3);
    s_call (origins, "https://a.example/", 0, S_FAIL); //  a: open
    s_call (origins, "https://b.example/", 0, S_OK);
    s_call (origins, "https://c.example/", 0, S_OK);
    s_call (origins, "https://b.example/", 0, S_OK); //  c is now the oldest closed
    s_call (origins, "https://d.example/", 0, S_OK);
    agent_origins_stats_t stats;
    agent_origins_stats (origins, &stats);
    cr_assert_eq (stats.origins, 3);
    cr_assert_eq (stats.evicted, 1);
    cr_assert (agent_origins_lookup (origins, "https://a.example:443", NULL),
               "the open circuit was dropped");
    cr_assert_not (agent_origins_lookup (origins, "https://c.example:443", NULL));
    cr_assert (agent_origins_lookup (origins, "https://b.example:443", NULL));
    cr_assert (agent_origins_lookup (origins, "https://d.example:443", NULL));
    cr_assert_eq (s_call (origins, "https://a.example/", 1, S_OK),
                  AGENT_ORIGINS_REJECTED);

    //  All open: the least recently asked goes (b; a was just asked).
    s_call (origins, "https://b.example/", 2, S_FAIL);
    s_call (origins, "https://d.example/", 3, S_FAIL);
    s_call (origins, "https://a.example/", 4, S_OK); //  refused, but asked
    s_call (origins, "https://e.example/", 5, S_OK);
    cr_assert_not (agent_origins_lookup (origins, "https://b.example:443", NULL));
    cr_assert (agent_origins_lookup (origins, "https://a.example:443", NULL));
    cr_assert (agent_origins_lookup (origins, "https://e.example:443", NULL));
    agent_origins_stats (origins, &stats);
    cr_assert_eq (stats.origins, 3);
    cr_assert_eq (stats.open, 2);
    cr_assert_eq (stats.evicted, 2);

    //  Many more origins than the bound: never more than 3 kept.
    for (int i = 0; i < 100; i++) {
        char url[64];
        snprintf (url, sizeof url, "http://h%d.example:81/", i);
        s_call (origins, url, 10, i % 2 ? S_OK : S_FAIL);
    }
    agent_origins_stats (origins, &stats);
    cr_assert_eq (stats.origins, 3);
    agent_origins_destroy (&origins);
}

//  The outcome of a call whose origin was evicted meanwhile is dropped: it
//  must not reach the new breaker of the same origin, which did not allow
//  it (and whose permits are of other epochs).
Test (agent_origins, outcome_after_eviction_is_dropped)
{
    agent_origins_t *origins = s_origins (1, 60000, 1);
    agent_origins_ticket_t old;
    cr_assert_eq (agent_origins_acquire (origins, "https://a.example/", 0, &old),
                  AGENT_ORIGINS_ALLOWED);
    s_call (origins, "https://b.example/", 0, S_OK); //  evicts a
    cr_assert_eq (s_call (origins, "https://a.example/", 0, S_OK),
                  AGENT_ORIGINS_ALLOWED); //  a again, evicts b
    agent_origins_failure (origins, &old, 1);
    cr_assert_eq (s_state (origins, "https://a.example:443"), CM_BREAKER_CLOSED,
                  "a stale failure opened the new circuit");
    agent_origins_release (origins, &old);
    agent_origins_success (origins, &old, 1);
    agent_origins_destroy (&origins);
}

//  Worker threads at once, over more origins than the bound; run under the
//  sanitizers this checks the locking.
typedef struct {
    agent_origins_t *origins;
    int seed;
} s_worker_t;

static void *
s_worker (void *arg)
{
    s_worker_t *worker = (s_worker_t *) arg;
    for (int i = 0; i < 4000; i++) {
        char url[64];
        snprintf (url, sizeof url, "https://h%d.example/", (i * 7 + worker->seed) % 40);
        s_call (worker->origins, url, i, (s_outcome_t) ((i + worker->seed) % 3));
    }
    return NULL;
}

Test (agent_origins, threads_share_the_map)
{
    agent_origins_t *origins = s_origins (2, 50, 16);
    pthread_t threads[4];
    s_worker_t workers[4];
    for (int i = 0; i < 4; i++) {
        workers[i] = (s_worker_t){origins, i};
        pthread_create (&threads[i], NULL, s_worker, &workers[i]);
    }
    for (int i = 0; i < 4; i++)
        pthread_join (threads[i], NULL);
    agent_origins_stats_t stats;
    agent_origins_stats (origins, &stats);
    cr_assert_leq (stats.origins, 16);
    cr_assert_gt (stats.evicted, 0);
    agent_origins_destroy (&origins);
}

Test (agent_origins, metrics_have_no_origin_label)
{
    agent_origins_t *origins = s_origins (1, 60000, 0);
    cm_metrics_t *metrics = cm_metrics_new ();
    agent_origins_attach_metrics (origins, metrics);
    json_t *snapshot = cm_metrics_snapshot (metrics);
    cr_assert_not_null (
        cm_metrics_series (snapshot, "llmrt_agent_origin_circuits_open", NULL),
        "registered at zero before any call");
    json_decref (snapshot);

    s_call (origins, "https://a.example/", 0, S_FAIL);
    s_call (origins, "https://a.example/", 1, S_OK); //  refused
    s_call (origins, "https://a.example/", 2, S_OK); //  refused
    s_call (origins, "https://b.example/", 2, S_OK);
    snapshot = cm_metrics_snapshot (metrics);
    cr_assert_eq (cm_metrics_sum (snapshot, "llmrt_agent_origins", NULL), 2);
    cr_assert_eq (cm_metrics_sum (snapshot, "llmrt_agent_origin_circuits_open", NULL), 1);
    cr_assert_eq (
        cm_metrics_sum (snapshot, "llmrt_agent_origin_calls_refused_total", NULL), 2);
    cr_assert_eq (cm_metrics_sum (snapshot, "llmrt_agent_origin_evictions_total", NULL),
                  0);
    //  One series per family, whatever the origins.
    cr_assert_not_null (
        cm_metrics_series (snapshot, "llmrt_agent_origin_calls_refused_total", NULL));
    char *text = cm_metrics_prometheus (snapshot, NULL);
    cr_assert_null (strstr (text, "a.example"), "%s", text);
    free (text);
    json_decref (snapshot);
    cm_metrics_destroy (&metrics);
    agent_origins_destroy (&origins);
}
