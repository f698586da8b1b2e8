/*  fuzz_sse.c: chatd's parser of an upstream's event stream, fed any bytes
    cut at places the input chooses. The first byte picks the cut size, so
    one input is parsed whole and in pieces; both must give the same
    events. */
#include "fuzz.h"

#include "chat_sse.h"

#include <string.h>

typedef struct {
    char *text; //  every event's data, each followed by '\0'
    size_t size;
    size_t events;
} s_events_t;

static int
s_on_event (const char *data, size_t size, void *arg)
{
    s_events_t *events = arg;
    FUZZ_CHECK (data[size] == '\0');
    FUZZ_CHECK (size <= 1024);
    events->text = realloc (events->text, events->size + size + 1);
    memcpy (events->text + events->size, data, size + 1);
    events->size += size + 1;
    events->events++;
    //  Stop at an event that says so, as a caller does at [DONE].
    return size == 4 && !memcmp (data, "STOP", 4) ? -1 : 0;
}

//  Parse data in pieces of step bytes (0: whole); the final status.
static chat_sse_status_t
s_parse (const uint8_t *data, size_t size, size_t step, s_events_t *events)
{
    chat_sse_t *parser = chat_sse_new (s_on_event, events, 1024);
    int rc = 0;
    for (size_t at = 0; at < size && rc == 0;) {
        size_t piece = step && size - at > step ? step : size - at;
        rc = chat_sse_feed (parser, (const char *) data + at, piece);
        at += piece;
    }
    if (rc == 0)
        rc = chat_sse_finish (parser);
    FUZZ_CHECK (chat_sse_events (parser) == events->events);
    chat_sse_status_t status = chat_sse_status (parser);
    FUZZ_CHECK ((rc == 0) == (status == CHAT_SSE_OK));
    //  Once stopped, it stays stopped.
    if (rc)
        FUZZ_CHECK (chat_sse_feed (parser, "data: x\n\n", 9) == -1);
    chat_sse_destroy (&parser);
    return status;
}

int
LLVMFuzzerTestOneInput (const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    size_t step = data[0] % 16 + 1;
    s_events_t whole = {0}, pieces = {0};
    chat_sse_status_t a = s_parse (data + 1, size - 1, 0, &whole);
    chat_sse_status_t b = s_parse (data + 1, size - 1, step, &pieces);
    FUZZ_CHECK (a == b);
    FUZZ_CHECK (whole.events == pieces.events);
    FUZZ_CHECK (whole.size == pieces.size);
    FUZZ_CHECK (!whole.size || !memcmp (whole.text, pieces.text, whole.size));
    free (whole.text);
    free (pieces.text);
    return 0;
}
