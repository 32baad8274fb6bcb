"""A container's directory on disk: its spec, overlay upper/work/merged dirs, the
files it gets at /etc/hostname, /etc/hosts and /etc/resolv.conf, and a small state
record. Every write is atomic (write a temp file, fsync, rename); a name is claimed
with an atomic symlink so two ``run --name x`` cannot both win.

A directory whose owner process is gone (``kill -9`` of ``myctr run``) is found by
:func:`sweep_stale` and removed, so a crash leaves nothing behind for long.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable
from typing import Any, NamedTuple

from .errors import Conflict, NotFound
from .paths import StatePaths

STATE_FILE = "state.json"
SPEC_FILE = "config.json"


class ContainerState(NamedTuple):
    id: str
    name: str
    status: str  # created | running | exited
    owner_pid: int
    owner_start: int
    auto_remove: bool
    created: float
    pid: int = 0
    exit_code: int | None = None
    rootless: bool = False
    user_namespace: bool = False


def new_id() -> str:
    return os.urandom(32).hex()


def process_start_time(pid: int) -> int:
    """The start time (clock ticks since boot) of ``pid``: with the pid it names one
    process for good, since a recycled pid has another start time. 0 if gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return 0
    return int(stat[stat.rindex(b")") + 2 :].split()[19])


def atomic_write(path: str, data: bytes, mode: int = 0o600, durable: bool = True) -> None:
    """Write ``path`` whole or not at all; ``durable`` also survives a power loss."""
    head, tail = os.path.split(path)
    tmp = os.path.join(head, f".{tail}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        os.write(fd, data)
        if durable:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, path)


class ContainerDir:
    def __init__(self, paths: StatePaths, container_id: str) -> None:
        self.paths = paths
        self.id = container_id
        self.path = paths.container_dir(container_id)

    @property
    def upper(self) -> str:
        return os.path.join(self.path, "upper")

    @property
    def work(self) -> str:
        return os.path.join(self.path, "work")

    @property
    def merged(self) -> str:
        return os.path.join(self.path, "merged")

    @property
    def etc(self) -> str:
        return os.path.join(self.path, "etc")

    def create(self, state: ContainerState) -> None:
        os.mkdir(self.path, 0o700)
        for sub in (self.upper, self.work, self.merged, self.etc):
            os.mkdir(sub, 0o755)
        self.write_state(state)

    def hand_over(self, uid: int, gid: int) -> None:
        """Give the overlay dirs to the container's root when it is another host id
        (root with ``--uidmap``): it mounts the overlay from inside its namespace."""
        os.chmod(self.path, 0o711)
        for sub in (self.upper, self.work, self.merged):
            os.chown(sub, uid, gid)

    def write_state(self, state: ContainerState) -> None:
        atomic_write(os.path.join(self.path, STATE_FILE), json.dumps(state._asdict()).encode())

    def read_state(self) -> ContainerState:
        try:
            with open(os.path.join(self.path, STATE_FILE), "rb") as f:
                doc = json.loads(f.read())
        except FileNotFoundError:
            raise NotFound(f"no such container: {self.id}") from None
        return ContainerState(**doc)

    def write_spec(self, doc: dict[str, Any]) -> None:
        """The spec is derived data (a crash sweeps the container): no fsync."""
        atomic_write(os.path.join(self.path, SPEC_FILE), json.dumps(doc).encode(),
                     durable=False)

    def write_etc_files(self, hostname: str, host_network: bool) -> dict[str, str]:
        """Write hostname, hosts, resolv.conf; return {container path: host path}."""
        hosts = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
        hosts += f"127.0.1.1\t{hostname}\n"
        files = {
            "hostname": f"{hostname}\n",
            "hosts": hosts,
            "resolv.conf": resolv_conf(_read("/etc/resolv.conf"), keep_loopback=host_network),
        }
        paths = {f"/etc/{name}": os.path.join(self.etc, name) for name in files}
        for name, text in files.items():
            atomic_write(paths[f"/etc/{name}"], text.encode(), mode=0o644, durable=False)
        return paths

    def remove(self, remover: Callable[[str], None] | None = None) -> None:
        """Remove the directory (through ``remover`` when its files belong to ids only a
        user namespace can touch), then the state file last."""
        if not os.path.exists(self.path):
            return
        if remover is not None:
            for sub in (self.upper, self.work):  # overlay leaves work/work mode 000
                if os.path.exists(sub):
                    remover(sub)
        rmtree(self.path)


def resolv_conf(host_text: str, keep_loopback: bool) -> str:
    """The host's resolv.conf; a resolver on the host's loopback is unreachable from a
    container's own network namespace, so those lines go (podman does the same)."""
    lines = []
    for line in host_text.splitlines():
        fields = line.split()
        if (not keep_loopback and len(fields) >= 2 and fields[0] == "nameserver"
                and (fields[1].startswith("127.") or fields[1] == "::1")):
            continue
        lines.append(line)
    return "\n".join(lines) + "\n" if lines else ""


def claim_name(paths: StatePaths, name: str, container_id: str) -> None:
    try:
        os.symlink(container_id, os.path.join(paths.names, name))
    except FileExistsError:
        owner = os.readlink(os.path.join(paths.names, name))
        raise Conflict(
            f'the container name "{name}" is already in use by {owner[:12]}; '
            "remove that container to reuse the name"
        ) from None


def release_name(paths: StatePaths, name: str, container_id: str) -> None:
    link = os.path.join(paths.names, name)
    with contextlib.suppress(FileNotFoundError):
        if os.readlink(link) == container_id:
            os.unlink(link)


def lookup(paths: StatePaths, ref: str) -> ContainerDir:
    """A container by name, full id or unique id prefix."""
    with contextlib.suppress(OSError):
        return ContainerDir(paths, os.readlink(os.path.join(paths.names, ref)))
    matches = [d for d in _ids(paths) if d.startswith(ref)] if ref else []
    if len(matches) == 1:
        return ContainerDir(paths, matches[0])
    if len(matches) > 1:
        raise Conflict(f"container id prefix {ref!r} is ambiguous")
    raise NotFound(f"no such container: {ref}")


def list_states(paths: StatePaths) -> list[ContainerState]:
    states = []
    for container_id in _ids(paths):
        with contextlib.suppress(NotFound, ValueError, TypeError):
            states.append(ContainerDir(paths, container_id).read_state())
    return sorted(states, key=lambda s: s.created)


def owner_alive(state: ContainerState) -> bool:
    return process_start_time(state.owner_pid) == state.owner_start


def sweep_stale(paths: StatePaths, remover: Callable[[ContainerDir], None]) -> list[str]:
    """Remove containers whose ``myctr run`` died without cleaning up (kill -9); a
    dead owner's container is dead too (its init had PDEATHSIG). Returns their ids."""
    removed = []
    for container_id in _ids(paths):
        cdir = ContainerDir(paths, container_id)
        try:
            state = cdir.read_state()
        except (NotFound, ValueError, TypeError):
            if _older_than(cdir.path, 60):
                remover(cdir)  # never got a state file: a crash during create
                removed.append(container_id)
            continue
        if state.status != "exited" and not owner_alive(state):
            if state.auto_remove:
                remover(cdir)
                release_name(paths, state.name, container_id)
            else:
                cdir.write_state(_exited(state))
            removed.append(container_id)
    return removed


def _exited(state: ContainerState) -> ContainerState:
    return state._replace(status="exited", exit_code=137)


def _ids(paths: StatePaths) -> list[str]:
    try:
        return [e for e in os.listdir(paths.containers) if not e.startswith(".")]
    except FileNotFoundError:
        return []


def _older_than(path: str, seconds: float) -> bool:
    try:
        return time.time() - os.stat(path).st_mtime > seconds
    except FileNotFoundError:
        return False


def rmtree(path: str) -> None:
    import shutil

    with contextlib.suppress(FileNotFoundError):
        shutil.rmtree(path)


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""
