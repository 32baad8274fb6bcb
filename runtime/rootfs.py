"""The container's root filesystem: an overlay over the image/rootfs directory, the
mounts below it, /dev, ``pivot_root`` with the old root detached, masked and
read-only paths. Runs inside the container's mount namespace (in its init)."""

from __future__ import annotations

import errno
import os
import stat

from . import libc
from .mounts import apply_mount, make_mountpoint, remount_bind
from .spec import ContainerSpec

DEVICES = ("null", "zero", "full", "random", "urandom", "tty")
DEV_SYMLINKS = (
    ("/proc/self/fd", "fd"),
    ("/proc/self/fd/0", "stdin"),
    ("/proc/self/fd/1", "stdout"),
    ("/proc/self/fd/2", "stderr"),
    ("pts/ptmx", "ptmx"),
    ("/proc/kcore", "core"),
)


def overlay_options(lower: list[str], upper: str, work: str, in_user_namespace: bool,
                    volatile: bool = False) -> str:
    options = f"lowerdir={':'.join(lower)},upperdir={upper},workdir={work}"
    if in_user_namespace:
        options += ",userxattr"
    return f"{options},volatile" if volatile else options


def make_private() -> None:
    """Nothing mounted from here on propagates back to the host."""
    libc.mount(None, "/", None, libc.MS_REC | libc.MS_PRIVATE)


def mount_overlay(lower: list[str], upper: str, work: str, merged: str, userns: bool,
                  volatile: bool = False) -> None:
    libc.mount("overlay", merged, "overlay", 0,
               overlay_options(lower, upper, work, userns, volatile))


def mount_all(spec: ContainerSpec, root: str) -> None:
    userns = spec.uses_user_namespace
    for mount in spec.mounts:
        apply_mount(root, mount)
        if mount.destination == "/dev":
            populate_dev(os.path.join(root, "dev"), create_nodes=not userns)


def populate_dev(dev: str, create_nodes: bool) -> None:
    """The standard device nodes: made with mknod as real root, bind-mounted from the
    host in a user namespace (where mknod is not allowed)."""
    for name in DEVICES:
        target = os.path.join(dev, name)
        host = os.stat(f"/dev/{name}")
        if create_nodes:
            os.mknod(target, 0o666 | stat.S_IFCHR, host.st_rdev)
            os.chmod(target, 0o666)
        else:
            make_mountpoint(target, source_is_dir=False)
            libc.mount(f"/dev/{name}", target, None, libc.MS_BIND)
    for source, name in DEV_SYMLINKS:
        os.symlink(source, os.path.join(dev, name))


def pivot(root: str) -> None:
    """``pivot_root`` into ``root`` and detach the old root (runc's ``pivot_root . .``)."""
    old_cwd = os.open("/", os.O_DIRECTORY | os.O_RDONLY | os.O_CLOEXEC)
    new_root = os.open(root, os.O_DIRECTORY | os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fchdir(new_root)
        libc.pivot_root(".", ".")
        os.fchdir(old_cwd)
        # The old root is stacked on "/" now: make it private and lazily unmount it.
        libc.mount(None, ".", None, libc.MS_SLAVE | libc.MS_REC)
        libc.umount2(".", libc.MNT_DETACH)
        os.chdir("/")
    finally:
        os.close(old_cwd)
        os.close(new_root)


def mask_paths(paths: tuple[str, ...]) -> None:
    """Hide each path: /dev/null over a file, an empty read-only tmpfs over a directory."""
    for path in paths:
        try:
            st = os.stat(path)
        except FileNotFoundError:
            continue
        if stat.S_ISDIR(st.st_mode):
            libc.mount("tmpfs", path, "tmpfs", libc.MS_RDONLY, "size=0k")
        else:
            libc.mount("/dev/null", path, None, libc.MS_BIND)


def readonly_paths(paths: tuple[str, ...]) -> None:
    for path in paths:
        try:
            libc.mount(path, path, None, libc.MS_BIND | libc.MS_REC)
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                continue
            raise
        remount_bind(path, libc.MS_RDONLY | libc.MS_REC)


def remount_root_readonly() -> None:
    remount_bind("/", libc.MS_RDONLY)

