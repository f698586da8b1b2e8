/*  sup_conf.h: the suite file that names the programs a supervisor runs.

    INI-like, one section per program (the full format is described at the
    top of deploy/local/suite.conf):

        # comment
        [program:chatd]
        command     = ${BIN_DIR}/chatd --verbose
        replicas    = ${CHAT_REPLICAS:-2}
        env         = CHAT_QUEUE_CONCURRENCY=4
        stop_signal = TERM

    Values are split into words like a shell does ('single' and "double"
    quotes, backslash escapes), and ${VAR} / ${VAR:-default} are expanded
    from the environment as the file is read; $$ is a literal $. A variable
    that is not defined is an error that names it, and an error in a value
    that came from variables names them too: "replicas: 'abc' is not a whole
    number from 0 to 64 (from CHAT_REPLICAS)". A line ending in a backslash
    continues on the next. Every error names file:line. */
#ifndef SUP_CONF_H_INCLUDED
#define SUP_CONF_H_INCLUDED

#include "cm_common.h"

typedef struct sup_conf_s sup_conf_t;
typedef struct sup_program_s sup_program_t;

//  Replicas allowed per program (0 leaves a program out of the run).
#define SUP_CONF_REPLICAS_MAX 64

//  Read and parse the file at path. Returns the caller's sup_conf_t, or NULL
//  with a message naming file:line (or the file) in err.
sup_conf_t *sup_conf_load (const char *path, char *err, size_t errlen);

//  Parse text; origin names it in messages (a file name). As sup_conf_load.
sup_conf_t *sup_conf_parse (const char *text, const char *origin, char *err,
                            size_t errlen);

//  Check that every program that runs (replicas > 0) can be started: its
//  command's first word is an executable file, given as a path (with a
//  '/', from the working directory) or found in PATH as execvp would.
//  Returns 0, or -1 with file:line, the program and the command in err.
int sup_conf_check (sup_conf_t *self, char *err, size_t errlen);

//  An empty suite, no program (a supervisor that only serves its metrics
//  hub: `supervisor --hub-only`). A file must name at least one program.
sup_conf_t *sup_conf_new (void);

//  Destroy; NULL-safe, nulls the pointer.
void sup_conf_destroy (sup_conf_t **self_p);

//  Number of programs, in file order.
size_t sup_conf_size (sup_conf_t *self);

//  Program at index (< size); borrowed, lives as long as self.
const sup_program_t *sup_conf_program (sup_conf_t *self, size_t index);

//  Program by name, or NULL; borrowed.
const sup_program_t *sup_conf_lookup (sup_conf_t *self, const char *name);

//  Expand ${VAR}, ${VAR:-default} and $$ in text from the environment (no
//  word splitting, no quotes). Returns a string the caller frees, or NULL
//  with the reason (naming the variable) in err.
char *sup_conf_expand (const char *text, char *err, size_t errlen);

//  The NAME of [program:NAME]; borrowed.
const char *sup_program_name (const sup_program_t *self);

//  The command words, argv[0] first, NULL-terminated; borrowed.
char *const *sup_program_argv (const sup_program_t *self);

//  Number of command words (at least 1).
size_t sup_program_argc (const sup_program_t *self);

//  The extra environment, "KEY=VALUE" strings, NULL-terminated; borrowed.
char *const *sup_program_env (const sup_program_t *self);

//  Number of replicas to run (default 1).
size_t sup_program_replicas (const sup_program_t *self);

//  Signal that asks the program to stop (default SIGTERM).
int sup_program_stop_signal (const sup_program_t *self);

//  Line of the [program:NAME] header, for messages.
int sup_program_line (const sup_program_t *self);

#endif
