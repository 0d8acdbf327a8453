"""Tuning problems: what an Optuna study (`nba.training.tune`) optimises, and the pieces the
families build theirs from.

Each family module states its problem, `tuning_problem(settings, cfg, action) ->
TuningProblem`: the data already split, and a `score(params, report)` that fits with `params`
on the training part and returns the tuned metric on the validation part, calling
`report(value, step)` with intermediate values where the model allows it (boosting rounds,
every `REPORT_EVERY`), so the pruner can stop a hopeless trial early. `report` raises
`optuna.TrialPruned` when the trial should stop.

The calibrated classifiers (propensity, churn) share `classifier_problem`: one or more
XGBoost classifiers fitted with the same parameters, each on the earlier rows of its
training part (`split_part`: time order, the latest `split.calibration_fraction` for
validation, never the hold-out), the value the validation-row-weighted mean of their log
loss or ROC AUC.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from nba.errors import ConfigError
from nba.training.config import ModelConfig
from nba.training.models import FrameEncoder, ModelDataError

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

Report = Callable[[float, int], None]

REPORT_EVERY = 10  # boosting rounds between two intermediate values
ACTION_STRIDE = 100_000  # step offset per action in the per-action propensity objective
# XGBoost threads per trial. One: on small frames a second thread gains little, and under
# load (another worker, a test run) OpenMP threads that wait for each other made fits 3-8x
# slower in our measurements. Run one worker per core on a shared study to use more cores.
N_JOBS = 1

# Metrics a classifier problem can tune: XGBoost's evaluation metric and the better direction.
CLASSIFIER_METRICS = {"log_loss": ("logloss", "minimize"), "roc_auc": ("auc", "maximize")}


@dataclass(frozen=True)
class TuningProblem:
    """What a study optimises: `score(params, report) -> metric` on a fixed validation split."""

    family: str
    metric: str
    direction: str  # "minimize" | "maximize"
    score: Callable[[dict[str, Any], Report], float]
    info: dict[str, Any] = field(default_factory=dict)  # frame provenance, logged on the parent run


@dataclass(frozen=True)
class Part:
    """One model's data, encoded once: fit rows (earlier) and validation rows (latest)."""

    name: str
    X_fit: np.ndarray
    y_fit: np.ndarray
    X_val: np.ndarray
    y_val: np.ndarray


def checkpoints(report: Callable[[float, int], None], every: int, dval: Any) -> Any:
    """An XGBoost callback that evaluates the validation matrix every `every` rounds and
    reports it. Evaluating at checkpoints only (not every round through `eval_set`) keeps
    the cost of pruning small; XGBoost's prediction cache adds only the new trees."""
    from xgboost.callback import TrainingCallback

    class Checkpoints(TrainingCallback):
        def after_iteration(self, model: Any, epoch: int, evals_log: Any) -> bool:
            rnd = epoch + 1
            if rnd % every == 0:
                report(float(model.eval(dval, "validation", epoch).rsplit(":", 1)[1]), rnd)
            return False

    return Checkpoints()


def split_part(name: str, train: pd.DataFrame, features: list[str], validation_fraction: float,
               min_positives: int) -> Part:
    """Cut the training rows (in time order) into fit and validation parts, encoded."""
    y = train["label"].to_numpy().astype(int)
    cut = int(round(len(y) * (1 - validation_fraction)))
    y_fit, y_val = y[:cut], y[cut:]
    if y_fit.sum() < max(min_positives, 1) or y_fit.sum() == len(y_fit) or y_val.sum() == 0 \
            or y_val.sum() == len(y_val):
        raise ModelDataError(
            f"{name}: the tuning fit part ({len(y_fit)} rows, {int(y_fit.sum())} positives; at least "
            f"{max(min_positives, 1)} needed) or validation part ({len(y_val)} rows, {int(y_val.sum())} "
            f"positives) lacks a class")
    enc = FrameEncoder().fit(train[features].iloc[:cut])
    return Part(name, enc.transform(train[features].iloc[:cut]), y_fit,
                enc.transform(train[features].iloc[cut:]), y_val)


def classifier_problem(cfg: ModelConfig, parts: list[Part], info: dict[str, Any]) -> TuningProblem:
    """A problem over one or more XGBoost classifiers fitted with the same parameters; the
    value is the validation-row-weighted mean of their metric."""
    metric = cfg.tuning.metric
    if metric not in CLASSIFIER_METRICS:
        raise ConfigError(f"{cfg.model}: key 'tuning.metric': '{metric}' is not a classifier tuning metric; "
                          f"expected one of {', '.join(CLASSIFIER_METRICS)}")
    import numpy as np
    import xgboost as xgb

    eval_metric, direction = CLASSIFIER_METRICS[metric]
    if cfg.tuning.direction != direction:
        raise ConfigError(f"{cfg.model}: key 'tuning.direction': '{cfg.tuning.direction}' contradicts "
                          f"tuning.metric '{metric}' (expected {direction})")
    seed = int(cfg.params.get("random_state", 0))

    def final(y: np.ndarray, p: np.ndarray) -> float:
        from sklearn.metrics import log_loss, roc_auc_score

        if metric == "roc_auc":
            return float(roc_auc_score(y, p))
        return float(log_loss(y, np.clip(p, 1e-6, 1 - 1e-6), labels=[0, 1]))

    dvals = [xgb.DMatrix(p.X_val, label=p.y_val, nthread=N_JOBS) for p in parts]

    def score(params: dict[str, Any], report: Report) -> float:
        done, weight = 0.0, 0
        for i, (part, dval) in enumerate(zip(parts, dvals, strict=True)):
            w = len(part.y_val)

            def partial(value: float, rnd: int, i: int = i, w: int = w, done: float = done,
                        weight: int = weight) -> None:
                report((done + w * value) / (weight + w), i * ACTION_STRIDE + rnd)

            model = xgb.XGBClassifier(**{"tree_method": "hist", "n_jobs": N_JOBS, "random_state": seed,
                                         "verbosity": 0, **params},
                                      eval_metric=eval_metric,
                                      callbacks=[checkpoints(partial, REPORT_EVERY, dval)])
            model.fit(part.X_fit, part.y_fit)
            done += w * final(part.y_val, model.predict_proba(part.X_val)[:, 1])
            weight += w
        return done / weight

    fit_rows = sum(len(p.y_fit) for p in parts)
    val_rows = sum(len(p.y_val) for p in parts)
    info = {**info, "tuning_models": ",".join(p.name for p in parts), "tuning_fit_rows": fit_rows,
            "tuning_validation_rows": val_rows,
            "tuning_validation_positives": int(sum(p.y_val.sum() for p in parts)),
            "tuning_validation": f"latest {cfg.split.calibration_fraction:.0%} of the training rows "
                                 "of each model (time order); the hold-out is never used"}
    return TuningProblem(cfg.model, metric, direction, score, info)
