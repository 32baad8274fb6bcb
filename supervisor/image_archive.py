"""``image save`` and ``image load``: image archives (docker-archive, oci-archive; see
runtime/images/archive.py) through :class:`supervisor.images.ImageService`.

The archive travels as a file descriptor the client passed (its own file or its
stdin/stdout, opened with its permissions), or as an absolute ``path`` the supervisor
opens. A load holds the service's lock throughout: members are copied into the blob
store as they stream in, each layer is unpacked (rootless by the zygote, in the user's
id map) and checked against the config's diff_id, and each image is recorded last, in
one transaction; a failure removes whatever no image refers to, and a crash leaves
only such files, which ``image prune`` removes. A save holds the lock too, so no
removal takes a blob away while it is written.
"""

from __future__ import annotations

import os
from typing import Any

import trio

from runtime.errors import SpecError
from runtime.images.archive import (
    DOCKER_ARCHIVE,
    FORMATS,
    ArchiveError,
    read_archive,
    write_archive,
)
from runtime.images.layer import LayerError
from runtime.images.store import Image, normalize_name, short_name_candidates
from supervisor import protocol
from supervisor.images import ImageService


def archive_fd(params: dict[str, Any], fds: list[int], write: bool) -> int:
    """The archive's descriptor (now the caller's to close): the one passed, or the
    ``path`` param opened."""
    if fds:
        return fds.pop(0)
    path = params.get("path")
    if not isinstance(path, str) or not os.path.isabs(path):
        raise protocol.RpcError(protocol.INVALID_PARAMS, "invalid params: pass the archive "
                                "as a file descriptor or an absolute 'path'")
    try:
        if write:
            return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise ArchiveError(f"{path}: {exc.strerror}") from None


async def load(service: ImageService, fd: int) -> dict[str, Any]:
    """Read an archive from ``fd`` (closed here) and record its images."""
    store = service.store

    def read() -> tuple[str, list[Any]]:
        with open(fd, "rb", buffering=1 << 20, closefd=False) as f:
            return read_archive(f, store)

    try:
        async with service.lock:
            fmt, items, loaded = await _load_locked(service, read)
    finally:
        os.close(fd)
    return {"format": fmt,
            "images": [{"id": image.id, "names": item.names, "tags": list(image.tags)}
                       for image, item in zip(loaded, items, strict=True)]}


async def _load_locked(service: ImageService,
                       read: Any) -> tuple[str, list[Any], list[Image]]:
    store = service.store
    try:
        try:
            fmt, items = await trio.to_thread.run_sync(read)
        except ArchiveError as exc:
            raise ArchiveError(f"image load: {exc}") from None
        loaded: list[Image] = []
        for item in items:
            try:
                layers = [await service.ensure_layer(layer.digest, layer.size,
                                                     layer.diff_id, layer.media_type)
                          for layer in item.layers]
            except LayerError as exc:
                raise ArchiveError(f"image load: {exc}") from None
            loaded.append(await trio.to_thread.run_sync(
                store.commit_config, item.config, layers, item.names, item.manifest))
    except BaseException:
        with trio.CancelScope(shield=True):
            await service._prune_files()  # blobs and layers of the half load
        raise
    await service._prune_files()  # archive members no image uses (legacy dirs, ...)
    return fmt, items, loaded


def _selection(service: ImageService, refs: list[str]) -> list[tuple[Image, list[str]]]:
    """Each image once, in the order asked, with the names it was asked by (an id
    gives no name, as podman and docker do)."""
    chosen: dict[str, tuple[Image, list[str]]] = {}
    for ref in refs:
        image = service.store.resolve(ref)
        entry = chosen.setdefault(image.id, (image, []))
        try:
            name = normalize_name(ref)
        except SpecError:
            continue
        found = [n for n in short_name_candidates(name) if n in image.tags]
        if found and found[0] not in entry[1]:
            entry[1].append(found[0])
    return list(chosen.values())


async def save(service: ImageService, fd: int, refs: list[str], fmt: str) -> dict[str, Any]:
    """Write the images ``refs`` as a ``fmt`` archive to ``fd`` (closed here)."""
    try:
        if fmt not in FORMATS:
            raise ArchiveError(f"image save: unknown format {fmt!r} "
                               f"(known: {', '.join(FORMATS)})")
        async with service.lock:
            images = _selection(service, refs)

            def write() -> None:
                try:
                    with open(fd, "wb", buffering=1 << 20, closefd=False) as f:
                        write_archive(f, service.store, images, fmt)
                except OSError as exc:  # not ConnectionError: that would mean our client
                    raise ArchiveError(f"image save: writing the archive: "
                                       f"{exc.strerror or exc}") from None

            await trio.to_thread.run_sync(write)
    finally:
        os.close(fd)
    return {"format": fmt, "images": [{"id": image.id, "names": names}
                                      for image, names in images]}


def save_params(params: dict[str, Any]) -> tuple[list[str], str]:
    refs = params.get("refs")
    fmt = params.get("format", DOCKER_ARCHIVE)
    if not isinstance(refs, list) or not refs or not all(
            isinstance(r, str) and r for r in refs) or not isinstance(fmt, str):
        raise protocol.RpcError(protocol.INVALID_PARAMS, "invalid params: 'refs' must be a "
                                "list of image names or ids, 'format' a string")
    return refs, fmt
