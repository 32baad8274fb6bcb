"""Make layer tarballs: the diff of a container's overlay upper dir (RUN), and the files
of a COPY or ADD step.

A diff turns overlayfs's own marks back into the OCI layer format: a 0/0 character
device ``NAME`` (a deleted file) becomes the whiteout ``.wh.NAME``, a directory marked
opaque (``trusted.overlay.opaque`` or, rootless, ``user.overlay.opaque``) gets a
``.wh..wh..opq`` entry. Entries are written in sorted order with their own mtimes,
uid/gid (rootless this runs in a user namespace with the image's map, so ids are the
container's), modes and hard links, so the same tree always gives the same diff_id.

COPY/ADD follow docker: a directory source copies its contents; a file goes to
``DEST/NAME`` when DEST ends in ``/``, is a directory in the image, or there are
several sources, else to DEST itself; context files belong to 0:0 unless ``--chown``
(a user without a group gets the uid as gid); ``--from`` sources keep their owners;
ADD extracts a local tar archive (plain, gzip, bzip2, xz) into DEST. Parent
directories of DEST appear with the metadata they have in the image (or 0755 root when
new), so a layer never changes them by accident.

The tree views given here are plain directories: the caller (the zygote, in a private
mount namespace) mounts the image's layers as one read-only overlay first.
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import io
import os
import posixpath
import stat
import tarfile
from collections.abc import Callable, Iterator
from typing import IO, Any, NamedTuple

from ..errors import SpecError

OPAQUE_XATTRS = ("trusted.overlay.opaque", "user.overlay.opaque")
KEEP_XATTRS = ("security.capability",)
WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"
# files the runtime bind-mounts its own /etc files on (made empty when the image lacks
# them): a RUN step's writes to them go to the container's files, never the upper dir
RUNTIME_MOUNTPOINTS = frozenset({"etc/hosts", "etc/hostname", "etc/resolv.conf"})


class _Hashing(io.RawIOBase):
    """A write-only file that hashes what goes through it."""

    def __init__(self, f: IO[bytes]) -> None:
        self.f = f
        self.digest = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        data = bytes(data)
        self.digest.update(data)
        self.f.write(data)
        self.size += len(data)
        return len(data)


class _Writer:
    def __init__(self, out: IO[bytes]) -> None:
        self.hashing = _Hashing(out)
        self.tar = tarfile.open(  # noqa: SIM115 - closed by close()
            fileobj=self.hashing, mode="w|", format=tarfile.PAX_FORMAT)
        self.links: dict[tuple[int, int], str] = {}
        self.seen: set[str] = set()

    def add(self, path: str, name: str, st: os.stat_result | None = None,
            owner: tuple[int, int] | None = None) -> None:
        """One file system entry ``path`` as member ``name`` (no trailing slash)."""
        st = st or os.lstat(path)
        info = tarfile.TarInfo(name)
        info.mode = stat.S_IMODE(st.st_mode)
        info.uid, info.gid = owner if owner is not None else (st.st_uid, st.st_gid)
        info.mtime = int(st.st_mtime)
        info.uname = info.gname = ""
        fileobj = None
        if stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
            key = (st.st_dev, st.st_ino)
            if key in self.links:
                info.type, info.linkname = tarfile.LNKTYPE, self.links[key]
                self._write(info)
                return
            self.links[key] = name
        if stat.S_ISREG(st.st_mode):
            info.size = st.st_size
            fileobj = open(path, "rb")  # noqa: SIM115 - closed below
        elif stat.S_ISDIR(st.st_mode):
            info.type = tarfile.DIRTYPE
        elif stat.S_ISLNK(st.st_mode):
            info.type, info.linkname = tarfile.SYMTYPE, os.readlink(path)
        elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
            info.type = tarfile.CHRTYPE if stat.S_ISCHR(st.st_mode) else tarfile.BLKTYPE
            info.devmajor, info.devminor = os.major(st.st_rdev), os.minor(st.st_rdev)
        elif stat.S_ISFIFO(st.st_mode):
            info.type = tarfile.FIFOTYPE
        else:
            return  # sockets have no place in a layer
        xattrs = _xattrs(path)
        if xattrs:
            info.pax_headers = {f"SCHILY.xattr.{k}": v.decode("latin-1")
                                for k, v in xattrs.items()}
        try:
            self._write(info, fileobj)
        finally:
            if fileobj is not None:
                fileobj.close()

    def marker(self, name: str) -> None:
        """An empty regular file: a whiteout or an opaque marker."""
        info = tarfile.TarInfo(name)
        info.mode = 0o600
        info.uname = info.gname = ""
        self._write(info)

    def _write(self, info: tarfile.TarInfo, fileobj: IO[bytes] | None = None) -> None:
        if info.name in self.seen:
            return
        self.seen.add(info.name)
        self.tar.addfile(info, fileobj)

    def close(self) -> str:
        self.tar.close()
        return "sha256:" + self.hashing.digest.hexdigest()


def _xattrs(path: str) -> dict[str, bytes]:
    found = {}
    for key in KEEP_XATTRS:
        with contextlib.suppress(OSError):
            found[key] = os.getxattr(path, key, follow_symlinks=False)
    return found


def _opaque(path: str) -> bool:
    for key in OPAQUE_XATTRS:
        try:
            if os.getxattr(path, key, follow_symlinks=False) == b"y":
                return True
        except OSError:
            pass
    return False


def _is_whiteout(st: os.stat_result) -> bool:
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


# --- RUN: the upper dir's diff ------------------------------------------------------

def pack_diff(upper: str, out: IO[bytes]) -> str:
    """Write ``upper`` as an OCI layer tar to ``out``; its diff_id."""
    writer = _Writer(out)

    def walk(path: str, name: str) -> None:
        for entry in sorted(os.listdir(path)):
            full = os.path.join(path, entry)
            member = f"{name}/{entry}" if name else entry
            st = os.lstat(full)
            if member in RUNTIME_MOUNTPOINTS and stat.S_ISREG(st.st_mode) and not st.st_size:
                continue  # made empty by the runtime to bind its own file on, not the step
            if _is_whiteout(st):
                writer.marker(_join(name, WHITEOUT + entry))
                continue
            writer.add(full, member, st)
            if stat.S_ISDIR(st.st_mode):
                if _opaque(full):
                    writer.marker(f"{member}/{OPAQUE}")
                walk(full, member)

    walk(upper, "")
    return writer.close()


def _join(parent: str, name: str) -> str:
    return f"{parent}/{name}" if parent else name


# --- COPY / ADD -----------------------------------------------------------------------

class CopyJob(NamedTuple):
    sources: tuple[str, ...]  # as written: relative to the context (or the stage's /)
    dest: str  # as written: absolute, or relative to workdir; a trailing / means a dir
    workdir: str
    chown: str | None  # "user[:group]" (names looked up in the image's /etc files)
    chmod: str | None  # octal
    add: bool  # ADD: extract local archives
    keep_owner: bool  # COPY --from: sources keep their uid/gid


def pack_copy(job: CopyJob, source_root: str, image_root: str | None, out: IO[bytes],
              ignored: Callable[[str], bool] = lambda _: False) -> str:
    """Write the layer of a COPY/ADD: files under ``source_root`` (the build context,
    or a stage's root) into an image whose merged root is ``image_root`` (None:
    ``scratch``). ``ignored(relpath)`` is the .containerignore test; its diff_id."""
    matches: list[str] = []
    for pattern in job.sources:
        found = _glob(source_root, pattern, ignored)
        if not found:
            raise SpecError(f"{pattern}: no source files were specified"
                            if not pattern.strip("/") else
                            f"{pattern}: no such file or directory in the "
                            + ("stage" if job.keep_owner else "build context"))
        matches.extend(found)
    dest = job.dest if job.dest.startswith("/") else posixpath.join(job.workdir or "/", job.dest)
    dest_dir = job.dest.endswith("/") or job.dest in (".", "./")
    if len(matches) > 1 and not dest_dir and not _is_dir(image_root, dest):
        raise SpecError("when copying several sources, the destination must be a "
                        "directory and end with a /")
    owner = _owner(job.chown, image_root) if job.chown else None
    mode = int(job.chmod, 8) if job.chmod else None
    writer = _Writer(out)
    dest = posixpath.normpath(dest)
    for rel in matches:
        full = os.path.join(source_root, rel) if rel else source_root
        st = os.lstat(full)
        if stat.S_ISDIR(st.st_mode):
            target = dest
            _parents(writer, image_root, target, owner, include_self=True)
            _tree(writer, full, rel, target, owner, mode, job.keep_owner, ignored)
        elif job.add and _is_archive(full):
            target = dest
            _parents(writer, image_root, target, owner, include_self=True)
            _extract(writer, full, target)
        else:
            into_dir = dest_dir or len(matches) > 1 or _is_dir(image_root, dest)
            target = posixpath.join(dest, posixpath.basename(rel)) if into_dir else dest
            _parents(writer, image_root, posixpath.dirname(target), owner if into_dir else None,
                     include_self=True)
            if mode is not None and not stat.S_ISLNK(st.st_mode):
                st = _with_mode(st, mode)
            writer.add(full, target.lstrip("/"), st, _owner_of(st, owner, job.keep_owner))
    return writer.close()


def _owner_of(st: os.stat_result, owner: tuple[int, int] | None,
              keep: bool) -> tuple[int, int]:
    if owner is not None:
        return owner
    return (st.st_uid, st.st_gid) if keep else (0, 0)


def _with_mode(st: os.stat_result, mode: int) -> os.stat_result:
    """``--chmod``: the entry as if it had ``mode``."""
    return os.stat_result((stat.S_IFMT(st.st_mode) | mode, *st[1:]))


def _tree(writer: _Writer, full: str, rel: str, target: str, owner: tuple[int, int] | None,
          mode: int | None, keep: bool, ignored: Callable[[str], bool]) -> None:
    for entry in sorted(os.listdir(full)):
        path = os.path.join(full, entry)
        relpath = f"{rel}/{entry}" if rel else entry
        if not keep and ignored(relpath) and (
                not os.path.isdir(path) or not _has_unignored(path, relpath, ignored)):
            continue
        st = os.lstat(path)
        member = f"{target}/{entry}".lstrip("/")
        if mode is not None and not stat.S_ISLNK(st.st_mode):
            st = _with_mode(st, mode)
        writer.add(path, member, st, _owner_of(st, owner, keep))
        if stat.S_ISDIR(st.st_mode):
            _tree(writer, path, relpath, f"{target}/{entry}", owner, mode, keep, ignored)


def _has_unignored(path: str, rel: str, ignored: Callable[[str], bool]) -> bool:
    """An ignored directory is still walked when an exception (``!``) keeps a file in it."""
    for dirpath, dirnames, filenames in os.walk(path):
        for name in (*filenames, *dirnames):
            sub = os.path.relpath(os.path.join(dirpath, name), os.path.dirname(path))
            base = rel.rsplit("/", 1)[0] if "/" in rel else ""
            if not ignored(f"{base}/{sub}" if base else sub):
                return True
    return False


def _parents(writer: _Writer, image_root: str | None, path: str,
             owner: tuple[int, int] | None, include_self: bool) -> None:
    """Directory entries for ``path`` and its parents: as they are in the image, or
    new (0755, root; the last one ``owner`` when given)."""
    parts = [p for p in posixpath.normpath(path).split("/") if p]
    for i in range(len(parts) if include_self else len(parts) - 1):
        name = "/".join(parts[:i + 1])
        here = _lookup(image_root, name)
        if here is not None and stat.S_ISDIR(here.st_mode):
            assert image_root is not None
            writer.add(os.path.join(image_root, name), name, here)
        elif here is not None and stat.S_ISLNK(here.st_mode):
            raise SpecError(f"/{name} is a symbolic link in the image: COPY does not "
                            "follow it")
        else:
            info = tarfile.TarInfo(name)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            info.uid, info.gid = owner if owner and i == len(parts) - 1 else (0, 0)
            info.uname = info.gname = ""
            writer._write(info)


def _lookup(image_root: str | None, name: str) -> os.stat_result | None:
    if image_root is None:
        return None
    try:
        st = os.lstat(os.path.join(image_root, name))
    except OSError:
        return None
    return None if _is_whiteout(st) else st


def _is_dir(image_root: str | None, path: str) -> bool:
    st = _lookup(image_root, path.strip("/"))
    return st is not None and stat.S_ISDIR(st.st_mode)


def _glob(root: str, pattern: str, ignored: Callable[[str], bool]) -> list[str]:
    """Sources matching ``pattern`` (docker's filepath.Match per component), relative
    to ``root``, never outside it."""
    clean = posixpath.normpath("/" + pattern).lstrip("/")
    if clean in ("", "."):
        return [""]
    parts = clean.split("/")
    found = [""]
    for part in parts:
        nxt = []
        for base in found:
            here = os.path.join(root, base) if base else root
            if not any(c in part for c in "*?["):
                if os.path.lexists(os.path.join(here, part)):
                    nxt.append(_join(base, part))
                continue
            try:
                names = sorted(os.listdir(here))
            except OSError:
                continue
            nxt.extend(_join(base, n) for n in names if fnmatch.fnmatchcase(n, part))
        found = nxt
    for rel in found:  # a symlink in the source path must not lead out of the root
        real = os.path.realpath(os.path.join(root, rel))
        if real != os.path.realpath(root) and not real.startswith(
                os.path.realpath(root) + "/"):
            if os.path.islink(os.path.join(root, rel)) and rel.count("/") == 0:
                continue  # the link itself is copied, not followed
            raise SpecError(f"{pattern}: leads outside the build context")
    return [rel for rel in found if not (rel and ignored(rel)) or os.path.isdir(
        os.path.join(root, rel))]


def _owner(spec: str, image_root: str | None) -> tuple[int, int]:
    """``--chown=user[:group]``: names from the image's /etc/passwd and /etc/group; a
    user without a group gives its uid as the gid, as docker does."""
    from ..users import parse_group, parse_passwd

    user, _, group = spec.partition(":")

    def read(name: str) -> str:
        if image_root is None:
            return ""
        try:
            with open(os.path.join(image_root, "etc", name)) as f:
                return f.read()
        except OSError:
            return ""

    if user.isdigit():
        uid = int(user)
    else:
        entries = [e for e in parse_passwd(read("passwd")) if e.name == user]
        if not entries:
            raise SpecError(f"--chown={spec}: no user {user!r} in the image's /etc/passwd")
        uid = entries[0].uid
    if not group:
        return uid, uid
    if group.isdigit():
        return uid, int(group)
    groups = [g for g in parse_group(read("group")) if g.name == group]
    if not groups:
        raise SpecError(f"--chown={spec}: no group {group!r} in the image's /etc/group")
    return uid, groups[0].gid


_ARCHIVE_MAGIC = (b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00")


def _is_archive(path: str) -> bool:
    """ADD extracts what is a tar archive (plain or compressed), by its content."""
    try:
        with open(path, "rb") as f:
            head = f.read(512)
    except OSError:
        return False
    if head.startswith(_ARCHIVE_MAGIC):
        return True
    return len(head) == 512 and head[257:262] == b"ustar"


def _extract(writer: _Writer, path: str, target: str) -> None:
    """ADD of a local archive: its members, re-rooted at ``target`` (names made safe;
    the layer is unpacked by the same guarded unpacker as every other)."""
    with tarfile.open(path, "r:*") as archive:
        for info in archive:
            name = posixpath.normpath("/" + info.name).lstrip("/")
            if not name or name == ".":
                continue
            info.name = f"{target}/{name}".lstrip("/")
            if info.islnk():
                link = posixpath.normpath("/" + info.linkname).lstrip("/")
                info.linkname = f"{target}/{link}".lstrip("/")
            fileobj = archive.extractfile(info) if info.isreg() else None
            writer._write(info, fileobj)


def members(tar: IO[bytes]) -> Iterator[str]:
    """Member names of a layer (for tests and history)."""
    with tarfile.open(fileobj=tar, mode="r|*") as archive:
        for info in archive:
            yield info.name


def source_digest(sources: tuple[str, ...], root: str,
                  ignored: Callable[[str], bool] = lambda _: False) -> str:
    """The cache identity of COPY/ADD sources in the build context: names, types,
    modes, symlink targets and contents of what would be copied — not mtimes, not
    owners (context files are copied as 0:0 or --chown), not ignored files. A
    missing source gives a digest too; the step itself reports it."""
    digest = hashlib.sha256()

    def feed(*parts: object) -> None:
        digest.update(repr(parts).encode() + b"\0")

    def entry(path: str, rel: str) -> None:
        st = os.lstat(path)
        if stat.S_ISREG(st.st_mode):
            h = hashlib.sha256()
            with open(path, "rb") as f:
                while chunk := f.read(1 << 20):
                    h.update(chunk)
            feed(rel, "f", stat.S_IMODE(st.st_mode), h.hexdigest())
        elif stat.S_ISLNK(st.st_mode):
            feed(rel, "l", os.readlink(path))
        elif stat.S_ISDIR(st.st_mode):
            feed(rel, "d", stat.S_IMODE(st.st_mode))
            for name in sorted(os.listdir(path)):
                sub = f"{rel}/{name}" if rel else name
                if ignored(sub) and not (os.path.isdir(os.path.join(path, name))
                                         and _has_unignored(os.path.join(path, name), sub,
                                                            ignored)):
                    continue
                entry(os.path.join(path, name), sub)
        else:
            feed(rel, "o", st.st_mode)

    for pattern in sources:
        feed("pattern", pattern)
        try:
            found = _glob(root, pattern, ignored)
        except SpecError as exc:
            feed("error", str(exc))
            continue
        for rel in found:
            entry(os.path.join(root, rel) if rel else root, rel)
    return digest.hexdigest()
