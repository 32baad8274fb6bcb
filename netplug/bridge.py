"""Bridge networks for root containers: a Linux bridge per network, a veth pair per
container (host end on the bridge, ``eth0`` in the container), NAT and published
ports by :mod:`netplug.nft`. Netlink through pyroute2, no ``ip`` process.

The supervisor is a multi-threaded trio process, so nothing here forks (pyroute2's
``netns=`` forks a helper, hence unused). A netlink socket stays bound to the network
namespace it was made in: to configure a container's namespace, a short-lived thread
of our own (never one of trio's pooled threads) ``setns``-es into it, makes the
socket and goes back; the socket is then used from the worker thread in the
supervisor's namespace, and the veth's peer is created directly in the container's
namespace (``IFLA_NET_NS_FD``) under its final name, ``eth0``.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

import trio
from pyroute2 import IPRoute  # type: ignore[import-untyped]
from pyroute2.netlink.exceptions import NetlinkError  # type: ignore[import-untyped]

from runtime import libc
from runtime.errors import Conflict, HostError, SetupFailed, SpecError

from . import Attached, Interface, NetworkConfig, PortMapping
from .ipam import Network
from .nft import Table

NETLINK_ROUTE = 0
CONTAINER_IFNAME = "eth0"
TEARDOWN_TIMEOUT = 10.0


class PortInUse(Conflict):
    """A published host port is already bound on the host."""


# --- netlink helpers -------------------------------------------------------------------


def _netlink_socket_in(ns_fd: int) -> socket.socket:
    """A NETLINK_ROUTE socket bound to the network namespace ``ns_fd``, made by a thread
    of its own that enters that namespace and dies afterwards (so no thread of the
    process stays in a foreign namespace, even if returning failed)."""
    result: list[socket.socket | BaseException] = []

    def enter() -> None:
        try:
            libc.setns(ns_fd, libc.CLONE_NEWNET, "the container's network namespace")
            result.append(socket.socket(socket.AF_NETLINK,
                                        socket.SOCK_DGRAM | socket.SOCK_CLOEXEC,
                                        NETLINK_ROUTE))
        except BaseException as exc:  # handed to the caller
            result.append(exc)

    thread = threading.Thread(target=enter, name="myctr-netns", daemon=True)
    thread.start()
    thread.join()
    outcome = result[0]
    if isinstance(outcome, BaseException):
        raise outcome
    return outcome


@contextlib.contextmanager
def _iproute(ns_fd: int | None = None) -> Iterator[Any]:
    """IPRoute in this thread's netns, or in ``ns_fd``'s. Use it from one thread only
    (pyroute2 keeps per-thread state)."""
    if ns_fd is None:
        ipr = IPRoute()
    else:
        sock = _netlink_socket_in(ns_fd)
        try:
            ipr = IPRoute(use_socket=sock)
        except BaseException:
            sock.close()
            raise
    try:
        yield ipr
    finally:
        ipr.close()


def _index(ipr: Any, name: str) -> int | None:
    found = ipr.link_lookup(ifname=name)
    return int(found[0]) if found else None


def _attr(msg: Any, name: str) -> Any:
    return msg.get_attr(name) if hasattr(msg, "get_attr") else msg.get(name)


# --- bridges ---------------------------------------------------------------------------


def ensure_bridge(name: str, gateway: str, prefix: int) -> None:
    """The bridge ``name`` exists, has ``gateway/prefix`` and is up (idempotent)."""
    if len(name) > 15:
        raise SpecError(f"bridge name {name!r} is longer than 15 characters")
    try:
        with _iproute() as ipr:
            index = _index(ipr, name)
            if index is None:
                ipr.link("add", ifname=name, kind="bridge")
                index = _index(ipr, name)
                assert index is not None
            else:
                kind = _attr(_attr(ipr.link("get", index=index)[0], "IFLA_LINKINFO") or {},
                             "IFLA_INFO_KIND")
                if kind != "bridge":
                    raise Conflict(f"{name} exists and is not a bridge (it is a {kind})")
            have = {(_attr(a, "IFA_ADDRESS"), a["prefixlen"])
                    for a in ipr.get_addr(index=index, family=socket.AF_INET)}
            if (gateway, prefix) not in have:
                ipr.addr("add", index=index, address=gateway, prefixlen=prefix)
            ipr.link("set", index=index, state="up")
    except NetlinkError as exc:
        raise HostError(f"cannot set up bridge {name} ({gateway}/{prefix}): "
                        f"{os.strerror(exc.code)}") from None


def remove_bridge(name: str) -> None:
    """Delete the bridge (its veths leave it; nothing if it does not exist)."""
    with _iproute() as ipr:
        index = _index(ipr, name)
        if index is not None:
            with contextlib.suppress(NetlinkError):
                ipr.link("del", index=index)


def remove_link(name: str) -> bool:
    """Delete a host link (a veth: its peer goes with it); False if there was none."""
    with _iproute() as ipr:
        index = _index(ipr, name)
        if index is None:
            return False
        try:
            ipr.link("del", index=index)
        except NetlinkError as exc:
            if exc.code == errno.ENODEV:
                return False
            raise
        return True


# --- a container's veth ----------------------------------------------------------------


def new_veth_name() -> str:
    return "veth" + secrets.token_hex(4)  # 12 characters


def attach_veth(pid: int, network: Network, address: str, host_ifname: str) -> str:
    """Create the veth pair for the container whose init is ``pid``: ``host_ifname``
    on the network's bridge (up), ``eth0`` in the container with ``address``, up, lo up,
    a default route via the gateway. Returns eth0's MAC. Synchronous (a worker thread).
    On failure, the host end is deleted again."""
    prefix = network.prefix
    try:
        ns_fd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise SetupFailed(exc.errno or errno.EIO, f"cannot open the network namespace of {pid}: "
                          f"{exc.strerror}") from None
    made = False
    try:
        with _iproute() as host:
            bridge = _index(host, network.bridge)
            if bridge is None:
                raise HostError(f"bridge {network.bridge} of network {network.name} "
                                "does not exist")
            what = f"creating veth {host_ifname}"
            try:
                host.link("add", ifname=host_ifname, kind="veth",
                          peer={"ifname": CONTAINER_IFNAME, "net_ns_fd": ns_fd})
                made = True
                index = _index(host, host_ifname)
                assert index is not None
                what = f"attaching {host_ifname} to {network.bridge}"
                host.link("set", index=index, master=bridge, state="up")
                what = "configuring eth0 in the container"
                with _iproute(ns_fd) as inside:
                    eth0 = _index(inside, CONTAINER_IFNAME)
                    lo = _index(inside, "lo")
                    assert eth0 is not None and lo is not None
                    inside.addr("add", index=eth0, address=address, prefixlen=prefix)
                    inside.link("set", index=eth0, state="up")
                    inside.link("set", index=lo, state="up")
                    inside.route("add", dst="0.0.0.0/0", gateway=network.gateway, oif=eth0)
                    mac = str(_attr(inside.link("get", index=eth0)[0], "IFLA_ADDRESS"))
            except NetlinkError as exc:
                raise SetupFailed(exc.code, f"{what}: {os.strerror(exc.code)}") from None
        made = False
        return mac
    finally:
        os.close(ns_fd)
        if made:
            with contextlib.suppress(Exception):
                remove_link(host_ifname)


# --- host ports ------------------------------------------------------------------------


def reserve_ports(ports: tuple[PortMapping, ...]) -> tuple[list[PortMapping],
                                                            list[socket.socket]]:
    """Bind each published host port (as docker-proxy does, without serving it): a port
    something else holds is refused up front, nothing else can take ours while the
    container runs, and host port 0 becomes a free port the kernel picks. Returns the
    mappings with their host ports and the bound sockets (close them to free the ports)."""
    chosen: list[PortMapping] = []
    sockets: list[socket.socket] = []
    try:
        for port in ports:
            host_ip = port.host_ip or "0.0.0.0"
            if ":" in host_ip:
                raise SpecError(f"cannot publish {port}: bridge networks are IPv4 only")
            kind = socket.SOCK_STREAM if port.protocol == "tcp" else socket.SOCK_DGRAM
            sock = socket.socket(socket.AF_INET, kind | socket.SOCK_CLOEXEC)
            sockets.append(sock)
            try:
                sock.bind((host_ip, port.host_port))
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    raise PortInUse(f"cannot publish {port}: host port {port.host_port}/"
                                    f"{port.protocol} on {host_ip} is already in use"
                                    ) from None
                if exc.errno == errno.EADDRNOTAVAIL:
                    raise SpecError(f"cannot publish {port}: {host_ip} is not an address "
                                    "of this host") from None
                raise HostError(f"cannot publish {port}: bind {host_ip}:{port.host_port}: "
                                f"{exc.strerror}") from None
            chosen.append(port._replace(host_port=sock.getsockname()[1]))
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return chosen, sockets


# --- the plug --------------------------------------------------------------------------


class BridgePlug:
    """One container run on a bridge network (``bridge`` or a named one)."""

    def __init__(self, config: NetworkConfig, network: Network, address: str, table: Table,
                 container_id: str, failed: Callable[[str], None]) -> None:
        self.config = config
        self.network = network
        self.address = address
        self.table = table
        self.container_id = container_id
        self.failed = failed
        self.host_ifname = new_veth_name()
        self.attached: Attached | None = None

    async def run(self, pid: int,
                  task_status: trio.TaskStatus[Attached] = trio.TASK_STATUS_IGNORED) -> None:
        ports, sockets = reserve_ports(self.config.ports)
        try:
            try:
                mac = await trio.to_thread.run_sync(attach_veth, pid, self.network,
                                                    self.address, self.host_ifname)
                if ports:
                    await trio.to_thread.run_sync(self.table.add_ports, self.container_id,
                                                  self.address, ports)
            except BaseException:
                with trio.CancelScope(shield=True):
                    await self._teardown(bool(ports))
                raise
            self.attached = Attached(
                interfaces=(Interface(CONTAINER_IFNAME, self.address, self.network.prefix,
                                      self.network.gateway, mac),),
                ports=tuple(ports),
                source_ip_preserved=True,
                details=(("network", self.network.name), ("bridge", self.network.bridge),
                         ("host_interface", self.host_ifname)),
            )
            task_status.started(self.attached)
            try:
                await trio.sleep_forever()
            finally:
                with trio.CancelScope(shield=True):
                    await self._teardown(bool(ports))
        finally:
            for sock in sockets:
                sock.close()

    async def _teardown(self, ports: bool) -> None:
        with trio.move_on_after(TEARDOWN_TIMEOUT):
            if ports:
                with contextlib.suppress(Exception):
                    await trio.to_thread.run_sync(self.table.remove_ports, self.container_id)
            with contextlib.suppress(Exception):
                await trio.to_thread.run_sync(remove_link, self.host_ifname)
