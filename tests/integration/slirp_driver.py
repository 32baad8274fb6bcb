"""Runs :class:`netplug.slirp.SlirpPlug` against a pid, as whoever runs this script (the
tests run it as root and as the rootless test user, in the test's host netns).

``python3 slirp_driver.py '{"pid": N, "run_dir": ..., "options": [[k, v]], "ports": [...]}'``

One JSON line per event on stdout: ``{"started": ATTACHED}``, ``{"error": CLASS,
"message": ...}``, ``{"failed": REASON}``, ``{"stopped": true}``. The run is cancelled
(the plug stops slirp4netns) when stdin reaches EOF.
"""

from __future__ import annotations

import json
import sys

import trio

from netplug import NetworkConfig, PortMapping
from netplug.slirp import SlirpPlug
from runtime.errors import ContainerError


def emit(doc: dict[str, object]) -> None:
    sys.stdout.write(json.dumps(doc) + "\n")
    sys.stdout.flush()


async def main() -> None:
    request = json.loads(sys.argv[1])
    config = NetworkConfig(
        "slirp4netns", tuple((k, v) for k, v in request.get("options", [])),
        tuple(PortMapping.from_json(p) for p in request.get("ports", [])))
    try:
        plug = SlirpPlug(config, request["run_dir"], lambda reason: emit({"failed": reason}))
    except ContainerError as exc:
        emit({"error": type(exc).__name__, "message": str(exc)})
        return
    async with trio.open_nursery() as nursery:
        try:
            attached = await nursery.start(plug.run, request["pid"])
        except ContainerError as exc:
            emit({"error": type(exc).__name__, "message": str(exc)})
            return
        emit({"started": attached.to_json()})
        await trio.to_thread.run_sync(sys.stdin.read, abandon_on_cancel=True)
        nursery.cancel_scope.cancel()
    emit({"stopped": True})


if __name__ == "__main__":
    trio.run(main)
