"""The preference store of the production profile: `PREFERENCE` and `PREFERENCE_AUDIT` in the
logs' Postgres database; a change and its audit row commit together, group-committed."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from nba.records import PREFERENCE, PREFERENCE_AUDIT
from nba.stores.postgres import PgDatabase, insert_sql
from nba.stores.preferences import StoredPreferences

COMPONENT = "preference store"
_UPSERT = insert_sql(PREFERENCE, conflict="update")
_AUDIT = insert_sql(PREFERENCE_AUDIT)
_COLS = ", ".join(f"{c}::text" if c == "preferences" else c for c in PREFERENCE.names)


class PostgresPreferenceStore:
    def __init__(self, dsn: str, *, component: str = COMPONENT):
        self.dsn = dsn
        self.db = PgDatabase(dsn, component)
        self.path = self.db.address

    def get(self, customer_ids: Sequence[int]) -> dict[int, StoredPreferences]:
        uniq = sorted({int(c) for c in customer_ids})
        if not uniq:
            return {}
        rows = self.db.read(lambda conn: conn.execute(
            f"SELECT {_COLS} FROM {PREFERENCE.name} WHERE customer_id = ANY(%s)", (uniq,)).fetchall())
        return {int(r[0]): StoredPreferences(int(r[0]), r[1], float(r[2]), r[3]) for r in rows}

    def put(self, customer_id: int, preferences: str, by: str, at: float) -> StoredPreferences | None:
        cid = int(customer_id)

        def write(conn: Any) -> StoredPreferences | None:
            old = conn.execute(f"SELECT {_COLS} FROM {PREFERENCE.name} WHERE customer_id = %s FOR UPDATE",
                               (cid,)).fetchone()
            conn.execute(_UPSERT, (cid, preferences, float(at), by))
            conn.execute(_AUDIT, (cid, float(at), by, old[1] if old else None, preferences))
            return StoredPreferences(cid, old[1], float(old[2]), old[3]) if old else None

        return self.db.submit(write)

    def audit(self, customer_id: int) -> list[dict]:
        rows = self.db.read(lambda conn: conn.execute(
            f"SELECT changed_at, changed_by, before, after FROM {PREFERENCE_AUDIT.name} WHERE customer_id = %s "
            "ORDER BY changed_at, row_seq", (int(customer_id),)).fetchall())
        return [{"changed_at": r[0], "changed_by": r[1], "before": json.loads(r[2]) if r[2] else None,
                 "after": json.loads(r[3])} for r in rows]

    def erase_customer(self, customer_id: int) -> int:
        cid = int(customer_id)
        n = int(self.db.submit(lambda conn: conn.execute(
            f"DELETE FROM {PREFERENCE.name} WHERE customer_id = %s", (cid,)).rowcount + conn.execute(
            f"DELETE FROM {PREFERENCE_AUDIT.name} WHERE customer_id = %s", (cid,)).rowcount))
        if n:
            self.db.read(lambda conn: [conn.execute(f"VACUUM {r.name}") for r in (PREFERENCE, PREFERENCE_AUDIT)])
        return n

    def close(self) -> None:
        self.db.close()
