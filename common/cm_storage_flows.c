/*  cm_storage_flows.c: see cm_storage_flows.h. */
#include "cm_storage_flows.h"
#include "cm_storage_int.h"

#define S_FLOW_COLUMNS                                                                   \
    "id, uuid, name, description, active, steps, createdAt, lastUpdatedAt"

//  The row of a uuid, when the caller wants it (flow_p not NULL).
static cm_storage_status_t
s_read_back (cm_storage_t *self, const char *uuid, json_t **flow_p)
{
    if (!flow_p)
        return CM_STORAGE_OK;
    return cm_storage_flow_get (self, uuid, flow_p);
}

//  Check create/update input; INVALID with errmsg set, or OK with the steps'
//  text in *text_p (caller frees).
static cm_storage_status_t
s_check (cm_storage_t *self, const char *name, const json_t *steps, char **text_p)
{
    *text_p = NULL;
    if (!name || !*name) {
        snprintf (self->errmsg, sizeof self->errmsg, "name is required");
        return CM_STORAGE_INVALID;
    }
    if (!json_is_array (steps)) {
        snprintf (self->errmsg, sizeof self->errmsg, "steps must be an array");
        return CM_STORAGE_INVALID;
    }
    *text_p = json_dumps (steps, JSON_COMPACT);
    if (!*text_p) {
        snprintf (self->errmsg, sizeof self->errmsg, "steps cannot be encoded");
        return CM_STORAGE_INVALID;
    }
    return CM_STORAGE_OK;
}

//  ?1..?5 of both the INSERT and the UPDATE: uuid, name, description,
//  active, steps (as text).
static void
s_bind_flow (sqlite3_stmt *stmt, const char *uuid, const char *name,
             const char *description, bool active, const char *steps)
{
    sqlite3_bind_text (stmt, 1, uuid, -1, SQLITE_TRANSIENT);
    sqlite3_bind_text (stmt, 2, name, -1, SQLITE_TRANSIENT);
    cm_storage__bind_text (stmt, 3, description);
    sqlite3_bind_int (stmt, 4, active ? 1 : 0);
    sqlite3_bind_text (stmt, 5, steps, -1, SQLITE_TRANSIENT);
}

cm_storage_status_t
cm_storage_flow_create (cm_storage_t *self, const char *name, const char *description,
                        bool active, const json_t *steps, json_t **flow_p)
{
    assert (self);
    assert (flow_p);
    *flow_p = NULL;
    self->errmsg[0] = 0;
    char *text;
    cm_storage_status_t status = s_check (self, name, steps, &text);
    if (status != CM_STORAGE_OK)
        return status;
    char uuid[CM_UUID_SIZE];
    cm_uuid (uuid);
    status = CM_STORAGE_ERROR;
    sqlite3_stmt *stmt = cm_storage__stmt (
        self, "INSERT INTO agent_flows (uuid, name, description, active, steps) "
              "VALUES (?1, ?2, ?3, ?4, ?5)");
    if (stmt) {
        s_bind_flow (stmt, uuid, name, description, active, text);
        int rc = sqlite3_step (stmt);
        sqlite3_reset (stmt);
        if (rc == SQLITE_DONE)
            status = cm_storage_flow_get (self, uuid, flow_p);
        else
            cm_storage__fail (self, "create agent flow");
    }
    free (text);
    return status;
}

cm_storage_status_t
cm_storage_flow_get (cm_storage_t *self, const char *uuid, json_t **flow_p)
{
    assert (self);
    assert (uuid);
    assert (flow_p);
    *flow_p = NULL;
    self->errmsg[0] = 0;
    return cm_storage__get (self,
                            "SELECT " S_FLOW_COLUMNS " FROM agent_flows WHERE uuid = ?1",
                            uuid, "get agent flow", flow_p);
}

cm_storage_status_t
cm_storage_flow_list (cm_storage_t *self, json_t **flows_p)
{
    assert (self);
    assert (flows_p);
    *flows_p = NULL;
    self->errmsg[0] = 0;
    sqlite3_stmt *stmt =
        cm_storage__stmt (self, "SELECT " S_FLOW_COLUMNS " FROM agent_flows ORDER BY id");
    if (!stmt)
        return CM_STORAGE_ERROR;
    return cm_storage__rows (self, stmt, "list agent flows", flows_p);
}

cm_storage_status_t
cm_storage_flow_update (cm_storage_t *self, const char *uuid, const char *name,
                        const char *description, bool active, const json_t *steps,
                        json_t **flow_p)
{
    assert (self);
    assert (uuid);
    if (flow_p)
        *flow_p = NULL;
    self->errmsg[0] = 0;
    char *text;
    cm_storage_status_t status = s_check (self, name, steps, &text);
    if (status != CM_STORAGE_OK)
        return status;
    status = CM_STORAGE_ERROR;
    sqlite3_stmt *stmt = cm_storage__stmt (
        self, "UPDATE agent_flows SET name = ?2, description = ?3, active = ?4, "
              "steps = ?5, lastUpdatedAt = " CM_STORAGE_NOW " WHERE uuid = ?1");
    if (stmt) {
        s_bind_flow (stmt, uuid, name, description, active, text);
        status = cm_storage__change (self, stmt, "update agent flow");
    }
    free (text);
    return status == CM_STORAGE_OK ? s_read_back (self, uuid, flow_p) : status;
}

cm_storage_status_t
cm_storage_flow_set_active (cm_storage_t *self, const char *uuid, bool active,
                            json_t **flow_p)
{
    assert (self);
    assert (uuid);
    if (flow_p)
        *flow_p = NULL;
    self->errmsg[0] = 0;
    sqlite3_stmt *stmt = cm_storage__stmt (
        self, "UPDATE agent_flows SET active = ?2, lastUpdatedAt = " CM_STORAGE_NOW
              " WHERE uuid = ?1");
    if (!stmt)
        return CM_STORAGE_ERROR;
    sqlite3_bind_text (stmt, 1, uuid, -1, SQLITE_TRANSIENT);
    sqlite3_bind_int (stmt, 2, active ? 1 : 0);
    cm_storage_status_t status = cm_storage__change (self, stmt, "toggle agent flow");
    return status == CM_STORAGE_OK ? s_read_back (self, uuid, flow_p) : status;
}

cm_storage_status_t
cm_storage_flow_delete (cm_storage_t *self, const char *uuid)
{
    assert (self);
    assert (uuid);
    self->errmsg[0] = 0;
    sqlite3_stmt *stmt =
        cm_storage__stmt (self, "DELETE FROM agent_flows WHERE uuid = ?1");
    if (!stmt)
        return CM_STORAGE_ERROR;
    sqlite3_bind_text (stmt, 1, uuid, -1, SQLITE_TRANSIENT);
    return cm_storage__change (self, stmt, "delete agent flow");
}
