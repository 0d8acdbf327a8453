"""One training run of a calibrated classifier (propensity per action, churn): fit on the
training part, evaluate on the time-based hold-out, log metrics, plots, the hold-out frame
and the model to MLflow, register it as @challenger.

The hold-out frame is logged with the run so `nba promote` can score the current champion
on exactly the same rows; a seeded sample of the training frame (`evaluation/reference.parquet`)
is logged beside it as the reference `nba evaluate drift` compares served data with.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from nba.settings import Settings
from nba.training import tracking
from nba.training.config import ModelConfig
from nba.training.frames import LabelledFrame
from nba.training.metrics import calibration_plot, classification_metrics, importance_plot
from nba.training.models import CalibratedXGBClassifier, ModelDataError

HOLDOUT_ARTIFACT = "evaluation/holdout.parquet"
REFERENCE_ARTIFACT = "evaluation/reference.parquet"
REFERENCE_MAX_ROWS = 50_000  # enough for drift tests; a few MB of Parquet per run


@dataclass(frozen=True)
class TrainedModel:
    """What a training run produced: the registered version and its hold-out figures."""

    name: str
    version: str
    run_id: str
    metrics: dict[str, float]


def fit_classifier(cfg: ModelConfig, train: pd.DataFrame, features: list[str],
                   params: dict[str, Any] | None = None,
                   sample_weight: np.ndarray | None = None) -> CalibratedXGBClassifier:
    """`sample_weight`: one per training row (trees and calibrator), e.g. the propensity
    models' inverse logging probabilities (`nba.training.propensity.row_weights`)."""
    opts = cfg.options
    model = CalibratedXGBClassifier(
        params=params if params is not None else cfg.params,
        calibration=opts.get("calibration", "isotonic"),
        calibration_fraction=cfg.split.calibration_fraction,
        min_positives=int(opts.get("min_positives", 1)),
    )
    return model.fit(train[features], train["label"].to_numpy(), sample_weight=sample_weight)


def evaluate_classifier(model: Any, holdout: pd.DataFrame, features: list[str],
                        truth_column: str = "true_p_treated") -> tuple[np.ndarray, dict[str, float]]:
    """Hold-out probabilities and metrics; with simulator truth, the error against it."""
    p = model.predict_proba(holdout[features])[:, 1]
    metrics = classification_metrics(holdout["label"].to_numpy(), p)
    if truth_column in holdout:
        truth = holdout[truth_column].to_numpy()
        metrics["mae_vs_truth"] = float(np.mean(np.abs(p - truth)))
        metrics["mean_true_p"] = float(truth.mean())
    return p, metrics


def log_evaluation(model: Any, holdout: pd.DataFrame, p: np.ndarray, title: str,
                   truth_column: str = "true_p_treated") -> None:
    """Calibration plot, feature importance (plot and csv) and the hold-out frame."""
    import mlflow

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        truth = holdout[truth_column].to_numpy() if truth_column in holdout else None
        calibration_plot(holdout["label"].to_numpy(), p, out / "calibration.png", title, truth=truth)
        names, gains = model.feature_importance()
        importance_plot(names, gains, out / "feature_importance.png", title)
        pd.DataFrame({"feature": names, "gain": gains}).sort_values("gain", ascending=False).to_csv(
            out / "feature_importance.csv", index=False)
        holdout.to_parquet(out / "holdout.parquet", index=False)
        mlflow.log_artifacts(tmp, artifact_path="evaluation")


def reference_sample(train: pd.DataFrame, seed: int, max_rows: int = REFERENCE_MAX_ROWS) -> pd.DataFrame:
    """The training rows, or a seeded uniform random sample of `max_rows` of them (without
    replacement, in their original order)."""
    if len(train) <= max_rows:
        return train.reset_index(drop=True)
    return train.sample(n=max_rows, random_state=seed).sort_index().reset_index(drop=True)


def log_reference(train: pd.DataFrame, seed: int, max_rows: int = REFERENCE_MAX_ROWS) -> None:
    """Log the drift reference of the run: the training frame (features, label and carried
    columns), sampled to at most `max_rows` rows, as `evaluation/reference.parquet`."""
    import mlflow

    sample = reference_sample(train, seed, max_rows)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / Path(REFERENCE_ARTIFACT).name
        sample.to_parquet(path, index=False)
        mlflow.log_artifact(str(path), artifact_path=str(Path(REFERENCE_ARTIFACT).parent))
    mlflow.log_params({"reference.rows": len(sample), "reference.of_training_rows": len(train),
                       "reference.sampling": "all training rows" if len(sample) == len(train) else
                       f"uniform random sample without replacement, seed {seed}"})


def train_and_register(settings: Settings, cfg: ModelConfig, frame: LabelledFrame, *, family: str,
                       name: str, run_name: str, tags: dict[str, str] | None = None,
                       truth_column: str = "true_p_treated", register: bool = True,
                       fit: Callable[[pd.DataFrame], Any] | None = None,
                       params: dict[str, Any] | None = None) -> TrainedModel:
    """Fit, evaluate, log and register one calibrated classifier; FAILED run on any error.

    `fit(train)` returns the fitted model (default: a `CalibratedXGBClassifier` on the frame's
    feature columns); the pooled propensity strategy passes a model fitted once on all actions.
    """
    import mlflow

    with tracking.training_run(settings, family, run_name,
                               tags={"nba.registered_model": name, **(tags or {})}) as run:
        tracking.log_frame_info(frame.info)
        mlflow.log_params({f"xgb.{k}": v for k, v in cfg.params.items()})
        mlflow.log_params({"calibration": cfg.options.get("calibration", "isotonic"),
                           "calibration_fraction": cfg.split.calibration_fraction, **(params or {})})
        train, holdout = frame.train, frame.holdout
        if len(holdout) == 0 or holdout["label"].sum() == 0:
            raise ModelDataError(
                f"{run_name}: the hold-out has {len(holdout)} rows and "
                f"{int(holdout['label'].sum()) if len(holdout) else 0} positives; nothing to evaluate on")
        model = fit(train) if fit is not None else fit_classifier(cfg, train, frame.feature_columns)
        p, metrics = evaluate_classifier(model, holdout, frame.feature_columns, truth_column)
        mlflow.log_metrics({f"holdout_{k}": v for k, v in metrics.items()})
        log_evaluation(model, holdout, p, run_name, truth_column)
        log_reference(train, settings.seed)
        uri = tracking.log_model(model, train[frame.feature_columns])
        version = ""
        if register:
            version = tracking.register(settings, uri, name, tags={
                "feature_service": str(frame.info["feature_service"]), "run_id": run.info.run_id}).version
    return TrainedModel(name, str(version), run.info.run_id, metrics)
