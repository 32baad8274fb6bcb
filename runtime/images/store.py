"""The image store: content-addressed blobs, unpacked layers, image records and tags.

Layout below the data dir::

    images/blobs/sha256/<hex>     layer tarballs, image configs, manifests (as-is)
    images/layers/<hex of diff_id>/   each layer unpacked once: an overlay lower dir
                                      shared by every image and container using it

Records live in the supervisor's SQLite database (tables ``images`` and ``tags``), so
an image appears in one transaction, after its blobs and layers are complete on disk;
a crash before that leaves only files that :meth:`ImageStore.prune` removes (blobs
and layers no image refers to, and ``.tmp-*`` leftovers).

Unpacking is the caller's to arrange (rootless it must run inside a user namespace
with the user's id map): supervisor/images.py unpacks into a ``.tmp-*`` directory
below :attr:`ImageStore.layers_dir` and renames it to :meth:`ImageStore.layer_path`.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import secrets
import sqlite3
import time
from collections.abc import Callable, Iterator
from typing import IO, Any, NamedTuple

from ..errors import Conflict, NotFound, SpecError

SCHEMA = """
CREATE TABLE IF NOT EXISTS images (
    id TEXT PRIMARY KEY,          -- the config's digest, "sha256:..."
    manifest TEXT NOT NULL,       -- the manifest's digest
    created REAL NOT NULL,
    config TEXT NOT NULL,         -- the OCI image config (JSON)
    layers TEXT NOT NULL,         -- [{"digest", "diff_id", "size", "media_type"}], base first
    size INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS tags (
    name TEXT PRIMARY KEY,        -- "busybox:latest"
    image TEXT NOT NULL REFERENCES images(id)
);
CREATE TABLE IF NOT EXISTS build_cache (
    key TEXT PRIMARY KEY,         -- sha256 of (parent image, instruction, sources)
    image TEXT NOT NULL REFERENCES images(id)
);
"""

LAYER_MEDIA_TYPE = "application/vnd.oci.image.layer.v1.tar"
LAYER_GZIP_MEDIA_TYPE = "application/vnd.oci.image.layer.v1.tar+gzip"
CONFIG_MEDIA_TYPE = "application/vnd.oci.image.config.v1+json"
MANIFEST_MEDIA_TYPE = "application/vnd.oci.image.manifest.v1+json"


def rfc3339(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


class Image(NamedTuple):
    id: str
    manifest: str
    created: float
    config: dict[str, Any]
    layers: list[dict[str, Any]]
    size: int
    tags: tuple[str, ...]

    @property
    def short_id(self) -> str:
        return self.id.split(":", 1)[1][:12]


def normalize_name(name: str) -> str:
    """``busybox`` -> ``busybox:latest``; checks the characters docker allows."""
    import re

    if "@" in name:
        raise SpecError(f"invalid image name {name!r}: digests are not names")
    last = name.rsplit("/", 1)[-1]
    if ":" not in last:
        name = f"{name}:latest"
    repo, _, tag = name.rpartition(":")
    if not re.fullmatch(r"[a-z0-9]+(?:[._/-][a-z0-9]+)*(?::[0-9]+)?(?:/[a-z0-9._-]+)*", repo) \
            or not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}", tag):
        raise SpecError(f"invalid image name {name!r}: expected NAME[:TAG] in lower case")
    return name


class ImageStore:
    def __init__(self, data_dir: str, db: sqlite3.Connection) -> None:
        self.root = os.path.join(data_dir, "images")
        self.blobs = os.path.join(self.root, "blobs", "sha256")
        self.layers_dir = os.path.join(self.root, "layers")
        for d in (self.blobs, self.layers_dir):
            os.makedirs(d, mode=0o700, exist_ok=True)
        os.chmod(self.root, 0o711)  # layers are lower dirs of containers (rootless maps)
        self.db = db
        self.db.executescript(SCHEMA)

    # --- blobs ----------------------------------------------------------------------

    def blob_path(self, digest: str) -> str:
        algorithm, _, hexdigest = digest.partition(":")
        if algorithm != "sha256" or len(hexdigest) != 64 or not all(
                c in "0123456789abcdef" for c in hexdigest):
            raise SpecError(f"invalid digest {digest!r}")
        return os.path.join(self.blobs, hexdigest)

    def put_blob_file(self, path: str) -> tuple[str, int]:
        """Copy a file into the blob store; (its digest, size)."""
        with open(path, "rb") as src:
            return self.put_blob_stream(src)

    def put_blob_stream(self, src: IO[bytes],
                        observe: Callable[[bytes], None] | None = None,
                        check: Callable[[str, int], None] | None = None) -> tuple[str, int]:
        """Copy a stream into the blob store under its digest (a temp file renamed once
        complete and synced); ``observe`` sees every chunk, ``check(digest, size)`` may
        refuse the blob before it is kept. (digest, size)."""
        tmp = os.path.join(self.blobs, f".tmp-{secrets.token_hex(8)}")
        digest = hashlib.sha256()
        size = 0
        try:
            with open(tmp, "wb") as dst:
                while chunk := src.read(1 << 20):
                    digest.update(chunk)
                    if observe is not None:
                        observe(chunk)
                    dst.write(chunk)
                    size += len(chunk)
                dst.flush()
                os.fsync(dst.fileno())
            name = "sha256:" + digest.hexdigest()
            if check is not None:
                check(name, size)
            os.replace(tmp, self.blob_path(name))
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        return name, size

    def put_blob_bytes(self, data: bytes) -> str:
        name = "sha256:" + hashlib.sha256(data).hexdigest()
        if not self.has_blob(name):
            self.put_blob_stream(io.BytesIO(data))
        return name

    # --- layers ---------------------------------------------------------------------

    def layer_path(self, diff_id: str) -> str:
        return os.path.join(self.layers_dir, self.blob_path(diff_id).rsplit("/", 1)[1])

    def layer_media_type(self, digest: str) -> str:
        with open(self.blob_path(digest), "rb") as f:
            return LAYER_GZIP_MEDIA_TYPE if f.read(2) == b"\x1f\x8b" else LAYER_MEDIA_TYPE

    # --- images ---------------------------------------------------------------------

    def commit(self, layers: list[dict[str, Any]], config: dict[str, Any],
               tags: list[str], history: str | list[dict[str, Any]],
               base: dict[str, Any] | None = None) -> Image:
        """A new image from layers (base first) and a container config (``Env``,
        ``Cmd``...): writes the OCI image config and manifest blobs, then records it.
        ``history`` is one ``created_by`` text or the whole list of history entries;
        ``base`` is an image config document whose other fields are kept."""
        now = time.time()
        if isinstance(history, str):
            history = [{"created": rfc3339(now), "created_by": history}]
        doc = {
            **(base or {}),
            "created": rfc3339(now), "architecture": "amd64", "os": "linux",
            "config": config,
            "rootfs": {"type": "layers", "diff_ids": [layer["diff_id"] for layer in layers]},
            "history": history,
        }
        config_bytes = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
        return self.commit_config(config_bytes, layers, tags)

    def commit_config(self, config_bytes: bytes, layers: list[dict[str, Any]],
                      tags: list[str], manifest_bytes: bytes | None = None) -> Image:
        """Record an image whose config (and manifest, when it came with one: a pull)
        are kept byte for byte, so its id and manifest digest are the ones other tools
        compute. Every layer's blob and unpacked dir must be in the store already, and
        the config's ``rootfs.diff_ids`` must be the layers' ``diff_id``s."""
        try:
            doc = json.loads(config_bytes)
            diff_ids = list(doc["rootfs"]["diff_ids"])
        except (ValueError, KeyError, TypeError):
            raise SpecError("image config is not valid: no rootfs.diff_ids") from None
        if diff_ids != [layer["diff_id"] for layer in layers]:
            raise SpecError("image config's rootfs.diff_ids do not match its layers")
        for layer in layers:
            if not self.has_blob(layer["digest"]) or not self.has_layer(layer["diff_id"]):
                raise SpecError(f"layer {layer['digest']} is not in the store")
        image_id = self.put_blob_bytes(config_bytes)
        if manifest_bytes is None:
            manifest = {
                "schemaVersion": 2, "mediaType": MANIFEST_MEDIA_TYPE,
                "config": {"mediaType": CONFIG_MEDIA_TYPE, "digest": image_id,
                           "size": len(config_bytes)},
                "layers": [{"mediaType": layer["media_type"], "digest": layer["digest"],
                            "size": layer["size"]} for layer in layers],
            }
            manifest_bytes = json.dumps(manifest, sort_keys=True).encode()
        manifest_id = self.put_blob_bytes(manifest_bytes)
        size = sum(layer["size"] for layer in layers)
        names = [normalize_name(t) for t in tags]
        created = _created(doc)
        with self.db:
            self.db.execute(
                "INSERT INTO images (id, manifest, created, config, layers, size) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET "
                "manifest = excluded.manifest, layers = excluded.layers, size = excluded.size",
                (image_id, manifest_id, created, config_bytes.decode(), json.dumps(layers),
                 size))
            for name in names:
                self.db.execute("INSERT OR REPLACE INTO tags (name, image) VALUES (?, ?)",
                                (name, image_id))
        return self.get(image_id)

    def has_blob(self, digest: str) -> bool:
        return os.path.exists(self.blob_path(digest))

    def has_layer(self, diff_id: str) -> bool:
        return os.path.isdir(self.layer_path(diff_id))

    def read_blob(self, digest: str) -> bytes:
        with open(self.blob_path(digest), "rb") as f:
            return f.read()

    def manifest_bytes(self, image: Image) -> bytes:
        return self.read_blob(image.manifest)

    def history(self, image: Image) -> list[dict[str, Any]]:
        """``history``: newest first, each entry with the layer it made (or none) and
        that layer's size, as podman shows it."""
        layers = list(image.layers)
        entries = []
        for entry in image.config.get("history") or []:
            layer = None if entry.get("empty_layer") else (layers.pop(0) if layers else None)
            entries.append({"created": entry.get("created", ""),
                            "created_by": entry.get("created_by", ""),
                            "comment": entry.get("comment", ""),
                            "layer": layer["digest"] if layer else None,
                            "size": layer["size"] if layer else 0})
        for layer in layers:  # an image whose history does not cover its layers
            entries.append({"created": "", "created_by": "", "comment": "",
                            "layer": layer["digest"], "size": layer["size"]})
        entries.reverse()
        return entries

    # --- build cache ----------------------------------------------------------------

    def cached(self, key: str) -> Image | None:
        row = self.db.execute("SELECT image FROM build_cache WHERE key = ?", (key,)).fetchone()
        if row is None:
            return None
        try:
            return self._row(row[0])
        except NotFound:
            return None

    def remember(self, key: str, image_id: str) -> None:
        with self.db:
            self.db.execute("INSERT OR REPLACE INTO build_cache (key, image) VALUES (?, ?)",
                            (key, image_id))

    def _row(self, image_id: str) -> Image:
        row = self.db.execute("SELECT id, manifest, created, config, layers, size FROM images "
                              "WHERE id = ?", (image_id,)).fetchone()
        if row is None:
            raise NotFound(f"no such image: {image_id}")
        tags = tuple(t for (t,) in self.db.execute(
            "SELECT name FROM tags WHERE image = ? ORDER BY name", (image_id,)))
        return Image(row[0], row[1], row[2], json.loads(row[3]), json.loads(row[4]), row[5],
                     tags)

    def intermediate(self) -> set[str]:
        """Ids of build-cache images (hidden by ``images`` unless ``-a``)."""
        return {i for (i,) in self.db.execute("SELECT image FROM build_cache")}

    def get(self, image_id: str) -> Image:
        return self._row(image_id)

    def resolve(self, ref: str) -> Image:
        """An image by name[:tag], full id, or unique id prefix (with or without
        ``sha256:``)."""
        with contextlib.suppress(SpecError):
            for name in short_name_candidates(normalize_name(ref)):
                row = self.db.execute("SELECT image FROM tags WHERE name = ?",
                                      (name,)).fetchone()
                if row:
                    return self._row(row[0])
        prefix = ref.removeprefix("sha256:")
        if prefix and all(c in "0123456789abcdef" for c in prefix):
            rows = self.db.execute("SELECT id FROM images WHERE id LIKE ?",
                                   (f"sha256:{prefix}%",)).fetchall()
            if len(rows) == 1:
                return self._row(rows[0][0])
            if rows:
                raise Conflict(f"image id prefix {ref!r} is ambiguous")
        raise NotFound(f"no such image: {ref}")

    def all(self) -> Iterator[Image]:
        for (image_id,) in self.db.execute("SELECT id FROM images ORDER BY created").fetchall():
            yield self._row(image_id)

    def tag(self, ref: str, name: str) -> Image:
        image = self.resolve(ref)
        with self.db:
            self.db.execute("INSERT OR REPLACE INTO tags (name, image) VALUES (?, ?)",
                            (normalize_name(name), image.id))
        return self.get(image.id)

    def lower_dirs(self, image: Image) -> tuple[str, ...]:
        """The image's layers as overlay lower dirs, top layer first."""
        return tuple(self.layer_path(layer["diff_id"]) for layer in reversed(image.layers))

    def remove(self, ref: str, in_use: Callable[[str], bool]) -> tuple[list[str], str | None]:
        """As docker: a name of an image with other names is untagged; otherwise (an
        id, or its last name) the image is deleted, unless a container uses it.
        Returns (untagged names, deleted image id or None); files go with prune."""
        image = self.resolve(ref)
        name = _tag_of(ref, image)
        if name is not None and len(image.tags) > 1:
            with self.db:
                self.db.execute("DELETE FROM tags WHERE name = ?", (name,))
            return [name], None
        if in_use(image.id):
            raise Conflict(f"image {ref} is used by a container: remove the container first")
        self._delete(image.id)
        return list(image.tags), image.id

    def _delete(self, image_id: str) -> None:
        with self.db:
            self.db.execute("DELETE FROM tags WHERE image = ?", (image_id,))
            self.db.execute("DELETE FROM build_cache WHERE image = ?", (image_id,))
            self.db.execute("DELETE FROM images WHERE id = ?", (image_id,))

    def remove_dangling(self, in_use: Callable[[str], bool]) -> list[str]:
        """``image prune``: delete every image without a name (build cache included)
        that no container uses; returns their ids."""
        rows = self.db.execute("SELECT id FROM images WHERE id NOT IN "
                               "(SELECT image FROM tags)").fetchall()
        deleted = [i for (i,) in rows if not in_use(i)]
        for image_id in deleted:
            self._delete(image_id)
        return deleted

    def unreferenced(self, busy: set[str] | frozenset[str] = frozenset()
                     ) -> tuple[list[str], list[str]]:
        """(blob paths, layer dirs) that no image refers to, temp leftovers included,
        except the ``busy`` paths (a running build's files)."""
        blobs: set[str] = set()
        layers: set[str] = set()
        for image in self.all():
            blobs.update({image.id, image.manifest})
            blobs.update(layer["digest"] for layer in image.layers)
            layers.update(layer["diff_id"] for layer in image.layers)
        keep_blobs = {self.blob_path(b) for b in blobs}
        keep_layers = {self.layer_path(d) for d in layers}
        keep_blobs |= busy
        keep_layers |= busy
        stale_blobs = [os.path.join(self.blobs, n) for n in os.listdir(self.blobs)
                       if os.path.join(self.blobs, n) not in keep_blobs]
        stale_layers = [os.path.join(self.layers_dir, n) for n in os.listdir(self.layers_dir)
                        if os.path.join(self.layers_dir, n) not in keep_layers]
        return stale_blobs, stale_layers


def short_name_candidates(name: str) -> list[str]:
    """The names a normalized name may find, in order: itself, then, when it names no
    registry, ``localhost/NAME`` and ``docker.io/library/NAME`` (``docker.io/NAME``
    for ``a/b``): podman's names for local and Docker Hub images, so ``run foo`` finds
    a loaded ``localhost/foo:latest`` as podman's short-name lookup does."""
    first, slash, _ = name.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        return [name]
    return [name, f"localhost/{name}",
            f"docker.io/{name}" if slash else f"docker.io/library/{name}"]


def _tag_of(ref: str, image: Image) -> str | None:
    try:
        names = short_name_candidates(normalize_name(ref))
    except SpecError:
        return None
    return next((name for name in names if name in image.tags), None)


def _created(doc: dict[str, Any]) -> float:
    """The config's ``created`` (RFC 3339) as a timestamp; now when absent or odd."""
    import datetime

    text = doc.get("created")
    if isinstance(text, str):
        try:
            return datetime.datetime.fromisoformat(_trim_fraction(text)).timestamp()
        except ValueError:
            pass
    return time.time()


def _trim_fraction(text: str) -> str:
    """Python 3.11's fromisoformat takes at most 6 fraction digits; Go writes 9."""
    import re

    text = text.replace("Z", "+00:00")
    return re.sub(r"(\.\d{6})\d+", r"\1", text)
