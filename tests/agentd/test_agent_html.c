/*  test_agent_html.c: the selector subset and text extraction of the
    webScraping step (libxml2's HTML parser underneath). */
#include <criterion/criterion.h>
#include "agent_html.h"

#define PAGE                                                                             \
    "<html><head><title>T</title><style>p{color:red}</style></head><body>"               \
    "<div id=\"main\" class=\"post big\"><h1>Hello</h1><p class=\"lead\">First "         \
    "<b>bold</b>   para</p><p>Second</p></div><p class=\"lead\">Outside</p>"             \
    "<span class=\"postscript\">not a post</span>"                                       \
    "<script>var x = 1;</script></body></html>"

static char *
s_extract (const char *selector, bool as_html)
{
    char err[256] = "";
    char *text =
        agent_html_extract (PAGE, strlen (PAGE), selector, as_html, err, sizeof err);
    cr_assert (text, "extract(%s) failed: %s", selector ? selector : "(none)", err);
    return text;
}

static void
s_expect (const char *selector, const char *expected)
{
    char *text = s_extract (selector, false);
    cr_assert_str_eq (text, expected, "selector '%s'", selector ? selector : "(none)");
    free (text);
}

Test (agent_html, whole_body_text_without_scripts_or_styles)
{
    s_expect (NULL, "Hello First bold para Second Outside not a post");
    s_expect ("", "Hello First bold para Second Outside not a post");
}

Test (agent_html, tag_class_id_and_descendant_selectors)
{
    s_expect ("h1", "Hello");
    s_expect ("p", "First bold para\nSecond\nOutside");
    s_expect (".lead", "First bold para\nOutside");
    s_expect ("p.lead", "First bold para\nOutside");
    s_expect ("#main p", "First bold para\nSecond");
    s_expect ("div.post.big .lead", "First bold para");
    s_expect ("body div b", "bold");
    s_expect (".post", "Hello First bold para Second"); //  not "postscript"
    s_expect ("DIV#main H1", "Hello");
    s_expect ("table", "");
    s_expect ("*#main h1", "Hello");
}

Test (agent_html, html_capture_gives_outer_html)
{
    char *text = s_extract ("h1", true);
    cr_assert_str_eq (text, "<h1>Hello</h1>");
    free (text);
}

Test (agent_html, refuses_what_the_subset_lacks)
{
    const char *bad[] = {"div > p", "a[href]", "p:first-child", "a, b", ".", "#", "   "};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char err[256] = "";
        agent_selector_t *selector = agent_selector_new (bad[i], err, sizeof err);
        cr_assert_null (selector, "'%s' was accepted", bad[i]);
        cr_assert (*err, "no reason for '%s'", bad[i]);
    }
}

Test (agent_html, broken_markup_is_recovered)
{
    const char *html = "<div class=a><p>one<p>two</div><div class=a>three";
    char err[256];
    char *text =
        agent_html_extract (html, strlen (html), "div.a", false, err, sizeof err);
    cr_assert_str_eq (text, "one two\nthree");
    free (text);
}

Test (agent_html, a_page_nested_beyond_reason_does_not_exhaust_the_stack)
{
    //  A fetched page nesting 300,000 elements: the walks recurse per level,
    //  so libxml2's depth limit stays on here; the text before the deep
    //  point comes out, and nothing crashes.
    const size_t depth = 300000;
    char *html = malloc (depth * 11 + 128);
    char *p = html + sprintf (html, "<html><body><p>before text</p>");
    for (size_t i = 0; i < depth; i++)
        p += sprintf (p, "<div>");
    for (size_t i = 0; i < depth; i++)
        p += sprintf (p, "</div>");
    sprintf (p, "</body></html>");
    char err[256] = "";
    char *text = agent_html_extract (html, strlen (html), NULL, false, err, sizeof err);
    cr_assert_not_null (text, "%s", err);
    cr_assert (strstr (text, "before text"), "%.200s", text);
    free (text);
    text = agent_html_extract (html, strlen (html), "div", true, err, sizeof err);
    free (text);
    free (html);
}
