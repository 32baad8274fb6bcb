"""From a container's create params to what the zygote needs: the id map plan, the
container's directories and /etc files, the spec, and the init's host-side config."""

from __future__ import annotations

import os
import pwd
from typing import Any, NamedTuple

from netplug import NetworkConfig
from runtime import capabilities, idmap, seccomp
from runtime.containerdir import ContainerDir, read_text
from runtime.defaults import RunRequest, build_spec
from runtime.errors import HostError, SpecError
from runtime.idmap import IdMapPlan
from runtime.init import InitConfig
from runtime.log import get_logger
from runtime.spec import ContainerSpec, IdMapping, Seccomp

log = get_logger("myctr.prepare")


class Prepared(NamedTuple):
    spec: ContainerSpec
    config: InitConfig
    plan: IdMapPlan | None
    oci: dict[str, Any] | None = None  # spec.to_oci(), made once (the store, the zygote)


def id_map_plan(uid_mappings: tuple[IdMapping, ...] = (),
                gid_mappings: tuple[IdMapping, ...] = ()) -> IdMapPlan | None:
    """Rootless: the user's subordinate ranges. Root: none (the host's ids), unless
    ``--uidmap``/``--gidmap`` ask for a user namespace."""
    if os.geteuid() != 0:
        plan = idmap.plan_for_current_user(pwd.getpwuid(os.getuid()).pw_name)
        if plan.warning:
            log.warning("single-id user namespace", reason=plan.warning)
        return plan
    if uid_mappings or gid_mappings:
        return IdMapPlan(uid_mappings or gid_mappings, gid_mappings or uid_mappings)
    return None


def host_id(mappings: tuple[IdMapping, ...]) -> int:
    """The host id that container id 0 maps to."""
    for m in mappings:
        if m.container_id == 0:
            return m.host_id
    raise SpecError("the id map must map container id 0 (root)")


def seccomp_profile(request: RunRequest) -> Seccomp | None:
    if not request.seccomp:
        return None
    return seccomp.default_profile(capabilities.resolve(request.cap_add, request.cap_drop))


def compile_seccomp(profile: Seccomp | None) -> bytes | None:
    if profile is None:
        return None
    try:
        return seccomp.export_bpf(profile)
    except OSError as exc:
        raise HostError(f"seccomp: {exc.strerror or exc}") from exc


def make_dirs(cdir: ContainerDir, plan: IdMapPlan | None) -> None:
    """The container's directory, handed to a remapped root when there is one."""
    cdir.make_dirs()
    if plan is not None and os.geteuid() == 0:
        cdir.hand_over(host_id(plan.uid_mappings), host_id(plan.gid_mappings))


def etc_texts(request: RunRequest, network: NetworkConfig) -> dict[str, str]:
    """/etc/hostname, /etc/hosts and /etc/resolv.conf before the network is up (the
    hosts file gets the container's address once its plug reports it)."""
    from netplug.etc import render_resolv

    nameservers = list(network.dns)
    if not nameservers and network.mode == "slirp4netns":
        # the host's loopback resolver is out of reach: slirp4netns's own (at .3 of
        # its network, which cidr= may move)
        from netplug.slirp import Settings

        nameservers = [Settings.from_config(network).dns]
    return {
        "hostname": f"{request.hostname}\n",
        "hosts": hosts_text(request, network, "", ""),
        "resolv.conf": render_resolv(read_text("/etc/resolv.conf"),
                                     keep_loopback=network.mode == "host",
                                     nameservers=nameservers, search=network.dns_search),
    }


def hosts_text(request: RunRequest, network: NetworkConfig, address: str, name: str) -> str:
    """The container's own part of /etc/hosts: localhost, itself (at its address once
    known), and --add-host entries."""
    from netplug.etc import render_hosts

    names = " ".join(dict.fromkeys(n for n in (request.hostname, name) if n))
    own = [(address, names)] if address else []
    return render_hosts(request.hostname, own, network.add_hosts)


def prepare(cdir: ContainerDir, request: RunRequest, plan: IdMapPlan | None,
            interactive: bool, etc: dict[str, str] | None = None,
            volatile: bool = False) -> Prepared:
    """Write the container's /etc files; build what the init needs."""
    if not os.path.isdir(request.rootfs):
        raise SpecError(f"rootfs {request.rootfs}: no such directory")
    files = cdir.write_etc_files(etc or etc_texts(request, NetworkConfig(request.network)))
    profile = seccomp_profile(request)
    spec = build_spec(request, plan, files, profile)
    oci = spec.to_oci()
    config = InitConfig(
        lower=request.lowers or (os.path.realpath(request.rootfs),), upper=cdir.upper,
        work=cdir.work,
        merged=cdir.merged, stdin_devnull=not interactive, volatile=volatile,
        seccomp_bpf=compile_seccomp(profile),
    )
    return Prepared(spec, config, plan, oci)
