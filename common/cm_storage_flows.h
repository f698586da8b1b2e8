/*  cm_storage_flows.h: agent flows in the storage module (the SQL of
    agentd). A flow is a row {id, uuid, name, description, active, steps,
    createdAt, lastUpdatedAt}; steps is kept as JSON text and read back
    parsed, in upstream's shape [{type, config}]. The storage checks only
    what the table needs (a name, steps an array); what a step means is
    agentd's business (agent_flow_validate) and is checked before saving.

    Threading: as cm_storage.h (a connection belongs to one thread). */
#ifndef CM_STORAGE_FLOWS_H_INCLUDED
#define CM_STORAGE_FLOWS_H_INCLUDED

#include "cm_storage.h"

//  Create a flow with a new uuid. INVALID when name is NULL or empty or
//  steps is not an array. On OK, *flow_p is the new row, caller owns it.
//  description may be NULL.
cm_storage_status_t cm_storage_flow_create (cm_storage_t *self, const char *name,
                                            const char *description, bool active,
                                            const json_t *steps, json_t **flow_p);

//  The flow with this uuid. OK (caller owns *flow_p), NOT_FOUND or ERROR.
cm_storage_status_t cm_storage_flow_get (cm_storage_t *self, const char *uuid,
                                         json_t **flow_p);

//  Every flow, oldest first. Caller owns *flows_p.
cm_storage_status_t cm_storage_flow_list (cm_storage_t *self, json_t **flows_p);

//  Replace a flow's name, description, active flag and steps (and touch
//  lastUpdatedAt). INVALID as create; NOT_FOUND when no such uuid. On OK,
//  *flow_p (may be NULL: not wanted) is the updated row.
cm_storage_status_t cm_storage_flow_update (cm_storage_t *self, const char *uuid,
                                            const char *name, const char *description,
                                            bool active, const json_t *steps,
                                            json_t **flow_p);

//  Set a flow's active flag. NOT_FOUND when no such uuid. On OK, *flow_p
//  (may be NULL) is the updated row.
cm_storage_status_t cm_storage_flow_set_active (cm_storage_t *self, const char *uuid,
                                                bool active, json_t **flow_p);

//  Delete a flow. OK, NOT_FOUND or ERROR.
cm_storage_status_t cm_storage_flow_delete (cm_storage_t *self, const char *uuid);

#endif
