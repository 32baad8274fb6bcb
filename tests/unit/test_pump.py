"""The log pump's pipe: grown once the container out-writes the pump, every byte kept."""

from __future__ import annotations

import fcntl
import os
import pty
import threading
from pathlib import Path

import trio

from supervisor.engine import PUMP_READ, PUMP_READ_BUSY, _grow_pipe, _pump
from supervisor.logfile import LogWriter, read_lines


async def test_a_fast_writer_gets_a_bigger_pipe_and_loses_nothing(tmp_path: Path) -> None:
    read_end, write_end = os.pipe()
    payload = b"y\n" * (1 << 19)
    capacity: list[int] = []

    def writer() -> None:
        os.write(write_end, payload)  # blocks until the pump took all but the last bytes
        capacity.append(fcntl.fcntl(write_end, fcntl.F_GETPIPE_SZ))
        os.close(write_end)

    log = LogWriter(str(tmp_path / "log.json"))
    thread = threading.Thread(target=writer)
    thread.start()
    await _pump(read_end, "stdout", log, None)
    thread.join()
    log.close()
    assert capacity == [PUMP_READ_BUSY]
    lines = read_lines(str(tmp_path / "log.json"))
    assert all(line.text == b"y" and not line.partial for line in lines)
    assert len(lines) == len(payload) // 2


def test_a_pty_or_a_refusal_keeps_the_read_size() -> None:
    master, slave = pty.openpty()
    try:
        assert _grow_pipe(master, PUMP_READ_BUSY, PUMP_READ) == PUMP_READ
    finally:
        os.close(master)
        os.close(slave)
    read_end, write_end = os.pipe()
    try:
        assert _grow_pipe(read_end, 1 << 30, PUMP_READ) == PUMP_READ  # over pipe-max-size
    finally:
        os.close(read_end)
        os.close(write_end)


async def test_a_slow_writer_keeps_the_small_pipe(tmp_path: Path) -> None:
    read_end, write_end = os.pipe()
    log = LogWriter(str(tmp_path / "log.json"))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_pump, read_end, "stdout", log, None)
        for _ in range(5):
            os.write(write_end, b"line\n")
            await trio.sleep(0.01)
        assert fcntl.fcntl(write_end, fcntl.F_GETPIPE_SZ) == PUMP_READ
        os.close(write_end)
    log.close()
