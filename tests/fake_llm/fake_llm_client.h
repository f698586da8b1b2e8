/*  fake_llm_client.h: how tests run tests/fake_llm, the fake
    OpenAI-compatible upstream (its routes, modes and statistics are
    described at the top of fake_llm.c): start it on a free port, change its
    behaviour, read what it saw, stop it. Failures fail the test
    (Criterion asserts). */
#ifndef FAKE_LLM_CLIENT_H_INCLUDED
#define FAKE_LLM_CLIENT_H_INCLUDED

#include <jansson.h>
#include <stdint.h>
#include <sys/types.h>

typedef struct {
    pid_t pid;         //  the fake's process
    int port;          //  its port on 127.0.0.1
    char base[64];     //  "http://127.0.0.1:PORT"
    char base_url[80]; //  base + "/v1": the value for LLM_BASE_URL
} fake_llm_t;

//  Start the fake (build/bin/fake_llm: from $LLMRT_BIN_DIR, else ../bin
//  from the test's executable) on a port it picks; args: more command-line
//  arguments, NULL-terminated (may be NULL). Returns when it listens. It
//  dies with the test process.
void fake_llm_start (fake_llm_t *self, const char *const *args);
//  SIGTERM it and wait. NULL-safe on a fake that is not running.
void fake_llm_stop (fake_llm_t *self);
//  POST /control with this JSON object; the test fails unless it says 200.
void fake_llm_control (fake_llm_t *self, const char *json);
//  GET /stats (a new reference).
json_t *fake_llm_stats (fake_llm_t *self);
//  One integer of /stats.
int64_t fake_llm_stat (fake_llm_t *self, const char *name);
//  The clock of last_disconnect_ms: CLOCK_MONOTONIC in ms.
int64_t fake_llm_now_ms (void);

//  One fake per test suite: `TestSuite (name, .init = fake_llm_suite_start,
//  .fini = fake_llm_suite_stop)` starts fake_llm_suite (no extra arguments)
//  before each test and stops it after.
extern fake_llm_t fake_llm_suite;
void fake_llm_suite_start (void);
void fake_llm_suite_stop (void);

#endif
