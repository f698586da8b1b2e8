/*  cm_jobs.c: see cm_jobs.h. Each transition is a Lua script run with
    EVALSHA (scripts are loaded at each connect; NOSCRIPT falls back to
    EVAL), so Redis applies it whole or not at all. The scripts share a
    prelude of local functions; every one takes the key prefix as ARGV[1]
    and no KEYS. Timestamps are Redis's TIME, in milliseconds. */
#include "cm_jobs.h"
#include "cm_log.h"
#include "cm_redis.h"
#include <stdarg.h>
#include <stdatomic.h>
#include <sys/random.h>
#include <sys/time.h>
#include <unistd.h>

//  Work one script does at most per call, so that a backlog (a thousand
//  due retries, a million jobs to trim) never stalls Redis: the rest is
//  done by the next call.
#define S_BATCH "1000"
//  A worker with an empty processing list is forgotten this long after
//  its "alive until" (an hour: a late BLMOVE from a hung Redis still finds
//  its list scanned).
#define S_FORGET_MS 3600000LL
//  Retry delays stop doubling here (about 12 days at 1 s).
#define S_MAX_BACKOFF_SHIFT 20

//  Shared by every script. start() leases an id the worker W has just
//  moved to its list; promote() moves due delayed jobs to wait; trim()
//  drops the oldest members of completed/failed and their hashes; held()
//  says whether W still holds attempt n of a job. keepers_count() says
//  whether keepers' beats count now: beats and maintenance run every
//  second or so, and a longer gap between them means that Redis stood
//  still or was away, when no keeper could beat; they get a keeper
//  timeout from then before any is taken for dead.
#define S_PRELUDE                                                                        \
    "local P = ARGV[1]\n"                                                                \
    "local function now_ms ()\n"                                                         \
    "  local t = redis.call ('TIME')\n"                                                  \
    "  return tonumber (t[1]) * 1000 + math.floor (tonumber (t[2]) / 1000)\n"            \
    "end\n"                                                                              \
    "local function start (W, id, lease_ms, now, K)\n"                                   \
    "  local job = P .. 'job:' .. id\n"                                                  \
    "  local h = redis.call ('HMGET', job, 'data', 'attemptsMade', 'maxAttempts')\n"     \
    "  if not h[1] then\n"                                                               \
    "    redis.call ('LREM', P .. 'active:' .. W, 1, id)\n"                              \
    "    return false\n"                                                                 \
    "  end\n"                                                                            \
    "  local attempt = tonumber (h[2]) + 1\n"                                            \
    "  redis.call ('HSET', job, 'attemptsMade', attempt, 'worker', W,\n"                 \
    "              'processedOn', now)\n"                                                \
    "  if K ~= '' then redis.call ('HSET', job, 'keeper', K)\n"                          \
    "  else redis.call ('HDEL', job, 'keeper') end\n"                                    \
    "  redis.call ('ZADD', P .. 'lease', now + lease_ms, id)\n"                          \
    "  return {id, h[1], attempt, tonumber (h[3])}\n"                                    \
    "end\n"                                                                              \
    "local function promote (now)\n"                                                     \
    "  local due = redis.call ('ZRANGEBYSCORE', P .. 'delayed', '-inf', now,\n"          \
    "                          'LIMIT', 0, " S_BATCH ")\n"                               \
    "  for _, id in ipairs (due) do\n"                                                   \
    "    redis.call ('ZREM', P .. 'delayed', id)\n"                                      \
    "    redis.call ('LPUSH', P .. 'wait', id)\n"                                        \
    "  end\n"                                                                            \
    "  return #due\n"                                                                    \
    "end\n"                                                                              \
    "local function drop (set, ids)\n"                                                   \
    "  for _, id in ipairs (ids) do redis.call ('DEL', P .. 'job:' .. id) end\n"         \
    "  if #ids > 0 then redis.call ('ZREM', set, unpack (ids)) end\n"                    \
    "  return #ids\n"                                                                    \
    "end\n"                                                                              \
    "local function trim (name, keep, keep_ms, now)\n"                                   \
    "  local set = P .. name\n"                                                          \
    "  local n = 0\n"                                                                    \
    "  if keep_ms > 0 then\n"                                                            \
    "    n = drop (set, redis.call ('ZRANGEBYSCORE', set, '-inf', now - keep_ms,\n"      \
    "                               'LIMIT', 0, " S_BATCH "))\n"                         \
    "  end\n"                                                                            \
    "  local over = math.min (redis.call ('ZCARD', set) - keep, " S_BATCH ")\n"          \
    "  if over > 0 then\n"                                                               \
    "    n = n + drop (set, redis.call ('ZRANGE', set, 0, over - 1))\n"                  \
    "  end\n"                                                                            \
    "  return n\n"                                                                       \
    "end\n"                                                                              \
    "local function held (W, id, attempt)\n"                                             \
    "  local h = redis.call ('HMGET', P .. 'job:' .. id, 'worker', 'attemptsMade')\n"    \
    "  return h[1] == W and tonumber (h[2]) == attempt\n"                                \
    "     and redis.call ('LPOS', P .. 'active:' .. W, id) ~= false\n"                   \
    "end\n"                                                                              \
    "local function release (W, id)\n"                                                   \
    "  redis.call ('LREM', P .. 'active:' .. W, 1, id)\n"                                \
    "  redis.call ('ZREM', P .. 'lease', id)\n"                                          \
    "end\n"                                                                              \
    "local function keepers_count (now, timeout)\n"                                      \
    "  local tick, from = P .. 'keepers:tick', P .. 'keepers:from'\n"                    \
    "  local last = tonumber (redis.call ('GET', tick) or '0')\n"                        \
    "  redis.call ('SET', tick, now)\n"                                                  \
    "  if now - last > timeout / 2 then\n"                                               \
    "    redis.call ('SET', from, now + timeout)\n"                                      \
    "    return false\n"                                                                 \
    "  end\n"                                                                            \
    "  return now >= tonumber (redis.call ('GET', from) or '0')\n"                       \
    "end\n"

//  ARGV: P, id, data, maxAttempts. Returns 1 added, 0 exists.
static const char s_add_lua[] =
    S_PRELUDE "local job = P .. 'job:' .. ARGV[2]\n"
              "if redis.call ('EXISTS', job) == 1 then return 0 end\n"
              "redis.call ('HSET', job, 'data', ARGV[3], 'attemptsMade', 0,\n"
              "            'maxAttempts', ARGV[4], 'timestamp', now_ms ())\n"
              "redis.call ('LPUSH', P .. 'wait', ARGV[2])\n"
              "return 1\n";

//  ARGV: P, W, lease_ms, alive_ms, K. Registers W as alive for alive_ms,
//  promotes due retries, then leases (first) an id a broken BLMOVE left in
//  W's list without a lease, else the next waiting id. Returns the job
//  {id, data, attempt, max}, or the ms until the next delayed job is due
//  (-1: none).
static const char s_take_lua[] =
    S_PRELUDE "local W, lease_ms = ARGV[2], tonumber (ARGV[3])\n"
              "local now = now_ms ()\n"
              "redis.call ('ZADD', P .. 'workers', now + tonumber (ARGV[4]), W)\n"
              "promote (now)\n"
              "local active = P .. 'active:' .. W\n"
              "for _, id in ipairs (redis.call ('LRANGE', active, 0, -1)) do\n"
              "  if not redis.call ('ZSCORE', P .. 'lease', id) then\n"
              "    local job = start (W, id, lease_ms, now, ARGV[5])\n"
              "    if job then return job end\n"
              "  end\n"
              "end\n"
              "local id = redis.call ('LMOVE', P .. 'wait', active, 'RIGHT', 'LEFT')\n"
              "while id do\n"
              "  local job = start (W, id, lease_ms, now, ARGV[5])\n"
              "  if job then return job end\n"
              "  id = redis.call ('LMOVE', P .. 'wait', active, 'RIGHT', 'LEFT')\n"
              "end\n"
              "local nxt = redis.call ('ZRANGE', P .. 'delayed', 0, 0, 'WITHSCORES')\n"
              "if nxt[2] then return math.max (tonumber (nxt[2]) - now, 0) end\n"
              "return -1\n";

//  ARGV: P, W, lease_ms, id, K. After a BLMOVE: lease the id if it is
//  still in W's list. Returns the job, or nil.
static const char s_start_lua[] =
    S_PRELUDE "local W, id = ARGV[2], ARGV[4]\n"
              "if redis.call ('LPOS', P .. 'active:' .. W, id) == false\n"
              "   or redis.call ('ZSCORE', P .. 'lease', id) then return false end\n"
              "return start (W, id, tonumber (ARGV[3]), now_ms (), ARGV[5])\n";

//  ARGV: P, W, id, attempt, lease_ms. Returns 1 renewed, 0 lost.
static const char s_renew_lua[] =
    S_PRELUDE "local W, id, lease_ms = ARGV[2], ARGV[3], tonumber (ARGV[5])\n"
              "if not held (W, id, tonumber (ARGV[4])) then return 0 end\n"
              "local now = now_ms ()\n"
              "redis.call ('ZADD', P .. 'lease', now + lease_ms, id)\n"
              "redis.call ('ZADD', P .. 'workers', 'GT', now + lease_ms, W)\n"
              "return 1\n";

//  ARGV: P, W, id, attempt, keep, keep_ms. Returns 1 completed, 0 lost.
static const char s_complete_lua[] =
    S_PRELUDE "local W, id = ARGV[2], ARGV[3]\n"
              "if not held (W, id, tonumber (ARGV[4])) then return 0 end\n"
              "local now = now_ms ()\n"
              "release (W, id)\n"
              "redis.call ('HSET', P .. 'job:' .. id, 'finishedOn', now)\n"
              "redis.call ('ZADD', P .. 'completed', now, id)\n"
              "trim ('completed', tonumber (ARGV[5]), tonumber (ARGV[6]), now)\n"
              "return 1\n";

//  ARGV: P, W, id, attempt, reason, retry (0/1), delay_ms, keep_failed.
//  Returns 0 lost, 1 retrying, 2 failed.
static const char s_fail_lua[] =
    S_PRELUDE "local W, id, attempt = ARGV[2], ARGV[3], tonumber (ARGV[4])\n"
              "if not held (W, id, attempt) then return 0 end\n"
              "local now, job = now_ms (), P .. 'job:' .. id\n"
              "release (W, id)\n"
              "redis.call ('HSET', job, 'error', ARGV[5])\n"
              "local max = tonumber (redis.call ('HGET', job, 'maxAttempts'))\n"
              "if ARGV[6] == '1' and attempt < max then\n"
              "  local delay = tonumber (ARGV[7])\n"
              "  if delay > 0 then\n"
              "    redis.call ('ZADD', P .. 'delayed', now + delay, id)\n"
              "  else\n"
              "    redis.call ('LPUSH', P .. 'wait', id)\n"
              "  end\n"
              "  return 1\n"
              "end\n"
              "redis.call ('HSET', job, 'finishedOn', now)\n"
              "redis.call ('ZADD', P .. 'failed', now, id)\n"
              "trim ('failed', tonumber (ARGV[8]), 0, now)\n"
              "return 2\n";

//  ARGV: P, W, id, attempt, delay_ms. Back to the front of wait (or to
//  delayed, due in delay_ms), the attempt not counted. Returns 1, or 0 lost.
static const char s_release_lua[] =
    S_PRELUDE "local W, id = ARGV[2], ARGV[3]\n"
              "if not held (W, id, tonumber (ARGV[4])) then return 0 end\n"
              "release (W, id)\n"
              "redis.call ('HINCRBY', P .. 'job:' .. id, 'attemptsMade', -1)\n"
              "redis.call ('HDEL', P .. 'job:' .. id, 'worker')\n"
              "local delay = tonumber (ARGV[5])\n"
              "if delay > 0 then\n"
              "  redis.call ('ZADD', P .. 'delayed', now_ms () + delay, id)\n"
              "else\n"
              "  redis.call ('RPUSH', P .. 'wait', id)\n"
              "end\n"
              "return 1\n";

//  ARGV: P, keep_completed, keep_completed_ms, keep_failed, forget_ms,
//  keeper_timeout_ms (0: keepers off). A job in a processing list is
//  recovered when its lease expired, or its keeper's "alive until" passed
//  (when keepers count), or when it has no lease (a BLMOVE whose worker
//  died before leasing it) and its worker's "alive until" passed.
//  Recovered jobs go to the front of wait; or to failed, when that was
//  their last attempt. Returns {promoted, expired, orphaned}: jobs moved
//  because they fell due, their lease (or worker) expired, their keeper
//  died.
static const char s_maintain_lua[] = S_PRELUDE
    "local now = now_ms ()\n"
    "local promoted, expired_n, orphaned_n = promote (now), 0, 0\n"
    "local timeout = tonumber (ARGV[6])\n"
    "local keepers = timeout > 0 and keepers_count (now, timeout)\n"
    "local dead = {}\n"
    "local function keeper_dead (id)\n"
    "  if not keepers then return false end\n"
    "  local K = redis.call ('HGET', P .. 'job:' .. id, 'keeper')\n"
    "  if not K then return false end\n"
    "  if dead[K] == nil then\n"
    "    local alive = redis.call ('ZSCORE', P .. 'keepers', K)\n"
    "    dead[K] = alive ~= false and tonumber (alive) < now\n"
    "  end\n"
    "  return dead[K]\n"
    "end\n"
    "local workers = redis.call ('ZRANGE', P .. 'workers', 0, -1, 'WITHSCORES')\n"
    "for i = 1, #workers, 2 do\n"
    "  local W, alive = workers[i], tonumber (workers[i + 1])\n"
    "  local ids = redis.call ('LRANGE', P .. 'active:' .. W, 0, -1)\n"
    "  for _, id in ipairs (ids) do\n"
    "    local lease = redis.call ('ZSCORE', P .. 'lease', id)\n"
    "    local expired = (lease and tonumber (lease) < now) or (not lease and alive < "
    "now)\n"
    "    local orphan = lease and not expired and keeper_dead (id)\n"
    "    if expired or orphan then\n"
    "      release (W, id)\n"
    "      local job = P .. 'job:' .. id\n"
    "      local h = redis.call ('HMGET', job, 'attemptsMade', 'maxAttempts', 'keeper')\n"
    "      if h[1] then\n"
    "        local made, max = tonumber (h[1]), tonumber (h[2])\n"
    "        local why = 'lease expired on worker ' .. W\n"
    "        if orphan then why = 'keeper ' .. h[3] .. ' of worker ' .. W ..\n"
    "                             ' stopped' end\n"
    "        why = why .. ' (attempt ' .. made .. ' of ' .. max .. ')'\n"
    "        redis.call ('HDEL', job, 'worker')\n"
    "        redis.call ('HSET', job, 'error', why)\n"
    "        if made >= max then\n"
    "          redis.call ('HSET', job, 'finishedOn', now)\n"
    "          redis.call ('ZADD', P .. 'failed', now, id)\n"
    "        else\n"
    "          redis.call ('RPUSH', P .. 'wait', id)\n"
    "        end\n"
    "      end\n"
    "      if orphan then orphaned_n = orphaned_n + 1\n"
    "      else expired_n = expired_n + 1 end\n"
    "    end\n"
    "  end\n"
    "  if #ids == 0 and alive < now - tonumber (ARGV[5]) then\n"
    "    redis.call ('ZREM', P .. 'workers', W)\n"
    "  end\n"
    "end\n"
    "redis.call ('ZREMRANGEBYSCORE', P .. 'keepers', '-inf', now - tonumber (ARGV[5]))\n"
    "trim ('completed', tonumber (ARGV[2]), tonumber (ARGV[3]), now)\n"
    "trim ('failed', tonumber (ARGV[4]), 0, now)\n"
    "return {promoted, expired_n, orphaned_n}\n";

//  ARGV: P, timeout_ms. The keepers alive now, when keepers count; else
//  false.
static const char s_live_lua[] =
    S_PRELUDE "local now = now_ms ()\n"
              "if not keepers_count (now, tonumber (ARGV[2])) then return false end\n"
              "return redis.call ('ZRANGEBYSCORE', P .. 'keepers', now, '+inf')\n";

//  ARGV: P, K, timeout_ms. K is alive for timeout_ms more. Returns 1.
static const char s_beat_lua[] =
    S_PRELUDE "local now, timeout = now_ms (), tonumber (ARGV[3])\n"
              "keepers_count (now, timeout)\n"
              "redis.call ('ZADD', P .. 'keepers', now + timeout, ARGV[2])\n"
              "return 1\n";

//  ARGV: P. Returns {waiting, active, delayed, completed, failed}.
static const char s_counts_lua[] =
    S_PRELUDE "local active = 0\n"
              "for _, W in ipairs (redis.call ('ZRANGE', P .. 'workers', 0, -1)) do\n"
              "  active = active + redis.call ('LLEN', P .. 'active:' .. W)\n"
              "end\n"
              "return {redis.call ('LLEN', P .. 'wait'), active,\n"
              "        redis.call ('ZCARD', P .. 'delayed'),\n"
              "        redis.call ('ZCARD', P .. 'completed'),\n"
              "        redis.call ('ZCARD', P .. 'failed')}\n";

//  ARGV: P, id. Returns {state, field, value, ...} or nil. A job in the
//  instant between BLMOVE and its lease shows as waiting.
static const char s_info_lua[] =
    S_PRELUDE "local id = ARGV[2]\n"
              "local h = redis.call ('HGETALL', P .. 'job:' .. id)\n"
              "if #h == 0 then return false end\n"
              "local state, at = 'waiting', false\n"
              "for _, name in ipairs ({'completed', 'failed', 'delayed'}) do\n"
              "  at = redis.call ('ZSCORE', P .. name, id)\n"
              "  if at then state = name break end\n"
              "end\n"
              "if state == 'delayed' then\n"
              "  table.insert (h, 'delayUntil') table.insert (h, at)\n"
              "elseif state == 'waiting' then\n"
              "  local W = redis.call ('HGET', P .. 'job:' .. id, 'worker')\n"
              "  if W and redis.call ('LPOS', P .. 'active:' .. W, id) then\n"
              "    state = 'active'\n"
              "  end\n"
              "end\n"
              "table.insert (h, 1, state)\n"
              "return h\n";

typedef enum {
    S_ADD,
    S_TAKE,
    S_START,
    S_RENEW,
    S_COMPLETE,
    S_FAIL,
    S_RELEASE,
    S_MAINTAIN,
    S_COUNTS,
    S_INFO,
    S_BEAT,
    S_LIVE,
    S_SCRIPTS
} s_script_t;

static const char *s_sources[S_SCRIPTS] = {
    s_add_lua,     s_take_lua,     s_start_lua,  s_renew_lua, s_complete_lua, s_fail_lua,
    s_release_lua, s_maintain_lua, s_counts_lua, s_info_lua,  s_beat_lua,     s_live_lua,
};

struct cm_jobs_s {
    cm_jobs_config_t config; //  settings; url and queue point at ours below
    char *url;               //  Redis URL
    char *queue;             //  queue name
    char *keeper;            //  keeper id, "" for none
    char *worker;            //  this handle's worker id
    char *prefix;            //  "llmrt:<queue>:"
    char *wait_key;          //  prefix "wait"
    char *active_key;        //  prefix "active:<worker>"
    redisContext *redis;     //  the connection, NULL until (re)connected
    int available;           //  Redis answered the last call: 1, 0, -1 unknown
    char sha[S_SCRIPTS][41]; //  SCRIPT LOAD's digests, this connection
    char errmsg[256];        //  why the last call failed
};

static bool s_connect (cm_jobs_t *self);
static long long s_eval_integer (cm_jobs_t *self, s_script_t script, int argc,
                                 const char **argv);
static redisReply *s_eval (cm_jobs_t *self, s_script_t script, int argc,
                           const char **argv);
static void s_failed (cm_jobs_t *self, const char *fmt, ...)
    __attribute__ ((format (printf, 2, 3)));
static void s_answered (cm_jobs_t *self);
static cm_job_t *s_job_from (const redisReply *reply);
static void s_set_timeout (cm_jobs_t *self, int64_t ms);
static char *s_printf (const char *fmt, ...) __attribute__ ((format (printf, 1, 2)));

void
cm_jobs_config_defaults (cm_jobs_config_t *config)
{
    assert (config);
    *config = (cm_jobs_config_t){
        .lease_ms = CM_JOBS_DEFAULT_LEASE_MS,
        .attempts = CM_JOBS_DEFAULT_ATTEMPTS,
        .backoff_ms = CM_JOBS_DEFAULT_BACKOFF_MS,
        .keep_completed = CM_JOBS_DEFAULT_KEEP_COMPLETED,
        .keep_completed_ms = CM_JOBS_DEFAULT_KEEP_COMPLETED_MS,
        .keep_failed = CM_JOBS_DEFAULT_KEEP_FAILED,
        .io_timeout_ms = CM_JOBS_DEFAULT_IO_TIMEOUT_MS,
    };
}

cm_jobs_t *
cm_jobs_new (const cm_jobs_config_t *config, const char *worker_id)
{
    assert (config && config->url && config->queue && *config->queue);
    assert (config->lease_ms >= 1 && config->attempts >= 1 && config->backoff_ms >= 0);
    assert (config->keep_completed_ms >= 0 && config->io_timeout_ms >= 1);
    cm_jobs_t *self = cm_calloc (1, sizeof *self);
    self->config = *config;
    self->url = cm_strdup (config->url);
    self->queue = cm_strdup (config->queue);
    self->config.url = self->url;
    self->config.queue = self->queue;
    self->keeper = cm_strdup (config->keeper ? config->keeper : "");
    self->config.keeper = self->keeper;
    self->worker = worker_id ? cm_strdup (worker_id) : cm_jobs_unique_id ();
    self->prefix = s_printf ("llmrt:%s:", self->queue);
    self->wait_key = s_printf ("%swait", self->prefix);
    self->active_key = s_printf ("%sactive:%s", self->prefix, self->worker);
    self->available = -1;
    return self;
}

void
cm_jobs_destroy (cm_jobs_t **self_p)
{
    assert (self_p);
    cm_jobs_t *self = *self_p;
    if (!self)
        return;
    if (self->redis)
        redisFree (self->redis);
    free (self->url);
    free (self->queue);
    free (self->keeper);
    free (self->worker);
    free (self->prefix);
    free (self->wait_key);
    free (self->active_key);
    free (self);
    *self_p = NULL;
}

int
cm_jobs_add (cm_jobs_t *self, const char *id, const char *data)
{
    assert (self && id && data);
    char max[24];
    snprintf (max, sizeof max, "%d", self->config.attempts);
    const char *argv[] = {self->prefix, id, data, max};
    redisReply *reply = s_eval (self, S_ADD, 4, argv);
    if (!reply)
        return CM_JOBS_ERROR;
    int rc = reply->integer ? CM_JOBS_OK : CM_JOBS_EXISTS;
    freeReplyObject (reply);
    return rc;
}

int
cm_jobs_take (cm_jobs_t *self, int64_t wait_ms, cm_job_t **job_p)
{
    assert (self && job_p && wait_ms >= 0);
    *job_p = NULL;
    int64_t deadline = cm_clock_mono_ms () + wait_ms;
    while (true) {
        int64_t remaining = deadline - cm_clock_mono_ms ();
        if (remaining < 0)
            remaining = 0;
        char lease[24], alive[24];
        snprintf (lease, sizeof lease, "%lld", (long long) self->config.lease_ms);
        //  W stays "alive" past the BLMOVE below, and a lease's length
        //  more, for its start script to run: until then maintain leaves
        //  a job without a lease in W's list alone.
        snprintf (
            alive, sizeof alive, "%lld",
            (long long) (remaining + self->config.io_timeout_ms + self->config.lease_ms));
        const char *argv[] = {self->prefix, self->worker, lease, alive, self->keeper};
        redisReply *reply = s_eval (self, S_TAKE, 5, argv);
        if (!reply)
            return -1;
        if (reply->type == REDIS_REPLY_ARRAY) {
            *job_p = s_job_from (reply);
            freeReplyObject (reply);
            return 1;
        }
        int64_t next_due = reply->integer;
        freeReplyObject (reply);
        if (remaining == 0)
            return 0;
        //  Block no longer than until the next retry is due, so that it
        //  runs on time without anyone calling maintain.
        int64_t block = remaining;
        if (next_due >= 0 && next_due < block)
            block = next_due > 0 ? next_due : 1;
        char timeout[32];
        snprintf (timeout, sizeof timeout, "%.3f", (double) block / 1000.0);
        s_set_timeout (self, block + self->config.io_timeout_ms);
        reply = redisCommand (self->redis, "BLMOVE %s %s RIGHT LEFT %s", self->wait_key,
                              self->active_key, timeout);
        if (!reply) {
            s_failed (self, "Redis did not answer BLMOVE: %s", self->redis->errstr);
            return -1;
        }
        s_set_timeout (self, self->config.io_timeout_ms);
        if (reply->type == REDIS_REPLY_ERROR) {
            s_failed (self, "Redis answered BLMOVE with: %s", reply->str);
            freeReplyObject (reply);
            return -1;
        }
        if (reply->type == REDIS_REPLY_STRING) {
            argv[3] = reply->str;
            redisReply *job = s_eval (self, S_START, 5, argv);
            freeReplyObject (reply);
            if (!job)
                return -1;
            if (job->type == REDIS_REPLY_ARRAY) {
                *job_p = s_job_from (job);
                freeReplyObject (job);
                return 1;
            }
            freeReplyObject (job);
        } else
            freeReplyObject (reply);
    }
}

int
cm_jobs_renew (cm_jobs_t *self, const cm_job_t *job)
{
    assert (self && job);
    char attempt[24], lease[24];
    snprintf (attempt, sizeof attempt, "%d", job->attempt);
    snprintf (lease, sizeof lease, "%lld", (long long) self->config.lease_ms);
    const char *argv[] = {self->prefix, self->worker, job->id, attempt, lease};
    long long answer = s_eval_integer (self, S_RENEW, 5, argv);
    return answer < 0 ? CM_JOBS_ERROR : answer ? CM_JOBS_OK : CM_JOBS_LOST;
}

int
cm_jobs_complete (cm_jobs_t *self, cm_job_t **job_p)
{
    assert (self && job_p && *job_p);
    cm_job_t *job = *job_p;
    char attempt[24], keep[24], keep_ms[24];
    snprintf (attempt, sizeof attempt, "%d", job->attempt);
    snprintf (keep, sizeof keep, "%zu", self->config.keep_completed);
    snprintf (keep_ms, sizeof keep_ms, "%lld",
              (long long) self->config.keep_completed_ms);
    const char *argv[] = {self->prefix, self->worker, job->id, attempt, keep, keep_ms};
    long long answer = s_eval_integer (self, S_COMPLETE, 6, argv);
    cm_job_destroy (job_p);
    return answer < 0 ? CM_JOBS_ERROR : answer ? CM_JOBS_OK : CM_JOBS_LOST;
}

int
cm_jobs_fail (cm_jobs_t *self, cm_job_t **job_p, const char *reason, bool retry)
{
    assert (self && job_p && *job_p && reason);
    cm_job_t *job = *job_p;
    int shift = job->attempt - 1;
    if (shift > S_MAX_BACKOFF_SHIFT)
        shift = S_MAX_BACKOFF_SHIFT;
    char attempt[24], delay[24], keep[24];
    snprintf (attempt, sizeof attempt, "%d", job->attempt);
    snprintf (delay, sizeof delay, "%lld",
              (long long) (self->config.backoff_ms << shift));
    snprintf (keep, sizeof keep, "%zu", self->config.keep_failed);
    const char *argv[] = {self->prefix, self->worker,      job->id, attempt,
                          reason,       retry ? "1" : "0", delay,   keep};
    long long answer = s_eval_integer (self, S_FAIL, 8, argv);
    cm_job_destroy (job_p);
    return answer < 0    ? CM_JOBS_ERROR
           : answer == 1 ? CM_JOBS_RETRYING
           : answer == 2 ? CM_JOBS_FAILED
                         : CM_JOBS_LOST;
}

int
cm_jobs_release (cm_jobs_t *self, cm_job_t **job_p, int64_t delay_ms)
{
    assert (self && job_p && *job_p);
    cm_job_t *job = *job_p;
    char attempt[24], delay[24];
    snprintf (attempt, sizeof attempt, "%d", job->attempt);
    snprintf (delay, sizeof delay, "%lld", (long long) (delay_ms > 0 ? delay_ms : 0));
    const char *argv[] = {self->prefix, self->worker, job->id, attempt, delay};
    long long answer = s_eval_integer (self, S_RELEASE, 5, argv);
    cm_job_destroy (job_p);
    return answer < 0 ? CM_JOBS_ERROR : answer ? CM_JOBS_OK : CM_JOBS_LOST;
}

int
cm_jobs_maintain (cm_jobs_t *self, cm_jobs_maintained_t *out)
{
    assert (self);
    if (out)
        *out = (cm_jobs_maintained_t){0};
    char keep[24], keep_ms[24], keep_failed[24], forget[24];
    snprintf (keep, sizeof keep, "%zu", self->config.keep_completed);
    snprintf (keep_ms, sizeof keep_ms, "%lld",
              (long long) self->config.keep_completed_ms);
    snprintf (keep_failed, sizeof keep_failed, "%zu", self->config.keep_failed);
    snprintf (forget, sizeof forget, "%lld", S_FORGET_MS);
    char timeout[24];
    snprintf (timeout, sizeof timeout, "%lld",
              (long long) self->config.keeper_timeout_ms);
    const char *argv[] = {self->prefix, keep, keep_ms, keep_failed, forget, timeout};
    redisReply *reply = s_eval (self, S_MAINTAIN, 6, argv);
    if (!reply)
        return -1;
    cm_jobs_maintained_t counts = {0};
    if (reply->type == REDIS_REPLY_ARRAY && reply->elements == 3) {
        counts.promoted = (int) reply->element[0]->integer;
        counts.expired = (int) reply->element[1]->integer;
        counts.orphaned = (int) reply->element[2]->integer;
    }
    freeReplyObject (reply);
    int moved = counts.promoted + counts.expired + counts.orphaned;
    if (moved > 0)
        cm_debug ("jobs %s: maintain moved %d jobs (%d due, %d expired, %d orphaned)",
                  self->queue, moved, counts.promoted, counts.expired, counts.orphaned);
    if (out)
        *out = counts;
    return moved;
}

int
cm_jobs_beat (cm_jobs_t *self)
{
    assert (self && *self->keeper && self->config.keeper_timeout_ms > 0);
    char timeout[24];
    snprintf (timeout, sizeof timeout, "%lld",
              (long long) self->config.keeper_timeout_ms);
    const char *argv[] = {self->prefix, self->keeper, timeout};
    return s_eval_integer (self, S_BEAT, 3, argv) < 0 ? -1 : 0;
}

int
cm_jobs_live_keepers (cm_jobs_t *self, json_t **ids_p)
{
    assert (self && ids_p && self->config.keeper_timeout_ms > 0);
    *ids_p = NULL;
    char timeout[24];
    snprintf (timeout, sizeof timeout, "%lld",
              (long long) self->config.keeper_timeout_ms);
    const char *argv[] = {self->prefix, timeout};
    redisReply *reply = s_eval (self, S_LIVE, 2, argv);
    if (!reply)
        return -1;
    int rc = 0;
    if (reply->type == REDIS_REPLY_ARRAY) {
        *ids_p = json_array ();
        for (size_t i = 0; i < reply->elements; i++)
            if (reply->element[i]->type == REDIS_REPLY_STRING)
                json_array_append_new (*ids_p, json_stringn (reply->element[i]->str,
                                                             reply->element[i]->len));
        rc = 1;
    }
    freeReplyObject (reply);
    return rc;
}

char *
cm_jobs_unique_id (void)
{
    //  Unique across threads (the counter), processes (the pid), hosts (the
    //  name) and restarts of a container, where host and pid repeat (the
    //  random part).
    static atomic_int counter;
    char host[128] = "host";
    gethostname (host, sizeof host - 1);
    uint32_t nonce = 0;
    if (getrandom (&nonce, sizeof nonce, 0) != sizeof nonce)
        nonce = (uint32_t) cm_clock_mono_us () ^ (uint32_t) getpid ();
    return s_printf ("%s-%d-%d-%08x", host, (int) getpid (),
                     atomic_fetch_add (&counter, 1) + 1, nonce);
}

int
cm_jobs_counts (cm_jobs_t *self, cm_jobs_counts_t *out)
{
    assert (self && out);
    const char *argv[] = {self->prefix};
    redisReply *reply = s_eval (self, S_COUNTS, 1, argv);
    if (!reply)
        return -1;
    int rc = -1;
    if (reply->type == REDIS_REPLY_ARRAY && reply->elements == 5) {
        int64_t *fields[] = {&out->waiting, &out->active, &out->delayed, &out->completed,
                             &out->failed};
        for (size_t i = 0; i < 5; i++)
            *fields[i] = reply->element[i]->integer;
        rc = 0;
    } else
        snprintf (self->errmsg, sizeof self->errmsg, "unexpected answer to counts");
    freeReplyObject (reply);
    return rc;
}

json_t *
cm_jobs_info (cm_jobs_t *self, const char *id)
{
    assert (self && id);
    const char *argv[] = {self->prefix, id};
    redisReply *reply = s_eval (self, S_INFO, 2, argv);
    if (!reply)
        return NULL;
    json_t *info = NULL;
    if (reply->type == REDIS_REPLY_ARRAY && reply->elements % 2 == 1) {
        info = json_pack ("{s:s, s:s}", "id", id, "state", reply->element[0]->str);
        const char *numbers[] = {
            "attemptsMade", "maxAttempts", "timestamp", "processedOn",
            "finishedOn",   "delayUntil",  NULL};
        for (size_t i = 1; i + 1 < reply->elements; i += 2) {
            const char *name = reply->element[i]->str;
            const char *value = reply->element[i + 1]->str;
            if (!name || !value)
                continue;
            //  The last worker and keeper matter only while they hold it.
            if ((!strcmp (name, "worker") || !strcmp (name, "keeper")) &&
                strcmp (reply->element[0]->str, "active"))
                continue;
            bool number = false;
            for (size_t n = 0; numbers[n]; n++)
                number |= !strcmp (name, numbers[n]);
            const char *key = !strcmp (name, "attemptsMade") ? "attempts" : name;
            json_object_set_new (info, key,
                                 number ? json_integer (strtoll (value, NULL, 10))
                                        : json_string (value));
        }
    }
    freeReplyObject (reply);
    return info;
}

bool
cm_jobs_available (cm_jobs_t *self)
{
    assert (self);
    if (!self->redis && s_connect (self)) {
        if (cm_redis_ping (self->redis, self->errmsg, sizeof self->errmsg))
            s_failed (self, "%s", self->errmsg);
        else
            s_answered (self);
    }
    return self->available == 1;
}

const char *
cm_jobs_worker (cm_jobs_t *self)
{
    assert (self);
    return self->worker;
}

const char *
cm_jobs_errmsg (cm_jobs_t *self)
{
    assert (self);
    return self->errmsg;
}

void
cm_job_destroy (cm_job_t **job_p)
{
    assert (job_p);
    cm_job_t *job = *job_p;
    if (!job)
        return;
    free (job->id);
    free (job->data);
    free (job);
    *job_p = NULL;
}

//  --- private ---------------------------------------------------------------------

//  Connect and load the scripts, unless connected. False with errmsg set.
static bool
s_connect (cm_jobs_t *self)
{
    if (self->redis)
        return true;
    char err[256];
    self->redis =
        cm_redis_connect (self->url, (int) self->config.io_timeout_ms, err, sizeof err);
    if (!self->redis) {
        s_failed (self, "%s", err);
        return false;
    }
    for (int i = 0; i < S_SCRIPTS; i++) {
        redisReply *reply = redisCommand (self->redis, "SCRIPT LOAD %s", s_sources[i]);
        if (!reply || reply->type != REDIS_REPLY_STRING || reply->len != 40) {
            s_failed (self, "Redis did not load a script: %s",
                      !reply                             ? self->redis->errstr
                      : reply->type == REDIS_REPLY_ERROR ? reply->str
                                                         : "unexpected answer");
            if (reply)
                freeReplyObject (reply);
            if (self->redis) {
                redisFree (self->redis);
                self->redis = NULL;
            }
            return false;
        }
        memcpy (self->sha[i], reply->str, 41);
        freeReplyObject (reply);
    }
    return true;
}

//  Run a script whose answer is a number (the lease, state and lost-job
//  scripts answer 0, 1, 2): that number, or -1 on failure (errmsg set).
static long long
s_eval_integer (cm_jobs_t *self, s_script_t script, int argc, const char **argv)
{
    redisReply *reply = s_eval (self, script, argc, argv);
    if (!reply)
        return -1;
    long long answer = reply->integer;
    freeReplyObject (reply);
    return answer;
}

//  Run a script (EVALSHA, then EVAL when Redis lost it). Returns the
//  reply, never an error reply: NULL with errmsg set instead.
static redisReply *
s_eval (cm_jobs_t *self, s_script_t script, int argc, const char **argv)
{
    if (!s_connect (self))
        return NULL;
    const char *args[16];
    assert (argc + 3 <= 16);
    args[0] = "EVALSHA";
    args[1] = self->sha[script];
    args[2] = "0";
    for (int i = 0; i < argc; i++)
        args[3 + i] = argv[i];
    redisReply *reply = redisCommandArgv (self->redis, argc + 3, args, NULL);
    if (reply && reply->type == REDIS_REPLY_ERROR &&
        !strncmp (reply->str, "NOSCRIPT", 8)) {
        freeReplyObject (reply);
        args[0] = "EVAL";
        args[1] = s_sources[script];
        reply = redisCommandArgv (self->redis, argc + 3, args, NULL);
    }
    if (!reply) {
        s_failed (self, "Redis did not answer: %s", self->redis->errstr);
        return NULL;
    }
    if (reply->type == REDIS_REPLY_ERROR) {
        s_failed (self, "Redis answered with an error: %s", reply->str);
        freeReplyObject (reply);
        return NULL;
    }
    s_answered (self);
    return reply;
}

//  A call failed: keep the reason, drop a broken connection (hiredis
//  cannot use it again), log when Redis just became unavailable.
static void
s_failed (cm_jobs_t *self, const char *fmt, ...)
{
    va_list args;
    va_start (args, fmt);
    vsnprintf (self->errmsg, sizeof self->errmsg, fmt, args);
    va_end (args);
    bool broken = !self->redis || self->redis->err;
    if (self->redis && self->redis->err) {
        redisFree (self->redis);
        self->redis = NULL;
    }
    if (broken) {
        if (self->available != 0)
            cm_warn ("jobs %s (%s): Redis unavailable: %s", self->queue, self->worker,
                     self->errmsg);
        self->available = 0;
    }
}

//  Redis answered.
static void
s_answered (cm_jobs_t *self)
{
    if (self->available == 0)
        cm_info ("jobs %s (%s): Redis is back", self->queue, self->worker);
    self->available = 1;
    self->errmsg[0] = 0;
}

static cm_job_t *
s_job_from (const redisReply *reply)
{
    assert (reply->elements == 4);
    cm_job_t *job = cm_calloc (1, sizeof *job);
    job->id = cm_strndup (reply->element[0]->str, reply->element[0]->len);
    job->data = cm_strndup (reply->element[1]->str, reply->element[1]->len);
    job->attempt = (int) reply->element[2]->integer;
    job->max_attempts = (int) reply->element[3]->integer;
    return job;
}

static void
s_set_timeout (cm_jobs_t *self, int64_t ms)
{
    struct timeval timeout = {(time_t) (ms / 1000), (suseconds_t) ((ms % 1000) * 1000)};
    redisSetTimeout (self->redis, timeout);
}

static char *
s_printf (const char *fmt, ...)
{
    va_list args;
    va_start (args, fmt);
    int size = vsnprintf (NULL, 0, fmt, args);
    va_end (args);
    char *text = cm_malloc ((size_t) size + 1);
    va_start (args, fmt);
    vsnprintf (text, (size_t) size + 1, fmt, args);
    va_end (args);
    return text;
}
