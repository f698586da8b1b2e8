/*  test_sup_supervisor.c: the supervisor core in this process: the children's
    environment, giving up on a crashing program, and the reader hook that
    the metrics endpoint will use to join the loop. The real program, with
    signals and restarts, is exercised by test_sup_run. */
#include <criterion/criterion.h>
#include <fcntl.h>
#include <signal.h>
#include <unistd.h>
#include "cm_log.h"
#include "sup_supervisor.h"

static char s_err[1024];

static sup_settings_t
s_settings (void)
{
    sup_settings_t settings = {
        .restart_initial_ms = 1,
        .restart_max_ms = 20,
        .restart_reset_ms = 10000,
        .max_crashes = 3,
        .crash_window_ms = 60000,
        .grace_ms = 5000,
    };
    return settings;
}

static sup_conf_t *
s_conf (const char *text)
{
    sup_conf_t *conf = sup_conf_parse (text, "test.conf", s_err, sizeof s_err);
    cr_assert_not_null (conf, "%s", s_err);
    return conf;
}

//  Reader hook: take the byte and stop the run.
static void
s_on_pipe (sup_supervisor_t *self, void *socket, int fd, void *arg)
{
    cr_assert_null (socket);
    char byte;
    cr_assert_eq (read (fd, &byte, 1), 1);
    *(int *) arg += 1;
    cr_assert_eq (sup_supervisor_running (self), 2, "both sleepers are up");
    sup_supervisor_stop (self, cm_clock_mono_ms ());
}

Test (sup_supervisor, walkthrough_reader_hook_stops_the_run)
{
    cm_log_init ("test_sup_supervisor");
    sup_conf_t *conf = s_conf ("[program:sleeper]\n"
                               "command = sleep 1000\n"
                               "replicas = 2\n");
    sup_settings_t settings = s_settings ();
    sup_supervisor_t *supervisor = sup_supervisor_new (&conf, &settings);
    cr_assert_not_null (supervisor);
    cr_assert_null (conf, "ownership was taken");
    int fds[2];
    cr_assert_eq (pipe (fds), 0);
    int calls = 0;
    cr_assert_eq (sup_supervisor_reader (supervisor, NULL, fds[0], s_on_pipe, &calls), 0);
    cr_assert_eq (write (fds[1], "x", 1), 1);
    //  The sleepers die on SIGTERM well within the grace period.
    int64_t start = cm_clock_mono_ms ();
    cr_assert_eq (sup_supervisor_run (supervisor), 0);
    cr_assert_lt (cm_clock_mono_ms () - start, settings.grace_ms);
    cr_assert_eq (calls, 1);
    cr_assert_eq (sup_supervisor_running (supervisor), 0);
    sup_supervisor_destroy (&supervisor);
    cr_assert_null (supervisor);
    sup_supervisor_destroy (&supervisor);
    close (fds[0]);
    close (fds[1]);
}

Test (sup_supervisor, reader_table_is_bounded)
{
    sup_conf_t *conf = s_conf ("[program:a]\ncommand = true\n");
    sup_settings_t settings = s_settings ();
    sup_supervisor_t *supervisor = sup_supervisor_new (&conf, &settings);
    for (int i = 0; i < SUP_SUPERVISOR_READERS_MAX; i++)
        cr_assert_eq (sup_supervisor_reader (supervisor, NULL, 0, s_on_pipe, NULL), 0);
    cr_assert_eq (sup_supervisor_reader (supervisor, NULL, 0, s_on_pipe, NULL), -1);
    sup_supervisor_destroy (&supervisor);
}

Test (sup_supervisor, a_crashing_program_is_given_up)
{
    cm_log_init ("test_sup_supervisor");
    sup_conf_t *conf = s_conf ("[program:crasher]\ncommand = sh -c 'exit 3'\n"
                               "[program:missing]\ncommand = /nonexistent/daemon\n");
    sup_settings_t settings = s_settings ();
    sup_supervisor_t *supervisor = sup_supervisor_new (&conf, &settings);
    //  Both are given up after three crashes each; with nothing left to
    //  supervise, run returns 1.
    cr_assert_eq (sup_supervisor_run (supervisor), 1);
    cr_assert_eq (sup_supervisor_running (supervisor), 0);
    sup_supervisor_destroy (&supervisor);
}

Test (sup_supervisor, children_get_the_environment)
{
    char dir[] = "/tmp/test_sup_supervisor.XXXXXX";
    cr_assert_not_null (mkdtemp (dir));
    setenv ("SUP_TEST_OUT", dir, 1);
    setenv ("SUP_TEST_BASE", "inherited", 1);
    setenv ("SUP_TEST_REPLACED", "before", 1);
    sup_conf_t *conf =
        s_conf ("[program:env]\n"
                "command = sh -c 'echo \"$INSTANCE_INDEX $SUPERVISED $SUP_TEST_BASE "
                "$SUP_TEST_REPLACED $EXTRA\" > \"$SUP_TEST_OUT/out.$INSTANCE_INDEX\"'\n"
                "replicas = 2\n"
                "env = SUP_TEST_REPLACED=after\n"
                "env = EXTRA=\"two words\"\n");
    sup_settings_t settings = s_settings ();
    settings.max_crashes = 1;
    sup_supervisor_t *supervisor = sup_supervisor_new (&conf, &settings);
    cr_assert_eq (sup_supervisor_run (supervisor), 1);
    sup_supervisor_destroy (&supervisor);
    for (int i = 0; i < 2; i++) {
        char path[128], line[256] = "", expected[256];
        snprintf (path, sizeof path, "%s/out.%d", dir, i);
        FILE *file = fopen (path, "r");
        cr_assert_not_null (file, "%s was written", path);
        cr_assert_not_null (fgets (line, sizeof line, file));
        fclose (file);
        unlink (path);
        snprintf (expected, sizeof expected, "%d 1 inherited after two words\n", i);
        cr_assert_str_eq (line, expected);
    }
    rmdir (dir);
}
