"""The control protocol's framing: JSON-RPC 2.0, one JSON object per line (docs/protocol.md).

Pure functions over bytes and dicts; the sockets live in ``server`` and ``client``.
Errors::

    RpcError               a request the server refuses; carries code, message, data and
    │                      the request's id when it could be read
    └── LineTooLong        a line over MAX_LINE: answered once, then the client is dropped

``error_from_exception`` is the one place that maps exceptions (the runtime's tree,
``RpcError``, anything else) to error codes; ``exception_from_error`` maps them back on
the client so the CLI exits with the runtime's exit code.
"""

from __future__ import annotations

import errno
import json
from collections.abc import Mapping
from typing import Any, NamedTuple

from runtime.errors import (
    BuildFailed,
    Conflict,
    ContainerError,
    ExecFailed,
    HostError,
    NotFound,
    SetupFailed,
    SpecError,
)

MAX_LINE = 1024 * 1024
"""The longest line accepted, in bytes, not counting its newline."""

# JSON-RPC 2.0's codes.
PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
# Ours, in the server-defined range.
NOT_FOUND = -32001
CONFLICT = -32002
INVALID_SPEC = -32003
EXEC_FAILED = -32004
HOST_ERROR = -32005
LINE_TOO_LONG = -32006
BUILD_FAILED = -32007

Id = int | str | None


class Request(NamedTuple):
    id: Id  # None: a notification, which gets no response
    method: str
    params: dict[str, Any] = {}  # shared default: never mutate; parse_request gives a fresh one

    @property
    def is_notification(self) -> bool:
        return self.id is None


class RpcError(Exception):
    """A request the server refuses, as a JSON-RPC error object."""

    exit_code = 125

    def __init__(self, code: int, message: str, data: dict[str, Any] | None = None,
                 request_id: Id = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data
        self.request_id = request_id


class LineTooLong(RpcError):
    """A line grew past the limit; the connection cannot be resynchronized."""

    def __init__(self, limit: int) -> None:
        super().__init__(LINE_TOO_LONG, f"line too long: the limit is {limit} bytes")


# --- requests ------------------------------------------------------------------------


def parse_request(line: bytes) -> Request:
    """One request line (without its newline), checked against JSON-RPC 2.0."""
    doc = _load(line)
    if isinstance(doc, list):
        raise RpcError(INVALID_REQUEST, "batches are not supported")
    if not isinstance(doc, dict):
        raise RpcError(INVALID_REQUEST, "invalid request: expected a JSON object")
    request_id = doc.get("id")
    if not _valid_id(request_id):
        raise RpcError(INVALID_REQUEST, "invalid request: 'id' must be a string, an integer "
                       "or null")
    if doc.get("jsonrpc") != "2.0":
        raise RpcError(INVALID_REQUEST, "invalid request: 'jsonrpc' must be \"2.0\"",
                       request_id=request_id)
    method = doc.get("method")
    if not isinstance(method, str):
        raise RpcError(INVALID_REQUEST, "invalid request: 'method' must be a string",
                       request_id=request_id)
    return Request(request_id, method, _params(doc.get("params"), request_id))


def _load(line: bytes) -> Any:
    try:
        return json.loads(line.decode("utf-8"), parse_constant=_reject_constant)
    except UnicodeDecodeError as exc:
        raise RpcError(PARSE_ERROR, f"parse error: not UTF-8 ({exc.reason})") from None
    except (ValueError, RecursionError) as exc:  # JSONDecodeError is a ValueError
        raise RpcError(PARSE_ERROR, f"parse error: {exc}") from None


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _valid_id(value: object) -> bool:
    return value is None or isinstance(value, str) or (
        isinstance(value, int) and not isinstance(value, bool))


def _params(value: object, request_id: Id) -> dict[str, Any]:
    if value is None:
        return {}
    if isinstance(value, dict):
        return value
    if isinstance(value, list):
        raise RpcError(INVALID_PARAMS, "invalid params: positional params are not supported; "
                       "pass an object", request_id=request_id)
    raise RpcError(INVALID_REQUEST, "invalid request: 'params' must be an object",
                   request_id=request_id)


# --- encoders ------------------------------------------------------------------------


def encode_result(request_id: Id, result: Any) -> bytes:
    return _dump({"jsonrpc": "2.0", "id": request_id, "result": result})


def encode_error(request_id: Id, code: int, message: str,
                 data: Mapping[str, Any] | None = None) -> bytes:
    error: dict[str, Any] = {"code": code, "message": message}
    if data is not None:
        error["data"] = dict(data)
    return _dump({"jsonrpc": "2.0", "id": request_id, "error": error})


def encode_notification(method: str, params: Mapping[str, Any]) -> bytes:
    return _dump({"jsonrpc": "2.0", "method": method, "params": dict(params)})


def encode_request(request_id: Id, method: str,
                   params: Mapping[str, Any] | None = None) -> bytes:
    return _dump({"jsonrpc": "2.0", "id": request_id, "method": method,
                  "params": dict(params or {})})


def encode_stream_item(request_id: Id, method: str, params: Mapping[str, Any]) -> bytes:
    """A notification that belongs to the stream answering ``request_id``."""
    item = {"request_id": request_id, **params}
    item["request_id"] = request_id  # the stream's id wins over a stray key in params
    return encode_notification(method, item)


def _dump(message: dict[str, Any]) -> bytes:
    """Compact UTF-8 JSON and a newline; JSON escapes any newline inside a string."""
    text = json.dumps(message, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    try:
        return text.encode("utf-8") + b"\n"
    except UnicodeEncodeError:  # a lone surrogate: only \u escapes can carry it
        text = json.dumps(message, separators=(",", ":"), allow_nan=False)
        return text.encode("ascii") + b"\n"


# --- errors --------------------------------------------------------------------------


def error_from_exception(exc: BaseException) -> tuple[int, str, dict[str, Any] | None]:
    """The JSON-RPC error (code, message, data) that reports ``exc`` to a client."""
    exc = _single_leaf(exc)
    if isinstance(exc, RpcError):
        return exc.code, exc.message, exc.data
    if isinstance(exc, ExecFailed):
        return EXEC_FAILED, str(exc), {"exit_code": exc.exit_code}
    if isinstance(exc, SetupFailed):
        return HOST_ERROR, str(exc), {"errno": exc.errno}
    for cls, code in _CODES.items():
        if isinstance(exc, cls):
            return code, str(exc), None
    return INTERNAL_ERROR, f"internal error: {type(exc).__name__}: {exc}", None


def exception_from_error(error: Mapping[str, Any]) -> Exception:
    """The exception a client raises for an error object: the runtime's type for our
    codes (so the exit code survives), an RpcError for JSON-RPC's own."""
    code = error.get("code")
    message = str(error.get("message", "unknown error"))
    data = error.get("data") if isinstance(error.get("data"), dict) else None
    if code == EXEC_FAILED:
        exit_code = (data or {}).get("exit_code")
        return ExecFailed(errno.ENOENT if exit_code == 127 else errno.EACCES, message)
    if code == HOST_ERROR and isinstance((data or {}).get("errno"), int):
        return SetupFailed((data or {})["errno"], message)
    for cls, known in _CODES.items():
        if code == known:
            return cls(message)
    return RpcError(code if isinstance(code, int) else INTERNAL_ERROR, message, data)


_CODES: dict[type[ContainerError], int] = {
    NotFound: NOT_FOUND, Conflict: CONFLICT, SpecError: INVALID_SPEC, HostError: HOST_ERROR,
    BuildFailed: BUILD_FAILED,
}


def _single_leaf(exc: BaseException) -> BaseException:
    """A nursery wraps one failure in a group: report the failure, not the group."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


# --- framing -------------------------------------------------------------------------


class LineBuffer:
    """Splits a byte stream into lines; never holds more than ``max_line`` bytes.

    After ``LineTooLong`` the stream cannot be resynchronized: every later ``feed``
    raises it again.
    """

    def __init__(self, max_line: int = MAX_LINE) -> None:
        self.max_line = max_line
        self._partial = bytearray()
        self._failed: LineTooLong | None = None

    @property
    def pending(self) -> int:
        """Bytes held of the line not yet terminated."""
        return len(self._partial)

    def feed(self, data: bytes) -> list[bytes]:
        """The lines ``data`` completes, without their newlines."""
        if self._failed is not None:
            raise self._failed
        lines: list[bytes] = []
        start = 0
        while (end := data.find(b"\n", start)) >= 0:
            self._extend(data, start, end)
            lines.append(bytes(self._partial))
            self._partial.clear()
            start = end + 1
        self._extend(data, start, len(data))
        return lines

    def _extend(self, data: bytes, start: int, end: int) -> None:
        if len(self._partial) + end - start > self.max_line:
            self._partial = bytearray()
            self._failed = LineTooLong(self.max_line)
            raise self._failed
        self._partial += data[start:end]
