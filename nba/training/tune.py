"""Hyper-parameter tuning with Optuna: `nba tune MODEL --trials N --timeout S`.

The family comes from the registry (`nba.training.families`), and with it the family's
`tuning_problem(settings, cfg, action) -> TuningProblem` (`nba.training.problems`): the data
already split, and a `score(params, report)` that fits with `params` on the training part
and returns the tuned metric on the validation part, calling `report(value, step)` with
intermediate values where the model allows it (boosting rounds), so the pruner can stop a
hopeless trial early. `report` raises `optuna.TrialPruned` when the trial should stop.

Choices, in one place:

- **Validation split**: the latest `split.calibration_fraction` of the training rows (time
  order), never the hold-out. The booster is therefore tuned on exactly the rows it is fitted
  on in `nba train` (which holds back the same latest share for its calibration).
- **Metric**: the booster's validation log loss (or ROC AUC if `tuning.metric` says so);
  the calibrator fitted afterwards in training is not part of the search.
- **Pruning**: XGBoost reports the validation metric every `REPORT_EVERY` boosting rounds
  (step = round); `MedianPruner` stops a trial that is worse than the median of earlier
  trials at the same round, after `PRUNER_WARMUP_STEPS` rounds and `PRUNER_STARTUP_TRIALS`
  complete trials. Slow learning rates are penalised early; that is the usual trade.
  The validation matrix is evaluated only at those checkpoints (XGBoost's prediction cache
  adds the new trees), not every round.
- **Threads**: one XGBoost thread per trial, trials one after another; to use more cores,
  start more workers on the same study (the storage URL is a setting for that).
- **Propensity**: with `action`, the study tunes that action's model alone; without it, the
  objective is the validation-row-weighted mean over one model per action, all fitted with
  the same parameters (that is how `nba train propensity` uses the config's one `params`
  block); with `options.strategy: pooled`, one model with `action_id` as a feature.
  Steps of the per-action objective are `action index * ACTION_STRIDE + round`, so trials
  stay comparable step by step. Actions with too few positives are skipped (and logged).
- **Where the best parameters go**: `best_params_path(work, model)`, one file per family,
  because that is the file `load_model_config` merges and `nba train propensity` applies
  one parameter set to every action. Tuning one action therefore sets the parameters of
  all actions; the file says which action (or `all`) and which study it came from.
- **Storage**: `settings.tuning_storage` (SQLite in `<work>/tuning/optuna.db` by default, a
  Postgres URL to share a study between workers); `load_if_exists=True`, so running again
  with the same study name adds trials. The study remembers the digest of the training
  frame it was run on; resuming it on a different frame is refused (its values would not
  be comparable). The TPE sampler is seeded with `settings.seed + trials already in the
  study`, so a resumed study does not replay its first random trials.
- **MLflow**: one parent run per `tune` call in the family's experiment, one child run per
  trial written after the trial ends with three calls (create, one `log_batch`, terminate).
  Pruned trials end with status KILLED and tag `nba.trial_state=PRUNED`.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nba import console
from nba.errors import ConfigError, NbaError
from nba.settings import Settings
from nba.training import tracking
from nba.training.config import (
    CategoricalDist,
    FloatDist,
    ModelConfig,
    best_params_path,
    config_path,
    load_model_config,
)
from nba.training.families import family
from nba.training.problems import REPORT_EVERY, TuningProblem

if TYPE_CHECKING:
    from optuna.distributions import BaseDistribution


# Pruning: a trial is compared with the median of earlier trials at the same boosting round
# once 5 trials are complete and it has had 50 rounds (the smallest `n_estimators` of the
# shipped search spaces). On the 100,000-customer benchmark this pruned 6 of 20 trials and
# found the same best trial as no pruning; 3 trials / 20 rounds pruned 11 and missed it.
PRUNER_STARTUP_TRIALS = 5
PRUNER_WARMUP_STEPS = 50
MLFLOW_BATCH = 1000  # MLflow's limit of metrics per log_batch call


@dataclass(frozen=True)
class TuneResult:
    """What one `tune` call did; counts are this call's trials, best is the study's best."""

    model: str
    action: str | None
    study_name: str
    storage: str  # password, if any, masked
    metric: str
    direction: str
    n_trials: int  # trials this call ran
    n_pruned: int
    n_complete: int
    n_study_trials: int  # all trials of the study, earlier calls included
    best_value: float
    best_trial: int
    best_params: dict[str, Any]
    best_params_path: Path
    parent_run_id: str


class TuningError(NbaError):
    """A study that produced nothing usable (no complete trial)."""


def tuning_problem(settings: Settings, cfg: ModelConfig, action: str | None = None) -> TuningProblem:
    """The tuning problem of `cfg.model`, from its family in the registry."""
    return family(cfg.model).tuning_problem(settings, cfg, action)


# --- search space ------------------------------------------------------------------------


def _distributions(cfg: ModelConfig, path: Path) -> dict[str, BaseDistribution]:
    """The search space as Optuna distributions; a value Optuna rejects is a ConfigError
    naming the file, the parameter and the value."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    out: dict[str, BaseDistribution] = {}
    for name, d in cfg.tuning.search_space.items():
        key = f"tuning.search_space.{name}"
        try:
            if isinstance(d, CategoricalDist):
                bad = [c for c in d.choices if c is not None and not isinstance(c, bool | int | float | str)]
                if bad:
                    raise ValueError(f"choices must be numbers, strings, booleans or null, not {bad!r}")
                out[name] = CategoricalDistribution(d.choices)
            elif isinstance(d, FloatDist):
                out[name] = FloatDistribution(d.low, d.high, log=d.log)
            else:
                out[name] = IntDistribution(d.low, d.high, log=d.log, step=d.step)
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"{path}: key '{key}': Optuna rejects {d.model_dump()}: {exc}") from None
    return out


def _suggest(trial: Any, cfg: ModelConfig, path: Path) -> dict[str, Any]:
    """One value per searched parameter; a value Optuna rejects names the file, key and value."""
    out: dict[str, Any] = {}
    for name, d in cfg.tuning.search_space.items():
        try:
            if isinstance(d, CategoricalDist):
                out[name] = trial.suggest_categorical(name, d.choices)
            elif isinstance(d, FloatDist):
                out[name] = trial.suggest_float(name, d.low, d.high, log=d.log)
            else:
                out[name] = trial.suggest_int(name, d.low, d.high, log=d.log, step=d.step)
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"{path}: key 'tuning.search_space.{name}': Optuna rejects "
                              f"{d.model_dump()}: {exc}") from None
    return out


# --- storage and logging helpers -----------------------------------------------------


def default_study_name(model: str, action: str | None = None) -> str:
    return f"{model}-{action}" if action else model


def redact(url: str) -> str:
    """A storage URL without its password."""
    return re.sub(r"(://[^:/@]+:)[^@/]+@", r"\1***@", url)


def _prepare_storage(url: str) -> None:
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)


def _ms(dt: datetime | None) -> int:
    return int((dt or datetime.now(UTC)).timestamp() * 1000)


def _write_atomic(path: Path, text: str) -> None:
    """Write via a temporary file in the same folder and rename it over the target."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _space_summary(cfg: ModelConfig) -> dict[str, str]:
    return {f"space.{name}": " ".join(f"{k}={v}" for k, v in d.model_dump().items())[:500]
            for name, d in cfg.tuning.search_space.items()}


class _TrialLogger:
    """Optuna callback: one MLflow child run per finished trial, three store calls each."""

    def __init__(self, settings: Settings, family: str, parent_run_id: str, study_name: str, metric: str,
                 bar: Any):
        self.client = tracking.configure(settings)
        self.experiment_id = tracking.experiment_id(settings, family)
        self.parent = parent_run_id
        self.study_name = study_name
        self.family = family
        self.metric = metric
        self.bar = bar
        self.trials: list[Any] = []

    def __call__(self, study: Any, trial: Any) -> None:
        from mlflow.entities import Metric, Param
        from optuna.trial import TrialState

        self.trials.append(trial)
        state = trial.state.name
        run = self.client.create_run(
            self.experiment_id, start_time=_ms(trial.datetime_start), run_name=f"trial-{trial.number}",
            tags={"mlflow.parentRunId": self.parent, "nba.family": self.family, "nba.study_name": self.study_name,
                  "nba.trial_number": str(trial.number), "nba.trial_state": state})
        ts = _ms(trial.datetime_complete)
        metrics = [Metric(f"valid_{self.metric}", float(v), ts, int(step))
                   for step, v in sorted(trial.intermediate_values.items()) if math.isfinite(v)]
        if trial.state == TrialState.COMPLETE and trial.value is not None:  # a pruned trial has no final value
            metrics.append(Metric(self.metric, float(trial.value), ts, 0))
        if trial.duration is not None:
            metrics.append(Metric("duration_s", trial.duration.total_seconds(), ts, 0))
        params = [Param(k, str(v)[:500]) for k, v in trial.params.items()]
        for i in range(0, max(len(metrics), 1), MLFLOW_BATCH):
            self.client.log_batch(run.info.run_id, metrics=metrics[i:i + MLFLOW_BATCH],
                                  params=params if i == 0 else [],
                                  tags=[])
        status = {TrialState.COMPLETE: "FINISHED", TrialState.PRUNED: "KILLED"}.get(trial.state, "FAILED")
        self.client.set_terminated(run.info.run_id, status=status, end_time=ts)
        if self.bar is not None:
            self.bar.update(1)
            with contextlib.suppress(ValueError):  # no complete trial yet
                self.bar.set_postfix_str(f"best {self.metric} {study.best_value:.5g}", refresh=False)


# --- the study -----------------------------------------------------------------------


def tune(settings: Settings, model: str, trials: int, timeout: float | None = None, action: str | None = None,
         study_name: str | None = None, progress: bool = False) -> TuneResult:
    """Run (or resume) the Optuna study of `model` for `trials` trials or `timeout` seconds and
    write the study's best parameters where the next `nba train` picks them up."""
    family(model)  # an unknown family: an error naming the known ones
    if trials < 1:
        raise ConfigError(f"--trials must be at least 1 (got {trials})")
    if timeout is not None and timeout <= 0:
        raise ConfigError(f"--timeout must be positive seconds (got {timeout})")
    path = config_path(settings.home, model)
    # The YAML's own parameters, not earlier tuned ones: the search space overrides its keys and
    # the file written at the end holds exactly the searched parameters.
    cfg = load_model_config(settings.home, model)
    space = _distributions(cfg, path)
    problem = tuning_problem(settings, cfg, action)
    if problem.direction not in ("minimize", "maximize"):
        raise ConfigError(f"{model}: the tuning problem's direction '{problem.direction}' is not minimize or maximize")
    study_name = study_name or default_study_name(model, action)

    import mlflow
    import optuna

    url = settings.tuning_storage
    _prepare_storage(url)
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.create_study(
            study_name=study_name, storage=url, load_if_exists=True,
            direction="maximize" if problem.direction == "maximize" else "minimize",
            pruner=optuna.pruners.MedianPruner(n_startup_trials=PRUNER_STARTUP_TRIALS,
                                               n_warmup_steps=PRUNER_WARMUP_STEPS))
        before = len(study.get_trials(deepcopy=False))
        _check_study(study, study_name, url, problem)
        study.sampler = optuna.samplers.TPESampler(seed=settings.seed + before)
        if before == 0:
            for key, value in {"model": model, "action": action or "all", "metric": problem.metric,
                               "frame_digest": str(problem.info.get("digest", ""))}.items():
                study.set_user_attr(key, value)

        def objective(trial: optuna.Trial) -> float:
            params = {**cfg.params, **_suggest(trial, cfg, path)}

            def report(value: float, step: int) -> None:
                trial.report(value, step)
                if trial.should_prune():
                    raise optuna.TrialPruned(f"pruned at step {step} ({problem.metric} {value:.5g})")

            try:
                return problem.score(params, report)
            except (optuna.TrialPruned, NbaError):
                raise
            except Exception as exc:
                if _is_model_rejection(exc):
                    raise ConfigError(
                        f"{path}: tuning.search_space: the model rejected trial {trial.number}'s parameters "
                        f"{ {k: params[k] for k in space} }: {str(exc).splitlines()[0][:300]}") from None
                raise

        with tracking.training_run(settings, problem.family, f"tune-{study_name}", tags={
            "nba.study_name": study_name, "nba.optuna_storage": redact(url), "nba.action": action or "all",
            "nba.tuning_metric": problem.metric,
        }) as run:
            mlflow.log_params({"study_name": study_name, "trials": trials, "timeout_s": str(timeout),
                               "sampler": f"TPESampler(seed={settings.seed + before})",
                               "pruner": f"MedianPruner(n_startup_trials={PRUNER_STARTUP_TRIALS}, "
                                         f"n_warmup_steps={PRUNER_WARMUP_STEPS}, report_every={REPORT_EVERY})",
                               "direction": problem.direction, "study_trials_before": before,
                               **_space_summary(cfg)})
            tracking.log_frame_info(problem.info)
            mlflow.log_dict({"metric": problem.metric, "direction": problem.direction,
                             "search_space": {k: v.model_dump() for k, v in cfg.tuning.search_space.items()},
                             "fixed_params": cfg.params}, "tuning/search_space.yaml")
            bar = console.progress(trials, f"tune {study_name}", "trial") if progress else None
            logger = _TrialLogger(settings, problem.family, run.info.run_id, study_name, problem.metric, bar)
            t0 = time.perf_counter()
            try:
                study.optimize(objective, n_trials=trials, timeout=timeout, callbacks=[logger],
                               gc_after_trial=False)
            finally:
                if bar is not None:
                    bar.close()
            wall = time.perf_counter() - t0
            mine = logger.trials
            n_pruned = sum(t.state == optuna.trial.TrialState.PRUNED for t in mine)
            n_complete = sum(t.state == optuna.trial.TrialState.COMPLETE for t in mine)
            n_study = len(study.get_trials(deepcopy=False))
            complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
            mlflow.log_metrics({"trials_run": len(mine), "trials_pruned": n_pruned, "trials_complete": n_complete,
                                "study_trials": n_study, "wall_s": wall})
            if not complete:
                raise TuningError(f"study '{study_name}' has no complete trial after {n_study} trial(s) "
                                  f"({n_pruned} pruned in this run); run more trials or a longer timeout")
            best = study.best_trial
            assert best.value is not None  # a complete trial has a value
            out = best_params_path(settings.work, model)
            record = {"model": model, "action": action or "all", "study_name": study_name,
                      "storage": redact(url), "metric": problem.metric, "direction": problem.direction,
                      "value": float(best.value), "trial_number": best.number, "study_trials": n_study,
                      "written_at": datetime.now(UTC).isoformat(timespec="seconds"),
                      "parent_run_id": run.info.run_id, "params": dict(best.params)}
            _write_atomic(out, _best_params_yaml(record))
            mlflow.log_metrics({f"best_{problem.metric}": float(best.value), "best_trial": best.number})
            mlflow.log_dict(record, "tuning/best_params.yaml")
            mlflow.set_tags({"nba.best_trial": str(best.number), "nba.best_params_path": str(out)})
    finally:
        optuna.logging.set_verbosity(verbosity)
    return TuneResult(model=model, action=action, study_name=study_name, storage=redact(url),
                      metric=problem.metric, direction=problem.direction, n_trials=len(mine), n_pruned=n_pruned,
                      n_complete=n_complete, n_study_trials=n_study, best_value=float(best.value),
                      best_trial=best.number, best_params=dict(best.params), best_params_path=out,
                      parent_run_id=run.info.run_id)


def _check_study(study: Any, name: str, url: str, problem: TuningProblem) -> None:
    """Refuse to resume a study that optimised the other way or ran on another frame."""
    if study.direction.name.lower() != problem.direction:
        raise ConfigError(f"study '{name}' in {redact(url)} was created to {study.direction.name.lower()}, "
                          f"but {problem.family}'s {problem.metric} is to {problem.direction}; "
                          "pass another study name")
    old = study.user_attrs.get("frame_digest")
    new = str(problem.info.get("digest", ""))
    if old and new and old != new:
        raise ConfigError(f"study '{name}' in {redact(url)} was run on another training frame (digest "
                          f"{old[:12]}..., now {new[:12]}...): its values are not comparable; pass another "
                          "study name to start afresh")


def _is_model_rejection(exc: Exception) -> bool:
    """An exception that says the estimator refused a parameter value."""
    try:
        import xgboost as xgb

        if isinstance(exc, xgb.core.XGBoostError):
            return True
    except ImportError:  # pragma: no cover
        pass
    return isinstance(exc, ValueError | TypeError) and "param" in str(exc).lower()


def _best_params_yaml(record: dict[str, Any]) -> str:
    import yaml

    header = (f"# Written by `nba tune {record['model']}` at {record['written_at']}; the next `nba train "
              f"{record['model']}`\n# merges `params` over training/{record['model']}.yaml. Delete this file "
              "to train with the YAML's parameters.\n")
    return header + yaml.safe_dump(record, sort_keys=False)
