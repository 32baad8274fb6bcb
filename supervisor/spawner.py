"""The supervisor's side of the zygote: ask it for an init, then start the init.

``Spawner.create`` sends a spec to the zygote, which clones the init (a child of ours,
thanks to CLONE_PARENT), places it (cgroups, id maps) and hands it over; the init's
Ready is awaited here, so the zygote clones the next init while this one builds its
root. ``Spawner.start`` lets it exec. All of it awaits without blocking trio.
"""

from __future__ import annotations

import contextlib
import errno as errno_codes
import json
import os
import signal
import socket
from collections.abc import Callable
from typing import Any

import trio

from runtime import libc
from runtime.channel import Channel, ChannelClosed, ExecFailed, PtyMaster, SetupFailed, Start
from runtime.create import setup_message
from runtime.errors import ExecFailed as ExecFailedError
from runtime.errors import HostError
from runtime.errors import SetupFailed as SetupFailedError
from runtime.idmap import IdMapPlan
from runtime.init import InitConfig
from runtime.spec import ContainerSpec
from supervisor import fdpass, zygote
from supervisor.zygote import CreatedInit, close_quietly


class Spawner:
    def __init__(self, sock: socket.socket, zygote_pid: int) -> None:
        sock.setblocking(False)
        self._sock = trio.socket.from_stdlib_socket(sock)
        self._lock = trio.Lock()
        self.zygote_pid = zygote_pid
        # Inits cloned whose pid the caller may not know yet (see settled()).
        self._in_flight = 0
        self._settled = trio.Event()
        self._settled.set()

    async def settled(self) -> None:
        """Return once every init asked for is known to its caller (``on_pid`` told
        it, or its ask returned: that is before its setup ends). An init goes on after
        Placed, before the zygote even answers: a fast command can exit and be a zombie
        of ours before its pid reaches us. The stray reaper waits here, so that it
        never takes such an exit status from the container's own waiter."""
        while self._in_flight:
            await self._settled.wait()

    async def create(self, spec: ContainerSpec, config: InitConfig, plan: IdMapPlan | None,
                     stdio: tuple[int, int, int],
                     cgroup_procs: tuple[str, ...] = (),
                     spec_doc: dict[str, Any] | None = None,
                     on_pid: Callable[[int], None] | None = None) -> CreatedInit:
        """An init in its namespaces (and cgroups), before exec. Raises the init's error
        (and reaps a half-made init) when setup fails. ``spec_doc``: the spec's OCI
        document when the caller has it already. ``on_pid`` learns the init's pid as
        soon as the zygote tells it: with ``config.go_ahead`` the command may have run
        and exited before this returns."""
        init = await self._ask(
            zygote.encode_request(spec, config, plan, cgroup_procs=cgroup_procs,
                                  spec_doc=spec_doc), stdio, on_pid)
        return init._replace(go_ahead=config.go_ahead)

    async def create_exec(self, spec: ContainerSpec, config: InitConfig,
                          stdio: tuple[int, int, int], init_pidfd: int,
                          cgroup_procs: tuple[str, ...] = (),
                          on_pid: Callable[[int], None] | None = None) -> CreatedInit:
        """A process joined to the container of ``init_pidfd``, before exec; its pid and
        pidfd are the joiner's, which exits with the process's status. ``on_pid`` as
        for :meth:`create`."""
        return await self._ask(
            zygote.encode_request(spec, config, None, op="exec", cgroup_procs=cgroup_procs),
            (*stdio, init_pidfd), on_pid)

    async def remove_trees(self, paths: list[str], plan: IdMapPlan | None) -> None:
        """Remove directories, as root of a user namespace with ``plan`` (rootless:
        files of subordinate ids), or as we are (None)."""
        await self._request({"op": "rmtree", "paths": paths, "plan": zygote.encode_plan(plan)})

    async def unpack_layer(self, tar: str, dest: str, plan: IdMapPlan) -> str:
        """Unpack an image layer in a user namespace with ``plan`` (rootless); its
        diff_id."""
        reply = await self._request({"op": "unpack", "tar": tar, "dest": dest,
                                     "plan": zygote.encode_plan(plan)})
        return str(reply["diff_id"])

    async def pack_layer(self, job: dict[str, Any], plan: IdMapPlan | None) -> str:
        """Write a layer tarball (``job``: see zygote.pack_layer) with private mounts,
        in a user namespace with ``plan`` when rootless; its diff_id."""
        reply = await self._request({"op": "pack", "job": job,
                                     "plan": zygote.encode_plan(plan)})
        return str(reply["diff_id"])

    async def _request(self, doc: dict[str, Any]) -> dict[str, Any]:
        """One request without descriptors; its reply, or the zygote's error raised."""
        async with self._lock:
            with trio.CancelScope(shield=True):  # see _ask
                await self._sock.send(json.dumps(doc).encode())
                data = await self._sock.recv(zygote.MAX_PACKET)
        reply: dict[str, Any] = json.loads(data) if data else {"ok": False, "error": {
            "type": "HostError", "errno": 0, "message": "the zygote exited"}}
        if not reply["ok"]:
            raise zygote.decode_error(reply["error"])
        return reply

    async def _ask(self, payload: bytes, fds: tuple[int, ...],
                   on_pid: Callable[[int], None] | None = None) -> CreatedInit:
        self._in_flight += 1
        if self._settled.is_set():
            self._settled = trio.Event()
        known = False

        def settle(pid: int) -> None:
            nonlocal known
            if on_pid is not None:
                on_pid(pid)
            known = True
            self._settle()

        try:
            return await self._exchange(payload, fds, settle)
        finally:
            if not known:
                self._settle()

    def _settle(self) -> None:
        """One ask fewer in flight: its init's pid is known to its caller (or there
        is none)."""
        self._in_flight -= 1
        if not self._in_flight:
            self._settled.set()

    async def _exchange(self, payload: bytes, fds: tuple[int, ...],
                        on_pid: Callable[[int], None] | None) -> CreatedInit:
        async with self._lock:
            # One request, one reply: a cancellation between the two would leave this
            # reply queued for the next request (a stop landing mid-restart did that).
            # The zygote answers within milliseconds, so the exchange is shielded.
            with trio.CancelScope(shield=True):
                try:
                    await self._sock.sendmsg([payload], fdpass.rights(fds))
                    data, ancdata, _flags, _addr = await self._sock.recvmsg(
                        zygote.MAX_PACKET, fdpass.ANCILLARY_SPACE)
                except (BrokenPipeError, ConnectionResetError):
                    data = b""
        if not data:
            raise HostError("the zygote exited")
        reply = json.loads(data)
        received = fdpass.received(ancdata)
        if not reply["ok"]:
            _reap(reply.get("pid"))
            raise zygote.decode_error(reply["error"])
        if on_pid is not None:
            on_pid(reply["pid"])
        # placed, not ready: the zygote serves the next request meanwhile
        return await _until_ready(CreatedInit(pid=reply["pid"], pidfd=received[0],
                                              channel_fd=received[1], pty_master=None))

    async def start(self, init: CreatedInit) -> None:
        """Let the init exec (unless it was created to go on by itself); return once
        it did. Raise ExecFailed, or SetupFailed for a failure on the way."""
        sock = socket.socket(fileno=init.channel_fd)
        channel = Channel(sock)
        try:
            if not init.go_ahead:
                channel.send(Start())
            await trio.lowlevel.wait_readable(sock)
            reply = channel.receive()
        except (ChannelClosed, ConnectionResetError):
            return  # closed on exec: the command runs
        finally:
            channel.close()
        if isinstance(reply, ExecFailed):
            raise ExecFailedError(reply.errno, reply.message)
        if isinstance(reply, SetupFailed):  # say, an rlimit the host refuses
            raise SetupFailedError(reply.errno, reply.message)
        raise SetupFailedError(0, f"unexpected reply {reply!r}")

    def close(self) -> None:
        self._sock.close()


async def _until_ready(init: CreatedInit) -> CreatedInit:
    """Wait for the placed init's Ready on its channel (the zygote went on to other
    work); with its pty master when it has a terminal. On a failure, or a
    cancellation, the init is killed and reaped (it is our child) and its fds closed."""
    sock = socket.socket(fileno=init.channel_fd)
    pty_master = None
    try:
        channel = Channel(sock)
        while True:
            await trio.lowlevel.wait_readable(sock)
            message = setup_message(channel)
            if isinstance(message, PtyMaster):
                pty_master = message.fd
            else:
                return init._replace(pty_master=pty_master)
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            libc.pidfd_send_signal(init.pidfd, signal.SIGKILL)
        close_quietly(init.pidfd, pty_master)
        sock.close()
        with trio.CancelScope(shield=True):  # in a thread: a frozen one dies when thawed
            await trio.to_thread.run_sync(_reap, init.pid)
        raise
    finally:
        if sock.fileno() >= 0:
            sock.detach()  # the fd stays the init's channel (start() takes it)


def _reap(pid: int | None) -> None:
    """Reap an init the zygote killed after a failed setup (it is our child)."""
    if pid:
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass
        except OSError as exc:
            if exc.errno != errno_codes.ECHILD:
                raise
