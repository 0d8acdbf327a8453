"""Per-action propensity: P(accept | offered), one calibrated XGBoost classifier per action.

Trained on the contacts where the action was offered (treated interactions), labels from
outcomes in the window after each contact, time-based hold-out. Each action's run logs
ROC AUC, log loss, Brier, ECE, the mean absolute error against the simulator's true
probability, a calibration plot and feature importance, and registers
`nba-propensity-<action>` (alias @challenger).

`compare_strategies` trains both one-model-per-action and one pooled model with the action
as a feature on the same frames and reports them in one table.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd

from nba import schemas
from nba.errors import ConfigError, NbaError
from nba.settings import Settings
from nba.training import tracking
from nba.training.classifier import TrainedModel, fit_classifier, train_and_register
from nba.training.config import ModelConfig, load_model_config
from nba.training.frames import LabelledFrame, propensity_frame
from nba.training.metrics import classification_metrics
from nba.training.models import ActionBoundClassifier, CalibratedXGBClassifier, ModelDataError
from nba.training.problems import TuningProblem, classifier_problem, split_part

FAMILY = "propensity"


def _action_frame(frame: LabelledFrame, action: str) -> LabelledFrame:
    mask = (frame.frame["action_id"] == action).to_numpy()
    sub = frame.frame.loc[mask].reset_index(drop=True)
    return LabelledFrame(sub, frame.feature_columns, frame.is_holdout[mask],
                         {**frame.info, "action": action, "rows": int(mask.sum()),
                          "train_rows": int((mask & ~frame.is_holdout).sum()),
                          "holdout_rows": int((mask & frame.is_holdout).sum()),
                          "positives": int(sub["label"].sum())})


STRATEGIES = ("per_action", "pooled")


def train_action(settings: Settings, cfg: ModelConfig, frame: LabelledFrame, action: str,
                 register: bool = True, pooled: CalibratedXGBClassifier | None = None) -> TrainedModel:
    """Fit (or bind the pooled model to), evaluate, log and register one action's model."""
    strategy = "pooled" if pooled is not None else "per_action"
    fit = (lambda _train: ActionBoundClassifier(pooled, action)) if pooled is not None else None
    return train_and_register(
        settings, cfg, _action_frame(frame, action), family=FAMILY,
        name=tracking.registered_name(FAMILY, action), run_name=f"propensity-{action}",
        tags={"nba.action": action, "nba.strategy": strategy}, register=register, fit=fit,
        params={"strategy": strategy, "action": action})


def fit_pooled(cfg: ModelConfig, frame: LabelledFrame) -> CalibratedXGBClassifier:
    """One model for every action, the action a feature; fitted on the training rows only."""
    return fit_classifier(cfg, frame.train, [*frame.feature_columns, "action_id"])


class TrainingIncomplete(NbaError):
    """Some models of a family could not be trained; the others were."""

    def __init__(self, trained: list[TrainedModel], failures: dict[str, str]):
        self.trained = trained
        self.failures = failures
        lines = "; ".join(f"{a}: {why}" for a, why in failures.items())
        super().__init__(f"{len(failures)} propensity model(s) not trained ({lines}); "
                         f"{len(trained)} trained and registered")


def train_propensity(settings: Settings, actions: list[str] | None = None, strategy: str | None = None,
                     progress: Callable[[str], None] | None = None, register: bool = True) -> list[TrainedModel]:
    """Train (and register) the propensity model of each action (all when `actions` is None).

    `strategy` (default: the config's `options.strategy`) is `per_action` (one model per
    action) or `pooled` (one model with the action as a feature, registered once per action).
    An action whose data cannot support a model (too few positives...) does not stop the
    others: its MLflow run is FAILED with the reason, and `TrainingIncomplete` names it at
    the end (carrying the models that were trained).
    """
    cfg = load_model_config(settings.home, FAMILY, settings.work)
    strategy = strategy or str(cfg.options.get("strategy", "per_action"))
    if strategy not in STRATEGIES:
        raise ConfigError(f"propensity strategy '{strategy}' is not one of {', '.join(STRATEGIES)}")
    frame = propensity_frame(settings, cfg, actions if strategy == "per_action" else None)
    todo = actions or [a for a in schemas.ACTIONS if (frame.frame["action_id"] == a).any()]
    pooled = fit_pooled(cfg, frame) if strategy == "pooled" else None
    out: list[TrainedModel] = []
    failures: dict[str, str] = {}
    for action in todo:
        if progress:
            progress(action)
        try:
            out.append(train_action(settings, cfg, frame, action, register=register, pooled=pooled))
        except ModelDataError as exc:
            failures[action] = str(exc)
    if failures:
        raise TrainingIncomplete(out, failures)
    return out


def compare_strategies(settings: Settings, cfg: ModelConfig | None = None,
                       frame: LabelledFrame | None = None) -> pd.DataFrame:
    """One model per action vs one pooled model with the action as a feature, on the same
    hold-out rows; one row per action and strategy plus an 'all' row per strategy."""
    cfg = cfg or load_model_config(settings.home, FAMILY, settings.work)
    frame = frame or propensity_frame(settings, cfg)
    train, holdout = frame.train, frame.holdout
    feats = frame.feature_columns
    rows = []
    preds = {"per_action": np.zeros(len(holdout)), "pooled": np.zeros(len(holdout))}
    for action in sorted(holdout["action_id"].unique()):
        tr = train[train["action_id"] == action]
        mask = (holdout["action_id"] == action).to_numpy()
        if tr["label"].sum() < int(cfg.options.get("min_positives", 1)):
            preds["per_action"][mask] = tr["label"].mean() if len(tr) else 0.0
            continue
        preds["per_action"][mask] = fit_classifier(cfg, tr, feats).predict_proba(holdout.loc[mask, feats])[:, 1]
    pooled_feats = [*feats, "action_id"]
    preds["pooled"] = fit_pooled(cfg, frame).predict_proba(holdout[pooled_feats])[:, 1]
    y = holdout["label"].to_numpy()
    truth = holdout["true_p_treated"].to_numpy()
    for strategy, p in preds.items():
        for action in [*sorted(holdout["action_id"].unique()), "all"]:
            m = np.ones(len(y), bool) if action == "all" else (holdout["action_id"] == action).to_numpy()
            met = classification_metrics(y[m], p[m])
            rows.append({"strategy": strategy, "action": action, "rows": int(m.sum()),
                         "positives": int(y[m].sum()), "roc_auc": met["roc_auc"], "log_loss": met["log_loss"],
                         "brier": met["brier"], "ece": met["ece"],
                         "mae_vs_truth": float(np.mean(np.abs(p[m] - truth[m])))})
    return pd.DataFrame(rows)


def log_comparison(settings: Settings, table: pd.DataFrame) -> tuple[str, str]:
    """Log the strategy comparison as an MLflow run (table as csv and markdown); return
    (run id, the better strategy by overall hold-out log loss)."""
    import tempfile
    from pathlib import Path

    import mlflow

    overall = table[table["action"] == "all"].set_index("strategy")
    winner = str(overall["log_loss"].idxmin())
    with tracking.training_run(settings, FAMILY, "propensity-strategy-comparison",
                               tags={"nba.winner": winner}) as run:
        for strategy, row in overall.iterrows():
            mlflow.log_metrics({f"{strategy}_{k}": float(row[k]) for k in
                                ("roc_auc", "log_loss", "brier", "ece", "mae_vs_truth")})
        with tempfile.TemporaryDirectory() as tmp:
            table.to_csv(Path(tmp) / "comparison.csv", index=False)
            (Path(tmp) / "comparison.md").write_text(table.round(4).to_markdown(index=False))
            mlflow.log_artifacts(tmp, artifact_path="comparison")
    return run.info.run_id, winner


# --- tuning ----------------------------------------------------------------------------


def tuning_problem(settings: Settings, cfg: ModelConfig, action: str | None = None) -> TuningProblem:
    """Validation log loss (or ROC AUC) of one action's model, or (no action) of every action's
    model with shared parameters (`nba.training.problems.classifier_problem`); with
    `options.strategy: pooled`, of one model with the action as a feature. Actions with too
    few positives are skipped (and named in the problem's info)."""
    frame = propensity_frame(settings, cfg, [action] if action else None)
    train = frame.train
    min_pos = int(cfg.options.get("min_positives", 1))
    frac = cfg.split.calibration_fraction
    info = {**frame.info, "action": action or "all"}
    if action is None and cfg.options.get("strategy") == "pooled":
        parts = [split_part("pooled", train, [*frame.feature_columns, "action_id"], frac, min_pos)]
        return classifier_problem(cfg, parts, {**info, "strategy": "pooled"})
    parts, skipped = [], []
    for a in [action] if action else list(schemas.ACTIONS):
        rows = train.loc[train["action_id"] == a].reset_index(drop=True)
        try:
            parts.append(split_part(f"propensity-{a}", rows, frame.feature_columns, frac, min_pos))
        except ModelDataError:
            if action:
                raise
            skipped.append(a)
    if not parts:
        raise ModelDataError(f"propensity: no action has enough positives to tune (skipped {', '.join(skipped)})")
    return classifier_problem(cfg, parts, {**info, "strategy": "per_action",
                                            "skipped_actions": ",".join(skipped) or "none"})
