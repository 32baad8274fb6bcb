"""cgroups end to end, on both drivers: natively on this host (cgroup v1 here, v2 on a
pure v2 host) and in the cgroup v2 VM of ../shared/vm (tests marked ``vm``), as root
and rootless (a delegated cgroup, as systemd's Delegate=yes gives a user service).

Every test checks, after its supervisor shut down, that no cgroup it made is left.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration import harness
from tests.integration.conftest import _home, _runner
from tests.integration.harness import Myctr

MiB = 1024 * 1024

LIMITED = [
    pytest.param(("native", "root"), id="native-root"),
    pytest.param(("vm", "root"), id="v2vm-root", marks=pytest.mark.vm),
    pytest.param(("vm", "rootless"), id="v2vm-rootless", marks=pytest.mark.vm),
]
UNDELEGATED = [
    pytest.param(("native", "rootless"), id="native-rootless"),
    pytest.param(("vm", "rootless"), id="v2vm-rootless", marks=pytest.mark.vm),
]


class Limited(Myctr):
    """A runner whose supervisor may have cgroups; ``restart_supervisor`` starts a new
    one the way the fixture started the first."""

    delegated: Path | None = None
    starts: int = 0

    def start_supervisor(self) -> None:
        if self.delegated is None:  # any CLI command autostarts one
            assert self("info").returncode == 0
            return
        self.starts += 1
        leaf = self.delegated / f"session-{self.starts}"
        leaf.mkdir()
        assert self.user is not None
        harness.chown_cgroup(leaf, self.user)
        harness.start_supervisor_in_cgroup(self, leaf)

    def call(self, method: str, **params: Any) -> Any:
        reply = harness.supervisor_call(self.state_root, method, params)
        assert isinstance(reply, dict) and "result" in reply, reply
        return reply["result"]

    def detached(self, *args: str) -> str:
        result = self("run", "-d", "--rootfs", str(self.rootfs), *args)
        assert result.returncode == 0, result.stderr
        return result.stdout.strip()


def _make_runner(request: pytest.FixtureRequest, workspace: Path,
                 rootfs_by_mode: dict[str, Path], test_user: Any,
                 staged_python: Path) -> Limited:
    where, mode = request.param
    if where == "vm" and not harness.pure_cgroup_v2():
        pytest.skip("needs a pure cgroup v2 host: runs in ../shared/vm's VM (--vm=never given?)")
    state_root = harness.make_shared_dir(f"{_home(workspace, mode, test_user)}/state-")
    base = _runner(mode, state_root, rootfs_by_mode[mode], test_user, staged_python)
    return Limited(base.mode, base.state_root, base.rootfs, base.staged, base.user)


def _our_cgroups(runner: Limited) -> list[str]:
    """The cgroups of this state root that still exist (after its supervisor left);
    the bases below our own cgroups are in harness.leftovers."""
    if runner.delegated is None:
        return []
    return [p for p in harness.remove_cgroup_tree(runner.delegated)
            if not Path(p).name.startswith("session-")]


def _finish(runner: Limited) -> None:
    harness.stop_supervisor(runner.state_root)
    leaks = harness.leftovers(runner.state_root)
    cgroups = _our_cgroups(runner)
    shutil.rmtree(runner.state_root, ignore_errors=True)
    assert not leaks, f"the container left things behind: {leaks}"
    assert not cgroups, f"cgroups left behind: {cgroups}"


@pytest.fixture(params=LIMITED)
def limited(request: pytest.FixtureRequest, workspace: Path, rootfs_by_mode: dict[str, Path],
            test_user: Any, staged_python: Path) -> Iterator[Limited]:
    runner = _make_runner(request, workspace, rootfs_by_mode, test_user, staged_python)
    if runner.mode == "rootless":
        runner.delegated = harness.delegate_cgroup(test_user)
    runner.start_supervisor()
    try:
        yield runner
    finally:
        _finish(runner)


@pytest.fixture(params=UNDELEGATED)
def undelegated(request: pytest.FixtureRequest, workspace: Path,
                rootfs_by_mode: dict[str, Path], test_user: Any,
                staged_python: Path) -> Iterator[Limited]:
    runner = _make_runner(request, workspace, rootfs_by_mode, test_user, staged_python)
    yield runner
    _finish(runner)


def _until(condition: Callable[[], Any], timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s")


def _version(runner: Limited) -> int:
    info = runner.call("info")["cgroups"]
    assert info["usable"], info
    return int(info["version"])


class TestLimits:
    def test_memory_hog_is_oom_killed(self, limited: Limited) -> None:
        """Above --memory 32m the kernel kills the hog: exit 137, OOMKilled in inspect
        and ps, an oom event with oom_kill >= 1 on the socket."""
        result = limited("run", "--name", "hog", "-m", "32m", "--memory-swap", "32m",
                         "--rootfs", str(limited.rootfs), "/probe", "alloc", "256")
        assert result.returncode == 137, result
        info = limited.call("container.inspect", id="hog")
        assert info["OOMKilled"] is True and info["exit_code"] == 137
        listed = json.loads(limited("ps", "-a", "--format", "json").stdout)
        assert [c["oom_killed"] for c in listed if c["name"] == "hog"] == [True]
        events = harness.read_events(limited.state_root, 0, lambda e: e["type"] == "die")
        oom = [e["attributes"] for e in events if e["type"] == "oom"]
        # v2 may report the OOM ("oom" counter) a moment before its kill ("oom_kill")
        assert oom and max(a["oom_kill"] for a in oom) >= 1, oom
        assert set(oom[-1]) >= {"low", "high", "max", "oom", "oom_kill"}
        assert events[-1]["attributes"]["oom_killed"] is True
        assert limited("rm", "hog").returncode == 0
        # The restart policy acts on an OOM kill as on any failure.
        limited.detached("--name", "hog2", "--restart", "on-failure:1", "--restart-delay",
                         "0.01", "-m", "32m", "--memory-swap", "32m", "/probe", "alloc", "256")
        assert limited("wait", "hog2").stdout.strip() == "137"
        info = limited.call("container.inspect", id="hog2")
        assert (info["restart_count"], info["OOMKilled"]) == (1, True)
        assert limited("rm", "hog2").returncode == 0

    def test_pids_limit_stops_a_fork_bomb(self, limited: Limited) -> None:
        """--pids-limit 20: forks beyond it fail with EAGAIN, a pids.max event is
        emitted, and the host can still fork."""
        result = limited("run", "--name", "bomb", "--pids-limit", "20",
                         "--rootfs", str(limited.rootfs), "/probe", "fork", "200")
        assert result.returncode == 0, result
        report = json.loads(result.stdout)
        assert report["errno"] == "EAGAIN" and report["forked"] < 20, report
        events = harness.read_events(limited.state_root, 0, lambda e: e["type"] == "die")
        assert any(e["type"] == "pids.max" for e in events), events
        assert os.waitstatus_to_exitcode(os.system("true")) == 0  # the host is fine
        assert limited("rm", "bomb").returncode == 0

    def test_cpus_limit_holds_a_busy_loop_near_half_a_cpu(self, limited: Limited) -> None:
        """--cpus 0.5: a busy loop gets ~50% of one CPU (cpu.stat / cpuacct.usage)."""
        limited.detached("--name", "spin", "--cpus", "0.5", "/probe", "spin", "600")
        time.sleep(0.5)
        stats = limited.call("container.stats", id="spin", interval=3.0)
        assert 35.0 <= stats["cpu_percent"] <= 65.0, stats
        listed = json.loads(limited("stats", "--no-stream", "--format", "json").stdout)
        assert [r["name"] for r in listed] == ["spin"] and listed[0]["pids"] == 1, listed
        assert limited("rm", "-f", "spin").returncode == 0

    def test_pause_freezes_and_unpause_resumes(self, limited: Limited) -> None:
        """pause stops a ticking counter (its log stops growing), unpause resumes it;
        rm -f removes a paused container."""
        limited.detached("--name", "tick", "/bin/sh", "-c",
                         "while :; do echo tick; sleep 0.05; done")

        def lines() -> int:
            return limited("logs", "tick").stdout.count("tick")

        _until(lambda: lines() > 0)
        assert limited("pause", "tick").returncode == 0
        assert limited.call("container.inspect", id="tick")["status"] == "paused"
        frozen = lines()
        time.sleep(1.0)
        assert lines() == frozen
        assert limited("unpause", "tick").returncode == 0
        _until(lambda: lines() > frozen + 3)
        assert limited("pause", "tick").returncode == 0
        assert limited("kill", "tick").returncode == 0  # SIGKILL reaches a paused container
        assert limited("wait", "tick").stdout.strip() == "137"
        assert limited("rm", "tick").returncode == 0
        limited.detached("--name", "frozen", "/bin/sleep", "1000")
        assert limited("pause", "frozen").returncode == 0
        assert limited("rm", "-f", "frozen").returncode == 0

    def test_pause_kill_and_exec_at_once_leave_nothing_frozen(self, limited: Limited) -> None:
        """pause, exec, kill and unpause sent at once on one connection, in a few
        orders: whatever order they land in, every request answers, the container
        dies of the kill, and rm leaves nothing (a kill's freeze-kill-thaw interleaved
        with a pause's freeze used to leave the cgroup frozen with the killed tasks in
        it, and an exec placed into a frozen cgroup hung, with the stray reaper)."""
        path = str(limited.state_root / "run" / "control.sock")
        exec_true = ("container.exec", {"command": ["/bin/true"]})
        orders = [["pause", "kill", "exec", "unpause"], ["exec", "pause", "kill"],
                  ["pause", "exec", "kill", "unpause"], ["kill", "pause", "exec"]]
        for order in orders * 2:
            cid = limited.detached("/bin/sleep", "1000")
            calls = [exec_true if verb == "exec" else (f"container.{verb}", {})
                     for verb in order]
            replies = harness.requests_at_once(
                path, [(m, {**p, "id": cid}) for m, p in calls], timeout=30)
            for verb, reply in zip(order, replies, strict=True):
                # "not running" when the kill came first; an exec may also lose its
                # process to the kill on its way in (-32005 SetupFailed)
                allowed = (-32002, -32005) if verb == "exec" else (-32002,)
                assert "result" in reply or reply["error"]["code"] in allowed, (verb, reply)
            assert limited("wait", cid).stdout.strip() == "137", order
            assert limited("rm", cid).returncode == 0
        # rm -f of a paused container while a kill ends it: the run's teardown may
        # remove the cgroup between the kill and rm's thaw (an internal error, and the
        # container kept, 3 times in 200 in a chaos run)
        for _ in range(10):
            cid = limited.detached("/bin/sleep", "1000")
            assert limited("pause", cid).returncode == 0
            replies = harness.requests_at_once(path, [
                ("container.kill", {"id": cid}), ("container.remove", {"id": cid, "force": True})])
            assert "result" in replies[1], replies
            assert "result" in replies[0] or replies[0]["error"]["code"] in (-32001, -32002)
        assert limited.call("container.list", all=True) == []

    def test_rm_f_racing_the_exit(self, limited: Limited) -> None:
        """rm -f sent with the run of a command that exits at once: the kill's thaw
        may find the cgroup being removed by the run's teardown (ENODEV: an internal
        error, and the container kept, in a chaos run)."""
        path = str(limited.state_root / "run" / "control.sock")
        for i in range(30):
            name = f"fast-{i}"
            replies = harness.requests_at_once(path, [
                ("container.run", {"rootfs": str(limited.rootfs), "command": ["/bin/true"],
                                   "name": name}),
                ("container.remove", {"id": name, "force": True})])
            assert "result" in replies[0], replies
            if "error" in replies[1]:  # the rm came before the container was made
                assert replies[1]["error"]["code"] == -32001, replies
                assert limited("rm", "-f", name).returncode == 0
        assert limited.call("container.list", all=True) == []
        # an rm -f a few ms after the run: between the create (which makes the run's
        # cgroup) and the start; the cgroup used to stay until the shutdown
        bases = limited.call("info")["cgroups"]["base"]
        base = Path(bases[0] if isinstance(bases, list) else bases)
        for i in range(64):
            name = f"slow-{i}"
            replies = harness.requests_at_once(path, [
                ("container.run", {"rootfs": str(limited.rootfs),
                                   "command": ["/bin/sleep", "1000"], "name": name}),
                ("container.remove", {"id": name, "force": True})], gap=0.0005 * (i % 16))
            if "error" in replies[1] or "result" in replies[0]:
                limited("rm", "-f", name)
        assert limited.call("container.list", all=True) == []
        left = [p.name for p in base.iterdir() if p.is_dir() and p.name != "supervisor"]
        assert not left, left

    def test_a_cgroup_left_at_shutdown_goes_after(self, limited: Limited) -> None:
        """A cgroup the supervisor cannot remove at shutdown (here a stray one made
        below its base) keeps its base recorded: the zygote, which outlives the
        supervisor, removes it then. The record used to be dropped anyway, and such
        a cgroup stayed for good (after a chaos run: 26 of them)."""
        cid = limited.detached("/bin/true")  # the bases exist from the first run on
        assert limited("wait", cid).returncode == 0
        assert limited("rm", cid).returncode == 0
        bases = limited.call("info")["cgroups"]["base"]
        stray = Path(bases[0] if isinstance(bases, list) else bases) / "stray"
        stray.mkdir()
        harness.stop_supervisor(limited.state_root)
        _until(lambda: not stray.exists(), timeout=10)

    def test_stop_kills_double_forked_daemons(self, limited: Limited) -> None:
        """stop reaches processes that left their parents (through the cgroup), and the
        container's cgroup is gone afterwards; the cgroup namespace shows it as /."""
        limited.detached("--name", "daemons", "/bin/sh", "-c",
                         "(sh -c 'sleep 1000 & sleep 1000' &); exec sleep 1000")
        procs = _until(lambda: [p for p in limited.call("container.top", id="daemons")
                                ["processes"] if p["command"].startswith("sleep")]
                       if len(limited.call("container.top", id="daemons")["processes"]) >= 3
                       else None)
        cgroup_dirs = limited.call("container.inspect", id="daemons")["cgroup"]
        assert cgroup_dirs and all(os.path.isdir(d) for d in cgroup_dirs)
        seen = limited("exec", "daemons", "/bin/cat", "/proc/self/cgroup").stdout
        assert seen and all(line.endswith(":/") for line in seen.splitlines()), seen
        assert limited("stop", "-t", "1", "daemons").returncode == 0
        assert not [p["pid"] for p in procs if harness.alive(p["pid"])]
        assert not [d for d in cgroup_dirs if os.path.exists(d)]
        assert limited("rm", "daemons").returncode == 0

    def test_update_changes_live_limits(self, limited: Limited) -> None:
        """update raises --memory and lowers --pids-limit of a running container."""
        limited.detached("--name", "up", "-m", "64m", "--pids-limit", "50",
                         "/bin/sleep", "1000")
        before = limited.call("container.stats", id="up", interval=0)
        assert (before["memory_limit"], before["pids_limit"]) == (64 * MiB, 50)
        assert limited("update", "-m", "128m", "--pids-limit", "30", "up").returncode == 0
        after = limited.call("container.stats", id="up", interval=0)
        assert (after["memory_limit"], after["pids_limit"]) == (128 * MiB, 30)
        assert limited.call("container.inspect", id="up")["resources"]["memory"] == 128 * MiB
        swap = limited("update", "--memory-swap", "256m", "up")  # --memory is already set
        assert swap.returncode == 0, swap.stderr
        assert limited.call("container.inspect", id="up")["resources"]["memory_swap"] == 256 * MiB
        assert limited("rm", "-f", "up").returncode == 0

    def test_device_throttles_reach_the_kernel(self, limited: Limited) -> None:
        """--device-read-bps / --device-write-iops become io.max (v2) or
        blkio.throttle.* (v1) lines for the device's major:minor."""
        device = _block_device() or _loop_device(limited.state_root)
        if device is None:
            pytest.skip("no block device on this machine and losetup could not make one")
        path, major_minor = device
        try:
            limited.detached("--name", "io", "--device-read-bps", f"{path}:1mb",
                             "--device-write-iops", f"{path}:100", "/bin/sleep", "1000")
            dirs = limited.call("container.inspect", id="io")["cgroup"]
            if _version(limited) == 2:
                line = [ln for ln in Path(dirs[0], "io.max").read_text().splitlines()
                        if ln.startswith(major_minor + " ")]
                assert line and "rbps=1048576" in line[0] and "wiops=100" in line[0], line
            else:
                blkio = next(d for d in dirs if "/blkio/" in d)
                assert (Path(blkio, "blkio.throttle.read_bps_device").read_text().split()
                        == [major_minor, "1048576"])
                assert (Path(blkio, "blkio.throttle.write_iops_device").read_text().split()
                        == [major_minor, "100"])
            assert limited("rm", "-f", "io").returncode == 0
        finally:
            if path.startswith("/dev/loop"):
                subprocess.run(["losetup", "-d", path], check=False)

    def test_cpuset_and_bad_values(self, limited: Limited) -> None:
        """--cpuset-cpus pins the container; bad limits exit 125 with one line naming
        the value, and create nothing."""
        pinned = limited("run", "--rm", "--cpuset-cpus", "0", "--cpu-shares", "512",
                         "--rootfs", str(limited.rootfs), "/bin/grep", "Cpus_allowed_list",
                         "/proc/self/status")
        assert pinned.stdout.split() == ["Cpus_allowed_list:", "0"], pinned
        if _version(limited) == 2:  # its own cgroup2 tree, read-only, as docker gives
            seen = limited("run", "--rm", "-m", "64m", "--rootfs", str(limited.rootfs),
                           "/bin/sh", "-c", "cat /sys/fs/cgroup/memory.max; "
                           "echo 1 > /sys/fs/cgroup/memory.max || echo refused")
            assert seen.stdout.split()[:2] == [str(64 * MiB), "refused"], seen
        for args, text in ((("--memory", "1x"), "--memory '1x'"),
                           (("--cpus", "-1"), "--cpus '-1'"),
                           (("--cpuset-cpus", "99"), "--cpuset-cpus '99'")):
            result = limited("run", "--rm", "--rootfs", str(limited.rootfs), *args, "/bin/true")
            assert result.returncode == 125, result
            assert text in result.stderr and result.stderr.count("\n") == 1, result.stderr
        both = limited("run", "--rm", "--cgroups", "disabled", "-m", "32m",
                       "--rootfs", str(limited.rootfs), "/bin/true")
        assert both.returncode == 125 and "--cgroups=disabled" in both.stderr, both
        assert json.loads(limited("ps", "-a", "--format", "json").stdout) == []
        limited.detached("--name", "free", "--cgroups", "disabled", "/bin/sleep", "1000")
        assert limited.call("container.inspect", id="free")["cgroup"] is None
        refused = limited("update", "-m", "64m", "free")
        assert refused.returncode == 125 and "--cgroups=disabled" in refused.stderr
        assert limited("rm", "-f", "free").returncode == 0

    def test_crashed_supervisor_leaves_no_cgroup(self, limited: Limited) -> None:
        """After kill -9 of the supervisor, the next one removes the container cgroups
        the dead one left."""
        limited.detached("--name", "orphan", "-m", "64m", "/bin/sleep", "1000")
        cgroup_dirs = limited.call("container.inspect", id="orphan")["cgroup"]
        assert cgroup_dirs and all(os.path.isdir(d) for d in cgroup_dirs)
        pid = limited.call("ping")["pid"]
        os.kill(pid, signal.SIGKILL)
        _until(lambda: not harness.alive(pid))
        limited.start_supervisor()
        assert limited.call("container.inspect", id="orphan")["status"] == "exited"
        assert not [d for d in cgroup_dirs if os.path.exists(d)]
        assert limited("rm", "orphan").returncode == 0


def _block_device() -> tuple[str, str] | None:
    """A whole-disk block device node (/dev/NAME, "MAJ:MIN"), if the machine has one."""
    import stat

    for name in sorted(os.listdir("/sys/block")):
        if name.startswith(("loop", "ram", "zram")):
            continue
        node = f"/dev/{name}"
        try:
            st = os.stat(node)
        except OSError:
            continue
        if stat.S_ISBLK(st.st_mode):
            return node, f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"
    return None


def _loop_device(workdir: Path) -> tuple[str, str] | None:
    """A loop device over a small file (the VM has no disk), or None."""
    backing = workdir / "loop.img"
    backing.write_bytes(b"\0" * (1 << 20))
    made = subprocess.run(["losetup", "-f", "--show", str(backing)], capture_output=True,
                          text=True, check=False)
    if made.returncode != 0:
        return None
    node = made.stdout.strip()
    rdev = os.stat(node).st_rdev
    return node, f"{os.major(rdev)}:{os.minor(rdev)}"


def test_crash_alone_leaves_no_cgroup(limited: Limited) -> None:
    """kill -9 of the supervisor, and no supervisor after it: its zygote, which
    outlives it, removes the container cgroups and the bases, then exits."""
    limited.detached("--name", "orphan", "-m", "64m", "/bin/sleep", "1000")
    dirs = list(limited.call("container.inspect", id="orphan")["cgroup"])
    base = limited.call("info")["cgroups"]["base"]
    dirs += [base] if isinstance(base, str) else base
    assert dirs and all(os.path.isdir(d) for d in dirs)
    pid = limited.call("ping")["pid"]
    os.kill(pid, signal.SIGKILL)
    _until(lambda: not [d for d in dirs if os.path.exists(d)]
           and not harness.processes_using(str(limited.state_root)))
    limited.start_supervisor()  # the container itself is still there, exited
    assert limited.call("container.inspect", id="orphan")["status"] == "exited"
    assert limited("rm", "orphan").returncode == 0


class TestMembership:
    def test_init_and_exec_are_in_every_cgroup_of_the_container(self, limited: Limited) -> None:
        """The init is in the container's cgroup in each hierarchy before it runs the
        command (v2: cloned into it; v1: it moved itself, or was moved by pid in a
        user namespace), and so is a process started by exec (with the joiner that
        waits for it)."""
        limited.detached("--name", "member", "-m", "64m", "/bin/sleep", "1000")
        doc = limited.call("container.inspect", id="member")
        exec_ = subprocess.Popen(limited.command("exec", "member", "/bin/sleep", "1000"),
                                 stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        try:
            def members() -> list[set[int]] | None:
                found = [{int(p) for p in Path(d, "cgroup.procs").read_text().split()}
                         for d in doc["cgroup"]]
                return found if all(len(pids) == 3 for pids in found) else None
            found = _until(members, timeout=10)
            assert all(doc["pid"] in pids for pids in found)
            assert len({frozenset(pids) for pids in found}) == 1  # the same ones everywhere
        finally:
            exec_.kill()
            exec_.wait()
        seen = limited("exec", "member", "/bin/cat", "/proc/self/cgroup").stdout
        assert seen and all(line.endswith(":/") for line in seen.splitlines()
                            if "memory" in line or line.startswith("0::"))
        assert limited("rm", "-f", "member").returncode == 0


class TestWithoutCgroups:
    def test_limits_fail_clearly_and_plain_runs_work(self, undelegated: Limited) -> None:
        """A user without a writable cgroup: a limit exits 125 saying why, a container
        without limits runs, pause explains, and info says why."""
        result = undelegated("run", "--rm", "-m", "32m", "--rootfs",
                             str(undelegated.rootfs), "/bin/true")
        assert result.returncode == 125
        assert "--memory needs the cgroup memory controller" in result.stderr
        assert result.stderr.count("\n") == 1, result.stderr
        ok = undelegated("run", "--rm", "--rootfs", str(undelegated.rootfs), "/bin/echo", "hi")
        assert (ok.returncode, ok.stdout) == (0, "hi\n")
        info = undelegated.call("info")["cgroups"]
        assert info["usable"] is False and "not writable" in info["problem"]
        undelegated.detached("--name", "plain", "/bin/sleep", "1000")
        paused = undelegated("pause", "plain")
        assert paused.returncode == 125 and "pause needs a cgroup" in paused.stderr
        assert undelegated("rm", "-f", "plain").returncode == 0
