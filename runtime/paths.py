"""Where one myctr installation keeps its state.

As root: ``/var/lib/myctr`` (containers, images), ``/run/myctr`` (sockets),
``/var/log/myctr`` (logs). Rootless: the XDG equivalents. ``--root DIR`` (or
``MYCTR_ROOT``) puts all three under DIR, so independent installations never collide.
"""

from __future__ import annotations

import os


class StatePaths:
    """The three directories, and ``base`` when ``--root``/``MYCTR_ROOT`` set them.

    A plain class, not a NamedTuple: the CLI's cold start imports this, and ``typing``
    costs it ~5 ms.
    """

    __slots__ = ("base", "data", "log", "run")

    def __init__(self, data: str, run: str, log: str, base: str | None = None) -> None:
        self.data, self.run, self.log, self.base = data, run, log, base

    def __eq__(self, other: object) -> bool:
        return isinstance(other, StatePaths) and self._fields() == other._fields()

    def __hash__(self) -> int:
        return hash(self._fields())

    def __repr__(self) -> str:
        return (f"StatePaths(data={self.data!r}, run={self.run!r}, log={self.log!r}, "
                f"base={self.base!r})")

    def _fields(self) -> tuple[str, str, str, str | None]:
        return self.data, self.run, self.log, self.base

    @property
    def containers(self) -> str:
        return os.path.join(self.data, "containers")

    def container_dir(self, container_id: str) -> str:
        return os.path.join(self.containers, container_id)

    @classmethod
    def under(cls, root: str | os.PathLike[str]) -> StatePaths:
        base = os.path.abspath(root)
        return cls(data=os.path.join(base, "data"), run=os.path.join(base, "run"),
                   log=os.path.join(base, "log"), base=base)

    @classmethod
    def default(cls, environ: dict[str, str] | None = None, uid: int | None = None) -> StatePaths:
        env = dict(os.environ) if environ is None else environ
        if env.get("MYCTR_ROOT"):
            return cls.under(env["MYCTR_ROOT"])
        uid = os.geteuid() if uid is None else uid
        if uid == 0:
            return cls("/var/lib/myctr", "/run/myctr", "/var/log/myctr")
        home = env.get("HOME") or f"/tmp/myctr-{uid}"
        data = os.path.join(env.get("XDG_DATA_HOME") or f"{home}/.local/share", "myctr")
        state = os.path.join(env.get("XDG_STATE_HOME") or f"{home}/.local/state", "myctr")
        runtime_dir = env.get("XDG_RUNTIME_DIR")
        run = os.path.join(runtime_dir, "myctr") if runtime_dir else f"/tmp/myctr-run-{uid}"
        return cls(data=data, run=run, log=os.path.join(state, "logs"))

    def ensure(self) -> None:
        """Create the directories; data and containers are traversable (0711) so that a
        container root mapped to another host id (``--uidmap``) reaches its own dirs."""
        for path in (self.data, self.containers):
            os.makedirs(path, mode=0o711, exist_ok=True)
            os.chmod(path, 0o711)
        spread_subdirectories(self.containers)
        for path in (self.run, self.log):
            os.makedirs(path, mode=0o700, exist_ok=True)


FS_IOC_GETFLAGS = 0x80086601
FS_IOC_SETFLAGS = 0x40086602
FS_TOPDIR_FL = 0x00020000


def spread_subdirectories(path: str) -> bool:
    """Mark ``path`` a top of a directory hierarchy (``chattr +T``): ext2/3/4 then
    place each new subdirectory (a container's) in a block group of its own (the
    Orlov allocator), not all in the group of ``path``. Without a journal, ext4 skips
    each inode of its group deleted within the last minute (or five) when it
    allocates one; with containers made and removed by the hundred, every new inode
    scanned thousands (~1 ms of each container start here). Best effort: False where
    the file system has no such flag (xfs, btrfs, tmpfs)."""
    import fcntl
    import struct

    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        flags = struct.unpack("i", fcntl.ioctl(fd, FS_IOC_GETFLAGS, bytes(4)))[0]
        if not flags & FS_TOPDIR_FL:
            fcntl.ioctl(fd, FS_IOC_SETFLAGS, struct.pack("i", flags | FS_TOPDIR_FL))
        return True
    except OSError:
        return False
    finally:
        os.close(fd)
