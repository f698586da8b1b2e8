/*  cm_http.c: see cm_http.h. */
#include "cm_http.h"
#include <pthread.h>

struct cm_http_share_s {
    CURLSH *share;                              //  DNS cache and TLS sessions
    pthread_mutex_t locks[CURL_LOCK_DATA_LAST]; //  one per kind of shared data
};

static void s_lock (CURL *handle, curl_lock_data data, curl_lock_access access,
                    void *arg);
static void s_unlock (CURL *handle, curl_lock_data data, void *arg);

//  Does url spell out a host: "scheme://" then a non-empty host before the
//  port, path, query or fragment (user information skipped)?
static bool
s_has_authority (const char *url)
{
    const char *p = url + strcspn (url, ":/?#");
    if (strncmp (p, "://", 3))
        return false;
    p += 3;
    const char *end = p + strcspn (p, "/?#");
    const char *at = memrchr (p, '@', (size_t) (end - p));
    const char *host = at ? at + 1 : p;
    return host < end && *host != ':';
}

int
cm_http_check_base_url (const char *url, const char *name, const char *required_by,
                        char *err, size_t errlen)
{
    assert (name && required_by);
    if (!url || !*url) {
        snprintf (err, errlen,
                  "%s: required when %s (the server's OpenAI-compatible base URL with "
                  "its version path, e.g. http://127.0.0.1:11434/v1)",
                  name, required_by);
        return -1;
    }
    CURLU *parsed = curl_url ();
    char *scheme = NULL, *host = NULL, *port = NULL, *query = NULL, *fragment = NULL;
    int rc = -1;
    CURLUcode code = curl_url_set (parsed, CURLUPART_URL, url, 0);
    if (code != CURLUE_OK) {
        snprintf (err, errlen, "%s: '%s' is not a URL (%s)", name, url,
                  curl_url_strerror (code));
        goto cleanup;
    }
    curl_url_get (parsed, CURLUPART_SCHEME, &scheme, 0);
    if (!scheme || (strcmp (scheme, "http") && strcmp (scheme, "https"))) {
        snprintf (err, errlen, "%s: '%s' is not an http:// or https:// URL", name, url);
        goto cleanup;
    }
    //  libcurl reads "http:///v1" as the host "v1" and "http:/h" as "h":
    //  the text itself must have "//" and a host after the scheme.
    if (curl_url_get (parsed, CURLUPART_HOST, &host, 0) != CURLUE_OK || !host || !*host ||
        !s_has_authority (url)) {
        snprintf (err, errlen, "%s: '%s' has no host", name, url);
        goto cleanup;
    }
    if (curl_url_get (parsed, CURLUPART_PORT, &port, 0) == CURLUE_OK && port &&
        atoi (port) < 1) {
        snprintf (err, errlen, "%s: '%s' has port %s; a port is 1 to 65535", name, url,
                  port);
        goto cleanup;
    }
    if (curl_url_get (parsed, CURLUPART_QUERY, &query, 0) == CURLUE_OK ||
        curl_url_get (parsed, CURLUPART_FRAGMENT, &fragment, 0) == CURLUE_OK) {
        snprintf (err, errlen,
                  "%s: '%s' has a query or fragment; give the base URL only (e.g. "
                  "http://127.0.0.1:11434/v1)",
                  name, url);
        goto cleanup;
    }
    rc = 0;
cleanup:
    curl_free (scheme);
    curl_free (host);
    curl_free (port);
    curl_free (query);
    curl_free (fragment);
    curl_url_cleanup (parsed);
    return rc;
}

char *
cm_http_endpoint (const char *base_url, const char *path)
{
    assert (base_url && path);
    size_t size = strlen (base_url);
    while (size && base_url[size - 1] == '/')
        size--;
    char *endpoint = cm_malloc (size + strlen (path) + 1);
    memcpy (endpoint, base_url, size);
    strcpy (endpoint + size, path);
    return endpoint;
}

char *
cm_http_bearer (const char *api_key)
{
    if (!api_key || !*api_key)
        return NULL;
    size_t size = strlen (api_key) + sizeof "Authorization: Bearer ";
    char *header = cm_malloc (size);
    snprintf (header, size, "Authorization: Bearer %s", api_key);
    return header;
}

struct curl_slist *
cm_http_json_headers (const char *accept, const char *auth)
{
    struct curl_slist *headers = NULL;
    headers = curl_slist_append (headers, "Content-Type: application/json");
    if (accept) {
        char line[256];
        snprintf (line, sizeof line, "Accept: %s", accept);
        headers = curl_slist_append (headers, line);
    }
    headers = curl_slist_append (headers, "Expect:");
    if (auth)
        headers = curl_slist_append (headers, auth);
    return headers;
}

CURL *
cm_http_post_new (const cm_http_post_t *post)
{
    assert (post && post->url && post->body && post->user_agent && post->curl_err);
    CURL *curl = curl_easy_init ();
    assert (curl);
    curl_easy_setopt (curl, CURLOPT_URL, post->url);
    curl_easy_setopt (curl, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt (curl, CURLOPT_HTTPHEADER, post->headers);
    curl_easy_setopt (curl, CURLOPT_POSTFIELDS, post->body);
    curl_easy_setopt (curl, CURLOPT_POSTFIELDSIZE_LARGE,
                      (curl_off_t) strlen (post->body));
    curl_easy_setopt (curl, CURLOPT_USERAGENT, post->user_agent);
    curl_easy_setopt (curl, CURLOPT_WRITEFUNCTION, post->on_data);
    curl_easy_setopt (curl, CURLOPT_WRITEDATA, post->arg);
    curl_easy_setopt (curl, CURLOPT_ERRORBUFFER, post->curl_err);
    curl_easy_setopt (curl, CURLOPT_CONNECTTIMEOUT_MS, (long) post->connect_timeout_ms);
    curl_easy_setopt (curl, CURLOPT_NOSIGNAL, 1L);
    if (post->share)
        curl_easy_setopt (curl, CURLOPT_SHARE, post->share->share);
    curl_easy_setopt (curl, CURLOPT_TCP_NODELAY, 1L);
    return curl;
}

int
cm_http_perform (CURL *curl, int poll_ms, cm_http_poll_fn *poll_fn, void *arg,
                 cm_http_outcome_t *outcome)
{
    assert (curl && outcome);
    *outcome = (cm_http_outcome_t){CURLE_OK, CURLM_OK, 0};
    CURLM *multi = curl_multi_init ();
    curl_multi_add_handle (multi, curl);
    int rc = 0;
    for (;;) {
        int running = 0;
        outcome->multi = curl_multi_perform (multi, &running);
        if (outcome->multi != CURLM_OK) {
            rc = -1;
            break;
        }
        if (!running) {
            CURLMsg *msg;
            int left;
            while ((msg = curl_multi_info_read (multi, &left)))
                if (msg->msg == CURLMSG_DONE)
                    outcome->code = msg->data.result;
            break;
        }
        int stop = poll_fn ? poll_fn (arg) : 0;
        if (stop) {
            assert (stop > 0);
            outcome->stop = rc = stop;
            break;
        }
        curl_multi_poll (multi, NULL, 0, poll_ms, NULL);
    }
    //  Removing a transfer that is still running closes its connection.
    curl_multi_remove_handle (multi, curl);
    curl_multi_cleanup (multi);
    return rc;
}

void
cm_http_describe_failure (CURL *curl, CURLcode code, const char *curl_err,
                          const char *who, int64_t connect_timeout_ms,
                          const char *connect_var, char *out, size_t outlen)
{
    assert (curl && who && connect_var);
    const char *why = curl_err && *curl_err ? curl_err : curl_easy_strerror (code);
    if (code == CURLE_COULDNT_CONNECT || code == CURLE_COULDNT_RESOLVE_HOST ||
        code == CURLE_COULDNT_RESOLVE_PROXY) {
        //  libcurl says "Couldn't connect to server"; the system says why.
        long os_errno = 0;
        curl_easy_getinfo (curl, CURLINFO_OS_ERRNO, &os_errno);
        snprintf (out, outlen, "%s cannot be reached: %s%s%s%s", who, why,
                  os_errno ? " (" : "", os_errno ? strerror ((int) os_errno) : "",
                  os_errno ? ")" : "");
    } else if (code == CURLE_OPERATION_TIMEDOUT) //  only the connect limit is curl's
        snprintf (out, outlen, "%s cannot be reached: no connection within %lld ms (%s)",
                  who, (long long) connect_timeout_ms, connect_var);
    else
        snprintf (out, outlen, "%s's connection failed: %s", who, why);
}

cm_http_fault_t
cm_http_describe_status (long status, const char *message, const char *who,
                         const char *key_var, char *out, size_t outlen)
{
    assert (message && who && key_var);
    if (status == 429) {
        snprintf (out, outlen, "%s is rate limiting us (HTTP 429): %s", who, message);
        return CM_HTTP_UPSTREAM;
    }
    if (status == 401 || status == 403) {
        snprintf (out, outlen, "%s refused our credentials (HTTP %ld; check %s): %s", who,
                  status, key_var, message);
        return CM_HTTP_UPSTREAM;
    }
    if (status >= 400 && status < 500 && status != 408) {
        snprintf (out, outlen, "%s refused the request (HTTP %ld): %s", who, status,
                  message);
        return CM_HTTP_REQUEST;
    }
    snprintf (out, outlen, "%s failed (HTTP %ld): %s", who, status, message);
    return CM_HTTP_UPSTREAM;
}

//  --- cm_http_share_t --------------------------------------------------------------

cm_http_share_t *
cm_http_share_new (void)
{
    if (curl_global_init (CURL_GLOBAL_DEFAULT) != CURLE_OK)
        return NULL;
    cm_http_share_t *self = cm_calloc (1, sizeof *self);
    for (int i = 0; i < CURL_LOCK_DATA_LAST; i++)
        pthread_mutex_init (&self->locks[i], NULL);
    self->share = curl_share_init ();
    assert (self->share);
    curl_share_setopt (self->share, CURLSHOPT_LOCKFUNC, s_lock);
    curl_share_setopt (self->share, CURLSHOPT_UNLOCKFUNC, s_unlock);
    curl_share_setopt (self->share, CURLSHOPT_USERDATA, self);
    curl_share_setopt (self->share, CURLSHOPT_SHARE, CURL_LOCK_DATA_DNS);
    curl_share_setopt (self->share, CURLSHOPT_SHARE, CURL_LOCK_DATA_SSL_SESSION);
    return self;
}

void
cm_http_share_destroy (cm_http_share_t **self_p)
{
    assert (self_p);
    cm_http_share_t *self = *self_p;
    if (!self)
        return;
    curl_share_cleanup (self->share);
    for (int i = 0; i < CURL_LOCK_DATA_LAST; i++)
        pthread_mutex_destroy (&self->locks[i]);
    free (self);
    curl_global_cleanup ();
    *self_p = NULL;
}

CURLSH *
cm_http_share_handle (cm_http_share_t *self)
{
    assert (self);
    return self->share;
}

//  --- private ---------------------------------------------------------------------

static void
s_lock (CURL *handle, curl_lock_data data, curl_lock_access access, void *arg)
{
    (void) handle, (void) access;
    cm_http_share_t *self = (cm_http_share_t *) arg;
    pthread_mutex_lock (&self->locks[data < CURL_LOCK_DATA_LAST ? data : 0]);
}

static void
s_unlock (CURL *handle, curl_lock_data data, void *arg)
{
    (void) handle;
    cm_http_share_t *self = (cm_http_share_t *) arg;
    pthread_mutex_unlock (&self->locks[data < CURL_LOCK_DATA_LAST ? data : 0]);
}
