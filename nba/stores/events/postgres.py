"""The event log of the production profile: `nba.records.EVENT` in Postgres (the decision log's
database), appended in batched statements (one `INSERT ... SELECT FROM unnest(...) ON CONFLICT
DO NOTHING` per group of requests), group-committed; the same interface as the SQLite one."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from nba.records import EVENT, TRIGGER_PENDING
from nba.schemas import ENTITY_KEY
from nba.stores.events import AppendResult, LoggedEvent, pending_event
from nba.stores.postgres import PG_TYPES, PgDatabase

if TYPE_CHECKING:
    import pandas as pd

COMPONENT = "event log"
_ARRAYS = ", ".join(f"%s::{PG_TYPES[c.kind]}[]" for c in EVENT.columns)
_INSERT = (f"INSERT INTO {EVENT.name} ({', '.join(EVENT.names)}) SELECT * FROM unnest({_ARRAYS}) "
           "ON CONFLICT (event_id) DO NOTHING RETURNING event_id")
_PENDING = (f"INSERT INTO {TRIGGER_PENDING.name} ({', '.join(TRIGGER_PENDING.names)}) "
            f"SELECT event_id, {ENTITY_KEY}, ingested_at FROM {EVENT.name} WHERE event_id = ANY(%s)")
_DONE = f"DELETE FROM {TRIGGER_PENDING.name} WHERE event_id = ANY(%s)"
_PENDING_EVENTS = (f"SELECT e.event_id, e.{ENTITY_KEY}, e.type, e.timestamp, e.properties FROM {TRIGGER_PENDING.name} p "
                   f"JOIN {EVENT.name} e ON e.event_id = p.event_id")


class PostgresEventLog:
    def __init__(self, dsn: str, *, component: str = COMPONENT):
        self.dsn = dsn
        self.db = PgDatabase(dsn, component)
        self.path = self.db.address

    def close(self) -> None:
        self.db.close()

    def append(self, events: Sequence[Mapping[str, Any]], ingested_at: float, *,
               pending: bool = False, triggered: Sequence[str] = ()) -> AppendResult:
        done = list(dict.fromkeys(triggered))
        if not events:
            if done:
                self.triggered(done)
            return AppendResult((), ())
        ids = [e["event_id"] for e in events]
        first: dict[str, Mapping[str, Any]] = {}
        for e in events:
            first.setdefault(e["event_id"], e)
        fresh = list(first.values())
        cols = [[e["event_id"] for e in fresh], [int(e["customer_id"]) for e in fresh], [e["type"] for e in fresh],
                [float(e["timestamp"]) for e in fresh], [int(bool(e.get("known_customer", True))) for e in fresh],
                [float(ingested_at)] * len(fresh),
                [json.dumps(e["properties"], sort_keys=True, separators=(",", ":")) for e in fresh]]

        def write(conn: Any) -> AppendResult:
            stored = {r[0] for r in conn.execute(_INSERT, cols).fetchall()}
            if pending and stored:
                conn.execute(_PENDING, (list(stored),))
            if done:
                conn.execute(_DONE, (done,))
            new: list[str] = []
            dup: list[str] = []
            for i in ids:
                if i in stored:
                    new.append(i)
                    stored.discard(i)  # a second copy in the same call is a duplicate
                else:
                    dup.append(i)
            return AppendResult(tuple(new), tuple(dup))

        return self.db.submit(write)

    def pending(self, event_ids: Sequence[str] | None = None, *, before: float | None = None,
                limit: int = 10_000) -> list[dict[str, Any]]:
        if event_ids is None:
            sql = f"{_PENDING_EVENTS} WHERE p.ingested_at < %s ORDER BY e.timestamp, e.event_id LIMIT %s"
            args: tuple[Any, ...] = (float("inf") if before is None else float(before), int(limit))
        else:
            sql = f"{_PENDING_EVENTS} WHERE p.event_id = ANY(%s) ORDER BY e.timestamp, e.event_id"
            args = (list(dict.fromkeys(event_ids)),)
        return [pending_event(r) for r in self.db.read(lambda conn: conn.execute(sql, args).fetchall())]

    def triggered(self, event_ids: Sequence[str]) -> int:
        ids = list(dict.fromkeys(event_ids))
        if not ids:
            return 0
        return int(self.db.submit(lambda c: c.execute(_DONE, (ids,)).rowcount))

    def history(self, customer_ids: Sequence[int], since: float | None = None) -> dict[int, list[LoggedEvent]]:
        wanted = sorted({int(c) for c in customer_ids})
        out: dict[int, list[LoggedEvent]] = {c: [] for c in wanted}
        sql = (f"SELECT {ENTITY_KEY}, type, timestamp, properties FROM {EVENT.name} WHERE {ENTITY_KEY} = ANY(%s)"
               + (" AND timestamp >= %s" if since is not None else "") + f" ORDER BY {ENTITY_KEY}, timestamp, event_id")
        args: tuple[Any, ...] = (wanted, since) if since is not None else (wanted,)
        loads = json.loads
        for cid, typ, ts, props in self.db.read(lambda conn: conn.execute(sql, args).fetchall()):
            out[cid].append(LoggedEvent(typ, ts, loads(props)))
        return out

    def count(self) -> int:
        return int(self.db.read(lambda c: c.execute(f"SELECT count(*) FROM {EVENT.name}").fetchone()[0]))

    def count_unknown(self) -> int:
        return int(self.db.read(lambda c: c.execute(
            f"SELECT count(*) FROM {EVENT.name} WHERE known_customer = 0").fetchone()[0]))

    def erase_customer(self, customer_id: int) -> int:
        def write(conn: Any) -> int:
            conn.execute(f"DELETE FROM {TRIGGER_PENDING.name} WHERE {ENTITY_KEY} = %s", (int(customer_id),))
            return int(conn.execute(f"DELETE FROM {EVENT.name} WHERE {ENTITY_KEY} = %s",
                                    (int(customer_id),)).rowcount)

        n = int(self.db.submit(write))
        if n:
            self.db.read(lambda c: c.execute(f"VACUUM {EVENT.name}"))
        return n

    def customers(self) -> list[int]:
        return [r[0] for r in self.db.read(lambda c: c.execute(
            f"SELECT DISTINCT {ENTITY_KEY} FROM {EVENT.name} ORDER BY 1").fetchall())]

    def rows(self) -> Iterator[tuple[Any, ...]]:
        """Every event in time order, properties as a dict (streamed: a server-side cursor)."""
        from nba.stores.postgres import connect

        conn = connect(self.dsn, "event log")
        try:
            with conn.cursor(name="events_rows") as cur:
                cur.execute(f"SELECT {', '.join(EVENT.names)} FROM {EVENT.name} ORDER BY timestamp, event_id")
                for r in cur:
                    yield (*r[:-1], json.loads(r[-1]))
        finally:
            conn.close()


def read_events_pg(dsn: str, *, types: Sequence[str] | None = None) -> pd.DataFrame:
    """`nba.stores.events.sqlite.read_events` of the Postgres event log."""
    from nba.stores.events.sqlite import events_frame

    log = PostgresEventLog(dsn)
    try:
        return events_frame(log.rows(), types)
    finally:
        log.close()
