/*
 * The container init's native stage: clone3 the init (CLONE_VM, as posix_spawn does)
 * and run, in the child, a plan of steps that Python compiled (runtime/nativeinit.py)
 * up to execve. No Python runs in the child: a forked interpreter pays copy-on-write
 * faults for every page it touches and the fork copies the page tables of its whole
 * heap, milliseconds per container that crun never pays.
 *
 * An init that keeps its ids (root, or root of a user namespace mapped to our own ids:
 * most containers) is cloned with CLONE_VM; one that becomes another user is cloned as
 * a fork, since a change of ids marks the memory it shares not dumpable, the caller's
 * too (see keep_ids_when_shared). An OOM kill of a shared init in setup would take the
 * caller with it (the kernel kills every process sharing the victim's memory); an
 * init's own setup allocates ~0.2 MiB in a fresh cgroup of at least 6 MiB.
 *
 * A shared child uses the caller's memory until it execs or exits, so it calls no libc
 * function that could take a lock or write errno (raw syscalls only), touches only its
 * own stack and its copy of the plan (both in a slot of its own), and starts with every
 * signal blocked and every handler reset (the caller's handlers would run in its
 * memory). The kernel clears the slot's tid word when the child execs or exits
 * (CLONE_CHILD_CLEARTID): then the slot can carry the next child.
 *
 * Plan: a sequence of steps, each a header {u32 op, u32 nstr, i64 a, b, c} and nstr
 * strings {u32 len (0xffffffff: NULL), bytes, NUL}. The first string of a step is the
 * text naming it in an error ("mount proc on "); steps on the resolved target append it.
 *
 * Failures reach the parent on the channel as one packet: "\0F", a kind byte (see
 * FAIL_*), the errno as i32, and that text; the child then exits 125 (setup), or 127/126
 * (exec: not found / other).
 *
 * x86_64 only (the raw syscalls and clone3 entry are assembly); elsewhere the Python init
 * runs.
 */
#define _GNU_SOURCE
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <sys/socket.h>
#include <net/if.h>
#include <linux/sched.h>
#include <linux/sockios.h>
#include <fcntl.h>
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/ioctl.h>
#include <termios.h>
#include <linux/tty.h>

#if !defined(__x86_64__)
#error "nativeinit.c: x86_64 only"
#endif

enum {
    OP_PDEATHSIG = 1,   /* prctl(PR_SET_PDEATHSIG, SIGKILL); exit if the supervisor is gone */
    OP_WRITE_FILE,      /* s1 path, s2 data */
    OP_STDIN_DEVNULL,
    OP_EXPECT,          /* s1: the packet to wait for on the channel */
    OP_SEND,            /* s1: the packet to send */
    OP_SETRESID,        /* a uid, b gid */
    OP_UNSHARE,         /* a flags */
    OP_MOUNT,           /* s1 source, s2 target ("" = resolved), s3 fstype, s4 data; a flags */
    OP_RESOLVE,         /* s1 root, s2 path: the resolved target (symlinks kept inside root) */
    OP_MOUNTPOINT,      /* s1 path ("" = resolved); a 1 dir, 0 empty file, 2 like s2 */
    OP_REMOUNT_BIND,    /* s1 target ("" = resolved); a flags (nosuid/nodev/noexec kept) */
    OP_SETATTR_RDONLY,  /* s1 target ("" = resolved): read-only, every submount too */
    OP_MKNOD,           /* s1 path; a mode, b dev */
    OP_SYMLINK,         /* s1 target, s2 link path */
    OP_SETHOSTNAME,     /* s1 name */
    OP_LOOPBACK_UP,
    OP_PIVOT,           /* s1 new root */
    OP_MASK,            /* s1 path: /dev/null over a file, an empty ro tmpfs over a dir */
    OP_READONLY,        /* s1 path: bind it over itself read-only (skipped when missing) */
    OP_SETSID,
    OP_TERMINAL,        /* s1: the PtyMaster packet sent with the master */
    OP_WORKDIR,         /* s1 path: made (parents too), entered */
    OP_RLIMIT,          /* a resource, b soft, c hard */
    OP_PRCTL,           /* a option, b arg2, c arg3 */
    OP_CAPBSET_DROP,    /* a mask of capabilities to drop from the bounding set */
    OP_SECCOMP,         /* s1 BPF program (struct sock_filter[]) */
    OP_SETGROUPS,       /* s1 gids (u32 each); a: in a user namespace (may be denied) */
    OP_CAPSET,          /* a effective, b permitted, c inheritable; ambient cleared */
    OP_AMBIENT_RAISE,   /* a capability */
    OP_CLOSE_FDS,       /* all but 0-2 and the channel */
    OP_UNBLOCK_SIGNALS,
    OP_EXEC,            /* s1 arg0; a candidates, b argv, c env strings follow */
    OP_CLOSE,           /* a fd */
    OP_USER,            /* s1 USER[:GROUP], s2 groups to add ("\n" between); a: HOME to set */
    OP_SET_USER,        /* the ids that OP_USER found; a: in a user namespace */
};

enum { FAIL_SETUP = 0, FAIL_EXEC = 1, FAIL_NOT_IN_PATH = 2, FAIL_NO_FILE = 3,
       FAIL_DENIED = 4 };

#define PATH_MAX_ 4096
#define STACK_SIZE (256 * 1024)
#define MAX_SLOTS 4096
#define MAX_STRINGS 4096
#define MAX_GROUPS 1024

/* --- raw syscalls (no errno, no libc locks) ------------------------------------------ */

static inline long sys6(long n, long a, long b, long c, long d, long e, long f)
{
    long ret;
    register long r10 __asm__("r10") = d;
    register long r8 __asm__("r8") = e;
    register long r9 __asm__("r9") = f;
    __asm__ volatile("syscall"
                     : "=a"(ret)
                     : "a"(n), "D"(a), "S"(b), "d"(c), "r"(r10), "r"(r8), "r"(r9)
                     : "rcx", "r11", "memory");
    return ret;
}
#define S0(n) sys6(n, 0, 0, 0, 0, 0, 0)
#define S1(n, a) sys6(n, (long)(a), 0, 0, 0, 0, 0)
#define S2(n, a, b) sys6(n, (long)(a), (long)(b), 0, 0, 0, 0)
#define S3(n, a, b, c) sys6(n, (long)(a), (long)(b), (long)(c), 0, 0, 0)
#define S4(n, a, b, c, d) sys6(n, (long)(a), (long)(b), (long)(c), (long)(d), 0, 0)
#define S5(n, a, b, c, d, e) sys6(n, (long)(a), (long)(b), (long)(c), (long)(d), (long)(e), 0)

#ifndef SYS_close_range
#define SYS_close_range 436
#endif
#ifndef SYS_mount_setattr
#define SYS_mount_setattr 442
#endif
#ifndef SYS_clone3
#define SYS_clone3 435
#endif

struct k_sigaction {
    void *handler;
    unsigned long flags;
    void *restorer;
    uint64_t mask;
};

struct mount_attr_ {
    uint64_t attr_set, attr_clr, propagation, userns_fd;
};

struct clone_args_ {
    uint64_t flags, pidfd, child_tid, parent_tid, exit_signal, stack, stack_size, tls,
        set_tid, set_tid_size, cgroup;
};

struct sock_filter_ { uint16_t code; uint8_t jt, jf; uint32_t k; };
struct sock_fprog_ { unsigned short len; struct sock_filter_ *filter; };

/* --- the child ----------------------------------------------------------------------- */

struct user {
    long uid, gid;
    int ngroups;
    int set_home; /* the environment has no HOME: HOME=home */
    uint32_t groups[MAX_GROUPS];
    char home[PATH_MAX_];
};

struct child {
    const unsigned char *pos, *end;
    int channel;
    int supervisor_pidfd;
    int shared; /* cloned with CLONE_VM: runs in the caller's memory until it execs */
    char resolved[PATH_MAX_];
    struct user user;
};

struct step {
    uint32_t op, nstr;
    int64_t a, b, c;
    const char *s[8];
    uint32_t len[8];
    const unsigned char *rest; /* strings beyond the eighth (exec's lists) */
};

static size_t slen(const char *s) { size_t n = 0; while (s[n]) n++; return n; }

static void append(char *buf, size_t *at, size_t cap, const char *s, size_t n)
{
    if (*at + n > cap) n = cap - *at;
    memcpy(buf + *at, s, n);
    *at += n;
}

__attribute__((noreturn)) static void die(int code)
{
    for (;;) S1(SYS_exit_group, code);
}

__attribute__((noreturn)) static void fail(struct child *ch, int kind, long err,
                                           const char *what, const char *more)
{
    char packet[PATH_MAX_ + 1024];
    size_t at = 0;
    int32_t e = (int32_t)err;
    packet[at++] = 0;
    packet[at++] = 'F';
    packet[at++] = (char)kind;
    append(packet, &at, sizeof packet, (const char *)&e, 4);
    if (what) append(packet, &at, sizeof packet, what, slen(what));
    if (more) append(packet, &at, sizeof packet, more, slen(more));
    S4(SYS_sendto, ch->channel, packet, at, MSG_NOSIGNAL);
    if (kind == FAIL_SETUP) die(125);
    die(err == ENOENT ? 127 : 126);
}

#define CHECK(ch, r, what, more) \
    do { long r_ = (r); if (r_ < 0 && r_ > -4096) fail(ch, FAIL_SETUP, -r_, what, more); } while (0)

static int read_step(struct child *ch, struct step *st)
{
    if (ch->pos == ch->end) return 0;
    if (ch->end - ch->pos < 32) return -1;
    memcpy(&st->op, ch->pos, 4);
    memcpy(&st->nstr, ch->pos + 4, 4);
    memcpy(&st->a, ch->pos + 8, 8);
    memcpy(&st->b, ch->pos + 16, 8);
    memcpy(&st->c, ch->pos + 24, 8);
    ch->pos += 32;
    st->rest = NULL;
    for (uint32_t i = 0; i < st->nstr; i++) {
        uint32_t n;
        if (ch->pos + 4 > ch->end) return -1;
        memcpy(&n, ch->pos, 4);
        ch->pos += 4;
        const char *s = NULL;
        if (n != 0xffffffffu) {
            if ((size_t)(ch->end - ch->pos) < (size_t)n + 1 || ch->pos[n] != 0) return -1;
            s = (const char *)ch->pos;
            ch->pos += n + 1;
        } else {
            n = 0;
        }
        if (i < 8) {
            st->s[i] = s;
            st->len[i] = n;
        }
        if (i == 7) st->rest = ch->pos;
    }
    for (uint32_t i = st->nstr; i < 8; i++) { st->s[i] = NULL; st->len[i] = 0; }
    return 1;
}

/* "" names the target that the last OP_RESOLVE found */
static const char *target_of(struct child *ch, const char *s)
{
    return (s == NULL || s[0] == 0) ? ch->resolved : s;
}

static long mkdirs(char *path)
{
    size_t n = slen(path);
    for (size_t i = 1; i <= n; i++) {
        if (path[i] == '/' || path[i] == 0) {
            char saved = path[i];
            path[i] = 0;
            long r = S2(SYS_mkdir, path, 0777);
            path[i] = saved;
            if (r < 0 && r != -EEXIST) return r;
        }
    }
    return 0;
}

static long make_mountpoint(const char *target, int is_dir)
{
    char path[PATH_MAX_];
    size_t n = slen(target);
    if (n >= sizeof path) return -ENAMETOOLONG;
    memcpy(path, target, n + 1);
    if (is_dir) return mkdirs(path);
    while (n > 0 && path[n] != '/') n--;
    if (n > 0) {
        path[n] = 0;
        long r = mkdirs(path);
        if (r < 0) return r;
    }
    struct stat st;
    if (S4(SYS_newfstatat, AT_FDCWD, target, &st, AT_SYMLINK_NOFOLLOW) == 0) return 0;
    long fd = S3(SYS_open, target, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) return fd;
    S1(SYS_close, fd);
    return 0;
}

/* The host path of `path` inside `root`, following symlinks as the container would see
 * them: an absolute link or ".." never leaves root (runtime.mounts.resolve_in_root). */
static long resolve_in_root(const char *root, const char *path, char *out)
{
    char rest[2 * PATH_MAX_], tmp[2 * PATH_MAX_], link[PATH_MAX_];
    size_t base = slen(root), outlen = base, n = slen(path);
    int links = 0;
    if (base >= PATH_MAX_ || n >= sizeof rest) return -ENAMETOOLONG;
    memcpy(out, root, base + 1);
    memcpy(rest, path, n + 1);
    char *p = rest;
    while (*p) {
        while (*p == '/') p++;
        if (!*p) break;
        char *q = p;
        while (*q && *q != '/') q++;
        size_t len = (size_t)(q - p);
        if (len == 1 && p[0] == '.') { p = q; continue; }
        if (len == 2 && p[0] == '.' && p[1] == '.') {
            while (outlen > base && out[outlen - 1] != '/') outlen--;
            if (outlen > base) outlen--;
            out[outlen] = 0;
            p = q;
            continue;
        }
        if (outlen + 1 + len >= PATH_MAX_) return -ENAMETOOLONG;
        size_t saved = outlen;
        out[outlen++] = '/';
        memcpy(out + outlen, p, len);
        outlen += len;
        out[outlen] = 0;
        long r = S3(SYS_readlink, out, link, sizeof link - 1);
        if (r < 0) { p = q; continue; }
        link[r] = 0;
        if (++links > 40) return -ELOOP;
        outlen = link[0] == '/' ? base : saved;
        out[outlen] = 0;
        size_t m = (size_t)r, k = slen(q);
        if (m + 1 + k >= sizeof tmp) return -ENAMETOOLONG;
        memcpy(tmp, link, m);
        tmp[m] = '/';
        memcpy(tmp + m + 1, q, k + 1);
        memcpy(rest, tmp, m + 1 + k + 1);
        p = rest;
    }
    return 0;
}

/* nosuid/nodev/noexec that a bind remount must carry over (the kernel locks them in a
 * user namespace); statfs's ST_* bits are MS_*'s */
static long kept_flags(const char *target)
{
    struct statfs sfs;
    if (S2(SYS_statfs, target, &sfs) < 0) return 0;
    return sfs.f_flags & (MS_NOSUID | MS_NODEV | MS_NOEXEC);
}

static void do_mount(struct child *ch, const struct step *st)
{
    const char *target = target_of(ch, st->s[2]);
    CHECK(ch, S5(SYS_mount, st->s[1], target, st->s[3], st->a, st->s[4]), st->s[0], target);
}

static void do_pivot(struct child *ch, const char *root)
{
    long old_root = S3(SYS_open, "/", O_DIRECTORY | O_RDONLY | O_CLOEXEC, 0);
    CHECK(ch, old_root, "open /", NULL);
    long new_root = S3(SYS_open, root, O_DIRECTORY | O_RDONLY | O_CLOEXEC, 0);
    CHECK(ch, new_root, "open ", root);
    CHECK(ch, S1(SYS_fchdir, new_root), "chdir ", root);
    CHECK(ch, S2(SYS_pivot_root, ".", "."), "pivot_root ", root);
    CHECK(ch, S1(SYS_fchdir, old_root), "chdir to the old root", NULL);
    CHECK(ch, S5(SYS_mount, NULL, ".", NULL, MS_SLAVE | MS_REC, NULL), "mount none on the old root", NULL);
    CHECK(ch, S2(SYS_umount2, ".", MNT_DETACH), "umount the old root", NULL);
    CHECK(ch, S1(SYS_chdir, "/"), "chdir /", NULL);
    S1(SYS_close, old_root);
    S1(SYS_close, new_root);
}

static void do_mask(struct child *ch, const char *path)
{
    struct stat st;
    long r = S2(SYS_stat, path, &st);
    if (r == -ENOENT) return;
    CHECK(ch, r, path, NULL);
    if (S_ISDIR(st.st_mode))
        CHECK(ch, S5(SYS_mount, "tmpfs", path, "tmpfs", MS_RDONLY, "size=0k"), "mount tmpfs on ", path);
    else
        CHECK(ch, S5(SYS_mount, "/dev/null", path, NULL, MS_BIND, NULL), "mount /dev/null on ", path);
}

static void do_readonly(struct child *ch, const char *path)
{
    long r = S5(SYS_mount, path, path, NULL, MS_BIND | MS_REC, NULL);
    if (r == -ENOENT) return;
    CHECK(ch, r, "mount ", path);
    CHECK(ch, S5(SYS_mount, NULL, path, NULL, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_REC | kept_flags(path), NULL),
          "mount none on ", path);
}

static void do_loopback_up(struct child *ch)
{
    struct ifreq ifr;
    long fd = S3(SYS_socket, AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    CHECK(ch, fd, "socket", NULL);
    memset(&ifr, 0, sizeof ifr);
    memcpy(ifr.ifr_name, "lo", 3);
    CHECK(ch, S3(SYS_ioctl, fd, SIOCGIFFLAGS, &ifr), "ioctl SIOCGIFFLAGS lo", NULL);
    ifr.ifr_flags |= IFF_UP;
    CHECK(ch, S3(SYS_ioctl, fd, SIOCSIFFLAGS, &ifr), "ioctl SIOCSIFFLAGS lo", NULL);
    S1(SYS_close, fd);
}

static void utoa(unsigned long v, char *out)
{
    char buf[24];
    int n = 0;
    do { buf[n++] = (char)('0' + v % 10); v /= 10; } while (v);
    while (n) *out++ = buf[--n];
    *out = 0;
}

static void do_terminal(struct child *ch, const struct step *st)
{
    long master = S3(SYS_open, "/dev/ptmx", O_RDWR | O_NOCTTY | O_CLOEXEC, 0);
    CHECK(ch, master, "/dev/ptmx", NULL);
    int unlock = 0;
    unsigned int number = 0;
    CHECK(ch, S3(SYS_ioctl, master, TIOCSPTLCK, &unlock), "ioctl TIOCSPTLCK", NULL);
    CHECK(ch, S3(SYS_ioctl, master, TIOCGPTN, &number), "ioctl TIOCGPTN", NULL);
    union { char buf[CMSG_SPACE(sizeof(int))]; struct cmsghdr align; } control;
    memset(&control, 0, sizeof control);
    struct iovec iov = { (void *)st->s[1], st->len[1] };
    struct msghdr msg = { 0 };
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.buf;
    msg.msg_controllen = sizeof control.buf;
    struct cmsghdr *cmsg = CMSG_FIRSTHDR(&msg);
    cmsg->cmsg_level = SOL_SOCKET;
    cmsg->cmsg_type = SCM_RIGHTS;
    cmsg->cmsg_len = CMSG_LEN(sizeof(int));
    int fd = (int)master;
    memcpy(CMSG_DATA(cmsg), &fd, sizeof fd);
    CHECK(ch, S3(SYS_sendmsg, ch->channel, &msg, MSG_NOSIGNAL), "send the pty master", NULL);
    CHECK(ch, S0(SYS_setsid), "setsid", NULL);
    char path[32] = "/dev/pts/";
    utoa(number, path + 9);
    long slave = S3(SYS_open, path, O_RDWR, 0);
    CHECK(ch, slave, path, NULL);
    CHECK(ch, S3(SYS_ioctl, slave, TIOCSCTTY, 0), "ioctl TIOCSCTTY", NULL);
    for (int i = 0; i < 3; i++) CHECK(ch, S2(SYS_dup2, slave, i), "dup2 the terminal", NULL);
    if (slave > 2) S1(SYS_close, slave);
    S1(SYS_close, master);
}

static void do_expect(struct child *ch, const struct step *st)
{
    char buf[512];
    long n = S4(SYS_recvfrom, ch->channel, buf, sizeof buf, 0);
    if (n <= 0) die(125); /* the parent is gone: nobody is left to tell */
    if ((size_t)n != st->len[1] || memcmp(buf, st->s[1], (size_t)n) != 0)
        fail(ch, FAIL_SETUP, 0, "unexpected message from the parent, expected ", st->s[1]);
}

static void do_setgroups(struct child *ch, const struct step *st)
{
    size_t count = st->len[1] / 4;
    if (st->a) { /* in a user namespace: a single-id map denies setgroups */
        char buf[16];
        long fd = S3(SYS_open, "/proc/self/setgroups", O_RDONLY | O_CLOEXEC, 0);
        if (fd >= 0) {
            long n = S3(SYS_read, fd, buf, sizeof buf);
            S1(SYS_close, fd);
            if (n >= 4 && memcmp(buf, "deny", 4) == 0) {
                if (count) fail(ch, FAIL_SETUP, EPERM, st->s[0],
                                " (setgroups: denied in this user namespace, single-id map)");
                return;
            }
        }
    }
    CHECK(ch, S2(SYS_setgroups, count, st->s[1]), st->s[0], NULL);
}

static void do_exec(struct child *ch, const struct step *st)
{
    size_t ncand = (size_t)st->a, nargv = (size_t)st->b, nenv = (size_t)st->c;
    const char *strings[MAX_STRINGS + 2];
    size_t total = ncand + nargv + nenv;
    if (total > MAX_STRINGS) fail(ch, FAIL_SETUP, E2BIG, "too many arguments and variables", NULL);
    /* the strings after arg0 */
    size_t got = 0;
    for (uint32_t i = 1; i < 8 && got < total; i++) strings[got++] = st->s[i];
    const unsigned char *p = st->rest;
    while (got < total) {
        uint32_t n;
        memcpy(&n, p, 4);
        strings[got++] = (const char *)(p + 4);
        p += 4 + n + 1;
    }
    const char **cand = strings, **argv = strings + ncand, **envp = strings + ncand + nargv;
    /* argv and envp must end in NULL: move env down by one to make room */
    const char *args[nargv + 1], *env[nenv + 2];
    char home[PATH_MAX_ + 8];
    for (size_t i = 0; i < nargv; i++) args[i] = argv[i];
    args[nargv] = NULL;
    for (size_t i = 0; i < nenv; i++) env[i] = envp[i];
    if (ch->user.set_home) {
        size_t n = slen(ch->user.home);
        memcpy(home, "HOME=", 5);
        memcpy(home + 5, ch->user.home, n + 1);
        env[nenv++] = home;
    }
    env[nenv] = NULL;
    int denied = 0;
    int has_slash = 0;
    for (const char *c = st->s[0]; *c; c++) has_slash |= *c == '/';
    for (size_t i = 0; i < ncand; i++) {
        long r = S3(SYS_execve, cand[i], args, env);
        if (r == -ENOENT || r == -ENOTDIR) continue;
        if (r == -EACCES && !has_slash) { denied = 1; continue; }
        fail(ch, FAIL_EXEC, -r, st->s[0], NULL);
    }
    if (denied) fail(ch, FAIL_DENIED, EACCES, st->s[0], NULL);
    fail(ch, has_slash ? FAIL_NO_FILE : FAIL_NOT_IN_PATH, ENOENT, st->s[0], NULL);
}


/* --- -u USER[:GROUP] against the container's /etc/passwd and /etc/group (as
 * runtime/users.py, docker's rules) ---------------------------------------------------- */

struct lines {
    long fd;
    size_t len, pos;
    int eof, skipping;
    char buf[16384];
};

static void lines_open(struct lines *l, const char *path)
{
    l->fd = S3(SYS_open, path, O_RDONLY | O_CLOEXEC, 0);
    l->len = l->pos = 0;
    l->eof = l->fd < 0;
    l->skipping = 0;
}

/* the next line (NUL-terminated, in the buffer), or NULL at the end; a line longer than
 * the buffer is skipped */
static char *next_line(struct lines *l)
{
    for (;;) {
        char *start = l->buf + l->pos;
        size_t avail = l->len - l->pos;
        char *nl = memchr(start, '\n', avail);
        if (nl != NULL) {
            *nl = 0;
            if (nl > start && nl[-1] == '\r') nl[-1] = 0; /* CRLF, as str.splitlines */
            l->pos += (size_t)(nl - start) + 1;
            if (l->skipping) { l->skipping = 0; continue; }
            return start;
        }
        if (l->eof) {
            l->pos = l->len;
            if (avail == 0 || l->skipping) return NULL;
            start[avail] = 0;
            return start;
        }
        memmove(l->buf, start, avail);
        l->len = avail;
        l->pos = 0;
        if (l->len == sizeof l->buf - 1) { l->len = 0; l->skipping = 1; }
        long n = S3(SYS_read, l->fd, l->buf + l->len, sizeof l->buf - 1 - l->len);
        if (n <= 0) l->eof = 1; else l->len += (size_t)n;
    }
}

static void lines_close(struct lines *l)
{
    if (l->fd >= 0) S1(SYS_close, l->fd);
}

/* split `line` at ':' into at most `max` fields; the number of fields there are */
static int split(char *line, char **fields, int max)
{
    int n = 0;
    char *p = line;
    for (;;) {
        if (n < max) fields[n] = p;
        n++;
        while (*p && *p != ':') p++;
        if (!*p) break;
        *p++ = 0;
    }
    return n;
}

static int all_digits(const char *s)
{
    if (!*s) return 0;
    for (; *s; s++) if (*s < '0' || *s > '9') return 0;
    return 1;
}

/* a decimal number as Python's int() reads one (spaces around, a sign); 0 if not one */
static int number(const char *s, long *out)
{
    while (*s == ' ' || *s == '\t') s++;
    int negative = *s == '-';
    if (*s == '-' || *s == '+') s++;
    if (*s < '0' || *s > '9') return 0;
    long v = 0;
    for (; *s >= '0' && *s <= '9'; s++) {
        if (v > 0x7fffffffffffL / 10) return 0;
        v = v * 10 + (*s - '0');
    }
    while (*s == ' ' || *s == '\t') s++;
    if (*s) return 0;
    *out = negative ? -v : v;
    return 1;
}

static int streq(const char *a, const char *b) { return slen(a) == slen(b) && memcmp(a, b, slen(a)) == 0; }

__attribute__((noreturn)) static void not_found(struct child *ch, const char *what, const char *name,
                                                const char *file)
{
    char msg[PATH_MAX_];
    size_t at = 0;
    append(msg, &at, sizeof msg - 1, "unable to find ", 15);
    append(msg, &at, sizeof msg - 1, what, slen(what));
    append(msg, &at, sizeof msg - 1, " ", 1);
    append(msg, &at, sizeof msg - 1, name, slen(name));
    append(msg, &at, sizeof msg - 1, ": no matching entries in ", 25);
    append(msg, &at, sizeof msg - 1, file, slen(file));
    append(msg, &at, sizeof msg - 1, " file", 5);
    msg[at] = 0;
    fail(ch, FAIL_SETUP, 0, msg, NULL);
}

static long find_group(struct child *ch, struct lines *l, const char *group)
{
    long gid;
    if (all_digits(group) && number(group, &gid)) return gid;
    lines_open(l, "/etc/group");
    char *line, *f[4];
    while ((line = next_line(l)) != NULL) {
        if (line[0] == '#' || split(line, f, 4) < 4 || !number(f[2], &gid)) continue;
        if (streq(f[0], group)) { lines_close(l); return gid; }
    }
    lines_close(l);
    not_found(ch, "group", group, "group");
}

static void add_group(struct user *u, long gid)
{
    for (int i = 0; i < u->ngroups; i++) if (u->groups[i] == (uint32_t)gid) return;
    if (u->ngroups < MAX_GROUPS) u->groups[u->ngroups++] = (uint32_t)gid;
}

static void do_user(struct child *ch, const struct step *st)
{
    struct user *u = &ch->user;
    struct lines l;
    char spec[512], name[512];
    if (st->len[1] >= sizeof spec) fail(ch, FAIL_SETUP, 0, "user name too long", NULL);
    memcpy(spec, st->s[1], st->len[1] + 1);
    char *group = spec;
    while (*group && *group != ':') group++;
    int has_group = *group == ':';
    if (has_group) *group++ = 0;
    int numeric = all_digits(spec);
    long wanted = 0, uid, gid;
    if (!spec[0] || (numeric && !number(spec, &wanted))) {
        char msg[600];
        size_t at = 0;
        append(msg, &at, sizeof msg - 2, "invalid user '", 14);
        append(msg, &at, sizeof msg - 2, st->s[1], st->len[1]);
        msg[at++] = '\'';
        msg[at] = 0;
        fail(ch, FAIL_SETUP, 0, msg, NULL);
    }
    int found = 0;
    name[0] = 0;
    lines_open(&l, "/etc/passwd");
    char *line, *f[7];
    while ((line = next_line(&l)) != NULL) {
        if (line[0] == '#' || split(line, f, 7) < 7) continue;
        if (!number(f[2], &uid) || !number(f[3], &gid)) continue;
        if (streq(f[0], spec) || (numeric && uid == wanted)) {
            size_t n = slen(f[0]), h = slen(f[5]);
            if (n >= sizeof name || h >= sizeof u->home) continue;
            memcpy(name, f[0], n + 1);
            memcpy(u->home, f[5], h + 1);
            u->uid = uid;
            u->gid = gid;
            found = 1;
            break;
        }
    }
    lines_close(&l);
    if (!found) {
        if (!numeric) not_found(ch, "user", spec, "passwd");
        if (wanted > 0xfffffffeL) fail(ch, FAIL_SETUP, 0, "invalid user ", st->s[1]);
        u->uid = wanted;
        u->gid = 0;
        u->home[0] = '/';
        u->home[1] = 0;
    }
    if (has_group && *group) u->gid = find_group(ch, &l, group);
    u->ngroups = 0;
    add_group(u, u->gid);
    if (found) { /* the groups that list the user */
        lines_open(&l, "/etc/group");
        while ((line = next_line(&l)) != NULL) {
            if (line[0] == '#' || split(line, f, 4) < 4 || !number(f[2], &gid)) continue;
            for (char *m = f[3]; *m;) {
                char *end = m;
                while (*end && *end != ',') end++;
                char saved = *end;
                *end = 0;
                if (*m && streq(m, name)) add_group(u, gid);
                *end = saved;
                m = *end ? end + 1 : end;
            }
        }
        lines_close(&l);
    }
    if (st->len[2]) { /* --group-add and the spec's gids, one per line */
        char extra[PATH_MAX_];
        if (st->len[2] >= sizeof extra) fail(ch, FAIL_SETUP, 0, "too many groups to add", NULL);
        memcpy(extra, st->s[2], st->len[2] + 1);
        for (char *g = extra; *g;) {
            char *end = g;
            while (*end && *end != '\n') end++;
            char saved = *end;
            *end = 0;
            add_group(u, find_group(ch, &l, g));
            g = saved ? end + 1 : end;
        }
    }
    u->set_home = (int)st->a;
}

/* A change of the effective ids makes the kernel mark the process's memory not
 * dumpable, and with it every process that shares that memory: the caller's, for good,
 * so that a later init's /proc/PID/ns could no longer be opened by the (rootless) user
 * (slirp4netns does). An init cloned with CLONE_VM may only keep its ids: the plan says
 * so ahead (runtime/nativeinit.py clones a private init for other users), and this is
 * the check for what the plan could not know (the ids of a user named in passwd). */
static void keep_ids_when_shared(struct child *ch, long uid, long gid)
{
    if (!ch->shared) return;
    unsigned int r, e, sv, gr, ge, gs;
    S3(SYS_getresuid, &r, &e, &sv);
    S3(SYS_getresgid, &gr, &ge, &gs);
    if ((unsigned int)uid == e && (unsigned int)gid == ge) return;
    char msg[160] = "the native init cannot become ";
    size_t at = slen(msg);
    utoa((unsigned long)uid, msg + at);
    at = slen(msg);
    msg[at++] = ':';
    utoa((unsigned long)gid, msg + at);
    at = slen(msg);
    const char *tail = " in the zygote's address space (root's passwd entry has other ids?); "
                       "MYCTR_INIT=python runs this container";
    append(msg, &at, sizeof msg - 1, tail, slen(tail));
    msg[at] = 0;
    fail(ch, FAIL_SETUP, 0, msg, NULL);
}

static void do_set_user(struct child *ch, const struct step *st)
{
    struct user *u = &ch->user;
    char who[64] = "set user ";
    utoa((unsigned long)u->uid, who + 9);
    size_t at = slen(who);
    who[at++] = ':';
    utoa((unsigned long)u->gid, who + at);
    struct step groups = *st;
    groups.s[0] = who;
    groups.s[1] = (const char *)u->groups;
    groups.len[1] = (uint32_t)u->ngroups * 4;
    keep_ids_when_shared(ch, u->uid, u->gid);
    do_setgroups(ch, &groups);
    CHECK(ch, S3(SYS_setresgid, u->gid, u->gid, u->gid), who, NULL);
    CHECK(ch, S3(SYS_setresuid, u->uid, u->uid, u->uid), who, NULL);
}

static void arm_parent_death(struct child *ch)
{
    CHECK(ch, S2(SYS_prctl, 1 /* PR_SET_PDEATHSIG */, 9), "prctl PR_SET_PDEATHSIG", NULL);
    if (ch->supervisor_pidfd >= 0) {
        struct pollfd pfd = { ch->supervisor_pidfd, POLLIN, 0 };
        if (S3(SYS_poll, &pfd, 1, 0) > 0) die(125);
    }
}

static int child_main(void *arg)
{
    struct child *ch = arg;
    /* The caller's handlers live in its memory, which we share: none may run here. */
    struct k_sigaction dfl = { 0 };
    for (int sig = 1; sig <= 64; sig++)
        if (sig != 9 && sig != 19) S4(SYS_rt_sigaction, sig, &dfl, NULL, 8);
    struct step st;
    int more;
    while ((more = read_step(ch, &st)) > 0) {
        switch (st.op) {
        case OP_PDEATHSIG: arm_parent_death(ch); break;
        case OP_WRITE_FILE: {
            long fd = S3(SYS_open, st.s[1], O_WRONLY | O_CLOEXEC, 0);
            CHECK(ch, fd, st.s[0], NULL);
            CHECK(ch, S3(SYS_write, fd, st.s[2], st.len[2]), st.s[0], NULL);
            S1(SYS_close, fd);
            break;
        }
        case OP_STDIN_DEVNULL: {
            long fd = S3(SYS_open, "/dev/null", O_RDONLY, 0);
            CHECK(ch, fd, "/dev/null", NULL);
            CHECK(ch, S2(SYS_dup2, fd, 0), "dup2 /dev/null", NULL);
            S1(SYS_close, fd);
            break;
        }
        case OP_EXPECT: do_expect(ch, &st); break;
        case OP_SEND:
            CHECK(ch, S4(SYS_sendto, ch->channel, st.s[1], st.len[1], MSG_NOSIGNAL), "send to the parent", NULL);
            break;
        case OP_SETRESID:
            keep_ids_when_shared(ch, st.a, st.b);
            CHECK(ch, S3(SYS_setresgid, st.b, st.b, st.b), st.s[0], NULL);
            CHECK(ch, S3(SYS_setresuid, st.a, st.a, st.a), st.s[0], NULL);
            break;
        case OP_UNSHARE: CHECK(ch, S1(SYS_unshare, st.a), st.s[0], NULL); break;
        case OP_MOUNT: do_mount(ch, &st); break;
        case OP_RESOLVE:
            CHECK(ch, resolve_in_root(st.s[1], st.s[2], ch->resolved), st.s[0], st.s[2]);
            break;
        case OP_MOUNTPOINT: {
            const char *target = target_of(ch, st.s[1]);
            int is_dir = (int)st.a;
            if (st.a == 2) { /* a directory for a directory, else a file */
                struct stat source;
                CHECK(ch, S2(SYS_stat, st.s[2], &source), st.s[2], NULL);
                is_dir = S_ISDIR(source.st_mode);
            }
            CHECK(ch, make_mountpoint(target, is_dir), target, NULL);
            break;
        }
        case OP_REMOUNT_BIND: {
            const char *target = target_of(ch, st.s[1]);
            CHECK(ch, S5(SYS_mount, NULL, target, NULL,
                         MS_BIND | MS_REMOUNT | st.a | kept_flags(target), NULL),
                  "mount none on ", target);
            break;
        }
        case OP_SETATTR_RDONLY: {
            const char *target = target_of(ch, st.s[1]);
            struct mount_attr_ attr = { 0x1 /* MOUNT_ATTR_RDONLY */, 0, 0, 0 };
            CHECK(ch, S5(SYS_mount_setattr, AT_FDCWD, target, 0x8000 /* AT_RECURSIVE */,
                         &attr, sizeof attr), "mount_setattr ", target);
            break;
        }
        case OP_MKNOD:
            CHECK(ch, S3(SYS_mknod, st.s[1], st.a, st.b), st.s[1], NULL);
            CHECK(ch, S2(SYS_chmod, st.s[1], st.a & 07777), st.s[1], NULL);
            break;
        case OP_SYMLINK: CHECK(ch, S2(SYS_symlink, st.s[1], st.s[2]), st.s[2], NULL); break;
        case OP_SETHOSTNAME: CHECK(ch, S2(SYS_sethostname, st.s[1], st.len[1]), "sethostname", NULL); break;
        case OP_LOOPBACK_UP: do_loopback_up(ch); break;
        case OP_PIVOT: do_pivot(ch, st.s[1]); break;
        case OP_MASK: do_mask(ch, st.s[1]); break;
        case OP_READONLY: do_readonly(ch, st.s[1]); break;
        case OP_SETSID: CHECK(ch, S0(SYS_setsid), "setsid", NULL); break;
        case OP_TERMINAL: do_terminal(ch, &st); break;
        case OP_WORKDIR: {
            char path[PATH_MAX_];
            size_t n = st.len[1];
            if (n >= sizeof path) fail(ch, FAIL_SETUP, ENAMETOOLONG, st.s[1], NULL);
            memcpy(path, st.s[1], n + 1);
            CHECK(ch, mkdirs(path), st.s[1], NULL);
            CHECK(ch, S1(SYS_chdir, st.s[1]), st.s[1], NULL);
            break;
        }
        case OP_RLIMIT: {
            uint64_t limit[2] = { (uint64_t)st.b, (uint64_t)st.c };
            CHECK(ch, S4(SYS_prlimit64, 0, st.a, limit, NULL), st.s[0], NULL);
            break;
        }
        case OP_PRCTL: CHECK(ch, S5(SYS_prctl, st.a, st.b, st.c, 0, 0), st.s[0], NULL); break;
        case OP_CAPBSET_DROP:
            for (int bit = 0; bit < 64; bit++)
                if ((uint64_t)st.a >> bit & 1)
                    CHECK(ch, S2(SYS_prctl, 24 /* PR_CAPBSET_DROP */, bit), "prctl PR_CAPBSET_DROP", NULL);
            break;
        case OP_SECCOMP: {
            struct sock_fprog_ prog = { (unsigned short)(st.len[1] / 8), (struct sock_filter_ *)st.s[1] };
            CHECK(ch, S3(SYS_seccomp, 1 /* SECCOMP_SET_MODE_FILTER */, 0, &prog), "seccomp", NULL);
            break;
        }
        case OP_SETGROUPS: do_setgroups(ch, &st); break;
        case OP_CAPSET: {
            struct { uint32_t version; int pid; } header = { 0x20080522, 0 };
            struct { uint32_t effective, permitted, inheritable; } data[2] = {
                { (uint32_t)st.a, (uint32_t)st.b, (uint32_t)st.c },
                { (uint32_t)((uint64_t)st.a >> 32), (uint32_t)((uint64_t)st.b >> 32),
                  (uint32_t)((uint64_t)st.c >> 32) },
            };
            CHECK(ch, S2(SYS_capset, &header, data), "capset", NULL);
            CHECK(ch, S5(SYS_prctl, 47, 4, 0, 0, 0), "prctl PR_CAP_AMBIENT_CLEAR_ALL", NULL);
            break;
        }
        case OP_AMBIENT_RAISE:
            CHECK(ch, S5(SYS_prctl, 47, 2, st.a, 0, 0), "prctl PR_CAP_AMBIENT_RAISE", NULL);
            break;
        case OP_CLOSE_FDS:
            if (ch->channel > 3) S3(SYS_close_range, 3, ch->channel - 1, 0);
            S3(SYS_close_range, ch->channel + 1, ~0U, 0);
            break;
        case OP_UNBLOCK_SIGNALS: {
            uint64_t none = 0;
            S4(SYS_rt_sigprocmask, SIG_SETMASK, &none, NULL, 8);
            break;
        }
        case OP_EXEC: do_exec(ch, &st); break;
        case OP_CLOSE: S1(SYS_close, st.a); break;
        case OP_USER: do_user(ch, &st); break;
        case OP_SET_USER:
            do_set_user(ch, &st);
            if (ch->user.uid || ch->user.gid) arm_parent_death(ch); /* disarmed by the change */
            break;
        default: fail(ch, FAIL_SETUP, EINVAL, "unknown step in the init's plan", NULL);
        }
    }
    fail(ch, FAIL_SETUP, EINVAL, more < 0 ? "the init's plan is malformed"
                                          : "the init's plan ends before its exec", NULL);
}

/* --- the caller's side --------------------------------------------------------------- */

struct slot {
    unsigned char *base;
    size_t size;
    volatile int32_t tid; /* nonzero while a child runs on this slot */
};

static struct slot slots[MAX_SLOTS];

/* clone3 whose child runs fn(arg) on the new stack and exits with its result */
__attribute__((naked, noinline)) static long clone3_run(
    __attribute__((unused)) struct clone_args_ *args, __attribute__((unused)) size_t size,
    __attribute__((unused)) int (*fn)(void *), __attribute__((unused)) void *arg)
{
    __asm__ volatile(
        "mov %rdx, %r8\n\t"
        "mov %rcx, %r9\n\t"
        "mov $435, %eax\n\t"
        "syscall\n\t"
        "test %rax, %rax\n\t"
        "jz 1f\n\t"
        "ret\n"
        "1:\n\t"
        "xor %ebp, %ebp\n\t"
        "and $-16, %rsp\n\t"
        "mov %r9, %rdi\n\t"
        "call *%r8\n\t"
        "mov %eax, %edi\n\t"
        "mov $231, %eax\n\t"
        "syscall\n\t"
        "hlt\n");
}

static struct slot *free_slot(size_t need)
{
    struct slot *empty = NULL;
    for (int i = 0; i < MAX_SLOTS; i++) {
        struct slot *s = &slots[i];
        if (s->base == NULL) {
            if (empty == NULL) empty = s;
            continue;
        }
        if (__atomic_load_n(&s->tid, __ATOMIC_ACQUIRE) != 0) continue;
        if (s->size >= need) return s;
        munmap(s->base, s->size);
        s->base = NULL;
        if (empty == NULL) empty = s;
    }
    if (empty == NULL) return NULL;
    size_t size = (need + 0xffff) & ~(size_t)0xffff;
    void *base = mmap(NULL, size, PROT_READ | PROT_WRITE,
                      MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_STACK, -1, 0);
    if (base == MAP_FAILED) return NULL;
    empty->base = base;
    empty->size = size;
    empty->tid = 0;
    return empty;
}

/*
 * Clone an init with `flags` (namespaces, CLONE_PARENT) into the cgroup of `cgroup_fd`
 * (-1: none) that runs `plan` and talks on `channel`: `shared`, with CLONE_VM (an init
 * that keeps its ids, see keep_ids_when_shared), else as a fork (its own copy of the
 * caller's memory: page tables copied, copy-on-write faults). Returns its pid (its
 * pidfd in *pidfd), or -errno. Single-threaded callers only (the slots are not locked).
 * Layout of a slot: [struct child | plan copy | ... stack ... top].
 */
long myctr_spawn(const void *plan, size_t plan_len, uint64_t flags, int cgroup_fd,
                 int channel, int supervisor_pidfd, int shared, int *pidfd)
{
    size_t head = (sizeof(struct child) + plan_len + 15) & ~(size_t)15;
    struct slot *s = free_slot(head + STACK_SIZE);
    if (s == NULL) return -ENOMEM;
    struct child *ch = (struct child *)s->base;
    unsigned char *copy = s->base + sizeof(struct child);
    memset(ch, 0, sizeof *ch); /* nothing of the slot's last child */
    memcpy(copy, plan, plan_len);
    ch->pos = copy;
    ch->end = copy + plan_len;
    ch->channel = channel;
    ch->supervisor_pidfd = supervisor_pidfd;
    ch->shared = shared;

    struct clone_args_ args = { 0 };
    args.flags = flags | CLONE_PIDFD;
    if (shared) { /* the kernel clears tid when the child execs or exits */
        args.flags |= CLONE_VM | CLONE_CHILD_CLEARTID;
        args.child_tid = (uint64_t)(uintptr_t)&s->tid;
    }
    args.pidfd = (uint64_t)(uintptr_t)pidfd;
    args.exit_signal = (flags & CLONE_PARENT) ? 0 : 17 /* SIGCHLD */;
    args.stack = (uint64_t)(uintptr_t)(s->base + head);
    args.stack_size = s->size - head;
    if (cgroup_fd >= 0) {
        args.flags |= 0x200000000ULL; /* CLONE_INTO_CGROUP */
        args.cgroup = (uint64_t)cgroup_fd;
    }
    uint64_t all = ~0ULL, saved;
    s->tid = -1;
    S4(SYS_rt_sigprocmask, SIG_SETMASK, &all, &saved, 8);
    long pid = clone3_run(&args, sizeof args, child_main, ch);
    S4(SYS_rt_sigprocmask, SIG_SETMASK, &saved, NULL, 8);
    if (pid < 0 || !shared) s->tid = 0; /* (a private child has its own copy) */
    return pid;
}
