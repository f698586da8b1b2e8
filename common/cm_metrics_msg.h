/*  cm_metrics_msg.h: the metrics channel's wire message (see the "Metrics
    channel" section of docs/protocol.md).

    Every daemon instance and the gateway REPORT their registry's snapshot
    to the supervisor about once a second; the gateway sends a QUERY and the
    supervisor answers with the AGGREGATE. One ZeroMQ frame holds one
    message, a msgpack array whose fields depend on the type:

        REPORT     [1, 1, service, instance, seq, sent_ms, snapshot]
        QUERY      [1, 2, id]
        AGGREGATE  [1, 3, id, aggregate]

    service and instance are strings, seq (the report's number) and id (the
    query's, echoed in its AGGREGATE) unsigned integers, sent_ms a wall-clock
    time in ms, snapshot and aggregate JSON objects as msgpack strings (the
    cm_metrics snapshot format, and sup_metrics's aggregate). A frame of
    another version or type, with the wrong fields, over
    CM_METRICS_MSG_MAX_BYTES, or whose JSON is not an object, is refused by
    cm_metrics_msg_decode. A message belongs to one thread. */
#ifndef CM_METRICS_MSG_H_INCLUDED
#define CM_METRICS_MSG_H_INCLUDED

#include "cm_common.h"
#include <jansson.h>

#define CM_METRICS_MSG_VERSION 1
//  Largest frame either side accepts (a snapshot is some tens of KiB).
#define CM_METRICS_MSG_MAX_BYTES (16u * 1024 * 1024)

typedef enum {
    CM_METRICS_MSG_REPORT = 1,    //  instance -> supervisor: a snapshot
    CM_METRICS_MSG_QUERY = 2,     //  gateway -> supervisor: send the aggregate
    CM_METRICS_MSG_AGGREGATE = 3, //  supervisor -> gateway: the aggregate
} cm_metrics_msg_type_t;

typedef struct cm_metrics_msg_s cm_metrics_msg_t;

//  Create an empty message of this type. Caller owns it.
cm_metrics_msg_t *cm_metrics_msg_new (cm_metrics_msg_type_t type);
//  Destroy; NULL-safe; nulls the pointer.
void cm_metrics_msg_destroy (cm_metrics_msg_t **self_p);

//  Encode into a newly allocated buffer; caller frees *data_p.
void cm_metrics_msg_encode (cm_metrics_msg_t *self, char **data_p, size_t *size_p);
//  Decode a frame. Returns a new message, or NULL with the reason in err.
cm_metrics_msg_t *cm_metrics_msg_decode (const void *data, size_t size, char *err,
                                         size_t errlen);

cm_metrics_msg_type_t cm_metrics_msg_type (cm_metrics_msg_t *self);
//  REPORT: who reports. Getters borrow ("" when unset); setters copy.
const char *cm_metrics_msg_service (cm_metrics_msg_t *self);
void cm_metrics_msg_set_service (cm_metrics_msg_t *self, const char *service);
const char *cm_metrics_msg_instance (cm_metrics_msg_t *self);
void cm_metrics_msg_set_instance (cm_metrics_msg_t *self, const char *instance);
//  REPORT: sequence number; QUERY, AGGREGATE: query id.
uint64_t cm_metrics_msg_id (cm_metrics_msg_t *self);
void cm_metrics_msg_set_id (cm_metrics_msg_t *self, uint64_t id);
//  REPORT: wall-clock ms when it was sent.
int64_t cm_metrics_msg_sent_ms (cm_metrics_msg_t *self);
void cm_metrics_msg_set_sent_ms (cm_metrics_msg_t *self, int64_t sent_ms);
//  REPORT: the snapshot; AGGREGATE: the aggregate. Getter borrows (NULL when
//  unset); setter takes the reference (a JSON object).
json_t *cm_metrics_msg_body (cm_metrics_msg_t *self);
void cm_metrics_msg_set_body (cm_metrics_msg_t *self, json_t *body);

#endif
