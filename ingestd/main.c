/*  ingestd: the ingestion daemon. Reads its settings, opens the database,
    starts the embedding-jobs workers and the fallback pool, and serves the
    document and embedding routes (ingest_service) as the gateway's "ingest"
    service until SIGINT/SIGTERM. */
#include "cm_common.h"
#include "cm_breaker.h"
#include "cm_config.h"
#include "cm_storage.h"
#include "cm_embed.h"
#include "cm_jobs.h"
#include "cm_log.h"
#include "cm_metrics.h"
#include "cm_redis.h"
#include "cm_vsearch.h"
#include "cm_worker.h"
#include "ingest_chunk.h"
#include "ingest_service.h"
#include <malloc.h>
#include <unistd.h>

typedef struct {
    int64_t concurrency;         //  INGESTION_QUEUE_CONCURRENCY
    int64_t max_pending;         //  INGESTION_QUEUE_MAX_PENDING
    int64_t pool_size;           //  INGESTION_WORKER_POOL_SIZE (0: half the CPUs)
    int64_t task_timeout_ms;     //  INGESTION_TASK_TIMEOUT_MS
    int64_t vector_cache;        //  VECTOR_CACHE_MAX_BYTES
    int64_t job_workers;         //  EMBEDDING_WORKER_CONCURRENCY
    bool disable_workers;        //  DISABLE_SERVER_JOB_WORKERS
    int64_t attempts;            //  EMBEDDING_JOB_ATTEMPTS
    int64_t backoff_ms;          //  EMBEDDING_JOB_BACKOFF_MS
    int64_t lease_ms;            //  EMBEDDING_JOB_LEASE_MS
    int64_t instance_timeout_ms; //  EMBEDDING_INSTANCE_TIMEOUT_MS
    int64_t keep_completed;      //  EMBEDDING_JOBS_KEEP_COMPLETED
    int64_t keep_completed_s;    //  EMBEDDING_JOBS_KEEP_COMPLETED_SECONDS
    int64_t keep_failed;         //  EMBEDDING_JOBS_KEEP_FAILED
    int64_t redis_timeout_ms;    //  REDIS_TIMEOUT_MS
    int64_t chunk_size;          //  CHUNK_SIZE_CHARS
    int64_t chunk_overlap;       //  CHUNK_OVERLAP_CHARS
    char *redis_url;             //  REDIS_URL
    char *run_dir;               //  RUN_DIR
    char *storage_dir;           //  STORAGE_DIR
    cm_embed_config_t embed;     //  EMBEDDING_*
    cm_breaker_config_t breaker; //  INGESTION_CIRCUIT_*
} s_config_t;

static const cm_conf_entry_t s_table[] = {
    {"INGESTION_QUEUE_CONCURRENCY", CM_CONF_INT, "3", 1, 1024,
     offsetof (s_config_t, concurrency),
     "ingestion requests (uploads, searches...) served at once by this instance"},
    {"INGESTION_QUEUE_MAX_PENDING", CM_CONF_INT, "64", 0, 100000,
     offsetof (s_config_t, max_pending),
     "ingestion requests waiting beyond those (then 429 with Retry-After)"},
    {"INGESTION_WORKER_POOL_SIZE", CM_CONF_INT, "0", 0, 1024,
     offsetof (s_config_t, pool_size),
     "threads that embed documents while Redis is unavailable (the fallback path); "
     "0: half the CPUs, at least 1"},
    {"INGESTION_TASK_TIMEOUT_MS", CM_CONF_INT, "300000", 1, 86400000,
     offsetof (s_config_t, task_timeout_ms),
     "fallback path: limit on one document's embedding (then 504, job failed)"},
    {"EMBEDDING_WORKER_CONCURRENCY", CM_CONF_INT, "2", 1, 256,
     offsetof (s_config_t, job_workers),
     "embedding jobs this instance runs at once from the Redis queue"},
    {"DISABLE_SERVER_JOB_WORKERS", CM_CONF_BOOL, "0", 0, 0,
     offsetof (s_config_t, disable_workers),
     "1: take no embedding jobs here (other instances do); uploads still queue them"},
    {"EMBEDDING_JOB_ATTEMPTS", CM_CONF_INT, "3", 1, 100, offsetof (s_config_t, attempts),
     "attempts an embedding job gets before it goes to the failed set"},
    {"EMBEDDING_JOB_BACKOFF_MS", CM_CONF_INT, "1000", 0, 3600000,
     offsetof (s_config_t, backoff_ms),
     "delay before a job's 2nd attempt; doubles for each one after"},
    {"EMBEDDING_JOB_LEASE_MS", CM_CONF_INT, "90000", 100, 86400000,
     offsetof (s_config_t, lease_ms),
     "lease of a running job, renewed after every batch; a job whose worker died runs "
     "again after it expires (must exceed EMBEDDING_TIMEOUT_MS)"},
    {"EMBEDDING_INSTANCE_TIMEOUT_MS", CM_CONF_INT, "10000", 0, 86400000,
     offsetof (s_config_t, instance_timeout_ms),
     "an ingestd silent in Redis this long is dead: the jobs it held run again "
     "without waiting for their leases (it beats every fifth of this); 0: off, "
     "else at least 1000"},
    {"EMBEDDING_JOBS_KEEP_COMPLETED", CM_CONF_INT, "1000", 0, 100000000,
     offsetof (s_config_t, keep_completed), "completed jobs the queue keeps (newest)"},
    {"EMBEDDING_JOBS_KEEP_COMPLETED_SECONDS", CM_CONF_INT, "86400", 0, 31536000,
     offsetof (s_config_t, keep_completed_s),
     "and for at most this long (0: no age limit)"},
    {"EMBEDDING_JOBS_KEEP_FAILED", CM_CONF_INT, "10000", 0, 100000000,
     offsetof (s_config_t, keep_failed),
     "failed jobs the queue keeps, with their reason"},
    {"REDIS_URL", CM_CONF_URL, "redis://127.0.0.1:6379", 0, 0,
     offsetof (s_config_t, redis_url), "Redis, the embedding-jobs queue's backend"},
    {"REDIS_TIMEOUT_MS", CM_CONF_INT, "2000", 1, 600000,
     offsetof (s_config_t, redis_timeout_ms),
     "limit on connecting to Redis and on each command (then the fallback path)"},
    CM_STORAGE_CONF_ENTRIES (s_config_t, run_dir, storage_dir),
    INGEST_CHUNK_CONF_ENTRIES (s_config_t, chunk_size, chunk_overlap),
    CM_EMBED_CONF_ENTRIES (s_config_t, embed),
    CM_BREAKER_CONF_ENTRIES ("INGESTION", s_config_t, breaker),
    CM_VSEARCH_CONF_ENTRY (s_config_t, vector_cache),
    {NULL, 0, NULL, 0, 0, 0, NULL},
};

int
main (int argc, char **argv)
{
    cm_log_init ("ingestd");
    //  Upload bodies and extracted texts of a megabyte or more get pages of
    //  their own, given back when freed: glibc's moving threshold would
    //  otherwise serve them from the heap after the first one, where they
    //  stay (40 uploads of 8 MB at once: peak 533 -> 311 MB, and 105 -> 62
    //  MB once done, with the trimmer below). MALLOC_MMAP_THRESHOLD_ wins.
    if (!getenv ("MALLOC_MMAP_THRESHOLD_"))
        mallopt (M_MMAP_THRESHOLD, 1024 * 1024);
    int rc =
        cm_worker_args (argc, argv, "ingestd",
                        "The ingestion daemon of llmrt: documents, the embedding-jobs "
                        "queue, embeddings and vector search.",
                        s_table);
    if (rc >= 0)
        return rc;
    s_config_t config = {0};
    char err[512];
    char host[256];
    int64_t port;
    ingest_service_t *service = NULL;
    cm_metrics_t *metrics = NULL;
    rc = 2;
    if (cm_config_load (s_table, &config, err, sizeof err) ||
        cm_worker_config_check (err, sizeof err) ||
        cm_config_check_storage (config.storage_dir, config.run_dir, err, sizeof err) ||
        cm_redis_url_check ("REDIS_URL", config.redis_url, err, sizeof err) ||
        cm_breaker_config_check (&config.breaker, "INGESTION", err, sizeof err) ||
        ingest_chunk_config_check (config.chunk_size, config.chunk_overlap, err,
                                   sizeof err) ||
        cm_embed_config_check (&config.embed, err, sizeof err)) {
        fprintf (stderr, "ingestd: bad configuration: %s\n", err);
        goto cleanup;
    }
    //  Checked above: only for the log line.
    cm_redis_parse_url (config.redis_url, host, sizeof host, &port);
    //  A lease shorter than one embedding request would hand a running job
    //  to a second worker while the first still waits for its answer.
    if (!strcmp (config.embed.provider, "openai") &&
        config.lease_ms <= config.embed.timeout_ms) {
        fprintf (stderr,
                 "ingestd: bad configuration: EMBEDDING_JOB_LEASE_MS (%lld) must exceed "
                 "EMBEDDING_TIMEOUT_MS (%lld)\n",
                 (long long) config.lease_ms, (long long) config.embed.timeout_ms);
        goto cleanup;
    }
    //  Beats go every fifth of it: shorter would beat Redis all the time.
    if (config.instance_timeout_ms > 0 && config.instance_timeout_ms < 1000) {
        fprintf (
            stderr,
            "ingestd: bad configuration: EMBEDDING_INSTANCE_TIMEOUT_MS (%lld) must be "
            "0 (off) or at least 1000\n",
            (long long) config.instance_timeout_ms);
        goto cleanup;
    }
    cm_storage_dir_default (&config.storage_dir, config.run_dir);
    long cpus = sysconf (_SC_NPROCESSORS_ONLN);
    size_t pool_size = config.pool_size > 0 ? (size_t) config.pool_size
                                            : (size_t) (cpus > 1 ? cpus / 2 : 1);
    ingest_config_t settings = {
        .storage_dir = config.storage_dir,
        .embed = config.embed,
        .job_workers = config.disable_workers ? 0 : (size_t) config.job_workers,
        .chunk_size = (size_t) config.chunk_size,
        .chunk_overlap = (size_t) config.chunk_overlap,
        .pool_size = pool_size,
        .task_timeout_ms = config.task_timeout_ms,
        .vector_cache = (size_t) config.vector_cache,
    };
    cm_jobs_config_defaults (&settings.jobs);
    settings.jobs.url = config.redis_url;
    settings.jobs.queue = "embedding-jobs";
    settings.jobs.lease_ms = config.lease_ms;
    settings.jobs.attempts = (int) config.attempts;
    settings.jobs.backoff_ms = config.backoff_ms;
    settings.jobs.keep_completed = (size_t) config.keep_completed;
    settings.jobs.keep_completed_ms = config.keep_completed_s * 1000;
    settings.jobs.keep_failed = (size_t) config.keep_failed;
    settings.jobs.io_timeout_ms = config.redis_timeout_ms;
    settings.jobs.keeper_timeout_ms = config.instance_timeout_ms;
    //  Twice the lease: a job that moved within that time is someone's.
    settings.reconcile_ms = 2 * config.lease_ms;

    metrics = cm_metrics_new ();
    cm_breaker_t *breaker = cm_breaker_new ("ingest", &config.breaker);
    cm_breaker_attach_metrics (breaker, metrics);
    service = ingest_service_new (&settings, &breaker, metrics, err, sizeof err);
    //  Freed pages back to the kernel: 40 uploads of 8 MB at once kept
    //  ingestd at 502 MB after every job was done, 105 MB with this alone.
    cm_heap_trim_every (2);
    if (!service) {
        cm_breaker_destroy (&breaker);
        cm_error ("cannot start (STORAGE_DIR=%s): %s", config.storage_dir, err);
        rc = 1;
        goto cleanup;
    }
    cm_info ("storage %s/llmrt.db, queue %s on %s, %zu job worker(s), fallback pool %zu, "
             "embedder %s, chunks %lld/%lld chars",
             config.storage_dir, settings.jobs.queue, host, settings.job_workers,
             pool_size, config.embed.provider, (long long) config.chunk_size,
             (long long) config.chunk_overlap);
    rc = cm_worker_main ("ingest", ingest_service_routes (), service,
                         (size_t) config.concurrency, (size_t) config.max_pending,
                         metrics);
cleanup:
    ingest_service_destroy (&service);
    cm_metrics_destroy (&metrics);
    cm_config_free (s_table, &config);
    return rc;
}
