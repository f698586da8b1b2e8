/*  test_cm_queue.c: bounded concurrency, a bounded FIFO line, expiry and
    cancellation of waiting tasks. */
#include <criterion/criterion.h>
#include <pthread.h>
#include <stdatomic.h>
#include <unistd.h>
#include "cm_queue.h"

typedef struct {
    atomic_int running;     //  tasks inside run now
    atomic_int max_running; //  highest seen
    atomic_int ran;         //  tasks that ran
    atomic_int dropped[3];  //  by reason
    atomic_bool release;    //  let running tasks finish
    int order[64];          //  run order of task numbers
    atomic_int order_len;
} s_state_t;

static void
s_run (void *task, void *arg)
{
    s_state_t *state = arg;
    int now = atomic_fetch_add (&state->running, 1) + 1;
    int max = atomic_load (&state->max_running);
    while (now > max && !atomic_compare_exchange_weak (&state->max_running, &max, now))
        ;
    state->order[atomic_fetch_add (&state->order_len, 1)] = (int) (intptr_t) task;
    while (!atomic_load (&state->release))
        usleep (1000);
    atomic_fetch_sub (&state->running, 1);
    atomic_fetch_add (&state->ran, 1);
}

static void
s_drop (void *task, cm_queue_drop_t why, void *arg)
{
    (void) task;
    s_state_t *state = arg;
    atomic_fetch_add (&state->dropped[why], 1);
}

static void
s_wait_for (atomic_int *value, int target)
{
    for (int i = 0; i < 5000 && atomic_load (value) < target; i++)
        usleep (1000);
    cr_assert_geq (atomic_load (value), target);
}

Test (cm_queue, walkthrough_bounded_then_full)
{
    s_state_t state = {0};
    cm_queue_t *queue = cm_queue_new ("test", 2, 3, s_run, s_drop, &state);
    char id[16];
    for (int i = 0; i < 5; i++) {
        snprintf (id, sizeof id, "t%d", i);
        cr_assert_eq (cm_queue_submit (queue, id, (void *) (intptr_t) i, 0),
                      CM_QUEUE_ACCEPTED);
    }
    //  Two running, three waiting: the sixth is refused at once.
    cr_assert_eq (cm_queue_submit (queue, "t5", (void *) 5, 0), CM_QUEUE_FULL);
    s_wait_for (&state.running, 2);
    cm_queue_stats_t stats;
    cm_queue_stats (queue, &stats);
    cr_assert_eq (stats.active, 2);
    cr_assert_eq (stats.pending, 3);
    cr_assert_eq (stats.rejected, 1);
    atomic_store (&state.release, true);
    s_wait_for (&state.ran, 5);
    cr_assert_eq (atomic_load (&state.max_running), 2);
    cm_queue_destroy (&queue);
    cr_assert_null (queue);
}

Test (cm_queue, runs_in_fifo_order)
{
    s_state_t state = {0};
    atomic_store (&state.release, true);
    cm_queue_t *queue = cm_queue_new ("fifo", 1, 50, s_run, s_drop, &state);
    for (int i = 0; i < 20; i++)
        cr_assert_eq (cm_queue_submit (queue, "x", (void *) (intptr_t) i, 0),
                      CM_QUEUE_ACCEPTED);
    s_wait_for (&state.ran, 20);
    for (int i = 0; i < 20; i++)
        cr_assert_eq (state.order[i], i);
    cm_queue_destroy (&queue);
}

Test (cm_queue, waiting_task_past_deadline_is_dropped)
{
    s_state_t state = {0};
    cm_queue_t *queue = cm_queue_new ("expire", 1, 5, s_run, s_drop, &state);
    cm_queue_submit (queue, "a", (void *) 0, 0);
    s_wait_for (&state.running, 1);
    cm_queue_submit (queue, "b", (void *) 1, 1000);
    cm_queue_submit (queue, "c", (void *) 2, 5000);
    cr_assert_eq (cm_queue_expire (queue, 2000), 1);
    cr_assert_eq (atomic_load (&state.dropped[CM_QUEUE_DROP_TIMEOUT]), 1);
    cm_queue_stats_t stats;
    cm_queue_stats (queue, &stats);
    cr_assert_eq (stats.pending, 1);
    cr_assert_eq (stats.timed_out, 1);
    //  "c" also has a deadline in the past by the wall clock: dropped on pickup.
    atomic_store (&state.release, true);
    s_wait_for (&state.ran, 1);
    cm_queue_destroy (&queue);
    cr_assert_eq (atomic_load (&state.dropped[CM_QUEUE_DROP_TIMEOUT]), 2);
}

Test (cm_queue, cancel_removes_a_waiting_task)
{
    s_state_t state = {0};
    cm_queue_t *queue = cm_queue_new ("cancel", 1, 5, s_run, s_drop, &state);
    cm_queue_submit (queue, "a", (void *) 0, 0);
    s_wait_for (&state.running, 1);
    cm_queue_submit (queue, "b", (void *) 1, 0);
    cr_assert (cm_queue_cancel (queue, "b"));
    cr_assert_not (cm_queue_cancel (queue, "b"));
    cr_assert_not (cm_queue_cancel (queue, "a"), "a running task is not cancelled here");
    cr_assert_eq (atomic_load (&state.dropped[CM_QUEUE_DROP_CANCELLED]), 1);
    atomic_store (&state.release, true);
    cm_queue_destroy (&queue);
    cr_assert_eq (atomic_load (&state.ran), 1);
}

Test (cm_queue, destroy_drops_waiting_tasks)
{
    s_state_t state = {0};
    cm_queue_t *queue = cm_queue_new ("shutdown", 1, 5, s_run, s_drop, &state);
    cm_queue_submit (queue, "a", (void *) 0, 0);
    s_wait_for (&state.running, 1);
    cm_queue_submit (queue, "b", (void *) 1, 0);
    cm_queue_submit (queue, "c", (void *) 2, 0);
    atomic_store (&state.release, true);
    cm_queue_destroy (&queue);
    cr_assert_eq (atomic_load (&state.ran) +
                      atomic_load (&state.dropped[CM_QUEUE_DROP_SHUTDOWN]),
                  3);
}
