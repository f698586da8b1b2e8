/*  cm_mailbox.c: see cm_mailbox.h. */
#include "cm_mailbox.h"
#include <pthread.h>
#include <sys/eventfd.h>
#include <unistd.h>

typedef struct s_node_s {
    void *item;            //  the posted item
    struct s_node_s *next; //  next newer node
} s_node_t;

struct cm_mailbox_s {
    pthread_mutex_t lock; //  guards the list
    s_node_t *head;       //  oldest posted, NULL when empty
    s_node_t *tail;       //  newest posted
    s_node_t *taken;      //  owner's private batch, taken under one lock
    int fd;               //  eventfd, counts posts into an empty box
};

cm_mailbox_t *
cm_mailbox_new (void)
{
    cm_mailbox_t *self = cm_calloc (1, sizeof *self);
    pthread_mutex_init (&self->lock, NULL);
    self->fd = eventfd (0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (self->fd < 0)
        abort ();
    return self;
}

static void
s_free_list (s_node_t *node, cm_mailbox_free_fn *free_fn)
{
    while (node) {
        s_node_t *next = node->next;
        if (free_fn)
            free_fn (node->item);
        free (node);
        node = next;
    }
}

void
cm_mailbox_destroy (cm_mailbox_t **self_p, cm_mailbox_free_fn *free_fn)
{
    assert (self_p);
    cm_mailbox_t *self = *self_p;
    if (!self)
        return;
    s_free_list (self->taken, free_fn);
    s_free_list (self->head, free_fn);
    close (self->fd);
    pthread_mutex_destroy (&self->lock);
    free (self);
    *self_p = NULL;
}

void
cm_mailbox_post (cm_mailbox_t *self, void *item)
{
    assert (self);
    s_node_t *node = cm_malloc (sizeof *node);
    node->item = item;
    node->next = NULL;
    pthread_mutex_lock (&self->lock);
    bool was_empty = self->head == NULL;
    if (self->tail)
        self->tail->next = node;
    else
        self->head = node;
    self->tail = node;
    pthread_mutex_unlock (&self->lock);
    //  One wake-up per batch: the owner drains everything once it wakes.
    if (was_empty) {
        uint64_t one = 1;
        ssize_t rc = write (self->fd, &one, sizeof one);
        (void) rc;
    }
}

void *
cm_mailbox_take (cm_mailbox_t *self)
{
    assert (self);
    if (!self->taken) {
        //  Reset the eventfd before taking the batch: a post that lands
        //  after the swap finds the list empty and writes again.
        uint64_t count;
        ssize_t rc = read (self->fd, &count, sizeof count);
        (void) rc;
        pthread_mutex_lock (&self->lock);
        self->taken = self->head;
        self->head = self->tail = NULL;
        pthread_mutex_unlock (&self->lock);
        if (!self->taken)
            return NULL;
    }
    s_node_t *node = self->taken;
    self->taken = node->next;
    void *item = node->item;
    free (node);
    return item;
}

int
cm_mailbox_fd (cm_mailbox_t *self)
{
    assert (self);
    return self->fd;
}
