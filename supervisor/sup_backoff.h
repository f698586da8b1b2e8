/*  sup_backoff.h: when to restart a crashed program, and when to give up.

    Pure arithmetic, one object per supervised instance. The delay before a
    restart grows exponentially from an initial value up to a cap, with
    jitter so that replicas that crash together do not restart in lock-step.
    A run that lasted at least the reset time counts as stable and brings the
    delay back to the initial value. Exits are also counted in a sliding
    window; too many of them in the window and the verdict is to give up.

    Nothing here reads a clock or a random source: every call takes now_ms
    and, where it needs one, a random value, so tests are exact. */
#ifndef SUP_BACKOFF_H_INCLUDED
#define SUP_BACKOFF_H_INCLUDED

#include "cm_common.h"

typedef struct sup_backoff_s sup_backoff_t;

//  The limits, in milliseconds (plain data, copied by sup_backoff_new).
typedef struct {
    int64_t initial_ms;  //  delay after the first quick crash (> 0)
    int64_t max_ms;      //  cap on the delay (>= initial_ms)
    int64_t reset_ms;    //  a run this long is stable: delay back to initial
    int64_t max_crashes; //  exits within window_ms that mean give up; 0: never
    int64_t window_ms;   //  width of the crash-counting window (> 0)
} sup_backoff_policy_t;

//  What to do about an exit.
typedef enum {
    SUP_BACKOFF_RESTART, //  restart after the delay given
    SUP_BACKOFF_GIVE_UP, //  too many crashes in the window: do not restart
} sup_backoff_verdict_t;

//  Create the state for one instance under policy (which must be sane:
//  asserted). The caller owns the result.
sup_backoff_t *sup_backoff_new (const sup_backoff_policy_t *policy);

//  Destroy; NULL-safe, nulls the pointer.
void sup_backoff_destroy (sup_backoff_t **self_p);

//  The instance was started at now_ms.
void sup_backoff_started (sup_backoff_t *self, int64_t now_ms);

//  The instance exited at now_ms. Counts the exit in the window and returns
//  the verdict; on SUP_BACKOFF_RESTART sets *delay_ms from random (any value
//  from the caller's random source).
sup_backoff_verdict_t sup_backoff_exited (sup_backoff_t *self, int64_t now_ms,
                                          uint32_t random, int64_t *delay_ms);

//  Exits counted in the window that ends at now_ms.
size_t sup_backoff_crashes (sup_backoff_t *self, int64_t now_ms);

//  Quick crashes since the last stable run (the exponent of the next delay).
unsigned sup_backoff_attempt (sup_backoff_t *self);

//  The delay for a given attempt (0 for the first restart): initial_ms
//  doubled attempt times, capped at max_ms, then reduced by jitter of up to
//  half, so the result lies in [ceil (base / 2), base]. random picks where.
int64_t sup_backoff_delay (const sup_backoff_policy_t *policy, unsigned attempt,
                           uint32_t random);

#endif
