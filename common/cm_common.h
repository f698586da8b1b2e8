/*  cm_common.h: what every llmrt source includes first.

    Asserts guard API misuse and stay on in every build (as czmq does), so
    NDEBUG is undone here. */
#ifndef CM_COMMON_H_INCLUDED
#define CM_COMMON_H_INCLUDED

#ifdef NDEBUG
#undef NDEBUG
#endif
#include <assert.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifndef LLMRT_VERSION
#define LLMRT_VERSION "0.0.0"
#endif

//  Out of memory aborts: callers never check these.
void *cm_malloc (size_t size);
void *cm_calloc (size_t count, size_t size);
void *cm_realloc (void *ptr, size_t size);
char *cm_strdup (const char *s);
char *cm_strndup (const char *s, size_t n);

//  Wall-clock milliseconds since the epoch (deadlines that cross processes).
int64_t cm_clock_wall_ms (void);
//  Monotonic milliseconds (timeouts inside one process).
int64_t cm_clock_mono_ms (void);
//  Monotonic microseconds (rate limits: sub-millisecond precision).
int64_t cm_clock_mono_us (void);

//  Standard --help/--version handling for a program's main. Returns 1 when
//  the program should exit 0 (it printed usage or version), 0 to go on, and
//  -1 for an unknown argument (usage printed to stderr).
struct cm_conf_entry_s;
int cm_main_args (int argc, char **argv, const char *program, const char *summary,
                  const struct cm_conf_entry_s *table);

#endif
