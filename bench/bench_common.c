/*  bench_common.c: see bench_common.h. */
#include "bench_common.h"
#include <errno.h>
#include <math.h>
#include <sys/resource.h>

void
bench_samples_add (bench_samples_t *self, double value)
{
    if (self->size == self->max) {
        self->max = self->max ? self->max * 2 : 4096;
        self->values = cm_realloc (self->values, self->max * sizeof *self->values);
    }
    self->values[self->size++] = value;
}

static int
s_compare (const void *a, const void *b)
{
    double x = *(const double *) a, y = *(const double *) b;
    return x < y ? -1 : x > y;
}

void
bench_samples_sort (bench_samples_t *self)
{
    if (self->size)
        qsort (self->values, self->size, sizeof (double), s_compare);
}

double
bench_percentile (const bench_samples_t *self, double p)
{
    if (!self->size)
        return 0;
    size_t rank = (size_t) ceil (p / 100.0 * (double) self->size);
    return self->values[rank ? rank - 1 : 0];
}

void
bench_samples_free (bench_samples_t *self)
{
    free (self->values);
    *self = (bench_samples_t){NULL, 0, 0};
}

bool
bench_parse_long (const char *text, long min, long max, long *value)
{
    char *end;
    errno = 0;
    long v = strtol (text, &end, 10);
    if (errno || end == text || *end || v < min || v > max)
        return false;
    *value = v;
    return true;
}

bool
bench_parse_seconds (const char *text, double min, double *value)
{
    char *end;
    errno = 0;
    double v = strtod (text, &end);
    if (errno || end == text || *end || !isfinite (v) || v < min || v > 86400)
        return false;
    *value = v;
    return true;
}

int
bench_bad (const char *program, void (*usage) (FILE *out), const char *fmt,
           const char *what)
{
    fprintf (stderr, "%s: ", program);
    fprintf (stderr, fmt, what);
    fprintf (stderr, "\n\n");
    usage (stderr);
    return 2;
}

int
bench_target_from_env (bench_target_t *target, char *err, size_t errlen)
{
    const char *base = getenv ("BENCHMARK_BASE_URL");
    target->base = NULL;
    target->slug = getenv ("BENCHMARK_WORKSPACE_SLUG");
    target->token = getenv ("BENCHMARK_WORKSPACE_TOKEN");
    if (!base || !*base)
        base = BENCH_DEFAULT_BASE_URL;
    if (!target->slug || !*target->slug) {
        snprintf (err, errlen,
                  "BENCHMARK_WORKSPACE_SLUG is not set (the workspace slug)");
        return -1;
    }
    if (!target->token || !*target->token) {
        snprintf (err, errlen, "BENCHMARK_WORKSPACE_TOKEN is not set (an API key)");
        return -1;
    }
    if (strncmp (base, "http://", 7) && strncmp (base, "https://", 8)) {
        snprintf (err, errlen,
                  "BENCHMARK_BASE_URL must start with http:// or https://, not '%s'",
                  base);
        return -1;
    }
    size_t size = strlen (base);
    while (size && base[size - 1] == '/')
        size--;
    target->base = cm_strndup (base, size);
    return 0;
}

struct curl_slist *
bench_headers (const char *token, const char *content_type, const char *accept)
{
    char line[4096];
    struct curl_slist *headers = NULL;
    size_t size = strlen (token) + 32;
    char *auth = cm_malloc (size);
    snprintf (auth, size, "Authorization: Bearer %s", token);
    headers = curl_slist_append (headers, auth);
    free (auth);
    if (content_type) {
        snprintf (line, sizeof line, "Content-Type: %s", content_type);
        headers = curl_slist_append (headers, line);
    }
    headers = curl_slist_append (headers, "Expect:");
    if (accept) {
        snprintf (line, sizeof line, "Accept: %s", accept);
        headers = curl_slist_append (headers, line);
    }
    return headers;
}

void
bench_pump (CURLM *multi, int wait_ms)
{
    int running;
    curl_multi_perform (multi, &running);
    curl_multi_poll (multi, NULL, 0, wait_ms, NULL);
    curl_multi_perform (multi, &running);
}

void
bench_print_status (const char *name, const long status[600], long transport)
{
    printf ("%-22s", name);
    for (int i = 0; i < 600; i++)
        if (status[i])
            printf (" %d=%ld", i, status[i]);
    printf (" transport=%ld\n", transport);
}

void
bench_print_cpu (double elapsed)
{
    //  The client's own share, to tell a client-bound run from a server-bound one.
    struct rusage usage;
    if (getrusage (RUSAGE_SELF, &usage) == 0 && elapsed > 0)
        printf ("%-22s %.0f%% of one core\n", "client CPU",
                100.0 *
                    ((double) usage.ru_utime.tv_sec + usage.ru_utime.tv_usec / 1e6 +
                     (double) usage.ru_stime.tv_sec + usage.ru_stime.tv_usec / 1e6) /
                    elapsed);
}
