"""The erasure list: every customer erased (GDPR art. 17), in one SQLite file (`ERASURE`).

Training frames exclude these ids whatever the sources hold (a re-simulated or re-published
source brings an erased customer back: the list keeps them out of every model). With the
receipts beside it, it is the one place that still holds an erased id, as the record that the
erasure was done.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from nba.records import ERASURE
from nba.stores.sqlite import SqliteFile, create_table, insert_sql

FILE = "erasures.db"
_INSERT = insert_sql(ERASURE, conflict="IGNORE")


class ErasureList:
    def __init__(self, folder: Path):
        self.path = Path(folder) / FILE
        self.db = SqliteFile(self.path, synchronous="FULL", schema=create_table(ERASURE))

    def add(self, customer_id: int, at: float, by: str, receipt: str) -> bool:
        """Add the customer; False when already listed (the first erasure's entry stays)."""
        return self.db.submit(lambda conn: conn.execute(_INSERT, (int(customer_id), float(at), by, receipt)).rowcount
                              == 1)

    def get(self, customer_id: int) -> dict | None:
        row = self.db.read(lambda conn: conn.execute(
            f"SELECT {', '.join(ERASURE.names)} FROM {ERASURE.name} WHERE customer_id = ?",
            (int(customer_id),)).fetchone())
        return dict(zip(ERASURE.names, row, strict=True)) if row else None

    def close(self) -> None:
        self.db.close()


def erased_ids(folder: Path) -> frozenset[int]:
    """Every erased customer id listed in `folder` (empty when nothing was ever erased)."""
    path = Path(folder) / FILE
    if not path.is_file():
        return frozenset()
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return frozenset(int(r[0]) for r in conn.execute(f"SELECT customer_id FROM {ERASURE.name}"))
    finally:
        conn.close()
