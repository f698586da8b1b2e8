/*  test_sup_env.c: the supervisor's settings, the variables it derives for
    the suite file, and the admin key it keeps under RUN_DIR; nothing is
    made on disk before sup_env_prepare. */
#include <criterion/criterion.h>
#include <sys/stat.h>
#include <unistd.h>
#include "sup_env.h"

static char s_err[1024];

static void
s_clear (void)
{
    for (const cm_conf_entry_t *e = sup_env_table; e->name; e++)
        unsetenv (e->name);
}

//  A fresh directory under /tmp; the caller frees the path.
static char *
s_tempdir (void)
{
    char *dir = strdup ("/tmp/test_sup_env.XXXXXX");
    cr_assert_not_null (mkdtemp (dir));
    return dir;
}

static void
s_rmtree (const char *dir)
{
    char command[4200];
    snprintf (command, sizeof command, "rm -rf '%s'", dir);
    cr_assert_eq (system (command), 0);
}

Test (sup_env, walkthrough_defaults_prepare_and_key)
{
    s_clear ();
    char *dir = s_tempdir ();
    char run_dir[4200];
    snprintf (run_dir, sizeof run_dir, "%s/deep/var", dir);
    setenv ("RUN_DIR", run_dir, 1);

    sup_settings_t settings = {0};
    cr_assert_eq (sup_env_load (&settings, s_err, sizeof s_err), 0, "%s", s_err);
    cr_assert_eq (settings.restart_initial_ms, 500);
    cr_assert_eq (settings.restart_max_ms, 30000);
    cr_assert_eq (settings.restart_reset_ms, 10000);
    cr_assert_eq (settings.max_crashes, 10);
    cr_assert_eq (settings.crash_window_ms, 300000);
    cr_assert_eq (settings.grace_ms, 10000);
    cr_assert_str_eq (settings.redis_url, "redis://127.0.0.1:6379");
    cr_assert_null (settings.admin_api_key);
    sup_backoff_policy_t policy = sup_env_backoff_policy (&settings);
    cr_assert_eq (policy.initial_ms, 500);
    cr_assert_eq (policy.window_ms, 300000);

    //  export exports what the suite file expands, and creates nothing.
    cr_assert_eq (sup_env_export (&settings, s_err, sizeof s_err), 0, "%s", s_err);
    cr_assert_str_eq (getenv ("REDIS_URL"), "redis://127.0.0.1:6379");
    cr_assert_str_eq (getenv ("REDIS_HOST"), "127.0.0.1");
    cr_assert_str_eq (getenv ("REDIS_PORT"), "6379");
    cr_assert_str_eq (getenv ("RUN_DIR"), run_dir);
    cr_assert_str_eq (settings.run_dir, run_dir);
    struct stat st;
    cr_assert_neq (stat (run_dir, &st), 0, "RUN_DIR is not created yet");
    //  BIN_DIR defaults to the directory of this executable.
    char exe[4096];
    ssize_t n = readlink ("/proc/self/exe", exe, sizeof exe - 1);
    cr_assert_gt (n, 0);
    exe[n] = 0;
    *strrchr (exe, '/') = 0;
    cr_assert_str_eq (getenv ("BIN_DIR"), exe);

    //  The admin key is generated in memory and exported, for the suite
    //  file's ${ADMIN_API_KEY}; nothing is written or printed yet.
    cr_assert_eq (sup_env_admin_key (&settings, s_err, sizeof s_err), 0, "%s", s_err);
    const char *key = getenv ("ADMIN_API_KEY");
    cr_assert_not_null (key);
    cr_assert_eq (strlen (key), 64);
    cr_assert_eq (strspn (key, "0123456789abcdef"), 64);
    cr_assert_str_eq (settings.admin_api_key, key);
    cr_assert_eq (settings.admin_key_source, SUP_ENV_KEY_GENERATED);
    cr_assert_neq (stat (run_dir, &st), 0, "still nothing on disk");

    //  prepare creates RUN_DIR, keeps the key with mode 0600 and prints it.
    char *printed = NULL;
    size_t printed_size = 0;
    FILE *out = open_memstream (&printed, &printed_size);
    cr_assert_eq (sup_env_prepare (&settings, out, s_err, sizeof s_err), 0, "%s", s_err);
    fclose (out);
    char path[4300];
    snprintf (path, sizeof path, "%s/log", settings.run_dir);
    cr_assert (stat (path, &st) == 0 && S_ISDIR (st.st_mode));
    snprintf (path, sizeof path, "%s/redis", settings.run_dir);
    cr_assert (stat (path, &st) == 0 && S_ISDIR (st.st_mode));
    char line[100];
    snprintf (line, sizeof line, "ADMIN_API_KEY=%s\n", key);
    cr_assert_str_eq (printed, line);
    free (printed);
    snprintf (path, sizeof path, "%s/admin_api_key", settings.run_dir);
    cr_assert_eq (stat (path, &st), 0);
    cr_assert_eq (st.st_mode & 0777, 0600);
    char *first = strdup (key);
    sup_env_free (&settings);

    //  The next run reads the same key back.
    unsetenv ("ADMIN_API_KEY");
    settings = (sup_settings_t){0};
    cr_assert_eq (sup_env_load (&settings, s_err, sizeof s_err), 0, "%s", s_err);
    cr_assert_eq (sup_env_export (&settings, s_err, sizeof s_err), 0, "%s", s_err);
    cr_assert_eq (sup_env_admin_key (&settings, s_err, sizeof s_err), 0, "%s", s_err);
    cr_assert_eq (settings.admin_key_source, SUP_ENV_KEY_READ);
    out = fopen ("/dev/null", "w");
    cr_assert_eq (sup_env_prepare (&settings, out, s_err, sizeof s_err), 0, "%s", s_err);
    fclose (out);
    cr_assert_str_eq (getenv ("ADMIN_API_KEY"), first);
    sup_env_free (&settings);
    free (first);
    s_rmtree (dir);
    free (dir);
    s_clear ();
}

Test (sup_env, a_set_admin_key_is_left_alone)
{
    s_clear ();
    char *dir = s_tempdir ();
    setenv ("RUN_DIR", dir, 1);
    setenv ("ADMIN_API_KEY", "mine", 1);
    sup_settings_t settings = {0};
    cr_assert_eq (sup_env_load (&settings, s_err, sizeof s_err), 0);
    cr_assert_eq (sup_env_export (&settings, s_err, sizeof s_err), 0, "%s", s_err);
    cr_assert_eq (sup_env_admin_key (&settings, s_err, sizeof s_err), 0);
    cr_assert_eq (settings.admin_key_source, SUP_ENV_KEY_GIVEN);
    char *printed = NULL;
    size_t printed_size = 0;
    FILE *out = open_memstream (&printed, &printed_size);
    cr_assert_eq (sup_env_prepare (&settings, out, s_err, sizeof s_err), 0);
    fclose (out);
    cr_assert_str_eq (printed, "", "a key that was set is not printed");
    free (printed);
    cr_assert_str_eq (getenv ("ADMIN_API_KEY"), "mine");
    char path[4200];
    snprintf (path, sizeof path, "%s/admin_api_key", dir);
    cr_assert_neq (access (path, F_OK), 0, "no key file written");
    sup_env_free (&settings);
    s_rmtree (dir);
    free (dir);
    s_clear ();
}

Test (sup_env, an_empty_key_file_is_an_error)
{
    s_clear ();
    char *dir = s_tempdir ();
    setenv ("RUN_DIR", dir, 1);
    char path[4200];
    snprintf (path, sizeof path, "%s/admin_api_key", dir);
    FILE *file = fopen (path, "w");
    fputs ("\n", file);
    fclose (file);
    sup_settings_t settings = {0};
    cr_assert_eq (sup_env_load (&settings, s_err, sizeof s_err), 0);
    cr_assert_eq (sup_env_export (&settings, s_err, sizeof s_err), 0, "%s", s_err);
    cr_assert_eq (sup_env_admin_key (&settings, s_err, sizeof s_err), -1);
    cr_assert (strstr (s_err, path), "%s", s_err);
    cr_assert (strstr (s_err, "ADMIN_API_KEY"), "%s", s_err);
    sup_env_free (&settings);
    s_rmtree (dir);
    free (dir);
    s_clear ();
}

Test (sup_env, redis_urls)
{
    struct {
        const char *url;
        const char *host; //  NULL: refused
        int64_t port;
    } cases[] = {
        {"redis://127.0.0.1:6379", "127.0.0.1", 6379},
        {"redis://localhost", "localhost", 6379},
        {"redis://cache.internal:6400/2", "cache.internal", 6400},
        {"redis://:secret@redis:7000/0", "redis", 7000},
        {"redis://user:p%40ss@10.0.0.1", "10.0.0.1", 6379},
        {"redis://[::1]:6390", "::1", 6390},
        {"redis://[::1]", "::1", 6379},
        {"REDIS://host:1/", "host", 1},
        {"redis://host:6379?timeout=1", "host", 6379},
        {"http://host:6379", NULL, 0},
        {"redis://", NULL, 0},
        {"redis://:6379", NULL, 0},
        {"redis://host:0", NULL, 0},
        {"redis://host:65536", NULL, 0},
        {"redis://host:port", NULL, 0},
        {"redis://host:", NULL, 0},
        {"redis://host:6379/x", NULL, 0},
        {"redis://ho st:6379", NULL, 0},
        {"redis://[::1", NULL, 0},
        {"redis://[::1]x", NULL, 0},
        {"127.0.0.1:6379", NULL, 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char host[256] = "";
        int64_t port = -1;
        int rc = sup_env_redis_url (cases[i].url, host, sizeof host, &port);
        if (cases[i].host) {
            cr_assert_eq (rc, 0, "%s refused", cases[i].url);
            cr_assert_str_eq (host, cases[i].host, "%s", cases[i].url);
            cr_assert_eq (port, cases[i].port, "%s", cases[i].url);
        } else
            cr_assert_eq (rc, -1, "%s accepted", cases[i].url);
    }
}

Test (sup_env, bad_settings_name_the_variable)
{
    s_clear ();
    sup_settings_t settings = {0};
    setenv ("REDIS_URL", "redis://nohost:notaport", 1);
    cr_assert_eq (sup_env_load (&settings, s_err, sizeof s_err), 0);
    cr_assert_eq (sup_env_export (&settings, s_err, sizeof s_err), -1);
    cr_assert (strstr (s_err, "REDIS_URL"), "%s", s_err);
    sup_env_free (&settings);
    s_clear ();

    setenv ("SUPERVISOR_GRACE_MS", "soon", 1);
    cr_assert_eq (sup_env_load (&settings, s_err, sizeof s_err), -1);
    cr_assert (strstr (s_err, "SUPERVISOR_GRACE_MS"), "%s", s_err);
    sup_env_free (&settings);
    s_clear ();

    setenv ("SUPERVISOR_RESTART_INITIAL_MS", "5000", 1);
    setenv ("SUPERVISOR_RESTART_MAX_MS", "1000", 1);
    cr_assert_eq (sup_env_load (&settings, s_err, sizeof s_err), -1);
    cr_assert (strstr (s_err, "SUPERVISOR_RESTART_INITIAL_MS"), "%s", s_err);
    cr_assert (strstr (s_err, "SUPERVISOR_RESTART_MAX_MS"), "%s", s_err);
    sup_env_free (&settings);
    s_clear ();

    setenv ("LOG_LEVEL", "chatty", 1);
    cr_assert_eq (sup_env_load (&settings, s_err, sizeof s_err), -1);
    cr_assert (strstr (s_err, "LOG_LEVEL"), "%s", s_err);
    sup_env_free (&settings);
    s_clear ();

    char *dir = s_tempdir ();
    setenv ("BIN_DIR", "/nonexistent/bin", 1);
    setenv ("RUN_DIR", dir, 1);
    cr_assert_eq (sup_env_load (&settings, s_err, sizeof s_err), 0);
    cr_assert_eq (sup_env_export (&settings, s_err, sizeof s_err), -1);
    cr_assert (strstr (s_err, "BIN_DIR"), "%s", s_err);
    sup_env_free (&settings);
    s_rmtree (dir);
    free (dir);
    s_clear ();

    //  Not a directory: checked before anything is made.
    setenv ("RUN_DIR", "/proc/version/var", 1);
    cr_assert_eq (sup_env_load (&settings, s_err, sizeof s_err), 0);
    cr_assert_eq (sup_env_export (&settings, s_err, sizeof s_err), 0, "%s", s_err);
    FILE *out = fopen ("/dev/null", "w");
    cr_assert_eq (sup_env_prepare (&settings, out, s_err, sizeof s_err), -1);
    fclose (out);
    cr_assert (strstr (s_err, "RUN_DIR"), "%s", s_err);
    sup_env_free (&settings);
    s_clear ();

    setenv ("RUN_DIR", "/proc/version", 1);
    cr_assert_eq (sup_env_load (&settings, s_err, sizeof s_err), 0);
    cr_assert_eq (sup_env_export (&settings, s_err, sizeof s_err), -1);
    cr_assert (strstr (s_err, "RUN_DIR: '/proc/version' is not a directory"), "%s",
               s_err);
    sup_env_free (&settings);
    s_clear ();
}

//  Review findings of a docs audit: what the supervisor takes must be what
//  its children take, and it must not print a password.
Test (sup_env, what_the_children_would_refuse_is_refused_first)
{
    s_clear ();
    sup_settings_t settings = {0};
    setenv ("REDIS_URL", "redis://user:hunter2@h:99999", 1);
    cr_assert_eq (sup_env_load (&settings, s_err, sizeof s_err), 0);
    cr_assert_eq (sup_env_export (&settings, s_err, sizeof s_err), -1);
    cr_assert (strstr (s_err, "REDIS_URL"), "%s", s_err);
    cr_assert_null (strstr (s_err, "hunter2"), "%s", s_err);
    sup_env_free (&settings);
    s_clear ();

    const char *bad_keys[] = {"bad key", "caf\xc3\xa9", "tab\there"};
    for (size_t i = 0; i < sizeof bad_keys / sizeof bad_keys[0]; i++) {
        setenv ("ADMIN_API_KEY", bad_keys[i], 1);
        cr_assert_eq (sup_env_load (&settings, s_err, sizeof s_err), -1, "%s accepted",
                      bad_keys[i]);
        cr_assert (strstr (s_err, "ADMIN_API_KEY"), "%s", s_err);
        sup_env_free (&settings);
        s_clear ();
    }
    char *longest = malloc (SUP_ENV_ADMIN_KEY_MAX + 2);
    memset (longest, 'k', SUP_ENV_ADMIN_KEY_MAX + 1);
    longest[SUP_ENV_ADMIN_KEY_MAX + 1] = 0;
    setenv ("ADMIN_API_KEY", longest, 1);
    cr_assert_eq (sup_env_load (&settings, s_err, sizeof s_err), -1);
    cr_assert (strstr (s_err, "ADMIN_API_KEY"), "%s", s_err);
    sup_env_free (&settings);
    longest[SUP_ENV_ADMIN_KEY_MAX] = 0;
    setenv ("ADMIN_API_KEY", longest, 1);
    cr_assert_eq (sup_env_load (&settings, s_err, sizeof s_err), 0, "%s", s_err);
    sup_env_free (&settings);
    free (longest);
    s_clear ();

    setenv ("INSTANCE_ID", "dup", 1);
    cr_assert_eq (sup_env_load (&settings, s_err, sizeof s_err), -1);
    cr_assert (strstr (s_err, "INSTANCE_ID"), "%s", s_err);
    sup_env_free (&settings);
    unsetenv ("INSTANCE_ID");
    s_clear ();
}

//  A key file holds the whole key (it was cut to 1023 bytes), and one
//  longer than a key may be is refused, naming the file.
Test (sup_env, a_long_key_file_is_read_whole)
{
    s_clear ();
    char *dir = s_tempdir ();
    setenv ("RUN_DIR", dir, 1);
    char path[4200];
    snprintf (path, sizeof path, "%s/admin_api_key", dir);
    for (int round = 0; round < 2; round++) {
        size_t length = round ? SUP_ENV_ADMIN_KEY_MAX + 1 : 2000;
        FILE *file = fopen (path, "w");
        for (size_t i = 0; i < length; i++)
            fputc ('a' + (int) (i % 26), file);
        fputc ('\n', file);
        fclose (file);
        chmod (path, 0600);
        sup_settings_t settings = {0};
        cr_assert_eq (sup_env_load (&settings, s_err, sizeof s_err), 0);
        cr_assert_eq (sup_env_export (&settings, s_err, sizeof s_err), 0, "%s", s_err);
        if (round) {
            cr_assert_eq (sup_env_admin_key (&settings, s_err, sizeof s_err), -1);
            cr_assert (strstr (s_err, path), "%s", s_err);
        } else {
            cr_assert_eq (sup_env_admin_key (&settings, s_err, sizeof s_err), 0, "%s",
                          s_err);
            cr_assert_eq (strlen (getenv ("ADMIN_API_KEY")), length);
            cr_assert_eq (strlen (settings.admin_api_key), length);
        }
        sup_env_free (&settings);
        s_clear ();
        setenv ("RUN_DIR", dir, 1);
    }
    s_rmtree (dir);
    free (dir);
    s_clear ();
}

Test (sup_env, bin_dir_must_be_a_directory)
{
    s_clear ();
    sup_settings_t settings = {0};
    setenv ("BIN_DIR", "/etc/passwd", 1);
    cr_assert_eq (sup_env_load (&settings, s_err, sizeof s_err), 0);
    cr_assert_eq (sup_env_export (&settings, s_err, sizeof s_err), -1);
    cr_assert (strstr (s_err, "BIN_DIR: '/etc/passwd' is not a directory"), "%s", s_err);
    sup_env_free (&settings);
    s_clear ();
}

Test (sup_env, run_dir_is_made_absolute_without_being_created)
{
    s_clear ();
    char *dir = s_tempdir ();
    char cwd[4096];
    cr_assert_not_null (getcwd (cwd, sizeof cwd));
    cr_assert_eq (chdir (dir), 0);
    const char *cases[][2] = {
        {"./var", "/var"}, {"var/", "/var"}, {"a//b/./c", "/a/b/c"},
        {"../x", "/../x"}, {".", ""},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        setenv ("RUN_DIR", cases[i][0], 1);
        sup_settings_t settings = {0};
        cr_assert_eq (sup_env_load (&settings, s_err, sizeof s_err), 0);
        cr_assert_eq (sup_env_export (&settings, s_err, sizeof s_err), 0, "%s", s_err);
        char expected[4300];
        snprintf (expected, sizeof expected, "%s%s", dir, cases[i][1]);
        cr_assert_str_eq (settings.run_dir, expected, "%s", cases[i][0]);
        cr_assert_str_eq (getenv ("RUN_DIR"), expected);
        sup_env_free (&settings);
    }
    setenv ("RUN_DIR", "//srv/./llmrt/", 1);
    sup_settings_t settings = {0};
    cr_assert_eq (sup_env_load (&settings, s_err, sizeof s_err), 0);
    cr_assert_eq (sup_env_export (&settings, s_err, sizeof s_err), 0, "%s", s_err);
    cr_assert_str_eq (settings.run_dir, "/srv/llmrt");
    sup_env_free (&settings);
    struct stat st;
    cr_assert_neq (stat ("var", &st), 0, "nothing created");
    cr_assert_eq (chdir (cwd), 0);
    s_rmtree (dir);
    free (dir);
    s_clear ();
}
