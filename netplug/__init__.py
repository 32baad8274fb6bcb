"""Networking plug-ins behind one small interface: ``none``, ``host``, ``slirp4netns``
(rootless), ``bridge`` and named networks (root).

A container's network is a :class:`NetworkConfig` (what it asked for, parsed from the
flags by :func:`parse_network` and :mod:`netplug.ports`). The supervisor runs one plug
per container run as a task of the run's nursery, once the init exists (its network
namespace is ``/proc/PID/ns/net``) and before the user's command is exec'd::

    attached = await run_nursery.start(plug.run, pid)   # -> Attached
    ...                                                  # the container runs
    (cancelled when the run ends: the plug tears down what it made, shielded)

A plug that loses its network while the container runs (slirp4netns died) calls the
``failed(reason)`` callback it was given and returns; the supervisor then stops the
container and says why. ``netplug`` imports ``runtime`` only for spec types.
"""

from __future__ import annotations

from typing import Any, NamedTuple

NETWORK_MODES = ("none", "host", "slirp4netns", "bridge")


class PortMapping(NamedTuple):
    """``-p [IP:]HOSTPORT:CONTAINERPORT[/PROTO]``; ``host_port`` 0 means "pick one"."""

    host_ip: str
    host_port: int
    container_port: int
    protocol: str  # "tcp" or "udp"

    def to_json(self) -> dict[str, Any]:
        return self._asdict()

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> PortMapping:
        return cls(str(doc["host_ip"]), int(doc["host_port"]), int(doc["container_port"]),
                   str(doc["protocol"]))

    def __str__(self) -> str:
        host = f"{self.host_ip or '0.0.0.0'}:{self.host_port}"
        return f"{self.container_port}/{self.protocol} -> {host}"


class NetworkConfig(NamedTuple):
    mode: str  # none, host, slirp4netns, bridge, or the name of a network
    options: tuple[tuple[str, str], ...] = ()  # slirp4netns:allow_host_loopback=true,...
    ports: tuple[PortMapping, ...] = ()
    aliases: tuple[str, ...] = ()  # --network-alias
    dns: tuple[str, ...] = ()
    dns_search: tuple[str, ...] = ()
    add_hosts: tuple[tuple[str, str], ...] = ()  # --add-host NAME:IP

    def option(self, name: str, default: str | None = None) -> str | None:
        for key, value in self.options:
            if key == name:
                return value
        return default

    @property
    def plugged(self) -> bool:
        """Has a plug (an interface beyond lo, ports): not none, not host."""
        return self.mode not in ("none", "host")

    @property
    def named(self) -> bool:
        """On a network made by ``network create``."""
        return self.mode not in NETWORK_MODES

    @property
    def bridged(self) -> bool:
        """On a bridge (the default one or a named one): leases, root only."""
        return self.named or self.mode == "bridge"


class Interface(NamedTuple):
    name: str  # in the container, e.g. "eth0" or "tap0"
    address: str  # "10.88.0.5"
    prefix: int
    gateway: str
    mac: str = ""


class Attached(NamedTuple):
    """What a plug made for one run (``inspect`` shows it; ``port`` lists ports)."""

    interfaces: tuple[Interface, ...] = ()
    ports: tuple[PortMapping, ...] = ()  # with the host ports actually bound
    nameservers: tuple[str, ...] = ()  # for /etc/resolv.conf when the plug has its own
    source_ip_preserved: bool = True  # do published ports show the client's address?
    details: tuple[tuple[str, Any], ...] = ()  # plug-specific (e.g. slirp4netns pid)

    def to_json(self) -> dict[str, Any]:
        return {"interfaces": [i._asdict() for i in self.interfaces],
                "ports": [p.to_json() for p in self.ports],
                "nameservers": list(self.nameservers),
                "source_ip_preserved": self.source_ip_preserved,
                **dict(self.details)}


def parse_network(value: str | None, rootless: bool) -> tuple[str, tuple[tuple[str, str], ...]]:
    """``--network MODE[:OPT=V,...]`` -> (mode, options); the default is podman's:
    slirp4netns rootless, bridge as root."""
    from runtime.errors import SpecError

    if not value:
        return ("slirp4netns" if rootless else "bridge"), ()
    mode, _, rest = value.partition(":")
    options = []
    for item in filter(None, rest.split(",")):
        key, eq, val = item.partition("=")
        if not eq or not key:
            raise SpecError(f"invalid --network option {item!r}: expected NAME=VALUE")
        options.append((key, val))
    if mode in ("none", "host") and options:
        raise SpecError(f"--network {mode} takes no options")
    if mode == "slirp4netns":
        known = {"allow_host_loopback", "mtu", "cidr", "enable_ipv6", "port_handler"}
        for key, val in options:
            if key not in known:
                raise SpecError(f"unknown slirp4netns option {key!r} (known: "
                                + ", ".join(sorted(known)) + ")")
            if key == "allow_host_loopback" and val not in ("true", "false"):
                raise SpecError(f"slirp4netns:allow_host_loopback={val}: true or false")
    if mode == "bridge" and rootless:
        raise SpecError("--network bridge needs root (rootless containers use slirp4netns)")
    if not mode:
        raise SpecError("invalid --network ''")
    return mode, tuple(options)
