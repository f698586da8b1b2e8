/*  fuzz_conf.c: the supervisor's suite file on any text (a typo in it must
    give a message naming file:line, never a crash). HOME and PATH are set
    in any environment, so ${...} expansion has something to find. */
#include "fuzz.h"

#include "sup_conf.h"

#include <string.h>

int
LLVMFuzzerTestOneInput (const uint8_t *data, size_t size)
{
    char *text = malloc (size + 1);
    memcpy (text, data, size);
    text[size] = '\0';
    char err[512] = "";
    sup_conf_t *conf = sup_conf_parse (text, "fuzz.conf", err, sizeof err);
    if (conf) {
        FUZZ_CHECK (sup_conf_size (conf) > 0);
        for (size_t i = 0; i < sup_conf_size (conf); i++) {
            const sup_program_t *program = sup_conf_program (conf, i);
            FUZZ_CHECK (sup_conf_lookup (conf, sup_program_name (program)));
            FUZZ_CHECK (sup_program_argv (program)[0]);
        }
    } else
        FUZZ_CHECK (strstr (err, "fuzz.conf"));
    sup_conf_destroy (&conf);
    char *expanded = sup_conf_expand (text, err, sizeof err);
    free (expanded);
    free (text);
    return 0;
}
