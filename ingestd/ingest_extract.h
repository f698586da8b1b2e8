/*  ingest_extract.h: the plain text of an uploaded document, and the fields
    of the API's document object (API.md: location, name, url, title,
    docAuthor, description, docSource, chunkSource, published, wordCount,
    token_count_estimate).

    Formats, chosen by the file name's extension, or by the content type
    when the extension is missing or unknown:
      .txt  text/plain        the text as is
      .md   text/markdown     the text, markup dropped lightly (#, >, list
                              markers, fences, emphasis, links -> their text)
      .html .htm  text/html   libxml2's HTML parser; script, style and the
                              like dropped; block elements become line breaks
      .csv  text/csv          one line per row, cells joined by " | "
      .json application/json  must parse (else 422); the text is the JSON
                              pretty-printed: keys carry meaning for search
      .pdf  application/pdf   poppler-glib, the pages' text, a blank line
                              between pages
    Anything else is INGEST_EXTRACT_UNSUPPORTED (415). An empty file, a file
    with no text, or one that cannot be read as its format (bad JSON, a
    broken or password-protected PDF, a .txt with NUL bytes: binary) is
    INGEST_EXTRACT_UNPROCESSABLE (422). Invalid UTF-8 in text, Markdown and
    CSV is replaced by U+FFFD (as upstream's Node reads files), not
    refused; a UTF-8 byte order mark is dropped; CRLF becomes LF.

    The fields follow upstream (AnythingLLM's collector), so clients see
    the same shapes:
      name        "<slugified file name>-<uuid>.json" (raw text:
                  "raw-<slugified title>-<uuid>.json")
      location    "custom-documents/<name>"
      url         "file://<original file name>" (raw text:
                  "file://<slugified title>.txt")
      title       metadata.title, else the HTML <title> (or first <h1>), the
                  Markdown's first heading, the PDF's Title, else the file name
      docAuthor   metadata.docAuthor, else the PDF's Author, else "Unknown"
      description metadata.description, else "Unknown"
      docSource   metadata.docSource, else "a text file uploaded by the
                  user." ("pdf file uploaded by the user." for PDF)
      chunkSource metadata.chunkSource, else ""
      published   now, as JavaScript's toLocaleString() in en-US writes it
                  in local time: "11/27/2026, 10:00:00 AM"
      wordCount   runs of non-space characters (upstream splits on " ")
      token_count_estimate  ceil(characters / 4) (characters = code points)
    Raw text (ingest_extract_raw) takes upstream's raw-text defaults:
    "no author specified", "no description found", "no source set", and
    chunkSource "<slugified title>.txt".

    Upload metadata that is not a JSON object is ignored, as upstream's
    safeJsonParse does. Functions are thread-safe (libxml2 is initialised
    once). */
#ifndef INGEST_EXTRACT_H_INCLUDED
#define INGEST_EXTRACT_H_INCLUDED

#include "cm_common.h"
#include "cm_form.h"
#include <jansson.h>

typedef enum {
    INGEST_EXTRACT_OK = 0,        //  200: text and fields are set
    INGEST_EXTRACT_BAD_REQUEST,   //  400: no "file" part in the upload
    INGEST_EXTRACT_UNSUPPORTED,   //  415: not a format we read
    INGEST_EXTRACT_UNPROCESSABLE, //  422: empty, no text, or unreadable
} ingest_extract_result_t;

//  A document: its text and the API's fields. Strings are owned (freed by
//  ingest_doc_clear); format is static.
typedef struct {
    char *text;                  //  plain UTF-8 text (upstream's pageContent)
    size_t text_size;            //  its length in bytes
    char *id;                    //  a new UUID (v4)
    char *name;                  //  "<slug>-<id>.json"
    char *location;              //  "custom-documents/<name>"
    char *url;                   //  "file://<original name>"
    char *title;                 //  see the file comment
    char *doc_author;            //  docAuthor
    char *description;           //  description
    char *doc_source;            //  docSource
    char *chunk_source;          //  chunkSource
    char *published;             //  "11/27/2026, 10:00:00 AM"
    size_t word_count;           //  wordCount
    size_t token_count_estimate; //  token_count_estimate
    const char *format;          //  "text", "markdown", "html", "csv", "json",
                                 //  "pdf" or "raw"
} ingest_doc_t;

//  The HTTP status of a result: 200, 400, 415, 422.
int ingest_extract_status (ingest_extract_result_t result);

//  Extract the text of one file. filename and content_type may be NULL
//  (not both, or the file is unsupported); metadata (borrowed; NULL or a
//  JSON object) supplies title, docAuthor, description, docSource,
//  chunkSource. now_ms: wall-clock ms, for published. On OK *out is
//  filled (caller clears it); otherwise *out is left empty and err says
//  why, in words for the client.
ingest_extract_result_t ingest_extract (const char *filename, const char *content_type,
                                        const void *data, size_t size, json_t *metadata,
                                        int64_t now_ms, ingest_doc_t *out, char *err,
                                        size_t errlen);

//  The same for POST /api/v1/document/upload's form: the "file" part
//  (400 when missing) and the "metadata" part (a JSON string).
ingest_extract_result_t ingest_extract_form (cm_form_t *form, int64_t now_ms,
                                             ingest_doc_t *out, char *err, size_t errlen);

//  POST /api/v1/document/raw-text: text is textContent, metadata the
//  request's metadata object (borrowed). No or empty metadata.title, or
//  empty text: 422. Invalid UTF-8 cannot come here (JSON strings).
ingest_extract_result_t ingest_extract_raw (const char *text, json_t *metadata,
                                            int64_t now_ms, ingest_doc_t *out, char *err,
                                            size_t errlen);

//  The API's document object (new reference), without the text.
json_t *ingest_doc_json (const ingest_doc_t *doc);

//  Free what the document holds and zero it; NULL-safe for the fields.
void ingest_doc_clear (ingest_doc_t *doc);

#endif
