"""The training families, listed explicitly: name -> `Family`.

Every family has the same three parts, each a function of its module:

* a frame builder, `(settings, cfg, ...) -> frame`: the labelled rows from Feast and the
  outcome tables, split for training and evaluation (`frames.propensity_frame`,
  `frames.churn_frame`, `clv.load_frame`, `uplift.load_data`);
* a train function, `(settings, ...) -> TrainedModel | list[TrainedModel]`: fit, evaluate on
  the hold-out, log to MLflow, register as @challenger (`train_<family>`);
* a tuning problem, `tuning_problem(settings, cfg, action) -> TuningProblem`
  (`nba.training.problems`), what `nba tune <family>` optimises.

`family(name)` looks one up; an unknown name is an error listing the known ones. The names
are those of `training/<family>.yaml` (`nba.training.config.MODEL_FAMILIES`, which the
config loader checks without importing the training stack; a test keeps the two equal).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from nba.errors import ConfigError
from nba.settings import Settings
from nba.training import churn, clv, frames, propensity, uplift
from nba.training.config import ModelConfig
from nba.training.problems import TuningProblem


@dataclass(frozen=True)
class Family:
    """One model family: what builds its frame, trains it, and states its tuning problem."""

    name: str
    frame: Callable[..., Any]
    train: Callable[..., Any]
    tuning_problem: Callable[[Settings, ModelConfig, str | None], TuningProblem]
    sources: tuple[str, ...] = ()  # the data sets it trains on (empty: the simulated bank only)
    per_action: bool = False  # one model per action: `--action` applies


FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family(propensity.FAMILY, frame=frames.propensity_frame, train=propensity.train_propensity,
           tuning_problem=propensity.tuning_problem, per_action=True),
    Family(churn.FAMILY, frame=frames.churn_frame, train=churn.train_churn, tuning_problem=churn.tuning_problem),
    Family(clv.FAMILY, frame=clv.load_frame, train=clv.train_clv, tuning_problem=clv.tuning_problem,
           sources=clv.SOURCES),
    Family(uplift.FAMILY, frame=uplift.load_data, train=uplift.train_uplift, tuning_problem=uplift.tuning_problem,
           sources=uplift.SOURCES, per_action=True),
)}


def family(name: str) -> Family:
    """The family called `name`; a ConfigError naming the known families otherwise."""
    try:
        return FAMILIES[name]
    except KeyError:
        raise ConfigError(f"unknown model '{name}'; expected one of {', '.join(FAMILIES)}") from None
