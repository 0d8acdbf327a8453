"""Churn: P(the customer leaves within the label window), one calibrated XGBoost classifier.

Entities are the monthly snapshots of active customers; the label says whether the
customer's churn date falls in the window after the snapshot. Registered as `nba-churn`.
"""

from __future__ import annotations

from nba.settings import Settings
from nba.training import tracking
from nba.training.classifier import TrainedModel, train_and_register
from nba.training.config import load_model_config
from nba.training.frames import churn_frame

FAMILY = "churn"


def train_churn(settings: Settings, register: bool = True) -> TrainedModel:
    cfg = load_model_config(settings.home, FAMILY, settings.work)
    frame = churn_frame(settings, cfg)
    return train_and_register(settings, cfg, frame, family=FAMILY, name=tracking.registered_name(FAMILY),
                              run_name="churn", register=register)
