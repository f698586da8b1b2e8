/*  ingest_chunk.c: see ingest_chunk.h.

    One pass, chunk by chunk: from the chunk's start, step chunk_size
    characters forward to its limit, then look back from the limit for the
    best break. Looking back from the limit over at most one chunk keeps
    the whole split linear in the text's length (times 1 + overlap/size). */
#include "ingest_chunk.h"

//  The levels of a break, best first.
typedef enum {
    S_PARAGRAPH = 0, //  a blank line
    S_SENTENCE = 1,  //  after . ! ? (and closers), before whitespace
    S_LINE = 2,      //  a line break
    S_SPACE = 3,     //  any whitespace
    S_LEVELS = 4,
} s_level_t;

static inline bool
s_space (unsigned char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
}

//  Bytes of the character at p (left bytes remain): a whole UTF-8
//  sequence, or 1 for a byte that does not start a valid one. Overlong
//  forms, surrogates and code points past U+10FFFF are not valid: each of
//  their bytes counts alone, as the header says (tests/fuzz/fuzz_chunk
//  found "C1 92" counted as one character).
static inline size_t
s_char_size (const unsigned char *p, size_t left)
{
    unsigned char c = p[0];
    size_t n = c < 0x80                 ? 1
               : c >= 0xC2 && c <= 0xDF ? 2
               : c >= 0xE0 && c <= 0xEF ? 3
               : c >= 0xF0 && c <= 0xF4 ? 4
                                        : 1;
    if (n == 1 || n > left)
        return 1;
    for (size_t i = 1; i < n; i++)
        if ((p[i] & 0xC0) != 0x80)
            return 1;
    if ((c == 0xE0 && p[1] < 0xA0) || (c == 0xED && p[1] > 0x9F) ||
        (c == 0xF0 && p[1] < 0x90) || (c == 0xF4 && p[1] > 0x8F))
        return 1;
    return n;
}

//  The position count characters after pos (or size).
static size_t
s_forward (const unsigned char *text, size_t size, size_t pos, size_t count)
{
    while (pos < size && count--)
        pos += s_char_size (text + pos, size - pos);
    return pos;
}

//  The start of the character that ends just before pos (pos > 0): a
//  sequence of 2..4 bytes that reaches pos exactly, else the byte before.
static size_t
s_back_one (const unsigned char *text, size_t size, size_t pos)
{
    if ((text[pos - 1] & 0xC0) != 0x80)
        return pos - 1;
    for (size_t n = 2; n <= 4 && n <= pos; n++)
        if (s_char_size (text + pos - n, size - (pos - n)) == n)
            return pos - n;
    return pos - 1; //  a stray continuation byte: a character of its own
}

static size_t
s_skip_space (const unsigned char *text, size_t size, size_t pos)
{
    while (pos < size && s_space (text[pos]))
        pos++;
    return pos;
}

//  Does the text just before q end a sentence ("word." "word?)" "word.”")?
static bool
s_sentence_end (const unsigned char *text, size_t start, size_t q)
{
    //  Closing quotes and brackets after the mark: " ' ) ] ” ’ »
    for (int closers = 0; closers < 3 && q > start; closers++) {
        unsigned char c = text[q - 1];
        if (c == '"' || c == '\'' || c == ')' || c == ']')
            q--;
        else if (q - start >= 3 && text[q - 3] == 0xE2 && text[q - 2] == 0x80 &&
                 (c == 0x9D || c == 0x99))
            q -= 3;
        else if (q - start >= 2 && text[q - 2] == 0xC2 && c == 0xBB)
            q -= 2;
        else
            break;
    }
    if (q <= start)
        return false;
    unsigned char c = text[q - 1];
    if (c == '.' || c == '!' || c == '?')
        return true;
    //  … (U+2026)
    return q - start >= 3 && text[q - 3] == 0xE2 && text[q - 2] == 0x80 && c == 0xA6;
}

//  After a CJK full stop 。 (E3 80 82), or fullwidth ！ (EF BC 81) ？ (EF BC 9F)?
static bool
s_cjk_end (const unsigned char *text, size_t start, size_t b)
{
    if (b - start < 3)
        return false;
    const unsigned char *p = text + b - 3;
    return (p[0] == 0xE3 && p[1] == 0x80 && p[2] == 0x82) ||
           (p[0] == 0xEF && p[1] == 0xBC && (p[2] == 0x81 || p[2] == 0x9F));
}

//  The level of a break at b (the chunk would be [start, b)), or S_LEVELS
//  when b is no break: b must follow a character that is not whitespace.
static s_level_t
s_break_level (const unsigned char *text, size_t size, size_t start, size_t b)
{
    if (b <= start || b > size || s_space (text[b - 1]))
        return S_LEVELS;
    if (b < size && !s_space (text[b]))
        return s_cjk_end (text, start, b) ? S_SENTENCE : S_LEVELS;
    //  A blank line: two line feeds in the whitespace run from b.
    int newlines = 0;
    for (size_t i = b; i < size && s_space (text[i]); i++)
        if (text[i] == '\n' && ++newlines == 2)
            return S_PARAGRAPH;
    if (s_sentence_end (text, start, b) || s_cjk_end (text, start, b))
        return S_SENTENCE;
    if (b < size && (text[b] == '\n' || text[b] == '\r' || newlines))
        return S_LINE;
    return S_SPACE;
}

//  Where the chunk [start, limit) should end: the best break after floor
//  (paragraph, sentence or line: at or after half), else whitespace anywhere
//  after floor, else limit.
static size_t
s_best_end (const unsigned char *text, size_t size, size_t start, size_t floor,
            size_t half, size_t limit)
{
    size_t best[S_LEVELS] = {0};
    for (size_t b = limit; b > floor; b--) {
        //  Every break is between characters: before whitespace (ASCII),
        //  or after a whole CJK mark.
        s_level_t level = s_break_level (text, size, start, b);
        if (level == S_LEVELS || best[level])
            continue;
        best[level] = b;
        if (level == S_PARAGRAPH && b >= half)
            break;
    }
    for (int level = S_PARAGRAPH; level <= S_LINE; level++)
        if (best[level] >= half && best[level])
            return best[level];
    return best[S_SPACE] ? best[S_SPACE] : limit;
}

int
ingest_chunk_config_check (int64_t chunk_size, int64_t overlap, char *err, size_t errlen)
{
    if (chunk_size < 1 || chunk_size > INGEST_CHUNK_MAX_SIZE) {
        snprintf (err, errlen, "CHUNK_SIZE_CHARS: must be 1..%d", INGEST_CHUNK_MAX_SIZE);
        return -1;
    }
    if (overlap < 0 || overlap >= chunk_size) {
        snprintf (err, errlen,
                  "CHUNK_OVERLAP_CHARS: %lld must be at least 0 and less than "
                  "CHUNK_SIZE_CHARS (%lld)",
                  (long long) overlap, (long long) chunk_size);
        return -1;
    }
    return 0;
}

size_t
ingest_chunk (const char *text, size_t size, size_t chunk_size, size_t overlap,
              ingest_chunk_fn *fn, void *arg)
{
    assert (text || !size);
    assert (chunk_size >= 1 && overlap < chunk_size);
    assert (fn);
    const unsigned char *t = (const unsigned char *) text;
    size_t count = 0;
    size_t pos = s_skip_space (t, size, 0);
    size_t prev_end = 0; //  where the last chunk ended: the next must go further
    while (pos < size) {
        size_t limit = s_forward (t, size, pos, chunk_size);
        size_t end = size;
        if (limit < size) {
            size_t half = s_forward (t, size, pos, chunk_size / 2 ? chunk_size / 2 : 1);
            size_t floor = prev_end > pos ? prev_end : pos;
            end = s_best_end (t, size, pos, floor, half, limit);
        }
        size_t trimmed = end;
        while (trimmed > pos && s_space (t[trimmed - 1]))
            trimmed--;
        assert (trimmed > pos); //  pos is not whitespace
        int rc = fn (text + pos, trimmed - pos, pos, count, arg);
        count++;
        if (rc)
            break;
        prev_end = trimmed;
        size_t after = s_skip_space (t, size, end);
        if (after >= size)
            break;
        //  The next starts overlap characters back, at a word's start.
        size_t next = trimmed;
        for (size_t i = 0; i < overlap && next > pos; i++)
            next = s_back_one (t, size, next);
        if (next > pos && next < trimmed && !s_space (t[next]) && !s_space (t[next - 1]))
            while (next < trimmed && !s_space (t[next]))
                next++; //  inside a word: go to its end, then past the space
        next = s_skip_space (t, size, next);
        pos = next > pos && next < trimmed ? next : after;
    }
    return count;
}

typedef struct {
    ingest_span_t *spans; //  so far
    size_t count;         //  how many
    size_t capacity;      //  room
} s_spans_t;

static int
s_collect (const char *chunk, size_t size, size_t offset, size_t index, void *arg)
{
    (void) chunk, (void) index;
    s_spans_t *spans = (s_spans_t *) arg;
    if (spans->count == spans->capacity) {
        spans->capacity = spans->capacity ? spans->capacity * 2 : 16;
        spans->spans =
            cm_realloc (spans->spans, spans->capacity * sizeof (ingest_span_t));
    }
    spans->spans[spans->count++] = (ingest_span_t){offset, size};
    return 0;
}

ingest_span_t *
ingest_chunk_spans (const char *text, size_t size, size_t chunk_size, size_t overlap,
                    size_t *count_p)
{
    assert (count_p);
    s_spans_t spans = {NULL, 0, 0};
    ingest_chunk (text, size, chunk_size, overlap, s_collect, &spans);
    *count_p = spans.count;
    return spans.spans;
}
