"""The records are declared once (`nba.records`): the SQLite DDL, the Parquet schema of a batch
segment, the readers' dtypes and the response fields follow the declaration, and a change of
the declaration flows to each of them."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from nba import records
from nba.records import FLOAT, TEXT, Coded, Column, Columns, arrow_schema, model_fields, to_arrow
from nba.stores.decisions import DecisionLogError, read_log
from nba.stores.decisions.sqlite import DecisionLog, conform
from nba.stores.sqlite import SQL_TYPES, create_table, insert_sql

ALL = (*records.LOG_RECORDS, records.CONTACT, records.REJECTION)

# The tables of the decision log as the previous release created them (nba/decisioning/log.py,
# before the records were declared): files written then must stay readable and writable.
LEGACY_DDL = """
CREATE TABLE IF NOT EXISTS decisions (
    decision_id TEXT PRIMARY KEY, customer_id INTEGER NOT NULL, channel TEXT NOT NULL,
    decided_at REAL NOT NULL, experiment_group TEXT NOT NULL, action_id TEXT NOT NULL,
    probability REAL NOT NULL, propensity REAL, value REAL, lever REAL, priority REAL, uplift REAL,
    n_candidates INTEGER NOT NULL, features_missing INTEGER NOT NULL, catalog_version TEXT NOT NULL,
    source TEXT NOT NULL, model_versions TEXT NOT NULL, features TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS candidates (
    decision_id TEXT NOT NULL, action_id TEXT NOT NULL, rank INTEGER NOT NULL,
    propensity REAL, value REAL, lever REAL, priority REAL, uplift REAL);
CREATE TABLE IF NOT EXISTS filtered (
    decision_id TEXT NOT NULL, action_id TEXT NOT NULL, stage TEXT NOT NULL, rule TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS batch_index (
    decision_id TEXT PRIMARY KEY, customer_id INTEGER NOT NULL, channel TEXT NOT NULL, batch TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS outcomes (
    decision_id TEXT NOT NULL, action_id TEXT NOT NULL, outcome TEXT NOT NULL,
    value REAL NOT NULL, responded_at REAL NOT NULL, PRIMARY KEY (decision_id, action_id)) WITHOUT ROWID;
"""


def _info(conn: sqlite3.Connection, table: str) -> list[tuple]:
    return [(name, typ, bool(notnull), pk) for _, name, typ, notnull, _, pk in
            conn.execute(f"PRAGMA table_info({table})")]


def _without_rowid(conn: sqlite3.Connection, table: str) -> bool:
    return "WITHOUT ROWID" in conn.execute("SELECT sql FROM sqlite_master WHERE name = ?", (table,)).fetchone()[0]


@pytest.mark.parametrize("record", ALL, ids=lambda r: r.name)
def test_the_ddl_is_the_declaration(record: records.Record):
    conn = sqlite3.connect(":memory:")
    conn.executescript(create_table(record))
    expected = [(c.name, SQL_TYPES[c.kind], not c.nullable, record.key.index(c.name) + 1 if c.name in record.key else 0)
                for c in record.columns]
    assert _info(conn, record.name) == expected
    # keyed tables of small rows are stored in key order; decisions (with their features) are not
    assert _without_rowid(conn, record.name) == (bool(record.key) and record is not records.DECISION)
    conn.execute(insert_sql(record), [None if c.nullable else (1 if c.kind.value in ("int", "float", "time") else "x")
                                      for c in record.columns])
    assert conn.execute(f"SELECT count(*) FROM {record.name}").fetchone()[0] == 1


def test_the_ddl_matches_the_files_of_the_previous_release(tmp_path: Path):
    """Same tables, columns, types, keys and storage; only `decisions.decision_id` is now also
    declared NOT NULL (SQLite lets a TEXT primary key be NULL unless told)."""
    old, new = sqlite3.connect(":memory:"), sqlite3.connect(":memory:")
    old.executescript(LEGACY_DDL)
    new.executescript("".join(create_table(r) for r in records.LOG_RECORDS))
    for r in records.LOG_RECORDS:
        o, n = _info(old, r.name), _info(new, r.name)
        if r is records.DECISION:
            assert o[0] == ("decision_id", "TEXT", False, 1) and n[0] == ("decision_id", "TEXT", True, 1)
            o, n = o[1:], n[1:]
        assert o == n, r.name
        assert _without_rowid(old, r.name) == _without_rowid(new, r.name)

    # a log.db created by the previous release is opened, appended to and read by this one
    folder = tmp_path / "log"
    folder.mkdir()
    with sqlite3.connect(folder / "log.db") as conn:
        conn.executescript(LEGACY_DDL)
    log = DecisionLog(folder)
    log.append(_tables(3))
    assert log.append_outcome("d1", "a", "accepted", 2.0, 1_000.0).recorded
    log.close()
    frames = read_log(folder, with_features=True)
    assert list(frames.decisions["decision_id"]) == ["d0", "d1", "d2"] and len(frames.outcomes) == 1


@pytest.mark.parametrize("record", records.SEGMENT_RECORDS, ids=lambda r: r.name)
def test_the_arrow_schema_is_the_declaration(record: records.Record):
    schema = arrow_schema(record)
    assert schema.names == list(record.tabular_names)
    for c in record.tabular:
        f = schema.field(c.name)
        assert f.nullable == c.nullable
        want = {"int": pa.int64(), "float": pa.float64(), "time": pa.timestamp("us", tz="UTC")}.get(c.kind.value)
        if c.kind is TEXT:
            want = pa.dictionary(pa.int32(), pa.string()) if c.categorical else pa.string()
        assert f.type == want, c.name
    assert "model_versions" not in schema.names  # JSON columns live beside a segment's tables


def test_the_column_builders_form_has_the_declared_types_in_every_store(tmp_path: Path):
    tables = _tables(4)
    arrow = to_arrow(tables.decisions)
    assert arrow.schema.equals(arrow_schema(records.DECISION))
    rows = tables.candidates.rows()  # what a row store inserts: declaration order, names for codes, NaN as NULL
    assert rows[1] == ("d1", "a", 1, 0.1, 1.0, 0.0, 0.1, None)
    assert tables.decisions.pylist("channel") == ["web"] * 4
    with pytest.raises(KeyError):  # a row of decisions needs its JSON columns too (the store adds them)
        tables.decisions.rows()


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.integration)])
def test_the_readers_types_are_the_declaration(tmp_path: Path, backend: str):
    import contextlib

    from tests.pg_env import pg_database

    with pg_database("test_records") if backend == "postgres" else contextlib.nullcontext() as dsn:
        if dsn is None:
            log = DecisionLog(tmp_path / "log")
        else:
            from nba.stores.decisions.postgres import PostgresDecisionLog

            log = PostgresDecisionLog(dsn, tmp_path / "log")
        log.append(_tables(2))
        log.close()
        frames = read_log(tmp_path / "log", dsn=dsn)
    assert len(frames.decisions) == 2 and len(frames.candidates) == 2
    for frame, record in ((frames.decisions, records.DECISION), (frames.candidates, records.CANDIDATE),
                          (frames.filtered, records.FILTERED), (frames.outcomes, records.OUTCOME)):
        assert {c: str(t) for c, t in frame.dtypes.items()} == record.dtypes, record.name


def test_a_change_of_the_declaration_flows_to_the_ddl_the_parquet_schema_and_the_fields():
    arm = Column("arm", TEXT, nullable=True, categorical=True, doc="the strategy arm")
    score = Column("score", FLOAT, nullable=True)
    changed = records.DECISION.with_columns(arm, score)
    ddl = create_table(changed)
    assert "arm TEXT,\n" in ddl and "score REAL\n" in ddl.replace(",\n    PRIMARY", "\n    PRIMARY")
    conn = sqlite3.connect(":memory:")
    conn.executescript(ddl)
    assert [r[0] for r in _info(conn, "decisions")][-2:] == ["arm", "score"]
    assert insert_sql(changed).count("?") == len(records.DECISION.columns) + 2
    schema = arrow_schema(changed)
    assert schema.names[-2:] == ["arm", "score"]
    assert schema.field("arm").type == pa.dictionary(pa.int32(), pa.string())
    assert changed.dtypes["arm"] == "string" and changed.dtypes["score"] == "float64"
    fields = model_fields(changed, ["arm"])
    assert fields["arm"][0] == (str | None) and fields["arm"][1].description == "the strategy arm"
    # a segment table without the new column no longer conforms; with it, it does
    old = to_arrow(_tables(2).decisions)
    with pytest.raises(DecisionLogError, match=r"missing column\(s\) \['arm', 'score'\]"):
        conform(changed, old)
    new = old.append_column("arm", pa.array(["a", None])).append_column("score", pa.array([1.0, None]))
    assert conform(changed, new).schema.equals(schema)


def test_records_refuse_what_they_do_not_declare():
    with pytest.raises(ValueError, match="columns .* missing"):
        Columns(records.FILTERED, 1, {"decision_id": ["d"]})
    with pytest.raises(ValueError, match="not declared"):
        Columns(records.FILTERED, 1, {"decision_id": ["d"], "action_id": ["a"], "stage": ["s"], "rule": ["r"],
                                      "extra": [1]})
    with pytest.raises(ValueError, match="key column"):
        records.Record("t", (Column("a", TEXT),), key=("b",))


def _tables(n: int) -> records.DecisionTables:
    """n made-up decisions of one action 'a' each: one candidate, one filtered row of 'b'."""
    ids = [f"d{i}" for i in range(n)]
    z = np.zeros(n, dtype=np.int64)
    r = np.arange(n)
    nan = np.full(n, np.nan)
    decisions = Columns(records.DECISION, n, {
        "decision_id": ids, "customer_id": r * 10, "channel": Coded(np.ones(n, dtype=np.int64), ["email", "web"]),
        "decided_at": 1_764_579_600.0 + r, "experiment_group": Coded(z, records.EXPERIMENT_GROUPS),
        "action_id": Coded(z, ["a", records.NO_ACTION]), "probability": np.ones(n), "propensity": np.full(n, 0.1),
        "value": np.ones(n), "lever": np.zeros(n), "priority": np.full(n, 0.1), "uplift": nan,
        "n_candidates": np.ones(n, dtype=np.int64), "features_missing": z, "catalog_version": Coded(z, ["v1"]),
        "source": Coded(z, ["api"])})
    candidates = Columns(records.CANDIDATE, n, {
        "decision_id": Coded(r, ids), "action_id": Coded(z, ["a"]), "rank": np.ones(n, dtype=np.int64),
        "propensity": np.full(n, 0.1), "value": np.ones(n), "lever": np.zeros(n), "priority": np.full(n, 0.1),
        "uplift": nan})
    filtered = Columns(records.FILTERED, n, {
        "decision_id": Coded(r, ids), "action_id": Coded(z, ["b"]), "stage": Coded(z, ["eligibility"]),
        "rule": Coded(z, ["age > 18"])})
    features = Columns(records.FEATURES, n, {"decision_id": ids, "age": r * 1.0 + 20,
                                             "region": np.array(["north"] * n, dtype=object)})
    return records.DecisionTables(decisions, candidates, filtered, features, {"nba-churn": "3"})
