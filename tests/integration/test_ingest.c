/*  test_ingest.c: ingestion end to end (issue 5) against the real suite
    (supervisor, redis-server, gateway, chatd, ingestd) over HTTP.

    - every accepted format (and raw text) is stored, embedded through the
      Redis queue and found by vector-search in API.md's shape;
      update-embeddings adds and removes documents; the OpenAI-compatible
      embeddings route; chat in query mode answers with sources, or refuses
      when nothing passes the threshold, in chat and stream-chat;
    - every bad input gets its status and a JSON body naming the problem;
    - kill -9 of ingestd while 200 jobs are queued and running: after the
      supervisor restarts it all 200 complete, and the database holds every
      document's chunks exactly once (read with SQLite from here);
    - Redis frozen (SIGSTOP) or gone: uploads complete through the fallback
      path, health says degraded; Redis back: the queue path again, without
      a restart;
    - against tests/fake_llm as the embedding upstream: fails twice then
      succeeds: completed on attempt 3; always fails: failed with the
      reason, in the queue's failed set, and the ingestion breaker opens;
    - search quality: every query of tests/data/search_corpus finds its
      document first.
    Nothing here passes or fails on timing: every wait is a poll with a
    generous limit (the ASan build is several times slower). */
#include <criterion/criterion.h>
#include <curl/curl.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "fake_llm_client.h"
#include "it_harness.h"
#include "test_dir.h"

static it_suite_t s_suite;
static fake_llm_t s_fake;
static bool s_fake_running;

//  Environment strings handed to putenv must outlive the suite's start.
static char s_env[32][256];

//  --- the suite ------------------------------------------------------------------

static bool
s_ready (void *arg)
{
    (void) arg;
    long status;
    json_t *ready = it_get_json (&s_suite, "/api/health/ready", &status);
    json_decref (ready);
    return status == 200;
}

//  The suite with one chatd (less load on a small machine) and these extra
//  settings (NULL-terminated); with_fake: tests/fake_llm first, and the
//  suite's embedder pointed at it (EMBEDDING_PROVIDER=openai).
static void
s_start (const char *const *extra, bool with_fake)
{
    const char *env[32];
    size_t n = 0;
    env[n++] = "CHAT_REPLICAS=1";
    if (with_fake) {
        fake_llm_start (&s_fake, NULL);
        s_fake_running = true;
        snprintf (s_env[n], sizeof s_env[n], "EMBEDDING_BASE_URL=%s", s_fake.base_url);
        env[n] = s_env[n], n++;
        env[n++] = "EMBEDDING_PROVIDER=openai";
        env[n++] = "EMBEDDING_MODEL=fake-embed";
        env[n++] = "EMBEDDING_API_KEY=sk-embed-integration";
    }
    for (size_t i = 0; extra && extra[i] && n < 31; i++)
        env[n++] = extra[i];
    env[n] = NULL;
    it_suite_start_live (&s_suite, env);
    cr_assert (it_wait (s_ready, NULL, 60000), "the suite never became ready");
}

static void
s_stop (void)
{
    it_suite_stop (&s_suite);
    if (s_fake_running)
        fake_llm_stop (&s_fake);
    s_fake_running = false;
}

//  --- HTTP helpers -------------------------------------------------------------------

//  POST (or another method) to a path with the admin key; the answer as
//  JSON, its status in *status.
static json_t *
s_call (const char *method, const char *path, const char *body, long *status)
{
    char url[512];
    it_url (&s_suite, url, sizeof url, path);
    it_response_t r;
    it_http (method, url, body, true, &r);
    *status = r.status;
    json_t *json = it_json (&r);
    it_response_free (&r);
    return json;
}

static json_t *
s_post (const char *path, const char *body, long *status)
{
    return s_call ("POST", path, body, status);
}

typedef struct {
    char *data;
    size_t size;
} s_buffer_t;

static size_t
s_collect (char *data, size_t size, size_t nmemb, void *arg)
{
    s_buffer_t *buffer = arg;
    size_t n = size * nmemb;
    buffer->data = realloc (buffer->data, buffer->size + n + 1);
    memcpy (buffer->data + buffer->size, data, n);
    buffer->size += n;
    buffer->data[buffer->size] = 0;
    return n;
}

//  A multipart upload: file (name, bytes), and when not NULL the
//  addToWorkspaces and metadata fields. The answer as JSON.
static json_t *
s_upload (const char *filename, const char *data, size_t size, const char *add_to,
          const char *metadata, long *status)
{
    char url[512];
    it_url (&s_suite, url, sizeof url, "/api/v1/document/upload");
    CURL *curl = curl_easy_init ();
    curl_mime *mime = curl_mime_init (curl);
    curl_mimepart *part = curl_mime_addpart (mime);
    curl_mime_name (part, "file");
    curl_mime_data (part, data, size);
    curl_mime_filename (part, filename);
    if (add_to) {
        part = curl_mime_addpart (mime);
        curl_mime_name (part, "addToWorkspaces");
        curl_mime_data (part, add_to, CURL_ZERO_TERMINATED);
    }
    if (metadata) {
        part = curl_mime_addpart (mime);
        curl_mime_name (part, "metadata");
        curl_mime_data (part, metadata, CURL_ZERO_TERMINATED);
    }
    struct curl_slist *headers =
        curl_slist_append (NULL, "Authorization: Bearer " IT_ADMIN_KEY);
    s_buffer_t buffer = {0};
    curl_easy_setopt (curl, CURLOPT_URL, url);
    curl_easy_setopt (curl, CURLOPT_HTTPHEADER, headers);
    curl_easy_setopt (curl, CURLOPT_MIMEPOST, mime);
    curl_easy_setopt (curl, CURLOPT_WRITEFUNCTION, s_collect);
    curl_easy_setopt (curl, CURLOPT_WRITEDATA, &buffer);
    curl_easy_setopt (curl, CURLOPT_TIMEOUT_MS, 60000L);
    curl_easy_setopt (curl, CURLOPT_NOSIGNAL, 1L);
    *status = 0;
    CURLcode rc = curl_easy_perform (curl);
    if (rc == CURLE_OK)
        curl_easy_getinfo (curl, CURLINFO_RESPONSE_CODE, status);
    curl_slist_free_all (headers);
    curl_mime_free (mime);
    curl_easy_cleanup (curl);
    json_error_t error;
    json_t *json = json_loads (buffer.data ? buffer.data : "", 0, &error);
    cr_assert_not_null (json, "upload of %s: not JSON (curl: %s, status %ld): %s",
                        filename, curl_easy_strerror (rc), *status,
                        buffer.data ? buffer.data : "");
    free (buffer.data);
    return json;
}

//  A file of the source tree (malloc'd, NUL-terminated).
static char *
s_read_file (const char *relative, size_t *size_p)
{
    char path[1024];
    snprintf (path, sizeof path, "%s/%s", getenv ("LLMRT_SOURCE_DIR"), relative);
    FILE *file = fopen (path, "rb");
    cr_assert_not_null (file, "cannot open %s", path);
    fseek (file, 0, SEEK_END);
    long size = ftell (file);
    fseek (file, 0, SEEK_SET);
    char *data = malloc ((size_t) size + 1);
    cr_assert_eq (fread (data, 1, (size_t) size, file), (size_t) size);
    data[size] = 0;
    fclose (file);
    if (size_p)
        *size_p = (size_t) size;
    return data;
}

//  Raw text into workspaces (slugs, may be NULL); the answer's document
//  (new reference); fails the test unless 200.
static json_t *
s_raw_text (const char *title, const char *text, const char *add_to)
{
    json_t *body =
        json_pack ("{s:s, s:{s:s}}", "textContent", text, "metadata", "title", title);
    if (add_to)
        json_object_set_new (body, "addToWorkspaces", json_string (add_to));
    char *text_body = json_dumps (body, 0);
    long status;
    json_t *answer = s_post ("/api/v1/document/raw-text", text_body, &status);
    char *shown = json_dumps (answer, 0);
    cr_assert_eq (status, 200, "raw-text %s: %ld %s", title, status, shown);
    free (shown);
    json_t *document =
        json_incref (json_array_get (json_object_get (answer, "documents"), 0));
    cr_assert_not_null (document);
    json_decref (answer);
    free (text_body);
    json_decref (body);
    return document;
}

//  The job's id of an answer's document (borrowed).
static const char *
s_job_id (json_t *document)
{
    const char *id = it_str (json_object_get (document, "job"), "id");
    cr_assert_not_null (id, "the document names no job");
    return id;
}

//  GET /api/v1/document/jobs/{id}: the job (new reference), status in *status.
static json_t *
s_job (const char *id, long *status)
{
    char path[256];
    snprintf (path, sizeof path, "/api/v1/document/jobs/%s", id);
    json_t *answer = s_call ("GET", path, NULL, status);
    json_t *job = json_incref (json_object_get (answer, "job"));
    json_decref (answer);
    return job;
}

typedef struct {
    const char *id;
    json_t *job; //  last seen
} s_job_wait_t;

static bool
s_job_finished (void *arg)
{
    s_job_wait_t *wait = arg;
    long status;
    json_decref (wait->job);
    wait->job = s_job (wait->id, &status);
    const char *state = it_str (wait->job, "state");
    return status == 200 && state &&
           (!strcmp (state, "completed") || !strcmp (state, "failed"));
}

//  Poll a job until it is completed or failed (at most timeout_ms); the
//  last view of it (new reference).
static json_t *
s_wait_job (const char *id, int timeout_ms)
{
    s_job_wait_t wait = {id, NULL};
    bool finished = it_wait (s_job_finished, &wait, timeout_ms);
    char *shown = json_dumps (wait.job, 0);
    cr_assert (finished, "job %s did not finish within %d ms: %s", id, timeout_ms, shown);
    free (shown);
    return wait.job;
}

//  The job of a document completed (attempt 1 unless attempts > 0).
static json_t *
s_wait_completed (json_t *document, int timeout_ms)
{
    json_t *job = s_wait_job (s_job_id (document), timeout_ms);
    char *shown = json_dumps (job, 0);
    cr_assert_str_eq (it_str (job, "state"), "completed", "%s", shown);
    cr_assert (json_is_null (json_object_get (job, "error")), "%s", shown);
    json_int_t total = json_integer_value (json_object_get (job, "chunksTotal"));
    cr_assert_geq (total, 1, "%s", shown);
    cr_assert_eq (json_integer_value (json_object_get (job, "chunksDone")), total, "%s",
                  shown);
    free (shown);
    return job;
}

//  POST vector-search; the answer (new reference). threshold < 0: none sent.
static json_t *
s_search (const char *slug, const char *query, double threshold, long *status)
{
    char path[256];
    snprintf (path, sizeof path, "/api/v1/workspace/%s/vector-search", slug);
    json_t *body = json_pack ("{s:s, s:i}", "query", query, "topN", 10);
    if (threshold >= 0)
        json_object_set_new (body, "scoreThreshold", json_real (threshold));
    char *text = json_dumps (body, 0);
    json_t *answer = s_post (path, text, status);
    free (text);
    json_decref (body);
    return answer;
}

//  The first result's metadata.<key> of a search (fails the test when
//  there is none).
static const char *
s_first (json_t *answer, const char *key)
{
    json_t *first = json_array_get (json_object_get (answer, "results"), 0);
    char *shown = json_dumps (answer, 0);
    cr_assert_not_null (first, "no result: %.2000s", shown);
    free (shown);
    return it_str (json_object_get (first, "metadata"), key);
}

//  A search result has API.md's shape.
static void
s_assert_result_shape (json_t *result)
{
    char *shown = json_dumps (result, 0);
    cr_assert (json_is_string (json_object_get (result, "id")), "%s", shown);
    cr_assert (json_is_string (json_object_get (result, "text")), "%s", shown);
    json_t *metadata = json_object_get (result, "metadata");
    const char *strings[] = {"url",       "title",       "author",    "description",
                             "docSource", "chunkSource", "published", NULL};
    for (size_t i = 0; strings[i]; i++)
        cr_assert (json_is_string (json_object_get (metadata, strings[i])), "%s: %s",
                   strings[i], shown);
    cr_assert (json_is_integer (json_object_get (metadata, "wordCount")), "%s", shown);
    cr_assert (json_is_integer (json_object_get (metadata, "tokenCount")), "%s", shown);
    json_t *score = json_object_get (result, "score");
    json_t *distance = json_object_get (result, "distance");
    cr_assert (json_is_number (score) && json_is_number (distance), "%s", shown);
    cr_assert (fabs (json_number_value (score) + json_number_value (distance) - 1.0) <
                   1e-3,
               "distance is 1 - score: %s", shown);
    cr_assert (json_number_value (score) <= 1.0 + 1e-6, "%s", shown);
    free (shown);
}

//  Does a workspace (GET /api/v1/workspace/{slug}) list this location?
static bool
s_workspace_has (const char *slug, const char *location)
{
    char path[256];
    snprintf (path, sizeof path, "/api/v1/workspace/%s", slug);
    long status;
    json_t *answer = s_call ("GET", path, NULL, &status);
    cr_assert_eq (status, 200);
    json_t *documents = json_object_get (
        json_array_get (json_object_get (answer, "workspace"), 0), "documents");
    cr_assert (json_is_array (documents), "no documents array");
    bool found = false;
    size_t i;
    json_t *document;
    json_array_foreach (documents, i, document) if (!strcmp (it_str (document, "docpath"),
                                                             location)) found = true;
    json_decref (answer);
    return found;
}

//  Does a search's result list hold a chunk of this title?
static bool
s_results_have (json_t *answer, const char *title)
{
    size_t i;
    json_t *result;
    json_array_foreach (
        json_object_get (answer, "results"), i,
        result) if (!strcmp (it_str (json_object_get (result, "metadata"), "title"),
                             title)) return true;
    return false;
}

//  An error body names the problem: error (or message) contains needle.
static void
s_assert_error (json_t *answer, long status, long expected, const char *needle,
                bool document_shape, const char *what)
{
    char *shown = json_dumps (answer, 0);
    cr_assert_eq (status, expected, "%s: %ld %s", what, status, shown);
    const char *error = it_str (answer, "error");
    cr_assert_not_null (error, "%s: no error: %s", what, shown);
    cr_assert (strstr (error, needle), "%s: the error does not say '%s': %s", what,
               needle, shown);
    if (document_shape)
        cr_assert (json_is_false (json_object_get (answer, "success")), "%s: %s", what,
                   shown);
    free (shown);
}

//  --- 1. the happy path ---------------------------------------------------------------

typedef struct {
    const char *filename;
    const char *content;  //  NULL: the PDF fixture
    const char *title;    //  the title ingestd gives it
    const char *query;    //  finds it
    const char *not_text; //  must not be in its chunks (NULL: no check)
} s_format_t;

static const s_format_t s_formats[] = {
    {"notes.txt",
     "The kestrel hovers above the meadow, wings beating fast while it watches for "
     "voles.",
     "notes.txt", "kestrel hovers above the meadow", NULL},
    {"guide.md",
     "# Axolotl care guide\n\nThe **axolotl** regrows lost limbs and lives in cool "
     "[freshwater](https://example.org) lakes.\n",
     "Axolotl care guide", "axolotl regrows lost limbs", "https://example.org"},
    {"page.html",
     "<html><head><title>Narwhal page</title><style>.tusk{color:red}</style></head>"
     "<body><h1>Narwhals</h1><p>The narwhal tusk is a long spiral tooth.</p>"
     "<script>var hidden = 'scriptonlyword';</script></body></html>",
     "Narwhal page", "narwhal tusk spiral tooth", "scriptonlyword"},
    {"table.csv", "animal,habitat,diet\npangolin,tropical forest,ants and termites\n",
     "table.csv", "pangolin tropical forest termites", NULL},
    {"data.json", "{\"creature\": \"wombat\", \"burrow\": \"deep underground tunnels\"}",
     "data.json", "wombat burrow underground tunnels", NULL},
    {"hello.pdf", NULL, "Fixture Title", "quick brown fox jumps over the lazy dog", NULL},
};

Test (ingest, every_format_is_embedded_through_the_queue_and_found, .timeout = 300)
{
    s_start (NULL, false);
    it_create_workspace (&s_suite, "{\"name\":\"Docs\"}");
    size_t formats = sizeof s_formats / sizeof s_formats[0];
    json_t *documents = json_array ();
    for (size_t i = 0; i < formats; i++) {
        const s_format_t *format = &s_formats[i];
        size_t size = 0;
        char *data = format->content ? strdup (format->content)
                                     : s_read_file ("tests/data/hello.pdf", &size);
        if (format->content)
            size = strlen (data);
        long status;
        json_t *answer = s_upload (format->filename, data, size, "docs", NULL, &status);
        free (data);
        char *shown = json_dumps (answer, 0);
        cr_assert_eq (status, 200, "%s: %ld %s", format->filename, status, shown);
        cr_assert (json_is_true (json_object_get (answer, "success")), "%s", shown);
        cr_assert (json_is_null (json_object_get (answer, "error")), "%s", shown);
        json_t *document = json_array_get (json_object_get (answer, "documents"), 0);
        const char *fields[] = {"location",  "name",        "url",       "title",
                                "docAuthor", "description", "docSource", "chunkSource",
                                "published", NULL};
        for (size_t f = 0; fields[f]; f++)
            cr_assert (json_is_string (json_object_get (document, fields[f])), "%s: %s",
                       fields[f], shown);
        cr_assert (json_is_integer (json_object_get (document, "wordCount")), "%s",
                   shown);
        cr_assert (json_is_integer (json_object_get (document, "token_count_estimate")),
                   "%s", shown);
        cr_assert_str_eq (it_str (document, "title"), format->title, "%s", shown);
        char url[128];
        snprintf (url, sizeof url, "file://%s", format->filename);
        cr_assert_str_eq (it_str (document, "url"), url, "%s", shown);
        json_t *job = json_object_get (document, "job");
        cr_assert_str_eq (it_str (job, "path"), "queue", "%s", shown);
        cr_assert (json_is_string (json_object_get (job, "state")), "%s", shown);
        free (shown);
        json_array_append (documents, document);
        json_decref (answer);
    }
    //  Raw text too.
    json_t *raw = s_raw_text ("Capybara facts",
                              "The capybara is the largest living rodent, at home in the "
                              "wetlands of South America.",
                              "docs");
    cr_assert_str_eq (it_str (raw, "title"), "Capybara facts");
    cr_assert_str_eq (it_str (json_object_get (raw, "job"), "path"), "queue");
    json_array_append (documents, raw);

    size_t i;
    json_t *document;
    json_array_foreach (documents, i, document)
    {
        json_t *job = s_wait_completed (document, 60000);
        char *shown = json_dumps (job, 0);
        cr_assert_eq (json_integer_value (json_object_get (job, "attempts")), 1, "%s",
                      shown);
        cr_assert_str_eq (it_str (job, "path"), "queue", "%s", shown);
        cr_assert_str_eq (it_str (job, "location"), it_str (document, "location"), "%s",
                          shown);
        json_t *queue = json_object_get (job, "queue");
        cr_assert (json_is_object (queue), "the queue's view is missing: %s", shown);
        cr_assert_str_eq (it_str (queue, "state"), "completed", "%s", shown);
        free (shown);
        json_decref (job);
        cr_assert (s_workspace_has ("docs", it_str (document, "location")));
    }
    //  Each is found first by words of its own, in API.md's shape.
    for (size_t f = 0; f <= formats; f++) {
        const char *query =
            f < formats ? s_formats[f].query : "largest living rodent capybara";
        const char *title = f < formats ? s_formats[f].title : "Capybara facts";
        long status;
        json_t *answer = s_search ("docs", query, 0, &status);
        cr_assert_eq (status, 200);
        cr_assert_str_eq (s_first (answer, "title"), title, "query '%s'", query);
        json_t *results = json_object_get (answer, "results");
        size_t r;
        json_t *result;
        json_array_foreach (results, r, result) s_assert_result_shape (result);
        if (f < formats && s_formats[f].not_text)
            cr_assert_null (strstr (it_str (json_array_get (results, 0), "text"),
                                    s_formats[f].not_text),
                            "%s kept '%s'", title, s_formats[f].not_text);
        json_decref (answer);
    }
    //  A threshold nothing passes: no results.
    long status;
    json_t *answer = s_search ("docs", "kestrel", 0.9999, &status);
    cr_assert_eq (status, 200);
    cr_assert_eq (json_array_size (json_object_get (answer, "results")), 0);
    json_decref (answer);

    //  update-embeddings: a workspace with nothing, then the raw text added
    //  to it, then removed again.
    it_create_workspace (&s_suite, "{\"name\":\"Other\"}");
    answer = s_search ("other", "capybara rodent", 0, &status);
    cr_assert_eq (status, 200);
    cr_assert_eq (json_array_size (json_object_get (answer, "results")), 0);
    cr_assert (json_is_string (json_object_get (answer, "message")), "no message");
    json_decref (answer);
    const char *location = it_str (raw, "location");
    char body[1024];
    snprintf (body, sizeof body, "{\"adds\":[\"%s\"]}", location);
    answer = s_post ("/api/v1/workspace/other/update-embeddings", body, &status);
    char *shown = json_dumps (answer, 0);
    cr_assert_eq (status, 200, "%s", shown);
    json_t *workspace = json_object_get (answer, "workspace");
    cr_assert_str_eq (it_str (workspace, "slug"), "other", "%s", shown);
    cr_assert_eq (json_array_size (json_object_get (workspace, "documents")), 1, "%s",
                  shown);
    cr_assert_str_eq (
        it_str (json_array_get (json_object_get (workspace, "documents"), 0), "docpath"),
        location, "%s", shown);
    free (shown);
    json_decref (answer);
    cr_assert (s_workspace_has ("other", location));
    answer = s_search ("other", "capybara rodent", 0, &status);
    cr_assert_str_eq (s_first (answer, "title"), "Capybara facts");
    cr_assert (!s_results_have (answer, "notes.txt"), "another workspace's document");
    json_decref (answer);
    snprintf (body, sizeof body, "{\"deletes\":[\"%s\"]}", location);
    answer = s_post ("/api/v1/workspace/other/update-embeddings", body, &status);
    cr_assert_eq (status, 200);
    cr_assert_eq (json_array_size (json_object_get (json_object_get (answer, "workspace"),
                                                    "documents")),
                  0);
    json_decref (answer);
    cr_assert (!s_workspace_has ("other", location));
    answer = s_search ("other", "capybara rodent", 0, &status);
    cr_assert_eq (status, 200);
    cr_assert (!s_results_have (answer, "Capybara facts"), "a deleted document is found");
    json_decref (answer);
    //  ...and the first workspace still has it.
    answer = s_search ("docs", "capybara rodent", 0, &status);
    cr_assert_str_eq (s_first (answer, "title"), "Capybara facts");
    json_decref (answer);

    json_decref (raw);
    json_decref (documents);
    s_stop ();
}

Test (ingest, openai_embeddings_route_has_openai_shape, .timeout = 120)
{
    s_start (NULL, false);
    long status;
    json_t *answer =
        s_post ("/api/v1/openai/embeddings", "{\"input\":\"hello world\"}", &status);
    char *shown = json_dumps (answer, 0);
    cr_assert_eq (status, 200, "%s", shown);
    cr_assert_str_eq (it_str (answer, "object"), "list", "%s", shown);
    cr_assert (json_is_string (json_object_get (answer, "model")), "%s", shown);
    json_t *data = json_object_get (answer, "data");
    cr_assert_eq (json_array_size (data), 1, "%s", shown);
    json_t *item = json_array_get (data, 0);
    cr_assert_str_eq (it_str (item, "object"), "embedding");
    cr_assert_eq (json_integer_value (json_object_get (item, "index")), 0);
    json_t *vector = json_object_get (item, "embedding");
    cr_assert_eq (json_array_size (vector), 256, "the builtin dimension");
    double norm = 0;
    size_t i;
    json_t *value;
    json_array_foreach (vector, i, value)
    {
        cr_assert (json_is_number (value));
        norm += json_number_value (value) * json_number_value (value);
    }
    cr_assert (fabs (norm - 1.0) < 1e-3, "not normalised: %f", norm);
    json_t *single = json_deep_copy (vector);
    free (shown);
    json_decref (answer);

    answer = s_post ("/api/v1/openai/embeddings",
                     "{\"input\":[\"first text\",\"hello world\",\"third one\"],"
                     "\"model\":\"anything\"}",
                     &status);
    shown = json_dumps (answer, 0);
    cr_assert_eq (status, 200, "%s", shown);
    data = json_object_get (answer, "data");
    cr_assert_eq (json_array_size (data), 3, "%s", shown);
    json_array_foreach (data, i, item)
    {
        cr_assert_eq (json_integer_value (json_object_get (item, "index")),
                      (json_int_t) i);
        cr_assert_str_eq (it_str (item, "object"), "embedding");
        cr_assert_eq (json_array_size (json_object_get (item, "embedding")), 256);
    }
    //  The same text, the same vector, in a batch or alone.
    cr_assert (
        json_equal (json_object_get (json_array_get (data, 1), "embedding"), single),
        "hello world differs in a batch");
    cr_assert (
        !json_equal (json_object_get (json_array_get (data, 0), "embedding"), single));
    free (shown);
    json_decref (single);
    json_decref (answer);
    s_stop ();
}

//  The event of a stream with this type (and close:true for chunks).
static json_t *
s_event (json_t *events, const char *type)
{
    size_t i;
    json_t *event;
    json_array_foreach (events, i, event) if (!strcmp (it_str (event, "type"), type) &&
                                              json_is_true (json_object_get (
                                                  event, "close"))) return event;
    return NULL;
}

//  topN and scoreThreshold given as the strings "nan" or "inf" are no
//  numbers: the defaults apply (a NaN threshold once passed every chunk).
Test (ingest, vector_search_takes_nan_and_inf_as_not_given, .timeout = 180)
{
    s_start (NULL, false);
    it_create_workspace (&s_suite, "{\"name\":\"Docs\"}");
    json_t *document = s_raw_text (
        "Swarms", "Honey bees swarm in spring when the colony outgrows its hive.",
        "docs");
    json_decref (s_wait_completed (document, 60000));
    json_decref (document);
    const char *bodies[] = {
        "{\"query\":\"quartz xylophone zeppelin\",\"scoreThreshold\":\"nan\"}",
        "{\"query\":\"quartz xylophone zeppelin\",\"scoreThreshold\":\"-inf\"}",
        "{\"query\":\"quartz xylophone zeppelin\",\"topN\":\"nan\","
        "\"scoreThreshold\":\"NaN\"}",
        NULL};
    for (size_t i = 0; bodies[i]; i++) {
        long status;
        json_t *answer =
            s_post ("/api/v1/workspace/docs/vector-search", bodies[i], &status);
        char *shown = json_dumps (answer, 0);
        cr_assert_eq (status, 200, "%s: %s", bodies[i], shown);
        cr_expect_eq (json_array_size (json_object_get (answer, "results")), 0,
                      "%s: an unrelated query passed the default threshold: %s",
                      bodies[i], shown);
        free (shown);
        json_decref (answer);
    }
    long status;
    json_t *answer =
        s_post ("/api/v1/workspace/docs/vector-search",
                "{\"query\":\"honey bees swarm\",\"topN\":\"nan\"}", &status);
    char *shown = json_dumps (answer, 0);
    cr_assert_eq (status, 200, "%s", shown);
    cr_expect_eq (json_array_size (json_object_get (answer, "results")), 1, "%s", shown);
    free (shown);
    json_decref (answer);
    s_stop ();
}

//  Sources name the document and carry the chunk.
static void
s_assert_sources (json_t *sources, const char *title, const char *word, const char *what)
{
    char *shown = json_dumps (sources, 0);
    cr_assert_geq (json_array_size (sources), 1, "%s: no sources: %s", what, shown);
    json_t *first = json_array_get (sources, 0);
    cr_assert_str_eq (it_str (first, "title"), title, "%s: %s", what, shown);
    const char *chunk = it_str (first, "chunk");
    cr_assert (chunk && strstr (chunk, word), "%s: the chunk lacks '%s': %s", what, word,
               shown);
    free (shown);
}

Test (ingest, query_mode_chat_answers_with_sources_or_refuses, .timeout = 300)
{
    s_start (NULL, false);
    it_create_workspace (
        &s_suite, "{\"name\":\"Ask\",\"chatMode\":\"query\","
                  "\"queryRefusalResponse\":\"Nothing in the documents about that.\"}");
    json_t *raw = s_raw_text ("Capybara facts",
                              "The capybara is the largest living rodent, at home in the "
                              "wetlands of South America.",
                              "ask");
    json_decref (s_wait_completed (raw, 60000));
    json_decref (raw);

    //  A question the document answers: sources.
    const char *question = "{\"message\":\"capybara largest living rodent wetlands\"}";
    long status;
    json_t *answer = s_post ("/api/v1/workspace/ask/chat", question, &status);
    char *shown = json_dumps (answer, 0);
    cr_assert_eq (status, 200, "%s", shown);
    cr_assert_str_eq (it_str (answer, "type"), "textResponse", "%s", shown);
    cr_assert_str_neq (it_str (answer, "textResponse"),
                       "Nothing in the documents about that.", "%s", shown);
    s_assert_sources (json_object_get (answer, "sources"), "Capybara facts", "capybara",
                      "chat");
    free (shown);
    json_decref (answer);

    //  One nothing answers: the refusal, no sources.
    answer = s_post ("/api/v1/workspace/ask/chat",
                     "{\"message\":\"quantum chromodynamics on a lattice\"}", &status);
    shown = json_dumps (answer, 0);
    cr_assert_eq (status, 200, "%s", shown);
    cr_assert_str_eq (it_str (answer, "textResponse"),
                      "Nothing in the documents about that.", "%s", shown);
    cr_assert_eq (json_array_size (json_object_get (answer, "sources")), 0, "%s", shown);
    cr_assert (json_is_true (json_object_get (answer, "close")), "%s", shown);
    free (shown);
    json_decref (answer);

    //  stream-chat: the close:true chunk and the finalize event carry them.
    char url[256];
    it_url (&s_suite, url, sizeof url, "/api/v1/workspace/ask/stream-chat");
    it_stream_t stream;
    it_stream_init (&stream, url, question, 0);
    it_stream_run (&stream);
    cr_assert_eq (stream.status, 200, "%s", stream.data);
    json_t *events = it_events (stream.data);
    json_t *closing = s_event (events, "textResponseChunk");
    json_t *final = s_event (events, "finalizeResponseStream");
    cr_assert_not_null (closing, "no close:true chunk: %s", stream.data);
    cr_assert_not_null (final, "no finalize event: %s", stream.data);
    s_assert_sources (json_object_get (closing, "sources"), "Capybara facts", "capybara",
                      "stream close chunk");
    s_assert_sources (json_object_get (final, "sources"), "Capybara facts", "capybara",
                      "stream finalize");
    json_decref (events);
    it_stream_free (&stream);

    //  A refusal streamed: the refusal text, no sources.
    it_stream_init (&stream, url, "{\"message\":\"quantum chromodynamics on a lattice\"}",
                    0);
    it_stream_run (&stream);
    cr_assert_eq (stream.status, 200, "%s", stream.data);
    cr_assert (strstr (stream.data, "Nothing in the documents about that."), "%s",
               stream.data);
    events = it_events (stream.data);
    size_t i;
    json_t *event;
    json_array_foreach (events, i, event) cr_assert_eq (
        json_array_size (json_object_get (event, "sources")), 0, "%s", stream.data);
    json_decref (events);
    it_stream_free (&stream);
    s_stop ();
}

//  --- 2. bad input ---------------------------------------------------------------------

Test (ingest, bad_input_gets_its_status_and_names_the_problem, .timeout = 180)
{
    const char *extra[] = {"MAX_BODY_BYTES=65536", NULL};
    s_start (extra, false);
    it_create_workspace (&s_suite, "{\"name\":\"Docs\"}");
    long status;
    json_t *answer;

    answer = s_upload ("tool.exe", "MZ binary", 9, "docs", NULL, &status);
    s_assert_error (answer, status, 415, ".txt, .md, .html, .htm, .csv, .json, .pdf",
                    true, "unsupported type");
    json_decref (answer);
    answer = s_upload ("empty.txt", "", 0, "docs", NULL, &status);
    s_assert_error (answer, status, 422, "empty", true, "empty file");
    json_decref (answer);
    answer = s_upload ("broken.json", "{\"not\": json", 12, "docs", NULL, &status);
    cr_assert_eq (status, 422, "broken JSON");
    json_decref (answer);
    answer = s_upload ("ok.txt", "some text", 9, "docs", "{not json", &status);
    s_assert_error (answer, status, 400, "metadata", true, "bad metadata");
    json_decref (answer);
    answer = s_upload ("ok.txt", "some text", 9, "docs,nope", NULL, &status);
    s_assert_error (answer, status, 400, "nope", true,
                    "unknown workspace in addToWorkspaces");
    json_decref (answer);

    //  Over MAX_BODY_BYTES: an upload and raw text.
    size_t big = 200 * 1024;
    char *text = malloc (big + 1);
    for (size_t i = 0; i < big; i++)
        text[i] = i % 7 == 6 ? ' ' : 'a' + (char) (i % 26);
    text[big] = 0;
    answer = s_upload ("big.txt", text, big, "docs", NULL, &status);
    s_assert_error (answer, status, 413, "65536", true, "oversized upload");
    json_decref (answer);
    json_t *body =
        json_pack ("{s:s, s:{s:s}}", "textContent", text, "metadata", "title", "Big");
    char *body_text = json_dumps (body, 0);
    answer = s_post ("/api/v1/document/raw-text", body_text, &status);
    s_assert_error (answer, status, 413, "65536", true, "oversized raw text");
    json_decref (answer);
    free (body_text);
    json_decref (body);
    free (text);

    answer = s_post ("/api/v1/document/raw-text",
                     "{\"textContent\":\"some text\",\"metadata\":{}}", &status);
    s_assert_error (answer, status, 422, "title", true, "raw text without a title");
    json_decref (answer);
    answer =
        s_post ("/api/v1/document/raw-text", "{\"textContent\":\"some text\"}", &status);
    s_assert_error (answer, status, 422, "title", true, "raw text without metadata");
    json_decref (answer);
    answer =
        s_post ("/api/v1/document/raw-text",
                "{\"textContent\":\"\",\"metadata\":{\"title\":\"Empty\"}}", &status);
    s_assert_error (answer, status, 422, "textContent", true, "empty raw text");
    json_decref (answer);
    answer = s_post ("/api/v1/document/raw-text",
                     "{\"textContent\":\"text\",\"metadata\":{\"title\":\"T\"},"
                     "\"addToWorkspaces\":\"nope\"}",
                     &status);
    s_assert_error (answer, status, 400, "nope", true,
                    "raw text to an unknown workspace");
    json_decref (answer);
    answer = s_post ("/api/v1/document/raw-text",
                     "{\"textContent\":\"text\",\"metadata\":{\"title\":\"T\"},"
                     "\"addToWorkspaces\":{\"slug\":\"docs\"}}",
                     &status);
    s_assert_error (answer, status, 400, "addToWorkspaces", true,
                    "raw text with addToWorkspaces neither a string nor an array");
    json_decref (answer);

    answer = s_post ("/api/v1/workspace/docs/vector-search", "{\"topN\":3}", &status);
    s_assert_error (answer, status, 400, "query", false, "vector-search without a query");
    json_decref (answer);
    answer = s_post ("/api/v1/workspace/nope/vector-search", "{\"query\":\"anything\"}",
                     &status);
    s_assert_error (answer, status, 400, "nope", false,
                    "vector-search in an unknown workspace");
    json_decref (answer);
    answer = s_post ("/api/v1/workspace/docs/update-embeddings",
                     "{\"adds\":[\"custom-documents/no-such-doc.json\"]}", &status);
    s_assert_error (answer, status, 400, "custom-documents/no-such-doc.json", false,
                    "update-embeddings with an unknown location");
    json_decref (answer);
    answer = s_call ("GET", "/api/v1/document/jobs/no-such-job", NULL, &status);
    s_assert_error (answer, status, 404, "no-such-job", false, "unknown job");
    json_decref (answer);
    const char *bad_inputs[] = {"{}",
                                "{\"input\":[]}",
                                "{\"input\":[1,2]}",
                                "{\"input\":42}",
                                "{\"input\":[\"ok\",null]}",
                                NULL};
    for (size_t i = 0; bad_inputs[i]; i++) {
        answer = s_post ("/api/v1/openai/embeddings", bad_inputs[i], &status);
        s_assert_error (answer, status, 400, "input", false, bad_inputs[i]);
        json_decref (answer);
    }
    //  Not multipart: it_http sends Content-Type: application/json.
    answer = s_post ("/api/v1/document/upload", "{\"file\":\"x\"}", &status);
    s_assert_error (answer, status, 400, "multipart/form-data", true,
                    "upload not multipart");
    json_decref (answer);

    //  Nothing of that reached the workspace.
    answer = s_call ("GET", "/api/v1/workspace/docs", NULL, &status);
    cr_assert_eq (
        json_array_size (json_object_get (
            json_array_get (json_object_get (answer, "workspace"), 0), "documents")),
        0, "a refused document was linked");
    json_decref (answer);
    s_stop ();
}

//  --- 3. kill -9 of ingestd
//  --------------------------------------------------------------

#define S_KILL_DOCS 200

typedef struct {
    sqlite3 *db;
    int64_t completed, active;
    int64_t want_completed;
} s_progress_t;

static bool
s_progress (void *arg)
{
    s_progress_t *progress = arg;
    progress->completed = it_db_int (
        progress->db, "SELECT count(*) FROM ingest_jobs WHERE state = 'completed'", NULL);
    progress->active = it_db_int (
        progress->db, "SELECT count(*) FROM ingest_jobs WHERE state = 'active'", NULL);
    return progress->completed >= progress->want_completed && progress->active > 0;
}

static bool
s_all_completed (void *arg)
{
    s_progress_t *progress = arg;
    progress->completed = it_db_int (
        progress->db, "SELECT count(*) FROM ingest_jobs WHERE state = 'completed'", NULL);
    return progress->completed >= S_KILL_DOCS;
}

typedef struct {
    pid_t old;
    pid_t now;
} s_restart_t;

static bool
s_ingestd_restarted (void *arg)
{
    s_restart_t *restart = arg;
    pid_t pids[4];
    size_t count = it_children (s_suite.supervisor, "ingestd", pids, 4);
    restart->now = count == 1 ? pids[0] : 0;
    return count == 1 && pids[0] != restart->old;
}

//  No chunk (document, position) is stored twice.
static void
s_assert_no_chunk_twice (sqlite3 *db)
{
    cr_assert_eq (
        it_db_int (db,
                   "SELECT count(*) FROM (SELECT documentId, position, count(*) "
                   "FROM document_chunks GROUP BY 1, 2 HAVING count(*) > 1)",
                   NULL),
        0, "a chunk is stored twice");
}

//  The jobs maintenance put back because their keeper fell silent, summed
//  over the instances (the series without an instance label), is at least 1.
static bool
s_recovered_by_keeper (void *arg)
{
    (void) arg;
    char url[256];
    it_url (&s_suite, url, sizeof url, "/api/metrics/prometheus");
    it_response_t r;
    it_http ("GET", url, NULL, false, &r);
    const char *series = "\nllmrt_embedding_jobs_recovered_total{service=\"ingest\","
                         "queue=\"embedding-jobs\",reason=\"keeper\"} ";
    const char *line = r.body ? strstr (r.body, series) : NULL;
    bool recovered = line && atof (line + strlen (series)) >= 1;
    it_response_free (&r);
    return recovered;
}

Test (ingest, kill_9_of_ingestd_loses_no_job_and_stores_chunks_once, .timeout = 900)
{
    //  Slow jobs: ~10 chunks each, one per embedding request, each request
    //  paced by the upstream. The lease outlasts the test: the dead
    //  process's jobs come back because its keeper falls silent.
    const char *extra[] = {"EMBEDDING_JOB_LEASE_MS=3600000",
                           "EMBEDDING_INSTANCE_TIMEOUT_MS=2000",
                           "EMBEDDING_TIMEOUT_MS=1500",
                           "EMBEDDING_BATCH_SIZE=1",
                           "CHUNK_SIZE_CHARS=200",
                           "CHUNK_OVERLAP_CHARS=20",
                           "EMBEDDING_JOB_BACKOFF_MS=50",
                           "EMBEDDING_JOB_ATTEMPTS=10",
                           NULL};
    s_start (extra, true);
    fake_llm_control (&s_fake, "{\"embed_pace_ms\":15}");
    it_create_workspace (&s_suite, "{\"name\":\"Bulk\"}");
    json_t *jobs = json_object (); //  job id -> location
    char text[2400];
    for (int d = 0; d < S_KILL_DOCS; d++) {
        size_t used = 0;
        for (int s = 0; used + 120 < sizeof text; s++)
            used +=
                (size_t) snprintf (text + used, sizeof text - used,
                                   "Document %d, sentence %d: the archive keeps ledger "
                                   "page %d of shipment %d safe. ",
                                   d, s, s * 7 + d, d * 13 + s);
        char title[64];
        snprintf (title, sizeof title, "Bulk %03d", d);
        json_t *document = s_raw_text (title, text, "bulk");
        cr_assert_str_eq (it_str (json_object_get (document, "job"), "path"), "queue",
                          "document %d did not go through the queue", d);
        json_object_set_new (jobs, s_job_id (document),
                             json_string (it_str (document, "location")));
        json_decref (document);
    }
    cr_assert_eq (json_object_size (jobs), S_KILL_DOCS);
    sqlite3 *db = it_db_open (&s_suite);
    //  Some done, some running: kill -9 now.
    s_progress_t progress = {db, 0, 0, 5};
    cr_assert (it_wait (s_progress, &progress, 120000),
               "never saw 5 completed and some active (completed %lld, active %lld)",
               (long long) progress.completed, (long long) progress.active);
    pid_t pids[4];
    cr_assert_eq (it_children (s_suite.supervisor, "ingestd", pids, 4), 1);
    cr_assert_eq (kill (pids[0], SIGKILL), 0);
    long long killed_at = it_now_ms ();
    int64_t completed_at_kill = progress.completed;
    cr_log_info ("kill -9 ingestd (pid %d) with %lld of %d completed, %lld active",
                 (int) pids[0], (long long) progress.completed, S_KILL_DOCS,
                 (long long) progress.active);
    cr_assert_lt (completed_at_kill, S_KILL_DOCS, "everything was done before the kill");
    s_restart_t restart = {pids[0], 0};
    cr_assert (it_wait (s_ingestd_restarted, &restart, 60000),
               "the supervisor did not restart ingestd");
    cr_assert (it_wait (s_all_completed, &progress, 600000),
               "only %lld of %d jobs completed after the restart",
               (long long) progress.completed, S_KILL_DOCS);
    cr_log_info ("all %d jobs completed %.1f s after the kill", S_KILL_DOCS,
                 (double) (it_now_ms () - killed_at) / 1000.0);
    cr_assert (it_wait (s_recovered_by_keeper, NULL, 30000),
               "llmrt_embedding_jobs_recovered_total{reason=\"keeper\"} stayed 0");

    //  Every job says completed, and its chunks are stored exactly once.
    s_assert_no_chunk_twice (db);
    cr_assert_eq (
        it_db_int (db, "SELECT count(*) FROM ingest_jobs WHERE state != 'completed'",
                   NULL),
        0);
    int64_t chunks = 0;
    const char *id;
    json_t *location;
    json_object_foreach (jobs, id, location)
    {
        long status;
        json_t *job = s_job (id, &status);
        char *shown = json_dumps (job, 0);
        cr_assert_eq (status, 200, "%s", shown);
        cr_assert_str_eq (it_str (job, "state"), "completed", "%s", shown);
        json_int_t total = json_integer_value (json_object_get (job, "chunksTotal"));
        cr_assert_geq (total, 2, "%s", shown);
        cr_assert_eq (json_integer_value (json_object_get (job, "chunksDone")), total,
                      "%s", shown);
        char sql[512];
        snprintf (sql, sizeof sql,
                  "SELECT count(*) FROM document_chunks c JOIN documents d ON "
                  "d.id = c.documentId WHERE d.location = '%s'",
                  json_string_value (location));
        int64_t stored = it_db_int (db, sql, NULL);
        cr_assert_eq (stored, total, "%s: %lld chunks stored of %lld: %s",
                      json_string_value (location), (long long) stored, (long long) total,
                      shown);
        snprintf (
            sql, sizeof sql,
            "SELECT count(DISTINCT c.position) = count(*) AND min(c.position) = 0 AND "
            "max(c.position) = count(*) - 1 FROM document_chunks c JOIN documents d "
            "ON d.id = c.documentId WHERE d.location = '%s'",
            json_string_value (location));
        cr_assert_eq (it_db_int (db, sql, NULL), 1, "positions are not 0..n-1: %s",
                      shown);
        snprintf (sql, sizeof sql, "SELECT embedded FROM documents WHERE location = '%s'",
                  json_string_value (location));
        cr_assert_eq (it_db_int (db, sql, NULL), 1, "not marked embedded: %s", shown);
        chunks += stored;
        free (shown);
        json_decref (job);
    }
    int64_t rerun =
        it_db_int (db, "SELECT count(*) FROM ingest_jobs WHERE attempts > 1", NULL);
    cr_log_info ("all %d jobs completed, %lld chunks; %lld jobs ran more than once",
                 S_KILL_DOCS, (long long) chunks, (long long) rerun);
    //  Searchable in their workspace: the upstream's vectors are hashes of
    //  the text, so a chunk's own text finds that chunk first.
    sqlite3_stmt *stmt = NULL;
    cr_assert_eq (
        sqlite3_prepare_v2 (db,
                            "SELECT c.text FROM document_chunks c JOIN documents d "
                            "ON d.id = c.documentId WHERE d.title = 'Bulk 123' "
                            "AND c.position = 3",
                            -1, &stmt, NULL),
        SQLITE_OK);
    cr_assert_eq (sqlite3_step (stmt), SQLITE_ROW, "no chunk 3 of Bulk 123");
    char *chunk = strdup ((const char *) sqlite3_column_text (stmt, 0));
    sqlite3_finalize (stmt);
    long status;
    json_t *answer = s_search ("bulk", chunk, 0, &status);
    cr_assert_eq (status, 200);
    cr_assert_str_eq (s_first (answer, "title"), "Bulk 123");
    cr_assert_str_eq (
        it_str (json_array_get (json_object_get (answer, "results"), 0), "text"), chunk);
    json_decref (answer);
    free (chunk);
    sqlite3_close (db);
    json_decref (jobs);
    s_stop ();
}

//  --- 4. Redis unavailable
//  -----------------------------------------------------------------

static bool
s_health_is (void *arg)
{
    long status;
    json_t *health = it_get_json (&s_suite, "/api/health", &status);
    const char *value = it_str (health, "status");
    bool match = value && !strcmp (value, arg);
    json_decref (health);
    return match;
}

//  Upload a small text file; the document (new reference); fails the test
//  unless 200. *path: the job's path.
static json_t *
s_upload_text (const char *name, const char *text)
{
    long status;
    json_t *answer = s_upload (name, text, strlen (text), "docs", NULL, &status);
    char *shown = json_dumps (answer, 0);
    cr_assert_eq (status, 200, "upload %s: %ld %s", name, status, shown);
    free (shown);
    json_t *document =
        json_incref (json_array_get (json_object_get (answer, "documents"), 0));
    json_decref (answer);
    return document;
}

typedef struct {
    int round;
    json_t *documents; //  every upload's document
    const char *path;  //  the last one's path
} s_until_queue_t;

//  One more upload; true when it went through the queue.
static bool
s_upload_until_queue (void *arg)
{
    s_until_queue_t *state = arg;
    char name[64], text[128];
    snprintf (name, sizeof name, "again-%d.txt", state->round);
    snprintf (text, sizeof text,
              "Round %d of the recovery: the heron waits by the river.", state->round);
    state->round++;
    json_t *document = s_upload_text (name, text);
    json_array_append_new (state->documents, document);
    state->path = it_str (json_object_get (document, "job"), "path");
    usleep (200 * 1000);
    return !strcmp (state->path, "queue");
}

//  Every document of an array reaches completed.
static void
s_all_complete (json_t *documents)
{
    size_t i;
    json_t *document;
    json_array_foreach (documents, i, document)
        json_decref (s_wait_completed (document, 60000));
}

Test (ingest, redis_frozen_uses_the_fallback_then_the_queue_again, .timeout = 300)
{
    const char *extra[] = {"REDIS_TIMEOUT_MS=300", NULL};
    s_start (extra, false);
    it_create_workspace (&s_suite, "{\"name\":\"Docs\"}");
    cr_assert (it_wait (s_health_is, "ok", 20000), "health never said ok");
    json_t *before =
        s_upload_text ("before.txt", "Before the freeze the puffin nests on cliffs.");
    cr_assert_str_eq (it_str (json_object_get (before, "job"), "path"), "queue");
    json_decref (s_wait_completed (before, 60000));
    json_decref (before);

    pid_t redis[2];
    cr_assert_eq (it_children (s_suite.supervisor, "redis-server", redis, 2), 1);
    kill (redis[0], SIGSTOP);
    //  Frozen: the upload completes before its answer, on the fallback path.
    json_t *during =
        s_upload_text ("during.txt", "While Redis sleeps the ibis wades in the marsh.");
    char *shown = json_dumps (during, 0);
    cr_assert_str_eq (it_str (json_object_get (during, "job"), "path"), "fallback", "%s",
                      shown);
    cr_assert_str_eq (it_str (json_object_get (during, "job"), "state"), "completed",
                      "%s", shown);
    free (shown);
    long status;
    json_t *job = s_job (s_job_id (during), &status);
    cr_assert_eq (status, 200);
    cr_assert_str_eq (it_str (job, "state"), "completed");
    cr_assert_str_eq (it_str (job, "path"), "fallback");
    json_decref (job);
    json_t *answer = s_search ("docs", "ibis wades in the marsh", 0, &status);
    cr_assert_str_eq (s_first (answer, "title"), "during.txt");
    json_decref (answer);
    json_decref (during);
    cr_assert (it_wait (s_health_is, "degraded", 20000), "health never said degraded");
    //  A second one, still frozen.
    json_t *second =
        s_upload_text ("during2.txt", "Still frozen: the avocet sweeps the mud.");
    cr_assert_str_eq (it_str (json_object_get (second, "job"), "path"), "fallback");
    cr_assert_str_eq (it_str (json_object_get (second, "job"), "state"), "completed");
    json_decref (second);

    kill (redis[0], SIGCONT);
    long long thawed = it_now_ms ();
    s_until_queue_t state = {0, json_array (), NULL};
    cr_assert (it_wait (s_upload_until_queue, &state, 30000),
               "no upload went through the queue after Redis came back (last path %s)",
               state.path);
    cr_log_info ("queue path again %lld ms after SIGCONT (%d uploads)",
                 it_now_ms () - thawed, state.round);
    s_all_complete (state.documents);
    json_decref (state.documents);
    cr_assert (it_wait (s_health_is, "ok", 20000), "health did not recover");
    s_stop ();
}

//  Whatever happens to the test, the supervisor must not stay frozen (it
//  would never see the SIGTERM of the test's end).
static void
s_thaw_supervisor (void)
{
    if (s_suite.supervisor > 0)
        kill (s_suite.supervisor, SIGCONT);
}

Test (ingest, redis_gone_uses_the_fallback_then_the_queue_again, .timeout = 300,
      .fini = s_thaw_supervisor)
{
    const char *extra[] = {"REDIS_TIMEOUT_MS=300", NULL};
    s_start (extra, false);
    it_create_workspace (&s_suite, "{\"name\":\"Docs\"}");
    cr_assert (it_wait (s_health_is, "ok", 20000), "health never said ok");
    //  The supervisor would restart a dead Redis at once: freeze it first
    //  so that Redis stays gone (connections refused) until it goes on.
    pid_t redis[2];
    cr_assert_eq (it_children (s_suite.supervisor, "redis-server", redis, 2), 1);
    kill (s_suite.supervisor, SIGSTOP);
    kill (redis[0], SIGKILL);
    json_t *documents = json_array ();
    for (int i = 0; i < 3; i++) {
        char name[32], text[128];
        snprintf (name, sizeof name, "gone-%d.txt", i);
        snprintf (text, sizeof text,
                  "Redis is gone, round %d: the plover runs on the sand.", i);
        json_t *document = s_upload_text (name, text);
        char *shown = json_dumps (document, 0);
        cr_assert_str_eq (it_str (json_object_get (document, "job"), "path"), "fallback",
                          "%s", shown);
        cr_assert_str_eq (it_str (json_object_get (document, "job"), "state"),
                          "completed", "%s", shown);
        free (shown);
        json_array_append_new (documents, document);
    }
    bool degraded = it_wait (s_health_is, "degraded", 20000);
    kill (s_suite.supervisor, SIGCONT);
    cr_assert (degraded, "health never said degraded");
    s_all_complete (documents);
    json_decref (documents);
    s_until_queue_t state = {0, json_array (), NULL};
    cr_assert (it_wait (s_upload_until_queue, &state, 60000),
               "no upload went through the queue after Redis came back (last path %s)",
               state.path);
    s_all_complete (state.documents);
    json_decref (state.documents);
    s_stop ();
}

//  --- 5. retries and failure against a real upstream
//  ----------------------------------------

//  A raw-text upload on a thread of its own; its status when it ends.
typedef struct {
    char url[512];
    char *body;
    long status;
    char *reply; //  its body (owned)
} s_background_t;

static void *
s_background_post (void *arg)
{
    s_background_t *post = arg;
    it_response_t r;
    it_http ("POST", post->url, post->body, true, &r);
    post->status = r.status;
    post->reply = r.body ? strdup (r.body) : NULL;
    it_response_free (&r);
    return NULL;
}

//  The fallback job being embedded (some chunks done): its id in arg.
static bool
s_fallback_running (void *arg)
{
    sqlite3 *db = it_db_open (&s_suite);
    sqlite3_stmt *stmt = NULL;
    sqlite3_prepare_v2 (db,
                        "SELECT id FROM ingest_jobs WHERE path = 'fallback' AND "
                        "state = 'active' AND chunksDone > 0",
                        -1, &stmt, NULL);
    bool found = stmt && sqlite3_step (stmt) == SQLITE_ROW;
    if (found)
        snprintf (arg, 64, "%s", (const char *) sqlite3_column_text (stmt, 0));
    sqlite3_finalize (stmt);
    sqlite3_close (db);
    return found;
}

static bool
s_job_completed (void *arg)
{
    long status;
    json_t *job = s_job (arg, &status);
    bool done = status == 200 && it_str (job, "state") &&
                !strcmp (it_str (job, "state"), "completed");
    json_decref (job);
    return done;
}

//  Redis is gone, so an upload runs on the fallback pool, slowly (one chunk
//  per paced embedding request), and ingestd is stopped in the middle by
//  `sig`. The client hears `expected`; once Redis and ingestd are back (the
//  supervisor restarts both), the row, which its stopped process owned, is
//  queued by the reconciler and embedded, its chunks stored once.
static void
s_interrupt_fallback (int sig, long expected)
{
    const char *extra[] = {"REDIS_TIMEOUT_MS=300",
                           "EMBEDDING_INSTANCE_TIMEOUT_MS=2000",
                           "EMBEDDING_BATCH_SIZE=1",
                           "CHUNK_SIZE_CHARS=200",
                           "CHUNK_OVERLAP_CHARS=20",
                           "DRAIN_TIMEOUT_MS=300",
                           NULL};
    s_start (extra, true);
    fake_llm_control (&s_fake, "{\"embed_pace_ms\":300}");
    it_create_workspace (&s_suite, "{\"name\":\"Docs\"}");
    cr_assert (it_wait (s_health_is, "ok", 20000), "health never said ok");
    pid_t redis[2], ingestd[2];
    cr_assert_eq (it_children (s_suite.supervisor, "redis-server", redis, 2), 1);
    cr_assert_eq (it_children (s_suite.supervisor, "ingestd", ingestd, 2), 1);
    kill (s_suite.supervisor, SIGSTOP);
    kill (redis[0], SIGKILL);

    char text[4000];
    size_t used = 0;
    for (int n = 0; used + 100 < sizeof text; n++)
        used += (size_t) snprintf (text + used, sizeof text - used,
                                   "Sentence %d of the orphan: the curlew calls over "
                                   "the marsh at dusk. ",
                                   n);
    s_background_t post = {.body = NULL};
    it_url (&s_suite, post.url, sizeof post.url, "/api/v1/document/raw-text");
    json_t *body = json_pack ("{s:s, s:{s:s}, s:s}", "textContent", text, "metadata",
                              "title", "Orphan", "addToWorkspaces", "docs");
    post.body = json_dumps (body, 0);
    json_decref (body);
    pthread_t thread;
    cr_assert_eq (pthread_create (&thread, NULL, s_background_post, &post), 0);
    char id[64] = "";
    bool running = it_wait (s_fallback_running, id, 60000);
    if (running)
        kill (ingestd[0], sig);
    long long stopped_at = it_now_ms ();
    pthread_join (thread, NULL);
    free (post.body);
    cr_assert (running, "the upload never ran on the fallback pool");
    cr_assert_eq (post.status, expected, "the upload answered %ld: %s", post.status,
                  post.reply ? post.reply : "");
    free (post.reply);

    kill (s_suite.supervisor, SIGCONT);
    cr_assert (it_wait (s_job_completed, id, 120000),
               "job %s was not completed within 120 s of the stop", id);
    cr_log_info (
        "the fallback job of the stopped ingestd completed %.1f s after the stop",
        (double) (it_now_ms () - stopped_at) / 1000.0);
    sqlite3 *db = it_db_open (&s_suite);
    s_assert_no_chunk_twice (db);
    cr_assert_eq (it_db_int (db,
                             "SELECT owner IS NULL AND path = 'queue' FROM ingest_jobs "
                             "WHERE id = ?1",
                             id),
                  1, "the queue has the job: it is nobody's orphan now");
    sqlite3_close (db);
    s_stop ();
}

//  kill -9: the row says active, path fallback. Without a keeper to say
//  that its process is dead, the reconciler would wait for
//  2 x INGESTION_TASK_TIMEOUT_MS + 10 s (610 s by default). The gateway
//  answers 502 once the instance is gone.
Test (ingest, a_fallback_run_that_dies_with_its_ingestd_is_queued_within_seconds,
      .timeout = 300, .fini = s_thaw_supervisor)
{
    s_interrupt_fallback (SIGKILL, 502);
}

//  SIGTERM, its drain (300 ms) shorter than the run: the upload is stored
//  and its row queued again, so it is answered 200 (it was 499 "cancelled"
//  and the row failed, as if the client had left).
Test (ingest, a_fallback_run_cut_short_by_a_shutdown_is_accepted_and_embedded_later,
      .timeout = 300, .fini = s_thaw_supervisor)
{
    s_interrupt_fallback (SIGTERM, 200);
}

Test (ingest, an_upstream_failing_twice_completes_on_attempt_3, .timeout = 180)
{
    const char *extra[] = {"EMBEDDING_JOB_BACKOFF_MS=50", "EMBEDDING_JOB_ATTEMPTS=3",
                           "INGESTION_CIRCUIT_FAILURE_THRESHOLD=3", NULL};
    s_start (extra, true);
    it_create_workspace (&s_suite, "{\"name\":\"Docs\"}");
    fake_llm_control (&s_fake, "{\"embed_fail_next\":2,\"reset\":true}");
    json_t *document = s_raw_text (
        "Retry me", "The dipper walks under the water of the stream.", "docs");
    json_t *job = s_wait_job (s_job_id (document), 60000);
    char *shown = json_dumps (job, 0);
    cr_assert_str_eq (it_str (job, "state"), "completed", "%s", shown);
    cr_assert_eq (json_integer_value (json_object_get (job, "attempts")), 3, "%s", shown);
    cr_assert (json_is_null (json_object_get (job, "error")), "%s", shown);
    cr_assert_str_eq (it_str (json_object_get (job, "queue"), "state"), "completed", "%s",
                      shown);
    free (shown);
    cr_assert_eq (fake_llm_stat (&s_fake, "embedding_requests"), 3);
    cr_assert_eq (fake_llm_stat (&s_fake, "embedding_failed"), 2);
    json_t *stats = fake_llm_stats (&s_fake);
    cr_assert_str_eq (it_str (json_object_get (stats, "last_embedding_request"), "model"),
                      "fake-embed");
    json_decref (stats);
    json_decref (job);
    json_decref (document);
    //  Found through the upstream's vectors.
    long status;
    json_t *answer =
        s_search ("docs", "The dipper walks under the water of the stream.", 0, &status);
    cr_assert_eq (status, 200);
    cr_assert_str_eq (s_first (answer, "title"), "Retry me");
    json_decref (answer);
    s_stop ();
}

//  The ingestion breaker is open in /api/metrics.
static bool
s_breaker_open (void *arg)
{
    (void) arg;
    long status;
    json_t *metrics = it_get_json (&s_suite, "/api/metrics", &status);
    json_t *circuit = json_object_get (
        json_object_get (json_object_get (metrics, "breakers"), "ingest"), "ingest");
    json_int_t open = json_integer_value (
        json_object_get (json_object_get (circuit, "states"), "open"));
    json_decref (metrics);
    return status == 200 && open >= 1;
}

Test (ingest, a_stream_chat_whose_search_embedding_fails_streams_the_abort,
      .timeout = 180)
{
    //  A workspace with a document; then the embedder fails, so the
    //  message cannot be embedded to find sources: stream-chat must say so
    //  as a stream (abort, then finalize), not as one JSON object.
    s_start (NULL, true);
    it_create_workspace (&s_suite, "{\"name\":\"Cut\"}");
    json_t *raw =
        s_raw_text ("Heron facts", "The grey heron stands still in the shallows.", "cut");
    json_decref (s_wait_completed (raw, 60000));
    json_decref (raw);
    fake_llm_control (&s_fake, "{\"embed_mode\":\"fail500\",\"reset\":true}");
    char url[256];
    it_url (&s_suite, url, sizeof url, "/api/v1/workspace/cut/stream-chat");
    it_stream_t stream;
    it_stream_init (&stream, url, "{\"message\":\"where does the heron stand\"}", 0);
    it_stream_run (&stream);
    cr_assert_eq (stream.status, 200, "%s", stream.data);
    cr_assert (!strncmp (stream.data, "data: ", 6), "not SSE: %s", stream.data);
    json_t *events = it_events (stream.data);
    cr_assert_eq (json_array_size (events), 2, "%s", stream.data);
    json_t *abort_event = json_array_get (events, 0);
    cr_assert_str_eq (it_str (abort_event, "type"), "abort", "%s", stream.data);
    cr_assert_not_null (it_str (abort_event, "uuid"), "%s", stream.data);
    cr_assert (strstr (it_str (abort_event, "error"), "could not be embedded"), "%s",
               stream.data);
    cr_assert_str_eq (it_str (json_array_get (events, 1), "type"),
                      "finalizeResponseStream", "%s", stream.data);
    json_decref (events);
    it_stream_free (&stream);
    s_stop ();
}

Test (ingest, an_upstream_always_failing_ends_failed_and_opens_the_breaker,
      .timeout = 180)
{
    const char *extra[] = {
        "EMBEDDING_JOB_BACKOFF_MS=50",           "EMBEDDING_JOB_ATTEMPTS=3",
        "INGESTION_CIRCUIT_FAILURE_THRESHOLD=3", "INGESTION_CIRCUIT_RESET_MS=600000",
        "INGESTION_CIRCUIT_MAX_RESET_MS=600000", NULL};
    s_start (extra, true);
    it_create_workspace (&s_suite, "{\"name\":\"Docs\"}");
    fake_llm_control (&s_fake, "{\"embed_mode\":\"fail500\",\"reset\":true}");
    json_t *document =
        s_raw_text ("Doomed", "The shrike impales its prey on thorns.", "docs");
    json_t *job = s_wait_job (s_job_id (document), 60000);
    char *shown = json_dumps (job, 0);
    cr_assert_str_eq (it_str (job, "state"), "failed", "%s", shown);
    cr_assert_eq (json_integer_value (json_object_get (job, "attempts")), 3, "%s", shown);
    const char *error = it_str (job, "error");
    cr_assert (error && strstr (error, "500"), "the reason is not the upstream's: %s",
               shown);
    json_t *queue = json_object_get (job, "queue");
    cr_assert_str_eq (it_str (queue, "state"), "failed", "not in the failed set: %s",
                      shown);
    cr_assert (it_str (queue, "error") && strstr (it_str (queue, "error"), "500"),
               "the failed set lacks the reason: %s", shown);
    free (shown);
    json_decref (job);
    json_decref (document);
    cr_assert_eq (fake_llm_stat (&s_fake, "embedding_requests"), 3);
    //  Three failures in a row: the circuit is open...
    cr_assert (it_wait (s_breaker_open, NULL, 30000),
               "the ingestion breaker is not open");
    //  ...and what embeds is refused at once, without reaching the upstream.
    char url[256];
    it_url (&s_suite, url, sizeof url, "/api/v1/workspace/docs/vector-search");
    it_response_t r;
    it_http ("POST", url, "{\"query\":\"shrike\"}", true, &r);
    cr_assert_eq (r.status, 503, "%ld %s", r.status, r.body);
    cr_assert (strcasestr (r.headers, "Retry-After:"), "%s", r.headers);
    cr_assert (strstr (r.body, "circuit"), "%s", r.body);
    it_response_free (&r);
    cr_assert_eq (fake_llm_stat (&s_fake, "embedding_requests"), 3);
    //  Prometheus says so too (aggregated: one instance open).
    it_url (&s_suite, url, sizeof url, "/api/metrics/prometheus");
    it_http ("GET", url, NULL, false, &r);
    cr_assert (
        strstr (r.body,
                "\nllmrt_circuit_state{service=\"ingest\",circuit=\"ingest\"} 1\n"),
        "%.3000s", r.body);
    it_response_free (&r);
    s_stop ();
}

//  --- 6. search quality
//  -----------------------------------------------------------------

Test (ingest, every_corpus_query_finds_its_document_first, .timeout = 300)
{
    s_start (NULL, false);
    it_create_workspace (&s_suite, "{\"name\":\"Corpus\"}");
    const char *files[] = {
        "chess_openings.md",    "honeybees.txt",     "marathon_training.txt",
        "medieval_castles.txt", "photosynthesis.md", "sourdough_bread.md",
        "tcp_congestion.md",    "volcanoes.txt",     NULL};
    json_t *documents = json_array ();
    for (size_t i = 0; files[i]; i++) {
        char relative[256];
        snprintf (relative, sizeof relative, "tests/data/search_corpus/%s", files[i]);
        size_t size;
        char *data = s_read_file (relative, &size);
        long status;
        json_t *answer = s_upload (files[i], data, size, "corpus", NULL, &status);
        cr_assert_eq (status, 200, "%s", files[i]);
        json_array_append (documents,
                           json_array_get (json_object_get (answer, "documents"), 0));
        json_decref (answer);
        free (data);
    }
    s_all_complete (documents);
    json_decref (documents);

    size_t size;
    char *queries = s_read_file ("tests/data/search_corpus/queries.tsv", &size);
    int count = 0, above_default = 0;
    char *save = NULL;
    for (char *line = strtok_r (queries, "\n", &save); line;
         line = strtok_r (NULL, "\n", &save)) {
        char *tab = strchr (line, '\t');
        if (!tab || line[0] == '#')
            continue;
        *tab = 0;
        const char *query = line, *expected = tab + 1;
        char url[256];
        snprintf (url, sizeof url, "file://%s", expected);
        long status;
        json_t *answer = s_search ("corpus", query, 0, &status);
        cr_assert_eq (status, 200);
        cr_expect_str_eq (s_first (answer, "url"), url, "query '%s'", query);
        double score = json_number_value (json_object_get (
            json_array_get (json_object_get (answer, "results"), 0), "score"));
        if (score >= 0.25)
            above_default++;
        cr_log_info ("%.3f %s <- %s", score, s_first (answer, "url"), query);
        json_decref (answer);
        count++;
    }
    free (queries);
    cr_assert_geq (count, 10, "queries.tsv has %d queries", count);
    cr_log_info (
        "%d queries, each found its document first; %d of them score at or above "
        "the default similarityThreshold 0.25",
        count, above_default);
    s_stop ();
}

//  --- the database cannot be written -------------------------------------------------

static char s_full_dir[64];

static void
s_unmount_full (void)
{
    test_tmpfs_unmount (s_full_dir);
}

//  Start the suite (with the fake embedder when with_fake) on a database in
//  a 4 MB tmpfs at s_full_dir, with these settings too (NULL-terminated,
//  at most 8); the test is skipped without root (mount).
static void
s_start_on_small (const char *const *more, bool with_fake)
{
    if (!test_tmpfs_mount (s_full_dir, sizeof s_full_dir, "/tmp/llmrt-full-XXXXXX"))
        cr_skip_test ("mounting a tmpfs needs root");
    static char storage[96];
    snprintf (storage, sizeof storage, "STORAGE_DIR=%s", s_full_dir);
    const char *extra[10] = {storage};
    for (size_t i = 0; more && more[i] && i < 8; i++)
        extra[i + 1] = more[i];
    s_start (extra, with_fake);
}

static bool
s_job_progressed (void *arg)
{
    long status;
    json_t *job = s_job (arg, &status);
    bool started = json_integer_value (json_object_get (job, "chunksDone")) >= 2;
    json_decref (job);
    return started;
}

//  A job answered 200 meets a full disk: it waits for the database without
//  using up its attempts (two, 50 ms apart, would be gone in a moment and
//  the job failed for good), and completes once there is room again.
Test (ingest, a_job_that_meets_a_full_database_waits_for_room, .fini = s_unmount_full,
      .timeout = 240)
{
    const char *extra[] = {"EMBEDDING_JOB_ATTEMPTS=2", "EMBEDDING_JOB_BACKOFF_MS=50",
                           "EMBEDDING_BATCH_SIZE=1",   "CHUNK_SIZE_CHARS=3000",
                           "CHUNK_OVERLAP_CHARS=20",   NULL};
    s_start_on_small (extra, true);
    fake_llm_control (&s_fake, "{\"embed_pace_ms\":200}");
    it_create_workspace (&s_suite, "{\"name\":\"Roomy\"}");
    static char text[60000];
    size_t used = 0;
    for (int n = 0; used + 100 < sizeof text; n++)
        used += (size_t) snprintf (text + used, sizeof text - used,
                                   "Sentence %d of the patient one: the heron waits in "
                                   "the reeds. ",
                                   n);
    json_t *body = json_pack ("{s:s, s:{s:s}, s:s}", "textContent", text, "metadata",
                              "title", "Patient", "addToWorkspaces", "roomy");
    char *text_body = json_dumps (body, 0);
    json_decref (body);
    long status;
    json_t *answer = s_post ("/api/v1/document/raw-text", text_body, &status);
    free (text_body);
    cr_assert_eq (status, 200, "the upload: %ld", status);
    char id[64];
    snprintf (id, sizeof id, "%s",
              s_job_id (json_array_get (json_object_get (answer, "documents"), 0)));
    json_decref (answer);
    cr_assert (it_wait (s_job_progressed, id, 60000), "job %s never started", id);
    test_fill_file_system (s_full_dir);
    //  Full for 5 s: the job must not fail meanwhile.
    long long until = it_now_ms () + 5000;
    while (it_now_ms () < until) {
        json_t *job = s_job (id, &status);
        const char *queue_state = it_str (json_object_get (job, "queue"), "state");
        char *shown = json_dumps (job, 0);
        cr_assert (!queue_state || strcmp (queue_state, "failed"),
                   "the full disk failed the job: %s", shown);
        cr_assert_str_neq (it_str (job, "state"), "completed",
                           "the disk never filled up: %s", shown);
        free (shown);
        json_decref (job);
        usleep (200 * 1000);
    }
    char filler[96];
    snprintf (filler, sizeof filler, "%s/filler", s_full_dir);
    cr_assert_eq (unlink (filler), 0);
    json_t *job = s_wait_job (id, 120000);
    char *shown = json_dumps (job, 0);
    cr_assert_str_eq (it_str (job, "state"), "completed", "%s", shown);
    cr_assert_eq (json_integer_value (json_object_get (job, "attempts")), 1,
                  "the waits used no attempt: %s", shown);
    free (shown);
    json_decref (job);
    char path[128];
    snprintf (path, sizeof path, "%s/llmrt.db", s_full_dir);
    sqlite3 *db = NULL;
    cr_assert_eq (sqlite3_open_v2 (path, &db, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
    s_assert_no_chunk_twice (db);
    sqlite3_close (db);
    s_stop ();
}

Test (ingest, a_database_that_cannot_be_written_is_503, .fini = s_unmount_full,
      .timeout = 180)
{
    s_start_on_small (NULL, false);
    it_create_workspace (&s_suite, "{\"name\":\"Full\"}");
    test_fill_file_system (s_full_dir);
    //  400 KB of text: more pages than the WAL has room for.
    size_t size = 400000;
    char *text = malloc (size + 1);
    for (size_t i = 0; i < size; i += 2)
        memcpy (text + i, "x ", 2);
    text[size] = 0;
    json_t *body = json_pack ("{s:s, s:{s:s}, s:s}", "textContent", text, "metadata",
                              "title", "Too big", "addToWorkspaces", "full");
    char *text_body = json_dumps (body, 0);
    long status;
    json_t *answer = s_post ("/api/v1/document/raw-text", text_body, &status);
    s_assert_error (answer, status, 503, "could not be stored", true,
                    "raw text into a full database");
    json_decref (answer);
    //  Nothing of it was kept: the workspace lists no document.
    answer = s_call ("GET", "/api/v1/workspace/full", NULL, &status);
    cr_assert_eq (status, 200);
    json_t *workspace = json_array_get (json_object_get (answer, "workspace"), 0);
    cr_assert_eq (json_array_size (json_object_get (workspace, "documents")), 0);
    json_decref (answer);
    free (text_body);
    json_decref (body);
    free (text);
    s_stop ();
}
