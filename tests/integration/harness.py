"""Test harness for real containers: the rootless test user, a Python tree that user can
run, the ``myctr`` runner for each mode, and the leak detector.

Nothing here fakes the kernel: every container the tests start is a real one.
"""

from __future__ import annotations

import contextlib
import grp
import importlib.metadata
import json
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
TEST_USER = "myctr-test"
SUBID_COUNT = 65536
PACKAGES = ("supervisor", "runtime", "netplug")
TUN = "/dev/net/tun"


# --- the rootless test user -------------------------------------------------------------


def ensure_test_user() -> pwd.struct_passwd:
    """Create the unprivileged test user with /etc/subuid and /etc/subgid ranges."""
    try:
        entry = pwd.getpwnam(TEST_USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--home-dir", "/nonexistent",
             "--shell", "/usr/sbin/nologin", TEST_USER],
            check=True, capture_output=True,
        )
        entry = pwd.getpwnam(TEST_USER)
    for path, flag in (("/etc/subuid", "--add-subuids"), ("/etc/subgid", "--add-subgids")):
        if not _has_range(path, entry):
            start = _free_range_start(path)
            subprocess.run(["usermod", flag, f"{start}-{start + SUBID_COUNT - 1}", TEST_USER],
                           check=True, capture_output=True)
    return entry


def _has_range(path: str, entry: pwd.struct_passwd) -> bool:
    with contextlib.suppress(FileNotFoundError), open(path) as f:
        return any(line.split(":")[0] in (entry.pw_name, str(entry.pw_uid)) for line in f)
    return False


def _free_range_start(path: str) -> int:
    end = 100000
    with contextlib.suppress(FileNotFoundError), open(path) as f:
        for line in f:
            parts = line.strip().split(":")
            if len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit():
                end = max(end, int(parts[1]) + int(parts[2]))
    return end


def stage_python_tree(dest: Path) -> Path:
    """Copy myctr and its installed dependencies into ``dest`` (world-readable) so the
    test user can run them with the system python3 even when the checkout or the venv
    lies below a directory it cannot enter (CI clones may live under /root)."""
    dest.mkdir(parents=True, exist_ok=True)
    for package in PACKAGES:
        shutil.copytree(REPO / package, dest / package, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("__pycache__"))
    for dist_name in _dependency_closure("myctr"):
        dist = importlib.metadata.distribution(dist_name)
        for file in dist.files or ():
            source = Path(str(dist.locate_file(file)))
            if source.is_file() and ".." not in file.parts and not file.parts[0].endswith(
                    (".dist-info", ".pth")) and "__editable__" not in str(file):
                target = dest / file
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, target)
    import compileall

    # Bytecode too: the environment may forbid writing it at run time, and Python in
    # the cgroup v2 VM compiles 15-45x slower than here.
    compileall.compile_dir(str(dest), quiet=1, workers=0)
    for path in [dest, *dest.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return dest


def _dependency_closure(root: str) -> list[str]:
    seen: list[str] = []
    todo = [root]
    while todo:
        name = todo.pop()
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        if dist.metadata["Name"].lower() in (s.lower() for s in seen):
            continue
        seen.append(dist.metadata["Name"])
        for req in dist.requires or ():
            if "extra ==" in req or "platform_system == 'Windows'" in req:
                continue
            todo.append(req.split(";")[0].split("[")[0].split("<")[0].split(">")[0]
                        .split("=")[0].split("!")[0].split("~")[0].strip())
    return [s for s in seen if s.lower() != "myctr"]


# --- running myctr ----------------------------------------------------------------------


@dataclass(frozen=True)
class Result:
    returncode: int
    stdout: str
    stderr: str

    def json(self) -> dict:  # type: ignore[type-arg]
        """The probe's one JSON line (the last line of stdout)."""
        lines = [line for line in self.stdout.splitlines() if line.strip()]
        assert lines, f"no output; rc={self.returncode} stderr={self.stderr!r}"
        return json.loads(lines[-1])


@dataclass
class Myctr:
    """Runs the real ``myctr`` CLI as root or as the rootless test user."""

    mode: str  # "root" | "rootless"
    state_root: Path
    rootfs: Path
    staged: Path | None = None
    user: pwd.struct_passwd | None = None
    netns: Path | None = None  # run (and so auto-start the supervisor) in this netns

    # The supervisor's default network (MYCTR_NETWORK): "none" unless a test runs in a
    # network namespace of its own (``myctr_net``), so no test makes a bridge or
    # slirp4netns on the machine's own network.
    default_network: str = "none"
    # MYCTR_INIT for a supervisor this runner starts: "python" runs the Python init
    # instead of the native stage (the default)
    init: str | None = None

    def command(self, *args: str) -> list[str]:
        base = ["--root", str(self.state_root), *args]
        enter = ["nsenter", f"--net={self.netns}"] if self.netns is not None else []
        network = [f"MYCTR_NETWORK={self.default_network}"] if self.default_network else []
        init = [f"MYCTR_INIT={self.init}"] if self.init is not None else []
        if self.mode == "root":
            unset = [] if network else ["-u", "MYCTR_NETWORK"]
            return [*enter, "env", *unset, *network, *init, sys.executable, "-m", "supervisor",
                    *base]
        assert self.user is not None and self.staged is not None
        return [*enter, "setpriv", f"--reuid={self.user.pw_uid}", f"--regid={self.user.pw_gid}",
                "--init-groups", "--reset-env", "env", f"PYTHONPATH={self.staged}",
                "PATH=/usr/sbin:/usr/bin:/sbin:/bin", *network, *init, "/usr/bin/python3", "-m",
                "supervisor", *base]

    def __call__(self, *args: str, input: str | None = None, timeout: float = 60) -> Result:
        proc = subprocess.run(self.command(*args), input=input, capture_output=True,
                              text=True, timeout=timeout, stdin=None if input is not None
                              else subprocess.DEVNULL)
        return Result(proc.returncode, proc.stdout, proc.stderr)

    def run(self, *args: str, **kwargs: object) -> Result:
        """``myctr run --rm --rootfs ROOTFS ARGS...``"""
        return self("run", "--rm", "--rootfs", str(self.rootfs), *args, **kwargs)  # type: ignore[arg-type]

    def probe(self, *args: str, options: tuple[str, ...] = ()) -> dict:  # type: ignore[type-arg]
        result = self.run(*options, "/probe", *args)
        assert result.returncode == 0, result
        return result.json()


class HostNetns:
    """A network namespace the test makes and removes, acting as "the host" of network
    tests: bridges, veths and nftables rules live in it, never on the machine's own
    interfaces. Bound at ``path`` (a file), so it lives until :meth:`remove`."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / "netns"
        self.path.touch()
        subprocess.run(["unshare", f"--net={self.path}", "true"], check=True)
        self.run("ip", "link", "set", "lo", "up")

    def command(self, *args: str) -> list[str]:
        return ["nsenter", f"--net={self.path}", *args]

    def run(self, *args: str, check: bool = True, timeout: float = 30,
            input: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.command(*args), check=check, capture_output=True,
                              text=True, timeout=timeout, input=input)

    def popen(self, *args: str, **kwargs: Any) -> subprocess.Popen[str]:
        return subprocess.Popen(self.command(*args), text=True, **kwargs)

    def links(self) -> list[str]:
        out = self.run("ip", "-o", "link", "show").stdout
        return [line.split(":")[1].strip().split("@")[0] for line in out.splitlines()]

    def remove(self) -> None:
        subprocess.run(["umount", str(self.path)], check=False, capture_output=True)
        with contextlib.suppress(OSError):
            self.path.unlink()


def make_shared_dir(prefix: str) -> Path:
    """A temp dir every user can enter (pytest's tmp_path is mode 0700 below /tmp)."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    return path


def chown_tree(path: Path, user: pwd.struct_passwd | None) -> None:
    if user is None:
        return
    for p in [path, *path.rglob("*")]:
        os.lchown(p, user.pw_uid, user.pw_gid)


# --- leaks ------------------------------------------------------------------------------


def mounts_mentioning(text: str) -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return [line.strip() for line in f if text in line]


def processes_using(text: str) -> list[int]:
    """Pids whose mount table mentions ``text`` (a container's overlay names its dirs)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        with contextlib.suppress(OSError), open(f"/proc/{entry}/mountinfo") as f:
            if text in f.read():
                pids.append(int(entry))
    return pids


def leftovers(state_root: Path) -> dict[str, list[str]]:
    """Everything a container of this state root may have left behind."""
    containers = state_root / "data" / "containers"
    found = {
        "mounts": mounts_mentioning(str(state_root)),
        "processes": [str(p) for p in processes_using(str(state_root))],
        "container_dirs": sorted(os.listdir(containers)) if containers.exists() else [],
        "cgroups": cgroup_bases(state_root),
    }
    return {k: v for k, v in found.items() if v}


def cgroup_bases(state_root: Path) -> list[str]:
    """The state root's cgroup bases (below this process's own cgroups) that exist."""
    from runtime.cgroups import Unavailable, detect, state_tag

    try:
        driver = detect(state_tag(str(state_root)))
    except Unavailable:
        return []
    bases = [driver.base] if driver.version == 2 else list(driver.dirs.values())
    return sorted(b for b in bases if os.path.exists(b))


def group_name(gid: int) -> str:
    return grp.getgrgid(gid).gr_name


def run_in_pty(command: list[str], dialogue: tuple[tuple[str, bytes], ...] = (),
               timeout: float = 30) -> tuple[int, str]:
    """Run ``command`` with a pseudo-terminal as its stdio. ``dialogue`` is a list of
    (text to wait for, bytes to type then). Return (exit status, all terminal output)."""
    import select
    import time

    master, slave = os.openpty()
    proc = subprocess.Popen(command, stdin=slave, stdout=slave, stderr=slave,
                            start_new_session=True)
    os.close(slave)
    output = bytearray()
    steps = list(dialogue)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if steps and steps[0][0].encode() in output:
                os.write(master, steps.pop(0)[1])
            ready, _, _ = select.select([master], [], [], 0.2)
            if not ready:
                if proc.poll() is not None:
                    break
                continue
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: every writer closed the terminal
                break
            if not chunk:
                break
            output += chunk
        returncode = proc.wait(timeout=5)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    return returncode, output.decode(errors="replace")


def supervisor_call(state_root: Path, method: str, params: dict | None = None) -> object:  # type: ignore[type-arg]
    """One JSON-RPC call to the supervisor of ``state_root`` (None if none answers)."""
    request = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method,
                          "params": params or {}}).encode() + b"\n"
    try:
        return exchange(str(state_root / "run" / "control.sock"), request)
    except (FileNotFoundError, ConnectionRefusedError):
        return None


def exchange(path: str, data: bytes) -> dict | None:  # type: ignore[type-arg]
    """Send ``data`` (raw bytes: maybe not even JSON) to the socket at ``path``; the
    first line that comes back, parsed (None if nothing does)."""
    import socket

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(path)
        sock.sendall(data)
        reply = b""
        while not reply.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            reply += chunk
    return json.loads(reply) if reply else None  # type: ignore[no-any-return]


def stop_supervisor(state_root: Path, timeout: float = 30) -> None:
    """Shut the state root's supervisor down and wait until its process is gone."""
    import time

    reply = supervisor_call(state_root, "ping")
    if not isinstance(reply, dict) or "result" not in reply:
        return
    pid = reply["result"]["pid"]
    supervisor_call(state_root, "supervisor.shutdown")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and alive(pid):
        time.sleep(0.02)
    if alive(pid):
        os.kill(pid, 9)
        raise AssertionError(f"the supervisor {pid} did not exit within {timeout}s")


def alive(pid: int) -> bool:
    """True while ``pid`` runs; a zombie waiting for its reaper counts as gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except (FileNotFoundError, ProcessLookupError):  # ESRCH: it went between open and read
        return False
    return stat[stat.rindex(b")") + 2 :].split()[0] != b"Z"


def read_events(state_root: Path, since: int, until: Callable[[dict], bool],  # type: ignore[type-arg]
                timeout: float = 30) -> list[dict]:  # type: ignore[type-arg]
    """Events from the supervisor's stream after ``since`` until one matches ``until``."""
    import socket

    events = []
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(timeout)
        sock.connect(str(state_root / "run" / "control.sock"))
        sock.sendall(json.dumps({"jsonrpc": "2.0", "id": 1, "method": "events.subscribe",
                                 "params": {"since": since}}).encode() + b"\n")
        buffer = b""
        while True:
            chunk = sock.recv(65536)
            assert chunk, "the event stream ended"
            buffer += chunk
            while b"\n" in buffer:
                line, _, buffer = buffer.partition(b"\n")
                event = json.loads(line)["params"]
                events.append(event)
                if until(event):
                    return events


def pure_cgroup_v2() -> bool:
    try:
        with open("/sys/fs/cgroup/cgroup.subtree_control") as f:
            return "memory" in f.read().split()
    except OSError:
        return False


def delegate_cgroup(user: pwd.struct_passwd) -> Path:
    """A cgroup v2 subtree delegated to ``user`` as systemd's Delegate=yes does: an
    empty cgroup below ours, owned by the user (directory, cgroup.procs,
    cgroup.subtree_control, cgroup.threads)."""
    with open("/proc/self/cgroup") as f:
        own = next(line.split(":", 2)[2].strip() for line in f if line.startswith("0::"))
    path = Path(tempfile.mkdtemp(prefix="myctr-test-deleg-",
                                 dir="/sys/fs/cgroup" + (own if own != "/" else "")))
    available = (path / "cgroup.controllers").read_text().split()
    for controller in available:  # as systemd enables them for a delegated unit
        with contextlib.suppress(OSError):
            (path / "cgroup.subtree_control").write_text(f"+{controller}")
    chown_cgroup(path, user)
    return path


def chown_cgroup(path: Path, user: pwd.struct_passwd) -> None:
    for name in ("", "cgroup.procs", "cgroup.subtree_control", "cgroup.threads"):
        os.chown(path / name if name else path, user.pw_uid, user.pw_gid)


def start_supervisor_in_cgroup(runner: Myctr, cgroup: Path) -> None:
    """Start the runner's supervisor detached, as the only process of ``cgroup`` (a
    service with Delegate=yes, as systemd would start it)."""
    command = ["sh", "-c", f'echo $$ > {cgroup}/cgroup.procs && exec "$@"', "sh",
               *runner.command("supervise", "--detach")]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr


def remove_cgroup_tree(path: Path) -> list[str]:
    """rmdir a cgroup tree deepest first; return the cgroups that were still there."""
    if not path.exists():
        return []
    found = sorted((Path(d) for d, _, _ in os.walk(path)), key=lambda p: -len(p.parts))
    left = [str(p) for p in found if p != path]
    for p in found:
        with contextlib.suppress(OSError):
            p.rmdir()
    return left


def requests_at_once(path: str, calls: list[tuple[str, dict]],  # type: ignore[type-arg]
                     timeout: float = 20, gap: float = 0.0) -> list[dict]:  # type: ignore[type-arg]
    """Send the calls on one connection without waiting for answers (``gap`` seconds
    apart); their responses, in the calls' order (a socket timeout fails the test
    rather than hanging it)."""
    import time

    lines = [json.dumps({"jsonrpc": "2.0", "id": i, "method": m, "params": p}).encode() + b"\n"
             for i, (m, p) in enumerate(calls)]
    replies: dict[int, dict] = {}  # type: ignore[type-arg]
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(path)
        if gap:
            for line in lines:
                sock.sendall(line)
                time.sleep(gap)
        else:
            sock.sendall(b"".join(lines))
        buffer = b""
        while len(replies) < len(calls):
            chunk = sock.recv(65536)
            assert chunk, f"the supervisor hung up: {replies}"
            buffer += chunk
            *received, buffer = buffer.split(b"\n")
            for line in received:
                reply = json.loads(line)
                replies[reply["id"]] = reply
    return [replies[i] for i in range(len(calls))]
