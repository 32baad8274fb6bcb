"""Image references as docker parses them.

``busybox`` is ``docker.io/library/busybox:latest``; the first path component is a
registry host when it has a ``.`` or a ``:`` or is ``localhost``
(``localhost:5000/foo/bar:tag``, ``quay.io/org/img``); ``@sha256:<hex>`` pins a
digest. :attr:`Reference.name` is how a pulled image is named in the store: the
reference as written, with ``:latest`` added and without a digest.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from ..errors import SpecError

DOCKER_HUB = "docker.io"
DOCKER_HUB_API = "registry-1.docker.io"

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_PATH = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
_HOST = re.compile(r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?"
                   r"(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*|\[[0-9a-fA-F:]+\])"
                   r"(?::[0-9]+)?")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")


class Reference(NamedTuple):
    registry: str      # "docker.io", "localhost:5000"
    repository: str    # "library/busybox", "foo/bar"
    tag: str | None    # "latest" unless only a digest was given
    digest: str | None
    written: str       # the name part as the user wrote it (no tag, no digest)

    @property
    def api_host(self) -> str:
        """Where the registry's API answers (docker.io's is registry-1.docker.io)."""
        return DOCKER_HUB_API if self.registry == DOCKER_HUB else self.registry

    @property
    def name(self) -> str | None:
        """The store name of a pulled image (``localhost:5000/foo:tag``, ``busybox:latest``),
        None for a digest-only reference."""
        return f"{self.written}:{self.tag}" if self.tag else None

    @property
    def reference(self) -> str:
        """What goes in ``/v2/<repo>/manifests/<reference>``: the digest, else the tag."""
        return self.digest or self.tag or "latest"

    @property
    def canonical(self) -> str:
        text = f"{self.registry}/{self.repository}"
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text


def parse(text: str) -> Reference:
    """A reference, docker's way; :class:`SpecError` when it is not one."""
    def bad(why: str) -> SpecError:
        return SpecError(f"invalid reference {text!r}: {why}")

    rest, digest = text, None
    if "@" in rest:
        rest, _, digest = rest.partition("@")
        if not _DIGEST.fullmatch(digest):
            raise bad("expected @sha256:<64 hex digits>")
    tag = None
    slash = rest.rfind("/")
    colon = rest.rfind(":")
    if colon > slash:
        rest, tag = rest[:colon], rest[colon + 1:]
        if not _TAG.fullmatch(tag):
            raise bad("invalid tag")
    if not rest:
        raise bad("no name")
    first, sep, remainder = rest.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost" or first.startswith("[")):
        if not _HOST.fullmatch(first):
            raise bad("invalid registry host")
        registry, path = first, remainder
    else:
        registry, path = DOCKER_HUB, rest
    if not _PATH.fullmatch(path):
        raise bad("repository names are lower case letters, digits and separators")
    if registry == DOCKER_HUB and "/" not in path:
        path = f"library/{path}"
    if len(f"{registry}/{path}") > 255:
        raise bad("too long")
    if tag is None and digest is None:
        tag = "latest"
    return Reference(registry, path, tag, digest, rest)
