/*  bench_limiter: decisions per second of cm_ratelimit, on one thread and
    on several: the shared bucket (compare-and-swap), one hot key (hash and
    stripe lock), keys that all fit the table, and more keys than the table
    holds (every decision a miss that evicts). Time is the monotonic clock,
    read once per batch of decisions, so threads share it; the rate is so
    high that every decision passes and writes, the costlier outcome. A
    figure, not a test.

    Usage: bench_limiter [seconds per case]   (default 1) */
#include "cm_ratelimit.h"
#include <pthread.h>
#include <stdatomic.h>
#include <time.h>

#define S_KEY_SIZE 24 //  "key-" and digits, as an API key's identity

typedef struct {
    const char *name; //  printed
    size_t max_keys;  //  table size (0: the shared bucket)
    size_t keys;      //  distinct keys cycled through (0: shared bucket)
    int threads;      //  threads deciding at once
} s_case_t;

typedef struct {
    cm_ratelimit_t *limiter; //  shared
    const char *keys;        //  keys * S_KEY_SIZE bytes, NULL: shared bucket
    size_t key_count;        //  of keys
    size_t first;            //  this thread's first key
    double seconds;          //  how long to run
    uint64_t decisions;      //  result
    uint64_t allowed;        //  result
} s_worker_t;

static double
s_now_s (void)
{
    struct timespec ts;
    clock_gettime (CLOCK_MONOTONIC, &ts);
    return (double) ts.tv_sec + (double) ts.tv_nsec / 1e9;
}

static void *
s_worker (void *arg)
{
    s_worker_t *self = arg;
    size_t k = self->first;
    double until = s_now_s () + self->seconds;
    uint64_t decisions = 0, allowed = 0;
    //  Look at the clock once per batch: the clock costs more than a decision.
    while (s_now_s () < until) {
        int64_t now_us = cm_clock_mono_us ();
        for (int i = 0; i < 4096; i++) {
            const char *key = NULL;
            if (self->keys) {
                key = self->keys + k * S_KEY_SIZE;
                if (++k == self->key_count)
                    k = 0;
            }
            allowed += cm_ratelimit_take (self->limiter, key, now_us, NULL) ==
                       CM_RATELIMIT_ALLOWED;
        }
        decisions += 4096;
    }
    self->decisions = decisions;
    self->allowed = allowed;
    return NULL;
}

static void
s_run (const s_case_t *c, double seconds)
{
    //  10^9/s (1 ns a request), bursts of 10^6: every decision passes.
    cm_ratelimit_t *limiter = cm_ratelimit_new (1e9, 1000000, c->max_keys);
    char *keys = NULL;
    if (c->keys) {
        keys = cm_malloc (c->keys * S_KEY_SIZE);
        for (size_t i = 0; i < c->keys; i++)
            snprintf (keys + i * S_KEY_SIZE, S_KEY_SIZE, "key-%zu", i * 7919);
    }
    pthread_t threads[16];
    s_worker_t workers[16];
    for (int t = 0; t < c->threads; t++) {
        workers[t] = (s_worker_t){.limiter = limiter,
                                  .keys = keys,
                                  .key_count = c->keys,
                                  .first = c->keys ? (c->keys / c->threads) * t : 0,
                                  .seconds = seconds};
        if (pthread_create (&threads[t], NULL, s_worker, &workers[t]))
            abort ();
    }
    uint64_t decisions = 0, allowed = 0;
    for (int t = 0; t < c->threads; t++) {
        pthread_join (threads[t], NULL);
        decisions += workers[t].decisions;
        allowed += workers[t].allowed;
    }
    printf ("%-44s %2d %12.2f %8.1f %6.1f%%  %zu/%llu\n", c->name, c->threads,
            (double) decisions / seconds / 1e6,
            seconds * 1e9 * c->threads / (double) decisions,
            100.0 * (double) allowed / (double) decisions, cm_ratelimit_keys (limiter),
            (unsigned long long) cm_ratelimit_evictions (limiter));
    cm_ratelimit_destroy (&limiter);
    free (keys);
}

int
main (int argc, char **argv)
{
    double seconds = argc > 1 ? atof (argv[1]) : 1;
    if (seconds <= 0)
        seconds = 1;
    static const s_case_t cases[] = {
        {"shared bucket (CAS)", 0, 0, 1},
        {"one hot key", 1024, 1, 1},
        {"10k keys, table of 100k (all hits)", 100000, 10000, 1},
        {"1M keys, table of 100k (miss + evict)", 100000, 1000000, 1},
        {"shared bucket (CAS)", 0, 0, 2},
        {"one hot key", 1024, 1, 2},
        {"10k keys, table of 100k (all hits)", 100000, 10000, 2},
        {"1M keys, table of 100k (miss + evict)", 100000, 1000000, 2},
    };
    printf ("cm_ratelimit decisions, %.1f s per case\n", seconds);
    printf ("%-44s %2s %12s %8s %7s  %s\n", "case", "th", "M decisions/s", "ns/dec",
            "passed", "keys/evictions");
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++)
        s_run (&cases[i], seconds);
    return 0;
}
