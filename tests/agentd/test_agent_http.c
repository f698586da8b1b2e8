/*  test_agent_http.c: the outbound HTTP of flows: which addresses are
    refused, the allowlist, and real calls against a server on loopback
    (tests/agent_http): the request as sent, redirects re-checked at every
    hop, the body cap, the timeout and cancellation. */
#include <criterion/criterion.h>
#include <curl/curl.h>
#include <jansson.h>
#include <pthread.h>
#include <stdatomic.h>
#include <unistd.h>
#include "agent_http.h"
#include "agent_http_server.h"

Test (agent_http, classifies_addresses)
{
    const char *blocked[] = {"127.0.0.1",
                             "127.1.2.3",
                             "0.0.0.0",
                             "10.1.2.3",
                             "172.16.0.1",
                             "172.31.255.255",
                             "192.168.1.1",
                             "169.254.169.254",
                             "100.64.0.1",
                             "224.0.0.1",
                             "255.255.255.255",
                             "::1",
                             "::",
                             "fe80::1",
                             "fc00::1",
                             "fd12::3",
                             "::ffff:127.0.0.1",
                             "::ffff:10.0.0.1",
                             "64:ff9b::a00:1",
                             "2002:7f00:1::",
                             "ff02::1"};
    const char *public_[] = {"8.8.8.8",     "172.15.255.255",  "172.32.0.1",
                             "192.169.0.1", "1.1.1.1",         "100.63.255.255",
                             "2001:db8::1", "2606:4700::1111", "::ffff:8.8.8.8"};
    for (size_t i = 0; i < sizeof blocked / sizeof blocked[0]; i++)
        cr_expect (agent_http_text_blocked (blocked[i]), "%s should be blocked",
                   blocked[i]);
    for (size_t i = 0; i < sizeof public_ / sizeof public_[0]; i++)
        cr_expect (!agent_http_text_blocked (public_[i]), "%s should be allowed",
                   public_[i]);
}

Test (agent_http, allowlist_matches_whole_host_names)
{
    cr_assert (agent_http_allowed ("localhost, api.internal ,x", "LOCALHOST"));
    cr_assert (agent_http_allowed ("localhost, api.internal ,x", "api.internal"));
    cr_assert (agent_http_allowed ("localhost,x", "x"));
    cr_assert (!agent_http_allowed ("localhost", "localhost.evil.com"));
    cr_assert (!agent_http_allowed ("xlocalhost", "localhost"));
    cr_assert (!agent_http_allowed (NULL, "localhost"));
    cr_assert (!agent_http_allowed ("", "localhost"));
}

Test (agent_http, allowlist_ip_addresses_match_by_value)
{
    //  libcurl writes "[0:0:0:0:0:0:0:1]" as "::1" and keeps "::FFFF:127.0.0.1".
    cr_assert (agent_http_allowed ("0:0:0:0:0:0:0:1", "::1"));
    cr_assert (agent_http_allowed ("::ffff:7f00:1", "::FFFF:127.0.0.1"));
    cr_assert (agent_http_allowed ("10.0.0.1", "10.0.0.1"));
    cr_assert (!agent_http_allowed ("10.0.0.1", "10.0.0.10"));
    cr_assert (!agent_http_allowed ("::1", "::2"));
}

Test (agent_http, allowlist_items_must_be_what_the_matcher_can_match)
{
    char err[512];
    static const char *good[] = {NULL,
                                 "localhost",
                                 " api.internal , x ,LOCALHOST",
                                 "my_service,host-1.example.com.",
                                 "127.0.0.1,::1,fe80::1",
                                 "0x7f.example"};
    for (size_t i = 0; i < sizeof good / sizeof *good; i++)
        cr_assert_eq (agent_http_allowlist_check (good[i], err, sizeof err), 0, "%s: %s",
                      good[i], err);
    static const struct {
        const char *list;
        const char *says;
    } bad[] = {
        {"http://example.com", "item 1 'http://example.com' is not a host name"},
        {"ok,host:8080", "item 2 'host:8080'"},
        {"*.example.com", "'*.example.com'"},
        {"127.0.0.1/8", "'127.0.0.1/8'"},
        {"a b", "'a b'"},
        {",,", "item 1 '' is empty"},
        {"a,,b", "item 2 '' is empty"},
        {"a,", "item 2 '' is empty"},
        {"[::1]", "without them"},
        {"127.1", "'127.1'"},
        {"256.0.0.1", "'256.0.0.1'"},
        {"0x7f.1", "'0x7f.1'"},
        {"a..b", "'a..b'"},
        {"caf\xc3\xa9.example", "is not a host name"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        err[0] = 0;
        cr_assert_eq (agent_http_allowlist_check (bad[i].list, err, sizeof err), -1, "%s",
                      bad[i].list);
        cr_assert (strstr (err, "AGENT_HTTP_ALLOWLIST: ") && strstr (err, bad[i].says),
                   "%s: %s", bad[i].list, err);
    }
}

static ah_server_t *s_server;

static void
s_setup (void)
{
    curl_global_init (CURL_GLOBAL_DEFAULT);
    s_server = ah_server_start ();
}

static void
s_teardown (void)
{
    ah_server_stop (&s_server);
    curl_global_cleanup ();
}

static agent_http_result_t
s_get (const char *allowlist, const char *path, agent_http_response_t *response,
       char *err)
{
    char url[512];
    snprintf (url, sizeof url, "http://127.0.0.1:%d%s", ah_server_port (s_server), path);
    agent_http_request_t request = {.method = "GET",
                                    .url = url,
                                    .allowlist = allowlist,
                                    .max_bytes = 1 << 20,
                                    .timeout_ms = 10000};
    return agent_http_call (&request, response, err, 512);
}

Test (agent_http, sends_the_request_as_given, .init = s_setup, .fini = s_teardown)
{
    char url[256], err[512];
    snprintf (url, sizeof url, "http://127.0.0.1:%d/echo/x?q=1",
              ah_server_port (s_server));
    const char *headers[] = {"X-Token: abc", "Content-Type: application/json", NULL};
    agent_http_request_t request = {.method = "PUT",
                                    .url = url,
                                    .headers = headers,
                                    .body = "{\"a\":1}",
                                    .body_size = 7,
                                    .allowlist = "127.0.0.1",
                                    .max_bytes = 1 << 20,
                                    .timeout_ms = 10000};
    agent_http_response_t response;
    cr_assert_eq (agent_http_call (&request, &response, err, sizeof err), AGENT_HTTP_OK,
                  "%s", err);
    cr_assert_eq (response.status, 200);
    cr_assert (strstr (response.content_type, "application/json"));
    json_t *echo = json_loads (response.body, 0, NULL);
    cr_assert_str_eq (json_string_value (json_object_get (echo, "method")), "PUT");
    cr_assert_str_eq (json_string_value (json_object_get (echo, "path")), "/echo/x?q=1");
    cr_assert_str_eq (json_string_value (json_object_get (echo, "body")), "{\"a\":1}");
    cr_assert_str_eq (json_string_value (
                          json_object_get (json_object_get (echo, "headers"), "x-token")),
                      "abc");
    json_decref (echo);
    agent_http_response_free (&response);
}

Test (agent_http, refuses_loopback_unless_allowlisted, .init = s_setup,
      .fini = s_teardown)
{
    agent_http_response_t response;
    char err[512];
    cr_assert_eq (s_get (NULL, "/echo", &response, err), AGENT_HTTP_REFUSED);
    cr_assert (strstr (err, "refused to connect to 127.0.0.1"), "%s", err);
    cr_assert (strstr (err, "AGENT_HTTP_ALLOWLIST"), "%s", err);
    agent_http_response_free (&response);
    cr_assert_eq (ah_server_hits (s_server, NULL), 0, "the server was reached");
    cr_assert_eq (s_get ("other.host", "/echo", &response, err), AGENT_HTTP_REFUSED);
    agent_http_response_free (&response);
    cr_assert_eq (s_get ("127.0.0.1", "/echo", &response, err), AGENT_HTTP_OK, "%s", err);
    agent_http_response_free (&response);
    cr_assert_eq (ah_server_hits (s_server, NULL), 1);
}

Test (agent_http, checks_every_redirect_hop, .init = s_setup, .fini = s_teardown)
{
    int port = ah_server_port (s_server);
    char path[256];
    agent_http_response_t response;
    char err[512];
    //  Allowed hop to an allowed hop: followed.
    snprintf (path, sizeof path, "/redirect?to=http://127.0.0.1:%d/echo/after", port);
    cr_assert_eq (s_get ("127.0.0.1", path, &response, err), AGENT_HTTP_OK, "%s", err);
    cr_assert_eq (response.status, 200);
    cr_assert (strstr (response.body, "/echo/after"));
    agent_http_response_free (&response);
    //  Allowed host (localhost) redirecting to a loopback address that is not.
    ah_server_reset (s_server);
    char url[512];
    snprintf (url, sizeof url,
              "http://localhost:%d/redirect?to=http://127.0.0.1:%d/echo/secret", port,
              port);
    agent_http_request_t request = {.method = "GET",
                                    .url = url,
                                    .allowlist = "localhost",
                                    .max_bytes = 1 << 20,
                                    .timeout_ms = 10000};
    cr_assert_eq (agent_http_call (&request, &response, err, sizeof err),
                  AGENT_HTTP_REFUSED, "%s", err);
    cr_assert (strstr (err, "127.0.0.1"), "%s", err);
    agent_http_response_free (&response);
    cr_assert_eq (ah_server_hits (s_server, "/redirect"), 1);
    cr_assert_eq (ah_server_hits (s_server, "/echo"), 0,
                  "the redirect target was reached");
    //  A loop ends.
    snprintf (url, sizeof url,
              "http://127.0.0.1:%d/redirect?to=/redirect?to=/redirect?to="
              "/redirect?to=/redirect?to=/redirect?to=/redirect?to=/echo",
              port);
    request.url = url;
    request.allowlist = "127.0.0.1";
    cr_assert_eq (agent_http_call (&request, &response, err, sizeof err),
                  AGENT_HTTP_REFUSED);
    cr_assert (strstr (err, "redirects"), "%s", err);
    agent_http_response_free (&response);
}

Test (agent_http, refuses_other_schemes_and_bad_urls, .init = s_setup, .fini = s_teardown)
{
    const char *urls[] = {"file:///etc/passwd", "gopher://127.0.0.1/", "not a url",
                          "ftp://x/"};
    for (size_t i = 0; i < sizeof urls / sizeof urls[0]; i++) {
        agent_http_request_t request = {
            .method = "GET", .url = urls[i], .max_bytes = 100, .timeout_ms = 1000};
        agent_http_response_t response;
        char err[512];
        cr_assert_eq (agent_http_call (&request, &response, err, sizeof err),
                      AGENT_HTTP_REFUSED, "%s", urls[i]);
        agent_http_response_free (&response);
    }
}

Test (agent_http, caps_the_body, .init = s_setup, .fini = s_teardown)
{
    agent_http_response_t response;
    char err[512];
    cr_assert_eq (s_get ("127.0.0.1", "/big", &response, err), AGENT_HTTP_TOO_LARGE);
    cr_assert (strstr (err, "larger than 1048576 bytes"), "%s", err);
    agent_http_response_free (&response);
}

static atomic_bool s_cancel;
static bool
s_cancelled (void *arg)
{
    (void) arg;
    return s_cancel;
}

static void *
s_cancel_later (void *arg)
{
    (void) arg;
    while (ah_server_hits (s_server, "/slow") == 0)
        usleep (5000);
    usleep (100 * 1000);
    s_cancel = true;
    return NULL;
}

static bool
s_gone (void)
{
    for (int i = 0; i < 500; i++) {
        if (ah_server_gone (s_server) > 0)
            return true;
        usleep (10 * 1000);
    }
    return false;
}

Test (agent_http, cancel_aborts_the_call_and_the_server_sees_it, .init = s_setup,
      .fini = s_teardown)
{
    char url[256], err[512];
    snprintf (url, sizeof url, "http://127.0.0.1:%d/slow?ms=20000",
              ah_server_port (s_server));
    agent_http_request_t request = {.method = "GET",
                                    .url = url,
                                    .allowlist = "127.0.0.1",
                                    .max_bytes = 1000,
                                    .timeout_ms = 60000,
                                    .cancelled = s_cancelled};
    pthread_t thread;
    s_cancel = false;
    pthread_create (&thread, NULL, s_cancel_later, NULL);
    agent_http_response_t response;
    cr_assert_eq (agent_http_call (&request, &response, err, sizeof err),
                  AGENT_HTTP_CANCELLED, "%s", err);
    pthread_join (thread, NULL);
    agent_http_response_free (&response);
    cr_assert (s_gone (), "the server never saw the client go");
}

Test (agent_http, timeout_ends_the_call, .init = s_setup, .fini = s_teardown)
{
    char url[256], err[512];
    snprintf (url, sizeof url, "http://127.0.0.1:%d/slow?ms=20000",
              ah_server_port (s_server));
    agent_http_request_t request = {.method = "GET",
                                    .url = url,
                                    .allowlist = "127.0.0.1",
                                    .max_bytes = 1000,
                                    .timeout_ms = 300};
    agent_http_response_t response;
    cr_assert_eq (agent_http_call (&request, &response, err, sizeof err),
                  AGENT_HTTP_TIMEOUT, "%s", err);
    agent_http_response_free (&response);
    cr_assert (s_gone (), "the server never saw the client go");
}

//  A header value from a variable (an earlier step's response, say) must not
//  add header lines of its own: a line break in a header refuses the call.
Test (agent_http, refuses_line_breaks_in_headers, .init = s_setup, .fini = s_teardown)
{
    char url[256], err[512];
    snprintf (url, sizeof url, "http://127.0.0.1:%d/echo", ah_server_port (s_server));
    const char *bad[] = {"X-A: a\r\nX-Injected: 1", "X-A: a\nX-Injected: 1",
                         "X-A: a\rX-Injected: 1"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        const char *headers[] = {"X-Ok: 1", bad[i], NULL};
        agent_http_request_t request = {.method = "GET",
                                        .url = url,
                                        .headers = headers,
                                        .allowlist = "127.0.0.1",
                                        .max_bytes = 1 << 20,
                                        .timeout_ms = 10000};
        agent_http_response_t response;
        cr_assert_eq (agent_http_call (&request, &response, err, sizeof err),
                      AGENT_HTTP_REFUSED, "header %zu was sent", i);
        cr_assert (strstr (err, "line break"), "%s", err);
        cr_assert (strstr (err, "X-A"), "%s", err);
        agent_http_response_free (&response);
    }
    cr_assert_eq (ah_server_hits (s_server, NULL), 0, "the server was reached");
}

//  Other spellings of loopback, and a proxy from the environment, do not get
//  around the check made on the socket's address.
Test (agent_http, refuses_other_spellings_of_loopback, .init = s_setup,
      .fini = s_teardown)
{
    int port = ah_server_port (s_server);
    setenv ("http_proxy", "http://192.0.2.1:9", 1); //  would time out if used
    setenv ("HTTP_PROXY", "http://192.0.2.1:9", 1);
    setenv ("ALL_PROXY", "http://192.0.2.1:9", 1);
    const char *hosts[] = {
        "2130706433", "0177.0.0.1",         "0x7f.1", "127.1",     "0",
        "0.0.0.0",    "[::ffff:127.0.0.1]", "[::1]",  "localhost", "localhost@127.0.0.1"};
    for (size_t i = 0; i < sizeof hosts / sizeof hosts[0]; i++) {
        char url[256], err[512];
        snprintf (url, sizeof url, "http://%s:%d/echo", hosts[i], port);
        agent_http_request_t request = {.method = "GET",
                                        .url = url,
                                        .allowlist = "localhost.evil,127.0.0.2",
                                        .max_bytes = 1 << 20,
                                        .timeout_ms = 5000};
        agent_http_response_t response;
        agent_http_result_t result =
            agent_http_call (&request, &response, err, sizeof err);
        cr_expect_eq (result, AGENT_HTTP_REFUSED, "%s: %d %s", url, result, err);
        agent_http_response_free (&response);
    }
    unsetenv ("http_proxy");
    unsetenv ("HTTP_PROXY");
    unsetenv ("ALL_PROXY");
    cr_assert_eq (ah_server_hits (s_server, NULL), 0, "the server was reached");
}

Test (agent_http, credentials_stay_with_their_origin, .init = s_setup, .fini = s_teardown)
{
    ah_server_t *other = ah_server_start ();
    int port = ah_server_port (s_server);
    const char *headers[] = {"Authorization: Bearer secret", "Cookie: a=b", "X-Kept: 1",
                             NULL};
    char url[512], err[512];
    agent_http_response_t response;
    agent_http_request_t request = {.method = "GET",
                                    .url = url,
                                    .headers = headers,
                                    .allowlist = "127.0.0.1",
                                    .max_bytes = 1 << 20,
                                    .timeout_ms = 10000};
    //  Same origin: the credentials go along.
    snprintf (url, sizeof url, "http://127.0.0.1:%d/redirect?to=/echo/same", port);
    cr_assert_eq (agent_http_call (&request, &response, err, sizeof err), AGENT_HTTP_OK,
                  "%s", err);
    agent_http_response_free (&response);
    char *last = ah_server_last (s_server);
    json_t *echo = json_loads (last, 0, NULL);
    json_t *seen = json_object_get (echo, "headers");
    cr_assert_str_eq (json_string_value (json_object_get (seen, "authorization")),
                      "Bearer secret", "%s", last);
    cr_assert_str_eq (json_string_value (json_object_get (seen, "cookie")), "a=b");
    json_decref (echo);
    free (last);
    //  Same host, another port: another origin, so they stay behind.
    snprintf (url, sizeof url,
              "http://127.0.0.1:%d/redirect?to=http://127.0.0.1:%d/echo/other", port,
              ah_server_port (other));
    cr_assert_eq (agent_http_call (&request, &response, err, sizeof err), AGENT_HTTP_OK,
                  "%s", err);
    agent_http_response_free (&response);
    last = ah_server_last (other);
    cr_assert (last, "the other origin was not reached");
    echo = json_loads (last, 0, NULL);
    seen = json_object_get (echo, "headers");
    cr_assert_null (json_object_get (seen, "authorization"), "%s", last);
    cr_assert_null (json_object_get (seen, "cookie"), "%s", last);
    cr_assert_str_eq (json_string_value (json_object_get (seen, "x-kept")), "1");
    json_decref (echo);
    free (last);
    ah_server_stop (&other);
}
