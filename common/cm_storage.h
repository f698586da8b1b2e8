/*  cm_storage.h: the one storage module. All SQL of llmrt lives behind it.

    The embedded backend is SQLite: one file, $STORAGE_DIR/llmrt.db, in WAL
    mode (synchronous=NORMAL, foreign keys on, busy timeout 5 s), shared by
    every daemon process on the host. Opening it creates the directory
    (mkdir -p) and brings the schema up to date inside BEGIN IMMEDIATE, so
    several processes may open a fresh file at the same moment; the schema
    version is PRAGMA user_version and migrations only ever move it forward.
    The interface speaks JSON (jansson) in the shapes AnythingLLM's API
    returns (camelCase keys as upstream has them), so that another backend
    (PostgreSQL) can implement the same calls later.

    Threading: a cm_storage_t is one database connection with its cache of
    prepared statements. It belongs to ONE thread at a time; it is not
    locked. Threads that share work use a cm_storage_pool_t, which is
    thread-safe and lends each caller a connection of its own for the
    duration of a request (acquire ... release).

    Errors: a database failure (disk full, locked beyond the busy timeout,
    corrupt file) is logged once, here, and returned as CM_STORAGE_ERROR /
    -1 / NULL with the reason in cm_storage_errmsg; nothing in here asserts
    on input or on the database, only on API misuse (NULL self). */
#ifndef CM_STORAGE_H_INCLUDED
#define CM_STORAGE_H_INCLUDED

#include "cm_common.h"
#include "cm_config.h"
#include <jansson.h>

typedef struct cm_storage_s cm_storage_t;
typedef struct cm_storage_pool_s cm_storage_pool_t;

//  Outcome of a storage call.
typedef enum {
    CM_STORAGE_OK = 0,        //  done; the out-parameter holds the result
    CM_STORAGE_NOT_FOUND = 1, //  no such row; the out-parameter is NULL
    CM_STORAGE_INVALID = 2,   //  the input was refused (reason in errmsg)
    CM_STORAGE_CONFLICT = 3,  //  a unique key is taken (reason in errmsg)
    CM_STORAGE_ERROR = -1,    //  the database failed (logged; reason in errmsg)
} cm_storage_status_t;

//  File name inside the storage directory.
#define CM_STORAGE_FILE "llmrt.db"
//  Kept beside it once a database was made there: a database that goes
//  missing later (deleted or moved under a running suite) is not made
//  again, empty, by whichever process opens it next, which would split the
//  suite between two files; cm_storage_new refuses, naming this file.
#define CM_STORAGE_MARKER "llmrt.db.created"
//  Schema version this build creates and expects.
#define CM_STORAGE_SCHEMA_VERSION 6

//  --- connection -------------------------------------------------------------

//  Open (creating if needed, unless CM_STORAGE_MARKER says it existed
//  there before) dir/llmrt.db and migrate it. Returns a new
//  connection the caller owns, or NULL with the reason in err.
cm_storage_t *cm_storage_new (const char *dir, char *err, size_t errlen);
//  Close; NULL-safe; nulls the pointer.
void cm_storage_destroy (cm_storage_t **self_p);
//  Path of the database file (borrowed).
const char *cm_storage_path (cm_storage_t *self);
//  PRAGMA user_version of the open file.
int cm_storage_schema_version (cm_storage_t *self);
//  True when a trivial query succeeds (health checks).
bool cm_storage_ping (cm_storage_t *self);
//  Reason of the last failed call on this connection (borrowed; "" if none).
const char *cm_storage_errmsg (cm_storage_t *self);

//  A transaction of the caller's, around calls on this connection whose
//  write depends on what they read (read a row, merge, write it back):
//  BEGIN IMMEDIATE takes the write lock at once, so two such cannot
//  interleave and lose one's change. OK or ERROR (errmsg).
cm_storage_status_t cm_storage_begin (cm_storage_t *self);
//  Commit it: OK or ERROR (then it was rolled back).
cm_storage_status_t cm_storage_commit (cm_storage_t *self);
//  Undo it (nothing when none is open).
void cm_storage_rollback (cm_storage_t *self);

//  RUN_DIR and STORAGE_DIR as cm_config table entries into two char *
//  members of type; after cm_config_load, cm_storage_dir_default.
// clang-format off
#define CM_STORAGE_CONF_ENTRIES(type, run_dir_member, storage_dir_member)                \
    {"RUN_DIR", CM_CONF_STR, "./var", 0, 0, offsetof (type, run_dir_member),            \
     "runtime directory (state, logs); STORAGE_DIR defaults under it"},                 \
    {"STORAGE_DIR", CM_CONF_STR, NULL, 0, 0, offsetof (type, storage_dir_member),       \
     "directory of the SQLite database llmrt.db (default $RUN_DIR/storage)"}
// clang-format on

//  When *storage_dir_p is NULL or "", make it "<run_dir>/storage" (a new
//  string in its place, freed with the rest of the table by cm_config_free).
void cm_storage_dir_default (char **storage_dir_p, const char *run_dir);

//  --- pool: connections lent to threads ----------------------------------------

//  A thread-safe lender of connections to dir's database. Opens one at once
//  to check that the database is usable; NULL with the reason in err.
cm_storage_pool_t *cm_storage_pool_new (const char *dir, char *err, size_t errlen);
//  The pool's checkpointer copies the WAL into the database every
//  period_ms (default 100; PASSIVE: it never waits), and once the WAL is
//  longer than wal_limit_frames pages (default 16384, 64 MB with 4 KiB
//  pages) rewinds it (RESTART: it waits, and writers with it, up to ~10 ms
//  at full load), so that the WAL stays bounded even when readers never stop.
//  The defaults suit production; tests shrink both.
void cm_storage_pool_set_checkpoints (cm_storage_pool_t *self, int64_t period_ms,
                                      int wal_limit_frames);
//  Close every idle connection; all lent ones must be back. NULL-safe.
void cm_storage_pool_destroy (cm_storage_pool_t **self_p);
//  Lend a connection (an idle one, or a new one). NULL when a new connection
//  cannot be opened (logged). The calling thread owns it until release.
cm_storage_t *cm_storage_pool_acquire (cm_storage_pool_t *self);
//  Give a connection back; nulls *storage_p. NULL-safe on *storage_p.
void cm_storage_pool_release (cm_storage_pool_t *self, cm_storage_t **storage_p);

//  --- workspaces ---------------------------------------------------------------

//  Upstream's slug rule: lower-case ASCII letters and digits kept, every
//  other run of bytes becomes one '-', no '-' at either end. May be "".
//  Returns a new string the caller frees.
char *cm_storage_slugify (const char *name);

//  Create a workspace from a request object {name, similarityThreshold?,
//  openAiTemp?, openAiHistory?, openAiPrompt?, queryRefusalResponse?,
//  chatMode?, topN?, chatProvider?, chatModel?, agentProvider?, agentModel?,
//  vectorSearchMode?}; values are normalised as upstream does (bad numbers
//  fall back to defaults, thresholds are clamped). The slug is the slugified
//  name; when taken, "<slug>-<8 random digits>"; when empty, a UUID.
//  INVALID when name is missing, not a string or empty (errmsg "name cannot
//  be null"). On OK, *workspace_p is the new row, caller owns it.
cm_storage_status_t cm_storage_workspace_create (cm_storage_t *self, const json_t *fields,
                                                 json_t **workspace_p);

//  The workspace with this slug: {id, name, slug, vectorTag, createdAt,
//  openAiTemp, openAiHistory, lastUpdatedAt, openAiPrompt,
//  similarityThreshold, chatProvider, chatModel, topN, chatMode, pfpFilename,
//  agentProvider, agentModel, queryRefusalResponse, vectorSearchMode}.
//  OK (caller owns *workspace_p), NOT_FOUND or ERROR.
cm_storage_status_t cm_storage_workspace_get (cm_storage_t *self, const char *slug,
                                              json_t **workspace_p);

//  Every workspace (by id), each with "threads": the array of its threads
//  (as cm_storage_thread_get returns them). Caller owns *workspaces_p.
cm_storage_status_t cm_storage_workspace_list (cm_storage_t *self, json_t **workspaces_p);

//  --- threads ------------------------------------------------------------------

//  Create a thread in a workspace from {name?, slug?, userId?}: name
//  defaults to "Thread", slug to a UUID (a given slug is slugified).
//  CONFLICT when the slug is taken, INVALID when it slugifies to "".
//  On OK, *thread_p is {id, name, slug, workspace_id, user_id, createdAt,
//  lastUpdatedAt}, caller owns it.
cm_storage_status_t cm_storage_thread_create (cm_storage_t *self, int64_t workspace_id,
                                              const json_t *fields, json_t **thread_p);

//  The thread with this slug in this workspace. OK, NOT_FOUND or ERROR.
cm_storage_status_t cm_storage_thread_get (cm_storage_t *self, int64_t workspace_id,
                                           const char *slug, json_t **thread_p);

//  The threads of a workspace, by id. Caller owns *threads_p.
cm_storage_status_t cm_storage_thread_list (cm_storage_t *self, int64_t workspace_id,
                                            json_t **threads_p);

//  --- chat history -------------------------------------------------------------

//  One saved turn.
typedef struct {
    int64_t workspace_id;   //  owning workspace (must exist)
    const char *prompt;     //  the user's message
    const json_t *response; //  {text, sources, type, attachments, metrics}
    const char *session_id; //  the API caller's sessionId; NULL: none
    int64_t thread_id;      //  0: not in a thread
    int64_t user_id;        //  0: no user
    bool include;           //  counts as history for later prompts
    const char *request_id; //  the gateway's request id, kept with the turn;
                            //  NULL: none
    int64_t twice_from_us;  //  cm_clock_mono_us from which the request may
                            //  also run at another instance (cm_call_twice_
                            //  from_us; 0: from the start): from then on the
                            //  turn is saved only if that run did not save
                            //  it first. INT64_MAX: never
} cm_storage_chat_t;

//  Save a turn. Returns its id (the "chatId"), or -1 on failure. A turn
//  past its twice_from_us, whose request_id its conversation holds
//  already, is not saved again: the earlier turn's id is returned (the
//  clock is read, and the look made, under the write lock the insert
//  takes). On a pooled connection (outside a transaction of the caller)
//  turns of the pool's threads are group-committed: whichever arrive while
//  a commit runs are written together in the next transaction, by one of
//  their callers, each returning once its own turn is committed. A turn
//  that fails alone (say its workspace is gone) does not fail the others.
int64_t cm_storage_chat_add (cm_storage_t *self, const cm_storage_chat_t *chat);
//  The pool's group commits so far: transactions and the turns they
//  wrote (turns / commits is the average batch).
void cm_storage_pool_chat_commits (cm_storage_pool_t *self, uint64_t *commits,
                                   uint64_t *turns);

//  Which turns of a workspace to read or reset. NULL/0 match rows where the
//  column is NULL, as upstream's queries do.
typedef struct {
    const char *session_id;     //  NULL: rows without a session
    int64_t thread_id;          //  0: rows without a thread
    int64_t user_id;            //  0: rows without a user; -1: any user
    bool included_only;         //  only rows with include = true
    int64_t limit;              //  at most this many; <= 0: no limit
    bool newest_first;          //  order by id descending (default ascending)
    const char *not_request_id; //  leave out the turn this request id saved
                                //  (its run at another instance); NULL: none
} cm_storage_chat_filter_t;

//  Turns of a workspace, as an array of {id, workspaceId, prompt, response
//  (parsed JSON), include, user_id, thread_id, api_session_id, createdAt,
//  lastUpdatedAt, feedbackScore}. Caller owns *chats_p.
cm_storage_status_t cm_storage_chat_list (cm_storage_t *self, int64_t workspace_id,
                                          const cm_storage_chat_filter_t *filter,
                                          json_t **chats_p);

//  The conversation as a prompt needs it, without building JSON: the
//  matching turns' prompt and answer text (the response's "text"), newest
//  first, handed to fn one by one (strings borrowed for the call). Returns
//  CM_STORAGE_OK or CM_STORAGE_ERROR.
typedef void (cm_storage_turn_fn) (const char *prompt, const char *answer, void *arg);
cm_storage_status_t cm_storage_chat_context (cm_storage_t *self, int64_t workspace_id,
                                             const cm_storage_chat_filter_t *filter,
                                             cm_storage_turn_fn *fn, void *arg);

//  Mark the matching turns include = false (the "reset" of a conversation;
//  limit and order are ignored). Returns how many, or -1 on failure.
int64_t cm_storage_chat_reset (cm_storage_t *self, int64_t workspace_id,
                               const cm_storage_chat_filter_t *filter);

//  --- API keys -------------------------------------------------------------------

//  Keys are stored as a hash of their secret (the caller hashes; the secret
//  itself never reaches the database) and a short public prefix that lets
//  people tell keys apart. role is "admin" or "default". Rows read back as
//  {id, name, role, prefix, createdBy, createdAt, lastUpdatedAt}: never the
//  hash.

//  Add a key. INVALID when role is neither "admin" nor "default", CONFLICT
//  when the hash is taken. On OK, *key_p is the new row, caller owns it.
//  name and created_by may be NULL.
cm_storage_status_t cm_storage_apikey_create (cm_storage_t *self, const char *name,
                                              const char *role, const unsigned char *hash,
                                              size_t hash_size, const char *prefix,
                                              const char *created_by, json_t **key_p);

//  The keys not revoked, by id. Caller owns *keys_p.
cm_storage_status_t cm_storage_apikey_list (cm_storage_t *self, json_t **keys_p);

//  Revoke a key (its row stays, with revokedAt set). NOT_FOUND when there is
//  no such key or it is revoked already.
cm_storage_status_t cm_storage_apikey_revoke (cm_storage_t *self, int64_t id);

//  The key, not revoked, whose secret hashes to hash: OK with its id and role
//  (copied into role, role_size bytes), NOT_FOUND, or ERROR. The stored hash
//  is compared in constant time. Builds no JSON: this runs per request on a
//  cache miss.
cm_storage_status_t cm_storage_apikey_find (cm_storage_t *self, const unsigned char *hash,
                                            size_t hash_size, int64_t *id_p, char *role,
                                            size_t role_size);

//  Documents, chunks, vectors and ingestion jobs: cm_storage_docs.h.
//  Agent flows: cm_storage_flows.h.

#endif
