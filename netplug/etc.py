"""A container's /etc/hosts and /etc/resolv.conf for its network.

Names on a network are resolved through /etc/hosts, kept current: each container's
hosts file lists itself and every other container on its networks (by name, and by
``--network-alias``), rewritten in place (the file is bind-mounted, so a rename would
not be seen) whenever a container on the network starts or stops. We chose this over
a DNS responder in the supervisor: nothing listens, nothing to crash, it works the
same rootless and as root, and the container's libc needs no server; the cost is that
a program that caches /etc/hosts forever misses later changes (musl and glibc re-read
it on each lookup).
"""

from __future__ import annotations

import os
from collections.abc import Iterable


def render_hosts(hostname: str, own: Iterable[tuple[str, str]],
                 extra: Iterable[tuple[str, str]] = ()) -> str:
    """``own``: (address, names) of this container ("" address: 127.0.1.1); ``extra``:
    --add-host (name, address)."""
    lines = ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback"]
    own = list(own)
    if not own:
        lines.append(f"127.0.1.1\t{hostname}")
    for address, names in own:
        lines.append(f"{address or '127.0.1.1'}\t{names}")
    for name, address in extra:
        lines.append(f"{address}\t{name}")
    return "\n".join(lines) + "\n"


def render_peers(peers: Iterable[tuple[str, Iterable[str]]]) -> str:
    """The other containers of a network: (address, names) each, a line each."""
    return "".join(f"{address}\t{' '.join(dict.fromkeys(names))}\n"
                   for address, names in peers)


def render_resolv(host_text: str, keep_loopback: bool, nameservers: Iterable[str] = (),
                  search: Iterable[str] = ()) -> str:
    """The host's resolv.conf; a resolver on the host's loopback is unreachable from a
    container's own network namespace, so those lines go (podman does the same).
    ``nameservers`` (--dns, or the plug's own resolver) and ``search`` (--dns-search)
    replace the host's."""
    nameservers, search = list(nameservers), list(search)
    lines = []
    for line in host_text.splitlines():
        fields = line.split()
        if fields and fields[0] == "nameserver" and (nameservers or (
                not keep_loopback and len(fields) >= 2
                and (fields[1].startswith("127.") or fields[1] == "::1"))):
            continue
        if fields and fields[0] in ("search", "domain") and search:
            continue
        lines.append(line)
    if search:
        lines.insert(0, "search " + " ".join(search))
    lines += [f"nameserver {n}" for n in nameservers]
    return "\n".join(lines) + "\n" if lines else ""


def rewrite_in_place(path: str, text: str) -> None:
    """Replace a bind-mounted file's content without replacing the file."""
    data = text.encode()
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    try:
        view = memoryview(data)
        offset = 0
        while offset < len(data):
            offset += os.pwrite(fd, view[offset:], offset)
        os.ftruncate(fd, len(data))
    finally:
        os.close(fd)
