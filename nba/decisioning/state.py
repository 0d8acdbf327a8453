"""Contact-policy state: who was contacted with what, on which channel, when; who rejected what.

One small interface (`PolicyStore`), two durable implementations:

* `SqlitePolicyStore` (the embedded default): one SQLite file in WAL mode, shared safely by
  every worker process of the service and by `nba decide-batch`.
* `RedisPolicyStore` (`NBA_PROFILE=production`): a sorted set of contacts and one of
  rejections per customer, each expiring after the longest window any policy looks at.

Writes are idempotent on (decision id, action id): recording the same contact or rejection
twice (a retried request, a duplicate outcome) counts once. The decisioning core never sees
a store: the engine reads a `RawHistory` for the customers of a call and turns it into the
core's index arrays with `to_history`.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Protocol

import numpy as np

from nba.catalog import Catalog
from nba.decisioning.core import ContactHistory
from nba.errors import NbaError


class PolicyStoreError(NbaError):
    """The contact-policy store cannot be reached or used."""

    exit_code = 3


class Contact(NamedTuple):
    """One shown action. A tuple, so a batch's million contacts go to the store as they are."""

    customer_id: int
    action_id: str
    group: str
    channel: str
    ts: float  # epoch seconds
    decision_id: str


@dataclass(frozen=True)
class RawHistory:
    """Contacts and rejections since some moment, for the customers of a call (row = position)."""

    contact_row: np.ndarray
    contact_action: list[str]
    contact_group: list[str]
    contact_channel: list[str]
    contact_ts: np.ndarray
    reject_row: np.ndarray
    reject_action: list[str]
    reject_ts: np.ndarray


class PolicyStore(Protocol):
    def history(self, customer_ids: Sequence[int] | np.ndarray, since: float) -> RawHistory: ...

    def record_contacts(self, contacts: Sequence[Contact]) -> None: ...

    def record_rejection(self, customer_id: int, action_id: str, ts: float, decision_id: str) -> None: ...

    def ping(self) -> None: ...

    def close(self) -> None: ...


def to_history(catalog: Catalog, raw: RawHistory) -> ContactHistory:
    """Catalog indices for a raw history (-1 for actions or groups the catalog no longer has)."""
    aidx = {a: i for i, a in enumerate(catalog.action_ids)}
    gidx = {g: i for i, g in enumerate(catalog.groups)}
    cidx = {c: i for i, c in enumerate(catalog.channel_names)}

    def codes(values: list[str], index: dict[str, int]) -> np.ndarray:
        return np.fromiter((index.get(v, -1) for v in values), dtype=np.int64, count=len(values))

    return ContactHistory(
        contact_row=np.asarray(raw.contact_row, dtype=np.int64),
        contact_action=codes(raw.contact_action, aidx),
        contact_group=codes(raw.contact_group, gidx),
        contact_channel=codes(raw.contact_channel, cidx),
        contact_ts=np.asarray(raw.contact_ts, dtype=np.float64),
        reject_row=np.asarray(raw.reject_row, dtype=np.int64),
        reject_action=codes(raw.reject_action, aidx),
        reject_ts=np.asarray(raw.reject_ts, dtype=np.float64),
    )


def _empty_raw() -> RawHistory:
    i = np.zeros(0, dtype=np.int64)
    f = np.zeros(0, dtype=np.float64)
    return RawHistory(i, [], [], [], f, i, [], f)


# --- SQLite ----------------------------------------------------------------------------------

_SQLITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS contacts (
    customer_id INTEGER NOT NULL, ts REAL NOT NULL, action_id TEXT NOT NULL, grp TEXT NOT NULL,
    channel TEXT NOT NULL, decision_id TEXT NOT NULL,
    PRIMARY KEY (customer_id, decision_id, action_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS contacts_ts ON contacts (ts);
CREATE TABLE IF NOT EXISTS rejections (
    customer_id INTEGER NOT NULL, ts REAL NOT NULL, action_id TEXT NOT NULL, decision_id TEXT NOT NULL,
    PRIMARY KEY (customer_id, decision_id, action_id)
) WITHOUT ROWID;
"""
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
        from nba.sqlite import SqliteFile

        self.path = Path(path)
        try:
            self.db = SqliteFile(self.path, synchronous="NORMAL", schema=_SQLITE_SCHEMA)
        except sqlite3.DatabaseError as exc:
            raise PolicyStoreError(f"contact-policy store {self.path}: {exc}") from None

    def history(self, customer_ids: Sequence[int] | np.ndarray, since: float) -> RawHistory:
        ids = np.asarray(customer_ids, dtype=np.int64)
        if ids.size == 0:
            return _empty_raw()

        def read(conn: sqlite3.Connection) -> tuple[list, list]:
            uniq = sorted(set(ids.tolist()))
            contacts: list = []
            rejects: list = []
            for start in range(0, len(uniq), _CHUNK):
                part = uniq[start:start + _CHUNK]
                marks = ",".join("?" * len(part))
                contacts += conn.execute(f"SELECT customer_id, action_id, grp, channel, ts FROM contacts WHERE "
                                         f"customer_id IN ({marks}) AND ts > ?", (*part, since)).fetchall()
                rejects += conn.execute(f"SELECT customer_id, action_id, ts FROM rejections WHERE customer_id IN "
                                        f"({marks}) AND ts > ?", (*part, since)).fetchall()
            return contacts, rejects

        contacts, rejects = self.db.read(read)
        return _rows_to_raw(ids, contacts, rejects)

    def record_contacts(self, contacts: Sequence[Contact]) -> None:
        if contacts:
            self.db.submit(lambda conn: conn.executemany(
                "INSERT OR IGNORE INTO contacts (customer_id, action_id, grp, channel, ts, decision_id) "
                "VALUES (?,?,?,?,?,?)", contacts))

    def record_rejection(self, customer_id: int, action_id: str, ts: float, decision_id: str) -> None:
        self.db.submit(lambda conn: conn.execute("INSERT OR IGNORE INTO rejections VALUES (?,?,?,?)",
                                                 (int(customer_id), float(ts), action_id, decision_id)))

    def prune(self, before: float) -> int:
        """Forget contacts and rejections older than `before` (no policy looks that far back)."""
        return self.db.submit(lambda conn: conn.execute("DELETE FROM contacts WHERE ts <= ?", (before,)).rowcount
                              + conn.execute("DELETE FROM rejections WHERE ts <= ?", (before,)).rowcount)

    def ping(self) -> None:
        try:
            self.db.read(lambda conn: conn.execute("SELECT 1 FROM contacts LIMIT 1").fetchall())
        except sqlite3.DatabaseError as exc:
            raise PolicyStoreError(f"contact-policy store {self.path}: {exc}") from None

    def close(self) -> None:
        self.db.close()


def _rows_to_raw(ids: np.ndarray, contacts: list[tuple], rejects: list[tuple]) -> RawHistory:
    """Map (customer_id, ...) rows onto the call's rows; a customer asked for twice gets both."""
    import pandas as pd

    if not contacts and not rejects:
        return _empty_raw()
    index = pd.Index(ids) if ids.size > 64 else None
    if index is None and len(set(ids.tolist())) == ids.size:
        where = {int(c): i for i, c in enumerate(ids.tolist())}

        def rows_of(cids: list[int]) -> tuple[np.ndarray, np.ndarray]:
            pos = np.array([where.get(int(c), -1) for c in cids], dtype=np.int64)
            keep = np.flatnonzero(pos >= 0)
            return pos[keep], keep
    elif index is not None and index.is_unique:
        def rows_of(cids: list[int]) -> tuple[np.ndarray, np.ndarray]:
            pos = index.get_indexer(np.asarray(cids, dtype=np.int64))
            keep = np.flatnonzero(pos >= 0)
            return pos[keep], keep
    else:
        def rows_of(cids: list[int]) -> tuple[np.ndarray, np.ndarray]:
            order = np.argsort(ids, kind="stable")
            sorted_ids = ids[order]
            c = np.asarray(cids, dtype=np.int64)
            lo = np.searchsorted(sorted_ids, c, "left")
            hi = np.searchsorted(sorted_ids, c, "right")
            src = np.repeat(np.arange(c.size), hi - lo)
            pos = order[np.concatenate([np.arange(a, b) for a, b in zip(lo, hi, strict=True)])] if src.size else \
                np.zeros(0, dtype=np.int64)
            return pos.astype(np.int64), src

    if contacts:
        c_cid, c_act, c_grp, c_ch, c_ts = zip(*contacts, strict=True)
        c_row, keep = rows_of(list(c_cid))
        contact = (c_row, [c_act[i] for i in keep], [c_grp[i] for i in keep], [c_ch[i] for i in keep],
                   np.asarray(c_ts, dtype=np.float64)[keep])
    else:
        contact = (np.zeros(0, np.int64), [], [], [], np.zeros(0))
    if rejects:
        r_cid, r_act, r_ts = zip(*rejects, strict=True)
        r_row, keep = rows_of(list(r_cid))
        reject = (r_row, [r_act[i] for i in keep], np.asarray(r_ts, dtype=np.float64)[keep])
    else:
        reject = (np.zeros(0, np.int64), [], np.zeros(0))
    return RawHistory(*contact, *reject)


# --- Redis -----------------------------------------------------------------------------------


class RedisPolicyStore:
    """Contact-policy state in Redis: `<prefix>:c:<customer>` holds the contacts (a sorted set
    scored by time), `<prefix>:r:<customer>` the rejections; both expire `retention_s` after
    the last write, so the store holds no more than the policies look at."""

    def __init__(self, url: str, *, prefix: str = "nba:policy", retention_s: float = 400 * 86400.0):
        import redis

        self.url = url
        self.prefix = prefix
        self.retention_s = int(max(retention_s, 86400))
        self._redis = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=5)

    def _key(self, kind: str, customer_id: int) -> str:
        return f"{self.prefix}:{kind}:{int(customer_id)}"

    def history(self, customer_ids: Sequence[int] | np.ndarray, since: float) -> RawHistory:
        import redis

        ids = np.asarray(customer_ids, dtype=np.int64)
        if ids.size == 0:
            return _empty_raw()
        uniq = sorted(set(ids.tolist()))
        contacts: list[tuple] = []
        rejects: list[tuple] = []
        try:
            for start in range(0, len(uniq), 5_000):
                chunk = uniq[start:start + 5_000]
                pipe = self._redis.pipeline(transaction=False)
                for cid in chunk:
                    pipe.zrangebyscore(self._key("c", cid), f"({since}", "+inf", withscores=True)
                    pipe.zrangebyscore(self._key("r", cid), f"({since}", "+inf", withscores=True)
                replies = pipe.execute()
                for i, cid in enumerate(chunk):
                    for member, ts in replies[2 * i]:
                        _, action, group, channel = member.decode().split("|")
                        contacts.append((cid, action, group, channel, ts))
                    for member, ts in replies[2 * i + 1]:
                        _, action = member.decode().split("|")
                        rejects.append((cid, action, ts))
        except redis.RedisError as exc:
            raise PolicyStoreError(f"contact-policy store {self.url}: {exc}") from None
        return _rows_to_raw(ids, contacts, rejects)

    def record_contacts(self, contacts: Sequence[Contact]) -> None:
        import redis

        try:
            for start in range(0, len(contacts), 10_000):
                pipe = self._redis.pipeline(transaction=False)
                for c in contacts[start:start + 10_000]:
                    key = self._key("c", c.customer_id)
                    pipe.zadd(key, {f"{c.decision_id}|{c.action_id}|{c.group}|{c.channel}": float(c.ts)})
                    pipe.zremrangebyscore(key, "-inf", float(c.ts) - self.retention_s)
                    pipe.expire(key, self.retention_s)
                pipe.execute()
        except redis.RedisError as exc:
            raise PolicyStoreError(f"contact-policy store {self.url}: {exc}") from None

    def record_rejection(self, customer_id: int, action_id: str, ts: float, decision_id: str) -> None:
        import redis

        key = self._key("r", customer_id)
        try:
            pipe = self._redis.pipeline(transaction=False)
            pipe.zadd(key, {f"{decision_id}|{action_id}": float(ts)})
            pipe.expire(key, self.retention_s)
            pipe.execute()
        except redis.RedisError as exc:
            raise PolicyStoreError(f"contact-policy store {self.url}: {exc}") from None

    def ping(self) -> None:
        import redis

        try:
            self._redis.ping()
        except redis.RedisError as exc:
            raise PolicyStoreError(f"contact-policy store {self.url}: {exc}") from None

    def clear(self) -> int:
        """Delete every key under the prefix (tests, and a reset of a staging store)."""
        keys = list(self._redis.scan_iter(f"{self.prefix}:*", count=1000))
        return int(self._redis.delete(*keys)) if keys else 0

    def close(self) -> None:
        self._redis.close()
