/*  chat_sse.c: see chat_sse.h. The field rules are the WHATWG HTML
    standard's "event stream interpretation", minus what a chat stream never
    uses (event types, ids, retry). */
#include "chat_sse.h"

struct chat_sse_s {
    chat_sse_event_fn *on_event; //  called per event
    void *arg;                   //  its argument
    size_t max_size;             //  longest line, and longest event data
    char *line;                  //  the line being read (no terminator yet)
    size_t line_size;            //  bytes in line
    size_t line_max;             //  bytes allocated for line
    char *data;                  //  the event being read: data lines, each + "\n"
    size_t data_size;            //  bytes in data
    size_t data_max;             //  bytes allocated for data
    bool after_cr;               //  the last byte was \r: a \n next is its pair
    size_t events;               //  events dispatched
    chat_sse_status_t status;    //  set once parsing stopped
};

static int s_line (chat_sse_t *self);
static int s_dispatch (chat_sse_t *self);
static void s_grow (char **buffer, size_t *max, size_t need);

chat_sse_t *
chat_sse_new (chat_sse_event_fn *on_event, void *arg, size_t max_size)
{
    assert (on_event);
    assert (max_size > 0);
    chat_sse_t *self = cm_calloc (1, sizeof *self);
    self->on_event = on_event;
    self->arg = arg;
    self->max_size = max_size;
    return self;
}

void
chat_sse_destroy (chat_sse_t **self_p)
{
    assert (self_p);
    chat_sse_t *self = *self_p;
    if (!self)
        return;
    free (self->line);
    free (self->data);
    free (self);
    *self_p = NULL;
}

int
chat_sse_feed (chat_sse_t *self, const char *data, size_t size)
{
    assert (self);
    assert (data || size == 0);
    if (self->status != CHAT_SSE_OK)
        return -1;
    size_t i = 0;
    while (i < size) {
        if (self->after_cr) {
            self->after_cr = false;
            if (data[i] == '\n') {
                i++;
                continue;
            }
        }
        //  Take the run of ordinary bytes at once: tokens arrive in lines
        //  of a few hundred bytes, and a byte-by-byte loop would show.
        size_t start = i;
        while (i < size && data[i] != '\n' && data[i] != '\r')
            i++;
        size_t run = i - start;
        if (run) {
            if (self->line_size + run > self->max_size) {
                self->status = CHAT_SSE_TOO_LONG;
                return -1;
            }
            s_grow (&self->line, &self->line_max, self->line_size + run + 1);
            memcpy (self->line + self->line_size, data + start, run);
            self->line_size += run;
        }
        if (i < size) {
            self->after_cr = data[i] == '\r';
            i++;
            if (s_line (self))
                return -1;
        }
    }
    return 0;
}

int
chat_sse_finish (chat_sse_t *self)
{
    assert (self);
    if (self->status != CHAT_SSE_OK)
        return -1;
    if (self->line_size && s_line (self))
        return -1;
    return s_dispatch (self);
}

chat_sse_status_t
chat_sse_status (chat_sse_t *self)
{
    assert (self);
    return self->status;
}

size_t
chat_sse_events (chat_sse_t *self)
{
    assert (self);
    return self->events;
}

//  --- private ---------------------------------------------------------------------

static void
s_grow (char **buffer, size_t *max, size_t need)
{
    if (need <= *max)
        return;
    size_t size = *max ? *max : 256;
    while (size < need)
        size *= 2;
    *buffer = cm_realloc (*buffer, size);
    *max = size;
}

//  One complete line (in self->line, without its end).
static int
s_line (chat_sse_t *self)
{
    size_t size = self->line_size;
    const char *line = self->line;
    self->line_size = 0;
    if (size == 0)
        return s_dispatch (self);
    if (line[0] == ':')
        return 0; //  a comment (keep-alive pings are sent so)
    //  "field: value": the first colon splits, one space after it is dropped.
    const char *colon = memchr (line, ':', size);
    size_t name_size = colon ? (size_t) (colon - line) : size;
    if (name_size != 4 || memcmp (line, "data", 4))
        return 0;
    const char *value = colon ? colon + 1 : line + size;
    size_t value_size = (size_t) (line + size - value);
    if (value_size && *value == ' ')
        value++, value_size--;
    if (self->data_size + value_size + 1 > self->max_size) {
        self->status = CHAT_SSE_TOO_LONG;
        return -1;
    }
    s_grow (&self->data, &self->data_max, self->data_size + value_size + 2);
    memcpy (self->data + self->data_size, value, value_size);
    self->data_size += value_size;
    self->data[self->data_size++] = '\n';
    return 0;
}

//  A blank line: hand over the event's data without its last "\n"; an event
//  with no data line is none.
static int
s_dispatch (chat_sse_t *self)
{
    if (self->data_size == 0)
        return 0;
    size_t size = self->data_size - 1;
    self->data[size] = 0;
    self->data_size = 0;
    self->events++;
    if (self->on_event (self->data, size, self->arg)) {
        self->status = CHAT_SSE_STOPPED;
        return -1;
    }
    return 0;
}
