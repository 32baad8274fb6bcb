"""Unpack one image layer (a tar stream, gzip-compressed or not) into a directory that
overlayfs can use as a lower dir — without ever writing outside it.

Safety, whatever the archive says:

- member names are normalised; an absolute name or one with a ``..`` component is
  refused (the whole layer, not just the member);
- every parent directory is opened with ``openat2(RESOLVE_BENEATH |
  RESOLVE_NO_SYMLINKS)`` from the destination: a symlink the archive planted (or any
  other) is never followed, so "symlink ``a`` -> /etc, then file ``a/passwd``" fails;
- files are created with ``O_NOFOLLOW | O_EXCL`` after removing what was there, so a
  planted symlink cannot redirect a later file either;
- a hard link's target must be a member path inside the layer, resolved the same way;
- the uncompressed size and the number of members are bounded (a decompression bomb
  stops at the limit).

A refused layer raises :class:`LayerError` and the caller removes the directory.

Whiteouts become overlayfs's own format, so layers stack as lower dirs: ``.wh.NAME``
becomes a 0/0 character device ``NAME`` (allowed without CAP_MKNOD since Linux 5.8),
``.wh..wh..opq`` sets ``trusted.overlay.opaque=y`` on its directory (rootless:
``user.overlay.opaque``, for overlay's ``userxattr`` mode). Device nodes are skipped with
a warning when we may not make them (rootless); ownership is applied as stored, so a
rootless caller runs this inside a user namespace with the image's id map.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import posixpath
import stat
import tarfile
from collections.abc import Iterator
from typing import IO, Any, NamedTuple

from .. import libc
from ..errors import ContainerError

WHITEOUT_PREFIX = ".wh."
MAX_DEPTH = 256  # path components of a member
MAX_HEADER = 1 << 20  # a PAX or GNU long-name header is read into memory whole
OPAQUE_MARKER = ".wh..wh..opq"
SYS_OPENAT2 = 437
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08


class LayerError(ContainerError):
    """The layer is refused: it tries to leave its directory or exceeds a limit."""


class Limits(NamedTuple):
    max_bytes: int = 16 << 30  # uncompressed tar stream
    max_members: int = 1_000_000


class Unpacked(NamedTuple):
    members: int
    bytes: int
    skipped: tuple[str, ...]  # what could not be made here (devices rootless), said once
    diff_id: str  # "sha256:..." of the uncompressed tar stream (the OCI config's diff_ids)


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64),
                ("resolve", ctypes.c_uint64)]


def _openat2(dirfd: int, path: str, flags: int, resolve: int) -> int:
    how = _OpenHow(flags=flags | os.O_CLOEXEC, mode=0, resolve=resolve)
    fd = libc._libc.syscall(ctypes.c_long(SYS_OPENAT2), ctypes.c_int(dirfd),
                            os.fsencode(path), ctypes.byref(how),
                            ctypes.c_size_t(ctypes.sizeof(how)))
    if fd == -1:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), path)
    return int(fd)


def member_path(name: str) -> str:
    """The member's path relative to the layer root; LayerError if it would leave it."""
    if name.startswith("/") or "\0" in name:
        raise LayerError(f"layer member {name!r}: absolute paths are refused")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise LayerError(f"layer member {name!r}: '..' is refused")
    if len(parts) > MAX_DEPTH:
        raise LayerError(f"layer member {name[:80]!r}...: deeper than {MAX_DEPTH}; refused")
    return "/".join(parts)


class _Tree:
    """The destination directory, entered only through openat2 without symlinks."""

    def __init__(self, root: str) -> None:
        self.root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)

    def close(self) -> None:
        os.close(self.root_fd)

    def parent(self, path: str, create: bool = True) -> tuple[int, str]:
        """(fd of ``path``'s parent directory, base name); parents are made as needed."""
        parent, base = posixpath.split(path)
        if not parent:
            return os.dup(self.root_fd), base
        try:
            return self._open_dir(parent), base
        except FileNotFoundError:
            if not create:
                raise
        fd = os.dup(self.root_fd)
        for part in parent.split("/"):
            with contextlib.suppress(FileExistsError):
                os.mkdir(part, 0o755, dir_fd=fd)
            try:
                next_fd = _openat2(fd, part, os.O_RDONLY | os.O_DIRECTORY,
                                   RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)
            finally:
                os.close(fd)
            fd = next_fd
        return fd, base

    def _open_dir(self, path: str) -> int:
        try:
            return _openat2(self.root_fd, path, os.O_RDONLY | os.O_DIRECTORY,
                            RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.EXDEV, errno.ENOTDIR):
                raise LayerError(f"layer member below {path!r}: its parent is a symlink "
                                 "or not a directory; refused") from None
            raise


def _remove(dirfd: int, base: str) -> None:
    """Make room for a member: what is there goes (a directory only if it is empty
    and the member is not a directory: tar semantics)."""
    try:
        st = os.stat(base, dir_fd=dirfd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        _rmtree_at(dirfd, base)
    else:
        os.unlink(base, dir_fd=dirfd)


def _rmtree_at(dirfd: int, base: str) -> None:
    fd = _openat2(dirfd, base, os.O_RDONLY | os.O_DIRECTORY,
                  RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)
    try:
        for entry in os.listdir(fd):
            st = os.stat(entry, dir_fd=fd, follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode):
                _rmtree_at(fd, entry)
            else:
                os.unlink(entry, dir_fd=fd)
    finally:
        os.close(fd)
    os.rmdir(base, dir_fd=dirfd)


class _BoundedTarInfo(tarfile.TarInfo):
    """Refuses extended headers larger than MAX_HEADER before tarfile reads them into
    memory (a 64 KiB gzip can hold a 64 MiB PAX record)."""

    def _proc_pax(self, tarfile: tarfile.TarFile) -> tarfile.TarInfo:
        _check_header(self)
        return super()._proc_pax(tarfile)  # type: ignore[misc,no-any-return]

    def _proc_gnulong(self, tarfile: tarfile.TarFile) -> tarfile.TarInfo:
        _check_header(self)
        return super()._proc_gnulong(tarfile)  # type: ignore[misc,no-any-return]


def _check_header(info: tarfile.TarInfo) -> None:
    if info.size > MAX_HEADER:
        raise LayerError(f"layer header of {info.size} bytes; refused")


class _Counted:
    """A read-only stream that stops at ``limit`` bytes (a decompression bomb)."""

    def __init__(self, raw: IO[bytes], limit: int) -> None:
        import hashlib

        self.raw, self.limit, self.count = raw, limit, 0
        self.sha256 = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size)
        self.count += len(data)
        self.sha256.update(data)
        if self.count > self.limit:
            raise LayerError(f"layer larger than {self.limit} bytes uncompressed; refused")
        return data


def _members(counted: _Counted, limits: Limits) -> Iterator[tuple[tarfile.TarInfo,
                                                                   tarfile.TarFile]]:
    try:
        archive = tarfile.open(fileobj=counted, mode="r|",  # type: ignore[call-overload]  # noqa: SIM115 - closed below
                               tarinfo=_BoundedTarInfo)
    except tarfile.TarError as exc:
        raise LayerError(f"not a tar archive: {exc}") from None
    with archive:
        count = 0
        try:
            for info in archive:
                count += 1
                if count > limits.max_members:
                    raise LayerError(f"layer has more than {limits.max_members} members; "
                                     "refused")
                yield info, archive
            while counted.read(1 << 20):  # the end padding belongs to the digest too
                pass
        except (tarfile.TarError, EOFError, OSError) as exc:
            if isinstance(exc, LayerError):
                raise
            raise LayerError(f"broken layer archive: {exc}") from None


DEFAULT_LIMITS = Limits()


def unpack(stream: IO[bytes], dest: str, limits: Limits = DEFAULT_LIMITS,
           rootless: bool = False) -> Unpacked:
    """Unpack the layer ``stream`` into the existing empty directory ``dest``. Any
    refusal or failure raises LayerError (the caller removes ``dest``)."""
    import gzip
    import io

    wrapped = not hasattr(stream, "peek")
    buffered: Any = io.BufferedReader(stream) if wrapped else stream
    tree = _Tree(dest)
    skipped: list[str] = []
    dirs: dict[str, tuple[float, int]] = {}  # path -> (mtime, mode); the last entry wins
    members = 0
    try:
        compressed = buffered.peek(2)[:2] == b"\x1f\x8b"
        source: Any = gzip.GzipFile(fileobj=buffered) if compressed else buffered
        counted = _Counted(source, limits.max_bytes)
        for info, archive in _members(counted, limits):
            members += 1
            try:
                _member(tree, info, archive, rootless, dirs, skipped, counted)
            except LayerError:
                raise
            except (tarfile.TarError, EOFError, OSError, RecursionError) as exc:
                raise LayerError(f"layer member {info.name!r}: {exc}") from None
        # Directory modes and times last (their contents changed them), deepest first,
        # each opened without following symlinks: a later member may have replaced it.
        for path in sorted(dirs, key=lambda p: -p.count("/")):
            mtime, mode = dirs[path]
            try:
                dfd = _openat2(tree.root_fd, path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW,
                               RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.ENOENT, errno.EXDEV):
                    continue  # no longer that directory
                raise LayerError(f"layer directory {path!r}: {exc.strerror}") from None
            try:
                os.chmod(dfd, stat.S_IMODE(mode))
                os.utime(dfd, (mtime, mtime))
            finally:
                os.close(dfd)
    finally:
        tree.close()
        if wrapped:
            buffered.detach()  # the caller's stream stays open: it is the caller's
    return Unpacked(members, counted.count, tuple(skipped),
                    "sha256:" + counted.sha256.hexdigest())


_KNOWN_TYPES = (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE,
                tarfile.LNKTYPE, tarfile.FIFOTYPE, tarfile.CHRTYPE, tarfile.BLKTYPE,
                tarfile.CONTTYPE)


def _member(tree: _Tree, info: tarfile.TarInfo, archive: tarfile.TarFile, rootless: bool,
            dirs: dict[str, tuple[float, int]], skipped: list[str], counted: _Counted) -> None:
    path = member_path(info.name)
    if not path:
        return  # the root itself
    if info.sparse is not None or any(k.startswith("GNU.sparse") for k in info.pax_headers):
        raise LayerError(f"layer member {info.name!r}: sparse files are refused")
    base = posixpath.basename(path)
    xattr_ns = "user" if rootless else "trusted"
    if base == OPAQUE_MARKER:
        fd, _ = tree.parent(path)  # the directory it marks (made if need be)
        try:
            os.setxattr(fd, f"{xattr_ns}.overlay.opaque", b"y")
        finally:
            os.close(fd)
        return
    if base.startswith(WHITEOUT_PREFIX):
        hidden = base[len(WHITEOUT_PREFIX):]
        if hidden in ("", ".", "..") or hidden.startswith(WHITEOUT_PREFIX):
            raise LayerError(f"layer member {info.name!r}: not a valid whiteout")
        fd, _ = tree.parent(path)
        try:
            _remove(fd, hidden)
            os.mknod(hidden, stat.S_IFCHR | 0o000, os.makedev(0, 0), dir_fd=fd)
        finally:
            os.close(fd)
        _forget_below(dirs, posixpath.join(posixpath.dirname(path), hidden))
        return
    if info.type not in _KNOWN_TYPES:
        skipped.append(path)  # what was there stays
        return
    if not info.isdir():
        _forget_below(dirs, path)
    fd, base = tree.parent(path)
    try:
        made = _make(tree, fd, base, path, info, archive, rootless, counted)
        if made is None:
            skipped.append(path)
            return
        _finish(fd, base, info, rootless)
        if info.isdir():
            dirs[path] = (info.mtime, info.mode)
    finally:
        os.close(fd)


def _forget_below(dirs: dict[str, tuple[float, int]], path: str) -> None:
    """``path`` is no longer a directory: its (and its children's) modes are moot."""
    for known in [d for d in dirs if d == path or d.startswith(path + "/")]:
        del dirs[known]


def _make(tree: _Tree, fd: int, base: str, path: str, info: tarfile.TarInfo,
          archive: tarfile.TarFile, rootless: bool, counted: _Counted) -> bool | None:
    """Make the member; None when it cannot be made here (a device, rootless)."""
    if info.isdir():
        try:
            st = os.stat(base, dir_fd=fd, follow_symlinks=False)
            if not stat.S_ISDIR(st.st_mode):
                os.unlink(base, dir_fd=fd)
                os.mkdir(base, 0o700, dir_fd=fd)
        except FileNotFoundError:
            os.mkdir(base, 0o700, dir_fd=fd)
        return True
    if info.islnk():
        target = member_path(info.linkname)
        if not target:
            raise LayerError(f"layer member {info.name!r}: hard link to the layer root")
        if target == path:
            return True  # a link to itself: already there
        target_fd, target_base = tree.parent(target, create=False)
        try:
            _remove(fd, base)
            os.link(target_base, base, src_dir_fd=target_fd, dst_dir_fd=fd,
                    follow_symlinks=False)
        except FileNotFoundError:
            raise LayerError(f"layer member {info.name!r}: hard link to {info.linkname!r}, "
                             "which the layer does not hold") from None
        finally:
            os.close(target_fd)
        return True  # a link shares its target's owner, mode and times
    _remove(fd, base)
    if info.isreg():
        out = os.open(base, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                      | os.O_CLOEXEC, 0o600, dir_fd=fd)
        try:
            source = archive.extractfile(info)
            if source is not None:
                while chunk := source.read(1 << 20):
                    os.write(out, chunk)
            _chown_fd(out, info, rootless)
            os.fchmod(out, stat.S_IMODE(info.mode))
            os.utime(out, (info.mtime, info.mtime))
        finally:
            os.close(out)
    elif info.issym():
        os.symlink(info.linkname, base, dir_fd=fd)
    elif info.isfifo():
        os.mkfifo(base, 0o600, dir_fd=fd)
    elif info.ischr() or info.isblk():
        kind = stat.S_IFCHR if info.ischr() else stat.S_IFBLK
        try:
            os.mknod(base, kind | 0o600, os.makedev(info.devmajor, info.devminor), dir_fd=fd)
        except PermissionError:
            if rootless:
                return None
            raise
    else:
        return None
    return True


def _chown_fd(fd: int, info: tarfile.TarInfo, rootless: bool) -> None:
    try:
        os.fchown(fd, info.uid, info.gid)
    except OSError as exc:
        if not (rootless and exc.errno == errno.EINVAL):  # an id outside our map
            raise


def _finish(fd: int, base: str, info: tarfile.TarInfo, rootless: bool) -> None:
    """Owner, xattrs, mode and times of a member just made: never through a symlink
    (a regular file got its own through its fd; hard links share their target's)."""
    if info.islnk():
        return
    if not info.isreg():
        try:
            os.chown(base, info.uid, info.gid, dir_fd=fd, follow_symlinks=False)
        except OSError as exc:
            if not (rootless and exc.errno == errno.EINVAL):  # an id outside our map
                raise
    for key, value in (info.pax_headers or {}).items():
        if not key.startswith("SCHILY.xattr."):
            continue
        name = key[len("SCHILY.xattr."):]
        if ".overlay." in name or (rootless and not name.startswith("user.")):
            continue  # overlay's own attributes come from whiteouts only
        with contextlib.suppress(OSError):
            os.setxattr(f"/proc/self/fd/{fd}/{base}", name,
                        value.encode("utf-8", "surrogateescape")
                        if isinstance(value, str) else value, follow_symlinks=False)
    if info.issym():
        with contextlib.suppress(OSError):
            os.utime(base, (info.mtime, info.mtime), dir_fd=fd, follow_symlinks=False)
        return
    if info.isfifo() or info.ischr() or info.isblk():
        node = os.open(base, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
        try:
            os.chmod(f"/proc/self/fd/{node}", stat.S_IMODE(info.mode))
            os.utime(f"/proc/self/fd/{node}", (info.mtime, info.mtime))
        finally:
            os.close(node)
