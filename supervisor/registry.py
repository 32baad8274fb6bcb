"""``pull`` and ``push`` over the OCI distribution API.

HTTP is the standard library's (``http.client`` in trio worker threads, one
connection per request): the protocol needs a handful of plain requests, and no
dependency keeps the supervisor's footprint as it was. Authentication follows the
registry's challenge: ``Bearer`` gets a token from the realm (with basic credentials
when given, anonymous otherwise), ``Basic`` sends the credentials. ``tls_verify=False``
accepts any certificate and falls back to plain HTTP when the registry does not
speak TLS (podman's ``--tls-verify=false``).

Writes are crash safe: every blob is streamed to a ``.tmp-*`` file in the blob
directory while hashed, and renamed to its digest only once its size and sha256 match;
layers are unpacked by :meth:`ImageService.ensure_layer` (temp dir, renamed); the image
is recorded in one transaction at the end. A pull interrupted at any point leaves no
image, and whatever it wrote is removed by ``image prune``. Pull and push hold the
image service's lock, so no prune or removal runs under them.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
import ssl
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from typing import Any, BinaryIO

import trio

from runtime.errors import HostError, NotFound, SpecError
from runtime.images import distribution as dist
from runtime.images.reference import Reference, parse
from runtime.images.store import Image, ImageStore, normalize_name
from supervisor.images import ImageService

PARALLEL = 3
CHUNK = 1 << 16
REDIRECTS = (301, 302, 303, 307, 308)
MAX_REDIRECTS = 5
PROGRESS_INTERVAL = 0.2
TIMEOUT = 60.0

Progress = Callable[[dict[str, Any]], Awaitable[None]]


class Response:
    def __init__(self, conn: http.client.HTTPConnection, resp: http.client.HTTPResponse) -> None:
        self.conn = conn
        self.resp = resp
        self.status = resp.status

    def header(self, name: str) -> str | None:
        return self.resp.getheader(name)

    def read(self, limit: int = 4 << 20) -> bytes:
        try:
            data = self.resp.read(limit + 1)
        finally:
            self.close()
        if len(data) > limit:
            raise HostError("registry answer too large")
        return data

    def close(self) -> None:
        self.resp.close()
        self.conn.close()


class Session:
    """Requests to one repository of one registry, authenticated as it asks."""

    def __init__(self, ref: Reference, tls_verify: bool, creds: tuple[str, str] | None,
                 actions: str) -> None:
        self.ref = ref
        self.host = ref.api_host
        self.tls_verify = tls_verify
        self.creds = creds
        self.scope = f"repository:{ref.repository}:{actions}"
        self.scheme: str | None = None
        self.authorization: str | None = None

    # --- transport ------------------------------------------------------------------

    def _connection(self, scheme: str, host: str) -> http.client.HTTPConnection:
        if scheme == "https":
            context = ssl.create_default_context()
            if not self.tls_verify:
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            return http.client.HTTPSConnection(host, timeout=TIMEOUT, context=context)
        return http.client.HTTPConnection(host, timeout=TIMEOUT)

    def _send(self, method: str, url: str, headers: dict[str, str],
              body: bytes | BinaryIO | None = None) -> Response:
        parts = urllib.parse.urlsplit(url)
        conn = self._connection(parts.scheme, parts.netloc)
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        try:
            conn.request(method, target or "/", body=body, headers=headers)
            return Response(conn, conn.getresponse())
        except ssl.SSLError:
            conn.close()
            raise
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            raise HostError(f"registry {parts.netloc}: {getattr(exc, 'strerror', None) or exc}"
                            ) from None

    def _url(self, path: str) -> str:
        if path.startswith(("http://", "https://")):
            return path
        return f"{self.scheme}://{self.host}{path}"

    def ping(self) -> None:
        """``GET /v2/``: settles the scheme and, when asked, authenticates."""
        for scheme in ("https", "http"):
            self.scheme = scheme
            try:
                resp = self._send("GET", self._url("/v2/"), {})
            except ssl.SSLError as exc:
                if self.tls_verify:
                    raise HostError(
                        f"registry {self.host}: TLS failed ({exc.reason or exc}); for a "
                        "plain-HTTP or self-signed registry use --tls-verify=false") from None
                continue
            resp.read()
            if resp.status == 401:
                self._authenticate(resp.header("WWW-Authenticate") or "")
            elif resp.status >= 400 and resp.status != 404:
                raise HostError(f"registry {self.host}: /v2/ answered {resp.status}")
            return
        raise HostError(f"registry {self.host}: no answer over https or http")

    def _authenticate(self, header: str) -> None:
        challenge = dist.parse_challenge(header)
        if challenge.scheme == "basic":
            if self.creds is None:
                raise HostError(f"registry {self.host}: authentication required "
                                "(use --creds USER:PASS or myctr login)")
            self.authorization = dist.basic_credentials(*self.creds)
            return
        if challenge.scheme != "bearer" or "realm" not in challenge.params:
            raise HostError(f"registry {self.host}: unsupported authentication {header!r}")
        scope = challenge.params.get("scope") or self.scope
        query = [("scope", s) for s in scope.split(" ") if s]
        if "service" in challenge.params:
            query.insert(0, ("service", challenge.params["service"]))
        realm = challenge.params["realm"]
        url = realm + ("&" if "?" in realm else "?") + urllib.parse.urlencode(query)
        headers = {}
        if self.creds is not None:
            headers["Authorization"] = dist.basic_credentials(*self.creds)
        try:
            resp = self._send("GET", url, headers)
        except ssl.SSLError as exc:
            raise HostError(f"token server {realm}: TLS failed ({exc.reason or exc})") from None
        data = resp.read()
        if resp.status in (401, 403):
            raise HostError(f"registry {self.host}: authentication failed "
                            f"({'invalid credentials' if self.creds else 'credentials needed'})")
        if resp.status != 200:
            raise HostError(f"token server {realm} answered {resp.status}")
        try:
            doc = json.loads(data)
            token = doc.get("token") or doc.get("access_token")
        except (ValueError, AttributeError):
            token = None
        if not isinstance(token, str) or not token:
            raise HostError(f"token server {realm} gave no token")
        self.authorization = f"Bearer {token}"

    def request(self, method: str, path: str, headers: dict[str, str] | None = None,
                body: bytes | BinaryIO | None = None) -> Response:
        """A request of the API, authenticated; redirects followed (blob storage may be
        elsewhere, credentials are not sent there); a 401 re-authenticates once."""
        if self.scheme is None:
            self.ping()
        url = self._url(path)
        for attempt in range(2):
            sent = dict(headers or {})
            if self.authorization and urllib.parse.urlsplit(url).netloc == self.host:
                sent["Authorization"] = self.authorization
            if attempt and hasattr(body, "seek"):
                body.seek(0)  # type: ignore[union-attr]
            resp = self._send(method, url, sent, body)
            if resp.status == 401 and attempt == 0:
                resp.read()
                self._authenticate(resp.header("WWW-Authenticate") or "")
                continue
            hops = 0  # blob storage may be elsewhere: no credentials sent there
            while resp.status in REDIRECTS and method in ("GET", "HEAD") \
                    and hops < MAX_REDIRECTS:
                resp.read()
                url = urllib.parse.urljoin(url, resp.header("Location") or "")
                resp = self._send(method, url, dict(headers or {}))
                hops += 1
            break
        return resp

    # --- API ------------------------------------------------------------------------

    def fail(self, resp: Response, what: str) -> HostError:
        """The error of an unexpected answer, with the registry's own message."""
        data = resp.read()
        message = ""
        with contextlib.suppress(ValueError, AttributeError, TypeError, IndexError, KeyError):
            errors = json.loads(data)["errors"]
            message = "; ".join(f"{e.get('code', '')}: {e.get('message', '')}".strip(": ")
                                for e in errors)
        detail = f": {message}" if message else ""
        text = f"{self.ref.registry}/{self.ref.repository}: {what}: {resp.status}{detail}"
        if resp.status == 404:
            return NotFound(f"{text}")
        if resp.status in (401, 403):
            return HostError(f"{text} (authentication required or denied; use --creds "
                             "USER:PASS or myctr login)")
        return HostError(text)

    def get_manifest(self, reference: str) -> tuple[bytes, str, str]:
        """(bytes, media type, digest) of a manifest or index; a digest reference is
        verified."""
        resp = self.request("GET", f"/v2/{self.ref.repository}/manifests/{reference}",
                            {"Accept": dist.ACCEPT})
        if resp.status != 200:
            raise self.fail(resp, f"manifest {reference}")
        ctype = resp.header("Content-Type")
        data = resp.read()
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        if reference.startswith("sha256:") and digest != reference:
            raise SpecError(f"manifest {reference}: the registry served content of digest "
                            f"{digest}")
        return data, dist.media_type(data, ctype), digest

    def get_small_blob(self, desc: dist.Descriptor) -> bytes:
        if desc.size > 16 << 20:
            raise SpecError(f"config blob {desc.digest} is too large ({desc.size} bytes)")
        resp = self.request("GET", f"/v2/{self.ref.repository}/blobs/{desc.digest}")
        if resp.status != 200:
            raise self.fail(resp, f"blob {desc.digest}")
        data = resp.read(desc.size)
        _verify(desc, len(data), "sha256:" + hashlib.sha256(data).hexdigest())
        return data

    def download(self, desc: dist.Descriptor, store: ImageStore,
                 progress: Callable[[int], None]) -> None:
        """Stream a blob into the store (its one blob writer, hashing as it goes); kept
        only once its size and digest match the descriptor."""
        resp = self.request("GET", f"/v2/{self.ref.repository}/blobs/{desc.digest}")
        if resp.status != 200:
            raise self.fail(resp, f"blob {desc.digest}")
        done = 0

        def observe(chunk: bytes) -> None:
            nonlocal done
            done += len(chunk)
            if done > desc.size:  # more than announced: refused, and stop reading
                _verify(desc, done, "")
            progress(done)

        try:
            store.put_blob_stream(resp.resp, observe,
                                  lambda digest, size: _verify(desc, size, digest))
        finally:
            resp.close()

    def has_blob(self, digest: str) -> bool:
        resp = self.request("HEAD", f"/v2/{self.ref.repository}/blobs/{digest}")
        resp.close()
        if resp.status in (200, 404):
            return resp.status == 200
        raise self.fail(resp, f"blob {digest}")

    def upload(self, digest: str, size: int, source: BinaryIO) -> None:
        """A monolithic upload: POST for a session, PUT of the whole blob."""
        resp = self.request("POST", f"/v2/{self.ref.repository}/blobs/uploads/",
                            {"Content-Length": "0"}, b"")
        if resp.status != 202:
            raise self.fail(resp, "blob upload")
        location = resp.header("Location")
        resp.read()
        if not location:
            raise HostError(f"registry {self.host}: blob upload without a Location")
        url = urllib.parse.urljoin(self._url("/v2/"), location)
        url += ("&" if "?" in url else "?") + urllib.parse.urlencode({"digest": digest})
        resp = self.request("PUT", url, {"Content-Type": "application/octet-stream",
                                         "Content-Length": str(size)}, source)
        if resp.status != 201:
            raise self.fail(resp, f"blob {digest} upload")
        resp.read()

    def put_manifest(self, tag: str, data: bytes, kind: str) -> str:
        resp = self.request("PUT", f"/v2/{self.ref.repository}/manifests/{tag}",
                            {"Content-Type": kind, "Content-Length": str(len(data))}, data)
        if resp.status not in (200, 201):
            raise self.fail(resp, f"manifest {tag}")
        digest = resp.header("Docker-Content-Digest") or ""
        resp.read()
        return digest


def _verify(desc: dist.Descriptor, size: int, digest: str) -> None:
    if size != desc.size or digest != desc.digest:
        what = f"{size} bytes" if size != desc.size else f"digest {digest}"
        raise SpecError(f"blob {desc.digest} failed verification: the registry sent {what}")


class _Counting:
    """A file for http.client's body that reports how much was read."""

    def __init__(self, f: BinaryIO, progress: Callable[[int], None]) -> None:
        self.f = f
        self.done = 0
        self.progress = progress

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(max(n, CHUNK))
        self.done += len(data)
        self.progress(self.done)
        return data

    def seek(self, pos: int) -> None:
        self.f.seek(pos)
        self.done = pos


def _reporter(report: Progress, digest: str, total: int, status: str) -> Callable[[int], None]:
    """A progress callback for a worker thread: at most every PROGRESS_INTERVAL s, and
    a check that the pull was not cancelled (the client went away)."""
    last = 0.0

    def progress(done: int) -> None:
        nonlocal last
        trio.from_thread.check_cancelled()
        now = time.monotonic()
        if now - last >= PROGRESS_INTERVAL:
            last = now
            trio.from_thread.run(report, {"digest": digest, "status": status,
                                          "current": done, "total": total})
    return progress


@contextlib.asynccontextmanager
async def _parallel() -> Any:
    """A nursery whose failure is its first task's error, not an ExceptionGroup (the
    client shows one line)."""
    try:
        async with trio.open_nursery() as nursery:
            yield nursery
    except BaseExceptionGroup as group:
        leaves = _leaves(group)
        first = next((e for e in leaves if not isinstance(e, trio.Cancelled)), leaves[0])
        raise first from None


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    found: list[BaseException] = []
    for exc in group.exceptions:
        found.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return found


def _creds(value: Any) -> tuple[str, str] | None:
    if value is None:
        return None
    if isinstance(value, dict) and isinstance(value.get("username"), str) and isinstance(
            value.get("password"), str):
        return value["username"], value["password"]
    raise SpecError("invalid params: 'creds' must be {username, password}")


async def pull(images: ImageService, text: str, tls_verify: bool, creds: Any,
               report: Progress) -> Image:
    """``pull REF``: the image for linux/amd64, recorded under the reference's name."""
    ref = parse(text)
    if ref.name:
        normalize_name(ref.name)  # a name the store takes, before anything is fetched
    session = Session(ref, tls_verify, _creds(creds), "pull")
    store = images.store
    await trio.to_thread.run_sync(session.ping)
    data, kind, digest = await trio.to_thread.run_sync(session.get_manifest, ref.reference)
    if dist.is_index(kind):
        entry = dist.select_platform(data)
        data, kind, digest = await trio.to_thread.run_sync(session.get_manifest, entry.digest)
    manifest = dist.parse_manifest(data, kind)
    await report({"status": "resolved", "digest": digest,
                  "layers": [{"digest": d.digest, "size": d.size} for d in manifest.layers]})
    config = await trio.to_thread.run_sync(session.get_small_blob, manifest.config)
    diff_ids = dist.config_diff_ids(config, len(manifest.layers))
    async with images.lock:
        async def fetch(desc: dist.Descriptor, limiter: trio.CapacityLimiter) -> None:
            if store.has_blob(desc.digest):
                await report({"digest": desc.digest, "status": "exists",
                              "current": desc.size, "total": desc.size})
                return
            async with limiter:
                await trio.to_thread.run_sync(
                    session.download, desc, store,
                    _reporter(report, desc.digest, desc.size, "downloading"))
            await report({"digest": desc.digest, "status": "done", "current": desc.size,
                          "total": desc.size})

        limiter = trio.CapacityLimiter(PARALLEL)
        async with _parallel() as nursery:
            for desc in dict.fromkeys(manifest.layers):
                nursery.start_soon(fetch, desc, limiter)
        layers = []
        for desc, diff_id in zip(manifest.layers, diff_ids, strict=True):
            layers.append(await images.ensure_layer(desc.digest, desc.size, diff_id,
                                                    desc.media_type))
        tags = [ref.name] if ref.name else []
        return await trio.to_thread.run_sync(store.commit_config, config, layers, tags, data)


async def push(images: ImageService, source: str, dest: str | None, tls_verify: bool,
               creds: Any, report: Progress) -> dict[str, Any]:
    """``push SRC [DEST]``: the image's blobs the registry lacks, then its manifest as
    stored (so its digest is the image's manifest digest)."""
    ref = parse(dest or source)
    if ref.digest or not ref.tag:
        raise SpecError(f"push {dest or source}: push to a tag, not a digest")
    session = Session(ref, tls_verify, _creds(creds), "pull,push")
    store = images.store
    async with images.lock:
        image = store.resolve(source)
        await trio.to_thread.run_sync(session.ping)
        data = store.manifest_bytes(image)
        kind = dist.media_type(data, None)
        blobs = [(layer["digest"], layer["size"]) for layer in image.layers]
        blobs.append((image.id, os.path.getsize(store.blob_path(image.id))))

        async def send(digest: str, size: int, limiter: trio.CapacityLimiter) -> None:
            async with limiter:
                if await trio.to_thread.run_sync(session.has_blob, digest):
                    await report({"digest": digest, "status": "exists", "current": size,
                                  "total": size})
                    return
                progress = _reporter(report, digest, size, "uploading")

                def upload() -> None:
                    with open(store.blob_path(digest), "rb") as f:
                        session.upload(digest, size, _Counting(f, progress))  # type: ignore[arg-type]
                await trio.to_thread.run_sync(upload)
            await report({"digest": digest, "status": "done", "current": size, "total": size})

        limiter = trio.CapacityLimiter(PARALLEL)
        async with _parallel() as nursery:
            for digest, size in dict.fromkeys(blobs):
                nursery.start_soon(send, digest, size, limiter)
        pushed = await trio.to_thread.run_sync(session.put_manifest, ref.tag, data, kind)
    if pushed and pushed != image.manifest:
        raise HostError(f"registry {ref.registry} stored manifest {pushed}, "
                        f"expected {image.manifest}")
    return {"id": image.id, "digest": image.manifest, "reference": ref.canonical}
