/*  cm_mailbox.h: a FIFO that any thread posts to and one owner thread drains.

    The owner polls cm_mailbox_fd (an eventfd, readable while items may be
    waiting) next to its ZeroMQ sockets, as czmq's zhttp_server hands work
    between libmicrohttpd threads and its actor. Posting is a mutex and, only
    when the box was empty, one write(2). */
#ifndef CM_MAILBOX_H_INCLUDED
#define CM_MAILBOX_H_INCLUDED

#include "cm_common.h"

typedef struct cm_mailbox_s cm_mailbox_t;
typedef void (cm_mailbox_free_fn) (void *item);

//  Create an empty mailbox. Caller owns it.
cm_mailbox_t *cm_mailbox_new (void);
//  Destroy, freeing items still inside with free_fn (may be NULL). NULL-safe.
void cm_mailbox_destroy (cm_mailbox_t **self_p, cm_mailbox_free_fn *free_fn);
//  Post an item (any thread). The mailbox holds it until taken.
void cm_mailbox_post (cm_mailbox_t *self, void *item);
//  Owner: take the oldest item, or NULL when empty. Call until NULL after
//  the fd polls readable.
void *cm_mailbox_take (cm_mailbox_t *self);
//  The file descriptor to poll for input.
int cm_mailbox_fd (cm_mailbox_t *self);

#endif
