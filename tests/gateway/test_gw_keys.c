/*  test_gw_keys.c: API keys: creating, listing and revoking them, and how
    long a gateway may go on trusting one. Time is passed in (now_ms), so
    the cache's expiry is shown to the millisecond without a sleep. */
#include <criterion/criterion.h>
#include <sodium.h>
#include "cm_log.h"
#include "cm_storage.h"
#include "gw_harness.h"
#include "gw_keys.h"
#include "test_dir.h"

#define S_ADMIN "test-admin-key-0123456789"
#define S_TTL   500

static char s_dir[64];

static void
s_setup (void)
{
    cm_log_init ("test_gw_keys");
    cm_log_set_level (CM_LOG_WARN);
    test_dir_make (s_dir, sizeof s_dir, "/tmp/llmrt-keys-XXXXXX");
}

static void
s_teardown (void)
{
    test_dir_remove (s_dir);
}

TestSuite (gw_keys, .init = s_setup, .fini = s_teardown);

//  Create a key through the admin call; returns its secret (caller frees)
//  and its id.
static char *
s_create (gw_keys_t *keys, const char *request_text, int64_t *id_p)
{
    json_t *request = json_loads (request_text, 0, NULL);
    cr_assert_not_null (request);
    json_t *reply = NULL;
    int status = gw_keys_create (keys, request, "admin", &reply);
    json_decref (request);
    cr_assert_eq (status, 200, "%s", json_dumps (reply, 0));
    json_t *key = json_object_get (reply, "apiKey");
    char *secret = strdup (json_string_value (json_object_get (key, "secret")));
    if (id_p)
        *id_p = json_integer_value (json_object_get (key, "id"));
    json_decref (reply);
    return secret;
}

static int
s_revoke (gw_keys_t *keys, int64_t id)
{
    char text[32];
    snprintf (text, sizeof text, "%lld", (long long) id);
    json_t *reply = NULL;
    int status = gw_keys_revoke (keys, text, &reply);
    json_decref (reply);
    return status;
}

Test (gw_keys, walkthrough)
{
    //  A key store on a database, with the bootstrap admin key.
    gw_keys_t *keys = gw_keys_new (s_dir, S_ADMIN, S_TTL);
    gw_key_t key;
    cr_assert_eq (gw_keys_authenticate (keys, S_ADMIN, 0, &key), GW_KEYS_VALID);
    cr_assert (key.admin);
    cr_assert_str_eq (key.identity, "admin");

    //  The admin creates a key for an application.
    json_t *request = json_pack ("{s:s}", "name", "billing app");
    json_t *reply = NULL;
    cr_assert_eq (gw_keys_create (keys, request, "admin", &reply), 200);
    json_decref (request);
    cr_assert (json_is_null (json_object_get (reply, "error")));
    json_t *created = json_object_get (reply, "apiKey");
    const char *secret = json_string_value (json_object_get (created, "secret"));
    cr_assert_eq (strlen (secret), strlen (GW_KEYS_PREFIX) + 43, "%s", secret);
    cr_assert_eq (strncmp (secret, GW_KEYS_PREFIX, strlen (GW_KEYS_PREFIX)), 0);
    cr_assert_str_eq (json_string_value (json_object_get (created, "name")),
                      "billing app");
    cr_assert_str_eq (json_string_value (json_object_get (created, "role")), "default");
    cr_assert_str_eq (json_string_value (json_object_get (created, "createdBy")),
                      "admin");
    cr_assert_eq (
        strncmp (json_string_value (json_object_get (created, "prefix")), secret, 10), 0);
    int64_t id = json_integer_value (json_object_get (created, "id"));
    cr_assert_gt (id, 0);

    //  The application uses it: a caller of its own, not an admin.
    cr_assert_eq (gw_keys_authenticate (keys, secret, 0, &key), GW_KEYS_VALID);
    cr_assert_eq (key.id, id);
    cr_assert_not (key.admin);
    char identity[32];
    snprintf (identity, sizeof identity, "key:%lld", (long long) id);
    cr_assert_str_eq (key.identity, identity);

    //  The list shows it, without its secret.
    json_t *list = NULL;
    cr_assert_eq (gw_keys_list (keys, &list), 200);
    json_t *listed = json_array_get (json_object_get (list, "apiKeys"), 0);
    cr_assert_eq (json_array_size (json_object_get (list, "apiKeys")), 1);
    cr_assert_eq (json_integer_value (json_object_get (listed, "id")), id);
    cr_assert_null (json_object_get (listed, "secret"));
    cr_assert_null (json_object_get (listed, "hash"));
    char *text = json_dumps (list, 0);
    cr_assert_null (strstr (text, secret + strlen (GW_KEYS_PREFIX) + 4),
                    "no part of the secret past its prefix is listed");
    free (text);
    json_decref (list);

    //  Revoked: refused at once by the store that revoked it.
    cr_assert_eq (s_revoke (keys, id), 200);
    cr_assert_eq (gw_keys_authenticate (keys, secret, 1, &key), GW_KEYS_INVALID);
    cr_assert_eq (gw_keys_list (keys, &list), 200);
    cr_assert_eq (json_array_size (json_object_get (list, "apiKeys")), 0);
    json_decref (list);
    json_decref (reply);
    gw_keys_destroy (&keys);
    cr_assert_null (keys);
}

Test (gw_keys, only_a_sha256_of_the_secret_is_stored)
{
    gw_keys_t *keys = gw_keys_new (s_dir, NULL, S_TTL);
    int64_t id;
    char *secret = s_create (keys, "{}", &id);
    unsigned char digest[crypto_hash_sha256_BYTES];
    crypto_hash_sha256 (digest, (const unsigned char *) secret, strlen (secret));
    char err[256];
    cm_storage_t *storage = cm_storage_new (s_dir, err, sizeof err);
    cr_assert_not_null (storage, "%s", err);
    int64_t found = 0;
    char role[16];
    cr_assert_eq (cm_storage_apikey_find (storage, digest, sizeof digest, &found, role,
                                          sizeof role),
                  CM_STORAGE_OK);
    cr_assert_eq (found, id);
    cr_assert_str_eq (role, "default");
    //  The secret itself is nowhere in the files (the database and its
    //  write-ahead log).
    cm_storage_destroy (&storage);
    const char *files[] = {"llmrt.db", "llmrt.db-wal"};
    size_t total = 0;
    bool hashed = false;
    for (size_t i = 0; i < 2; i++) {
        char path[128];
        snprintf (path, sizeof path, "%s/%s", s_dir, files[i]);
        FILE *file = fopen (path, "rb");
        if (!file)
            continue;
        static char data[4 << 20];
        size_t size = fread (data, 1, sizeof data, file);
        fclose (file);
        total += size;
        cr_assert_null (memmem (data, size, secret + 10, strlen (secret) - 10), "%s",
                        files[i]);
        hashed = hashed || memmem (data, size, digest, sizeof digest);
    }
    cr_assert_gt (total, 0);
    cr_assert (hashed, "its hash is");
    free (secret);
    gw_keys_destroy (&keys);
}

Test (gw_keys, a_revoked_key_is_refused_elsewhere_once_the_ttl_passes)
{
    //  Two gateways on one database: one revokes, the other trusted the key
    //  a moment ago.
    gw_keys_t *here = gw_keys_new (s_dir, S_ADMIN, S_TTL);
    gw_keys_t *there = gw_keys_new (s_dir, S_ADMIN, S_TTL);
    int64_t id;
    char *secret = s_create (here, "{\"name\":\"app\"}", &id);
    gw_key_t key;
    int64_t t0 = 1000000;
    cr_assert_eq (gw_keys_authenticate (there, secret, t0, &key), GW_KEYS_VALID);

    cr_assert_eq (s_revoke (here, id), 200);
    cr_assert_eq (gw_keys_authenticate (here, secret, t0 + 1, &key), GW_KEYS_INVALID);
    //  The other goes on trusting its cache until the TTL is up, and no
    //  longer: the bound on how late a revocation can be anywhere.
    cr_assert_eq (gw_keys_authenticate (there, secret, t0 + S_TTL - 1, &key),
                  GW_KEYS_VALID);
    cr_assert_eq (gw_keys_authenticate (there, secret, t0 + S_TTL, &key),
                  GW_KEYS_INVALID);
    cr_assert_eq (gw_keys_authenticate (there, secret, t0 + S_TTL + 1, &key),
                  GW_KEYS_INVALID, "and it stays refused");
    free (secret);
    gw_keys_destroy (&there);
    gw_keys_destroy (&here);
}

Test (gw_keys, a_cached_key_is_read_again_after_the_ttl)
{
    gw_keys_t *keys = gw_keys_new (s_dir, NULL, S_TTL);
    int64_t id;
    char *secret = s_create (keys, "{}", &id);
    gw_key_t key;
    cr_assert_eq (gw_keys_authenticate (keys, secret, 0, &key), GW_KEYS_VALID);
    //  Revoked behind its back (another gateway, or by hand).
    char err[256];
    cm_storage_t *storage = cm_storage_new (s_dir, err, sizeof err);
    cr_assert_eq (cm_storage_apikey_revoke (storage, id), CM_STORAGE_OK);
    cm_storage_destroy (&storage);
    //  Every request within the TTL is served from the cache, the refresh
    //  after it reads the database.
    for (int64_t t = 0; t < S_TTL; t += 50)
        cr_assert_eq (gw_keys_authenticate (keys, secret, t, &key), GW_KEYS_VALID);
    cr_assert_eq (gw_keys_authenticate (keys, secret, S_TTL, &key), GW_KEYS_INVALID);
    free (secret);
    gw_keys_destroy (&keys);
}

Test (gw_keys, ttl_zero_reads_the_database_every_time)
{
    gw_keys_t *here = gw_keys_new (s_dir, NULL, 0);
    gw_keys_t *there = gw_keys_new (s_dir, NULL, 0);
    int64_t id;
    char *secret = s_create (here, "{}", &id);
    gw_key_t key;
    cr_assert_eq (gw_keys_authenticate (there, secret, 0, &key), GW_KEYS_VALID);
    cr_assert_eq (s_revoke (here, id), 200);
    cr_assert_eq (gw_keys_authenticate (there, secret, 0, &key), GW_KEYS_INVALID);
    free (secret);
    gw_keys_destroy (&there);
    gw_keys_destroy (&here);
}

Test (gw_keys, admin_role_keys_are_admins)
{
    gw_keys_t *keys = gw_keys_new (s_dir, NULL, S_TTL);
    int64_t id;
    char *secret = s_create (keys, "{\"role\":\"admin\",\"name\":null}", &id);
    gw_key_t key;
    cr_assert_eq (gw_keys_authenticate (keys, secret, 0, &key), GW_KEYS_VALID);
    cr_assert (key.admin);
    //  Cached, it stays one.
    cr_assert_eq (gw_keys_authenticate (keys, secret, 1, &key), GW_KEYS_VALID);
    cr_assert (key.admin);
    free (secret);
    gw_keys_destroy (&keys);
}

Test (gw_keys, wrong_keys_are_invalid)
{
    gw_keys_t *keys = gw_keys_new (s_dir, S_ADMIN, S_TTL);
    char *secret = s_create (keys, "{}", NULL);
    gw_key_t key;
    char *altered = strdup (secret);
    altered[strlen (altered) - 1] = altered[strlen (altered) - 1] == 'A' ? 'B' : 'A';
    const char *wrong[] = {"",     "x", S_ADMIN "x", "test-admin-key", GW_KEYS_PREFIX,
                           altered};
    for (size_t i = 0; i < sizeof wrong / sizeof *wrong; i++) {
        cr_assert_eq (gw_keys_authenticate (keys, wrong[i], 0, &key), GW_KEYS_INVALID,
                      "'%s'", wrong[i]);
        cr_assert_str_eq (key.identity, "");
        cr_assert_not (key.admin);
    }
    free (altered);
    free (secret);
    gw_keys_destroy (&keys);
    //  Without ADMIN_API_KEY, nothing is the admin key (not even "").
    keys = gw_keys_new (s_dir, NULL, S_TTL);
    cr_assert_eq (gw_keys_authenticate (keys, "", 0, &key), GW_KEYS_INVALID);
    gw_keys_destroy (&keys);
}

Test (gw_keys, create_refuses_a_bad_role_or_name)
{
    gw_keys_t *keys = gw_keys_new (s_dir, NULL, S_TTL);
    const char *bad[] = {"{\"role\":\"root\"}", "{\"role\":1}", "{\"name\":12}",
                         "{\"role\":\"\"}"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        json_t *request = json_loads (bad[i], 0, NULL);
        json_t *reply = NULL;
        cr_assert_eq (gw_keys_create (keys, request, "admin", &reply), 400, "%s", bad[i]);
        cr_assert (json_is_null (json_object_get (reply, "apiKey")));
        cr_assert (json_is_string (json_object_get (reply, "error")));
        json_decref (reply);
        json_decref (request);
    }
    json_t *list = NULL;
    cr_assert_eq (gw_keys_list (keys, &list), 200);
    cr_assert_eq (json_array_size (json_object_get (list, "apiKeys")), 0);
    json_decref (list);
    gw_keys_destroy (&keys);
}

Test (gw_keys, revoking_what_is_not_there_is_404)
{
    gw_keys_t *keys = gw_keys_new (s_dir, NULL, S_TTL);
    int64_t id;
    char *secret = s_create (keys, "{}", &id);
    cr_assert_eq (s_revoke (keys, id), 200);
    cr_assert_eq (s_revoke (keys, id), 404, "twice");
    cr_assert_eq (s_revoke (keys, id + 1), 404);
    //  Out of range: named as sent, not as the number strtoll clamps it to.
    const char *ids[] = {"", "abc", "1x", "-1", "0", "9999999999999999999999"};
    for (size_t i = 0; i < sizeof ids / sizeof *ids; i++) {
        json_t *reply = NULL;
        cr_assert_eq (gw_keys_revoke (keys, ids[i], &reply), 404, "'%s'", ids[i]);
        cr_assert (json_is_false (json_object_get (reply, "success")));
        cr_assert (strstr (json_string_value (json_object_get (reply, "error")), ids[i]),
                   "'%s': %s", ids[i],
                   json_string_value (json_object_get (reply, "error")));
        json_decref (reply);
    }
    //  Not UTF-8, or a character cut by the message's 40 bytes: still a
    //  reply (a NULL one crashed the gateway).
    const char *odd[] = {"\xff", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\xc3\xa9"};
    for (size_t i = 0; i < sizeof odd / sizeof *odd; i++) {
        json_t *reply = NULL;
        cr_assert_eq (gw_keys_revoke (keys, odd[i], &reply), 404);
        const char *error = json_string_value (json_object_get (reply, "error"));
        cr_assert (error && strstr (error, "does not exist"), "case %zu", i);
        json_decref (reply);
    }
    free (secret);
    gw_keys_destroy (&keys);
}

Test (gw_keys, an_unreadable_database_is_unavailable_not_a_pass)
{
    //  The "directory" is a file: the database cannot be opened.
    char path[128];
    snprintf (path, sizeof path, "%s/not-a-dir", s_dir);
    FILE *file = fopen (path, "w");
    cr_assert_not_null (file);
    fclose (file);
    gw_keys_t *keys = gw_keys_new (path, S_ADMIN, S_TTL);
    gw_key_t key;
    const char *secret = GW_KEYS_PREFIX "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    cr_assert_eq (gw_keys_authenticate (keys, secret, 0, &key), GW_KEYS_UNAVAILABLE);
    cr_assert_eq (gw_keys_authenticate (keys, secret, 5000, &key), GW_KEYS_UNAVAILABLE);
    //  The bootstrap key still works, and so does refusing a wrong one.
    cr_assert_eq (gw_keys_authenticate (keys, S_ADMIN, 0, &key), GW_KEYS_VALID);
    cr_assert_eq (gw_keys_authenticate (keys, "nope", 0, &key), GW_KEYS_INVALID);
    json_t *reply = NULL;
    cr_assert_eq (gw_keys_list (keys, &reply), 503);
    json_decref (reply);
    json_t *request = json_object ();
    cr_assert_eq (gw_keys_create (keys, request, "admin", &reply), 503);
    json_decref (reply);
    json_decref (request);
    gw_keys_destroy (&keys);
}
