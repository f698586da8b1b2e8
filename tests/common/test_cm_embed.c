/*  test_cm_embed.c: the embedders.

    builtin: deterministic, L2-normalised, 256 dimensions; texts that share
    words are closer than texts that do not; and it finds the right
    document for each query of the search-quality corpus
    (tests/data/search_corpus: eight documents on different topics, chunked
    by ingest_chunk, and queries.tsv: a query, a tab, the file name of the
    document that should answer it). Its throughput is printed (a figure,
    not a pass/fail threshold).

    openai: against tests/fake_llm, a real HTTP server on loopback: texts go
    in batches, answers are put in index order, the dimension is learned
    and held, every way the upstream fails is classified for the breaker
    (5xx, 429, malformed, refused connection, timeout: UPSTREAM; 400:
    REQUEST), an upstream that fails twice then recovers, and a cancelled
    call closes the upstream's connection. */
#include <criterion/criterion.h>
#include <dirent.h>
#include <math.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include "cm_embed.h"
#include "fake_llm_client.h"
#include "ingest_chunk.h"

//  --- builtin -------------------------------------------------------------------------

static cm_embedder_t *
s_builtin (void)
{
    cm_embed_config_t config;
    cm_embed_config_defaults (&config);
    char err[256] = "";
    cm_embedder_t *embedder = cm_embedder_new (&config, err, sizeof err);
    cr_assert_not_null (embedder, "%s", err);
    return embedder;
}

//  Embed one text with the embedder; the caller frees.
static float *
s_embed_one (cm_embedder_t *embedder, const char *text)
{
    float *vector = NULL;
    size_t dim = 0;
    char err[256] = "";
    cm_embed_status_t status =
        cm_embed (embedder, &text, 1, &vector, &dim, NULL, NULL, err, sizeof err);
    cr_assert_eq (status, CM_EMBED_OK, "%s", err);
    cr_assert_eq (dim, cm_embedder_dim (embedder));
    return vector;
}

static double
s_norm (const float *vector, size_t dim)
{
    double sum = 0;
    for (size_t i = 0; i < dim; i++)
        sum += (double) vector[i] * vector[i];
    return sqrt (sum);
}

Test (cm_embed, walkthrough)
{
    //  Settings come from EMBEDDING_* in a program (CM_EMBED_CONF_ENTRIES);
    //  the defaults are the builtin embedder.
    cm_embedder_t *embedder = s_builtin ();
    cr_assert_str_eq (cm_embedder_name (embedder), "builtin");
    cr_assert_str_eq (cm_embedder_provider (embedder), "builtin");
    cr_assert_eq (cm_embedder_dim (embedder), CM_EMBED_BUILTIN_DIM);

    const char *texts[] = {
        "Workers take jobs from the queue.",
        "The queue hands each job to a worker.",
        "Volcanoes erupt lava and ash.",
    };
    float *vectors = NULL;
    size_t dim = 0;
    char err[256] = "";
    cr_assert_eq (
        cm_embed (embedder, texts, 3, &vectors, &dim, NULL, NULL, err, sizeof err),
        CM_EMBED_OK);
    cr_assert_eq (dim, 256);
    //  Vectors are unit length: the dot product is the cosine.
    float near = cm_embed_cosine (vectors, vectors + dim, dim);
    float far = cm_embed_cosine (vectors, vectors + 2 * dim, dim);
    cr_assert_gt (near, far + 0.2f, "near %f, far %f", near, far);
    free (vectors);

    //  No texts: no vectors.
    vectors = (float *) 1;
    cr_assert_eq (
        cm_embed (embedder, texts, 0, &vectors, &dim, NULL, NULL, err, sizeof err),
        CM_EMBED_OK);
    cr_assert_null (vectors);
    cm_embedder_destroy (&embedder);
    cr_assert_null (embedder);
    cm_embedder_destroy (&embedder); //  NULL-safe
}

Test (cm_embed, builtin_is_deterministic)
{
    const char *text = "Deterministic: the same text gives the same vector, bit for bit.";
    cm_embedder_t *a = s_builtin ();
    cm_embedder_t *b = s_builtin ();
    float *va = s_embed_one (a, text);
    float *vb = s_embed_one (b, text);
    float *vc = s_embed_one (a, text);
    cr_assert_eq (memcmp (va, vb, CM_EMBED_BUILTIN_DIM * sizeof (float)), 0);
    cr_assert_eq (memcmp (va, vc, CM_EMBED_BUILTIN_DIM * sizeof (float)), 0);
    //  The same as the function without an embedder.
    float direct[CM_EMBED_BUILTIN_DIM];
    cm_embed_builtin (text, strlen (text), direct, CM_EMBED_BUILTIN_DIM);
    cr_assert_eq (memcmp (va, direct, sizeof direct), 0);
    free (va);
    free (vb);
    free (vc);
    cm_embedder_destroy (&a);
    cm_embedder_destroy (&b);
}

Test (cm_embed, builtin_is_normalised)
{
    static const char *texts[] = {
        "x",
        "word",
        "Two words",
        "A longer sentence, with punctuation; and numbers like 42 and 2024!",
        "Ünïcödé wörds and 日本語 text are words too",
        "repeat repeat repeat repeat repeat repeat repeat repeat repeat repeat",
    };
    for (size_t i = 0; i < sizeof texts / sizeof *texts; i++) {
        float vector[CM_EMBED_BUILTIN_DIM];
        cm_embed_builtin (texts[i], strlen (texts[i]), vector, CM_EMBED_BUILTIN_DIM);
        cr_assert (fabs (s_norm (vector, CM_EMBED_BUILTIN_DIM) - 1.0) < 1e-5,
                   "'%s' has norm %f", texts[i], s_norm (vector, CM_EMBED_BUILTIN_DIM));
    }
    //  Nothing to go on: the zero vector (and its cosine with anything is 0).
    static const char *empty[] = {"", "   ", "... !!! ??? --- ,,, ;;;", "“” — «»"};
    for (size_t i = 0; i < sizeof empty / sizeof *empty; i++) {
        float vector[CM_EMBED_BUILTIN_DIM];
        cm_embed_builtin (empty[i], strlen (empty[i]), vector, CM_EMBED_BUILTIN_DIM);
        cr_assert_eq (s_norm (vector, CM_EMBED_BUILTIN_DIM), 0, "'%s'", empty[i]);
        cr_assert_eq (cm_embed_cosine (vector, vector, CM_EMBED_BUILTIN_DIM), 0);
    }
    //  Other dimensions work too.
    float small[7];
    cm_embed_builtin ("any dimension", 13, small, 7);
    cr_assert (fabs (s_norm (small, 7) - 1.0) < 1e-5);
}

Test (cm_embed, builtin_ignores_case_punctuation_and_plurals)
{
    cm_embedder_t *embedder = s_builtin ();
    float *a = s_embed_one (embedder, "Hello, World! Don't panic.");
    float *b = s_embed_one (embedder, "hello world dont panic");
    cr_assert_eq (memcmp (a, b, CM_EMBED_BUILTIN_DIM * sizeof (float)), 0,
                  "case and punctuation do not matter");
    free (a);
    free (b);
    a = s_embed_one (embedder, "chunks queries boxes");
    b = s_embed_one (embedder, "chunk query boxe");
    cr_assert_eq (memcmp (a, b, CM_EMBED_BUILTIN_DIM * sizeof (float)), 0,
                  "a plural 's' is taken off");
    free (a);
    free (b);
    //  Stop words do not count: a stop word added changes nothing.
    a = s_embed_one (embedder, "the queue of the workers");
    b = s_embed_one (embedder, "queue workers");
    cr_assert_eq (memcmp (a, b, CM_EMBED_BUILTIN_DIM * sizeof (float)), 0);
    free (a);
    free (b);
    cm_embedder_destroy (&embedder);
}

Test (cm_embed, builtin_similar_texts_are_closer)
{
    static const struct {
        const char *text, *similar, *unrelated;
    } cases[] = {
        {"The cat sat on the mat.", "A cat was sitting on a mat.",
         "Stock prices fell sharply on Monday."},
        {"Redis keeps the job queue in memory.", "The job queue lives in Redis memory.",
         "Bake the bread at a high temperature."},
        {"Chunking splits documents into overlapping pieces.",
         "Documents are split into chunks that overlap.",
         "The marathon runner crossed the finish line."},
        {"photosynthesis", "photosynthetic", "railway"},
    };
    cm_embedder_t *embedder = s_builtin ();
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        float *text = s_embed_one (embedder, cases[i].text);
        float *similar = s_embed_one (embedder, cases[i].similar);
        float *unrelated = s_embed_one (embedder, cases[i].unrelated);
        float near = cm_embed_cosine (text, similar, CM_EMBED_BUILTIN_DIM);
        float far = cm_embed_cosine (text, unrelated, CM_EMBED_BUILTIN_DIM);
        cr_assert_gt (near, far, "'%s': similar %f, unrelated %f", cases[i].text, near,
                      far);
        cr_assert_gt (near, 0.25f, "'%s' ~ '%s': %f", cases[i].text, cases[i].similar,
                      near);
        free (text);
        free (similar);
        free (unrelated);
    }
    cm_embedder_destroy (&embedder);
}

typedef struct {
    cm_embedder_t *embedder; //  shared by the threads
    const char *text;        //  what each embeds
    float *expected;         //  what it must get
    atomic_int mismatches;   //  results that differed
} s_threads_t;

static void *
s_thread (void *arg)
{
    s_threads_t *shared = (s_threads_t *) arg;
    for (int i = 0; i < 200; i++) {
        float *vector = NULL;
        size_t dim = 0;
        char err[128];
        if (cm_embed (shared->embedder, &shared->text, 1, &vector, &dim, NULL, NULL, err,
                      sizeof err) != CM_EMBED_OK ||
            memcmp (vector, shared->expected, dim * sizeof (float)))
            atomic_fetch_add (&shared->mismatches, 1);
        free (vector);
    }
    return NULL;
}

Test (cm_embed, builtin_is_thread_safe)
{
    s_threads_t shared = {s_builtin (), "Several handler threads embed at once.", NULL,
                          0};
    shared.expected = s_embed_one (shared.embedder, shared.text);
    pthread_t threads[4];
    for (int i = 0; i < 4; i++)
        pthread_create (&threads[i], NULL, s_thread, &shared);
    for (int i = 0; i < 4; i++)
        pthread_join (threads[i], NULL);
    cr_assert_eq (atomic_load (&shared.mismatches), 0);
    free (shared.expected);
    cm_embedder_destroy (&shared.embedder);
}

//  --- the search-quality corpus
//  ---------------------------------------------------------

//  The corpus folder: from LLMRT_SOURCE_DIR (ctest), else this file's.
static void
s_corpus_dir (char *dir, size_t size)
{
    const char *source = getenv ("LLMRT_SOURCE_DIR");
    if (source)
        snprintf (dir, size, "%s/tests/data/search_corpus", source);
    else {
        snprintf (dir, size, "%s", __FILE__);
        char *slash = strrchr (dir, '/');
        cr_assert_not_null (slash);
        snprintf (slash, size - (size_t) (slash - dir), "/../data/search_corpus");
    }
}

static char *
s_read_file (const char *path, size_t *size_p)
{
    FILE *file = fopen (path, "rb");
    cr_assert_not_null (file, "cannot open %s", path);
    fseek (file, 0, SEEK_END);
    long size = ftell (file);
    fseek (file, 0, SEEK_SET);
    char *data = malloc ((size_t) size + 1);
    cr_assert_eq (fread (data, 1, (size_t) size, file), (size_t) size);
    data[size] = 0;
    fclose (file);
    *size_p = (size_t) size;
    return data;
}

//  The chunks of every document: text, and which document.
typedef struct {
    char *texts[512];   //  chunk texts (NUL-terminated copies)
    int docs[512];      //  their document's index
    size_t count;       //  chunks
    char names[16][64]; //  document file names
    int doc_count;      //  documents
    int doc;            //  the document being chunked
} s_corpus_t;

static int
s_add_chunk (const char *chunk, size_t size, size_t offset, size_t index, void *arg)
{
    (void) offset, (void) index;
    s_corpus_t *corpus = (s_corpus_t *) arg;
    cr_assert_lt (corpus->count, 512);
    corpus->texts[corpus->count] = strndup (chunk, size);
    corpus->docs[corpus->count] = corpus->doc;
    corpus->count++;
    return 0;
}

static int
s_name_cmp (const void *a, const void *b)
{
    return strcmp ((const char *) a, (const char *) b);
}

Test (cm_embed, builtin_finds_the_right_document)
{
    char dir[1024];
    s_corpus_dir (dir, sizeof dir);
    static s_corpus_t corpus;
    memset (&corpus, 0, sizeof corpus);
    DIR *listing = opendir (dir);
    cr_assert_not_null (listing, "no corpus at %s", dir);
    struct dirent *entry;
    while ((entry = readdir (listing))) {
        const char *dot = strrchr (entry->d_name, '.');
        if (dot && (!strcmp (dot, ".txt") || !strcmp (dot, ".md"))) {
            cr_assert_lt (corpus.doc_count, 16);
            cr_assert_lt (strlen (entry->d_name), 64);
            memcpy (corpus.names[corpus.doc_count++], entry->d_name,
                    strlen (entry->d_name) + 1);
        }
    }
    closedir (listing);
    qsort (corpus.names, (size_t) corpus.doc_count, 64, s_name_cmp);
    cr_assert_geq (corpus.doc_count, 8);
    //  Chunks the size ingestion uses (upstream's defaults), and smaller
    //  ones: several per document.
    static const size_t sizes[] = {INGEST_CHUNK_DEFAULT_SIZE, 400};
    for (size_t s = 0; s < 2; s++) {
        corpus.count = 0;
        for (int d = 0; d < corpus.doc_count; d++) {
            char path[1200];
            snprintf (path, sizeof path, "%s/%s", dir, corpus.names[d]);
            size_t size;
            char *text = s_read_file (path, &size);
            corpus.doc = d;
            cr_assert_gt (ingest_chunk (text, size, sizes[s],
                                        INGEST_CHUNK_DEFAULT_OVERLAP, s_add_chunk,
                                        &corpus),
                          0);
            free (text);
        }
        cm_embedder_t *embedder = s_builtin ();
        float *vectors = NULL;
        size_t dim = 0;
        char err[256];
        cr_assert_eq (cm_embed (embedder, (const char *const *) corpus.texts,
                                corpus.count, &vectors, &dim, NULL, NULL, err,
                                sizeof err),
                      CM_EMBED_OK);

        char path[1200];
        snprintf (path, sizeof path, "%s/queries.tsv", dir);
        size_t size;
        char *queries = s_read_file (path, &size);
        int checked = 0, failed = 0;
        for (char *line = strtok (queries, "\n"); line; line = strtok (NULL, "\n")) {
            char *tab = strchr (line, '\t');
            cr_assert_not_null (tab, "queries.tsv: no tab in '%s'", line);
            *tab = 0;
            const char *expected = tab + 1;
            float *query = s_embed_one (embedder, line);
            size_t best = 0;
            float best_score = -2, other_best = -2;
            for (size_t c = 0; c < corpus.count; c++) {
                float score = cm_embed_cosine (query, vectors + c * dim, dim);
                if (score > best_score)
                    best_score = score, best = c;
            }
            for (size_t c = 0; c < corpus.count; c++)
                if (corpus.docs[c] != corpus.docs[best]) {
                    float score = cm_embed_cosine (query, vectors + c * dim, dim);
                    if (score > other_best)
                        other_best = score;
                }
            const char *found = corpus.names[corpus.docs[best]];
            bool ok = !strcmp (found, expected);
            printf ("chunk %4zu  %-4s %.3f (next document %.3f)  %-22s <- %s\n", sizes[s],
                    ok ? "ok" : "MISS", best_score, other_best, found, line);
            failed += !ok;
            checked++;
            free (query);
        }
        fflush (stdout);
        cr_assert_geq (checked, 10, "queries.tsv holds %d queries", checked);
        cr_expect_eq (failed, 0,
                      "%d of %d queries found another document first (chunks "
                      "of %zu characters)",
                      failed, checked, sizes[s]);
        free (queries);
        free (vectors);
        cm_embedder_destroy (&embedder);
        for (size_t c = 0; c < corpus.count; c++)
            free (corpus.texts[c]);
    }
}

//  A benchmark: prints MB/s; passes unless the embedder fails.
Test (cm_embed, builtin_throughput)
{
    char dir[1024], path[1200];
    s_corpus_dir (dir, sizeof dir);
    snprintf (path, sizeof path, "%s/tcp_congestion.md", dir);
    size_t size;
    char *text = s_read_file (path, &size);
    //  Chunks of ~1000 characters, like ingestion's.
    size_t chunk = size < 1000 ? size : 1000;
    float vector[CM_EMBED_BUILTIN_DIM];
    struct timespec t0, t1;
    size_t bytes = 0;
    clock_gettime (CLOCK_MONOTONIC, &t0);
    double elapsed = 0;
    while (elapsed < 0.5) {
        for (int i = 0; i < 200; i++) {
            size_t at = (size_t) (i * 97) % (size - chunk + 1);
            cm_embed_builtin (text + at, chunk, vector, CM_EMBED_BUILTIN_DIM);
            bytes += chunk;
        }
        clock_gettime (CLOCK_MONOTONIC, &t1);
        elapsed =
            (double) (t1.tv_sec - t0.tv_sec) + (double) (t1.tv_nsec - t0.tv_nsec) / 1e9;
    }
    //  And one long text (the whole corpus file repeated, ~1 MB).
    size_t big_size = 0;
    char *big = malloc (1100000);
    while (big_size + size < 1100000) {
        memcpy (big + big_size, text, size);
        big_size += size;
    }
    clock_gettime (CLOCK_MONOTONIC, &t0);
    cm_embed_builtin (big, big_size, vector, CM_EMBED_BUILTIN_DIM);
    clock_gettime (CLOCK_MONOTONIC, &t1);
    double big_elapsed =
        (double) (t1.tv_sec - t0.tv_sec) + (double) (t1.tv_nsec - t0.tv_nsec) / 1e9;
    printf ("builtin embedder: %.1f MB/s in %zu-byte chunks, %.1f MB/s on one %.1f MB "
            "text (one core)\n",
            (double) bytes / elapsed / 1e6, chunk, (double) big_size / big_elapsed / 1e6,
            (double) big_size / 1e6);
    fflush (stdout);
    cr_assert (fabs (s_norm (vector, CM_EMBED_BUILTIN_DIM) - 1.0) < 1e-5);
    free (big);
    free (text);
}

//  --- configuration
//  ----------------------------------------------------------------------

typedef struct {
    int64_t other;           //  something else of the program's
    cm_embed_config_t embed; //  EMBEDDING_*
} s_settings_t;

static const cm_conf_entry_t s_table[] = {
    CM_EMBED_CONF_ENTRIES (s_settings_t, embed),
    {NULL, 0, NULL, 0, 0, 0, NULL},
};

static void
s_unset_all (void)
{
    for (const cm_conf_entry_t *e = s_table; e->name; e++)
        unsetenv (e->name);
}

Test (cm_embed, config_from_the_environment)
{
    s_unset_all ();
    s_settings_t settings = {0};
    char err[256] = "";
    cr_assert_eq (cm_config_load (s_table, &settings, err, sizeof err), 0, "%s", err);
    cr_assert_str_eq (settings.embed.provider, "builtin");
    cr_assert_null (settings.embed.base_url);
    cr_assert_eq (settings.embed.batch_size, 64);
    cr_assert_eq (settings.embed.timeout_ms, 60000);
    cr_assert_eq (settings.embed.connect_timeout_ms, 10000);
    cr_assert_eq (cm_embed_config_check (&settings.embed, err, sizeof err), 0);
    cm_config_free (s_table, &settings);

    setenv ("EMBEDDING_PROVIDER", "openai", 1);
    cr_assert_eq (cm_config_load (s_table, &settings, err, sizeof err), 0, "%s", err);
    cr_assert_eq (cm_embed_config_check (&settings.embed, err, sizeof err), -1);
    cr_assert (strstr (err, "EMBEDDING_BASE_URL"), "%s", err);
    cm_config_free (s_table, &settings);

    setenv ("EMBEDDING_BASE_URL", "http://127.0.0.1:11434/v1", 1);
    setenv ("EMBEDDING_MODEL", "nomic-embed-text", 1);
    setenv ("EMBEDDING_BATCH_SIZE", "16", 1);
    cr_assert_eq (cm_config_load (s_table, &settings, err, sizeof err), 0, "%s", err);
    cr_assert_eq (cm_embed_config_check (&settings.embed, err, sizeof err), 0, "%s", err);
    cr_assert_eq (settings.embed.batch_size, 16);
    cm_embedder_t *embedder = cm_embedder_new (&settings.embed, err, sizeof err);
    cr_assert_not_null (embedder, "%s", err);
    cr_assert_str_eq (cm_embedder_name (embedder), "nomic-embed-text");
    cr_assert_str_eq (cm_embedder_provider (embedder), "openai");
    cr_assert_eq (cm_embedder_dim (embedder), 0, "not known before the first answer");
    cm_embedder_destroy (&embedder);
    cm_config_free (s_table, &settings);

    setenv ("EMBEDDING_BATCH_SIZE", "0", 1);
    cr_assert_eq (cm_config_load (s_table, &settings, err, sizeof err), -1);
    cr_assert (strstr (err, "EMBEDDING_BATCH_SIZE"), "%s", err);
    cm_config_free (s_table, &settings);
    s_unset_all ();
}

Test (cm_embed, bad_settings_name_the_variable)
{
    static const struct {
        const char *provider, *base_url, *api_key, *variable;
    } cases[] = {
        {"word2vec", NULL, NULL, "EMBEDDING_PROVIDER"},
        {"openai", NULL, NULL, "EMBEDDING_BASE_URL"},
        {"openai", "", NULL, "EMBEDDING_BASE_URL"},
        {"openai", "ftp://host/v1", NULL, "EMBEDDING_BASE_URL"},
        {"openai", "http://host/v1?x=1", NULL, "EMBEDDING_BASE_URL"},
        {"openai", "not a url", NULL, "EMBEDDING_BASE_URL"},
        {"openai", "http://host/v1", "key\nX-Evil: 1", "EMBEDDING_API_KEY"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        cm_embed_config_t config;
        cm_embed_config_defaults (&config);
        config.provider = cases[i].provider;
        config.base_url = cases[i].base_url;
        config.api_key = cases[i].api_key;
        char err[256] = "";
        cr_assert_null (cm_embedder_new (&config, err, sizeof err), "case %zu", i);
        cr_assert (strstr (err, cases[i].variable), "case %zu: %s", i, err);
    }
    //  builtin ignores the openai settings.
    cm_embed_config_t config;
    cm_embed_config_defaults (&config);
    config.base_url = "not a url";
    char err[256];
    cr_assert_eq (cm_embed_config_check (&config, err, sizeof err), 0);
}

//  --- openai, against tests/fake_llm
//  ------------------------------------------------------

TestSuite (cm_embed_openai, .init = fake_llm_suite_start, .fini = fake_llm_suite_stop,
           .timeout = 30);

static cm_embedder_t *
s_openai (const char *base_url, size_t batch_size, int64_t timeout_ms)
{
    cm_embed_config_t config;
    cm_embed_config_defaults (&config);
    config.provider = "openai";
    config.base_url = base_url;
    config.model = "fake-embed-model";
    config.api_key = "sk-embed-key";
    config.batch_size = (int64_t) batch_size;
    config.timeout_ms = timeout_ms;
    config.connect_timeout_ms = 2000;
    char err[256] = "";
    cm_embedder_t *embedder = cm_embedder_new (&config, err, sizeof err);
    cr_assert_not_null (embedder, "%s", err);
    return embedder;
}

static cm_embed_status_t
s_call (cm_embedder_t *embedder, const char *const *texts, size_t count,
        float **vectors_p, size_t *dim_p, char *err, size_t errlen)
{
    return cm_embed (embedder, texts, count, vectors_p, dim_p, NULL, NULL, err, errlen);
}

Test (cm_embed_openai, embeds_in_index_order)
{
    cm_embedder_t *embedder = s_openai (fake_llm_suite.base_url, 64, 10000);
    cr_assert_eq (cm_embedder_dim (embedder), 0);
    const char *texts[] = {"alpha", "beta", "gamma"};
    float *vectors = NULL;
    size_t dim = 0;
    char err[256] = "";
    cr_assert_eq (s_call (embedder, texts, 3, &vectors, &dim, err, sizeof err),
                  CM_EMBED_OK, "%s", err);
    cr_assert_eq (dim, 8, "the fake's dimension");
    cr_assert_eq (cm_embedder_dim (embedder), 8, "learned");
    for (size_t i = 0; i < 3; i++)
        cr_assert (fabs (s_norm (vectors + i * dim, dim) - 1.0) < 1e-5);
    cr_assert_neq (memcmp (vectors, vectors + dim, dim * sizeof (float)), 0);

    //  The fake answers in reverse order; the vectors follow the texts.
    const char *reversed[] = {"gamma", "beta", "alpha"};
    float *again = NULL;
    cr_assert_eq (s_call (embedder, reversed, 3, &again, &dim, err, sizeof err),
                  CM_EMBED_OK);
    for (size_t i = 0; i < 3; i++)
        cr_assert_eq (
            memcmp (vectors + i * dim, again + (2 - i) * dim, dim * sizeof (float)), 0,
            "text %zu", i);
    //  What the server saw: one request per call, the model, the key.
    json_t *stats = fake_llm_stats (&fake_llm_suite);
    cr_assert_eq (json_integer_value (json_object_get (stats, "embedding_requests")), 2);
    json_t *request = json_object_get (stats, "last_embedding_request");
    cr_assert_str_eq (json_string_value (json_object_get (request, "model")),
                      "fake-embed-model");
    cr_assert_eq (json_array_size (json_object_get (request, "input")), 3);
    cr_assert_eq (json_integer_value (json_object_get (stats, "requests")), 0,
                  "no chat completion");
    json_decref (stats);
    free (vectors);
    free (again);
    cm_embedder_destroy (&embedder);
}

Test (cm_embed_openai, batches)
{
    cm_embedder_t *embedder = s_openai (fake_llm_suite.base_url, 4, 10000);
    const char *texts[10];
    char storage[10][16];
    for (int i = 0; i < 10; i++) {
        snprintf (storage[i], sizeof storage[i], "text %d", i);
        texts[i] = storage[i];
    }
    float *vectors = NULL;
    size_t dim = 0;
    char err[256] = "";
    cr_assert_eq (s_call (embedder, texts, 10, &vectors, &dim, err, sizeof err),
                  CM_EMBED_OK, "%s", err);
    cr_assert_eq (fake_llm_stat (&fake_llm_suite, "embedding_requests"), 3, "4 + 4 + 2");
    cr_assert_eq (fake_llm_stat (&fake_llm_suite, "embedding_inputs"), 10);
    cr_assert_eq (fake_llm_stat (&fake_llm_suite, "embedding_max_batch"), 4);
    //  Each text's vector is the one it gets alone.
    for (int i = 0; i < 10; i++) {
        float *one = NULL;
        cr_assert_eq (s_call (embedder, &texts[i], 1, &one, &dim, err, sizeof err),
                      CM_EMBED_OK);
        cr_assert_eq (memcmp (one, vectors + (size_t) i * dim, dim * sizeof (float)), 0,
                      "text %d", i);
        free (one);
    }
    free (vectors);
    cm_embedder_destroy (&embedder);
}

//  One call with the fake in this embed_mode: the status, err filled.
static cm_embed_status_t
s_call_in_mode (const char *mode, char *err, size_t errlen)
{
    char control[128];
    snprintf (control, sizeof control, "{\"embed_mode\":\"%s\"}", mode);
    fake_llm_control (&fake_llm_suite, control);
    cm_embedder_t *embedder = s_openai (fake_llm_suite.base_url, 64, 10000);
    const char *text = "anything";
    float *vectors = (float *) 1;
    size_t dim = 0;
    cm_embed_status_t status = s_call (embedder, &text, 1, &vectors, &dim, err, errlen);
    if (status == CM_EMBED_OK)
        free (vectors);
    else
        cr_assert_null (vectors, "no vectors on failure");
    cm_embedder_destroy (&embedder);
    return status;
}

Test (cm_embed_openai, failures_are_classified)
{
    char err[256] = "";
    cr_assert_eq (s_call_in_mode ("fail500", err, sizeof err), CM_EMBED_UPSTREAM);
    cr_assert (strstr (err, "HTTP 500") && strstr (err, "failed on purpose"), "%s", err);
    cr_assert_eq (s_call_in_mode ("fail429", err, sizeof err), CM_EMBED_UPSTREAM);
    cr_assert (strstr (err, "429"), "%s", err);
    cr_assert_eq (s_call_in_mode ("malformed", err, sizeof err), CM_EMBED_UPSTREAM);
    cr_assert (strstr (err, "malformed"), "%s", err);
    cr_assert_eq (s_call_in_mode ("bad_request", err, sizeof err), CM_EMBED_REQUEST);
    cr_assert (strstr (err, "HTTP 400") && strstr (err, "context length"), "%s", err);
    cr_assert_null (strstr (err, "sk-embed-key"), "the key is never shown");
    cr_assert_eq (s_call_in_mode ("ok", err, sizeof err), CM_EMBED_OK, "%s", err);
    //  Error statuses: 500, 429, 400 (malformed came with 200).
    cr_assert_eq (fake_llm_stat (&fake_llm_suite, "embedding_failed"), 3);
}

Test (cm_embed_openai, fails_twice_then_succeeds)
{
    fake_llm_control (&fake_llm_suite, "{\"embed_fail_next\":2}");
    cm_embedder_t *embedder = s_openai (fake_llm_suite.base_url, 64, 10000);
    const char *text = "retry me";
    float *vectors = NULL;
    size_t dim = 0;
    char err[256] = "";
    cr_assert_eq (s_call (embedder, &text, 1, &vectors, &dim, err, sizeof err),
                  CM_EMBED_UPSTREAM);
    cr_assert_eq (s_call (embedder, &text, 1, &vectors, &dim, err, sizeof err),
                  CM_EMBED_UPSTREAM);
    cr_assert_eq (s_call (embedder, &text, 1, &vectors, &dim, err, sizeof err),
                  CM_EMBED_OK, "%s", err);
    cr_assert_eq (dim, 8);
    free (vectors);
    cr_assert_eq (fake_llm_stat (&fake_llm_suite, "embedding_requests"), 3);
    cm_embedder_destroy (&embedder);
}

Test (cm_embed_openai, a_failing_batch_fails_the_call)
{
    //  The second of three batches fails: nothing is returned.
    cm_embedder_t *embedder = s_openai (fake_llm_suite.base_url, 2, 10000);
    const char *texts[] = {"a", "b", "c", "d", "e"};
    float *vectors = NULL;
    size_t dim = 0;
    char err[256] = "";
    cr_assert_eq (s_call (embedder, texts, 2, &vectors, &dim, err, sizeof err),
                  CM_EMBED_OK);
    free (vectors);
    fake_llm_control (&fake_llm_suite, "{\"embed_fail_next\":1,\"reset\":true}");
    cr_assert_eq (s_call (embedder, texts, 5, &vectors, &dim, err, sizeof err),
                  CM_EMBED_UPSTREAM);
    cr_assert_null (vectors);
    cr_assert_eq (fake_llm_stat (&fake_llm_suite, "embedding_requests"), 1,
                  "stopped at the first");
    cm_embedder_destroy (&embedder);
}

Test (cm_embed_openai, a_changed_dimension_is_an_upstream_failure)
{
    cm_embedder_t *embedder = s_openai (fake_llm_suite.base_url, 64, 10000);
    const char *text = "dimension";
    float *vectors = NULL;
    size_t dim = 0;
    char err[256] = "";
    cr_assert_eq (s_call (embedder, &text, 1, &vectors, &dim, err, sizeof err),
                  CM_EMBED_OK);
    free (vectors);
    fake_llm_control (&fake_llm_suite, "{\"embed_dim\":16}");
    cr_assert_eq (s_call (embedder, &text, 1, &vectors, &dim, err, sizeof err),
                  CM_EMBED_UPSTREAM);
    cr_assert (strstr (err, "from 8 to 16"), "%s", err);
    cr_assert_eq (cm_embedder_dim (embedder), 8);
    //  A new embedder learns the new one.
    cm_embedder_destroy (&embedder);
    embedder = s_openai (fake_llm_suite.base_url, 64, 10000);
    cr_assert_eq (s_call (embedder, &text, 1, &vectors, &dim, err, sizeof err),
                  CM_EMBED_OK);
    cr_assert_eq (dim, 16);
    free (vectors);
    cm_embedder_destroy (&embedder);
}

Test (cm_embed_openai, refused_connection_is_an_upstream_failure)
{
    //  A port nobody listens on: bind one, note it, close it.
    int fd = socket (AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in addr = {.sin_family = AF_INET,
                               .sin_addr.s_addr = htonl (INADDR_LOOPBACK)};
    cr_assert_eq (bind (fd, (struct sockaddr *) &addr, sizeof addr), 0);
    socklen_t len = sizeof addr;
    getsockname (fd, (struct sockaddr *) &addr, &len);
    close (fd);
    char url[64];
    snprintf (url, sizeof url, "http://127.0.0.1:%d/v1", ntohs (addr.sin_port));
    cm_embedder_t *embedder = s_openai (url, 64, 10000);
    const char *text = "nobody home";
    float *vectors = NULL;
    size_t dim = 0;
    char err[256] = "";
    cr_assert_eq (s_call (embedder, &text, 1, &vectors, &dim, err, sizeof err),
                  CM_EMBED_UPSTREAM);
    cr_assert (strstr (err, "cannot be reached"), "%s", err);
    cm_embedder_destroy (&embedder);
}

Test (cm_embed_openai, timeout_is_an_upstream_failure)
{
    fake_llm_control (&fake_llm_suite, "{\"embed_mode\":\"hang\"}");
    cm_embedder_t *embedder = s_openai (fake_llm_suite.base_url, 64, 300);
    const char *text = "too slow";
    float *vectors = NULL;
    size_t dim = 0;
    char err[256] = "";
    cr_assert_eq (s_call (embedder, &text, 1, &vectors, &dim, err, sizeof err),
                  CM_EMBED_UPSTREAM);
    cr_assert (strstr (err, "EMBEDDING_TIMEOUT_MS"), "%s", err);
    cm_embedder_destroy (&embedder);
}

typedef struct {
    atomic_int polls; //  times cancelled() was asked
    int cancel_after; //  say stop from this poll on
} s_cancel_t;

static bool
s_cancelled (void *arg)
{
    s_cancel_t *cancel = (s_cancel_t *) arg;
    return atomic_fetch_add (&cancel->polls, 1) + 1 >= cancel->cancel_after;
}

static bool
s_wait_stat (const char *name, int64_t value, int64_t timeout_ms)
{
    int64_t until = fake_llm_now_ms () + timeout_ms;
    while (fake_llm_now_ms () < until) {
        if (fake_llm_stat (&fake_llm_suite, name) == value)
            return true;
        usleep (10000);
    }
    return false;
}

Test (cm_embed_openai, cancel_aborts_the_request)
{
    //  The upstream says nothing; the caller gives up after a few polls
    //  (the first is before the request, the next every ~10 ms during it).
    fake_llm_control (&fake_llm_suite, "{\"embed_mode\":\"hang\"}");
    cm_embedder_t *embedder = s_openai (fake_llm_suite.base_url, 64, 60000);
    const char *text = "never mind";
    float *vectors = NULL;
    size_t dim = 0;
    char err[256] = "";
    s_cancel_t cancel = {0, 10};
    cr_assert_eq (cm_embed (embedder, &text, 1, &vectors, &dim, s_cancelled, &cancel, err,
                            sizeof err),
                  CM_EMBED_CANCELLED, "%s", err);
    cr_assert_null (vectors);
    //  The upstream saw its client leave.
    cr_assert (s_wait_stat ("embedding_disconnects", 1, 5000),
               "the fake did not see the connection close");
    //  Cancelled before it starts: no request at all.
    fake_llm_control (&fake_llm_suite, "{\"embed_mode\":\"ok\",\"reset\":true}");
    s_cancel_t at_once = {0, 1};
    cr_assert_eq (cm_embed (embedder, &text, 1, &vectors, &dim, s_cancelled, &at_once,
                            err, sizeof err),
                  CM_EMBED_CANCELLED);
    cr_assert_eq (fake_llm_stat (&fake_llm_suite, "embedding_requests"), 0);
    cm_embedder_destroy (&embedder);
}

Test (cm_embed_openai, invalid_utf8_is_the_request_fault)
{
    cm_embedder_t *embedder = s_openai (fake_llm_suite.base_url, 64, 10000);
    const char *texts[] = {"fine", "bad \xff\xfe bytes"};
    float *vectors = NULL;
    size_t dim = 0;
    char err[256] = "";
    cr_assert_eq (s_call (embedder, texts, 2, &vectors, &dim, err, sizeof err),
                  CM_EMBED_REQUEST);
    cr_assert (strstr (err, "UTF-8"), "%s", err);
    cr_assert_eq (fake_llm_stat (&fake_llm_suite, "embedding_requests"), 0,
                  "nothing sent");
    cm_embedder_destroy (&embedder);
}

//  Several threads share one openai embedder.
typedef struct {
    cm_embedder_t *embedder; //  shared
    atomic_int failures;     //  calls that did not succeed
} s_shared_t;

static void *
s_openai_thread (void *arg)
{
    s_shared_t *shared = (s_shared_t *) arg;
    for (int i = 0; i < 10; i++) {
        char text[32];
        snprintf (text, sizeof text, "thread text %d", i);
        const char *texts[] = {text};
        float *vectors = NULL;
        size_t dim = 0;
        char err[256];
        if (cm_embed (shared->embedder, texts, 1, &vectors, &dim, NULL, NULL, err,
                      sizeof err) != CM_EMBED_OK ||
            dim != 8)
            atomic_fetch_add (&shared->failures, 1);
        free (vectors);
    }
    return NULL;
}

Test (cm_embed_openai, concurrent_calls)
{
    s_shared_t shared = {s_openai (fake_llm_suite.base_url, 64, 10000), 0};
    pthread_t threads[4];
    for (int i = 0; i < 4; i++)
        pthread_create (&threads[i], NULL, s_openai_thread, &shared);
    for (int i = 0; i < 4; i++)
        pthread_join (threads[i], NULL);
    cr_assert_eq (atomic_load (&shared.failures), 0);
    cr_assert_eq (fake_llm_stat (&fake_llm_suite, "embedding_requests"), 40);
    cm_embedder_destroy (&shared.embedder);
}
