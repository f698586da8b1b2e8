/*  cm_storage_docs.h: documents, their chunks and vectors, the documents of
    a workspace, and ingestion jobs, in the storage module (the SQL of
    ingestd, and of chatd's vector search through cm_vsearch).

    A document is parsed once (its row holds the text) and embedded once:
    its chunks belong to it, each with its vector, and a workspace sees the
    chunks of the documents linked to it (workspace_documents, docpath =
    documents.location) once the document is marked embedded. A chunk's id
    is a UUID derived from its document and position, so storing the same
    chunks again (a job that runs twice) stores each one once.

    Vectors are float32 in the host's byte order (little-endian on every
    platform llmrt builds for), dim * 4 bytes per chunk.

    Rows read back as JSON in upstream's camelCase shapes (the caller owns
    what it gets); statuses, errors and threading as cm_storage.h. */
#ifndef CM_STORAGE_DOCS_H_INCLUDED
#define CM_STORAGE_DOCS_H_INCLUDED

#include "cm_storage.h"

//  --- documents ------------------------------------------------------------------

//  Add a document from {location, name, url?, title?, docAuthor?,
//  description?, docSource?, chunkSource?, published?, wordCount?,
//  token_count_estimate?, metadata? (any JSON)} and its text. INVALID when
//  location or name is missing or empty, or content is NULL; CONFLICT when
//  the location is taken (read it with cm_storage_document_get). On OK,
//  *document_p is the new row, without the text: {id, location, name, url,
//  title, docAuthor, description, docSource, chunkSource, published,
//  wordCount, token_count_estimate, metadata, embedded, createdAt,
//  lastUpdatedAt}. document_p may be NULL (not wanted).
cm_storage_status_t cm_storage_document_add (cm_storage_t *self, const json_t *fields,
                                             const char *content, json_t **document_p);

//  The document at location, as document_add returns it, plus
//  "pageContent" (upstream's name for the text) when with_content.
//  OK (caller owns *document_p), NOT_FOUND or ERROR.
cm_storage_status_t cm_storage_document_get (cm_storage_t *self, const char *location,
                                             bool with_content, json_t **document_p);

//  The text of the document at location, a new string the caller frees.
//  OK, NOT_FOUND or ERROR.
cm_storage_status_t cm_storage_document_content (cm_storage_t *self, const char *location,
                                                 char **content_p);

//  Delete the document at location with its chunks (workspace links stay,
//  and see nothing, as upstream's links to a removed file). OK, NOT_FOUND
//  or ERROR.
cm_storage_status_t cm_storage_document_delete (cm_storage_t *self, const char *location);

//  Mark a document embedded: its chunks become visible to the workspaces
//  it is linked to. OK (also when it was already), NOT_FOUND or ERROR.
cm_storage_status_t cm_storage_document_set_embedded (cm_storage_t *self,
                                                      int64_t document_id);

//  --- chunks -----------------------------------------------------------------------

//  Store count chunks of a document at positions first_position ..
//  first_position + count - 1: texts[i] and the dim floats at
//  vectors + i * dim. A chunk already stored (same document and position)
//  is kept as it is. One transaction: all or nothing. INVALID when a text
//  is NULL or dim is 0 (count 0 is OK), NOT_FOUND when there is no such
//  document. *stored_p (may be NULL) is how many were new.
cm_storage_status_t cm_storage_chunks_put (cm_storage_t *self, int64_t document_id,
                                           int64_t first_position, size_t count,
                                           const char *const *texts, const float *vectors,
                                           size_t dim, size_t *stored_p);

//  Chunks stored for a document, or -1 on failure.
int64_t cm_storage_chunks_count (cm_storage_t *self, int64_t document_id);

//  The id of the chunk of document_id at position (a UUID, lower-case).
void cm_storage_chunk_id (int64_t document_id, int64_t position, char out[37]);

//  --- workspace documents --------------------------------------------------------

//  Link the document at location to a workspace (upstream's "add to
//  workspace"). Idempotent: a link that exists is returned as it is. On
//  OK, *link_p (may be NULL) is {id, docId (a UUID per link), filename
//  (location's last part), docpath (= location), workspaceId, metadata
//  (the document's fields, parsed), pinned, watched, createdAt,
//  lastUpdatedAt}. NOT_FOUND when there is no such workspace or document
//  (errmsg says which).
cm_storage_status_t cm_storage_workspace_doc_link (cm_storage_t *self,
                                                   int64_t workspace_id,
                                                   const char *location, json_t **link_p);

//  Unlink the documents of deletes, then link those of adds (arrays of
//  locations; NULL: none), all in one transaction: any failure changes
//  nothing. A location in both ends up linked. NOT_FOUND for no such
//  workspace or an added location that is no document (errmsg names it),
//  INVALID for an added location that is not a string.
cm_storage_status_t cm_storage_workspace_docs_update (cm_storage_t *self,
                                                      int64_t workspace_id,
                                                      const json_t *deletes,
                                                      const json_t *adds);

//  Remove a link. OK, NOT_FOUND (no such link) or ERROR.
cm_storage_status_t cm_storage_workspace_doc_unlink (cm_storage_t *self,
                                                     int64_t workspace_id,
                                                     const char *location);

//  The links of a workspace, oldest first (the "documents" array of GET
//  /api/v1/workspace/{slug}). Caller owns *links_p.
cm_storage_status_t cm_storage_workspace_doc_list (cm_storage_t *self,
                                                   int64_t workspace_id,
                                                   json_t **links_p);

//  How many documents every workspace has (its links, the "documents" of
//  GET /api/v1/workspace/{slug}), in one read for all workspaces: on OK,
//  *counts_p (caller owns) is {"<workspace id>": count} with the
//  workspaces that have any; a workspace not in it has none. OK or ERROR.
cm_storage_status_t cm_storage_workspace_doc_counts (cm_storage_t *self,
                                                     json_t **counts_p);

//  --- vectors ------------------------------------------------------------------------

//  The version of a workspace's vector set: it changes (increases) in the
//  same transaction as anything that changes the set (a link or unlink, a
//  linked document's chunks, its embedded flag, its deletion). One
//  primary-key read. OK, NOT_FOUND (no such workspace) or ERROR.
cm_storage_status_t cm_storage_vectors_version (cm_storage_t *self, int64_t workspace_id,
                                                int64_t *version_p);

//  One chunk as cm_storage_vectors_load and cm_storage_chunk_read hand it
//  over. Strings are borrowed for the call; NULL when the column is NULL or
//  was not asked for. vector may be unaligned: memcpy it.
typedef struct {
    const char *id;      //  the chunk's id (cm_storage_chunk_id)
    int64_t document_id; //  its document
    int64_t position;    //  its place in the document, from 0
    const void *vector;  //  dim float32s
    size_t dim;          //  the vector's dimension
    const char *text;    //  CM_STORAGE_CHUNK_TEXT
    //  CM_STORAGE_CHUNK_DOCUMENT: the document's fields (-1: NULL)
    const char *url, *title, *doc_author, *description, *doc_source, *chunk_source,
        *published;
    int64_t word_count, token_count_estimate;
} cm_storage_chunk_t;

//  What a chunk read includes besides id, document, position and vector.
#define CM_STORAGE_CHUNK_TEXT     1
#define CM_STORAGE_CHUNK_DOCUMENT 2

typedef void (cm_storage_chunk_fn) (const cm_storage_chunk_t *chunk, void *arg);

//  Every chunk a workspace sees (embedded, linked documents), by document
//  location then position, to fn; with the set's version (*version_p) read in the same
//  read transaction, so the two agree. what: CM_STORAGE_CHUNK_* flags.
//  OK, NOT_FOUND (no such workspace) or ERROR (fn may have seen some rows).
cm_storage_status_t cm_storage_vectors_load (cm_storage_t *self, int64_t workspace_id,
                                             int what, int64_t *version_p,
                                             cm_storage_chunk_fn *fn, void *arg);

//  The chunk of document_id at position, with its text and document
//  fields, to fn. OK, NOT_FOUND or ERROR.
cm_storage_status_t cm_storage_chunk_read (cm_storage_t *self, int64_t document_id,
                                           int64_t position, cm_storage_chunk_fn *fn,
                                           void *arg);

//  --- ingestion jobs ----------------------------------------------------------------

//  A job's row: {id, location, state (queued|active|completed|failed),
//  path (queue|fallback), workspaces (array of slugs), attempts,
//  maxAttempts, chunksDone, chunksTotal, error, createdAt, lastUpdatedAt,
//  finishedAt}.

//  Record a new job in state "queued". id NULL: a new UUID. owner: the
//  process (keeper id) that will hand it to the queue or run it, or NULL.
//  workspaces: an array of slugs, or NULL for []. INVALID when location is
//  missing, path is neither "queue" nor "fallback", workspaces is not an
//  array or max_attempts < 1; CONFLICT when the id is taken. On OK, *job_p
//  (may be NULL) is the new row.
cm_storage_status_t cm_storage_job_create (cm_storage_t *self, const char *id,
                                           const char *location, const char *path,
                                           const char *owner, const json_t *workspaces,
                                           int max_attempts, json_t **job_p);

//  Update a job. state NULL, or a number < 0, leaves that column as it
//  is; error NULL leaves it, "" clears it. Setting state "completed" or
//  "failed" sets finishedAt; another state clears it. lastUpdatedAt is
//  always touched. INVALID for an unknown state, NOT_FOUND for no such
//  job. On OK, *job_p (may be NULL) is the updated row.
cm_storage_status_t cm_storage_job_update (cm_storage_t *self, const char *id,
                                           const char *state, int attempts,
                                           int64_t chunks_done, int64_t chunks_total,
                                           const char *error, json_t **job_p);

//  Record which path embeds a job ("queue" or "fallback"): the path
//  chosen at creation changes when the queue turns out to be unavailable.
//  INVALID for another path, NOT_FOUND for no such job.
cm_storage_status_t cm_storage_job_set_path (cm_storage_t *self, const char *id,
                                             const char *path);

//  Mark a job failed with error, but only while owner (not NULL) still
//  owns it: a row the reconciler has handed to the queue (and disowned)
//  is the queue's to end. NOT_FOUND when there is no such job or it is
//  not owner's.
cm_storage_status_t cm_storage_job_fail_owned (cm_storage_t *self, const char *id,
                                               const char *owner, const char *error);

//  Clear the owner of the jobs ids (an array of strings), in one
//  transaction; ids that name no job are skipped.
cm_storage_status_t cm_storage_jobs_disown (cm_storage_t *self, const json_t *ids);

//  The job with this id. OK, NOT_FOUND or ERROR.
cm_storage_status_t cm_storage_job_get (cm_storage_t *self, const char *id,
                                        json_t **job_p);

//  The jobs of a document location, oldest first. Caller owns *jobs_p.
cm_storage_status_t cm_storage_jobs_for_location (cm_storage_t *self,
                                                  const char *location, json_t **jobs_p);

//  The jobs in one of the states[0 .. count-1] not updated for older_ms
//  milliseconds or more, oldest update first (a reconciler's view of
//  work that stopped). Caller owns *jobs_p.
cm_storage_status_t cm_storage_jobs_stale (cm_storage_t *self, const char *const *states,
                                           size_t count, int64_t older_ms,
                                           json_t **jobs_p);

//  At most limit jobs in one of the states[0 .. count-1] that have an
//  owner and whose owner is none of live (an array of strings), each row
//  with its "owner" too, newest update first. Caller owns *jobs_p.
cm_storage_status_t cm_storage_jobs_orphaned (cm_storage_t *self,
                                              const char *const *states, size_t count,
                                              const json_t *live, size_t limit,
                                              json_t **jobs_p);

#endif
