"""Outbound batch decisions: `nba decide-batch --customers FILE --channel email --out FILE`.

The same engine as `/decide` (the bundle's models, catalog and policies, the same core), run
vectorised over chunks of customers. Outcomes of batch decisions are reported to `/respond`
like any other (the decisions are in the log's database). Features come from the file when it holds every stored
feature of the feature service (a snapshot export: the request-time features are computed by
the feature service's own on-demand transformation), else from the online store, as for
`/decide`. Every decision is logged (one Parquet segment of the decision log per run, written
when the run completes) and the shown actions count as contacts for the contact policies.

The output has one row per customer and rank (rank 1 is the action to send; a customer for
whom nothing is worth sending gets one row with `do_nothing`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nba import console, schemas
from nba.decisioning.core import GROUPS, Decisions
from nba.decisioning.tables import contacts, decision_tables
from nba.errors import DataFileError
from nba.io import read_table, write_parquet
from nba.records import NO_ACTION, SEGMENT_RECORDS, segment_tables
from nba.serving.bundle import load_engine
from nba.serving.engine import DecisionRequest
from nba.settings import Settings
from nba.stores.decisions.sqlite import write_batch

ONLINE_CHUNK = 5_000  # customers per online-store read
ENGINES = ("numpy", "spark")  # `nba decide-batch --engine`: this process, or Spark (nba.serving.spark_batch)


@dataclass(frozen=True)
class BatchSummary:
    customers: int
    decisions_with_action: int
    holdout: int
    explore: int
    features_missing: int
    feature_source: str
    out: Path
    batch_id: str
    seconds: float  # deciding and writing, once the bundle is loaded
    load_seconds: float  # loading the bundle's models and opening the stores
    action_counts: dict[str, int]
    messages: int = 0  # outbox messages written (deliver)
    erased: int = 0  # rows of the file whose customer was erased (`nba.stores.erasures`): not decided

    def describe(self) -> str:
        lines = [f"{self.customers:,} decisions in {self.seconds:.2f} s ({self.customers / max(self.seconds, 1e-9):,.0f}/s) "
                 f"after loading the bundle in {self.load_seconds:.1f} s; "
                 f"features from {self.feature_source}; {self.decisions_with_action:,} with an action, "
                 f"{self.holdout:,} hold-out, {self.explore:,} exploration, {self.features_missing:,} without features",
                 f"ranked decisions -> {self.out}", f"decision log batch {self.batch_id}"]
        if self.messages:
            lines.append(f"{self.messages:,} outbox messages to deliver (nba activation run)")
        if self.erased:
            lines.append(f"{self.erased:,} rows of erased customers not decided (the erasure list)")
        lines += [f"  {a:<24} {c:>10,}" for a, c in sorted(self.action_counts.items(), key=lambda x: -x[1])]
        return "\n".join(lines)


def without_erased(settings: Settings, frame: Any, path: Path) -> tuple[Any, int]:
    """The customers file without the rows of erased customers (no decision is made for them),
    and how many rows that removed; a file of erased customers only is refused."""
    from nba.stores.erasures import erased_ids

    gone = erased_ids(settings)
    if not gone:
        return frame, 0
    drop = frame[schemas.ENTITY_KEY].isin(list(gone))
    if drop.all():
        raise DataFileError(f"customers file {path}: every one of its {len(frame):,} rows is an erased customer "
                            "(the erasure list): nothing to decide")
    return frame.loc[~drop].reset_index(drop=True), int(drop.sum())


def read_customers(path: Path) -> Any:
    path = Path(path)
    frame = read_table(path, "customers file")
    if schemas.ENTITY_KEY not in frame.columns:
        raise DataFileError(f"customers file {path}: no column '{schemas.ENTITY_KEY}' (columns: {list(frame.columns)[:20]})")
    ids = frame[schemas.ENTITY_KEY]
    if ids.isna().any():
        raise DataFileError(f"customers file {path}: column '{schemas.ENTITY_KEY}' has {int(ids.isna().sum())} "
                            "missing value(s)")
    try:
        frame[schemas.ENTITY_KEY] = ids.astype("int64")
    except (TypeError, ValueError):
        raise DataFileError(f"customers file {path}: column '{schemas.ENTITY_KEY}' must hold integer ids "
                            f"(got {ids.dtype})") from None
    if frame.empty:
        raise DataFileError(f"customers file {path} has no rows")
    return frame


def decide_batch(settings: Settings, customers: Path, channel: str, out: Path, *, k: int | None = None,
                 timestamp: float | None = None, chunk: int = 100_000, progress: bool = False,
                 engine: Any = None, deliver: bool = False, source: str = "batch",
                 decision_prefix: str | None = None) -> BatchSummary:
    """Decide for every customer of the file; write the ranked decisions and the log. With
    `deliver` (an outbound channel), every decision that shows an action gets an outbox
    message, appended with the run's index of decisions in one transaction once its segment
    is written (the delivery worker sends them). The decision ids are the run's prefix (16
    hex digits, random unless given) and the customer's row number in the file."""
    import pandas as pd
    import pyarrow as pa

    t0 = time.perf_counter()
    frame, erased = without_erased(settings, read_customers(customers), customers)  # a bad file fails first
    engine = engine or load_engine(settings, nthread=2)
    engine.check(DecisionRequest(0, channel, {}, timestamp, k))
    prefix = run_prefix(decision_prefix)
    reader = engine.features
    from nba.serving.models import SMALL  # the serve-time scorer (its runtime is heavy)

    engine.warm(rows=max(1, min(len(frame), chunk, SMALL + 1)))  # load and warm now: the time below is the decisions'
    t_loaded = time.perf_counter()
    stored = list(reader.stored_names)
    from_file, feature_source = file_features(engine.catalog, stored, frame.columns)
    now = float(timestamp if timestamp is not None else time.time())
    k = k or engine.catalog.default_k
    ci = engine.catalog.channel_names.index(channel)
    batch_id = new_batch_id(now, channel)
    parts: dict[str, list[Any]] = {"decisions": [], "candidates": [], "filtered": [], "features": [], "ranked": []}
    contacts_all: list[Any] = []
    outbox: list[Any] = []
    bar = console.progress(len(frame), "decisions", "customer", enabled=progress)
    for start in range(0, len(frame), chunk):
        part = frame.iloc[start:start + chunk]
        res = decide_chunk(engine, part, stored=stored, from_file=from_file, now=now, channel_index=ci, k=k,
                           source=source, deliver=deliver, decision_ids=row_decision_ids(prefix, start, len(part)))
        if res.outbox is not None:
            outbox.append(res.outbox)
        for name, t in res.segments.items():
            parts[name].append(t)
        parts["ranked"].append(res.ranked)
        contacts_all.append(res.contacts)
        bar.update(len(part))
    bar.close()
    # a chunk's dictionaries are its own; the first chunk's schema metadata holds for the run
    joined = {name: pa.concat_tables(ts) if name != "ranked" else pd.concat(ts, ignore_index=True)
              for name, ts in parts.items()}
    write_batch(settings.decision_log_dir, batch_id, {r.name: joined[r.name] for r in SEGMENT_RECORDS})
    dec = joined["decisions"]
    engine.log.index_batch(batch_id, dec.column("decision_id").to_pylist(), dec.column("customer_id").to_pylist(),
                           channel, outbox)
    engine.policy.record_contacts([c for cs in contacts_all for c in cs])
    ranked = joined["ranked"]
    write_parquet(ranked, Path(out))
    return summarise(dec, customers=len(frame), out=Path(out), batch_id=batch_id, seconds=time.perf_counter() - t_loaded,
                     load_seconds=t_loaded - t0, messages=sum(o.n for o in outbox),
                     feature_source=feature_source, erased=erased)


def summarise(dec: Any, *, customers: int, out: Path, batch_id: str, seconds: float, load_seconds: float,
              feature_source: str, messages: int = 0, erased: int = 0) -> BatchSummary:
    """The summary of a run from its decisions table (an Arrow table of the DECISION record)."""
    import pandas as pd

    groups = dec.column("experiment_group").to_numpy(zero_copy_only=False)
    actions = dec.column("action_id").to_numpy(zero_copy_only=False)
    counts = pd.Series(actions).value_counts().to_dict()
    return BatchSummary(
        customers=customers, decisions_with_action=int((actions != NO_ACTION).sum()),
        holdout=int((groups == "holdout").sum()), explore=int((groups == "explore").sum()),
        features_missing=int(dec.column("features_missing").to_numpy().sum()),
        feature_source=feature_source, out=out, batch_id=batch_id, seconds=seconds, load_seconds=load_seconds,
        action_counts={str(a): int(c) for a, c in counts.items()}, messages=messages, erased=erased)


@dataclass
class ChunkResult:
    """One chunk's decisions: the log segment's four tables, the ranked output, the contacts
    to record and the outbox messages (None: nothing to deliver)."""

    segments: dict[str, Any]
    ranked: Any
    contacts: list[tuple]
    outbox: Any


def decide_chunk(engine: Any, part: Any, *, stored: list[str], from_file: bool, now: float, channel_index: int,
                 k: int, source: str, deliver: bool, decision_ids: list[str]) -> ChunkResult:
    """Features -> the engine's core -> the log's tables for one chunk of customers: what the
    embedded loop and each Spark partition (`nba.serving.spark_batch`) run alike."""
    ids = part[schemas.ENTITY_KEY].to_numpy()
    n = len(ids)
    cols, found = chunk_features(engine.features, part, ids, stored, from_file, now)
    chan = np.full(n, channel_index, dtype=np.int64)
    d, env, missing, dids = engine.run_core(ids.tolist(), chan, np.full(n, now), cols, found, k,
                                            decision_ids=decision_ids)
    fm = np.zeros(n, dtype=np.int64)
    fm[missing] = 1
    tables = decision_tables(engine.catalog, d, decision_ids=dids, customer_ids=ids, channel=chan, now=now,
                             features_missing=fm, k=k, source=source, env=env,
                             model_versions=engine.model_versions, deliver=deliver)
    return ChunkResult(segments=segment_tables(tables, {"nba.bundle": engine.bundle}),
                       ranked=_ranked(engine, d, ids, dids, k),
                       contacts=contacts(engine.catalog, d, decision_ids=dids, customer_ids=ids, channel=channel_index,
                                         now=now, k=k),
                       outbox=tables.outbox)


def run_prefix(given: str | None = None) -> str:
    """The first 16 hex digits of a run's decision ids: random (64 bits), or the given ones (a
    run replayed with its own ids, or two engines compared on the same ids)."""
    if given is None:
        import os

        return os.urandom(8).hex()
    if len(given) != 16 or any(c not in "0123456789abcdef" for c in given):
        raise DataFileError(f"decision prefix {given!r}: expected 16 lower-case hex digits")
    return given


def row_decision_ids(prefix: str, start: int, n: int) -> list[str]:
    """The decision ids of rows start .. start + n - 1 of a run: ascending, so the log's
    index appends them in key order (as `nba.serving.engine.new_decision_ids`)."""
    return [f"{prefix}{i:016x}" for i in range(start, start + n)]


def new_batch_id(now: float, channel: str) -> str:
    return f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime(now))}-{channel}-{engine_id()}"


def file_features(catalog: Any, stored: list[str], columns: Any) -> tuple[bool, str]:
    """Whether a customers file holds every stored feature (its columns are then the features:
    `chunk_features`), and where the features come from, in words. A file with some feature
    columns but not all is read online instead: the words name what it lacks."""
    lacking = [c for c in stored if c not in columns]
    if not lacking:
        return True, "the file"
    source = f"the online store ({catalog.feature_service})"
    if len(lacking) < len(stored):
        source += f"; the file has feature columns but lacks {', '.join(lacking[:8])}{' ...' if len(lacking) > 8 else ''}"
    return False, source


def chunk_features(reader: Any, part: Any, ids: np.ndarray, stored: list[str], from_file: bool,
                   now: float) -> tuple[dict[str, list[Any]], list[bool]]:
    """One chunk's features at `now`: from the file's columns when it holds every stored
    feature (the on-demand ones derived by the reader), else read online in ONLINE_CHUNK
    slices. Returns the columns and which customers were found."""
    n = len(ids)
    ts = [int(now)] * n
    if from_file:
        cols = {c: _column(part[c]) for c in stored}
        cols.update(reader.transform(cols, ts))
        return cols, [True] * n
    cols, found = {}, []
    for s in range(0, n, ONLINE_CHUNK):
        c, f = reader.read(ids[s:s + ONLINE_CHUNK].tolist(), ts[s:s + ONLINE_CHUNK])
        for name, values in c.items():
            cols.setdefault(name, []).extend(values)
        found.extend(f)
    return cols, found


def engine_id() -> str:
    import os

    return os.urandom(3).hex()


def _column(series: Any) -> list[Any]:
    import pandas as pd

    if pd.api.types.is_numeric_dtype(series) or pd.api.types.is_bool_dtype(series):
        return series.astype("float64").to_numpy()
    return series.astype(object).where(series.notna(), None).to_numpy()


def _ranked(engine: Any, d: Decisions, ids: np.ndarray, dids: list[str], k: int) -> Any:
    """The ranked output of one chunk: one row per shown action, or one do_nothing row."""
    import pandas as pd

    cat = engine.catalog
    A = len(cat.actions)
    names = [*cat.action_ids, NO_ACTION]  # code A = do_nothing
    rows = np.arange(d.n)
    has = d.ranked[:, 0] >= 0
    kk = min(k, d.ranked.shape[1])
    pos = [(rows[d.ranked[:, r] >= 0], r) for r in range(kk)]
    rr = np.concatenate([p for p, _ in pos] + [np.flatnonzero(~has)])
    rk = np.concatenate([np.full(p.size, r + 1) for p, r in pos] + [np.ones((~has).sum(), dtype=np.int64)])
    ra = np.concatenate([d.ranked[p, r] for p, r in pos] + [np.full((~has).sum(), A)])
    shown = ra < A
    sa = np.where(shown, ra, 0)
    return pd.DataFrame({
        "customer_id": ids[rr].astype(np.int64),
        "decision_id": np.asarray(dids, dtype=object)[rr],
        "rank": rk.astype(np.int64),
        "action_id": pd.Categorical.from_codes(ra, names),
        "propensity": np.where(shown, d.propensity[rr, sa], np.nan),
        "value": np.where(shown, d.value[rr, sa], np.nan),
        "lever": np.where(shown, d.lever[sa], np.nan),
        "priority": np.where(shown, d.priority[rr, sa], np.nan),
        "experiment_group": pd.Categorical.from_codes(d.group[rr], GROUPS),
        "probability": d.probability[rr],
    }).sort_values(["customer_id", "rank"], kind="stable").reset_index(drop=True)
