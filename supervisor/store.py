"""Container metadata in one embedded SQLite database (WAL, one transaction per change),
so a crash never leaves half-written state. Layers and logs are plain files elsewhere.

One row per container: what was asked (the create params), the spec, the status and
the facts of its last run. Names are unique by constraint.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from collections.abc import Iterator
from typing import Any, Literal, NamedTuple

from runtime.errors import Conflict, NotFound

SCHEMA = """
CREATE TABLE IF NOT EXISTS containers (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    created REAL NOT NULL,
    params TEXT NOT NULL,
    spec TEXT NOT NULL,
    status TEXT NOT NULL,
    pid INTEGER NOT NULL DEFAULT 0,
    pid_start INTEGER NOT NULL DEFAULT 0,
    exit_code INTEGER,
    oom_killed INTEGER NOT NULL DEFAULT 0,
    started_at REAL,
    finished_at REAL,
    restart_count INTEGER NOT NULL DEFAULT 0,
    manually_stopped INTEGER NOT NULL DEFAULT 0,
    log_path TEXT NOT NULL
);
"""


class ContainerRecord(NamedTuple):
    id: str
    name: str
    created: float
    params: dict[str, Any]
    spec: dict[str, Any]
    status: str
    pid: int = 0
    pid_start: int = 0
    exit_code: int | None = None
    oom_killed: bool = False
    started_at: float | None = None
    finished_at: float | None = None
    restart_count: int = 0
    manually_stopped: bool = False
    log_path: str = ""


_COLUMNS = ContainerRecord._fields
_JSON_COLUMNS = ("params", "spec")


class SharedConnection(sqlite3.Connection):
    """The supervisor's one connection, shared by the event loop and worker threads
    (a create resolves its image and inserts its record in one) and by the container,
    image and network tables. A statement runs, and its rows are read, under one lock:
    a thread never reads another's error ("no more rows available" for a taken name)
    nor steps into another's rows. ``with db:`` is a real transaction (BEGIN, then
    COMMIT or ROLLBACK; autocommit mode alone makes each statement its own) and holds
    the lock throughout. ``execute`` returns its rows, fetched (all our queries are
    small): a list with ``fetchone``/``fetchall``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lock = threading.RLock()

    def execute(self, sql: str, parameters: Any = (), /) -> Rows:  # type: ignore[override]
        with self.lock:
            return Rows(super().execute(sql, parameters).fetchall())

    def executescript(self, script: str, /) -> sqlite3.Cursor:
        with self.lock:
            return super().executescript(script)

    def __enter__(self) -> SharedConnection:
        self.lock.acquire()
        try:
            if not self.in_transaction:
                super().execute("BEGIN")
        except BaseException:
            self.lock.release()
            raise
        return self

    def __exit__(self, *exc_info: Any) -> Literal[False]:
        try:
            super().__exit__(*exc_info)  # COMMIT, or ROLLBACK on an exception
        finally:
            self.lock.release()
        return False


class Rows(list[Any]):
    """A statement's rows, as the cursor methods our code uses read them."""

    def fetchone(self) -> Any:
        return self[0] if self else None

    def fetchall(self) -> list[Any]:
        return list(self)


class Store:
    def __init__(self, path: str) -> None:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False,
                                  factory=SharedConnection)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(SCHEMA)

    def insert(self, record: ContainerRecord) -> None:
        values = _to_row(record)
        try:
            with self.db:
                self.db.execute(
                    f"INSERT INTO containers ({', '.join(_COLUMNS)}) "
                    f"VALUES ({', '.join('?' for _ in _COLUMNS)})", values)
        except sqlite3.IntegrityError:
            holder = self.db.execute("SELECT id FROM containers WHERE name = ?",
                                     (record.name,)).fetchone()
            raise Conflict(
                f'the container name "{record.name}" is already in use by '
                f"{holder[0][:12] if holder else '?'}; remove that container to reuse the name"
            ) from None

    def update(self, container_id: str, **fields: Any) -> None:
        """Change some fields of one container, in one transaction."""
        assignments = ", ".join(f"{key} = ?" for key in fields)
        values = [json.dumps(v) if k in _JSON_COLUMNS else v for k, v in fields.items()]
        with self.db:
            self.db.execute(f"UPDATE containers SET {assignments} WHERE id = ?",
                            (*values, container_id))

    def delete(self, container_id: str) -> None:
        with self.db:
            self.db.execute("DELETE FROM containers WHERE id = ?", (container_id,))

    def get(self, container_id: str) -> ContainerRecord:
        row = self.db.execute(f"SELECT {', '.join(_COLUMNS)} FROM containers WHERE id = ?",
                              (container_id,)).fetchone()
        if row is None:
            raise NotFound(f"no such container: {container_id}")
        return _from_row(row)

    def all(self) -> Iterator[ContainerRecord]:
        for row in self.db.execute(
                f"SELECT {', '.join(_COLUMNS)} FROM containers ORDER BY created"):
            yield _from_row(row)

    def resolve(self, ref: str) -> str:
        """A container id from a name, a full id or a unique id prefix."""
        row = self.db.execute("SELECT id FROM containers WHERE name = ? OR id = ?",
                              (ref, ref)).fetchone()
        if row:
            return str(row[0])
        if not ref or not all(c in "0123456789abcdef" for c in ref):
            raise NotFound(f"no such container: {ref}")
        rows = self.db.execute("SELECT id FROM containers WHERE id LIKE ?",
                               (ref + "%",)).fetchall()
        if len(rows) == 1:
            return str(rows[0][0])
        if rows:
            raise Conflict(f"container id prefix {ref!r} is ambiguous")
        raise NotFound(f"no such container: {ref}")

    def close(self) -> None:
        self.db.close()


def _to_row(record: ContainerRecord) -> tuple[Any, ...]:
    return tuple(json.dumps(getattr(record, c)) if c in _JSON_COLUMNS else getattr(record, c)
                 for c in _COLUMNS)


def _from_row(row: tuple[Any, ...]) -> ContainerRecord:
    values = dict(zip(_COLUMNS, row, strict=True))
    for column in _JSON_COLUMNS:
        values[column] = json.loads(values[column])
    values["oom_killed"] = bool(values["oom_killed"])
    values["manually_stopped"] = bool(values["manually_stopped"])
    return ContainerRecord(**values)
