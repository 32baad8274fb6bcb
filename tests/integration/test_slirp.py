"""The slirp4netns plug against real network namespaces, as root and as the rootless test
user: a target process in its own netns (and, rootless, its own user namespace) stands
in for a container's init; the plug runs in ``slirp_driver.py`` (a trio program) inside
the test's host netns, where the servers and clients of "the host" run too.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.integration import harness

MODES = ("root", "rootless")
DRIVER = Path(__file__).with_name("slirp_driver.py")
TUN = harness.TUN
HOST_IP = "192.0.2.1"

pytestmark = pytest.mark.skipif(shutil.which("slirp4netns") is None,
                                reason="slirp4netns is not installed")

SERVER = r"""
import socket, sys
proto, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
s = socket.socket(socket.AF_INET, kind)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((host, port))
if proto == "tcp":
    s.listen(16)
print(s.getsockname()[1], flush=True)
while True:
    if proto == "tcp":
        c, addr = s.accept()
        data = c.recv(1000)
        c.sendall(data + b" from " + addr[0].encode())
        c.close()
    else:
        data, addr = s.recvfrom(1000)
        s.sendto(data + b" from " + addr[0].encode(), addr)
"""

CLIENT = r"""
import socket, sys
proto, host, port, message = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
s = socket.socket(socket.AF_INET, kind)
s.settimeout(float(sys.argv[5]) if len(sys.argv) > 5 else 5)
try:
    if proto == "tcp":
        s.connect((host, port))
        s.sendall(message.encode())
        print(s.recv(1000).decode())
    else:
        s.settimeout(s.gettimeout() / 5)
        for _ in range(5):  # UDP: retry a lost first datagram
            s.sendto(message.encode(), (host, port))
            try:
                print(s.recvfrom(1000)[0].decode())
                break
            except socket.timeout:
                continue
        else:
            raise socket.timeout("no answer")
except OSError as exc:
    print(f"ERROR {type(exc).__name__} {exc}")
    sys.exit(1)
"""


@dataclass
class Driver:
    """The plug running in ``slirp_driver.py``; ``events`` are its JSON lines."""

    proc: subprocess.Popen[str]
    run_dir: Path
    lines: queue.Queue[str | None] = field(default_factory=queue.Queue)

    def __post_init__(self) -> None:
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def event(self, timeout: float = 30) -> dict:  # type: ignore[type-arg]
        line = self.lines.get(timeout=timeout)
        assert line is not None, f"the driver ended: {self.stderr()}"
        return json.loads(line)  # type: ignore[no-any-return]

    def started(self) -> dict:  # type: ignore[type-arg]
        doc = self.event()
        assert "started" in doc, doc
        return doc["started"]  # type: ignore[no-any-return]

    def stop(self) -> dict:  # type: ignore[type-arg]
        """Close stdin (the run ends: the plug is cancelled) and wait for it."""
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        doc = self.event()
        self.proc.wait(timeout=10)
        return doc

    def stderr(self) -> str:
        if self.proc.poll() is None:
            return "(still running)"
        return self.proc.stderr.read() if self.proc.stderr else ""

    @property
    def socket(self) -> Path:
        return self.run_dir / "slirp4netns.sock"


@dataclass
class SlirpEnv:
    mode: str
    hostns: harness.HostNetns
    base: Path
    driver_path: Path
    user: object
    staged: Path
    procs: list[subprocess.Popen[str]] = field(default_factory=list)
    count: int = 0

    def as_user(self, *args: str) -> list[str]:
        if self.mode == "root":
            return list(args)
        user = self.user
        return ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}",  # type: ignore[attr-defined]
                "--init-groups", *args]

    def target(self) -> int:
        """A process in its own netns (rootless: also its own user namespace, as the
        test user), standing in for a container's init; returns its pid."""
        if self.mode == "root":
            args = ["unshare", "--net", "sleep", "300"]
        else:
            args = self.as_user("unshare", "--user", "--map-root-user", "--net",
                                "sleep", "300")
        proc = self.hostns.popen(*args, stdin=subprocess.DEVNULL)
        self.procs.append(proc)
        host_net = os.stat(self.hostns.path).st_ino
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                if (os.readlink(f"/proc/{proc.pid}/exe").endswith("/sleep")
                        and os.stat(f"/proc/{proc.pid}/ns/net").st_ino != host_net):
                    return proc.pid
            time.sleep(0.02)
        raise AssertionError("the target process did not start")

    def plug(self, pid: int, ports: tuple[tuple[str, int, int, str], ...] = (),
             options: tuple[tuple[str, str], ...] = ()) -> Driver:
        self.count += 1
        run_dir = self.base / f"run{self.count}"
        run_dir.mkdir(mode=0o700)
        if self.mode == "rootless":
            harness.chown_tree(run_dir, self.user)  # type: ignore[arg-type]
        request = json.dumps({"pid": pid, "run_dir": str(run_dir), "options": options,
                              "ports": [{"host_ip": ip, "host_port": hp, "container_port": cp,
                                         "protocol": proto} for ip, hp, cp, proto in ports]})
        if self.mode == "root":
            python = [sys.executable]
            env = {**os.environ, "PYTHONPATH": str(harness.REPO)}
        else:
            python = self.as_user("--reset-env", "env", f"PYTHONPATH={self.staged}",
                                  "PATH=/usr/sbin:/usr/bin:/sbin:/bin", "/usr/bin/python3")
            env = None
        proc = self.hostns.popen(*python, str(self.driver_path), request,
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, env=env)
        self.procs.append(proc)
        return Driver(proc, run_dir)

    def server(self, where: int | None, proto: str, host: str, port: int = 0) -> int:
        """An echo server in the target's netns (``where`` = its pid) or, with None, in
        the host netns; returns its port."""
        args = ["python3", "-c", SERVER, proto, host, str(port)]
        if where is None:
            proc = self.hostns.popen(*args, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
        else:
            proc = subprocess.Popen(["nsenter", "-t", str(where), "-n", *args], text=True,
                                    stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
        self.procs.append(proc)
        assert proc.stdout is not None
        return int(proc.stdout.readline())

    def client(self, where: int | None, proto: str, host: str, port: int,
               message: str = "hello", timeout: float = 5) -> str:
        args = ["python3", "-c", CLIENT, proto, host, str(port), message, str(timeout)]
        if where is None:
            done = self.hostns.run(*args, check=False, timeout=timeout * 12)
        else:
            done = subprocess.run(["nsenter", "-t", str(where), "-n", *args], text=True,
                                  capture_output=True, timeout=timeout * 12, check=False)
        return done.stdout.strip()

    def host_address(self) -> str:
        """Give "the host" an address that is not loopback (on a veth pair inside the host
        netns: this kernel has no dummy links): HOST_IP."""
        run = self.hostns.run
        run("ip", "link", "add", "hostif0", "type", "veth", "peer", "name", "hostif1")
        run("ip", "addr", "add", f"{HOST_IP}/24", "dev", "hostif0")
        run("ip", "link", "set", "hostif0", "up")
        run("ip", "link", "set", "hostif1", "up")
        return HOST_IP

    def in_target(self, pid: int, *args: str) -> str:
        return subprocess.run(["nsenter", "-t", str(pid), "-n", *args], text=True,
                              capture_output=True, check=True, timeout=30).stdout

    def cleanup(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                if proc.stdin is not None:
                    with contextlib.suppress(OSError):
                        proc.stdin.close()
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        proc.wait(timeout=5)
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()


@pytest.fixture(params=MODES)
def slirp(request: pytest.FixtureRequest, hostns: harness.HostNetns, workspace: Path,
          test_user: object, staged_python: Path) -> Iterator[SlirpEnv]:
    mode = request.param
    if mode == "rootless":
        request.getfixturevalue("tun_for_rootless")
    base = harness.make_shared_dir(f"{workspace}/slirp-")
    driver = workspace / "slirp_driver.py"
    shutil.copy2(DRIVER, driver)
    driver.chmod(0o644)
    env = SlirpEnv(mode, hostns, base, driver, test_user, staged_python)
    yield env
    env.cleanup()
    left = slirp_processes(base)
    for pid in left:  # ours: their command lines name this test's run directories
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    shutil.rmtree(base, ignore_errors=True)
    assert not left, f"slirp4netns processes left behind: {left}"


def slirp_processes(base: Path) -> list[int]:
    """Live slirp4netns processes whose command line names a directory below ``base``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError):
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            if (cmdline and cmdline[0].endswith(b"slirp4netns")
                    and any(str(base).encode() in arg for arg in cmdline)
                    and harness.alive(int(entry))):
                found.append(int(entry))
    return found


def wait_gone(pid: int, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not harness.alive(pid):
            return True
        time.sleep(0.02)
    return False


# --- tests ------------------------------------------------------------------------------


def test_interface_route_dns_and_egress(slirp: SlirpEnv) -> None:
    pid = slirp.target()
    slirp.host_address()
    driver = slirp.plug(pid)
    attached = driver.started()
    assert attached["interfaces"] == [{"name": "tap0", "address": "10.0.2.100", "prefix": 24,
                                       "gateway": "10.0.2.2", "mac": ""}]
    assert attached["nameservers"] == ["10.0.2.3"]
    assert attached["source_ip_preserved"] is True
    assert attached["ports"] == []
    assert attached["allow_host_loopback"] is False
    assert harness.alive(attached["slirp4netns_pid"])
    assert driver.socket.exists()

    addr = slirp.in_target(pid, "ip", "-4", "-o", "addr", "show", "tap0")
    assert "10.0.2.100/24" in addr
    assert "mtu 65520" in slirp.in_target(pid, "ip", "link", "show", "tap0")
    assert "default via 10.0.2.2 dev tap0" in slirp.in_target(pid, "ip", "route")

    port = slirp.server(None, "tcp", HOST_IP)
    assert slirp.client(pid, "tcp", HOST_IP, port).startswith("hello from ")
    udp = slirp.server(None, "udp", HOST_IP)
    assert slirp.client(pid, "udp", HOST_IP, udp).startswith("hello from ")
    # --disable-host-loopback: the host's 127.0.0.1 stays out of reach via 10.0.2.2
    local = slirp.server(None, "tcp", "127.0.0.1")
    assert slirp.client(pid, "tcp", "10.0.2.2", local, timeout=2).startswith("ERROR")

    assert driver.stop() == {"stopped": True}
    assert wait_gone(attached["slirp4netns_pid"])
    assert not driver.socket.exists()


def test_options_host_loopback_cidr_mtu(slirp: SlirpEnv) -> None:
    pid = slirp.target()
    driver = slirp.plug(pid, options=(("allow_host_loopback", "true"),
                                      ("cidr", "10.0.3.0/24"), ("mtu", "1500")))
    attached = driver.started()
    assert attached["interfaces"][0]["address"] == "10.0.3.100"
    assert attached["interfaces"][0]["gateway"] == "10.0.3.2"
    assert attached["nameservers"] == ["10.0.3.3"]
    assert "10.0.3.100/24" in slirp.in_target(pid, "ip", "-4", "-o", "addr", "show", "tap0")
    assert "mtu 1500" in slirp.in_target(pid, "ip", "link", "show", "tap0")
    local = slirp.server(None, "tcp", "127.0.0.1")
    assert slirp.client(pid, "tcp", "10.0.3.2", local).startswith("hello from ")
    assert driver.stop() == {"stopped": True}


def test_published_tcp_and_udp_ports(slirp: SlirpEnv) -> None:
    """slirp4netns's own port handler keeps the client's address (podman: "slower than
    rootlesskit but preserves the correct source IP address"), except for clients on
    the host's loopback, which the container sees as 10.0.2.2. UDP replies to loopback
    clients are lost under --disable-host-loopback (podman#4586): UDP is checked from
    the host's other address."""
    pid = slirp.target()
    host = slirp.host_address()
    slirp.server(pid, "tcp", "0.0.0.0", 8080)
    slirp.server(pid, "udp", "0.0.0.0", 5353)
    driver = slirp.plug(pid, ports=(("", 0, 8080, "tcp"), ("", 18053, 5353, "udp"),
                                    ("127.0.0.1", 18080, 8080, "tcp")))
    attached = driver.started()
    assert attached["source_ip_preserved"] is True
    picked, udp, fixed = attached["ports"]
    assert picked["host_port"] > 0 and picked["container_port"] == 8080
    assert picked["host_ip"] == "" and picked["protocol"] == "tcp"
    assert udp == {"host_ip": "", "host_port": 18053, "container_port": 5353,
                   "protocol": "udp"}
    assert fixed == {"host_ip": "127.0.0.1", "host_port": 18080, "container_port": 8080,
                     "protocol": "tcp"}
    assert slirp.client(None, "tcp", "127.0.0.1", picked["host_port"]) == "hello from 10.0.2.2"
    assert slirp.client(None, "tcp", host, picked["host_port"]) == f"hello from {host}"
    assert slirp.client(None, "tcp", "127.0.0.1", 18080, "again") == "again from 10.0.2.2"
    assert slirp.client(None, "tcp", host, 18080, timeout=2).startswith("ERROR")  # 127.0.0.1 only
    assert slirp.client(None, "udp", host, 18053, "dgram") == f"dgram from {host}"
    assert driver.stop() == {"stopped": True}
    # the ports are free again
    assert slirp.server(None, "tcp", "127.0.0.1", 18080) == 18080


def test_busy_host_port_is_a_clear_error_and_starts_nothing(slirp: SlirpEnv) -> None:
    pid = slirp.target()
    busy = slirp.server(None, "tcp", "0.0.0.0", 18081)
    driver = slirp.plug(pid, ports=(("", 18082, 80, "tcp"), ("", busy, 80, "tcp")))
    doc = driver.event()
    assert doc["error"] == "Conflict", doc
    assert "host port 0.0.0.0:18081/tcp is already in use" in doc["message"]
    driver.proc.wait(timeout=10)
    assert slirp_processes(slirp.base) == []
    assert not driver.socket.exists()
    # the first port, published before the failure, was released with slirp4netns
    assert slirp.server(None, "tcp", "0.0.0.0", 18082) == 18082


def test_bad_host_ports_are_clear_errors(slirp: SlirpEnv) -> None:
    pid = slirp.target()
    driver = slirp.plug(pid, ports=(("192.0.2.77", 0, 80, "tcp"),))
    doc = driver.event()
    assert doc == {"error": "SpecError", "message": "cannot publish on 192.0.2.77:0/tcp: "
                   "192.0.2.77 is not an address of this host"}
    if slirp.mode == "rootless":
        driver = slirp.plug(pid, ports=(("", 80, 80, "tcp"),))
        doc = driver.event()
        assert doc["error"] == "HostError", doc
        assert "host port 0.0.0.0:80/tcp: ports below 1024 need root" in doc["message"]
    assert slirp_processes(slirp.base) == []


def test_slirp4netns_dying_calls_failed(slirp: SlirpEnv) -> None:
    pid = slirp.target()
    driver = slirp.plug(pid)
    slirp_pid = driver.started()["slirp4netns_pid"]
    os.kill(slirp_pid, signal.SIGKILL)
    doc = driver.event()
    assert "failed" in doc, doc
    assert f"slirp4netns (pid {slirp_pid}) exited unexpectedly (killed by SIGKILL)" \
        in doc["failed"]
    assert "lost its network" in doc["failed"]
    assert driver.stop() == {"stopped": True}
    assert not driver.socket.exists()


def test_supervisor_killed_slirp4netns_exits_by_itself(slirp: SlirpEnv) -> None:
    """--exit-fd: nothing is left when the supervisor dies by SIGKILL."""
    pid = slirp.target()
    driver = slirp.plug(pid, ports=(("", 0, 80, "tcp"),))
    slirp_pid = driver.started()["slirp4netns_pid"]
    driver.proc.kill()
    driver.proc.wait()
    assert wait_gone(slirp_pid, 5), "slirp4netns outlived its supervisor"


def test_target_gone_before_start_is_an_error(slirp: SlirpEnv) -> None:
    pid = slirp.target()
    slirp.procs[-1].kill()
    slirp.procs[-1].wait()
    driver = slirp.plug(pid)
    doc = driver.event()
    assert doc.get("error") == "HostError", doc
    assert "slirp4netns failed to start" in doc["message"]
    assert slirp_processes(slirp.base) == []


def test_tun_problem_explains_a_0600_device(workspace: Path, test_user: object,
                                             staged_python: Path) -> None:
    """A tun device node of mode 0600 (made here, not /dev/net/tun) as the test user."""
    directory = harness.make_shared_dir(f"{workspace}/tun-")
    node = directory / "tun"
    try:
        os.mknod(node, 0o600 | stat.S_IFCHR, os.makedev(10, 200))
        node.chmod(0o600)
        user = test_user
        code = ("import sys; from netplug.slirp import tun_problem; "
                "print(tun_problem(sys.argv[1]))")
        done = subprocess.run(
            ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}",  # type: ignore[attr-defined]
             "--init-groups", "--reset-env", "env", f"PYTHONPATH={staged_python}",
             "/usr/bin/python3", "-c", code, str(node)],
            capture_output=True, text=True, timeout=30, check=True)
        assert done.stdout.strip() == (
            f"{node} is mode 0600: rootless slirp4netns needs it world-accessible "
            f"(chmod 0666 {node}, the default on most distributions)")
    finally:
        shutil.rmtree(directory, ignore_errors=True)
