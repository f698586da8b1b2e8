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
//  len bytes of s with %XX escapes decoded (a broken one stays as it is);
//  in a query string (plus_is_space) '+' is a space, in a path it is
//  itself. The decoded length goes to *size_p when not NULL (a %00 makes it
//  differ from strlen). The caller frees the result.
char *cm_percent_decode (const char *s, size_t len, bool plus_is_space, size_t *size_p);

//  Start a thread that gives freed heap pages back to the kernel every
//  `seconds` (malloc_trim). glibc keeps freed memory resident until the top
//  of an arena is free, which with long-lived blocks beside it is rarely:
//  without this, a daemon stays at its peak (chatd after thousands of
//  streams, ingestd after large uploads).
void cm_heap_trim_every (unsigned seconds);

//  Wall-clock milliseconds since the epoch (deadlines that cross processes).
int64_t cm_clock_wall_ms (void);
//  Monotonic milliseconds (timeouts inside one process).
int64_t cm_clock_mono_ms (void);
//  Monotonic microseconds (rate limits: sub-millisecond precision).
int64_t cm_clock_mono_us (void);

//  A random (version 4) UUID, lower-case, into out (36 characters and the
//  terminating NUL), from libsodium's generator: the one UUID source of
//  the suite (ids of chats, documents, flows, slugs of last resort).
#define CM_UUID_SIZE 37
void cm_uuid (char out[CM_UUID_SIZE]);

//  Give the kernel back the pages of the calling thread's stack below the
//  current frame: a thread about to wait a long time (a chat stream held
//  open for minutes) keeps only what it uses, not the deepest its earlier
//  work went (SQLite and JSON touch tens of KiB). The pages come back,
//  zeroed, when the thread next grows its stack. Not for the main thread;
//  a no-op under AddressSanitizer (its stack bookkeeping is its own).
void cm_thread_trim_stack (void);

//  Run this program again (same pid, same arguments) with glibc's malloc
//  tunables set to `tunables` (e.g. "glibc.malloc.tcache_count=0"), which
//  glibc reads only at start-up. Does nothing when GLIBC_TUNABLES is set
//  already (by the user, or by the first run); returns only when it did
//  nothing or the exec failed. Call first thing in main.
void cm_exec_with_tunables (char **argv, const char *tunables);

//  Standard --help/--version handling for a program's main. Returns 1 when
//  the program should exit 0 (it printed usage or version), 0 to go on, and
//  -1 for an unknown argument (usage printed to stderr).
struct cm_conf_entry_s;
int cm_main_args (int argc, char **argv, const char *program, const char *summary,
                  const struct cm_conf_entry_s *table);

#endif
