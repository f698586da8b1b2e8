/*  gateway: the suite's only HTTP listener. See gw_server.h. */
#include "cm_common.h"
#include "cm_config.h"
#include "cm_log.h"
#include "gw_server.h"
#include <czmq.h>
#include <pthread.h>
#include <signal.h>

int
main (int argc, char **argv)
{
    cm_log_init ("gateway");
    int rc =
        cm_main_args (argc, argv, "gateway",
                      "The HTTP gateway: authenticates requests and forwards them over "
                      "ZeroMQ to the chat, ingestion and agent daemons.",
                      gw_config_table ());
    if (rc)
        return rc > 0 ? 0 : 2;
    gw_config_t config = {0};
    char err[512];
    if (cm_config_load (gw_config_table (), &config, err, sizeof err) ||
        gw_config_check (&config, err, sizeof err)) {
        fprintf (stderr, "gateway: bad configuration: %s\n", err);
        cm_config_free (gw_config_table (), &config);
        return 2;
    }
    sigset_t set;
    sigemptyset (&set);
    sigaddset (&set, SIGINT);
    sigaddset (&set, SIGTERM);
    pthread_sigmask (SIG_BLOCK, &set, NULL);
    signal (SIGPIPE, SIG_IGN);
    zsys_handler_set (NULL);
    gw_server_t *server = gw_server_new (&config);
    if (!server) {
        cm_config_free (gw_config_table (), &config);
        return 1;
    }
    int sig = 0;
    sigwait (&set, &sig);
    cm_info ("signal %d: stopping", sig);
    gw_server_destroy (&server);
    cm_config_free (gw_config_table (), &config);
    return 0;
}
