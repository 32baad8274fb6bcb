"""The supervisor's networks: named bridge networks and their address leases (SQLite),
one plug per container run, and the /etc/hosts files that make containers on a
network find each other by name.

- ``bridge`` is the default network as root (podman's ``podman``): 10.88.0.0/16 on
  bridge ``myctr0``, made when a container first needs it. ``network create NAME``
  adds a network with its own bridge and subnet (10.89.N.0/24 unless ``--subnet``).
- A container keeps its address (its lease) from its first start until it is
  removed; leases are rows, so a crash cannot hand one address out twice, and a lease
  whose container no longer exists is dropped when the supervisor starts.
- nftables: one table of this supervisor (``inet myctr-<tag>``), removed at start (the
  containers of a killed supervisor died with it), so no rule of a dead run remains.
- Names: each running container on a network has, in its /etc/hosts, every other
  running container of that network by name and alias (see :mod:`netplug.etc`).
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import trio

from netplug import NETWORK_MODES, NetworkConfig
from runtime.errors import Conflict, HostError, NotFound, SpecError
from runtime.log import get_logger

log = get_logger("myctr.networks")

SCHEMA = """
CREATE TABLE IF NOT EXISTS networks (
    name TEXT PRIMARY KEY,
    driver TEXT NOT NULL,        -- "bridge"
    subnet TEXT NOT NULL,        -- "10.89.1.0/24"
    gateway TEXT NOT NULL,
    bridge TEXT NOT NULL,        -- the Linux bridge's name
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS leases (
    network TEXT NOT NULL REFERENCES networks(name),
    address TEXT NOT NULL,
    container TEXT NOT NULL,
    PRIMARY KEY (network, address),
    UNIQUE (network, container)
);
"""
DEFAULT = "bridge"  # podman's "podman": 10.88.0.0/16 on myctr0 (netplug.ipam)


class Network(NamedTuple):
    name: str
    driver: str
    subnet: str
    gateway: str
    bridge: str
    created: float

    @property
    def prefix(self) -> int:
        return int(self.subnet.rsplit("/", 1)[1])

    def to_json(self) -> dict[str, Any]:
        return self._asdict()


class Member(NamedTuple):
    """A running container on a network, for the others' /etc/hosts."""

    container: str
    address: str
    names: tuple[str, ...]
    hosts_path: str
    own: str  # its hosts file's own part


class NetworkManager:
    def __init__(self, db: sqlite3.Connection, tag: str, run_dir: str) -> None:
        self.db = db
        self.db.executescript(SCHEMA)
        self.tag = tag
        self.run_dir = run_dir
        self.rootless = os.geteuid() != 0
        self.table: Any = None  # netplug.nft.Table, made on first use
        self.ready: set[str] = set()  # networks whose bridge and rules exist now
        self.members: dict[str, dict[str, Member]] = {}  # network -> container -> member
        self.attached: set[str] = set()  # containers whose run is on a network now
        self.lock = trio.Lock()

    # --- networks -----------------------------------------------------------------

    def exists(self, name: str) -> bool:
        return name == DEFAULT or self._row(name) is not None

    def _row(self, name: str) -> Network | None:
        row = self.db.execute("SELECT name, driver, subnet, gateway, bridge, created "
                              "FROM networks WHERE name = ?", (name,)).fetchone()
        return Network(*row) if row else None

    def get(self, name: str) -> Network:
        network = self._row(name)
        if network is None and name == DEFAULT:
            network = self._create_default()
        if network is None:
            raise NotFound(f"network {name!r} not found")
        return network

    def all(self) -> list[Network]:
        rows = self.db.execute("SELECT name, driver, subnet, gateway, bridge, created "
                               "FROM networks ORDER BY created").fetchall()
        return [Network(*r) for r in rows]

    def _create_default(self) -> Network:
        return self._insert(DEFAULT, None, None)

    def create(self, name: str, subnet: str | None, gateway: str | None) -> Network:
        from runtime import options

        if self.rootless:
            raise SpecError("network create needs root: rootless containers use "
                            "slirp4netns")
        if name in NETWORK_MODES or self._row(name):
            raise Conflict(f"network {name!r} already exists")
        options.validate_name(name)
        return self._insert(name, subnet, gateway)

    def _insert(self, name: str, subnet: str | None, gateway: str | None) -> Network:
        from netplug import ipam

        existing = {n.name: n.subnet for n in self.all()}
        made = ipam.make_network(name, existing, subnet, gateway)
        network = Network(name, "bridge", made.subnet, made.gateway, made.bridge, time.time())
        with self.db:
            self.db.execute("INSERT INTO networks (name, driver, subnet, gateway, bridge, "
                            "created) VALUES (?, ?, ?, ?, ?, ?)", tuple(network))
        return network

    async def remove(self, name: str, in_use: Callable[[str], list[str]]) -> None:
        network = self.get(name)
        users = in_use(name)
        if users:
            raise Conflict(f"network {name} is used by container(s) {', '.join(users)}: "
                           "remove them first")
        async with self.lock:  # the bridge outlives a supervisor: always torn down
            await trio.to_thread.run_sync(self._teardown_network, network)
            with self.db:
                self.db.execute("DELETE FROM leases WHERE network = ?", (name,))
                self.db.execute("DELETE FROM networks WHERE name = ?", (name,))

    def _teardown_network(self, network: Network) -> None:
        from netplug import bridge

        self._nft().remove_network(network.name)  # nothing when the table is gone
        bridge.remove_bridge(network.bridge)
        self.ready.discard(network.name)

    def inspect(self, name: str) -> dict[str, Any]:
        network = self.get(name)
        leases = self.db.execute("SELECT container, address FROM leases WHERE network = ?",
                                 (name,)).fetchall()
        return {**network.to_json(), "containers": {
            cid: {"address": address, "running": cid in self.attached}
            for cid, address in leases}}

    # --- start-up and leases --------------------------------------------------------

    def startup(self, containers: set[str]) -> None:
        """After a start (or a crash): our nftables table removed (what a killed
        supervisor left; made again when a network is first used), leases of containers
        that no longer exist dropped, bridges left for the first use."""
        with self.db:
            rows = self.db.execute("SELECT DISTINCT container FROM leases").fetchall()
            for (cid,) in rows:
                if cid not in containers:
                    self.db.execute("DELETE FROM leases WHERE container = ?", (cid,))
        if not self.rootless and self.all():
            try:  # gone until a network is used again (then made afresh)
                self._nft().destroy()
            except (OSError, HostError) as exc:
                log.error("nftables reset failed", error=str(exc))

    def _nft(self) -> Any:
        if self.table is None:
            from netplug import nft

            self.table = nft.Table(self.tag)  # the state tag: "myctr-<hash>"
        return self.table

    def lease(self, network: Network, container: str) -> str:
        from netplug import ipam

        row = self.db.execute("SELECT address FROM leases WHERE network = ? AND container = ?",
                              (network.name, container)).fetchone()
        if row:
            return str(row[0])
        used = {a for (a,) in self.db.execute("SELECT address FROM leases WHERE network = ?",
                                              (network.name,))}
        address = ipam.allocate(network.subnet, network.gateway, used)
        with self.db:
            self.db.execute("INSERT INTO leases (network, address, container) VALUES (?, ?, ?)",
                            (network.name, address, container))
        return address

    def release(self, container: str) -> None:
        """``rm``: the container's leases go."""
        with self.db:
            self.db.execute("DELETE FROM leases WHERE container = ?", (container,))

    # --- plugs ----------------------------------------------------------------------

    async def plug(self, config: NetworkConfig, container: str, run_dir: str,
                   failed: Callable[[str], None]) -> Any:
        """The plug for one run of a container on a network (not none or host)."""
        if config.mode == "slirp4netns":
            from netplug import slirp

            problem = slirp.tun_problem()
            if problem is not None:
                raise HostError(f"--network slirp4netns: {problem}")
            return slirp.SlirpPlug(config, run_dir, failed)
        network = self.get(config.mode)
        async with self.lock:
            if network.name not in self.ready:
                await trio.to_thread.run_sync(self._setup_network, network)
            address = self.lease(network, container)
        from netplug import bridge, ipam

        return bridge.BridgePlug(config, ipam.Network(
            network.name, network.bridge, network.subnet, network.gateway),
            address, self._nft(), container, failed)

    def _setup_network(self, network: Network) -> None:
        from netplug import bridge

        bridge.ensure_bridge(network.bridge, network.gateway, network.prefix)
        self._nft().add_network(network.name, network.subnet, network.bridge)
        self.ready.add(network.name)

    # --- names ----------------------------------------------------------------------

    def joined(self, config: NetworkConfig, container: str, own: str, hosts_path: str,
               address: str = "", names: tuple[str, ...] = ()) -> None:
        """A run is on its network: its /etc/hosts gets its own address (``own``, the
        file's first part); on a named network it and its peers learn each other's
        names and aliases."""
        from netplug.etc import rewrite_in_place

        self.attached.add(container)
        if not config.named or not address:
            rewrite_in_place(hosts_path, own)
            return
        member = Member(container, address, names, hosts_path, own)
        self.members.setdefault(config.mode, {})[container] = member
        self._write_hosts(config.mode)

    def left(self, config: NetworkConfig, container: str) -> None:
        self.attached.discard(container)
        members = self.members.get(config.mode)
        if members is not None and members.pop(container, None) is not None:
            self._write_hosts(config.mode)

    def _write_hosts(self, network: str) -> None:
        from netplug.etc import render_peers, rewrite_in_place

        members = self.members.get(network, {})
        for cid, member in members.items():
            peers = render_peers((m.address, m.names) for other, m in members.items()
                                 if other != cid)
            try:
                rewrite_in_place(member.hosts_path, member.own + PEERS_MARK + peers)
            except OSError as exc:
                log.warning("hosts file not updated", container_id=cid, error=str(exc))


PEERS_MARK = "# myctr: the other containers on this network\n"
