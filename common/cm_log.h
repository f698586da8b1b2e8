/*  cm_log.h: one-line logging to stderr with time, program, pid and level.

    Thread-safe: each line is formatted into a buffer and written with one
    write(2), so lines from threads and processes never interleave.
    LOG_LEVEL (debug, info, warn or warning, error, in any case; default
    info) sets the threshold. Every program lists it (CM_LOG_CONF_ENTRY) and
    stops on a bad one (cm_log_level_apply); cm_log_init, which runs before
    the settings are read, only takes a good one. */
#ifndef CM_LOG_H_INCLUDED
#define CM_LOG_H_INCLUDED

#include <stddef.h>

typedef enum { CM_LOG_DEBUG = 0, CM_LOG_INFO, CM_LOG_WARN, CM_LOG_ERROR } cm_log_level_t;

//  Set the program name shown in each line (borrowed; keep it alive).
void cm_log_init (const char *program);
//  Set the threshold; lines below it are skipped.
void cm_log_set_level (cm_log_level_t level);
//  Parse "debug"/"info"/"warn" ("warning")/"error", in any case; -1 when
//  unknown.
int cm_log_level_parse (const char *name);
//  The LOG_LEVEL setting, read: set the threshold to text's level and
//  return 0, or return -1 with a message naming LOG_LEVEL in err.
int cm_log_level_apply (const char *text, char *err, size_t errlen);

//  LOG_LEVEL as a cm_config table entry into the char * member `member` of
//  `type`, for --help (expand it where cm_config.h is included).
// clang-format off
#define CM_LOG_CONF_ENTRY(type, member)                                                  \
    {"LOG_LEVEL", CM_CONF_STR, "info", 0, 0, offsetof (type, member),                   \
     "lowest level logged: debug, info, warn (or warning) or error, in any case"}
// clang-format on

void cm_log (cm_log_level_t level, const char *fmt, ...)
    __attribute__ ((format (printf, 2, 3)));

#define cm_debug(...) cm_log (CM_LOG_DEBUG, __VA_ARGS__)
#define cm_info(...)  cm_log (CM_LOG_INFO, __VA_ARGS__)
#define cm_warn(...)  cm_log (CM_LOG_WARN, __VA_ARGS__)
#define cm_error(...) cm_log (CM_LOG_ERROR, __VA_ARGS__)

#endif
