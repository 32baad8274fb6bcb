"""The supervisor's side of container cgroups: the driver, set up lazily; one cgroup
per container run; the per-run watcher task that turns cgroup notifications into
events; stats; recovery of what a crashed supervisor left.

The watcher (one task in each run's nursery) waits on
- cgroup v2: inotify on ``memory.events`` and ``pids.events`` (the kernel's
  file-modified notification; one inotify instance for the supervisor), and a PSI
  trigger on ``memory.pressure`` where the kernel has PSI (an epoll fd with EPOLLPRI,
  which trio can wait on as readable);
- cgroup v1: an eventfd registered on ``memory.oom_control`` through
  ``cgroup.event_control``, and inotify on ``pids.events``.
Each wake-up rereads the counters and emits ``oom`` (counters: low, high, max, oom,
oom_kill), ``pids.max`` (the count of refused forks) and ``memory.pressure`` events.
"""

from __future__ import annotations

import contextlib
import os
import select
import struct
import threading
from collections.abc import Callable
from typing import Any

import trio

from runtime import cgroups as cg
from runtime import libc
from runtime.cgroups.limits import Resources
from runtime.errors import ContainerError
from runtime.log import get_logger
from runtime.paths import StatePaths

log = get_logger("myctr.cgroups")
# A PSI trigger: 100 ms of memory stall within a 2 s window (2 s is the smallest
# window an unprivileged user may ask for).
PSI_TRIGGER = b"some 100000 2000000"

Emit = Callable[..., None]


class CgroupManager:
    def __init__(self, paths: StatePaths) -> None:
        self.run_dir = paths.run
        self.tag = cg.state_tag(paths.base or paths.data)
        self.driver: Any = None
        self.why: str | None = None
        self.setup_lock = threading.Lock()
        try:
            self.driver = cg.detect(self.tag)
            self.why = self.driver.problem()
        except (cg.Unavailable, OSError) as exc:
            self.why = str(exc)

    @property
    def version(self) -> int | None:
        return self.driver.version if self.driver is not None else None

    def ready(self, our_pids: list[int]) -> bool:
        """Set the driver up (once; from the event loop or a worker thread); False when
        this process cannot have cgroups."""
        if self.driver is None or self.why is not None:
            return False
        with self.setup_lock:
            if not self.driver.ready:
                try:
                    self.driver.setup(our_pids)
                    cg.save_state(self.run_dir, self.driver.state())
                except (cg.Unavailable, OSError) as exc:
                    self.why = f"cgroup setup failed: {exc}"
                    return False
        return True

    def usable(self) -> set[str]:
        if self.driver is None or not self.driver.ready:
            return set()
        return set(self.driver.usable())

    def check(self, resources: Resources, our_pids: list[int]) -> None:
        """SpecError when a limit asks for a controller we cannot use."""
        if not resources.any():
            return
        if not self.ready(our_pids):
            cg.require(resources, set(), self.why)
        cg.require(resources, self.usable(), None)

    def handle(self, cid: str) -> Any:
        return self.driver.cgroup(cid)

    def info(self) -> dict[str, Any]:
        if self.driver is None:
            return {"version": None, "usable": False, "problem": self.why}
        doc = self.driver.describe()
        doc["usable"] = self.why is None
        doc["problem"] = self.why or doc.get("problem")
        return doc

    def recover(self) -> None:
        """Remove the container cgroups a crashed supervisor left (recorded bases)."""
        doc = cg.load_state(self.run_dir)
        if not doc:
            return
        from runtime.cgroups import v1, v2

        try:
            (v2 if doc.get("version") == 2 else v1).recover(doc)
        except (OSError, ContainerError) as exc:
            log.warning("stale cgroups could not all be removed", error=str(exc))
        self._forget_if_gone(doc)

    def shutdown(self) -> None:
        if self.driver is not None and self.driver.ready:
            doc = cg.load_state(self.run_dir)
            self.driver.teardown()
            self._forget_if_gone(doc)

    def _forget_if_gone(self, doc: dict[str, Any] | None) -> None:
        """Drop the record of our bases once none is left; a base still there (a
        container cgroup below it could not be removed: busy, frozen) stays recorded,
        for the next supervisor's recover() to remove."""
        left = cg.clear_state_if_gone(self.run_dir, doc)
        if left:
            log.warning("cgroups left behind: the next supervisor removes them", bases=left)


class Inotify:
    """One inotify instance for the whole supervisor. Closing an inotify fd waits for
    a kernel grace period (5-15 ms measured here), which a per-run instance would pay
    on the event loop at every container exit; one shared instance never closes.
    Watches vanish by themselves when their cgroup is removed."""

    def __init__(self) -> None:
        self.fd = libc.inotify_init1()
        self.callbacks: dict[int, Callable[[], None]] = {}

    def add(self, path: str, callback: Callable[[], None]) -> int | None:
        try:
            wd = libc.inotify_add_watch(self.fd, path)
        except OSError:
            return None
        self.callbacks[wd] = callback
        return wd

    def remove(self, wd: int) -> None:
        self.callbacks.pop(wd, None)
        with contextlib.suppress(OSError):  # gone with its cgroup already
            libc.inotify_rm_watch(self.fd, wd)

    async def run(self) -> None:
        """Dispatch events to their watch's callback, forever."""
        header = struct.Struct("iIII")
        while True:
            await trio.lowlevel.wait_readable(self.fd)
            try:
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                continue
            offset = 0
            while offset + header.size <= len(data):
                wd, _mask, _cookie, length = header.unpack_from(data, offset)
                offset += header.size + length
                callback = self.callbacks.get(wd)
                if callback is not None:
                    callback()


class Watcher:
    """The cgroup watcher of one run: :meth:`run` waits for notifications until
    cancelled; :meth:`check` compares the counters with the last reading and emits
    what changed (the engine calls it once more after the init exited, so nothing
    that happened just before the exit goes unreported)."""

    def __init__(self, handle: Any, emit: Emit, inotify: Inotify,
                 close_later: Callable[[list[int]], None]) -> None:
        self.handle = handle
        self.version: int = handle.version
        self.emit = emit
        self.inotify = inotify
        self.close_later = close_later
        # The run's cgroup is new: every count since it was made is this run's.
        self.memory: dict[str, int] = {}
        self.pids: dict[str, int] = {}

    @property
    def oom_killed(self) -> bool:
        """Did the OOM killer kill in this run's cgroup (as of the last check)?"""
        return self.memory.get("oom_kill", 0) > 0

    def check(self) -> bool:
        """Emit what changed since the last reading; True when an oom was emitted."""
        now = self.handle.memory_events()
        oom = now.get("oom_kill", 0) > self.memory.get("oom_kill", 0) or now.get(
            "oom", 0) > self.memory.get("oom", 0)
        if oom:
            self._emit_oom(now)
        self.memory = now
        pids = self.handle.pids_events()
        if pids.get("max", 0) > self.pids.get("max", 0):
            self.emit("pids.max", max=pids.get("max", 0))
        self.pids = pids
        return oom

    async def run(self) -> None:
        wake_send, wake_receive = trio.open_memory_channel[None](1)

        def wake() -> None:
            with contextlib.suppress(trio.WouldBlock):
                wake_send.send_nowait(None)

        wds = [wd for wd in (self.inotify.add(p, wake) for p in self.handle.event_files)
               if wd is not None]
        owned: list[int] = []
        try:
            async with trio.open_nursery() as nursery:
                if self.version == 1:
                    efd = _v1_oom_eventfd(self.handle)
                    if efd is not None:
                        owned.append(efd)
                        nursery.start_soon(self._v1_oom, efd)
                else:
                    psi = _psi_trigger(os.path.join(self.handle.path, "memory.pressure"))
                    if psi is not None:
                        owned.append(psi)
                        nursery.start_soon(self._pressure, psi)
                async for _ in wake_receive:
                    self.check()
        finally:
            for wd in wds:
                self.inotify.remove(wd)
            if owned:  # a PSI trigger's close waits for an RCU grace period
                self.close_later(owned)

    async def _v1_oom(self, efd: int) -> None:
        """v1 signals the eventfd when the cgroup goes out of memory, a moment before
        the kill is counted in memory.oom_control: wait (up to 100 ms) for the count,
        and report the OOM even if no kill follows (oom_kill_disable)."""
        while True:
            await trio.lowlevel.wait_readable(efd)
            with contextlib.suppress(BlockingIOError):
                os.read(efd, 8)
            kills = self.memory.get("oom_kill", 0)
            with trio.move_on_after(0.1):
                while self.handle.memory_events().get("oom_kill", 0) <= kills:
                    await trio.sleep(0.0005)
            if not self.check():
                self._emit_oom(self.memory)

    def _emit_oom(self, counters: dict[str, int]) -> None:
        self.emit("oom", **{k: counters.get(k, 0) for k in ("low", "high", "max", "oom",
                                                           "oom_kill")})

    async def _pressure(self, fd: int) -> None:
        """A PSI trigger signals POLLPRI, which trio's epoll does not watch: wait on an
        epoll instance of our own (readable when the trigger fires)."""
        epoll = select.epoll()
        try:
            epoll.register(fd, select.EPOLLPRI)
            while True:
                await trio.lowlevel.wait_readable(epoll.fileno())
                if epoll.poll(0):
                    self.emit("memory.pressure", trigger=PSI_TRIGGER.decode(),
                              pressure=_read_pressure(self.handle.path))
                    await trio.sleep(1.0)  # a trigger fires at most once per window anyway
        finally:
            epoll.close()


def _v1_oom_eventfd(handle: Any) -> int | None:
    control, event_control = handle.oom_control_path(), handle.event_control_path()
    if control is None or event_control is None:
        return None
    try:
        ofd = os.open(control, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    efd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
    try:
        cg.write(event_control, f"{efd} {ofd}")
    except OSError:
        os.close(efd)
        return None
    finally:
        os.close(ofd)  # the registration holds its own reference
    return efd


def _psi_trigger(path: str) -> int | None:
    try:
        fd = os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        os.write(fd, PSI_TRIGGER + b"\0")
    except OSError:  # no PSI in this kernel (psi=0) or not allowed
        os.close(fd)
        return None
    return fd


def _read_pressure(path: str) -> dict[str, float]:
    out: dict[str, float] = {}
    with contextlib.suppress(OSError), open(os.path.join(path, "memory.pressure")) as f:
        for line in f:
            kind, *fields = line.split()
            for field in fields:
                key, _, value = field.partition("=")
                if key == "avg10":
                    out[kind] = float(value)
    return out
