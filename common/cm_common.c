/*  cm_common.c: allocation that aborts on failure, clocks, --help/--version. */
#include "cm_common.h"
#include <stdint.h>
#include <malloc.h>
#include "cm_config.h"
#include <pthread.h>
#include <sodium.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

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

static void
s_sodium_init (void)
{
    if (sodium_init () < 0)
        abort (); //  no entropy source: nothing random can be made
}

void
cm_uuid (char out[CM_UUID_SIZE])
{
    //  libuuid's uuid_generate_random made five system calls per id and
    //  reseeded random(3) each time; snprintf's 16 "%02x" showed in
    //  profiles too.
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once (&once, s_sodium_init);
    unsigned char b[16];
    randombytes_buf (b, sizeof b);
    b[6] = (unsigned char) ((b[6] & 0x0F) | 0x40); //  version 4
    b[8] = (unsigned char) ((b[8] & 0x3F) | 0x80); //  RFC 4122 variant
    static const char hex[] = "0123456789abcdef";
    size_t at = 0;
    for (int i = 0; i < 16; i++) {
        if (i == 4 || i == 6 || i == 8 || i == 10)
            out[at++] = '-';
        out[at++] = hex[b[i] >> 4];
        out[at++] = hex[b[i] & 0x0F];
    }
    out[at] = 0;
}

void
cm_thread_trim_stack (void)
{
#if !defined(__SANITIZE_ADDRESS__)
    pthread_attr_t attr;
    if (pthread_getattr_np (pthread_self (), &attr))
        return;
    void *base = NULL;
    size_t size = 0;
    int rc = pthread_attr_getstack (&attr, &base, &size);
    pthread_attr_destroy (&attr);
    if (rc || !base)
        return;
    volatile char here = 0;
    uintptr_t page = (uintptr_t) sysconf (_SC_PAGESIZE);
    uintptr_t low = ((uintptr_t) base + page - 1) & ~(page - 1);
    //  Keep two pages below this frame: the red zone and madvise's own call.
    uintptr_t high = ((uintptr_t) &here & ~(page - 1)) - 2 * page;
    if (high > low && high - low < size)
        madvise ((void *) low, high - low, MADV_DONTNEED);
    (void) here;
#endif
}

void
cm_exec_with_tunables (char **argv, const char *tunables)
{
    if (getenv ("GLIBC_TUNABLES") || !tunables)
        return;
    if (setenv ("GLIBC_TUNABLES", tunables, 1))
        return;
    //  Exec the file itself, not /proc/self/exe: the process's name (comm,
    //  what ps and pkill see) is the exec'd file's base name.
    char path[4096];
    ssize_t size = readlink ("/proc/self/exe", path, sizeof path - 1);
    if (size > 0) {
        path[size] = 0;
        execv (path, argv);
    }
    //  No /proc (or exec refused): go on with the defaults.
    unsetenv ("GLIBC_TUNABLES");
}

static int
s_hex (char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

//  len bytes of s with %XX escapes decoded (a broken one stays as it is);
//  in a query string '+' is a space, in a path it is itself. The decoded
//  length goes to *size_p when it is not NULL (a %00 makes it differ from
//  strlen).
char *
cm_percent_decode (const char *s, size_t len, bool plus_is_space, size_t *size_p)
{
    char *out = cm_malloc (len + 1), *o = out;
    for (size_t i = 0; i < len; i++) {
        if (s[i] == '%' && i + 2 < len && s_hex (s[i + 1]) >= 0 &&
            s_hex (s[i + 2]) >= 0) {
            *o++ = (char) (s_hex (s[i + 1]) * 16 + s_hex (s[i + 2]));
            i += 2;
        } else
            *o++ = plus_is_space && s[i] == '+' ? ' ' : s[i];
    }
    *o = 0;
    if (size_p)
        *size_p = (size_t) (o - out);
    return out;
}

static void *
s_trimmer (void *arg)
{
    unsigned seconds = (unsigned) (uintptr_t) arg;
    while (true) {
        sleep (seconds);
        malloc_trim (0);
    }
    return NULL;
}

void
cm_heap_trim_every (unsigned seconds)
{
    pthread_t thread;
    if (pthread_create (&thread, NULL, s_trimmer, (void *) (uintptr_t) seconds) == 0)
        pthread_detach (thread);
}
