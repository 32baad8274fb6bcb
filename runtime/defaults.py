"""What a container gets by default, and :func:`build_spec`: a validated
:class:`RunRequest` (what ``myctr run`` was asked) to a :class:`ContainerSpec`.

The defaults are podman's and docker's: every namespace but the user namespace as
root (all of them rootless), docker's 14 capabilities, the default seccomp profile,
/proc, /sys (read-only), a tmpfs /dev with the standard nodes, devpts, /dev/shm,
/dev/mqueue, podman's masked and read-only paths.
"""

from __future__ import annotations

from typing import NamedTuple

from . import capabilities
from .idmap import IdMapPlan
from .spec import (
    ContainerSpec,
    Linux,
    Mount,
    Namespace,
    Process,
    Rlimit,
    Root,
    Seccomp,
    User,
)

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

MASKED_PATHS = (
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/proc/interrupts",
    "/sys/firmware",
    "/sys/fs/selinux",
    "/sys/dev/block",
)
READONLY_PATHS = (
    "/proc/asound",
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
)
INIT_PATH_IN_CONTAINER = "/dev/init"
TTY_GID = 5


class RunRequest(NamedTuple):
    """``myctr run``'s options, already validated at the edge."""

    rootfs: str
    args: tuple[str, ...]
    hostname: str
    env: tuple[str, ...] = ()
    workdir: str = "/"
    user: str | None = None
    group_add: tuple[str, ...] = ()
    cap_add: tuple[str, ...] = ()
    cap_drop: tuple[str, ...] = ()
    read_only: bool = False
    volumes: tuple[Mount, ...] = ()
    tmpfs: tuple[Mount, ...] = ()
    network: str = "none"
    init_path: str | None = None
    terminal: bool = False
    ulimits: tuple[Rlimit, ...] = ()
    seccomp: bool = True
    no_new_privileges: bool = False
    rootless: bool = False
    # Mount the container's own cgroup2 tree read-only at /sys/fs/cgroup (pure cgroup
    # v2 hosts, when it has a cgroup): runtimes such as the JVM and Go read their
    # limits there. Set by the supervisor, which knows the host's cgroups.
    cgroup_mount: bool = False
    # An image's layers as overlay lower dirs, top first (empty: just ``rootfs``).
    lowers: tuple[str, ...] = ()


def namespaces(request: RunRequest, user_namespace: bool) -> tuple[Namespace, ...]:
    types = ["pid", "mount", "uts", "ipc", "cgroup"]
    if request.network != "host":
        types.append("network")
    if user_namespace:
        types.insert(0, "user")
    return tuple(Namespace(type=t) for t in types)


def default_mounts(
    request: RunRequest, plan: IdMapPlan | None, container_files: dict[str, str]
) -> tuple[Mount, ...]:
    """/proc, /dev, /sys, ... then the files myctr provides (/etc/hosts ...), then the
    user's volumes and tmpfs mounts in the order given."""
    sysfs_needs_bind = request.rootless and request.network == "host"
    pts_options = ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]
    if plan is None or _maps_id(plan, TTY_GID):
        pts_options.append(f"gid={TTY_GID}")
    mounts = [
        Mount("/proc", "proc", "proc", ("nosuid", "noexec", "nodev")),
        Mount("/dev", "tmpfs", "tmpfs", ("nosuid", "strictatime", "mode=755", "size=65536k")),
        Mount("/dev/pts", "devpts", "devpts", tuple(pts_options)),
        Mount("/dev/shm", "tmpfs", "shm", ("nosuid", "noexec", "nodev", "mode=1777",
                                           "size=65536k")),
        Mount("/dev/mqueue", "mqueue", "mqueue", ("nosuid", "noexec", "nodev")),
        Mount("/sys", "bind", "/sys", ("rbind", "nosuid", "noexec", "nodev", "ro"))
        if sysfs_needs_bind
        else Mount("/sys", "sysfs", "sysfs", ("nosuid", "noexec", "nodev", "ro")),
    ]
    if request.cgroup_mount and not sysfs_needs_bind:
        mounts.append(Mount("/sys/fs/cgroup", "cgroup2", "cgroup2",
                            ("nosuid", "noexec", "nodev", "ro")))
    mounts += [
        Mount(dst, "bind", src, ("bind", "rprivate")) for dst, src in container_files.items()
    ]
    if request.init_path:
        mounts.append(Mount(INIT_PATH_IN_CONTAINER, "bind", request.init_path,
                            ("bind", "ro", "nosuid", "nodev")))
    return (*mounts, *request.volumes, *request.tmpfs)


def _maps_id(plan: IdMapPlan, container_id: int) -> bool:
    return any(m.container_id <= container_id < m.container_id + m.size
               for m in plan.gid_mappings)


def process(request: RunRequest, caps: tuple[str, ...]) -> Process:
    env = {"PATH": f"PATH={DEFAULT_PATH}", "HOSTNAME": f"HOSTNAME={request.hostname}"}
    if request.terminal:
        env["TERM"] = "TERM=xterm"
    for item in request.env:
        env[item.partition("=")[0]] = item
    args = request.args
    if request.init_path:
        args = (INIT_PATH_IN_CONTAINER, "--", *args)
    return Process(
        args=args,
        env=tuple(env.values()),
        cwd=request.workdir,
        user=User(),
        user_name=request.user or "0",
        group_add=request.group_add,
        terminal=request.terminal,
        capabilities=capabilities.container_capabilities(caps),
        rlimits=request.ulimits,
        no_new_privileges=request.no_new_privileges,
        init_path=request.init_path,
    )


def build_spec(
    request: RunRequest,
    plan: IdMapPlan | None,
    container_files: dict[str, str],
    seccomp_profile: Seccomp | None,
) -> ContainerSpec:
    """The full spec for ``request``; ``plan`` is None when no user namespace is used."""
    caps = capabilities.resolve(request.cap_add, request.cap_drop)
    return ContainerSpec(
        process=process(request, caps),
        root=Root(path=request.rootfs, readonly=request.read_only),
        hostname=request.hostname,
        mounts=default_mounts(request, plan, container_files),
        linux=Linux(
            namespaces=namespaces(request, plan is not None),
            uid_mappings=plan.uid_mappings if plan else (),
            gid_mappings=plan.gid_mappings if plan else (),
            masked_paths=MASKED_PATHS,
            readonly_paths=READONLY_PATHS,
            seccomp=seccomp_profile,
        ),
    )
