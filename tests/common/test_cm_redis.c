/*  test_cm_redis.c: REDIS_URL, read by one parser in every program (the
    supervisor, the gateway, ingestd): what it takes, what it refuses, and
    the message that names the variable without quoting a password. No
    Redis server is needed. */
#include <criterion/criterion.h>
#include "cm_redis.h"

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
    static const char *good[] = {"redis://localhost",  "REDIS://h:1/",
                                 "redis://h/15",       "redis://user:secret@h:6379/0",
                                 "redis://[::1]:6390", "redis://h:6379?timeout=1"};
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
