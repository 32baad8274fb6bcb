"""The CLI's side of the control socket: a small blocking JSON-RPC client (no event
loop, for a cold start that stays small), with fd passing, and the auto-start of a
background supervisor when none answers.

It imports C modules and our own lean ones only (``_socket``, :mod:`supervisor.jsonwire`):
``socket``, ``json`` and ``typing`` would cost a cold ``myctr run`` ~15 ms.
"""

from __future__ import annotations

import _socket
import os
import sys
import time

from runtime.errors import ContainerError, HostError
from runtime.paths import StatePaths
from supervisor import fdpass, jsonwire

TYPE_CHECKING = False
if TYPE_CHECKING:  # the cold start stays without typing's ~5 ms
    from collections.abc import Iterator
    from typing import Any

AUTOSTART_IDLE_EXIT = 30.0
METHOD_NOT_FOUND = -32601  # JSON-RPC's (protocol.py, with json and typing, stays out)


class Client:
    def __init__(self, sock: _socket.socket) -> None:
        self.sock = sock
        self.buffer = b""
        self.fds: list[int] = []
        self.next_id = 0
        self.early: dict[Any, dict[str, Any]] = {}

    def send(self, method: str, params: dict[str, Any], fds: list[int] | None = None) -> int:
        self.next_id += 1
        line = jsonwire.dumps({"jsonrpc": "2.0", "id": self.next_id, "method": method,
                               "params": params}).encode() + b"\n"
        sent = self.sock.sendmsg([line], fdpass.rights(fds or []))
        if sent < len(line):
            self.sock.sendall(line[sent:])
        return self.next_id

    def receive(self) -> dict[str, Any]:
        """The next message from the supervisor (a response or a notification)."""
        while b"\n" not in self.buffer:
            data, ancdata, _flags, _addr = self.sock.recvmsg(65536, fdpass.ANCILLARY_SPACE)
            self.fds.extend(fdpass.received(ancdata))
            if not data:
                raise HostError("the supervisor closed the connection")
            self.buffer += data
        line, _, self.buffer = self.buffer.partition(b"\n")
        message: dict[str, Any] = jsonwire.loads(line.decode())
        return message

    def result(self, request_id: int, unknown_method_ok: bool = False) -> Any:
        """Wait for the response to ``request_id``; raise its error as a myctr error
        (``unknown_method_ok``: None when the supervisor has no such method, an older
        one)."""
        while True:
            message = self.early.pop(request_id, None) or self.receive()
            if message.get("id") == request_id:
                if "error" in message:
                    if unknown_method_ok and message["error"].get("code") == METHOD_NOT_FOUND:
                        return None
                    raise error_to_exception(message["error"])
                return message.get("result")
            if "id" in message and message["id"] is not None:
                self.early[message["id"]] = message

    def call(self, method: str, params: dict[str, Any] | None = None,
             fds: list[int] | None = None) -> Any:
        return self.result(self.send(method, params or {}, fds))

    def stream(self, method: str, params: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """Yield the params of each stream notification until the final response."""
        request_id = self.send(method, params)
        while True:
            message = self.receive()
            if message.get("id") == request_id:
                if "error" in message:
                    raise error_to_exception(message["error"])
                self.stream_result = message.get("result")
                return
            params_ = message.get("params") or {}
            if "method" in message and params_.get("request_id") == request_id:
                yield params_

    stream_result: Any = None  # the final response of the last stream

    def take_fds(self) -> list[int]:
        fds, self.fds = self.fds, []
        return fds

    def close(self) -> None:
        self.sock.close()


def error_to_exception(error: dict[str, Any]) -> ContainerError:
    from supervisor.protocol import exception_from_error

    exc = exception_from_error(error)
    return exc if isinstance(exc, ContainerError) else ContainerError(str(exc))


def socket_path(paths: StatePaths) -> str:
    return os.path.join(paths.run, "control.sock")


def try_connect(paths: StatePaths) -> Client | None:
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)
    try:
        sock.connect(socket_path(paths))
    except (FileNotFoundError, ConnectionRefusedError):
        sock.close()
        return None
    return Client(sock)


def connect(paths: StatePaths, autostart: bool = True) -> Client:
    """A client of the supervisor of ``paths``; start one in the background if none
    answers (it exits after AUTOSTART_IDLE_EXIT s with nothing to do)."""
    client = try_connect(paths)
    if client is not None or not autostart:
        if client is None:
            raise HostError(f"no supervisor answers on {socket_path(paths)}")
        return client
    start_background_supervisor(paths)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        client = try_connect(paths)
        if client is not None:
            return client
        time.sleep(0.01)
    raise HostError(f"the supervisor did not come up; see {paths.log}/supervisor.log")


def start_background_supervisor(paths: StatePaths) -> None:
    import subprocess  # here only: ~1 ms of every client's start otherwise

    root = ["--root", paths.base] if paths.base else []
    idle = os.environ.get("MYCTR_IDLE_EXIT", str(AUTOSTART_IDLE_EXIT))
    subprocess.run(
        [sys.executable, "-m", "supervisor", *root, "supervise", "--detach",
         "--idle-exit", idle],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        check=False,
    )
