/*  test_ingest_chunk.c: the chunker: chunks hold at most chunk_size
    characters, neighbours overlap, breaks fall at paragraphs and sentences
    when there are some, UTF-8 characters are never cut, whitespace gives
    nothing, and every byte that is not whitespace lands in a chunk. */
#include <criterion/criterion.h>
#include "ingest_chunk.h"

static bool
s_is_space (unsigned char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
}

//  Characters in size bytes, counted as the chunker does (a byte that
//  starts no valid UTF-8 sequence is one).
static size_t
s_chars (const unsigned char *p, size_t size)
{
    size_t chars = 0;
    for (size_t i = 0; i < size; chars++) {
        unsigned char c = p[i];
        size_t n = c < 0x80             ? 1
                   : (c & 0xE0) == 0xC0 ? 2
                   : (c & 0xF0) == 0xE0 ? 3
                   : (c & 0xF8) == 0xF0 ? 4
                                        : 1;
        if (n > size - i)
            n = 1;
        for (size_t k = 1; k < n; k++)
            if ((p[i + k] & 0xC0) != 0x80)
                n = 1;
        i += n;
    }
    return chars;
}

//  Is it valid UTF-8 (whole sequences only)?
static bool
s_valid_utf8 (const unsigned char *p, size_t size)
{
    for (size_t i = 0; i < size;) {
        unsigned char c = p[i];
        size_t n = c < 0x80             ? 1
                   : (c & 0xE0) == 0xC0 ? 2
                   : (c & 0xF0) == 0xE0 ? 3
                   : (c & 0xF8) == 0xF0 ? 4
                                        : 0;
        if (!n || n > size - i)
            return false;
        for (size_t k = 1; k < n; k++)
            if ((p[i + k] & 0xC0) != 0x80)
                return false;
        i += n;
    }
    return true;
}

//  Check what every split must be, and return the spans.
static ingest_span_t *
s_split (const char *text, size_t size, size_t chunk_size, size_t overlap,
         size_t *count_p)
{
    ingest_span_t *spans = ingest_chunk_spans (text, size, chunk_size, overlap, count_p);
    size_t count = *count_p;
    bool *covered = calloc (size + 1, 1);
    for (size_t i = 0; i < count; i++) {
        const unsigned char *chunk = (const unsigned char *) text + spans[i].offset;
        cr_assert_gt (spans[i].size, 0);
        cr_assert_leq (spans[i].offset + spans[i].size, size);
        cr_assert_leq (s_chars (chunk, spans[i].size), chunk_size,
                       "chunk %zu holds %zu characters, more than %zu", i,
                       s_chars (chunk, spans[i].size), chunk_size);
        cr_assert (!s_is_space (chunk[0]) && !s_is_space (chunk[spans[i].size - 1]),
                   "chunk %zu is not trimmed", i);
        if (i) {
            cr_assert_gt (spans[i].offset, spans[i - 1].offset, "chunks go forward");
            cr_assert_gt (spans[i].offset + spans[i].size,
                          spans[i - 1].offset + spans[i - 1].size,
                          "each chunk brings new text");
        }
        for (size_t k = 0; k < spans[i].size; k++)
            covered[spans[i].offset + k] = true;
    }
    for (size_t i = 0; i < size; i++)
        cr_assert (covered[i] || s_is_space ((unsigned char) text[i]),
                   "byte %zu ('%c') is in no chunk", i, text[i]);
    free (covered);
    return spans;
}

//  A deterministic pseudo-random text of about size bytes: words of 1..12
//  letters, some non-ASCII, sentences, line breaks and paragraphs.
static char *
s_random_text (size_t size, uint64_t seed)
{
    static const char *extra[] = {"é", "ü", "日本", "😀", "ß", "—", "“quoted”"};
    char *text = malloc (size + 64);
    size_t used = 0;
    while (used < size) {
        seed = seed * 6364136223846793005ull + 1442695040888963407ull;
        unsigned r = (unsigned) (seed >> 33);
        if (r % 9 == 0) {
            const char *e = extra[(r / 9) % 7];
            memcpy (text + used, e, strlen (e));
            used += strlen (e);
        } else {
            for (unsigned k = 0; k < 1 + (r / 7) % 12; k++)
                text[used++] = (char) ('a' + (r / (k + 3)) % 26);
        }
        unsigned sep = (r / 101) % 40;
        const char *s = sep == 0 ? ".\n\n" : sep < 5 ? ". " : sep == 5 ? "\n" : " ";
        memcpy (text + used, s, strlen (s));
        used += strlen (s);
    }
    text[used] = 0;
    return text;
}

Test (ingest_chunk, walkthrough)
{
    //  Three sentences; chunks of at most 60 characters, 10 shared.
    const char *text = "The queue holds jobs. Workers take them one at a time. "
                       "A job that fails is retried with back-off until it succeeds.";
    size_t count = 0;
    ingest_span_t *spans = s_split (text, strlen (text), 60, 10, &count);
    cr_assert_eq (count, 3);
    //  The first ends where a sentence ends, in the second half of its 60.
    cr_assert_eq (spans[0].offset, 0);
    cr_assert_eq (spans[0].size,
                  strlen ("The queue holds jobs. Workers take them one at a time."));
    //  The next starts up to 10 characters earlier, at a word: "at a time."
    //  is in both. It has no sentence end in its second half: it ends at a
    //  space.
    cr_assert_eq (strncmp (text + spans[1].offset, "at a time. A job", 16), 0);
    cr_assert_eq (
        strncmp (text + spans[1].offset + spans[1].size - 14, "back-off until", 14), 0);
    //  The last ends where the text does, sharing "until".
    cr_assert_eq (strcmp (text + spans[2].offset, "until it succeeds."), 0);
    free (spans);
}

static int
s_record (const char *chunk, size_t size, size_t offset, size_t index, void *arg)
{
    size_t *state = (size_t *) arg; //  [0] calls, [1] stop after, [2] the text
    cr_assert_eq (index, state[0], "indexes count from 0");
    cr_assert_eq (chunk, (const char *) state[2] + offset, "chunk points into the text");
    cr_assert_gt (size, 0);
    state[0]++;
    return state[0] == state[1] ? 1 : 0;
}

Test (ingest_chunk, callback_can_stop)
{
    const char *text = "One. Two. Three. Four. Five. Six. Seven. Eight.";
    size_t state[3] = {0, 0, (size_t) text};
    size_t all = ingest_chunk (text, strlen (text), 12, 0, s_record, state);
    cr_assert_gt (all, 3);
    cr_assert_eq (state[0], all);
    state[0] = 0;
    state[1] = 2;
    cr_assert_eq (ingest_chunk (text, strlen (text), 12, 0, s_record, state), 2);
    cr_assert_eq (state[0], 2);
}

Test (ingest_chunk, empty_and_whitespace_give_none)
{
    size_t state[3] = {0, 0, 0};
    state[2] = (size_t) "";
    cr_assert_eq (ingest_chunk ("", 0, 100, 10, s_record, state), 0);
    const char *blank = "  \n\n\t \r\n   ";
    state[2] = (size_t) blank;
    cr_assert_eq (ingest_chunk (blank, strlen (blank), 4, 1, s_record, state), 0);
    cr_assert_eq (state[0], 0, "the callback was never called");
    size_t count = 99;
    cr_assert_null (ingest_chunk_spans (blank, strlen (blank), 4, 1, &count));
    cr_assert_eq (count, 0);
}

Test (ingest_chunk, short_text_is_one_trimmed_chunk)
{
    const char *text = "\n\n  A short note.  \n";
    size_t count = 0;
    ingest_span_t *spans = s_split (text, strlen (text), 1000, 20, &count);
    cr_assert_eq (count, 1);
    cr_assert_eq (spans[0].offset, 4);
    cr_assert_eq (spans[0].size, strlen ("A short note."));
    free (spans);
}

Test (ingest_chunk, sizes_respected_and_everything_covered)
{
    //  Many texts and settings; s_split checks sizes, trimming, order and
    //  coverage of each.
    static const size_t settings[][2] = {{1, 0},    {2, 1},     {7, 3},
                                         {16, 0},   {50, 20},   {100, 99},
                                         {256, 20}, {1000, 20}, {1000, 0}};
    for (uint64_t seed = 1; seed <= 6; seed++) {
        char *text = s_random_text (seed * 1500, seed);
        for (size_t i = 0; i < sizeof settings / sizeof *settings; i++) {
            size_t count = 0;
            ingest_span_t *spans =
                s_split (text, strlen (text), settings[i][0], settings[i][1], &count);
            cr_assert_gt (count, 0);
            free (spans);
        }
        free (text);
    }
}

Test (ingest_chunk, overlap_present)
{
    char *text = s_random_text (20000, 42);
    size_t count = 0;
    ingest_span_t *spans = s_split (text, strlen (text), 200, 30, &count);
    cr_assert_gt (count, 50);
    size_t overlapping = 0;
    for (size_t i = 1; i < count; i++) {
        size_t prev_end = spans[i - 1].offset + spans[i - 1].size;
        if (spans[i].offset < prev_end) {
            overlapping++;
            //  No more than the overlap (30 characters) is shared, and it
            //  starts at a word.
            cr_assert_leq (s_chars ((const unsigned char *) text + spans[i].offset,
                                    prev_end - spans[i].offset),
                           30);
            cr_assert (s_is_space ((unsigned char) text[spans[i].offset - 1]),
                       "chunk %zu starts inside a word", i);
        }
    }
    //  Words are at most 12 letters (plus a mark): every pair can share one.
    cr_assert_eq (overlapping, count - 1, "%zu of %zu neighbours overlap", overlapping,
                  count - 1);
    free (spans);

    //  Without overlap, chunks do not share a byte.
    spans = s_split (text, strlen (text), 200, 0, &count);
    for (size_t i = 1; i < count; i++)
        cr_assert_geq (spans[i].offset, spans[i - 1].offset + spans[i - 1].size);
    free (spans);
    free (text);
}

Test (ingest_chunk, sentence_boundaries_preferred)
{
    //  Sentences of 30..60 characters; chunks of 200 end at a sentence's end.
    char text[8192] = "";
    for (int i = 0; strlen (text) < 6000; i++)
        strcat (text, i % 3 == 0   ? "The gateway routes each request to a worker. "
                      : i % 3 == 1 ? "Is the queue full? "
                                   : "Workers report their load (every second!) ");
    size_t count = 0;
    ingest_span_t *spans = s_split (text, strlen (text), 200, 20, &count);
    cr_assert_gt (count, 20);
    for (size_t i = 0; i + 1 < count; i++) {
        char last = text[spans[i].offset + spans[i].size - 1];
        cr_assert (last == '.' || last == '?' || last == ')',
                   "chunk %zu ends with '%c', not a sentence", i, last);
        cr_assert_geq (
            s_chars ((const unsigned char *) text + spans[i].offset, spans[i].size), 100,
            "a break in the second half");
    }
    free (spans);
}

Test (ingest_chunk, paragraph_preferred_over_sentence)
{
    //  A paragraph break at 70% of the chunk beats sentence ends after it.
    const char *text = "First paragraph has words. It goes on a bit more here.\n\n"
                       "Second one. Short. Ends. Here. And more. And more text.";
    size_t count = 0;
    ingest_span_t *spans = s_split (text, strlen (text), 80, 0, &count);
    cr_assert_eq (count, 2);
    cr_assert_eq (spans[0].size,
                  strlen ("First paragraph has words. It goes on a bit more here."));
    free (spans);
}

Test (ingest_chunk, whitespace_when_no_sentence_and_hard_split_when_none)
{
    //  No sentence mark: the break is at a space.
    const char *words = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda";
    size_t count = 0;
    ingest_span_t *spans = s_split (words, strlen (words), 20, 0, &count);
    for (size_t i = 0; i + 1 < count; i++)
        cr_assert (s_is_space ((unsigned char) words[spans[i].offset + spans[i].size]),
                   "chunk %zu ends inside a word", i);
    free (spans);
    //  No space at all: cut at exactly chunk_size characters.
    const char *blob = "abcdefghijklmnopqrstuvwxyz0123456789";
    spans = s_split (blob, strlen (blob), 10, 0, &count);
    cr_assert_eq (count, 4);
    cr_assert_eq (spans[0].size, 10);
    cr_assert_eq (spans[3].size, 6);
    free (spans);
}

Test (ingest_chunk, utf8_intact)
{
    //  Only multi-byte characters and no space: every cut is a hard one.
    char text[4096] = "";
    while (strlen (text) < 3000)
        strcat (text, "日本語のテキスト😀éü");
    for (size_t chunk_size = 1; chunk_size <= 13; chunk_size++) {
        size_t count = 0;
        ingest_span_t *spans =
            s_split (text, strlen (text), chunk_size, chunk_size / 2, &count);
        for (size_t i = 0; i < count; i++) {
            const unsigned char *chunk = (const unsigned char *) text + spans[i].offset;
            cr_assert (s_valid_utf8 (chunk, spans[i].size),
                       "chunk %zu (size %zu) cuts a character", i, chunk_size);
            if (i + 1 < count)
                cr_assert_eq (s_chars (chunk, spans[i].size), chunk_size,
                              "a hard cut takes chunk_size characters");
        }
        free (spans);
    }
    //  A CJK full stop is a sentence end, with no space after it.
    const char *jp = "これは文です。これも文です。最後の文です。";
    size_t count = 0;
    ingest_span_t *spans = s_split (jp, strlen (jp), 9, 0, &count);
    cr_assert_eq (count, 3);
    cr_assert_eq (spans[0].size, strlen ("これは文です。"));
    free (spans);
}

Test (ingest_chunk, invalid_utf8_is_split_safely)
{
    //  Stray bytes count as characters of their own; nothing is lost.
    char text[600];
    for (size_t i = 0; i < sizeof text - 1; i++)
        text[i] = (char) (i % 7 == 0    ? 0x80
                          : i % 11 == 0 ? 0xE3
                          : i % 13 == 0 ? ' '
                                        : 'x');
    text[sizeof text - 1] = 0;
    for (size_t chunk_size = 1; chunk_size < 40; chunk_size += 3) {
        size_t count = 0;
        free (s_split (text, strlen (text), chunk_size, chunk_size / 3, &count));
        cr_assert_gt (count, 0);
    }
}

//  Overlong forms (C0/C1 leads, E0 80..9F), surrogates (ED A0..BF) and
//  code points past U+10FFFF (F4 90..) are not UTF-8: every byte of them is
//  a character of its own (tests/fuzz/fuzz_chunk found "C1 92" counted as
//  one, so a chunk held more bytes than its characters allow).
Test (ingest_chunk, invalid_sequences_count_byte_by_byte)
{
    const char *cases[] = {"\xc1\x92\xc1\x92", "\xe0\x80\x80\xe0", "\xed\xa0\x80\xed",
                           "\xf4\x90\x80\x80", "\xf8\x88\x80\x80"};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        //  Four invalid bytes in chunks of 2 characters, no overlap: 2 chunks.
        size_t count = 0;
        ingest_span_t *spans = ingest_chunk_spans (cases[i], 4, 2, 0, &count);
        cr_assert_eq (count, 2, "case %zu: %zu chunks", i, count);
        cr_assert_eq (spans[0].size, 2, "case %zu", i);
        cr_assert_eq (spans[1].offset, 2, "case %zu", i);
        free (spans);
    }
    //  Valid sequences at the edges of those ranges stay whole.
    size_t count = 0;
    ingest_span_t *spans =
        ingest_chunk_spans ("\xc2\x80\xe0\xa0\x80\xf4\x8f\xbf\xbf", 9, 3, 0, &count);
    cr_assert_eq (count, 1);
    cr_assert_eq (spans[0].size, 9);
    free (spans);
}

Test (ingest_chunk, config_check_names_the_variable)
{
    char err[256] = "";
    cr_assert_eq (ingest_chunk_config_check (INGEST_CHUNK_DEFAULT_SIZE,
                                             INGEST_CHUNK_DEFAULT_OVERLAP, err,
                                             sizeof err),
                  0);
    cr_assert_eq (ingest_chunk_config_check (100, 100, err, sizeof err), -1);
    cr_assert (strstr (err, "CHUNK_OVERLAP_CHARS"), "%s", err);
    cr_assert_eq (ingest_chunk_config_check (0, 0, err, sizeof err), -1);
    cr_assert (strstr (err, "CHUNK_SIZE_CHARS"), "%s", err);

    //  The table entries read the variables, with the defaults.
    typedef struct {
        int64_t size, overlap;
    } settings_t;
    const cm_conf_entry_t table[] = {
        INGEST_CHUNK_CONF_ENTRIES (settings_t, size, overlap),
        {NULL, 0, NULL, 0, 0, 0, NULL},
    };
    settings_t settings = {0, 0};
    unsetenv ("CHUNK_SIZE_CHARS");
    unsetenv ("CHUNK_OVERLAP_CHARS");
    cr_assert_eq (cm_config_load (table, &settings, err, sizeof err), 0, "%s", err);
    cr_assert_eq (settings.size, 1000);
    cr_assert_eq (settings.overlap, 20);
    setenv ("CHUNK_SIZE_CHARS", "500", 1);
    cr_assert_eq (cm_config_load (table, &settings, err, sizeof err), 0, "%s", err);
    cr_assert_eq (settings.size, 500);
    unsetenv ("CHUNK_SIZE_CHARS");
}
