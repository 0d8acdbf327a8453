"""Propensity retrained on the platform's own decision log (the closed loop's training step).

The rows are the logged decisions that showed an action, with the features as served (the
log's features table) and label = the reported outcome was `accepted`. The logging policy
(the platform's own, epsilon-greedy) over-shows the actions its previous models favoured, so
the rows are weighted by the inverse of their logged probability (clipped at `ips_clip`,
normalised to mean 1 per action): the weighted rows stand for every candidate the action
could have been shown to, which is the population the arbitration scores. The hold-out is the
latest `holdout_share` of the rows in time, unweighted, as the gates read it.

Each action's model is logged and registered like any propensity model
(`nba-propensity-<action>`, alias @challenger); `nba.training.registry.promote` decides.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from nba import schemas
from nba.records import NO_ACTION
from nba.settings import Settings
from nba.stores.decisions import LogFrames
from nba.training import tracking
from nba.training.classifier import TrainedModel, train_and_register
from nba.training.config import ModelConfig, load_model_config
from nba.training.frames import LabelledFrame
from nba.training.models import CalibratedXGBClassifier, ModelDataError

FAMILY = "propensity"
WEIGHT = "ips_weight"
TRUTH = "true_p_treated"


def logged_frames(frames: LogFrames, features: Sequence[str], *, actions: Sequence[str] | None = None,
                  holdout_share: float = 0.2, ips_clip: float = 20.0,
                  truth: Mapping[str, float] | None = None) -> dict[str, LabelledFrame]:
    """One labelled frame per action shown in the log (see the module docstring). `truth`:
    decision id -> the true acceptance probability of its shown action (simulated banks)."""
    if frames.features is None:
        raise ModelDataError("the decision log was read without its features (read_log(with_features=True))")
    j = frames.decisions[frames.decisions["action_id"].astype(str) != NO_ACTION]
    o = frames.outcomes
    acc = o.loc[o["outcome"].astype(str) == "accepted", ["decision_id", "action_id"]].astype(str)
    keys = set(zip(acc["decision_id"], acc["action_id"], strict=True))
    j = j.assign(accepted=[int((d, a) in keys) for d, a in zip(j["decision_id"].astype(str),
                                                               j["action_id"].astype(str), strict=True)])
    missing = [f for f in features if f not in frames.features.columns]
    if missing:
        raise ModelDataError(f"the decision log's features lack {missing}")
    rows = j[["decision_id", schemas.ENTITY_KEY, "decided_at", "action_id", "probability", "accepted"]].merge(
        frames.features[["decision_id", *features]], on="decision_id", how="inner")
    rows = rows.sort_values("decided_at", kind="stable").reset_index(drop=True)
    rows[schemas.EVENT_TS] = pd.to_datetime(rows["decided_at"], unit="s", utc=True)
    rows["label"] = rows["accepted"].astype("int64")
    rows["action_id"] = rows["action_id"].astype(str)
    if truth is not None:
        rows[TRUTH] = rows["decision_id"].astype(str).map(truth).astype("float64")
    out: dict[str, LabelledFrame] = {}
    for action in actions or sorted(rows["action_id"].unique()):
        sub = rows[rows["action_id"] == action].reset_index(drop=True)
        if sub.empty:
            continue
        w = np.minimum(1.0 / sub["probability"].to_numpy(np.float64), ips_clip)
        sub[WEIGHT] = w / w.mean()
        cut = int(round(len(sub) * (1 - holdout_share)))
        is_holdout = np.arange(len(sub)) >= cut
        info = {"model": "propensity", "feature_service": "decision_log", "feature_service_version": "log",
                "label_definition": "the shown action's reported outcome is 'accepted'", "action": action,
                "rows": len(sub), "train_rows": int(cut), "holdout_rows": int(len(sub) - cut),
                "positives": int(sub["label"].sum()), "weighting": f"1 / logged probability, clipped at {ips_clip:g}",
                "entities_from": str(sub[schemas.EVENT_TS].min()), "entities_to": str(sub[schemas.EVENT_TS].max())}
        keep = [schemas.ENTITY_KEY, schemas.EVENT_TS, "action_id", *features, "label", WEIGHT,
                *([TRUTH] if truth is not None else [])]
        out[action] = LabelledFrame(sub[keep], list(features), is_holdout, info)
    return out


def fit_weighted(cfg: ModelConfig, train: pd.DataFrame, features: Sequence[str]) -> CalibratedXGBClassifier:
    opts = cfg.options
    model = CalibratedXGBClassifier(params=cfg.params, calibration=opts.get("calibration", "isotonic"),
                                    calibration_fraction=cfg.split.calibration_fraction,
                                    min_positives=int(opts.get("min_positives", 1)))
    return model.fit(train[list(features)], train["label"].to_numpy(), sample_weight=train[WEIGHT].to_numpy())


def train_logged(settings: Settings, frames: Mapping[str, LabelledFrame], *, min_positives: int = 1,
                 progress: Callable[[str], None] | None = None) -> tuple[list[TrainedModel], dict[str, str]]:
    """Train and register each action's model on its logged frame. Returns the trained
    models and, per action not trained, why (too few rows or positives)."""
    cfg = load_model_config(settings.home, FAMILY, settings.work)
    trained: list[TrainedModel] = []
    skipped: dict[str, str] = {}
    for action, frame in frames.items():
        positives = int(frame.frame["label"].sum())
        if positives < min_positives:
            skipped[action] = f"{positives} positives in the log, fewer than {min_positives}"
            continue
        if progress:
            progress(action)
        feats = frame.feature_columns

        def fit(train: pd.DataFrame, feats: Sequence[str] = feats) -> Any:
            return fit_weighted(cfg, train, feats)

        try:
            trained.append(train_and_register(
                settings, cfg, frame, family=FAMILY, name=tracking.registered_name(FAMILY, action),
                run_name=f"propensity-{action}-logged", fit=fit,
                tags={"nba.action": action, "nba.source": "decision_log", "nba.weighting": "ips"},
                params={"strategy": "per_action", "action": action, "source": "decision_log"}))
        except ModelDataError as exc:
            skipped[action] = str(exc)
    return trained, skipped
