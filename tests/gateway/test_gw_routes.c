/*  test_gw_routes.c: the gateway's route table: {param} patterns, 404 and
    405 (with the Allow list), local routes, and the flags each route
    declares (who needs a key, whose body must be JSON, what may be run
    again on another instance). */
#include <criterion/criterion.h>
#include "gw_routes.h"

Test (gw_routes, walkthrough_lookup)
{
    const gw_route_t *route;
    char allow[64];
    //  A forwarded route: its service, and a {param} segment matched.
    cr_assert_eq (gw_routes_lookup ("POST", "/api/v1/workspace/demo/chat", &route, allow,
                                    sizeof allow),
                  GW_ROUTE_FOUND);
    cr_assert_not_null (route);
    cr_assert_str_eq (route->method, "POST");
    cr_assert_str_eq (route->pattern, "/api/v1/workspace/{slug}/chat");
    cr_assert_str_eq (route->service, "chat");
    cr_assert_eq (route->local, GW_LOCAL_NONE);
    //  A path nobody serves.
    cr_assert_eq (gw_routes_lookup ("GET", "/api/nothing", &route, allow, sizeof allow),
                  GW_ROUTE_NOT_FOUND);
    cr_assert_null (route);
    //  A known path with the wrong method: what it would accept.
    cr_assert_eq (gw_routes_lookup ("GET", "/api/v1/workspace/demo/chat", &route, allow,
                                    sizeof allow),
                  GW_ROUTE_BAD_METHOD);
    cr_assert_null (route);
    cr_assert_str_eq (allow, "POST");
}

Test (gw_routes, params_match_one_non_empty_segment)
{
    const gw_route_t *route;
    cr_assert_eq (gw_routes_lookup ("POST",
                                    "/api/v1/workspace/my-ws/thread/t-42/stream-chat",
                                    &route, NULL, 0),
                  GW_ROUTE_FOUND);
    cr_assert_str_eq (route->pattern,
                      "/api/v1/workspace/{slug}/thread/{thread}/stream-chat");
    cr_assert_eq (
        gw_routes_lookup ("GET", "/api/v1/workspace/my-ws/chats", &route, NULL, 0),
        GW_ROUTE_FOUND);
    cr_assert_str_eq (route->pattern, "/api/v1/workspace/{slug}/chats");
    //  One trailing slash is allowed, as Express (upstream's router) allows
    //  it; an escaped slash stays inside its segment.
    cr_assert_eq (
        gw_routes_lookup ("POST", "/api/v1/workspace/demo/chat/", &route, NULL, 0),
        GW_ROUTE_FOUND);
    cr_assert_eq (gw_routes_lookup ("GET", "/api/ping/", &route, NULL, 0),
                  GW_ROUTE_FOUND);
    cr_assert_eq (gw_routes_lookup ("GET", "/api/v1/workspace/a%2Fchat", &route, NULL, 0),
                  GW_ROUTE_FOUND);
    cr_assert_str_eq (route->pattern, "/api/v1/workspace/{slug}");
    //  An empty segment, a segment spanning a slash, two trailing slashes, a
    //  missing tail, or a segment that decodes to a NUL byte do not match.
    const char *misses[] = {
        "/api/v1/workspace//chat",
        "/api/v1/workspace/a/b/chat",
        "/api/v1/workspace/demo/chat//",
        "/api/v1/workspace/demo/thread//chat",
        "/api/v1/workspace/demo/thread/t1",
        "/api/v1/workspace/demo%00/chat",
        "/api/ping%00x",
        "/api/pingx",
        "/api",
        "",
        "/",
    };
    for (size_t i = 0; i < sizeof misses / sizeof *misses; i++)
        cr_assert_eq (gw_routes_lookup ("POST", misses[i], &route, NULL, 0),
                      GW_ROUTE_NOT_FOUND, "'%s' should not match", misses[i]);
}

Test (gw_routes, unknown_path_is_not_found_for_every_method)
{
    const char *methods[] = {"GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"};
    for (size_t i = 0; i < sizeof methods / sizeof *methods; i++) {
        const gw_route_t *route = (const gw_route_t *) 1;
        char allow[64] = "junk";
        cr_assert_eq (
            gw_routes_lookup (methods[i], "/api/v2/nope", &route, allow, sizeof allow),
            GW_ROUTE_NOT_FOUND);
        cr_assert_null (route);
        cr_assert_str_eq (allow, "", "allow is cleared");
    }
}

Test (gw_routes, bad_method_lists_every_allowed_method)
{
    const gw_route_t *route;
    char allow[64];
    cr_assert_eq (gw_routes_lookup ("DELETE", "/api/ping", &route, allow, sizeof allow),
                  GW_ROUTE_BAD_METHOD);
    cr_assert_str_eq (allow, "GET, HEAD");
    cr_assert_eq (
        gw_routes_lookup ("POST", "/api/v1/workspaces", &route, allow, sizeof allow),
        GW_ROUTE_BAD_METHOD);
    cr_assert_str_eq (allow, "GET, HEAD");
    //  "/api/v1/workspace/new" is the create route and also a {slug}.
    cr_assert_eq (
        gw_routes_lookup ("DELETE", "/api/v1/workspace/new", &route, allow, sizeof allow),
        GW_ROUTE_BAD_METHOD);
    cr_assert_str_eq (allow, "POST, GET, HEAD");
    //  The same for the create route of API keys and a key's {id}.
    cr_assert_eq (gw_routes_lookup ("GET", "/api/v1/admin/api-keys/new", &route, allow,
                                    sizeof allow),
                  GW_ROUTE_BAD_METHOD);
    cr_assert_str_eq (allow, "POST, DELETE");
    //  Methods are case-sensitive (RFC 9110).
    cr_assert_eq (gw_routes_lookup ("get", "/api/ping", &route, allow, sizeof allow),
                  GW_ROUTE_BAD_METHOD);
    cr_assert_str_eq (allow, "GET, HEAD");
}

//  HEAD is answered wherever GET is (HTTP requires it), by the GET route;
//  nowhere else.
Test (gw_routes, head_takes_the_get_route)
{
    const gw_route_t *route;
    char allow[64];
    cr_assert_eq (gw_routes_lookup ("HEAD", "/api/ping", &route, allow, sizeof allow),
                  GW_ROUTE_FOUND);
    cr_assert_str_eq (route->method, "GET");
    cr_assert_eq (gw_routes_lookup ("HEAD", "/api/v1/workspace/demo", &route, NULL, 0),
                  GW_ROUTE_FOUND);
    cr_assert_str_eq (route->service, "chat");
    cr_assert_eq (gw_routes_lookup ("HEAD", "/api/v1/workspace/demo/chat", &route, allow,
                                    sizeof allow),
                  GW_ROUTE_BAD_METHOD);
    cr_assert_str_eq (allow, "POST");
}

Test (gw_routes, bad_method_does_not_depend_on_the_allow_buffer)
{
    //  The Allow list is optional output; the outcome is the same without
    //  it, or with a buffer too small to hold it.
    const gw_route_t *route;
    cr_assert_eq (gw_routes_lookup ("DELETE", "/api/ping", &route, NULL, 0),
                  GW_ROUTE_BAD_METHOD);
    char tiny[2];
    cr_assert_eq (gw_routes_lookup ("DELETE", "/api/ping", &route, tiny, sizeof tiny),
                  GW_ROUTE_BAD_METHOD);
    cr_assert_str_eq (tiny, "");
}

Test (gw_routes, local_routes_have_no_service)
{
    struct {
        const char *method, *path;
        gw_local_t local;
        unsigned flags;
    } locals[] = {
        {"GET", "/api/ping", GW_LOCAL_PING, 0},
        {"GET", "/api/health/live", GW_LOCAL_LIVE, 0},
        {"GET", "/api/health/ready", GW_LOCAL_READY, 0},
        {"GET", "/api/health", GW_LOCAL_HEALTH, 0},
        {"GET", "/api/v1/auth", GW_LOCAL_AUTH, GW_ROUTE_AUTH},
        //  API keys: admin keys only.
        {"GET", "/api/v1/admin/api-keys", GW_LOCAL_KEYS_LIST,
         GW_ROUTE_AUTH | GW_ROUTE_ADMIN},
        {"POST", "/api/v1/admin/api-keys/new", GW_LOCAL_KEYS_CREATE,
         GW_ROUTE_AUTH | GW_ROUTE_ADMIN | GW_ROUTE_JSON},
        {"DELETE", "/api/v1/admin/api-keys/12", GW_LOCAL_KEYS_REVOKE,
         GW_ROUTE_AUTH | GW_ROUTE_ADMIN},
    };
    for (size_t i = 0; i < sizeof locals / sizeof *locals; i++) {
        const gw_route_t *route;
        cr_assert_eq (
            gw_routes_lookup (locals[i].method, locals[i].path, &route, NULL, 0),
            GW_ROUTE_FOUND, "%s", locals[i].path);
        cr_assert_null (route->service, "%s is answered by the gateway", locals[i].path);
        cr_assert_eq (route->local, locals[i].local, "%s", locals[i].path);
        cr_assert_eq (route->flags, locals[i].flags, "%s", locals[i].path);
    }
}

Test (gw_routes, flags_are_as_declared)
{
    enum { A = GW_ROUTE_AUTH, J = GW_ROUTE_JSON, R = GW_ROUTE_RETRY, C = GW_ROUTE_CHAT };
    struct {
        const char *method, *path;
        unsigned flags;
    } routes[] = {
        //  Creating things is not retried: it would create them twice.
        {"POST", "/api/v1/workspace/new", A | J},
        {"POST", "/api/v1/workspace/demo/thread/new", A | J},
        //  Reads are retried.
        {"GET", "/api/v1/workspaces", A | R},
        {"GET", "/api/v1/workspace/demo", A | R},
        {"GET", "/api/v1/workspace/demo/chats", A | R},
        //  Chat turns are retried (see gw_routes.c for why), and a body the
        //  gateway refuses gets the chat abort shape.
        {"POST", "/api/v1/workspace/demo/chat", A | J | R | C},
        {"POST", "/api/v1/workspace/demo/stream-chat", A | J | R | C},
        {"POST", "/api/v1/workspace/demo/thread/t1/chat", A | J | R | C},
        {"POST", "/api/v1/workspace/demo/thread/t1/stream-chat", A | J | R | C},
        //  OpenAI-compatible: reads, and a completion is a chat turn.
        {"GET", "/api/v1/openai/models", A | R},
        {"GET", "/api/v1/openai/vector_stores", A | R},
        {"POST", "/api/v1/openai/chat/completions", A | J | R | C},
    };
    for (size_t i = 0; i < sizeof routes / sizeof *routes; i++) {
        const gw_route_t *route;
        cr_assert_eq (
            gw_routes_lookup (routes[i].method, routes[i].path, &route, NULL, 0),
            GW_ROUTE_FOUND, "%s %s", routes[i].method, routes[i].path);
        cr_assert_eq (route->flags, routes[i].flags, "%s %s: flags %#x, expected %#x",
                      routes[i].method, routes[i].path, route->flags, routes[i].flags);
        cr_assert_str_eq (route->service, "chat");
    }
}

Test (gw_routes, services_cover_every_forwarded_route)
{
    const char *const *services = gw_routes_services ();
    cr_assert_str_eq (services[0], "chat");
    cr_assert_str_eq (services[1], "ingest");
    cr_assert_str_eq (services[2], "agent");
    cr_assert_null (services[3]);
    const char *paths[] = {"/api/v1/workspace/new", "/api/v1/workspace/demo/chat"};
    for (size_t i = 0; i < sizeof paths / sizeof *paths; i++) {
        const gw_route_t *route;
        cr_assert_eq (gw_routes_lookup ("POST", paths[i], &route, NULL, 0),
                      GW_ROUTE_FOUND);
        bool listed = false;
        for (const char *const *s = services; *s; s++)
            listed = listed || !strcmp (*s, route->service);
        cr_assert (listed, "%s's service %s is not listed for readiness", paths[i],
                   route->service);
    }
}
