/*  ingest_chunk.h: split a document's text into overlapping chunks, the
    pieces that are embedded and found by vector search.

    Sizes are in characters (Unicode code points; a byte that is not valid
    UTF-8 counts as one), like AnythingLLM's CHUNK_SIZE_CHARS and
    CHUNK_OVERLAP_CHARS (defaults 1000 and 20, its text splitter's). Each
    chunk holds at most chunk_size characters and ends at the best break
    in its second half, in this order of preference:
        1. a paragraph break (a blank line)
        2. the end of a sentence: . ! ? (then closing quotes or brackets)
           before whitespace, or a CJK full stop 。！？
        3. a line break
        4. any whitespace
        5. nowhere better: it is cut at chunk_size characters, between
           two characters (a UTF-8 sequence is never split)
    The next chunk starts about overlap characters before the end of the
    previous one, moved forward to the start of a word, so neighbouring
    chunks share a few words (none when the overlap holds no word start)
    and a sentence cut at a border is found from either side.

    Chunks are trimmed: none starts or ends with whitespace, and text that
    is only whitespace gives none. Every byte of the text that is not
    whitespace is in at least one chunk; only whitespace between chunks is
    left out. Whitespace here is ASCII space, tab, CR, LF, VT, FF. */
#ifndef INGEST_CHUNK_H_INCLUDED
#define INGEST_CHUNK_H_INCLUDED

#include "cm_common.h"
#include "cm_config.h"

#define INGEST_CHUNK_DEFAULT_SIZE    1000
#define INGEST_CHUNK_DEFAULT_OVERLAP 20
//  The largest chunk one may configure (characters).
#define INGEST_CHUNK_MAX_SIZE 1000000

#define INGEST_CHUNK_STR_(x) #x
#define INGEST_CHUNK_STR(x)  INGEST_CHUNK_STR_ (x)

//  The chunker's settings as cm_config table entries (CHUNK_SIZE_CHARS,
//  CHUNK_OVERLAP_CHARS) into two int64_t members of type; after
//  cm_config_load, ingest_chunk_config_check (overlap < size).
// clang-format off
#define INGEST_CHUNK_CONF_ENTRIES(type, size_member, overlap_member)                   \
    {"CHUNK_SIZE_CHARS", CM_CONF_INT, INGEST_CHUNK_STR (INGEST_CHUNK_DEFAULT_SIZE),    \
     1, INGEST_CHUNK_MAX_SIZE, offsetof (type, size_member),                           \
     "characters per chunk of a document (the text that is embedded and searched)"},  \
    {"CHUNK_OVERLAP_CHARS", CM_CONF_INT,                                               \
     INGEST_CHUNK_STR (INGEST_CHUNK_DEFAULT_OVERLAP), 0, INGEST_CHUNK_MAX_SIZE - 1,     \
     offsetof (type, overlap_member),                                                  \
     "characters neighbouring chunks share (< CHUNK_SIZE_CHARS)"}
// clang-format on

//  Check a size and overlap: 0, or -1 with a message naming the variable.
int ingest_chunk_config_check (int64_t chunk_size, int64_t overlap, char *err,
                               size_t errlen);

//  One chunk: chunk points into the text (not NUL-terminated), size bytes,
//  offset bytes from its start; index counts from 0. Return 0 to go on,
//  anything else to stop.
typedef int (ingest_chunk_fn) (const char *chunk, size_t size, size_t offset,
                               size_t index, void *arg);

//  Split size bytes of text (need not be NUL-terminated) into chunks of at
//  most chunk_size characters (>= 1) with overlap characters (< chunk_size)
//  shared, handing each to fn in order. Returns how many fn was given.
size_t ingest_chunk (const char *text, size_t size, size_t chunk_size, size_t overlap,
                     ingest_chunk_fn *fn, void *arg);

//  A chunk's place in the text.
typedef struct {
    size_t offset; //  bytes from the text's start
    size_t size;   //  bytes
} ingest_span_t;

//  The same, as an array: *count_p spans, the caller's to free (NULL when
//  there are none).
ingest_span_t *ingest_chunk_spans (const char *text, size_t size, size_t chunk_size,
                                   size_t overlap, size_t *count_p);

#endif
