/*  ingest_job.c: see ingest_job.h. */
#include "ingest_job.h"
#include "cm_log.h"
#include "cm_storage_docs.h"
#include "ingest_chunk.h"
#include <stdarg.h>

//  The run's state, for the embedder's cancel hook.
typedef struct {
    const ingest_job_hooks_t *hooks;
} s_run_t;

static bool
s_cancelled (void *arg)
{
    const ingest_job_hooks_t *hooks = ((s_run_t *) arg)->hooks;
    return hooks && hooks->cancelled && hooks->cancelled (hooks->arg);
}

//  Leave the reason on the job's row and in err.
static ingest_job_result_t s_stop (cm_storage_t *storage, const char *job_id,
                                   ingest_job_result_t result, char *err, size_t errlen,
                                   const char *format, ...)
    __attribute__ ((format (printf, 6, 7)));

static ingest_job_result_t
s_stop (cm_storage_t *storage, const char *job_id, ingest_job_result_t result, char *err,
        size_t errlen, const char *format, ...)
{
    va_list args;
    va_start (args, format);
    vsnprintf (err, errlen, format, args);
    va_end (args);
    if (cm_storage_job_update (storage, job_id, NULL, -1, -1, -1, err, NULL) !=
        CM_STORAGE_OK)
        cm_warn ("job %s: the error could not be recorded: %s", job_id,
                 cm_storage_errmsg (storage));
    return result;
}

bool
ingest_job_embed (const ingest_job_context_t *context, const char *const *texts,
                  size_t count, float **vectors_p, size_t *dim_p,
                  bool (*cancelled) (void *), void *arg, cm_embed_status_t *status_p,
                  int64_t *retry_ms_p, char *err, size_t errlen)
{
    cm_breaker_permit_t permit;
    if (cm_breaker_acquire (context->breaker, cm_clock_mono_ms (), &permit, retry_ms_p) !=
        CM_BREAKER_ALLOWED) {
        *status_p = CM_EMBED_UPSTREAM;
        return false;
    }
    cm_embed_status_t status = cm_embed (context->embedder, texts, count, vectors_p,
                                         dim_p, cancelled, arg, err, errlen);
    if (status == CM_EMBED_OK)
        cm_breaker_success (context->breaker, permit, cm_clock_mono_ms ());
    else if (status == CM_EMBED_UPSTREAM)
        cm_breaker_failure (context->breaker, permit, cm_clock_mono_ms ());
    else
        cm_breaker_release (context->breaker, permit);
    *status_p = status;
    return true;
}

//  A storage call that failed: the database itself failing (full,
//  unwritable, busy) waits for it (STORAGE); a row that is not there will
//  not appear (FATAL); anything else is a passing failure (RETRY).
static ingest_job_result_t
s_storage_failure (cm_storage_status_t status)
{
    return status == CM_STORAGE_ERROR       ? INGEST_JOB_STORAGE
           : status == CM_STORAGE_NOT_FOUND ? INGEST_JOB_FATAL
                                            : INGEST_JOB_RETRY;
}

ingest_job_result_t
ingest_job_run (const ingest_job_context_t *context, cm_storage_t *storage,
                const char *job_id, const char *location, int attempt,
                const ingest_job_hooks_t *hooks, char *err, size_t errlen)
{
    assert (context && storage && job_id && location);
    cm_storage_status_t started =
        cm_storage_job_update (storage, job_id, "active", attempt, -1, -1, "", NULL);
    if (started != CM_STORAGE_OK) {
        snprintf (err, errlen, "job %s: %s", job_id, cm_storage_errmsg (storage));
        return s_storage_failure (started);
    }
    json_t *document = NULL;
    cm_storage_status_t status =
        cm_storage_document_get (storage, location, true, &document);
    if (status == CM_STORAGE_NOT_FOUND)
        return s_stop (storage, job_id, INGEST_JOB_FATAL, err, errlen,
                       "Document %s does not exist (any more).", location);
    if (status != CM_STORAGE_OK)
        return s_stop (storage, job_id, s_storage_failure (status), err, errlen,
                       "The database could not be read: %s", cm_storage_errmsg (storage));
    int64_t document_id = json_integer_value (json_object_get (document, "id"));
    const char *text = json_string_value (json_object_get (document, "pageContent"));
    size_t text_size = json_string_length (json_object_get (document, "pageContent"));
    size_t total = 0;
    ingest_span_t *spans = text
                               ? ingest_chunk_spans (text, text_size, context->chunk_size,
                                                     context->chunk_overlap, &total)
                               : NULL;
    ingest_job_result_t result = INGEST_JOB_DONE;
    s_run_t run = {hooks};
    size_t batch = context->batch_size ? context->batch_size : 64;
    const char **texts = cm_calloc (batch, sizeof *texts);
    size_t done = 0;
    cm_storage_job_update (storage, job_id, NULL, -1, 0, (int64_t) total, NULL, NULL);

    while (done < total) {
        if (s_cancelled (&run)) {
            result = s_stop (storage, job_id, INGEST_JOB_CANCELLED, err, errlen,
                             "Cancelled after %zu of %zu chunks.", done, total);
            break;
        }
        size_t count = total - done < batch ? total - done : batch;
        for (size_t i = 0; i < count; i++)
            texts[i] = cm_strndup (text + spans[done + i].offset, spans[done + i].size);

        int64_t retry_ms = 0;
        float *vectors = NULL;
        size_t dim = 0;
        cm_embed_status_t embedded = CM_EMBED_UPSTREAM;
        char reason[512] = "";
        if (!ingest_job_embed (context, texts, count, &vectors, &dim, s_cancelled, &run,
                               &embedded, &retry_ms, reason, sizeof reason))
            snprintf (
                reason, sizeof reason,
                "The %s circuit is open: the embedder is failing (retry in %lld ms).",
                cm_breaker_name (context->breaker), (long long) retry_ms);
        size_t stored = 0;
        cm_storage_status_t put = CM_STORAGE_OK;
        if (embedded == CM_EMBED_OK &&
            (put = cm_storage_chunks_put (storage, document_id, (int64_t) done, count,
                                          texts, vectors, dim, &stored)) !=
                CM_STORAGE_OK) {
            embedded = CM_EMBED_UPSTREAM;
            snprintf (reason, sizeof reason, "Chunks could not be stored: %s",
                      cm_storage_errmsg (storage));
        }
        free (vectors);
        for (size_t i = 0; i < count; i++)
            free ((char *) texts[i]);
        if (embedded != CM_EMBED_OK) {
            result = s_stop (storage, job_id,
                             put != CM_STORAGE_OK             ? s_storage_failure (put)
                             : embedded == CM_EMBED_REQUEST   ? INGEST_JOB_FATAL
                             : embedded == CM_EMBED_CANCELLED ? INGEST_JOB_CANCELLED
                                                              : INGEST_JOB_RETRY,
                             err, errlen, "%s", reason);
            break;
        }
        done += count;
        cm_storage_job_update (storage, job_id, NULL, -1, (int64_t) done, -1, NULL, NULL);
        if (hooks && hooks->after_batch &&
            !hooks->after_batch (done, total, hooks->arg)) {
            result =
                s_stop (storage, job_id, INGEST_JOB_CANCELLED, err, errlen,
                        "Stopped after %zu of %zu chunks (lease lost).", done, total);
            break;
        }
    }
    if (result == INGEST_JOB_DONE) {
        cm_storage_status_t recorded =
            cm_storage_document_set_embedded (storage, document_id);
        if (recorded == CM_STORAGE_OK)
            recorded = cm_storage_job_update (storage, job_id, "completed", -1,
                                              (int64_t) total, (int64_t) total, "", NULL);
        if (recorded != CM_STORAGE_OK) {
            snprintf (err, errlen, "The result could not be recorded: %s",
                      cm_storage_errmsg (storage));
            result = s_storage_failure (recorded);
        }
    }
    free (texts);
    free (spans);
    json_decref (document);
    return result;
}
