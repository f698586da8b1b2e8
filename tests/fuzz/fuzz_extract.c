/*  fuzz_extract.c: ingestd's text extraction on any file. The first byte
    picks the file's name (text, Markdown, HTML, CSV, JSON; PDFs go to
    poppler, which is not ours to fuzz); the rest is the file. A document
    it accepts has text that is valid UTF-8 without NUL bytes. */
#include "fuzz.h"

#include "ingest_extract.h"

#include <string.h>

//  Is data valid UTF-8 (no overlongs, surrogates or code points past
//  U+10FFFF)?
static bool
s_valid_utf8 (const unsigned char *p, size_t n)
{
    for (size_t at = 0; at < n;) {
        unsigned char c = p[at];
        size_t len = c < 0x80                 ? 1
                     : c >= 0xC2 && c <= 0xDF ? 2
                     : c >= 0xE0 && c <= 0xEF ? 3
                     : c >= 0xF0 && c <= 0xF4 ? 4
                                              : 0;
        if (!len || len > n - at)
            return false;
        for (size_t i = 1; i < len; i++)
            if ((p[at + i] & 0xC0) != 0x80)
                return false;
        if (len > 2 &&
            ((c == 0xE0 && p[at + 1] < 0xA0) || (c == 0xED && p[at + 1] > 0x9F) ||
             (c == 0xF0 && p[at + 1] < 0x90) || (c == 0xF4 && p[at + 1] > 0x8F)))
            return false;
        at += len;
    }
    return true;
}

int
LLVMFuzzerTestOneInput (const uint8_t *data, size_t size)
{
    static const char *names[] = {"a.txt", "a.md", "a.html", "a.csv", "a.json"};
    if (size < 1)
        return 0;
    const char *filename = names[data[0] % 5];
    ingest_doc_t doc;
    memset (&doc, 0, sizeof doc);
    char err[512] = "";
    ingest_extract_result_t result = ingest_extract (
        filename, NULL, data + 1, size - 1, NULL, 1700000000000, &doc, err, sizeof err);
    int status = ingest_extract_status (result);
    FUZZ_CHECK (status == 200 || status == 400 || status == 415 || status == 422);
    if (result == INGEST_EXTRACT_OK) {
        FUZZ_CHECK (doc.text && strlen (doc.text) == doc.text_size);
        FUZZ_CHECK (s_valid_utf8 ((const unsigned char *) doc.text, doc.text_size));
        json_t *json = ingest_doc_json (&doc);
        FUZZ_CHECK (json_is_object (json));
        json_decref (json);
    } else
        FUZZ_CHECK (err[0]);
    ingest_doc_clear (&doc);
    return 0;
}
