"""The supervisor end to end: detached containers, logs, restart policies, events,
recovery after kill -9, and the control socket under bad input, root and rootless."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import threading
import time
from pathlib import Path

import pytest

from supervisor import cli
from tests.integration import harness
from tests.integration.harness import Myctr


def _inspect(myctr: Myctr, ref: str) -> dict:  # type: ignore[type-arg]
    result = myctr("inspect", ref)
    assert result.returncode == 0, result
    return json.loads(result.stdout)[0]  # type: ignore[no-any-return]


def _until(predicate: object, timeout: float = 20.0) -> None:
    """Wait for a condition the supervisor brings about (never a fixed sleep)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {predicate}")


def _detached(myctr: Myctr, *args: str) -> str:
    result = myctr("run", "-d", "--rootfs", str(myctr.rootfs), *args)
    assert result.returncode == 0, result
    return result.stdout.strip()


class TestDetachedContainers:
    def test_run_ps_logs_stop_rm(self, myctr: Myctr) -> None:
        """A detached container shows in ps, its output in logs, and stops and goes."""
        cid = _detached(myctr, "--name", "web", "/bin/sh", "-c",
                        "echo hello; echo oops >&2; exec sleep 1000")
        assert len(cid) == 64
        ps = myctr("ps")
        assert "web" in ps.stdout and "running" in ps.stdout
        _until(lambda: myctr("logs", "web").stdout == "hello\n")
        logs = myctr("logs", "web")
        assert (logs.stdout, logs.stderr) == ("hello\n", "oops\n")
        assert myctr("stop", "-t", "1", "web").returncode == 0
        info = _inspect(myctr, "web")
        assert info["status"] == "exited" and info["exit_code"] in (137, 143)
        assert myctr("rm", "web").returncode == 0
        assert myctr("ps", "-a", "-q").stdout == ""

    def test_rm_running_needs_force(self, myctr: Myctr) -> None:
        """rm refuses a running container (125); rm -f kills and removes it."""
        _detached(myctr, "--name", "busy", "/bin/sleep", "1000")
        refused = myctr("rm", "busy")
        assert refused.returncode == 125 and "stop it first" in refused.stderr
        assert myctr("rm", "-f", "busy").returncode == 0

    def test_kill_signal_and_wait(self, myctr: Myctr) -> None:
        """kill -s TERM reaches a trap in PID 1 and wait prints the exit code."""
        _detached(myctr, "--name", "trap", "/bin/sh", "-c",
                  "trap 'exit 9' TERM; while true; do sleep 0.1; done")
        assert myctr("kill", "-s", "TERM", "trap").returncode == 0
        assert myctr("wait", "trap").stdout.strip() == "9"
        assert myctr("rm", "trap").returncode == 0

    def test_wait_after_auto_removal(self, myctr: Myctr) -> None:
        """wait on an --rm container that exited and is gone still gives its status."""
        cid = _detached(myctr, "--rm", "/bin/sh", "-c", "exit 3")
        _until(lambda: myctr("ps", "-a", "-q").stdout == "")
        assert myctr("wait", cid).stdout.strip() == "3"

    def test_wait_answers_at_the_exit_or_once_removed(self, myctr: Myctr) -> None:
        """container.wait answers when an --rm container exited (docker's wait); with
        "removed" (what `run --rm` asks, as podman returns after the removal) only once
        it is gone: its name is free when the answer comes."""
        assert myctr("info").returncode == 0

        def call(method: str, **params: object) -> dict:  # type: ignore[type-arg]
            reply = harness.supervisor_call(myctr.state_root, method, params)
            assert isinstance(reply, dict)
            return reply

        # 500 files in its upper dir: the removal takes a while after the exit
        script = "for i in $(seq 500); do : > /f$i; done; exit 5"
        run = call("container.run", rootfs=str(myctr.rootfs), name="once", auto_remove=True,
                   command=["/bin/sh", "-c", script])
        assert call("container.wait", id=run["result"]["id"],
                    removed=True)["result"] == {"exit_code": 5}
        assert "error" in call("container.inspect", id="once")  # gone: the name is free
        result = myctr.run("--name", "once", "/bin/sh", "-c", script)
        assert result.returncode == 5, result.stderr
        assert myctr("ps", "-a", "-q").stdout == ""

    def test_fast_containers_at_once_all_report_their_status(self, myctr: Myctr) -> None:
        """Ten /bin/true containers at once: each exit status reaches its own waiter
        (an init that exits at once must not be reaped as a stray by a sibling's
        SIGCHLD)."""
        import concurrent.futures

        assert myctr("info").returncode == 0  # one supervisor for all of them
        with concurrent.futures.ThreadPoolExecutor(10) as pool:
            codes = list(pool.map(lambda i: myctr.run("/bin/sh", "-c", f"exit {i}").returncode,
                                  range(10)))
        assert codes == list(range(10))

    def test_start_while_running_or_starting_and_stop_or_rm_while_starting(
            self, myctr: Myctr) -> None:
        """start of a running (or starting) container does nothing, at once (it used to
        wait for the exit, then run the container again); a stop or rm -f that comes
        while a start is under way ends the container (they used to wait for its exit)."""
        assert myctr("info").returncode == 0
        path = str(myctr.state_root / "run" / "control.sock")
        cid = _detached(myctr, "/bin/sleep", "1000")
        pid = _inspect(myctr, cid)["pid"]
        replies = harness.requests_at_once(path, [("container.start", {"id": cid})] * 3)
        assert all("result" in r for r in replies), replies
        assert _inspect(myctr, cid)["pid"] == pid
        assert myctr("rm", "-f", cid).returncode == 0
        for method, params in [("container.stop", {"timeout": 1}),
                               ("container.remove", {"force": True})] * 3:
            cid = harness.supervisor_call(myctr.state_root, "container.create", {  # type: ignore[index]
                "rootfs": str(myctr.rootfs), "command": ["/bin/sleep", "1000"]})["result"]["id"]
            replies = harness.requests_at_once(path, [("container.start", {"id": cid}),
                                       ("container.start", {"id": cid}),
                                       (method, {"id": cid, **params})])
            assert "result" in replies[2], replies
            # the starts succeed, or find no container when the rm came first
            assert all("result" in r or "no such container" in r["error"]["message"]
                       for r in replies[:2]), replies
            if method == "container.stop":
                info = _inspect(myctr, cid)  # the stop came before or after the start
                assert info["status"] in ("exited", "running"), info
                assert myctr("rm", "-f", cid).returncode == 0
        assert myctr("ps", "-a", "-q").stdout == ""

    def test_id_prefix_and_unknown(self, myctr: Myctr) -> None:
        """Containers are found by id prefix; an unknown one is a one-line 125."""
        cid = _detached(myctr, "/bin/true")
        assert myctr("wait", cid[:8]).stdout.strip() == "0"
        missing = myctr("inspect", "nope")
        assert missing.returncode == 125
        assert missing.stderr.strip() == "myctr: no such container: nope"
        assert myctr("rm", cid[:8]).returncode == 0


class TestRestartPolicies:
    def test_always_restarts_until_stopped(self, myctr: Myctr) -> None:
        """--restart always restarts a crashing container; stop disables the policy."""
        _detached(myctr, "--name", "crash", "--restart", "always", "--restart-delay", "0.02",
                  "--restart-max-delay", "0.05", "/bin/sh", "-c", "exit 3")
        _until(lambda: _inspect(myctr, "crash")["restart_count"] >= 3)
        ps = myctr("ps", "-a").stdout
        assert "crash" in ps
        assert myctr("stop", "-t", "1", "crash").returncode == 0
        count = _inspect(myctr, "crash")["restart_count"]
        info = _inspect(myctr, "crash")
        assert info["status"] == "exited" and info["restart_count"] == count
        assert myctr("rm", "crash").returncode == 0

    def test_on_failure_stops_after_n(self, myctr: Myctr) -> None:
        """on-failure:3 restarts a failing container exactly three times."""
        _detached(myctr, "--name", "flaky", "--restart", "on-failure:3",
                  "--restart-delay", "0.01", "/bin/sh", "-c", "exit 4")
        assert myctr("wait", "flaky").stdout.strip() == "4"
        info = _inspect(myctr, "flaky")
        assert (info["status"], info["restart_count"], info["exit_code"]) == ("exited", 3, 4)
        assert myctr("rm", "flaky").returncode == 0

    def test_on_failure_ignores_success(self, myctr: Myctr) -> None:
        """on-failure does not restart a container that exits 0."""
        _detached(myctr, "--name", "ok", "--restart", "on-failure", "/bin/true")
        assert myctr("wait", "ok").stdout.strip() == "0"
        assert _inspect(myctr, "ok")["restart_count"] == 0
        assert myctr("rm", "ok").returncode == 0

    def test_bad_policy(self, myctr: Myctr) -> None:
        """An unknown restart policy exits 125 naming it, and creates nothing."""
        result = myctr("run", "-d", "--restart", "sometimes", "--rootfs", str(myctr.rootfs),
                       "/bin/true")
        assert result.returncode == 125 and "sometimes" in result.stderr
        assert myctr("ps", "-a", "-q").stdout == ""


class TestRecovery:
    def test_kill_9_of_the_supervisor(self, myctr: Myctr) -> None:
        """After kill -9 of the supervisor its containers die with it; the next one
        restarts the 'always' container, marks the other exited, and leaks nothing."""
        _detached(myctr, "--name", "keep", "--restart", "always", "/bin/sleep", "1000")
        _detached(myctr, "--name", "once", "/bin/sleep", "1000")
        old = _inspect(myctr, "keep")["pid"]
        _kill_9_supervisor(myctr, old)
        keep = _inspect(myctr, "keep")  # this call starts a new supervisor
        assert keep["status"] == "running" and keep["pid"] not in (0, old)
        once = _inspect(myctr, "once")
        assert (once["status"], once["exit_code"]) == ("exited", 137)
        assert myctr("rm", "-f", "keep", "once").returncode == 0


    def test_files_of_a_removed_record_are_swept(self, myctr: Myctr) -> None:
        """A removal drops the record before the files: a crash in between leaves files
        no record owns (here the upper dir holds a file of a subordinate id, rootless);
        the next supervisor removes them."""
        cid = _detached(myctr, "/bin/sh", "-c", "touch /made; chown 1000:1000 /made; "
                                                "exec sleep 1000")
        cdir = myctr.state_root / "data" / "containers" / cid
        _until(lambda: (cdir / "upper" / "made").exists())
        _kill_9_supervisor(myctr, _inspect(myctr, cid)["pid"])
        with sqlite3.connect(myctr.state_root / "data" / "myctr.db") as db:
            db.execute("DELETE FROM containers WHERE id = ?", (cid,))
        assert cdir.exists()
        assert myctr("ps", "-a", "-q").stdout == ""  # a new supervisor, which swept
        assert not cdir.exists()

    def test_exited_auto_removed_container_goes(self, myctr: Myctr) -> None:
        """An --rm container's exit is recorded before its removal: a crash in between
        leaves an exited --rm record (and its files); the next supervisor removes it."""
        cid = _detached(myctr, "--rm", "/bin/sleep", "1000")
        cdir = myctr.state_root / "data" / "containers" / cid
        _kill_9_supervisor(myctr, _inspect(myctr, cid)["pid"])
        with sqlite3.connect(myctr.state_root / "data" / "myctr.db") as db:
            db.execute("UPDATE containers SET status = 'exited', pid = 0, exit_code = 137 "
                       "WHERE id = ?", (cid,))
        assert cdir.exists()
        assert myctr("ps", "-a", "-q").stdout == ""  # a new supervisor, which removed it
        assert not cdir.exists()


class TestLogs:
    def test_rotation_keeps_every_byte(self, myctr: Myctr) -> None:
        """200 MB written through rotation (max-size 10m) are all in the log files."""
        from supervisor.logfile import read_lines

        total = 200 * 1024 * 1024
        line = "x" * 1023
        cid = _detached(myctr, "--log-opt", "max-size=10m", "--log-opt", "max-file=30",
                        "/bin/sh", "-c", f"yes {line} | head -c {total}")
        assert myctr("wait", cid).stdout.strip() == "0"
        log_path = _inspect(myctr, cid)["log_path"]
        lines = read_lines(log_path, max_file=30)
        assert sum(len(x.text) + 1 for x in lines) == total
        assert all(x.text == line.encode() for x in lines)
        files = [p for p in os.listdir(os.path.dirname(log_path)) if p.startswith(cid)]
        assert 20 <= len(files) <= 30
        assert all(os.path.getsize(os.path.join(os.path.dirname(log_path), f))
                   <= 10 * 1024 * 1024 + 1024 * 1024 for f in files)
        assert myctr("rm", cid).returncode == 0

    def test_tail_and_follow(self, myctr: Myctr) -> None:
        """logs --tail 2 keeps the last lines; logs -f streams until the container exits."""
        cid = _detached(myctr, "/bin/sh", "-c", "for i in 1 2 3 4; do echo $i; sleep 0.2; done")
        followed = myctr("logs", "-f", cid)
        assert followed.stdout == "1\n2\n3\n4\n"
        assert myctr("logs", "--tail", "2", cid).stdout == "3\n4\n"
        assert myctr("rm", cid).returncode == 0


class TestEventsAndSocket:
    def test_events_carry_sequence_numbers(self, myctr: Myctr) -> None:
        """events --since resumes the stream; a run shows create, start and die."""
        assert myctr("info").returncode == 0  # the supervisor is up
        cid = _detached(myctr, "/bin/true")
        assert myctr("wait", cid).returncode == 0
        events = _read_events(myctr.state_root, since=0, until_type="die")
        kinds = [e["type"] for e in events if e["container"] == cid]
        assert kinds[:3] == ["create", "start", "die"]
        seqs = [e["seq"] for e in events]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
        later = _read_events(myctr.state_root, since=seqs[1], until_type="die")
        assert later[0]["seq"] == seqs[2]
        assert myctr("rm", cid).returncode == 0

    def test_bad_input_and_many_clients(self, myctr: Myctr) -> None:
        """Malformed JSON, unknown methods, bad params, an over-long line and 50 clients at
        once each get their error (or are dropped), and the supervisor lives on."""
        assert myctr("info").returncode == 0
        path = str(myctr.state_root / "run" / "control.sock")
        assert _exchange(path, b"{not json\n")["error"]["code"] == -32700
        assert _exchange(path, b'{"jsonrpc":"2.0","id":1,"method":"nope"}\n')[
            "error"]["code"] == -32601
        assert _exchange(path, b'{"jsonrpc":"2.0","id":2,"method":"container.stop",'
                               b'"params":{"id":5}}\n')["error"]["code"] == -32602
        assert _exchange(path, b"x" * (1024 * 1024 + 10) + b"\n")["error"]["code"] == -32006
        with socket.socket(socket.AF_UNIX) as sock:  # leave mid-stream
            sock.connect(path)
            sock.sendall(b'{"jsonrpc":"2.0","id":3,"method":"events.subscribe"}\n')
        results: list[object] = []
        threads = [threading.Thread(target=lambda: results.append(_exchange(
            path, b'{"jsonrpc":"2.0","id":7,"method":"ping"}\n'))) for _ in range(50)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(results) == 50
        assert all(r["result"]["pid"] for r in results)  # type: ignore[index]
        assert oct(os.stat(path).st_mode & 0o777) == "0o600"


def _kill_9_supervisor(myctr: Myctr, container_pid: int) -> None:
    """kill -9 the supervisor; return once the container of ``container_pid`` died
    with it and nothing uses the state root any more."""
    reply = harness.supervisor_call(myctr.state_root, "ping")
    assert isinstance(reply, dict)
    os.kill(reply["result"]["pid"], signal.SIGKILL)
    _until(lambda: not harness.alive(container_pid))
    _until(lambda: harness.processes_using(str(myctr.state_root)) == [])


def _exchange(path: str, data: bytes) -> dict:  # type: ignore[type-arg]
    reply = harness.exchange(path, data)
    assert reply is not None, "the supervisor answered nothing"
    return reply


def _read_events(state_root: Path, since: int, until_type: str) -> list[dict]:  # type: ignore[type-arg]
    return harness.read_events(state_root, since, lambda e: e["type"] == until_type)


class TestExec:
    def test_exec_joins_the_container(self, myctr: Myctr) -> None:
        """exec runs in the container's namespaces next to PID 1, as its user or -u's."""
        _detached(myctr, "--name", "box", "-h", "boxhost", "/bin/sleep", "1000")
        info = json.loads(myctr("exec", "box", "/probe", "info").stdout)
        assert info["pid"] != 1 and 1 in info["pids"] and info["hostname"] == "boxhost"
        assert info["caps"]["eff"] == "00000000a80425fb" and info["seccomp"] == 2
        user = json.loads(myctr("exec", "-u", "user", "-w", "/tmp", "-e", "X=1", "box",
                                "/probe", "info").stdout)
        assert (user["uid"], user["cwd"]) == (1000, "/tmp") and "X=1" in user["env"]
        assert myctr("rm", "-f", "box").returncode == 0

    def test_exec_exit_codes_and_stdin(self, myctr: Myctr) -> None:
        """exec returns the process's status (127 when not found) and reads stdin with -i;
        a failed exec leaves nothing that keeps the container from being removed."""
        _detached(myctr, "--name", "box", "/bin/sleep", "1000")
        assert myctr("exec", "box", "/bin/sh", "-c", "exit 6").returncode == 6
        missing = myctr("exec", "box", "nope")
        assert missing.returncode == 127 and "executable file not found" in missing.stderr
        assert myctr("exec", "-i", "box", "/bin/cat", input="piped\n").stdout == "piped\n"
        assert myctr("rm", "-f", "box").returncode == 0

    def test_exec_tty(self, myctr: Myctr) -> None:
        """exec -t gives the process a terminal of the container's devpts."""
        _detached(myctr, "--name", "box", "/bin/sleep", "1000")
        code, output = harness.run_in_pty(myctr.command("exec", "-t", "box", "tty"))
        assert code == 0 and output.strip().startswith("/dev/pts/")
        assert myctr("rm", "-f", "box").returncode == 0

    def test_exec_in_stopped_container(self, myctr: Myctr) -> None:
        """exec into a container that is not running is refused with 125."""
        _detached(myctr, "--name", "done", "/bin/true")
        myctr("wait", "done")
        result = myctr("exec", "done", "/bin/true")
        assert result.returncode == 125 and "not running" in result.stderr
        assert myctr("rm", "done").returncode == 0


class TestSupervisorLife:
    def test_always_and_unless_stopped_after_a_crash(self, myctr: Myctr) -> None:
        """After kill -9, a manually stopped 'always' container starts again and a manually
        stopped 'unless-stopped' one does not (docker's difference between the two)."""
        for name, policy in (("a", "always"), ("u", "unless-stopped")):
            _detached(myctr, "--name", name, "--restart", policy, "/bin/sleep", "1000")
            assert myctr("stop", "-t", "1", name).returncode == 0
        reply = harness.supervisor_call(myctr.state_root, "ping")
        assert isinstance(reply, dict)
        pid = reply["result"]["pid"]
        os.kill(pid, signal.SIGKILL)
        _until(lambda: not harness.alive(pid))
        assert _inspect(myctr, "a")["status"] == "running"
        assert _inspect(myctr, "u")["status"] == "exited"
        assert myctr("rm", "-f", "a", "u").returncode == 0

    def test_unless_stopped_after_a_crash_during_shutdown(self, myctr: Myctr) -> None:
        """A shutdown stops containers without a manual stop: kill -9 during its grace
        period (sleep as PID 1 ignores SIGTERM) leaves 'unless-stopped' to start again."""
        _detached(myctr, "--name", "u", "--restart", "unless-stopped", "/bin/sleep", "1000")
        reply = harness.supervisor_call(myctr.state_root, "ping")
        assert isinstance(reply, dict)
        pid = reply["result"]["pid"]
        os.kill(pid, signal.SIGTERM)
        _read_events(myctr.state_root, 0, "kill")  # the stop signal: the grace period runs
        os.kill(pid, signal.SIGKILL)
        _until(lambda: not harness.alive(pid))
        assert _inspect(myctr, "u")["status"] == "running"
        assert myctr("rm", "-f", "u").returncode == 0

    def test_killed_zygote_ends_the_supervisor(self, myctr: Myctr) -> None:
        """Without its zygote a supervisor can start nothing: it shuts down, and the
        next command gets a new supervisor that can."""
        assert myctr("info").returncode == 0
        reply = harness.supervisor_call(myctr.state_root, "ping")
        assert isinstance(reply, dict)
        pid = reply["result"]["pid"]
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            zygote = int(f.read().split()[0])  # forked first
        os.kill(zygote, signal.SIGKILL)
        _until(lambda: not harness.alive(pid))
        log = (Path(myctr.state_root) / "log" / "supervisor.log").read_text()
        assert "the zygote exited: shutting down" in log
        assert myctr.run("/bin/true").returncode == 0

    def test_idle_supervisor_exits(self, myctr: Myctr) -> None:
        """An auto-started supervisor with nothing to do exits after its idle time."""
        env_run = harness.Myctr(myctr.mode, myctr.state_root, myctr.rootfs,
                                staged=myctr.staged, user=myctr.user)
        command = env_run.command("info")
        import subprocess

        subprocess.run(["env", "MYCTR_IDLE_EXIT=0.5", *command] if myctr.mode == "root"
                       else [*command[:6], "MYCTR_IDLE_EXIT=0.5", *command[6:]],
                       check=True, capture_output=True)
        reply = harness.supervisor_call(myctr.state_root, "ping")
        assert isinstance(reply, dict)
        pid = reply["result"]["pid"]
        _until(lambda: not harness.alive(pid), timeout=10)


class TestQuickPath:
    """With a supervisor up, run and ps skip asyncclick: the supervisor parses their
    arguments (cli.parse) with the same click commands."""

    QUICK = ("import sys; from supervisor import quick;"
             "code = quick.quick(sys.argv[1:]); sys.stdout.flush();"
             "print('quick', code, 'asyncclick' in sys.modules)")

    def _quick(self, myctr: Myctr, *args: str) -> harness.Result:
        """``quick.quick(args)`` in a process of its own, as the test's user."""
        command = myctr.command(*args)
        at = command.index("-m")
        command[at:at + 2] = ["-c", self.QUICK]
        proc = subprocess.run(command, capture_output=True, text=True, timeout=60,
                              stdin=subprocess.DEVNULL)
        return harness.Result(proc.returncode, proc.stdout, proc.stderr)

    def test_run_and_ps_take_it(self, myctr: Myctr) -> None:
        assert myctr("info").returncode == 0  # the supervisor is up
        ran = self._quick(myctr, "run", "--rm", "--rootfs", str(myctr.rootfs), "/bin/echo",
                          "hello")
        assert ran.stdout.splitlines() == ["hello", "quick 0 False"], ran
        listed = self._quick(myctr, "ps", "-a", "-q")
        assert listed.stdout.splitlines() == ["quick 0 False"], listed
        failed = self._quick(myctr, "run", "--rm", "--rootfs", str(myctr.rootfs), "sh", "-c",
                             "exit 7")
        assert failed.stdout.splitlines() == ["quick 7 False"], failed

    def test_same_errors_and_help_as_the_full_cli(self, myctr: Myctr,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
        assert myctr("info").returncode == 0
        for args, code in ((["run", "--bogus"], 125), (["run", "--restart-delay", "x"], 125),
                           (["run"], 125), (["ps", "--format", "yaml"], 125),
                           (["run", "--help"], 0)):
            assert cli._invoke(args) == code
            full = capsys.readouterr()
            quick_ = myctr(*args)
            assert (quick_.returncode, quick_.stdout, quick_.stderr) == (
                code, full.out, full.err), args
            assert quick_.stderr.count("\n") == (1 if code else 0)

    def test_run_resolves_the_clients_cwd_and_environment(self, myctr: Myctr) -> None:
        """cli.run: the supervisor parses and runs, but a relative --rootfs and
        --env-file are the client's (its cwd) and so is -e NAME (its environment)."""
        assert myctr("info").returncode == 0
        env_file = myctr.rootfs.parent / "client.env"
        env_file.write_text("FROM_FILE=file\nFROM_CLIENT\n")
        env_file.chmod(0o644)
        command = myctr.command("run", "--rm", "--env-file", env_file.name, "-e", "ALSO",
                                "--rootfs", myctr.rootfs.name, "/bin/sh", "-c",
                                "echo $FROM_FILE $FROM_CLIENT $ALSO")
        at = command.index("env") + 1
        command[at:at] = ["FROM_CLIENT=client", "ALSO=also"]
        proc = subprocess.run(command, capture_output=True, text=True, timeout=60,
                              cwd=myctr.rootfs.parent, stdin=subprocess.DEVNULL)
        assert (proc.returncode, proc.stdout) == (0, "file client also\n"), proc

    def test_parse_method_rejects_bad_params(self, myctr: Myctr) -> None:
        assert myctr("info").returncode == 0
        path = str(myctr.state_root / "run" / "control.sock")
        for params in (b'{}', b'{"argv":"run"}', b'{"argv":[1]}'):
            reply = _exchange(path, b'{"jsonrpc":"2.0","id":1,"method":"cli.parse",'
                                    b'"params":' + params + b"}\n")
            assert reply["error"]["code"] == -32602, reply
        reply = _exchange(path, b'{"jsonrpc":"2.0","id":1,"method":"cli.parse",'
                                b'"params":{"argv":["supervise","--stop"]}}\n')
        assert "not a quick verb" in reply["error"]["message"]
        for params in (b'{"argv":[],"cwd":"/","env":{},"fds":["stdout"]}',  # none passed
                       b'{"argv":[],"cwd":"rel","env":{}}', b'{"argv":[],"cwd":"/","env":[]}',
                       b'{"argv":[],"cwd":"/","env":{"A":1}}', b'{"cwd":"/","env":{}}'):
            reply = _exchange(path, b'{"jsonrpc":"2.0","id":1,"method":"cli.run",'
                                    b'"params":' + params + b"}\n")
            assert reply["error"]["code"] == -32602, (params, reply)
