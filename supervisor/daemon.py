"""The supervisor process: one per state root, a child subreaper, trio inside.

Order matters: take the state root's lock, fork the zygote (single-threaded, before
trio is even imported), become a subreaper, then run trio: recover what a crashed
predecessor left, serve the control socket, and on SIGTERM/SIGINT stop every container
gracefully (stop signal, grace period, SIGKILL) before exiting 0.
"""

from __future__ import annotations

import fcntl
import os
import sys
from typing import Any

from runtime import libc, nativeinit
from runtime.errors import Conflict
from runtime.log import get_logger
from runtime.paths import StatePaths
from supervisor.zygote import start_zygote

log = get_logger("myctr.supervisor")


def lock_state_root(paths: StatePaths, wait: float = 10.0) -> int:
    """An exclusive lock on the state root, held for the supervisor's life (and its
    zygote's: after a crash, the zygote keeps it while it removes what was left, so
    the next supervisor waits for that, up to ``wait`` seconds)."""
    import time

    fd = os.open(os.path.join(paths.run, "supervisor.lock"),
                 os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() > deadline:
                os.close(fd)
                raise Conflict(f"a supervisor already runs for {paths.run}") from None
            time.sleep(0.02)


def daemonize(log_path: str) -> int | None:
    """Detach into the background. In the caller, return the daemon's pid once it is
    ready (its socket answers); in the daemon, return None."""
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid > 0:
        os.close(ready_w)
        ok = os.read(ready_r, 1)
        os.close(ready_r)
        return pid if ok == b"1" else -1
    os.close(ready_r)
    os.setsid()
    if os.fork() > 0:
        os._exit(0)
    out = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
    null = os.open("/dev/null", os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(out, 1)
    os.dup2(out, 2)
    os.close(null)
    os.close(out)
    os.environ["MYCTR_READY_FD"] = str(ready_w)
    os.set_inheritable(ready_w, False)
    return None


def signal_ready() -> None:
    fd = os.environ.pop("MYCTR_READY_FD", None)
    if fd is not None:
        os.write(int(fd), b"1")
        os.close(int(fd))


def run_supervisor(paths: StatePaths, idle_exit: float | None, detach: bool) -> int:
    paths.ensure()
    if detach:
        pid = daemonize(os.path.join(paths.log, "supervisor.log"))
        if pid is not None:
            return 0 if pid > 0 else 1
    lock_fd = lock_state_root(paths)
    if not nativeinit.available():  # loaded before the fork: the zygote has it too
        reason = nativeinit.unavailable_reason()
        (log.info if reason == "MYCTR_INIT=python" else log.warning)(
            "container inits run in Python (slower starts)", reason=reason)
    zygote_pid, zygote_sock = start_zygote(paths.run)
    packer = start_zygote(paths.run, cleanup=False, others=(zygote_sock,))
    libc.prctl(libc.PR_SET_CHILD_SUBREAPER, 1)
    import trio

    try:
        helper_died = trio.run(_main, paths, zygote_sock, zygote_pid, idle_exit, packer)
    finally:
        os.close(lock_fd)
    return 1 if helper_died else 0  # a service manager restarting on failure takes over


async def _main(paths: StatePaths, zygote_sock: Any, zygote_pid: int,
                idle_exit: float | None, packer: tuple[int, Any]) -> bool:
    """Serve until a stop; True when the stop came because a helper died."""
    import signal

    import trio

    from supervisor.engine import Supervisor
    from supervisor.events import EventLog
    from supervisor.server import ControlServer, default_info, socket_path
    from supervisor.spawner import Spawner
    from supervisor.store import Store

    store = Store(os.path.join(paths.data, "myctr.db"))
    events = EventLog()
    stop = trio.Event()
    died: list[str] = []
    async with trio.open_nursery() as nursery:
        sup = Supervisor(paths, store, Spawner(zygote_sock, zygote_pid), events, nursery,
                         packer=Spawner(packer[1], packer[0]))
        driver = f"v{sup.cgroups.version}" if sup.cgroups.version else "none"
        server = ControlServer(sup, events, default_info(paths, driver), stop.set)
        nursery.start_soon(sup.reap_strays)
        await sup.recover()
        await nursery.start(server.serve, socket_path(paths.run))
        signal_ready()
        log.info("supervisor ready", pid=os.getpid(), socket=socket_path(paths.run))
        nursery.start_soon(_on_signals, stop, trio, signal)
        for name, pid in (("zygote", zygote_pid), ("packer", packer[0])):
            nursery.start_soon(_on_helper_exit, name, pid, stop, died, trio)
        if idle_exit is not None:
            nursery.start_soon(_exit_when_idle, sup, server, idle_exit, stop)
        await stop.wait()
        with trio.CancelScope(shield=True):
            log.info("shutting down: stop signal, grace period, then SIGKILL",
                     active=sup.active_count())
            await sup.shutdown()
        nursery.cancel_scope.cancel()
    store.close()
    return bool(died)


async def _on_signals(stop: Any, trio: Any, signal: Any) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async for _ in signals:
            stop.set()
            return


async def _on_helper_exit(name: str, pid: int, stop: Any, died: list[str],
                          trio: Any) -> None:
    """A helper lives as long as the supervisor (its socket's EOF ends it): one that
    exits before was killed. Without the zygote no container starts again (nor does a
    restart policy act), and it cannot be forked anew from this threaded process: stop
    as on SIGTERM, so that a new supervisor (with new helpers) can take over."""
    pidfd = os.pidfd_open(pid)
    try:
        await trio.lowlevel.wait_readable(pidfd)
    finally:
        os.close(pidfd)
    _, status = os.waitpid(pid, 0)
    log.error(f"the {name} exited: shutting down", pid=pid,
              exit_code=os.waitstatus_to_exitcode(status))
    died.append(name)
    stop.set()


async def _exit_when_idle(sup: Any, server: Any, idle_exit: float, stop: Any) -> None:
    """An auto-started supervisor leaves after ``idle_exit`` s with nothing to do."""
    import trio

    idle_since = trio.current_time()
    while True:
        await trio.sleep(min(1.0, idle_exit / 4) or 0.1)
        if sup.active_count() or server.connections:
            idle_since = trio.current_time()
        elif trio.current_time() - idle_since >= idle_exit:
            log.info("idle: exiting", idle_seconds=idle_exit)
            stop.set()
            return


def main_supervise(paths: StatePaths, idle_exit: float | None, detach: bool) -> int:
    try:
        return run_supervisor(paths, idle_exit, detach)
    except KeyboardInterrupt:
        return 0
    finally:
        sys.stdout.flush()
