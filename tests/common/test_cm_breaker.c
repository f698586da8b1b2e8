/*  test_cm_breaker.c: the circuit breaker's state machine, with time passed
    in (no sleeps), at its exact boundaries. */
#include <criterion/criterion.h>
#include "cm_breaker.h"
#include "cm_metrics.h"
#include <pthread.h>
#include <stdatomic.h>

//  A breaker with the defaults changed by the fields given.
static cm_breaker_t *
s_breaker (int64_t threshold, int64_t reset_ms, int64_t max_reset_ms, int64_t probes)
{
    cm_breaker_config_t config;
    cm_breaker_config_defaults (&config);
    config.failure_threshold = threshold;
    config.reset_ms = reset_ms;
    config.max_reset_ms = max_reset_ms;
    config.half_open_probes = probes;
    return cm_breaker_new ("test", &config);
}

//  One call that ends in a failure (or is refused) at now_ms.
static cm_breaker_result_t
s_fail (cm_breaker_t *breaker, int64_t now_ms)
{
    cm_breaker_permit_t permit;
    cm_breaker_result_t result = cm_breaker_acquire (breaker, now_ms, &permit, NULL);
    if (result == CM_BREAKER_ALLOWED)
        cm_breaker_failure (breaker, permit, now_ms);
    return result;
}

static cm_breaker_result_t
s_succeed (cm_breaker_t *breaker, int64_t now_ms)
{
    cm_breaker_permit_t permit;
    cm_breaker_result_t result = cm_breaker_acquire (breaker, now_ms, &permit, NULL);
    if (result == CM_BREAKER_ALLOWED)
        cm_breaker_success (breaker, permit, now_ms);
    return result;
}

Test (cm_breaker, walkthrough)
{
    //  Settings come from the environment in a program; here, by hand.
    cm_breaker_config_t config;
    cm_breaker_config_defaults (&config);
    config.failure_threshold = 3;
    config.reset_ms = 1000;
    cm_breaker_t *breaker = cm_breaker_new ("chat", &config);
    cr_assert_str_eq (cm_breaker_name (breaker), "chat");
    cr_assert_eq (cm_breaker_state (breaker), CM_BREAKER_CLOSED);

    //  Ask before each upstream call, and report how it ended.
    int64_t now = 5000, retry_after = -1;
    cm_breaker_permit_t permit;
    cr_assert_eq (cm_breaker_acquire (breaker, now, &permit, &retry_after),
                  CM_BREAKER_ALLOWED);
    cm_breaker_success (breaker, permit, now);

    //  Three failures in a row open the circuit ...
    for (int i = 0; i < 3; i++) {
        cr_assert_eq (cm_breaker_acquire (breaker, now, &permit, NULL),
                      CM_BREAKER_ALLOWED);
        cm_breaker_failure (breaker, permit, now);
    }
    cr_assert_eq (cm_breaker_state (breaker), CM_BREAKER_OPEN);

    //  ... so calls are refused at once, with the time to wait.
    cr_assert_eq (cm_breaker_acquire (breaker, now + 400, &permit, &retry_after),
                  CM_BREAKER_REJECTED);
    cr_assert_eq (retry_after, 600);

    //  After reset_ms one probe goes through; its success closes the circuit.
    cr_assert_eq (cm_breaker_acquire (breaker, now + 1000, &permit, NULL),
                  CM_BREAKER_ALLOWED);
    cr_assert_eq (cm_breaker_state (breaker), CM_BREAKER_HALF_OPEN);
    cm_breaker_success (breaker, permit, now + 1010);
    cr_assert_eq (cm_breaker_state (breaker), CM_BREAKER_CLOSED);

    //  A call that ended neither way (the client left) is released.
    cr_assert_eq (cm_breaker_acquire (breaker, now + 2000, &permit, NULL),
                  CM_BREAKER_ALLOWED);
    cm_breaker_release (breaker, permit);

    cm_breaker_stats_t stats;
    cm_breaker_stats (breaker, &stats);
    cr_assert_eq (stats.allowed, 6);
    cr_assert_eq (stats.rejected, 1);
    cr_assert_eq (stats.succeeded, 2);
    cr_assert_eq (stats.failed, 3);
    cr_assert_eq (stats.released, 1);
    cr_assert_eq (stats.transitions[CM_BREAKER_CLOSED][CM_BREAKER_OPEN], 1);
    cr_assert_eq (stats.transitions[CM_BREAKER_OPEN][CM_BREAKER_HALF_OPEN], 1);
    cr_assert_eq (stats.transitions[CM_BREAKER_HALF_OPEN][CM_BREAKER_CLOSED], 1);
    cm_breaker_destroy (&breaker);
    cr_assert_null (breaker);
    cm_breaker_destroy (&breaker);
}

Test (cm_breaker, opens_after_threshold)
{
    cm_breaker_t *breaker = s_breaker (5, 30000, 300000, 1);
    for (int i = 0; i < 4; i++)
        cr_assert_eq (s_fail (breaker, 100), CM_BREAKER_ALLOWED);
    cm_breaker_stats_t stats;
    cm_breaker_stats (breaker, &stats);
    cr_assert_eq (stats.state, CM_BREAKER_CLOSED, "threshold - 1 failures stay closed");
    cr_assert_eq (stats.consecutive, 4);
    cr_assert_eq (s_fail (breaker, 100), CM_BREAKER_ALLOWED);
    cm_breaker_stats (breaker, &stats);
    cr_assert_eq (stats.state, CM_BREAKER_OPEN);
    cr_assert_eq (stats.open_until_ms, 30100);
    cr_assert_eq (stats.cooldown_ms, 30000);
    cr_assert_eq (s_fail (breaker, 101), CM_BREAKER_REJECTED);
    cm_breaker_destroy (&breaker);
}

Test (cm_breaker, threshold_of_one_opens_at_the_first_failure)
{
    cm_breaker_t *breaker = s_breaker (1, 10, 10, 1);
    cr_assert_eq (s_fail (breaker, 0), CM_BREAKER_ALLOWED);
    cr_assert_eq (cm_breaker_state (breaker), CM_BREAKER_OPEN);
    cm_breaker_destroy (&breaker);
}

Test (cm_breaker, success_resets_the_consecutive_count)
{
    cm_breaker_t *breaker = s_breaker (3, 1000, 1000, 1);
    for (int round = 0; round < 5; round++) {
        s_fail (breaker, round);
        s_fail (breaker, round);
        s_succeed (breaker, round);
    }
    cm_breaker_stats_t stats;
    cm_breaker_stats (breaker, &stats);
    cr_assert_eq (stats.state, CM_BREAKER_CLOSED, "10 failures, never 3 in a row");
    cr_assert_eq (stats.consecutive, 0);
    cr_assert_eq (stats.failed, 10);
    s_fail (breaker, 10);
    s_fail (breaker, 10);
    s_fail (breaker, 10);
    cr_assert_eq (cm_breaker_state (breaker), CM_BREAKER_OPEN);
    cm_breaker_destroy (&breaker);
}

Test (cm_breaker, release_counts_neither_way)
{
    cm_breaker_t *breaker = s_breaker (2, 1000, 1000, 1);
    cm_breaker_permit_t permit;
    s_fail (breaker, 0);
    cm_breaker_acquire (breaker, 0, &permit, NULL);
    cm_breaker_release (breaker, permit);
    cm_breaker_stats_t stats;
    cm_breaker_stats (breaker, &stats);
    cr_assert_eq (stats.consecutive, 1, "a release neither fails nor resets");
    cr_assert_eq (stats.state, CM_BREAKER_CLOSED);
    cr_assert_eq (stats.released, 1);
    s_fail (breaker, 0);
    cr_assert_eq (cm_breaker_state (breaker), CM_BREAKER_OPEN);
    cm_breaker_destroy (&breaker);
}

Test (cm_breaker, open_refuses_until_exactly_reset_ms)
{
    cm_breaker_t *breaker = s_breaker (1, 30000, 300000, 1);
    s_fail (breaker, 1000); //  open until 31000
    cm_breaker_permit_t permit;
    int64_t retry = -1;
    const int64_t at[] = {1000, 1001, 15000, 30999};
    for (size_t i = 0; i < 4; i++) {
        cr_assert_eq (cm_breaker_acquire (breaker, at[i], &permit, &retry),
                      CM_BREAKER_REJECTED);
        cr_assert_eq (retry, 31000 - at[i], "retry_after is exact at %lld",
                      (long long) at[i]);
        cr_assert_eq (cm_breaker_state (breaker), CM_BREAKER_OPEN);
    }
    cr_assert_eq (cm_breaker_acquire (breaker, 31000, &permit, &retry),
                  CM_BREAKER_ALLOWED);
    cr_assert_eq (cm_breaker_state (breaker), CM_BREAKER_HALF_OPEN);
    cm_breaker_stats_t stats;
    cm_breaker_stats (breaker, &stats);
    cr_assert_eq (stats.rejected, 4);
    cr_assert_eq (stats.probes_in_flight, 1);
    cr_assert_eq (stats.transitions[CM_BREAKER_OPEN][CM_BREAKER_HALF_OPEN], 1);
    cm_breaker_destroy (&breaker);
}

Test (cm_breaker, state_stays_open_until_someone_asks)
{
    cm_breaker_t *breaker = s_breaker (1, 100, 100, 1);
    s_fail (breaker, 0);
    //  Long past the cool-down, the state still reads open: the move is lazy.
    cr_assert_eq (cm_breaker_state (breaker), CM_BREAKER_OPEN);
    cr_assert_eq (s_succeed (breaker, 1000000), CM_BREAKER_ALLOWED);
    cr_assert_eq (cm_breaker_state (breaker), CM_BREAKER_CLOSED);
    cm_breaker_destroy (&breaker);
}

Test (cm_breaker, probes_are_limited)
{
    cm_breaker_t *breaker = s_breaker (1, 5000, 5000, 2);
    s_fail (breaker, 0);
    cm_breaker_permit_t a, b, c;
    int64_t retry = -1;
    cr_assert_eq (cm_breaker_acquire (breaker, 5000, &a, NULL), CM_BREAKER_ALLOWED);
    cr_assert_eq (cm_breaker_acquire (breaker, 5001, &b, NULL), CM_BREAKER_ALLOWED);
    //  Both probes are out: others are refused, told to come back soon.
    cr_assert_eq (cm_breaker_acquire (breaker, 5002, &c, &retry), CM_BREAKER_REJECTED);
    cr_assert_eq (retry, 1000);
    //  One probe succeeded: still half-open, and its slot is used up.
    cm_breaker_success (breaker, a, 5010);
    cr_assert_eq (cm_breaker_state (breaker), CM_BREAKER_HALF_OPEN);
    cr_assert_eq (cm_breaker_acquire (breaker, 5011, &c, NULL), CM_BREAKER_REJECTED);
    //  The second closes it.
    cm_breaker_success (breaker, b, 5020);
    cr_assert_eq (cm_breaker_state (breaker), CM_BREAKER_CLOSED);
    cr_assert_eq (cm_breaker_acquire (breaker, 5021, &c, NULL), CM_BREAKER_ALLOWED);
    cm_breaker_destroy (&breaker);
}

Test (cm_breaker, probe_retry_after_is_at_most_reset_ms)
{
    cm_breaker_t *breaker = s_breaker (1, 250, 250, 1);
    s_fail (breaker, 0);
    cm_breaker_permit_t a, b;
    int64_t retry = -1;
    cr_assert_eq (cm_breaker_acquire (breaker, 250, &a, NULL), CM_BREAKER_ALLOWED);
    cr_assert_eq (cm_breaker_acquire (breaker, 260, &b, &retry), CM_BREAKER_REJECTED);
    cr_assert_eq (retry, 250);
    cm_breaker_destroy (&breaker);
}

Test (cm_breaker, released_probe_frees_its_slot)
{
    cm_breaker_t *breaker = s_breaker (1, 100, 100, 1);
    s_fail (breaker, 0);
    cm_breaker_permit_t probe, other;
    cr_assert_eq (cm_breaker_acquire (breaker, 100, &probe, NULL), CM_BREAKER_ALLOWED);
    cr_assert_eq (cm_breaker_acquire (breaker, 100, &other, NULL), CM_BREAKER_REJECTED);
    //  The probe's client left: neither outcome; another caller may probe.
    cm_breaker_release (breaker, probe);
    cr_assert_eq (cm_breaker_state (breaker), CM_BREAKER_HALF_OPEN);
    cr_assert_eq (cm_breaker_acquire (breaker, 101, &other, NULL), CM_BREAKER_ALLOWED);
    cm_breaker_success (breaker, other, 102);
    cr_assert_eq (cm_breaker_state (breaker), CM_BREAKER_CLOSED);
    cm_breaker_destroy (&breaker);
}

Test (cm_breaker, probe_failure_reopens_with_doubled_cooldown_capped)
{
    cm_breaker_t *breaker = s_breaker (1, 1000, 3500, 1);
    int64_t now = 0, retry = -1;
    s_fail (breaker, now);
    //  Each failed probe doubles the cool-down: 1000, 2000, then the cap.
    const int64_t expected[] = {1000, 2000, 3500, 3500};
    for (size_t i = 0; i < 4; i++) {
        cm_breaker_stats_t stats;
        cm_breaker_stats (breaker, &stats);
        cr_assert_eq (stats.cooldown_ms, expected[i], "trip %zu", i);
        cr_assert_eq (stats.open_until_ms, now + expected[i]);
        cm_breaker_permit_t permit;
        cr_assert_eq (
            cm_breaker_acquire (breaker, now + expected[i] - 1, &permit, &retry),
            CM_BREAKER_REJECTED);
        cr_assert_eq (retry, 1);
        now += expected[i];
        cr_assert_eq (s_fail (breaker, now), CM_BREAKER_ALLOWED, "probe %zu", i);
        cr_assert_eq (cm_breaker_state (breaker), CM_BREAKER_OPEN);
    }
    cm_breaker_stats_t stats;
    cm_breaker_stats (breaker, &stats);
    cr_assert_eq (stats.transitions[CM_BREAKER_CLOSED][CM_BREAKER_OPEN], 1);
    cr_assert_eq (stats.transitions[CM_BREAKER_OPEN][CM_BREAKER_HALF_OPEN], 4);
    cr_assert_eq (stats.transitions[CM_BREAKER_HALF_OPEN][CM_BREAKER_OPEN], 4);
    cm_breaker_destroy (&breaker);
}

Test (cm_breaker, probe_success_closes_and_resets_the_cooldown)
{
    cm_breaker_t *breaker = s_breaker (2, 1000, 60000, 1);
    s_fail (breaker, 0);
    s_fail (breaker, 0);
    s_fail (breaker, 1000); //  probe fails: 2000
    s_fail (breaker, 3000); //  probe fails: 4000
    cm_breaker_stats_t stats;
    cm_breaker_stats (breaker, &stats);
    cr_assert_eq (stats.cooldown_ms, 4000);
    cr_assert_eq (s_succeed (breaker, 7000), CM_BREAKER_ALLOWED);
    cm_breaker_stats (breaker, &stats);
    cr_assert_eq (stats.state, CM_BREAKER_CLOSED);
    cr_assert_eq (stats.cooldown_ms, 1000, "the next trip starts from reset_ms");
    cr_assert_eq (stats.consecutive, 0);
    //  A fresh count: threshold - 1 failures stay closed, threshold opens for
    //  reset_ms again.
    s_fail (breaker, 8000);
    cr_assert_eq (cm_breaker_state (breaker), CM_BREAKER_CLOSED);
    s_fail (breaker, 8000);
    cm_breaker_stats (breaker, &stats);
    cr_assert_eq (stats.state, CM_BREAKER_OPEN);
    cr_assert_eq (stats.open_until_ms, 9000);
    cm_breaker_destroy (&breaker);
}

Test (cm_breaker, first_failed_probe_reopens_at_once)
{
    cm_breaker_t *breaker = s_breaker (1, 100, 1000, 3);
    s_fail (breaker, 0);
    cm_breaker_permit_t a, b, c;
    cm_breaker_acquire (breaker, 100, &a, NULL);
    cm_breaker_acquire (breaker, 100, &b, NULL);
    cm_breaker_acquire (breaker, 100, &c, NULL);
    cm_breaker_success (breaker, a, 101);
    cm_breaker_failure (breaker, b, 102);
    cr_assert_eq (cm_breaker_state (breaker), CM_BREAKER_OPEN);
    //  The last probe reports late: counted, but it does not close anything.
    cm_breaker_success (breaker, c, 103);
    cm_breaker_stats_t stats;
    cm_breaker_stats (breaker, &stats);
    cr_assert_eq (stats.state, CM_BREAKER_OPEN);
    cr_assert_eq (stats.open_until_ms, 102 + 200);
    cr_assert_eq (stats.succeeded, 2);
    cm_breaker_destroy (&breaker);
}

Test (cm_breaker, outcomes_of_an_earlier_state_do_not_move_it)
{
    cm_breaker_t *breaker = s_breaker (2, 100, 100, 1);
    //  Four calls start while closed; two fail and open the circuit.
    cm_breaker_permit_t p[4];
    for (int i = 0; i < 4; i++)
        cr_assert_eq (cm_breaker_acquire (breaker, 0, &p[i], NULL), CM_BREAKER_ALLOWED);
    cm_breaker_failure (breaker, p[0], 1);
    cm_breaker_failure (breaker, p[1], 1);
    cr_assert_eq (cm_breaker_state (breaker), CM_BREAKER_OPEN);
    //  A late failure does not push the cool-down further.
    cm_breaker_failure (breaker, p[2], 50);
    cm_breaker_stats_t stats;
    cm_breaker_stats (breaker, &stats);
    cr_assert_eq (stats.open_until_ms, 101);
    //  Half-open: a late success of a call from the closed state is not a
    //  probe's.
    cm_breaker_permit_t probe;
    cr_assert_eq (cm_breaker_acquire (breaker, 101, &probe, NULL), CM_BREAKER_ALLOWED);
    cm_breaker_success (breaker, p[3], 102);
    cr_assert_eq (cm_breaker_state (breaker), CM_BREAKER_HALF_OPEN);
    cm_breaker_success (breaker, probe, 103);
    cr_assert_eq (cm_breaker_state (breaker), CM_BREAKER_CLOSED);
    cm_breaker_stats (breaker, &stats);
    cr_assert_eq (stats.failed, 3);
    cr_assert_eq (stats.succeeded, 2);
    cr_assert_eq (stats.allowed, 5);
    cm_breaker_destroy (&breaker);
}

static cm_breaker_t *
s_rate_breaker (int64_t rate, int64_t min_calls, int64_t window)
{
    cm_breaker_config_t config;
    cm_breaker_config_defaults (&config);
    config.failure_threshold = 1000; //  out of the way
    config.reset_ms = 100;
    config.failure_rate = rate;
    config.min_calls = min_calls;
    config.window = window;
    return cm_breaker_new ("rate", &config);
}

Test (cm_breaker, failure_rate_opens_after_min_calls)
{
    cm_breaker_t *breaker = s_rate_breaker (50, 10, 20);
    //  Alternate: a 50% failure rate, never two failures in a row. Below
    //  min_calls the rate does not count.
    for (int i = 0; i < 9; i++)
        (i % 2 ? s_fail : s_succeed) (breaker, i);
    cm_breaker_stats_t stats;
    cm_breaker_stats (breaker, &stats);
    cr_assert_eq (stats.state, CM_BREAKER_CLOSED);
    cr_assert_eq (stats.window_calls, 9);
    cr_assert_eq (stats.window_failures, 4);
    //  The tenth call, a failure: 5 of 10 = 50% >= 50%: open.
    s_fail (breaker, 9);
    cr_assert_eq (cm_breaker_state (breaker), CM_BREAKER_OPEN);
    cm_breaker_destroy (&breaker);
}

Test (cm_breaker, failure_rate_below_the_limit_stays_closed)
{
    cm_breaker_t *breaker = s_rate_breaker (50, 10, 10);
    //  4 of 10 failed, then only successes: never 50%.
    for (int i = 0; i < 100; i++)
        (i < 10 && i % 3 == 0 ? s_fail : s_succeed) (breaker, i);
    cm_breaker_stats_t stats;
    cm_breaker_stats (breaker, &stats);
    cr_assert_eq (stats.state, CM_BREAKER_CLOSED);
    cr_assert_eq (stats.failed, 4);
    cr_assert_eq (stats.window_calls, 10);
    cr_assert_eq (stats.window_failures, 0, "old failures slid out of the window");
    cm_breaker_destroy (&breaker);
}

Test (cm_breaker, failure_rate_window_slides)
{
    cm_breaker_t *breaker = s_rate_breaker (30, 5, 10);
    //  2 failures then 8 successes: 20%. Each new failure pushes a success
    //  or a failure out; the rate reaches 30% when the window holds 3.
    s_fail (breaker, 0);
    s_fail (breaker, 0);
    for (int i = 0; i < 8; i++)
        s_succeed (breaker, 0);
    //  Window full: [F F S S S S S S S S]. A failure replaces the oldest F.
    s_fail (breaker, 1);
    cm_breaker_stats_t stats;
    cm_breaker_stats (breaker, &stats);
    cr_assert_eq (stats.window_failures, 2);
    cr_assert_eq (stats.state, CM_BREAKER_CLOSED);
    s_fail (breaker, 2); //  replaces the other F: still 2 of 10
    cm_breaker_stats (breaker, &stats);
    cr_assert_eq (stats.window_failures, 2);
    cr_assert_eq (stats.state, CM_BREAKER_CLOSED);
    s_succeed (breaker, 2); //  breaks the run of consecutive failures
    s_fail (breaker, 3);    //  replaces an S: 3 of 10 = 30%
    cr_assert_eq (cm_breaker_state (breaker), CM_BREAKER_OPEN);
    cm_breaker_destroy (&breaker);
}

Test (cm_breaker, failure_rate_off_by_default)
{
    cm_breaker_t *breaker = s_rate_breaker (0, 1, 10);
    for (int i = 0; i < 50; i++)
        (i % 2 ? s_fail : s_succeed) (breaker, i);
    cr_assert_eq (cm_breaker_state (breaker), CM_BREAKER_CLOSED);
    cm_breaker_destroy (&breaker);
}

Test (cm_breaker, closing_clears_the_window)
{
    cm_breaker_t *breaker = s_rate_breaker (50, 4, 4);
    s_succeed (breaker, 0);
    s_fail (breaker, 0);
    s_succeed (breaker, 0);
    s_fail (breaker, 0); //  2 of 4: open
    cr_assert_eq (cm_breaker_state (breaker), CM_BREAKER_OPEN);
    s_succeed (breaker, 100); //  probe closes
    cm_breaker_stats_t stats;
    cm_breaker_stats (breaker, &stats);
    cr_assert_eq (stats.state, CM_BREAKER_CLOSED);
    cr_assert_eq (stats.window_calls, 0);
    s_fail (breaker, 101); //  1 of 1, below min_calls
    cr_assert_eq (cm_breaker_state (breaker), CM_BREAKER_CLOSED);
    cm_breaker_destroy (&breaker);
}

//  --- configuration ---------------------------------------------------------------

typedef struct {
    int64_t other;
    cm_breaker_config_t breaker;
} s_settings_t;

static const cm_conf_entry_t s_table[] = {
    CM_BREAKER_CONF_ENTRIES ("TESTB", s_settings_t, breaker),
    {NULL, 0, NULL, 0, 0, 0, NULL},
};

static const char *s_names[] = {
    "TESTB_CIRCUIT_FAILURE_THRESHOLD",
    "TESTB_CIRCUIT_RESET_MS",
    "TESTB_CIRCUIT_MAX_RESET_MS",
    "TESTB_CIRCUIT_HALF_OPEN_PROBES",
    "TESTB_CIRCUIT_FAILURE_RATE",
    "TESTB_CIRCUIT_MIN_CALLS",
    "TESTB_CIRCUIT_WINDOW",
};

static void
s_unset (void)
{
    for (size_t i = 0; i < sizeof s_names / sizeof s_names[0]; i++)
        unsetenv (s_names[i]);
}

Test (cm_breaker, config_table_defaults, .init = s_unset)
{
    s_settings_t settings = {0};
    char err[256] = "";
    cr_assert_eq (cm_config_load (s_table, &settings, err, sizeof err), 0, "%s", err);
    cm_breaker_config_t defaults;
    cm_breaker_config_defaults (&defaults);
    cr_assert_eq (memcmp (&settings.breaker, &defaults, sizeof defaults), 0);
    cr_assert_eq (settings.breaker.failure_threshold, 5);
    cr_assert_eq (settings.breaker.reset_ms, 30000);
    cr_assert_eq (cm_breaker_config_check (&settings.breaker, "TESTB", err, sizeof err),
                  0);
    //  Every entry is named as documented.
    for (size_t i = 0; i < sizeof s_names / sizeof s_names[0]; i++)
        cr_assert_str_eq (s_table[i].name, s_names[i]);
}

Test (cm_breaker, config_from_environment, .init = s_unset)
{
    setenv ("TESTB_CIRCUIT_FAILURE_THRESHOLD", "3", 1);
    setenv ("TESTB_CIRCUIT_RESET_MS", "250", 1);
    setenv ("TESTB_CIRCUIT_FAILURE_RATE", "40", 1);
    s_settings_t settings = {0};
    char err[256] = "";
    cr_assert_eq (cm_config_load (s_table, &settings, err, sizeof err), 0, "%s", err);
    cr_assert_eq (settings.breaker.failure_threshold, 3);
    cr_assert_eq (settings.breaker.reset_ms, 250);
    cr_assert_eq (settings.breaker.failure_rate, 40);
    cr_assert_eq (settings.breaker.max_reset_ms, 300000);
    s_unset ();
}

Test (cm_breaker, bad_config_names_the_variable, .init = s_unset)
{
    s_settings_t settings = {0};
    char err[256] = "";
    setenv ("TESTB_CIRCUIT_FAILURE_THRESHOLD", "0", 1);
    cr_assert_eq (cm_config_load (s_table, &settings, err, sizeof err), -1);
    cr_assert (strstr (err, "TESTB_CIRCUIT_FAILURE_THRESHOLD"), "%s", err);
    s_unset ();

    setenv ("TESTB_CIRCUIT_FAILURE_RATE", "101", 1);
    cr_assert_eq (cm_config_load (s_table, &settings, err, sizeof err), -1);
    cr_assert (strstr (err, "TESTB_CIRCUIT_FAILURE_RATE"), "%s", err);
    s_unset ();

    //  Rules between two settings: cm_breaker_config_check.
    setenv ("TESTB_CIRCUIT_RESET_MS", "600000", 1);
    cr_assert_eq (cm_config_load (s_table, &settings, err, sizeof err), 0, "%s", err);
    cr_assert_eq (cm_breaker_config_check (&settings.breaker, "TESTB", err, sizeof err),
                  -1);
    cr_assert (strstr (err, "TESTB_CIRCUIT_MAX_RESET_MS"), "%s", err);
    s_unset ();

    setenv ("TESTB_CIRCUIT_MIN_CALLS", "50", 1);
    setenv ("TESTB_CIRCUIT_WINDOW", "10", 1);
    cr_assert_eq (cm_config_load (s_table, &settings, err, sizeof err), 0, "%s", err);
    cr_assert_eq (cm_breaker_config_check (&settings.breaker, "TESTB", err, sizeof err),
                  -1);
    cr_assert (strstr (err, "TESTB_CIRCUIT_MIN_CALLS"), "%s", err);
    s_unset ();

    //  A config built by hand is checked against the same bounds.
    cm_breaker_config_t config;
    cm_breaker_config_defaults (&config);
    config.half_open_probes = 0;
    cr_assert_eq (cm_breaker_config_check (&config, "AGENT", err, sizeof err), -1);
    cr_assert (strstr (err, "AGENT_CIRCUIT_HALF_OPEN_PROBES"), "%s", err);
}

Test (cm_breaker, state_names)
{
    cr_assert_str_eq (cm_breaker_state_name (CM_BREAKER_CLOSED), "closed");
    cr_assert_str_eq (cm_breaker_state_name (CM_BREAKER_OPEN), "open");
    cr_assert_str_eq (cm_breaker_state_name (CM_BREAKER_HALF_OPEN), "half_open");
    cr_assert_eq (CM_BREAKER_CLOSED, 0);
    cr_assert_eq (CM_BREAKER_OPEN, 1);
    cr_assert_eq (CM_BREAKER_HALF_OPEN, 2);
}

//  --- threads -----------------------------------------------------------------------

#define S_THREADS    8
#define S_ITERATIONS 20000

typedef struct {
    cm_breaker_t *breaker;
    atomic_llong *clock; //  shared fake time: every call moves it on by 1 ms
    unsigned seed;       //  this thread's random outcomes
    uint64_t allowed, rejected, succeeded, failed, released;
} s_worker_t;

static void *
s_worker (void *arg)
{
    s_worker_t *w = arg;
    for (int i = 0; i < S_ITERATIONS; i++) {
        int64_t now = atomic_fetch_add (w->clock, 1);
        cm_breaker_permit_t permit;
        if (cm_breaker_acquire (w->breaker, now, &permit, NULL) == CM_BREAKER_REJECTED) {
            w->rejected++;
            continue;
        }
        w->allowed++;
        int roll = rand_r (&w->seed) % 10;
        now = atomic_fetch_add (w->clock, 1);
        if (roll < 4) {
            cm_breaker_failure (w->breaker, permit, now);
            w->failed++;
        } else if (roll < 9) {
            cm_breaker_success (w->breaker, permit, now);
            w->succeeded++;
        } else {
            cm_breaker_release (w->breaker, permit);
            w->released++;
        }
    }
    return NULL;
}

Test (cm_breaker, concurrent_use_keeps_counts_consistent)
{
    cm_breaker_config_t config;
    cm_breaker_config_defaults (&config);
    config.failure_threshold = 3;
    config.reset_ms = 50;
    config.max_reset_ms = 400;
    config.half_open_probes = 2;
    config.failure_rate = 50;
    config.min_calls = 10;
    config.window = 20;
    cm_breaker_t *breaker = cm_breaker_new ("threads", &config);
    atomic_llong clock = 0;
    pthread_t threads[S_THREADS];
    s_worker_t workers[S_THREADS];
    for (int i = 0; i < S_THREADS; i++) {
        workers[i] = (s_worker_t){.breaker = breaker, .clock = &clock, .seed = 7u + i};
        cr_assert_eq (pthread_create (&threads[i], NULL, s_worker, &workers[i]), 0);
    }
    uint64_t allowed = 0, rejected = 0, succeeded = 0, failed = 0, released = 0;
    for (int i = 0; i < S_THREADS; i++) {
        pthread_join (threads[i], NULL);
        allowed += workers[i].allowed;
        rejected += workers[i].rejected;
        succeeded += workers[i].succeeded;
        failed += workers[i].failed;
        released += workers[i].released;
    }
    cm_breaker_stats_t s;
    cm_breaker_stats (breaker, &s);
    cr_assert_eq (s.allowed, allowed);
    cr_assert_eq (s.rejected, rejected);
    cr_assert_eq (s.succeeded, succeeded);
    cr_assert_eq (s.failed, failed);
    cr_assert_eq (s.released, released);
    cr_assert_eq (s.allowed + s.rejected, (uint64_t) S_THREADS * S_ITERATIONS);
    cr_assert_eq (s.allowed, s.succeeded + s.failed + s.released);
    cr_assert_eq (s.probes_in_flight, 0, "every probe reported");

    //  Every state was entered as often as it was left, give or take the
    //  current one (CLOSED was entered once at the start).
    uint64_t (*t)[3] = s.transitions;
    uint64_t in_closed = 1 + t[CM_BREAKER_HALF_OPEN][CM_BREAKER_CLOSED];
    uint64_t out_closed = t[CM_BREAKER_CLOSED][CM_BREAKER_OPEN];
    uint64_t in_open =
        t[CM_BREAKER_CLOSED][CM_BREAKER_OPEN] + t[CM_BREAKER_HALF_OPEN][CM_BREAKER_OPEN];
    uint64_t out_open = t[CM_BREAKER_OPEN][CM_BREAKER_HALF_OPEN];
    uint64_t in_half = t[CM_BREAKER_OPEN][CM_BREAKER_HALF_OPEN];
    uint64_t out_half = t[CM_BREAKER_HALF_OPEN][CM_BREAKER_CLOSED] +
                        t[CM_BREAKER_HALF_OPEN][CM_BREAKER_OPEN];
    cr_assert_eq (in_closed - out_closed, s.state == CM_BREAKER_CLOSED);
    cr_assert_eq (in_open - out_open, s.state == CM_BREAKER_OPEN);
    cr_assert_eq (in_half - out_half, s.state == CM_BREAKER_HALF_OPEN);
    cr_assert_eq (t[CM_BREAKER_CLOSED][CM_BREAKER_HALF_OPEN], 0);
    cr_assert_eq (t[CM_BREAKER_OPEN][CM_BREAKER_CLOSED], 0);
    //  With 40% failures the circuit went round many times.
    cr_assert_gt (out_closed, 10);
    cr_assert_gt (s.rejected, 0);
    cm_breaker_destroy (&breaker);
}

//  --- metrics -----------------------------------------------------------------------

static double
s_value (json_t *snapshot, const char *name, const char *const *labels)
{
    const json_t *series = cm_metrics_series (snapshot, name, labels);
    cr_assert_not_null (series, "no series %s", name);
    return json_number_value (json_object_get (series, "value"));
}

Test (cm_breaker, publishes_metrics)
{
    cm_breaker_t *breaker = s_breaker (2, 100, 100, 1);
    cm_metrics_t *metrics = cm_metrics_new ();
    cm_breaker_attach_metrics (breaker, metrics);
    const char *state[] = {"circuit", "test", NULL};
    const char *opened[] = {"circuit", "test", "from", "closed", "to", "open", NULL};
    const char *failed[] = {"circuit", "test", "outcome", "failed", NULL};
    const char *rejected[] = {"circuit", "test", "outcome", "rejected", NULL};

    //  Every series exists at zero before anything happened.
    json_t *snapshot = cm_metrics_snapshot (metrics);
    cr_assert_eq (s_value (snapshot, "llmrt_circuit_state", state), 0);
    cr_assert_eq (s_value (snapshot, "llmrt_circuit_transitions_total", opened), 0);
    cr_assert_eq (cm_metrics_sum (snapshot, "llmrt_circuit_transitions_total", NULL), 0);
    cr_assert_eq (cm_metrics_sum (snapshot, "llmrt_circuit_calls_total", NULL), 0);
    const json_t *family = NULL;
    size_t i;
    json_t *f;
    json_array_foreach (json_object_get (snapshot, "families"), i,
                        f) if (!strcmp (json_string_value (json_object_get (f, "name")),
                                        "llmrt_circuit_transitions_total")) family = f;
    cr_assert_eq (json_array_size (json_object_get (family, "series")), 4);
    json_decref (snapshot);

    //  Two failures open it; a refused call.
    s_fail (breaker, 0);
    s_fail (breaker, 0);
    s_fail (breaker, 1);
    snapshot = cm_metrics_snapshot (metrics);
    cr_assert_eq (s_value (snapshot, "llmrt_circuit_state", state), CM_BREAKER_OPEN);
    cr_assert_eq (s_value (snapshot, "llmrt_circuit_transitions_total", opened), 1);
    cr_assert_eq (s_value (snapshot, "llmrt_circuit_calls_total", failed), 2);
    cr_assert_eq (s_value (snapshot, "llmrt_circuit_calls_total", rejected), 1);
    char *text = cm_metrics_prometheus (snapshot, NULL);
    cr_assert (strstr (text, "# TYPE llmrt_circuit_state gauge\n"), "%s", text);
    cr_assert (strstr (text, "llmrt_circuit_state{circuit=\"test\"} 1\n"), "%s", text);
    cr_assert (strstr (text, "# TYPE llmrt_circuit_transitions_total counter\n"));
    free (text);
    json_decref (snapshot);

    //  Half-open shows as 2.
    cm_breaker_permit_t probe;
    cm_breaker_acquire (breaker, 100, &probe, NULL);
    snapshot = cm_metrics_snapshot (metrics);
    cr_assert_eq (s_value (snapshot, "llmrt_circuit_state", state), CM_BREAKER_HALF_OPEN);
    json_decref (snapshot);
    cm_breaker_release (breaker, probe);

    cm_metrics_destroy (&metrics);
    cm_breaker_destroy (&breaker);
}
