/*  test_cm_ratelimit.c: the GCRA limiter, with time passed in (µs), so
    every boundary is checked exactly and nothing sleeps. */
#include <criterion/criterion.h>
#include <pthread.h>
#include <stdatomic.h>
#include "cm_ratelimit.h"

#define S_SECOND 1000000 //  µs

Test (cm_ratelimit, walkthrough)
{
    //  10 requests a second, bursts of 3, and a table of up to 100 keys.
    cm_ratelimit_t *limiter = cm_ratelimit_new (10, 3, 100);
    cm_ratelimit_result_t result;
    int64_t now = 5 * S_SECOND; //  any clock: the caller's microseconds

    //  The shared bucket (key NULL): a burst of 3 passes at once...
    for (int i = 0; i < 3; i++) {
        cr_assert_eq (cm_ratelimit_take (limiter, NULL, now, &result),
                      CM_RATELIMIT_ALLOWED);
        cr_assert_eq (result.remaining, 2 - i);
    }
    //  ...the 4th is refused, and told when to come back: one interval
    //  (100 ms) later. The whole burst is back 300 ms from now.
    cr_assert_eq (cm_ratelimit_take (limiter, NULL, now, &result), CM_RATELIMIT_REJECTED);
    cr_assert_eq (result.remaining, 0);
    cr_assert_eq (result.retry_after_us, 100000);
    cr_assert_eq (result.reset_us, 300000);
    //  For a Retry-After header: whole seconds, rounded up.
    cr_assert_eq (cm_ratelimit_seconds (result.retry_after_us), 1);
    cr_assert_eq (cm_ratelimit_take (limiter, NULL, now + result.retry_after_us, NULL),
                  CM_RATELIMIT_ALLOWED);

    //  Each key has its own bucket.
    cr_assert_eq (cm_ratelimit_take (limiter, "alice", now, NULL), CM_RATELIMIT_ALLOWED);
    cr_assert_eq (cm_ratelimit_take (limiter, "bob", now, NULL), CM_RATELIMIT_ALLOWED);
    cr_assert_eq (cm_ratelimit_keys (limiter), 2);

    //  A peek tells what a take would say, and counts nothing.
    cr_assert_eq (cm_ratelimit_peek (limiter, "alice", now, &result),
                  CM_RATELIMIT_ALLOWED);
    cr_assert_eq (result.remaining, 1);
    cr_assert_eq (cm_ratelimit_peek (limiter, "alice", now, &result),
                  CM_RATELIMIT_ALLOWED);
    cr_assert_eq (result.remaining, 1);

    //  For the IETF RateLimit-Policy header: a burst of 3 every 0.3 s,
    //  rounded up to 1 s.
    cr_assert_eq (cm_ratelimit_window_s (limiter), 1);
    cm_ratelimit_destroy (&limiter);
    cr_assert_null (limiter);
}

Test (cm_ratelimit, admits_exactly_the_burst_then_exactly_the_rate)
{
    //  4 a second (one every 250 ms), bursts of 5.
    cm_ratelimit_t *limiter = cm_ratelimit_new (4, 5, 16);
    const char *keys[] = {NULL, "k"};
    for (size_t k = 0; k < 2; k++) {
        int64_t t0 = 1000 * S_SECOND;
        int passed = 0;
        for (int i = 0; i < 20; i++)
            passed +=
                cm_ratelimit_take (limiter, keys[k], t0, NULL) == CM_RATELIMIT_ALLOWED;
        cr_assert_eq (passed, 5, "%s: a burst of 5 at once",
                      keys[k] ? keys[k] : "shared");
        //  Then one each 250 ms, to the microsecond.
        for (int step = 1; step <= 40; step++) {
            int64_t due = t0 + step * 250000;
            cr_assert_eq (cm_ratelimit_take (limiter, keys[k], due - 1, NULL),
                          CM_RATELIMIT_REJECTED, "step %d: 1 µs early", step);
            cr_assert_eq (cm_ratelimit_take (limiter, keys[k], due, NULL),
                          CM_RATELIMIT_ALLOWED, "step %d: on time", step);
            cr_assert_eq (cm_ratelimit_take (limiter, keys[k], due, NULL),
                          CM_RATELIMIT_REJECTED, "step %d: only one", step);
        }
    }
    cm_ratelimit_destroy (&limiter);
}

Test (cm_ratelimit, idle_time_refills_the_burst_but_never_beyond)
{
    cm_ratelimit_t *limiter = cm_ratelimit_new (10, 3, 0);
    int64_t now = 0;
    for (int i = 0; i < 3; i++)
        cm_ratelimit_take (limiter, NULL, now, NULL);
    //  Idle for an hour: still a burst of 3, not 36000.
    now += 3600LL * S_SECOND;
    int passed = 0;
    for (int i = 0; i < 10; i++)
        passed += cm_ratelimit_take (limiter, NULL, now, NULL) == CM_RATELIMIT_ALLOWED;
    cr_assert_eq (passed, 3);
    //  Half refilled: 150 ms is one and a half intervals: one request.
    cm_ratelimit_result_t result;
    cr_assert_eq (cm_ratelimit_peek (limiter, NULL, now + 150000, &result),
                  CM_RATELIMIT_ALLOWED);
    cr_assert_eq (result.remaining, 0, "taking it leaves half a request");
    cr_assert_eq (result.reset_us, 250000, "then 2.5 intervals to a whole burst");
    cm_ratelimit_destroy (&limiter);
}

Test (cm_ratelimit, retry_after_is_never_early)
{
    //  Rates whose interval is not a whole number of microseconds (3/s is
    //  333333.33 µs; 7/s is 142857.14 µs), and a fast one.
    const double rates[] = {3, 7, 0.5, 0.3, 1000, 123456.7};
    for (size_t r = 0; r < sizeof rates / sizeof *rates; r++) {
        cm_ratelimit_t *limiter = cm_ratelimit_new (rates[r], 2, 4);
        int64_t now = 77 * S_SECOND + 123;
        for (int round = 0; round < 50; round++) {
            cm_ratelimit_result_t result;
            while (cm_ratelimit_take (limiter, "k", now, &result) == CM_RATELIMIT_ALLOWED)
                ;
            cr_assert_gt (result.retry_after_us, 0);
            int64_t retry = result.retry_after_us;
            cr_assert_eq (cm_ratelimit_peek (limiter, "k", now + retry - 1, NULL),
                          CM_RATELIMIT_REJECTED, "rate %g: 1 µs before retry_after",
                          rates[r]);
            cr_assert_eq (cm_ratelimit_peek (limiter, "k", now + retry, NULL),
                          CM_RATELIMIT_ALLOWED, "rate %g: at retry_after", rates[r]);
            //  Whole seconds for the header: never earlier either.
            int64_t seconds = cm_ratelimit_seconds (retry);
            cr_assert_geq (seconds * S_SECOND, retry);
            cr_assert_lt ((seconds - 1) * S_SECOND, retry);
            now += retry;
        }
        cm_ratelimit_destroy (&limiter);
    }
}

Test (cm_ratelimit, fractional_rate)
{
    //  One request every two seconds, bursts of 1.
    cm_ratelimit_t *limiter = cm_ratelimit_new (0.5, 1, 0);
    cm_ratelimit_result_t result;
    cr_assert_eq (cm_ratelimit_take (limiter, NULL, 0, NULL), CM_RATELIMIT_ALLOWED);
    cr_assert_eq (cm_ratelimit_take (limiter, NULL, 1999999, &result),
                  CM_RATELIMIT_REJECTED);
    cr_assert_eq (result.retry_after_us, 1);
    cr_assert_eq (cm_ratelimit_take (limiter, NULL, 2 * S_SECOND, NULL),
                  CM_RATELIMIT_ALLOWED);
    cr_assert_eq (cm_ratelimit_window_s (limiter), 2);
    cm_ratelimit_destroy (&limiter);
}

Test (cm_ratelimit, high_rates_keep_sub_millisecond_precision)
{
    //  100000/s: one every 10 µs. Millisecond time could not say this.
    cm_ratelimit_t *limiter = cm_ratelimit_new (100000, 1, 0);
    int64_t now = 0;
    int passed = 0;
    for (int us = 0; us < 1000; us++)
        passed +=
            cm_ratelimit_take (limiter, NULL, now + us, NULL) == CM_RATELIMIT_ALLOWED;
    cr_assert_eq (passed, 100, "1 ms at 100k/s is 100 requests");
    cm_ratelimit_destroy (&limiter);
}

Test (cm_ratelimit, rate_zero_is_unlimited)
{
    cm_ratelimit_t *limiter = cm_ratelimit_new (0, 1, 8);
    cr_assert (cm_ratelimit_unlimited (limiter));
    cm_ratelimit_result_t result;
    for (int i = 0; i < 100000; i++) {
        cr_assert_eq (cm_ratelimit_take (limiter, i % 2 ? "k" : NULL, 0, &result),
                      CM_RATELIMIT_ALLOWED);
        cr_assert_eq (result.retry_after_us, 0);
    }
    cr_assert_eq (result.remaining, INT64_MAX);
    cr_assert_eq (cm_ratelimit_keys (limiter), 0, "an unlimited limiter keeps no keys");
    cr_assert_eq (cm_ratelimit_window_s (limiter), 0);
    cm_ratelimit_destroy (&limiter);
}

Test (cm_ratelimit, keys_are_independent)
{
    cm_ratelimit_t *limiter = cm_ratelimit_new (1, 2, 64);
    const char *keys[] = {"key-a", "key-b", "key-c",
                          "a-much-longer-key-of-some-client-"
                          "that-goes-on-and-on-0123456789"};
    for (size_t k = 0; k < 4; k++) {
        cr_assert_eq (cm_ratelimit_take (limiter, keys[k], 0, NULL),
                      CM_RATELIMIT_ALLOWED);
        cr_assert_eq (cm_ratelimit_take (limiter, keys[k], 0, NULL),
                      CM_RATELIMIT_ALLOWED);
        cr_assert_eq (cm_ratelimit_take (limiter, keys[k], 0, NULL),
                      CM_RATELIMIT_REJECTED);
    }
    //  The shared bucket is separate from every key.
    cr_assert_eq (cm_ratelimit_take (limiter, NULL, 0, NULL), CM_RATELIMIT_ALLOWED);
    cr_assert_eq (cm_ratelimit_keys (limiter), 4);
    cm_ratelimit_destroy (&limiter);
}

Test (cm_ratelimit, lru_eviction_bounds_memory_and_drops_the_least_recent)
{
    //  Room for 4 keys; each has a burst of 1 and a slow rate, so a key that
    //  is remembered is refused, and one that was forgotten passes again.
    cm_ratelimit_t *limiter = cm_ratelimit_new (0.001, 1, 4);
    const char *keys[] = {"a", "b", "c", "d"};
    for (size_t k = 0; k < 4; k++)
        cr_assert_eq (cm_ratelimit_take (limiter, keys[k], 0, NULL),
                      CM_RATELIMIT_ALLOWED);
    //  "a" is used again (refused, but used): "b" is now the least recent.
    cr_assert_eq (cm_ratelimit_take (limiter, "a", 1, NULL), CM_RATELIMIT_REJECTED);
    cr_assert_eq (cm_ratelimit_take (limiter, "e", 2, NULL), CM_RATELIMIT_ALLOWED);
    cr_assert_eq (cm_ratelimit_keys (limiter), 4);
    cr_assert_eq (cm_ratelimit_evictions (limiter), 1);
    //  A peek neither adds a key nor refreshes one.
    cr_assert_eq (cm_ratelimit_peek (limiter, "b", 3, NULL), CM_RATELIMIT_ALLOWED);
    cr_assert_eq (cm_ratelimit_evictions (limiter), 1);
    //  Remembered: a, c, d, e are refused.
    cr_assert_eq (cm_ratelimit_take (limiter, "a", 4, NULL), CM_RATELIMIT_REJECTED);
    cr_assert_eq (cm_ratelimit_take (limiter, "c", 4, NULL), CM_RATELIMIT_REJECTED);
    cr_assert_eq (cm_ratelimit_take (limiter, "d", 4, NULL), CM_RATELIMIT_REJECTED);
    cr_assert_eq (cm_ratelimit_take (limiter, "e", 4, NULL), CM_RATELIMIT_REJECTED);
    //  Forgotten: "b" starts fresh (the documented price of bounded
    //  memory), and its return evicts the least recent, "a".
    cr_assert_eq (cm_ratelimit_take (limiter, "b", 5, NULL), CM_RATELIMIT_ALLOWED);
    cr_assert_eq (cm_ratelimit_evictions (limiter), 2);
    cr_assert_eq (cm_ratelimit_take (limiter, "a", 6, NULL), CM_RATELIMIT_ALLOWED);
    cr_assert_eq (cm_ratelimit_keys (limiter), 4);
    cm_ratelimit_destroy (&limiter);
}

Test (cm_ratelimit, a_large_table_never_holds_more_than_max_keys)
{
    //  Large enough to be striped: the stripes' sizes add up to max_keys.
    const size_t max_keys = 1000;
    cm_ratelimit_t *limiter = cm_ratelimit_new (1, 1, max_keys);
    char key[32];
    for (int i = 0; i < 20000; i++) {
        snprintf (key, sizeof key, "client-%d", i);
        cr_assert_eq (cm_ratelimit_take (limiter, key, 0, NULL), CM_RATELIMIT_ALLOWED);
        cr_assert_leq (cm_ratelimit_keys (limiter), max_keys);
    }
    cr_assert_eq (cm_ratelimit_keys (limiter), max_keys, "every slot used");
    cr_assert_eq (cm_ratelimit_evictions (limiter), 20000 - max_keys);
    //  The most recent key is still known.
    cr_assert_eq (cm_ratelimit_take (limiter, "client-19999", 0, NULL),
                  CM_RATELIMIT_REJECTED);
    cm_ratelimit_destroy (&limiter);
}

Test (cm_ratelimit, undo_gives_the_request_back)
{
    cm_ratelimit_t *limiter = cm_ratelimit_new (1, 2, 8);
    const char *keys[] = {NULL, "k"};
    for (size_t k = 0; k < 2; k++) {
        cm_ratelimit_result_t first, second, third;
        cm_ratelimit_take (limiter, keys[k], 0, &first);
        cm_ratelimit_take (limiter, keys[k], 0, &second);
        cr_assert_eq (cm_ratelimit_take (limiter, keys[k], 0, &third),
                      CM_RATELIMIT_REJECTED);
        //  Undoing a refusal changes nothing; undoing the last pass frees it.
        cm_ratelimit_undo (limiter, keys[k], &third);
        cm_ratelimit_undo (limiter, keys[k], &second);
        cr_assert_eq (cm_ratelimit_take (limiter, keys[k], 0, &second),
                      CM_RATELIMIT_ALLOWED);
        //  Once someone took since, an old result undoes nothing: never
        //  more than the limit passes.
        cm_ratelimit_undo (limiter, keys[k], &first);
        cr_assert_eq (cm_ratelimit_take (limiter, keys[k], 0, NULL),
                      CM_RATELIMIT_REJECTED);
    }
    cm_ratelimit_destroy (&limiter);
}

//  --- many threads ---------------------------------------------------------

typedef struct {
    cm_ratelimit_t *limiter; //  shared
    const char *key;         //  shared bucket when NULL
    atomic_int *go;          //  start line
    int attempts;            //  takes per thread
    int passed;              //  result
    bool undo_half;          //  give back every other pass (then take again)
} s_hammer_t;

static void *
s_hammer (void *arg)
{
    s_hammer_t *self = arg;
    while (!atomic_load (self->go))
        ;
    for (int i = 0; i < self->attempts; i++) {
        cm_ratelimit_result_t result;
        if (cm_ratelimit_take (self->limiter, self->key, 42 * S_SECOND, &result) ==
            CM_RATELIMIT_ALLOWED) {
            if (self->undo_half && i % 2)
                cm_ratelimit_undo (self->limiter, self->key, &result);
            else
                self->passed++;
        }
    }
    return NULL;
}

static int
s_hammer_run (cm_ratelimit_t *limiter, const char *key, bool undo_half)
{
    enum { THREADS = 8 };
    pthread_t threads[THREADS];
    s_hammer_t hammers[THREADS];
    atomic_int go = 0;
    for (int i = 0; i < THREADS; i++) {
        hammers[i] = (s_hammer_t){limiter, key, &go, 20000, 0, undo_half};
        cr_assert_eq (pthread_create (&threads[i], NULL, s_hammer, &hammers[i]), 0);
    }
    atomic_store (&go, 1);
    int passed = 0;
    for (int i = 0; i < THREADS; i++) {
        pthread_join (threads[i], NULL);
        passed += hammers[i].passed;
    }
    return passed;
}

Test (cm_ratelimit, eight_threads_on_one_key_never_pass_more_than_the_burst)
{
    //  Time stands still, so exactly `burst` requests may pass, however the
    //  threads interleave: the shared bucket (compare-and-swap) and a key
    //  (stripe mutex).
    for (int round = 0; round < 5; round++) {
        cm_ratelimit_t *limiter = cm_ratelimit_new (10, 1000, 1024);
        cr_assert_eq (s_hammer_run (limiter, NULL, false), 1000);
        cr_assert_eq (s_hammer_run (limiter, "hot", false), 1000);
        cm_ratelimit_destroy (&limiter);
    }
}

Test (cm_ratelimit, undo_under_contention_never_lets_more_through)
{
    //  Undo races with other takes: a lost undo costs a request, never
    //  adds one.
    for (int round = 0; round < 5; round++) {
        cm_ratelimit_t *limiter = cm_ratelimit_new (10, 1000, 1024);
        int shared = s_hammer_run (limiter, NULL, true);
        int keyed = s_hammer_run (limiter, "hot", true);
        cr_assert_leq (shared, 1000);
        cr_assert_leq (keyed, 1000);
        cr_assert_gt (shared, 0);
        cm_ratelimit_destroy (&limiter);
    }
}
