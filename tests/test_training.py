"""Propensity and churn training, for real: Feast frames, XGBoost, MLflow runs and registry."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from nba.errors import ConfigError
from nba.settings import Settings
from nba.training import propensity, tracking
from nba.training.churn import train_churn
from nba.training.classifier import fit_classifier
from nba.training.config import load_model_config
from nba.training.frames import propensity_frame
from nba.training.models import CalibratedXGBClassifier, ModelDataError

pytestmark = [pytest.mark.slow, pytest.mark.integration]

ACTIONS = ["travel_notification", "mobile_app"]


def _client(settings: Settings) -> MlflowClient:
    return tracking.configure(settings)


def test_propensity_models_are_logged_with_provenance_and_registered(train_env: Settings):
    models = propensity.train_propensity(train_env, ACTIONS, strategy="per_action")
    assert [m.name for m in models] == [f"nba-propensity-{a}" for a in ACTIONS]
    client = _client(train_env)
    for m in models:
        version = client.get_model_version_by_alias(m.name, "challenger")
        assert str(version.version) == m.version == "1"
        run = client.get_run(m.run_id)
        assert run.info.status == "FINISHED"
        params, metrics, tags = run.data.params, run.data.metrics, run.data.tags
        assert params["frame.feature_service"] == "propensity_v1"
        assert params["frame.feature_service_version"] == "v1"
        assert len(params["frame.digest"]) == 64
        assert int(params["frame.holdout_rows"]) > 0 and int(params["frame.train_rows"]) > 0
        assert "14 days" in params["frame.label_definition"]
        assert tags["nba.feature_service_version"] == "v1"
        assert len(tags["nba.git_commit"].split("-")[0]) == 40
        for key in ("holdout_roc_auc", "holdout_log_loss", "holdout_brier", "holdout_ece", "holdout_mae_vs_truth"):
            assert np.isfinite(metrics[key]), key
        artifacts = {a.path for a in client.list_artifacts(m.run_id, "evaluation")}
        assert {"evaluation/calibration.png", "evaluation/feature_importance.png",
                "evaluation/holdout.parquet"} <= artifacts
        # The registered model answers probabilities through the generic pyfunc interface.
        import mlflow

        model = mlflow.pyfunc.load_model(f"models:/{m.name}@challenger")
        holdout = pd.read_parquet(client.download_artifacts(m.run_id, "evaluation/holdout.parquet"))
        features = model.metadata.get_input_schema().input_names()
        p = np.asarray(model.predict(holdout[features]))[:, 1]
        assert ((p >= 0) & (p <= 1)).all()


def test_calibrated_propensity_tracks_the_true_probability(train_env: Settings):
    """On held-out contacts the predictions are closer to the simulator's truth than the base
    rate is, and on average they match it."""
    cfg = load_model_config(train_env.home, "propensity")
    frame = propensity_frame(train_env, cfg, ["travel_notification"])
    train, holdout = frame.train, frame.holdout
    model = fit_classifier(cfg, train, frame.feature_columns)
    p = model.predict_proba(holdout[frame.feature_columns])[:, 1]
    truth = holdout["true_p_treated"].to_numpy()
    base = np.full_like(truth, train["label"].mean())
    # The calibration part holds ~340 contacts: its mean has a standard error of ~0.025.
    assert abs(p.mean() - truth.mean()) < 0.05
    assert np.mean(np.abs(p - truth)) < np.mean(np.abs(base - truth))
    assert np.corrcoef(p, truth)[0, 1] > 0.3


def test_pooled_strategy_registers_one_model_per_action(train_env: Settings):
    models = propensity.train_propensity(train_env, ACTIONS, strategy="pooled")
    client = _client(train_env)
    assert [m.name for m in models] == [f"nba-propensity-{a}" for a in ACTIONS]
    for m in models:
        assert client.get_run(m.run_id).data.params["strategy"] == "pooled"
    # the two registered models differ only by the action they are bound to
    import mlflow

    a = mlflow.sklearn.load_model(f"models:/{models[0].name}@challenger")
    b = mlflow.sklearn.load_model(f"models:/{models[1].name}@challenger")
    holdout = pd.read_parquet(client.download_artifacts(models[0].run_id, "evaluation/holdout.parquet"))
    x = holdout[list(a.model.feature_names_in_[:-1])]
    assert not np.allclose(a.predict_proba(x)[:, 1], b.predict_proba(x)[:, 1])


def test_strategy_comparison_is_one_table(train_env: Settings):
    table = propensity.compare_strategies(train_env)
    assert set(table["strategy"]) == {"per_action", "pooled"}
    for strategy in ("per_action", "pooled"):
        sub = table[table["strategy"] == strategy]
        assert "all" in set(sub["action"])
        assert sub["rows"].iloc[-1] == sub.loc[sub["action"] != "all", "rows"].sum()
    run_id, winner = propensity.log_comparison(train_env, table)
    overall = table[table["action"] == "all"].set_index("strategy")["log_loss"]
    assert winner == overall.idxmin()
    assert _client(train_env).get_run(run_id).data.tags["nba.winner"] == winner


def test_churn_model_is_trained_and_registered(train_env: Settings):
    result = train_churn(train_env)
    assert result.name == "nba-churn" and result.version == "1"
    assert result.metrics["positives"] > 0
    assert result.metrics["roc_auc"] > 0.5
    assert abs(result.metrics["mean_prediction"] - result.metrics["base_rate"]) < 0.02
    run = _client(train_env).get_run(result.run_id)
    assert run.data.params["frame.feature_service"] == "churn_v1"
    assert "90 days" in run.data.params["frame.label_definition"]


def test_too_few_positives_fails_the_run_and_registers_nothing(train_env: Settings):
    cfg = load_model_config(train_env.home, "propensity")
    strict = cfg.model_copy(update={"options": {**cfg.options, "min_positives": 10**6}})
    frame = propensity_frame(train_env, strict, ["mobile_app"])
    with pytest.raises(ModelDataError, match=r"positive label\(s\) in .* rows; at least 1000000 needed"):
        propensity.train_action(train_env, strict, frame, "mobile_app")
    client = _client(train_env)
    runs = client.search_runs([tracking.experiment_id(train_env, "propensity")])
    assert runs[0].info.status == "FAILED"
    assert "at least 1000000 needed" in runs[0].data.tags["nba.failure_reason"]
    assert client.search_registered_models() == []


def test_bad_inputs_are_named(train_env: Settings):
    cfg = load_model_config(train_env.home, "propensity")
    with pytest.raises(ConfigError, match=r"unknown action\(s\) \['loan_shark'\]"):
        propensity_frame(train_env, cfg, ["loan_shark"])
    too_long = cfg.model_copy(update={"label": cfg.label.model_copy(update={"window_days": 400})})
    with pytest.raises(ConfigError, match=r"label window of 400 days runs past the data"):
        propensity_frame(train_env, too_long, ["mobile_app"])
    with pytest.raises(ConfigError, match=r"unknown model 'ltv'; expected one of propensity, churn, clv, uplift"):
        load_model_config(train_env.home, "ltv")
    with pytest.raises(ModelDataError, match="the training frame is empty"):
        CalibratedXGBClassifier().fit(pd.DataFrame({"x": []}), np.array([]))
    with pytest.raises(ConfigError, match=r"unknown propensity strategy|strategy 'both' is not one of"):
        propensity.train_propensity(train_env, ["mobile_app"], strategy="both")


def test_model_config_rejects_unknown_keys_and_bad_distributions(tmp_path):
    from nba.training.config import load_config

    good = (Settings().home / "training" / "propensity.yaml").read_text()
    (tmp_path / "typo.yaml").write_text(good.replace("holdout_days:", "holdout_dayz:"))
    with pytest.raises(ConfigError, match=r"typo.yaml: key 'split.holdout_dayz'"):
        load_config(tmp_path / "typo.yaml")
    (tmp_path / "dist.yaml").write_text(good.replace("{type: float, low: 0.01, high: 0.3, log: true}",
                                                     "{type: float, low: 0.3, high: 0.01}"))
    with pytest.raises(ConfigError, match=r"dist.yaml: key 'tuning.search_space.learning_rate.float'.*must not exceed"):
        load_config(tmp_path / "dist.yaml")
    (tmp_path / "kind.yaml").write_text(good.replace("{type: int, low: 2, high: 8}", "{type: poisson, low: 2}"))
    with pytest.raises(ConfigError, match=r"kind.yaml: key 'tuning.search_space.max_depth'"):
        load_config(tmp_path / "kind.yaml")
