/*  agent_html.c: see agent_html.h. */
#include "agent_html.h"
#include <ctype.h>
#include <libxml/HTMLparser.h>
#include <libxml/HTMLtree.h>
#include <libxml/tree.h>

#define S_MAX_PARTS   16 //  compound selectors in a chain
#define S_MAX_CLASSES 8  //  classes in one compound

typedef struct {
    char *tag;                    //  lower-case tag, NULL: any
    char *id;                     //  NULL: any
    char *classes[S_MAX_CLASSES]; //  all must be present
    size_t class_count;
} s_compound_t;

struct agent_selector_s {
    s_compound_t parts[S_MAX_PARTS]; //  ancestor first; the last matches the element
    size_t count;
};

static bool
s_ident_char (int c)
{
    return isalnum (c) || c == '-' || c == '_' || c >= 0x80;
}

void
agent_selector_destroy (agent_selector_t **self_p)
{
    assert (self_p);
    agent_selector_t *self = *self_p;
    if (!self)
        return;
    for (size_t i = 0; i < self->count; i++) {
        free (self->parts[i].tag);
        free (self->parts[i].id);
        for (size_t c = 0; c < self->parts[i].class_count; c++)
            free (self->parts[i].classes[c]);
    }
    free (self);
    *self_p = NULL;
}

static char *
s_ident (const char **p_p, bool lower)
{
    const char *p = *p_p, *start = p;
    while (*p && s_ident_char ((unsigned char) *p))
        p++;
    if (p == start)
        return NULL;
    char *ident = cm_malloc ((size_t) (p - start) + 1);
    for (size_t i = 0; i < (size_t) (p - start); i++)
        ident[i] = lower ? (char) tolower ((unsigned char) start[i]) : start[i];
    ident[p - start] = 0;
    *p_p = p;
    return ident;
}

agent_selector_t *
agent_selector_new (const char *text, char *err, size_t errlen)
{
    assert (text);
    agent_selector_t *self = cm_calloc (1, sizeof *self);
    const char *p = text;
    while (true) {
        while (isspace ((unsigned char) *p))
            p++;
        if (!*p)
            break;
        if (self->count == S_MAX_PARTS) {
            snprintf (err, errlen, "has more than %d parts", S_MAX_PARTS);
            goto fail;
        }
        s_compound_t *part = &self->parts[self->count++];
        if (*p == '*')
            p++;
        else if (s_ident_char ((unsigned char) *p))
            part->tag = s_ident (&p, true);
        while (*p == '.' || *p == '#') {
            char kind = *p++;
            char *ident = s_ident (&p, false);
            if (!ident) {
                snprintf (err, errlen, "'%.100s': '%c' must be followed by a name", text,
                          kind);
                goto fail;
            }
            if (kind == '#') {
                free (part->id);
                part->id = ident;
            } else if (part->class_count == S_MAX_CLASSES) {
                free (ident);
                snprintf (err, errlen, "'%.100s': too many classes", text);
                goto fail;
            } else
                part->classes[part->class_count++] = ident;
        }
        if (*p && !isspace ((unsigned char) *p)) {
            snprintf (err, errlen,
                      "'%.100s': '%c' is not supported (tag, .class, #id and "
                      "descendants only)",
                      text, *p);
            goto fail;
        }
    }
    if (!self->count) {
        snprintf (err, errlen, "is empty");
        goto fail;
    }
    return self;
fail:
    agent_selector_destroy (&self);
    return NULL;
}

void
agent_html_init (void)
{
    xmlInitParser ();
}

//  Does the element have this class (in its space-separated class list)?
static bool
s_has_class (xmlNodePtr node, const char *name)
{
    xmlChar *value = xmlGetProp (node, BAD_CAST "class");
    bool found = false;
    if (value) {
        size_t len = strlen (name);
        const char *p = (const char *) value;
        while (*p && !found) {
            while (isspace ((unsigned char) *p))
                p++;
            const char *start = p;
            while (*p && !isspace ((unsigned char) *p))
                p++;
            found = (size_t) (p - start) == len && !memcmp (start, name, len);
        }
        xmlFree (value);
    }
    return found;
}

static bool
s_matches (const s_compound_t *part, xmlNodePtr node)
{
    if (node->type != XML_ELEMENT_NODE)
        return false;
    if (part->tag && strcasecmp ((const char *) node->name, part->tag))
        return false;
    if (part->id) {
        xmlChar *id = xmlGetProp (node, BAD_CAST "id");
        bool same = id && !strcmp ((const char *) id, part->id);
        xmlFree (id);
        if (!same)
            return false;
    }
    for (size_t c = 0; c < part->class_count; c++)
        if (!s_has_class (node, part->classes[c]))
            return false;
    return true;
}

//  Does node match the chain parts[0..last], parts[last] on node itself and
//  the others on ancestors, in order (greedy from the nearest ancestor is
//  exact for descendant-only chains)?
static bool
s_matches_chain (const agent_selector_t *self, xmlNodePtr node)
{
    if (!s_matches (&self->parts[self->count - 1], node))
        return false;
    size_t want = self->count - 1;
    for (xmlNodePtr up = node->parent; up && want > 0; up = up->parent)
        if (s_matches (&self->parts[want - 1], up))
            want--;
    return want == 0;
}

typedef struct {
    char *data;
    size_t size, max;
    bool space; //  a blank is pending before the next word
} s_text_t;

static void
s_put (s_text_t *text, const char *bytes, size_t size)
{
    if (text->size + size + 1 > text->max) {
        text->max = (text->size + size + 1) * 2;
        text->data = cm_realloc (text->data, text->max);
    }
    memcpy (text->data + text->size, bytes, size);
    text->size += size;
    text->data[text->size] = 0;
}

//  Append node's text with whitespace collapsed, skipping script and style.
static void
s_text (s_text_t *text, xmlNodePtr node)
{
    for (xmlNodePtr child = node; child; child = child->next) {
        if (child->type == XML_TEXT_NODE || child->type == XML_CDATA_SECTION_NODE) {
            const char *p = (const char *) child->content;
            while (p && *p) {
                if (isspace ((unsigned char) *p)) {
                    text->space = true;
                    p++;
                    continue;
                }
                const char *start = p;
                while (*p && !isspace ((unsigned char) *p))
                    p++;
                if (text->space && text->size)
                    s_put (text, " ", 1);
                text->space = false;
                s_put (text, start, (size_t) (p - start));
            }
        } else if (child->type == XML_ELEMENT_NODE) {
            if (!strcasecmp ((const char *) child->name, "script") ||
                !strcasecmp ((const char *) child->name, "style"))
                continue;
            text->space = true;
            s_text (text, child->children);
            text->space = true;
        }
    }
}

//  Append node's outer HTML, without the line end libxml2 adds after it.
static void
s_dump (s_text_t *out, xmlDocPtr doc, xmlNodePtr node)
{
    xmlBufferPtr buffer = xmlBufferCreate ();
    htmlNodeDump (buffer, doc, node);
    const char *html = (const char *) xmlBufferContent (buffer);
    size_t size = (size_t) xmlBufferLength (buffer);
    while (size && isspace ((unsigned char) html[size - 1]))
        size--;
    s_put (out, html, size);
    xmlBufferFree (buffer);
}

static void
s_emit (s_text_t *out, xmlDocPtr doc, xmlNodePtr node, bool as_html)
{
    if (out->size)
        s_put (out, "\n", 1);
    if (as_html)
        s_dump (out, doc, node);
    else {
        s_text_t text = {NULL, 0, 0, false};
        s_put (&text, "", 0);
        s_text (&text, node->children);
        s_put (out, text.data, text.size);
        free (text.data);
    }
}

//  Walk the tree in document order; emit each match (not its descendants:
//  they are inside it already).
static void
s_walk (const agent_selector_t *selector, xmlDocPtr doc, xmlNodePtr node, s_text_t *out,
        bool as_html)
{
    for (; node; node = node->next) {
        if (node->type != XML_ELEMENT_NODE)
            continue;
        if (s_matches_chain (selector, node))
            s_emit (out, doc, node, as_html);
        else
            s_walk (selector, doc, node->children, out, as_html);
    }
}

static xmlNodePtr
s_find (xmlNodePtr node, const char *name)
{
    for (; node; node = node->next) {
        if (node->type == XML_ELEMENT_NODE &&
            !strcasecmp ((const char *) node->name, name))
            return node;
        xmlNodePtr found = s_find (node->children, name);
        if (found)
            return found;
    }
    return NULL;
}

char *
agent_html_extract (const char *html, size_t size, const char *selector, bool as_html,
                    char *err, size_t errlen)
{
    assert (html);
    agent_selector_t *parsed = NULL;
    if (selector && *selector) {
        char why[200];
        parsed = agent_selector_new (selector, why, sizeof why);
        if (!parsed) {
            snprintf (err, errlen, "querySelector %s", why);
            return NULL;
        }
    }
    if (size > INT32_MAX) {
        snprintf (err, errlen, "the page is too large");
        agent_selector_destroy (&parsed);
        return NULL;
    }
    //  libxml2's default depth limit (256) is kept here: the walks below
    //  recurse per level, and a fetched page must not be able to exhaust a
    //  handler's stack (ingestd walks iteratively and lifts the limit).
    htmlDocPtr doc = htmlReadMemory (html, (int) size, NULL, "UTF-8",
                                     HTML_PARSE_RECOVER | HTML_PARSE_NOERROR |
                                         HTML_PARSE_NOWARNING | HTML_PARSE_NONET);
    s_text_t out = {NULL, 0, 0, false};
    s_put (&out, "", 0);
    xmlNodePtr root = doc ? xmlDocGetRootElement (doc) : NULL;
    if (root) {
        if (parsed)
            s_walk (parsed, doc, root, &out, as_html);
        else if (as_html)
            s_dump (&out, doc, root);
        else {
            xmlNodePtr body = s_find (root, "body");
            s_emit (&out, doc, body ? body : root, false);
        }
    }
    if (doc)
        xmlFreeDoc (doc);
    agent_selector_destroy (&parsed);
    return out.data;
}
