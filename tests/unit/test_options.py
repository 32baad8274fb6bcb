"""Parsers for run flags: --ulimit, -v, --tmpfs, -e, --env-file, names."""

from __future__ import annotations

import resource
from pathlib import Path

import pytest

from runtime import options
from runtime.errors import SpecError
from runtime.spec import Rlimit


class TestUlimit:
    def test_soft_and_hard(self) -> None:
        """nofile=1024:2048 maps to RLIMIT_NOFILE with both values."""
        assert options.parse_ulimit("nofile=1024:2048") == Rlimit("RLIMIT_NOFILE", 1024, 2048)

    def test_single_value_and_unlimited(self) -> None:
        """A single value sets both; -1 is unlimited."""
        assert options.parse_ulimit("core=-1") == Rlimit(
            "RLIMIT_CORE", resource.RLIM_INFINITY, resource.RLIM_INFINITY)

    @pytest.mark.parametrize("value", ["nofile", "bogus=1", "nofile=a", "nofile=10:5",
                                       "nofile=-5"])
    def test_rejects(self, value: str) -> None:
        """Malformed values are a SpecError."""
        with pytest.raises(SpecError, match="invalid ulimit"):
            options.parse_ulimit(value)


class TestVolume:
    def test_bind_with_ro(self, tmp_path: Path) -> None:
        """SRC:DST:ro is a recursive private read-only bind of the real path."""
        mount = options.parse_volume(f"{tmp_path}:/data:ro")
        assert (mount.destination, mount.type, mount.source) == ("/data", "bind", str(tmp_path))
        assert mount.options == ("rbind", "ro", "rprivate")

    @pytest.mark.parametrize("value", ["/a", "a:/b", "/tmp:b", "/tmp:/b:bogus", "/nope:/b"])
    def test_rejects(self, value: str) -> None:
        """Missing parts, relative paths, unknown options and missing sources fail."""
        with pytest.raises(SpecError, match="invalid volume"):
            options.parse_volume(value)


class TestTmpfsAndEnv:
    def test_tmpfs_defaults(self) -> None:
        """--tmpfs gets docker's rw,noexec,nosuid,nodev before the user's options."""
        mount = options.parse_tmpfs("/run:size=1m")
        assert mount.options == ("rw", "noexec", "nosuid", "nodev", "size=1m")

    def test_env_from_host(self) -> None:
        """-e NAME takes the host's value, or is dropped when the host has none."""
        assert options.parse_env("X", {"X": "1"}) == "X=1"
        assert options.parse_env("Y", {}) is None

    def test_env_file_and_merge(self, tmp_path: Path) -> None:
        """--env-file skips comments; later values win over earlier ones."""
        path = tmp_path / "env"
        path.write_text("# c\n\nA=1\nB=2\n")
        merged = options.merge_env(options.read_env_file(str(path)), ["B=3"])
        assert merged == ("A=1", "B=3")

    @pytest.mark.parametrize("name", ["-x", "a b", "", "é"])
    def test_bad_names(self, name: str) -> None:
        """Container names follow docker's character rules."""
        with pytest.raises(SpecError):
            options.validate_name(name)
