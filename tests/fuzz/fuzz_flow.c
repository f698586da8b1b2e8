/*  fuzz_flow.c: agent-flow substitution and validation on any input. Up
    to the first NUL is a text with `${...}` references; after it a JSON
    document: an object is the variables, an array the steps to validate. */
#include "fuzz.h"

#include "agent_flow.h"

#include <string.h>

typedef struct {
    const json_t *vars;
    size_t refs;
} s_walk_t;

static bool
s_on_ref (const char *name, size_t size, void *arg)
{
    s_walk_t *walk = arg;
    agent_flow_lookup (walk->vars, name, size);
    return ++walk->refs < 1000;
}

int
LLVMFuzzerTestOneInput (const uint8_t *data, size_t size)
{
    const char *nul = memchr (data, 0, size);
    size_t text_size = nul ? (size_t) (nul - (const char *) data) : size;
    char *text = malloc (text_size + 1);
    memcpy (text, data, text_size);
    text[text_size] = '\0';
    json_t *doc = NULL;
    if (nul)
        doc = json_loadb (nul + 1, size - text_size - 1, JSON_DECODE_ANY, NULL);
    json_t *vars = json_is_object (doc) ? json_incref (doc)
                                        : json_pack ("{s:s, s:{s:[i, s]}}", "name", "x",
                                                     "obj", "list", 1, "two");
    char *out = agent_flow_subst (text, vars);
    //  A text without references comes back as it is.
    if (out && !strstr (text, "${"))
        FUZZ_CHECK (!strcmp (out, text));
    free (out);
    s_walk_t walk = {vars, 0};
    agent_flow_refs (text, s_on_ref, &walk);
    if (json_is_array (doc)) {
        char err[512] = "";
        int rc = agent_flow_validate (doc, err, sizeof err);
        FUZZ_CHECK (rc == 0 || (rc == -1 && err[0]));
        json_t *start = agent_flow_variables (doc, vars);
        FUZZ_CHECK (json_is_object (start));
        json_decref (start);
    }
    json_decref (vars);
    json_decref (doc);
    free (text);
    return 0;
}
