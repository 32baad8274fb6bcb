"""pull and push against a real registry on loopback: Debian's ``docker-registry``
(distribution v2) started per test with its config and storage in a temp dir, plain
HTTP on 127.0.0.1 (so every command needs ``--tls-verify=false``), as root and
rootless. Bearer tokens come from a small token server of the test's own (JWTs signed
RS256 with openssl), which the real registry verifies."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import http.client
import http.server
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration import harness
from tests.integration.harness import Myctr

REGISTRY = shutil.which("docker-registry")
pytestmark = pytest.mark.skipif(REGISTRY is None, reason="docker-registry is not installed "
                                "(make test-deps)")
NO_TLS = "--tls-verify=false"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Registry:
    def __init__(self, auth: dict[str, Any] | None = None) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="myctr-registry-"))
        self.port = _free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.auth = auth
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        config = {
            "version": 0.1,
            "log": {"level": "warn"},
            "storage": {"filesystem": {"rootdirectory": str(self.dir / "data")},
                        "delete": {"enabled": True}},
            "http": {"addr": self.host},
        }
        if self.auth:
            config["auth"] = self.auth
        (self.dir / "config.yml").write_text(json.dumps(config))  # JSON is YAML
        self.proc = subprocess.Popen([REGISTRY, "serve", str(self.dir / "config.yml")],  # type: ignore[list-item]
                                     stdout=subprocess.DEVNULL,
                                     stderr=open(self.dir / "log", "wb"))  # noqa: SIM115
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                status, _, _ = self.request("GET", "/v2/")
                if status in (200, 401):
                    return
            except OSError:
                time.sleep(0.05)
        raise AssertionError(f"registry did not start: {(self.dir / 'log').read_text()}")

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection(self.host, timeout=10)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            return resp.status, dict(resp.getheaders()), resp.read()
        finally:
            conn.close()

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)

    def blob_file(self, digest: str) -> Path:
        hexdigest = digest.split(":", 1)[1]
        return (self.dir / "data" / "docker" / "registry" / "v2" / "blobs" / "sha256"
                / hexdigest[:2] / hexdigest / "data")


@pytest.fixture
def registry() -> Iterator[Registry]:
    reg = Registry()
    reg.start()
    yield reg
    reg.stop()



def _store_files(myctr: Myctr) -> list[str]:
    root = myctr.state_root / "data" / "images"
    return sorted(os.listdir(root / "blobs" / "sha256")) + sorted(os.listdir(root / "layers"))


def _images(myctr: Myctr) -> list[dict[str, Any]]:
    result = myctr("images", "--format", "json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def _inspect(myctr: Myctr, ref: str) -> dict[str, Any]:
    result = myctr("image", "inspect", ref)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)[0]  # type: ignore[no-any-return]


def _one_error_line(stderr: str) -> str:
    errors = [line for line in stderr.splitlines() if line.startswith("myctr:")]
    assert len(errors) == 1, stderr
    return errors[0]


def _import(myctr: Myctr, tar: Path, name: str) -> str:
    result = myctr("image", "import", str(tar), name)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_push_then_pull_same_digest(myctr: Myctr, registry: Registry,
                                    rootfs_tar: Path) -> None:
    image_id = _import(myctr, rootfs_tar, "testbox:1")
    manifest = _inspect(myctr, "testbox:1")["manifest"]
    dest = f"{registry.host}/test/box:1"
    # plain HTTP needs --tls-verify=false, as podman
    refused = myctr("push", "testbox:1", dest)
    assert refused.returncode == 125 and "--tls-verify=false" in _one_error_line(refused.stderr)
    pushed = myctr("push", NO_TLS, "testbox:1", dest)
    assert pushed.returncode == 0, pushed.stderr
    status, headers, _ = registry.request("HEAD", "/v2/test/box/manifests/1",
                                          headers={"Accept": OCI_MANIFEST})
    assert status == 200 and headers["Docker-Content-Digest"] == manifest
    # gone locally, pulled back: same id, same manifest digest, and it runs
    assert myctr("image", "rm", "testbox:1").returncode == 0
    assert _store_files(myctr) == []
    pulled = myctr("pull", NO_TLS, dest)
    assert pulled.returncode == 0, pulled.stderr
    assert pulled.stdout.strip() == image_id
    assert "Copying blob" in pulled.stderr and "done" in pulled.stderr
    inspected = _inspect(myctr, dest)
    assert inspected["manifest"] == manifest and inspected["tags"] == [dest]
    run = myctr("run", "--rm", dest, "sh", "-c", "echo pulled")
    assert run.stdout == "pulled\n", run.stderr
    # a second pull finds every blob; -q prints only the id; image pull is an alias
    again = myctr("image", "pull", NO_TLS, "-q", dest)
    assert again.returncode == 0 and again.stdout.strip() == image_id and again.stderr == ""
    # a push of what the registry has uploads nothing; by digest, a pull records no name
    repush = myctr("image", "push", NO_TLS, dest)
    assert repush.returncode == 0 and "already exists" in repush.stderr, repush.stderr
    assert myctr("image", "rm", dest).returncode == 0
    by_digest = myctr("pull", NO_TLS, f"{registry.host}/test/box@{manifest}")
    assert by_digest.returncode == 0 and by_digest.stdout.strip() == image_id, by_digest.stderr
    assert myctr("image", "prune").returncode == 0
    assert _images(myctr) == [] and _store_files(myctr) == []


def test_index_picks_linux_amd64(myctr: Myctr, registry: Registry, rootfs_tar: Path,
                                 tmp_path: Path) -> None:
    amd64 = _import(myctr, rootfs_tar, "amd:1")
    other_tar = myctr.state_root / "other.tar"
    (tmp_path / "hello").write_text("another platform\n")
    subprocess.run(["tar", "-C", str(tmp_path), "-cf", str(other_tar), "hello"], check=True)
    harness.chown_tree(other_tar, myctr.user)
    _import(myctr, other_tar, "arm:1")
    descriptors = []
    for name, arch in (("arm:1", "arm64"), ("amd:1", "amd64")):
        assert myctr("push", NO_TLS, name, f"{registry.host}/multi/box:{arch}").returncode == 0
        status, headers, body = registry.request("GET", f"/v2/multi/box/manifests/{arch}",
                                                 headers={"Accept": OCI_MANIFEST})
        assert status == 200
        descriptors.append({"mediaType": OCI_MANIFEST, "size": len(body),
                            "digest": headers["Docker-Content-Digest"],
                            "platform": {"os": "linux", "architecture": arch}})
    index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX,
                        "manifests": descriptors}).encode()
    status, _, body = registry.request("PUT", "/v2/multi/box/manifests/latest", index,
                                       {"Content-Type": OCI_INDEX})
    assert status == 201, body
    assert myctr("image", "rm", "amd:1", "arm:1").returncode == 0
    pulled = myctr("pull", NO_TLS, f"{registry.host}/multi/box")
    assert pulled.returncode == 0, pulled.stderr
    assert pulled.stdout.strip() == amd64
    assert _inspect(myctr, f"{registry.host}/multi/box:latest")["tags"] == [
        f"{registry.host}/multi/box:latest"]
    # an index without linux/amd64 is refused
    only_arm = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX,
                           "manifests": descriptors[:1]}).encode()
    status, _, _ = registry.request("PUT", "/v2/multi/box/manifests/arm", only_arm,
                                    {"Content-Type": OCI_INDEX})
    assert status == 201
    refused = myctr("pull", NO_TLS, f"{registry.host}/multi/box:arm")
    assert refused.returncode == 125
    assert "no image for linux/amd64" in _one_error_line(refused.stderr)


def test_corrupt_blob_refused_nothing_left(myctr: Myctr, registry: Registry,
                                           rootfs_tar: Path) -> None:
    _import(myctr, rootfs_tar, "testbox:1")
    dest = f"{registry.host}/test/box:1"
    assert myctr("push", NO_TLS, "testbox:1", dest).returncode == 0
    layer = _inspect(myctr, "testbox:1")["layer_digests"][0]
    assert myctr("image", "rm", "testbox:1").returncode == 0
    data = registry.blob_file(layer)
    content = bytearray(data.read_bytes())
    content[len(content) // 2] ^= 0xFF  # same size, another digest
    data.write_bytes(bytes(content))
    refused = myctr("pull", NO_TLS, dest)
    assert refused.returncode == 125
    assert "failed verification" in _one_error_line(refused.stderr)
    assert _images(myctr) == []
    assert myctr("image", "prune").returncode == 0
    assert _store_files(myctr) == []
    missing = myctr("pull", NO_TLS, f"{registry.host}/test/nosuch:1")
    assert missing.returncode == 125 and "MANIFEST_UNKNOWN" in _one_error_line(missing.stderr)


class SlowProxy:
    """A TCP forwarder to the registry that trickles its answers (RATE bytes/s), so a
    pull is still downloading when the test kills the supervisor."""

    RATE = 256 << 10

    def __init__(self, target: int) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.host = f"127.0.0.1:{self.listener.getsockname()[1]}"
        self.stopped = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.stopped:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target))
            threading.Thread(target=self._pipe, args=(client, upstream, 0), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, 0.0625),
                             daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, pause: float) -> None:
        try:
            while not self.stopped and (data := src.recv(int(self.RATE * pause) or 65536)):
                dst.sendall(data)
                time.sleep(pause)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def stop(self) -> None:
        self.stopped = True
        self.listener.close()


def test_crash_mid_pull_leaves_nothing(myctr: Myctr, registry: Registry,
                                       rootfs_tar: Path) -> None:
    """The supervisor killed while a layer downloads: no image, and image prune
    leaves no blob or layer."""
    _import(myctr, rootfs_tar, "testbox:1")
    assert myctr("push", NO_TLS, "testbox:1", f"{registry.host}/test/box:1").returncode == 0
    assert myctr("image", "rm", "testbox:1").returncode == 0
    proxy = SlowProxy(registry.port)
    blobs = myctr.state_root / "data" / "images" / "blobs" / "sha256"
    try:
        pull = subprocess.Popen(myctr.command("pull", NO_TLS, f"{proxy.host}/test/box:1"),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while not any(n.startswith(".tmp-") and (blobs / n).stat().st_size > 0
                      for n in os.listdir(blobs)):
            assert time.monotonic() < deadline and pull.poll() is None, pull.communicate()
            time.sleep(0.02)
        pid = harness.supervisor_call(myctr.state_root, "ping")["result"]["pid"]
        os.kill(pid, signal.SIGKILL)
        _, stderr = pull.communicate(timeout=30)
        assert pull.returncode == 125 and _one_error_line(stderr)
    finally:
        proxy.stop()
    assert _images(myctr) == []
    assert myctr("image", "prune").returncode == 0
    assert _store_files(myctr) == []


@pytest.fixture
def htpasswd_registry() -> Iterator[Registry]:
    reg = Registry()
    hashed = subprocess.run(["htpasswd", "-Bbn", "alice", "s3cret"], check=True,
                            capture_output=True, text=True).stdout
    (reg.dir / "htpasswd").write_text(hashed)
    reg.auth = {"htpasswd": {"realm": "test", "path": str(reg.dir / "htpasswd")}}
    reg.start()
    yield reg
    reg.stop()


def _auth_round(myctr: Myctr, reg: Registry, tar: Path) -> None:
    """push and pull need credentials: refused without, wrong ones refused, --creds and
    login work."""
    image_id = _import(myctr, tar, "testbox:1")
    dest = f"{reg.host}/private/box:1"
    refused = myctr("push", NO_TLS, "testbox:1", dest)
    assert refused.returncode == 125
    assert "authentication required" in _one_error_line(refused.stderr)
    wrong = myctr("push", NO_TLS, "--creds", "alice:wrong", "testbox:1", dest)
    assert wrong.returncode == 125 and "myctr:" in _one_error_line(wrong.stderr)
    pushed = myctr("push", NO_TLS, "--creds", "alice:s3cret", "testbox:1", dest)
    assert pushed.returncode == 0, pushed.stderr
    assert myctr("image", "rm", "testbox:1").returncode == 0
    anonymous = myctr("pull", NO_TLS, dest)
    assert anonymous.returncode == 125 and _one_error_line(anonymous.stderr)
    pulled = myctr("pull", NO_TLS, "--creds", "alice:s3cret", dest)
    assert pulled.returncode == 0 and pulled.stdout.strip() == image_id, pulled.stderr
    # login stores the credentials (mode 0600); logout forgets them
    assert myctr("image", "rm", dest).returncode == 0
    login = myctr("login", "-u", "alice", "--password-stdin", reg.host, input="s3cret\n")
    assert login.returncode == 0, login.stderr
    auth_file = myctr.state_root / "run" / "auth.json"
    assert auth_file.stat().st_mode & 0o777 == 0o600
    assert json.loads(auth_file.read_text())["auths"][reg.host]["auth"] == base64.b64encode(
        b"alice:s3cret").decode()
    assert myctr("pull", NO_TLS, "-q", dest).stdout.strip() == image_id
    assert myctr("logout", reg.host).returncode == 0
    assert myctr("image", "rm", dest).returncode == 0
    assert myctr("pull", NO_TLS, dest).returncode == 125
    assert myctr("image", "prune").returncode == 0 and _store_files(myctr) == []


def test_basic_auth(myctr: Myctr, htpasswd_registry: Registry, rootfs_tar: Path) -> None:
    _auth_round(myctr, htpasswd_registry, rootfs_tar)


class TokenServer:
    """Docker Hub's token protocol for the registry's ``auth: token``: a JWT (RS256,
    signed by openssl with a key whose self-signed certificate the registry trusts)
    granting the asked scope to alice, nothing to anyone else."""

    def __init__(self, workdir: Path) -> None:
        self.key, self.cert = workdir / "token.key", workdir / "token.crt"
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                        "-subj", "/CN=myctr-test-token", "-keyout", str(self.key),
                        "-out", str(self.cert)], check=True, capture_output=True)
        pub = subprocess.run(["openssl", "x509", "-in", str(self.cert), "-pubkey", "-noout"],
                             check=True, capture_output=True).stdout
        der = subprocess.run(["openssl", "pkey", "-pubin", "-outform", "DER"], input=pub,
                             check=True, capture_output=True).stdout
        # libtrust's key id, by which the registry finds the key: sha256 of the public
        # key's DER, 240 bits in base32, in groups of four
        b32 = base64.b32encode(hashlib.sha256(der).digest()[:30]).decode()
        self.kid = ":".join(b32[i:i + 4] for i in range(0, len(b32), 4))
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.realm = f"http://127.0.0.1:{self.server.server_address[1]}/token"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def sign(self, claims: dict[str, Any]) -> str:
        def b64(data: bytes) -> str:
            return base64.urlsafe_b64encode(data).rstrip(b"=").decode()
        header = {"typ": "JWT", "alg": "RS256", "kid": self.kid}
        signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
        signature = subprocess.run(["openssl", "dgst", "-sha256", "-sign", str(self.key)],
                                   input=signing_input.encode(), check=True,
                                   capture_output=True).stdout
        return f"{signing_input}.{b64(signature)}"

    def _handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
                given = self.headers.get("Authorization")
                alice = "Basic " + base64.b64encode(b"alice:s3cret").decode()
                if given is not None and given != alice:
                    self.send_response(401)
                    self.end_headers()
                    return
                access = []
                for scope in query.get("scope", []) if given else []:
                    kind, name, actions = scope.split(":")
                    access.append({"type": kind, "name": name, "actions": actions.split(",")})
                now = int(time.time())
                token = server.sign({"iss": "myctr-test", "sub": "alice" if given else "",
                                     "aud": query.get("service", [""])[0], "iat": now,
                                     "nbf": now - 10, "exp": now + 300,
                                     "jti": os.urandom(8).hex(), "access": access})
                body = json.dumps({"token": token}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        return Handler

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


@pytest.fixture
def token_registry() -> Iterator[Registry]:
    reg = Registry()
    tokens = TokenServer(reg.dir)
    reg.auth = {"token": {"realm": tokens.realm, "service": "myctr-test-registry",
                          "issuer": "myctr-test", "rootcertbundle": str(tokens.cert)}}
    try:
        reg.start()
        yield reg
    finally:
        reg.stop()
        tokens.stop()


def test_bearer_token_auth(myctr: Myctr, token_registry: Registry, rootfs_tar: Path) -> None:
    status, headers, _ = token_registry.request("GET", "/v2/")
    assert status == 401 and headers["Www-Authenticate"].startswith("Bearer realm=")
    _auth_round(myctr, token_registry, rootfs_tar)
