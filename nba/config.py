"""The one loader of the YAML files a user edits, and the schema of `evaluation/gates.yaml`.

`load_yaml_model` reads every YAML file the project reads (the model configs in
`training/`, the action catalog and policies in `serving/`, the gates in `evaluation/`), so
each fails the same way before anything runs: the error names the file, the key and the
reason, unknown keys first (a typo explains the "missing" key beside it).

The gates file is read by training (`nba promote` checks a challenger against the promotion
gates, `nba.training.gates`) and by evaluation (drift, uplift, experiment and off-policy
limits), so its schema lives here, beside the loader, rather than in either of them.
"""

from __future__ import annotations

import reprlib
from pathlib import Path
from typing import Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from nba.errors import ConfigError


class StrictModel(BaseModel):
    """A section of a user-edited file: unknown keys are errors, values are read-only."""

    model_config = ConfigDict(extra="forbid", frozen=True)


M = TypeVar("M", bound=BaseModel)


class _AliasRefused(yaml.MarkedYAMLError):
    pass


class _NoAliasLoader(yaml.SafeLoader):
    """PyYAML's safe loader without aliases: nine lines of `&a [*b, *b, ...]` expand to a billion
    values and hang whatever reads them. The files a user edits write their values out."""

    def compose_node(self, parent: yaml.Node | None, index: object) -> yaml.Node | None:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise _AliasRefused(problem=f"the alias *{event.anchor}", problem_mark=event.start_mark)
        return super().compose_node(parent, index)  # type: ignore[no-untyped-call]


_SHORT = reprlib.Repr()  # the offending value in an error, cut short (a value may be huge)
_SHORT.maxlevel, _SHORT.maxlist, _SHORT.maxdict, _SHORT.maxstring, _SHORT.maxother = 2, 5, 5, 80, 80


def load_yaml_model(path: Path, model: type[M], what: str) -> M:
    """Read a YAML file into a validated pydantic model; errors name the file and the key.

    `what` says what the file is ("model config", "gates file") for the not-found message.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} {path} not found")
    try:
        raw = yaml.load(path.read_text(), Loader=_NoAliasLoader)  # a SafeLoader: no Python objects
    except _AliasRefused as exc:
        mark = exc.problem_mark
        raise ConfigError(f"{path}: line {mark.line + 1 if mark else '?'}: {exc.problem} is not allowed; write "
                          "the value out (an alias can expand a few lines into billions of values)") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(raw).__name__}")
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        err = sorted(exc.errors(), key=lambda e: e["type"] != "extra_forbidden")[0]
        key = ".".join(str(p) for p in err["loc"])
        msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"].removeprefix("Value error, ")
        where = f"key '{key}'" if key else "top level"
        raise ConfigError(f"{path}: {where}: {msg} (got {_SHORT.repr(err.get('input'))})") from None


# --- evaluation/gates.yaml -------------------------------------------------------------

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


class FamilyGates(StrictModel):
    """The gates of one model family; an absent threshold is not checked."""

    min_positives: int | None = Field(None, ge=0)
    min_roc_auc: float | None = Field(None, ge=0, le=1)
    max_ece: float | None = Field(None, ge=0, le=1)
    min_gini: float | None = Field(None, ge=-1, le=1)
    min_qini: float | None = None
    beat_baseline: list[Literal["mae", "rmse"]] = Field(
        default_factory=list, description="hold-out errors that must be below the run's own baseline model's")
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


class PromotionGates(StrictModel):
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


class DriftTest(StrictModel):
    """One column's drift test: Evidently's method and its threshold (a distance: drift when
    the score is at least the threshold; a p-value test: drift when below it)."""

    method: DriftMethod
    threshold: float = Field(gt=0)


class DriftLimits(StrictModel):
    """`monitoring.drift`: per-feature tests by column type, overrides by feature name, the
    share of drifted features that fails a check, and the sample Evidently works on."""

    numerical: DriftTest
    categorical: DriftTest
    prediction: DriftTest
    features: dict[str, DriftTest] = Field(default_factory=dict)
    ignore: list[str] = Field(default_factory=list)
    categorical_max_values: int = Field(ge=0)
    max_drift_share: float = Field(ge=0, le=1)
    sample_rows: int = Field(gt=0)
    min_rows: int = Field(gt=0)


class UpliftMonitoring(StrictModel):
    """`monitoring.uplift`: the shares of customers the uplift in the top k % is read at."""

    top_shares: list[float] = Field(min_length=1)
    min_rows: int = Field(gt=0)

    @model_validator(mode="after")
    def _shares(self) -> UpliftMonitoring:
        bad = [s for s in self.top_shares if not 0 < s <= 1]
        if bad:
            raise ValueError(f"top_shares {bad} are not shares in (0, 1]")
        return self


class MonitoringLimits(StrictModel):
    drift: DriftLimits
    uplift: UpliftMonitoring


class EvaluationLimits(StrictModel):
    """When an experiment or off-policy estimate is too thin to trust (`nba evaluate
    incrementality | ope | policy`): the figure is still reported, flagged with the reason."""

    min_arm_size: int = Field(ge=2)
    min_responses: int = Field(ge=0)
    min_rows: int = Field(ge=1)
    min_ess: float = Field(ge=0)
    max_unsupported_share: float = Field(ge=0, le=1)


class ColdStart(StrictModel):
    """`cold_start`: an action without a trained model, or with fewer than `mature_positives`
    accepted outcomes in the log, is scored by Thompson sampling from a Beta prior pooled over
    its group and issue (`prior_strength` pseudo-observations at each level); the probability
    of the Thompson choice is estimated with `thompson_draws` Monte Carlo draws."""

    mature_positives: int = Field(ge=1)
    prior_strength: float = Field(gt=0)
    thompson_draws: int = Field(ge=100)


class GatesConfig(StrictModel):
    """The whole `evaluation/gates.yaml`."""

    promotion: PromotionGates
    cold_start: ColdStart | None = None  # optional: read by the cold-start scorer
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
