/*  agentd: the agent daemon. Reads its settings, opens the database, and
    serves the agent-flow routes (agent_service) as the gateway's "agent"
    service until SIGINT/SIGTERM. Every run goes through the worker's queue
    (AGENT_FLOW_QUEUE_CONCURRENCY) under the `agent` circuit (the LLM
    provider), and each origin a step calls has a circuit of its own, both
    with the AGENT_CIRCUIT_* settings; llmInstruction steps use the same LLM
    provider settings as chatd. */
#include "cm_common.h"
#include "cm_config.h"
#include "cm_storage.h"
#include "cm_breaker.h"
#include "cm_log.h"
#include "cm_metrics.h"
#include "cm_worker.h"
#include "agent_http.h"
#include "agent_service.h"
#include "chat_settings.h"
#include <curl/curl.h>

typedef struct {
    int64_t concurrency;         //  AGENT_FLOW_QUEUE_CONCURRENCY
    int64_t max_pending;         //  AGENT_FLOW_QUEUE_MAX_PENDING
    char *run_dir;               //  runtime directory; storage defaults under it
    char *storage_dir;           //  where llmrt.db lives (NULL: $RUN_DIR/storage)
    char *allowlist;             //  AGENT_HTTP_ALLOWLIST
    int64_t max_bytes;           //  AGENT_HTTP_MAX_BYTES
    int64_t step_timeout_ms;     //  AGENT_STEP_TIMEOUT_MS
    chat_settings_t llm;         //  LLM_*, as chatd
    cm_breaker_config_t breaker; //  AGENT_CIRCUIT_*
} s_config_t;

static const cm_conf_entry_t s_table[] = {
    {"AGENT_FLOW_QUEUE_CONCURRENCY", CM_CONF_INT, "2", 1, 1024,
     offsetof (s_config_t, concurrency),
     "agent requests (flow runs included) running at once per instance"},
    {"AGENT_FLOW_QUEUE_MAX_PENDING", CM_CONF_INT, "64", 0, 100000,
     offsetof (s_config_t, max_pending),
     "agent requests waiting beyond those (then 429)"},
    CM_STORAGE_CONF_ENTRIES (s_config_t, run_dir, storage_dir),
    {"AGENT_HTTP_ALLOWLIST", CM_CONF_STR, NULL, 0, 0, offsetof (s_config_t, allowlist),
     "comma-separated host names or IP addresses (IPv6 without brackets) flows may "
     "reach even when they resolve to loopback, private or link-local addresses; "
     "exact names, no ports, schemes or wildcards; spaces around an item are "
     "ignored, an empty item is refused (unset: none)"},
    {"AGENT_HTTP_MAX_BYTES", CM_CONF_INT, "1048576", 1, 1073741824,
     offsetof (s_config_t, max_bytes),
     "largest response body a flow's HTTP call may receive (then the step fails)"},
    {"AGENT_STEP_TIMEOUT_MS", CM_CONF_INT, "30000", 1, 86400000,
     offsetof (s_config_t, step_timeout_ms),
     "limit of one step (the request's deadline, REQUEST_TIMEOUT_MS, bounds the run)"},
    //  llmInstruction steps call the same provider as chatd, set the same way.
    CHAT_SETTINGS_CONF_ENTRIES (s_config_t, llm),
    CM_BREAKER_CONF_ENTRIES ("AGENT", s_config_t, breaker),
    {NULL, 0, NULL, 0, 0, 0, NULL},
};

int
main (int argc, char **argv)
{
    cm_log_init ("agentd");
    int rc = cm_worker_args (argc, argv, "agentd",
                             "The agent daemon of llmrt: agent flows behind the gateway.",
                             s_table);
    if (rc >= 0)
        return rc;
    s_config_t config = {0};
    char err[512];
    agent_service_t *service = NULL;
    cm_metrics_t *metrics = NULL;
    rc = 2;
    if (curl_global_init (CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        fprintf (stderr, "agentd: libcurl cannot be initialised\n");
        return 1;
    }
    if (cm_config_load (s_table, &config, err, sizeof err) ||
        cm_worker_config_check (err, sizeof err) ||
        cm_config_check_storage (config.storage_dir, config.run_dir, err, sizeof err) ||
        agent_http_allowlist_check (config.allowlist, err, sizeof err) ||
        cm_breaker_config_check (&config.breaker, "AGENT", err, sizeof err)) {
        fprintf (stderr, "agentd: bad configuration: %s\n", err);
        goto cleanup;
    }
    chat_provider_t *provider = chat_settings_provider (&config.llm, err, sizeof err);
    if (!provider) {
        fprintf (stderr, "agentd: %s\n", err);
        goto cleanup;
    }
    cm_storage_dir_default (&config.storage_dir, config.run_dir);
    cm_breaker_t *breaker = cm_breaker_new ("agent", &config.breaker);
    agent_service_config_t settings = {
        .allowlist = config.allowlist,
        .max_bytes = config.max_bytes,
        .step_timeout_ms = config.step_timeout_ms,
        .origin_breaker = &config.breaker,
    };
    service = agent_service_new (config.storage_dir, &settings, &provider, &breaker, err,
                                 sizeof err);
    if (!service) {
        cm_error ("cannot open the database (STORAGE_DIR=%s): %s", config.storage_dir,
                  err);
        rc = 1;
        goto cleanup;
    }
    metrics = cm_metrics_new ();
    cm_breaker_attach_metrics (agent_service_breaker (service), metrics);
    agent_origins_attach_metrics (agent_service_origins (service), metrics);
    cm_info ("storage %s/llmrt.db, provider %s, concurrency %lld, max pending %lld, "
             "allowlist %s, step timeout %lld ms, max body %lld bytes",
             config.storage_dir, config.llm.provider, (long long) config.concurrency,
             (long long) config.max_pending,
             config.allowlist ? config.allowlist : "(none)",
             (long long) config.step_timeout_ms, (long long) config.max_bytes);
    rc = cm_worker_main ("agent", agent_service_routes (), service,
                         (size_t) config.concurrency, (size_t) config.max_pending,
                         metrics);
cleanup:
    cm_metrics_destroy (&metrics);
    agent_service_destroy (&service);
    cm_config_free (s_table, &config);
    curl_global_cleanup ();
    return rc;
}
