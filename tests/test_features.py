"""The Feast repository, for real: apply, materialise, online reads, point-in-time historical reads."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from nba import schemas
from nba.data.simulator import simulate_to_dir
from nba.errors import FeatureStoreError
from nba.features import store
from nba.settings import Settings
from tests.conftest import PROJECT_ROOT
from tests.constants import SEED

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SERVICES = ["cdnow_clv_v1", "churn_v1", "clv_v1", "hillstrom_uplift_v1", "propensity_v1", "serving_v1", "serving_v2"]
VIEWS = ["cdnow_rfm", "customer_consent", "customer_engagement", "customer_profile", "customer_realtime",
         "customer_rfm", "customer_risk", "hillstrom_profile"]


@pytest.fixture(scope="module")
def sim_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sim")
    simulate_to_dir(customers=600, seed=SEED, out_dir=out, months=6, progress=False)
    return out


@pytest.fixture(scope="module")
def feast(tmp_path_factory, sim_dir) -> Settings:
    """A real Feast repository in a temporary work folder, applied and materialised."""
    settings = Settings(home=PROJECT_ROOT, work_dir=tmp_path_factory.mktemp("work"))
    store.apply(settings, sim_dir)
    store.materialize(settings)
    return settings


def _asof(source: pd.DataFrame, entities: pd.DataFrame) -> pd.DataFrame:
    """Independent point-in-time join: the latest snapshot at or before each entity timestamp."""
    left = entities.sort_values(schemas.EVENT_TS)
    right = source.sort_values(schemas.EVENT_TS).rename(columns={schemas.EVENT_TS: "snapshot_ts"})
    merged = pd.merge_asof(
        left, right, left_on=schemas.EVENT_TS, right_on="snapshot_ts", by=schemas.ENTITY_KEY,
        direction="backward", tolerance=pd.Timedelta(days=62),
    )
    return merged.sort_values([schemas.EVENT_TS, schemas.ENTITY_KEY], kind="stable").reset_index(drop=True)


def _entities(sim_dir: Path, n: int, seed: int) -> pd.DataFrame:
    """Random customers at random moments inside the simulated period (mid-month, exact snapshot times)."""
    profile = pd.read_parquet(sim_dir / "profile.parquet", columns=[schemas.ENTITY_KEY, schemas.EVENT_TS])
    rng = np.random.default_rng(seed)
    rows = profile.sample(n=n, random_state=seed).reset_index(drop=True)
    offsets = rng.choice([0, 1, 3600 * 24 * 14 + 17, 3600 * 24 * 29], size=n)  # at, just after, mid, late
    rows[schemas.EVENT_TS] = rows[schemas.EVENT_TS] + pd.to_timedelta(offsets, unit="s")
    return rows


def test_apply_registers_every_object(feast: Settings):
    fs = store.get_store(feast)
    assert store.feature_service_names(fs) == SERVICES
    assert sorted(v.name for v in fs.list_feature_views()) == VIEWS
    assert sorted(v.name for v in fs.list_on_demand_feature_views()) == ["realtime_context", "request_context"]
    assert sorted(e.name for e in fs.list_entities()) == ["cdnow_customer", "customer", "hillstrom_customer"]
    # Every generated file lives in the work folder's repository, none in the project.
    assert (feast.feast_repo / "data" / "registry.db").is_file()
    assert (feast.feast_repo / "data" / "online.db").is_file()
    assert not (PROJECT_ROOT / "features" / "data").exists()


def test_historical_frame_is_point_in_time_correct(feast: Settings, sim_dir: Path):
    entities = _entities(sim_dir, 300, seed=1)
    frame = store.training_frame(feast, "propensity_v1", entities)
    assert len(frame) == len(entities)
    for table, cols in [("risk", ["credit_score", "missed_payments_90d"]),
                        ("engagement", ["logins_30d", "last_contact_epoch_s"]),
                        ("rfm", ["recency_days", "rfm_segment"]),
                        ("profile", ["has_mortgage", "tenure_months"])]:
        expected = _asof(pd.read_parquet(sim_dir / f"{table}.parquet"), entities)
        for col in cols:
            np.testing.assert_array_equal(frame[col].to_numpy(), expected[col].to_numpy(), err_msg=col)


def test_features_change_between_snapshots_so_the_join_matters(sim_dir: Path):
    risk = pd.read_parquet(sim_dir / "risk.parquet")
    per_customer = risk.groupby(schemas.ENTITY_KEY)["credit_score"].nunique()
    assert (per_customer > 1).mean() > 0.5


def test_no_value_stamped_after_the_entity_timestamp_leaks(tmp_path: Path, sim_dir: Path):
    """Every snapshot after a cut-off gets a sentinel; entities before it must never see one."""
    poisoned = tmp_path / "poisoned"
    shutil.copytree(sim_dir, poisoned)
    risk = pd.read_parquet(poisoned / "risk.parquet")
    stamps = sorted(risk[schemas.EVENT_TS].unique())
    cutoff = stamps[3]
    after = risk[schemas.EVENT_TS] >= cutoff
    risk.loc[after, "credit_score"] = -999
    risk.to_parquet(poisoned / "risk.parquet", index=False)
    settings = Settings(home=PROJECT_ROOT, work_dir=tmp_path / "work")
    store.apply(settings, poisoned)

    ids = risk.loc[after, schemas.ENTITY_KEY].unique()[:200]
    just_before = pd.DataFrame({schemas.ENTITY_KEY: ids, schemas.EVENT_TS: cutoff - pd.Timedelta(seconds=1)})
    at_cutoff = pd.DataFrame({schemas.ENTITY_KEY: ids, schemas.EVENT_TS: cutoff})
    before = store.training_frame(settings, "churn_v1", just_before)
    assert (before["credit_score"] != -999).all()
    assert before["credit_score"].notna().all()
    on = store.training_frame(settings, "churn_v1", at_cutoff)
    assert (on["credit_score"] == -999).all()  # a snapshot stamped at the entity time is known then


def test_stale_snapshots_past_the_ttl_are_not_served(feast: Settings, sim_dir: Path):
    profile = pd.read_parquet(sim_dir / "profile.parquet", columns=[schemas.ENTITY_KEY, schemas.EVENT_TS])
    late = profile[schemas.EVENT_TS].max() + pd.Timedelta(days=200)
    ids = profile[schemas.ENTITY_KEY].unique()[:20]
    frame = store.training_frame(feast, "clv_v1", pd.DataFrame({schemas.ENTITY_KEY: ids, schemas.EVENT_TS: late}))
    assert frame["monetary"].isna().all()


def test_on_demand_view_uses_the_request_time(feast: Settings, sim_dir: Path):
    entities = _entities(sim_dir, 50, seed=2)
    frame = store.training_frame(feast, "serving_v1", entities)
    request_s = (frame[schemas.EVENT_TS] - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)
    expected = (request_s - frame["last_contact_epoch_s"]) / 86400.0
    np.testing.assert_allclose(frame["days_since_last_contact"], expected)
    assert (frame["days_since_last_contact"] >= 0).all()
    assert frame["hour_of_day"].between(0, 23).all()
    weekday = frame[schemas.EVENT_TS].dt.dayofweek
    np.testing.assert_array_equal(frame["is_weekend"], (weekday >= 5).astype(int))


def test_online_read_returns_the_latest_snapshot(feast: Settings, sim_dir: Path):
    risk = pd.read_parquet(sim_dir / "risk.parquet")
    engagement = pd.read_parquet(sim_dir / "engagement.parquet")
    latest = risk.sort_values(schemas.EVENT_TS).groupby(schemas.ENTITY_KEY).tail(1).set_index(schemas.ENTITY_KEY)
    last_ts = risk[schemas.EVENT_TS].max()
    ids = latest[latest[schemas.EVENT_TS] == last_ts].index[:25].tolist()
    request_ts = int(last_ts.timestamp()) + 3 * 86400
    got = store.online_features(feast, "serving_v1", ids, request_ts=request_ts)
    assert got["customer_id"] == ids
    assert got["credit_score"] == latest.loc[ids, "credit_score"].tolist()
    last_contact = engagement[engagement[schemas.EVENT_TS] == last_ts].set_index(schemas.ENTITY_KEY)
    expected_days = (request_ts - last_contact.loc[ids, "last_contact_epoch_s"]) / 86400.0
    np.testing.assert_allclose(got["days_since_last_contact"], expected_days.to_numpy())


def test_online_read_of_an_unknown_customer_is_empty_not_an_error(feast: Settings):
    got = store.online_features(feast, "serving_v1", [987_654_321])
    assert got["credit_score"] == [None]


def test_unknown_feature_service_names_the_known_ones(feast: Settings, sim_dir: Path):
    with pytest.raises(FeatureStoreError, match=r"unknown feature service 'propensity_v9'.*propensity_v1"):
        store.training_frame(feast, "propensity_v9", _entities(sim_dir, 3, seed=3))


def test_entity_frame_without_timestamp_is_rejected(tmp_path: Path):
    path = tmp_path / "entities.csv"
    pd.DataFrame({schemas.ENTITY_KEY: [1, 2]}).to_csv(path, index=False)
    with pytest.raises(FeatureStoreError, match=r"entities.csv: missing column 'event_timestamp'"):
        store.read_entities(path)


def test_missing_sources_fail_before_anything_is_registered(tmp_path: Path):
    settings = Settings(home=PROJECT_ROOT, work_dir=tmp_path / "work")
    with pytest.raises(FeatureStoreError, match=r"not found in .*empty.*nba data simulate"):
        store.apply(settings, tmp_path / "empty")
    assert not (settings.feast_repo / "data" / "registry.db").exists()


def test_a_source_with_a_missing_column_is_rejected_naming_it(tmp_path: Path, sim_dir: Path):
    bad = tmp_path / "bad"
    shutil.copytree(sim_dir, bad)
    risk = pd.read_parquet(bad / "risk.parquet").drop(columns=["credit_score"])
    risk.to_parquet(bad / "risk.parquet", index=False)
    settings = Settings(home=PROJECT_ROOT, work_dir=tmp_path / "work")
    with pytest.raises(Exception, match=r"table 'risk' in .*risk.parquet: missing column\(s\) \['credit_score'\]"):
        store.apply(settings, bad)


# --- the decision service's online reader: the adapter's fast path and the public fallback ---------


def _fresh_ids_and_time(sim_dir: Path) -> tuple[list[int], int, int]:
    risk = pd.read_parquet(sim_dir / "risk.parquet", columns=[schemas.ENTITY_KEY, schemas.EVENT_TS])
    last_ts = risk[schemas.EVENT_TS].max()
    ids = risk.loc[risk[schemas.EVENT_TS] == last_ts, schemas.ENTITY_KEY].unique()[:25].tolist()
    return [int(c) for c in ids], int(last_ts.timestamp()) + 3 * 86400, int(last_ts.timestamp()) + 200 * 86400


def test_the_readers_fast_and_public_paths_give_what_get_online_features_gives(feast: Settings, sim_dir: Path,
                                                                                 monkeypatch):
    """The one-query SQLite read (`feast_adapter`) and the provider's public `online_read` give
    the values `FeatureStore.get_online_features` gives, for known, unknown and repeated
    customers; and the same as each other per customer request time, stale ones included
    (past the views' TTL at the request time: missing), and across query chunks."""
    from nba.features.online import OnlineFeatureReader

    fresh, now, late = _fresh_ids_and_time(sim_dir)
    ids = [*fresh, 987_654_321, fresh[0]]
    fast = OnlineFeatureReader(feast, "serving_v1")
    public = OnlineFeatureReader(feast, "serving_v1", fast=False)
    assert fast.fast and not public.fast

    cols, found = fast.read(ids, now)
    reference = store.online_features(feast, "serving_v1", ids, request_ts=now)
    assert cols == {k: v for k, v in reference.items() if k != schemas.ENTITY_KEY}
    assert found == [True] * len(fresh) + [False, True]
    assert cols["credit_score"][0] is not None and cols["credit_score"][-2] is None
    assert public.read(ids, now) == (cols, found)

    times = [now if i % 2 else late for i in range(len(ids))]
    mixed = fast.read(ids, times)
    assert mixed == public.read(ids, times)
    assert mixed[1] == [bool(i % 2) and c != 987_654_321 for i, c in enumerate(ids)]
    assert all(v is None for v in mixed[0]["credit_score"][0::2])

    from nba.features import feast_adapter

    monkeypatch.setattr(feast_adapter.SqliteViews, "CHUNK", 7)  # several queries for one read
    assert fast.read(ids, now) == (cols, found)


def test_outside_the_tested_feast_versions_the_reader_falls_back_to_online_read_with_one_warning(
        feast: Settings, sim_dir: Path, monkeypatch, caplog):
    import logging

    from nba.features import feast_adapter
    from nba.features.online import OnlineFeatureReader

    fresh, now, _ = _fresh_ids_and_time(sim_dir)
    expected = OnlineFeatureReader(feast, "serving_v1").read(fresh, now)

    monkeypatch.setattr(feast_adapter, "FEAST_VERSION", "0.68.0")  # what importlib.metadata would report
    monkeypatch.setattr(feast_adapter, "_WARNED", set())
    with caplog.at_level(logging.WARNING, logger=feast_adapter.__name__):
        readers = [OnlineFeatureReader(feast, "serving_v1") for _ in range(2)]
    warnings = [r.getMessage() for r in caplog.records if r.name == feast_adapter.__name__]
    assert len(warnings) == 1
    assert "feast 0.68.0 is installed" in warnings[0] and "feast>=0.67,<0.68" in warnings[0]
    assert not any(r.fast for r in readers)
    assert readers[0].read(fresh, now) == expected


def test_the_version_check_accepts_exactly_the_tested_range(monkeypatch):
    from nba.features import feast_adapter

    monkeypatch.setattr(feast_adapter, "_WARNED", set())
    assert [feast_adapter.version_supported(v) for v in ("0.67.0", "0.67.12", "0.67.1rc1")] == [True] * 3
    assert [feast_adapter.version_supported(v) for v in ("0.66.9", "0.68.0", "1.67.0", "nightly")] == [False] * 4


def test_the_tested_feast_range_is_the_range_pyproject_requires_and_the_installed_one():
    import importlib.metadata
    import tomllib

    from nba.features import feast_adapter

    project = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]
    feast_req = [d for d in project["dependencies"] if d.startswith("feast")]
    assert len(feast_req) == 1 and feast_req[0].endswith(feast_adapter.TESTED_RANGE), feast_req
    assert importlib.metadata.version("feast") == feast_adapter.FEAST_VERSION
    assert feast_adapter.version_supported()  # the pinned Feast takes the fast path
