"""Publishing evaluations for real: Evidently snapshots in a temporary workspace read back, HTML
logged to a real (SQLite) MLflow run, uplift as Evidently metrics against the simulator's
truth, `nba report` as a process and `evidently ui` serving the workspace over HTTP."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from nba.errors import ConfigError
from nba.evaluation import dashboards
from nba.evaluation.reporting import ReportError, publish
from nba.settings import TELEMETRY_OFF, Settings
from tests.conftest import PROJECT_ROOT
from tests.constants import SEED

T0 = datetime(2026, 11, 1, tzinfo=UTC)
LIFTS = [0.010, 0.014, 0.012]


def publish_days(settings: Settings, lifts=LIFTS) -> list:
    """Three daily incrementality evaluations, as `nba evaluate incrementality` publishes them."""
    arms = pd.DataFrame({"arm": ["holdout", "nba"], "customers": [1000, 9000], "rate": [0.10, 0.11]})
    return [publish(settings, project="platform", name="incrementality",
                    values={"incrementality.overall.lift": lift, "policy.learned.value": 2.0 + i},
                    tables={"arms": arms}, description="test", timestamp=T0 + timedelta(days=i))
            for i, lift in enumerate(lifts)]


def test_published_values_read_back_in_order_with_their_panels(settings: Settings):
    published = publish_days(settings)
    assert len({p.snapshot_id for p in published}) == 3 and len({p.project_id for p in published}) == 1
    for p in published:
        assert p.html.is_file() and p.html.parent == settings.reports_dir / "platform"
        assert p.mlflow_run_id is None
    assert "incrementality.overall.lift" in published[0].html.read_text()

    ws = dashboards.open_workspace(settings)
    rows = [r for r in dashboards.read_values(ws, "platform") if r["metric"] == "NbaValue"]
    lifts = [(r["timestamp"], r["value"]) for r in rows if r["labels"]["name"] == "incrementality.overall.lift"]
    assert [v for _, v in lifts] == pytest.approx(LIFTS)
    assert [t for t, _ in lifts] == [(T0 + timedelta(days=i)).replace(tzinfo=None) for i in range(3)]
    # the value is the series' point, not one of its labels: one series per name
    assert rows[0]["labels"] == {"name": "incrementality.overall.lift", "group": "incrementality", "model": ""}
    tables = [r for r in dashboards.read_values(ws, "platform") if r["metric"] == "NbaTable"]
    assert [r["value"] for r in tables] == [2, 2, 2]

    (project,) = ws.search_project("platform")
    model = project.dashboard.model()
    assert [t.title for t in model.tabs] == ["Overview"]
    by_title = {p.title: p for p in model.panels}
    assert set(by_title) == {"Incremental value over the universal hold-out", "Policy value (off-policy estimates)"}
    series = by_title["Incremental value over the universal hold-out"].values[0]
    assert (series.metric, series.metric_labels) == ("evidently:metric_v2:NbaValue", {"group": "incrementality"})
    assert dashboards.panel_points(ws, "platform") == {
        ("Overview", "Incremental value over the universal hold-out"): 3,
        ("Overview", "Policy value (off-policy estimates)"): 3}


def test_publish_refuses_what_it_cannot_store(settings: Settings):
    with pytest.raises(ConfigError, match="Evidently project 'marketing' is unknown; expected one of propensity"):
        publish(settings, project="marketing", name="x", values={"a.b": 1.0})
    with pytest.raises(ReportError, match=r"value 'incrementality.lift' = nan is not finite"):
        publish(settings, project="platform", name="incrementality", values={"incrementality.lift": float("nan")})
    with pytest.raises(ReportError, match=r"value 'policy.value' = 'high' is not a number"):
        publish(settings, project="platform", name="policy", values={"policy.value": "high"})
    # nothing half-written
    assert not settings.reports_dir.exists()


@pytest.mark.integration
def test_report_is_logged_to_the_champion_run(settings: Settings):
    from sklearn.linear_model import LogisticRegression

    from nba.training import tracking

    X = pd.DataFrame({"x": np.linspace(-1, 1, 40)})
    y = (X["x"] > 0).astype(int).to_numpy()
    with tracking.training_run(settings, "propensity", "tiny") as run:
        uri = tracking.log_model(LogisticRegression().fit(X, y), X)
    name = "nba-propensity-tiny"
    tracking.register(settings, uri, name, alias="champion")

    published = publish(settings, project="platform", name="policy", values={"policy.learned.value": 1.25},
                        model=name)
    assert published.mlflow_run_id == run.info.run_id
    client = tracking.configure(settings)
    (artifact,) = client.list_artifacts(run.info.run_id, "evaluation/reports")
    assert artifact.path == f"evaluation/reports/{published.html.name}"
    local = client.download_artifacts(run.info.run_id, artifact.path, str(settings.work / "dl"))
    assert Path(local).read_text() == published.html.read_text()
    # the value is labelled with the model it judges
    rows = dashboards.read_values(dashboards.open_workspace(settings), "platform")
    assert [r["labels"]["model"] for r in rows if r["metric"] == "NbaValue"] == [name]

    snapshots_before = len(rows)
    with pytest.raises(ReportError, match=r"model 'nba-propensity-other' has no @champion version .*"
                                          r"registered models: nba-propensity-tiny"):
        publish(settings, project="platform", name="policy", values={"policy.learned.value": 1.0},
                model="nba-propensity-other")
    assert len(dashboards.read_values(dashboards.open_workspace(settings), "platform")) == snapshots_before


# --- uplift as Evidently metrics ---------------------------------------------------------


def randomised(n: int, seed: int) -> pd.DataFrame:
    """A randomised experiment with a known uplift tau = 0.25 tanh(2 x) and a noisy prediction of it."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(-2, 2, n)
    t = rng.integers(0, 2, n)
    tau = 0.25 * np.tanh(2 * x)
    y = (rng.random(n) < np.where(t == 1, 0.45 + tau, 0.45)).astype(int)
    return pd.DataFrame({"uplift": tau + rng.normal(0, 0.05, n), "treated": t, "label": y, "true_uplift": tau})


def test_uplift_metrics_are_the_training_metrics_and_reach_the_dashboard(settings: Settings):
    from nba.evaluation.reporting import publish_snapshot
    from nba.evaluation.uplift import uplift_report
    from nba.training.metrics import auuc, qini_coefficient
    from nba.training.uplift import uplift_at_top

    frame = randomised(4000, SEED)
    u, y, t = frame["uplift"], frame["label"], frame["treated"]
    result, snapshot = uplift_report(frame, model="nba-uplift-test", data="synthetic", top_shares=[0.1, 0.3])
    m = result.metrics
    assert m["qini"] == pytest.approx(qini_coefficient(u, y, t))
    assert m["auuc"] == pytest.approx(auuc(u, y, t))
    assert m["uplift_top10"] == pytest.approx(uplift_at_top(u.to_numpy(), y.to_numpy(), t.to_numpy(), 0.1))
    # a ranking by the true effect: positive Qini and AUUC, the top decile far above the average
    assert m["qini"] > 0.01 and m["auuc"] > 0.01
    assert m["uplift_top10"] > 0.2 > abs(result.observed_uplift)
    assert m["truth_corr"] > 0.95 and m["truth_mae"] < 0.05
    # random scores: no better than random targeting
    noise, _ = uplift_report(frame.assign(uplift=np.random.default_rng(1).random(len(frame))), model="noise",
                             data="synthetic")
    assert abs(noise.metrics["qini"]) < 0.005 and abs(noise.metrics["truth_corr"]) < 0.05

    publish_snapshot(settings, project="uplift", snapshot=snapshot, panels=dashboards.uplift_panels())
    rows = dashboards.read_values(dashboards.open_workspace(settings), "uplift")
    stored = {(r["metric"], str(r["labels"].get("share", ""))): r["value"] for r in rows}
    assert stored[("QiniCoefficient", "")] == pytest.approx(m["qini"])
    assert stored[("UpliftAtTop", "0.3")] == pytest.approx(m["uplift_top30"])
    assert stored[("UpliftTruthCorrelation", "")] == pytest.approx(m["truth_corr"])
    points = dashboards.panel_points(dashboards.open_workspace(settings), "uplift")
    assert len(points) == 5 and all(n > 0 for n in points.values()), points


def exploration_data(action: str = "travel_notification"):
    """The exploration decisions of a simulated bank for one action (contacted or not at random),
    with the features as of each decision and the truth behind it, as the uplift training takes
    them (the Feast join is left out: the bank's monthly snapshots are joined as of each decision)."""
    from nba.data.simulator import SimulationConfig, simulate
    from nba.training import uplift

    bank = simulate(SimulationConfig(customers=6000, seed=SEED, explore_share=1.0, contact_rate=1.0))
    keys = ["customer_id", "event_timestamp"]
    snaps = (bank.profile.merge(bank.rfm, on=keys).merge(bank.engagement, on=keys).merge(bank.risk, on=keys)
             .sort_values("event_timestamp"))
    inter = bank.interactions
    explored = inter[(inter["policy"] == "explore") & (inter["action_id"] == action)]
    frame = pd.merge_asof(explored.sort_values("event_timestamp"), snaps, on="event_timestamp", by="customer_id")
    frame = frame.assign(label=frame["converted"], true_uplift=frame["true_p_treated"] - frame["true_p_control"])
    features = [c for c in snaps.columns if c not in keys]
    part = (frame["customer_id"] % 10).map(lambda d: 2 if d < 4 else (1 if d < 6 else 0)).to_numpy("int8")
    info = {"source": "sim", "feature_service": "propensity_v1", "feature_service_version": "v1",
            "outcome": "converted", "rows": len(frame)}
    return uplift.UpliftData("sim", action, frame.reset_index(drop=True), features, part, info)


@pytest.mark.slow
@pytest.mark.integration
def test_uplift_champion_recovers_the_simulator_truth(settings: Settings):
    """An uplift model trained by the project's own training run on exploration decisions and
    made @champion: `evaluate_uplift` scores the run's held-out part (customers never trained
    on) with the Evidently metrics; the Qini agrees with the run's, and the prediction recovers
    true_p_treated - true_p_control. Measured (seed 7, 3,141 held-out decisions, S-learner):
    correlation 0.64, MAE 0.055 against 0.074 for the best constant."""
    from nba.evaluation.uplift import evaluate_uplift
    from nba.training import tracking, uplift
    from nba.training.config import load_model_config

    cfg = load_model_config(PROJECT_ROOT, "uplift")
    cfg = cfg.model_copy(update={
        "params": {**cfg.params, "n_estimators": 100, "max_depth": 2, "learning_rate": 0.05, "min_child_weight": 20},
        "options": {**cfg.options, "learners": ["s_learner"], "simulator_params": {}}})
    data = exploration_data()
    trained = uplift.train_action(settings, cfg, data)
    client = tracking.configure(settings)
    client.set_registered_model_alias(trained.name, "champion", trained.version)

    (result,) = evaluate_uplift(settings).results
    assert result.model == "nba-uplift-travel_notification"
    assert result.data == "simulator exploration decisions, test part"
    run_metrics = client.get_run(trained.run_id).data.metrics
    assert result.rows == run_metrics["holdout_rows"] > 3000
    assert result.metrics["qini"] == pytest.approx(run_metrics["holdout_qini"])
    assert result.metrics["truth_corr"] == pytest.approx(run_metrics["holdout_uplift_corr_vs_truth"])
    truth = data.rows("test")["true_uplift"].to_numpy()
    assert result.metrics["truth_corr"] > 0.4
    assert result.metrics["truth_mae"] < float(np.mean(np.abs(truth - truth.mean())))
    assert result.metrics["qini"] > 0
    logged = {a.path for a in client.list_artifacts(trained.run_id, "evaluation/reports")}
    assert f"evaluation/reports/{Path(result.html).name}" in logged
    rows = dashboards.read_values(dashboards.open_workspace(settings), "uplift")
    assert {r["labels"]["model"] for r in rows if r["metric"] == "UpliftTruthMAE"} == {trained.name}


# --- nba report and evidently ui ------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(url: str, body: dict | None = None) -> object:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=5) as resp:
        return json.loads(resp.read())


@pytest.mark.slow
@pytest.mark.integration
def test_nba_report_and_evidently_ui_show_the_trend(settings: Settings):
    from typer.testing import CliRunner

    from nba.cli.app import app

    publish_days(settings)
    # in process (tests/test_drift.py runs the CLI as a process; importing the stack twice more
    # would double this test's time)
    env = {"NBA_HOME": str(PROJECT_ROOT), "NBA_WORK_DIR": str(settings.work),
           "NBA_MLFLOW_DIR": str(settings.mlflow_path), "NBA_DATA_DIR": None}
    proc = CliRunner().invoke(app, ["report", "--port", "8123"], env=env)
    assert proc.exit_code == 0, proc.output
    out = proc.stdout
    assert f"skipped: no decision log at {settings.decision_log_dir}" in out
    assert "incrementality.overall.lift" in out and "0.012" in out
    assert f"Evidently workspace: {settings.evidently_workspace} (projects: platform)" in out
    assert f"DO_NOT_TRACK=true evidently ui --workspace {settings.evidently_workspace} --port 8123" in out

    # the printed command opens the workspace: projects over HTTP, and the panel's series
    port = free_port()
    exe = Path(sys.executable).parent / "evidently"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "evidently"]
    ui = subprocess.Popen([*cmd, "ui", "--workspace", str(settings.evidently_workspace), "--port", str(port)],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                          env={**os.environ, **TELEMETRY_OFF})
    try:
        base = f"http://127.0.0.1:{port}/api"
        deadline = time.monotonic() + 90
        while True:
            try:
                projects = http(f"{base}/projects")
                break
            except OSError:
                if time.monotonic() > deadline or ui.poll() is not None:
                    raise
                time.sleep(0.5)
        assert [p["name"] for p in projects] == ["platform"]
        (project,) = projects
        ws = dashboards.open_workspace(settings)
        panel = next(p for p in ws.search_project("platform")[0].dashboard.model().panels
                     if p.title.startswith("Incremental value"))
        flt = [{"tags": [], "metadata": {}, "metric": v.metric, "metric_labels": v.metric_labels}
               for v in panel.values]
        series = http(f"{base}/v2/snapshots/{project['id']}/data_series_batch", {"series_filter": flt})
        (lift,) = [s for s in series["series"] if s["params"].get("name") == "incrementality.overall.lift"]
        assert lift["values"] == pytest.approx(LIFTS)
        assert len(series["sources"]) == 3
    finally:
        ui.terminate()
        try:
            ui.wait(timeout=20)
        except subprocess.TimeoutExpired:
            ui.kill()
            ui.wait()

