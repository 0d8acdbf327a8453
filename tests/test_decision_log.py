"""One definition of what a decision record holds: the column builder gives the same records for
one customer at a time (`/decide`, SQLite rows) and for a batch (`nba decide-batch`, a Parquet
segment), and the log reads both back alike. The log's tests run against both backends: the
embedded SQLite file and the production profile's Postgres (a database of the test's own)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from nba.decisioning.core import ContactHistory, MatrixScorer, decide
from nba.decisioning.tables import contacts, decision_tables
from nba.records import segment_tables
from nba.stores.decisions import UnknownDecision, read_log
from nba.stores.decisions.sqlite import DecisionLog, write_batch
from tests.test_decisioning import NOW, _bank, _batch, _customer

N = 40


class Backend:
    """Open and read a decision log in a folder, on SQLite (dsn None) or Postgres."""

    def __init__(self, dsn: str | None):
        self.dsn = dsn

    def open(self, folder: Path):
        if self.dsn is None:
            return DecisionLog(folder)
        from nba.stores.decisions.postgres import PostgresDecisionLog

        return PostgresDecisionLog(self.dsn, folder)

    def read(self, folder: Path, **kw):
        return read_log(folder, dsn=self.dsn, **kw)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.integration)])
def backend(request):
    if request.param == "sqlite":
        yield Backend(None)
        return
    from tests.pg_env import pg_database

    with pg_database("test_decision_log") as dsn:
        yield Backend(dsn)


def _decide(cat, env, n, P, ids, keys, channel):
    return decide(cat, env, n, channel=np.full(n, channel), now=np.full(n, NOW), history=ContactHistory.empty(),
                  scorer=MatrixScorer(np.asarray(P)), customer_ids=ids, decision_keys=keys, k=3)


def test_one_at_a_time_and_a_batch_log_the_same_records(tmp_path: Path, backend: Backend):
    cat = _bank(tmp_path, experiment__exploration_share=0.3)
    rng = np.random.default_rng(11)
    rows = [_customer(age=float(rng.integers(18, 90)), credit_score=float(rng.integers(400, 850)),
                      has_credit_card=float(rng.integers(0, 2)), consent_sms=float(rng.integers(0, 2)))
            for _ in range(N)]
    P = rng.random((N, len(cat.actions))) * 0.3
    ids = np.arange(N, dtype=np.int64) * 7919
    keys = np.arange(N) * 104729 + 1
    dids = [f"{i:032x}" for i in range(N)]
    ch = cat.channel_names.index("sms")
    versions = {"nba-churn": "2"}
    k = 2

    api = backend.open(tmp_path / "api")  # the engine's path: one request, scalars, SQLite rows
    one_contacts = []
    for i in range(N):
        d = _decide(cat, rows[i], 1, P[i:i + 1], ids[i:i + 1], keys[i:i + 1], ch)
        kw = dict(decision_ids=dids[i:i + 1], customer_ids=ids[i:i + 1], channel=np.array([ch]), now=np.array([NOW]))
        api.append(decision_tables(cat, d, **kw, features_missing=np.zeros(1), k=np.array([k]), source="batch",
                                   env=rows[i], model_versions=versions))
        one_contacts += contacts(cat, d, **kw, k=np.array([k]))
    api.close()

    d = _decide(cat, _batch(rows), N, P, ids, keys, ch)  # the batch path: arrays, a Parquet segment
    kw = dict(decision_ids=dids, customer_ids=ids, channel=np.full(N, ch), now=NOW)
    tables = decision_tables(cat, d, **kw, features_missing=np.zeros(N), k=k, source="batch", env=_batch(rows),
                             model_versions=versions)
    segment = write_batch(tmp_path / "batch", "b1", segment_tables(tables, {"nba.bundle": "test"}))
    assert sorted(one_contacts) == sorted(contacts(cat, d, **kw, k=k)) == \
        sorted(contacts(cat, d, **{**kw, "channel": ch}, k=k))  # one channel for all, as a batch passes it

    a, b = backend.read(tmp_path / "api", with_features=True), read_log(tmp_path / "batch", with_features=True)
    assert len(a.decisions) == N and len(a.candidates) > N and len(a.filtered) > 0
    assert set(a.decisions["experiment_group"]) >= {"nba", "explore"}
    for name in ("decisions", "candidates", "filtered"):
        pd.testing.assert_frame_equal(getattr(a, name), getattr(b, name), check_exact=False, rtol=1e-12)
    fa = a.features.set_index("decision_id").sort_index(axis=1)
    fb = b.features.set_index("decision_id").sort_index(axis=1)
    pd.testing.assert_frame_equal(fa, fb, check_dtype=False)
    # the candidates ranked 1..k are the shown actions, the first the logged one
    shown = a.candidates[a.candidates["rank"] == 1].set_index("decision_id")["action_id"]
    logged = a.decisions.set_index("decision_id")["action_id"]
    assert (logged[shown.index] == shown).all()
    assert a.candidates["rank"].max() == k
    meta = pq.read_schema(segment / "decisions.parquet").metadata
    assert meta[b"nba.model_versions"] == b'{"nba-churn": "2"}' and meta[b"nba.bundle"] == b"test"


def test_outcomes_are_idempotent_and_name_a_logged_decision(tmp_path: Path, backend: Backend):
    from tests.test_records import _tables

    log = backend.open(tmp_path)
    log.append(_tables(2))
    first = log.append_outcome("d0", "a", "accepted", 5.0, 1_000.0)
    again = log.append_outcome("d0", "a", "rejected", 0.0, 2_000.0)
    assert first.recorded and not again.recorded
    assert (again.outcome, again.value, again.responded_at, again.customer_id, again.channel) == \
        ("accepted", 5.0, 1_000.0, 0, "web")
    log.index_batch("b1", ["x1"], [77], "email")
    assert log.append_outcome("x1", "a", "ignored", 0.0, 3_000.0).customer_id == 77
    with pytest.raises(UnknownDecision, match="decision_id 'nope' is not in the decision log"):
        log.append_outcome("nope", "a", "accepted", 1.0, 1.0)
    assert log.count() == 2
    log.close()
    out = backend.read(tmp_path).outcomes
    assert list(out["outcome"]) == ["accepted", "ignored"]
    assert str(out["responded_at"].dtype) == "datetime64[ns, UTC]"
