/*  sup_env.c: see sup_env.h. */
#include "sup_env.h"
#include "cm_log.h"
#include "cm_redis.h"
#include "cm_reporter.h"
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <sodium.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

const cm_conf_entry_t sup_env_table[] = {
    {"SUPERVISOR_RESTART_INITIAL_MS", CM_CONF_INT, "500", 1, 3600000,
     offsetof (sup_settings_t, restart_initial_ms),
     "delay before restarting a crashed child; doubles with each quick crash"},
    {"SUPERVISOR_RESTART_MAX_MS", CM_CONF_INT, "30000", 1, 3600000,
     offsetof (sup_settings_t, restart_max_ms), "cap on the restart delay"},
    {"SUPERVISOR_RESTART_RESET_MS", CM_CONF_INT, "10000", 0, 86400000,
     offsetof (sup_settings_t, restart_reset_ms),
     "a run this long counts as stable: the delay goes back to the initial one"},
    {"SUPERVISOR_MAX_CRASHES", CM_CONF_INT, "10", 0, 100000,
     offsetof (sup_settings_t, max_crashes),
     "exits within the crash window after which a child is given up (0: never)"},
    {"SUPERVISOR_CRASH_WINDOW_MS", CM_CONF_INT, "300000", 1, 86400000,
     offsetof (sup_settings_t, crash_window_ms),
     "sliding window in which SUPERVISOR_MAX_CRASHES exits are counted"},
    {"SUPERVISOR_GRACE_MS", CM_CONF_INT, "10000", 0, 3600000,
     offsetof (sup_settings_t, grace_ms),
     "on SIGINT/SIGTERM, time children get to exit before SIGKILL"},
    {"REDIS_URL", CM_CONF_URL, "redis://127.0.0.1:6379", 0, 0,
     offsetof (sup_settings_t, redis_url),
     "the suite's Redis; REDIS_HOST and REDIS_PORT are derived from it"},
    {"RUN_DIR", CM_CONF_STR, "./var", 0, 0, offsetof (sup_settings_t, run_dir),
     "state of a local run (redis/, log/, admin_api_key); made absolute"},
    {"BIN_DIR", CM_CONF_STR, NULL, 0, 0, offsetof (sup_settings_t, bin_dir),
     "where the daemons are; unset: the supervisor's own directory"},
    {"ADMIN_API_KEY", CM_CONF_TOKEN, NULL, 0, SUP_ENV_ADMIN_KEY_MAX,
     offsetof (sup_settings_t, admin_api_key),
     "admin key (printable ASCII without spaces, at most 4096 bytes); unset: read "
     "from or generated into $RUN_DIR/admin_api_key"},
    {"LOG_LEVEL", CM_CONF_STR, "info", 0, 0, offsetof (sup_settings_t, log_level),
     "debug, info, warn (or warning) or error"},
    {"SUPERVISOR_ENDPOINT", CM_CONF_ENDPOINT, CM_REPORTER_ENDPOINT, 0, 0,
     offsetof (sup_settings_t, metrics_endpoint),
     "ZeroMQ endpoint of the metrics hub: bound here (SUPERVISOR_METRICS_ROLE=hub) "
     "or reported to (report); daemons report and the gateway asks there"},
    {"METRICS_INSTANCE_TTL_MS", CM_CONF_INT, "5000", 100, 3600000,
     offsetof (sup_settings_t, metrics_ttl_ms),
     "an instance that has not reported for this long leaves the aggregate"},
    {"SUPERVISOR_METRICS_ROLE", CM_CONF_STR, "hub", 0, 0,
     offsetof (sup_settings_t, metrics_role),
     "hub: bind SUPERVISOR_ENDPOINT and aggregate; report: bind nothing, report "
     "this supervisor's restarts to the hub there (one supervisor per container)"},
    {"METRICS_REPORT_INTERVAL_MS", CM_CONF_INT, "1000", 10, 600000,
     offsetof (sup_settings_t, metrics_report_ms),
     "with SUPERVISOR_METRICS_ROLE=report: how often this supervisor reports"},
    {NULL, 0, NULL, 0, 0, 0, NULL},
};

static int s_mkdir (const char *path, bool parents);
static char *s_absolute (const char *path);
static int s_keep_key (const char *key, const char *path);

int
sup_env_load (sup_settings_t *settings, char *err, size_t errlen)
{
    assert (settings && err);
    if (cm_config_load (sup_env_table, settings, err, errlen))
        return -1;
    if (settings->restart_initial_ms > settings->restart_max_ms) {
        snprintf (err, errlen,
                  "SUPERVISOR_RESTART_INITIAL_MS (%lld) must not exceed "
                  "SUPERVISOR_RESTART_MAX_MS (%lld)",
                  (long long) settings->restart_initial_ms,
                  (long long) settings->restart_max_ms);
        return -1;
    }
    if (strcmp (settings->metrics_role, "hub") &&
        strcmp (settings->metrics_role, "report")) {
        snprintf (err, errlen, "SUPERVISOR_METRICS_ROLE: '%s' is not hub or report",
                  settings->metrics_role);
        return -1;
    }
    if (cm_log_level_parse (settings->log_level) < 0) {
        snprintf (err, errlen,
                  "LOG_LEVEL: '%s' is not debug, info, warn (or warning) or error",
                  settings->log_level);
        return -1;
    }
    //  The supervisor's environment reaches every child: one INSTANCE_ID
    //  there would be every instance's, and instances of one id take each
    //  other's place at the gateway (the suite never gets ready).
    const char *instance_id = getenv ("INSTANCE_ID");
    if (instance_id && *instance_id) {
        snprintf (err, errlen,
                  "INSTANCE_ID: set for the whole suite, every instance would have it; "
                  "leave it unset (each instance makes its own), or set it in one "
                  "program's env in the suite file");
        return -1;
    }
    return 0;
}

void
sup_env_free (sup_settings_t *settings)
{
    assert (settings);
    cm_config_free (sup_env_table, settings);
}

sup_backoff_policy_t
sup_env_backoff_policy (const sup_settings_t *settings)
{
    assert (settings);
    sup_backoff_policy_t policy = {
        .initial_ms = settings->restart_initial_ms,
        .max_ms = settings->restart_max_ms,
        .reset_ms = settings->restart_reset_ms,
        .max_crashes = settings->max_crashes,
        .window_ms = settings->crash_window_ms,
    };
    return policy;
}

int
sup_env_redis_url (const char *url, char *host, size_t hostlen, int64_t *port)
{
    return cm_redis_parse_url (url, host, hostlen, port);
}

int
sup_env_export (sup_settings_t *settings, char *err, size_t errlen)
{
    assert (settings && settings->redis_url && settings->run_dir && err);
    char host[256];
    int64_t port;
    //  (The message leaves the password out.)
    if (cm_redis_url_check ("REDIS_URL", settings->redis_url, err, errlen) ||
        sup_env_redis_url (settings->redis_url, host, sizeof host, &port))
        return -1;
    //  RUN_DIR is created only once everything is checked: made absolute
    //  here without being resolved, it names the same directory either way.
    char *run_dir = s_absolute (settings->run_dir);
    if (!run_dir) {
        snprintf (err, errlen, "RUN_DIR: cannot make '%s' absolute: %s",
                  settings->run_dir, strerror (errno));
        return -1;
    }
    struct stat st;
    if (stat (run_dir, &st) == 0 && !S_ISDIR (st.st_mode)) {
        snprintf (err, errlen, "RUN_DIR: '%s' is not a directory", settings->run_dir);
        free (run_dir);
        return -1;
    }
    char *bin_dir;
    if (settings->bin_dir) {
        bin_dir = realpath (settings->bin_dir, NULL);
        if (!bin_dir) {
            snprintf (err, errlen, "BIN_DIR: '%s': %s", settings->bin_dir,
                      strerror (errno));
            free (run_dir);
            return -1;
        }
        if (stat (bin_dir, &st) || !S_ISDIR (st.st_mode)) {
            snprintf (err, errlen, "BIN_DIR: '%s' is not a directory", settings->bin_dir);
            free (run_dir);
            free (bin_dir);
            return -1;
        }
    } else {
        char exe[PATH_MAX];
        ssize_t n = readlink ("/proc/self/exe", exe, sizeof exe - 1);
        if (n <= 0) {
            snprintf (err, errlen, "BIN_DIR: unset, and /proc/self/exe is unreadable: %s",
                      strerror (errno));
            free (run_dir);
            return -1;
        }
        exe[n] = 0;
        char *slash = strrchr (exe, '/');
        if (slash)
            *slash = 0;
        bin_dir = cm_strdup (slash && *exe ? exe : "/");
    }
    char port_text[16];
    snprintf (port_text, sizeof port_text, "%lld", (long long) port);
    setenv ("REDIS_URL", settings->redis_url, 1);
    setenv ("REDIS_HOST", host, 1);
    setenv ("REDIS_PORT", port_text, 1);
    free (settings->run_dir);
    settings->run_dir = run_dir;
    setenv ("RUN_DIR", run_dir, 1);
    free (settings->bin_dir);
    settings->bin_dir = bin_dir;
    setenv ("BIN_DIR", bin_dir, 1);
    return 0;
}

int
sup_env_admin_key (sup_settings_t *settings, char *err, size_t errlen)
{
    assert (settings && settings->run_dir && err);
    if (settings->admin_api_key) {
        settings->admin_key_source = SUP_ENV_KEY_GIVEN;
        return 0;
    }
    char path[PATH_MAX];
    snprintf (path, sizeof path, "%s/%s", settings->run_dir, SUP_ENV_ADMIN_KEY_FILE);
    //  A key and its line's end, with room to tell one that is too long.
    char key[SUP_ENV_ADMIN_KEY_MAX + 64];
    int fd = open (path, O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
        ssize_t n = 0, got = 0;
        while (n < (ssize_t) sizeof key - 1 &&
               (got = read (fd, key + n, sizeof key - 1 - (size_t) n)) > 0)
            n += got;
        struct stat st;
        bool exposed = fstat (fd, &st) == 0 && (st.st_mode & 077);
        close (fd);
        if (got < 0) {
            snprintf (err, errlen, "ADMIN_API_KEY: cannot read %s: %s", path,
                      strerror (errno));
            return -1;
        }
        while (n > 0 && isspace ((unsigned char) key[n - 1]))
            n--;
        key[n] = 0;
        if (n > SUP_ENV_ADMIN_KEY_MAX) {
            snprintf (err, errlen,
                      "ADMIN_API_KEY: the key in %s is longer than %d bytes (delete the "
                      "file to have a new one generated)",
                      path, SUP_ENV_ADMIN_KEY_MAX);
            return -1;
        }
        bool valid = n > 0;
        for (ssize_t i = 0; i < n; i++)
            if (!isgraph ((unsigned char) key[i]) || (unsigned char) key[i] >= 0x7f)
                valid = false;
        if (!valid) {
            snprintf (
                err, errlen,
                "ADMIN_API_KEY: %s does not hold a key (delete it to have a new one "
                "generated)",
                path);
            return -1;
        }
        if (exposed)
            cm_warn ("%s can be read by other users: chmod 600 it", path);
        settings->admin_key_source = SUP_ENV_KEY_READ;
    } else if (errno == ENOENT) {
        //  No file yet (perhaps no RUN_DIR yet): the key lives in memory
        //  until sup_env_prepare keeps it, so a refused start leaves none.
        if (sodium_init () < 0) {
            snprintf (err, errlen, "ADMIN_API_KEY: libsodium failed to initialise");
            return -1;
        }
        unsigned char raw[32];
        randombytes_buf (raw, sizeof raw);
        sodium_bin2hex (key, sizeof key, raw, sizeof raw);
        sodium_memzero (raw, sizeof raw);
        settings->admin_key_source = SUP_ENV_KEY_GENERATED;
    } else {
        snprintf (err, errlen, "ADMIN_API_KEY: cannot read %s: %s", path,
                  strerror (errno));
        return -1;
    }
    setenv ("ADMIN_API_KEY", key, 1);
    settings->admin_api_key = cm_strdup (key);
    sodium_memzero (key, sizeof key);
    return 0;
}

int
sup_env_prepare (sup_settings_t *settings, FILE *out, char *err, size_t errlen)
{
    assert (settings && settings->run_dir && out && err);
    const char *run_dir = settings->run_dir;
    if (s_mkdir (run_dir, true)) {
        snprintf (err, errlen, "RUN_DIR: cannot create '%s': %s", run_dir,
                  strerror (errno));
        return -1;
    }
    static const char *subdirs[] = {"log", "redis"};
    for (size_t i = 0; i < sizeof subdirs / sizeof subdirs[0]; i++) {
        char path[PATH_MAX];
        snprintf (path, sizeof path, "%s/%s", run_dir, subdirs[i]);
        if (s_mkdir (path, false)) {
            snprintf (err, errlen, "RUN_DIR: cannot create '%s': %s", path,
                      strerror (errno));
            return -1;
        }
    }
    sup_env_key_source_t source = settings->admin_key_source;
    if (source != SUP_ENV_KEY_READ && source != SUP_ENV_KEY_GENERATED)
        return 0;
    char path[PATH_MAX];
    snprintf (path, sizeof path, "%s/%s", run_dir, SUP_ENV_ADMIN_KEY_FILE);
    if (source == SUP_ENV_KEY_GENERATED && s_keep_key (settings->admin_api_key, path)) {
        snprintf (err, errlen, "ADMIN_API_KEY: cannot keep the key in %s: %s", path,
                  strerror (errno));
        return -1;
    }
    fprintf (out, "ADMIN_API_KEY=%s\n", settings->admin_api_key);
    fflush (out);
    cm_info ("ADMIN_API_KEY was unset: %s %s; every child of this run gets it",
             source == SUP_ENV_KEY_READ ? "read from" : "generated into", path);
    return 0;
}

//  mkdir that accepts an existing directory; with parents, like mkdir -p.
static int
s_mkdir (const char *path, bool parents)
{
    if (!*path) {
        errno = ENOENT;
        return -1;
    }
    char *copy = cm_strdup (path);
    int rc = 0;
    if (parents)
        for (char *slash = strchr (copy + 1, '/'); slash && rc == 0;
             slash = strchr (slash + 1, '/')) {
            *slash = 0;
            if (mkdir (copy, 0755) && errno != EEXIST)
                rc = -1;
            *slash = '/';
        }
    if (rc == 0 && mkdir (copy, 0755) && errno != EEXIST)
        rc = -1;
    struct stat st;
    if (rc == 0 && stat (copy, &st))
        rc = -1;
    else if (rc == 0 && !S_ISDIR (st.st_mode)) {
        errno = ENOTDIR;
        rc = -1;
    }
    free (copy);
    return rc;
}

//  path made absolute against the working directory, without resolving
//  symbolic links or '..' (the kernel does that the same way later): '.'
//  and empty components go. A new string, or NULL when there is no working
//  directory.
static char *
s_absolute (const char *path)
{
    char *joined;
    if (*path == '/')
        joined = cm_strdup (path);
    else {
        char *cwd = getcwd (NULL, 0);
        if (!cwd)
            return NULL;
        joined = cm_malloc (strlen (cwd) + strlen (path) + 2);
        sprintf (joined, "%s/%s", cwd, path);
        free (cwd);
    }
    char *result = cm_malloc (strlen (joined) + 2);
    size_t len = 0;
    for (char *p = joined; *p;) {
        size_t n = strcspn (p, "/");
        if (n > 0 && !(n == 1 && *p == '.')) {
            result[len++] = '/';
            memcpy (result + len, p, n);
            len += n;
        }
        p += n;
        while (*p == '/')
            p++;
    }
    if (len == 0)
        result[len++] = '/';
    result[len] = 0;
    free (joined);
    return result;
}

//  Write a new key file, mode 0600, never over an existing one. Returns 0,
//  or -1 with errno set (and no file left behind).
static int
s_keep_key (const char *key, const char *path)
{
    int fd = open (path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0)
        return -1;
    size_t len = strlen (key);
    errno = 0;
    bool written = fchmod (fd, 0600) == 0 && write (fd, key, len) == (ssize_t) len &&
                   write (fd, "\n", 1) == 1;
    int saved = errno;
    if (close (fd) && written) {
        written = false;
        saved = errno;
    }
    if (!written) {
        unlink (path);
        errno = saved ? saved : EIO;
        return -1;
    }
    return 0;
}
