/*  test_cm_http.c: the shared libcurl pieces. Base URLs are checked by
    libcurl's parser with the caller's variable name in every message;
    endpoints join without doubled slashes; statuses and failed transfers
    are put in words and blamed on the right side; and the cancellable
    perform loop, against tests/fake_llm (a real HTTP server on loopback),
    ends by itself, stops when its poll callback says so and then closes
    the connection at once. */
#include <criterion/criterion.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>
#include "cm_http.h"
#include "fake_llm_client.h"

Test (cm_http, usage)
{
    char err[256] = "";
    cr_assert_eq (cm_http_check_base_url ("http://127.0.0.1:11434/v1", "X_URL",
                                          "X_PROVIDER=openai", err, sizeof err),
                  0, "%s", err);
    char *endpoint = cm_http_endpoint ("http://127.0.0.1:11434/v1/", "/embeddings");
    cr_assert_str_eq (endpoint, "http://127.0.0.1:11434/v1/embeddings");
    char *auth = cm_http_bearer ("sk-1");
    cr_assert_str_eq (auth, "Authorization: Bearer sk-1");
    struct curl_slist *headers = cm_http_json_headers ("text/event-stream", auth);
    const char *expected[] = {"Content-Type: application/json",
                              "Accept: text/event-stream",
                              "Expect:", "Authorization: Bearer sk-1"};
    struct curl_slist *line = headers;
    for (size_t i = 0; i < 4; i++, line = line->next) {
        cr_assert_not_null (line);
        cr_assert_str_eq (line->data, expected[i]);
    }
    cr_assert_null (line);
    curl_slist_free_all (headers);
    free (auth);
    free (endpoint);
}

Test (cm_http, base_url_rules_name_the_variable)
{
    static const struct {
        const char *url;  //  the value
        const char *says; //  what the message must hold
    } cases[] = {
        {NULL, "X_URL: required when X_PROVIDER=openai (the server's"},
        {"", "X_URL: required when X_PROVIDER=openai"},
        {"not a url", "X_URL: 'not a url' is not a URL ("},
        {"ftp://example.com/v1", "X_URL: 'ftp://example.com/v1' is not an http:// or "
                                 "https:// URL"},
        {"http://h/v1?key=1", "X_URL: 'http://h/v1?key=1' has a query or fragment; give "
                              "the base URL only (e.g. http://127.0.0.1:11434/v1)"},
        {"https://h/v1#top", "X_URL: 'https://h/v1#top' has a query or fragment"},
        //  libcurl reads the first as the host "v1", the second as "h".
        {"http:///v1", "X_URL: 'http:///v1' has no host"},
        {"http:/h/v1", "X_URL: 'http:/h/v1' has no host"},
        {"http://user@/v1", "X_URL: 'http://user@/v1' "},
        {"http://:8080/v1", "X_URL: 'http://:8080/v1' "},
        {"http://127.0.0.1:0/v1", "X_URL: 'http://127.0.0.1:0/v1' has port 0"},
        {"http://127.0.0.1:99999/v1", "X_URL: 'http://127.0.0.1:99999/v1' is not a URL"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char err[512] = "";
        cr_assert_eq (cm_http_check_base_url (cases[i].url, "X_URL", "X_PROVIDER=openai",
                                              err, sizeof err),
                      -1, "%s", cases[i].url);
        cr_assert (strstr (err, cases[i].says), "%s: %s", cases[i].url, err);
    }
    static const char *good[] = {"http://localhost:8080", "https://api.example.com/v1/",
                                 "http://[::1]:11434/v1", "HTTP://h:65535/v1",
                                 "http://user:pw@h/v1"};
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
        char err[256] = "";
        cr_assert_eq (cm_http_check_base_url (good[i], "X_URL", "X", err, sizeof err), 0,
                      "%s: %s", good[i], err);
    }
}

Test (cm_http, endpoint_join)
{
    static const char *cases[][3] = {
        {"http://h/v1", "/chat/completions", "http://h/v1/chat/completions"},
        {"http://h/v1/", "/chat/completions", "http://h/v1/chat/completions"},
        {"http://h/v1///", "/embeddings", "http://h/v1/embeddings"},
        {"http://h", "/embeddings", "http://h/embeddings"},
        {"", "/x", "/x"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char *endpoint = cm_http_endpoint (cases[i][0], cases[i][1]);
        cr_assert_str_eq (endpoint, cases[i][2]);
        free (endpoint);
    }
}

Test (cm_http, bearer_and_headers)
{
    cr_assert_null (cm_http_bearer (NULL));
    cr_assert_null (cm_http_bearer (""));
    struct curl_slist *headers = cm_http_json_headers (NULL, NULL);
    cr_assert_str_eq (headers->data, "Content-Type: application/json");
    cr_assert_str_eq (headers->next->data, "Expect:");
    cr_assert_null (headers->next->next);
    curl_slist_free_all (headers);
}

Test (cm_http, status_fault_and_words)
{
    static const struct {
        long status;
        cm_http_fault_t fault;
        const char *says;
    } cases[] = {
        {429, CM_HTTP_UPSTREAM, "Up is rate limiting us (HTTP 429): why"},
        {401, CM_HTTP_UPSTREAM,
         "Up refused our credentials (HTTP 401; check K_KEY): why"},
        {403, CM_HTTP_UPSTREAM,
         "Up refused our credentials (HTTP 403; check K_KEY): why"},
        {400, CM_HTTP_REQUEST, "Up refused the request (HTTP 400): why"},
        {404, CM_HTTP_REQUEST, "Up refused the request (HTTP 404): why"},
        {408, CM_HTTP_UPSTREAM, "Up failed (HTTP 408): why"},
        {500, CM_HTTP_UPSTREAM, "Up failed (HTTP 500): why"},
        {302, CM_HTTP_UPSTREAM, "Up failed (HTTP 302): why"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char out[256];
        cr_assert_eq (cm_http_describe_status (cases[i].status, "why", "Up", "K_KEY", out,
                                               sizeof out),
                      cases[i].fault, "HTTP %ld", cases[i].status);
        cr_assert_str_eq (out, cases[i].says);
    }
}

//  --- against a real server ---------------------------------------------------------

TestSuite (cm_http_perform, .init = fake_llm_suite_start, .fini = fake_llm_suite_stop,
           .timeout = 30);

typedef struct {
    char body[4096]; //  what came
    size_t size;     //  bytes in body
    int polls;       //  times the poll callback ran
    int stop_after;  //  say stop (with 7) from this poll on (0: never)
} s_sink_t;

static size_t
s_on_data (char *data, size_t size, size_t nmemb, void *arg)
{
    s_sink_t *sink = (s_sink_t *) arg;
    size_t n = size * nmemb;
    size_t take =
        n < sizeof sink->body - 1 - sink->size ? n : sizeof sink->body - 1 - sink->size;
    memcpy (sink->body + sink->size, data, take);
    sink->size += take;
    sink->body[sink->size] = 0;
    return n;
}

static int
s_poll (void *arg)
{
    s_sink_t *sink = (s_sink_t *) arg;
    sink->polls++;
    return sink->stop_after && sink->polls >= sink->stop_after ? 7 : 0;
}

//  A POST of {"input":"hello"} to url's /embeddings.
static CURL *
s_post (const char *base_url, s_sink_t *sink, struct curl_slist *headers, char *curl_err,
        cm_http_share_t *share)
{
    static char endpoint[256];
    char *joined = cm_http_endpoint (base_url, "/embeddings");
    snprintf (endpoint, sizeof endpoint, "%s", joined);
    free (joined);
    return cm_http_post_new (&(cm_http_post_t){
        .url = endpoint,
        .headers = headers,
        .body = "{\"input\":\"hello\"}",
        .user_agent = "test_cm_http",
        .on_data = s_on_data,
        .arg = sink,
        .curl_err = curl_err,
        .connect_timeout_ms = 2000,
        .share = share,
    });
}

static bool
s_wait_stat (const char *name, int64_t value, int64_t timeout_ms)
{
    int64_t until = fake_llm_now_ms () + timeout_ms;
    while (fake_llm_now_ms () < until) {
        if (fake_llm_stat (&fake_llm_suite, name) == value)
            return true;
        usleep (10000);
    }
    return false;
}

Test (cm_http_perform, ends_by_itself)
{
    cm_http_share_t *share = cm_http_share_new ();
    cr_assert_not_null (share);
    cr_assert_not_null (cm_http_share_handle (share));
    char *auth = cm_http_bearer ("sk-perform");
    struct curl_slist *headers = cm_http_json_headers (NULL, auth);
    //  Twice on one share handle: the second reuses its DNS cache.
    for (int round = 0; round < 2; round++) {
        s_sink_t sink = {.stop_after = 0};
        char curl_err[CURL_ERROR_SIZE] = "";
        CURL *curl = s_post (fake_llm_suite.base_url, &sink, headers, curl_err, share);
        cm_http_outcome_t outcome;
        cr_assert_eq (cm_http_perform (curl, 10, s_poll, &sink, &outcome), 0);
        cr_assert_eq (outcome.code, CURLE_OK, "%s", curl_err);
        cr_assert_eq (outcome.multi, CURLM_OK);
        cr_assert_eq (outcome.stop, 0);
        long status = 0;
        curl_easy_getinfo (curl, CURLINFO_RESPONSE_CODE, &status);
        cr_assert_eq (status, 200, "%s", sink.body);
        cr_assert (strstr (sink.body, "\"embedding\""), "%s", sink.body);
        curl_easy_cleanup (curl);
    }
    cr_assert_eq (fake_llm_stat (&fake_llm_suite, "embedding_requests"), 2);
    curl_slist_free_all (headers);
    free (auth);
    cm_http_share_destroy (&share);
    cr_assert_null (share);
    cm_http_share_destroy (&share); //  NULL-safe
}

Test (cm_http_perform, poll_stops_and_closes_the_connection)
{
    //  The upstream says nothing at all: only the poll callback ends it.
    fake_llm_control (&fake_llm_suite, "{\"embed_mode\":\"hang\"}");
    struct curl_slist *headers = cm_http_json_headers (NULL, NULL);
    s_sink_t sink = {.stop_after = 5};
    char curl_err[CURL_ERROR_SIZE] = "";
    CURL *curl = s_post (fake_llm_suite.base_url, &sink, headers, curl_err, NULL);
    cm_http_outcome_t outcome;
    cr_assert_eq (cm_http_perform (curl, 10, s_poll, &sink, &outcome), 7);
    cr_assert_eq (outcome.stop, 7);
    cr_assert_eq (sink.polls, 5);
    cr_assert_eq (sink.size, 0);
    cr_assert (s_wait_stat ("embedding_disconnects", 1, 5000),
               "the fake did not see the connection close");
    curl_easy_cleanup (curl);
    curl_slist_free_all (headers);
}

Test (cm_http_perform, a_refused_connection_in_words)
{
    //  A port nobody listens on: bound, then closed.
    int fd = socket (AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in address = {.sin_family = AF_INET,
                                  .sin_addr.s_addr = htonl (INADDR_LOOPBACK)};
    socklen_t length = sizeof address;
    cr_assert_eq (bind (fd, (struct sockaddr *) &address, sizeof address), 0);
    cr_assert_eq (getsockname (fd, (struct sockaddr *) &address, &length), 0);
    close (fd);
    char base_url[64];
    snprintf (base_url, sizeof base_url, "http://127.0.0.1:%d/v1",
              ntohs (address.sin_port));
    struct curl_slist *headers = cm_http_json_headers (NULL, NULL);
    s_sink_t sink = {.stop_after = 0};
    char curl_err[CURL_ERROR_SIZE] = "";
    CURL *curl = s_post (base_url, &sink, headers, curl_err, NULL);
    cm_http_outcome_t outcome;
    cr_assert_eq (cm_http_perform (curl, 10, NULL, NULL, &outcome), 0);
    cr_assert_eq (outcome.code, CURLE_COULDNT_CONNECT);
    char out[512];
    cm_http_describe_failure (curl, outcome.code, curl_err, "Up", 2000, "UP_CONNECT_MS",
                              out, sizeof out);
    cr_assert (!strncmp (out, "Up cannot be reached: ", 22), "%s", out);
    cr_assert (strstr (out, "(Connection refused)"), "%s", out);
    cm_http_describe_failure (curl, CURLE_OPERATION_TIMEDOUT, "", "Up", 2000,
                              "UP_CONNECT_MS", out, sizeof out);
    cr_assert_str_eq (out, "Up cannot be reached: no connection within 2000 ms "
                           "(UP_CONNECT_MS)");
    cm_http_describe_failure (curl, CURLE_RECV_ERROR, "", "Up", 2000, "UP_CONNECT_MS",
                              out, sizeof out);
    cr_assert (!strncmp (out, "Up's connection failed: ", 24), "%s", out);
    curl_easy_cleanup (curl);
    curl_slist_free_all (headers);
}
