/*  chat_sse.h: an incremental parser of server-sent events (the WHATWG
    "text/event-stream" format), as OpenAI-compatible servers stream chat
    completions: `data: {...}` lines, events separated by a blank line.

    Bytes are fed as they arrive, cut anywhere (inside a line, between \r
    and \n); each complete event's data (its data lines joined by "\n") is
    handed to the callback. Lines end in \n, \r\n or \r. Comment lines
    (":..."), and the event, id and retry fields are skipped: a chat stream
    carries its meaning in the data. A line or an event longer than the
    limit is an error, so a broken upstream cannot make us buffer without
    end.

    Threading: one parser belongs to one call (one thread). */
#ifndef CHAT_SSE_H_INCLUDED
#define CHAT_SSE_H_INCLUDED

#include "cm_common.h"

typedef struct chat_sse_s chat_sse_t;

//  One event's data: size bytes, NUL-terminated (borrowed until the call
//  returns). Return 0 to go on, -1 to stop parsing (the feed that called
//  it returns -1).
typedef int (chat_sse_event_fn) (const char *data, size_t size, void *arg);

typedef enum {
    CHAT_SSE_OK = 0,       //  no error
    CHAT_SSE_STOPPED = 1,  //  the callback returned -1
    CHAT_SSE_TOO_LONG = 2, //  a line or an event exceeded max_size
} chat_sse_status_t;

//  A parser calling on_event (with arg) for every event; max_size bounds a
//  line and an event's data, in bytes. Caller owns it.
chat_sse_t *chat_sse_new (chat_sse_event_fn *on_event, void *arg, size_t max_size);
//  Destroy; NULL-safe; nulls the pointer.
void chat_sse_destroy (chat_sse_t **self_p);

//  Parse size more bytes. Returns 0, or -1 once the callback stopped or
//  the limit was passed (chat_sse_status says which); after that every
//  feed returns -1 at once.
int chat_sse_feed (chat_sse_t *self, const char *data, size_t size);
//  The stream ended: an event whose blank line never came is dispatched
//  (a last line without its end counts as a line). Returns as feed.
int chat_sse_finish (chat_sse_t *self);
//  Why the last feed or finish returned -1 (CHAT_SSE_OK when it did not).
chat_sse_status_t chat_sse_status (chat_sse_t *self);
//  Events dispatched so far.
size_t chat_sse_events (chat_sse_t *self);

#endif
