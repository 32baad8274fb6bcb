/*
 * probe: a tiny static program that runs inside test containers and reports
 * what the container sees, as exactly one line of JSON on stdout.
 *
 * Usage: probe <command> [args]   (see COMMANDS at the bottom of this file)
 *
 * Exit status is 0 unless the command says otherwise (`exit N`, `kill-self`);
 * usage errors print {"error": "..."} and exit 2.
 *
 * Build: gcc -static -O2 -Wall -Wextra -Werror -o probe probe.c
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <netinet/in.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

#define READ_LIMIT (64 * 1024)
#define FORK_CHILD_SLEEP 30
#define SYS_CLONE3_NR 435
#define CLONE_ARGS_SIZE 88
#define SIG_MAX 64

/* ------------------------------------------------------------------------ */
/* JSON writer: one document on stdout, commas inserted automatically.      */
/* ------------------------------------------------------------------------ */

#define JSON_MAX_DEPTH 16

static int json_depth;
static int json_first[JSON_MAX_DEPTH];
static int json_after_key;

/* Emit the separator needed before a value or key at the current depth. */
static void json_sep(void)
{
    if (json_after_key) {
        json_after_key = 0;
        return;
    }
    if (json_depth > 0) {
        if (!json_first[json_depth])
            putchar(',');
        json_first[json_depth] = 0;
    }
}

static void json_open(char c)
{
    json_sep();
    putchar(c);
    if (json_depth < JSON_MAX_DEPTH - 1)
        json_first[++json_depth] = 1;
}

static void json_close(char c)
{
    putchar(c);
    if (json_depth > 0)
        json_depth--;
}

static void obj_begin(void) { json_open('{'); }
static void obj_end(void) { json_close('}'); }
static void arr_begin(void) { json_open('['); }
static void arr_end(void) { json_close(']'); }

/* Length of the valid UTF-8 sequence at s (at most n bytes), or 0. */
static size_t utf8_len(const unsigned char *s, size_t n)
{
    unsigned char c = s[0];
    size_t len, i;
    unsigned char lo = 0x80, hi = 0xBF;

    if (c >= 0xC2 && c <= 0xDF)
        len = 2;
    else if (c >= 0xE0 && c <= 0xEF)
        len = 3;
    else if (c >= 0xF0 && c <= 0xF4)
        len = 4;
    else
        return 0;
    if (c == 0xE0)
        lo = 0xA0;
    else if (c == 0xED)
        hi = 0x9F;
    else if (c == 0xF0)
        lo = 0x90;
    else if (c == 0xF4)
        hi = 0x8F;
    if (n < len || s[1] < lo || s[1] > hi)
        return 0;
    for (i = 2; i < len; i++)
        if ((s[i] & 0xC0) != 0x80)
            return 0;
    return len;
}

/*
 * Write n bytes as a quoted JSON string. Quotes, backslashes and control
 * characters are escaped; valid UTF-8 passes through; any other byte is
 * written as \u00XX (so the output is always valid UTF-8 and valid JSON).
 */
static void json_raw_string(const char *str, size_t n)
{
    const unsigned char *s = (const unsigned char *)str;
    size_t i = 0, len;

    putchar('"');
    while (i < n) {
        unsigned char c = s[i];
        switch (c) {
        case '"': fputs("\\\"", stdout); break;
        case '\\': fputs("\\\\", stdout); break;
        case '\n': fputs("\\n", stdout); break;
        case '\r': fputs("\\r", stdout); break;
        case '\t': fputs("\\t", stdout); break;
        case '\b': fputs("\\b", stdout); break;
        case '\f': fputs("\\f", stdout); break;
        default:
            if (c < 0x20 || c == 0x7F) {
                printf("\\u%04x", c);
            } else if (c < 0x80) {
                putchar(c);
            } else if ((len = utf8_len(s + i, n - i)) > 0) {
                fwrite(s + i, 1, len, stdout);
                i += len;
                continue;
            } else {
                printf("\\u%04x", c);
            }
        }
        i++;
    }
    putchar('"');
}

static void key(const char *k)
{
    json_sep();
    json_raw_string(k, strlen(k));
    putchar(':');
    json_after_key = 1;
}

static void val_strn(const char *s, size_t n) { json_sep(); json_raw_string(s, n); }
static void val_null(void) { json_sep(); fputs("null", stdout); }
static void val_bool(int b) { json_sep(); fputs(b ? "true" : "false", stdout); }
static void val_int(long long v) { json_sep(); printf("%lld", v); }
static void val_double(double v) { json_sep(); printf("%.15g", v); }

static void val_str(const char *s)
{
    if (s)
        val_strn(s, strlen(s));
    else
        val_null();
}

static void val_uint(unsigned long long v) { json_sep(); printf("%llu", v); }

/* Finish the document: newline and flush. */
static void json_done(void)
{
    putchar('\n');
    fflush(stdout);
}

/* Print {"error": msg} and return the usage exit status. */
static int fail_usage(const char *fmt, const char *arg)
{
    char msg[512];

    snprintf(msg, sizeof(msg), fmt, arg);
    obj_begin();
    key("error");
    val_str(msg);
    obj_end();
    json_done();
    return 2;
}

/* ------------------------------------------------------------------------ */
/* errno names                                                              */
/* ------------------------------------------------------------------------ */

#define E(name) { name, #name }
static const struct {
    int num;
    const char *name;
} errno_names[] = {
    E(EPERM), E(ENOENT), E(ESRCH), E(EINTR), E(EIO), E(ENXIO), E(E2BIG),
    E(EBADF), E(ECHILD), E(EAGAIN), E(ENOMEM), E(EACCES), E(EFAULT),
    E(EBUSY), E(EEXIST), E(EXDEV), E(ENODEV), E(ENOTDIR), E(EISDIR),
    E(EINVAL), E(ENFILE), E(EMFILE), E(ENOTTY), E(EFBIG), E(ENOSPC),
    E(ESPIPE), E(EROFS), E(EMLINK), E(EPIPE), E(ERANGE), E(ENAMETOOLONG),
    E(ENOSYS), E(ENOTEMPTY), E(ELOOP), E(EOPNOTSUPP), E(EDQUOT),
};
#undef E

/* Symbolic errno name, or the number as a string when not in the table. */
static const char *errno_name(int err)
{
    static char buf[16];
    size_t i;

    for (i = 0; i < sizeof(errno_names) / sizeof(errno_names[0]); i++)
        if (errno_names[i].num == err)
            return errno_names[i].name;
    snprintf(buf, sizeof(buf), "%d", err);
    return buf;
}

/* Emit an errno value: its name, or null for 0. */
static void val_errno(int err)
{
    if (err)
        val_str(errno_name(err));
    else
        val_null();
}

/* ------------------------------------------------------------------------ */
/* Helpers: argument parsing, file reading, /proc/self/status fields        */
/* ------------------------------------------------------------------------ */

static int parse_long(const char *s, long *out)
{
    char *end;

    errno = 0;
    *out = strtol(s, &end, 10);
    return errno == 0 && end != s && *end == '\0';
}

static int parse_seconds(const char *s, double *out)
{
    char *end;

    errno = 0;
    *out = strtod(s, &end);
    return errno == 0 && end != s && *end == '\0' && isfinite(*out) && *out >= 0;
}

/*
 * Read up to `limit` bytes of `path` into a NUL-terminated malloc'd buffer.
 * Returns 0 or an errno value; *truncated is set when more data remained.
 */
static int read_file(const char *path, size_t limit, char **out, size_t *len,
                     int *truncated)
{
    size_t cap = 4096, n = 0;
    char *buf, *tmp;
    ssize_t r;
    char extra;
    int fd, err = 0;

    *out = NULL;
    *len = 0;
    *truncated = 0;
    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return errno;
    buf = malloc(cap + 1);
    if (!buf) {
        close(fd);
        return ENOMEM;
    }
    while (n < limit) {
        if (n == cap) {
            cap = cap * 2 > limit ? limit : cap * 2;
            tmp = realloc(buf, cap + 1);
            if (!tmp) {
                err = ENOMEM;
                break;
            }
            buf = tmp;
        }
        r = read(fd, buf + n, cap - n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            err = errno;
        if (r <= 0)
            break;
        n += (size_t)r;
    }
    if (!err && n == limit && read(fd, &extra, 1) == 1)
        *truncated = 1;
    close(fd);
    if (err) {
        free(buf);
        return err;
    }
    buf[n] = '\0';
    *out = buf;
    *len = n;
    return 0;
}

/* Read a whole (small, text) file; NULL on failure. */
static char *slurp(const char *path)
{
    char *buf;
    size_t len;
    int truncated;

    if (read_file(path, 16 * 1024 * 1024, &buf, &len, &truncated) != 0)
        return NULL;
    return buf;
}

/*
 * Find "Name:<ws>value" in a /proc status text; returns a pointer to the
 * value and its length up to end of line, or NULL.
 */
static const char *status_field(const char *status, const char *name, size_t *vlen)
{
    size_t nlen = strlen(name);
    const char *line = status, *v;

    while (line && *line) {
        if (strncmp(line, name, nlen) == 0 && line[nlen] == ':') {
            v = line + nlen + 1;
            while (*v == ' ' || *v == '\t')
                v++;
            *vlen = strcspn(v, "\n");
            return v;
        }
        line = strchr(line, '\n');
        if (line)
            line++;
    }
    return NULL;
}

static void val_status_str(const char *status, const char *name)
{
    size_t n;
    const char *v = status ? status_field(status, name, &n) : NULL;

    if (v)
        val_strn(v, n);
    else
        val_null();
}

static void val_status_int(const char *status, const char *name)
{
    size_t n;
    const char *v = status ? status_field(status, name, &n) : NULL;

    if (v)
        val_int(strtoll(v, NULL, 10));
    else
        val_null();
}

/* ------------------------------------------------------------------------ */
/* info                                                                     */
/* ------------------------------------------------------------------------ */

static void info_ids(void)
{
    uid_t ruid, euid, suid;
    gid_t rgid, egid, sgid;

    getresuid(&ruid, &euid, &suid);
    getresgid(&rgid, &egid, &sgid);
    key("uid"); val_uint(ruid);
    key("euid"); val_uint(euid);
    key("suid"); val_uint(suid);
    key("gid"); val_uint(rgid);
    key("egid"); val_uint(egid);
    key("sgid"); val_uint(sgid);
}

static void info_groups(void)
{
    int n = getgroups(0, NULL), i;
    gid_t *groups = n > 0 ? calloc((size_t)n, sizeof(gid_t)) : NULL;

    if (groups)
        n = getgroups(n, groups);
    key("groups");
    arr_begin();
    for (i = 0; groups && i < n; i++)
        val_uint(groups[i]);
    arr_end();
    free(groups);
}

static void info_host_cwd(void)
{
    char host[256], cwd[4096];

    key("hostname");
    if (gethostname(host, sizeof(host)) == 0) {
        host[sizeof(host) - 1] = '\0';
        val_str(host);
    } else {
        val_null();
    }
    key("cwd");
    val_str(getcwd(cwd, sizeof(cwd)));
}

static void info_status(void)
{
    static const char *const caps[][2] = {
        {"inh", "CapInh"}, {"prm", "CapPrm"}, {"eff", "CapEff"},
        {"bnd", "CapBnd"}, {"amb", "CapAmb"},
    };
    char *status = slurp("/proc/self/status");
    size_t i;

    key("caps");
    obj_begin();
    for (i = 0; i < sizeof(caps) / sizeof(caps[0]); i++) {
        key(caps[i][0]);
        val_status_str(status, caps[i][1]);
    }
    obj_end();
    key("no_new_privs");
    val_status_int(status, "NoNewPrivs");
    key("seccomp");
    val_status_int(status, "Seccomp");
    free(status);
}

static void info_text_file(const char *name, const char *path)
{
    char *text = slurp(path);

    key(name);
    val_str(text);
    free(text);
}

static int cmp_long(const void *a, const void *b)
{
    long x = *(const long *)a, y = *(const long *)b;

    return (x > y) - (x < y);
}

static int all_digits(const char *s)
{
    if (!*s)
        return 0;
    for (; *s; s++)
        if (!isdigit((unsigned char)*s))
            return 0;
    return 1;
}

static void info_pids(void)
{
    DIR *dir = opendir("/proc");
    struct dirent *de;
    long *pids = NULL, *tmp;
    size_t n = 0, cap = 0, i;

    key("pids");
    if (!dir) {
        val_null();
        return;
    }
    while ((de = readdir(dir)) != NULL) {
        if (!all_digits(de->d_name))
            continue;
        if (n == cap) {
            cap = cap ? cap * 2 : 64;
            tmp = realloc(pids, cap * sizeof(long));
            if (!tmp)
                break;
            pids = tmp;
        }
        pids[n++] = strtol(de->d_name, NULL, 10);
    }
    closedir(dir);
    if (n)
        qsort(pids, n, sizeof(long), cmp_long);
    arr_begin();
    for (i = 0; i < n; i++)
        val_int(pids[i]);
    arr_end();
    free(pids);
}

/* Decode mountinfo's octal escapes (\040 for space etc.) in place. */
static void unescape_octal(char *s)
{
    char *out = s;

    while (*s) {
        if (s[0] == '\\' && s[1] >= '0' && s[1] <= '3' && s[2] >= '0' &&
            s[2] <= '7' && s[3] >= '0' && s[3] <= '7') {
            *out++ = (char)((s[1] - '0') * 64 + (s[2] - '0') * 8 + (s[3] - '0'));
            s += 4;
        } else {
            *out++ = *s++;
        }
    }
    *out = '\0';
}

/*
 * One mountinfo line:
 *   id parent maj:min root target options [optional...] - fstype source super
 */
static void mount_entry(char *line)
{
    char *f[64], *save = NULL, *tok;
    int n = 0, dash = -1, i;

    for (tok = strtok_r(line, " ", &save); tok && n < 64;
         tok = strtok_r(NULL, " ", &save))
        f[n++] = tok;
    for (i = 6; i < n; i++)
        if (strcmp(f[i], "-") == 0) {
            dash = i;
            break;
        }
    if (dash < 0 || dash + 3 >= n)
        return;
    unescape_octal(f[4]);
    unescape_octal(f[dash + 2]);
    obj_begin();
    key("target"); val_str(f[4]);
    key("fstype"); val_str(f[dash + 1]);
    key("source"); val_str(f[dash + 2]);
    key("options"); val_str(f[5]);
    key("super_options"); val_str(f[dash + 3]);
    obj_end();
}

static void info_mounts(void)
{
    char *text = slurp("/proc/self/mountinfo"), *line, *save = NULL;

    key("mounts");
    if (!text) {
        val_null();
        return;
    }
    arr_begin();
    for (line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save))
        mount_entry(line);
    arr_end();
    free(text);
}

static void info_tty_env(void)
{
    char **e;
    int fd;

    key("tty");
    val_str(ttyname(0));
    key("isatty");
    arr_begin();
    for (fd = 0; fd < 3; fd++)
        val_bool(isatty(fd));
    arr_end();
    key("env");
    arr_begin();
    for (e = environ; e && *e; e++)
        val_str(*e);
    arr_end();
}

static void val_rlim(rlim_t v)
{
    if (v == RLIM_INFINITY)
        val_null();
    else
        val_uint(v);
}

static void info_rlimit(void)
{
    struct rlimit rl;

    key("rlimit_nofile");
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0) {
        val_null();
        return;
    }
    arr_begin();
    val_rlim(rl.rlim_cur);
    val_rlim(rl.rlim_max);
    arr_end();
}

static int cmd_info(char **argv)
{
    (void)argv;
    obj_begin();
    key("pid"); val_int(getpid());
    key("ppid"); val_int(getppid());
    info_ids();
    info_groups();
    info_host_cwd();
    info_status();
    info_text_file("uid_map", "/proc/self/uid_map");
    info_text_file("gid_map", "/proc/self/gid_map");
    info_pids();
    info_mounts();
    info_tty_env();
    info_rlimit();
    obj_end();
    json_done();
    return 0;
}

/* ------------------------------------------------------------------------ */
/* syscall NAME                                                             */
/* ------------------------------------------------------------------------ */

static long sc_mount(void)
{
    long r;

    (void)mkdir("/mnt", 0755);
    r = mount("none", "/mnt", "tmpfs", 0, NULL);
    if (r == 0)
        (void)umount2("/mnt", MNT_DETACH); /* leave no trace behind */
    return r;
}

static long sc_unshare_user(void) { return unshare(CLONE_NEWUSER); }
static long sc_unshare_net(void) { return unshare(CLONE_NEWNET); }

static long sc_keyctl(void)
{
    /* KEYCTL_GET_KEYRING_ID (0) of KEY_SPEC_SESSION_KEYRING (-3), no create */
    return syscall(SYS_keyctl, 0, -3, 0);
}

/*
 * clone3 with an all-zero struct clone_args. Usually refused (ENOSYS from a
 * seccomp filter), but if the kernel accepts it this is a plain fork with no
 * exit signal: the child leaves at once and the parent reaps it.
 */
static long sc_clone3(void)
{
    _Alignas(8) unsigned char args[CLONE_ARGS_SIZE];
    long r;
    int saved;

    memset(args, 0, sizeof(args));
    fflush(stdout);
    r = syscall(SYS_CLONE3_NR, args, sizeof(args));
    if (r == 0)
        _exit(0);
    if (r > 0) {
        saved = errno;
        (void)waitpid((pid_t)r, NULL, __WALL);
        errno = saved;
    }
    return r;
}

static long sc_setns(void)
{
    int fd = open("/proc/self/ns/net", O_RDONLY | O_CLOEXEC), saved;
    long r;

    if (fd < 0)
        return -1;
    r = setns(fd, 0);
    saved = errno;
    close(fd);
    errno = saved;
    return r;
}

static long sc_pivot_root(void) { return syscall(SYS_pivot_root, ".", "."); }

static const struct {
    const char *name;
    long (*fn)(void);
} syscalls[] = {
    {"mount", sc_mount},
    {"unshare-user", sc_unshare_user},
    {"unshare-net", sc_unshare_net},
    {"keyctl", sc_keyctl},
    {"clone3", sc_clone3},
    {"setns", sc_setns},
    {"pivot_root", sc_pivot_root},
};

static int cmd_syscall(char **argv)
{
    size_t i;
    long r;
    int err;

    for (i = 0; i < sizeof(syscalls) / sizeof(syscalls[0]); i++) {
        if (strcmp(argv[0], syscalls[i].name) != 0)
            continue;
        errno = 0;
        r = syscalls[i].fn();
        err = r < 0 ? errno : 0;
        obj_begin();
        key("call"); val_str(argv[0]);
        key("ret"); val_int(r);
        key("errno"); val_errno(err);
        obj_end();
        json_done();
        return 0;
    }
    return fail_usage("unknown syscall %s", argv[0]);
}

/* ------------------------------------------------------------------------ */
/* write / read                                                             */
/* ------------------------------------------------------------------------ */

static int write_all(const char *path, const char *text)
{
    size_t len = strlen(text), off = 0;
    ssize_t w;
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644), err = 0;

    if (fd < 0)
        return errno;
    while (off < len) {
        w = write(fd, text + off, len - off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0) {
            err = errno;
            break;
        }
        off += (size_t)w;
    }
    if (close(fd) != 0 && !err)
        err = errno;
    return err;
}

static int cmd_write(char **argv)
{
    int err = write_all(argv[0], argv[1]);

    obj_begin();
    key("path"); val_str(argv[0]);
    key("ok"); val_bool(err == 0);
    key("errno"); val_errno(err);
    obj_end();
    json_done();
    return 0;
}

static int cmd_read(char **argv)
{
    char *data;
    size_t len;
    int truncated, err = read_file(argv[0], READ_LIMIT, &data, &len, &truncated);

    obj_begin();
    key("path"); val_str(argv[0]);
    key("ok"); val_bool(err == 0);
    key("errno"); val_errno(err);
    key("data");
    if (err)
        val_null();
    else
        val_strn(data, len);
    key("truncated"); val_bool(truncated);
    obj_end();
    json_done();
    free(data);
    return 0;
}

/* ------------------------------------------------------------------------ */
/* exit / kill-self / sleep / spin                                          */
/* ------------------------------------------------------------------------ */

static int cmd_exit(char **argv)
{
    long n;

    if (!parse_long(argv[0], &n) || n < 0 || n > 255)
        return fail_usage("exit status must be 0..255, got %s", argv[0]);
    obj_begin();
    key("exit"); val_int(n);
    obj_end();
    json_done();
    exit((int)n);
}

static const struct {
    int num;
    const char *name;
} signal_names[] = {
    {SIGHUP, "HUP"}, {SIGINT, "INT"}, {SIGQUIT, "QUIT"}, {SIGILL, "ILL"},
    {SIGTRAP, "TRAP"}, {SIGABRT, "ABRT"}, {SIGBUS, "BUS"}, {SIGFPE, "FPE"},
    {SIGKILL, "KILL"}, {SIGUSR1, "USR1"}, {SIGSEGV, "SEGV"}, {SIGUSR2, "USR2"},
    {SIGPIPE, "PIPE"}, {SIGALRM, "ALRM"}, {SIGTERM, "TERM"}, {SIGCHLD, "CHLD"},
    {SIGCONT, "CONT"}, {SIGSTOP, "STOP"}, {SIGTSTP, "TSTP"}, {SIGXCPU, "XCPU"},
};

/* Signal number from "15", "TERM" or "SIGTERM"; 0 if unknown. */
static int parse_signal(const char *s)
{
    long n;
    size_t i;

    if (parse_long(s, &n))
        return n >= 1 && n <= SIG_MAX ? (int)n : 0;
    if (strncmp(s, "SIG", 3) == 0)
        s += 3;
    for (i = 0; i < sizeof(signal_names) / sizeof(signal_names[0]); i++)
        if (strcmp(s, signal_names[i].name) == 0)
            return signal_names[i].num;
    return 0;
}

static int cmd_kill_self(char **argv)
{
    int sig = parse_signal(argv[0]);
    struct sigaction sa;
    sigset_t set;

    if (!sig)
        return fail_usage("unknown signal %s", argv[0]);
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = SIG_DFL;
    (void)sigaction(sig, &sa, NULL); /* fails harmlessly for KILL/STOP */
    sigemptyset(&set);
    sigaddset(&set, sig);
    (void)sigprocmask(SIG_UNBLOCK, &set, NULL);
    obj_begin();
    key("signal"); val_int(sig);
    obj_end();
    json_done();
    raise(sig);
    return 0; /* the default action ignores this signal (e.g. CHLD) */
}

static double monotonic_now(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int cmd_sleep(char **argv)
{
    double s;
    struct timespec req, rem;

    if (!parse_seconds(argv[0], &s))
        return fail_usage("bad duration %s", argv[0]);
    req.tv_sec = (time_t)s;
    req.tv_nsec = (long)((s - (double)req.tv_sec) * 1e9);
    while (nanosleep(&req, &rem) != 0 && errno == EINTR)
        req = rem;
    obj_begin();
    key("slept"); val_double(s);
    obj_end();
    json_done();
    return 0;
}

static int cmd_spin(char **argv)
{
    double s, start, cpu;
    volatile unsigned long counter = 0;
    struct timespec ts;

    if (!parse_seconds(argv[0], &s))
        return fail_usage("bad duration %s", argv[0]);
    start = monotonic_now();
    while (monotonic_now() - start < s)
        counter++;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    cpu = (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
    obj_begin();
    key("spun"); val_double(s);
    key("cpu_seconds"); val_double(cpu);
    obj_end();
    json_done();
    return 0;
}

/* ------------------------------------------------------------------------ */
/* alloc / fork                                                             */
/* ------------------------------------------------------------------------ */

/* Allocate `mb` MiB one MiB at a time, writing every page so it is resident. */
static int cmd_alloc(char **argv)
{
    const size_t chunk = 1024 * 1024;
    long mb, done, page = sysconf(_SC_PAGESIZE);
    size_t off;
    char *p;
    int err = 0;

    if (!parse_long(argv[0], &mb) || mb < 0)
        return fail_usage("bad size %s", argv[0]);
    if (page <= 0)
        page = 4096;
    for (done = 0; done < mb; done++) {
        p = malloc(chunk);
        if (!p) {
            err = errno ? errno : ENOMEM;
            break;
        }
        for (off = 0; off < chunk; off += (size_t)page)
            p[off] = (char)(off / (size_t)page + 1);
    }
    obj_begin();
    key("allocated_mb"); val_int(done);
    key("errno"); val_errno(err);
    obj_end();
    json_done();
    return 0;
}

/* Child of `fork N`: drop stdio so readers see EOF, then sleep. */
static void fork_child(void)
{
    int fd;

    for (fd = 0; fd < 3; fd++)
        close(fd);
    sleep(FORK_CHILD_SLEEP);
    _exit(0);
}

static int cmd_fork(char **argv)
{
    long n, forked = 0, i;
    pid_t pid;
    int err = 0;

    if (!parse_long(argv[0], &n) || n < 0)
        return fail_usage("bad count %s", argv[0]);
    fflush(stdout);
    for (i = 0; i < n; i++) {
        pid = fork();
        if (pid == 0)
            fork_child();
        if (pid < 0) {
            err = errno;
            break;
        }
        forked++;
    }
    obj_begin();
    key("forked"); val_int(forked);
    key("errno"); val_errno(err);
    obj_end();
    json_done();
    return 0;
}

/* ------------------------------------------------------------------------ */
/* signals                                                                  */
/* ------------------------------------------------------------------------ */

static void val_sigmask(const char *status, const char *name)
{
    size_t n;
    const char *v = status ? status_field(status, name, &n) : NULL;
    unsigned long long mask;
    int sig;

    if (!v) {
        val_null();
        return;
    }
    mask = strtoull(v, NULL, 16);
    arr_begin();
    for (sig = 1; sig <= SIG_MAX; sig++)
        if (mask & (1ULL << (sig - 1)))
            val_int(sig);
    arr_end();
}

static int cmd_signals(char **argv)
{
    char *status = slurp("/proc/self/status");

    (void)argv;
    obj_begin();
    key("ignored"); val_sigmask(status, "SigIgn");
    key("caught"); val_sigmask(status, "SigCgt");
    key("blocked"); val_sigmask(status, "SigBlk");
    obj_end();
    json_done();
    free(status);
    return 0;
}

/* udp-echo PORT: answer every datagram on 0.0.0.0:PORT with "echo: " + it and the
 * sender's address, forever (network tests: busybox has no UDP server). */
static int cmd_udp_echo(char **argv)
{
    int port = atoi(argv[0]);
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in addr = {0};
    char buf[2048], reply[2200];

    if (fd < 0 || port <= 0 || port > 65535)
        return fail_usage("udp-echo: bad port %s", argv[0]);
    addr.sin_family = AF_INET;
    addr.sin_port = htons((uint16_t)port);
    addr.sin_addr.s_addr = htonl(INADDR_ANY);
    if (bind(fd, (struct sockaddr *)&addr, sizeof(addr)) != 0) {
        perror("bind");
        return 1;
    }
    printf("listening\n");
    fflush(stdout);
    for (;;) {
        struct sockaddr_in from;
        socklen_t len = sizeof(from);
        ssize_t n = recvfrom(fd, buf, sizeof(buf) - 1, 0, (struct sockaddr *)&from, &len);
        char ip[INET_ADDRSTRLEN];
        int m;

        if (n < 0)
            continue;
        buf[n] = 0;
        inet_ntop(AF_INET, &from.sin_addr, ip, sizeof(ip));
        m = snprintf(reply, sizeof(reply), "echo from %s: %s", ip, buf);
        sendto(fd, reply, (size_t)m, 0, (struct sockaddr *)&from, len);
    }
}

/* ------------------------------------------------------------------------ */
/* main                                                                     */
/* ------------------------------------------------------------------------ */

static const struct {
    const char *name;
    int nargs;
    const char *usage;
    int (*fn)(char **argv);
} COMMANDS[] = {
    {"info", 0, "info", cmd_info},
    {"syscall", 1, "syscall NAME", cmd_syscall},
    {"write", 2, "write PATH TEXT", cmd_write},
    {"read", 1, "read PATH", cmd_read},
    {"exit", 1, "exit N", cmd_exit},
    {"kill-self", 1, "kill-self SIG", cmd_kill_self},
    {"sleep", 1, "sleep SECONDS", cmd_sleep},
    {"alloc", 1, "alloc MB", cmd_alloc},
    {"fork", 1, "fork N", cmd_fork},
    {"spin", 1, "spin SECONDS", cmd_spin},
    {"signals", 0, "signals", cmd_signals},
    {"udp-echo", 1, "udp-echo PORT", cmd_udp_echo},
};

int main(int argc, char **argv)
{
    size_t i;

    if (argc < 2)
        return fail_usage("usage: probe <command> [args]%s", "");
    for (i = 0; i < sizeof(COMMANDS) / sizeof(COMMANDS[0]); i++) {
        if (strcmp(argv[1], COMMANDS[i].name) != 0)
            continue;
        if (argc - 2 != COMMANDS[i].nargs)
            return fail_usage("usage: probe %s", COMMANDS[i].usage);
        return COMMANDS[i].fn(argv + 2);
    }
    return fail_usage("unknown command %s", argv[1]);
}
