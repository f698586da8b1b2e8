/*  it_harness.c: see it_harness.h. */
#include "it_harness.h"
#include <criterion/criterion.h>
#include <curl/curl.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

long long
it_now_ms (void)
{
    struct timespec ts;
    clock_gettime (CLOCK_MONOTONIC, &ts);
    return (long long) ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

bool
it_wait (bool (*fn) (void *arg), void *arg, int timeout_ms)
{
    long long until = it_now_ms () + timeout_ms;
    while (it_now_ms () < until) {
        if (fn (arg))
            return true;
        usleep (20 * 1000);
    }
    return fn (arg);
}

int
it_free_port (void)
{
    int fd = socket (AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in addr = {0};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl (INADDR_LOOPBACK);
    cr_assert_eq (bind (fd, (struct sockaddr *) &addr, sizeof addr), 0);
    socklen_t len = sizeof addr;
    getsockname (fd, (struct sockaddr *) &addr, &len);
    close (fd);
    return ntohs (addr.sin_port);
}

static size_t
s_write_body (char *data, size_t size, size_t nmemb, void *arg)
{
    it_response_t *response = arg;
    size_t n = size * nmemb;
    response->body = realloc (response->body, response->size + n + 1);
    memcpy (response->body + response->size, data, n);
    response->size += n;
    response->body[response->size] = 0;
    return n;
}

static size_t
s_write_header (char *data, size_t size, size_t nmemb, void *arg)
{
    it_response_t *response = arg;
    size_t n = size * nmemb, used = strlen (response->headers);
    if (used + n < sizeof response->headers) {
        memcpy (response->headers + used, data, n);
        response->headers[used + n] = 0;
    }
    return n;
}

void
it_http (const char *method, const char *url, const char *body, bool auth,
         it_response_t *response)
{
    it_http_key (method, url, body, auth ? IT_ADMIN_KEY : NULL, response);
}

void
it_http_key (const char *method, const char *url, const char *body, const char *key,
             it_response_t *response)
{
    memset (response, 0, sizeof *response);
    response->body = calloc (1, 1);
    CURL *curl = curl_easy_init ();
    struct curl_slist *headers = NULL;
    headers = curl_slist_append (headers, "Content-Type: application/json");
    char auth[512];
    if (key) {
        snprintf (auth, sizeof auth, "Authorization: Bearer %s", key);
        headers = curl_slist_append (headers, auth);
    }
    curl_easy_setopt (curl, CURLOPT_URL, url);
    curl_easy_setopt (curl, CURLOPT_CUSTOMREQUEST, method);
    curl_easy_setopt (curl, CURLOPT_HTTPHEADER, headers);
    if (body)
        curl_easy_setopt (curl, CURLOPT_POSTFIELDS, body);
    curl_easy_setopt (curl, CURLOPT_WRITEFUNCTION, s_write_body);
    curl_easy_setopt (curl, CURLOPT_WRITEDATA, response);
    curl_easy_setopt (curl, CURLOPT_HEADERFUNCTION, s_write_header);
    curl_easy_setopt (curl, CURLOPT_HEADERDATA, response);
    curl_easy_setopt (curl, CURLOPT_TIMEOUT_MS, 30000L);
    curl_easy_setopt (curl, CURLOPT_NOSIGNAL, 1L);
    if (curl_easy_perform (curl) == CURLE_OK)
        curl_easy_getinfo (curl, CURLINFO_RESPONSE_CODE, &response->status);
    curl_slist_free_all (headers);
    curl_easy_cleanup (curl);
}

void
it_response_free (it_response_t *response)
{
    free (response->body);
    response->body = NULL;
}

json_t *
it_json (it_response_t *response)
{
    json_error_t error;
    json_t *json = json_loads (response->body ? response->body : "", 0, &error);
    cr_assert_not_null (json, "not JSON (%s): %s", error.text, response->body);
    return json;
}

bool
it_alive (pid_t pid)
{
    char path[64], state = 0;
    snprintf (path, sizeof path, "/proc/%d/stat", (int) pid);
    FILE *f = fopen (path, "r");
    if (!f)
        return false;
    //  pid (comm) state ...; comm may hold spaces, so find the last ')'.
    char line[512];
    if (fgets (line, sizeof line, f)) {
        char *close = strrchr (line, ')');
        if (close && close[1] == ' ')
            state = close[2];
    }
    fclose (f);
    return state && state != 'Z' && state != 'X';
}

size_t
it_children (pid_t parent, const char *name, pid_t *pids, size_t max)
{
    size_t count = 0;
    DIR *proc = opendir ("/proc");
    struct dirent *entry;
    while (proc && (entry = readdir (proc)) && count < max) {
        pid_t pid = (pid_t) atoi (entry->d_name);
        if (pid <= 0)
            continue;
        char path[64], line[512];
        snprintf (path, sizeof path, "/proc/%d/stat", (int) pid);
        FILE *f = fopen (path, "r");
        if (!f)
            continue;
        pid_t ppid = 0;
        char state = 0;
        if (fgets (line, sizeof line, f)) {
            char *close = strrchr (line, ')');
            if (close)
                sscanf (close + 2, "%c %d", &state, &ppid);
        }
        fclose (f);
        if (ppid != parent || state == 'Z')
            continue;
        snprintf (path, sizeof path, "/proc/%d/cmdline", (int) pid);
        f = fopen (path, "r");
        if (!f)
            continue;
        size_t n = fread (line, 1, sizeof line - 1, f);
        fclose (f);
        line[n] = 0;
        if (strstr (line, name))
            pids[count++] = pid;
    }
    if (proc)
        closedir (proc);
    return count;
}

static bool
s_ready (void *arg)
{
    it_suite_t *suite = arg;
    char url[128];
    snprintf (url, sizeof url, "%s/api/health/ready", suite->base);
    it_response_t response;
    it_http ("GET", url, NULL, false, &response);
    bool ok = response.status == 200;
    it_response_free (&response);
    if (!ok || !it_alive (suite->supervisor))
        return false;
    //  Ready needs one chat instance; the tests want both replicas.
    snprintf (url, sizeof url, "%s/api/health", suite->base);
    it_http ("GET", url, NULL, false, &response);
    json_t *health = json_loads (response.body ? response.body : "", 0, NULL);
    it_response_free (&response);
    json_int_t chat = json_integer_value (json_object_get (
        json_object_get (json_object_get (health, "services"), "chat"), "instances"));
    json_decref (health);
    return chat >= 2;
}

static bool
s_live (void *arg)
{
    it_suite_t *suite = arg;
    char url[128];
    snprintf (url, sizeof url, "%s/api/health/live", suite->base);
    it_response_t response;
    it_http ("GET", url, NULL, false, &response);
    bool ok = response.status == 200;
    it_response_free (&response);
    return ok && it_alive (suite->supervisor);
}

static void s_suite_start (it_suite_t *suite, const char *const *extra,
                           bool (*until) (void *));

void
it_suite_start (it_suite_t *suite, const char *const *extra)
{
    s_suite_start (suite, extra, s_ready);
}

void
it_suite_start_live (it_suite_t *suite, const char *const *extra)
{
    s_suite_start (suite, extra, s_live);
}

static void
s_suite_start (it_suite_t *suite, const char *const *extra, bool (*until) (void *))
{
    memset (suite, 0, sizeof *suite);
    const char *bin = getenv ("LLMRT_BIN_DIR");
    const char *src = getenv ("LLMRT_SOURCE_DIR");
    cr_assert_not_null (bin, "LLMRT_BIN_DIR is not set (run through ctest)");
    cr_assert_not_null (src, "LLMRT_SOURCE_DIR is not set (run through ctest)");
    snprintf (suite->run_dir, sizeof suite->run_dir, "/tmp/llmrt-it-XXXXXX");
    cr_assert_not_null (mkdtemp (suite->run_dir));
    suite->http_port = it_free_port ();
    suite->backend_port = it_free_port ();
    suite->redis_port = it_free_port ();
    snprintf (suite->base, sizeof suite->base, "http://127.0.0.1:%d", suite->http_port);

    char supervisor[512], conf[512], log_path[300];
    snprintf (supervisor, sizeof supervisor, "%s/supervisor", bin);
    snprintf (conf, sizeof conf, "%s/deploy/local/suite.conf", src);
    snprintf (log_path, sizeof log_path, "%s/suite.log", suite->run_dir);
    pid_t pid = fork ();
    cr_assert_geq (pid, 0);
    if (pid == 0) {
        //  A test that fails (or times out) ends without it_suite_stop: the
        //  suite must not outlive it. SIGTERM stops the supervisor cleanly.
        prctl (PR_SET_PDEATHSIG, SIGTERM);
        char value[300];
        snprintf (value, sizeof value, "%d", suite->http_port);
        setenv ("SERVER_PORT", value, 1);
        setenv ("SERVER_HOST", "127.0.0.1", 1);
        snprintf (value, sizeof value, "tcp://127.0.0.1:%d", suite->backend_port);
        setenv ("GATEWAY_BACKEND_BIND", value, 1);
        setenv ("GATEWAY_ENDPOINT", value, 1);
        snprintf (value, sizeof value, "redis://127.0.0.1:%d", suite->redis_port);
        setenv ("REDIS_URL", value, 1);
        setenv ("RUN_DIR", suite->run_dir, 1);
        //  The metrics hub on a socket in RUN_DIR: no port to collide on.
        snprintf (value, sizeof value, "ipc://%s/supervisor.sock", suite->run_dir);
        setenv ("SUPERVISOR_ENDPOINT", value, 1);
        setenv ("ADMIN_API_KEY", IT_ADMIN_KEY, 1);
        setenv ("HEARTBEAT_INTERVAL_MS", "100", 1);
        setenv ("HEARTBEAT_LIVENESS", "5", 1);
        setenv ("SUPERVISOR_RESTART_INITIAL_MS", "100", 1);
        setenv ("SUPERVISOR_GRACE_MS", "5000", 1);
        setenv ("DRAIN_TIMEOUT_MS", "2000", 1);
        for (size_t i = 0; extra && extra[i]; i++)
            putenv ((char *) extra[i]);
        int fd = open (log_path, O_WRONLY | O_CREAT | O_APPEND, 0644);
        dup2 (fd, STDERR_FILENO);
        dup2 (fd, STDOUT_FILENO);
        close (fd);
        execl (supervisor, "supervisor", "-c", conf, (char *) NULL);
        _exit (127);
    }
    suite->supervisor = pid;
    if (!it_wait (until, suite, 30000)) {
        char cmd[400];
        snprintf (cmd, sizeof cmd, "tail -n 40 %s >&2", log_path);
        int rc = system (cmd);
        (void) rc;
        it_suite_stop (suite);
        cr_assert_fail ("the suite did not come up within 30 s (log above)");
    }
}

void
it_suite_stop (it_suite_t *suite)
{
    if (suite->supervisor > 0) {
        kill (suite->supervisor, SIGTERM);
        long long until = it_now_ms () + 20000;
        int status;
        while (waitpid (suite->supervisor, &status, WNOHANG) == 0 && it_now_ms () < until)
            usleep (20 * 1000);
        if (it_now_ms () >= until) {
            kill (suite->supervisor, SIGKILL);
            waitpid (suite->supervisor, &status, 0);
        }
        suite->supervisor = 0;
    }
    if (suite->run_dir[0] && !getenv ("IT_KEEP_RUN_DIR")) {
        char cmd[400];
        snprintf (cmd, sizeof cmd, "rm -rf '%s'", suite->run_dir);
        int rc = system (cmd);
        (void) rc;
    }
}
