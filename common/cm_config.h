/*  cm_config.h: settings from environment variables, declared in tables.

    Each program declares a table of cm_conf_entry_t (name, type, default,
    bounds, where to store it, one line of help), like redis's config table.
    cm_config_load reads every entry from the environment; a value that does
    not parse or is out of bounds is an error that names the variable, so a
    bad setting stops start-up instead of being silently replaced. */
#ifndef CM_CONFIG_H_INCLUDED
#define CM_CONFIG_H_INCLUDED

#include "cm_common.h"

typedef enum {
    CM_CONF_INT,      //  int64_t, bounded by min..max
    CM_CONF_STR,      //  char *, owned by the target (free with cm_config_free)
    CM_CONF_BOOL,     //  bool: 1/0, true/false, yes/no, on/off
    CM_CONF_ENDPOINT, //  char *, a ZeroMQ endpoint to connect to (see below)
    CM_CONF_URL,      //  char *, must start with a scheme (http://, redis://, ...)
    CM_CONF_DOUBLE,   //  double, a decimal number bounded by min..max
    CM_CONF_BIND,     //  char *, a ZeroMQ endpoint to bind (see below)
    CM_CONF_TOKEN,    //  char *, printable ASCII with no space, 1..max bytes
                      //  (max 0: any length): ids, keys sent in headers
} cm_conf_type_t;

//  ZeroMQ endpoints, between processes (so no inproc://):
//    tcp://host:port  port: digits only, 1..65535; host: not empty, no space
//                     or control character; '*' (every interface) only in
//                     an endpoint to bind (CM_CONF_BIND)
//    ipc://path       path: 1..107 bytes (a Unix socket's limit); '*' only
//                     to bind
//  A value of a CM_CONF_TOKEN entry is never quoted in an error (it may be a
//  secret).

typedef struct cm_conf_entry_s {
    const char *name;    //  environment variable
    cm_conf_type_t type; //  how to parse it
    const char *def;     //  default as text; NULL means "unset" (strings only)
    int64_t min, max;    //  bounds for CM_CONF_INT
    size_t offset;       //  where in the target struct the value goes
    const char *help;    //  one line for --help and the README
} cm_conf_entry_t;

//  Load every entry of the table (terminated by an entry with name NULL)
//  into target. Returns 0, or -1 with a message naming the variable in err.
int cm_config_load (const cm_conf_entry_t *table, void *target, char *err, size_t errlen);

//  Free the strings that cm_config_load stored in target.
void cm_config_free (const cm_conf_entry_t *table, void *target);

//  Print "NAME (default X): help" lines for --help.
void cm_config_usage (const cm_conf_entry_t *table, FILE *out);

//  Parse one integer setting; helpers for code that reads ad-hoc values.
//  Returns 0 and sets *value, or -1 when text is not an integer in bounds.
int cm_config_parse_int (const char *text, int64_t min, int64_t max, int64_t *value);

//  Parse a decimal number (no inf or nan); returns 0 and sets *value, or -1
//  when text is not a number in bounds.
int cm_config_parse_double (const char *text, double min, double max, double *value);

//  Parse a boolean; returns 0 and sets *value, or -1.
int cm_config_parse_bool (const char *text, bool *value);

//  A directory setting, before use: 0 when path is a directory or does not
//  exist yet (it will be made); -1 with "NAME: 'path' is not a directory"
//  in err when it, or a component of it, exists and is not a directory.
//  Other failures (permissions) are left to the code that opens it.
int cm_config_check_dir (const char *name, const char *path, char *err, size_t errlen);

//  The database directory of CM_STORAGE_CONF_ENTRIES, before
//  cm_storage_dir_default: STORAGE_DIR when set (not NULL, not ""), else
//  RUN_DIR and $RUN_DIR/storage, checked as cm_config_check_dir does; the
//  message names STORAGE_DIR, and RUN_DIR too when the path came from it.
int cm_config_check_storage (const char *storage_dir, const char *run_dir, char *err,
                             size_t errlen);

#endif
