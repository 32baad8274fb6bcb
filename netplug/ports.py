"""``-p``/``--publish`` and ``-P`` as docker and podman read them.

- ``CONTAINERPORT`` publishes on a random host port; ``HOSTPORT:CONTAINERPORT``;
  ``IP:HOSTPORT:CONTAINERPORT``; ``IP::CONTAINERPORT`` (random port on IP);
- ``/tcp`` (default) or ``/udp``; ranges of equal length: ``8000-8001:80-81``
  (a single host port with a container range is refused);
- ``-P`` publishes every port the image EXPOSEs on a random host port.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from runtime.errors import SpecError

from . import PortMapping

PROTOCOLS = ("tcp", "udp")


def parse_publish(value: str) -> list[PortMapping]:
    text, _, proto = value.partition("/")
    proto = (proto or "tcp").lower()
    if proto not in PROTOCOLS:
        raise SpecError(f"invalid -p {value!r}: protocol must be tcp or udp")
    host_ip = ""
    if text.startswith("["):  # [::1]:8080:80
        end = text.find("]")
        if end < 0:
            raise SpecError(f"invalid -p {value!r}: unterminated [")
        host_ip, text = text[1:end], text[end + 1:].removeprefix(":")
        parts = text.split(":")
        if len(parts) == 1:
            parts = ["", parts[0]]
    else:
        parts = text.split(":")
        if len(parts) == 3:
            host_ip = parts.pop(0)
        elif len(parts) > 3:
            raise SpecError(f"invalid -p {value!r}: expected [IP:][HOSTPORT:]CONTAINERPORT")
    if host_ip:
        try:
            ipaddress.ip_address(host_ip)
        except ValueError:
            raise SpecError(f"invalid -p {value!r}: {host_ip!r} is not an IP address") from None
    if len(parts) == 1:
        host, container = "", parts[0]
    else:
        host, container = parts
    c_low, c_high = _range(container, value)
    if host:
        h_low, h_high = _range(host, value)
        if h_high - h_low != c_high - c_low:
            raise SpecError(f"invalid -p {value!r}: host and container port ranges must "
                            "have the same length")
    else:
        h_low = h_high = 0
    return [PortMapping(host_ip, (h_low + i) if host else 0, c_low + i, proto)
            for i in range(c_high - c_low + 1)]


def _range(text: str, value: str) -> tuple[int, int]:
    low, dash, high = text.partition("-")
    try:
        first = int(low)
        last = int(high) if dash else first
    except ValueError:
        raise SpecError(f"invalid -p {value!r}: {text!r} is not a port or range") from None
    if not (1 <= first <= last <= 65535):
        raise SpecError(f"invalid -p {value!r}: ports are 1-65535")
    return first, last


def exposed_ports(exposed: Iterable[str]) -> list[PortMapping]:
    """``-P``: the image's ``ExposedPorts`` ("80/tcp", "53/udp", "8000-8001") on random
    host ports."""
    mappings = []
    for item in exposed:
        text, _, proto = item.partition("/")
        low, high = _range(text, item)
        mappings += [PortMapping("", 0, port, (proto or "tcp").lower())
                     for port in range(low, high + 1)]
    return mappings


def merge(mappings: Iterable[PortMapping]) -> tuple[PortMapping, ...]:
    """One mapping per (container port, protocol, host ip, host port), in order; two
    mappings of one fixed host port and protocol are refused."""
    seen: dict[tuple[str, int, str], PortMapping] = {}
    out: list[PortMapping] = []
    for m in mappings:
        if m in out:
            continue
        if m.host_port:
            key = (m.host_ip, m.host_port, m.protocol)
            if key in seen:
                raise SpecError(f"host port {m.host_port}/{m.protocol} is published twice")
            seen[key] = m
        out.append(m)
    return tuple(out)
