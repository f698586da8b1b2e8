/*  gw_routes.c: see gw_routes.h. Later issues add their routes here. */
#include "gw_routes.h"
#include "cm_worker.h"

#define AUTH  GW_ROUTE_AUTH
#define JSON  GW_ROUTE_JSON
#define RETRY GW_ROUTE_RETRY
#define ADMIN GW_ROUTE_ADMIN
#define CHAT  GW_ROUTE_CHAT
#define FORM  GW_ROUTE_FORM

static const gw_route_t s_routes[] = {
    //  Operational, answered by the gateway.
    {"GET", "/api/ping", NULL, GW_LOCAL_PING, 0},
    {"GET", "/api/health/live", NULL, GW_LOCAL_LIVE, 0},
    {"GET", "/api/health/ready", NULL, GW_LOCAL_READY, 0},
    {"GET", "/api/health", NULL, GW_LOCAL_HEALTH, 0},
    {"GET", "/api/metrics", NULL, GW_LOCAL_METRICS, 0},
    {"GET", "/api/metrics/prometheus", NULL, GW_LOCAL_PROMETHEUS, 0},
    {"GET", "/api/v1/auth", NULL, GW_LOCAL_AUTH, AUTH},
    //  API keys (gw_keys), for admin keys only. Named like upstream's
    //  admin API (/v1/admin/users, /v1/admin/users/new, DELETE .../{id}).
    {"GET", "/api/v1/admin/api-keys", NULL, GW_LOCAL_KEYS_LIST, AUTH | ADMIN},
    {"POST", "/api/v1/admin/api-keys/new", NULL, GW_LOCAL_KEYS_CREATE,
     AUTH | ADMIN | JSON},
    {"DELETE", "/api/v1/admin/api-keys/{id}", NULL, GW_LOCAL_KEYS_REVOKE, AUTH | ADMIN},
    //  Workspaces and chat (chatd).
    {"POST", "/api/v1/workspace/new", "chat", GW_LOCAL_NONE, AUTH | JSON},
    {"GET", "/api/v1/workspaces", "chat", GW_LOCAL_NONE, AUTH | RETRY},
    {"GET", "/api/v1/workspace/{slug}", "chat", GW_LOCAL_NONE, AUTH | RETRY},
    {"GET", "/api/v1/workspace/{slug}/chats", "chat", GW_LOCAL_NONE, AUTH | RETRY},
    {"POST", "/api/v1/workspace/{slug}/thread/new", "chat", GW_LOCAL_NONE, AUTH | JSON},
    //  A chat turn whose daemon died before answering is run again on
    //  another replica: the client gets its answer; at worst a turn the
    //  dead one saved but never sent shows twice in history.
    {"POST", "/api/v1/workspace/{slug}/chat", "chat", GW_LOCAL_NONE,
     AUTH | JSON | RETRY | CHAT},
    {"POST", "/api/v1/workspace/{slug}/stream-chat", "chat", GW_LOCAL_NONE,
     AUTH | JSON | RETRY | CHAT},
    {"POST", "/api/v1/workspace/{slug}/thread/{thread}/chat", "chat", GW_LOCAL_NONE,
     AUTH | JSON | RETRY | CHAT},
    {"POST", "/api/v1/workspace/{slug}/thread/{thread}/stream-chat", "chat",
     GW_LOCAL_NONE, AUTH | JSON | RETRY | CHAT},
    //  OpenAI-compatible (chatd): the workspaces as models; a completion
    //  is a chat turn, retried for the same reason.
    {"GET", "/api/v1/openai/models", "chat", GW_LOCAL_NONE, AUTH | RETRY},
    {"POST", "/api/v1/openai/chat/completions", "chat", GW_LOCAL_NONE,
     AUTH | JSON | RETRY | CHAT},
    {"GET", "/api/v1/openai/vector_stores", "chat", GW_LOCAL_NONE, AUTH | RETRY},
    //  Agent flows (agentd). A run is never resent: its steps may have
    //  side effects (apiCall) that must not happen twice.
    {"POST", "/api/v1/agent-flows", "agent", GW_LOCAL_NONE, AUTH | JSON},
    {"GET", "/api/v1/agent-flows", "agent", GW_LOCAL_NONE, AUTH | RETRY},
    {"GET", "/api/v1/agent-flows/{uuid}", "agent", GW_LOCAL_NONE, AUTH | RETRY},
    {"PUT", "/api/v1/agent-flows/{uuid}", "agent", GW_LOCAL_NONE, AUTH | JSON},
    {"DELETE", "/api/v1/agent-flows/{uuid}", "agent", GW_LOCAL_NONE, AUTH},
    {"POST", "/api/v1/agent-flows/{uuid}/toggle", "agent", GW_LOCAL_NONE, AUTH | JSON},
    {"POST", "/api/v1/agent-flows/{uuid}/run", "agent", GW_LOCAL_NONE, AUTH | JSON},
    //  Documents and embeddings (ingestd). An upload arrives as a cm_form;
    //  the job route is ours (API.md: an upload's state and progress).
    {"POST", "/api/v1/document/upload", "ingest", GW_LOCAL_NONE, AUTH | FORM},
    {"POST", "/api/v1/document/raw-text", "ingest", GW_LOCAL_NONE, AUTH | JSON},
    {"GET", "/api/v1/document/jobs/{id}", "ingest", GW_LOCAL_NONE, AUTH | RETRY},
    {"POST", "/api/v1/workspace/{slug}/update-embeddings", "ingest", GW_LOCAL_NONE,
     AUTH | JSON},
    {"POST", "/api/v1/workspace/{slug}/vector-search", "ingest", GW_LOCAL_NONE,
     AUTH | JSON},
    {"POST", "/api/v1/openai/embeddings", "ingest", GW_LOCAL_NONE, AUTH | JSON},
    {NULL, NULL, NULL, GW_LOCAL_NONE, 0},
};

//  Every service the suite runs must be registered for readiness, also
//  those whose routes come later (ingestd, agentd).
static const char *const s_services[] = {"chat", "ingest", "agent", NULL};

gw_route_result_t
gw_routes_lookup (const char *method, const char *path, const gw_route_t **route,
                  char *allow, size_t allow_size)
{
    assert (method && path && route);
    *route = NULL;
    size_t used = 0;
    bool known = false; //  the path exists with another method
    if (allow && allow_size)
        allow[0] = 0;
    //  HEAD is GET without the body, wherever GET is (HTTP requires it;
    //  load balancers probe with it).
    const char *wanted = strcmp (method, "HEAD") ? method : "GET";
    for (const gw_route_t *r = s_routes; r->method; r++) {
        if (!cm_route_match (r->pattern, path))
            continue;
        if (!strcmp (r->method, wanted)) {
            *route = r;
            return GW_ROUTE_FOUND;
        }
        known = true;
        const char *also = strcmp (r->method, "GET") ? "" : ", HEAD";
        if (allow && used + strlen (r->method) + strlen (also) + 3 < allow_size)
            used += (size_t) snprintf (allow + used, allow_size - used, "%s%s%s",
                                       used ? ", " : "", r->method, also);
    }
    return known ? GW_ROUTE_BAD_METHOD : GW_ROUTE_NOT_FOUND;
}

const char *const *
gw_routes_services (void)
{
    return s_services;
}
