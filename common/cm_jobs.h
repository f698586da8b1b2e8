/*  cm_jobs.h: a durable job queue in Redis, with BullMQ's semantics
    (at-least-once delivery, leases, retries with exponential back-off, a
    failed set that keeps the last error, completed jobs trimmed by count
    and age). ingestd's `embedding-jobs` queue runs on it: the upload
    handler adds jobs, worker threads in several processes take them.

    Key layout, for queue Q (prefix P = "llmrt:Q:"):
      P wait           LIST  ids ready to run; add pushes left, take pops right
      P active:<W>     LIST  worker W's processing list (ids it holds)
      P lease          ZSET  id -> lease deadline (ms, Redis clock)
      P delayed        ZSET  id -> when a retry is due (ms)
      P completed      ZSET  id -> when it completed (ms)
      P failed         ZSET  id -> when it failed for good (ms)
      P workers        ZSET  worker id -> "alive until" (ms); lets maintain
                             find every processing list, dead workers' too
      P keepers        ZSET  keeper id -> "alive until" (ms), from cm_jobs_beat
      P keepers:tick   the last beat or maintenance (ms); P keepers:from:
                       keepers count from then (ms)
      P job:<id>       HASH  data, attemptsMade, maxAttempts, timestamp,
                             processedOn, finishedOn, worker, keeper, error

    State machine (every id is in exactly one of the lists/sets above):

      add ──▶ waiting ──take──▶ active ──complete──▶ completed ──trim──▶ gone
                ▲  ▲              │ │
                │  └─lease lost───┘ ├─fail, attempts left──▶ delayed ──due──▶ waiting
                │    (maintain)     └─fail, none left / no retry──▶ failed ──trim──▶ gone
                └─release (back to the front, the attempt not counted)

    Take moves an id from wait to the worker's processing list (LMOVE in a
    script, or BLMOVE when it has to block) and then gives it a lease;
    every other transition is one Lua script, so atomic. A take counts an
    attempt; a job whose lease expires (its worker died or hung) goes back
    to wait, or to failed when that was its last attempt. A job moved by
    BLMOVE but never leased (the worker died in between) is recovered once
    the worker's "alive until" has passed.

    Keepers: a lease must outlast the longest stretch between renewals (a
    batch of embeddings), so a job of a killed process would wait that
    long. A process can do better by naming a keeper (config.keeper, one
    id per process, on every handle that takes jobs) and calling
    cm_jobs_beat every keeper_timeout_ms / 5 or so from a thread of its
    own: a job taken under a keeper whose beats stopped for
    keeper_timeout_ms is recovered by maintain as if its lease had
    expired. A Redis that stood still or was away (no keeper could beat)
    kills nobody: when beats and maintenance find a gap of more than half a
    keeper timeout between them, keepers count again only a keeper timeout
    later, by when every live one has beaten. Times come from Redis's clock
    (TIME), so hosts need not agree on the time. Plain Redis (or
    Sentinel), not Cluster: scripts touch keys they compute.

    Outcomes: add, take, renew, complete, fail, release, maintain and
    counts return -1 when Redis is unavailable or answered an error
    (cm_jobs_errmsg says why); then the call took at most about
    io_timeout_ms (take: its wait plus io_timeout_ms). The handle
    reconnects by itself at the next call. complete/fail/release on a
    job whose lease was lost (another worker may have it now) return
    CM_JOBS_LOST and change nothing.

    Threading: a cm_jobs_t belongs to one thread (a hiredis connection is
    not thread-safe): give each worker thread its own. Any number of
    handles, in any number of processes, may share a queue. */
#ifndef CM_JOBS_H_INCLUDED
#define CM_JOBS_H_INCLUDED

#include "cm_common.h"
#include <jansson.h>

typedef struct cm_jobs_s cm_jobs_t;

#define CM_JOBS_DEFAULT_LEASE_MS          30000
#define CM_JOBS_DEFAULT_ATTEMPTS          3
#define CM_JOBS_DEFAULT_BACKOFF_MS        1000
#define CM_JOBS_DEFAULT_KEEP_COMPLETED    1000
#define CM_JOBS_DEFAULT_KEEP_COMPLETED_MS (24 * 3600 * 1000LL)
#define CM_JOBS_DEFAULT_KEEP_FAILED       10000
#define CM_JOBS_DEFAULT_IO_TIMEOUT_MS     2000

typedef struct {
    const char *url;           //  redis://[user:password@]host[:port][/db]
    const char *queue;         //  queue name: keys "llmrt:<queue>:*"
    int64_t lease_ms;          //  a taken job's lease (renew well within it), >= 1
    int attempts;              //  attempts a job gets (takes), >= 1
    int64_t backoff_ms;        //  delay before the 2nd attempt, doubling after; 0: none
    size_t keep_completed;     //  completed jobs kept (most recent); 0: none
    int64_t keep_completed_ms; //  and only this long; 0: no age limit
    size_t keep_failed;        //  failed jobs kept (most recent)
    int64_t io_timeout_ms;     //  connect and command timeout, >= 1
    const char *keeper;        //  the process holding this handle's jobs, or NULL
    int64_t keeper_timeout_ms; //  a keeper silent this long is dead (0: no keepers)
} cm_jobs_config_t;

//  A taken job. The caller owns it until complete/fail/release takes it
//  back (or cm_job_destroy, which leaves the job to its lease).
typedef struct {
    char *id;         //  the job's id
    char *data;       //  its data, as added
    int attempt;      //  this attempt, 1-based
    int max_attempts; //  attempts it gets in all
} cm_job_t;

typedef enum {
    CM_JOBS_ERROR = -1,   //  Redis unavailable or an error: see cm_jobs_errmsg
    CM_JOBS_OK = 0,       //  done
    CM_JOBS_EXISTS = 1,   //  add: a job with that id exists; nothing changed
    CM_JOBS_LOST = 2,     //  the lease was lost: the job is not ours any more
    CM_JOBS_RETRYING = 3, //  fail: the job will run again (after its back-off)
    CM_JOBS_FAILED = 4,   //  fail: the job is in the failed set for good
} cm_jobs_result_t;

typedef struct {
    int64_t waiting, active, delayed, completed, failed;
} cm_jobs_counts_t;

//  Fill in the defaults (CM_JOBS_DEFAULT_*); url and queue NULL.
void cm_jobs_config_defaults (cm_jobs_config_t *config);

//  A handle on queue config->queue (the config is copied). worker_id
//  names this handle's processing list and must be unique among live
//  handles: NULL makes one (cm_jobs_unique_id). Never fails because Redis
//  is down: it connects at the first call.
cm_jobs_t *cm_jobs_new (const cm_jobs_config_t *config, const char *worker_id);

//  Destroy a handle (NULL-safe; nulls the pointer). Jobs it holds stay
//  active until their leases expire.
void cm_jobs_destroy (cm_jobs_t **self_p);

//  Add job `id` with `data` (any string). CM_JOBS_OK, CM_JOBS_EXISTS (a
//  job with that id is known, in any state: BullMQ's rule), CM_JOBS_ERROR.
int cm_jobs_add (cm_jobs_t *self, const char *id, const char *data);

//  Take the next job, waiting up to wait_ms for one (0: do not wait).
//  Returns 1 with *job_p set (the caller's), 0 when none came, -1 on error.
int cm_jobs_take (cm_jobs_t *self, int64_t wait_ms, cm_job_t **job_p);

//  Extend a held job's lease to lease_ms from now. CM_JOBS_OK,
//  CM_JOBS_LOST (stop working on it), CM_JOBS_ERROR.
int cm_jobs_renew (cm_jobs_t *self, const cm_job_t *job);

//  The job succeeded: into the completed set (trimmed as configured).
//  Takes the job (*job_p nulled). CM_JOBS_OK, CM_JOBS_LOST, CM_JOBS_ERROR.
int cm_jobs_complete (cm_jobs_t *self, cm_job_t **job_p);

//  The job failed with `reason`. With retry and attempts left it runs
//  again after backoff_ms * 2^(attempt-1) (CM_JOBS_RETRYING); else it goes
//  into the failed set with the reason (CM_JOBS_FAILED). Takes the job.
//  Also CM_JOBS_LOST, CM_JOBS_ERROR.
int cm_jobs_fail (cm_jobs_t *self, cm_job_t **job_p, const char *reason, bool retry);

//  Give a held job back without counting the attempt (shutting down, or
//  the database failed: not the job's fault): it goes to the front of the
//  wait list, or with delay_ms > 0 to the delayed set, due then. Takes the
//  job. CM_JOBS_OK, CM_JOBS_LOST, CM_JOBS_ERROR.
int cm_jobs_release (cm_jobs_t *self, cm_job_t **job_p, int64_t delay_ms);

typedef struct {
    int promoted; //  delayed jobs that fell due
    int expired;  //  held jobs whose lease (or worker) expired
    int orphaned; //  held jobs whose keeper died (cm_jobs_beat)
} cm_jobs_maintained_t;

//  Promote due delayed jobs, requeue (or fail, after the last attempt)
//  jobs whose lease expired or whose keeper died in any worker's
//  processing list, forget dead workers and keepers, trim completed and
//  failed. Atomic: safe to call from every instance at once; call it every
//  second or so. Returns the number of jobs it moved, or -1; *out (may be
//  NULL) says why they moved.
int cm_jobs_maintain (cm_jobs_t *self, cm_jobs_maintained_t *out);

//  Say that this handle's keeper is alive for keeper_timeout_ms more.
//  0, or -1. Needs config.keeper and keeper_timeout_ms.
int cm_jobs_beat (cm_jobs_t *self);

//  The keepers alive now. Returns 1 with *ids_p a new array of their ids
//  when keepers count (then any other keeper is dead, even one Redis
//  never heard of or has lost: a live one has beaten since), 0 when they
//  do not count yet (*ids_p NULL), -1 on error. Needs keeper_timeout_ms.
int cm_jobs_live_keepers (cm_jobs_t *self, json_t **ids_p);

//  A new id, unique across threads, processes, hosts and restarts of a
//  container: host-pid-N-random. The caller frees it.
char *cm_jobs_unique_id (void);

//  Jobs in each state. 0, or -1.
int cm_jobs_counts (cm_jobs_t *self, cm_jobs_counts_t *out);

//  A job's state, the caller's: {id, state (waiting|active|delayed|
//  completed|failed), data, attempts, maxAttempts, timestamp, and when
//  known processedOn, finishedOn, worker, delayUntil, error}. NULL when
//  there is no such job or on error (cm_jobs_errmsg is "" for the former).
json_t *cm_jobs_info (cm_jobs_t *self, const char *id);

//  Whether Redis answered the last call (connects and PINGs when the
//  handle has no connection).
bool cm_jobs_available (cm_jobs_t *self);

//  This handle's worker id (borrowed).
const char *cm_jobs_worker (cm_jobs_t *self);

//  Why the last call failed (borrowed; "" after a success).
const char *cm_jobs_errmsg (cm_jobs_t *self);

//  Free a job (NULL-safe; nulls the pointer).
void cm_job_destroy (cm_job_t **job_p);

#endif
