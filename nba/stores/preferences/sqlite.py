"""The preference store in one SQLite file (WAL, synchronous=FULL: an acknowledged change of
consent is never lost)."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from pathlib import Path

from nba.records import PREFERENCE, PREFERENCE_AUDIT
from nba.stores.preferences import PreferenceStoreError, StoredPreferences
from nba.stores.sqlite import SqliteFile, create_table, insert_sql

_SCHEMA = (create_table(PREFERENCE) + create_table(PREFERENCE_AUDIT)
           + f"CREATE INDEX IF NOT EXISTS preference_audit_customer ON {PREFERENCE_AUDIT.name} (customer_id);\n")
_UPSERT = insert_sql(PREFERENCE, conflict="REPLACE")
_AUDIT = insert_sql(PREFERENCE_AUDIT)
_CHUNK = 2_000


class SqlitePreferenceStore:
    def __init__(self, path: Path):
        self.path = Path(path)
        try:
            self.db = SqliteFile(self.path, synchronous="FULL", schema=_SCHEMA)
        except sqlite3.DatabaseError as exc:
            raise PreferenceStoreError(f"preference store {self.path}: {exc}") from None

    def get(self, customer_ids: Sequence[int]) -> dict[int, StoredPreferences]:
        uniq = sorted({int(c) for c in customer_ids})
        if not uniq:
            return {}

        def read(conn: sqlite3.Connection) -> list[tuple]:
            rows: list[tuple] = []
            for start in range(0, len(uniq), _CHUNK):
                part = uniq[start:start + _CHUNK]
                rows += conn.execute(f"SELECT {', '.join(PREFERENCE.names)} FROM {PREFERENCE.name} WHERE customer_id "
                                     f"IN ({','.join('?' * len(part))})", part).fetchall()
            return rows

        return {int(r[0]): StoredPreferences(int(r[0]), r[1], float(r[2]), r[3]) for r in self.db.read(read)}

    def put(self, customer_id: int, preferences: str, by: str, at: float) -> StoredPreferences | None:
        cid = int(customer_id)

        def write(conn: sqlite3.Connection) -> StoredPreferences | None:
            old = conn.execute(f"SELECT {', '.join(PREFERENCE.names)} FROM {PREFERENCE.name} WHERE customer_id = ?",
                               (cid,)).fetchone()
            conn.execute(_UPSERT, (cid, preferences, float(at), by))
            conn.execute(_AUDIT, (cid, float(at), by, old[1] if old else None, preferences))
            return StoredPreferences(cid, old[1], float(old[2]), old[3]) if old else None

        return self.db.submit(write)

    def audit(self, customer_id: int) -> list[dict]:
        rows = self.db.read(lambda conn: conn.execute(
            f"SELECT changed_at, changed_by, before, after FROM {PREFERENCE_AUDIT.name} WHERE customer_id = ? "
            "ORDER BY changed_at, rowid", (int(customer_id),)).fetchall())
        return [{"changed_at": r[0], "changed_by": r[1], "before": json.loads(r[2]) if r[2] else None,
                 "after": json.loads(r[3])} for r in rows]

    def erase_customer(self, customer_id: int) -> int:
        """Delete the customer's preferences and their audit trail (the erasure receipt records
        that they were erased)."""
        cid = int(customer_id)

        def write(conn: sqlite3.Connection) -> int:
            conn.execute("PRAGMA secure_delete=ON")  # deleted rows are overwritten, not left in free space
            return (conn.execute(f"DELETE FROM {PREFERENCE.name} WHERE customer_id = ?", (cid,)).rowcount
                    + conn.execute(f"DELETE FROM {PREFERENCE_AUDIT.name} WHERE customer_id = ?", (cid,)).rowcount)

        n = self.db.submit(write)
        if n:
            self.db.read(lambda conn: conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall())
        return n

    def close(self) -> None:
        self.db.close()
