"""The outbox: outbound messages waiting for delivery, their states and receipts.

The outbox lives in the decision log's SQLite file (`<log>/log.db`): the decision log inserts
a decision's message in the transaction of its decision rows (`nba.stores.decisions.sqlite`),
and this store is what the delivery worker (`nba.activation.worker`) and `nba activation
status` use of it:

* `claim` leases due messages to a worker until a moment (`lease_until`); a worker that dies
  holding leases (SIGKILL mid-batch) loses nothing: once the lease expires the messages are
  due again and another worker (or the same one restarted) delivers them. Delivery is at
  least once; the idempotency key lets a receiver make it exactly once.
* `settle` records each attempt's outcome (delivered, failed with the reason and the next
  attempt, dead with the reason) and its receipt, one transaction per batch, and only for
  messages the worker still holds (a late worker never overwrites another's delivery).
* `status` counts the messages per channel and state; `erase_customer` removes a customer's
  messages and receipts (the erasure contract).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nba.records import OUTBOX, OUTBOX_STATES, RECEIPT
from nba.stores.sqlite import SqliteFile, create_table, insert_sql

# due messages are found through a partial index: only the undelivered ones are in it
OUTBOX_SCHEMA = (create_table(OUTBOX) + create_table(RECEIPT)
                 + f"CREATE INDEX IF NOT EXISTS outbox_due ON {OUTBOX.name} (next_attempt_at) "
                   "WHERE state IN ('pending', 'failed');\n"
                 + f"CREATE INDEX IF NOT EXISTS outbox_customer ON {OUTBOX.name} (customer_id);\n"
                 + f"CREATE INDEX IF NOT EXISTS receipts_key ON {RECEIPT.name} (idempotency_key);\n")

_MESSAGE = ("idempotency_key", "decision_id", "customer_id", "action_id", "channel", "created_at", "payload",
            "attempts")
_CLAIM = (f"UPDATE {OUTBOX.name} SET lease_until = ?, lease_owner = ? WHERE idempotency_key IN ("
          f"SELECT idempotency_key FROM {OUTBOX.name} WHERE state IN ('pending', 'failed') "
          "AND next_attempt_at <= ? AND lease_until <= ? ORDER BY next_attempt_at LIMIT ?) "
          f"RETURNING {', '.join(_MESSAGE)}")
_SETTLE = (f"UPDATE {OUTBOX.name} SET state = ?, attempts = attempts + 1, next_attempt_at = ?, lease_until = 0, "
           "lease_owner = NULL, error = ?, delivered_at = ? WHERE idempotency_key = ? AND lease_owner = ?")
_RECEIPT = insert_sql(RECEIPT)


@dataclass(frozen=True)
class Message:
    """An outbox message as a connector sends it."""

    idempotency_key: str
    decision_id: str
    customer_id: int
    action_id: str
    channel: str
    created_at: float
    payload: str  # a JSON object
    attempts: int  # attempts before this one

    def body(self) -> dict[str, Any]:
        """What a receiver gets: the message's fields and its payload (a JSON object)."""
        import json

        return {"idempotency_key": self.idempotency_key, "decision_id": self.decision_id,
                "customer_id": self.customer_id, "action_id": self.action_id, "channel": self.channel,
                "attempt": self.attempts + 1, "payload": json.loads(self.payload)}


@dataclass(frozen=True)
class Settlement:
    """The outcome of one delivery attempt."""

    idempotency_key: str
    state: str  # delivered | failed | dead
    detail: str  # the receiver's answer, or the reason it failed
    connector: str
    attempt: int  # 1, 2, ...
    next_attempt_at: float = 0.0  # failed: when to try again


def status_table(rows: Sequence[tuple]) -> dict[str, dict[str, int]]:
    """(channel, state, count, leased) rows -> per channel the count per state and `in_flight`
    (the undelivered ones a worker holds now); both backends' `status`."""
    out: dict[str, dict[str, int]] = {}
    for channel, state, count, leased in rows:
        row = out.setdefault(channel, {**{s: 0 for s in OUTBOX_STATES}, "in_flight": 0})
        row[state] = int(count)
        if state in ("pending", "failed"):
            row["in_flight"] += int(leased or 0)
    return dict(sorted(out.items()))


def messages_query(state: str | None, channel: str | None, limit: int, *, mark: str) -> tuple[str, tuple]:
    """The newest messages, optionally of one state and channel: the SQL (`mark`: the
    backend's parameter marker) and its arguments; both backends' `messages`."""
    where, args = [], []
    if state is not None:
        where.append(f"state = {mark}")
        args.append(state)
    if channel is not None:
        where.append(f"channel = {mark}")
        args.append(channel)
    sql = (f"SELECT {', '.join(OUTBOX.names)} FROM {OUTBOX.name}" + (" WHERE " + " AND ".join(where) if where else "")
           + f" ORDER BY created_at DESC LIMIT {mark}")
    return sql, (*args, int(limit))


class Outbox:
    """The outbox of the decision log in `path` (its `log.db`), shared by processes."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.db = SqliteFile(self.path, synchronous="FULL", schema=OUTBOX_SCHEMA)

    def close(self) -> None:
        self.db.close()

    def claim(self, owner: str, *, limit: int, lease_s: float, now: float) -> list[Message]:
        """Lease up to `limit` due messages (pending, or failed and due again; unleased or with
        an expired lease) to `owner` until `now + lease_s`, oldest due first."""
        def write(conn: sqlite3.Connection) -> list[tuple]:
            return conn.execute(_CLAIM, (now + lease_s, owner, now, now, int(limit))).fetchall()

        rows = self.db.submit(write)
        return [Message(*r) for r in rows]

    def settle(self, owner: str, outcomes: Sequence[Settlement], *, now: float) -> int:
        """Record the attempts' outcomes and receipts in one transaction; a message whose lease
        `owner` no longer holds keeps its state (its receipt is still recorded). Returns how
        many states changed."""
        updates = [(o.state, o.next_attempt_at if o.state == "failed" else 0.0,
                    None if o.state == "delivered" else o.detail, now if o.state == "delivered" else None,
                    o.idempotency_key, owner) for o in outcomes]
        receipts = [(o.idempotency_key, o.attempt, now, o.connector, o.state, o.detail, owner) for o in outcomes]

        def write(conn: sqlite3.Connection) -> int:
            changed = 0
            for u in updates:
                changed += conn.execute(_SETTLE, u).rowcount
            conn.executemany(_RECEIPT, receipts)
            return changed

        return int(self.db.submit(write)) if outcomes else 0

    def release(self, owner: str) -> int:
        """Give back the leases of `owner` (a worker stopping cleanly): due again at once."""
        return int(self.db.submit(lambda conn: conn.execute(
            f"UPDATE {OUTBOX.name} SET lease_until = 0, lease_owner = NULL WHERE lease_owner = ?",
            (owner,)).rowcount))

    def status(self, *, now: float) -> dict[str, dict[str, int]]:
        """Per channel: how many messages are pending, delivered, failed, dead, and of the
        undelivered ones how many a worker holds now (`in_flight`)."""
        def read(conn: sqlite3.Connection) -> list[tuple]:
            return conn.execute(
                f"SELECT channel, state, count(*), sum(lease_until > ?) FROM {OUTBOX.name} GROUP BY channel, state",
                (now,)).fetchall()

        return status_table(self.db.read(read))

    def messages(self, *, state: str | None = None, channel: str | None = None, limit: int = 100
                 ) -> list[dict[str, Any]]:
        """Messages with their delivery state (the newest first), for people and tests."""
        sql, args = messages_query(state, channel, limit, mark="?")

        def read(conn: sqlite3.Connection) -> list[tuple]:
            return conn.execute(sql, args).fetchall()

        return [dict(zip(OUTBOX.names, r, strict=True)) for r in self.db.read(read)]

    def receipts(self, idempotency_key: str) -> list[dict[str, Any]]:
        def read(conn: sqlite3.Connection) -> list[tuple]:
            return conn.execute(f"SELECT {', '.join(RECEIPT.names)} FROM {RECEIPT.name} WHERE idempotency_key = ? "
                                "ORDER BY at, attempt", (idempotency_key,)).fetchall()

        return [dict(zip(RECEIPT.names, r, strict=True)) for r in self.db.read(read)]

    def of_decisions(self, decision_ids: Sequence[str]) -> list[dict[str, Any]]:
        """The messages of these decisions: key, decision, channel, state, and how many
        receipts record a delivery (a receiver's proof; more than one after a lease expired)."""
        ids = list(dict.fromkeys(decision_ids))

        def read(conn: sqlite3.Connection) -> list[tuple]:
            rows: list[tuple] = []
            for start in range(0, len(ids), 500):
                part = ids[start:start + 500]
                rows += conn.execute(
                    f"SELECT o.idempotency_key, o.decision_id, o.channel, o.state, (SELECT count(*) FROM "
                    f"{RECEIPT.name} r WHERE r.idempotency_key = o.idempotency_key AND r.outcome = 'delivered') "
                    f"FROM {OUTBOX.name} o WHERE o.decision_id IN ({','.join('?' * len(part))})", part).fetchall()
            return rows

        names = ("idempotency_key", "decision_id", "channel", "state", "delivered_receipts")
        return [dict(zip(names, r, strict=True)) for r in self.db.read(read)]

    def count(self, state: str | None = None) -> int:
        sql = f"SELECT count(*) FROM {OUTBOX.name}" + (" WHERE state = ?" if state else "")
        return int(self.db.read(lambda conn: conn.execute(sql, (state,) if state else ()).fetchone()[0]))

    def retry_dead(self, channel: str | None = None) -> int:
        """Make dead messages pending again (after the receiver is fixed); returns how many."""
        sql = (f"UPDATE {OUTBOX.name} SET state = 'pending', attempts = 0, next_attempt_at = 0, error = NULL "
               "WHERE state = 'dead'" + (" AND channel = ?" if channel else ""))
        return int(self.db.submit(lambda conn: conn.execute(sql, (channel,) if channel else ()).rowcount))

    def erase_customer(self, customer_id: int) -> int:
        """Remove every message of the customer and their receipts (nothing is sent to them
        after this); returns the rows removed."""
        def write(conn: sqlite3.Connection) -> int:
            keys = [r[0] for r in conn.execute(f"SELECT idempotency_key FROM {OUTBOX.name} WHERE customer_id = ?",
                                               (int(customer_id),))]
            removed = 0
            for key in keys:
                removed += conn.execute(f"DELETE FROM {RECEIPT.name} WHERE idempotency_key = ?", (key,)).rowcount
            removed += conn.execute(f"DELETE FROM {OUTBOX.name} WHERE customer_id = ?", (int(customer_id),)).rowcount
            return removed

        return int(self.db.submit(write))

