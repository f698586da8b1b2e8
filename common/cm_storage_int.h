/*  cm_storage_int.h: private to the storage module (cm_storage*.c), which
    is split into files by subject (cm_storage.c: connection, pool,
    workspaces, threads, chats, keys; cm_storage_docs.c: documents, chunks,
    vectors, ingestion jobs; cm_storage_flows.c: agent flows). Nothing
    outside those files includes it. */
#ifndef CM_STORAGE_INT_H_INCLUDED
#define CM_STORAGE_INT_H_INCLUDED

#include "cm_storage.h"
#include <pthread.h>
#include <sqlite3.h>

//  ISO-8601 UTC with milliseconds, as upstream's Prisma serialises dates.
#define CM_STORAGE_NOW "strftime('%Y-%m-%dT%H:%M:%fZ','now')"

typedef struct s_grouped_s s_grouped_t;

typedef struct {
    char *sql;          //  the statement's text, the cache key
    sqlite3_stmt *stmt; //  prepared once, reset between uses
} s_cached_t;

struct cm_storage_s {
    sqlite3 *db;       //  the connection (SQLITE_OPEN_NOMUTEX: one thread at a time)
    char *path;        //  dir/llmrt.db
    s_cached_t *cache; //  prepared statements, looked up by SQL text
    size_t cache_size; //  entries in use
    size_t cache_max;  //  entries allocated
    char errmsg[512];  //  reason of the last failure ("" after none)
    bool opening;      //  in cm_storage_new: failures go to its caller, unlogged
    cm_storage_pool_t *pool; //  the pool that lends it (NULL: not pooled)
};

struct cm_storage_pool_s {
    pthread_mutex_t lock; //  guards idle, idle_size and lent
    char *dir;            //  storage directory new connections open
    cm_storage_t **idle;  //  connections waiting to be lent
    size_t idle_size;     //  entries in idle
    size_t idle_max;      //  entries allocated
    size_t lent;          //  connections out with callers
    //  The checkpointer: WAL checkpoints (and their fsyncs) run here, every
    //  100 ms, instead of inside whichever request's commit crossed the
    //  auto-checkpoint size (measured: 9% of a chat turn's CPU, and its
    //  worst latencies, since the write lock is held meanwhile).
    pthread_t checkpointer; //  the thread
    pthread_cond_t wake;    //  signalled on destroy
    bool stopping;          //  guarded by lock
    int wal_restart_frames; //  WAL length that makes it rewind (guarded by lock)
    int64_t checkpoint_ms;  //  its period (guarded by lock)
    //  Group commit of chat turns (cm_storage_chat_add on a pooled
    //  connection): turns that arrive while one commit runs wait in a list,
    //  and the next leader writes them all in one transaction.
    pthread_mutex_t group_lock; //  guards the five below
    s_grouped_t *group_head;    //  turns waiting for the next commit
    s_grouped_t *group_tail;    //  last of them
    bool group_leading;         //  a leader is committing
    uint64_t group_commits;     //  batches written
    uint64_t group_turns;       //  turns in them
};

//  Record a database failure and log it once, where it happens. Returns -1.
int cm_storage__fail (cm_storage_t *self, const char *what);
//  Step a bound statement to the end, every row as JSON (cm_storage__row)
//  into a new array for *rows_p; on failure log what failed.
cm_storage_status_t cm_storage__rows (cm_storage_t *self, sqlite3_stmt *stmt,
                                      const char *what, json_t **rows_p);
//  A prepared statement for sql, from the connection's cache or newly
//  prepared, reset and with no bindings. NULL on failure (logged).
sqlite3_stmt *cm_storage__stmt (cm_storage_t *self, const char *sql);
//  Run a cached statement that returns no rows we need. 0 or -1 (logged).
int cm_storage__exec (cm_storage_t *self, const char *sql);
//  The current row as a JSON object keyed by column name (BOOLEAN columns
//  as true/false, JSON_TEXT columns parsed).
json_t *cm_storage__row (sqlite3_stmt *stmt);
//  Step a bound statement that selects at most one row: OK (the row as
//  JSON in *row_p, when row_p is not NULL), NOT_FOUND, or ERROR (logged as
//  what). Resets the statement.
cm_storage_status_t cm_storage__one (cm_storage_t *self, sqlite3_stmt *stmt,
                                     const char *what, json_t **row_p);
//  The one row sql selects with key bound to ?1, as cm_storage__one.
cm_storage_status_t cm_storage__get (cm_storage_t *self, const char *sql, const char *key,
                                     const char *what, json_t **row_p);
//  Step a bound statement that returns no rows we need. 0, or -1 (logged
//  as what).
int cm_storage__step (cm_storage_t *self, sqlite3_stmt *stmt, const char *what);
//  Step a bound UPDATE or DELETE: OK when it changed a row, NOT_FOUND when
//  none, ERROR (logged as what).
cm_storage_status_t cm_storage__change (cm_storage_t *self, sqlite3_stmt *stmt,
                                        const char *what);
//  Roll back the open transaction, if any (after a failure: nothing to log).
void cm_storage__rollback (cm_storage_t *self);
//  Bind a string, or NULL when text is NULL.
void cm_storage__bind_text (sqlite3_stmt *stmt, int index, const char *text);

#endif
