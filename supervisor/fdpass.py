"""File descriptors over Unix sockets (SCM_RIGHTS): the one encoder and decoder that
the server, the client and the zygote's spawner share."""

from __future__ import annotations

import array
import socket

MAX_FDS = 8
ANCILLARY_SPACE = socket.CMSG_SPACE(4 * MAX_FDS)


def rights(fds: list[int] | tuple[int, ...]) -> list[tuple[int, int, bytes]]:
    """The ancillary data that sends ``fds`` (none for no fds)."""
    if not fds:
        return []
    return [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())]


def received(ancdata: list[tuple[int, int, bytes]]) -> list[int]:
    """The fds that came with a recvmsg's ancillary data."""
    fds: list[int] = []
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            arr = array.array("i")
            arr.frombytes(data[: len(data) - len(data) % arr.itemsize])
            fds.extend(arr)
    return fds
