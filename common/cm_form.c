/*  cm_form.c: see cm_form.h. Decoding first walks the bytes against the one
    shape a form may have (cheap: data is skipped, not read), so that a
    hostile length ("an array of 4 billion parts") is refused before
    msgpack-c allocates for it; msgpack-c then unpacks what is known to be
    well-formed and small in objects. */
#include "cm_form.h"
#include <msgpack.h>
#include <strings.h>

//  Longest name, file name or content type accepted from the wire.
#define S_MAX_STRING (64 * 1024)

typedef struct {
    cm_form_part_t view; //  what callers see (points into this part)
    char *name;          //  owned strings
    char *filename;      //  NULL: none
    char *content_type;  //  NULL: none
    char *data;          //  bytes + NUL
    size_t size;         //  bytes used, without the NUL
    size_t capacity;     //  bytes allocated for data
} s_part_t;

struct cm_form_s {
    s_part_t *parts; //  in arrival order
    size_t count;    //  parts used
    size_t capacity; //  parts allocated
    size_t bytes;    //  data bytes over all parts
};

cm_form_t *
cm_form_new (void)
{
    return cm_calloc (1, sizeof (cm_form_t));
}

void
cm_form_destroy (cm_form_t **self_p)
{
    assert (self_p);
    cm_form_t *self = *self_p;
    if (!self)
        return;
    for (size_t i = 0; i < self->count; i++) {
        free (self->parts[i].name);
        free (self->parts[i].filename);
        free (self->parts[i].content_type);
        free (self->parts[i].data);
    }
    free (self->parts);
    free (self);
    *self_p = NULL;
}

static void
s_part_refresh (s_part_t *part)
{
    part->view.name = part->name;
    part->view.filename = part->filename;
    part->view.content_type = part->content_type;
    part->view.data = part->data;
    part->view.size = part->size;
}

static void
s_part_append (cm_form_t *self, s_part_t *part, const void *data, size_t size)
{
    if (part->size + size + 1 > part->capacity) {
        //  Grow geometrically: a 10 MB file comes in many small pieces.
        size_t want = part->size + size + 1;
        part->capacity = part->capacity * 2 > want ? part->capacity * 2 : want;
        part->data = cm_realloc (part->data, part->capacity);
    }
    if (size)
        memcpy (part->data + part->size, data, size);
    part->size += size;
    part->data[part->size] = 0;
    self->bytes += size;
    s_part_refresh (part);
}

void
cm_form_add_part (cm_form_t *self, const char *name, const char *filename,
                  const char *content_type, const void *data, size_t size)
{
    assert (self && name);
    assert (data || size == 0);
    if (self->count == self->capacity) {
        self->capacity = self->capacity ? self->capacity * 2 : 4;
        self->parts = cm_realloc (self->parts, self->capacity * sizeof (s_part_t));
    }
    s_part_t *part = &self->parts[self->count++];
    memset (part, 0, sizeof *part);
    part->name = cm_strdup (name);
    part->filename = filename ? cm_strdup (filename) : NULL;
    part->content_type = content_type ? cm_strdup (content_type) : NULL;
    s_part_append (self, part, data, size);
}

void
cm_form_add (cm_form_t *self, const char *name, const char *filename,
             const char *content_type, const void *data, size_t size)
{
    assert (self && name);
    assert (data || size == 0);
    s_part_t *last = self->count ? &self->parts[self->count - 1] : NULL;
    if (last && !strcmp (last->name, name))
        s_part_append (self, last, data, size);
    else
        cm_form_add_part (self, name, filename, content_type, data, size);
}

const cm_form_part_t *
cm_form_get (cm_form_t *self, const char *name)
{
    assert (self && name);
    for (size_t i = 0; i < self->count; i++)
        if (!strcmp (self->parts[i].name, name))
            return &self->parts[i].view;
    return NULL;
}

size_t
cm_form_count (cm_form_t *self)
{
    assert (self);
    return self->count;
}

const cm_form_part_t *
cm_form_at (cm_form_t *self, size_t index)
{
    assert (self && index < self->count);
    return &self->parts[index].view;
}

size_t
cm_form_data_size (cm_form_t *self)
{
    assert (self);
    return self->bytes;
}

static void
s_pack_str_or_nil (msgpack_packer *pk, const char *s)
{
    if (!s) {
        msgpack_pack_nil (pk);
        return;
    }
    size_t len = strlen (s);
    msgpack_pack_str (pk, len);
    msgpack_pack_str_body (pk, s, len);
}

void
cm_form_encode (cm_form_t *self, char **data_p, size_t *size_p)
{
    assert (self && data_p && size_p);
    msgpack_sbuffer sbuf;
    //  One allocation for the usual case: the data plus a little per part.
    msgpack_sbuffer_init (&sbuf);
    sbuf.alloc = self->bytes + 64 + self->count * 64;
    sbuf.data = cm_malloc (sbuf.alloc);
    msgpack_packer pk;
    msgpack_packer_init (&pk, &sbuf, msgpack_sbuffer_write);
    msgpack_pack_array (&pk, 2);
    msgpack_pack_uint8 (&pk, CM_FORM_VERSION);
    msgpack_pack_array (&pk, self->count);
    for (size_t i = 0; i < self->count; i++) {
        s_part_t *part = &self->parts[i];
        msgpack_pack_array (&pk, 4);
        s_pack_str_or_nil (&pk, part->name);
        s_pack_str_or_nil (&pk, part->filename);
        s_pack_str_or_nil (&pk, part->content_type);
        msgpack_pack_bin (&pk, part->size);
        msgpack_pack_bin_body (&pk, part->data, part->size);
    }
    *size_p = sbuf.size;
    *data_p = msgpack_sbuffer_release (&sbuf);
}

//  --- the shape walk ---------------------------------------------------------

typedef struct {
    const unsigned char *p; //  the buffer
    size_t size;            //  its length
    size_t at;              //  next byte
} s_cursor_t;

//  Read a big-endian length of n bytes; false when the buffer ends.
static bool
s_read_be (s_cursor_t *c, int n, uint64_t *out)
{
    if (c->size - c->at < (size_t) n)
        return false;
    uint64_t v = 0;
    for (int i = 0; i < n; i++)
        v = (v << 8) | c->p[c->at++];
    *out = v;
    return true;
}

//  An array header; its element count in *count.
static bool
s_walk_array (s_cursor_t *c, uint64_t *count)
{
    if (c->at >= c->size)
        return false;
    unsigned char b = c->p[c->at++];
    if (b >= 0x90 && b <= 0x9f) {
        *count = b & 0x0f;
        return true;
    }
    if (b == 0xdc)
        return s_read_be (c, 2, count);
    if (b == 0xdd)
        return s_read_be (c, 4, count);
    return false;
}

//  A str (or nil when nil_ok) of at most S_MAX_STRING bytes, skipped.
static bool
s_walk_str (s_cursor_t *c, bool nil_ok)
{
    if (c->at >= c->size)
        return false;
    unsigned char b = c->p[c->at++];
    uint64_t len = 0;
    if (b == 0xc0)
        return nil_ok;
    if (b >= 0xa0 && b <= 0xbf)
        len = b & 0x1f;
    else if (b == 0xd9 || b == 0xda || b == 0xdb) {
        if (!s_read_be (c, b == 0xd9 ? 1 : b == 0xda ? 2 : 4, &len))
            return false;
    } else
        return false;
    if (len > S_MAX_STRING || len > c->size - c->at)
        return false;
    c->at += len;
    return true;
}

//  A bin of any length that fits the buffer, skipped.
static bool
s_walk_bin (s_cursor_t *c)
{
    if (c->at >= c->size)
        return false;
    unsigned char b = c->p[c->at++];
    uint64_t len = 0;
    if (b != 0xc4 && b != 0xc5 && b != 0xc6)
        return false;
    if (!s_read_be (c, b == 0xc4 ? 1 : b == 0xc5 ? 2 : 4, &len))
        return false;
    if (len > c->size - c->at)
        return false;
    c->at += len;
    return true;
}

//  The whole buffer is [version, [[str, str|nil, str|nil, bin], ...]]
//  with at most CM_FORM_MAX_PARTS parts and nothing after it.
static bool
s_walk_form (const void *data, size_t size, char *err, size_t errlen)
{
    s_cursor_t c = {data, size, 0};
    uint64_t count = 0;
    if (!s_walk_array (&c, &count) || count != 2) {
        snprintf (err, errlen, "not a form: expected [version, parts]");
        return false;
    }
    if (c.at >= size || c.p[c.at] != CM_FORM_VERSION) {
        snprintf (err, errlen, "unsupported form version (want %d)", CM_FORM_VERSION);
        return false;
    }
    c.at++;
    if (!s_walk_array (&c, &count) || count > CM_FORM_MAX_PARTS) {
        snprintf (err, errlen, "form parts missing, malformed or over %d",
                  CM_FORM_MAX_PARTS);
        return false;
    }
    for (uint64_t i = 0; i < count; i++) {
        uint64_t fields = 0;
        if (!s_walk_array (&c, &fields) || fields != 4 || !s_walk_str (&c, false) ||
            !s_walk_str (&c, true) || !s_walk_str (&c, true) || !s_walk_bin (&c)) {
            snprintf (err, errlen, "form part %llu is malformed or truncated",
                      (unsigned long long) i + 1);
            return false;
        }
    }
    if (c.at != size) {
        snprintf (err, errlen, "%zu trailing bytes after the form", size - c.at);
        return false;
    }
    return true;
}

//  A str object as a new C string (NULL for nil); false when it holds a NUL.
static bool
s_get_str (const msgpack_object *o, char **out)
{
    *out = NULL;
    if (o->type == MSGPACK_OBJECT_NIL)
        return true;
    if (o->type != MSGPACK_OBJECT_STR)
        return false;
    //  msgpack-c leaves ptr stale or NULL for an empty string: no reading it.
    size_t size = o->via.str.size;
    if (size && memchr (o->via.str.ptr, 0, size))
        return false;
    *out = size ? cm_strndup (o->via.str.ptr, size) : cm_strdup ("");
    return true;
}

cm_form_t *
cm_form_decode (const void *data, size_t size, char *err, size_t errlen)
{
    assert (data || size == 0);
    if (!s_walk_form (data, size, err, errlen))
        return NULL;
    msgpack_unpacked result;
    msgpack_unpacked_init (&result);
    size_t offset = 0;
    cm_form_t *self = NULL;
    if (msgpack_unpack_next (&result, data, size, &offset) != MSGPACK_UNPACK_SUCCESS ||
        offset != size) {
        snprintf (err, errlen, "malformed form (%zu bytes)", size);
        goto done;
    }
    //  The walk vouched for the shape; only the strings' contents remain.
    const msgpack_object *parts = &result.data.via.array.ptr[1];
    self = cm_form_new ();
    for (uint32_t i = 0; i < parts->via.array.size; i++) {
        const msgpack_object *fields = parts->via.array.ptr[i].via.array.ptr;
        char *name = NULL, *filename = NULL, *content_type = NULL;
        bool ok = s_get_str (&fields[0], &name) && s_get_str (&fields[1], &filename) &&
                  s_get_str (&fields[2], &content_type);
        if (ok)
            cm_form_add_part (self, name, filename, content_type,
                              fields[3].via.bin.size ? fields[3].via.bin.ptr : NULL,
                              fields[3].via.bin.size);
        free (name);
        free (filename);
        free (content_type);
        if (!ok) {
            snprintf (err, errlen, "form part %u has a NUL in a name", i + 1);
            cm_form_destroy (&self);
            goto done;
        }
    }
done:
    msgpack_unpacked_destroy (&result);
    return self;
}
