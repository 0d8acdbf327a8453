"""The embedded event log: one SQLite file (WAL, synchronous=FULL), table from `nba.records.EVENT`,
an index on (customer, time) for the per-customer histories the streaming features come from."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nba.records import EVENT, TRIGGER_PENDING
from nba.schemas import ENTITY_KEY
from nba.stores.events import AppendResult, EventLogError, LoggedEvent, pending_event
from nba.stores.sqlite import SqliteFile, create_table, insert_sql

if TYPE_CHECKING:
    import pandas as pd

_SCHEMA = create_table(EVENT) + (f"CREATE INDEX IF NOT EXISTS {EVENT.name}_by_customer "
                                 f"ON {EVENT.name} ({ENTITY_KEY}, timestamp);\n") + create_table(TRIGGER_PENDING)
_INSERT = insert_sql(EVENT)
_PENDING = insert_sql(TRIGGER_PENDING)
_EVENT_COLS = f"e.event_id, e.{ENTITY_KEY}, e.type, e.timestamp, e.properties"
_CHUNK = 500  # ids per IN (...) (SQLite's limit of bound parameters is far above)


class EventLog:
    """The SQLite event log, safe to share between threads and processes: an `append` has been
    committed with `synchronous=FULL` when it returns (nothing acknowledged is lost)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        try:
            self.db = SqliteFile(self.path, synchronous="FULL", schema=_SCHEMA)
        except sqlite3.DatabaseError as exc:
            raise EventLogError(f"event log {self.path}: {exc}") from None

    def close(self) -> None:
        self.db.close()

    def append(self, events: Sequence[Mapping[str, Any]], ingested_at: float, *,
               pending: bool = False, triggered: Sequence[str] = ()) -> AppendResult:
        done = list(dict.fromkeys(triggered))
        if not events:
            if done:
                self.triggered(done)
            return AppendResult((), ())
        rows = [(e["event_id"], int(e["customer_id"]), e["type"], float(e["timestamp"]),
                 int(bool(e.get("known_customer", True))), float(ingested_at),
                 json.dumps(e["properties"], sort_keys=True, separators=(",", ":"))) for e in events]
        ids = [r[0] for r in rows]

        def write(conn: sqlite3.Connection) -> AppendResult:
            held: set[str] = set()
            unique = list(dict.fromkeys(ids))
            for part in _chunks(unique):
                held.update(r[0] for r in conn.execute(
                    f"SELECT event_id FROM {EVENT.name} WHERE event_id IN ({','.join('?' * len(part))})", part))
            new: list[str] = []
            dup: list[str] = []
            fresh = []
            seen: set[str] = set()
            for r in rows:
                if r[0] in held or r[0] in seen:
                    dup.append(r[0])
                    continue
                seen.add(r[0])
                new.append(r[0])
                fresh.append(r)
            conn.executemany(_INSERT, fresh)
            if pending:
                conn.executemany(_PENDING, [(r[0], r[1], r[5]) for r in fresh])
            _delete_pending(conn, done)
            return AppendResult(tuple(new), tuple(dup))

        return self.db.submit(write)

    def pending(self, event_ids: Sequence[str] | None = None, *, before: float | None = None,
                limit: int = 10_000) -> list[dict[str, Any]]:
        join = (f"SELECT {_EVENT_COLS} FROM {TRIGGER_PENDING.name} p JOIN {EVENT.name} e "
                "ON e.event_id = p.event_id")

        def read(conn: sqlite3.Connection) -> list[tuple]:
            if event_ids is None:
                return conn.execute(f"{join} WHERE p.ingested_at < ? ORDER BY e.timestamp, e.event_id LIMIT ?",
                                    (float("inf") if before is None else float(before), int(limit))).fetchall()
            rows: list[tuple] = []
            for part in _chunks(list(dict.fromkeys(event_ids))):
                rows += conn.execute(f"{join} WHERE p.event_id IN ({','.join('?' * len(part))})", part).fetchall()
            return sorted(rows, key=lambda r: (r[3], r[0]))

        return [pending_event(r) for r in self.db.read(read)]

    def triggered(self, event_ids: Sequence[str]) -> int:
        ids = list(dict.fromkeys(event_ids))
        if not ids:
            return 0

        return int(self.db.submit(lambda conn: _delete_pending(conn, ids)))

    def history(self, customer_ids: Sequence[int], since: float | None = None) -> dict[int, list[LoggedEvent]]:
        wanted = sorted({int(c) for c in customer_ids})
        out: dict[int, list[LoggedEvent]] = {c: [] for c in wanted}
        loads = json.loads

        def read(conn: sqlite3.Connection) -> None:
            for part in _chunks(wanted):
                sql = (f"SELECT {ENTITY_KEY}, type, timestamp, properties FROM {EVENT.name} "
                       f"WHERE {ENTITY_KEY} IN ({','.join('?' * len(part))})"
                       + (" AND timestamp >= ?" if since is not None else "")
                       + f" ORDER BY {ENTITY_KEY}, timestamp, event_id")
                args = [*part, since] if since is not None else part
                for cid, typ, ts, props in conn.execute(sql, args):
                    out[cid].append(LoggedEvent(typ, ts, loads(props)))

        self.db.read(read)
        return out

    def count(self) -> int:
        return int(self.db.read(lambda c: c.execute(f"SELECT count(*) FROM {EVENT.name}").fetchone()[0]))

    def count_unknown(self) -> int:
        """Events whose customer the feature store did not know (flagged)."""
        return int(self.db.read(lambda c: c.execute(
            f"SELECT count(*) FROM {EVENT.name} WHERE known_customer = 0").fetchone()[0]))

    def erase_customer(self, customer_id: int) -> int:
        def write(conn: sqlite3.Connection) -> int:
            conn.execute(f"DELETE FROM {TRIGGER_PENDING.name} WHERE {ENTITY_KEY} = ?", (int(customer_id),))
            return int(conn.execute(f"DELETE FROM {EVENT.name} WHERE {ENTITY_KEY} = ?", (int(customer_id),)).rowcount)

        return int(self.db.submit(write))

    def customers(self) -> list[int]:
        return [r[0] for r in self.db.read(lambda c: c.execute(
            f"SELECT DISTINCT {ENTITY_KEY} FROM {EVENT.name} ORDER BY 1").fetchall())]

    def rows(self) -> Iterator[tuple[Any, ...]]:
        """Every event in time order: (event_id, customer_id, type, timestamp, known_customer,
        ingested_at, properties as a dict)."""
        conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True)
        try:
            for r in conn.execute(f"SELECT {', '.join(EVENT.names)} FROM {EVENT.name} ORDER BY timestamp, event_id"):
                yield (*r[:-1], json.loads(r[-1]))
        finally:
            conn.close()


def _delete_pending(conn: sqlite3.Connection, event_ids: Sequence[str]) -> int:
    return sum(conn.execute(f"DELETE FROM {TRIGGER_PENDING.name} WHERE event_id IN ({','.join('?' * len(part))})",
                            part).rowcount for part in _chunks(event_ids))


def _chunks(items: Sequence[Any]) -> Iterator[Sequence[Any]]:
    for i in range(0, len(items), _CHUNK):
        yield items[i:i + _CHUNK]


def read_events(path: Path, *, types: Sequence[str] | None = None) -> pd.DataFrame:
    """The event log as a frame: the record's tabular columns typed by the declaration (times
    as UTC timestamps), then one column per property (flattened, as contract 1 lays a file out;
    a `timestamp` property stays epoch seconds). `types` keeps only those event types."""

    path = Path(path)
    if not path.is_file():
        raise EventLogError(f"event log {path} does not exist: no event has been ingested there")
    log = EventLog.__new__(EventLog)
    log.path = path
    return events_frame(log.rows(), types)


def events_frame(rows: Iterator[tuple[Any, ...]], types: Sequence[str] | None = None) -> pd.DataFrame:
    """The frame of `read_events` from a backend's `rows()`."""
    import pandas as pd

    wanted = set(types) if types else None
    base: list[tuple[Any, ...]] = []
    props: list[Mapping[str, Any]] = []
    for r in rows:
        if wanted is not None and r[2] not in wanted:
            continue
        base.append(r[:-1])
        props.append(r[-1])
    frame = pd.DataFrame(base, columns=list(EVENT.tabular_names))
    from nba.stores.decisions import typed

    frame = typed(frame, EVENT) if len(frame) else frame.astype(EVENT.dtypes)
    flat = pd.DataFrame(props, index=frame.index)
    return pd.concat([frame, flat], axis=1) if len(flat.columns) else frame
