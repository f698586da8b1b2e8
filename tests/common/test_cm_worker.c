/*  test_cm_worker.c: the daemon side of the gateway protocol. The test plays
    the gateway on a real ROUTER socket (as gw_broker does: mandatory routing,
    hand-over) and speaks cm_msg frames to a real cm_worker: READY and
    heartbeats, a silent gateway, requests routed to handlers, streaming, the
    bounded queue's 429, CANCEL, deadlines, bad frames and draining on
    destroy. Every wait is a poll with a generous deadline, and the gateway
    keeps heartbeating while it waits, so a slow machine only makes the
    tests slower. */
#include <criterion/criterion.h>
#include <czmq.h>
#include <jansson.h>
#include <pthread.h>
#include <stdatomic.h>
#include <unistd.h>
#include "cm_config.h"
#include "cm_log.h"
#include "cm_metrics_msg.h"
#include "cm_msg.h"
#include "cm_worker.h"

//  Deadline for anything that should happen "soon", however loaded the box.
#define S_PATIENCE_MS 20000
//  The worker's heartbeat; with liveness 3 it gives the gateway up after
//  150 ms of silence, so the test gateway beats far more often than that.
#define S_HEARTBEAT_MS    50
#define S_LIVENESS        3
#define S_GATEWAY_BEAT_MS 10
#define S_INSTANCE        "test-1"

//  --- handlers ----------------------------------------------------------

//  What the handlers saw, shared with the test (the route table's arg).
typedef struct {
    atomic_int slow_started;   //  slow handlers that began
    atomic_int slow_cancelled; //  slow handlers that saw cm_call_cancelled
    atomic_int gate_started;   //  gate handlers that began
    atomic_bool gate_open;     //  lets gate handlers reply
    atomic_int counted;        //  runs of the count handler
} s_state_t;

//  POST /echo: the body back as JSON, with a response header.
static void
s_echo (cm_call_t *call, void *arg)
{
    (void) arg;
    json_t *body = cm_call_json (call);
    cm_call_header_add (call, "X-Echo", "yes");
    cm_call_reply_json (call, 200,
                        json_pack ("{s:s, s:s, s:O?}", "method", cm_call_method (call),
                                   "path", cm_call_path (call), "echo", body));
}

//  GET /stream: three SSE events, then the end of the stream.
static void
s_stream (cm_call_t *call, void *arg)
{
    (void) arg;
    for (int n = 0; n < 3; n++)
        cm_call_sse (call, json_pack ("{s:i}", "n", n));
    cm_call_stream_end (call);
}

//  GET /stream/unfinished: one event and no end; the worker ends it.
static void
s_stream_unfinished (cm_call_t *call, void *arg)
{
    (void) arg;
    cm_call_sse (call, json_pack ("{s:i}", "n", 0));
}

//  GET /stream/gate: two SSE events, then waits for the gate, then ends.
static void
s_stream_gate (cm_call_t *call, void *arg)
{
    s_state_t *state = arg;
    cm_call_sse (call, json_pack ("{s:i}", "n", 0));
    cm_call_sse (call, json_pack ("{s:i}", "n", 1));
    atomic_fetch_add (&state->gate_started, 1);
    while (!atomic_load (&state->gate_open) && !cm_call_cancelled (call))
        usleep (1000);
    cm_call_stream_end (call);
}

//  GET /stream/many: SSE events as fast as they go (a short pause every
//  256, so that the outbox does not grow without bound), until the gate
//  opens.
static void
s_stream_many (cm_call_t *call, void *arg)
{
    s_state_t *state = arg;
    for (int n = 1; !atomic_load (&state->gate_open) && !cm_call_cancelled (call); n++) {
        cm_call_stream (call, 200, "text/event-stream", "data: {}\n\n", 10);
        if (n % 256 == 0)
            usleep (1000);
    }
    cm_call_stream_end (call);
}

//  GET /slow: works until cancelled, then returns without a reply (the
//  gateway has answered the client already).
static void
s_slow (cm_call_t *call, void *arg)
{
    s_state_t *state = arg;
    atomic_fetch_add (&state->slow_started, 1);
    int64_t until = cm_clock_mono_ms () + 2 * S_PATIENCE_MS;
    while (!cm_call_cancelled (call) && cm_clock_mono_ms () < until)
        usleep (1000);
    if (cm_call_cancelled (call))
        atomic_fetch_add (&state->slow_cancelled, 1);
}

//  GET /gate: waits until the test opens the gate, then replies 200.
static void
s_gate (cm_call_t *call, void *arg)
{
    s_state_t *state = arg;
    atomic_fetch_add (&state->gate_started, 1);
    while (!atomic_load (&state->gate_open) && !cm_call_cancelled (call))
        usleep (1000);
    if (!cm_call_cancelled (call))
        cm_call_reply_json (call, 200, json_pack ("{s:s}", "gate", "passed"));
}

//  GET /twice: waits for the gate like /gate, then says whether the call
//  may also run elsewhere by now (cm_call_twice_from_us).
static void
s_twice (cm_call_t *call, void *arg)
{
    s_state_t *state = arg;
    atomic_fetch_add (&state->gate_started, 1);
    while (!atomic_load (&state->gate_open) && !cm_call_cancelled (call))
        usleep (1000);
    bool twice = cm_clock_mono_us () >= cm_call_twice_from_us (call);
    cm_call_reply_json (call, 200, json_pack ("{s:b}", "twice", twice));
}

//  GET /silent: forgets to reply.
static void
s_silent (cm_call_t *call, void *arg)
{
    (void) call;
    (void) arg;
}

//  GET /count: counts its runs and replies 200.
static void
s_count (cm_call_t *call, void *arg)
{
    s_state_t *state = arg;
    atomic_fetch_add (&state->counted, 1);
    cm_call_reply (call, 200, "text/plain", "counted", 7);
}

//  Set key to a string, or to null when value is NULL.
static void
s_set (json_t *json, const char *key, const char *value)
{
    json_object_set_new (json, key, value ? json_string (value) : json_null ());
}

//  POST /users/{user}/items/{item}: reports everything it can read.
static void
s_inspect (cm_call_t *call, void *arg)
{
    (void) arg;
    json_t *seen = json_object ();
    s_set (seen, "user", cm_call_param (call, "user"));
    s_set (seen, "item", cm_call_param (call, "item"));
    s_set (seen, "nothing", cm_call_param (call, "nothing"));
    const char *queries[] = {"q", "tag", "name", "empty", "flag", "bad", "missing"};
    for (size_t i = 0; i < sizeof queries / sizeof queries[0]; i++)
        s_set (seen, queries[i], cm_call_query (call, queries[i]));
    s_set (seen, "accept", cm_call_header (call, "accept"));
    s_set (seen, "absent", cm_call_header (call, "X-Absent"));
    s_set (seen, "identity", cm_call_identity (call));
    s_set (seen, "path", cm_call_path (call));
    s_set (seen, "method", cm_call_method (call));
    s_set (seen, "request_id", cm_call_request_id (call));
    json_object_set_new (seen, "deadline", json_integer (cm_call_deadline (call)));
    json_t *body = cm_call_json (call);
    json_object_set (seen, "body", body ? body : json_null ());
    cm_call_reply_json (call, 201, seen);
}

static const cm_route_t s_routes[] = {
    {"POST", "/echo", s_echo, false},
    {"GET", "/stream", s_stream, false},
    {"GET", "/stream/unfinished", s_stream_unfinished, false},
    {"GET", "/stream/gate", s_stream_gate, false},
    {"GET", "/stream/many", s_stream_many, false},
    {"GET", "/slow", s_slow, false},
    {"GET", "/gate", s_gate, false},
    {"GET", "/twice", s_twice, false},
    {"GET", "/silent", s_silent, false},
    {"GET", "/count", s_count, false},
    {"GET", "/count/quick", s_count, true},
    {"POST", "/users/{user}/items/{item}", s_inspect, false},
    {NULL, NULL, NULL, false},
};

//  --- the test gateway ----------------------------------------------------

typedef struct {
    zsock_t *router;   //  bound like the gateway's backend
    char endpoint[64]; //  where the worker connects
    char peer[256];    //  the worker's routing id (its instance)
    zlist_t *inbox;    //  received messages other than HEARTBEAT, not taken yet
    int first_type;    //  type of the very first message received, 0 none yet
    size_t beats;      //  HEARTBEATs received
    int free_slots;    //  capacity of the last HEARTBEAT, -1 none yet
    int64_t next_beat; //  when we heartbeat the worker next
    bool silent;       //  stop heartbeating: the gateway hangs
    size_t strangers;  //  messages from another routing id, ignored
} s_gateway_t;

static s_gateway_t *
s_gateway_new (void)
{
    s_gateway_t *self = calloc (1, sizeof *self);
    cr_assert_not_null (self);
    self->router = zsock_new (ZMQ_ROUTER);
    cr_assert_not_null (self->router);
    zsock_set_router_mandatory (self->router, 1);
    zsock_set_router_handover (self->router, 1);
    zsock_set_linger (self->router, 0);
    zsock_set_rcvtimeo (self->router, 10);
    int port = zsock_bind (self->router, "tcp://127.0.0.1:*");
    cr_assert_gt (port, 0, "cannot bind the test gateway");
    snprintf (self->endpoint, sizeof self->endpoint, "tcp://127.0.0.1:%d", port);
    self->inbox = zlist_new ();
    self->free_slots = -1;
    return self;
}

static void
s_gateway_destroy (s_gateway_t **self_p)
{
    s_gateway_t *self = *self_p;
    cm_msg_t *msg;
    while ((msg = zlist_pop (self->inbox)))
        cm_msg_destroy (&msg);
    zlist_destroy (&self->inbox);
    zsock_destroy (&self->router);
    free (self);
    *self_p = NULL;
}

//  The gateway restarts: a new ROUTER on the same port, knowing nothing of
//  what the old one received. The old one's listener closes in libzmq's
//  own thread, so the bind is retried until the port is free.
static void
s_gateway_restart (s_gateway_t *self)
{
    cm_msg_t *msg;
    while ((msg = zlist_pop (self->inbox)))
        cm_msg_destroy (&msg);
    zsock_destroy (&self->router);
    self->first_type = 0;
    self->beats = 0;
    self->free_slots = -1;
    int64_t until = cm_clock_mono_ms () + S_PATIENCE_MS;
    while (true) {
        self->router = zsock_new (ZMQ_ROUTER);
        cr_assert_not_null (self->router);
        zsock_set_router_mandatory (self->router, 1);
        zsock_set_router_handover (self->router, 1);
        zsock_set_linger (self->router, 0);
        zsock_set_rcvtimeo (self->router, 10);
        if (zsock_bind (self->router, "%s", self->endpoint) >= 0)
            return;
        zsock_destroy (&self->router);
        cr_assert_lt (cm_clock_mono_ms (), until, "cannot bind %s again", self->endpoint);
        usleep (10000);
    }
}

//  Send one frame to the worker; -1 when it is not connected.
static int
s_gateway_send_frame (s_gateway_t *self, const void *data, size_t size)
{
    void *handle = zsock_resolve (self->router);
    if (zmq_send (handle, self->peer, strlen (self->peer), ZMQ_SNDMORE | ZMQ_DONTWAIT) <
        0)
        return -1;
    return zmq_send (handle, data, size, ZMQ_DONTWAIT) < 0 ? -1 : 0;
}

//  Send a message to the worker and destroy it.
static void
s_gateway_send (s_gateway_t *self, cm_msg_t **msg_p)
{
    char *data;
    size_t size;
    cm_msg_encode (*msg_p, &data, &size);
    cr_assert_eq (s_gateway_send_frame (self, data, size), 0, "cannot send %s to %s",
                  cm_msg_type_name (cm_msg_type (*msg_p)), self->peer);
    free (data);
    cm_msg_destroy (msg_p);
}

//  Heartbeat the worker when due. A beat may find it between sockets.
static void
s_gateway_beat (s_gateway_t *self)
{
    int64_t now = cm_clock_mono_ms ();
    if (self->silent || now < self->next_beat)
        return;
    cm_msg_t *beat = cm_msg_new (CM_MSG_HEARTBEAT);
    char *data;
    size_t size;
    cm_msg_encode (beat, &data, &size);
    s_gateway_send_frame (self, data, size);
    free (data);
    cm_msg_destroy (&beat);
    self->next_beat = now + S_GATEWAY_BEAT_MS;
}

//  Receive at most one message within about 10 ms, heartbeating meanwhile.
//  HEARTBEATs are counted, anything else goes to the inbox.
static void
s_gateway_pump (s_gateway_t *self)
{
    s_gateway_beat (self);
    zmsg_t *zmsg = zmsg_recv (self->router);
    if (!zmsg)
        return;
    cr_assert_eq (zmsg_size (zmsg), 2, "the worker sends one frame per message");
    //  A second connection of the worker would take the routing id over
    //  (hand-over) and leave the first with a made-up one; what comes
    //  through such a connection is counted and ignored.
    char *peer = zmsg_popstr (zmsg);
    bool stranger = strcmp (peer, self->peer) != 0;
    free (peer);
    if (stranger) {
        self->strangers++;
        zmsg_destroy (&zmsg);
        return;
    }
    zframe_t *frame = zmsg_first (zmsg);
    char err[256] = "";
    cm_msg_t *msg =
        cm_msg_decode (zframe_data (frame), zframe_size (frame), err, sizeof err);
    cr_assert_not_null (msg, "the worker sent a bad frame: %s", err);
    zmsg_destroy (&zmsg);
    if (!self->first_type)
        self->first_type = cm_msg_type (msg);
    if (cm_msg_type (msg) == CM_MSG_HEARTBEAT) {
        self->beats++;
        self->free_slots = (int) cm_msg_capacity (msg);
        cm_msg_destroy (&msg);
    } else
        zlist_append (self->inbox, msg);
}

//  Take the oldest inbox message of this type (0: any) for this request id
//  (NULL: any), or NULL.
static cm_msg_t *
s_gateway_take (s_gateway_t *self, int type, const char *request_id)
{
    for (cm_msg_t *msg = zlist_first (self->inbox); msg; msg = zlist_next (self->inbox))
        if ((!type || (int) cm_msg_type (msg) == type) &&
            (!request_id || !strcmp (cm_msg_request_id (msg), request_id))) {
            zlist_remove (self->inbox, msg);
            return msg;
        }
    return NULL;
}

//  Wait for a message as s_gateway_take finds it; fails the test on timeout.
static cm_msg_t *
s_gateway_expect (s_gateway_t *self, int type, const char *request_id)
{
    int64_t until = cm_clock_mono_ms () + S_PATIENCE_MS;
    while (true) {
        cm_msg_t *msg = s_gateway_take (self, type, request_id);
        if (msg)
            return msg;
        cr_assert_lt (cm_clock_mono_ms (), until, "no %s for '%s' from the worker",
                      type ? cm_msg_type_name (type) : "message",
                      request_id ? request_id : "*");
        s_gateway_pump (self);
    }
}

//  Expect the FINAL of a request with this status; returns it.
static cm_msg_t *
s_gateway_expect_final (s_gateway_t *self, const char *request_id, int status)
{
    cm_msg_t *final = s_gateway_expect (self, CM_MSG_FINAL, request_id);
    cr_assert_eq (cm_msg_status (final), status, "%s: status %d, expected %d", request_id,
                  cm_msg_status (final), status);
    return final;
}

//  Keep the gateway going until *value reaches target.
static void
s_gateway_wait_for (s_gateway_t *self, atomic_int *value, int target, const char *what)
{
    int64_t until = cm_clock_mono_ms () + S_PATIENCE_MS;
    while (atomic_load (value) < target) {
        cr_assert_lt (cm_clock_mono_ms (), until, "timed out waiting for %s", what);
        s_gateway_pump (self);
    }
}

//  Wait for a HEARTBEAT, received from now on, that reports free_slots.
static void
s_gateway_wait_beat (s_gateway_t *self, int free_slots)
{
    int64_t until = cm_clock_mono_ms () + S_PATIENCE_MS;
    while (true) {
        size_t before = self->beats;
        s_gateway_pump (self);
        if (self->beats > before && self->free_slots == free_slots)
            return;
        cr_assert_lt (cm_clock_mono_ms (), until,
                      "no HEARTBEAT with %d free slots (last %d)", free_slots,
                      self->free_slots);
    }
}

//  Send a REQUEST; body (JSON text) may be NULL.
static void
s_gateway_request (s_gateway_t *self, const char *id, const char *method,
                   const char *route, int64_t deadline, const char *body)
{
    cm_msg_t *msg = cm_msg_new (CM_MSG_REQUEST);
    cm_msg_set_request_id (msg, id);
    cm_msg_set_service (msg, "test");
    cm_msg_set_method (msg, method);
    cm_msg_set_route (msg, route);
    cm_msg_set_deadline (msg, deadline);
    cm_msg_set_identity (msg, "tester");
    if (body) {
        cm_msg_header_add (msg, "Content-Type", "application/json");
        cm_msg_set_body (msg, body, strlen (body));
    }
    s_gateway_send (self, &msg);
}

static void
s_gateway_cancel (s_gateway_t *self, const char *id)
{
    cm_msg_t *msg = cm_msg_new (CM_MSG_CANCEL);
    cm_msg_set_request_id (msg, id);
    cm_msg_set_reason (msg, "client gone");
    s_gateway_send (self, &msg);
}

//  Parse a reply's JSON body; caller decrefs.
static json_t *
s_json_body (cm_msg_t *msg)
{
    size_t size;
    const char *body = cm_msg_body (msg, &size);
    json_error_t error;
    json_t *json = json_loadb (body, size, 0, &error);
    cr_assert_not_null (json, "reply is not JSON: %s", error.text);
    return json;
}

static const char *
s_json_str (json_t *json, const char *key)
{
    return json_string_value (json_object_get (json, key));
}

//  A worker of this config (its endpoint the test gateway's); waits for
//  its READY.
static cm_worker_t *
s_worker_start_config (s_gateway_t *gateway, cm_worker_config_t *config)
{
    config->endpoint = gateway->endpoint;
    cm_worker_t *worker = cm_worker_new (config);
    cr_assert_not_null (worker);
    snprintf (gateway->peer, sizeof gateway->peer, "%s", cm_worker_instance (worker));
    cm_msg_t *ready = s_gateway_expect (gateway, CM_MSG_READY, NULL);
    cm_msg_destroy (&ready);
    return worker;
}

//  A worker on the test gateway, with the test's instance id; waits for its
//  READY.
static cm_worker_t *
s_worker_start_beating (s_gateway_t *gateway, s_state_t *state, size_t concurrency,
                        size_t max_pending, int64_t drain_ms, int64_t heartbeat_ms)
{
    cm_worker_config_t config = {
        .service = "test",
        .instance = S_INSTANCE,
        .concurrency = concurrency,
        .max_pending = max_pending,
        .heartbeat_ms = heartbeat_ms,
        .liveness = S_LIVENESS,
        .drain_ms = drain_ms,
        .routes = s_routes,
        .arg = state,
    };
    return s_worker_start_config (gateway, &config);
}

//  The same with the tests' heartbeat.
static cm_worker_t *
s_worker_start (s_gateway_t *gateway, s_state_t *state, size_t concurrency,
                size_t max_pending, int64_t drain_ms)
{
    return s_worker_start_beating (gateway, state, concurrency, max_pending, drain_ms,
                                   S_HEARTBEAT_MS);
}

//  --- tests -----------------------------------------------------------------

Test (cm_worker, walkthrough_ready_request_reply_disconnect, .timeout = 60)
{
    //  The gateway binds a ROUTER; the worker connects and says READY.
    s_gateway_t *gateway = s_gateway_new ();
    s_state_t state = {0};
    cm_worker_config_t config = {
        .service = "test",
        .instance = S_INSTANCE,
        .endpoint = gateway->endpoint,
        .concurrency = 2,
        .max_pending = 4,
        .heartbeat_ms = S_HEARTBEAT_MS,
        .liveness = S_LIVENESS,
        .drain_ms = 1000,
        .routes = s_routes,
        .arg = &state,
    };
    cm_worker_t *worker = cm_worker_new (&config);
    cr_assert_str_eq (cm_worker_instance (worker), S_INSTANCE);
    strcpy (gateway->peer, S_INSTANCE);
    cm_msg_t *ready = s_gateway_expect (gateway, CM_MSG_READY, NULL);
    cr_assert_str_eq (cm_msg_service (ready), "test");
    cm_msg_destroy (&ready);

    //  A REQUEST runs its route's handler; the reply comes back as FINAL.
    s_gateway_request (gateway, "r1", "POST", "/echo", 0, "{\"hello\":\"world\"}");
    cm_msg_t *final = s_gateway_expect_final (gateway, "r1", 200);
    cr_assert_str_eq (cm_msg_content_type (final), "application/json");
    json_t *body = s_json_body (final);
    cr_assert_str_eq (s_json_str (json_object_get (body, "echo"), "hello"), "world");
    json_decref (body);
    cm_msg_destroy (&final);
    cr_assert_eq (cm_worker_served (worker), 1);

    //  Destroy says DISCONNECT before it goes.
    cm_worker_destroy (&worker);
    cr_assert_null (worker);
    cm_msg_t *bye = s_gateway_expect (gateway, CM_MSG_DISCONNECT, NULL);
    cr_assert_str_eq (cm_msg_reason (bye), "draining");
    cm_msg_destroy (&bye);
    s_gateway_destroy (&gateway);
}

Test (cm_worker, ready_comes_first_with_service_instance_capacity, .timeout = 60)
{
    s_gateway_t *gateway = s_gateway_new ();
    s_state_t state = {0};
    //  No instance given: the worker makes up service-host-pid.
    cm_worker_config_t config = {
        .service = "test",
        .endpoint = gateway->endpoint,
        .concurrency = 3,
        .max_pending = 5,
        .heartbeat_ms = S_HEARTBEAT_MS,
        .liveness = S_LIVENESS,
        .routes = s_routes,
        .arg = &state,
    };
    cm_worker_t *worker = cm_worker_new (&config);
    const char *instance = cm_worker_instance (worker);
    char suffix[32];
    snprintf (suffix, sizeof suffix, "-%d", (int) getpid ());
    cr_assert_eq (strncmp (instance, "test-", 5), 0, "instance %s", instance);
    cr_assert_str_eq (instance + strlen (instance) - strlen (suffix), suffix);
    snprintf (gateway->peer, sizeof gateway->peer, "%s", instance);

    cm_msg_t *ready = s_gateway_expect (gateway, CM_MSG_READY, NULL);
    cr_assert_eq (gateway->first_type, CM_MSG_READY, "READY before anything else");
    cr_assert_eq (gateway->strangers, 0, "the routing id is the instance id");
    cr_assert_str_eq (cm_msg_service (ready), "test");
    cr_assert_str_eq (cm_msg_instance (ready), instance);
    cr_assert_eq (cm_msg_capacity (ready), 3, "capacity is the concurrency");
    cm_msg_destroy (&ready);
    cm_worker_destroy (&worker);
    s_gateway_destroy (&gateway);
}

Test (cm_worker, the_longest_instance_id_is_the_routing_id, .timeout = 60)
{
    //  255 bytes, the most a ZeroMQ routing id holds (INSTANCE_ID's limit).
    s_gateway_t *gateway = s_gateway_new ();
    s_state_t state = {0};
    char instance[256];
    memset (instance, 'i', 255);
    instance[255] = 0;
    cm_worker_config_t config = {
        .service = "test",
        .instance = instance,
        .endpoint = gateway->endpoint,
        .concurrency = 1,
        .heartbeat_ms = S_HEARTBEAT_MS,
        .liveness = S_LIVENESS,
        .routes = s_routes,
        .arg = &state,
    };
    cm_worker_t *worker = cm_worker_new (&config);
    snprintf (gateway->peer, sizeof gateway->peer, "%s", instance);
    cm_msg_t *ready = s_gateway_expect (gateway, CM_MSG_READY, NULL);
    cr_assert_eq (gateway->strangers, 0, "the routing id is the instance id");
    cr_assert_str_eq (cm_msg_instance (ready), instance);
    cm_msg_destroy (&ready);
    cm_worker_destroy (&worker);
    s_gateway_destroy (&gateway);
}

Test (cm_worker, heartbeats_report_free_slots, .timeout = 60)
{
    s_gateway_t *gateway = s_gateway_new ();
    s_state_t state = {0};
    cm_worker_t *worker = s_worker_start (gateway, &state, 2, 1, 1000);
    //  Idle: every slot free, beat after beat.
    s_gateway_wait_beat (gateway, 2);
    size_t beats = gateway->beats;
    for (int i = 0; i < 3; i++)
        s_gateway_wait_beat (gateway, 2);
    cr_assert_geq (gateway->beats, beats + 3);

    //  Each running call takes a slot; one waiting in line leaves none.
    s_gateway_request (gateway, "a", "GET", "/slow", 0, NULL);
    s_gateway_wait_for (gateway, &state.slow_started, 1, "a to start");
    s_gateway_wait_beat (gateway, 1);
    s_gateway_request (gateway, "b", "GET", "/slow", 0, NULL);
    s_gateway_wait_for (gateway, &state.slow_started, 2, "b to start");
    s_gateway_wait_beat (gateway, 0);
    s_gateway_request (gateway, "c", "GET", "/slow", 0, NULL);
    s_gateway_wait_beat (gateway, 0);

    //  Done: the slots come back.
    s_gateway_cancel (gateway, "c");
    s_gateway_cancel (gateway, "a");
    s_gateway_cancel (gateway, "b");
    s_gateway_wait_for (gateway, &state.slow_cancelled, 2, "a and b to stop");
    s_gateway_wait_beat (gateway, 2);
    cr_assert_eq (atomic_load (&state.slow_started), 2, "c never ran");
    cm_worker_destroy (&worker);
    s_gateway_destroy (&gateway);
}

Test (cm_worker, reply_has_status_type_headers_and_body, .timeout = 60)
{
    s_gateway_t *gateway = s_gateway_new ();
    s_state_t state = {0};
    cm_worker_t *worker = s_worker_start (gateway, &state, 2, 4, 1000);
    s_gateway_request (gateway, "e1", "POST", "/echo", 0, "[1,2,3]");
    cm_msg_t *final = s_gateway_expect_final (gateway, "e1", 200);
    cr_assert_str_eq (cm_msg_content_type (final), "application/json");
    cr_assert_str_eq (cm_msg_header (final, "x-echo"), "yes");
    json_t *body = s_json_body (final);
    cr_assert_str_eq (s_json_str (body, "method"), "POST");
    cr_assert_str_eq (s_json_str (body, "path"), "/echo");
    cr_assert_eq (json_array_size (json_object_get (body, "echo")), 3);
    json_decref (body);
    cm_msg_destroy (&final);

    //  A plain-text reply keeps its type and bytes.
    s_gateway_request (gateway, "c1", "GET", "/count", 0, NULL);
    final = s_gateway_expect_final (gateway, "c1", 200);
    cr_assert_str_eq (cm_msg_content_type (final), "text/plain");
    size_t size;
    const char *text = cm_msg_body (final, &size);
    cr_assert_eq (size, 7);
    cr_assert_eq (memcmp (text, "counted", 7), 0);
    cm_msg_destroy (&final);
    cm_worker_destroy (&worker);
    s_gateway_destroy (&gateway);
}

Test (cm_worker, params_query_headers_identity_and_json_reach_handler, .timeout = 60)
{
    s_gateway_t *gateway = s_gateway_new ();
    s_state_t state = {0};
    cm_worker_t *worker = s_worker_start (gateway, &state, 2, 4, 1000);
    int64_t deadline = cm_clock_wall_ms () + 10 * S_PATIENCE_MS;
    cm_msg_t *request = cm_msg_new (CM_MSG_REQUEST);
    cm_msg_set_request_id (request, "i1");
    cm_msg_set_service (request, "test");
    cm_msg_set_method (request, "POST");
    cm_msg_set_route (request, "/users/ada/items/42?q=hello+world%21&tag=a%2Bb&empty="
                               "&flag&%6Eame=%C3%A9t%C3%A9&q=second&bad=%zz");
    cm_msg_set_deadline (request, deadline);
    cm_msg_set_identity (request, "ada@example.org");
    cm_msg_header_add (request, "Content-Type", "application/json");
    cm_msg_header_add (request, "Accept", "text/event-stream");
    const char *json = "{\"name\":\"Ada\",\"n\":7}";
    cm_msg_set_body (request, json, strlen (json));
    s_gateway_send (gateway, &request);

    cm_msg_t *final = s_gateway_expect_final (gateway, "i1", 201);
    json_t *seen = s_json_body (final);
    //  "{name}" segments of the route.
    cr_assert_str_eq (s_json_str (seen, "user"), "ada");
    cr_assert_str_eq (s_json_str (seen, "item"), "42");
    cr_assert (json_is_null (json_object_get (seen, "nothing")));
    //  The query string: percent-decoded, '+' is a space, the first wins.
    cr_assert_str_eq (s_json_str (seen, "q"), "hello world!");
    cr_assert_str_eq (s_json_str (seen, "tag"), "a+b");
    cr_assert_str_eq (s_json_str (seen, "name"), "\xc3\xa9t\xc3\xa9",
                      "keys are decoded too");
    cr_assert_str_eq (s_json_str (seen, "empty"), "");
    cr_assert_str_eq (s_json_str (seen, "flag"), "");
    cr_assert_str_eq (s_json_str (seen, "bad"), "%zz", "a broken escape stays as it is");
    cr_assert (json_is_null (json_object_get (seen, "missing")));
    //  Headers are looked up without regard to case.
    cr_assert_str_eq (s_json_str (seen, "accept"), "text/event-stream");
    cr_assert (json_is_null (json_object_get (seen, "absent")));
    cr_assert_str_eq (s_json_str (seen, "identity"), "ada@example.org");
    cr_assert_str_eq (s_json_str (seen, "path"), "/users/ada/items/42");
    cr_assert_str_eq (s_json_str (seen, "method"), "POST");
    cr_assert_str_eq (s_json_str (seen, "request_id"), "i1");
    cr_assert_eq (json_integer_value (json_object_get (seen, "deadline")), deadline);
    json_t *body = json_object_get (seen, "body");
    cr_assert_str_eq (s_json_str (body, "name"), "Ada");
    cr_assert_eq (json_integer_value (json_object_get (body, "n")), 7);
    json_decref (seen);
    cm_msg_destroy (&final);

    //  Parameters are percent-decoded once matched ('+' is itself in a path).
    s_gateway_request (gateway, "i3", "POST", "/users/d%6Fc+s/items/a%2Fb%25/", 0, "{}");
    final = s_gateway_expect_final (gateway, "i3", 201);
    seen = s_json_body (final);
    cr_assert_str_eq (s_json_str (seen, "user"), "doc+s");
    cr_assert_str_eq (s_json_str (seen, "item"), "a/b%");
    json_decref (seen);
    cm_msg_destroy (&final);

    //  A body that is not JSON reads as NULL.
    s_gateway_request (gateway, "i2", "POST", "/users/bob/items/x", 0, "not json");
    final = s_gateway_expect_final (gateway, "i2", 201);
    seen = s_json_body (final);
    cr_assert_str_eq (s_json_str (seen, "user"), "bob");
    cr_assert (json_is_null (json_object_get (seen, "body")));
    cr_assert (json_is_null (json_object_get (seen, "q")));
    json_decref (seen);
    cm_msg_destroy (&final);
    cm_worker_destroy (&worker);
    s_gateway_destroy (&gateway);
}

Test (cm_worker, stream_sends_partials_then_final, .timeout = 60)
{
    s_gateway_t *gateway = s_gateway_new ();
    s_state_t state = {0};
    cm_worker_t *worker = s_worker_start (gateway, &state, 2, 4, 1000);
    s_gateway_request (gateway, "s1", "GET", "/stream", 0, NULL);
    for (int n = 0; n < 3; n++) {
        cm_msg_t *part = s_gateway_expect (gateway, 0, "s1");
        cr_assert_eq (cm_msg_type (part), CM_MSG_PARTIAL, "event %d is a PARTIAL", n);
        cr_assert_eq (cm_msg_status (part), 200);
        cr_assert_str_eq (cm_msg_content_type (part), "text/event-stream");
        char expected[32];
        snprintf (expected, sizeof expected, "data: {\"n\":%d}\n\n", n);
        size_t size;
        const char *data = cm_msg_body (part, &size);
        cr_assert_eq (size, strlen (expected));
        cr_assert_eq (memcmp (data, expected, size), 0);
        cm_msg_destroy (&part);
    }
    cm_msg_t *final = s_gateway_expect (gateway, 0, "s1");
    cr_assert_eq (cm_msg_type (final), CM_MSG_FINAL);
    size_t size;
    cm_msg_body (final, &size);
    cr_assert_eq (size, 0, "the end of a stream has no body");
    cm_msg_destroy (&final);

    //  A handler that forgets the end: the worker ends the stream for it.
    s_gateway_request (gateway, "s2", "GET", "/stream/unfinished", 0, NULL);
    cm_msg_t *part = s_gateway_expect (gateway, 0, "s2");
    cr_assert_eq (cm_msg_type (part), CM_MSG_PARTIAL);
    cm_msg_destroy (&part);
    final = s_gateway_expect (gateway, 0, "s2");
    cr_assert_eq (cm_msg_type (final), CM_MSG_FINAL);
    cr_assert_eq (cm_msg_status (final), 200);
    cm_msg_destroy (&final);
    cm_worker_destroy (&worker);
    s_gateway_destroy (&gateway);
}

Test (cm_worker, unknown_path_is_404, .timeout = 60)
{
    s_gateway_t *gateway = s_gateway_new ();
    s_state_t state = {0};
    cm_worker_t *worker = s_worker_start (gateway, &state, 2, 4, 1000);
    s_gateway_request (gateway, "n1", "GET", "/nowhere?x=1", 0, NULL);
    s_gateway_request (gateway, "n2", "POST", "/users/ada/items", 0, NULL);
    s_gateway_request (gateway, "n3", "POST", "/users//items/1", 0, NULL);
    const char *ids[] = {"n1", "n2", "n3"};
    for (int i = 0; i < 3; i++) {
        cm_msg_t *final = s_gateway_expect_final (gateway, ids[i], 404);
        cr_assert_str_eq (cm_msg_content_type (final), "application/json");
        json_t *body = s_json_body (final);
        cr_assert_not_null (s_json_str (body, "error"));
        json_decref (body);
        cm_msg_destroy (&final);
    }
    cm_worker_destroy (&worker);
    s_gateway_destroy (&gateway);
}

Test (cm_worker, known_path_with_wrong_method_is_405, .timeout = 60)
{
    s_gateway_t *gateway = s_gateway_new ();
    s_state_t state = {0};
    cm_worker_t *worker = s_worker_start (gateway, &state, 2, 4, 1000);
    s_gateway_request (gateway, "m1", "DELETE", "/echo", 0, NULL);
    s_gateway_request (gateway, "m2", "GET", "/users/ada/items/1", 0, NULL);
    cm_msg_t *final = s_gateway_expect_final (gateway, "m1", 405);
    json_t *body = s_json_body (final);
    cr_assert_not_null (s_json_str (body, "error"));
    json_decref (body);
    cm_msg_destroy (&final);
    final = s_gateway_expect_final (gateway, "m2", 405);
    cm_msg_destroy (&final);
    cr_assert_eq (atomic_load (&state.counted), 0);
    cm_worker_destroy (&worker);
    s_gateway_destroy (&gateway);
}

Test (cm_worker, handler_without_reply_is_500, .timeout = 60)
{
    s_gateway_t *gateway = s_gateway_new ();
    s_state_t state = {0};
    cm_worker_t *worker = s_worker_start (gateway, &state, 2, 4, 1000);
    s_gateway_request (gateway, "x1", "GET", "/silent", 0, NULL);
    cm_msg_t *final = s_gateway_expect_final (gateway, "x1", 500);
    cr_assert_str_eq (cm_msg_content_type (final), "application/json");
    json_t *body = s_json_body (final);
    cr_assert_not_null (s_json_str (body, "error"));
    json_decref (body);
    cm_msg_destroy (&final);
    cm_worker_destroy (&worker);
    s_gateway_destroy (&gateway);
}

Test (cm_worker, full_queue_answers_429_with_retry_after, .timeout = 60)
{
    s_gateway_t *gateway = s_gateway_new ();
    s_state_t state = {0};
    //  One running, one waiting: the third has nowhere to go.
    cm_worker_t *worker = s_worker_start (gateway, &state, 1, 1, 1000);
    s_gateway_request (gateway, "a", "GET", "/slow", 0, NULL);
    s_gateway_wait_for (gateway, &state.slow_started, 1, "a to start");
    s_gateway_request (gateway, "b", "GET", "/slow", 0, NULL);
    s_gateway_request (gateway, "c", "GET", "/slow", 0, NULL);
    cm_msg_t *final = s_gateway_expect_final (gateway, "c", 429);
    cr_assert_str_eq (cm_msg_header (final, "Retry-After"), "1");
    cr_assert_str_eq (cm_msg_content_type (final), "application/json");
    json_t *body = s_json_body (final);
    cr_assert_not_null (s_json_str (body, "error"));
    json_decref (body);
    cm_msg_destroy (&final);
    //  At once: a still runs and b still waits.
    cr_assert_null (s_gateway_take (gateway, CM_MSG_FINAL, NULL));
    cr_assert_eq (atomic_load (&state.slow_started), 1);
    cr_assert_eq (atomic_load (&state.slow_cancelled), 0);

    s_gateway_cancel (gateway, "b");
    s_gateway_cancel (gateway, "a");
    s_gateway_wait_for (gateway, &state.slow_cancelled, 1, "a to stop");
    //  With one slot, the next call's reply comes after anything of a or b.
    s_gateway_request (gateway, "d", "GET", "/count", 0, NULL);
    final = s_gateway_expect_final (gateway, "d", 200);
    cm_msg_destroy (&final);
    cr_assert_null (s_gateway_take (gateway, CM_MSG_FINAL, NULL), "no reply for a or b");
    cr_assert_eq (atomic_load (&state.slow_started), 1, "b never ran");
    cm_worker_destroy (&worker);
    s_gateway_destroy (&gateway);
}

Test (cm_worker, cancel_of_running_call_is_seen_by_handler, .timeout = 60)
{
    s_gateway_t *gateway = s_gateway_new ();
    s_state_t state = {0};
    cm_worker_t *worker = s_worker_start (gateway, &state, 1, 4, 1000);
    s_gateway_request (gateway, "a", "GET", "/slow", 0, NULL);
    s_gateway_wait_for (gateway, &state.slow_started, 1, "a to start");
    cr_assert_eq (atomic_load (&state.slow_cancelled), 0);
    //  A CANCEL for a call it does not know is harmless.
    s_gateway_cancel (gateway, "nobody");
    s_gateway_cancel (gateway, "a");
    s_gateway_wait_for (gateway, &state.slow_cancelled, 1, "a to see the cancel");
    //  The cancelled call sends nothing (the gateway answered already), and
    //  its slot serves the next call.
    s_gateway_request (gateway, "b", "GET", "/count", 0, NULL);
    cm_msg_t *final = s_gateway_expect_final (gateway, "b", 200);
    cm_msg_destroy (&final);
    cr_assert_null (s_gateway_take (gateway, CM_MSG_FINAL, "a"));
    cm_worker_destroy (&worker);
    s_gateway_destroy (&gateway);
}

Test (cm_worker, cancel_of_waiting_call_means_it_never_runs, .timeout = 60)
{
    s_gateway_t *gateway = s_gateway_new ();
    s_state_t state = {0};
    cm_worker_t *worker = s_worker_start (gateway, &state, 1, 4, 1000);
    s_gateway_request (gateway, "a", "GET", "/slow", 0, NULL);
    s_gateway_wait_for (gateway, &state.slow_started, 1, "a to start");
    s_gateway_request (gateway, "b", "GET", "/count", 0, NULL);
    s_gateway_cancel (gateway, "b");
    s_gateway_cancel (gateway, "a");
    s_gateway_wait_for (gateway, &state.slow_cancelled, 1, "a to stop");
    s_gateway_request (gateway, "c", "GET", "/count", 0, NULL);
    cm_msg_t *final = s_gateway_expect_final (gateway, "c", 200);
    cm_msg_destroy (&final);
    cr_assert_eq (atomic_load (&state.counted), 1, "only c ran");
    cr_assert_null (s_gateway_take (gateway, CM_MSG_FINAL, NULL), "no reply for a or b");
    cm_worker_destroy (&worker);
    s_gateway_destroy (&gateway);
}

Test (cm_worker, past_deadline_of_waiting_call_is_504, .timeout = 60)
{
    s_gateway_t *gateway = s_gateway_new ();
    s_state_t state = {0};
    cm_worker_t *worker = s_worker_start (gateway, &state, 1, 4, 1000);
    //  A free slot, but the deadline has passed already: 504, never runs.
    s_gateway_request (gateway, "late", "GET", "/count", cm_clock_wall_ms () - 1000,
                       NULL);
    cm_msg_t *final = s_gateway_expect_final (gateway, "late", 504);
    cr_assert_str_eq (cm_msg_content_type (final), "application/json");
    cm_msg_destroy (&final);

    //  Waiting behind a busy slot: the worker expires it on its own.
    s_gateway_request (gateway, "a", "GET", "/slow", 0, NULL);
    s_gateway_wait_for (gateway, &state.slow_started, 1, "a to start");
    s_gateway_request (gateway, "b", "GET", "/count", cm_clock_wall_ms () - 1, NULL);
    s_gateway_request (gateway, "c", "GET", "/count", cm_clock_wall_ms () + 200, NULL);
    final = s_gateway_expect_final (gateway, "b", 504);
    json_t *body = s_json_body (final);
    cr_assert_not_null (s_json_str (body, "error"));
    json_decref (body);
    cm_msg_destroy (&final);
    final = s_gateway_expect_final (gateway, "c", 504);
    cm_msg_destroy (&final);
    cr_assert_eq (atomic_load (&state.slow_cancelled), 0, "a still runs");
    cr_assert_eq (atomic_load (&state.counted), 0, "b and c never ran");

    s_gateway_cancel (gateway, "a");
    s_gateway_wait_for (gateway, &state.slow_cancelled, 1, "a to stop");
    cm_worker_destroy (&worker);
    s_gateway_destroy (&gateway);
}

Test (cm_worker, deadline_passing_while_running_cancels_call, .timeout = 60)
{
    s_gateway_t *gateway = s_gateway_new ();
    s_state_t state = {0};
    cm_worker_t *worker = s_worker_start (gateway, &state, 1, 4, 1000);
    //  Room enough for it to start, however slow the machine.
    s_gateway_request (gateway, "a", "GET", "/slow", cm_clock_wall_ms () + 1500, NULL);
    s_gateway_wait_for (gateway, &state.slow_started, 1, "a to start");
    s_gateway_wait_for (gateway, &state.slow_cancelled, 1, "a to see its deadline");
    s_gateway_request (gateway, "b", "GET", "/count", 0, NULL);
    cm_msg_t *final = s_gateway_expect_final (gateway, "b", 200);
    cm_msg_destroy (&final);
    cr_assert_null (s_gateway_take (gateway, CM_MSG_FINAL, "a"), "a sent nothing");
    cm_worker_destroy (&worker);
    s_gateway_destroy (&gateway);
}

Test (cm_worker, malformed_frames_are_dropped_and_serving_goes_on, .timeout = 60)
{
    s_gateway_t *gateway = s_gateway_new ();
    s_state_t state = {0};
    cm_worker_t *worker = s_worker_start (gateway, &state, 2, 4, 1000);
    //  Not msgpack, empty, truncated, another version, and a type the gateway
    //  never sends.
    cr_assert_eq (s_gateway_send_frame (gateway, "not msgpack at all", 18), 0);
    cr_assert_eq (s_gateway_send_frame (gateway, "", 0), 0);
    cm_msg_t *msg = cm_msg_new (CM_MSG_CANCEL);
    cm_msg_set_request_id (msg, "v2");
    char *data;
    size_t size;
    cm_msg_encode (msg, &data, &size);
    //  Truncated...
    cr_assert_eq (s_gateway_send_frame (gateway, data, size - 1), 0);
    //  ...and whole but of another version.
    cr_assert_eq ((unsigned char) data[1], CM_MSG_VERSION,
                  "version right after the array");
    data[1] = CM_MSG_VERSION + 1;
    cr_assert_eq (s_gateway_send_frame (gateway, data, size), 0);
    free (data);
    cm_msg_destroy (&msg);
    msg = cm_msg_new (CM_MSG_FINAL);
    cm_msg_set_request_id (msg, "odd");
    cm_msg_set_status (msg, 200);
    s_gateway_send (gateway, &msg);

    s_gateway_request (gateway, "e1", "POST", "/echo", 0, "{}");
    cm_msg_t *final = s_gateway_expect_final (gateway, "e1", 200);
    cm_msg_destroy (&final);
    cr_assert_eq (cm_worker_served (worker), 1, "bad frames are not requests");
    cr_assert_null (s_gateway_take (gateway, CM_MSG_READY, NULL), "no reconnect");
    cm_worker_destroy (&worker);
    s_gateway_destroy (&gateway);
}

Test (cm_worker, disconnect_from_gateway_makes_worker_say_ready_again, .timeout = 60)
{
    s_gateway_t *gateway = s_gateway_new ();
    s_state_t state = {0};
    cm_worker_t *worker = s_worker_start (gateway, &state, 2, 4, 1000);
    //  "I do not know you" (the gateway restarted): register again.
    cm_msg_t *msg = cm_msg_new (CM_MSG_DISCONNECT);
    cm_msg_set_reason (msg, "unknown instance");
    s_gateway_send (gateway, &msg);
    cm_msg_t *ready = s_gateway_expect (gateway, CM_MSG_READY, NULL);
    cr_assert_str_eq (cm_msg_service (ready), "test");
    cr_assert_str_eq (cm_msg_instance (ready), S_INSTANCE);
    cr_assert_eq (cm_msg_capacity (ready), 2);
    cm_msg_destroy (&ready);
    s_gateway_request (gateway, "e1", "POST", "/echo", 0, "{}");
    cm_msg_t *final = s_gateway_expect_final (gateway, "e1", 200);
    cm_msg_destroy (&final);
    cm_worker_destroy (&worker);
    s_gateway_destroy (&gateway);
}

Test (cm_worker, silent_gateway_gets_one_ready_on_the_same_connection, .timeout = 60)
{
    s_gateway_t *gateway = s_gateway_new ();
    s_state_t state = {0};
    cm_worker_t *worker = s_worker_start (gateway, &state, 2, 4, 1000);
    s_gateway_wait_beat (gateway, 2);
    //  The gateway stops talking; the worker keeps beating for a while, then
    //  queues one READY for whenever the gateway is back.
    gateway->silent = true;
    size_t beats = gateway->beats;
    cm_msg_t *ready = s_gateway_expect (gateway, CM_MSG_READY, NULL);
    cr_assert_gt (gateway->beats, beats, "the worker beat while we were silent");
    cr_assert_str_eq (cm_msg_instance (ready), S_INSTANCE);
    cr_assert_eq (cm_msg_capacity (ready), 2);
    cm_msg_destroy (&ready);
    //  Still silent: no heartbeats and no second READY pile up meanwhile.
    beats = gateway->beats;
    int64_t until = cm_clock_mono_ms () + 4 * S_HEARTBEAT_MS * S_LIVENESS;
    while (cm_clock_mono_ms () < until)
        s_gateway_pump (gateway);
    cr_assert_eq (gateway->beats, beats, "the worker beat a silent gateway");
    cr_assert_null (s_gateway_take (gateway, CM_MSG_READY, NULL), "a second READY");
    //  The gateway talks again: the worker beats again, on the same
    //  connection. A new socket would connect with the same routing id and
    //  leave its old one to linger, which at a real gateway (ROUTER handover)
    //  made the instance unreachable once the old one closed.
    gateway->silent = false;
    s_gateway_wait_beat (gateway, 2);
    cr_assert_eq (gateway->strangers, 0, "a second connection took the routing id");
    s_gateway_request (gateway, "e1", "POST", "/echo", 0, "{}");
    cm_msg_t *final = s_gateway_expect_final (gateway, "e1", 200);
    cm_msg_destroy (&final);
    cr_assert_eq (gateway->strangers, 0);
    cm_worker_destroy (&worker);
    s_gateway_destroy (&gateway);
}

Test (cm_worker, a_restarted_gateway_hears_ready_first, .timeout = 60)
{
    //  Heartbeats far apart: before the fix, a restarted gateway learnt of
    //  the worker only from its next heartbeat (then asked it for READY),
    //  and requests meanwhile found no instance.
    s_gateway_t *gateway = s_gateway_new ();
    s_state_t state = {0};
    cm_worker_t *worker =
        s_worker_start_beating (gateway, &state, 2, 4, 1000, 3 * S_PATIENCE_MS);
    //  Twice, so that the READY is not the one queued at start.
    for (int round = 0; round < 2; round++) {
        s_gateway_restart (gateway);
        cm_msg_t *ready = s_gateway_expect (gateway, CM_MSG_READY, NULL);
        cr_assert_eq (gateway->first_type, CM_MSG_READY, "round %d: READY comes first",
                      round);
        cr_assert_str_eq (cm_msg_service (ready), "test");
        cr_assert_eq (cm_msg_capacity (ready), 2);
        cm_msg_destroy (&ready);
        //  Then its free slots, which READY does not say.
        s_gateway_wait_beat (gateway, 2);
        char id[16];
        snprintf (id, sizeof id, "r%d", round);
        s_gateway_request (gateway, id, "POST", "/echo", 0, "{}");
        cm_msg_t *final = s_gateway_expect_final (gateway, id, 200);
        cm_msg_destroy (&final);
    }
    cr_assert_eq (gateway->strangers, 0);
    cm_worker_destroy (&worker);
    s_gateway_destroy (&gateway);
}

//  The answer of GET /twice (request id) once the gate is open.
static bool
s_twice_answer (s_gateway_t *gateway, const char *id)
{
    cm_msg_t *final = s_gateway_expect_final (gateway, id, 200);
    size_t size;
    const char *body = cm_msg_body (final, &size);
    json_t *answer = json_loadb (body, size, 0, NULL);
    cr_assert (json_is_boolean (json_object_get (answer, "twice")), "%.*s", (int) size,
               body);
    bool twice = json_is_true (json_object_get (answer, "twice"));
    json_decref (answer);
    cm_msg_destroy (&final);
    return twice;
}

Test (cm_worker, a_call_knows_when_it_may_also_run_elsewhere, .timeout = 60)
{
    s_gateway_t *gateway = s_gateway_new ();
    s_state_t state = {0};
    cm_worker_t *worker = s_worker_start (gateway, &state, 2, 4, 1000);
    s_gateway_wait_beat (gateway, 2);
    //  An ordinary call: only here. (A starved machine can make the worker
    //  stand still for half the gateway's patience, which rightly makes a
    //  call doubtful: one of a few is enough.)
    atomic_store (&state.gate_open, true);
    bool only_here = false;
    for (int n = 0; n < 10 && !only_here; n++) {
        char id[16];
        snprintf (id, sizeof id, "t1-%d", n);
        s_gateway_request (gateway, id, "GET", "/twice", 0, NULL);
        only_here = !s_twice_answer (gateway, id);
    }
    cr_assert (only_here, "every quick call said it may run elsewhere");
    //  Sent a second time by the gateway (its first instance died).
    cm_msg_t *msg = cm_msg_new (CM_MSG_REQUEST);
    cm_msg_set_request_id (msg, "t2");
    cm_msg_set_service (msg, "test");
    cm_msg_set_method (msg, "GET");
    cm_msg_set_route (msg, "/twice");
    cm_msg_set_identity (msg, "tester");
    cm_msg_header_add (msg, "X-Llmrt-Attempt", "2");
    s_gateway_send (gateway, &msg);
    cr_assert (s_twice_answer (gateway, "t2"));
    //  A call that has run for half the gateway's patience (liveness
    //  heartbeats) may have spanned a stall after which the gateway gave
    //  this instance up and sent it elsewhere.
    atomic_store (&state.gate_open, false);
    int started = atomic_load (&state.gate_started);
    s_gateway_request (gateway, "t3", "GET", "/twice", 0, NULL);
    s_gateway_wait_for (gateway, &state.gate_started, started + 1, "t3 to start");
    int64_t until = cm_clock_mono_ms () + S_HEARTBEAT_MS * S_LIVENESS / 2 + 10;
    while (cm_clock_mono_ms () < until)
        s_gateway_pump (gateway);
    atomic_store (&state.gate_open, true);
    cr_assert (s_twice_answer (gateway, "t3"));
    cm_worker_destroy (&worker);
    s_gateway_destroy (&gateway);
}

//  cm_worker_destroy blocks while it drains, so a thread runs it.
typedef struct {
    cm_worker_t *worker; //  handed over to the thread, which destroys it
    atomic_int done;     //  1 once destroy returned
} s_stopper_t;

static void *
s_stopper (void *arg)
{
    s_stopper_t *stopper = arg;
    cm_worker_destroy (&stopper->worker);
    atomic_store (&stopper->done, 1);
    return NULL;
}

Test (cm_worker, destroy_drains_running_call_and_refuses_new_ones, .timeout = 60)
{
    s_gateway_t *gateway = s_gateway_new ();
    s_state_t state = {0};
    cm_worker_t *worker = s_worker_start (gateway, &state, 1, 4, 2 * S_PATIENCE_MS);
    s_gateway_request (gateway, "a", "GET", "/gate", 0, NULL);
    s_gateway_wait_for (gateway, &state.gate_started, 1, "a to start");

    s_stopper_t stopper = {.worker = worker};
    worker = NULL;
    pthread_t thread;
    cr_assert_eq (pthread_create (&thread, NULL, s_stopper, &stopper), 0);
    //  First the worker says it is leaving...
    cm_msg_t *bye = s_gateway_expect (gateway, CM_MSG_DISCONNECT, NULL);
    cr_assert_str_eq (cm_msg_reason (bye), "draining");
    cm_msg_destroy (&bye);
    //  ...so a request that crossed it on the wire is refused.
    s_gateway_request (gateway, "b", "POST", "/echo", 0, "{}");
    cm_msg_t *final = s_gateway_expect_final (gateway, "b", 503);
    cr_assert_str_eq (cm_msg_header (final, "Retry-After"), "1");
    cm_msg_destroy (&final);
    s_gateway_wait_beat (gateway, 0);
    cr_assert_eq (atomic_load (&stopper.done), 0, "destroy waits for a");

    //  The running call finishes within the drain time and its reply goes out.
    atomic_store (&state.gate_open, true);
    final = s_gateway_expect_final (gateway, "a", 200);
    json_t *body = s_json_body (final);
    cr_assert_str_eq (s_json_str (body, "gate"), "passed");
    json_decref (body);
    cm_msg_destroy (&final);
    s_gateway_wait_for (gateway, &stopper.done, 1, "destroy to return");
    pthread_join (thread, NULL);
    cr_assert_null (stopper.worker);
    s_gateway_destroy (&gateway);
}

Test (cm_worker, destroy_without_drain_cancels_running_calls, .timeout = 60)
{
    s_gateway_t *gateway = s_gateway_new ();
    s_state_t state = {0};
    cm_worker_t *worker = s_worker_start (gateway, &state, 1, 4, 0);
    s_gateway_request (gateway, "a", "GET", "/slow", 0, NULL);
    s_gateway_wait_for (gateway, &state.slow_started, 1, "a to start");
    s_gateway_request (gateway, "b", "GET", "/count", 0, NULL);
    //  The 404 comes after b was put in the worker's line.
    s_gateway_request (gateway, "n", "GET", "/nowhere", 0, NULL);
    cm_msg_t *final = s_gateway_expect_final (gateway, "n", 404);
    cm_msg_destroy (&final);
    cm_worker_destroy (&worker);
    cr_assert_eq (atomic_load (&state.slow_cancelled), 1, "a was told to stop");
    cr_assert_eq (atomic_load (&state.counted), 0, "b never ran");
    //  Goodbye first, then the 503s: a gateway must know the instance drains
    //  before it reads them, or it passes them on instead of resending.
    int bye_at = -1, a_at = -1, b_at = -1;
    int64_t until = cm_clock_mono_ms () + S_PATIENCE_MS;
    while ((bye_at < 0 || a_at < 0 || b_at < 0) && cm_clock_mono_ms () < until) {
        s_gateway_pump (gateway);
        bye_at = a_at = b_at = -1;
        int i = 0;
        for (cm_msg_t *msg = zlist_first (gateway->inbox); msg;
             msg = zlist_next (gateway->inbox), i++) {
            if (cm_msg_type (msg) == CM_MSG_DISCONNECT && bye_at < 0)
                bye_at = i;
            else if (cm_msg_type (msg) == CM_MSG_FINAL &&
                     !strcmp (cm_msg_request_id (msg), "a"))
                a_at = i;
            else if (cm_msg_type (msg) == CM_MSG_FINAL &&
                     !strcmp (cm_msg_request_id (msg), "b"))
                b_at = i;
        }
    }
    cr_assert (bye_at >= 0 && a_at > bye_at && b_at > bye_at,
               "DISCONNECT at %d, a's 503 at %d, b's at %d", bye_at, a_at, b_at);
    //  The waiting call is refused; the socket's linger delivers it.
    final = s_gateway_expect_final (gateway, "b", 503);
    cr_assert_str_eq (cm_msg_header (final, "Retry-After"), "1");
    cm_msg_destroy (&final);
    cm_msg_t *bye = s_gateway_expect (gateway, CM_MSG_DISCONNECT, NULL);
    cm_msg_destroy (&bye);
    //  The running one, cut short by the shutdown (not by its client), is
    //  answered 503 before the worker goes, after its goodbye: the gateway
    //  then knows it drains and may send the request on.
    final = s_gateway_expect_final (gateway, "a", 503);
    cm_msg_destroy (&final);
    s_gateway_destroy (&gateway);
}

Test (cm_worker, route_match_params_and_segments)
{
    cr_assert (cm_route_match ("/echo", "/echo"));
    cr_assert_not (cm_route_match ("/echo", "/echoes"));
    //  One trailing slash, as Express allows; not two.
    cr_assert (cm_route_match ("/echo", "/echo/"));
    cr_assert_not (cm_route_match ("/echo", "/echo//"));
    cr_assert (cm_route_match ("/a/{x}", "/a/7/"));
    //  A segment is matched raw: "%2F" does not split it; "%00" matches nothing.
    cr_assert (cm_route_match ("/a/{x}", "/a/b%2Fc"));
    cr_assert_not (cm_route_match ("/a/{x}", "/a/b%00"));
    cr_assert (cm_route_match ("/a/{x}", "/a/b%2500"));
    cr_assert_not (cm_route_match ("/echo/x", "/echo"));
    cr_assert (cm_route_match ("/a/{x}", "/a/7"));
    cr_assert (cm_route_match ("/a/{x}/b/{y}", "/a/7/b/some-thing"));
    cr_assert (cm_route_match ("/{x}/{y}", "/1/2"));
    //  "{name}" is one non-empty segment, no more, no less.
    cr_assert_not (cm_route_match ("/a/{x}", "/a/"));
    cr_assert_not (cm_route_match ("/a/{x}", "/a"));
    cr_assert_not (cm_route_match ("/a/{x}", "/a/7/8"));
    cr_assert_not (cm_route_match ("/a/{x}/b", "/a//b"));
    cr_assert_not (cm_route_match ("/a/{x}/b", "/a/7/c"));
    //  Literal segments ignore case, as Express's routes do by default.
    cr_assert (cm_route_match ("/api/v1/workspaces", "/API/V1/Workspaces"));
    cr_assert (cm_route_match ("/a/{x}/b", "/A/Seven/B"));
}

//  --- metrics ---------------------------------------------------------------

Test (cm_worker, counts_requests_per_route_in_its_registry, .timeout = 60)
{
    s_gateway_t *gateway = s_gateway_new ();
    s_state_t state = {0};
    //  A registry of the daemon's own (the breaker's series go there too).
    cm_metrics_t *metrics = cm_metrics_new ();
    cm_worker_config_t config = {
        .service = "test",
        .instance = S_INSTANCE,
        .endpoint = gateway->endpoint,
        .concurrency = 2,
        .max_pending = 4,
        .heartbeat_ms = S_HEARTBEAT_MS,
        .liveness = S_LIVENESS,
        .drain_ms = 1000,
        .routes = s_routes,
        .arg = &state,
        .metrics = metrics,
    };
    cm_worker_t *worker = cm_worker_new (&config);
    cr_assert_eq (cm_worker_metrics (worker), metrics);
    strcpy (gateway->peer, S_INSTANCE);
    cm_msg_t *msg = s_gateway_expect (gateway, CM_MSG_READY, NULL);
    cm_msg_destroy (&msg);
    s_gateway_request (gateway, "c1", "GET", "/count", 0, NULL);
    s_gateway_request (gateway, "c2", "GET", "/count?again=1", 0, NULL);
    s_gateway_request (gateway, "e1", "POST", "/echo", 0, "{}");
    s_gateway_request (gateway, "x1", "GET", "/nowhere", 0, NULL);
    const char *ids[] = {"c1", "c2", "e1"};
    for (int i = 0; i < 3; i++) {
        msg = s_gateway_expect_final (gateway, ids[i], 200);
        cm_msg_destroy (&msg);
    }
    msg = s_gateway_expect_final (gateway, "x1", 404);
    cm_msg_destroy (&msg);
    //  A duration is observed just after the reply is posted: poll.
    const char *count[] = {"method", "GET", "route", "/count", NULL};
    int64_t until = cm_clock_mono_ms () + S_PATIENCE_MS;
    json_t *snapshot = cm_metrics_snapshot (metrics);
    while (cm_metrics_sum (snapshot, "llmrt_worker_request_duration_seconds", count) <
           2) {
        cr_assert_lt (cm_clock_mono_ms (), until, "durations were not observed");
        json_decref (snapshot);
        s_gateway_pump (gateway);
        snapshot = cm_metrics_snapshot (metrics);
    }
    cr_assert_eq (cm_metrics_sum (snapshot, "llmrt_worker_requests_total", count), 2);
    const char *echo[] = {"method", "POST", "route", "/echo", NULL};
    cr_assert_eq (cm_metrics_sum (snapshot, "llmrt_worker_requests_total", echo), 1);
    const char *slow[] = {"method", "GET", "route", "/slow", NULL};
    cr_assert_not_null (cm_metrics_series (snapshot, "llmrt_worker_requests_total", slow),
                        "every route has its series from the start");
    cr_assert_eq (cm_metrics_sum (snapshot, "llmrt_worker_requests_total", NULL), 3);
    cr_assert_eq (
        cm_metrics_sum (snapshot, "llmrt_worker_unmatched_requests_total", NULL), 1);
    json_decref (snapshot);
    cm_worker_destroy (&worker);
    //  The registry is the caller's: it outlives the worker.
    cm_metrics_destroy (&metrics);
    s_gateway_destroy (&gateway);
}

Test (cm_worker, reports_its_registry_to_the_supervisor, .timeout = 60)
{
    s_gateway_t *gateway = s_gateway_new ();
    s_state_t state = {0};
    zsock_t *supervisor = zsock_new (ZMQ_ROUTER);
    int port = zsock_bind (supervisor, "tcp://127.0.0.1:*");
    cr_assert_gt (port, 0);
    char endpoint[64];
    snprintf (endpoint, sizeof endpoint, "tcp://127.0.0.1:%d", port);
    cm_worker_config_t config = {
        .service = "test",
        .instance = S_INSTANCE,
        .endpoint = gateway->endpoint,
        .concurrency = 1,
        .heartbeat_ms = S_HEARTBEAT_MS,
        .liveness = S_LIVENESS,
        .routes = s_routes,
        .arg = &state,
        .supervisor = endpoint,
        .report_ms = 20,
    };
    cm_worker_t *worker = cm_worker_new (&config);
    strcpy (gateway->peer, S_INSTANCE);
    cm_msg_t *msg = s_gateway_expect (gateway, CM_MSG_READY, NULL);
    cm_msg_destroy (&msg);
    s_gateway_request (gateway, "c1", "GET", "/count", 0, NULL);
    msg = s_gateway_expect_final (gateway, "c1", 200);
    cm_msg_destroy (&msg);
    //  Reports come until one counts the request.
    const char *count[] = {"method", "GET", "route", "/count", NULL};
    int64_t until = cm_clock_mono_ms () + S_PATIENCE_MS;
    bool seen = false;
    while (!seen) {
        cr_assert_lt (cm_clock_mono_ms (), until, "no report counts the request");
        s_gateway_pump (gateway);
        zmsg_t *zmsg = zmsg_recv_nowait (supervisor);
        if (!zmsg)
            continue;
        zframe_t *frame = zmsg_last (zmsg);
        char err[256];
        cm_metrics_msg_t *report = cm_metrics_msg_decode (
            zframe_data (frame), zframe_size (frame), err, sizeof err);
        cr_assert_not_null (report, "%s", err);
        cr_assert_str_eq (cm_metrics_msg_service (report), "test");
        cr_assert_str_eq (cm_metrics_msg_instance (report), S_INSTANCE);
        seen = cm_metrics_sum (cm_metrics_msg_body (report),
                               "llmrt_worker_requests_total", count) == 1;
        cm_metrics_msg_destroy (&report);
        zmsg_destroy (&zmsg);
    }
    cm_worker_destroy (&worker);
    zsock_destroy (&supervisor);
    s_gateway_destroy (&gateway);
}

Test (cm_worker, common_settings_that_cannot_work_are_refused_by_name)
{
    //  INSTANCE_ID is the gateway's ZeroMQ routing id for us: 1..255
    //  bytes (a longer one made czmq abort), printable, no spaces.
    char too_long[257], longest[256];
    memset (too_long, 'i', 256);
    too_long[256] = 0;
    memset (longest, 'i', 255);
    longest[255] = 0;
    static const struct {
        const char *name;
        const char *value;
    } bad[] = {
        {"INSTANCE_ID", NULL}, //  too_long
        {"INSTANCE_ID", "a\nb"},
        {"INSTANCE_ID", " "},
        {"INSTANCE_ID", "chat 1"},
        {"GATEWAY_ENDPOINT", "tcp://*:5990"},
        {"GATEWAY_ENDPOINT", "tcp://127.0.0.1:*"},
        {"GATEWAY_ENDPOINT", "tcp://127.0.0.1:0"},
        {"GATEWAY_ENDPOINT", "tcp://127.0.0.1: 5990"},
        {"GATEWAY_ENDPOINT", "tcp://127.0.0.1:+5990"},
        {"GATEWAY_ENDPOINT", "inproc://x"},
        {"SUPERVISOR_ENDPOINT", "tcp://*:5556"},
        {"LOG_LEVEL", "verbose"},
        {"LOG_LEVEL", "trace"},
        {"LOG_LEVEL", "0"},
    };
    char err[512];
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        const char *value = bad[i].value ? bad[i].value : too_long;
        setenv (bad[i].name, value, 1);
        err[0] = 0;
        cr_assert_eq (cm_worker_config_check (err, sizeof err), -1, "%s=%s was accepted",
                      bad[i].name, value);
        cr_assert (strstr (err, bad[i].name), "error was: %s", err);
        unsetenv (bad[i].name);
    }
    setenv ("INSTANCE_ID", longest, 1);
    setenv ("GATEWAY_ENDPOINT", "ipc:///tmp/gateway.sock", 1);
    setenv ("LOG_LEVEL", "WARNING", 1);
    cr_assert_eq (cm_worker_config_check (err, sizeof err), 0, "%s", err);
    unsetenv ("INSTANCE_ID");
    unsetenv ("GATEWAY_ENDPOINT");
    unsetenv ("LOG_LEVEL");
    cr_assert_eq (cm_worker_config_check (err, sizeof err), 0, "%s", err);
    cm_log_set_level (CM_LOG_INFO);
}

Test (cm_worker, help_lists_the_common_settings_log_level_included)
{
    bool log_level = false, instance = false;
    for (const cm_conf_entry_t *e = cm_worker_config_table (); e->name; e++) {
        log_level |= !strcmp (e->name, "LOG_LEVEL");
        instance |= !strcmp (e->name, "INSTANCE_ID") && e->type == CM_CONF_TOKEN;
    }
    cr_assert (log_level);
    cr_assert (instance);
}

//  The gateway's CHECK, after a connection that broke.
static void
s_gateway_check (s_gateway_t *self, const char *id)
{
    static uint32_t generation;
    cm_msg_t *msg = cm_msg_new (CM_MSG_CHECK);
    cm_msg_set_request_id (msg, id);
    cm_msg_set_generation (msg, ++generation);
    s_gateway_send (self, &msg);
}

Test (cm_worker, check_says_which_requests_it_holds, .timeout = 60)
{
    //  The gateway asks after its connection to us broke: what we hold, and
    //  how many stream parts we sent, all of which are on the wire before
    //  the answer.
    s_gateway_t *gateway = s_gateway_new ();
    s_state_t state = {0};
    cm_worker_t *worker = s_worker_start (gateway, &state, 2, 4, 1000);
    s_gateway_request (gateway, "g1", "GET", "/stream/gate", 0, NULL);
    s_gateway_wait_for (gateway, &state.gate_started, 1, "the stream to wait");
    s_gateway_check (gateway, "g1");
    cm_msg_t *checked = s_gateway_expect (gateway, CM_MSG_CHECKED, "g1");
    cr_assert (cm_msg_held (checked));
    cr_assert_eq (cm_msg_partials (checked), 2);
    cr_assert_gt (cm_msg_generation (checked), 0, "the CHECK's generation is echoed");
    cm_msg_destroy (&checked);
    for (int n = 0; n < 2; n++) {
        cm_msg_t *part = s_gateway_take (gateway, CM_MSG_PARTIAL, "g1");
        cr_assert_not_null (part, "stream part %d came after the answer", n);
        cm_msg_destroy (&part);
    }

    //  A request it never got.
    s_gateway_check (gateway, "never");
    checked = s_gateway_expect (gateway, CM_MSG_CHECKED, "never");
    cr_assert_not (cm_msg_held (checked));
    cr_assert_eq (cm_msg_partials (checked), 0);
    cm_msg_destroy (&checked);

    //  One it answered: the answer went first.
    s_gateway_request (gateway, "c1", "GET", "/count", 0, NULL);
    cm_msg_t *final = s_gateway_expect_final (gateway, "c1", 200);
    cm_msg_destroy (&final);
    s_gateway_check (gateway, "c1");
    checked = s_gateway_expect (gateway, CM_MSG_CHECKED, "c1");
    cr_assert_not (cm_msg_held (checked));
    cm_msg_destroy (&checked);

    //  The stream once it ended.
    atomic_store (&state.gate_open, true);
    final = s_gateway_expect_final (gateway, "g1", 200);
    cm_msg_destroy (&final);
    s_gateway_check (gateway, "g1");
    checked = s_gateway_expect (gateway, CM_MSG_CHECKED, "g1");
    cr_assert_not (cm_msg_held (checked));
    cr_assert_eq (cm_msg_partials (checked), 0);
    cm_msg_destroy (&checked);
    cm_worker_destroy (&worker);
    s_gateway_destroy (&gateway);
}

//  While parts pour out, every CHECK's answer counts exactly the parts that
//  reached the gateway before it: fewer (a part posted between the count
//  and the flush: a review found it) would hide a lost one, more would
//  abort a stream that lost nothing.
Test (cm_worker, a_checks_count_is_the_parts_before_it, .timeout = 60)
{
    s_gateway_t *gateway = s_gateway_new ();
    s_state_t state = {0};
    cm_worker_t *worker = s_worker_start (gateway, &state, 2, 4, 1000);
    s_gateway_request (gateway, "m1", "GET", "/stream/many", 0, NULL);
    int received = 0, answers = 0;
    bool asking = false, ended = false;
    int64_t until = cm_clock_mono_ms () + S_PATIENCE_MS;
    while (!ended) {
        cr_assert_lt (cm_clock_mono_ms (), until, "the stream did not end");
        s_gateway_pump (gateway);
        cm_msg_t *msg;
        while ((msg = zlist_pop (gateway->inbox))) {
            cm_msg_type_t type = cm_msg_type (msg);
            if (type == CM_MSG_PARTIAL)
                received++;
            else if (type == CM_MSG_FINAL)
                ended = true;
            else if (type == CM_MSG_CHECKED) {
                asking = false;
                cr_assert (cm_msg_held (msg), "the stream runs until 50 answers came");
                cr_assert_eq ((int) cm_msg_partials (msg), received,
                              "answer %d counted %u parts, %d had arrived", answers,
                              cm_msg_partials (msg), received);
                //  Enough: let the stream end.
                if (++answers == 50)
                    atomic_store (&state.gate_open, true);
            }
            cm_msg_destroy (&msg);
        }
        if (!asking && !ended && received > 0 && answers < 50) {
            s_gateway_check (gateway, "m1");
            asking = true;
        }
    }
    cr_assert_eq (answers, 50);
    cm_worker_destroy (&worker);
    s_gateway_destroy (&gateway);
}

//  A quick route does not wait behind the main queue's long calls: with
//  the queue's one slot held and its line full, it is still served, on
//  the quick lane; without a lane it would be refused (429).
Test (cm_worker, quick_routes_do_not_wait_behind_long_calls, .timeout = 60)
{
    for (int lane = 1; lane >= 0; lane--) {
        s_gateway_t *gateway = s_gateway_new ();
        s_state_t state = {0};
        cm_worker_config_t config = {
            .service = "test",
            .instance = S_INSTANCE,
            .concurrency = 1,
            .max_pending = 1,
            .quick_concurrency = (size_t) lane,
            .quick_max_pending = 4,
            .heartbeat_ms = S_HEARTBEAT_MS,
            .liveness = S_LIVENESS,
            .drain_ms = 1000,
            .routes = s_routes,
            .arg = &state,
        };
        cm_worker_t *worker = s_worker_start_config (gateway, &config);
        s_gateway_request (gateway, "long", "GET", "/gate", 0, NULL);
        s_gateway_wait_for (gateway, &state.gate_started, 1, "the long call to start");
        s_gateway_request (gateway, "waits", "GET", "/gate", 0, NULL);
        s_gateway_request (gateway, "quick", "GET", "/count/quick", 0, NULL);
        cm_msg_t *final = s_gateway_expect (gateway, CM_MSG_FINAL, "quick");
        cr_assert_eq (cm_msg_status (final), lane ? 200 : 429, "lane %d: status %d", lane,
                      cm_msg_status (final));
        cm_msg_destroy (&final);
        atomic_store (&state.gate_open, true);
        const char *ids[] = {"long", "waits"};
        for (int i = 0; i < 2; i++) {
            final = s_gateway_expect_final (gateway, ids[i], 200);
            cm_msg_destroy (&final);
        }
        cm_worker_destroy (&worker);
        s_gateway_destroy (&gateway);
    }
}
