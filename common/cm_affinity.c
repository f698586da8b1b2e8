/*  cm_affinity.c: pin a daemon's threads to CPUs (see cm_affinity.h). */
#include "cm_affinity.h"
#include <dirent.h>
#include <errno.h>
#include <stdarg.h>
#include "cm_config.h"
#include "cm_log.h"

static int
s_fail (char *err, size_t errlen, const char *fmt, ...)
{
    va_list args;
    va_start (args, fmt);
    vsnprintf (err, errlen, fmt, args);
    va_end (args);
    return -1;
}

//  set as a CPU list ("0,2-3") into buf.
static void
s_format (const cpu_set_t *set, char *buf, size_t size)
{
    size_t used = 0;
    buf[0] = '\0';
    for (int cpu = 0; cpu < CPU_SETSIZE && used < size; cpu++) {
        if (!CPU_ISSET (cpu, set))
            continue;
        int last = cpu;
        while (last + 1 < CPU_SETSIZE && CPU_ISSET (last + 1, set))
            last++;
        int n = last > cpu
                    ? snprintf (buf + used, size - used, "%s%d-%d", used ? "," : "", cpu,
                                last)
                    : snprintf (buf + used, size - used, "%s%d", used ? "," : "", cpu);
        used += n > 0 ? (size_t) n : 0;
        cpu = last;
    }
}

//  One CPU number at *p, advanced past it. Returns -1 when there is none.
static int
s_cpu_number (const char **p)
{
    if (**p < '0' || **p > '9')
        return -1;
    long value = 0;
    while (**p >= '0' && **p <= '9') {
        value = value * 10 + (**p - '0');
        if (value >= CPU_SETSIZE)
            return -1;
        (*p)++;
    }
    return (int) value;
}

static int
s_parse_list (const char *spec, cpu_set_t *set, char *err, size_t errlen)
{
    CPU_ZERO (set);
    const char *p = spec;
    while (true) {
        int first = s_cpu_number (&p);
        int last = first;
        if (first >= 0 && *p == '-') {
            p++;
            last = s_cpu_number (&p);
        }
        if (first < 0 || last < first || (*p != ',' && *p != '\0'))
            return s_fail (err, errlen,
                           "'%s' is not none, auto or a CPU list like 0,2-3 (CPUs 0..%d)",
                           spec, CPU_SETSIZE - 1);
        for (int cpu = first; cpu <= last; cpu++)
            CPU_SET (cpu, set);
        if (*p == '\0')
            return 0;
        p++;
    }
}

int
cm_affinity_plan (const char *spec, const cpu_set_t *allowed, int64_t index,
                  cpu_set_t *set, char *err, size_t errlen)
{
    assert (spec && allowed && set);
    CPU_ZERO (set);
    if (strcmp (spec, "none") == 0)
        return 0;
    int count = CPU_COUNT (allowed);
    if (count == 0)
        return s_fail (err, errlen, "no CPU is available to this process");
    if (strcmp (spec, "auto") == 0) {
        if (index < 0)
            return 0;
        int64_t position = index % count;
        for (int cpu = 0; cpu < CPU_SETSIZE; cpu++)
            if (CPU_ISSET (cpu, allowed) && position-- == 0) {
                CPU_SET (cpu, set);
                return 1;
            }
        return s_fail (err, errlen, "no CPU for instance %lld", (long long) index);
    }
    if (s_parse_list (spec, set, err, errlen))
        return -1;
    cpu_set_t outside;
    CPU_XOR (&outside, set, allowed);
    CPU_AND (&outside, &outside, set);
    if (CPU_COUNT (&outside) > 0) {
        char wanted[128], have[128];
        s_format (&outside, wanted, sizeof wanted);
        s_format (allowed, have, sizeof have);
        return s_fail (err, errlen,
                       "CPU %s is not available to this process (it may use %s)", wanted,
                       have);
    }
    return 1;
}

int
cm_affinity_apply (const cpu_set_t *set)
{
    DIR *tasks = opendir ("/proc/self/task");
    if (!tasks)
        return -1;
    int rc = 0;
    struct dirent *entry;
    while ((entry = readdir (tasks))) {
        char *end;
        long tid = strtol (entry->d_name, &end, 10);
        if (*end != '\0' || tid <= 0)
            continue; //  "." and ".."
        //  A thread that ended since the listing is no error.
        if (sched_setaffinity ((pid_t) tid, sizeof *set, set) && errno != ESRCH) {
            rc = -1;
            break;
        }
    }
    int saved = errno;
    closedir (tasks);
    errno = saved;
    return rc;
}

int
cm_affinity_setup (const char *name, const char *spec, char *err, size_t errlen)
{
    int64_t index = -1;
    const char *text = getenv ("INSTANCE_INDEX"); //  only auto reads it
    if (strcmp (spec, "auto") == 0 && text && *text &&
        cm_config_parse_int (text, 0, INT32_MAX, &index))
        return s_fail (err, errlen, "INSTANCE_INDEX: '%s' is not a number from 0", text);
    cpu_set_t allowed, set;
    if (sched_getaffinity (0, sizeof allowed, &allowed))
        return s_fail (err, errlen, "%s: cannot read this process's CPUs: %s", name,
                       strerror (errno));
    char why[256];
    int planned = cm_affinity_plan (spec, &allowed, index, &set, why, sizeof why);
    if (planned < 0)
        return s_fail (err, errlen, "%s: %s", name, why);
    if (planned == 0) {
        if (strcmp (spec, "auto") == 0)
            cm_warn ("%s=auto but INSTANCE_INDEX is unset: threads not pinned", name);
        return 0;
    }
    if (cm_affinity_apply (&set))
        return s_fail (err, errlen, "%s: cannot pin threads: %s", name, strerror (errno));
    char cpus[128];
    s_format (&set, cpus, sizeof cpus);
    cm_info ("threads pinned to CPU %s (%s=%s)", cpus, name, spec);
    return 0;
}
