"""``myctr run`` in the foreground: make the container, attach the terminal, forward
signals, wait, clean up. Single-threaded on purpose: the container init is cloned
from this process.

Cleanup runs whatever happened (a failed setup, Ctrl-C, an exec error): the init is
killed and reaped, its directory removed (``--rm``) or marked exited. If this process
is killed with SIGKILL, the init dies with it (PDEATHSIG) and the next ``myctr``
command sweeps the directory (:func:`runtime.containerdir.sweep_stale`).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pwd
import select
import signal
import sys
import termios
import time
import tty
from collections.abc import Callable, Iterator
from typing import NamedTuple

from runtime import containerdir, idmap, libc
from runtime.containerdir import ContainerDir, ContainerState
from runtime.create import InitProcess, create
from runtime.defaults import RunRequest, build_spec
from runtime.errors import HostError, SpecError
from runtime.idmap import IdMapPlan
from runtime.init import InitConfig
from runtime.log import get_logger
from runtime.paths import StatePaths
from runtime.spec import ContainerSpec, Seccomp

log = get_logger("myctr.run")

FORWARDED_SIGNALS = (
    signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT,
    signal.SIGUSR1, signal.SIGUSR2, signal.SIGCONT, signal.SIGALRM,
)


class ForegroundRun(NamedTuple):
    request: RunRequest
    name: str | None
    auto_remove: bool
    interactive: bool
    uid_mappings: tuple[idmap.IdMapping, ...] = ()
    gid_mappings: tuple[idmap.IdMapping, ...] = ()


def id_map_plan(run: ForegroundRun) -> IdMapPlan | None:
    """Rootless: the user's subordinate ranges. Root: none (the host's ids), unless
    ``--uidmap``/``--gidmap`` ask for a user namespace."""
    if os.geteuid() != 0:
        plan = idmap.plan_for_current_user(pwd.getpwuid(os.getuid()).pw_name)
        if plan.warning:
            log.warning("single-id user namespace", reason=plan.warning)
        return plan
    if run.uid_mappings or run.gid_mappings:
        return IdMapPlan(run.uid_mappings or run.gid_mappings,
                         run.gid_mappings or run.uid_mappings)
    return None


def rootless_remover(plan: IdMapPlan | None) -> Callable[[str], None] | None:
    """Rootless, the upper dir holds files of subordinate ids: remove it as root of a
    user namespace with the container's maps."""
    if plan is None or os.geteuid() == 0:
        return None

    def remove(path: str) -> None:
        idmap.run_in_user_namespace(plan, lambda: containerdir.rmtree(path), f"remove {path}")

    return remove


def run_foreground(paths: StatePaths, run: ForegroundRun) -> int:
    """Run the container to its end; return its exit status (128+N if killed by N)."""
    request = run.request
    if not os.path.isdir(request.rootfs):
        raise SpecError(f"rootfs {request.rootfs}: no such directory")
    paths.ensure()
    plan = id_map_plan(run)
    remover = rootless_remover(plan)
    containerdir.sweep_stale(paths, lambda cdir: cdir.remove(remover))
    cid = containerdir.new_id()
    name = run.name or f"myctr-{cid[:12]}"
    if not request.hostname:
        run = run._replace(request=request._replace(hostname=cid[:12]))
    containerdir.claim_name(paths, name, cid)
    cdir = ContainerDir(paths, cid)
    state = ContainerState(
        id=cid, name=name, status="created", owner_pid=os.getpid(),
        owner_start=containerdir.process_start_time(os.getpid()),
        auto_remove=run.auto_remove, created=time.time(),
        rootless=os.geteuid() != 0, user_namespace=plan is not None,
    )
    exit_code: int | None = None
    try:
        cdir.create(state)
        if plan is not None and os.geteuid() == 0:
            cdir.hand_over(_host_id(plan.uid_mappings), _host_id(plan.gid_mappings))
        exit_code = _create_and_wait(cdir, state, run, plan)
        return exit_code
    finally:
        _finish(cdir, state, run, remover, exit_code)


def _host_id(mappings: tuple[idmap.IdMapping, ...]) -> int:
    """The host id that container id 0 maps to."""
    for m in mappings:
        if m.container_id == 0:
            return m.host_id
    raise SpecError("the id map must map container id 0 (root)")


def _finish(cdir: ContainerDir, state: ContainerState, run: ForegroundRun,
            remover: Callable[[str], None] | None,
            exit_code: int | None) -> None:
    if run.auto_remove:
        cdir.remove(remover)
        containerdir.release_name(cdir.paths, state.name, cdir.id)
    elif os.path.exists(cdir.path):
        cdir.write_state(state._replace(status="exited", exit_code=exit_code, pid=0))


def _create_and_wait(cdir: ContainerDir, state: ContainerState, run: ForegroundRun,
                     plan: IdMapPlan | None) -> int:
    request = run.request
    files = cdir.write_etc_files(request.hostname, host_network=request.network == "host")
    profile = _seccomp_profile(request)
    spec = build_spec(request, plan, files, profile)
    cdir.write_spec(spec.to_oci())
    config = InitConfig(
        lower=(os.path.realpath(request.rootfs),), upper=cdir.upper,
        work=cdir.work, merged=cdir.merged,
        stdin_devnull=not run.interactive,
        seccomp_bpf=_compile_seccomp(profile),
    )
    process = _create(spec, config, plan)
    try:
        cdir.write_state(state._replace(status="running", pid=process.pid))
        log.debug("container created", container_id=cdir.id, pid=process.pid)
        if process.pty_master is not None:
            return _run_with_terminal(process, run.interactive)
        with _forwarding_signals(process):
            process.start()
            return _wait(process)
    finally:
        process.kill_and_reap()


def _create(spec: ContainerSpec, config: InitConfig, plan: IdMapPlan | None) -> InitProcess:
    try:
        return create(spec, config, plan)
    except OSError as exc:
        raise HostError(f"create container: {exc.strerror or exc}") from exc


def _seccomp_profile(request: RunRequest) -> Seccomp | None:
    if not request.seccomp:
        return None
    from runtime import capabilities, seccomp

    return seccomp.default_profile(capabilities.resolve(request.cap_add, request.cap_drop))


def _compile_seccomp(profile: Seccomp | None) -> bytes | None:
    if profile is None:
        return None
    from runtime import seccomp

    try:
        return seccomp.export_bpf(profile)
    except OSError as exc:
        raise HostError(f"seccomp: {exc.strerror or exc}") from exc


def _wait(process: InitProcess) -> int:
    code = process.wait()
    return 128 - code if code < 0 else code


@contextlib.contextmanager
def _forwarding_signals(process: InitProcess) -> Iterator[None]:
    """While the container runs, signals sent to us go to its init."""

    def forward(signum: int, _frame: object) -> None:
        with contextlib.suppress(OSError):
            libc.pidfd_send_signal(process.pidfd, signum)

    previous = {sig: signal.signal(sig, forward) for sig in FORWARDED_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


# --- terminal -------------------------------------------------------------------------


def _run_with_terminal(process: InitProcess, interactive: bool) -> int:
    master = process.pty_master
    assert master is not None
    stdin_tty = interactive and os.isatty(0)
    _copy_window_size(master)
    with _raw_terminal(0 if stdin_tty else None), _forwarding_signals(process):
        signal.signal(signal.SIGWINCH, lambda *_: _copy_window_size(master))
        process.start()
        _pump(master, process.pidfd, interactive)
        return _wait(process)


def _copy_window_size(master: int) -> None:
    for fd in (0, 1, 2):
        if os.isatty(fd):
            with contextlib.suppress(OSError):
                size = fcntl.ioctl(fd, termios.TIOCGWINSZ, b"\0" * 8)
                fcntl.ioctl(master, termios.TIOCSWINSZ, size)
            return


@contextlib.contextmanager
def _raw_terminal(fd: int | None) -> Iterator[None]:
    if fd is None:
        yield
        return
    saved = termios.tcgetattr(fd)
    tty.setraw(fd)
    try:
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def _pump(master: int, pidfd: int, interactive: bool) -> None:
    """Copy stdin to the pty and the pty to stdout until the container is gone."""
    poller = select.poll()
    poller.register(master, select.POLLIN)
    poller.register(pidfd, select.POLLIN)
    if interactive:
        poller.register(0, select.POLLIN)
    out = sys.stdout.fileno()
    while True:
        for fd, _events in poller.poll():
            if fd == master:
                if not _copy(master, out):
                    return
            elif fd == 0:
                if not _copy(0, master):
                    poller.unregister(0)
            elif fd == pidfd:
                while _copy(master, out, nonblocking=True):
                    pass
                return


def _copy(src: int, dst: int, nonblocking: bool = False) -> bool:
    if nonblocking and not select.select([src], [], [], 0)[0]:
        return False
    try:
        data = os.read(src, 65536)
    except OSError:  # EIO: the pty's last slave closed
        return False
    if not data:
        return False
    view = memoryview(data)
    while view:
        view = view[os.write(dst, view):]
    return True



def remove_container(paths: StatePaths, ref: str, force: bool) -> str:
    """``myctr rm``: remove an exited container (``force``: kill a running one first)."""
    from runtime.errors import Conflict

    cdir = containerdir.lookup(paths, ref)
    state = cdir.read_state()
    if state.status == "running" and containerdir.owner_alive(state):
        if not force:
            raise Conflict(f"container {state.name} is running: stop it first or use rm -f")
        with contextlib.suppress(ProcessLookupError):
            os.kill(state.owner_pid, signal.SIGKILL)  # its init dies with it (PDEATHSIG)
    plan = idmap.plan_for_current_user(pwd.getpwuid(os.getuid()).pw_name) \
        if state.rootless else None
    cdir.remove(rootless_remover(plan))
    containerdir.release_name(paths, state.name, cdir.id)
    return state.name
