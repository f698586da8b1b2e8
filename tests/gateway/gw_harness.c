/*  gw_harness.c: the gateway tests' shared harness (see gw_harness.h). */
#include "gw_harness.h"
#include "test_dir.h"
#include "test_port.h"
#include <criterion/criterion.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

//  --- the test process ----------------------------------------------------------

void
gwh_setup (const char *name, cm_log_level_t level)
{
    signal (SIGPIPE, SIG_IGN);
    cm_log_init (name);
    cm_log_set_level (level);
    cr_assert_eq (curl_global_init (CURL_GLOBAL_DEFAULT), CURLE_OK);
}

void
gwh_teardown (void)
{
    curl_global_cleanup ();
}

void
gwh_sleep_ms (int ms)
{
    usleep ((useconds_t) ms * 1000);
}

//  A TCP port free on 127.0.0.1 right now.
int
gwh_free_port (void)
{
    return test_port_free ();
}

//  --- the gateway under test ---------------------------------------------------

void
gwh_gateway_start (gwh_gateway_t *self, const gw_config_t *config)
{
    memset (self, 0, sizeof *self);
    self->config = *config;
    gw_config_t *c = &self->config;
    c->port = 0;
    c->timeout_ms = c->timeout_ms ? c->timeout_ms : 30000;
    c->max_body = c->max_body ? c->max_body : 1 << 20;
    c->threads = c->threads ? c->threads : 2;
    c->heartbeat_ms = c->heartbeat_ms ? c->heartbeat_ms : 100;
    c->liveness = c->liveness ? c->liveness : 3;
    c->max_connections = c->max_connections ? c->max_connections : 64;
    c->health_interval = c->health_interval ? c->health_interval : 1000;
    snprintf (self->host, sizeof self->host, "127.0.0.1");
    c->host = self->host;
    snprintf (self->key, sizeof self->key, "%s", GWH_KEY);
    c->admin_key = self->key;
    test_dir_make (self->run_dir, sizeof self->run_dir, "/tmp/llmrt-gw-XXXXXX");
    c->run_dir = self->run_dir;
    //  Nothing listens there: health says so.
    snprintf (self->redis, sizeof self->redis, "redis://127.0.0.1:%d", gwh_free_port ());
    c->redis_url = self->redis;
    if (config->storage_dir) {
        snprintf (self->storage, sizeof self->storage, "%s", config->storage_dir);
        c->storage_dir = self->storage;
    }
    if (config->supervisor) {
        snprintf (self->supervisor, sizeof self->supervisor, "%s", config->supervisor);
        c->supervisor = self->supervisor;
    }
    //  Another process may take the free port before we bind it: try again.
    for (int attempt = 0; attempt < 5 && !self->server; attempt++) {
        snprintf (self->backend, sizeof self->backend, "tcp://127.0.0.1:%d",
                  gwh_free_port ());
        c->backend_bind = self->backend;
        self->server = gw_server_new (c);
    }
    cr_assert_not_null (self->server, "the gateway did not start");
    cr_assert_gt (gw_server_port (self->server), 0);
    snprintf (self->base, sizeof self->base, "http://127.0.0.1:%d",
              gw_server_port (self->server));
}

void
gwh_gateway_stop (gwh_gateway_t *self)
{
    gw_server_destroy (&self->server);
    cr_assert_null (self->server);
    cr_assert_eq (test_dir_remove (self->run_dir), 0, "cannot remove %s", self->run_dir);
}

//  --- HTTP client ------------------------------------------------------------------

gwh_call_t *
gwh_call_new (gwh_gateway_t *gateway, const char *method, const char *path,
              const char *key, const char *body)
{
    gwh_call_t *self = calloc (1, sizeof *self);
    cr_assert_not_null (self);
    self->method = method;
    snprintf (self->url, sizeof self->url, "%s%s", gateway->base, path);
    self->key = key;
    self->body = body;
    pthread_mutex_init (&self->lock, NULL);
    self->reply = calloc (1, 1);
    return self;
}

void
gwh_call_destroy (gwh_call_t **self_p)
{
    gwh_call_t *self = *self_p;
    if (!self)
        return;
    free (self->reply);
    pthread_mutex_destroy (&self->lock);
    free (self);
    *self_p = NULL;
}

static size_t
s_call_on_body (char *data, size_t size, size_t nmemb, void *arg)
{
    gwh_call_t *self = arg;
    size_t n = size * nmemb;
    pthread_mutex_lock (&self->lock);
    self->reply = realloc (self->reply, self->reply_size + n + 1);
    memcpy (self->reply + self->reply_size, data, n);
    self->reply_size += n;
    self->reply[self->reply_size] = 0;
    pthread_mutex_unlock (&self->lock);
    //  Returning less than n makes curl abort and drop the connection.
    return self->hang_up ? 0 : n;
}

static size_t
s_call_on_header (char *data, size_t size, size_t nmemb, void *arg)
{
    gwh_call_t *self = arg;
    size_t n = size * nmemb;
    //  Keep the last response's headers only (not a "100 Continue").
    if (n >= 5 && !memcmp (data, "HTTP/", 5))
        self->headers[0] = 0;
    size_t used = strlen (self->headers);
    if (used + n < sizeof self->headers) {
        memcpy (self->headers + used, data, n);
        self->headers[used + n] = 0;
    }
    return n;
}

//  Chunked upload: hand the body over in small pieces.
static size_t
s_call_on_upload (char *buffer, size_t size, size_t nitems, void *arg)
{
    gwh_call_t *self = arg;
    size_t left = strlen (self->body) - self->sent;
    size_t n = size * nitems;
    if (n > left)
        n = left;
    if (n > 256)
        n = 256;
    memcpy (buffer, self->body + self->sent, n);
    self->sent += n;
    return n;
}

static void
s_call_perform (gwh_call_t *self)
{
    CURL *curl = self->curl ? self->curl : curl_easy_init ();
    //  A reset keeps the handle's connection cache (for keep-alive).
    curl_easy_reset (curl);
    struct curl_slist *headers = NULL;
    char auth[128];
    if (self->key) {
        snprintf (auth, sizeof auth, "Authorization: Bearer %s", self->key);
        headers = curl_slist_append (headers, auth);
    }
    if (self->body)
        headers = curl_slist_append (headers, "Content-Type: application/json");
    if (self->chunked)
        headers = curl_slist_append (headers, "Transfer-Encoding: chunked");
    for (size_t i = 0; i < 4 && self->extra[i]; i++)
        headers = curl_slist_append (headers, self->extra[i]);
    curl_easy_setopt (curl, CURLOPT_URL, self->url);
    if (self->body && self->chunked) {
        curl_easy_setopt (curl, CURLOPT_POST, 1L);
        curl_easy_setopt (curl, CURLOPT_READFUNCTION, s_call_on_upload);
        curl_easy_setopt (curl, CURLOPT_READDATA, self);
    } else if (self->body) {
        curl_easy_setopt (curl, CURLOPT_POSTFIELDS, self->body);
        curl_easy_setopt (curl, CURLOPT_POSTFIELDSIZE, (long) strlen (self->body));
    }
    //  A HEAD must not wait for the body its Content-Length announces.
    if (!strcmp (self->method, "HEAD"))
        curl_easy_setopt (curl, CURLOPT_NOBODY, 1L);
    else if (strcmp (self->method, self->body ? "POST" : "GET"))
        curl_easy_setopt (curl, CURLOPT_CUSTOMREQUEST, self->method);
    curl_easy_setopt (curl, CURLOPT_HTTPHEADER, headers);
    curl_easy_setopt (curl, CURLOPT_WRITEFUNCTION, s_call_on_body);
    curl_easy_setopt (curl, CURLOPT_WRITEDATA, self);
    curl_easy_setopt (curl, CURLOPT_HEADERFUNCTION, s_call_on_header);
    curl_easy_setopt (curl, CURLOPT_HEADERDATA, self);
    curl_easy_setopt (curl, CURLOPT_TIMEOUT_MS,
                      self->timeout_ms ? self->timeout_ms : (long) (3 * GWH_WAIT_MS));
    curl_easy_setopt (curl, CURLOPT_NOSIGNAL, 1L);
    self->code = curl_easy_perform (curl);
    curl_easy_getinfo (curl, CURLINFO_RESPONSE_CODE, &self->status);
    curl_easy_getinfo (curl, CURLINFO_NUM_CONNECTS, &self->connects);
    curl_slist_free_all (headers);
    if (!self->curl)
        curl_easy_cleanup (curl);
}

static void *
s_call_thread (void *arg)
{
    gwh_call_t *self = arg;
    s_call_perform (self);
    atomic_store (&self->done, true);
    return NULL;
}

//  Run the call on a thread (for calls that wait on a daemon).
void
gwh_call_start (gwh_call_t *self)
{
    cr_assert_eq (pthread_create (&self->thread, NULL, s_call_thread, self), 0);
}

//  Wait for a started call to end; fails the test after GWH_WAIT_MS.
void
gwh_call_join (gwh_call_t *self)
{
    int64_t until = cm_clock_mono_ms () + GWH_WAIT_MS;
    while (!atomic_load (&self->done) && cm_clock_mono_ms () < until)
        gwh_sleep_ms (5);
    cr_assert (atomic_load (&self->done), "%s: no response within %d ms", self->url,
               GWH_WAIT_MS);
    pthread_join (self->thread, NULL);
}

//  Run a call here, to its end.
void
gwh_call_run (gwh_call_t *self)
{
    s_call_perform (self);
    atomic_store (&self->done, true);
}

//  Has the body received so far got this text?
bool
gwh_call_has (gwh_call_t *self, const char *text)
{
    pthread_mutex_lock (&self->lock);
    bool found = strstr (self->reply, text) != NULL;
    pthread_mutex_unlock (&self->lock);
    return found;
}

//  Poll until the body received so far has this text.
bool
gwh_call_wait_for (gwh_call_t *self, const char *text)
{
    int64_t until = cm_clock_mono_ms () + GWH_WAIT_MS;
    while (!gwh_call_has (self, text) && cm_clock_mono_ms () < until)
        gwh_sleep_ms (2);
    return gwh_call_has (self, text);
}

//  A response header's value (the first one), "" when absent. Static
//  buffer.
const char *
gwh_call_header (gwh_call_t *self, const char *name)
{
    static char value[512];
    size_t name_size = strlen (name);
    for (const char *line = self->headers; line && *line;) {
        const char *end = strstr (line, "\r\n");
        size_t size = end ? (size_t) (end - line) : strlen (line);
        if (size > name_size && line[name_size] == ':' &&
            !strncasecmp (line, name, name_size)) {
            const char *start = line + name_size + 1;
            while (*start == ' ')
                start++;
            size_t length = size - (size_t) (start - line);
            if (length >= sizeof value)
                length = sizeof value - 1;
            memcpy (value, start, length);
            value[length] = 0;
            return value;
        }
        line = end ? end + 2 : NULL;
    }
    return "";
}

//  The body as JSON (new reference); fails the test when it is not JSON.
json_t *
gwh_call_json (gwh_call_t *self)
{
    json_error_t error;
    json_t *json = json_loads (self->reply, 0, &error);
    cr_assert_not_null (json, "not JSON (%s): '%s'", error.text, self->reply);
    return json;
}

//  The body is exactly {"error": message}.
void
gwh_assert_error (gwh_call_t *self, long status, const char *message)
{
    cr_assert_eq (self->code, CURLE_OK, "%s: %s", self->url,
                  curl_easy_strerror (self->code));
    cr_assert_eq (self->status, status, "%s: status %ld, expected %ld (%s)", self->url,
                  self->status, status, self->reply);
    const char *type = gwh_call_header (self, "Content-Type");
    cr_assert_str_eq (type, "application/json");
    json_t *json = gwh_call_json (self);
    cr_assert_eq (json_object_size (json), 1, "%s", self->reply);
    const char *error = json_string_value (json_object_get (json, "error"));
    cr_assert_not_null (error, "%s", self->reply);
    if (message)
        cr_assert_str_eq (error, message);
    json_decref (json);
}

//  One synchronous call; returns it (caller destroys).
gwh_call_t *
gwh_http (gwh_gateway_t *gateway, const char *method, const char *path, const char *key,
          const char *body)
{
    gwh_call_t *call = gwh_call_new (gateway, method, path, key, body);
    gwh_call_run (call);
    return call;
}

gwh_call_t *
gwh_http_on (gwh_gateway_t *gateway, CURL *curl, const char *method, const char *path,
             const char *key, const char *body)
{
    gwh_call_t *call = gwh_call_new (gateway, method, path, key, body);
    call->curl = curl;
    gwh_call_run (call);
    return call;
}

json_t *
gwh_get_json (gwh_gateway_t *gateway, const char *path)
{
    gwh_call_t *call = gwh_http (gateway, "GET", path, NULL, NULL);
    cr_assert_eq (call->status, 200, "%s: %ld %s", path, call->status, call->reply);
    cr_assert (strcasestr (call->headers, "Content-Type: application/json"), "%s",
               call->headers);
    json_t *json = gwh_call_json (call);
    gwh_call_destroy (&call);
    return json;
}

//  --- JSON and health -------------------------------------------------------------

json_t *
gwh_json_at (json_t *json, const char *path)
{
    char *copy = strdup (path), *save = NULL;
    for (char *key = strtok_r (copy, ".", &save); key && json;
         key = strtok_r (NULL, ".", &save))
        json = json_object_get (json, key);
    free (copy);
    return json;
}

json_int_t
gwh_json_int (json_t *json, const char *path)
{
    json_t *at = gwh_json_at (json, path);
    cr_assert (json_is_integer (at), "%s is not an integer", path);
    return json_integer_value (at);
}

json_t *
gwh_health (gwh_gateway_t *gateway)
{
    gwh_call_t *call = gwh_http (gateway, "GET", "/api/health", NULL, NULL);
    cr_assert_eq (call->code, CURLE_OK);
    cr_assert (call->status == 200 || call->status == 503, "health: %ld", call->status);
    json_t *json = gwh_call_json (call);
    gwh_call_destroy (&call);
    return json;
}

//  A number in /api/health by dotted path ("broker.dropped_frames").
json_int_t
gwh_health_number (gwh_gateway_t *gateway, const char *path)
{
    json_t *health = gwh_health (gateway);
    json_t *node = gwh_json_at (health, path);
    cr_assert (json_is_integer (node), "no number at %s in /api/health", path);
    json_int_t value = json_integer_value (node);
    json_decref (health);
    return value;
}

//  Poll /api/health until the number at path has this value.
void
gwh_wait_health (gwh_gateway_t *gateway, const char *path, json_int_t value)
{
    int64_t until = cm_clock_mono_ms () + GWH_WAIT_MS;
    json_int_t now = gwh_health_number (gateway, path);
    while (now != value && cm_clock_mono_ms () < until) {
        gwh_sleep_ms (10);
        now = gwh_health_number (gateway, path);
    }
    cr_assert_eq (now, value, "/api/health %s is %lld, expected %lld", path,
                  (long long) now, (long long) value);
}

void
gwh_wait_instance (gwh_gateway_t *gateway, const char *service)
{
    char path[64];
    snprintf (path, sizeof path, "services.%s.instances", service);
    int64_t until = cm_clock_mono_ms () + GWH_WAIT_MS;
    while (cm_clock_mono_ms () < until) {
        json_t *health = gwh_health (gateway);
        //  No entry yet counts as none.
        json_int_t instances = json_integer_value (gwh_json_at (health, path));
        json_decref (health);
        if (instances > 0)
            return;
        gwh_sleep_ms (10);
    }
    cr_assert_fail ("no %s instance registered within %d ms", service, GWH_WAIT_MS);
}

//  How long ago the gateway heard from an instance, -1 when it does not
//  know it.
json_int_t
gwh_health_silence (gwh_gateway_t *gateway, const char *id)
{
    json_t *health = gwh_health (gateway);
    json_int_t silence = -1;
    size_t index;
    json_t *instance;
    json_array_foreach (json_object_get (health, "instances"), index, instance)
    {
        if (!strcmp (json_string_value (json_object_get (instance, "id")), id))
            silence = json_integer_value (json_object_get (instance, "last_seen_ms_ago"));
    }
    json_decref (health);
    return silence;
}

//  --- fake daemons -----------------------------------------------------------

static void
s_send_msg (zsock_t *sock, cm_msg_t *msg)
{
    char *data;
    size_t size;
    cm_msg_encode (msg, &data, &size);
    zframe_t *frame = zframe_new (data, size);
    free (data);
    zframe_send (&frame, sock, 0);
}

//  The daemon's own thread: heartbeats, and frames in both directions
//  between the gateway and the test (pipe: "SEND" + frame in, frames out).
static void
s_daemon_actor (zsock_t *pipe, void *args)
{
    gwh_daemon_t *self = args;
    zsock_t *dealer = zsock_new (ZMQ_DEALER);
    assert (dealer);
    zsock_set_identity (dealer, self->id);
    zsock_set_linger (dealer, 0);
    int rc = zsock_connect (dealer, "%s", self->endpoint);
    assert (rc == 0);
    zsock_signal (pipe, 0);
    if (self->announce) {
        cm_msg_t *ready = cm_msg_new (CM_MSG_READY);
        cm_msg_set_service (ready, self->service);
        cm_msg_set_instance (ready, self->id);
        cm_msg_set_capacity (ready, self->capacity);
        s_send_msg (dealer, ready);
        cm_msg_destroy (&ready);
    }
    int64_t next_beat = cm_clock_mono_ms () + GWH_BEAT_MS;
    bool running = true;
    while (running) {
        zmq_pollitem_t items[] = {{zsock_resolve (pipe), 0, ZMQ_POLLIN, 0},
                                  {zsock_resolve (dealer), 0, ZMQ_POLLIN, 0}};
        int64_t wait = next_beat - cm_clock_mono_ms ();
        if (zmq_poll (items, 2, wait > 0 ? (long) wait : 0) < 0 && zmq_errno () != EINTR)
            break;
        if (items[0].revents & ZMQ_POLLIN) {
            zmsg_t *command = zmsg_recv (pipe);
            if (!command)
                break;
            char *verb = zmsg_popstr (command);
            if (verb && streq (verb, "SEND")) {
                zframe_t *frame = zmsg_pop (command);
                zframe_send (&frame, dealer, 0);
            } else if (verb && streq (verb, "$TERM"))
                running = false;
            zstr_free (&verb);
            zmsg_destroy (&command);
        }
        if (items[1].revents & ZMQ_POLLIN) {
            zframe_t *frame = zframe_recv (dealer);
            char err[256];
            cm_msg_t *msg = frame ? cm_msg_decode (zframe_data (frame),
                                                   zframe_size (frame), err, sizeof err)
                                  : NULL;
            if (msg && cm_msg_type (msg) == CM_MSG_REQUEST)
                atomic_fetch_add (&self->requests, 1);
            if (msg && cm_msg_type (msg) == CM_MSG_HEARTBEAT) {
                atomic_fetch_add (&self->heartbeats, 1);
                zframe_destroy (&frame);
            } else if (msg && self->answer && cm_msg_type (msg) == CM_MSG_REQUEST) {
                cm_msg_t *reply = cm_msg_new (CM_MSG_FINAL);
                cm_msg_set_request_id (reply, cm_msg_request_id (msg));
                cm_msg_set_status (reply, 200);
                cm_msg_set_content_type (reply, "application/json");
                cm_msg_set_body (reply, "{\"ok\":true}", 11);
                s_send_msg (dealer, reply);
                cm_msg_destroy (&reply);
                zframe_destroy (&frame);
            } else if (frame)
                zframe_send (&frame, pipe, 0);
            cm_msg_destroy (&msg);
        }
        if (cm_clock_mono_ms () >= next_beat) {
            if (!atomic_load (&self->muted)) {
                cm_msg_t *beat = cm_msg_new (CM_MSG_HEARTBEAT);
                cm_msg_set_capacity (beat, self->capacity);
                s_send_msg (dealer, beat);
                cm_msg_destroy (&beat);
            }
            next_beat = cm_clock_mono_ms () + GWH_BEAT_MS;
        }
    }
    zsock_destroy (&dealer);
}

//  A fake daemon instance connected to the gateway; when announce, it says
//  READY with this capacity.
static gwh_daemon_t *
s_daemon_new (gwh_gateway_t *gateway, const char *service, const char *id,
              uint32_t capacity, bool announce, bool answer)
{
    gwh_daemon_t *self = calloc (1, sizeof *self);
    cr_assert_not_null (self);
    snprintf (self->endpoint, sizeof self->endpoint, "%s", gateway->backend);
    snprintf (self->service, sizeof self->service, "%s", service);
    snprintf (self->id, sizeof self->id, "%s", id);
    self->capacity = capacity;
    self->announce = announce;
    //  Set before the actor starts: it reads them without a lock.
    self->answer = answer;
    self->actor = zactor_new (s_daemon_actor, self);
    cr_assert_not_null (self->actor);
    return self;
}

gwh_daemon_t *
gwh_daemon_start (gwh_gateway_t *gateway, const char *service, const char *id,
                  uint32_t capacity, bool announce)
{
    return s_daemon_new (gateway, service, id, capacity, announce, false);
}

gwh_daemon_t *
gwh_daemon_new (gwh_gateway_t *gateway, const char *service, const char *id,
                uint32_t capacity)
{
    return gwh_daemon_start (gateway, service, id, capacity, true);
}

gwh_daemon_t *
gwh_daemon_new_answering (gwh_gateway_t *gateway, const char *service, const char *id)
{
    return s_daemon_new (gateway, service, id, 64, true, true);
}

void
gwh_daemon_destroy (gwh_daemon_t **self_p)
{
    gwh_daemon_t *self = *self_p;
    if (!self)
        return;
    //  gwh_daemon_recv leaves a receive timeout on the actor's pipe; with it
    //  zactor_destroy would stop waiting for the actor's end, and the
    //  actor would go on using self after the free below.
    zsock_set_rcvtimeo (zactor_sock (self->actor), -1);
    zactor_destroy (&self->actor);
    free (self);
    *self_p = NULL;
}

//  Stop heartbeating, as a hung daemon would.
void
gwh_daemon_mute (gwh_daemon_t *self)
{
    atomic_store (&self->muted, true);
}

void
gwh_daemon_unmute (gwh_daemon_t *self)
{
    atomic_store (&self->muted, false);
}

void
gwh_daemon_send_raw (gwh_daemon_t *self, const void *data, size_t size)
{
    zmsg_t *command = zmsg_new ();
    zmsg_addstr (command, "SEND");
    zmsg_addmem (command, data, size);
    cr_assert_eq (zmsg_send (&command, self->actor), 0);
}

//  Send a message to the gateway (takes it).
void
gwh_daemon_send (gwh_daemon_t *self, cm_msg_t **msg_p)
{
    char *data;
    size_t size;
    cm_msg_encode (*msg_p, &data, &size);
    gwh_daemon_send_raw (self, data, size);
    free (data);
    cm_msg_destroy (msg_p);
}

//  Answer a request with a PARTIAL or FINAL.
void
gwh_daemon_reply (gwh_daemon_t *self, cm_msg_type_t type, const char *request_id,
                  uint16_t status, const char *content_type, const char *body)
{
    cm_msg_t *reply = cm_msg_new (type);
    cm_msg_set_request_id (reply, request_id);
    cm_msg_set_status (reply, status);
    cm_msg_set_content_type (reply, content_type);
    cm_msg_set_body (reply, body, strlen (body));
    gwh_daemon_send (self, &reply);
}

//  The next frame from the gateway other than a HEARTBEAT, or NULL after
//  timeout_ms.
cm_msg_t *
gwh_daemon_recv (gwh_daemon_t *self, int timeout_ms)
{
    zsock_set_rcvtimeo (zactor_sock (self->actor), timeout_ms);
    zframe_t *frame = zframe_recv (self->actor);
    if (!frame)
        return NULL;
    char err[256];
    cm_msg_t *msg =
        cm_msg_decode (zframe_data (frame), zframe_size (frame), err, sizeof err);
    zframe_destroy (&frame);
    cr_assert_not_null (msg, "the gateway sent a frame its own codec refuses: %s", err);
    return msg;
}

//  The next frame, which must be of this type (within GWH_WAIT_MS).
cm_msg_t *
gwh_daemon_expect (gwh_daemon_t *self, cm_msg_type_t type)
{
    cm_msg_t *msg = gwh_daemon_recv (self, GWH_WAIT_MS);
    cr_assert_not_null (msg, "%s: no %s within %d ms", self->id, cm_msg_type_name (type),
                        GWH_WAIT_MS);
    cr_assert_eq (cm_msg_type (msg), type, "%s: got %s, expected %s", self->id,
                  cm_msg_type_name (cm_msg_type (msg)), cm_msg_type_name (type));
    return msg;
}

//  The next REQUEST at any of these daemons; *which is its index.
cm_msg_t *
gwh_daemons_expect_request (gwh_daemon_t **daemons, size_t count, size_t *which)
{
    int64_t until = cm_clock_mono_ms () + GWH_WAIT_MS;
    while (cm_clock_mono_ms () < until) {
        for (size_t i = 0; i < count; i++) {
            cm_msg_t *msg = gwh_daemon_recv (daemons[i], 2);
            if (msg) {
                cr_assert_eq (cm_msg_type (msg), CM_MSG_REQUEST, "%s: got %s",
                              daemons[i]->id, cm_msg_type_name (cm_msg_type (msg)));
                *which = i;
                return msg;
            }
        }
    }
    cr_assert_fail ("no REQUEST reached any daemon within %d ms", GWH_WAIT_MS);
    return NULL;
}

int
gwh_connect (gwh_gateway_t *gateway, int rcvbuf)
{
    int port = atoi (strrchr (gateway->base, ':') + 1);
    int fd = socket (AF_INET, SOCK_STREAM, 0);
    cr_assert_geq (fd, 0);
    if (rcvbuf > 0)
        setsockopt (fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf);
    struct sockaddr_in addr = {.sin_family = AF_INET,
                               .sin_port = htons ((uint16_t) port)};
    inet_pton (AF_INET, "127.0.0.1", &addr.sin_addr);
    cr_assert_eq (connect (fd, (struct sockaddr *) &addr, sizeof addr), 0);
    return fd;
}
