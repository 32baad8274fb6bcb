"""The pure parts of the OCI distribution API: manifests and indexes (docker v2 schema 2
and OCI), the platform an index resolves to, ``WWW-Authenticate`` challenges, and the
``auths`` file of ``login``. The network client is supervisor/registry.py."""

from __future__ import annotations

import base64
import json
import re
from typing import Any, NamedTuple

from ..errors import SpecError

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_SCHEMA1 = ("application/vnd.docker.distribution.manifest.v1+json",
                  "application/vnd.docker.distribution.manifest.v1+prettyjws")
MANIFESTS = (OCI_MANIFEST, DOCKER_MANIFEST)
INDEXES = (OCI_INDEX, DOCKER_LIST)
ACCEPT = ", ".join((*INDEXES, *MANIFESTS))

LAYER_TYPES = (
    "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
    "application/vnd.docker.image.rootfs.diff.tar",
)
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")


class Descriptor(NamedTuple):
    media_type: str
    digest: str
    size: int


class Manifest(NamedTuple):
    config: Descriptor
    layers: list[Descriptor]


def media_type(data: bytes, content_type: str | None) -> str:
    """A manifest's media type: its ``mediaType`` field, else the response's
    Content-Type, else guessed from its shape (OCI documents may omit the field)."""
    doc = _load(data)
    declared = doc.get("mediaType")
    if isinstance(declared, str) and declared:
        return declared
    ctype = (content_type or "").split(";")[0].strip()
    if ctype in (*MANIFESTS, *INDEXES):
        return ctype
    if doc.get("schemaVersion") == 1:
        return DOCKER_SCHEMA1[0]
    return OCI_INDEX if "manifests" in doc else OCI_MANIFEST


def is_index(kind: str) -> bool:
    return kind in INDEXES


def select_platform(data: bytes, os_name: str = "linux", arch: str = "amd64",
                    variant: str | None = None) -> Descriptor:
    """The entry of an index (manifest list) for the platform; an image for another
    platform only is refused. Entries without a platform are skipped (attestations)."""
    doc = _load(data)
    entries = doc.get("manifests")
    if not isinstance(entries, list):
        raise SpecError("image index has no manifests")
    found = []
    for entry in entries:
        platform = entry.get("platform") if isinstance(entry, dict) else None
        if not isinstance(platform, dict):
            continue
        if platform.get("os") != os_name or platform.get("architecture") != arch:
            continue
        if variant is not None and platform.get("variant") not in (None, variant):
            continue
        found.append(_descriptor(entry, "index entry"))
    if not found:
        have = sorted({f"{e['platform'].get('os')}/{e['platform'].get('architecture')}"
                       for e in entries if isinstance(e, dict)
                       and isinstance(e.get("platform"), dict)})
        raise SpecError(f"no image for {os_name}/{arch} in the index "
                        f"(it has: {', '.join(have) or 'none'})")
    if found[0].media_type in INDEXES:
        raise SpecError("nested image indexes are not supported")
    return found[0]


def parse_manifest(data: bytes, kind: str) -> Manifest:
    """An image manifest's config and layers (base first)."""
    if kind in DOCKER_SCHEMA1:
        raise SpecError("docker schema 1 manifests are not supported (the registry serves "
                        "a deprecated image format)")
    if kind not in MANIFESTS:
        raise SpecError(f"unsupported manifest type {kind!r}")
    doc = _load(data)
    if doc.get("schemaVersion") != 2:
        raise SpecError("image manifest: schemaVersion is not 2")
    layers = doc.get("layers")
    if not isinstance(layers, list):
        raise SpecError("image manifest has no layers")
    config = _descriptor(doc.get("config"), "config")
    parsed = [_descriptor(layer, "layer") for layer in layers]
    for layer in parsed:
        if layer.media_type not in LAYER_TYPES:
            raise SpecError(f"layer {layer.digest}: unsupported media type "
                            f"{layer.media_type!r}")
    return Manifest(config, parsed)


def config_diff_ids(config: bytes, layers: int) -> list[str]:
    doc = _load(config)
    try:
        diff_ids = list(doc["rootfs"]["diff_ids"])
    except (KeyError, TypeError):
        raise SpecError("image config has no rootfs.diff_ids") from None
    if len(diff_ids) != layers or not all(isinstance(d, str) and _DIGEST.fullmatch(d)
                                          for d in diff_ids):
        raise SpecError(f"image config lists {len(diff_ids)} layer(s), "
                        f"its manifest {layers}")
    return diff_ids


def _descriptor(value: Any, what: str) -> Descriptor:
    if not isinstance(value, dict):
        raise SpecError(f"image manifest: {what} is not a descriptor")
    digest, size, kind = value.get("digest"), value.get("size"), value.get("mediaType", "")
    if not isinstance(digest, str) or not _DIGEST.fullmatch(digest):
        raise SpecError(f"image manifest: {what} has an unsupported digest {digest!r}")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise SpecError(f"image manifest: {what} has no valid size")
    return Descriptor(str(kind), digest, size)


def _load(data: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(data)
    except ValueError:
        raise SpecError("registry answered a manifest that is not JSON") from None
    if not isinstance(doc, dict):
        raise SpecError("registry answered a manifest that is not a JSON object")
    return doc


# --- authentication ---------------------------------------------------------------------

class Challenge(NamedTuple):
    scheme: str                 # "bearer" or "basic", lower case
    params: dict[str, str]      # realm, service, scope...


_PARAM = re.compile(r'\s*([A-Za-z0-9_.-]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]*))\s*(?:,|$)')


def parse_challenge(header: str) -> Challenge:
    """``Bearer realm="https://auth.docker.io/token",service="registry.docker.io",
    scope="repository:library/busybox:pull"`` -> Challenge("bearer", {...})."""
    scheme, _, rest = header.strip().partition(" ")
    params: dict[str, str] = {}
    pos = 0
    rest = rest.strip()
    while pos < len(rest):
        match = _PARAM.match(rest, pos)
        if match is None:
            break
        quoted, bare = match.group(2), match.group(3)
        value = re.sub(r"\\(.)", r"\1", quoted) if quoted is not None else bare or ""
        params[match.group(1).lower()] = value
        pos = match.end()
    return Challenge(scheme.lower(), params)


def basic_credentials(username: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()


def auth_entry(auths: dict[str, Any], registry: str) -> tuple[str, str] | None:
    """The credentials of ``registry`` in an ``auth.json`` document (podman's and
    docker's ``{"auths": {"host": {"auth": base64(user:pass)}}}``)."""
    entries = auths.get("auths")
    if not isinstance(entries, dict):
        return None
    keys = [registry, f"https://{registry}", f"http://{registry}"]
    if registry == "docker.io":
        keys += ["https://index.docker.io/v1/", "index.docker.io", "registry-1.docker.io"]
    for key in keys:
        entry = entries.get(key)
        if isinstance(entry, dict) and isinstance(entry.get("auth"), str):
            try:
                user, sep, password = base64.b64decode(entry["auth"]).decode().partition(":")
            except ValueError:
                continue
            if sep:
                return user, password
    return None
