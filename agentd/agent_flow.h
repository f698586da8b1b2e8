/*  agent_flow.h: what an agent flow means, without running it: the
    `${var}` substitution, and the checks a flow passes before it is saved.

    Flows have upstream AnythingLLM's shape: {name, description, active,
    steps:[{type, config}]} with step types start (variables:[{name,
    value}]), apiCall (url, method, headers:[{key, value}], bodyType
    json|form|text, body, formData:[{key, value}], responseVariable,
    directOutput), llmInstruction (instruction, resultVariable) and
    webScraping (url, captureAs text|html|querySelector, querySelector,
    resultVariable, directOutput).

    Substitution: `${name}` is the variable's value, `${name.key[0].other}`
    a path into it; strings go in as they are, other values as compact
    JSON. A reference to a variable that does not exist (or a path that
    does not lead anywhere) is left as written, as upstream does.

    Threading: pure functions; any thread. */
#ifndef AGENT_FLOW_H_INCLUDED
#define AGENT_FLOW_H_INCLUDED

#include "cm_common.h"
#include <jansson.h>

//  The value at expr ("name", "name.key", "name[0].key"; size bytes) in
//  vars (an object), borrowed; NULL when absent or expr does not parse.
json_t *agent_flow_lookup (const json_t *vars, const char *expr, size_t size);

//  Longest text a substitution may produce: a field that names a large
//  variable many times must not take all memory.
#define AGENT_FLOW_MAX_TEXT (16 * 1024 * 1024)

//  How values are written into a step's text: compact, and numbers with 15
//  significant digits, as the replies are (19.99, not 19.989999999999998).
#define AGENT_FLOW_JSON (JSON_COMPACT | JSON_REAL_PRECISION (15))

//  text with every `${...}` replaced (see above). New string, caller frees;
//  NULL when it would be longer than AGENT_FLOW_MAX_TEXT bytes.
char *agent_flow_subst (const char *text, const json_t *vars);

//  Called for each `${...}` in a text with the variable's name (not
//  NUL-terminated, size bytes). Return false to stop.
typedef bool (agent_flow_ref_fn) (const char *name, size_t size, void *arg);
//  Walk the references of text.
void agent_flow_refs (const char *text, agent_flow_ref_fn *fn, void *arg);

//  Check a flow's steps: an array of {type, config} objects; a known type;
//  start only first; each type's required fields present with the right
//  kind (see above); a querySelector that parses; every `${var}` defined by
//  the start step or by an earlier step's resultVariable/responseVariable.
//  Returns 0, or -1 with a message naming the step ("steps[2] (apiCall)")
//  and the field in err.
int agent_flow_validate (const json_t *steps, char *err, size_t errlen);

//  The run's starting variables: the start step's defaults, then the
//  caller's overrides (an object, or NULL) on top. New object.
json_t *agent_flow_variables (const json_t *steps, const json_t *overrides);

#endif
