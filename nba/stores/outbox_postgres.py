"""The outbox of the production profile: the `outbox` and `receipts` tables in the decision
log's Postgres database (`nba.stores.postgres`), written by the decision log in the
transaction of the decisions they send; the same interface as `nba.stores.outbox.Outbox`.

Several delivery workers (on several machines) claim with `FOR UPDATE SKIP LOCKED`: a message
is leased to one of them, the others take the next due ones instead of waiting."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from nba.records import OUTBOX, RECEIPT
from nba.stores.outbox import _MESSAGE, Message, Settlement, messages_query, status_table
from nba.stores.postgres import PgDatabase, copy_sql

COMPONENT = "outbox"
_CLAIM = (f"UPDATE {OUTBOX.name} SET lease_until = %s, lease_owner = %s WHERE idempotency_key IN ("
          f"SELECT idempotency_key FROM {OUTBOX.name} WHERE state IN ('pending', 'failed') "
          "AND next_attempt_at <= %s AND lease_until <= %s ORDER BY next_attempt_at LIMIT %s FOR UPDATE SKIP LOCKED) "
          f"RETURNING {', '.join(_MESSAGE)}")
_SETTLE = (f"UPDATE {OUTBOX.name} SET state = %s, attempts = attempts + 1, next_attempt_at = %s, lease_until = 0, "
           "lease_owner = NULL, error = %s, delivered_at = %s WHERE idempotency_key = %s AND lease_owner = %s")
_RECEIPTS = copy_sql(RECEIPT)


class PostgresOutbox:
    def __init__(self, dsn: str, *, component: str = COMPONENT):
        self.dsn = dsn
        self.db = PgDatabase(dsn, component)
        self.path = self.db.address

    def close(self) -> None:
        self.db.close()

    def claim(self, owner: str, *, limit: int, lease_s: float, now: float) -> list[Message]:
        rows = self.db.submit(lambda conn: conn.execute(_CLAIM, (now + lease_s, owner, now, now, int(limit))).fetchall())
        return [Message(*r) for r in rows]

    def settle(self, owner: str, outcomes: Sequence[Settlement], *, now: float) -> int:
        updates = [(o.state, o.next_attempt_at if o.state == "failed" else 0.0,
                    None if o.state == "delivered" else o.detail, now if o.state == "delivered" else None,
                    o.idempotency_key, owner) for o in outcomes]
        receipts = [(o.idempotency_key, o.attempt, now, o.connector, o.state, o.detail, owner) for o in outcomes]

        def write(conn: Any) -> int:
            changed = 0
            with conn.cursor() as cur:
                for u in updates:
                    changed += cur.execute(_SETTLE, u).rowcount
                with cur.copy(_RECEIPTS) as cp:
                    for r in receipts:
                        cp.write_row(r)
            return changed

        return int(self.db.submit(write)) if outcomes else 0

    def release(self, owner: str) -> int:
        return int(self.db.submit(lambda conn: conn.execute(
            f"UPDATE {OUTBOX.name} SET lease_until = 0, lease_owner = NULL WHERE lease_owner = %s", (owner,)).rowcount))

    def status(self, *, now: float) -> dict[str, dict[str, int]]:
        rows = self.db.read(lambda conn: conn.execute(
            f"SELECT channel, state, count(*), count(*) FILTER (WHERE lease_until > %s) FROM {OUTBOX.name} "
            "GROUP BY channel, state", (now,)).fetchall())
        return status_table(rows)

    def messages(self, *, state: str | None = None, channel: str | None = None, limit: int = 100
                 ) -> list[dict[str, Any]]:
        sql, args = messages_query(state, channel, limit, mark="%s")
        rows = self.db.read(lambda conn: conn.execute(sql, args).fetchall())
        return [dict(zip(OUTBOX.names, r, strict=True)) for r in rows]

    def receipts(self, idempotency_key: str) -> list[dict[str, Any]]:
        rows = self.db.read(lambda conn: conn.execute(
            f"SELECT {', '.join(RECEIPT.names)} FROM {RECEIPT.name} WHERE idempotency_key = %s ORDER BY at, attempt",
            (idempotency_key,)).fetchall())
        return [dict(zip(RECEIPT.names, r, strict=True)) for r in rows]

    def count(self, state: str | None = None) -> int:
        sql = f"SELECT count(*) FROM {OUTBOX.name}" + (" WHERE state = %s" if state else "")
        return int(self.db.read(lambda conn: conn.execute(sql, (state,) if state else ()).fetchone()[0]))

    def retry_dead(self, channel: str | None = None) -> int:
        sql = (f"UPDATE {OUTBOX.name} SET state = 'pending', attempts = 0, next_attempt_at = 0, error = NULL "
               "WHERE state = 'dead'" + (" AND channel = %s" if channel else ""))
        return int(self.db.submit(lambda conn: conn.execute(sql, (channel,) if channel else ()).rowcount))

    def erase_customer(self, customer_id: int) -> int:
        cid = int(customer_id)

        def write(conn: Any) -> int:
            removed = conn.execute(f"DELETE FROM {RECEIPT.name} WHERE idempotency_key IN (SELECT idempotency_key "
                                   f"FROM {OUTBOX.name} WHERE customer_id = %s)", (cid,)).rowcount
            return removed + conn.execute(f"DELETE FROM {OUTBOX.name} WHERE customer_id = %s", (cid,)).rowcount

        n = int(self.db.submit(write))
        if n:
            self.db.read(lambda conn: [conn.execute(f"VACUUM {r.name}") for r in (OUTBOX, RECEIPT)])
        return n


def open_outbox(settings: Any) -> Any:
    """The profile's outbox: in the decision log's SQLite file (embedded, `nba.stores.outbox`)
    or in the logs' Postgres database (production; refused at start, in one line, if it does
    not answer or is not migrated). The same interface either way. (Here, above both
    backends: the import graph has no cycle.)"""
    if settings.log_backend == "postgres":
        return PostgresOutbox(settings.decision_log_dsn)
    from nba.stores.decisions import DB_FILE
    from nba.stores.outbox import Outbox

    return Outbox(settings.decision_log_dir / DB_FILE)
