/*  main.c: the supervisor program: runs the suite named by a config file in
    the foreground. Arguments; then every check (the settings, the
    environment handed on, the suite file and its commands), which exits 2
    on a mistake before anything is made; then RUN_DIR and the admin key;
    then the supervisor's loop until SIGINT/SIGTERM. */
#include "cm_common.h"
#include "cm_config.h"
#include "cm_log.h"
#include "sup_conf.h"
#include "sup_env.h"
#include "sup_metrics.h"
#include "sup_supervisor.h"
#include <czmq.h>

static const char *s_summary =
    "Runs the programs of the suite file FILE in the foreground (see the top of\n"
    "deploy/local/suite.conf for its format), restarts a child that dies with\n"
    "capped exponential back-off and jitter, gives a child up after too many\n"
    "crashes, and on SIGINT/SIGTERM stops every child (SIGKILL after the grace\n"
    "period) and exits 0. Every child inherits this environment, plus its\n"
    "program's env entries, INSTANCE_INDEX and SUPERVISED=1.\n"
    "\n"
    "Start-up checks the settings below, the suite file and every program's\n"
    "command (an executable file, or a name found in PATH) before it creates\n"
    "RUN_DIR, keeps or prints an admin key, or starts anything; a bad setting\n"
    "or an error in the suite file is named and stops it with exit status 2.\n"
    "A child that exits with status 2 (a bad setting, in our programs) at its\n"
    "first start stops the suite: the supervisor exits 2. Other failures of\n"
    "the run (the hub cannot bind, every instance given up) exit 1.\n"
    "\n"
    "Metrics (SUPERVISOR_METRICS_ROLE): as the hub (default) it binds\n"
    "SUPERVISOR_ENDPOINT, where every instance reports and the gateway asks for\n"
    "the aggregate; as a reporter (one supervisor per container) it binds\n"
    "nothing and reports its own restarts and children to the hub there.\n"
    "\n"
    "  -c, --config FILE   the suite file (required, unless --hub-only)\n"
    "  --hub-only          run no program: only the metrics hub\n"
    "  -h, --help          this help\n"
    "  -V, --version       the version";

//  Returns 0 to go on, 1 to exit 0 (help or version shown), -1 to exit 2.
static int
s_args (int argc, char **argv, const char **config, bool *hub_only)
{
    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i];
        if (!strcmp (arg, "-c") || !strcmp (arg, "--config")) {
            if (i + 1 == argc) {
                fprintf (stderr, "supervisor: %s needs a FILE (try --help)\n", arg);
                return -1;
            }
            *config = argv[++i];
        } else if (!strncmp (arg, "--config=", 9))
            *config = arg + 9;
        else if (!strcmp (arg, "--hub-only"))
            *hub_only = true;
        else if (!strcmp (arg, "--help") || !strcmp (arg, "-h")) {
            printf (
                "usage: supervisor -c FILE | --hub-only [--help] [--version]\n\n%s\n\n",
                s_summary);
            printf ("Configuration (environment variables):\n");
            cm_config_usage (sup_env_table, stdout);
            return 1;
        } else {
            //  --version, and the message for anything unknown.
            char *single[] = {argv[0], argv[i], NULL};
            int rc = cm_main_args (2, single, "supervisor", s_summary, sup_env_table);
            if (rc != 0)
                return rc;
        }
    }
    if (*hub_only && *config) {
        fprintf (stderr, "supervisor: --hub-only runs no program: no -c FILE\n");
        return -1;
    }
    if (!*config && !*hub_only) {
        fprintf (stderr, "supervisor: -c FILE is required (try --help)\n");
        return -1;
    }
    if (*config && !**config) {
        fprintf (stderr, "supervisor: -c/--config names no file (an empty path)\n");
        return -1;
    }
    return 0;
}

//  The metrics role of this supervisor: the hub, bound, or a reporter to it.
static sup_metrics_t *
s_metrics (const sup_settings_t *settings)
{
    if (!strcmp (settings->metrics_role, "hub"))
        return sup_metrics_new (settings->metrics_endpoint, settings->metrics_ttl_ms);
    //  Named like a daemon instance: one per container host name and pid.
    char host[128] = "host";
    gethostname (host, sizeof host - 1);
    char instance[192];
    snprintf (instance, sizeof instance, "supervisor-%s-%d", host, (int) getpid ());
    return sup_metrics_new_reporter (settings->metrics_endpoint, instance,
                                     settings->metrics_report_ms);
}

int
main (int argc, char **argv)
{
    cm_log_init ("supervisor");
    const char *config = NULL;
    bool hub_only = false;
    int rc = s_args (argc, argv, &config, &hub_only);
    if (rc)
        return rc > 0 ? 0 : 2;

    char err[1024];
    sup_settings_t settings = {0};
    sup_conf_t *conf = NULL;
    sup_supervisor_t *supervisor = NULL;
    sup_metrics_t *metrics = NULL;
    //  Until everything is checked a failure is a bad setting or suite
    //  file: exit 2, like our other programs, and nothing made on disk.
    rc = 2;
    if (sup_env_load (&settings, err, sizeof err) ||
        sup_env_export (&settings, err, sizeof err)) {
        cm_error ("%s", err);
        goto done;
    }
    cm_log_set_level ((cm_log_level_t) cm_log_level_parse (settings.log_level));
    if (hub_only && strcmp (settings.metrics_role, "hub")) {
        cm_error ("--hub-only serves the metrics hub: SUPERVISOR_METRICS_ROLE must be "
                  "hub, not '%s'",
                  settings.metrics_role);
        goto done;
    }
    //  The key comes before the suite file, which may expand
    //  ${ADMIN_API_KEY}; with no program there is no child to hand one to.
    if (hub_only)
        conf = sup_conf_new ();
    else if (sup_env_admin_key (&settings, err, sizeof err) ||
             !(conf = sup_conf_load (config, err, sizeof err)) ||
             sup_conf_check (conf, err, sizeof err)) {
        cm_error ("%s", err);
        goto done;
    }
    if (sup_env_prepare (&settings, stdout, err, sizeof err)) {
        cm_error ("%s", err);
        goto done;
    }
    cm_info ("RUN_DIR=%s BIN_DIR=%s REDIS_URL=%s", settings.run_dir, settings.bin_dir,
             settings.redis_url);
    rc = 1;
    supervisor = sup_supervisor_new (&conf, &settings);
    if (!supervisor)
        goto done;
    //  The metrics hub joins the loop before any child starts, so that
    //  their first reports find it (see sup_metrics.h).
    //  Signals come from the supervisor's signalfd: czmq installs no handlers.
    zsys_handler_set (NULL);
    metrics = s_metrics (&settings);
    if (!metrics || sup_metrics_attach (metrics, supervisor))
        goto done;
    rc = sup_supervisor_run (supervisor);
done:
    //  The hub reads the supervisor's state: it goes first.
    sup_metrics_destroy (&metrics);
    sup_supervisor_destroy (&supervisor);
    sup_conf_destroy (&conf);
    sup_env_free (&settings);
    return rc;
}
