"""The control protocol's framing: request parsing, encoders, error mapping, line splitting."""

from __future__ import annotations

import errno
import json
from typing import Any

import pytest

from runtime.errors import (
    Conflict,
    ContainerError,
    ExecFailed,
    HostError,
    NotFound,
    SetupFailed,
    SpecError,
)
from supervisor import protocol
from supervisor.protocol import LineBuffer, LineTooLong, Request, RpcError


def _parse_error(line: bytes) -> RpcError:
    with pytest.raises(RpcError) as info:
        protocol.parse_request(line)
    return info.value


class TestParseRequest:
    def test_request_with_named_params(self) -> None:
        """A well-formed request gives its id, method and params."""
        line = b'{"jsonrpc":"2.0","id":7,"method":"container.stop","params":{"id":"web"}}'
        assert protocol.parse_request(line) == Request(7, "container.stop", {"id": "web"})

    def test_string_id_and_missing_params(self) -> None:
        """A string id is kept and missing params become an empty dict."""
        assert protocol.parse_request(b'{"jsonrpc":"2.0","id":"a","method":"ping"}') == Request(
            "a", "ping", {})

    def test_notification(self) -> None:
        """A request without an id is a notification."""
        request = protocol.parse_request(b'{"jsonrpc":"2.0","method":"ping","params":null}')
        assert request == Request(None, "ping", {}) and request.is_notification

    def test_trailing_carriage_return(self) -> None:
        """A CRLF line end (from a telnet-like client) still parses."""
        assert protocol.parse_request(b'{"jsonrpc":"2.0","id":1,"method":"ping"}\r').id == 1

    @pytest.mark.parametrize("line", [b"{not json", b"", b'{"jsonrpc":"2.0"', b"\xff\xfe{}",
                                      b'{"jsonrpc":"2.0","id":NaN,"method":"ping"}',
                                      b"[" * 100_000])
    def test_parse_error(self, line: bytes) -> None:
        """Malformed JSON, non-UTF-8 bytes, NaN and absurd nesting are PARSE_ERROR with id null."""
        error = _parse_error(line)
        assert (error.code, error.request_id) == (protocol.PARSE_ERROR, None)

    @pytest.mark.parametrize("line", [b'"ping"', b"42", b"null", b"true"])
    def test_non_object(self, line: bytes) -> None:
        """A JSON string, number, null or boolean is INVALID_REQUEST."""
        assert _parse_error(line).code == protocol.INVALID_REQUEST

    @pytest.mark.parametrize("line", [b"[]", b'[{"jsonrpc":"2.0","id":1,"method":"ping"}]'])
    def test_batch(self, line: bytes) -> None:
        """An array (a batch) is INVALID_REQUEST saying batches are not supported."""
        error = _parse_error(line)
        assert (error.code, error.message) == (protocol.INVALID_REQUEST,
                                               "batches are not supported")

    @pytest.mark.parametrize("line", [b'{"id":3,"method":"ping"}',
                                      b'{"jsonrpc":"1.0","id":3,"method":"ping"}',
                                      b'{"jsonrpc":2.0,"id":3,"method":"ping"}'])
    def test_bad_version_keeps_id(self, line: bytes) -> None:
        """A missing or wrong jsonrpc member is INVALID_REQUEST that carries the id."""
        error = _parse_error(line)
        assert (error.code, error.request_id) == (protocol.INVALID_REQUEST, 3)

    @pytest.mark.parametrize("method", [b"5", b"null", b'["ping"]'])
    def test_method_not_a_string(self, method: bytes) -> None:
        """A method that is not a string is INVALID_REQUEST that carries the id."""
        error = _parse_error(b'{"jsonrpc":"2.0","id":"x","method":' + method + b"}")
        assert (error.code, error.request_id) == (protocol.INVALID_REQUEST, "x")

    def test_missing_method(self) -> None:
        """A request without a method is INVALID_REQUEST."""
        assert _parse_error(b'{"jsonrpc":"2.0","id":1}').code == protocol.INVALID_REQUEST

    @pytest.mark.parametrize("request_id", [b"true", b"false", b"1.5", b"{}", b"[1]"])
    def test_bad_id(self, request_id: bytes) -> None:
        """A bool, float, object or array id is INVALID_REQUEST with id null."""
        error = _parse_error(b'{"jsonrpc":"2.0","id":' + request_id + b',"method":"ping"}')
        assert (error.code, error.request_id) == (protocol.INVALID_REQUEST, None)

    def test_positional_params(self) -> None:
        """A params array is INVALID_PARAMS that carries the id."""
        error = _parse_error(b'{"jsonrpc":"2.0","id":4,"method":"container.stop","params":["a"]}')
        assert (error.code, error.request_id) == (protocol.INVALID_PARAMS, 4)

    def test_scalar_params(self) -> None:
        """A params value that is neither object nor array is INVALID_REQUEST."""
        error = _parse_error(b'{"jsonrpc":"2.0","id":4,"method":"ping","params":"x"}')
        assert (error.code, error.request_id) == (protocol.INVALID_REQUEST, 4)


class TestEncoders:
    def _one_line(self, data: bytes) -> Any:
        assert data.endswith(b"\n") and data.count(b"\n") == 1
        return json.loads(data)

    def test_result(self) -> None:
        """encode_result round-trips through json.loads as a JSON-RPC response."""
        result = {"id": "abc", "lines": ["a\nb", "é ☃"], "n": 1}
        assert self._one_line(protocol.encode_result(1, result)) == {
            "jsonrpc": "2.0", "id": 1, "result": result}

    def test_compact_utf8(self) -> None:
        """Output is compact JSON with non-ASCII text as raw UTF-8."""
        expected = '{"jsonrpc":"2.0","id":"x","result":"é"}\n'.encode()
        assert protocol.encode_result("x", "é") == expected

    def test_lone_surrogate(self) -> None:
        """A string no UTF-8 can hold falls back to \\u escapes instead of failing."""
        assert self._one_line(protocol.encode_result(1, "a\udcff"))["result"] == "a\udcff"

    def test_nan_refused(self) -> None:
        """NaN is not JSON, so the encoders refuse it."""
        with pytest.raises(ValueError, match="JSON compliant"):
            protocol.encode_result(1, float("nan"))

    def test_error_with_and_without_data(self) -> None:
        """encode_error carries data only when there is some."""
        assert self._one_line(protocol.encode_error(None, -32700, "parse error")) == {
            "jsonrpc": "2.0", "id": None, "error": {"code": -32700, "message": "parse error"}}
        assert self._one_line(protocol.encode_error(2, -32004, "no", {"exit_code": 127}))[
            "error"] == {"code": -32004, "message": "no", "data": {"exit_code": 127}}

    def test_notification(self) -> None:
        """encode_notification has no id."""
        assert self._one_line(protocol.encode_notification("event", {"seq": 1})) == {
            "jsonrpc": "2.0", "method": "event", "params": {"seq": 1}}

    def test_request_parses_back(self) -> None:
        """encode_request gives a line that parse_request accepts unchanged."""
        line = protocol.encode_request(9, "container.list", {"all": True})
        assert protocol.parse_request(line[:-1]) == Request(9, "container.list", {"all": True})
        assert protocol.parse_request(protocol.encode_request("q", "ping")[:-1]).params == {}

    def test_stream_item(self) -> None:
        """encode_stream_item adds the stream's request_id to the params."""
        line = protocol.encode_stream_item(5, "logs.line", {"stream": "stdout", "line": "hi",
                                                           "request_id": "stray"})
        assert self._one_line(line)["params"] == {"request_id": 5, "stream": "stdout",
                                                  "line": "hi"}


class TestLineBuffer:
    def test_whole_lines(self) -> None:
        """Several lines in one feed come back in order without their newlines."""
        assert LineBuffer().feed(b"a\n\nbc\nd") == [b"a", b"", b"bc"]

    def test_split_at_every_offset(self) -> None:
        """Lines come back the same wherever the stream is cut, in two or byte-sized feeds."""
        stream = b'{"id":1}\n{"id":"\xc3\xa9"}\n\nlast\n'
        expected = [b'{"id":1}', b'{"id":"\xc3\xa9"}', b"", b"last"]
        for cut in range(len(stream) + 1):
            buffer = LineBuffer()
            assert buffer.feed(stream[:cut]) + buffer.feed(stream[cut:]) == expected
            assert buffer.pending == 0
        buffer = LineBuffer()
        assert [line for i in range(len(stream)) for line in buffer.feed(stream[i:i + 1])
                ] == expected

    def test_line_of_exactly_the_limit(self) -> None:
        """A line of exactly max_line bytes is accepted."""
        assert LineBuffer(max_line=4).feed(b"ab") + LineBuffer(4).feed(b"abcd\n") == [b"abcd"]

    def test_complete_line_over_limit(self) -> None:
        """A complete line one byte over the limit raises LineTooLong."""
        with pytest.raises(LineTooLong) as info:
            LineBuffer(max_line=4).feed(b"ok\nabcde\n")
        assert info.value.code == protocol.LINE_TOO_LONG == -32006

    def test_over_one_mib_is_bounded(self) -> None:
        """A line past 1 MiB raises LineTooLong as soon as it is too long, having held at
        most MAX_LINE plus one chunk."""
        buffer, chunk, fed, peak = LineBuffer(), b"x" * 65536, 0, 0
        with pytest.raises(LineTooLong):
            while fed < 4 * protocol.MAX_LINE:
                buffer.feed(chunk)
                fed += len(chunk)
                peak = max(peak, buffer.pending)
        assert fed == protocol.MAX_LINE and peak <= protocol.MAX_LINE + len(chunk)
        assert buffer.pending == 0

    def test_unusable_after_overflow(self) -> None:
        """After LineTooLong every feed raises it again, even with a newline."""
        buffer = LineBuffer(max_line=2)
        with pytest.raises(LineTooLong):
            buffer.feed(b"abc")
        with pytest.raises(LineTooLong):
            buffer.feed(b"\nok\n")


class TestErrorMapping:
    @pytest.mark.parametrize(("exc", "code", "exit_code"), [
        (NotFound("no such container: web"), protocol.NOT_FOUND, 125),
        (Conflict("the name web is taken"), protocol.CONFLICT, 125),
        (SpecError("invalid ulimit 'x'"), protocol.INVALID_SPEC, 125),
        (HostError("overlay is not available"), protocol.HOST_ERROR, 125),
        (SetupFailed(errno.EPERM, "mount proc: EPERM"), protocol.HOST_ERROR, 125),
        (ExecFailed(errno.ENOENT, "exec 'nope': ENOENT"), protocol.EXEC_FAILED, 127),
        (ExecFailed(errno.EACCES, "exec '/etc': EACCES"), protocol.EXEC_FAILED, 126),
    ])
    def test_round_trip(self, exc: ContainerError, code: int, exit_code: int) -> None:
        """A runtime error survives the wire with its type, message and exit code."""
        wire_code, message, data = protocol.error_from_exception(exc)
        error = json.loads(protocol.encode_error(1, wire_code, message, data))["error"]
        back = protocol.exception_from_error(error)
        assert (wire_code, type(back), str(back)) == (code, type(exc), str(exc))
        assert isinstance(back, ContainerError) and back.exit_code == exit_code

    def test_exec_failed_data(self) -> None:
        """EXEC_FAILED carries the exit code in data."""
        assert protocol.error_from_exception(ExecFailed(errno.ENOENT, "x"))[2] == {
            "exit_code": 127}

    def test_setup_failed_keeps_errno(self) -> None:
        """SetupFailed is HOST_ERROR with its errno in data, and comes back with it."""
        _, message, data = protocol.error_from_exception(SetupFailed(errno.EPERM, "m"))
        assert data == {"errno": errno.EPERM}
        back = protocol.exception_from_error({"code": protocol.HOST_ERROR, "message": message,
                                              "data": data})
        assert isinstance(back, SetupFailed) and back.errno == errno.EPERM

    def test_rpc_error_keeps_its_code(self) -> None:
        """An RpcError reports its own code, message and data."""
        exc = RpcError(protocol.INVALID_PARAMS, "invalid params: 'id'", {"param": "id"})
        assert protocol.error_from_exception(exc) == (protocol.INVALID_PARAMS,
                                                      "invalid params: 'id'", {"param": "id"})

    def test_anything_else_is_internal(self) -> None:
        """Any other exception is INTERNAL_ERROR naming its type."""
        assert protocol.error_from_exception(KeyError("k")) == (
            protocol.INTERNAL_ERROR, "internal error: KeyError: 'k'", None)

    def test_single_failure_in_a_group(self) -> None:
        """A group holding one failure (from a nursery) reports that failure."""
        group = ExceptionGroup("nursery", [ExceptionGroup("inner", [NotFound("web")])])
        assert protocol.error_from_exception(group)[:2] == (protocol.NOT_FOUND, "web")

    @pytest.mark.parametrize("code", [protocol.PARSE_ERROR, protocol.METHOD_NOT_FOUND,
                                      protocol.INVALID_PARAMS, protocol.INTERNAL_ERROR,
                                      protocol.LINE_TOO_LONG, -1])
    def test_protocol_codes_come_back_as_rpc_error(self, code: int) -> None:
        """JSON-RPC's own codes come back as an RpcError with exit code 125."""
        back = protocol.exception_from_error({"code": code, "message": "m"})
        assert isinstance(back, RpcError) and (back.code, str(back), back.exit_code) == (
            code, "m", 125)

    def test_malformed_error_object(self) -> None:
        """An error object missing its members still becomes an exception."""
        back = protocol.exception_from_error({})
        assert isinstance(back, RpcError) and back.code == protocol.INTERNAL_ERROR
