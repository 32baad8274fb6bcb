"""The one place where myctr calls libc and raw syscalls through ctypes.

Python 3.11 has no ``os.unshare``/``os.setns``/``mount``/``pivot_root``/``clone3``.
Every function here checks the return value and raises ``OSError(errno, what)``
where ``what`` names the call and its path, e.g. ``mount overlay on /x/rootfs``.
"""

from __future__ import annotations

import ctypes
import os
import signal
import struct

_libc = ctypes.CDLL(None, use_errno=True)
# clone3 must not release the GIL: the child returns into this very thread and
# must find the interpreter exactly as the parent left it (single-threaded).
_libc_nogil = ctypes.PyDLL(None, use_errno=True)

# x86_64 syscall numbers (asm/unistd_64.h).
SYS_PIVOT_ROOT = 155
SYS_SECCOMP = 317
SYS_CAPGET = 125
SYS_CAPSET = 126
SYS_PIDFD_SEND_SIGNAL = 424
SYS_CLONE3 = 435
SYS_RT_SIGACTION = 13

CLONE_NEWTIME = 0x00000080
CLONE_PIDFD = 0x00001000
CLONE_PARENT = 0x00008000
CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
CLONE_INTO_CGROUP = 0x200000000

MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_SYNCHRONOUS = 0x10
MS_REMOUNT = 0x20
MS_MANDLOCK = 0x40
MS_DIRSYNC = 0x80
MS_NOSYMFOLLOW = 0x100
MS_NOATIME = 0x400
MS_NODIRATIME = 0x800
MS_BIND = 0x1000
MS_MOVE = 0x2000
MS_REC = 0x4000
MS_SILENT = 0x8000
MS_UNBINDABLE = 1 << 17
MS_PRIVATE = 1 << 18
MS_SLAVE = 1 << 19
MS_SHARED = 1 << 20
MS_RELATIME = 1 << 21
MS_STRICTATIME = 1 << 24

MNT_FORCE = 1
MNT_DETACH = 2

PR_SET_PDEATHSIG = 1
PR_GET_DUMPABLE = 3
PR_SET_DUMPABLE = 4
PR_SET_KEEPCAPS = 8
PR_CAPBSET_READ = 23
PR_CAPBSET_DROP = 24
PR_SET_CHILD_SUBREAPER = 36
PR_SET_NO_NEW_PRIVS = 38
PR_GET_NO_NEW_PRIVS = 39
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_RAISE = 2
PR_CAP_AMBIENT_CLEAR_ALL = 4

_LINUX_CAPABILITY_VERSION_3 = 0x20080522


def _check(result: int, what: str) -> int:
    if result == -1:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return result


class _CloneArgs(ctypes.Structure):
    _fields_ = [
        ("flags", ctypes.c_uint64),
        ("pidfd", ctypes.c_uint64),
        ("child_tid", ctypes.c_uint64),
        ("parent_tid", ctypes.c_uint64),
        ("exit_signal", ctypes.c_uint64),
        ("stack", ctypes.c_uint64),
        ("stack_size", ctypes.c_uint64),
        ("tls", ctypes.c_uint64),
        ("set_tid", ctypes.c_uint64),
        ("set_tid_size", ctypes.c_uint64),
        ("cgroup", ctypes.c_uint64),
    ]


def clone3(flags: int, cgroup_fd: int | None = None) -> tuple[int, int]:
    """Fork-like clone3 with ``flags``; return ``(pid, pidfd)`` in the parent, ``(0, -1)``
    in the child. The parent always gets a pidfd (CLONE_PIDFD).

    Only safe from a single-threaded process: the child continues in this thread.
    """
    pidfd = ctypes.c_int(-1)
    args = _CloneArgs()
    args.flags = flags | CLONE_PIDFD
    args.pidfd = ctypes.addressof(pidfd)
    # With CLONE_PARENT the child inherits our exit signal; clone3 wants 0 here then.
    args.exit_signal = 0 if flags & CLONE_PARENT else signal.SIGCHLD
    if cgroup_fd is not None:
        args.flags |= CLONE_INTO_CGROUP
        args.cgroup = cgroup_fd
    syscall = _libc_nogil.syscall
    syscall.restype = ctypes.c_long
    size = ctypes.c_size_t(ctypes.sizeof(args))
    pid = syscall(ctypes.c_long(SYS_CLONE3), ctypes.byref(args), size)
    _check(pid, "clone3")
    if pid == 0:
        return 0, -1
    return pid, pidfd.value


def unshare(flags: int) -> None:
    _check(_libc.unshare(ctypes.c_int(flags)), f"unshare {flags:#x}")


def setns(fd: int, nstype: int = 0, what: str = "") -> None:
    _check(_libc.setns(ctypes.c_int(fd), ctypes.c_int(nstype)), f"setns {what or fd}")


def mount(
    source: str | None, target: str, fstype: str | None, flags: int = 0, data: str | None = None
) -> None:
    result = _libc.mount(
        _encode(source), _encode(target), _encode(fstype), ctypes.c_ulong(flags), _encode(data)
    )
    _check(result, f"mount {fstype or source or 'none'} on {target}")


def umount2(target: str, flags: int = 0) -> None:
    _check(_libc.umount2(_encode(target), ctypes.c_int(flags)), f"umount {target}")


def pivot_root(new_root: str, put_old: str) -> None:
    result = _libc.syscall(ctypes.c_long(SYS_PIVOT_ROOT), _encode(new_root), _encode(put_old))
    _check(result, f"pivot_root {new_root}")


def prctl(option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
    result = _libc.prctl(
        ctypes.c_int(option),
        ctypes.c_ulong(arg2),
        ctypes.c_ulong(arg3),
        ctypes.c_ulong(arg4),
        ctypes.c_ulong(arg5),
    )
    return _check(result, f"prctl {option}")


def pidfd_send_signal(pidfd: int, sig: int) -> None:
    result = _libc.syscall(
        ctypes.c_long(SYS_PIDFD_SEND_SIGNAL), ctypes.c_int(pidfd), ctypes.c_int(sig), None, 0
    )
    _check(result, f"pidfd_send_signal {sig}")


def default_signal_action(sig: int) -> None:
    """``rt_sigaction(sig, SIG_DFL)`` straight to the kernel: glibc's ``sigaction``
    refuses the two signals it keeps for itself (32 and 33), which a parent may still
    have left ignored."""
    action = (ctypes.c_ulong * 4)()  # handler SIG_DFL, flags, restorer, mask: all 0
    _check(_libc.syscall(ctypes.c_long(SYS_RT_SIGACTION), ctypes.c_int(sig), action, None,
                         ctypes.c_size_t(8)), f"rt_sigaction {sig}")


def seccomp(operation: int, flags: int, args: int) -> None:
    result = _libc.syscall(
        ctypes.c_long(SYS_SECCOMP), ctypes.c_uint(operation), ctypes.c_uint(flags),
        ctypes.c_void_p(args),
    )
    _check(result, f"seccomp {operation}")


def capget() -> tuple[int, int, int]:
    """Return this thread's (effective, permitted, inheritable) capability masks."""
    header = struct.pack("Ii", _LINUX_CAPABILITY_VERSION_3, 0)
    data = ctypes.create_string_buffer(24)
    _check(_libc.syscall(ctypes.c_long(SYS_CAPGET), header, data), "capget")
    e0, p0, i0, e1, p1, i1 = struct.unpack("6I", data.raw)
    return e0 | e1 << 32, p0 | p1 << 32, i0 | i1 << 32


def capset(effective: int, permitted: int, inheritable: int) -> None:
    header = struct.pack("Ii", _LINUX_CAPABILITY_VERSION_3, 0)
    low, high = 0xFFFFFFFF, 32
    data = struct.pack(
        "6I",
        effective & low, permitted & low, inheritable & low,
        effective >> high, permitted >> high, inheritable >> high,
    )
    _check(_libc.syscall(ctypes.c_long(SYS_CAPSET), header, data), "capset")


def _encode(value: str | None) -> bytes | None:
    return None if value is None else os.fsencode(value)


IN_MODIFY = 0x00000002
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC


def inotify_init1(flags: int = IN_NONBLOCK | IN_CLOEXEC) -> int:
    return _check(_libc.inotify_init1(ctypes.c_int(flags)), "inotify_init1")


def inotify_add_watch(fd: int, path: str, mask: int = IN_MODIFY) -> int:
    result = _libc.inotify_add_watch(ctypes.c_int(fd), _encode(path), ctypes.c_uint32(mask))
    return _check(result, f"inotify_add_watch {path}")


def inotify_rm_watch(fd: int, wd: int) -> None:
    _check(_libc.inotify_rm_watch(ctypes.c_int(fd), ctypes.c_int(wd)), "inotify_rm_watch")


SYS_MOUNT_SETATTR = 442
AT_FDCWD = -100
AT_RECURSIVE = 0x8000
MOUNT_ATTR_RDONLY = 0x1


class _MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]


def mount_setattr_rdonly_recursive(target: str) -> None:
    """Make the mount at ``target`` and every mount below it read-only (Linux >= 5.12);
    a remount only changes the top one."""
    attr = _MountAttr(attr_set=MOUNT_ATTR_RDONLY)
    result = _libc.syscall(ctypes.c_long(SYS_MOUNT_SETATTR), ctypes.c_int(AT_FDCWD),
                           _encode(target), ctypes.c_uint(AT_RECURSIVE), ctypes.byref(attr),
                           ctypes.c_size_t(ctypes.sizeof(attr)))
    _check(result, f"mount_setattr {target}")
