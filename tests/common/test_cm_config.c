/*  test_cm_config.c: settings from the environment, and bad values named. */
#include <criterion/criterion.h>
#include "cm_config.h"

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
