/*  it_harness.c: see it_harness.h. */
#include "it_harness.h"
#include "test_port.h"
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
    return test_port_free ();
}

//  Append n bytes to a growing NUL-terminated buffer (*data, *size).
static void
s_grow (char **data, size_t *size, const char *bytes, size_t n)
{
    *data = realloc (*data, *size + n + 1);
    memcpy (*data + *size, bytes, n);
    *size += n;
    (*data)[*size] = 0;
}

//  Append n bytes to a fixed NUL-terminated buffer, when they fit.
static void
s_append (char *buffer, size_t capacity, const char *bytes, size_t n)
{
    size_t used = strlen (buffer);
    if (used + n < capacity) {
        memcpy (buffer + used, bytes, n);
        buffer[used + n] = 0;
    }
}

static size_t
s_write_body (char *data, size_t size, size_t nmemb, void *arg)
{
    it_response_t *response = arg;
    s_grow (&response->body, &response->size, data, size * nmemb);
    return size * nmemb;
}

static size_t
s_write_header (char *data, size_t size, size_t nmemb, void *arg)
{
    it_response_t *response = arg;
    s_append (response->headers, sizeof response->headers, data, size * nmemb);
    return size * nmemb;
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

//  The HTTP status of a GET to the suite's base + path (no key).
static long
s_status (it_suite_t *suite, const char *path)
{
    char url[128];
    it_url (suite, url, sizeof url, path);
    it_response_t response;
    it_http ("GET", url, NULL, false, &response);
    long status = response.status;
    it_response_free (&response);
    return status;
}

static bool
s_ready (void *arg)
{
    it_suite_t *suite = arg;
    if (s_status (suite, "/api/health/ready") != 200 || !it_alive (suite->supervisor))
        return false;
    //  Ready needs one chat instance; the tests want both replicas.
    char url[128];
    it_url (suite, url, sizeof url, "/api/health");
    it_response_t response;
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
    return s_status (suite, "/api/health/live") == 200 && it_alive (suite->supervisor);
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
        //  Heartbeat warnings fill a log fast; what went wrong is elsewhere.
        snprintf (cmd, sizeof cmd, "grep -v 'no heartbeat' %s | tail -n 40 >&2",
                  log_path);
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

//  --- the database -------------------------------------------------------------

sqlite3 *
it_db_open (const it_suite_t *suite)
{
    char path[512];
    snprintf (path, sizeof path, "%s/storage/llmrt.db", suite->run_dir);
    sqlite3 *db = NULL;
    int rc = sqlite3_open_v2 (path, &db, SQLITE_OPEN_READONLY, NULL);
    cr_assert_eq (rc, SQLITE_OK, "cannot open %s: %s", path, sqlite3_errmsg (db));
    sqlite3_busy_timeout (db, 5000);
    return db;
}

int64_t
it_db_int (sqlite3 *db, const char *sql, const char *text)
{
    sqlite3_stmt *stmt = NULL;
    cr_assert_eq (sqlite3_prepare_v2 (db, sql, -1, &stmt, NULL), SQLITE_OK, "%s: %s", sql,
                  sqlite3_errmsg (db));
    if (text)
        sqlite3_bind_text (stmt, 1, text, -1, SQLITE_TRANSIENT);
    int rc = sqlite3_step (stmt);
    cr_assert (rc == SQLITE_ROW || rc == SQLITE_DONE, "%s: %s", sql, sqlite3_errmsg (db));
    int64_t value = rc == SQLITE_ROW ? sqlite3_column_int64 (stmt, 0) : 0;
    sqlite3_finalize (stmt);
    return value;
}

//  --- small helpers and the SSE client -------------------------------------------

void
it_url (const it_suite_t *suite, char *url, size_t size, const char *path)
{
    snprintf (url, size, "%s%s", suite->base, path);
}

void
it_create_workspace (const it_suite_t *suite, const char *body)
{
    char url[256];
    it_url (suite, url, sizeof url, "/api/v1/workspace/new");
    it_response_t r;
    it_http ("POST", url, body, true, &r);
    cr_assert_eq (r.status, 200, "workspace/new: %ld %s", r.status, r.body);
    it_response_free (&r);
}

json_t *
it_get_json (const it_suite_t *suite, const char *path, long *status)
{
    char url[256];
    it_url (suite, url, sizeof url, path);
    it_response_t r;
    it_http ("GET", url, NULL, false, &r);
    *status = r.status;
    json_t *json = it_json (&r);
    it_response_free (&r);
    return json;
}

const char *
it_str (json_t *object, const char *key)
{
    return json_string_value (json_object_get (object, key));
}

void
it_stream_init (it_stream_t *stream, const char *url, const char *body, int close_after)
{
    memset (stream, 0, sizeof *stream);
    pthread_mutex_init (&stream->lock, NULL);
    snprintf (stream->url, sizeof stream->url, "%s", url);
    stream->body = body;
    stream->close_after = close_after;
}

void
it_stream_free (it_stream_t *stream)
{
    free (stream->data);
    stream->data = NULL;
    pthread_mutex_destroy (&stream->lock);
}

static size_t
s_stream_write (char *data, size_t size, size_t nmemb, void *arg)
{
    it_stream_t *stream = arg;
    size_t n = size * nmemb;
    pthread_mutex_lock (&stream->lock);
    s_grow (&stream->data, &stream->size, data, n);
    int tokens = 0;
    for (const char *p = stream->data; (p = strstr (p, "\"textResponseChunk\"")); p++)
        tokens++;
    stream->tokens = tokens;
    pthread_mutex_unlock (&stream->lock);
    //  Returning less than n makes libcurl abort and close the connection.
    return stream->close_after && tokens >= stream->close_after ? 0 : n;
}

static size_t
s_stream_header (char *data, size_t size, size_t nmemb, void *arg)
{
    it_stream_t *stream = arg;
    s_append (stream->headers, sizeof stream->headers, data, size * nmemb);
    return size * nmemb;
}

//  The moment the client's socket really closes: the figure a disconnect
//  is measured from.
static int
s_stream_close_socket (void *arg, curl_socket_t fd)
{
    it_stream_t *stream = arg;
    atomic_store (&stream->closed_at, it_now_ms ());
    return close (fd);
}

void *
it_stream_run (void *arg)
{
    it_stream_t *stream = arg;
    CURL *curl = curl_easy_init ();
    struct curl_slist *headers = NULL;
    headers = curl_slist_append (headers, "Content-Type: application/json");
    headers = curl_slist_append (headers, "Authorization: Bearer " IT_ADMIN_KEY);
    curl_easy_setopt (curl, CURLOPT_URL, stream->url);
    curl_easy_setopt (curl, CURLOPT_HTTPHEADER, headers);
    curl_easy_setopt (curl, CURLOPT_POSTFIELDS, stream->body);
    curl_easy_setopt (curl, CURLOPT_WRITEFUNCTION, s_stream_write);
    curl_easy_setopt (curl, CURLOPT_WRITEDATA, stream);
    curl_easy_setopt (curl, CURLOPT_HEADERFUNCTION, s_stream_header);
    curl_easy_setopt (curl, CURLOPT_HEADERDATA, stream);
    curl_easy_setopt (curl, CURLOPT_CLOSESOCKETFUNCTION, s_stream_close_socket);
    curl_easy_setopt (curl, CURLOPT_CLOSESOCKETDATA, stream);
    curl_easy_setopt (curl, CURLOPT_TIMEOUT_MS, 30000L);
    curl_easy_setopt (curl, CURLOPT_NOSIGNAL, 1L);
    stream->result = curl_easy_perform (curl);
    curl_easy_getinfo (curl, CURLINFO_RESPONSE_CODE, &stream->status);
    curl_easy_cleanup (curl);
    curl_slist_free_all (headers);
    atomic_store (&stream->done, true);
    return NULL;
}

bool
it_stream_started (void *arg)
{
    it_stream_t *stream = arg;
    pthread_mutex_lock (&stream->lock);
    bool started = stream->size > 0;
    pthread_mutex_unlock (&stream->lock);
    return started;
}

bool
it_stream_done (void *arg)
{
    return atomic_load (&((it_stream_t *) arg)->done);
}

json_t *
it_events (const char *text)
{
    json_t *events = json_array ();
    const char *p = text ? text : "";
    while (*p) {
        cr_assert_eq (strncmp (p, "data: ", 6), 0, "not an event: %.60s", p);
        const char *end = strstr (p, "\n\n");
        cr_assert_not_null (end, "event not terminated by a blank line");
        json_t *event = json_loadb (p + 6, (size_t) (end - p - 6), 0, NULL);
        cr_assert_not_null (event, "event is not JSON: %.80s", p + 6);
        json_array_append_new (events, event);
        p = end + 2;
    }
    return events;
}
