"""Container log files: the record format, a rotating writer, and readers.

A container's stdout and stderr go to one file of JSON lines, one record per chunk read
from the pipe::

    {"time":"2026-11-29T01:02:03.123456789Z","stream":"stdout","log":"a\\nb\\nhal"}
    {"time":"2026-11-29T01:02:03.123460001Z","stream":"stdout","log":"f\\n"}

A record holds a chunk, not a line: a program that writes tiny lines (``yes`` writes
two bytes a line) costs one record per pipe read instead of one per line, so the file
stays close to the size of the output (1.5 times it for ``yes``, as JSON spells a
newline in two bytes; podman's line records make it 23 times). A record whose text does
not end with a newline carries ``"partial":true``; readers join consecutive records of
one stream into whole lines, and a line's time is that of the record where it started.
A line is handed out unfinished, marked partial, when it is the last of the log, when it
outgrows 1 MiB, or when :func:`follow_lines` finds the log quiet.

Output that is not UTF-8 survives exactly: the writer decodes with ``surrogateescape``
(JSON escapes the lone surrogates) and the reader encodes back before joining, so a
multi-byte character split between two chunks comes back whole.

:class:`LogWriter` rotates by renaming, as docker's ``max-size``/``max-file``:
``path.1`` is the newest old file, ``path.{max_file-1}`` the oldest. :func:`read_lines`
reads them oldest first; :func:`follow_lines` then goes on reading the growing file
across rotations. Errors are plain :class:`ValueError` (bad options) and
:class:`OSError` (the file system); a torn or foreign line in a file is skipped.
"""

from __future__ import annotations

import codecs
import contextlib
import functools
import itertools
import json
import os
import re
import time
from collections import deque
from collections.abc import AsyncGenerator, Callable, Iterable, Iterator
from datetime import datetime
from decimal import Decimal
from typing import NamedTuple

import trio

MAX_CHUNK = 1 << 20
"""The most bytes of output one record holds; :meth:`LogWriter.write` splits larger."""
_MAX_JOINED = 1 << 20  # a line still unfinished at this size is handed out in pieces
_READ_SIZE = 4 << 20  # the most bytes follow_lines reads from a file per poll
_NS = 1_000_000_000


class LogLine(NamedTuple):
    """One line of a container's output, without its newline."""

    time: str  # RFC 3339, as stored: when the line's first byte was read
    time_ns: int
    stream: str  # "stdout" or "stderr"
    text: bytes
    partial: bool = False  # the line has no end (yet): print it without a newline


# -- time ------------------------------------------------------------------------------

_RFC3339 = re.compile(
    r"(\d{4}-\d\d-\d\d)[Tt ](\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?([Zz]|[+-]\d\d:\d\d)")
_UNIX_TIME = re.compile(r"(\d+)(?:\.(\d{1,9}))?")
_DURATION = re.compile(r"(?:\d+(?:\.\d+)?(?:ms|h|m|s))+")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_DURATION_UNIT_NS = {"h": 3600 * _NS, "m": 60 * _NS, "s": _NS, "ms": _NS // 1000}


def format_time(ns: int) -> str:
    """Nanoseconds since the epoch as RFC 3339 in UTC with nine fractional digits."""
    seconds, nanos = divmod(ns, _NS)
    return f"{_utc_seconds(seconds)}.{nanos:09d}Z"


@functools.lru_cache(maxsize=16)  # records come many a second
def _utc_seconds(seconds: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))


def parse_time(text: str) -> int:
    """An RFC 3339 time (up to nine fractional digits, any offset) as epoch nanoseconds."""
    match = _RFC3339.fullmatch(text)
    if match is None:
        raise ValueError(f"not an RFC 3339 time: {text!r}")
    date, clock, fraction, zone = match.groups()
    try:
        seconds = _epoch_seconds(f"{date}T{clock}{'+00:00' if zone in 'Zz' else zone}")
    except ValueError:
        raise ValueError(f"not an RFC 3339 time: {text!r}") from None
    return seconds * _NS + _fraction_ns(fraction)


@functools.lru_cache(maxsize=256)  # a log's records mostly share their second
def _epoch_seconds(iso_time: str) -> int:
    return int(datetime.fromisoformat(iso_time).timestamp())


def parse_since(text: str, now_ns: int) -> int:
    """A --since/--until value as epoch nanoseconds: an RFC 3339 time, a unix
    timestamp in seconds ("1700000000.5"), or a duration before now ("1h30m")."""
    if _RFC3339.fullmatch(text):
        return parse_time(text)
    if match := _UNIX_TIME.fullmatch(text):
        return int(match[1]) * _NS + _fraction_ns(match[2])
    if _DURATION.fullmatch(text):
        ago = sum(Decimal(n) * _DURATION_UNIT_NS[unit] for n, unit in _DURATION_PART.findall(text))
        return now_ns - int(ago)
    raise ValueError(f"expected an RFC 3339 time, a unix timestamp or a duration, got {text!r}")


def _fraction_ns(digits: str | None) -> int:
    return int((digits or "0").ljust(9, "0"))


# -- options ---------------------------------------------------------------------------

_SIZE = re.compile(r"(\d+(?:\.\d+)?) ?(?:([kmgt])i?)?b?", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(text: str) -> int:
    """A size in docker's units ("512", "1k", "10m", "1.5g"; powers of 1024) as bytes."""
    match = _SIZE.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"invalid size {text!r}: expected a number with k, m or g")
    number, unit = match.groups()
    return int(Decimal(number) * _SIZE_UNITS[(unit or "").lower()])


def parse_log_opts(opts: Iterable[str]) -> tuple[int | None, int]:
    """--log-opt values as (max_size, max_file); no max-size means no rotation."""
    max_size: int | None = None
    max_file = 1
    for opt in opts:
        key, sep, value = opt.partition("=")
        if not sep:
            raise ValueError(f"expected key=value, got {opt!r}")
        if key == "max-size":
            max_size = parse_size(value)
            if max_size <= 0:
                raise ValueError(f"max-size must be positive, got {value!r}")
        elif key == "max-file":
            if not value.isdecimal() or int(value) < 1:
                raise ValueError(f"max-file must be a number >= 1, got {value!r}")
            max_file = int(value)
        else:
            raise ValueError(f"unknown log option {key!r} (known: max-size, max-file)")
    return max_size, max_file


# -- records ---------------------------------------------------------------------------

class _Record(NamedTuple):
    time: str
    time_ns: int
    stream: str
    data: bytes


_UTF8_JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))
_ASCII_JSON = json.JSONEncoder(separators=(",", ":"))
_JSON = json.JSONDecoder()


# what bytes.translate deletes to leave only the control characters JSON escapes
# other than the newline (\t, \r, \x1b, ...): their text takes the json path
_ALL_BUT_CONTROLS_OTHER_THAN_NEWLINE = b"\n" + bytes(range(0x20, 0x100))
# bytes -> bytes with \\, \n, \' and \xNN escapes (the "escape" codec's encoder, in C)
_escape_encode = getattr(codecs, "escape_encode", None)


def encode_record(stream: str, data: bytes, time_ns: int) -> bytes:
    """One record as a JSON line; non-UTF-8 bytes travel as escaped lone surrogates.

    ASCII text whose only control character is the newline (most output) is escaped
    without json, to the same bytes json writes: that escaper was the log pump's main
    cost (~450 MiB/s). Three bytes.replace passes run at GB/s, unless newlines are
    dense (short lines, judged from the first 512 bytes): then the C escaper of the
    "escape" codec is 4x faster than a replace of each newline, where its escapes are
    JSON's (no quote, no DEL)."""
    if data.isascii() and not data.translate(None, _ALL_BUT_CONTROLS_OTHER_THAN_NEWLINE):
        if (data.count(b"\n", 0, 512) > 16 and _escape_encode is not None
                and b'"' not in data and b"'" not in data and b"\x7f" not in data):
            text = _escape_encode(data)[0]
        else:
            text = (data.replace(b"\\", b"\\\\").replace(b'"', b'\\"')
                    .replace(b"\n", b"\\n"))
        end = b'"}\n' if data.endswith(b"\n") else b'","partial":true}\n'
        return b"".join((b'{"time":"', format_time(time_ns).encode(), b'","stream":"',
                         stream.encode(), b'","log":"', text, end))
    record: dict[str, object] = {
        "time": format_time(time_ns), "stream": stream,
        "log": data.decode("utf-8", "surrogateescape")}
    if not data.endswith(b"\n"):
        record["partial"] = True
    try:
        line = _UTF8_JSON.encode(record).encode()
    except UnicodeEncodeError:  # lone surrogates: JSON must escape them
        line = _ASCII_JSON.encode(record).encode()
    return line + b"\n"


def decode_record(line: bytes) -> _Record | None:
    """A JSON line back as a record, or None for a line that is not one."""
    try:
        fields = _JSON.decode(line.decode())
        time_, stream, log = fields["time"], fields["stream"], fields["log"]
        if not (isinstance(time_, str) and isinstance(stream, str) and isinstance(log, str)):
            return None
        return _Record(time_, parse_time(time_), stream, log.encode("utf-8", "surrogateescape"))
    except (ValueError, KeyError, TypeError):  # torn write, foreign JSON, bad surrogates
        return None


# -- writer ----------------------------------------------------------------------------

class LogWriter:
    """Appends records to a log file, rotating it docker-style when it would outgrow
    max_size. Blocking writes: called from trio tasks, they land in the page cache."""

    def __init__(self, path: str, max_size: int | None = None, max_file: int = 1,
                 clock: Callable[[], int] = time.time_ns) -> None:
        if max_file < 1:
            raise ValueError(f"max_file must be >= 1, got {max_file}")
        self.path, self.max_size, self.max_file = path, max_size, max_file
        self._clock = clock
        self._fd: int | None = _open_append(path)
        self._size = os.fstat(self._fd).st_size

    def write(self, stream: str, data: bytes) -> None:
        """Log one chunk of a stream's output as one record (or more, if huge)."""
        for start in range(0, len(data), MAX_CHUNK):
            self._append(encode_record(stream, data[start:start + MAX_CHUNK], self._clock()))

    def close(self) -> None:
        """Close the file; closing twice is harmless."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _append(self, record: bytes) -> None:
        if self._fd is None:
            raise ValueError(f"write to closed log {self.path}")
        if self._must_rotate(len(record)):
            self._rotate()
        _write_all(self._fd, record)
        self._size += len(record)

    def _must_rotate(self, record_size: int) -> bool:
        return (self.max_size is not None and self._size > 0
                and self._size + record_size > self.max_size)

    def _rotate(self) -> None:
        shift_rotated(self.path, self.max_file)
        old, self._fd = self._fd, _open_append(self.path)
        self._size = 0
        if old is not None:
            os.close(old)


def shift_rotated(path: str, max_file: int) -> None:
    """Move path to path.1, path.1 to path.2, ..., dropping what would be the
    max_file-th file (with max_file=1, path itself)."""
    names = log_files(path, max_file + 1)  # path.{max_file}, ..., path.1, path
    for older, newer in itertools.pairwise(names):
        with contextlib.suppress(FileNotFoundError):  # fewer rotations so far
            os.rename(newer, older)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(names[0])


def _open_append(path: str) -> int:
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o640)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


# -- joining records into lines --------------------------------------------------------

class _Block(NamedTuple):
    """Whole lines (each ending in a newline) that started in one record, or one
    unfinished line (partial, no newline)."""

    time: str
    time_ns: int
    stream: str
    data: bytes
    partial: bool = False

    def line_count(self) -> int:
        return 1 if self.partial else self.data.count(b"\n")

    def lines(self) -> list[LogLine]:
        if self.partial:
            return [LogLine(self.time, self.time_ns, self.stream, self.data, True)]
        return [LogLine(self.time, self.time_ns, self.stream, text)
                for text in self.data.split(b"\n")[:-1]]


class _Unfinished:
    """A stream's line that has started but not ended yet."""

    def __init__(self, record: _Record, start: bytes) -> None:
        self.record, self.pieces, self.size = record, [start], len(start)

    def add(self, piece: bytes) -> None:
        self.pieces.append(piece)
        self.size += len(piece)

    def block(self, partial: bool) -> _Block:
        r = self.record
        return _Block(r.time, r.time_ns, r.stream, b"".join(self.pieces), partial)


class _LineJoiner:
    """Turns records into blocks of whole lines, holding each stream's unfinished line
    until its end arrives (or it grows past _MAX_JOINED)."""

    def __init__(self) -> None:
        self._unfinished: dict[str, _Unfinished] = {}

    def feed(self, record: _Record) -> Iterator[_Block]:
        data = record.data
        if (line := self._unfinished.pop(record.stream, None)) is not None:
            end = data.find(b"\n") + 1 or len(data)
            line.add(data[:end])
            data = data[end:]
            if line.pieces[-1].endswith(b"\n"):
                yield line.block(partial=False)
            elif line.size >= _MAX_JOINED:
                yield line.block(partial=True)
            else:
                self._unfinished[record.stream] = line
        cut = data.rfind(b"\n") + 1
        if cut:
            yield _Block(record.time, record.time_ns, record.stream, data[:cut])
        if cut < len(data):
            self._unfinished[record.stream] = _Unfinished(record, data[cut:])

    def flush(self) -> list[_Block]:
        """The unfinished lines, as partial blocks, oldest first; forgets them."""
        blocks = sorted((u.block(partial=True) for u in self._unfinished.values()),
                        key=lambda b: b.time_ns)
        self._unfinished.clear()
        return blocks


def _in_window(block: _Block, since_ns: int | None, until_ns: int | None) -> bool:
    return ((since_ns is None or block.time_ns >= since_ns)
            and (until_ns is None or block.time_ns < until_ns))


def _expand(blocks: Iterable[_Block]) -> list[LogLine]:
    return [line for block in blocks for line in block.lines()]


class _LastLines:
    """Collects blocks, keeping only those that may hold one of the last tail lines
    (all of them when tail is None)."""

    def __init__(self, tail: int | None) -> None:
        self.tail, self.kept, self.count = tail, deque[tuple[_Block, int]](), 0

    def add(self, blocks: Iterable[_Block]) -> None:
        for block in blocks:
            self.kept.append((block, block.line_count()))
            self.count += self.kept[-1][1]
            while self.tail is not None and self.kept and (
                    self.count - self.kept[0][1] >= self.tail):
                self.count -= self.kept.popleft()[1]

    def lines(self) -> list[LogLine]:
        lines = _expand(block for block, _ in self.kept)
        return lines if self.tail is None else lines[max(0, len(lines) - self.tail):]


# -- reading ---------------------------------------------------------------------------

def log_files(path: str, max_file: int) -> list[str]:
    """The log's files, oldest first: path.{max_file-1}, ..., path.1, path."""
    return [f"{path}.{n}" for n in range(max_file - 1, 0, -1)] + [path]


def read_lines(path: str, max_file: int = 1, since_ns: int | None = None,
               until_ns: int | None = None, tail: int | None = None) -> list[LogLine]:
    """The log's lines, oldest first, with since <= time < until, the last tail of
    them; a line still unfinished at the end comes last, marked partial."""
    last = _LastLines(tail)
    for blocks in _read_log(path, max_file, _LineJoiner()):
        last.add(b for b in blocks if _in_window(b, since_ns, until_ns))
    return last.lines()


class _RecordReader:
    """An open log file, read records at a time; it may still be growing."""

    def __init__(self, fd: int) -> None:
        self.fd, self.inode = fd, os.fstat(fd).st_ino
        self.offset, self._torn = 0, b""

    @classmethod
    def open(cls, path: str) -> _RecordReader | None:
        try:
            return cls(os.open(path, os.O_RDONLY | os.O_CLOEXEC))
        except FileNotFoundError:
            return None

    def read_records(self) -> tuple[list[_Record], bool]:
        """The next records completed in the file, and whether its end was reached;
        a record still being written waits for the next call."""
        chunk = os.read(self.fd, _READ_SIZE)
        self.offset += len(chunk)
        data = self._torn + chunk
        cut = data.rfind(b"\n") + 1
        self._torn = data[cut:]
        records = [decode_record(line) for line in data[:cut].split(b"\n")[:-1]]
        return [r for r in records if r is not None], len(chunk) < _READ_SIZE

    def replaced(self, path: str) -> bool:
        """Whether path is now another file (a rotation) or this one cut short."""
        try:
            now = os.stat(path)
        except FileNotFoundError:
            return False  # between a rotation's rename and its new file
        return now.st_ino != self.inode or now.st_size < self.offset

    def close(self) -> None:
        os.close(self.fd)


def _read_log(path: str, max_file: int, joiner: _LineJoiner,
              current: _RecordReader | None = None) -> Iterator[list[_Block]]:
    """The blocks of the log's files, oldest first, a read's worth at a time, then the
    lines left unfinished. current, if given, is the file at path, already open."""
    for name in log_files(path, max_file)[:-1] if current else log_files(path, max_file):
        reader = _RecordReader.open(name)
        if reader is None:
            continue
        try:
            if current is None or reader.inode != current.inode:  # else rotated meanwhile
                yield from _read_to_end(reader, joiner)
        finally:
            reader.close()
    if current is not None:
        yield from _read_to_end(current, joiner)
    yield joiner.flush()


def _read_to_end(reader: _RecordReader, joiner: _LineJoiner) -> Iterator[list[_Block]]:
    at_end = False
    while not at_end:
        records, at_end = reader.read_records()
        yield [block for record in records for block in joiner.feed(record)]


class _Follower:
    """follow_lines' state: the file being read and the lines not yet finished."""

    def __init__(self, path: str, file: _RecordReader, since_ns: int | None) -> None:
        self.path, self.file, self.since_ns = path, file, since_ns
        self.joiner = _LineJoiner()

    async def snapshot(self, max_file: int, tail: int | None) -> list[LogLine]:
        """What read_lines would return, read through our handle on the current file,
        letting other tasks run between reads."""
        last = _LastLines(tail)
        for blocks in _read_log(self.path, max_file, self.joiner, self.file):
            last.add(self._wanted(blocks))
            await trio.lowlevel.checkpoint()
        return last.lines()

    def poll(self) -> tuple[list[LogLine], bool]:
        """The lines finished since the last poll, and whether more can be read now.
        When nothing new came, the unfinished lines are handed out, marked partial."""
        replaced = self.file.replaced(self.path)  # before reading: then the read drains
        records, at_end = self.file.read_records()
        blocks = [b for r in records for b in self.joiner.feed(r)]
        if at_end and replaced and self._switch():
            return _expand(self._wanted(blocks)), True
        if at_end and not records:
            blocks += self.joiner.flush()
        return _expand(self._wanted(blocks)), not at_end

    def _switch(self) -> bool:
        """Move on to the file now at path; False if there is none yet."""
        new = _RecordReader.open(self.path)
        if new is None:
            return False
        self.file.close()
        self.file = new
        return True

    def _wanted(self, blocks: Iterable[_Block]) -> Iterator[_Block]:
        return (b for b in blocks if _in_window(b, self.since_ns, None))


async def follow_lines(path: str, max_file: int = 1, since_ns: int | None = None,
                       tail: int | None = None,
                       poll_interval: float = 0.05) -> AsyncGenerator[LogLine, None]:
    """What read_lines would return, then each line as it is written, across rotations
    (a file renamed away is read to its end first). A line still unfinished when the
    log goes quiet comes out marked partial; its rest follows as a line of its own."""
    while (file := _RecordReader.open(path)) is None:
        await trio.sleep(poll_interval)
    follower = _Follower(path, file, since_ns)
    try:
        for line in await follower.snapshot(max_file, tail):
            yield line
        while True:
            lines, more = follower.poll()
            for line in lines:
                yield line
            await (trio.lowlevel.checkpoint() if more else trio.sleep(poll_interval))
    finally:
        follower.file.close()
