"""Promotion and rollback: `nba promote MODEL [--to champion]`, `nba rollback MODEL`.

Promotion and rollback only move the `@champion` / `@challenger` aliases of a registered
model (`nba-propensity-<action>`, `nba-churn`, `nba-clv`, `nba-uplift-<action>`).

A challenger (the version aliased `@challenger`, or the latest version when no version has
that alias) becomes `@champion` only if it passes every gate of its family in
`evaluation/gates.yaml`. The absolute gates read the challenger run's `holdout_*` metrics.
The comparison gate scores the current champion *and* the challenger on the challenger's
logged hold-out frame (`evaluation/holdout.parquet`) with the family's primary metric,
computed the same way for both. A refusal raises `PromotionRefused` listing every failed
gate with its figures, tags the version `last_refusal` and leaves the aliases alone.

Who, when and why are tags on the versions (`promoted_by`, `promoted_at`,
`promotion_reason`, `previous_champion`; `rolled_back_*`, `demoted_*`); the registered
model keeps `champion_history`, the earlier champions (oldest first), so rollback can go
back more than once.
"""

from __future__ import annotations

import getpass
import math
import os
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nba.config import gates_path, load_gates
from nba.errors import ConfigError, NbaError
from nba.settings import Settings
from nba.training import tracking
from nba.training.config import MODEL_FAMILIES
from nba.training.gates import COMPARISON_GATE, GateResult, check_gates

if TYPE_CHECKING:
    import pandas as pd
    from mlflow.entities.model_registry import ModelVersion, RegisteredModel
    from mlflow.tracking import MlflowClient

ALIASES = ("champion", "challenger")
HISTORY_TAG = "champion_history"
HOLDOUT_ARTIFACT = "evaluation/holdout.parquet"  # what nba.training.classifier logs with every run
CLASSIFIERS = ("propensity", "churn")


class RegistryError(NbaError):
    """A registered model or version that does not exist or cannot be moved as asked."""


class PromotionRefused(NbaError):
    """A challenger failed at least one promotion gate; `results` holds every gate's verdict."""

    def __init__(self, message: str, results: list[GateResult]):
        super().__init__(message)
        self.results = results


@dataclass(frozen=True)
class PromotionResult:
    name: str
    family: str
    version: str
    alias: str  # the alias moved: champion or challenger
    previous: str | None  # the version that held the alias before, if any
    challenger_source: str  # "alias @challenger" or "latest version (no @challenger alias)"
    gates: tuple[GateResult, ...]
    by: str
    at: str
    reason: str


@dataclass(frozen=True)
class RollbackResult:
    name: str
    from_version: str
    to_version: str
    by: str
    at: str
    reason: str


def family_of(name: str) -> str | None:
    """The model family of a registered name (`nba-<family>[-<action>]`), or None."""
    if not name.startswith("nba-"):
        return None
    family = name.removeprefix("nba-").split("-", 1)[0]
    return family if family in MODEL_FAMILIES else None


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _user(user: str | None) -> str:
    if user:
        return user
    try:
        return os.environ.get("USER") or getpass.getuser()
    except Exception:  # no login name in some containers
        return "unknown"


def _registered(client: MlflowClient, name: str) -> RegisteredModel:
    """The registered model, or an error listing the registered names."""
    from mlflow.exceptions import MlflowException

    family = family_of(name)
    model = None
    if family is not None:
        try:
            model = client.get_registered_model(name)
        except MlflowException:
            model = None
    if model is None:
        names = sorted(m.name for m in client.search_registered_models())
        listed = ", ".join(names) if names else "none (train a model first: nba train MODEL)"
        why = "is not registered" if family else (
            f"is not an nba model name (nba-<family>[-<action>], family one of {', '.join(MODEL_FAMILIES)})")
        raise RegistryError(f"model '{name}' {why}; registered models: {listed}")
    return model


def _alias(client: MlflowClient, name: str, alias: str) -> ModelVersion | None:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def _versions(client: MlflowClient, name: str) -> list[ModelVersion]:
    """The model's versions, oldest first; an error if it has none."""
    versions = sorted(client.search_model_versions(f"name = '{name}'"), key=lambda v: int(v.version))
    if not versions:
        raise RegistryError(f"{name} has no versions; train one first")
    return versions


def _history(model: RegisteredModel) -> list[str]:
    return [v for v in (model.tags or {}).get(HISTORY_TAG, "").split(",") if v]


def _tag_version(client: MlflowClient, name: str, version: str, tags: dict[str, str]) -> None:
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value[:5000])


# --- scoring on the hold-out frame -------------------------------------------------------


def _load_model(uri: str) -> Any:
    """The scikit-learn object when the model has that flavour (predict_proba), else pyfunc."""
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        return mlflow.sklearn.load_model(uri)
    except MlflowException:
        return mlflow.pyfunc.load_model(uri)


def _inputs(model: Any, frame: pd.DataFrame) -> pd.DataFrame:
    """The model's input columns from the frame; a KeyError names the missing ones."""
    from nba.training.frames import feature_columns

    names = getattr(model, "feature_names_in_", None)
    if names is None and hasattr(model, "metadata"):
        schema = model.metadata.get_input_schema()
        names = schema.input_names() if schema is not None else None
    cols = list(names) if names is not None else feature_columns(frame)
    missing = [c for c in cols if c not in frame.columns]
    if missing:
        raise KeyError(f"the hold-out frame lacks column(s) {missing[:10]}")
    return frame[cols]


def primary_metric(model: Any, frame: pd.DataFrame, family: str, metric: str) -> float:
    """`metric` of `model` on a logged hold-out frame (columns: features, `label`, and for
    uplift `treated`), computed the same way for any version."""
    import numpy as np

    from nba.training import metrics as m

    X = _inputs(model, frame)
    y = frame["label"].to_numpy()
    if family in CLASSIFIERS:
        raw = model.predict_proba(X) if hasattr(model, "predict_proba") else model.predict(X)
        p = np.asarray(raw, dtype=float)
        p = p[:, 1] if p.ndim == 2 else p
        return float(m.classification_metrics(y, p)[metric])
    pred = np.asarray(model.predict(X), dtype=float).ravel()
    if family == "clv":
        if metric == "mae":
            return float(np.mean(np.abs(pred - y.astype(float))))
        return float(m.gini_and_top_decile(y, pred)[metric])
    return float(m.qini_coefficient(pred, y, frame["treated"].to_numpy()))


def _holdout_frame(client: MlflowClient, run_id: str, name: str, version: str) -> pd.DataFrame:
    import pandas as pd
    from mlflow.exceptions import MlflowException

    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = client.download_artifacts(run_id, HOLDOUT_ARTIFACT, tmp)
        except (MlflowException, OSError) as exc:
            raise RegistryError(f"{name} version {version}: run {run_id} has no {HOLDOUT_ARTIFACT} to compare "
                                f"on ({exc})") from None
        return pd.read_parquet(Path(path))


# --- promote and rollback ----------------------------------------------------------------


def promote(settings: Settings, name: str, to: str = "champion", reason: str = "",
            user: str | None = None) -> PromotionResult:
    """Move `@champion` to the challenger if it passes every gate (else raise
    `PromotionRefused`), or with `to="challenger"` move `@challenger` to the latest version."""

    if to not in ALIASES:
        raise ConfigError(f"--to must be one of {', '.join(ALIASES)} (got '{to}')")
    client = tracking.configure(settings)
    model = _registered(client, name)
    family = family_of(name)
    if family is None:  # _registered refuses such a name first; kept explicit for `python -O`
        raise ConfigError(f"'{name}' is not a platform model name (nba-<family>[-<action>])")
    by, at = _user(user), _now()

    if to == "challenger":
        latest = _versions(client, name)[-1]
        holder = _alias(client, name, "challenger")
        client.set_registered_model_alias(name, "challenger", latest.version)
        _tag_version(client, name, latest.version, {"challenger_set_by": by, "challenger_set_at": at,
                                                    "challenger_reason": reason})
        return PromotionResult(name, family, str(latest.version), "challenger",
                               str(holder.version) if holder else None, "latest version", (), by, at, reason)

    config = load_gates(gates_path(settings.home))  # a broken gates file fails before anything moves
    gates = config.family(family)
    challenger = _alias(client, name, "challenger")
    source = "alias @challenger"
    if challenger is None:
        challenger = _versions(client, name)[-1]
        source = "latest version (no @challenger alias)"
    version = str(challenger.version)
    champion = _alias(client, name, "champion")
    if champion is not None and str(champion.version) == version:
        raise RegistryError(f"{name} version {version} ({source}) is already @champion; train a new challenger "
                            f"or move @challenger with `nba promote {name} --to challenger`")
    run_id = challenger.run_id or (challenger.tags or {}).get("run_id")
    if not run_id:
        raise RegistryError(f"{name} version {version} records no training run to read its metrics from")

    run_metrics = client.get_run(run_id).data.metrics
    figures = {k.removeprefix("holdout_"): float(v) for k, v in run_metrics.items() if k.startswith("holdout_")}
    frame = _holdout_frame(client, run_id, name, version)
    figures.setdefault("positives", float((frame["label"] > 0).sum()))
    metric = gates.primary_metric
    # Both sides of the comparison are computed here, the same way, on the same rows.
    figures[metric] = primary_metric(_load_model(f"models:/{name}/{version}"), frame, family, metric)
    champion_value: float | None = None
    incomparable = ""
    if champion is not None:
        try:
            champion_value = primary_metric(_load_model(f"models:/{name}@champion"), frame, family, metric)
        except (KeyError, ValueError, NbaError) as exc:  # e.g. another feature service version
            incomparable = f"champion version {champion.version} cannot score the challenger's hold-out frame: {exc}"

    results = check_gates(family, figures, champion_value, config=config)
    if incomparable:
        results = [r if r.gate != COMPARISON_GATE else
                   GateResult(COMPARISON_GATE, False, figures[metric], None, f"{COMPARISON_GATE}: {incomparable}")
                   for r in results]
    failed = [r for r in results if not r.passed]
    if failed:
        _tag_version(client, name, version, {
            "last_refusal": f"{at} by {by}: " + "; ".join(r.message for r in failed)})
        champ = f"champion version {champion.version}" if champion else "no champion"
        raise PromotionRefused(
            f"{name} version {version} ({source}) refused as @champion ({champ} kept): "
            f"{len(failed)} of {len(results)} gate(s) failed\n" + "\n".join(f"  {r.message}" for r in failed),
            results)

    previous = str(champion.version) if champion is not None else None
    summary = "; ".join(f"{r.gate} {_short(r.observed)}" for r in results)
    _tag_version(client, name, version, {"promoted_by": by, "promoted_at": at, "promotion_reason": reason,
                                         "previous_champion": previous or "none", "promotion_gates": summary})
    client.set_registered_model_alias(name, "champion", version)
    history = _history(model) + ([previous] if previous else [])
    client.set_registered_model_tag(name, HISTORY_TAG, ",".join(history))
    client.set_registered_model_tag(name, "last_champion_change",
                                     f"promote {previous or 'none'} -> {version} at {at} by {by}: {reason}")
    return PromotionResult(name, family, version, "champion", previous, source, tuple(results), by, at, reason)


def rollback(settings: Settings, name: str, reason: str = "", user: str | None = None) -> RollbackResult:
    """Move `@champion` back to the previous champion in the model's history."""
    client = tracking.configure(settings)
    model = _registered(client, name)
    current = _alias(client, name, "champion")
    if current is None:
        raise RegistryError(f"{name} has no @champion to roll back")
    history = _history(model)
    existing = {str(v.version) for v in _versions(client, name)}
    target = None
    while history:
        candidate = history.pop()
        if candidate in existing and candidate != str(current.version):
            target = candidate
            break
    if target is None:
        raise RegistryError(f"{name}: no previous champion to roll back to (version {current.version} is the "
                            f"only one in the champion history)")
    by, at = _user(user), _now()
    _tag_version(client, name, target, {"rolled_back_by": by, "rolled_back_at": at, "rollback_reason": reason,
                                        "rolled_back_from": str(current.version)})
    _tag_version(client, name, str(current.version), {"demoted_by": by, "demoted_at": at, "demoted_reason": reason})
    client.set_registered_model_alias(name, "champion", target)
    client.set_registered_model_tag(name, HISTORY_TAG, ",".join(history))
    client.set_registered_model_tag(name, "last_champion_change",
                                    f"rollback {current.version} -> {target} at {at} by {by}: {reason}")
    return RollbackResult(name, str(current.version), target, by, at, reason)


def _short(x: float | None) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{x:.4g}"
