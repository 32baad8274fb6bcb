"""The init handshake's messages on the wire: each fast path (a field-less message
sent or expected with one plain send/recv) speaks the same JSON as the general one."""

from __future__ import annotations

import json
import os

import pytest

from runtime.channel import (
    Channel,
    ChannelClosed,
    ExecFailed,
    Placed,
    PtyMaster,
    Ready,
    SetupFailed,
    Start,
)


@pytest.mark.parametrize("cls", [Placed, Ready, Start])
def test_field_less_messages_travel_as_json(cls: type) -> None:
    a, b = Channel.pair()
    with a.sock, b.sock:
        a.send(cls())
        assert json.loads(b.sock.recv(100)) == {"type": cls.__name__}
        a.send(cls())
        assert b.receive() == cls()  # the general path reads the fast one
        b.sock.send(json.dumps({"type": cls.__name__}).encode())
        assert a.expect(cls) == cls()


def test_expect_fails_on_another_message() -> None:
    a, b = Channel.pair()
    with a.sock, b.sock:
        a.send(SetupFailed(2, "mount proc on /x/proc: No such file or directory"))
        with pytest.raises(ChannelClosed, match="expected Placed, got SetupFailed"):
            b.expect(Placed)
        a.send(Ready())
        with pytest.raises(ChannelClosed, match="expected Start, got Ready"):
            b.expect(Start)


def test_expect_sees_the_other_end_close() -> None:
    a, b = Channel.pair()
    with b.sock:
        a.close()
        with pytest.raises(ChannelClosed):
            b.expect(Start)


def test_messages_with_fields_and_fds() -> None:
    a, b = Channel.pair()
    with a.sock, b.sock:
        a.send(ExecFailed(2, 'exec "nope": executable file not found in $PATH'))
        assert b.receive() == ExecFailed(2, 'exec "nope": executable file not found in $PATH')
        read, write = os.pipe()
        try:
            a.send(PtyMaster(fd=write))
            got = b.receive()
            assert isinstance(got, PtyMaster) and got.fd not in (read, write)
            os.write(got.fd, b"x")
            os.close(got.fd)
            assert os.read(read, 1) == b"x"
        finally:
            os.close(read)
            os.close(write)
