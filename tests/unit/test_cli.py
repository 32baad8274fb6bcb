"""The CLI's contract: exit codes and the cold-start discipline."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from runtime.errors import ContainerError
from supervisor import cli, quick


class TestExitCodes:
    def test_usage_error_is_125(self, capsys: object) -> None:
        """An unknown flag exits 125 with one line, as docker does."""
        assert cli._invoke(["run", "--bogus"]) == 125

    def test_help_is_0(self) -> None:
        """--help exits 0."""
        assert cli._invoke(["--help"]) == 0


class TestColdStart:
    def test_run_path_imports_no_event_loop_or_structlog(self) -> None:
        """The client side of run pulls in neither trio, asyncio, structlog nor pyroute2."""
        code = ("import sys, supervisor.cli, supervisor.client, supervisor.attach;"
                "print(sorted(m for m in ('trio', 'asyncio', 'structlog', 'pyroute2')"
                " if m in sys.modules))")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             check=True).stdout
        assert out.strip() == "[]"

    def test_quick_path_imports_only_c_modules_and_ours(self) -> None:
        """The quick path of run and ps (entry point, client, attach loop, state paths)
        stays clear of asyncclick and of the stdlib modules that cost a cold start
        most: json's and socket's Python layers, typing, enum, re."""
        code = ("import sys, supervisor.quick, supervisor.client, supervisor.attach,"
                " runtime.paths;"
                "print(sorted(m for m in ('asyncclick', 'json', 'socket', 'typing', 'enum',"
                " 're', 'contextlib', 'signal', 'trio', 'structlog') if m in sys.modules))")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             check=True).stdout
        assert out.strip() == "[]"


class TestQuickPath:
    """What goes to the full CLI instead (the supervisor side is in the integration
    tests)."""

    def test_not_quick_verbs_flags_or_no_supervisor(self, tmp_path: Path) -> None:
        root = str(tmp_path)
        assert quick.quick(["--root", root, "info"]) is None  # not a quick verb
        assert quick.quick(["--root", root, "--log-level", "debug", "ps"]) is None
        assert quick.quick(["--bogus", "ps"]) is None
        assert quick.quick(["--root"]) is None
        assert quick.quick([]) is None
        assert quick.quick(["--root", root, "ps"]) is None  # no supervisor answers
        assert quick.quick([f"--root={root}", "run", "x"]) is None

    def test_create_params_resolve_the_clients_side(self, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
        """Relative --rootfs against our cwd, -e NAME from our environment, resources
        gathered: what the supervisor cannot know."""
        monkeypatch.chdir(tmp_path)
        monkeypatch.setenv("FROM_CLIENT", "yes")
        opts = _run_opts(rootfs="rfs", env=("FROM_CLIENT", "A=1"), memory="64m",
                         device_read_bps=("/dev/sda:1mb",), command=("/bin/true",))
        params = quick.create_params(opts)
        assert params["rootfs"] == str(tmp_path / "rfs")
        assert params["env"] == ["FROM_CLIENT=yes", "A=1"]
        assert params["resources"] == {"memory": "64m", "device_read_bps": ["/dev/sda:1mb"]}
        with pytest.raises(ContainerError, match="give an IMAGE"):
            quick.create_params(_run_opts())


def _run_opts(**given: object) -> dict[str, object]:
    """run's options as click hands them over (its defaults), with ``given``."""
    return {**cli.parse_for_quick(["run"])["params"], **given}
