/*  test_cm_redis.c: REDIS_URL, read by one parser in every program (the
    supervisor, the gateway, ingestd): what it takes, what it refuses, and
    the message that names the variable without quoting a password; then
    connections with a password, an ACL user and percent-escapes against a
    real redis-server. */
#include <criterion/criterion.h>
#include "cm_redis.h"
#include "test_redis.h"

Test (cm_redis, walkthrough_parse_and_check)
{
    char host[256];
    int64_t port;
    cr_assert_eq (
        cm_redis_parse_url ("redis://127.0.0.1:6390/2", host, sizeof host, &port), 0);
    cr_assert_str_eq (host, "127.0.0.1");
    cr_assert_eq (port, 6390);
    char err[512] = "";
    cr_assert_eq (cm_redis_url_check ("REDIS_URL", "redis://cache:7000", err, sizeof err),
                  0, "%s", err);
}

Test (cm_redis, urls_that_can_never_connect_are_refused)
{
    char long_password[300] = "redis://:";
    memset (long_password + 9, 'p', 256);
    strcat (long_password, "@h");
    static const char *bad[] = {
        "redis://127.0.0.1:notaport",
        "http://127.0.0.1:6379",
        "redis://:6990",
        "redis://h:99999",
        "redis://h:0",
        "redis://h:6990/abc",
        "redis://h:+6990",
        "redis://h: 6990",
        "redis://h:6990 ",
        "redis://h:6990/1234567890",
        "redis://h#x",
        "redis://",
        "rediss://h:6990",
        "redis://:pa%zzss@h",
        "redis://:pa%4@h",
        "redis://:pass%@h",
        "redis://:nul%00@h",
        "redis://us%2@h",
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        char host[256];
        int64_t port;
        cr_assert_eq (cm_redis_parse_url (bad[i], host, sizeof host, &port), -1, "%s",
                      bad[i]);
        char err[512] = "";
        cr_assert_eq (cm_redis_url_check ("REDIS_URL", bad[i], err, sizeof err), -1);
        cr_assert (strstr (err, "REDIS_URL: '"), "%s", err);
    }
    char err[512] = "";
    cr_assert_eq (cm_redis_url_check ("REDIS_URL", long_password, err, sizeof err), -1,
                  "a password longer than AUTH is sent with");
    static const char *good[] = {"redis://localhost",
                                 "REDIS://h:1/",
                                 "redis://h/15",
                                 "redis://user:secret@h:6379/0",
                                 "redis://[::1]:6390",
                                 "redis://h:6379?timeout=1",
                                 "redis://:p%40ss%2F%3A%23@h"};
    for (size_t i = 0; i < sizeof good / sizeof *good; i++)
        cr_assert_eq (cm_redis_url_check ("REDIS_URL", good[i], err, sizeof err), 0,
                      "%s: %s", good[i], err);
}

Test (cm_redis, the_message_does_not_quote_the_password)
{
    char err[512] = "";
    cr_assert_eq (
        cm_redis_url_check ("REDIS_URL", "redis://me:s3cret@h:99999/0", err, sizeof err),
        -1);
    cr_assert (strstr (err, "REDIS_URL: 'redis://***@h:99999/0'"), "%s", err);
    cr_assert_null (strstr (err, "s3cret"), "%s", err);
}

//  Run one command on a fresh connection as `url` says; the reply's string
//  (status, error or bulk) into out.
static void
s_command (const char *url, const char *command, char *out, size_t size)
{
    char err[256] = "";
    redisContext *redis = cm_redis_connect (url, 2000, err, sizeof err);
    cr_assert_not_null (redis, "%s: %s", url, err);
    redisReply *reply = redisCommand (redis, command);
    cr_assert_not_null (reply, "%s", command);
    snprintf (out, size, "%s", reply->str ? reply->str : "");
    freeReplyObject (reply);
    redisFree (redis);
}

Test (cm_redis, acl_users_passwords_and_escapes_reach_redis)
{
    test_redis_t redis = {0};
    test_redis_start (&redis, 0);
    char out[256], url[256], err[512];
    //  An ACL user whose password holds every character a URL must escape,
    //  and a default user with a password (requirepass).
    s_command (redis.url, "ACL SETUSER app on >p@ss/w:rd#1 ~* &* +@all", out, sizeof out);
    cr_assert_str_eq (out, "OK");
    s_command (redis.url, "CONFIG SET requirepass s3cret", out, sizeof out);

    snprintf (url, sizeof url, "redis://app:p%%40ss%%2Fw%%3Ard%%231@127.0.0.1:%d/3",
              redis.port);
    cr_assert_eq (cm_redis_url_check ("REDIS_URL", url, err, sizeof err), 0, "%s", err);
    s_command (url, "ACL WHOAMI", out, sizeof out);
    cr_assert_str_eq (out, "app", "the URL's user is the one authenticated");
    s_command (url, "CLIENT INFO", out, sizeof out);
    cr_assert (strstr (out, " db=3 "), "and the URL's database selected: %s", out);

    snprintf (url, sizeof url, "redis://:s3cret@127.0.0.1:%d", redis.port);
    s_command (url, "ACL WHOAMI", out, sizeof out);
    cr_assert_str_eq (out, "default", "no user: the password is the default user's");

    //  A wrong password is refused with Redis's reason, the user named, the
    //  password not quoted.
    snprintf (url, sizeof url, "redis://app:wrong%%21@127.0.0.1:%d", redis.port);
    cr_assert_null (cm_redis_connect (url, 2000, err, sizeof err));
    cr_assert (strstr (err, "refused user 'app'"), "%s", err);
    cr_assert (strstr (err, "WRONGPASS"), "%s", err);
    cr_assert_null (strstr (err, "wrong"), "%s", err);
    test_redis_remove (&redis);
}
