"""The model an evaluation judges: a registered model's `@champion` version, its inputs, a
frame its training run logged, and its predictions.

Drift compares served data with the run's `evaluation/reference.parquet` (a sample of the
training frame; older runs: `evaluation/holdout.parquet`); uplift scores the run's
`evaluation/holdout.parquet` (the randomised test part no choice was made on).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from nba.errors import NbaError
from nba.evaluation.reporting import champion_run
from nba.settings import Settings
from nba.training import tracking
from nba.training.registry import _load_model, family_of

REFERENCE_ARTIFACT = "evaluation/reference.parquet"  # nba.training.classifier.log_reference
HOLDOUT_ARTIFACT = "evaluation/holdout.parquet"
CLASSIFIER_FAMILIES = ("propensity", "churn")
ARTIFACT_LABELS = {
    REFERENCE_ARTIFACT: "training frame sample",
    HOLDOUT_ARTIFACT: "hold-out frame",
}


class ChampionError(NbaError):
    """The champion of a model cannot be evaluated: none, no signature, no logged frame."""


@dataclass(frozen=True)
class Champion:
    """A champion version, loaded, with the frame its run logged (`frame`, from `artifact`)."""

    name: str
    family: str
    version: str
    run_id: str
    tags: dict[str, str]
    model: Any
    inputs: list[str]
    frame: pd.DataFrame
    artifact: str

    @property
    def action(self) -> str | None:
        """The bank action of a per-action model (`nba-propensity-<action>`, `nba-uplift-<action>`);
        None for the Hillstrom e-mails and the other families."""
        if self.family not in ("propensity", "uplift"):
            return None
        rest = self.name.removeprefix(f"nba-{self.family}-")
        return None if rest.startswith("hillstrom-") else rest

    @property
    def source(self) -> str:
        """Where the frame came from, for reports."""
        label = ARTIFACT_LABELS.get(self.artifact, self.artifact)
        if self.artifact == HOLDOUT_ARTIFACT and self.tags.get("fallback") == "1":
            label += " (the run logged no training sample)"
        return f"{self.name} v{self.version} {label} ({self.artifact} of run {self.run_id[:8]})"

    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        """P(accept) for the classifiers (propensity, churn), the prediction otherwise (CLV,
        uplift)."""
        X = frame[self.inputs]
        if self.family in CLASSIFIER_FAMILIES:
            raw = self.model.predict_proba(X) if hasattr(self.model, "predict_proba") else self.model.predict(X)
            p = np.asarray(raw, dtype=float)
            return p[:, 1] if p.ndim == 2 else p
        return np.asarray(self.model.predict(X), dtype=float).ravel()


def champion_names(settings: Settings, families: Sequence[str] | None = None) -> list[str]:
    """Every registered nba-* model (of `families`) that has a @champion, sorted."""
    from mlflow.exceptions import MlflowException


    client = tracking.configure(settings)
    out = []
    for m in client.search_registered_models():
        family = family_of(m.name)
        if family is None or (families is not None and family not in families):
            continue
        try:
            client.get_model_version_by_alias(m.name, "champion")
        except MlflowException:
            continue
        out.append(m.name)
    return sorted(out)


def load_champion(settings: Settings, name: str,
                  artifacts: Sequence[str] = (REFERENCE_ARTIFACT, HOLDOUT_ARTIFACT)) -> Champion:
    """The champion version of `name`, its model, inputs and the first of `artifacts` its run logged."""
    import tempfile

    import mlflow
    from mlflow.exceptions import MlflowException


    family = family_of(name)
    if family is None:
        raise ChampionError(f"model '{name}' is not an nba model name (nba-<family>[-<action>])")
    run_id = champion_run(settings, name)
    client = tracking.configure(settings)
    version = client.get_model_version_by_alias(name, "champion")
    uri = f"models:/{name}@champion"
    info = mlflow.models.get_model_info(uri)
    inputs = info.signature.inputs.input_names() if info.signature is not None else []
    if not inputs:
        raise ChampionError(f"{name} version {version.version}: the logged model has no input signature; "
                            "retrain it to evaluate it")
    frame, found = None, ""
    with tempfile.TemporaryDirectory() as tmp:
        for artifact in artifacts:
            try:
                path = client.download_artifacts(run_id, artifact, tmp)
            except (MlflowException, OSError):
                continue
            frame, found = pd.read_parquet(path), artifact
            break
    if frame is None:
        raise ChampionError(f"{name} version {version.version}: run {run_id} logged none of {list(artifacts)}")
    tags = dict(client.get_run(run_id).data.tags)
    if found != artifacts[0]:
        tags["fallback"] = "1"
    return Champion(name, family, str(version.version), run_id, tags, _load_model(uri), list(inputs), frame, found)


def evaluate_each(names: Sequence[str], named: bool, evaluate: Callable[[str], Any],
                  progress: Callable[[str], None] | None = None) -> tuple[list[Any], list[tuple[str, str]]]:
    """`evaluate(name)` for each model. A model without usable data is skipped with the reason,
    so it does not hide the others; a model the user named fails loudly instead."""
    results: list[Any] = []
    skipped: list[tuple[str, str]] = []
    for name in names:
        if progress:
            progress(name)
        try:
            results.append(evaluate(name))
        except NbaError as exc:
            if named:
                raise
            skipped.append((name, str(exc)))
    return results, skipped
