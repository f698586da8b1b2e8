/*  test_sup_run.c: the real build/bin/supervisor on small suite files whose
    children are sleep and sh: restart after kill -9, graceful stop, SIGKILL
    after the grace period, giving up on a crash loop, start-up errors (exit
    2, nothing made or started), the admin key and the environment the
    children see. Every wait is a poll
    with a generous deadline, so a slow machine only makes it slower. */
#include <criterion/criterion.h>
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include "cm_common.h"
#include "test_dir.h"

//  Deadline for anything that should happen "soon", however loaded the box.
#define S_PATIENCE_MS 30000

static pid_t s_supervisor;    //  the supervisor under test, 0 when none
static char s_dir[64];        //  scratch directory of the test
static char s_path[PATH_MAX]; //  scratch path
static pid_t s_seen[256];     //  every child seen, for the clean-up
static size_t s_seen_size;    //  entries in s_seen

static void
s_setup (void)
{
    strcpy (s_dir, "/tmp/test_sup_run.XXXXXX");
    cr_assert_not_null (mkdtemp (s_dir));
    //  Fast restarts, a short grace, a key so none is generated.
    setenv ("RUN_DIR", s_dir, 1);
    setenv ("ADMIN_API_KEY", "test-admin-key", 1);
    setenv ("SUPERVISOR_RESTART_INITIAL_MS", "20", 1);
    setenv ("SUPERVISOR_RESTART_MAX_MS", "200", 1);
    setenv ("SUPERVISOR_GRACE_MS", "10000", 1);
    //  The metrics hub on a socket of its own: no port shared with a suite
    //  that may be running on this machine.
    char endpoint[128];
    snprintf (endpoint, sizeof endpoint, "ipc://%s/metrics.sock", s_dir);
    setenv ("SUPERVISOR_ENDPOINT", endpoint, 1);
    unsetenv ("SUPERVISOR_MAX_CRASHES");
    unsetenv ("REDIS_URL");
    unsetenv ("BIN_DIR");
    unsetenv ("LOG_LEVEL");
    unsetenv ("SUPERVISOR_METRICS_ROLE");
}

//  Whatever happened, leave no process behind.
static void
s_teardown (void)
{
    if (s_supervisor > 0) {
        kill (s_supervisor, SIGKILL);
        waitpid (s_supervisor, NULL, 0);
        s_supervisor = 0;
    }
    for (size_t i = 0; i < s_seen_size; i++) {
        kill (-s_seen[i], SIGKILL);
        kill (s_seen[i], SIGKILL);
    }
    char command[128];
    snprintf (command, sizeof command, "rm -rf '%s'", s_dir);
    if (system (command))
        fprintf (stderr, "cannot remove %s\n", s_dir);
}

static void
s_sleep_ms (int ms)
{
    struct timespec ts = {ms / 1000, (long) (ms % 1000) * 1000000};
    nanosleep (&ts, NULL);
}

static const char *
s_file (const char *name)
{
    snprintf (s_path, sizeof s_path, "%s/%s", s_dir, name);
    return s_path;
}

//  Occurrences of needle in the supervisor's log.
static size_t
s_log_count (const char *needle)
{
    char *log = test_file_text (s_file ("stderr"));
    size_t count = 0;
    for (char *p = strstr (log, needle); p; p = strstr (p + 1, needle))
        count++;
    free (log);
    return count;
}

//  Some line of the log holds both needles.
static bool
s_log_line_has (const char *needle1, const char *needle2)
{
    char *log = test_file_text (s_file ("stderr"));
    bool found = false;
    for (char *line = strtok (log, "\n"); line && !found; line = strtok (NULL, "\n"))
        found = strstr (line, needle1) && strstr (line, needle2);
    free (log);
    return found;
}

static bool
s_wait_log (const char *needle)
{
    int64_t deadline = cm_clock_mono_ms () + S_PATIENCE_MS;
    while (s_log_count (needle) == 0) {
        if (cm_clock_mono_ms () > deadline)
            return false;
        s_sleep_ms (20);
    }
    return true;
}

//  Live (not zombie) processes whose parent is parent, sorted by /proc.
static size_t
s_children (pid_t parent, pid_t *pids, size_t max)
{
    size_t count = 0;
    DIR *proc = opendir ("/proc");
    cr_assert_not_null (proc);
    struct dirent *entry;
    while ((entry = readdir (proc)) && count < max) {
        if (!isdigit ((unsigned char) entry->d_name[0]))
            continue;
        char path[300];
        snprintf (path, sizeof path, "/proc/%s/stat", entry->d_name);
        FILE *file = fopen (path, "r");
        if (!file)
            continue;
        char line[1024] = "";
        bool read_ok = fgets (line, sizeof line, file) != NULL;
        fclose (file);
        //  pid (comm) state ppid ...: comm may hold anything, so go from
        //  the last ')'.
        char *close_paren = strrchr (line, ')');
        char state;
        int ppid;
        if (!read_ok || !close_paren ||
            sscanf (close_paren + 1, " %c %d", &state, &ppid) != 2)
            continue;
        if (ppid == parent && state != 'Z') {
            pids[count++] = (pid_t) atoi (entry->d_name);
            bool known = false;
            for (size_t i = 0; i < s_seen_size; i++)
                known = known || s_seen[i] == pids[count - 1];
            if (!known && s_seen_size < sizeof s_seen / sizeof s_seen[0])
                s_seen[s_seen_size++] = pids[count - 1];
        }
    }
    closedir (proc);
    return count;
}

//  Wait until parent has exactly count live children; fill pids.
static bool
s_wait_children (pid_t parent, size_t count, pid_t *pids)
{
    int64_t deadline = cm_clock_mono_ms () + S_PATIENCE_MS;
    while (s_children (parent, pids, 64) != count) {
        if (cm_clock_mono_ms () > deadline)
            return false;
        s_sleep_ms (20);
    }
    return true;
}

//  A process that exists and is not a zombie.
static bool
s_alive (pid_t pid)
{
    char path[64];
    snprintf (path, sizeof path, "/proc/%d/stat", (int) pid);
    FILE *file = fopen (path, "r");
    if (!file)
        return false;
    char line[1024] = "";
    bool read_ok = fgets (line, sizeof line, file) != NULL;
    fclose (file);
    char *close_paren = strrchr (line, ')');
    return read_ok && close_paren && close_paren[2] != 'Z';
}

static bool
s_wait_gone (pid_t pid)
{
    int64_t deadline = cm_clock_mono_ms () + S_PATIENCE_MS;
    while (s_alive (pid)) {
        if (cm_clock_mono_ms () > deadline)
            return false;
        s_sleep_ms (20);
    }
    return true;
}

//  Wait for the supervisor to exit; its wait status, or -1 on time-out.
static int
s_wait_exit (int64_t patience_ms)
{
    int64_t deadline = cm_clock_mono_ms () + patience_ms;
    while (true) {
        int status;
        pid_t pid = waitpid (s_supervisor, &status, WNOHANG);
        if (pid == s_supervisor) {
            s_supervisor = 0;
            //  In the sanitizer build, a leak or UB report fails the test
            //  even when it leaves the exit status alone.
            cr_assert_eq (s_log_count ("Sanitizer"), 0, "sanitizer report in the log");
            cr_assert_eq (s_log_count ("runtime error:"), 0, "UBSan report in the log");
            return status;
        }
        if (cm_clock_mono_ms () > deadline)
            return -1;
        s_sleep_ms (20);
    }
}

//  Write conf as the suite file and start the supervisor on it, its stdout
//  and stderr going to files in the scratch directory.
static void s_start_args (const char *arg1, const char *arg2);

static void
s_start (const char *conf)
{
    FILE *file = fopen (s_file ("suite.conf"), "w");
    cr_assert_not_null (file);
    fputs (conf, file);
    fclose (file);
    char config[PATH_MAX];
    snprintf (config, sizeof config, "%s/suite.conf", s_dir);
    s_start_args ("-c", config);
}

//  Start the supervisor with one or two arguments (arg2 may be NULL).
static void
s_start_args (const char *arg1, const char *arg2)
{
    const char *bin_dir = getenv ("LLMRT_BIN_DIR");
    cr_assert_not_null (bin_dir, "LLMRT_BIN_DIR is set by ctest");
    char program[PATH_MAX], out[PATH_MAX], err[PATH_MAX];
    snprintf (program, sizeof program, "%s/supervisor", bin_dir);
    snprintf (out, sizeof out, "%s/stdout", s_dir);
    snprintf (err, sizeof err, "%s/stderr", s_dir);
    pid_t pid = fork ();
    cr_assert_geq (pid, 0);
    if (pid == 0) {
        int fd_out = open (out, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        int fd_err = open (err, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (fd_out < 0 || fd_err < 0)
            _exit (126);
        dup2 (fd_out, STDOUT_FILENO);
        dup2 (fd_err, STDERR_FILENO);
        execl (program, program, arg1, arg2, (char *) NULL);
        _exit (127);
    }
    s_supervisor = pid;
}

Test (sup_run, walkthrough_restart_after_kill_then_stop, .init = s_setup,
      .fini = s_teardown)
{
    s_start ("[program:sleeper]\ncommand = sleep 1000\nreplicas = 2\n");
    pid_t first[64], now[64];
    cr_assert (s_wait_children (s_supervisor, 2, first), "two sleepers started");

    //  kill -9 one: a new pid takes its place, and the log says so.
    cr_assert_eq (kill (first[0], SIGKILL), 0);
    int64_t deadline = cm_clock_mono_ms () + S_PATIENCE_MS;
    bool replaced = false;
    while (!replaced && cm_clock_mono_ms () < deadline) {
        size_t n = s_children (s_supervisor, now, 64);
        replaced = n == 2 && now[0] != first[0] && now[1] != first[0];
        if (!replaced)
            s_sleep_ms (20);
    }
    cr_assert (replaced, "the killed sleeper was restarted");
    char needle[128];
    snprintf (needle, sizeof needle, "pid %d killed by signal 9", (int) first[0]);
    cr_assert (s_wait_log (needle), "exit logged with pid");
    pid_t fresh = now[0] == first[1] ? now[1] : now[0];
    snprintf (needle, sizeof needle, "pid %d (start 2)", (int) fresh);
    cr_assert (s_wait_log (needle), "restart logged with the new pid");
    cr_assert (s_wait_log ("restarting sleeper."));

    //  SIGINT: both sleepers stopped, exit 0.
    cr_assert_eq (kill (s_supervisor, SIGINT), 0);
    int status = s_wait_exit (S_PATIENCE_MS);
    cr_assert_neq (status, -1, "the supervisor exited");
    cr_assert (WIFEXITED (status) && WEXITSTATUS (status) == 0, "status 0x%x", status);
    cr_assert (s_wait_gone (now[0]) && s_wait_gone (now[1]));
}

Test (sup_run, sigterm_stops_every_child_within_grace, .init = s_setup,
      .fini = s_teardown)
{
    //  The shell stays as parent of its sleep: its whole group must go.
    s_start ("[program:a]\ncommand = sleep 1000\n"
             "[program:b]\ncommand = sh -c 'sleep 1000; echo never'\nreplicas = 2\n"
             "[program:c]\ncommand = sleep 1000\nstop_signal = INT\n");
    pid_t children[64], grandchildren[64];
    cr_assert (s_wait_children (s_supervisor, 4, children));
    size_t grand = 0;
    for (size_t i = 0; i < 4; i++) {
        pid_t found[64];
        int64_t deadline = cm_clock_mono_ms () + S_PATIENCE_MS;
        char path[64];
        snprintf (path, sizeof path, "/proc/%d/comm", (int) children[i]);
        char *comm = test_file_text (path);
        bool shell = !strncmp (comm, "sh", 2);
        free (comm);
        if (!shell)
            continue;
        while (s_children (children[i], found, 64) != 1 && cm_clock_mono_ms () < deadline)
            s_sleep_ms (20);
        cr_assert_eq (s_children (children[i], found, 64), 1, "sh started its sleep");
        grandchildren[grand++] = found[0];
    }
    cr_assert_eq (grand, 2);

    int64_t start = cm_clock_mono_ms ();
    cr_assert_eq (kill (s_supervisor, SIGTERM), 0);
    int status = s_wait_exit (S_PATIENCE_MS);
    cr_assert_neq (status, -1);
    cr_assert (WIFEXITED (status) && WEXITSTATUS (status) == 0, "status 0x%x", status);
    cr_assert_lt (cm_clock_mono_ms () - start, 10000, "within the grace period");
    for (size_t i = 0; i < 4; i++)
        cr_assert_not (s_alive (children[i]), "child %d is gone", (int) children[i]);
    for (size_t i = 0; i < grand; i++)
        cr_assert (s_wait_gone (grandchildren[i]), "grandchild %d is gone",
                   (int) grandchildren[i]);
    cr_assert_eq (s_log_count ("sending SIGKILL"), 0, "nobody needed SIGKILL");
    cr_assert (s_log_count ("sending INT to c.0"));
    cr_assert (s_log_count ("every child has exited"));
}

Test (sup_run, a_child_ignoring_sigterm_is_killed_after_grace, .init = s_setup,
      .fini = s_teardown)
{
    setenv ("SUPERVISOR_GRACE_MS", "300", 1);
    s_start ("[program:stubborn]\ncommand = sh -c 'trap \"\" TERM; sleep 1000; true'\n"
             "[program:polite]\ncommand = sleep 1000\n");
    pid_t children[64];
    cr_assert (s_wait_children (s_supervisor, 2, children));
    //  Let the shell set its trap before it is asked to stop.
    for (size_t i = 0; i < 2; i++) {
        pid_t found[64];
        char path[64];
        snprintf (path, sizeof path, "/proc/%d/comm", (int) children[i]);
        char *comm = test_file_text (path);
        bool shell = !strncmp (comm, "sh", 2);
        free (comm);
        int64_t deadline = cm_clock_mono_ms () + S_PATIENCE_MS;
        while (shell && s_children (children[i], found, 64) != 1 &&
               cm_clock_mono_ms () < deadline)
            s_sleep_ms (20);
    }
    int64_t start = cm_clock_mono_ms ();
    cr_assert_eq (kill (s_supervisor, SIGTERM), 0);
    int status = s_wait_exit (S_PATIENCE_MS);
    cr_assert_neq (status, -1);
    cr_assert (WIFEXITED (status) && WEXITSTATUS (status) == 0, "status 0x%x", status);
    cr_assert_geq (cm_clock_mono_ms () - start, 300, "the grace period was given");
    cr_assert (s_log_line_has ("stubborn.0 pid", "sending SIGKILL"));
    cr_assert (s_log_count ("killed by signal 9"));
    for (size_t i = 0; i < s_seen_size; i++)
        cr_assert (s_wait_gone (s_seen[i]), "pid %d is gone", (int) s_seen[i]);
}

Test (sup_run, a_crash_loop_is_given_up_loudly, .init = s_setup, .fini = s_teardown)
{
    setenv ("SUPERVISOR_MAX_CRASHES", "3", 1);
    s_start ("[program:crasher]\ncommand = sh -c 'exit 7'\n"
             "[program:steady]\ncommand = sleep 1000\n");
    cr_assert (s_wait_log ("ERROR: crasher.0 exited 3 times"), "give-up logged");
    cr_assert (s_log_count ("GIVING UP"));
    cr_assert_eq (s_log_count ("crasher.0 pid"), 6,
                  "3 starts and 3 exits, each with a pid");
    cr_assert_eq (s_log_count ("exited with status 7"), 3);
    //  The rest of the suite runs on.
    pid_t children[64];
    cr_assert (s_wait_children (s_supervisor, 1, children));
    cr_assert_eq (waitpid (s_supervisor, NULL, WNOHANG), 0, "still supervising");
    cr_assert_eq (kill (s_supervisor, SIGTERM), 0);
    int status = s_wait_exit (S_PATIENCE_MS);
    cr_assert (status != -1 && WIFEXITED (status) && WEXITSTATUS (status) == 0);
    cr_assert_eq (s_log_count ("exited with status 7"), 3, "never restarted again");
}

Test (sup_run, sigusr1_starts_again_what_was_given_up, .init = s_setup,
      .fini = s_teardown)
{
    //  A program that crashes until its cause is mended (a file appears):
    //  given up, mended, then SIGUSR1 starts it again without stopping the
    //  rest of the suite.
    setenv ("SUPERVISOR_MAX_CRASHES", "3", 1);
    s_start ("[program:flaky]\n"
             "command = sh -c 'test -e \"$RUN_DIR/mended\" && exec sleep 1000; exit 7'\n"
             "[program:steady]\ncommand = sleep 1000\n");
    cr_assert (s_wait_log ("GIVING UP"), "the crash loop was not given up");
    pid_t children[64];
    cr_assert (s_wait_children (s_supervisor, 1, children));
    pid_t steady = children[0];
    FILE *mended = fopen (s_file ("mended"), "w");
    cr_assert_not_null (mended);
    fclose (mended);
    cr_assert_eq (kill (s_supervisor, SIGUSR1), 0);
    cr_assert (s_wait_log ("flaky.0 was given up: starting it again"));
    cr_assert (s_wait_children (s_supervisor, 2, children), "flaky is not running");
    cr_assert (children[0] == steady || children[1] == steady,
               "the rest of the suite was not touched");
    //  A second SIGUSR1 finds nothing to do.
    cr_assert_eq (kill (s_supervisor, SIGUSR1), 0);
    cr_assert (s_wait_log ("nothing was given up"));
    cr_assert_eq (kill (s_supervisor, SIGTERM), 0);
    int status = s_wait_exit (S_PATIENCE_MS);
    cr_assert (status != -1 && WIFEXITED (status) && WEXITSTATUS (status) == 0);
}

Test (sup_run, a_bad_setting_at_first_start_stops_the_suite_with_2, .init = s_setup,
      .fini = s_teardown)
{
    s_start ("[program:steady]\ncommand = sleep 1000\n"
             "[program:typo]\ncommand = sh -c 'sleep 0.2; echo \"typo: FOO: bad\" >&2; "
             "exit 2'\n");
    int status = s_wait_exit (S_PATIENCE_MS);
    cr_assert_neq (status, -1, "the supervisor did not stop");
    cr_assert (WIFEXITED (status) && WEXITSTATUS (status) == 2, "status 0x%x", status);
    cr_assert (s_log_line_has ("typo.0", "refused its configuration"));
    cr_assert_eq (s_log_count ("typo.0 pid"), 2,
                  "one start and one exit: never restarted");
    cr_assert (s_log_count ("every child has exited"), "steady was stopped too");
}

Test (sup_run, status_2_after_a_restart_is_a_crash_like_any_other, .init = s_setup,
      .fini = s_teardown)
{
    setenv ("SUPERVISOR_MAX_CRASHES", "3", 1);
    char program[512];
    snprintf (program, sizeof program,
              "[program:steady]\ncommand = sleep 1000\n"
              "[program:flaky]\ncommand = sh -c 'if [ -e %s/ran ]; then exit 2; fi; "
              "touch %s/ran; exit 7'\n",
              s_dir, s_dir);
    s_start (program);
    cr_assert (s_wait_log ("ERROR: flaky.0 exited 3 times"), "give-up logged");
    cr_assert_eq (s_log_count ("exited with status 2"), 2);
    cr_assert_eq (s_log_count ("refused its configuration"), 0);
    cr_assert_eq (waitpid (s_supervisor, NULL, WNOHANG), 0, "still supervising");
}

Test (sup_run, nothing_left_to_supervise_exits_1, .init = s_setup, .fini = s_teardown)
{
    setenv ("SUPERVISOR_MAX_CRASHES", "2", 1);
    //  An executable file whose interpreter is missing passes the start-up
    //  check and fails at exec.
    char broken[PATH_MAX], program[PATH_MAX + 128];
    snprintf (broken, sizeof broken, "%s/broken", s_dir);
    FILE *file = fopen (broken, "w");
    cr_assert_not_null (file);
    fputs ("#!/nonexistent/interpreter\n", file);
    fclose (file);
    cr_assert_eq (chmod (broken, 0755), 0);
    snprintf (program, sizeof program,
              "[program:crasher]\ncommand = false\n"
              "[program:missing]\ncommand = %s\n",
              broken);
    s_start (program);
    int status = s_wait_exit (S_PATIENCE_MS);
    cr_assert_neq (status, -1);
    cr_assert (WIFEXITED (status) && WEXITSTATUS (status) == 1, "status 0x%x", status);
    snprintf (program, sizeof program, "cannot execute '%s'", broken);
    cr_assert (s_log_count (program));
    cr_assert (s_log_count ("nothing left to supervise"));
}

Test (sup_run, hub_only_serves_the_metrics_hub_until_stopped, .init = s_setup,
      .fini = s_teardown)
{
    unsetenv ("ADMIN_API_KEY");
    s_start_args ("--hub-only", NULL);
    cr_assert (s_wait_log ("serving the metrics hub only"));
    struct stat st;
    cr_assert_eq (stat (s_file ("metrics.sock"), &st), 0, "the hub is bound");
    pid_t none[64];
    cr_assert_eq (s_children (s_supervisor, none, 64), 0, "no program is started");
    cr_assert_eq (kill (s_supervisor, SIGTERM), 0);
    int status = s_wait_exit (S_PATIENCE_MS);
    cr_assert (status != -1 && WIFEXITED (status) && WEXITSTATUS (status) == 0,
               "status 0x%x", status);
    char *out = test_file_text (s_file ("stdout"));
    cr_assert (!strstr (out, "ADMIN_API_KEY"), "no key made for no child");
    free (out);

    //  It serves the hub, so it cannot be a reporter, nor run a suite too.
    setenv ("SUPERVISOR_METRICS_ROLE", "report", 1);
    s_start_args ("--hub-only", NULL);
    status = s_wait_exit (S_PATIENCE_MS);
    cr_assert (status != -1 && WIFEXITED (status) && WEXITSTATUS (status) == 2);
    cr_assert (s_log_count ("SUPERVISOR_METRICS_ROLE must be hub"));
    setenv ("SUPERVISOR_METRICS_ROLE", "aggregate", 1);
    s_start_args ("--hub-only", NULL);
    status = s_wait_exit (S_PATIENCE_MS);
    cr_assert (status != -1 && WIFEXITED (status) && WEXITSTATUS (status) == 2);
    cr_assert (s_log_count ("SUPERVISOR_METRICS_ROLE: 'aggregate' is not hub or report"));
    unsetenv ("SUPERVISOR_METRICS_ROLE");
    s_start_args ("--hub-only", "--config=x.conf");
    status = s_wait_exit (S_PATIENCE_MS);
    cr_assert (status != -1 && WIFEXITED (status) && WEXITSTATUS (status) == 2);
}

Test (sup_run, a_reporter_binds_no_hub_and_supervises, .init = s_setup,
      .fini = s_teardown)
{
    setenv ("SUPERVISOR_METRICS_ROLE", "report", 1);
    s_start ("[program:sleeper]\ncommand = sleep 1000\n");
    pid_t children[64];
    cr_assert (s_wait_children (s_supervisor, 1, children));
    cr_assert (s_wait_log ("reporting this supervisor's series to the hub at ipc://"));
    struct stat st;
    cr_assert_neq (stat (s_file ("metrics.sock"), &st), 0, "no hub is bound");
    cr_assert_eq (kill (s_supervisor, SIGTERM), 0);
    int status = s_wait_exit (S_PATIENCE_MS);
    cr_assert (status != -1 && WIFEXITED (status) && WEXITSTATUS (status) == 0);
    unsetenv ("SUPERVISOR_METRICS_ROLE");
}

Test (sup_run, children_die_with_a_killed_supervisor, .init = s_setup, .fini = s_teardown)
{
    s_start ("[program:sleeper]\ncommand = sleep 1000\nreplicas = 3\n");
    pid_t children[64];
    cr_assert (s_wait_children (s_supervisor, 3, children));
    kill (s_supervisor, SIGKILL);
    waitpid (s_supervisor, NULL, 0);
    s_supervisor = 0;
    //  PR_SET_PDEATHSIG sends them SIGTERM.
    for (size_t i = 0; i < 3; i++)
        cr_assert (s_wait_gone (children[i]), "pid %d outlived the supervisor",
                   (int) children[i]);
}

Test (sup_run, children_see_one_environment, .init = s_setup, .fini = s_teardown)
{
    unsetenv ("ADMIN_API_KEY");
    setenv ("REDIS_URL", "redis://127.0.0.9:7777/1", 1);
    s_start ("[program:probe]\n"
             "command = sh -c 'echo \"$ADMIN_API_KEY $REDIS_HOST $REDIS_PORT $BIN_DIR "
             "$INSTANCE_INDEX $SUPERVISED $GREETING $KEY_COPY\" > "
             "\"$RUN_DIR/seen.$INSTANCE_INDEX\"; exec sleep 1000'\n"
             "replicas = 2\n"
             "env = GREETING=${REDIS_PORT}-hello\n"
             "env = KEY_COPY=${ADMIN_API_KEY}\n");
    pid_t children[64];
    cr_assert (s_wait_children (s_supervisor, 2, children));
    cr_assert (s_wait_log ("admin_api_key"), "the log says where the key is kept");

    //  The key: generated, printed on stdout, kept with mode 0600.
    char keyfile[PATH_MAX];
    snprintf (keyfile, sizeof keyfile, "%s/admin_api_key", s_dir);
    char *key = test_file_text (keyfile);
    cr_assert_eq (strlen (key), 65, "64 hex digits and a newline: '%s'", key);
    key[64] = 0;
    struct stat st;
    cr_assert_eq (stat (keyfile, &st), 0);
    cr_assert_eq (st.st_mode & 0777, 0600);
    char *out = test_file_text (s_file ("stdout"));
    char line[128];
    snprintf (line, sizeof line, "ADMIN_API_KEY=%s\n", key);
    cr_assert (strstr (out, line), "stdout was '%s'", out);
    free (out);

    char bin_dir[PATH_MAX];
    cr_assert_not_null (realpath (getenv ("LLMRT_BIN_DIR"), bin_dir));
    for (int i = 0; i < 2; i++) {
        char name[32], expected[2 * PATH_MAX];
        snprintf (name, sizeof name, "seen.%d", i);
        int64_t deadline = cm_clock_mono_ms () + S_PATIENCE_MS;
        char *seen = test_file_text (s_file (name));
        while (!strchr (seen, '\n') && cm_clock_mono_ms () < deadline) {
            free (seen);
            s_sleep_ms (20);
            seen = test_file_text (s_file (name));
        }
        snprintf (expected, sizeof expected, "%s 127.0.0.9 7777 %s %d 1 7777-hello %s\n",
                  key, bin_dir, i, key);
        cr_assert_str_eq (seen, expected);
        free (seen);
    }
    free (key);
    cr_assert_eq (kill (s_supervisor, SIGTERM), 0);
    int status = s_wait_exit (S_PATIENCE_MS);
    cr_assert (status != -1 && WIFEXITED (status) && WEXITSTATUS (status) == 0);
}

//  Start the supervisor with conf (or, when conf is NULL, with -c path) and
//  expect it to refuse to start: exit 2, needle in the log, nothing started.
static void
s_refused (const char *conf, const char *path, const char *needle)
{
    if (conf)
        s_start (conf);
    else
        s_start_args ("-c", path);
    int status = s_wait_exit (S_PATIENCE_MS);
    cr_assert_neq (status, -1, "the supervisor did not stop (%s)", needle);
    cr_assert (WIFEXITED (status) && WEXITSTATUS (status) == 2, "status 0x%x for %s",
               status, needle);
    char *log = test_file_text (s_file ("stderr"));
    cr_assert (strstr (log, needle), "the log lacks '%s': %s", needle, log);
    cr_assert_null (strstr (log, "supervising"), "something was started: %s", log);
    free (log);
}

Test (sup_run, config_errors_stop_startup, .init = s_setup, .fini = s_teardown)
{
    s_refused ("[program:a]\ncommand = sleep 1000\nreplica = 2\n", NULL,
               "suite.conf:3: unknown key 'replica'");
    unsetenv ("SUP_TEST_UNDEFINED");
    s_refused ("[program:a]\ncommand = ${SUP_TEST_UNDEFINED}/daemon\n", NULL,
               "suite.conf:2: command: undefined variable ${SUP_TEST_UNDEFINED}");
    s_refused ("[program:a]\ncommand = sleep 1000\n[program:s\n", NULL,
               "suite.conf:3: section header '[program:s' lacks its closing ']'");
    s_refused ("", NULL, "suite.conf: no [program:NAME] section");
    s_refused (NULL, "/nonexistent/suite.conf",
               "/nonexistent/suite.conf: cannot read: No such file or directory");
    s_refused (NULL, s_dir, "cannot read: Is a directory");

    pid_t none[64];
    cr_assert_eq (s_children (getpid (), none, 64), 0, "no child was started");
}

Test (sup_run, a_bad_setting_exits_2_naming_it, .init = s_setup, .fini = s_teardown)
{
    const char *cases[][3] = {
        //  variable, value, what the log must say
        {"SUPERVISOR_GRACE_MS", "abc", "SUPERVISOR_GRACE_MS"},
        {"SUPERVISOR_RESTART_INITIAL_MS", "500",
         "SUPERVISOR_RESTART_INITIAL_MS (500) must not exceed SUPERVISOR_RESTART_MAX_MS"},
        {"SUPERVISOR_RESTART_MAX_MS", "0", "SUPERVISOR_RESTART_MAX_MS"},
        {"SUPERVISOR_RESTART_RESET_MS", "-1", "SUPERVISOR_RESTART_RESET_MS"},
        {"SUPERVISOR_MAX_CRASHES", "many", "SUPERVISOR_MAX_CRASHES"},
        {"SUPERVISOR_CRASH_WINDOW_MS", "0", "SUPERVISOR_CRASH_WINDOW_MS"},
        {"SUPERVISOR_ENDPOINT", "nowhere", "SUPERVISOR_ENDPOINT"},
        {"SUPERVISOR_METRICS_ROLE", "aggregate", "SUPERVISOR_METRICS_ROLE"},
        {"METRICS_INSTANCE_TTL_MS", "5", "METRICS_INSTANCE_TTL_MS"},
        {"METRICS_REPORT_INTERVAL_MS", "1", "METRICS_REPORT_INTERVAL_MS"},
        {"LOG_LEVEL", "chatty", "LOG_LEVEL"},
        {"REDIS_URL", "http://127.0.0.1:6379", "REDIS_URL"},
        {"REDIS_URL", "redis://host:port", "REDIS_URL"},
        {"RUN_DIR", "/proc/version", "RUN_DIR"},
        {"RUN_DIR", "/proc/version/var", "RUN_DIR"},
        {"BIN_DIR", "/nonexistent/bin", "BIN_DIR"},
        {"BIN_DIR", "/etc/passwd", "BIN_DIR: '/etc/passwd' is not a directory"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const char *old = getenv (cases[i][0]);
        char *saved = old ? strdup (old) : NULL;
        setenv (cases[i][0], cases[i][1], 1);
        s_refused ("[program:a]\ncommand = sleep 1000\n", NULL, cases[i][2]);
        if (saved)
            setenv (cases[i][0], saved, 1);
        else
            unsetenv (cases[i][0]);
        free (saved);
    }
}

Test (sup_run, a_refused_start_makes_no_key_and_no_run_dir, .init = s_setup,
      .fini = s_teardown)
{
    unsetenv ("ADMIN_API_KEY");
    char run_dir[PATH_MAX], key_file[PATH_MAX + 32];
    snprintf (run_dir, sizeof run_dir, "%s/run", s_dir);
    snprintf (key_file, sizeof key_file, "%s/admin_api_key", run_dir);
    setenv ("RUN_DIR", run_dir, 1);
    const char *refused[][2] = {
        {"[program:a]\ncommand = sleep 1000\nreplica = 2\n", "unknown key 'replica'"},
        {"[program:a]\ncommand = /nonexistent/daemon\n", "cannot run command"},
    };
    for (size_t i = 0; i < 2; i++) {
        s_refused (refused[i][0], NULL, refused[i][1]);
        char *out = test_file_text (s_file ("stdout"));
        cr_assert_null (strstr (out, "ADMIN_API_KEY"), "a key was printed: %s", out);
        free (out);
        struct stat st;
        cr_assert_neq (stat (run_dir, &st), 0, "RUN_DIR was created");
    }
    //  A RUN_DIR that exists gets no key file either.
    cr_assert_eq (mkdir (run_dir, 0755), 0);
    s_refused (refused[0][0], NULL, refused[0][1]);
    cr_assert_neq (access (key_file, F_OK), 0, "a key file was made");

    //  The suite file may use the key: the same one is then kept and printed.
    s_start ("[program:a]\ncommand = sh -c 'echo \"$SEEN\" > \"$RUN_DIR/seen\"; "
             "exec sleep 1000'\nenv = SEEN=${ADMIN_API_KEY}\n");
    cr_assert (s_wait_log ("generated into"));
    char seen_file[PATH_MAX + 32];
    snprintf (seen_file, sizeof seen_file, "%s/seen", run_dir);
    int64_t deadline = cm_clock_mono_ms () + S_PATIENCE_MS;
    char *seen = test_file_text (seen_file);
    while (!strchr (seen, '\n') && cm_clock_mono_ms () < deadline) {
        free (seen);
        s_sleep_ms (20);
        seen = test_file_text (seen_file);
    }
    char *kept = test_file_text (key_file);
    cr_assert_eq (strlen (kept), 65, "'%s'", kept);
    cr_assert_str_eq (seen, kept);
    char *out = test_file_text (s_file ("stdout"));
    char line[128];
    snprintf (line, sizeof line, "ADMIN_API_KEY=%s", kept);
    cr_assert_str_eq (out, line);
    free (out);
    free (kept);
    free (seen);
    cr_assert_eq (kill (s_supervisor, SIGTERM), 0);
    int status = s_wait_exit (S_PATIENCE_MS);
    cr_assert (status != -1 && WIFEXITED (status) && WEXITSTATUS (status) == 0);
}

Test (sup_run, a_value_from_a_variable_names_it, .init = s_setup, .fini = s_teardown)
{
    const char *source = getenv ("LLMRT_SOURCE_DIR");
    cr_assert_not_null (source, "LLMRT_SOURCE_DIR is set by ctest");
    char conf[PATH_MAX];
    snprintf (conf, sizeof conf, "%s/deploy/local/suite.conf", source);
    setenv ("CHAT_REPLICAS", "abc", 1);
    s_refused (NULL, conf, "suite.conf:");
    cr_assert (s_log_line_has ("replicas: 'abc' is not a whole number from 0 to 64",
                               "(from CHAT_REPLICAS)"));
    unsetenv ("CHAT_REPLICAS");
}

Test (sup_run, a_command_that_cannot_run_stops_startup_with_2, .init = s_setup,
      .fini = s_teardown)
{
    //  A BIN_DIR without the programs: nothing starts, not even sleeper.
    setenv ("BIN_DIR", s_dir, 1);
    char needle[PATH_MAX + 256];
    snprintf (needle, sizeof needle,
              "suite.conf:4: [program:gateway] cannot run command '%s/gateway': No "
              "such file or directory (from BIN_DIR)",
              s_dir);
    s_refused ("[program:sleeper]\ncommand = sleep 1000\n"
               "[program:gateway]\ncommand = ${BIN_DIR}/gateway\n",
               NULL, needle);
    s_refused ("[program:redis]\ncommand = sup-test-no-such-server --port 1\n", NULL,
               "[program:redis] cannot run command 'sup-test-no-such-server': no "
               "executable 'sup-test-no-such-server' in PATH");
    unsetenv ("BIN_DIR");
    pid_t none[64];
    cr_assert_eq (s_children (getpid (), none, 64), 0, "no child was started");
}

Test (sup_run, help_lists_the_settings, .init = s_setup, .fini = s_teardown)
{
    char command[PATH_MAX + 64];
    snprintf (command, sizeof command, "'%s/supervisor' --help > '%s/help'",
              getenv ("LLMRT_BIN_DIR"), s_dir);
    cr_assert_eq (system (command), 0);
    char *help = test_file_text (s_file ("help"));
    const char *names[] = {"-c FILE",
                           "SUPERVISOR_RESTART_INITIAL_MS",
                           "SUPERVISOR_RESTART_MAX_MS",
                           "SUPERVISOR_RESTART_RESET_MS",
                           "SUPERVISOR_MAX_CRASHES",
                           "SUPERVISOR_CRASH_WINDOW_MS",
                           "SUPERVISOR_GRACE_MS",
                           "REDIS_URL",
                           "RUN_DIR",
                           "BIN_DIR",
                           "ADMIN_API_KEY",
                           "--hub-only",
                           "SUPERVISOR_METRICS_ROLE",
                           "METRICS_REPORT_INTERVAL_MS",
                           "exit status 2"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        cr_assert (strstr (help, names[i]), "--help lacks %s", names[i]);
    free (help);
}
