"""Container networks end to end, in a network namespace the test makes ("the host"):
root containers on bridges (veth, nftables NAT and DNAT), rootless ones through
slirp4netns; published TCP and UDP ports, egress, names on a network, a busy port,
and nothing left after rm or after the supervisor is killed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.integration import harness
from tests.integration.harness import HostNetns, Myctr

OUTSIDE = "192.168.99.1"  # an address of "the host" that is not loopback
WEB = ("sh", "-c", "mkdir -p /www && echo hello from $(hostname) > /www/index.html "
       "&& (/probe udp-echo 5353 &) && exec httpd -f -p 80 -h /www")


@pytest.fixture
def host(hostns: HostNetns) -> HostNetns:
    """The test's host namespace with a non-loopback address (on a veth pair of its
    own: this kernel has no dummy links)."""
    hostns.run("ip", "link", "add", "out0", "type", "veth", "peer", "name", "out1")
    hostns.run("ip", "addr", "add", f"{OUTSIDE}/24", "dev", "out0")
    hostns.run("ip", "link", "set", "out0", "up")
    hostns.run("ip", "link", "set", "out1", "up")
    return hostns


@pytest.fixture
def tun(myctr_net: Myctr, request: pytest.FixtureRequest) -> None:
    """Rootless slirp4netns needs /dev/net/tun world-accessible (conftest)."""
    if myctr_net.mode == "rootless":
        request.getfixturevalue("tun_for_rootless")


def _in_host(host: HostNetns, code: str, timeout: float = 10) -> str:
    result = host.run("python3", "-c", code, timeout=timeout, check=False)
    assert result.returncode == 0, result.stderr
    return result.stdout


def _http(host: HostNetns, url: str, deadline: float = 15) -> str:
    code = f"""
import time, urllib.request
end = time.monotonic() + {deadline}
while True:
    try:
        print(urllib.request.urlopen({url!r}, timeout=2).read().decode(), end="")
        break
    except OSError:
        if time.monotonic() > end:
            raise
        time.sleep(0.1)
"""
    return _in_host(host, code, timeout=deadline + 5)


def _udp(host: HostNetns, address: str, port: int) -> str:
    code = f"""
import socket, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(0.5)
for _ in range(30):
    s.sendto(b"ping", ({address!r}, {port}))
    try:
        print(s.recv(200).decode()); break
    except OSError:
        time.sleep(0.2)
else:
    raise SystemExit("no UDP answer")
"""
    return _in_host(host, code)


def _leftovers(myctr: Myctr, host: HostNetns) -> dict[str, object]:
    """What a container's network could leave: host-side veths, our nftables rules
    of a container, slirp4netns processes of this state root, leases."""
    links = [n for n in host.links() if n.startswith("veth") or n == "eth0"]
    ruleset = host.run("nft", "-j", "list", "ruleset").stdout
    rules = [r for r in json.loads(ruleset)["nftables"]
             if "rule" in r and str(r["rule"].get("comment", "")).startswith("ctr:")]
    slirps = [pid for pid in harness.processes_using(str(myctr.state_root))
              if "slirp4netns" in Path(f"/proc/{pid}/comm").read_text()]
    leases = []
    if myctr.mode == "root":
        leases = json.loads(myctr("network", "inspect", "bridge").stdout)[0]["containers"]
    return {k: v for k, v in {"veths": links, "rules": rules, "slirp4netns": slirps,
                              "leases": leases}.items() if v}


def _run_web(myctr: Myctr, name: str, *options: str) -> None:
    result = myctr("run", "-d", "--name", name, *options, "--rootfs", str(myctr.rootfs), *WEB)
    assert result.returncode == 0, result.stderr


@pytest.mark.usefixtures("tun")
class TestNetworks:
    def test_published_ports_tcp_and_udp(self, myctr_net: Myctr, host: HostNetns) -> None:
        _run_web(myctr_net, "web", "-p", "8080:80", "-p", "5353:5353/udp", "-p", "80")
        assert _http(host, f"http://{OUTSIDE}:8080/").startswith("hello from")
        assert _http(host, "http://127.0.0.1:8080/").startswith("hello from")
        # (UDP from the host's loopback gets no reply through slirp4netns with
        # --disable-host-loopback, podman#4586: a client on a host address)
        assert _udp(host, OUTSIDE, 5353).startswith("echo from")
        ports = myctr_net("port", "web").stdout.splitlines()
        assert "80/tcp -> 0.0.0.0:8080" in ports and "5353/udp -> 0.0.0.0:5353" in ports
        [random] = [p for p in ports if p.startswith("80/tcp") and not p.endswith(":8080")]
        random_port = int(random.rsplit(":", 1)[1])
        assert random_port > 0 and _http(host, f"http://127.0.0.1:{random_port}/")
        doc = json.loads(myctr_net("inspect", "web").stdout)[0]
        mode = "slirp4netns" if myctr_net.mode == "rootless" else "bridge"
        assert doc["network_mode"] == mode
        assert doc["network"]["source_ip_preserved"] is True  # both keep the client's
        assert myctr_net("rm", "-f", "web").returncode == 0
        assert _leftovers(myctr_net, host) == {}

    def test_egress_reaches_the_host(self, myctr_net: Myctr, host: HostNetns,
                                     tmp_path: Path) -> None:
        (tmp_path / "file").write_text("from the host\n")
        server = host.popen("python3", "-m", "http.server", "--bind", OUTSIDE, "9999",
                            "--directory", str(tmp_path), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
        try:
            script = (f"for i in $(seq 50); do wget -qO- http://{OUTSIDE}:9999/file "
                      "&& exit 0; sleep 0.1; done; exit 1")
            result = myctr_net("run", "--rm", "--rootfs", str(myctr_net.rootfs),
                               "sh", "-c", script)
            assert result.returncode == 0, result.stderr
            assert result.stdout == "from the host\n"
        finally:
            server.kill()
            server.wait()

    def test_resolv_conf_and_hosts(self, myctr_net: Myctr, host: HostNetns) -> None:
        result = myctr_net("run", "--rm", "--name", "named", "--dns", "9.9.9.9",
                           "--dns-search", "example.com", "--add-host", "db:10.1.2.3",
                           "--rootfs", str(myctr_net.rootfs), "sh", "-c",
                           "cat /etc/resolv.conf /etc/hosts")
        assert result.returncode == 0, result.stderr
        assert "nameserver 9.9.9.9" in result.stdout and "search example.com" in result.stdout
        assert "10.1.2.3\tdb" in result.stdout
        address = "10.0.2.100" if myctr_net.mode == "rootless" else "10.88.0."
        own = [line for line in result.stdout.splitlines() if "named" in line]
        assert own and own[0].startswith(address), result.stdout

    def test_restart_right_after_exit_keeps_its_ports(self, myctr_net: Myctr,
                                                      host: HostNetns) -> None:
        """A start right after an exit waits for the last run's network to be torn
        down: the new run's published port works (the old teardown removes nothing
        of it)."""
        _run_web(myctr_net, "web", "-p", "8084:80")
        assert _http(host, "http://127.0.0.1:8084/").startswith("hello")
        assert myctr_net("kill", "web").returncode == 0
        assert myctr_net("wait", "web").returncode == 0
        assert myctr_net("start", "web").returncode == 0
        assert _http(host, "http://127.0.0.1:8084/").startswith("hello")
        assert myctr_net("rm", "-f", "web").returncode == 0
        assert _leftovers(myctr_net, host) == {}

    def test_slirp_cidr_moves_its_dns(self, myctr_net: Myctr, host: HostNetns) -> None:
        result = myctr_net("run", "--rm", "--network", "slirp4netns:cidr=10.0.3.0/24",
                           "--rootfs", str(myctr_net.rootfs), "cat", "/etc/resolv.conf")
        assert result.returncode == 0, result.stderr
        assert "nameserver 10.0.3.3" in result.stdout

    def test_busy_port_fails_cleanly(self, myctr_net: Myctr, host: HostNetns) -> None:
        holder = host.popen("python3", "-c", "import socket, time; s = socket.socket(); "
                            "s.bind(('0.0.0.0', 8081)); s.listen(); print('ok', flush=True); "
                            "time.sleep(60)", stdout=subprocess.PIPE)
        try:
            assert holder.stdout is not None and holder.stdout.readline().strip() == "ok"
            result = myctr_net("run", "--name", "busy", "-p", "8081:80",
                               "--rootfs", str(myctr_net.rootfs), "true")
            assert result.returncode == 125
            [line] = result.stderr.strip().splitlines()
            assert "8081" in line and ("in use" in line or "already" in line), line
            leftovers = _leftovers(myctr_net, host)
            leftovers.pop("leases", None)  # the container exists (created): its lease too
            assert leftovers == {}
            assert myctr_net("rm", "-f", "busy").returncode == 0
            assert _leftovers(myctr_net, host) == {}
        finally:
            holder.kill()
            holder.wait()

    def test_crash_leaves_no_network_behind(self, myctr_net: Myctr, host: HostNetns) -> None:
        _run_web(myctr_net, "web", "-p", "8082:80")
        assert _http(host, "http://127.0.0.1:8082/").startswith("hello")
        pid = harness.supervisor_call(myctr_net.state_root, "ping")["result"]["pid"]  # type: ignore[index]
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 20
        while harness.alive(pid) or [p for p in harness.processes_using(
                str(myctr_net.state_root)) if "slirp4netns" in Path(f"/proc/{p}/comm").read_text()]:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert myctr_net("ps", "-a").returncode == 0  # a new supervisor recovers
        leftovers = _leftovers(myctr_net, host)
        leftovers.pop("leases", None)  # the container still exists: its lease stays
        assert leftovers == {}
        assert myctr_net("rm", "-f", "web").returncode == 0
        assert _leftovers(myctr_net, host) == {}
        # a supervisor that starts removes its table; it comes back on a network's use
        assert myctr_net("supervise", "--stop").returncode == 0
        assert myctr_net("ps").returncode == 0
        assert "myctr-" not in host.run("nft", "list", "tables").stdout


    def test_slirp4netns_death_stops_the_container(self, myctr_net: Myctr,
                                                   host: HostNetns) -> None:
        """The supervisor notices slirp4netns dying and fails the container (kills it),
        and the event says so; info tells whether slirp4netns can work here."""
        info = json.loads(myctr_net("info").stdout)["network"]
        assert info["slirp4netns_usable"] is True and info["slirp4netns_problem"] is None
        _run_web(myctr_net, "slirpy", "--network", "slirp4netns", "-p", "8083:80")
        doc = json.loads(myctr_net("inspect", "slirpy").stdout)[0]
        slirp = doc["network"]["slirp4netns_pid"]
        os.kill(slirp, signal.SIGKILL)
        assert myctr_net("wait", "slirpy", timeout=30).stdout.strip() == "137"
        events = harness.read_events(myctr_net.state_root, 0,
                                     lambda e: e.get("type") == "network-failed")
        assert "slirp4netns" in str(events[-1]), events[-1]
        assert myctr_net("rm", "slirpy").returncode == 0
        assert _leftovers(myctr_net, host) == {}


class TestNamedNetworks:
    def test_containers_reach_each_other_by_name(self, myctr_net: Myctr,
                                                 host: HostNetns) -> None:
        if myctr_net.mode == "rootless":
            pytest.skip("named (bridge) networks need root: rootless containers get "
                        "slirp4netns, one per container, with no shared network")
        assert myctr_net("network", "create", "--subnet", "10.90.0.0/24", "app").returncode == 0
        _run_web(myctr_net, "web", "--network", "app", "--network-alias", "www")
        script = ("for i in $(seq 50); do wget -qO- http://web/ && wget -qO- http://www/ "
                  "&& exit 0; sleep 0.1; done; exit 1")
        result = myctr_net("run", "--rm", "--network", "app", "--rootfs",
                           str(myctr_net.rootfs), "sh", "-c", script)
        assert result.returncode == 0, result.stderr
        assert result.stdout.count("hello from") == 2
        doc = json.loads(myctr_net("network", "inspect", "app").stdout)[0]
        assert doc["subnet"] == "10.90.0.0/24" and len(doc["containers"]) == 1
        refused = myctr_net("network", "rm", "app")
        assert refused.returncode == 125 and "used by" in refused.stderr
        assert myctr_net("rm", "-f", "web").returncode == 0
        # the bridge outlives a supervisor; network rm after a restart still takes it
        assert "myctr-app" in host.links()
        assert myctr_net("supervise", "--stop").returncode == 0
        assert myctr_net("network", "rm", "app").returncode == 0
        assert "myctr-app" not in host.links()
        assert _leftovers(myctr_net, host) == {}

