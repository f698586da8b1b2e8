/*  test_health.c: /api/health and /api/health/ready against the real suite
    when a dependency is missing: Redis frozen, no chatd at all. */
#include <criterion/criterion.h>
#include <signal.h>
#include <unistd.h>
#include "it_harness.h"

static it_suite_t s_suite;

static bool
s_health_is (void *arg)
{
    long status;
    json_t *health = it_get_json (&s_suite, "/api/health", &status);
    bool match = !strcmp (json_string_value (json_object_get (health, "status")), arg);
    json_decref (health);
    return match;
}

Test (health, redis_down_is_degraded_and_named_then_ok_again, .timeout = 90)
{
    it_suite_start (&s_suite, NULL);
    cr_assert (it_wait (s_health_is, "ok", 10000), "health never said ok");
    pid_t redis[2];
    cr_assert_eq (it_children (s_suite.supervisor, "redis-server", redis, 2), 1);
    //  Frozen, not killed: the supervisor would restart a dead one at once.
    kill (redis[0], SIGSTOP);
    cr_assert (it_wait (s_health_is, "degraded", 10000), "health never said degraded");
    long status;
    json_t *health = it_get_json (&s_suite, "/api/health", &status);
    cr_assert_eq (status, 200, "degraded still serves");
    char *text = json_dumps (health, 0);
    cr_assert (strstr (text, "Redis"), "the warning does not name Redis: %s", text);
    cr_assert_str_eq (json_string_value (json_object_get (
                          json_object_get (health, "queue_backend"), "status")),
                      "down");
    free (text);
    json_decref (health);
    json_t *ready = it_get_json (&s_suite, "/api/health/ready", &status);
    cr_assert_eq (status, 200, "Redis down is degraded, not unready");
    json_decref (ready);
    kill (redis[0], SIGCONT);
    cr_assert (it_wait (s_health_is, "ok", 10000), "health did not recover");
    it_suite_stop (&s_suite);
}

static char s_last[2048];

//  GET path as JSON (new reference); its status and text, also kept in
//  s_last for the failure message.
static json_t *
s_get_kept (const char *path, long *status)
{
    json_t *json = it_get_json (&s_suite, path, status);
    char *text = json_dumps (json, 0);
    snprintf (s_last, sizeof s_last, "%ld %s", *status, text ? text : "");
    free (text);
    return json;
}

//  Ready is 503 and chatd is the only thing missing (the other daemons have
//  registered and the database has been checked by then).
static bool
s_only_chatd_missing (void *arg)
{
    (void) arg;
    long status;
    json_t *ready = s_get_kept ("/api/health/ready", &status);
    json_t *reasons = json_object_get (ready, "reasons");
    bool only =
        status == 503 && json_array_size (reasons) == 1 && strstr (s_last, "chatd");
    json_decref (ready);
    return only;
}

Test (health, no_chatd_is_unready_naming_chatd, .timeout = 90)
{
    const char *extra[] = {"CHAT_REPLICAS=0", NULL};
    it_suite_start_live (&s_suite, extra);
    cr_assert (it_wait (s_only_chatd_missing, NULL, 15000), "last answer: %s", s_last);
    it_suite_stop (&s_suite);
}

//  A chatd pid of the suite that is not in `old` (the restarted replica),
//  into *pid.
static bool
s_new_chatd (void *arg)
{
    pid_t *known = arg; //  known[0], known[1]: the replicas seen; known[2]: out
    pid_t pids[4];
    size_t n = it_children (s_suite.supervisor, "chatd", pids, 4);
    for (size_t i = 0; i < n; i++)
        if (pids[i] != known[0] && pids[i] != known[1]) {
            known[2] = pids[i];
            return true;
        }
    return false;
}

static bool
s_warns_given_up (void *arg)
{
    (void) arg;
    long status;
    json_t *health = s_get_kept ("/api/health", &status);
    char *warnings = json_dumps (json_object_get (health, "warnings"), 0);
    bool found =
        status == 200 &&
        !strcmp (json_string_value (json_object_get (health, "status")), "degraded") &&
        warnings && strstr (warnings, "gave up restarting chatd");
    free (warnings);
    json_decref (health);
    return found;
}

Test (health, a_program_the_supervisor_gave_up_is_a_warning, .timeout = 90)
{
    //  One chatd replica crashes twice in a row and is given up; the other
    //  still serves, so the suite is ready, but health must say it lost one.
    const char *extra[] = {"SUPERVISOR_MAX_CRASHES=2", "SUPERVISOR_RESTART_INITIAL_MS=50",
                           "METRICS_REPORT_INTERVAL_MS=100", NULL};
    it_suite_start (&s_suite, extra);
    cr_assert (it_wait (s_health_is, "ok", 10000), "health never said ok");
    pid_t known[3] = {0};
    cr_assert_eq (it_children (s_suite.supervisor, "chatd", known, 2), 2);
    kill (known[0], SIGKILL);
    cr_assert (it_wait (s_new_chatd, known, 10000), "the replica was not restarted");
    kill (known[2], SIGKILL);
    cr_assert (it_wait (s_warns_given_up, NULL, 15000), "last answer: %s", s_last);
    long status;
    json_t *ready = it_get_json (&s_suite, "/api/health/ready", &status);
    cr_assert_eq (status, 200, "one replica still serves");
    json_decref (ready);
    it_suite_stop (&s_suite);
}
