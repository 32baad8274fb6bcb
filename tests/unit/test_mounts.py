"""Mount options and resolving paths inside a root without escaping it."""

from __future__ import annotations

import os
from pathlib import Path

from runtime import libc
from runtime.mounts import parse_options, resolve_in_root


class TestParseOptions:
    def test_flags_propagation_and_data(self) -> None:
        """Known flags become bits, propagation is separate, the rest is fs data."""
        opts = parse_options(("nosuid", "ro", "rprivate", "mode=755", "size=1k"))
        assert opts.flags == libc.MS_NOSUID | libc.MS_RDONLY
        assert opts.propagation == libc.MS_PRIVATE | libc.MS_REC
        assert opts.data == "mode=755,size=1k"

    def test_later_option_wins(self) -> None:
        """rw after ro clears the read-only bit."""
        assert parse_options(("ro", "rw")).flags == 0

    def test_bind_remount_flags(self) -> None:
        """A read-only bind needs a remount for ro but not for bind itself."""
        opts = parse_options(("rbind", "ro"))
        assert opts.is_bind and opts.remount_flags == libc.MS_RDONLY


class TestResolveInRoot:
    def test_absolute_symlink_stays_inside(self, tmp_path: Path) -> None:
        """A link to /etc inside the root resolves to ROOT/etc, not the host's /etc."""
        (tmp_path / "etc").mkdir()
        os.symlink("/etc", tmp_path / "link")
        assert resolve_in_root(str(tmp_path), "/link/passwd") == f"{tmp_path}/etc/passwd"

    def test_dotdot_cannot_climb_out(self, tmp_path: Path) -> None:
        """.. at the top of the root stays at the root, through links too."""
        os.symlink("../../../../..", tmp_path / "up")
        assert resolve_in_root(str(tmp_path), "/../../x") == f"{tmp_path}/x"
        assert resolve_in_root(str(tmp_path), "/up/x") == f"{tmp_path}/x"

    def test_relative_link(self, tmp_path: Path) -> None:
        """A relative link resolves against its own directory."""
        (tmp_path / "usr/bin").mkdir(parents=True)
        os.symlink("usr/bin", tmp_path / "bin")
        assert resolve_in_root(str(tmp_path), "/bin/sh") == f"{tmp_path}/usr/bin/sh"
