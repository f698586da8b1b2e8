/*  sup_conf.c: see sup_conf.h.

    The reader works on logical lines (continuations joined), and each key is
    a row of s_keys, nginx-style, so a new key is one handler and one row.
    Expansion happens while words are split, the way a shell expands quoted
    words: a value that contains spaces stays one argument. */
#include "sup_conf.h"
#include "cm_config.h"
#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

struct sup_program_s {
    char *name;       //  NAME of [program:NAME]
    char **argv;      //  command words, NULL-terminated
    size_t argc;      //  entries in argv
    char **env;       //  extra "KEY=VALUE" entries, NULL-terminated
    size_t env_size;  //  entries in env
    int64_t replicas; //  instances to run
    int stop_signal;  //  first signal sent when stopping
    int line;         //  line of the section header
    int command_line; //  line of the command key
    char *argv0_from; //  variables argv[0] came from ("" when none)
    unsigned seen;    //  bit per s_keys row already given
};

struct sup_conf_s {
    sup_program_t **programs; //  in file order
    size_t size;              //  entries in programs
    char *origin;             //  file name for messages (NULL: no file)
};

//  A growing string.
typedef struct {
    char *data; //  NUL-terminated once anything was added
    size_t len; //  bytes used, without the NUL
    size_t cap; //  bytes allocated
} s_buf_t;

//  Parsing state, so handlers can report file:line.
typedef struct {
    const char *origin;     //  file name for messages
    int line;               //  line of the logical line being parsed
    char *err;              //  where the message goes
    size_t errlen;          //  its size
    sup_conf_t *conf;       //  what is being built
    sup_program_t *program; //  current section, NULL before the first
    char **from;            //  per word of the value: its variables (s_split)
    size_t count;           //  words in the value
    char note[256];         //  " (from VAR)" for a message (s_from)
} s_parser_t;

typedef int (s_key_fn) (s_parser_t *parser, sup_program_t *program, char ***words_p,
                        size_t count);

static int s_key_command (s_parser_t *parser, sup_program_t *program, char ***words_p,
                          size_t count);
static int s_key_replicas (s_parser_t *parser, sup_program_t *program, char ***words_p,
                           size_t count);
static int s_key_env (s_parser_t *parser, sup_program_t *program, char ***words_p,
                      size_t count);
static int s_key_stop_signal (s_parser_t *parser, sup_program_t *program, char ***words_p,
                              size_t count);

static const struct {
    const char *name; //  key in the file
    s_key_fn *fn;     //  stores the value
    bool repeatable;  //  may appear more than once per section
} s_keys[] = {
    {"command", s_key_command, false},
    {"replicas", s_key_replicas, false},
    {"env", s_key_env, true},
    {"stop_signal", s_key_stop_signal, false},
};
#define S_KEYS (sizeof s_keys / sizeof s_keys[0])

static const struct {
    const char *name; //  without SIG
    int signum;
} s_signals[] = {
    {"TERM", SIGTERM}, {"INT", SIGINT},   {"QUIT", SIGQUIT}, {"HUP", SIGHUP},
    {"KILL", SIGKILL}, {"USR1", SIGUSR1}, {"USR2", SIGUSR2},
};

static sup_program_t *s_program_new (const char *name, int line);
static void s_program_destroy (sup_program_t **self_p);
static int s_parse_line (s_parser_t *parser, char *line);
static int s_finish_program (s_parser_t *parser);
static int s_split (const char *text, char ***words_p, char ***from_p, size_t *count_p,
                    char *err, size_t errlen);
static int s_expand_text (const char *text, s_buf_t *out, s_buf_t *from, char *err,
                          size_t errlen);
static int s_expand_dollar (const char **p, s_buf_t *out, s_buf_t *from, char *err,
                            size_t errlen);
static void s_from_add (s_buf_t *from, const char *var);
static void s_from_merge (s_buf_t *from, const char *list);
static const char *s_from (s_parser_t *parser, size_t index);
static bool s_runnable (const char *command, char *why, size_t whylen);
static bool s_executable (const char *path, char *why, size_t whylen);
static void s_words_free (char ***words_p);
static int s_fail (s_parser_t *parser, const char *fmt, ...)
    __attribute__ ((format (printf, 2, 3)));
static void s_buf_putc (s_buf_t *buf, char c);
static void s_buf_put (s_buf_t *buf, const char *s, size_t n);
static char *s_buf_take (s_buf_t *buf);
static char *s_trim (char *s);
static bool s_valid_name (const char *s, size_t n);
static bool s_valid_var (const char *s, size_t n);

sup_conf_t *
sup_conf_new (void)
{
    return cm_calloc (1, sizeof (sup_conf_t));
}

sup_conf_t *
sup_conf_load (const char *path, char *err, size_t errlen)
{
    assert (path && err);
    FILE *file = fopen (path, "r");
    if (!file) {
        snprintf (err, errlen, "%s: cannot read: %s", path, strerror (errno));
        return NULL;
    }
    s_buf_t text = {0};
    char chunk[4096];
    size_t n;
    while ((n = fread (chunk, 1, sizeof chunk, file)) > 0)
        s_buf_put (&text, chunk, n);
    bool failed = ferror (file);
    fclose (file);
    char *data = s_buf_take (&text);
    sup_conf_t *self = NULL;
    if (failed)
        snprintf (err, errlen, "%s: cannot read: %s", path, strerror (errno));
    else
        self = sup_conf_parse (data, path, err, errlen);
    free (data);
    return self;
}

sup_conf_t *
sup_conf_parse (const char *text, const char *origin, char *err, size_t errlen)
{
    assert (text && origin && err);
    sup_conf_t *self = cm_calloc (1, sizeof *self);
    self->origin = cm_strdup (origin);
    s_parser_t parser = {.origin = origin, .err = err, .errlen = errlen, .conf = self};
    const char *p = text;
    int lineno = 0;
    s_buf_t logical = {0};
    int rc = 0;
    while (*p && rc == 0) {
        const char *eol = strchr (p, '\n');
        size_t len = eol ? (size_t) (eol - p) : strlen (p);
        char *line = cm_strndup (p, len);
        p += len + (eol ? 1 : 0);
        lineno++;
        char *trimmed = s_trim (line);
        bool joining = logical.len > 0;
        if (!joining && (!*trimmed || *trimmed == '#' || *trimmed == ';')) {
            free (line);
            continue;
        }
        if (!joining)
            parser.line = lineno;
        size_t tlen = strlen (trimmed);
        bool continues = tlen > 0 && trimmed[tlen - 1] == '\\';
        if (continues)
            trimmed[--tlen] = 0;
        if (joining)
            s_buf_putc (&logical, ' ');
        s_buf_put (&logical, trimmed, tlen);
        free (line);
        if (continues && *p)
            continue;
        char *whole = s_buf_take (&logical);
        rc = s_parse_line (&parser, whole);
        free (whole);
    }
    free (logical.data);
    if (rc == 0)
        rc = s_finish_program (&parser);
    if (rc == 0 && self->size == 0) {
        snprintf (err, errlen, "%s: no [program:NAME] section", origin);
        rc = -1;
    }
    if (rc) {
        s_program_destroy (&parser.program);
        sup_conf_destroy (&self);
    }
    return self;
}

void
sup_conf_destroy (sup_conf_t **self_p)
{
    assert (self_p);
    sup_conf_t *self = *self_p;
    if (self) {
        for (size_t i = 0; i < self->size; i++)
            s_program_destroy (&self->programs[i]);
        free (self->programs);
        free (self->origin);
        free (self);
        *self_p = NULL;
    }
}

size_t
sup_conf_size (sup_conf_t *self)
{
    assert (self);
    return self->size;
}

const sup_program_t *
sup_conf_program (sup_conf_t *self, size_t index)
{
    assert (self && index < self->size);
    return self->programs[index];
}

const sup_program_t *
sup_conf_lookup (sup_conf_t *self, const char *name)
{
    assert (self && name);
    for (size_t i = 0; i < self->size; i++)
        if (!strcmp (self->programs[i]->name, name))
            return self->programs[i];
    return NULL;
}

int
sup_conf_check (sup_conf_t *self, char *err, size_t errlen)
{
    assert (self && err);
    for (size_t i = 0; i < self->size; i++) {
        const sup_program_t *program = self->programs[i];
        char why[PATH_MAX + 128];
        //  A program left out (replicas = 0) may name what is not installed.
        if (program->replicas == 0 || s_runnable (program->argv[0], why, sizeof why))
            continue;
        const char *from = program->argv0_from;
        snprintf (err, errlen, "%s:%d: [program:%s] cannot run command '%s': %s%s%s%s",
                  self->origin, program->command_line, program->name, program->argv[0],
                  why, *from ? " (from " : "", from, *from ? ")" : "");
        return -1;
    }
    return 0;
}

char *
sup_conf_expand (const char *text, char *err, size_t errlen)
{
    assert (text && err);
    s_buf_t out = {0};
    if (s_expand_text (text, &out, NULL, err, errlen)) {
        free (out.data);
        return NULL;
    }
    return s_buf_take (&out);
}

const char *
sup_program_name (const sup_program_t *self)
{
    assert (self);
    return self->name;
}

char *const *
sup_program_argv (const sup_program_t *self)
{
    assert (self);
    return self->argv;
}

size_t
sup_program_argc (const sup_program_t *self)
{
    assert (self);
    return self->argc;
}

char *const *
sup_program_env (const sup_program_t *self)
{
    assert (self);
    return self->env;
}

size_t
sup_program_replicas (const sup_program_t *self)
{
    assert (self);
    return (size_t) self->replicas;
}

int
sup_program_stop_signal (const sup_program_t *self)
{
    assert (self);
    return self->stop_signal;
}

int
sup_program_line (const sup_program_t *self)
{
    assert (self);
    return self->line;
}

//  --------------------------------------------------------------------------
//  Private helpers

static sup_program_t *
s_program_new (const char *name, int line)
{
    sup_program_t *self = cm_calloc (1, sizeof *self);
    self->name = cm_strdup (name);
    self->env = cm_calloc (1, sizeof *self->env);
    self->replicas = 1;
    self->stop_signal = SIGTERM;
    self->line = line;
    return self;
}

static void
s_program_destroy (sup_program_t **self_p)
{
    sup_program_t *self = *self_p;
    if (self) {
        free (self->name);
        free (self->argv0_from);
        s_words_free (&self->argv);
        s_words_free (&self->env);
        free (self);
        *self_p = NULL;
    }
}

//  One logical line, trimmed of nothing yet: a section header or key = value.
static int
s_parse_line (s_parser_t *parser, char *line)
{
    line = s_trim (line);
    size_t len = strlen (line);
    if (*line == '[') {
        if (line[len - 1] != ']')
            return s_fail (parser, "section header '%s' lacks its closing ']'", line);
        line[len - 1] = 0;
        char *inner = s_trim (line + 1);
        if (strncmp (inner, "program:", 8))
            return s_fail (parser, "unknown section [%s] (expected [program:NAME])",
                           inner);
        char *name = s_trim (inner + 8);
        if (!s_valid_name (name, strlen (name)))
            return s_fail (parser,
                           "program name '%s' is not valid (letters, digits, '_', '-', "
                           "'.')",
                           name);
        if (s_finish_program (parser))
            return -1;
        if (sup_conf_lookup (parser->conf, name))
            return s_fail (parser, "program '%s' is defined twice", name);
        parser->program = s_program_new (name, parser->line);
        return 0;
    }
    char *equals = strchr (line, '=');
    if (!equals)
        return s_fail (parser, "expected 'key = value' or '[program:NAME]', got '%s'",
                       line);
    *equals = 0;
    char *key = s_trim (line);
    char *value = s_trim (equals + 1);
    if (!parser->program)
        return s_fail (parser, "key '%s' outside a [program:NAME] section", key);
    size_t row = 0;
    while (row < S_KEYS && strcmp (s_keys[row].name, key))
        row++;
    if (row == S_KEYS)
        return s_fail (parser,
                       "unknown key '%s' in [program:%s] (known: command, replicas, "
                       "env, stop_signal)",
                       key, parser->program->name);
    if (!s_keys[row].repeatable && (parser->program->seen & (1u << row)))
        return s_fail (parser, "'%s' given twice in [program:%s]", key,
                       parser->program->name);
    parser->program->seen |= 1u << row;
    if (!*value)
        return s_fail (parser, "%s: empty value", key);
    char **words = NULL, **from = NULL;
    size_t count = 0;
    char why[512];
    if (s_split (value, &words, &from, &count, why, sizeof why))
        return s_fail (parser, "%s: %s", key, why);
    parser->from = from;
    parser->count = count;
    int rc = s_keys[row].fn (parser, parser->program, &words, count);
    parser->from = NULL;
    s_words_free (&words);
    s_words_free (&from);
    return rc;
}

//  The current section is complete: check it and add it to the conf.
static int
s_finish_program (s_parser_t *parser)
{
    sup_program_t *program = parser->program;
    if (!program)
        return 0;
    parser->program = NULL;
    if (!program->argv) {
        snprintf (parser->err, parser->errlen, "%s:%d: [program:%s] has no command",
                  parser->origin, program->line, program->name);
        s_program_destroy (&program);
        return -1;
    }
    //  An instance id names one instance at the gateway: replicas sharing
    //  one would take each other's place there.
    for (size_t i = 0; i < program->env_size && program->replicas > 1; i++)
        if (!strncmp (program->env[i], "INSTANCE_ID=", 12)) {
            snprintf (parser->err, parser->errlen,
                      "%s:%d: [program:%s] sets INSTANCE_ID for %lld replicas: each "
                      "needs its own (leave it unset: every instance makes one)",
                      parser->origin, program->line, program->name,
                      (long long) program->replicas);
            s_program_destroy (&program);
            return -1;
        }
    sup_conf_t *conf = parser->conf;
    conf->programs =
        cm_realloc (conf->programs, (conf->size + 1) * sizeof *conf->programs);
    conf->programs[conf->size++] = program;
    return 0;
}

static int
s_key_command (s_parser_t *parser, sup_program_t *program, char ***words_p, size_t count)
{
    if (count == 0)
        return s_fail (parser, "command: nothing to run");
    program->argv = *words_p;
    program->argc = count;
    program->command_line = parser->line;
    program->argv0_from = cm_strdup (parser->from[0]);
    *words_p = NULL;
    return 0;
}

static int
s_key_replicas (s_parser_t *parser, sup_program_t *program, char ***words_p, size_t count)
{
    char **words = *words_p;
    if (count != 1 ||
        cm_config_parse_int (words[0], 0, SUP_CONF_REPLICAS_MAX, &program->replicas))
        return s_fail (parser, "replicas: '%s' is not a whole number from 0 to %d%s",
                       count ? words[0] : "", SUP_CONF_REPLICAS_MAX,
                       s_from (parser, count == 1 ? 0 : count));
    return 0;
}

static int
s_key_env (s_parser_t *parser, sup_program_t *program, char ***words_p, size_t count)
{
    char **words = *words_p;
    if (count != 1)
        return s_fail (parser,
                       "env: expected one KEY=VALUE (quote a value with spaces)%s",
                       s_from (parser, count));
    const char *equals = strchr (words[0], '=');
    if (!equals || !s_valid_var (words[0], (size_t) (equals - words[0])))
        return s_fail (parser, "env: '%s' is not KEY=VALUE with KEY a variable name%s",
                       words[0], s_from (parser, 0));
    program->env =
        cm_realloc (program->env, (program->env_size + 2) * sizeof *program->env);
    program->env[program->env_size++] = cm_strdup (words[0]);
    program->env[program->env_size] = NULL;
    return 0;
}

static int
s_key_stop_signal (s_parser_t *parser, sup_program_t *program, char ***words_p,
                   size_t count)
{
    char **words = *words_p;
    const char *name = count == 1 ? words[0] : "";
    if (!strncasecmp (name, "SIG", 3))
        name += 3;
    for (size_t i = 0; i < sizeof s_signals / sizeof s_signals[0]; i++)
        if (!strcasecmp (name, s_signals[i].name)) {
            program->stop_signal = s_signals[i].signum;
            return 0;
        }
    return s_fail (parser,
                   "stop_signal: '%s' is not one of TERM, INT, QUIT, HUP, KILL, USR1, "
                   "USR2%s",
                   count ? words[0] : "", s_from (parser, count == 1 ? 0 : count));
}

//  Split text into words as a shell would, expanding ${...} as it goes.
//  from_p receives count + 1 strings, NULL-terminated: for each word the
//  variables it came from ("A, B", or "" for none), then those of the whole
//  value, words that expanded to nothing included.
static int
s_split (const char *text, char ***words_p, char ***from_p, size_t *count_p, char *err,
         size_t errlen)
{
    char **words = cm_calloc (1, sizeof *words);
    char **from = cm_calloc (1, sizeof *from);
    s_buf_t all = {0};
    size_t count = 0;
    const char *p = text;
    while (true) {
        while (isspace ((unsigned char) *p))
            p++;
        if (!*p)
            break;
        s_buf_t word = {0}, vars = {0};
        bool quoted = false;
        int rc = 0;
        while (*p && !isspace ((unsigned char) *p) && rc == 0) {
            if (*p == '\'') {
                const char *end = strchr (p + 1, '\'');
                if (!end) {
                    snprintf (err, errlen, "unterminated single quote");
                    rc = -1;
                    break;
                }
                s_buf_put (&word, p + 1, (size_t) (end - p - 1));
                quoted = true;
                p = end + 1;
            } else if (*p == '"') {
                quoted = true;
                p++;
                while (*p && *p != '"' && rc == 0) {
                    if (*p == '\\' && p[1] && strchr ("\"\\$", p[1])) {
                        s_buf_putc (&word, p[1]);
                        p += 2;
                    } else if (*p == '$')
                        rc = s_expand_dollar (&p, &word, &vars, err, errlen);
                    else
                        s_buf_putc (&word, *p++);
                }
                if (rc == 0 && *p != '"') {
                    snprintf (err, errlen, "unterminated double quote");
                    rc = -1;
                }
                if (rc == 0)
                    p++;
            } else if (*p == '\\' && p[1]) {
                s_buf_putc (&word, p[1]);
                quoted = true;
                p += 2;
            } else if (*p == '$')
                rc = s_expand_dollar (&p, &word, &vars, err, errlen);
            else
                s_buf_putc (&word, *p++);
        }
        if (rc) {
            free (word.data);
            free (vars.data);
            free (all.data);
            s_words_free (&words);
            s_words_free (&from);
            return -1;
        }
        char *names = s_buf_take (&vars);
        s_from_merge (&all, names);
        //  Like a shell, an unquoted word that expanded to nothing is no word.
        if (word.len || quoted) {
            words = cm_realloc (words, (count + 2) * sizeof *words);
            from = cm_realloc (from, (count + 2) * sizeof *from);
            words[count] = s_buf_take (&word);
            from[count] = names;
            from[++count] = NULL;
            words[count] = NULL;
        } else {
            free (word.data);
            free (names);
        }
    }
    from = cm_realloc (from, (count + 2) * sizeof *from);
    from[count] = s_buf_take (&all);
    from[count + 1] = NULL;
    *words_p = words;
    *from_p = from;
    *count_p = count;
    return 0;
}

static int
s_expand_text (const char *text, s_buf_t *out, s_buf_t *from, char *err, size_t errlen)
{
    const char *p = text;
    while (*p)
        if (*p == '$') {
            if (s_expand_dollar (&p, out, from, err, errlen))
                return -1;
        } else
            s_buf_putc (out, *p++);
    return 0;
}

//  Expand the $$ or ${...} at *p into out and move *p past it; add the
//  variables whose values were used to from (when not NULL).
static int
s_expand_dollar (const char **p, s_buf_t *out, s_buf_t *from, char *err, size_t errlen)
{
    const char *s = *p;
    assert (*s == '$');
    if (s[1] == '$') {
        s_buf_putc (out, '$');
        *p = s + 2;
        return 0;
    }
    if (s[1] != '{') {
        snprintf (err, errlen, "'$' must start ${NAME} (write $$ for a literal $)");
        return -1;
    }
    const char *name = s + 2;
    const char *q = name;
    while (isalnum ((unsigned char) *q) || *q == '_')
        q++;
    size_t namelen = (size_t) (q - name);
    if (!s_valid_var (name, namelen) || (*q != '}' && strncmp (q, ":-", 2))) {
        snprintf (err, errlen, "malformed '%.*s': expected ${NAME} or ${NAME:-default}",
                  (int) strcspn (s, "} \t"), s);
        return -1;
    }
    char *var = cm_strndup (name, namelen);
    const char *value = getenv (var);
    int rc = 0;
    if (*q == '}') {
        if (value) {
            s_buf_put (out, value, strlen (value));
            s_from_add (from, var);
        } else {
            snprintf (err, errlen,
                      "undefined variable ${%s} (set it in the environment, or write "
                      "${%s:-default})",
                      var, var);
            rc = -1;
        }
        *p = q + 1;
    } else {
        //  Find the '}' that closes this one; defaults may nest ${...}.
        const char *d = q + 2, *end = d;
        int depth = 0;
        while (*end && (*end != '}' || depth > 0)) {
            if (end[0] == '$' && end[1] == '$')
                end += 2;
            else if (end[0] == '$' && end[1] == '{') {
                depth++;
                end += 2;
            } else {
                if (*end == '}')
                    depth--;
                end++;
            }
        }
        if (!*end) {
            snprintf (err, errlen, "unterminated ${%s:-...}", var);
            rc = -1;
        } else if (value && *value) {
            s_buf_put (out, value, strlen (value));
            s_from_add (from, var);
        } else {
            char *def = cm_strndup (d, (size_t) (end - d));
            rc = s_expand_text (def, out, from, err, errlen);
            free (def);
        }
        *p = *end ? end + 1 : end;
    }
    free (var);
    return rc;
}

//  Add var to the list "A, B" in from (NULL: nobody asked), once.
static void
s_from_add (s_buf_t *from, const char *var)
{
    if (!from)
        return;
    size_t len = strlen (var);
    for (const char *p = from->data; p && *p;) {
        size_t n = strcspn (p, ",");
        if (n == len && !strncmp (p, var, len))
            return;
        p += n;
        p += strspn (p, ", ");
    }
    if (from->len)
        s_buf_put (from, ", ", 2);
    s_buf_put (from, var, len);
}

//  Add each name of the list "A, B" to from.
static void
s_from_merge (s_buf_t *from, const char *list)
{
    for (const char *name = list; *name;) {
        size_t n = strcspn (name, ",");
        char *one = cm_strndup (name, n);
        s_from_add (from, one);
        free (one);
        name += n;
        name += strspn (name, ", ");
    }
}

//  " (from A, B)" when word index of the value being handled (count: the
//  whole value) came from variables, else ""; valid until the next call.
static const char *
s_from (s_parser_t *parser, size_t index)
{
    const char *vars = parser->from[index < parser->count ? index : parser->count];
    if (*vars)
        snprintf (parser->note, sizeof parser->note, " (from %s)", vars);
    else
        parser->note[0] = 0;
    return parser->note;
}

//  command can be started as execvp would: a path with a '/', or a name
//  found in PATH (confstr's default path when PATH is unset). Otherwise
//  false with the reason in why.
static bool
s_runnable (const char *command, char *why, size_t whylen)
{
    if (!*command) {
        snprintf (why, whylen, "it is empty");
        return false;
    }
    if (strchr (command, '/'))
        return s_executable (command, why, whylen);
    const char *path = getenv ("PATH");
    char fallback[256] = "/bin:/usr/bin";
    if (!path) {
        size_t n = confstr (_CS_PATH, fallback, sizeof fallback);
        if (n == 0 || n > sizeof fallback)
            snprintf (fallback, sizeof fallback, "/bin:/usr/bin");
        path = fallback;
    }
    for (const char *dir = path;; dir++) {
        size_t n = strcspn (dir, ":");
        char candidate[PATH_MAX];
        //  An empty entry is the working directory, as for execvp.
        int len = snprintf (candidate, sizeof candidate, "%.*s%s%s", (int) n, dir,
                            n ? "/" : "", command);
        if (len > 0 && (size_t) len < sizeof candidate &&
            s_executable (candidate, why, whylen))
            return true;
        dir += n;
        if (!*dir)
            break;
    }
    snprintf (why, whylen, "no executable '%s' in PATH (%s)", command, path);
    return false;
}

//  path is an executable regular file; otherwise false with the reason.
static bool
s_executable (const char *path, char *why, size_t whylen)
{
    struct stat st;
    if (stat (path, &st)) {
        snprintf (why, whylen, "%s", strerror (errno));
        return false;
    }
    if (S_ISDIR (st.st_mode)) {
        snprintf (why, whylen, "it is a directory");
        return false;
    }
    if (!S_ISREG (st.st_mode)) {
        snprintf (why, whylen, "it is not a regular file");
        return false;
    }
    if (access (path, X_OK)) {
        snprintf (why, whylen, "it is not executable (%s)", strerror (errno));
        return false;
    }
    return true;
}

static void
s_words_free (char ***words_p)
{
    char **words = *words_p;
    if (words) {
        for (char **w = words; *w; w++)
            free (*w);
        free (words);
        *words_p = NULL;
    }
}

static int
s_fail (s_parser_t *parser, const char *fmt, ...)
{
    int n =
        snprintf (parser->err, parser->errlen, "%s:%d: ", parser->origin, parser->line);
    if (n >= 0 && (size_t) n < parser->errlen) {
        va_list args;
        va_start (args, fmt);
        vsnprintf (parser->err + n, parser->errlen - (size_t) n, fmt, args);
        va_end (args);
    }
    return -1;
}

static void
s_buf_putc (s_buf_t *buf, char c)
{
    s_buf_put (buf, &c, 1);
}

static void
s_buf_put (s_buf_t *buf, const char *s, size_t n)
{
    if (buf->len + n + 1 > buf->cap) {
        buf->cap = (buf->len + n + 1) * 2;
        buf->data = cm_realloc (buf->data, buf->cap);
    }
    memcpy (buf->data + buf->len, s, n);
    buf->len += n;
    buf->data[buf->len] = 0;
}

//  Hand over the contents (an empty string if none) and reset buf.
static char *
s_buf_take (s_buf_t *buf)
{
    char *data = buf->data ? buf->data : cm_strdup ("");
    buf->data = NULL;
    buf->len = buf->cap = 0;
    return data;
}

static char *
s_trim (char *s)
{
    while (isspace ((unsigned char) *s))
        s++;
    size_t len = strlen (s);
    while (len > 0 && isspace ((unsigned char) s[len - 1]))
        s[--len] = 0;
    return s;
}

//  Program names: letters, digits, '_', '-', '.'.
static bool
s_valid_name (const char *s, size_t n)
{
    if (n == 0)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!isalnum ((unsigned char) s[i]) && !strchr ("_-.", s[i]))
            return false;
    return true;
}

//  Environment variable names: a letter or '_', then letters, digits, '_'.
static bool
s_valid_var (const char *s, size_t n)
{
    if (n == 0 || isdigit ((unsigned char) s[0]))
        return false;
    for (size_t i = 0; i < n; i++)
        if (!isalnum ((unsigned char) s[i]) && s[i] != '_')
            return false;
    return true;
}
