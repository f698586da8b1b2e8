/*  cm_queue.h: bounded-concurrency task queue (the seed's AsyncQueue).

    At most `concurrency` tasks run at once, each on one of the queue's own
    threads; at most `max_pending` more wait in FIFO order. A submit beyond
    that is refused at once (CM_QUEUE_FULL): the caller answers 429, the line
    never grows without bound. A waiting task whose deadline passes is
    dropped (cm_queue_expire, called by the owner's loop, or when a thread
    picks it up) and handed to the drop callback; so is a waiting task that
    is cancelled by id, and every waiting task when the queue is destroyed.

    Threading: submit, cancel, expire and stats may be called from any
    thread; run and drop callbacks are called without the queue's lock held,
    run on a queue thread, drop on the thread that caused the drop. */
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

typedef void (cm_queue_run_fn) (void *task, void *arg);
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
    uint64_t rejected;  //  submits refused as full
    uint64_t timed_out; //  dropped waiting past the deadline
    uint64_t cancelled; //  dropped by cancel while waiting
} cm_queue_stats_t;
void cm_queue_stats (cm_queue_t *self, cm_queue_stats_t *stats);

#endif
