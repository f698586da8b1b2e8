/*  test_dir.h: temporary directories for the tests' databases, sockets and
    logs, made fresh for a test and removed with all they hold after it, one
    place for every suite. */
#ifndef TEST_DIR_H_INCLUDED
#define TEST_DIR_H_INCLUDED

#include <stddef.h>

//  Make a new directory from template_path (ends in "XXXXXX", as mkdtemp
//  wants) and leave its path in dir (size bytes). Fails the running
//  Criterion test when the template does not fit or mkdtemp fails.
void test_dir_make (char *dir, size_t size, const char *template_path);

//  The whole file at path as a string (empty when it cannot be read); the
//  caller frees it.
char *test_file_text (const char *path);

//  Remove path and everything under it, without following symbolic links.
//  Returns 0, or -1 when an entry could not be removed (errno says why).
int test_dir_remove (const char *path);

#endif
