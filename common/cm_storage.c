/*  cm_storage.c: see cm_storage.h. SQLite, WAL mode, one file per host.

    Concurrency: several processes (chatd replicas, ingestd, agentd) write
    the same file. Every multi-statement write runs in BEGIN IMMEDIATE, so a
    writer takes the lock before it reads what it will decide on (no
    SQLITE_BUSY_SNAPSHOT on upgrade, no lost slug race), and the busy
    timeout makes waiters queue instead of failing. Every statement is reset
    right after use so that no read transaction stays open and pins an old
    WAL snapshot. */
#include "cm_storage_int.h"
#include "cm_log.h"
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sodium.h>
#include <sqlite3.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <math.h>

//  How long a connection waits for another one's lock before failing.
#define S_BUSY_TIMEOUT_MS 5000
//  Upstream truncates workspace names to 255 characters.
#define S_NAME_MAX_CHARS 255
//  Attempts at a free "<slug>-<8 digits>" before giving up.
#define S_SLUG_TRIES 16

#define S_NOW CM_STORAGE_NOW

//  Migrations, in order: s_migrations[v] takes the schema from version v to
//  v + 1. Append only; never edit a released step. Column order follows
//  upstream's Prisma schema so rows read back in upstream's key order.
//  Declared types matter to cm_storage__row: BOOLEAN reads back as true/false and
//  JSON_TEXT (TEXT affinity) as parsed JSON.
static const char *s_migrations[CM_STORAGE_SCHEMA_VERSION] = {
    //  1: workspaces, threads, chat history
    "CREATE TABLE IF NOT EXISTS workspaces ("
    "  id INTEGER PRIMARY KEY AUTOINCREMENT,"
    "  name TEXT NOT NULL,"
    "  slug TEXT NOT NULL UNIQUE,"
    "  vectorTag TEXT,"
    "  createdAt TEXT NOT NULL DEFAULT (" S_NOW "),"
    "  openAiTemp REAL,"
    "  openAiHistory INTEGER NOT NULL DEFAULT 20,"
    "  lastUpdatedAt TEXT NOT NULL DEFAULT (" S_NOW "),"
    "  openAiPrompt TEXT,"
    "  similarityThreshold REAL DEFAULT 0.25,"
    "  chatProvider TEXT,"
    "  chatModel TEXT,"
    "  topN INTEGER DEFAULT 4,"
    "  chatMode TEXT DEFAULT 'automatic',"
    "  pfpFilename TEXT,"
    "  agentProvider TEXT,"
    "  agentModel TEXT,"
    "  queryRefusalResponse TEXT,"
    "  vectorSearchMode TEXT DEFAULT 'default');"
    "CREATE TABLE IF NOT EXISTS workspace_threads ("
    "  id INTEGER PRIMARY KEY AUTOINCREMENT,"
    "  name TEXT NOT NULL,"
    "  slug TEXT NOT NULL UNIQUE,"
    "  workspace_id INTEGER NOT NULL REFERENCES workspaces (id) ON DELETE CASCADE,"
    "  user_id INTEGER,"
    "  createdAt TEXT NOT NULL DEFAULT (" S_NOW "),"
    "  lastUpdatedAt TEXT NOT NULL DEFAULT (" S_NOW "));"
    "CREATE INDEX IF NOT EXISTS workspace_threads_workspace_id"
    "  ON workspace_threads (workspace_id);"
    "CREATE TABLE IF NOT EXISTS workspace_chats ("
    "  id INTEGER PRIMARY KEY AUTOINCREMENT,"
    "  workspaceId INTEGER NOT NULL REFERENCES workspaces (id) ON DELETE CASCADE,"
    "  prompt TEXT NOT NULL,"
    "  response JSON_TEXT NOT NULL,"
    "  include BOOLEAN NOT NULL DEFAULT 1,"
    "  user_id INTEGER,"
    "  thread_id INTEGER,"
    "  api_session_id TEXT,"
    "  createdAt TEXT NOT NULL DEFAULT (" S_NOW "),"
    "  lastUpdatedAt TEXT NOT NULL DEFAULT (" S_NOW "),"
    "  feedbackScore BOOLEAN);"
    "CREATE INDEX IF NOT EXISTS workspace_chats_conversation"
    "  ON workspace_chats (workspaceId, thread_id, api_session_id);",
    //  2: API keys. Only a hash of each secret is kept (the gateway's
    //  gw_keys says which); a revoked key keeps its row, with revokedAt set,
    //  so that who had access when stays on record.
    "CREATE TABLE IF NOT EXISTS api_keys ("
    "  id INTEGER PRIMARY KEY AUTOINCREMENT,"
    "  name TEXT,"
    "  role TEXT NOT NULL DEFAULT 'default',"
    "  hash BLOB NOT NULL UNIQUE,"
    "  prefix TEXT NOT NULL,"
    "  createdBy TEXT,"
    "  createdAt TEXT NOT NULL DEFAULT (" S_NOW "),"
    "  lastUpdatedAt TEXT NOT NULL DEFAULT (" S_NOW "),"
    "  revokedAt TEXT);",
    //  3: documents and their embedded chunks; ingestion jobs; agent flows.
    //  A document is parsed once (upstream keeps it as a JSON file under
    //  storage/documents; here its row holds the text) and embedded once:
    //  its chunks and vectors belong to the document, and a workspace sees
    //  the chunks of the documents linked to it (workspace_documents, as
    //  upstream names it). A chunk's id is derived from its document and
    //  position, so a job that runs twice stores each chunk once. The job
    //  row is the durable record of an ingestion (Redis only carries the
    //  queue), so its state can be asked for whichever path ran it.
    "CREATE TABLE IF NOT EXISTS documents ("
    "  id INTEGER PRIMARY KEY AUTOINCREMENT,"
    "  location TEXT NOT NULL UNIQUE,"
    "  name TEXT NOT NULL,"
    "  url TEXT,"
    "  title TEXT,"
    "  docAuthor TEXT,"
    "  description TEXT,"
    "  docSource TEXT,"
    "  chunkSource TEXT,"
    "  published TEXT,"
    "  wordCount INTEGER,"
    "  token_count_estimate INTEGER,"
    "  metadata JSON_TEXT,"
    "  content TEXT NOT NULL,"
    "  embedded BOOLEAN NOT NULL DEFAULT 0,"
    "  createdAt TEXT NOT NULL DEFAULT (" S_NOW "),"
    "  lastUpdatedAt TEXT NOT NULL DEFAULT (" S_NOW "));"
    "CREATE TABLE IF NOT EXISTS document_chunks ("
    "  id TEXT PRIMARY KEY,"
    "  documentId INTEGER NOT NULL REFERENCES documents (id) ON DELETE CASCADE,"
    "  position INTEGER NOT NULL,"
    "  text TEXT NOT NULL,"
    "  vector BLOB NOT NULL,"
    "  UNIQUE (documentId, position));"
    "CREATE TABLE IF NOT EXISTS workspace_documents ("
    "  id INTEGER PRIMARY KEY AUTOINCREMENT,"
    "  docId TEXT NOT NULL UNIQUE,"
    "  filename TEXT NOT NULL,"
    "  docpath TEXT NOT NULL,"
    "  workspaceId INTEGER NOT NULL REFERENCES workspaces (id) ON DELETE CASCADE,"
    "  metadata JSON_TEXT,"
    "  pinned BOOLEAN DEFAULT 0,"
    "  watched BOOLEAN DEFAULT 0,"
    "  createdAt TEXT NOT NULL DEFAULT (" S_NOW "),"
    "  lastUpdatedAt TEXT NOT NULL DEFAULT (" S_NOW "),"
    "  UNIQUE (workspaceId, docpath));"
    "CREATE INDEX IF NOT EXISTS workspace_documents_docpath"
    "  ON workspace_documents (docpath);"
    "CREATE TABLE IF NOT EXISTS ingest_jobs ("
    "  id TEXT PRIMARY KEY,"
    "  location TEXT NOT NULL,"
    "  state TEXT NOT NULL DEFAULT 'queued',"
    "  path TEXT NOT NULL DEFAULT 'queue',"
    "  workspaces JSON_TEXT,"
    "  attempts INTEGER NOT NULL DEFAULT 0,"
    "  maxAttempts INTEGER NOT NULL DEFAULT 1,"
    "  chunksDone INTEGER NOT NULL DEFAULT 0,"
    "  chunksTotal INTEGER NOT NULL DEFAULT 0,"
    "  error TEXT,"
    "  createdAt TEXT NOT NULL DEFAULT (" S_NOW "),"
    "  lastUpdatedAt TEXT NOT NULL DEFAULT (" S_NOW "),"
    "  finishedAt TEXT);"
    "CREATE INDEX IF NOT EXISTS ingest_jobs_location ON ingest_jobs (location);"
    "CREATE INDEX IF NOT EXISTS ingest_jobs_state ON ingest_jobs (state);"
    //  A workspace's vector set (the chunks of the embedded documents linked
    //  to it) has a version that every change to the set bumps, in the same
    //  transaction (triggers, so no write path can forget it): search caches
    //  (cm_vsearch) compare it, one primary-key read per query, and reload
    //  when it moved. Only ever increases.
    "ALTER TABLE workspaces ADD COLUMN vectorVersion INTEGER NOT NULL DEFAULT 0;"
    "CREATE TRIGGER IF NOT EXISTS workspace_documents_vv_insert"
    "  AFTER INSERT ON workspace_documents BEGIN"
    "  UPDATE workspaces SET vectorVersion = vectorVersion + 1 WHERE id = "
    "NEW.workspaceId;"
    "  END;"
    "CREATE TRIGGER IF NOT EXISTS workspace_documents_vv_delete"
    "  AFTER DELETE ON workspace_documents BEGIN"
    "  UPDATE workspaces SET vectorVersion = vectorVersion + 1 WHERE id = "
    "OLD.workspaceId;"
    "  END;"
    "CREATE TRIGGER IF NOT EXISTS workspace_documents_vv_update"
    "  AFTER UPDATE OF docpath, workspaceId ON workspace_documents BEGIN"
    "  UPDATE workspaces SET vectorVersion = vectorVersion + 1"
    "    WHERE id IN (OLD.workspaceId, NEW.workspaceId);"
    "  END;"
    "CREATE TRIGGER IF NOT EXISTS documents_vv_update"
    "  AFTER UPDATE OF embedded, location ON documents BEGIN"
    "  UPDATE workspaces SET vectorVersion = vectorVersion + 1 WHERE id IN"
    "    (SELECT workspaceId FROM workspace_documents"
    "     WHERE docpath IN (OLD.location, NEW.location));"
    "  END;"
    "CREATE TRIGGER IF NOT EXISTS documents_vv_delete"
    "  AFTER DELETE ON documents BEGIN"
    "  UPDATE workspaces SET vectorVersion = vectorVersion + 1 WHERE id IN"
    "    (SELECT workspaceId FROM workspace_documents WHERE docpath = OLD.location);"
    "  END;"
    //  Chunks count only once their document is embedded (while a job is
    //  still storing them the WHEN is one primary-key read).
    "CREATE TRIGGER IF NOT EXISTS document_chunks_vv_insert"
    "  AFTER INSERT ON document_chunks"
    "  WHEN (SELECT embedded FROM documents WHERE id = NEW.documentId) BEGIN"
    "  UPDATE workspaces SET vectorVersion = vectorVersion + 1 WHERE id IN"
    "    (SELECT w.workspaceId FROM workspace_documents w JOIN documents d"
    "     ON w.docpath = d.location WHERE d.id = NEW.documentId);"
    "  END;"
    "CREATE TRIGGER IF NOT EXISTS document_chunks_vv_delete"
    "  AFTER DELETE ON document_chunks"
    "  WHEN (SELECT embedded FROM documents WHERE id = OLD.documentId) BEGIN"
    "  UPDATE workspaces SET vectorVersion = vectorVersion + 1 WHERE id IN"
    "    (SELECT w.workspaceId FROM workspace_documents w JOIN documents d"
    "     ON w.docpath = d.location WHERE d.id = OLD.documentId);"
    "  END;"
    "CREATE TRIGGER IF NOT EXISTS document_chunks_vv_update"
    "  AFTER UPDATE ON document_chunks BEGIN"
    "  UPDATE workspaces SET vectorVersion = vectorVersion + 1 WHERE id IN"
    "    (SELECT w.workspaceId FROM workspace_documents w JOIN documents d"
    "     ON w.docpath = d.location WHERE d.id IN (OLD.documentId, NEW.documentId)"
    "     AND d.embedded);"
    "  END;"
    "CREATE TABLE IF NOT EXISTS agent_flows ("
    "  id INTEGER PRIMARY KEY AUTOINCREMENT,"
    "  uuid TEXT NOT NULL UNIQUE,"
    "  name TEXT NOT NULL,"
    "  description TEXT,"
    "  active BOOLEAN NOT NULL DEFAULT 1,"
    "  steps JSON_TEXT NOT NULL,"
    "  createdAt TEXT NOT NULL DEFAULT (" S_NOW "),"
    "  lastUpdatedAt TEXT NOT NULL DEFAULT (" S_NOW "));",
    //  4: a turn's answer text beside its response, for the prompts of later
    //  turns: json_extract of twenty responses was most of a turn's history
    //  read (measured on one handler thread: 66 -> 20 us of a ~150 us
    //  turn). Rows of older versions have NULL, read through json_extract.
    "ALTER TABLE workspace_chats ADD COLUMN answer TEXT;",
    //  5: the gateway's request id of the turn. The gateway resends a chat
    //  whose daemon died (or seemed to) before it answered, and that daemon
    //  may have saved the turn first: a turn that may run twice
    //  (twice_from_us) looks for the other run's before it saves. No index:
    //  a unique one cost 7-9% of chat throughput (an extra page written per
    //  commit) for the rare such turn, which finds the other through the
    //  conversation's index instead. NULL for turns saved without one.
    "ALTER TABLE workspace_chats ADD COLUMN requestId TEXT;",
    //  6: the ingestd (its keeper, cm_jobs.h) that wrote a job's row and, on
    //  the fallback path, runs it. When that keeper is dead, the reconciler
    //  queues the row's job at once instead of after its time-outs. Cleared
    //  once the queue has the job. No index: the reconciler reads the few
    //  queued or active rows through the state index.
    "ALTER TABLE ingest_jobs ADD COLUMN owner TEXT;",
};

#define S_WORKSPACE_COLUMNS                                                              \
    "id, name, slug, vectorTag, createdAt, openAiTemp, openAiHistory, lastUpdatedAt, "   \
    "openAiPrompt, similarityThreshold, chatProvider, chatModel, topN, chatMode, "       \
    "pfpFilename, agentProvider, agentModel, queryRefusalResponse, vectorSearchMode"
#define S_THREAD_COLUMNS "id, name, slug, workspace_id, user_id, createdAt, lastUpdatedAt"
#define S_CHAT_COLUMNS                                                                   \
    "id, workspaceId, prompt, response, include, user_id, thread_id, api_session_id, "   \
    "createdAt, lastUpdatedAt, feedbackScore"
#define S_APIKEY_COLUMNS "id, name, role, prefix, createdBy, createdAt, lastUpdatedAt"

//  The checkpointer's period. Every 100 ms rather than every second (same
//  run, bench/run.sh's load): p99 30-34 -> 14-16 ms, +4-7% req/s. A rewind
//  then starts as soon as the WAL passes its limit, not up to a second
//  (~8,000 frames) later, and so holds writers up 0.6-9 ms instead of ~13
//  ms. (A slower pace while nothing is written was tried: one pause of the
//  writers longer than a tick looked idle, and the WAL then grew for a
//  whole second. An idle tick costs a few microseconds.)
#define S_CHECKPOINT_MS 100
//  WAL frames (pages) after which the checkpointer rewinds the WAL (about
//  64 MB with 4 KiB pages), and the size a rewound WAL file is cut back to.
#define S_WAL_RESTART_FRAMES 16384
//  Longest a rewind waits for readers (and so holds writers up).
#define S_RESTART_WAIT_MS 100
#define S_WAL_SIZE_LIMIT  "67108864"
//  Idle connections a pool keeps for reuse; more are closed on release.
#define S_POOL_IDLE_MAX 8

static int s_open (cm_storage_t *self);
static int s_migrate (cm_storage_t *self);
static int s_mkdir_p (const char *dir, char *err, size_t errlen);

//  --- connection -------------------------------------------------------------

//  Process-wide SQLite settings, before its first use. Memory statistics
//  off: with them every allocation of every connection takes one global
//  mutex, which the handler threads of a daemon fought over (futex calls).
static pthread_once_t s_sqlite_once = PTHREAD_ONCE_INIT;

static void
s_sqlite_configure (void)
{
    sqlite3_config (SQLITE_CONFIG_MEMSTATUS, 0);
}

cm_storage_t *
cm_storage_new (const char *dir, char *err, size_t errlen)
{
    assert (dir);
    pthread_once (&s_sqlite_once, s_sqlite_configure);
    if (sodium_init () < 0) {
        snprintf (err, errlen, "storage: libsodium failed to initialise");
        return NULL;
    }
    if (!*dir) {
        snprintf (err, errlen, "storage: the storage directory is empty");
        return NULL;
    }
    if (s_mkdir_p (dir, err, errlen))
        return NULL;

    cm_storage_t *self = cm_calloc (1, sizeof *self);
    size_t size = strlen (dir) + sizeof CM_STORAGE_FILE + 2;
    self->path = cm_malloc (size);
    snprintf (self->path, size, "%s/%s", dir, CM_STORAGE_FILE);
    char *marker = cm_malloc (strlen (dir) + sizeof CM_STORAGE_MARKER + 2);
    sprintf (marker, "%s/%s", dir, CM_STORAGE_MARKER);
    if (access (self->path, F_OK) && errno == ENOENT && access (marker, F_OK) == 0) {
        snprintf (err, errlen,
                  "storage %s: the database is missing, but one was made here before "
                  "(%s): restore it, or remove %s to start with an empty one",
                  self->path, marker, CM_STORAGE_MARKER);
        free (marker);
        cm_storage_destroy (&self);
        return NULL;
    }
    self->opening = true;
    if (s_open (self) || s_migrate (self)) {
        snprintf (err, errlen, "storage %s: %s", self->path, self->errmsg);
        free (marker);
        cm_storage_destroy (&self);
        return NULL;
    }
    self->errmsg[0] = 0;
    self->opening = false;
    //  (Made by the first process to get here; others find it.)
    int fd = open (marker, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd >= 0) {
        static const char note[] =
            "llmrt made its database llmrt.db in this directory. Should llmrt.db go\n"
            "missing, no llmrt program makes a new, empty one while this file is here:\n"
            "restore llmrt.db, or remove this file to start again from nothing.\n";
        ssize_t rc = write (fd, note, sizeof note - 1);
        (void) rc;
        close (fd);
    } else if (errno != EEXIST)
        cm_warn ("storage: cannot make %s: %s", marker, strerror (errno));
    free (marker);
    return self;
}

void
cm_storage_destroy (cm_storage_t **self_p)
{
    assert (self_p);
    cm_storage_t *self = *self_p;
    if (!self)
        return;
    for (size_t i = 0; i < self->cache_size; i++) {
        sqlite3_finalize (self->cache[i].stmt);
        free (self->cache[i].sql);
    }
    free (self->cache);
    if (self->db)
        sqlite3_close (self->db);
    free (self->path);
    free (self);
    *self_p = NULL;
}

cm_storage_status_t
cm_storage_begin (cm_storage_t *self)
{
    assert (self);
    self->errmsg[0] = 0;
    return cm_storage__exec (self, "BEGIN IMMEDIATE") ? CM_STORAGE_ERROR : CM_STORAGE_OK;
}

cm_storage_status_t
cm_storage_commit (cm_storage_t *self)
{
    assert (self);
    if (cm_storage__exec (self, "COMMIT") == 0)
        return CM_STORAGE_OK;
    cm_storage_rollback (self);
    return CM_STORAGE_ERROR;
}

void
cm_storage_rollback (cm_storage_t *self)
{
    assert (self);
    if (!sqlite3_get_autocommit (self->db))
        sqlite3_exec (self->db, "ROLLBACK", NULL, NULL, NULL);
}

const char *
cm_storage_path (cm_storage_t *self)
{
    assert (self);
    return self->path;
}

int
cm_storage_schema_version (cm_storage_t *self)
{
    assert (self);
    sqlite3_stmt *stmt = cm_storage__stmt (self, "PRAGMA user_version");
    if (!stmt)
        return -1;
    int version = -1;
    if (sqlite3_step (stmt) == SQLITE_ROW)
        version = sqlite3_column_int (stmt, 0);
    else
        cm_storage__fail (self, "read schema version");
    sqlite3_reset (stmt);
    return version;
}

bool
cm_storage_ping (cm_storage_t *self)
{
    assert (self);
    sqlite3_stmt *stmt = cm_storage__stmt (self, "SELECT count(*) FROM workspaces");
    if (!stmt)
        return false;
    bool ok = sqlite3_step (stmt) == SQLITE_ROW;
    if (!ok)
        cm_storage__fail (self, "ping");
    sqlite3_reset (stmt);
    return ok;
}

const char *
cm_storage_errmsg (cm_storage_t *self)
{
    assert (self);
    return self->errmsg;
}

void
cm_storage_dir_default (char **storage_dir_p, const char *run_dir)
{
    assert (storage_dir_p && run_dir);
    if (*storage_dir_p && **storage_dir_p)
        return;
    free (*storage_dir_p);
    size_t size = strlen (run_dir) + sizeof "/storage";
    *storage_dir_p = cm_malloc (size);
    snprintf (*storage_dir_p, size, "%s/storage", run_dir);
}

//  --- pool -------------------------------------------------------------------

static void *
s_checkpointer (void *arg)
{
    cm_storage_pool_t *self = arg;
    char err[512];
    cm_storage_t *storage = cm_storage_new (self->dir, err, sizeof err);
    if (!storage)
        cm_error ("storage checkpointer: %s", err);
    else
        //  A rewind holds the write lock while it waits for readers: a
        //  long reader (a workspace's vectors loading) would stall every
        //  writer. Give up after a short wait; the next tick tries again.
        sqlite3_busy_timeout (storage->db, S_RESTART_WAIT_MS);
    pthread_mutex_lock (&self->lock);
    while (!self->stopping) {
        int64_t period = self->checkpoint_ms;
        struct timespec until;
        clock_gettime (CLOCK_REALTIME, &until);
        until.tv_sec += period / 1000;
        until.tv_nsec += (period % 1000) * 1000000;
        if (until.tv_nsec >= 1000000000) {
            until.tv_sec++;
            until.tv_nsec -= 1000000000;
        }
        pthread_cond_timedwait (&self->wake, &self->lock, &until);
        if (self->stopping || !storage)
            continue;
        int limit = self->wal_restart_frames;
        pthread_mutex_unlock (&self->lock);
        //  PASSIVE: never waits for readers or writers; busy is fine.
        int frames = 0;
        int rc = sqlite3_wal_checkpoint_v2 (storage->db, NULL, SQLITE_CHECKPOINT_PASSIVE,
                                            &frames, NULL);
        //  Under steady load some reader always uses the WAL, so a writer
        //  never gets to start it again from the top: it grew without end
        //  (1.9 GB in 18 s of bench/run.sh's load), and with it every
        //  lookup in it and the kernel's work extending the file. Once it
        //  is long, RESTART copies the rest, waits (busy handler) for the
        //  readers to move to the database file, and so lets the next
        //  writer rewind it. Writers wait meanwhile: 0.6-9 ms at full load
        //  (throughput +4-8%, WAL <= 75 MB).
        if (rc == SQLITE_OK && frames >= limit) {
            int64_t started = cm_clock_mono_us ();
            rc = sqlite3_wal_checkpoint_v2 (storage->db, NULL, SQLITE_CHECKPOINT_RESTART,
                                            NULL, NULL);
            cm_debug ("storage %s: WAL of %d frames rewound in %lld us (rc %d)",
                      storage->path, frames, (long long) (cm_clock_mono_us () - started),
                      rc);
        }
        if (rc != SQLITE_OK && (rc & 0xff) != SQLITE_BUSY)
            cm_storage__fail (storage, "checkpoint");
        pthread_mutex_lock (&self->lock);
    }
    pthread_mutex_unlock (&self->lock);
    cm_storage_destroy (&storage);
    return NULL;
}

//  Connections of a pool leave checkpoints to its checkpointer.
static void
s_pooled (cm_storage_pool_t *pool, cm_storage_t *storage)
{
    if (storage) {
        sqlite3_wal_autocheckpoint (storage->db, 0);
        storage->pool = pool;
    }
}

cm_storage_pool_t *
cm_storage_pool_new (const char *dir, char *err, size_t errlen)
{
    assert (dir);
    cm_storage_t *first = cm_storage_new (dir, err, errlen);
    if (!first)
        return NULL;
    cm_storage_pool_t *self = cm_calloc (1, sizeof *self);
    s_pooled (self, first);
    pthread_mutex_init (&self->lock, NULL);
    pthread_mutex_init (&self->group_lock, NULL);
    pthread_cond_init (&self->wake, NULL);
    self->dir = cm_strdup (dir);
    self->idle_max = 4;
    self->idle = cm_calloc (self->idle_max, sizeof *self->idle);
    self->idle[self->idle_size++] = first;
    self->wal_restart_frames = S_WAL_RESTART_FRAMES;
    self->checkpoint_ms = S_CHECKPOINT_MS;
    if (pthread_create (&self->checkpointer, NULL, s_checkpointer, self))
        abort ();
    return self;
}

void
cm_storage_pool_set_checkpoints (cm_storage_pool_t *self, int64_t period_ms,
                                 int wal_limit_frames)
{
    assert (self && period_ms > 0 && wal_limit_frames > 0);
    pthread_mutex_lock (&self->lock);
    self->checkpoint_ms = period_ms;
    self->wal_restart_frames = wal_limit_frames;
    pthread_mutex_unlock (&self->lock);
}

void
cm_storage_pool_destroy (cm_storage_pool_t **self_p)
{
    assert (self_p);
    cm_storage_pool_t *self = *self_p;
    if (!self)
        return;
    pthread_mutex_lock (&self->lock);
    size_t lent = self->lent;
    self->stopping = true;
    pthread_cond_signal (&self->wake);
    pthread_mutex_unlock (&self->lock);
    pthread_join (self->checkpointer, NULL);
    if (lent) {
        //  A handler that outlived the drain still holds a connection and
        //  will give it back here; leaking the pool is safer than freeing it.
        cm_warn ("storage: pool destroyed with %zu connection(s) still lent; leaving it",
                 lent);
        *self_p = NULL;
        return;
    }
    for (size_t i = 0; i < self->idle_size; i++)
        cm_storage_destroy (&self->idle[i]);
    free (self->idle);
    free (self->dir);
    pthread_cond_destroy (&self->wake);
    pthread_mutex_destroy (&self->lock);
    pthread_mutex_destroy (&self->group_lock);
    free (self);
    *self_p = NULL;
}

cm_storage_t *
cm_storage_pool_acquire (cm_storage_pool_t *self)
{
    assert (self);
    pthread_mutex_lock (&self->lock);
    cm_storage_t *storage = NULL;
    if (self->idle_size)
        storage = self->idle[--self->idle_size];
    self->lent++;
    pthread_mutex_unlock (&self->lock);
    if (storage)
        return storage;

    //  Open outside the lock: it may wait on another process's lock.
    char err[512];
    storage = cm_storage_new (self->dir, err, sizeof err);
    s_pooled (self, storage);
    if (!storage) {
        cm_error ("%s", err);
        pthread_mutex_lock (&self->lock);
        self->lent--;
        pthread_mutex_unlock (&self->lock);
    }
    return storage;
}

//  A connection goes back to the pool as it came out: no transaction open
//  and no statement running. Either would make the next borrower's writes
//  wait for a commit that never comes (its turns answered as saved, then
//  lost at the next crash). No path leaves one today; this makes sure, and
//  says so loudly if a future one does.
static void
s_pool_check_returned (cm_storage_t *storage)
{
    for (sqlite3_stmt *stmt = sqlite3_next_stmt (storage->db, NULL); stmt;
         stmt = sqlite3_next_stmt (storage->db, stmt))
        if (sqlite3_stmt_busy (stmt)) {
            cm_error ("storage: a statement was still running on a returned "
                      "connection (%.80s); reset",
                      sqlite3_sql (stmt));
            sqlite3_reset (stmt);
        }
    if (!sqlite3_get_autocommit (storage->db)) {
        cm_error ("storage: a connection came back to the pool inside a "
                  "transaction; rolled back");
        sqlite3_exec (storage->db, "ROLLBACK", NULL, NULL, NULL);
    }
}

void
cm_storage_pool_release (cm_storage_pool_t *self, cm_storage_t **storage_p)
{
    assert (self);
    assert (storage_p);
    if (!*storage_p)
        return;
    s_pool_check_returned (*storage_p);
    pthread_mutex_lock (&self->lock);
    if (self->idle_size >= S_POOL_IDLE_MAX) {
        //  A burst (2,000 streams starting at once) must not leave a
        //  thousand idle connections of ~100 KiB each behind: close extras.
        self->lent--;
        pthread_mutex_unlock (&self->lock);
        cm_storage_destroy (storage_p);
        return;
    }
    if (self->idle_size == self->idle_max) {
        self->idle_max *= 2;
        self->idle = cm_realloc (self->idle, self->idle_max * sizeof *self->idle);
    }
    self->idle[self->idle_size++] = *storage_p;
    self->lent--;
    pthread_mutex_unlock (&self->lock);
    *storage_p = NULL;
}

//  --- workspaces -------------------------------------------------------------

//  Latin letters with marks, U+00C0 to U+017F, as upstream's slugify
//  writes them in ASCII (its charMap), in lower case: "Café" is "cafe", not
//  "caf". NULL: not a letter (U+00D7, U+00F7), a separator.
// clang-format off
static const char *const s_latin[] = {
    "a", "a", "a", "a", "a", "a", "ae", "c", "e", "e", "e", "e", "i", "i", "i", "i",     //  C0
    "d", "n", "o", "o", "o", "o", "o", NULL, "o", "u", "u", "u", "u", "y", "th", "ss", //  D0
    "a", "a", "a", "a", "a", "a", "ae", "c", "e", "e", "e", "e", "i", "i", "i", "i",     //  E0
    "d", "n", "o", "o", "o", "o", "o", NULL, "o", "u", "u", "u", "u", "y", "th", "y",  //  F0
    "a", "a", "a", "a", "a", "a", "c", "c", "c", "c", "c", "c", "c", "c", "d", "d",      //  100
    "d", "d", "e", "e", "e", "e", "e", "e", "e", "e", "e", "e", "g", "g", "g", "g",      //  110
    "g", "g", "g", "g", "h", "h", "h", "h", "i", "i", "i", "i", "i", "i", "i", "i",      //  120
    "i", "i", "ij", "ij", "j", "j", "k", "k", "k", "l", "l", "l", "l", "l", "l", "l",    //  130
    "l", "l", "l", "n", "n", "n", "n", "n", "n", "n", "n", "n", "o", "o", "o", "o",      //  140
    "o", "o", "oe", "oe", "r", "r", "r", "r", "r", "r", "s", "s", "s", "s", "s", "s",    //  150
    "s", "s", "t", "t", "t", "t", "t", "t", "u", "u", "u", "u", "u", "u", "u", "u",      //  160
    "u", "u", "u", "u", "w", "w", "y", "y", "y", "z", "z", "z", "z", "z", "z", "s",      //  170
};
// clang-format on

//  The ASCII for the character at *p_p (advanced past it): an ASCII
//  letter or digit in lower case, a marked Latin letter without its mark,
//  or NULL for anything else (a separator in the slug).
static const char *
s_slug_char (const unsigned char **p_p, char ascii[2])
{
    const unsigned char *p = *p_p;
    if (p[0] < 0x80) {
        *p_p = p + 1;
        unsigned char c =
            p[0] >= 'A' && p[0] <= 'Z' ? (unsigned char) (p[0] - 'A' + 'a') : p[0];
        if ((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9')) {
            ascii[0] = (char) c;
            ascii[1] = 0;
            return ascii;
        }
        return NULL;
    }
    //  Two-byte sequences reach U+07FF; the table ends at U+017F.
    if ((p[0] & 0xE0) == 0xC0 && (p[1] & 0xC0) == 0x80) {
        unsigned cp = ((unsigned) (p[0] & 0x1F) << 6) | (p[1] & 0x3F);
        *p_p = p + 2;
        return cp >= 0xC0 && cp <= 0x17F ? s_latin[cp - 0xC0] : NULL;
    }
    *p_p = p + 1;
    return NULL;
}

char *
cm_storage_slugify (const char *name)
{
    assert (name);
    //  The longest transliteration ("ae", "th", "ss", ...) is as long as
    //  the two bytes it replaces.
    char *slug = cm_malloc (strlen (name) + 1);
    size_t len = 0;
    bool dash = false;
    char ascii[2];
    for (const unsigned char *p = (const unsigned char *) name; *p;) {
        const char *text = s_slug_char (&p, ascii);
        if (text) {
            if (dash && len)
                slug[len++] = '-';
            dash = false;
            for (; *text; text++)
                slug[len++] = *text;
        } else
            dash = true;
    }
    slug[len] = 0;
    return slug;
}

//  JavaScript's parseFloat on a JSON value: numbers as they are, strings by
//  their leading number. False for anything else (null, "", "abc", objects).
static bool
s_parse_float (const json_t *value, double *out)
{
    if (json_is_number (value)) {
        *out = json_number_value (value);
        return isfinite (*out);
    }
    if (!json_is_string (value))
        return false;
    const char *text = json_string_value (value);
    char *end;
    errno = 0;
    double v = strtod (text, &end);
    if (end == text || errno == ERANGE || !isfinite (v))
        return false;
    *out = v;
    return true;
}

//  JavaScript's parseInt: the float rule, truncated toward zero.
static bool
s_parse_int (const json_t *value, int64_t *out)
{
    double v;
    if (!s_parse_float (value, &v) || v > 9e15 || v < -9e15)
        return false;
    *out = (int64_t) trunc (v);
    return true;
}

//  A non-empty string, or NULL (upstream stores null for "", numbers, ...).
static const char *
s_string_or_null (const json_t *fields, const char *key)
{
    const char *text = json_string_value (json_object_get (fields, key));
    return text && *text ? text : NULL;
}

//  Whether a workspace has this slug; *rc_p is -1 when the lookup failed.
static bool
s_slug_taken (cm_storage_t *self, const char *slug, int *rc_p)
{
    sqlite3_stmt *stmt =
        cm_storage__stmt (self, "SELECT 1 FROM workspaces WHERE slug = ?1");
    if (!stmt) {
        *rc_p = -1;
        return false;
    }
    sqlite3_bind_text (stmt, 1, slug, -1, SQLITE_TRANSIENT);
    int rc = sqlite3_step (stmt);
    sqlite3_reset (stmt);
    if (rc != SQLITE_ROW && rc != SQLITE_DONE) {
        *rc_p = cm_storage__fail (self, "look up slug");
        return false;
    }
    *rc_p = 0;
    return rc == SQLITE_ROW;
}

//  One row as JSON, or NULL with *status_p saying why. id binds ?1 and text
//  (when not NULL) ?2; a query may leave ?1 unused.
static json_t *
s_select_one (cm_storage_t *self, const char *sql, int64_t id, const char *text,
              cm_storage_status_t *status_p)
{
    sqlite3_stmt *stmt = cm_storage__stmt (self, sql);
    if (!stmt) {
        *status_p = CM_STORAGE_ERROR;
        return NULL;
    }
    sqlite3_bind_int64 (stmt, 1, id);
    cm_storage__bind_text (stmt, 2, text);
    json_t *row = NULL;
    *status_p = cm_storage__one (self, stmt, "read row", &row);
    return row;
}

cm_storage_status_t
cm_storage_workspace_create (cm_storage_t *self, const json_t *fields,
                             json_t **workspace_p)
{
    assert (self);
    assert (workspace_p);
    *workspace_p = NULL;
    self->errmsg[0] = 0;
    const char *name = json_string_value (json_object_get (fields, "name"));
    if (!name || !*name) {
        snprintf (self->errmsg, sizeof self->errmsg, "name cannot be null");
        return CM_STORAGE_INVALID;
    }
    //  Truncate to 255 characters, never inside a UTF-8 sequence.
    size_t cut = 0, chars = 0;
    while (name[cut] && chars < S_NAME_MAX_CHARS) {
        cut++;
        while ((name[cut] & 0xC0) == 0x80)
            cut++;
        chars++;
    }

    //  Upstream's validations: a bad or missing value becomes the default.
    double temp = 0, threshold = 0.25;
    int64_t history = 20, top_n = 4;
    bool has_temp =
        s_parse_float (json_object_get (fields, "openAiTemp"), &temp) && temp >= 0;
    if (!s_parse_int (json_object_get (fields, "openAiHistory"), &history))
        history = 20;
    else if (history < 0)
        history = 0;
    if (!s_parse_float (json_object_get (fields, "similarityThreshold"), &threshold))
        threshold = 0.25;
    threshold = threshold < 0 ? 0 : threshold > 1 ? 1 : threshold;
    if (!s_parse_int (json_object_get (fields, "topN"), &top_n))
        top_n = 4;
    else if (top_n < 1)
        top_n = 1;
    const char *mode = s_string_or_null (fields, "chatMode");
    if (!mode ||
        (strcmp (mode, "automatic") && strcmp (mode, "chat") && strcmp (mode, "query")))
        mode = "automatic";
    const char *provider = s_string_or_null (fields, "chatProvider");
    if (provider && !strcmp (provider, "none"))
        provider = NULL;
    const char *search = s_string_or_null (fields, "vectorSearchMode");
    if (!search || (strcmp (search, "default") && strcmp (search, "rerank")))
        search = "default";

    char *base = cm_storage_slugify (name);
    char *slug = NULL;
    int64_t id = -1;
    cm_storage_status_t status = CM_STORAGE_ERROR;
    if (cm_storage__exec (self, "BEGIN IMMEDIATE"))
        goto cleanup;

    //  Under the write lock, so the check and the insert are one step for
    //  every process that shares the file.
    for (int attempt = 0; attempt < S_SLUG_TRIES; attempt++) {
        free (slug);
        if (!*base) {
            slug = cm_malloc (CM_UUID_SIZE);
            cm_uuid (slug);
        } else if (attempt == 0)
            slug = cm_strdup (base);
        else {
            size_t size = strlen (base) + 10;
            slug = cm_malloc (size);
            snprintf (slug, size, "%s-%08u", base,
                      10000000u + (unsigned) randombytes_uniform (90000000u));
        }
        int rc;
        if (!s_slug_taken (self, slug, &rc)) {
            if (rc)
                goto rollback;
            break;
        }
        if (attempt == S_SLUG_TRIES - 1) {
            snprintf (self->errmsg, sizeof self->errmsg, "no free slug for '%s'", base);
            status = CM_STORAGE_CONFLICT;
            goto rollback;
        }
    }

    sqlite3_stmt *stmt = cm_storage__stmt (
        self,
        "INSERT INTO workspaces (name, slug, openAiTemp, openAiHistory, openAiPrompt, "
        "similarityThreshold, chatProvider, chatModel, topN, chatMode, agentProvider, "
        "agentModel, queryRefusalResponse, vectorSearchMode) "
        "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)");
    if (!stmt)
        goto rollback;
    sqlite3_bind_text (stmt, 1, name, (int) cut, SQLITE_TRANSIENT);
    sqlite3_bind_text (stmt, 2, slug, -1, SQLITE_TRANSIENT);
    if (has_temp)
        sqlite3_bind_double (stmt, 3, temp);
    sqlite3_bind_int64 (stmt, 4, history);
    sqlite3_bind_text (stmt, 5, s_string_or_null (fields, "openAiPrompt"), -1,
                       SQLITE_TRANSIENT);
    sqlite3_bind_double (stmt, 6, threshold);
    sqlite3_bind_text (stmt, 7, provider, -1, SQLITE_TRANSIENT);
    sqlite3_bind_text (stmt, 8, s_string_or_null (fields, "chatModel"), -1,
                       SQLITE_TRANSIENT);
    sqlite3_bind_int64 (stmt, 9, top_n);
    sqlite3_bind_text (stmt, 10, mode, -1, SQLITE_TRANSIENT);
    sqlite3_bind_text (stmt, 11, s_string_or_null (fields, "agentProvider"), -1,
                       SQLITE_TRANSIENT);
    sqlite3_bind_text (stmt, 12, s_string_or_null (fields, "agentModel"), -1,
                       SQLITE_TRANSIENT);
    sqlite3_bind_text (stmt, 13, s_string_or_null (fields, "queryRefusalResponse"), -1,
                       SQLITE_TRANSIENT);
    sqlite3_bind_text (stmt, 14, search, -1, SQLITE_TRANSIENT);
    int rc = sqlite3_step (stmt);
    sqlite3_reset (stmt);
    if (rc != SQLITE_DONE) {
        cm_storage__fail (self, "insert workspace");
        goto rollback;
    }
    id = sqlite3_last_insert_rowid (self->db);
    *workspace_p = s_select_one (
        self, "SELECT " S_WORKSPACE_COLUMNS " FROM workspaces WHERE id = ?1", id, NULL,
        &status);
    if (status != CM_STORAGE_OK)
        goto rollback;
    if (cm_storage__exec (self, "COMMIT")) {
        status = CM_STORAGE_ERROR;
        goto rollback;
    }
    goto cleanup;

rollback:
    json_decref (*workspace_p);
    *workspace_p = NULL;
    if (status != CM_STORAGE_CONFLICT)
        status = CM_STORAGE_ERROR;
    cm_storage__rollback (self);
cleanup:
    free (base);
    free (slug);
    return status;
}

cm_storage_status_t
cm_storage_workspace_get (cm_storage_t *self, const char *slug, json_t **workspace_p)
{
    assert (self);
    assert (slug);
    assert (workspace_p);
    self->errmsg[0] = 0;
    cm_storage_status_t status;
    *workspace_p = s_select_one (
        self, "SELECT " S_WORKSPACE_COLUMNS " FROM workspaces WHERE slug = ?2", 0, slug,
        &status);
    return status;
}

cm_storage_status_t
cm_storage_workspace_list (cm_storage_t *self, json_t **workspaces_p)
{
    assert (self);
    assert (workspaces_p);
    *workspaces_p = NULL;
    self->errmsg[0] = 0;
    json_t *list = json_array ();
    json_t *by_id = json_object (); //  "id" -> the workspace's threads array
    cm_storage_status_t status = CM_STORAGE_ERROR;

    //  Both reads in one transaction: a thread never shows up whose
    //  workspace the first read did not see.
    if (cm_storage__exec (self, "BEGIN"))
        goto cleanup;
    sqlite3_stmt *stmt = cm_storage__stmt (self, "SELECT " S_WORKSPACE_COLUMNS
                                                 " FROM workspaces ORDER BY id");
    if (!stmt)
        goto rollback;
    int rc;
    while ((rc = sqlite3_step (stmt)) == SQLITE_ROW) {
        json_t *workspace = cm_storage__row (stmt);
        json_t *threads = json_array ();
        json_object_set_new (workspace, "threads", threads);
        char key[32];
        snprintf (key, sizeof key, "%lld", (long long) sqlite3_column_int64 (stmt, 0));
        json_object_set (by_id, key, threads);
        json_array_append_new (list, workspace);
    }
    sqlite3_reset (stmt);
    if (rc != SQLITE_DONE) {
        cm_storage__fail (self, "list workspaces");
        goto rollback;
    }
    stmt = cm_storage__stmt (self, "SELECT " S_THREAD_COLUMNS
                                   " FROM workspace_threads ORDER BY workspace_id, id");
    if (!stmt)
        goto rollback;
    while ((rc = sqlite3_step (stmt)) == SQLITE_ROW) {
        char key[32];
        snprintf (key, sizeof key, "%lld", (long long) sqlite3_column_int64 (stmt, 3));
        json_t *threads = json_object_get (by_id, key);
        if (threads)
            json_array_append_new (threads, cm_storage__row (stmt));
    }
    sqlite3_reset (stmt);
    if (rc != SQLITE_DONE) {
        cm_storage__fail (self, "list threads");
        goto rollback;
    }
    if (cm_storage__exec (self, "COMMIT"))
        goto rollback;
    *workspaces_p = list;
    list = NULL;
    status = CM_STORAGE_OK;
    goto cleanup;

rollback:
    cm_storage__rollback (self);
cleanup:
    json_decref (list);
    json_decref (by_id);
    return status;
}

//  --- threads ----------------------------------------------------------------

cm_storage_status_t
cm_storage_thread_create (cm_storage_t *self, int64_t workspace_id, const json_t *fields,
                          json_t **thread_p)
{
    assert (self);
    assert (thread_p);
    *thread_p = NULL;
    self->errmsg[0] = 0;
    const char *name = s_string_or_null (fields, "name");
    const char *given = s_string_or_null (fields, "slug");
    int64_t user_id = 0;
    bool has_user = s_parse_int (json_object_get (fields, "userId"), &user_id);

    char *slug;
    if (given) {
        slug = cm_storage_slugify (given);
        if (!*slug) {
            snprintf (self->errmsg, sizeof self->errmsg, "slug '%.200s' is not valid",
                      given);
            free (slug);
            return CM_STORAGE_INVALID;
        }
    } else {
        slug = cm_malloc (CM_UUID_SIZE);
        cm_uuid (slug);
    }
    cm_storage_status_t status = CM_STORAGE_ERROR;
    sqlite3_stmt *stmt =
        cm_storage__stmt (self, "INSERT INTO workspace_threads (name, slug, "
                                "workspace_id, user_id) VALUES (?1, ?2, ?3, ?4)");
    if (!stmt)
        goto cleanup;
    sqlite3_bind_text (stmt, 1, name ? name : "Thread", -1, SQLITE_TRANSIENT);
    sqlite3_bind_text (stmt, 2, slug, -1, SQLITE_TRANSIENT);
    sqlite3_bind_int64 (stmt, 3, workspace_id);
    if (has_user)
        sqlite3_bind_int64 (stmt, 4, user_id);
    //  Extended result codes are on: step returns SQLITE_CONSTRAINT_UNIQUE etc.
    int rc = sqlite3_step (stmt);
    sqlite3_reset (stmt);
    if (rc == SQLITE_CONSTRAINT_UNIQUE) {
        snprintf (self->errmsg, sizeof self->errmsg,
                  "a thread with slug '%s' already exists", slug);
        status = CM_STORAGE_CONFLICT;
        goto cleanup;
    }
    if (rc == SQLITE_CONSTRAINT_FOREIGNKEY) {
        snprintf (self->errmsg, sizeof self->errmsg, "workspace %lld does not exist",
                  (long long) workspace_id);
        status = CM_STORAGE_INVALID;
        goto cleanup;
    }
    if (rc != SQLITE_DONE) {
        cm_storage__fail (self, "insert thread");
        goto cleanup;
    }
    *thread_p = s_select_one (
        self, "SELECT " S_THREAD_COLUMNS " FROM workspace_threads WHERE id = ?1",
        sqlite3_last_insert_rowid (self->db), NULL, &status);
cleanup:
    free (slug);
    return status;
}

cm_storage_status_t
cm_storage_thread_get (cm_storage_t *self, int64_t workspace_id, const char *slug,
                       json_t **thread_p)
{
    assert (self);
    assert (slug);
    assert (thread_p);
    self->errmsg[0] = 0;
    cm_storage_status_t status;
    *thread_p = s_select_one (self,
                              "SELECT " S_THREAD_COLUMNS " FROM workspace_threads "
                              "WHERE workspace_id = ?1 AND slug = ?2",
                              workspace_id, slug, &status);
    return status;
}

cm_storage_status_t
cm_storage_thread_list (cm_storage_t *self, int64_t workspace_id, json_t **threads_p)
{
    assert (self);
    assert (threads_p);
    *threads_p = NULL;
    self->errmsg[0] = 0;
    sqlite3_stmt *stmt =
        cm_storage__stmt (self, "SELECT " S_THREAD_COLUMNS " FROM workspace_threads "
                                "WHERE workspace_id = ?1 ORDER BY id");
    if (!stmt)
        return CM_STORAGE_ERROR;
    sqlite3_bind_int64 (stmt, 1, workspace_id);
    return cm_storage__rows (self, stmt, "list threads", threads_p);
}

//  --- chat history ------------------------------------------------------------

//  The id of the turn another run of this request saved in the same
//  conversation (other than the turn mine, 0: none): 0 when there is none,
//  -1 on failure.
static int64_t
s_chat_saved_before (cm_storage_t *self, const cm_storage_chat_t *chat, int64_t mine)
{
    sqlite3_stmt *stmt = cm_storage__stmt (
        self, "SELECT id FROM workspace_chats WHERE workspaceId = ?1 AND api_session_id "
              "IS ?2 AND thread_id IS ?3 AND requestId = ?4 AND id != ?5 ORDER BY id "
              "LIMIT 1");
    if (!stmt)
        return -1;
    sqlite3_bind_int64 (stmt, 5, mine);
    sqlite3_bind_int64 (stmt, 1, chat->workspace_id);
    if (chat->session_id)
        sqlite3_bind_text (stmt, 2, chat->session_id, -1, SQLITE_STATIC);
    if (chat->thread_id)
        sqlite3_bind_int64 (stmt, 3, chat->thread_id);
    sqlite3_bind_text (stmt, 4, chat->request_id, -1, SQLITE_STATIC);
    int rc = sqlite3_step (stmt);
    int64_t id = rc == SQLITE_ROW ? sqlite3_column_int64 (stmt, 0) : 0;
    if (rc != SQLITE_ROW && rc != SQLITE_DONE) {
        cm_storage__fail (self, "find the turn of a request");
        id = -1;
    }
    sqlite3_reset (stmt);
    sqlite3_clear_bindings (stmt);
    return id;
}

//  One INSERT of a turn whose response is already serialised; its id or -1
//  (logged, errmsg set).
static int64_t
s_chat_insert (cm_storage_t *self, const cm_storage_chat_t *chat, const char *response)
{
    int64_t id = -1;
    sqlite3_stmt *stmt = cm_storage__stmt (
        self, "INSERT INTO workspace_chats (workspaceId, prompt, response, include, "
              "user_id, thread_id, api_session_id, answer, requestId) VALUES (?1, ?2, "
              "?3, ?4, ?5, ?6, ?7, ?8, ?9)");
    if (!stmt)
        return -1;
    sqlite3_bind_int64 (stmt, 1, chat->workspace_id);
    sqlite3_bind_text (stmt, 2, chat->prompt, -1, SQLITE_STATIC);
    sqlite3_bind_text (stmt, 3, response, -1, SQLITE_STATIC);
    sqlite3_bind_int (stmt, 4, chat->include ? 1 : 0);
    if (chat->user_id)
        sqlite3_bind_int64 (stmt, 5, chat->user_id);
    if (chat->thread_id)
        sqlite3_bind_int64 (stmt, 6, chat->thread_id);
    if (chat->session_id)
        sqlite3_bind_text (stmt, 7, chat->session_id, -1, SQLITE_STATIC);
    const char *answer = json_string_value (json_object_get (chat->response, "text"));
    if (answer)
        sqlite3_bind_text (stmt, 8, answer, -1, SQLITE_STATIC);
    if (chat->request_id)
        sqlite3_bind_text (stmt, 9, chat->request_id, -1, SQLITE_STATIC);
    if (sqlite3_step (stmt) == SQLITE_DONE)
        id = sqlite3_last_insert_rowid (self->db);
    else
        cm_storage__fail (self, "insert chat");
    sqlite3_reset (stmt);
    sqlite3_clear_bindings (stmt); //  they point into the caller's strings
    return id;
}

static void
s_chat_saved_once (const cm_storage_chat_t *chat, int64_t id)
{
    cm_info ("request %s ran twice; its turn was saved once, as chat %lld",
             chat->request_id, (long long) id);
}

//  Save a turn inside a write transaction (the lock held): unless another
//  run of its request may exist by now (twice_from_us; the clock read here,
//  under the lock, since a handler frozen between deciding and writing
//  would otherwise save a turn the other run saved meanwhile) and saved
//  it, in which case that turn's id is returned.
static int64_t
s_chat_save_locked (cm_storage_t *self, const cm_storage_chat_t *chat,
                    const char *response)
{
    if (chat->request_id && cm_clock_mono_us () >= chat->twice_from_us) {
        int64_t found = s_chat_saved_before (self, chat, 0);
        if (found) {
            if (found > 0)
                s_chat_saved_once (chat, found);
            return found;
        }
    }
    return s_chat_insert (self, chat, response);
}

//  One turn alone. Most turns are quick, and no other run of their request
//  can exist yet: one INSERT (autocommit) is all they cost. If the clock,
//  read after that insert, says another run may exist after all (this
//  thread stood still between deciding and writing), the turn looks for
//  it, and gives way to one saved first by deleting its own row. A turn
//  past its twice_from_us already decides under the write lock instead.
static int64_t
s_chat_save_alone (cm_storage_t *self, const cm_storage_chat_t *chat,
                   const char *response)
{
    bool own = sqlite3_get_autocommit (self->db) != 0;
    if (own && (!chat->request_id || cm_clock_mono_us () < chat->twice_from_us)) {
        int64_t id = s_chat_insert (self, chat, response);
        if (id < 0 || !chat->request_id || cm_clock_mono_us () < chat->twice_from_us)
            return id;
        int64_t first = s_chat_saved_before (self, chat, id);
        if (first <= 0 || first > id)
            return id; //  none, or a later one that will find this one
        sqlite3_stmt *stmt =
            cm_storage__stmt (self, "DELETE FROM workspace_chats WHERE id = ?1");
        if (stmt) {
            sqlite3_bind_int64 (stmt, 1, id);
            if (sqlite3_step (stmt) != SQLITE_DONE)
                cm_storage__fail (self, "delete a turn saved twice");
            sqlite3_reset (stmt);
        }
        s_chat_saved_once (chat, first);
        return first;
    }
    if (own && cm_storage__exec (self, "BEGIN IMMEDIATE"))
        return -1;
    int64_t id = s_chat_save_locked (self, chat, response);
    if (own && (id < 0 || cm_storage__exec (self, "COMMIT"))) {
        cm_storage__rollback (self);
        id = -1;
    }
    return id;
}

//  A turn waiting for a group commit, on its caller's stack.
struct s_grouped_s {
    cm_storage_t *storage;         //  the caller's connection (errmsg on failure)
    const cm_storage_chat_t *chat; //  the turn
    const char *response;          //  its response, serialised
    int64_t id;                    //  the result, once done
    bool done;                     //  committed (or failed)
    bool lead;                     //  this caller commits the next batch
    pthread_cond_t cond;           //  signalled on done or lead
    s_grouped_t *next;             //  next in the list / batch
};

//  A turn of the batch failed: its caller reads the leader's reason.
static void
s_group_failed (s_grouped_t *turn, const cm_storage_t *leader)
{
    turn->id = -1;
    if (turn->storage != leader)
        snprintf (turn->storage->errmsg, sizeof turn->storage->errmsg, "%s",
                  leader->errmsg);
}

//  Write a batch in one transaction on the leader's connection. A turn
//  whose INSERT fails alone (a constraint) fails alone: SQLite undoes just
//  that statement. A failure that ends the transaction (disk full, I/O)
//  or a failed COMMIT fails the whole batch: nothing of it was kept.
static void
s_group_commit (cm_storage_t *leader, s_grouped_t *batch)
{
    if (!batch->next) {
        batch->id = s_chat_save_alone (leader, batch->chat, batch->response);
        return;
    }
    bool failed = cm_storage__exec (leader, "BEGIN IMMEDIATE") != 0;
    for (s_grouped_t *turn = batch; turn && !failed; turn = turn->next) {
        turn->id = s_chat_save_locked (leader, turn->chat, turn->response);
        if (turn->id < 0) {
            failed = sqlite3_get_autocommit (leader->db) != 0; //  rolled back
            s_group_failed (turn, leader);
        }
    }
    if (!failed && cm_storage__exec (leader, "COMMIT")) {
        cm_storage__rollback (leader);
        failed = true;
    }
    if (failed)
        for (s_grouped_t *turn = batch; turn; turn = turn->next)
            s_group_failed (turn, leader);
}

int64_t
cm_storage_chat_add (cm_storage_t *self, const cm_storage_chat_t *chat)
{
    assert (self);
    assert (chat && chat->prompt && chat->response);
    self->errmsg[0] = 0;
    char *response = json_dumps (chat->response, JSON_COMPACT | JSON_ENCODE_ANY);
    if (!response) {
        snprintf (self->errmsg, sizeof self->errmsg, "response is not serialisable");
        return -1;
    }
    //  A connection of no pool, or inside its caller's transaction: alone.
    cm_storage_pool_t *pool = self->pool;
    if (!pool || !sqlite3_get_autocommit (self->db)) {
        int64_t id = s_chat_save_alone (self, chat, response);
        free (response);
        return id;
    }
    //  Group commit. Each handler committing its own turn made them queue
    //  for SQLite's write lock in its busy handler (sleeps of 50 us and
    //  more, and a failed lock attempt each time); now one handler of the
    //  process (the leader) writes every turn that is waiting in one
    //  transaction while the others sleep on a condition variable until
    //  theirs is committed. No turn waits for company: an idle pool
    //  commits the first at once.
    s_grouped_t me = {.storage = self, .chat = chat, .response = response, .id = -1};
    pthread_cond_init (&me.cond, NULL);
    pthread_mutex_lock (&pool->group_lock);
    if (pool->group_tail)
        pool->group_tail->next = &me;
    else
        pool->group_head = &me;
    pool->group_tail = &me;
    if (!pool->group_leading)
        pool->group_leading = me.lead = true;
    while (!me.done && !me.lead)
        pthread_cond_wait (&me.cond, &pool->group_lock);
    if (!me.done) {
        //  Lead: take every turn waiting now (this one first among them).
        s_grouped_t *batch = pool->group_head;
        pool->group_head = pool->group_tail = NULL;
        pool->group_commits++;
        for (s_grouped_t *turn = batch; turn; turn = turn->next)
            pool->group_turns++;
        pthread_mutex_unlock (&pool->group_lock);
        s_group_commit (self, batch);
        pthread_mutex_lock (&pool->group_lock);
        for (s_grouped_t *turn = batch, *next; turn; turn = next) {
            next = turn->next;
            turn->done = true;
            if (turn != &me)
                pthread_cond_signal (&turn->cond);
        }
        //  Hand the lead to the first turn that came meanwhile.
        if (pool->group_head) {
            pool->group_head->lead = true;
            pthread_cond_signal (&pool->group_head->cond);
        } else
            pool->group_leading = false;
    }
    pthread_mutex_unlock (&pool->group_lock);
    pthread_cond_destroy (&me.cond);
    free (response);
    return me.id;
}

void
cm_storage_pool_chat_commits (cm_storage_pool_t *self, uint64_t *commits, uint64_t *turns)
{
    assert (self && commits && turns);
    pthread_mutex_lock (&self->group_lock);
    *commits = self->group_commits;
    *turns = self->group_turns;
    pthread_mutex_unlock (&self->group_lock);
}

//  The WHERE clause both list and reset use; "IS ?" matches NULL to NULL.
static void
s_chat_where (char *sql, size_t size, const cm_storage_chat_filter_t *filter)
{
    snprintf (
        sql + strlen (sql), size - strlen (sql),
        " WHERE workspaceId = ?1 AND api_session_id IS ?2 AND thread_id IS ?3%s%s%s",
        filter->user_id >= 0 ? " AND user_id IS ?4" : "",
        filter->included_only ? " AND include = 1" : "",
        filter->not_request_id ? " AND requestId IS NOT ?6" : "");
}

static void
s_chat_bind (sqlite3_stmt *stmt, int64_t workspace_id,
             const cm_storage_chat_filter_t *filter)
{
    sqlite3_bind_int64 (stmt, 1, workspace_id);
    if (filter->session_id)
        sqlite3_bind_text (stmt, 2, filter->session_id, -1, SQLITE_TRANSIENT);
    if (filter->thread_id)
        sqlite3_bind_int64 (stmt, 3, filter->thread_id);
    if (filter->user_id > 0)
        sqlite3_bind_int64 (stmt, 4, filter->user_id);
    if (filter->not_request_id)
        sqlite3_bind_text (stmt, 6, filter->not_request_id, -1, SQLITE_TRANSIENT);
}

cm_storage_status_t
cm_storage_chat_list (cm_storage_t *self, int64_t workspace_id,
                      const cm_storage_chat_filter_t *filter, json_t **chats_p)
{
    assert (self);
    assert (filter);
    assert (chats_p);
    *chats_p = NULL;
    self->errmsg[0] = 0;
    char sql[512] = "SELECT " S_CHAT_COLUMNS " FROM workspace_chats";
    s_chat_where (sql, sizeof sql, filter);
    snprintf (sql + strlen (sql), sizeof sql - strlen (sql), " ORDER BY id %s LIMIT ?5",
              filter->newest_first ? "DESC" : "ASC");
    sqlite3_stmt *stmt = cm_storage__stmt (self, sql);
    if (!stmt)
        return CM_STORAGE_ERROR;
    s_chat_bind (stmt, workspace_id, filter);
    sqlite3_bind_int64 (stmt, 5, filter->limit > 0 ? filter->limit : -1);
    return cm_storage__rows (self, stmt, "list chats", chats_p);
}

cm_storage_status_t
cm_storage_chat_context (cm_storage_t *self, int64_t workspace_id,
                         const cm_storage_chat_filter_t *filter, cm_storage_turn_fn *fn,
                         void *arg)
{
    assert (self);
    assert (filter);
    assert (fn);
    self->errmsg[0] = 0;
    //  A chat turn's prompt needs only two strings per row, and parsing every
    //  stored response was most of a turn's cost: the answer column (schema
    //  4), or for older rows json_extract in SQLite.
    char sql[512] = "SELECT prompt, coalesce (answer, json_extract (response, '$.text')) "
                    "FROM workspace_chats";
    s_chat_where (sql, sizeof sql, filter);
    snprintf (sql + strlen (sql), sizeof sql - strlen (sql), " ORDER BY id %s LIMIT ?5",
              filter->newest_first ? "DESC" : "ASC");
    sqlite3_stmt *stmt = cm_storage__stmt (self, sql);
    if (!stmt)
        return CM_STORAGE_ERROR;
    s_chat_bind (stmt, workspace_id, filter);
    sqlite3_bind_int64 (stmt, 5, filter->limit > 0 ? filter->limit : -1);
    int rc;
    while ((rc = sqlite3_step (stmt)) == SQLITE_ROW) {
        const char *prompt = (const char *) sqlite3_column_text (stmt, 0);
        const char *answer = (const char *) sqlite3_column_text (stmt, 1);
        if (prompt && answer)
            fn (prompt, answer, arg);
    }
    sqlite3_reset (stmt);
    if (rc != SQLITE_DONE) {
        cm_storage__fail (self, "read conversation");
        return CM_STORAGE_ERROR;
    }
    return CM_STORAGE_OK;
}

int64_t
cm_storage_chat_reset (cm_storage_t *self, int64_t workspace_id,
                       const cm_storage_chat_filter_t *filter)
{
    assert (self);
    assert (filter);
    self->errmsg[0] = 0;
    char sql[512] = "UPDATE workspace_chats SET include = 0, lastUpdatedAt = " S_NOW;
    cm_storage_chat_filter_t only_included = *filter;
    only_included.included_only = true;
    s_chat_where (sql, sizeof sql, &only_included);
    sqlite3_stmt *stmt = cm_storage__stmt (self, sql);
    if (!stmt)
        return -1;
    s_chat_bind (stmt, workspace_id, filter);
    int64_t changed = -1;
    if (sqlite3_step (stmt) == SQLITE_DONE)
        changed = sqlite3_changes (self->db);
    else
        cm_storage__fail (self, "reset chats");
    sqlite3_reset (stmt);
    return changed;
}

//  --- API keys -------------------------------------------------------------------

static bool
s_role_valid (const char *role)
{
    return role && (!strcmp (role, "admin") || !strcmp (role, "default"));
}

cm_storage_status_t
cm_storage_apikey_create (cm_storage_t *self, const char *name, const char *role,
                          const unsigned char *hash, size_t hash_size, const char *prefix,
                          const char *created_by, json_t **key_p)
{
    assert (self);
    assert (hash && hash_size && prefix);
    assert (key_p);
    *key_p = NULL;
    self->errmsg[0] = 0;
    if (!s_role_valid (role)) {
        snprintf (self->errmsg, sizeof self->errmsg,
                  "role must be \"admin\" or \"default\"");
        return CM_STORAGE_INVALID;
    }
    sqlite3_stmt *stmt = cm_storage__stmt (
        self, "INSERT INTO api_keys (name, role, hash, prefix, createdBy) "
              "VALUES (?1, ?2, ?3, ?4, ?5)");
    if (!stmt)
        return CM_STORAGE_ERROR;
    sqlite3_bind_text (stmt, 1, name && *name ? name : NULL, -1, SQLITE_TRANSIENT);
    sqlite3_bind_text (stmt, 2, role, -1, SQLITE_TRANSIENT);
    sqlite3_bind_blob (stmt, 3, hash, (int) hash_size, SQLITE_TRANSIENT);
    sqlite3_bind_text (stmt, 4, prefix, -1, SQLITE_TRANSIENT);
    sqlite3_bind_text (stmt, 5, created_by, -1, SQLITE_TRANSIENT);
    int rc = sqlite3_step (stmt);
    sqlite3_reset (stmt);
    if (rc == SQLITE_CONSTRAINT_UNIQUE) {
        snprintf (self->errmsg, sizeof self->errmsg, "a key with this hash exists");
        return CM_STORAGE_CONFLICT;
    }
    if (rc != SQLITE_DONE) {
        cm_storage__fail (self, "insert API key");
        return CM_STORAGE_ERROR;
    }
    cm_storage_status_t status;
    *key_p =
        s_select_one (self, "SELECT " S_APIKEY_COLUMNS " FROM api_keys WHERE id = ?1",
                      sqlite3_last_insert_rowid (self->db), NULL, &status);
    return status;
}

cm_storage_status_t
cm_storage_apikey_list (cm_storage_t *self, json_t **keys_p)
{
    assert (self);
    assert (keys_p);
    *keys_p = NULL;
    self->errmsg[0] = 0;
    sqlite3_stmt *stmt =
        cm_storage__stmt (self, "SELECT " S_APIKEY_COLUMNS " FROM api_keys "
                                "WHERE revokedAt IS NULL ORDER BY id");
    if (!stmt)
        return CM_STORAGE_ERROR;
    return cm_storage__rows (self, stmt, "list API keys", keys_p);
}

cm_storage_status_t
cm_storage_apikey_revoke (cm_storage_t *self, int64_t id)
{
    assert (self);
    self->errmsg[0] = 0;
    sqlite3_stmt *stmt = cm_storage__stmt (self, "UPDATE api_keys SET revokedAt = " S_NOW
                                                 ", lastUpdatedAt = " S_NOW
                                                 " WHERE id = ?1 AND revokedAt IS NULL");
    if (!stmt)
        return CM_STORAGE_ERROR;
    sqlite3_bind_int64 (stmt, 1, id);
    int rc = sqlite3_step (stmt);
    sqlite3_reset (stmt);
    if (rc != SQLITE_DONE) {
        cm_storage__fail (self, "revoke API key");
        return CM_STORAGE_ERROR;
    }
    if (sqlite3_changes (self->db) == 0) {
        snprintf (self->errmsg, sizeof self->errmsg, "API key %lld does not exist",
                  (long long) id);
        return CM_STORAGE_NOT_FOUND;
    }
    return CM_STORAGE_OK;
}

cm_storage_status_t
cm_storage_apikey_find (cm_storage_t *self, const unsigned char *hash, size_t hash_size,
                        int64_t *id_p, char *role, size_t role_size)
{
    assert (self);
    assert (hash && hash_size);
    assert (id_p && role && role_size);
    self->errmsg[0] = 0;
    *id_p = 0;
    *role = 0;
    sqlite3_stmt *stmt = cm_storage__stmt (self, "SELECT id, role, hash FROM api_keys "
                                                 "WHERE hash = ?1 AND revokedAt IS NULL");
    if (!stmt)
        return CM_STORAGE_ERROR;
    sqlite3_bind_blob (stmt, 1, hash, (int) hash_size, SQLITE_TRANSIENT);
    int rc = sqlite3_step (stmt);
    cm_storage_status_t status = CM_STORAGE_NOT_FOUND;
    if (rc == SQLITE_ROW) {
        //  The index found the row; the match itself is still checked in
        //  constant time, so that no comparison here depends on the bytes.
        const void *stored = sqlite3_column_blob (stmt, 2);
        if ((size_t) sqlite3_column_bytes (stmt, 2) == hash_size && stored &&
            sodium_memcmp (stored, hash, hash_size) == 0) {
            *id_p = sqlite3_column_int64 (stmt, 0);
            const char *text = (const char *) sqlite3_column_text (stmt, 1);
            snprintf (role, role_size, "%s", text ? text : "");
            status = CM_STORAGE_OK;
        }
    } else if (rc != SQLITE_DONE) {
        cm_storage__fail (self, "find API key");
        status = CM_STORAGE_ERROR;
    }
    sqlite3_reset (stmt);
    return status;
}

//  --- private ------------------------------------------------------------------

cm_storage_status_t
cm_storage__one (cm_storage_t *self, sqlite3_stmt *stmt, const char *what, json_t **row_p)
{
    int rc = sqlite3_step (stmt);
    cm_storage_status_t status = CM_STORAGE_NOT_FOUND;
    if (rc == SQLITE_ROW) {
        if (row_p)
            *row_p = cm_storage__row (stmt);
        status = CM_STORAGE_OK;
    } else if (rc != SQLITE_DONE) {
        cm_storage__fail (self, what);
        status = CM_STORAGE_ERROR;
    }
    sqlite3_reset (stmt);
    return status;
}

cm_storage_status_t
cm_storage__get (cm_storage_t *self, const char *sql, const char *key, const char *what,
                 json_t **row_p)
{
    sqlite3_stmt *stmt = cm_storage__stmt (self, sql);
    if (!stmt)
        return CM_STORAGE_ERROR;
    sqlite3_bind_text (stmt, 1, key, -1, SQLITE_TRANSIENT);
    return cm_storage__one (self, stmt, what, row_p);
}

int
cm_storage__step (cm_storage_t *self, sqlite3_stmt *stmt, const char *what)
{
    int rc = sqlite3_step (stmt);
    sqlite3_reset (stmt);
    if (rc != SQLITE_DONE && rc != SQLITE_ROW)
        return cm_storage__fail (self, what);
    return 0;
}

cm_storage_status_t
cm_storage__change (cm_storage_t *self, sqlite3_stmt *stmt, const char *what)
{
    if (cm_storage__step (self, stmt, what))
        return CM_STORAGE_ERROR;
    return sqlite3_changes (self->db) > 0 ? CM_STORAGE_OK : CM_STORAGE_NOT_FOUND;
}

void
cm_storage__rollback (cm_storage_t *self)
{
    if (!sqlite3_get_autocommit (self->db))
        sqlite3_exec (self->db, "ROLLBACK", NULL, NULL, NULL);
}

void
cm_storage__bind_text (sqlite3_stmt *stmt, int index, const char *text)
{
    if (text)
        sqlite3_bind_text (stmt, index, text, -1, SQLITE_TRANSIENT);
    else
        sqlite3_bind_null (stmt, index);
}

//  Step a bound statement to the end, every row as JSON (cm_storage__row) into a new
//  array for *rows_p; on failure log what failed and leave *rows_p NULL.
cm_storage_status_t
cm_storage__rows (cm_storage_t *self, sqlite3_stmt *stmt, const char *what,
                  json_t **rows_p)
{
    json_t *rows = json_array ();
    int rc;
    while ((rc = sqlite3_step (stmt)) == SQLITE_ROW)
        json_array_append_new (rows, cm_storage__row (stmt));
    sqlite3_reset (stmt);
    if (rc != SQLITE_DONE) {
        cm_storage__fail (self, what);
        json_decref (rows);
        return CM_STORAGE_ERROR;
    }
    *rows_p = rows;
    return CM_STORAGE_OK;
}

//  Record a database failure and log it once, where it happens (while
//  opening, the caller reports it instead). Returns -1.
//  The same failure over and over (a full disk: every checkpoint of every
//  process, ten a second) is logged once every S_FAILURE_LOG_MS with how
//  often it repeated, not each time; another failure is logged at once.
#define S_FAILURE_LOG_MS 10000

static void
s_log_failure (cm_storage_t *self)
{
    static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
    static char last[512];
    static int64_t last_at;
    static unsigned long repeats;
    int64_t now = cm_clock_mono_ms ();
    pthread_mutex_lock (&lock);
    bool same = !strcmp (last, self->errmsg) && now - last_at < S_FAILURE_LOG_MS;
    unsigned long told = repeats;
    if (same)
        repeats++;
    else {
        snprintf (last, sizeof last, "%s", self->errmsg);
        last_at = now;
        repeats = 0;
    }
    pthread_mutex_unlock (&lock);
    if (same)
        return;
    if (told)
        cm_error ("storage %s: %s (%lu more like the last one logged were left out)",
                  self->path, self->errmsg, told);
    else
        cm_error ("storage %s: %s", self->path, self->errmsg);
}

int
cm_storage__fail (cm_storage_t *self, const char *what)
{
    snprintf (self->errmsg, sizeof self->errmsg, "%s: %s (%d)", what,
              self->db ? sqlite3_errmsg (self->db) : "no connection",
              self->db ? sqlite3_extended_errcode (self->db) : 0);
    if (!self->opening)
        s_log_failure (self);
    return -1;
}

//  Run a statement that returns no rows we need, from the cache.
int
cm_storage__exec (cm_storage_t *self, const char *sql)
{
    sqlite3_stmt *stmt = cm_storage__stmt (self, sql);
    if (!stmt)
        return -1;
    int rc;
    while ((rc = sqlite3_step (stmt)) == SQLITE_ROW)
        ;
    sqlite3_reset (stmt);
    if (rc != SQLITE_DONE)
        return cm_storage__fail (self, sql);
    return 0;
}

//  A prepared statement for sql, from the cache or newly prepared, reset and
//  with no bindings. NULL on failure (logged).
sqlite3_stmt *
cm_storage__stmt (cm_storage_t *self, const char *sql)
{
    for (size_t i = 0; i < self->cache_size; i++)
        if (!strcmp (self->cache[i].sql, sql)) {
            sqlite3_reset (self->cache[i].stmt);
            sqlite3_clear_bindings (self->cache[i].stmt);
            return self->cache[i].stmt;
        }
    sqlite3_stmt *stmt = NULL;
    if (sqlite3_prepare_v3 (self->db, sql, -1, SQLITE_PREPARE_PERSISTENT, &stmt, NULL) !=
        SQLITE_OK) {
        cm_storage__fail (self, "prepare");
        sqlite3_finalize (stmt);
        return NULL;
    }
    if (self->cache_size == self->cache_max) {
        self->cache_max = self->cache_max ? self->cache_max * 2 : 16;
        self->cache = cm_realloc (self->cache, self->cache_max * sizeof *self->cache);
    }
    self->cache[self->cache_size].sql = cm_strdup (sql);
    self->cache[self->cache_size].stmt = stmt;
    self->cache_size++;
    return stmt;
}

//  The current row as a JSON object keyed by column name.
json_t *
cm_storage__row (sqlite3_stmt *stmt)
{
    json_t *row = json_object ();
    int columns = sqlite3_column_count (stmt);
    for (int i = 0; i < columns; i++) {
        const char *name = sqlite3_column_name (stmt, i);
        const char *decl = sqlite3_column_decltype (stmt, i);
        json_t *value = NULL;
        switch (sqlite3_column_type (stmt, i)) {
            case SQLITE_INTEGER:
                value = decl && !strcasecmp (decl, "BOOLEAN")
                            ? json_boolean (sqlite3_column_int64 (stmt, i))
                            : json_integer (sqlite3_column_int64 (stmt, i));
                break;
            case SQLITE_FLOAT:
                value = json_real (sqlite3_column_double (stmt, i));
                break;
            case SQLITE_TEXT: {
                const char *text = (const char *) sqlite3_column_text (stmt, i);
                size_t size = (size_t) sqlite3_column_bytes (stmt, i);
                if (decl && !strcasecmp (decl, "JSON_TEXT"))
                    value = json_loadb (text, size, JSON_DECODE_ANY, NULL);
                if (!value)
                    value = json_stringn (text, size);
                break;
            }
            default:
                break;
        }
        json_object_set_new (row, name, value ? value : json_null ());
    }
    return row;
}

//  Run a PRAGMA that may need a lock the busy handler does not wait for
//  (changing the journal mode), retrying until the busy timeout.
static int
s_pragma_text (cm_storage_t *self, const char *sql, char *out, size_t size)
{
    int64_t deadline = cm_clock_mono_ms () + S_BUSY_TIMEOUT_MS;
    while (true) {
        sqlite3_stmt *stmt = NULL;
        int rc = sqlite3_prepare_v2 (self->db, sql, -1, &stmt, NULL);
        if (rc == SQLITE_OK) {
            rc = sqlite3_step (stmt);
            if (rc == SQLITE_ROW) {
                snprintf (out, size, "%s", (const char *) sqlite3_column_text (stmt, 0));
                rc = SQLITE_DONE;
            }
        }
        sqlite3_finalize (stmt);
        if (rc == SQLITE_DONE)
            return 0;
        if ((rc & 0xff) != SQLITE_BUSY && (rc & 0xff) != SQLITE_LOCKED)
            return cm_storage__fail (self, sql);
        if (cm_clock_mono_ms () > deadline)
            return cm_storage__fail (self, sql);
        struct timespec pause = {0, 10 * 1000 * 1000};
        nanosleep (&pause, NULL);
    }
}

//  Waiting for another connection's write lock. SQLite's own timeout sleeps
//  1, 2, 5, 10 ... 100 ms between tries, while the lock is held for tens of
//  microseconds per chat turn: under load most of a turn's latency was that
//  sleep. Retry after 50 us, backing off to 2 ms, for S_BUSY_TIMEOUT_MS.
static int
s_busy (void *arg, int count)
{
    (void) arg;
    static const int steps_us[] = {50, 50, 100, 100, 200, 200, 500, 1000};
    int64_t waited_us = 0;
    for (int i = 0; i < count; i++)
        waited_us += i < 8 ? steps_us[i] : 2000;
    if (waited_us >= (int64_t) S_BUSY_TIMEOUT_MS * 1000)
        return 0;
    int pause_us = count < 8 ? steps_us[count] : 2000;
    struct timespec pause = {0, (long) pause_us * 1000};
    nanosleep (&pause, NULL);
    return 1;
}

static int
s_open (cm_storage_t *self)
{
    int rc = sqlite3_open_v2 (
        self->path, &self->db,
        SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, NULL);
    if (rc != SQLITE_OK) {
        if (!self->db) {
            snprintf (self->errmsg, sizeof self->errmsg, "cannot open: out of memory");
            return -1;
        }
        return cm_storage__fail (self, "open");
    }
    sqlite3_extended_result_codes (self->db, 1);
    sqlite3_busy_handler (self->db, s_busy, NULL);

    char mode[32] = "";
    if (s_pragma_text (self, "PRAGMA journal_mode", mode, sizeof mode))
        return -1;
    if (strcasecmp (mode, "wal")) {
        if (s_pragma_text (self, "PRAGMA journal_mode=WAL", mode, sizeof mode))
            return -1;
        if (strcasecmp (mode, "wal"))
            cm_warn (
                "storage %s: WAL mode refused (journal mode is %s); concurrent writers "
                "will wait longer",
                self->path, mode);
    }
    if (cm_storage__exec (self, "PRAGMA synchronous=NORMAL") ||
        cm_storage__exec (self, "PRAGMA foreign_keys=ON") ||
        cm_storage__exec (self, "PRAGMA journal_size_limit=" S_WAL_SIZE_LIMIT))
        return -1;
    return 0;
}

static int
s_migrate (cm_storage_t *self)
{
    //  The common case (schema current) needs no write lock.
    int version = cm_storage_schema_version (self);
    if (version < 0)
        return -1;
    if (version == CM_STORAGE_SCHEMA_VERSION)
        return 0;

    //  Another process may be migrating right now: take the write lock, then
    //  look again.
    if (cm_storage__exec (self, "BEGIN IMMEDIATE"))
        return -1;
    version = cm_storage_schema_version (self);
    if (version < 0)
        goto rollback;
    if (version > CM_STORAGE_SCHEMA_VERSION) {
        snprintf (self->errmsg, sizeof self->errmsg,
                  "schema version %d is newer than this build's %d; upgrade llmrt",
                  version, CM_STORAGE_SCHEMA_VERSION);
        goto rollback;
    }
    for (int step = version; step < CM_STORAGE_SCHEMA_VERSION; step++) {
        char *message = NULL;
        if (sqlite3_exec (self->db, s_migrations[step], NULL, NULL, &message) !=
            SQLITE_OK) {
            sqlite3_free (message);
            char what[64];
            snprintf (what, sizeof what, "migration to schema version %d", step + 1);
            cm_storage__fail (self, what);
            goto rollback;
        }
    }
    char sql[64];
    snprintf (sql, sizeof sql, "PRAGMA user_version = %d", CM_STORAGE_SCHEMA_VERSION);
    if (sqlite3_exec (self->db, sql, NULL, NULL, NULL) != SQLITE_OK) {
        cm_storage__fail (self, "set schema version");
        goto rollback;
    }
    if (cm_storage__exec (self, "COMMIT"))
        goto rollback;
    if (version != CM_STORAGE_SCHEMA_VERSION)
        cm_info ("storage %s: schema migrated from version %d to %d", self->path, version,
                 CM_STORAGE_SCHEMA_VERSION);
    return 0;

rollback:
    cm_storage__rollback (self);
    return -1;
}

static int
s_mkdir_p (const char *dir, char *err, size_t errlen)
{
    char *path = cm_strdup (dir);
    int rc = 0;
    for (char *p = path + 1;; p++) {
        if (*p != '/' && *p)
            continue;
        char saved = *p;
        *p = 0;
        if (mkdir (path, 0755) && errno != EEXIST) {
            snprintf (err, errlen, "storage: cannot create directory %s: %s", path,
                      strerror (errno));
            rc = -1;
            break;
        }
        *p = saved;
        if (!saved)
            break;
    }
    struct stat st;
    if (!rc && (stat (dir, &st) || !S_ISDIR (st.st_mode))) {
        snprintf (err, errlen, "storage: %s is not a directory", dir);
        rc = -1;
    }
    free (path);
    return rc;
}
