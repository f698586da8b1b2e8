/*  test_config.c: a bad setting stops each program at start-up with exit
    status 2 and a message naming the variable (the supervisor stops the
    whole suite on a 2 at a child's first start; any other status would make
    it restart the child in a loop). Each program runs alone from
    LLMRT_BIN_DIR in a temporary RUN_DIR, its ports and endpoints pointed
    where nothing answers; a program that is still running after a few
    seconds took the setting, and the test says so. A bind failure (a port
    in use) stays a runtime error, status 1. */
#include <criterion/criterion.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>
#include "cm_common.h"
#include "test_dir.h"
#include "test_port.h"

//  A program that takes a bad setting starts and runs; give it this long.
#define S_PATIENCE_MS 5000
//  What s_run returns for a program still running after S_PATIENCE_MS.
#define S_STILL_RUNNING -2

static char s_dir[256];  //  RUN_DIR of the runs
static char s_file[300]; //  a regular file in it

static void
s_setup (void)
{
    test_dir_make (s_dir, sizeof s_dir, "/tmp/llmrt-config-XXXXXX");
    snprintf (s_file, sizeof s_file, "%s/a-file", s_dir);
    FILE *file = fopen (s_file, "w");
    cr_assert_not_null (file);
    fclose (file);
}

static void
s_teardown (void)
{
    test_dir_remove (s_dir);
}

TestSuite (config, .init = s_setup, .fini = s_teardown, .timeout = 300);

//  Run program alone with a clean environment: safe defaults, then env
//  ("NAME=VALUE"..., NULL-terminated; they win). Its stderr goes to
//  out. Returns its exit status, -1 when a signal ended it, or
//  S_STILL_RUNNING (then it is killed) when it still runs after
//  S_PATIENCE_MS or once its stderr holds started_says (NULL: never).
static int
s_run (const char *program, const char *const *env, const char *started_says, char *out,
       size_t outlen)
{
    const char *bin = getenv ("LLMRT_BIN_DIR");
    cr_assert_not_null (bin, "LLMRT_BIN_DIR is set by ctest");
    char path[512];
    snprintf (path, sizeof path, "%s/%s", bin, program);
    char defaults[6][320];
    int port = test_port_free ();
    snprintf (defaults[0], sizeof defaults[0], "RUN_DIR=%s", s_dir);
    snprintf (defaults[1], sizeof defaults[1], "GATEWAY_BACKEND_BIND=tcp://127.0.0.1:%d",
              port);
    snprintf (defaults[2], sizeof defaults[2], "GATEWAY_ENDPOINT=tcp://127.0.0.1:%d",
              port);
    snprintf (defaults[3], sizeof defaults[3], "SUPERVISOR_ENDPOINT=ipc://%s/sup.sock",
              s_dir);
    snprintf (defaults[4], sizeof defaults[4], "REDIS_URL=redis://127.0.0.1:%d",
              test_port_free ());
    snprintf (defaults[5], sizeof defaults[5], "SERVER_PORT=0");
    //  getenv takes the first of two: a default env overrides is left out.
    const char *envp[64];
    size_t n = 0;
    envp[n++] = "PATH=/usr/bin:/bin";
    for (size_t i = 0; i < 6; i++) {
        size_t name = strcspn (defaults[i], "=") + 1;
        bool overridden = false;
        for (size_t j = 0; env[j]; j++)
            overridden |= !strncmp (env[j], defaults[i], name);
        if (!overridden)
            envp[n++] = defaults[i];
    }
    for (size_t i = 0; env[i] && n < 63; i++)
        envp[n++] = env[i];
    envp[n] = NULL;

    int pipefd[2];
    cr_assert_eq (pipe (pipefd), 0);
    pid_t pid = fork ();
    cr_assert_geq (pid, 0);
    if (pid == 0) {
        dup2 (pipefd[1], STDERR_FILENO);
        close (pipefd[0]);
        close (pipefd[1]);
        execve (path, (char *const[]){(char *) program, NULL}, (char *const *) envp);
        _exit (127);
    }
    close (pipefd[1]);
    fcntl (pipefd[0], F_SETFL, O_NONBLOCK);
    //  Until it exits, or says started (then it is stopped), or the time is up.
    int status = 0;
    int64_t until = cm_clock_mono_ms () + S_PATIENCE_MS;
    pid_t done = 0;
    size_t used = 0;
    bool started = false;
    while (true) {
        ssize_t got;
        while (used + 1 < outlen &&
               (got = read (pipefd[0], out + used, outlen - 1 - used)) > 0)
            used += (size_t) got;
        out[used] = 0;
        started = started_says && strstr (out, started_says);
        done = waitpid (pid, &status, WNOHANG);
        if (done || started || cm_clock_mono_ms () >= until)
            break;
        usleep (10 * 1000);
    }
    bool running = done == 0;
    if (running) {
        kill (pid, SIGKILL);
        waitpid (pid, &status, 0);
    }
    ssize_t got;
    while (used + 1 < outlen &&
           (got = read (pipefd[0], out + used, outlen - 1 - used)) > 0)
        used += (size_t) got;
    out[used] = 0;
    close (pipefd[0]);
    if (running)
        return S_STILL_RUNNING;
    return WIFEXITED (status) ? WEXITSTATUS (status) : -1;
}

//  One bad setting: the program, its environment, and the words that its
//  message must hold (the variable's name, at least).
typedef struct {
    const char *program;
    const char *env[4];
    const char *says[2];
} s_case_t;

static void
s_expect_refused (const s_case_t *cases, size_t count)
{
    for (size_t i = 0; i < count; i++) {
        char out[8192];
        int rc = s_run (cases[i].program, cases[i].env, NULL, out, sizeof out);
        char setting[160];
        snprintf (setting, sizeof setting, "%s %.60s%s%.60s", cases[i].program,
                  cases[i].env[0], cases[i].env[1] ? " " : "",
                  cases[i].env[1] ? cases[i].env[1] : "");
        cr_expect_eq (rc, 2, "%s: status %d (-1: a signal, -2: it started)\n%s", setting,
                      rc, out);
        for (size_t j = 0; j < 2 && cases[i].says[j]; j++)
            cr_expect (strstr (out, cases[i].says[j]), "%s: the message lacks '%s':\n%s",
                       setting, cases[i].says[j], out);
    }
}

//  "INSTANCE_ID=" and n bytes of id, in text (size bytes).
static const char *
s_long_id (char *text, size_t size, size_t n)
{
    cr_assert_lt (n + 13, size);
    strcpy (text, "INSTANCE_ID=");
    memset (text + 12, 'i', n);
    text[12 + n] = 0;
    return text;
}

Test (config, walkthrough_a_bad_setting_is_status_2_naming_it)
{
    const char *env[] = {"SERVER_HOST=abc", NULL};
    char out[4096];
    cr_assert_eq (s_run ("gateway", env, NULL, out, sizeof out), 2, "%s", out);
    cr_assert (strstr (out, "SERVER_HOST: 'abc' is not an IPv4 address"), "%s", out);
}

Test (config, the_gateway_refuses_what_could_never_work)
{
    char storage[320];
    snprintf (storage, sizeof storage, "STORAGE_DIR=%s", s_file);
    const s_case_t cases[] = {
        {"gateway", {"SERVER_HOST=localhost"}, {"SERVER_HOST"}},
        {"gateway", {"SERVER_HOST=::1"}, {"SERVER_HOST"}},
        {"gateway", {"SERVER_HOST=256.0.0.1"}, {"SERVER_HOST"}},
        {"gateway", {"SERVER_HOST=127.0.0.1 "}, {"SERVER_HOST"}},
        {"gateway", {"SERVER_HOST=0"}, {"SERVER_HOST"}},
        {"gateway",
         {"RATE_LIMIT_GLOBAL_RPS=1", "RATE_LIMIT_GLOBAL_BURST=1000000000"},
         {"RATE_LIMIT_GLOBAL_BURST", "RATE_LIMIT_GLOBAL_RPS"}},
        {"gateway", {"REDIS_URL=redis://127.0.0.1:notaport"}, {"REDIS_URL"}},
        {"gateway", {"REDIS_URL=http://127.0.0.1:6379"}, {"REDIS_URL"}},
        {"gateway", {"REDIS_URL=redis://:6990"}, {"REDIS_URL"}},
        {"gateway", {"REDIS_URL=redis://h:99999"}, {"REDIS_URL"}},
        {"gateway", {"REDIS_URL=redis://h:6990/abc"}, {"REDIS_URL"}},
        {"gateway", {"ADMIN_API_KEY= "}, {"ADMIN_API_KEY"}},
        {"gateway", {"ADMIN_API_KEY=a b"}, {"ADMIN_API_KEY"}},
        {"gateway", {"LOG_LEVEL=verbose"}, {"LOG_LEVEL"}},
        {"gateway", {"GATEWAY_BACKEND_BIND=tcp://127.0.0.1:0"}, {"GATEWAY_BACKEND_BIND"}},
        {"gateway", {"GATEWAY_BACKEND_BIND=tcp://127.0.0.1:*"}, {"GATEWAY_BACKEND_BIND"}},
        {"gateway",
         {"GATEWAY_BACKEND_BIND=tcp://127.0.0.1: 5990"},
         {"GATEWAY_BACKEND_BIND"}},
        {"gateway",
         {"GATEWAY_BACKEND_BIND=tcp://127.0.0.1:+5990"},
         {"GATEWAY_BACKEND_BIND"}},
        {"gateway", {"SUPERVISOR_ENDPOINT=tcp://*:5990"}, {"SUPERVISOR_ENDPOINT"}},
        {"gateway", {"SUPERVISOR_ENDPOINT=tcp://127.0.0.1:0"}, {"SUPERVISOR_ENDPOINT"}},
        {"gateway", {"SUPERVISOR_ENDPOINT=inproc://x"}, {"SUPERVISOR_ENDPOINT"}},
        {"gateway", {storage}, {"STORAGE_DIR"}},
    };
    s_expect_refused (cases, sizeof cases / sizeof *cases);
}

Test (config, every_daemon_refuses_a_bad_instance_id_endpoint_log_level_or_storage)
{
    char storage[320], run_dir[320], id_256[300], id_300[400], id_255[300];
    snprintf (storage, sizeof storage, "STORAGE_DIR=%s", s_file);
    snprintf (run_dir, sizeof run_dir, "RUN_DIR=%s", s_file);
    const char *daemons[] = {"chatd", "ingestd", "agentd"};
    for (size_t d = 0; d < 3; d++) {
        const char *p = daemons[d];
        const s_case_t cases[] = {
            //  A routing id of 256 bytes made czmq abort (SIGABRT).
            {p, {s_long_id (id_256, sizeof id_256, 256)}, {"INSTANCE_ID"}},
            {p, {s_long_id (id_300, sizeof id_300, 300)}, {"INSTANCE_ID"}},
            {p, {"INSTANCE_ID=a\nb"}, {"INSTANCE_ID"}},
            {p, {"INSTANCE_ID= "}, {"INSTANCE_ID"}},
            {p, {"LOG_LEVEL=trace"}, {"LOG_LEVEL"}},
            {p, {"LOG_LEVEL=0"}, {"LOG_LEVEL"}},
            {p, {"GATEWAY_ENDPOINT=tcp://*:5990"}, {"GATEWAY_ENDPOINT"}},
            {p, {"GATEWAY_ENDPOINT=tcp://127.0.0.1:*"}, {"GATEWAY_ENDPOINT"}},
            {p, {"GATEWAY_ENDPOINT=tcp://127.0.0.1:0"}, {"GATEWAY_ENDPOINT"}},
            {p, {"GATEWAY_ENDPOINT=tcp://127.0.0.1: 5990"}, {"GATEWAY_ENDPOINT"}},
            {p, {"GATEWAY_ENDPOINT=tcp://127.0.0.1:+5990"}, {"GATEWAY_ENDPOINT"}},
            {p, {"GATEWAY_ENDPOINT=inproc://x"}, {"GATEWAY_ENDPOINT"}},
            {p, {"SUPERVISOR_ENDPOINT=tcp://*:5556"}, {"SUPERVISOR_ENDPOINT"}},
            {p, {storage}, {"STORAGE_DIR"}},
            //  STORAGE_DIR unset: it is $RUN_DIR/storage; both are named.
            {p, {run_dir}, {"RUN_DIR", "STORAGE_DIR"}},
        };
        s_expect_refused (cases, sizeof cases / sizeof *cases);
    }
    //  The longest id is fine: the daemon starts and connects with it.
    char out[4096];
    const char *longest[] = {s_long_id (id_255, sizeof id_255, 255), NULL};
    cr_expect_eq (s_run ("agentd", longest, "connecting to", out, sizeof out),
                  S_STILL_RUNNING, "%s", out);
    cr_expect (strstr (out, id_255 + 12), "%s", out);
}

Test (config, provider_urls_need_a_host_and_a_port_that_can_be)
{
    const s_case_t cases[] = {
        {"chatd",
         {"LLM_PROVIDER=openai", "LLM_BASE_URL=http:///v1"},
         {"LLM_BASE_URL: 'http:///v1' has no host"}},
        {"chatd",
         {"LLM_PROVIDER=openai", "LLM_BASE_URL=http://127.0.0.1:0/v1"},
         {"LLM_BASE_URL"}},
        {"chatd",
         {"LLM_PROVIDER=openai", "LLM_BASE_URL=http://127.0.0.1:11434/v1",
          "LLM_MODEL=llama\nx"},
         {"LLM_MODEL"}},
        {"agentd", {"LLM_PROVIDER=openai", "LLM_BASE_URL=http:///v1"}, {"LLM_BASE_URL"}},
        {"chatd",
         {"EMBEDDING_PROVIDER=openai", "EMBEDDING_BASE_URL=http:///v1"},
         {"EMBEDDING_BASE_URL: 'http:///v1' has no host"}},
        {"ingestd",
         {"EMBEDDING_PROVIDER=openai", "EMBEDDING_BASE_URL=http://127.0.0.1:0/v1"},
         {"EMBEDDING_BASE_URL"}},
        {"ingestd", {"REDIS_URL=redis://h:+6990"}, {"REDIS_URL"}},
        //  Beats every fifth of it: a few hundred ms would beat Redis all
        //  the time.
        {"ingestd",
         {"EMBEDDING_INSTANCE_TIMEOUT_MS=500"},
         {"EMBEDDING_INSTANCE_TIMEOUT_MS (500) must be 0 (off) or at least 1000"}},
    };
    s_expect_refused (cases, sizeof cases / sizeof *cases);
}

Test (config, agent_allowlist_items_are_host_names_or_addresses)
{
    const char *bad[] = {"http://example.com", "host:8080", "*.example.com",
                         "127.0.0.1/8",        "a b",       ",,"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        char item[128];
        snprintf (item, sizeof item, "AGENT_HTTP_ALLOWLIST=%s", bad[i]);
        const s_case_t refused = {"agentd", {item}, {"AGENT_HTTP_ALLOWLIST"}};
        s_expect_refused (&refused, 1);
    }
}

Test (config, a_port_in_use_stays_a_runtime_error)
{
    //  Not a bad setting: another process may free the port; status 1, and
    //  the supervisor restarts the gateway with back-off.
    int holder = socket (AF_INET, SOCK_STREAM, 0);
    cr_assert_geq (holder, 0);
    struct sockaddr_in addr = {.sin_family = AF_INET,
                               .sin_addr.s_addr = htonl (INADDR_LOOPBACK)};
    cr_assert_eq (bind (holder, (struct sockaddr *) &addr, sizeof addr), 0);
    cr_assert_eq (listen (holder, 1), 0);
    socklen_t len = sizeof addr;
    getsockname (holder, (struct sockaddr *) &addr, &len);
    char port[32];
    snprintf (port, sizeof port, "SERVER_PORT=%d", ntohs (addr.sin_port));
    const char *env[] = {"SERVER_HOST=127.0.0.1", port, NULL};
    char out[4096];
    cr_assert_eq (s_run ("gateway", env, NULL, out, sizeof out), 1, "%s", out);
    cr_assert (strstr (out, "cannot listen"), "%s", out);
    close (holder);
}
