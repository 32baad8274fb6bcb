"""IPAM: subnets, leases, default subnets, --subnet validation, bridge names."""

from __future__ import annotations

import pytest

from netplug import ipam
from runtime.errors import Conflict, SpecError


def test_allocate_first_free_host_address() -> None:
    assert ipam.allocate("10.88.0.0/16", "10.88.0.1", set()) == "10.88.0.2"
    assert ipam.allocate("10.88.0.0/16", "10.88.0.1", {"10.88.0.2", "10.88.0.4"}) == "10.88.0.3"


def test_allocate_never_network_broadcast_or_gateway() -> None:
    # /30: network .0, hosts .1 .2, broadcast .3
    assert ipam.allocate("10.89.0.0/30", "10.89.0.1", set()) == "10.89.0.2"
    assert ipam.allocate("10.89.0.0/30", "10.89.0.2", set()) == "10.89.0.1"
    seen = set()
    for _ in range(253):
        seen.add(ipam.allocate("10.89.1.0/24", "10.89.1.1", seen))
    assert "10.89.1.0" not in seen and "10.89.1.255" not in seen and "10.89.1.1" not in seen
    assert len(seen) == 253


def test_allocate_full_subnet_is_a_clear_error() -> None:
    with pytest.raises(ipam.SubnetFull, match=r"no free address left in subnet 10.89.0.0/30"):
        ipam.allocate("10.89.0.0/30", "10.89.0.1", {"10.89.0.2"})
    assert issubclass(ipam.SubnetFull, Conflict)


def test_allocate_ignores_addresses_outside_the_subnet() -> None:
    assert ipam.allocate("10.89.0.0/24", "10.89.0.1", {"10.88.0.2"}) == "10.89.0.2"


@pytest.mark.parametrize("text", ["10.89.0.5/24", "10.89.0.0", "nonsense", "fd00::/64",
                                  "10.0.0.0/31", "10.0.0.0/4"])
def test_invalid_subnets(text: str) -> None:
    with pytest.raises(SpecError, match="invalid subnet"):
        ipam.Subnet(text)


def test_subnet_properties() -> None:
    net = ipam.Subnet("10.89.3.0/24")
    assert (net.network, net.broadcast, net.gateway, net.prefix) == (
        "10.89.3.0", "10.89.3.255", "10.89.3.1", 24)
    assert "10.89.3.7" in net and "10.89.4.7" not in net and "x" not in net
    assert net.overlaps(ipam.Subnet("10.89.0.0/16"))
    assert not net.overlaps(ipam.Subnet("10.89.4.0/24"))


def test_default_subnets_like_podman() -> None:
    assert ipam.default_subnet([], "bridge") == "10.88.0.0/16"
    assert ipam.default_subnet([]) == "10.89.0.0/24"
    assert ipam.default_subnet(["10.88.0.0/16", "10.89.0.0/24"]) == "10.89.1.0/24"
    assert ipam.default_subnet(["10.89.0.0/24", "10.89.2.0/24"]) == "10.89.1.0/24"
    # a user's --subnet covering a range is skipped as a whole
    assert ipam.default_subnet(["10.89.0.0/23"]) == "10.89.2.0/24"
    assert ipam.default_subnet(["10.89.0.0/16"]) == "10.90.0.0/24"
    # the default network's subnet is never handed to a named network
    assert ipam.default_subnet(["10.89.0.0/16"], "other") == "10.90.0.0/24"


def test_validate_subnet_refuses_overlaps() -> None:
    existing = {"bridge": "10.88.0.0/16", "db": "10.89.0.0/24"}
    assert ipam.validate_subnet("10.89.1.0/24", existing, "web") == "10.89.1.0/24"
    with pytest.raises(Conflict, match=r"overlaps subnet 10.89.0.0/24 of network 'db'"):
        ipam.validate_subnet("10.89.0.128/25", existing, "web")
    with pytest.raises(Conflict, match="of network 'bridge'"):
        ipam.validate_subnet("10.0.0.0/8", {}, "web")  # the default network counts always
    with pytest.raises(SpecError, match="host bits"):
        ipam.validate_subnet("10.89.1.1/24", existing, "web")


def test_gateway() -> None:
    assert ipam.validate_gateway("10.89.0.0/24", None) == "10.89.0.1"
    assert ipam.validate_gateway("10.89.0.0/24", "10.89.0.254") == "10.89.0.254"
    with pytest.raises(SpecError, match="not in subnet"):
        ipam.validate_gateway("10.89.0.0/24", "10.89.1.1")
    with pytest.raises(SpecError, match="broadcast"):
        ipam.validate_gateway("10.89.0.0/24", "10.89.0.255")


def test_bridge_names() -> None:
    assert ipam.bridge_name("bridge") == "myctr0"
    assert ipam.bridge_name("web") == "myctr-web"
    long = ipam.bridge_name("a-very-long-network-name")
    assert long.startswith("myctr-") and len(long) == 15
    assert long != ipam.bridge_name("a-very-long-network-nam")
    # a plain name that looks like a hash is hashed too: no two networks share a bridge
    assert ipam.bridge_name("abcdef012") != "myctr-abcdef012"
    assert all(len(ipam.bridge_name(n)) <= 15 for n in ("x", "Web.App", "n" * 60))


def test_make_network() -> None:
    assert ipam.make_network("bridge", {}) == ipam.Network(
        "bridge", "myctr0", "10.88.0.0/16", "10.88.0.1")
    net = ipam.make_network("web", {"bridge": "10.88.0.0/16"})
    assert net == ipam.Network("web", "myctr-web", "10.89.0.0/24", "10.89.0.1")
    assert net.prefix == 24
    custom = ipam.make_network("db", {"web": "10.89.0.0/24"}, "192.168.50.0/24",
                               "192.168.50.254")
    assert (custom.subnet, custom.gateway) == ("192.168.50.0/24", "192.168.50.254")
