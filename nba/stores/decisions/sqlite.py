"""The embedded decision log: `<log>/log.db` (SQLite, WAL, synchronous=FULL) and the Parquet
segments of batch runs under `<log>/batch/`; tables and segment schemas from `nba.records`.

The outbox (`nba.stores.outbox`) lives in the same file: a decision's outbox message is
inserted in the transaction of its decision rows (or, for a batch run, of its index), so a
decision that sends something is never logged without its message, nor a message without
its decision."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import sqlite3
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from nba.records import (
    BATCH_INDEX,
    CANDIDATE,
    DECISION,
    FILTERED,
    LOG_RECORDS,
    OUTBOX,
    OUTCOME,
    SEGMENT_RECORDS,
    Columns,
    DecisionTables,
    Record,
    arrow_schema,
)
from nba.stores.decisions import (
    BATCH_DIR,
    DB_FILE,
    AlreadyLogged,
    DecisionLogError,
    OutcomeResult,
    read_customer_decisions,
    record_outcome,
)
from nba.stores.outbox import OUTBOX_SCHEMA
from nba.stores.sqlite import SqliteFile, create_table, insert_sql

# a customer's decisions (the customer 360, erasure): one index insert per decision
_SCHEMA = ("".join(create_table(r) for r in LOG_RECORDS) + OUTBOX_SCHEMA
           + f"CREATE INDEX IF NOT EXISTS decisions_customer ON {DECISION.name} (customer_id);\n")
_INSERT = {r.name: insert_sql(r) for r in LOG_RECORDS}
_INSERT_OUTCOME = insert_sql(OUTCOME, conflict="IGNORE")
_INSERT_OUTBOX = insert_sql(OUTBOX)


def check_columns(columns: Sequence[str], record: Record = DECISION) -> None:
    """Refuse a record or a column `select` does not know (they are written into its SQL)."""
    if record not in (DECISION, CANDIDATE):
        raise DecisionLogError(f"select reads the {DECISION.name} or the {CANDIDATE.name}, not '{record.name}'")
    unknown = [c for c in columns if c not in record.tabular_names]
    if unknown:
        raise DecisionLogError(f"unknown {record.name} column(s) {unknown}; expected any of "
                               f"{list(record.tabular_names)}")


class DecisionLog:
    """The SQLite part of a decision log, safe to share between threads and processes.

    Each `append` is committed with `synchronous=FULL` before it returns (concurrent appends of
    a process share one transaction: `nba.stores.sqlite.SqliteFile`): once it has returned,
    neither a crash of the process nor of the machine loses it.
    """

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.path = self.folder / DB_FILE
        try:
            self.db = SqliteFile(self.path, synchronous="FULL", schema=_SCHEMA)
        except sqlite3.DatabaseError as exc:
            raise DecisionLogError(f"decision log {self.path}: {exc}") from None

    def close(self) -> None:
        self.db.close()

    def append(self, tables: DecisionTables) -> int:
        """Append the decisions of `tables` and their outbox messages in one transaction;
        returns how many decisions."""
        n = tables.n
        if not n:
            return 0
        dec = tables.decisions
        lists = {c: dec.pylist(c) for c in DECISION.tabular_names}
        lists["model_versions"] = [json.dumps(dict(tables.model_versions), sort_keys=True)] * n
        lists["features"] = _features_json(tables.features.values, n)
        dec_rows = list(zip(*(lists[c] for c in DECISION.names), strict=True))
        cand_rows = tables.candidates.rows()
        filt_rows = tables.filtered.rows()
        out_rows = tables.outbox.rows() if tables.outbox is not None else []

        def write(conn: sqlite3.Connection) -> int:
            conn.executemany(_INSERT[DECISION.name], dec_rows)
            conn.executemany(_INSERT[CANDIDATE.name], cand_rows)
            conn.executemany(_INSERT[FILTERED.name], filt_rows)
            if out_rows:
                conn.executemany(_INSERT_OUTBOX, out_rows)
            return n

        try:
            return self.db.submit(write)
        except sqlite3.IntegrityError as exc:
            if f"{DECISION.name}.decision_id" in str(exc):
                raise AlreadyLogged(lists["decision_id"], str(self.path)) from None
            raise

    def index_batch(self, batch_id: str, decision_ids: Sequence[str], customer_ids: Sequence[int], channel: str,
                    outbox: Sequence[Columns] = ()) -> int:
        """Record where a batch run's decisions are (their full records are in its segment), and
        the outbox messages of those that send an action, in one transaction, so `/respond`
        finds them and the delivery worker sends them."""
        rows = zip(decision_ids, customer_ids, [channel] * len(decision_ids), [batch_id] * len(decision_ids),
                   strict=True)
        out_rows = [r for part in outbox for r in part.rows()]

        def write(conn: sqlite3.Connection) -> None:
            conn.executemany(_INSERT[BATCH_INDEX.name], rows)
            if out_rows:
                conn.executemany(_INSERT_OUTBOX, out_rows)

        self.db.submit(write)
        return len(decision_ids)

    def append_outcome(self, decision_id: str, action_id: str, outcome: str, value: float,
                       responded_at: float) -> OutcomeResult:
        """Record an outcome once; a second report of the same (decision, action) is ignored.

        Raises `UnknownDecision` if the decision is not in the log.
        """
        def write(conn: sqlite3.Connection) -> OutcomeResult:
            row = conn.execute(f"SELECT customer_id, channel FROM {DECISION.name} WHERE decision_id = ?",
                               (decision_id,)).fetchone() or conn.execute(
                f"SELECT customer_id, channel FROM {BATCH_INDEX.name} WHERE decision_id = ?", (decision_id,)).fetchone()
            return record_outcome(conn, row, _INSERT_OUTCOME, decision_id, action_id, outcome, value, responded_at,
                                  mark="?")

        return self.db.submit(write)

    def count(self) -> int:
        return int(self.db.read(lambda conn: conn.execute(f"SELECT count(*) FROM {DECISION.name}").fetchone()[0]))

    def select(self, decision_ids: Sequence[str], columns: Sequence[str], *, record: Record = DECISION
               ) -> list[tuple]:
        """The named columns of these service decisions' rows of `record` (DECISION or CANDIDATE;
        ids not in the log are left out), for a summary of a known set (a replayed day's
        triggered decisions) without reading the log."""
        check_columns(columns, record)
        ids = list(dict.fromkeys(decision_ids))

        def read(conn: sqlite3.Connection) -> list[tuple]:
            rows: list[tuple] = []
            for start in range(0, len(ids), 500):
                part = ids[start:start + 500]
                rows += conn.execute(f"SELECT {', '.join(columns)} FROM {record.name} WHERE decision_id IN "
                                     f"({','.join('?' * len(part))})", part).fetchall()
            return rows

        return list(self.db.read(read))

    def has_customer(self, customer_id: int) -> bool:
        """Whether any decision (service or batch) of the customer is in the log."""
        cid = int(customer_id)
        return self.db.read(lambda conn: conn.execute(
            f"SELECT 1 FROM {DECISION.name} WHERE customer_id = ? UNION ALL "
            f"SELECT 1 FROM {BATCH_INDEX.name} WHERE customer_id = ? LIMIT 1", (cid, cid)).fetchone()) is not None

    def customer_decisions(self, customer_id: int, limit: int = 10) -> list[dict[str, Any]]:
        """The customer's latest service decisions, newest first: the shown action with its
        numbers, the outcome reported for it (or None) and the actions filtered with the stage
        and the rule. (Batch decisions: `customer_batch_decisions`.)"""
        return self.db.read(lambda conn: read_customer_decisions(conn, customer_id, limit, mark="?", seq="rowid"))

    def erase_customer(self, customer_id: int) -> int:
        """Pseudonymise the customer's decisions, irreversibly; returns the rows changed.

        The decisions stay (the hold-out comparison, off-policy values and reported KPIs are
        aggregates over every decision: deleting an erased customer's would move past figures,
        and not at random, since the hold-out is a hash of the customer id), but nothing in them
        points to the person any more: the customer id becomes a random negative number drawn
        for this erasure and kept nowhere, every decision id a new random one (in the
        candidates, filtered, outcomes and batch index too, so an id a channel received links to
        nothing), and the features the decision was made on are dropped. The Parquet segments of
        batch runs are rewritten the same way.
        """
        cid = int(customer_id)
        pseudo = -(secrets.randbelow(2**62) + 1)

        def write(conn: sqlite3.Connection) -> tuple[int, dict[str, dict[str, str]]]:
            conn.execute("PRAGMA secure_delete=ON")  # the old values are overwritten, not left in free space
            olds = [r[0] for r in conn.execute(f"SELECT decision_id FROM {DECISION.name} WHERE customer_id = ?", (cid,))]
            batch = conn.execute(f"SELECT decision_id, batch FROM {BATCH_INDEX.name} WHERE customer_id = ?",
                                 (cid,)).fetchall()
            if not olds and not batch:
                return 0, {}
            mapping = {old: os.urandom(16).hex() for old in [*olds, *(b[0] for b in batch)]}
            conn.execute("CREATE TEMP TABLE IF NOT EXISTS erase_map (old TEXT PRIMARY KEY, new TEXT NOT NULL)")
            conn.execute("DELETE FROM erase_map")
            conn.executemany("INSERT INTO erase_map VALUES (?, ?)", mapping.items())
            new = "(SELECT new FROM erase_map WHERE old = decision_id)"
            where = "decision_id IN (SELECT old FROM erase_map)"
            n = conn.execute(f"UPDATE {DECISION.name} SET customer_id = ?, features = '{{}}', decision_id = {new} "
                             f"WHERE {where}", (pseudo,)).rowcount
            n += conn.execute(f"UPDATE {BATCH_INDEX.name} SET customer_id = ?, decision_id = {new} WHERE {where}",
                              (pseudo,)).rowcount
            for record in (CANDIDATE, FILTERED, OUTCOME):
                n += conn.execute(f"UPDATE {record.name} SET decision_id = {new} WHERE {where}").rowcount
            conn.execute("DELETE FROM erase_map")
            segments: dict[str, dict[str, str]] = {}
            for old, seg in batch:
                segments.setdefault(seg, {})[old] = mapping[old]
            return n, segments

        n, segments = self.db.submit(write)
        for seg, mapping in segments.items():
            n += _pseudonymise_segment(self.folder / BATCH_DIR / seg, mapping, pseudo)
        # the write-ahead log still holds the old pages until a checkpoint copies and truncates it
        self.db.read(lambda conn: conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall())
        return n


    def compact(self, before: float) -> int:
        """Drop the features of the decisions made before `before` (epoch seconds), keeping the
        decisions and their outcomes, in `log.db` and the batch segments; returns the decisions
        compacted. The freed pages are overwritten (secure_delete) and the write-ahead log
        truncated, so the values are gone from the file, not only from the table."""
        def write(conn: sqlite3.Connection) -> int:
            conn.execute("PRAGMA secure_delete=ON")
            return conn.execute(f"UPDATE {DECISION.name} SET features = '{{}}' WHERE decided_at < ? "
                                "AND features != '{}'", (float(before),)).rowcount

        n = int(self.db.submit(write)) + compact_segments(self.folder, before)
        self.db.read(lambda conn: conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall())
        return n


def compact_segments(folder: Path, before: float) -> int:
    """Blank, in each batch segment's `features` table, the values of the decisions made before
    `before` (epoch seconds): their rows stay, all values missing, as a service decision's
    features read after compaction (and as erasure leaves them). Each file is replaced
    atomically. Returns the decisions compacted."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    root = Path(folder) / BATCH_DIR
    if not root.is_dir():
        return 0
    cutoff = pa.scalar(int(before * 1e6), pa.timestamp("us", tz="UTC"))
    n = 0
    for seg in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        dec = pq.read_table(seg / f"{DECISION.name}.parquet", columns=["decision_id", "decided_at"])
        old = pc.filter(dec.column("decision_id"), pc.less(dec.column("decided_at").cast(cutoff.type), cutoff))
        if not len(old):
            continue
        path = seg / "features.parquet"
        feats = pq.read_table(path)
        hit = pc.is_in(feats.column("decision_id").cast(pa.string()), value_set=old.cast(pa.string()))
        cols = {name: feats.column(name) for name in feats.column_names}
        blank = [name for name in feats.column_names if name != "decision_id"]
        # only the rows not blank yet count (compacting twice drops nothing more)
        blank_now = pa.array(np.zeros(len(feats), dtype=bool)) if not blank else pc.is_null(cols[blank[0]])
        for name in blank[1:]:
            blank_now = pc.and_(blank_now, pc.is_null(cols[name]))
        k = int(pc.sum(pc.and_(hit, pc.invert(blank_now))).as_py() or 0)
        if not k:
            continue
        for name in blank:
            cols[name] = pc.if_else(hit, pa.scalar(None, cols[name].type), cols[name])
        tmp = path.with_suffix(".parquet.tmp")
        pq.write_table(pa.Table.from_arrays(list(cols.values()), schema=feats.schema), tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        n += k
    return n


def _features_json(values: Mapping[str, Any], n: int) -> list[str]:
    """One JSON object per decision: feature -> value (numpy scalars as Python, NaN as null)."""
    names = [name for name in values if name != "decision_id"]
    cols = [values[name] for name in names]
    dumps = json.dumps
    return [dumps(dict(zip(names, [_plain(c[i]) for c in cols], strict=True))) for i in range(n)]


def _plain(x: Any) -> Any:
    if x.__class__ is float or x.__class__ is str or x is None:  # the common cases first
        return None if x != x else x
    if hasattr(x, "item"):
        x = x.item()
    return None if isinstance(x, float) and x != x else x


# --- batch segments -------------------------------------------------------------------


def write_batch(folder: Path, batch_id: str, tables: Mapping[str, Any]) -> Path:
    """Write one batch run's `decisions`, `candidates`, `filtered` and `features` tables (pyarrow
    Tables or DataFrames) as Parquet under `<log>/batch/<batch_id>/`, atomically: the folder appears
    complete or not at all; then `DecisionLog.index_batch` records its decision ids. Each table
    is checked against (and cast to) its record's Arrow schema."""
    import pyarrow.parquet as pq

    final = Path(folder) / BATCH_DIR / batch_id
    if final.exists():
        raise DecisionLogError(f"batch {batch_id} is already in the decision log {folder}")
    conformed = {r.name: conform(r, tables[r.name]) for r in SEGMENT_RECORDS}
    tmp = final.parent / f".{batch_id}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        for name, table in conformed.items():
            # dictionary-encode the repeated strings, not the unique decision ids
            pq.write_table(table, tmp / f"{name}.parquet",
                           use_dictionary=[f.name for f in table.schema if f.name != "decision_id"])
            with open(tmp / f"{name}.parquet", "rb") as f:
                os.fsync(f.fileno())
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return final


def _pseudonymise_segment(folder: Path, mapping: Mapping[str, str], pseudo: int) -> int:
    """Rewrite one batch segment with the decisions of `mapping` under their new ids, the
    customer id `pseudo` and no features (each file replaced atomically)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    olds = pa.array(list(mapping), pa.string())
    news = pa.array(list(mapping.values()), pa.string())
    n = 0
    for record in SEGMENT_RECORDS:
        path = folder / f"{record.name}.parquet"
        table = pq.read_table(path)
        ids = table.column("decision_id").cast(pa.string())
        hit = pc.is_in(ids, value_set=olds)
        if not pc.any(hit).as_py():
            continue
        n += int(pc.sum(hit).as_py())
        where = pc.index_in(ids, value_set=olds)
        replaced = pc.if_else(hit, pc.take(news, where), ids)
        cols = {name: table.column(name) for name in table.column_names}
        cols["decision_id"] = replaced.cast(table.schema.field("decision_id").type)
        if record is DECISION:
            cid = table.column("customer_id")
            cols["customer_id"] = pc.if_else(hit, pa.scalar(pseudo, cid.type), cid)
        if record.name == "features":
            for name in table.column_names:
                if name != "decision_id":
                    col = table.column(name)
                    cols[name] = pc.if_else(hit, pa.scalar(None, col.type), col)
        out = pa.Table.from_arrays(list(cols.values()), schema=table.schema)
        tmp = path.with_suffix(".parquet.tmp")
        pq.write_table(out, tmp)
        os.replace(tmp, path)
    return n


def conform(record: Any, table: Any) -> Any:
    """`table` (Arrow or pandas) under the record's Arrow schema: its declared columns in order,
    cast where the types differ (an open record keeps its own columns after them); a missing or
    undeclared column is a `DecisionLogError`."""
    import pyarrow as pa

    if not isinstance(table, pa.Table):
        table = pa.Table.from_pandas(table, preserve_index=False)
    names = list(record.tabular_names)
    missing = [c for c in names if c not in table.column_names]
    extra = [c for c in table.column_names if c not in names]
    if missing or (extra and not record.open):
        raise DecisionLogError(f"batch table '{record.name}': missing column(s) {missing}, undeclared {extra}; "
                               f"expected {names}")
    own = [table.schema.field(c) for c in extra]
    schema = arrow_schema(record, own).with_metadata(table.schema.metadata)
    table = table.select([*names, *extra])
    if table.schema.equals(schema, check_metadata=False):
        return table
    try:
        return table.cast(schema)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
        raise DecisionLogError(f"batch table '{record.name}': {exc}") from None
