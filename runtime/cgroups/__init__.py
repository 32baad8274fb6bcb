"""Container cgroups: one interface, two drivers (cgroup v2 and v1), chosen from
/proc/self/mountinfo.

A driver owns a *base* cgroup below the supervisor's own cgroup in each hierarchy
(``<own>/myctr-<tag>``, the tag naming the state root) and creates one cgroup per
container run below it: ``<base>/<container id>``. Nothing beside or above our own
cgroup is ever created, changed or removed. The bases are recorded (see
:func:`load_state`) so that a later supervisor can remove what a crashed one left.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import time
from typing import Any, NamedTuple

from ..containerdir import read_file
from ..errors import HostError, SpecError
from .limits import Resources

WANTED_V1 = ("memory", "cpu", "cpuacct", "cpuset", "pids", "freezer", "blkio")
WANTED_V2 = ("memory", "cpu", "cpuset", "pids", "io")

# Which controller each limit needs (v1 and v2 names agree; blkio is io on v2).
NEEDS = {
    "memory": "memory", "memory_swap": "memory", "memory_reservation": "memory",
    "cpu_quota": "cpu", "cpu_period": "cpu", "cpu_shares": "cpu",
    "cpuset_cpus": "cpuset", "cpuset_mems": "cpuset", "pids_limit": "pids",
    "blkio_weight": "io", "device_read_bps": "io", "device_write_bps": "io",
    "device_read_iops": "io", "device_write_iops": "io",
}
OPTIONS = {
    "memory": "--memory", "memory_swap": "--memory-swap",
    "memory_reservation": "--memory-reservation", "cpu_quota": "--cpus",
    "cpu_period": "--cpu-period", "cpu_shares": "--cpu-shares",
    "cpuset_cpus": "--cpuset-cpus", "cpuset_mems": "--cpuset-mems",
    "pids_limit": "--pids-limit", "blkio_weight": "--blkio-weight",
    "device_read_bps": "--device-read-bps", "device_write_bps": "--device-write-bps",
    "device_read_iops": "--device-read-iops", "device_write_iops": "--device-write-iops",
}


class MountedHierarchy(NamedTuple):
    mountpoint: str
    root: str  # the mount's root inside its hierarchy
    version: int
    controllers: tuple[str, ...]  # v1: the mount's controllers; v2: ()


def state_tag(state_root: str) -> str:
    """The base cgroup's name for a state root: stable, short, distinct per root."""
    return "myctr-" + hashlib.sha256(os.path.realpath(state_root).encode()).hexdigest()[:12]


def parse_mountinfo(text: str) -> list[MountedHierarchy]:
    out: list[MountedHierarchy] = []
    for line in text.splitlines():
        fields = line.split()
        if "-" not in fields:
            continue
        sep = fields.index("-")
        fstype, super_opts = fields[sep + 1], fields[sep + 3] if len(fields) > sep + 3 else ""
        mountpoint = fields[4].replace("\\040", " ")
        if fstype == "cgroup2":
            out.append(MountedHierarchy(mountpoint, fields[3], 2, ()))
        elif fstype == "cgroup":
            controllers = tuple(o for o in super_opts.split(",")
                                if o not in ("rw", "ro") and "=" not in o
                                and o not in ("clone_children", "noprefix", "xattr",
                                              "cpuset_v2_mode", "nsdelegate"))
            if controllers:
                out.append(MountedHierarchy(mountpoint, fields[3], 1, controllers))
    return out


def parse_proc_cgroup(text: str) -> dict[str, str]:
    """/proc/PID/cgroup → {controller: path}; the v2 path under key ""."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        hid, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if not hid:
            continue
        if controllers == "":
            out[""] = path
        for name in controllers.split(","):
            if name:
                out[name] = path
    return out


def host_dir(h: MountedHierarchy, path: str) -> str:
    """The directory of cgroup ``path`` (as /proc/PID/cgroup names it) under ``h``."""
    if h.root != "/" and (path == h.root or path.startswith(h.root + "/")):
        path = path[len(h.root):] or "/"
    return os.path.join(h.mountpoint, path.lstrip("/"))


def read(path: str) -> str:
    """A cgroup file's text."""
    return read_file(path).decode()


def gone(exc: OSError) -> bool:
    """Whether ``exc`` says the cgroup file's cgroup is no more (removed: ENOENT, or
    being removed by the kernel: ENODEV), as when its run's teardown took it."""
    return exc.errno in (errno.ENOENT, errno.ENODEV)


def write(path: str, value: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def write_unless_gone(path: str, value: str) -> None:
    """:func:`write`, a no-op for a cgroup removed meanwhile (see :func:`gone`): a thaw
    or a kill of a run whose teardown took its cgroup has nothing left to act on."""
    try:
        write(path, value)
    except OSError as exc:
        if not gone(exc):
            raise


def read_keyed(path: str) -> dict[str, int]:
    """A flat keyed file (``key value`` per line) as ints."""
    out: dict[str, int] = {}
    try:
        text = read(path)
    except OSError:
        return out
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        try:
            out[key] = int(value.split()[0]) if value else 0
        except (ValueError, IndexError):
            continue
    return out


def read_int(path: str) -> int | None:
    try:
        text = read(path).strip()
    except OSError:
        return None
    if text == "max":
        return None
    try:
        return int(text)
    except ValueError:
        return None


def read_pids(path: str) -> list[int]:
    try:
        return [int(p) for p in read(path).split()]
    except (OSError, ValueError):
        return []


def rmdir_when_empty(path: str, timeout: float = 2.0) -> None:
    """rmdir a cgroup; it stays busy for a moment after its last process died."""
    deadline = time.monotonic() + timeout
    delay = 0.001
    while True:
        try:
            os.rmdir(path)
            return
        except FileNotFoundError:
            return
        except OSError as exc:
            if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                raise HostError(f"cannot remove cgroup {path}: {exc.strerror}") from None
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


def cpu_percent(before: dict[str, Any], after: dict[str, Any], seconds: float) -> float:
    """docker's CPU %: CPU time used between two stats over wall time, 100% = one CPU."""
    if seconds <= 0:
        return 0.0
    used = int(after.get("cpu_usage_ns", 0)) - int(before.get("cpu_usage_ns", 0))
    return max(used, 0) / (seconds * 1e9) * 100.0


class Unavailable(Exception):
    """Why this process cannot have container cgroups (said by ``info`` and by any
    limit that needs them)."""


def require(resources: Resources, controllers: set[str], why: str | None) -> None:
    """SpecError naming the first limit whose controller we cannot use."""
    for field, value in resources._asdict().items():
        if value is None:
            continue
        needed = NEEDS[field]
        if needed not in controllers:
            reason = why or f"the {needed} controller is not available"
            raise SpecError(f"{OPTIONS[field]} needs the cgroup {needed} controller: {reason}")


def detect(tag: str, mountinfo: str | None = None, proc_cgroup: str | None = None) -> Any:
    """The driver for this host: a :class:`v2.V2Driver` on a pure cgroup v2 host, a
    :class:`v1.V1Driver` where v1 controllers are mounted (legacy and hybrid), or
    raise :class:`Unavailable` saying why neither works."""
    from . import v1, v2

    mountinfo = mountinfo if mountinfo is not None else read("/proc/self/mountinfo")
    proc_cgroup = proc_cgroup if proc_cgroup is not None else read("/proc/self/cgroup")
    hierarchies = parse_mountinfo(mountinfo)
    own = parse_proc_cgroup(proc_cgroup)
    v1_mounts = [h for h in hierarchies if h.version == 1]
    if v1_mounts:
        return v1.V1Driver(tag, v1_mounts, own)
    unified = [h for h in hierarchies if h.version == 2]
    if unified and "" in own:
        return v2.V2Driver(tag, unified[0], own[""])
    raise Unavailable("no cgroup filesystem is mounted")


STATE_FILE = "cgroups.json"


def save_state(run_dir: str, doc: dict[str, Any]) -> None:
    """Record the driver's bases atomically (for recovery after a crash)."""
    from ..containerdir import atomic_write

    atomic_write(os.path.join(run_dir, STATE_FILE), json.dumps(doc).encode())


def load_state(run_dir: str) -> dict[str, Any] | None:
    try:
        with open(os.path.join(run_dir, STATE_FILE)) as f:
            doc: dict[str, Any] = json.load(f)
            return doc
    except (OSError, ValueError):
        return None


def clear_state_if_gone(run_dir: str, doc: dict[str, Any] | None) -> list[str]:
    """Drop the record of the bases of ``doc`` once none of them is left; return
    those left (still recorded: a cgroup below could not be removed, busy or frozen,
    and a later recover() removes it)."""
    left = [b for b in (doc or {}).get("bases", []) if os.path.isdir(b)]
    if not left:
        clear_state(run_dir)
    return left


def clear_state(run_dir: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(os.path.join(run_dir, STATE_FILE))


def remove_tree(path: str, kill: bool = True) -> None:
    """Remove a cgroup directory we created and every cgroup below it (deepest first),
    killing what still runs there (recovery after a crash)."""
    import signal

    if not os.path.isdir(path):
        return
    for dirpath, _dirs, _files in sorted(os.walk(path), key=lambda t: -t[0].count("/")):
        if kill:
            for pid in read_pids(os.path.join(dirpath, "cgroup.procs")):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        rmdir_when_empty(dirpath)
