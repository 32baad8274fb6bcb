"""Create a container's init from a spec (the parent's half of the handshake).

``create`` clones the init straight into its namespaces (clone3, so the parent gets
a pidfd and the init is our direct child), writes the id maps, and waits until the
init has built its root and stands before exec. ``InitProcess.start`` lets it exec.
Any failure kills and reaps the init before the error propagates.
"""

from __future__ import annotations

import contextlib
import errno
import gc
import os
import signal
from collections.abc import Callable, Iterator

from . import libc, nativeinit
from .channel import (
    Channel,
    ChannelClosed,
    ExecFailed,
    Placed,
    PtyMaster,
    Ready,
    SetupFailed,
    Start,
)
from .errors import ExecFailed as ExecFailedError
from .errors import HostError, os_error_message
from .errors import SetupFailed as SetupFailedError
from .idmap import IdMapPlan, write_maps
from .init import InitConfig, run_init, supervisor_pidfd
from .spec import ContainerSpec

NAMESPACE_FLAGS = {
    "user": libc.CLONE_NEWUSER,
    "mount": libc.CLONE_NEWNS,
    "pid": libc.CLONE_NEWPID,
    "uts": libc.CLONE_NEWUTS,
    "ipc": libc.CLONE_NEWIPC,
    "network": libc.CLONE_NEWNET,
    "cgroup": libc.CLONE_NEWCGROUP,
}


def clone_flags(spec: ContainerSpec) -> int:
    flags = 0
    for ns in spec.linux.namespaces:
        if ns.path is None:
            flags |= NAMESPACE_FLAGS[ns.type]
    return flags


class InitProcess:
    """A container init that stands before exec, or (after ``start``) runs."""

    def __init__(self, pid: int, pidfd: int, channel: Channel, ours: bool = True) -> None:
        self.pid = pid
        self.pidfd = pidfd
        self.channel = channel
        self.pty_master: int | None = None
        self.reaped = False
        self.ours = ours  # our child, so ours to reap (not with CLONE_PARENT)

    def wait(self) -> int:
        """Reap the init; its exit code as ``os.waitstatus_to_exitcode`` gives it."""
        _, status = os.waitpid(self.pid, 0)
        self.reaped = True
        return os.waitstatus_to_exitcode(status)

    def start(self) -> None:
        """Let the init exec the user's command; raise if the exec fails."""
        try:
            self.channel.send(Start())
            reply = self.channel.receive()
        except (ChannelClosed, ConnectionResetError):
            return  # the channel closed on exec: the command runs
        finally:
            self.channel.close()
        self.kill_and_reap()
        if isinstance(reply, ExecFailed):
            raise ExecFailedError(reply.errno, reply.message)
        raise SetupFailedError(getattr(reply, "errno", 0), getattr(reply, "message", repr(reply)))

    def kill_and_reap(self) -> None:
        """Kill the init; reap it if it is our child (else its parent reaps it)."""
        if not self.reaped and self.pidfd >= 0:
            with contextlib.suppress(ProcessLookupError):  # it exited already
                libc.pidfd_send_signal(self.pidfd, signal.SIGKILL)
            if self.ours:
                self.wait()
        self.close()

    def close(self) -> None:
        if self.pidfd >= 0:
            os.close(self.pidfd)
            self.pidfd = -1
        if self.pty_master is not None:
            os.close(self.pty_master)
            self.pty_master = None


def create(
    spec: ContainerSpec,
    paths: InitConfig,
    plan: IdMapPlan | None,
    stdio: tuple[int, int, int] | None = None,
    clone_parent: bool = False,
    cgroup_procs: tuple[str, ...] = (),
    wait_ready: bool = True,
) -> InitProcess:
    """Clone the init into its namespaces and run it up to the point before exec.

    ``stdio`` are the init's fds 0, 1, 2 (default: ours). ``clone_parent`` makes the
    init a child of our parent (the zygote creates inits for the supervisor this way);
    on failure such an init is killed and its pid put on the exception as ``init_pid``
    for the parent to reap. ``cgroup_procs`` are the ``cgroup.procs`` files of the
    container's cgroups: the init joins them before it does anything else.
    ``wait_ready`` False returns once the init is placed, before it built its root:
    the caller waits for Ready on the channel (:func:`await_ready`), so the zygote
    can clone the next init meanwhile.
    """
    flags = clone_flags(spec) | (libc.CLONE_PARENT if clone_parent else 0)
    if flags & libc.CLONE_NEWCGROUP:  # unshared by the init once it is in its cgroup
        flags &= ~libc.CLONE_NEWCGROUP
        paths = paths._replace(unshare_cgroupns=True)
    return spawn(flags, stdio, lambda channel: run_init(spec, paths, channel),
                 plan if spec.uses_user_namespace else None, ours=not clone_parent,
                 cgroup_procs=cgroup_procs, wait_ready=wait_ready)


def create_native(compiled: nativeinit.Compiled, plan: IdMapPlan | None,
                  stdio: tuple[int, int, int] | None = None, clone_parent: bool = False,
                  cgroup_procs: tuple[str, ...] = (), wait_ready: bool = True) -> InitProcess:
    """:func:`create` for an init compiled by :func:`runtime.nativeinit.compile_init`:
    no Python runs in the child."""
    flags = compiled.flags | (libc.CLONE_PARENT if clone_parent else 0)
    return spawn(flags, stdio, compiled, plan if flags & libc.CLONE_NEWUSER else None,
                 ours=not clone_parent, cgroup_procs=cgroup_procs, wait_ready=wait_ready)


def spawn(flags: int, stdio: tuple[int, int, int] | None,
          child: Callable[[Channel], None] | nativeinit.Compiled,
          plan: IdMapPlan | None, ours: bool, cgroup_procs: tuple[str, ...] = (),
          wait_ready: bool = True) -> InitProcess:
    """Clone with ``flags``; the child runs ``child`` (never returning; it first waits
    for Placed), or the native init compiled as ``child`` (runtime.nativeinit). It
    is cloned into ``cgroup_procs`` (v2), moves itself there (v1), or the parent moves
    it (v1 with a new user namespace); the parent writes the maps of ``plan``, sends
    Placed and (``wait_ready``) waits for Ready. On failure the child is killed and its
    pid put on the exception as ``init_pid``."""
    parent_end, child_end = Channel.pair()
    tasks = tasks_files(cgroup_procs)  # cgroup v1
    into = None if tasks else _cgroup_fd(cgroup_procs)  # cgroup v2
    if flags & libc.CLONE_NEWUSER:  # the child cannot write the host's cgroup files
        tasks = ()  # (then the parent moves it by pid)
    if isinstance(child, nativeinit.Compiled):  # no Python in the child
        native = child
        plan_bytes = nativeinit.first_steps(parent_end.fileno(), tasks) + native.plan

        def clone(into: int | None) -> tuple[int, int]:
            return nativeinit.spawn(plan_bytes, flags, into, child_end.fileno(),
                                    supervisor_pidfd(), native.shared)
    else:
        def clone(into: int | None) -> tuple[int, int]:
            return libc.clone3(flags, into)
    with stdio_for_child(stdio):
        try:
            pid, pidfd = clone(into)
        except OSError as exc:  # EBADF/EINVAL/EOPNOTSUPP: not a cgroup2 dir we can use
            if into is None or exc.errno not in (errno.EBADF, errno.EINVAL, errno.EOPNOTSUPP):
                raise
            os.close(into)  # not a cgroup2 directory: write cgroup.procs instead
            into = None
            pid, pidfd = clone(None)
        if pid == 0:
            assert callable(child)
            # A collection would touch every tracked object, and after the fork each
            # page it writes is a copy-on-write fault; the child lives milliseconds.
            gc.disable()
            parent_end.close()
            if tasks:
                join_self(tasks, child_end)
            child(child_end)  # never returns
    child_end.close()
    process = InitProcess(pid=pid, pidfd=pidfd, channel=parent_end, ours=ours)
    try:
        if into is not None:
            os.close(into)
        elif not tasks:
            join_cgroups(pid, cgroup_procs)
        place(process, plan)
        if wait_ready:
            await_ready(process)
    except BaseException as exc:
        process.channel.close()
        process.kill_and_reap()
        exc.init_pid = pid  # type: ignore[attr-defined]
        raise
    return process


@contextlib.contextmanager
def stdio_for_child(stdio: tuple[int, int, int] | None) -> Iterator[None]:
    """Put ``stdio`` on fds 0-2 around the clone, then restore ours (single-threaded)."""
    if stdio is None:
        yield
        return
    saved = [os.dup(fd) for fd in (0, 1, 2)]
    try:
        for fd, source in enumerate(stdio):
            os.dup2(source, fd)
        yield
    finally:
        for fd, source in enumerate(saved):
            os.dup2(source, fd)
            os.close(source)


def _cgroup_fd(procs_files: tuple[str, ...]) -> int | None:
    """With one cgroup v2 cgroup, the child is cloned straight into it
    (CLONE_INTO_CGROUP): no migration afterwards, whose write lock costs an RCU grace
    period (~15 ms measured on a v1 host). v1 cgroups are joined by the child itself
    (:func:`join_self`), or by pid when it is in a new user namespace."""
    if len(procs_files) != 1:
        return None
    try:
        return os.open(os.path.dirname(procs_files[0]),
                       os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return None


def tasks_files(procs_files: tuple[str, ...]) -> tuple[str, ...]:
    """The cgroup v1 ``tasks`` files beside ``procs_files`` (none unless each has one:
    cgroup v2 has no such file)."""
    tasks = tuple(os.path.join(os.path.dirname(p), "tasks") for p in procs_files)
    return tasks if tasks and all(os.path.exists(t) for t in tasks) else ()


def join_self(tasks: tuple[str, ...], channel: Channel) -> None:
    """In the (single-threaded) child, first thing: move this thread into its v1
    cgroups by writing "0" to each ``tasks`` file.

    A move by pid (``cgroup.procs``, from the parent) takes the kernel's cgroup
    threadgroup lock for writing, and the first writer after a quiet spell waits for
    an RCU grace period (10-15 ms measured here; crun pays it on every cold start).
    The current thread moving itself needs no such lock (it cannot exit or exec under
    the kernel's hands): 0.2-0.5 ms. cgroup v2 clones into the cgroup instead
    (CLONE_INTO_CGROUP). On failure the child reports and exits."""
    try:
        _move_into(tasks, b"0")
    except OSError as exc:
        with contextlib.suppress(OSError):
            channel.send(SetupFailed(exc.errno or 0, os_error_message(exc)))
        os._exit(125)


def join_cgroups(pid: int, procs_files: tuple[str, ...]) -> None:
    try:
        _move_into(procs_files, str(pid).encode())
    except OSError as exc:
        raise HostError(os_error_message(exc)) from None


def _move_into(files: tuple[str, ...], who: bytes) -> None:
    """Write ``who`` (a pid, or "0": the calling thread) to each cgroup file; an
    OSError's strerror says which cgroup refused."""
    for path in files:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
            try:
                os.write(fd, who)
            finally:
                os.close(fd)
        except OSError as exc:
            raise OSError(exc.errno, "cannot move the container into its cgroup "
                          f"({os.path.dirname(path)}): {exc.strerror}") from None


def place(process: InitProcess, plan: IdMapPlan | None) -> None:
    """Write the id maps (when ``plan``) and send Placed."""
    if plan is not None:
        write_maps(process.pid, plan)
    process.channel.send(Placed())


def await_ready(process: InitProcess) -> None:
    """Wait for the child's Ready, taking its pty master on the way."""
    while isinstance(message := setup_message(process.channel), PtyMaster):
        process.pty_master = message.fd


def setup_message(channel: Channel) -> Ready | PtyMaster:
    """The init's next message during its setup: its pty master, or Ready. A failure
    or an early exit raises SetupFailed."""
    try:
        message = channel.receive()
    except (ChannelClosed, ConnectionResetError):
        raise SetupFailedError(0, "container init exited during setup") from None
    if isinstance(message, PtyMaster | Ready):
        return message
    if isinstance(message, SetupFailed):
        raise SetupFailedError(message.errno, message.message)
    raise SetupFailedError(0, f"unexpected message from init: {message!r}")
