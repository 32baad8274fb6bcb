"""The container's init between clone and exec: everything runs here, in the new
namespaces, and always ends in ``execve`` or ``os._exit`` — never returns.

Order (user namespace first, as youki and runc do): wait for the id maps, become root
in the namespace, make mounts private, overlay, mounts, /dev, hostname, loopback,
pivot_root, masked and read-only paths, the user, the terminal; report Ready, wait
for Start; rlimits, no_new_privs, bounding set, seccomp, ids, capabilities, execve.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import resource
import select
import signal
import socket
import struct
import termios
from collections.abc import Callable
from typing import NamedTuple

from . import capabilities, libc, rootfs
from .channel import Channel, ExecFailed, Placed, PtyMaster, Ready, SetupFailed, Start
from .containerdir import read_file, status_mask
from .errors import SpecError, os_error_message
from .seccomp import install_bpf
from .spec import ContainerSpec
from .users import ResolvedUser, parse_group, parse_passwd, resolve_user

_SIOCGIFFLAGS = 0x8913
_SIOCSIFFLAGS = 0x8914
_IFF_UP = 0x1
_TIOCGPTN = 0x80045430
_TIOCSPTLCK = 0x40045431


class InitConfig(NamedTuple):
    """What the init needs besides the spec: the overlay's host dirs, and whether its
    stdin is /dev/null (``run`` without ``-i``) instead of the caller's."""

    lower: tuple[str, ...]
    upper: str
    work: str
    merged: str
    stdin_devnull: bool = False
    seccomp_bpf: bytes | None = None
    # The overlay skips syncing its upper dir (on umount too): for containers whose
    # upper dir does not outlive them (--rm, build steps), as podman does.
    volatile: bool = False
    # Set by create(): the cgroup namespace is unshared once the parent has moved the
    # init into the container's cgroup, so that cgroup becomes the namespace's root.
    unshare_cgroupns: bool = False
    # Exec once Ready is sent, without waiting for Start: the caller has nothing to do
    # in between (no network to plug), and a start is one round trip shorter.
    go_ahead: bool = False


def run_init(spec: ContainerSpec, paths: InitConfig, channel: Channel) -> None:
    """The child's whole life. Never returns."""
    run_guarded(channel, lambda: _init(spec, paths, channel))


def run_guarded(channel: Channel, body: Callable[[], None]) -> None:
    """Run a forked child's ``body``; report any failure on ``channel``; never return."""
    code = 125
    try:
        body()
    except ExecError as exc:
        channel.send(ExecFailed(exc.errno, exc.message))
        code = 127 if exc.errno == 2 else 126
    except SpecError as exc:
        _report(channel, 0, str(exc))
    except OSError as exc:
        _report(channel, exc.errno or 0, os_error_message(exc))
    except BaseException as exc:
        _report(channel, 0, f"{type(exc).__name__}: {exc}")
    finally:
        os._exit(code)


class ExecError(Exception):
    def __init__(self, err: int, message: str) -> None:
        super().__init__(message)
        self.errno = err
        self.message = message


def _report(channel: Channel, err: int, message: str) -> None:
    with contextlib.suppress(OSError):  # the parent is gone; nobody is left to tell
        channel.send(SetupFailed(err, message))


_supervisor_pidfd: int | None = None


def remember_supervisor(pidfd: int) -> None:
    """For a process that forks inits (the zygote): the supervisor's pidfd, which each
    init checks once its parent-death signal is armed."""
    global _supervisor_pidfd
    _supervisor_pidfd = pidfd


def supervisor_pidfd() -> int | None:
    """The pidfd that :func:`remember_supervisor` noted (the native init checks it too)."""
    return _supervisor_pidfd


def forget_supervisor() -> None:
    """Close the supervisor's pidfd in a child that does not exec soon (the joiner of
    an exec, which waits for Start and dies with the supervisor)."""
    global _supervisor_pidfd
    if _supervisor_pidfd is not None:
        os.close(_supervisor_pidfd)
        _supervisor_pidfd = None


def process_exited(pidfd: int | None) -> bool:
    """Whether the process of ``pidfd`` has exited (a pidfd polls readable then)."""
    if pidfd is None:
        return False
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    return bool(poller.poll(0))


def arm_parent_death() -> None:
    """Be killed when the supervisor dies, from now on; exit now if it died already
    (seen on its pidfd: an init whose parent is gone never runs its command, and with
    go_ahead it waits for no Start that would tell it). The kernel disarms the signal
    at every change of credentials: called again after each."""
    libc.prctl(libc.PR_SET_PDEATHSIG, signal.SIGKILL)
    if process_exited(_supervisor_pidfd):
        os._exit(125)


def _init(spec: ContainerSpec, paths: InitConfig, channel: Channel) -> None:
    arm_parent_death()
    if paths.stdin_devnull:
        null = os.open("/dev/null", os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
    channel.expect(Placed)
    if spec.uses_user_namespace:
        os.setresgid(0, 0, 0)
        os.setresuid(0, 0, 0)
        arm_parent_death()  # (a mapped root is another host uid: disarmed)
    if paths.unshare_cgroupns:  # now that the parent moved us into our cgroup
        libc.unshare(libc.CLONE_NEWCGROUP)
    _build_root(spec, paths)
    become_process(spec, paths, channel)


def become_process(spec: ContainerSpec, config: InitConfig, channel: Channel) -> None:
    """In the container's root: the user, the terminal, Ready/Start, then the
    process's own settings and privileges, and exec (shared by init and exec)."""
    user = _resolve_user(spec)
    if spec.process.terminal:
        _attach_terminal(channel)
    else:
        os.setsid()
    channel.send(Ready())
    if not config.go_ahead:
        channel.expect(Start)
    _enter_workdir(spec.process.cwd)
    _set_rlimits(spec)
    _drop_privileges(spec, config, user)
    _close_inherited_fds(keep=channel.fileno())
    _exec(spec, user)


def _build_root(spec: ContainerSpec, paths: InitConfig) -> None:
    userns = spec.uses_user_namespace
    rootfs.make_private()
    rootfs.mount_overlay(list(paths.lower), paths.upper, paths.work, paths.merged, userns,
                         paths.volatile)
    rootfs.mount_all(spec, paths.merged)
    if spec.linux.has_namespace("uts") and spec.hostname:
        socket.sethostname(spec.hostname)
    if spec.linux.has_namespace("network"):
        _loopback_up()
    rootfs.pivot(paths.merged)
    rootfs.mask_paths(spec.linux.masked_paths)
    rootfs.readonly_paths(spec.linux.readonly_paths)
    if spec.root.readonly:
        rootfs.remount_root_readonly()


def _loopback_up() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        ifreq = struct.pack("16sH14x", b"lo", 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(sock, _SIOCGIFFLAGS, ifreq))[1]
        fcntl.ioctl(sock, _SIOCSIFFLAGS, struct.pack("16sH14x", b"lo", flags | _IFF_UP))


def _resolve_user(spec: ContainerSpec) -> ResolvedUser:
    user = spec.process.user
    if spec.process.user_name is None:
        return ResolvedUser(user.uid, user.gid, user.additional_gids, "/")
    return resolve_user(
        spec.process.user_name,
        parse_passwd(_read_text("/etc/passwd")),
        parse_group(_read_text("/etc/group")),
        (*spec.process.group_add, *(str(g) for g in user.additional_gids)),
    )


def _read_text(path: str) -> str:
    """A small file's text, "" when it cannot be read."""
    try:
        return read_file(path).decode(errors="replace")
    except OSError:
        return ""


def _attach_terminal(channel: Channel) -> None:
    """Open a pty in the container's devpts, send its master to the parent, and make
    the slave our controlling terminal and stdio."""
    master = os.open("/dev/ptmx", os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
    fcntl.ioctl(master, _TIOCSPTLCK, struct.pack("i", 0))
    pts_number = struct.unpack("I", fcntl.ioctl(master, _TIOCGPTN, b"\0" * 4))[0]
    channel.send(PtyMaster(fd=master))
    os.setsid()
    slave = os.open(f"/dev/pts/{pts_number}", os.O_RDWR)
    fcntl.ioctl(slave, termios.TIOCSCTTY, 0)
    for fd in (0, 1, 2):
        os.dup2(slave, fd)
    if slave > 2:
        os.close(slave)
    os.close(master)


def _enter_workdir(cwd: str) -> None:
    os.makedirs(cwd, exist_ok=True)
    os.chdir(cwd)


def _set_rlimits(spec: ContainerSpec) -> None:
    for limit in spec.process.rlimits:
        number = getattr(resource, limit.type)
        try:
            resource.setrlimit(number, (limit.soft, limit.hard))
        except (ValueError, OSError) as exc:
            raise OSError(getattr(exc, "errno", 1) or 1,
                          f"setrlimit {limit.type} {limit.soft}:{limit.hard}: {exc}") from exc


def _drop_privileges(spec: ContainerSpec, config: InitConfig, user: ResolvedUser) -> None:
    caps = spec.process.capabilities
    if spec.process.no_new_privileges:
        libc.prctl(libc.PR_SET_NO_NEW_PRIVS, 1)
    libc.prctl(libc.PR_SET_KEEPCAPS, 1)
    capabilities.drop_bounding(caps.bounding, spec.uses_user_namespace)
    if config.seccomp_bpf is not None:
        install_bpf(config.seccomp_bpf)
    _set_ids(user, spec.uses_user_namespace)
    if user.uid or user.gid:  # ids changed (from root): the signal was disarmed
        arm_parent_death()
    capabilities.apply_sets(caps)
    libc.prctl(libc.PR_SET_KEEPCAPS, 0)


def _set_ids(user: ResolvedUser, userns: bool) -> None:
    try:
        if _setgroups_allowed(userns):
            os.setgroups(list(user.additional_gids))
        elif user.additional_gids:
            raise OSError(1, "setgroups: denied in this user namespace (single-id map)")
        os.setresgid(user.gid, user.gid, user.gid)
        os.setresuid(user.uid, user.uid, user.uid)
    except OSError as exc:
        raise OSError(exc.errno, f"set user {user.uid}:{user.gid}: {exc.strerror}") from exc


def _setgroups_allowed(userns: bool) -> bool:
    if not userns:
        return True
    return _read_text("/proc/self/setgroups").strip() != "deny"


def _close_inherited_fds(keep: int) -> None:
    """Only stdio and the (close-on-exec) channel cross into the container."""
    os.closerange(3, keep)
    os.closerange(keep + 1, resource.getrlimit(resource.RLIMIT_NOFILE)[0])


GLIBC_RESERVED_SIGNALS = (32, 33)  # not in signal.valid_signals(): Python cannot tell

_ignored_at_fork: tuple[int, ...] | None = None


def ignored_signals() -> tuple[int, ...]:
    """The signals this process ignores, as the kernel has them (SigIgn in
    /proc/self/status): glibc's reserved 32 and 33 too, which Python cannot name.
    Without a /proc: those Python knows ignored, and glibc's two (reset either way)."""
    mask = status_mask(b"SigIgn")
    if mask is None:
        return (*(sig for sig in signal.valid_signals()
                  if sig not in (signal.SIGKILL, signal.SIGSTOP)
                  and signal.getsignal(sig) == signal.SIG_IGN), *GLIBC_RESERVED_SIGNALS)
    return tuple(n for n in range(1, 65) if mask >> (n - 1) & 1)


def remember_ignored_signals() -> None:
    """For a process that forks inits (the zygote): note the signals it ignores now,
    once, so that each init resets just those, without looking (everything a forked
    child reads or calls costs it copy-on-write faults: ~0.3 ms for the look)."""
    global _ignored_at_fork
    _ignored_at_fork = ignored_signals()


def _reset_signals() -> None:
    """execve resets caught signals by itself, but ignored ones stay ignored: Python
    ignores SIGPIPE and SIGXFSZ, the zygote SIGINT and SIGTERM, and a parent may have
    ignored more. Reset those (one syscall each) and unblock every signal."""
    ignored = ignored_signals() if _ignored_at_fork is None else _ignored_at_fork
    for sig in ignored:
        if sig in GLIBC_RESERVED_SIGNALS:
            libc.default_signal_action(sig)
        else:
            signal.signal(sig, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, [])


def _exec(spec: ContainerSpec, user: ResolvedUser) -> None:
    env = _environment(spec, user)
    args = list(spec.process.args)
    path_var = next((e[5:] for e in env if e.startswith("PATH=")), "")
    _reset_signals()
    candidates = [args[0]] if "/" in args[0] else [
        os.path.join(d or ".", args[0]) for d in path_var.split(":")
    ]
    denied = None
    for candidate in candidates:
        try:
            os.execve(candidate, args, dict(e.split("=", 1) for e in env if "=" in e))
        except OSError as exc:
            if exc.errno in (2, 20):  # ENOENT, ENOTDIR: keep looking
                continue
            if exc.errno == 13 and "/" not in args[0]:  # EACCES: remember, keep looking
                denied = exc
                continue
            raise ExecError(exc.errno or 0, f'exec "{args[0]}": {exc.strerror}') from exc
    if denied is not None:
        raise ExecError(13, f'exec "{args[0]}": permission denied')
    where = "no such file or directory" if "/" in args[0] else "executable file not found in $PATH"
    raise ExecError(2, f'exec "{args[0]}": {where}')


def _environment(spec: ContainerSpec, user: ResolvedUser) -> list[str]:
    env = list(spec.process.env)
    if not any(e.startswith("HOME=") for e in env):
        env.append(f"HOME={user.home}")
    return env
