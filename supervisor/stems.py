"""A stem kept ready in a spare cgroup, so that a container's first move into its v1
cgroups is not on its start's critical path.

Moving a task into a cgroup takes the kernel's cgroup threadgroup lock for writing,
and the first writer after a quiet spell waits for an RCU grace period (10-15 ms
measured on this project's hybrid host; crun pays it on every cold start). cgroup v2
needs no move: the init is cloned straight into its cgroup (CLONE_INTO_CGROUP). On
v1, the supervisor keeps one stem (see :class:`supervisor.zygote.Stem`) waiting in a
spare cgroup, moved there in the background; a container start renames the spare to
the container's cgroup, applies the limits and has the stem clone the init, born in
the cgroup. The next stem is made after that start, off its path. Without a ready
stem (a burst of starts, a pids limit, which the stem would count against) a start
moves its init by pid, as before.

A spare is a cgroup like a container's, below the same bases: a crashed supervisor's
spares are removed with the rest (zygote clean-up, recovery); a stem dies with the
supervisor (PDEATHSIG).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
from typing import Any, NamedTuple

import trio

from runtime import libc
from runtime.cgroups.limits import Resources
from runtime.create import join_cgroups
from runtime.errors import ContainerError
from runtime.log import get_logger
from supervisor.cgroups import CgroupManager
from supervisor.spawner import Spawner
from supervisor.zygote import close_quietly

log = get_logger("myctr.stems")
REFILL_DELAY = 0.05  # seconds


class ReadyStem(NamedTuple):
    pidfd: int
    sock: socket.socket  # where the stem takes its one create request
    group: Any  # the spare's cgroup handle


class StemSlot:
    def __init__(self, cgroups: CgroupManager, spawner: Spawner) -> None:
        self.cgroups = cgroups
        self.spawner = spawner
        self.ready: ReadyStem | None = None
        self.busy = False  # a stem is being made
        self.last_start = 0.0
        self.closed = False

    def wanted(self, resources: Resources) -> bool:
        """Whether starts on this host use stems: cgroup v1 (v2 clones into the cgroup)
        and no pids limit (the stem is one more task of the cgroup until it exits)."""
        return (self.cgroups.version == 1 and self.cgroups.why is None
                and resources.pids_limit in (None, -1))

    def take(self, cid: str) -> tuple[Any, socket.socket] | None:
        """The ready stem's spare cgroup, renamed to ``cid``'s, and the stem's socket
        (None: no stem ready). The caller applies the limits and sends the create
        request on the socket (:meth:`Spawner.create`)."""
        ready, self.ready = self.ready, None
        if ready is None:
            return None
        close_quietly(ready.pidfd)
        group = self.cgroups.handle(cid)
        try:
            rename(ready.group, group)
        except OSError as exc:
            log.warning("spare cgroup not renamed: moving by pid", error=str(exc))
            ready.sock.close()
            with contextlib.suppress(OSError, ContainerError):
                ready.group.remove()
            return None
        return group, ready.sock

    def refill(self, nursery: trio.Nursery) -> None:
        """Make the next stem in the background, unless one is ready or on its way.

        Called at each start. Not at once: the move's grace-period wait holds the
        kernel's cgroup mutex, and every mkdir and rmdir of a cgroup waits behind it,
        such as the teardown of the container that just started if it is a short
        one, or the next starts of a burst. Once starts have been quiet for
        REFILL_DELAY, a command like ``true`` has exited and its cgroup is gone."""
        self.last_start = trio.current_time()
        if not (self.ready or self.busy or self.closed):
            self.busy = True
            nursery.start_soon(self._make)

    async def _make(self) -> None:
        group = self.cgroups.handle(f"spare-{os.urandom(8).hex()}")
        pidfd, sock = -1, None
        try:
            while (quiet := self.last_start + REFILL_DELAY - trio.current_time()) > 0:
                await trio.sleep(quiet)
            if self.closed:
                return
            await trio.to_thread.run_sync(group.create, Resources())
            pid, pidfd, sock = await self.spawner.stem()
            # the grace-period wait, in a worker thread while nothing waits on it
            await trio.to_thread.run_sync(join_cgroups, pid, group.procs_files)
        except (OSError, ContainerError) as exc:
            log.warning("no stem: starts move their init by pid", error=str(exc))
            await self._discard(pidfd, sock, group)
            return
        finally:
            self.busy = False
        if self.closed:
            await self._discard(pidfd, sock, group)
        else:
            self.ready = ReadyStem(pidfd, sock, group)

    async def close(self) -> None:
        """Kill the ready stem and remove its spare (at shutdown)."""
        self.closed = True
        ready, self.ready = self.ready, None
        if ready is not None:
            await self._discard(ready.pidfd, ready.sock, group=ready.group)

    @staticmethod
    async def _discard(pidfd: int, sock: socket.socket | None, group: Any) -> None:
        if sock is not None:
            sock.close()
        if pidfd >= 0:
            with contextlib.suppress(ProcessLookupError):
                libc.pidfd_send_signal(pidfd, signal.SIGKILL)
            close_quietly(pidfd)
        with contextlib.suppress(OSError, ContainerError):
            await trio.to_thread.run_sync(group.remove)


def rename(spare: Any, group: Any) -> None:
    """Rename every directory of the spare cgroup to the container's (v1 allows a
    rename within a hierarchy)."""
    done: list[tuple[str, str]] = []
    try:
        for controller, source in spare.by_controller.items():
            if source not in dict(done):  # cpu and cpuacct may share a directory
                os.rename(source, group.by_controller[controller])
                done.append((source, group.by_controller[controller]))
    except OSError:
        for source, target in done:
            with contextlib.suppress(OSError):
                os.rename(target, source)
        raise
