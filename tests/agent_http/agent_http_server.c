/*  agent_http_server.c: see agent_http_server.h. */
#include "agent_http_server.h"
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <ctype.h>
#include <jansson.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

struct ah_server_s {
    int listener;
    int port;
    pthread_t thread;
    atomic_bool stopping;
    pthread_mutex_t lock; //  guards everything below
    pthread_cond_t idle;  //  signalled when open drops to 0
    int open;             //  connections being served
    json_t *paths;        //  every request's path, in order
    int in_flight, max_concurrent, gone;
    char *last;
};

typedef struct {
    ah_server_t *server;
    int fd;
} s_conn_t;

static void
s_send_all (int fd, const char *data, size_t size)
{
    while (size) {
        ssize_t n = send (fd, data, size, MSG_NOSIGNAL);
        if (n <= 0)
            return;
        data += n;
        size -= (size_t) n;
    }
}

static void
s_respond (int fd, int status, const char *type, const char *extra, const char *body,
           size_t size)
{
    char head[1024];
    int n = snprintf (head, sizeof head,
                      "HTTP/1.1 %d X\r\nContent-Type: %s\r\nContent-Length: %zu\r\n%s"
                      "Connection: close\r\n\r\n",
                      status, type, size, extra ? extra : "");
    s_send_all (fd, head, (size_t) n);
    s_send_all (fd, body, size);
}

//  Has the client closed its side?
static bool
s_client_gone (int fd)
{
    struct pollfd p = {fd, POLLIN | POLLRDHUP, 0};
    if (poll (&p, 1, 0) <= 0)
        return false;
    if (p.revents & (POLLRDHUP | POLLHUP | POLLERR))
        return true;
    char c;
    return recv (fd, &c, 1, MSG_PEEK | MSG_DONTWAIT) == 0;
}

static void *
s_serve (void *arg)
{
    s_conn_t *conn = (s_conn_t *) arg;
    ah_server_t *self = conn->server;
    int fd = conn->fd;
    free (conn);
    size_t max = 1 << 20, size = 0;
    char *buf = malloc (max + 1);
    char *end = NULL;
    while (size < max) {
        ssize_t n = recv (fd, buf + size, max - size, 0);
        if (n <= 0)
            break;
        size += (size_t) n;
        buf[size] = 0;
        if ((end = strstr (buf, "\r\n\r\n")))
            break;
    }
    if (!end)
        goto done;
    *end = 0;
    char *body = end + 4;
    size_t length = 0;
    for (char *h = strstr (buf, "\r\n"); h; h = strstr (h + 2, "\r\n"))
        if (!strncasecmp (h + 2, "content-length:", 15))
            length = strtoul (h + 17, NULL, 10);
    while ((size_t) (buf + size - body) < length && size < max) {
        ssize_t n = recv (fd, buf + size, max - size, 0);
        if (n <= 0)
            break;
        size += (size_t) n;
    }
    buf[size] = 0;
    if (length > (size_t) (buf + size - body)) //  more than fits: keep what came
        length = (size_t) (buf + size - body);
    char method[16] = "", path[2048] = "";
    sscanf (buf, "%15s %2047s", method, path);

    pthread_mutex_lock (&self->lock);
    json_array_append_new (self->paths, json_string (path));
    pthread_mutex_unlock (&self->lock);

    if (!strncmp (path, "/echo", 5)) {
        json_t *headers = json_object ();
        for (char *h = strstr (buf, "\r\n"); h; h = strstr (h + 2, "\r\n")) {
            char *line = h + 2, *colon = strchr (line, ':');
            char *next = strstr (line, "\r\n");
            if (!colon || (next && colon > next))
                continue;
            char name[128];
            size_t len = (size_t) (colon - line) < sizeof name - 1
                             ? (size_t) (colon - line)
                             : sizeof name - 1;
            for (size_t i = 0; i < len; i++)
                name[i] = (char) tolower ((unsigned char) line[i]);
            name[len] = 0;
            char *value = colon + 1;
            while (*value == ' ')
                value++;
            size_t vlen = next ? (size_t) (next - value) : strlen (value);
            json_object_set_new (headers, name, json_stringn (value, vlen));
        }
        json_t *echo = json_pack ("{s:s, s:s, s:o, s:s#}", "method", method, "path", path,
                                  "headers", headers, "body", body, (int) length);
        char *text = json_dumps (echo, JSON_COMPACT);
        json_decref (echo);
        pthread_mutex_lock (&self->lock);
        free (self->last);
        self->last = strdup (text);
        pthread_mutex_unlock (&self->lock);
        s_respond (fd, 200, "application/json", NULL, text, strlen (text));
        free (text);
    } else if (!strncmp (path, "/status/", 8)) {
        int status = atoi (path + 8);
        char text[64];
        snprintf (text, sizeof text, "{\"error\":\"status %d\"}", status);
        s_respond (fd, status, "application/json", NULL, text, strlen (text));
    } else if (!strncmp (path, "/slow", 5)) {
        const char *ms = strstr (path, "ms=");
        int wait = ms ? atoi (ms + 3) : 1000;
        pthread_mutex_lock (&self->lock);
        if (++self->in_flight > self->max_concurrent)
            self->max_concurrent = self->in_flight;
        pthread_mutex_unlock (&self->lock);
        bool gone = false;
        for (int waited = 0; waited < wait && !gone && !self->stopping; waited += 10) {
            usleep (10 * 1000);
            gone = s_client_gone (fd);
        }
        pthread_mutex_lock (&self->lock);
        self->in_flight--;
        if (gone)
            self->gone++;
        pthread_mutex_unlock (&self->lock);
        if (!gone) {
            char text[64];
            snprintf (text, sizeof text, "{\"slow\":%d}", wait);
            s_respond (fd, 200, "application/json", NULL, text, strlen (text));
        }
    } else if (!strncmp (path, "/redirect?to=", 13)) {
        char location[2100];
        snprintf (location, sizeof location, "Location: %s\r\n", path + 13);
        s_respond (fd, 302, "text/plain", location, "moved", 5);
    } else if (!strcmp (path, "/page")) {
        s_respond (fd, 200, "text/html; charset=utf-8", NULL, AH_PAGE, strlen (AH_PAGE));
    } else if (!strcmp (path, "/big")) {
        size_t big = 2 << 20;
        char *text = malloc (big);
        memset (text, 'x', big);
        s_respond (fd, 200, "text/plain", NULL, text, big);
        free (text);
    } else
        s_respond (fd, 404, "text/plain", NULL, "no such path", 12);
done:
    free (buf);
    shutdown (fd, SHUT_WR);
    close (fd);
    pthread_mutex_lock (&self->lock);
    if (--self->open == 0)
        pthread_cond_broadcast (&self->idle);
    pthread_mutex_unlock (&self->lock);
    return NULL;
}

static void *
s_accept (void *arg)
{
    ah_server_t *self = (ah_server_t *) arg;
    while (!self->stopping) {
        struct pollfd p = {self->listener, POLLIN, 0};
        if (poll (&p, 1, 50) <= 0)
            continue;
        int fd = accept (self->listener, NULL, NULL);
        if (fd < 0)
            continue;
        s_conn_t *conn = malloc (sizeof *conn);
        conn->server = self;
        conn->fd = fd;
        pthread_mutex_lock (&self->lock);
        self->open++;
        pthread_mutex_unlock (&self->lock);
        pthread_t thread;
        if (pthread_create (&thread, NULL, s_serve, conn) == 0)
            pthread_detach (thread);
        else {
            close (fd);
            free (conn);
            pthread_mutex_lock (&self->lock);
            self->open--;
            pthread_mutex_unlock (&self->lock);
        }
    }
    return NULL;
}

ah_server_t *
ah_server_start (void)
{
    ah_server_t *self = calloc (1, sizeof *self);
    self->listener = socket (AF_INET, SOCK_STREAM, 0);
    int on = 1;
    setsockopt (self->listener, SOL_SOCKET, SO_REUSEADDR, &on, sizeof on);
    struct sockaddr_in addr = {0};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl (INADDR_LOOPBACK);
    cr_assert_eq (bind (self->listener, (struct sockaddr *) &addr, sizeof addr), 0);
    cr_assert_eq (listen (self->listener, 64), 0);
    socklen_t len = sizeof addr;
    getsockname (self->listener, (struct sockaddr *) &addr, &len);
    self->port = ntohs (addr.sin_port);
    pthread_mutex_init (&self->lock, NULL);
    pthread_cond_init (&self->idle, NULL);
    self->paths = json_array ();
    cr_assert_eq (pthread_create (&self->thread, NULL, s_accept, self), 0);
    return self;
}

void
ah_server_stop (ah_server_t **self_p)
{
    ah_server_t *self = *self_p;
    if (!self)
        return;
    self->stopping = true;
    pthread_join (self->thread, NULL);
    close (self->listener);
    pthread_mutex_lock (&self->lock);
    while (self->open > 0)
        pthread_cond_wait (&self->idle, &self->lock);
    pthread_mutex_unlock (&self->lock);
    json_decref (self->paths);
    free (self->last);
    pthread_mutex_destroy (&self->lock);
    pthread_cond_destroy (&self->idle);
    free (self);
    *self_p = NULL;
}

int
ah_server_port (ah_server_t *self)
{
    return self->port;
}

int
ah_server_hits (ah_server_t *self, const char *prefix)
{
    int hits = 0;
    pthread_mutex_lock (&self->lock);
    size_t i;
    json_t *path;
    json_array_foreach (self->paths, i, path)
    {
        if (!prefix || !strncmp (json_string_value (path), prefix, strlen (prefix)))
            hits++;
    }
    pthread_mutex_unlock (&self->lock);
    return hits;
}

int
ah_server_max_concurrent (ah_server_t *self)
{
    pthread_mutex_lock (&self->lock);
    int value = self->max_concurrent;
    pthread_mutex_unlock (&self->lock);
    return value;
}

int
ah_server_gone (ah_server_t *self)
{
    pthread_mutex_lock (&self->lock);
    int value = self->gone;
    pthread_mutex_unlock (&self->lock);
    return value;
}

char *
ah_server_last (ah_server_t *self)
{
    pthread_mutex_lock (&self->lock);
    char *value = self->last ? strdup (self->last) : NULL;
    pthread_mutex_unlock (&self->lock);
    return value;
}

void
ah_server_reset (ah_server_t *self)
{
    pthread_mutex_lock (&self->lock);
    json_array_clear (self->paths);
    self->max_concurrent = self->gone = 0;
    free (self->last);
    self->last = NULL;
    pthread_mutex_unlock (&self->lock);
}
