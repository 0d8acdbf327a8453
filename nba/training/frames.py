"""Labelled training frames: entity rows and labels from outcomes, features from Feast only.

Every builder returns a `LabelledFrame`: the point-in-time correct feature frame from a
versioned feature service (`nba.features.store.training_frame`), the label built from
outcomes in a window after each entity timestamp, the time-based train / hold-out split,
and `info`, the provenance every MLflow run records (service and version, label
definition, windows, row counts, digest).

Rows whose label window would run past the end of the data are censored (dropped, and
counted in `info`): their label is not known yet. If that leaves nothing, it is an error.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from nba import schemas
from nba.errors import ConfigError
from nba.features import store
from nba.settings import Settings
from nba.stores.erasures import erased_ids
from nba.training.config import ModelConfig
from nba.training.models import ModelDataError
from nba.training.tracking import frame_digest

DAY = pd.Timedelta(days=1)
# Columns of a labelled frame that are never model inputs.
NON_FEATURES = {
    schemas.ENTITY_KEY, schemas.EVENT_TS, schemas.REQUEST_TS, schemas.CREATED_TS, "label", "action_id",
    "treated", "interaction_id", "true_p_treated", "true_p_control", "true_uplift", "value", "policy",
    "assignment_probability", "channel", "hillstrom_id", "cdnow_id", "arm", "future_value", "visit",
    "conversion", "spend", "outcome_timestamp",
}


@dataclass
class LabelledFrame:
    """Features + label (+ carried columns), split by time into train and hold-out."""

    frame: pd.DataFrame
    feature_columns: list[str]
    is_holdout: np.ndarray
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def train(self) -> pd.DataFrame:
        return self.frame.loc[~self.is_holdout].reset_index(drop=True)

    @property
    def holdout(self) -> pd.DataFrame:
        return self.frame.loc[self.is_holdout].reset_index(drop=True)


def feature_columns(frame: pd.DataFrame) -> list[str]:
    return [c for c in frame.columns if c not in NON_FEATURES]


def sim_data_end(settings: Settings) -> pd.Timestamp:
    """The end of the simulated period: nothing after it has been observed."""
    from nba.data.simulator import read_manifest

    manifest_path = settings.sim_dir / "manifest.json"
    if not manifest_path.is_file():
        raise ModelDataError(f"no simulator output in {settings.sim_dir}: run `nba data simulate` first")
    cfg = read_manifest(settings.sim_dir)["config"]
    return pd.Timestamp(cfg["start"], tz="UTC") + pd.DateOffset(months=int(cfg["months"]))


def _read_sim(settings: Settings, table: str, columns: list[str] | None = None) -> pd.DataFrame:
    """A simulator table without the erased customers (`nba.stores.erasures`): every frame's
    entity rows and labels come through here, so no model sees them, even if a source brings
    them back."""
    path = settings.sim_dir / f"{table}.parquet"
    if not path.is_file():
        raise ModelDataError(f"simulator table {path} not found: run `nba data simulate` first")
    frame = pd.read_parquet(path, columns=columns)
    erased = erased_ids(settings)
    if erased and schemas.ENTITY_KEY in frame.columns:
        frame = frame.loc[~frame[schemas.ENTITY_KEY].isin(erased)].reset_index(drop=True)
    return frame


def censor(entities: pd.DataFrame, window_days: int, data_end: pd.Timestamp, what: str) -> tuple[pd.DataFrame, int]:
    """Drop rows whose label window runs past `data_end`; error if none is left."""
    complete = entities[schemas.EVENT_TS] + window_days * DAY <= data_end
    if not complete.any():
        first = entities[schemas.EVENT_TS].min() if len(entities) else None
        raise ConfigError(
            f"{what}: label window of {window_days} days runs past the data for every row "
            f"(first entity {first}, data ends {data_end}); shorten label.window_days"
        )
    return entities.loc[complete].reset_index(drop=True), int((~complete).sum())


def split_by_time(frame: pd.DataFrame, holdout_days: int, what: str) -> np.ndarray:
    """Hold-out = entity timestamps in the last `holdout_days` of the frame."""
    ts = frame[schemas.EVENT_TS]
    start = ts.max() - holdout_days * DAY
    holdout = (ts > start).to_numpy()
    if holdout.all() or not holdout.any():
        raise ConfigError(
            f"{what}: split.holdout_days = {holdout_days} leaves {int((~holdout).sum())} training and "
            f"{int(holdout.sum())} hold-out rows (entities from {ts.min()} to {ts.max()})"
        )
    return holdout


def _finish(settings: Settings, cfg: ModelConfig, entities: pd.DataFrame, what: str, label_definition: str,
            extra_info: dict[str, Any], service: str | None = None) -> LabelledFrame:
    service = service or cfg.feature_service
    if entities.empty:
        raise ModelDataError(f"{what}: the training frame is empty")
    erased = erased_ids(settings)
    if erased and entities[schemas.ENTITY_KEY].isin(erased).any():  # entities not read through _read_sim
        entities = entities.loc[~entities[schemas.ENTITY_KEY].isin(erased)].reset_index(drop=True)
    frame = store.training_frame(settings, service, entities)
    holdout = split_by_time(frame, cfg.split.holdout_days, what)
    feats = feature_columns(frame)
    ts = frame[schemas.EVENT_TS]
    info = {
        "model": what,
        "feature_service": service,
        "feature_service_version": service.rsplit("_", 1)[1],
        "label_definition": label_definition,
        "label_window_days": cfg.label.window_days,
        "entities_from": str(ts.min()),
        "entities_to": str(ts.max()),
        "holdout_from": str(ts[holdout].min()),
        "rows": len(frame),
        "train_rows": int((~holdout).sum()),
        "holdout_rows": int(holdout.sum()),
        "positives": int(frame["label"].gt(0).sum()),
        "features": len(feats),
        "digest": frame_digest(frame),
        "erased_customers_excluded": len(erased_ids(settings)),
        **extra_info,
    }
    return LabelledFrame(frame=frame, feature_columns=feats, is_holdout=holdout, info=info)


def propensity_frame(settings: Settings, cfg: ModelConfig, actions: list[str] | None = None) -> LabelledFrame:
    """Contacts (treated interactions) with label = converted within the window.

    Propensity is P(accept | offered), so only customers who were offered the action count.
    `assignment_probability` (the logging policy's probability of the contact, never a
    feature) is carried for the inverse-probability weights (`propensity.row_weights`).
    """
    unknown = sorted(set(actions or []) - set(schemas.ACTIONS))
    if unknown:
        raise ConfigError(f"unknown action(s) {unknown}; expected any of {', '.join(schemas.ACTIONS)}")
    cols = ["interaction_id", schemas.ENTITY_KEY, schemas.EVENT_TS, "action_id", "treated", "converted",
            "outcome_timestamp", "assignment_probability", "true_p_treated", "true_p_control"]
    inter = _read_sim(settings, "interactions", cols)
    inter = inter[inter["treated"] == 1]
    if actions:
        inter = inter[inter["action_id"].isin(actions)]
    window = cfg.label.window_days * DAY
    inter = inter.assign(label=((inter["converted"] == 1) & (inter["outcome_timestamp"] <= inter[schemas.EVENT_TS]
                                                               + window)).astype("int64"))
    entities, censored = censor(inter.drop(columns=["converted", "outcome_timestamp", "treated"]),
                                cfg.label.window_days, sim_data_end(settings), "propensity")
    return _finish(settings, cfg, entities, "propensity", cfg.label.description,
                   {"censored_rows": censored, "actions": ",".join(actions or schemas.ACTIONS)})


def truth_frame(settings: Settings, cfg: ModelConfig, actions: list[str] | None = None) -> pd.DataFrame:
    """The population a propensity model is judged on against the simulator's truth: every
    (customer, action) pair ELIGIBLE at the last snapshot, with the features the model reads
    at the first moment of that month a decision can be made (the snapshot + 1 hour: the
    simulator's events start then) and the true probabilities (`truth` table).

    This is who the arbitration scores, so it is the right population for P(accept | shown):
    the hold-out contacts over-represent the customers the legacy campaign chose, and it chose
    on the true probability, i.e. on traits the features see only in part. The last snapshot
    lies in every time-based hold-out the propensity config allows (`split.holdout_days` >= 30),
    so no training row comes from it.
    """
    cols = [schemas.ENTITY_KEY, schemas.EVENT_TS, "action_id", "true_p_treated", "true_p_control", "eligible"]
    truth = _read_sim(settings, "truth", cols)
    truth = truth.loc[truth["eligible"] == 1]
    if actions:
        truth = truth.loc[truth["action_id"].isin(actions)]
    if truth.empty:
        raise ModelDataError(f"the simulator's truth table has no eligible row for {actions or 'any action'}")
    entities = pd.DataFrame({schemas.ENTITY_KEY: truth[schemas.ENTITY_KEY].unique()})
    entities[schemas.EVENT_TS] = truth[schemas.EVENT_TS].iloc[0] + pd.Timedelta(hours=1)
    feats = store.training_frame(settings, cfg.feature_service, entities)
    feats = feats.drop(columns=[c for c in (schemas.EVENT_TS, schemas.REQUEST_TS, schemas.CREATED_TS)
                                if c in feats.columns])
    out = truth.drop(columns=["eligible"]).merge(feats, on=schemas.ENTITY_KEY, how="inner")
    out["action_id"] = out["action_id"].astype(str)
    return out.reset_index(drop=True)


def churn_frame(settings: Settings, cfg: ModelConfig) -> LabelledFrame:
    """One row per active customer per monthly snapshot; label = churned within the window."""
    snaps = _read_sim(settings, "profile", [schemas.ENTITY_KEY, schemas.EVENT_TS])
    customers = _read_sim(settings, "customers", [schemas.ENTITY_KEY, "churn_timestamp"])
    rows = snaps.merge(customers, on=schemas.ENTITY_KEY, how="left")
    horizon = rows[schemas.EVENT_TS] + cfg.label.window_days * DAY
    rows["label"] = (rows["churn_timestamp"].notna() & (rows["churn_timestamp"] > rows[schemas.EVENT_TS])
                     & (rows["churn_timestamp"] <= horizon)).astype("int64")
    entities, censored = censor(rows.drop(columns=["churn_timestamp"]), cfg.label.window_days,
                                sim_data_end(settings), "churn")
    return _finish(settings, cfg, entities, "churn", cfg.label.description, {"censored_rows": censored})
