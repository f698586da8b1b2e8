/*  cm_redis.h: Redis helpers every daemon shares: the REDIS_URL format and
    a connection (hiredis) with timeouts, password and database applied. */
#ifndef CM_REDIS_H_INCLUDED
#define CM_REDIS_H_INCLUDED

#include "cm_common.h"
#include <hiredis.h>

#define CM_REDIS_DEFAULT_PORT 6379

//  Parse redis://[[user]:password@]host[:port][/db] (IPv6 hosts in []; the
//  port digits only, 1..65535; the db up to 9 digits; user and password
//  percent-escaped where they must be, each under 256 bytes decoded; a
//  query string allowed and ignored). Sets host (NUL-terminated) and port.
//  Returns 0, or -1 when it is not one.
int cm_redis_parse_url (const char *url, char *host, size_t hostlen, int64_t *port);

//  Check the setting `name` (REDIS_URL) with cm_redis_parse_url, the one
//  parser every program uses. Returns 0, or -1 with a message naming name
//  in err (the password, if any, is not quoted).
int cm_redis_url_check (const char *name, const char *url, char *err, size_t errlen);

//  Connect with a connect and command timeout, AUTH (as the ACL user when
//  the URL names one) and SELECT as the URL says. Returns the caller's connection
//  (redisFree), or NULL with err set.
redisContext *cm_redis_connect (const char *url, int timeout_ms, char *err,
                                size_t errlen);

//  PING. Returns 0 on PONG, else -1 with err set.
int cm_redis_ping (redisContext *redis, char *err, size_t errlen);

#endif
