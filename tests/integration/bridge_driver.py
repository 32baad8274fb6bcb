"""Runs netplug's bridge components for tests/integration/test_bridge.py, inside the
test's network namespace (``nsenter --net=HOSTNS python bridge_driver.py JSON``): one
operation per process, as the supervisor would call them.

``{"op": "plug", ...}`` prints the plug's Attached (or ``{"error": ...}``) as one JSON
line, holds the container's network until its stdin ends, tears down, prints
``{"done": true}``.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import trio

from netplug import NetworkConfig, PortMapping, bridge
from netplug.ipam import Network
from netplug.nft import Table
from runtime.errors import ContainerError


def emit(doc: dict[str, Any]) -> None:
    print(json.dumps(doc), flush=True)


async def plug(args: dict[str, Any]) -> None:
    network = Network(**args["network"])
    config = NetworkConfig(network.name,
                           ports=tuple(PortMapping.from_json(p) for p in args["ports"]))
    failures: list[str] = []
    the_plug = bridge.BridgePlug(config, network, args["address"], Table(args["table"]),
                                 args["container_id"], failures.append)
    async with trio.open_nursery() as nursery:
        try:
            attached = await nursery.start(the_plug.run, args["pid"])
        except ContainerError as exc:
            emit({"error": str(exc), "type": type(exc).__name__})
            return
        # no thread of ours was left in the container's network namespace
        own = os.stat("/proc/self/ns/net").st_ino
        strays = [t for t in os.listdir("/proc/self/task")
                  if os.stat(f"/proc/self/task/{t}/ns/net").st_ino != own]
        emit({**attached.to_json(), "stray_threads": strays})
        await trio.to_thread.run_sync(sys.stdin.buffer.read)
        nursery.cancel_scope.cancel()
    emit({"done": True, "failures": failures})


def main() -> None:
    args = json.loads(sys.argv[1])
    op = args["op"]
    table = Table(args["table"])
    if op == "plug":
        trio.run(plug, args)
    elif op == "network":
        net = Network(**args["network"])
        bridge.ensure_bridge(net.bridge, net.gateway, net.prefix)
        table.ensure()
        table.add_network(net.name, net.subnet, net.bridge)
    elif op == "remove-network":
        net = Network(**args["network"])
        table.remove_network(net.name)
        bridge.remove_bridge(net.bridge)
    elif op == "reset":
        table.reset()
    elif op == "destroy":
        table.destroy()
    elif op == "rules":
        emit({"rules": table.rules(), "exists": table.exists()})
    else:
        raise SystemExit(f"unknown op {op}")


if __name__ == "__main__":
    main()
