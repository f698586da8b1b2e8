/*  cm_queue.c: see cm_queue.h. One mutex guards a FIFO list of waiting
    tasks; threads sleep on a condition variable. The lock is never held
    while a task runs or is dropped. */
#include "cm_queue.h"
#include "cm_log.h"
#include <pthread.h>
#include <stdatomic.h>
#include <time.h>

typedef struct s_item_s {
    char *id;               //  caller's id for cancel
    void *task;             //  caller's task
    int64_t deadline;       //  wall ms, 0 none
    struct timespec queued; //  when submitted (monotonic), for wait time
    struct s_item_s *next;  //  next newer waiting item
} s_item_t;

struct cm_queue_s {
    char *name;                   //  for logs
    cm_queue_run_fn *run;         //  runs a task
    cm_queue_drop_fn *drop;       //  disposes of a task that will not run
    void *arg;                    //  passed to run and drop
    pthread_mutex_t lock;         //  guards everything below
    pthread_cond_t wake;          //  signalled when work arrives or on shutdown
    s_item_t *head, *tail;        //  waiting FIFO
    cm_queue_stats_t stats;       //  counters and gauges
    bool closing;                 //  destroy has begun
    pthread_t *threads;           //  the runners
    size_t thread_count;          //  == concurrency
    cm_queue_timing_fn *timing;   //  wait/run time hook, or NULL
    void *timing_arg;             //  its argument (owned)
    void (*timing_free) (void *); //  frees timing_arg
    atomic_size_t waiting;        //  mirror of stats.pending, read unlocked by spinners
    size_t sleepers;              //  runners asleep on wake (guarded by lock)
};

static double
s_seconds_between (const struct timespec *from, const struct timespec *to)
{
    return (double) (to->tv_sec - from->tv_sec) +
           (double) (to->tv_nsec - from->tv_nsec) / 1e9;
}

static void *s_runner (void *arg);

cm_queue_t *
cm_queue_new (const char *name, size_t concurrency, size_t max_pending,
              cm_queue_run_fn *run, cm_queue_drop_fn *drop, void *arg)
{
    assert (name && run && drop && concurrency > 0);
    cm_queue_t *self = cm_calloc (1, sizeof *self);
    self->name = cm_strdup (name);
    self->run = run;
    self->drop = drop;
    self->arg = arg;
    self->stats.concurrency = concurrency;
    self->stats.max_pending = max_pending;
    pthread_mutex_init (&self->lock, NULL);
    pthread_cond_init (&self->wake, NULL);
    self->threads = cm_calloc (concurrency, sizeof (pthread_t));
    for (size_t i = 0; i < concurrency; i++) {
        if (pthread_create (&self->threads[i], NULL, s_runner, self))
            abort ();
        self->thread_count++;
    }
    return self;
}

static void
s_item_free (s_item_t *item)
{
    free (item->id);
    free (item);
}

void
cm_queue_close (cm_queue_t *self)
{
    assert (self);
    pthread_mutex_lock (&self->lock);
    if (self->closing) {
        pthread_mutex_unlock (&self->lock);
        return;
    }
    self->closing = true;
    s_item_t *waiting = self->head;
    self->head = self->tail = NULL;
    self->stats.pending = 0;
    atomic_store (&self->waiting, 0);
    pthread_cond_broadcast (&self->wake);
    pthread_mutex_unlock (&self->lock);
    while (waiting) {
        s_item_t *next = waiting->next;
        self->drop (waiting->task, CM_QUEUE_DROP_SHUTDOWN, self->arg);
        s_item_free (waiting);
        waiting = next;
    }
    for (size_t i = 0; i < self->thread_count; i++)
        pthread_join (self->threads[i], NULL);
    self->thread_count = 0;
}

void
cm_queue_destroy (cm_queue_t **self_p)
{
    assert (self_p);
    cm_queue_t *self = *self_p;
    if (!self)
        return;
    cm_queue_close (self);
    if (self->timing_free)
        self->timing_free (self->timing_arg);
    pthread_cond_destroy (&self->wake);
    pthread_mutex_destroy (&self->lock);
    free (self->threads);
    free (self->name);
    free (self);
    *self_p = NULL;
}

cm_queue_result_t
cm_queue_submit (cm_queue_t *self, const char *id, void *task, int64_t deadline_ms)
{
    assert (self && id);
    pthread_mutex_lock (&self->lock);
    if (self->closing) {
        pthread_mutex_unlock (&self->lock);
        return CM_QUEUE_CLOSED;
    }
    //  A task may wait only if a slot is free now or the line has room.
    size_t busy = self->stats.active + self->stats.pending;
    if (busy >= self->stats.concurrency + self->stats.max_pending) {
        self->stats.rejected++;
        pthread_mutex_unlock (&self->lock);
        return CM_QUEUE_FULL;
    }
    s_item_t *item = cm_malloc (sizeof *item);
    item->id = cm_strdup (id);
    item->task = task;
    item->deadline = deadline_ms;
    item->next = NULL;
    clock_gettime (CLOCK_MONOTONIC, &item->queued);
    if (self->tail)
        self->tail->next = item;
    else
        self->head = item;
    self->tail = item;
    self->stats.pending++;
    atomic_fetch_add (&self->waiting, 1);
    //  Only a sleeping runner needs the syscall; spinning ones see waiting.
    if (self->sleepers)
        pthread_cond_signal (&self->wake);
    pthread_mutex_unlock (&self->lock);
    return CM_QUEUE_ACCEPTED;
}

//  Unlink items matching (id) or (deadline before now) into a private list.
static s_item_t *
s_unlink (cm_queue_t *self, const char *id, int64_t now_ms)
{
    s_item_t *found = NULL, **found_tail = &found;
    s_item_t **link = &self->head, *prev = NULL;
    while (*link) {
        s_item_t *item = *link;
        bool match =
            id ? !strcmp (item->id, id) : (item->deadline && item->deadline <= now_ms);
        if (match) {
            *link = item->next;
            if (self->tail == item)
                self->tail = prev;
            item->next = NULL;
            *found_tail = item;
            found_tail = &item->next;
            self->stats.pending--;
            atomic_fetch_sub (&self->waiting, 1);
            if (id)
                break;
        } else {
            prev = item;
            link = &item->next;
        }
    }
    return found;
}

bool
cm_queue_cancel (cm_queue_t *self, const char *id)
{
    assert (self && id);
    pthread_mutex_lock (&self->lock);
    s_item_t *item = s_unlink (self, id, 0);
    if (item)
        self->stats.cancelled++;
    pthread_mutex_unlock (&self->lock);
    if (!item)
        return false;
    self->drop (item->task, CM_QUEUE_DROP_CANCELLED, self->arg);
    s_item_free (item);
    return true;
}

size_t
cm_queue_expire (cm_queue_t *self, int64_t now_ms)
{
    assert (self);
    pthread_mutex_lock (&self->lock);
    s_item_t *expired = s_unlink (self, NULL, now_ms);
    size_t count = 0;
    for (s_item_t *item = expired; item; item = item->next)
        count++;
    self->stats.timed_out += count;
    pthread_mutex_unlock (&self->lock);
    while (expired) {
        s_item_t *next = expired->next;
        self->drop (expired->task, CM_QUEUE_DROP_TIMEOUT, self->arg);
        s_item_free (expired);
        expired = next;
    }
    return count;
}

void
cm_queue_set_timing (cm_queue_t *self, cm_queue_timing_fn *fn, void *arg,
                     void (*free_fn) (void *arg))
{
    assert (self);
    pthread_mutex_lock (&self->lock);
    assert (!self->timing);
    self->timing = fn;
    self->timing_arg = arg;
    self->timing_free = free_fn;
    pthread_mutex_unlock (&self->lock);
}

const char *
cm_queue_name (cm_queue_t *self)
{
    assert (self);
    return self->name;
}

void
cm_queue_stats (cm_queue_t *self, cm_queue_stats_t *stats)
{
    assert (self && stats);
    pthread_mutex_lock (&self->lock);
    *stats = self->stats;
    pthread_mutex_unlock (&self->lock);
}

#define S_SPIN_US 20

static void
s_spin (cm_queue_t *self)
{
    struct timespec start, now;
    clock_gettime (CLOCK_MONOTONIC, &start);
    for (int i = 0;; i++) {
        if (atomic_load_explicit (&self->waiting, memory_order_relaxed))
            return;
        __builtin_ia32_pause ();
        if (i % 64 == 63) {
            clock_gettime (CLOCK_MONOTONIC, &now);
            if (s_seconds_between (&start, &now) * 1e6 > S_SPIN_US)
                return;
        }
    }
}

static void *
s_runner (void *arg)
{
    cm_queue_t *self = arg;
    pthread_mutex_lock (&self->lock);
    while (true) {
        bool spun = false;
        while (!self->head && !self->closing) {
            if (!spun) {
                //  Spin briefly before sleeping: a task that comes within
                //  S_SPIN_US starts without a futex wake-up (measured: the
                //  wake-up was the whole submit-to-start median, ~5 us).
                pthread_mutex_unlock (&self->lock);
                s_spin (self);
                pthread_mutex_lock (&self->lock);
                spun = true;
                continue;
            }
            self->sleepers++;
            pthread_cond_wait (&self->wake, &self->lock);
            self->sleepers--;
            spun = false;
        }
        if (self->closing)
            break;
        s_item_t *item = self->head;
        self->head = item->next;
        if (!self->head)
            self->tail = NULL;
        self->stats.pending--;
        atomic_fetch_sub (&self->waiting, 1);
        bool expired = item->deadline && item->deadline <= cm_clock_wall_ms ();
        if (expired)
            self->stats.timed_out++;
        else
            self->stats.active++;
        pthread_mutex_unlock (&self->lock);
        cm_queue_outcome_t outcome = CM_QUEUE_COMPLETED;
        if (expired)
            self->drop (item->task, CM_QUEUE_DROP_TIMEOUT, self->arg);
        else {
            struct timespec started, ended;
            clock_gettime (CLOCK_MONOTONIC, &started);
            outcome = self->run (item->task, self->arg);
            if (self->timing) {
                clock_gettime (CLOCK_MONOTONIC, &ended);
                self->timing (self->timing_arg,
                              s_seconds_between (&item->queued, &started),
                              s_seconds_between (&started, &ended));
            }
        }
        s_item_free (item);
        pthread_mutex_lock (&self->lock);
        if (!expired) {
            self->stats.active--;
            if (outcome == CM_QUEUE_FAILED)
                self->stats.failed++;
            else if (outcome == CM_QUEUE_ABORTED)
                self->stats.aborted++;
            else
                self->stats.completed++;
        }
    }
    pthread_mutex_unlock (&self->lock);
    return NULL;
}
