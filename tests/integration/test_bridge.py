"""Bridge networks for root containers, component by component (netplug.bridge,
netplug.nft, netplug.ipam), in a network namespace of the test's acting as the host.

The components run in ``bridge_driver.py`` under ``nsenter --net=HOSTNS``; a
"container" is ``unshare --net sleep`` started in that namespace. An "external"
namespace joined to the host by a veth (192.168.77.0/24) is the outside world: egress
NAT and the client address of published ports are checked from there.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from netplug import PortMapping
from netplug.ipam import Network, allocate, make_network
from tests.integration import harness

HERE = Path(__file__).resolve().parent
DRIVER = str(HERE / "bridge_driver.py")
NETCHECK = str(HERE / "netcheck.py")
TABLE = "myctr-bridgetest"
HOST_ADDR = "192.168.77.1"
EXT_ADDR = "192.168.77.2"
DEFAULT = make_network("bridge", {})


class Container:
    """A process in a network namespace of its own, started in the host namespace."""

    def __init__(self, host: harness.HostNetns) -> None:
        self.proc = host.popen("unshare", "--net", "sleep", "120",
                               stdin=subprocess.DEVNULL)
        self.pid = self.proc.pid
        self.netns = f"/proc/{self.pid}/ns/net"
        host_ino = os.stat(host.path).st_ino
        deadline = time.monotonic() + 10
        while os.stat(self.netns).st_ino == host_ino:  # until unshare ran
            assert time.monotonic() < deadline, "unshare --net did not happen"
            time.sleep(0.01)

    def command(self, *args: str) -> list[str]:
        return ["nsenter", f"--net={self.netns}", *args]

    def run(self, *args: str) -> str:
        return subprocess.run(self.command(*args), check=True, capture_output=True,
                              text=True, timeout=30).stdout

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


class Lab:
    """The host namespace, the external one, the driver."""

    def __init__(self, host: harness.HostNetns, external: harness.HostNetns) -> None:
        self.host = host
        self.external = external
        self.containers: list[Container] = []
        self.plugs: list[subprocess.Popen[str]] = []
        self.servers: list[subprocess.Popen[str]] = []

    def driver(self, op: str, **args: Any) -> subprocess.CompletedProcess[str]:
        doc = json.dumps({"op": op, "table": TABLE, **args})
        return self.host.run(sys.executable, DRIVER, doc, check=False)

    def call(self, op: str, **args: Any) -> str:
        result = self.driver(op, **args)
        assert result.returncode == 0, result.stderr
        return result.stdout

    def network(self, net: Network) -> None:
        self.call("network", network=net._asdict())

    def rules(self) -> list[dict[str, Any]]:
        return json.loads(self.call("rules"))["rules"]  # type: ignore[no-any-return]

    def container(self) -> Container:
        c = Container(self.host)
        self.containers.append(c)
        return c

    def start_plug(self, c: Container, net: Network, address: str, cid: str,
                   ports: tuple[PortMapping, ...] = ()) -> tuple[subprocess.Popen[str],
                                                              dict[str, Any]]:
        doc = json.dumps({"op": "plug", "table": TABLE, "network": net._asdict(),
                          "address": address, "container_id": cid, "pid": c.pid,
                          "ports": [p.to_json() for p in ports]})
        proc = self.host.popen(sys.executable, DRIVER, doc, stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.plugs.append(proc)
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line, f"the driver said nothing: {proc.stderr.read() if proc.stderr else ''}"
        return proc, json.loads(line)

    def plug(self, c: Container, net: Network, address: str, cid: str,
             ports: tuple[PortMapping, ...] = ()) -> tuple[subprocess.Popen[str],
                                                        dict[str, Any]]:
        proc, attached = self.start_plug(c, net, address, cid, ports)
        assert "error" not in attached, attached
        return proc, attached

    @staticmethod
    def unplug(proc: subprocess.Popen[str]) -> dict[str, Any]:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.close()
        done = json.loads(proc.stdout.readline())
        assert proc.wait(timeout=30) == 0
        return done  # type: ignore[no-any-return]

    def serve(self, where: list[str], proto: str, addr: str, port: int,
              count: int = 1) -> subprocess.Popen[str]:
        proc = subprocess.Popen([*where, sys.executable, NETCHECK, "serve", proto, addr,
                                 str(port), str(count)], stdout=subprocess.PIPE, text=True)
        self.servers.append(proc)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        return proc

    @staticmethod
    def ask(where: list[str], proto: str, host: str, port: int) -> str:
        result = subprocess.run([*where, sys.executable, NETCHECK, "ask", proto, host,
                                 str(port)], capture_output=True, text=True, timeout=30)
        assert result.returncode == 0, result.stderr
        return result.stdout.strip()

    def close(self) -> None:
        for proc in [*self.plugs, *self.servers]:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        for c in self.containers:
            c.kill()


@pytest.fixture
def lab(hostns: harness.HostNetns, workspace: Path) -> Iterator[Lab]:
    directory = harness.make_shared_dir(f"{workspace}/extns-")
    external = harness.HostNetns(directory)
    hostns.run("ip", "link", "add", "up0", "type", "veth", "peer", "name", "ext0",
               "netns", str(external.path))
    hostns.run("ip", "addr", "add", f"{HOST_ADDR}/24", "dev", "up0")
    hostns.run("ip", "link", "set", "up0", "up")
    external.run("ip", "addr", "add", f"{EXT_ADDR}/24", "dev", "ext0")
    external.run("ip", "link", "set", "ext0", "up")
    the_lab = Lab(hostns, external)
    the_lab.call("reset")
    yield the_lab
    the_lab.close()
    the_lab.driver("destroy")
    external.remove()
    import shutil

    shutil.rmtree(directory, ignore_errors=True)


def _eth0(c: Container) -> tuple[str, str]:
    addr = c.run("ip", "-o", "-4", "addr", "show", "dev", "eth0").split()
    route = c.run("ip", "-4", "route", "show", "default")
    return addr[addr.index("inet") + 1], route.strip()


def _veths(host: harness.HostNetns) -> list[str]:
    return [name for name in host.links() if name.startswith("veth")]


def test_container_gets_eth0_with_its_lease_and_the_host_reaches_it(lab: Lab) -> None:
    lab.network(DEFAULT)
    assert DEFAULT.bridge in lab.host.links()
    c = lab.container()
    address = allocate(DEFAULT.subnet, DEFAULT.gateway, set())
    proc, attached = lab.plug(c, DEFAULT, address, "c1")
    assert attached["interfaces"] == [{"name": "eth0", "address": "10.88.0.2", "prefix": 16,
                                       "gateway": "10.88.0.1",
                                       "mac": attached["interfaces"][0]["mac"]}]
    assert attached["source_ip_preserved"] is True
    assert attached["stray_threads"] == []
    assert _eth0(c) == ("10.88.0.2/16", "default via 10.88.0.1 dev eth0 proto static")
    assert "UP" in c.run("ip", "-o", "link", "show", "lo")
    veth = attached["host_interface"]
    assert _veths(lab.host) == [veth]
    assert f"master {DEFAULT.bridge}" in lab.host.run("ip", "-o", "link", "show", veth).stdout
    # the host reaches the container
    lab.serve(c.command(), "tcp", "0.0.0.0", 80)
    assert lab.ask(lab.host.command(), "tcp", address, 80) == DEFAULT.gateway
    assert lab.host.run("cat", "/proc/sys/net/ipv4/ip_forward").stdout.strip() == "1"
    # teardown: the host veth goes, the container's eth0 with it
    assert lab.unplug(proc) == {"done": True, "failures": []}
    assert _veths(lab.host) == []
    assert "eth0" not in c.run("ip", "-o", "link")


def test_egress_is_masqueraded(lab: Lab) -> None:
    lab.network(DEFAULT)
    c = lab.container()
    lab.plug(c, DEFAULT, "10.88.0.2", "c1")
    lab.serve(lab.external.command(), "tcp", EXT_ADDR, 9000)
    assert lab.ask(c.command(), "tcp", EXT_ADDR, 9000) == HOST_ADDR
    lab.serve(lab.external.command(), "udp", EXT_ADDR, 9001)
    assert lab.ask(c.command(), "udp", EXT_ADDR, 9001) == HOST_ADDR


def test_published_ports_tcp_udp_localhost_and_source_address(lab: Lab) -> None:
    lab.network(DEFAULT)
    c = lab.container()
    ports = (PortMapping("", 18080, 80, "tcp"), PortMapping("", 0, 53, "udp"),
             PortMapping(HOST_ADDR, 0, 81, "tcp"))
    proc, attached = lab.plug(c, DEFAULT, "10.88.0.2", "c1", ports)
    published = [PortMapping.from_json(p) for p in attached["ports"]]
    tcp, udp, bound = published
    assert tcp == ports[0]
    assert udp.host_port > 0 and udp._replace(host_port=0) == ports[1]
    assert bound.host_port > 0 and bound.host_ip == HOST_ADDR
    assert len(lab.rules()) > 0 and sum(r.get("comment") == "ctr:c1" for r in lab.rules()) == 3
    lab.serve(c.command(), "tcp", "0.0.0.0", 80, count=3)
    lab.serve(c.command(), "udp", "0.0.0.0", 53, count=3)
    lab.serve(c.command(), "tcp", "0.0.0.0", 81, count=1)
    # from outside: the container sees the client's own address
    assert lab.ask(lab.external.command(), "tcp", HOST_ADDR, 18080) == EXT_ADDR
    assert lab.ask(lab.external.command(), "udp", HOST_ADDR, udp.host_port) == EXT_ADDR
    assert lab.ask(lab.external.command(), "tcp", HOST_ADDR, bound.host_port) == EXT_ADDR
    # from the host itself, on its address and on 127.0.0.1
    assert lab.ask(lab.host.command(), "tcp", HOST_ADDR, 18080) == HOST_ADDR
    assert lab.ask(lab.host.command(), "tcp", "127.0.0.1", 18080) == DEFAULT.gateway
    assert lab.ask(lab.host.command(), "udp", "127.0.0.1", udp.host_port) == DEFAULT.gateway
    assert lab.ask(lab.host.command(), "udp", HOST_ADDR, udp.host_port) == HOST_ADDR
    # the published port is held: nothing else on the host can bind it
    busy = lab.host.run(sys.executable, "-c", "import socket; socket.socket()"
                        ".bind(('0.0.0.0', 18080))", check=False)
    assert busy.returncode != 0 and "Address already in use" in busy.stderr
    # teardown removes exactly the container's rules and its veth
    lab.unplug(proc)
    rules = lab.rules()
    assert not [r for r in rules if r.get("comment") == "ctr:c1"]
    assert [r for r in rules if r.get("comment") == "net:bridge"]
    assert _veths(lab.host) == []
    lab.host.run(sys.executable, "-c", "import socket; socket.socket()"
                 ".bind(('0.0.0.0', 18080))")


def test_busy_host_port_is_a_clear_error_and_leaves_nothing(lab: Lab) -> None:
    lab.network(DEFAULT)
    listener = lab.serve(lab.host.command(), "tcp", "127.0.0.1", 18081)
    c = lab.container()
    proc, answer = lab.start_plug(c, DEFAULT, "10.88.0.2", "c1",
                                  (PortMapping("", 18082, 82, "udp"),
                                   PortMapping("", 18081, 80, "tcp")))
    assert answer["type"] == "PortInUse"
    assert "host port 18081/tcp on 0.0.0.0 is already in use" in answer["error"]
    assert proc.wait(timeout=30) == 0
    assert _veths(lab.host) == []
    assert "eth0" not in c.run("ip", "-o", "link")
    assert not [r for r in lab.rules() if r.get("comment") == "ctr:c1"]
    # the other port it had reserved is free again
    lab.host.run(sys.executable, "-c", "import socket, sys; s = socket.socket(socket.AF_INET,"
                 " socket.SOCK_DGRAM); s.bind(('0.0.0.0', 18082))")
    listener.kill()


def test_named_network_two_containers_talk_and_remove_network(lab: Lab) -> None:
    lab.network(DEFAULT)
    net = make_network("web", {"bridge": DEFAULT.subnet}, "10.89.5.0/24")
    assert net.bridge == "myctr-web"
    lab.network(net)
    a, b = lab.container(), lab.container()
    addr_a = allocate(net.subnet, net.gateway, set())
    addr_b = allocate(net.subnet, net.gateway, {addr_a})
    assert (addr_a, addr_b) == ("10.89.5.2", "10.89.5.3")
    plug_a, _ = lab.plug(a, net, addr_a, "a", (PortMapping("", 18090, 80, "tcp"),))
    plug_b, _ = lab.plug(b, net, addr_b, "b")
    lab.serve(a.command(), "tcp", "0.0.0.0", 80, count=2)
    assert lab.ask(b.command(), "tcp", addr_a, 80) == addr_b  # on the bridge, no NAT
    # hairpin: b reaches a through the host's published port
    assert lab.ask(b.command(), "tcp", HOST_ADDR, 18090) == net.gateway
    lab.unplug(plug_a)
    lab.unplug(plug_b)
    lab.call("remove-network", network=net._asdict())
    assert net.bridge not in lab.host.links()
    assert DEFAULT.bridge in lab.host.links()
    rules = lab.rules()
    assert not [r for r in rules if r.get("comment") == "net:web"]
    assert [r for r in rules if r.get("comment") == "net:bridge"]
    lab.call("remove-network", network=DEFAULT._asdict())
    assert not [r for r in lab.rules() if "comment" in r]
    assert DEFAULT.bridge not in lab.host.links()


def test_driver_killed_then_reset_leaves_no_rule_and_the_veth_dies_with_the_container(
        lab: Lab) -> None:
    lab.network(DEFAULT)
    c = lab.container()
    proc, attached = lab.plug(c, DEFAULT, "10.88.0.2", "c1", (PortMapping("", 18083, 80, "tcp"),))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert [r for r in lab.rules() if r.get("comment") == "ctr:c1"]  # left by the dead one
    lab.call("reset")  # the next supervisor starts
    rules = json.loads(lab.call("rules"))
    assert rules["exists"] is True
    assert not [r for r in rules["rules"] if "comment" in r]  # nothing of the old run
    assert {r["chain"] for r in rules["rules"]} == {"prerouting", "output"}  # the jumps
    assert _veths(lab.host) == [attached["host_interface"]]
    c.kill()
    deadline = time.monotonic() + 10
    while _veths(lab.host):
        assert time.monotonic() < deadline, "the veth outlived its container"
        time.sleep(0.05)


def test_route_localnet_does_not_open_the_hosts_localhost_to_containers(lab: Lab) -> None:
    """route_localnet on the bridge (for published ports on 127.0.0.1) would let a
    container route packets to the host's 127.0.0.1 services; the input chain drops
    them (shown by a UDP service on the host's 127.0.0.1, without the rule, then with)."""
    lab.network(DEFAULT)
    c = lab.container()
    lab.plug(c, DEFAULT, "10.88.0.2", "c1")
    c.run("sh", "-ec", "echo 1 > /proc/sys/net/ipv4/conf/all/route_localnet; "
          "ip route del local 127.0.0.1 table local; "
          "ip route del local 127.0.0.0/8 table local; "
          "ip route add 127.0.0.1/32 via 10.88.0.1 dev eth0")
    send = [*c.command(), sys.executable, "-c", "import socket, time\n"
            "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
            "for _ in range(10): s.sendto(b'x', ('127.0.0.1', 18099)); time.sleep(0.05)"]
    service = lab.serve(lab.host.command(), "udp", "127.0.0.1", 18099)
    subprocess.run(send, check=True, timeout=30)
    with pytest.raises(subprocess.TimeoutExpired):
        service.wait(timeout=1)  # it got nothing
    # without the drop rule, the container's datagrams would reach the service
    drop = next(r for r in lab.rules() if r["chain"] == "input" and {"drop": None} in r["expr"])
    lab.host.run("nft", "delete", "rule", "inet", TABLE, "input", "handle", str(drop["handle"]))
    subprocess.run(send, check=True, timeout=30)
    assert service.wait(timeout=5) == 0


def test_missing_bridge_is_an_error_and_leaves_nothing(lab: Lab) -> None:
    lab.network(DEFAULT)
    c = lab.container()
    gone = Network("gone", "myctr-gone", "10.89.9.0/24", "10.89.9.1")
    proc, answer = lab.start_plug(c, gone, "10.89.9.2", "c1", (PortMapping("", 18084, 80, "tcp"),))
    assert answer["type"] == "HostError"
    assert "bridge myctr-gone of network gone does not exist" in answer["error"]
    assert proc.wait(timeout=30) == 0
    assert _veths(lab.host) == []
    assert "eth0" not in c.run("ip", "-o", "link")
    assert not [r for r in lab.rules() if r.get("comment") == "ctr:c1"]
