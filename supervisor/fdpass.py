"""File descriptors over Unix sockets (SCM_RIGHTS): the one encoder and decoder that
the server, the client and the zygote's spawner share.

Only ``_socket`` (the C module under ``socket``): the CLI's cold start imports this,
and ``socket`` costs ~3 ms there (its enums).
"""

from __future__ import annotations

import _socket
import sys

MAX_FDS = 8
FD_SIZE = 4  # a C int, in the host's byte order
ANCILLARY_SPACE = _socket.CMSG_SPACE(FD_SIZE * MAX_FDS)


def rights(fds: list[int] | tuple[int, ...]) -> list[tuple[int, int, bytes]]:
    """The ancillary data that sends ``fds`` (none for no fds)."""
    if not fds:
        return []
    data = b"".join(fd.to_bytes(FD_SIZE, sys.byteorder, signed=True)
                    for fd in fds)
    return [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, data)]


def received(ancdata: list[tuple[int, int, bytes]]) -> list[int]:
    """The fds that came with a recvmsg's ancillary data."""
    fds: list[int] = []
    for level, kind, data in ancdata:
        if level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS:
            usable = len(data) - len(data) % FD_SIZE
            fds.extend(int.from_bytes(data[i:i + FD_SIZE], sys.byteorder, signed=True)
                       for i in range(0, usable, FD_SIZE))
    return fds

