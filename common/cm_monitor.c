/*  cm_monitor.c: see cm_monitor.h. */
#include "cm_monitor.h"
#include "cm_log.h"
#include <stdatomic.h>

struct cm_monitor_s {
    zsock_t *watched; //  the socket watched (borrowed)
    zsock_t *pair;    //  where libzmq posts its events
};

cm_monitor_t *
cm_monitor_new (zsock_t *sock, int events, const char *what)
{
    assert (sock && what);
    static atomic_uint serial;
    char endpoint[80];
    snprintf (endpoint, sizeof endpoint, "inproc://cm-monitor-%u",
              atomic_fetch_add (&serial, 1));
    if (zmq_socket_monitor (zsock_resolve (sock), endpoint, events) < 0) {
        cm_warn ("cannot monitor %s: %s", what, zmq_strerror (zmq_errno ()));
        return NULL;
    }
    cm_monitor_t *self = cm_calloc (1, sizeof *self);
    self->watched = sock;
    self->pair = zsock_new (ZMQ_PAIR);
    assert (self->pair);
    if (zsock_connect (self->pair, "%s", endpoint)) {
        cm_warn ("cannot read the monitor of %s at %s", what, endpoint);
        cm_monitor_destroy (&self);
    }
    return self;
}

void
cm_monitor_destroy (cm_monitor_t **self_p)
{
    assert (self_p);
    cm_monitor_t *self = *self_p;
    if (!self)
        return;
    zmq_socket_monitor (zsock_resolve (self->watched), NULL, 0);
    zsock_destroy (&self->pair);
    free (self);
    *self_p = NULL;
}

void *
cm_monitor_socket (cm_monitor_t *self)
{
    assert (self);
    return zsock_resolve (self->pair);
}

int
cm_monitor_count (cm_monitor_t *self, int event)
{
    assert (self);
    int count = 0;
    void *pair = zsock_resolve (self->pair);
    zmq_msg_t frame;
    zmq_msg_init (&frame);
    //  An event is two frames: 16-bit event and 32-bit value, then the
    //  endpoint.
    while (zmq_msg_recv (&frame, pair, ZMQ_DONTWAIT) >= 0) {
        uint16_t kind = 0;
        if (zmq_msg_size (&frame) >= sizeof kind)
            memcpy (&kind, zmq_msg_data (&frame), sizeof kind);
        if (kind == event)
            count++;
        while (zmq_msg_more (&frame) && zmq_msg_recv (&frame, pair, ZMQ_DONTWAIT) >= 0)
            ;
    }
    zmq_msg_close (&frame);
    return count;
}
