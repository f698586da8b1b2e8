/*  ingest_runner.c: see ingest_runner.h. */
#include "ingest_runner.h"
#include "cm_log.h"
#include "cm_storage_docs.h"
#include <pthread.h>
#include <time.h>
#include <stdatomic.h>

//  A worker's longest pause while Redis is unavailable.
#define S_BACKOFF_MAX_MS 2000
//  How long a take blocks, so that a stopping worker notices soon.
#define S_TAKE_WAIT_MS 500
//  Rows of dead ingestds the reconciler looks at per maintenance round.
#define S_ORPHANS_PER_ROUND 256

struct ingest_runner_s {
    ingest_runner_config_t config;
    const ingest_job_context_t *context; //  borrowed
    cm_storage_pool_t *pool;             //  borrowed
    atomic_bool stopping;                //  set by destroy
    pthread_t *workers;                  //  config.workers threads
    pthread_t maintainer;                //  the maintenance thread
    pthread_t beater;                    //  beats the keeper (when there is one)
    char *keeper;                        //  this process's keeper id, or NULL
    pthread_mutex_t lock;                //  guards wake (maintainer's sleep)
    pthread_cond_t wake;                 //  signalled by destroy
    //  Metrics (NULL without a registry).
    cm_metric_t *state[5];     //  llmrt_embedding_jobs{state}
    cm_metric_t *outcome[4];   //  ..._processed_total{outcome}
    cm_metric_t *requeued;     //  ..._requeued_total
    cm_metric_t *recovered[2]; //  ..._recovered_total{reason}: lease, keeper
    cm_metric_t *redis_up;     //  llmrt_embedding_queue_up
};

//  One worker thread's view of a job in progress.
typedef struct {
    ingest_runner_t *runner;
    cm_jobs_t *jobs;
    cm_job_t *job;
} s_held_t;

static const char *const s_states[5] = {"waiting", "active", "delayed", "completed",
                                        "failed"};
static const char *const s_outcomes[4] = {"completed", "retried", "failed", "released"};

static void *s_worker (void *arg);
static void *s_maintainer (void *arg);
static void *s_beater (void *arg);

ingest_runner_t *
ingest_runner_new (const ingest_runner_config_t *config,
                   const ingest_job_context_t *context, cm_storage_pool_t *pool,
                   cm_metrics_t *metrics)
{
    assert (config && config->jobs.url && config->jobs.queue && context && pool);
    ingest_runner_t *self = cm_calloc (1, sizeof *self);
    self->config = *config;
    self->config.jobs.url = cm_strdup (config->jobs.url);
    self->config.jobs.queue = cm_strdup (config->jobs.queue);
    if (self->config.maintain_ms <= 0)
        self->config.maintain_ms = 1000;
    //  One keeper for the jobs this process takes and the rows it writes:
    //  when its beats stop (killed, frozen) the jobs run again elsewhere
    //  without waiting for their leases (cm_jobs.h), and its rows are
    //  queued by the reconciler without waiting for their time-outs.
    self->config.jobs.keeper = NULL;
    if (config->jobs.keeper_timeout_ms > 0) {
        self->keeper = cm_jobs_unique_id ();
        self->config.jobs.keeper = self->keeper;
    }
    self->context = context;
    self->pool = pool;
    atomic_init (&self->stopping, false);
    pthread_mutex_init (&self->lock, NULL);
    pthread_cond_init (&self->wake, NULL);
    if (metrics) {
        for (size_t i = 0; i < 5; i++) {
            const char *labels[] = {"queue", config->jobs.queue, "state", s_states[i],
                                    NULL};
            self->state[i] =
                cm_metrics_gauge (metrics, "llmrt_embedding_jobs",
                                  "Jobs in the Redis queue, by state "
                                  "(the queue's view, shared by every instance)",
                                  labels);
        }
        for (size_t i = 0; i < 4; i++) {
            const char *labels[] = {"queue", config->jobs.queue, "outcome", s_outcomes[i],
                                    NULL};
            self->outcome[i] = cm_metrics_counter (
                metrics, "llmrt_embedding_jobs_processed_total",
                "Jobs this instance ran from the queue, by how they ended", labels);
        }
        const char *labels[] = {"queue", config->jobs.queue, NULL};
        self->requeued = cm_metrics_counter (
            metrics, "llmrt_embedding_jobs_requeued_total",
            "Jobs the reconciler added to the queue again (unknown to Redis)", labels);
        static const char *const reasons[2] = {"lease", "keeper"};
        for (size_t i = 0; i < 2; i++) {
            const char *recovered_labels[] = {"queue", config->jobs.queue, "reason",
                                              reasons[i], NULL};
            self->recovered[i] = cm_metrics_counter (
                metrics, "llmrt_embedding_jobs_recovered_total",
                "Held jobs this instance's maintenance put back in the queue because "
                "their lease expired or their ingestd's keeper fell silent",
                recovered_labels);
        }
        self->redis_up = cm_metrics_gauge (
            metrics, "llmrt_embedding_queue_up",
            "1 when Redis, the queue backend, answered the last maintenance call",
            labels);
    }
    self->workers =
        cm_calloc (config->workers ? config->workers : 1, sizeof *self->workers);
    for (size_t i = 0; i < config->workers; i++)
        if (pthread_create (&self->workers[i], NULL, s_worker, self))
            abort ();
    if (pthread_create (&self->maintainer, NULL, s_maintainer, self))
        abort ();
    if (self->keeper && pthread_create (&self->beater, NULL, s_beater, self))
        abort ();
    return self;
}

void
ingest_runner_destroy (ingest_runner_t **self_p)
{
    assert (self_p);
    ingest_runner_t *self = *self_p;
    if (!self)
        return;
    pthread_mutex_lock (&self->lock);
    atomic_store (&self->stopping, true);
    pthread_cond_broadcast (&self->wake);
    pthread_mutex_unlock (&self->lock);
    for (size_t i = 0; i < self->config.workers; i++)
        pthread_join (self->workers[i], NULL);
    pthread_join (self->maintainer, NULL);
    if (self->keeper)
        pthread_join (self->beater, NULL);
    pthread_mutex_destroy (&self->lock);
    pthread_cond_destroy (&self->wake);
    free ((char *) self->config.jobs.url);
    free ((char *) self->config.jobs.queue);
    free (self->workers);
    free (self->keeper);
    free (self);
    *self_p = NULL;
}

const char *
ingest_runner_keeper (const ingest_runner_t *self)
{
    assert (self);
    return self->keeper;
}

char *
ingest_runner_job_data (const char *location)
{
    json_t *data = json_pack ("{s:s}", "location", location);
    char *text = json_dumps (data, JSON_COMPACT);
    json_decref (data);
    return text;
}

//  --- workers ------------------------------------------------------------------

static void
s_count (cm_metric_t *metric)
{
    if (metric)
        cm_metric_add (metric, 1);
}

//  Sleep up to ms, waking early when the runner stops.
static void
s_pause (ingest_runner_t *self, int64_t ms)
{
    struct timespec until;
    clock_gettime (CLOCK_REALTIME, &until);
    until.tv_sec += ms / 1000;
    until.tv_nsec += (ms % 1000) * 1000000;
    if (until.tv_nsec >= 1000000000) {
        until.tv_sec++;
        until.tv_nsec -= 1000000000;
    }
    pthread_mutex_lock (&self->lock);
    if (!atomic_load (&self->stopping))
        pthread_cond_timedwait (&self->wake, &self->lock, &until);
    pthread_mutex_unlock (&self->lock);
}

static bool
s_stopping (void *arg)
{
    return atomic_load (&((s_held_t *) arg)->runner->stopping);
}

//  After each stored batch: keep the lease; a lost one stops the run.
static bool
s_after_batch (size_t done, size_t total, void *arg)
{
    (void) done, (void) total;
    s_held_t *held = (s_held_t *) arg;
    int rc = cm_jobs_renew (held->jobs, held->job);
    if (rc == CM_JOBS_LOST) {
        cm_warn ("job %s: lease lost; another worker has it now", held->job->id);
        return false;
    }
    //  Redis unavailable: go on; complete will tell if the lease survived.
    return true;
}

//  Run one taken job and settle it in the queue and in its row.
static void
s_run (ingest_runner_t *self, cm_jobs_t *jobs, cm_job_t *job)
{
    json_t *data = json_loads (job->data, 0, NULL);
    const char *location = json_string_value (json_object_get (data, "location"));
    cm_storage_t *storage = cm_storage_pool_acquire (self->pool);
    if (!storage) {
        //  The database cannot be opened here: give the job back for now.
        cm_jobs_release (jobs, &job, S_BACKOFF_MAX_MS);
        json_decref (data);
        s_pause (self, S_BACKOFF_MAX_MS);
        return;
    }
    char err[1024] = "";
    ingest_job_result_t result = INGEST_JOB_FATAL;
    s_held_t held = {self, jobs, job};
    ingest_job_hooks_t hooks = {s_stopping, s_after_batch, &held};
    if (!location) {
        snprintf (err, sizeof err, "The job's data has no document location.");
        cm_storage_job_update (storage, job->id, NULL, -1, -1, -1, err, NULL);
    } else
        result = ingest_job_run (self->context, storage, job->id, location, job->attempt,
                                 &hooks, err, sizeof err);
    char id[128];
    snprintf (id, sizeof id, "%s", job->id);
    int attempt = job->attempt, max_attempts = job->max_attempts;
    int rc;
    switch (result) {
        case INGEST_JOB_DONE:
            rc = cm_jobs_complete (jobs, &job);
            s_count (self->outcome[0]);
            cm_info ("job %s: completed (%s, attempt %d)", id, location, attempt);
            break;
        case INGEST_JOB_RETRY:
        case INGEST_JOB_FATAL:
            rc = cm_jobs_fail (jobs, &job, err, result == INGEST_JOB_RETRY);
            if (rc == CM_JOBS_RETRYING) {
                cm_storage_job_update (storage, id, "queued", -1, -1, -1, NULL, NULL);
                s_count (self->outcome[1]);
                cm_warn ("job %s: attempt %d of %d failed, will retry: %s", id, attempt,
                         max_attempts, err);
            } else if (rc == CM_JOBS_FAILED || rc == CM_JOBS_ERROR) {
                //  Failed for good; also when Redis is gone (the row is the
                //  record; the reconciler leaves failed jobs alone).
                if (rc == CM_JOBS_FAILED || result == INGEST_JOB_FATAL ||
                    attempt >= max_attempts) {
                    cm_storage_job_update (storage, id, "failed", -1, -1, -1, NULL, NULL);
                    s_count (self->outcome[2]);
                    cm_error ("job %s: failed after attempt %d of %d: %s", id, attempt,
                              max_attempts, err);
                } else
                    cm_storage_job_update (storage, id, "queued", -1, -1, -1, NULL, NULL);
            }
            break;
        case INGEST_JOB_STORAGE:
            //  Not the job's fault (the disk is full, the file unwritable):
            //  it waits for the database without using up its attempts, or
            //  an outage longer than its back-offs would fail it for good.
            rc = cm_jobs_release (jobs, &job, S_BACKOFF_MAX_MS);
            //  Not when the lease was lost: the row is another worker's.
            if (rc == CM_JOBS_OK)
                cm_storage_job_update (storage, id, "queued", -1, -1, -1, NULL, NULL);
            s_count (self->outcome[3]);
            cm_warn ("job %s: the database failed, trying again in %d ms (the attempt "
                     "is not counted): %s",
                     id, S_BACKOFF_MAX_MS, err);
            s_pause (self, S_BACKOFF_MAX_MS);
            break;
        case INGEST_JOB_CANCELLED:
        default:
            if (atomic_load (&self->stopping)) {
                rc = cm_jobs_release (jobs, &job, 0);
                if (rc == CM_JOBS_OK)
                    cm_storage_job_update (storage, id, "queued", -1, -1, -1, NULL, NULL);
                s_count (self->outcome[3]);
            }
            //  Lease lost: the job is another worker's; leave the row to it.
            break;
    }
    (void) rc;
    cm_job_destroy (&job);
    cm_storage_pool_release (self->pool, &storage);
    json_decref (data);
}

static void *
s_worker (void *arg)
{
    ingest_runner_t *self = (ingest_runner_t *) arg;
    cm_jobs_t *jobs = cm_jobs_new (&self->config.jobs, NULL);
    int64_t backoff = 100;
    while (!atomic_load (&self->stopping)) {
        cm_job_t *job = NULL;
        int rc = cm_jobs_take (jobs, S_TAKE_WAIT_MS, &job);
        if (rc < 0) {
            s_pause (self, backoff);
            backoff = backoff * 2 > S_BACKOFF_MAX_MS ? S_BACKOFF_MAX_MS : backoff * 2;
            continue;
        }
        backoff = 100;
        if (rc == 1)
            s_run (self, jobs, job);
    }
    cm_jobs_destroy (&jobs);
    return NULL;
}

//  --- maintenance ---------------------------------------------------------------

//  Milliseconds since a stored "YYYY-MM-DDTHH:MM:SS.sssZ" (UTC); a huge
//  number when it cannot be read.
static int64_t
s_age_ms (const json_t *stamp)
{
    struct tm tm = {0};
    int ms = 0;
    const char *text = json_string_value (stamp);
    if (!text || sscanf (text, "%d-%d-%dT%d:%d:%d.%dZ", &tm.tm_year, &tm.tm_mon,
                         &tm.tm_mday, &tm.tm_hour, &tm.tm_min, &tm.tm_sec, &ms) < 6)
        return INT64_MAX;
    tm.tm_year -= 1900;
    tm.tm_mon -= 1;
    return cm_clock_wall_ms () - ((int64_t) timegm (&tm) * 1000 + ms);
}

//  The reconciler added a row's job to the queue: the row says queued, and
//  the queue's path from now on (a fallback row, too: the queue runs it
//  now, and if Redis loses it again the queue path's time-outs apply).
static void
s_requeued (ingest_runner_t *self, cm_storage_t *storage, json_t *row)
{
    const char *id = json_string_value (json_object_get (row, "id"));
    const char *path = json_string_value (json_object_get (row, "path"));
    cm_storage_job_update (storage, id, "queued", -1, -1, -1, NULL, NULL);
    if (path && strcmp (path, "queue"))
        cm_storage_job_set_path (storage, id, "queue");
    s_count (self->requeued);
}

//  Add again the jobs the database has as unfinished but Redis does not know.
static void
s_reconcile (ingest_runner_t *self, cm_jobs_t *jobs)
{
    cm_storage_t *storage = cm_storage_pool_acquire (self->pool);
    if (!storage)
        return;
    static const char *const states[] = {"queued", "active"};
    json_t *stale = NULL;
    if (cm_storage_jobs_stale (storage, states, 2, self->config.reconcile_ms, &stale) ==
        CM_STORAGE_OK) {
        size_t i;
        json_t *row;
        json_array_foreach (stale, i, row)
        {
            const char *id = json_string_value (json_object_get (row, "id"));
            const char *location = json_string_value (json_object_get (row, "location"));
            //  A fallback job may still be waiting for, or running on, the
            //  fallback pool (which says how it ended within its task
            //  timeout): only one older than that has been abandoned.
            const char *path = json_string_value (json_object_get (row, "path"));
            if (path && !strcmp (path, "fallback") &&
                s_age_ms (json_object_get (row, "lastUpdatedAt")) <
                    self->config.fallback_ms)
                continue;
            json_t *info = cm_jobs_info (jobs, id);
            const char *queue_state = json_string_value (json_object_get (info, "state"));
            if (queue_state && !strcmp (queue_state, "failed")) {
                //  The queue failed it, but no worker wrote the row: maintain
                //  did (its last lease expired), or the row's write failed.
                //  Without this the row would say active for ever.
                const char *error = json_string_value (json_object_get (info, "error"));
                if (cm_storage_job_update (storage, id, "failed", -1, -1, -1,
                                           error && *error ? error
                                                           : "Failed in the queue.",
                                           NULL) == CM_STORAGE_OK)
                    cm_warn ("job %s (%s): failed in the queue (%s); its row says so now",
                             id, location, error ? error : "no reason");
            }
            if (info || *cm_jobs_errmsg (jobs)) {
                json_decref (info); //  known to Redis, or Redis unavailable
                continue;
            }
            char *data = ingest_runner_job_data (location);
            int rc = cm_jobs_add (jobs, id, data);
            free (data);
            if (rc == CM_JOBS_OK) {
                s_requeued (self, storage, row);
                cm_warn ("job %s (%s): unfinished but unknown to the queue; added again",
                         id, location);
            }
        }
    }
    json_decref (stale);
    cm_storage_pool_release (self->pool, &storage);
}

//  Add to the queue, at once, the unfinished jobs whose rows belong to a
//  dead ingestd (its keeper is not among the live ones): it died between
//  writing a row and adding its job, or during a fallback run. Rows keep
//  their owner after the add (clearing it there cost 13-16% of upload
//  throughput), so a dead ingestd may leave many rows whose jobs the queue
//  has: those are left to the queue's own rules. Every row looked at is
//  disowned, S_ORPHANS_PER_ROUND a round, newest first (an orphan is
//  recent).
static void
s_reconcile_orphans (ingest_runner_t *self, cm_jobs_t *jobs)
{
    json_t *live = NULL;
    if (cm_jobs_live_keepers (jobs, &live) != 1)
        return; //  Redis unavailable, or keepers do not count yet
    cm_storage_t *storage = cm_storage_pool_acquire (self->pool);
    if (!storage) {
        json_decref (live);
        return;
    }
    static const char *const states[] = {"queued", "active"};
    json_t *rows = NULL;
    json_t *seen = json_array ();
    if (cm_storage_jobs_orphaned (storage, states, 2, live, S_ORPHANS_PER_ROUND, &rows) ==
        CM_STORAGE_OK) {
        size_t i;
        json_t *row;
        json_array_foreach (rows, i, row)
        {
            const char *id = json_string_value (json_object_get (row, "id"));
            const char *location = json_string_value (json_object_get (row, "location"));
            const char *owner = json_string_value (json_object_get (row, "owner"));
            json_t *info = cm_jobs_info (jobs, id);
            if (!info && *cm_jobs_errmsg (jobs))
                break; //  Redis unavailable: next round
            int rc = CM_JOBS_EXISTS;
            if (!info) {
                char *data = ingest_runner_job_data (location);
                rc = cm_jobs_add (jobs, id, data);
                free (data);
            }
            json_decref (info);
            if (rc == CM_JOBS_ERROR)
                break;
            const char *path = json_string_value (json_object_get (row, "path"));
            if (rc == CM_JOBS_EXISTS && path && strcmp (path, "queue"))
                //  A fallback row whose add timed out but reached Redis after
                //  all: the queue runs it, and its time-outs apply to the row
                //  if Redis loses it (not the fallback's 610 s).
                cm_storage_job_set_path (storage, id, "queue");
            if (rc == CM_JOBS_OK) {
                s_requeued (self, storage, row);
                cm_warn ("job %s (%s): its ingestd (keeper %s) is gone; added to the "
                         "queue again",
                         id, location, owner);
            }
            json_array_append_new (seen, json_string (id));
        }
    }
    if (json_array_size (seen))
        cm_storage_jobs_disown (storage, seen);
    json_decref (seen);
    json_decref (rows);
    json_decref (live);
    cm_storage_pool_release (self->pool, &storage);
}

static void *
s_maintainer (void *arg)
{
    ingest_runner_t *self = (ingest_runner_t *) arg;
    cm_jobs_t *jobs = cm_jobs_new (&self->config.jobs, NULL);
    int64_t next_reconcile = cm_clock_mono_ms () + self->config.maintain_ms;
    int64_t reconcile_every = self->config.reconcile_ms / 2;
    if (reconcile_every < self->config.maintain_ms)
        reconcile_every = self->config.maintain_ms;
    while (!atomic_load (&self->stopping)) {
        cm_jobs_maintained_t moved;
        bool up = cm_jobs_maintain (jobs, &moved) >= 0;
        if (up && self->recovered[0]) {
            cm_metric_add (self->recovered[0], moved.expired);
            cm_metric_add (self->recovered[1], moved.orphaned);
        }
        if (moved.orphaned)
            cm_warn ("jobs %s: %d held job(s) of a dead ingestd back in the queue",
                     self->config.jobs.queue, moved.orphaned);
        cm_jobs_counts_t counts;
        if (up && cm_jobs_counts (jobs, &counts) == 0 && self->state[0]) {
            int64_t values[5] = {counts.waiting, counts.active, counts.delayed,
                                 counts.completed, counts.failed};
            for (size_t i = 0; i < 5; i++)
                cm_metric_set (self->state[i], (double) values[i]);
        }
        if (self->redis_up)
            cm_metric_set (self->redis_up, up ? 1 : 0);
        if (up && self->keeper)
            s_reconcile_orphans (self, jobs);
        if (up && cm_clock_mono_ms () >= next_reconcile) {
            s_reconcile (self, jobs);
            next_reconcile = cm_clock_mono_ms () + reconcile_every;
        }
        s_pause (self, self->config.maintain_ms);
    }
    cm_jobs_destroy (&jobs);
    return NULL;
}

//  Beats this process's keeper on a thread of its own, so that a slow
//  maintenance round (the reconciler) never makes it look dead.
static void *
s_beater (void *arg)
{
    ingest_runner_t *self = (ingest_runner_t *) arg;
    cm_jobs_t *jobs = cm_jobs_new (&self->config.jobs, NULL);
    int64_t period = self->config.jobs.keeper_timeout_ms / 5;
    cm_info ("jobs %s: keeper %s beats every %lld ms", self->config.jobs.queue,
             self->keeper, (long long) period);
    while (!atomic_load (&self->stopping)) {
        cm_jobs_beat (jobs); //  Redis unavailable: the next one will do
        s_pause (self, period);
    }
    cm_jobs_destroy (&jobs);
    return NULL;
}
