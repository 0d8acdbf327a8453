"""The decision log: every decision and every outcome, appended durably, read as frames.

A log is a folder (the embedded backend, `nba.stores.decisions.sqlite`):

    <log>/log.db                   SQLite in WAL mode, synchronous=FULL: the service's decisions
                                   (one transaction per request, committed before the response
                                   returns) and every outcome
    <log>/batch/<batch_id>/*.parquet
                                   the decisions of one `nba decide-batch` run, written when the
                                   run completes (a crashed run leaves no partial segment); an
                                   index of their ids goes to log.db (`batch_index`), so outcomes
                                   can be reported against them like any other

The production profile keeps the `log.db` tables (and the outbox) in Postgres instead
(`nba.stores.decisions.postgres`, schema by `nba stores migrate`), the batch segments in the
folder as here; `open_decision_log(settings)` opens the profile's, `read_log(folder, dsn=...)`
reads either.

Both hold the same records (`nba.records`: DECISION, CANDIDATE, FILTERED, FEATURES), built by
one function (`nba.decisioning.tables.decision_tables`):

* `decisions`: one row per decision.
* `candidates`: one row per decision and action left after rules and contact policies, with
  its propensity, value, lever, priority and uplift and `rank` (1..k if shown, 0 if not): a
  counterfactual policy can only choose among these (off-policy evaluation).
* `filtered`: one row per decision and action removed, with the `stage` and `rule`.
* `features`: the feature values the decision was made on (drift monitoring).

The outbox of outbound messages (`nba.records.OUTBOX`, `RECEIPT`; `nba.stores.outbox`) lives
in `log.db` too, written in the transaction of the decisions it sends.

Outcomes (`nba.records.OUTCOME`) live in `log.db` only, one row per (decision, action): a
duplicate report is ignored, so `/respond` is idempotent.

`read_log` returns the tables as DataFrames typed by the declarations; evaluation reads
nothing else. `DecisionLogStore` is what the engine needs of a backend.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from nba.errors import NbaError, NotWritten
from nba.records import CANDIDATE, DECISION, FILTERED, OUTCOME, Columns, DecisionTables, Record

if TYPE_CHECKING:
    import pandas as pd

DB_FILE = "log.db"
BATCH_DIR = "batch"


class DecisionLogError(NbaError):
    """The decision log cannot be opened or read, or a record is malformed."""


class UnknownDecision(DecisionLogError):
    """An outcome names a decision id the log does not hold."""


class AlreadyLogged(NotWritten):
    """An append names a decision id the log already holds: nothing of the append was written.
    A trigger's decision has an id derived from its event, so two processes that run the same
    event's triggers at once make the same id, and the second one's append is refused."""

    def __init__(self, decision_ids: Sequence[str], where: str):
        shown = ", ".join(list(decision_ids)[:3]) + (", ..." if len(decision_ids) > 3 else "")
        super().__init__(f"decision log {where}: one of the decisions of this append ({shown}) is already logged; "
                         "nothing of it was written")
        self.decision_ids = list(decision_ids)


@dataclass(frozen=True)
class OutcomeResult:
    decision_id: str
    action_id: str
    customer_id: int
    channel: str
    recorded: bool  # False: the same (decision, action) was already reported (idempotent)
    outcome: str
    value: float
    responded_at: float


class DecisionLogStore(Protocol):
    """What the engine and the batch path need of a decision log backend."""

    @property
    def path(self) -> Path | str:
        """Where it is (readiness names it): a folder, or a Postgres DSN without its password."""
        ...

    def append(self, tables: DecisionTables) -> int:
        """Append decisions durably, in one transaction; returns how many."""
        ...

    def index_batch(self, batch_id: str, decision_ids: Sequence[str], customer_ids: Sequence[int],
                    channel: str, outbox: Sequence[Columns] = ()) -> int:
        """Index a batch run's decisions and append their outbox messages, in one transaction."""
        ...

    def append_outcome(self, decision_id: str, action_id: str, outcome: str, value: float,
                       responded_at: float) -> OutcomeResult: ...

    def count(self) -> int: ...

    def select(self, decision_ids: Sequence[str], columns: Sequence[str], *, record: Record = DECISION
               ) -> list[tuple]:
        """The named columns of these decisions' rows of `record` (DECISION, or CANDIDATE: each
        decision's actions; ids not in the log are left out)."""
        ...

    def compact(self, before: float) -> int:
        """Drop the features of the decisions made before `before` (retention); returns how many."""
        ...

    def close(self) -> None: ...


# --- reading --------------------------------------------------------------------------


@dataclass
class LogFrames:
    """The decision log as DataFrames (see the module docstring)."""

    decisions: pd.DataFrame
    candidates: pd.DataFrame
    filtered: pd.DataFrame
    outcomes: pd.DataFrame
    features: pd.DataFrame | None  # decision_id + one column per feature (with_features=True)

    def joined(self) -> pd.DataFrame:
        """One row per decision with the outcome of its shown action: `responded` (0/1),
        `accepted` (0/1), `outcome` (or missing) and `outcome_value` (0 without an outcome)."""
        out = self.outcomes.rename(columns={"value": "outcome_value"})
        frame = self.decisions.merge(out[["decision_id", "action_id", "outcome", "outcome_value"]],
                                     on=["decision_id", "action_id"], how="left")
        frame["responded"] = frame["outcome"].notna().astype("int64")
        frame["accepted"] = (frame["outcome"] == "accepted").astype("int64")
        frame["outcome_value"] = frame["outcome_value"].fillna(0.0)
        return frame


def read_log(folder: Path, *, with_features: bool = False, decision_columns: Sequence[str] | None = None,
             dsn: str | None = None) -> LogFrames:
    """Read every decision (service and batch) and outcome of the log in `folder`; with `dsn`,
    the row tables are read from that Postgres database (the production profile) and the
    batch segments from `folder`. (`log_location(settings)` gives both for a profile.) A
    decision whose features were dropped (retention, erasure) has a row of missing values in
    `features`."""
    import pandas as pd

    folder = Path(folder)
    if dsn is None and not folder.is_dir():
        raise DecisionLogError(f"decision log {folder} does not exist: no decision has been logged there")
    every = DECISION.tabular_names
    cols = list(decision_columns) if decision_columns else list(every)
    unknown = [c for c in cols if c not in every]
    if unknown:
        raise DecisionLogError(f"unknown decision column(s) {unknown}; expected any of {list(every)}")
    parts: dict[str, list[pd.DataFrame]] = {"decisions": [], "candidates": [], "filtered": [], "features": []}
    outcomes = empty_frame(OUTCOME)
    db = folder / DB_FILE
    if dsn is not None:
        from nba.stores.decisions.postgres import read_rows

        rows = read_rows(dsn, cols, with_features)
        for name in ("decisions", "candidates", "filtered", *(("features",) if with_features else ())):
            parts[name].append(rows[name])
        outcomes = rows["outcomes"]
    elif db.is_file():
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        try:
            def select(record: Record, names: Sequence[str] | None = None) -> pd.DataFrame:
                return pd.read_sql_query(f"SELECT {','.join(names or record.tabular_names)} FROM {record.name}", conn)

            parts["decisions"].append(select(DECISION, cols))
            parts["candidates"].append(select(CANDIDATE))
            parts["filtered"].append(select(FILTERED))
            outcomes = select(OUTCOME)
            if with_features:
                raw = pd.read_sql_query(f"SELECT decision_id, features FROM {DECISION.name}", conn)
                feats = pd.DataFrame([json.loads(f) for f in raw["features"]], index=raw.index)
                feats.insert(0, "decision_id", raw["decision_id"])
                parts["features"].append(feats)
        finally:
            conn.close()
    batch = folder / BATCH_DIR
    for seg in sorted(batch.glob("*/")) if batch.is_dir() else []:
        if seg.name.startswith("."):
            continue
        parts["decisions"].append(pd.read_parquet(seg / f"{DECISION.name}.parquet", columns=cols))
        parts["candidates"].append(pd.read_parquet(seg / f"{CANDIDATE.name}.parquet"))
        parts["filtered"].append(pd.read_parquet(seg / f"{FILTERED.name}.parquet"))
        if with_features:
            parts["features"].append(pd.read_parquet(seg / "features.parquet"))
    decisions = concat(parts["decisions"], DECISION, cols)
    candidates = concat(parts["candidates"], CANDIDATE)
    filtered = concat(parts["filtered"], FILTERED)
    outcomes = typed(outcomes, OUTCOME)
    features = None
    if with_features:
        features = pd.concat(parts["features"], ignore_index=True) if parts["features"] else pd.DataFrame(
            {"decision_id": pd.Series(dtype="string")})
    return LogFrames(decisions, candidates, filtered, outcomes, features)


_CUSTOMER_DECISION_COLUMNS = ("decision_id", "channel", "decided_at", "experiment_group", "action_id", "probability",
                              "propensity", "value", "lever", "priority", "n_candidates", "source", "catalog_version")


def read_customer_decisions(conn: Any, customer_id: int, limit: int, *, mark: str, seq: str) -> list[dict[str, Any]]:
    """A customer's latest service decisions, newest first, with their outcomes and filtered
    actions, on a DB-API connection of either backend (`mark`: its parameter marker, `?` or
    `%s`; `seq`: the column that orders rows inserted in one moment, `rowid` or `row_seq`)."""
    cols = _CUSTOMER_DECISION_COLUMNS
    rows = conn.execute(f"SELECT {', '.join(cols)} FROM {DECISION.name} WHERE customer_id = {mark} "
                        f"ORDER BY decided_at DESC, {seq} DESC LIMIT {mark}", (int(customer_id), int(limit))).fetchall()
    out = []
    for r in rows:
        d = dict(zip(cols, r, strict=True))
        o = conn.execute(f"SELECT action_id, outcome, value, responded_at FROM {OUTCOME.name} "
                         f"WHERE decision_id = {mark}", (d["decision_id"],)).fetchall()
        d["outcomes"] = [{"action_id": a, "outcome": oc, "value": v, "responded_at": t} for a, oc, v, t in o]
        d["filtered"] = [{"action_id": a, "stage": st, "rule": ru} for a, st, ru in conn.execute(
            f"SELECT action_id, stage, rule FROM {FILTERED.name} WHERE decision_id = {mark}",
            (d["decision_id"],)).fetchall()]
        out.append(d)
    return out


def record_outcome(conn: Any, found: tuple | None, insert: str, decision_id: str, action_id: str, outcome: str,
                   value: float, responded_at: float, *, mark: str) -> OutcomeResult:
    """Record an outcome once on either backend: `found` is the decision's (customer_id,
    channel) or None; `insert` the backend's insert-or-ignore; `mark` its parameter marker.
    A second report of the same (decision, action) keeps the first."""
    if found is None:
        raise UnknownDecision(f"decision_id '{decision_id}' is not in the decision log")
    cur = conn.execute(insert, (decision_id, action_id, outcome, float(value), float(responded_at)))
    recorded = cur.rowcount == 1
    kept = (outcome, value, responded_at) if recorded else conn.execute(
        f"SELECT outcome, value, responded_at FROM {OUTCOME.name} WHERE decision_id = {mark} AND action_id = {mark}",
        (decision_id, action_id)).fetchone()
    return OutcomeResult(decision_id, action_id, int(found[0]), str(found[1]), recorded, kept[0],
                         float(kept[1]), float(kept[2]))


def log_location(settings: Any) -> tuple[Path, str | None]:
    """Where the profile's decision log is: its folder (batch segments; the SQLite file in the
    embedded profile) and the Postgres DSN of its row tables (None: SQLite). As
    `read_log(folder, dsn=dsn)` takes them."""
    return settings.decision_log_dir, settings.decision_log_dsn if settings.log_backend == "postgres" else None


def open_decision_log(settings: Any) -> DecisionLogStore:
    """The profile's decision log: SQLite in the log folder (embedded), Postgres (production;
    refused at start, in one line, if the database does not answer or is not migrated)."""
    folder, dsn = log_location(settings)
    if dsn is None:
        from nba.stores.decisions.sqlite import DecisionLog

        return DecisionLog(folder)
    from nba.stores.decisions.postgres import PostgresDecisionLog

    return PostgresDecisionLog(dsn, folder)


def empty_frame(record: Record, names: Sequence[str] | None = None) -> pd.DataFrame:
    import pandas as pd

    dtypes = record.dtypes
    return pd.DataFrame({c: pd.Series(dtype=dtypes[c]) for c in names or record.tabular_names})


def concat(frames: list[pd.DataFrame], record: Record, names: Sequence[str] | None = None) -> pd.DataFrame:
    """The frames (SQLite rows, Parquet segments) as one, with the record's columns and dtypes."""
    import pandas as pd

    names = list(names or record.tabular_names)
    # each part typed first: SQLite gives epoch seconds, Parquet timestamps
    frames = [typed(f[names].copy(), record) for f in frames if len(f)]
    if not frames:
        return empty_frame(record, names)
    return pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]


def typed(frame: pd.DataFrame, record: Record) -> pd.DataFrame:
    """The record's dtypes: epoch seconds (SQLite) or timestamps of any unit (Parquet) -> UTC
    nanoseconds; text -> `string`; numbers as declared."""
    import pandas as pd

    dtypes: Mapping[str, str] = record.dtypes
    for col in frame.columns:
        want = dtypes.get(col)
        if want is None:
            continue
        s = frame[col]
        if col in record.time_columns:
            s = pd.to_datetime(s.astype("float64"), unit="s", utc=True) if pd.api.types.is_numeric_dtype(s) \
                else pd.to_datetime(s, utc=True)
            frame[col] = s.dt.as_unit("ns")
        elif str(s.dtype) != want:
            frame[col] = s.astype(want)
    return frame
