/*  bench_common.h: what the HTTP load generators (chat_bench,
    ingest_bench) share: latency samples and their percentiles, option
    parsing, the target from the seed's benchmark variables, request
    headers, one turn of a libcurl multi loop, and the report lines of
    status codes and client CPU. Benchmarks print figures; nothing here is
    a test. */
#ifndef BENCH_COMMON_H_INCLUDED
#define BENCH_COMMON_H_INCLUDED

#include "cm_common.h"
#include <curl/curl.h>

#define BENCH_DEFAULT_BASE_URL "http://127.0.0.1:3001"

//  Samples in milliseconds, growing as they come.
typedef struct {
    double *values; //  samples, milliseconds
    size_t size;    //  samples held
    size_t max;     //  allocated
} bench_samples_t;

void bench_samples_add (bench_samples_t *self, double value);
//  Sort the samples (before bench_percentile).
void bench_samples_sort (bench_samples_t *self);
//  Nearest rank of sorted samples (0 when there are none); p in 0..100.
double bench_percentile (const bench_samples_t *self, double p);
//  Free the values; the samples are empty again.
void bench_samples_free (bench_samples_t *self);

//  A whole number in min..max (all of text); false otherwise.
bool bench_parse_long (const char *text, long min, long max, long *value);
//  Seconds in min..86400 (all of text, finite); false otherwise.
bool bench_parse_seconds (const char *text, double min, double *value);

//  Bad usage: "<program>: " fmt (with what), a blank line, the usage on
//  stderr. Returns 2, the exit code of bad usage.
int bench_bad (const char *program, void (*usage) (FILE *out), const char *fmt,
               const char *what) __attribute__ ((format (printf, 3, 0)));

//  The server under load, from BENCHMARK_BASE_URL (default
//  BENCH_DEFAULT_BASE_URL), BENCHMARK_WORKSPACE_SLUG and
//  BENCHMARK_WORKSPACE_TOKEN (both required).
typedef struct {
    char *base;        //  base URL without trailing slashes (owned)
    const char *slug;  //  the workspace (the environment's)
    const char *token; //  bearer token (the environment's)
} bench_target_t;

//  Read the target; -1 with err saying which variable is wrong.
int bench_target_from_env (bench_target_t *target, char *err, size_t errlen);

//  Request headers: Authorization: Bearer token, then Content-Type:
//  content_type (when not NULL), an empty Expect:, then Accept: accept
//  (when not NULL). Free with curl_slist_free_all.
struct curl_slist *bench_headers (const char *token, const char *content_type,
                                  const char *accept);

//  One turn of a multi loop: perform, wait for the network at most wait_ms,
//  perform again.
void bench_pump (CURLM *multi, int wait_ms);

//  A report line "<name> 200=N 503=N ... transport=N" (statuses 0..599).
void bench_print_status (const char *name, const long status[600], long transport);
//  "client CPU  N% of one core" over elapsed seconds (nothing when 0).
void bench_print_cpu (double elapsed);

#endif
