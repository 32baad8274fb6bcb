"""The supervisor's image verbs over :class:`runtime.images.store.ImageStore`: import a
rootfs tarball as a one-layer image, list, inspect, tag, remove, prune.

Layers are unpacked in a worker thread as root; rootless, by the zygote inside a user
namespace with the user's subordinate id map (files keep their ids, shifted), exactly
as container directories are removed."""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from typing import Any

import trio

from runtime.errors import HostError, SpecError
from runtime.idmap import IdMapPlan
from runtime.images.layer import LayerError, unpack
from runtime.images.store import Image, ImageStore, normalize_name
from supervisor.spawner import Spawner

DEFAULT_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class ImageService:
    def __init__(self, store: ImageStore, spawner: Spawner, plan: IdMapPlan | None) -> None:
        self.store = store
        self.spawner = spawner
        self.plan = plan  # rootless: the user's subordinate map; root: None
        self.lock = trio.Lock()  # one writer at a time (imports, removals, prune)
        # what running builds still need: their temp files and intermediate images,
        # which prune must leave alone
        self.busy_paths: set[str] = set()
        self.busy_images: set[str] = set()

    async def import_tar(self, path: str, name: str, changes: dict[str, Any],
                         history: str | None = None) -> Image:
        """``image import``: a rootfs tarball (plain or gzip) as a one-layer image."""
        if not os.path.isabs(path) or not os.path.isfile(path):
            raise SpecError(f"image import: {path}: no such file")
        tag = normalize_name(name)
        async with self.lock:
            layer = await self.add_layer_file(path)
            config = {"Env": [DEFAULT_ENV], **changes}
            history = history or f"myctr image import {os.path.basename(path)}"
            return await trio.to_thread.run_sync(
                self.store.commit, [layer], config, [tag], history)

    async def add_layer_file(self, path: str) -> dict[str, Any]:
        """Copy a layer tarball (plain or gzip) into the blob store and unpack it; the
        layer's record for :meth:`ImageStore.commit`. Callers hold :attr:`lock`."""
        blob, size = await trio.to_thread.run_sync(self.store.put_blob_file, path)
        try:
            return await self.ensure_layer(blob, size)
        except BaseException:
            with trio.CancelScope(shield=True):
                await self._prune_files()  # the blob, unless an image shares it
            raise

    async def ensure_layer(self, blob: str, size: int, diff_id: str | None = None,
                           media_type: str | None = None) -> dict[str, Any]:
        """The layer of a blob already in the store, unpacked once: when ``diff_id``
        is known and its directory exists, nothing is read; otherwise the blob is
        unpacked (into a temp dir renamed into place) and, when ``diff_id`` was given,
        the unpacked stream's digest must match it. Callers hold :attr:`lock`."""
        if diff_id is None or not self.store.has_layer(diff_id):
            tmp = os.path.join(self.store.layers_dir, f".tmp-{secrets.token_hex(8)}")
            os.mkdir(tmp, 0o755)
            try:
                found = await self._unpack(self.store.blob_path(blob), tmp)
                if diff_id is not None and found != diff_id:
                    raise LayerError(f"layer {blob}: its content is {found}, "
                                     f"the image config says {diff_id}")
                diff_id = found
                if self.store.has_layer(diff_id):
                    await self._remove_tree(tmp)
                else:
                    os.rename(tmp, self.store.layer_path(diff_id))
            except BaseException:
                with trio.CancelScope(shield=True):
                    await self._remove_tree(tmp)
                raise
        return {"digest": blob, "diff_id": diff_id, "size": size,
                "media_type": media_type or self.store.layer_media_type(blob)}

    async def bootstrap_busybox(self, name: str) -> Image:
        """``image bootstrap busybox``: an image from the host's busybox-static, for
        machines without a registry; its files belong to root, its Cmd is ``sh``."""
        import tempfile

        work = await trio.to_thread.run_sync(
            lambda: tempfile.mkdtemp(prefix=".bootstrap-", dir=self.store.root))
        try:
            tar = await trio.to_thread.run_sync(_busybox_tarball, work)
            return await self.import_tar(tar, name, {"Cmd": ["sh"]},
                                         history="myctr image bootstrap busybox")
        finally:
            import shutil

            await trio.to_thread.run_sync(shutil.rmtree, work, True)

    async def _unpack(self, tar: str, dest: str) -> str:
        if self.plan is None:
            def run() -> str:
                with open(tar, "rb") as f:
                    return unpack(f, dest).diff_id
            try:
                return await trio.to_thread.run_sync(run)
            except LayerError:
                raise
            except OSError as exc:
                raise HostError(f"unpacking {tar}: {exc.strerror or exc}") from None
        return await self.spawner.unpack_layer(tar, dest, self.plan)

    async def _remove_tree(self, path: str) -> None:
        if not os.path.exists(path):
            return
        if self.plan is not None:
            await self.spawner.remove_trees([path], self.plan)
        else:
            import shutil

            await trio.to_thread.run_sync(shutil.rmtree, path, True)

    async def remove(self, ref: str, in_use: Callable[[str], bool]) -> dict[str, Any]:
        async with self.lock:
            untagged, deleted = self.store.remove(ref, in_use)
            if deleted is not None:
                await self._prune_files()
        return {"untagged": untagged, "deleted": deleted}

    async def prune(self, in_use: Callable[[str], bool]) -> dict[str, Any]:
        """``image prune``: images without a name (and build cache) that no container
        uses, then every blob and layer no image refers to."""
        async with self.lock:
            deleted = self.store.remove_dangling(
                lambda image_id: image_id in self.busy_images or in_use(image_id))
            return {"deleted": deleted, **await self._prune_files()}

    async def _prune_files(self) -> dict[str, Any]:
        blobs, layers = await trio.to_thread.run_sync(self.store.unreferenced,
                                                      frozenset(self.busy_paths))
        for path in blobs:
            os.unlink(path)
        for path in layers:
            await self._remove_tree(path)
        return {"blobs": len(blobs), "layers": len(layers)}


def _busybox_tarball(work: str) -> str:
    """The busybox rootfs as a gzip tarball whose files all belong to root."""
    import tarfile

    from runtime.bootstrap import bootstrap_busybox

    rootfs = os.path.join(work, "rootfs")
    bootstrap_busybox(rootfs)
    path = os.path.join(work, "busybox.tar.gz")

    def as_root(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.uid = info.gid = 0
        info.uname = info.gname = "root"
        return info

    with tarfile.open(path, "w:gz", format=tarfile.PAX_FORMAT) as archive:
        archive.add(rootfs, arcname=".", filter=as_root)
    return path


def summary(image: Image) -> dict[str, Any]:
    return {"id": image.id, "short_id": image.short_id, "tags": list(image.tags),
            "created": image.created, "size": image.size, "layers": len(image.layers)}


def image_defaults(image: Image) -> dict[str, Any]:
    """What a container of ``image`` inherits: Env, Entrypoint, Cmd, WorkingDir, User."""
    config = image.config.get("config") or {}
    return {
        "env": list(config.get("Env") or []),
        "entrypoint": list(config.get("Entrypoint") or []),
        "cmd": list(config.get("Cmd") or []),
        "workdir": config.get("WorkingDir") or "",
        "user": config.get("User") or "",
        "stop_signal": config.get("StopSignal") or "",
        "exposed_ports": sorted(config.get("ExposedPorts") or {}),
    }
