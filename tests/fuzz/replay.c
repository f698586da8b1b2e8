/*  replay.c: runs a fuzz target over every file of the directories (or
    files) named on its command line, so that ctest replays the corpus of
    tests/fuzz/corpus/<target> and every crash found since, in the normal
    and the sanitizer build. Exit 0 when all ran; a failed check aborts. */
#include "fuzz.h"

#include <dirent.h>
#include <errno.h>
#include <string.h>
#include <sys/stat.h>

//  Run one file; 0, or -1 when it cannot be read.
static int
s_run_file (const char *path)
{
    FILE *file = fopen (path, "rb");
    if (!file) {
        fprintf (stderr, "replay: %s: %s\n", path, strerror (errno));
        return -1;
    }
    size_t size = 0, max = 4096;
    uint8_t *data = malloc (max);
    size_t got;
    while (data && (got = fread (data + size, 1, max - size, file)) > 0) {
        size += got;
        if (size == max)
            data = realloc (data, max *= 2);
    }
    fclose (file);
    if (!data) {
        fprintf (stderr, "replay: %s: out of memory\n", path);
        return -1;
    }
    //  An exact-size copy, so that ASan sees a read past the input's end.
    uint8_t *input = malloc (size ? size : 1);
    memcpy (input, data, size);
    free (data);
    LLVMFuzzerTestOneInput (input, size);
    free (input);
    return 0;
}

static int
s_compare (const void *a, const void *b)
{
    return strcmp (*(char *const *) a, *(char *const *) b);
}

//  Run every regular file of dir, in name order; the count, or -1.
static int
s_run_dir (const char *dir)
{
    DIR *handle = opendir (dir);
    if (!handle) {
        fprintf (stderr, "replay: %s: %s\n", dir, strerror (errno));
        return -1;
    }
    char **names = NULL;
    size_t count = 0;
    struct dirent *entry;
    while ((entry = readdir (handle))) {
        if (entry->d_name[0] == '.')
            continue;
        names = realloc (names, (count + 1) * sizeof *names);
        size_t length = strlen (dir) + strlen (entry->d_name) + 2;
        names[count] = malloc (length);
        snprintf (names[count], length, "%s/%s", dir, entry->d_name);
        count++;
    }
    closedir (handle);
    if (count)
        qsort (names, count, sizeof *names, s_compare);
    int rc = (int) count;
    for (size_t i = 0; i < count; i++) {
        if (s_run_file (names[i]))
            rc = -1;
        free (names[i]);
    }
    free (names);
    return rc;
}

int
main (int argc, char **argv)
{
    if (argc < 2) {
        fprintf (stderr, "usage: %s DIR|FILE...\n", argv[0]);
        return 2;
    }
    int total = 0;
    for (int i = 1; i < argc; i++) {
        struct stat info;
        if (stat (argv[i], &info)) {
            fprintf (stderr, "replay: %s: %s\n", argv[i], strerror (errno));
            return 1;
        }
        int count = S_ISDIR (info.st_mode) ? s_run_dir (argv[i])
                    : s_run_file (argv[i]) ? -1
                                           : 1;
        if (count < 0)
            return 1;
        total += count;
    }
    //  An empty corpus would make this a test that cannot fail.
    if (total == 0) {
        fprintf (stderr, "replay: no inputs\n");
        return 1;
    }
    printf ("replay: %d inputs, no failure\n", total);
    return 0;
}
