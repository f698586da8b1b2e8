/*  test_gw_server.c: the gateway in this process, as its users see it.

    In front, an HTTP client (libcurl; a call that has to wait for a daemon
    runs on its own thread). Behind, fake daemons: each one a czmq actor
    that owns a DEALER socket named by its instance id, says READY,
    heartbeats by itself (so the test thread never has to), and hands every
    other frame it receives to the test, which answers with cm_msg frames
    as a real daemon would. Every wait is a poll with a generous timeout;
    no timing is asserted. */
#include <criterion/criterion.h>
#include <curl/curl.h>
#include <czmq.h>
#include <jansson.h>
#include <msgpack.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <sys/socket.h>
#include <unistd.h>
#include "cm_log.h"
#include "cm_msg.h"
#include "gw_server.h"

#define S_KEY          "gw-test-admin-key-0123456789"
#define S_WAIT_MS      10000 //  upper bound for anything the test waits for
#define S_HEARTBEAT_MS 100   //  the gateway's heartbeat interval
#define S_LIVENESS     3     //  missed intervals before expiry
#define S_BEAT_MS      20    //  fake daemons beat faster: no expiry by accident
#define S_TIMEOUT_MS   30000 //  request deadline, unless a test wants one

static void
s_setup (void)
{
    signal (SIGPIPE, SIG_IGN);
    cm_log_init ("test_gw_server");
    cm_log_set_level (CM_LOG_WARN);
    cr_assert_eq (curl_global_init (CURL_GLOBAL_DEFAULT), CURLE_OK);
}

static void
s_teardown (void)
{
    curl_global_cleanup ();
}

TestSuite (gw_server, .init = s_setup, .fini = s_teardown, .timeout = 120);

static void
s_sleep_ms (int ms)
{
    usleep ((useconds_t) ms * 1000);
}

//  A TCP port free on 127.0.0.1 right now.
static int
s_free_port (void)
{
    int fd = socket (AF_INET, SOCK_STREAM, 0);
    cr_assert_geq (fd, 0);
    struct sockaddr_in addr = {0};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl (INADDR_LOOPBACK);
    cr_assert_eq (bind (fd, (struct sockaddr *) &addr, sizeof addr), 0);
    socklen_t len = sizeof addr;
    cr_assert_eq (getsockname (fd, (struct sockaddr *) &addr, &len), 0);
    close (fd);
    return ntohs (addr.sin_port);
}

//  --- the gateway under test -------------------------------------------------

typedef struct {
    gw_config_t config;  //  borrowed by the server
    char host[16];       //  config.host
    char backend[64];    //  config.backend_bind
    char key[64];        //  config.admin_key
    char run_dir[64];    //  config.run_dir: a temporary directory
    char redis[64];      //  config.redis_url: nothing listens there
    char base[64];       //  "http://127.0.0.1:PORT"
    char storage[128];   //  config.storage_dir, when another gateway's
    gw_server_t *server; //  the gateway
} s_gateway_t;

//  Start a gateway on an ephemeral HTTP port and a free backend port, on
//  the database in storage_dir (NULL: its own), trusting database API keys
//  for key_ttl_ms.
static void
s_gateway_start_on (s_gateway_t *self, int64_t timeout_ms, int64_t max_body,
                    const char *storage_dir, int64_t key_ttl_ms)
{
    memset (self, 0, sizeof *self);
    if (storage_dir)
        snprintf (self->storage, sizeof self->storage, "%s", storage_dir);
    snprintf (self->host, sizeof self->host, "127.0.0.1");
    snprintf (self->key, sizeof self->key, "%s", S_KEY);
    snprintf (self->run_dir, sizeof self->run_dir, "/tmp/llmrt-gw-XXXXXX");
    cr_assert_not_null (mkdtemp (self->run_dir));
    snprintf (self->redis, sizeof self->redis, "redis://127.0.0.1:%d", s_free_port ());
    //  Another process may take the free port before we bind it: try again.
    for (int attempt = 0; attempt < 5 && !self->server; attempt++) {
        snprintf (self->backend, sizeof self->backend, "tcp://127.0.0.1:%d",
                  s_free_port ());
        self->config = (gw_config_t){.port = 0,
                                     .host = self->host,
                                     .backend_bind = self->backend,
                                     .timeout_ms = timeout_ms,
                                     .max_body = max_body,
                                     .threads = 2,
                                     .heartbeat_ms = S_HEARTBEAT_MS,
                                     .liveness = S_LIVENESS,
                                     .admin_key = self->key,
                                     .max_connections = 64,
                                     .run_dir = self->run_dir,
                                     .redis_url = self->redis,
                                     .health_interval = 100,
                                     .storage_dir = storage_dir ? self->storage : NULL,
                                     .key_cache_ttl_ms = key_ttl_ms};
        self->server = gw_server_new (&self->config);
    }
    cr_assert_not_null (self->server, "the gateway did not start");
    cr_assert_gt (gw_server_port (self->server), 0);
    snprintf (self->base, sizeof self->base, "http://127.0.0.1:%d",
              gw_server_port (self->server));
}

static void
s_gateway_start (s_gateway_t *self, int64_t timeout_ms, int64_t max_body)
{
    s_gateway_start_on (self, timeout_ms, max_body, NULL, 500);
}

static void
s_gateway_stop (s_gateway_t *self)
{
    gw_server_destroy (&self->server);
    cr_assert_null (self->server);
    char cmd[128];
    snprintf (cmd, sizeof cmd, "rm -rf '%s'", self->run_dir);
    int rc = system (cmd);
    (void) rc;
}

//  --- HTTP client --------------------------------------------------------------

typedef struct {
    //  The request, set before the call.
    const char *method;   //  "GET", "POST", ...
    char url[320];        //  base + path and query
    const char *key;      //  bearer key, NULL: none
    const char *body;     //  request body, NULL: none
    bool chunked;         //  send the body with Transfer-Encoding: chunked
    const char *extra[4]; //  more request headers, NULL-terminated
    bool hang_up;         //  close the connection once some body arrived
    long timeout_ms;      //  give up (and close) after this long; 0: default
    CURL *curl;           //  a handle to reuse (borrowed), NULL: its own
    //  The response, filled while the call runs.
    pthread_mutex_t lock; //  guards reply while the call runs
    char *reply;          //  body so far, NUL-terminated
    size_t reply_size;    //  its length
    char headers[4096];   //  raw headers of the last response
    long status;          //  HTTP status, 0 when the transfer failed early
    CURLcode code;        //  transfer result
    long connects;        //  new connections the call opened
    size_t sent;          //  chunked upload offset
    pthread_t thread;     //  when started on a thread
    atomic_bool done;     //  the call has returned
} s_call_t;

static s_call_t *
s_call_new (s_gateway_t *gateway, const char *method, const char *path, const char *key,
            const char *body)
{
    s_call_t *self = calloc (1, sizeof *self);
    cr_assert_not_null (self);
    self->method = method;
    snprintf (self->url, sizeof self->url, "%s%s", gateway->base, path);
    self->key = key;
    self->body = body;
    pthread_mutex_init (&self->lock, NULL);
    self->reply = calloc (1, 1);
    return self;
}

static void
s_call_destroy (s_call_t **self_p)
{
    s_call_t *self = *self_p;
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
    s_call_t *self = arg;
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
    s_call_t *self = arg;
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
    s_call_t *self = arg;
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
s_call_perform (s_call_t *self)
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
    if (strcmp (self->method, self->body ? "POST" : "GET"))
        curl_easy_setopt (curl, CURLOPT_CUSTOMREQUEST, self->method);
    curl_easy_setopt (curl, CURLOPT_HTTPHEADER, headers);
    curl_easy_setopt (curl, CURLOPT_WRITEFUNCTION, s_call_on_body);
    curl_easy_setopt (curl, CURLOPT_WRITEDATA, self);
    curl_easy_setopt (curl, CURLOPT_HEADERFUNCTION, s_call_on_header);
    curl_easy_setopt (curl, CURLOPT_HEADERDATA, self);
    curl_easy_setopt (curl, CURLOPT_TIMEOUT_MS,
                      self->timeout_ms ? self->timeout_ms : (long) (3 * S_WAIT_MS));
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
    s_call_t *self = arg;
    s_call_perform (self);
    atomic_store (&self->done, true);
    return NULL;
}

//  Run the call on a thread (for calls that wait on a daemon).
static void
s_call_start (s_call_t *self)
{
    cr_assert_eq (pthread_create (&self->thread, NULL, s_call_thread, self), 0);
}

//  Wait for a started call to end; fails the test after S_WAIT_MS.
static void
s_call_join (s_call_t *self)
{
    int64_t until = cm_clock_mono_ms () + S_WAIT_MS;
    while (!atomic_load (&self->done) && cm_clock_mono_ms () < until)
        s_sleep_ms (5);
    cr_assert (atomic_load (&self->done), "%s: no response within %d ms", self->url,
               S_WAIT_MS);
    pthread_join (self->thread, NULL);
}

//  Run a call here, to its end.
static void
s_call_run (s_call_t *self)
{
    s_call_perform (self);
    atomic_store (&self->done, true);
}

//  Has the body received so far got this text?
static bool
s_call_has (s_call_t *self, const char *text)
{
    pthread_mutex_lock (&self->lock);
    bool found = strstr (self->reply, text) != NULL;
    pthread_mutex_unlock (&self->lock);
    return found;
}

//  Poll until the body received so far has this text.
static bool
s_call_wait_for (s_call_t *self, const char *text)
{
    int64_t until = cm_clock_mono_ms () + S_WAIT_MS;
    while (!s_call_has (self, text) && cm_clock_mono_ms () < until)
        s_sleep_ms (2);
    return s_call_has (self, text);
}

//  A response header's value (the first one), "" when absent. Static
//  buffer.
static const char *
s_call_header (s_call_t *self, const char *name)
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
static json_t *
s_call_json (s_call_t *self)
{
    json_error_t error;
    json_t *json = json_loads (self->reply, 0, &error);
    cr_assert_not_null (json, "not JSON (%s): '%s'", error.text, self->reply);
    return json;
}

//  The body is exactly {"error": message}.
static void
s_assert_error (s_call_t *self, long status, const char *message)
{
    cr_assert_eq (self->code, CURLE_OK, "%s: %s", self->url,
                  curl_easy_strerror (self->code));
    cr_assert_eq (self->status, status, "%s: status %ld, expected %ld (%s)", self->url,
                  self->status, status, self->reply);
    const char *type = s_call_header (self, "Content-Type");
    cr_assert_str_eq (type, "application/json");
    json_t *json = s_call_json (self);
    cr_assert_eq (json_object_size (json), 1, "%s", self->reply);
    const char *error = json_string_value (json_object_get (json, "error"));
    cr_assert_not_null (error, "%s", self->reply);
    if (message)
        cr_assert_str_eq (error, message);
    json_decref (json);
}

//  One synchronous call; returns it (caller destroys).
static s_call_t *
s_http (s_gateway_t *gateway, const char *method, const char *path, const char *key,
        const char *body)
{
    s_call_t *call = s_call_new (gateway, method, path, key, body);
    s_call_run (call);
    return call;
}

//  --- health ---------------------------------------------------------------

//  GET /api/health (needs no key), as JSON.
static json_t *
s_health (s_gateway_t *gateway)
{
    s_call_t *call = s_http (gateway, "GET", "/api/health", NULL, NULL);
    cr_assert_eq (call->code, CURLE_OK);
    cr_assert (call->status == 200 || call->status == 503, "health: %ld", call->status);
    json_t *json = s_call_json (call);
    s_call_destroy (&call);
    return json;
}

//  A number in /api/health by dotted path ("broker.dropped_frames").
static json_int_t
s_health_number (s_gateway_t *gateway, const char *path)
{
    json_t *health = s_health (gateway);
    json_t *node = health;
    char copy[128];
    snprintf (copy, sizeof copy, "%s", path);
    char *save = NULL;
    for (char *name = strtok_r (copy, ".", &save); name && node;
         name = strtok_r (NULL, ".", &save))
        node = json_object_get (node, name);
    cr_assert (json_is_integer (node), "no number at %s in /api/health", path);
    json_int_t value = json_integer_value (node);
    json_decref (health);
    return value;
}

//  Poll /api/health until the number at path has this value.
static void
s_wait_health (s_gateway_t *gateway, const char *path, json_int_t value)
{
    int64_t until = cm_clock_mono_ms () + S_WAIT_MS;
    json_int_t now = s_health_number (gateway, path);
    while (now != value && cm_clock_mono_ms () < until) {
        s_sleep_ms (10);
        now = s_health_number (gateway, path);
    }
    cr_assert_eq (now, value, "/api/health %s is %lld, expected %lld", path,
                  (long long) now, (long long) value);
}

//  How long ago the gateway heard from an instance, -1 when it does not
//  know it.
static json_int_t
s_health_silence (s_gateway_t *gateway, const char *id)
{
    json_t *health = s_health (gateway);
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

typedef struct {
    zactor_t *actor;       //  owns the DEALER socket
    char endpoint[64];     //  the gateway's backend
    char service[16];      //  what it serves
    char id[32];           //  routing id == instance id
    uint32_t capacity;     //  slots it announces
    bool announce;         //  says READY when it starts
    atomic_bool muted;     //  sends nothing more by itself (as if hung)
    atomic_int heartbeats; //  HEARTBEATs received from the gateway
} s_daemon_t;

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
    s_daemon_t *self = args;
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
    int64_t next_beat = cm_clock_mono_ms () + S_BEAT_MS;
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
            if (msg && cm_msg_type (msg) == CM_MSG_HEARTBEAT) {
                atomic_fetch_add (&self->heartbeats, 1);
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
            next_beat = cm_clock_mono_ms () + S_BEAT_MS;
        }
    }
    zsock_destroy (&dealer);
}

//  A fake daemon instance connected to the gateway; when announce, it says
//  READY with this capacity.
static s_daemon_t *
s_daemon_start (s_gateway_t *gateway, const char *service, const char *id,
                uint32_t capacity, bool announce)
{
    s_daemon_t *self = calloc (1, sizeof *self);
    cr_assert_not_null (self);
    snprintf (self->endpoint, sizeof self->endpoint, "%s", gateway->backend);
    snprintf (self->service, sizeof self->service, "%s", service);
    snprintf (self->id, sizeof self->id, "%s", id);
    self->capacity = capacity;
    self->announce = announce;
    self->actor = zactor_new (s_daemon_actor, self);
    cr_assert_not_null (self->actor);
    return self;
}

static s_daemon_t *
s_daemon_new (s_gateway_t *gateway, const char *service, const char *id,
              uint32_t capacity)
{
    return s_daemon_start (gateway, service, id, capacity, true);
}

static void
s_daemon_destroy (s_daemon_t **self_p)
{
    s_daemon_t *self = *self_p;
    if (!self)
        return;
    zactor_destroy (&self->actor);
    free (self);
    *self_p = NULL;
}

//  Stop heartbeating, as a hung daemon would.
static void
s_daemon_mute (s_daemon_t *self)
{
    atomic_store (&self->muted, true);
}

static void
s_daemon_send_raw (s_daemon_t *self, const void *data, size_t size)
{
    zmsg_t *command = zmsg_new ();
    zmsg_addstr (command, "SEND");
    zmsg_addmem (command, data, size);
    cr_assert_eq (zmsg_send (&command, self->actor), 0);
}

//  Send a message to the gateway (takes it).
static void
s_daemon_send (s_daemon_t *self, cm_msg_t **msg_p)
{
    char *data;
    size_t size;
    cm_msg_encode (*msg_p, &data, &size);
    s_daemon_send_raw (self, data, size);
    free (data);
    cm_msg_destroy (msg_p);
}

//  Answer a request with a PARTIAL or FINAL.
static void
s_daemon_reply (s_daemon_t *self, cm_msg_type_t type, const char *request_id,
                uint16_t status, const char *content_type, const char *body)
{
    cm_msg_t *reply = cm_msg_new (type);
    cm_msg_set_request_id (reply, request_id);
    cm_msg_set_status (reply, status);
    cm_msg_set_content_type (reply, content_type);
    cm_msg_set_body (reply, body, strlen (body));
    s_daemon_send (self, &reply);
}

//  The next frame from the gateway other than a HEARTBEAT, or NULL after
//  timeout_ms.
static cm_msg_t *
s_daemon_recv (s_daemon_t *self, int timeout_ms)
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

//  The next frame, which must be of this type (within S_WAIT_MS).
static cm_msg_t *
s_daemon_expect (s_daemon_t *self, cm_msg_type_t type)
{
    cm_msg_t *msg = s_daemon_recv (self, S_WAIT_MS);
    cr_assert_not_null (msg, "%s: no %s within %d ms", self->id, cm_msg_type_name (type),
                        S_WAIT_MS);
    cr_assert_eq (cm_msg_type (msg), type, "%s: got %s, expected %s", self->id,
                  cm_msg_type_name (cm_msg_type (msg)), cm_msg_type_name (type));
    return msg;
}

//  The next REQUEST at any of these daemons; *which is its index.
static cm_msg_t *
s_daemons_expect_request (s_daemon_t **daemons, size_t count, size_t *which)
{
    int64_t until = cm_clock_mono_ms () + S_WAIT_MS;
    while (cm_clock_mono_ms () < until) {
        for (size_t i = 0; i < count; i++) {
            cm_msg_t *msg = s_daemon_recv (daemons[i], 2);
            if (msg) {
                cr_assert_eq (cm_msg_type (msg), CM_MSG_REQUEST, "%s: got %s",
                              daemons[i]->id, cm_msg_type_name (cm_msg_type (msg)));
                *which = i;
                return msg;
            }
        }
    }
    cr_assert_fail ("no REQUEST reached any daemon within %d ms", S_WAIT_MS);
    return NULL;
}

//  --- tests -----------------------------------------------------------------

Test (gw_server, walkthrough_forward_a_chat_to_a_daemon)
{
    //  A gateway, and one chat daemon that registers with it.
    s_gateway_t gateway;
    s_gateway_start (&gateway, S_TIMEOUT_MS, 1 << 20);
    s_daemon_t *chatd = s_daemon_new (&gateway, "chat", "chat-1", 4);
    s_wait_health (&gateway, "services.chat.instances", 1);

    //  A client asks for a chat turn; the call waits on its own thread.
    s_call_t *call = s_call_new (&gateway, "POST", "/api/v1/workspace/demo/chat", S_KEY,
                                 "{\"message\":\"hello\"}");
    s_call_start (call);

    //  The daemon gets it as a REQUEST and answers with one FINAL.
    cm_msg_t *request = s_daemon_expect (chatd, CM_MSG_REQUEST);
    cr_assert_str_eq (cm_msg_route (request), "/api/v1/workspace/demo/chat");
    s_daemon_reply (chatd, CM_MSG_FINAL, cm_msg_request_id (request), 200,
                    "application/json", "{\"textResponse\":\"hi there\"}");
    cm_msg_destroy (&request);

    //  The client has the daemon's answer.
    s_call_join (call);
    cr_assert_eq (call->code, CURLE_OK);
    cr_assert_eq (call->status, 200);
    cr_assert_str_eq (call->reply, "{\"textResponse\":\"hi there\"}");
    s_call_destroy (&call);

    s_daemon_destroy (&chatd);
    s_gateway_stop (&gateway);
}

Test (gw_server, operational_routes_need_no_key)
{
    s_gateway_t gateway;
    s_gateway_start (&gateway, S_TIMEOUT_MS, 1 << 20);

    s_call_t *call = s_http (&gateway, "GET", "/api/ping", NULL, NULL);
    cr_assert_eq (call->status, 200);
    cr_assert_str_eq (call->reply, "{\"online\":true}");
    s_call_destroy (&call);

    call = s_http (&gateway, "GET", "/api/health/live", NULL, NULL);
    cr_assert_eq (call->status, 200);
    json_t *json = s_call_json (call);
    cr_assert_str_eq (json_string_value (json_object_get (json, "status")), "ok");
    cr_assert_eq (json_integer_value (json_object_get (json, "pid")), getpid (),
                  "the gateway runs in this process");
    json_decref (json);
    s_call_destroy (&call);

    //  No daemon yet: health answers, but says why it is not ready.
    call = s_http (&gateway, "GET", "/api/health", NULL, NULL);
    cr_assert_eq (call->status, 503);
    cr_assert_str_eq (s_call_header (call, "Retry-After"), "1");
    json = s_call_json (call);
    cr_assert_str_eq (json_string_value (json_object_get (json, "status")), "unready");
    //  One reason per missing daemon, each named as users know it (the
    //  database check may not have run yet: that is a reason too).
    char *reasons = json_dumps (json_object_get (json, "reasons"), 0);
    cr_assert (strstr (reasons, "no chatd instance"), "%s", reasons);
    cr_assert (strstr (reasons, "no ingestd instance"), "%s", reasons);
    cr_assert (strstr (reasons, "no agentd instance"), "%s", reasons);
    free (reasons);
    cr_assert (json_is_object (json_object_get (json, "broker")));
    cr_assert (json_is_integer (
        json_object_get (json_object_get (json, "broker"), "dropped_frames")));
    json_decref (json);
    s_call_destroy (&call);

    call = s_http (&gateway, "GET", "/api/health/ready", NULL, NULL);
    cr_assert_eq (call->status, 503);
    json = s_call_json (call);
    cr_assert_str_eq (json_string_value (json_object_get (json, "status")), "unready");
    json_decref (json);
    s_call_destroy (&call);

    //  /api/v1/auth is answered by the gateway too, but needs the key.
    call = s_http (&gateway, "GET", "/api/v1/auth", S_KEY, NULL);
    cr_assert_eq (call->status, 200);
    cr_assert_str_eq (call->reply, "{\"authenticated\":true}");
    s_call_destroy (&call);

    s_gateway_stop (&gateway);
}

Test (gw_server, health_answers_from_the_first_moment)
{
    //  A probe that comes before the broker has settled (a supervisor or
    //  an orchestrator polling from start-up) gets the whole report.
    for (int round = 0; round < 20; round++) {
        s_gateway_t gateway;
        s_gateway_start (&gateway, S_TIMEOUT_MS, 1 << 20);
        s_call_t *call = s_http (&gateway, "GET", "/api/health", NULL, NULL);
        cr_assert_eq (call->code, CURLE_OK, "round %d: %s", round,
                      curl_easy_strerror (call->code));
        cr_assert_eq (call->status, 503);
        json_t *json = s_call_json (call);
        cr_assert (json_is_array (json_object_get (json, "instances")), "%s",
                   call->reply);
        cr_assert (json_is_object (json_object_get (json, "broker")), "%s", call->reply);
        json_decref (json);
        s_call_destroy (&call);
        s_gateway_stop (&gateway);
    }
}

Test (gw_server, ready_once_every_service_has_an_instance)
{
    s_gateway_t gateway;
    s_gateway_start (&gateway, S_TIMEOUT_MS, 1 << 20);
    s_daemon_t *chatd = s_daemon_new (&gateway, "chat", "chat-1", 4);
    s_daemon_t *ingestd = s_daemon_new (&gateway, "ingest", "ingest-1", 3);
    s_daemon_t *agentd = s_daemon_new (&gateway, "agent", "agent-1", 2);
    s_wait_health (&gateway, "services.agent.instances", 1);
    s_wait_health (&gateway, "services.ingest.instances", 1);
    s_wait_health (&gateway, "services.chat.instances", 1);

    //  The database check runs on the health thread: poll until it has.
    s_call_t *call = NULL;
    for (int64_t until = cm_clock_mono_ms () + S_WAIT_MS; cm_clock_mono_ms () < until;) {
        s_call_destroy (&call);
        call = s_http (&gateway, "GET", "/api/health/ready", NULL, NULL);
        if (call->status == 200)
            break;
        s_sleep_ms (20);
    }
    cr_assert_eq (call->status, 200, "%s", call->reply);
    json_t *json = s_call_json (call);
    cr_assert_str_eq (json_string_value (json_object_get (json, "status")), "ready");
    cr_assert_eq (json_array_size (json_object_get (json, "reasons")), 0);
    json_decref (json);
    s_call_destroy (&call);

    s_daemon_destroy (&agentd);
    s_daemon_destroy (&ingestd);
    s_daemon_destroy (&chatd);
    s_gateway_stop (&gateway);
}

Test (gw_server, api_routes_refuse_a_missing_or_wrong_key)
{
    s_gateway_t gateway;
    s_gateway_start (&gateway, S_TIMEOUT_MS, 1 << 20);
    const char *keys[] = {NULL, "wrong-key", S_KEY "x", ""};
    for (size_t i = 0; i < sizeof keys / sizeof *keys; i++) {
        s_call_t *call = s_http (&gateway, "GET", "/api/v1/workspaces", keys[i], NULL);
        s_assert_error (call, 403, "No valid api key found.");
        cr_assert_str_eq (call->reply, "{\"error\":\"No valid api key found.\"}");
        s_call_destroy (&call);
    }
    //  Also for a POST with a body, and for a local route that needs a key.
    s_call_t *call = s_http (&gateway, "POST", "/api/v1/workspace/demo/chat", "nope",
                             "{\"message\":\"x\"}");
    cr_assert_str_eq (call->reply, "{\"error\":\"No valid api key found.\"}");
    cr_assert_eq (call->status, 403);
    s_call_destroy (&call);
    call = s_http (&gateway, "GET", "/api/v1/auth", NULL, NULL);
    cr_assert_eq (call->status, 403);
    s_call_destroy (&call);
    //  The key must come as a bearer token.
    call = s_call_new (&gateway, "GET", "/api/v1/auth", NULL, NULL);
    call->extra[0] = "Authorization: Basic " S_KEY;
    s_call_run (call);
    cr_assert_eq (call->status, 403);
    s_call_destroy (&call);
    s_gateway_stop (&gateway);
}

Test (gw_server, unknown_route_is_404_json)
{
    s_gateway_t gateway;
    s_gateway_start (&gateway, S_TIMEOUT_MS, 1 << 20);
    s_call_t *call = s_http (&gateway, "GET", "/api/v1/nothing-here", S_KEY, NULL);
    s_assert_error (call, 404, "Not found.");
    s_call_destroy (&call);
    call = s_http (&gateway, "POST", "/nowhere?x=1", NULL, "{}");
    s_assert_error (call, 404, "Not found.");
    s_call_destroy (&call);
    s_gateway_stop (&gateway);
}

Test (gw_server, wrong_method_is_405_with_allow)
{
    s_gateway_t gateway;
    s_gateway_start (&gateway, S_TIMEOUT_MS, 1 << 20);
    s_call_t *call = s_http (&gateway, "DELETE", "/api/ping", NULL, NULL);
    s_assert_error (call, 405, "Method not allowed.");
    cr_assert_str_eq (s_call_header (call, "Allow"), "GET");
    s_call_destroy (&call);
    call = s_http (&gateway, "GET", "/api/v1/workspace/demo/stream-chat", S_KEY, NULL);
    s_assert_error (call, 405, "Method not allowed.");
    cr_assert_str_eq (s_call_header (call, "Allow"), "POST");
    s_call_destroy (&call);
    call = s_http (&gateway, "PUT", "/api/v1/workspace/new", S_KEY, "{}");
    s_assert_error (call, 405, "Method not allowed.");
    cr_assert_str_eq (s_call_header (call, "Allow"), "POST, GET");
    s_call_destroy (&call);
    s_gateway_stop (&gateway);
}

Test (gw_server, bad_json_body_is_400_naming_the_problem)
{
    s_gateway_t gateway;
    s_gateway_start (&gateway, S_TIMEOUT_MS, 1 << 20);
    //  Checked before routing: no daemon is needed to refuse it.
    s_call_t *call =
        s_http (&gateway, "POST", "/api/v1/workspace/new", S_KEY, "{\"name\": ");
    s_assert_error (call, 400, NULL);
    json_t *json = s_call_json (call);
    const char *error = json_string_value (json_object_get (json, "error"));
    cr_assert (strstr (error, "Invalid JSON body") && strstr (error, "line 1"), "%s",
               error);
    json_decref (json);
    s_call_destroy (&call);

    call = s_http (&gateway, "POST", "/api/v1/workspace/new", S_KEY, "[1, 2]");
    s_assert_error (call, 400, "Invalid JSON body: expected an object.");
    s_call_destroy (&call);

    //  On chat routes, in the abort shape chatd answers its own errors in
    //  before any output (API.md), still naming the problem.
    const char *chats[] = {
        "/api/v1/workspace/demo/chat", "/api/v1/workspace/demo/stream-chat",
        "/api/v1/workspace/demo/thread/t/chat",
        "/api/v1/workspace/demo/thread/t/stream-chat", "/api/v1/openai/chat/completions"};
    for (size_t i = 0; i < sizeof chats / sizeof *chats; i++) {
        const char *bodies[] = {"{\"message\": ", "[1, 2]"};
        for (size_t b = 0; b < 2; b++) {
            call = s_http (&gateway, "POST", chats[i], S_KEY, bodies[b]);
            cr_assert_eq (call->status, 400, "%s: %ld", chats[i], call->status);
            json = s_call_json (call);
            cr_assert_eq (json_object_size (json), 6, "%s", call->reply);
            cr_assert_eq (strlen (json_string_value (json_object_get (json, "id"))), 36);
            cr_assert_str_eq (json_string_value (json_object_get (json, "type")),
                              "abort");
            cr_assert (json_is_null (json_object_get (json, "textResponse")));
            cr_assert_eq (json_array_size (json_object_get (json, "sources")), 0);
            cr_assert (json_is_true (json_object_get (json, "close")));
            error = json_string_value (json_object_get (json, "error"));
            cr_assert (b ? !strcmp (error, "Invalid JSON body: expected an object.")
                         : strstr (error, "Invalid JSON body") != NULL,
                       "%s", error);
            json_decref (json);
            s_call_destroy (&call);
        }
    }
    s_gateway_stop (&gateway);
}

//  A body of n bytes that is a JSON object: {"p":"aaa...a"}.
static char *
s_json_body (size_t n)
{
    cr_assert_geq (n, 8);
    char *body = malloc (n + 1);
    memcpy (body, "{\"p\":\"", 6);
    memset (body + 6, 'a', n - 8);
    memcpy (body + n - 2, "\"}", 3);
    return body;
}

Test (gw_server, body_over_max_is_413)
{
    s_gateway_t gateway;
    s_gateway_start (&gateway, S_TIMEOUT_MS, 1000);
    char *big = s_json_body (4000);

    //  Announced by Content-Length: refused without reading it.
    s_call_t *call = s_http (&gateway, "POST", "/api/v1/workspace/new", S_KEY, big);
    s_assert_error (call, 413, "Request body is larger than 1000 bytes.");
    s_call_destroy (&call);

    //  Chunked: refused once it has grown past the limit.
    call = s_call_new (&gateway, "POST", "/api/v1/workspace/new", S_KEY, big);
    call->chunked = true;
    s_call_run (call);
    s_assert_error (call, 413, "Request body is larger than 1000 bytes.");
    s_call_destroy (&call);

    //  Exactly the limit is accepted (and then finds no chat instance).
    char *fits = s_json_body (1000);
    call = s_http (&gateway, "POST", "/api/v1/workspace/new", S_KEY, fits);
    s_assert_error (call, 503, NULL);
    s_call_destroy (&call);
    call = s_call_new (&gateway, "POST", "/api/v1/workspace/new", S_KEY, fits);
    call->chunked = true;
    s_call_run (call);
    s_assert_error (call, 503, NULL);
    s_call_destroy (&call);
    free (fits);
    free (big);
    s_gateway_stop (&gateway);
}

Test (gw_server, no_instance_is_503_json)
{
    s_gateway_t gateway;
    s_gateway_start (&gateway, S_TIMEOUT_MS, 1 << 20);
    s_call_t *call = s_http (&gateway, "POST", "/api/v1/workspace/demo/chat", S_KEY,
                             "{\"message\":\"hi\"}");
    s_assert_error (call, 503, "No chat service instance is available.");
    cr_assert_str_eq (s_call_header (call, "Retry-After"), "1");
    s_call_destroy (&call);
    s_wait_health (&gateway, "broker.no_instance", 1);

    //  An instance of another service does not help.
    s_daemon_t *ingestd = s_daemon_new (&gateway, "ingest", "ingest-1", 3);
    s_wait_health (&gateway, "services.ingest.instances", 1);
    call = s_http (&gateway, "GET", "/api/v1/workspaces", S_KEY, NULL);
    s_assert_error (call, 503, "No chat service instance is available.");
    s_call_destroy (&call);
    s_daemon_destroy (&ingestd);
    s_gateway_stop (&gateway);
}

Test (gw_server, request_reaches_the_daemon_and_its_reply_the_client)
{
    s_gateway_t gateway;
    s_gateway_start (&gateway, S_TIMEOUT_MS, 1 << 20);
    s_daemon_t *chatd = s_daemon_new (&gateway, "chat", "chat-1", 4);
    s_wait_health (&gateway, "services.chat.instances", 1);

    const char *body = "{\"message\":\"caf\xc3\xa9 \\u00e9\",\"mode\":\"query\"}";
    s_call_t *call = s_call_new (
        &gateway, "POST", "/api/v1/workspace/demo/chat?mode=query&x=%2F", S_KEY, body);
    call->extra[0] = "Accept: application/json";
    call->extra[1] = "User-Agent: gw-test/1.0";
    call->extra[2] = "X-Not-Forwarded: secret";
    int64_t before = cm_clock_wall_ms ();
    s_call_start (call);

    cm_msg_t *request = s_daemon_expect (chatd, CM_MSG_REQUEST);
    int64_t after = cm_clock_wall_ms ();
    cr_assert_neq (*cm_msg_request_id (request), 0);
    cr_assert_str_eq (cm_msg_service (request), "chat");
    cr_assert_str_eq (cm_msg_method (request), "POST");
    cr_assert_str_eq (cm_msg_route (request),
                      "/api/v1/workspace/demo/chat?mode=query&x=%2F");
    cr_assert_str_eq (cm_msg_identity (request), "admin");
    cr_assert_str_eq (cm_msg_header (request, "Content-Type"), "application/json");
    cr_assert_str_eq (cm_msg_header (request, "Accept"), "application/json");
    cr_assert_str_eq (cm_msg_header (request, "User-Agent"), "gw-test/1.0");
    cr_assert_null (cm_msg_header (request, "X-Not-Forwarded"));
    cr_assert_null (cm_msg_header (request, "Authorization"),
                    "the key stays at the gateway");
    size_t size;
    const char *received = cm_msg_body (request, &size);
    cr_assert_eq (size, strlen (body));
    cr_assert_eq (memcmp (received, body, size), 0);
    //  The deadline is the request timeout from when it was forwarded.
    cr_assert_geq (cm_msg_deadline (request), before + S_TIMEOUT_MS);
    cr_assert_leq (cm_msg_deadline (request), after + S_TIMEOUT_MS);

    //  Whatever the daemon says comes back as it is.
    cm_msg_t *reply = cm_msg_new (CM_MSG_FINAL);
    cm_msg_set_request_id (reply, cm_msg_request_id (request));
    cm_msg_set_status (reply, 429);
    cm_msg_set_content_type (reply, "application/json; charset=utf-8");
    cm_msg_header_add (reply, "Retry-After", "7");
    cm_msg_header_add (reply, "X-Queue", "chat");
    const char *answer = "{\"error\":\"The chat queue is full.\",\"n\":\"\xc3\xa9\"}";
    cm_msg_set_body (reply, answer, strlen (answer));
    s_daemon_send (chatd, &reply);

    s_call_join (call);
    cr_assert_eq (call->code, CURLE_OK);
    cr_assert_eq (call->status, 429);
    cr_assert_str_eq (s_call_header (call, "Content-Type"),
                      "application/json; charset=utf-8");
    cr_assert_str_eq (s_call_header (call, "Retry-After"), "7");
    cr_assert_str_eq (s_call_header (call, "X-Queue"), "chat");
    cr_assert_str_eq (s_call_header (call, "X-Request-Id"), cm_msg_request_id (request));
    cr_assert_eq (call->reply_size, strlen (answer));
    cr_assert_str_eq (call->reply, answer);
    s_call_destroy (&call);
    cm_msg_destroy (&request);
    s_wait_health (&gateway, "broker.replies", 1);
    s_wait_health (&gateway, "broker.in_flight", 0);

    s_daemon_destroy (&chatd);
    s_gateway_stop (&gateway);
}

Test (gw_server, empty_json_body_is_sent_as_an_empty_object)
{
    s_gateway_t gateway;
    s_gateway_start (&gateway, S_TIMEOUT_MS, 1 << 20);
    s_daemon_t *chatd = s_daemon_new (&gateway, "chat", "chat-1", 4);
    s_wait_health (&gateway, "services.chat.instances", 1);
    s_call_t *call = s_call_new (&gateway, "POST", "/api/v1/workspace/new", S_KEY, "");
    s_call_start (call);
    cm_msg_t *request = s_daemon_expect (chatd, CM_MSG_REQUEST);
    size_t size;
    const char *body = cm_msg_body (request, &size);
    cr_assert_eq (size, 2);
    cr_assert_eq (memcmp (body, "{}", 2), 0);
    s_daemon_reply (chatd, CM_MSG_FINAL, cm_msg_request_id (request), 200,
                    "application/json", "{}");
    cm_msg_destroy (&request);
    s_call_join (call);
    cr_assert_eq (call->status, 200);
    s_call_destroy (&call);
    s_daemon_destroy (&chatd);
    s_gateway_stop (&gateway);
}

Test (gw_server, stream_chunks_reach_the_client_as_they_are_sent)
{
    s_gateway_t gateway;
    s_gateway_start (&gateway, S_TIMEOUT_MS, 1 << 20);
    s_daemon_t *chatd = s_daemon_new (&gateway, "chat", "chat-1", 4);
    s_wait_health (&gateway, "services.chat.instances", 1);

    s_call_t *call = s_call_new (&gateway, "POST", "/api/v1/workspace/demo/stream-chat",
                                 S_KEY, "{\"message\":\"tell me\"}");
    call->extra[0] = "Accept: text/event-stream";
    s_call_start (call);
    cm_msg_t *request = s_daemon_expect (chatd, CM_MSG_REQUEST);
    const char *id = cm_msg_request_id (request);

    //  Each chunk is at the client before the daemon sends the next one:
    //  nothing is held back until the end.
    const char *chunks[] = {"data: {\"n\":1}\n\n", "data: {\"n\":2}\n\n"};
    for (size_t i = 0; i < 2; i++) {
        s_daemon_reply (chatd, CM_MSG_PARTIAL, id, 200, "text/event-stream", chunks[i]);
        cr_assert (s_call_wait_for (call, chunks[i]),
                   "chunk %zu did not reach the client", i);
        cr_assert (!atomic_load (&call->done), "the stream is still open");
    }
    s_daemon_reply (chatd, CM_MSG_FINAL, id, 200, "text/event-stream",
                    "data: {\"n\":3,\"close\":true}\n\n");
    s_call_join (call);
    cr_assert_eq (call->code, CURLE_OK);
    cr_assert_eq (call->status, 200);
    cr_assert_str_eq (s_call_header (call, "Content-Type"), "text/event-stream");
    cr_assert_str_eq (s_call_header (call, "Cache-Control"), "no-cache");
    cr_assert_str_eq (call->reply, "data: {\"n\":1}\n\n"
                                   "data: {\"n\":2}\n\n"
                                   "data: {\"n\":3,\"close\":true}\n\n");
    s_call_destroy (&call);
    cm_msg_destroy (&request);
    s_wait_health (&gateway, "broker.in_flight", 0);
    s_daemon_destroy (&chatd);
    s_gateway_stop (&gateway);
}

Test (gw_server, no_answer_within_the_timeout_is_504_and_cancel)
{
    s_gateway_t gateway;
    s_gateway_start (&gateway, 500, 1 << 20);
    s_daemon_t *chatd = s_daemon_new (&gateway, "chat", "chat-1", 4);
    s_wait_health (&gateway, "services.chat.instances", 1);

    s_call_t *call = s_call_new (&gateway, "POST", "/api/v1/workspace/demo/chat", S_KEY,
                                 "{\"message\":\"?\"}");
    s_call_start (call);
    cm_msg_t *request = s_daemon_expect (chatd, CM_MSG_REQUEST);
    //  The daemon says nothing; the client gets 504 and the daemon a CANCEL.
    s_call_join (call);
    s_assert_error (call, 504, "The request timed out.");
    s_call_destroy (&call);
    cm_msg_t *cancel = s_daemon_expect (chatd, CM_MSG_CANCEL);
    cr_assert_str_eq (cm_msg_request_id (cancel), cm_msg_request_id (request));
    cr_assert_str_eq (cm_msg_reason (cancel), "deadline");
    cm_msg_destroy (&cancel);
    s_wait_health (&gateway, "broker.timeouts", 1);

    //  An answer that comes too late is counted, not delivered anywhere.
    s_daemon_reply (chatd, CM_MSG_FINAL, cm_msg_request_id (request), 200,
                    "application/json", "{}");
    s_wait_health (&gateway, "broker.late_replies", 1);
    s_wait_health (&gateway, "broker.in_flight", 0);
    cm_msg_destroy (&request);
    s_daemon_destroy (&chatd);
    s_gateway_stop (&gateway);
}

Test (gw_server, client_leaving_mid_stream_cancels_at_the_daemon)
{
    s_gateway_t gateway;
    s_gateway_start (&gateway, S_TIMEOUT_MS, 1 << 20);
    s_daemon_t *chatd = s_daemon_new (&gateway, "chat", "chat-1", 4);
    s_wait_health (&gateway, "services.chat.instances", 1);

    s_call_t *call = s_call_new (&gateway, "POST", "/api/v1/workspace/demo/stream-chat",
                                 S_KEY, "{\"message\":\"long story\"}");
    call->hang_up = true;
    s_call_start (call);
    cm_msg_t *request = s_daemon_expect (chatd, CM_MSG_REQUEST);
    const char *id = cm_msg_request_id (request);
    s_daemon_reply (chatd, CM_MSG_PARTIAL, id, 200, "text/event-stream",
                    "data: {\"n\":0}\n\n");
    //  The client hangs up on the first chunk.
    s_call_join (call);
    cr_assert_eq (call->code, CURLE_WRITE_ERROR, "%s", curl_easy_strerror (call->code));
    s_call_destroy (&call);

    //  The daemon goes on streaming tokens, as an LLM would, until the
    //  CANCEL comes: a suspended connection is noticed gone when the
    //  gateway next writes to it.
    cm_msg_t *cancel = NULL;
    int64_t until = cm_clock_mono_ms () + S_WAIT_MS;
    for (int n = 1; !cancel && cm_clock_mono_ms () < until; n++) {
        char chunk[64];
        snprintf (chunk, sizeof chunk, "data: {\"n\":%d}\n\n", n);
        s_daemon_reply (chatd, CM_MSG_PARTIAL, id, 200, "text/event-stream", chunk);
        cancel = s_daemon_recv (chatd, 20);
    }
    cr_assert_not_null (cancel, "no CANCEL after the client left");
    cr_assert_eq (cm_msg_type (cancel), CM_MSG_CANCEL);
    cr_assert_str_eq (cm_msg_request_id (cancel), id);
    cr_assert_str_eq (cm_msg_reason (cancel), "client disconnected");
    cm_msg_destroy (&cancel);
    s_wait_health (&gateway, "broker.in_flight", 0);
    cm_msg_destroy (&request);
    s_daemon_destroy (&chatd);
    s_gateway_stop (&gateway);
}

//  The client gives up while the daemon is silent: the connection is
//  suspended (MHD does not watch it), yet the CANCEL must still come, at
//  once and without the daemon writing anything.
Test (gw_server, client_leaving_a_silent_request_cancels_at_the_daemon)
{
    s_gateway_t gateway;
    s_gateway_start (&gateway, S_TIMEOUT_MS, 1 << 20);
    s_daemon_t *chatd = s_daemon_new (&gateway, "chat", "chat-1", 4);
    s_wait_health (&gateway, "services.chat.instances", 1);

    //  A non-streamed request: the client gives up after 300 ms.
    s_call_t *call = s_call_new (&gateway, "POST", "/api/v1/workspace/demo/chat", S_KEY,
                                 "{\"message\":\"slow\"}");
    call->timeout_ms = 300;
    s_call_start (call);
    cm_msg_t *request = s_daemon_expect (chatd, CM_MSG_REQUEST);
    s_call_join (call);
    cr_assert_eq (call->code, CURLE_OPERATION_TIMEDOUT, "%s",
                  curl_easy_strerror (call->code));
    int64_t left = cm_clock_mono_ms ();
    cm_msg_t *cancel = s_daemon_expect (chatd, CM_MSG_CANCEL);
    cr_assert_str_eq (cm_msg_request_id (cancel), cm_msg_request_id (request));
    cr_log_info ("CANCEL reached the daemon %lld ms after the client left",
                 (long long) (cm_clock_mono_ms () - left));
    cm_msg_destroy (&cancel);
    cm_msg_destroy (&request);
    s_call_destroy (&call);

    //  A stream whose daemon pauses between tokens: the client hangs up on
    //  the first chunk and the daemon writes nothing more.
    call = s_call_new (&gateway, "POST", "/api/v1/workspace/demo/stream-chat", S_KEY,
                       "{\"message\":\"slow\"}");
    call->hang_up = true;
    s_call_start (call);
    request = s_daemon_expect (chatd, CM_MSG_REQUEST);
    s_daemon_reply (chatd, CM_MSG_PARTIAL, cm_msg_request_id (request), 200,
                    "text/event-stream", "data: {\"n\":0}\n\n");
    s_call_join (call);
    cancel = s_daemon_expect (chatd, CM_MSG_CANCEL);
    cr_assert_str_eq (cm_msg_request_id (cancel), cm_msg_request_id (request));
    cm_msg_destroy (&cancel);
    cm_msg_destroy (&request);
    s_call_destroy (&call);
    s_wait_health (&gateway, "broker.in_flight", 0);
    cr_assert_geq (s_health_number (&gateway, "broker.client_gone"), 1);
    s_daemon_destroy (&chatd);
    s_gateway_stop (&gateway);
}

Test (gw_server, silent_instance_expires_and_its_requests_are_answered)
{
    s_gateway_t gateway;
    s_gateway_start (&gateway, S_TIMEOUT_MS, 1 << 20);
    s_daemon_t *chatd = s_daemon_new (&gateway, "chat", "chat-1", 4);
    s_wait_health (&gateway, "services.chat.instances", 1);

    //  One plain request and one stream in flight at the same instance.
    s_call_t *plain =
        s_call_new (&gateway, "POST", "/api/v1/workspace/new", S_KEY, "{\"name\":\"w\"}");
    s_call_start (plain);
    cm_msg_t *first = s_daemon_expect (chatd, CM_MSG_REQUEST);
    s_call_t *stream = s_call_new (&gateway, "POST", "/api/v1/workspace/demo/stream-chat",
                                   S_KEY, "{\"message\":\"hi\"}");
    s_call_start (stream);
    cm_msg_t *second = s_daemon_expect (chatd, CM_MSG_REQUEST);
    cr_assert_str_eq (cm_msg_route (second), "/api/v1/workspace/demo/stream-chat");
    s_daemon_reply (chatd, CM_MSG_PARTIAL, cm_msg_request_id (second), 200,
                    "text/event-stream", "data: {\"n\":1}\n\n");
    cr_assert (s_call_wait_for (stream, "data: {\"n\":1}\n\n"));

    //  The daemon hangs: no more heartbeats.
    s_daemon_mute (chatd);
    s_call_join (plain);
    s_assert_error (plain, 502, NULL);
    json_t *json = s_call_json (plain);
    const char *error = json_string_value (json_object_get (json, "error"));
    cr_assert (strstr (error, "chat-1") && strstr (error, "missed its heartbeats"), "%s",
               error);
    json_decref (json);

    //  The stream ends with an abort event after what it had.
    s_call_join (stream);
    cr_assert_eq (stream->code, CURLE_OK);
    cr_assert_eq (stream->status, 200);
    const char *prefix = "data: {\"n\":1}\n\ndata: ";
    cr_assert_eq (strncmp (stream->reply, prefix, strlen (prefix)), 0, "%s",
                  stream->reply);
    const char *event = stream->reply + strlen (prefix);
    size_t length = strlen (event);
    cr_assert (length > 2 && !strcmp (event + length - 2, "\n\n"), "%s", stream->reply);
    json_error_t parse;
    json = json_loadb (event, length - 2, 0, &parse);
    cr_assert_not_null (json, "abort event is not JSON: %s", event);
    cr_assert_str_eq (json_string_value (json_object_get (json, "type")), "abort");
    cr_assert_str_eq (json_string_value (json_object_get (json, "uuid")),
                      cm_msg_request_id (second));
    cr_assert (json_is_true (json_object_get (json, "close")));
    cr_assert (json_is_string (json_object_get (json, "error")));
    json_decref (json);

    s_wait_health (&gateway, "broker.expired_instances", 1);
    s_wait_health (&gateway, "services.chat.instances", 0);
    s_wait_health (&gateway, "broker.in_flight", 0);
    s_call_destroy (&plain);
    s_call_destroy (&stream);
    cm_msg_destroy (&first);
    cm_msg_destroy (&second);
    s_daemon_destroy (&chatd);
    s_gateway_stop (&gateway);
}

Test (gw_server, requests_go_to_the_instance_with_most_free_credit)
{
    s_gateway_t gateway;
    s_gateway_start (&gateway, S_TIMEOUT_MS, 1 << 20);
    s_daemon_t *daemons[2] = {s_daemon_new (&gateway, "chat", "chat-small", 1),
                              s_daemon_new (&gateway, "chat", "chat-big", 4)};
    s_wait_health (&gateway, "services.chat.instances", 2);

    //  Five requests, each sent once the one before has reached a daemon,
    //  none answered yet.
    s_call_t *calls[5];
    cm_msg_t *requests[5];
    size_t where[5];
    for (size_t i = 0; i < 5; i++) {
        calls[i] = s_call_new (&gateway, "POST", "/api/v1/workspace/demo/chat", S_KEY,
                               "{\"message\":\"hi\"}");
        s_call_start (calls[i]);
        requests[i] = s_daemons_expect_request (daemons, 2, &where[i]);
    }
    //  Free credit: big 4 / small 1, then 3/1, 2/1: the big one each time.
    for (size_t i = 0; i < 3; i++)
        cr_assert_eq (where[i], 1, "request %zu went to %s", i, daemons[where[i]]->id);
    //  Then 1/1 (a tie) and the other one: each gets what it can hold.
    size_t big = 0;
    for (size_t i = 0; i < 5; i++)
        big += where[i] == 1;
    cr_assert_eq (big, 4, "the big instance got %zu of 5", big);

    for (size_t i = 0; i < 5; i++) {
        char answer[64];
        snprintf (answer, sizeof answer, "{\"from\":\"%s\"}", daemons[where[i]]->id);
        s_daemon_reply (daemons[where[i]], CM_MSG_FINAL, cm_msg_request_id (requests[i]),
                        200, "application/json", answer);
    }
    for (size_t i = 0; i < 5; i++) {
        s_call_join (calls[i]);
        cr_assert_eq (calls[i]->status, 200);
        cr_assert (strstr (calls[i]->reply, daemons[where[i]]->id), "%s",
                   calls[i]->reply);
        s_call_destroy (&calls[i]);
        cm_msg_destroy (&requests[i]);
    }
    s_wait_health (&gateway, "broker.in_flight", 0);

    //  Credit comes back with each FINAL: with both idle again, the big
    //  one is first once more.
    s_call_t *busy =
        s_call_new (&gateway, "POST", "/api/v1/workspace/demo/chat", S_KEY, "{}");
    s_call_start (busy);
    size_t at;
    cm_msg_t *held = s_daemons_expect_request (daemons, 2, &at);
    cr_assert_eq (at, 1, "an idle big instance comes first");
    cm_msg_t *more[3];
    s_call_t *others[3];
    for (size_t i = 0; i < 3; i++) {
        others[i] =
            s_call_new (&gateway, "POST", "/api/v1/workspace/demo/chat", S_KEY, "{}");
        s_call_start (others[i]);
        more[i] = s_daemons_expect_request (daemons, 2, &where[i]);
    }
    //  Big free 3, 2, 1 against small 1: big, big, then either.
    cr_assert_eq (where[0], 1);
    cr_assert_eq (where[1], 1);
    s_daemon_reply (daemons[at], CM_MSG_FINAL, cm_msg_request_id (held), 200,
                    "application/json", "{}");
    for (size_t i = 0; i < 3; i++)
        s_daemon_reply (daemons[where[i]], CM_MSG_FINAL, cm_msg_request_id (more[i]), 200,
                        "application/json", "{}");
    s_call_join (busy);
    cr_assert_eq (busy->status, 200);
    s_call_destroy (&busy);
    cm_msg_destroy (&held);
    for (size_t i = 0; i < 3; i++) {
        s_call_join (others[i]);
        cr_assert_eq (others[i]->status, 200);
        s_call_destroy (&others[i]);
        cm_msg_destroy (&more[i]);
    }
    s_daemon_destroy (&daemons[0]);
    s_daemon_destroy (&daemons[1]);
    s_gateway_stop (&gateway);
}

Test (gw_server, one_busy_instance_sends_the_next_request_to_the_other)
{
    s_gateway_t gateway;
    s_gateway_start (&gateway, S_TIMEOUT_MS, 1 << 20);
    s_daemon_t *daemons[2] = {s_daemon_new (&gateway, "chat", "chat-a", 2),
                              s_daemon_new (&gateway, "chat", "chat-b", 2)};
    s_wait_health (&gateway, "services.chat.instances", 2);
    s_call_t *first = s_call_new (&gateway, "GET", "/api/v1/workspaces", S_KEY, NULL);
    s_call_start (first);
    size_t one, two;
    cm_msg_t *a = s_daemons_expect_request (daemons, 2, &one);
    s_call_t *second = s_call_new (&gateway, "GET", "/api/v1/workspaces", S_KEY, NULL);
    s_call_start (second);
    cm_msg_t *b = s_daemons_expect_request (daemons, 2, &two);
    cr_assert_neq (one, two, "both went to %s", daemons[one]->id);
    s_daemon_reply (daemons[one], CM_MSG_FINAL, cm_msg_request_id (a), 200,
                    "application/json", "[]");
    s_daemon_reply (daemons[two], CM_MSG_FINAL, cm_msg_request_id (b), 200,
                    "application/json", "[]");
    s_call_join (first);
    s_call_join (second);
    cr_assert_eq (first->status, 200);
    cr_assert_eq (second->status, 200);
    s_call_destroy (&first);
    s_call_destroy (&second);
    cm_msg_destroy (&a);
    cm_msg_destroy (&b);
    s_daemon_destroy (&daemons[0]);
    s_daemon_destroy (&daemons[1]);
    s_gateway_stop (&gateway);
}

//  A msgpack frame [version, HEARTBEAT, 4] of another protocol version.
static void
s_send_wrong_version (s_daemon_t *daemon)
{
    msgpack_sbuffer buffer;
    msgpack_sbuffer_init (&buffer);
    msgpack_packer packer;
    msgpack_packer_init (&packer, &buffer, msgpack_sbuffer_write);
    msgpack_pack_array (&packer, 3);
    msgpack_pack_int (&packer, CM_MSG_VERSION + 1);
    msgpack_pack_int (&packer, CM_MSG_HEARTBEAT);
    msgpack_pack_unsigned_int (&packer, 4);
    s_daemon_send_raw (daemon, buffer.data, buffer.size);
    msgpack_sbuffer_destroy (&buffer);
}

Test (gw_server, malformed_frames_are_counted_and_dropped)
{
    s_gateway_t gateway;
    s_gateway_start (&gateway, S_TIMEOUT_MS, 1 << 20);
    s_daemon_t *chatd = s_daemon_new (&gateway, "chat", "chat-1", 4);
    s_wait_health (&gateway, "services.chat.instances", 1);
    s_wait_health (&gateway, "broker.dropped_frames", 0);

    //  0xc1 is never used in msgpack.
    s_daemon_send_raw (chatd, "\xc1\xff garbage \x00\x01", 14);
    s_send_wrong_version (chatd);
    s_daemon_send_raw (chatd, "", 0);
    s_wait_health (&gateway, "broker.dropped_frames", 3);

    //  The gateway and the instance go on working.
    s_call_t *call = s_call_new (&gateway, "POST", "/api/v1/workspace/demo/chat", S_KEY,
                                 "{\"message\":\"?\"}");
    s_call_start (call);
    cm_msg_t *request = s_daemon_expect (chatd, CM_MSG_REQUEST);
    s_daemon_reply (chatd, CM_MSG_FINAL, cm_msg_request_id (request), 200,
                    "application/json", "{\"ok\":true}");
    s_call_join (call);
    cr_assert_eq (call->status, 200);
    cr_assert_str_eq (call->reply, "{\"ok\":true}");
    s_call_destroy (&call);
    cm_msg_destroy (&request);
    s_wait_health (&gateway, "services.chat.instances", 1);
    s_daemon_destroy (&chatd);
    s_gateway_stop (&gateway);
}

Test (gw_server, unknown_instance_is_told_to_register)
{
    s_gateway_t gateway;
    s_gateway_start (&gateway, S_TIMEOUT_MS, 1 << 20);
    //  An instance that heartbeats without READY (as after a gateway
    //  restart) gets DISCONNECT, and registers when it says READY.
    s_daemon_t *chatd = s_daemon_start (&gateway, "chat", "chat-1", 4, false);
    cm_msg_t *bye = s_daemon_expect (chatd, CM_MSG_DISCONNECT);
    cr_assert_str_eq (cm_msg_reason (bye), "unknown instance; send READY");
    cm_msg_destroy (&bye);
    s_wait_health (&gateway, "services.chat.instances", 0);

    cm_msg_t *ready = cm_msg_new (CM_MSG_READY);
    cm_msg_set_service (ready, "chat");
    cm_msg_set_instance (ready, "chat-1");
    cm_msg_set_capacity (ready, 4);
    s_daemon_send (chatd, &ready);
    s_wait_health (&gateway, "services.chat.instances", 1);
    s_daemon_destroy (&chatd);
    s_gateway_stop (&gateway);
}

Test (gw_server, gateway_heartbeats_its_instances)
{
    s_gateway_t gateway;
    s_gateway_start (&gateway, S_TIMEOUT_MS, 1 << 20);
    s_daemon_t *chatd = s_daemon_new (&gateway, "chat", "chat-1", 4);
    s_wait_health (&gateway, "services.chat.instances", 1);
    int64_t until = cm_clock_mono_ms () + S_WAIT_MS;
    while (atomic_load (&chatd->heartbeats) < 2 && cm_clock_mono_ms () < until)
        s_sleep_ms (10);
    cr_assert_geq (atomic_load (&chatd->heartbeats), 2);
    s_daemon_destroy (&chatd);
    s_gateway_stop (&gateway);
}

Test (gw_server, retryable_request_is_resent_when_its_instance_dies)
{
    s_gateway_t gateway;
    s_gateway_start (&gateway, S_TIMEOUT_MS, 1 << 20);
    s_daemon_t *daemons[2] = {s_daemon_new (&gateway, "chat", "chat-a", 2),
                              s_daemon_new (&gateway, "chat", "chat-b", 2)};
    s_wait_health (&gateway, "services.chat.instances", 2);

    const char *body = "{\"message\":\"again\"}";
    s_call_t *call =
        s_call_new (&gateway, "POST", "/api/v1/workspace/demo/chat?x=1", S_KEY, body);
    s_call_start (call);
    size_t dies;
    cm_msg_t *request = s_daemons_expect_request (daemons, 2, &dies);
    s_daemon_t *other = daemons[1 - dies];
    s_daemon_mute (daemons[dies]);

    //  Once the silent one expires, the same request goes to the other.
    cm_msg_t *again = s_daemon_expect (other, CM_MSG_REQUEST);
    cr_assert_str_eq (cm_msg_request_id (again), cm_msg_request_id (request));
    cr_assert_str_eq (cm_msg_route (again), "/api/v1/workspace/demo/chat?x=1");
    size_t size;
    const char *received = cm_msg_body (again, &size);
    cr_assert_eq (size, strlen (body));
    cr_assert_eq (memcmp (received, body, size), 0);
    s_daemon_reply (other, CM_MSG_FINAL, cm_msg_request_id (again), 200,
                    "application/json", "{\"textResponse\":\"second try\"}");
    s_call_join (call);
    cr_assert_eq (call->status, 200);
    cr_assert_str_eq (call->reply, "{\"textResponse\":\"second try\"}");
    s_wait_health (&gateway, "broker.retries", 1);
    s_wait_health (&gateway, "broker.expired_instances", 1);
    s_wait_health (&gateway, "broker.in_flight", 0);
    s_call_destroy (&call);
    cm_msg_destroy (&request);
    cm_msg_destroy (&again);
    s_daemon_destroy (&daemons[0]);
    s_daemon_destroy (&daemons[1]);
    s_gateway_stop (&gateway);
}

Test (gw_server, non_retryable_request_is_502_when_its_instance_dies)
{
    s_gateway_t gateway;
    s_gateway_start (&gateway, S_TIMEOUT_MS, 1 << 20);
    s_daemon_t *daemons[2] = {s_daemon_new (&gateway, "chat", "chat-a", 2),
                              s_daemon_new (&gateway, "chat", "chat-b", 2)};
    s_wait_health (&gateway, "services.chat.instances", 2);

    //  Creating a workspace twice would be wrong: no second try.
    s_call_t *call = s_call_new (&gateway, "POST", "/api/v1/workspace/new", S_KEY,
                                 "{\"name\":\"once\"}");
    s_call_start (call);
    size_t dies;
    cm_msg_t *request = s_daemons_expect_request (daemons, 2, &dies);
    s_daemon_mute (daemons[dies]);
    s_call_join (call);
    s_assert_error (call, 502, NULL);
    cr_assert_null (s_daemon_recv (daemons[1 - dies], 0), "nothing was resent");
    s_wait_health (&gateway, "broker.retries", 0);
    s_wait_health (&gateway, "services.chat.instances", 1);
    s_call_destroy (&call);
    cm_msg_destroy (&request);
    s_daemon_destroy (&daemons[0]);
    s_daemon_destroy (&daemons[1]);
    s_gateway_stop (&gateway);
}

Test (gw_server, retry_to_a_vanished_instance_is_answered_502)
{
    //  Instance A hangs with a retryable request; B is still registered but
    //  its socket is gone, so the retry cannot be sent there either. The
    //  client gets 502 and the gateway keeps running. Both id orders, since
    //  the broker walks its instances in hash order.
    const char *ids[2][2] = {{"chat-x", "chat-y"}, {"chat-y", "chat-x"}};
    for (size_t round = 0; round < 2; round++) {
        s_gateway_t gateway;
        s_gateway_start (&gateway, S_TIMEOUT_MS, 1 << 20);
        //  A has more credit, so it gets the request.
        s_daemon_t *a = s_daemon_new (&gateway, "chat", ids[round][0], 2);
        s_daemon_t *b = s_daemon_new (&gateway, "chat", ids[round][1], 1);
        s_wait_health (&gateway, "services.chat.instances", 2);
        s_call_t *call = s_call_new (&gateway, "POST", "/api/v1/workspace/demo/chat",
                                     S_KEY, "{\"message\":\"hi\"}");
        s_call_start (call);
        cm_msg_t *request = s_daemon_expect (a, CM_MSG_REQUEST);
        s_daemon_mute (a);
        //  Let A fall silent for a while, B not, then B's socket goes.
        int64_t until = cm_clock_mono_ms () + S_WAIT_MS;
        json_int_t silence = s_health_silence (&gateway, a->id);
        while (silence >= 0 && silence < S_HEARTBEAT_MS && cm_clock_mono_ms () < until) {
            s_sleep_ms (5);
            silence = s_health_silence (&gateway, a->id);
        }
        s_daemon_destroy (&b);
        s_call_join (call);
        s_assert_error (call, 502, NULL);
        s_wait_health (&gateway, "services.chat.instances", 0);
        s_call_destroy (&call);
        //  Still serving.
        call = s_http (&gateway, "GET", "/api/ping", NULL, NULL);
        cr_assert_eq (call->status, 200);
        s_call_destroy (&call);
        cm_msg_destroy (&request);
        s_daemon_destroy (&a);
        s_gateway_stop (&gateway);
    }
}

Test (gw_server, keep_alive_reuses_the_connection)
{
    s_gateway_t gateway;
    s_gateway_start (&gateway, S_TIMEOUT_MS, 1 << 20);
    s_daemon_t *chatd = s_daemon_new (&gateway, "chat", "chat-1", 4);
    s_wait_health (&gateway, "services.chat.instances", 1);
    CURL *curl = curl_easy_init ();

    //  Local answers, refusals, and forwarded requests alike.
    struct {
        const char *method, *path, *key, *body;
        long status;
        bool forwarded;
    } steps[] = {
        {"GET", "/api/ping", NULL, NULL, 200, false},
        {"GET", "/api/ping", NULL, NULL, 200, false},
        {"GET", "/api/v1/workspaces", NULL, NULL, 403, false},
        {"GET", "/api/nothing", NULL, NULL, 404, false},
        {"POST", "/api/v1/workspace/demo/chat", S_KEY, "{\"message\":\"1\"}", 200, true},
        {"POST", "/api/v1/workspace/demo/chat", S_KEY, "{\"message\":\"2\"}", 200, true},
        {"GET", "/api/health/live", NULL, NULL, 200, false},
    };
    for (size_t i = 0; i < sizeof steps / sizeof *steps; i++) {
        s_call_t *call = s_call_new (&gateway, steps[i].method, steps[i].path,
                                     steps[i].key, steps[i].body);
        call->curl = curl;
        if (steps[i].forwarded) {
            s_call_start (call);
            cm_msg_t *request = s_daemon_expect (chatd, CM_MSG_REQUEST);
            s_daemon_reply (chatd, CM_MSG_FINAL, cm_msg_request_id (request), 200,
                            "application/json", "{}");
            cm_msg_destroy (&request);
            s_call_join (call);
        } else
            s_call_run (call);
        cr_assert_eq (call->code, CURLE_OK);
        cr_assert_eq (call->status, steps[i].status, "step %zu", i);
        cr_assert_eq (call->connects, i == 0 ? 1 : 0,
                      "step %zu (%s %s) opened a connection", i, steps[i].method,
                      steps[i].path);
        s_call_destroy (&call);
    }
    curl_easy_cleanup (curl);
    s_daemon_destroy (&chatd);
    s_gateway_stop (&gateway);
}

//  --- API keys ---------------------------------------------------------------

//  Create a key through the admin route with this key; returns the reply's
//  apiKey (new reference).
static json_t *
s_create_key (s_gateway_t *gateway, const char *admin, const char *body)
{
    s_call_t *call = s_http (gateway, "POST", "/api/v1/admin/api-keys/new", admin, body);
    cr_assert_eq (call->status, 200, "create: %ld %s", call->status, call->reply);
    json_t *json = s_call_json (call);
    json_t *key = json_incref (json_object_get (json, "apiKey"));
    cr_assert (json_is_null (json_object_get (json, "error")));
    json_decref (json);
    s_call_destroy (&call);
    return key;
}

static const char *
s_secret (json_t *key)
{
    return json_string_value (json_object_get (key, "secret"));
}

Test (gw_server, api_keys_are_created_used_and_revoked)
{
    s_gateway_t gateway;
    s_gateway_start (&gateway, S_TIMEOUT_MS, 1 << 20);
    s_daemon_t *chatd = s_daemon_new (&gateway, "chat", "chat-1", 4);
    s_wait_health (&gateway, "services.chat.instances", 1);

    //  The admin key makes a key for an application.
    json_t *key = s_create_key (&gateway, S_KEY, "{\"name\":\"app\"}");
    const char *secret = s_secret (key);
    json_int_t id = json_integer_value (json_object_get (key, "id"));
    cr_assert_str_eq (json_string_value (json_object_get (key, "role")), "default");

    //  It works on the /api/v1 routes; daemons see the key's id as the
    //  caller (so per-key rate limits count per key).
    s_call_t *call = s_http (&gateway, "GET", "/api/v1/auth", secret, NULL);
    cr_assert_eq (call->status, 200);
    cr_assert_str_eq (call->reply, "{\"authenticated\":true}");
    s_call_destroy (&call);
    call = s_call_new (&gateway, "GET", "/api/v1/openai/models", secret, NULL);
    s_call_start (call);
    cm_msg_t *request = s_daemon_expect (chatd, CM_MSG_REQUEST);
    char identity[32];
    snprintf (identity, sizeof identity, "key:%lld", (long long) id);
    cr_assert_str_eq (cm_msg_identity (request), identity);
    s_daemon_reply (chatd, CM_MSG_FINAL, cm_msg_request_id (request), 200,
                    "application/json", "{\"object\":\"list\",\"data\":[]}");
    cm_msg_destroy (&request);
    s_call_join (call);
    cr_assert_eq (call->status, 200);
    s_call_destroy (&call);

    //  Not the admin routes.
    const char *admin_routes[][2] = {{"GET", "/api/v1/admin/api-keys"},
                                     {"POST", "/api/v1/admin/api-keys/new"},
                                     {"DELETE", "/api/v1/admin/api-keys/1"}};
    for (size_t i = 0; i < 3; i++) {
        call = s_http (&gateway, admin_routes[i][0], admin_routes[i][1], secret,
                       strcmp (admin_routes[i][0], "POST") ? NULL : "{}");
        s_assert_error (call, 403, "This API key may not use admin routes.");
        s_call_destroy (&call);
    }

    //  An admin key from the database may: it makes another key.
    json_t *admin = s_create_key (&gateway, S_KEY, "{\"role\":\"admin\"}");
    json_t *other = s_create_key (&gateway, s_secret (admin), "{\"name\":\"other\"}");
    snprintf (identity, sizeof identity, "key:%lld",
              (long long) json_integer_value (json_object_get (admin, "id")));
    cr_assert_str_eq (json_string_value (json_object_get (other, "createdBy")), identity);

    //  The list: three keys, no secrets.
    call = s_http (&gateway, "GET", "/api/v1/admin/api-keys", s_secret (admin), NULL);
    cr_assert_eq (call->status, 200);
    json_t *json = s_call_json (call);
    cr_assert_eq (json_array_size (json_object_get (json, "apiKeys")), 3);
    cr_assert_null (strstr (call->reply, "\"secret\""), "%s", call->reply);
    cr_assert_null (strstr (call->reply, secret + 10), "%s", call->reply);
    json_decref (json);
    s_call_destroy (&call);

    //  Revoked: refused at once here, with upstream's 403; twice is 404.
    char path[64];
    snprintf (path, sizeof path, "/api/v1/admin/api-keys/%lld", (long long) id);
    call = s_http (&gateway, "DELETE", path, S_KEY, NULL);
    cr_assert_eq (call->status, 200, "%s", call->reply);
    cr_assert_str_eq (call->reply, "{\"success\":true,\"error\":null}");
    s_call_destroy (&call);
    call = s_http (&gateway, "GET", "/api/v1/auth", secret, NULL);
    s_assert_error (call, 403, "No valid api key found.");
    s_call_destroy (&call);
    call = s_http (&gateway, "DELETE", path, S_KEY, NULL);
    cr_assert_eq (call->status, 404);
    json = s_call_json (call);
    cr_assert (json_is_false (json_object_get (json, "success")));
    json_decref (json);
    s_call_destroy (&call);

    //  A bad role is refused, in the create route's shape.
    call = s_http (&gateway, "POST", "/api/v1/admin/api-keys/new", S_KEY,
                   "{\"role\":\"root\"}");
    cr_assert_eq (call->status, 400);
    cr_assert_str_eq (call->reply,
                      "{\"apiKey\":null,\"error\":\"role must be \\\"admin\\\" or "
                      "\\\"default\\\"\"}");
    s_call_destroy (&call);

    json_decref (other);
    json_decref (admin);
    json_decref (key);
    s_daemon_destroy (&chatd);
    s_gateway_stop (&gateway);
}

//  Is this key refused by this gateway now?
static bool
s_refused (s_gateway_t *gateway, const char *secret)
{
    s_call_t *call = s_http (gateway, "GET", "/api/v1/auth", secret, NULL);
    cr_assert (call->status == 200 || call->status == 403, "%ld %s", call->status,
               call->reply);
    bool refused = call->status == 403;
    s_call_destroy (&call);
    return refused;
}

Test (gw_server, a_revoked_key_is_refused_within_a_second_on_every_gateway)
{
    //  Two gateways on one database (as replicas behind a balancer), with
    //  the default cache TTL (500 ms). Both have just trusted the key.
    s_gateway_t here, there;
    s_gateway_start (&here, S_TIMEOUT_MS, 1 << 20);
    char storage[128];
    snprintf (storage, sizeof storage, "%s/storage", here.run_dir);
    s_gateway_start_on (&there, S_TIMEOUT_MS, 1 << 20, storage, 500);
    json_t *key = s_create_key (&here, S_KEY, "{}");
    const char *secret = s_secret (key);
    cr_assert_not (s_refused (&here, secret));
    cr_assert_not (s_refused (&there, secret));

    //  Revoked through the first; the second refuses it within a second
    //  (its TTL, at most), however often it is asked meanwhile.
    char path[64];
    snprintf (path, sizeof path, "/api/v1/admin/api-keys/%lld",
              (long long) json_integer_value (json_object_get (key, "id")));
    cr_assert_not (s_refused (&there, secret));
    int64_t revoked = cm_clock_mono_ms ();
    s_call_t *call = s_http (&here, "DELETE", path, S_KEY, NULL);
    cr_assert_eq (call->status, 200);
    s_call_destroy (&call);
    cr_assert (s_refused (&here, secret), "the revoking gateway refuses it at once");
    int64_t refused = -1;
    while (cm_clock_mono_ms () - revoked < 2000) {
        if (s_refused (&there, secret)) {
            refused = cm_clock_mono_ms ();
            break;
        }
        s_sleep_ms (1);
    }
    cr_assert_geq (refused, 0, "still accepted 2 s after its revocation");
    cr_assert_lt (refused - revoked, 1000, "refused after %lld ms",
                  (long long) (refused - revoked));
    fprintf (stderr, "revocation reached the other gateway after %lld ms (TTL 500)\n",
             (long long) (refused - revoked));
    cr_assert (s_refused (&there, secret), "and stays refused");

    json_decref (key);
    s_gateway_stop (&there);
    s_gateway_stop (&here);
}

Test (gw_server, a_key_that_cannot_be_checked_is_503_never_a_pass)
{
    //  The database cannot be opened (its directory is a file).
    s_gateway_t gateway;
    char storage[128];
    snprintf (storage, sizeof storage, "/tmp/llmrt-gw-nodb-%d", (int) getpid ());
    FILE *file = fopen (storage, "w");
    cr_assert_not_null (file);
    fclose (file);
    s_gateway_start_on (&gateway, S_TIMEOUT_MS, 1 << 20, storage, 500);
    s_call_t *call = s_http (&gateway, "GET", "/api/v1/workspaces",
                             "llmrt_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", NULL);
    s_assert_error (call, 503,
                    "API keys cannot be checked right now: the database is unavailable.");
    cr_assert_str_eq (s_call_header (call, "Retry-After"), "1");
    s_call_destroy (&call);
    //  The admin key from the environment still works; a key that is not
    //  ours is still simply wrong.
    call = s_http (&gateway, "GET", "/api/v1/auth", S_KEY, NULL);
    cr_assert_eq (call->status, 200);
    s_call_destroy (&call);
    call = s_http (&gateway, "GET", "/api/v1/auth", "wrong", NULL);
    cr_assert_eq (call->status, 403);
    s_call_destroy (&call);
    call = s_http (&gateway, "GET", "/api/v1/admin/api-keys", S_KEY, NULL);
    s_assert_error (call, 503, NULL);
    s_call_destroy (&call);
    s_gateway_stop (&gateway);
    unlink (storage);
}

Test (gw_server, a_503_from_a_draining_instance_is_resent_when_retryable)
{
    //  A daemon that has said DISCONNECT answers 503 to what crossed it on
    //  the wire (cm_worker): that request never ran there.
    s_gateway_t gateway;
    s_gateway_start (&gateway, S_TIMEOUT_MS, 1 << 20);
    s_daemon_t *daemons[2] = {s_daemon_new (&gateway, "chat", "chat-a", 2),
                              s_daemon_new (&gateway, "chat", "chat-b", 2)};
    s_wait_health (&gateway, "services.chat.instances", 2);

    s_call_t *call =
        s_call_new (&gateway, "POST", "/api/v1/workspace/demo/chat", S_KEY, "{}");
    s_call_start (call);
    size_t drains;
    cm_msg_t *request = s_daemons_expect_request (daemons, 2, &drains);
    s_daemon_t *other = daemons[1 - drains];
    cm_msg_t *bye = cm_msg_new (CM_MSG_DISCONNECT);
    cm_msg_set_reason (bye, "draining");
    s_daemon_send (daemons[drains], &bye);
    s_daemon_reply (daemons[drains], CM_MSG_FINAL, cm_msg_request_id (request), 503,
                    "application/json", "{\"error\":\"The service is shutting down.\"}");
    cm_msg_t *again = s_daemon_expect (other, CM_MSG_REQUEST);
    cr_assert_str_eq (cm_msg_request_id (again), cm_msg_request_id (request));
    s_daemon_reply (other, CM_MSG_FINAL, cm_msg_request_id (again), 200,
                    "application/json", "{\"textResponse\":\"elsewhere\"}");
    s_call_join (call);
    cr_assert_eq (call->status, 200);
    cr_assert_str_eq (call->reply, "{\"textResponse\":\"elsewhere\"}");
    s_wait_health (&gateway, "broker.retries", 1);
    s_call_destroy (&call);
    cm_msg_destroy (&request);
    cm_msg_destroy (&again);

    //  Not retryable (a second workspace would be wrong): the 503 is the
    //  answer, Retry-After and all.
    call = s_call_new (&gateway, "POST", "/api/v1/workspace/new", S_KEY,
                       "{\"name\":\"once\"}");
    s_call_start (call);
    request = s_daemon_expect (other, CM_MSG_REQUEST);
    bye = cm_msg_new (CM_MSG_DISCONNECT);
    cm_msg_set_reason (bye, "draining");
    s_daemon_send (other, &bye);
    s_daemon_reply (other, CM_MSG_FINAL, cm_msg_request_id (request), 503,
                    "application/json", "{\"error\":\"The service is shutting down.\"}");
    s_call_join (call);
    cr_assert_eq (call->status, 503);
    s_wait_health (&gateway, "broker.retries", 1);
    s_call_destroy (&call);
    cm_msg_destroy (&request);
    s_daemon_destroy (&daemons[0]);
    s_daemon_destroy (&daemons[1]);
    s_gateway_stop (&gateway);
}
