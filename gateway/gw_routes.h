/*  gw_routes.h: the gateway's route table (one table, like nginx's module
    commands): which service owns each path, whether it needs a key, and
    whether its body must be JSON. Routes with no service are answered by
    the gateway itself. */
#ifndef GW_ROUTES_H_INCLUDED
#define GW_ROUTES_H_INCLUDED

#include "cm_common.h"

typedef enum {
    GW_ROUTE_AUTH = 1 << 0,  //  needs a valid API key
    GW_ROUTE_JSON = 1 << 1,  //  body must be a JSON object (empty means {})
    GW_ROUTE_RETRY = 1 << 2, //  may be resent to another instance if the
                             //  first died before replying (running twice
                             //  is harmless: reads, and chat turns, which
                             //  chatd saves once per request id)
    GW_ROUTE_ADMIN = 1 << 3, //  needs an admin key (ADMIN_API_KEY or role
                             //  admin); other keys get 403
    GW_ROUTE_CHAT = 1 << 4,  //  a chat turn: a body the gateway refuses (not
                             //  JSON, not an object) is answered 400 in the
                             //  chat abort shape, as chatd answers its own
    GW_ROUTE_FORM = 1 << 5,  //  body is a form (multipart/form-data or
                             //  urlencoded): the gateway parses it and
                             //  forwards a cm_form (CM_FORM_CONTENT_TYPE)
} gw_route_flags_t;

typedef enum {
    GW_LOCAL_NONE = 0,    //  forwarded to its service
    GW_LOCAL_PING,        //  GET /api/ping
    GW_LOCAL_LIVE,        //  GET /api/health/live
    GW_LOCAL_READY,       //  GET /api/health/ready
    GW_LOCAL_HEALTH,      //  GET /api/health
    GW_LOCAL_AUTH,        //  GET /api/v1/auth
    GW_LOCAL_METRICS,     //  GET /api/metrics (gw_metrics)
    GW_LOCAL_PROMETHEUS,  //  GET /api/metrics/prometheus (gw_metrics)
    GW_LOCAL_KEYS_LIST,   //  GET /api/v1/admin/api-keys (gw_keys)
    GW_LOCAL_KEYS_CREATE, //  POST /api/v1/admin/api-keys/new (gw_keys)
    GW_LOCAL_KEYS_REVOKE, //  DELETE /api/v1/admin/api-keys/{id} (gw_keys)
} gw_local_t;

typedef struct {
    const char *method;  //  HTTP method
    const char *pattern; //  path with {param} segments
    const char *service; //  owning daemon's service name, NULL when local
    gw_local_t local;    //  which local answer, when service is NULL
    unsigned flags;      //  gw_route_flags_t
} gw_route_t;

typedef enum {
    GW_ROUTE_FOUND = 0,  //  *route is set
    GW_ROUTE_NOT_FOUND,  //  no pattern matches the path
    GW_ROUTE_BAD_METHOD, //  the path exists with other methods (allow is set)
} gw_route_result_t;

//  Look a request up. On GW_ROUTE_BAD_METHOD, allow (size allow_size) gets
//  the comma-separated methods the path accepts.
gw_route_result_t gw_routes_lookup (const char *method, const char *path,
                                    const gw_route_t **route, char *allow,
                                    size_t allow_size);

//  The services the table forwards to (NULL-terminated), for readiness.
const char *const *gw_routes_services (void);

#endif
