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
- **Storage**: `settings.tuning_storage` (SQLite in `<work>/tuning/optuna.db` by default, the
  Postgres DSN under the production profile, or `--storage`); `load_if_exists=True`, so running
  again with the same study name adds trials. The study remembers the digest of the training
  frame it was run on; resuming it on a different frame is refused (its values would not
  be comparable). The TPE sampler is seeded with `settings.seed + trials already in the
  study`, so a resumed study does not replay its first random trials.
- **Workers**: `--workers N` starts N processes (`nba tune MODEL --until T --parent-run R`) on
  the one study until it holds `--trials` more finished (complete or pruned) trials, however
  they share them; on several machines, start `nba tune MODEL --storage URL --study S --until T`
  on each. Each worker may run one trial past the target (it was running when another reached
  it). Every storage has heartbeats (`open_storage`): a killed worker's trial is failed after
  `optuna_grace_s` by the next worker to start a trial and re-run with the same parameters by
  Optuna's `RetryHeartbeatStaleTrialCallback` (the name Optuna 5 gives `RetryFailedTrialCallback`,
  deprecated since 4.9), so the study still reaches its size. Each trial records the worker
  (`host:pid`) that ran it in `user_attrs["nba.worker"]`.
- **MLflow**: one parent run per `tune` call in the family's experiment, one child run per
  trial written after the trial ends with three calls (create, one `log_batch`, terminate).
  Pruned trials end with status KILLED and tag `nba.trial_state=PRUNED`.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
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
    workers: int = 1  # worker processes of this call
    failed_workers: tuple[str, ...] = ()  # workers that died (their trials were retried by the others)
    n_retried: int = 0  # trials of this call that re-ran a trial a dead worker left


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


def open_storage(settings: Settings, url: str | None = None) -> Any:
    """The study storage with heartbeats: a running trial records one every
    `optuna_heartbeat_s`; one silent for `optuna_grace_s` (its worker was killed, its machine
    lost) is failed by the next worker to start a trial, and `RetryHeartbeatStaleTrialCallback`
    queues it again with the same parameters (at most `optuna_max_retry` times; the retry names
    the original in `system_attrs["failed_trial"]`). A storage that does not connect is one line
    naming it and what to do, before any frame is read."""
    import optuna
    from sqlalchemy.exc import SQLAlchemyError

    url = url or settings.tuning_storage
    _prepare_storage(url)
    with warnings.catch_warnings():
        # heartbeats and the retry callback are "experimental" in Optuna 5 (since 2.8); they are
        # the documented way to survive a lost worker, and the tests kill one to prove it works
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        try:
            return optuna.storages.RDBStorage(
                url, engine_kwargs={"pool_pre_ping": True} if not url.startswith("sqlite") else None,
                heartbeat_interval=settings.optuna_heartbeat_s, grace_period=settings.optuna_grace_s,
                heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(
                    max_retry=settings.optuna_max_retry))
        except (SQLAlchemyError, ImportError, ValueError) as exc:
            first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
            raise TuningError(f"Optuna storage {redact(url)} does not open ({first}); start the database or pass "
                              "--storage / set NBA_OPTUNA_STORAGE to one that answers") from None


def finished_trials(study: Any) -> int:
    """Trials that count towards a study's size: complete and pruned (a failed one is retried)."""
    from optuna.trial import TrialState

    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))


class _StopAt:
    """Optuna callback: stop this worker once the study holds `until` finished trials, whoever
    ran them (several workers share the target; each may overshoot by its running trial)."""

    def __init__(self, until: int):
        self.until = until

    def __call__(self, study: Any, trial: Any) -> None:
        if finished_trials(study) >= self.until:
            study.stop()


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _objective(cfg: ModelConfig, path: Path, space: dict[str, Any], problem: TuningProblem,
               run_id: str) -> Callable[[Any], float]:
    import optuna

    def objective(trial: optuna.Trial) -> float:
        # who runs it and for which `tune` call: a retried trial says which worker finished it
        trial.set_user_attr("nba.worker", worker_name())
        trial.set_user_attr("nba.parent_run", run_id)
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

    return objective


def tune(settings: Settings, model: str, trials: int, timeout: float | None = None, action: str | None = None,
         study_name: str | None = None, progress: bool = False, *, storage: str | None = None, workers: int = 1,
         until: int | None = None, parent_run_id: str | None = None, worker: int = 0) -> TuneResult:
    """Run (or resume) the Optuna study of `model` for `trials` trials or `timeout` seconds and
    write the study's best parameters where the next `nba train` picks them up.

    `storage` overrides the setting. `workers > 1` starts that many worker processes on the
    one study (`_tune_workers`) until it holds `trials` more finished trials. `until` makes
    this call a worker that runs trials until the study holds `until` finished trials, whoever
    runs them (start one per machine on a shared Postgres study); `parent_run_id` (given by
    `_tune_workers`) logs its trials under that MLflow run and leaves the summary to it."""
    family(model)  # an unknown family: an error naming the known ones
    if trials < 1:
        raise ConfigError(f"--trials must be at least 1 (got {trials})")
    if timeout is not None and timeout <= 0:
        raise ConfigError(f"--timeout must be positive seconds (got {timeout})")
    if workers < 1:
        raise ConfigError(f"--workers must be at least 1 (got {workers})")
    if until is not None and until < 1:
        raise ConfigError(f"--until must be at least 1 finished trial (got {until})")
    if storage:
        settings = settings.model_copy(update={"optuna_storage": storage})
    tracking.require_server(settings)
    path = config_path(settings.home, model)
    # The YAML's own parameters, not earlier tuned ones: the search space overrides its keys and
    # the file written at the end holds exactly the searched parameters.
    cfg = load_model_config(settings.home, model)
    space = _distributions(cfg, path)
    study_name = study_name or default_study_name(model, action)
    url = settings.tuning_storage
    rdb = open_storage(settings, url)
    if workers > 1:
        return _tune_workers(settings, model, trials, timeout, action, study_name, progress, workers, rdb, cfg)
    problem = tuning_problem(settings, cfg, action)
    if problem.direction not in ("minimize", "maximize"):
        raise ConfigError(f"{model}: the tuning problem's direction '{problem.direction}' is not minimize or maximize")

    import mlflow
    import optuna

    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.create_study(
            study_name=study_name, storage=rdb, load_if_exists=True,
            direction="maximize" if problem.direction == "maximize" else "minimize",
            pruner=optuna.pruners.MedianPruner(n_startup_trials=PRUNER_STARTUP_TRIALS,
                                               n_warmup_steps=PRUNER_WARMUP_STEPS))
        before = len(study.get_trials(deepcopy=False))
        _check_study(study, study_name, url, problem)
        # seeded by the study's size and the worker: workers starting together draw different trials
        seed = settings.seed + before + 1009 * worker
        study.sampler = optuna.samplers.TPESampler(seed=seed)
        if before == 0:
            for key, value in {"model": model, "action": action or "all", "metric": problem.metric,
                               "frame_digest": str(problem.info.get("digest", ""))}.items():
                study.set_user_attr(key, value)
        callbacks: list[Any] = []
        if until is not None:
            callbacks.append(_StopAt(until))
        n_trials = trials if until is None else None

        if parent_run_id is not None:  # a worker of `_tune_workers`: trials only, under its run
            logger = _TrialLogger(settings, problem.family, parent_run_id, study_name, problem.metric, None)
            if until is None or finished_trials(study) < until:
                study.optimize(_objective(cfg, path, space, problem, parent_run_id), n_trials=n_trials,
                               timeout=timeout, callbacks=[logger, *callbacks], gc_after_trial=False)
            mine = logger.trials
            return _result(study, model, action, study_name, url, problem.metric, problem.direction, mine,
                           best_params_path(settings.work, model), parent_run_id)

        with tracking.training_run(settings, problem.family, f"tune-{study_name}", tags={
            "nba.study_name": study_name, "nba.optuna_storage": redact(url), "nba.action": action or "all",
            "nba.tuning_metric": problem.metric,
        }) as run:
            mlflow.log_params({"study_name": study_name, "trials": trials if until is None else f"until {until}",
                               "timeout_s": str(timeout), "sampler": f"TPESampler(seed={seed})",
                               "pruner": f"MedianPruner(n_startup_trials={PRUNER_STARTUP_TRIALS}, "
                                         f"n_warmup_steps={PRUNER_WARMUP_STEPS}, report_every={REPORT_EVERY})",
                               "direction": problem.direction, "study_trials_before": before,
                               **_space_summary(cfg)})
            tracking.log_frame_info(problem.info)
            mlflow.log_dict({"metric": problem.metric, "direction": problem.direction,
                             "search_space": {k: v.model_dump() for k, v in cfg.tuning.search_space.items()},
                             "fixed_params": cfg.params}, "tuning/search_space.yaml")
            bar = console.progress(trials if until is None else None, f"tune {study_name}", "trial") \
                if progress else None
            logger = _TrialLogger(settings, problem.family, run.info.run_id, study_name, problem.metric, bar)
            t0 = time.perf_counter()
            try:
                if until is None or finished_trials(study) < until:
                    study.optimize(_objective(cfg, path, space, problem, run.info.run_id), n_trials=n_trials,
                                   timeout=timeout, callbacks=[logger, *callbacks], gc_after_trial=False)
            finally:
                if bar is not None:
                    bar.close()
            result = _finish(settings, study, model, action, study_name, url, problem.metric, problem.direction,
                             logger.trials, run.info.run_id, time.perf_counter() - t0)
    finally:
        optuna.logging.set_verbosity(verbosity)
    return result


def _result(study: Any, model: str, action: str | None, study_name: str, url: str, metric: str, direction: str,
            mine: list[Any], out: Path, run_id: str, **extra: Any) -> TuneResult:
    """What a call did (`mine`: its trials) and the study's best (no complete trial: TuningError)."""
    from optuna.trial import TrialState

    n_pruned = sum(t.state == TrialState.PRUNED for t in mine)
    n_complete = sum(t.state == TrialState.COMPLETE for t in mine)
    n_study = len(study.get_trials(deepcopy=False))
    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        raise TuningError(f"study '{study_name}' has no complete trial after {n_study} trial(s) "
                          f"({n_pruned} pruned in this run); run more trials or a longer timeout")
    best = study.best_trial
    assert best.value is not None  # a complete trial has a value
    return TuneResult(model=model, action=action, study_name=study_name, storage=redact(url), metric=metric,
                      direction=direction, n_trials=len(mine), n_pruned=n_pruned, n_complete=n_complete,
                      n_study_trials=n_study, best_value=float(best.value), best_trial=best.number,
                      best_params=dict(best.params), best_params_path=out, parent_run_id=run_id, **extra)


def _finish(settings: Settings, study: Any, model: str, action: str | None, study_name: str, url: str, metric: str,
            direction: str, mine: list[Any], run_id: str, wall: float, **extra: Any) -> TuneResult:
    """Inside the call's MLflow run: log its counts, write the study's best parameters where the
    next `nba train` reads them, and return the result."""
    import mlflow
    from optuna.trial import TrialState

    counts = {"trials_run": len(mine), "trials_pruned": sum(t.state == TrialState.PRUNED for t in mine),
              "trials_complete": sum(t.state == TrialState.COMPLETE for t in mine),
              "trials_failed": sum(t.state == TrialState.FAIL for t in mine),
              "study_trials": len(study.get_trials(deepcopy=False)), "wall_s": wall}
    mlflow.log_metrics(counts)
    result = _result(study, model, action, study_name, url, metric, direction, mine,
                     best_params_path(settings.work, model), run_id, **extra)
    record = {"model": model, "action": action or "all", "study_name": study_name,
              "storage": redact(url), "metric": metric, "direction": direction,
              "value": result.best_value, "trial_number": result.best_trial, "study_trials": result.n_study_trials,
              "written_at": datetime.now(UTC).isoformat(timespec="seconds"),
              "parent_run_id": run_id, "params": result.best_params}
    _write_atomic(result.best_params_path, _best_params_yaml(record))
    mlflow.log_metrics({f"best_{metric}": result.best_value, "best_trial": result.best_trial})
    mlflow.log_dict(record, "tuning/best_params.yaml")
    mlflow.set_tags({"nba.best_trial": str(result.best_trial), "nba.best_params_path": str(result.best_params_path)})
    return result


# --- several workers on one study ------------------------------------------------------


def worker_env(settings: Settings) -> dict[str, str]:
    """The settings as the `NBA_*` variables a worker process reads them from."""
    env: dict[str, str] = {}
    for name in Settings.model_fields:
        value = getattr(settings, name)
        if value is None:
            continue
        if isinstance(value, Path):
            value = value if name == "home" else settings.path(value)
            value = value.resolve()
        key = "NBA_BUNDLE_DIR" if name == "serve_bundle" else f"NBA_{name.upper()}"
        env[key] = str(value)
    return env


def _tune_workers(settings: Settings, model: str, trials: int, timeout: float | None, action: str | None,
                  study_name: str, progress: bool, workers: int, rdb: Any, cfg: ModelConfig) -> TuneResult:
    """`workers` processes (`nba tune MODEL --until N --parent-run R`) on one study until it holds
    `trials` more finished trials; one MLflow parent run holds every worker's trials. A worker
    that dies loses nothing: its running trial is failed by the heartbeat check and retried with
    the same parameters by another. The study is complete when it reaches the target, even if a
    worker died on the way (named in `failed_workers`)."""
    import mlflow
    import optuna

    from nba.settings import TELEMETRY_OFF

    try:
        before = finished_trials(optuna.load_study(study_name=study_name, storage=rdb))
    except KeyError:  # no such study yet: the first worker creates it
        before = 0
    target = before + trials
    url = settings.tuning_storage
    logs = settings.work / "tuning" / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    procs: list[tuple[int, subprocess.Popen, Path]] = []
    with tracking.training_run(settings, model, f"tune-{study_name}", tags={
        "nba.study_name": study_name, "nba.optuna_storage": redact(url), "nba.action": action or "all",
        "nba.tuning_metric": cfg.tuning.metric, "nba.workers": str(workers),
    }) as run:
        run_id = run.info.run_id
        mlflow.log_params({"study_name": study_name, "trials": trials, "timeout_s": str(timeout), "workers": workers,
                           "study_finished_before": before, "until": target,
                           "heartbeat_s": settings.optuna_heartbeat_s, "grace_s": settings.optuna_grace_s,
                           "max_retry": settings.optuna_max_retry, **_space_summary(cfg)})
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("NBA_")}, **TELEMETRY_OFF,
               **worker_env(settings), "OMP_NUM_THREADS": "1"}
        bar = console.progress(trials, f"tune {study_name} x{workers}", "trial") if progress else None
        t0 = time.perf_counter()
        try:
            for i in range(workers):
                cmd = [sys.executable, "-m", "nba", "tune", model, "--study", study_name, "--until", str(target),
                       "--parent-run", run_id, "--worker-index", str(i)]
                if action:
                    cmd += ["--action", action]
                if timeout is not None:
                    cmd += ["--timeout", str(timeout)]
                log = logs / f"{study_name}-{run_id[:8]}-worker{i}.log"
                with open(log, "ab") as out:
                    procs.append((i, subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                                      cwd=str(settings.home), start_new_session=True), log))
            study = optuna.load_study(study_name=study_name, storage=rdb) if before else None
            done = 0
            while any(p.poll() is None for _, p, _ in procs):
                time.sleep(0.5)
                if bar is not None:
                    try:
                        study = study or optuna.load_study(study_name=study_name, storage=rdb)
                    except KeyError:
                        continue
                    now = finished_trials(study) - before
                    bar.update(max(now - done, 0))
                    done = max(done, now)
        finally:
            for _, p, _ in procs:  # interrupted: the workers go too (their trials are retried on resume)
                if p.poll() is None:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(p.pid, signal.SIGTERM)
                    p.wait(timeout=30)
            if bar is not None:
                bar.close()
        failed = tuple(f"worker {i} (pid {p.pid}) exit code {p.returncode}: {_last_line(log)}"
                       for i, p, log in procs if p.returncode != 0)
        study = optuna.load_study(study_name=study_name, storage=rdb)
        reached = finished_trials(study)
        mine = [t for t in study.get_trials(deepcopy=False) if t.user_attrs.get("nba.parent_run") == run_id]
        retried = sum(t.system_attrs.get("failed_trial") is not None for t in mine)
        mlflow.log_metrics({"workers_failed": len(failed), "trials_retried": retried})
        if failed:
            mlflow.set_tag("nba.failed_workers", "; ".join(failed)[:4000])
        if reached < target and timeout is None:
            raise TuningError(f"study '{study_name}' holds {reached} finished trial(s), {target} wanted: "
                              + ("; ".join(failed) if failed else "the workers stopped early"))
        return _finish(settings, study, model, action, study_name, url, cfg.tuning.metric, cfg.tuning.direction,
                       mine, run_id, time.perf_counter() - t0, workers=workers, failed_workers=failed,
                       n_retried=retried)


def _last_line(log: Path) -> str:
    try:
        lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "(no log)"
    return lines[-1][:300] if lines else "(empty log)"


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
