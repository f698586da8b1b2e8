/*  chat_service.h: chatd's core, the workspace and chat routes.

    The route table serves AnythingLLM's developer API for workspaces,
    threads and chats (docs: the HTTP contract, API.md), with upstream's
    shapes and quirks: POST /api/v1/workspace/new, GET /api/v1/workspaces,
    GET /api/v1/workspace/{slug} (an array; [] when unknown), GET
    .../{slug}/chats, POST .../{slug}/thread/new, and POST .../chat and
    .../stream-chat on a workspace or one of its threads; and the
    OpenAI-compatible GET /api/v1/openai/models, POST
    /api/v1/openai/chat/completions (a chat turn like the others, in
    OpenAI's shapes) and GET /api/v1/openai/vector_stores. Every chat turn is
    saved to history, a partial answer too when the client goes away in the
    middle of a stream.

    Retrieval: a workspace with embedded documents (ingestd puts them in
    the database) has the message embedded (EMBEDDING_*, the same embedder
    as ingestd's) and searched (cm_vsearch): the chunks that pass its
    similarityThreshold, at most topN, are the answer's "sources" (each
    with its document's fields, "text" and "chunk") in every chat route and
    in history, and the context of the system prompt. Query mode answers
    from the documents only: when nothing passes the threshold the turn gets
    the workspace's refusal text and is saved with include = false. Chat and
    automatic modes call the provider with the system prompt (and context),
    the recent history (openAiHistory turns of the same session or thread)
    and the message.

    Threading: handlers run on the worker's queue threads, several at once.
    Each borrows its own database connection from the service's pool and
    shares the provider (which must be thread-safe). */
#ifndef CHAT_SERVICE_H_INCLUDED
#define CHAT_SERVICE_H_INCLUDED

#include "cm_common.h"
#include "cm_worker.h"
#include "chat_provider.h"
#include "cm_breaker.h"
#include "cm_embed.h"
#include "cm_vsearch.h"

typedef struct chat_service_s chat_service_t;

//  Create the service on the database in storage_dir, taking over the
//  provider (nulls *provider_p). NULL with the reason in err when the
//  database cannot be opened (the provider is destroyed then too).
chat_service_t *chat_service_new (const char *storage_dir, chat_provider_t **provider_p,
                                  char *err, size_t errlen);
//  Destroy; NULL-safe; nulls the pointer. Call after the worker stopped.
void chat_service_destroy (chat_service_t **self_p);

//  Guard the provider with breaker (taken over; nulls *breaker_p) instead
//  of the default one (named "chat", cm_breaker_config_defaults). Before
//  each provider call a chat turn asks the breaker; an open circuit is
//  answered 503 with Retry-After (whole seconds until probes may go,
//  rounded up) and the abort shape, before any stream starts. A provider
//  failure counts against the circuit; a success for it; a client that
//  left or a request the upstream refused as the request's own fault
//  (CHAT_PROVIDER_REJECTED) neither. Call before serving.
void chat_service_set_breaker (chat_service_t *self, cm_breaker_t **breaker_p);
//  Embed messages with this embedder (taken over; nulls *embedder_p)
//  instead of the default one (builtin). Call before serving.
void chat_service_set_embedder (chat_service_t *self, cm_embedder_t **embedder_p);
//  The cache of workspace vectors for query-mode chats (borrowed), for
//  its limit (cm_vsearch_set_max_bytes; none by default) and metrics.
cm_vsearch_t *chat_service_vsearch (chat_service_t *self);
//  The breaker in use (borrowed), for metrics and health.
cm_breaker_t *chat_service_breaker (chat_service_t *self);

//  The monotonic clock in ms that the breaker is given (default
//  cm_clock_mono_ms), so tests can move time by hand. Call before serving.
typedef int64_t (chat_clock_fn) (void *arg);
void chat_service_set_clock (chat_service_t *self, chat_clock_fn *clock, void *arg);

//  The route table (static, NULL-terminated). Handlers take the service as
//  their arg (cm_worker_config_t.arg).
const cm_route_t *chat_service_routes (void);

#endif
