/*  cm_msg.c: see cm_msg.h. The field list of each type lives in one table
    (s_layout) that both the encoder and the decoder walk, so the two can
    never disagree. */
#include "cm_msg.h"
#include <msgpack.h>
#include <strings.h>

typedef enum {
    F_END = 0,
    F_SERVICE,
    F_INSTANCE,
    F_CAPACITY,
    F_REQUEST_ID,
    F_METHOD,
    F_ROUTE,
    F_DEADLINE,
    F_IDENTITY,
    F_HEADERS,
    F_BODY,
    F_STATUS,
    F_CONTENT_TYPE,
    F_REASON,
    F_HELD,
    F_PARTIALS,
    F_GENERATION,
} s_field_t;

#define S_MAX_FIELDS 9
static const s_field_t s_layout[CM_MSG_LAST + 1][S_MAX_FIELDS] = {
    [CM_MSG_READY] = {F_SERVICE, F_INSTANCE, F_CAPACITY},
    [CM_MSG_REQUEST] = {F_REQUEST_ID, F_SERVICE, F_METHOD, F_ROUTE, F_DEADLINE,
                        F_IDENTITY, F_HEADERS, F_BODY},
    [CM_MSG_PARTIAL] = {F_REQUEST_ID, F_STATUS, F_CONTENT_TYPE, F_HEADERS, F_BODY},
    [CM_MSG_FINAL] = {F_REQUEST_ID, F_STATUS, F_CONTENT_TYPE, F_HEADERS, F_BODY},
    [CM_MSG_CANCEL] = {F_REQUEST_ID, F_REASON},
    [CM_MSG_HEARTBEAT] = {F_CAPACITY},
    [CM_MSG_DISCONNECT] = {F_REASON},
    [CM_MSG_CHECK] = {F_REQUEST_ID, F_GENERATION},
    [CM_MSG_CHECKED] = {F_REQUEST_ID, F_GENERATION, F_HELD, F_PARTIALS},
};

static const char *s_type_names[] = {"?",     "READY",  "REQUEST",   "PARTIAL",
                                     "FINAL", "CANCEL", "HEARTBEAT", "DISCONNECT",
                                     "CHECK", "CHECKED"};

//  Bounds that keep a hostile frame from making us allocate without limit.
#define S_MAX_HEADERS 64
#define S_MAX_STRING  (64 * 1024)

struct cm_msg_s {
    cm_msg_type_t type;  //  one of cm_msg_type_t
    char *service;       //  owning service name ("chat")
    char *instance;      //  instance id of a daemon
    char *request_id;    //  gateway-made id of one HTTP request
    char *method;        //  HTTP method
    char *route;         //  HTTP path with query string
    char *identity;      //  who called (the API key's id)
    char *content_type;  //  reply content type
    char *reason;        //  why a CANCEL/DISCONNECT
    uint32_t capacity;   //  slots (READY: total, HEARTBEAT: free)
    int64_t deadline;    //  wall ms; 0 none
    uint16_t status;     //  HTTP status of a reply
    bool held;           //  CHECKED: the daemon holds the request
    uint32_t partials;   //  CHECKED: PARTIALs the daemon sent for it
    uint32_t generation; //  CHECK, CHECKED: which CHECK (the gateway's count)
    char *body;          //  payload bytes, NUL-terminated for convenience
    size_t body_size;    //  payload length without the NUL
    char **headers;      //  name, value, name, value, ...
    size_t header_count; //  number of pairs
};

cm_msg_t *
cm_msg_new (cm_msg_type_t type)
{
    assert (type >= CM_MSG_READY && type <= CM_MSG_LAST);
    cm_msg_t *self = cm_calloc (1, sizeof *self);
    self->type = type;
    return self;
}

void
cm_msg_destroy (cm_msg_t **self_p)
{
    assert (self_p);
    cm_msg_t *self = *self_p;
    if (!self)
        return;
    free (self->service);
    free (self->instance);
    free (self->request_id);
    free (self->method);
    free (self->route);
    free (self->identity);
    free (self->content_type);
    free (self->reason);
    free (self->body);
    for (size_t i = 0; i < self->header_count * 2; i++)
        free (self->headers[i]);
    free (self->headers);
    free (self);
    *self_p = NULL;
}

static char **
s_string_slot (cm_msg_t *self, s_field_t field)
{
    switch (field) {
        case F_SERVICE:
            return &self->service;
        case F_INSTANCE:
            return &self->instance;
        case F_REQUEST_ID:
            return &self->request_id;
        case F_METHOD:
            return &self->method;
        case F_ROUTE:
            return &self->route;
        case F_IDENTITY:
            return &self->identity;
        case F_CONTENT_TYPE:
            return &self->content_type;
        case F_REASON:
            return &self->reason;
        default:
            return NULL;
    }
}

static void
s_pack_str (msgpack_packer *pk, const char *s)
{
    size_t len = s ? strlen (s) : 0;
    msgpack_pack_str (pk, len);
    msgpack_pack_str_body (pk, s ? s : "", len);
}

void
cm_msg_encode (cm_msg_t *self, char **data_p, size_t *size_p)
{
    assert (self && data_p && size_p);
    const s_field_t *layout = s_layout[self->type];
    size_t nfields = 0;
    while (nfields < S_MAX_FIELDS && layout[nfields] != F_END)
        nfields++;

    msgpack_sbuffer sbuf;
    msgpack_sbuffer_init (&sbuf);
    msgpack_packer pk;
    msgpack_packer_init (&pk, &sbuf, msgpack_sbuffer_write);
    msgpack_pack_array (&pk, 2 + nfields);
    msgpack_pack_uint8 (&pk, CM_MSG_VERSION);
    msgpack_pack_uint8 (&pk, (uint8_t) self->type);
    for (size_t i = 0; i < nfields; i++) {
        s_field_t f = layout[i];
        char **slot = s_string_slot (self, f);
        if (slot)
            s_pack_str (&pk, *slot);
        else if (f == F_CAPACITY)
            msgpack_pack_uint32 (&pk, self->capacity);
        else if (f == F_DEADLINE)
            msgpack_pack_int64 (&pk, self->deadline);
        else if (f == F_STATUS)
            msgpack_pack_uint16 (&pk, self->status);
        else if (f == F_HELD)
            msgpack_pack_uint8 (&pk, self->held ? 1 : 0);
        else if (f == F_PARTIALS)
            msgpack_pack_uint32 (&pk, self->partials);
        else if (f == F_GENERATION)
            msgpack_pack_uint32 (&pk, self->generation);
        else if (f == F_BODY) {
            msgpack_pack_bin (&pk, self->body_size);
            msgpack_pack_bin_body (&pk, self->body ? self->body : "", self->body_size);
        } else if (f == F_HEADERS) {
            msgpack_pack_map (&pk, self->header_count);
            for (size_t h = 0; h < self->header_count * 2; h++)
                s_pack_str (&pk, self->headers[h]);
        }
    }
    //  The sbuffer's malloc'd data becomes the caller's.
    *size_p = sbuf.size;
    *data_p = msgpack_sbuffer_release (&sbuf);
    if (!*data_p)
        *data_p = cm_malloc (1);
}

static bool
s_get_str (const msgpack_object *o, char **out)
{
    if (o->type != MSGPACK_OBJECT_STR || o->via.str.size > S_MAX_STRING)
        return false;
    //  msgpack-c leaves ptr stale or NULL for an empty string: no reading it.
    size_t size = o->via.str.size;
    if (size && memchr (o->via.str.ptr, 0, size))
        return false;
    free (*out);
    *out = size ? cm_strndup (o->via.str.ptr, size) : cm_strdup ("");
    return true;
}

static bool
s_get_uint (const msgpack_object *o, uint64_t max, uint64_t *out)
{
    if (o->type != MSGPACK_OBJECT_POSITIVE_INTEGER || o->via.u64 > max)
        return false;
    *out = o->via.u64;
    return true;
}

//  Walk the msgpack structure without building it, so a hostile header
//  ("an array of 4 billion items") is refused before msgpack-c allocates
//  for it. Returns true when the frame holds one object of at most
//  S_MAX_OBJECTS objects in all, each within the frame's bytes.
#define S_MAX_OBJECTS 1024

static bool
s_prescan (const unsigned char *p, size_t size)
{
    size_t at = 0, todo = 1, seen = 0;
    while (todo) {
        if (at >= size || ++seen > S_MAX_OBJECTS)
            return false;
        unsigned char c = p[at++];
        uint64_t skip = 0, children = 0;
        int len_bytes = 0;
        if (c <= 0x7f || c >= 0xe0 || c == 0xc0 || c == 0xc2 || c == 0xc3)
            skip = 0;
        else if (c >= 0x80 && c <= 0x8f)
            children = 2u * (c & 0x0f);
        else if (c >= 0x90 && c <= 0x9f)
            children = c & 0x0f;
        else if (c >= 0xa0 && c <= 0xbf)
            skip = c & 0x1f;
        else {
            switch (c) {
                case 0xc4:
                case 0xd9:
                    len_bytes = 1;
                    break;
                case 0xc5:
                case 0xda:
                    len_bytes = 2;
                    break;
                case 0xc6:
                case 0xdb:
                    len_bytes = 4;
                    break;
                case 0xc7:
                    len_bytes = 1;
                    skip = 1;
                    break;
                case 0xc8:
                    len_bytes = 2;
                    skip = 1;
                    break;
                case 0xc9:
                    len_bytes = 4;
                    skip = 1;
                    break;
                case 0xca:
                    skip = 4;
                    break;
                case 0xcb:
                    skip = 8;
                    break;
                case 0xcc:
                case 0xd0:
                    skip = 1;
                    break;
                case 0xcd:
                case 0xd1:
                    skip = 2;
                    break;
                case 0xce:
                case 0xd2:
                    skip = 4;
                    break;
                case 0xcf:
                case 0xd3:
                    skip = 8;
                    break;
                case 0xd4:
                    skip = 2;
                    break;
                case 0xd5:
                    skip = 3;
                    break;
                case 0xd6:
                    skip = 5;
                    break;
                case 0xd7:
                    skip = 9;
                    break;
                case 0xd8:
                    skip = 17;
                    break;
                case 0xdc:
                case 0xde:
                    len_bytes = 2;
                    break;
                case 0xdd:
                case 0xdf:
                    len_bytes = 4;
                    break;
                default:
                    return false; //  0xc1 is never used
            }
            if (len_bytes) {
                if (size - at < (size_t) len_bytes)
                    return false;
                uint64_t n = 0;
                for (int i = 0; i < len_bytes; i++)
                    n = (n << 8) | p[at++];
                if (c >= 0xdc)
                    children = (c == 0xde || c == 0xdf) ? 2 * n : n;
                else
                    skip += n;
            }
        }
        if (children > S_MAX_OBJECTS || skip > size - at)
            return false;
        at += skip;
        todo = todo - 1 + children;
    }
    return true;
}

cm_msg_t *
cm_msg_decode (const void *data, size_t size, char *err, size_t errlen)
{
    assert (data || size == 0);
    cm_msg_t *self = NULL;
    if (size > CM_MSG_MAX_BYTES) {
        snprintf (err, errlen, "frame of %zu bytes is over the %u byte limit", size,
                  CM_MSG_MAX_BYTES);
        return NULL;
    }
    msgpack_unpacked result;
    msgpack_unpacked_init (&result);
    if (!s_prescan (data, size)) {
        snprintf (err, errlen, "malformed or truncated frame (%zu bytes)", size);
        goto fail;
    }
    size_t offset = 0;
    msgpack_unpack_return rc = msgpack_unpack_next (&result, data, size, &offset);
    if (rc != MSGPACK_UNPACK_SUCCESS) {
        snprintf (err, errlen, "%s frame (%zu bytes)",
                  rc == MSGPACK_UNPACK_CONTINUE ? "truncated" : "malformed", size);
        goto fail;
    }
    if (offset != size) {
        snprintf (err, errlen, "%zu trailing bytes after the message", size - offset);
        goto fail;
    }
    const msgpack_object *root = &result.data;
    if (root->type != MSGPACK_OBJECT_ARRAY || root->via.array.size < 2) {
        snprintf (err, errlen, "frame is not an array [version, type, ...]");
        goto fail;
    }
    const msgpack_object *items = root->via.array.ptr;
    uint64_t version, type;
    if (!s_get_uint (&items[0], 255, &version) || version != CM_MSG_VERSION) {
        snprintf (err, errlen, "unsupported protocol version (want %d)", CM_MSG_VERSION);
        goto fail;
    }
    if (!s_get_uint (&items[1], CM_MSG_LAST, &type) || type < CM_MSG_READY) {
        snprintf (err, errlen, "unknown message type");
        goto fail;
    }
    self = cm_msg_new ((cm_msg_type_t) type);
    const s_field_t *layout = s_layout[type];
    size_t nfields = 0;
    while (nfields < S_MAX_FIELDS && layout[nfields] != F_END)
        nfields++;
    if (root->via.array.size != 2 + nfields) {
        snprintf (err, errlen, "%s has %u fields, expected %zu", s_type_names[type],
                  root->via.array.size - 2, nfields);
        goto fail;
    }
    for (size_t i = 0; i < nfields; i++) {
        const msgpack_object *o = &items[2 + i];
        s_field_t f = layout[i];
        char **slot = s_string_slot (self, f);
        bool ok = true;
        uint64_t u = 0;
        if (slot)
            ok = s_get_str (o, slot);
        else if (f == F_CAPACITY) {
            ok = s_get_uint (o, UINT32_MAX, &u);
            self->capacity = (uint32_t) u;
        } else if (f == F_STATUS) {
            ok = s_get_uint (o, 999, &u);
            self->status = (uint16_t) u;
        } else if (f == F_HELD) {
            ok = s_get_uint (o, 1, &u);
            self->held = u == 1;
        } else if (f == F_PARTIALS) {
            ok = s_get_uint (o, UINT32_MAX, &u);
            self->partials = (uint32_t) u;
        } else if (f == F_GENERATION) {
            ok = s_get_uint (o, UINT32_MAX, &u);
            self->generation = (uint32_t) u;
        } else if (f == F_DEADLINE) {
            if (o->type == MSGPACK_OBJECT_POSITIVE_INTEGER && o->via.u64 <= INT64_MAX)
                self->deadline = (int64_t) o->via.u64;
            else if (o->type == MSGPACK_OBJECT_NEGATIVE_INTEGER)
                self->deadline = o->via.i64;
            else
                ok = false;
        } else if (f == F_BODY) {
            ok = o->type == MSGPACK_OBJECT_BIN;
            if (ok)
                cm_msg_set_body (self, o->via.bin.size ? o->via.bin.ptr : NULL,
                                 o->via.bin.size);
        } else if (f == F_HEADERS) {
            ok = o->type == MSGPACK_OBJECT_MAP && o->via.map.size <= S_MAX_HEADERS;
            for (uint32_t h = 0; ok && h < o->via.map.size; h++) {
                char *name = NULL, *value = NULL;
                ok = s_get_str (&o->via.map.ptr[h].key, &name) &&
                     s_get_str (&o->via.map.ptr[h].val, &value);
                if (ok)
                    cm_msg_header_add (self, name, value);
                free (name);
                free (value);
            }
        }
        if (!ok) {
            snprintf (err, errlen, "%s field %zu has the wrong type or size",
                      s_type_names[type], i + 1);
            goto fail;
        }
    }
    msgpack_unpacked_destroy (&result);
    return self;
fail:
    cm_msg_destroy (&self);
    msgpack_unpacked_destroy (&result);
    return NULL;
}

const char *
cm_msg_type_name (int type)
{
    return type >= CM_MSG_READY && type <= CM_MSG_LAST ? s_type_names[type] : "?";
}

cm_msg_type_t
cm_msg_type (cm_msg_t *self)
{
    assert (self);
    return self->type;
}

#define S_STRING_ACCESSORS(field)                                                        \
    const char *cm_msg_##field (cm_msg_t *self)                                          \
    {                                                                                    \
        assert (self);                                                                   \
        return self->field ? self->field : "";                                           \
    }                                                                                    \
    void cm_msg_set_##field (cm_msg_t *self, const char *value)                          \
    {                                                                                    \
        assert (self);                                                                   \
        free (self->field);                                                              \
        self->field = value ? cm_strdup (value) : NULL;                                  \
    }

S_STRING_ACCESSORS (service)
S_STRING_ACCESSORS (instance)
S_STRING_ACCESSORS (request_id)
S_STRING_ACCESSORS (method)
S_STRING_ACCESSORS (route)
S_STRING_ACCESSORS (identity)
S_STRING_ACCESSORS (content_type)
S_STRING_ACCESSORS (reason)

#define S_NUMBER_ACCESSORS(field, type)                                                  \
    type cm_msg_##field (cm_msg_t *self)                                                 \
    {                                                                                    \
        assert (self);                                                                   \
        return self->field;                                                              \
    }                                                                                    \
    void cm_msg_set_##field (cm_msg_t *self, type value)                                 \
    {                                                                                    \
        assert (self);                                                                   \
        self->field = value;                                                             \
    }

S_NUMBER_ACCESSORS (capacity, uint32_t)
S_NUMBER_ACCESSORS (deadline, int64_t)
S_NUMBER_ACCESSORS (status, uint16_t)
S_NUMBER_ACCESSORS (held, bool)
S_NUMBER_ACCESSORS (partials, uint32_t)
S_NUMBER_ACCESSORS (generation, uint32_t)

const char *
cm_msg_body (cm_msg_t *self, size_t *size_p)
{
    assert (self);
    if (size_p)
        *size_p = self->body_size;
    return self->body ? self->body : "";
}

void
cm_msg_set_body (cm_msg_t *self, const void *data, size_t size)
{
    assert (self);
    assert (data || size == 0);
    char *copy = cm_malloc (size + 1);
    if (size)
        memcpy (copy, data, size);
    copy[size] = 0;
    free (self->body);
    self->body = copy;
    self->body_size = size;
}

void
cm_msg_set_body_owned (cm_msg_t *self, char **data_p, size_t size)
{
    assert (self && data_p);
    free (self->body);
    self->body = *data_p;
    self->body_size = size;
    *data_p = NULL;
}

void
cm_msg_header_add (cm_msg_t *self, const char *name, const char *value)
{
    assert (self && name && value);
    self->headers =
        cm_realloc (self->headers, (self->header_count + 1) * 2 * sizeof (char *));
    self->headers[self->header_count * 2] = cm_strdup (name);
    self->headers[self->header_count * 2 + 1] = cm_strdup (value);
    self->header_count++;
}

const char *
cm_msg_header (cm_msg_t *self, const char *name)
{
    assert (self && name);
    for (size_t i = 0; i < self->header_count; i++)
        if (!strcasecmp (self->headers[i * 2], name))
            return self->headers[i * 2 + 1];
    return NULL;
}

size_t
cm_msg_header_count (cm_msg_t *self)
{
    assert (self);
    return self->header_count;
}

void
cm_msg_header_at (cm_msg_t *self, size_t index, const char **name, const char **value)
{
    assert (self && index < self->header_count);
    *name = self->headers[index * 2];
    *value = self->headers[index * 2 + 1];
}
