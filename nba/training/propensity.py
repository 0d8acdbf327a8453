"""Per-action propensity: P(accept | offered), one calibrated XGBoost classifier per action.

Trained on the contacts where the action was offered (treated interactions), labels from
outcomes in the window after each contact, time-based hold-out. Each action's run logs
ROC AUC, log loss, Brier, ECE, the mean absolute error against the simulator's true
probability, a calibration plot and feature importance, and registers
`nba-propensity-<action>` (alias @challenger).

The contacts are weighted by the inverse of their logged assignment probability
(`options.weighting: ipw`, `row_weights`): the legacy campaign shows each action mostly to
the customers with the highest true probability for it, while the arbitration scores every
eligible customer. `truth_errors` judges the models there, against the simulator's truth, on
`frames.truth_frame` (benchmarks/bench_calibration.py).

`compare_strategies` trains both one-model-per-action and one pooled model with the action
as a feature on the same frames and reports them in one table.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

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

    def fit(train: pd.DataFrame) -> Any:
        if pooled is not None:
            return bind_action(pooled, action)
        return fit_classifier(cfg, train, frame.feature_columns, sample_weight=row_weights(cfg, train))

    return train_and_register(
        settings, cfg, _action_frame(frame, action), family=FAMILY,
        name=tracking.registered_name(FAMILY, action), run_name=f"propensity-{action}",
        tags={"nba.action": action, "nba.strategy": strategy}, register=register, fit=fit,
        params={"strategy": strategy, "action": action, "weighting": weighting(cfg)})


WEIGHTINGS = ("ipw", "none")


def weighting(cfg: ModelConfig) -> str:
    """`options.weighting`: `ipw` (default) or `none`."""
    value = str(cfg.options.get("weighting", "ipw"))
    if value not in WEIGHTINGS:
        raise ConfigError(f"propensity (training/{cfg.model}.yaml): key 'options.weighting' = {value!r} is not one "
                          f"of {', '.join(WEIGHTINGS)}")
    return value


def row_weights(cfg: ModelConfig, train: pd.DataFrame) -> np.ndarray | None:
    """Inverse-probability weights of the training contacts (`options.weighting: ipw`), or None.

    The legacy campaign shows an action mostly to the customers whose true probability for
    it is highest among their eligible actions, so the contacts over-represent them; the
    models then score every eligible customer. Weighting each contact by 1 / its logged
    assignment probability (clipped at `options.ips_clip`, normalised to mean 1 per action)
    makes the training rows stand for every customer the action could have been shown to:
    within each logging branch (legacy, explore) the weighted contacts represent that
    branch's decisions, and the branch was drawn independently of the customer.
    """
    if weighting(cfg) == "none":
        return None
    if "assignment_probability" not in train.columns:
        raise ModelDataError("options.weighting: ipw needs the contacts' 'assignment_probability' column")
    prob = train["assignment_probability"].to_numpy(dtype=float)
    bad = ~np.isfinite(prob) | (prob <= 0) | (prob > 1)
    if bad.any():
        raise ModelDataError(f"assignment_probability: {int(bad.sum())} value(s) outside (0, 1] "
                             f"(first {prob[bad][0]!r}); it is the logging policy's probability of the contact")
    clip = float(cfg.options.get("ips_clip", 20.0))
    if not clip >= 1.0:
        raise ConfigError(f"propensity (training/{cfg.model}.yaml): key 'options.ips_clip' = {clip!r}: expected "
                          "a number >= 1")
    w = np.minimum(1.0 / prob, clip)
    per_action = pd.Series(w).groupby(train["action_id"].astype(str).to_numpy()).transform("mean").to_numpy()
    return w / per_action


def bind_action(pooled: CalibratedXGBClassifier, action: str) -> ActionBoundClassifier:
    """The pooled model seen as one action's model (what is registered per action)."""
    return ActionBoundClassifier(pooled, action)


def fit_pooled(cfg: ModelConfig, frame: LabelledFrame) -> CalibratedXGBClassifier:
    """One model for every action, the action a feature; fitted on the training rows only."""
    train = frame.train
    return fit_classifier(cfg, train, [*frame.feature_columns, "action_id"], sample_weight=row_weights(cfg, train))


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
    tracking.require_server(settings)  # a tracking server that does not answer: before any frame is read
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
    if failures and pooled is None:
        # Too little data for a model of its own: the action borrows strength from the others
        # (the pooled model, the action a feature, bound to it), as on a small bank.
        try:
            pooled = fit_pooled(cfg, frame)
        except ModelDataError:
            pooled = None
        for action in list(failures) if pooled is not None else []:
            try:
                out.append(train_action(settings, cfg, frame, action, register=register, pooled=pooled))
                del failures[action]
            except ModelDataError as exc:
                failures[action] = str(exc)
    if failures:
        raise TrainingIncomplete(out, failures)
    return out


def fit_models(cfg: ModelConfig, frame: LabelledFrame, strategy: str | None = None,
               actions: list[str] | None = None) -> tuple[dict[str, Any], dict[str, str]]:
    """The model of each action exactly as `train_propensity` fits it (without MLflow): per
    action, or the pooled model bound to each action. Returns (models, why an action has none)."""
    strategy = strategy or str(cfg.options.get("strategy", "per_action"))
    if strategy not in STRATEGIES:
        raise ConfigError(f"propensity strategy '{strategy}' is not one of {', '.join(STRATEGIES)}")
    todo = actions or [a for a in schemas.ACTIONS if (frame.frame["action_id"] == a).any()]
    models: dict[str, Any] = {}
    failures: dict[str, str] = {}
    pooled = fit_pooled(cfg, frame) if strategy == "pooled" else None
    for action in todo:
        try:
            if pooled is not None:
                models[action] = bind_action(pooled, action)
            else:
                train = _action_frame(frame, action).train
                models[action] = fit_classifier(cfg, train, frame.feature_columns, sample_weight=row_weights(cfg, train))
        except ModelDataError as exc:
            failures[action] = str(exc)
    if failures and pooled is None:  # as train_propensity: too little data alone -> the pooled model
        try:
            fallback = fit_pooled(cfg, frame)
        except ModelDataError:
            return models, failures
        for action in list(failures):
            models[action] = bind_action(fallback, action)
            del failures[action]
    return models, failures


def truth_errors(models: dict[str, Any], truth: pd.DataFrame, features: list[str],
                 bins: int = 10) -> pd.DataFrame:
    """Per action, each model against the simulator's true P(accept | shown) on `truth`
    (`frames.truth_frame`: the customers eligible at the last snapshot): the mean absolute
    error per customer (`mae`), the mean error (`bias`), and the calibration error against
    the truth (`calibration_mae`: |mean prediction - mean truth| within `bins` equal-count
    bins of the prediction, averaged over the customers), with the mean true probability."""
    rows = []
    for action, model in models.items():
        sub = truth.loc[truth["action_id"] == action]
        if sub.empty:
            continue
        p = np.asarray(model.predict_proba(sub[features])[:, 1], dtype=float)
        t = sub["true_p_treated"].to_numpy(dtype=float)
        order = np.argsort(p, kind="stable")
        groups = np.empty(len(p), dtype=int)
        groups[order] = np.arange(len(p)) * bins // len(p)
        gap = pd.Series(p - t).groupby(groups).transform("mean").abs().mean()
        rows.append({"action": action, "customers": len(sub), "mean_true_p": float(t.mean()),
                     "mean_predicted": float(p.mean()), "mae": float(np.mean(np.abs(p - t))),
                     "bias": float(np.mean(p - t)), "calibration_mae": float(gap)})
    return pd.DataFrame(rows)


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
        model = fit_classifier(cfg, tr, feats, sample_weight=row_weights(cfg, tr))
        preds["per_action"][mask] = model.predict_proba(holdout.loc[mask, feats])[:, 1]
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
