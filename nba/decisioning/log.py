"""The decision log: every decision and every outcome, appended durably, read as frames.

A log is a folder:

    <log>/log.db                   SQLite in WAL mode, synchronous=FULL: the service's decisions
                                   (one transaction per request, committed before the response
                                   returns) and every outcome
    <log>/batch/<batch_id>/*.parquet
                                   the decisions of one `nba decide-batch` run, written when the
                                   run completes (a crashed run leaves no partial segment); an
                                   index of their ids goes to log.db (`batch_index`), so outcomes
                                   can be reported against them like any other

Both hold the same records, in four tables:

* `decisions` (`nba.schemas.DECISIONS`): one row per decision.
* `candidates`: one row per decision and action left after rules and contact policies, with
  its propensity, value, lever, priority and uplift and `rank` (1..k if shown, 0 if not): a
  counterfactual policy can only choose among these (off-policy evaluation).
* `filtered`: one row per decision and action removed, with the `stage` and `rule`.
* `features`: the feature values the decision was made on (drift monitoring).

Outcomes (`nba.schemas.OUTCOMES`) live in `log.db` only, one row per (decision, action): a
duplicate report is ignored, so `/respond` is idempotent.

`read_log` returns the tables as DataFrames; evaluation reads nothing else.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nba import schemas
from nba.errors import NbaError

if TYPE_CHECKING:
    import pandas as pd

DECISION_COLUMNS = tuple(schemas.DECISIONS.columns)
CANDIDATE_COLUMNS = ("decision_id", "action_id", "rank", "propensity", "value", "lever", "priority", "uplift")
FILTERED_COLUMNS = ("decision_id", "action_id", "stage", "rule")
OUTCOME_COLUMNS = tuple(schemas.OUTCOMES.columns)
TIME_COLUMNS = {"decided_at", "responded_at"}
SEGMENT_TABLES = ("decisions", "candidates", "filtered", "features")  # what a batch segment holds

_SCHEMA = """
CREATE TABLE IF NOT EXISTS decisions (
    decision_id TEXT PRIMARY KEY,
    customer_id INTEGER NOT NULL,
    channel TEXT NOT NULL,
    decided_at REAL NOT NULL,            -- epoch seconds
    experiment_group TEXT NOT NULL,
    action_id TEXT NOT NULL,
    probability REAL NOT NULL,
    propensity REAL, value REAL, lever REAL, priority REAL, uplift REAL,
    n_candidates INTEGER NOT NULL,
    features_missing INTEGER NOT NULL,
    catalog_version TEXT NOT NULL,
    source TEXT NOT NULL,
    model_versions TEXT NOT NULL,        -- JSON: registered model -> version
    features TEXT NOT NULL               -- JSON: feature name -> value
);
-- append-only, read whole: no key to maintain on the hot path (a 200-action catalog writes
-- ~200 filtered rows per decision)
CREATE TABLE IF NOT EXISTS candidates (
    decision_id TEXT NOT NULL, action_id TEXT NOT NULL, rank INTEGER NOT NULL,
    propensity REAL, value REAL, lever REAL, priority REAL, uplift REAL
);
CREATE TABLE IF NOT EXISTS filtered (
    decision_id TEXT NOT NULL, action_id TEXT NOT NULL, stage TEXT NOT NULL, rule TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS batch_index (
    decision_id TEXT PRIMARY KEY, customer_id INTEGER NOT NULL, channel TEXT NOT NULL, batch TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS outcomes (
    decision_id TEXT NOT NULL, action_id TEXT NOT NULL, outcome TEXT NOT NULL,
    value REAL NOT NULL, responded_at REAL NOT NULL,
    PRIMARY KEY (decision_id, action_id)
) WITHOUT ROWID;
"""


class DecisionLogError(NbaError):
    """The decision log cannot be opened or read, or a record is malformed."""


class UnknownDecision(DecisionLogError):
    """An outcome names a decision id the log does not hold."""


@dataclass(frozen=True)
class DecisionRecord:
    """One decision as the log stores it (the service builds one per request)."""

    decision: Mapping[str, Any]  # the DECISIONS columns; decided_at as epoch seconds
    candidates: Sequence[Mapping[str, Any]]  # CANDIDATE_COLUMNS without decision_id
    filtered: Sequence[Mapping[str, Any]]  # FILTERED_COLUMNS without decision_id
    model_versions: Mapping[str, str]
    features: Mapping[str, Any]


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


class DecisionLog:
    """The SQLite part of a decision log, safe to share between threads and processes.

    Each `append` is committed with `synchronous=FULL` before it returns (concurrent appends of
    a process share one transaction: `nba.sqlite.SqliteFile`): once it has returned, neither a
    crash of the process nor of the machine loses it.
    """

    def __init__(self, folder: Path):
        from nba.sqlite import SqliteFile

        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.path = self.folder / "log.db"
        try:
            self.db = SqliteFile(self.path, synchronous="FULL", schema=_SCHEMA)
        except sqlite3.DatabaseError as exc:
            raise DecisionLogError(f"decision log {self.path}: {exc}") from None

    def close(self) -> None:
        self.db.close()

    def append(self, records: Iterable[DecisionRecord]) -> int:
        """Append decisions in one transaction; returns how many."""
        dec_rows: list[tuple] = []
        cand_rows: list[tuple] = []
        filt_rows: list[tuple] = []
        for r in records:
            d = r.decision
            did = d["decision_id"]
            dec_rows.append((
                did, int(d["customer_id"]), d["channel"], float(d["decided_at"]), d["experiment_group"],
                d["action_id"], float(d["probability"]), _num(d.get("propensity")), _num(d.get("value")),
                _num(d.get("lever")), _num(d.get("priority")), _num(d.get("uplift")), int(d["n_candidates"]),
                int(d["features_missing"]), str(d["catalog_version"]), d["source"],
                json.dumps(dict(r.model_versions), sort_keys=True), json.dumps(_jsonable(r.features)),
            ))
            cand_rows.extend((did, c["action_id"], int(c["rank"]), _num(c["propensity"]), _num(c["value"]),
                              _num(c["lever"]), _num(c["priority"]), _num(c.get("uplift"))) for c in r.candidates)
            filt_rows.extend((did, f["action_id"], f["stage"], f["rule"]) for f in r.filtered)
        if not dec_rows:
            return 0

        def write(conn: sqlite3.Connection) -> int:
            conn.executemany(f"INSERT INTO decisions VALUES ({','.join('?' * 18)})", dec_rows)
            conn.executemany("INSERT INTO candidates VALUES (?,?,?,?,?,?,?,?)", cand_rows)
            conn.executemany("INSERT INTO filtered VALUES (?,?,?,?)", filt_rows)
            return len(dec_rows)

        return self.db.submit(write)

    def index_batch(self, batch_id: str, decision_ids: Sequence[str], customer_ids: Sequence[int], channel: str) -> int:
        """Record where a batch run's decisions are (their full records are in its segment), in
        one transaction, so `/respond` finds them."""
        rows = zip(decision_ids, customer_ids, [channel] * len(decision_ids), [batch_id] * len(decision_ids),
                   strict=True)
        self.db.submit(lambda conn: conn.executemany("INSERT INTO batch_index VALUES (?,?,?,?)", rows))
        return len(decision_ids)

    def append_outcome(self, decision_id: str, action_id: str, outcome: str, value: float,
                       responded_at: float) -> OutcomeResult:
        """Record an outcome once; a second report of the same (decision, action) is ignored.

        Raises `UnknownDecision` if the decision is not in the log.
        """
        def write(conn: sqlite3.Connection) -> OutcomeResult:
            row = conn.execute("SELECT customer_id, channel FROM decisions WHERE decision_id = ?",
                               (decision_id,)).fetchone() or conn.execute(
                "SELECT customer_id, channel FROM batch_index WHERE decision_id = ?", (decision_id,)).fetchone()
            if row is None:
                raise UnknownDecision(f"decision_id '{decision_id}' is not in the decision log")
            cur = conn.execute("INSERT OR IGNORE INTO outcomes VALUES (?,?,?,?,?)",
                               (decision_id, action_id, outcome, float(value), float(responded_at)))
            recorded = cur.rowcount == 1
            kept = (outcome, value, responded_at) if recorded else conn.execute(
                "SELECT outcome, value, responded_at FROM outcomes WHERE decision_id = ? AND action_id = ?",
                (decision_id, action_id)).fetchone()
            return OutcomeResult(decision_id, action_id, int(row[0]), str(row[1]), recorded, kept[0],
                                 float(kept[1]), float(kept[2]))

        return self.db.submit(write)

    def count(self) -> int:
        return int(self.db.read(lambda conn: conn.execute("SELECT count(*) FROM decisions").fetchone()[0]))


def _num(x: Any) -> float | None:
    if x is None:
        return None
    x = float(x)
    return None if x != x else x  # NaN is stored as NULL


def _jsonable(features: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in features.items():
        if hasattr(v, "item"):
            v = v.item()
        if isinstance(v, float) and v != v:
            v = None
        out[k] = v
    return out


# --- batch segments -------------------------------------------------------------------


def write_batch(folder: Path, batch_id: str, tables: Mapping[str, Any]) -> Path:
    """Write one batch run's `decisions`, `candidates`, `filtered` and `features` tables (pyarrow
    Tables or DataFrames) as Parquet under `<log>/batch/<batch_id>/`, atomically: the folder appears
    complete or not at all; then `DecisionLog.index_batch` records its decision ids."""
    import os
    import shutil

    import pyarrow as pa
    import pyarrow.parquet as pq

    final = Path(folder) / "batch" / batch_id
    if final.exists():
        raise DecisionLogError(f"batch {batch_id} is already in the decision log {folder}")
    tmp = final.parent / f".{batch_id}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        for name in SEGMENT_TABLES:
            table = tables[name]
            if not isinstance(table, pa.Table):
                table = pa.Table.from_pandas(table, preserve_index=False)
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


def read_log(folder: Path, *, with_features: bool = False, decision_columns: Sequence[str] | None = None) -> LogFrames:
    """Read every decision (service and batch) and outcome of the log in `folder`."""
    import pandas as pd

    folder = Path(folder)
    if not folder.is_dir():
        raise DecisionLogError(f"decision log {folder} does not exist: no decision has been logged there")
    cols = list(decision_columns) if decision_columns else list(DECISION_COLUMNS)
    unknown = [c for c in cols if c not in DECISION_COLUMNS]
    if unknown:
        raise DecisionLogError(f"unknown decision column(s) {unknown}; expected any of {list(DECISION_COLUMNS)}")
    parts: dict[str, list[pd.DataFrame]] = {"decisions": [], "candidates": [], "filtered": [], "features": []}
    outcomes = pd.DataFrame({c: pd.Series(dtype=_dtype(schemas.OUTCOMES.columns[c])) for c in OUTCOME_COLUMNS})
    db = folder / "log.db"
    if db.is_file():
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        try:
            parts["decisions"].append(pd.read_sql_query(f"SELECT {','.join(cols)} FROM decisions", conn))
            parts["candidates"].append(pd.read_sql_query(f"SELECT {','.join(CANDIDATE_COLUMNS)} FROM candidates", conn))
            parts["filtered"].append(pd.read_sql_query(f"SELECT {','.join(FILTERED_COLUMNS)} FROM filtered", conn))
            outcomes = pd.read_sql_query(f"SELECT {','.join(OUTCOME_COLUMNS)} FROM outcomes", conn)
            if with_features:
                raw = pd.read_sql_query("SELECT decision_id, features FROM decisions", conn)
                feats = pd.DataFrame([json.loads(f) for f in raw["features"]], index=raw.index)
                feats.insert(0, "decision_id", raw["decision_id"])
                parts["features"].append(feats)
        finally:
            conn.close()
    for seg in sorted((folder / "batch").glob("*/")) if (folder / "batch").is_dir() else []:
        if seg.name.startswith("."):
            continue
        parts["decisions"].append(pd.read_parquet(seg / "decisions.parquet", columns=cols))
        parts["candidates"].append(pd.read_parquet(seg / "candidates.parquet"))
        parts["filtered"].append(pd.read_parquet(seg / "filtered.parquet"))
        if with_features:
            parts["features"].append(pd.read_parquet(seg / "features.parquet"))
    parts["decisions"] = [_typed(f, schemas.DECISIONS.columns) for f in parts["decisions"]]
    decisions = _concat(parts["decisions"], cols, schemas.DECISIONS.columns)
    candidates = _concat(parts["candidates"], CANDIDATE_COLUMNS, None)
    filtered = _concat(parts["filtered"], FILTERED_COLUMNS, None)
    outcomes = _typed(outcomes, schemas.OUTCOMES.columns)
    features = None
    if with_features:
        features = pd.concat(parts["features"], ignore_index=True) if parts["features"] else pd.DataFrame(
            {"decision_id": pd.Series(dtype="string")})
    return LogFrames(decisions, candidates, filtered, outcomes, features)


def _dtype(d: str) -> str:
    return "string" if d == "string" else d


def _concat(frames: list[pd.DataFrame], cols: Sequence[str], dtypes: Mapping[str, str] | None) -> pd.DataFrame:
    import pandas as pd

    frames = [f for f in frames if len(f)]
    if not frames:
        empty = pd.DataFrame({c: pd.Series(dtype=_dtype(dtypes[c]) if dtypes else "object") for c in cols})
        return _typed(empty, dtypes) if dtypes else empty
    out = pd.concat(frames, ignore_index=True)[list(cols)]
    return _typed(out, dtypes) if dtypes else out


def _typed(frame: pd.DataFrame, dtypes: Mapping[str, str]) -> pd.DataFrame:
    """Epoch seconds -> UTC timestamps; the declared dtypes."""
    import pandas as pd

    for col in frame.columns:
        want = dtypes.get(col)
        if want is None:
            continue
        if col in TIME_COLUMNS:  # epoch seconds (SQLite) or timestamps of any unit (Parquet)
            s = frame[col]
            s = pd.to_datetime(s.astype("float64"), unit="s", utc=True) if pd.api.types.is_numeric_dtype(s) \
                else pd.to_datetime(s, utc=True)
            frame[col] = s.dt.as_unit("ns")
        elif want == "string":
            frame[col] = frame[col].astype("string")
        elif not str(frame[col].dtype).startswith("datetime64"):
            frame[col] = frame[col].astype(want)
    return frame
