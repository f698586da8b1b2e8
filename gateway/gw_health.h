/*  gw_health.h: what the gateway knows of the suite's dependencies, for
    /api/health and /api/health/ready.

    A checker thread looks, every HEALTH_CHECK_INTERVAL_MS, at the database
    (opens STORAGE_DIR's SQLite file and reads its schema version) and at
    Redis (connects to REDIS_URL and PINGs, with a short timeout), and keeps
    the last result, so a health request never waits on either.

    Threading: gw_health_report may be called from any thread. */
#ifndef GW_HEALTH_H_INCLUDED
#define GW_HEALTH_H_INCLUDED

#include "cm_common.h"
#include <jansson.h>

typedef struct gw_health_s gw_health_t;

//  Start checking. storage_dir and redis_url are copied; interval_ms is the
//  check period; timeout_ms bounds each Redis check.
gw_health_t *gw_health_new (const char *storage_dir, const char *redis_url,
                            int64_t interval_ms, int64_t timeout_ms);
//  Stop the checker and free. NULL-safe; nulls the pointer.
void gw_health_destroy (gw_health_t **self_p);

//  The last results (new reference):
//    {"database": {"status": "ok"|"down", "error"?, "checked_ms_ago"},
//     "queue_backend": {"status": "ok"|"down", "url", "error"?, "checked_ms_ago"}}
//  Before the first check completes, status is "unknown".
json_t *gw_health_report (gw_health_t *self);
//  True when the last database check succeeded.
bool gw_health_database_ok (gw_health_t *self);
//  True when the last Redis check succeeded.
bool gw_health_redis_ok (gw_health_t *self);

#endif
