/*  ingest_extract.c: see ingest_extract.h. One table maps extensions and
    content types to a format and its extractor; every extractor appends
    UTF-8 to a buffer, and one tidy pass (trailing spaces, runs of blank
    lines) makes the outputs alike. */
#include "ingest_extract.h"
#include "cm_utf8.h"
#include <math.h>
#include <ctype.h>
#include <limits.h>
#include <libxml/HTMLparser.h>
#include <libxml/parser.h>
#include <poppler.h>
#include <pthread.h>
#include <strings.h>
#include <time.h>

#define S_ACCEPTED ".txt, .md, .html, .htm, .csv, .json, .pdf"

//  --- a growing buffer ----------------------------------------------------------

typedef struct {
    char *data;      //  NUL-terminated
    size_t size;     //  bytes used
    size_t capacity; //  bytes allocated
} s_buf_t;

static void
s_buf_add (s_buf_t *buf, const void *data, size_t size)
{
    if (buf->size + size + 1 > buf->capacity) {
        size_t want = buf->size + size + 1;
        buf->capacity = buf->capacity * 2 > want ? buf->capacity * 2 : want + 256;
        buf->data = cm_realloc (buf->data, buf->capacity);
    }
    if (size)
        memcpy (buf->data + buf->size, data, size);
    buf->size += size;
    buf->data[buf->size] = 0;
}

static void
s_buf_str (s_buf_t *buf, const char *s)
{
    s_buf_add (buf, s, strlen (s));
}

static void
s_buf_char (s_buf_t *buf, char c)
{
    s_buf_add (buf, &c, 1);
}

static char
s_buf_last (s_buf_t *buf)
{
    return buf->size ? buf->data[buf->size - 1] : 0;
}

//  --- UTF-8 -----------------------------------------------------------------------

//  Append text, invalid sequences replaced by U+FFFD, a leading BOM
//  dropped, CRLF (and a lone CR) made LF.
static void
s_add_clean (s_buf_t *buf, const char *data, size_t size)
{
    const unsigned char *p = (const unsigned char *) data;
    size_t at = 0, run = 0;
    if (size >= 3 && !memcmp (p, "\xef\xbb\xbf", 3))
        at = run = 3;
    while (at < size) {
        size_t len = cm_utf8_char (p + at, size - at);
        if (len && p[at] != '\r') {
            at += len;
            continue;
        }
        s_buf_add (buf, p + run, at - run);
        if (!len)
            s_buf_str (buf, "\xef\xbf\xbd");
        else if (at + 1 >= size || p[at + 1] != '\n')
            s_buf_char (buf, '\n'); //  a lone CR; CRLF keeps its LF
        at++;
        run = at;
    }
    s_buf_add (buf, p + run, at - run);
}

//  Make buf valid UTF-8 (invalid sequences become U+FFFD, as s_add_clean
//  does). The extractors' own output is, but libxml2 can pass on a stray
//  byte from a broken document (an entity cut by a byte that is not
//  UTF-8), and every consumer of a document's text needs UTF-8: JSON,
//  the chunker, the embedders. Found by tests/fuzz/fuzz_extract.
static void
s_buf_make_utf8 (s_buf_t *buf)
{
    if (!buf->data || cm_utf8_valid (buf->data, buf->size))
        return;
    s_buf_t clean = {0};
    s_add_clean (&clean, buf->data, buf->size);
    free (buf->data);
    *buf = clean;
}

//  Code points in valid UTF-8.
static size_t
s_utf8_count (const char *s, size_t size)
{
    size_t count = 0;
    for (size_t i = 0; i < size; i++)
        if (((unsigned char) s[i] & 0xc0) != 0x80)
            count++;
    return count;
}

//  --- tidying --------------------------------------------------------------------

//  Trailing spaces of every line go (leading ones too when trim_lead: HTML
//  text carries the markup's indentation); more than one blank line in a
//  row becomes one; the whole is trimmed. In place.
static void
s_tidy (s_buf_t *buf, bool trim_lead)
{
    char *in = buf->data, *out = buf->data;
    size_t size = buf->size, blank = 0;
    bool started = false;
    size_t at = 0;
    while (at < size) {
        size_t end = at;
        while (end < size && in[end] != '\n')
            end++;
        size_t from = at, to = end;
        if (trim_lead)
            while (from < to && (in[from] == ' ' || in[from] == '\t'))
                from++;
        while (to > from && (in[to - 1] == ' ' || in[to - 1] == '\t'))
            to--;
        if (to == from)
            blank++;
        else {
            if (started)
                for (size_t i = 0; i < (blank ? 2 : 1); i++)
                    *out++ = '\n';
            memmove (out, in + from, to - from);
            out += to - from;
            started = true;
            blank = 0;
        }
        at = end + 1;
    }
    buf->size = (size_t) (out - buf->data);
    if (buf->data)
        buf->data[buf->size] = 0;
}

//  Collapse runs of white space to one space (HTML text nodes).
static void
s_add_collapsed (s_buf_t *buf, const char *text)
{
    for (const char *p = text; *p; p++) {
        if (isspace ((unsigned char) *p)) {
            char last = s_buf_last (buf);
            if (last && last != ' ' && last != '\n' && last != '\t')
                s_buf_char (buf, ' ');
        } else
            s_buf_char (buf, *p);
    }
}

//  --- plain text and Markdown ---------------------------------------------------

static ingest_extract_result_t
s_extract_text (const char *data, size_t size, s_buf_t *text, char **title, char *err,
                size_t errlen)
{
    (void) title;
    if (memchr (data, 0, size < 8192 ? size : 8192)) {
        snprintf (err, errlen,
                  "the file has NUL bytes: it is binary data (or UTF-16), "
                  "not UTF-8 text");
        return INGEST_EXTRACT_UNPROCESSABLE;
    }
    s_add_clean (text, data, size);
    return INGEST_EXTRACT_OK;
}

//  Drop inline markup from one Markdown line: images and links become
//  their text, emphasis and code marks go. Light by design: underscores
//  inside words (snake_case) stay.
static void
s_markdown_inline (s_buf_t *out, const char *p, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        char c = p[i];
        if (c == '!' && i + 1 < n && p[i + 1] == '[')
            continue;
        if (c == '[') {
            //  [text](url): keep text, skip (url)
            const char *close = memchr (p + i, ']', n - i);
            if (close && (size_t) (close - p) + 1 < n && close[1] == '(') {
                const char *paren = memchr (close, ')', n - (size_t) (close - p));
                if (paren) {
                    s_markdown_inline (out, p + i + 1, (size_t) (close - p - i - 1));
                    i = (size_t) (paren - p);
                    continue;
                }
            }
        }
        if (c == '*' || c == '`')
            continue;
        if (c == '_' && i + 1 < n && p[i + 1] == '_') {
            i++;
            continue;
        }
        s_buf_char (out, c);
    }
}

static ingest_extract_result_t
s_extract_markdown (const char *data, size_t size, s_buf_t *text, char **title, char *err,
                    size_t errlen)
{
    s_buf_t clean = {0};
    ingest_extract_result_t rc = s_extract_text (data, size, &clean, NULL, err, errlen);
    if (rc != INGEST_EXTRACT_OK)
        return rc;
    const char *p = clean.data ? clean.data : "";
    while (*p) {
        size_t n = strcspn (p, "\n");
        const char *line = p;
        size_t len = n;
        p += n + (p[n] == '\n');
        while (len && (*line == ' ' || *line == '\t')) {
            line++;
            len--;
        }
        //  Fences and rules: dropped (a fence's code stays).
        if (len >= 3 && (!strncmp (line, "```", 3) || !strncmp (line, "~~~", 3)))
            continue;
        if (len >= 3 && strspn (line, "-*_ ") >= len && strspn (line, " ") < len) {
            s_buf_char (text, '\n');
            continue;
        }
        while (len && *line == '>') {
            line++;
            len--;
            while (len && *line == ' ') {
                line++;
                len--;
            }
        }
        size_t hashes = strspn (line, "#");
        if (hashes && hashes <= 6 && hashes < len && line[hashes] == ' ') {
            line += hashes + 1;
            len -= hashes + 1;
            size_t at = text->size;
            s_markdown_inline (text, line, len);
            if (title && !*title && text->size > at)
                *title = cm_strndup (text->data + at, text->size - at);
            s_buf_char (text, '\n');
            continue;
        }
        if (len >= 2 && strchr ("-*+", *line) && line[1] == ' ') {
            line += 2;
            len -= 2;
        }
        s_markdown_inline (text, line, len);
        s_buf_char (text, '\n');
    }
    free (clean.data);
    return INGEST_EXTRACT_OK;
}

//  --- HTML ------------------------------------------------------------------------

static bool
s_name_in (const xmlChar *name, const char *const *list)
{
    for (; *list; list++)
        if (!strcasecmp ((const char *) name, *list))
            return true;
    return false;
}

static const char *const s_html_skip[] = {"script", "style",  "noscript", "template",
                                          "head",   "iframe", "object",   "svg",
                                          "canvas", "button", "select",   NULL};
static const char *const s_html_block[] = {
    "p",          "div",     "br",      "hr",         "h1",      "h2",    "h3",
    "h4",         "h5",      "h6",      "li",         "ul",      "ol",    "dl",
    "dt",         "dd",      "tr",      "table",      "thead",   "tbody", "tfoot",
    "section",    "article", "header",  "footer",     "nav",     "aside", "main",
    "blockquote", "pre",     "figure",  "figcaption", "address", "form",  "fieldset",
    "caption",    "details", "summary", "body",       NULL};

//  The walks below are loops over parent and sibling links, not recursion:
//  a 16 MB upload can nest elements hundreds of thousands deep, and libxml2
//  keeps all of them (XML_PARSE_HUGE), which recursion on a thread's stack
//  would not survive.

//  The next node in document order after node's subtree (its next sibling,
//  or its nearest ancestor's), within the tree under top; leave() is
//  called for each ancestor passed on the way up. NULL at the end.
static xmlNode *
s_html_next (xmlNode *node, xmlNode *top, void (*leave) (xmlNode *, void *), void *arg)
{
    while (node && !node->next) {
        node = node->parent;
        if (node == top)
            return NULL;
        if (leave)
            leave (node, arg);
    }
    return node ? node->next : NULL;
}

typedef struct {
    s_buf_t *text;  //  what is extracted
    char **heading; //  the first <h1>'s text, when asked for
    xmlNode *h1;    //  that <h1> while inside it
    size_t h1_at;   //  where its text began
    int pre;        //  <pre> elements we are inside
} s_walk_t;

static void
s_html_leave (xmlNode *node, void *arg)
{
    s_walk_t *walk = arg;
    if (walk->h1 == node) {
        if (walk->text->size > walk->h1_at)
            *walk->heading = cm_strndup (walk->text->data + walk->h1_at,
                                         walk->text->size - walk->h1_at);
        walk->h1 = NULL;
    }
    if (!strcasecmp ((const char *) node->name, "pre"))
        walk->pre--;
    if (s_name_in (node->name, s_html_block) && s_buf_last (walk->text) != '\n')
        s_buf_char (walk->text, '\n');
}

static void
s_html_walk (xmlNode *first, s_buf_t *text, char **heading)
{
    s_walk_t walk = {text, heading, NULL, 0, 0};
    xmlNode *top = first ? first->parent : NULL;
    xmlNode *node = first;
    while (node) {
        if (node->type == XML_TEXT_NODE || node->type == XML_CDATA_SECTION_NODE) {
            if (node->content) {
                if (walk.pre)
                    s_buf_str (text, (const char *) node->content);
                else
                    s_add_collapsed (text, (const char *) node->content);
            }
        } else if (node->type == XML_ELEMENT_NODE &&
                   !s_name_in (node->name, s_html_skip)) {
            bool block = s_name_in (node->name, s_html_block);
            bool cell = !strcasecmp ((const char *) node->name, "td") ||
                        !strcasecmp ((const char *) node->name, "th");
            if (block && s_buf_last (text) != '\n')
                s_buf_char (text, '\n');
            if (cell && text->size && s_buf_last (text) != '\n')
                s_buf_str (text, " | ");
            if (heading && !*heading && !walk.h1 &&
                !strcasecmp ((const char *) node->name, "h1")) {
                walk.h1 = node;
                walk.h1_at = text->size;
            }
            if (!strcasecmp ((const char *) node->name, "pre"))
                walk.pre++;
            if (node->children) {
                node = node->children;
                continue;
            }
            s_html_leave (node, &walk);
        }
        node = s_html_next (node, top, s_html_leave, &walk);
    }
}

//  The first <title> in the document, white space collapsed.
static char *
s_html_title (xmlNode *first)
{
    xmlNode *top = first ? first->parent : NULL;
    xmlNode *node = first;
    while (node) {
        if (node->type == XML_ELEMENT_NODE) {
            if (!strcasecmp ((const char *) node->name, "title")) {
                xmlChar *content = xmlNodeGetContent (node);
                s_buf_t buf = {0};
                if (content)
                    s_add_collapsed (&buf, (const char *) content);
                xmlFree (content);
                s_tidy (&buf, true);
                if (buf.size)
                    return buf.data;
                free (buf.data);
            } else if (node->children) {
                node = node->children;
                continue;
            }
        }
        node = s_html_next (node, top, NULL, NULL);
    }
    return NULL;
}

static pthread_once_t s_xml_once = PTHREAD_ONCE_INIT;

static void
s_xml_init (void)
{
    xmlInitParser ();
}

static ingest_extract_result_t
s_extract_html (const char *data, size_t size, s_buf_t *text, char **title, char *err,
                size_t errlen)
{
    pthread_once (&s_xml_once, s_xml_init);
    if (size > INT_MAX) {
        snprintf (err, errlen, "the HTML file is too large");
        return INGEST_EXTRACT_UNPROCESSABLE;
    }
    //  With no charset declared libxml2 assumes Latin-1; bytes that are
    //  valid UTF-8 almost always are UTF-8.
    htmlDocPtr doc = htmlReadMemory (
        data, (int) size, NULL, cm_utf8_valid (data, size) ? "UTF-8" : NULL,
        HTML_PARSE_RECOVER | HTML_PARSE_NOERROR | HTML_PARSE_NOWARNING |
            HTML_PARSE_NONET | XML_PARSE_HUGE); //  past 256 levels deep
    if (!doc) {
        snprintf (err, errlen, "the HTML cannot be parsed");
        return INGEST_EXTRACT_UNPROCESSABLE;
    }
    xmlNode *root = xmlDocGetRootElement (doc);
    char *heading = NULL;
    *title = s_html_title (root);
    s_html_walk (root, text, &heading);
    if (!*title && heading) {
        s_buf_t buf = {0};
        s_add_collapsed (&buf, heading);
        s_tidy (&buf, true);
        *title = buf.data;
    }
    free (heading);
    xmlFreeDoc (doc);
    return INGEST_EXTRACT_OK;
}

//  --- CSV -------------------------------------------------------------------------

//  RFC 4180: quoted cells may hold commas, doubled quotes and line breaks
//  (made spaces); one output line per row, cells joined by " | ".
static ingest_extract_result_t
s_extract_csv (const char *data, size_t size, s_buf_t *text, char **title, char *err,
               size_t errlen)
{
    s_buf_t clean = {0};
    ingest_extract_result_t rc = s_extract_text (data, size, &clean, title, err, errlen);
    if (rc != INGEST_EXTRACT_OK)
        return rc;
    const char *p = clean.data ? clean.data : "";
    size_t n = clean.size;
    s_buf_t cell = {0};
    size_t row_start = text->size;
    bool quoted = false, row_has_text = false;
    for (size_t i = 0; i <= n; i++) {
        char c = i < n ? p[i] : '\n';
        if (quoted && i < n) {
            if (c == '"' && i + 1 < n && p[i + 1] == '"') {
                s_buf_char (&cell, '"');
                i++;
            } else if (c == '"')
                quoted = false;
            else
                s_buf_char (&cell, c == '\n' ? ' ' : c);
            continue;
        }
        quoted = false; //  an unterminated quote ends with the file
        if (c == '"') {
            quoted = true;
            continue;
        }
        if (c != ',' && c != '\n') {
            s_buf_char (&cell, c);
            continue;
        }
        s_tidy (&cell, true);
        if (text->size > row_start)
            s_buf_str (text, " | ");
        if (cell.size) {
            s_buf_add (text, cell.data, cell.size);
            row_has_text = true;
        }
        cell.size = 0;
        if (cell.data)
            cell.data[0] = 0;
        if (c == '\n') {
            if (row_has_text)
                s_buf_char (text, '\n');
            else
                text->size = row_start; //  an empty row: dropped
            if (text->data)
                text->data[text->size] = 0;
            row_start = text->size;
            row_has_text = false;
        }
    }
    free (cell.data);
    free (clean.data);
    return INGEST_EXTRACT_OK;
}

//  --- JSON ------------------------------------------------------------------------

//  Has the value a string, number or boolean anywhere?
static bool
s_json_has_leaf (json_t *value)
{
    if (json_is_object (value)) {
        const char *key;
        json_t *item;
        json_object_foreach (value, key, item) if (s_json_has_leaf (item)) return true;
        return false;
    }
    if (json_is_array (value)) {
        size_t index;
        json_t *item;
        json_array_foreach (value, index, item) if (s_json_has_leaf (item)) return true;
        return false;
    }
    if (json_is_string (value))
        return json_string_length (value) > 0;
    return !json_is_null (value);
}

static ingest_extract_result_t
s_extract_json (const char *data, size_t size, s_buf_t *text, char **title, char *err,
                size_t errlen)
{
    (void) title;
    json_error_t error;
    json_t *root = json_loadb (data, size, JSON_DECODE_ANY, &error);
    if (!root) {
        snprintf (err, errlen, "the file is not valid JSON: %s (line %d, column %d)",
                  error.text, error.line, error.column);
        return INGEST_EXTRACT_UNPROCESSABLE;
    }
    if (s_json_has_leaf (root)) {
        char *dump = json_dumps (root, JSON_INDENT (2) | JSON_ENCODE_ANY);
        if (dump)
            s_buf_str (text, dump);
        free (dump);
    }
    json_decref (root);
    return INGEST_EXTRACT_OK;
}

//  --- PDF -------------------------------------------------------------------------

static ingest_extract_result_t
s_extract_pdf (const char *data, size_t size, s_buf_t *text, char **title, char **author,
               char *err, size_t errlen)
{
    GBytes *bytes = g_bytes_new_static (data, size);
    GError *error = NULL;
    PopplerDocument *doc = poppler_document_new_from_bytes (bytes, NULL, &error);
    g_bytes_unref (bytes);
    if (!doc) {
        bool locked = error && error->domain == POPPLER_ERROR &&
                      error->code == POPPLER_ERROR_ENCRYPTED;
        snprintf (err, errlen, "%s%s",
                  locked ? "the PDF is password-protected" : "the PDF cannot be read: ",
                  locked ? "" : (error ? error->message : "unknown error"));
        if (error)
            g_error_free (error);
        return INGEST_EXTRACT_UNPROCESSABLE;
    }
    int pages = poppler_document_get_n_pages (doc);
    for (int i = 0; i < pages; i++) {
        PopplerPage *page = poppler_document_get_page (doc, i);
        if (!page)
            continue;
        char *page_text = poppler_page_get_text (page);
        if (page_text && *page_text) {
            if (text->size)
                s_buf_str (text, "\n\n");
            s_add_clean (text, page_text, strlen (page_text));
        }
        g_free (page_text);
        g_object_unref (page);
    }
    char *value = poppler_document_get_title (doc);
    if (value && *value && cm_utf8_valid (value, strlen (value)))
        *title = cm_strdup (value);
    g_free (value);
    value = poppler_document_get_author (doc);
    if (value && *value && cm_utf8_valid (value, strlen (value)))
        *author = cm_strdup (value);
    g_free (value);
    g_object_unref (doc);
    return INGEST_EXTRACT_OK;
}

//  --- formats ---------------------------------------------------------------------

typedef enum { S_TEXT, S_MARKDOWN, S_HTML, S_CSV, S_JSON, S_PDF } s_kind_t;

typedef struct {
    const char *extension;    //  ".txt"
    const char *content_type; //  "text/plain"
    s_kind_t kind;            //  extractor
    const char *format;       //  ingest_doc_t.format
} s_format_t;

static const s_format_t s_formats[] = {
    {".txt", "text/plain", S_TEXT, "text"},
    {".md", "text/markdown", S_MARKDOWN, "markdown"},
    {".markdown", "text/x-markdown", S_MARKDOWN, "markdown"},
    {".html", "text/html", S_HTML, "html"},
    {".htm", "application/xhtml+xml", S_HTML, "html"},
    {".csv", "text/csv", S_CSV, "csv"},
    {".json", "application/json", S_JSON, "json"},
    {".pdf", "application/pdf", S_PDF, "pdf"},
    {NULL, NULL, S_TEXT, NULL},
};

//  The format by extension, else by content type (parameters aside).
static const s_format_t *
s_format_find (const char *filename, const char *content_type)
{
    const char *dot = filename ? strrchr (filename, '.') : NULL;
    if (dot && strchr (dot, '/'))
        dot = NULL;
    for (const s_format_t *f = s_formats; dot && f->extension; f++)
        if (!strcasecmp (dot, f->extension))
            return f;
    if (content_type) {
        size_t len = strcspn (content_type, "; ");
        for (const s_format_t *f = s_formats; f->extension; f++)
            if (strlen (f->content_type) == len &&
                !strncasecmp (content_type, f->content_type, len))
                return f;
    }
    return NULL;
}

//  --- the document's fields ----------------------------------------------------

//  Upstream's slugify, near enough: letters, digits, '.', '_' and '-' stay,
//  anything else becomes '-', runs of '-' collapse; never empty.
static char *
s_slugify (const char *name, bool lower)
{
    s_buf_t buf = {0};
    for (const char *p = name ? name : ""; *p; p++) {
        unsigned char c = (unsigned char) *p;
        if (isalnum (c) || c == '.' || c == '_')
            s_buf_char (&buf, lower ? (char) tolower (c) : (char) c);
        else if (c < 0x80 && s_buf_last (&buf) != '-' && buf.size)
            s_buf_char (&buf, '-');
    }
    while (buf.size && buf.data[buf.size - 1] == '-')
        buf.data[--buf.size] = 0;
    if (!buf.size)
        s_buf_str (&buf, "document");
    return buf.data;
}

//  A new document id (a UUID, owned by the caller).
static char *
s_new_id (void)
{
    char id[CM_UUID_SIZE];
    cm_uuid (id);
    return cm_strdup (id);
}

//  JavaScript's new Date(ms).toLocaleString() in en-US, local time.
static char *
s_published (int64_t ms)
{
    time_t seconds = (time_t) (ms / 1000);
    struct tm tm;
    if (!localtime_r (&seconds, &tm)) {
        seconds = time (NULL);
        localtime_r (&seconds, &tm);
    }
    char text[64];
    int hour = tm.tm_hour % 12 ? tm.tm_hour % 12 : 12;
    snprintf (text, sizeof text, "%d/%d/%d, %d:%02d:%02d %s", tm.tm_mon + 1, tm.tm_mday,
              tm.tm_year + 1900, hour, tm.tm_min, tm.tm_sec,
              tm.tm_hour < 12 ? "AM" : "PM");
    return cm_strdup (text);
}

//  metadata[key] when a non-empty string, else fallback; a new string.
static char *
s_meta (json_t *metadata, const char *key, const char *fallback)
{
    const char *value = json_string_value (json_object_get (metadata, key));
    return cm_strdup (value && *value ? value : fallback ? fallback : "");
}

static void
s_counts (ingest_doc_t *doc)
{
    size_t words = 0;
    bool in_word = false;
    for (size_t i = 0; i < doc->text_size; i++) {
        bool space = isspace ((unsigned char) doc->text[i]);
        if (!space && !in_word)
            words++;
        in_word = !space;
    }
    doc->word_count = words;
    doc->token_count_estimate = (s_utf8_count (doc->text, doc->text_size) + 3) / 4;
}

int
ingest_extract_status (ingest_extract_result_t result)
{
    switch (result) {
        case INGEST_EXTRACT_OK:
            return 200;
        case INGEST_EXTRACT_BAD_REQUEST:
            return 400;
        case INGEST_EXTRACT_UNSUPPORTED:
            return 415;
        case INGEST_EXTRACT_UNPROCESSABLE:
            return 422;
    }
    return 500;
}

ingest_extract_result_t
ingest_extract (const char *filename, const char *content_type, const void *data,
                size_t size, json_t *metadata, int64_t now_ms, ingest_doc_t *out,
                char *err, size_t errlen)
{
    assert (out && err);
    assert (data || size == 0);
    memset (out, 0, sizeof *out);
    const char *shown = filename && *filename ? filename : "the upload";
    const s_format_t *format = s_format_find (filename, content_type);
    if (!format) {
        const char *dot = filename ? strrchr (filename, '.') : NULL;
        if (dot && dot[1])
            snprintf (err, errlen,
                      "Unsupported file type %.40s; accepted: " S_ACCEPTED ".", dot);
        else
            snprintf (err, errlen,
                      "Unsupported file type (%.60s has no known extension%s%.60s); "
                      "accepted: " S_ACCEPTED ".",
                      shown, content_type ? " and content type " : "",
                      content_type ? content_type : "");
        return INGEST_EXTRACT_UNSUPPORTED;
    }
    if (size == 0) {
        snprintf (err, errlen, "%.200s is empty: there is no text to add.", shown);
        return INGEST_EXTRACT_UNPROCESSABLE;
    }
    s_buf_t text = {0};
    char *title = NULL, *author = NULL, why[300] = "";
    ingest_extract_result_t rc = INGEST_EXTRACT_OK;
    switch (format->kind) {
        case S_TEXT:
            rc = s_extract_text (data, size, &text, &title, why, sizeof why);
            break;
        case S_MARKDOWN:
            rc = s_extract_markdown (data, size, &text, &title, why, sizeof why);
            break;
        case S_HTML:
            rc = s_extract_html (data, size, &text, &title, why, sizeof why);
            break;
        case S_CSV:
            rc = s_extract_csv (data, size, &text, &title, why, sizeof why);
            break;
        case S_JSON:
            rc = s_extract_json (data, size, &text, &title, why, sizeof why);
            break;
        case S_PDF:
            rc = s_extract_pdf (data, size, &text, &title, &author, why, sizeof why);
            break;
    }
    if (rc == INGEST_EXTRACT_OK) {
        s_buf_make_utf8 (&text);
        s_tidy (&text, format->kind == S_HTML);
        if (!text.size) {
            snprintf (why, sizeof why, "no text could be extracted%s",
                      format->kind == S_PDF ? " (a scanned PDF needs OCR, which is not "
                                              "done here)"
                                            : "");
            rc = INGEST_EXTRACT_UNPROCESSABLE;
        }
    }
    if (rc != INGEST_EXTRACT_OK) {
        snprintf (err, errlen, "%.200s: %s.", shown, why);
        free (text.data);
        free (title);
        free (author);
        return rc;
    }
    out->text = text.data;
    out->text_size = text.size;
    out->format = format->format;
    out->id = s_new_id ();
    char *slug = s_slugify (filename && *filename ? filename : "document", false);
    size_t name_size = strlen (slug) + 48;
    out->name = cm_malloc (name_size);
    snprintf (out->name, name_size, "%s-%s.json", slug, out->id);
    free (slug);
    out->location = cm_malloc (strlen (out->name) + 20);
    sprintf (out->location, "custom-documents/%s", out->name);
    out->url = cm_malloc (strlen (shown) + 8);
    sprintf (out->url, "file://%s", filename && *filename ? filename : "");
    if (title) {
        //  A heading or <title> as a one-line title.
        s_buf_t one = {0};
        s_add_collapsed (&one, title);
        s_buf_make_utf8 (&one);
        s_tidy (&one, true);
        free (title);
        title = one.size ? one.data : (free (one.data), NULL);
    }
    out->title = s_meta (metadata, "title",
                         title                   ? title
                         : filename && *filename ? filename
                                                 : "Untitled");
    out->doc_author = s_meta (metadata, "docAuthor", author ? author : "Unknown");
    out->description = s_meta (metadata, "description", "Unknown");
    out->doc_source =
        s_meta (metadata, "docSource",
                format->kind == S_PDF ? "pdf file uploaded by the user."
                                      : "a text file uploaded by the user.");
    out->chunk_source = s_meta (metadata, "chunkSource", "");
    out->published = s_published (now_ms);
    s_counts (out);
    free (title);
    free (author);
    return INGEST_EXTRACT_OK;
}

ingest_extract_result_t
ingest_extract_form (cm_form_t *form, int64_t now_ms, ingest_doc_t *out, char *err,
                     size_t errlen)
{
    assert (form && out && err);
    memset (out, 0, sizeof *out);
    const cm_form_part_t *file = cm_form_get (form, "file");
    if (!file) {
        snprintf (err, errlen,
                  "No file was uploaded: send the document as the multipart field "
                  "\"file\".");
        return INGEST_EXTRACT_BAD_REQUEST;
    }
    //  Upstream: metadata that does not parse is taken as {}.
    const cm_form_part_t *part = cm_form_get (form, "metadata");
    json_t *metadata = part ? json_loadb (part->data, part->size, 0, NULL) : NULL;
    if (metadata && !json_is_object (metadata)) {
        json_decref (metadata);
        metadata = NULL;
    }
    ingest_extract_result_t rc =
        ingest_extract (file->filename, file->content_type, file->data, file->size,
                        metadata, now_ms, out, err, errlen);
    json_decref (metadata);
    return rc;
}

ingest_extract_result_t
ingest_extract_raw (const char *text, json_t *metadata, int64_t now_ms, ingest_doc_t *out,
                    char *err, size_t errlen)
{
    assert (out && err);
    memset (out, 0, sizeof *out);
    const char *title = json_string_value (json_object_get (metadata, "title"));
    if (!title || !*title) {
        snprintf (err, errlen, "metadata.title is required: the document needs a title.");
        return INGEST_EXTRACT_UNPROCESSABLE;
    }
    s_buf_t buf = {0};
    if (text)
        s_add_clean (&buf, text, strlen (text));
    s_tidy (&buf, false);
    if (!buf.size) {
        free (buf.data);
        snprintf (err, errlen, "textContent was empty - nothing to process.");
        return INGEST_EXTRACT_UNPROCESSABLE;
    }
    out->text = buf.data;
    out->text_size = buf.size;
    out->format = "raw";
    out->id = s_new_id ();
    //  Upstream slugs the title without its extension, lower case.
    char *base = cm_strdup (title);
    char *dot = strrchr (base, '.');
    if (dot && dot != base)
        *dot = 0;
    char *slug = s_slugify (base, true);
    free (base);
    size_t size = strlen (slug) + 64;
    out->name = cm_malloc (size);
    snprintf (out->name, size, "raw-%s-%s.json", slug, out->id);
    out->location = cm_malloc (strlen (out->name) + 20);
    sprintf (out->location, "custom-documents/%s", out->name);
    out->url = cm_malloc (strlen (slug) + 16);
    sprintf (out->url, "file://%s.txt", slug);
    char *chunk = cm_malloc (strlen (slug) + 8);
    sprintf (chunk, "%s.txt", slug);
    free (slug);
    out->title = cm_strdup (title);
    out->doc_author = s_meta (metadata, "docAuthor", "no author specified");
    out->description = s_meta (metadata, "description", "no description found");
    out->doc_source = s_meta (metadata, "docSource", "no source set");
    out->chunk_source = s_meta (metadata, "chunkSource", chunk);
    free (chunk);
    json_t *published = json_object_get (metadata, "published");
    //  JavaScript's Date range (±8.64e15 ms); anything else is "now".
    double given = json_is_number (published) ? json_number_value (published) : NAN;
    out->published = s_published (
        isfinite (given) && fabs (given) <= 8.64e15 ? (int64_t) given : now_ms);
    s_counts (out);
    return INGEST_EXTRACT_OK;
}

json_t *
ingest_doc_json (const ingest_doc_t *doc)
{
    assert (doc && doc->name);
    return json_pack ("{s:s, s:s, s:s, s:s, s:s, s:s, s:s, s:s, s:s, s:I, s:I}",
                      "location", doc->location, "name", doc->name, "url", doc->url,
                      "title", doc->title, "docAuthor", doc->doc_author, "description",
                      doc->description, "docSource", doc->doc_source, "chunkSource",
                      doc->chunk_source, "published", doc->published, "wordCount",
                      (json_int_t) doc->word_count, "token_count_estimate",
                      (json_int_t) doc->token_count_estimate);
}

void
ingest_doc_clear (ingest_doc_t *doc)
{
    assert (doc);
    free (doc->text);
    free (doc->id);
    free (doc->name);
    free (doc->location);
    free (doc->url);
    free (doc->title);
    free (doc->doc_author);
    free (doc->description);
    free (doc->doc_source);
    free (doc->chunk_source);
    free (doc->published);
    memset (doc, 0, sizeof *doc);
}
