/*  chat_bench: load generator for the chat routes, streaming and not.

    One thread drives many concurrent transfers with libcurl's multi
    interface. The target is the seed's benchmark variables:
    BENCHMARK_BASE_URL (default http://127.0.0.1:3001),
    BENCHMARK_WORKSPACE_SLUG and BENCHMARK_WORKSPACE_TOKEN (both required).

    It prints requests completed and per second, latency percentiles (whole
    response), time to first token (stream: the first complete `data:`
    event; sync: the first body byte), SSE events and events per second, and
    a status-code breakdown. A stream whose last event is not
    finalizeResponseStream counts as broken.

    --hold opens N streams, waits until every one has had its first event,
    prints "hold: all N streams open" (a script measures the server then),
    keeps them open for --duration seconds, and says how many held. Every
    loop is bounded by a deadline: the program always stops by itself.

    A figure, not a test. Exit 0 when the run finished with at least one
    200 (--hold: and every stream held), 1 otherwise, 2 on bad usage. */
#include "bench_common.h"
#include <curl/curl.h>
#include <getopt.h>

#define S_DEFAULT_MESSAGE "What does the runtime do under load?"
//  A stream with no event for this long counts as stalled at the end of --hold.
#define S_STALL_US (5 * 1000000LL)
//  Longest wait inside one curl_multi_poll, so deadlines are checked often.
#define S_POLL_MS 100

typedef enum { S_MODE_SYNC, S_MODE_STREAM } s_mode_t;

typedef struct {
    s_mode_t mode;       //  sync (/chat) or stream (/stream-chat)
    long concurrency;    //  transfers at once (--hold: streams to open)
    double duration;     //  seconds of load (--hold: seconds to hold); 0: none
    long requests;       //  requests to complete; 0: none
    double timeout;      //  per request (--hold: to open them all), seconds
    const char *message; //  the chat message
    bool hold;           //  open streams and keep them open
    char *url;           //  the route, built from the variables (owned)
    const char *token;   //  bearer token
} s_options_t;

//  A needle searched for across the chunks of a body (Knuth-Morris-Pratt),
//  so a match split between two reads is still found.
typedef struct {
    const char *text; //  the needle
    size_t size;      //  its length
    size_t fail[32];  //  failure function
} s_needle_t;

typedef struct {
    CURL *easy;         //  reused for every request of this slot
    bool busy;          //  added to the multi handle
    int64_t started_us; //  when the request was added
    int64_t first_us;   //  first event (stream) or byte (sync); 0: not yet
    int64_t last_us;    //  last event received
    long events;        //  complete events in this response
    //  Incremental SSE parser: lines end with \n, \r or \r\n; a blank line
    //  ends an event that had a data line.
    size_t column;       //  bytes into the current line (counted up to 6)
    char prefix[6];      //  the current line's first bytes
    bool after_cr;       //  the last byte was \r: a \n next is its pair
    bool event_has_data; //  the current event has a data: line
    size_t final_at;     //  match position of "finalizeResponseStream"
    size_t abort_at;     //  match position of "abort"
    bool event_final;    //  the current event is the finalize event
    bool event_abort;    //  the current event is an abort
    bool last_final;     //  the last complete event was the finalize
    bool aborted;        //  an abort event (or sync type abort) was seen
} s_transfer_t;

typedef struct {
    bench_samples_t latency;   //  whole response, 200 responses
    bench_samples_t first;     //  time to first token / byte
    long completed;            //  transfers that finished (any HTTP status)
    long status[600];          //  by HTTP status
    long transport[CURL_LAST]; //  by libcurl error
    long events;               //  SSE events received
    long complete;             //  streams that ended with finalize
    long broken;               //  200 streams that ended otherwise
    long aborted;              //  responses with an abort (200 type abort)
    long cut;                  //  in flight when the run ended
} s_stats_t;

static s_needle_t s_final = {"\"finalizeResponseStream\"", 0, {0}};
static s_needle_t s_abort = {"\"abort\"", 0, {0}};

static void
s_needle_init (s_needle_t *needle)
{
    needle->size = strlen (needle->text);
    assert (needle->size < sizeof needle->fail / sizeof needle->fail[0]);
    size_t k = 0;
    needle->fail[0] = 0;
    for (size_t i = 1; i < needle->size; i++) {
        while (k && needle->text[i] != needle->text[k])
            k = needle->fail[k - 1];
        if (needle->text[i] == needle->text[k])
            k++;
        needle->fail[i] = k;
    }
}

//  Feed one byte; true when the needle ends here.
static bool
s_needle_step (const s_needle_t *needle, size_t *at, char c)
{
    size_t k = *at;
    while (k && c != needle->text[k])
        k = needle->fail[k - 1];
    if (c == needle->text[k])
        k++;
    if (k == needle->size) {
        *at = needle->fail[k - 1];
        return true;
    }
    *at = k;
    return false;
}

static void
s_transfer_reset (s_transfer_t *t)
{
    CURL *easy = t->easy;
    memset (t, 0, sizeof *t);
    t->easy = easy;
}

//  A complete event: count it, remember whether it was the last one.
static void
s_dispatch (s_transfer_t *t, s_stats_t *stats, int64_t now_us)
{
    if (t->event_has_data) {
        t->events++;
        stats->events++;
        t->last_us = now_us;
        if (!t->first_us)
            t->first_us = now_us;
        t->last_final = t->event_final;
        if (t->event_abort)
            t->aborted = true;
    }
    t->event_has_data = t->event_final = t->event_abort = false;
    t->final_at = t->abort_at = 0;
}

static void
s_line_end (s_transfer_t *t, s_stats_t *stats, int64_t now_us)
{
    if (t->column == 0)
        s_dispatch (t, stats, now_us);
    else if (t->column >= 5 && memcmp (t->prefix, "data:", 5) == 0)
        t->event_has_data = true;
    t->column = 0;
}

typedef struct {
    s_transfer_t *transfer; //  the slot
    s_stats_t *stats;       //  where counts go
    s_mode_t mode;          //  parse SSE or not
} s_write_ctx_t;

static s_write_ctx_t *s_contexts;

static size_t
s_on_write (char *data, size_t size, size_t count, void *arg)
{
    s_write_ctx_t *ctx = arg;
    s_transfer_t *t = ctx->transfer;
    size_t total = size * count;
    int64_t now_us = cm_clock_mono_us ();
    if (ctx->mode == S_MODE_SYNC) {
        if (!t->first_us)
            t->first_us = now_us;
        for (size_t i = 0; i < total; i++)
            if (s_needle_step (&s_abort, &t->abort_at, data[i]))
                t->aborted = true;
        return total;
    }
    for (size_t i = 0; i < total; i++) {
        char c = data[i];
        if (t->after_cr) {
            t->after_cr = false;
            if (c == '\n')
                continue;
        }
        if (c == '\n' || c == '\r') {
            t->after_cr = c == '\r';
            s_line_end (t, ctx->stats, now_us);
            continue;
        }
        if (t->column < sizeof t->prefix)
            t->prefix[t->column] = c;
        if (t->column <= sizeof t->prefix)
            t->column++;
        //  Only data lines carry the event's JSON.
        if (t->column > 5 && memcmp (t->prefix, "data:", 5) == 0) {
            if (s_needle_step (&s_final, &t->final_at, c))
                t->event_final = true;
            if (s_needle_step (&s_abort, &t->abort_at, c))
                t->event_abort = true;
        }
    }
    return total;
}

//  A transfer is done: classify it. Counted only inside the measured window.
static void
s_finish (s_transfer_t *t, CURLcode result, s_stats_t *stats, s_mode_t mode,
          int64_t now_us)
{
    stats->completed++;
    if (result != CURLE_OK) {
        stats->transport[result]++;
        return;
    }
    long status = 0;
    curl_easy_getinfo (t->easy, CURLINFO_RESPONSE_CODE, &status);
    if (status >= 100 && status < 600)
        stats->status[status]++;
    else
        stats->status[0]++;
    if (status != 200)
        return;
    bench_samples_add (&stats->latency, (double) (now_us - t->started_us) / 1000.0);
    if (t->first_us)
        bench_samples_add (&stats->first,
                           (double) (t->first_us - t->started_us) / 1000.0);
    if (t->aborted)
        stats->aborted++;
    if (mode == S_MODE_STREAM) {
        //  A stream cut without the blank line still ends its event.
        if (t->column)
            s_line_end (t, stats, now_us);
        s_dispatch (t, stats, now_us);
        if (t->last_final)
            stats->complete++;
        else
            stats->broken++;
    }
}

static void
s_usage (FILE *out)
{
    fprintf (out,
             "usage: chat_bench [--mode sync|stream] [--concurrency N]\n"
             "                  [--duration S | --requests N] [--timeout S]\n"
             "                  [--message TEXT] [--hold]\n"
             "\n"
             "Load generator for the chat routes (one thread, libcurl multi).\n"
             "\n"
             "  --mode M         sync: POST .../chat; stream: POST .../stream-chat\n"
             "                   (default sync)\n"
             "  --concurrency N  requests in flight at once, 1 to 100000 (default 64)\n"
             "  --duration S     seconds of load (default 10); requests still in\n"
             "                   flight then are cut and reported as such\n"
             "  --requests N     complete N requests instead (with --duration too:\n"
             "                   whichever comes first)\n"
             "  --timeout S      limit on one request (default 60); with --hold, on\n"
             "                   opening all the streams\n"
             "  --message TEXT   the chat message (default \"%s\")\n"
             "  --hold           open --concurrency streams, wait until each has had\n"
             "                   its first event, print \"hold: all N streams open\",\n"
             "                   keep them open --duration seconds, report how many\n"
             "                   held (implies --mode stream)\n"
             "\n"
             "Environment (the seed's benchmark variables):\n"
             "  BENCHMARK_BASE_URL         server base URL (default %s)\n"
             "  BENCHMARK_WORKSPACE_SLUG   workspace slug (required)\n"
             "  BENCHMARK_WORKSPACE_TOKEN  API key, sent as a bearer token (required)\n"
             "\n"
             "Exit: 0 the run finished with at least one 200 (--hold: every stream\n"
             "held), 1 otherwise, 2 bad usage.\n",
             S_DEFAULT_MESSAGE, BENCH_DEFAULT_BASE_URL);
}

//  Bad usage: say why, show the usage, exit code 2.
#define s_bad(fmt, what) bench_bad ("chat_bench", s_usage, fmt, what)

//  The message as a JSON string body.
static char *
s_body (const char *message)
{
    size_t size = strlen (message);
    char *body = cm_malloc (size * 6 + 64);
    char *p = body + sprintf (body, "{\"message\":\"");
    for (const unsigned char *m = (const unsigned char *) message; *m; m++) {
        if (*m == '"' || *m == '\\')
            *p++ = '\\', *p++ = (char) *m;
        else if (*m < 0x20)
            p += sprintf (p, "\\u%04x", *m);
        else
            *p++ = (char) *m;
    }
    strcpy (p, "\",\"mode\":\"chat\"}");
    return body;
}

static int
s_options (int argc, char **argv, s_options_t *o)
{
    static const struct option longs[] = {
        {"mode", required_argument, NULL, 'm'},
        {"concurrency", required_argument, NULL, 'c'},
        {"duration", required_argument, NULL, 'd'},
        {"requests", required_argument, NULL, 'n'},
        {"timeout", required_argument, NULL, 't'},
        {"message", required_argument, NULL, 'M'},
        {"hold", no_argument, NULL, 'H'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    *o = (s_options_t){S_MODE_SYNC, 64, 0, 0, 60, S_DEFAULT_MESSAGE, false, NULL, NULL};
    bool mode_given = false, duration_given = false;
    int opt;
    opterr = 0;
    while ((opt = getopt_long (argc, argv, "", longs, NULL)) != -1) {
        switch (opt) {
            case 'm':
                if (strcmp (optarg, "sync") && strcmp (optarg, "stream"))
                    return s_bad ("--mode must be sync or stream, not '%s'", optarg);
                o->mode = strcmp (optarg, "sync") ? S_MODE_STREAM : S_MODE_SYNC;
                mode_given = true;
                break;
            case 'c':
                if (!bench_parse_long (optarg, 1, 100000, &o->concurrency))
                    return s_bad ("--concurrency must be 1 to 100000, not '%s'", optarg);
                break;
            case 'd':
                if (!bench_parse_seconds (optarg, 0.1, &o->duration))
                    return s_bad ("--duration must be 0.1 to 86400 seconds, not '%s'",
                                  optarg);
                duration_given = true;
                break;
            case 'n':
                if (!bench_parse_long (optarg, 1, 100000000, &o->requests))
                    return s_bad ("--requests must be 1 to 100000000, not '%s'", optarg);
                break;
            case 't':
                if (!bench_parse_seconds (optarg, 0.1, &o->timeout))
                    return s_bad ("--timeout must be 0.1 to 86400 seconds, not '%s'",
                                  optarg);
                break;
            case 'M':
                if (!*optarg)
                    return s_bad ("--message must not be empty%s", "");
                o->message = optarg;
                break;
            case 'H':
                o->hold = true;
                break;
            case 'h':
                s_usage (stdout);
                exit (0);
            default:
                return s_bad ("unknown or incomplete option '%s'", argv[optind - 1]);
        }
    }
    if (optind < argc)
        return s_bad ("unexpected argument '%s'", argv[optind]);
    if (o->hold) {
        if (mode_given && o->mode != S_MODE_STREAM)
            return s_bad ("--hold needs --mode stream%s", "");
        if (o->requests)
            return s_bad ("--hold takes --duration, not --requests%s", "");
        o->mode = S_MODE_STREAM;
    }
    if (!duration_given && !o->requests)
        o->duration = 10;

    bench_target_t target;
    char err[512];
    if (bench_target_from_env (&target, err, sizeof err))
        return s_bad ("%s", err);
    o->token = target.token;
    const char *route = o->mode == S_MODE_STREAM ? "stream-chat" : "chat";
    size_t size = strlen (target.base) + strlen (target.slug) + 64;
    o->url = cm_malloc (size);
    snprintf (o->url, size, "%s/api/v1/workspace/%s/%s", target.base, target.slug, route);
    free (target.base);
    return 0;
}

static void
s_print_stats (const s_options_t *o, s_stats_t *stats, double elapsed)
{
    bench_samples_sort (&stats->latency);
    bench_samples_sort (&stats->first);
    printf ("%-22s %.2f\n", "elapsed s", elapsed);
    printf ("%-22s %ld\n", "requests completed", stats->completed);
    printf ("%-22s %.1f\n", "requests/s", elapsed > 0 ? stats->completed / elapsed : 0);
    printf ("%-22s p50 %.3f  p90 %.3f  p99 %.3f  max %.3f  (%zu responses 200)\n",
            "latency ms", bench_percentile (&stats->latency, 50),
            bench_percentile (&stats->latency, 90),
            bench_percentile (&stats->latency, 99),
            bench_percentile (&stats->latency, 100), stats->latency.size);
    printf ("%-22s p50 %.3f  p90 %.3f  p99 %.3f  (%s)\n",
            o->mode == S_MODE_STREAM ? "first token ms" : "first byte ms",
            bench_percentile (&stats->first, 50), bench_percentile (&stats->first, 90),
            bench_percentile (&stats->first, 99),
            o->mode == S_MODE_STREAM ? "first data: event" : "first body byte");
    if (o->mode == S_MODE_STREAM) {
        printf ("%-22s %ld\n", "SSE events", stats->events);
        printf ("%-22s %.0f\n", "SSE events/s",
                elapsed > 0 ? stats->events / elapsed : 0);
        printf ("%-22s %ld complete, %ld broken (last event not finalize)\n", "streams",
                stats->complete, stats->broken);
    }
    printf ("%-22s %ld\n", "aborted (type abort)", stats->aborted);
    long transport = 0;
    for (int i = 0; i < CURL_LAST; i++)
        transport += stats->transport[i];
    bench_print_status ("status", stats->status, transport);
    for (int i = 0; i < CURL_LAST; i++)
        if (stats->transport[i])
            printf ("%-22s %s: %ld\n", "transport error", curl_easy_strerror (i),
                    stats->transport[i]);
    printf ("%-22s %ld\n", "in flight at end", stats->cut);
    bench_print_cpu (elapsed);
}

static s_write_ctx_t *
s_context_of (CURL *easy)
{
    char *ctx = NULL;
    curl_easy_getinfo (easy, CURLINFO_PRIVATE, &ctx);
    assert (ctx);
    return (s_write_ctx_t *) ctx;
}

//  Drive the multi handle until some transfer finishes or the wait is over.
static void
s_pump (CURLM *multi, int64_t deadline_us)
{
    int64_t left_ms = (deadline_us - cm_clock_mono_us ()) / 1000;
    int wait = left_ms < S_POLL_MS ? (int) (left_ms > 0 ? left_ms : 0) : S_POLL_MS;
    bench_pump (multi, wait);
}

static void
s_start (CURLM *multi, s_transfer_t *t)
{
    CURL *easy = t->easy;
    s_transfer_reset (t);
    t->busy = true;
    t->started_us = cm_clock_mono_us ();
    curl_multi_add_handle (multi, easy);
}

//  The load run: keep --concurrency requests in flight until the duration
//  or the request count is reached.
static int
s_run_load (const s_options_t *o, CURLM *multi, s_transfer_t *slots, s_stats_t *stats)
{
    int64_t begin = cm_clock_mono_us ();
    int64_t end = o->duration > 0 ? begin + (int64_t) (o->duration * 1e6) : INT64_MAX;
    //  --requests alone: still bounded, by every request's own timeout.
    if (o->requests && o->duration <= 0)
        end = begin + (int64_t) ((o->timeout + 1) * 1e6) *
                          ((o->requests + o->concurrency - 1) / o->concurrency);
    long started = 0;
    for (long i = 0; i < o->concurrency && (!o->requests || started < o->requests); i++) {
        s_start (multi, &slots[i]);
        started++;
    }
    int64_t now = begin;
    while (now < end && (!o->requests || stats->completed < o->requests)) {
        s_pump (multi, end);
        now = cm_clock_mono_us ();
        CURLMsg *msg;
        int queued;
        while ((msg = curl_multi_info_read (multi, &queued))) {
            if (msg->msg != CURLMSG_DONE)
                continue;
            s_write_ctx_t *ctx = s_context_of (msg->easy_handle);
            CURLcode result = msg->data.result;
            curl_multi_remove_handle (multi, msg->easy_handle);
            ctx->transfer->busy = false;
            if (now > end)
                continue; //  past the window: not counted
            s_finish (ctx->transfer, result, stats, o->mode, now);
            if (!o->requests || started < o->requests) {
                s_start (multi, ctx->transfer);
                started++;
            }
        }
    }
    double elapsed = (double) ((now < end ? now : end) - begin) / 1e6;
    for (long i = 0; i < o->concurrency; i++)
        if (slots[i].busy) {
            curl_multi_remove_handle (multi, slots[i].easy);
            slots[i].busy = false;
            stats->cut++;
        }
    printf ("%-22s %s, %ld concurrent, POST %s\n", "chat_bench",
            o->mode == S_MODE_STREAM ? "stream" : "sync", o->concurrency, o->url);
    s_print_stats (o, stats, elapsed);
    return stats->status[200] ? 0 : 1;
}

//  Open --concurrency streams, hold them --duration seconds.
static int
s_run_hold (const s_options_t *o, CURLM *multi, s_transfer_t *slots, s_stats_t *stats)
{
    int64_t begin = cm_clock_mono_us ();
    int64_t open_end = begin + (int64_t) (o->timeout * 1e6);
    for (long i = 0; i < o->concurrency; i++)
        s_start (multi, &slots[i]);
    printf ("%-22s hold %ld streams for %.1f s, POST %s\n", "chat_bench", o->concurrency,
            o->duration, o->url);
    fflush (stdout);

    //  One pass: pump, collect ended transfers (never restarted), count.
    long open = 0, ended = 0;
    int64_t now = begin, hold_end = INT64_MAX;
    bool all_open = false;
    while (now < (all_open ? hold_end : open_end)) {
        s_pump (multi, all_open ? hold_end : open_end);
        now = cm_clock_mono_us ();
        CURLMsg *msg;
        int queued;
        while ((msg = curl_multi_info_read (multi, &queued))) {
            if (msg->msg != CURLMSG_DONE)
                continue;
            s_write_ctx_t *ctx = s_context_of (msg->easy_handle);
            CURLcode result = msg->data.result;
            curl_multi_remove_handle (multi, msg->easy_handle);
            ctx->transfer->busy = false;
            s_finish (ctx->transfer, result, stats, o->mode, now);
            ended++;
        }
        open = 0;
        for (long i = 0; i < o->concurrency; i++)
            if (slots[i].busy && slots[i].first_us)
                open++;
        if (!all_open && open == o->concurrency) {
            all_open = true;
            hold_end = now + (int64_t) (o->duration * 1e6);
            printf ("hold: all %ld streams open after %.2f s\n", open,
                    (double) (now - begin) / 1e6);
            fflush (stdout);
        }
        if (!all_open && ended > 0 && open + ended == o->concurrency)
            break; //  some ended before the rest opened: cannot hold them all
    }
    long stalled = 0, waiting = 0;
    for (long i = 0; i < o->concurrency; i++) {
        if (!slots[i].busy)
            continue;
        if (!slots[i].first_us)
            waiting++;
        else if (now - slots[i].last_us > S_STALL_US)
            stalled++;
    }
    if (!all_open)
        printf ("hold: only %ld of %ld streams open (%ld never had an event, %ld ended) "
                "after %.2f s\n",
                open, o->concurrency, waiting, ended, (double) (now - begin) / 1e6);
    for (long i = 0; i < o->concurrency; i++)
        if (slots[i].busy) {
            //  Their first token: part of the figures, though they never end.
            if (slots[i].first_us)
                bench_samples_add (&stats->first,
                                   (double) (slots[i].first_us - slots[i].started_us) /
                                       1000.0);
            curl_multi_remove_handle (multi, slots[i].easy);
            slots[i].busy = false;
            stats->cut++;
        }
    bool held = all_open && ended == 0;
    printf ("%-22s %ld of %ld open at the end of the hold (ended early %ld, "
            "stalled > %d s %ld)\n",
            "streams held", all_open ? open : 0, o->concurrency, ended,
            (int) (S_STALL_US / 1000000), stalled);
    s_print_stats (o, stats, (double) (now - begin) / 1e6);
    printf ("%-22s %s\n", "hold verdict", held && !stalled ? "held" : "NOT held");
    return held && !stalled ? 0 : 1;
}

int
main (int argc, char **argv)
{
    s_options_t o;
    int rc = s_options (argc, argv, &o);
    if (rc)
        return rc;
    s_needle_init (&s_final);
    s_needle_init (&s_abort);
    if (curl_global_init (CURL_GLOBAL_DEFAULT)) {
        fprintf (stderr, "chat_bench: libcurl failed to start\n");
        return 1;
    }
    char *body = s_body (o.message);
    struct curl_slist *headers =
        bench_headers (o.token, "application/json",
                       o.mode == S_MODE_STREAM ? "text/event-stream" : NULL);

    CURLM *multi = curl_multi_init ();
    curl_multi_setopt (multi, CURLMOPT_MAXCONNECTS, o.concurrency);
    s_transfer_t *slots = cm_calloc ((size_t) o.concurrency, sizeof *slots);
    s_stats_t stats;
    memset (&stats, 0, sizeof stats);
    s_contexts = cm_calloc ((size_t) o.concurrency, sizeof *s_contexts);
    for (long i = 0; i < o.concurrency; i++) {
        CURL *easy = curl_easy_init ();
        s_contexts[i] = (s_write_ctx_t){&slots[i], &stats, o.mode};
        curl_easy_setopt (easy, CURLOPT_URL, o.url);
        curl_easy_setopt (easy, CURLOPT_HTTPHEADER, headers);
        curl_easy_setopt (easy, CURLOPT_POSTFIELDS, body);
        curl_easy_setopt (easy, CURLOPT_POSTFIELDSIZE, (long) strlen (body));
        curl_easy_setopt (easy, CURLOPT_HTTP_VERSION, CURL_HTTP_VERSION_1_1);
        curl_easy_setopt (easy, CURLOPT_WRITEFUNCTION, s_on_write);
        curl_easy_setopt (easy, CURLOPT_WRITEDATA, &s_contexts[i]);
        curl_easy_setopt (easy, CURLOPT_PRIVATE, &s_contexts[i]);
        curl_easy_setopt (easy, CURLOPT_NOSIGNAL, 1L);
        curl_easy_setopt (easy, CURLOPT_CONNECTTIMEOUT_MS, (long) (o.timeout * 1000));
        //  --hold bounds its streams itself (they must outlive --timeout).
        if (!o.hold)
            curl_easy_setopt (easy, CURLOPT_TIMEOUT_MS, (long) (o.timeout * 1000));
        slots[i].easy = easy;
    }

    rc = o.hold ? s_run_hold (&o, multi, slots, &stats)
                : s_run_load (&o, multi, slots, &stats);

    for (long i = 0; i < o.concurrency; i++)
        curl_easy_cleanup (slots[i].easy);
    curl_multi_cleanup (multi);
    curl_slist_free_all (headers);
    curl_global_cleanup ();
    bench_samples_free (&stats.latency);
    bench_samples_free (&stats.first);
    free (s_contexts);
    free (slots);
    free (body);
    free (o.url);
    return rc;
}
