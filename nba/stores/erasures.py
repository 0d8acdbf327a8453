"""The erasure list: every customer erased (GDPR art. 17), the record `ERASURE`.

Training frames exclude these ids whatever the sources hold (a re-simulated or re-published
source brings an erased customer back: the list keeps them out of every model), and the service
makes nothing new of them: a decision for a listed id is refused (404), an event for one is not
stored. With the receipts beside it, it is the one place that still holds an erased id, as the
record that the erasure was done.

Two backends, chosen like the logs' (`open_erasure_list`): a SQLite file in the privacy folder
(embedded; `FILE`) or the table in the logs' Postgres database (production), so that every
replica refuses an id erased through any other.

An erasure is never undone, so a process may remember the ids it found listed (`erased`); the
ids it found unlisted it asks again next time.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from nba.records import ENTITY_KEY, ERASURE
from nba.stores import postgres as pg
from nba.stores.sqlite import SqliteFile, create_table, insert_sql

FILE = "erasures.db"
COMPONENT = "erasure list"
_INSERT = insert_sql(ERASURE, conflict="IGNORE")
_COLUMNS = ", ".join(ERASURE.names)


class ErasureList(Protocol):
    where: str

    def add(self, customer_id: int, at: float, by: str, receipt: str) -> bool:
        """Add the customer; False when already listed (the first erasure's entry stays)."""
        ...

    def get(self, customer_id: int) -> dict | None: ...

    def erased(self, customer_ids: Sequence[int]) -> dict[int, float]:
        """Of these customers, the erased ones, with when they were erased (epoch seconds)."""
        ...

    def ids(self) -> frozenset[int]: ...

    def close(self) -> None: ...


class _Listed:
    """What both backends ask of the table, in their SQL (`P` the parameter marker) over their
    database (`db`); an id found listed is remembered for the process's life (an erasure is
    never undone), one found unlisted is asked again next time."""

    P = "?"
    db: Any  # a `SqliteFile` or a `PgDatabase`: both `read(fn(connection))`

    def __init__(self) -> None:
        self._known: dict[int, float] = {}
        self._lock = threading.Lock()

    def _rows(self, sql: str, args: Sequence[Any]) -> list[tuple]:
        return self.db.read(lambda conn: conn.execute(sql, args).fetchall())

    def _any(self, ids: list[int]) -> tuple[str, Sequence[Any]]:
        """`customer_id IN (...)` for these ids, and its arguments."""
        return f"{ENTITY_KEY} IN ({', '.join(self.P * len(ids))})", ids

    def get(self, customer_id: int) -> dict | None:
        rows = self._rows(f"SELECT {_COLUMNS} FROM {ERASURE.name} WHERE {ENTITY_KEY} = {self.P}", (int(customer_id),))
        return dict(zip(ERASURE.names, rows[0], strict=True)) if rows else None

    def erased(self, customer_ids: Sequence[int]) -> dict[int, float]:
        uniq = sorted({int(c) for c in customer_ids})
        found = {c: self._known[c] for c in uniq if c in self._known}
        rest = [c for c in uniq if c not in found]
        if rest:
            where, args = self._any(rest)
            fresh = {int(c): float(at) for c, at in self._rows(
                f"SELECT {ENTITY_KEY}, erased_at FROM {ERASURE.name} WHERE {where}", args)}
            with self._lock:
                self._known.update(fresh)
            found.update(fresh)
        return found

    def ids(self) -> frozenset[int]:
        return frozenset(int(r[0]) for r in self._rows(f"SELECT {ENTITY_KEY} FROM {ERASURE.name}", ()))


class SqliteErasureList(_Listed):
    def __init__(self, folder: Path):
        super().__init__()
        self.path = Path(folder) / FILE
        self.where = str(self.path)
        self.db = SqliteFile(self.path, synchronous="FULL", schema=create_table(ERASURE))

    def add(self, customer_id: int, at: float, by: str, receipt: str) -> bool:
        return self.db.submit(lambda conn: conn.execute(_INSERT, (int(customer_id), float(at), by, receipt)).rowcount
                              == 1)

    def close(self) -> None:
        self.db.close()


class PostgresErasureList(_Listed):
    """`ERASURE` in the logs' Postgres database (created by `nba stores migrate`), shared by the
    replicas; refused at start, in one line, if the database does not answer or is not migrated."""

    P = "%s"

    def __init__(self, dsn: str, *, component: str = COMPONENT):
        super().__init__()
        self.db = pg.PgDatabase(dsn, component)
        self.where = self.db.address
        self._insert = pg.insert_sql(ERASURE, conflict="nothing")

    def _any(self, ids: list[int]) -> tuple[str, Sequence[Any]]:
        return f"{ENTITY_KEY} = ANY(%s)", (ids,)

    def add(self, customer_id: int, at: float, by: str, receipt: str) -> bool:
        return bool(self.db.submit(lambda conn: conn.execute(
            self._insert, (int(customer_id), float(at), by, receipt)).rowcount == 1))

    def close(self) -> None:
        self.db.close()


def open_erasure_list(settings: Any) -> ErasureList:
    """The profile's erasure list: a SQLite file in the privacy folder (embedded) or the logs'
    Postgres database (production)."""
    if settings.log_backend == "postgres":
        return PostgresErasureList(settings.decision_log_dsn)
    return SqliteErasureList(settings.privacy_dir)


def erased_ids(source: Any) -> frozenset[int]:
    """Every erased customer id: of the profile's list (`source` the settings) or of the SQLite
    list in a folder (`source` a path; empty when nothing was ever erased there)."""
    if not isinstance(source, str | Path):
        if source.log_backend == "postgres":
            lst = open_erasure_list(source)
            try:
                return lst.ids()
            finally:
                lst.close()
        source = source.privacy_dir
    path = Path(source) / FILE
    if not path.is_file():
        return frozenset()
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return frozenset(int(r[0]) for r in conn.execute(f"SELECT {ENTITY_KEY} FROM {ERASURE.name}"))
    finally:
        conn.close()
