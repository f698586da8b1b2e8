/*  cm_queue.h: bounded-concurrency task queue (the seed's AsyncQueue).

    At most `concurrency` tasks run at once, each on one of the queue's own
    threads; at most `max_pending` more wait in FIFO order. A submit beyond
    that is refused at once (CM_QUEUE_FULL): the caller answers 429, the line
    never grows without bound. A waiting task whose deadline passes is
    dropped (cm_queue_expire, called by the owner's loop, or when a thread
    picks it up) and handed to the drop callback; so is a waiting task that
    is cancelled by id, and every waiting task when the queue is destroyed.

    Threading: the queue owns `concurrency` runner threads, started by
    cm_queue_new and joined by cm_queue_close. submit, cancel, expire and
    stats may be called from any thread (one mutex guards the line and the
    counters; runners sleep on a condition variable). run and drop callbacks
    are called without the lock held: run on a runner thread, drop on the
    thread that caused the drop (the expiring, cancelling or closing one).
    A running task is never interrupted by the queue: cancellation of a
    running task is cooperative (cm_worker marks its call cancelled and the
    handler checks, which also aborts its upstream call). */
#ifndef CM_QUEUE_H_INCLUDED
#define CM_QUEUE_H_INCLUDED

#include "cm_common.h"

typedef struct cm_queue_s cm_queue_t;

typedef enum {
    CM_QUEUE_ACCEPTED = 0, //  the task will run (or be dropped) later
    CM_QUEUE_FULL,         //  concurrency and waiting line are both full
    CM_QUEUE_CLOSED,       //  the queue is shutting down
} cm_queue_result_t;

typedef enum {
    CM_QUEUE_DROP_TIMEOUT = 0, //  deadline passed while waiting
    CM_QUEUE_DROP_CANCELLED,   //  cancelled by id while waiting
    CM_QUEUE_DROP_SHUTDOWN,    //  queue destroyed while waiting
} cm_queue_drop_t;

//  How a task that ran ended, for the counters.
typedef enum {
    CM_QUEUE_COMPLETED = 0, //  did its work
    CM_QUEUE_FAILED,        //  ran, and failed (an upstream error, a 5xx)
    CM_QUEUE_ABORTED,       //  ran, and stopped early: cancelled or past deadline
} cm_queue_outcome_t;

typedef cm_queue_outcome_t (cm_queue_run_fn) (void *task, void *arg);
typedef void (cm_queue_drop_fn) (void *task, cm_queue_drop_t why, void *arg);

//  Create a queue with its threads. name is for logs (copied).
cm_queue_t *cm_queue_new (const char *name, size_t concurrency, size_t max_pending,
                          cm_queue_run_fn *run, cm_queue_drop_fn *drop, void *arg);
//  Close: refuse new tasks, drop waiting ones (CM_QUEUE_DROP_SHUTDOWN), wait
//  for running ones to return and join the threads. Other threads may still
//  call stats, expire and cancel on a closed queue. Idempotent.
void cm_queue_close (cm_queue_t *self);
//  Close, then free. NULL-safe; nulls the pointer.
void cm_queue_destroy (cm_queue_t **self_p);

//  Submit a task; id (copied) lets cm_queue_cancel find it; deadline_ms is
//  wall-clock ms since the epoch, 0 for none.
cm_queue_result_t cm_queue_submit (cm_queue_t *self, const char *id, void *task,
                                   int64_t deadline_ms);
//  Remove a waiting task by id and drop it as cancelled. Returns true when
//  it was waiting; false when unknown or already running.
bool cm_queue_cancel (cm_queue_t *self, const char *id);
//  Drop every waiting task whose deadline is before now_ms. Returns how many.
size_t cm_queue_expire (cm_queue_t *self, int64_t now_ms);

//  Snapshot of the queue's state.
typedef struct {
    size_t concurrency; //  limit of running tasks
    size_t max_pending; //  limit of waiting tasks
    size_t active;      //  running now
    size_t pending;     //  waiting now
    uint64_t completed; //  tasks that ran to the end
    uint64_t failed;    //  tasks that ran and failed
    uint64_t aborted;   //  tasks that ran and stopped early (cancel, deadline)
    uint64_t rejected;  //  submits refused as full
    uint64_t timed_out; //  dropped waiting past the deadline
    uint64_t cancelled; //  dropped by cancel while waiting
} cm_queue_stats_t;
void cm_queue_stats (cm_queue_t *self, cm_queue_stats_t *stats);

//  Publish this queue in a metrics registry (cm_metrics.h) under the label
//  queue="<name>": gauges llmrt_queue_depth, llmrt_queue_active,
//  llmrt_queue_concurrency, llmrt_queue_max_pending; counter
//  llmrt_queue_tasks_total{outcome=completed|failed|aborted|rejected|
//  timed_out|cancelled}; histograms llmrt_queue_wait_seconds (submit to
//  start) and llmrt_queue_run_seconds (start to end). Call once, before
//  tasks are submitted. The registry must outlive the queue (destroying
//  the queue removes its collector). (In
//  cm_queue_metrics.c, so programs without metrics do not link them.)
struct cm_metrics_s;
void cm_queue_attach_metrics (cm_queue_t *self, struct cm_metrics_s *metrics);

//  Hook for cm_queue_attach_metrics: fn is called on the runner thread with
//  the seconds a task waited, then the seconds it ran. The queue owns arg
//  and frees it with free_fn (may be NULL) when destroyed.
typedef void (cm_queue_timing_fn) (void *arg, double waited, double ran);
void cm_queue_set_timing (cm_queue_t *self, cm_queue_timing_fn *fn, void *arg,
                          void (*free_fn) (void *arg));
//  The queue's name (borrowed).
const char *cm_queue_name (cm_queue_t *self);

#endif
