"""Drift monitoring for real: Evidently reports on the simulator's snapshots, a champion trained
into a temporary MLflow store, a decision log written through its own API, the CLI as a process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from nba.config import load_gates
from nba.errors import ConfigError, SchemaError
from nba.evaluation import dashboards, drift
from nba.settings import Settings
from tests.conftest import PROJECT_ROOT
from tests.constants import SEED

KEYS = ["customer_id", "event_timestamp"]
ACTION = "travel_notification"
MODEL = f"nba-propensity-{ACTION}"


@pytest.fixture(scope="module")
def snapshots() -> pd.DataFrame:
    """Monthly feature snapshots of a simulated 2,000-customer bank (one row per customer and month)."""
    from nba.data.simulator import SimulationConfig, simulate

    r = simulate(SimulationConfig(customers=2000, seed=SEED))
    return r.profile.merge(r.rfm, on=KEYS).merge(r.engagement, on=KEYS).merge(r.risk, on=KEYS)


@pytest.fixture(scope="module")
def limits():
    return load_gates(PROJECT_ROOT / "evaluation" / "gates.yaml").monitoring.drift


def months(frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    stamps = sorted(frame["event_timestamp"].unique())
    prev, last = (frame[frame["event_timestamp"] == s].assign(prediction=0.1) for s in stamps[-2:])
    return prev, last


# A mix of the bank's feature kinds (Evidently renders a few plots per column: the tests keep
# to a dozen columns; the benchmark times thirty).
FEATURES = ["age", "income", "tenure_months", "region", "has_email", "num_products", "recency_days", "monetary",
            "rfm_segment", "email_open_rate", "credit_score", "debt_to_income"]


def features(frame: pd.DataFrame) -> list[str]:
    return [c for c in FEATURES if c in frame.columns]


def test_consecutive_months_do_not_drift_and_a_shifted_feature_does(snapshots, limits):
    reference, current = months(snapshots)
    feats = features(reference)
    same, _ = drift.compare(reference, current, feats, limits, model="m")
    assert same.features and not same.drifted_features
    assert not same.exceeded and same.drift_share == 0.0
    assert same.prediction is not None and not same.prediction.drifted

    shifted, snapshot = drift.compare(reference, current.assign(income=current["income"] * 1.5), feats, limits,
                                      model="m")
    assert [f.feature for f in shifted.drifted_features] == ["income"]
    income = shifted.drifted_features[0]
    assert (income.kind, income.method) == ("numerical", "wasserstein") and income.score > 0.5
    # one feature of 31 is within max_drift_share: reported, but not beyond the limits
    assert not shifted.exceeded
    assert any("income" in line for line in shifted.lines())
    # the snapshot holds Evidently's own verdict and ours, labelled by model
    values = {(r.metric_value_location.metric.params["type"].rsplit(":", 1)[-1],
               r.metric_value_location.metric.params.get("column", "")): r for r in snapshot.metric_results.values()}
    assert values[("FeatureDriftShare", "")].value == pytest.approx(1 / len(feats))
    assert values[("ValueDrift", "income")].value == pytest.approx(income.score)


def test_drift_beyond_the_limits_many_features_or_the_prediction(snapshots, limits):
    reference, current = months(snapshots)
    feats = features(reference)
    numeric = [f for f in feats if pd.api.types.is_numeric_dtype(current[f])]
    moved = current.assign(**{c: current[c] * 2 + 1 for c in numeric})
    many, _ = drift.compare(reference, moved, feats, limits, model="m")
    assert many.drift_share > limits.max_drift_share and many.exceeded
    scores, _ = drift.compare(reference, current.assign(prediction=0.3), feats, limits, model="m")
    assert not scores.drifted_features and scores.prediction_drifted and scores.exceeded


def test_sampling_is_stated_in_the_report(snapshots, limits, tmp_path: Path):
    reference, current = months(snapshots)
    small = limits.model_copy(update={"sample_rows": 500})
    feats = features(reference)[:8]
    result, snapshot = drift.compare(reference, current, feats, small, model="m")
    assert result.compared_reference_rows == result.compared_current_rows == 500
    assert result.reference_rows == len(reference) > 500
    assert "seeded uniform random sample without replacement of at most 500 rows" in result.sampling
    html = tmp_path / "r.html"
    snapshot.save_html(str(html))
    assert "seeded uniform random sample without replacement" in html.read_text()
    # the same seed draws the same rows
    again, _ = drift.compare(reference, current, feats, small, model="m")
    assert [f.score for f in again.features] == [f.score for f in result.features]


def test_categories_compare_by_value_and_a_new_category_drifts(limits):
    """A 0/1 flag read back as floats with some missing values is the same flag; a region the
    reference never saw is drift."""
    rng = np.random.default_rng(SEED)
    n = 3000
    reference = pd.DataFrame({"region": rng.choice(["north", "south"], n), "flag": rng.integers(0, 2, n),
                              "x": rng.normal(size=n), "prediction": 0.1})
    current = pd.DataFrame({"region": rng.choice(["north", "south", "abroad"], n),
                            "flag": rng.integers(0, 2, n).astype(float), "x": rng.normal(size=n), "prediction": 0.1})
    current.loc[:99, "flag"] = np.nan
    result, _ = drift.compare(reference, current, ["region", "flag", "x"], limits, model="m")
    verdict = {f.feature: (f.kind, f.drifted) for f in result.features}
    assert verdict == {"region": ("categorical", True), "flag": ("categorical", False), "x": ("numerical", False)}


def test_bad_frames_name_the_frame_and_the_column(snapshots, limits):
    reference, current = months(snapshots)
    with pytest.raises(SchemaError, match=r"served\.parquet: missing column\(s\) \['income'\] of m"):
        drift.compare(reference, current.drop(columns=["income"]), features(reference), limits, model="m",
                      current_source="served.parquet")
    with pytest.raises(drift.DriftError, match=r"current frame has 10 rows; drift needs at least 200"):
        drift.compare(reference, current.head(10), features(reference), limits, model="m")


def test_unknown_monitoring_key_is_refused_with_the_file_and_key(tmp_path: Path):
    text = (PROJECT_ROOT / "evaluation" / "gates.yaml").read_text().replace("max_drift_share:", "max_share:")
    path = tmp_path / "gates.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=r"gates.yaml: key 'monitoring.drift.max_share': unknown key"):
        load_gates(path)


# --- a champion, the decision log and the CLI ----------------------------------------------


def decision_log(folder: Path, served: pd.DataFrame, propensity: np.ndarray, batch: str = "b1") -> Path:
    """A decision log holding one batch: one decision per served row, the action a candidate
    with its served propensity (written through the log's own API)."""
    from nba import records
    from nba.stores.decisions.sqlite import write_batch

    n = len(served)
    ids = [f"{i:032x}" for i in range(n)]
    decided = pd.Timestamp("2026-11-01", tz="UTC") + pd.to_timedelta(np.arange(n), unit="min")
    decisions = pd.DataFrame({
        "decision_id": ids, "customer_id": np.arange(n, dtype="int64"), "channel": "email",
        "decided_at": decided, "experiment_group": "nba", "action_id": ACTION, "probability": 1.0,
        "propensity": propensity, "value": 1.0, "lever": 0.0, "priority": propensity, "uplift": np.nan,
        "n_candidates": 1, "features_missing": 0, "catalog_version": "test", "source": "batch",
    })
    assert list(decisions.columns) == list(records.DECISION.dtypes)
    candidates = pd.DataFrame({"decision_id": ids, "action_id": ACTION, "rank": 1, "propensity": propensity,
                               "value": 1.0, "lever": 0.0, "priority": propensity, "uplift": np.nan})
    filtered = pd.DataFrame({"decision_id": pd.Series([], dtype=str), "action_id": pd.Series([], dtype=str),
                             "stage": pd.Series([], dtype=str), "rule": pd.Series([], dtype=str)})
    feats = served.reset_index(drop=True).copy()
    feats.insert(0, "decision_id", ids)
    write_batch(folder, batch, {"decisions": decisions, "candidates": candidates, "filtered": filtered,
                                "features": feats})
    return folder


@pytest.fixture
def champion_env(train_env: Settings) -> Settings:
    """One propensity model trained for real and made @champion in the test's MLflow store."""
    from nba.training import propensity, tracking

    (model,) = propensity.train_propensity(train_env, [ACTION], strategy="per_action")
    tracking.configure(train_env).set_registered_model_alias(MODEL, "champion", model.version)
    return train_env


def cli(args: list[str], settings: Settings) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NBA_")}
    env.update(NBA_HOME=str(PROJECT_ROOT), NBA_WORK_DIR=str(settings.work), NBA_MLFLOW_DIR=str(settings.mlflow_path))
    return subprocess.run([sys.executable, "-m", "nba", *args], env=env, cwd=PROJECT_ROOT, capture_output=True,
                          text=True, timeout=300)


@pytest.mark.slow
@pytest.mark.integration
def test_champion_drift_from_the_decision_log_and_a_shifted_batch(champion_env: Settings, tmp_path: Path):
    from nba.evaluation.champions import load_champion
    from nba.training import tracking

    settings = champion_env
    champion = load_champion(settings, MODEL)
    # the run logged a sample of its training frame: the drift reference
    assert champion.artifact == "evaluation/reference.parquet" and "training frame sample" in champion.source
    client = tracking.configure(settings)
    assert int(client.get_run(champion.run_id).data.params["reference.rows"]) == len(champion.frame)

    # Served: the rows of the training frame's own sample, scored by the champion, logged as decisions
    served = champion.frame[champion.inputs].sample(frac=1.0, random_state=1).reset_index(drop=True)
    decision_log(settings.decision_log_dir, served, champion.predict(served))
    run = drift.evaluate_drift(settings, [MODEL])
    (result,) = run.results
    assert not result.exceeded and not result.drifted_features
    # the moment of the decision is not compared (monitoring.drift.ignore)
    assert result.ignored_features == ("hour_of_day", "is_weekend")
    assert not {"hour_of_day", "is_weekend"} & {f.feature for f in result.features}
    assert "decision log" in result.current_source and "served propensity" in result.current_source
    assert result.prediction is not None and result.prediction.score < 0.01
    # published: snapshot in the propensity project, HTML + JSON, the HTML on the champion's run
    assert Path(result.html).is_file() and Path(result.html).with_suffix(".json").is_file()
    assert result.mlflow_run_id == champion.run_id
    logged = {a.path for a in client.list_artifacts(champion.run_id, "evaluation/reports")}
    assert f"evaluation/reports/{Path(result.html).name}" in logged
    rows = [r for r in dashboards.read_values(dashboards.open_workspace(settings), "propensity")
            if r["metric"] == "FeatureDriftShare"]
    assert [(r["labels"]["model"], r["value"]) for r in rows] == [(MODEL, 0.0)]
    points = dashboards.panel_points(dashboards.open_workspace(settings), "propensity")
    assert {("Overview", "Share of drifted features"), ("Overview", "Prediction drift score"),
            (MODEL, f"{MODEL}: drift score per feature")} <= set(points)
    assert all(n > 0 for n in points.values()), points  # no panel plots nothing

    # A batch frame with moved incomes and credit scores: the CLI names them and exits 3
    shifted = served.assign(income=served["income"] * 2, credit_score=served["credit_score"] - 150,
                            debt_to_income=served["debt_to_income"] + 1, email_open_rate=served["email_open_rate"] / 3)
    moved = [c for c in ("income", "credit_score", "debt_to_income", "email_open_rate") if c in champion.inputs]
    assert len(moved) == 4
    for col in champion.inputs:  # and every other number, to pass max_drift_share
        if col not in moved and pd.api.types.is_numeric_dtype(shifted[col]):
            shifted[col] = shifted[col] * 2 + 1
    batch = tmp_path / "batch.parquet"
    shifted.to_parquet(batch)
    summary = tmp_path / "summary.json"
    proc = cli(["evaluate", "drift", "--model", MODEL, "--current", str(batch), "--json", str(summary)], settings)
    assert proc.returncode == drift.EXIT_DRIFT, proc.stderr
    assert f"{MODEL} v{champion.version}: DRIFT" in proc.stdout
    for col in moved:
        assert f"drifted: {col} (numerical) wasserstein" in proc.stdout
    (data,) = json.loads(summary.read_text())
    assert data["exceeded"] and set(moved) <= set(data["drifted"])
    assert data["drift_share"] > data["max_drift_share"]

    # bad input: one line naming the file; an unknown model names the registered ones
    missing = cli(["evaluate", "drift", "--model", MODEL, "--current", str(tmp_path / "nope.parquet")], settings)
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
    assert missing.stderr.strip().splitlines() == [
        f"error: current frame {tmp_path / 'nope.parquet'} does not exist (expected a Parquet or CSV file)"]
    from nba.evaluation.reporting import ReportError

    with pytest.raises(ReportError, match=rf"model 'nba-propensity-nope' has no @champion version .*{MODEL}"):
        drift.evaluate_drift(settings, ["nba-propensity-nope"], current=batch)
