/*  test_cm_storage_docs.c: documents, chunks, workspace documents, the
    vector-set version and loader, and ingestion jobs, on a real SQLite
    file in a temp dir; two connections (and a child process) on one
    file see each other's writes. */
#include <criterion/criterion.h>
#include "cm_storage_docs.h"
#include "test_dir.h"
#include <sys/wait.h>
#include <unistd.h>

#define S_DIM 4

static char s_dir[64];

static void
s_setup (void)
{
    test_dir_make (s_dir, sizeof s_dir, "/tmp/llmrt-docs-XXXXXX");
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
s_id (const json_t *row)
{
    return json_integer_value (json_object_get (row, "id"));
}

static const char *
s_str (const json_t *row, const char *key)
{
    return json_string_value (json_object_get (row, key));
}

static int64_t
s_workspace (cm_storage_t *storage, const char *name)
{
    json_t *fields = json_pack ("{s:s}", "name", name);
    json_t *workspace = NULL;
    cr_assert_eq (cm_storage_workspace_create (storage, fields, &workspace),
                  CM_STORAGE_OK);
    int64_t id = s_id (workspace);
    json_decref (fields);
    json_decref (workspace);
    return id;
}

//  A document at location with `chunks` chunks ("<location> #<i>", vector
//  (i, 1, 0, 0)); embedded when asked. Returns its id.
static int64_t
s_document (cm_storage_t *storage, const char *location, size_t chunks, bool embedded)
{
    json_t *fields = json_pack ("{s:s, s:s, s:s, s:i}", "location", location, "name",
                                location, "title", location, "wordCount", 42);
    json_t *document = NULL;
    cr_assert_eq (cm_storage_document_add (storage, fields, "the text", &document),
                  CM_STORAGE_OK, "%s", cm_storage_errmsg (storage));
    int64_t id = s_id (document);
    json_decref (fields);
    json_decref (document);
    char **texts = cm_calloc (chunks + 1, sizeof *texts);
    float *vectors = cm_calloc ((chunks + 1) * S_DIM, sizeof *vectors);
    for (size_t i = 0; i < chunks; i++) {
        texts[i] = cm_malloc (128);
        snprintf (texts[i], 128, "%s #%zu", location, i);
        vectors[i * S_DIM] = (float) i;
        vectors[i * S_DIM + 1] = 1;
    }
    size_t stored = 0;
    cr_assert_eq (cm_storage_chunks_put (storage, id, 0, chunks,
                                         (const char *const *) texts, vectors, S_DIM,
                                         &stored),
                  CM_STORAGE_OK);
    cr_assert_eq (stored, chunks);
    for (size_t i = 0; i < chunks; i++)
        free (texts[i]);
    free (texts);
    free (vectors);
    if (embedded)
        cr_assert_eq (cm_storage_document_set_embedded (storage, id), CM_STORAGE_OK);
    return id;
}

static int64_t
s_version (cm_storage_t *storage, int64_t workspace_id)
{
    int64_t version = -1;
    cr_assert_eq (cm_storage_vectors_version (storage, workspace_id, &version),
                  CM_STORAGE_OK);
    return version;
}

typedef struct {
    size_t rows;
    char texts[16][128];
    int64_t positions[16];
    float first[16];
    bool has_document;
} s_loaded_t;

static void
s_collect (const cm_storage_chunk_t *chunk, void *arg)
{
    s_loaded_t *loaded = arg;
    cr_assert_eq (chunk->dim, S_DIM);
    char id[37];
    cm_storage_chunk_id (chunk->document_id, chunk->position, id);
    cr_assert_str_eq (chunk->id, id);
    if (loaded->rows < 16) {
        snprintf (loaded->texts[loaded->rows], 128, "%s", chunk->text ? chunk->text : "");
        loaded->positions[loaded->rows] = chunk->position;
        memcpy (&loaded->first[loaded->rows], chunk->vector, sizeof (float));
    }
    loaded->has_document = chunk->title && chunk->word_count == 42;
    loaded->rows++;
}

//  Chunks a workspace sees now.
static size_t
s_seen (cm_storage_t *storage, int64_t workspace_id)
{
    s_loaded_t loaded = {0};
    int64_t version;
    cr_assert_eq (
        cm_storage_vectors_load (storage, workspace_id, 0, &version, s_collect, &loaded),
        CM_STORAGE_OK);
    cr_assert_eq (version, s_version (storage, workspace_id));
    return loaded.rows;
}

TestSuite (cm_storage_docs, .init = s_setup, .fini = s_teardown);

Test (cm_storage_docs, document_add_get_content)
{
    cm_storage_t *storage = s_open ();
    json_t *fields = json_pack (
        "{s:s, s:s, s:s, s:s, s:s, s:s, s:s, s:s, s:s, s:i, s:i, s:{s:s}}", "location",
        "custom-documents/a.json", "name", "a.txt", "url", "file:///a.txt", "title", "A",
        "docAuthor", "Ann", "description", "about a", "docSource", "upload",
        "chunkSource", "a.txt", "published", "2024-01-01", "wordCount", 3,
        "token_count_estimate", 5, "metadata", "k", "v");
    json_t *document = NULL;
    cr_assert_eq (cm_storage_document_add (storage, fields, "one two three", &document),
                  CM_STORAGE_OK);
    cr_assert_str_eq (s_str (document, "location"), "custom-documents/a.json");
    cr_assert_str_eq (s_str (document, "docAuthor"), "Ann");
    cr_assert_eq (json_integer_value (json_object_get (document, "wordCount")), 3);
    cr_assert_eq (json_integer_value (json_object_get (document, "token_count_estimate")),
                  5);
    cr_assert_str_eq (s_str (json_object_get (document, "metadata"), "k"), "v");
    cr_assert (json_is_false (json_object_get (document, "embedded")));
    cr_assert_null (json_object_get (document, "pageContent"), "no text unless asked");

    json_t *full = NULL;
    cr_assert_eq (
        cm_storage_document_get (storage, "custom-documents/a.json", true, &full),
        CM_STORAGE_OK);
    cr_assert_str_eq (s_str (full, "pageContent"), "one two three");
    char *content = NULL;
    cr_assert_eq (
        cm_storage_document_content (storage, "custom-documents/a.json", &content),
        CM_STORAGE_OK);
    cr_assert_str_eq (content, "one two three");
    free (content);

    //  Taken location, missing fields, unknown location.
    json_t *again = NULL;
    cr_assert_eq (cm_storage_document_add (storage, fields, "x", &again),
                  CM_STORAGE_CONFLICT);
    cr_assert_null (again);
    json_t *nameless = json_pack ("{s:s}", "location", "b");
    cr_assert_eq (cm_storage_document_add (storage, nameless, "x", NULL),
                  CM_STORAGE_INVALID);
    cr_assert_str_eq (cm_storage_errmsg (storage), "name is required");
    cr_assert_eq (cm_storage_document_get (storage, "nope", false, &again),
                  CM_STORAGE_NOT_FOUND);
    cr_assert_eq (cm_storage_document_content (storage, "nope", &content),
                  CM_STORAGE_NOT_FOUND);
    cr_assert_eq (cm_storage_document_set_embedded (storage, 999), CM_STORAGE_NOT_FOUND);
    cr_assert_eq (cm_storage_document_set_embedded (storage, s_id (document)),
                  CM_STORAGE_OK);
    cr_assert_eq (cm_storage_document_set_embedded (storage, s_id (document)),
                  CM_STORAGE_OK, "marking twice is fine");
    cr_assert_eq (cm_storage_document_delete (storage, "custom-documents/a.json"),
                  CM_STORAGE_OK);
    cr_assert_eq (cm_storage_document_delete (storage, "custom-documents/a.json"),
                  CM_STORAGE_NOT_FOUND);

    json_decref (nameless);
    json_decref (full);
    json_decref (document);
    json_decref (fields);
    cm_storage_destroy (&storage);
}

Test (cm_storage_docs, chunks_put_twice_stores_once)
{
    cm_storage_t *storage = s_open ();
    int64_t doc = s_document (storage, "d", 3, false);
    cr_assert_eq (cm_storage_chunks_count (storage, doc), 3);

    //  The same chunks again (a job that runs twice): nothing new.
    const char *texts[] = {"changed 0", "changed 1", "changed 2", "new 3", "new 4"};
    float vectors[5 * S_DIM] = {0};
    size_t stored = 99;
    cr_assert_eq (
        cm_storage_chunks_put (storage, doc, 0, 3, texts, vectors, S_DIM, &stored),
        CM_STORAGE_OK);
    cr_assert_eq (stored, 0);
    cr_assert_eq (cm_storage_chunks_count (storage, doc), 3);
    //  An overlapping batch stores only the new positions.
    cr_assert_eq (
        cm_storage_chunks_put (storage, doc, 2, 3, texts + 2, vectors, S_DIM, &stored),
        CM_STORAGE_OK);
    cr_assert_eq (stored, 2);
    cr_assert_eq (cm_storage_chunks_count (storage, doc), 5);

    //  The first text stays; ids are derived from document and position.
    s_loaded_t loaded = {0};
    cr_assert_eq (cm_storage_chunk_read (storage, doc, 2, s_collect, &loaded),
                  CM_STORAGE_OK);
    cr_assert_str_eq (loaded.texts[0], "d #2");
    cr_assert (loaded.has_document);
    cr_assert_eq (cm_storage_chunk_read (storage, doc, 9, s_collect, &loaded),
                  CM_STORAGE_NOT_FOUND);
    char a[37], b[37], c[37];
    cm_storage_chunk_id (doc, 2, a);
    cm_storage_chunk_id (doc, 2, b);
    cm_storage_chunk_id (doc, 3, c);
    cr_assert_str_eq (a, b);
    cr_assert_str_neq (a, c);
    cr_assert_eq (strlen (a), 36);
    cr_assert_eq (a[14], '8', "a version 8 UUID: %s", a);

    //  Refused input; unknown document; nothing half-stored.
    const char *holey[] = {"x", NULL};
    cr_assert_eq (
        cm_storage_chunks_put (storage, doc, 10, 2, holey, vectors, S_DIM, NULL),
        CM_STORAGE_INVALID);
    cr_assert_eq (cm_storage_chunks_put (storage, doc, 10, 1, texts, vectors, 0, NULL),
                  CM_STORAGE_INVALID);
    cr_assert_eq (cm_storage_chunks_put (storage, 999, 0, 1, texts, vectors, S_DIM, NULL),
                  CM_STORAGE_NOT_FOUND);
    cr_assert_eq (cm_storage_chunks_count (storage, doc), 5);
    cr_assert_eq (cm_storage_chunks_put (storage, doc, 0, 0, NULL, NULL, S_DIM, &stored),
                  CM_STORAGE_OK);
    cr_assert_eq (stored, 0);
    cm_storage_destroy (&storage);
}

Test (cm_storage_docs, link_unlink_list_and_version)
{
    cm_storage_t *storage = s_open ();
    int64_t ws = s_workspace (storage, "Docs");
    int64_t other = s_workspace (storage, "Other");
    int64_t v0 = s_version (storage, ws);
    int64_t doc = s_document (storage, "custom-documents/x.json", 2, false);
    cr_assert_eq (s_version (storage, ws), v0, "an unlinked document changes nothing");

    json_t *link = NULL;
    cr_assert_eq (
        cm_storage_workspace_doc_link (storage, ws, "custom-documents/x.json", &link),
        CM_STORAGE_OK);
    cr_assert_str_eq (s_str (link, "filename"), "x.json");
    cr_assert_str_eq (s_str (link, "docpath"), "custom-documents/x.json");
    cr_assert_eq (json_integer_value (json_object_get (link, "workspaceId")), ws);
    cr_assert_eq (strlen (s_str (link, "docId")), 36);
    cr_assert_str_eq (s_str (json_object_get (link, "metadata"), "title"),
                      "custom-documents/x.json");
    cr_assert (json_is_false (json_object_get (link, "pinned")));
    int64_t v1 = s_version (storage, ws);
    cr_assert_gt (v1, v0);
    cr_assert_eq (s_seen (storage, ws), 0, "not embedded yet: not visible");

    //  Linking again returns the same link and changes nothing.
    json_t *again = NULL;
    cr_assert_eq (
        cm_storage_workspace_doc_link (storage, ws, "custom-documents/x.json", &again),
        CM_STORAGE_OK);
    cr_assert (json_equal (link, again));
    json_decref (again);
    again = NULL;
    cr_assert_eq (s_version (storage, ws), v1);

    //  Embedded: visible; more chunks: visible, version moves each time.
    cr_assert_eq (cm_storage_document_set_embedded (storage, doc), CM_STORAGE_OK);
    int64_t v2 = s_version (storage, ws);
    cr_assert_gt (v2, v1);
    cr_assert_eq (s_seen (storage, ws), 2);
    const char *texts[] = {"late"};
    float vector[S_DIM] = {1, 0, 0, 0};
    cr_assert_eq (cm_storage_chunks_put (storage, doc, 2, 1, texts, vector, S_DIM, NULL),
                  CM_STORAGE_OK);
    int64_t v3 = s_version (storage, ws);
    cr_assert_gt (v3, v2);
    cr_assert_eq (s_seen (storage, ws), 3);
    cr_assert_eq (cm_storage_chunks_put (storage, doc, 2, 1, texts, vector, S_DIM, NULL),
                  CM_STORAGE_OK);
    cr_assert_eq (s_version (storage, ws), v3, "a chunk stored already changes nothing");
    cr_assert_eq (s_version (storage, other), 0, "other workspaces are untouched");
    cr_assert_eq (s_seen (storage, other), 0);

    //  The loader hands over texts and document fields when asked.
    s_loaded_t loaded = {0};
    int64_t version;
    cr_assert_eq (cm_storage_vectors_load (
                      storage, ws, CM_STORAGE_CHUNK_TEXT | CM_STORAGE_CHUNK_DOCUMENT,
                      &version, s_collect, &loaded),
                  CM_STORAGE_OK);
    cr_assert_eq (version, v3);
    cr_assert_eq (loaded.rows, 3);
    cr_assert_str_eq (loaded.texts[0], "custom-documents/x.json #0");
    cr_assert_eq (loaded.positions[1], 1);
    cr_assert_eq (loaded.first[1], 1.0f);
    cr_assert (loaded.has_document);

    //  List (a second document, linked later, comes after).
    s_document (storage, "custom-documents/y.json", 1, true);
    cr_assert_eq (
        cm_storage_workspace_doc_link (storage, ws, "custom-documents/y.json", NULL),
        CM_STORAGE_OK);
    cr_assert_eq (s_seen (storage, ws), 4);
    json_t *links = NULL;
    cr_assert_eq (cm_storage_workspace_doc_list (storage, ws, &links), CM_STORAGE_OK);
    cr_assert_eq (json_array_size (links), 2);
    cr_assert_str_eq (s_str (json_array_get (links, 0), "docpath"),
                      "custom-documents/x.json");
    cr_assert_str_eq (s_str (json_array_get (links, 1), "docpath"),
                      "custom-documents/y.json");

    //  Unlink: gone from the set; the version moves.
    int64_t v4 = s_version (storage, ws);
    cr_assert_eq (
        cm_storage_workspace_doc_unlink (storage, ws, "custom-documents/x.json"),
        CM_STORAGE_OK);
    cr_assert_gt (s_version (storage, ws), v4);
    cr_assert_eq (s_seen (storage, ws), 1);
    cr_assert_eq (
        cm_storage_workspace_doc_unlink (storage, ws, "custom-documents/x.json"),
        CM_STORAGE_NOT_FOUND);

    //  Deleting a linked document empties the set too.
    int64_t v5 = s_version (storage, ws);
    cr_assert_eq (cm_storage_document_delete (storage, "custom-documents/y.json"),
                  CM_STORAGE_OK);
    cr_assert_gt (s_version (storage, ws), v5);
    cr_assert_eq (s_seen (storage, ws), 0);

    //  Unknown workspace or document.
    cr_assert_eq (
        cm_storage_workspace_doc_link (storage, 999, "custom-documents/x.json", &again),
        CM_STORAGE_NOT_FOUND);
    cr_assert_null (again);
    cr_assert_eq (cm_storage_workspace_doc_link (storage, ws, "nope", &again),
                  CM_STORAGE_NOT_FOUND);
    cr_assert_str_eq (cm_storage_errmsg (storage), "no document at nope");
    cr_assert_eq (cm_storage_vectors_version (storage, 999, &version),
                  CM_STORAGE_NOT_FOUND);
    cr_assert_eq (cm_storage_vectors_load (storage, 999, 0, &version, s_collect, &loaded),
                  CM_STORAGE_NOT_FOUND);

    json_decref (links);
    json_decref (link);
    cm_storage_destroy (&storage);
}

Test (cm_storage_docs, add_and_delete_in_one_go_still_moves_the_version)
{
    //  Unlink one document and link another: the count of links stays, the
    //  version must not.
    cm_storage_t *storage = s_open ();
    int64_t ws = s_workspace (storage, "Docs");
    s_document (storage, "a", 1, true);
    s_document (storage, "b", 1, true);
    cr_assert_eq (cm_storage_workspace_doc_link (storage, ws, "a", NULL), CM_STORAGE_OK);
    int64_t before = s_version (storage, ws);
    cr_assert_eq (cm_storage_workspace_doc_unlink (storage, ws, "a"), CM_STORAGE_OK);
    cr_assert_eq (cm_storage_workspace_doc_link (storage, ws, "b", NULL), CM_STORAGE_OK);
    cr_assert_gt (s_version (storage, ws), before);
    cm_storage_destroy (&storage);
}

//  The count of workspace id's links in counts (0 when it is not there).
static int64_t
s_count_of (const json_t *counts, int64_t workspace_id)
{
    char key[32];
    snprintf (key, sizeof key, "%lld", (long long) workspace_id);
    return json_integer_value (json_object_get (counts, key));
}

Test (cm_storage_docs, doc_counts_of_every_workspace_in_one_read)
{
    cm_storage_t *storage = s_open ();
    json_t *counts = NULL;
    cr_assert_eq (cm_storage_workspace_doc_counts (storage, &counts), CM_STORAGE_OK);
    cr_assert_eq (json_object_size (counts), 0, "no workspace, no count");
    json_decref (counts);

    //  Two documents in one workspace (one not embedded yet: it is listed
    //  all the same), one of them shared with a second; a third has none.
    int64_t busy = s_workspace (storage, "Busy");
    int64_t shared = s_workspace (storage, "Shared");
    int64_t empty = s_workspace (storage, "Empty");
    s_document (storage, "custom-documents/a.json", 1, true);
    s_document (storage, "custom-documents/b.json", 1, false);
    cr_assert_eq (
        cm_storage_workspace_doc_link (storage, busy, "custom-documents/a.json", NULL),
        CM_STORAGE_OK);
    cr_assert_eq (
        cm_storage_workspace_doc_link (storage, busy, "custom-documents/b.json", NULL),
        CM_STORAGE_OK);
    cr_assert_eq (
        cm_storage_workspace_doc_link (storage, shared, "custom-documents/a.json", NULL),
        CM_STORAGE_OK);
    cr_assert_eq (cm_storage_workspace_doc_counts (storage, &counts), CM_STORAGE_OK);
    cr_assert_eq (s_count_of (counts, busy), 2);
    cr_assert_eq (s_count_of (counts, shared), 1);
    cr_assert_eq (s_count_of (counts, empty), 0);
    cr_assert_eq (json_object_size (counts), 2, "only workspaces with documents");
    json_t *list = NULL;
    cr_assert_eq (cm_storage_workspace_doc_list (storage, busy, &list), CM_STORAGE_OK);
    cr_assert_eq ((size_t) s_count_of (counts, busy), json_array_size (list),
                  "the count is the length of the workspace's documents list");
    json_decref (list);
    json_decref (counts);

    //  Unlinking counts down; the other workspace keeps its link.
    cr_assert_eq (
        cm_storage_workspace_doc_unlink (storage, busy, "custom-documents/a.json"),
        CM_STORAGE_OK);
    cr_assert_eq (cm_storage_workspace_doc_counts (storage, &counts), CM_STORAGE_OK);
    cr_assert_eq (s_count_of (counts, busy), 1);
    cr_assert_eq (s_count_of (counts, shared), 1);
    json_decref (counts);
    cm_storage_destroy (&storage);
}

Test (cm_storage_docs, job_lifecycle)
{
    cm_storage_t *storage = s_open ();
    json_t *slugs = json_pack ("[s, s]", "docs", "notes");
    json_t *job = NULL;
    cr_assert_eq (cm_storage_job_create (storage, "job-1", "custom-documents/a.json",
                                         "queue", NULL, slugs, 3, &job),
                  CM_STORAGE_OK);
    cr_assert_str_eq (s_str (job, "id"), "job-1");
    cr_assert_str_eq (s_str (job, "state"), "queued");
    cr_assert_str_eq (s_str (job, "path"), "queue");
    cr_assert (json_equal (json_object_get (job, "workspaces"), slugs));
    cr_assert_eq (json_integer_value (json_object_get (job, "attempts")), 0);
    cr_assert_eq (json_integer_value (json_object_get (job, "maxAttempts")), 3);
    cr_assert (json_is_null (json_object_get (job, "finishedAt")));
    cr_assert (json_is_null (json_object_get (job, "error")));
    json_decref (job);

    //  Taken id; refused input; a new id when none is given.
    cr_assert_eq (
        cm_storage_job_create (storage, "job-1", "x", "queue", NULL, NULL, 1, NULL),
        CM_STORAGE_CONFLICT);
    cr_assert_eq (
        cm_storage_job_create (storage, NULL, "x", "sideways", NULL, NULL, 1, NULL),
        CM_STORAGE_INVALID);
    cr_assert_eq (
        cm_storage_job_create (storage, NULL, "x", "queue", NULL, NULL, 0, NULL),
        CM_STORAGE_INVALID);
    cr_assert_eq (cm_storage_job_create (storage, NULL, "custom-documents/a.json",
                                         "fallback", NULL, NULL, 1, &job),
                  CM_STORAGE_OK);
    cr_assert_eq (strlen (s_str (job, "id")), 36);
    cr_assert_eq (json_array_size (json_object_get (job, "workspaces")), 0);
    json_decref (job);

    //  Active, progress, a failed attempt, active again, completed.
    cr_assert_eq (
        cm_storage_job_update (storage, "job-1", "active", 1, 0, 10, NULL, &job),
        CM_STORAGE_OK);
    cr_assert_str_eq (s_str (job, "state"), "active");
    cr_assert_eq (json_integer_value (json_object_get (job, "chunksTotal")), 10);
    json_decref (job);
    cr_assert_eq (cm_storage_job_update (storage, "job-1", NULL, -1, 4, -1, NULL, &job),
                  CM_STORAGE_OK);
    cr_assert_str_eq (s_str (job, "state"), "active");
    cr_assert_eq (json_integer_value (json_object_get (job, "attempts")), 1);
    cr_assert_eq (json_integer_value (json_object_get (job, "chunksDone")), 4);
    cr_assert_eq (json_integer_value (json_object_get (job, "chunksTotal")), 10);
    json_decref (job);
    cr_assert_eq (
        cm_storage_job_update (storage, "job-1", "failed", -1, -1, -1, "boom", &job),
        CM_STORAGE_OK);
    cr_assert_str_eq (s_str (job, "error"), "boom");
    cr_assert (json_is_string (json_object_get (job, "finishedAt")));
    json_decref (job);
    cr_assert_eq (cm_storage_job_update (storage, "job-1", "active", 2, -1, -1, "", &job),
                  CM_STORAGE_OK);
    cr_assert (json_is_null (json_object_get (job, "error")));
    cr_assert (json_is_null (json_object_get (job, "finishedAt")));
    cr_assert_eq (json_integer_value (json_object_get (job, "attempts")), 2);
    json_decref (job);
    cr_assert_eq (
        cm_storage_job_update (storage, "job-1", "completed", -1, 10, -1, NULL, &job),
        CM_STORAGE_OK);
    const char *finished = s_str (job, "finishedAt");
    cr_assert (finished && strlen (finished) == 24);
    json_t *read = NULL;
    cr_assert_eq (cm_storage_job_get (storage, "job-1", &read), CM_STORAGE_OK);
    cr_assert (json_equal (read, job));
    json_decref (read);
    json_decref (job);

    cr_assert_eq (
        cm_storage_job_update (storage, "job-1", "sleeping", -1, -1, -1, NULL, NULL),
        CM_STORAGE_INVALID);
    cr_assert_eq (
        cm_storage_job_update (storage, "nope", "active", -1, -1, -1, NULL, NULL),
        CM_STORAGE_NOT_FOUND);
    cr_assert_eq (cm_storage_job_get (storage, "nope", &job), CM_STORAGE_NOT_FOUND);

    json_t *jobs = NULL;
    cr_assert_eq (
        cm_storage_jobs_for_location (storage, "custom-documents/a.json", &jobs),
        CM_STORAGE_OK);
    cr_assert_eq (json_array_size (jobs), 2);
    cr_assert_str_eq (s_str (json_array_get (jobs, 0), "id"), "job-1");
    json_decref (jobs);

    //  Stale: the queued fallback job, not the completed one; none when the
    //  limit is an hour.
    const char *states[] = {"queued", "active"};
    cr_assert_eq (cm_storage_jobs_stale (storage, states, 2, 0, &jobs), CM_STORAGE_OK);
    cr_assert_eq (json_array_size (jobs), 1);
    cr_assert_str_eq (s_str (json_array_get (jobs, 0), "path"), "fallback");
    json_decref (jobs);
    cr_assert_eq (cm_storage_jobs_stale (storage, states, 2, 3600 * 1000, &jobs),
                  CM_STORAGE_OK);
    cr_assert_eq (json_array_size (jobs), 0);
    json_decref (jobs);
    const char *done[] = {"completed"};
    cr_assert_eq (cm_storage_jobs_stale (storage, done, 1, 0, &jobs), CM_STORAGE_OK);
    cr_assert_eq (json_array_size (jobs), 1);
    json_decref (jobs);

    json_decref (slugs);
    cm_storage_destroy (&storage);
}

//  The locations linked to a workspace, in link order, comma-separated.
static char *
s_linked (cm_storage_t *storage, int64_t workspace_id)
{
    static char locations[256];
    locations[0] = 0;
    json_t *links = NULL;
    cr_assert_eq (cm_storage_workspace_doc_list (storage, workspace_id, &links),
                  CM_STORAGE_OK);
    size_t i;
    json_t *link;
    json_array_foreach (links, i, link)
    {
        if (i)
            strcat (locations, ",");
        strcat (locations, s_str (link, "docpath"));
    }
    json_decref (links);
    return locations;
}

Test (cm_storage_docs, a_documents_update_is_all_or_nothing)
{
    cm_storage_t *storage = s_open ();
    int64_t ws = s_workspace (storage, "Docs");
    s_document (storage, "a", 1, true);
    s_document (storage, "b", 1, true);
    cr_assert_eq (cm_storage_workspace_doc_link (storage, ws, "a", NULL), CM_STORAGE_OK);
    //  One added location is no document: nothing changes, not even the
    //  delete that came before it.
    json_t *deletes = json_pack ("[s]", "a");
    json_t *adds = json_pack ("[s, s]", "b", "nope");
    cr_assert_eq (cm_storage_workspace_docs_update (storage, ws, deletes, adds),
                  CM_STORAGE_NOT_FOUND);
    cr_assert (strstr (cm_storage_errmsg (storage), "nope"), "%s",
               cm_storage_errmsg (storage));
    cr_assert_str_eq (s_linked (storage, ws), "a");
    json_decref (adds);
    //  Deletes first, then adds: a location in both stays linked.
    adds = json_pack ("[s, s]", "b", "a");
    cr_assert_eq (cm_storage_workspace_docs_update (storage, ws, deletes, adds),
                  CM_STORAGE_OK);
    cr_assert_str_eq (s_linked (storage, ws), "b,a");
    json_decref (adds);
    //  Unknown workspace; a location that is not a string.
    cr_assert_eq (cm_storage_workspace_docs_update (storage, ws + 100, NULL, NULL),
                  CM_STORAGE_NOT_FOUND);
    adds = json_pack ("[i]", 7);
    cr_assert_eq (cm_storage_workspace_docs_update (storage, ws, deletes, adds),
                  CM_STORAGE_INVALID);
    cr_assert_str_eq (s_linked (storage, ws), "b,a");
    json_decref (adds);
    json_decref (deletes);
    cm_storage_destroy (&storage);
}

//  The ids of an array of job rows, sorted, comma-separated.
static char *
s_job_ids (json_t *jobs)
{
    static char ids[256];
    ids[0] = 0;
    size_t i;
    json_t *job;
    json_array_foreach (jobs, i, job)
    {
        if (i)
            strcat (ids, ",");
        strcat (ids, s_str (job, "id"));
    }
    return ids;
}

Test (cm_storage_docs, orphaned_jobs_are_those_of_owners_not_alive)
{
    cm_storage_t *storage = s_open ();
    const char *jobs[][2] = {{"j1", "k1"}, {"j2", "k2"}, {"j3", NULL}, {"j4", "k1"}};
    for (size_t i = 0; i < 4; i++)
        cr_assert_eq (cm_storage_job_create (storage, jobs[i][0], "loc", "queue",
                                             jobs[i][1], NULL, 1, NULL),
                      CM_STORAGE_OK);
    cr_assert_eq (
        cm_storage_job_update (storage, "j4", "completed", -1, -1, -1, NULL, NULL),
        CM_STORAGE_OK);
    const char *states[] = {"queued", "active"};
    json_t *live = json_pack ("[s]", "k2");
    json_t *found = NULL;
    //  k1 is not alive: its unfinished job, not its completed one; never a
    //  job without an owner.
    cr_assert_eq (cm_storage_jobs_orphaned (storage, states, 2, live, 10, &found),
                  CM_STORAGE_OK);
    cr_assert_str_eq (s_job_ids (found), "j1");
    cr_assert_str_eq (s_str (json_array_get (found, 0), "owner"), "k1");
    json_decref (found);
    //  Nobody alive.
    json_t *none = json_array ();
    cr_assert_eq (cm_storage_jobs_orphaned (storage, states, 2, none, 10, &found),
                  CM_STORAGE_OK);
    cr_assert (!strcmp (s_job_ids (found), "j1,j2") ||
                   !strcmp (s_job_ids (found), "j2,j1"),
               "%s", s_job_ids (found));
    json_decref (found);
    //  At most limit, the newest first.
    cr_assert_eq (cm_storage_job_update (storage, "j1", "active", -1, -1, -1, NULL, NULL),
                  CM_STORAGE_OK);
    cr_assert_eq (cm_storage_jobs_orphaned (storage, states, 2, none, 1, &found),
                  CM_STORAGE_OK);
    cr_assert_str_eq (s_job_ids (found), "j1");
    json_decref (found);
    //  A disowned job is nobody's orphan; the owner is not part of a row.
    json_t *ids = json_pack ("[s, s]", "j1", "nope");
    cr_assert_eq (cm_storage_jobs_disown (storage, ids), CM_STORAGE_OK);
    json_decref (ids);
    cr_assert_eq (cm_storage_jobs_orphaned (storage, states, 2, live, 10, &found),
                  CM_STORAGE_OK);
    cr_assert_eq (json_array_size (found), 0);
    json_decref (found);
    json_t *row = NULL;
    cr_assert_eq (cm_storage_job_get (storage, "j2", &row), CM_STORAGE_OK);
    cr_assert_null (json_object_get (row, "owner"));
    json_decref (row);
    //  Only its owner fails a job this way: not another, not after the
    //  reconciler disowned it (j1).
    cr_assert_eq (cm_storage_job_fail_owned (storage, "j2", "k1", "no"),
                  CM_STORAGE_NOT_FOUND);
    cr_assert_eq (cm_storage_job_fail_owned (storage, "j1", "k1", "no"),
                  CM_STORAGE_NOT_FOUND);
    cr_assert_eq (cm_storage_job_get (storage, "j1", &row), CM_STORAGE_OK);
    cr_assert_str_eq (s_str (row, "state"), "active");
    json_decref (row);
    cr_assert_eq (cm_storage_job_fail_owned (storage, "j2", "k2", "Timed out."),
                  CM_STORAGE_OK);
    cr_assert_eq (cm_storage_job_get (storage, "j2", &row), CM_STORAGE_OK);
    cr_assert_str_eq (s_str (row, "state"), "failed");
    cr_assert_str_eq (s_str (row, "error"), "Timed out.");
    cr_assert (json_is_string (json_object_get (row, "finishedAt")));
    json_decref (row);
    json_decref (none);
    json_decref (live);
    cm_storage_destroy (&storage);
}

Test (cm_storage_docs, connections_and_processes_see_each_others_writes)
{
    cm_storage_t *one = s_open ();
    cm_storage_t *two = s_open ();
    int64_t ws = s_workspace (one, "Docs");
    s_document (one, "a", 2, true);
    int64_t before = s_version (two, ws);
    cr_assert_eq (cm_storage_workspace_doc_link (one, ws, "a", NULL), CM_STORAGE_OK);
    cr_assert_gt (s_version (two, ws), before);
    cr_assert_eq (s_seen (two, ws), 2);

    //  Another process links a second document.
    before = s_version (one, ws);
    pid_t pid = fork ();
    cr_assert_neq (pid, -1);
    if (pid == 0) {
        char err[512];
        cm_storage_t *child = cm_storage_new (s_dir, err, sizeof err);
        int rc = 1;
        if (child) {
            json_t *fields = json_pack ("{s:s, s:s}", "location", "b", "name", "b");
            json_t *document = NULL;
            const char *texts[] = {"from the child"};
            float vector[S_DIM] = {0, 0, 1, 0};
            if (cm_storage_document_add (child, fields, "b", &document) ==
                    CM_STORAGE_OK &&
                cm_storage_chunks_put (child, s_id (document), 0, 1, texts, vector, S_DIM,
                                       NULL) == CM_STORAGE_OK &&
                cm_storage_document_set_embedded (child, s_id (document)) ==
                    CM_STORAGE_OK &&
                cm_storage_workspace_doc_link (child, ws, "b", NULL) == CM_STORAGE_OK)
                rc = 0;
            json_decref (fields);
            json_decref (document);
            cm_storage_destroy (&child);
        }
        _exit (rc);
    }
    int status = 0;
    cr_assert_eq (waitpid (pid, &status, 0), pid);
    cr_assert (WIFEXITED (status) && WEXITSTATUS (status) == 0);
    cr_assert_gt (s_version (one, ws), before);
    cr_assert_eq (s_seen (one, ws), 3);
    cm_storage_destroy (&one);
    cm_storage_destroy (&two);
}
