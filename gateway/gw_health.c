/*  gw_health.c: see gw_health.h. */
#include "gw_health.h"
#include "cm_log.h"
#include "cm_redis.h"
#include "cm_storage.h"
#include <limits.h>
#include <pthread.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <time.h>

//  Below this much free space where the database lives, writes fail (or
//  soon will): the database is reported down.
#define S_MIN_FREE_BYTES (1024 * 1024)

typedef struct {
    const char *status; //  "unknown", "ok", "down" (static strings)
    char error[256];    //  why down
    int64_t checked;    //  mono ms of the check, 0 never
} s_check_t;

struct gw_health_s {
    char *storage_dir;        //  where llmrt.db is
    char *redis_url;          //  the queue backend
    int64_t interval_ms;      //  check period
    int64_t timeout_ms;       //  Redis connect/command timeout
    pthread_t thread;         //  the checker
    pthread_mutex_t lock;     //  guards below
    pthread_cond_t wake;      //  signalled on destroy
    bool stopping;            //  destroy has begun
    s_check_t database;       //  last database check
    s_check_t redis;          //  last Redis check
    cm_storage_t *storage;    //  checker thread's connection, kept open
    bool identified;          //  dev/ino below are known
    dev_t dev;                //  the database file first opened...
    ino_t ino;                //  ...which must stay the one at its path
    redisContext *redis_conn; //  checker thread's connection, reopened on error
};

static void *s_checker (void *arg);

gw_health_t *
gw_health_new (const char *storage_dir, const char *redis_url, int64_t interval_ms,
               int64_t timeout_ms)
{
    assert (storage_dir && redis_url);
    gw_health_t *self = cm_calloc (1, sizeof *self);
    self->storage_dir = cm_strdup (storage_dir);
    self->redis_url = cm_strdup (redis_url);
    self->interval_ms = interval_ms > 0 ? interval_ms : 1000;
    self->timeout_ms = timeout_ms > 0 ? timeout_ms : 250;
    self->database.status = self->redis.status = "unknown";
    pthread_mutex_init (&self->lock, NULL);
    pthread_cond_init (&self->wake, NULL);
    if (pthread_create (&self->thread, NULL, s_checker, self))
        abort ();
    return self;
}

void
gw_health_destroy (gw_health_t **self_p)
{
    assert (self_p);
    gw_health_t *self = *self_p;
    if (!self)
        return;
    pthread_mutex_lock (&self->lock);
    self->stopping = true;
    pthread_cond_signal (&self->wake);
    pthread_mutex_unlock (&self->lock);
    pthread_join (self->thread, NULL);
    cm_storage_destroy (&self->storage);
    if (self->redis_conn)
        redisFree (self->redis_conn);
    pthread_cond_destroy (&self->wake);
    pthread_mutex_destroy (&self->lock);
    free (self->storage_dir);
    free (self->redis_url);
    free (self);
    *self_p = NULL;
}

static void
s_check_json (json_t *into, const char *name, const s_check_t *check, int64_t now,
              const char *url)
{
    json_t *entry = json_pack ("{s:s}", "status", check->status);
    if (url)
        json_object_set_new (entry, "url", json_string (url));
    if (*check->error && strcmp (check->status, "ok"))
        json_object_set_new (entry, "error", json_string (check->error));
    if (check->checked)
        json_object_set_new (entry, "checked_ms_ago",
                             json_integer (now - check->checked));
    json_object_set_new (into, name, entry);
}

json_t *
gw_health_report (gw_health_t *self)
{
    assert (self);
    json_t *report = json_object ();
    int64_t now = cm_clock_mono_ms ();
    pthread_mutex_lock (&self->lock);
    s_check_json (report, "database", &self->database, now, NULL);
    s_check_json (report, "queue_backend", &self->redis, now, self->redis_url);
    pthread_mutex_unlock (&self->lock);
    return report;
}

bool
gw_health_database_ok (gw_health_t *self)
{
    assert (self);
    pthread_mutex_lock (&self->lock);
    bool ok = !strcmp (self->database.status, "ok");
    pthread_mutex_unlock (&self->lock);
    return ok;
}

bool
gw_health_redis_ok (gw_health_t *self)
{
    assert (self);
    pthread_mutex_lock (&self->lock);
    bool ok = !strcmp (self->redis.status, "ok");
    pthread_mutex_unlock (&self->lock);
    return ok;
}

//  Publish a result, logging only changes (a dependency that stays down is
//  said once, not every second).
static void
s_publish (gw_health_t *self, s_check_t *check, const char *what, bool ok,
           const char *error)
{
    pthread_mutex_lock (&self->lock);
    const char *was = check->status;
    check->status = ok ? "ok" : "down";
    snprintf (check->error, sizeof check->error, "%s", ok ? "" : error);
    check->checked = cm_clock_mono_ms ();
    pthread_mutex_unlock (&self->lock);
    if (strcmp (was, check->status)) {
        if (ok)
            cm_info ("%s is %s", what, !strcmp (was, "unknown") ? "up" : "back");
        else
            cm_warn ("%s is down: %s", what, error);
    }
}

//  What a connection that works does not show: the file deleted or
//  replaced under the running suite (its processes go on writing to a file
//  nobody will open again, and a restarted one would start an empty
//  database beside it), or no room left to write. False with err set.
static bool
s_check_database_file (gw_health_t *self, char *err, size_t errlen)
{
    char path[PATH_MAX];
    snprintf (path, sizeof path, "%s/%s", self->storage_dir, CM_STORAGE_FILE);
    struct stat st;
    if (stat (path, &st)) {
        snprintf (err, errlen,
                  "the database file %.300s was removed while the suite uses it: restart "
                  "the suite",
                  path);
        return false;
    }
    if (!self->identified) {
        self->identified = true;
        self->dev = st.st_dev;
        self->ino = st.st_ino;
    } else if (st.st_dev != self->dev || st.st_ino != self->ino) {
        snprintf (err, errlen,
                  "the database file %.300s was replaced while the suite uses it (its "
                  "processes still have the old one): restart the suite",
                  path);
        return false;
    }
    struct statvfs fs;
    if (statvfs (self->storage_dir, &fs) == 0) {
        unsigned long long free_bytes =
            (unsigned long long) fs.f_bavail * (unsigned long long) fs.f_frsize;
        if (free_bytes < S_MIN_FREE_BYTES) {
            snprintf (err, errlen,
                      "the file system of %.300s is full (%llu bytes free): the database "
                      "cannot be written",
                      self->storage_dir, free_bytes);
            return false;
        }
    }
    return true;
}

static void
s_check_database (gw_health_t *self)
{
    char err[512] = "";
    if (!self->storage)
        self->storage = cm_storage_new (self->storage_dir, err, sizeof err);
    bool ok = self->storage && cm_storage_schema_version (self->storage) > 0;
    if (self->storage && !ok) {
        snprintf (err, sizeof err, "%s", cm_storage_errmsg (self->storage));
        cm_storage_destroy (&self->storage);
    }
    if (ok)
        ok = s_check_database_file (self, err, sizeof err);
    s_publish (self, &self->database, "the database", ok, err);
}

static void
s_check_redis (gw_health_t *self)
{
    char err[256] = "";
    if (!self->redis_conn)
        self->redis_conn =
            cm_redis_connect (self->redis_url, (int) self->timeout_ms, err, sizeof err);
    bool ok = self->redis_conn && cm_redis_ping (self->redis_conn, err, sizeof err) == 0;
    if (!ok && self->redis_conn) {
        redisFree (self->redis_conn);
        self->redis_conn = NULL;
    }
    s_publish (self, &self->redis, "Redis", ok, err);
}

static void *
s_checker (void *arg)
{
    gw_health_t *self = arg;
    pthread_mutex_lock (&self->lock);
    while (!self->stopping) {
        pthread_mutex_unlock (&self->lock);
        s_check_database (self);
        s_check_redis (self);
        pthread_mutex_lock (&self->lock);
        if (self->stopping)
            break;
        struct timespec until;
        clock_gettime (CLOCK_REALTIME, &until);
        until.tv_sec += self->interval_ms / 1000;
        until.tv_nsec += (self->interval_ms % 1000) * 1000000;
        if (until.tv_nsec >= 1000000000) {
            until.tv_sec++;
            until.tv_nsec -= 1000000000;
        }
        pthread_cond_timedwait (&self->wake, &self->lock, &until);
    }
    pthread_mutex_unlock (&self->lock);
    return NULL;
}
