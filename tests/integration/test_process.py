"""The container's process: exit statuses, terminals, stdin, signals, environment."""

from __future__ import annotations

import json
import os
import signal
import subprocess

import pytest

from tests.integration import harness
from tests.integration.harness import Myctr


class TestExitStatus:
    @pytest.mark.parametrize("code", [0, 7])
    def test_exit_code_propagates(self, myctr: Myctr, code: int) -> None:
        """myctr run exits with the container's exit code."""
        assert myctr.run("/probe", "exit", str(code)).returncode == code

    def test_killed_by_signal_is_128_plus_n(self, myctr: Myctr) -> None:
        """A container whose init is killed by SIGKILL from the host makes myctr exit 137."""
        proc = subprocess.Popen(
            myctr.command("run", "--rm", "--rootfs", str(myctr.rootfs), "/bin/sh", "-c",
                          "echo ready; exec sleep 1000"),
            stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        [row] = json.loads(myctr("ps", "--format", "json").stdout)
        os.kill(row["pid"], signal.SIGKILL)
        assert proc.wait(timeout=20) == 137

    def test_child_killed_by_signal(self, myctr: Myctr) -> None:
        """A shell whose child dies of SIGSEGV exits 139, and so does myctr run."""
        assert myctr.run("/bin/sh", "-c", "/probe kill-self SEGV; exit $?").returncode == 139

    def test_not_executable_is_126(self, myctr: Myctr) -> None:
        """A command that exists but cannot be executed exits 126 with one line naming it."""
        result = myctr.run("/etc/passwd")
        assert result.returncode == 126
        assert result.stderr.strip().splitlines() == [
            'myctr: exec "/etc/passwd": permission denied'.replace(
                "permission denied", result.stderr.split(": ")[-1].strip())]
        assert "/etc/passwd" in result.stderr

    def test_not_found_is_127(self, myctr: Myctr) -> None:
        """A command not found in $PATH exits 127 with one line naming it."""
        result = myctr.run("no-such-command")
        assert result.returncode == 127
        assert result.stderr.strip() == (
            'myctr: exec "no-such-command": executable file not found in $PATH')

    def test_directory_is_126(self, myctr: Myctr) -> None:
        """Executing a directory fails with 126 (permission denied)."""
        assert myctr.run("/etc").returncode == 126


class TestStdio:
    def test_stdin_is_devnull_without_i(self, myctr: Myctr) -> None:
        """Without -i the container's stdin is empty even when ours is not."""
        result = myctr.run("/bin/cat", input="hello")
        assert (result.returncode, result.stdout) == (0, "")

    def test_stdin_passes_with_i(self, myctr: Myctr) -> None:
        """With -i the container reads our stdin."""
        result = myctr.run("-i", "/bin/cat", input="hello\n")
        assert (result.returncode, result.stdout) == (0, "hello\n")

    def test_stdout_and_stderr_are_separate(self, myctr: Myctr) -> None:
        """The container's stdout and stderr reach ours, unmixed."""
        result = myctr.run("/bin/sh", "-c", "echo out; echo err >&2")
        assert (result.stdout, result.stderr) == ("out\n", "err\n")

    def test_tty_gives_a_terminal(self, myctr: Myctr) -> None:
        """-t gives the command a terminal: tty prints /dev/pts/0."""
        code, output = harness.run_in_pty(myctr.command(
            "run", "--rm", "-t", "--rootfs", str(myctr.rootfs), "tty"))
        assert code == 0, output
        assert output.strip() == "/dev/pts/0"

    def test_tty_interactive_shell(self, myctr: Myctr) -> None:
        """-it runs an interactive shell that reads what we type and sees a TERM."""
        code, output = harness.run_in_pty(
            myctr.command("run", "--rm", "-it", "--rootfs", str(myctr.rootfs), "/bin/sh"),
            dialogue=(("# ", b"echo term=$TERM; exit 3\r"),))
        assert code == 3, output
        assert "term=xterm" in output


class TestSignals:
    def test_sigterm_is_forwarded(self, myctr: Myctr) -> None:
        """SIGTERM sent to myctr run reaches the container's PID 1 (which traps it)."""
        proc = subprocess.Popen(
            myctr.command("run", "--rm", "--rootfs", str(myctr.rootfs), "/bin/sh", "-c",
                          "trap 'echo got-term; exit 42' TERM; echo ready; "
                          "while true; do sleep 0.1; done"),
            stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
        assert proc.stdout is not None
        assert proc.stdout.readline() == "ready\n"
        os.kill(proc.pid, signal.SIGTERM)
        out, _ = proc.communicate(timeout=20)
        assert (proc.returncode, out) == (42, "got-term\n")

    def test_sigint_is_forwarded(self, myctr: Myctr) -> None:
        """SIGINT to the attached client reaches the container as SIGINT."""
        proc = subprocess.Popen(
            myctr.command("run", "--rm", "--rootfs", str(myctr.rootfs), "/bin/sh", "-c",
                          "trap 'echo got-int; exit 7' INT; echo ready; "
                          "while true; do sleep 0.1; done"),
            stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
        assert proc.stdout is not None
        assert proc.stdout.readline() == "ready\n"
        os.kill(proc.pid, signal.SIGINT)
        out, _ = proc.communicate(timeout=20)
        assert (proc.returncode, out) == (7, "got-int\n")


class TestEnvironment:
    def test_env_workdir_and_defaults(self, myctr: Myctr, tmp_path: object) -> None:
        """-e, -w and the defaults (PATH, HOSTNAME, HOME) reach the process."""
        info = myctr.probe("info", options=("-e", "FOO=bar", "-w", "/srv/app", "-h", "hn"))
        assert "FOO=bar" in info["env"]
        assert "HOSTNAME=hn" in info["env"]
        assert "HOME=/root" in info["env"]
        assert any(e.startswith("PATH=/usr/local/sbin") for e in info["env"])
        assert info["cwd"] == "/srv/app"

    def test_env_file(self, myctr: Myctr) -> None:
        """--env-file reads K=V lines, skipping comments; -e overrides it."""
        path = myctr.state_root / "env"  # removed with the state root
        path.write_text("# comment\nA=1\nB=2\n")
        path.chmod(0o644)
        info = myctr.probe("info", options=("--env-file", str(path), "-e", "B=3"))
        assert "A=1" in info["env"] and "B=3" in info["env"] and "B=2" not in info["env"]

    def test_ulimit(self, myctr: Myctr) -> None:
        """--ulimit nofile=512:1024 sets the container's RLIMIT_NOFILE."""
        info = myctr.probe("info", options=("--ulimit", "nofile=512:1024"))
        assert info["rlimit_nofile"] == [512, 1024]

    def test_init_runs_as_pid1(self, myctr: Myctr) -> None:
        """--init puts catatonit at PID 1 and the command below it."""
        info = myctr.probe("info", options=("--init",))
        assert info["pid"] != 1 and info["ppid"] == 1
        result = myctr.run("--init", "/probe", "exit", "5")
        assert result.returncode == 5

    def test_pipe_signal_default(self, myctr: Myctr) -> None:
        """No signal is ignored in the container: neither Python's SIGPIPE and SIGXFSZ
        nor the zygote's SIGINT and SIGTERM leak through execve."""
        info = myctr.probe("signals")
        assert signal.SIGPIPE not in info["ignored"]
        assert info["ignored"] == []
