/*  agent_service.h: agentd's core, the agent-flow routes and the flow
    executor.

    Routes (docs/agent-flows.md): POST /api/v1/agent-flows {name,
    description?, active?, steps} → {flow}; GET /api/v1/agent-flows →
    {flows}; GET, PUT, DELETE /api/v1/agent-flows/{uuid}; POST
    .../{uuid}/toggle {active?} (no active: flip it); POST .../{uuid}/run
    {variables?, stream?} → {success, results, variables, directOutput,
    error?}, or with stream: SSE events flowStarted, stepStarted,
    stepFinished, flowFinished.

    Every handler runs on the worker's queue (AGENT_FLOW_QUEUE_CONCURRENCY
    threads), so at most that many runs go at once per instance. A run asks
    the breaker first (open: 503 with Retry-After, at once); a run that
    failed because of an upstream (network error, timeout, 5xx, the LLM
    provider failing) counts against it, a flow's own failure (a 4xx, a
    refused address, a response too large) or a cancelled run does not, a
    run that succeeded counts for it. A run stops at the first failing
    step, when the client goes away or the request's deadline passes (the
    call in flight is aborted).

    Threading: handlers run on several queue threads at once; each borrows a
    database connection from the pool for the reads and writes only (never
    across a run's outbound calls), and shares the provider (thread-safe). */
#ifndef AGENT_SERVICE_H_INCLUDED
#define AGENT_SERVICE_H_INCLUDED

#include "cm_common.h"
#include "cm_breaker.h"
#include "cm_worker.h"
#include "chat_provider.h"

typedef struct agent_service_s agent_service_t;

typedef struct {
    const char *allowlist;   //  AGENT_HTTP_ALLOWLIST: hosts exempt from the address check
    int64_t max_bytes;       //  AGENT_HTTP_MAX_BYTES: cap of a response body
    int64_t step_timeout_ms; //  AGENT_STEP_TIMEOUT_MS: limit of one step
} agent_service_config_t;

//  Create the service on the database in storage_dir, taking over the
//  provider and the breaker (nulls both pointers; both are destroyed on
//  failure too). config's strings are copied. NULL with the reason in err
//  when the database cannot be opened.
agent_service_t *agent_service_new (const char *storage_dir,
                                    const agent_service_config_t *config,
                                    chat_provider_t **provider_p,
                                    cm_breaker_t **breaker_p, char *err, size_t errlen);
//  Destroy; NULL-safe; nulls the pointer. Call after the worker stopped.
void agent_service_destroy (agent_service_t **self_p);
//  The breaker in use (borrowed), for metrics.
cm_breaker_t *agent_service_breaker (agent_service_t *self);
//  The route table (static, NULL-terminated); handlers take the service as
//  their arg.
const cm_route_t *agent_service_routes (void);

#endif
