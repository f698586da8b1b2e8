/*  sup_env.h: the supervisor's settings, and the environment it hands on.

    The settings are environment variables declared in sup_env_table (listed
    by --help). Start-up checks everything before it changes anything:
    sup_env_load reads the settings, sup_env_export derives and exports what
    the suite file and the children need (REDIS_URL with its default,
    REDIS_HOST and REDIS_PORT parsed from it, RUN_DIR made absolute, BIN_DIR)
    and sup_env_admin_key makes sure ADMIN_API_KEY is set, so that every
    child sees the same key; none of them writes a file. Only once the suite
    file has been read and checked too does sup_env_prepare create RUN_DIR
    and keep and print the key. The supervisor's environment reaches every
    child, so one set of variables configures a whole run. */
#ifndef SUP_ENV_H_INCLUDED
#define SUP_ENV_H_INCLUDED

#include "cm_common.h"
#include "cm_config.h"
#include "sup_backoff.h"

//  Where the admin key of this run came from (sup_env_admin_key).
typedef enum {
    SUP_ENV_KEY_NONE,      //  not looked for (a supervisor with no program)
    SUP_ENV_KEY_GIVEN,     //  ADMIN_API_KEY was set
    SUP_ENV_KEY_READ,      //  read from $RUN_DIR/admin_api_key
    SUP_ENV_KEY_GENERATED, //  new: sup_env_prepare keeps it there
} sup_env_key_source_t;

//  Plain data filled from the environment by sup_env_load (cm_config stores
//  by offset, so this struct is public). Strings are owned by it.
typedef struct {
    int64_t restart_initial_ms; //  SUPERVISOR_RESTART_INITIAL_MS
    int64_t restart_max_ms;     //  SUPERVISOR_RESTART_MAX_MS
    int64_t restart_reset_ms;   //  SUPERVISOR_RESTART_RESET_MS
    int64_t max_crashes;        //  SUPERVISOR_MAX_CRASHES
    int64_t crash_window_ms;    //  SUPERVISOR_CRASH_WINDOW_MS
    int64_t grace_ms;           //  SUPERVISOR_GRACE_MS
    char *redis_url;            //  REDIS_URL
    char *run_dir;              //  RUN_DIR (absolute after sup_env_export)
    char *bin_dir;              //  BIN_DIR (set by sup_env_export)
    char *admin_api_key;        //  ADMIN_API_KEY (set by sup_env_admin_key)
    char *log_level;            //  LOG_LEVEL
    char *metrics_endpoint;     //  SUPERVISOR_ENDPOINT (hub: bound, or reported to)
    int64_t metrics_ttl_ms;     //  METRICS_INSTANCE_TTL_MS
    char *metrics_role;         //  SUPERVISOR_METRICS_ROLE: "hub" or "report"
    int64_t metrics_report_ms;  //  METRICS_REPORT_INTERVAL_MS (role "report")
    sup_env_key_source_t admin_key_source; //  where admin_api_key came from
} sup_settings_t;

//  The settings table, for cm_config and --help.
extern const cm_conf_entry_t sup_env_table[];

//  Name of the file under RUN_DIR that keeps a generated admin key.
#define SUP_ENV_ADMIN_KEY_FILE "admin_api_key"
//  Longest admin key, as the gateway takes it (ADMIN_API_KEY).
#define SUP_ENV_ADMIN_KEY_MAX 4096

//  Load settings from the environment and check them together. Returns 0,
//  or -1 with a message naming the variable in err. Free with sup_env_free
//  in either case.
int sup_env_load (sup_settings_t *settings, char *err, size_t errlen);

//  Free the strings of settings.
void sup_env_free (sup_settings_t *settings);

//  The back-off policy the settings describe.
sup_backoff_policy_t sup_env_backoff_policy (const sup_settings_t *settings);

//  Parse a redis://[user[:password]@]host[:port][/db] URL; host may be an
//  IPv6 address in brackets (given back without them). Returns 0, or -1
//  when url is not of that form.
int sup_env_redis_url (const char *url, char *host, size_t hostlen, int64_t *port);

//  Export REDIS_URL, REDIS_HOST, REDIS_PORT, RUN_DIR (made absolute, not
//  created: an existing RUN_DIR must be a directory) and BIN_DIR (default:
//  the directory of this executable; must be a directory). Updates settings
//  to the absolute paths. Creates nothing. Returns 0, or -1 with a message
//  naming the variable in err.
int sup_env_export (sup_settings_t *settings, char *err, size_t errlen);

//  Make sure ADMIN_API_KEY is set, for the children and the suite file's
//  ${ADMIN_API_KEY}. When it is not, read it from $RUN_DIR/admin_api_key,
//  or, when there is no such file, generate 32 random bytes (64 hex digits)
//  in memory; then export it. Writes and prints nothing: sup_env_prepare
//  does. Call after sup_env_export. Returns 0, or -1 with the reason
//  (naming ADMIN_API_KEY) in err.
int sup_env_admin_key (sup_settings_t *settings, char *err, size_t errlen);

//  After every check: create RUN_DIR and its log/ and redis/
//  subdirectories; when ADMIN_API_KEY was not set (sup_env_admin_key),
//  keep a generated key in $RUN_DIR/admin_api_key (mode 0600), print
//  "ADMIN_API_KEY=..." on out and log where it is kept. Returns 0, or -1
//  with a message naming the variable in err.
int sup_env_prepare (sup_settings_t *settings, FILE *out, char *err, size_t errlen);

#endif
