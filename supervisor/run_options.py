"""Create params (from the CLI or any socket client) validated at the edge and turned
into :class:`CreateOptions`. Every bad value raises
:class:`~runtime.errors.SpecError` with one line naming the value."""

from __future__ import annotations

import os
import shutil
import signal
from collections.abc import Callable
from typing import Any, NamedTuple

from netplug import NetworkConfig
from runtime import capabilities, idmap, options
from runtime.cgroups.limits import Resources, parse_resources
from runtime.defaults import RunRequest
from runtime.errors import SpecError
from runtime.spec import IdMapping
from runtime.users import validate_user_option
from supervisor.restart import Backoff, RestartPolicy

INIT_CANDIDATES = ("catatonit", "tini", "tini-static")


class CreateOptions(NamedTuple):
    request: RunRequest
    name: str | None
    auto_remove: bool
    interactive: bool
    restart: RestartPolicy
    backoff: Backoff
    log_opts: tuple[str, ...]
    uid_mappings: tuple[IdMapping, ...]
    gid_mappings: tuple[IdMapping, ...]
    resources: Resources = Resources()
    cgroups: bool = True  # podman's --cgroups=enabled|disabled
    image_id: str | None = None
    stop_signal: int = signal.SIGTERM
    network: NetworkConfig = NetworkConfig("none")


# image ref -> (lower dirs top first, image defaults (env, entrypoint, cmd, workdir,
# user), image id)
ImageResolver = Callable[[str], tuple[tuple[str, ...], dict[str, Any], str]]


def parse_signal(value: Any) -> int:
    """A signal by number, name or SIG-name: 9, "KILL", "SIGKILL", "9"."""
    number = 0
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str):
        text = value.upper().removeprefix("SIG")
        number = int(text) if text.isdigit() else int(getattr(signal, f"SIG{text}", 0))
    if not 0 < number < signal.NSIG:
        raise SpecError(f"invalid signal {value!r}")
    return number


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


def security_options(values: list[str]) -> tuple[bool, bool]:
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


def _strings(params: dict[str, Any], key: str) -> list[str]:
    value = params.get(key) or []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise SpecError(f"invalid params: {key!r} must be a list of strings")
    return value


def _string(params: dict[str, Any], key: str, default: str | None = None) -> str | None:
    value = params.get(key, default)
    if value is not None and not isinstance(value, str):
        raise SpecError(f"invalid params: {key!r} must be a string")
    return value


def _flag(params: dict[str, Any], key: str) -> bool:
    value = params.get(key, False)
    if not isinstance(value, bool):
        raise SpecError(f"invalid params: {key!r} must be true or false")
    return value


def _seconds(params: dict[str, Any], key: str, default: float) -> float:
    value = params.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise SpecError(f"invalid params: {key!r} must be a number of seconds >= 0")
    return float(value)


# a network name -> whether it exists (named networks are the supervisor's)
NetworkResolver = Callable[[str], bool]


def network_config(params: dict[str, Any], defaults: dict[str, Any],
                   networks: NetworkResolver | None) -> NetworkConfig:
    """``--network``, ``-p``/``-P``, ``--dns``, ``--dns-search``, ``--add-host``,
    ``--network-alias``. Without a mode, podman's default: slirp4netns rootless, bridge
    as root (the supervisor records its own default in the params first)."""
    import ipaddress

    from netplug import parse_network, ports

    rootless = os.geteuid() != 0
    mode, net_options = parse_network(_string(params, "network"), rootless)
    config = NetworkConfig(mode, net_options)
    if config.named and (networks is None or not networks(mode)):
        raise SpecError(f"network {mode!r} not found (create it with `network create`)")
    if config.bridged and rootless:
        raise SpecError(f"--network {mode}: bridge networks need root (rootless "
                        "containers use slirp4netns)")
    mappings = [m for v in _strings(params, "publish") for m in ports.parse_publish(v)]
    if _flag(params, "publish_all"):
        mappings += ports.exposed_ports(defaults.get("exposed_ports") or [])
    if mappings and not config.plugged:
        raise SpecError(f"-p/--publish needs a network of the container's own: "
                        f"--network {mode} has no ports to publish")
    for server in _strings(params, "dns"):
        try:
            ipaddress.ip_address(server)
        except ValueError:
            raise SpecError(f"invalid --dns {server!r}: not an IP address") from None
    add_hosts = []
    for item in _strings(params, "add_hosts"):
        name, sep, address = item.partition(":")
        try:
            ipaddress.ip_address(address)
        except ValueError:
            raise SpecError(f"invalid --add-host {item!r}: expected NAME:IP") from None
        if not sep or not name:
            raise SpecError(f"invalid --add-host {item!r}: expected NAME:IP")
        add_hosts.append((name, address))
    aliases = tuple(_strings(params, "network_aliases"))
    if aliases and not config.named:
        raise SpecError("--network-alias is for named networks (`network create`)")
    if mode == "host" and (_strings(params, "dns") or _strings(params, "dns_search")):
        raise SpecError("--dns and --dns-search cannot be used with --network host")
    return config._replace(ports=ports.merge(mappings), aliases=aliases,
                           dns=tuple(_strings(params, "dns")),
                           dns_search=tuple(_strings(params, "dns_search")),
                           add_hosts=tuple(add_hosts))


def create_options(params: dict[str, Any],
                   images: ImageResolver | None = None,
                   networks: NetworkResolver | None = None) -> CreateOptions:
    """Validate create params; raises SpecError naming the first bad value."""
    command = _strings(params, "command")
    rootfs = _string(params, "rootfs")
    image = _string(params, "image_id") or _string(params, "image")
    lowers: tuple[str, ...] = ()
    image_id = None
    defaults: dict[str, Any] = {"env": [], "entrypoint": [], "cmd": [], "workdir": "",
                                "user": ""}
    if image:
        if rootfs:
            raise SpecError("give a rootfs or an image, not both")
        if images is None:
            raise SpecError("images are not available here")
        lowers, defaults, image_id = images(image)
        if not lowers:
            raise SpecError(f"image {image} has no layers: there is nothing to run")
        rootfs = lowers[0]
        # docker: a command replaces the image's Cmd; the Entrypoint stays in front,
        # unless --entrypoint replaces it (then the image's Cmd goes too)
        if "entrypoint" in params:
            entrypoint = _strings(params, "entrypoint")
            command = [*entrypoint, *command]
        else:
            command = [*defaults["entrypoint"], *(command or defaults["cmd"])]
    elif not rootfs or not os.path.isabs(rootfs):
        raise SpecError("invalid params: 'rootfs' must be an absolute path (or give an image)")
    if not command:
        raise SpecError("no command given" + (" and the image has no Cmd or Entrypoint"
                                               if image else ""))
    for cap in (*_strings(params, "cap_add"), *_strings(params, "cap_drop")):
        capabilities.normalize(cap)
    net = network_config(params, defaults, networks)
    network = "private" if net.plugged else net.mode
    user = _string(params, "user") or defaults["user"] or None
    if user is not None:
        validate_user_option(user)
    name = _string(params, "name")
    if name is not None:
        options.validate_name(name)
    hostname = _string(params, "hostname")
    if hostname is not None:
        options.validate_hostname(hostname)
    workdir = _string(params, "workdir") or defaults["workdir"] or "/"
    if not os.path.isabs(workdir):
        raise SpecError(f"invalid --workdir {workdir!r}: must be an absolute path")
    seccomp, nnp = security_options(_strings(params, "security_opt"))
    env = [*defaults["env"],
           *(e for e in (options.parse_env(v, {}) for v in _strings(params, "env")) if e)]
    uid_maps = tuple(idmap.parse_mapping_option(v) for v in _strings(params, "uidmap"))
    gid_maps = tuple(idmap.parse_mapping_option(v) for v in _strings(params, "gidmap"))
    if (uid_maps or gid_maps) and os.geteuid() != 0:
        raise SpecError("--uidmap/--gidmap are for root; rootless containers map the "
                        "user's /etc/subuid ranges")
    restart = RestartPolicy.parse(_string(params, "restart", "no") or "no")
    if restart.name != "no" and _flag(params, "auto_remove"):
        raise SpecError("conflicting options: --restart and --rm (a removed container "
                        "cannot restart)")
    backoff = Backoff(initial=_seconds(params, "restart_delay", 0.1),
                      max_delay=_seconds(params, "restart_max_delay", 60.0))
    resources_doc = params.get("resources") or {}
    if not isinstance(resources_doc, dict):
        raise SpecError("invalid params: 'resources' must be an object")
    resources = parse_resources(resources_doc)
    cgroups_mode = _string(params, "cgroups", "enabled")
    if cgroups_mode not in ("enabled", "disabled"):
        raise SpecError(f"invalid --cgroups {cgroups_mode!r}: supported are enabled and disabled")
    cgroups = cgroups_mode == "enabled"
    if not cgroups and resources.any():
        raise SpecError("--cgroups=disabled cannot be used with resource limits")
    log_opts = tuple(_strings(params, "log_opts"))
    _check_log_opts(log_opts)
    request = RunRequest(
        rootfs=os.path.normpath(rootfs),
        lowers=lowers,
        args=tuple(command),
        hostname=hostname or "",
        env=options.merge_env(env),
        workdir=os.path.normpath(workdir),
        user=user,
        group_add=tuple(_strings(params, "group_add")),
        cap_add=tuple(_strings(params, "cap_add")),
        cap_drop=tuple(_strings(params, "cap_drop")),
        read_only=_flag(params, "read_only"),
        volumes=tuple(options.parse_volume(v) for v in _strings(params, "volumes")),
        tmpfs=tuple(options.parse_tmpfs(v) for v in _strings(params, "tmpfs")),
        network=network,
        init_path=find_init(_string(params, "init_path")) if _flag(params, "init") else None,
        terminal=_flag(params, "tty"),
        ulimits=tuple(options.parse_ulimit(v) for v in _strings(params, "ulimits")),
        seccomp=seccomp,
        no_new_privileges=nnp,
        rootless=os.geteuid() != 0,
    )
    stop_signal = parse_signal(_string(params, "stop_signal") or defaults.get("stop_signal")
                               or "SIGTERM")
    return CreateOptions(
        request=request, stop_signal=stop_signal, network=net, name=name,
        auto_remove=_flag(params, "auto_remove"),
        interactive=_flag(params, "interactive"), restart=restart, backoff=backoff,
        log_opts=log_opts, uid_mappings=uid_maps, gid_mappings=gid_maps,
        resources=resources,
        cgroups=cgroups,
        image_id=image_id,
    )


def _check_log_opts(log_opts: tuple[str, ...]) -> None:
    from supervisor.logfile import parse_log_opts

    try:
        parse_log_opts(log_opts)
    except ValueError as exc:
        raise SpecError(f"invalid --log-opt: {exc}") from None
