"""Contact-policy state in one SQLite file (the embedded default); tables from `nba.records`."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from nba.records import CONTACT, POLICY_VERSION, REJECTION
from nba.stores.policy_state import (
    Contact,
    PolicyStoreError,
    RawHistory,
    contact_customers,
    empty_raw,
    rows_to_raw,
)
from nba.stores.sqlite import SqliteFile, create_table, insert_sql

# `prune` deletes by time
_SCHEMA = (create_table(CONTACT) + f"CREATE INDEX IF NOT EXISTS contacts_ts ON {CONTACT.name} (ts);\n"
           + create_table(REJECTION) + create_table(POLICY_VERSION))
_BUMP = (f"INSERT INTO {POLICY_VERSION.name} (customer_id, v) VALUES (?, 1) "
         "ON CONFLICT (customer_id) DO UPDATE SET v = v + 1")
# a Contact as it is (a batch's million as plain tuples): its fields name the columns (`group` is `grp`)
_INSERT_CONTACT = insert_sql(CONTACT, conflict="IGNORE", columns=[{"group": "grp"}.get(f, f) for f in Contact._fields])
_INSERT_REJECTION = insert_sql(REJECTION, conflict="IGNORE")
# Customers per key lookup: a batch asks for its customers in chunks, so the cost follows the
# customers asked for, not the size of the store (reading the whole window for a 10,000-customer
# batch took 4 s once the store held a million contacts).
_CHUNK = 2_000


class SqlitePolicyStore:
    """Contact-policy state in one SQLite file (WAL): safe across threads and processes.

    `synchronous=NORMAL`: a committed write survives a crash or restart of the process (the
    serving tests restart the server); only a power cut may lose the last commits, which would
    let a customer be contacted once more than a cap allows.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        try:
            self.db = SqliteFile(self.path, synchronous="NORMAL", schema=_SCHEMA)
        except sqlite3.DatabaseError as exc:
            raise PolicyStoreError(f"contact-policy store {self.path}: {exc}") from None

    def history(self, customer_ids: Sequence[int] | np.ndarray, since: float) -> RawHistory:
        ids = np.asarray(customer_ids, dtype=np.int64)
        if ids.size == 0:
            return empty_raw()

        def read(conn: sqlite3.Connection) -> tuple[list, list, dict[int, int]]:
            uniq = sorted(set(ids.tolist()))
            contacts: list = []
            rejects: list = []
            versions: dict[int, int] = {}
            for start in range(0, len(uniq), _CHUNK):
                part = uniq[start:start + _CHUNK]
                marks = ",".join("?" * len(part))
                # the versions first: a write landing after this read makes them look old, not new
                versions.update(conn.execute(f"SELECT customer_id, v FROM {POLICY_VERSION.name} WHERE customer_id IN "
                                             f"({marks})", part).fetchall())
                contacts += conn.execute(f"SELECT customer_id, action_id, grp, channel, ts FROM contacts WHERE "
                                         f"customer_id IN ({marks}) AND ts > ?", (*part, since)).fetchall()
                rejects += conn.execute(f"SELECT customer_id, action_id, ts FROM rejections WHERE customer_id IN "
                                        f"({marks}) AND ts > ?", (*part, since)).fetchall()
            return contacts, rejects, versions

        contacts, rejects, versions = self.db.read(read)
        return rows_to_raw(ids, contacts, rejects, versions)

    def record_contacts(self, contacts: Sequence[Contact] | Sequence[tuple]) -> None:
        if contacts:
            def write(conn: sqlite3.Connection) -> None:
                conn.executemany(_INSERT_CONTACT, contacts)
                conn.executemany(_BUMP, ((c,) for c in contact_customers(contacts)))

            self.db.submit(write)

    def reserve(self, contacts: Sequence[Contact] | Sequence[tuple], versions: dict[int, int]) -> bool:
        """Check and record in one write transaction: SQLite's write lock makes it atomic across
        the service's threads and processes."""
        if not contacts:
            return True
        customers = contact_customers(contacts)

        def write(conn: sqlite3.Connection) -> bool:
            for start in range(0, len(customers), _CHUNK):
                part = customers[start:start + _CHUNK]
                marks = ",".join("?" * len(part))
                now = dict(conn.execute(f"SELECT customer_id, v FROM {POLICY_VERSION.name} WHERE customer_id IN "
                                        f"({marks})", part).fetchall())
                if any(now.get(c, 0) != versions.get(c, 0) for c in part):
                    return False
            conn.executemany(_INSERT_CONTACT, contacts)
            conn.executemany(_BUMP, ((c,) for c in customers))
            return True

        return bool(self.db.submit(write))

    def release(self, contacts: Sequence[Contact] | Sequence[tuple]) -> None:
        if contacts:
            def write(conn: sqlite3.Connection) -> None:
                conn.executemany(f"DELETE FROM {CONTACT.name} WHERE customer_id = ? AND decision_id = ? AND "
                                 "action_id = ?", ((int(c[0]), c[5], c[1]) for c in contacts))
                conn.executemany(_BUMP, ((c,) for c in contact_customers(contacts)))

            self.db.submit(write)

    def record_rejection(self, customer_id: int, action_id: str, ts: float, decision_id: str) -> None:
        def write(conn: sqlite3.Connection) -> None:
            conn.execute(_INSERT_REJECTION, (int(customer_id), float(ts), action_id, decision_id))
            conn.execute(_BUMP, (int(customer_id),))

        self.db.submit(write)

    def prune(self, before: float) -> int:
        """Forget contacts and rejections older than `before` (no policy looks that far back)."""
        return self.db.submit(lambda conn: conn.execute("DELETE FROM contacts WHERE ts <= ?", (before,)).rowcount
                              + conn.execute("DELETE FROM rejections WHERE ts <= ?", (before,)).rowcount)

    def erase_customer(self, customer_id: int) -> int:
        """Delete the customer's contacts and rejections (no aggregate needs them)."""
        cid = int(customer_id)

        def write(conn: sqlite3.Connection) -> int:
            conn.execute("PRAGMA secure_delete=ON")  # deleted rows are overwritten, not left in free space
            n = (conn.execute("DELETE FROM contacts WHERE customer_id = ?", (cid,)).rowcount
                 + conn.execute("DELETE FROM rejections WHERE customer_id = ?", (cid,)).rowcount)
            conn.execute(f"DELETE FROM {POLICY_VERSION.name} WHERE customer_id = ?", (cid,))
            return n

        n = self.db.submit(write)
        if n:
            self.db.read(lambda conn: conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall())
        return n

    def ping(self) -> None:
        try:
            self.db.read(lambda conn: conn.execute("SELECT 1 FROM contacts LIMIT 1").fetchall())
        except sqlite3.DatabaseError as exc:
            raise PolicyStoreError(f"contact-policy store {self.path}: {exc}") from None

    def close(self) -> None:
        self.db.close()
