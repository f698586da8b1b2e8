/*  cm_config.c: see cm_config.h. */
#include "cm_config.h"
#include <errno.h>
#include <sys/stat.h>
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

//  A port as ZeroMQ and people write it: digits only, 1..65535.
static bool
s_valid_port (const char *text, size_t len)
{
    if (len == 0 || len > 5)
        return false;
    long port = 0;
    for (size_t i = 0; i < len; i++) {
        if (text[i] < '0' || text[i] > '9')
            return false;
        port = port * 10 + (text[i] - '0');
    }
    return port >= 1 && port <= 65535;
}

//  Why text is not an endpoint to bind (bind) or connect to; NULL when it
//  is one.
static const char *
s_endpoint_problem (const char *text, bool bind)
{
    for (const char *c = text; *c; c++)
        if ((unsigned char) *c <= ' ' || *c == 0x7f)
            return "it has a space or a control character";
    if (!strncmp (text, "inproc://", 9))
        return "inproc:// cannot reach another process";
    if (!strncmp (text, "ipc://", 6)) {
        size_t len = strlen (text + 6);
        if (len == 0 || len >= 108)
            return "the ipc:// path must be 1 to 107 bytes";
        if (!bind && !strcmp (text + 6, "*"))
            return "'*' can only be bound; give the path to connect to";
        return NULL;
    }
    if (strncmp (text, "tcp://", 6))
        return "it is neither tcp:// nor ipc://";
    const char *host = text + 6;
    const char *colon = strrchr (host, ':');
    if (!colon)
        return "it has no port (tcp://host:port)";
    if (colon == host)
        return "it has no host (tcp://host:port)";
    if (!bind && colon - host == 1 && *host == '*')
        return "'*' (every interface) can only be bound; give the host to connect to";
    if (!s_valid_port (colon + 1, strlen (colon + 1)))
        return "the port must be a number from 1 to 65535";
    return NULL;
}

static bool
s_valid_url (const char *text)
{
    const char *sep = strstr (text, "://");
    return sep && sep > text && sep[3];
}

//  A CM_CONF_TOKEN value: 1..max printable ASCII bytes, no space. The
//  value is not quoted: it may be a key.
static int
s_token_check (const cm_conf_entry_t *e, const char *text, char *err, size_t errlen)
{
    size_t len = strlen (text);
    for (size_t i = 0; i < len; i++)
        if ((unsigned char) text[i] <= ' ' || (unsigned char) text[i] >= 0x7f) {
            snprintf (err, errlen,
                      "%s: byte %zu is a space, a control character or not ASCII "
                      "(printable ASCII without spaces only)",
                      e->name, i + 1);
            return -1;
        }
    if (e->max > 0 && len > (size_t) e->max) {
        snprintf (err, errlen, "%s: %zu bytes long; at most %lld", e->name, len,
                  (long long) e->max);
        return -1;
    }
    return 0;
}

static bool
s_is_string (cm_conf_type_t type)
{
    return type == CM_CONF_STR || type == CM_CONF_ENDPOINT || type == CM_CONF_BIND ||
           type == CM_CONF_TOKEN || type == CM_CONF_URL;
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
            case CM_CONF_BIND:
            case CM_CONF_TOKEN:
            case CM_CONF_URL:
            case CM_CONF_STR: {
                const char *problem =
                    text && (e->type == CM_CONF_ENDPOINT || e->type == CM_CONF_BIND)
                        ? s_endpoint_problem (text, e->type == CM_CONF_BIND)
                        : NULL;
                if (problem) {
                    snprintf (err, errlen, "%s: '%s' is not a ZeroMQ endpoint to %s: %s",
                              e->name, text,
                              e->type == CM_CONF_BIND ? "bind" : "connect to", problem);
                    return -1;
                }
                if (text && e->type == CM_CONF_TOKEN &&
                    s_token_check (e, text, err, errlen))
                    return -1;
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
        if (s_is_string (e->type)) {
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

int
cm_config_check_dir (const char *name, const char *path, char *err, size_t errlen)
{
    assert (name && path);
    struct stat st;
    //  ENOTDIR: some component of the path is a file.
    bool bad = stat (path, &st) == 0 ? !S_ISDIR (st.st_mode) : errno == ENOTDIR;
    if (bad)
        snprintf (err, errlen, "%s: '%s' is not a directory", name, path);
    return bad ? -1 : 0;
}

int
cm_config_check_storage (const char *storage_dir, const char *run_dir, char *err,
                         size_t errlen)
{
    assert (run_dir);
    if (storage_dir && *storage_dir)
        return cm_config_check_dir ("STORAGE_DIR", storage_dir, err, errlen);
    if (cm_config_check_dir ("RUN_DIR", run_dir, err, errlen)) {
        size_t len = strlen (err);
        snprintf (err + len, errlen > len ? errlen - len : 0,
                  " (STORAGE_DIR is unset, so the database goes in $RUN_DIR/storage)");
        return -1;
    }
    char path[4096];
    snprintf (path, sizeof path, "%s/storage", run_dir);
    if (cm_config_check_dir ("STORAGE_DIR", path, err, errlen)) {
        size_t len = strlen (err);
        snprintf (err + len, errlen > len ? errlen - len : 0,
                  " (unset, so $RUN_DIR/storage with RUN_DIR='%s')", run_dir);
        return -1;
    }
    return 0;
}
