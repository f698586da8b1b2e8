/*  cm_common.c: allocation that aborts on failure, clocks, --help/--version. */
#include "cm_common.h"
#include "cm_config.h"
#include <time.h>

void *
cm_malloc (size_t size)
{
    void *p = malloc (size ? size : 1);
    if (!p)
        abort ();
    return p;
}

void *
cm_calloc (size_t count, size_t size)
{
    void *p = calloc (count ? count : 1, size ? size : 1);
    if (!p)
        abort ();
    return p;
}

void *
cm_realloc (void *ptr, size_t size)
{
    void *p = realloc (ptr, size ? size : 1);
    if (!p)
        abort ();
    return p;
}

char *
cm_strdup (const char *s)
{
    assert (s);
    return cm_strndup (s, strlen (s));
}

char *
cm_strndup (const char *s, size_t n)
{
    assert (s);
    char *p = cm_malloc (n + 1);
    memcpy (p, s, n);
    p[n] = 0;
    return p;
}

int64_t
cm_clock_wall_ms (void)
{
    struct timespec ts;
    clock_gettime (CLOCK_REALTIME, &ts);
    return (int64_t) ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t
cm_clock_mono_ms (void)
{
    struct timespec ts;
    clock_gettime (CLOCK_MONOTONIC, &ts);
    return (int64_t) ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t
cm_clock_mono_us (void)
{
    struct timespec ts;
    clock_gettime (CLOCK_MONOTONIC, &ts);
    return (int64_t) ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

int
cm_main_args (int argc, char **argv, const char *program, const char *summary,
              const cm_conf_entry_t *table)
{
    for (int i = 1; i < argc; i++) {
        if (!strcmp (argv[i], "--version") || !strcmp (argv[i], "-V")) {
            printf ("%s %s\n", program, LLMRT_VERSION);
            return 1;
        }
        if (!strcmp (argv[i], "--help") || !strcmp (argv[i], "-h")) {
            printf ("usage: %s [--help] [--version]\n\n%s\n\n", program, summary);
            if (table) {
                printf ("Configuration (environment variables):\n");
                cm_config_usage (table, stdout);
            }
            return 1;
        }
        fprintf (stderr, "%s: unknown argument '%s' (try --help)\n", program, argv[i]);
        return -1;
    }
    return 0;
}
