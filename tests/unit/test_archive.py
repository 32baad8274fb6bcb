"""Image archives (runtime/images/archive.py) without a supervisor: parsing docker- and
oci-archives into a scratch store, what is refused, and save -> read round trips."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import sqlite3
import tarfile
from pathlib import Path

import pytest

from runtime.images.archive import (
    DOCKER_ARCHIVE,
    OCI_ARCHIVE,
    ArchiveError,
    _DiffDigest,
    member_name,
    read_archive,
    write_archive,
)
from runtime.images.store import ImageStore


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def layer_tar(files: dict[str, bytes]) -> bytes:
    """An uncompressed layer tar of regular files (a ``.wh.`` name is a whiteout)."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def image_config(diff_ids: list[str], cmd: list[str] | None = None) -> bytes:
    return json.dumps({"architecture": "amd64", "os": "linux",
                       "config": {"Env": ["PATH=/bin"], "Cmd": cmd or ["sh"]},
                       "rootfs": {"type": "layers", "diff_ids": diff_ids}}).encode()


def tar_bytes(members: dict[str, bytes], links: dict[str, str] | None = None) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)
    return out.getvalue()


def docker_archive(layers: list[bytes], tags: list[str],
                   diff_ids: list[str] | None = None, missing: bool = False) -> bytes:
    """A docker-archive as podman writes it: layers ``<diff hex>.tar``, the config
    ``<id hex>.json``, manifest.json last. ``diff_ids`` overrides the config's;
    ``missing`` leaves the layers out."""
    config = image_config(diff_ids or [sha(layer) for layer in layers])
    members = {} if missing else {f"{sha(layer)[7:]}.tar": layer for layer in layers}
    members[f"{sha(config)[7:]}.json"] = config
    members["manifest.json"] = json.dumps([{
        "Config": f"{sha(config)[7:]}.json", "RepoTags": tags,
        "Layers": [f"{sha(layer)[7:]}.tar" for layer in layers]}]).encode()
    return tar_bytes(members)


def oci_archive(layers: list[bytes], name: str | None) -> bytes:
    """An oci-archive as podman writes it: gzip layers, index.json naming the image."""
    blobs = [gzip.compress(layer, mtime=0) for layer in layers]
    config = image_config([sha(layer) for layer in layers])
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": sha(config), "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": sha(b), "size": len(b)} for b in blobs]}).encode()
    descriptor: dict[str, object] = {"mediaType": "application/vnd.oci.image.manifest.v1+json",
                                     "digest": sha(manifest), "size": len(manifest)}
    if name is not None:
        descriptor["annotations"] = {"org.opencontainers.image.ref.name": name}
    members = {"oci-layout": b'{"imageLayoutVersion": "1.0.0"}'}
    for data in [*blobs, config, manifest]:
        members[f"blobs/sha256/{sha(data)[7:]}"] = data
    members["index.json"] = json.dumps({"schemaVersion": 2,
                                        "manifests": [descriptor]}).encode()
    return tar_bytes(members)


@pytest.fixture
def store(tmp_path: Path) -> ImageStore:
    return ImageStore(str(tmp_path), sqlite3.connect(":memory:"))


def read(store: ImageStore, data: bytes) -> tuple[str, list]:  # type: ignore[type-arg]
    return read_archive(io.BytesIO(data), store)


LAYER1 = layer_tar({"a": b"one", "doomed": b"x"})
LAYER2 = layer_tar({"b": b"two", ".wh.doomed": b""})


def test_member_names() -> None:
    assert member_name("./a//b") == "a/b"
    assert member_name("/abs") == "abs"
    assert member_name("d/../f.tar") == "f.tar"
    for bad in ("../x", "a/../../x", ".", ""):
        with pytest.raises(ArchiveError):
            member_name(bad)


def test_diff_digest_of_gzip_members() -> None:
    data = b"hello " * 1000
    stream = gzip.compress(data[:3000]) + gzip.compress(data[3000:]) + b"\0" * 100
    digest = _DiffDigest()
    for i in range(0, len(stream), 7):
        digest.feed(stream[i:i + 7])
    assert digest.result("unused") == sha(data)
    broken = _DiffDigest()
    broken.feed(gzip.compress(data)[:50])
    assert broken.result("unused") is None


def test_docker_archive(store: ImageStore) -> None:
    fmt, [image] = read(store, docker_archive([LAYER1, LAYER2], ["localhost/two:1"]))
    assert fmt == DOCKER_ARCHIVE and image.names == ["localhost/two:1"]
    assert [layer.diff_id for layer in image.layers] == [sha(LAYER1), sha(LAYER2)]
    assert [layer.digest for layer in image.layers] == [sha(LAYER1), sha(LAYER2)]
    assert image.manifest is None and store.has_blob(sha(LAYER2))
    # gzip archive, short name, links to the layer (podman's legacy <id>/layer.tar)
    plain = tar_bytes({"l.tar": LAYER1, "c.json": image_config([sha(LAYER1)]),
                       "manifest.json": json.dumps([{"Config": "c.json", "RepoTags": ["x"],
                                                     "Layers": ["v1/layer.tar"]}]).encode()},
                      links={"v1/layer.tar": "../l.tar"})
    _, [linked] = read(store, gzip.compress(plain))
    assert linked.names == ["x:latest"] and linked.layers[0].digest == sha(LAYER1)


def test_oci_archive(store: ImageStore) -> None:
    fmt, [image] = read(store, oci_archive([LAYER1, LAYER2], "docker.io/library/two:1"))
    assert fmt == OCI_ARCHIVE and image.names == ["docker.io/library/two:1"]
    assert [layer.diff_id for layer in image.layers] == [sha(LAYER1), sha(LAYER2)]
    assert image.layers[0].media_type.endswith("+gzip") and image.manifest is not None
    _, [unnamed] = read(store, oci_archive([LAYER1], None))
    assert unnamed.names == []


@pytest.mark.parametrize(("data", "message"), [
    (b"", "the input is empty"),
    (b"not a tar at all" * 40, "not a tar archive"),
    (tar_bytes({"x": b"y"}), "not an image archive"),
    (docker_archive([LAYER1], ["a"], missing=True), "has no member"),
    (docker_archive([LAYER1], ["a"], diff_ids=[sha(b"other")]), "the image config says"),
    (docker_archive([LAYER1], ["Bad Name"]), "invalid image name"),
    (tar_bytes({"manifest.json": b"{"}), "not valid JSON"),
    (tar_bytes({"../evil": b""}), "refused"),
])
def test_refused(store: ImageStore, data: bytes, message: str) -> None:
    with pytest.raises(ArchiveError, match=message):
        read(store, data)


def test_oci_blob_digest_checked(store: ImageStore) -> None:
    archive = oci_archive([LAYER1], "x")
    config = image_config([sha(LAYER1)])
    tampered = archive.replace(config, config.replace(b"amd64", b"arm64"))
    with pytest.raises(ArchiveError, match="does not match its digest"):
        read(store, tampered)


def test_zstd_layer_refused(store: ImageStore) -> None:
    fake = b"\x28\xb5\x2f\xfd" + b"\0" * 100
    with pytest.raises(ArchiveError, match="zstd"):
        read(store, docker_archive([fake], ["z"]))


@pytest.mark.parametrize("fmt", [DOCKER_ARCHIVE, OCI_ARCHIVE])
def test_write_then_read(store: ImageStore, fmt: str) -> None:
    """Saved images read back with the same ids, layers and names; docker-archive
    layers are the uncompressed tars even when the store keeps gzip."""
    _, [loaded] = read(store, oci_archive([LAYER1, LAYER2], "localhost/two:1"))
    for layer in loaded.layers:
        os.makedirs(store.layer_path(layer.diff_id), exist_ok=True)
    image = store.commit_config(loaded.config, [layer._asdict() for layer in loaded.layers],
                                loaded.names, loaded.manifest)
    out = io.BytesIO()
    write_archive(out, store, [(image, ["localhost/two:1", "two:2"])], fmt)
    _, [again] = read(store, out.getvalue())
    assert sha(again.config) == image.id and again.names == ["localhost/two:1", "two:2"]
    assert [layer.diff_id for layer in again.layers] == [sha(LAYER1), sha(LAYER2)]
    if fmt == DOCKER_ARCHIVE:
        with tarfile.open(fileobj=io.BytesIO(out.getvalue())) as tar:
            manifest = json.load(tar.extractfile("manifest.json"))  # type: ignore[arg-type]
            assert manifest[0]["Layers"] == [f"{sha(LAYER1)[7:]}.tar", f"{sha(LAYER2)[7:]}.tar"]
            assert "repositories" in tar.getnames()
    else:
        assert again.manifest == store.manifest_bytes(image)
