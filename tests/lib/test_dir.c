/*  test_dir.c: see test_dir.h. */
#include "test_dir.h"
#include <criterion/criterion.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

void
test_dir_make (char *dir, size_t size, const char *template_path)
{
    cr_assert_lt (strlen (template_path), size, "test_dir_make: %s is too long",
                  template_path);
    strcpy (dir, template_path);
    cr_assert_not_null (mkdtemp (dir), "mkdtemp %s", template_path);
}

static int
s_remove_entry (const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void) st, (void) flag, (void) ftw;
    return remove (path);
}

int
test_dir_remove (const char *path)
{
    return nftw (path, s_remove_entry, 16, FTW_DEPTH | FTW_PHYS);
}

char *
test_file_text (const char *path)
{
    char *text = calloc (1, 1);
    cr_assert_not_null (text);
    size_t len = 0;
    FILE *file = fopen (path, "r");
    if (!file)
        return text;
    char chunk[4096];
    size_t n;
    while ((n = fread (chunk, 1, sizeof chunk, file)) > 0) {
        text = realloc (text, len + n + 1);
        cr_assert_not_null (text);
        memcpy (text + len, chunk, n);
        len += n;
        text[len] = 0;
    }
    fclose (file);
    return text;
}
