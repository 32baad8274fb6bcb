"""The nftables JSON that netplug.nft sends (no kernel needed)."""

from __future__ import annotations

import pytest

from netplug import PortMapping, nft
from runtime.errors import SpecError


def _adds(commands: list[nft.Command], kind: str) -> list[dict]:  # type: ignore[type-arg]
    return [c["add"][kind] for c in commands if kind in c.get("add", {})]


def test_table_commands_make_the_base_chains() -> None:
    commands = nft.table_commands("myctr-t")
    assert commands[0] == {"add": {"table": {"family": "inet", "name": "myctr-t"}}}
    chains = {c["name"]: c for c in _adds(commands, "chain")}
    assert set(chains) == {"ports", "prerouting", "output", "postrouting", "forward", "input"}
    assert (chains["prerouting"]["type"], chains["prerouting"]["hook"],
            chains["prerouting"]["prio"]) == ("nat", "prerouting", -100)
    assert (chains["output"]["type"], chains["output"]["hook"]) == ("nat", "output")
    assert (chains["postrouting"]["hook"], chains["postrouting"]["prio"]) == ("postrouting", 100)
    assert chains["forward"]["type"] == "filter"
    assert "hook" not in chains["ports"]
    # the ports chain exists before the rules jumping to it
    names = [c["add"].get("chain", {}).get("name") for c in commands]
    assert names.index("ports") < names.index("prerouting")
    jumps = [r for r in _adds(commands, "rule") if {"jump": {"target": "ports"}} in r["expr"]]
    assert sorted(r["chain"] for r in jumps) == ["output", "prerouting"]
    assert all(r["table"] == "myctr-t" and r["family"] == "inet" for r in jumps)


def test_network_rules() -> None:
    rules = _adds(nft.network_rules("myctr-t", "web", "10.89.0.0/24", "myctr-web"), "rule")
    assert {r["comment"] for r in rules} == {"net:web"}
    masq = [r for r in rules if {"masquerade": None} in r["expr"]]
    assert len(masq) == 3 and all(r["chain"] == "postrouting" for r in masq)
    egress = masq[0]["expr"]
    assert {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}},
                      "right": {"prefix": {"addr": "10.89.0.0", "len": 24}}}} in egress
    assert {"match": {"op": "!=", "left": {"meta": {"key": "oifname"}},
                      "right": "myctr-web"}} in egress
    localhost = masq[1]["expr"]
    assert {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}},
                      "right": {"prefix": {"addr": "127.0.0.0", "len": 8}}}} in localhost
    forward = [r for r in rules if r["chain"] == "forward"]
    assert len(forward) == 2 and all({"accept": None} in r["expr"] for r in forward)
    reply, drop = (r for r in rules if r["chain"] == "input")
    assert {"accept": None} in reply["expr"] and {"match": {
        "op": "==", "left": {"ct": {"key": "direction"}}, "right": "reply"}} in reply["expr"]
    assert {"drop": None} in drop["expr"]


def test_port_rules() -> None:
    ports = [PortMapping("", 8080, 80, "tcp"), PortMapping("192.0.2.1", 5353, 53, "udp")]
    rules = _adds(nft.port_rules("myctr-t", "abc", "10.88.0.5", ports), "rule")
    assert [r["chain"] for r in rules] == ["ports", "ports"]
    assert {r["comment"] for r in rules} == {"ctr:abc"}
    tcp, udp = (r["expr"] for r in rules)
    assert tcp[-1] == {"dnat": {"family": "ip", "addr": "10.88.0.5", "port": 80}}
    assert {"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": "tcp"}} in tcp
    assert {"match": {"op": "==", "left": {"payload": {"protocol": "th", "field": "dport"}},
                      "right": 8080}} in tcp
    assert not any("daddr" in str(e) for e in tcp)  # any host address
    assert {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}},
                      "right": "192.0.2.1"}} in udp
    assert udp[-1] == {"dnat": {"family": "ip", "addr": "10.88.0.5", "port": 53}}


def test_port_rules_need_a_host_port() -> None:
    with pytest.raises(SpecError, match="no host port"):
        nft.port_rules("myctr-t", "abc", "10.88.0.5", [PortMapping("", 0, 80, "tcp")])


def test_delete_commands_by_handle() -> None:
    listed = [{"family": "inet", "table": "myctr-t", "chain": "ports", "handle": 7,
               "comment": "ctr:abc", "expr": []}]
    assert nft.delete_rule_commands("myctr-t", listed) == [
        {"delete": {"rule": {"family": "inet", "table": "myctr-t", "chain": "ports",
                             "handle": 7}}}]


def test_table_names() -> None:
    assert nft.table_name("0123abcd") == "myctr-0123abcd"
    nft.Table("myctr-0123abcd")
    for bad in ("filter", "myctr x", 'myctr-"'):
        with pytest.raises(SpecError):
            nft.Table(bad)
