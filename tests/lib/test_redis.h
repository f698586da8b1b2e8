/*  test_redis.h: a real redis-server for one test (or suite) on a free
    port, without persistence, in a fresh directory, one place for every
    suite that needs one. Failures fail the running Criterion test. */
#ifndef TEST_REDIS_H_INCLUDED
#define TEST_REDIS_H_INCLUDED

#include <sys/types.h>

typedef struct {
    pid_t pid;    //  redis-server, 0 when not running
    int port;     //  its port
    char dir[64]; //  its working directory (and log)
    char url[64]; //  redis://127.0.0.1:port
} test_redis_t;

//  Start redis-server on `port` (0: a free one; a taken free port is
//  retried on another) and return once it answers PING. The directory is
//  made on the first start and kept across restarts.
void test_redis_start (test_redis_t *self, int port);
//  Kill it (also when stopped with SIGSTOP) and wait. Safe when not running.
void test_redis_stop (test_redis_t *self);
//  Stop it and remove its directory.
void test_redis_remove (test_redis_t *self);

#endif
