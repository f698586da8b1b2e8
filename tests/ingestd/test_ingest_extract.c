/*  test_ingest_extract.c: the text of each accepted format, the document's
    fields, and the refusals (400, 415, 422). The PDFs are real: a small
    fixture (tests/data/hello.pdf, two pages, Helvetica) and one drawn here
    with cairo's PDF surface (embedded fonts, non-ASCII text). */
#include <cairo-pdf.h>
#include <cairo.h>
#include <criterion/criterion.h>
#include <fontconfig/fontconfig.h>
#include <time.h>
#include "ingest_extract.h"

#define S_NOW 1795773600000LL //  2026-11-27 10:00:00 UTC

static void
s_setup (void)
{
    //  published is local time: pin the zone.
    setenv ("TZ", "UTC", 1);
    tzset ();
}

TestSuite (ingest_extract, .init = s_setup, .timeout = 60);

//  Extract a string as a file of that name; must succeed.
static void
s_extract_ok (const char *filename, const char *type, const char *data, ingest_doc_t *doc)
{
    char err[512] = "";
    ingest_extract_result_t rc = ingest_extract (filename, type, data, strlen (data),
                                                 NULL, S_NOW, doc, err, sizeof err);
    cr_assert_eq (rc, INGEST_EXTRACT_OK, "%s refused: %s", filename, err);
    cr_assert_eq (strlen (doc->text), doc->text_size);
}

//  Extract; must be refused with this result and an err holding text.
static void
s_extract_refused (const char *filename, const char *type, const void *data, size_t size,
                   ingest_extract_result_t want, const char *text)
{
    char err[512] = "";
    ingest_doc_t doc;
    ingest_extract_result_t rc =
        ingest_extract (filename, type, data, size, NULL, S_NOW, &doc, err, sizeof err);
    cr_assert_eq (rc, want, "%s: result %d, want %d (%s)", filename, rc, want, err);
    cr_assert (strstr (err, text), "%s: '%s' lacks '%s'", filename, err, text);
    cr_assert_null (doc.text);
    cr_assert_null (doc.name);
}

static char *
s_read_fixture (const char *name, size_t *size)
{
    const char *dir = getenv ("LLMRT_SOURCE_DIR");
    char path[1024];
    snprintf (path, sizeof path, "%s/tests/data/%s", dir ? dir : ".", name);
    FILE *file = fopen (path, "rb");
    cr_assert (file, "cannot open %s", path);
    char *data = malloc (1 << 20);
    *size = fread (data, 1, 1 << 20, file);
    fclose (file);
    return data;
}

Test (ingest_extract, walkthrough_upload_form_to_document)
{
    //  What the gateway forwards for an upload of notes.txt.
    cm_form_t *form = cm_form_new ();
    const char *content = "Quarterly notes.\r\nRevenue grew in every region.\r\n";
    cm_form_add (form, "file", "My Notes.txt", "text/plain", content, strlen (content));
    cm_form_add (form, "addToWorkspaces", NULL, NULL, "docs", 4);
    cm_form_add (form, "metadata", NULL, NULL, "{\"docAuthor\":\"Ann\"}", 19);

    ingest_doc_t doc;
    char err[256];
    cr_assert_eq (ingest_extract_form (form, S_NOW, &doc, err, sizeof err),
                  INGEST_EXTRACT_OK, "%s", err);
    cr_assert_str_eq (doc.text, "Quarterly notes.\nRevenue grew in every region.");
    cr_assert_str_eq (doc.format, "text");

    //  The API's document object.
    json_t *json = ingest_doc_json (&doc);
    cr_assert_str_eq (json_string_value (json_object_get (json, "title")),
                      "My Notes.txt");
    cr_assert_str_eq (json_string_value (json_object_get (json, "docAuthor")), "Ann");
    cr_assert_str_eq (json_string_value (json_object_get (json, "description")),
                      "Unknown");
    cr_assert_str_eq (json_string_value (json_object_get (json, "docSource")),
                      "a text file uploaded by the user.");
    cr_assert_str_eq (json_string_value (json_object_get (json, "chunkSource")), "");
    cr_assert_str_eq (json_string_value (json_object_get (json, "url")),
                      "file://My Notes.txt");
    cr_assert_str_eq (json_string_value (json_object_get (json, "published")),
                      "11/27/2026, 10:00:00 AM");
    cr_assert_eq (json_integer_value (json_object_get (json, "wordCount")), 7);
    //  46 characters / 4, rounded up.
    cr_assert_eq (json_integer_value (json_object_get (json, "token_count_estimate")),
                  12);
    const char *name = json_string_value (json_object_get (json, "name"));
    cr_assert (!strncmp (name, "My-Notes.txt-", 13), "%s", name);
    cr_assert_eq (strlen (name), 13 + 36 + 5, "%s", name);
    cr_assert (!strcmp (name + 13 + 36, ".json"), "%s", name);
    char location[256];
    snprintf (location, sizeof location, "custom-documents/%s", name);
    cr_assert_str_eq (json_string_value (json_object_get (json, "location")), location);
    cr_assert_eq (json_object_size (json), 11);
    json_decref (json);
    ingest_doc_clear (&doc);
    cr_assert_null (doc.text);
    cm_form_destroy (&form);
}

Test (ingest_extract, form_without_file_is_400)
{
    cm_form_t *form = cm_form_new ();
    cm_form_add (form, "metadata", NULL, NULL, "{}", 2);
    ingest_doc_t doc;
    char err[256];
    ingest_extract_result_t rc = ingest_extract_form (form, S_NOW, &doc, err, sizeof err);
    cr_assert_eq (rc, INGEST_EXTRACT_BAD_REQUEST);
    cr_assert_eq (ingest_extract_status (rc), 400);
    cr_assert (strstr (err, "No file was uploaded"), "%s", err);
    cm_form_destroy (&form);
}

Test (ingest_extract, metadata_overrides_and_bad_metadata_is_ignored)
{
    cm_form_t *form = cm_form_new ();
    cm_form_add (form, "file", "a.md", NULL, "# Heading\nbody", 14);
    const char *given = "{\"title\":\"Given\",\"description\":\"D\",\"docSource\":\"S\","
                        "\"chunkSource\":\"C\"}";
    cm_form_add (form, "metadata", NULL, NULL, given, strlen (given));
    ingest_doc_t doc;
    char err[256];
    cr_assert_eq (ingest_extract_form (form, S_NOW, &doc, err, sizeof err),
                  INGEST_EXTRACT_OK, "%s", err);
    cr_assert_str_eq (doc.title, "Given");
    cr_assert_str_eq (doc.description, "D");
    cr_assert_str_eq (doc.doc_source, "S");
    cr_assert_str_eq (doc.chunk_source, "C");
    ingest_doc_clear (&doc);
    cm_form_destroy (&form);

    //  Not JSON: taken as {} (upstream's safeJsonParse).
    form = cm_form_new ();
    cm_form_add (form, "file", "a.md", NULL, "# Heading\nbody", 14);
    cm_form_add (form, "metadata", NULL, NULL, "{not json", 9);
    cr_assert_eq (ingest_extract_form (form, S_NOW, &doc, err, sizeof err),
                  INGEST_EXTRACT_OK, "%s", err);
    cr_assert_str_eq (doc.title, "Heading");
    ingest_doc_clear (&doc);
    cm_form_destroy (&form);
}

Test (ingest_extract, plain_text_cleaned)
{
    ingest_doc_t doc;
    //  A BOM, CRLF, a lone CR, invalid UTF-8 (replaced), trailing spaces,
    //  many blank lines; valid multi-byte text kept.
    s_extract_ok ("a.txt", NULL,
                  "\xef\xbb\xbfGr\xc3\xbc\xc3\x9f"
                  "e\r\nbad \xff\xfe byte  \rnext\n\n\n\n\nend\n",
                  &doc);
    cr_assert_str_eq (doc.text, "Gr\xc3\xbc\xc3\x9f"
                                "e\nbad \xef\xbf\xbd\xef\xbf\xbd byte\n"
                                "next\n\nend");
    cr_assert_eq (doc.word_count, 6);
    ingest_doc_clear (&doc);
}

Test (ingest_extract, text_with_nul_bytes_is_binary_422)
{
    s_extract_refused ("a.txt", "text/plain", "abc\0def", 7, INGEST_EXTRACT_UNPROCESSABLE,
                       "binary");
}

Test (ingest_extract, markdown_markup_dropped_lightly)
{
    ingest_doc_t doc;
    s_extract_ok ("guide.md", NULL,
                  "Intro line with **bold** and `code` and a_snake_name.\n"
                  "\n"
                  "## Setup *steps*\n"
                  "> quoted [link text](https://example.com) here\n"
                  "- item one\n"
                  "* item two\n"
                  "---\n"
                  "```c\n"
                  "int x = 1;\n"
                  "```\n"
                  "![logo](logo.png) done\n",
                  &doc);
    cr_assert_str_eq (doc.text, "Intro line with bold and code and a_snake_name.\n\n"
                                "Setup steps\n"
                                "quoted link text here\n"
                                "item one\n"
                                "item two\n\n"
                                "int x = 1;\n"
                                "logo done");
    //  The first heading is the title.
    cr_assert_str_eq (doc.title, "Setup steps");
    cr_assert_str_eq (doc.format, "markdown");
    ingest_doc_clear (&doc);
}

Test (ingest_extract, html_text_without_scripts_and_styles)
{
    ingest_doc_t doc;
    s_extract_ok ("page.html", NULL,
                  "<!DOCTYPE html><html><head><title> The   Page </title>"
                  "<style>body { color: red }</style>"
                  "<script>var secret = 'do not index';</script></head>"
                  "<body><h1>Main heading</h1>\n"
                  "  <p>First   paragraph &amp; an <b>inline</b> word.</p>"
                  "<div>Second<br>line</div>"
                  "<script>alert('x')</script><noscript>enable js</noscript>"
                  "<ul><li>one</li><li>two</li></ul>"
                  "<table><tr><th>k</th><td>v</td></tr></table>"
                  "<p>caf\xc3\xa9</p></body></html>",
                  &doc);
    cr_assert_str_eq (doc.text, "Main heading\n"
                                "First paragraph & an inline word.\n"
                                "Second\n"
                                "line\n"
                                "one\n"
                                "two\n"
                                "k | v\n"
                                "caf\xc3\xa9");
    cr_assert_null (strstr (doc.text, "secret"));
    cr_assert_null (strstr (doc.text, "color"));
    cr_assert_str_eq (doc.title, "The Page");
    ingest_doc_clear (&doc);
}

Test (ingest_extract, html_title_falls_back_to_h1_and_charset_is_read)
{
    ingest_doc_t doc;
    //  Latin-1 bytes, declared: "café" comes out as UTF-8.
    s_extract_ok ("page.htm", NULL,
                  "<html><head><meta charset=\"iso-8859-1\"></head>"
                  "<body><h1>Caf\xe9 menu</h1><p>Tea</p></body></html>",
                  &doc);
    cr_assert_str_eq (doc.title, "Caf\xc3\xa9 menu");
    cr_assert_str_eq (doc.text, "Caf\xc3\xa9 menu\nTea");
    ingest_doc_clear (&doc);
    //  Only markup: no text, 422.
    const char *empty = "<html><head><script>x()</script></head><body> </body></html>";
    s_extract_refused ("empty.html", NULL, empty, strlen (empty),
                       INGEST_EXTRACT_UNPROCESSABLE, "no text");
}

//  libxml2 passes on a byte of an entity cut by a non-UTF-8 byte ("&" then
//  0xF0) as it is; the document's text must still be UTF-8, with U+FFFD in
//  its place (found by tests/fuzz/fuzz_extract).
Test (ingest_extract, html_with_a_broken_entity_still_gives_utf8)
{
    ingest_doc_t doc;
    s_extract_ok ("page.html", NULL, "&\xf0", &doc);
    cr_assert_str_eq (doc.text, "&\xef\xbf\xbd");
    ingest_doc_clear (&doc);
    s_extract_ok ("page.html", NULL, "<title>A &\xf0</title><p>b</p>", &doc);
    cr_assert_str_eq (doc.title, "A &\xef\xbf\xbd");
    ingest_doc_clear (&doc);
}

Test (ingest_extract, deeply_nested_html_keeps_all_its_text)
{
    //  libxml2 stops at 256 levels unless told otherwise: everything after
    //  the deep point was lost, with a 200. Told otherwise, it keeps them
    //  all, and a walk that recursed once per level overflowed the stack
    //  (400,000 levels: a 4.4 MB upload, well under MAX_BODY_BYTES).
    const size_t depth = 400000;
    size_t size = depth * 11 + 256;
    char *html = malloc (size);
    char *p = html + sprintf (html, "<html><head><title>Deep</title></head><body>"
                                    "<p>before text</p>");
    for (size_t i = 0; i < depth; i++)
        p += sprintf (p, "<div>");
    p += sprintf (p, "<h1>deepword kiwi</h1>");
    for (size_t i = 0; i < depth; i++)
        p += sprintf (p, "</div>");
    sprintf (p, "<p>after bird</p></body></html>");
    ingest_doc_t doc;
    s_extract_ok ("deep.html", NULL, html, &doc);
    cr_assert (strstr (doc.text, "before text"), "%.200s", doc.text);
    cr_assert (strstr (doc.text, "deepword kiwi"), "%.200s", doc.text);
    cr_assert (strstr (doc.text, "after bird"), "%.200s", doc.text);
    cr_assert_str_eq (doc.title, "Deep");
    ingest_doc_clear (&doc);
    free (html);
}

Test (ingest_extract, csv_rows_as_lines)
{
    ingest_doc_t doc;
    s_extract_ok ("data.csv", NULL,
                  "name,city,note\r\n"
                  "Ann,\"Paris, France\",\"said \"\"hi\"\"\"\r\n"
                  ",,\r\n"
                  "Bob,Oslo,\"two\nlines\"\n",
                  &doc);
    cr_assert_str_eq (doc.text, "name | city | note\n"
                                "Ann | Paris, France | said \"hi\"\n"
                                "Bob | Oslo | two lines");
    cr_assert_str_eq (doc.format, "csv");
    ingest_doc_clear (&doc);
}

Test (ingest_extract, json_pretty_printed_and_bad_json_is_422)
{
    ingest_doc_t doc;
    s_extract_ok ("data.json", NULL, "{\"name\":\"Ann\",\"tags\":[\"a\",1]}", &doc);
    cr_assert_str_eq (doc.text, "{\n  \"name\": \"Ann\",\n  \"tags\": [\n    \"a\",\n"
                                "    1\n  ]\n}");
    ingest_doc_clear (&doc);
    const char *bad = "{\"name\": \"Ann\",}";
    s_extract_refused ("data.json", NULL, bad, strlen (bad), INGEST_EXTRACT_UNPROCESSABLE,
                       "not valid JSON");
    s_extract_refused ("empty.json", NULL, "{\"a\":[]}", 8, INGEST_EXTRACT_UNPROCESSABLE,
                       "no text");
}

Test (ingest_extract, pdf_fixture_pages_and_info)
{
    size_t size;
    char *data = s_read_fixture ("hello.pdf", &size);
    ingest_doc_t doc;
    char err[256];
    cr_assert_eq (ingest_extract ("hello.pdf", "application/pdf", data, size, NULL, S_NOW,
                                  &doc, err, sizeof err),
                  INGEST_EXTRACT_OK, "%s", err);
    cr_assert_str_eq (doc.text, "The quick brown fox jumps over the lazy dog.\n\n"
                                "Second page of the llmrt fixture.");
    cr_assert_str_eq (doc.title, "Fixture Title");
    cr_assert_str_eq (doc.doc_author, "llmrt tests");
    cr_assert_str_eq (doc.doc_source, "pdf file uploaded by the user.");
    cr_assert_str_eq (doc.format, "pdf");
    ingest_doc_clear (&doc);

    //  Cut in half: not a readable PDF.
    s_extract_refused ("hello.pdf", NULL, data, size / 2, INGEST_EXTRACT_UNPROCESSABLE,
                       "PDF");
    free (data);
    s_extract_refused ("fake.pdf", NULL, "not a pdf at all", 16,
                       INGEST_EXTRACT_UNPROCESSABLE, "cannot be read");
}

static cairo_status_t
s_cairo_write (void *closure, const unsigned char *data, unsigned int length)
{
    cm_form_t *sink = closure;
    cm_form_add (sink, "pdf", NULL, NULL, data, length);
    return CAIRO_STATUS_SUCCESS;
}

Test (ingest_extract, pdf_drawn_by_cairo_with_embedded_font)
{
    //  A PDF as real tools write it: subset TrueType fonts, UTF-8 text.
    cm_form_t *sink = cm_form_new ();
    cairo_surface_t *surface =
        cairo_pdf_surface_create_for_stream (s_cairo_write, sink, 595, 842);
    cairo_t *cr = cairo_create (surface);
    cairo_select_font_face (cr, "DejaVu Sans", CAIRO_FONT_SLANT_NORMAL,
                            CAIRO_FONT_WEIGHT_NORMAL);
    cairo_set_font_size (cr, 14);
    cairo_move_to (cr, 50, 100);
    cairo_show_text (cr, "Gr\xc3\xbc\xc3\x9f"
                         "e aus K\xc3\xb6ln");
    cairo_show_page (cr);
    cairo_move_to (cr, 50, 100);
    cairo_show_text (cr, "Page two");
    cairo_destroy (cr);
    cairo_surface_destroy (surface);
    const cm_form_part_t *pdf = cm_form_get (sink, "pdf");
    cr_assert (pdf && pdf->size > 100);

    ingest_doc_t doc;
    char err[256];
    cr_assert_eq (ingest_extract ("drawn.pdf", NULL, pdf->data, pdf->size, NULL, S_NOW,
                                  &doc, err, sizeof err),
                  INGEST_EXTRACT_OK, "%s", err);
    cr_assert_str_eq (doc.text, "Gr\xc3\xbc\xc3\x9f"
                                "e aus K\xc3\xb6ln\n\nPage two");
    cr_assert_str_eq (doc.title, "drawn.pdf");
    cr_assert_eq (doc.word_count, 5);
    ingest_doc_clear (&doc);

    //  A page with nothing on it: no text, 422.
    cm_form_destroy (&sink);
    sink = cm_form_new ();
    surface = cairo_pdf_surface_create_for_stream (s_cairo_write, sink, 595, 842);
    cr = cairo_create (surface);
    cairo_rectangle (cr, 10, 10, 100, 100);
    cairo_fill (cr);
    cairo_destroy (cr);
    cairo_surface_destroy (surface);
    pdf = cm_form_get (sink, "pdf");
    s_extract_refused ("scan.pdf", NULL, pdf->data, pdf->size,
                       INGEST_EXTRACT_UNPROCESSABLE, "OCR");
    cm_form_destroy (&sink);
    //  cairo's font caches (fontconfig's below them), so that the leak
    //  check sees only ours.
    cairo_debug_reset_static_data ();
    FcFini ();
}

Test (ingest_extract, unsupported_type_is_415)
{
    s_extract_refused ("image.xyz", "image/png", "data", 4, INGEST_EXTRACT_UNSUPPORTED,
                       "Unsupported file type .xyz; accepted: .txt, .md, .html, .htm, "
                       ".csv, .json, .pdf");
    s_extract_refused ("noext", NULL, "data", 4, INGEST_EXTRACT_UNSUPPORTED,
                       "no known extension");
    s_extract_refused (NULL, "application/zip", "data", 4, INGEST_EXTRACT_UNSUPPORTED,
                       "application/zip");
    cr_assert_eq (ingest_extract_status (INGEST_EXTRACT_UNSUPPORTED), 415);
}

Test (ingest_extract, content_type_decides_without_extension)
{
    ingest_doc_t doc;
    s_extract_ok ("README", "text/markdown; charset=utf-8", "# Read me\ntext", &doc);
    cr_assert_str_eq (doc.format, "markdown");
    cr_assert_str_eq (doc.title, "Read me");
    ingest_doc_clear (&doc);
    //  A known extension wins over the content type.
    s_extract_ok ("notes.TXT", "application/octet-stream", "# not a heading", &doc);
    cr_assert_str_eq (doc.format, "text");
    cr_assert_str_eq (doc.text, "# not a heading");
    ingest_doc_clear (&doc);
}

Test (ingest_extract, empty_or_blank_file_is_422)
{
    s_extract_refused ("empty.txt", NULL, "", 0, INGEST_EXTRACT_UNPROCESSABLE, "empty");
    s_extract_refused ("blank.txt", NULL, " \n\r\n\t ", 6, INGEST_EXTRACT_UNPROCESSABLE,
                       "no text");
    cr_assert_eq (ingest_extract_status (INGEST_EXTRACT_UNPROCESSABLE), 422);
}

Test (ingest_extract, raw_text)
{
    json_t *metadata = json_pack ("{s:s, s:I}", "title", "Team Notes.md", "published",
                                  (json_int_t) 1767625629000LL);
    ingest_doc_t doc;
    char err[256];
    cr_assert_eq (ingest_extract_raw ("Some raw text here.", metadata, S_NOW, &doc, err,
                                      sizeof err),
                  INGEST_EXTRACT_OK, "%s", err);
    cr_assert_str_eq (doc.text, "Some raw text here.");
    cr_assert_str_eq (doc.title, "Team Notes.md");
    cr_assert_str_eq (doc.url, "file://team-notes.txt");
    cr_assert_str_eq (doc.chunk_source, "team-notes.txt");
    cr_assert_str_eq (doc.doc_author, "no author specified");
    cr_assert_str_eq (doc.description, "no description found");
    cr_assert_str_eq (doc.doc_source, "no source set");
    cr_assert_str_eq (doc.published, "1/5/2026, 3:07:09 PM");
    cr_assert (!strncmp (doc.name, "raw-team-notes-", 15), "%s", doc.name);
    cr_assert_eq (doc.word_count, 4);
    cr_assert_eq (doc.token_count_estimate, 5);
    ingest_doc_clear (&doc);
    json_decref (metadata);

    //  422s, as API.md says.
    metadata = json_pack ("{s:s}", "description", "no title");
    cr_assert_eq (ingest_extract_raw ("text", metadata, S_NOW, &doc, err, sizeof err),
                  INGEST_EXTRACT_UNPROCESSABLE);
    cr_assert (strstr (err, "title"), "%s", err);
    cr_assert_eq (ingest_extract_raw ("text", NULL, S_NOW, &doc, err, sizeof err),
                  INGEST_EXTRACT_UNPROCESSABLE);
    json_decref (metadata);
    metadata = json_pack ("{s:s}", "title", "T");
    cr_assert_eq (ingest_extract_raw ("  \n ", metadata, S_NOW, &doc, err, sizeof err),
                  INGEST_EXTRACT_UNPROCESSABLE);
    cr_assert (strstr (err, "empty"), "%s", err);
    cr_assert_eq (ingest_extract_raw (NULL, metadata, S_NOW, &doc, err, sizeof err),
                  INGEST_EXTRACT_UNPROCESSABLE);
    json_decref (metadata);
}

Test (ingest_extract, garbage_in_every_format_never_crashes)
{
    const char *names[] = {"g.txt", "g.md", "g.html", "g.csv", "g.json", "g.pdf"};
    unsigned int seed = 99;
    unsigned char buffer[2048];
    for (int round = 0; round < 300; round++) {
        size_t size = (size_t) (rand_r (&seed) % sizeof buffer);
        for (size_t i = 0; i < size; i++)
            buffer[i] = (unsigned char) (rand_r (&seed) % 4 ? rand_r (&seed) % 128
                                                            : rand_r (&seed));
        if (round % 3 == 0 && size > 8)
            memcpy (buffer, "%PDF-1.4\n", 9);
        unsigned char *copy = malloc (size ? size : 1);
        memcpy (copy, buffer, size);
        const char *name = names[round % 6];
        ingest_doc_t doc;
        char err[256];
        ingest_extract_result_t rc =
            ingest_extract (name, NULL, copy, size, NULL, S_NOW, &doc, err, sizeof err);
        cr_assert (rc == INGEST_EXTRACT_OK || rc == INGEST_EXTRACT_UNPROCESSABLE);
        if (rc == INGEST_EXTRACT_OK) {
            //  Whatever came out is valid UTF-8 for the JSON it will go into.
            json_t *text = json_stringn (doc.text, doc.text_size);
            cr_assert (text, "%s gave invalid UTF-8", name);
            json_decref (text);
        }
        ingest_doc_clear (&doc);
        free (copy);
    }
}
