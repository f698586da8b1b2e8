/*  test_cm_mailbox.c: FIFO hand-off between threads with a pollable fd. */
#include <criterion/criterion.h>
#include <poll.h>
#include <pthread.h>
#include "cm_mailbox.h"

Test (cm_mailbox, walkthrough_post_poll_take)
{
    cm_mailbox_t *box = cm_mailbox_new ();
    struct pollfd pfd = {cm_mailbox_fd (box), POLLIN, 0};
    cr_assert_eq (poll (&pfd, 1, 0), 0, "empty box polls quiet");
    int a = 1, b = 2;
    cm_mailbox_post (box, &a);
    cm_mailbox_post (box, &b);
    cr_assert_eq (poll (&pfd, 1, 0), 1);
    cr_assert_eq (cm_mailbox_take (box), &a);
    cr_assert_eq (cm_mailbox_take (box), &b);
    cr_assert_null (cm_mailbox_take (box));
    cr_assert_eq (poll (&pfd, 1, 0), 0, "drained box polls quiet");
    cm_mailbox_destroy (&box, NULL);
    cr_assert_null (box);
}

#define S_PER_THREAD 20000

static void *
s_poster (void *arg)
{
    cm_mailbox_t *box = arg;
    for (intptr_t i = 1; i <= S_PER_THREAD; i++)
        cm_mailbox_post (box, (void *) i);
    return NULL;
}

Test (cm_mailbox, no_item_lost_between_threads)
{
    cm_mailbox_t *box = cm_mailbox_new ();
    pthread_t threads[4];
    for (int t = 0; t < 4; t++)
        pthread_create (&threads[t], NULL, s_poster, box);
    long taken = 0;
    long long sum = 0;
    struct pollfd pfd = {cm_mailbox_fd (box), POLLIN, 0};
    while (taken < 4 * S_PER_THREAD) {
        //  A wake-up must come for every batch: a lost one would hang here.
        cr_assert_geq (poll (&pfd, 1, 5000), 1, "lost wake-up after %ld items", taken);
        void *item;
        while ((item = cm_mailbox_take (box))) {
            taken++;
            sum += (intptr_t) item;
        }
    }
    for (int t = 0; t < 4; t++)
        pthread_join (threads[t], NULL);
    cr_assert_eq (sum, 4LL * S_PER_THREAD * (S_PER_THREAD + 1) / 2);
    cm_mailbox_destroy (&box, NULL);
}

static void
s_free_int (void *item)
{
    free (item);
}

Test (cm_mailbox, destroy_frees_what_is_left)
{
    cm_mailbox_t *box = cm_mailbox_new ();
    cm_mailbox_post (box, malloc (4));
    cm_mailbox_post (box, malloc (4));
    cm_mailbox_destroy (&box, s_free_int);
}
