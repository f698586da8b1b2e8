/*  sup_supervisor.h: runs the programs of a suite file and keeps them up.

    Starts every replica of every program (each child in its own process
    group, with PR_SET_PDEATHSIG so it dies with the supervisor, stdin on
    /dev/null, the supervisor's environment plus the program's env entries,
    INSTANCE_INDEX and SUPERVISED=1). A child that exits is restarted after
    a back-off (sup_backoff), until it crashes too often and is given up.
    SIGINT, SIGTERM or SIGHUP stop the run: the stop signal to every child,
    SIGKILL to those still there after the grace period, every child reaped.
    A second signal during the grace period kills at once. SIGUSR1 starts
    again what was given up (sup_supervisor_revive).

    Signals are blocked from sup_supervisor_new on and read from a signalfd
    inside the loop; the loop sleeps in zmq_poll, so that ZeroMQ sockets can
    join it through sup_supervisor_reader (the metrics endpoint will). */
#ifndef SUP_SUPERVISOR_H_INCLUDED
#define SUP_SUPERVISOR_H_INCLUDED

#include "cm_common.h"
#include "sup_conf.h"
#include "sup_env.h"

typedef struct sup_supervisor_s sup_supervisor_t;

//  Readers the loop can poll besides its own signalfd.
#define SUP_SUPERVISOR_READERS_MAX 8

//  Called from the loop when a reader is readable; socket and fd as given to
//  sup_supervisor_reader.
typedef void (sup_supervisor_reader_fn) (sup_supervisor_t *self, void *socket, int fd,
                                         void *arg);

//  Create a supervisor for the programs of *conf_p (ownership taken, the
//  pointer nulled) under the restart and grace settings. Blocks SIGCHLD,
//  SIGINT, SIGTERM and SIGHUP for the calling thread; make it the process's
//  only thread. Returns NULL (logged) if the signalfd cannot be made.
sup_supervisor_t *sup_supervisor_new (sup_conf_t **conf_p,
                                      const sup_settings_t *settings);

//  Destroy; NULL-safe, nulls the pointer. Children still running (only when
//  run was not called or gave up waiting) are sent SIGKILL. Restores the
//  signal mask.
void sup_supervisor_destroy (sup_supervisor_t **self_p);

//  The extension point for the metrics endpoint (sup_metrics): poll a
//  libzmq socket (socket not NULL) or a file descriptor (socket NULL) in the
//  loop, and call fn when it is readable. Returns 0, or -1 when the table
//  is full.
int sup_supervisor_reader (sup_supervisor_t *self, void *socket, int fd,
                           sup_supervisor_reader_fn *fn, void *arg);

//  Start every instance and supervise until stopped by a signal (or by
//  sup_supervisor_stop) and every child is reaped: returns 0. Returns 1 when
//  every instance was given up (nothing left to supervise) or children
//  survived SIGKILL. A suite with no program (sup_conf_new) only serves its
//  readers (the metrics hub) until stopped; with no reader either, or with
//  programs that all have replicas = 0, there is nothing to run: 1. Call
//  once.
int sup_supervisor_run (sup_supervisor_t *self);

//  Begin the graceful stop at now_ms, as SIGTERM would (for readers and
//  tests). A second call kills the stragglers at once.
void sup_supervisor_stop (sup_supervisor_t *self, int64_t now_ms);
//  Start again every instance that was given up (SIGUSR1 does this), its
//  crash count cleared: the operator has mended what made it crash.
//  Returns how many.
size_t sup_supervisor_revive (sup_supervisor_t *self, int64_t now_ms);

//  Number of children running now.
size_t sup_supervisor_running (sup_supervisor_t *self);

//  One program of the suite as it is now, for metrics.
typedef struct {
    const char *name;  //  the NAME of [program:NAME] (borrowed)
    size_t replicas;   //  instances configured
    size_t running;    //  instances running now
    size_t given_up;   //  instances given up after crashing too often
    uint64_t restarts; //  starts after each instance's first (restarts so far)
} sup_program_stats_t;

//  Number of programs, in the suite file's order.
size_t sup_supervisor_programs (sup_supervisor_t *self);
//  Fill stats for the program at index (< sup_supervisor_programs).
void sup_supervisor_program_stats (sup_supervisor_t *self, size_t index,
                                   sup_program_stats_t *stats);

#endif
