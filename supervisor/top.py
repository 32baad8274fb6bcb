"""``top``: the processes of a container, found by its pid namespace (so it works
with or without a cgroup), described from /proc as the host sees them."""

from __future__ import annotations

import contextlib
import os
import pwd
from typing import Any

from runtime.containerdir import proc_stat

_TICKS = os.sysconf("SC_CLK_TCK")


def processes_in_pid_namespace(init_pid: int) -> list[dict[str, Any]]:
    try:
        target = os.readlink(f"/proc/{init_pid}/ns/pid")
    except OSError:
        return []
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        pid = int(name)
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/{pid}/ns/pid") != target:
                continue
            out.append(_describe(pid))
    return sorted(out, key=lambda p: p["pid"])


def _describe(pid: int) -> dict[str, Any]:
    fields = proc_stat(pid)
    if fields is None:
        raise ProcessLookupError(pid)
    status: dict[str, str] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            status[key] = value.strip()
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        argv = [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    uid = int(status.get("Uid", "0").split()[0])
    try:
        user = pwd.getpwuid(uid).pw_name
    except KeyError:
        user = str(uid)
    seconds = (int(fields[11]) + int(fields[12])) // _TICKS
    return {
        "pid": pid,
        "ppid": int(fields[1]),
        "container_pid": int(status.get("NSpid", str(pid)).split()[-1]),
        "user": user,
        "state": fields[0].decode(),
        "time": f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}",
        "command": " ".join(argv) or f"[{status.get('Name', '?')}]",
    }
