/*  cm_config.c: see cm_config.h. */
#include "cm_config.h"
#include <errno.h>
#include <strings.h>

int
cm_config_parse_int (const char *text, int64_t min, int64_t max, int64_t *value)
{
    assert (text && value);
    while (*text == ' ')
        text++;
    if (!*text)
        return -1;
    errno = 0;
    char *end;
    long long v = strtoll (text, &end, 10);
    while (*end == ' ')
        end++;
    if (errno || *end || v < min || v > max)
        return -1;
    *value = v;
    return 0;
}

int
cm_config_parse_double (const char *text, double min, double max, double *value)
{
    assert (text && value);
    while (*text == ' ')
        text++;
    //  Decimal only: strtod would also take "inf", "nan" and hex floats.
    if (!*text || strpbrk (text, "xXiInN"))
        return -1;
    errno = 0;
    char *end;
    double v = strtod (text, &end);
    while (*end == ' ')
        end++;
    if (errno || *end || end == text || !(v >= min && v <= max))
        return -1;
    *value = v;
    return 0;
}

int
cm_config_parse_bool (const char *text, bool *value)
{
    static const char *yes[] = {"1", "true", "yes", "on"};
    static const char *no[] = {"0", "false", "no", "off"};
    for (int i = 0; i < 4; i++) {
        if (!strcasecmp (text, yes[i])) {
            *value = true;
            return 0;
        }
        if (!strcasecmp (text, no[i])) {
            *value = false;
            return 0;
        }
    }
    return -1;
}

static bool
s_valid_endpoint (const char *text)
{
    if (!strncmp (text, "tcp://", 6)) {
        const char *colon = strrchr (text + 6, ':');
        int64_t port;
        return colon && colon > text + 6 &&
               (!strcmp (colon + 1, "*") ||
                cm_config_parse_int (colon + 1, 0, 65535, &port) == 0);
    }
    return (!strncmp (text, "ipc://", 6) && text[6]) ||
           (!strncmp (text, "inproc://", 9) && text[9]);
}

static bool
s_valid_url (const char *text)
{
    const char *sep = strstr (text, "://");
    return sep && sep > text && sep[3];
}

int
cm_config_load (const cm_conf_entry_t *table, void *target, char *err, size_t errlen)
{
    assert (table && target);
    char *base = (char *) target;
    for (const cm_conf_entry_t *e = table; e->name; e++) {
        const char *env = getenv (e->name);
        const char *text = (env && *env) ? env : e->def;
        switch (e->type) {
            case CM_CONF_INT: {
                int64_t v;
                if (!text || cm_config_parse_int (text, e->min, e->max, &v)) {
                    snprintf (err, errlen,
                              "%s: '%s' is not a whole number from %lld to %lld", e->name,
                              text ? text : "", (long long) e->min, (long long) e->max);
                    return -1;
                }
                *(int64_t *) (base + e->offset) = v;
                break;
            }
            case CM_CONF_DOUBLE: {
                double v;
                if (!text ||
                    cm_config_parse_double (text, (double) e->min, (double) e->max, &v)) {
                    snprintf (err, errlen, "%s: '%s' is not a number from %lld to %lld",
                              e->name, text ? text : "", (long long) e->min,
                              (long long) e->max);
                    return -1;
                }
                *(double *) (base + e->offset) = v;
                break;
            }
            case CM_CONF_BOOL: {
                bool v = false;
                if (!text || cm_config_parse_bool (text, &v)) {
                    snprintf (err, errlen, "%s: '%s' is not a boolean (1/0, true/false)",
                              e->name, text ? text : "");
                    return -1;
                }
                *(bool *) (base + e->offset) = v;
                break;
            }
            case CM_CONF_ENDPOINT:
            case CM_CONF_URL:
            case CM_CONF_STR: {
                if (text && e->type == CM_CONF_ENDPOINT && !s_valid_endpoint (text)) {
                    snprintf (err, errlen,
                              "%s: '%s' is not a ZeroMQ endpoint (tcp://host:port, "
                              "ipc://path)",
                              e->name, text);
                    return -1;
                }
                if (text && e->type == CM_CONF_URL && !s_valid_url (text)) {
                    snprintf (err, errlen, "%s: '%s' is not a URL (scheme://...)",
                              e->name, text);
                    return -1;
                }
                char **slot = (char **) (base + e->offset);
                free (*slot);
                *slot = text ? cm_strdup (text) : NULL;
                break;
            }
        }
    }
    return 0;
}

void
cm_config_free (const cm_conf_entry_t *table, void *target)
{
    char *base = (char *) target;
    for (const cm_conf_entry_t *e = table; e->name; e++)
        if (e->type == CM_CONF_STR || e->type == CM_CONF_ENDPOINT ||
            e->type == CM_CONF_URL) {
            char **slot = (char **) (base + e->offset);
            free (*slot);
            *slot = NULL;
        }
}

void
cm_config_usage (const cm_conf_entry_t *table, FILE *out)
{
    for (const cm_conf_entry_t *e = table; e->name; e++)
        fprintf (out, "  %-32s default %-24s %s\n", e->name, e->def ? e->def : "(unset)",
                 e->help);
}
