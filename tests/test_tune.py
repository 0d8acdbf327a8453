"""Tuning: real Optuna studies in SQLite, real MLflow runs, on the shared simulated bank.

The studies run on a copy of `training/*.yaml` whose search spaces are cut down (at most
200 boosting rounds, depth 4) so a trial takes about a second; the real search spaces are checked
for validity separately, and `benchmarks/bench_tune.py` times the real propensity one.
"""

from __future__ import annotations

import inspect
from pathlib import Path

import mlflow
import optuna
import pytest
import yaml
from mlflow.tracking import MlflowClient

from nba.errors import ConfigError
from nba.settings import Settings
from nba.training import tracking
from nba.training.config import MODEL_FAMILIES, load_config, load_model_config
from nba.training.families import FAMILIES, family
from nba.training.tune import TuneResult, _distributions, tune
from tests.conftest import PROJECT_ROOT

ACTION = "travel_notification"  # the action with the most contacts in the 4,000-customer bank
SMALL_SPACE = {
    "max_depth": {"type": "int", "low": 2, "high": 4},
    "learning_rate": {"type": "float", "low": 0.01, "high": 0.3, "log": True},
    "n_estimators": {"type": "int", "low": 60, "high": 200, "step": 20},
    "min_child_weight": {"type": "float", "low": 1.0, "high": 20.0, "log": True},
}


def _home(tmp_path: Path, edit: dict[str, dict] | None = None) -> Path:
    """A project folder holding copies of training/*.yaml with `edit[model]` merged in."""
    home = tmp_path / "home"
    (home / "training").mkdir(parents=True)
    for src in (PROJECT_ROOT / "training").glob("*.yaml"):
        raw = yaml.safe_load(src.read_text())
        for key, value in (edit or {}).get(src.stem, {}).items():
            raw[key] = value
        (home / "training" / src.name).write_text(yaml.safe_dump(raw, sort_keys=False))
    return home


SMALL_TUNING = {"metric": "log_loss", "direction": "minimize", "search_space": SMALL_SPACE}


@pytest.fixture
def small(train_env: Settings, tmp_path: Path) -> Settings:
    """The training environment with cheap search spaces for propensity and churn."""
    edit = {m: {"tuning": SMALL_TUNING} for m in ("propensity", "churn")}
    return train_env.model_copy(update={"home": _home(tmp_path, edit)})


def _child_runs(settings: Settings, result: TuneResult, family: str):
    tracking.configure(settings)
    return mlflow.search_runs(experiment_names=[f"nba-{family}"],
                              filter_string=f"tags.mlflow.parentRunId = '{result.parent_run_id}'")


# --- bad input (no data read) --------------------------------------------------------------


def test_unknown_model_is_named_with_the_choices(settings: Settings):
    with pytest.raises(ConfigError) as exc:
        tune(settings, "propensty", trials=1)
    assert "propensty" in str(exc.value)
    assert all(m in str(exc.value) for m in MODEL_FAMILIES)


def test_every_family_is_in_the_registry_with_its_frame_train_and_tuning_problem():
    assert tuple(FAMILIES) == MODEL_FAMILIES  # the config loader's names are the registry's
    for name, fam in FAMILIES.items():
        assert family(name) is fam and fam.name == name
        assert callable(fam.frame) and callable(fam.train)
        assert list(inspect.signature(fam.tuning_problem).parameters) == ["settings", "cfg", "action"]
    with pytest.raises(ConfigError, match=r"unknown model 'nope'; expected one of propensity, churn, clv, uplift$"):
        family("nope")


@pytest.mark.parametrize(("dist", "key"), [
    ({"type": "float", "low": 0.5, "high": 0.1}, "tuning.search_space.learning_rate"),
    ({"type": "uniform", "low": 0.01, "high": 0.1}, "tuning.search_space.learning_rate"),
])
def test_invalid_search_space_names_file_and_key(settings: Settings, tmp_path: Path, dist: dict, key: str):
    space = {**SMALL_SPACE, "learning_rate": dist}
    home = _home(tmp_path, {"propensity": {"tuning": {"metric": "log_loss", "direction": "minimize",
                                                      "search_space": space}}})
    with pytest.raises(ConfigError) as exc:
        tune(settings.model_copy(update={"home": home}), "propensity", trials=1, action=ACTION)
    msg = str(exc.value)
    assert str(home / "training" / "propensity.yaml") in msg
    assert key in msg


def test_a_value_optuna_rejects_names_the_parameter_and_value(settings: Settings, tmp_path: Path):
    # Valid for the config schema, refused by Optuna: a log-scaled integer with step 20.
    space = {**SMALL_SPACE, "n_estimators": {"type": "int", "low": 40, "high": 120, "step": 20, "log": True}}
    home = _home(tmp_path, {"churn": {"tuning": {"metric": "log_loss", "direction": "minimize",
                                                 "search_space": space}}})
    with pytest.raises(ConfigError) as exc:
        tune(settings.model_copy(update={"home": home}), "churn", trials=1)
    msg = str(exc.value)
    assert "tuning.search_space.n_estimators" in msg and "'step': 20" in msg and "churn.yaml" in msg


def test_the_shipped_search_spaces_are_accepted_by_optuna():
    for model in MODEL_FAMILIES:
        path = PROJECT_ROOT / "training" / f"{model}.yaml"
        assert set(_distributions(load_config(path), path)) == set(load_config(path).tuning.search_space)


def test_actions_are_checked(settings: Settings):
    with pytest.raises(ConfigError, match="churn has no actions"):
        tune(settings, "churn", trials=1, action=ACTION)


# --- studies -------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.integration
def test_tune_propensity_one_action_logs_prunes_writes_and_resumes(small: Settings):
    first = tune(small, "propensity", trials=10, action=ACTION, study_name="prop-test")

    # Optuna's own record of the study agrees with what tune reports, and the pruner stopped
    # at least one trial (seeded sampler, seeded data: the same trials every run).
    study = optuna.load_study(study_name="prop-test", storage=small.tuning_storage)
    states = [t.state for t in study.trials]
    assert first.n_trials == len(states) == 10
    assert first.n_pruned == states.count(optuna.trial.TrialState.PRUNED) >= 1
    assert first.n_complete == states.count(optuna.trial.TrialState.COMPLETE) == 10 - first.n_pruned
    assert first.best_value == pytest.approx(study.best_value)
    assert first.storage.startswith("sqlite:///") and first.storage.endswith("tuning/optuna.db")

    # One parent run, one child run per trial, pruned ones marked as such.
    tracking.configure(small)
    parent = mlflow.get_run(first.parent_run_id)
    assert parent.data.tags["nba.study_name"] == "prop-test"
    assert parent.data.tags["nba.optuna_storage"] == first.storage
    assert parent.data.params["space.learning_rate"].startswith("type=float")
    assert parent.data.metrics["trials_pruned"] == first.n_pruned
    children = _child_runs(small, first, "propensity")
    assert len(children) == 10
    pruned = children[children["tags.nba.trial_state"] == "PRUNED"]
    assert len(pruned) == first.n_pruned and set(pruned["status"]) == {"KILLED"}
    done = children[children["tags.nba.trial_state"] == "COMPLETE"]
    assert set(done["status"]) == {"FINISHED"}
    assert done["metrics.log_loss"].min() == pytest.approx(first.best_value)
    assert set(children["params.max_depth"].astype(int)) <= {2, 3, 4}

    # The best parameters land where the next `nba train` reads them.
    record = yaml.safe_load(first.best_params_path.read_text())
    assert record["study_name"] == "prop-test" and record["action"] == ACTION
    assert record["trial_number"] == first.best_trial and record["value"] == pytest.approx(first.best_value)
    cfg = load_model_config(small.home, "propensity", small.work)
    assert {k: cfg.params[k] for k in first.best_params} == first.best_params
    assert cfg.params["reg_lambda"] == 1.0  # not searched here: the YAML's value stays

    # Same study name: the trials accumulate in the same study.
    second = tune(small, "propensity", trials=3, action=ACTION, study_name="prop-test")
    assert second.n_trials == 3 and second.n_study_trials == 13
    assert len(optuna.load_study(study_name="prop-test", storage=small.tuning_storage).trials) == 13
    assert second.best_value <= first.best_value
    assert len(_child_runs(small, second, "propensity")) == 3
    assert second.parent_run_id != first.parent_run_id


@pytest.mark.slow
@pytest.mark.integration
def test_tune_propensity_without_action_tunes_one_model_per_action(small: Settings):
    """The shipped strategy is per action: without `action`, the objective is the validation-
    weighted mean over one model per action that has enough positives, steps strided by action."""
    from nba.schemas import ACTIONS
    from nba.training.problems import ACTION_STRIDE

    assert load_model_config(small.home, "propensity").options["strategy"] == "per_action"
    result = tune(small, "propensity", trials=2)
    assert result.study_name == "propensity" and result.n_complete == 2
    tracking.configure(small)
    params = mlflow.get_run(result.parent_run_id).data.params
    assert params["frame.strategy"] == "per_action"
    tuned = params["frame.tuning_models"].split(",")
    assert len(tuned) >= 8 and set(tuned) <= {f"propensity-{a}" for a in ACTIONS}
    assert f"propensity-{ACTION}" in tuned  # the action with the most contacts has its own model
    steps = _child_runs(small, result, "propensity")
    history = MlflowClient().get_metric_history(steps["run_id"].iloc[0], "valid_log_loss")
    assert max(m.step for m in history) >= (len(tuned) - 1) * ACTION_STRIDE  # every model reported
    assert yaml.safe_load(result.best_params_path.read_text())["action"] == "all"


@pytest.mark.slow
@pytest.mark.integration
def test_tune_propensity_pooled_tunes_one_model(train_env: Settings, tmp_path: Path):
    """With `options.strategy: pooled`, one model for every action, so one tuning problem."""
    options = {**load_model_config(PROJECT_ROOT, "propensity").options, "strategy": "pooled"}
    edit = {"propensity": {"tuning": SMALL_TUNING, "options": options}}
    pooled = train_env.model_copy(update={"home": _home(tmp_path, edit)})
    result = tune(pooled, "propensity", trials=2)
    assert result.n_complete == 2
    tracking.configure(pooled)
    params = mlflow.get_run(result.parent_run_id).data.params
    assert params["frame.tuning_models"] == "pooled" and params["frame.strategy"] == "pooled"
    steps = _child_runs(pooled, result, "propensity")
    history = MlflowClient().get_metric_history(steps["run_id"].iloc[0], "valid_log_loss")
    assert len(history) > 1  # intermediate values every few boosting rounds, for the pruner


@pytest.mark.slow
@pytest.mark.integration
def test_tune_churn_runs(small: Settings):
    result = tune(small, "churn", trials=3, progress=True)
    assert result.study_name == "churn" and result.n_trials == 3 and result.n_complete >= 1
    assert 0 < result.best_value < 1
    assert yaml.safe_load(result.best_params_path.read_text())["params"] == result.best_params
    assert len(_child_runs(small, result, "churn")) == 3


@pytest.mark.slow
@pytest.mark.integration
def test_resuming_on_another_frame_is_refused(small: Settings):
    (small.work / "tuning").mkdir()
    study = optuna.create_study(study_name="churn", storage=small.tuning_storage)
    study.set_user_attr("frame_digest", "0" * 64)
    with pytest.raises(ConfigError, match="another training frame"):
        tune(small, "churn", trials=1)

