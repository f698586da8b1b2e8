/*  cm_affinity.h: keep a daemon's threads on one CPU (opt-in), as nginx's
    worker_cpu_affinity does for its workers.

    Why: a request crosses several threads of a daemon (the ZeroMQ I/O
    thread, the worker's loop, a handler). When those threads sit on
    different CPUs, every hand-off wakes another CPU; on a virtual machine
    whose idle vCPUs halt, that wake is a VM exit (build/bench/bench_wake:
    a round trip of 75 us across CPUs, 2.5 us on one). Pinning each chatd
    replica to its own CPU made the same chats cheaper (docs/performance.md,
    "CPU affinity"). It also confines the replica to that CPU, so it is off
    by default.

    A spec is one of
        none      no pinning (the default)
        auto      the CPU at position INSTANCE_INDEX (set by the supervisor
                  for each replica: 0, 1, ...) modulo the number of CPUs this
                  process may use, in the order of that set; without
                  INSTANCE_INDEX (compose replicas) nothing is pinned
        0,2-3     a list of CPU numbers and ranges (all must be allowed) */
#ifndef CM_AFFINITY_H_INCLUDED
#define CM_AFFINITY_H_INCLUDED

#include "cm_common.h"
#include <sched.h>

//  Work out the CPUs for spec. allowed: the CPUs this process may use;
//  index: the instance index, or -1 when unknown. Returns 1 with *set
//  filled when the process is to be pinned, 0 when it is not, or -1 with a
//  message in err when spec is not valid.
int cm_affinity_plan (const char *spec, const cpu_set_t *allowed, int64_t index,
                      cpu_set_t *set, char *err, size_t errlen);

//  Move every thread of this process onto set (threads started later
//  inherit it from the thread that starts them). Returns 0, or -1 with
//  errno set.
int cm_affinity_apply (const cpu_set_t *set);

//  A daemon's start-up step: plan the spec that variable name holds
//  (INSTANCE_INDEX from the environment), apply it and log the result.
//  Returns 0, or -1 with a message naming the variable in err.
int cm_affinity_setup (const char *name, const char *spec, char *err, size_t errlen);

//  A config-table entry (cm_config.h) for variable NAME, stored as a string
//  in member of type, default "none".
// clang-format off
#define CM_AFFINITY_CONF_ENTRY(NAME, type, member)                                     \
    {NAME, CM_CONF_STR, "none", 0, 0, offsetof (type, member),                         \
     "pin this instance's threads: none, auto (one CPU per replica, by "               \
     "INSTANCE_INDEX) or a CPU list like 0,2-3"}
// clang-format on

#endif
