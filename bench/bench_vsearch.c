/*  bench_vsearch: cm_vsearch over one workspace of 100,000 chunks (1000
    documents of 100), dim 256, random unit vectors, in a temp database.
    Prints the time to fill the database, to load the cache (the first
    search after a change pays it), then median/p90/p99 of 200 searches
    (top 4, cache warm): the bare search (cm_vsearch_search), the
    vector-search answer with texts read back (cm_vsearch_query), and the
    bare search from two threads at once. A figure, not a test.

    Usage: bench_vsearch [chunks] (default 100000; 100 per document). */
#include "cm_vsearch.h"
#include <ftw.h>
#include <math.h>
#include <pthread.h>
#include <time.h>
#include <unistd.h>

#define S_DIM       256
#define S_PER_DOC   100
#define S_QUERIES   200
#define S_TOP_N     4
#define S_THRESHOLD 0.0

static uint64_t s_rng = 0x9E3779B97F4A7C15ULL;

static double
s_uniform (void)
{
    s_rng ^= s_rng << 13;
    s_rng ^= s_rng >> 7;
    s_rng ^= s_rng << 17;
    return ((double) (s_rng >> 11) + 0.5) / 9007199254740992.0;
}

//  A random unit vector (normal components, normalised).
static void
s_random_unit (float *v)
{
    double norm = 0;
    for (int i = 0; i < S_DIM; i++) {
        double g = sqrt (-2 * log (s_uniform ())) * cos (2 * M_PI * s_uniform ());
        v[i] = (float) g;
        norm += g * g;
    }
    for (int i = 0; i < S_DIM; i++)
        v[i] = (float) (v[i] / sqrt (norm));
}

static double
s_ms (const struct timespec *a, const struct timespec *b)
{
    return (double) (b->tv_sec - a->tv_sec) * 1e3 +
           (double) (b->tv_nsec - a->tv_nsec) / 1e6;
}

static int
s_compare (const void *a, const void *b)
{
    double x = *(const double *) a, y = *(const double *) b;
    return x < y ? -1 : x > y;
}

static void
s_report (const char *what, double *values, size_t n)
{
    qsort (values, n, sizeof *values, s_compare);
    printf ("%-36s median %7.3f ms   p90 %7.3f ms   p99 %7.3f ms   (%zu queries)\n", what,
            values[n / 2], values[n * 90 / 100], values[n * 99 / 100], n);
}

static int
s_remove_entry (const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void) st, (void) flag, (void) ftw;
    return remove (path);
}

typedef struct {
    cm_vsearch_t *vsearch;
    cm_storage_pool_t *pool;
    int64_t workspace_id;
    float *queries;
    double *ms;
} s_thread_t;

static void *
s_searcher (void *arg)
{
    s_thread_t *t = arg;
    cm_storage_t *storage = cm_storage_pool_acquire (t->pool);
    for (int q = 0; q < S_QUERIES; q++) {
        cm_vsearch_hit_t hits[S_TOP_N];
        size_t count;
        struct timespec a, b;
        clock_gettime (CLOCK_MONOTONIC, &a);
        cm_vsearch_search (t->vsearch, storage, t->workspace_id, t->queries + q * S_DIM,
                           S_DIM, S_TOP_N, S_THRESHOLD, hits, &count, NULL);
        clock_gettime (CLOCK_MONOTONIC, &b);
        t->ms[q] = s_ms (&a, &b);
    }
    cm_storage_pool_release (t->pool, &storage);
    return NULL;
}

int
main (int argc, char **argv)
{
    size_t chunks = argc > 1 ? (size_t) strtoul (argv[1], NULL, 10) : 100000;
    size_t documents = (chunks + S_PER_DOC - 1) / S_PER_DOC;
    char dir[] = "/tmp/llmrt-bench-vsearch-XXXXXX";
    if (!mkdtemp (dir)) {
        perror ("mkdtemp");
        return 1;
    }
    char err[256];
    cm_storage_pool_t *pool = cm_storage_pool_new (dir, err, sizeof err);
    if (!pool) {
        fprintf (stderr, "%s\n", err);
        return 1;
    }
    cm_storage_t *storage = cm_storage_pool_acquire (pool);
    json_t *fields = json_pack ("{s:s}", "name", "bench");
    json_t *workspace = NULL;
    cm_storage_workspace_create (storage, fields, &workspace);
    json_decref (fields);
    int64_t workspace_id = json_integer_value (json_object_get (workspace, "id"));
    json_decref (workspace);

    //  Fill: per document, its row, its chunks (one transaction), embedded, linked.
    struct timespec a, b;
    clock_gettime (CLOCK_MONOTONIC, &a);
    float *vectors = cm_malloc (S_PER_DOC * S_DIM * sizeof (float));
    char **texts = cm_calloc (S_PER_DOC, sizeof *texts);
    for (size_t i = 0; i < S_PER_DOC; i++)
        texts[i] = cm_malloc (256);
    size_t left = chunks;
    for (size_t d = 0; d < documents; d++) {
        char location[64], title[64];
        snprintf (location, sizeof location, "custom-documents/doc-%zu.json", d);
        snprintf (title, sizeof title, "Document %zu", d);
        fields = json_pack ("{s:s, s:s, s:s, s:i}", "location", location, "name", title,
                            "title", title, "wordCount", 1000);
        json_t *document = NULL;
        if (cm_storage_document_add (storage, fields, "text", &document) !=
            CM_STORAGE_OK) {
            fprintf (stderr, "add document: %s\n", cm_storage_errmsg (storage));
            return 1;
        }
        json_decref (fields);
        int64_t document_id = json_integer_value (json_object_get (document, "id"));
        json_decref (document);
        size_t count = left < S_PER_DOC ? left : S_PER_DOC;
        left -= count;
        for (size_t i = 0; i < count; i++) {
            s_random_unit (vectors + i * S_DIM);
            snprintf (texts[i], 256,
                      "Chunk %zu of document %zu: some words that stand for the text "
                      "of a passage of about the usual size of a chunk of a document.",
                      i, d);
        }
        if (cm_storage_chunks_put (storage, document_id, 0, count,
                                   (const char *const *) texts, vectors, S_DIM,
                                   NULL) != CM_STORAGE_OK ||
            cm_storage_document_set_embedded (storage, document_id) != CM_STORAGE_OK ||
            cm_storage_workspace_doc_link (storage, workspace_id, location, NULL) !=
                CM_STORAGE_OK) {
            fprintf (stderr, "fill: %s\n", cm_storage_errmsg (storage));
            return 1;
        }
    }
    clock_gettime (CLOCK_MONOTONIC, &b);
    printf ("fill: %zu chunks of dim %d in %zu documents: %.0f ms\n", chunks, S_DIM,
            documents, s_ms (&a, &b));

    cm_vsearch_t *vsearch = cm_vsearch_new ();
    clock_gettime (CLOCK_MONOTONIC, &a);
    cm_vsearch_warm (vsearch, storage, workspace_id);
    clock_gettime (CLOCK_MONOTONIC, &b);
    size_t vector_count, bytes;
    cm_vsearch_stats (vsearch, NULL, &vector_count, &bytes);
    printf ("cache load: %zu vectors (%.1f MB) in %.0f ms\n", vector_count, bytes / 1e6,
            s_ms (&a, &b));

    float *queries = cm_malloc (S_QUERIES * S_DIM * sizeof (float));
    for (int q = 0; q < S_QUERIES; q++)
        s_random_unit (queries + q * S_DIM);
    double ms[S_QUERIES], ms2[S_QUERIES];

    //  Version check alone: the per-search SQL.
    for (int q = 0; q < S_QUERIES; q++) {
        int64_t version;
        clock_gettime (CLOCK_MONOTONIC, &a);
        cm_storage_vectors_version (storage, workspace_id, &version);
        clock_gettime (CLOCK_MONOTONIC, &b);
        ms[q] = s_ms (&a, &b);
    }
    s_report ("version check (SQL)", ms, S_QUERIES);

    for (int q = 0; q < S_QUERIES; q++) {
        cm_vsearch_hit_t hits[S_TOP_N];
        size_t count;
        clock_gettime (CLOCK_MONOTONIC, &a);
        cm_vsearch_search (vsearch, storage, workspace_id, queries + q * S_DIM, S_DIM,
                           S_TOP_N, S_THRESHOLD, hits, &count, NULL);
        clock_gettime (CLOCK_MONOTONIC, &b);
        ms[q] = s_ms (&a, &b);
    }
    s_report ("search, top 4", ms, S_QUERIES);

    for (int q = 0; q < S_QUERIES; q++) {
        json_t *result = NULL;
        clock_gettime (CLOCK_MONOTONIC, &a);
        cm_vsearch_query (vsearch, storage, workspace_id, queries + q * S_DIM, S_DIM,
                          S_TOP_N, S_THRESHOLD, &result);
        clock_gettime (CLOCK_MONOTONIC, &b);
        ms[q] = s_ms (&a, &b);
        json_decref (result);
    }
    s_report ("query (JSON answer, texts read)", ms, S_QUERIES);

    cm_storage_pool_release (pool, &storage);
    s_thread_t threads[2] = {{vsearch, pool, workspace_id, queries, ms},
                             {vsearch, pool, workspace_id, queries, ms2}};
    pthread_t ids[2];
    for (int i = 0; i < 2; i++)
        pthread_create (&ids[i], NULL, s_searcher, &threads[i]);
    for (int i = 0; i < 2; i++)
        pthread_join (ids[i], NULL);
    double both[2 * S_QUERIES];
    memcpy (both, ms, sizeof ms);
    memcpy (both + S_QUERIES, ms2, sizeof ms2);
    s_report ("search, 2 threads at once", both, 2 * S_QUERIES);

    cm_vsearch_destroy (&vsearch);
    cm_storage_pool_destroy (&pool);
    for (size_t i = 0; i < S_PER_DOC; i++)
        free (texts[i]);
    free (texts);
    free (vectors);
    free (queries);
    nftw (dir, s_remove_entry, 16, FTW_DEPTH | FTW_PHYS);
    return 0;
}
