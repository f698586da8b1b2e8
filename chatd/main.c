/*  chatd: the chat daemon. Reads its settings, opens the database, and
    serves the workspace and chat routes (chat_service) as the gateway's
    "chat" service until SIGINT/SIGTERM. */
#include "cm_common.h"
#include <malloc.h>
#include <pthread.h>
#include <unistd.h>
#include "cm_affinity.h"
#include "cm_config.h"
#include "cm_storage.h"
#include "cm_embed.h"
#include "cm_log.h"
#include "cm_metrics.h"
#include "cm_vsearch.h"
#include "cm_worker.h"
#include "chat_settings.h"
#include "chat_service.h"

typedef struct {
    int64_t concurrency;         //  handler threads (the chat queue's concurrency)
    int64_t max_pending;         //  requests that may wait beyond the running ones
    char *run_dir;               //  runtime directory; storage defaults under it
    char *storage_dir;           //  where llmrt.db lives (NULL: $RUN_DIR/storage)
    chat_settings_t llm;         //  LLM_*: the provider
    cm_breaker_config_t breaker; //  CHAT_CIRCUIT_*: the breaker around the provider
    cm_embed_config_t embed;     //  EMBEDDING_*: embeds messages to search documents
    char *cpu_affinity;          //  CHAT_CPU_AFFINITY: none, auto or a CPU list
    int64_t vector_cache_bytes;  //  VECTOR_CACHE_MAX_BYTES
} s_settings_t;

static const cm_conf_entry_t s_config[] = {
    {"CHAT_QUEUE_CONCURRENCY", CM_CONF_INT, "4", 1, 1024,
     offsetof (s_settings_t, concurrency),
     "chat requests served at once by this instance"},
    {"CHAT_QUEUE_MAX_PENDING", CM_CONF_INT, "64", 0, 100000,
     offsetof (s_settings_t, max_pending),
     "chat requests that may wait for a slot; beyond that 429 with Retry-After"},
    CM_STORAGE_CONF_ENTRIES (s_settings_t, run_dir, storage_dir),
    CHAT_SETTINGS_CONF_ENTRIES (s_settings_t, llm),
    CM_BREAKER_CONF_ENTRIES ("CHAT", s_settings_t, breaker),
    CM_EMBED_CONF_ENTRIES (s_settings_t, embed),
    CM_AFFINITY_CONF_ENTRY ("CHAT_CPU_AFFINITY", s_settings_t, cpu_affinity),
    CM_VSEARCH_CONF_ENTRY (s_settings_t, vector_cache_bytes),
    {NULL, 0, NULL, 0, 0, 0, NULL},
};

int
main (int argc, char **argv)
{
    //  glibc's per-thread cache (tcache) keeps freed blocks for each thread
    //  that freed them: with a handler thread per open stream, ~28 KiB per
    //  stream sat idle there (bench/chat.sh, phase c: chatd 49.7 -> 21.8
    //  KiB per open stream without it). Set before anything allocates.
    cm_exec_with_tunables (argv, "glibc.malloc.tcache_count=0");
    cm_log_init ("chatd");
    //  One handler thread per open stream can mean hundreds of threads, and
    //  glibc gives threads up to 8 malloc arenas per core, each holding
    //  freed memory: with 2,000 open streams that doubled chatd's memory per
    //  stream (bench/chat.sh). Two arenas cost nothing measurable in
    //  throughput. MALLOC_ARENA_MAX in the environment still wins.
    if (!getenv ("MALLOC_ARENA_MAX"))
        mallopt (M_ARENA_MAX, 2);
    int args = cm_worker_args (argc, argv, "chatd",
                               "The chat daemon of llmrt: workspaces, threads and chats "
                               "(AnythingLLM's developer API) behind the gateway.",
                               s_config);
    if (args >= 0)
        return args;

    s_settings_t settings = {0};
    char err[512];
    int rc = 2;
    chat_service_t *service = NULL;
    cm_metrics_t *metrics = NULL;
    if (cm_config_load (s_config, &settings, err, sizeof err) ||
        cm_worker_config_check (err, sizeof err) ||
        cm_config_check_storage (settings.storage_dir, settings.run_dir, err,
                                 sizeof err) ||
        cm_breaker_config_check (&settings.breaker, "CHAT", err, sizeof err) ||
        cm_embed_config_check (&settings.embed, err, sizeof err) ||
        cm_affinity_setup ("CHAT_CPU_AFFINITY", settings.cpu_affinity, err, sizeof err)) {
        fprintf (stderr, "chatd: %s\n", err);
        goto cleanup;
    }
    chat_provider_t *provider = chat_settings_provider (&settings.llm, err, sizeof err);
    if (!provider) {
        fprintf (stderr, "chatd: %s\n", err);
        goto cleanup;
    }
    cm_storage_dir_default (&settings.storage_dir, settings.run_dir);

    service = chat_service_new (settings.storage_dir, &provider, err, sizeof err);
    if (!service) {
        cm_error ("cannot open the database (STORAGE_DIR=%s): %s", settings.storage_dir,
                  err);
        rc = 1;
        goto cleanup;
    }
    cm_breaker_t *breaker = cm_breaker_new ("chat", &settings.breaker);
    chat_service_set_breaker (service, &breaker);
    cm_embedder_t *embedder = cm_embedder_new (&settings.embed, err, sizeof err);
    if (!embedder) {
        fprintf (stderr, "chatd: %s\n", err);
        goto cleanup;
    }
    chat_service_set_embedder (service, &embedder);
    cm_vsearch_set_max_bytes (chat_service_vsearch (service),
                              (size_t) settings.vector_cache_bytes);
    //  Thousands of stream handlers start at once, each freeing its
    //  set-up's blocks while its stream goes on: give those pages back.
    cm_heap_trim_every (2);
    //  The daemon's registry: the worker reports it with its own series.
    metrics = cm_metrics_new ();
    cm_breaker_attach_metrics (chat_service_breaker (service), metrics);
    cm_vsearch_attach_metrics (chat_service_vsearch (service), metrics);
    cm_info ("storage %s/llmrt.db, provider %s, concurrency %lld, max pending %lld, "
             "circuit opens after %lld failure(s) for %lld ms",
             settings.storage_dir, settings.llm.provider,
             (long long) settings.concurrency, (long long) settings.max_pending,
             (long long) settings.breaker.failure_threshold,
             (long long) settings.breaker.reset_ms);
    rc = cm_worker_main ("chat", chat_service_routes (), service,
                         (size_t) settings.concurrency, (size_t) settings.max_pending,
                         metrics);

cleanup:
    //  The worker has stopped: no snapshot reads the breaker any more.
    cm_metrics_destroy (&metrics);
    chat_service_destroy (&service);
    cm_config_free (s_config, &settings);
    return rc;
}
