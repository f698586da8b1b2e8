/*  test_ingest_runner.c: the runner's maintenance and reconciler against a
    real redis-server (on a free port, no persistence) and a real SQLite
    file: the job's row follows what the queue decided. Waits are polls
    with a generous patience, never fixed sleeps. */
#include <criterion/criterion.h>
#include "test_dir.h"
#include "test_port.h"
#include "test_redis.h"
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>
#include "cm_redis.h"
#include "cm_storage_docs.h"
#include "ingest_runner.h"

#define S_PATIENCE_MS 20000

static test_redis_t s_redis;
static char s_dir[64];

static void
s_setup (void)
{
    test_dir_make (s_dir, sizeof s_dir, "/tmp/llmrt-runner-XXXXXX");
    test_redis_start (&s_redis, 0);
}

static void
s_teardown (void)
{
    test_redis_remove (&s_redis);
    test_dir_remove (s_dir);
}

static cm_jobs_config_t
s_jobs_config (void)
{
    cm_jobs_config_t config;
    cm_jobs_config_defaults (&config);
    config.url = s_redis.url;
    config.queue = "embedding-jobs";
    config.lease_ms = 100;
    config.attempts = 1;
    return config;
}

//  The row's state, polled until it is `want` or the patience ends.
static char *
s_wait_state (cm_storage_t *storage, const char *id, const char *want, char **error_p)
{
    char *state = NULL;
    int64_t until = cm_clock_mono_ms () + S_PATIENCE_MS;
    do {
        free (state);
        json_t *row = NULL;
        cr_assert_eq (cm_storage_job_get (storage, id, &row), CM_STORAGE_OK);
        state = cm_strdup (json_string_value (json_object_get (row, "state")));
        const char *error = json_string_value (json_object_get (row, "error"));
        free (*error_p);
        *error_p = error ? cm_strdup (error) : NULL;
        json_decref (row);
        if (!strcmp (state, want))
            break;
        usleep (50 * 1000);
    } while (cm_clock_mono_ms () < until);
    return state;
}

//  A worker dies during the job's last attempt: maintenance moves the job
//  to the queue's failed set when its lease expires. The row said
//  "active"; the reconciler must make it say "failed" with the queue's
//  reason, or it says "active" for ever (Redis knows the job, so it is
//  never added again either).
Test (runner, a_job_failed_by_maintenance_is_failed_in_its_row, .init = s_setup,
      .fini = s_teardown, .timeout = 60)
{
    char err[512] = "";
    cm_storage_pool_t *pool = cm_storage_pool_new (s_dir, err, sizeof err);
    cr_assert_not_null (pool, "%s", err);
    cm_storage_t *storage = cm_storage_pool_acquire (pool);
    cr_assert_not_null (storage);
    const char *location = "custom-documents/lost.txt-1.json";
    json_t *fields = json_pack ("{s:s, s:s}", "location", location, "name", "lost.txt");
    cr_assert_eq (cm_storage_document_add (storage, fields, "some text", NULL),
                  CM_STORAGE_OK, "%s", cm_storage_errmsg (storage));
    json_decref (fields);
    json_t *job = NULL;
    cr_assert_eq (cm_storage_job_create (storage, NULL, location, "queue", NULL, 1, &job),
                  CM_STORAGE_OK);
    char *id = cm_strdup (json_string_value (json_object_get (job, "id")));
    json_decref (job);

    //  A worker takes it (its row: active, attempt 1 of 1) and dies.
    cm_jobs_config_t config = s_jobs_config ();
    cm_jobs_t *jobs = cm_jobs_new (&config, "doomed-worker");
    char *data = ingest_runner_job_data (location);
    cr_assert_eq (cm_jobs_add (jobs, id, data), CM_JOBS_OK, "%s", cm_jobs_errmsg (jobs));
    free (data);
    cm_job_t *taken = NULL;
    cr_assert_eq (cm_jobs_take (jobs, 1000, &taken), 1, "%s", cm_jobs_errmsg (jobs));
    cr_assert_str_eq (taken->id, id);
    cr_assert_eq (cm_storage_job_update (storage, id, "active", 1, -1, -1, NULL, NULL),
                  CM_STORAGE_OK);
    cm_job_destroy (&taken);
    cm_jobs_destroy (&jobs);

    //  Another instance's maintenance and reconciler (it takes no jobs).
    ingest_job_context_t context = {0};
    ingest_runner_config_t runner_config = {
        .jobs = config, .workers = 0, .reconcile_ms = 200, .maintain_ms = 100};
    ingest_runner_t *runner = ingest_runner_new (&runner_config, &context, pool, NULL);

    char *error = NULL;
    char *state = s_wait_state (storage, id, "failed", &error);
    ingest_runner_destroy (&runner);
    cr_expect_str_eq (state, "failed", "the row of a job the queue failed says %s",
                      state);
    cr_expect (error && strstr (error, "lease expired"),
               "the row keeps the queue's reason, not '%s'", error ? error : "(null)");
    //  The queue still has it as failed: nothing ran it again.
    jobs = cm_jobs_new (&config, NULL);
    json_t *info = cm_jobs_info (jobs, id);
    cr_assert_not_null (info);
    cr_expect_str_eq (json_string_value (json_object_get (info, "state")), "failed");
    json_decref (info);
    cm_jobs_destroy (&jobs);
    free (state);
    free (error);
    free (id);
    cm_storage_pool_release (pool, &storage);
    cm_storage_pool_destroy (&pool);
}
