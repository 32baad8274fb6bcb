"""The container directory: atomic writes, /etc files, removal."""

from __future__ import annotations

import fcntl
import os
import struct
import tempfile
from pathlib import Path

import pytest

from runtime import containerdir
from runtime.containerdir import ContainerDir
from runtime.paths import FS_IOC_GETFLAGS, FS_TOPDIR_FL, StatePaths, spread_subdirectories


class TestFiles:
    def test_atomic_write_leaves_no_temp(self, tmp_path: Path) -> None:
        """atomic_write replaces the file and leaves no temporary behind."""
        target = tmp_path / "f"
        containerdir.atomic_write(str(target), b"one")
        containerdir.atomic_write(str(target), b"two", durable=False)
        assert target.read_bytes() == b"two" and os.listdir(tmp_path) == ["f"]

    def test_etc_files_and_remove(self, tmp_path: Path) -> None:
        """The /etc files name the host; remove takes the whole directory."""
        paths = StatePaths.under(tmp_path)
        paths.ensure()
        cdir = ContainerDir(paths, containerdir.new_id())
        cdir.make_dirs()
        files = cdir.write_etc_files({"hostname": "box\n", "hosts": "127.0.1.1\tbox\n"})
        assert Path(files["/etc/hostname"]).read_text() == "box\n"
        assert Path(files["/etc/hosts"]).read_text() == "127.0.1.1\tbox\n"
        cdir.remove()
        assert not os.path.exists(cdir.path)

    def test_etc_files_rewritten_whole(self, tmp_path: Path) -> None:
        """A rewrite replaces each file (a new inode: a run that bound the old one
        keeps it whole); the first write makes it in place, with no temporary."""
        paths = StatePaths.under(tmp_path)
        paths.ensure()
        cdir = ContainerDir(paths, containerdir.new_id())
        cdir.make_dirs()
        hosts = cdir.write_etc_files({"hosts": "one\n"})["/etc/hosts"]
        first = os.stat(hosts).st_ino
        kept = os.open(hosts, os.O_RDONLY)  # as a bind mount holds it
        try:
            cdir.write_etc_files({"hosts": "two\n"})
            assert os.stat(hosts).st_ino != first
            assert os.pread(kept, 100, 0) == b"one\n"
        finally:
            os.close(kept)
        assert Path(hosts).read_text() == "two\n"
        assert sorted(os.listdir(cdir.path)) == ["hosts", "merged", "upper", "work"]

    def test_process_start_time_names_a_live_process(self) -> None:
        """Our own start time is known and stable; a dead pid has none."""
        assert containerdir.process_start_time(os.getpid()) > 0
        assert containerdir.process_start_time(2**22 + 1) == 0


def _dir_flags(path: str) -> int:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        return int(struct.unpack("i", fcntl.ioctl(fd, FS_IOC_GETFLAGS, bytes(4)))[0])
    finally:
        os.close(fd)


def test_containers_dir_spreads_its_subdirectories(tmp_path: Path) -> None:
    """ensure() marks the containers dir +T (ext4: each container dir in a block group
    of its own); where the file system has no such flag it goes on without."""
    probe = tmp_path / "probe"
    probe.mkdir()
    if not spread_subdirectories(str(probe)):
        pytest.skip(f"the file system of {tmp_path} has no FS_TOPDIR_FL (not ext2/3/4)")
    paths = StatePaths.under(tmp_path / "root")
    paths.ensure()
    assert _dir_flags(paths.containers) & FS_TOPDIR_FL
    assert not _dir_flags(paths.data) & FS_TOPDIR_FL
    paths.ensure()  # again: already set, still fine
    assert _dir_flags(paths.containers) & FS_TOPDIR_FL


def test_spreading_is_best_effort(tmp_path: Path) -> None:
    assert spread_subdirectories(str(tmp_path / "missing")) is False
    shm = Path("/dev/shm")
    if shm.is_dir():  # tmpfs (no FS_TOPDIR_FL here): an answer, not an error
        with tempfile.TemporaryDirectory(dir=shm) as d:
            assert spread_subdirectories(d) in (True, False)
