/*  ingest_bench: load generator for the ingestion routes.

    Submits --documents generated text documents of --size bytes each,
    --concurrency at a time, as multipart uploads (POST
    /api/v1/document/upload, a text/plain "file" part) or as raw text (POST
    /api/v1/document/raw-text), each added to the benchmark workspace
    (addToWorkspaces). Then it follows every job through our job route
    (GET /api/v1/document/jobs/{id}) until each one has completed or failed,
    or --timeout passes. One thread, libcurl's multi interface. The target
    is the seed's benchmark variables: BENCHMARK_BASE_URL (default
    http://127.0.0.1:3001), BENCHMARK_WORKSPACE_SLUG and
    BENCHMARK_WORKSPACE_TOKEN (both required).

    Times come from the server where it has them, so that how often the
    client polls does not change them: the queue's view of a job (the
    "queue" object of the job route: timestamp = added, processedOn = taken
    by a worker (its last attempt), finishedOn, all in ms of Redis's clock)
    gives the queue wait (processedOn - timestamp) and the job duration
    (finishedOn - processedOn). A job that went the fallback path has no
    queue view; its row's createdAt and finishedAt still give its end. End
    to end is from the first submit (client wall clock: same host as Redis)
    to the last job's end; documents/s and MB/s (10^6 bytes of text) are
    over that span. The queue keeps EMBEDDING_JOBS_KEEP_COMPLETED (1000)
    completed jobs: more documents than that lose the queue figures of the
    oldest.

    It prints those figures, submit latency percentiles, the submit status
    codes, the jobs' final states and paths, and its own CPU. A figure, not
    a test. Exit 0 when every document was accepted and every job
    completed, 1 otherwise, 2 on bad usage. */
#include "bench_common.h"
#include <curl/curl.h>
#include <getopt.h>
#include <jansson.h>
#include <time.h>

//  Longest wait inside one curl_multi_poll, so deadlines are checked often.
#define S_POLL_MS 20

typedef enum { S_ROUTE_UPLOAD, S_ROUTE_RAW } s_route_t;

typedef struct {
    long documents;    //  documents to submit
    long concurrency;  //  requests in flight at once
    long size;         //  bytes of text per document
    s_route_t route;   //  upload (multipart) or raw-text (JSON)
    double timeout;    //  whole run, seconds
    long poll_ms;      //  a job is asked again no sooner than this
    const char *slug;  //  the workspace
    const char *token; //  bearer token
    char *base;        //  base URL without a trailing slash (owned)
} s_options_t;

//  What the client knows of one document.
typedef enum {
    S_DOC_PENDING,   //  not submitted yet
    S_DOC_SUBMITTED, //  request in flight
    S_DOC_REFUSED,   //  the submit did not answer 200
    S_DOC_WAITING,   //  accepted; its job not over yet
    S_DOC_POLLING,   //  a job request in flight
    S_DOC_DONE,      //  completed or failed
} s_doc_state_t;

typedef struct {
    s_doc_state_t state;
    char *job_id;         //  from the submit's answer
    char *path;           //  queue or fallback
    char *final;          //  completed or failed
    int64_t next_poll_us; //  mono: ask no sooner
    int64_t seen_done_us; //  mono: when the client saw it over
    int64_t end_ms;       //  wall ms the job ended (server), 0: unknown
    int64_t chunks;       //  chunksTotal
    int attempts;         //  attempts made
} s_doc_t;

typedef struct {
    CURL *easy;         //  reused for every request of this slot
    bool busy;          //  added to the multi handle
    long doc;           //  the document it is for
    bool poll;          //  a job request (else a submit)
    int64_t started_us; //  when it was added
    char *body;         //  the response
    size_t body_size, body_max;
    char *request;   //  raw-text: the JSON body (owned)
    curl_mime *mime; //  upload: the form (owned)
} s_slot_t;

typedef struct {
    bench_samples_t submit;   //  submit latency, 200s
    bench_samples_t poll;     //  job route latency, 200s
    bench_samples_t wait;     //  queue wait
    bench_samples_t duration; //  job duration
    bench_samples_t total;    //  the row's createdAt -> finishedAt, either path
    long submit_status[600];
    long submit_transport;
    long poll_status[600];
    long poll_transport;
    long completed, failed, queue_path, fallback_path, no_queue_info, retried;
    int64_t chunks;
} s_stats_t;

static void
s_print_samples (const char *name, bench_samples_t *self, const char *note)
{
    bench_samples_sort (self);
    printf ("%-22s p50 %.1f  p90 %.1f  p99 %.1f  max %.1f  (%zu%s%s)\n", name,
            bench_percentile (self, 50), bench_percentile (self, 90),
            bench_percentile (self, 99), bench_percentile (self, 100), self->size,
            note ? ", " : "", note ? note : "");
}

static void
s_usage (FILE *out)
{
    fprintf (
        out,
        "usage: ingest_bench [--documents N] [--size BYTES] [--concurrency N]\n"
        "                    [--route upload|raw-text] [--timeout S] [--poll-ms MS]\n"
        "\n"
        "Ingestion load generator: submits N generated text documents, then\n"
        "follows their jobs until all are over (one thread, libcurl multi).\n"
        "\n"
        "  --documents N    documents to submit, 1 to 1000000 (default 200)\n"
        "  --size BYTES     text per document, 64 to 100000000 (default 20480)\n"
        "  --concurrency N  requests in flight at once, 1 to 10000 (default 8)\n"
        "  --route R        upload: multipart POST /api/v1/document/upload (default);\n"
        "                   raw-text: POST /api/v1/document/raw-text\n"
        "  --timeout S      limit on the whole run, seconds (default 600)\n"
        "  --poll-ms MS     a job is asked about again no sooner than this\n"
        "                   (default 50); server times do not depend on it\n"
        "\n"
        "Environment (the seed's benchmark variables):\n"
        "  BENCHMARK_BASE_URL         server base URL (default %s)\n"
        "  BENCHMARK_WORKSPACE_SLUG   workspace the documents are added to (required)\n"
        "  BENCHMARK_WORKSPACE_TOKEN  API key, sent as a bearer token (required)\n"
        "\n"
        "Exit: 0 every document accepted and its job completed, 1 otherwise,\n"
        "2 bad usage.\n",
        BENCH_DEFAULT_BASE_URL);
}

//  Bad usage: say why, show the usage, exit code 2.
#define s_bad(fmt, what) bench_bad ("ingest_bench", s_usage, fmt, what)

static int
s_options (int argc, char **argv, s_options_t *o)
{
    static const struct option longs[] = {
        {"documents", required_argument, NULL, 'n'},
        {"size", required_argument, NULL, 's'},
        {"concurrency", required_argument, NULL, 'c'},
        {"route", required_argument, NULL, 'r'},
        {"timeout", required_argument, NULL, 't'},
        {"poll-ms", required_argument, NULL, 'p'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    *o = (s_options_t){200, 8, 20480, S_ROUTE_UPLOAD, 600, 50, NULL, NULL, NULL};
    int opt;
    long seconds;
    opterr = 0;
    while ((opt = getopt_long (argc, argv, "", longs, NULL)) != -1) {
        switch (opt) {
            case 'n':
                if (!bench_parse_long (optarg, 1, 1000000, &o->documents))
                    return s_bad ("--documents must be 1 to 1000000, not '%s'", optarg);
                break;
            case 's':
                if (!bench_parse_long (optarg, 64, 100000000, &o->size))
                    return s_bad ("--size must be 64 to 100000000 bytes, not '%s'",
                                  optarg);
                break;
            case 'c':
                if (!bench_parse_long (optarg, 1, 10000, &o->concurrency))
                    return s_bad ("--concurrency must be 1 to 10000, not '%s'", optarg);
                break;
            case 'r':
                if (strcmp (optarg, "upload") && strcmp (optarg, "raw-text"))
                    return s_bad ("--route must be upload or raw-text, not '%s'", optarg);
                o->route = strcmp (optarg, "upload") ? S_ROUTE_RAW : S_ROUTE_UPLOAD;
                break;
            case 't':
                if (!bench_parse_long (optarg, 1, 86400, &seconds))
                    return s_bad ("--timeout must be 1 to 86400 seconds, not '%s'",
                                  optarg);
                o->timeout = (double) seconds;
                break;
            case 'p':
                if (!bench_parse_long (optarg, 1, 60000, &o->poll_ms))
                    return s_bad ("--poll-ms must be 1 to 60000, not '%s'", optarg);
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
    bench_target_t target;
    char err[512];
    if (bench_target_from_env (&target, err, sizeof err))
        return s_bad ("%s", err);
    o->slug = target.slug;
    o->token = target.token;
    o->base = target.base;
    return 0;
}

//  Generated text: sentences of words from a small vocabulary, a
//  paragraph break now and then, exactly size bytes (ASCII), different for
//  every document (seeded by its index), so that the chunker finds
//  sentence and paragraph breaks as in prose.
static char *
s_generate (long index, long size)
{
    static const char *const words[] = {
        "queue",    "worker",  "lease",   "redis",    "chunk",     "vector",  "search",
        "document", "embed",   "retry",   "backoff",  "breaker",   "gateway", "replica",
        "latency",  "through", "storage", "sqlite",   "workspace", "answer",  "source",
        "tokens",   "stream",  "bounded", "pool",     "thread",    "crash",   "restart",
        "durable",  "failed",  "active",  "waiting",  "complete",  "metric",  "cosine",
        "overlap",  "reader",  "library", "protocol", "zeromq",    "message", "health"};
    size_t count = sizeof words / sizeof words[0];
    uint64_t rng = 0x9E3779B97F4A7C15ULL ^ ((uint64_t) index * 0xBF58476D1CE4E5B9ULL);
    char *text = cm_malloc ((size_t) size + 1);
    long at = 0, in_sentence = 0, sentences = 0;
    while (at < size) {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        const char *word = words[rng % count];
        char piece[64];
        int n;
        if (in_sentence == 0)
            n = snprintf (piece, sizeof piece, "%c%s", word[0] - 32, word + 1);
        else
            n = snprintf (piece, sizeof piece, " %s", word);
        in_sentence++;
        if (in_sentence >= 8 + (long) (rng >> 60)) {
            n += snprintf (piece + n, sizeof piece - (size_t) n, ".%s",
                           ++sentences % 6 == 0 ? "\n\n" : " ");
            in_sentence = 0;
        }
        for (int i = 0; i < n && at < size; i++)
            text[at++] = piece[i];
    }
    //  A document ends with its sentence, and never with a space.
    text[size - 1] = '.';
    text[size] = 0;
    return text;
}

static size_t
s_on_write (char *data, size_t size, size_t count, void *arg)
{
    s_slot_t *slot = arg;
    size_t total = size * count;
    if (slot->body_size + total + 1 > slot->body_max) {
        slot->body_max = (slot->body_size + total + 1) * 2;
        slot->body = cm_realloc (slot->body, slot->body_max);
    }
    memcpy (slot->body + slot->body_size, data, total);
    slot->body_size += total;
    slot->body[slot->body_size] = 0;
    return total;
}

static void
s_slot_clear (s_slot_t *slot)
{
    curl_mime_free (slot->mime);
    slot->mime = NULL;
    free (slot->request);
    slot->request = NULL;
    slot->body_size = 0;
    if (slot->body)
        slot->body[0] = 0;
}

//  Start a submit of document doc on a slot.
static void
s_submit (const s_options_t *o, s_slot_t *slot, struct curl_slist *headers, long doc)
{
    CURL *easy = slot->easy;
    char url[4096], name[64];
    char *text = s_generate (doc, o->size);
    curl_easy_reset (easy);
    snprintf (name, sizeof name, "bench-%06ld.txt", doc);
    if (o->route == S_ROUTE_UPLOAD) {
        snprintf (url, sizeof url, "%s/api/v1/document/upload", o->base);
        slot->mime = curl_mime_init (easy);
        curl_mimepart *part = curl_mime_addpart (slot->mime);
        curl_mime_name (part, "file");
        curl_mime_filename (part, name);
        curl_mime_type (part, "text/plain");
        curl_mime_data (part, text, (size_t) o->size);
        part = curl_mime_addpart (slot->mime);
        curl_mime_name (part, "addToWorkspaces");
        curl_mime_data (part, o->slug, CURL_ZERO_TERMINATED);
        curl_easy_setopt (easy, CURLOPT_MIMEPOST, slot->mime);
    } else {
        snprintf (url, sizeof url, "%s/api/v1/document/raw-text", o->base);
        json_t *body = json_pack ("{s:s, s:{s:s}, s:s}", "textContent", text, "metadata",
                                  "title", name, "addToWorkspaces", o->slug);
        slot->request = json_dumps (body, JSON_COMPACT);
        json_decref (body);
        curl_easy_setopt (easy, CURLOPT_POSTFIELDS, slot->request);
        curl_easy_setopt (easy, CURLOPT_POSTFIELDSIZE, (long) strlen (slot->request));
    }
    free (text);
    curl_easy_setopt (easy, CURLOPT_URL, url);
    curl_easy_setopt (easy, CURLOPT_HTTPHEADER, headers);
    slot->doc = doc;
    slot->poll = false;
}

//  Start a job request for document doc on a slot.
static void
s_poll (const s_options_t *o, s_slot_t *slot, struct curl_slist *headers, long doc,
        const char *job_id)
{
    CURL *easy = slot->easy;
    char url[4096];
    curl_easy_reset (easy);
    snprintf (url, sizeof url, "%s/api/v1/document/jobs/%s", o->base, job_id);
    curl_easy_setopt (easy, CURLOPT_URL, url);
    curl_easy_setopt (easy, CURLOPT_HTTPHEADER, headers);
    slot->doc = doc;
    slot->poll = true;
}

static void
s_start (const s_options_t *o, CURLM *multi, s_slot_t *slot)
{
    CURL *easy = slot->easy;
    curl_easy_setopt (easy, CURLOPT_HTTP_VERSION, CURL_HTTP_VERSION_1_1);
    curl_easy_setopt (easy, CURLOPT_WRITEFUNCTION, s_on_write);
    curl_easy_setopt (easy, CURLOPT_WRITEDATA, slot);
    curl_easy_setopt (easy, CURLOPT_PRIVATE, slot);
    curl_easy_setopt (easy, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt (easy, CURLOPT_TIMEOUT_MS, (long) (o->timeout * 1000));
    slot->busy = true;
    slot->started_us = cm_clock_mono_us ();
    curl_multi_add_handle (multi, easy);
}

//  "2026-11-27T10:55:02.800Z" as wall ms, 0 when it is not one.
static int64_t
s_iso_ms (const char *text)
{
    struct tm tm;
    memset (&tm, 0, sizeof tm);
    int ms = 0;
    if (!text || sscanf (text, "%d-%d-%dT%d:%d:%d.%dZ", &tm.tm_year, &tm.tm_mon,
                         &tm.tm_mday, &tm.tm_hour, &tm.tm_min, &tm.tm_sec, &ms) != 7)
        return 0;
    tm.tm_year -= 1900;
    tm.tm_mon -= 1;
    return (int64_t) timegm (&tm) * 1000 + ms;
}

static int64_t
s_int (const json_t *object, const char *key)
{
    const json_t *value = json_object_get (object, key);
    if (json_is_integer (value))
        return json_integer_value (value);
    if (json_is_string (value))
        return strtoll (json_string_value (value), NULL, 10);
    return 0;
}

//  A submit ended: the document is accepted (its job id kept) or refused.
static void
s_submitted (s_slot_t *slot, s_doc_t *doc, long status, s_stats_t *stats, int64_t now_us)
{
    doc->state = S_DOC_REFUSED;
    if (status != 200)
        return;
    bench_samples_add (&stats->submit, (double) (now_us - slot->started_us) / 1000.0);
    json_t *reply = json_loads (slot->body ? slot->body : "", 0, NULL);
    json_t *job =
        json_object_get (json_array_get (json_object_get (reply, "documents"), 0), "job");
    const char *id = json_string_value (json_object_get (job, "id"));
    const char *path = json_string_value (json_object_get (job, "path"));
    if (id) {
        doc->job_id = cm_strdup (id);
        doc->path = cm_strdup (path ? path : "?");
        doc->state = S_DOC_WAITING;
        doc->next_poll_us = now_us;
    }
    json_decref (reply);
}

//  A job request ended: the job is over (figures taken) or asked again later.
static void
s_polled (const s_options_t *o, s_slot_t *slot, s_doc_t *doc, long status,
          s_stats_t *stats, int64_t now_us)
{
    doc->state = S_DOC_WAITING;
    doc->next_poll_us = now_us + o->poll_ms * 1000;
    if (status != 200)
        return;
    bench_samples_add (&stats->poll, (double) (now_us - slot->started_us) / 1000.0);
    json_t *reply = json_loads (slot->body ? slot->body : "", 0, NULL);
    json_t *job = json_object_get (reply, "job");
    const char *state = json_string_value (json_object_get (job, "state"));
    //  The row is marked before the queue is told: until the queue has the
    //  job's end too, ask again (its figures come from there).
    const char *queued =
        json_string_value (json_object_get (json_object_get (job, "queue"), "state"));
    bool queue_over =
        !queued || !strcmp (queued, "completed") || !strcmp (queued, "failed");
    if (state && queue_over &&
        (!strcmp (state, "completed") || !strcmp (state, "failed"))) {
        doc->state = S_DOC_DONE;
        doc->final = cm_strdup (state);
        doc->seen_done_us = now_us;
        doc->chunks = s_int (job, "chunksTotal");
        doc->attempts = (int) s_int (job, "attempts");
        doc->end_ms = s_iso_ms (json_string_value (json_object_get (job, "finishedAt")));
        int64_t created =
            s_iso_ms (json_string_value (json_object_get (job, "createdAt")));
        if (created && doc->end_ms)
            bench_samples_add (&stats->total, (double) (doc->end_ms - created));
        json_t *queue = json_object_get (job, "queue");
        int64_t added = s_int (queue, "timestamp");
        int64_t taken = s_int (queue, "processedOn");
        int64_t finished = s_int (queue, "finishedOn");
        if (json_is_object (queue) && added && taken && finished) {
            bench_samples_add (&stats->wait, (double) (taken - added));
            bench_samples_add (&stats->duration, (double) (finished - taken));
            doc->end_ms = finished;
        } else
            stats->no_queue_info++;
    }
    json_decref (reply);
}

int
main (int argc, char **argv)
{
    s_options_t o;
    int rc = s_options (argc, argv, &o);
    if (rc)
        return rc;
    if (curl_global_init (CURL_GLOBAL_DEFAULT)) {
        fprintf (stderr, "ingest_bench: libcurl failed to start\n");
        return 1;
    }
    struct curl_slist *json_headers = bench_headers (o.token, "application/json", NULL);
    struct curl_slist *form_headers = bench_headers (o.token, NULL, NULL);

    CURLM *multi = curl_multi_init ();
    curl_multi_setopt (multi, CURLMOPT_MAXCONNECTS, o.concurrency);
    s_slot_t *slots = cm_calloc ((size_t) o.concurrency, sizeof *slots);
    for (long i = 0; i < o.concurrency; i++)
        slots[i].easy = curl_easy_init ();
    s_doc_t *docs = cm_calloc ((size_t) o.documents, sizeof *docs);
    s_stats_t stats;
    memset (&stats, 0, sizeof stats);

    printf (
        "%-22s %ld documents of %ld bytes, %ld concurrent, POST %s/api/v1/document/%s\n",
        "ingest_bench", o.documents, o.size, o.concurrency, o.base,
        o.route == S_ROUTE_UPLOAD ? "upload" : "raw-text");
    fflush (stdout);
    int64_t begin_us = cm_clock_mono_us ();
    int64_t begin_wall_ms = cm_clock_wall_ms ();
    int64_t deadline_us = begin_us + (int64_t) (o.timeout * 1e6);
    int64_t submits_end_us = 0;
    long next_submit = 0, submits_done = 0, over = 0, accepted = 0;
    long in_flight = 0, poll_cursor = 0;
    int64_t now = begin_us;
    //  Submits first, every slot; then job requests, oldest job first.
    while (now < deadline_us && (submits_done < o.documents || over < accepted)) {
        for (long i = 0; i < o.concurrency; i++) {
            s_slot_t *slot = &slots[i];
            if (slot->busy)
                continue;
            if (next_submit < o.documents) {
                s_submit (&o, slot,
                          o.route == S_ROUTE_UPLOAD ? form_headers : json_headers,
                          next_submit);
                docs[next_submit++].state = S_DOC_SUBMITTED;
                s_start (&o, multi, slot);
                in_flight++;
                continue;
            }
            if (submits_done < o.documents)
                continue; //  all submitted, some in flight: poll after them
            //  The next job due, round-robin from where the last one was.
            long found = -1;
            for (long k = 0; k < o.documents; k++) {
                long d = (poll_cursor + k) % o.documents;
                if (docs[d].state == S_DOC_WAITING && docs[d].next_poll_us <= now) {
                    found = d;
                    break;
                }
            }
            if (found < 0)
                break;
            poll_cursor = (found + 1) % o.documents;
            docs[found].state = S_DOC_POLLING;
            s_poll (&o, slot, json_headers, found, docs[found].job_id);
            s_start (&o, multi, slot);
            in_flight++;
        }
        bench_pump (multi, S_POLL_MS);
        now = cm_clock_mono_us ();
        CURLMsg *msg;
        int queued;
        while ((msg = curl_multi_info_read (multi, &queued))) {
            if (msg->msg != CURLMSG_DONE)
                continue;
            char *owner = NULL;
            curl_easy_getinfo (msg->easy_handle, CURLINFO_PRIVATE, &owner);
            s_slot_t *slot = (s_slot_t *) owner;
            long status = 0;
            if (msg->data.result == CURLE_OK)
                curl_easy_getinfo (slot->easy, CURLINFO_RESPONSE_CODE, &status);
            curl_multi_remove_handle (multi, slot->easy);
            slot->busy = false;
            in_flight--;
            s_doc_t *doc = &docs[slot->doc];
            long code = status >= 100 && status < 600 ? status : 0;
            if (!slot->poll) {
                if (msg->data.result != CURLE_OK)
                    stats.submit_transport++;
                else
                    stats.submit_status[code]++;
                s_submitted (slot, doc, status, &stats, now);
                if (doc->state == S_DOC_WAITING)
                    accepted++;
                if (++submits_done == o.documents)
                    submits_end_us = now;
            } else {
                if (msg->data.result != CURLE_OK)
                    stats.poll_transport++;
                else
                    stats.poll_status[code]++;
                s_polled (&o, slot, doc, status, &stats, now);
                if (doc->state == S_DOC_DONE)
                    over++;
            }
            s_slot_clear (slot);
        }
    }
    for (long i = 0; i < o.concurrency; i++)
        if (slots[i].busy) {
            curl_multi_remove_handle (multi, slots[i].easy);
            slots[i].busy = false;
            if (!slots[i].poll)
                stats.submit_transport++;
            s_slot_clear (&slots[i]);
        }

    //  Figures.
    int64_t last_end_ms = 0, last_seen_us = 0;
    long unfinished = 0;
    for (long i = 0; i < o.documents; i++) {
        s_doc_t *doc = &docs[i];
        if (doc->path)
            *(strcmp (doc->path, "fallback") ? &stats.queue_path
                                             : &stats.fallback_path) += 1;
        if (doc->state != S_DOC_DONE) {
            unfinished += doc->job_id ? 1 : 0;
            continue;
        }
        if (!strcmp (doc->final, "completed")) {
            stats.completed++;
            stats.chunks += doc->chunks;
        } else
            stats.failed++;
        if (doc->attempts > 1)
            stats.retried++;
        if (doc->end_ms > last_end_ms)
            last_end_ms = doc->end_ms;
        if (doc->seen_done_us > last_seen_us)
            last_seen_us = doc->seen_done_us;
    }
    double span =
        last_end_ms > begin_wall_ms ? (double) (last_end_ms - begin_wall_ms) / 1e3 : 0;
    double seen = last_seen_us ? (double) (last_seen_us - begin_us) / 1e6 : 0;
    double submit_secs = submits_end_us ? (double) (submits_end_us - begin_us) / 1e6 : 0;
    double megabytes = (double) stats.completed * (double) o.size / 1e6;
    printf ("%-22s %.3f  (first submit to the last job's end, server time)\n",
            "end to end s", span);
    printf ("%-22s %.1f\n", "documents/s",
            span > 0 ? (double) stats.completed / span : 0);
    printf ("%-22s %.2f  (%.1f MB of text completed)\n", "MB/s",
            span > 0 ? megabytes / span : 0, megabytes);
    printf ("%-22s %.3f  (when the client saw the last one over)\n", "client saw all s",
            seen);
    printf ("%-22s %.3f  (%.1f submits/s)\n", "submit phase s", submit_secs,
            submit_secs > 0 ? (double) o.documents / submit_secs : 0);
    s_print_samples ("submit latency ms", &stats.submit, "responses 200");
    s_print_samples ("queue wait ms", &stats.wait, "processedOn - timestamp");
    s_print_samples ("job duration ms", &stats.duration, "finishedOn - processedOn");
    s_print_samples ("job total ms", &stats.total, "row finishedAt - createdAt");
    s_print_samples ("job route latency ms", &stats.poll, "polls");
    bench_print_status ("submit status", stats.submit_status, stats.submit_transport);
    bench_print_status ("job route status", stats.poll_status, stats.poll_transport);
    printf (
        "%-22s completed=%ld failed=%ld unfinished=%ld  (path queue=%ld fallback=%ld; "
        "retried %ld; no queue view %ld)\n",
        "jobs", stats.completed, stats.failed, unfinished, stats.queue_path,
        stats.fallback_path, stats.retried, stats.no_queue_info);
    printf ("%-22s %lld  (%.1f per document)\n", "chunks stored",
            (long long) stats.chunks,
            stats.completed ? (double) stats.chunks / (double) stats.completed : 0);
    bench_print_cpu ((double) (now - begin_us) / 1e6);
    rc = stats.completed == o.documents ? 0 : 1;

    for (long i = 0; i < o.concurrency; i++) {
        curl_easy_cleanup (slots[i].easy);
        free (slots[i].body);
    }
    for (long i = 0; i < o.documents; i++) {
        free (docs[i].job_id);
        free (docs[i].path);
        free (docs[i].final);
    }
    curl_multi_cleanup (multi);
    curl_slist_free_all (json_headers);
    curl_slist_free_all (form_headers);
    curl_global_cleanup ();
    bench_samples_free (&stats.submit);
    bench_samples_free (&stats.poll);
    bench_samples_free (&stats.wait);
    bench_samples_free (&stats.duration);
    bench_samples_free (&stats.total);
    free (docs);
    free (slots);
    free (o.base);
    return rc;
}
