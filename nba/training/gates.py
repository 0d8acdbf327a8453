"""Promotion gates: the thresholds of `evaluation/gates.yaml`, validated, and the check.

The thresholds are data (reviewers read and change the YAML, never this module). A
challenger passes when every absolute gate of its family holds (minimum positives, minimum
ROC AUC / Gini / Qini, maximum calibration error) and, on its own hold-out frame, its
primary metric is not worse than the current champion's by more than `margin`.

A gate whose figure is missing or NaN fails: a metric nobody computed proves nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from nba.errors import ConfigError
from nba.training.config import load_yaml_model

GATES_FILE = Path("evaluation") / "gates.yaml"

# The primary metrics `nba promote` can recompute on a hold-out frame, and the direction
# that is better for each; the YAML's `direction` must agree (a typo there would invert a gate).
METRIC_DIRECTIONS: dict[str, str] = {
    "log_loss": "minimize",
    "brier": "minimize",
    "roc_auc": "maximize",
    "mae": "minimize",
    "gini": "maximize",
    "qini": "maximize",
}
FAMILY_METRICS: dict[str, tuple[str, ...]] = {
    "propensity": ("log_loss", "brier", "roc_auc"),
    "churn": ("log_loss", "brier", "roc_auc"),
    "clv": ("mae", "gini"),
    "uplift": ("qini",),
}
COMPARISON_GATE = "not_worse_than_champion"


class FamilyGates(BaseModel):
    """The gates of one model family; an absent threshold is not checked."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    min_positives: int | None = Field(None, ge=0)
    min_roc_auc: float | None = Field(None, ge=0, le=1)
    max_ece: float | None = Field(None, ge=0, le=1)
    min_gini: float | None = Field(None, ge=-1, le=1)
    min_qini: float | None = None
    primary_metric: Literal["log_loss", "brier", "roc_auc", "mae", "gini", "qini"]
    direction: Literal["minimize", "maximize"]
    margin: float = Field(ge=0)

    @model_validator(mode="after")
    def _direction_matches(self) -> FamilyGates:
        expected = METRIC_DIRECTIONS[self.primary_metric]
        if self.direction != expected:
            raise ValueError(f"direction '{self.direction}' contradicts primary_metric "
                             f"'{self.primary_metric}' (lower is better: minimize; higher: maximize)")
        return self


class PromotionGates(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    propensity: FamilyGates
    churn: FamilyGates
    clv: FamilyGates
    uplift: FamilyGates

    @model_validator(mode="after")
    def _metric_fits_family(self) -> PromotionGates:
        for family, allowed in FAMILY_METRICS.items():
            metric = getattr(self, family).primary_metric
            if metric not in allowed:
                raise ValueError(f"{family}.primary_metric '{metric}' is not a {family} metric; "
                                 f"expected one of {', '.join(allowed)}")
        return self


# --- monitoring (nba evaluate drift | uplift) ------------------------------------------
# Drift methods Evidently 0.7 registers for tabular columns (its `stattest` names).
DriftMethod = Literal["wasserstein", "ks", "psi", "jensenshannon", "kl_div", "chisquare", "z", "anderson",
                      "cramer_von_mises", "hellinger", "mannw", "ed", "es", "t_test", "empirical_mmd", "TVD",
                      "fisher_exact", "g_test"]


class DriftTest(BaseModel):
    """One column's drift test: Evidently's method and its threshold (a distance: drift when
    the score is at least the threshold; a p-value test: drift when below it)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    method: DriftMethod
    threshold: float = Field(gt=0)


class DriftLimits(BaseModel):
    """`monitoring.drift`: per-feature tests by column type, overrides by feature name, the
    share of drifted features that fails a check, and the sample Evidently works on."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    numerical: DriftTest
    categorical: DriftTest
    prediction: DriftTest
    features: dict[str, DriftTest] = Field(default_factory=dict)
    ignore: list[str] = Field(default_factory=list)
    categorical_max_values: int = Field(ge=0)
    max_drift_share: float = Field(ge=0, le=1)
    sample_rows: int = Field(gt=0)
    min_rows: int = Field(gt=0)


class UpliftMonitoring(BaseModel):
    """`monitoring.uplift`: the shares of customers the uplift in the top k % is read at."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    top_shares: list[float] = Field(min_length=1)
    min_rows: int = Field(gt=0)

    @model_validator(mode="after")
    def _shares(self) -> UpliftMonitoring:
        bad = [s for s in self.top_shares if not 0 < s <= 1]
        if bad:
            raise ValueError(f"top_shares {bad} are not shares in (0, 1]")
        return self


class MonitoringLimits(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    drift: DriftLimits
    uplift: UpliftMonitoring


class EvaluationLimits(BaseModel):
    """When an experiment or off-policy estimate is too thin to trust (`nba evaluate
    incrementality | ope | policy`): the figure is still reported, flagged with the reason."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    min_arm_size: int = Field(ge=2)
    min_responses: int = Field(ge=0)
    min_rows: int = Field(ge=1)
    min_ess: float = Field(ge=0)
    max_unsupported_share: float = Field(ge=0, le=1)


class GatesConfig(BaseModel):
    """The whole `evaluation/gates.yaml`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    promotion: PromotionGates
    evaluation: EvaluationLimits | None = None  # optional: promotion alone is a valid file
    monitoring: MonitoringLimits | None = None  # read by nba.evaluation (drift, uplift)

    def family(self, family: str) -> FamilyGates:
        if family not in FAMILY_METRICS:
            raise ConfigError(f"no promotion gates for model family '{family}'; expected one of "
                              f"{', '.join(FAMILY_METRICS)}")
        return getattr(self.promotion, family)


def gates_path(home: Path) -> Path:
    return home / GATES_FILE


def load_gates(path: Path) -> GatesConfig:
    """Read and validate the gates file; errors name the file and the offending key."""
    return load_yaml_model(path, GatesConfig, "gates file")


@dataclass(frozen=True)
class GateResult:
    """One gate's verdict with the figures behind it."""

    gate: str
    passed: bool
    observed: float | None
    threshold: float | None
    message: str


def _fmt(x: float | None) -> str:
    if x is None:
        return "none"
    return f"{x:.4g}" if isinstance(x, float) else str(x)


def _bound(gate: str, observed: float | None, threshold: float, kind: Literal["min", "max"],
           what: str) -> GateResult:
    if observed is None or (isinstance(observed, float) and math.isnan(observed)):
        return GateResult(gate, False, observed, threshold,
                          f"{gate}: {what} is {'not recorded' if observed is None else 'NaN'}; "
                          f"needs {'>=' if kind == 'min' else '<='} {_fmt(threshold)}")
    passed = observed >= threshold if kind == "min" else observed <= threshold
    op = (">=" if passed else "<") if kind == "min" else ("<=" if passed else ">")
    return GateResult(gate, bool(passed), float(observed), float(threshold),
                      f"{gate}: {what} {_fmt(float(observed))} {op} {_fmt(float(threshold))}")


def check_gates(family: str, challenger_metrics: dict[str, float],
                champion_metric_on_same_frame: float | None, *,
                config: GatesConfig | None = None) -> list[GateResult]:
    """Every gate of `family`, each with its verdict (passed or not), in the YAML's order.

    `challenger_metrics` holds the challenger's hold-out figures without the `holdout_`
    prefix (`positives`, `roc_auc`, `ece`, `gini`, `qini`, and the primary metric recomputed
    on the hold-out frame). `champion_metric_on_same_frame` is the current champion's primary
    metric on the same frame, or None when there is no champion (the comparison passes).
    `config` defaults to `evaluation/gates.yaml` of the project folder (`NBA_HOME`).
    """
    if config is None:
        from nba.settings import Settings

        config = load_gates(gates_path(Settings().home))
    g = config.family(family)
    m = challenger_metrics
    out: list[GateResult] = []
    if g.min_positives is not None:
        out.append(_bound("min_positives", m.get("positives"), g.min_positives, "min", "hold-out positives"))
    if g.min_roc_auc is not None:
        out.append(_bound("min_roc_auc", m.get("roc_auc"), g.min_roc_auc, "min", "ROC AUC"))
    if g.max_ece is not None:
        out.append(_bound("max_ece", m.get("ece"), g.max_ece, "max", "expected calibration error"))
    if g.min_gini is not None:
        out.append(_bound("min_gini", m.get("gini"), g.min_gini, "min", "Gini"))
    if g.min_qini is not None:
        out.append(_bound("min_qini", m.get("qini"), g.min_qini, "min", "Qini coefficient"))

    out.append(_compare(g, m.get(g.primary_metric), champion_metric_on_same_frame))
    return out


def _compare(g: FamilyGates, challenger: float | None, champion: float | None) -> GateResult:
    metric = g.primary_metric
    if champion is None:
        return GateResult(COMPARISON_GATE, True, challenger, None,
                          f"{COMPARISON_GATE}: no current champion to compare with")
    threshold = champion + g.margin if g.direction == "minimize" else champion - g.margin
    sign = "+" if g.direction == "minimize" else "-"
    if challenger is None or math.isnan(challenger) or math.isnan(champion):
        return GateResult(COMPARISON_GATE, False, challenger, threshold,
                          f"{COMPARISON_GATE}: {metric} of challenger {_fmt(challenger)} or champion "
                          f"{_fmt(champion)} is missing or NaN")
    passed = challenger <= threshold if g.direction == "minimize" else challenger >= threshold
    verdict = "within" if passed else "worse than"
    return GateResult(COMPARISON_GATE, bool(passed), float(challenger), float(threshold),
                      f"{COMPARISON_GATE}: {metric} {_fmt(float(challenger))} {verdict} champion "
                      f"{_fmt(float(champion))} {sign} margin {_fmt(g.margin)} = {_fmt(float(threshold))} "
                      f"({g.direction}, same hold-out frame)")
