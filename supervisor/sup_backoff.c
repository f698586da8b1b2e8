/*  sup_backoff.c: see sup_backoff.h.

    The crash window is a ring holding the times of the last max_crashes
    exits: the limit is reached exactly when the ring is full and its oldest
    entry is still inside the window, so memory stays bounded however often
    a program crashes. */
#include "sup_backoff.h"

struct sup_backoff_s {
    sup_backoff_policy_t policy; //  limits, copied at creation
    unsigned attempt;            //  quick crashes since the last stable run
    int64_t started_ms;          //  when the current run began; -1 before any
    int64_t *ring;               //  times of the last max_crashes exits
    size_t ring_size;            //  capacity of ring (max_crashes, at least 1)
    size_t ring_used;            //  entries of ring in use
    size_t ring_next;            //  where the next exit time goes
};

//  Doubling stops here: 2^40 ms is decades, far past any cap.
#define SUP_BACKOFF_ATTEMPT_MAX 40

sup_backoff_t *
sup_backoff_new (const sup_backoff_policy_t *policy)
{
    assert (policy);
    assert (policy->initial_ms > 0 && policy->max_ms >= policy->initial_ms);
    assert (policy->reset_ms >= 0 && policy->max_crashes >= 0 && policy->window_ms > 0);
    sup_backoff_t *self = cm_calloc (1, sizeof *self);
    self->policy = *policy;
    self->started_ms = -1;
    self->ring_size = policy->max_crashes > 0 ? (size_t) policy->max_crashes : 1;
    self->ring = cm_calloc (self->ring_size, sizeof *self->ring);
    return self;
}

void
sup_backoff_destroy (sup_backoff_t **self_p)
{
    assert (self_p);
    sup_backoff_t *self = *self_p;
    if (self) {
        free (self->ring);
        free (self);
        *self_p = NULL;
    }
}

void
sup_backoff_started (sup_backoff_t *self, int64_t now_ms)
{
    assert (self);
    self->started_ms = now_ms;
}

sup_backoff_verdict_t
sup_backoff_exited (sup_backoff_t *self, int64_t now_ms, uint32_t random,
                    int64_t *delay_ms)
{
    assert (self && delay_ms);
    if (self->started_ms >= 0 && now_ms - self->started_ms >= self->policy.reset_ms)
        self->attempt = 0;
    self->started_ms = -1;

    self->ring[self->ring_next] = now_ms;
    self->ring_next = (self->ring_next + 1) % self->ring_size;
    if (self->ring_used < self->ring_size)
        self->ring_used++;
    if (self->policy.max_crashes > 0 &&
        sup_backoff_crashes (self, now_ms) >= (size_t) self->policy.max_crashes)
        return SUP_BACKOFF_GIVE_UP;

    *delay_ms = sup_backoff_delay (&self->policy, self->attempt, random);
    if (self->attempt < SUP_BACKOFF_ATTEMPT_MAX)
        self->attempt++;
    return SUP_BACKOFF_RESTART;
}

size_t
sup_backoff_crashes (sup_backoff_t *self, int64_t now_ms)
{
    assert (self);
    size_t count = 0;
    for (size_t i = 0; i < self->ring_used; i++)
        if (now_ms - self->ring[i] < self->policy.window_ms)
            count++;
    return count;
}

unsigned
sup_backoff_attempt (sup_backoff_t *self)
{
    assert (self);
    return self->attempt;
}

int64_t
sup_backoff_delay (const sup_backoff_policy_t *policy, unsigned attempt, uint32_t random)
{
    assert (policy && policy->initial_ms > 0);
    int64_t base = policy->initial_ms;
    for (unsigned i = 0; i < attempt && base < policy->max_ms; i++)
        base *= 2;
    if (base > policy->max_ms)
        base = policy->max_ms;
    //  Jitter takes off up to half: never longer than the cap, never so
    //  short that the back-off stops meaning anything.
    return base - (int64_t) (random % (uint64_t) (base / 2 + 1));
}
