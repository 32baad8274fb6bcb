"""Mounts: OCI mount options to mount(2) flags, safe paths inside a root, and applying
one :class:`~runtime.spec.Mount` below the new root before ``pivot_root``.

The pure part (:func:`parse_options`, :func:`resolve_in_root`) is tested on its own;
:func:`apply_mount` is the short piece that talks to the kernel.
"""

from __future__ import annotations

import errno
import os
import stat
from typing import NamedTuple

from . import libc
from .spec import Mount

# option -> (flags to set, flags to clear)
_FLAG_OPTIONS: dict[str, tuple[int, int]] = {
    "ro": (libc.MS_RDONLY, 0),
    "rw": (0, libc.MS_RDONLY),
    "nosuid": (libc.MS_NOSUID, 0),
    "suid": (0, libc.MS_NOSUID),
    "nodev": (libc.MS_NODEV, 0),
    "dev": (0, libc.MS_NODEV),
    "noexec": (libc.MS_NOEXEC, 0),
    "exec": (0, libc.MS_NOEXEC),
    "sync": (libc.MS_SYNCHRONOUS, 0),
    "async": (0, libc.MS_SYNCHRONOUS),
    "dirsync": (libc.MS_DIRSYNC, 0),
    "remount": (libc.MS_REMOUNT, 0),
    "mand": (libc.MS_MANDLOCK, 0),
    "nomand": (0, libc.MS_MANDLOCK),
    "atime": (0, libc.MS_NOATIME),
    "noatime": (libc.MS_NOATIME, 0),
    "diratime": (0, libc.MS_NODIRATIME),
    "nodiratime": (libc.MS_NODIRATIME, 0),
    "relatime": (libc.MS_RELATIME, 0),
    "norelatime": (0, libc.MS_RELATIME),
    "strictatime": (libc.MS_STRICTATIME, 0),
    "nosymfollow": (libc.MS_NOSYMFOLLOW, 0),
    "bind": (libc.MS_BIND, 0),
    "rbind": (libc.MS_BIND | libc.MS_REC, 0),
}
_PROPAGATION_OPTIONS: dict[str, int] = {
    "private": libc.MS_PRIVATE,
    "rprivate": libc.MS_PRIVATE | libc.MS_REC,
    "shared": libc.MS_SHARED,
    "rshared": libc.MS_SHARED | libc.MS_REC,
    "slave": libc.MS_SLAVE,
    "rslave": libc.MS_SLAVE | libc.MS_REC,
    "unbindable": libc.MS_UNBINDABLE,
    "runbindable": libc.MS_UNBINDABLE | libc.MS_REC,
}
# Per-mount flags that a bind remount may change; the kernel locks the ones the
# source mount has when we are in a user namespace, so they are carried over.
_LOCKABLE = {
    os.ST_NOSUID: libc.MS_NOSUID,
    os.ST_NODEV: libc.MS_NODEV,
    os.ST_NOEXEC: libc.MS_NOEXEC,
}


class MountOptions(NamedTuple):
    flags: int
    propagation: int
    data: str

    @property
    def is_bind(self) -> bool:
        return bool(self.flags & libc.MS_BIND)

    @property
    def remount_flags(self) -> int:
        """Flags that a bind mount only gets by a second, remounting call."""
        return self.flags & ~(libc.MS_BIND | libc.MS_REC | libc.MS_REMOUNT)


def parse_options(options: tuple[str, ...]) -> MountOptions:
    """Split OCI mount options into mount(2) flags, propagation flags and fs data."""
    flags, propagation, data = 0, 0, []
    for option in options:
        if option in _FLAG_OPTIONS:
            set_bits, clear_bits = _FLAG_OPTIONS[option]
            flags = (flags | set_bits) & ~clear_bits
        elif option in _PROPAGATION_OPTIONS:
            propagation |= _PROPAGATION_OPTIONS[option]
        else:
            data.append(option)
    return MountOptions(flags=flags, propagation=propagation, data=",".join(data))


def resolve_in_root(root: str, path: str, max_links: int = 40) -> str:
    """The host path of ``path`` inside ``root``, following symlinks as the container
    would see them: an absolute link or ``..`` never leaves ``root``."""
    parts = [p for p in path.split("/") if p not in ("", ".")]
    resolved: list[str] = []
    links = 0
    while parts:
        part = parts.pop(0)
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        candidate = os.path.join(root, *resolved, part)
        try:
            target = os.readlink(candidate)
        except OSError:
            resolved.append(part)
            continue
        links += 1
        if links > max_links:
            raise OSError(errno.ELOOP, f"resolve {path} in {root}: too many symlinks")
        if target.startswith("/"):
            resolved = []
        parts = [p for p in target.split("/") if p not in ("", ".")] + parts
    return os.path.join(root, *resolved)


def make_mountpoint(target: str, source_is_dir: bool) -> None:
    """Create ``target`` as a directory or an empty file, parents included."""
    if source_is_dir:
        os.makedirs(target, exist_ok=True)
        return
    os.makedirs(os.path.dirname(target), exist_ok=True)
    if not os.path.lexists(target):
        os.close(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644))


def apply_mount(root: str, mount: Mount) -> None:
    """Mount ``mount`` at its destination below ``root`` (the not-yet-pivoted rootfs)."""
    opts = parse_options(mount.options)
    target = resolve_in_root(root, mount.destination)
    if opts.is_bind:
        st = os.stat(mount.source)
        make_mountpoint(target, stat.S_ISDIR(st.st_mode))
        libc.mount(mount.source, target, None, opts.flags & (libc.MS_BIND | libc.MS_REC))
        if opts.remount_flags:
            remount_bind(target, opts.remount_flags)
            if opts.flags & libc.MS_REC and opts.remount_flags & libc.MS_RDONLY:
                # rbind,ro: every submount too (say /sys/fs/cgroup below a bound /sys,
                # where a rootless container's root could write its user's cgroups)
                libc.mount_setattr_rdonly_recursive(target)
    else:
        make_mountpoint(target, True)
        libc.mount(mount.source or mount.type, target, mount.type, opts.flags, opts.data or None)
    if opts.propagation:
        libc.mount(None, target, None, opts.propagation)


def remount_bind(target: str, flags: int) -> None:
    """Change the per-mount flags of the bind mount at ``target``, keeping the
    nosuid/nodev/noexec it has (in a user namespace the kernel locks them)."""
    libc.mount(None, target, None, libc.MS_BIND | libc.MS_REMOUNT | flags | kept_flags(target))


def kept_flags(target: str) -> int:
    current = os.statvfs(target).f_flag
    return sum(ms for st, ms in _LOCKABLE.items() if current & st)
