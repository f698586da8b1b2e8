/*  test_clients.c: real clients, unmodified, against the live suite: the
    official OpenAI Node library (models, chat completions with and without
    stream, vector stores) and AnythingLLM's CLI (`any prompt`, with and
    without streaming, in a default workspace and a new thread), each with
    an API key an admin made.

    Both are installed from npm while the test runs (into LLMRT_NPM_DIR, a
    directory of the build tree, from tests/integration/clients/package.json)
    and driven by node. When npm cannot reach its registry, the tests are
    skipped and say so ("[SKIP]", which ctest reports as skipped); any other
    failure, node or npm missing included, fails them. */
#include <criterion/criterion.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include "it_harness.h"

static it_suite_t s_suite;
static char s_dir[512]; //  where the clients are installed

//  Run a shell command; its stdout (caller frees) and exit status.
static char *
s_run (const char *command, int *status_p)
{
    FILE *pipe = popen (command, "r");
    cr_assert_not_null (pipe, "cannot run: %s", command);
    size_t size = 0, capacity = 4096;
    char *output = malloc (capacity);
    size_t n;
    while ((n = fread (output + size, 1, capacity - size - 1, pipe)) > 0) {
        size += n;
        if (capacity - size < 1024)
            output = realloc (output, capacity *= 2);
    }
    output[size] = 0;
    int status = pclose (pipe);
    *status_p = WIFEXITED (status) ? WEXITSTATUS (status) : -1;
    return output;
}

//  Install the clients from npm, or skip the test when npm's registry
//  cannot be reached.
static void
s_install (void)
{
    const char *src = getenv ("LLMRT_SOURCE_DIR");
    const char *dir = getenv ("LLMRT_NPM_DIR");
    cr_assert_not_null (src, "LLMRT_SOURCE_DIR is not set (run through ctest)");
    cr_assert_not_null (dir, "LLMRT_NPM_DIR is not set (run through ctest)");
    snprintf (s_dir, sizeof s_dir, "%s", dir);
    int status;
    char *output = s_run (
        "node --version 2>&1 && npm --version 2>&1 && npm config get registry", &status);
    cr_assert_eq (status, 0,
                  "node and npm are needed (scripts/deps.sh installs them): %s", output);
    char registry[256] = "";
    char *last = strrchr (output, '\n');
    if (last && last > output) {
        *last = 0;
        last = strrchr (output, '\n');
        snprintf (registry, sizeof registry, "%s", last ? last + 1 : output);
    }
    free (output);

    char command[2048];
    snprintf (command, sizeof command,
              "mkdir -p '%s' && cp '%s'/tests/integration/clients/package.json "
              "'%s'/tests/integration/clients/*.mjs '%s'/ && cd '%s' && "
              "timeout 600 npm install --no-audit --no-fund --loglevel=error "
              "--fetch-timeout=30000 --fetch-retries=1 2>&1",
              dir, src, src, dir, dir);
    output = s_run (command, &status);
    if (status != 0) {
        //  Only a registry npm cannot reach is a reason to skip.
        int ping;
        char *pong = s_run ("timeout 60 npm ping --loglevel=error --fetch-timeout=20000 "
                            "--fetch-retries=0 2>&1",
                            &ping);
        if (ping != 0) {
            cr_log_warn ("npm cannot reach its registry (%s): %s", registry, pong);
            free (pong);
            free (output);
            cr_skip_test ("npm cannot reach its registry (%s): the real-client tests "
                          "are skipped",
                          registry);
        }
        free (pong);
        cr_assert_fail ("npm install failed although its registry answers:\n%s", output);
    }
    free (output);
}

//  A request with the admin key; returns the reply's JSON (caller decrefs).
static json_t *
s_admin (const char *method, const char *path, const char *body)
{
    char url[512];
    snprintf (url, sizeof url, "%s%s", s_suite.base, path);
    it_response_t r;
    it_http (method, url, body, true, &r);
    cr_assert_eq (r.status, 200, "%s %s: %ld %s", method, path, r.status, r.body);
    json_t *json = it_json (&r);
    it_response_free (&r);
    return json;
}

//  A default-role API key for the clients (caller frees).
static char *
s_client_key (void)
{
    json_t *reply =
        s_admin ("POST", "/api/v1/admin/api-keys/new", "{\"name\":\"client\"}");
    char *secret = strdup (it_str (json_object_get (reply, "apiKey"), "secret"));
    json_decref (reply);
    return secret;
}

Test (clients, openai_library_lists_models_chats_and_embeds, .timeout = 900)
{
    s_install ();
    it_suite_start (&s_suite, NULL);
    json_decref (s_admin ("POST", "/api/v1/workspace/new", "{\"name\":\"Clients\"}"));
    char *key = s_client_key ();

    char command[2048];
    snprintf (command, sizeof command,
              "cd '%s' && LLMRT_BASE_URL='%s' LLMRT_API_KEY='%s' LLMRT_MODEL=clients "
              "node openai_client.mjs 2>openai_client.err </dev/null; rc=$?; "
              "cat openai_client.err >&2; exit $rc",
              s_dir, s_suite.base, key);
    int status;
    char *output = s_run (command, &status);
    cr_assert_eq (status, 0, "the OpenAI client failed (stderr above): %s", output);
    json_error_t error;
    json_t *out = json_loads (output, 0, &error);
    cr_assert_not_null (out, "not JSON (%s): %s", error.text, output);

    //  models.list: the workspace.
    json_t *models = json_object_get (out, "models");
    cr_assert_eq (json_array_size (models), 1, "%s", output);
    cr_assert_str_eq (json_string_value (json_array_get (models, 0)), "clients");

    //  A whole completion.
    json_t *sync = json_object_get (out, "sync");
    cr_assert_str_eq (it_str (sync, "object"), "chat.completion");
    cr_assert_str_eq (it_str (sync, "model"), "clients");
    cr_assert_str_eq (it_str (sync, "role"), "assistant");
    cr_assert_str_eq (it_str (sync, "finish_reason"), "stop");
    cr_assert (strstr (it_str (sync, "content"), "\"Hello from the OpenAI client\""),
               "%s", output);
    cr_assert_gt (json_integer_value (
                      json_object_get (json_object_get (sync, "usage"), "total_tokens")),
                  0);

    //  Streamed: the deltas make the builtin's whole answer, one id, stop,
    //  usage on the last chunk.
    json_t *stream = json_object_get (out, "stream");
    cr_assert_gt (json_integer_value (json_object_get (stream, "chunks")), 2, "%s",
                  output);
    cr_assert_eq (json_array_size (json_object_get (stream, "ids")), 1, "%s", output);
    cr_assert (strstr (it_str (stream, "content"), "\"Stream to the OpenAI client\""),
               "%s", output);
    cr_assert (strstr (it_str (stream, "content"), "built-in offline responder"), "%s",
               output);
    cr_assert_str_eq (it_str (stream, "finish_reason"), "stop");
    cr_assert (json_is_object (json_object_get (stream, "usage")), "%s", output);

    //  The stream helper rebuilt a completion from the chunks.
    json_t *helper = json_object_get (out, "helper");
    cr_assert (strstr (it_str (helper, "content"), "\"Through the stream helper\""), "%s",
               output);
    cr_assert_str_eq (it_str (helper, "finish_reason"), "stop");

    //  Vector stores, through the library's pagination.
    json_t *stores = json_object_get (out, "vector_stores");
    cr_assert_eq (json_array_size (stores), 1, "%s", output);
    cr_assert_str_eq (json_string_value (json_array_get (stores, 0)), "clients");

    //  An unknown model is the library's AuthenticationError (401).
    json_t *unknown = json_object_get (out, "unknown");
    cr_assert_eq (json_integer_value (json_object_get (unknown, "status")), 401, "%s",
                  output);
    cr_assert_str_eq (it_str (unknown, "name"), "AuthenticationError");

    //  Embeddings through the library (ingestd): its default base64 decoded
    //  to the same vector as the float form.
    json_t *embeddings = json_object_get (out, "embeddings");
    cr_assert_str_eq (it_str (embeddings, "object"), "list", "%s", output);
    cr_assert_eq (json_integer_value (json_object_get (embeddings, "count")), 2, "%s",
                  output);
    cr_assert_eq (json_integer_value (json_object_get (embeddings, "dim")), 256, "%s",
                  output);
    cr_assert_eq (json_integer_value (json_object_get (embeddings, "float_dim")), 256,
                  "%s", output);
    double norm = json_number_value (json_object_get (embeddings, "norm"));
    cr_assert (norm > 0.999 && norm < 1.001, "%s", output);
    cr_assert (json_number_value (json_object_get (embeddings, "max_difference")) < 1e-6,
               "%s", output);
    cr_assert_gt (json_integer_value (json_object_get (
                      json_object_get (embeddings, "usage"), "prompt_tokens")),
                  0, "%s", output);

    //  Three turns in the workspace's history.
    json_t *chats = s_admin ("GET", "/api/v1/workspace/clients/chats", NULL);
    cr_assert_eq (json_array_size (json_object_get (chats, "history")), 6);
    json_decref (chats);
    json_decref (out);
    free (output);
    free (key);
    it_suite_stop (&s_suite);
}

//  Run `any prompt <args>` (the AnythingLLM CLI) with this key; its stdout
//  (caller frees). Fails the test when it exits non-zero.
static char *
s_any (const char *key, const char *args)
{
    char command[2048];
    snprintf (command, sizeof command,
              "cd '%s' && env -u ANYTHING_LLM_DEFAULT_WORKSPACE_SLUG "
              "ANYTHING_LLM_BASE_URL='%s' ANYTHING_LLM_API_KEY='%s' NO_COLOR=1 "
              "node node_modules/@mintplex-labs/anything-llm-cli/dist/index.js prompt %s "
              "2>any.err </dev/null; rc=$?; cat any.err >&2; exit $rc",
              s_dir, s_suite.base, key, args);
    int status;
    char *output = s_run (command, &status);
    cr_assert_eq (status, 0, "any prompt %s: exit %d (stderr above): %s", args, status,
                  output);
    return output;
}

Test (clients, anythingllm_cli_chats_sync_and_streaming, .timeout = 900)
{
    s_install ();
    it_suite_start (&s_suite, NULL);
    json_decref (s_admin ("POST", "/api/v1/workspace/new", "{\"name\":\"Terminal\"}"));
    char *key = s_client_key ();

    //  Without streaming (-S): the whole answer, printed at once.
    char *output = s_any (key, "-w terminal -S 'Hello from the CLI'");
    cr_assert (strstr (output, "built-in offline responder"), "%s", output);
    cr_assert (strstr (output, "\"Hello from the CLI\""), "%s", output);
    free (output);

    //  Streaming (its default): stream-chat's tokens, printed as they come.
    output = s_any (key, "-w terminal 'Stream to the CLI'");
    cr_assert (strstr (output, "built-in offline responder"), "%s", output);
    cr_assert (strstr (output, "\"Stream to the CLI\""), "%s", output);
    //  The second turn saw the first as history.
    cr_assert (strstr (output, "1 earlier turn"), "%s", output);
    free (output);

    //  In a new thread.
    output = s_any (key, "-w terminal --new-thread 'In a thread'");
    cr_assert (strstr (output, "\"In a thread\""), "%s", output);
    cr_assert (strstr (output, "0 earlier turns"), "a thread starts afresh: %s", output);
    free (output);
    json_t *workspace = s_admin ("GET", "/api/v1/workspace/terminal", NULL);
    json_t *threads = json_object_get (
        json_array_get (json_object_get (workspace, "workspace"), 0), "threads");
    cr_assert_eq (json_array_size (threads), 1);
    json_decref (workspace);

    //  No workspace named: the CLI looks for its default one (our unknown
    //  slug answer: []), creates it, and chats there.
    output = s_any (key, "'Where am I?'");
    cr_assert (strstr (output, "\"Where am I?\""), "%s", output);
    free (output);
    workspace =
        s_admin ("GET", "/api/v1/workspace/anythingllm-cli-default-workspace", NULL);
    json_t *found = json_array_get (json_object_get (workspace, "workspace"), 0);
    cr_assert_str_eq (it_str (found, "name"), "AnythingLLM CLI Default Workspace");
    json_decref (workspace);

    json_t *chats = s_admin ("GET", "/api/v1/workspace/terminal/chats", NULL);
    cr_assert_eq (json_array_size (json_object_get (chats, "history")), 4,
                  "two turns outside the thread");
    json_decref (chats);
    free (key);
    it_suite_stop (&s_suite);
}
