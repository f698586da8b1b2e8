/*  test_cm_config.c: settings from the environment, and bad values named. */
#include <criterion/criterion.h>
#include "cm_config.h"
#include <unistd.h>

typedef struct {
    int64_t port;
    char *name;
    bool flag;
    char *endpoint;
} settings_t;

static const cm_conf_entry_t s_table[] = {
    {"TEST_PORT", CM_CONF_INT, "3001", 1, 65535, offsetof (settings_t, port), "port"},
    {"TEST_NAME", CM_CONF_STR, "alpha", 0, 0, offsetof (settings_t, name), "name"},
    {"TEST_FLAG", CM_CONF_BOOL, "false", 0, 0, offsetof (settings_t, flag), "flag"},
    {"TEST_EP", CM_CONF_ENDPOINT, "tcp://127.0.0.1:5555", 0, 0,
     offsetof (settings_t, endpoint), "endpoint"},
    {NULL, 0, NULL, 0, 0, 0, NULL},
};

static void
s_clear (void)
{
    unsetenv ("TEST_PORT");
    unsetenv ("TEST_NAME");
    unsetenv ("TEST_FLAG");
    unsetenv ("TEST_EP");
}

Test (cm_config, walkthrough_defaults_then_environment)
{
    s_clear ();
    settings_t s = {0};
    char err[256];
    cr_assert_eq (cm_config_load (s_table, &s, err, sizeof err), 0);
    cr_assert_eq (s.port, 3001);
    cr_assert_str_eq (s.name, "alpha");
    cr_assert_not (s.flag);
    setenv ("TEST_PORT", "8080", 1);
    setenv ("TEST_FLAG", "yes", 1);
    cr_assert_eq (cm_config_load (s_table, &s, err, sizeof err), 0);
    cr_assert_eq (s.port, 8080);
    cr_assert (s.flag);
    cm_config_free (s_table, &s);
    cr_assert_null (s.name);
    s_clear ();
}

Test (cm_config, bad_integer_names_the_variable)
{
    s_clear ();
    settings_t s = {0};
    char err[256] = "";
    setenv ("TEST_PORT", "80x", 1);
    cr_assert_eq (cm_config_load (s_table, &s, err, sizeof err), -1);
    cr_assert (strstr (err, "TEST_PORT"), "error was: %s", err);
    cr_assert (strstr (err, "80x"));
    cm_config_free (s_table, &s);
    s_clear ();
}

Test (cm_config, out_of_bounds_is_refused)
{
    s_clear ();
    settings_t s = {0};
    char err[256] = "";
    setenv ("TEST_PORT", "70000", 1);
    cr_assert_eq (cm_config_load (s_table, &s, err, sizeof err), -1);
    cr_assert (strstr (err, "TEST_PORT"));
    setenv ("TEST_PORT", "0", 1);
    cr_assert_eq (cm_config_load (s_table, &s, err, sizeof err), -1);
    cm_config_free (s_table, &s);
    s_clear ();
}

Test (cm_config, bad_bool_and_endpoint_are_refused)
{
    s_clear ();
    settings_t s = {0};
    char err[256] = "";
    setenv ("TEST_FLAG", "maybe", 1);
    cr_assert_eq (cm_config_load (s_table, &s, err, sizeof err), -1);
    cr_assert (strstr (err, "TEST_FLAG"));
    unsetenv ("TEST_FLAG");
    setenv ("TEST_EP", "localhost:5555", 1);
    cr_assert_eq (cm_config_load (s_table, &s, err, sizeof err), -1);
    cr_assert (strstr (err, "TEST_EP"), "error was: %s", err);
    setenv ("TEST_EP", "tcp://127.0.0.1:99999", 1);
    cr_assert_eq (cm_config_load (s_table, &s, err, sizeof err), -1);
    cm_config_free (s_table, &s);
    s_clear ();
}

Test (cm_config, parse_helpers)
{
    int64_t v;
    bool b;
    cr_assert_eq (cm_config_parse_int (" 42", 0, 100, &v), 0);
    cr_assert_eq (v, 42);
    cr_assert_eq (cm_config_parse_int ("", 0, 100, &v), -1);
    cr_assert_eq (cm_config_parse_int ("-1", 0, 100, &v), -1);
    cr_assert_eq (cm_config_parse_bool ("ON", &b), 0);
    cr_assert (b);
    cr_assert_eq (cm_config_parse_bool ("nah", &b), -1);
}

Test (cm_config, decimal_numbers_and_their_bounds)
{
    //  CM_CONF_DOUBLE: fractional settings (rates), bounded like integers.
    typedef struct {
        double rate;
    } rate_settings_t;
    static const cm_conf_entry_t table[] = {
        {"TEST_RATE", CM_CONF_DOUBLE, "0", 0, 1000, offsetof (rate_settings_t, rate),
         "rate"},
        {NULL, 0, NULL, 0, 0, 0, NULL},
    };
    rate_settings_t s = {0};
    char err[256] = "";
    unsetenv ("TEST_RATE");
    cr_assert_eq (cm_config_load (table, &s, err, sizeof err), 0);
    cr_assert_eq (s.rate, 0);
    setenv ("TEST_RATE", "0.5", 1);
    cr_assert_eq (cm_config_load (table, &s, err, sizeof err), 0);
    cr_assert_eq (s.rate, 0.5);
    const char *bad[] = {"fast", "1.5x", "-1", "1001", "inf", "nan", "0x10", "."};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        setenv ("TEST_RATE", bad[i], 1);
        cr_assert_eq (cm_config_load (table, &s, err, sizeof err), -1, "%s", bad[i]);
        cr_assert (strstr (err, "TEST_RATE") && strstr (err, bad[i]), "error was: %s",
                   err);
    }
    double v;
    cr_assert_eq (cm_config_parse_double (" 2.5e2 ", 0, 1000, &v), 0);
    cr_assert_eq (v, 250);
    unsetenv ("TEST_RATE");
}

Test (cm_config, endpoints_must_be_able_to_work_in_their_direction)
{
    //  CM_CONF_ENDPOINT is connected to, CM_CONF_BIND is bound: only a bind
    //  may say '*'; both need a real port, and neither takes inproc://,
    //  which cannot reach another process.
    typedef struct {
        char *peer;
        char *bind;
    } endpoints_t;
    static const cm_conf_entry_t table[] = {
        {"TEST_PEER", CM_CONF_ENDPOINT, "tcp://127.0.0.1:5555", 0, 0,
         offsetof (endpoints_t, peer), "connect"},
        {"TEST_BIND", CM_CONF_BIND, "tcp://127.0.0.1:5555", 0, 0,
         offsetof (endpoints_t, bind), "bind"},
        {NULL, 0, NULL, 0, 0, 0, NULL},
    };
    char long_ipc[128] = "ipc://";
    memset (long_ipc + 6, 'a', 108);
    //  A random port ('*', 0) is refused even to bind: no daemon could be
    //  told where to connect.
    const char *bad_everywhere[] = {"tcp://127.0.0.1:0",
                                    "tcp://127.0.0.1:*",
                                    "tcp://127.0.0.1: 5990",
                                    "tcp://127.0.0.1:+5990",
                                    "tcp://127.0.0.1:-1",
                                    "tcp://127.0.0.1:65536",
                                    "tcp://127.0.0.1:",
                                    "tcp://127.0.0.1",
                                    "tcp://:5990",
                                    "tcp://127.0.0.1:5990 ",
                                    "tcp://a\nb:5990",
                                    "inproc://x",
                                    "ipc://",
                                    "udp://127.0.0.1:5990",
                                    "localhost:5555",
                                    long_ipc};
    static const char *bad_to_connect[] = {"tcp://*:5990", "ipc://*"};
    static const char *good_everywhere[] = {"tcp://127.0.0.1:5555", "tcp://0.0.0.0:5555",
                                            "tcp://gateway:1",      "tcp://[::1]:65535",
                                            "ipc:///tmp/x.sock",    "ipc://@abstract"};
    endpoints_t s = {0};
    char err[512];
    for (size_t i = 0; i < sizeof bad_everywhere / sizeof *bad_everywhere; i++)
        for (int j = 0; j < 2; j++) {
            const char *name = j ? "TEST_BIND" : "TEST_PEER";
            setenv (name, bad_everywhere[i], 1);
            err[0] = 0;
            cr_assert_eq (cm_config_load (table, &s, err, sizeof err), -1, "%s=%s", name,
                          bad_everywhere[i]);
            cr_assert (strstr (err, name), "error was: %s", err);
            unsetenv (name);
        }
    for (size_t i = 0; i < sizeof bad_to_connect / sizeof *bad_to_connect; i++) {
        setenv ("TEST_PEER", bad_to_connect[i], 1);
        cr_assert_eq (cm_config_load (table, &s, err, sizeof err), -1, "%s",
                      bad_to_connect[i]);
        cr_assert (strstr (err, "TEST_PEER") && strstr (err, "only be bound"),
                   "error was: %s", err);
        unsetenv ("TEST_PEER");
    }
    //  Binding every interface is fine.
    setenv ("TEST_BIND", "tcp://*:5990", 1);
    cr_assert_eq (cm_config_load (table, &s, err, sizeof err), 0, "%s", err);
    cr_assert_str_eq (s.bind, "tcp://*:5990");
    setenv ("TEST_BIND", "tcp://127.0.0.1:0", 1);
    cr_assert_eq (cm_config_load (table, &s, err, sizeof err), -1);
    cr_assert (strstr (err, "TEST_BIND: 'tcp://127.0.0.1:0' is not a ZeroMQ endpoint to "
                            "bind: the port must be a number from 1 to 65535"),
               "%s", err);
    for (size_t i = 0; i < sizeof good_everywhere / sizeof *good_everywhere; i++) {
        setenv ("TEST_PEER", good_everywhere[i], 1);
        setenv ("TEST_BIND", good_everywhere[i], 1);
        cr_assert_eq (cm_config_load (table, &s, err, sizeof err), 0, "%s: %s",
                      good_everywhere[i], err);
        cr_assert_str_eq (s.peer, good_everywhere[i]);
        cr_assert_str_eq (s.bind, good_everywhere[i]);
    }
    cm_config_free (table, &s);
    unsetenv ("TEST_PEER");
    unsetenv ("TEST_BIND");
}

Test (cm_config, tokens_are_printable_ascii_without_spaces_and_bounded)
{
    //  CM_CONF_TOKEN: ids and keys (INSTANCE_ID is a ZeroMQ routing id of
    //  1..255 bytes; ADMIN_API_KEY travels in a header). The value is not
    //  quoted in the error: it may be a secret.
    typedef struct {
        char *id;
    } token_t;
    static const cm_conf_entry_t table[] = {
        {"TEST_ID", CM_CONF_TOKEN, NULL, 0, 255, offsetof (token_t, id), "id"},
        {NULL, 0, NULL, 0, 0, 0, NULL},
    };
    token_t s = {0};
    char err[512];
    unsetenv ("TEST_ID");
    cr_assert_eq (cm_config_load (table, &s, err, sizeof err), 0);
    cr_assert_null (s.id, "unset stays unset");
    char longest[256], too_long[257];
    memset (longest, 'x', 255);
    longest[255] = 0;
    memset (too_long, 's', 256);
    too_long[256] = 0;
    const char *good[] = {"chat-host-42", "a", "~!#$%&'()*+,-./:;<=>?@[]^_`{|}", longest};
    for (size_t i = 0; i < sizeof good / sizeof *good; i++) {
        setenv ("TEST_ID", good[i], 1);
        cr_assert_eq (cm_config_load (table, &s, err, sizeof err), 0, "%s: %s", good[i],
                      err);
        cr_assert_str_eq (s.id, good[i]);
    }
    const char *bad[] = {" ",       "a b",         "a\nb",  "tab\there",
                         "del\x7f", "caf\xc3\xa9", too_long};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        setenv ("TEST_ID", bad[i], 1);
        err[0] = 0;
        cr_assert_eq (cm_config_load (table, &s, err, sizeof err), -1, "%s", bad[i]);
        cr_assert (strstr (err, "TEST_ID"), "error was: %s", err);
    }
    setenv ("TEST_ID", "s3cret key", 1);
    cr_assert_eq (cm_config_load (table, &s, err, sizeof err), -1);
    cr_assert_null (strstr (err, "s3cret"), "the value is quoted: %s", err);
    cm_config_free (table, &s);
    unsetenv ("TEST_ID");
}

Test (cm_config, a_directory_setting_that_is_a_file_is_refused)
{
    char dir[] = "/tmp/llmrt-conf-XXXXXX";
    cr_assert_not_null (mkdtemp (dir));
    char file[64], under_file[80], missing[80], storage[80];
    snprintf (file, sizeof file, "%s/file", dir);
    snprintf (under_file, sizeof under_file, "%s/file/storage", dir);
    snprintf (missing, sizeof missing, "%s/not/yet", dir);
    snprintf (storage, sizeof storage, "%s/storage", dir);
    FILE *f = fopen (file, "w");
    cr_assert_not_null (f);
    fclose (f);
    char err[512];
    //  A directory, or one still to be made: fine.
    cr_assert_eq (cm_config_check_dir ("X_DIR", dir, err, sizeof err), 0);
    cr_assert_eq (cm_config_check_dir ("X_DIR", missing, err, sizeof err), 0);
    //  A file, or a path through one: a bad setting, named.
    cr_assert_eq (cm_config_check_dir ("X_DIR", file, err, sizeof err), -1);
    cr_assert (strstr (err, "X_DIR: '") && strstr (err, "is not a directory"), "%s", err);
    cr_assert_eq (cm_config_check_dir ("X_DIR", under_file, err, sizeof err), -1);

    //  The database's directory: STORAGE_DIR when set, else $RUN_DIR/storage,
    //  and then the message names RUN_DIR too.
    cr_assert_eq (cm_config_check_storage (NULL, dir, err, sizeof err), 0);
    cr_assert_eq (cm_config_check_storage (missing, file, err, sizeof err), 0,
                  "RUN_DIR does not matter when STORAGE_DIR is set");
    cr_assert_eq (cm_config_check_storage (file, dir, err, sizeof err), -1);
    cr_assert (strstr (err, "STORAGE_DIR: '"), "%s", err);
    cr_assert_eq (cm_config_check_storage ("", file, err, sizeof err), -1);
    cr_assert (strstr (err, "RUN_DIR: '") && strstr (err, "STORAGE_DIR"), "%s", err);
    f = fopen (storage, "w");
    cr_assert_not_null (f);
    fclose (f);
    cr_assert_eq (cm_config_check_storage (NULL, dir, err, sizeof err), -1);
    cr_assert (strstr (err, "STORAGE_DIR: '") && strstr (err, "RUN_DIR"), "%s", err);
    unlink (storage);
    unlink (file);
    rmdir (dir);
}
