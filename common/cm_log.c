/*  cm_log.c: see cm_log.h. */
#include "cm_common.h"
#include "cm_log.h"
#include <stdatomic.h>
#include <stdarg.h>
#include <strings.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static const char *s_program = "llmrt";
//  Read by every thread that logs, set at start-up while some already run
//  (a daemon's pool threads start before its settings are applied).
static atomic_int s_level = CM_LOG_INFO;
static const char *s_names[] = {"DEBUG", "INFO", "WARN", "ERROR"};

void
cm_log_init (const char *program)
{
    s_program = program;
    const char *env = getenv ("LOG_LEVEL");
    int level = env ? cm_log_level_parse (env) : -1;
    if (level >= 0)
        atomic_store_explicit (&s_level, (int) level, memory_order_relaxed);
}

void
cm_log_set_level (cm_log_level_t level)
{
    atomic_store_explicit (&s_level, (int) level, memory_order_relaxed);
}

int
cm_log_level_parse (const char *name)
{
    for (int i = 0; i < 4; i++)
        if (!strcasecmp (name, s_names[i]))
            return i;
    if (!strcasecmp (name, "warning"))
        return CM_LOG_WARN;
    return -1;
}

int
cm_log_level_apply (const char *text, char *err, size_t errlen)
{
    int level = text ? cm_log_level_parse (text) : -1;
    if (level < 0) {
        snprintf (err, errlen,
                  "LOG_LEVEL: '%s' is not debug, info, warn (or warning) or error",
                  text ? text : "");
        return -1;
    }
    atomic_store_explicit (&s_level, (int) level, memory_order_relaxed);
    return 0;
}

void
cm_log (cm_log_level_t level, const char *fmt, ...)
{
    if ((int) level < atomic_load_explicit (&s_level, memory_order_relaxed))
        return;
    char line[2048];
    struct timeval tv;
    gettimeofday (&tv, NULL);
    struct tm tm;
    gmtime_r (&tv.tv_sec, &tm);
    int n =
        snprintf (line, sizeof line,
                  "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ %s[%d] %s: ", tm.tm_year + 1900,
                  tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                  (long) tv.tv_usec / 1000, s_program, (int) getpid (), s_names[level]);
    va_list args;
    va_start (args, fmt);
    int m = vsnprintf (line + n, sizeof line - n - 1, fmt, args);
    va_end (args);
    size_t len = (size_t) n + (m < 0 ? 0 : (size_t) m);
    if (len > sizeof line - 2)
        len = sizeof line - 2;
    line[len++] = '\n';
    ssize_t rc = write (STDERR_FILENO, line, len);
    (void) rc;
}
