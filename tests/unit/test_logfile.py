"""Container log files: record format, rotation, reading, following, option parsing."""

from __future__ import annotations

import functools
import itertools
import json
import os
import random
from collections.abc import Callable, Iterable
from contextlib import aclosing
from pathlib import Path

import pytest
import trio

from supervisor.logfile import (
    MAX_CHUNK,
    LogLine,
    LogWriter,
    decode_record,
    encode_record,
    follow_lines,
    format_time,
    parse_log_opts,
    parse_since,
    parse_size,
    parse_time,
    read_lines,
)

T0 = 1_700_000_000_000_000_000
SECOND = 1_000_000_000


def ticking_clock(start: int = T0, step: int = SECOND) -> Callable[[], int]:
    """A clock that moves on by step each time it is read."""
    ticks = itertools.count(start, step)
    return lambda: next(ticks)


def output_of(lines: Iterable[LogLine], stream: str = "stdout") -> bytes:
    """The bytes a stream wrote, rebuilt from its lines."""
    return b"".join(line.text + (b"" if line.partial else b"\n")
                    for line in lines if line.stream == stream)


def write_log(path: Path, chunks: Iterable[tuple[str, bytes]], **options: int) -> None:
    writer = LogWriter(str(path), clock=ticking_clock(), **options)
    for stream, data in chunks:
        writer.write(stream, data)
    writer.close()


class TestTime:
    def test_format_and_parse_round_trip(self) -> None:
        """format_time gives RFC 3339 UTC with nanoseconds, and parse_time reads it back."""
        text = format_time(T0 + 123_456_789)
        assert text == "2023-11-14T22:13:20.123456789Z"
        assert parse_time(text) == T0 + 123_456_789

    def test_parse_offsets_and_short_fractions(self) -> None:
        """Offsets shift the time; fewer than nine fractional digits are scaled."""
        assert parse_time("2023-11-14T23:13:20.5+01:00") == T0 + 500_000_000
        assert parse_time("2023-11-14T22:13:20Z") == T0

    @pytest.mark.parametrize("text", ["2023-11-14", "2023-13-14T00:00:00Z",
                                      "2023-11-14T22:13:20.1234567890Z", "now"])
    def test_parse_rejects(self, text: str) -> None:
        """Dates without times, impossible dates and ten fractional digits fail."""
        with pytest.raises(ValueError, match="not an RFC 3339 time"):
            parse_time(text)

    @pytest.mark.parametrize(("text", "expected"), [
        ("2023-11-14T22:13:20Z", T0),
        ("1700000000", T0),
        ("1700000000.25", T0 + 250_000_000),
        ("45s", T0 + 3600 * SECOND - 45 * SECOND),
        ("1h30m", T0 + 3600 * SECOND - 5400 * SECOND),
        ("1.5h", T0 + 3600 * SECOND - 5400 * SECOND),
    ])
    def test_since_forms(self, text: str, expected: int) -> None:
        """--since takes an RFC 3339 time, unix seconds, or a duration before now."""
        assert parse_since(text, now_ns=T0 + 3600 * SECOND) == expected

    @pytest.mark.parametrize("text", ["", "10x", "yesterday", "-5m", "1h 30m"])
    def test_since_rejects(self, text: str) -> None:
        """Anything else is a one-line ValueError."""
        with pytest.raises(ValueError, match="expected an RFC 3339 time") as caught:
            parse_since(text, T0)
        assert "\n" not in str(caught.value)


class TestOptions:
    @pytest.mark.parametrize(("text", "expected"), [
        ("512", 512), ("1k", 1024), ("10m", 10 << 20), ("10M", 10 << 20),
        ("1g", 1 << 30), ("1.5m", 3 << 19), ("2kb", 2048), ("3MiB", 3 << 20),
    ])
    def test_size_units(self, text: str, expected: int) -> None:
        """Sizes use docker's binary units, case-insensitively, with fractions."""
        assert parse_size(text) == expected

    @pytest.mark.parametrize("text", ["", "m", "10x", "-1m", "1.m", "ten"])
    def test_size_rejects(self, text: str) -> None:
        """Malformed sizes are a one-line ValueError."""
        with pytest.raises(ValueError, match="invalid size"):
            parse_size(text)

    def test_log_opts(self) -> None:
        """max-size and max-file parse; with none, the log never rotates."""
        assert parse_log_opts(["max-size=10m", "max-file=3"]) == (10 << 20, 3)
        assert parse_log_opts([]) == (None, 1)
        assert parse_log_opts(["max-file=5"]) == (None, 5)

    @pytest.mark.parametrize(("opt", "message"), [
        ("max-size", "expected key=value"),
        ("max-size=lots", "invalid size"),
        ("max-size=0", "must be positive"),
        ("max-file=0", "max-file must be"),
        ("max-file=two", "max-file must be"),
        ("compress=true", "unknown log option"),
    ])
    def test_log_opts_reject(self, opt: str, message: str) -> None:
        """Unknown keys and bad values fail, naming the problem."""
        with pytest.raises(ValueError, match=message):
            parse_log_opts([opt])


class TestRecord:
    def test_partial_flag(self) -> None:
        """A record not ending in a newline is marked partial; one that does is not."""
        whole = json.loads(encode_record("stdout", b"a\nb\n", T0))
        partial = json.loads(encode_record("stderr", b"a\nb", T0))
        assert whole == {"time": format_time(T0), "stream": "stdout", "log": "a\nb\n"}
        assert partial["partial"] is True

    def test_fast_escaping_writes_what_json_writes(self) -> None:
        """ASCII output is escaped without the json module (two ways: sparse and dense
        newlines); the bytes are the same as json's, for every mix of quotes,
        backslashes, newlines and other controls."""
        rng = random.Random(7)
        alphabets = (b'ab "\'\\\n\t\r\x01\x1f\x7f/', b"ab\\\n", b"y\n", b"abcdefgh\n")
        for _ in range(5000):
            alphabet = rng.choice(alphabets)
            data = bytes(rng.choice(alphabet) for _ in range(rng.randint(0, 200)))
            record = {"time": format_time(T0), "stream": "stdout", "log": data.decode()}
            if not data.endswith(b"\n"):
                record["partial"] = True
            expected = json.dumps(record, ensure_ascii=False, separators=(",", ":"))
            assert encode_record("stdout", data, T0) == expected.encode() + b"\n", data

    def test_utf8_stays_readable(self) -> None:
        """Valid UTF-8 is stored as itself, not as \\u escapes."""
        assert "é".encode() in encode_record("stdout", "café\n".encode(), T0)

    def test_non_utf8_round_trips(self) -> None:
        """Bytes that are not UTF-8 come back exactly, in an ASCII-only record."""
        data = b"\xff\xfe ok \xed\xa0\x80 \xe2\x82\n"
        line = encode_record("stdout", data, T0)
        record = decode_record(line)
        assert line.isascii() and record is not None and record.data == data

    @pytest.mark.parametrize("line", [b'{"time": "x"', b"[1]", b'{"log": 1}', b"\xff\n",
                                      b'{"time":"bad","stream":"stdout","log":""}'])
    def test_decode_rejects_foreign_lines(self, line: bytes) -> None:
        """Torn or foreign lines decode to None rather than raising."""
        assert decode_record(line) is None


class TestReadLines:
    def test_partials_join_across_interleaved_streams(self, tmp_path: Path) -> None:
        """Partial records of one stream join into whole lines timed by their start,
        even with the other stream's records in between."""
        path = tmp_path / "log"
        write_log(path, [("stdout", b"one\ntw"), ("stderr", b"err"), ("stdout", b"o\nthr"),
                         ("stderr", b"or\n"), ("stdout", b"ee\n")])
        lines = read_lines(str(path))
        assert [(line.stream, line.text, line.time_ns) for line in lines] == [
            ("stdout", b"one", T0), ("stdout", b"two", T0),
            ("stderr", b"error", T0 + SECOND), ("stdout", b"three", T0 + 2 * SECOND)]

    def test_split_multibyte_character(self, tmp_path: Path) -> None:
        """A UTF-8 character split between two records comes back whole."""
        path = tmp_path / "log"
        euro = "€".encode()
        write_log(path, [("stdout", b"price " + euro[:1]), ("stdout", euro[1:] + b"\xff\n")])
        assert read_lines(str(path))[0].text == b"price \xe2\x82\xac\xff"

    def test_unfinished_line_at_end_is_partial(self, tmp_path: Path) -> None:
        """A last line without its newline is returned, marked partial."""
        path = tmp_path / "log"
        write_log(path, [("stdout", b"done\nprompt> ")])
        assert read_lines(str(path))[-1] == LogLine(format_time(T0), T0, "stdout",
                                                    b"prompt> ", partial=True)

    def test_random_chunks_round_trip(self, tmp_path: Path) -> None:
        """Random bytes in random chunks, including a huge one, read back exactly."""
        rng = random.Random(1)
        data = rng.randbytes(3 << 20)
        chunks = [*_random_chunks(rng, data[:1 << 20]), data[1 << 20:]]
        path = tmp_path / "log"
        write_log(path, [("stdout", chunk) for chunk in chunks])
        assert output_of(read_lines(str(path))) == data

    def test_huge_write_is_split(self, tmp_path: Path) -> None:
        """A write over 1 MiB becomes records of at most 1 MiB each."""
        path = tmp_path / "log"
        write_log(path, [("stdout", b"z" * (2 * MAX_CHUNK + 1))])
        records = [decode_record(line) for line in path.read_bytes().splitlines()]
        assert [len(r.data) for r in records if r] == [MAX_CHUNK, MAX_CHUNK, 1]

    def test_endless_line_comes_in_pieces(self, tmp_path: Path) -> None:
        """A line that never ends is handed out in partial pieces of about 1 MiB."""
        path = tmp_path / "log"
        write_log(path, [("stdout", b"z" * 65536)] * 40 + [("stdout", b"\n")])
        lines = read_lines(str(path))
        assert [line.partial for line in lines] == [True, True, False]
        assert output_of(lines) == b"z" * (40 * 65536) + b"\n"

    def test_torn_last_record_is_ignored(self, tmp_path: Path) -> None:
        """A record still being written (no newline yet) is not read."""
        path = tmp_path / "log"
        write_log(path, [("stdout", b"a\n")])
        with open(path, "ab") as file:
            file.write(encode_record("stdout", b"b\n", T0)[:-5])
        assert [line.text for line in read_lines(str(path))] == [b"a"]

    def test_tiny_lines_stay_small(self, tmp_path: Path) -> None:
        """1 MiB of two-byte lines in 64 KiB chunks costs about the \\n escapes only."""
        path = tmp_path / "log"
        data = b"y\n" * (1 << 19)
        write_log(path, [("stdout", data[i:i + 65536]) for i in range(0, len(data), 65536)])
        assert path.stat().st_size < 1.51 * len(data)  # "y\n" is stored as 3 bytes: y\n
        assert len(read_lines(str(path))) == 1 << 19

    def test_missing_log_is_empty(self, tmp_path: Path) -> None:
        """A log not written yet has no lines."""
        assert read_lines(str(tmp_path / "log"), max_file=3) == []


class TestFilters:
    @pytest.fixture
    def log(self, tmp_path: Path) -> str:
        path = tmp_path / "log"
        write_log(path, [("stdout", b"a\nb\n"), ("stderr", b"c\n"), ("stdout", b"d\ne\nf\n")])
        return str(path)

    def test_tail(self, log: str) -> None:
        """tail keeps the last lines, across record boundaries."""
        assert [line.text for line in read_lines(log, tail=4)] == [b"c", b"d", b"e", b"f"]
        assert read_lines(log, tail=0) == []
        assert len(read_lines(log, tail=100)) == 6

    def test_since_inclusive_until_exclusive(self, log: str) -> None:
        """since keeps lines at or after it, until those strictly before it."""
        lines = read_lines(log, since_ns=T0 + SECOND, until_ns=T0 + 2 * SECOND)
        assert [line.text for line in lines] == [b"c"]

    def test_tail_after_filtering(self, log: str) -> None:
        """tail counts only the lines the time window kept."""
        lines = read_lines(log, until_ns=T0 + 2 * SECOND, tail=2)
        assert [line.text for line in lines] == [b"b", b"c"]


class TestRotation:
    def test_keeps_every_byte(self, tmp_path: Path) -> None:
        """With enough files, rotation loses nothing, and only a file holding a single
        (escape-heavy) record outgrows max-size."""
        rng = random.Random(2)
        data = bytes(rng.choice(b"abc\n\xe2\x82\xac") for _ in range(5 << 20))
        path = tmp_path / "log"
        write_log(path, [("stdout", c) for c in _random_chunks(rng, data)],
                  max_size=256 << 10, max_file=100)
        files = sorted(tmp_path.iterdir())
        assert 20 < len(files) < 100
        assert all(f.stat().st_size <= 256 << 10 or f.read_bytes().count(b"\n") == 1
                   for f in files)
        assert output_of(read_lines(str(path), max_file=100)) == data

    def test_oldest_files_are_dropped(self, tmp_path: Path) -> None:
        """max-file keeps the newest files: path, path.1, ..., path.{max_file-1}."""
        path = tmp_path / "log"
        size = len(encode_record("stdout", b"line 0\n", T0))
        write_log(path, [("stdout", f"line {i}\n".encode()) for i in range(10)],
                  max_size=2 * size, max_file=3)
        assert sorted(os.listdir(tmp_path)) == ["log", "log.1", "log.2"]
        lines = read_lines(str(path), max_file=3)
        assert [line.text for line in lines] == [f"line {i}".encode() for i in range(4, 10)]

    def test_single_file_starts_over(self, tmp_path: Path) -> None:
        """With max-file=1, a full log is replaced by a new one."""
        path = tmp_path / "log"
        write_log(path, [("stdout", b"x" * 60 + b"\n"), ("stdout", b"y\n")], max_size=100)
        assert os.listdir(tmp_path) == ["log"]
        assert [line.text for line in read_lines(str(path))] == [b"y"]

    def test_oversized_record_gets_its_own_file(self, tmp_path: Path) -> None:
        """A record larger than max-size is written whole, alone in its file."""
        path = tmp_path / "log"
        write_log(path, [("stdout", b"a\n"), ("stdout", b"b" * 500 + b"\n"), ("stdout", b"c\n")],
                  max_size=100, max_file=5)
        assert [len(read_lines(f"{path}{suffix}")) for suffix in (".2", ".1", "")] == [1, 1, 1]
        assert read_lines(f"{path}.1")[0].text == b"b" * 500

    def test_reopened_log_counts_its_size(self, tmp_path: Path) -> None:
        """A writer opened on an existing log appends and rotates by its real size."""
        path = tmp_path / "log"
        write_log(path, [("stdout", b"x" * 60 + b"\n")], max_size=100, max_file=2)
        write_log(path, [("stdout", b"y\n")], max_size=100, max_file=2)
        assert [line.text for line in read_lines(str(path) + ".1")] == [b"x" * 60]


class TestFollowLines:
    async def test_sees_lines_written_later(
            self, tmp_path: Path, autojump_clock: trio.abc.Clock) -> None:
        """follow_lines first gives the tail of the log, then each line as it is written."""
        path = str(tmp_path / "log")
        writer = LogWriter(path, clock=ticking_clock())
        writer.write("stdout", b"old 1\nold 2\n")
        got = await _follow_while_writing(path, writer, [[b"new 1\n"], [b"new 2\n"]], 3, tail=1)
        assert got == [b"old 2", b"new 1", b"new 2"]

    @pytest.mark.parametrize("max_file", [1, 2])
    async def test_follows_across_rotations(
            self, tmp_path: Path, autojump_clock: trio.abc.Clock, max_file: int) -> None:
        """No line is lost or repeated when the file is rotated under the follower, even
        between two records written while it slept."""
        path = str(tmp_path / "log")
        writer = LogWriter(path, max_size=250, max_file=max_file, clock=ticking_clock())
        steps = [[f"line {i}\n".encode(), f"line {i}b\n".encode()] for i in range(10)]
        got = await _follow_while_writing(path, writer, steps, 20, max_file=max_file)
        assert got == [w.rstrip(b"\n") for step in steps for w in step]

    async def test_waits_for_torn_record(
            self, tmp_path: Path, autojump_clock: trio.abc.Clock) -> None:
        """A half-written record is read only once its newline arrives."""
        path = tmp_path / "log"
        record = encode_record("stdout", b"hello\n", T0)
        path.write_bytes(record[:10])
        got: list[bytes] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_collect, str(path), got, 1)
            await trio.sleep(1)
            assert got == []
            with open(path, "ab") as file:
                file.write(record[10:])
        assert got == [b"hello"]

    async def test_quiet_unfinished_line_is_handed_out(
            self, tmp_path: Path, autojump_clock: trio.abc.Clock) -> None:
        """An unfinished line comes out partial once the log is quiet; its rest follows."""
        path = str(tmp_path / "log")
        writer = LogWriter(path, clock=ticking_clock())
        writer.write("stdout", b"name? ")
        lines: list[LogLine] = []
        async with aclosing(follow_lines(path)) as following:
            async for line in following:
                lines.append(line)
                if len(lines) == 2:
                    break
                writer.write("stdout", b"bob\n")
        assert [(line.text, line.partial) for line in lines] == [
            (b"name? ", True), (b"bob", False)]


def _random_chunks(rng: random.Random, data: bytes) -> list[bytes]:
    cuts = sorted(rng.sample(range(1, len(data)), len(data) // 20000))
    return [data[a:b] for a, b in itertools.pairwise([0, *cuts, len(data)])]


async def _collect(path: str, got: list[bytes], count: int, **options: int) -> None:
    async with aclosing(follow_lines(path, **options)) as following:
        async for line in following:
            got.append(line.text)
            if len(got) == count:
                return


async def _follow_while_writing(path: str, writer: LogWriter, steps: list[list[bytes]],
                                count: int, **options: int) -> list[bytes]:
    """What a follower sees while a step of records is written every second."""
    got: list[bytes] = []
    with trio.fail_after(len(steps) + 10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(functools.partial(_collect, path, got, count, **options))
            for step in steps:
                await trio.sleep(1)
                for data in step:
                    writer.write("stdout", data)
    writer.close()
    return got
