/*  fuzz_html.c: agentd's webScraping extraction on any page. The first
    byte says whether to return HTML; the text up to the first newline (at
    most 64 bytes) is the selector; the rest is the page. */
#include "fuzz.h"

#include "agent_html.h"

#include <string.h>

int
LLVMFuzzerTestOneInput (const uint8_t *data, size_t size)
{
    static bool ready;
    if (!ready) {
        agent_html_init ();
        ready = true;
    }
    if (size < 1)
        return 0;
    bool as_html = data[0] & 1;
    const char *rest = (const char *) data + 1;
    size_t rest_size = size - 1;
    const char *newline = memchr (rest, '\n', rest_size < 65 ? rest_size : 65);
    char selector[66] = "";
    if (newline) {
        memcpy (selector, rest, (size_t) (newline - rest));
        selector[newline - rest] = '\0';
        rest_size -= (size_t) (newline - rest) + 1;
        rest = newline + 1;
    }
    char err[256] = "";
    if (selector[0]) {
        agent_selector_t *parsed = agent_selector_new (selector, err, sizeof err);
        FUZZ_CHECK (parsed || err[0]);
        agent_selector_destroy (&parsed);
    }
    err[0] = '\0';
    char *text = agent_html_extract (rest, rest_size, selector, as_html, err, sizeof err);
    FUZZ_CHECK (text || err[0]);
    free (text);
    return 0;
}
