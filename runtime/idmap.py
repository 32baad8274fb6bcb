"""User-namespace id maps: /etc/subuid parsing, the maps a container gets, writing them.

Rootless: container root is the user, container ids 1.. are the user's subordinate
range, written through the setuid helpers ``newuidmap``/``newgidmap``. Without ranges
or helpers, a single-id map (``0 UID 1``) is written directly, with setgroups denied.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterable, Sequence
from typing import NamedTuple

from .errors import HostError, SpecError
from .spec import IdMapping

SUBUID_FILE = "/etc/subuid"
SUBGID_FILE = "/etc/subgid"


class SubIdRange(NamedTuple):
    start: int
    size: int


class IdMapPlan(NamedTuple):
    uid_mappings: tuple[IdMapping, ...]
    gid_mappings: tuple[IdMapping, ...]
    warning: str | None = None

    @property
    def single_id(self) -> bool:
        return sum(m.size for m in self.uid_mappings) == 1


def parse_subid(text: str, user: str, uid: int) -> tuple[SubIdRange, ...]:
    """The ranges in a subuid/subgid file that belong to ``user`` (by name or number)."""
    ranges = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split(":")
        if len(parts) != 3 or parts[0] not in (user, str(uid)):
            continue
        try:
            start, size = int(parts[1]), int(parts[2])
        except ValueError:
            continue
        if size > 0:
            ranges.append(SubIdRange(start, size))
    return tuple(ranges)


def rootless_mappings(host_id: int, ranges: Sequence[SubIdRange]) -> tuple[IdMapping, ...]:
    """Container 0 is ``host_id``; container 1.. covers the subordinate ranges in order."""
    maps = [IdMapping(container_id=0, host_id=host_id, size=1)]
    next_id = 1
    for r in ranges:
        maps.append(IdMapping(container_id=next_id, host_id=r.start, size=r.size))
        next_id += r.size
    return tuple(maps)


def parse_mapping_option(value: str) -> IdMapping:
    """podman's ``--uidmap CONTAINER:HOST:SIZE``."""
    try:
        container_id, host_id, size = (int(p) for p in value.split(":"))
    except ValueError:
        raise SpecError(f"invalid id mapping {value!r}: want CONTAINER_ID:HOST_ID:SIZE") from None
    if min(container_id, host_id) < 0 or size < 1:
        raise SpecError(f"invalid id mapping {value!r}: ids must be >= 0 and size >= 1")
    return IdMapping(container_id, host_id, size)


def plan_rootless(uid: int, gid: int, user: str, subuid: str, subgid: str) -> IdMapPlan:
    """The maps for an unprivileged user, given the texts of /etc/subuid and /etc/subgid."""
    uid_ranges = parse_subid(subuid, user, uid)
    gid_ranges = parse_subid(subgid, user, uid)
    helpers = shutil.which("newuidmap") and shutil.which("newgidmap")
    if uid_ranges and gid_ranges and helpers:
        return IdMapPlan(rootless_mappings(uid, uid_ranges), rootless_mappings(gid, gid_ranges))
    reason = "no newuidmap/newgidmap (Debian package uidmap)" if not helpers else (
        f"no ranges for {user} in {SUBUID_FILE} and {SUBGID_FILE}"
    )
    return IdMapPlan(
        (IdMapping(0, uid, 1),),
        (IdMapping(0, gid, 1),),
        warning=f"{reason}: using a single-id user namespace map (only root in the container)",
    )


def plan_for_current_user(user: str) -> IdMapPlan:
    return plan_rootless(os.getuid(), os.getgid(), user, _read(SUBUID_FILE), _read(SUBGID_FILE))


def format_map(mappings: Iterable[IdMapping]) -> str:
    return "".join(f"{m.container_id} {m.host_id} {m.size}\n" for m in mappings)


def write_maps(pid: int, plan: IdMapPlan) -> None:
    """Write ``plan`` for the process ``pid``, which waits in its new user namespace."""
    if os.geteuid() == 0 or plan.single_id:
        _write_direct(pid, plan)
    else:
        _write_with_helpers(pid, plan)


def _write_direct(pid: int, plan: IdMapPlan) -> None:
    if os.geteuid() != 0:
        _write_proc(pid, "setgroups", "deny")
    _write_proc(pid, "gid_map", format_map(plan.gid_mappings))
    _write_proc(pid, "uid_map", format_map(plan.uid_mappings))


def _write_proc(pid: int, name: str, text: str) -> None:
    path = f"/proc/{pid}/{name}"
    try:
        fd = os.open(path, os.O_WRONLY)
        try:
            os.write(fd, text.encode())
        finally:
            os.close(fd)
    except OSError as exc:
        raise HostError(f"write {path}: {exc.strerror}") from exc


def _helper_args(tool: str, pid: int, mappings: Iterable[IdMapping]) -> list[str]:
    args = [tool, str(pid)]
    for m in mappings:
        args += [str(m.container_id), str(m.host_id), str(m.size)]
    return args


def _write_with_helpers(pid: int, plan: IdMapPlan) -> None:
    import subprocess

    procs = [
        subprocess.Popen(
            _helper_args(tool, pid, maps), stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        for tool, maps in (("newuidmap", plan.uid_mappings), ("newgidmap", plan.gid_mappings))
    ]
    for proc, tool in zip(procs, ("newuidmap", "newgidmap"), strict=True):
        _, err = proc.communicate()
        if proc.returncode != 0:
            message = err.decode(errors="replace").strip().splitlines()
            raise HostError(f"{tool} {pid}: {message[-1] if message else proc.returncode}")


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except FileNotFoundError:
        return ""


def run_in_user_namespace(plan: IdMapPlan | None, fn: Callable[[], bytes | None],
                          what: str, flags: int = 0) -> bytes:
    """Run ``fn`` as root of a fresh user namespace with ``plan``'s maps, in a child:
    how a rootless user removes or unpacks files that belong to its subordinate ids.
    ``plan`` None (root): a plain child, no user namespace. ``flags`` adds namespaces
    (CLONE_NEWNS for private mounts). Returns what ``fn`` returned; its error comes
    back as a HostError with its text."""
    from . import libc

    read_end, write_end = os.pipe()
    result_r, result_w = os.pipe()
    pid, pidfd = libc.clone3((libc.CLONE_NEWUSER if plan is not None else 0) | flags)
    if pid == 0:
        code = 1
        try:
            os.close(write_end)
            os.close(result_r)
            if os.read(read_end, 1) == b"g":
                if plan is not None:
                    os.setresgid(0, 0, 0)
                    os.setresuid(0, 0, 0)
                try:
                    out = fn() or b""
                    code = 0
                except BaseException as exc:
                    out = str(exc).encode(errors="replace")[:4000]
                os.write(result_w, out)
        except BaseException:
            code = 1
        finally:
            os._exit(code)
    os.close(read_end)
    os.close(result_w)
    os.close(pidfd)
    try:
        if plan is not None:
            write_maps(pid, plan)
        os.write(write_end, b"g")
    finally:
        os.close(write_end)
        chunks = []
        while chunk := os.read(result_r, 65536):
            chunks.append(chunk)
        os.close(result_r)
        _, status = os.waitpid(pid, 0)
    out = b"".join(chunks)
    if os.waitstatus_to_exitcode(status) != 0:
        detail = out.decode(errors="replace") or "failed in the user namespace"
        raise HostError(f"{what}: {detail}")
    return out
