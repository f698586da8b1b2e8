/*  cm_log.h: one-line logging to stderr with time, program, pid and level.

    Thread-safe: each line is formatted into a buffer and written with one
    write(2), so lines from threads and processes never interleave.
    LOG_LEVEL (debug, info, warn, error; default info) sets the threshold. */
#ifndef CM_LOG_H_INCLUDED
#define CM_LOG_H_INCLUDED

typedef enum { CM_LOG_DEBUG = 0, CM_LOG_INFO, CM_LOG_WARN, CM_LOG_ERROR } cm_log_level_t;

//  Set the program name shown in each line (borrowed; keep it alive).
void cm_log_init (const char *program);
//  Set the threshold; lines below it are skipped.
void cm_log_set_level (cm_log_level_t level);
//  Parse "debug"/"info"/"warn"/"error"; -1 when unknown.
int cm_log_level_parse (const char *name);

void cm_log (cm_log_level_t level, const char *fmt, ...)
    __attribute__ ((format (printf, 2, 3)));

#define cm_debug(...) cm_log (CM_LOG_DEBUG, __VA_ARGS__)
#define cm_info(...)  cm_log (CM_LOG_INFO, __VA_ARGS__)
#define cm_warn(...)  cm_log (CM_LOG_WARN, __VA_ARGS__)
#define cm_error(...) cm_log (CM_LOG_ERROR, __VA_ARGS__)

#endif
