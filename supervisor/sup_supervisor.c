/*  sup_supervisor.c: see sup_supervisor.h.

    One thread, one loop. No work happens in signal handlers: the signals
    the supervisor cares about are blocked and arrive through a signalfd,
    polled with everything else. Children are reaped in two steps: waitid
    with WNOWAIT names the dead child while its pid (and so its process
    group id) cannot be reused, the rest of its group is killed so no
    helper outlives it, then the zombie is collected.

    Each child leads its own process group: signals go to the group, so a
    shell wrapper and what it started stop together, and Ctrl-C on the
    terminal reaches only the supervisor, which then stops the children in
    order. PR_SET_CHILD_SUBREAPER makes orphans of the children ours to
    reap rather than init's. */
#include "sup_supervisor.h"
#include "cm_log.h"
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <sodium.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/wait.h>
#include <unistd.h>
#include <zmq.h>

//  How long to wait for children after SIGKILL before giving up on them
//  (only a process stuck in the kernel takes longer).
#define SUP_SUPERVISOR_KILL_WAIT_MS 5000
//  The exit status of our programs for a bad setting or argument.
#define SUP_SUPERVISOR_CONFIG_STATUS 2

typedef enum {
    SUP_INSTANCE_IDLE,    //  not started yet
    SUP_INSTANCE_RUNNING, //  has a live pid
    SUP_INSTANCE_WAITING, //  exited; restart due at restart_at_ms
    SUP_INSTANCE_GAVE_UP, //  crashed too often; never restarted
    SUP_INSTANCE_STOPPED, //  exited during shutdown
} sup_instance_state_t;

//  One replica of one program.
typedef struct {
    const sup_program_t *program; //  what to run, borrowed from conf
    size_t index;                 //  replica number, exported as INSTANCE_INDEX
    char name[96];                //  "program.index", as the log shows it
    sup_instance_state_t state;   //  see above
    pid_t pid;                    //  while RUNNING; also its process group
    int64_t started_ms;           //  when the current run began
    int64_t restart_at_ms;        //  while WAITING
    unsigned starts;              //  times started so far
    sup_backoff_t *backoff;       //  restart delays and crash window
} s_instance_t;

//  A socket or descriptor polled by the loop for someone else.
typedef struct {
    void *socket;                 //  libzmq socket, or NULL
    int fd;                       //  descriptor when socket is NULL
    sup_supervisor_reader_fn *fn; //  called when readable
    void *arg;                    //  passed to fn
} s_reader_t;

struct sup_supervisor_s {
    sup_conf_t *conf;                               //  the programs, owned
    sup_backoff_policy_t policy;                    //  restart limits
    int64_t grace_ms;                               //  stop signal to SIGKILL
    s_instance_t *instances;                        //  every replica
    size_t instances_size;                          //  entries in instances
    int sigfd;                                      //  signalfd for our signals
    sigset_t old_mask;                              //  restored by destroy
    s_reader_t readers[SUP_SUPERVISOR_READERS_MAX]; //  the extension point
    size_t readers_size;                            //  entries in readers
    bool started;                                   //  run was called
    bool stopping;                                  //  shutdown has begun
    bool killed;                                    //  SIGKILL sent to stragglers
    int64_t kill_at_ms;                             //  when they get SIGKILL
    int64_t abandon_at_ms;                          //  when we stop waiting
    bool done;                                      //  the loop may end
    int exit_code;                                  //  what run returns
};

static void s_spawn (sup_supervisor_t *self, s_instance_t *inst, int64_t now_ms);
static void s_child (s_instance_t *inst, char **envp, int errfd, pid_t parent)
    __attribute__ ((noreturn));
static char **s_child_environment (s_instance_t *inst);
static void s_reap (sup_supervisor_t *self, int64_t now_ms);
static void s_exited (sup_supervisor_t *self, s_instance_t *inst, int status,
                      int64_t now_ms);
static void s_crashed (sup_supervisor_t *self, s_instance_t *inst, int64_t now_ms);
static void s_signals (sup_supervisor_t *self, int64_t now_ms);
static void s_tick (sup_supervisor_t *self, int64_t now_ms);
static long s_timeout (sup_supervisor_t *self, int64_t now_ms);
static void s_kill_all (sup_supervisor_t *self, int signum, bool log);
static s_instance_t *s_lookup (sup_supervisor_t *self, pid_t pid);
static void s_command_line (const sup_program_t *program, char *buf, size_t size);

sup_supervisor_t *
sup_supervisor_new (sup_conf_t **conf_p, const sup_settings_t *settings)
{
    assert (conf_p && *conf_p && settings);
    if (sodium_init () < 0) {
        cm_error ("libsodium failed to initialise");
        return NULL;
    }
    sigset_t mask;
    sigemptyset (&mask);
    sigaddset (&mask, SIGCHLD);
    sigaddset (&mask, SIGINT);
    sigaddset (&mask, SIGTERM);
    sigaddset (&mask, SIGHUP);
    sigaddset (&mask, SIGUSR1);
    sigset_t old_mask;
    if (sigprocmask (SIG_BLOCK, &mask, &old_mask)) {
        cm_error ("cannot block signals: %s", strerror (errno));
        return NULL;
    }
    int sigfd = signalfd (-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC);
    if (sigfd < 0) {
        cm_error ("cannot create a signalfd: %s", strerror (errno));
        sigprocmask (SIG_SETMASK, &old_mask, NULL);
        return NULL;
    }
    if (prctl (PR_SET_CHILD_SUBREAPER, 1))
        cm_warn ("cannot become a subreaper: %s", strerror (errno));

    sup_supervisor_t *self = cm_calloc (1, sizeof *self);
    self->conf = *conf_p;
    *conf_p = NULL;
    self->policy = sup_env_backoff_policy (settings);
    self->grace_ms = settings->grace_ms;
    self->sigfd = sigfd;
    self->old_mask = old_mask;
    for (size_t i = 0; i < sup_conf_size (self->conf); i++)
        self->instances_size += sup_program_replicas (sup_conf_program (self->conf, i));
    self->instances = cm_calloc (self->instances_size, sizeof *self->instances);
    size_t n = 0;
    for (size_t i = 0; i < sup_conf_size (self->conf); i++) {
        const sup_program_t *program = sup_conf_program (self->conf, i);
        for (size_t r = 0; r < sup_program_replicas (program); r++, n++) {
            s_instance_t *inst = &self->instances[n];
            inst->program = program;
            inst->index = r;
            snprintf (inst->name, sizeof inst->name, "%s.%zu", sup_program_name (program),
                      r);
            inst->state = SUP_INSTANCE_IDLE;
            inst->backoff = sup_backoff_new (&self->policy);
        }
    }
    return self;
}

void
sup_supervisor_destroy (sup_supervisor_t **self_p)
{
    assert (self_p);
    sup_supervisor_t *self = *self_p;
    if (self) {
        s_kill_all (self, SIGKILL, false);
        for (size_t i = 0; i < self->instances_size; i++)
            sup_backoff_destroy (&self->instances[i].backoff);
        free (self->instances);
        sup_conf_destroy (&self->conf);
        //  Drain what is pending, so that unblocking does not hand a stale
        //  signal to its default action.
        struct signalfd_siginfo info;
        while (read (self->sigfd, &info, sizeof info) == (ssize_t) sizeof info)
            ;
        close (self->sigfd);
        sigprocmask (SIG_SETMASK, &self->old_mask, NULL);
        free (self);
        *self_p = NULL;
    }
}

int
sup_supervisor_reader (sup_supervisor_t *self, void *socket, int fd,
                       sup_supervisor_reader_fn *fn, void *arg)
{
    assert (self && fn);
    assert (socket || fd >= 0);
    if (self->readers_size == SUP_SUPERVISOR_READERS_MAX)
        return -1;
    self->readers[self->readers_size++] = (s_reader_t){socket, fd, fn, arg};
    return 0;
}

int
sup_supervisor_run (sup_supervisor_t *self)
{
    assert (self && !self->started);
    self->started = true;
    int64_t now_ms = cm_clock_mono_ms ();
    for (size_t i = 0; i < sup_conf_size (self->conf); i++) {
        const sup_program_t *program = sup_conf_program (self->conf, i);
        if (sup_program_replicas (program) == 0)
            cm_info ("%s: replicas = 0, not started", sup_program_name (program));
    }
    if (self->instances_size == 0 && sup_conf_size (self->conf) > 0) {
        cm_error ("nothing to run: every program has replicas = 0");
        return 1;
    }
    if (self->instances_size == 0 && self->readers_size == 0) {
        cm_error ("nothing to run: no program, and nothing to serve");
        return 1;
    }
    if (self->instances_size == 0)
        cm_info ("no program to supervise: serving the metrics hub only");
    else
        cm_info ("supervising %zu instances of %zu programs (grace %lld ms)",
                 self->instances_size, sup_conf_size (self->conf),
                 (long long) self->grace_ms);
    for (size_t i = 0; i < self->instances_size; i++)
        s_spawn (self, &self->instances[i], now_ms);

    while (!self->done) {
        now_ms = cm_clock_mono_ms ();
        s_tick (self, now_ms);
        if (self->done)
            break;
        zmq_pollitem_t items[1 + SUP_SUPERVISOR_READERS_MAX];
        items[0] = (zmq_pollitem_t){NULL, self->sigfd, ZMQ_POLLIN, 0};
        for (size_t i = 0; i < self->readers_size; i++)
            items[1 + i] = (zmq_pollitem_t){self->readers[i].socket, self->readers[i].fd,
                                            ZMQ_POLLIN, 0};
        int rc =
            zmq_poll (items, (int) (1 + self->readers_size), s_timeout (self, now_ms));
        if (rc < 0) {
            if (errno == EINTR)
                continue;
            cm_error ("zmq_poll failed: %s; stopping", zmq_strerror (errno));
            sup_supervisor_stop (self, cm_clock_mono_ms ());
            continue;
        }
        now_ms = cm_clock_mono_ms ();
        if (items[0].revents & ZMQ_POLLIN)
            s_signals (self, now_ms);
        for (size_t i = 0; i < self->readers_size; i++)
            if (items[1 + i].revents & ZMQ_POLLIN)
                self->readers[i].fn (self, self->readers[i].socket, self->readers[i].fd,
                                     self->readers[i].arg);
    }
    return self->exit_code;
}

void
sup_supervisor_stop (sup_supervisor_t *self, int64_t now_ms)
{
    assert (self);
    if (self->stopping) {
        if (!self->killed) {
            cm_warn ("asked again to stop: killing the remaining children now");
            self->kill_at_ms = now_ms;
        }
        return;
    }
    self->stopping = true;
    self->kill_at_ms = now_ms + self->grace_ms;
    cm_info ("stopping %zu running children (grace %lld ms)",
             sup_supervisor_running (self), (long long) self->grace_ms);
    for (size_t i = 0; i < self->instances_size; i++) {
        s_instance_t *inst = &self->instances[i];
        if (inst->state == SUP_INSTANCE_WAITING || inst->state == SUP_INSTANCE_IDLE)
            inst->state = SUP_INSTANCE_STOPPED;
        else if (inst->state == SUP_INSTANCE_RUNNING) {
            int signum = sup_program_stop_signal (inst->program);
            cm_info ("sending %s to %s pid %d", sigabbrev_np (signum), inst->name,
                     (int) inst->pid);
            if (kill (-inst->pid, signum) && errno == ESRCH)
                kill (inst->pid, signum);
        }
    }
}

size_t
sup_supervisor_running (sup_supervisor_t *self)
{
    assert (self);
    size_t count = 0;
    for (size_t i = 0; i < self->instances_size; i++)
        if (self->instances[i].state == SUP_INSTANCE_RUNNING)
            count++;
    return count;
}

size_t
sup_supervisor_programs (sup_supervisor_t *self)
{
    assert (self);
    return sup_conf_size (self->conf);
}

void
sup_supervisor_program_stats (sup_supervisor_t *self, size_t index,
                              sup_program_stats_t *stats)
{
    assert (self && stats && index < sup_conf_size (self->conf));
    const sup_program_t *program = sup_conf_program (self->conf, index);
    *stats = (sup_program_stats_t){.name = sup_program_name (program),
                                   .replicas = sup_program_replicas (program)};
    for (size_t i = 0; i < self->instances_size; i++) {
        s_instance_t *inst = &self->instances[i];
        if (inst->program != program)
            continue;
        if (inst->state == SUP_INSTANCE_RUNNING)
            stats->running++;
        else if (inst->state == SUP_INSTANCE_GAVE_UP)
            stats->given_up++;
        if (inst->starts > 1)
            stats->restarts += inst->starts - 1;
    }
}

//  --------------------------------------------------------------------------
//  Private helpers

//  Start one instance. Whatever goes wrong counts as a crash, so a program
//  that cannot start is retried with back-off and given up like any other.
static void
s_spawn (sup_supervisor_t *self, s_instance_t *inst, int64_t now_ms)
{
    //  Everything the child needs is built before fork: between fork and
    //  exec the child only makes async-signal-safe calls.
    char **envp = s_child_environment (inst);
    int pipefd[2];
    if (pipe2 (pipefd, O_CLOEXEC)) {
        cm_error ("%s: cannot start: pipe: %s", inst->name, strerror (errno));
        free (envp);
        s_crashed (self, inst, now_ms);
        return;
    }
    pid_t parent = getpid ();
    pid_t pid = fork ();
    if (pid == 0)
        s_child (inst, envp, pipefd[1], parent);
    close (pipefd[1]);
    for (char **e = envp; *e; e++)
        free (*e);
    free (envp);
    if (pid < 0) {
        cm_error ("%s: cannot start: fork: %s", inst->name, strerror (errno));
        close (pipefd[0]);
        s_crashed (self, inst, now_ms);
        return;
    }
    //  Also set here, so the group exists before we might signal it.
    setpgid (pid, pid);
    inst->state = SUP_INSTANCE_RUNNING;
    inst->pid = pid;
    inst->started_ms = now_ms;
    inst->starts++;
    sup_backoff_started (inst->backoff, now_ms);

    //  The pipe closes on a successful exec, or brings back exec's errno.
    int child_errno = 0;
    ssize_t n;
    do
        n = read (pipefd[0], &child_errno, sizeof child_errno);
    while (n < 0 && errno == EINTR);
    close (pipefd[0]);
    char command[512];
    s_command_line (inst->program, command, sizeof command);
    if (n == sizeof child_errno)
        cm_error ("%s pid %d: cannot execute '%s': %s", inst->name, (int) pid,
                  sup_program_argv (inst->program)[0], strerror (child_errno));
    else if (inst->starts == 1)
        cm_info ("started %s pid %d: %s", inst->name, (int) pid, command);
    else
        cm_info ("restarted %s pid %d (start %u): %s", inst->name, (int) pid,
                 inst->starts, command);
}

static void
s_child (s_instance_t *inst, char **envp, int errfd, pid_t parent)
{
    setpgid (0, 0);
    prctl (PR_SET_PDEATHSIG, SIGTERM);
    //  The supervisor died before prctl took effect: nobody would stop us.
    if (getppid () != parent)
        _exit (127);
    struct sigaction dfl = {.sa_handler = SIG_DFL};
    static const int reset[] = {SIGCHLD, SIGINT, SIGTERM, SIGHUP, SIGPIPE, SIGQUIT};
    for (size_t i = 0; i < sizeof reset / sizeof reset[0]; i++)
        sigaction (reset[i], &dfl, NULL);
    sigset_t none;
    sigemptyset (&none);
    sigprocmask (SIG_SETMASK, &none, NULL);
    int null = open ("/dev/null", O_RDONLY);
    if (null > 0) {
        dup2 (null, STDIN_FILENO);
        close (null);
    }
    char *const *argv = sup_program_argv (inst->program);
    execvpe (argv[0], argv, envp);
    int err = errno;
    ssize_t rc = write (errfd, &err, sizeof err);
    (void) rc;
    _exit (127);
}

//  The supervisor's environment, then the program's env entries, then
//  INSTANCE_INDEX and SUPERVISED; a later entry replaces an earlier one.
static char **
s_child_environment (s_instance_t *inst)
{
    extern char **environ;
    char *const *extra = sup_program_env (inst->program);
    size_t extra_size = 0;
    while (extra[extra_size])
        extra_size++;
    char **overrides = cm_calloc (extra_size + 3, sizeof *overrides);
    for (size_t i = 0; i < extra_size; i++)
        overrides[i] = cm_strdup (extra[i]);
    char index[48];
    snprintf (index, sizeof index, "INSTANCE_INDEX=%zu", inst->index);
    overrides[extra_size] = cm_strdup (index);
    overrides[extra_size + 1] = cm_strdup ("SUPERVISED=1");
    size_t overrides_size = extra_size + 2;

    size_t environ_size = 0;
    while (environ[environ_size])
        environ_size++;
    char **envp = cm_calloc (environ_size + overrides_size + 1, sizeof *envp);
    size_t n = 0;
    for (size_t i = 0; i < environ_size; i++) {
        size_t keylen = strcspn (environ[i], "=");
        bool replaced = false;
        for (size_t j = 0; j < overrides_size && !replaced; j++)
            replaced = !strncmp (environ[i], overrides[j], keylen) &&
                       overrides[j][keylen] == '=';
        if (!replaced)
            envp[n++] = cm_strdup (environ[i]);
    }
    //  Among the overrides, too, the last of a key wins.
    for (size_t j = 0; j < overrides_size; j++) {
        size_t keylen = strcspn (overrides[j], "=");
        bool later = false;
        for (size_t k = j + 1; k < overrides_size && !later; k++)
            later = !strncmp (overrides[j], overrides[k], keylen + 1);
        if (later)
            free (overrides[j]);
        else
            envp[n++] = overrides[j];
    }
    free (overrides);
    return envp;
}

static void
s_reap (sup_supervisor_t *self, int64_t now_ms)
{
    while (true) {
        siginfo_t info = {0};
        if (waitid (P_ALL, 0, &info, WEXITED | WNOHANG | WNOWAIT) || info.si_pid == 0)
            break;
        pid_t pid = info.si_pid;
        s_instance_t *inst = s_lookup (self, pid);
        //  The zombie still holds its pid, so its group id is still ours.
        if (inst)
            kill (-pid, SIGKILL);
        int status;
        if (waitpid (pid, &status, 0) != pid)
            break;
        if (inst)
            s_exited (self, inst, status, now_ms);
        else
            cm_debug ("reaped orphan pid %d", (int) pid);
    }
}

static void
s_exited (sup_supervisor_t *self, s_instance_t *inst, int status, int64_t now_ms)
{
    char how[128];
    if (WIFEXITED (status))
        snprintf (how, sizeof how, "exited with status %d", WEXITSTATUS (status));
    else if (WIFSIGNALED (status))
        snprintf (how, sizeof how, "killed by signal %d (SIG%s)%s", WTERMSIG (status),
                  sigabbrev_np (WTERMSIG (status)) ? sigabbrev_np (WTERMSIG (status))
                                                   : "?",
                  WCOREDUMP (status) ? ", core dumped" : "");
    else
        snprintf (how, sizeof how, "ended with wait status 0x%x", (unsigned) status);
    cm_log (self->stopping ? CM_LOG_INFO : CM_LOG_WARN, "%s pid %d %s after %lld ms",
            inst->name, (int) inst->pid, how, (long long) (now_ms - inst->started_ms));
    inst->pid = 0;
    if (self->stopping)
        inst->state = SUP_INSTANCE_STOPPED;
    else if (inst->starts == 1 && WIFEXITED (status) &&
             WEXITSTATUS (status) == SUP_SUPERVISOR_CONFIG_STATUS) {
        //  Our programs exit 2 when a setting is bad (their message, above,
        //  names it). Restarting cannot mend that, and a suite half up
        //  while one program loops on a typo hides it: stop everything.
        inst->state = SUP_INSTANCE_GAVE_UP;
        cm_error ("%s refused its configuration at its first start (exit status %d; "
                  "its message is above): stopping the suite",
                  inst->name, SUP_SUPERVISOR_CONFIG_STATUS);
        self->exit_code = SUP_SUPERVISOR_CONFIG_STATUS;
        sup_supervisor_stop (self, now_ms);
    } else
        s_crashed (self, inst, now_ms);
}

//  Decide about an instance that is not running and should be.
static void
s_crashed (sup_supervisor_t *self, s_instance_t *inst, int64_t now_ms)
{
    int64_t delay_ms = 0;
    sup_backoff_verdict_t verdict =
        sup_backoff_exited (inst->backoff, now_ms, randombytes_random (), &delay_ms);
    size_t crashes = sup_backoff_crashes (inst->backoff, now_ms);
    if (verdict == SUP_BACKOFF_GIVE_UP) {
        inst->state = SUP_INSTANCE_GAVE_UP;
        cm_error (
            "%s exited %zu times within %lld ms: GIVING UP, it will not be "
            "restarted (SUPERVISOR_MAX_CRASHES=%lld, SUPERVISOR_CRASH_WINDOW_MS=%lld)",
            inst->name, crashes, (long long) self->policy.window_ms,
            (long long) self->policy.max_crashes, (long long) self->policy.window_ms);
        return;
    }
    inst->state = SUP_INSTANCE_WAITING;
    inst->restart_at_ms = now_ms + delay_ms;
    if (self->policy.max_crashes > 0)
        cm_info ("restarting %s in %lld ms (exit %zu of %lld within %lld ms before it is "
                 "given up)",
                 inst->name, (long long) delay_ms, crashes,
                 (long long) self->policy.max_crashes,
                 (long long) self->policy.window_ms);
    else
        cm_info ("restarting %s in %lld ms", inst->name, (long long) delay_ms);
}

static void
s_signals (sup_supervisor_t *self, int64_t now_ms)
{
    struct signalfd_siginfo info;
    while (read (self->sigfd, &info, sizeof info) == (ssize_t) sizeof info)
        if (info.ssi_signo == SIGUSR1) {
            cm_info ("received SIGUSR1 from pid %u: starting what was given up",
                     info.ssi_pid);
            sup_supervisor_revive (self, now_ms);
        } else if (info.ssi_signo != SIGCHLD) {
            cm_info ("received SIG%s from pid %u", sigabbrev_np ((int) info.ssi_signo),
                     info.ssi_pid);
            sup_supervisor_stop (self, now_ms);
        }
    //  SIGCHLDs coalesce, so one read may stand for many exits: reap them
    //  all, whatever was read.
    s_reap (self, now_ms);
}

size_t
sup_supervisor_revive (sup_supervisor_t *self, int64_t now_ms)
{
    assert (self);
    size_t revived = 0;
    if (self->stopping)
        return 0;
    for (size_t i = 0; i < self->instances_size; i++) {
        s_instance_t *inst = &self->instances[i];
        if (inst->state != SUP_INSTANCE_GAVE_UP)
            continue;
        //  A clean slate: its crashes so far were before the mending.
        sup_backoff_destroy (&inst->backoff);
        inst->backoff = sup_backoff_new (&self->policy);
        cm_info ("%s was given up: starting it again", inst->name);
        s_spawn (self, inst, now_ms);
        revived++;
    }
    if (!revived)
        cm_info ("nothing was given up: nothing to start again");
    return revived;
}

//  Do what is due at now_ms: restarts, or the steps of a shutdown.
static void
s_tick (sup_supervisor_t *self, int64_t now_ms)
{
    size_t running = sup_supervisor_running (self);
    if (self->stopping) {
        if (running == 0) {
            cm_info ("every child has exited: bye");
            self->done = true;
        } else if (!self->killed && now_ms >= self->kill_at_ms) {
            s_kill_all (self, SIGKILL, true);
            self->killed = true;
            self->abandon_at_ms = now_ms + SUP_SUPERVISOR_KILL_WAIT_MS;
        } else if (self->killed && now_ms >= self->abandon_at_ms) {
            cm_error ("%zu children survived SIGKILL for %d ms; exiting without them",
                      running, SUP_SUPERVISOR_KILL_WAIT_MS);
            self->exit_code = 1;
            self->done = true;
        }
        return;
    }
    size_t waiting = 0;
    for (size_t i = 0; i < self->instances_size; i++) {
        s_instance_t *inst = &self->instances[i];
        if (inst->state == SUP_INSTANCE_WAITING && now_ms >= inst->restart_at_ms)
            s_spawn (self, inst, now_ms);
        if (inst->state == SUP_INSTANCE_WAITING)
            waiting++;
    }
    if (self->instances_size > 0 && sup_supervisor_running (self) == 0 && waiting == 0) {
        cm_error ("every child has been given up: nothing left to supervise, exiting");
        self->exit_code = 1;
        self->done = true;
    }
}

//  Milliseconds until the next thing due, -1 when only a signal can wake us.
static long
s_timeout (sup_supervisor_t *self, int64_t now_ms)
{
    int64_t next = -1;
    if (self->stopping)
        next = self->killed ? self->abandon_at_ms : self->kill_at_ms;
    else
        for (size_t i = 0; i < self->instances_size; i++) {
            s_instance_t *inst = &self->instances[i];
            if (inst->state == SUP_INSTANCE_WAITING &&
                (next < 0 || inst->restart_at_ms < next))
                next = inst->restart_at_ms;
        }
    if (next < 0)
        return -1;
    return next > now_ms ? (long) (next - now_ms) : 0;
}

static void
s_kill_all (sup_supervisor_t *self, int signum, bool log)
{
    for (size_t i = 0; i < self->instances_size; i++) {
        s_instance_t *inst = &self->instances[i];
        if (inst->state != SUP_INSTANCE_RUNNING)
            continue;
        if (log)
            cm_warn ("%s pid %d still running after %lld ms: sending SIG%s", inst->name,
                     (int) inst->pid, (long long) self->grace_ms, sigabbrev_np (signum));
        if (kill (-inst->pid, signum) && errno == ESRCH)
            kill (inst->pid, signum);
    }
}

static s_instance_t *
s_lookup (sup_supervisor_t *self, pid_t pid)
{
    for (size_t i = 0; i < self->instances_size; i++)
        if (self->instances[i].state == SUP_INSTANCE_RUNNING &&
            self->instances[i].pid == pid)
            return &self->instances[i];
    return NULL;
}

//  The command words joined by spaces, cut to fit, for the log.
static void
s_command_line (const sup_program_t *program, char *buf, size_t size)
{
    size_t len = 0;
    buf[0] = 0;
    for (char *const *w = sup_program_argv (program); *w && len + 1 < size; w++) {
        int n = snprintf (buf + len, size - len, "%s%s", len ? " " : "", *w);
        if (n < 0)
            break;
        len += (size_t) n;
    }
}
