/*  cm_redis.c: see cm_redis.h. */
#include "cm_redis.h"
#include "cm_config.h"
#include <ctype.h>
#include <strings.h>

//  Longest user name and password (each with its NUL) a URL may carry.
#define S_PASSWORD_MAX 256

static bool s_url_credentials (const char *url, char *user, char *password, size_t size,
                               int64_t *db);

int
cm_redis_parse_url (const char *url, char *host, size_t hostlen, int64_t *port)
{
    assert (url && host && port);
    if (strncasecmp (url, "redis://", 8))
        return -1;
    const char *p = url + 8;
    const char *end = p + strcspn (p, "/?#");
    const char *at = memrchr (p, '@', (size_t) (end - p));
    if (at)
        p = at + 1;
    const char *host_start = p, *host_end, *port_text = NULL;
    if (*p == '[') {
        host_start = p + 1;
        host_end = memchr (p, ']', (size_t) (end - p));
        if (!host_end)
            return -1;
        if (host_end + 1 < end) {
            if (host_end[1] != ':')
                return -1;
            port_text = host_end + 2;
        }
    } else {
        host_end = memchr (p, ':', (size_t) (end - p));
        if (host_end)
            port_text = host_end + 1;
        else
            host_end = end;
    }
    size_t len = (size_t) (host_end - host_start);
    if (len == 0 || len >= hostlen)
        return -1;
    for (const char *c = host_start; c < host_end; c++)
        if (!isalnum ((unsigned char) *c) && !strchr (".-_:%", *c))
            return -1;
    *port = CM_REDIS_DEFAULT_PORT;
    if (port_text) {
        //  Digits only: no sign, no space.
        size_t digits = (size_t) (end - port_text);
        if (digits == 0 || digits > 5 || strspn (port_text, "0123456789") < digits)
            return -1;
        char text[6];
        memcpy (text, port_text, digits);
        text[digits] = 0;
        if (cm_config_parse_int (text, 1, 65535, port))
            return -1;
    }
    //  An optional database number (what SELECT takes), then nothing but a
    //  query string.
    if (*end == '/') {
        const char *db = ++end;
        while (isdigit ((unsigned char) *end))
            end++;
        if (end - db > 9)
            return -1;
    }
    if (*end && *end != '?')
        return -1;
    //  The user and password must decode and fit what cm_redis_connect
    //  sends with AUTH.
    char user[S_PASSWORD_MAX], password[S_PASSWORD_MAX];
    int64_t db;
    if (!s_url_credentials (url, user, password, sizeof password, &db))
        return -1;
    memcpy (host, host_start, len);
    host[len] = 0;
    return 0;
}

//  Copy text[0..len) to out, decoding %XX escapes (RFC 3986: how a URL
//  carries '@', ':', '/' or '#' in a user name or password). False when an
//  escape is malformed, decodes to NUL, or the result does not fit.
static bool
s_percent_decode (const char *text, size_t len, char *out, size_t size)
{
    size_t n = 0;
    for (size_t i = 0; i < len; i++) {
        int c = (unsigned char) text[i];
        if (c == '%') {
            if (i + 2 >= len)
                return false;
            if (!isxdigit ((unsigned char) text[i + 1]) ||
                !isxdigit ((unsigned char) text[i + 2]))
                return false;
            char hex[3] = {text[i + 1], text[i + 2], 0};
            c = (int) strtol (hex, NULL, 16);
            if (c == 0)
                return false;
            i += 2;
        }
        if (n + 1 >= size)
            return false;
        out[n++] = (char) c;
    }
    out[n] = 0;
    return true;
}

static bool
s_url_credentials (const char *url, char *user, char *password, size_t size, int64_t *db)
{
    //  redis://[[user]:password@]host:port/db; a bare "secret@" is a
    //  password, as redis-cli and the Node clients take it.
    const char *p = url + 8;
    const char *end = p + strcspn (p, "/?#");
    const char *at = memrchr (p, '@', (size_t) (end - p));
    user[0] = password[0] = 0;
    if (at) {
        const char *colon = memchr (p, ':', (size_t) (at - p));
        const char *start = colon ? colon + 1 : p;
        if (colon && !s_percent_decode (p, (size_t) (colon - p), user, size))
            return false;
        if (!s_percent_decode (start, (size_t) (at - start), password, size))
            return false;
    }
    *db = 0;
    if (*end == '/' && isdigit ((unsigned char) end[1]))
        *db = strtoll (end + 1, NULL, 10);
    return true;
}

int
cm_redis_url_check (const char *name, const char *url, char *err, size_t errlen)
{
    assert (name && url);
    char host[256];
    int64_t port;
    if (cm_redis_parse_url (url, host, sizeof host, &port) == 0)
        return 0;
    //  Quote the URL without its password (the part before '@').
    const char *scheme_end = strstr (url, "://");
    const char *shown = scheme_end ? scheme_end + 3 : url;
    const char *end = shown + strcspn (shown, "/?#");
    const char *at = memrchr (shown, '@', (size_t) (end - shown));
    snprintf (err, errlen,
              "%s: '%.*s%s%s' is not redis://[user:password@]host[:port][/db] (port 1 "
              "to 65535, db a number)",
              name, (int) (shown - url), url, at ? "***@" : "", at ? at + 1 : shown);
    return -1;
}

redisContext *
cm_redis_connect (const char *url, int timeout_ms, char *err, size_t errlen)
{
    assert (url && err);
    char host[256], user[S_PASSWORD_MAX], password[S_PASSWORD_MAX];
    int64_t port, db;
    if (cm_redis_parse_url (url, host, sizeof host, &port) ||
        !s_url_credentials (url, user, password, sizeof password, &db)) {
        snprintf (err, errlen, "'%s' is not a redis:// URL", url);
        return NULL;
    }
    struct timeval timeout = {timeout_ms / 1000, (timeout_ms % 1000) * 1000};
    redisContext *redis = redisConnectWithTimeout (host, (int) port, timeout);
    if (!redis || redis->err) {
        snprintf (err, errlen, "cannot connect to Redis at %s:%lld: %s", host,
                  (long long) port, redis ? redis->errstr : "out of memory");
        if (redis)
            redisFree (redis);
        return NULL;
    }
    redisSetTimeout (redis, timeout);
    redisReply *reply = NULL;
    //  With a user name, AUTH as that ACL user (Redis 6 and later);
    //  without one, as the default user (requirepass).
    if (*password) {
        if (*user)
            reply = redisCommand (redis, "AUTH %s %s", user, password);
        else
            reply = redisCommand (redis, "AUTH %s", password);
        if (!reply || reply->type == REDIS_REPLY_ERROR) {
            snprintf (err, errlen, "Redis at %s:%lld refused %s%s%s: %s", host,
                      (long long) port, *user ? "user '" : "the password",
                      *user ? user : "", *user ? "' and its password" : "",
                      reply ? reply->str : redis->errstr);
            goto fail;
        }
        freeReplyObject (reply);
    }
    if (db) {
        reply = redisCommand (redis, "SELECT %lld", (long long) db);
        if (!reply || reply->type == REDIS_REPLY_ERROR) {
            snprintf (err, errlen, "Redis at %s:%lld has no database %lld", host,
                      (long long) port, (long long) db);
            goto fail;
        }
        freeReplyObject (reply);
    }
    return redis;
fail:
    if (reply)
        freeReplyObject (reply);
    redisFree (redis);
    return NULL;
}

int
cm_redis_ping (redisContext *redis, char *err, size_t errlen)
{
    assert (redis && err);
    redisReply *reply = redisCommand (redis, "PING");
    int rc = -1;
    if (!reply)
        snprintf (err, errlen, "Redis did not answer PING: %s", redis->errstr);
    else if (reply->type == REDIS_REPLY_STATUS && !strcmp (reply->str, "PONG"))
        rc = 0;
    else
        snprintf (err, errlen, "Redis answered PING with %s",
                  reply->type == REDIS_REPLY_ERROR ? reply->str : "something else");
    if (reply)
        freeReplyObject (reply);
    return rc;
}
