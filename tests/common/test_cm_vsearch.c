/*  test_cm_vsearch.c: the in-process vector search on a real SQLite file:
    order, threshold and shapes of answers, the empty workspace, fresh
    results after links and unlinks by this or another connection or
    process, and searches from several threads while another links and
    unlinks documents. */
#include <criterion/criterion.h>
#include "cm_metrics.h"
#include "cm_vsearch.h"
#include "test_dir.h"
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <sys/wait.h>
#include <unistd.h>

#define S_DIM 8

static char s_dir[64];

static void
s_setup (void)
{
    test_dir_make (s_dir, sizeof s_dir, "/tmp/llmrt-vsearch-XXXXXX");
}

static void
s_teardown (void)
{
    test_dir_remove (s_dir);
}

static cm_storage_t *
s_open (void)
{
    char err[512] = "";
    cm_storage_t *storage = cm_storage_new (s_dir, err, sizeof err);
    cr_assert_not_null (storage, "open failed: %s", err);
    return storage;
}

static int64_t
s_workspace (cm_storage_t *storage, const char *name)
{
    json_t *fields = json_pack ("{s:s}", "name", name);
    json_t *workspace = NULL;
    cr_assert_eq (cm_storage_workspace_create (storage, fields, &workspace),
                  CM_STORAGE_OK);
    int64_t id = json_integer_value (json_object_get (workspace, "id"));
    json_decref (fields);
    json_decref (workspace);
    return id;
}

//  A unit vector in the (axis, axis + 1) plane at cosine `cosine` with axis.
static void
s_at (float *v, int axis, double cosine)
{
    memset (v, 0, S_DIM * sizeof *v);
    v[axis] = (float) cosine;
    v[axis + 1] = (float) sqrt (1 - cosine * cosine);
}

//  An embedded document at location whose chunk i ("<location> #i") lies
//  at cosines[i] from axis. Returns its id.
static int64_t
s_document (cm_storage_t *storage, const char *location, int axis, const double *cosines,
            size_t count)
{
    json_t *fields = json_pack ("{s:s, s:s, s:s, s:s, s:i, s:i}", "location", location,
                                "name", location, "title", location, "docAuthor", "Ann",
                                "wordCount", 10, "token_count_estimate", 12);
    json_t *document = NULL;
    cr_assert_eq (cm_storage_document_add (storage, fields, "text", &document),
                  CM_STORAGE_OK, "%s", cm_storage_errmsg (storage));
    int64_t id = json_integer_value (json_object_get (document, "id"));
    json_decref (fields);
    json_decref (document);
    char texts[16][64];
    const char *pointers[16];
    float vectors[16 * S_DIM];
    cr_assert_leq (count, 16);
    for (size_t i = 0; i < count; i++) {
        snprintf (texts[i], sizeof texts[i], "%s #%zu", location, i);
        pointers[i] = texts[i];
        s_at (vectors + i * S_DIM, axis, cosines[i]);
    }
    cr_assert_eq (
        cm_storage_chunks_put (storage, id, 0, count, pointers, vectors, S_DIM, NULL),
        CM_STORAGE_OK);
    cr_assert_eq (cm_storage_document_set_embedded (storage, id), CM_STORAGE_OK);
    return id;
}

static void
s_link (cm_storage_t *storage, int64_t workspace_id, const char *location)
{
    cr_assert_eq (cm_storage_workspace_doc_link (storage, workspace_id, location, NULL),
                  CM_STORAGE_OK, "%s", cm_storage_errmsg (storage));
}

//  The axis unit vector, times scale.
static void
s_axis (float *v, int axis, float scale)
{
    memset (v, 0, S_DIM * sizeof *v);
    v[axis] = scale;
}

static json_t *
s_query (cm_vsearch_t *vsearch, cm_storage_t *storage, int64_t ws, const float *q,
         size_t top_n, double threshold)
{
    json_t *result = NULL;
    cr_assert_eq (
        cm_vsearch_query (vsearch, storage, ws, q, S_DIM, top_n, threshold, &result),
        CM_STORAGE_OK);
    return result;
}

static const char *
s_text (const json_t *result, size_t i)
{
    return json_string_value (json_object_get (
        json_array_get (json_object_get (result, "results"), i), "text"));
}

static double
s_score (const json_t *result, size_t i)
{
    return json_real_value (json_object_get (
        json_array_get (json_object_get (result, "results"), i), "score"));
}

static size_t
s_count (const json_t *result)
{
    return json_array_size (json_object_get (result, "results"));
}

TestSuite (cm_vsearch, .init = s_setup, .fini = s_teardown);

Test (cm_vsearch, empty_workspace_says_so)
{
    cm_storage_t *storage = s_open ();
    cm_vsearch_t *vsearch = cm_vsearch_new ();
    int64_t ws = s_workspace (storage, "Empty");
    float q[S_DIM];
    s_axis (q, 0, 1);
    json_t *result = s_query (vsearch, storage, ws, q, 4, 0.25);
    json_t *expected = json_pack ("{s:[], s:s}", "results", "message",
                                  "No embeddings found for this workspace.");
    cr_assert (json_equal (result, expected));
    json_decref (result);
    json_decref (expected);

    //  A linked document that is not embedded yet does not count.
    json_t *fields = json_pack ("{s:s, s:s}", "location", "a", "name", "a");
    cr_assert_eq (cm_storage_document_add (storage, fields, "x", NULL), CM_STORAGE_OK);
    s_link (storage, ws, "a");
    result = s_query (vsearch, storage, ws, q, 4, 0.25);
    cr_assert_str_eq (json_string_value (json_object_get (result, "message")),
                      CM_VSEARCH_NO_EMBEDDINGS);
    json_decref (result);
    json_decref (fields);

    //  No such workspace.
    cr_assert_eq (cm_vsearch_query (vsearch, storage, 999, q, S_DIM, 4, 0.25, &result),
                  CM_STORAGE_NOT_FOUND);
    cr_assert_null (result);
    cm_vsearch_destroy (&vsearch);
    cr_assert_null (vsearch);
    cm_vsearch_destroy (&vsearch);
    cm_storage_destroy (&storage);
}

Test (cm_vsearch, top_n_order_threshold_and_shape)
{
    cm_storage_t *storage = s_open ();
    cm_vsearch_t *vsearch = cm_vsearch_new ();
    int64_t ws = s_workspace (storage, "Docs");
    const double a[] = {0.5, 0.9, -0.3};
    const double b[] = {0.1, 0.8};
    s_document (storage, "custom-documents/a.json", 0, a, 3);
    int64_t doc_b = s_document (storage, "custom-documents/b.json", 0, b, 2);
    s_link (storage, ws, "custom-documents/a.json");
    s_link (storage, ws, "custom-documents/b.json");

    //  Top 3 of 5, best first; the query need not be normalised.
    float q[S_DIM];
    s_axis (q, 0, 3);
    json_t *result = s_query (vsearch, storage, ws, q, 3, 0);
    cr_assert_null (json_object_get (result, "message"));
    cr_assert_eq (s_count (result), 3);
    cr_assert_str_eq (s_text (result, 0), "custom-documents/a.json #1");
    cr_assert_str_eq (s_text (result, 1), "custom-documents/b.json #1");
    cr_assert_str_eq (s_text (result, 2), "custom-documents/a.json #0");
    cr_assert_float_eq (s_score (result, 0), 0.9, 1e-6);
    cr_assert_float_eq (s_score (result, 1), 0.8, 1e-6);
    cr_assert_float_eq (s_score (result, 2), 0.5, 1e-6);

    //  The shape of a result.
    json_t *first = json_array_get (json_object_get (result, "results"), 0);
    cr_assert_float_eq (json_real_value (json_object_get (first, "distance")), 0.1, 1e-6);
    char id[37];
    int64_t doc_a = doc_b - 1;
    cm_storage_chunk_id (doc_a, 1, id);
    cr_assert_str_eq (json_string_value (json_object_get (first, "id")), id);
    json_t *metadata = json_object_get (first, "metadata");
    json_t *expected =
        json_pack ("{s:n, s:s, s:s, s:n, s:n, s:n, s:n, s:i, s:i}", "url", "title",
                   "custom-documents/a.json", "author", "Ann", "description", "docSource",
                   "chunkSource", "published", "wordCount", 10, "tokenCount", 12);
    cr_assert (json_equal (metadata, expected), "metadata: %s",
               json_dumps (metadata, JSON_COMPACT));
    json_decref (expected);
    json_decref (result);

    //  The threshold drops what scores below it.
    result = s_query (vsearch, storage, ws, q, 10, 0.6);
    cr_assert_eq (s_count (result), 2);
    json_decref (result);
    result = s_query (vsearch, storage, ws, q, 10, -1);
    cr_assert_eq (s_count (result), 5);
    for (size_t i = 1; i < 5; i++)
        cr_assert_geq (s_score (result, i - 1), s_score (result, i));
    cr_assert_float_eq (s_score (result, 4), -0.3, 1e-6);
    json_decref (result);
    result = s_query (vsearch, storage, ws, q, (size_t) 1 << 40, -1);
    cr_assert_eq (s_count (result), 5, "a huge topN is as many as there are");
    json_decref (result);
    result = s_query (vsearch, storage, ws, q, 10, 0.95);
    cr_assert_eq (s_count (result), 0);
    cr_assert_null (json_object_get (result, "message"), "there are embeddings");
    json_decref (result);

    //  The low-level search, and the hits as chat sources.
    cm_vsearch_hit_t hits[2];
    size_t count = 0, total = 0;
    cr_assert_eq (
        cm_vsearch_search (vsearch, storage, ws, q, S_DIM, 2, 0, hits, &count, &total),
        CM_STORAGE_OK);
    cr_assert_eq (count, 2);
    cr_assert_eq (total, 5);
    cr_assert_eq (hits[0].document_id, doc_a);
    cr_assert_eq (hits[0].position, 1);
    cr_assert_eq (hits[1].document_id, doc_b);
    json_t *sources = NULL;
    cr_assert_eq (cm_vsearch_sources (storage, hits, count, &sources), CM_STORAGE_OK);
    cr_assert_eq (json_array_size (sources), 2);
    json_t *source = json_array_get (sources, 0);
    cr_assert_str_eq (json_string_value (json_object_get (source, "text")),
                      "custom-documents/a.json #1");
    cr_assert_str_eq (json_string_value (json_object_get (source, "title")),
                      "custom-documents/a.json");
    cr_assert_str_eq (json_string_value (json_object_get (source, "docAuthor")), "Ann");
    cr_assert_eq (json_integer_value (json_object_get (source, "token_count_estimate")),
                  12);
    cr_assert_float_eq (json_real_value (json_object_get (source, "score")), 0.9, 1e-6);
    cr_assert_float_eq (json_real_value (json_object_get (source, "_distance")), 0.1,
                        1e-6);
    json_decref (sources);

    //  A query of another dimension finds nothing (skipped, not an error).
    cr_assert_eq (
        cm_vsearch_search (vsearch, storage, ws, q, 4, 2, -1, hits, &count, &total),
        CM_STORAGE_OK);
    cr_assert_eq (count, 0);
    cr_assert_eq (total, 5);

    size_t workspaces, vectors, bytes;
    cm_vsearch_stats (vsearch, &workspaces, &vectors, &bytes);
    cr_assert_eq (workspaces, 1);
    cr_assert_eq (vectors, 5);
    cr_assert_eq (bytes, 5 * S_DIM * sizeof (float));
    cm_vsearch_forget (vsearch, ws);
    cm_vsearch_stats (vsearch, &workspaces, &vectors, &bytes);
    cr_assert_eq (workspaces, 0);
    cm_vsearch_destroy (&vsearch);
    cm_storage_destroy (&storage);
}

Test (cm_vsearch, equal_scores_keep_load_order)
{
    cm_storage_t *storage = s_open ();
    cm_vsearch_t *vsearch = cm_vsearch_new ();
    int64_t ws = s_workspace (storage, "Ties");
    const double same[] = {0.7, 0.7, 0.7, 0.7};
    s_document (storage, "t", 0, same, 4);
    s_link (storage, ws, "t");
    float q[S_DIM];
    s_axis (q, 0, 1);
    json_t *result = s_query (vsearch, storage, ws, q, 2, 0);
    cr_assert_eq (s_count (result), 2);
    cr_assert_str_eq (s_text (result, 0), "t #0");
    cr_assert_str_eq (s_text (result, 1), "t #1");
    json_decref (result);
    cm_vsearch_destroy (&vsearch);
    cm_storage_destroy (&storage);
}

Test (cm_vsearch, links_and_unlinks_change_results_at_once)
{
    cm_storage_t *storage = s_open ();
    cm_storage_t *other = s_open ();
    cm_vsearch_t *vsearch = cm_vsearch_new ();
    int64_t ws = s_workspace (storage, "Docs");
    const double near[] = {0.95}, far[] = {0.2};
    s_document (storage, "near", 0, near, 1);
    s_document (storage, "far", 0, far, 1);
    s_link (storage, ws, "far");
    float q[S_DIM];
    s_axis (q, 0, 1);
    json_t *result = s_query (vsearch, storage, ws, q, 1, 0);
    cr_assert_str_eq (s_text (result, 0), "far #0");
    json_decref (result);

    //  Another connection links a better document: the cache reloads.
    s_link (other, ws, "near");
    result = s_query (vsearch, storage, ws, q, 1, 0);
    cr_assert_str_eq (s_text (result, 0), "near #0");
    json_decref (result);

    //  Unlink it again (through the other connection too).
    cr_assert_eq (cm_storage_workspace_doc_unlink (other, ws, "near"), CM_STORAGE_OK);
    result = s_query (vsearch, storage, ws, q, 5, 0);
    cr_assert_eq (s_count (result), 1);
    cr_assert_str_eq (s_text (result, 0), "far #0");
    json_decref (result);

    //  Another process adds and links a document.
    pid_t pid = fork ();
    cr_assert_neq (pid, -1);
    if (pid == 0) {
        char err[512];
        cm_storage_t *child = cm_storage_new (s_dir, err, sizeof err);
        int rc = 1;
        if (child) {
            json_t *fields = json_pack ("{s:s, s:s}", "location", "child", "name", "c");
            json_t *document = NULL;
            const char *texts[] = {"from the child"};
            float vector[S_DIM] = {1, 0, 0, 0, 0, 0, 0, 0};
            if (cm_storage_document_add (child, fields, "c", &document) ==
                CM_STORAGE_OK) {
                int64_t id = json_integer_value (json_object_get (document, "id"));
                if (cm_storage_chunks_put (child, id, 0, 1, texts, vector, S_DIM, NULL) ==
                        CM_STORAGE_OK &&
                    cm_storage_document_set_embedded (child, id) == CM_STORAGE_OK &&
                    cm_storage_workspace_doc_link (child, ws, "child", NULL) ==
                        CM_STORAGE_OK)
                    rc = 0;
            }
            json_decref (fields);
            json_decref (document);
            cm_storage_destroy (&child);
        }
        _exit (rc);
    }
    int status = 0;
    cr_assert_eq (waitpid (pid, &status, 0), pid);
    cr_assert (WIFEXITED (status) && WEXITSTATUS (status) == 0);
    result = s_query (vsearch, storage, ws, q, 1, 0);
    cr_assert_str_eq (s_text (result, 0), "from the child");
    cr_assert_float_eq (s_score (result, 0), 1.0, 1e-6);
    json_decref (result);

    cm_vsearch_destroy (&vsearch);
    cm_storage_destroy (&other);
    cm_storage_destroy (&storage);
}

//  --- concurrency ------------------------------------------------------------------

#define S_SEARCHERS  4
#define S_ROUNDS     200
#define S_LINKED_MAX 12

typedef struct {
    cm_vsearch_t *vsearch;
    cm_storage_pool_t *pool;
    int64_t workspace_id;
    atomic_bool *writing;
    int failures;      //  searches that returned a wrong answer
    size_t searches;   //  searches done
    char failure[256]; //  the first wrong answer
} s_searcher_t;

//  Search until the writer is done: every answer must be a valid top 3:
//  sorted, of chunks that exist ("w<k> #0"), with the scores their vectors
//  have (document k's chunk is at cosine 0.05 * (k + 1)).
static void *
s_searcher (void *arg)
{
    s_searcher_t *self = arg;
    cm_storage_t *storage = cm_storage_pool_acquire (self->pool);
    float q[S_DIM];
    s_axis (q, 0, 1);
    bool last = false;
    while (!last) {
        last = !atomic_load (self->writing);
        cm_vsearch_hit_t hits[3];
        size_t count = 0;
        cm_storage_status_t status =
            cm_vsearch_search (self->vsearch, storage, self->workspace_id, q, S_DIM, 3, 0,
                               hits, &count, NULL);
        self->searches++;
        const char *wrong = status != CM_STORAGE_OK ? "status"
                            : count > 3             ? "count"
                                                    : NULL;
        for (size_t i = 0; i < count && !wrong; i++) {
            if (i && hits[i].score > hits[i - 1].score)
                wrong = "order";
            if (hits[i].position != 0)
                wrong = "position";
        }
        json_t *sources = NULL;
        if (!wrong &&
            cm_vsearch_sources (storage, hits, count, &sources) != CM_STORAGE_OK)
            wrong = "sources";
        for (size_t i = 0; !wrong && i < json_array_size (sources); i++) {
            json_t *source = json_array_get (sources, i);
            int k = -1;
            sscanf (json_string_value (json_object_get (source, "text")), "w%d #0", &k);
            double score = json_real_value (json_object_get (source, "score"));
            if (k < 0 || k >= S_LINKED_MAX || fabs (score - 0.05 * (k + 1)) > 1e-5)
                wrong = "chunk";
        }
        json_decref (sources);
        if (wrong && !self->failures++)
            snprintf (self->failure, sizeof self->failure, "%s (status %d, %zu hits)",
                      wrong, status, count);
    }
    cm_storage_pool_release (self->pool, &storage);
    return NULL;
}

Test (cm_vsearch, concurrent_searches_while_documents_are_linked, .timeout = 120)
{
    char err[512];
    cm_storage_pool_t *pool = cm_storage_pool_new (s_dir, err, sizeof err);
    cr_assert_not_null (pool, "%s", err);
    cm_storage_t *writer = cm_storage_pool_acquire (pool);
    int64_t ws = s_workspace (writer, "Busy");
    for (int k = 0; k < S_LINKED_MAX; k++) {
        char location[16];
        snprintf (location, sizeof location, "w%d", k);
        const double cosine[] = {0.05 * (k + 1)};
        s_document (writer, location, 0, cosine, 1);
    }
    cm_vsearch_t *vsearch = cm_vsearch_new ();
    atomic_bool writing = true;
    s_searcher_t searchers[S_SEARCHERS];
    pthread_t threads[S_SEARCHERS];
    for (int i = 0; i < S_SEARCHERS; i++) {
        searchers[i] = (s_searcher_t){
            .vsearch = vsearch, .pool = pool, .workspace_id = ws, .writing = &writing};
        cr_assert_eq (pthread_create (&threads[i], NULL, s_searcher, &searchers[i]), 0);
    }
    //  Link and unlink documents in a pseudo-random walk.
    bool linked[S_LINKED_MAX] = {false};
    unsigned seed = 7;
    for (int round = 0; round < S_ROUNDS; round++) {
        seed = seed * 1103515245u + 12345u;
        int k = (int) ((seed >> 16) % S_LINKED_MAX);
        char location[16];
        snprintf (location, sizeof location, "w%d", k);
        if (linked[k])
            cr_assert_eq (cm_storage_workspace_doc_unlink (writer, ws, location),
                          CM_STORAGE_OK);
        else
            s_link (writer, ws, location);
        linked[k] = !linked[k];
    }
    atomic_store (&writing, false);
    size_t searches = 0;
    for (int i = 0; i < S_SEARCHERS; i++) {
        pthread_join (threads[i], NULL);
        cr_assert_eq (searchers[i].failures, 0, "searcher %d: %s", i,
                      searchers[i].failure);
        searches += searchers[i].searches;
    }
    //  Every searcher searched (at least once: on a loaded machine the
    //  writer may finish before a searcher gets the CPU again).
    cr_assert_geq (searches, S_SEARCHERS);

    //  Settled: the answer is exactly the best three linked documents.
    cm_vsearch_hit_t hits[3];
    size_t count = 0, total = 0;
    float q[S_DIM];
    s_axis (q, 0, 1);
    cr_assert_eq (
        cm_vsearch_search (vsearch, writer, ws, q, S_DIM, 3, 0, hits, &count, &total),
        CM_STORAGE_OK);
    size_t expected_total = 0;
    for (int k = 0; k < S_LINKED_MAX; k++)
        expected_total += linked[k];
    cr_assert_eq (total, expected_total);
    size_t at = 0;
    for (int k = S_LINKED_MAX - 1; k >= 0 && at < 3; k--)
        if (linked[k]) {
            cr_assert_lt (at, count);
            cr_assert_float_eq (hits[at].score, 0.05 * (k + 1), 1e-5);
            at++;
        }
    cr_assert_eq (at, count);

    cm_vsearch_destroy (&vsearch);
    cm_storage_pool_release (pool, &writer);
    cm_storage_pool_destroy (&pool);
}

//  The workspaces cached now.
static size_t
s_cached (cm_vsearch_t *vsearch)
{
    size_t workspaces = 0;
    cm_vsearch_stats (vsearch, &workspaces, NULL, NULL);
    return workspaces;
}

//  Search ws for the first axis: its best chunk must be expected.
static void
s_search_first (cm_vsearch_t *vsearch, cm_storage_t *storage, int64_t ws,
                const char *expected)
{
    float q[S_DIM];
    s_axis (q, 0, 1);
    json_t *result = s_query (vsearch, storage, ws, q, 1, 0);
    cr_assert_str_eq (s_text (result, 0), expected);
    json_decref (result);
}

Test (cm_vsearch, the_cache_keeps_to_its_limit_dropping_the_least_recently_searched)
{
    cm_storage_t *storage = s_open ();
    cm_vsearch_t *vsearch = cm_vsearch_new ();
    const char *names[] = {"a", "b", "c"};
    int64_t ws[3];
    const double cosines[] = {0.9, 0.8, 0.7, 0.6};
    for (int i = 0; i < 3; i++) {
        ws[i] = s_workspace (storage, names[i]);
        s_document (storage, names[i], 0, cosines, 4);
        s_link (storage, ws[i], names[i]);
    }
    //  One set: 4 vectors of S_DIM floats and their two keys.
    size_t one = 4 * (S_DIM * sizeof (float) + 2 * sizeof (int64_t));
    cm_vsearch_set_max_bytes (vsearch, 2 * one);
    s_search_first (vsearch, storage, ws[0], "a #0");
    s_search_first (vsearch, storage, ws[1], "b #0");
    cr_assert_eq (s_cached (vsearch), 2);
    cr_assert_eq (cm_vsearch_evictions (vsearch), 0);
    //  a searched again, then c: b, the least recent, goes.
    s_search_first (vsearch, storage, ws[0], "a #0");
    s_search_first (vsearch, storage, ws[2], "c #0");
    cr_assert_eq (s_cached (vsearch), 2);
    cr_assert_eq (cm_vsearch_evictions (vsearch), 1);
    size_t bytes = 0;
    cm_vsearch_stats (vsearch, NULL, NULL, &bytes);
    cr_assert_eq (bytes, 2 * 4 * S_DIM * sizeof (float), "a and c: %zu", bytes);
    //  The same in the metrics.
    cm_metrics_t *metrics = cm_metrics_new ();
    cm_vsearch_attach_metrics (vsearch, metrics);
    json_t *snapshot = cm_metrics_snapshot (metrics);
    cr_assert_eq (cm_metrics_sum (snapshot, "llmrt_vector_cache_bytes", NULL), 2 * one);
    cr_assert_eq (cm_metrics_sum (snapshot, "llmrt_vector_cache_max_bytes", NULL),
                  2 * one);
    cr_assert_eq (cm_metrics_sum (snapshot, "llmrt_vector_cache_workspaces", NULL), 2);
    cr_assert_eq (cm_metrics_sum (snapshot, "llmrt_vector_cache_evictions_total", NULL),
                  1);
    json_decref (snapshot);
    //  b comes back when searched (and a goes).
    s_search_first (vsearch, storage, ws[1], "b #0");
    cr_assert_eq (cm_vsearch_evictions (vsearch), 2);
    s_search_first (vsearch, storage, ws[2], "c #0");
    cr_assert_eq (cm_vsearch_evictions (vsearch), 2, "c was still cached");

    //  A limit below one set: lowering it drops them all; a set loaded
    //  then is kept, alone.
    cm_vsearch_set_max_bytes (vsearch, one / 2);
    cr_assert_eq (s_cached (vsearch), 0);
    s_search_first (vsearch, storage, ws[0], "a #0");
    cr_assert_eq (s_cached (vsearch), 1);
    s_search_first (vsearch, storage, ws[1], "b #0");
    cr_assert_eq (s_cached (vsearch), 1);
    //  No limit: everything stays.
    cm_vsearch_set_max_bytes (vsearch, 0);
    for (int i = 0; i < 3; i++) {
        char expected[16];
        snprintf (expected, sizeof expected, "%s #0", names[i]);
        s_search_first (vsearch, storage, ws[i], expected);
    }
    cr_assert_eq (s_cached (vsearch), 3);
    snapshot = cm_metrics_snapshot (metrics);
    cr_assert_eq (cm_metrics_sum (snapshot, "llmrt_vector_cache_workspaces", NULL), 3);
    cr_assert_eq (cm_metrics_sum (snapshot, "llmrt_vector_cache_max_bytes", NULL), 0);
    json_decref (snapshot);
    cm_metrics_destroy (&metrics);
    cm_vsearch_destroy (&vsearch);
    cm_storage_destroy (&storage);
}
