/*  test_dir.h: temporary directories for the tests' databases, sockets and
    logs, made fresh for a test and removed with all they hold after it, one
    place for every suite. */
#ifndef TEST_DIR_H_INCLUDED
#define TEST_DIR_H_INCLUDED

#include <stdbool.h>
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

//  A 4 MB tmpfs mounted on a new directory made from template_path (as
//  test_dir_make): true, or false (nothing left behind) when mounting is
//  not allowed here (it needs root). Unmount with test_tmpfs_unmount.
bool test_tmpfs_mount (char *dir, size_t size, const char *template_path);
//  Unmount (lazily: a failed test may leave files open there) and remove
//  the directory. Safe on "" (nothing mounted).
void test_tmpfs_unmount (char *dir);
//  Fill the file system of dir with the file dir/filler until not a page
//  is left.
void test_fill_file_system (const char *dir);

#endif
