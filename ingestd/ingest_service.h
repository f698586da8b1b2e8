/*  ingest_service.h: ingestd's core, the document and embedding routes.

    Routes (API.md; docs/api.md):
      POST /api/v1/document/upload            a file (the gateway's parsed form)
      POST /api/v1/document/raw-text          {textContent, metadata:{title...}}
      GET  /api/v1/document/jobs/{id}         ours: the state of an ingestion
      POST /api/v1/workspace/{slug}/update-embeddings   {adds, deletes}
      POST /api/v1/workspace/{slug}/vector-search       {query, topN, scoreThreshold}
      POST /api/v1/openai/embeddings          {input, model?}

    An ingestion: the handler (on the ingestion queue, one of
    INGESTION_QUEUE_CONCURRENCY threads) extracts the text, stores the
    document, links it to the workspaces asked for (addToWorkspaces) and
    records a job (ingest_jobs), all before answering, so that once the
    client has its 200 nothing it sent can be lost. Then the embedding:
    - queue path (Redis up): the job goes into the Redis `embedding-jobs`
      queue and the answer says "queued"; ingest_runner's workers (here or in
      any instance) embed it; GET /api/v1/document/jobs/{id} follows it.
    - fallback path (Redis unavailable, or the add failed): the job runs now,
      on the ingestion worker pool (INGESTION_WORKER_POOL_SIZE threads, FIFO,
      INGESTION_TASK_TIMEOUT_MS per task), under the ingestion breaker, and
      the answer says "completed", or gives the failure (503, 504). After a
      failed add the queue is not tried again for a second, so a hung Redis
      costs one timeout, not one per upload; after that the queue path is
      back without a restart.
    The database is the record: when it cannot be written the client gets
    503, never a success.

    Threading: handlers run on the worker's queue threads, several at once;
    each borrows a database connection from the pool. */
#ifndef INGEST_SERVICE_H_INCLUDED
#define INGEST_SERVICE_H_INCLUDED

#include "cm_common.h"
#include "cm_breaker.h"
#include "cm_embed.h"
#include "cm_jobs.h"
#include "cm_metrics.h"
#include "cm_worker.h"

typedef struct ingest_service_s ingest_service_t;

typedef struct {
    const char *storage_dir; //  the database's directory
    cm_embed_config_t embed; //  EMBEDDING_*
    cm_jobs_config_t jobs;   //  the Redis queue (url, name, lease, attempts...)
    size_t job_workers;      //  EMBEDDING_WORKER_CONCURRENCY (0: none here)
    int64_t reconcile_ms;    //  see ingest_runner.h
    size_t chunk_size;       //  CHUNK_SIZE_CHARS
    size_t chunk_overlap;    //  CHUNK_OVERLAP_CHARS
    size_t pool_size;        //  INGESTION_WORKER_POOL_SIZE
    int64_t task_timeout_ms; //  INGESTION_TASK_TIMEOUT_MS
    size_t vector_cache;     //  VECTOR_CACHE_MAX_BYTES (0: no limit)
} ingest_config_t;

//  Create the service: open the database, make the embedder, start the
//  queue's workers and the fallback pool. Takes over the breaker (nulls
//  *breaker_p). metrics (borrowed, may be NULL) gets the queue's and the
//  pool's series. NULL with the reason in err.
ingest_service_t *ingest_service_new (const ingest_config_t *config,
                                      cm_breaker_t **breaker_p, cm_metrics_t *metrics,
                                      char *err, size_t errlen);
//  Stop the workers (their jobs go back to the queue) and free. NULL-safe.
//  Call after the gateway worker stopped.
void ingest_service_destroy (ingest_service_t **self_p);

//  The route table (static, NULL-terminated); handlers take the service.
const cm_route_t *ingest_service_routes (void);

#endif
