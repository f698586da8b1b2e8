/*  gw_keys.h: API keys, as the gateway checks and manages them.

    Two kinds of bearer key are valid. ADMIN_API_KEY, from the environment,
    bootstraps everything (identity "admin"). Keys created through the admin
    routes live in the database (cm_storage, table api_keys); each has an id,
    a role ("admin": every route; "default": every /api/v1 route but the
    admin ones) and the identity "key:<id>", which daemons see as the caller
    and the per-key rate limit counts by.

    A key's secret is "llmrt_" and 43 characters of base64url: 32 random
    bytes (256 bits). Only its SHA-256 is stored. A fast hash is enough for
    a secret this random: nobody can search 2^256 preimages, so the slow,
    salted password hashes (Argon2, crypt_pwhash) that protect guessable
    human passwords would buy nothing and cost tens of milliseconds per
    cache miss; a server-side pepper would add a second secret to share
    between every gateway for no gain either. SHA-256 is also what an
    operator (sha256sum) or another database (pgcrypto's digest) can compute.
    The stored hash is compared in constant time (sodium_memcmp).

    Revocation reaches every gateway within the cache's time to live: a
    key found in the database is remembered for ttl_ms (API_KEY_CACHE_TTL_MS,
    500 by default), after which the next request reads the database again.
    The gateway that revokes a key forgets it at once. Unknown keys are not
    cached (a key created a moment ago works at once). When the database
    cannot be read, a key not in the cache gets GW_KEYS_UNAVAILABLE (the
    gateway answers 503), never a silent pass.

    Threading: every call may come from any thread (the HTTP threads); the
    cache is locked, and database connections come from a cm_storage_pool. */
#ifndef GW_KEYS_H_INCLUDED
#define GW_KEYS_H_INCLUDED

#include "cm_common.h"
#include <jansson.h>

typedef struct gw_keys_s gw_keys_t;

//  How an authentication ended.
typedef enum {
    GW_KEYS_VALID = 0,        //  *key is filled
    GW_KEYS_INVALID = 1,      //  no such key, or revoked, or malformed
    GW_KEYS_UNAVAILABLE = -1, //  the database could not be read (logged)
} gw_keys_result_t;

//  An authenticated caller.
typedef struct {
    int64_t id;        //  the key's id; 0 for ADMIN_API_KEY
    bool admin;        //  may use the admin routes
    char identity[32]; //  "admin" or "key:<id>"
} gw_key_t;

//  Prefix of every secret gw_keys creates (secret scanners can find them).
#define GW_KEYS_PREFIX "llmrt_"

//  A key store on the database in storage_dir (opened now, or on first use
//  when it cannot be yet). admin_key: ADMIN_API_KEY (copied; NULL or "":
//  none). ttl_ms: how long a key read from the database is trusted (0:
//  always read it).
gw_keys_t *gw_keys_new (const char *storage_dir, const char *admin_key, int64_t ttl_ms);
//  Free. NULL-safe; nulls the pointer.
void gw_keys_destroy (gw_keys_t **self_p);

//  Check a bearer key (the text after "Bearer "), now_ms on a monotonic
//  clock.
gw_keys_result_t gw_keys_authenticate (gw_keys_t *self, const char *secret,
                                       int64_t now_ms, gw_key_t *key);

//  The admin routes. Each returns the HTTP status and sets *reply_p (caller
//  owns it) to the body.
//  POST /api/v1/admin/api-keys/new, request {name?, role?="default"}: 200
//  {apiKey:{id, name, role, prefix, createdBy, createdAt, lastUpdatedAt,
//  secret}, error:null}: the secret is in this reply only. 400 {apiKey:null,
//  error} for a bad name or role.
int gw_keys_create (gw_keys_t *self, const json_t *request, const char *created_by,
                    json_t **reply_p);
//  GET /api/v1/admin/api-keys: 200 {apiKeys:[...], error:null}, without
//  secrets or hashes.
int gw_keys_list (gw_keys_t *self, json_t **reply_p);
//  DELETE /api/v1/admin/api-keys/{id}: 200 {success:true, error:null}; 404
//  {success:false, error} when there is no such key (or it was revoked).
//  This gateway forgets the key at once.
int gw_keys_revoke (gw_keys_t *self, const char *id, json_t **reply_p);
//  The database failed in any of them: 503 {error} (the caller adds
//  Retry-After).

#endif
