/*  test_dir.c: see test_dir.h. */
#include "test_dir.h"
#include <criterion/criterion.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

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

bool
test_tmpfs_mount (char *dir, size_t size, const char *template_path)
{
    test_dir_make (dir, size, template_path);
    char command[PATH_MAX + 64];
    snprintf (command, sizeof command, "mount -t tmpfs -o size=4m tmpfs %s 2>/dev/null",
              dir);
    if (system (command)) {
        rmdir (dir);
        dir[0] = 0;
        return false;
    }
    return true;
}

void
test_tmpfs_unmount (char *dir)
{
    if (!dir[0])
        return;
    char command[PATH_MAX * 2 + 64];
    snprintf (command, sizeof command, "umount -l %s 2>/dev/null; rmdir %s", dir, dir);
    int rc = system (command);
    (void) rc;
    dir[0] = 0;
}

void
test_fill_file_system (const char *dir)
{
    char path[PATH_MAX];
    snprintf (path, sizeof path, "%s/filler", dir);
    int fd = open (path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    cr_assert_geq (fd, 0, "cannot create %s", path);
    //  Big blocks, then small ones: not a page left.
    static char block[65536];
    for (size_t size = sizeof block; size >= 512; size /= 8)
        while (write (fd, block, size) == (ssize_t) size)
            ;
    close (fd);
}
