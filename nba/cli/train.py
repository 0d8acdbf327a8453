"""`nba train propensity | churn | clv | uplift`, `nba tune`, `nba promote`, `nba rollback`.

Every fixed choice is a `Literal` type, so a wrong value fails in argument parsing, before
anything is created (an MLflow store, a study). The values equal the library's own tuples
(`nba.training.*`), which a test checks; they are spelled here so `nba --help` imports none
of the training stack.
"""

from __future__ import annotations

from typing import Annotated, Literal, get_args

import typer

from nba.cli.common import echo, progress, settings

app = typer.Typer(help="Train, evaluate, log to MLflow and register models.", no_args_is_help=True)

PropensityStrategy = Literal["per_action", "pooled"]  # nba.training.propensity.STRATEGIES
ClvSource = Literal["cdnow", "sim", "all"]  # nba.training.clv.SOURCES and both
UpliftSource = Literal["hillstrom", "sim", "all"]  # nba.training.uplift.SOURCES and both
TunedModel = Literal["propensity", "churn", "clv", "uplift"]  # nba.training.config.MODEL_FAMILIES
Alias = Literal["champion", "challenger"]  # nba.training.registry.ALIASES

SHOWN_METRICS = ("roc_auc", "log_loss", "ece", "mae_vs_truth", "mae", "gini", "qini", "mae_improvement",
                 "uplift_corr_vs_truth")


def sources(choice: str, all_sources: object) -> list[str]:
    """The sources a `--source` choice names: one, or every one for `all`."""
    return [s for s in get_args(all_sources) if s != "all"] if choice == "all" else [choice]


def print_trained(models: list) -> None:
    for m in models:
        shown = ", ".join(f"{k} {v:.4f}" for k, v in m.metrics.items() if k in SHOWN_METRICS)
        echo(f"  {m.name} v{m.version}  {shown}")


@app.command("propensity")
def train_propensity_cmd(
    action: Annotated[list[str] | None, typer.Option("--action", help="Action id (repeat); default: all.")] = None,
    all_actions: Annotated[bool, typer.Option("--all", help="Train every action (the default).")] = False,
    strategy: Annotated[PropensityStrategy | None, typer.Option(
        help="One model per action, or one pooled model [default: training/propensity.yaml].")] = None,
    compare: Annotated[bool, typer.Option(help="Also compare per-action vs pooled models in one table.")] = False,
) -> None:
    """Per-action propensity models: calibrated XGBoost, registered as nba-propensity-<action>."""
    from nba.training import propensity

    s = settings()
    if compare:
        table = propensity.compare_strategies(s)
        run_id, winner = propensity.log_comparison(s, table)
        echo(table.round(4).to_string(index=False))
        echo(f"better strategy by hold-out log loss: {winner} (comparison run {run_id})")
    actions = None if all_actions or not action else list(action)
    try:
        with progress(len(actions) if actions else 10, "propensity models", "model") as step:
            models = propensity.train_propensity(s, actions, strategy=strategy, progress=step)
    except propensity.TrainingIncomplete as exc:
        print_trained(exc.trained)
        raise
    print_trained(models)


@app.command("churn")
def train_churn_cmd() -> None:
    """Churn within the label window: calibrated XGBoost, registered as nba-churn."""
    from nba.training.churn import train_churn

    print_trained([train_churn(settings())])


@app.command("clv")
def train_clv_cmd(
    source: Annotated[ClvSource, typer.Option(
        help="sim (the bank; nba-clv) | cdnow (nba-clv-cdnow) | all.")] = "all",
) -> None:
    """Customer lifetime value over a horizon, against the past-spend-rate baseline."""
    from nba.training.clv import train_clv

    s = settings()
    print_trained([train_clv(s, one) for one in sources(source, ClvSource)])


@app.command("uplift")
def train_uplift_cmd(
    source: Annotated[UpliftSource, typer.Option(
        help="Randomised data: Hillstrom's e-mail experiment, the bank's exploration, or both.")] = "all",
    action: Annotated[list[str] | None, typer.Option("--action", help="Action id (repeat); default: all.")] = None,
) -> None:
    """Uplift over no contact from randomised data (T-, X-learner, class transformation; best by Qini)."""
    from nba.training.uplift import HILLSTROM_ACTIONS, train_uplift

    s = settings()
    for one in sources(source, UpliftSource):
        # With --source all, each named action goes to the source that has it.
        chosen = [a for a in action or [] if (a in HILLSTROM_ACTIONS) == (one == "hillstrom")] if action else None
        if action and not chosen and source == "all":
            continue
        print_trained(train_uplift(s, one, chosen))


def tune_cmd(
    model: Annotated[TunedModel, typer.Argument(help="The model family to tune.")],
    trials: Annotated[int, typer.Option(help="Number of trials.", min=1)] = 20,
    timeout: Annotated[float | None, typer.Option(help="Stop after this many seconds.")] = None,
    action: Annotated[str | None, typer.Option(help="Action to tune (propensity, uplift).")] = None,
    study: Annotated[str | None, typer.Option(help="Study name (resumes an existing study).")] = None,
    storage: Annotated[str | None, typer.Option(
        help="Optuna storage URL, e.g. postgresql+psycopg://user@host/db [default: NBA_OPTUNA_STORAGE; SQLite "
             "in the work folder (local), the Postgres DSN (production)].")] = None,
    workers: Annotated[int, typer.Option(help="Worker processes sharing the study (--trials in total).",
                                         min=1)] = 1,
    until: Annotated[int | None, typer.Option(
        help="Run as one worker of a shared study: trials until the study holds this many finished ones "
             "(start one per machine).", min=1)] = None,
    parent_run: Annotated[str | None, typer.Option(hidden=True, help="MLflow run of the `--workers` call.")] = None,
    worker_index: Annotated[int, typer.Option(hidden=True, help="This worker's index (seeds its sampler).")] = 0,
) -> None:
    """Tune a model with Optuna; the best parameters are used by the next `nba train`.

    The search space is in training/<model>.yaml; studies live in the Optuna storage setting
    (SQLite in the work folder by default) and resume when run again with the same --study.
    With --workers N, N processes share the study; a killed worker's trial is retried.
    """
    from nba.training.tune import tune

    result = tune(settings(), model, trials, timeout, action=action, study_name=study,
                  progress=parent_run is None, storage=storage, workers=workers, until=until,
                  parent_run_id=parent_run, worker=worker_index)
    if parent_run is not None:  # a worker of `--workers`: the caller reports the study
        echo(f"worker {worker_index}: {result.n_trials} trial(s) of study {result.study_name}")
        return
    echo(f"study {result.study_name} ({result.storage}): {result.n_complete} complete, "
         f"{result.n_pruned} pruned; best {result.best_value:.5f}")
    if result.workers > 1:
        echo(f"{result.workers} workers; {result.n_retried} trial(s) retried after a worker died")
        for line in result.failed_workers:
            echo(f"  died: {line}")
    echo(f"best parameters -> {result.best_params_path}")
    for k, v in result.best_params.items():
        echo(f"  {k}: {v}")


def promote_cmd(
    model: Annotated[str, typer.Argument(help="Registered model, e.g. nba-churn or nba-propensity-mortgage.")],
    to: Annotated[Alias, typer.Option(help="Alias to move: champion (behind gates) or challenger.")] = "champion",
    reason: Annotated[str, typer.Option(help="Why (kept as a tag).")] = "",
) -> None:
    """Promote the @challenger to @champion if it passes evaluation/gates.yaml."""
    from nba.training.registry import promote

    echo(str(promote(settings(), model, to=to, reason=reason)))


def rollback_cmd(
    model: Annotated[str, typer.Argument(help="Registered model name.")],
    reason: Annotated[str, typer.Option(help="Why (kept as a tag).")] = "",
) -> None:
    """Move @champion back to the previous champion."""
    from nba.training.registry import rollback

    echo(str(rollback(settings(), model, reason=reason)))
