/*  ingest_job.h: one ingestion job: a stored document becomes searchable.

    The job reads the document's text from the database, splits it into
    chunks (ingest_chunk), embeds them in batches (cm_embed, under the
    ingestion breaker) and stores each batch of chunks with their vectors
    (cm_storage_chunks_put, idempotent: a chunk already stored is kept), then
    marks the document embedded, which makes its chunks visible to the
    workspaces it is linked to. Progress (chunksDone of chunksTotal) and the
    state go to the job's row in ingest_jobs after every batch, so a client
    can follow a long job; an after-batch hook lets the queue path renew its
    lease.

    The same function runs a job whichever path brought it: a worker thread
    that took it from the Redis queue (ingest_runner), or the fallback pool
    while Redis is unavailable (ingest_service). A job that runs again after
    a crash redoes the embedding of chunks it had not stored and stores
    nothing twice.

    Threading: any thread; the context is shared read-only (the embedder
    and the breaker are thread-safe), the storage connection is the
    caller's. */
#ifndef INGEST_JOB_H_INCLUDED
#define INGEST_JOB_H_INCLUDED

#include "cm_common.h"
#include "cm_breaker.h"
#include "cm_embed.h"
#include "cm_storage.h"

//  What every job needs, owned by the service.
typedef struct {
    cm_embedder_t *embedder; //  the embedder
    cm_breaker_t *breaker;   //  the ingestion breaker around it
    size_t chunk_size;       //  CHUNK_SIZE_CHARS
    size_t chunk_overlap;    //  CHUNK_OVERLAP_CHARS
    size_t batch_size;       //  chunks embedded and stored per step
} ingest_job_context_t;

//  How a run ended.
typedef enum {
    INGEST_JOB_DONE = 0,      //  every chunk stored; the document is embedded
    INGEST_JOB_RETRY = 1,     //  a passing failure (upstream, breaker open, database):
                              //  worth another attempt
    INGEST_JOB_FATAL = 2,     //  will never succeed (no such document, the upstream
                              //  refused the request): no retry
    INGEST_JOB_CANCELLED = 3, //  stopped by the caller's hook
    INGEST_JOB_STORAGE = 4,   //  the database failed (full, unwritable, busy): not
                              //  the job's fault; worth a retry once it works,
                              //  without using up an attempt
} ingest_job_result_t;

//  Hooks of a run. cancelled is asked before every batch and during
//  embedding requests; after_batch is called after each stored batch and
//  may stop the run by returning false (a lost lease). Either may be NULL.
typedef struct {
    bool (*cancelled) (void *arg);
    bool (*after_batch) (size_t done, size_t total, void *arg);
    void *arg;
} ingest_job_hooks_t;

//  Embed texts (as cm_embed) under the ingestion breaker, which counts an
//  upstream failure against it, a success for it, and neither a request's
//  own fault or a cancel. Returns false, with the time until calls may go
//  again in *retry_ms_p, when the circuit is open and nothing was tried.
bool ingest_job_embed (const ingest_job_context_t *context, const char *const *texts,
                       size_t count, float **vectors_p, size_t *dim_p,
                       bool (*cancelled) (void *), void *arg, cm_embed_status_t *status_p,
                       int64_t *retry_ms_p, char *err, size_t errlen);

//  Run job `job_id` (its row must exist) for the document at `location`,
//  as attempt `attempt`. Updates the job's row: "active" with the attempt
//  at the start, progress after each batch, "completed" at the end. On any
//  other outcome the row is left "active" with the error set: the caller
//  decides between "queued" (a retry is coming) and "failed". err says
//  why it did not complete.
ingest_job_result_t ingest_job_run (const ingest_job_context_t *context,
                                    cm_storage_t *storage, const char *job_id,
                                    const char *location, int attempt,
                                    const ingest_job_hooks_t *hooks, char *err,
                                    size_t errlen);

#endif
