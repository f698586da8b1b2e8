/*  cm_metrics_msg.c: see cm_metrics_msg.h. Frames are packed with msgpack-c
    and read back by a small reader of exactly the few types the layout
    uses (a fixed array, unsigned and signed integers, strings): a frame
    from outside can make it neither allocate nor recurse. */
#include "cm_metrics_msg.h"
#include <msgpack.h>

//  Longest service or instance name accepted.
#define S_MAX_NAME 256

struct cm_metrics_msg_s {
    cm_metrics_msg_type_t type; //  REPORT, QUERY or AGGREGATE
    char *service;              //  REPORT: service name
    char *instance;             //  REPORT: instance id
    uint64_t id;                //  REPORT: sequence; QUERY, AGGREGATE: query id
    int64_t sent_ms;            //  REPORT: wall-clock ms
    json_t *body;               //  REPORT: snapshot; AGGREGATE: aggregate
};

cm_metrics_msg_t *
cm_metrics_msg_new (cm_metrics_msg_type_t type)
{
    assert (type >= CM_METRICS_MSG_REPORT && type <= CM_METRICS_MSG_AGGREGATE);
    cm_metrics_msg_t *self = cm_calloc (1, sizeof *self);
    self->type = type;
    return self;
}

void
cm_metrics_msg_destroy (cm_metrics_msg_t **self_p)
{
    assert (self_p);
    cm_metrics_msg_t *self = *self_p;
    if (!self)
        return;
    free (self->service);
    free (self->instance);
    json_decref (self->body);
    free (self);
    *self_p = NULL;
}

static void
s_pack_str (msgpack_packer *pk, const char *s, size_t len)
{
    msgpack_pack_str (pk, len);
    msgpack_pack_str_body (pk, s, len);
}

void
cm_metrics_msg_encode (cm_metrics_msg_t *self, char **data_p, size_t *size_p)
{
    assert (self && data_p && size_p);
    msgpack_sbuffer sbuf;
    msgpack_sbuffer_init (&sbuf);
    msgpack_packer pk;
    msgpack_packer_init (&pk, &sbuf, msgpack_sbuffer_write);
    size_t fields = self->type == CM_METRICS_MSG_REPORT  ? 5
                    : self->type == CM_METRICS_MSG_QUERY ? 1
                                                         : 2;
    msgpack_pack_array (&pk, 2 + fields);
    msgpack_pack_uint8 (&pk, CM_METRICS_MSG_VERSION);
    msgpack_pack_uint8 (&pk, (uint8_t) self->type);
    if (self->type == CM_METRICS_MSG_REPORT) {
        const char *service = cm_metrics_msg_service (self);
        const char *instance = cm_metrics_msg_instance (self);
        s_pack_str (&pk, service, strlen (service));
        s_pack_str (&pk, instance, strlen (instance));
    }
    msgpack_pack_uint64 (&pk, self->id);
    if (self->type == CM_METRICS_MSG_REPORT)
        msgpack_pack_int64 (&pk, self->sent_ms);
    if (self->type != CM_METRICS_MSG_QUERY) {
        //  Doubles with all their digits: a merge sums exactly what was sent.
        char *text = self->body ? json_dumps (self->body, JSON_COMPACT) : NULL;
        s_pack_str (&pk, text ? text : "{}", text ? strlen (text) : 2);
        free (text);
    }
    *size_p = sbuf.size;
    *data_p = msgpack_sbuffer_release (&sbuf);
    if (!*data_p)
        *data_p = cm_malloc (1);
}

//  --- the reader ------------------------------------------------------------

typedef struct {
    const unsigned char *p; //  next byte
    size_t left;            //  bytes left
} s_reader_t;

static bool
s_take (s_reader_t *r, size_t n, uint64_t *value)
{
    if (r->left < n)
        return false;
    uint64_t v = 0;
    for (size_t i = 0; i < n; i++)
        v = (v << 8) | r->p[i];
    r->p += n;
    r->left -= n;
    *value = v;
    return true;
}

static bool
s_read_uint (s_reader_t *r, uint64_t *value)
{
    uint64_t tag;
    if (!s_take (r, 1, &tag))
        return false;
    if (tag <= 0x7f) {
        *value = tag;
        return true;
    }
    switch (tag) {
        case 0xcc:
            return s_take (r, 1, value);
        case 0xcd:
            return s_take (r, 2, value);
        case 0xce:
            return s_take (r, 4, value);
        case 0xcf:
            return s_take (r, 8, value);
        default:
            return false;
    }
}

static bool
s_read_int (s_reader_t *r, int64_t *value)
{
    if (r->left == 0)
        return false;
    unsigned char tag = r->p[0];
    uint64_t v;
    if (tag >= 0xe0) { //  negative fixint
        r->p++;
        r->left--;
        *value = (int8_t) tag;
        return true;
    }
    size_t n = tag == 0xd0 ? 1 : tag == 0xd1 ? 2 : tag == 0xd2 ? 4 : tag == 0xd3 ? 8 : 0;
    if (n == 0) {
        if (!s_read_uint (r, &v) || v > INT64_MAX)
            return false;
        *value = (int64_t) v;
        return true;
    }
    r->p++;
    r->left--;
    if (!s_take (r, n, &v))
        return false;
    //  Sign-extend from n bytes.
    if (n < 8 && (v >> (8 * n - 1)) & 1)
        v |= ~(uint64_t) 0 << (8 * n);
    *value = (int64_t) v;
    return true;
}

static bool
s_read_str (s_reader_t *r, const char **str, size_t *len)
{
    uint64_t tag, n;
    if (!s_take (r, 1, &tag))
        return false;
    if (tag >= 0xa0 && tag <= 0xbf)
        n = tag & 0x1f;
    else if (tag == 0xd9 || tag == 0xda || tag == 0xdb) {
        if (!s_take (r, tag == 0xd9 ? 1 : tag == 0xda ? 2 : 4, &n))
            return false;
    } else
        return false;
    if (n > r->left)
        return false;
    *str = (const char *) r->p;
    *len = (size_t) n;
    r->p += n;
    r->left -= n;
    return true;
}

//  A name: non-empty, bounded, no NUL.
static bool
s_read_name (s_reader_t *r, char **out)
{
    const char *s;
    size_t len;
    if (!s_read_str (r, &s, &len) || len == 0 || len > S_MAX_NAME || memchr (s, 0, len))
        return false;
    *out = cm_strndup (s, len);
    return true;
}

cm_metrics_msg_t *
cm_metrics_msg_decode (const void *data, size_t size, char *err, size_t errlen)
{
    assert (data || size == 0);
    assert (err);
    if (size > CM_METRICS_MSG_MAX_BYTES) {
        snprintf (err, errlen, "frame of %zu bytes is over the %u byte limit", size,
                  CM_METRICS_MSG_MAX_BYTES);
        return NULL;
    }
    s_reader_t r = {data, size};
    uint64_t header, version, type;
    if (!s_take (&r, 1, &header) || header < 0x93 || header > 0x97) {
        snprintf (err, errlen, "frame is not an array [version, type, ...]");
        return NULL;
    }
    size_t fields = (size_t) (header & 0x0f);
    if (!s_read_uint (&r, &version) || version != CM_METRICS_MSG_VERSION) {
        snprintf (err, errlen, "unsupported metrics channel version (want %d)",
                  CM_METRICS_MSG_VERSION);
        return NULL;
    }
    if (!s_read_uint (&r, &type) || type < CM_METRICS_MSG_REPORT ||
        type > CM_METRICS_MSG_AGGREGATE) {
        snprintf (err, errlen, "unknown metrics message type");
        return NULL;
    }
    size_t want = type == CM_METRICS_MSG_REPORT  ? 7
                  : type == CM_METRICS_MSG_QUERY ? 3
                                                 : 4;
    if (fields != want) {
        snprintf (err, errlen, "message of type %d has %zu items, expected %zu",
                  (int) type, fields, want);
        return NULL;
    }
    cm_metrics_msg_t *self = cm_metrics_msg_new ((cm_metrics_msg_type_t) type);
    bool ok = true;
    if (type == CM_METRICS_MSG_REPORT)
        ok = s_read_name (&r, &self->service) && s_read_name (&r, &self->instance);
    ok = ok && s_read_uint (&r, &self->id);
    if (ok && type == CM_METRICS_MSG_REPORT)
        ok = s_read_int (&r, &self->sent_ms);
    if (!ok) {
        snprintf (err, errlen, "a field has the wrong type or size");
        goto fail;
    }
    if (type != CM_METRICS_MSG_QUERY) {
        const char *text;
        size_t len;
        if (!s_read_str (&r, &text, &len)) {
            snprintf (err, errlen, "the JSON field is not a string");
            goto fail;
        }
        json_error_t error;
        self->body = json_loadb (text, len, JSON_REJECT_DUPLICATES, &error);
        if (!json_is_object (self->body)) {
            snprintf (err, errlen, "the JSON field is not an object: %s",
                      self->body ? "another type" : error.text);
            goto fail;
        }
    }
    if (r.left) {
        snprintf (err, errlen, "%zu trailing bytes after the message", r.left);
        goto fail;
    }
    return self;
fail:
    cm_metrics_msg_destroy (&self);
    return NULL;
}

cm_metrics_msg_type_t
cm_metrics_msg_type (cm_metrics_msg_t *self)
{
    assert (self);
    return self->type;
}

const char *
cm_metrics_msg_service (cm_metrics_msg_t *self)
{
    assert (self);
    return self->service ? self->service : "";
}

void
cm_metrics_msg_set_service (cm_metrics_msg_t *self, const char *service)
{
    assert (self && service);
    free (self->service);
    self->service = cm_strdup (service);
}

const char *
cm_metrics_msg_instance (cm_metrics_msg_t *self)
{
    assert (self);
    return self->instance ? self->instance : "";
}

void
cm_metrics_msg_set_instance (cm_metrics_msg_t *self, const char *instance)
{
    assert (self && instance);
    free (self->instance);
    self->instance = cm_strdup (instance);
}

uint64_t
cm_metrics_msg_id (cm_metrics_msg_t *self)
{
    assert (self);
    return self->id;
}

void
cm_metrics_msg_set_id (cm_metrics_msg_t *self, uint64_t id)
{
    assert (self);
    self->id = id;
}

int64_t
cm_metrics_msg_sent_ms (cm_metrics_msg_t *self)
{
    assert (self);
    return self->sent_ms;
}

void
cm_metrics_msg_set_sent_ms (cm_metrics_msg_t *self, int64_t sent_ms)
{
    assert (self);
    self->sent_ms = sent_ms;
}

json_t *
cm_metrics_msg_body (cm_metrics_msg_t *self)
{
    assert (self);
    return self->body;
}

void
cm_metrics_msg_set_body (cm_metrics_msg_t *self, json_t *body)
{
    assert (self);
    json_decref (self->body);
    self->body = body;
}
