"""Churn: P(the customer leaves within the label window), one calibrated XGBoost classifier.

Entities are the monthly snapshots of active customers; the label says whether the
customer's churn date falls in the window after the snapshot. Registered as `nba-churn`.
"""

from __future__ import annotations

from nba.errors import ConfigError
from nba.settings import Settings
from nba.training import tracking
from nba.training.classifier import TrainedModel, train_and_register
from nba.training.config import ModelConfig, load_model_config
from nba.training.frames import churn_frame
from nba.training.problems import TuningProblem, classifier_problem, split_part

FAMILY = "churn"


def train_churn(settings: Settings, register: bool = True) -> TrainedModel:
    tracking.require_server(settings)  # a tracking server that does not answer: before any frame is read
    cfg = load_model_config(settings.home, FAMILY, settings.work)
    frame = churn_frame(settings, cfg)
    return train_and_register(settings, cfg, frame, family=FAMILY, name=tracking.registered_name(FAMILY),
                              run_name="churn", register=register)


def tuning_problem(settings: Settings, cfg: ModelConfig, action: str | None = None) -> TuningProblem:
    """Validation log loss (or ROC AUC) of the churn classifier on the latest rows of its
    training part (`nba.training.problems.classifier_problem`)."""
    if action is not None:
        raise ConfigError(f"churn has no actions (got action '{action}'); --action applies to propensity and uplift")
    frame = churn_frame(settings, cfg)
    part = split_part("churn", frame.train, frame.feature_columns, cfg.split.calibration_fraction,
                      int(cfg.options.get("min_positives", 1)))
    return classifier_problem(cfg, [part], frame.info)
