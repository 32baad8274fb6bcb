"""The supervisor's shared SQLite connection: statements from several threads never
mix their rows or errors, and ``with db:`` is one transaction."""

from __future__ import annotations

import sqlite3
import sys
import threading
import time
from pathlib import Path

import pytest

from runtime.errors import Conflict
from supervisor.store import ContainerRecord, SharedConnection, Store


def _record(cid: str, name: str) -> ContainerRecord:
    return ContainerRecord(id=cid, name=name, created=time.time(), params={}, spec={},
                           status="created")


def test_with_db_is_one_transaction(tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / "t.db", isolation_level=None, check_same_thread=False,
                         factory=SharedConnection)
    db.execute("CREATE TABLE t (x INTEGER UNIQUE)")
    with pytest.raises(sqlite3.IntegrityError), db:
        db.execute("INSERT INTO t VALUES (1)")
        db.execute("INSERT INTO t VALUES (1)")  # fails: the first goes too
    assert db.execute("SELECT count(*) FROM t").fetchone() == (0,)
    with db:
        db.execute("INSERT INTO t VALUES (1)")
        db.execute("INSERT INTO t VALUES (2)")
    assert db.execute("SELECT x FROM t ORDER BY x").fetchall() == [(1,), (2,)]
    assert db.execute("SELECT x FROM t WHERE x = 3").fetchone() is None
    db.close()


def test_threads_get_their_own_errors(tmp_path: Path) -> None:
    """One thread inserts taken names (a Conflict each) while another reads and writes:
    each sees only its own outcome (a shared cursor state gave "no more rows available"
    or a raw DatabaseError to the wrong one)."""
    store = Store(str(tmp_path / "myctr.db"))
    store.insert(_record("a" * 64, "taken"))
    problems: list[BaseException] = []
    stop = threading.Event()

    def inserter() -> None:
        for i in range(2000):
            try:
                store.insert(_record(f"{i:064x}", "taken"))
            except Conflict:
                continue
            except BaseException as exc:
                problems.append(exc)
            else:
                problems.append(AssertionError("a taken name was inserted"))
        stop.set()

    def other() -> None:
        while not stop.is_set():
            try:
                assert store.resolve("taken") == "a" * 64
                store.update("a" * 64, status="running")
                assert [r.name for r in store.all()] == ["taken"]
            except BaseException as exc:
                problems.append(exc)
                return

    threads = [threading.Thread(target=inserter), threading.Thread(target=other)]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as the interpreter can
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    finally:
        sys.setswitchinterval(interval)
    store.close()
    assert not problems, problems[:3]
