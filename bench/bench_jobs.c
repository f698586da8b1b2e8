/*  bench_jobs: throughput of the Redis job queue (cm_jobs) on loopback:
    adds from one thread, then take+complete from 1 and from 4 worker
    threads (each its own handle), and the time of one add, take and
    complete in a row (three round trips). Starts its own redis-server on a free port
    (REDIS_URL instead uses one that runs). A figure, not a test. */
#include "cm_jobs.h"
#include "cm_redis.h"
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#define S_JOBS    20000
#define S_LATENCY 2000

static cm_jobs_config_t s_config;
static atomic_int s_done;

static pid_t
s_redis_start (char *url, size_t size)
{
    int fd = socket (AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in addr = {.sin_family = AF_INET,
                               .sin_addr.s_addr = htonl (INADDR_LOOPBACK)};
    socklen_t len = sizeof addr;
    if (bind (fd, (struct sockaddr *) &addr, len) ||
        getsockname (fd, (struct sockaddr *) &addr, &len))
        return -1;
    close (fd);
    char port[16];
    snprintf (port, sizeof port, "%d", ntohs (addr.sin_port));
    snprintf (url, size, "redis://127.0.0.1:%s", port);
    pid_t pid = fork ();
    if (pid == 0) {
        prctl (PR_SET_PDEATHSIG, SIGKILL);
        if (!freopen ("/dev/null", "w", stdout))
            _exit (127);
        execlp ("redis-server", "redis-server", "--port", port, "--bind", "127.0.0.1",
                "--save", "", "--appendonly", "no", "--loglevel", "warning",
                (char *) NULL);
        _exit (127);
    }
    for (int i = 0; i < 500; i++) {
        char err[256];
        redisContext *redis = cm_redis_connect (url, 1000, err, sizeof err);
        if (redis && cm_redis_ping (redis, err, sizeof err) == 0) {
            redisFree (redis);
            return pid;
        }
        if (redis)
            redisFree (redis);
        usleep (10 * 1000);
    }
    kill (pid, SIGKILL);
    return -1;
}

static void *
s_worker (void *arg)
{
    (void) arg;
    cm_jobs_t *jobs = cm_jobs_new (&s_config, NULL);
    while (atomic_load (&s_done) < S_JOBS) {
        cm_job_t *job = NULL;
        if (cm_jobs_take (jobs, 100, &job) == 1 && cm_jobs_complete (jobs, &job) == 0)
            atomic_fetch_add (&s_done, 1);
    }
    cm_jobs_destroy (&jobs);
    return NULL;
}

static void
s_add_all (cm_jobs_t *jobs, const char *round)
{
    for (int i = 0; i < S_JOBS; i++) {
        char id[48];
        snprintf (id, sizeof id, "%s-%d", round, i);
        if (cm_jobs_add (jobs, id,
                         "{\"document\":\"00000000-0000-0000-0000-000000000000\"}"))
            fprintf (stderr, "add: %s\n", cm_jobs_errmsg (jobs));
    }
}

static void
s_drain (int threads)
{
    atomic_store (&s_done, 0);
    pthread_t thread[8];
    int64_t start = cm_clock_mono_ms ();
    for (int i = 0; i < threads; i++)
        pthread_create (&thread[i], NULL, s_worker, NULL);
    for (int i = 0; i < threads; i++)
        pthread_join (thread[i], NULL);
    double secs = (double) (cm_clock_mono_ms () - start) / 1000.0;
    printf ("take+complete, %d worker thread%s: %.0f jobs/s\n", threads,
            threads > 1 ? "s" : "", S_JOBS / secs);
}

static int
s_compare (const void *a, const void *b)
{
    int64_t x = *(const int64_t *) a, y = *(const int64_t *) b;
    return (x > y) - (x < y);
}

int
main (void)
{
    char url[64];
    pid_t redis = 0;
    if (getenv ("REDIS_URL"))
        snprintf (url, sizeof url, "%s", getenv ("REDIS_URL"));
    else if ((redis = s_redis_start (url, sizeof url)) < 0) {
        fprintf (stderr, "bench_jobs: cannot start redis-server\n");
        return 1;
    }
    cm_jobs_config_defaults (&s_config);
    s_config.url = url;
    s_config.queue = "bench-jobs";
    s_config.keep_completed = 100;
    cm_jobs_t *jobs = cm_jobs_new (&s_config, NULL);
    int64_t start = cm_clock_mono_ms ();
    s_add_all (jobs, "a");
    printf ("add, 1 thread: %.0f jobs/s\n",
            S_JOBS / ((double) (cm_clock_mono_ms () - start) / 1000.0));
    s_drain (1);
    s_add_all (jobs, "b");
    s_drain (4);

    //  One job at a time: add, take, complete.
    static int64_t samples[S_LATENCY];
    cm_jobs_t *worker = cm_jobs_new (&s_config, NULL);
    for (int i = 0; i < S_LATENCY; i++) {
        char id[32];
        snprintf (id, sizeof id, "c-%d", i);
        int64_t before = cm_clock_mono_us ();
        cm_jobs_add (jobs, id, "{}");
        cm_job_t *job = NULL;
        if (cm_jobs_take (worker, 1000, &job) == 1)
            cm_jobs_complete (worker, &job);
        samples[i] = cm_clock_mono_us () - before;
    }
    qsort (samples, S_LATENCY, sizeof samples[0], s_compare);
    printf ("add, take, complete of one job: median %lld us, p99 %lld "
            "us\n",
            (long long) samples[S_LATENCY / 2],
            (long long) samples[S_LATENCY * 99 / 100]);
    cm_jobs_destroy (&worker);
    cm_jobs_destroy (&jobs);
    if (redis > 0) {
        kill (redis, SIGTERM);
        waitpid (redis, NULL, 0);
    }
    return 0;
}
