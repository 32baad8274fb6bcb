"""The pure parts of pull/push: references, manifests and indexes, challenges, auths."""

from __future__ import annotations

import base64
import json

import pytest

from runtime.errors import SpecError
from runtime.images import distribution as dist
from runtime.images.reference import parse

DIGEST = "sha256:" + "ab" * 32


@pytest.mark.parametrize(("text", "registry", "repository", "tag", "digest", "name"), [
    ("busybox", "docker.io", "library/busybox", "latest", None, "busybox:latest"),
    ("busybox:1.36", "docker.io", "library/busybox", "1.36", None, "busybox:1.36"),
    ("foo/bar", "docker.io", "foo/bar", "latest", None, "foo/bar:latest"),
    ("docker.io/library/alpine:3", "docker.io", "library/alpine", "3", None,
     "docker.io/library/alpine:3"),
    ("localhost:5000/foo/bar:tag", "localhost:5000", "foo/bar", "tag", None,
     "localhost:5000/foo/bar:tag"),
    ("localhost/foo", "localhost", "foo", "latest", None, "localhost/foo:latest"),
    ("127.0.0.1:5000/x", "127.0.0.1:5000", "x", "latest", None, "127.0.0.1:5000/x:latest"),
    ("quay.io/org/img-1.x", "quay.io", "org/img-1.x", "latest", None,
     "quay.io/org/img-1.x:latest"),
    (f"busybox@{DIGEST}", "docker.io", "library/busybox", None, DIGEST, None),
    (f"reg.io/a:v1@{DIGEST}", "reg.io", "a", "v1", DIGEST, "reg.io/a:v1"),
])
def test_reference(text: str, registry: str, repository: str, tag: str | None,
                   digest: str | None, name: str | None) -> None:
    ref = parse(text)
    assert (ref.registry, ref.repository, ref.tag, ref.digest, ref.name) == (
        registry, repository, tag, digest, name)
    assert ref.reference == (digest or tag)


def test_reference_api_host() -> None:
    assert parse("busybox").api_host == "registry-1.docker.io"
    assert parse("localhost:5000/a").api_host == "localhost:5000"
    assert parse("busybox").canonical == "docker.io/library/busybox:latest"


@pytest.mark.parametrize("text", ["", "Busybox", "a@sha256:12", "a:b:c", "a/:x", "-a",
                                  "a:" + "x" * 200, "a/B", "a//b"])
def test_reference_invalid(text: str) -> None:
    with pytest.raises(SpecError, match="invalid reference"):
        parse(text)


def _index(*platforms: tuple[str, str] | None) -> bytes:
    entries = []
    for i, platform in enumerate(platforms):
        entry = {"mediaType": dist.OCI_MANIFEST, "digest": f"sha256:{i:064x}", "size": 10 + i}
        if platform:
            entry["platform"] = {"os": platform[0], "architecture": platform[1]}
        entries.append(entry)
    return json.dumps({"schemaVersion": 2, "mediaType": dist.OCI_INDEX,
                       "manifests": entries}).encode()


def test_select_platform() -> None:
    data = _index(("linux", "arm64"), None, ("windows", "amd64"), ("linux", "amd64"))
    assert dist.select_platform(data) == dist.Descriptor(dist.OCI_MANIFEST,
                                                         f"sha256:{3:064x}", 13)
    with pytest.raises(SpecError, match=r"no image for linux/amd64 .*linux/arm64"):
        dist.select_platform(_index(("linux", "arm64")))


def test_media_type() -> None:
    assert dist.media_type(_index(), None) == dist.OCI_INDEX
    bare_index = json.dumps({"schemaVersion": 2, "manifests": []}).encode()
    assert dist.media_type(bare_index, None) == dist.OCI_INDEX
    assert dist.media_type(b'{"schemaVersion": 2}', dist.DOCKER_MANIFEST + "; charset=x") \
        == dist.DOCKER_MANIFEST
    assert dist.media_type(b'{"schemaVersion": 1}', "text/plain") in dist.DOCKER_SCHEMA1
    assert dist.is_index(dist.DOCKER_LIST) and not dist.is_index(dist.OCI_MANIFEST)


def test_parse_manifest() -> None:
    doc = {"schemaVersion": 2, "mediaType": dist.DOCKER_MANIFEST,
           "config": {"mediaType": "x", "digest": DIGEST, "size": 5},
           "layers": [{"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip",
                       "digest": DIGEST, "size": 7}]}
    manifest = dist.parse_manifest(json.dumps(doc).encode(), dist.DOCKER_MANIFEST)
    assert manifest.config.size == 5 and manifest.layers[0].size == 7
    doc["layers"][0]["mediaType"] = "application/vnd.oci.image.layer.v1.tar+zstd"
    with pytest.raises(SpecError, match="unsupported media type"):
        dist.parse_manifest(json.dumps(doc).encode(), dist.DOCKER_MANIFEST)
    doc["layers"][0].update(mediaType="application/vnd.oci.image.layer.v1.tar",
                            digest="md5:00")
    with pytest.raises(SpecError, match="unsupported digest"):
        dist.parse_manifest(json.dumps(doc).encode(), dist.DOCKER_MANIFEST)
    with pytest.raises(SpecError, match="schema 1"):
        dist.parse_manifest(b"{}", dist.DOCKER_SCHEMA1[1])


def test_config_diff_ids() -> None:
    config = json.dumps({"rootfs": {"type": "layers", "diff_ids": [DIGEST]}}).encode()
    assert dist.config_diff_ids(config, 1) == [DIGEST]
    with pytest.raises(SpecError, match="1 layer"):
        dist.config_diff_ids(config, 2)


def test_parse_challenge() -> None:
    hub = ('Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
           'scope="repository:library/busybox:pull"')
    assert dist.parse_challenge(hub) == dist.Challenge("bearer", {
        "realm": "https://auth.docker.io/token", "service": "registry.docker.io",
        "scope": "repository:library/busybox:pull"})
    assert dist.parse_challenge('Basic realm="Registry Realm"') == dist.Challenge(
        "basic", {"realm": "Registry Realm"})
    assert dist.parse_challenge('bearer realm=http://x/t, scope="a:b:pull,push",'
                                ' error="insufficient_scope"').params == {
        "realm": "http://x/t", "scope": "a:b:pull,push", "error": "insufficient_scope"}
    assert dist.parse_challenge('Bearer realm="a\\"b"').params == {"realm": 'a"b'}


def test_auth_entry() -> None:
    auth = base64.b64encode(b"alice:pa:ss").decode()
    doc = {"auths": {"localhost:5000": {"auth": auth},
                     "https://index.docker.io/v1/": {"auth": auth}}}
    assert dist.auth_entry(doc, "localhost:5000") == ("alice", "pa:ss")
    assert dist.auth_entry(doc, "docker.io") == ("alice", "pa:ss")
    assert dist.auth_entry(doc, "quay.io") is None
    assert dist.auth_entry({}, "quay.io") is None
    assert dist.basic_credentials("a", "b") == "Basic " + base64.b64encode(b"a:b").decode()
