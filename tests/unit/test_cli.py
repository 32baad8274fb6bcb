"""The CLI's contract: exit codes and the cold-start discipline."""

from __future__ import annotations

import subprocess
import sys

from supervisor import cli


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
