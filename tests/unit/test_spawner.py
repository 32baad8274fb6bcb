"""The spawner's request/reply exchange with the zygote survives cancellation: a
cancelled request must not leave its reply queued for the next one. Its start sends
Start only to an init that waits for one."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time

import trio

from runtime.channel import Channel, ChannelClosed, Start
from runtime.errors import HostError
from runtime.idmap import IdMapPlan
from supervisor.spawner import Spawner
from supervisor.zygote import CreatedInit


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


async def _start_over(go_ahead: bool) -> list[object]:
    """Spawner.start on a channel whose init end records what it receives and then
    closes (as an exec closes it)."""
    ours, theirs = Channel.pair()
    received: list[object] = []

    def init() -> None:
        if go_ahead:  # whatever start sends comes at once: look after a while
            time.sleep(0.05)
            theirs.sock.setblocking(False)
        with contextlib.suppress(ChannelClosed, BlockingIOError):
            received.append(theirs.receive())
        theirs.close()

    thread = threading.Thread(target=init, daemon=True)
    thread.start()
    fd = ours.sock.detach()  # the spawner's start takes the fd over
    zygote_end, other = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    spawner = Spawner(zygote_end, 0)
    with trio.fail_after(5):
        await spawner.start(CreatedInit(pid=0, pidfd=-1, channel_fd=fd, pty_master=None,
                                        go_ahead=go_ahead))
    thread.join(5)
    spawner.close()
    other.close()
    return received


async def test_start_sends_start() -> None:
    assert [type(m) for m in await _start_over(go_ahead=False)] == [Start]


async def test_go_ahead_start_only_waits_for_the_exec() -> None:
    """An init created with go_ahead execs by itself: start sends nothing (the init
    would read no Start before its exec) and returns once the channel closes."""
    assert await _start_over(go_ahead=True) == []


def _failing_zygote(sock: socket.socket, delay: float) -> None:
    """Answers each request after ``delay`` with a failure that names no init."""
    while True:
        data = sock.recv(1 << 16)
        if not data:
            return
        time.sleep(delay)
        with contextlib.suppress(OSError):
            sock.send(json.dumps({"ok": False, "pid": None, "error": {
                "type": "HostError", "errno": 0, "message": "no init"}}).encode())


async def test_settled_waits_for_every_request_in_flight() -> None:
    """The stray reaper waits on settled(): it must not return while an init may have
    been cloned whose pid its caller does not know yet, and must once none is."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    thread = threading.Thread(target=_failing_zygote, args=(theirs, 0.1), daemon=True)
    thread.start()
    spawner = Spawner(ours, zygote_pid=0)
    failures = []

    async def ask() -> None:
        try:
            await spawner._ask(b"{}", ())
        except HostError as exc:
            failures.append(str(exc))

    try:
        with trio.fail_after(5):
            await spawner.settled()  # nothing asked yet
            async with trio.open_nursery() as nursery:
                nursery.start_soon(ask)
                nursery.start_soon(ask)
                await trio.sleep(0.02)
                with trio.move_on_after(0.05) as waited:
                    await spawner.settled()
                assert waited.cancelled_caught, "settled() returned with requests in flight"
                await spawner.settled()
                assert failures == ["no init", "no init"]  # both answered first
            await spawner.settled()
    finally:
        spawner.close()
        thread.join(5)
        theirs.close()
