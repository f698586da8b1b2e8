/*  cm_monitor.h: libzmq's socket monitor, read without blocking: which
    connection events (connected, disconnected, ...) a socket has had since
    last asked. The worker uses it to say READY again when its connection
    to the gateway is made anew; the gateway's broker, to hear at once that
    a daemon's connection closed (the daemon died) instead of waiting for
    its heartbeats to lapse.

    Threading: a monitor belongs to the thread that owns its socket. */
#ifndef CM_MONITOR_H_INCLUDED
#define CM_MONITOR_H_INCLUDED

#include "cm_common.h"
#include <czmq.h>

typedef struct cm_monitor_s cm_monitor_t;

//  Watch sock (borrowed; it must outlive the monitor) for events, a mask of
//  ZMQ_EVENT_*. NULL, with a warning naming what, when libzmq cannot.
cm_monitor_t *cm_monitor_new (zsock_t *sock, int events, const char *what);
//  Stop watching and free. NULL-safe; nulls the pointer.
void cm_monitor_destroy (cm_monitor_t **self_p);
//  The socket to poll (ZMQ_POLLIN) for events.
void *cm_monitor_socket (cm_monitor_t *self);
//  Read every event waiting; returns how many of them are of this kind
//  (one ZMQ_EVENT_* value).
int cm_monitor_count (cm_monitor_t *self, int event);

#endif
