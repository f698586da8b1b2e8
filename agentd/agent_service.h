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
    threads), so at most that many runs go at once per instance. Two levels
    of circuit breakers (docs/breaker.md):
    - the `agent` circuit guards the upstream every flow shares, the LLM
      provider: a run asks it first (open: 503 with Retry-After, at once);
      a run whose llmInstruction step failed because of the provider
      (network error, timeout, 5xx) counts against it, a run in which the
      LLM answered counts for it, any other run neither.
    - each origin an apiCall or webScraping step calls has its own circuit
      (agent_origins): a network error, DNS failure, timeout or 5xx counts
      against that origin, any other answer for it; while it is open, steps
      that would call it fail at once without calling, and the rest of the
      flows run on. A flow's own failures (a refused address, a response
      too large) and cancelled calls count nowhere.
    A run stops at the first failing step, when the client goes away or the
    request's deadline passes (the call in flight is aborted).

    Threading: handlers run on several queue threads at once; each borrows a
    database connection from the pool for the reads and writes only (never
    across a run's outbound calls), and shares the provider (thread-safe). */
#ifndef AGENT_SERVICE_H_INCLUDED
#define AGENT_SERVICE_H_INCLUDED

#include "cm_common.h"
#include "cm_breaker.h"
#include "cm_worker.h"
#include "agent_origins.h"
#include "chat_provider.h"

typedef struct agent_service_s agent_service_t;

typedef struct {
    const char *allowlist;   //  AGENT_HTTP_ALLOWLIST: hosts exempt from the address check
    int64_t max_bytes;       //  AGENT_HTTP_MAX_BYTES: cap of a response body
    int64_t step_timeout_ms; //  AGENT_STEP_TIMEOUT_MS: limit of one step
    const cm_breaker_config_t *origin_breaker; //  AGENT_CIRCUIT_*: each origin's circuit
} agent_service_config_t;

//  Create the service on the database in storage_dir, taking over the
//  provider and the `agent` breaker (nulls both pointers; both are
//  destroyed on failure too); each origin's breaker is made with
//  config->origin_breaker (checked). config's strings and settings are
//  copied. NULL with the reason in err
//  when the database cannot be opened.
agent_service_t *agent_service_new (const char *storage_dir,
                                    const agent_service_config_t *config,
                                    chat_provider_t **provider_p,
                                    cm_breaker_t **breaker_p, char *err, size_t errlen);
//  Destroy; NULL-safe; nulls the pointer. Call after the worker stopped.
void agent_service_destroy (agent_service_t **self_p);
//  The `agent` circuit (borrowed), for metrics.
cm_breaker_t *agent_service_breaker (agent_service_t *self);
//  The origins' circuits (borrowed), for metrics.
agent_origins_t *agent_service_origins (agent_service_t *self);
//  The route table (static, NULL-terminated); handlers take the service as
//  their arg.
const cm_route_t *agent_service_routes (void);

#endif
