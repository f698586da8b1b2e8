/*  agent_html.h: text out of a web page, for the webScraping step. The
    page is parsed with libxml2's forgiving HTML parser; a CSS-like
    selector picks elements. The selector language is a small subset of
    CSS: compound selectors `tag`, `.class`, `#id`, `tag.class#id.other`
    (any combination, `*` for any tag), joined by whitespace as
    descendant combinators ("div.post p"). Nothing else (no `>`, `,`,
    attributes or pseudo-classes): those are refused with a reason, so a
    flow that uses them is refused when it is saved.

    Threading: pure functions; libxml2 must have been initialised
    (xmlInitParser, done by agent_html_init) before threads use it. */
#ifndef AGENT_HTML_H_INCLUDED
#define AGENT_HTML_H_INCLUDED

#include "cm_common.h"

typedef struct agent_selector_s agent_selector_t;

//  Parse a selector. NULL with the reason in err when it is empty or uses
//  what the subset lacks. Caller owns it.
agent_selector_t *agent_selector_new (const char *text, char *err, size_t errlen);
//  Destroy; NULL-safe; nulls the pointer.
void agent_selector_destroy (agent_selector_t **self_p);

//  Initialise libxml2 once, from the main thread.
void agent_html_init (void);

//  Extract from html (size bytes): with selector (may be NULL or ""), the
//  matching elements in document order, else the <body> (the whole document
//  when there is none); as_html: their outer HTML, else their text with
//  whitespace runs collapsed (script and style skipped). Matches are joined
//  by "\n". Returns a new string (may be "" when nothing matched), or NULL
//  with the reason in err (a bad selector, a document that cannot be
//  parsed).
char *agent_html_extract (const char *html, size_t size, const char *selector,
                          bool as_html, char *err, size_t errlen);

#endif
