"""Trigger state in one SQLite file (the embedded default); the table from `nba.records`."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from nba.records import TRIGGER_FIRE
from nba.stores.sqlite import SqliteFile, create_table
from nba.stores.trigger_state import Fire, TriggerStoreError

_CHUNK = 2_000
# a firing replaces the last one only outside its window, or when it is the same event's (its
# triggers run again after a restart); `changes()` says whether it did
_CLAIM = (f"INSERT INTO {TRIGGER_FIRE.name} (trigger_id, customer_id, fired_at, event_id) VALUES (?, ?, ?, ?) "
          "ON CONFLICT (trigger_id, customer_id) DO UPDATE SET fired_at = excluded.fired_at, "
          "event_id = excluded.event_id WHERE excluded.fired_at - fired_at >= ? OR event_id = excluded.event_id")


class SqliteTriggerStore:
    """Last firings in one SQLite file (WAL): safe across threads and processes."""

    def __init__(self, path: Path):
        self.path = Path(path)
        try:
            self.db = SqliteFile(self.path, synchronous="NORMAL", schema=create_table(TRIGGER_FIRE))
        except sqlite3.DatabaseError as exc:
            raise TriggerStoreError(f"trigger store {self.path}: {exc}") from None

    def last_fired(self, customer_ids: Sequence[int] | np.ndarray, trigger_ids: Sequence[str]) -> np.ndarray:
        ids = np.asarray(customer_ids, dtype=np.int64)
        out = np.full((ids.size, len(trigger_ids)), np.nan)
        if not ids.size or not trigger_ids:
            return out
        tcol = {t: j for j, t in enumerate(trigger_ids)}

        def read(conn: sqlite3.Connection) -> list[tuple]:
            uniq = sorted(set(ids.tolist()))
            rows: list[tuple] = []
            tmarks = ",".join("?" * len(trigger_ids))
            if len(uniq) > 50_000:  # a scan: the whole table of these triggers is cheaper than keyed reads
                return conn.execute(f"SELECT trigger_id, customer_id, fired_at FROM {TRIGGER_FIRE.name} WHERE "
                                    f"trigger_id IN ({tmarks})", tuple(trigger_ids)).fetchall()
            for start in range(0, len(uniq), _CHUNK):
                part = uniq[start:start + _CHUNK]
                marks = ",".join("?" * len(part))
                rows += conn.execute(f"SELECT trigger_id, customer_id, fired_at FROM {TRIGGER_FIRE.name} WHERE "
                                     f"trigger_id IN ({tmarks}) AND customer_id IN ({marks})",
                                     (*trigger_ids, *part)).fetchall()
            return rows

        try:
            rows = self.db.read(read)
        except sqlite3.DatabaseError as exc:
            raise TriggerStoreError(f"trigger store {self.path}: {exc}") from None
        if not rows:
            return out
        import pandas as pd

        t, c, f = zip(*rows, strict=True)
        pos = pd.Index(ids).get_indexer(np.asarray(c, dtype=np.int64)) if pd.Index(ids).is_unique else None
        if pos is None:  # a customer asked for twice
            where: dict[int, list[int]] = {}
            for i, cid in enumerate(ids.tolist()):
                where.setdefault(cid, []).append(i)
            for tid, cid, ts in rows:
                for i in where.get(cid, []):
                    out[i, tcol[tid]] = ts
            return out
        keep = pos >= 0
        cols = np.fromiter((tcol[x] for x in t), dtype=np.int64, count=len(t))
        out[pos[keep], cols[keep]] = np.asarray(f, dtype=np.float64)[keep]
        return out

    def fired_by(self, customer_ids: Sequence[int] | np.ndarray, trigger_ids: Sequence[str]) -> np.ndarray:
        ids = np.asarray(customer_ids, dtype=np.int64)
        out = np.full((ids.size, len(trigger_ids)), None, dtype=object)
        if not ids.size or not trigger_ids:
            return out
        tcol = {t: j for j, t in enumerate(trigger_ids)}
        uniq = sorted(set(ids.tolist()))

        def read(conn: sqlite3.Connection) -> list[tuple]:
            rows: list[tuple] = []
            for start in range(0, len(uniq), _CHUNK):
                part = uniq[start:start + _CHUNK]
                rows += conn.execute(f"SELECT trigger_id, customer_id, event_id FROM {TRIGGER_FIRE.name} WHERE "
                                     f"trigger_id IN ({','.join('?' * len(trigger_ids))}) AND customer_id IN "
                                     f"({','.join('?' * len(part))})", (*trigger_ids, *part)).fetchall()
            return rows

        try:
            found = {(c, t): e for t, c, e in self.db.read(read)}
        except sqlite3.DatabaseError as exc:
            raise TriggerStoreError(f"trigger store {self.path}: {exc}") from None
        for i, cid in enumerate(ids.tolist()):
            for t, j in tcol.items():
                out[i, j] = found.get((cid, t))
        return out

    def claim(self, fires: Sequence[Fire]) -> list[bool]:
        if not fires:
            return []

        def write(conn: sqlite3.Connection) -> list[bool]:
            out = []
            for f in fires:
                cur = conn.execute(_CLAIM, (f.trigger_id, int(f.customer_id), float(f.fired_at), f.event_id,
                                            float(f.window_s)))
                out.append(cur.rowcount > 0)
            return out

        try:
            return self.db.submit(write)
        except sqlite3.DatabaseError as exc:
            raise TriggerStoreError(f"trigger store {self.path}: {exc}") from None

    def erase_customer(self, customer_id: int) -> int:
        return self.db.submit(lambda conn: conn.execute(f"DELETE FROM {TRIGGER_FIRE.name} WHERE customer_id = ?",
                                                        (int(customer_id),)).rowcount)

    def ping(self) -> None:
        try:
            self.db.read(lambda conn: conn.execute(f"SELECT 1 FROM {TRIGGER_FIRE.name} LIMIT 1").fetchall())
        except sqlite3.DatabaseError as exc:
            raise TriggerStoreError(f"trigger store {self.path}: {exc}") from None

    def close(self) -> None:
        self.db.close()
