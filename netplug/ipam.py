"""IPv4 address management for bridge networks (pure: no I/O).

- the default network ``bridge`` has podman's subnet 10.88.0.0/16 (bridge ``myctr0``);
- a named network gets the first free 10.89.N.0/24, then 10.90.N.0/24, ... unless the
  user gives ``--subnet`` (refused when it overlaps an existing network);
- the gateway is the subnet's first host address (the bridge's address);
- containers lease the first free host address: never the network, the broadcast or
  the gateway address.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from typing import NamedTuple

from runtime.errors import Conflict, SpecError

DEFAULT_NETWORK = "bridge"
DEFAULT_SUBNET = "10.88.0.0/16"
DEFAULT_BRIDGE = "myctr0"
IFNAMSIZ = 15  # an interface name has at most 15 characters


class SubnetFull(Conflict):
    """Every host address of the subnet is leased."""


class Network(NamedTuple):
    """What a bridge plug needs to know about a network."""

    name: str
    bridge: str  # the Linux bridge, e.g. "myctr0"
    subnet: str  # "10.88.0.0/16"
    gateway: str  # "10.88.0.1", the bridge's address

    @property
    def prefix(self) -> int:
        return Subnet(self.subnet).prefix


class Subnet:
    """An IPv4 subnet that can hold containers: a network address with no host bits
    set, and room for a gateway and at least one container (prefix /8 to /30)."""

    def __init__(self, text: str) -> None:
        try:
            net = ipaddress.ip_network(text.strip(), strict=False)
        except ValueError:
            raise SpecError(f"invalid subnet {text!r}: expected an IPv4 CIDR such as "
                            "10.89.0.0/24") from None
        if not isinstance(net, ipaddress.IPv4Network) or "/" not in text:
            raise SpecError(f"invalid subnet {text!r}: expected an IPv4 CIDR such as "
                            "10.89.0.0/24")
        if str(ipaddress.ip_interface(text.strip()).ip) != str(net.network_address):
            raise SpecError(f"invalid subnet {text!r}: host bits are set (the network is "
                            f"{net})")
        if not 8 <= net.prefixlen <= 30:
            raise SpecError(f"invalid subnet {text!r}: the prefix must be /8 to /30")
        self.net = net

    @property
    def prefix(self) -> int:
        return self.net.prefixlen

    @property
    def network(self) -> str:
        return str(self.net.network_address)

    @property
    def broadcast(self) -> str:
        return str(self.net.broadcast_address)

    @property
    def gateway(self) -> str:
        """The default gateway: the first host address."""
        return str(self.net.network_address + 1)

    def __contains__(self, address: str) -> bool:
        try:
            return ipaddress.IPv4Address(address) in self.net
        except ValueError:
            return False

    def overlaps(self, other: Subnet) -> bool:
        return self.net.overlaps(other.net)

    def __str__(self) -> str:
        return str(self.net)

    def __repr__(self) -> str:
        return f"Subnet({str(self.net)!r})"


def validate_gateway(subnet: str, gateway: str | None) -> str:
    """The gateway of ``subnet``: ``gateway`` when given (a host address of the subnet),
    else the first host address."""
    net = Subnet(subnet)
    if not gateway:
        return net.gateway
    if gateway not in net:
        raise SpecError(f"gateway {gateway} is not in subnet {net}")
    if gateway in (net.network, net.broadcast):
        raise SpecError(f"gateway {gateway} is the network or broadcast address of {net}")
    return str(ipaddress.IPv4Address(gateway))


def allocate(subnet: str, gateway: str, used: set[str]) -> str:
    """The first host address of ``subnet`` that is neither ``gateway`` nor in ``used``."""
    net = Subnet(subnet)
    taken = {int(ipaddress.IPv4Address(a)) for a in (*used, gateway) if a in net}
    first = int(net.net.network_address) + 1
    last = int(net.net.broadcast_address) - 1
    for value in range(first, last + 1):
        if value not in taken:
            return str(ipaddress.IPv4Address(value))
    raise SubnetFull(f"no free address left in subnet {net} ({last - first + 1} host "
                     f"addresses, {len(taken)} in use)")


def _reserved(existing: list[str], name: str) -> list[Subnet]:
    """Existing subnets, plus the default network's own unless we are it: it always
    counts as taken, created yet or not."""
    nets = [Subnet(s) for s in existing]
    if name != DEFAULT_NETWORK:
        nets.append(Subnet(DEFAULT_SUBNET))
    return nets


def default_subnet(existing: list[str], name: str = "") -> str:
    """The subnet of a new network: 10.88.0.0/16 for ``bridge`` (the default network),
    else the first 10.89.0.0/24, 10.89.1.0/24, ..., 10.255.255.0/24 that overlaps none of
    ``existing`` (nor the default network's)."""
    if name == DEFAULT_NETWORK:
        return DEFAULT_SUBNET
    taken = _reserved(existing, name)
    for second in range(89, 256):
        for third in range(256):
            candidate = Subnet(f"10.{second}.{third}.0/24")
            if not any(candidate.overlaps(t) for t in taken):
                return str(candidate)
    raise Conflict("no free subnet left in 10.89.0.0-10.255.255.0/24: give --subnet")


def validate_subnet(subnet: str, existing: dict[str, str], name: str = "") -> str:
    """``--subnet`` for a new network ``name``: a valid IPv4 subnet overlapping no
    existing network (``existing``: network name -> subnet). Returns its normal form."""
    net = Subnet(subnet)
    others = dict(existing)
    if name != DEFAULT_NETWORK:
        others.setdefault(DEFAULT_NETWORK, DEFAULT_SUBNET)
    for other_name, other in others.items():
        if other_name != name and net.overlaps(Subnet(other)):
            raise Conflict(f"subnet {net} overlaps subnet {other} of network "
                           f"{other_name!r}")
    return str(net)


_IFNAME_SAFE = re.compile(r"^[a-z0-9_]{1,9}$")


def bridge_name(network: str) -> str:
    """The bridge of a network: ``myctr0`` for ``bridge``; ``myctr-NAME`` when the name
    is short and plain (a-z, 0-9, _; at most 9 characters), else ``myctr-`` and 9 hex
    digits of the name's SHA-256. At most 15 characters either way."""
    if network == DEFAULT_NETWORK:
        return DEFAULT_BRIDGE
    short = (network if _IFNAME_SAFE.match(network) and not re.fullmatch(r"[0-9a-f]{9}",
             network) else hashlib.sha256(network.encode()).hexdigest()[:9])
    name = f"myctr-{short}"
    assert len(name) <= IFNAMSIZ
    return name


def make_network(name: str, existing: dict[str, str], subnet: str | None = None,
                 gateway: str | None = None) -> Network:
    """A new network's spec: its bridge, its subnet (given, checked for overlaps, or
    the next free one) and its gateway."""
    if subnet:
        subnet = validate_subnet(subnet, existing, name)
    else:
        subnet = default_subnet([s for n, s in existing.items() if n != name], name)
    return Network(name, bridge_name(name), subnet, validate_gateway(subnet, gateway))
