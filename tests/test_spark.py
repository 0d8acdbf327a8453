"""Spark for what outgrows one machine, on local[2]: training frames through Feast's Spark
offline store (the `spark` profile) and `nba decide-batch --engine spark` equal the embedded
ones on the same customers, value for value. One SparkSession for the module (local[2], UI
off, loopback, four shuffle partitions)."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

# Feast's Spark offline store puts a filter of its own in front of the warning filters when it is
# imported (simplefilter("once", RuntimeWarning)): imported here, at collection, the silenced
# list (nba/console.py, added per test) stays in front of it.
import feast.infra.offline_stores.contrib.spark_offline_store.spark  # noqa: F401
import numpy as np
import pandas as pd
import pytest

from nba import records
from nba.settings import Settings
from nba.stores.decisions import read_log
from tests.serving_env import DECISION_EPOCH, build_served_bank

pytestmark = [pytest.mark.slow, pytest.mark.integration]

PREFIX = "5a5a5a5a00c0ffee"  # the same decision ids for both engines


@pytest.fixture(scope="module")
def spark(tmp_path_factory):
    from nba import spark as nba_spark

    session = nba_spark.session(Settings(work_dir=tmp_path_factory.mktemp("spark_session")))
    yield session
    session.stop()


@pytest.fixture(scope="module")
def spark_env(feature_env: Settings, spark, tmp_path_factory) -> Settings:
    """The shared bank's simulator output applied to a Feast repository of the spark profile."""
    from nba.features import store

    work = tmp_path_factory.mktemp("spark_features") / "var"
    work.mkdir()
    (work / "sim").symlink_to(feature_env.work / "sim", target_is_directory=True)
    settings = feature_env.model_copy(update={"work_dir": work, "profile": "spark", "data_dir": None})
    summary = store.apply(settings)
    assert store.get_store(settings).config.offline_store.type == "spark"
    assert summary.sources["profile"] > 0
    return settings


# --- batch decisions -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def served(feature_env: Settings, tmp_path_factory) -> Settings:
    return build_served_bank(feature_env, tmp_path_factory.mktemp("spark_served"))


@pytest.fixture(scope="module")
def twin(served: Settings, tmp_path_factory) -> Settings:
    """The same bank (bundle, models, feature store) in a work folder of its own, with an empty
    decision log and contact state: the Spark run's world."""
    work = tmp_path_factory.mktemp("spark_twin") / "var"
    shutil.copytree(served.work, work, symlinks=True, ignore=shutil.ignore_patterns("decision_log", "policy"))
    return served.model_copy(update={"work_dir": work})


def _snapshot(settings: Settings, path: Path, n: int) -> Path:
    """The newest snapshot of every feature view of n real customers, in one Parquet file of
    several row groups (so Spark splits it). The streaming features (no events in this bank)
    are missing, typed, so every stored feature comes from the file."""
    from nba.features.online import OnlineFeatureReader

    data = settings.feast_repo / "data"
    frame = None
    for name in ("profile", "rfm", "engagement", "risk", "consent"):
        t = pd.read_parquet(data / f"{name}.parquet")
        t = t[t["event_timestamp"] == t["event_timestamp"].max()].drop(columns=["event_timestamp"])
        t = t.drop(columns=[c for c in t.columns if c == "created_timestamp"])
        frame = t if frame is None else frame.merge(t, on="customer_id")
    assert frame is not None
    frame = frame.sort_values("customer_id").head(n).reset_index(drop=True)
    reader = OnlineFeatureReader(settings, "serving_v2")
    for f in reader.fields:
        if f.name in reader.stored_names and f.name not in frame.columns:
            frame[f.name] = pd.Series(np.nan if f.kind == "number" else None, index=frame.index,
                                      dtype="float64" if f.kind == "number" else "string")
    # row groups of 300: Spark makes a partition of each (below), and each scores more rows than
    # the serve-time ONNX path takes (nba.serving.models.SMALL), as the one embedded chunk does
    frame.to_parquet(path, index=False, row_group_size=300)
    return path


def _sorted(frame: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    frame = frame.sort_values(keys, kind="stable").reset_index(drop=True)
    for c in frame.columns:  # categories follow the part they came from; compare the values
        if isinstance(frame[c].dtype, pd.CategoricalDtype):
            frame[c] = frame[c].astype("string")
    return frame


def test_spark_batch_decisions_equal_the_embedded_ones(served, twin, spark, tmp_path, capsys):
    """The same customers, moment, bundle and (empty) contact state, the same decision ids: the
    Spark run logs the same decisions, candidates, filtered actions and features, ranks the same
    output and records the same contacts; its outcomes are accepted like any batch decision's."""
    from nba.serving.batch import decide_batch
    from nba.serving.bundle import load_engine
    from nba.serving.spark_batch import decide_batch_spark
    from nba.stores.policy_state.sqlite import SqlitePolicyStore

    customers = _snapshot(served, tmp_path / "customers.parquet", 900)
    at = float(DECISION_EPOCH)
    SqlitePolicyStore(served.policy_state_path).prune(before=float("inf"))
    embedded = decide_batch(served, customers, "email", tmp_path / "embedded.parquet", k=3, timestamp=at,
                            decision_prefix=PREFIX)
    eng = load_engine(twin)
    spark.conf.set("spark.sql.files.maxPartitionBytes", "8192")  # a split per row group: several partitions
    spark.conf.set("spark.sql.files.openCostInBytes", "0")
    try:
        on_spark = decide_batch_spark(twin, customers, "email", tmp_path / "spark_out", k=3, timestamp=at,
                                      decision_prefix=PREFIX, engine=eng, spark=spark)
        with capsys.disabled():
            print(f"\nbatch of {embedded.customers:,}: embedded {embedded.seconds:.2f} s (+{embedded.load_seconds:.1f} s "
                  f"load), spark {on_spark.seconds:.2f} s (+{on_spark.load_seconds:.1f} s load); "
                  f"{on_spark.feature_source}")
        assert embedded.feature_source == "the file" and on_spark.feature_source.startswith("the file on Spark")
        partitions = int(on_spark.feature_source.split(", ")[-1].split()[0])
        assert partitions >= 2  # the core really ran per partition
        assert on_spark.customers == embedded.customers == 900
        assert on_spark.action_counts == embedded.action_counts and on_spark.holdout == embedded.holdout
        assert on_spark.explore == embedded.explore and embedded.decisions_with_action > 100

        a = read_log(served.decision_log_dir, with_features=True)
        b = read_log(twin.decision_log_dir, with_features=True)
        assert len(b.decisions) == 900 and set(b.decisions["source"]) == {"batch"}
        key = {"decisions": ["decision_id"], "candidates": ["decision_id", "action_id"],
               "filtered": ["decision_id", "action_id"], "features": ["decision_id"]}
        for name, keys in key.items():
            left = getattr(a, name)
            left = left[left["decision_id"].isin(b.decisions["decision_id"])]
            right = getattr(b, name)
            assert len(right) == len(left) > 0, name
            left, right = _sorted(left, keys), _sorted(right[left.columns], keys)
            if name == "features":
                right = right.astype(left.dtypes.to_dict())
            pd.testing.assert_frame_equal(right, left, obj=name)
        ranked_a = _sorted(pd.read_parquet(tmp_path / "embedded.parquet"), ["customer_id", "rank"])
        ranked_b = _sorted(pd.read_parquet(tmp_path / "spark_out"), ["customer_id", "rank"])
        pd.testing.assert_frame_equal(ranked_b, ranked_a[ranked_b.columns], check_dtype=False)
        assert set(ranked_b.loc[ranked_b["rank"] == 1, "action_id"]) - {records.NO_ACTION}

        # the same contacts counted for the contact policies
        ids = ranked_a["customer_id"].unique()
        def contacts(settings: Settings) -> list[tuple]:
            h = SqlitePolicyStore(settings.policy_state_path).history(ids, 0.0)
            return sorted(zip(ids[h.contact_row].tolist(), h.contact_action, h.contact_group, h.contact_channel,
                              h.contact_ts.tolist(), strict=True))

        shown = contacts(served)
        assert len(shown) == int((ranked_a["action_id"] != records.NO_ACTION).sum()) > 100
        assert contacts(twin) == shown

        # an outcome of a Spark batch decision, reported as /respond reports it
        sent = ranked_b[(ranked_b["rank"] == 1) & (ranked_b["action_id"] != records.NO_ACTION)].iloc[0]
        r = eng.respond(str(sent["decision_id"]), str(sent["action_id"]), "accepted", 5.0, at + 3600)
        assert r["recorded"] is True and r["customer_id"] == int(sent["customer_id"]) and r["outcome"] == "accepted"
        again = eng.respond(str(sent["decision_id"]), str(sent["action_id"]), "accepted", 5.0, at + 7200)
        assert again["recorded"] is False and again["duplicate"] is True
        out = read_log(twin.decision_log_dir).outcomes
        assert list(out["decision_id"]) == [sent["decision_id"]] and out["value"].iloc[0] == 5.0
    finally:
        spark.conf.unset("spark.sql.files.maxPartitionBytes")
        spark.conf.unset("spark.sql.files.openCostInBytes")
        eng.log.close()


def test_a_bad_customers_file_fails_before_anything_runs(spark, tmp_path):
    """Checked by Spark before any model loads or anything is written (there is no bundle here)."""
    from nba.errors import DataFileError
    from nba.serving.spark_batch import decide_batch_spark

    twin = Settings(home=tmp_path, work_dir=tmp_path / "var")

    bad = tmp_path / "bad.parquet"
    pd.DataFrame({"customer": [1, 2]}).to_parquet(bad)
    with pytest.raises(DataFileError, match="no column 'customer_id'"):
        decide_batch_spark(twin, bad, "email", tmp_path / "o", spark=spark)
    text = tmp_path / "text.parquet"
    pd.DataFrame({"customer_id": ["a", "b"]}).to_parquet(text)
    with pytest.raises(DataFileError, match="must hold integer ids"):
        decide_batch_spark(twin, text, "email", tmp_path / "o", spark=spark)
    holes = tmp_path / "holes.parquet"
    pd.DataFrame({"customer_id": [1, None, 3]}, dtype="Int64").to_parquet(holes)
    with pytest.raises(DataFileError, match="'customer_id' has 1 missing value"):
        decide_batch_spark(twin, holes, "email", tmp_path / "o", spark=spark)
    with pytest.raises(DataFileError, match="does not exist"):
        decide_batch_spark(twin, tmp_path / "nowhere.parquet", "email", tmp_path / "o", spark=spark)
    assert not (tmp_path / "var").exists() and not (tmp_path / "o").exists()



# --- training frames -------------------------------------------------------------------------


def test_the_spark_profile_declares_a_spark_source_per_view(spark_env):
    from feast.infra.offline_stores.contrib.spark_offline_store.spark_source import SparkSource

    from nba.features import store

    fs = store.get_store(spark_env)
    views = fs.list_feature_views()
    bank = {"customer_profile", "customer_rfm", "customer_engagement", "customer_risk", "customer_consent",
            "customer_realtime"}
    assert {v.name for v in views} >= bank
    for v in views:
        assert isinstance(v.batch_source, SparkSource), v.name
        assert Path(v.batch_source.path).is_absolute(), v.batch_source.path
        # the public data sets' views are declared too; their files come with NBA_DATA_DIR (unset here)
        assert Path(v.batch_source.path).is_file() == (v.name in bank), v.batch_source.path


@pytest.mark.parametrize("model", ["churn", "propensity"])
def test_spark_training_frames_equal_the_embedded_ones(feature_env, spark_env, model, capsys):
    """The real frame builders (nba.training.frames) through both offline stores: the same rows,
    columns, dtypes and values, the same hold-out split and the same digest MLflow records."""
    from nba.training import frames
    from nba.training.config import load_model_config

    cfg = load_model_config(feature_env.home, model)
    build = frames.churn_frame if model == "churn" else frames.propensity_frame
    t0 = time.perf_counter()
    embedded = build(feature_env, cfg)
    t1 = time.perf_counter()
    on_spark = build(spark_env, cfg)
    t2 = time.perf_counter()
    with capsys.disabled():
        print(f"\n{model} frame ({len(embedded.frame):,} rows): embedded {t1 - t0:.2f} s, spark {t2 - t1:.2f} s")
    assert len(embedded.frame) > 1000 and embedded.info["positives"] > 10
    pd.testing.assert_frame_equal(on_spark.frame, embedded.frame)  # dtypes too
    assert on_spark.feature_columns == embedded.feature_columns
    assert np.array_equal(on_spark.is_holdout, embedded.is_holdout)
    assert on_spark.info["digest"] == embedded.info["digest"]
    # a point-in-time join that saw nothing would still be "equal": the features are there
    assert embedded.frame["income"].notna().mean() > 0.9 and embedded.frame["recency_days"].notna().mean() > 0.9


def test_a_missing_java_is_one_line_naming_it(monkeypatch, tmp_path):
    from nba import spark as nba_spark

    monkeypatch.setenv("JAVA_HOME", str(tmp_path / "no-java"))
    with pytest.raises(nba_spark.SparkUnavailable, match=r"^Spark: Java 17\+ not found \(JAVA_HOME=.* has no bin/java\)"):
        nba_spark.check()


def test_a_segment_published_from_parts_reads_as_the_one_written_whole(tmp_path):
    """The parts of three partitions (one with a feature missing everywhere, typed null there)
    stream into the same segment `write_batch` writes from the whole batch; a second publish of
    the same batch is refused and leaves the first intact."""
    import pyarrow as pa

    from nba.decisioning.tables import decision_tables
    from nba.records import segment_tables
    from nba.stores.decisions import DecisionLogError
    from nba.stores.decisions.segments import part_path, publish_parts, write_part
    from nba.stores.decisions.sqlite import write_batch
    from tests.test_decision_log import _decide
    from tests.test_decisioning import NOW, _bank, _batch, _customer

    cat = _bank(tmp_path, experiment__exploration_share=0.3)
    rng = np.random.default_rng(5)
    n = 30
    rows = [_customer(age=float(rng.integers(18, 90)), credit_score=float(rng.integers(400, 850)))
            for _ in range(n)]
    P = rng.random((n, len(cat.actions))) * 0.3
    ids = np.arange(n, dtype=np.int64) * 31
    dids = [f"{i:032x}" for i in range(n)]

    def tables(lo: int, hi: int) -> dict:
        env = _batch(rows[lo:hi])
        d = _decide(cat, env, hi - lo, P[lo:hi], ids[lo:hi], np.arange(lo, hi) + 1, 0)
        t = decision_tables(cat, d, decision_ids=dids[lo:hi], customer_ids=ids[lo:hi], channel=np.zeros(hi - lo),
                            now=NOW, features_missing=np.zeros(hi - lo), k=2, source="batch", env=env,
                            model_versions={"nba-churn": "3"})
        return segment_tables(t, {"nba.bundle": "test"})

    whole = write_batch(tmp_path / "whole", "b1", tables(0, n))
    parts = tmp_path / "parts"
    for p, (lo, hi) in enumerate([(0, 10), (10, 20), (20, 30)]):
        for name, table in tables(lo, hi).items():
            if name == "features" and p == 1:  # a feature no customer of this partition has
                table = table.set_column(table.schema.get_field_index("age"), "age", pa.nulls(hi - lo))
            write_part(table, part_path(parts, name, p * 7, 0))
    segment = publish_parts(tmp_path / "parted", "b1", parts)
    a, b = read_log(tmp_path / "whole", with_features=True), read_log(tmp_path / "parted", with_features=True)
    for name in ("decisions", "candidates", "filtered"):
        pd.testing.assert_frame_equal(getattr(b, name), getattr(a, name))
    fa, fb = a.features.set_index("decision_id"), b.features.set_index("decision_id")
    assert fb["age"].iloc[10:20].isna().all() and fb["age"].drop(fb.index[10:20]).equals(fa["age"].drop(fa.index[10:20]))
    import pyarrow.parquet as pq

    assert pq.read_schema(segment / "decisions.parquet").metadata == pq.read_schema(whole / "decisions.parquet").metadata
    with pytest.raises(DecisionLogError, match="already in the decision log"):
        publish_parts(tmp_path / "parted", "b1", parts)
    assert len(read_log(tmp_path / "parted").decisions) == n
