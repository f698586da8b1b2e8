/*  test_chat_api.c: the chat API of the live suite, as a client sees it:
    API keys made by an admin and used by an application, the OpenAI-
    compatible routes, and bad input answered with API.md's statuses and
    bodies. */
#include <criterion/criterion.h>
#include <string.h>
#include <unistd.h>
#include "it_harness.h"

static it_suite_t s_suite;

//  MAX_BODY_BYTES small enough to reach with a test body.
static const char *const s_env[] = {"MAX_BODY_BYTES=65536", NULL};

//  One request with this key; fails the test on a transport error.
static void
s_call (const char *method, const char *path, const char *body, const char *key,
        it_response_t *r)
{
    char url[8192]; //  room for a long query string (the 431 check)
    it_url (&s_suite, url, sizeof url, path);
    it_http_key (method, url, body, key, r);
    cr_assert_neq (r->status, 0, "%s %s: no answer", method, path);
}

static void
s_create_workspace (const char *name)
{
    char body[256];
    snprintf (body, sizeof body, "{\"name\":\"%s\"}", name);
    it_create_workspace (&s_suite, body);
}

//  A new API key (its JSON; caller decrefs) made with the admin key.
static json_t *
s_create_key (const char *body)
{
    it_response_t r;
    s_call ("POST", "/api/v1/admin/api-keys/new", body, IT_ADMIN_KEY, &r);
    cr_assert_eq (r.status, 200, "api-keys/new: %ld %s", r.status, r.body);
    json_t *reply = it_json (&r);
    json_t *key = json_incref (json_object_get (reply, "apiKey"));
    json_decref (reply);
    it_response_free (&r);
    return key;
}

//  A response header's value, "" when absent (static buffer).
static const char *
s_header (it_response_t *r, const char *name)
{
    static char value[256];
    value[0] = 0;
    size_t length = strlen (name);
    for (const char *line = r->headers; line && *line;) {
        const char *end = strstr (line, "\r\n");
        if (!strncasecmp (line, name, length) && line[length] == ':') {
            const char *start = line + length + 1;
            while (*start == ' ')
                start++;
            size_t size = end ? (size_t) (end - start) : strlen (start);
            if (size >= sizeof value)
                size = sizeof value - 1;
            memcpy (value, start, size);
            value[size] = 0;
            break;
        }
        line = end ? end + 2 : NULL;
    }
    return value;
}

//  The abort shape of chat errors before output, with this error (NULL:
//  any that contains "Invalid JSON body").
static void
s_assert_abort (it_response_t *r, long status, const char *error)
{
    cr_assert_eq (r->status, status, "%ld %s", r->status, r->body);
    json_t *reply = it_json (r);
    cr_assert_eq (json_object_size (reply), 6, "%s", r->body);
    cr_assert_eq (strlen (it_str (reply, "id")), 36);
    cr_assert_str_eq (it_str (reply, "type"), "abort");
    cr_assert (json_is_null (json_object_get (reply, "textResponse")));
    cr_assert_eq (json_array_size (json_object_get (reply, "sources")), 0);
    cr_assert (json_is_true (json_object_get (reply, "close")));
    if (error)
        cr_assert_str_eq (it_str (reply, "error"), error);
    else
        cr_assert (strstr (it_str (reply, "error"), "Invalid JSON body"), "%s", r->body);
    json_decref (reply);
}

//  The "data: " lines of an SSE body, as JSON (a JSON string for a line
//  that is not JSON, such as [DONE]).
static json_t *
s_events (const char *body)
{
    json_t *events = json_array ();
    for (const char *p = strstr (body, "data: "); p; p = strstr (p, "data: ")) {
        p += 6;
        const char *end = strstr (p, "\n\n");
        cr_assert_not_null (end, "an event without its blank line: %s", p);
        json_t *event = json_loadb (p, (size_t) (end - p), 0, NULL);
        json_array_append_new (events,
                               event ? event : json_stringn (p, (size_t) (end - p)));
        p = end;
    }
    return events;
}

Test (chat_api, walkthrough_a_key_for_an_application, .timeout = 90)
{
    it_suite_start (&s_suite, s_env);

    //  The operator makes a key for an application.
    json_t *key = s_create_key ("{\"name\":\"support bot\"}");
    const char *secret = it_str (key, "secret");
    cr_assert_str_eq (it_str (key, "role"), "default");

    //  The application works with it: a workspace and a chat.
    it_response_t r;
    s_call ("POST", "/api/v1/workspace/new", "{\"name\":\"Support\"}", secret, &r);
    cr_assert_eq (r.status, 200, "%s", r.body);
    it_response_free (&r);
    s_call ("POST", "/api/v1/workspace/support/chat", "{\"message\":\"hello\"}", secret,
            &r);
    cr_assert_eq (r.status, 200, "%s", r.body);
    json_t *chat = it_json (&r);
    cr_assert_str_eq (it_str (chat, "type"), "textResponse");
    json_decref (chat);
    it_response_free (&r);

    //  But it cannot manage keys.
    s_call ("GET", "/api/v1/admin/api-keys", NULL, secret, &r);
    cr_assert_eq (r.status, 403);
    cr_assert_str_eq (r.body, "{\"error\":\"This API key may not use admin routes.\"}");
    it_response_free (&r);

    //  The operator sees it listed (no secret) and revokes it.
    s_call ("GET", "/api/v1/admin/api-keys", NULL, IT_ADMIN_KEY, &r);
    cr_assert_eq (r.status, 200);
    cr_assert_null (strstr (r.body, secret + 10), "%s", r.body);
    json_t *list = it_json (&r);
    cr_assert_eq (json_array_size (json_object_get (list, "apiKeys")), 1);
    json_decref (list);
    it_response_free (&r);
    char path[128];
    snprintf (path, sizeof path, "/api/v1/admin/api-keys/%lld",
              (long long) json_integer_value (json_object_get (key, "id")));
    s_call ("DELETE", path, NULL, IT_ADMIN_KEY, &r);
    cr_assert_eq (r.status, 200, "%s", r.body);
    it_response_free (&r);

    //  From now on, upstream's 403.
    s_call ("POST", "/api/v1/workspace/support/chat", "{\"message\":\"again\"}", secret,
            &r);
    cr_assert_eq (r.status, 403);
    cr_assert_str_eq (r.body, "{\"error\":\"No valid api key found.\"}");
    it_response_free (&r);
    json_decref (key);
    it_suite_stop (&s_suite);
}

Test (chat_api, bad_input_has_the_api_statuses_and_bodies, .timeout = 90)
{
    it_suite_start (&s_suite, s_env);
    s_create_workspace ("Input");
    const char *chats[] = {"/api/v1/workspace/input/chat",
                           "/api/v1/workspace/input/stream-chat"};
    it_response_t r;
    for (size_t i = 0; i < 2; i++) {
        //  Empty message, bad mode: chatd's abort shape.
        s_call ("POST", chats[i], "{\"message\":\"\"}", IT_ADMIN_KEY, &r);
        s_assert_abort (&r, 400, "Message is empty");
        it_response_free (&r);
        s_call ("POST", chats[i], "{}", IT_ADMIN_KEY, &r);
        s_assert_abort (&r, 400, "Message is empty");
        it_response_free (&r);
        s_call ("POST", chats[i], "{\"message\":\"hi\",\"mode\":\"loud\"}", IT_ADMIN_KEY,
                &r);
        s_assert_abort (&r, 400, "loud is not a valid mode.");
        it_response_free (&r);
        s_call ("POST", chats[i], "{\"message\":123}", IT_ADMIN_KEY, &r);
        s_assert_abort (&r, 400, "message must be a string");
        it_response_free (&r);
        //  Malformed JSON: the gateway's, in the same shape, naming the problem.
        s_call ("POST", chats[i], "{\"message\": \"hi\"", IT_ADMIN_KEY, &r);
        s_assert_abort (&r, 400, NULL);
        it_response_free (&r);
        s_call ("POST", chats[i], "[\"hi\"]", IT_ADMIN_KEY, &r);
        s_assert_abort (&r, 400, "Invalid JSON body: expected an object.");
        it_response_free (&r);
    }
    //  Unknown workspace.
    s_call ("POST", "/api/v1/workspace/nowhere/stream-chat", "{\"message\":\"hi\"}",
            IT_ADMIN_KEY, &r);
    s_assert_abort (&r, 400, "Workspace nowhere is not a valid workspace.");
    it_response_free (&r);

    //  Malformed JSON elsewhere: {error}, naming the problem.
    s_call ("POST", "/api/v1/workspace/new", "{\"name\":", IT_ADMIN_KEY, &r);
    cr_assert_eq (r.status, 400);
    json_t *reply = it_json (&r);
    cr_assert_eq (json_object_size (reply), 1);
    cr_assert (strstr (it_str (reply, "error"), "Invalid JSON body"), "%s", r.body);
    json_decref (reply);
    it_response_free (&r);

    //  A request line and headers that would leave the answer no room in
    //  the connection's pool: 431 before anything is forwarded.
    char *padded = malloc (7200);
    int at = snprintf (padded, 7200, "%s?pad=", chats[0]);
    memset (padded + at, 'a', 6500);
    padded[at + 6500] = 0;
    s_call ("POST", padded, "{\"message\":\"hi\"}", IT_ADMIN_KEY, &r);
    cr_assert_eq (r.status, 431, "%ld", r.status);
    reply = it_json (&r);
    cr_assert (strstr (it_str (reply, "error"), "Request headers too large"), "%s",
               r.body);
    json_decref (reply);
    it_response_free (&r);
    free (padded);

    //  A body over MAX_BODY_BYTES: 413, on any route.
    size_t size = 70000;
    char *big = malloc (size + 1);
    memset (big, ' ', size);
    memcpy (big, "{\"message\":\"", 12);
    memset (big + 12, 'a', size - 14);
    memcpy (big + size - 2, "\"}", 3);
    s_call ("POST", chats[0], big, IT_ADMIN_KEY, &r);
    cr_assert_eq (r.status, 413, "%ld", r.status);
    cr_assert_str_eq (r.body, "{\"error\":\"Request body is larger than 65536 bytes.\"}");
    it_response_free (&r);
    free (big);

    //  OpenAI route: an unknown model is 401 with no body at all (upstream),
    //  a last message that is not the user's is 400 in the abort shape.
    const char *unknown[] = {
        "{\"model\":\"nope\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}",
        "{\"model\":\"nope\",\"stream\":true,\"messages\":[{\"role\":\"user\","
        "\"content\":\"hi\"}]}"};
    for (size_t i = 0; i < 2; i++) {
        s_call ("POST", "/api/v1/openai/chat/completions", unknown[i], IT_ADMIN_KEY, &r);
        cr_assert_eq (r.status, 401, "%ld %s", r.status, r.body);
        cr_assert_eq (r.size, 0, "no body: '%s'", r.body);
        it_response_free (&r);
    }
    s_call ("POST", "/api/v1/openai/chat/completions",
            "{\"model\":\"input\",\"messages\":[{\"role\":\"assistant\",\"content\":"
            "\"hi\"}]}",
            IT_ADMIN_KEY, &r);
    s_assert_abort (&r, 400,
                    "No user prompt found. Must be last element in message array with "
                    "'user' role.");
    it_response_free (&r);
    s_call ("POST", "/api/v1/openai/chat/completions", "{\"model\":", IT_ADMIN_KEY, &r);
    s_assert_abort (&r, 400, NULL);
    it_response_free (&r);

    //  None of it reached the history.
    s_call ("GET", "/api/v1/workspace/input/chats", NULL, IT_ADMIN_KEY, &r);
    cr_assert_str_eq (r.body, "{\"history\":[]}");
    it_response_free (&r);
    it_suite_stop (&s_suite);
}

Test (chat_api, openai_routes_end_to_end, .timeout = 90)
{
    it_suite_start (&s_suite, s_env);
    s_create_workspace ("Open Chat");
    json_t *key = s_create_key ("{}");
    const char *secret = it_str (key, "secret");
    it_response_t r;

    s_call ("GET", "/api/v1/openai/models", NULL, secret, &r);
    cr_assert_eq (r.status, 200, "%s", r.body);
    json_t *models = it_json (&r);
    cr_assert_str_eq (it_str (models, "object"), "list");
    json_t *model = json_array_get (json_object_get (models, "data"), 0);
    cr_assert_str_eq (it_str (model, "id"), "open-chat");
    cr_assert_str_eq (it_str (model, "object"), "model");
    cr_assert_str_eq (it_str (model, "owned_by"), "builtin");
    json_decref (models);
    it_response_free (&r);

    //  Sync: one chat.completion.
    s_call ("POST", "/api/v1/openai/chat/completions",
            "{\"model\":\"open-chat\",\"temperature\":0.2,\"messages\":[{\"role\":"
            "\"system\",\"content\":\"Be brief\"},{\"role\":\"user\",\"content\":\"q\"},"
            "{\"role\":\"assistant\",\"content\":\"a\"},{\"role\":\"user\",\"content\":"
            "\"What is llmrt?\"}]}",
            secret, &r);
    cr_assert_eq (r.status, 200, "%s", r.body);
    json_t *completion = it_json (&r);
    cr_assert_str_eq (it_str (completion, "object"), "chat.completion");
    cr_assert_str_eq (it_str (completion, "model"), "open-chat");
    json_t *choice = json_array_get (json_object_get (completion, "choices"), 0);
    cr_assert_str_eq (it_str (choice, "finish_reason"), "stop");
    const char *content = it_str (json_object_get (choice, "message"), "content");
    cr_assert (strstr (content, "\"What is llmrt?\""), "%s", content);
    //  The conversation came from the request: one earlier user message.
    cr_assert (strstr (content, "1 earlier turn"), "%s", content);
    cr_assert (json_is_integer (
        json_object_get (json_object_get (completion, "usage"), "total_tokens")));
    json_decref (completion);
    it_response_free (&r);

    //  Stream: chunks, the last with finish_reason and usage, then [DONE].
    s_call ("POST", "/api/v1/openai/chat/completions",
            "{\"model\":\"open-chat\",\"stream\":true,\"messages\":[{\"role\":\"user\","
            "\"content\":\"Stream it\"}]}",
            secret, &r);
    cr_assert_eq (r.status, 200, "%s", r.body);
    cr_assert_str_eq (s_header (&r, "Content-Type"), "text/event-stream");
    cr_assert_str_eq (s_header (&r, "Cache-Control"), "no-cache");
    json_t *events = s_events (r.body);
    size_t count = json_array_size (events);
    cr_assert_geq (count, 3, "%s", r.body);
    for (size_t i = 0; i + 2 < count; i++) {
        json_t *chunk = json_array_get (events, i);
        cr_assert_str_eq (it_str (chunk, "object"), "chat.completion.chunk", "%s",
                          r.body);
        cr_assert (json_is_null (json_object_get (
            json_array_get (json_object_get (chunk, "choices"), 0), "finish_reason")));
    }
    json_t *last = json_array_get (events, count - 2);
    cr_assert_str_eq (
        it_str (json_array_get (json_object_get (last, "choices"), 0), "finish_reason"),
        "stop");
    cr_assert (json_is_object (json_object_get (last, "usage")));
    cr_assert_str_eq (json_string_value (json_array_get (events, count - 1)), "[DONE]");
    cr_assert (strstr (r.body, "data: [DONE]\n\n") + 14 == r.body + r.size,
               "[DONE] is the last line");
    json_decref (events);
    it_response_free (&r);

    //  Both turns are in the workspace's history.
    s_call ("GET", "/api/v1/workspace/open-chat/chats", NULL, secret, &r);
    json_t *history = it_json (&r);
    cr_assert_eq (json_array_size (json_object_get (history, "history")), 4);
    json_decref (history);
    it_response_free (&r);

    //  Vector stores: the workspaces; any query parameter, an empty page.
    s_call ("GET", "/api/v1/openai/vector_stores", NULL, secret, &r);
    cr_assert_eq (r.status, 200);
    json_t *stores = it_json (&r);
    cr_assert_str_eq (it_str (stores, "first_id"), "open-chat");
    cr_assert_str_eq (it_str (stores, "last_id"), "open-chat");
    cr_assert_str_eq (
        it_str (json_array_get (json_object_get (stores, "data"), 0), "object"),
        "vector_store");
    json_decref (stores);
    it_response_free (&r);
    s_call ("GET", "/api/v1/openai/vector_stores?after=open-chat", NULL, secret, &r);
    cr_assert_str_eq (r.body, "{\"data\":[],\"has_more\":false}");
    it_response_free (&r);
    json_decref (key);
    it_suite_stop (&s_suite);
}
