"""The two container inits make the same container, as root and rootless: the native
stage (runtime/nativeinit.c running a plan compiled by runtime/nativeinit.py), which
runs every container here, and the Python init (runtime/init.py), which runs them where
the native stage cannot (MYCTR_INIT=python, another architecture, no compiler)."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration import harness
from tests.integration.harness import Myctr

# What the container shows of itself, in one go: the probe's view (ids, groups, caps,
# namespaces, env, signals), its mounts, /dev, limits, open fds and cwd.
SCRIPT = ("/probe info; /probe signals; cat /proc/self/mountinfo | cut -d' ' -f4-; "
          "ls -la /dev | cut -c1-10,45-; ulimit -a; ls /proc/self/fd; pwd; "
          "grep -E '^(Cap|NoNewPrivs|Seccomp|Groups|Uid|Gid|Umask)' /proc/self/status")

OPTION_SETS = {
    "defaults": (),
    "user-and-limits": ("-u", "1000:100", "-w", "/work/dir", "--ulimit", "nofile=100:200",
                        "--cap-add", "SYS_ADMIN", "--cap-drop", "NET_RAW", "-e", "FOO=bar",
                        "--security-opt", "no-new-privileges"),
    "user-by-name": ("-u", "user", "--group-add", "10"),
    "read-only-with-mounts": ("--read-only", "--tmpfs", "/scratch", "-h", "box",
                              "-v", "{volume}:/data:ro", "-v", "{volume}:/rw"),
}


@pytest.fixture
def python_init(myctr: Myctr) -> Iterator[Myctr]:
    """A runner like ``myctr`` whose supervisor runs the Python init."""
    root = harness.make_shared_dir(f"{myctr.state_root}-python-")
    if myctr.user is not None:
        harness.chown_tree(root, myctr.user)
    runner = dataclasses.replace(myctr, state_root=root, init="python")
    yield runner
    harness.stop_supervisor(root)
    leaks = harness.leftovers(root)
    shutil.rmtree(root, ignore_errors=True)
    assert not leaks, f"the container left things behind: {leaks}"


def _normalized(output: str, myctr: Myctr, volume: Path) -> str:
    """``output`` without what differs from one container to the next: ids, the state
    root, hostnames, inode and mount numbers, pipe numbers, times of day."""
    text = re.sub(r"[0-9a-f]{64}", "ID", output.replace(str(volume), "VOLUME"))
    text = text.replace(str(myctr.state_root), "ROOT")
    text = re.sub(r"\b[0-9a-f]{12}\b", "SHORTID", text)
    text = re.sub(r"(pipe|socket):\[\d+\]", r"\1:[N]", text)
    text = re.sub(r"\b\d\d:\d\d\b", "HH:MM", text)  # ls's times: the two may straddle a minute
    text = re.sub(r"^\d+ \d+ ", "", text, flags=re.M)  # mountinfo's ids, if any are left
    lines = []
    for line in text.splitlines():
        if line.startswith("{"):  # the probe's JSON: drop what names this very container
            doc = json.loads(line)
            for key in ("hostname", "ppid", "start_time", "boot_id"):
                doc.pop(key, None)
            line = json.dumps(doc, sort_keys=True)
        lines.append(line)
    return "\n".join(lines)


def test_the_native_init_runs_containers(myctr: Myctr) -> None:
    """`myctr info` says which init runs containers; here it is the native stage (built
    by make): a start pays no forked Python."""
    result = myctr("info")
    assert result.returncode == 0, result
    assert json.loads(result.stdout)["init"] == "native"


def test_python_init_when_asked(python_init: Myctr) -> None:
    result = python_init("info")
    assert result.returncode == 0, result
    assert json.loads(result.stdout)["init"] == "python (MYCTR_INIT=python)"


@pytest.mark.parametrize("options", OPTION_SETS.values(), ids=OPTION_SETS.keys())
def test_both_inits_make_the_same_container(myctr: Myctr, python_init: Myctr,
                                            options: tuple[str, ...]) -> None:
    volume = harness.make_shared_dir(f"{myctr.state_root}/volume-")
    (volume / "file").write_text("x")
    if myctr.user is not None:
        harness.chown_tree(volume, myctr.user)
    args = [o.format(volume=volume) for o in options]
    seen = {}
    for name, runner in (("native", myctr), ("python", python_init)):
        result = runner.run(*args, "/bin/sh", "-c", SCRIPT)
        assert result.returncode == 0, (name, result)
        seen[name] = _normalized(result.stdout, runner, volume)
    assert seen["native"] == seen["python"]
    assert "uid" in seen["native"]  # (the probe ran)


@pytest.mark.parametrize(("command", "code", "message"), [
    (("/nonexistent",), 127, 'exec "/nonexistent": no such file or directory'),
    (("nonexistent",), 127, 'exec "nonexistent": executable file not found in $PATH'),
    (("/etc",), 126, 'exec "/etc": Permission denied'),
    (("-u", "nobody-here", "/bin/true"), 125,
     "unable to find user nobody-here: no matching entries in passwd file"),
    (("-u", "user:nogroup-here", "/bin/true"), 125,
     "unable to find group nogroup-here: no matching entries in group file"),
    (("-w", "/etc/passwd/x", "/bin/true"), 125, "/etc/passwd/x: Not a directory"),
    (("-v", "/nonexistent-source:/x", "/bin/true"), 125, "/nonexistent-source"),
])
def test_both_inits_fail_alike(myctr: Myctr, python_init: Myctr, command: tuple[str, ...],
                               code: int, message: str) -> None:
    """The same exit code and message from either init, for errors met in the
    container's setup and at its exec."""
    for name, runner in (("native", myctr), ("python", python_init)):
        result = runner.run(*command)
        assert result.returncode == code, (name, result)
        assert message in result.stderr, (name, result)
        assert len(result.stderr.strip().splitlines()) == 1, (name, result)


def test_both_inits_give_a_terminal(myctr: Myctr, python_init: Myctr) -> None:
    """-t: either init opens the pty in the container's devpts and hands its master
    over (``tty`` prints /dev/pts/0)."""
    for name, runner in (("native", myctr), ("python", python_init)):
        code, output = harness.run_in_pty(runner.command(
            "run", "--rm", "-t", "--rootfs", str(runner.rootfs), "tty"))
        assert (code, output.strip()) == (0, "/dev/pts/0"), name


def test_a_user_switch_leaves_later_inits_reachable(myctr_net: Myctr) -> None:
    """A container that runs as another user leaves the next container's init
    reachable before its exec: slirp4netns (rootless) and the veth plug (root) open its
    /proc/PID/ns. (A change of ids makes the kernel mark the memory not dumpable, for
    every process sharing it: such an init is cloned as a fork, not in the zygote's
    memory, which would stay marked for good.)"""
    for options in (("-u", "1000"), ("-u", "0:5"), (), ("-u", "user"), ()):
        result = myctr_net.run(*options, "/bin/true")
        assert result.returncode == 0, (options, result)


def test_both_inits_read_crlf_passwd_and_group_alike(myctr: Myctr, python_init: Myctr) -> None:
    """/etc/passwd and /etc/group with CRLF line ends (Python's splitlines takes them):
    the same user, groups and home from either init."""
    rootfs = harness.make_shared_dir(f"{myctr.state_root}/crlf-rootfs-")
    shutil.copytree(myctr.rootfs, rootfs, symlinks=True, dirs_exist_ok=True)
    for name in ("passwd", "group"):
        path = rootfs / "etc" / name
        path.write_bytes(path.read_bytes().replace(b"\n", b"\r\n"))
    if myctr.user is not None:
        harness.chown_tree(rootfs, myctr.user)
    seen = {}
    for name, runner in (("native", myctr), ("python", python_init)):
        result = runner("run", "--rm", "--rootfs", str(rootfs), "-u", "user", "/bin/sh", "-c",
                        "id; echo $HOME")
        assert result.returncode == 0, (name, result)
        seen[name] = result.stdout
    assert seen["native"] == seen["python"]
    assert "groups=" in seen["native"] and "100(" in seen["native"], seen
