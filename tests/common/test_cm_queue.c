/*  test_cm_queue.c: bounded concurrency, a bounded FIFO line, expiry and
    cancellation of waiting tasks. */
#include <criterion/criterion.h>
#include <pthread.h>
#include <stdatomic.h>
#include <sched.h>
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

static cm_queue_outcome_t
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
    //  Task numbers 100.. fail, 200.. stop early: for the outcome counters.
    intptr_t n = (intptr_t) task;
    return n >= 200 ? CM_QUEUE_ABORTED : n >= 100 ? CM_QUEUE_FAILED : CM_QUEUE_COMPLETED;
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
    s_wait_for (&state.dropped[CM_QUEUE_DROP_TIMEOUT], 2);
    cm_queue_destroy (&queue);
    cr_assert_eq (atomic_load (&state.ran), 1);
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

Test (cm_queue, outcomes_are_counted)
{
    s_state_t state = {0};
    atomic_store (&state.release, true);
    cm_queue_t *queue = cm_queue_new ("outcomes", 1, 10, s_run, s_drop, &state);
    cm_queue_submit (queue, "a", (void *) 1, 0);
    cm_queue_submit (queue, "b", (void *) 100, 0);
    cm_queue_submit (queue, "c", (void *) 200, 0);
    s_wait_for (&state.ran, 3);
    //  The counters move just after run returns: poll for them.
    cm_queue_stats_t stats;
    for (int i = 0; i < 5000; i++) {
        cm_queue_stats (queue, &stats);
        if (stats.completed + stats.failed + stats.aborted == 3)
            break;
        usleep (1000);
    }
    cr_assert_eq (stats.completed, 1);
    cr_assert_eq (stats.failed, 1);
    cr_assert_eq (stats.aborted, 1);
    cm_queue_destroy (&queue);
}

//  --- stress: 100,000 tasks from 8 threads, none lost, none run twice -----

#define S_STRESS_THREADS 8
#define S_STRESS_PER     12500

typedef struct {
    cm_queue_t *queue;
    atomic_uchar *runs;     //  times each task ran
    atomic_int rejected;    //  submits refused (then retried)
    atomic_int done;        //  tasks that ran
    atomic_int running;     //  inside run now
    atomic_int max_running; //  highest seen
    int base;               //  first task number of a submitter
} s_stress_t;

static _Thread_local s_stress_t *s_stress;

static cm_queue_outcome_t
s_stress_run (void *task, void *arg)
{
    s_stress_t *stress = arg;
    int now = atomic_fetch_add (&stress->running, 1) + 1;
    int max = atomic_load (&stress->max_running);
    while (now > max && !atomic_compare_exchange_weak (&stress->max_running, &max, now))
        ;
    atomic_fetch_add (&stress->runs[(intptr_t) task], 1);
    atomic_fetch_sub (&stress->running, 1);
    atomic_fetch_add (&stress->done, 1);
    return CM_QUEUE_COMPLETED;
}

static void
s_stress_drop (void *task, cm_queue_drop_t why, void *arg)
{
    (void) task;
    (void) why;
    (void) arg;
    cr_assert_fail ("no task may be dropped in the stress test");
}

typedef struct {
    s_stress_t *stress;
    int base;
} s_submitter_t;

static void *
s_submitter (void *arg)
{
    s_submitter_t *submitter = arg;
    s_stress = submitter->stress;
    char id[24];
    for (int i = 0; i < S_STRESS_PER; i++) {
        intptr_t n = submitter->base + i;
        snprintf (id, sizeof id, "t%ld", (long) n);
        //  A full line is refused at once; the submitter backs off and
        //  tries again, as a client given 429 would.
        while (cm_queue_submit (s_stress->queue, id, (void *) n, 0) == CM_QUEUE_FULL) {
            atomic_fetch_add (&s_stress->rejected, 1);
            sched_yield ();
        }
    }
    return NULL;
}

Test (cm_queue, stress_100k_tasks_from_8_threads_none_lost_none_twice, .timeout = 120)
{
    s_stress_t stress = {0};
    int total = S_STRESS_THREADS * S_STRESS_PER;
    stress.runs = calloc ((size_t) total, sizeof *stress.runs);
    stress.queue = cm_queue_new ("stress", 4, 256, s_stress_run, s_stress_drop, &stress);
    pthread_t threads[S_STRESS_THREADS];
    s_submitter_t submitters[S_STRESS_THREADS];
    for (int t = 0; t < S_STRESS_THREADS; t++) {
        submitters[t] = (s_submitter_t){&stress, t * S_STRESS_PER};
        pthread_create (&threads[t], NULL, s_submitter, &submitters[t]);
    }
    for (int t = 0; t < S_STRESS_THREADS; t++)
        pthread_join (threads[t], NULL);
    //  The counters move just after the last run returns: poll for them.
    cm_queue_stats_t stats;
    for (int i = 0; i < 60000; i++) {
        cm_queue_stats (stress.queue, &stats);
        if (stats.completed == (uint64_t) total)
            break;
        usleep (1000);
    }
    cm_queue_destroy (&stress.queue);
    cr_assert_eq (atomic_load (&stress.done), total);
    for (int i = 0; i < total; i++)
        cr_assert_eq (atomic_load (&stress.runs[i]), 1, "task %d ran %d times", i,
                      atomic_load (&stress.runs[i]));
    cr_assert_eq (stats.completed, (uint64_t) total);
    cr_assert_eq (stats.rejected, (uint64_t) atomic_load (&stress.rejected));
    cr_assert_leq (atomic_load (&stress.max_running), 4, "concurrency exceeded");
    free (stress.runs);
}
