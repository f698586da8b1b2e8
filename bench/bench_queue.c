/*  bench_queue: submit-to-start overhead of cm_queue, in two regimes:
    an idle runner that must be woken (the usual case at low load), and a
    busy queue whose runners pick the next task from the line. Prints the
    median and p99 in microseconds. A figure, not a test. */
#include "cm_queue.h"
#include <stdatomic.h>
#include <time.h>
#include <unistd.h>

#define S_SAMPLES 20000

typedef struct {
    struct timespec submitted; //  set before submit
    double latency_us;         //  submit -> start
    atomic_bool started;       //  the runner has begun it
} s_task_t;

static double
s_us (const struct timespec *a, const struct timespec *b)
{
    return (double) (b->tv_sec - a->tv_sec) * 1e6 +
           (double) (b->tv_nsec - a->tv_nsec) / 1e3;
}

static cm_queue_outcome_t
s_run (void *task, void *arg)
{
    (void) arg;
    s_task_t *t = task;
    struct timespec now;
    clock_gettime (CLOCK_MONOTONIC, &now);
    t->latency_us = s_us (&t->submitted, &now);
    atomic_store (&t->started, true);
    return CM_QUEUE_COMPLETED;
}

static void
s_drop (void *task, cm_queue_drop_t why, void *arg)
{
    (void) task;
    (void) why;
    (void) arg;
}

static int
s_compare (const void *a, const void *b)
{
    double x = *(const double *) a, y = *(const double *) b;
    return x < y ? -1 : x > y;
}

static void
s_report (const char *what, s_task_t *tasks, size_t n)
{
    double *values = cm_calloc (n, sizeof *values);
    for (size_t i = 0; i < n; i++)
        values[i] = tasks[i].latency_us;
    qsort (values, n, sizeof *values, s_compare);
    printf ("%-44s median %7.2f us   p99 %8.2f us   (%zu tasks)\n", what, values[n / 2],
            values[n * 99 / 100], n);
    free (values);
}

int
main (void)
{
    s_task_t *tasks = cm_calloc (S_SAMPLES, sizeof *tasks);

    //  One task at a time, the next submitted as soon as the last started:
    //  the runner is between tasks (spinning) when it arrives.
    cm_queue_t *queue = cm_queue_new ("bench", 1, 16, s_run, s_drop, NULL);
    for (int pass = 0; pass < 2; pass++) {
        size_t n = pass ? S_SAMPLES / 4 : S_SAMPLES;
        for (size_t i = 0; i < n; i++) {
            //  Second pass: pause so the runner is asleep on its condition
            //  variable and must be woken (the cost at low load).
            if (pass)
                usleep (100);
            clock_gettime (CLOCK_MONOTONIC, &tasks[i].submitted);
            cm_queue_submit (queue, "t", &tasks[i], 0);
            while (!atomic_load (&tasks[i].started))
                ;
            atomic_store (&tasks[i].started, false);
        }
        s_report (pass ? "submit -> start, runner asleep (futex wake)"
                       : "submit -> start, tasks back to back",
                  tasks, n);
    }
    cm_queue_destroy (&queue);

    //  Busy: a full line; each start is the runner taking the next task.
    memset (tasks, 0, S_SAMPLES * sizeof *tasks);
    queue = cm_queue_new ("bench", 1, S_SAMPLES, s_run, s_drop, NULL);
    for (size_t i = 0; i < S_SAMPLES; i++) {
        clock_gettime (CLOCK_MONOTONIC, &tasks[i].submitted);
        cm_queue_submit (queue, "t", &tasks[i], 0);
    }
    while (!atomic_load (&tasks[S_SAMPLES - 1].started))
        usleep (100);
    //  Here latency includes waiting behind earlier tasks; report the
    //  per-task dequeue cost instead: the spacing of consecutive starts.
    struct timespec first = tasks[0].submitted;
    double total_us =
        tasks[S_SAMPLES - 1].latency_us + s_us (&first, &tasks[S_SAMPLES - 1].submitted);
    printf ("%-44s %7.3f us per task (%d tasks in %.1f ms)\n",
            "submit + dequeue + start, queue backlogged", total_us / S_SAMPLES, S_SAMPLES,
            total_us / 1000);
    cm_queue_destroy (&queue);
    free (tasks);
    return 0;
}
