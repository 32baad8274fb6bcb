"""A container's directory on disk: the overlay's upper, work and merged dirs, and the
files it gets at /etc/hostname, /etc/hosts and /etc/resolv.conf (written anew by every
prepare; a rewrite is atomic). Its spec is in the database only.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable

from .paths import StatePaths


def new_id() -> str:
    return os.urandom(32).hex()


def is_container_id(name: str, length: int = 64) -> bool:
    """Whether ``name`` is a container id (or its first ``length`` hex digits)."""
    return len(name) == length and all(ch in "0123456789abcdef" for ch in name)


def proc_stat(pid: int) -> list[bytes] | None:
    """The fields of /proc/PID/stat after the command name (state first), or None if
    the process is gone. The name may hold spaces and parentheses: split after it."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    return stat[stat.rindex(b")") + 2 :].split()


def status_mask(field: bytes) -> int | None:
    """A hex mask of /proc/self/status (``b"SigIgn"``, ``b"CapBnd"``), None without one."""
    prefix = field + b":"
    try:
        with open("/proc/self/status", "rb") as f:
            return next((int(line.split()[1], 16) for line in f if line.startswith(prefix)),
                        None)
    except (OSError, ValueError):
        return None


def process_start_time(pid: int) -> int:
    """The start time (clock ticks since boot) of ``pid``: with the pid it names one
    process for good, since a recycled pid has another start time. 0 if gone."""
    fields = proc_stat(pid)
    return int(fields[19]) if fields else 0


def atomic_write(path: str, data: bytes, mode: int = 0o600, durable: bool = True) -> None:
    """Write ``path`` whole or not at all; ``durable`` also survives a power loss."""
    head, tail = os.path.split(path)
    tmp = os.path.join(head, f".{tail}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        os.write(fd, data)
        if durable:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, path)


class ContainerDir:
    def __init__(self, paths: StatePaths, container_id: str) -> None:
        self.paths = paths
        self.id = container_id
        self.path = paths.container_dir(container_id)

    @property
    def upper(self) -> str:
        return os.path.join(self.path, "upper")

    @property
    def work(self) -> str:
        return os.path.join(self.path, "work")

    @property
    def merged(self) -> str:
        return os.path.join(self.path, "merged")

    @property
    def etc(self) -> str:
        """Where the /etc files are: the directory itself (a subdirectory would be one
        more inode to make and remove per container; containers made before kept
        them in etc/, which goes with the directory)."""
        return self.path

    def make_dirs(self) -> None:
        os.mkdir(self.path, 0o700)
        for sub in (self.upper, self.work, self.merged):
            os.mkdir(sub, 0o755)

    def hand_over(self, uid: int, gid: int) -> None:
        """Give the overlay dirs to the container's root when it is another host id
        (root with ``--uidmap``): it mounts the overlay from inside its namespace."""
        os.chmod(self.path, 0o711)
        for sub in (self.upper, self.work, self.merged):
            os.chown(sub, uid, gid)

    def write_etc_files(self, texts: dict[str, str]) -> dict[str, str]:
        """Write the files the container gets at /etc (``{"hostname": text, "hosts":
        ..., "resolv.conf": ...}``); return {container path: host path}.

        A new file is written where it stands (no container sees it before its first
        run); one that exists is replaced whole (temp file and rename): a run starting
        meanwhile binds the old file or the new, never a torn one."""
        paths = {f"/etc/{name}": os.path.join(self.etc, name) for name in texts}
        for name, text in texts.items():
            path = paths[f"/etc/{name}"]
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
            except FileExistsError:
                atomic_write(path, text.encode(), mode=0o644, durable=False)
                continue
            try:
                os.write(fd, text.encode())
            finally:
                os.close(fd)
        return paths

    def remove(self, remover: Callable[[str], None] | None = None) -> None:
        """Remove the directory; ``remover`` takes the overlay dirs when their files
        belong to ids only a user namespace can touch (rootless)."""
        if not os.path.exists(self.path):
            return
        if remover is not None:
            for sub in (self.upper, self.work):  # overlay leaves work/work mode 000
                if os.path.exists(sub):
                    remover(sub)
        rmtree(self.path)


def rmtree(path: str) -> None:
    import shutil

    with contextlib.suppress(FileNotFoundError):
        shutil.rmtree(path)


def read_file(path: str) -> bytes:
    """A small file's bytes, with plain os calls: no io objects, which matters where
    every touched object costs (a freshly forked init's copy-on-write faults) or every
    microsecond does (the event loop's cgroup reads)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunks = []
        while chunk := os.read(fd, 1 << 16):
            chunks.append(chunk)
    finally:
        os.close(fd)
    return b"".join(chunks)


def read_text(path: str) -> str:
    """A host file's text, or "" when it cannot be read (e.g. /etc/resolv.conf)."""
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""
