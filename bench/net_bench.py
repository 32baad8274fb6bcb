"""Container networking beside raw baselines: TCP throughput and port-forward latency.

Run as ``python -m bench.net_bench [--quick] [--json] [--only throughput,latency]
[--runs N] [--seconds S] [--connects N]`` (root).

Sections::

    throughput  ``iperf3 -c ... -t S -J`` from "the host" to a server in a container
                (host -> container), N runs per row, round-robin; median Gbit/s and the
                ratio to the row's raw baseline, measured in the same run:
                  host      --network host container, to 127.0.0.1  | raw-lo: a plain iperf3
                  br-pub    --network bridge, to the published port  | raw-veth: a bare
                            on the host's address (DNAT)             | veth pair between two
                  br-ip     --network bridge, to the container's IP  | netns, no bridge/nft
                  slirp     --network slirp4netns, to the published  | raw-slirp: slirp4netns
                            port (slirp4netns's own port forwarder)  | alone, its add_hostfwd
    latency     N TCP connects + a 1-byte echo (busybox ``nc -ll -e cat``) through each
                path: median ms to connected and to the echo's byte

Everything happens in network namespaces the bench makes, bound to files in its temp dir
(``unshare --net=FILE``): "host" (the bench itself ``setns``es into it for the run, so the
myctr supervisor it starts, its bridge, veths and nftables table, and every client live
there; a veth pair out0/out1 gives it the non-loopback address 192.168.99.1), "peer" (the
far end of the bare veth) and "slirp" (the target of the bare slirp4netns). The machine's
own interfaces are never touched. Cleanup runs whatever happened: the containers, the
supervisor (``supervisor.shutdown``), every process the bench started (by pid), the
netns files (unmounted), the state root's short symlink, the temp dir; then /proc is
searched for any process left in the bench's namespaces.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import random
import select
import shutil
import socket
import string
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from bench.image_bench import report_sections
from bench.start_latency import (
    BenchError,
    ToolFailed,
    median,
    percentile,
    remove_work,
    report_failure,
    round_robin_order,
)
from bench.supervisor_bench import (
    Row,
    Section,
    bench_parser,
    check_output,
    comparison,
    meets,
    open_supervisor,
    parse_sections,
    sized,
)
from runtime import libc
from runtime.errors import ContainerError

TARGET = 0.95  # each myctr row within 5% of its baseline
HOST_IP = "192.168.99.1"  # the host netns's non-loopback address (on out0)
VETH_HOST, VETH_PEER = "10.99.0.1", "10.99.0.2"  # the bare veth pair
SLIRP_GUEST = "10.0.2.100"  # slirp4netns --configure's guest address
SLIRP_MTU = 65520
IPERF_PORT, ECHO_PORT = 5201, 7  # inside containers and the baselines' namespaces
LO_PORT, HOST_MODE_PORT = 5301, 5302  # raw-lo's and the host-mode container's servers
PUBLISHED = {"bridge": (15201, 15007), "slirp": (15202, 15008), "raw-slirp": (15203, 15009)}
SOCKET_MAX = 108  # sun_path, NUL included
CONTAINER_ID_LEN = 64
READY_S = 15.0  # the longest wait for a server to answer
API_TIMEOUT_S = 5.0
GBIT = 1e9


class NetSizes(NamedTuple):
    runs: int = 5  # timed iperf3 runs per row
    seconds: int = 3  # iperf3 -t
    connects: int = 200  # connect + echo samples per latency row
    warmup: int = 1  # untimed iperf3 runs per row (they also wait for the server)


FULL = NetSizes()
QUICK = NetSizes(runs=2, seconds=1, connects=30)


# iperf3's JSON, rows and ratios: pure.


class IperfResult(NamedTuple):
    bits_per_second: float  # end.sum_received: what the server got
    retransmits: int | None  # end.sum_sent.retransmits (the client's TCP)
    client_cpu: float | None  # end.cpu_utilization_percent.host_total
    server_cpu: float | None  # ... remote_total
    seconds: float  # end.sum_received.seconds


def parse_iperf3(text: str) -> IperfResult:
    """One ``iperf3 -c ... -J`` run; BenchError for iperf3's own error or a document
    without a received sum."""
    try:
        doc = json.loads(text)
    except ValueError:
        raise BenchError(f"iperf3 printed no JSON: {text[:300]!r}") from None
    if not isinstance(doc, dict):
        raise BenchError(f"iperf3 printed {type(doc).__name__}, not an object")
    if doc.get("error"):
        raise BenchError(f"iperf3: {doc['error']}")
    end = doc.get("end") or {}
    received = end.get("sum_received") or {}
    bits = received.get("bits_per_second")
    if not isinstance(bits, (int, float)):
        raise BenchError("iperf3's JSON has no end.sum_received.bits_per_second")
    sent = end.get("sum_sent") or {}
    cpu = end.get("cpu_utilization_percent") or {}
    return IperfResult(float(bits), sent.get("retransmits"), cpu.get("host_total"),
                       cpu.get("remote_total"), float(received.get("seconds") or 0.0))


def throughput_row(name: str, results: Sequence[IperfResult], forwarder_cpu: Sequence[float] = (),
                   note: str = "") -> Row:
    """Median Gbit/s of ``results`` with p10/p90, retransmits and CPU in the detail."""
    gbits = [r.bits_per_second / GBIT for r in results]
    if not gbits:
        return Row(name, "TCP throughput (median)", None, "Gbit/s", note or "no runs")
    parts = [f"p10 {percentile(gbits, 10):.2f}  p90 {percentile(gbits, 90):.2f}  n={len(gbits)}"]
    retrans = [r.retransmits for r in results if r.retransmits is not None]
    if retrans:
        parts.append(f"retr {int(median(retrans))}")
    cpu = [(r.client_cpu, r.server_cpu) for r in results
           if r.client_cpu is not None and r.server_cpu is not None]
    if cpu:
        parts.append(f"cpu client {median([c for c, _ in cpu]):.0f}% "
                     f"server {median([s for _, s in cpu]):.0f}%")
    if forwarder_cpu:
        parts.append(f"slirp4netns {median(forwarder_cpu):.0f}%")
    if note:
        parts.append(note)
    return Row(name, "TCP throughput (median)", median(gbits), "Gbit/s", "; ".join(parts),
               tuple(gbits))


def latency_rows(name: str, samples: Sequence[tuple[float, float]]) -> list[Row]:
    """Two rows per path from (connected, echoed) seconds since the connect() call: the
    median to the echo's byte (p10/p90 and the connect median in the detail)."""
    if not samples:
        return [Row(name, "connect + 1-byte echo (median)", None, "ms", "no samples")]
    connect_ms = [c * 1000 for c, _ in samples]
    echo_ms = [e * 1000 for _, e in samples]
    return [Row(name, "connect + 1-byte echo (median)", median(echo_ms), "ms",
                f"p10 {percentile(echo_ms, 10):.3f}  p90 {percentile(echo_ms, 90):.3f}  "
                f"n={len(echo_ms)}; connect() alone {median(connect_ms):.3f} ms",
                tuple(echo_ms))]


def comparisons_and_targets(rows: Sequence[Row], pairs: Sequence[tuple[str, str]],
                            factor: float = TARGET, higher: bool = True,
                            ) -> tuple[tuple[tuple[str, float | None], ...],
                                       tuple[tuple[str, bool | None], ...]]:
    """``name/baseline`` ratios for ``pairs`` whose name has a row, and a target each:
    at least ``factor`` (``higher``) or at most ``factor``."""
    tools = {row.tool for row in rows}
    comparisons, targets = [], []
    for name, baseline in pairs:
        if name not in tools:
            continue
        label, value = comparison(rows, name, baseline)
        comparisons.append((label, value))
        bound = f">= {factor:.2f}x" if higher else f"<= {factor:.2f}x"
        targets.append((f"{name} {bound} {baseline}", meets(value, 1.0, factor, higher)))
    return tuple(comparisons), tuple(targets)


def cpu_seconds(stat_text: str) -> float:
    """utime + stime of a /proc/PID/stat line, in seconds."""
    fields = stat_text.rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks  # fields 14, 15 of the whole line


def api_socket_fits(root: str) -> bool:
    """Whether myctr's slirp4netns API socket (STATE/data/containers/ID/slirp4netns.sock,
    see netplug.slirp) fits in sun_path under the state root ``root``."""
    path = os.path.join(root, "data", "containers", "x" * CONTAINER_ID_LEN, "slirp4netns.sock")
    return len(os.fsencode(path)) < SOCKET_MAX


def hostfwd_request(host_port: int, guest_port: int, guest_addr: str = SLIRP_GUEST) -> bytes:
    return json.dumps({"execute": "add_hostfwd", "arguments": {
        "proto": "tcp", "host_addr": "0.0.0.0", "host_port": host_port,
        "guest_addr": guest_addr, "guest_port": guest_port}}).encode()


def check_api_reply(reply: bytes) -> None:
    try:
        doc = json.loads(reply)
    except ValueError:
        raise BenchError(f"slirp4netns API: unreadable answer {reply[:200]!r}") from None
    if not isinstance(doc, dict) or "error" in doc or "return" not in doc:
        raise BenchError(f"slirp4netns API: {reply[:300]!r}")


def mtus(ip_link_output: str) -> dict[str, int]:
    """Interface name -> MTU from ``ip -o link``."""
    found = {}
    for line in ip_link_output.splitlines():
        parts = line.split()
        if len(parts) > 2 and "mtu" in parts:
            name = parts[1].rstrip(":").split("@")[0]
            found[name] = int(parts[parts.index("mtu") + 1])
    return found


# Namespaces and processes.


def progress(message: str) -> None:
    print(f"[net_bench] {message}", file=sys.stderr, flush=True)


@dataclasses.dataclass
class Netns:
    """A network namespace bound to ``path`` (``unshare --net=FILE``), with lo up."""

    path: Path

    @classmethod
    def make(cls, path: Path) -> Netns:
        path.touch()
        check_output(["unshare", f"--net={path}", "true"], "unshare --net")
        ns = cls(path)
        ns.run("ip", "link", "set", "lo", "up")
        return ns

    @property
    def inode(self) -> int:
        return os.stat(self.path).st_ino

    def command(self, *args: str | Path) -> list[str]:
        return ["nsenter", f"--net={self.path}", *map(str, args)]

    def run(self, *args: str | Path) -> str:
        return check_output(self.command(*args), " ".join(map(str, args[:3])))

    def remove(self) -> None:
        subprocess.run(["umount", str(self.path)], check=False, capture_output=True)
        with contextlib.suppress(OSError):
            self.path.unlink()


@contextlib.contextmanager
def joined(ns: Netns) -> Iterator[None]:
    """The bench process itself in ``ns`` (it is single-threaded): its children, the
    supervisor among them, start there; back to the original namespace at the end."""
    own = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        target = os.open(ns.path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            libc.setns(target, libc.CLONE_NEWNET, str(ns.path))
        finally:
            os.close(target)
        try:
            yield
        finally:
            libc.setns(own, libc.CLONE_NEWNET, "the bench's own netns")
    finally:
        os.close(own)


@dataclasses.dataclass
class Processes:
    """Servers the bench started; all killed by pid (and reaped) at the end."""

    errors: Path
    procs: list[subprocess.Popen[bytes]] = dataclasses.field(default_factory=list)

    def start(self, argv: Sequence[str | Path], tag: str, **kwargs: Any) -> subprocess.Popen[bytes]:
        with (self.errors / f"{tag}.err").open("wb") as err:
            proc = subprocess.Popen([str(a) for a in argv], stdin=subprocess.DEVNULL,
                                    stdout=kwargs.pop("stdout", subprocess.DEVNULL),
                                    stderr=err, **kwargs)
        self.procs.append(proc)
        return proc

    def stop_all(self, notes: list[str]) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.kill()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                notes.append(f"cleanup: pid {proc.pid} ({proc.args!r}) survived SIGKILL")


def processes_in(inodes: set[int]) -> list[str]:
    """Processes whose network namespace is one of ``inodes`` (a leak check)."""
    left = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError):
            if os.stat(f"/proc/{entry}/ns/net").st_ino in inodes:
                left.append(f"{entry} {Path(f'/proc/{entry}/comm').read_text().strip()}")
    return left


@contextlib.contextmanager
def short_root(target: Path) -> Iterator[str]:
    """A symlink /tmp/XXXX -> ``target``: myctr puts slirp4netns's API socket under the
    state root's container dir, and a temp dir's path is too long for sun_path."""
    rng = random.SystemRandom()
    for _ in range(100):
        link = "/tmp/" + "".join(rng.choice(string.ascii_lowercase) for _ in range(4))
        try:
            os.symlink(target, link)
            break
        except FileExistsError:
            continue
    else:
        raise BenchError("no free /tmp/XXXX name for the state root's symlink")
    try:
        yield link
    finally:
        with contextlib.suppress(OSError):
            if os.readlink(link) == str(target):
                os.unlink(link)


def install_iperf3(rootfs: Path, iperf3: str) -> None:
    """iperf3 and the libraries ``ldd`` names, copied to the same paths in the rootfs."""
    out = check_output(["ldd", iperf3], "ldd iperf3")
    paths = [iperf3] + [word for line in out.splitlines() for word in line.split()
                        if word.startswith("/")]
    for path in dict.fromkeys(paths):
        dest = rootfs / path.lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, dest, follow_symlinks=True)


def echo_once(address: str, port: int, timeout: float = 5.0) -> tuple[float, float]:
    """Seconds from connect() to connected, and to the echo of one byte."""
    start = time.perf_counter()
    with socket.create_connection((address, port), timeout=timeout) as sock:
        connected = time.perf_counter()
        sock.sendall(b"x")
        data = sock.recv(1)
        echoed = time.perf_counter()
    if data != b"x":
        raise BenchError(f"echo from {address}:{port}: got {data!r}")
    return connected - start, echoed - start


def wait_echo(address: str, port: int) -> None:
    deadline = time.monotonic() + READY_S
    while True:
        try:
            echo_once(address, port, timeout=1.0)
            return
        except (OSError, BenchError) as exc:
            if time.monotonic() > deadline:
                raise BenchError(f"no echo from {address}:{port} within {READY_S:.0f} s: "
                                 f"{exc}") from None
            time.sleep(0.1)


def run_iperf3(iperf3: str, address: str, port: int, seconds: int) -> IperfResult:
    proc = subprocess.run([iperf3, "-c", address, "-p", str(port), "-t", str(seconds), "-J",
                           "--connect-timeout", "3000"], stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=seconds + 60, check=False)
    result = parse_iperf3(proc.stdout)  # iperf3 -J reports its errors in the JSON
    if proc.returncode != 0:
        raise ToolFailed("iperf3", proc.args, proc.returncode, proc.stderr)
    return result


def wait_iperf3(iperf3: str, address: str, port: int) -> IperfResult:
    """A first, untimed run, retried until the server answers."""
    deadline = time.monotonic() + READY_S
    while True:
        try:
            return run_iperf3(iperf3, address, port, 1)
        except BenchError as exc:
            if time.monotonic() > deadline:
                raise BenchError(f"iperf3 to {address}:{port}: {exc}") from None
            time.sleep(0.2)


def api_call(socket_path: Path, request: bytes) -> None:
    """One slirp4netns API request on its own connection (it reads until EOF)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(API_TIMEOUT_S)
        sock.connect(str(socket_path))
        sock.sendall(request)
        sock.shutdown(socket.SHUT_WR)
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    check_api_reply(reply)


# The set-up: namespaces, baselines, containers.


@dataclasses.dataclass(frozen=True)
class Target:
    name: str  # the row
    address: str
    iperf_port: int | None
    echo_port: int | None
    cpu_pid: int | None = None  # a forwarder whose CPU share is reported (slirp4netns)


@dataclasses.dataclass
class World:
    work: Path
    rootfs: Path
    myctr: str
    root: str
    iperf3: str
    busybox: str
    procs: Processes
    notes: list[str]
    targets: dict[str, Target] = dataclasses.field(default_factory=dict)
    namespaces: dict[str, Netns] = dataclasses.field(default_factory=dict)
    containers: list[str] = dataclasses.field(default_factory=list)
    diagnostics: dict[str, Any] = dataclasses.field(default_factory=dict)

    def my(self, *args: str | Path) -> list[str]:
        return [self.myctr, "--root", self.root, *map(str, args)]

    def echo_server(self, ns: Netns | None, tag: str) -> None:
        argv = [self.busybox, "nc", "-ll", "-p", str(ECHO_PORT), "-e", f"{self.rootfs}/bin/cat"]
        self.procs.start(ns.command(*argv) if ns else argv, tag)

    def run_container(self, name: str, network: str, ports: Sequence[tuple[int, int]],
                      command: str) -> dict[str, Any]:
        publish = [arg for host, inner in ports for arg in ("-p", f"{host}:{inner}")]
        check_output(self.my("run", "-d", "--name", name, "--network", network, *publish,
                             "--rootfs", self.rootfs, "/bin/sh", "-c", command),
                     f"myctr run --network {network}")
        self.containers.append(name)
        doc: dict[str, Any] = json.loads(check_output(self.my("inspect", name),
                                                      "myctr inspect"))[0]
        return doc

    def remove_containers(self) -> None:
        if self.containers:
            try:
                check_output(self.my("rm", "-f", *self.containers), "myctr rm -f")
            except BenchError as exc:
                self.notes.append(f"cleanup: {exc}")


def container_address(doc: Mapping[str, Any]) -> str:
    """The container's first interface address (``myctr inspect``'s ``network``)."""
    interfaces = (doc.get("network") or {}).get("interfaces") or []
    if not interfaces:
        raise BenchError(f"no address in myctr inspect: {json.dumps(doc)[:500]}")
    return str(interfaces[0]["address"])


def container_pid(doc: Mapping[str, Any]) -> int:
    if not isinstance(doc.get("pid"), int) or doc["pid"] <= 0:
        raise BenchError(f"no pid in myctr inspect: {json.dumps(doc)[:500]}")
    return int(doc["pid"])


def slirp_pid(doc: Mapping[str, Any]) -> int | None:
    pid = (doc.get("network") or {}).get("slirp4netns_pid")
    return pid if isinstance(pid, int) else None


def ns_mtus(world: World, pid: int) -> dict[str, int]:
    out = check_output(["nsenter", "-t", str(pid), "-n", "ip", "-o", "link"], "ip link")
    return mtus(out)


def setup_host(world: World, host: Netns) -> None:
    """out0/out1 give the host netns a non-loopback address for published ports."""
    host.run("ip", "link", "add", "out0", "type", "veth", "peer", "name", "out1")
    host.run("ip", "addr", "add", f"{HOST_IP}/24", "dev", "out0")
    host.run("ip", "link", "set", "out0", "up")
    host.run("ip", "link", "set", "out1", "up")


def setup_raw_lo(world: World) -> None:
    world.procs.start([world.iperf3, "-s", "-B", "127.0.0.1", "-p", str(LO_PORT)], "raw-lo")
    world.targets["raw-lo"] = Target("raw-lo", "127.0.0.1", LO_PORT, None)


def setup_raw_veth(world: World, host: Netns, peer: Netns) -> None:
    host.run("ip", "link", "add", "nbv0", "type", "veth", "peer", "name", "nbv1", "netns",
             peer.path)
    host.run("ip", "addr", "add", f"{VETH_HOST}/24", "dev", "nbv0")
    host.run("ip", "link", "set", "nbv0", "up")
    peer.run("ip", "addr", "add", f"{VETH_PEER}/24", "dev", "nbv1")
    peer.run("ip", "link", "set", "nbv1", "up")
    world.procs.start(peer.command(world.iperf3, "-s", "-p", str(IPERF_PORT)), "raw-veth")
    world.echo_server(peer, "raw-veth-echo")
    world.targets["raw-veth"] = Target("raw-veth", VETH_PEER, IPERF_PORT, ECHO_PORT)
    world.diagnostics["raw-veth mtu"] = mtus(host.run("ip", "-o", "link")).get("nbv0")


def setup_raw_slirp(world: World, target: Netns) -> None:
    """slirp4netns alone against the ``target`` netns (the flags the brief names, no
    sandbox), a server inside, two add_hostfwd's on its API socket."""
    api = world.work / "slirp.sock"
    ready_r, ready_w = os.pipe()
    try:
        proc = world.procs.start(
            ["slirp4netns", "--configure", f"--mtu={SLIRP_MTU}", "--disable-host-loopback",
             f"--api-socket={api}", f"--ready-fd={ready_w}", "--netns-type=path",
             target.path, "tap0"], "raw-slirp4netns", pass_fds=(ready_w,))
        os.close(ready_w)
        ready_w = -1
        with os.fdopen(ready_r, "rb", buffering=0) as ready:
            ready_r = -1
            if not select.select([ready], [], [], READY_S)[0] or not ready.read(1):
                raise BenchError("slirp4netns (baseline) did not become ready: "
                                 + (world.work / "stderr" / "raw-slirp4netns.err").read_text())
    finally:
        for fd in (ready_r, ready_w):
            if fd >= 0:
                os.close(fd)
    iperf_port, echo_port = PUBLISHED["raw-slirp"]
    api_call(api, hostfwd_request(iperf_port, IPERF_PORT))
    api_call(api, hostfwd_request(echo_port, ECHO_PORT))
    world.procs.start(target.command(world.iperf3, "-s", "-p", str(IPERF_PORT)), "raw-slirp")
    world.echo_server(target, "raw-slirp-echo")
    world.targets["raw-slirp"] = Target("raw-slirp", HOST_IP, iperf_port, echo_port, proc.pid)
    world.diagnostics["raw-slirp4netns"] = " ".join(str(a) for a in list(proc.args))  # type: ignore[arg-type]
    world.diagnostics["raw-slirp tap0 mtu"] = mtus(target.run("ip", "-o", "link")).get("tap0")


SERVERS = (f"{{bb}} nc -ll -p {ECHO_PORT} -e /bin/cat & "
           f"exec /usr/bin/iperf3 -s -p {{iperf}}")


def setup_myctr(world: World) -> None:
    """Three containers: host mode, bridge and slirp4netns, each an iperf3 server (and an
    echo server on bridge and slirp)."""
    world.run_container("nbench-host", "host", (),
                        f"exec /usr/bin/iperf3 -s -p {HOST_MODE_PORT}")
    world.targets["host"] = Target("host", "127.0.0.1", HOST_MODE_PORT, None)

    bridge = world.run_container("nbench-bridge", "bridge",
                                 [(PUBLISHED["bridge"][0], IPERF_PORT),
                                  (PUBLISHED["bridge"][1], ECHO_PORT)],
                                 SERVERS.format(bb="/bin/busybox", iperf=IPERF_PORT))
    address = container_address(bridge)
    world.targets["br-pub"] = Target("br-pub", HOST_IP, *PUBLISHED["bridge"])
    world.targets["br-ip"] = Target("br-ip", address, IPERF_PORT, ECHO_PORT)
    world.diagnostics["bridge container"] = address
    world.diagnostics["bridge container mtu"] = ns_mtus(world, container_pid(bridge))
    world.diagnostics["host netns mtu"] = mtus(check_output(["ip", "-o", "link"], "ip link"))

    slirp = world.run_container("nbench-slirp", "slirp4netns",
                                [(PUBLISHED["slirp"][0], IPERF_PORT),
                                 (PUBLISHED["slirp"][1], ECHO_PORT)],
                                SERVERS.format(bb="/bin/busybox", iperf=IPERF_PORT))
    pid = slirp_pid(slirp)
    world.targets["slirp"] = Target("slirp", HOST_IP, *PUBLISHED["slirp"], pid)
    world.diagnostics["slirp container mtu"] = ns_mtus(world, container_pid(slirp))
    if pid is not None:
        world.diagnostics["myctr's slirp4netns"] = (
            Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip())


# Measuring.


THROUGHPUT_ROWS = ("raw-lo", "host", "raw-veth", "br-pub", "br-ip", "raw-slirp", "slirp")
THROUGHPUT_PAIRS = (("host", "raw-lo"), ("br-pub", "raw-veth"), ("br-ip", "raw-veth"),
                    ("slirp", "raw-slirp"))
LATENCY_ROWS = ("raw-veth", "br-ip", "br-pub", "raw-slirp", "slirp")
LATENCY_PAIRS = (("br-pub", "br-ip"), ("br-ip", "raw-veth"), ("br-pub", "raw-veth"),
                 ("slirp", "raw-slirp"))


def cpu_of(pid: int | None) -> float | None:
    if pid is None:
        return None
    with contextlib.suppress(OSError):
        return cpu_seconds(Path(f"/proc/{pid}/stat").read_text())
    return None


def measure_throughput(world: World, sizes: NetSizes) -> Section:
    names = [n for n in THROUGHPUT_ROWS if n in world.targets]
    for name in names:
        target = world.targets[name]
        assert target.iperf_port is not None
        wait_iperf3(world.iperf3, target.address, target.iperf_port)
    results: dict[str, list[IperfResult]] = {n: [] for n in names}
    forwarder: dict[str, list[float]] = {n: [] for n in names}
    for iteration in range(sizes.warmup + sizes.runs):
        for name in round_robin_order(names, iteration):
            target = world.targets[name]
            assert target.iperf_port is not None
            before, start = cpu_of(target.cpu_pid), time.monotonic()
            result = run_iperf3(world.iperf3, target.address, target.iperf_port, sizes.seconds)
            after, wall = cpu_of(target.cpu_pid), time.monotonic() - start
            if iteration < sizes.warmup:
                continue
            results[name].append(result)
            if before is not None and after is not None:
                forwarder[name].append(100 * (after - before) / wall)
        progress(f"throughput: iteration {iteration + 1}/{sizes.warmup + sizes.runs}")
    rows = tuple(throughput_row(n, results[n], forwarder[n]) for n in names)
    comparisons, targets = comparisons_and_targets(rows, THROUGHPUT_PAIRS)
    return Section(
        "throughput", f"TCP throughput host -> container, iperf3 -t {sizes.seconds}, "
                      f"{sizes.runs} runs per row ({sizes.warmup} warm-up), round-robin",
        "client `iperf3 -c ADDR -p PORT -t S -J` in the host netns, server `iperf3 -s` in "
        "the container (or the baseline's netns); Gbit/s = end.sum_received. host: "
        "--network host container, client to 127.0.0.1 (raw-lo: a plain iperf3 -s on "
        "127.0.0.1 of the host netns). br-pub: --network bridge, client to the port "
        f"published on {HOST_IP} (nft DNAT); br-ip: the same container by its IP (raw-veth: "
        "a bare veth pair into a second netns, no bridge, no nft). slirp: --network "
        f"slirp4netns, client to the published port on {HOST_IP} (raw-slirp: slirp4netns "
        f"--configure --mtu={SLIRP_MTU} --disable-host-loopback alone, add_hostfwd on its "
        "API socket). cpu: iperf3's own client/server totals; slirp4netns: its CPU time "
        "over the run's wall time",
        rows, comparisons, targets)


def measure_latency(world: World, sizes: NetSizes) -> Section:
    names = [n for n in LATENCY_ROWS if n in world.targets
             and world.targets[n].echo_port is not None]
    for name in names:
        target = world.targets[name]
        assert target.echo_port is not None
        wait_echo(target.address, target.echo_port)
    samples: dict[str, list[tuple[float, float]]] = {n: [] for n in names}
    for iteration in range(sizes.connects + 3):
        for name in round_robin_order(names, iteration):
            target = world.targets[name]
            assert target.echo_port is not None
            sample = echo_once(target.address, target.echo_port)
            if iteration >= 3:
                samples[name].append(sample)
    rows = tuple(row for n in names for row in latency_rows(n, samples[n]))
    comparisons, _ = comparisons_and_targets(rows, LATENCY_PAIRS, higher=False)
    return Section(
        "latency", f"port-forward connection setup, {sizes.connects} connects per path "
                   "(3 warm-up), round-robin",
        "from the host netns: connect(), send 1 byte, receive its echo, close; the server "
        f"is busybox `nc -ll -p {ECHO_PORT} -e cat` (a fork + exec of cat per connection, "
        "the same on every path). br-pub: the bridge container's published port on "
        f"{HOST_IP}; br-ip: its IP; raw-veth: the bare veth's far end; slirp: the "
        "slirp4netns container's published port; raw-slirp: the bare slirp4netns's hostfwd. "
        "For slirp paths connect() returns once slirp4netns accepted (before the guest did)",
        rows, comparisons)


# Running it all.


SECTIONS = ("throughput", "latency")


def machine_notes(notes: list[str], tag: str) -> None:
    load = Path("/proc/loadavg").read_text().split()[:3]
    notes.append(f"load average {tag}: {' '.join(load)} ({os.cpu_count()} CPUs)")


@contextlib.contextmanager
def open_world(notes: list[str]) -> Iterator[World]:
    myctr = Path(sys.executable).with_name("myctr")
    if not myctr.exists():
        raise BenchError(f"{myctr} not found: run make deps")
    iperf3 = shutil.which("iperf3")
    if iperf3 is None:
        raise BenchError("iperf3 is not installed (apt-get install iperf3; make bench-deps)")
    busybox = shutil.which("busybox")
    with contextlib.ExitStack() as stack:
        work = Path(tempfile.mkdtemp(prefix=f"myctr-nbench-{os.getpid()}-"))
        stack.callback(remove_work, work)
        (work / "stderr").mkdir()
        inodes: set[int] = set()
        stack.callback(lambda: leak_check(inodes, notes))
        namespaces = {}
        for name in ("host", "peer", "slirp"):
            ns = Netns.make(work / f"{name}.netns")
            stack.callback(ns.remove)
            inodes.add(ns.inode)
            namespaces[name] = ns
        rootfs = work / "rootfs"
        check_output([str(myctr), "rootfs", "bootstrap", "busybox", str(rootfs)], "bootstrap")
        install_iperf3(rootfs, iperf3)
        busybox = busybox or str(rootfs / "bin" / "busybox")
        state = work / "myctr"
        state.mkdir()
        root = stack.enter_context(short_root(state))
        if not api_socket_fits(root):
            raise BenchError(f"state root {root} too long for slirp4netns's API socket")
        stack.enter_context(joined(namespaces["host"]))
        procs = Processes(work / "stderr")
        stack.callback(procs.stop_all, notes)
        world = World(work, rootfs, str(myctr), root, iperf3, busybox, procs, notes,
                      namespaces=namespaces)
        sup = stack.enter_context(open_supervisor(str(myctr), Path(root), notes))
        if os.stat(f"/proc/{sup.pid}/ns/net").st_ino != namespaces["host"].inode:
            raise BenchError("the supervisor is not in the bench's host netns")
        stack.callback(world.remove_containers)
        yield world


def leak_check(inodes: set[int], notes: list[str]) -> None:
    left = processes_in(inodes)
    if left:
        notes.append(f"cleanup: processes still in the bench's namespaces: {left}")


def benchmark(sizes: NetSizes, only: Sequence[str], notes: list[str]) -> list[Section]:
    if os.geteuid() != 0:
        raise BenchError("the bench needs root (network namespaces, veths, the bridge)")
    tun = os.stat("/dev/net/tun").st_mode & 0o777 if os.path.exists("/dev/net/tun") else None
    notes.append("slirp4netns rows ran as root (the bench's supervisor and the bare "
                 f"slirp4netns; /dev/net/tun is {tun:04o} here)" if tun is not None
                 else "no /dev/net/tun: slirp4netns rows will fail")
    machine_notes(notes, "before")
    with open_world(notes) as world:
        progress(f"work dir {world.work}, state root {world.root}")
        host = world.namespaces["host"]
        setup_host(world, host)
        setup_raw_lo(world)
        setup_raw_veth(world, host, world.namespaces["peer"])
        setup_raw_slirp(world, world.namespaces["slirp"])
        setup_myctr(world)
        sections = []
        if "throughput" in only:
            progress("throughput ...")
            sections.append(measure_throughput(world, sizes))
        if "latency" in only:
            progress("latency ...")
            sections.append(measure_latency(world, sizes))
        for key, value in world.diagnostics.items():
            notes.append(f"{key}: {value}")
    machine_notes(notes, "after")
    return sections


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = bench_parser("net_bench", __doc__)
    parser.add_argument("--runs", type=int, help=f"iperf3 runs per row ({FULL.runs}; --quick "
                                                 f"{QUICK.runs})")
    parser.add_argument("--seconds", type=int, help=f"iperf3 -t ({FULL.seconds}; --quick "
                                                    f"{QUICK.seconds})")
    parser.add_argument("--connects", type=int, help=f"latency samples per path "
                                                     f"({FULL.connects}; --quick "
                                                     f"{QUICK.connects})")
    args = parse_sections(parser, argv, SECTIONS)
    args.sizes = sized(args, FULL, QUICK, runs=args.runs, seconds=args.seconds,
                       connects=args.connects)
    if min(args.sizes.runs, args.sizes.seconds, args.sizes.connects) < 1:
        parser.error("--runs, --seconds and --connects must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    notes: list[str] = []
    try:
        sections = benchmark(args.sizes, args.only, notes)
    except (BenchError, ContainerError, OSError, subprocess.TimeoutExpired) as exc:
        return report_failure(exc, notes)
    return report_sections(sections, SECTIONS, notes, args.json,
                           {"sizes": args.sizes._asdict()})


if __name__ == "__main__":
    sys.exit(main())
