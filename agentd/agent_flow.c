/*  agent_flow.c: see agent_flow.h. */
#include "agent_flow.h"
#include "agent_html.h"
#include <ctype.h>

json_t *
agent_flow_lookup (const json_t *vars, const char *expr, size_t size)
{
    const char *p = expr, *end = expr + size;
    //  The name: up to the first '.' or '['.
    const char *name_end = p;
    while (name_end < end && *name_end != '.' && *name_end != '[')
        name_end++;
    if (name_end == p)
        return NULL;
    char name[256];
    if ((size_t) (name_end - p) >= sizeof name)
        return NULL;
    memcpy (name, p, (size_t) (name_end - p));
    name[name_end - p] = 0;
    json_t *value = json_object_get (vars, name);
    p = name_end;
    while (value && p < end) {
        if (*p == '.') {
            const char *key = ++p;
            while (p < end && *p != '.' && *p != '[')
                p++;
            if (p == key || (size_t) (p - key) >= sizeof name)
                return NULL;
            memcpy (name, key, (size_t) (p - key));
            name[p - key] = 0;
            if (json_is_object (value))
                value = json_object_get (value, name);
            else if (json_is_array (value) && isdigit ((unsigned char) name[0]))
                value = json_array_get (value, strtoul (name, NULL, 10));
            else
                return NULL;
        } else if (*p == '[') {
            p++;
            if (p >= end || !isdigit ((unsigned char) *p))
                return NULL;
            size_t index = 0;
            while (p < end && isdigit ((unsigned char) *p)) {
                index = index * 10 + (size_t) (*p - '0');
                if (index > 1000000000)
                    return NULL;
                p++;
            }
            if (p >= end || *p != ']' || !json_is_array (value))
                return NULL;
            p++;
            value = json_array_get (value, index);
        } else
            return NULL;
    }
    return value;
}

//  A growing string.
typedef struct {
    char *data;
    size_t size, max;
} s_buf_t;

//  Append; false (and nothing appended) past AGENT_FLOW_MAX_TEXT.
static bool
s_put (s_buf_t *buf, const char *bytes, size_t size)
{
    if (size > AGENT_FLOW_MAX_TEXT - buf->size)
        return false;
    if (buf->size + size + 1 > buf->max) {
        buf->max = (buf->size + size + 1) * 2;
        buf->data = cm_realloc (buf->data, buf->max);
    }
    memcpy (buf->data + buf->size, bytes, size);
    buf->size += size;
    buf->data[buf->size] = 0;
    return true;
}

char *
agent_flow_subst (const char *text, const json_t *vars)
{
    assert (text);
    s_buf_t buf = {NULL, 0, 0};
    s_put (&buf, "", 0);
    const char *p = text;
    bool fits = true;
    while (*p && fits) {
        const char *open = strstr (p, "${");
        const char *close = open ? strchr (open + 2, '}') : NULL;
        if (!close) {
            fits = s_put (&buf, p, strlen (p));
            break;
        }
        if (!(fits = s_put (&buf, p, (size_t) (open - p))))
            break;
        json_t *value = agent_flow_lookup (vars, open + 2, (size_t) (close - open - 2));
        if (!value)
            fits = s_put (&buf, open, (size_t) (close + 1 - open));
        else if (json_is_string (value))
            fits = s_put (&buf, json_string_value (value), json_string_length (value));
        else {
            char *dumped = json_dumps (value, AGENT_FLOW_JSON | JSON_ENCODE_ANY);
            if (dumped)
                fits = s_put (&buf, dumped, strlen (dumped));
            free (dumped);
        }
        p = close + 1;
    }
    if (!fits) {
        free (buf.data);
        return NULL;
    }
    return buf.data;
}

void
agent_flow_refs (const char *text, agent_flow_ref_fn *fn, void *arg)
{
    const char *p = text;
    while (p && (p = strstr (p, "${"))) {
        const char *close = strchr (p + 2, '}');
        if (!close)
            return;
        const char *name = p + 2, *end = name;
        while (end < close && *end != '.' && *end != '[')
            end++;
        if (!fn (name, (size_t) (end - name), arg))
            return;
        p = close + 1;
    }
}

//  --- validation --------------------------------------------------------------------

typedef struct {
    json_t *defined; //  names defined so far (object used as a set)
    const char *undefined_name;
    size_t undefined_size;
} s_scope_t;

static bool
s_check_ref (const char *name, size_t size, void *arg)
{
    s_scope_t *scope = (s_scope_t *) arg;
    char key[256];
    if (size && size < sizeof key) {
        memcpy (key, name, size);
        key[size] = 0;
        if (json_object_get (scope->defined, key))
            return true;
    }
    scope->undefined_name = name;
    scope->undefined_size = size;
    return false;
}

//  Every string inside value (recursively) must only reference defined
//  variables. Returns false with scope->undefined_* set.
static bool
s_refs_defined (s_scope_t *scope, const json_t *value)
{
    if (json_is_string (value)) {
        scope->undefined_name = NULL;
        agent_flow_refs (json_string_value (value), s_check_ref, scope);
        return scope->undefined_name == NULL;
    }
    if (json_is_array (value)) {
        size_t i;
        json_t *item;
        json_array_foreach (value, i, item)
        {
            if (!s_refs_defined (scope, item))
                return false;
        }
    } else if (json_is_object (value)) {
        const char *key;
        json_t *item;
        json_object_foreach ((json_t *) value, key, item)
        {
            if (!s_refs_defined (scope, item))
                return false;
        }
    }
    return true;
}

//  A field's kind.
typedef enum { S_STRING, S_BOOL, S_PAIRS, S_BODY, S_VARS } s_kind_t;

typedef struct {
    const char *name;
    s_kind_t kind;
    bool required;             //  must be present (and, for strings, not empty)
    const char *const *one_of; //  allowed string values, NULL-terminated
    bool substituted;          //  ${var} allowed and checked
} s_field_t;

static const char *const s_methods[] = {"GET",    "POST", "PUT",     "PATCH",
                                        "DELETE", "HEAD", "OPTIONS", NULL};
static const char *const s_body_types[] = {"json", "form", "text", NULL};
static const char *const s_capture[] = {"text", "html", "querySelector", NULL};

static const s_field_t s_start_fields[] = {
    {"variables", S_VARS, false, NULL, false},
    {NULL, 0, false, NULL, false},
};
static const s_field_t s_api_fields[] = {
    {"url", S_STRING, true, NULL, true},
    {"method", S_STRING, false, s_methods, false},
    {"headers", S_PAIRS, false, NULL, true},
    {"bodyType", S_STRING, false, s_body_types, false},
    {"body", S_BODY, false, NULL, true},
    {"formData", S_PAIRS, false, NULL, true},
    {"responseVariable", S_STRING, false, NULL, false},
    {"directOutput", S_BOOL, false, NULL, false},
    {NULL, 0, false, NULL, false},
};
static const s_field_t s_llm_fields[] = {
    {"instruction", S_STRING, true, NULL, true},
    {"resultVariable", S_STRING, false, NULL, false},
    {"directOutput", S_BOOL, false, NULL, false},
    {NULL, 0, false, NULL, false},
};
static const s_field_t s_scrape_fields[] = {
    {"url", S_STRING, true, NULL, true},
    {"captureAs", S_STRING, false, s_capture, false},
    {"querySelector", S_STRING, false, NULL, true},
    {"resultVariable", S_STRING, false, NULL, false},
    {"directOutput", S_BOOL, false, NULL, false},
    {NULL, 0, false, NULL, false},
};

static const struct {
    const char *type;
    const s_field_t *fields;
    const char *result; //  the field naming the variable it defines
} s_types[] = {
    {"start", s_start_fields, NULL},
    {"apiCall", s_api_fields, "responseVariable"},
    {"llmInstruction", s_llm_fields, "resultVariable"},
    {"webScraping", s_scrape_fields, "resultVariable"},
    {NULL, NULL, NULL},
};

//  One field's kind; NULL when fine, else what is wrong.
static const char *
s_kind_error (const s_field_t *field, const json_t *value)
{
    switch (field->kind) {
        case S_STRING:
            if (!json_is_string (value))
                return "must be a string";
            if (field->required && !json_string_length (value))
                return "must not be empty";
            if (field->one_of) {
                for (size_t i = 0; field->one_of[i]; i++)
                    if (!strcmp (field->one_of[i], json_string_value (value)))
                        return NULL;
                return "has a value that is not supported";
            }
            return NULL;
        case S_BOOL:
            return json_is_boolean (value) ? NULL : "must be true or false";
        case S_BODY:
            return json_is_string (value) || json_is_object (value) ||
                           json_is_array (value)
                       ? NULL
                       : "must be a string or JSON";
        case S_PAIRS:
        case S_VARS: {
            if (!json_is_array (value))
                return field->kind == S_VARS ? "must be an array of {name, value}"
                                             : "must be an array of {key, value}";
            size_t i;
            json_t *item;
            json_array_foreach (value, i, item)
            {
                json_t *name =
                    json_object_get (item, field->kind == S_VARS ? "name" : "key");
                if (!json_is_object (item) || !json_is_string (name))
                    return field->kind == S_VARS ? "must be an array of {name, value}"
                                                 : "must be an array of {key, value}";
                if (field->kind == S_VARS && !json_string_length (name))
                    return "has a variable without a name";
            }
            return NULL;
        }
    }
    return NULL;
}

int
agent_flow_validate (const json_t *steps, char *err, size_t errlen)
{
    if (!json_is_array (steps)) {
        snprintf (err, errlen, "steps must be an array of {type, config}");
        return -1;
    }
    s_scope_t scope = {json_object (), NULL, 0};
    int rc = -1;
    size_t index;
    json_t *step;
    json_array_foreach (steps, index, step)
    {
        json_t *type = json_object_get (step, "type");
        if (!json_is_object (step) || !json_is_string (type)) {
            snprintf (err, errlen, "steps[%zu]: type is required (a string)", index);
            goto done;
        }
        const char *name = json_string_value (type);
        size_t kind = 0;
        while (s_types[kind].type && strcmp (s_types[kind].type, name))
            kind++;
        if (!s_types[kind].type) {
            snprintf (err, errlen,
                      "steps[%zu]: unknown step type '%.64s' (start, apiCall, "
                      "llmInstruction or webScraping)",
                      index, name);
            goto done;
        }
        if (kind == 0 && index > 0) {
            snprintf (err, errlen, "steps[%zu] (start): the start step must be the first",
                      index);
            goto done;
        }
        json_t *config = json_object_get (step, "config");
        if (!json_is_object (config)) {
            snprintf (err, errlen, "steps[%zu] (%s): config is required (an object)",
                      index, name);
            goto done;
        }
        for (const s_field_t *field = s_types[kind].fields; field->name; field++) {
            json_t *value = json_object_get (config, field->name);
            if (!value || json_is_null (value)) {
                if (field->required) {
                    snprintf (err, errlen, "steps[%zu] (%s): config.%s is required",
                              index, name, field->name);
                    goto done;
                }
                continue;
            }
            const char *problem = s_kind_error (field, value);
            if (problem) {
                snprintf (err, errlen, "steps[%zu] (%s): config.%s %s", index, name,
                          field->name, problem);
                goto done;
            }
            if (field->substituted && !s_refs_defined (&scope, value)) {
                snprintf (err, errlen,
                          "steps[%zu] (%s): config.%s uses ${%.*s}, which no start "
                          "variable or earlier step defines",
                          index, name, field->name, (int) scope.undefined_size,
                          scope.undefined_name);
                goto done;
            }
        }
        if (!strcmp (name, "webScraping")) {
            json_t *selector = json_object_get (config, "querySelector");
            json_t *capture = json_object_get (config, "captureAs");
            if (json_is_string (capture) &&
                !strcmp (json_string_value (capture), "querySelector") &&
                !json_string_length (selector)) {
                snprintf (err, errlen,
                          "steps[%zu] (webScraping): config.querySelector is required "
                          "when captureAs is querySelector",
                          index);
                goto done;
            }
            if (json_string_length (selector)) {
                char why[200];
                agent_selector_t *parsed =
                    agent_selector_new (json_string_value (selector), why, sizeof why);
                if (!parsed) {
                    snprintf (err, errlen,
                              "steps[%zu] (webScraping): config.querySelector %s", index,
                              why);
                    goto done;
                }
                agent_selector_destroy (&parsed);
            }
        }
        //  What this step defines, for the steps after it.
        if (kind == 0) {
            size_t i;
            json_t *var;
            json_array_foreach (json_object_get (config, "variables"), i, var)
                json_object_set_new (scope.defined,
                                     json_string_value (json_object_get (var, "name")),
                                     json_true ());
        } else {
            json_t *result = json_object_get (config, s_types[kind].result);
            if (json_string_length (result))
                json_object_set_new (scope.defined, json_string_value (result),
                                     json_true ());
        }
    }
    rc = 0;
done:
    json_decref (scope.defined);
    return rc;
}

json_t *
agent_flow_variables (const json_t *steps, const json_t *overrides)
{
    json_t *vars = json_object ();
    json_t *first = json_array_get (steps, 0);
    json_t *type = json_object_get (first, "type");
    if (json_is_string (type) && !strcmp (json_string_value (type), "start")) {
        size_t i;
        json_t *var;
        json_array_foreach (
            json_object_get (json_object_get (first, "config"), "variables"), i, var)
        {
            json_t *name = json_object_get (var, "name");
            json_t *value = json_object_get (var, "value");
            if (json_is_string (name))
                json_object_set_new (vars, json_string_value (name),
                                     value ? json_incref (value) : json_string (""));
        }
    }
    if (json_is_object (overrides))
        json_object_update (vars, (json_t *) overrides);
    return vars;
}
