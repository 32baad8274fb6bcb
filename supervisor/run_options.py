"""``myctr run``'s flags, validated at the edge and turned into a
:class:`~supervisor.foreground.ForegroundRun`. Every bad value raises
:class:`~runtime.errors.SpecError` with one line naming the flag's value."""

from __future__ import annotations

import os
import shutil
from typing import Any

from runtime import capabilities, idmap, options
from runtime.defaults import RunRequest
from runtime.errors import SpecError
from runtime.users import validate_user_option
from supervisor.foreground import ForegroundRun

INIT_CANDIDATES = ("catatonit", "tini", "tini-static")
NETWORK_MODES = ("none", "host")


def find_init(explicit: str | None) -> str:
    if explicit:
        if not os.access(explicit, os.X_OK):
            raise SpecError(f"--init-path {explicit}: not an executable file")
        return os.path.realpath(explicit)
    for name in INIT_CANDIDATES:
        found = shutil.which(name, path="/usr/bin:/usr/libexec/podman:/usr/local/bin:/bin")
        if found:
            return os.path.realpath(found)
    raise SpecError("--init: no catatonit or tini found (install the Debian package catatonit)")


def security_options(values: tuple[str, ...]) -> tuple[bool, bool]:
    """(seccomp enabled, no_new_privileges) from ``--security-opt`` values."""
    seccomp, nnp = True, False
    for value in values:
        key, _, arg = value.partition("=") if "=" in value else value.partition(":")
        if key == "seccomp" and arg == "unconfined":
            seccomp = False
        elif key == "no-new-privileges" and arg in ("", "true"):
            nnp = True
        elif key == "no-new-privileges" and arg == "false":
            nnp = False
        elif key == "label" and arg == "disable":
            continue
        else:
            raise SpecError(f"invalid --security-opt {value!r}: supported are "
                            "seccomp=unconfined and no-new-privileges[:true|false]")
    return seccomp, nnp


def foreground_run_from_options(opts: dict[str, Any]) -> ForegroundRun:
    for cap in (*opts["cap_add"], *opts["cap_drop"]):
        capabilities.normalize(cap)
    if opts["network"] not in NETWORK_MODES:
        raise SpecError(f"invalid --network {opts['network']!r}: supported are "
                        + ", ".join(NETWORK_MODES))
    if opts["user"] is not None:
        validate_user_option(opts["user"])
    if opts["name"] is not None:
        options.validate_name(opts["name"])
    if opts["hostname"] is not None:
        options.validate_hostname(opts["hostname"])
    if not os.path.isabs(opts["workdir"]):
        raise SpecError(f"invalid --workdir {opts['workdir']!r}: must be an absolute path")
    seccomp, nnp = security_options(opts["security_opt"])
    env_files = [e for path in opts["env_file"] for e in options.read_env_file(path)]
    env_flags = [e for e in (options.parse_env(v) for v in opts["env"]) if e is not None]
    uid_maps = tuple(idmap.parse_mapping_option(v) for v in opts["uidmap"])
    gid_maps = tuple(idmap.parse_mapping_option(v) for v in opts["gidmap"])
    if (uid_maps or gid_maps) and os.geteuid() != 0:
        raise SpecError("--uidmap/--gidmap are for root; rootless containers map the "
                        "user's /etc/subuid ranges")
    request = RunRequest(
        rootfs=os.path.abspath(opts["rootfs"]),
        args=tuple(opts["command"]),
        hostname=opts["hostname"] or "",
        env=options.merge_env(env_files, env_flags),
        workdir=os.path.normpath(opts["workdir"]),
        user=opts["user"],
        group_add=tuple(opts["group_add"]),
        cap_add=tuple(opts["cap_add"]),
        cap_drop=tuple(opts["cap_drop"]),
        read_only=opts["read_only"],
        volumes=tuple(options.parse_volume(v) for v in opts["volume"]),
        tmpfs=tuple(options.parse_tmpfs(v) for v in opts["tmpfs"]),
        network=opts["network"],
        init_path=find_init(opts["init_path"]) if opts["use_init"] else None,
        terminal=opts["tty"],
        ulimits=tuple(options.parse_ulimit(v) for v in opts["ulimit"]),
        seccomp=seccomp,
        no_new_privileges=nnp,
        rootless=os.geteuid() != 0,
    )
    return ForegroundRun(
        request=request, name=opts["name"], auto_remove=opts["auto_remove"],
        interactive=opts["interactive"], uid_mappings=uid_maps, gid_mappings=gid_maps,
    )
