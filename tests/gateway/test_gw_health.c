/*  test_gw_health.c: the gateway's database check (gw_health) against
    what an open connection does not show: the file removed or replaced
    under the running suite, or its file system full. */
#include <criterion/criterion.h>
#include <fcntl.h>
#include <unistd.h>
#include "cm_common.h"
#include "cm_storage.h"
#include "gw_health.h"
#include "test_dir.h"

TestSuite (gw_health, .timeout = 60);

//  Poll the report until the database's status is `status` (and, when
//  given, its error has `needle`); fails after 10 s.
static void
s_wait_database (gw_health_t *health, const char *status, const char *needle)
{
    int64_t until = cm_clock_mono_ms () + 10000;
    char *shown = NULL;
    while (cm_clock_mono_ms () < until) {
        json_t *report = gw_health_report (health);
        json_t *database = json_object_get (report, "database");
        const char *is = json_string_value (json_object_get (database, "status"));
        const char *error = json_string_value (json_object_get (database, "error"));
        bool found =
            is && !strcmp (is, status) && (!needle || (error && strstr (error, needle)));
        free (shown);
        shown = json_dumps (report, 0);
        json_decref (report);
        if (found) {
            free (shown);
            return;
        }
        usleep (20 * 1000);
    }
    cr_assert_fail ("the database never became %s (%s): %s", status, needle ? needle : "",
                    shown);
}

static void
s_create_database (const char *dir)
{
    char err[256];
    cm_storage_t *storage = cm_storage_new (dir, err, sizeof err);
    cr_assert_not_null (storage, "%s", err);
    cm_storage_destroy (&storage);
}

static void
s_remove_database (const char *dir)
{
    const char *suffixes[] = {"", "-wal", "-shm"};
    for (size_t i = 0; i < 3; i++) {
        char path[256];
        snprintf (path, sizeof path, "%s/%s%s", dir, CM_STORAGE_FILE, suffixes[i]);
        unlink (path);
    }
}

Test (gw_health, a_database_removed_or_replaced_under_the_suite_is_down)
{
    char dir[64];
    test_dir_make (dir, sizeof dir, "/tmp/llmrt-gw-health-XXXXXX");
    s_create_database (dir);
    gw_health_t *health = gw_health_new (dir, "redis://127.0.0.1:1", 20, 50);
    s_wait_database (health, "ok", NULL);
    //  Removed: the open connection still works, but nobody will read what
    //  is written to it again.
    s_remove_database (dir);
    s_wait_database (health, "down", "was removed");
    cr_assert_not (gw_health_database_ok (health));
    //  A new, empty one at its path (what a restarted daemon made before
    //  CM_STORAGE_MARKER; now someone must remove that first): still down,
    //  the suite's processes are split between two files.
    char marker[256];
    snprintf (marker, sizeof marker, "%s/%s", dir, CM_STORAGE_MARKER);
    cr_assert_eq (unlink (marker), 0);
    s_create_database (dir);
    s_wait_database (health, "down", "was replaced");
    gw_health_destroy (&health);
    //  A gateway started afresh takes that file as the database.
    health = gw_health_new (dir, "redis://127.0.0.1:1", 20, 50);
    s_wait_database (health, "ok", NULL);
    gw_health_destroy (&health);
    test_dir_remove (dir);
}

static char s_small[64]; //  the tmpfs of the test below, "" when none

//  Unmounted even when the test fails part-way.
static void
s_unmount_small (void)
{
    test_tmpfs_unmount (s_small);
}

Test (gw_health, a_full_file_system_is_down_until_there_is_room, .fini = s_unmount_small)
{
    char *dir = s_small;
    if (!test_tmpfs_mount (s_small, sizeof s_small, "/tmp/llmrt-gw-health-XXXXXX"))
        cr_skip_test ("mounting a tmpfs needs root");
    s_create_database (dir);
    gw_health_t *health = gw_health_new (dir, "redis://127.0.0.1:1", 20, 50);
    s_wait_database (health, "ok", NULL);
    test_fill_file_system (dir);
    s_wait_database (health, "down", "is full");
    char filler[96];
    snprintf (filler, sizeof filler, "%s/filler", dir);
    unlink (filler);
    s_wait_database (health, "ok", NULL);
    gw_health_destroy (&health);
}
