"""Layer unpacking on the real filesystem: crafted tarballs that try to escape are
refused and write nothing outside; whiteouts become overlayfs's own and really hide
files when the layers are stacked by a real overlay mount."""

from __future__ import annotations

import gzip
import io
import os
import stat
import subprocess
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

from runtime import libc
from runtime.images.layer import LayerError, Limits, unpack

Add = Callable[[tarfile.TarFile], None]


def _tar(*adds: Add, compress: bool = False) -> io.BytesIO:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for add in adds:
            add(archive)
    data = gzip.compress(raw.getvalue()) if compress else raw.getvalue()
    return io.BytesIO(data)


def file(name: str, data: bytes = b"x", mode: int = 0o644, uid: int = 0,
         xattrs: dict[str, str] | None = None) -> Add:
    def add(archive: tarfile.TarFile) -> None:
        info = tarfile.TarInfo(name)
        info.size, info.mode, info.uid, info.gid, info.mtime = len(data), mode, uid, uid, 1_000_000
        if xattrs:
            info.pax_headers = {f"SCHILY.xattr.{k}": v for k, v in xattrs.items()}
        archive.addfile(info, io.BytesIO(data))
    return add


def entry(name: str, kind: bytes, linkname: str = "", mode: int = 0o755,
          major: int = 0, minor: int = 0) -> Add:
    def add(archive: tarfile.TarFile) -> None:
        info = tarfile.TarInfo(name)
        info.type, info.linkname, info.mode, info.mtime = kind, linkname, mode, 1_000_000
        info.devmajor, info.devminor = major, minor
        archive.addfile(info)
    return add


def directory(name: str, mode: int = 0o755) -> Add:
    return entry(name, tarfile.DIRTYPE, mode=mode)


def symlink(name: str, target: str) -> Add:
    return entry(name, tarfile.SYMTYPE, target)


def hardlink(name: str, target: str) -> Add:
    return entry(name, tarfile.LNKTYPE, target)


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    """(the layer's empty destination, an outside directory with a file in it)."""
    dest, outside = tmp_path / "layer", tmp_path / "outside"
    dest.mkdir()
    outside.mkdir()
    (outside / "target").write_text("untouched")
    return dest, outside


def _outside_untouched(outside: Path) -> None:
    assert sorted(p.name for p in outside.iterdir()) == ["target"]
    assert (outside / "target").read_text() == "untouched"


class TestEscapesAreRefused:
    @pytest.mark.parametrize("name", ["../evil", "a/../../evil", "/etc/evil-myctr"])
    def test_dotdot_and_absolute_names(self, dirs: tuple[Path, Path], name: str) -> None:
        dest, outside = dirs
        with pytest.raises(LayerError, match="refused"):
            unpack(_tar(file(name)), str(dest))
        assert not Path("/etc/evil-myctr").exists() and not (dest.parent / "evil").exists()
        _outside_untouched(outside)

    @pytest.mark.parametrize("target", ["{outside}", "../outside", "../../../../../{outside}"])
    def test_symlink_then_file_through_it(self, dirs: tuple[Path, Path], target: str) -> None:
        """The classic: plant a symlink to a directory outside, then write through it."""
        dest, outside = dirs
        link = symlink("a", target.format(outside=outside))
        with pytest.raises(LayerError, match="symlink"):
            unpack(_tar(link, file("a/target", b"pwned")), str(dest))
        _outside_untouched(outside)

    def test_file_replacing_a_planted_symlink_stays_inside(self, dirs: tuple[Path, Path]) -> None:
        dest, outside = dirs
        unpack(_tar(symlink("f", str(outside / "target")), file("f", b"inside")), str(dest))
        assert (dest / "f").read_bytes() == b"inside" and not (dest / "f").is_symlink()
        _outside_untouched(outside)

    @pytest.mark.parametrize("target", ["../outside/target", "/etc/passwd", "missing"])
    def test_hard_links_outside_or_to_nothing(self, dirs: tuple[Path, Path], target: str) -> None:
        dest, outside = dirs
        with pytest.raises(LayerError):
            unpack(_tar(hardlink("h", target)), str(dest))
        assert not (dest / "h").exists()
        _outside_untouched(outside)

    def test_hard_link_through_a_planted_symlink(self, dirs: tuple[Path, Path]) -> None:
        dest, outside = dirs
        with pytest.raises(LayerError, match="symlink"):
            unpack(_tar(symlink("s", str(outside)), hardlink("h", "s/target")), str(dest))
        assert (outside / "target").stat().st_nlink == 1
        _outside_untouched(outside)

    def test_decompression_bomb_stops_at_the_limit(self, dirs: tuple[Path, Path]) -> None:
        dest, _ = dirs
        bomb = _tar(file("zeros", b"\0" * (8 << 20)), compress=True)
        assert len(bomb.getvalue()) < 64 << 10  # 8 MiB of zeros compress to a few KiB
        with pytest.raises(LayerError, match="larger than"):
            unpack(bomb, str(dest), Limits(max_bytes=1 << 20))

    def test_member_count_limit(self, dirs: tuple[Path, Path]) -> None:
        dest, _ = dirs
        with pytest.raises(LayerError, match="more than 10 members"):
            unpack(_tar(*(file(f"f{i}") for i in range(20))), str(dest), Limits(max_members=10))

    def test_directory_replaced_by_a_symlink_keeps_its_mode_inside(
            self, dirs: tuple[Path, Path]) -> None:
        """A directory entry, then a symlink of the same name to a file outside: the
        directory's mode (setuid here) is never applied through the symlink."""
        dest, outside = dirs
        (outside / "target").chmod(0o600)
        unpack(_tar(directory("d", 0o4777), symlink("d", str(outside / "target"))), str(dest))
        assert stat.S_IMODE((outside / "target").stat().st_mode) == 0o600
        assert os.readlink(dest / "d") == str(outside / "target")
        _outside_untouched(outside)

    def test_sparse_members_are_refused(self, dirs: tuple[Path, Path]) -> None:
        """A sparse file's real size is the archive's to choose: refused."""
        def sparse(archive: tarfile.TarFile) -> None:
            info = tarfile.TarInfo("big")
            info.size = 512
            info.pax_headers = {"GNU.sparse.major": "1", "GNU.sparse.minor": "0",
                                "GNU.sparse.name": "big", "GNU.sparse.realsize": str(64 << 20)}
            archive.addfile(info, io.BytesIO(b"1\n0\n512\n".ljust(512, b"\0")))

        with pytest.raises(LayerError, match="sparse"):
            unpack(_tar(sparse), str(dirs[0]), Limits(max_bytes=1 << 20))

    def test_huge_extended_header_is_refused_before_it_is_read(
            self, dirs: tuple[Path, Path]) -> None:
        def pax(archive: tarfile.TarFile) -> None:
            info = tarfile.TarInfo("f")
            info.pax_headers = {"comment": "x" * (4 << 20)}
            archive.addfile(info, io.BytesIO(b""))

        with pytest.raises(LayerError, match="header"):
            unpack(_tar(pax, compress=True), str(dirs[0]))

    def test_truncated_archives_raise_layer_errors(self, dirs: tuple[Path, Path]) -> None:
        whole = _tar(file("a", b"x" * 100_000), compress=True).getvalue()
        for cut in (len(whole) // 2, len(whole) - 10):
            dest = dirs[0] / f"cut{cut}"
            dest.mkdir()
            with pytest.raises(LayerError):
                unpack(io.BytesIO(whole[:cut]), str(dest))

    def test_garbage_is_not_a_layer(self, dirs: tuple[Path, Path]) -> None:
        with pytest.raises(LayerError):
            unpack(io.BytesIO(b"not a tarball at all" * 100), str(dirs[0]))


class TestContent:
    def test_files_links_modes_owners_devices(self, dirs: tuple[Path, Path]) -> None:
        dest, _ = dirs
        result = unpack(_tar(
            directory("etc", 0o750), file("etc/conf", b"hello", 0o640, uid=1234,
                                          xattrs={"user.note": "kept"}),
            hardlink("etc/conf-link", "etc/conf"), symlink("etc/sl", "conf"),
            entry("dev-null", tarfile.CHRTYPE, mode=0o666, major=1, minor=3),
            entry("pipe", tarfile.FIFOTYPE, mode=0o600), file("bin/deep/tool", b"#!", 0o755),
            compress=True), str(dest))
        conf = (dest / "etc" / "conf").stat()
        assert (dest / "etc" / "conf").read_bytes() == b"hello"
        assert (stat.S_IMODE(conf.st_mode), conf.st_uid, conf.st_nlink, conf.st_mtime) == (
            0o640, 1234, 2, 1_000_000)
        assert os.getxattr(dest / "etc" / "conf", "user.note") == b"kept"
        assert os.readlink(dest / "etc" / "sl") == "conf"
        assert stat.S_IMODE((dest / "etc").stat().st_mode) == 0o750
        null = (dest / "dev-null").stat()
        assert stat.S_ISCHR(null.st_mode) and os.major(null.st_rdev) == 1
        assert stat.S_ISFIFO((dest / "pipe").stat().st_mode)
        assert (dest / "bin" / "deep" / "tool").read_bytes() == b"#!"
        assert result.members == 7 and result.skipped == ()

    def test_tar_semantics_the_last_entry_wins(self, dirs: tuple[Path, Path]) -> None:
        dest, _ = dirs
        unpack(_tar(directory("d", 0o700), directory("d", 0o755),
                    directory("a", 0o4755), file("a/x"), file("a", b"now a file", 0o644),
                    file("f"), hardlink("f", "f"),
                    file("over", b"first"), file("over", b"second", 0o600),
                    file("z", xattrs={"trusted.overlay.redirect": "/etc", "user.ok": "1"})),
               str(dest))
        assert stat.S_IMODE((dest / "d").stat().st_mode) == 0o755
        assert stat.S_IMODE((dest / "a").stat().st_mode) == 0o644
        assert (dest / "a").read_bytes() == b"now a file" and (dest / "f").exists()
        assert (dest / "over").read_bytes() == b"second"
        assert os.listxattr(dest / "z") == ["user.ok"]  # overlay's own come from whiteouts


class TestWhiteouts:
    def test_whiteouts_hide_lower_files_in_a_real_overlay(self, tmp_path: Path) -> None:
        """Layer 1 has a/keep, a/gone, b/old; layer 2 deletes a/gone (.wh.) and makes
        b opaque (.wh..wh..opq) with b/new: the stacked overlay shows just that."""
        lower1, lower2, merged = (tmp_path / n for n in ("l1", "l2", "merged"))
        for d in (lower1, lower2, merged):
            d.mkdir()
        unpack(_tar(file("a/keep"), file("a/gone"), file("b/old")), str(lower1))
        unpack(_tar(file("a/.wh.gone"), file("b/.wh..wh..opq"), file("b/new")), str(lower2))
        gone = (lower2 / "a" / "gone").stat()
        assert stat.S_ISCHR(gone.st_mode) and gone.st_rdev == 0
        assert os.getxattr(lower2 / "b", "trusted.overlay.opaque") == b"y"
        libc.mount("overlay", str(merged), "overlay", libc.MS_RDONLY,
                   f"lowerdir={lower2}:{lower1}")
        try:
            assert sorted(os.listdir(merged / "a")) == ["keep"]
            assert sorted(os.listdir(merged / "b")) == ["new"]
        finally:
            libc.umount2(str(merged))

    def test_rootless_in_a_user_namespace(self, tmp_path: Path) -> None:
        """As an unprivileged user in its own user namespace (how a rootless caller
        runs it): whiteouts without CAP_MKNOD, user.overlay.opaque, devices skipped."""
        from tests.integration import harness

        user = harness.ensure_test_user()
        work = harness.make_shared_dir("myctr-layer-")
        try:
            dest = work / "layer"
            dest.mkdir()
            harness.chown_tree(work, user)
            layer = work / "layer.tar"
            layer.write_bytes(_tar(file("a/.wh.gone"), file("b/.wh..wh..opq"), file("b/new"),
                                   entry("dev-null", tarfile.CHRTYPE, major=1, minor=3),
                                   ).getvalue())
            code = ("import sys; from runtime.images.layer import unpack; "
                    f"r = unpack(open({str(layer)!r}, 'rb'), {str(dest)!r}, rootless=True); "
                    "print(r.skipped)")
            staged = harness.stage_python_tree(work / "python")
            proc = subprocess.run(
                ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}",
                 "--init-groups", "env", f"PYTHONPATH={staged}", "unshare", "--user",
                 "--map-root-user", "/usr/bin/python3", "-c", code],
                capture_output=True, text=True, timeout=60, cwd=work)
            assert proc.returncode == 0, proc.stderr
            assert proc.stdout.strip() == "('dev-null',)"
            gone = (dest / "a" / "gone").stat()
            assert stat.S_ISCHR(gone.st_mode) and gone.st_rdev == 0
            assert os.getxattr(dest / "b", "user.overlay.opaque") == b"y"
        finally:
            subprocess.run(["rm", "-rf", str(work)], check=False)


def test_diff_id_is_the_digest_of_the_uncompressed_tar(tmp_path: Path) -> None:
    """The OCI config's diff_ids: sha256 of the tar as unpacked, gzip or not."""
    import hashlib

    plain = _tar(file("a", b"hello"), directory("d"))
    expected = "sha256:" + hashlib.sha256(plain.getvalue()).hexdigest()
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    assert unpack(plain, str(tmp_path / "one")).diff_id == expected
    packed = io.BytesIO(gzip.compress(plain.getvalue()))
    assert unpack(packed, str(tmp_path / "two")).diff_id == expected
