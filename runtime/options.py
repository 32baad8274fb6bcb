"""Parsers for docker/podman-style run options, each turning one flag's text into a
spec value or raising :class:`~runtime.errors.SpecError` with a one-line message.
"""

from __future__ import annotations

import os
import resource

from .errors import SpecError
from .spec import Mount, Rlimit

RLIMIT_NAMES = {
    "core": "RLIMIT_CORE",
    "cpu": "RLIMIT_CPU",
    "data": "RLIMIT_DATA",
    "fsize": "RLIMIT_FSIZE",
    "locks": "RLIMIT_LOCKS",
    "memlock": "RLIMIT_MEMLOCK",
    "msgqueue": "RLIMIT_MSGQUEUE",
    "nice": "RLIMIT_NICE",
    "nofile": "RLIMIT_NOFILE",
    "nproc": "RLIMIT_NPROC",
    "rss": "RLIMIT_RSS",
    "rtprio": "RLIMIT_RTPRIO",
    "rttime": "RLIMIT_RTTIME",
    "sigpending": "RLIMIT_SIGPENDING",
    "stack": "RLIMIT_STACK",
    "as": "RLIMIT_AS",
}
_VOLUME_OPTIONS = {"ro", "rw", "z", "Z", "private", "rprivate", "shared", "rshared",
                   "slave", "rslave", "nosuid", "suid", "nodev", "dev", "noexec", "exec"}


def parse_ulimit(value: str) -> Rlimit:
    """``nofile=1024:2048`` or ``nofile=1024`` (soft = hard); ``-1`` is unlimited."""
    name, sep, limits = value.partition("=")
    if not sep or name not in RLIMIT_NAMES:
        raise SpecError(f"invalid ulimit {value!r}: want NAME=SOFT[:HARD], e.g. nofile=1024:2048")
    soft_text, _, hard_text = limits.partition(":")
    soft = _limit(soft_text, value)
    hard = _limit(hard_text, value) if hard_text else soft
    if soft > hard:
        raise SpecError(f"invalid ulimit {value!r}: soft limit exceeds hard limit")
    return Rlimit(type=RLIMIT_NAMES[name], soft=soft, hard=hard)


def _limit(text: str, whole: str) -> int:
    if text in ("-1", "unlimited"):
        return resource.RLIM_INFINITY
    try:
        number = int(text)
    except ValueError:
        raise SpecError(f"invalid ulimit {whole!r}: {text!r} is not a number") from None
    if number < 0:
        raise SpecError(f"invalid ulimit {whole!r}: negative limit")
    return number


def parse_volume(value: str) -> Mount:
    """``-v SRC:DST[:OPTS]``: a bind mount of an existing absolute host path."""
    parts = value.split(":")
    if len(parts) not in (2, 3) or not parts[0] or not parts[1]:
        raise SpecError(f"invalid volume {value!r}: want SRC:DST[:ro]")
    src, dst = parts[0], parts[1]
    opts = parts[2].split(",") if len(parts) == 3 else []
    if not os.path.isabs(src):
        raise SpecError(f"invalid volume {value!r}: source must be an absolute path "
                        "(named volumes are not supported yet)")
    if not os.path.isabs(dst):
        raise SpecError(f"invalid volume {value!r}: destination must be an absolute path")
    unknown = [o for o in opts if o not in _VOLUME_OPTIONS]
    if unknown:
        raise SpecError(f"invalid volume {value!r}: unknown option {unknown[0]!r}")
    if not os.path.exists(src):
        raise SpecError(f"invalid volume {value!r}: {src}: no such file or directory")
    mount_opts = ["rbind", *(o for o in opts if o not in ("z", "Z"))]
    if not any(o in mount_opts for o in ("private", "rprivate", "shared", "rshared",
                                         "slave", "rslave")):
        mount_opts.append("rprivate")
    return Mount(destination=os.path.normpath(dst), type="bind", source=os.path.realpath(src),
                 options=tuple(mount_opts))


def parse_tmpfs(value: str) -> Mount:
    """``--tmpfs DST[:OPTS]`` with docker's defaults (rw,noexec,nosuid,nodev)."""
    dst, _, opts = value.partition(":")
    if not os.path.isabs(dst):
        raise SpecError(f"invalid tmpfs {value!r}: destination must be an absolute path")
    options = ["rw", "noexec", "nosuid", "nodev", *(o for o in opts.split(",") if o)]
    return Mount(destination=os.path.normpath(dst), type="tmpfs", source="tmpfs",
                 options=tuple(options))


def parse_env(value: str, host_env: dict[str, str] | None = None) -> str | None:
    """``-e K=V``, or ``-e K`` taking K from the host environment (dropped when unset)."""
    name, sep, _ = value.partition("=")
    if not name or any(c.isspace() for c in name):
        raise SpecError(f"invalid environment variable {value!r}")
    if sep:
        return value
    env = os.environ if host_env is None else host_env
    return f"{name}={env[name]}" if name in env else None


def read_env_file(path: str, host_env: dict[str, str] | None = None) -> list[str]:
    """``--env-file``: one K=V (or K, from ``host_env``) a line; blank lines and ``#``
    comments skipped."""
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except OSError as exc:
        raise SpecError(f"env file {path}: {exc.strerror}") from None
    result = []
    for line in lines:
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            parsed = parse_env(stripped, host_env)
            if parsed is not None:
                result.append(parsed)
    return result


def merge_env(*groups: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """Later groups override earlier ones by variable name; order of first sight kept."""
    merged: dict[str, str] = {}
    for group in groups:
        for item in group:
            merged[item.partition("=")[0]] = item
    return tuple(merged.values())


def validate_hostname(name: str) -> str:
    if not name or len(name) > 64 or not all(c.isalnum() or c in "-._" for c in name):
        raise SpecError(f"invalid hostname {name!r}")
    return name


def validate_name(name: str) -> str:
    """Container names as docker allows them: ``[a-zA-Z0-9][a-zA-Z0-9_.-]*``."""
    if (not name or not name[0].isalnum() or not name.isascii()
            or not all(c.isalnum() or c in "_.-" for c in name) or len(name) > 128):
        raise SpecError(f"invalid container name {name!r}: "
                        "only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed")
    return name
