"""NAT and published ports with nftables, through libnftables's JSON API (ctypes; no
``nft`` process). Each supervisor owns one table, ``inet myctr-<tag>``, and never
touches another::

    table inet myctr-TAG {
        chain prerouting  { type nat hook prerouting priority dstnat;
                            fib daddr type local jump ports }
        chain output      { type nat hook output priority dstnat;       # the host's own
                            fib daddr type local jump ports }           # connections
        chain ports       { ip daddr H tcp dport 8080 dnat ip to 10.88.0.5:80 ... }
        chain postrouting { type nat hook postrouting priority srcnat;
                            ip saddr 10.88.0.0/16 oifname != "myctr0" masquerade
                            oifname "myctr0" ct status dnat ip saddr 127.0.0.0/8 masquerade
                            oifname "myctr0" ct status dnat ip saddr 10.88.0.0/16 masquerade }
        chain forward     { type filter hook forward priority filter;
                            iifname "myctr0" accept; oifname "myctr0" accept }
        chain input       { type filter hook input priority filter;
                            iifname "myctr0" ip daddr 127.0.0.0/8 ct direction reply accept
                            iifname "myctr0" ip daddr 127.0.0.0/8 drop }
    }

Every rule carries a comment naming its owner (``net:NAME`` or ``ctr:ID``): removal
lists the table and deletes exactly those rules by handle.

Published ports on 127.0.0.1: the output chain DNATs the host's own connections; a
packet from 127.0.0.1 may leave through the bridge only with ``route_localnet`` on
the bridge (set by :meth:`Table.add_network`, the bridge alone rather than ``all``),
and the postrouting chain masquerades it to the gateway address so the container can
answer. ``route_localnet`` would also let a container send to the host's 127.0.0.1
through its gateway: the input chain drops that, but for the answers to the host's
own connections (their destination is 127.0.0.1 again once un-NATed). The hairpin rule (a container
reaching a published port of its own bridge) masquerades too, or the answer would
bypass the host.

Synchronous: the supervisor calls it in a worker thread. Each call makes its own
libnftables context (its netlink socket lives in the calling thread's network
namespace: the supervisor's).
"""

from __future__ import annotations

import ctypes
import json
import threading
from collections.abc import Iterable
from typing import Any

from runtime.errors import HostError, SpecError

from . import PortMapping

LIBNFTABLES = "libnftables.so.1"
NFT_CTX_OUTPUT_HANDLE = 1 << 3
NFT_CTX_OUTPUT_JSON = 1 << 4
FAMILY = "inet"
TABLE_PREFIX = "myctr"
LOCALNET = "127.0.0.0/8"

Command = dict[str, Any]

_lib: ctypes.CDLL | None = None
_lib_lock = threading.Lock()


class NftError(HostError):
    """libnftables refused a command (the message is nft's)."""


def _libnftables() -> ctypes.CDLL:
    global _lib
    with _lib_lock:
        if _lib is None:
            try:
                lib = ctypes.CDLL(LIBNFTABLES, use_errno=True)
            except OSError as exc:
                raise HostError(f"bridge networks need libnftables ({LIBNFTABLES}): "
                                f"{exc} (install libnftables1)") from None
            lib.nft_ctx_new.restype = ctypes.c_void_p
            lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
            lib.nft_ctx_free.restype = None
            lib.nft_ctx_free.argtypes = [ctypes.c_void_p]
            lib.nft_ctx_output_set_flags.restype = None
            lib.nft_ctx_output_set_flags.argtypes = [ctypes.c_void_p, ctypes.c_uint]
            for name in ("nft_ctx_buffer_output", "nft_ctx_buffer_error"):
                getattr(lib, name).restype = ctypes.c_int
                getattr(lib, name).argtypes = [ctypes.c_void_p]
            for name in ("nft_ctx_get_output_buffer", "nft_ctx_get_error_buffer"):
                getattr(lib, name).restype = ctypes.c_char_p
                getattr(lib, name).argtypes = [ctypes.c_void_p]
            lib.nft_run_cmd_from_buffer.restype = ctypes.c_int
            lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
            _lib = lib
        return _lib


def run(commands: list[Command]) -> dict[str, Any]:
    """Run one JSON batch (atomic: all or nothing); nft's JSON answer, or {}."""
    lib = _libnftables()
    ctx = lib.nft_ctx_new(0)
    if not ctx:
        raise NftError("nft_ctx_new failed")
    try:
        lib.nft_ctx_output_set_flags(ctx, NFT_CTX_OUTPUT_JSON | NFT_CTX_OUTPUT_HANDLE)
        if lib.nft_ctx_buffer_output(ctx) or lib.nft_ctx_buffer_error(ctx):
            raise NftError("nft_ctx_buffer_output failed")
        request = json.dumps({"nftables": commands}).encode()
        rc = lib.nft_run_cmd_from_buffer(ctx, request)
        output = (lib.nft_ctx_get_output_buffer(ctx) or b"").decode()
        error = (lib.nft_ctx_get_error_buffer(ctx) or b"").decode().strip()
    finally:
        lib.nft_ctx_free(ctx)
    if rc != 0:
        raise NftError(f"nftables: {error or 'command failed'}")
    answer: dict[str, Any] = json.loads(output) if output.strip() else {}
    return answer


# --- JSON building (pure) --------------------------------------------------------------


def _match(left: Any, right: Any, op: str = "==") -> Command:
    return {"match": {"op": op, "left": left, "right": right}}


def _payload(protocol: str, field: str) -> Command:
    return {"payload": {"protocol": protocol, "field": field}}


def _prefix(cidr: str) -> Command:
    addr, _, length = cidr.partition("/")
    return {"prefix": {"addr": addr, "len": int(length)}}


def _meta(key: str) -> Command:
    return {"meta": {"key": key}}


def _fib_local() -> Command:
    return _match({"fib": {"result": "type", "flags": ["daddr"]}}, "local")


BASE_CHAINS: tuple[tuple[str, str, str, int], ...] = (
    # name, type, hook, priority
    ("prerouting", "nat", "prerouting", -100),  # dstnat
    ("output", "nat", "output", -100),  # dstnat
    ("postrouting", "nat", "postrouting", 100),  # srcnat
    ("forward", "filter", "forward", 0),
    ("input", "filter", "input", 0),
)
PORTS_CHAIN = "ports"
# in the order they are made: the ``ports`` chain before the chains jumping to it
CHAINS = (PORTS_CHAIN, *(c[0] for c in BASE_CHAINS))


def _rule(table: str, chain: str, expr: list[Command], comment: str = "") -> Command:
    rule: Command = {"family": FAMILY, "table": table, "chain": chain, "expr": expr}
    if comment:
        rule["comment"] = comment
    return {"rule": rule}


def chain_commands(table: str, chain: str) -> list[Command]:
    """``add chain`` for one of the table's chains, with its fixed rules."""
    for name, kind, hook, prio in BASE_CHAINS:
        if name == chain:
            spec = {"family": FAMILY, "table": table, "name": name, "type": kind,
                    "hook": hook, "prio": prio, "policy": "accept"}
            break
    else:
        spec = {"family": FAMILY, "table": table, "name": chain}
    commands: list[Command] = [{"add": {"chain": spec}}]
    if chain in ("prerouting", "output"):
        commands.append({"add": _rule(table, chain, [_fib_local(),
                                                      {"jump": {"target": PORTS_CHAIN}}])})
    return commands


def table_commands(table: str) -> list[Command]:
    """The table and its chains (the ``ports`` chain before the chains jumping to it)."""
    commands: list[Command] = [{"add": {"table": {"family": FAMILY, "name": table}}}]
    for chain in CHAINS:
        commands += chain_commands(table, chain)
    return commands


def network_comment(name: str) -> str:
    return f"net:{name}"


def container_comment(container_id: str) -> str:
    return f"ctr:{container_id}"


def network_rules(table: str, name: str, subnet: str, bridge: str) -> list[Command]:
    """``add rule`` commands for a network: masquerade of its egress, the hairpin and
    localhost masquerade for published ports, forward accept, no 127/8 from the bridge."""
    comment = network_comment(name)
    iif = _meta("iifname")
    oif = _meta("oifname")
    saddr = _payload("ip", "saddr")
    daddr = _payload("ip", "daddr")
    dnat = _match({"ct": {"key": "status"}}, "dnat", op="in")
    rules = [
        ("postrouting", [_match(saddr, _prefix(subnet)), _match(oif, bridge, "!="),
                         {"masquerade": None}]),
        ("postrouting", [_match(oif, bridge), dnat, _match(saddr, _prefix(LOCALNET)),
                         {"masquerade": None}]),
        ("postrouting", [_match(oif, bridge), dnat, _match(saddr, _prefix(subnet)),
                         {"masquerade": None}]),
        ("forward", [_match(iif, bridge), {"accept": None}]),
        ("forward", [_match(oif, bridge), {"accept": None}]),
        ("input", [_match(iif, bridge), _match(daddr, _prefix(LOCALNET)),
                   _match({"ct": {"key": "direction"}}, "reply"), {"accept": None}]),
        ("input", [_match(iif, bridge), _match(daddr, _prefix(LOCALNET)), {"drop": None}]),
    ]
    return [{"add": _rule(table, chain, expr, comment)} for chain, expr in rules]


def port_rules(table: str, container_id: str, address: str,
               ports: Iterable[PortMapping]) -> list[Command]:
    """``add rule`` commands DNATing each published host port to ``address``."""
    commands = []
    for port in ports:
        if port.protocol not in ("tcp", "udp"):
            raise SpecError(f"cannot publish {port}: protocol must be tcp or udp")
        if not port.host_port:
            raise SpecError(f"cannot publish {port}: no host port chosen")
        expr: list[Command] = [_match(_meta("nfproto"), "ipv4")]
        if port.host_ip and port.host_ip != "0.0.0.0":
            expr.append(_match(_payload("ip", "daddr"), port.host_ip))
        expr += [_match(_meta("l4proto"), port.protocol),
                 _match(_payload("th", "dport"), port.host_port),
                 {"dnat": {"family": "ip", "addr": address, "port": port.container_port}}]
        commands.append({"add": _rule(table, PORTS_CHAIN, expr,
                                      container_comment(container_id))})
    return commands


def delete_rule_commands(table: str, rules: Iterable[Command]) -> list[Command]:
    return [{"delete": {"rule": {"family": FAMILY, "table": table, "chain": r["chain"],
                                 "handle": r["handle"]}}} for r in rules]


# --- the table -------------------------------------------------------------------------


def table_name(tag: str) -> str:
    """The table of the supervisor whose state tag is ``tag``."""
    return f"{TABLE_PREFIX}-{tag}"


class Table:
    """The supervisor's own nftables table ``inet NAME`` (NAME starts with ``myctr``)."""

    def __init__(self, name: str) -> None:
        if not name.startswith(TABLE_PREFIX) or len(name) > 200 or not all(
                c.isalnum() or c in "-_." for c in name):
            raise SpecError(f"invalid table name {name!r}: myctr-TAG expected")
        self.name = name
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Table({self.name!r})"

    def _listing(self) -> list[Command] | None:
        """The table's objects (chains, rules with handles), None if it does not exist."""
        try:
            answer = run([{"list": {"table": {"family": FAMILY, "name": self.name}}}])
        except NftError as exc:
            if "No such file or directory" in str(exc):
                return None
            raise
        return [item for item in answer.get("nftables", []) if "metainfo" not in item]

    def exists(self) -> bool:
        return self._listing() is not None

    def ensure(self) -> None:
        """Create the table and its chains, or add the chains it lacks."""
        self._apply(None, [])

    def _apply(self, comment: str | None, commands: list[Command]) -> None:
        """One listing, one batch: the table and chains it lacks, the rules tagged
        ``comment`` deleted, then ``commands``."""
        with self._lock:
            listing = self._listing()
            if listing is None:
                batch = table_commands(self.name)
            else:
                have = {item["chain"]["name"] for item in listing if "chain" in item}
                batch = [cmd for c in CHAINS if c not in have
                         for cmd in chain_commands(self.name, c)]
                if comment is not None:
                    batch += delete_rule_commands(self.name, [
                        item["rule"] for item in listing
                        if "rule" in item and item["rule"].get("comment") == comment])
            batch += commands
            if batch:
                run(batch)

    def _delete_commands(self) -> list[Command]:
        # "add table" first so that "delete table" cannot fail: nft < 1.0.8 has no
        # "destroy"; one batch, so atomic.
        table = {"family": FAMILY, "name": self.name}
        return [{"add": {"table": table}}, {"delete": {"table": table}}]

    def destroy(self) -> None:
        """Delete the table with every rule in it (nothing if it does not exist)."""
        with self._lock:
            run(self._delete_commands())

    def reset(self) -> None:
        """Delete and recreate the table, empty, in one transaction: what a supervisor
        does when it starts (the containers of a crashed one died with it)."""
        with self._lock:
            run(self._delete_commands() + table_commands(self.name))

    def rules(self, comment: str | None = None) -> list[Command]:
        """The table's rules as nft lists them (``family, table, chain, handle, expr,
        comment``), those with ``comment`` only when given; [] without the table."""
        listing = self._listing() or []
        found = [item["rule"] for item in listing if "rule" in item]
        if comment is not None:
            found = [r for r in found if r.get("comment") == comment]
        return found

    def _remove_tagged(self, comment: str) -> int:
        with self._lock:
            doomed = self.rules(comment)
            if doomed:
                run(delete_rule_commands(self.name, doomed))
            return len(doomed)

    def add_network(self, name: str, subnet: str, bridge: str) -> None:
        """NAT for a network whose bridge exists: masquerade, forward accept, ports on
        127.0.0.1. Turns on IPv4 forwarding and ``route_localnet`` on the bridge (in
        this process's network namespace). Replaces the network's rules if present."""
        self._apply(network_comment(name), network_rules(self.name, name, subnet, bridge))
        enable_forwarding()
        set_sysctl(f"net/ipv4/conf/{bridge}/route_localnet", "1")

    def remove_network(self, name: str) -> None:
        self._remove_tagged(network_comment(name))

    def add_ports(self, container_id: str, address: str, ports: Iterable[PortMapping]) -> None:
        """DNAT each published host port to ``address`` (replacing the container's
        previous rules, if any)."""
        self._apply(container_comment(container_id),
                    port_rules(self.name, container_id, address, list(ports)))

    def remove_ports(self, container_id: str) -> None:
        self._remove_tagged(container_comment(container_id))


def set_sysctl(name: str, value: str) -> None:
    """Write /proc/sys/NAME (network sysctls are those of the caller's netns)."""
    path = f"/proc/sys/{name}"
    try:
        with open(path) as f:
            if f.read().strip() == value:
                return
        with open(path, "w") as f:
            f.write(value)
    except OSError as exc:
        raise HostError(f"cannot set {name.replace('/', '.')}={value}: {exc.strerror}") from None


def enable_forwarding() -> None:
    """IPv4 forwarding on, for a bridge network (never turned off again: something else
    on the host may have wanted it too)."""
    set_sysctl("net/ipv4/ip_forward", "1")
