/*  test_cm_affinity.c: CPU affinity specs, and pinning every thread. */
#include <criterion/criterion.h>
#include <pthread.h>
#include <stdarg.h>
#include <unistd.h>
#include "cm_affinity.h"

static cpu_set_t
s_cpus (int count, ...)
{
    cpu_set_t set;
    CPU_ZERO (&set);
    va_list args;
    va_start (args, count);
    for (int i = 0; i < count; i++)
        CPU_SET (va_arg (args, int), &set);
    va_end (args);
    return set;
}

Test (cm_affinity, none_pins_nothing)
{
    cpu_set_t allowed = s_cpus (2, 0, 1), set;
    char err[256];
    cr_assert_eq (cm_affinity_plan ("none", &allowed, 3, &set, err, sizeof err), 0);
    cr_assert_eq (CPU_COUNT (&set), 0);
}

Test (cm_affinity, auto_gives_each_instance_one_allowed_cpu_in_turn)
{
    cpu_set_t allowed = s_cpus (3, 1, 3, 6), set;
    char err[256];
    const int expected[] = {1, 3, 6, 1, 3};
    for (int index = 0; index < 5; index++) {
        cr_assert_eq (cm_affinity_plan ("auto", &allowed, index, &set, err, sizeof err),
                      1);
        cr_assert_eq (CPU_COUNT (&set), 1, "instance %d", index);
        cr_assert (CPU_ISSET (expected[index], &set), "instance %d", index);
    }
}

Test (cm_affinity, auto_without_an_instance_index_pins_nothing)
{
    cpu_set_t allowed = s_cpus (2, 0, 1), set;
    char err[256];
    cr_assert_eq (cm_affinity_plan ("auto", &allowed, -1, &set, err, sizeof err), 0);
    cr_assert_eq (CPU_COUNT (&set), 0);
}

Test (cm_affinity, a_list_of_cpus_and_ranges)
{
    cpu_set_t allowed = s_cpus (5, 0, 1, 2, 3, 4), set;
    char err[256];
    cr_assert_eq (cm_affinity_plan ("0,2-3", &allowed, 0, &set, err, sizeof err), 1);
    cr_assert_eq (CPU_COUNT (&set), 3);
    cr_assert (CPU_ISSET (0, &set) && CPU_ISSET (2, &set) && CPU_ISSET (3, &set));
    cr_assert_eq (cm_affinity_plan ("4", &allowed, 0, &set, err, sizeof err), 1);
    cr_assert_eq (CPU_COUNT (&set), 1);
    cr_assert (CPU_ISSET (4, &set));
}

Test (cm_affinity, a_cpu_the_process_may_not_use_is_named)
{
    cpu_set_t allowed = s_cpus (2, 0, 1), set;
    char err[256];
    cr_assert_eq (cm_affinity_plan ("1,5-6", &allowed, 0, &set, err, sizeof err), -1);
    cr_assert (strstr (err, "CPU 5-6 is not available"), "%s", err);
    cr_assert (strstr (err, "may use 0-1"), "%s", err);
}

Test (cm_affinity, bad_specs_are_refused_and_quoted)
{
    cpu_set_t allowed = s_cpus (2, 0, 1), set;
    const char *bad[] = {"",   "abc", "1-",    "3-1",  "0,",    ",0",
                         "1 ", "-1",  "auto1", "None", "99999", "0-99999"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char err[256] = "";
        cr_assert_eq (cm_affinity_plan (bad[i], &allowed, 0, &set, err, sizeof err), -1,
                      "'%s' accepted", bad[i]);
        char quoted[64];
        snprintf (quoted, sizeof quoted, "'%s'", bad[i]);
        cr_assert (strstr (err, quoted), "'%s': %s", bad[i], err);
    }
}

//  A thread started before the pinning must be moved too.
static pthread_mutex_t s_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t s_cond = PTHREAD_COND_INITIALIZER;
static pid_t s_tid;
static bool s_done;

static void *
s_waiter (void *arg)
{
    (void) arg;
    pthread_mutex_lock (&s_lock);
    s_tid = gettid ();
    pthread_cond_broadcast (&s_cond);
    while (!s_done)
        pthread_cond_wait (&s_cond, &s_lock);
    pthread_mutex_unlock (&s_lock);
    return NULL;
}

Test (cm_affinity, apply_moves_threads_started_before_it)
{
    cpu_set_t original;
    cr_assert_eq (sched_getaffinity (0, sizeof original, &original), 0);
    int first = 0;
    while (!CPU_ISSET (first, &original))
        first++;
    cpu_set_t one = s_cpus (1, first);

    pthread_t thread;
    cr_assert_eq (pthread_create (&thread, NULL, s_waiter, NULL), 0);
    pthread_mutex_lock (&s_lock);
    while (s_tid == 0)
        pthread_cond_wait (&s_cond, &s_lock);
    pthread_mutex_unlock (&s_lock);

    cr_assert_eq (cm_affinity_apply (&one), 0);
    cpu_set_t seen;
    cr_assert_eq (sched_getaffinity (s_tid, sizeof seen, &seen), 0);
    cr_assert (CPU_EQUAL (&seen, &one), "the older thread was not moved");
    cr_assert_eq (sched_getaffinity (0, sizeof seen, &seen), 0);
    cr_assert (CPU_EQUAL (&seen, &one), "the calling thread was not moved");

    pthread_mutex_lock (&s_lock);
    s_done = true;
    pthread_cond_broadcast (&s_cond);
    pthread_mutex_unlock (&s_lock);
    pthread_join (thread, NULL);
    cr_assert_eq (cm_affinity_apply (&original), 0);
}

Test (cm_affinity, setup_names_the_variable_and_instance_index)
{
    char err[256];
    unsetenv ("INSTANCE_INDEX");
    cr_assert_eq (cm_affinity_setup ("CHAT_CPU_AFFINITY", "none", err, sizeof err), 0);
    cr_assert_eq (cm_affinity_setup ("CHAT_CPU_AFFINITY", "auto", err, sizeof err), 0);
    cr_assert_eq (cm_affinity_setup ("CHAT_CPU_AFFINITY", "x", err, sizeof err), -1);
    cr_assert (strncmp (err, "CHAT_CPU_AFFINITY: ", 19) == 0, "%s", err);
    setenv ("INSTANCE_INDEX", "two", 1);
    cr_assert_eq (cm_affinity_setup ("CHAT_CPU_AFFINITY", "none", err, sizeof err), 0);
    cr_assert_eq (cm_affinity_setup ("CHAT_CPU_AFFINITY", "auto", err, sizeof err), -1);
    cr_assert (strstr (err, "INSTANCE_INDEX"), "%s", err);
    unsetenv ("INSTANCE_INDEX");
}
