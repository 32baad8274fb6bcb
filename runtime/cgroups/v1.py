"""The cgroup v1 driver: one directory per controller hierarchy (legacy and hybrid
hosts, like this project's CI).

Each controller we use (memory, cpu, cpuacct, cpuset, pids, freezer, blkio) gets
``<own cgroup in that hierarchy>/myctr-<tag>/<container id>``. v1 has no
no-internal-process rule, so the supervisor stays where it is. cpuset cgroups start
empty and must copy cpus/mems from their parent before a task may join. Kill-all is
freeze, signal every pid, thaw; OOM notification is an eventfd registered through
``cgroup.event_control`` on ``memory.oom_control``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from typing import Any

from ..errors import HostError
from . import (
    WANTED_V1,
    MountedHierarchy,
    Unavailable,
    host_dir,
    read,
    read_int,
    read_keyed,
    read_pids,
    remove_tree,
    rmdir_when_empty,
    write,
    write_unless_gone,
)
from .limits import Resources

UNLIMITED = 1 << 62  # v1 reports "no limit" as a page-rounded LONG_MAX


class V1Driver:
    version = 1

    def __init__(self, tag: str, mounts: list[MountedHierarchy], own: dict[str, str]) -> None:
        self.tag = tag
        self.dirs: dict[str, str] = {}  # controller -> our base dir in its hierarchy
        self.own_dirs: dict[str, str] = {}
        for h in mounts:
            for controller in h.controllers:
                if controller in WANTED_V1 and controller in own:
                    own_dir = host_dir(h, own[controller])
                    self.own_dirs[controller] = own_dir
                    self.dirs[controller] = os.path.join(own_dir, tag)
        self.controllers: set[str] = set()
        self.cpuset: tuple[str, str] = ("", "")  # the base's cpus and mems, for each run
        self.ready = False

    def problem(self) -> str | None:
        if not self.own_dirs:
            return "cgroup v1: none of the controllers " + ", ".join(WANTED_V1) + " is mounted"
        if not all(os.access(d, os.W_OK) for d in self.own_dirs.values()):
            return (f"cgroup v1: the controller hierarchies are not writable by uid "
                    f"{os.geteuid()} (cgroup v1 cannot be delegated safely; rootless "
                    "limits need cgroup v2)")
        return None

    def describe(self) -> dict[str, Any]:
        controllers = self.controllers if self.ready else set(self.dirs)
        return {"version": 1, "base": sorted(set(self.dirs.values())),
                "controllers": sorted(self._names(controllers)),
                "problem": self.problem()}

    @staticmethod
    def _names(controllers: set[str]) -> set[str]:
        return {"io" if c == "blkio" else c for c in controllers}

    def setup(self, our_pids: list[int]) -> None:
        if self.ready:
            return
        why = self.problem()
        if why:
            raise Unavailable(why)
        for controller, base in self.dirs.items():
            try:
                os.makedirs(base, exist_ok=True)
                if controller == "cpuset":
                    self.cpuset = _inherit_cpuset(base)
                self.controllers.add(controller)
            except OSError:
                continue
        self.ready = True

    def usable(self) -> set[str]:
        """Controller names as limits know them (blkio is "io")."""
        return self._names(self.controllers)

    def state(self) -> dict[str, Any]:
        return {"version": 1, "bases": sorted(set(self.dirs.values()))}

    def teardown(self) -> None:
        if not self.ready:
            return
        for base in self.dirs.values():
            with contextlib.suppress(HostError):
                rmdir_when_empty(base, timeout=0.5)
        self.ready = False

    def cgroup(self, cid: str) -> V1Cgroup:
        return V1Cgroup({c: os.path.join(base, cid) for c, base in self.dirs.items()
                         if c in self.controllers}, self.cpuset)


def _inherit_cpuset(path: str) -> tuple[str, str]:
    """A new v1 cpuset has no cpus or mems (no task may join): copy the parent's.
    Returns (cpus, mems) as set."""
    parent = os.path.dirname(path)
    values = []
    for name in ("cpuset.cpus", "cpuset.mems"):
        value = read(os.path.join(path, name)).strip()
        if not value:
            value = read(os.path.join(parent, name)).strip()
            write(os.path.join(path, name), value)
        values.append(value)
    return values[0], values[1]


class V1Cgroup:
    version = 1

    def __init__(self, dirs: dict[str, str], cpuset: tuple[str, str] = ("", "")) -> None:
        self.by_controller = dirs
        self.cpuset = cpuset
        # cpu and cpuacct may share a mount (then one directory serves both)
        self.dirs = tuple(sorted(set(dirs.values())))
        self.procs_files = tuple(os.path.join(d, "cgroup.procs") for d in self.dirs)
        pids = dirs.get("pids")
        self.event_files = (os.path.join(pids, "pids.events"),) if pids else ()

    def _f(self, controller: str, name: str) -> str | None:
        d = self.by_controller.get(controller)
        return os.path.join(d, name) if d else None

    def create(self, resources: Resources) -> None:
        try:
            self._make()
        except FileExistsError:  # left by a run whose removal failed
            self.remove()
            self._make()
        self.apply(resources)

    def _make(self) -> None:
        for controller, d in self.by_controller.items():
            os.mkdir(d)
            if controller == "cpuset":  # the base's values, read once at setup
                for name, value in zip(("cpuset.cpus", "cpuset.mems"), self.cpuset,
                                       strict=True):
                    write(os.path.join(d, name), value)

    def apply(self, r: Resources) -> None:
        writes: list[tuple[str, str, str]] = []
        if r.memory_reservation is not None:
            writes.append(("memory", "memory.soft_limit_in_bytes", str(r.memory_reservation)))
        swap = r.swap_limit
        memsw = self._f("memory", "memory.memsw.limit_in_bytes")
        has_memsw = memsw is not None and os.path.exists(memsw)
        if r.memory is not None:
            # memsw must stay >= memory: raise memsw first when growing.
            current = read_int(memsw) if has_memsw and memsw else None
            if has_memsw and swap is not None and current is not None and current < r.memory:
                writes.append(("memory", "memory.memsw.limit_in_bytes",
                               "-1" if swap == -1 else str(swap)))
            writes.append(("memory", "memory.limit_in_bytes", str(r.memory)))
        if has_memsw and swap is not None:
            writes.append(("memory", "memory.memsw.limit_in_bytes",
                           "-1" if swap == -1 else str(swap)))
        if r.cpu_period is not None:
            writes.append(("cpu", "cpu.cfs_period_us", str(r.cpu_period)))
        if r.cpu_quota is not None:
            writes.append(("cpu", "cpu.cfs_quota_us", str(r.cpu_quota)))
        if r.cpu_shares is not None:
            writes.append(("cpu", "cpu.shares", str(r.cpu_shares)))
        if r.cpuset_cpus is not None:
            writes.append(("cpuset", "cpuset.cpus", r.cpuset_cpus))
        if r.cpuset_mems is not None:
            writes.append(("cpuset", "cpuset.mems", r.cpuset_mems))
        if r.pids_limit is not None:
            writes.append(("pids", "pids.max", "max" if r.pids_limit == -1 else str(r.pids_limit)))
        if r.blkio_weight is not None:
            writes.append(("blkio", "blkio.weight", str(r.blkio_weight)))
        for field, name in (("device_read_bps", "blkio.throttle.read_bps_device"),
                            ("device_write_bps", "blkio.throttle.write_bps_device"),
                            ("device_read_iops", "blkio.throttle.read_iops_device"),
                            ("device_write_iops", "blkio.throttle.write_iops_device")):
            for major, minor, value in getattr(r, field) or ():
                writes.append(("blkio", name, f"{major}:{minor} {value}"))
        seen: set[tuple[str, str]] = set()
        for controller, name, value in writes:
            path = self._f(controller, name)
            if path is None:
                raise HostError(f"cannot set {name}: the {controller} controller is missing")
            if (name, value) in seen:
                continue
            seen.add((name, value))
            try:
                write(path, value)
            except OSError as exc:
                raise HostError(f"cannot set {name}={value} on {os.path.dirname(path)}: "
                                f"{exc.strerror}") from None

    def pids(self) -> list[int]:
        for controller in ("pids", "memory", "freezer", "cpu"):
            path = self._f(controller, "cgroup.procs")
            if path:
                return read_pids(path)
        return []

    def populated(self) -> bool:
        return bool(self.pids())

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Freeze, signal every pid, thaw: no process can fork away in between."""
        frozen = False
        if self._f("freezer", "freezer.state") and sig == signal.SIGKILL:
            frozen = True  # thawed below even if freezing failed half-way
            with contextlib.suppress(OSError, HostError):
                self.freeze()
        try:
            for pid in self.pids():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
        finally:
            if frozen:
                self.thaw()

    def freeze(self) -> None:
        state = self._f("freezer", "freezer.state")
        if state is None:
            raise HostError("pause needs the cgroup freezer controller")
        write(state, "FROZEN")
        deadline = time.monotonic() + 5.0
        while read(state).strip() != "FROZEN":
            if time.monotonic() > deadline:
                raise HostError("the container did not freeze within 5s")
            write(state, "FROZEN")
            time.sleep(0.001)

    def thaw(self) -> None:
        """Thaw; a cgroup removed meanwhile (its init exited and the run's teardown
        took it) has nothing left frozen."""
        state = self._f("freezer", "freezer.state")
        if state is not None:
            write_unless_gone(state, "THAWED")

    def oom_control_path(self) -> str | None:
        return self._f("memory", "memory.oom_control")

    def event_control_path(self) -> str | None:
        return self._f("memory", "cgroup.event_control")

    def memory_events(self) -> dict[str, int]:
        """v2-shaped counters from v1 files (max = failcnt, oom_kill from oom_control)."""
        path = self._f("memory", "memory.oom_control")
        control = read_keyed(path) if path else {}
        failcnt = self._f("memory", "memory.failcnt")
        return {"low": 0, "high": 0, "max": (read_int(failcnt) or 0) if failcnt else 0,
                "oom": control.get("oom_kill", 0), "oom_kill": control.get("oom_kill", 0)}

    def pids_events(self) -> dict[str, int]:
        path = self._f("pids", "pids.events")
        return read_keyed(path) if path else {}

    def stats(self) -> dict[str, Any]:
        def num(controller: str, name: str) -> int | None:
            path = self._f(controller, name)
            return read_int(path) if path else None

        mem_stat_path = self._f("memory", "memory.stat")
        mem_stat = read_keyed(mem_stat_path) if mem_stat_path else {}
        usage = num("memory", "memory.usage_in_bytes") or 0
        limit = num("memory", "memory.limit_in_bytes")
        io_read = io_write = 0
        blk = self._f("blkio", "blkio.throttle.io_service_bytes_recursive")
        if blk:
            try:
                for line in read(blk).splitlines():
                    parts = line.split()
                    if len(parts) == 3 and parts[1] == "Read":
                        io_read += int(parts[2])
                    elif len(parts) == 3 and parts[1] == "Write":
                        io_write += int(parts[2])
            except OSError:
                pass
        return {
            "cpu_usage_ns": num("cpuacct", "cpuacct.usage") or 0,
            "memory_usage": max(usage - mem_stat.get("total_inactive_file", 0), 0),
            "memory_limit": None if limit is None or limit >= UNLIMITED else limit,
            "pids": num("pids", "pids.current") or 0,
            "pids_limit": num("pids", "pids.max"),
            "block_read": io_read,
            "block_write": io_write,
        }

    def remove(self) -> None:
        with contextlib.suppress(OSError):  # busy, or cgroups below: the thorough way
            for d in self.dirs:  # the common case: the init's exit emptied them
                with contextlib.suppress(FileNotFoundError):
                    os.rmdir(d)
            return
        if self.populated():
            self.kill()
        for d in self.dirs:
            remove_tree(d)  # with any cgroups the container made below its own


def recover(doc: dict[str, Any]) -> None:
    """Remove what a crashed supervisor left below its bases (thawing first)."""
    bases = [b for b in doc.get("bases", []) if os.path.isdir(b)]
    # Thaw first (in the freezer hierarchy): a frozen task does not act on its SIGKILL,
    # and would keep every other hierarchy's cgroup busy.
    for base in bases:
        for dirpath, _dirs, files in os.walk(base):
            if "freezer.state" in files:
                with contextlib.suppress(OSError):
                    write(os.path.join(dirpath, "freezer.state"), "THAWED")
    for base in bases:
        for name in os.listdir(base):
            path = os.path.join(base, name)
            if os.path.isdir(path):
                with contextlib.suppress(HostError):  # the next start tries again
                    remove_tree(path)
        with contextlib.suppress(HostError):
            rmdir_when_empty(base, timeout=0.2)
