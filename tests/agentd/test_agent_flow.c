/*  test_agent_flow.c: ${var} substitution and the checks a flow passes
    before it is saved. */
#include <criterion/criterion.h>
#include "agent_flow.h"

static json_t *
s_vars (void)
{
    return json_pack ("{s:s, s:i, s:{s:[{s:s}, {s:s}], s:b}, s:n}", "name", "Ada", "n", 3,
                      "user", "items", "id", "a1", "id", "b2", "ok", 1, "none");
}

static void
s_expect_subst (const char *text, const char *expected)
{
    json_t *vars = s_vars ();
    char *out = agent_flow_subst (text, vars);
    cr_assert_str_eq (out, expected, "subst(%s)", text);
    free (out);
    json_decref (vars);
}

Test (agent_flow, substitutes_strings_numbers_paths_and_objects)
{
    s_expect_subst ("hello ${name}!", "hello Ada!");
    s_expect_subst ("${n}${n}", "33");
    s_expect_subst ("${user.items[1].id}", "b2");
    s_expect_subst ("${user.items.0.id}", "a1");
    s_expect_subst ("${user.ok}", "true");
    s_expect_subst ("${none}", "null");
    s_expect_subst ("${user.items[0]}", "{\"id\":\"a1\"}");
    s_expect_subst ("no refs", "no refs");
    s_expect_subst ("", "");
    //  Numbers as JavaScript writes them, not to 17 digits (19.99 went
    //  out as 19.989999999999998), alone and inside an object.
    json_t *vars = json_pack ("{s:f, s:{s:f}}", "price", 19.99, "cart", "tax", 0.1);
    char *out = agent_flow_subst ("p=${price} c=${cart}", vars);
    cr_assert_str_eq (out, "p=19.99 c={\"tax\":0.1}");
    free (out);
    json_decref (vars);
}

Test (agent_flow, leaves_unknown_references_as_written)
{
    s_expect_subst ("${missing} and ${user.items[9].id}",
                    "${missing} and ${user.items[9].id}");
    s_expect_subst ("${name", "${name");
    s_expect_subst ("${user.items[x]}", "${user.items[x]}");
    s_expect_subst ("${}", "${}");
}

//  A field naming a large variable many times must not take all memory:
//  past AGENT_FLOW_MAX_TEXT the substitution gives up.
Test (agent_flow, caps_the_substituted_text)
{
    size_t big = 1 << 20;
    char *value = malloc (big + 1);
    memset (value, 'x', big);
    value[big] = 0;
    json_t *vars = json_pack ("{s:s}", "big", value);
    free (value);
    size_t refs = AGENT_FLOW_MAX_TEXT / big; //  exactly the cap: fits
    char *text = calloc (refs + 2, sizeof "${big}");
    for (size_t i = 0; i < refs; i++)
        strcat (text, "${big}");
    char *out = agent_flow_subst (text, vars);
    cr_assert (out, "%zu bytes are within the cap", refs * big);
    cr_assert_eq (strlen (out), (size_t) AGENT_FLOW_MAX_TEXT);
    free (out);
    strcat (text, "!"); //  one byte more
    cr_assert_null (agent_flow_subst (text, vars));
    text[strlen (text) - 1] = 0;
    strcat (text, "${big}");
    cr_assert_null (agent_flow_subst (text, vars));
    free (text);
    json_decref (vars);
}

//  Validate steps given as JSON text; return the error ("" when valid).
static char s_err[512];
static const char *
s_validate (const char *steps_json)
{
    json_error_t error;
    json_t *steps = json_loads (steps_json, 0, &error);
    cr_assert (steps, "bad test JSON: %s", error.text);
    s_err[0] = 0;
    int rc = agent_flow_validate (steps, s_err, sizeof s_err);
    json_decref (steps);
    cr_assert ((rc == 0) == (s_err[0] == 0), "rc %d with err '%s'", rc, s_err);
    return s_err;
}

Test (agent_flow, accepts_a_good_flow)
{
    cr_assert_str_eq (
        s_validate (
            "[{\"type\":\"start\",\"config\":{\"variables\":[{\"name\":\"city\","
            "\"value\":\"Paris\"}]}},"
            "{\"type\":\"apiCall\",\"config\":{\"url\":\"http://x/${city}\","
            "\"method\":\"POST\",\"headers\":[{\"key\":\"X-C\",\"value\":\"${city}\"}],"
            "\"bodyType\":\"json\",\"body\":{\"c\":\"${city}\"},"
            "\"responseVariable\":\"weather\"}},"
            "{\"type\":\"llmInstruction\",\"config\":{\"instruction\":"
            "\"Summarise ${weather.temp}\",\"resultVariable\":\"summary\"}},"
            "{\"type\":\"webScraping\",\"config\":{\"url\":\"http://y/${summary}\","
            "\"captureAs\":\"text\",\"querySelector\":\"div.post p\","
            "\"directOutput\":true}}]"),
        "");
    cr_assert_str_eq (s_validate ("[]"), "");
}

Test (agent_flow, names_the_step_and_field_of_each_problem)
{
    cr_assert_str_eq (s_validate ("{}"), "steps must be an array of {type, config}");
    cr_assert_str_eq (s_validate ("[{\"config\":{}}]"),
                      "steps[0]: type is required (a string)");
    cr_assert_str_eq (s_validate ("[{\"type\":\"teleport\",\"config\":{}}]"),
                      "steps[0]: unknown step type 'teleport' (start, apiCall, "
                      "llmInstruction or webScraping)");
    cr_assert_str_eq (s_validate ("[{\"type\":\"apiCall\"}]"),
                      "steps[0] (apiCall): config is required (an object)");
    cr_assert_str_eq (
        s_validate ("[{\"type\":\"start\",\"config\":{}},"
                    "{\"type\":\"apiCall\",\"config\":{\"method\":\"GET\"}}]"),
        "steps[1] (apiCall): config.url is required");
    cr_assert_str_eq (
        s_validate ("[{\"type\":\"apiCall\",\"config\":{\"url\":\"http://x\","
                    "\"method\":\"FETCH\"}}]"),
        "steps[0] (apiCall): config.method has a value that is not supported");
    cr_assert_str_eq (
        s_validate ("[{\"type\":\"apiCall\",\"config\":{\"url\":\"http://x\","
                    "\"headers\":{\"a\":\"b\"}}}]"),
        "steps[0] (apiCall): config.headers must be an array of {key, value}");
    cr_assert_str_eq (s_validate ("[{\"type\":\"llmInstruction\",\"config\":"
                                  "{\"instruction\":\"\"}}]"),
                      "steps[0] (llmInstruction): config.instruction must not be empty");
    cr_assert_str_eq (
        s_validate ("[{\"type\":\"llmInstruction\",\"config\":{\"instruction\":"
                    "\"hi\"}},{\"type\":\"start\",\"config\":{}}]"),
        "steps[1] (start): the start step must be the first");
    cr_assert_str_eq (
        s_validate ("[{\"type\":\"webScraping\",\"config\":{\"url\":\"http://x\","
                    "\"querySelector\":\"div > p\"}}]"),
        "steps[0] (webScraping): config.querySelector 'div > p': '>' is not supported "
        "(tag, .class, #id and descendants only)");
    cr_assert_str_eq (
        s_validate ("[{\"type\":\"webScraping\",\"config\":{\"url\":\"http://x\","
                    "\"captureAs\":\"querySelector\"}}]"),
        "steps[0] (webScraping): config.querySelector is required when "
        "captureAs is querySelector");
}

Test (agent_flow, refuses_variables_never_defined_before_use)
{
    //  Used before the step that defines it.
    cr_assert_str_eq (
        s_validate (
            "[{\"type\":\"start\",\"config\":{\"variables\":[{\"name\":\"a\"}]}},"
            "{\"type\":\"llmInstruction\",\"config\":{\"instruction\":\"${a} ${b.x}\"}},"
            "{\"type\":\"llmInstruction\",\"config\":{\"instruction\":\"x\","
            "\"resultVariable\":\"b\"}}]"),
        "steps[1] (llmInstruction): config.instruction uses ${b}, which no start "
        "variable "
        "or earlier step defines");
    //  In a header value.
    cr_assert_str_eq (
        s_validate ("[{\"type\":\"apiCall\",\"config\":{\"url\":\"http://x\",\"headers\":"
                    "[{\"key\":\"A\",\"value\":\"${token}\"}]}}]"),
        "steps[0] (apiCall): config.headers uses ${token}, which no start variable or "
        "earlier step defines");
}

Test (agent_flow, start_variables_with_overrides)
{
    json_t *steps =
        json_loads ("[{\"type\":\"start\",\"config\":{\"variables\":[{\"name\":"
                    "\"a\",\"value\":\"1\"},{\"name\":\"b\"}]}}]",
                    0, NULL);
    json_t *overrides = json_pack ("{s:s, s:i}", "a", "x", "c", 7);
    json_t *vars = agent_flow_variables (steps, overrides);
    char *text = json_dumps (vars, JSON_COMPACT | JSON_SORT_KEYS);
    cr_assert_str_eq (text, "{\"a\":\"x\",\"b\":\"\",\"c\":7}");
    free (text);
    json_decref (vars);
    json_decref (overrides);
    json_decref (steps);
}
