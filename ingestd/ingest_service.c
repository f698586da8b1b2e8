/*  ingest_service.c: see ingest_service.h. */
#include "ingest_service.h"
#include "cm_utf8.h"
#include "cm_form.h"
#include "cm_log.h"
#include "cm_queue.h"
#include "cm_storage_docs.h"
#include "cm_vsearch.h"
#include "ingest_extract.h"
#include "ingest_job.h"
#include "ingest_runner.h"
#include <pthread.h>
#include <strings.h>
#include <errno.h>
#include <sodium.h>
#include <math.h>
#include <stdatomic.h>

//  After a failed add, the queue is skipped for this long (fallback path).
#define S_QUEUE_RETRY_MS 1000
//  Queue handles kept for the handler threads.
#define S_HANDLES_MAX 16
//  Most inputs one embeddings request may carry.
#define S_EMBED_INPUTS_MAX 2048

struct ingest_service_s {
    ingest_config_t config;
    cm_storage_pool_t *pool;           //  database connections
    cm_embedder_t *embedder;           //  EMBEDDING_PROVIDER
    cm_breaker_t *breaker;             //  the ingestion breaker (around the embedder)
    ingest_job_context_t context;      //  what every job run needs
    ingest_runner_t *runner;           //  the queue's workers and maintenance
    cm_queue_t *fallback;              //  the ingestion worker pool
    cm_vsearch_t *vsearch;             //  cached vector sets for vector-search
    atomic_llong queue_skip_until;     //  mono ms: use the fallback path until then
    pthread_mutex_t lock;              //  guards handles
    cm_jobs_t *handles[S_HANDLES_MAX]; //  idle queue handles for handlers
    size_t handle_count;
    cm_metric_t *path_count[2]; //  llmrt_ingest_jobs_total{path=queue|fallback}
};

//  A job handed to the fallback pool; the handler waits for it.
typedef struct {
    ingest_service_t *service;
    const char *job_id;
    const char *location;
    cm_call_t *call;       //  the request: its cancellation stops the run
    atomic_bool timed_out; //  the handler gave up waiting: stop
    pthread_mutex_t lock;
    pthread_cond_t done_cond;
    bool done;    //  guarded by lock
    bool started; //  guarded by lock: a runner took it
    ingest_job_result_t result;
    char err[1024];
} s_task_t;

static void s_upload (cm_call_t *call, void *arg);
static void s_raw_text (cm_call_t *call, void *arg);
static void s_job_get (cm_call_t *call, void *arg);
static void s_update_embeddings (cm_call_t *call, void *arg);
static void s_vector_search (cm_call_t *call, void *arg);
static void s_openai_embeddings (cm_call_t *call, void *arg);

static const cm_route_t s_routes[] = {
    {"POST", "/api/v1/document/upload", s_upload, false},
    {"POST", "/api/v1/document/raw-text", s_raw_text, false},
    //  Quick: a job's progress is read while uploads fill the queue.
    {"GET", "/api/v1/document/jobs/{id}", s_job_get, true},
    {"POST", "/api/v1/workspace/{slug}/update-embeddings", s_update_embeddings, false},
    {"POST", "/api/v1/workspace/{slug}/vector-search", s_vector_search, false},
    {"POST", "/api/v1/openai/embeddings", s_openai_embeddings, false},
    {NULL, NULL, NULL, false},
};

static cm_queue_outcome_t s_fallback_run (void *task, void *arg);
static void s_fallback_drop (void *task, cm_queue_drop_t why, void *arg);

ingest_service_t *
ingest_service_new (const ingest_config_t *config, cm_breaker_t **breaker_p,
                    cm_metrics_t *metrics, char *err, size_t errlen)
{
    assert (config && config->storage_dir && breaker_p && *breaker_p);
    cm_embedder_t *embedder = cm_embedder_new (&config->embed, err, errlen);
    if (!embedder)
        return NULL;
    cm_storage_pool_t *pool = cm_storage_pool_new (config->storage_dir, err, errlen);
    if (!pool) {
        cm_embedder_destroy (&embedder);
        return NULL;
    }
    ingest_service_t *self = cm_calloc (1, sizeof *self);
    self->config = *config;
    self->config.storage_dir = NULL;
    self->pool = pool;
    self->embedder = embedder;
    self->breaker = *breaker_p;
    *breaker_p = NULL;
    self->context.embedder = embedder;
    self->context.breaker = self->breaker;
    self->context.chunk_size = config->chunk_size;
    self->context.chunk_overlap = config->chunk_overlap;
    self->context.batch_size = config->embed.batch_size > 0
                                   ? (size_t) config->embed.batch_size
                                   : CM_EMBED_DEFAULT_BATCH_SIZE;
    self->vsearch = cm_vsearch_new ();
    cm_vsearch_set_max_bytes (self->vsearch, config->vector_cache);
    atomic_init (&self->queue_skip_until, 0);
    pthread_mutex_init (&self->lock, NULL);
    self->fallback =
        cm_queue_new ("ingest-pool", config->pool_size ? config->pool_size : 1, 1024,
                      s_fallback_run, s_fallback_drop, self);
    if (metrics) {
        cm_queue_attach_metrics (self->fallback, metrics);
        cm_vsearch_attach_metrics (self->vsearch, metrics);
        const char *queue[] = {"path", "queue", NULL};
        const char *fallback[] = {"path", "fallback", NULL};
        const char *help = "Ingestions accepted, by the path that embeds them";
        self->path_count[0] =
            cm_metrics_counter (metrics, "llmrt_ingest_jobs_total", help, queue);
        self->path_count[1] =
            cm_metrics_counter (metrics, "llmrt_ingest_jobs_total", help, fallback);
    }
    ingest_runner_config_t runner = {
        .jobs = config->jobs,
        .workers = config->job_workers,
        .reconcile_ms = config->reconcile_ms,
        //  The pool's line plus the task itself, and a margin.
        .fallback_ms = 2 * config->task_timeout_ms + 10000,
    };
    self->runner = ingest_runner_new (&runner, &self->context, self->pool, metrics);
    return self;
}

void
ingest_service_destroy (ingest_service_t **self_p)
{
    assert (self_p);
    ingest_service_t *self = *self_p;
    if (!self)
        return;
    ingest_runner_destroy (&self->runner);
    cm_queue_destroy (&self->fallback);
    for (size_t i = 0; i < self->handle_count; i++)
        cm_jobs_destroy (&self->handles[i]);
    pthread_mutex_destroy (&self->lock);
    cm_vsearch_destroy (&self->vsearch);
    cm_storage_pool_destroy (&self->pool);
    cm_embedder_destroy (&self->embedder);
    cm_breaker_destroy (&self->breaker);
    free (self);
    *self_p = NULL;
}

const cm_route_t *
ingest_service_routes (void)
{
    return s_routes;
}

//  --- helpers ---------------------------------------------------------------------

//  Document routes answer failures as {success:false, error}.
static void
s_reply_failure (cm_call_t *call, int status, const char *error)
{
    //  Errors quote file names and what the extractors said.
    char *text = cm_utf8_dup (error);
    cm_call_reply_json (call, status,
                        json_pack ("{s:b, s:s}", "success", 0, "error", text));
    free (text);
}

//  The breaker refused: 503 with Retry-After in whole seconds (at least 1).
static void
s_reply_circuit_open (ingest_service_t *self, cm_call_t *call, int64_t retry_ms,
                      bool docs)
{
    int64_t seconds = cm_call_retry_after (call, retry_ms);
    char error[256];
    snprintf (error, sizeof error,
              "The %s circuit is open: the embedder is failing, so embedding is paused. "
              "Retry after %lld s.",
              cm_breaker_name (self->breaker), (long long) seconds);
    if (docs)
        s_reply_failure (call, 503, error);
    else
        cm_call_reply_error (call, 503, error);
}

static cm_storage_t *
s_acquire (ingest_service_t *self, cm_call_t *call, bool docs)
{
    cm_storage_t *storage = cm_storage_pool_acquire (self->pool);
    if (!storage) {
        const char *error = "The database is unavailable.";
        if (docs)
            s_reply_failure (call, 503, error);
        else
            cm_call_reply_error (call, 503, error);
    }
    return storage;
}

static bool
s_call_cancelled (void *arg)
{
    return cm_call_cancelled ((cm_call_t *) arg);
}

//  Embed texts for a request under the breaker. On failure the call is
//  answered (docs: in the document routes' shape) and -1 returned.
static int
s_embed (ingest_service_t *self, cm_call_t *call, const char *const *texts, size_t count,
         float **vectors_p, size_t *dim_p, bool docs)
{
    int64_t retry_ms = 0;
    char err[512] = "";
    cm_embed_status_t status;
    if (!ingest_job_embed (&self->context, texts, count, vectors_p, dim_p,
                           s_call_cancelled, call, &status, &retry_ms, err, sizeof err)) {
        s_reply_circuit_open (self, call, retry_ms, docs);
        return -1;
    }
    if (status == CM_EMBED_OK)
        return 0;
    if (status == CM_EMBED_CANCELLED) {
        //  A client that left hears nothing; a shutdown's cut is answered
        //  503 by the worker (cm_call_shutting_down).
        if (!cm_call_shutting_down (call))
            cm_call_reply_error (call, 499, "Cancelled.");
    } else {
        int code = status == CM_EMBED_REQUEST ? 400 : 502;
        if (docs)
            s_reply_failure (call, code, err);
        else
            cm_call_reply_error (call, code, err);
    }
    return -1;
}

//  The workspace with this slug; on NOT_FOUND or ERROR the call is
//  answered (400 naming it, or 503) and NULL returned.
static json_t *
s_workspace (cm_storage_t *storage, cm_call_t *call, const char *slug, bool docs)
{
    json_t *workspace = NULL;
    cm_storage_status_t status = cm_storage_workspace_get (storage, slug, &workspace);
    if (status == CM_STORAGE_OK)
        return workspace;
    char error[512];
    int code = 400;
    if (status == CM_STORAGE_NOT_FOUND)
        snprintf (error, sizeof error, "Workspace %s is not a valid workspace.", slug);
    else {
        snprintf (error, sizeof error, "The database could not be read: %s",
                  cm_storage_errmsg (storage));
        code = 503;
    }
    if (docs)
        s_reply_failure (call, code, error);
    else
        cm_call_reply_error (call, code, error);
    return NULL;
}

//  addToWorkspaces, a comma-separated string or an array of slugs, as an
//  array of workspace ids; NULL after answering the call (unknown slug, an
//  array item that is no slug). The string's empty items are skipped, as
//  upstream's split-and-filter does: "a,,b" is a and b.
static json_t *
s_target_workspaces (cm_storage_t *storage, cm_call_t *call, const json_t *value,
                     json_t **slugs_p)
{
    if (value && !json_is_null (value) && !json_is_string (value) &&
        !json_is_array (value)) {
        s_reply_failure (call, 400,
                         "addToWorkspaces must be workspace slugs: a comma-separated "
                         "string or an array of strings.");
        return NULL;
    }
    json_t *slugs = json_array ();
    if (json_is_string (value)) {
        char *copy = cm_strdup (json_string_value (value));
        char *save = NULL;
        for (char *slug = strtok_r (copy, ",", &save); slug;
             slug = strtok_r (NULL, ",", &save)) {
            while (*slug == ' ' || *slug == '\t')
                slug++;
            size_t size = strlen (slug);
            while (size && (slug[size - 1] == ' ' || slug[size - 1] == '\t'))
                slug[--size] = 0;
            if (size)
                json_array_append_new (slugs, json_string (slug));
        }
        free (copy);
    } else if (json_is_array (value)) {
        size_t i;
        json_t *item;
        json_array_foreach (value, i, item)
        {
            //  Refused, not skipped: a skipped item leaves the document out
            //  of a workspace the client asked for, and it is told 200.
            const char *slug = json_string_value (item);
            if (!slug || !slug[strspn (slug, " \t")]) {
                char error[256];
                snprintf (error, sizeof error,
                          "addToWorkspaces[%zu] is %s: addToWorkspaces must be workspace "
                          "slugs: a comma-separated string or an array of strings.",
                          i, slug ? "an empty string" : "not a string");
                s_reply_failure (call, 400, error);
                json_decref (slugs);
                return NULL;
            }
            json_array_append (slugs, item);
        }
    }
    json_t *ids = json_array ();
    size_t i;
    json_t *slug;
    json_array_foreach (slugs, i, slug)
    {
        json_t *workspace = s_workspace (storage, call, json_string_value (slug), true);
        if (!workspace) {
            json_decref (ids);
            json_decref (slugs);
            return NULL;
        }
        json_array_append (ids, json_object_get (workspace, "id"));
        json_decref (workspace);
    }
    *slugs_p = slugs;
    return ids;
}

//  A queue handle for this thread, from the idle ones or new.
static cm_jobs_t *
s_handle_take (ingest_service_t *self)
{
    cm_jobs_t *jobs = NULL;
    pthread_mutex_lock (&self->lock);
    if (self->handle_count)
        jobs = self->handles[--self->handle_count];
    pthread_mutex_unlock (&self->lock);
    return jobs ? jobs : cm_jobs_new (&self->config.jobs, NULL);
}

static void
s_handle_give (ingest_service_t *self, cm_jobs_t **jobs_p)
{
    pthread_mutex_lock (&self->lock);
    if (self->handle_count < S_HANDLES_MAX) {
        self->handles[self->handle_count++] = *jobs_p;
        *jobs_p = NULL;
    }
    pthread_mutex_unlock (&self->lock);
    cm_jobs_destroy (jobs_p);
}

//  Put a recorded job into the Redis queue. Returns true when it is there.
static bool
s_enqueue (ingest_service_t *self, const char *job_id, const char *location)
{
    if (cm_clock_mono_ms () < atomic_load (&self->queue_skip_until))
        return false;
    cm_jobs_t *jobs = s_handle_take (self);
    char *data = ingest_runner_job_data (location);
    int rc = cm_jobs_add (jobs, job_id, data);
    free (data);
    if (rc < 0) {
        cm_warn ("job %s: the queue is unavailable (%s); embedding on the fallback path",
                 job_id, cm_jobs_errmsg (jobs));
        atomic_store (&self->queue_skip_until, cm_clock_mono_ms () + S_QUEUE_RETRY_MS);
    }
    s_handle_give (self, &jobs);
    return rc >= 0;
}

//  --- the fallback pool ---------------------------------------------------------

static bool
s_task_cancelled (void *arg)
{
    s_task_t *task = (s_task_t *) arg;
    return atomic_load (&task->timed_out) || cm_call_cancelled (task->call);
}

static void
s_task_finish (s_task_t *task, ingest_job_result_t result)
{
    pthread_mutex_lock (&task->lock);
    task->result = result;
    task->done = true;
    pthread_cond_signal (&task->done_cond);
    pthread_mutex_unlock (&task->lock);
}

static cm_queue_outcome_t
s_fallback_run (void *arg_task, void *arg)
{
    s_task_t *task = (s_task_t *) arg_task;
    ingest_service_t *self = (ingest_service_t *) arg;
    pthread_mutex_lock (&task->lock);
    task->started = true;
    pthread_mutex_unlock (&task->lock);
    ingest_job_result_t result = INGEST_JOB_CANCELLED;
    cm_storage_t *storage = cm_storage_pool_acquire (self->pool);
    if (!storage) {
        snprintf (task->err, sizeof task->err, "The database is unavailable.");
        result = INGEST_JOB_RETRY;
    } else if (!s_task_cancelled (task)) {
        ingest_job_hooks_t hooks = {s_task_cancelled, NULL, task};
        result = ingest_job_run (&self->context, storage, task->job_id, task->location, 1,
                                 &hooks, task->err, sizeof task->err);
    } else
        //  The client left, or the gateway gave this instance up (it stood
        //  still), before the run began: the row says why it failed.
        snprintf (task->err, sizeof task->err, "Cancelled before it started.");
    cm_storage_pool_release (self->pool, &storage);
    s_task_finish (task, result);
    return result == INGEST_JOB_DONE        ? CM_QUEUE_COMPLETED
           : result == INGEST_JOB_CANCELLED ? CM_QUEUE_ABORTED
                                            : CM_QUEUE_FAILED;
}

static void
s_fallback_drop (void *arg_task, cm_queue_drop_t why, void *arg)
{
    (void) arg;
    s_task_t *task = (s_task_t *) arg_task;
    snprintf (task->err, sizeof task->err, "%s",
              why == CM_QUEUE_DROP_SHUTDOWN ? "The service is shutting down."
                                            : "Timed out waiting for a worker.");
    s_task_finish (task, INGEST_JOB_CANCELLED);
}

//  Run a job on the pool and wait for it, at most task_timeout_ms; then
//  it is told to stop, and waited for (it stops within a batch).
static ingest_job_result_t
s_fallback (ingest_service_t *self, cm_call_t *call, const char *job_id,
            const char *location, bool *timed_out, char *err, size_t errlen)
{
    s_task_t task = {
        .service = self, .job_id = job_id, .location = location, .call = call};
    atomic_init (&task.timed_out, false);
    pthread_mutex_init (&task.lock, NULL);
    pthread_cond_init (&task.done_cond, NULL);
    int64_t deadline = cm_clock_wall_ms () + self->config.task_timeout_ms;
    ingest_job_result_t result = INGEST_JOB_RETRY;
    *timed_out = false;
    if (cm_queue_submit (self->fallback, job_id, &task, deadline) != CM_QUEUE_ACCEPTED)
        snprintf (err, errlen, "The ingestion worker pool is full.");
    else {
        struct timespec until = {(time_t) (deadline / 1000),
                                 (long) (deadline % 1000) * 1000000};
        pthread_mutex_lock (&task.lock);
        while (!task.done) {
            if (pthread_cond_timedwait (&task.done_cond, &task.lock, &until) ==
                    ETIMEDOUT &&
                !task.done) {
                *timed_out = true;
                atomic_store (&task.timed_out, true);
                //  Not started: take it out of the line (its drop ends it).
                if (!task.started) {
                    pthread_mutex_unlock (&task.lock);
                    cm_queue_cancel (self->fallback, job_id);
                    pthread_mutex_lock (&task.lock);
                }
                while (!task.done)
                    pthread_cond_wait (&task.done_cond, &task.lock);
            }
        }
        pthread_mutex_unlock (&task.lock);
        result = task.result;
        snprintf (err, errlen, "%s", task.err);
    }
    pthread_mutex_destroy (&task.lock);
    pthread_cond_destroy (&task.done_cond);
    return result;
}

//  --- ingestion ---------------------------------------------------------------------

//  Store an extracted document, link it, record its job and have it
//  embedded (queue, else fallback). Answers the call.
static void
s_ingest (ingest_service_t *self, cm_call_t *call, cm_storage_t *storage,
          ingest_doc_t *doc, const json_t *add_to, json_t *metadata)
{
    json_t *slugs = NULL;
    json_t *ids = s_target_workspaces (storage, call, add_to, &slugs);
    if (!ids)
        return;
    json_t *fields = ingest_doc_json (doc);
    if (metadata)
        json_object_set (fields, "metadata", metadata);
    json_t *stored = NULL, *job = NULL;
    char error[1024] = "";
    if (cm_storage_document_add (storage, fields, doc->text, &stored) != CM_STORAGE_OK)
        snprintf (error, sizeof error, "The document could not be stored: %s",
                  cm_storage_errmsg (storage));
    size_t i;
    json_t *id;
    json_array_foreach (ids, i, id) if (!*error &&
                                        cm_storage_workspace_doc_link (
                                            storage, json_integer_value (id),
                                            doc->location, NULL) != CM_STORAGE_OK)
        snprintf (error, sizeof error, "The document could not be added to %s: %s",
                  json_string_value (json_array_get (slugs, i)),
                  cm_storage_errmsg (storage));
    if (!*error &&
        cm_storage_job_create (storage, NULL, doc->location, "queue",
                               ingest_runner_keeper (self->runner), slugs,
                               self->config.jobs.attempts, &job) != CM_STORAGE_OK)
        snprintf (error, sizeof error, "The ingestion job could not be recorded: %s",
                  cm_storage_errmsg (storage));
    if (*error) {
        //  Take back what was stored: a document without a job would never
        //  be embedded, and the client, told 503, sends it again.
        if (stored) {
            json_array_foreach (ids, i, id) cm_storage_workspace_doc_unlink (
                storage, json_integer_value (id), doc->location);
            cm_storage_document_delete (storage, doc->location);
        }
        s_reply_failure (call, 503, error);
        goto done;
    }
    const char *job_id = json_string_value (json_object_get (job, "id"));
    const char *path = "queue";
    int status = 200;
    if (s_enqueue (self, job_id, doc->location)) {
        if (self->path_count[0])
            cm_metric_add (self->path_count[0], 1);
    } else {
        path = "fallback";
        //  The row was recorded for the queue: say which path runs it.
        if (cm_storage_job_set_path (storage, job_id, path) != CM_STORAGE_OK)
            cm_warn ("job %s: the fallback path could not be recorded: %s", job_id,
                     cm_storage_errmsg (storage));
        if (self->path_count[1])
            cm_metric_add (self->path_count[1], 1);
        bool timed_out = false;
        char err[1024] = "";
        ingest_job_result_t result =
            s_fallback (self, call, job_id, doc->location, &timed_out, err, sizeof err);
        if (result == INGEST_JOB_CANCELLED && !timed_out &&
            cm_call_shutting_down (call)) {
            //  Cut short by this daemon's shutdown, not by its client: the
            //  document is stored, and the row goes back to "queued", which
            //  the reconciler gives the queue once Redis is back (an orphan
            //  of this stopped process). The upload was accepted.
            cm_storage_job_update (
                storage, job_id, "queued", -1, -1, -1,
                "Interrupted by ingestd's shutdown; it runs again from "
                "the queue.",
                NULL);
        } else if (result != INGEST_JOB_DONE) {
            //  The row keeps the reason; the reconciler re-queues a job left
            //  "queued" when Redis is back, but a job that failed here was
            //  answered as failed, so it stays failed.
            if (timed_out)
                snprintf (err, sizeof err, "Ingestion timed out after %lld ms.",
                          (long long) self->config.task_timeout_ms);
            //  Unless another instance took this process for dead (it lost
            //  Redis, or stood still) and handed the row to the queue,
            //  which will end it.
            const char *keeper = ingest_runner_keeper (self->runner);
            if (!keeper)
                cm_storage_job_update (storage, job_id, "failed", -1, -1, -1, err, NULL);
            else if (cm_storage_job_fail_owned (storage, job_id, keeper, err) ==
                     CM_STORAGE_NOT_FOUND)
                cm_info ("job %s: the queue has it now; its row is left to the queue",
                         job_id);
            if (result == INGEST_JOB_CANCELLED && !timed_out && cm_call_cancelled (call))
                status = 499;
            else
                status = timed_out ? 504 : result == INGEST_JOB_FATAL ? 422 : 503;
            snprintf (error, sizeof error, "%s", err);
        }
    }
    json_t *row = NULL;
    cm_storage_job_get (storage, job_id, &row);
    json_t *document = ingest_doc_json (doc);
    json_object_set_new (
        document, "job",
        json_pack ("{s:s, s:s, s:s}", "id", job_id, "state",
                   row ? json_string_value (json_object_get (row, "state")) : "queued",
                   "path", path));
    json_decref (row);
    if (status == 200)
        cm_call_reply_json (call, 200,
                            json_pack ("{s:b, s:n, s:[o]}", "success", 1, "error",
                                       "documents", document));
    else {
        json_decref (document);
        s_reply_failure (call, status, error);
    }
done:
    json_decref (job);
    json_decref (stored);
    json_decref (fields);
    json_decref (ids);
    json_decref (slugs);
}

//  The first field that an upload takes once but the form repeats, or
//  NULL. cm_form_get sees only the first part of a name, so a second file
//  or workspace list would be dropped while the client is told 200.
static const char *
s_repeated_field (cm_form_t *form)
{
    static const char *const once[] = {"file", "metadata", "addToWorkspaces", NULL};
    for (const char *const *name = once; *name; name++) {
        size_t seen = 0;
        for (size_t i = 0; i < cm_form_count (form); i++)
            if (!strcmp (cm_form_at (form, i)->name, *name) && ++seen > 1)
                return *name;
    }
    return NULL;
}

static void
s_upload (cm_call_t *call, void *arg)
{
    ingest_service_t *self = (ingest_service_t *) arg;
    const char *type = cm_call_header (call, "content-type");
    if (!type ||
        strncasecmp (type, CM_FORM_CONTENT_TYPE, strlen (CM_FORM_CONTENT_TYPE))) {
        s_reply_failure (call, 400,
                         "Send the file as multipart/form-data, field \"file\".");
        return;
    }
    size_t size = 0;
    const char *body = cm_call_body (call, &size);
    char err[512] = "";
    cm_form_t *form = cm_form_decode (body, size, err, sizeof err);
    if (!form) {
        s_reply_failure (call, 400, err);
        return;
    }
    const char *repeated = s_repeated_field (form);
    if (repeated) {
        snprintf (err, sizeof err,
                  "The field \"%s\" was sent more than once: an upload takes one "
                  "\"file\", one \"metadata\" and one \"addToWorkspaces\" "
                  "(comma-separated workspace slugs).",
                  repeated);
        cm_form_destroy (&form);
        s_reply_failure (call, 400, err);
        return;
    }
    //  Bad metadata is refused (upstream ignores it: a silent loss).
    const cm_form_part_t *part = cm_form_get (form, "metadata");
    json_t *metadata = NULL;
    if (part && part->size) {
        json_error_t error;
        metadata = json_loadb (part->data, part->size, 0, &error);
        if (!json_is_object (metadata)) {
            snprintf (err, sizeof err, "metadata is not a JSON object: %s",
                      metadata ? "another JSON value" : error.text);
            json_decref (metadata);
            cm_form_destroy (&form);
            s_reply_failure (call, 400, err);
            return;
        }
    }
    ingest_doc_t doc = {0};
    ingest_extract_result_t result =
        ingest_extract_form (form, cm_clock_wall_ms (), &doc, err, sizeof err);
    if (result != INGEST_EXTRACT_OK)
        s_reply_failure (call, ingest_extract_status (result), err);
    else {
        const cm_form_part_t *add = cm_form_get (form, "addToWorkspaces");
        json_t *add_to = add ? json_stringn (add->data, add->size) : NULL;
        cm_storage_t *storage = s_acquire (self, call, true);
        if (storage)
            s_ingest (self, call, storage, &doc, add_to, metadata);
        cm_storage_pool_release (self->pool, &storage);
        json_decref (add_to);
    }
    ingest_doc_clear (&doc);
    json_decref (metadata);
    cm_form_destroy (&form);
}

static void
s_raw_text (cm_call_t *call, void *arg)
{
    ingest_service_t *self = (ingest_service_t *) arg;
    json_t *body = cm_call_json (call);
    json_t *text = json_object_get (body, "textContent");
    json_t *metadata = json_object_get (body, "metadata");
    char err[512] = "";
    if (metadata && !json_is_object (metadata)) {
        s_reply_failure (call, 400, "metadata must be an object with at least a title.");
        return;
    }
    if (text && !json_is_string (text)) {
        s_reply_failure (call, 422, "textContent must be a string.");
        return;
    }
    ingest_doc_t doc = {0};
    ingest_extract_result_t result = ingest_extract_raw (
        json_string_value (text), metadata, cm_clock_wall_ms (), &doc, err, sizeof err);
    if (result != INGEST_EXTRACT_OK)
        s_reply_failure (call, ingest_extract_status (result), err);
    else {
        cm_storage_t *storage = s_acquire (self, call, true);
        if (storage)
            s_ingest (self, call, storage, &doc,
                      json_object_get (body, "addToWorkspaces"), metadata);
        cm_storage_pool_release (self->pool, &storage);
    }
    ingest_doc_clear (&doc);
}

static void
s_job_get (cm_call_t *call, void *arg)
{
    ingest_service_t *self = (ingest_service_t *) arg;
    const char *id = cm_call_param (call, "id");
    cm_storage_t *storage = s_acquire (self, call, false);
    if (!storage)
        return;
    json_t *job = NULL;
    cm_storage_status_t status = cm_storage_job_get (storage, id, &job);
    cm_storage_pool_release (self->pool, &storage);
    if (status == CM_STORAGE_NOT_FOUND) {
        char error[256];
        snprintf (error, sizeof error, "No ingestion job %s.", id);
        cm_call_reply_error (call, 404, error);
        return;
    }
    if (status != CM_STORAGE_OK) {
        cm_call_reply_error (call, 503, "The database could not be read.");
        return;
    }
    //  The queue's own view, when it still knows the job (attempt and
    //  back-off of a job waiting for its retry).
    json_t *queue = NULL;
    if (cm_clock_mono_ms () >= atomic_load (&self->queue_skip_until)) {
        cm_jobs_t *jobs = s_handle_take (self);
        queue = cm_jobs_info (jobs, id);
        if (queue)
            json_object_del (queue, "data");
        else if (*cm_jobs_errmsg (jobs))
            //  Redis unavailable: as for uploads, do not wait on it again
            //  for a second (a hung Redis costs one timeout, not one per call).
            atomic_store (&self->queue_skip_until,
                          cm_clock_mono_ms () + S_QUEUE_RETRY_MS);
        s_handle_give (self, &jobs);
    }
    json_object_set_new (job, "queue", queue ? queue : json_null ());
    cm_call_reply_json (call, 200, json_pack ("{s:o}", "job", job));
}

static void
s_update_embeddings (cm_call_t *call, void *arg)
{
    ingest_service_t *self = (ingest_service_t *) arg;
    json_t *body = cm_call_json (call);
    json_t *adds = json_object_get (body, "adds");
    json_t *deletes = json_object_get (body, "deletes");
    if ((adds && !json_is_array (adds)) || (deletes && !json_is_array (deletes))) {
        cm_call_reply_error (call, 400,
                             "adds and deletes must be arrays of document locations.");
        return;
    }
    cm_storage_t *storage = s_acquire (self, call, false);
    if (!storage)
        return;
    json_t *workspace = s_workspace (storage, call, cm_call_param (call, "slug"), false);
    if (!workspace) {
        cm_storage_pool_release (self->pool, &storage);
        return;
    }
    int64_t workspace_id = json_integer_value (json_object_get (workspace, "id"));
    char error[1024] = "";
    int code = 200;
    //  Every location first, so that a bad one changes nothing.
    size_t i;
    json_t *item;
    json_array_foreach (adds, i, item)
    {
        json_t *document = NULL;
        const char *location = json_string_value (item);
        cm_storage_status_t status =
            location ? cm_storage_document_get (storage, location, false, &document)
                     : CM_STORAGE_NOT_FOUND;
        json_decref (document);
        if (status != CM_STORAGE_OK) {
            code = status == CM_STORAGE_NOT_FOUND ? 400 : 503;
            snprintf (error, sizeof error, "%s %s",
                      location ? location : "(not a string)",
                      status == CM_STORAGE_NOT_FOUND ? "is not a known document location."
                                                     : "could not be read.");
            break;
        }
    }
    //  Deletes first, then adds, as upstream does (a location in both ends
    //  up linked), in one transaction: a failure changes nothing.
    if (!*error) {
        cm_storage_status_t status =
            cm_storage_workspace_docs_update (storage, workspace_id, deletes, adds);
        if (status != CM_STORAGE_OK) {
            //  A document (or the workspace) removed since the check above.
            code = status == CM_STORAGE_NOT_FOUND ? 400 : 503;
            snprintf (error, sizeof error,
                      "The workspace's documents could not be "
                      "updated (nothing was changed): %s",
                      cm_storage_errmsg (storage));
        }
    }
    json_t *documents = NULL;
    if (!*error && cm_storage_workspace_doc_list (storage, workspace_id, &documents) !=
                       CM_STORAGE_OK) {
        code = 503;
        snprintf (error, sizeof error, "The database could not be read.");
    }
    cm_storage_pool_release (self->pool, &storage);
    if (*error)
        cm_call_reply_error (call, code, error);
    else {
        json_object_set_new (workspace, "documents", documents);
        cm_call_reply_json (call, 200, json_pack ("{s:O}", "workspace", workspace));
    }
    json_decref (workspace);
}

//  A number field (or a string holding one), else fallback. "nan" and
//  "inf" are no numbers here: a NaN threshold would pass every chunk, and
//  a NaN topN cannot be converted to a size.
static double
s_number (const json_t *value, double fallback)
{
    if (json_is_number (value))
        return json_number_value (value);
    if (json_is_string (value)) {
        char *end = NULL;
        double number = strtod (json_string_value (value), &end);
        if (end && end != json_string_value (value) && !*end && isfinite (number))
            return number;
    }
    return fallback;
}

static void
s_vector_search (cm_call_t *call, void *arg)
{
    ingest_service_t *self = (ingest_service_t *) arg;
    json_t *body = cm_call_json (call);
    const char *query = json_string_value (json_object_get (body, "query"));
    if (!query || !*query) {
        cm_call_reply_error (call, 400, "query is required: the text to search for.");
        return;
    }
    cm_storage_t *storage = s_acquire (self, call, false);
    if (!storage)
        return;
    json_t *workspace = s_workspace (storage, call, cm_call_param (call, "slug"), false);
    if (!workspace) {
        cm_storage_pool_release (self->pool, &storage);
        return;
    }
    //  Upstream's defaults: the workspace's topN and similarityThreshold.
    double top_n = s_number (json_object_get (body, "topN"),
                             s_number (json_object_get (workspace, "topN"), 4));
    double threshold =
        s_number (json_object_get (body, "scoreThreshold"),
                  s_number (json_object_get (workspace, "similarityThreshold"), 0.25));
    if (top_n < 1)
        top_n = 1;
    if (top_n > 1000)
        top_n = 1000;
    float *vector = NULL;
    size_t dim = 0;
    if (s_embed (self, call, &query, 1, &vector, &dim, false) == 0) {
        json_t *result = NULL;
        cm_storage_status_t status =
            cm_vsearch_query (self->vsearch, storage,
                              json_integer_value (json_object_get (workspace, "id")),
                              vector, dim, (size_t) top_n, threshold, &result);
        if (status == CM_STORAGE_OK)
            cm_call_reply_json (call, 200, result);
        else
            cm_call_reply_error (call, 503, "The database could not be read.");
    }
    free (vector);
    json_decref (workspace);
    cm_storage_pool_release (self->pool, &storage);
}

//  dim floats as OpenAI's base64 embedding: their little-endian IEEE-754
//  bytes, base64 (standard alphabet, padded). A new JSON string.
static json_t *
s_base64_floats (const float *vector, size_t dim)
{
    unsigned char *bytes = cm_malloc (dim * 4 + 1);
    for (size_t i = 0; i < dim; i++) {
        uint32_t bits;
        memcpy (&bits, &vector[i], 4);
        bytes[4 * i] = (unsigned char) bits;
        bytes[4 * i + 1] = (unsigned char) (bits >> 8);
        bytes[4 * i + 2] = (unsigned char) (bits >> 16);
        bytes[4 * i + 3] = (unsigned char) (bits >> 24);
    }
    size_t size = sodium_base64_ENCODED_LEN (dim * 4, sodium_base64_VARIANT_ORIGINAL);
    char *text = cm_malloc (size);
    sodium_bin2base64 (text, size, bytes, dim * 4, sodium_base64_VARIANT_ORIGINAL);
    json_t *value = json_string (text);
    free (text);
    free (bytes);
    return value;
}

static void
s_openai_embeddings (cm_call_t *call, void *arg)
{
    ingest_service_t *self = (ingest_service_t *) arg;
    json_t *input = json_object_get (cm_call_json (call), "input");
    size_t count = json_is_string (input)  ? 1
                   : json_is_array (input) ? json_array_size (input)
                                           : 0;
    const char **texts = count ? cm_calloc (count, sizeof *texts) : NULL;
    bool valid = count > 0 && count <= S_EMBED_INPUTS_MAX;
    if (json_is_string (input))
        texts[0] = json_string_value (input);
    else
        for (size_t i = 0; valid && i < count; i++)
            if (!(texts[i] = json_string_value (json_array_get (input, i))))
                valid = false;
    if (!valid) {
        free (texts);
        char error[256];
        snprintf (error, sizeof error,
                  "input must be a string or an array of 1 to %d strings.",
                  S_EMBED_INPUTS_MAX);
        cm_call_reply_error (call, 400, error);
        return;
    }
    //  OpenAI refuses an empty string (400); embedding it would answer a
    //  vector of zeros that stands for nothing.
    for (size_t i = 0; i < count; i++)
        if (!*texts[i]) {
            free (texts);
            char error[256];
            if (json_is_string (input))
                snprintf (error, sizeof error, "input must not be an empty string.");
            else
                snprintf (error, sizeof error,
                          "input[%zu] is an empty string: input must be non-empty "
                          "strings.",
                          i);
            cm_call_reply_error (call, 400, error);
            return;
        }
    //  OpenAI's encoding_format: "float" (the default) or "base64" (the
    //  little-endian float32 bytes, base64): the official client libraries
    //  ask for base64 when their caller names no format.
    json_t *format = json_object_get (cm_call_json (call), "encoding_format");
    bool base64 =
        json_is_string (format) && !strcmp (json_string_value (format), "base64");
    if (format && !json_is_null (format) && !base64 &&
        !(json_is_string (format) && !strcmp (json_string_value (format), "float"))) {
        free (texts);
        cm_call_reply_error (call, 400,
                             "encoding_format must be \"float\" or \"base64\".");
        return;
    }
    float *vectors = NULL;
    size_t dim = 0;
    if (s_embed (self, call, texts, count, &vectors, &dim, false) == 0) {
        json_t *data = json_array ();
        json_int_t tokens = 0;
        for (size_t i = 0; i < count; i++) {
            //  Upstream's estimate, as for documents: a token per 4 bytes.
            tokens += (json_int_t) ((strlen (texts[i]) + 3) / 4);
            json_t *embedding =
                base64 ? s_base64_floats (vectors + i * dim, dim) : json_array ();
            for (size_t j = 0; !base64 && j < dim; j++)
                json_array_append_new (embedding, json_real (vectors[i * dim + j]));
            json_array_append_new (data, json_pack ("{s:s, s:o, s:I}", "object",
                                                    "embedding", "embedding", embedding,
                                                    "index", (json_int_t) i));
        }
        cm_call_reply_json (call, 200,
                            json_pack ("{s:s, s:o, s:s, s:{s:I, s:I}}", "object", "list",
                                       "data", data, "model",
                                       cm_embedder_name (self->embedder), "usage",
                                       "prompt_tokens", tokens, "total_tokens", tokens));
    }
    free (vectors);
    free (texts);
}
