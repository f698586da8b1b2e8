/*  test_cm_jobs.c: the Redis job queue against a real redis-server (one
    per test, on a free port, no persistence): delivery, leases, retries,
    the failed set, trimming, many threads, and Redis down or hung.
    Waits are polls with a generous patience, never fixed sleeps. */
#include <criterion/criterion.h>
#include "test_dir.h"
#include "test_port.h"
#include "test_redis.h"
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>
#include "cm_jobs.h"
#include "cm_redis.h"

#define S_PATIENCE_MS 20000

static cm_jobs_config_t
s_config (test_redis_t *redis)
{
    cm_jobs_config_t config;
    cm_jobs_config_defaults (&config);
    config.url = redis->url;
    config.queue = "test-jobs";
    return config;
}

#define S_NOT_A_NUMBER -2

static long long
s_number (const char *text)
{
    char *end;
    long long value = strtoll (text, &end, 10);
    return *text && !*end ? value : S_NOT_A_NUMBER;
}

//  A direct connection, to look at the keys.
static long long
s_redis_int (test_redis_t *redis, const char *command, const char *arg)
{
    char err[256];
    redisContext *ctx = cm_redis_connect (redis->url, 2000, err, sizeof err);
    cr_assert_not_null (ctx, "%s", err);
    redisReply *reply = redisCommand (ctx, command, arg);
    cr_assert_not_null (reply);
    long long value = reply->type == REDIS_REPLY_INTEGER  ? reply->integer
                      : reply->type == REDIS_REPLY_STRING ? s_number (reply->str)
                                                          : -1;
    freeReplyObject (reply);
    redisFree (ctx);
    return value;
}

static void
s_assert_counts (cm_jobs_t *jobs, int64_t waiting, int64_t active, int64_t delayed,
                 int64_t completed, int64_t failed)
{
    cm_jobs_counts_t c;
    cr_assert_eq (cm_jobs_counts (jobs, &c), 0, "%s", cm_jobs_errmsg (jobs));
    cr_assert (c.waiting == waiting && c.active == active && c.delayed == delayed &&
                   c.completed == completed && c.failed == failed,
               "counts %lld/%lld/%lld/%lld/%lld, expected %lld/%lld/%lld/%lld/%lld",
               (long long) c.waiting, (long long) c.active, (long long) c.delayed,
               (long long) c.completed, (long long) c.failed, (long long) waiting,
               (long long) active, (long long) delayed, (long long) completed,
               (long long) failed);
}

static void
s_assert_state (cm_jobs_t *jobs, const char *id, const char *state)
{
    json_t *info = cm_jobs_info (jobs, id);
    cr_assert_not_null (info, "no job %s: %s", id, cm_jobs_errmsg (jobs));
    cr_assert_str_eq (json_string_value (json_object_get (info, "state")), state);
    json_decref (info);
}

//  Call maintain on `jobs` until it moved `count` jobs in all.
static void
s_maintain_until_moved (cm_jobs_t *jobs, int count)
{
    int moved = 0;
    int64_t until = cm_clock_mono_ms () + S_PATIENCE_MS;
    while (moved < count && cm_clock_mono_ms () < until) {
        int rc = cm_jobs_maintain (jobs, NULL);
        cr_assert_geq (rc, 0, "%s", cm_jobs_errmsg (jobs));
        moved += rc;
        if (moved < count)
            usleep (10 * 1000);
    }
    cr_assert_eq (moved, count);
}

Test (cm_jobs, add_take_complete)
{
    test_redis_t redis = {0};
    test_redis_start (&redis, 0);
    cm_jobs_config_t config = s_config (&redis);
    cm_jobs_t *jobs = cm_jobs_new (&config, "worker-1");
    cr_assert_str_eq (cm_jobs_worker (jobs), "worker-1");
    cr_assert (cm_jobs_available (jobs));

    cr_assert_eq (cm_jobs_add (jobs, "job-1", "{\"doc\":1}"), CM_JOBS_OK);
    cr_assert_eq (cm_jobs_add (jobs, "job-2", "{\"doc\":2}"), CM_JOBS_OK);
    //  The same id again changes nothing.
    cr_assert_eq (cm_jobs_add (jobs, "job-1", "other"), CM_JOBS_EXISTS);
    s_assert_counts (jobs, 2, 0, 0, 0, 0);
    s_assert_state (jobs, "job-1", "waiting");

    //  First in, first out.
    cm_job_t *job = NULL;
    cr_assert_eq (cm_jobs_take (jobs, 1000, &job), 1, "%s", cm_jobs_errmsg (jobs));
    cr_assert_str_eq (job->id, "job-1");
    cr_assert_str_eq (job->data, "{\"doc\":1}");
    cr_assert_eq (job->attempt, 1);
    cr_assert_eq (job->max_attempts, 3);
    s_assert_counts (jobs, 1, 1, 0, 0, 0);
    json_t *info = cm_jobs_info (jobs, "job-1");
    cr_assert_str_eq (json_string_value (json_object_get (info, "state")), "active");
    cr_assert_str_eq (json_string_value (json_object_get (info, "worker")), "worker-1");
    cr_assert_eq (json_integer_value (json_object_get (info, "attempts")), 1);
    json_decref (info);

    cr_assert_eq (cm_jobs_renew (jobs, job), CM_JOBS_OK);
    cr_assert_eq (cm_jobs_complete (jobs, &job), CM_JOBS_OK);
    cr_assert_null (job);
    s_assert_counts (jobs, 1, 0, 0, 1, 0);
    s_assert_state (jobs, "job-1", "completed");

    cr_assert_eq (cm_jobs_take (jobs, 0, &job), 1);
    cr_assert_str_eq (job->id, "job-2");
    cr_assert_eq (cm_jobs_complete (jobs, &job), CM_JOBS_OK);
    //  Nothing left: take waits, then says so.
    cr_assert_eq (cm_jobs_take (jobs, 50, &job), 0);
    cr_assert_null (job);
    cr_assert_eq (cm_jobs_take (jobs, 0, &job), 0);
    s_assert_counts (jobs, 0, 0, 0, 2, 0);
    cr_assert_null (cm_jobs_info (jobs, "no-such-job"));
    cr_assert_str_eq (cm_jobs_errmsg (jobs), "");

    cm_jobs_destroy (&jobs);
    cr_assert_null (jobs);
    test_redis_remove (&redis);
}

Test (cm_jobs, blocked_take_wakes_on_add)
{
    test_redis_t redis = {0};
    test_redis_start (&redis, 0);
    cm_jobs_config_t config = s_config (&redis);
    cm_jobs_t *producer = cm_jobs_new (&config, NULL);
    cm_jobs_t *worker = cm_jobs_new (&config, NULL);
    cr_assert_str_neq (cm_jobs_worker (producer), cm_jobs_worker (worker));
    pid_t pid = fork ();
    cr_assert_geq (pid, 0);
    if (pid == 0) {
        usleep (100 * 1000);
        cm_jobs_t *jobs = cm_jobs_new (&config, NULL);
        int rc = cm_jobs_add (jobs, "late", "x");
        cm_jobs_destroy (&jobs);
        _exit (rc == CM_JOBS_OK ? 0 : 1);
    }
    cm_job_t *job = NULL;
    cr_assert_eq (cm_jobs_take (worker, S_PATIENCE_MS, &job), 1, "%s",
                  cm_jobs_errmsg (worker));
    cr_assert_str_eq (job->id, "late");
    s_assert_counts (producer, 0, 1, 0, 0, 0);
    cr_assert_eq (cm_jobs_complete (worker, &job), CM_JOBS_OK);
    int status;
    cr_assert_eq (waitpid (pid, &status, 0), pid);
    cr_assert_eq (WEXITSTATUS (status), 0);
    cm_jobs_destroy (&producer);
    cm_jobs_destroy (&worker);
    test_redis_remove (&redis);
}

Test (cm_jobs, expired_lease_goes_to_another_worker)
{
    test_redis_t redis = {0};
    test_redis_start (&redis, 0);
    cm_jobs_config_t config = s_config (&redis);
    config.lease_ms = 200;
    cm_jobs_t *a = cm_jobs_new (&config, "a");
    cm_jobs_t *b = cm_jobs_new (&config, "b");
    cr_assert_eq (cm_jobs_add (a, "job", "data"), CM_JOBS_OK);
    cm_job_t *job_a = NULL, *job_b = NULL;
    cr_assert_eq (cm_jobs_take (a, 0, &job_a), 1);
    cr_assert_eq (cm_jobs_take (b, 0, &job_b), 0);

    //  a goes silent; once its lease expires, maintain gives the job back.
    s_maintain_until_moved (b, 1);
    s_assert_state (b, "job", "waiting");
    cr_assert_eq (cm_jobs_take (b, 0, &job_b), 1);
    cr_assert_str_eq (job_b->id, "job");
    cr_assert_eq (job_b->attempt, 2);
    s_assert_counts (b, 0, 1, 0, 0, 0);

    //  a wakes up: the job is not its any more; nothing changes.
    cr_assert_eq (cm_jobs_renew (a, job_a), CM_JOBS_LOST);
    cr_assert_eq (cm_jobs_complete (a, &job_a), CM_JOBS_LOST);
    cr_assert_null (job_a);
    s_assert_counts (b, 0, 1, 0, 0, 0);
    s_assert_state (b, "job", "active");
    cr_assert_eq (cm_jobs_complete (b, &job_b), CM_JOBS_OK);
    s_assert_counts (b, 0, 0, 0, 1, 0);

    cm_jobs_destroy (&a);
    cm_jobs_destroy (&b);
    test_redis_remove (&redis);
}

Test (cm_jobs, renew_extends_the_lease)
{
    test_redis_t redis = {0};
    test_redis_start (&redis, 0);
    cm_jobs_config_t config = s_config (&redis);
    cm_jobs_t *jobs = cm_jobs_new (&config, "w");
    cr_assert_eq (cm_jobs_add (jobs, "job", "data"), CM_JOBS_OK);
    cm_job_t *job = NULL;
    cr_assert_eq (cm_jobs_take (jobs, 0, &job), 1);
    long long before = s_redis_int (&redis, "ZSCORE llmrt:test-jobs:lease %s", "job");
    cr_assert_gt (before, 0);
    usleep (20 * 1000);
    cr_assert_eq (cm_jobs_renew (jobs, job), CM_JOBS_OK);
    long long after = s_redis_int (&redis, "ZSCORE llmrt:test-jobs:lease %s", "job");
    cr_assert_gt (after, before);
    //  A lease that is still running is never taken away.
    cr_assert_eq (cm_jobs_maintain (jobs, NULL), 0);
    cr_assert_eq (cm_jobs_release (jobs, &job, 0), CM_JOBS_OK);
    cm_jobs_destroy (&jobs);
    test_redis_remove (&redis);
}

Test (cm_jobs, killed_worker_job_is_taken_again)
{
    test_redis_t redis = {0};
    test_redis_start (&redis, 0);
    cm_jobs_config_t config = s_config (&redis);
    config.lease_ms = 300;
    cm_jobs_t *jobs = cm_jobs_new (&config, NULL);
    cr_assert_eq (cm_jobs_add (jobs, "job", "data"), CM_JOBS_OK);
    int fds[2];
    cr_assert_eq (pipe (fds), 0);
    pid_t pid = fork ();
    cr_assert_geq (pid, 0);
    if (pid == 0) {
        //  A worker process that takes the job and hangs.
        cm_jobs_t *worker = cm_jobs_new (&config, NULL);
        cm_job_t *job = NULL;
        char taken = cm_jobs_take (worker, S_PATIENCE_MS, &job) == 1 ? 'y' : 'n';
        if (write (fds[1], &taken, 1) != 1)
            _exit (1);
        pause ();
        _exit (0);
    }
    char taken = 0;
    cr_assert_eq (read (fds[0], &taken, 1), 1);
    cr_assert_eq (taken, 'y');
    close (fds[0]);
    close (fds[1]);
    s_assert_counts (jobs, 0, 1, 0, 0, 0);
    kill (pid, SIGKILL);
    waitpid (pid, NULL, 0);

    s_maintain_until_moved (jobs, 1);
    cm_job_t *job = NULL;
    cr_assert_eq (cm_jobs_take (jobs, 0, &job), 1);
    cr_assert_str_eq (job->id, "job");
    cr_assert_eq (job->attempt, 2);
    cr_assert_eq (cm_jobs_complete (jobs, &job), CM_JOBS_OK);
    s_assert_counts (jobs, 0, 0, 0, 1, 0);
    cm_jobs_destroy (&jobs);
    test_redis_remove (&redis);
}

Test (cm_jobs, job_moved_but_never_leased_is_recovered)
{
    //  A worker that died between BLMOVE and leasing left the job in its
    //  processing list with no lease: recovered once the worker's "alive
    //  until" passed.
    test_redis_t redis = {0};
    test_redis_start (&redis, 0);
    cm_jobs_config_t config = s_config (&redis);
    cm_jobs_t *jobs = cm_jobs_new (&config, "w");
    cr_assert_eq (cm_jobs_add (jobs, "job", "data"), CM_JOBS_OK);
    cr_assert_eq (s_redis_int (&redis, "ZADD llmrt:test-jobs:workers 1 %s", "ghost"), 1);
    cr_assert_eq (s_redis_int (&redis,
                               "LMOVE llmrt:test-jobs:wait llmrt:test-jobs:active:%s "
                               "RIGHT LEFT",
                               "ghost"),
                  S_NOT_A_NUMBER); //  the reply is the id, "job"
    s_assert_counts (jobs, 0, 1, 0, 0, 0);
    cr_assert_eq (cm_jobs_maintain (jobs, NULL), 1);
    s_assert_counts (jobs, 1, 0, 0, 0, 0);
    cm_job_t *job = NULL;
    cr_assert_eq (cm_jobs_take (jobs, 0, &job), 1);
    cr_assert_eq (job->attempt, 1);
    cr_assert_eq (cm_jobs_complete (jobs, &job), CM_JOBS_OK);
    cm_jobs_destroy (&jobs);
    test_redis_remove (&redis);
}

Test (cm_jobs, retries_with_backoff_then_succeeds)
{
    test_redis_t redis = {0};
    test_redis_start (&redis, 0);
    cm_jobs_config_t config = s_config (&redis);
    config.backoff_ms = 100;
    cm_jobs_t *jobs = cm_jobs_new (&config, "w");
    cr_assert_eq (cm_jobs_add (jobs, "job", "data"), CM_JOBS_OK);
    cm_job_t *job = NULL;
    for (int attempt = 1; attempt <= 2; attempt++) {
        cr_assert_eq (cm_jobs_take (jobs, S_PATIENCE_MS, &job), 1, "%s",
                      cm_jobs_errmsg (jobs));
        cr_assert_eq (job->attempt, attempt);
        cr_assert_eq (cm_jobs_fail (jobs, &job, "embedding service down", true),
                      CM_JOBS_RETRYING);
        cr_assert_null (job);
        s_assert_counts (jobs, 0, 0, 1, 0, 0);
        //  The delay doubles: 100 ms, then 200 ms after the failure.
        json_t *info = cm_jobs_info (jobs, "job");
        cr_assert_str_eq (json_string_value (json_object_get (info, "state")), "delayed");
        cr_assert_str_eq (json_string_value (json_object_get (info, "error")),
                          "embedding service down");
        json_int_t delay = json_integer_value (json_object_get (info, "delayUntil")) -
                           json_integer_value (json_object_get (info, "processedOn"));
        cr_assert_geq (delay, 100 << (attempt - 1));
        json_decref (info);
    }
    //  take itself promotes the due retry: nobody calls maintain here.
    cr_assert_eq (cm_jobs_take (jobs, S_PATIENCE_MS, &job), 1);
    cr_assert_eq (job->attempt, 3);
    cr_assert_eq (cm_jobs_complete (jobs, &job), CM_JOBS_OK);
    s_assert_counts (jobs, 0, 0, 0, 1, 0);
    json_t *info = cm_jobs_info (jobs, "job");
    cr_assert_str_eq (json_string_value (json_object_get (info, "state")), "completed");
    cr_assert_eq (json_integer_value (json_object_get (info, "attempts")), 3);
    json_decref (info);
    cm_jobs_destroy (&jobs);
    test_redis_remove (&redis);
}

Test (cm_jobs, exhausted_attempts_end_in_failed_set)
{
    test_redis_t redis = {0};
    test_redis_start (&redis, 0);
    cm_jobs_config_t config = s_config (&redis);
    config.attempts = 2;
    config.backoff_ms = 0;
    cm_jobs_t *jobs = cm_jobs_new (&config, "w");
    cr_assert_eq (cm_jobs_add (jobs, "job", "data"), CM_JOBS_OK);
    cm_job_t *job = NULL;
    cr_assert_eq (cm_jobs_take (jobs, 0, &job), 1);
    cr_assert_eq (cm_jobs_fail (jobs, &job, "first", true), CM_JOBS_RETRYING);
    s_assert_counts (jobs, 1, 0, 0, 0, 0); //  no back-off: straight back
    cr_assert_eq (cm_jobs_take (jobs, 0, &job), 1);
    cr_assert_eq (job->attempt, 2);
    cr_assert_eq (cm_jobs_fail (jobs, &job, "parser crashed on page 3", true),
                  CM_JOBS_FAILED);
    s_assert_counts (jobs, 0, 0, 0, 0, 1);
    json_t *info = cm_jobs_info (jobs, "job");
    cr_assert_not_null (info);
    cr_assert_str_eq (json_string_value (json_object_get (info, "state")), "failed");
    cr_assert_str_eq (json_string_value (json_object_get (info, "error")),
                      "parser crashed on page 3");
    cr_assert_eq (json_integer_value (json_object_get (info, "attempts")), 2);
    cr_assert_eq (json_integer_value (json_object_get (info, "maxAttempts")), 2);
    cr_assert_str_eq (json_string_value (json_object_get (info, "data")), "data");
    cr_assert_gt (json_integer_value (json_object_get (info, "finishedOn")), 0);
    json_decref (info);

    //  No retry asked: failed at the first attempt.
    cr_assert_eq (cm_jobs_add (jobs, "bad", "data"), CM_JOBS_OK);
    cr_assert_eq (cm_jobs_take (jobs, 0, &job), 1);
    cr_assert_eq (cm_jobs_fail (jobs, &job, "not a PDF", false), CM_JOBS_FAILED);
    s_assert_counts (jobs, 0, 0, 0, 0, 2);
    //  A failed job's id is still known.
    cr_assert_eq (cm_jobs_add (jobs, "bad", "data"), CM_JOBS_EXISTS);
    cm_jobs_destroy (&jobs);
    test_redis_remove (&redis);
}

Test (cm_jobs, lost_worker_on_last_attempt_fails_the_job)
{
    test_redis_t redis = {0};
    test_redis_start (&redis, 0);
    cm_jobs_config_t config = s_config (&redis);
    config.attempts = 1;
    config.lease_ms = 100;
    cm_jobs_t *jobs = cm_jobs_new (&config, "w");
    cr_assert_eq (cm_jobs_add (jobs, "job", "data"), CM_JOBS_OK);
    cm_job_t *job = NULL;
    cr_assert_eq (cm_jobs_take (jobs, 0, &job), 1);
    s_maintain_until_moved (jobs, 1);
    s_assert_counts (jobs, 0, 0, 0, 0, 1);
    json_t *info = cm_jobs_info (jobs, "job");
    cr_assert_not_null (
        strstr (json_string_value (json_object_get (info, "error")), "lease expired"));
    json_decref (info);
    cr_assert_eq (cm_jobs_fail (jobs, &job, "late", true), CM_JOBS_LOST);
    s_assert_counts (jobs, 0, 0, 0, 0, 1);
    cm_jobs_destroy (&jobs);
    test_redis_remove (&redis);
}

Test (cm_jobs, release_does_not_count_the_attempt)
{
    test_redis_t redis = {0};
    test_redis_start (&redis, 0);
    cm_jobs_config_t config = s_config (&redis);
    cm_jobs_t *jobs = cm_jobs_new (&config, "w");
    cr_assert_eq (cm_jobs_add (jobs, "first", "1"), CM_JOBS_OK);
    cr_assert_eq (cm_jobs_add (jobs, "second", "2"), CM_JOBS_OK);
    cm_job_t *job = NULL;
    cr_assert_eq (cm_jobs_take (jobs, 0, &job), 1);
    cr_assert_str_eq (job->id, "first");
    cr_assert_eq (cm_jobs_release (jobs, &job, 0), CM_JOBS_OK);
    s_assert_counts (jobs, 2, 0, 0, 0, 0);
    //  Back at the front, still at its first attempt.
    cr_assert_eq (cm_jobs_take (jobs, 0, &job), 1);
    cr_assert_str_eq (job->id, "first");
    cr_assert_eq (job->attempt, 1);
    cr_assert_eq (cm_jobs_complete (jobs, &job), CM_JOBS_OK);
    cm_jobs_destroy (&jobs);
    test_redis_remove (&redis);
}

Test (cm_jobs, completed_trimmed_by_count_and_age)
{
    test_redis_t redis = {0};
    test_redis_start (&redis, 0);
    cm_jobs_config_t config = s_config (&redis);
    config.keep_completed = 3;
    config.keep_completed_ms = 0;
    cm_jobs_t *jobs = cm_jobs_new (&config, "w");
    for (int i = 0; i < 5; i++) {
        char id[16];
        snprintf (id, sizeof id, "job-%d", i);
        cr_assert_eq (cm_jobs_add (jobs, id, "x"), CM_JOBS_OK);
        cm_job_t *job = NULL;
        cr_assert_eq (cm_jobs_take (jobs, 0, &job), 1);
        cr_assert_eq (cm_jobs_complete (jobs, &job), CM_JOBS_OK);
    }
    //  The three most recent stay; the others are gone, hash and all.
    s_assert_counts (jobs, 0, 0, 0, 3, 0);
    cr_assert_null (cm_jobs_info (jobs, "job-0"));
    cr_assert_null (cm_jobs_info (jobs, "job-1"));
    s_assert_state (jobs, "job-4", "completed");
    cr_assert_eq (s_redis_int (&redis, "EXISTS llmrt:test-jobs:job:%s", "job-0"), 0);
    cm_jobs_destroy (&jobs);

    //  By age: gone once older than keep_completed_ms.
    config.keep_completed = 1000;
    config.keep_completed_ms = 100;
    jobs = cm_jobs_new (&config, "w");
    cr_assert_eq (cm_jobs_add (jobs, "old", "x"), CM_JOBS_OK);
    cm_job_t *job = NULL;
    cr_assert_eq (cm_jobs_take (jobs, 0, &job), 1);
    cr_assert_eq (cm_jobs_complete (jobs, &job), CM_JOBS_OK);
    s_assert_state (jobs, "old", "completed");
    int64_t until = cm_clock_mono_ms () + S_PATIENCE_MS;
    cm_jobs_counts_t counts = {0};
    do {
        cr_assert_geq (cm_jobs_maintain (jobs, NULL), 0);
        cr_assert_eq (cm_jobs_counts (jobs, &counts), 0);
        if (counts.completed == 0)
            break;
        usleep (10 * 1000);
    } while (cm_clock_mono_ms () < until);
    cr_assert_eq (counts.completed, 0); //  the three of before went too
    cr_assert_null (cm_jobs_info (jobs, "old"));
    cr_assert_null (cm_jobs_info (jobs, "job-4"));
    cr_assert_eq (s_redis_int (&redis, "EXISTS llmrt:test-jobs:job:%s", "old"), 0);
    cm_jobs_destroy (&jobs);
    test_redis_remove (&redis);
}

Test (cm_jobs, failed_trimmed_by_count)
{
    test_redis_t redis = {0};
    test_redis_start (&redis, 0);
    cm_jobs_config_t config = s_config (&redis);
    config.keep_failed = 2;
    cm_jobs_t *jobs = cm_jobs_new (&config, "w");
    for (int i = 0; i < 4; i++) {
        char id[16];
        snprintf (id, sizeof id, "job-%d", i);
        cr_assert_eq (cm_jobs_add (jobs, id, "x"), CM_JOBS_OK);
        cm_job_t *job = NULL;
        cr_assert_eq (cm_jobs_take (jobs, 0, &job), 1);
        cr_assert_eq (cm_jobs_fail (jobs, &job, "no", false), CM_JOBS_FAILED);
    }
    s_assert_counts (jobs, 0, 0, 0, 0, 2);
    cr_assert_null (cm_jobs_info (jobs, "job-1"));
    s_assert_state (jobs, "job-3", "failed");
    cm_jobs_destroy (&jobs);
    test_redis_remove (&redis);
}

//  --- many threads ----------------------------------------------------------------

#define S_JOBS    1000
#define S_THREADS 4

typedef struct {
    cm_jobs_config_t config;
    int index;
    atomic_int *seen;   //  completions per job
    atomic_int *done;   //  completions in all
    atomic_int *errors; //  calls that failed
} s_thread_arg_t;

static void *
s_producer (void *arg_)
{
    s_thread_arg_t *arg = arg_;
    cm_jobs_t *jobs = cm_jobs_new (&arg->config, NULL);
    for (int i = arg->index; i < S_JOBS; i += S_THREADS) {
        char id[16], data[32];
        snprintf (id, sizeof id, "%d", i);
        snprintf (data, sizeof data, "{\"n\":%d}", i);
        if (cm_jobs_add (jobs, id, data) != CM_JOBS_OK)
            atomic_fetch_add (arg->errors, 1);
    }
    cm_jobs_destroy (&jobs);
    return NULL;
}

static void *
s_consumer (void *arg_)
{
    s_thread_arg_t *arg = arg_;
    cm_jobs_t *jobs = cm_jobs_new (&arg->config, NULL);
    int64_t until = cm_clock_mono_ms () + 60000;
    while (atomic_load (arg->done) < S_JOBS && cm_clock_mono_ms () < until) {
        cm_job_t *job = NULL;
        int rc = cm_jobs_take (jobs, 100, &job);
        if (rc < 0)
            atomic_fetch_add (arg->errors, 1);
        if (rc != 1)
            continue;
        int n = atoi (job->id);
        char data[32];
        snprintf (data, sizeof data, "{\"n\":%d}", n);
        if (n < 0 || n >= S_JOBS || strcmp (job->data, data))
            atomic_fetch_add (arg->errors, 1);
        else
            atomic_fetch_add (&arg->seen[n], 1);
        if (cm_jobs_complete (jobs, &job) != CM_JOBS_OK)
            atomic_fetch_add (arg->errors, 1);
        atomic_fetch_add (arg->done, 1);
    }
    cm_jobs_destroy (&jobs);
    return NULL;
}

Test (cm_jobs, thousand_jobs_four_threads_each_once)
{
    test_redis_t redis = {0};
    test_redis_start (&redis, 0);
    cm_jobs_config_t config = s_config (&redis);
    config.keep_completed = 2 * S_JOBS;
    static atomic_int seen[S_JOBS];
    atomic_int done = 0, errors = 0;
    s_thread_arg_t args[2 * S_THREADS];
    pthread_t threads[2 * S_THREADS];
    for (int i = 0; i < 2 * S_THREADS; i++) {
        args[i] = (s_thread_arg_t){.config = config,
                                   .index = i % S_THREADS,
                                   .seen = seen,
                                   .done = &done,
                                   .errors = &errors};
        cr_assert_eq (pthread_create (&threads[i], NULL,
                                      i < S_THREADS ? s_producer : s_consumer, &args[i]),
                      0);
    }
    for (int i = 0; i < 2 * S_THREADS; i++)
        pthread_join (threads[i], NULL);
    cr_assert_eq (atomic_load (&errors), 0);
    cr_assert_eq (atomic_load (&done), S_JOBS);
    for (int i = 0; i < S_JOBS; i++)
        cr_assert_eq (atomic_load (&seen[i]), 1, "job %d ran %d times", i,
                      atomic_load (&seen[i]));
    cm_jobs_t *jobs = cm_jobs_new (&config, NULL);
    cr_assert_eq (cm_jobs_maintain (jobs, NULL), 0);
    s_assert_counts (jobs, 0, 0, 0, S_JOBS, 0);
    cm_jobs_destroy (&jobs);
    test_redis_remove (&redis);
}

//  --- Redis trouble ---------------------------------------------------------------

Test (cm_jobs, redis_down_then_back_without_a_new_handle)
{
    test_redis_t redis = {0};
    test_redis_start (&redis, 0);
    cm_jobs_config_t config = s_config (&redis);
    cm_jobs_t *jobs = cm_jobs_new (&config, "w");
    cr_assert_eq (cm_jobs_add (jobs, "before", "x"), CM_JOBS_OK);
    cr_assert (cm_jobs_available (jobs));

    test_redis_stop (&redis);
    cr_assert_eq (cm_jobs_add (jobs, "during", "x"), CM_JOBS_ERROR);
    cr_assert_str_neq (cm_jobs_errmsg (jobs), "");
    cr_assert_not (cm_jobs_available (jobs));
    cm_job_t *job = NULL;
    cr_assert_eq (cm_jobs_take (jobs, 100, &job), -1);
    cr_assert_null (job);
    cm_jobs_counts_t counts;
    cr_assert_eq (cm_jobs_counts (jobs, &counts), -1);
    cr_assert_eq (cm_jobs_maintain (jobs, NULL), -1);

    //  Same port, fresh (empty) Redis: the handle reconnects by itself.
    test_redis_start (&redis, redis.port);
    cr_assert_eq (cm_jobs_add (jobs, "after", "x"), CM_JOBS_OK, "%s",
                  cm_jobs_errmsg (jobs));
    cr_assert (cm_jobs_available (jobs));
    cr_assert_eq (cm_jobs_take (jobs, 0, &job), 1);
    cr_assert_str_eq (job->id, "after");
    cr_assert_eq (cm_jobs_complete (jobs, &job), CM_JOBS_OK);
    cm_jobs_destroy (&jobs);

    //  A handle made while Redis is down works once it is up.
    test_redis_stop (&redis);
    jobs = cm_jobs_new (&config, "w2");
    cr_assert_not (cm_jobs_available (jobs));
    cr_assert_eq (cm_jobs_add (jobs, "x", "x"), CM_JOBS_ERROR);
    test_redis_start (&redis, redis.port);
    cr_assert (cm_jobs_available (jobs));
    cr_assert_eq (cm_jobs_add (jobs, "x", "x"), CM_JOBS_OK);
    cm_jobs_destroy (&jobs);
    test_redis_remove (&redis);
}

Test (cm_jobs, hung_redis_makes_calls_fail_not_hang)
{
    test_redis_t redis = {0};
    test_redis_start (&redis, 0);
    cm_jobs_config_t config = s_config (&redis);
    config.io_timeout_ms = 300;
    cm_jobs_t *jobs = cm_jobs_new (&config, "w");
    cr_assert_eq (cm_jobs_add (jobs, "before", "x"), CM_JOBS_OK);

    cr_assert_eq (kill (redis.pid, SIGSTOP), 0);
    cr_assert_eq (cm_jobs_add (jobs, "during", "x"), CM_JOBS_ERROR);
    cr_assert_str_neq (cm_jobs_errmsg (jobs), "");
    cm_job_t *job = NULL;
    //  A blocking take too: its socket timeout is its wait plus io_timeout.
    cr_assert_eq (cm_jobs_take (jobs, 200, &job), -1);
    cr_assert_not (cm_jobs_available (jobs));

    cr_assert_eq (kill (redis.pid, SIGCONT), 0);
    int64_t until = cm_clock_mono_ms () + S_PATIENCE_MS;
    int rc;
    while ((rc = cm_jobs_add (jobs, "after", "x")) == CM_JOBS_ERROR &&
           cm_clock_mono_ms () < until)
        usleep (10 * 1000);
    cr_assert_eq (rc, CM_JOBS_OK, "%s", cm_jobs_errmsg (jobs));
    //  The timed-out add may have reached Redis after all (at-least-once
    //  for the caller, who retries); the lists hold each id once.
    cm_jobs_counts_t counts;
    cr_assert_eq (cm_jobs_counts (jobs, &counts), 0);
    cr_assert (counts.waiting == 2 || counts.waiting == 3);
    cm_jobs_destroy (&jobs);
    test_redis_remove (&redis);
}

//  Keep beating `keeper` and maintaining with `other` for ms; the number
//  of jobs maintain moved meanwhile.
static int
s_beat_and_maintain_why (cm_jobs_t *keeper, cm_jobs_t *other, int64_t ms,
                         cm_jobs_maintained_t *sum)
{
    int moved = 0;
    int64_t until = cm_clock_mono_ms () + ms;
    while (cm_clock_mono_ms () < until) {
        if (keeper)
            cr_assert_eq (cm_jobs_beat (keeper), 0, "%s", cm_jobs_errmsg (keeper));
        cr_assert_eq (cm_jobs_beat (other), 0, "%s", cm_jobs_errmsg (other));
        cm_jobs_maintained_t why;
        int rc = cm_jobs_maintain (other, &why);
        cr_assert_geq (rc, 0, "%s", cm_jobs_errmsg (other));
        moved += rc;
        if (sum) {
            sum->promoted += why.promoted;
            sum->expired += why.expired;
            sum->orphaned += why.orphaned;
        }
        usleep (20 * 1000);
    }
    return moved;
}

static int
s_beat_and_maintain (cm_jobs_t *keeper, cm_jobs_t *other, int64_t ms)
{
    return s_beat_and_maintain_why (keeper, other, ms, NULL);
}

Test (cm_jobs, a_dead_keepers_job_is_recovered_before_its_lease)
{
    test_redis_t redis = {0};
    test_redis_start (&redis, 0);
    cm_jobs_config_t config = s_config (&redis);
    config.lease_ms = 10 * S_PATIENCE_MS; //  never runs out in this test
    config.keeper_timeout_ms = 300;
    config.keeper = "ka";
    cm_jobs_t *a = cm_jobs_new (&config, "a");
    config.keeper = "kb";
    cm_jobs_t *b = cm_jobs_new (&config, "b");
    cr_assert_eq (cm_jobs_add (a, "job", "data"), CM_JOBS_OK);
    cr_assert_eq (cm_jobs_beat (a), 0);
    cm_job_t *job_a = NULL, *job_b = NULL;
    cr_assert_eq (cm_jobs_take (a, 0, &job_a), 1);
    json_t *info = cm_jobs_info (b, "job");
    cr_assert_str_eq (json_string_value (json_object_get (info, "keeper")), "ka");
    json_decref (info);

    //  While a's keeper beats, its job stays its own.
    cr_assert_eq (s_beat_and_maintain (a, b, 4 * config.keeper_timeout_ms), 0);
    cr_assert_eq (cm_jobs_renew (a, job_a), CM_JOBS_OK);

    //  a's process dies: its keeper stops, and the job is recovered long
    //  before its lease would end.
    int64_t until = cm_clock_mono_ms () + S_PATIENCE_MS;
    int moved = 0;
    cm_jobs_maintained_t why = {0};
    while (!moved && cm_clock_mono_ms () < until)
        moved = s_beat_and_maintain_why (NULL, b, 50, &why);
    cr_assert_eq (moved, 1, "the job of a dead keeper stayed where it was");
    cr_assert (why.orphaned == 1 && why.expired == 0 && why.promoted == 0,
               "moved as %d due, %d expired, %d orphaned", why.promoted, why.expired,
               why.orphaned);
    info = cm_jobs_info (b, "job");
    cr_assert_str_eq (json_string_value (json_object_get (info, "state")), "waiting");
    const char *error = json_string_value (json_object_get (info, "error"));
    cr_assert (error && strstr (error, "keeper ka"), "error: %s", error);
    cr_assert_null (json_object_get (info, "keeper"), "a waiting job has no keeper");
    json_decref (info);
    cr_assert_eq (cm_jobs_take (b, 0, &job_b), 1);
    cr_assert_eq (job_b->attempt, 2);
    //  a was only frozen after all: the job is not its any more.
    cr_assert_eq (cm_jobs_renew (a, job_a), CM_JOBS_LOST);
    cr_assert_eq (cm_jobs_complete (a, &job_a), CM_JOBS_LOST);
    cr_assert_eq (cm_jobs_complete (b, &job_b), CM_JOBS_OK);
    s_assert_counts (b, 0, 0, 0, 1, 0);
    cm_jobs_destroy (&a);
    cm_jobs_destroy (&b);
    test_redis_remove (&redis);
}

Test (cm_jobs, a_redis_that_stood_still_kills_no_keeper)
{
    test_redis_t redis = {0};
    test_redis_start (&redis, 0);
    cm_jobs_config_t config = s_config (&redis);
    config.lease_ms = 10 * S_PATIENCE_MS;
    config.keeper_timeout_ms = 300;
    config.io_timeout_ms = 200;
    config.keeper = "ka";
    cm_jobs_t *a = cm_jobs_new (&config, "a");
    config.keeper = "kb";
    cm_jobs_t *b = cm_jobs_new (&config, "b");
    cr_assert_eq (cm_jobs_add (a, "job", "data"), CM_JOBS_OK);
    cm_job_t *job = NULL;
    cr_assert_eq (cm_jobs_take (a, 0, &job), 1);
    cr_assert_eq (s_beat_and_maintain (a, b, 2 * config.keeper_timeout_ms), 0);

    //  Redis stands still for longer than a keeper's timeout: nobody can
    //  beat, and when it goes on every keeper's time has run out.
    cr_assert_eq (kill (redis.pid, SIGSTOP), 0);
    cr_assert_eq (cm_jobs_maintain (b, NULL), -1);
    usleep ((useconds_t) (3 * config.keeper_timeout_ms * 1000));
    cr_assert_eq (kill (redis.pid, SIGCONT), 0);
    //  b's maintain does not count keepers until a has had its chance.
    int64_t until = cm_clock_mono_ms () + S_PATIENCE_MS;
    int rc;
    while ((rc = cm_jobs_maintain (b, NULL)) < 0 && cm_clock_mono_ms () < until)
        usleep (10 * 1000);
    cr_assert_eq (rc, 0, "a keeper that could not beat was taken for dead");
    cr_assert_eq (s_beat_and_maintain (a, b, 4 * config.keeper_timeout_ms), 0);
    int renewed = cm_jobs_renew (a, job);
    cr_assert_eq (renewed, CM_JOBS_OK, "renew: %d %s", renewed, cm_jobs_errmsg (a));
    cr_assert_eq (cm_jobs_complete (a, &job), CM_JOBS_OK);
    cm_jobs_destroy (&a);
    cm_jobs_destroy (&b);
    test_redis_remove (&redis);
}

Test (cm_jobs, live_keepers_once_keepers_count)
{
    test_redis_t redis = {0};
    test_redis_start (&redis, 0);
    cm_jobs_config_t config = s_config (&redis);
    config.keeper_timeout_ms = 300;
    config.keeper = "ka";
    cm_jobs_t *a = cm_jobs_new (&config, "a");
    config.keeper = "kb";
    cm_jobs_t *b = cm_jobs_new (&config, "b");
    json_t *live = NULL;
    //  The first call finds no earlier one: keepers do not count yet.
    cr_assert_eq (cm_jobs_live_keepers (b, &live), 0);
    cr_assert_null (live);
    cr_assert_eq (s_beat_and_maintain (a, b, 2 * config.keeper_timeout_ms), 0);
    cr_assert_eq (cm_jobs_live_keepers (b, &live), 1, "%s", cm_jobs_errmsg (b));
    cr_assert_eq (json_array_size (live), 2);
    json_decref (live);
    //  a stops beating: only b is alive.
    int64_t until = cm_clock_mono_ms () + S_PATIENCE_MS;
    while (true) {
        s_beat_and_maintain (NULL, b, 50);
        cr_assert_eq (cm_jobs_live_keepers (b, &live), 1);
        bool only_b = json_array_size (live) == 1 &&
                      !strcmp (json_string_value (json_array_get (live, 0)), "kb");
        json_decref (live);
        if (only_b)
            break;
        cr_assert_lt (cm_clock_mono_ms (), until, "a silent keeper stayed alive");
    }
    cm_jobs_destroy (&a);
    cm_jobs_destroy (&b);
    test_redis_remove (&redis);
}
