/*  test_sup_conf.c: the suite file: sections, keys, quoting, ${VAR}
    expansion, errors that name file:line and the variables a bad value came
    from, and the check that every command can be run. */
#include <criterion/criterion.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>
#include "sup_conf.h"

static char s_err[1024];

static sup_conf_t *
s_parse (const char *text)
{
    s_err[0] = 0;
    return sup_conf_parse (text, "test.conf", s_err, sizeof s_err);
}

//  Parsing must fail, with an error that contains each of the needles.
static void
s_refused (const char *text, const char *needle1, const char *needle2)
{
    sup_conf_t *conf = s_parse (text);
    cr_assert_null (conf, "accepted: %s", text);
    cr_assert (strstr (s_err, needle1), "error '%s' lacks '%s'", s_err, needle1);
    if (needle2)
        cr_assert (strstr (s_err, needle2), "error '%s' lacks '%s'", s_err, needle2);
}

Test (sup_conf, walkthrough_a_small_suite)
{
    setenv ("SUP_TEST_BIN", "/opt/llmrt/bin", 1);
    unsetenv ("SUP_TEST_REPLICAS");
    sup_conf_t *conf = s_parse ("# the suite\n"
                                "\n"
                                "[program:cache]\n"
                                "command = redis-server --port 6400\n"
                                "\n"
                                "[program:chatd]\n"
                                "command  = ${SUP_TEST_BIN}/chatd --name 'chat d'\n"
                                "replicas = ${SUP_TEST_REPLICAS:-3}\n"
                                "env      = CHAT_QUEUE_CONCURRENCY=4\n"
                                "env      = GREETING=\"hello world\"\n"
                                "stop_signal = SIGINT\n");
    cr_assert_not_null (conf, "%s", s_err);
    cr_assert_eq (sup_conf_size (conf), 2);

    const sup_program_t *cache = sup_conf_program (conf, 0);
    cr_assert_str_eq (sup_program_name (cache), "cache");
    cr_assert_eq (sup_program_argc (cache), 3);
    cr_assert_str_eq (sup_program_argv (cache)[0], "redis-server");
    cr_assert_str_eq (sup_program_argv (cache)[2], "6400");
    cr_assert_null (sup_program_argv (cache)[3]);
    cr_assert_eq (sup_program_replicas (cache), 1);
    cr_assert_eq (sup_program_stop_signal (cache), SIGTERM);
    cr_assert_null (sup_program_env (cache)[0]);
    cr_assert_eq (sup_program_line (cache), 3);

    const sup_program_t *chatd = sup_conf_lookup (conf, "chatd");
    cr_assert_eq (chatd, sup_conf_program (conf, 1));
    char *const *argv = sup_program_argv (chatd);
    cr_assert_str_eq (argv[0], "/opt/llmrt/bin/chatd");
    cr_assert_str_eq (argv[1], "--name");
    cr_assert_str_eq (argv[2], "chat d");
    cr_assert_eq (sup_program_replicas (chatd), 3);
    cr_assert_str_eq (sup_program_env (chatd)[0], "CHAT_QUEUE_CONCURRENCY=4");
    cr_assert_str_eq (sup_program_env (chatd)[1], "GREETING=hello world");
    cr_assert_null (sup_program_env (chatd)[2]);
    cr_assert_eq (sup_program_stop_signal (chatd), SIGINT);
    cr_assert_null (sup_conf_lookup (conf, "nope"));
    sup_conf_destroy (&conf);
    cr_assert_null (conf);
    sup_conf_destroy (&conf);
}

Test (sup_conf, the_shipped_local_suite_parses)
{
    const char *source = getenv ("LLMRT_SOURCE_DIR");
    cr_assert_not_null (source, "LLMRT_SOURCE_DIR is set by ctest");
    char path[4096];
    snprintf (path, sizeof path, "%s/deploy/local/suite.conf", source);
    setenv ("REDIS_HOST", "127.0.0.1", 1);
    setenv ("REDIS_PORT", "6399", 1);
    setenv ("RUN_DIR", "/tmp/run", 1);
    setenv ("BIN_DIR", "/tmp/bin", 1);
    unsetenv ("CHAT_REPLICAS");
    sup_conf_t *conf = sup_conf_load (path, s_err, sizeof s_err);
    cr_assert_not_null (conf, "%s", s_err);
    const char *names[] = {"redis", "gateway", "chatd", "ingestd", "agentd"};
    cr_assert_eq (sup_conf_size (conf), 5);
    for (size_t i = 0; i < 5; i++)
        cr_assert_str_eq (sup_program_name (sup_conf_program (conf, i)), names[i]);
    const sup_program_t *redis = sup_conf_lookup (conf, "redis");
    char *const *argv = sup_program_argv (redis);
    cr_assert_str_eq (argv[0], "redis-server");
    bool port = false, dir = false, daemonize = false;
    for (size_t i = 1; argv[i]; i++) {
        if (!strcmp (argv[i - 1], "--port"))
            port = !strcmp (argv[i], "6399");
        if (!strcmp (argv[i - 1], "--dir"))
            dir = !strcmp (argv[i], "/tmp/run/redis");
        if (!strcmp (argv[i - 1], "--daemonize"))
            daemonize = !strcmp (argv[i], "no");
    }
    cr_assert (port && dir && daemonize, "the continued redis line is whole");
    cr_assert_str_eq (sup_program_argv (sup_conf_lookup (conf, "gateway"))[0],
                      "/tmp/bin/gateway");
    cr_assert_eq (sup_program_replicas (sup_conf_lookup (conf, "chatd")), 2);
    sup_conf_destroy (&conf);

    setenv ("CHAT_REPLICAS", "5", 1);
    conf = sup_conf_load (path, s_err, sizeof s_err);
    cr_assert_not_null (conf, "%s", s_err);
    cr_assert_eq (sup_program_replicas (sup_conf_lookup (conf, "chatd")), 5);
    sup_conf_destroy (&conf);
}

Test (sup_conf, unknown_key_names_its_line)
{
    s_refused ("[program:a]\ncommand = true\n\nreplica = 2\n",
               "test.conf:4:", "unknown key 'replica'");
}

Test (sup_conf, undefined_variable_is_named)
{
    unsetenv ("SUP_TEST_NOPE");
    s_refused ("[program:a]\n"
               "command = /bin/${SUP_TEST_NOPE}/x\n",
               "test.conf:2:", "${SUP_TEST_NOPE}");
    //  Inside a default, too.
    s_refused ("[program:a]\n"
               "command = ${SUP_TEST_NOPE:-${SUP_TEST_NOPE_EITHER}}\n",
               "test.conf:2:", "SUP_TEST_NOPE_EITHER");
}

Test (sup_conf, replicas_are_bounded)
{
    s_refused ("[program:a]\ncommand = true\nreplicas = 65\n",
               "test.conf:3:", "from 0 to 64");
    s_refused ("[program:a]\ncommand = true\nreplicas = -1\n", "test.conf:3:", "'-1'");
    s_refused ("[program:a]\ncommand = true\nreplicas = two\n", "test.conf:3:", "'two'");
    s_refused ("[program:a]\ncommand = true\nreplicas = 1 2\n", "test.conf:3:", NULL);
    sup_conf_t *conf = s_parse ("[program:a]\ncommand = true\nreplicas = 0\n"
                                "[program:b]\ncommand = true\nreplicas = 64\n");
    cr_assert_not_null (conf, "%s", s_err);
    cr_assert_eq (sup_program_replicas (sup_conf_program (conf, 0)), 0);
    cr_assert_eq (sup_program_replicas (sup_conf_program (conf, 1)), 64);
    sup_conf_destroy (&conf);
}

Test (sup_conf, structural_errors_name_their_line)
{
    s_refused ("command = true\n", "test.conf:1:", "outside a [program:NAME]");
    s_refused ("[program:a]\ncommand = true\n[service:b]\n",
               "test.conf:3:", "unknown section");
    s_refused ("[program:a\n", "test.conf:1:", "']'");
    s_refused ("[program:]\ncommand = true\n", "test.conf:1:", "not valid");
    s_refused ("[program:a b]\ncommand = true\n", "test.conf:1:", "not valid");
    s_refused ("[program:a]\ncommand = true\n[program:a]\ncommand = true\n",
               "test.conf:3:", "twice");
    s_refused ("# only a comment\n[program:a]\nreplicas = 2\n",
               "test.conf:2:", "has no command");
    s_refused ("[program:a]\ncommand = true\ncommand = false\n",
               "test.conf:3:", "given twice");
    s_refused ("[program:a]\njust words\n", "test.conf:2:", "key = value");
    s_refused ("[program:a]\ncommand =\n", "test.conf:2:", "empty");
    s_refused ("# nothing\n", "test.conf:", "no [program:NAME]");
    s_refused ("", "test.conf:", "no [program:NAME]");
}

Test (sup_conf, values_are_checked)
{
    s_refused ("[program:a]\ncommand = true\nstop_signal = SIGNOPE\n",
               "test.conf:3:", "stop_signal");
    s_refused ("[program:a]\ncommand = true\nenv = NOEQUALS\n",
               "test.conf:3:", "KEY=VALUE");
    s_refused ("[program:a]\ncommand = true\nenv = 1BAD=x\n",
               "test.conf:3:", "KEY=VALUE");
    s_refused ("[program:a]\ncommand = true\nenv = A=1 B=2\n", "test.conf:3:", "one");
    s_refused ("[program:a]\ncommand = echo 'open\n", "test.conf:2:", "single quote");
    s_refused ("[program:a]\ncommand = echo \"open\n", "test.conf:2:", "double quote");
    s_refused ("[program:a]\ncommand = echo $HOME\n", "test.conf:2:", "$$");
    s_refused ("[program:a]\ncommand = echo ${HOME\n", "test.conf:2:", "malformed");
    s_refused ("[program:a]\ncommand = echo ${1X}\n", "test.conf:2:", "malformed");
    s_refused ("[program:a]\ncommand = echo ${X:-open\n", "test.conf:2:", "unterminated");
    //  Replicas sharing an instance id would take each other's place.
    s_refused ("[program:a]\ncommand = true\nreplicas = 2\nenv = INSTANCE_ID=one\n",
               "test.conf:1:", "INSTANCE_ID for 2 replicas");
    sup_conf_t *conf = s_parse ("[program:a]\ncommand = true\nenv = INSTANCE_ID=one\n");
    cr_assert_not_null (conf, "one replica may have its own id: %s", s_err);
    sup_conf_destroy (&conf);
}

Test (sup_conf, words_split_like_a_shell)
{
    setenv ("SUP_TEST_SPACE", "a b", 1);
    setenv ("SUP_TEST_EMPTY", "", 1);
    sup_conf_t *conf = s_parse (
        "[program:sh]\n"
        "command = sh -c 'trap \"\" TERM; echo $$x' ${SUP_TEST_SPACE} "
        "\"${SUP_TEST_SPACE}!\" ${SUP_TEST_EMPTY} \"\" a\\ b $$ pre${SUP_TEST_SPACE}\n");
    cr_assert_not_null (conf, "%s", s_err);
    char *const *argv = sup_program_argv (sup_conf_program (conf, 0));
    const char *expected[] = {
        "sh",     "-c", "trap \"\" TERM; echo $$x", "a b", "a b!", "", "a b", "$",
        "prea b", NULL};
    for (size_t i = 0; expected[i]; i++)
        cr_assert_str_eq (argv[i], expected[i], "word %zu", i);
    cr_assert_null (argv[9]);
    cr_assert_eq (sup_program_argc (sup_conf_program (conf, 0)), 9);
    sup_conf_destroy (&conf);
}

Test (sup_conf, continuation_comments_and_crlf)
{
    sup_conf_t *conf = s_parse ("; also a comment\r\n"
                                "  [ program:a ]  \r\n"
                                "   # indented comment\r\n"
                                "command = echo one \\\r\n"
                                "          two \\\n"
                                "          three\n"
                                "replicas = 2\n");
    cr_assert_not_null (conf, "%s", s_err);
    const sup_program_t *a = sup_conf_program (conf, 0);
    cr_assert_eq (sup_program_argc (a), 4);
    cr_assert_str_eq (sup_program_argv (a)[3], "three");
    cr_assert_eq (sup_program_replicas (a), 2);
    sup_conf_destroy (&conf);
    //  An error after a continued line names the line where it began.
    s_refused ("[program:a]\ncommand = echo \\\n  one\nbogus = \\\n 1\n",
               "test.conf:4:", "bogus");
}

Test (sup_conf, expand_defaults_and_escapes)
{
    setenv ("SUP_TEST_SET", "value", 1);
    setenv ("SUP_TEST_EMPTY", "", 1);
    unsetenv ("SUP_TEST_UNSET");
    const char *cases[][2] = {
        {"plain", "plain"},
        {"${SUP_TEST_SET}", "value"},
        {"x${SUP_TEST_SET}y", "xvaluey"},
        {"${SUP_TEST_UNSET:-fallback}", "fallback"},
        {"${SUP_TEST_EMPTY:-fallback}", "fallback"},
        {"${SUP_TEST_EMPTY}", ""},
        {"${SUP_TEST_SET:-fallback}", "value"},
        {"${SUP_TEST_UNSET:-${SUP_TEST_SET}/x}", "value/x"},
        {"${SUP_TEST_UNSET:-a{b}c}", "a{bc}"},
        {"${SUP_TEST_UNSET:-}", ""},
        {"$$HOME", "$HOME"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char *out = sup_conf_expand (cases[i][0], s_err, sizeof s_err);
        cr_assert_not_null (out, "%s: %s", cases[i][0], s_err);
        cr_assert_str_eq (out, cases[i][1], "%s", cases[i][0]);
        free (out);
    }
    cr_assert_null (sup_conf_expand ("${SUP_TEST_UNSET}", s_err, sizeof s_err));
    cr_assert (strstr (s_err, "SUP_TEST_UNSET"));
}

Test (sup_conf, missing_file_is_named)
{
    cr_assert_null (sup_conf_load ("/nonexistent/suite.conf", s_err, sizeof s_err));
    cr_assert (strstr (s_err, "/nonexistent/suite.conf"), "%s", s_err);
}

Test (sup_conf, a_bad_value_names_the_variables_it_came_from)
{
    setenv ("SUP_TEST_REPLICAS", "abc", 1);
    setenv ("SUP_TEST_SIGNAL", "STOP", 1);
    setenv ("SUP_TEST_ENV", "NOEQUALS", 1);
    setenv ("SUP_TEST_EMPTY", "", 1);
    setenv ("SUP_TEST_TWO", "1 2", 1);
    unsetenv ("SUP_TEST_UNSET");
    s_refused ("[program:a]\ncommand = true\nreplicas = ${SUP_TEST_REPLICAS}\n",
               "test.conf:3: replicas: 'abc' is not a whole number from 0 to 64 "
               "(from SUP_TEST_REPLICAS)",
               NULL);
    //  Through a default, and with the default's own variables.
    s_refused ("[program:a]\ncommand = true\n"
               "replicas = ${SUP_TEST_UNSET:-${SUP_TEST_REPLICAS}}\n",
               "(from SUP_TEST_REPLICAS)", NULL);
    s_refused ("[program:a]\ncommand = true\nreplicas = x${SUP_TEST_REPLICAS}"
               "${SUP_TEST_EMPTY}${SUP_TEST_REPLICAS}\n",
               "(from SUP_TEST_REPLICAS, SUP_TEST_EMPTY)", NULL);
    //  A value that expanded to nothing, or to text with a space (one word).
    s_refused ("[program:a]\ncommand = true\nreplicas = ${SUP_TEST_EMPTY}\n",
               "replicas: '' is not", "(from SUP_TEST_EMPTY)");
    s_refused ("[program:a]\ncommand = true\nreplicas = ${SUP_TEST_TWO}\n",
               "replicas: '1 2' is not", "(from SUP_TEST_TWO)");
    s_refused ("[program:a]\ncommand = true\nstop_signal = ${SUP_TEST_SIGNAL}\n",
               "test.conf:3: stop_signal: 'STOP'", "(from SUP_TEST_SIGNAL)");
    s_refused ("[program:a]\ncommand = true\nenv = ${SUP_TEST_ENV}\n",
               "test.conf:3: env: 'NOEQUALS'", "(from SUP_TEST_ENV)");
    s_refused ("[program:a]\ncommand = true\nenv = ${SUP_TEST_ENV} B=${SUP_TEST_TWO}\n",
               "expected one KEY=VALUE", "(from SUP_TEST_ENV, SUP_TEST_TWO)");
    //  A literal mistake, or a default's, names no variable.
    sup_conf_t *conf = s_parse ("[program:a]\ncommand = true\nreplicas = abc\n");
    cr_assert_null (conf);
    cr_assert_null (strstr (s_err, "(from"), "%s", s_err);
    conf = s_parse ("[program:a]\ncommand = true\nreplicas = ${SUP_TEST_UNSET:-x}\n");
    cr_assert_null (conf);
    cr_assert_null (strstr (s_err, "(from"), "%s", s_err);
}

Test (sup_conf, the_shipped_suite_names_chat_replicas)
{
    const char *source = getenv ("LLMRT_SOURCE_DIR");
    cr_assert_not_null (source, "LLMRT_SOURCE_DIR is set by ctest");
    char path[4096];
    snprintf (path, sizeof path, "%s/deploy/local/suite.conf", source);
    setenv ("REDIS_HOST", "127.0.0.1", 1);
    setenv ("REDIS_PORT", "6399", 1);
    setenv ("RUN_DIR", "/tmp/run", 1);
    setenv ("BIN_DIR", "/tmp/bin", 1);
    setenv ("CHAT_REPLICAS", "abc", 1);
    cr_assert_null (sup_conf_load (path, s_err, sizeof s_err));
    cr_assert (strstr (s_err, "replicas: 'abc' is not a whole number from 0 to 64 "
                              "(from CHAT_REPLICAS)"),
               "%s", s_err);
    unsetenv ("CHAT_REPLICAS");
}

//  Parse text, which must succeed, then check its commands: 0 or -1.
static int
s_check (const char *text)
{
    sup_conf_t *conf = s_parse (text);
    cr_assert_not_null (conf, "%s", s_err);
    int rc = sup_conf_check (conf, s_err, sizeof s_err);
    sup_conf_destroy (&conf);
    return rc;
}

Test (sup_conf, every_command_that_runs_must_be_executable)
{
    char dir[] = "/tmp/test_sup_conf.XXXXXX";
    cr_assert_not_null (mkdtemp (dir));
    char plain[4096], text[8192];
    snprintf (plain, sizeof plain, "%s/plain", dir);
    FILE *file = fopen (plain, "w");
    fputs ("not a program\n", file);
    fclose (file);
    cr_assert_eq (chmod (plain, 0644), 0);
    setenv ("SUP_TEST_BIN", dir, 1);
    setenv ("SUP_TEST_FILE", "/etc/passwd", 1);

    //  Names found in PATH and paths to programs pass.
    cr_assert_eq (s_check ("[program:a]\ncommand = sh -c true\n"
                           "[program:b]\ncommand = /bin/sh\n"),
                  0, "%s", s_err);
    //  A program left out may name anything.
    cr_assert_eq (s_check ("[program:a]\ncommand = /nonexistent/x\nreplicas = 0\n"), 0,
                  "%s", s_err);

    cr_assert_eq (s_check ("[program:a]\ncommand = sh\n"
                           "[program:gateway]\n# the gateway\n"
                           "command = ${SUP_TEST_BIN}/gateway --port ${SUP_TEST_FILE}\n"),
                  -1);
    snprintf (text, sizeof text,
              "test.conf:5: [program:gateway] cannot run command '%s/gateway': "
              "No such file or directory (from SUP_TEST_BIN)",
              dir);
    cr_assert_str_eq (s_err, text);

    cr_assert_eq (s_check ("[program:a]\ncommand = ${SUP_TEST_FILE}/gateway\n"), -1);
    cr_assert (strstr (s_err, "'/etc/passwd/gateway': Not a directory "
                              "(from SUP_TEST_FILE)"),
               "%s", s_err);
    cr_assert_eq (s_check ("[program:a]\ncommand = ${SUP_TEST_BIN}\n"), -1);
    cr_assert (strstr (s_err, "it is a directory"), "%s", s_err);
    snprintf (text, sizeof text, "[program:a]\ncommand = %s\n", plain);
    cr_assert_eq (s_check (text), -1);
    cr_assert (strstr (s_err, "it is not executable"), "%s", s_err);
    cr_assert_eq (s_check ("[program:a]\ncommand = ''\n"), -1);
    cr_assert (strstr (s_err, "command '': it is empty"), "%s", s_err);

    //  A bare name is looked up in PATH, as execvp does.
    cr_assert_eq (s_check ("[program:redis]\ncommand = sup-test-no-such-program -x\n"),
                  -1);
    cr_assert (strstr (s_err, "test.conf:2: [program:redis] cannot run command "
                              "'sup-test-no-such-program': no executable "
                              "'sup-test-no-such-program' in PATH ("),
               "%s", s_err);
    char *path = strdup (getenv ("PATH"));
    setenv ("PATH", dir, 1);
    cr_assert_eq (s_check ("[program:a]\ncommand = plain\n"), -1);
    cr_assert_eq (chmod (plain, 0755), 0);
    cr_assert_eq (s_check ("[program:a]\ncommand = plain\n"), 0, "%s", s_err);
    setenv ("PATH", path, 1);
    free (path);

    unlink (plain);
    rmdir (dir);
}
