"""``exec``: one more process in a running container.

The zygote clones the joiner with CLONE_PARENT (so it is the supervisor's child to
reap). The joiner makes itself non-dumpable (so nothing in the container can open its
/proc/PID/exe, which is the host's Python: CVE-2019-5736), enters the container's
namespaces through the init's pidfd (setns with a pidfd joins them all at once, user
namespace first), and forks the process, which lands in the container's pid namespace
and follows the same handshake as an init (terminal, Ready, Start, privileges, exec).
The joiner waits and exits with the process's status (128+N for signal N).
"""

from __future__ import annotations

import os
import signal

from . import libc
from .channel import Channel, Placed
from .create import InitProcess, spawn
from .init import InitConfig, become_process, forget_supervisor, run_guarded
from .spec import ContainerSpec

_JOIN = {
    "user": libc.CLONE_NEWUSER, "mount": libc.CLONE_NEWNS, "pid": libc.CLONE_NEWPID,
    "uts": libc.CLONE_NEWUTS, "ipc": libc.CLONE_NEWIPC, "network": libc.CLONE_NEWNET,
    "cgroup": libc.CLONE_NEWCGROUP,
}


def join_flags(spec: ContainerSpec) -> int:
    flags = 0
    for ns in spec.linux.namespaces:
        flags |= _JOIN[ns.type]
    return flags


def create_exec(spec: ContainerSpec, config: InitConfig, container_pidfd: int,
                stdio: tuple[int, int, int], cgroup_procs: tuple[str, ...] = (),
                wait_ready: bool = True) -> InitProcess:
    """Clone the joiner (into the container's cgroups); return once the process stands
    before exec (``wait_ready`` False: once it is placed, as :func:`create`)."""
    return spawn(libc.CLONE_PARENT, stdio,
                 lambda channel: run_guarded(
                     channel, lambda: _join(spec, config, container_pidfd, channel)),
                 None, ours=False, cgroup_procs=cgroup_procs, wait_ready=wait_ready)


def _join(spec: ContainerSpec, config: InitConfig, container_pidfd: int,
          channel: Channel) -> None:
    channel.expect(Placed)  # in the container's cgroups before anything forks
    libc.prctl(libc.PR_SET_DUMPABLE, 0)
    libc.prctl(libc.PR_SET_PDEATHSIG, signal.SIGKILL)
    forget_supervisor()  # it lives as long as the process: no handle on the supervisor
    if config.stdin_devnull:
        null = os.open("/dev/null", os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
    libc.setns(container_pidfd, join_flags(spec), "container namespaces")
    os.close(container_pidfd)
    pid = os.fork()
    if pid == 0:
        run_guarded(channel, lambda: _process(spec, config, channel))
    channel.close()
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    os._exit(128 - code if code < 0 else code)


def _process(spec: ContainerSpec, config: InitConfig, channel: Channel) -> None:
    libc.prctl(libc.PR_SET_PDEATHSIG, signal.SIGKILL)
    os.chdir("/")
    become_process(spec, config, channel)
