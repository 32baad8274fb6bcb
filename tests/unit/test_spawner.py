"""The spawner's request/reply exchange with the zygote survives cancellation: a
cancelled request must not leave its reply queued for the next one."""

from __future__ import annotations

import json
import socket
import threading
import time

import trio

from runtime.errors import HostError
from runtime.idmap import IdMapPlan
from supervisor.spawner import Spawner


def _slow_zygote(sock: socket.socket, delay: float) -> None:
    """Answers each request after ``delay`` with the request's own paths echoed, until
    the spawner's end closes."""
    while True:
        data = sock.recv(1 << 16)
        if not data:
            return
        time.sleep(delay)
        request = json.loads(data)
        try:
            sock.send(json.dumps({"ok": False, "error": {
                "type": "HostError", "errno": 0, "message": repr(request["paths"])}}).encode())
        except OSError:  # the spawner closed meanwhile
            return


async def test_cancelled_request_does_not_desynchronise_replies() -> None:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    thread = threading.Thread(target=_slow_zygote, args=(theirs, 0.05), daemon=True)
    thread.start()
    spawner = Spawner(ours, zygote_pid=0)
    plan = IdMapPlan(uid_mappings=(), gid_mappings=())
    try:
        with trio.move_on_after(0.01):
            try:
                await spawner.remove_trees(["/first"], plan)
            except HostError as exc:  # the exchange may finish despite the cancel
                assert "/first" in str(exc)
        try:
            await spawner.remove_trees(["/second"], plan)
        except Exception as exc:  # the message names the request
            assert "/second" in str(exc), f"got the reply of another request: {exc}"
        else:
            raise AssertionError("the echo zygote always fails")
    finally:
        spawner.close()
        thread.join(5)  # before its socket goes: a recv on a closed fd fails in the thread
        theirs.close()
