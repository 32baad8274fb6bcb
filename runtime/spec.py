"""The container spec: immutable typed records shaped like the OCI runtime-spec
``config.json``.

Field names follow the OCI spec in snake_case; :meth:`ContainerSpec.to_oci` and
:meth:`ContainerSpec.from_oci` convert to and from the JSON document, so a bundle
written by another tool can be read here and ours can be read by crun or runc.

Two small extensions, both kept under ``annotations`` in the OCI document:
``Process.user_name`` (a name or ``name:group`` resolved against the container's own
/etc/passwd once the root is pivoted) and ``Process.init_path`` (a host init such as
catatonit bind-mounted as PID 1).
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

# Records are typing.NamedTuple rather than frozen dataclasses: the same immutable,
# typed, hashable values, created at a fifth of the import cost (``myctr run``'s cold
# start pays for every class: ~0.35 ms per frozen dataclass against ~0.07 ms here).

OCI_VERSION = "1.0.2"
NAMESPACE_TYPES = ("user", "mount", "pid", "uts", "ipc", "network", "cgroup")


class IdMapping(NamedTuple):
    container_id: int
    host_id: int
    size: int


class User(NamedTuple):
    uid: int = 0
    gid: int = 0
    additional_gids: tuple[int, ...] = ()


class Rlimit(NamedTuple):
    type: str  # "RLIMIT_NOFILE"
    soft: int
    hard: int


class Capabilities(NamedTuple):
    bounding: tuple[str, ...] = ()
    effective: tuple[str, ...] = ()
    inheritable: tuple[str, ...] = ()
    permitted: tuple[str, ...] = ()
    ambient: tuple[str, ...] = ()


class Process(NamedTuple):
    args: tuple[str, ...]
    env: tuple[str, ...] = ()
    cwd: str = "/"
    user: User = User()
    user_name: str | None = None
    group_add: tuple[str, ...] = ()
    terminal: bool = False
    capabilities: Capabilities = Capabilities()
    rlimits: tuple[Rlimit, ...] = ()
    no_new_privileges: bool = False
    init_path: str | None = None


class Root(NamedTuple):
    path: str
    readonly: bool = False


class Mount(NamedTuple):
    destination: str
    type: str
    source: str
    options: tuple[str, ...] = ()


class Namespace(NamedTuple):
    type: str
    path: str | None = None


class SeccompArg(NamedTuple):
    index: int  # type: ignore[assignment]  # the OCI name; shadows tuple.index
    value: int
    op: str  # SCMP_CMP_MASKED_EQ, ...
    value_two: int = 0


class SeccompRule(NamedTuple):
    names: tuple[str, ...]
    action: str  # SCMP_ACT_ERRNO, SCMP_ACT_ALLOW, ...
    errno_ret: int | None = None
    args: tuple[SeccompArg, ...] = ()


class Seccomp(NamedTuple):
    default_action: str
    architectures: tuple[str, ...] = ()
    syscalls: tuple[SeccompRule, ...] = ()
    default_errno_ret: int | None = None


class Linux(NamedTuple):
    namespaces: tuple[Namespace, ...] = ()
    uid_mappings: tuple[IdMapping, ...] = ()
    gid_mappings: tuple[IdMapping, ...] = ()
    masked_paths: tuple[str, ...] = ()
    readonly_paths: tuple[str, ...] = ()
    seccomp: Seccomp | None = None
    sysctl: tuple[tuple[str, str], ...] = ()

    def has_namespace(self, ns_type: str) -> bool:
        return any(ns.type == ns_type for ns in self.namespaces)


class ContainerSpec(NamedTuple):
    process: Process
    root: Root
    hostname: str = ""
    mounts: tuple[Mount, ...] = ()
    linux: Linux = Linux()
    annotations: tuple[tuple[str, str], ...] = ()
    oci_version: str = OCI_VERSION

    @property
    def uses_user_namespace(self) -> bool:
        return self.linux.has_namespace("user")

    def to_oci(self) -> dict[str, Any]:
        """The spec as an OCI ``config.json`` document."""
        return _to_oci(self)

    @classmethod
    def from_oci(cls, doc: dict[str, Any]) -> ContainerSpec:
        """Read an OCI ``config.json`` document (unknown fields are ignored)."""
        return _from_oci(doc)


# --- OCI JSON conversion ------------------------------------------------------------

_ANNOTATION_USER = "io.myctr.user"
_ANNOTATION_INIT = "io.myctr.init"
_ANNOTATION_GROUP_ADD = "io.myctr.group-add"


@functools.cache  # a few dozen field names, each converted per spec
def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.capitalize() for part in rest)


_seccomp_docs: dict[int, tuple[Seccomp, dict[str, Any]]] = {}


def _plain(value: Any) -> Any:
    if isinstance(value, Seccomp):
        return _seccomp_doc(value)
    if hasattr(value, "_fields"):
        return _record_doc(value)
    if isinstance(value, tuple):
        return [_plain(item) for item in value]
    return value


def _record_doc(value: Any) -> dict[str, Any]:
    """A record's fields, camelCased, without the empty ones."""
    return {
        _camel(name): _plain(getattr(value, name))
        for name in value._fields
        if getattr(value, name) not in (None, ())
    }


def _seccomp_doc(profile: Seccomp) -> dict[str, Any]:
    """A profile's document, converted once per profile object: the default profile is
    one object per capability set (cached by its maker), and its ~500 rule fields are
    most of a spec's conversion. The document is shared: readers must not change it."""
    known = _seccomp_docs.get(id(profile))
    if known is not None and known[0] is profile:
        return known[1]
    doc = _record_doc(profile)
    if len(_seccomp_docs) >= 32:
        _seccomp_docs.clear()
    _seccomp_docs[id(profile)] = (profile, doc)  # held here, so its id is not reused
    return doc


def _to_oci(spec: ContainerSpec) -> dict[str, Any]:
    process = _plain(
        spec.process._replace(user_name=None, init_path=None, group_add=())
    )
    process["user"] = {"uid": spec.process.user.uid, "gid": spec.process.user.gid}
    if spec.process.user.additional_gids:
        process["user"]["additionalGids"] = list(spec.process.user.additional_gids)
    process["rlimits"] = [_plain(r) for r in spec.process.rlimits]
    process["noNewPrivileges"] = spec.process.no_new_privileges
    process["terminal"] = spec.process.terminal
    annotations = dict(spec.annotations)
    if spec.process.user_name is not None:
        annotations[_ANNOTATION_USER] = spec.process.user_name
    if spec.process.init_path is not None:
        annotations[_ANNOTATION_INIT] = spec.process.init_path
    if spec.process.group_add:
        annotations[_ANNOTATION_GROUP_ADD] = ",".join(spec.process.group_add)
    linux = _plain(spec.linux)
    linux.pop("sysctl", None)
    if spec.linux.sysctl:
        linux["sysctl"] = dict(spec.linux.sysctl)
    for key in ("uidMappings", "gidMappings"):
        linux[key] = [
            {"containerID": m["containerId"], "hostID": m["hostId"], "size": m["size"]}
            for m in linux.get(key, [])
        ]
    doc: dict[str, Any] = {
        "ociVersion": spec.oci_version,
        "process": process,
        "root": {"path": spec.root.path, "readonly": spec.root.readonly},
        "hostname": spec.hostname,
        "mounts": [_plain(m) for m in spec.mounts],
        "linux": linux,
    }
    if annotations:
        doc["annotations"] = annotations
    return doc


def _from_oci(doc: dict[str, Any]) -> ContainerSpec:
    proc = doc.get("process", {})
    linux = doc.get("linux", {})
    annotations = dict(doc.get("annotations", {}))
    caps = proc.get("capabilities", {})
    user = proc.get("user", {})
    seccomp = linux.get("seccomp")
    return ContainerSpec(
        oci_version=doc.get("ociVersion", OCI_VERSION),
        process=Process(
            args=tuple(proc.get("args", ())),
            env=tuple(proc.get("env", ())),
            cwd=proc.get("cwd", "/"),
            user=User(
                uid=user.get("uid", 0),
                gid=user.get("gid", 0),
                additional_gids=tuple(user.get("additionalGids", ())),
            ),
            user_name=annotations.pop(_ANNOTATION_USER, None),
            init_path=annotations.pop(_ANNOTATION_INIT, None),
            group_add=tuple(g for g in annotations.pop(_ANNOTATION_GROUP_ADD, "").split(",") if g),
            terminal=bool(proc.get("terminal", False)),
            capabilities=Capabilities(
                **{k: tuple(caps.get(k, ())) for k in
                   ("bounding", "effective", "inheritable", "permitted", "ambient")}
            ),
            rlimits=tuple(
                Rlimit(type=r["type"], soft=r["soft"], hard=r["hard"])
                for r in proc.get("rlimits", ())
            ),
            no_new_privileges=bool(proc.get("noNewPrivileges", False)),
        ),
        root=Root(path=doc["root"]["path"], readonly=bool(doc["root"].get("readonly", False))),
        hostname=doc.get("hostname", ""),
        mounts=tuple(
            Mount(
                destination=m["destination"],
                type=m.get("type", "bind"),
                source=m.get("source", ""),
                options=tuple(m.get("options", ())),
            )
            for m in doc.get("mounts", ())
        ),
        linux=Linux(
            namespaces=tuple(
                Namespace(type=n["type"], path=n.get("path")) for n in linux.get("namespaces", ())
            ),
            uid_mappings=_mappings(linux.get("uidMappings", ())),
            gid_mappings=_mappings(linux.get("gidMappings", ())),
            masked_paths=tuple(linux.get("maskedPaths", ())),
            readonly_paths=tuple(linux.get("readonlyPaths", ())),
            seccomp=_seccomp(seccomp) if seccomp else None,
            sysctl=tuple(sorted(linux.get("sysctl", {}).items())),
        ),
        annotations=tuple(sorted(annotations.items())),
    )


def _mappings(items: Any) -> tuple[IdMapping, ...]:
    return tuple(
        IdMapping(container_id=m["containerID"], host_id=m["hostID"], size=m["size"])
        for m in items
    )


def _seccomp(doc: dict[str, Any]) -> Seccomp:
    return Seccomp(
        default_action=doc["defaultAction"],
        default_errno_ret=doc.get("defaultErrnoRet"),
        architectures=tuple(doc.get("architectures", ())),
        syscalls=tuple(
            SeccompRule(
                names=tuple(rule["names"]),
                action=rule["action"],
                errno_ret=rule.get("errnoRet"),
                args=tuple(
                    SeccompArg(
                        index=a["index"], value=a["value"], op=a["op"],
                        value_two=a.get("valueTwo", 0),
                    )
                    for a in rule.get("args", ())
                ),
            )
            for rule in doc.get("syscalls", ())
        ),
    )


__all__ = [
    "NAMESPACE_TYPES",
    "Capabilities",
    "ContainerSpec",
    "IdMapping",
    "Linux",
    "Mount",
    "Namespace",
    "Process",
    "Rlimit",
    "Root",
    "Seccomp",
    "SeccompArg",
    "SeccompRule",
    "User",
]
