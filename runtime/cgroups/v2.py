"""The cgroup v2 driver: one unified hierarchy.

Setup (lazily, before the first container): the base ``<own>/myctr-<tag>`` gets the
controllers we want in its ``cgroup.subtree_control``. For that our own cgroup must
enable them for its children, which the no-internal-process rule allows only in the
root cgroup or in a cgroup without processes: when the supervisor (and its zygote)
are the only processes in its cgroup — a systemd service with ``Delegate=yes`` — they
move into the leaf ``<base>/supervisor`` first and the controllers are enabled above
it. On shutdown that is undone.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from typing import Any

from ..errors import HostError
from . import (
    WANTED_V2,
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


class V2Driver:
    version = 2

    def __init__(self, tag: str, hierarchy: MountedHierarchy, own: str) -> None:
        self.tag = tag
        self.hierarchy = hierarchy
        self.own_dir = host_dir(hierarchy, own)
        self.base = os.path.join(self.own_dir, tag)
        self.moved_from: str | None = None  # set when the supervisor moved to a leaf
        self.enabled_above: list[str] = []  # controllers we enabled in own_dir
        self.controllers: set[str] = set()
        self.ready = False

    # --- what is possible ------------------------------------------------------------

    def problem(self) -> str | None:
        """Why this process cannot manage cgroups here at all (None: it can)."""
        if not os.access(self.own_dir, os.W_OK) or not os.access(
                os.path.join(self.own_dir, "cgroup.procs"), os.W_OK):
            return (f"cgroup v2: {self.own_dir} is not writable by uid {os.geteuid()} "
                    "(no delegated cgroup; run the supervisor in a cgroup delegated to "
                    "this user, e.g. a systemd user service with Delegate=yes)")
        return None

    def describe(self) -> dict[str, Any]:
        controllers = self.controllers
        if not self.ready:  # not set up yet (first container): what could be had
            try:
                available = read(os.path.join(self.own_dir, "cgroup.controllers")).split()
            except OSError:
                available = []
            controllers = set(WANTED_V2) & set(available)
        return {"version": 2, "base": self.base, "controllers": sorted(controllers),
                "problem": self.problem() or self._missing_reason()}

    def _missing_reason(self) -> str | None:
        if not self.ready:
            return None
        missing = sorted(set(WANTED_V2) - self.controllers)
        if not missing:
            return None
        return f"controllers {', '.join(missing)} cannot be enabled in {self.own_dir}"

    # --- setup / teardown ------------------------------------------------------------

    def setup(self, our_pids: list[int]) -> None:
        """Create the base and enable controllers; ``our_pids`` are the supervisor's
        processes (moved into a leaf when they are alone in our cgroup)."""
        if self.ready:
            return
        why = self.problem()
        if why:
            raise Unavailable(why)
        available = set(read(os.path.join(self.own_dir, "cgroup.controllers")).split())
        wanted = [c for c in WANTED_V2 if c in available]
        enabled = set(read(os.path.join(self.own_dir, "cgroup.subtree_control")).split())
        missing = [c for c in wanted if c not in enabled]
        os.makedirs(self.base, exist_ok=True)
        if missing and not self._is_root():
            procs = set(read_pids(os.path.join(self.own_dir, "cgroup.procs")))
            if procs and procs <= set(our_pids):
                leaf = os.path.join(self.base, "supervisor")
                os.makedirs(leaf, exist_ok=True)
                for pid in sorted(procs):
                    write(os.path.join(leaf, "cgroup.procs"), str(pid))
                self.moved_from = self.own_dir
        for c in missing:
            try:
                write(os.path.join(self.own_dir, "cgroup.subtree_control"), f"+{c}")
                self.enabled_above.append(c)
                enabled.add(c)
            except OSError:
                pass
        usable = [c for c in wanted if c in enabled]
        base_enabled = set(read(os.path.join(self.base, "cgroup.subtree_control")).split())
        for c in usable:
            if c in base_enabled:
                continue
            try:
                write(os.path.join(self.base, "cgroup.subtree_control"), f"+{c}")
            except OSError:
                usable.remove(c)
        self.controllers = set(usable)
        self.ready = True

    def usable(self) -> set[str]:
        return set(self.controllers)

    def _is_root(self) -> bool:
        """The real root cgroup (exempt from the no-internal-process rule) is the only
        one without cgroup.type; a cgroup namespace's "/" has it."""
        return not os.path.exists(os.path.join(self.own_dir, "cgroup.type"))

    def state(self) -> dict[str, Any]:
        return {"version": 2, "bases": [self.base], "moved_from": self.moved_from,
                "enabled_above": self.enabled_above}

    def teardown(self) -> None:
        """Remove the (empty) base; move the supervisor back where it came from."""
        if self.ready:
            _undo_setup(self.state())
            self.ready = False

    # --- containers -----------------------------------------------------------------

    def cgroup(self, cid: str) -> V2Cgroup:
        return V2Cgroup(os.path.join(self.base, cid))


class V2Cgroup:
    version = 2

    def __init__(self, path: str) -> None:
        self.path = path
        self.dirs = (path,)
        self.procs_files = (os.path.join(path, "cgroup.procs"),)
        self.event_files = (os.path.join(path, "memory.events"),
                            os.path.join(path, "pids.events"))

    def _f(self, name: str) -> str:
        return os.path.join(self.path, name)

    def create(self, resources: Resources) -> None:
        try:
            os.mkdir(self.path)
        except FileExistsError:  # left by a run whose removal failed
            self.remove()
            os.mkdir(self.path)
        self.apply(resources)

    def apply(self, r: Resources) -> None:
        writes: list[tuple[str, str]] = []
        if r.memory_reservation is not None:
            writes.append(("memory.low", str(r.memory_reservation)))
        if r.memory is not None:
            writes.append(("memory.max", str(r.memory)))
        swap = r.swap_limit
        if swap is not None and os.path.exists(self._f("memory.swap.max")):
            writes.append(("memory.swap.max",
                           "max" if swap == -1 else str(max(swap - (r.memory or 0), 0))))
        if r.cpu_quota is not None or r.cpu_period is not None:
            quota = "max" if r.cpu_quota in (None, -1) else str(r.cpu_quota)
            writes.append(("cpu.max", f"{quota} {r.cpu_period or 100000}"))
        if r.cpu_weight is not None:
            writes.append(("cpu.weight", str(r.cpu_weight)))
        if r.cpuset_cpus is not None:
            writes.append(("cpuset.cpus", r.cpuset_cpus))
        if r.cpuset_mems is not None:
            writes.append(("cpuset.mems", r.cpuset_mems))
        if r.pids_limit is not None:
            writes.append(("pids.max", "max" if r.pids_limit == -1 else str(r.pids_limit)))
        if r.blkio_weight is not None:
            name = "io.bfq.weight" if os.path.exists(self._f("io.bfq.weight")) else "io.weight"
            writes.append((name, str(r.blkio_weight)))
        writes.extend(("io.max", line) for line in io_max_lines(r))
        for name, value in writes:
            try:
                write(self._f(name), value)
            except OSError as exc:
                raise HostError(f"cannot set {name}={value} on {self.path}: "
                                f"{exc.strerror}") from None

    def pids(self) -> list[int]:
        return read_pids(self._f("cgroup.procs"))

    def populated(self) -> bool:
        return read_keyed(self._f("cgroup.events")).get("populated", 0) == 1

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Signal every process; SIGKILL in one write to cgroup.kill (Linux >= 5.14)."""
        if sig == signal.SIGKILL and os.path.exists(self._f("cgroup.kill")):
            write_unless_gone(self._f("cgroup.kill"), "1")
            return
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    def freeze(self) -> None:
        write(self._f("cgroup.freeze"), "1")
        try:
            self._wait_frozen(1)
        except HostError:
            self.thaw()
            raise

    def thaw(self) -> None:
        """Thaw; a cgroup removed meanwhile has nothing left frozen."""
        write_unless_gone(self._f("cgroup.freeze"), "0")

    def _wait_frozen(self, want: int, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while read_keyed(self._f("cgroup.events")).get("frozen", want) != want:
            if time.monotonic() > deadline:
                raise HostError(f"{self.path} did not freeze within {timeout}s")
            time.sleep(0.001)

    def memory_events(self) -> dict[str, int]:
        return read_keyed(self._f("memory.events"))

    def pids_events(self) -> dict[str, int]:
        return read_keyed(self._f("pids.events"))

    def stats(self) -> dict[str, Any]:
        cpu = read_keyed(self._f("cpu.stat"))
        mem_stat = read_keyed(self._f("memory.stat"))
        usage = read_int(self._f("memory.current")) or 0
        io_read = io_write = 0
        try:
            for line in read(self._f("io.stat")).splitlines():
                for field in line.split()[1:]:
                    key, _, value = field.partition("=")
                    if key == "rbytes":
                        io_read += int(value)
                    elif key == "wbytes":
                        io_write += int(value)
        except OSError:
            pass
        return {
            "cpu_usage_ns": cpu.get("usage_usec", 0) * 1000,
            "memory_usage": max(usage - mem_stat.get("inactive_file", 0), 0),
            "memory_limit": read_int(self._f("memory.max")),
            "pids": read_int(self._f("pids.current")) or 0,
            "pids_limit": read_int(self._f("pids.max")),
            "block_read": io_read,
            "block_write": io_write,
        }

    def remove(self) -> None:
        """Kill what is left, wait for the cgroup to empty, remove it."""
        try:  # the common case: the init's exit emptied it (its pid namespace died)
            os.rmdir(self.path)
            return
        except FileNotFoundError:
            return
        except OSError:  # busy, or cgroups below it: the thorough way
            pass
        if self.populated():
            with contextlib.suppress(OSError):
                self.thaw()
            self.kill()
        remove_tree(self.path)  # with any cgroups the container made below its own


def io_max_lines(r: Resources) -> list[str]:
    """One ``MAJ:MIN rbps=N wbps=N riops=N wiops=N`` line per throttled device."""
    keys = {"device_read_bps": "rbps", "device_write_bps": "wbps",
            "device_read_iops": "riops", "device_write_iops": "wiops"}
    per_device: dict[tuple[int, int], list[str]] = {}
    for field, key in keys.items():
        for major, minor, value in getattr(r, field) or ():
            per_device.setdefault((major, minor), []).append(
                f"{key}={value if value else 'max'}")
    return [f"{major}:{minor} {' '.join(parts)}"
            for (major, minor), parts in per_device.items()]


def _undo_setup(doc: dict[str, Any]) -> None:
    """Undo :meth:`V2Driver.setup` (its ``state()`` is ``doc``): with the supervisor
    moved into a leaf, disable the controllers we enabled and move whoever is still in
    the leaf (the supervisor, or the zygote after it died) back; remove leaf and base."""
    moved_from = doc.get("moved_from")
    for base in doc.get("bases", []):
        if moved_from is not None:
            subtree = os.path.join(base, "cgroup.subtree_control")
            with contextlib.suppress(OSError):
                for c in read(subtree).split():
                    write(subtree, f"-{c}")
            for c in doc.get("enabled_above", []):
                with contextlib.suppress(OSError):
                    write(os.path.join(moved_from, "cgroup.subtree_control"), f"-{c}")
            for pid in read_pids(os.path.join(base, "supervisor", "cgroup.procs")):
                with contextlib.suppress(OSError):
                    write(os.path.join(moved_from, "cgroup.procs"), str(pid))
        for path in (os.path.join(base, "supervisor"), base):
            with contextlib.suppress(HostError):
                rmdir_when_empty(path, timeout=0.5)


def recover(doc: dict[str, Any]) -> None:
    """Remove what a dead supervisor left below its bases, then the bases."""
    for base in doc.get("bases", []):
        if not os.path.isdir(base):
            continue
        for name in os.listdir(base):
            path = os.path.join(base, name)
            if not os.path.isdir(path) or name == "supervisor":
                continue
            for control, value in (("cgroup.freeze", "0"), ("cgroup.kill", "1")):
                with contextlib.suppress(OSError):
                    write(os.path.join(path, control), value)
            with contextlib.suppress(HostError):  # the next supervisor tries again
                remove_tree(path)
    _undo_setup(doc)
