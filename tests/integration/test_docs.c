/*  test_docs.c: the settings the programs read are the settings the
    README documents, and docker compose hands each of them on. Reads
    README.md and deploy/docker-compose.yml from LLMRT_SOURCE_DIR and runs
    every program's --help from LLMRT_BIN_DIR. */
#include <criterion/criterion.h>
#include "cm_common.h"
#include "test_dir.h"

//  Settings of the README's table that compose must not pass to every
//  container: where a local run keeps things, how many local replicas, an
//  id that must differ per replica, and a CPU plan and replica number that
//  each supervisor sets for its own replicas (docs/deploy.md).
static const char *s_not_in_compose[] = {
    "RUN_DIR",           "BIN_DIR", "CHAT_REPLICAS", "INSTANCE_ID", "INSTANCE_INDEX",
    "CHAT_CPU_AFFINITY", NULL};

//  A file of the source tree, whole (a new string).
static char *
s_source_file (const char *relative)
{
    const char *root = getenv ("LLMRT_SOURCE_DIR");
    cr_assert_not_null (root, "LLMRT_SOURCE_DIR is set by ctest");
    char path[1024];
    snprintf (path, sizeof path, "%s/%s", root, relative);
    char *text = test_file_text (path);
    cr_assert (*text, "cannot read %s, or it is empty", path);
    return text;
}

//  The README's "## Configuration" section (a new string).
static char *
s_config_section (void)
{
    char *readme = s_source_file ("README.md");
    char *start = strstr (readme, "\n## Configuration");
    cr_assert_not_null (start, "README has no Configuration section");
    char *end = strstr (start + 1, "\n## ");
    char *section = end ? cm_strndup (start, (size_t) (end - start)) : cm_strdup (start);
    free (readme);
    return section;
}

//  The README documents name: as `NAME` in the section, or, for a
//  per-daemon setting written as `CHAT_REST`, `INGESTION_…`, `AGENT_…`,
//  through a line with `CHAT_REST` and `PREFIX_…`.
static bool
s_documented (const char *section, const char *name)
{
    char quoted[160];
    snprintf (quoted, sizeof quoted, "`%s`", name);
    if (strstr (section, quoted))
        return true;
    const char *prefixes[] = {"INGESTION_", "AGENT_", NULL};
    for (int i = 0; prefixes[i]; i++) {
        size_t len = strlen (prefixes[i]);
        if (strncmp (name, prefixes[i], len))
            continue;
        char chat[160], short_form[64];
        snprintf (chat, sizeof chat, "`CHAT_%s`", name + len);
        snprintf (short_form, sizeof short_form, "`%.*s…`", (int) len, prefixes[i]);
        const char *line = strstr (section, chat);
        if (!line)
            continue;
        const char *eol = strchr (line, '\n');
        const char *found = strstr (line, short_form);
        if (found && (!eol || found < eol))
            return true;
    }
    return false;
}

Test (docs, every_setting_a_program_reads_is_in_the_readme)
{
    const char *bin = getenv ("LLMRT_BIN_DIR");
    cr_assert_not_null (bin, "LLMRT_BIN_DIR is set by ctest");
    char *section = s_config_section ();
    const char *programs[] = {"supervisor", "gateway", "chatd",
                              "ingestd",    "agentd",  NULL};
    size_t checked = 0;
    for (int p = 0; programs[p]; p++) {
        char command[1200];
        snprintf (command, sizeof command, "'%s/%s' --help", bin, programs[p]);
        FILE *help = popen (command, "r");
        cr_assert_not_null (help);
        char line[1024];
        while (fgets (line, sizeof line, help)) {
            //  Settings are listed as "  NAME   default ...".
            char name[128];
            if (strncmp (line, "  ", 2) || line[2] < 'A' || line[2] > 'Z' ||
                sscanf (line + 2, "%127[A-Z0-9_]", name) != 1 || !strchr (name, '_'))
                continue;
            cr_expect (s_documented (section, name),
                       "%s --help lists %s, which README's Configuration lacks",
                       programs[p], name);
            checked++;
        }
        cr_assert_eq (pclose (help), 0, "%s --help failed", programs[p]);
    }
    cr_assert_gt (checked, 80, "only %zu settings found in the programs' --help",
                  checked);
    free (section);
}

//  Some line of the YAML text is "<indent>name:...".
static bool
s_yaml_key (const char *yaml, const char *name)
{
    size_t len = strlen (name);
    for (const char *line = yaml; line; line = strchr (line, '\n')) {
        while (*line == '\n' || *line == ' ')
            line++;
        if (!strncmp (line, name, len) && line[len] == ':')
            return true;
    }
    return false;
}

Test (docs, compose_hands_on_every_documented_setting)
{
    char *section = s_config_section ();
    char *compose = s_source_file ("deploy/docker-compose.yml");
    size_t checked = 0;
    for (const char *line = section; line; line = strchr (line + 1, '\n')) {
        //  Table rows: "| `NAME`[, `NAME`...] | default | ...".
        if (strncmp (line, "\n| `", 4))
            continue;
        const char *cell_end = strchr (line + 3, '|');
        for (const char *tick = strchr (line + 3, '`'); tick && tick < cell_end;
             tick = strchr (tick + 1, '`')) {
            char name[128];
            if (sscanf (tick + 1, "%127[A-Z0-9_]`", name) != 1 || !strchr (name, '_') ||
                tick[1 + strlen (name)] != '`')
                continue;
            tick += strlen (name) + 1;
            bool excepted = false;
            for (int i = 0; s_not_in_compose[i]; i++)
                excepted |= !strcmp (name, s_not_in_compose[i]);
            bool set = s_yaml_key (compose, name);
            cr_expect (excepted || set, "deploy/docker-compose.yml does not hand on %s",
                       name);
            cr_expect (!excepted || !set,
                       "deploy/docker-compose.yml hands on %s, which it must not", name);
            checked++;
        }
    }
    cr_assert_gt (checked, 80, "only %zu settings found in the README's table", checked);
    free (compose);
    free (section);
}
