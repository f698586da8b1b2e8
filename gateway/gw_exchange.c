/*  gw_exchange.c: see gw_exchange.h. */
#include "gw_exchange.h"
#include "cm_utf8.h"
#include "cm_log.h"
#include <jansson.h>
#include <pthread.h>
#include <stdatomic.h>

struct gw_exchange_s {
    atomic_int refs;                   //  references held
    pthread_mutex_t lock;              //  guards everything below
    char *request_id;                  //  gateway-made id
    struct MHD_Connection *connection; //  NULL once closed
    int fd;                            //  the client socket
    bool suspended;                    //  we suspended it and owe a resume
    bool started;                      //  first reply part arrived
    bool streaming;                    //  first part was a PARTIAL
    bool responded;                    //  an MHD response is queued
    bool ended;                        //  last part arrived (or failed)
    int status;                        //  HTTP status of the reply
    cm_msg_t *head;                    //  first reply part: content type, headers
    cm_msg_t *extra;                   //  headers the gateway adds (rate limits),
                                       //  NULL when none
    char *data;                        //  bytes not yet handed to MHD
    size_t size, offset, capacity;     //  of data
    size_t limit;                      //  most of a stream held (0: no limit)
    bool openai;                       //  the stream is OpenAI's chunks
    char stream_uuid[64];              //  the chat stream's uuid ("": unknown)
};

gw_exchange_t *
gw_exchange_new (const char *request_id, struct MHD_Connection *connection,
                 size_t buffer_limit)
{
    gw_exchange_t *self = cm_calloc (1, sizeof *self);
    self->limit = buffer_limit;
    atomic_init (&self->refs, 1);
    pthread_mutex_init (&self->lock, NULL);
    self->request_id = cm_strdup (request_id);
    self->connection = connection;
    const union MHD_ConnectionInfo *info =
        connection
            ? MHD_get_connection_info (connection, MHD_CONNECTION_INFO_CONNECTION_FD)
            : NULL;
    self->fd = info ? info->connect_fd : -1;
    return self;
}

gw_exchange_t *
gw_exchange_ref (gw_exchange_t *self)
{
    assert (self);
    atomic_fetch_add (&self->refs, 1);
    return self;
}

void
gw_exchange_unref (gw_exchange_t **self_p)
{
    assert (self_p);
    gw_exchange_t *self = *self_p;
    if (!self)
        return;
    *self_p = NULL;
    if (atomic_fetch_sub (&self->refs, 1) != 1)
        return;
    cm_msg_destroy (&self->head);
    cm_msg_destroy (&self->extra);
    free (self->data);
    free (self->request_id);
    pthread_mutex_destroy (&self->lock);
    free (self);
}

const char *
gw_exchange_request_id (gw_exchange_t *self)
{
    assert (self);
    return self->request_id;
}

//  Lock held. Append bytes for the client.
static void
s_append (gw_exchange_t *self, const char *data, size_t size)
{
    if (!size)
        return;
    if (self->offset && self->offset == self->size)
        self->offset = self->size = 0;
    if (self->size + size > self->capacity) {
        //  Compact before growing: the reader may have consumed a prefix.
        if (self->offset) {
            memmove (self->data, self->data + self->offset, self->size - self->offset);
            self->size -= self->offset;
            self->offset = 0;
        }
        if (self->size + size > self->capacity) {
            self->capacity = (self->size + size) * 2;
            self->data = cm_realloc (self->data, self->capacity);
        }
    }
    memcpy (self->data + self->size, data, size);
    self->size += size;
}

//  Lock held. Wake the HTTP side if it is waiting for us.
static void
s_wake (gw_exchange_t *self)
{
    if (self->suspended && self->connection) {
        self->suspended = false;
        MHD_resume_connection (self->connection);
    }
}

//  Lock held. The first part of a stream says which it is: OpenAI's
//  chunks, or a chat stream, whose events carry its uuid. (The gateway's
//  own failure events must match them.)
static void
s_learn_stream (gw_exchange_t *self, const char *body, size_t size)
{
    char head[513];
    size_t n = size < sizeof head - 1 ? size : sizeof head - 1;
    memcpy (head, body, n);
    head[n] = 0;
    if (strstr (head, "\"chat.completion.chunk\"")) {
        self->openai = true;
        return;
    }
    const char *uuid = strstr (head, "\"uuid\":\"");
    if (!uuid)
        return;
    uuid += 8;
    size_t len = strcspn (uuid, "\"\\");
    if (uuid[len] == '"' && len < sizeof self->stream_uuid) {
        memcpy (self->stream_uuid, uuid, len);
        self->stream_uuid[len] = 0;
    }
}

//  Lock held. Append one SSE event (data: JSON) for the client.
static void
s_append_event (gw_exchange_t *self, json_t *event)
{
    char *json = event ? json_dumps (event, JSON_COMPACT) : NULL;
    json_decref (event);
    if (!json)
        return;
    s_append (self, "data: ", 6);
    s_append (self, json, strlen (json));
    s_append (self, "\n\n", 2);
    free (json);
}

//  Lock held: gw_exchange_fail.
static void
s_fail (gw_exchange_t *self, int status, const char *text)
{
    if (self->ended)
        return;
    if (!self->started) {
        self->started = true;
        self->status = status;
        self->head = cm_msg_new (CM_MSG_FINAL);
        cm_msg_set_content_type (self->head, "application/json");
        if (status == 503 || status == 429)
            cm_msg_header_add (self->head, "Retry-After", "1");
        json_t *body = json_pack ("{s:s}", "error", text);
        char *json = body ? json_dumps (body, JSON_COMPACT) : NULL;
        json_decref (body);
        if (json)
            s_append (self, json, strlen (json));
        free (json);
    } else if (self->streaming && self->head &&
               !strncmp (cm_msg_content_type (self->head), "text/event-stream", 17)) {
        if (self->openai)
            //  As chatd ends an OpenAI stream that fails: the error event,
            //  which OpenAI's client libraries raise; no [DONE].
            s_append_event (self,
                            json_pack ("{s:{s:s, s:s, s:n, s:n}}", "error", "message",
                                       text, "type", "server_error", "param", "code"));
        else {
            //  API.md: a mid-stream failure is the abort event, then the
            //  finalize event; both with the stream's uuid.
            const char *uuid = *self->stream_uuid ? self->stream_uuid : self->request_id;
            s_append_event (self, json_pack ("{s:s, s:s, s:n, s:[], s:b, s:s}", "uuid",
                                             uuid, "type", "abort", "textResponse",
                                             "sources", "close", 1, "error", text));
            s_append_event (self,
                            json_pack ("{s:s, s:s, s:b, s:b}", "uuid", uuid, "type",
                                       "finalizeResponseStream", "close", 1, "error", 0));
        }
    }
    self->ended = true;
    s_wake (self);
}

gw_delivery_t
gw_exchange_deliver (gw_exchange_t *self, cm_msg_t *reply)
{
    assert (self && reply);
    bool final = cm_msg_type (reply) == CM_MSG_FINAL;
    gw_delivery_t outcome = final ? GW_DELIVERED_LAST : GW_DELIVERED;
    size_t size;
    const char *body = cm_msg_body (reply, &size);
    pthread_mutex_lock (&self->lock);
    if (!self->ended) {
        if (!self->started) {
            self->started = true;
            self->streaming = !final;
            self->status = cm_msg_status (reply) ? cm_msg_status (reply) : 200;
            self->head = cm_msg_new (CM_MSG_FINAL);
            cm_msg_set_content_type (self->head, cm_msg_content_type (reply));
            for (size_t i = 0; i < cm_msg_header_count (reply); i++) {
                const char *name, *value;
                cm_msg_header_at (reply, i, &name, &value);
                cm_msg_header_add (self->head, name, value);
            }
            if (self->streaming)
                s_learn_stream (self, body, size);
        }
        if (self->streaming && !final && self->limit &&
            self->size - self->offset + size > self->limit) {
            //  The client reads slower than the answer comes: end its stream
            //  rather than hold the rest of the answer for it.
            char message[160];
            snprintf (message, sizeof message,
                      "The client read the answer too slowly: %zu bytes were waiting "
                      "for it (GATEWAY_STREAM_BUFFER_BYTES).",
                      self->size - self->offset);
            s_fail (self, 502, message);
            outcome = GW_DELIVERY_TOO_SLOW;
        } else {
            s_append (self, body, size);
            self->ended = final;
            s_wake (self);
        }
    }
    pthread_mutex_unlock (&self->lock);
    return outcome;
}

void
gw_exchange_fail (gw_exchange_t *self, int status, const char *message)
{
    assert (self && message);
    //  A message may quote a daemon's id or the request: UTF-8 for JSON.
    char *text = cm_utf8_dup (message);
    pthread_mutex_lock (&self->lock);
    s_fail (self, status, text);
    pthread_mutex_unlock (&self->lock);
    free (text);
}

void
gw_exchange_header_add (gw_exchange_t *self, const char *name, const char *value)
{
    assert (self && name && value);
    pthread_mutex_lock (&self->lock);
    assert (!self->responded);
    //  A message is a handy ordered list of headers; only that part is used.
    if (!self->extra)
        self->extra = cm_msg_new (CM_MSG_FINAL);
    cm_msg_header_add (self->extra, name, value);
    pthread_mutex_unlock (&self->lock);
}

int
gw_exchange_suspended_fd (gw_exchange_t *self)
{
    assert (self);
    pthread_mutex_lock (&self->lock);
    int fd = self->suspended && self->connection ? self->fd : -1;
    pthread_mutex_unlock (&self->lock);
    return fd;
}

bool
gw_exchange_started (gw_exchange_t *self)
{
    assert (self);
    pthread_mutex_lock (&self->lock);
    bool started = self->started;
    pthread_mutex_unlock (&self->lock);
    return started;
}

//  MHD content reader for streamed replies: hand over what arrived, or
//  suspend until the broker delivers more.
static ssize_t
s_reader (void *cls, uint64_t pos, char *buf, size_t max)
{
    (void) pos;
    gw_exchange_t *self = cls;
    ssize_t rc;
    pthread_mutex_lock (&self->lock);
    size_t available = self->size - self->offset;
    if (available) {
        size_t n = available < max ? available : max;
        memcpy (buf, self->data + self->offset, n);
        self->offset += n;
        rc = (ssize_t) n;
    } else if (self->ended)
        rc = MHD_CONTENT_READER_END_OF_STREAM;
    else {
        self->suspended = true;
        MHD_suspend_connection (self->connection);
        rc = 0;
    }
    pthread_mutex_unlock (&self->lock);
    return rc;
}

static void
s_reader_free (void *cls)
{
    gw_exchange_t *self = cls;
    gw_exchange_unref (&self);
}

static void
s_add_headers (gw_exchange_t *self, struct MHD_Response *response)
{
    const char *type = cm_msg_content_type (self->head);
    MHD_add_response_header (response, MHD_HTTP_HEADER_CONTENT_TYPE,
                             *type ? type : "application/json");
    MHD_add_response_header (response, "X-Request-Id", self->request_id);
    for (size_t i = 0; i < cm_msg_header_count (self->head); i++) {
        const char *name, *value;
        cm_msg_header_at (self->head, i, &name, &value);
        MHD_add_response_header (response, name, value);
    }
    for (size_t i = 0; self->extra && i < cm_msg_header_count (self->extra); i++) {
        const char *name, *value;
        cm_msg_header_at (self->extra, i, &name, &value);
        MHD_add_response_header (response, name, value);
    }
    if (!strncmp (type, "text/event-stream", 17)) {
        MHD_add_response_header (response, MHD_HTTP_HEADER_CACHE_CONTROL, "no-cache");
        MHD_add_response_header (response, "X-Accel-Buffering", "no");
    }
}

enum MHD_Result
gw_exchange_respond (gw_exchange_t *self)
{
    assert (self);
    enum MHD_Result rc = MHD_YES;
    pthread_mutex_lock (&self->lock);
    if (self->responded || !self->connection) {
        pthread_mutex_unlock (&self->lock);
        return MHD_YES;
    }
    if (!self->started) {
        //  Woken early (nothing to say yet): wait again.
        self->suspended = true;
        MHD_suspend_connection (self->connection);
    } else if (self->ended && !self->streaming) {
        struct MHD_Response *response = MHD_create_response_from_buffer (
            self->size - self->offset, self->data + self->offset, MHD_RESPMEM_MUST_COPY);
        s_add_headers (self, response);
        rc = MHD_queue_response (self->connection, (unsigned) self->status, response);
        MHD_destroy_response (response);
        self->offset = self->size;
        self->responded = true;
    } else {
        //  The reader holds its own reference until MHD frees the response.
        struct MHD_Response *response = MHD_create_response_from_callback (
            MHD_SIZE_UNKNOWN, 4 * 1024, s_reader, gw_exchange_ref (self), s_reader_free);
        s_add_headers (self, response);
        rc = MHD_queue_response (self->connection, (unsigned) self->status, response);
        MHD_destroy_response (response);
        self->responded = true;
    }
    pthread_mutex_unlock (&self->lock);
    return rc;
}

bool
gw_exchange_close (gw_exchange_t *self)
{
    assert (self);
    pthread_mutex_lock (&self->lock);
    bool open = !self->ended;
    self->ended = true;
    self->connection = NULL;
    self->suspended = false;
    pthread_mutex_unlock (&self->lock);
    return open;
}
