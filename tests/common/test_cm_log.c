/*  test_cm_log.c: LOG_LEVEL, read the same way by every program: the
    supervisor's names in any case, and anything else a bad setting named. */
#include <criterion/criterion.h>
#include "cm_config.h"
#include "cm_log.h"

Test (cm_log, levels_by_name_in_any_case)
{
    static const struct {
        const char *name;
        int level;
    } cases[] = {
        {"debug", CM_LOG_DEBUG},  {"INFO", CM_LOG_INFO},   {"Warn", CM_LOG_WARN},
        {"warning", CM_LOG_WARN}, {"error", CM_LOG_ERROR},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        cr_assert_eq (cm_log_level_parse (cases[i].name), cases[i].level, "%s",
                      cases[i].name);
        char err[128] = "";
        cr_assert_eq (cm_log_level_apply (cases[i].name, err, sizeof err), 0, "%s", err);
    }
    cm_log_level_apply ("info", NULL, 0);
}

Test (cm_log, an_unknown_level_is_a_bad_setting_named)
{
    static const char *bad[] = {"verbose", "trace", "0", "", " info", "errors"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        char err[128] = "";
        cr_assert_eq (cm_log_level_apply (bad[i], err, sizeof err), -1, "'%s'", bad[i]);
        cr_assert (strstr (err, "LOG_LEVEL: '"), "%s", err);
    }
    char err[128] = "";
    cr_assert_eq (cm_log_level_apply (NULL, err, sizeof err), -1);
    cr_assert (strstr (err, "LOG_LEVEL"), "%s", err);
}

Test (cm_log, the_table_entry_lists_it_with_its_default)
{
    typedef struct {
        char *level;
    } settings_t;
    static const cm_conf_entry_t table[] = {
        CM_LOG_CONF_ENTRY (settings_t, level),
        {NULL, 0, NULL, 0, 0, 0, NULL},
    };
    cr_assert_str_eq (table[0].name, "LOG_LEVEL");
    cr_assert_str_eq (table[0].def, "info");
    unsetenv ("LOG_LEVEL");
    settings_t s = {0};
    char err[128];
    cr_assert_eq (cm_config_load (table, &s, err, sizeof err), 0);
    cr_assert_eq (cm_log_level_apply (s.level, err, sizeof err), 0);
    cm_config_free (table, &s);
}
