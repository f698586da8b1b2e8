/*  bench_wake: what one thread waking another costs on this machine, the
    unit every hop of a request pays (HTTP thread -> broker -> ZeroMQ I/O
    thread -> chatd ...). Two threads bounce a byte over a pair of pipes,
    each blocking in read() until the other writes: once free to run on
    any CPU, once both pinned to the first CPU. Prints the round trip (two
    wake-ups) in microseconds, median and p99. A figure, not a test.

    On a VM whose idle vCPUs halt (no halt polling), a wake-up that has to
    bring the other CPU out of idle costs a VM exit and is an order of
    magnitude dearer than a switch on the same CPU. */
#include "cm_common.h"
#include <pthread.h>
#include <sched.h>
#include <time.h>
#include <unistd.h>

#define S_ROUNDS 20000

typedef struct {
    int ping[2]; //  main -> echo
    int pong[2]; //  echo -> main
    bool pin;    //  both threads on the first CPU
    long rounds; //  round trips to make
} s_pair_t;

static void
s_pin (void)
{
    cpu_set_t set;
    CPU_ZERO (&set);
    CPU_SET (0, &set);
    if (pthread_setaffinity_np (pthread_self (), sizeof set, &set))
        fprintf (stderr, "bench_wake: could not pin to CPU 0\n");
}

static void *
s_echo (void *arg)
{
    s_pair_t *pair = arg;
    if (pair->pin)
        s_pin ();
    char byte;
    for (long i = 0; i < pair->rounds; i++)
        if (read (pair->ping[0], &byte, 1) != 1 || write (pair->pong[1], &byte, 1) != 1)
            break;
    return NULL;
}

static int
s_compare (const void *a, const void *b)
{
    double x = *(const double *) a, y = *(const double *) b;
    return (x > y) - (x < y);
}

static void
s_measure (bool pin)
{
    s_pair_t pair = {.pin = pin, .rounds = S_ROUNDS};
    if (pipe (pair.ping) || pipe (pair.pong)) {
        perror ("bench_wake: pipe");
        exit (1);
    }
    cpu_set_t before;
    pthread_getaffinity_np (pthread_self (), sizeof before, &before);
    if (pin)
        s_pin ();
    pthread_t echo;
    if (pthread_create (&echo, NULL, s_echo, &pair))
        abort ();
    double *samples = cm_malloc (S_ROUNDS * sizeof *samples);
    char byte = 'x';
    for (long i = 0; i < S_ROUNDS; i++) {
        struct timespec a, b;
        clock_gettime (CLOCK_MONOTONIC, &a);
        if (write (pair.ping[1], &byte, 1) != 1 || read (pair.pong[0], &byte, 1) != 1)
            abort ();
        clock_gettime (CLOCK_MONOTONIC, &b);
        samples[i] =
            (double) (b.tv_sec - a.tv_sec) * 1e6 + (double) (b.tv_nsec - a.tv_nsec) / 1e3;
    }
    pthread_join (echo, NULL);
    pthread_setaffinity_np (pthread_self (), sizeof before, &before);
    qsort (samples, S_ROUNDS, sizeof *samples, s_compare);
    printf ("thread round trip (two wake-ups), %-14s median %8.2f us   p99 %8.2f us   "
            "(%d rounds)\n",
            pin ? "one CPU:" : "any CPU:", samples[S_ROUNDS / 2],
            samples[S_ROUNDS * 99 / 100], S_ROUNDS);
    free (samples);
    for (int i = 0; i < 2; i++) {
        close (pair.ping[i]);
        close (pair.pong[i]);
    }
}

int
main (void)
{
    s_measure (false);
    s_measure (true);
    return 0;
}
