"""The typed parent <-> container-init handshake, over a SOCK_SEQPACKET socketpair.

Each message is one packet holding a JSON object ``{"type": NAME, ...fields}``; a
:class:`PtyMaster` packet also carries a file descriptor (SCM_RIGHTS).

The sequence::

    parent                                   init (in its new namespaces)
      ── Placed ──────────────────────▶      (cgroups joined, id maps written)
                                             mounts, pivot_root, hostname, ...
      ◀────────────── PtyMaster(fd) ──       (only with a terminal)
      ◀──────────────────── Ready ───
      ── Start ───────────────────────▶      caps, seccomp, execve
      ◀──── EOF (exec succeeded; the socket is close-on-exec)
      ◀──── SetupFailed(errno, msg) | ExecFailed(errno, msg)   (then the init exits)
"""

from __future__ import annotations

import json
import os
import socket
from typing import Any, NamedTuple


class Placed(NamedTuple):
    """The parent moved the child into its cgroups and wrote its id maps: the child
    may unshare its cgroup namespace and become root in its user namespace."""


class Ready(NamedTuple):
    """The init built its root and stands before exec."""


class Start(NamedTuple):
    """The parent set up everything outside: exec now."""


class SetupFailed(NamedTuple):
    errno: int
    message: str


class ExecFailed(NamedTuple):
    errno: int
    message: str


class PtyMaster(NamedTuple):
    fd: int = -1


Message = Placed | Ready | Start | SetupFailed | ExecFailed | PtyMaster
_TYPES: dict[str, type[Any]] = {
    cls.__name__: cls
    for cls in (Placed, Ready, Start, SetupFailed, ExecFailed, PtyMaster)
}
_MAX_PACKET = 65536
# The messages without fields, as they travel: an init sends and takes them with one
# plain send or recv (in a fresh fork every Python function met for the first time
# costs copy-on-write faults: socket.send_fds/recv_fds and json cost ~0.1 ms there).
_ENCODED: dict[type[Any], bytes] = {
    cls: json.dumps({"type": cls.__name__}).encode() for cls in (Placed, Ready, Start)
}
_DECODED: dict[bytes, Any] = {data: cls() for cls, data in _ENCODED.items()}


def packet(cls: type[Placed | Ready | Start | PtyMaster]) -> bytes:
    """The packet of a message without fields (a PtyMaster's fd travels beside it), as
    the native init sends and expects it."""
    return _ENCODED.get(cls) or json.dumps({"type": cls.__name__}).encode()


class ChannelClosed(Exception):
    """The other side closed the channel (for the parent: the init exec'd or died)."""


class Channel:
    """One end of the handshake socketpair."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    @staticmethod
    def pair() -> tuple[Channel, Channel]:
        """(parent end, child end); both close-on-exec."""
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        return Channel(a), Channel(b)

    def fileno(self) -> int:
        return self.sock.fileno()

    def send(self, message: Message) -> None:
        encoded = _ENCODED.get(type(message))
        if encoded is not None:
            self.sock.send(encoded)
            return
        fields = message._asdict()
        fds = [fields.pop("fd")] if isinstance(message, PtyMaster) else []
        payload = json.dumps({"type": type(message).__name__, **fields}).encode()
        socket.send_fds(self.sock, [payload], fds)

    def receive(self) -> Message:
        data, fds, _flags, _addr = socket.recv_fds(self.sock, _MAX_PACKET, 1)
        if not data:
            raise ChannelClosed
        return _decode(data, fds)

    def expect(self, cls: type[Any]) -> Any:
        """The next message, which must be a ``cls``."""
        if cls in _ENCODED:  # no fds can come with it
            data = self.sock.recv(_MAX_PACKET)
            if not data:
                raise ChannelClosed
            message = _DECODED.get(data)
            if message is None:
                message = _decode(data, [])
        else:
            message = self.receive()
        if not isinstance(message, cls):
            raise ChannelClosed(f"expected {cls.__name__}, got {message!r}")
        return message

    def close(self) -> None:
        self.sock.close()


# A failure of the native init (runtime/nativeinit.c): "\0F", its kind, errno (i32),
# and the text naming what failed.
_NATIVE_FAILURE = b"\0F"
_NATIVE_SETUP, _NATIVE_EXEC, _NATIVE_NOT_IN_PATH, _NATIVE_NO_FILE, _NATIVE_DENIED = range(5)


def _decode_native(data: bytes) -> SetupFailed | ExecFailed:
    kind = data[2]
    err = int.from_bytes(data[3:7], "little", signed=True)
    what = data[7:].decode(errors="replace")
    if kind == _NATIVE_SETUP:
        return SetupFailed(err, f"{what}: {os.strerror(err)}" if err else what)
    if kind == _NATIVE_NOT_IN_PATH:
        return ExecFailed(err, f'exec "{what}": executable file not found in $PATH')
    if kind == _NATIVE_NO_FILE:
        return ExecFailed(err, f'exec "{what}": no such file or directory')
    if kind == _NATIVE_DENIED:
        return ExecFailed(err, f'exec "{what}": permission denied')
    return ExecFailed(err, f'exec "{what}": {os.strerror(err)}')


def _decode(data: bytes, fds: list[int]) -> Message:
    if data.startswith(_NATIVE_FAILURE):
        return _decode_native(data)
    doc = json.loads(data)
    cls = _TYPES[doc.pop("type")]
    if cls is PtyMaster:
        return PtyMaster(fd=fds[0])
    message: Message = cls(**doc)
    return message
