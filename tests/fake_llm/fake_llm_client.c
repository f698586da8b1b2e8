/*  fake_llm_client.c: see fake_llm_client.h. */
#include "fake_llm_client.h"
#include <criterion/criterion.h>
#include <curl/curl.h>
#include <libgen.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

int64_t
fake_llm_now_ms (void)
{
    struct timespec ts;
    clock_gettime (CLOCK_MONOTONIC, &ts);
    return (int64_t) ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void
fake_llm_start (fake_llm_t *self, const char *const *args)
{
    memset (self, 0, sizeof *self);
    //  build/bin: LLMRT_BIN_DIR under ctest, else beside build/tests.
    char exe[PATH_MAX] = "", program[PATH_MAX + 32];
    const char *bin = getenv ("LLMRT_BIN_DIR");
    if (bin)
        snprintf (program, sizeof program, "%s/fake_llm", bin);
    else {
        ssize_t n = readlink ("/proc/self/exe", exe, sizeof exe - 1);
        cr_assert_gt (n, 0);
        exe[n] = 0;
        snprintf (program, sizeof program, "%s/../bin/fake_llm", dirname (exe));
    }
    cr_assert_eq (access (program, X_OK), 0, "%s is not built", program);

    const char *argv[32] = {"fake_llm", "--port", "0"};
    size_t argc = 3;
    for (size_t i = 0; args && args[i] && argc < 31; i++)
        argv[argc++] = args[i];
    argv[argc] = NULL;
    int out[2];
    cr_assert_eq (pipe (out), 0);
    pid_t pid = fork ();
    cr_assert_geq (pid, 0);
    if (pid == 0) {
        prctl (PR_SET_PDEATHSIG, SIGTERM);
        dup2 (out[1], STDOUT_FILENO);
        close (out[0]);
        close (out[1]);
        execv (program, (char *const *) argv);
        _exit (127);
    }
    close (out[1]);
    self->pid = pid;
    //  The first line says where it listens.
    char line[128] = "";
    size_t used = 0;
    int64_t until = fake_llm_now_ms () + 10000;
    while (!strchr (line, '\n') && used + 1 < sizeof line) {
        struct pollfd pfd = {out[0], POLLIN, 0};
        int64_t left = until - fake_llm_now_ms ();
        if (left <= 0 || poll (&pfd, 1, (int) left) <= 0)
            break;
        ssize_t got = read (out[0], line + used, sizeof line - 1 - used);
        if (got <= 0)
            break;
        used += (size_t) got;
        line[used] = 0;
    }
    close (out[0]);
    const char *colon = strrchr (line, ':');
    self->port = colon ? atoi (colon + 1) : 0;
    if (self->port <= 0) {
        fake_llm_stop (self);
        cr_assert_fail ("fake_llm did not start: '%s'", line);
    }
    snprintf (self->base, sizeof self->base, "http://127.0.0.1:%d", self->port);
    snprintf (self->base_url, sizeof self->base_url, "%s/v1", self->base);
}

void
fake_llm_stop (fake_llm_t *self)
{
    if (self->pid <= 0)
        return;
    kill (self->pid, SIGTERM);
    int status;
    int64_t until = fake_llm_now_ms () + 5000;
    while (waitpid (self->pid, &status, WNOHANG) == 0) {
        if (fake_llm_now_ms () > until) {
            kill (self->pid, SIGKILL);
            waitpid (self->pid, &status, 0);
            break;
        }
        usleep (5000);
    }
    self->pid = 0;
}

typedef struct {
    char *data;
    size_t size;
} s_buffer_t;

static size_t
s_write (char *data, size_t size, size_t nmemb, void *arg)
{
    s_buffer_t *buffer = arg;
    size_t n = size * nmemb;
    buffer->data = realloc (buffer->data, buffer->size + n + 1);
    memcpy (buffer->data + buffer->size, data, n);
    buffer->size += n;
    buffer->data[buffer->size] = 0;
    return n;
}

static long
s_http (fake_llm_t *self, const char *path, const char *body, s_buffer_t *reply)
{
    char url[160];
    snprintf (url, sizeof url, "%s%s", self->base, path);
    CURL *curl = curl_easy_init ();
    curl_easy_setopt (curl, CURLOPT_URL, url);
    if (body)
        curl_easy_setopt (curl, CURLOPT_POSTFIELDS, body);
    curl_easy_setopt (curl, CURLOPT_WRITEFUNCTION, s_write);
    curl_easy_setopt (curl, CURLOPT_WRITEDATA, reply);
    curl_easy_setopt (curl, CURLOPT_TIMEOUT_MS, 10000L);
    curl_easy_setopt (curl, CURLOPT_NOSIGNAL, 1L);
    long status = 0;
    if (curl_easy_perform (curl) == CURLE_OK)
        curl_easy_getinfo (curl, CURLINFO_RESPONSE_CODE, &status);
    curl_easy_cleanup (curl);
    return status;
}

void
fake_llm_control (fake_llm_t *self, const char *json)
{
    s_buffer_t reply = {NULL, 0};
    long status = s_http (self, "/control", json, &reply);
    cr_assert_eq (status, 200, "fake_llm /control %s: %ld %s", json, status,
                  reply.data ? reply.data : "");
    free (reply.data);
}

json_t *
fake_llm_stats (fake_llm_t *self)
{
    s_buffer_t reply = {NULL, 0};
    long status = s_http (self, "/stats", NULL, &reply);
    cr_assert_eq (status, 200, "fake_llm /stats: %ld", status);
    json_t *stats = json_loads (reply.data, 0, NULL);
    cr_assert_not_null (stats, "fake_llm /stats is not JSON: %s", reply.data);
    free (reply.data);
    return stats;
}

int64_t
fake_llm_stat (fake_llm_t *self, const char *name)
{
    json_t *stats = fake_llm_stats (self);
    json_t *value = json_object_get (stats, name);
    cr_assert (json_is_integer (value), "fake_llm /stats has no integer %s", name);
    int64_t result = json_integer_value (value);
    json_decref (stats);
    return result;
}

fake_llm_t fake_llm_suite;

void
fake_llm_suite_start (void)
{
    fake_llm_start (&fake_llm_suite, NULL);
}

void
fake_llm_suite_stop (void)
{
    fake_llm_stop (&fake_llm_suite);
}
