/*  cm_storage_docs.c: see cm_storage_docs.h. Writes that read before they
    decide, or write several rows, run in BEGIN IMMEDIATE (as in
    cm_storage.c); the vector-set version is bumped by triggers (schema 3),
    so nothing here has to remember it. */
#include "cm_storage_docs.h"
#include "cm_storage_int.h"
#include "cm_log.h"
#include <sodium.h>

#define S_NOW CM_STORAGE_NOW

#define S_DOCUMENT_COLUMNS                                                               \
    "id, location, name, url, title, docAuthor, description, docSource, chunkSource, "   \
    "published, wordCount, token_count_estimate, metadata, embedded, createdAt, "        \
    "lastUpdatedAt"
#define S_LINK_COLUMNS                                                                   \
    "id, docId, filename, docpath, workspaceId, metadata, pinned, watched, createdAt, "  \
    "lastUpdatedAt"
#define S_JOB_COLUMNS                                                                    \
    "id, location, state, path, workspaces, attempts, maxAttempts, chunksDone, "         \
    "chunksTotal, error, createdAt, lastUpdatedAt, finishedAt"
//  A chunk with (or without: NULLs in their place) its text and its
//  document's fields, in the column order s_chunk_fields reads.
#define S_CHUNK_SELECT(text, document)                                                   \
    "SELECT c.id, c.documentId, c.position, c.vector, " text ", " document " "
#define S_CHUNK_TEXT    "c.text"
#define S_CHUNK_NO_TEXT "NULL"
#define S_CHUNK_DOCUMENT                                                                 \
    "d.url, d.title, d.docAuthor, d.description, d.docSource, d.chunkSource, "           \
    "d.published, d.wordCount, d.token_count_estimate"
#define S_CHUNK_NO_DOCUMENT "NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL"
//  The chunks a workspace sees: of its linked documents, once embedded.
#define S_CHUNK_OF_WORKSPACE                                                             \
    "FROM workspace_documents w JOIN documents d ON d.location = w.docpath AND "         \
    "d.embedded JOIN document_chunks c ON c.documentId = d.id WHERE w.workspaceId = ?1"

//  --- helpers --------------------------------------------------------------------

//  Bind fields[key]: a string as text, a number as an integer, else NULL.
static void
s_bind_field (sqlite3_stmt *stmt, int index, const json_t *fields, const char *key,
              bool integer)
{
    const json_t *value = json_object_get (fields, key);
    if (integer && json_is_integer (value))
        sqlite3_bind_int64 (stmt, index, json_integer_value (value));
    else if (integer && json_is_real (value))
        sqlite3_bind_int64 (stmt, index, (int64_t) json_real_value (value));
    else if (!integer && json_is_string (value))
        sqlite3_bind_text (stmt, index, json_string_value (value), -1, SQLITE_TRANSIENT);
    else
        sqlite3_bind_null (stmt, index);
}

static const char *
s_column_text (sqlite3_stmt *stmt, int column)
{
    return (const char *) sqlite3_column_text (stmt, column);
}

static int64_t
s_column_int_or (sqlite3_stmt *stmt, int column, int64_t otherwise)
{
    return sqlite3_column_type (stmt, column) == SQLITE_NULL
               ? otherwise
               : sqlite3_column_int64 (stmt, column);
}

//  The current row of an S_CHUNK_SELECT statement.
static void
s_chunk_fields (sqlite3_stmt *stmt, cm_storage_chunk_t *chunk)
{
    chunk->id = s_column_text (stmt, 0);
    chunk->document_id = sqlite3_column_int64 (stmt, 1);
    chunk->position = sqlite3_column_int64 (stmt, 2);
    chunk->vector = sqlite3_column_blob (stmt, 3);
    chunk->dim = (size_t) sqlite3_column_bytes (stmt, 3) / sizeof (float);
    chunk->text = s_column_text (stmt, 4);
    chunk->url = s_column_text (stmt, 5);
    chunk->title = s_column_text (stmt, 6);
    chunk->doc_author = s_column_text (stmt, 7);
    chunk->description = s_column_text (stmt, 8);
    chunk->doc_source = s_column_text (stmt, 9);
    chunk->chunk_source = s_column_text (stmt, 10);
    chunk->published = s_column_text (stmt, 11);
    chunk->word_count = s_column_int_or (stmt, 12, -1);
    chunk->token_count_estimate = s_column_int_or (stmt, 13, -1);
}

//  --- documents ------------------------------------------------------------------

cm_storage_status_t
cm_storage_document_add (cm_storage_t *self, const json_t *fields, const char *content,
                         json_t **document_p)
{
    assert (self);
    if (document_p)
        *document_p = NULL;
    self->errmsg[0] = 0;
    const char *location = json_string_value (json_object_get (fields, "location"));
    const char *name = json_string_value (json_object_get (fields, "name"));
    if (!location || !*location || !name || !*name || !content) {
        snprintf (self->errmsg, sizeof self->errmsg, "%s is required",
                  !location || !*location ? "location"
                  : !name || !*name       ? "name"
                                          : "content");
        return CM_STORAGE_INVALID;
    }
    const json_t *metadata = json_object_get (fields, "metadata");
    char *metadata_text = metadata && !json_is_null (metadata)
                              ? json_dumps (metadata, JSON_COMPACT | JSON_ENCODE_ANY)
                              : NULL;
    sqlite3_stmt *stmt = cm_storage__stmt (
        self,
        "INSERT INTO documents (location, name, url, title, docAuthor, description, "
        "docSource, chunkSource, published, wordCount, token_count_estimate, "
        "metadata, content) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, "
        "?12, ?13)");
    if (!stmt) {
        free (metadata_text);
        return CM_STORAGE_ERROR;
    }
    sqlite3_bind_text (stmt, 1, location, -1, SQLITE_TRANSIENT);
    sqlite3_bind_text (stmt, 2, name, -1, SQLITE_TRANSIENT);
    static const char *texts[] = {"url",       "title",       "docAuthor", "description",
                                  "docSource", "chunkSource", "published"};
    for (int i = 0; i < 7; i++)
        s_bind_field (stmt, 3 + i, fields, texts[i], false);
    s_bind_field (stmt, 10, fields, "wordCount", true);
    s_bind_field (stmt, 11, fields, "token_count_estimate", true);
    cm_storage__bind_text (stmt, 12, metadata_text);
    sqlite3_bind_text (stmt, 13, content, -1, SQLITE_TRANSIENT);
    int rc = sqlite3_step (stmt);
    sqlite3_reset (stmt);
    free (metadata_text);
    if (rc == SQLITE_CONSTRAINT_UNIQUE) {
        snprintf (self->errmsg, sizeof self->errmsg, "a document at %s exists", location);
        return CM_STORAGE_CONFLICT;
    }
    if (rc != SQLITE_DONE) {
        cm_storage__fail (self, "add document");
        return CM_STORAGE_ERROR;
    }
    if (!document_p)
        return CM_STORAGE_OK;
    return cm_storage_document_get (self, location, false, document_p);
}

cm_storage_status_t
cm_storage_document_get (cm_storage_t *self, const char *location, bool with_content,
                         json_t **document_p)
{
    assert (self);
    assert (location);
    assert (document_p);
    *document_p = NULL;
    self->errmsg[0] = 0;
    return cm_storage__get (
        self,
        with_content ? "SELECT " S_DOCUMENT_COLUMNS
                       ", content AS pageContent FROM documents WHERE location = ?1"
                     : "SELECT " S_DOCUMENT_COLUMNS " FROM documents WHERE location = ?1",
        location, "get document", document_p);
}

cm_storage_status_t
cm_storage_document_content (cm_storage_t *self, const char *location, char **content_p)
{
    assert (self);
    assert (location);
    assert (content_p);
    *content_p = NULL;
    self->errmsg[0] = 0;
    sqlite3_stmt *stmt =
        cm_storage__stmt (self, "SELECT content FROM documents WHERE location = ?1");
    if (!stmt)
        return CM_STORAGE_ERROR;
    sqlite3_bind_text (stmt, 1, location, -1, SQLITE_TRANSIENT);
    int rc = sqlite3_step (stmt);
    cm_storage_status_t status = CM_STORAGE_NOT_FOUND;
    if (rc == SQLITE_ROW) {
        const char *text = s_column_text (stmt, 0);
        *content_p =
            cm_strndup (text ? text : "", (size_t) sqlite3_column_bytes (stmt, 0));
        status = CM_STORAGE_OK;
    } else if (rc != SQLITE_DONE) {
        cm_storage__fail (self, "read document content");
        status = CM_STORAGE_ERROR;
    }
    sqlite3_reset (stmt);
    return status;
}

cm_storage_status_t
cm_storage_document_delete (cm_storage_t *self, const char *location)
{
    assert (self);
    assert (location);
    self->errmsg[0] = 0;
    sqlite3_stmt *stmt =
        cm_storage__stmt (self, "DELETE FROM documents WHERE location = ?1");
    if (!stmt)
        return CM_STORAGE_ERROR;
    sqlite3_bind_text (stmt, 1, location, -1, SQLITE_TRANSIENT);
    return cm_storage__change (self, stmt, "delete document");
}

cm_storage_status_t
cm_storage_document_set_embedded (cm_storage_t *self, int64_t document_id)
{
    assert (self);
    self->errmsg[0] = 0;
    //  Only a change fires the version trigger (an UPDATE OF embedded fires
    //  even when the value stays), hence "AND NOT embedded".
    sqlite3_stmt *stmt = cm_storage__stmt (
        self, "UPDATE documents SET embedded = 1, lastUpdatedAt = " S_NOW
              " WHERE id = ?1 AND NOT embedded");
    if (!stmt)
        return CM_STORAGE_ERROR;
    sqlite3_bind_int64 (stmt, 1, document_id);
    if (cm_storage__step (self, stmt, "mark document embedded"))
        return CM_STORAGE_ERROR;
    if (sqlite3_changes (self->db))
        return CM_STORAGE_OK;
    stmt = cm_storage__stmt (self, "SELECT 1 FROM documents WHERE id = ?1");
    if (!stmt)
        return CM_STORAGE_ERROR;
    sqlite3_bind_int64 (stmt, 1, document_id);
    return cm_storage__one (self, stmt, "find document", NULL);
}

//  --- chunks -----------------------------------------------------------------------

void
cm_storage_chunk_id (int64_t document_id, int64_t position, char out[37])
{
    char key[64];
    int size = snprintf (key, sizeof key, "llmrt-chunk:%lld:%lld",
                         (long long) document_id, (long long) position);
    unsigned char b[16];
    crypto_generichash (b, sizeof b, (const unsigned char *) key, (size_t) size, NULL, 0);
    //  A version 8 (name-based, custom hash) UUID.
    b[6] = (unsigned char) ((b[6] & 0x0F) | 0x80);
    b[8] = (unsigned char) ((b[8] & 0x3F) | 0x80);
    snprintf (out, 37,
              "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x",
              b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11],
              b[12], b[13], b[14], b[15]);
}

cm_storage_status_t
cm_storage_chunks_put (cm_storage_t *self, int64_t document_id, int64_t first_position,
                       size_t count, const char *const *texts, const float *vectors,
                       size_t dim, size_t *stored_p)
{
    assert (self);
    if (stored_p)
        *stored_p = 0;
    self->errmsg[0] = 0;
    if (dim == 0 || (count && (!texts || !vectors))) {
        snprintf (self->errmsg, sizeof self->errmsg, "chunks need texts and vectors");
        return CM_STORAGE_INVALID;
    }
    for (size_t i = 0; i < count; i++)
        if (!texts[i]) {
            snprintf (self->errmsg, sizeof self->errmsg, "chunk %zu has no text", i);
            return CM_STORAGE_INVALID;
        }
    if (cm_storage__exec (self, "BEGIN IMMEDIATE"))
        return CM_STORAGE_ERROR;
    cm_storage_status_t status = CM_STORAGE_ERROR;
    sqlite3_stmt *stmt = cm_storage__stmt (self, "SELECT 1 FROM documents WHERE id = ?1");
    if (!stmt)
        goto rollback;
    sqlite3_bind_int64 (stmt, 1, document_id);
    status = cm_storage__one (self, stmt, "find document", NULL);
    if (status != CM_STORAGE_OK) {
        if (status == CM_STORAGE_NOT_FOUND)
            snprintf (self->errmsg, sizeof self->errmsg, "no document %lld",
                      (long long) document_id);
        goto rollback;
    }
    status = CM_STORAGE_ERROR;
    //  ON CONFLICT DO NOTHING (not INSERT OR IGNORE): only a chunk that is
    //  there already is skipped, never a row that breaks another rule.
    stmt =
        cm_storage__stmt (self, "INSERT INTO document_chunks (id, documentId, position, "
                                "text, vector) VALUES (?1, ?2, ?3, ?4, ?5) "
                                "ON CONFLICT DO NOTHING");
    if (!stmt)
        goto rollback;
    size_t stored = 0;
    for (size_t i = 0; i < count; i++) {
        char id[37];
        int64_t position = first_position + (int64_t) i;
        cm_storage_chunk_id (document_id, position, id);
        sqlite3_bind_text (stmt, 1, id, -1, SQLITE_TRANSIENT);
        sqlite3_bind_int64 (stmt, 2, document_id);
        sqlite3_bind_int64 (stmt, 3, position);
        sqlite3_bind_text (stmt, 4, texts[i], -1, SQLITE_STATIC);
        sqlite3_bind_blob64 (stmt, 5, vectors + i * dim, dim * sizeof (float),
                             SQLITE_STATIC);
        int rc = sqlite3_step (stmt);
        sqlite3_reset (stmt);
        if (rc != SQLITE_DONE) {
            cm_storage__fail (self, "store chunk");
            goto rollback;
        }
        stored += (size_t) sqlite3_changes (self->db);
    }
    sqlite3_clear_bindings (stmt);
    if (cm_storage__exec (self, "COMMIT"))
        goto rollback;
    if (stored_p)
        *stored_p = stored;
    return CM_STORAGE_OK;

rollback:
    if (stmt)
        sqlite3_clear_bindings (stmt);
    cm_storage__rollback (self);
    return status;
}

int64_t
cm_storage_chunks_count (cm_storage_t *self, int64_t document_id)
{
    assert (self);
    self->errmsg[0] = 0;
    sqlite3_stmt *stmt = cm_storage__stmt (
        self, "SELECT count(*) FROM document_chunks WHERE documentId = ?1");
    if (!stmt)
        return -1;
    sqlite3_bind_int64 (stmt, 1, document_id);
    int64_t count = -1;
    if (sqlite3_step (stmt) == SQLITE_ROW)
        count = sqlite3_column_int64 (stmt, 0);
    else
        cm_storage__fail (self, "count chunks");
    sqlite3_reset (stmt);
    return count;
}

//  --- workspace documents --------------------------------------------------------

static cm_storage_status_t
s_link_get (cm_storage_t *self, int64_t workspace_id, const char *location,
            json_t **link_p)
{
    sqlite3_stmt *stmt = cm_storage__stmt (self, "SELECT " S_LINK_COLUMNS
                                                 " FROM workspace_documents WHERE "
                                                 "workspaceId = ?1 AND docpath = ?2");
    if (!stmt)
        return CM_STORAGE_ERROR;
    sqlite3_bind_int64 (stmt, 1, workspace_id);
    sqlite3_bind_text (stmt, 2, location, -1, SQLITE_TRANSIENT);
    return cm_storage__one (self, stmt, "get workspace document", link_p);
}

//  Link a document inside the caller's transaction: OK (also when linked
//  already), NOT_FOUND (errmsg names the location) or ERROR.
static cm_storage_status_t
s_link_insert (cm_storage_t *self, int64_t workspace_id, const char *location)
{
    //  The link's metadata is the document's fields, as upstream keeps the
    //  document's JSON (less its text) with the link.
    sqlite3_stmt *stmt = cm_storage__stmt (
        self,
        "INSERT INTO workspace_documents (docId, filename, docpath, workspaceId, "
        "metadata) "
        "SELECT ?1, ?2, location, ?3, json_object('url', url, 'title', title, "
        "'docAuthor', docAuthor, 'description', description, 'docSource', docSource, "
        "'chunkSource', chunkSource, 'published', published, 'wordCount', wordCount, "
        "'token_count_estimate', token_count_estimate) FROM documents WHERE location = "
        "?4 "
        "ON CONFLICT (workspaceId, docpath) DO NOTHING");
    if (!stmt)
        return CM_STORAGE_ERROR;
    char doc_id[CM_UUID_SIZE];
    cm_uuid (doc_id);
    const char *slash = strrchr (location, '/');
    sqlite3_bind_text (stmt, 1, doc_id, -1, SQLITE_TRANSIENT);
    sqlite3_bind_text (stmt, 2, slash ? slash + 1 : location, -1, SQLITE_TRANSIENT);
    sqlite3_bind_int64 (stmt, 3, workspace_id);
    sqlite3_bind_text (stmt, 4, location, -1, SQLITE_TRANSIENT);
    if (cm_storage__step (self, stmt, "link document"))
        return CM_STORAGE_ERROR;
    if (sqlite3_changes (self->db))
        return CM_STORAGE_OK;
    //  Linked already, or no such document.
    stmt = cm_storage__stmt (self, "SELECT 1 FROM documents WHERE location = ?1");
    if (!stmt)
        return CM_STORAGE_ERROR;
    sqlite3_bind_text (stmt, 1, location, -1, SQLITE_TRANSIENT);
    cm_storage_status_t status = cm_storage__one (self, stmt, "find document", NULL);
    if (status == CM_STORAGE_NOT_FOUND)
        snprintf (self->errmsg, sizeof self->errmsg, "no document at %s", location);
    return status;
}

//  Whether the workspace exists, inside the caller's transaction.
static cm_storage_status_t
s_workspace_exists (cm_storage_t *self, int64_t workspace_id)
{
    sqlite3_stmt *stmt =
        cm_storage__stmt (self, "SELECT 1 FROM workspaces WHERE id = ?1");
    if (!stmt)
        return CM_STORAGE_ERROR;
    sqlite3_bind_int64 (stmt, 1, workspace_id);
    cm_storage_status_t status = cm_storage__one (self, stmt, "find workspace", NULL);
    if (status == CM_STORAGE_NOT_FOUND)
        snprintf (self->errmsg, sizeof self->errmsg, "no workspace %lld",
                  (long long) workspace_id);
    return status;
}

cm_storage_status_t
cm_storage_workspace_doc_link (cm_storage_t *self, int64_t workspace_id,
                               const char *location, json_t **link_p)
{
    assert (self);
    assert (location);
    if (link_p)
        *link_p = NULL;
    self->errmsg[0] = 0;
    if (cm_storage__exec (self, "BEGIN IMMEDIATE"))
        return CM_STORAGE_ERROR;
    cm_storage_status_t status = s_workspace_exists (self, workspace_id);
    if (status == CM_STORAGE_OK)
        status = s_link_insert (self, workspace_id, location);
    if (status == CM_STORAGE_OK && cm_storage__exec (self, "COMMIT"))
        status = CM_STORAGE_ERROR;
    if (status != CM_STORAGE_OK) {
        cm_storage__rollback (self);
        return status;
    }
    if (!link_p)
        return CM_STORAGE_OK;
    return s_link_get (self, workspace_id, location, link_p);
}

cm_storage_status_t
cm_storage_workspace_docs_update (cm_storage_t *self, int64_t workspace_id,
                                  const json_t *deletes, const json_t *adds)
{
    assert (self);
    assert (!deletes || json_is_array (deletes));
    assert (!adds || json_is_array (adds));
    self->errmsg[0] = 0;
    if (cm_storage__exec (self, "BEGIN IMMEDIATE"))
        return CM_STORAGE_ERROR;
    cm_storage_status_t status = s_workspace_exists (self, workspace_id);
    size_t i;
    json_t *item;
    json_array_foreach (deletes, i, item)
    {
        if (status != CM_STORAGE_OK || !json_is_string (item))
            continue;
        sqlite3_stmt *stmt = cm_storage__stmt (
            self,
            "DELETE FROM workspace_documents WHERE workspaceId = ?1 AND docpath = ?2");
        if (!stmt) {
            status = CM_STORAGE_ERROR;
            break;
        }
        sqlite3_bind_int64 (stmt, 1, workspace_id);
        sqlite3_bind_text (stmt, 2, json_string_value (item), -1, SQLITE_TRANSIENT);
        if (cm_storage__step (self, stmt, "unlink document"))
            status = CM_STORAGE_ERROR;
    }
    json_array_foreach (adds, i, item)
    {
        if (status != CM_STORAGE_OK)
            break;
        if (!json_is_string (item)) {
            snprintf (self->errmsg, sizeof self->errmsg, "a location is not a string");
            status = CM_STORAGE_INVALID;
        } else
            status = s_link_insert (self, workspace_id, json_string_value (item));
    }
    if (status == CM_STORAGE_OK && cm_storage__exec (self, "COMMIT"))
        status = CM_STORAGE_ERROR;
    if (status != CM_STORAGE_OK)
        cm_storage__rollback (self);
    return status;
}

cm_storage_status_t
cm_storage_workspace_doc_unlink (cm_storage_t *self, int64_t workspace_id,
                                 const char *location)
{
    assert (self);
    assert (location);
    self->errmsg[0] = 0;
    sqlite3_stmt *stmt = cm_storage__stmt (
        self, "DELETE FROM workspace_documents WHERE workspaceId = ?1 AND docpath = ?2");
    if (!stmt)
        return CM_STORAGE_ERROR;
    sqlite3_bind_int64 (stmt, 1, workspace_id);
    sqlite3_bind_text (stmt, 2, location, -1, SQLITE_TRANSIENT);
    return cm_storage__change (self, stmt, "unlink document");
}

cm_storage_status_t
cm_storage_workspace_doc_list (cm_storage_t *self, int64_t workspace_id, json_t **links_p)
{
    assert (self);
    assert (links_p);
    *links_p = NULL;
    self->errmsg[0] = 0;
    sqlite3_stmt *stmt = cm_storage__stmt (
        self, "SELECT " S_LINK_COLUMNS
              " FROM workspace_documents WHERE workspaceId = ?1 ORDER BY id");
    if (!stmt)
        return CM_STORAGE_ERROR;
    sqlite3_bind_int64 (stmt, 1, workspace_id);
    return cm_storage__rows (self, stmt, "list workspace documents", links_p);
}

cm_storage_status_t
cm_storage_workspace_doc_counts (cm_storage_t *self, json_t **counts_p)
{
    assert (self);
    assert (counts_p);
    *counts_p = NULL;
    self->errmsg[0] = 0;
    //  One pass over the (workspaceId, docpath) unique index, whatever the
    //  number of workspaces, rather than a count per workspace.
    sqlite3_stmt *stmt = cm_storage__stmt (
        self,
        "SELECT workspaceId, count(*) FROM workspace_documents GROUP BY workspaceId");
    if (!stmt)
        return CM_STORAGE_ERROR;
    json_t *counts = json_object ();
    int rc;
    while ((rc = sqlite3_step (stmt)) == SQLITE_ROW) {
        char key[32];
        snprintf (key, sizeof key, "%lld", (long long) sqlite3_column_int64 (stmt, 0));
        json_object_set_new (counts, key, json_integer (sqlite3_column_int64 (stmt, 1)));
    }
    sqlite3_reset (stmt);
    if (rc != SQLITE_DONE) {
        cm_storage__fail (self, "count workspace documents");
        json_decref (counts);
        return CM_STORAGE_ERROR;
    }
    *counts_p = counts;
    return CM_STORAGE_OK;
}

//  --- vectors ------------------------------------------------------------------------

cm_storage_status_t
cm_storage_vectors_version (cm_storage_t *self, int64_t workspace_id, int64_t *version_p)
{
    assert (self);
    assert (version_p);
    *version_p = 0;
    self->errmsg[0] = 0;
    sqlite3_stmt *stmt =
        cm_storage__stmt (self, "SELECT vectorVersion FROM workspaces WHERE id = ?1");
    if (!stmt)
        return CM_STORAGE_ERROR;
    sqlite3_bind_int64 (stmt, 1, workspace_id);
    int rc = sqlite3_step (stmt);
    cm_storage_status_t status = CM_STORAGE_NOT_FOUND;
    if (rc == SQLITE_ROW) {
        *version_p = sqlite3_column_int64 (stmt, 0);
        status = CM_STORAGE_OK;
    } else if (rc != SQLITE_DONE) {
        cm_storage__fail (self, "read vector version");
        status = CM_STORAGE_ERROR;
    }
    sqlite3_reset (stmt);
    return status;
}

cm_storage_status_t
cm_storage_vectors_load (cm_storage_t *self, int64_t workspace_id, int what,
                         int64_t *version_p, cm_storage_chunk_fn *fn, void *arg)
{
    assert (self);
    assert (version_p);
    assert (fn);
    static const char *sql[4] = {
        S_CHUNK_SELECT (S_CHUNK_NO_TEXT, S_CHUNK_NO_DOCUMENT) S_CHUNK_OF_WORKSPACE,
        S_CHUNK_SELECT (S_CHUNK_TEXT, S_CHUNK_NO_DOCUMENT) S_CHUNK_OF_WORKSPACE,
        S_CHUNK_SELECT (S_CHUNK_NO_TEXT, S_CHUNK_DOCUMENT) S_CHUNK_OF_WORKSPACE,
        S_CHUNK_SELECT (S_CHUNK_TEXT, S_CHUNK_DOCUMENT) S_CHUNK_OF_WORKSPACE,
    };
    //  One read transaction: the version and the rows are one snapshot.
    if (cm_storage__exec (self, "BEGIN"))
        return CM_STORAGE_ERROR;
    cm_storage_status_t status =
        cm_storage_vectors_version (self, workspace_id, version_p);
    if (status != CM_STORAGE_OK) {
        cm_storage__rollback (self);
        return status;
    }
    sqlite3_stmt *stmt =
        cm_storage__stmt (self, sql[((what & CM_STORAGE_CHUNK_TEXT) ? 1 : 0) |
                                    ((what & CM_STORAGE_CHUNK_DOCUMENT) ? 2 : 0)]);
    if (!stmt) {
        cm_storage__rollback (self);
        return CM_STORAGE_ERROR;
    }
    sqlite3_bind_int64 (stmt, 1, workspace_id);
    int rc;
    while ((rc = sqlite3_step (stmt)) == SQLITE_ROW) {
        cm_storage_chunk_t chunk;
        s_chunk_fields (stmt, &chunk);
        fn (&chunk, arg);
    }
    sqlite3_reset (stmt);
    if (rc != SQLITE_DONE) {
        cm_storage__fail (self, "load vectors");
        cm_storage__rollback (self);
        return CM_STORAGE_ERROR;
    }
    if (cm_storage__exec (self, "COMMIT")) {
        cm_storage__rollback (self);
        return CM_STORAGE_ERROR;
    }
    return CM_STORAGE_OK;
}

cm_storage_status_t
cm_storage_chunk_read (cm_storage_t *self, int64_t document_id, int64_t position,
                       cm_storage_chunk_fn *fn, void *arg)
{
    assert (self);
    assert (fn);
    self->errmsg[0] = 0;
    sqlite3_stmt *stmt = cm_storage__stmt (
        self,
        S_CHUNK_SELECT (S_CHUNK_TEXT, S_CHUNK_DOCUMENT) "FROM document_chunks c "
                                                        "JOIN documents d ON d.id = "
                                                        "c.documentId WHERE "
                                                        "c.documentId = ?1 AND "
                                                        "c.position = ?2");
    if (!stmt)
        return CM_STORAGE_ERROR;
    sqlite3_bind_int64 (stmt, 1, document_id);
    sqlite3_bind_int64 (stmt, 2, position);
    int rc = sqlite3_step (stmt);
    cm_storage_status_t status = CM_STORAGE_NOT_FOUND;
    if (rc == SQLITE_ROW) {
        cm_storage_chunk_t chunk;
        s_chunk_fields (stmt, &chunk);
        fn (&chunk, arg);
        status = CM_STORAGE_OK;
    } else if (rc != SQLITE_DONE) {
        cm_storage__fail (self, "read chunk");
        status = CM_STORAGE_ERROR;
    }
    sqlite3_reset (stmt);
    return status;
}

//  --- ingestion jobs ----------------------------------------------------------------

static bool
s_state_valid (const char *state)
{
    return !strcmp (state, "queued") || !strcmp (state, "active") ||
           !strcmp (state, "completed") || !strcmp (state, "failed");
}

cm_storage_status_t
cm_storage_job_create (cm_storage_t *self, const char *id, const char *location,
                       const char *path, const char *owner, const json_t *workspaces,
                       int max_attempts, json_t **job_p)
{
    assert (self);
    if (job_p)
        *job_p = NULL;
    self->errmsg[0] = 0;
    const char *invalid = !location || !*location ? "location is required"
                          : !path || (strcmp (path, "queue") && strcmp (path, "fallback"))
                              ? "path must be \"queue\" or \"fallback\""
                          : workspaces && !json_is_array (workspaces)
                              ? "workspaces must be an array"
                          : max_attempts < 1 ? "maxAttempts must be at least 1"
                                             : NULL;
    if (invalid) {
        snprintf (self->errmsg, sizeof self->errmsg, "%s", invalid);
        return CM_STORAGE_INVALID;
    }
    char uuid[CM_UUID_SIZE];
    if (!id) {
        cm_uuid (uuid);
        id = uuid;
    }
    char *slugs = workspaces ? json_dumps (workspaces, JSON_COMPACT) : NULL;
    sqlite3_stmt *stmt = cm_storage__stmt (
        self, "INSERT INTO ingest_jobs (id, location, path, workspaces, "
              "maxAttempts, owner) VALUES (?1, ?2, ?3, ?4, ?5, ?6)");
    if (!stmt) {
        free (slugs);
        return CM_STORAGE_ERROR;
    }
    sqlite3_bind_text (stmt, 1, id, -1, SQLITE_TRANSIENT);
    sqlite3_bind_text (stmt, 2, location, -1, SQLITE_TRANSIENT);
    sqlite3_bind_text (stmt, 3, path, -1, SQLITE_TRANSIENT);
    sqlite3_bind_text (stmt, 4, slugs ? slugs : "[]", -1, SQLITE_TRANSIENT);
    sqlite3_bind_int (stmt, 5, max_attempts);
    cm_storage__bind_text (stmt, 6, owner);
    int rc = sqlite3_step (stmt);
    sqlite3_reset (stmt);
    free (slugs);
    if (rc == SQLITE_CONSTRAINT_PRIMARYKEY || rc == SQLITE_CONSTRAINT_UNIQUE) {
        snprintf (self->errmsg, sizeof self->errmsg, "job %s exists", id);
        return CM_STORAGE_CONFLICT;
    }
    if (rc != SQLITE_DONE) {
        cm_storage__fail (self, "create job");
        return CM_STORAGE_ERROR;
    }
    if (!job_p)
        return CM_STORAGE_OK;
    return cm_storage_job_get (self, id, job_p);
}

cm_storage_status_t
cm_storage_job_update (cm_storage_t *self, const char *id, const char *state,
                       int attempts, int64_t chunks_done, int64_t chunks_total,
                       const char *error, json_t **job_p)
{
    assert (self);
    assert (id);
    if (job_p)
        *job_p = NULL;
    self->errmsg[0] = 0;
    if (state && !s_state_valid (state)) {
        snprintf (self->errmsg, sizeof self->errmsg, "unknown job state '%s'", state);
        return CM_STORAGE_INVALID;
    }
    //  finishedAt: set when the job ends, kept when it was over already in
    //  that state, cleared when it runs again. (In SET, columns are the old
    //  values.)
    sqlite3_stmt *stmt = cm_storage__stmt (
        self, "UPDATE ingest_jobs SET "
              "state = coalesce (?2, state), "
              "attempts = CASE WHEN ?3 >= 0 THEN ?3 ELSE attempts END, "
              "chunksDone = CASE WHEN ?4 >= 0 THEN ?4 ELSE chunksDone END, "
              "chunksTotal = CASE WHEN ?5 >= 0 THEN ?5 ELSE chunksTotal END, "
              "error = CASE WHEN ?6 IS NULL THEN error WHEN ?6 = '' THEN NULL "
              "  ELSE ?6 END, "
              "finishedAt = CASE WHEN ?2 IS NULL THEN finishedAt "
              "  WHEN ?2 NOT IN ('completed', 'failed') THEN NULL "
              "  WHEN state = ?2 THEN coalesce (finishedAt, " S_NOW ") "
              "  ELSE " S_NOW " END, "
              "lastUpdatedAt = " S_NOW " WHERE id = ?1");
    if (!stmt)
        return CM_STORAGE_ERROR;
    sqlite3_bind_text (stmt, 1, id, -1, SQLITE_TRANSIENT);
    cm_storage__bind_text (stmt, 2, state);
    sqlite3_bind_int (stmt, 3, attempts);
    sqlite3_bind_int64 (stmt, 4, chunks_done);
    sqlite3_bind_int64 (stmt, 5, chunks_total);
    cm_storage__bind_text (stmt, 6, error);
    if (cm_storage__step (self, stmt, "update job"))
        return CM_STORAGE_ERROR;
    if (!sqlite3_changes (self->db)) {
        snprintf (self->errmsg, sizeof self->errmsg, "no job %s", id);
        return CM_STORAGE_NOT_FOUND;
    }
    if (!job_p)
        return CM_STORAGE_OK;
    return cm_storage_job_get (self, id, job_p);
}

cm_storage_status_t
cm_storage_job_set_path (cm_storage_t *self, const char *id, const char *path)
{
    assert (self);
    assert (id);
    self->errmsg[0] = 0;
    if (!path || (strcmp (path, "queue") && strcmp (path, "fallback"))) {
        snprintf (self->errmsg, sizeof self->errmsg,
                  "path must be \"queue\" or \"fallback\"");
        return CM_STORAGE_INVALID;
    }
    sqlite3_stmt *stmt =
        cm_storage__stmt (self, "UPDATE ingest_jobs SET path = ?2, lastUpdatedAt = " S_NOW
                                " WHERE id = ?1");
    if (!stmt)
        return CM_STORAGE_ERROR;
    sqlite3_bind_text (stmt, 1, id, -1, SQLITE_TRANSIENT);
    sqlite3_bind_text (stmt, 2, path, -1, SQLITE_TRANSIENT);
    if (cm_storage__step (self, stmt, "set job path"))
        return CM_STORAGE_ERROR;
    if (!sqlite3_changes (self->db)) {
        snprintf (self->errmsg, sizeof self->errmsg, "no job %s", id);
        return CM_STORAGE_NOT_FOUND;
    }
    return CM_STORAGE_OK;
}

cm_storage_status_t
cm_storage_job_fail_owned (cm_storage_t *self, const char *id, const char *owner,
                           const char *error)
{
    assert (self && id && owner && error);
    self->errmsg[0] = 0;
    sqlite3_stmt *stmt =
        cm_storage__stmt (self, "UPDATE ingest_jobs SET state = 'failed', error = ?3, "
                                "finishedAt = " S_NOW ", lastUpdatedAt = " S_NOW
                                " WHERE id = ?1 AND owner = ?2");
    if (!stmt)
        return CM_STORAGE_ERROR;
    sqlite3_bind_text (stmt, 1, id, -1, SQLITE_TRANSIENT);
    sqlite3_bind_text (stmt, 2, owner, -1, SQLITE_TRANSIENT);
    sqlite3_bind_text (stmt, 3, error, -1, SQLITE_TRANSIENT);
    if (cm_storage__step (self, stmt, "fail owned job"))
        return CM_STORAGE_ERROR;
    if (!sqlite3_changes (self->db)) {
        snprintf (self->errmsg, sizeof self->errmsg, "no job %s owned by %s", id, owner);
        return CM_STORAGE_NOT_FOUND;
    }
    return CM_STORAGE_OK;
}

cm_storage_status_t
cm_storage_jobs_disown (cm_storage_t *self, const json_t *ids)
{
    assert (self && json_is_array (ids));
    self->errmsg[0] = 0;
    char *text = json_dumps (ids, JSON_COMPACT);
    sqlite3_stmt *stmt =
        cm_storage__stmt (self, "UPDATE ingest_jobs SET owner = NULL WHERE id IN "
                                "(SELECT value FROM json_each (?1))");
    cm_storage_status_t status = CM_STORAGE_ERROR;
    if (stmt) {
        sqlite3_bind_text (stmt, 1, text, -1, SQLITE_TRANSIENT);
        if (!cm_storage__step (self, stmt, "disown jobs"))
            status = CM_STORAGE_OK;
    }
    free (text);
    return status;
}

cm_storage_status_t
cm_storage_job_get (cm_storage_t *self, const char *id, json_t **job_p)
{
    assert (self);
    assert (id);
    assert (job_p);
    *job_p = NULL;
    self->errmsg[0] = 0;
    return cm_storage__get (self,
                            "SELECT " S_JOB_COLUMNS " FROM ingest_jobs WHERE id = ?1", id,
                            "get job", job_p);
}

cm_storage_status_t
cm_storage_jobs_for_location (cm_storage_t *self, const char *location, json_t **jobs_p)
{
    assert (self);
    assert (location);
    assert (jobs_p);
    *jobs_p = NULL;
    self->errmsg[0] = 0;
    sqlite3_stmt *stmt = cm_storage__stmt (
        self, "SELECT " S_JOB_COLUMNS
              " FROM ingest_jobs WHERE location = ?1 ORDER BY createdAt, rowid");
    if (!stmt)
        return CM_STORAGE_ERROR;
    sqlite3_bind_text (stmt, 1, location, -1, SQLITE_TRANSIENT);
    return cm_storage__rows (self, stmt, "list jobs of a document", jobs_p);
}

//  States as a JSON array's text, for json_each; the caller frees it.
static char *
s_states_json (const char *const *states, size_t count)
{
    json_t *list = json_array ();
    for (size_t i = 0; i < count; i++)
        json_array_append_new (list, json_string (states[i]));
    char *text = json_dumps (list, JSON_COMPACT);
    json_decref (list);
    return text;
}

cm_storage_status_t
cm_storage_jobs_stale (cm_storage_t *self, const char *const *states, size_t count,
                       int64_t older_ms, json_t **jobs_p)
{
    assert (self);
    assert (jobs_p);
    assert (states || !count);
    *jobs_p = NULL;
    self->errmsg[0] = 0;
    if (older_ms < 0)
        older_ms = 0;
    char *list_text = s_states_json (states, count);
    //  Timestamps are ISO-8601 UTC text of one width: they sort as times.
    char modifier[64];
    snprintf (modifier, sizeof modifier, "-%lld.%03lld seconds",
              (long long) (older_ms / 1000), (long long) (older_ms % 1000));
    sqlite3_stmt *stmt = cm_storage__stmt (
        self, "SELECT " S_JOB_COLUMNS " FROM ingest_jobs WHERE state IN "
              "(SELECT value FROM json_each (?1)) AND lastUpdatedAt <= "
              "strftime('%Y-%m-%dT%H:%M:%fZ', 'now', ?2) ORDER BY lastUpdatedAt");
    cm_storage_status_t status = CM_STORAGE_ERROR;
    if (stmt) {
        sqlite3_bind_text (stmt, 1, list_text, -1, SQLITE_TRANSIENT);
        sqlite3_bind_text (stmt, 2, modifier, -1, SQLITE_TRANSIENT);
        status = cm_storage__rows (self, stmt, "list stale jobs", jobs_p);
    }
    free (list_text);
    return status;
}

cm_storage_status_t
cm_storage_jobs_orphaned (cm_storage_t *self, const char *const *states, size_t count,
                          const json_t *live, size_t limit, json_t **jobs_p)
{
    assert (self && jobs_p && json_is_array (live));
    assert (states || !count);
    *jobs_p = NULL;
    self->errmsg[0] = 0;
    char *states_text = s_states_json (states, count);
    char *owners_text = json_dumps (live, JSON_COMPACT);
    sqlite3_stmt *stmt = cm_storage__stmt (
        self, "SELECT " S_JOB_COLUMNS ", owner FROM ingest_jobs WHERE state IN "
              "(SELECT value FROM json_each (?1)) AND owner IS NOT NULL AND owner NOT IN "
              "(SELECT value FROM json_each (?2)) ORDER BY lastUpdatedAt DESC LIMIT ?3");
    cm_storage_status_t status = CM_STORAGE_ERROR;
    if (stmt) {
        sqlite3_bind_text (stmt, 1, states_text, -1, SQLITE_TRANSIENT);
        sqlite3_bind_text (stmt, 2, owners_text, -1, SQLITE_TRANSIENT);
        sqlite3_bind_int64 (stmt, 3,
                            limit > INT64_MAX ? INT64_MAX : (sqlite3_int64) limit);
        status = cm_storage__rows (self, stmt, "list orphaned jobs", jobs_p);
    }
    free (states_text);
    free (owners_text);
    return status;
}
