/*  cm_msg.h: the gateway <-> daemon wire message (see docs/protocol.md).

    One ZeroMQ frame holds one message: a msgpack array
        [version, type, field, field, ...]
    whose fields depend on the type. Version CM_MSG_VERSION only; a frame of
    another version, a truncated or malformed frame, trailing bytes, or a
    frame over the size limit is refused by cm_msg_decode (the caller counts
    and logs the drop). A message belongs to one thread. */
#ifndef CM_MSG_H_INCLUDED
#define CM_MSG_H_INCLUDED

#include "cm_common.h"

#define CM_MSG_VERSION 1
//  Largest frame either side accepts; bodies are bounded by MAX_BODY_BYTES
//  well below this.
#define CM_MSG_MAX_BYTES (64u * 1024 * 1024)

typedef enum {
    CM_MSG_READY = 1,      //  daemon -> gateway: service, instance, capacity
    CM_MSG_REQUEST = 2,    //  gateway -> daemon: one HTTP request
    CM_MSG_PARTIAL = 3,    //  daemon -> gateway: a chunk of a streamed reply
    CM_MSG_FINAL = 4,      //  daemon -> gateway: the (last part of the) reply
    CM_MSG_CANCEL = 5,     //  gateway -> daemon: the client is gone / deadline
    CM_MSG_HEARTBEAT = 6,  //  both ways: I am alive (daemon adds free slots)
    CM_MSG_DISCONNECT = 7, //  both ways: I am leaving / I do not know you
    CM_MSG_CHECK = 8,      //  gateway -> daemon: do you hold this request?
    CM_MSG_CHECKED = 9,    //  daemon -> gateway: held or not, PARTIALs sent
} cm_msg_type_t;

//  The highest type this codec knows.
#define CM_MSG_LAST CM_MSG_CHECKED

typedef struct cm_msg_s cm_msg_t;

//  Create an empty message of this type. Caller owns it.
cm_msg_t *cm_msg_new (cm_msg_type_t type);
//  Destroy; NULL-safe; nulls the pointer.
void cm_msg_destroy (cm_msg_t **self_p);

//  Encode into a newly allocated buffer; caller frees *data_p.
void cm_msg_encode (cm_msg_t *self, char **data_p, size_t *size_p);
//  Decode a frame. Returns a new message, or NULL with the reason in err.
cm_msg_t *cm_msg_decode (const void *data, size_t size, char *err, size_t errlen);

//  Name of a type, for logs ("REQUEST"); "?" when unknown.
const char *cm_msg_type_name (int type);

cm_msg_type_t cm_msg_type (cm_msg_t *self);

//  String fields; getters return borrowed strings ("" when unset), setters copy.
//  service: READY, REQUEST. instance: READY. request_id: REQUEST, PARTIAL,
//  FINAL, CANCEL, CHECK, CHECKED. method, route (path with query), identity: REQUEST.
//  content_type: PARTIAL, FINAL. reason: CANCEL, DISCONNECT.
const char *cm_msg_service (cm_msg_t *self);
void cm_msg_set_service (cm_msg_t *self, const char *value);
const char *cm_msg_instance (cm_msg_t *self);
void cm_msg_set_instance (cm_msg_t *self, const char *value);
const char *cm_msg_request_id (cm_msg_t *self);
void cm_msg_set_request_id (cm_msg_t *self, const char *value);
const char *cm_msg_method (cm_msg_t *self);
void cm_msg_set_method (cm_msg_t *self, const char *value);
const char *cm_msg_route (cm_msg_t *self);
void cm_msg_set_route (cm_msg_t *self, const char *value);
const char *cm_msg_identity (cm_msg_t *self);
void cm_msg_set_identity (cm_msg_t *self, const char *value);
const char *cm_msg_content_type (cm_msg_t *self);
void cm_msg_set_content_type (cm_msg_t *self, const char *value);
const char *cm_msg_reason (cm_msg_t *self);
void cm_msg_set_reason (cm_msg_t *self, const char *value);

//  capacity: READY (total slots), HEARTBEAT (free slots).
uint32_t cm_msg_capacity (cm_msg_t *self);
void cm_msg_set_capacity (cm_msg_t *self, uint32_t value);
//  deadline: REQUEST, wall-clock ms since the epoch (0: none).
int64_t cm_msg_deadline (cm_msg_t *self);
void cm_msg_set_deadline (cm_msg_t *self, int64_t value);
//  status: PARTIAL (the first one's status is the response's), FINAL.
uint16_t cm_msg_status (cm_msg_t *self);
void cm_msg_set_status (cm_msg_t *self, uint16_t value);

//  held: CHECKED, whether the daemon still holds the request (queued,
//  running, or its reply not yet sent).
bool cm_msg_held (cm_msg_t *self);
void cm_msg_set_held (cm_msg_t *self, bool value);
//  partials: CHECKED, PARTIAL frames the daemon has sent for the request.
uint32_t cm_msg_partials (cm_msg_t *self);
void cm_msg_set_partials (cm_msg_t *self, uint32_t value);
//  generation: CHECK (the gateway's number for it), CHECKED (the same,
//  echoed): an answer to a CHECK older than the request's last sending is
//  not about that sending.
uint32_t cm_msg_generation (cm_msg_t *self);
void cm_msg_set_generation (cm_msg_t *self, uint32_t value);

//  body: REQUEST, PARTIAL, FINAL. Getter borrows; size in *size_p.
const char *cm_msg_body (cm_msg_t *self, size_t *size_p);
void cm_msg_set_body (cm_msg_t *self, const void *data, size_t size);
//  Take ownership of a malloc'd buffer (nulls *data_p).
void cm_msg_set_body_owned (cm_msg_t *self, char **data_p, size_t size);

//  headers: REQUEST (those that matter), PARTIAL/FINAL (response headers).
void cm_msg_header_add (cm_msg_t *self, const char *name, const char *value);
//  Case-insensitive lookup; borrowed, NULL when absent.
const char *cm_msg_header (cm_msg_t *self, const char *name);
size_t cm_msg_header_count (cm_msg_t *self);
//  The index-th header's name and value (borrowed).
void cm_msg_header_at (cm_msg_t *self, size_t index, const char **name,
                       const char **value);

#endif
