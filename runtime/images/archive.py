"""Image archives as podman and docker write them: ``docker-archive`` (``manifest.json``
listing each image's ``Config``, ``RepoTags`` and ``Layers``) and ``oci-archive`` (an OCI
image layout: ``oci-layout``, ``index.json`` naming each manifest with the annotation
``org.opencontainers.image.ref.name``, ``blobs/sha256/*``).

Reading (:func:`read_archive`) takes an untrusted stream, plain or gzip, in one pass
(docker and podman put ``manifest.json`` last): nothing is extracted by name; small
members (JSON documents) are kept in memory within a bound, larger ones are copied
straight into the blob store under their digest, their uncompressed digest computed on
the way so a layer's ``diff_id`` is checked before anything is unpacked. Member count,
header and document sizes are bounded. What the caller gets is the images to record:
config bytes as they were (the image id is their digest), the layers (blobs already in
the store) and the names. Blobs no image ends up using are the store's prune's to
remove, as after a crash.

Writing (:func:`write_archive`) streams a tar to a file object: docker-archive as
podman writes it (``<diff_id hex>.tar`` uncompressed layers, ``<id hex>.json`` config,
legacy ``<v1 id>/`` dirs, ``manifest.json``, ``repositories``), oci-archive with the
stored manifest and blobs as-is. Member times are 0 (the same images give the same
archive).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import posixpath
import tarfile
import zlib
from collections.abc import Iterable, Iterator
from typing import IO, Any, NamedTuple

from ..errors import SpecError
from .distribution import INDEXES, MANIFESTS
from .layer import DEFAULT_LIMITS, LayerError, _BoundedTarInfo
from .store import (
    LAYER_GZIP_MEDIA_TYPE,
    LAYER_MEDIA_TYPE,
    MANIFEST_MEDIA_TYPE,
    Image,
    ImageStore,
    normalize_name,
)

DOCKER_ARCHIVE = "docker-archive"
OCI_ARCHIVE = "oci-archive"
FORMATS = (DOCKER_ARCHIVE, OCI_ARCHIVE)
REF_NAME = "org.opencontainers.image.ref.name"
CONTAINERD_NAME = "io.containerd.image.name"  # docker >= 25 writes the full name here

MAX_MEMBERS = 100_000
MAX_DOCUMENT = 4 << 20  # a member kept in memory (manifest, index, config, ...)
MAX_IN_MEMORY = 64 << 20  # all of them together; beyond, members go to the blob store
MAX_LINK_HOPS = 16
CHUNK = 1 << 20

LAYER_MEDIA_TYPES = (LAYER_MEDIA_TYPE, LAYER_GZIP_MEDIA_TYPE,
                     "application/vnd.docker.image.rootfs.diff.tar.gzip",
                     "application/vnd.oci.image.layer.nondistributable.v1.tar",
                     "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
                     "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip")
GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


class ArchiveError(SpecError):
    """The archive is refused: not a tar, not an image archive, or inconsistent."""


class LoadLayer(NamedTuple):
    digest: str  # the blob, in the store already
    size: int
    diff_id: str  # checked: the uncompressed stream's digest
    media_type: str


class LoadImage(NamedTuple):
    config: bytes  # as in the archive: sha256 of it is the image id
    layers: list[LoadLayer]
    names: list[str]
    manifest: bytes | None  # oci-archive: the manifest as-is; docker-archive: none


class _Blob(NamedTuple):
    digest: str
    size: int
    diff_id: str | None  # None: not a layer we can read (zstd, broken gzip)
    head: bytes


# --- reading ----------------------------------------------------------------------------


def read_archive(stream: IO[bytes], store: ImageStore) -> tuple[str, list[LoadImage]]:
    """The archive's format and images. Large members land in the store's blobs as
    they are read; raises :class:`ArchiveError` (one line) for anything wrong."""
    members = _Members(store)
    members.read(stream)
    if "manifest.json" in members.names:
        return DOCKER_ARCHIVE, _docker_images(members)
    if "index.json" in members.names:
        return OCI_ARCHIVE, _oci_images(members)
    raise ArchiveError("not an image archive: no manifest.json (docker-archive) and no "
                       "index.json (oci-archive)")


class _Members:
    """The archive's regular members by normalized name: bytes, or a blob in the store;
    links as aliases."""

    def __init__(self, store: ImageStore) -> None:
        self.store = store
        self.data: dict[str, bytes] = {}
        self.blobs: dict[str, _Blob] = {}
        self.links: dict[str, str] = {}
        self.in_memory = 0

    @property
    def names(self) -> set[str]:
        return set(self.data) | set(self.blobs) | set(self.links)

    def read(self, stream: IO[bytes]) -> None:
        buffered: Any = stream if hasattr(stream, "peek") else io.BufferedReader(
            stream)
        import gzip

        try:
            head = buffered.peek(2)[:2]
            if not head:
                raise ArchiveError("not a tar archive: the input is empty")
            partial: Any = _Partial(buffered)
            source: Any = gzip.GzipFile(fileobj=partial) if head == GZIP_MAGIC else partial
            archive = tarfile.open(fileobj=source, mode="r|",  # noqa: SIM115 - closed below
                                   tarinfo=_BoundedTarInfo)
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise ArchiveError(f"not a tar archive: {exc}") from None
        with archive:
            try:
                for count, info in enumerate(archive, 1):
                    if count > MAX_MEMBERS:
                        raise ArchiveError(f"more than {MAX_MEMBERS} members; refused")
                    self._member(archive, info)
            except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
                raise ArchiveError(f"broken archive: {exc}") from None
            except LayerError as exc:
                raise ArchiveError(str(exc)) from None

    def _member(self, archive: tarfile.TarFile, info: tarfile.TarInfo) -> None:
        name = member_name(info.name)
        if info.issym():
            self.links[name] = member_name(posixpath.join(posixpath.dirname(name),
                                                          info.linkname))
        elif info.islnk():
            self.links[name] = member_name(info.linkname)
        elif info.isreg():
            src = archive.extractfile(info)
            assert src is not None
            if info.size <= MAX_DOCUMENT and self.in_memory + info.size <= MAX_IN_MEMORY:
                self.in_memory += info.size
                self.data[name] = src.read()
            else:
                self.blobs[name] = _copy_to_store(self.store, src)
        # directories and anything else: not part of an image archive's contents

    def resolve(self, name: str) -> str:
        name = member_name(name)
        for _ in range(MAX_LINK_HOPS):
            if name not in self.links:
                break
            name = self.links[name]
        if name not in self.data and name not in self.blobs:
            raise ArchiveError(f"the archive has no member {name!r}")
        return name

    def document(self, name: str, what: str) -> bytes:
        name = self.resolve(name)
        if name in self.data:
            return self.data[name]
        blob = self.blobs[name]
        if blob.size > MAX_DOCUMENT:
            raise ArchiveError(f"{what} {name!r} is {blob.size} bytes; refused")
        return self.store.read_blob(blob.digest)

    def json(self, name: str, what: str) -> Any:
        try:
            return json.loads(self.document(name, what))
        except ValueError:
            raise ArchiveError(f"{what} {name!r} is not valid JSON") from None

    def blob(self, name: str) -> _Blob:
        """The member as a blob in the store (small ones are put there now)."""
        name = self.resolve(name)
        if name not in self.blobs:
            self.blobs[name] = _copy_to_store(self.store, io.BytesIO(self.data[name]))
        return self.blobs[name]


class _Partial:
    """Each read returns what one read of the source gives: a pipe's writer may pause
    at a member's end, and that member is then complete (in the store) meanwhile."""

    def __init__(self, buffered: Any) -> None:
        self.buffered = buffered

    def read(self, size: int = -1) -> bytes:
        return bytes(self.buffered.read1(size if size >= 0 else CHUNK))


def member_name(name: str) -> str:
    """A member's name normalized (``./a//b`` -> ``a/b``, ``d/../f`` -> ``f``); one that
    leaves the archive (``../f``) is refused."""
    norm = posixpath.normpath(name.lstrip("/"))
    if norm in (".", "..") or norm.startswith("../"):
        raise ArchiveError(f"archive member name {name!r} refused")
    return norm


def _copy_to_store(store: ImageStore, src: IO[bytes]) -> _Blob:
    """Copy a member into the blob store under its digest; its uncompressed digest
    too (gzip decompressed on the way, bounded)."""
    diff = _DiffDigest()
    head = bytearray()

    def observe(chunk: bytes) -> None:
        if len(head) < 4:
            head.extend(chunk[:4 - len(head)])
        diff.feed(chunk)

    name, size = store.put_blob_stream(src, observe)
    return _Blob(name, size, diff.result(name), bytes(head))


class _DiffDigest:
    """sha256 of a layer's uncompressed tar stream, fed its (maybe gzip) bytes."""

    def __init__(self) -> None:
        self.mode = ""  # "" undecided, "plain", "gzip", "other"
        self.sha = hashlib.sha256()
        self.inflate = zlib.decompressobj(31)
        self.total = 0
        self.broken = False

    def feed(self, chunk: bytes) -> None:
        if not self.mode:
            self.mode = ("gzip" if chunk[:2] == GZIP_MAGIC else
                         "other" if chunk[:4] == ZSTD_MAGIC else "plain")
        if self.mode != "gzip" or self.broken:
            return
        data = chunk
        try:
            while data:
                if self.inflate.eof:  # concatenated gzip members; zero padding ends it
                    if not data.strip(b"\0"):
                        return
                    self.inflate = zlib.decompressobj(31)
                out = self.inflate.decompress(data, CHUNK)
                self.total += len(out)
                if self.total > DEFAULT_LIMITS.max_bytes:
                    raise ArchiveError(f"a layer larger than {DEFAULT_LIMITS.max_bytes} "
                                       "bytes uncompressed; refused")
                self.sha.update(out)
                data = self.inflate.unused_data if self.inflate.eof else \
                    self.inflate.unconsumed_tail
        except zlib.error:
            self.broken = True

    def result(self, digest: str) -> str | None:
        if self.mode in ("", "plain"):
            return digest
        if self.mode == "gzip" and not self.broken and self.inflate.eof:
            return "sha256:" + self.sha.hexdigest()
        return None


def _config_diff_ids(config: bytes) -> list[str]:
    try:
        doc = json.loads(config)
        diff_ids = doc["rootfs"]["diff_ids"]
        if isinstance(diff_ids, list) and all(isinstance(d, str) for d in diff_ids):
            return diff_ids
    except (ValueError, KeyError, TypeError):
        pass
    raise ArchiveError("an image config is not valid: no rootfs.diff_ids")


def _layer(blob: _Blob, diff_id: str, name: str, media_type: str | None = None) -> LoadLayer:
    if blob.diff_id is None:
        kind = "zstd" if blob.head == ZSTD_MAGIC else "unreadable"
        raise ArchiveError(f"layer {name!r} is {kind} (plain and gzip tars are supported)")
    if blob.diff_id != diff_id:
        raise ArchiveError(f"layer {name!r}: its content is {blob.diff_id}, the image "
                           f"config says {diff_id}")
    if media_type is None:
        media_type = LAYER_GZIP_MEDIA_TYPE if blob.head[:2] == GZIP_MAGIC else LAYER_MEDIA_TYPE
    return LoadLayer(blob.digest, blob.size, diff_id, media_type)


def _names(values: Iterable[Any]) -> list[str]:
    names = []
    for value in values:
        if not isinstance(value, str):
            raise ArchiveError(f"image name {value!r} is not a string")
        try:
            names.append(normalize_name(value))
        except SpecError as exc:
            raise ArchiveError(str(exc)) from None
    return names


def _docker_images(members: _Members) -> list[LoadImage]:
    manifest = members.json("manifest.json", "manifest")
    if not isinstance(manifest, list) or not manifest:
        raise ArchiveError("manifest.json: expected a list of images")
    images = []
    for entry in manifest:
        if not isinstance(entry, dict) or not isinstance(entry.get("Config"), str) \
                or not isinstance(entry.get("Layers"), list):
            raise ArchiveError("manifest.json: each image needs Config and Layers")
        config = members.document(entry["Config"], "image config")
        diff_ids = _config_diff_ids(config)
        if len(diff_ids) != len(entry["Layers"]):
            raise ArchiveError(f"image {entry['Config']}: {len(entry['Layers'])} layers, "
                               f"its config says {len(diff_ids)}")
        layers = []
        for name, diff_id in zip(entry["Layers"], diff_ids, strict=True):
            if not isinstance(name, str):
                raise ArchiveError("manifest.json: a layer is not a file name")
            layers.append(_layer(members.blob(name), diff_id, name))
        images.append(LoadImage(config, layers, _names(entry.get("RepoTags") or []), None))
    return images


def _oci_images(members: _Members) -> list[LoadImage]:
    if "oci-layout" in members.names:
        layout = members.json("oci-layout", "oci-layout")
        if not isinstance(layout, dict) or layout.get("imageLayoutVersion") != "1.0.0":
            raise ArchiveError("oci-layout: unsupported imageLayoutVersion")
    index = members.json("index.json", "index")
    by_manifest: dict[str, LoadImage] = {}
    for descriptor, name in _manifests(members, index, 0):
        digest = descriptor["digest"]
        if digest not in by_manifest:
            by_manifest[digest] = _oci_image(members, descriptor)
        if name is not None:
            by_manifest[digest].names.extend(n for n in _names([name])
                                             if n not in by_manifest[digest].names)
    if not by_manifest:
        raise ArchiveError("index.json names no image manifest")
    return list(by_manifest.values())


def _descriptor(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict) or not isinstance(value.get("digest"), str) \
            or not isinstance(value.get("size"), int):
        raise ArchiveError(f"{what}: a descriptor without digest and size")
    return value


def _manifests(members: _Members, index: Any,
               depth: int) -> Iterator[tuple[dict[str, Any], str | None]]:
    """(manifest descriptor, its name) for each image of an index; a nested index's
    linux/amd64 manifest (or its only one)."""
    if not isinstance(index, dict) or not isinstance(index.get("manifests"), list):
        raise ArchiveError("index.json: no manifests list")
    for value in index["manifests"]:
        descriptor = _descriptor(value, "index.json")
        annotations = descriptor.get("annotations") or {}
        name = annotations.get(CONTAINERD_NAME) or annotations.get(REF_NAME)
        media_type = descriptor.get("mediaType", MANIFEST_MEDIA_TYPE)
        if media_type in INDEXES:
            if depth >= 2:
                raise ArchiveError("index.json: indexes nested too deep")
            try:
                nested = json.loads(_blob_document(members, descriptor, "index"))
            except ValueError:
                raise ArchiveError(f"index {descriptor['digest']} is not valid JSON") from None
            chosen = [d for d, _ in _manifests(members, nested, depth + 1)]
            amd64 = [d for d in chosen if (d.get("platform") or {}).get("architecture")
                     in (None, "amd64") and (d.get("platform") or {}).get("os")
                     in (None, "linux")]
            if not amd64:
                raise ArchiveError("index.json: no linux/amd64 image")
            yield amd64[0], name
        elif media_type in MANIFESTS:
            yield descriptor, name
        else:
            raise ArchiveError(f"index.json: unsupported media type {media_type!r}")


def _blob_name(digest: str) -> str:
    algorithm, _, hexdigest = digest.partition(":")
    if algorithm != "sha256" or len(hexdigest) != 64 or not all(
            c in "0123456789abcdef" for c in hexdigest):
        raise ArchiveError(f"unsupported digest {digest!r}")
    return f"blobs/sha256/{hexdigest}"


def _blob_document(members: _Members, descriptor: dict[str, Any], what: str) -> bytes:
    digest = descriptor["digest"]
    data = members.document(_blob_name(digest), what)
    if "sha256:" + hashlib.sha256(data).hexdigest() != digest or len(data) != \
            descriptor["size"]:
        raise ArchiveError(f"{what} {digest}: content does not match its digest or size")
    return data


def _oci_image(members: _Members, descriptor: dict[str, Any]) -> LoadImage:
    manifest_bytes = _blob_document(members, descriptor, "manifest")
    try:
        manifest = json.loads(manifest_bytes)
        config_descriptor = _descriptor(manifest["config"], "manifest")
        layer_descriptors = [_descriptor(d, "manifest") for d in manifest["layers"]]
    except (ValueError, KeyError, TypeError):
        raise ArchiveError(f"manifest {descriptor['digest']} is not valid") from None
    config = _blob_document(members, config_descriptor, "image config")
    diff_ids = _config_diff_ids(config)
    if len(diff_ids) != len(layer_descriptors):
        raise ArchiveError(f"manifest {descriptor['digest']}: {len(layer_descriptors)} "
                           f"layers, its config says {len(diff_ids)}")
    layers = []
    for layer_descriptor, diff_id in zip(layer_descriptors, diff_ids, strict=True):
        digest = layer_descriptor["digest"]
        media_type = layer_descriptor.get("mediaType", LAYER_GZIP_MEDIA_TYPE)
        if media_type not in LAYER_MEDIA_TYPES:
            raise ArchiveError(f"layer {digest}: unsupported media type {media_type!r}")
        blob = members.blob(_blob_name(digest))
        if blob.digest != digest or blob.size != layer_descriptor["size"]:
            raise ArchiveError(f"layer {digest}: content does not match its digest or size")
        layers.append(_layer(blob, diff_id, digest, media_type))
    return LoadImage(config, layers, [], manifest_bytes)


# --- writing ----------------------------------------------------------------------------


def write_archive(out: IO[bytes], store: ImageStore, images: list[tuple[Image, list[str]]],
                  fmt: str) -> None:
    """Write ``images`` (each with the names to give it) as a ``fmt`` tar to ``out``."""
    if fmt not in FORMATS:
        raise SpecError(f"unknown archive format {fmt!r} (known: {', '.join(FORMATS)})")
    with tarfile.open(fileobj=out, mode="w|",
                      format=tarfile.PAX_FORMAT) as tar:
        if fmt == DOCKER_ARCHIVE:
            _write_docker(tar, store, images)
        else:
            _write_oci(tar, store, images)


def _info(name: str, size: int = 0, kind: bytes = tarfile.REGTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.type, info.mtime = size, kind, 0
    info.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
    info.uname = info.gname = "root"
    return info


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    tar.addfile(_info(name, len(data)), io.BytesIO(data))


def _add_blob(tar: tarfile.TarFile, store: ImageStore, name: str, digest: str) -> None:
    path = store.blob_path(digest)
    with open(path, "rb") as f:
        tar.addfile(_info(name, os.fstat(f.fileno()).st_size), f)


def _add_uncompressed(tar: tarfile.TarFile, store: ImageStore, name: str,
                      digest: str) -> None:
    """A layer blob as its uncompressed tar (docker-archive layers must be the streams
    whose digests are the config's diff_ids)."""
    import gzip

    path = store.blob_path(digest)
    with open(path, "rb") as f:
        if f.read(2) != GZIP_MAGIC:
            f.seek(0)
            tar.addfile(_info(name, os.fstat(f.fileno()).st_size), f)
            return
    size = 0
    with gzip.open(path, "rb") as z:  # a stream tar needs the size first: count, then copy
        while chunk := z.read(CHUNK):
            size += len(chunk)
    with gzip.open(path, "rb") as z:
        tar.addfile(_info(name, size), z)



def _v1_ids(layers: list[dict[str, Any]], config: dict[str, Any]) -> list[str]:
    """Legacy (docker v1) layer ids for the ``<id>/`` dirs and ``repositories``: a chain
    of digests, as podman computes them in spirit (they only need to be unique)."""
    ids: list[str] = []
    chain = ""
    for i, layer in enumerate(layers):
        chain = layer["diff_id"] if not chain else "sha256:" + hashlib.sha256(
            f"{chain} {layer['diff_id']}".encode()).hexdigest()
        doc: dict[str, Any] = {"layer_id": chain}
        if ids:
            doc["parent"] = ids[-1]
        if i == len(layers) - 1:
            doc.update({k: config[k] for k in ("architecture", "config", "created", "os")
                        if k in config})
        ids.append(hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest())
    return ids


def _write_docker(tar: tarfile.TarFile, store: ImageStore,
                  images: list[tuple[Image, list[str]]]) -> None:
    written: set[str] = set()
    manifest = []
    repositories: dict[str, dict[str, str]] = {}
    for image, names in images:
        layer_names = []
        for layer in image.layers:
            name = layer["diff_id"].split(":", 1)[1] + ".tar"
            if name not in written:
                _add_uncompressed(tar, store, name, layer["digest"])
                written.add(name)
            layer_names.append(name)
        config_name = image.id.split(":", 1)[1] + ".json"
        if config_name not in written:
            _add_blob(tar, store, config_name, image.id)
            written.add(config_name)
        v1_ids = _v1_ids(image.layers, image.config)
        for i, (v1_id, layer_name) in enumerate(zip(v1_ids, layer_names, strict=True)):
            if v1_id in written:
                continue
            written.add(v1_id)
            doc: dict[str, Any] = {"id": v1_id}
            if i:
                doc["parent"] = v1_ids[i - 1]
            tar.addfile(_info(v1_id, kind=tarfile.DIRTYPE))
            link = _info(f"{v1_id}/layer.tar", kind=tarfile.SYMTYPE)
            link.linkname = f"../{layer_name}"
            tar.addfile(link)
            _add_bytes(tar, f"{v1_id}/VERSION", b"1.0")
            _add_bytes(tar, f"{v1_id}/json", json.dumps(doc).encode())
        manifest.append({"Config": config_name, "RepoTags": names or None,
                         "Layers": layer_names})
        for name in names:
            repo, _, tag = name.rpartition(":")
            if v1_ids:
                repositories.setdefault(repo, {})[tag] = v1_ids[-1]
    _add_bytes(tar, "manifest.json", json.dumps(manifest).encode())
    if repositories:
        _add_bytes(tar, "repositories", json.dumps(repositories).encode())


def _write_oci(tar: tarfile.TarFile, store: ImageStore,
               images: list[tuple[Image, list[str]]]) -> None:
    _add_bytes(tar, "oci-layout", json.dumps({"imageLayoutVersion": "1.0.0"}).encode())
    tar.addfile(_info("blobs", kind=tarfile.DIRTYPE))
    tar.addfile(_info("blobs/sha256", kind=tarfile.DIRTYPE))
    written: set[str] = set()
    descriptors = []
    for image, names in images:
        manifest = store.manifest_bytes(image)
        media_type = json.loads(manifest).get("mediaType") or MANIFEST_MEDIA_TYPE
        for digest in [*(layer["digest"] for layer in image.layers), image.id,
                       image.manifest]:
            if digest not in written:
                _add_blob(tar, store, _blob_name(digest), digest)
                written.add(digest)
        descriptor = {"mediaType": media_type, "digest": image.manifest,
                      "size": len(manifest)}
        descriptors += [{**descriptor, "annotations": {REF_NAME: name}} for name in names] \
            or [descriptor]
    index = {"schemaVersion": 2, "manifests": descriptors}
    _add_bytes(tar, "index.json", json.dumps(index).encode())
