/*  test_redis.c: see test_redis.h. */
#include "test_redis.h"
#include "cm_redis.h"
#include "test_dir.h"
#include "test_port.h"
#include <criterion/criterion.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#define S_PATIENCE_MS 20000

void
test_redis_start (test_redis_t *self, int port)
{
    if (!self->dir[0])
        test_dir_make (self->dir, sizeof self->dir, "/tmp/llmrt-redis-XXXXXX");
    for (int attempt = 0; attempt < 5; attempt++) {
        self->port = port ? port : test_port_free ();
        snprintf (self->url, sizeof self->url, "redis://127.0.0.1:%d", self->port);
        pid_t pid = fork ();
        cr_assert_geq (pid, 0);
        if (pid == 0) {
            prctl (PR_SET_PDEATHSIG, SIGKILL);
            char port_text[16], log_path[128];
            snprintf (port_text, sizeof port_text, "%d", self->port);
            snprintf (log_path, sizeof log_path, "%s/redis.log", self->dir);
            execlp ("redis-server", "redis-server", "--port", port_text, "--bind",
                    "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", self->dir,
                    "--logfile", log_path, (char *) NULL);
            _exit (127);
        }
        self->pid = pid;
        int64_t until = cm_clock_mono_ms () + S_PATIENCE_MS;
        while (cm_clock_mono_ms () < until) {
            int status;
            if (waitpid (pid, &status, WNOHANG) == pid)
                break; //  it exited: the port was taken
            char err[256];
            redisContext *ctx = cm_redis_connect (self->url, 1000, err, sizeof err);
            if (ctx) {
                int rc = cm_redis_ping (ctx, err, sizeof err);
                redisFree (ctx);
                if (rc == 0)
                    return;
            }
            usleep (10 * 1000);
        }
        kill (pid, SIGKILL);
        waitpid (pid, NULL, 0);
        self->pid = 0;
    }
    cr_assert_fail ("redis-server did not start");
}

void
test_redis_stop (test_redis_t *self)
{
    if (self->pid > 0) {
        kill (self->pid, SIGCONT);
        kill (self->pid, SIGKILL);
        waitpid (self->pid, NULL, 0);
        self->pid = 0;
    }
}

void
test_redis_remove (test_redis_t *self)
{
    test_redis_stop (self);
    cr_assert_eq (test_dir_remove (self->dir), 0, "cannot remove %s", self->dir);
}
