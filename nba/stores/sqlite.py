"""One SQLite file shared by the threads and processes of a busy service, and the SQLite form
of the records (`create_table`, `insert_sql`, derived from `nba.records`).

The decision log and the contact-policy state each live in a SQLite file in WAL mode that
every worker of the decision service writes to. Three things keep that fast under load:

* a connection per thread (SQLite connections are not shared between threads);
* group commit: the writes that arrive while another thread of the process is committing
  wait for it, then go together in one transaction and one fsync (each in its own savepoint,
  so one failing write fails alone). Each `submit` still returns only once its write is
  committed: nothing acknowledged is lost;
* the write lock between processes is polled every 0.2-2 ms. SQLite's own busy handler sleeps
  1, 2, 5, 10 ... 100 ms between tries, which made 16 concurrent clients wait up to a second.

A full disk: SQLite folds the write-ahead log back into the database only once it holds 1,000
pages (4 MiB), and never shrinks it, so on a nearly full disk the log itself can take the last
free bytes and keep them after the operator has made room. After a write the file system
refused, the next write first checkpoints and truncates the log (`PRAGMA
wal_checkpoint(TRUNCATE)`), at most every `RECLAIM_EVERY_S`, so the room comes back.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from nba.errors import NbaError, NotWritten
from nba.records import FLOAT, INT, JSON, TEXT, TIME, Record

T = TypeVar("T")
LOCK_TIMEOUT_S = 30.0
RECLAIM_EVERY_S = 0.25  # after a refused write: how often a write first tries to give the log's space back

SQL_TYPES = {TEXT: "TEXT", INT: "INTEGER", FLOAT: "REAL", TIME: "REAL", JSON: "TEXT"}  # a time: epoch seconds


def create_table(record: Record) -> str:
    """`CREATE TABLE IF NOT EXISTS` for a record: its columns in order, NOT NULL unless
    nullable, its key. A keyed table of small rows (no JSON column) is `WITHOUT ROWID` (the
    key is its storage order; SQLite advises against it for large rows, as a decision with its
    features is)."""
    cols = [f"{c.name} {SQL_TYPES[c.kind]}{'' if c.nullable else ' NOT NULL'}" for c in record.columns]
    if record.key:
        cols.append(f"PRIMARY KEY ({', '.join(record.key)})")
    small = record.key and all(c.kind is not JSON for c in record.columns)
    return (f"CREATE TABLE IF NOT EXISTS {record.name} (\n    " + ",\n    ".join(cols) + "\n)"
            + (" WITHOUT ROWID" if small else "") + ";\n")


def insert_sql(record: Record, *, conflict: str = "", columns: Sequence[str] | None = None) -> str:
    """`INSERT [OR <conflict>] INTO <record> (<columns>) VALUES (?, ...)`: rows in declaration
    order, or in the order of `columns` (every column of the record, once)."""
    names = tuple(columns) if columns is not None else record.names
    if sorted(names) != sorted(record.names):
        raise ValueError(f"record '{record.name}': insert columns {list(names)} are not its columns {list(record.names)}")
    verb = f"INSERT OR {conflict}" if conflict else "INSERT"
    return f"{verb} INTO {record.name} ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})"


class StoreLocked(NbaError):
    """The file's write lock was not free for LOCK_TIMEOUT_S seconds."""

    exit_code = 3


class StoreWriteFailed(NotWritten):
    """The file could not take a write: its disk is full, failing or read-only. Nothing of the
    write was committed; the caller answers 503 and the next write tries again."""

    exit_code = 3


# what SQLite says when the file system, not the statement, refused a write
_DISK_ERRORS = ("disk is full", "disk i/o error", "readonly database", "unable to open database")


@dataclass
class _Write:
    fn: Callable[[sqlite3.Connection], Any]
    done: threading.Event = field(default_factory=threading.Event)
    result: Any = None
    error: BaseException | None = None


class SqliteFile:
    """A SQLite file in WAL mode: per-thread connections, group-committed writes."""

    def __init__(self, path: Path, *, synchronous: str = "FULL", schema: str = ""):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.synchronous = synchronous
        self._local = threading.local()
        self._queue: list[_Write] = []
        self._queue_lock = threading.Lock()
        self._writer = threading.Lock()
        self._reclaim_due = False  # the file system refused a write: give the log's room back first
        self._reclaimed_at = 0.0
        if schema:  # every worker of a service may create it at the same moment
            _retry(lambda: self.conn().executescript(schema), self.path)

    def conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=0.002, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA synchronous={self.synchronous}")
            self._local.conn = conn
        return conn

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run a read; retried while the file is momentarily busy (a checkpoint)."""
        return _retry(lambda: fn(self.conn()), self.path)

    def _begin(self, conn: sqlite3.Connection) -> None:
        _retry(lambda: conn.execute("BEGIN IMMEDIATE"), self.path)

    def submit(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run `fn(connection)` inside a write transaction and return its result once committed.
        Writes submitted while another is committing share the next transaction."""
        item = _Write(fn)
        with self._queue_lock:
            self._queue.append(item)
        while not item.done.is_set():
            if self._writer.acquire(blocking=False):
                try:
                    with self._queue_lock:
                        batch, self._queue = self._queue, []
                    if batch:
                        self._commit(batch)
                finally:
                    self._writer.release()
            else:
                item.done.wait(0.0005)
        if item.error is not None:
            err = item.error
            if _refused_by_disk(err):
                self._reclaim_due = True
                raise StoreWriteFailed(f"{self.path}: the write failed ({err}); nothing of it was kept") from None
            raise err
        return item.result

    def _reclaim(self, conn: sqlite3.Connection) -> None:
        """Checkpoint and truncate the write-ahead log after a refused write (module docstring)."""
        now = time.monotonic()
        if now - self._reclaimed_at < RECLAIM_EVERY_S:
            return
        self._reclaimed_at = now
        try:
            busy, _, _ = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        except sqlite3.Error:  # still no room (or a reader): the next refused write tries again
            return
        if not busy:
            self._reclaim_due = False

    def _commit(self, batch: list[_Write]) -> None:
        conn = self.conn()
        if self._reclaim_due:
            self._reclaim(conn)
        try:
            self._begin(conn)
            if len(batch) == 1:  # alone in its transaction: a failure rolls the transaction back
                batch[0].result = batch[0].fn(conn)
                conn.execute("COMMIT")
                return
            for w in batch:
                conn.execute("SAVEPOINT one")
                try:
                    w.result = w.fn(conn)
                    conn.execute("RELEASE one")
                except Exception as exc:  # this write fails alone
                    conn.execute("ROLLBACK TO one")
                    conn.execute("RELEASE one")
                    w.error = exc
            conn.execute("COMMIT")
        except BaseException as exc:
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):  # SQLite may have rolled it back itself
                    conn.execute("ROLLBACK")
            for w in batch:
                if w.error is None:
                    w.error = exc
                    w.result = None
        finally:
            for w in batch:
                w.done.set()


def _refused_by_disk(err: BaseException) -> bool:
    """The file system, not the statement, refused the write (full, failing or read-only)."""
    return isinstance(err, OSError) or (
        isinstance(err, sqlite3.OperationalError) and any(m in str(err).lower() for m in _DISK_ERRORS))


def _retry(fn: Callable[[], T], path: Path) -> T:
    deadline = time.monotonic() + LOCK_TIMEOUT_S
    pause = 0.0002
    while True:
        try:
            return fn()
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) and "busy" not in str(exc):
                raise
            if time.monotonic() > deadline:
                raise StoreLocked(f"{path}: the write lock was not free for {LOCK_TIMEOUT_S:.0f} s ({exc})") from None
            time.sleep(pause)
            pause = min(pause * 2, 0.002)
