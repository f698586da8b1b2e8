/*  fuzz_chunk.c: ingestd's chunker on any text, with the chunk size (1 to
    64 characters) and the overlap taken from the first two bytes. Checks
    the promises of ingest_chunk.h: chunks lie inside the text in order,
    hold at most chunk_size characters, never start or end with white
    space, never split a valid UTF-8 sequence, and cover every byte that
    is not white space. */
#include "fuzz.h"

#include "ingest_chunk.h"

#include <string.h>

static bool
s_space (unsigned char c)
{
    return c == ' ' || c == '\t' || c == '\r' || c == '\n' || c == '\v' || c == '\f';
}

//  Length of a valid UTF-8 sequence at p (at most n bytes), 0 if none.
static size_t
s_utf8 (const unsigned char *p, size_t n)
{
    if (p[0] < 0x80)
        return 1;
    size_t len = p[0] >= 0xC2 && p[0] <= 0xDF   ? 2
                 : p[0] >= 0xE0 && p[0] <= 0xEF ? 3
                 : p[0] >= 0xF0 && p[0] <= 0xF4 ? 4
                                                : 0;
    if (!len || len > n)
        return 0;
    for (size_t i = 1; i < len; i++)
        if ((p[i] & 0xC0) != 0x80)
            return 0;
    if ((p[0] == 0xE0 && p[1] < 0xA0) || (p[0] == 0xED && p[1] > 0x9F) ||
        (p[0] == 0xF0 && p[1] < 0x90) || (p[0] == 0xF4 && p[1] > 0x8F))
        return 0;
    return len;
}

int
LLVMFuzzerTestOneInput (const uint8_t *data, size_t size)
{
    if (size < 2)
        return 0;
    size_t chunk_size = data[0] % 64 + 1;
    size_t overlap = data[1] % chunk_size;
    const char *text = (const char *) data + 2;
    size = size - 2;

    //  Where each valid UTF-8 sequence starts, and its length.
    unsigned char *seq = calloc (size + 1, 1);
    for (size_t at = 0; at < size;) {
        size_t len = s_utf8 ((const unsigned char *) text + at, size - at);
        seq[at] = (unsigned char) (len ? len : 1);
        at += len ? len : 1;
    }
    unsigned char *covered = calloc (size + 1, 1);
    size_t count = 0;
    ingest_span_t *spans = ingest_chunk_spans (text, size, chunk_size, overlap, &count);
    size_t last_offset = 0;
    for (size_t i = 0; i < count; i++) {
        size_t offset = spans[i].offset, length = spans[i].size;
        FUZZ_CHECK (length > 0 && offset <= size && length <= size - offset);
        FUZZ_CHECK (i == 0 || offset > last_offset);
        last_offset = offset;
        FUZZ_CHECK (!s_space ((unsigned char) text[offset]));
        FUZZ_CHECK (!s_space ((unsigned char) text[offset + length - 1]));
        //  Starts and ends on sequence borders; counts its characters.
        FUZZ_CHECK (seq[offset]);
        size_t chars = 0, at = offset;
        while (at < offset + length) {
            FUZZ_CHECK (seq[at]);
            at += seq[at];
            chars++;
        }
        FUZZ_CHECK (at == offset + length);
        FUZZ_CHECK (chars <= chunk_size);
        memset (covered + offset, 1, length);
    }
    for (size_t at = 0; at < size; at++)
        FUZZ_CHECK (covered[at] || s_space ((unsigned char) text[at]));

    free (spans);
    free (covered);
    free (seq);
    return 0;
}
