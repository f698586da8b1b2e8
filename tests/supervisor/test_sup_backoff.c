/*  test_sup_backoff.c: restart delays, their cap and jitter, the reset after
    a stable run, and the crash window that makes the supervisor give up. */
#include <criterion/criterion.h>
#include "sup_backoff.h"

static const sup_backoff_policy_t s_policy = {
    .initial_ms = 100,
    .max_ms = 1000,
    .reset_ms = 5000,
    .max_crashes = 4,
    .window_ms = 60000,
};

Test (sup_backoff, walkthrough_crash_restart_then_give_up)
{
    sup_backoff_t *backoff = sup_backoff_new (&s_policy);
    int64_t now = 1000000, delay = -1;
    //  Started, crashed at once: restart after the initial delay (random 0
    //  means no jitter taken off).
    sup_backoff_started (backoff, now);
    cr_assert_eq (sup_backoff_exited (backoff, now + 10, 0, &delay), SUP_BACKOFF_RESTART);
    cr_assert_eq (delay, 100);
    cr_assert_eq (sup_backoff_crashes (backoff, now + 10), 1);
    //  Again and again: the delay doubles.
    sup_backoff_started (backoff, now + 110);
    cr_assert_eq (sup_backoff_exited (backoff, now + 120, 0, &delay),
                  SUP_BACKOFF_RESTART);
    cr_assert_eq (delay, 200);
    sup_backoff_started (backoff, now + 320);
    cr_assert_eq (sup_backoff_exited (backoff, now + 330, 0, &delay),
                  SUP_BACKOFF_RESTART);
    cr_assert_eq (delay, 400);
    //  The fourth exit within the window: give up.
    sup_backoff_started (backoff, now + 730);
    cr_assert_eq (sup_backoff_exited (backoff, now + 740, 0, &delay),
                  SUP_BACKOFF_GIVE_UP);
    cr_assert_eq (sup_backoff_crashes (backoff, now + 740), 4);
    sup_backoff_destroy (&backoff);
    cr_assert_null (backoff);
    sup_backoff_destroy (&backoff);
}

Test (sup_backoff, delay_grows_exponentially_then_is_capped)
{
    int64_t expected[] = {100, 200, 400, 800, 1000, 1000, 1000};
    for (unsigned attempt = 0; attempt < 7; attempt++)
        cr_assert_eq (sup_backoff_delay (&s_policy, attempt, 0), expected[attempt],
                      "attempt %u", attempt);
    //  Far past the cap there is no overflow.
    cr_assert_eq (sup_backoff_delay (&s_policy, 1000, 0), 1000);
    cr_assert_eq (sup_backoff_delay (&s_policy, UINT32_MAX, 0), 1000);
}

Test (sup_backoff, jitter_stays_within_half_of_the_base)
{
    uint32_t randoms[] = {0, 1, 7, 49, 50, 51, 99, 12345, 0x7fffffff, UINT32_MAX};
    for (unsigned attempt = 0; attempt < 8; attempt++) {
        int64_t base = sup_backoff_delay (&s_policy, attempt, 0);
        bool below_base = false;
        for (size_t i = 0; i < sizeof randoms / sizeof randoms[0]; i++) {
            int64_t delay = sup_backoff_delay (&s_policy, attempt, randoms[i]);
            cr_assert_geq (delay, (base + 1) / 2, "attempt %u random %u: %lld", attempt,
                           randoms[i], (long long) delay);
            cr_assert_leq (delay, base);
            cr_assert_leq (delay, s_policy.max_ms);
            if (delay < base)
                below_base = true;
        }
        cr_assert (below_base, "jitter never applied at attempt %u", attempt);
    }
    //  The whole range is reachable: random % (base / 2 + 1) is taken off.
    cr_assert_eq (sup_backoff_delay (&s_policy, 0, 50), 50);
    cr_assert_eq (sup_backoff_delay (&s_policy, 0, 51), 100);
}

Test (sup_backoff, tiny_delays_stay_positive)
{
    sup_backoff_policy_t policy = s_policy;
    policy.initial_ms = 1;
    policy.max_ms = 1;
    for (uint32_t r = 0; r < 10; r++)
        cr_assert_eq (sup_backoff_delay (&policy, 3, r), 1);
}

Test (sup_backoff, stable_run_resets_the_delay)
{
    sup_backoff_policy_t policy = s_policy;
    policy.max_crashes = 0;
    sup_backoff_t *backoff = sup_backoff_new (&policy);
    int64_t now = 0, delay;
    for (int i = 0; i < 3; i++) {
        sup_backoff_started (backoff, now);
        now += 10;
        sup_backoff_exited (backoff, now, 0, &delay);
        now += delay;
    }
    cr_assert_eq (delay, 400);
    cr_assert_eq (sup_backoff_attempt (backoff), 3);
    //  A run just short of reset_ms is not stable: the delay keeps growing.
    sup_backoff_started (backoff, now);
    now += s_policy.reset_ms - 1;
    sup_backoff_exited (backoff, now, 0, &delay);
    cr_assert_eq (delay, 800);
    //  A run of reset_ms is: back to the initial delay.
    sup_backoff_started (backoff, now);
    now += s_policy.reset_ms;
    cr_assert_eq (sup_backoff_exited (backoff, now, 0, &delay), SUP_BACKOFF_RESTART);
    cr_assert_eq (delay, 100);
    cr_assert_eq (sup_backoff_attempt (backoff), 1);
    sup_backoff_destroy (&backoff);
}

Test (sup_backoff, crashes_outside_the_window_are_forgotten)
{
    sup_backoff_t *backoff = sup_backoff_new (&s_policy);
    int64_t delay;
    //  Three crashes, then a long quiet spell: the window empties.
    for (int64_t t = 0; t < 3; t++) {
        sup_backoff_started (backoff, t * 100);
        cr_assert_eq (sup_backoff_exited (backoff, t * 100 + 1, 0, &delay),
                      SUP_BACKOFF_RESTART);
    }
    cr_assert_eq (sup_backoff_crashes (backoff, 1000), 3);
    int64_t later = 201 + s_policy.window_ms;
    cr_assert_eq (sup_backoff_crashes (backoff, later), 0);
    //  So three more are allowed before the limit of four in the window.
    for (int64_t t = 0; t < 3; t++) {
        sup_backoff_started (backoff, later + t * 10);
        cr_assert_eq (sup_backoff_exited (backoff, later + t * 10 + 1, 0, &delay),
                      SUP_BACKOFF_RESTART, "crash %lld", (long long) t);
    }
    sup_backoff_started (backoff, later + 100);
    cr_assert_eq (sup_backoff_exited (backoff, later + 101, 0, &delay),
                  SUP_BACKOFF_GIVE_UP);
    sup_backoff_destroy (&backoff);
}

Test (sup_backoff, window_slides_over_a_steady_crash_rate)
{
    //  One crash every 20 s against 4 in 60 s: at most 3 in any window, so
    //  the program is restarted for ever.
    sup_backoff_t *backoff = sup_backoff_new (&s_policy);
    int64_t delay;
    for (int64_t t = 0; t < 50; t++) {
        sup_backoff_started (backoff, t * 20000);
        cr_assert_eq (sup_backoff_exited (backoff, t * 20000 + 19000, 0, &delay),
                      SUP_BACKOFF_RESTART, "crash %lld", (long long) t);
        cr_assert_leq (sup_backoff_crashes (backoff, t * 20000 + 19000), 3);
    }
    sup_backoff_destroy (&backoff);
}

Test (sup_backoff, zero_max_crashes_never_gives_up)
{
    sup_backoff_policy_t policy = s_policy;
    policy.max_crashes = 0;
    sup_backoff_t *backoff = sup_backoff_new (&policy);
    int64_t delay;
    for (int64_t t = 0; t < 1000; t++) {
        sup_backoff_started (backoff, t);
        cr_assert_eq (sup_backoff_exited (backoff, t, 0, &delay), SUP_BACKOFF_RESTART);
    }
    cr_assert_eq (delay, policy.max_ms);
    sup_backoff_destroy (&backoff);
}

Test (sup_backoff, max_crashes_of_one_gives_up_at_the_first)
{
    sup_backoff_policy_t policy = s_policy;
    policy.max_crashes = 1;
    sup_backoff_t *backoff = sup_backoff_new (&policy);
    int64_t delay;
    sup_backoff_started (backoff, 0);
    cr_assert_eq (sup_backoff_exited (backoff, 99999, 0, &delay), SUP_BACKOFF_GIVE_UP);
    sup_backoff_destroy (&backoff);
}
