"""Model configuration: one YAML per model family in `training/`, validated on load.

A config names the feature service the model reads, how labels are built, how the time-based
hold-out is cut, the XGBoost parameters and the Optuna search space. Unknown keys and invalid
distributions are rejected with the file and the key, before any training starts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import Field, model_validator

from nba.config import StrictModel, load_yaml_model
from nba.errors import ConfigError

MODEL_FAMILIES = ("propensity", "churn", "clv", "uplift")


class IntDist(StrictModel):
    type: Literal["int"]
    low: int
    high: int
    log: bool = False
    step: int = 1

    @model_validator(mode="after")
    def _bounds(self) -> IntDist:
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) must not exceed high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError(f"a log distribution needs low > 0 (got {self.low})")
        return self


class FloatDist(StrictModel):
    type: Literal["float"]
    low: float
    high: float
    log: bool = False

    @model_validator(mode="after")
    def _bounds(self) -> FloatDist:
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) must not exceed high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError(f"a log distribution needs low > 0 (got {self.low})")
        return self


class CategoricalDist(StrictModel):
    type: Literal["categorical"]
    choices: list[Any] = Field(min_length=1)


Distribution = Annotated[IntDist | FloatDist | CategoricalDist, Field(discriminator="type")]


class LabelConfig(StrictModel):
    """How the label is built from outcomes after the entity timestamp."""

    window_days: int = Field(gt=0, description="prediction window after the entity timestamp")
    description: str = ""


class SplitConfig(StrictModel):
    """Time-based hold-out: the last `holdout_days` of entity timestamps are never trained on."""

    holdout_days: int = Field(gt=0)
    calibration_fraction: float = Field(0.2, gt=0, lt=0.5, description="latest share of training rows for calibration")


class TuningConfig(StrictModel):
    metric: str = Field(description="metric the study optimises (on the validation split)")
    direction: Literal["minimize", "maximize"]
    search_space: dict[str, Distribution] = Field(min_length=1)


class ModelConfig(StrictModel):
    model: Literal["propensity", "churn", "clv", "uplift"]
    feature_service: str = Field(pattern=r"^[a-z0-9_]+_v[0-9]+$")
    label: LabelConfig
    split: SplitConfig
    params: dict[str, Any] = Field(default_factory=dict, description="XGBoost parameters")
    tuning: TuningConfig
    options: dict[str, Any] = Field(default_factory=dict, description="family-specific settings")

    @property
    def feature_service_version(self) -> str:
        return self.feature_service.rsplit("_", 1)[1]


def config_path(home: Path, model: str) -> Path:
    return home / "training" / f"{model}.yaml"


def best_params_path(work: Path, model: str) -> Path:
    """Where `nba tune` writes the best parameters that the next `nba train` picks up."""
    return work / "tuning" / f"{model}.best.yaml"


def load_config(path: Path) -> ModelConfig:
    """Read and validate a model config; errors name the file and the offending key."""
    return load_yaml_model(path, ModelConfig, "model config")


def load_model_config(home: Path, model: str, work: Path | None = None) -> ModelConfig:
    """The config of a model family, with tuned parameters from `nba tune` merged in if present."""
    if model not in MODEL_FAMILIES:
        raise ConfigError(f"unknown model '{model}'; expected one of {', '.join(MODEL_FAMILIES)}")
    cfg = load_config(config_path(home, model))
    if work is not None:
        best = best_params_path(work, model)
        if best.is_file():
            tuned = yaml.safe_load(best.read_text()) or {}
            params = {**cfg.params, **tuned.get("params", {})}
            cfg = cfg.model_copy(update={"params": params})
    return cfg
