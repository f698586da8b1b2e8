/*  ingestd: the ingest daemon. It connects to the gateway, registers, heartbeats
    and drains on SIGTERM; its routes arrive with their own issue. */
#include "cm_common.h"
#include "cm_config.h"
#include "cm_breaker.h"
#include "cm_log.h"
#include "cm_metrics.h"
#include "cm_worker.h"

typedef struct {
    int64_t concurrency;         //  INGESTION_QUEUE_CONCURRENCY
    int64_t max_pending;         //  INGESTION_QUEUE_MAX_PENDING
    cm_breaker_config_t breaker; //  INGESTION_CIRCUIT_*
} s_config_t;

static const cm_conf_entry_t s_table[] = {
    {"INGESTION_QUEUE_CONCURRENCY", CM_CONF_INT, "3", 1, 1024,
     offsetof (s_config_t, concurrency), "ingest requests running at once per instance"},
    {"INGESTION_QUEUE_MAX_PENDING", CM_CONF_INT, "64", 0, 100000,
     offsetof (s_config_t, max_pending),
     "ingest requests waiting beyond those (then 429)"},
    CM_BREAKER_CONF_ENTRIES ("INGESTION", s_config_t, breaker),
    {NULL, 0, NULL, 0, 0, 0, NULL},
};

//  No routes yet: every request the gateway sends is answered 404.
static const cm_route_t s_routes[] = {
    {NULL, NULL, NULL},
};

int
main (int argc, char **argv)
{
    cm_log_init ("ingestd");
    int rc = cm_main_args (argc, argv, "ingestd", "The ingest daemon of llmrt.", s_table);
    if (rc > 0 && argc > 1 && (!strcmp (argv[1], "--help") || !strcmp (argv[1], "-h"))) {
        printf ("\nCommon daemon settings:\n");
        cm_config_usage (cm_worker_config_table (), stdout);
    }
    if (rc)
        return rc > 0 ? 0 : 2;
    s_config_t config = {0};
    char err[512];
    if (cm_config_load (s_table, &config, err, sizeof err) ||
        cm_breaker_config_check (&config.breaker, "INGESTION", err, sizeof err)) {
        fprintf (stderr, "ingestd: bad configuration: %s\n", err);
        return 2;
    }
    //  The breaker around the embedder (ingestion's upstream): no upstream
    //  calls yet, so it waits for the issue that brings them. The handlers get
    //  it as their arg; its state is reported (llmrt_circuit_*) already.
    cm_breaker_t *breaker = cm_breaker_new ("ingest", &config.breaker);
    cm_metrics_t *metrics = cm_metrics_new ();
    cm_breaker_attach_metrics (breaker, metrics);
    rc = cm_worker_main ("ingest", s_routes, breaker, (size_t) config.concurrency,
                         (size_t) config.max_pending, metrics);
    cm_metrics_destroy (&metrics);
    cm_breaker_destroy (&breaker);
    return rc;
}
