/*  test_port.c: see test_port.h. */
#include "test_port.h"
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

//  Ports below this are left to system services.
#define S_LOWEST 10000

static pthread_mutex_t s_lock = PTHREAD_MUTEX_INITIALIZER;
static unsigned char s_given[65536 / 8];

//  The first ephemeral port (32768 when /proc cannot tell).
static int
s_ephemeral_low (void)
{
    int low = 32768, high = 60999;
    FILE *file = fopen ("/proc/sys/net/ipv4/ip_local_port_range", "r");
    if (file) {
        if (fscanf (file, "%d %d", &low, &high) != 2)
            low = 32768;
        fclose (file);
    }
    return low > S_LOWEST + 1000 ? low : 32768;
}

static bool
s_bindable (int port)
{
    int fd = socket (AF_INET, SOCK_STREAM, 0);
    if (fd < 0)
        return false;
    struct sockaddr_in addr = {0};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl (INADDR_LOOPBACK);
    addr.sin_port = htons ((uint16_t) port);
    bool free = bind (fd, (struct sockaddr *) &addr, sizeof addr) == 0;
    close (fd);
    return free;
}

int
test_port_free (void)
{
    pthread_mutex_lock (&s_lock);
    static unsigned int seed;
    if (!seed)
        seed = (unsigned int) time (NULL) ^ (unsigned int) getpid () << 8;
    int low = s_ephemeral_low ();
    int port = 0;
    for (int tries = 0; tries < 10000 && !port; tries++) {
        int candidate =
            S_LOWEST + (int) (rand_r (&seed) % (unsigned int) (low - S_LOWEST));
        if (s_given[candidate / 8] & (1 << (candidate % 8)))
            continue;
        if (s_bindable (candidate))
            port = candidate;
    }
    if (port)
        s_given[port / 8] |= (unsigned char) (1 << (port % 8));
    pthread_mutex_unlock (&s_lock);
    if (!port) {
        fprintf (stderr, "test_port_free: no free port below %d\n", low);
        abort ();
    }
    return port;
}

int
test_port_refusing (int *holder)
{
    *holder = socket (AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in addr = {.sin_family = AF_INET,
                               .sin_addr.s_addr = htonl (INADDR_LOOPBACK)};
    socklen_t size = sizeof addr;
    if (*holder < 0 || bind (*holder, (struct sockaddr *) &addr, sizeof addr) ||
        getsockname (*holder, (struct sockaddr *) &addr, &size)) {
        perror ("test_port_refusing");
        abort ();
    }
    return ntohs (addr.sin_port);
}
