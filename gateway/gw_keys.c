/*  gw_keys.c: see gw_keys.h. */
#include "gw_keys.h"
#include "cm_utf8.h"
#include <errno.h>
#include "cm_log.h"
#include "cm_storage.h"
#include <czmq.h>
#include <pthread.h>
#include <sodium.h>

//  Random bytes of a secret; its text is GW_KEYS_PREFIX + base64url.
#define S_SECRET_BYTES 32
//  Characters of the secret kept as its public prefix (GW_KEYS_PREFIX and
//  4 characters: 24 of its 256 bits).
#define S_PREFIX_CHARS (sizeof GW_KEYS_PREFIX - 1 + 4)
//  Longest name a key may have.
#define S_NAME_MAX 200
//  After the database failed to open, wait this long before trying again.
#define S_REOPEN_MS 1000

//  A key the database confirmed, trusted until expires_ms.
typedef struct {
    int64_t id;         //  the key's id
    bool admin;         //  its role is admin
    int64_t expires_ms; //  mono ms after which the database is read again
} s_entry_t;

struct gw_keys_s {
    char *storage_dir;                                  //  where llmrt.db is
    int64_t ttl_ms;                                     //  cache time to live
    bool have_admin;                                    //  ADMIN_API_KEY is set
    unsigned char admin_hash[crypto_generichash_BYTES]; //  its hash
    pthread_mutex_t lock;                               //  guards what follows
    zhashx_t *cache;         //  hex SHA-256 of a secret -> s_entry_t
    size_t sweep_at;         //  cache size at which expired entries are dropped
    cm_storage_pool_t *pool; //  database connections (NULL: not open yet)
    int64_t pool_retry_ms;   //  mono ms before which no new open is tried
};

static cm_storage_t *s_acquire (gw_keys_t *self, int64_t now_ms);
static void s_release (gw_keys_t *self, cm_storage_t **storage_p);
static void s_hex_digest (const char *secret, unsigned char digest[32], char hex[65]);
static void s_sweep (gw_keys_t *self, int64_t now_ms);
static void s_entry_free (void **item_p);

gw_keys_t *
gw_keys_new (const char *storage_dir, const char *admin_key, int64_t ttl_ms)
{
    assert (storage_dir);
    if (sodium_init () < 0)
        abort ();
    gw_keys_t *self = cm_calloc (1, sizeof *self);
    self->storage_dir = cm_strdup (storage_dir);
    self->ttl_ms = ttl_ms > 0 ? ttl_ms : 0;
    if (admin_key && *admin_key) {
        self->have_admin = true;
        crypto_generichash (self->admin_hash, sizeof self->admin_hash,
                            (const unsigned char *) admin_key, strlen (admin_key), NULL,
                            0);
    }
    pthread_mutex_init (&self->lock, NULL);
    self->cache = zhashx_new ();
    zhashx_set_destructor (self->cache, s_entry_free);
    self->sweep_at = 1024;
    //  Open now, so the first request does not pay for it; when the
    //  database is not there yet, the first use tries again.
    cm_storage_t *storage = s_acquire (self, cm_clock_mono_ms ());
    s_release (self, &storage);
    return self;
}

void
gw_keys_destroy (gw_keys_t **self_p)
{
    assert (self_p);
    gw_keys_t *self = *self_p;
    if (!self)
        return;
    zhashx_destroy (&self->cache);
    cm_storage_pool_destroy (&self->pool);
    pthread_mutex_destroy (&self->lock);
    free (self->storage_dir);
    free (self);
    *self_p = NULL;
}

gw_keys_result_t
gw_keys_authenticate (gw_keys_t *self, const char *secret, int64_t now_ms, gw_key_t *key)
{
    assert (self && secret && key);
    memset (key, 0, sizeof *key);
    if (self->have_admin) {
        //  Hash both and compare the hashes: no length leaks.
        unsigned char hash[crypto_generichash_BYTES];
        crypto_generichash (hash, sizeof hash, (const unsigned char *) secret,
                            strlen (secret), NULL, 0);
        if (sodium_memcmp (hash, self->admin_hash, sizeof hash) == 0) {
            key->admin = true;
            snprintf (key->identity, sizeof key->identity, "admin");
            return GW_KEYS_VALID;
        }
    }
    //  Only our own format can be in the database: spare it the rest.
    if (strncmp (secret, GW_KEYS_PREFIX, sizeof GW_KEYS_PREFIX - 1))
        return GW_KEYS_INVALID;

    unsigned char digest[crypto_hash_sha256_BYTES];
    char hex[65];
    s_hex_digest (secret, digest, hex);
    pthread_mutex_lock (&self->lock);
    s_entry_t *entry = zhashx_lookup (self->cache, hex);
    if (entry && now_ms < entry->expires_ms) {
        key->id = entry->id;
        key->admin = entry->admin;
        pthread_mutex_unlock (&self->lock);
        snprintf (key->identity, sizeof key->identity, "key:%lld", (long long) key->id);
        return GW_KEYS_VALID;
    }
    pthread_mutex_unlock (&self->lock);

    //  Not cached, or trusted for long enough: ask the database (outside the
    //  lock: other keys go on meanwhile).
    cm_storage_t *storage = s_acquire (self, now_ms);
    if (!storage)
        return GW_KEYS_UNAVAILABLE;
    char role[16];
    int64_t id = 0;
    cm_storage_status_t status =
        cm_storage_apikey_find (storage, digest, sizeof digest, &id, role, sizeof role);
    s_release (self, &storage);
    if (status == CM_STORAGE_ERROR)
        return GW_KEYS_UNAVAILABLE;

    pthread_mutex_lock (&self->lock);
    if (status == CM_STORAGE_OK) {
        if (self->ttl_ms > 0) {
            s_entry_t *fresh = cm_calloc (1, sizeof *fresh);
            fresh->id = id;
            fresh->admin = !strcmp (role, "admin");
            fresh->expires_ms = now_ms + self->ttl_ms;
            zhashx_update (self->cache, hex, fresh);
            if (zhashx_size (self->cache) >= self->sweep_at)
                s_sweep (self, now_ms);
        }
    } else
        zhashx_delete (self->cache, hex);
    pthread_mutex_unlock (&self->lock);
    if (status != CM_STORAGE_OK)
        return GW_KEYS_INVALID;
    key->id = id;
    key->admin = !strcmp (role, "admin");
    snprintf (key->identity, sizeof key->identity, "key:%lld", (long long) id);
    return GW_KEYS_VALID;
}

static int
s_unavailable (json_t **reply_p)
{
    *reply_p = json_pack ("{s:s}", "error",
                          "The key store is unavailable: the database failed.");
    return 503;
}

int
gw_keys_create (gw_keys_t *self, const json_t *request, const char *created_by,
                json_t **reply_p)
{
    assert (self && reply_p);
    json_t *name_value = json_object_get (request, "name");
    json_t *role_value = json_object_get (request, "role");
    const char *error = NULL;
    if (name_value && !json_is_null (name_value) &&
        (!json_is_string (name_value) || json_string_length (name_value) > S_NAME_MAX))
        error = "name must be a string of at most 200 bytes";
    else if (role_value && !json_is_null (role_value) && !json_is_string (role_value))
        error = "role must be \"admin\" or \"default\"";
    const char *role = json_string_value (role_value);
    if (!role)
        role = "default";
    else if (!error && strcmp (role, "admin") && strcmp (role, "default"))
        error = "role must be \"admin\" or \"default\"";
    if (error) {
        *reply_p = json_pack ("{s:n, s:s}", "apiKey", "error", error);
        return 400;
    }

    //  The secret: 32 random bytes in base64url, after our prefix.
    unsigned char random[S_SECRET_BYTES];
    randombytes_buf (random, sizeof random);
    char secret[sizeof GW_KEYS_PREFIX +
                sodium_base64_ENCODED_LEN (S_SECRET_BYTES,
                                           sodium_base64_VARIANT_URLSAFE_NO_PADDING)];
    memcpy (secret, GW_KEYS_PREFIX, sizeof GW_KEYS_PREFIX - 1);
    sodium_bin2base64 (secret + sizeof GW_KEYS_PREFIX - 1,
                       sizeof secret - (sizeof GW_KEYS_PREFIX - 1), random, sizeof random,
                       sodium_base64_VARIANT_URLSAFE_NO_PADDING);
    sodium_memzero (random, sizeof random);
    char prefix[S_PREFIX_CHARS + 1];
    memcpy (prefix, secret, S_PREFIX_CHARS);
    prefix[S_PREFIX_CHARS] = 0;
    unsigned char digest[crypto_hash_sha256_BYTES];
    char hex[65];
    s_hex_digest (secret, digest, hex);

    cm_storage_t *storage = s_acquire (self, cm_clock_mono_ms ());
    if (!storage)
        return s_unavailable (reply_p);
    json_t *row = NULL;
    cm_storage_status_t status =
        cm_storage_apikey_create (storage, json_string_value (name_value), role, digest,
                                  sizeof digest, prefix, created_by, &row);
    s_release (self, &storage);
    int code = 200;
    if (status == CM_STORAGE_OK) {
        json_object_set_new (row, "secret", json_string (secret));
        *reply_p = json_pack ("{s:o, s:n}", "apiKey", row, "error");
        cm_info ("API key %lld (%s) created by %s",
                 (long long) json_integer_value (json_object_get (row, "id")), role,
                 created_by ? created_by : "?");
    } else
        code = s_unavailable (reply_p);
    sodium_memzero (secret, sizeof secret);
    return code;
}

int
gw_keys_list (gw_keys_t *self, json_t **reply_p)
{
    assert (self && reply_p);
    cm_storage_t *storage = s_acquire (self, cm_clock_mono_ms ());
    if (!storage)
        return s_unavailable (reply_p);
    json_t *keys = NULL;
    cm_storage_status_t status = cm_storage_apikey_list (storage, &keys);
    s_release (self, &storage);
    if (status != CM_STORAGE_OK)
        return s_unavailable (reply_p);
    *reply_p = json_pack ("{s:o, s:n}", "apiKeys", keys, "error");
    return 200;
}

int
gw_keys_revoke (gw_keys_t *self, const char *id_text, json_t **reply_p)
{
    assert (self && reply_p);
    char *end = NULL;
    errno = 0;
    long long id = id_text && *id_text ? strtoll (id_text, &end, 10) : 0;
    char error[128];
    //  Out of range is no id either (strtoll would clamp it to another).
    if (!end || *end || id <= 0 || errno == ERANGE) {
        snprintf (error, sizeof error, "API key %.40s does not exist.",
                  id_text ? id_text : "");
        cm_utf8_fix (error);
        *reply_p = json_pack ("{s:b, s:s}", "success", 0, "error", error);
        return 404;
    }
    cm_storage_t *storage = s_acquire (self, cm_clock_mono_ms ());
    if (!storage)
        return s_unavailable (reply_p);
    cm_storage_status_t status = cm_storage_apikey_revoke (storage, id);
    s_release (self, &storage);
    if (status == CM_STORAGE_ERROR)
        return s_unavailable (reply_p);

    //  Forget it here at once; other gateways within their TTL.
    pthread_mutex_lock (&self->lock);
    zlistx_t *hashes = zhashx_keys (self->cache);
    for (const char *hex = zlistx_first (hashes); hex; hex = zlistx_next (hashes)) {
        s_entry_t *entry = zhashx_lookup (self->cache, hex);
        if (entry && entry->id == id)
            zhashx_delete (self->cache, hex);
    }
    zlistx_destroy (&hashes);
    pthread_mutex_unlock (&self->lock);

    if (status == CM_STORAGE_NOT_FOUND) {
        snprintf (error, sizeof error, "API key %lld does not exist.", id);
        *reply_p = json_pack ("{s:b, s:s}", "success", 0, "error", error);
        return 404;
    }
    cm_info ("API key %lld revoked", id);
    *reply_p = json_pack ("{s:b, s:n}", "success", 1, "error");
    return 200;
}

//  --- private ----------------------------------------------------------------

//  A database connection, opening the pool first if need be (at most once
//  per S_REOPEN_MS after a failure, so a missing database is not retried on
//  every request). NULL when it cannot be had.
static cm_storage_t *
s_acquire (gw_keys_t *self, int64_t now_ms)
{
    pthread_mutex_lock (&self->lock);
    if (!self->pool && now_ms >= self->pool_retry_ms) {
        char err[512];
        self->pool = cm_storage_pool_new (self->storage_dir, err, sizeof err);
        if (!self->pool) {
            cm_error ("API keys cannot be checked: %s", err);
            self->pool_retry_ms = now_ms + S_REOPEN_MS;
        }
    }
    cm_storage_pool_t *pool = self->pool;
    pthread_mutex_unlock (&self->lock);
    return pool ? cm_storage_pool_acquire (pool) : NULL;
}

static void
s_release (gw_keys_t *self, cm_storage_t **storage_p)
{
    if (*storage_p)
        cm_storage_pool_release (self->pool, storage_p);
}

static void
s_hex_digest (const char *secret, unsigned char digest[32], char hex[65])
{
    crypto_hash_sha256 (digest, (const unsigned char *) secret, strlen (secret));
    sodium_bin2hex (hex, 65, digest, crypto_hash_sha256_BYTES);
}

//  Drop expired entries (keys no longer used, or revoked elsewhere), so the
//  cache holds about the keys in use. Called with the lock held.
static void
s_sweep (gw_keys_t *self, int64_t now_ms)
{
    zlistx_t *hashes = zhashx_keys (self->cache);
    for (const char *hex = zlistx_first (hashes); hex; hex = zlistx_next (hashes)) {
        s_entry_t *entry = zhashx_lookup (self->cache, hex);
        if (entry && entry->expires_ms <= now_ms)
            zhashx_delete (self->cache, hex);
    }
    zlistx_destroy (&hashes);
    size_t size = zhashx_size (self->cache);
    self->sweep_at = size * 2 > 1024 ? size * 2 : 1024;
}

static void
s_entry_free (void **item_p)
{
    free (*item_p);
    *item_p = NULL;
}
