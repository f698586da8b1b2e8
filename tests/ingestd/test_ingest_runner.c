/*  test_ingest_runner.c: the runner's maintenance and reconciler against a
    real redis-server (on a free port, no persistence) and a real SQLite
    file: the job's row follows what the queue decided. Then ingestd's
    routes (ingest_service) over the same queue and database, through a
    fake cm_call_t: what they accept, refuse and leave stored. Waits are
    polls with a generous patience, never fixed sleeps. */
#include <criterion/criterion.h>
#include "test_dir.h"
#include "test_port.h"
#include "test_redis.h"
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>
#include "cm_form.h"
#include "cm_redis.h"
#include "cm_storage_docs.h"
#include "ingest_runner.h"
#include "ingest_service.h"
#include <stdarg.h>
#include <strings.h>

#define S_PATIENCE_MS 20000

static test_redis_t s_redis;
static char s_dir[64];

static void
s_setup (void)
{
    test_dir_make (s_dir, sizeof s_dir, "/tmp/llmrt-runner-XXXXXX");
    test_redis_start (&s_redis, 0);
}

static void
s_teardown (void)
{
    test_redis_remove (&s_redis);
    test_dir_remove (s_dir);
}

static cm_jobs_config_t
s_jobs_config (void)
{
    cm_jobs_config_t config;
    cm_jobs_config_defaults (&config);
    config.url = s_redis.url;
    config.queue = "embedding-jobs";
    config.lease_ms = 100;
    config.attempts = 1;
    return config;
}

//  The row's state, polled until it is `want` or the patience ends.
static char *
s_wait_state (cm_storage_t *storage, const char *id, const char *want, char **error_p)
{
    char *state = NULL;
    int64_t until = cm_clock_mono_ms () + S_PATIENCE_MS;
    do {
        free (state);
        json_t *row = NULL;
        cr_assert_eq (cm_storage_job_get (storage, id, &row), CM_STORAGE_OK);
        state = cm_strdup (json_string_value (json_object_get (row, "state")));
        const char *error = json_string_value (json_object_get (row, "error"));
        free (*error_p);
        *error_p = error ? cm_strdup (error) : NULL;
        json_decref (row);
        if (!strcmp (state, want))
            break;
        usleep (50 * 1000);
    } while (cm_clock_mono_ms () < until);
    return state;
}

//  A worker dies during the job's last attempt: maintenance moves the job
//  to the queue's failed set when its lease expires. The row said
//  "active"; the reconciler must make it say "failed" with the queue's
//  reason, or it says "active" for ever (Redis knows the job, so it is
//  never added again either).
Test (runner, a_job_failed_by_maintenance_is_failed_in_its_row, .init = s_setup,
      .fini = s_teardown, .timeout = 60)
{
    char err[512] = "";
    cm_storage_pool_t *pool = cm_storage_pool_new (s_dir, err, sizeof err);
    cr_assert_not_null (pool, "%s", err);
    cm_storage_t *storage = cm_storage_pool_acquire (pool);
    cr_assert_not_null (storage);
    const char *location = "custom-documents/lost.txt-1.json";
    json_t *fields = json_pack ("{s:s, s:s}", "location", location, "name", "lost.txt");
    cr_assert_eq (cm_storage_document_add (storage, fields, "some text", NULL),
                  CM_STORAGE_OK, "%s", cm_storage_errmsg (storage));
    json_decref (fields);
    json_t *job = NULL;
    cr_assert_eq (
        cm_storage_job_create (storage, NULL, location, "queue", NULL, NULL, 1, &job),
        CM_STORAGE_OK);
    char *id = cm_strdup (json_string_value (json_object_get (job, "id")));
    json_decref (job);

    //  A worker takes it (its row: active, attempt 1 of 1) and dies.
    cm_jobs_config_t config = s_jobs_config ();
    cm_jobs_t *jobs = cm_jobs_new (&config, "doomed-worker");
    char *data = ingest_runner_job_data (location);
    cr_assert_eq (cm_jobs_add (jobs, id, data), CM_JOBS_OK, "%s", cm_jobs_errmsg (jobs));
    free (data);
    cm_job_t *taken = NULL;
    cr_assert_eq (cm_jobs_take (jobs, 1000, &taken), 1, "%s", cm_jobs_errmsg (jobs));
    cr_assert_str_eq (taken->id, id);
    cr_assert_eq (cm_storage_job_update (storage, id, "active", 1, -1, -1, NULL, NULL),
                  CM_STORAGE_OK);
    cm_job_destroy (&taken);
    cm_jobs_destroy (&jobs);

    //  Another instance's maintenance and reconciler (it takes no jobs).
    ingest_job_context_t context = {0};
    ingest_runner_config_t runner_config = {
        .jobs = config, .workers = 0, .reconcile_ms = 200, .maintain_ms = 100};
    ingest_runner_t *runner = ingest_runner_new (&runner_config, &context, pool, NULL);

    char *error = NULL;
    char *state = s_wait_state (storage, id, "failed", &error);
    ingest_runner_destroy (&runner);
    cr_expect_str_eq (state, "failed", "the row of a job the queue failed says %s",
                      state);
    cr_expect (error && strstr (error, "lease expired"),
               "the row keeps the queue's reason, not '%s'", error ? error : "(null)");
    //  The queue still has it as failed: nothing ran it again.
    jobs = cm_jobs_new (&config, NULL);
    json_t *info = cm_jobs_info (jobs, id);
    cr_assert_not_null (info);
    cr_expect_str_eq (json_string_value (json_object_get (info, "state")), "failed");
    json_decref (info);
    cm_jobs_destroy (&jobs);
    free (state);
    free (error);
    free (id);
    cm_storage_pool_release (pool, &storage);
    cm_storage_pool_destroy (&pool);
}

//  A queued job whose row is not there (the database was replaced while
//  Redis kept its queue) will never find it: it fails, attempts or not,
//  instead of waiting for the database every 2 s for ever as a database
//  that fails does.
Test (runner, a_job_without_a_row_fails_not_waits, .init = s_setup, .fini = s_teardown,
      .timeout = 60)
{
    char err[512] = "";
    cm_storage_pool_t *pool = cm_storage_pool_new (s_dir, err, sizeof err);
    cr_assert_not_null (pool, "%s", err);
    cm_jobs_config_t config = s_jobs_config ();
    config.attempts = 3;
    cm_jobs_t *jobs = cm_jobs_new (&config, NULL);
    char *data = ingest_runner_job_data ("custom-documents/gone.txt-1.json");
    cr_assert_eq (cm_jobs_add (jobs, "no-such-row", data), CM_JOBS_OK);
    free (data);
    ingest_job_context_t context = {0};
    ingest_runner_config_t runner_config = {
        .jobs = config, .workers = 1, .reconcile_ms = 1000, .maintain_ms = 100};
    ingest_runner_t *runner = ingest_runner_new (&runner_config, &context, pool, NULL);
    int64_t until = cm_clock_mono_ms () + S_PATIENCE_MS;
    const char *state = NULL;
    json_t *info = NULL;
    do {
        json_decref (info);
        usleep (50 * 1000);
        info = cm_jobs_info (jobs, "no-such-row");
        state = json_string_value (json_object_get (info, "state"));
    } while (state && strcmp (state, "failed") && cm_clock_mono_ms () < until);
    char *shown = json_dumps (info, 0);
    cr_assert_str_eq (state, "failed", "%s", shown);
    free (shown);
    json_decref (info);
    ingest_runner_destroy (&runner);
    cm_jobs_destroy (&jobs);
    cm_storage_pool_destroy (&pool);
}

//  --- ingestd's routes, served by the service over this runner ---------------------
//
//  The handlers are called directly with a fake cm_call_t: this file
//  defines the cm_call_* functions the service uses (a link seam, as in
//  test_chat_service.c), so a route needs no gateway and no ZeroMQ. The
//  service queues its jobs in the real redis-server; no worker takes them.

struct cm_call_s {
    const char *slug; //  the {slug} parameter
    json_t *body;     //  a JSON request body (owned), or NULL
    char *form;       //  an encoded cm_form body (owned), or NULL
    size_t form_size; //  its size
    int status;       //  status of the reply
    json_t *reply;    //  the reply (owned)
    int finals;       //  replies sent (must end at 1)
};

const char *
cm_call_param (cm_call_t *self, const char *name)
{
    return strcmp (name, "slug") ? NULL : self->slug;
}

const char *
cm_call_header (cm_call_t *self, const char *name)
{
    return self->form && !strcasecmp (name, "content-type") ? CM_FORM_CONTENT_TYPE : NULL;
}

const char *
cm_call_body (cm_call_t *self, size_t *size_p)
{
    *size_p = self->form ? self->form_size : 0;
    return self->form ? self->form : "";
}

json_t *
cm_call_json (cm_call_t *self)
{
    return self->body;
}

bool
cm_call_shutting_down (cm_call_t *self)
{
    (void) self;
    return false;
}

bool
cm_call_cancelled (cm_call_t *self)
{
    (void) self;
    return false;
}

void
cm_call_header_add (cm_call_t *self, const char *name, const char *value)
{
    (void) self, (void) name, (void) value;
}

void
cm_call_reply_json (cm_call_t *self, int status, json_t *value)
{
    cr_assert_not_null (value, "a reply was built from a bad json_pack");
    cr_assert_eq (self->finals, 0, "one reply per call");
    self->finals++;
    self->status = status;
    self->reply = value;
}

void
cm_call_reply_error (cm_call_t *self, int status, const char *message)
{
    cm_call_reply_json (self, status, json_pack ("{s:s}", "error", message));
}

static ingest_service_t *s_service;

static void
s_service_setup (void)
{
    s_setup ();
    ingest_config_t config = {
        .storage_dir = s_dir,
        .jobs = s_jobs_config (),
        .job_workers = 0,
        .reconcile_ms = 180000,
        .chunk_size = 1000,
        .chunk_overlap = 20,
        .pool_size = 1,
        .task_timeout_ms = 10000,
    };
    config.jobs.attempts = 3;
    cm_embed_config_defaults (&config.embed);
    cm_breaker_config_t breaker_config;
    cm_breaker_config_defaults (&breaker_config);
    cm_breaker_t *breaker = cm_breaker_new ("ingest", &breaker_config);
    char err[512] = "";
    s_service = ingest_service_new (&config, &breaker, NULL, err, sizeof err);
    cr_assert_not_null (s_service, "%s", err);
}

static void
s_service_teardown (void)
{
    ingest_service_destroy (&s_service);
    s_teardown ();
}

//  Serve one request: the route by method and pattern, the {slug}, and
//  either a JSON body (text) or a form (encoded here; NULL: none).
static cm_call_t *
s_serve (const char *method, const char *pattern, const char *slug, const char *body,
         cm_form_t *form)
{
    cm_call_t *call = cm_calloc (1, sizeof *call);
    call->slug = slug;
    call->body = body ? json_loads (body, 0, NULL) : NULL;
    cr_assert (!body || call->body, "bad test body: %s", body);
    if (form)
        cm_form_encode (form, &call->form, &call->form_size);
    const cm_route_t *route = ingest_service_routes ();
    while (route->method &&
           (strcmp (route->method, method) || strcmp (route->pattern, pattern)))
        route++;
    cr_assert_not_null (route->method, "no route %s %s", method, pattern);
    route->handler (call, s_service);
    cr_assert_eq (call->finals, 1, "%s %s sent %d replies", method, pattern,
                  call->finals);
    return call;
}

static void
s_call_free (cm_call_t **call_p)
{
    cm_call_t *call = *call_p;
    json_decref (call->body);
    json_decref (call->reply);
    free (call->form);
    free (call);
    *call_p = NULL;
}

//  The call's status must be `status`, its error mention each of the
//  NULL-terminated texts and, for the document routes (docs), come with
//  success:false. Frees the call.
static void
s_assert_refused (cm_call_t **call_p, bool docs, int status, ...)
{
    cm_call_t *call = *call_p;
    char *text = json_dumps (call->reply, JSON_COMPACT);
    cr_assert_eq (call->status, status, "status %d, want %d: %.300s", call->status,
                  status, text);
    cr_assert (!docs || json_is_false (json_object_get (call->reply, "success")),
               "not the document routes' failure shape: %s", text);
    const char *error = json_string_value (json_object_get (call->reply, "error"));
    cr_assert_not_null (error, "no error in %s", text);
    va_list args;
    va_start (args, status);
    for (const char *want = va_arg (args, const char *); want;
         want = va_arg (args, const char *))
        cr_assert (strstr (error, want), "error '%s' lacks '%s'", error, want);
    va_end (args);
    free (text);
    s_call_free (call_p);
}

//  A pool of its own on the service's database (the test's reads).
static cm_storage_pool_t *
s_pool (void)
{
    char err[512] = "";
    cm_storage_pool_t *pool = cm_storage_pool_new (s_dir, err, sizeof err);
    cr_assert_not_null (pool, "%s", err);
    return pool;
}

//  A workspace of that name (its slug is the name); returns its id.
static int64_t
s_workspace_make (const char *name)
{
    cm_storage_pool_t *pool = s_pool ();
    cm_storage_t *storage = cm_storage_pool_acquire (pool);
    json_t *fields = json_pack ("{s:s}", "name", name);
    json_t *workspace = NULL;
    cr_assert_eq (cm_storage_workspace_create (storage, fields, &workspace),
                  CM_STORAGE_OK);
    cr_assert_str_eq (json_string_value (json_object_get (workspace, "slug")), name);
    int64_t id = json_integer_value (json_object_get (workspace, "id"));
    json_decref (workspace);
    json_decref (fields);
    cm_storage_pool_release (pool, &storage);
    cm_storage_pool_destroy (&pool);
    return id;
}

//  The documents (locations) linked to a workspace, as a JSON array.
static json_t *
s_workspace_docs (int64_t workspace_id)
{
    cm_storage_pool_t *pool = s_pool ();
    cm_storage_t *storage = cm_storage_pool_acquire (pool);
    json_t *links = NULL;
    cr_assert_eq (cm_storage_workspace_doc_list (storage, workspace_id, &links),
                  CM_STORAGE_OK);
    json_t *locations = json_array ();
    size_t i;
    json_t *link;
    json_array_foreach (links, i, link)
        json_array_append (locations, json_object_get (link, "docpath"));
    json_decref (links);
    cm_storage_pool_release (pool, &storage);
    cm_storage_pool_destroy (&pool);
    return locations;
}

TestSuite (ingest_service, .init = s_service_setup, .fini = s_service_teardown,
           .timeout = 60);

//  An array of slugs is ours (upstream takes a comma-separated string): an
//  item that is no slug must be refused, not dropped, or the document
//  silently goes to no workspace while the client is told it was added.
Test (ingest_service, raw_text_refuses_an_add_to_workspaces_item_that_is_no_slug)
{
    int64_t docs = s_workspace_make ("docs");
    const char *bad[] = {
        "[5]",         "[0]", "[\"docs\", null]",    "[1]", "[\"docs\", \"\"]", "[1]",
        "[{\"a\":1}]", "[0]", "[\"docs\", [\"w\"]]", "[1]",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i += 2) {
        char body[256];
        snprintf (
            body, sizeof body,
            "{\"textContent\":\"Swarms of bees.\",\"metadata\":{\"title\":\"bees\"},"
            "\"addToWorkspaces\":%s}",
            bad[i]);
        cm_call_t *call = s_serve ("POST", "/api/v1/document/raw-text", NULL, body, NULL);
        s_assert_refused (&call, true, 400, "addToWorkspaces", bad[i + 1], NULL);
    }
    json_t *linked = s_workspace_docs (docs);
    cr_assert_eq (json_array_size (linked), 0, "a refused document was linked");
    json_decref (linked);

    //  Slugs only: the job says where the document goes.
    cm_call_t *call = s_serve ("POST", "/api/v1/document/raw-text", NULL,
                               "{\"textContent\":\"Swarms of bees.\","
                               "\"metadata\":{\"title\":\"bees\"},"
                               "\"addToWorkspaces\":[\"docs\"]}",
                               NULL);
    cr_assert_eq (call->status, 200);
    json_t *document = json_array_get (json_object_get (call->reply, "documents"), 0);
    char *id = cm_strdup (
        json_string_value (json_object_get (json_object_get (document, "job"), "id")));
    s_call_free (&call);
    cm_storage_pool_t *pool = s_pool ();
    cm_storage_t *storage = cm_storage_pool_acquire (pool);
    json_t *job = NULL;
    cr_assert_eq (cm_storage_job_get (storage, id, &job), CM_STORAGE_OK);
    json_t *workspaces = json_object_get (job, "workspaces");
    cr_assert_eq (json_array_size (workspaces), 1);
    cr_assert_str_eq (json_string_value (json_array_get (workspaces, 0)), "docs");
    json_decref (job);
    cm_storage_pool_release (pool, &storage);
    cm_storage_pool_destroy (&pool);
    free (id);
}

//  A form with a text file and these extra fields (name, value pairs,
//  NULL-terminated), each as its own part, repeats included.
static cm_form_t *
s_form (const char *first, ...)
{
    cm_form_t *form = cm_form_new ();
    const char *text = "Swarms of bees in the spring.";
    cm_form_add_part (form, "file", "bees.txt", "text/plain", text, strlen (text));
    va_list args;
    va_start (args, first);
    for (const char *name = first; name; name = va_arg (args, const char *)) {
        const char *value = va_arg (args, const char *);
        const char *filename = strcmp (name, "file") ? NULL : value;
        cm_form_add_part (form, name, filename, NULL, value, strlen (value));
    }
    va_end (args);
    return form;
}

//  libmicrohttpd hands every part over, so a repeated field reaches us as
//  two parts; taking the first and dropping the rest loses a file, or a
//  workspace, while the client is told all went well.
Test (ingest_service, upload_refuses_a_repeated_field)
{
    int64_t docs = s_workspace_make ("docs");
    s_workspace_make ("w");
    const char *repeated[] = {"file", "addToWorkspaces", "metadata"};
    cm_form_t *forms[] = {
        s_form ("file", "more.txt", NULL),
        s_form ("addToWorkspaces", "docs", "addToWorkspaces", "w", NULL),
        s_form ("metadata", "{\"docAuthor\":\"Ann\"}", "addToWorkspaces", "docs",
                "metadata", "{\"docAuthor\":\"Bob\"}", NULL),
    };
    for (size_t i = 0; i < 3; i++) {
        cm_call_t *call =
            s_serve ("POST", "/api/v1/document/upload", NULL, NULL, forms[i]);
        char quoted[64];
        snprintf (quoted, sizeof quoted, "\"%s\"", repeated[i]);
        s_assert_refused (&call, true, 400, quoted, NULL);
        cm_form_destroy (&forms[i]);
    }
    json_t *linked = s_workspace_docs (docs);
    cr_assert_eq (json_array_size (linked), 0, "a refused upload was linked");
    json_decref (linked);

    //  One comma-separated field is the way to name several workspaces;
    //  its empty items are skipped, as upstream's split and filter do.
    cm_form_t *form = s_form ("addToWorkspaces", "docs,, w ,", NULL);
    cm_call_t *call = s_serve ("POST", "/api/v1/document/upload", NULL, NULL, form);
    cm_form_destroy (&form);
    cr_assert_eq (call->status, 200);
    s_call_free (&call);
    linked = s_workspace_docs (docs);
    cr_assert_eq (json_array_size (linked), 1);
    json_decref (linked);
}

//  Upstream removes the deletes first, then adds the adds: a location in
//  both ends up linked. Doing them the other way round unlinks it.
Test (ingest_service, update_embeddings_deletes_before_it_adds)
{
    int64_t docs = s_workspace_make ("docs");
    const char *location = "custom-documents/both.txt-1.json";
    cm_storage_pool_t *pool = s_pool ();
    cm_storage_t *storage = cm_storage_pool_acquire (pool);
    json_t *fields = json_pack ("{s:s, s:s}", "location", location, "name", "both.txt");
    cr_assert_eq (cm_storage_document_add (storage, fields, "some text", NULL),
                  CM_STORAGE_OK, "%s", cm_storage_errmsg (storage));
    json_decref (fields);
    cm_storage_pool_release (pool, &storage);
    cm_storage_pool_destroy (&pool);

    const char *body = "{\"adds\":[\"custom-documents/both.txt-1.json\"],"
                       "\"deletes\":[\"custom-documents/both.txt-1.json\"]}";
    //  Twice: first unlinked, then already linked.
    for (int round = 0; round < 2; round++) {
        cm_call_t *call = s_serve ("POST", "/api/v1/workspace/{slug}/update-embeddings",
                                   "docs", body, NULL);
        cr_assert_eq (call->status, 200);
        json_t *documents =
            json_object_get (json_object_get (call->reply, "workspace"), "documents");
        cr_assert_eq (json_array_size (documents), 1, "round %d: the answer lists %zu",
                      round, json_array_size (documents));
        cr_assert_str_eq (json_string_value (
                              json_object_get (json_array_get (documents, 0), "docpath")),
                          location);
        s_call_free (&call);
        json_t *linked = s_workspace_docs (docs);
        cr_assert_eq (json_array_size (linked), 1, "round %d: the document is gone",
                      round);
        json_decref (linked);
    }
}

//  OpenAI answers 400 for an empty string; a zero vector with 200 would
//  be stored or searched as if it meant something. Text that merely has
//  no features (stop words, punctuation) is still embedded: all zeros.
Test (ingest_service, openai_embeddings_refuses_an_empty_input)
{
    const char *bad[] = {"\"\"", "input", "[\"bees\", \"\"]", "input[1]"};
    for (size_t i = 0; i < 4; i += 2) {
        char body[128];
        snprintf (body, sizeof body, "{\"input\":%s}", bad[i]);
        cm_call_t *call = s_serve ("POST", "/api/v1/openai/embeddings", NULL, body, NULL);
        s_assert_refused (&call, false, 400, bad[i + 1], "empty", NULL);
    }
    cm_call_t *call = s_serve ("POST", "/api/v1/openai/embeddings", NULL,
                               "{\"input\":[\"the\", \"!!!\"]}", NULL);
    cr_assert_eq (call->status, 200);
    json_t *data = json_object_get (call->reply, "data");
    cr_assert_eq (json_array_size (data), 2);
    for (size_t i = 0; i < 2; i++) {
        json_t *embedding = json_object_get (json_array_get (data, i), "embedding");
        cr_assert_eq (json_array_size (embedding), 256);
        for (size_t j = 0; j < 256; j++)
            cr_assert_eq (json_real_value (json_array_get (embedding, j)), 0.0);
    }
    s_call_free (&call);
}
