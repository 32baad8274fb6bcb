"""The init's native stage: a container's init compiled into a plan of steps, which a
small C library (``nativeinit.c``, built by ``make`` into ``libmyctrinit.so``) runs in
a child cloned with CLONE_VM, up to its execve.

The Python init (:mod:`runtime.init`) does the same work in a forked interpreter, which
pays a copy-on-write fault for each page it touches and a copy of the page tables of
the forker's heap: ~3 ms of each start on this machine, more than crun's whole run.
Here Python decides everything ahead (in the supervisor, off the clone path), and the
child only makes the syscalls; what it cannot know ahead it looks up itself (the user
in the container's own /etc/passwd and /etc/group, symlinks below the new root).

Each step mirrors a line of :mod:`runtime.init` / :mod:`runtime.rootfs` /
:mod:`runtime.mounts`, in the same order, with the same error texts; the tests run
both inits (``MYCTR_INIT=python`` picks the Python one).
"""

from __future__ import annotations

import ctypes
import os
import resource
import stat
import struct
from pathlib import Path
from typing import NamedTuple

from . import capabilities, libc
from .capabilities import CAPABILITY_NUMBERS, to_mask
from .channel import Placed, PtyMaster, Ready, Start, packet
from .init import InitConfig
from .mounts import parse_options
from .rootfs import DEV_SYMLINKS, DEVICES, overlay_options
from .spec import ContainerSpec, IdMapping

LIBRARY = Path(__file__).with_name("libmyctrinit.so")

# Steps (the OP_* of nativeinit.c, in its order)
(PDEATHSIG, WRITE_FILE, STDIN_DEVNULL, EXPECT, SEND, SETRESID, UNSHARE, MOUNT, RESOLVE,
 MOUNTPOINT, REMOUNT_BIND, SETATTR_RDONLY, MKNOD, SYMLINK, SETHOSTNAME, LOOPBACK_UP, PIVOT,
 MASK, READONLY, SETSID, TERMINAL, WORKDIR, RLIMIT, PRCTL, CAPBSET_DROP, SECCOMP,
 SETGROUPS, CAPSET, AMBIENT_RAISE, CLOSE_FDS, UNBLOCK_SIGNALS, EXEC, CLOSE, USER,
 SET_USER) = range(1, 36)

# MOUNTPOINT kinds
EMPTY_FILE, DIRECTORY, LIKE_SOURCE = 0, 1, 2
RESOLVED = ""  # the target that the last RESOLVE found
MAX_EXEC_STRINGS = 4096  # MAX_STRINGS in nativeinit.c

_U64 = (1 << 64) - 1
_HEADER = struct.Struct("<IIQQQ")
_LENGTH = struct.Struct("<I")
_NULL = b"\xff\xff\xff\xff"


class Plan:
    """Steps packed as nativeinit.c reads them."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def step(self, op: int, *args: str | bytes | None, what: str = "", a: int = 0,
             b: int = 0, c: int = 0) -> None:
        """A step: its string arguments follow ``what``, the text that names it in an
        error (steps on a path append it)."""
        parts = self.parts
        parts.append(_HEADER.pack(op, len(args) + 1, a & _U64, b & _U64, c & _U64))
        for s in (what, *args):
            if s is None:
                parts.append(_NULL)
                continue
            data = s.encode() if isinstance(s, str) else s
            if b"\0" in data and op not in (SECCOMP, SETGROUPS):
                raise ValueError(f"NUL byte in {data!r}")
            parts.append(_LENGTH.pack(len(data)) + data + b"\0")

    def encode(self) -> bytes:
        return b"".join(self.parts)


_library: ctypes.CDLL | None = None
_load_error: str | None = None


def available() -> bool:
    """Whether the native stage can run here (the library is built, and loads)."""
    global _library, _load_error
    if _library is not None:
        return True
    if _load_error is not None:
        return False
    if os.environ.get("MYCTR_INIT") == "python":
        _load_error = "MYCTR_INIT=python"
        return False
    try:
        lib = ctypes.CDLL(str(LIBRARY), use_errno=True)
    except OSError as exc:
        _load_error = str(exc)
        return False
    # This process's bounding set is every init's (the zygote is forked from it, and
    # neither changes it): read once, not at each compile.
    capabilities.remember_bounding_set()
    lib.myctr_spawn.restype = ctypes.c_long
    lib.myctr_spawn.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint64,
                                ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                                ctypes.POINTER(ctypes.c_int)]
    _library = lib
    return True


def unavailable_reason() -> str | None:
    available()
    return _load_error


def describe() -> str:
    """Which init runs containers here: "native", or "python (why)"."""
    return "native" if available() else f"python ({_load_error})"


def spawn(plan: bytes, flags: int, cgroup_fd: int | None, channel: int,
          supervisor_pidfd: int | None, shared: bool) -> tuple[int, int]:
    """Clone an init (namespaces and CLONE_PARENT from ``flags``, into the cgroup v2 of
    ``cgroup_fd``) that runs ``plan`` and talks on ``channel``; (pid, pidfd).
    ``shared``: in our memory (CLONE_VM) until it execs, for an init that keeps its ids
    (:attr:`Compiled.shared`)."""
    assert _library is not None, "nativeinit.available() first"
    pidfd = ctypes.c_int(-1)
    pid = _library.myctr_spawn(plan, len(plan), flags,
                               -1 if cgroup_fd is None else cgroup_fd, channel,
                               -1 if supervisor_pidfd is None else supervisor_pidfd,
                               int(shared), ctypes.byref(pidfd))
    if pid < 0:
        raise OSError(-pid, f"clone3: {os.strerror(-pid)}")
    return pid, pidfd.value


def first_steps(close: int, tasks: tuple[str, ...]) -> bytes:
    """What the child does before its compiled plan: close the parent's end of the
    channel (``close``), move itself into its v1 cgroups (create.join_self)."""
    plan = Plan()
    plan.step(CLOSE, a=close)
    for path in tasks:
        plan.step(WRITE_FILE, path, "0", what="cannot move the container into its cgroup "
                  f"({os.path.dirname(path)})")
    return plan.encode()


_devices: tuple[tuple[str, int], ...] | None = None


def _host_devices() -> tuple[tuple[str, int], ...]:
    global _devices
    if _devices is None:
        _devices = tuple((name, os.stat(f"/dev/{name}").st_rdev) for name in DEVICES)
    return _devices


class Compiled(NamedTuple):
    flags: int  # clone flags
    plan: bytes
    # The init keeps the ids it is cloned with: it may run in the zygote's memory
    # (CLONE_VM). A change of ids makes the kernel mark the memory not dumpable, for
    # every process sharing it: the zygote's, for good, and a later init's
    # /proc/PID/ns could no longer be opened by a rootless user (slirp4netns does).
    shared: bool


def compile_init(spec: ContainerSpec, config: InitConfig) -> Compiled | None:
    """Clone flags, plan and sharing of the init of ``spec``, or None when only the
    Python init can run it. Mirrors runtime.init._init and what it calls, step for
    step."""
    try:
        return _compile(spec, config)
    except ValueError:  # a NUL in a string, a huge environment: the Python init runs it
        return None


def keeps_ids(spec: ContainerSpec) -> bool:
    """Whether the init ends with the ids it is cloned with: root (of a user namespace
    that maps it to our own ids), as user "0", "root", "0:0"... A name is looked up in
    the container's passwd by the init, which refuses to change ids when shared."""
    linux = spec.linux
    if spec.uses_user_namespace and (
            _host_id(linux.uid_mappings) != os.geteuid()
            or _host_id(linux.gid_mappings) != os.getegid()):
        return False
    process = spec.process
    if process.user_name is None:
        return process.user.uid == 0 and process.user.gid == 0
    user, _, group = process.user_name.partition(":")
    return user in ("0", "root") and group in ("", "0", "root")


def _host_id(mappings: tuple[IdMapping, ...]) -> int | None:
    """The host id of the namespace's 0."""
    return next((m.host_id for m in mappings if m.container_id == 0), None)


def _compile(spec: ContainerSpec, config: InitConfig) -> Compiled:
    from .create import clone_flags

    flags = clone_flags(spec)
    userns = spec.uses_user_namespace
    plan = Plan()
    step = plan.step
    step(PDEATHSIG)
    if config.stdin_devnull:
        step(STDIN_DEVNULL)
    step(EXPECT, packet(Placed))
    if userns:
        step(SETRESID, what="become root in the user namespace", a=0, b=0)
        step(PDEATHSIG)  # (a mapped root is another host uid: disarmed)
    if flags & libc.CLONE_NEWCGROUP:  # unshared once the parent placed us in our cgroup
        flags &= ~libc.CLONE_NEWCGROUP
        step(UNSHARE, what="unshare the cgroup namespace", a=libc.CLONE_NEWCGROUP)
    _build_root(plan, spec, config)
    _become_process(plan, spec, config)
    return Compiled(flags, plan.encode(), keeps_ids(spec))


def _build_root(plan: Plan, spec: ContainerSpec, config: InitConfig) -> None:
    step = plan.step
    userns = spec.uses_user_namespace
    root = config.merged
    step(MOUNT, None, "/", None, None, what="mount none on ", a=libc.MS_REC | libc.MS_PRIVATE)
    step(MOUNT, "overlay", root, "overlay",
         overlay_options(list(config.lower), config.upper, config.work, userns,
                         config.volatile), what="mount overlay on ")
    for mount in spec.mounts:
        opts = parse_options(mount.options)
        step(RESOLVE, root, mount.destination, what="resolve in the root: ")
        if opts.is_bind:
            step(MOUNTPOINT, RESOLVED, mount.source, a=LIKE_SOURCE)
            step(MOUNT, mount.source, RESOLVED, None, None, what=f"mount {mount.source} on ",
                 a=opts.flags & (libc.MS_BIND | libc.MS_REC))
            if opts.remount_flags:
                step(REMOUNT_BIND, RESOLVED, a=opts.remount_flags)
                if opts.flags & libc.MS_REC and opts.remount_flags & libc.MS_RDONLY:
                    step(SETATTR_RDONLY, RESOLVED)
        else:
            step(MOUNTPOINT, RESOLVED, a=DIRECTORY)
            step(MOUNT, mount.source or mount.type, RESOLVED, mount.type, opts.data or None,
                 what=f"mount {mount.type or mount.source or 'none'} on ", a=opts.flags)
        if opts.propagation:
            step(MOUNT, None, RESOLVED, None, None, what="mount none on ", a=opts.propagation)
        if mount.destination == "/dev":
            _populate_dev(plan, os.path.join(root, "dev"), create_nodes=not userns)
    if spec.linux.has_namespace("uts") and spec.hostname:
        step(SETHOSTNAME, spec.hostname)
    if spec.linux.has_namespace("network"):
        step(LOOPBACK_UP)
    step(PIVOT, root)
    for path in spec.linux.masked_paths:
        step(MASK, path)
    for path in spec.linux.readonly_paths:
        step(READONLY, path)
    if spec.root.readonly:
        step(REMOUNT_BIND, "/", a=libc.MS_RDONLY)


def _populate_dev(plan: Plan, dev: str, create_nodes: bool) -> None:
    for name, rdev in _host_devices():
        target = os.path.join(dev, name)
        if create_nodes:
            plan.step(MKNOD, target, a=0o666 | stat.S_IFCHR, b=rdev)
        else:
            plan.step(MOUNTPOINT, target, a=EMPTY_FILE)
            plan.step(MOUNT, f"/dev/{name}", target, None, None, what=f"mount /dev/{name} on ",
                      a=libc.MS_BIND)
    for source, name in DEV_SYMLINKS:
        plan.step(SYMLINK, source, os.path.join(dev, name))


def _become_process(plan: Plan, spec: ContainerSpec, config: InitConfig) -> None:
    step = plan.step
    process = spec.process
    userns = spec.uses_user_namespace
    user = process.user
    has_home = any(e.startswith("HOME=") for e in process.env)
    if process.user_name is not None:
        added = (*process.group_add, *(str(g) for g in user.additional_gids))
        if any("\n" in g for g in added):
            raise ValueError("a newline in a group name")
        step(USER, process.user_name, "\n".join(added), a=int(not has_home))
    if process.terminal:
        step(TERMINAL, packet(PtyMaster))
    else:
        step(SETSID)
    step(SEND, packet(Ready))
    if not config.go_ahead:
        step(EXPECT, packet(Start))
    step(WORKDIR, process.cwd)
    for limit in process.rlimits:
        step(RLIMIT, what=f"setrlimit {limit.type} {limit.soft}:{limit.hard}",
             a=getattr(resource, limit.type), b=limit.soft, c=limit.hard)
    caps = process.capabilities
    if process.no_new_privileges:
        step(PRCTL, what="prctl PR_SET_NO_NEW_PRIVS", a=libc.PR_SET_NO_NEW_PRIVS, b=1)
    step(PRCTL, what="prctl PR_SET_KEEPCAPS", a=libc.PR_SET_KEEPCAPS, b=1)
    step(CAPBSET_DROP, a=capabilities.bounding_to_drop(caps.bounding, userns))
    if config.seccomp_bpf is not None:
        if not config.seccomp_bpf or len(config.seccomp_bpf) % 8:
            raise ValueError("seccomp: empty or malformed BPF program")
        step(SECCOMP, config.seccomp_bpf)
    if process.user_name is None:  # the ids as they are
        who = f"set user {user.uid}:{user.gid}"
        step(SETGROUPS, b"".join(struct.pack("<I", g) for g in user.additional_gids),
             what=who, a=int(userns))
        step(SETRESID, what=who, a=user.uid, b=user.gid)
        if user.uid or user.gid:  # ids changed (from root): the signal was disarmed
            step(PDEATHSIG)
    else:  # found by USER, before the terminal
        step(SET_USER, a=int(userns))
    step(CAPSET, a=to_mask(caps.effective), b=to_mask(caps.permitted),
         c=to_mask(caps.inheritable))
    for name in caps.ambient:
        step(AMBIENT_RAISE, a=CAPABILITY_NUMBERS[name])
    step(PRCTL, what="prctl PR_SET_KEEPCAPS", a=libc.PR_SET_KEEPCAPS, b=0)
    step(CLOSE_FDS)
    env = list(process.env)
    if not has_home and process.user_name is None:
        env.append("HOME=/")  # (with a user name, USER sets the home of its entry)
    env = [f"{k}={v}" for k, v in dict(e.split("=", 1) for e in env if "=" in e).items()]
    args = list(process.args)
    path_var = next((e[5:] for e in env if e.startswith("PATH=")), "")
    candidates = [args[0]] if "/" in args[0] else [
        os.path.join(d or ".", args[0]) for d in path_var.split(":")]
    if len(candidates) + len(args) + len(env) > MAX_EXEC_STRINGS:
        raise ValueError("more arguments and variables than the native stage takes")
    step(UNBLOCK_SIGNALS)
    step(EXEC, *candidates, *args, *env, what=args[0], a=len(candidates), b=len(args),
         c=len(env))
