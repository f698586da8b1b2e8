/*  agent_http.c: see agent_http.h. */
#include "agent_http.h"
#include "cm_http.h"
#include "cm_log.h"
#include <arpa/inet.h>
#include <ctype.h>
#include <curl/curl.h>
#include <netinet/in.h>
#include <strings.h>

//  How often a waiting call looks at its cancel callback.
#define S_POLL_MS 20

static bool
s_v4_blocked (uint32_t a)
{
    return (a >> 24) == 0                    //  0/8 "this network"
           || (a >> 24) == 10                //  10/8 private
           || (a >> 24) == 127               //  loopback
           || (a >> 22) == (100u << 2 | 1)   //  100.64/10 shared (CGNAT)
           || (a >> 16) == (169u << 8 | 254) //  169.254/16 link-local
           || (a >> 20) == (172u << 4 | 1)   //  172.16/12 private
           || (a >> 8) == (192u << 16 | 0)   //  192.0.0/24 protocol assignments
           || (a >> 16) == (192u << 8 | 168) //  192.168/16 private
           || (a >> 17) == (198u << 7 | 9)   //  198.18/15 benchmarking
           || (a >> 28) >= 14;               //  224/4 multicast, 240/4 reserved
}

static bool
s_v6_blocked (const unsigned char *b)
{
    static const unsigned char zero[16] = {0};
    static const unsigned char mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    static const unsigned char nat64[12] = {0, 0x64, 0xff, 0x9b};
    uint32_t v4 =
        (uint32_t) b[12] << 24 | (uint32_t) b[13] << 16 | (uint32_t) b[14] << 8 | b[15];
    if (!memcmp (b, zero, 12)) //  ::, ::1, ::a.b.c.d (compatible)
        return true;
    if (!memcmp (b, mapped, 12) || !memcmp (b, nat64, 12))
        return s_v4_blocked (v4);
    if (b[0] == 0x20 && b[1] == 0x02) //  2002::/16 6to4 embeds an IPv4
        return s_v4_blocked ((uint32_t) b[2] << 24 | (uint32_t) b[3] << 16 |
                             (uint32_t) b[4] << 8 | b[5]);
    return (b[0] & 0xfe) == 0xfc                      //  fc00::/7 unique local
           || (b[0] == 0xfe && (b[1] & 0xc0) == 0x80) //  fe80::/10 link-local
           || (b[0] == 0xfe && (b[1] & 0xc0) == 0xc0) //  fec0::/10 site-local
           || b[0] == 0xff;                           //  multicast
}

bool
agent_http_addr_blocked (const struct sockaddr *address)
{
    assert (address);
    if (address->sa_family == AF_INET)
        return s_v4_blocked (
            ntohl (((const struct sockaddr_in *) address)->sin_addr.s_addr));
    if (address->sa_family == AF_INET6)
        return s_v6_blocked (((const struct sockaddr_in6 *) address)->sin6_addr.s6_addr);
    return true; //  unix sockets and the rest: never
}

bool
agent_http_text_blocked (const char *text)
{
    struct in_addr v4;
    struct in6_addr v6;
    if (inet_pton (AF_INET, text, &v4) == 1)
        return s_v4_blocked (ntohl (v4.s_addr));
    if (inet_pton (AF_INET6, text, &v6) == 1)
        return s_v6_blocked (v6.s6_addr);
    return false;
}

//  Is the item [start, end) of an allowlist the host? IP literals compare
//  by value (libcurl writes "[0:0:0:0:0:0:0:1]" as "::1"), names as text,
//  in any case.
static bool
s_item_matches (const char *start, const char *end, const char *host)
{
    size_t len = (size_t) (end - start);
    char item[INET6_ADDRSTRLEN + 1];
    unsigned char item_addr[16], host_addr[16];
    if (len < sizeof item) {
        memcpy (item, start, len);
        item[len] = 0;
        static const struct {
            int family;
            size_t size;
        } kinds[] = {{AF_INET, 4}, {AF_INET6, 16}};
        for (size_t i = 0; i < 2; i++)
            if (inet_pton (kinds[i].family, item, item_addr) == 1)
                return inet_pton (kinds[i].family, host, host_addr) == 1 &&
                       !memcmp (item_addr, host_addr, kinds[i].size);
    }
    return len == strlen (host) && !strncasecmp (start, host, len);
}

bool
agent_http_allowed (const char *allowlist, const char *host)
{
    if (!allowlist || !host || !*host)
        return false;
    const char *p = allowlist;
    while (*p) {
        while (*p == ',' || isspace ((unsigned char) *p))
            p++;
        const char *start = p;
        while (*p && *p != ',')
            p++;
        const char *end = p;
        while (end > start && isspace ((unsigned char) end[-1]))
            end--;
        if (end > start && s_item_matches (start, end, host))
            return true;
    }
    return false;
}

//  Is name a host name libcurl keeps as it is: dot-separated labels of 1 to
//  63 letters, digits, '-' or '_', 253 bytes at most (a trailing dot
//  allowed), whose last label is not a number (libcurl would read
//  "127.1" or "0x7f.1" as an IPv4 address and write it as a dotted quad)?
static bool
s_host_name (const char *name)
{
    size_t len = strlen (name);
    if (len && name[len - 1] == '.')
        len--;
    if (len == 0 || len > 253)
        return false;
    const char *label = name;
    for (size_t i = 0; i <= len; i++) {
        if (i == len || name[i] == '.') {
            size_t size = (size_t) (name + i - label);
            if (size == 0 || size > 63)
                return false;
            if (i == len) {
                bool hex = size > 2 && label[0] == '0' && (label[1] | 0x20) == 'x';
                size_t digits = strspn (label + (hex ? 2 : 0),
                                        hex ? "0123456789abcdefABCDEF" : "0123456789");
                if (digits == size - (hex ? 2 : 0))
                    return false;
            }
            label = name + i + 1;
        } else if (!isalnum ((unsigned char) name[i]) && name[i] != '-' && name[i] != '_')
            return false;
    }
    return true;
}

int
agent_http_allowlist_check (const char *allowlist, char *err, size_t errlen)
{
    if (!allowlist)
        return 0;
    const char *p = allowlist;
    for (int n = 1;; n++) {
        const char *start = p;
        while (*p && *p != ',')
            p++;
        const char *end = p;
        while (start < end && isspace ((unsigned char) *start))
            start++;
        while (end > start && isspace ((unsigned char) end[-1]))
            end--;
        char *item = cm_strndup (start, (size_t) (end - start));
        unsigned char addr[16];
        const char *problem = NULL;
        if (!*item)
            problem = "is empty (two commas, or a comma at an end?)";
        else if (inet_pton (AF_INET, item, addr) == 1 ||
                 inet_pton (AF_INET6, item, addr) == 1)
            ;
        else if (*item == '[')
            problem = "is in brackets: write an IPv6 address without them";
        else if (!s_host_name (item))
            problem = "is not a host name or IP address (exact names only: no scheme, "
                      "port, path, mask or wildcard; IPv4 as a dotted quad)";
        if (problem)
            snprintf (err, errlen, "AGENT_HTTP_ALLOWLIST: item %d '%.200s' %s", n, item,
                      problem);
        free (item);
        if (problem)
            return -1;
        if (!*p)
            return 0;
        p++;
    }
}

//  --- the call ----------------------------------------------------------------------

typedef struct {
    const agent_http_request_t *request;
    agent_http_response_t *response;
    bool check;   //  this hop's addresses must be public
    bool blocked; //  the open-socket callback refused an address
    char blocked_addr[INET6_ADDRSTRLEN];
    bool too_large; //  the body passed the cap
} s_call_t;

static curl_socket_t
s_open_socket (void *arg, curlsocktype purpose, struct curl_sockaddr *address)
{
    s_call_t *call = (s_call_t *) arg;
    (void) purpose;
    if (call->check && agent_http_addr_blocked (&address->addr)) {
        call->blocked = true;
        const void *raw =
            address->family == AF_INET
                ? (const void *) &((struct sockaddr_in *) &address->addr)->sin_addr
                : (const void *) &((struct sockaddr_in6 *) &address->addr)->sin6_addr;
        inet_ntop (address->family, raw, call->blocked_addr, sizeof call->blocked_addr);
        return CURL_SOCKET_BAD;
    }
    return socket (address->family, address->socktype, address->protocol);
}

static size_t
s_on_data (char *data, size_t size, size_t count, void *arg)
{
    s_call_t *call = (s_call_t *) arg;
    agent_http_response_t *response = call->response;
    size_t bytes = size * count;
    if (response->size + bytes > call->request->max_bytes) {
        call->too_large = true;
        return 0;
    }
    response->body = cm_realloc (response->body, response->size + bytes + 1);
    memcpy (response->body + response->size, data, bytes);
    response->size += bytes;
    response->body[response->size] = 0;
    return bytes;
}

//  The host and scheme of url; -1 with err when it is not an http(s) URL.
static int
s_parse (const char *url, char *host, size_t host_size, char *err, size_t errlen)
{
    CURLU *parsed = curl_url ();
    char *scheme = NULL, *name = NULL;
    int rc = -1;
    if (curl_url_set (parsed, CURLUPART_URL, url, 0) != CURLUE_OK)
        snprintf (err, errlen, "'%.200s' is not a valid URL", url);
    else if (curl_url_get (parsed, CURLUPART_SCHEME, &scheme, 0) != CURLUE_OK ||
             (strcasecmp (scheme, "http") && strcasecmp (scheme, "https")))
        snprintf (err, errlen, "'%.200s': only http and https URLs are allowed", url);
    else if (curl_url_get (parsed, CURLUPART_HOST, &name, 0) != CURLUE_OK || !*name)
        snprintf (err, errlen, "'%.200s' has no host", url);
    else {
        //  IPv6 literals come as "[::1]": compare and check without brackets.
        size_t len = strlen (name);
        if (name[0] == '[' && len > 2 && name[len - 1] == ']')
            snprintf (host, host_size, "%.*s", (int) (len - 2), name + 1);
        else
            snprintf (host, host_size, "%s", name);
        rc = 0;
    }
    curl_free (scheme);
    curl_free (name);
    curl_url_cleanup (parsed);
    return rc;
}

//  What s_poll needs to know between reads.
typedef struct {
    const agent_http_request_t *request; //  its cancel callback
    int64_t until;                       //  the deadline (cm_clock_mono_ms)
} s_watch_t;

//  Between reads: 1 cancelled, 2 out of time, 0 go on.
static int
s_poll (void *arg)
{
    s_watch_t *watch = (s_watch_t *) arg;
    const agent_http_request_t *request = watch->request;
    if (request->cancelled && request->cancelled (request->cancel_arg))
        return 1;
    if (cm_clock_mono_ms () >= watch->until)
        return 2;
    return 0;
}

//  Run one easy handle, polling the cancel callback and the time limit.
//  Returns the transfer's result, or -1 cancelled, -2 out of time.
static int
s_perform (CURL *curl, const agent_http_request_t *request, int64_t until)
{
    s_watch_t watch = {request, until};
    cm_http_outcome_t outcome;
    int rc = cm_http_perform (curl, S_POLL_MS, s_poll, &watch, &outcome);
    if (rc < 0)
        return CURLE_FAILED_INIT;
    return rc ? -rc : (int) outcome.code;
}

//  scheme://host:port of a URL (the port spelled out), lower-case, for
//  comparing origins; "" when it cannot be parsed.
static void
s_origin (const char *url, char *out, size_t size)
{
    out[0] = 0;
    CURLU *parsed = curl_url ();
    char *scheme = NULL, *host = NULL, *port = NULL;
    if (curl_url_set (parsed, CURLUPART_URL, url, 0) == CURLUE_OK &&
        curl_url_get (parsed, CURLUPART_SCHEME, &scheme, 0) == CURLUE_OK &&
        curl_url_get (parsed, CURLUPART_HOST, &host, 0) == CURLUE_OK &&
        curl_url_get (parsed, CURLUPART_PORT, &port, CURLU_DEFAULT_PORT) == CURLUE_OK)
        snprintf (out, size, "%s://%s:%s", scheme, host, port);
    curl_free (scheme);
    curl_free (host);
    curl_free (port);
    curl_url_cleanup (parsed);
}

agent_http_result_t
agent_http_call (const agent_http_request_t *request, agent_http_response_t *response,
                 char *err, size_t errlen)
{
    assert (request && request->url && request->method);
    assert (response);
    memset (response, 0, sizeof *response);
    response->body = cm_strdup ("");
    if (err && errlen)
        *err = 0;
    //  libcurl sends header lines verbatim: a line break in one (a value
    //  taken from a variable) would add headers, or a request, of its own.
    for (size_t i = 0; request->headers && request->headers[i]; i++) {
        const char *line = request->headers[i];
        if (strpbrk (line, "\r\n")) {
            size_t name = strcspn (line, ":\r\n");
            snprintf (err, errlen, "the header '%.*s' has a line break in its value",
                      (int) (name < 100 ? name : 100), line);
            return AGENT_HTTP_REFUSED;
        }
    }
    int64_t until = cm_clock_mono_ms () + request->timeout_ms;
    char *url = cm_strdup (request->url);
    char *method = cm_strdup (request->method);
    bool send_body = request->body != NULL;
    char first_origin[512] = "";
    agent_http_result_t result = AGENT_HTTP_FAILED;

    for (int hop = 0;; hop++) {
        char host[256];
        if (s_parse (url, host, sizeof host, err, errlen)) {
            result = AGENT_HTTP_REFUSED;
            break;
        }
        char origin[512];
        s_origin (url, origin, sizeof origin);
        if (!hop)
            snprintf (first_origin, sizeof first_origin, "%s", origin);
        s_call_t call = {
            request, response, !agent_http_allowed (request->allowlist, host),
            false,   "",       false};
        free (response->body);
        response->body = cm_strdup ("");
        response->size = 0;
        snprintf (response->url, sizeof response->url, "%s", url);

        CURL *curl = curl_easy_init ();
        struct curl_slist *headers = NULL;
        bool same_origin = !strcasecmp (origin, first_origin);
        for (size_t i = 0; request->headers && request->headers[i]; i++) {
            //  Credentials do not follow a redirect to another origin (host,
            //  port or scheme: https -> http would send them in clear).
            if (!same_origin &&
                (!strncasecmp (request->headers[i], "authorization:", 14) ||
                 !strncasecmp (request->headers[i], "cookie:", 7)))
                continue;
            headers = curl_slist_append (headers, request->headers[i]);
        }
        headers = curl_slist_append (headers, "Expect:");
        char curl_err[CURL_ERROR_SIZE] = "";
        curl_easy_setopt (curl, CURLOPT_URL, url);
        curl_easy_setopt (curl, CURLOPT_PROTOCOLS_STR, "http,https");
        curl_easy_setopt (curl, CURLOPT_PROXY, ""); //  no proxy from the environment
        curl_easy_setopt (curl, CURLOPT_FOLLOWLOCATION, 0L);
        curl_easy_setopt (curl, CURLOPT_CUSTOMREQUEST, method);
        if (!strcmp (method, "HEAD"))
            curl_easy_setopt (curl, CURLOPT_NOBODY, 1L);
        if (send_body) {
            curl_easy_setopt (curl, CURLOPT_POSTFIELDS, request->body);
            curl_easy_setopt (curl, CURLOPT_POSTFIELDSIZE_LARGE,
                              (curl_off_t) request->body_size);
        }
        curl_easy_setopt (curl, CURLOPT_HTTPHEADER, headers);
        curl_easy_setopt (curl, CURLOPT_USERAGENT, "llmrt-agentd/" LLMRT_VERSION);
        curl_easy_setopt (curl, CURLOPT_OPENSOCKETFUNCTION, s_open_socket);
        curl_easy_setopt (curl, CURLOPT_OPENSOCKETDATA, &call);
        curl_easy_setopt (curl, CURLOPT_WRITEFUNCTION, s_on_data);
        curl_easy_setopt (curl, CURLOPT_WRITEDATA, &call);
        curl_easy_setopt (curl, CURLOPT_ERRORBUFFER, curl_err);
        curl_easy_setopt (curl, CURLOPT_NOSIGNAL, 1L);
        curl_easy_setopt (curl, CURLOPT_ACCEPT_ENCODING, "");
        int64_t left = until - cm_clock_mono_ms ();
        curl_easy_setopt (curl, CURLOPT_TIMEOUT_MS, (long) (left > 1 ? left : 1));

        int rc = s_perform (curl, request, until);
        char *location = NULL;
        if (rc == CURLE_OK) {
            curl_easy_getinfo (curl, CURLINFO_RESPONSE_CODE, &response->status);
            char *type = NULL;
            curl_easy_getinfo (curl, CURLINFO_CONTENT_TYPE, &type);
            snprintf (response->content_type, sizeof response->content_type, "%s",
                      type ? type : "");
            char *redirect = NULL;
            curl_easy_getinfo (curl, CURLINFO_REDIRECT_URL, &redirect);
            if (redirect && response->status >= 300 && response->status < 400)
                location = cm_strdup (redirect);
        }
        curl_easy_cleanup (curl);
        curl_slist_free_all (headers);

        if (call.blocked) {
            snprintf (err, errlen,
                      "refused to connect to %s (the address of '%.200s' is loopback, "
                      "private or link-local; add the host to AGENT_HTTP_ALLOWLIST to "
                      "allow it)",
                      call.blocked_addr, host);
            result = AGENT_HTTP_REFUSED;
        } else if (rc == -1) {
            snprintf (err, errlen, "the call to %.200s was cancelled", url);
            result = AGENT_HTTP_CANCELLED;
        } else if (rc == -2 || rc == CURLE_OPERATION_TIMEDOUT) {
            snprintf (err, errlen, "%.200s did not answer within %lld ms", url,
                      (long long) request->timeout_ms);
            result = AGENT_HTTP_TIMEOUT;
        } else if (call.too_large) {
            snprintf (err, errlen, "the response of %.200s is larger than %zu bytes", url,
                      request->max_bytes);
            result = AGENT_HTTP_TOO_LARGE;
        } else if (rc != CURLE_OK) {
            snprintf (err, errlen, "%.200s: %s", url,
                      *curl_err ? curl_err : curl_easy_strerror ((CURLcode) rc));
            result = AGENT_HTTP_FAILED;
        } else if (location) {
            if (hop >= AGENT_HTTP_MAX_REDIRECTS) {
                snprintf (err, errlen, "%.200s: more than %d redirects", request->url,
                          AGENT_HTTP_MAX_REDIRECTS);
                result = AGENT_HTTP_REFUSED;
                free (location);
                break;
            }
            //  As browsers: 307 and 308 keep the method and body, the
            //  others become a GET (HEAD stays HEAD).
            if (response->status != 307 && response->status != 308) {
                send_body = false;
                if (strcmp (method, "HEAD")) {
                    free (method);
                    method = cm_strdup ("GET");
                }
            }
            free (url);
            url = location;
            continue;
        } else
            result = AGENT_HTTP_OK;
        free (location);
        break;
    }
    free (url);
    free (method);
    return result;
}

void
agent_http_response_free (agent_http_response_t *response)
{
    if (response) {
        free (response->body);
        response->body = NULL;
        response->size = 0;
    }
}
