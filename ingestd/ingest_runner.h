/*  ingest_runner.h: the consumers of the `embedding-jobs` queue in Redis.

    EMBEDDING_WORKER_CONCURRENCY worker threads each hold their own queue
    handle (cm_jobs: one Redis connection and processing list per thread)
    and take jobs one at a time; several ingestd instances share the queue.
    A job runs ingest_job_run and ends in the queue as it ends there:
    completed; failed with retry (a passing failure: the queue delays it with
    exponential back-off until its attempts are used up, then it is failed
    for good, with the reason); failed without retry (it can never succeed);
    or released to the front of the queue without counting the attempt when
    the runner stops. The lease is renewed after every stored batch, so a
    worker that hangs loses its job when the lease expires. A process that
    dies (kill -9) or stands still loses its jobs sooner: its keeper (one per
    process, beaten every fifth of keeper_timeout_ms by a thread of its own)
    falls silent, and maintenance puts them back in the queue once that
    timeout has passed. As chunks are stored idempotently the second run
    stores each chunk once.

    One maintenance thread per instance, also with workers disabled
    (DISABLE_SERVER_JOB_WORKERS=1 leaves the jobs to other instances, not the
    queue's upkeep): every second cm_jobs_maintain (due retries, expired
    leases, trimming) and the queue's counts for metrics; every few seconds
    the reconciler, which makes "nothing lost" hold across crashes between
    the database and Redis: a job whose row says queued or active but that
    Redis does not know (the process died between writing the row and adding
    the job, or a fallback run died, or Redis lost its data) and that has not
    moved for reconcile_ms is added to the queue again. A row also names
    its owner, the keeper of the process that wrote it (and runs it on the
    fallback path); once that keeper is dead, the reconciler adds the row's
    job at once, at the next maintenance round, whatever its age.

    Redis down: workers back off (up to 2 s) and try again; nothing is
    taken, nothing lost. Threading: new and destroy from one thread. */
#ifndef INGEST_RUNNER_H_INCLUDED
#define INGEST_RUNNER_H_INCLUDED

#include "cm_common.h"
#include "cm_jobs.h"
#include "cm_metrics.h"
#include "cm_storage.h"
#include "ingest_job.h"

typedef struct ingest_runner_s ingest_runner_t;

typedef struct {
    cm_jobs_config_t jobs; //  the queue (url, name, lease, attempts, back-off...)
    size_t workers;        //  worker threads (0: take no jobs here)
    int64_t reconcile_ms;  //  a job unknown to Redis and unchanged this long is re-added
    int64_t fallback_ms;   //  ... a fallback job only after this long (its task timeout
                           //  and then some: until then the pool may still run it)
    int64_t maintain_ms;   //  maintenance period (<= 0: 1000)
} ingest_runner_config_t;

//  Start the threads. context and pool are borrowed and must outlive the
//  runner; metrics (may be NULL) gets llmrt_embedding_jobs{state} gauges,
//  llmrt_embedding_jobs_processed_total{outcome} and
//  llmrt_embedding_jobs_requeued_total.
ingest_runner_t *ingest_runner_new (const ingest_runner_config_t *config,
                                    const ingest_job_context_t *context,
                                    cm_storage_pool_t *pool, cm_metrics_t *metrics);
//  Stop: workers release the jobs they hold (back to the queue, the attempt
//  not counted), threads are joined. NULL-safe; nulls the pointer.
void ingest_runner_destroy (ingest_runner_t **self_p);

//  This process's keeper id (borrowed), or NULL when keepers are off:
//  the owner of the job rows this process writes.
const char *ingest_runner_keeper (const ingest_runner_t *self);

//  The job data the queue carries for a document: {"location": ...}.
//  Returns a new string.
char *ingest_runner_job_data (const char *location);

#endif
