/*  cm_reporter.c: see cm_reporter.h. The thread sleeps on a condition
    variable (monotonic clock) between reports, so destroy wakes it at
    once. */
#include "cm_reporter.h"
#include "cm_log.h"
#include "cm_metrics_msg.h"
#include <czmq.h>
#include <pthread.h>
#include <stdatomic.h>
#include <time.h>

//  Reports the socket may hold while the supervisor is slow: older ones
//  are worth little once a newer one exists.
#define S_SNDHWM 4
//  The first report goes out this soon, so that a new instance shows up
//  in the aggregate without waiting a whole interval.
#define S_FIRST_MS 100

struct cm_reporter_s {
    cm_metrics_t *metrics;        //  borrowed registry
    char *endpoint;               //  supervisor endpoint
    char *service;                //  who we are
    char *instance;               //  which one
    int64_t interval_ms;          //  between reports
    cm_metric_t *sent_series;     //  llmrt_metrics_reports_total{outcome="sent"}
    cm_metric_t *dropped_series;  //  ...{outcome="dropped"}
    atomic_uint_fast64_t sent;    //  reports handed to the socket
    atomic_uint_fast64_t dropped; //  reports dropped
    pthread_t thread;             //  the reporting thread
    pthread_mutex_t lock;         //  guards stop, with wake
    pthread_cond_t wake;          //  signalled by destroy
    bool stop;                    //  the thread should end
};

static void *s_thread (void *arg);

cm_reporter_t *
cm_reporter_new (const cm_reporter_config_t *config)
{
    assert (config && config->metrics && config->endpoint && config->service &&
            config->instance);
    cm_reporter_t *self = cm_calloc (1, sizeof *self);
    self->metrics = config->metrics;
    self->endpoint = cm_strdup (config->endpoint);
    self->service = cm_strdup (config->service);
    self->instance = cm_strdup (config->instance);
    self->interval_ms = config->interval_ms > 0 ? config->interval_ms : 1000;
    const char *help = "Metrics reports to the supervisor, by outcome (dropped: the "
                       "supervisor was unreachable or slow).";
    const char *sent[] = {"outcome", "sent", NULL};
    const char *dropped[] = {"outcome", "dropped", NULL};
    self->sent_series =
        cm_metrics_counter (self->metrics, "llmrt_metrics_reports_total", help, sent);
    self->dropped_series =
        cm_metrics_counter (self->metrics, "llmrt_metrics_reports_total", help, dropped);
    pthread_mutex_init (&self->lock, NULL);
    pthread_condattr_t attr;
    pthread_condattr_init (&attr);
    pthread_condattr_setclock (&attr, CLOCK_MONOTONIC);
    pthread_cond_init (&self->wake, &attr);
    pthread_condattr_destroy (&attr);
    //  czmq sets itself up on the first socket, and that is not safe from
    //  two threads at once (a daemon's I/O thread makes its socket now
    //  too): do it here, before our thread exists.
    zsys_init ();
    if (pthread_create (&self->thread, NULL, s_thread, self))
        abort ();
    return self;
}

void
cm_reporter_destroy (cm_reporter_t **self_p)
{
    assert (self_p);
    cm_reporter_t *self = *self_p;
    if (!self)
        return;
    pthread_mutex_lock (&self->lock);
    self->stop = true;
    pthread_cond_signal (&self->wake);
    pthread_mutex_unlock (&self->lock);
    pthread_join (self->thread, NULL);
    pthread_cond_destroy (&self->wake);
    pthread_mutex_destroy (&self->lock);
    free (self->endpoint);
    free (self->service);
    free (self->instance);
    free (self);
    *self_p = NULL;
}

uint64_t
cm_reporter_sent (cm_reporter_t *self)
{
    assert (self);
    return atomic_load (&self->sent);
}

uint64_t
cm_reporter_dropped (cm_reporter_t *self)
{
    assert (self);
    return atomic_load (&self->dropped);
}

//  Sleep until due_ms (monotonic) or until told to stop. Returns false to
//  stop.
static bool
s_sleep_until (cm_reporter_t *self, int64_t due_ms)
{
    struct timespec until = {.tv_sec = (time_t) (due_ms / 1000),
                             .tv_nsec = (long) (due_ms % 1000) * 1000000};
    pthread_mutex_lock (&self->lock);
    while (!self->stop && cm_clock_mono_ms () < due_ms)
        pthread_cond_timedwait (&self->wake, &self->lock, &until);
    bool go_on = !self->stop;
    pthread_mutex_unlock (&self->lock);
    return go_on;
}

static void *
s_thread (void *arg)
{
    cm_reporter_t *self = arg;
    zsock_t *sock = zsock_new (ZMQ_DEALER);
    assert (sock);
    //  Queue only towards a live connection, and only a few reports: a
    //  send that cannot be queued fails at once instead of waiting.
    zsock_set_immediate (sock, 1);
    zsock_set_sndhwm (sock, S_SNDHWM);
    zsock_set_linger (sock, 0);
    if (zsock_connect (sock, "%s", self->endpoint))
        cm_error ("metrics: cannot connect to the supervisor at %s; reports are dropped",
                  self->endpoint);
    uint64_t seq = 0;
    //  Reports dropped in a row: logged when it reaches 3 (a connection is
    //  still being made at start-up) and when it ends, not each time.
    unsigned failures = 0;
    int64_t due = cm_clock_mono_ms () +
                  (self->interval_ms < S_FIRST_MS ? self->interval_ms : S_FIRST_MS);
    while (s_sleep_until (self, due)) {
        due += self->interval_ms;
        int64_t now = cm_clock_mono_ms ();
        if (due <= now) //  we fell behind (a stopped process): no burst
            due = now + self->interval_ms;
        cm_metrics_msg_t *report = cm_metrics_msg_new (CM_METRICS_MSG_REPORT);
        cm_metrics_msg_set_service (report, self->service);
        cm_metrics_msg_set_instance (report, self->instance);
        cm_metrics_msg_set_id (report, ++seq);
        cm_metrics_msg_set_sent_ms (report, cm_clock_wall_ms ());
        cm_metrics_msg_set_body (report, cm_metrics_snapshot (self->metrics));
        char *data;
        size_t size;
        cm_metrics_msg_encode (report, &data, &size);
        cm_metrics_msg_destroy (&report);
        if (zmq_send (zsock_resolve (sock), data, size, ZMQ_DONTWAIT) == (int) size) {
            atomic_fetch_add (&self->sent, 1);
            cm_metric_add (self->sent_series, 1);
            if (failures >= 3)
                cm_info ("metrics: reporting to the supervisor at %s again",
                         self->endpoint);
            failures = 0;
        } else {
            atomic_fetch_add (&self->dropped, 1);
            cm_metric_add (self->dropped_series, 1);
            if (++failures == 3)
                cm_warn ("metrics: the supervisor at %s is not reachable; dropping "
                         "reports until it is",
                         self->endpoint);
        }
        free (data);
    }
    zsock_destroy (&sock);
    return NULL;
}
