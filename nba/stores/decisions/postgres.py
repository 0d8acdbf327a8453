"""The production decision log: the row tables (decisions, candidates, filtered, batch index,
outcomes) and the outbox in Postgres (`nba.stores.postgres`: the DDL derived from
`nba.records`, versioned by `nba stores migrate`), the Parquet segments of batch runs in the
log folder as in the embedded profile.

A request's decision rows and its outbox message go in one transaction, group-committed with
the other requests' (one `COPY` per table for the whole group); `append` returns once that
transaction is committed, so an answer never names a decision that is not in the log."""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from nba.records import (
    BATCH_INDEX,
    CANDIDATE,
    DECISION,
    FILTERED,
    OUTBOX,
    OUTCOME,
    Columns,
    DecisionTables,
    Record,
)
from nba.stores.decisions import (
    BATCH_DIR,
    AlreadyLogged,
    DecisionLogError,
    OutcomeResult,
    read_customer_decisions,
    record_outcome,
)
from nba.stores.postgres import PgDatabase, array_text, copy_sql, insert_sql, unnest_sql

COMPONENT = "decision log"
_COPY = {r.name: copy_sql(r) for r in (DECISION, CANDIDATE, FILTERED, BATCH_INDEX, OUTBOX)}
_APPEND = {r.name: unnest_sql(r) for r in (DECISION, CANDIDATE, FILTERED, OUTBOX)}
_INSERT_OUTCOME = insert_sql(OUTCOME, conflict="nothing")


class PostgresDecisionLog:
    """The decision log of the production profile, safe to share between threads (and, being a
    server, between processes and machines)."""

    def __init__(self, dsn: str, folder: Path, *, component: str = COMPONENT):
        self.folder = Path(folder)  # the batch segments
        self.dsn = dsn
        self.db = PgDatabase(dsn, component)
        self.path = self.db.address  # readiness names where the log is (no password)

    def close(self) -> None:
        self.db.close()

    def append(self, tables: DecisionTables) -> int:
        from nba.stores.decisions.sqlite import _features_json

        n = tables.n
        if not n:
            return 0
        dec = {**tables.decisions.values,
               "model_versions": [json.dumps(dict(tables.model_versions), sort_keys=True)] * n,
               "features": _features_json(tables.features.values, n)}
        # encoded here, in the request's thread: the group's commit only sends the bytes
        copies = {_APPEND[DECISION.name]: array_text(DECISION, dec),
                  _APPEND[CANDIDATE.name]: array_text(CANDIDATE, tables.candidates.values),
                  _APPEND[FILTERED.name]: array_text(FILTERED, tables.filtered.values)}
        if tables.outbox is not None and tables.outbox.n:
            copies[_APPEND[OUTBOX.name]] = array_text(OUTBOX, tables.outbox.values)
        import psycopg

        try:
            return int(self.db.submit(copy=copies, result=n))
        except psycopg.errors.UniqueViolation as exc:
            if exc.diag.table_name == DECISION.name:
                raise AlreadyLogged(list(tables.decisions.pylist("decision_id")), self.path) from None
            raise

    def index_batch(self, batch_id: str, decision_ids: Sequence[str], customer_ids: Sequence[int], channel: str,
                    outbox: Sequence[Columns] = ()) -> int:
        rows = list(zip(decision_ids, [int(c) for c in customer_ids], [channel] * len(decision_ids),
                        [batch_id] * len(decision_ids), strict=True))
        copies = {_COPY[BATCH_INDEX.name]: rows,
                  _COPY[OUTBOX.name]: [r for part in outbox for r in part.rows()]}
        self.db.submit(copy=copies)
        return len(decision_ids)

    def append_outcome(self, decision_id: str, action_id: str, outcome: str, value: float,
                       responded_at: float) -> OutcomeResult:
        def write(conn: Any) -> OutcomeResult:
            row = conn.execute(f"SELECT customer_id, channel FROM {DECISION.name} WHERE decision_id = %s "
                               f"UNION ALL SELECT customer_id, channel FROM {BATCH_INDEX.name} WHERE decision_id = %s "
                               "LIMIT 1", (decision_id, decision_id)).fetchone()
            return record_outcome(conn, row, _INSERT_OUTCOME, decision_id, action_id, outcome, value, responded_at,
                                  mark="%s")

        return self.db.submit(write)

    def count(self) -> int:
        return int(self.db.read(lambda c: c.execute(f"SELECT count(*) FROM {DECISION.name}").fetchone()[0]))

    def select(self, decision_ids: Sequence[str], columns: Sequence[str], *, record: Record = DECISION
               ) -> list[tuple]:
        from nba.stores.decisions.sqlite import check_columns

        check_columns(columns, record)
        ids = list(dict.fromkeys(decision_ids))
        return list(self.db.read(lambda conn: conn.execute(
            f"SELECT {', '.join(columns)} FROM {record.name} WHERE decision_id = ANY(%s)", (ids,)).fetchall()))

    def has_customer(self, customer_id: int) -> bool:
        cid = int(customer_id)
        return self.db.read(lambda conn: conn.execute(
            f"SELECT 1 FROM {DECISION.name} WHERE customer_id = %s UNION ALL "
            f"SELECT 1 FROM {BATCH_INDEX.name} WHERE customer_id = %s LIMIT 1", (cid, cid)).fetchone()) is not None

    def customer_decisions(self, customer_id: int, limit: int = 10) -> list[dict[str, Any]]:
        return self.db.read(lambda conn: read_customer_decisions(conn, customer_id, limit, mark="%s", seq="row_seq"))

    def erase_customer(self, customer_id: int) -> int:
        """As `nba.stores.decisions.sqlite.DecisionLog.erase_customer`: the customer's decisions
        pseudonymised irreversibly (a random negative customer id, new decision ids everywhere,
        no features), the batch segments rewritten. The old row versions are removed by a
        VACUUM of the tables touched (Postgres keeps them until then)."""
        from nba.stores.decisions.sqlite import _pseudonymise_segment

        cid = int(customer_id)
        pseudo = -(secrets.randbelow(2**62) + 1)

        def write(conn: Any) -> tuple[int, dict[str, dict[str, str]]]:
            olds = [r[0] for r in conn.execute(f"SELECT decision_id FROM {DECISION.name} WHERE customer_id = %s",
                                               (cid,))]
            batch = conn.execute(f"SELECT decision_id, batch FROM {BATCH_INDEX.name} WHERE customer_id = %s",
                                 (cid,)).fetchall()
            if not olds and not batch:
                return 0, {}
            mapping = {old: os.urandom(16).hex() for old in [*olds, *(b[0] for b in batch)]}
            conn.execute("CREATE TEMP TABLE IF NOT EXISTS erase_map (old text PRIMARY KEY, new text NOT NULL) "
                         "ON COMMIT DELETE ROWS")
            with conn.cursor() as cur, cur.copy("COPY erase_map (old, new) FROM STDIN") as cp:
                for item in mapping.items():
                    cp.write_row(item)
            n = conn.execute(f"UPDATE {DECISION.name} t SET customer_id = %s, features = '{{}}', decision_id = m.new "
                             "FROM erase_map m WHERE t.decision_id = m.old", (pseudo,)).rowcount
            n += conn.execute(f"UPDATE {BATCH_INDEX.name} t SET customer_id = %s, decision_id = m.new "
                              "FROM erase_map m WHERE t.decision_id = m.old", (pseudo,)).rowcount
            for record in (CANDIDATE, FILTERED, OUTCOME):
                n += conn.execute(f"UPDATE {record.name} t SET decision_id = m.new FROM erase_map m "
                                  "WHERE t.decision_id = m.old").rowcount
            segments: dict[str, dict[str, str]] = {}
            for old, seg in batch:
                segments.setdefault(seg, {})[old] = mapping[old]
            return n, segments

        n, segments = self.db.submit(write)
        for seg, mapping in segments.items():
            n += _pseudonymise_segment(self.folder / BATCH_DIR / seg, mapping, pseudo)
        if n:
            self.vacuum((DECISION, BATCH_INDEX, CANDIDATE, FILTERED, OUTCOME))
        return n

    def compact(self, before: float) -> int:
        """Drop the features of the decisions made before `before` (epoch seconds), keeping the
        decisions and their outcomes; the batch segments too. Returns the decisions compacted."""
        from nba.stores.decisions.sqlite import compact_segments

        n = int(self.db.submit(lambda conn: conn.execute(
            f"UPDATE {DECISION.name} SET features = '{{}}' WHERE decided_at < %s AND features <> '{{}}'::jsonb",
            (float(before),)).rowcount))
        n += compact_segments(self.folder, before)
        if n:
            self.vacuum((DECISION,))
        return n

    def vacuum(self, records: Sequence[Any]) -> None:
        self.db.read(lambda conn: [conn.execute(f"VACUUM {r.name}") for r in records])

    def rows(self, record: Any, names: Sequence[str]) -> list[tuple]:
        return self.db.read(lambda conn: conn.execute(
            f"SELECT {', '.join(names)} FROM {record.name}").fetchall())


def read_rows(dsn: str, names: Sequence[str], with_features: bool) -> dict[str, Any]:
    """The row tables of the Postgres log as frames (not yet typed): what `read_log` merges
    with the batch segments."""
    import pandas as pd

    from nba.stores.postgres import connect, order_by

    conn = connect(dsn, COMPONENT, autocommit=True)
    try:
        if conn.execute("SELECT to_regclass(%s) IS NULL", (DECISION.name,)).fetchone()[0]:
            raise DecisionLogError(f"decision log at {_redacted(dsn)} has no tables: run `nba stores migrate`")
        with conn.transaction():  # one snapshot for every table
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")

            def select(record: Any, cols: Sequence[str] | None = None) -> pd.DataFrame:
                cols = list(cols or record.tabular_names)
                cur = conn.execute(f"SELECT {', '.join(cols)} FROM {record.name}{order_by(record)}")
                return pd.DataFrame(cur.fetchall(), columns=cols)

            out: dict[str, Any] = {"decisions": select(DECISION, names), "candidates": select(CANDIDATE),
                                   "filtered": select(FILTERED), "outcomes": select(OUTCOME)}
            if with_features:
                raw = conn.execute(f"SELECT decision_id, features FROM {DECISION.name} ORDER BY row_seq").fetchall()
                feats = pd.DataFrame([json.loads(f) for _, f in raw])
                feats.insert(0, "decision_id", [d for d, _ in raw])
                out["features"] = feats
    finally:
        conn.close()
    return out


def _redacted(dsn: str) -> str:
    from nba.stores.postgres import redact

    return redact(dsn)
