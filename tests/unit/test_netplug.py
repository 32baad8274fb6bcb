"""netplug's pure parts: --network and -p parsing, /etc/hosts and resolv.conf."""

from __future__ import annotations

import pytest

from netplug import PortMapping, parse_network
from netplug.etc import render_hosts, render_resolv, rewrite_in_place
from netplug.ports import exposed_ports, merge, parse_publish
from runtime.errors import SpecError


@pytest.mark.parametrize(("value", "rootless", "expected"), [
    (None, True, ("slirp4netns", ())),
    (None, False, ("bridge", ())),
    ("none", True, ("none", ())),
    ("slirp4netns:allow_host_loopback=true,mtu=1500", True,
     ("slirp4netns", (("allow_host_loopback", "true"), ("mtu", "1500")))),
    ("mynet", False, ("mynet", ())),
])
def test_parse_network(value: str | None, rootless: bool, expected: object) -> None:
    assert parse_network(value, rootless) == expected


@pytest.mark.parametrize(("value", "rootless", "message"), [
    ("host:x=1", False, "takes no options"),
    ("slirp4netns:bogus=1", True, "unknown slirp4netns option"),
    ("slirp4netns:allow_host_loopback=yes", True, "true or false"),
    ("bridge", True, "needs root"),
    ("slirp4netns:novalue", True, "expected NAME=VALUE"),
])
def test_parse_network_errors(value: str, rootless: bool, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        parse_network(value, rootless)


@pytest.mark.parametrize(("value", "expected"), [
    ("80", [PortMapping("", 0, 80, "tcp")]),
    ("8080:80", [PortMapping("", 8080, 80, "tcp")]),
    ("127.0.0.1:8080:80/udp", [PortMapping("127.0.0.1", 8080, 80, "udp")]),
    ("127.0.0.1::80", [PortMapping("127.0.0.1", 0, 80, "tcp")]),
    ("[::1]:8080:80", [PortMapping("::1", 8080, 80, "tcp")]),
    ("8000-8001:80-81/TCP", [PortMapping("", 8000, 80, "tcp"), PortMapping("", 8001, 81, "tcp")]),
])
def test_parse_publish(value: str, expected: list[PortMapping]) -> None:
    assert parse_publish(value) == expected


@pytest.mark.parametrize(("value", "message"), [
    ("80/sctp", "tcp or udp"), ("x:80", "not a port"), ("0:80", "1-65535"),
    ("8000:80-81", "same length"), ("1.2.3:80:80", "not an IP"), ("a:b:c:d", "expected"),
])
def test_parse_publish_errors(value: str, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        parse_publish(value)


def test_exposed_and_merge() -> None:
    assert exposed_ports(["80/tcp", "53/udp", "8000-8001"]) == [
        PortMapping("", 0, 80, "tcp"), PortMapping("", 0, 53, "udp"),
        PortMapping("", 0, 8000, "tcp"), PortMapping("", 0, 8001, "tcp")]
    same = PortMapping("", 8080, 80, "tcp")
    assert merge([same, same]) == (same,)
    with pytest.raises(SpecError, match="published twice"):
        merge([same, PortMapping("", 8080, 81, "tcp")])


def test_hosts_and_resolv() -> None:
    text = render_hosts("box", [("10.88.0.2", "box web")], [("db", "10.0.0.9")])
    assert text.splitlines()[2:] == ["10.88.0.2\tbox web", "10.0.0.9\tdb"]
    assert "127.0.1.1\tbox" in render_hosts("box", [])
    host = "nameserver 127.0.0.53\nnameserver 9.9.9.9\nsearch lan\noptions edns0\n"
    assert render_resolv(host, keep_loopback=False) == (
        "nameserver 9.9.9.9\nsearch lan\noptions edns0\n")
    assert render_resolv(host, keep_loopback=True) == host
    assert render_resolv(host, False, ["10.0.2.3"], ["example.com"]) == (
        "search example.com\noptions edns0\nnameserver 10.0.2.3\n")


def test_rewrite_in_place_keeps_the_inode(tmp_path: object) -> None:
    import os
    from pathlib import Path

    path = Path(str(tmp_path)) / "hosts"
    path.write_text("a much longer first version\n")
    inode = os.stat(path).st_ino
    rewrite_in_place(str(path), "short\n")
    assert path.read_text() == "short\n" and os.stat(path).st_ino == inode


def test_network_config_from_params() -> None:
    from supervisor.run_options import network_config

    def known(name: str) -> bool:
        return name == "mynet"

    config = network_config({"network": "mynet", "publish": ["8080:80", "53/udp"],
                             "network_aliases": ["web"], "dns": ["9.9.9.9"],
                             "add_hosts": ["db:10.0.0.9"]}, {}, known)
    assert config.mode == "mynet" and config.aliases == ("web",)
    assert config.ports == (PortMapping("", 8080, 80, "tcp"), PortMapping("", 0, 53, "udp"))
    assert config.dns == ("9.9.9.9",) and config.add_hosts == (("db", "10.0.0.9"),)
    exposed = network_config({"network": "mynet", "publish_all": True},
                             {"exposed_ports": ["80/tcp"]}, known)
    assert exposed.ports == (PortMapping("", 0, 80, "tcp"),)
    for params, message in (
            ({"network": "none", "publish": ["80"]}, "no ports to publish"),
            ({"network": "nosuch"}, "not found"),
            ({"network": "none", "network_aliases": ["x"]}, "named networks"),
            ({"network": "mynet", "dns": ["dns.example"]}, "not an IP"),
            ({"network": "mynet", "add_hosts": ["db"]}, "NAME:IP"),
            ({"network": "host", "dns": ["9.9.9.9"]}, "--network host")):
        with pytest.raises(SpecError, match=message):
            network_config(params, {}, known)
