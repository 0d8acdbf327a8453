"""The `nba` command line: one Typer app, thin commands over plain functions.

Heavy libraries are imported inside the commands, so `nba --help` answers at once. Errors a
user can cause (`NbaError`) print as one line on stderr with a non-zero exit code; `--debug`
shows the traceback.
"""

from __future__ import annotations

import json
import sys
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from nba.errors import NbaError

app = typer.Typer(
    name="nba",
    help="Next-Best-Action platform: data, features, models, decisions, evaluation.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # help texts say "[default: ...]" literally; rich markup would swallow it
)
data_app = typer.Typer(help="Real data sets (Hillstrom, CDNOW), the bank simulator, RFM.", no_args_is_help=True)
features_app = typer.Typer(help="The Feast feature store: apply, materialize, read.", no_args_is_help=True)
train_app = typer.Typer(help="Train, evaluate, log to MLflow and register models.", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(features_app, name="features")
app.add_typer(train_app, name="train")
bundle_app = typer.Typer(help="The serving bundle: champion models, catalog and policies as a Bento.",
                         no_args_is_help=True)
app.add_typer(bundle_app, name="bundle")
evaluate_app = typer.Typer(help="Drift, uplift, hold-out incrementality and off-policy value.", no_args_is_help=True)
app.add_typer(evaluate_app, name="evaluate")

_state: dict[str, Any] = {"debug": False}

DataDirOpt = Annotated[
    Path | None,
    typer.Option("--data-dir", help="Folder with hillstrom.csv.zip and CDNOW_master.txt.gz [env NBA_DATA_DIR]"),
]


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks on errors.")] = False,
) -> None:
    _state["debug"] = debug
    from nba.console import quiet_libraries
    from nba.settings import disable_telemetry

    disable_telemetry()
    quiet_libraries()


def _settings(**overrides: Any):
    from pydantic import ValidationError

    from nba.errors import ConfigError
    from nba.settings import Settings

    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        raise ConfigError(
            f"setting '{field}' (env NBA_{field.upper()}): {first['msg']} (got {first.get('input')!r})"
        ) from None


def _echo(msg: str = "") -> None:
    typer.echo(msg)


def _parse_time(value: str | None, option: str) -> datetime | None:
    """A date or timestamp option as an aware UTC datetime (naive values are taken as UTC)."""
    if value is None:
        return None
    import pandas as pd

    try:
        ts = pd.Timestamp(value)
    except ValueError:
        raise NbaError(f"{option}: '{value}' is not a date or timestamp (expected e.g. 2025-06-30)") from None
    ts = ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")
    return ts.to_pydatetime()


# --- data --------------------------------------------------------------------------


@data_app.command("simulate")
def data_simulate(
    customers: Annotated[int, typer.Option(help="Number of customers to simulate.", min=1)] = 20_000,
    seed: Annotated[int, typer.Option(help="Random seed: the same seed gives the same bank.")] = 7,
    months: Annotated[int, typer.Option(help="Months of history (one feature snapshot per month).", min=2)] = 12,
    out: Annotated[Path | None, typer.Option(help="Output folder [default: <work>/sim].")] = None,
) -> None:
    """Simulate the retail bank with known ground truth.

    Writes customers, monthly feature snapshots, contacts and outcomes, and the true
    acceptance probability and uplift of every customer-action pair, one Parquet per table.
    """
    from nba.data.simulator import simulate_to_dir

    settings = _settings()
    target = out or settings.sim_dir
    manifest = simulate_to_dir(customers=customers, seed=seed, out_dir=target, months=months, progress=True)
    _echo(f"simulated {customers:,} customers (seed {seed}, {months} months) into {target}")
    for table, rows in manifest["rows"].items():
        _echo(f"  {table:<15} {rows:>12,} rows")


@data_app.command("load")
def data_load(
    data_dir: DataDirOpt = None,
    out: Annotated[Path | None, typer.Option(help="Write tidy Parquet tables here [default: <work>/real].")] = None,
) -> None:
    """Verify the checksums of the public data sets and write them as tidy Parquet tables."""
    from nba.data.cdnow import load_cdnow
    from nba.data.hillstrom import load_hillstrom
    from nba.io import write_parquet

    settings = _settings(data_dir=data_dir)
    target = out or settings.work / "real"
    hill = load_hillstrom(settings=settings)
    cd = load_cdnow(settings=settings)
    tables = {
        "hillstrom_customers": hill.customers,
        "hillstrom_experiment": hill.experiment,
        "cdnow_transactions": cd,
    }
    for name, frame in tables.items():
        write_parquet(frame, target / f"{name}.parquet")
        _echo(f"  {name:<22} {len(frame):>8,} rows -> {target / (name + '.parquet')}")
    arms = hill.experiment.groupby("arm")[["visit", "conversion", "spend"]].mean()
    _echo("Hillstrom arm means (visit, conversion, spend):")
    for arm, row in arms.iterrows():
        _echo(f"  {arm:<14} {row['visit']:.4f} {row['conversion']:.4f} {row['spend']:.2f}")


@data_app.command("rfm")
def data_rfm(
    cutoff: Annotated[str, typer.Option(help="Compute features as of this date (e.g. 1997-09-30).")],
    data_dir: DataDirOpt = None,
    out: Annotated[Path | None, typer.Option(help="Write the RFM table to this Parquet file.")] = None,
    lookback_days: Annotated[int, typer.Option(help="Frequency / monetary look-back window in days.", min=1)] = 365,
) -> None:
    """RFM scores (quintiles) and named segments of the CDNOW customers as of a cut-off date."""
    from nba.data.cdnow import load_cdnow
    from nba.data.rfm import rfm_from_transactions
    from nba.io import write_parquet

    settings = _settings(data_dir=data_dir)
    at = _parse_time(cutoff, "--cutoff")
    rfm = rfm_from_transactions(load_cdnow(settings=settings), at, lookback_days=lookback_days)
    summary = rfm.groupby("rfm_segment").agg(
        customers=("customer_id", "size"), recency_days=("recency_days", "mean"),
        frequency=("frequency", "mean"), monetary=("monetary", "mean"))
    _echo(f"CDNOW RFM as of {at:%Y-%m-%d}: {len(rfm):,} customers")
    _echo(summary.round(2).to_string())
    if out:
        write_parquet(rfm, out)
        _echo(f"written to {out}")


# --- features ----------------------------------------------------------------------


@features_app.command("apply")
def features_apply(
    sources: Annotated[
        Path | None, typer.Option(help="Folder with the feature tables [default: <work>/sim, from `nba data simulate`].")
    ] = None,
) -> None:
    """Register the feature repository (entities, views, feature services).

    Stages the declarations of features/ with the active profile's feature_store.yaml into
    <work>/feature_repo, publishes the offline sources there, and applies them.
    """
    from nba.features.store import apply

    summary = apply(_settings(), sources)
    _echo(f"applied feature repository {summary.repo}")
    _echo(f"  entities:          {', '.join(summary.entities)}")
    _echo(f"  feature views:     {', '.join(summary.feature_views)}")
    _echo(f"  on-demand views:   {', '.join(summary.on_demand_feature_views)}")
    _echo(f"  feature services:  {', '.join(summary.feature_services)}")
    _echo(f"  offline sources:   {sum(summary.sources.values()):,} rows in {len(summary.sources)} tables")


@features_app.command("materialize")
def features_materialize(
    start: Annotated[str | None, typer.Option(help="Start of the window [default: end minus the TTL].")] = None,
    end: Annotated[str | None, typer.Option(help="End of the window [default: newest snapshot].")] = None,
) -> None:
    """Load the latest feature values into the online store."""
    from nba.features.store import materialize

    summary = materialize(_settings(), _parse_time(start, "--start"), _parse_time(end, "--end"))
    _echo(
        f"materialized {len(summary.feature_views)} feature views from {summary.start:%Y-%m-%d %H:%M} "
        f"to {summary.end:%Y-%m-%d %H:%M} into the {summary.online_store} online store"
    )


@features_app.command("training-frame")
def features_training_frame(
    service: Annotated[str, typer.Option(help="Feature service, e.g. propensity_v1.")],
    entities: Annotated[Path, typer.Option(help="CSV/Parquet with customer_id and event_timestamp columns.")],
    out: Annotated[Path | None, typer.Option(help="Write the frame to this Parquet or CSV file.")] = None,
) -> None:
    """A point-in-time correct training frame (Feast get_historical_features)."""
    from nba.features.store import read_entities, service_join_keys, training_frame
    from nba.io import atomic_path

    settings = _settings()
    keys = service_join_keys(settings, service)
    frame = training_frame(settings, service, read_entities(entities, keys))
    if out is None:
        _echo(frame.head(20).to_string())
        _echo(f"[{len(frame):,} rows x {frame.shape[1]} columns]")
        return
    with atomic_path(out) as tmp:
        if out.suffix.lower() == ".csv":
            frame.to_csv(tmp, index=False)
        else:
            frame.to_parquet(tmp, index=False)
    _echo(f"wrote {len(frame):,} rows x {frame.shape[1]} columns to {out}")


@features_app.command("online")
def features_online(
    customer: Annotated[list[int], typer.Option(help="Customer id (repeat for several).")],
    service: Annotated[str, typer.Option(help="Feature service.")] = "serving_v1",
) -> None:
    """Read online features for customers (as /decide will), printed as JSON."""
    from nba.features.store import online_features

    _echo(json.dumps(online_features(_settings(), service, customer), indent=2, default=str))


# --- training, tuning, promotion ---------------------------------------------------


def _print_trained(models: list) -> None:
    for m in models:
        shown = ", ".join(f"{k} {v:.4f}" for k, v in m.metrics.items()
                          if k in ("roc_auc", "log_loss", "ece", "mae_vs_truth", "mae", "gini", "qini",
                                   "mae_improvement", "uplift_corr_vs_truth"))
        _echo(f"  {m.name} v{m.version}  {shown}")


@train_app.command("propensity")
def train_propensity_cmd(
    action: Annotated[list[str] | None, typer.Option("--action", help="Action id (repeat); default: all.")] = None,
    all_actions: Annotated[bool, typer.Option("--all", help="Train every action (the default).")] = False,
    strategy: Annotated[str | None, typer.Option(help="per_action | pooled [default: training/propensity.yaml].")] = None,
    compare: Annotated[bool, typer.Option(help="Also compare per-action vs pooled models in one table.")] = False,
) -> None:
    """Per-action propensity models: calibrated XGBoost, registered as nba-propensity-<action>."""
    from tqdm import tqdm

    from nba.training import propensity

    settings = _settings()
    if compare:
        table = propensity.compare_strategies(settings)
        run_id, winner = propensity.log_comparison(settings, table)
        _echo(table.round(4).to_string(index=False))
        _echo(f"better strategy by hold-out log loss: {winner} (comparison run {run_id})")
    actions = None if all_actions or not action else list(action)
    bar = tqdm(total=len(actions) if actions else 10, desc="propensity models", unit="model")

    def advance(action: str) -> None:
        bar.set_postfix_str(action)
        bar.update(1)

    try:
        models = propensity.train_propensity(settings, actions, strategy=strategy, progress=advance)
    except propensity.TrainingIncomplete as exc:
        bar.close()
        _print_trained(exc.trained)
        raise
    bar.close()
    _print_trained(models)


@train_app.command("churn")
def train_churn_cmd() -> None:
    """Churn within the label window: calibrated XGBoost, registered as nba-churn."""
    from nba.training.churn import train_churn

    _print_trained([train_churn(_settings())])


@train_app.command("clv")
def train_clv_cmd(
    source: Annotated[str, typer.Option(help="sim (the bank; nba-clv) | cdnow (nba-clv-cdnow) | all.")] = "all",
) -> None:
    """Customer lifetime value over a horizon, against the past-spend-rate baseline."""
    from nba.training.clv import train_clv

    settings = _settings()
    sources = ["cdnow", "sim"] if source == "all" else [source]
    _print_trained([train_clv(settings, s) for s in sources])


@train_app.command("uplift")
def train_uplift_cmd(
    source: Annotated[str, typer.Option(help="hillstrom | sim | all.")] = "all",
    action: Annotated[list[str] | None, typer.Option("--action", help="Action id (repeat); default: all.")] = None,
) -> None:
    """Uplift over no contact from randomised data (T-, X-learner, class transformation; best by Qini)."""
    from nba.training.uplift import HILLSTROM_ACTIONS, train_uplift

    settings = _settings()
    sources = ["hillstrom", "sim"] if source == "all" else [source]
    for s in sources:
        # With --source all, each named action goes to the source that has it.
        chosen = [a for a in action or [] if (a in HILLSTROM_ACTIONS) == (s == "hillstrom")] if action else None
        if action and not chosen and source == "all":
            continue
        _print_trained(train_uplift(settings, s, chosen))


@app.command("tune")
def tune_cmd(
    model: Annotated[str, typer.Argument(help="propensity | churn | clv | uplift")],
    trials: Annotated[int, typer.Option(help="Number of trials.", min=1)] = 20,
    timeout: Annotated[float | None, typer.Option(help="Stop after this many seconds.")] = None,
    action: Annotated[str | None, typer.Option(help="Action to tune (propensity, uplift).")] = None,
    study: Annotated[str | None, typer.Option(help="Study name (resumes an existing study).")] = None,
) -> None:
    """Tune a model with Optuna; the best parameters are used by the next `nba train`.

    The search space is in training/<model>.yaml; studies live in the Optuna storage setting
    (SQLite in the work folder by default) and resume when run again with the same --study.
    """
    from nba.training.tune import tune

    settings = _settings()
    result = tune(settings, model, trials, timeout, action=action, study_name=study, progress=True)
    _echo(f"study {result.study_name} ({result.storage}): {result.n_complete} complete, "
          f"{result.n_pruned} pruned; best {result.best_value:.5f}")
    _echo(f"best parameters -> {result.best_params_path}")
    for k, v in result.best_params.items():
        _echo(f"  {k}: {v}")


@app.command("promote")
def promote_cmd(
    model: Annotated[str, typer.Argument(help="Registered model, e.g. nba-churn or nba-propensity-mortgage.")],
    to: Annotated[str, typer.Option(help="Alias to move: champion (behind gates) or challenger.")] = "champion",
    reason: Annotated[str, typer.Option(help="Why (kept as a tag).")] = "",
) -> None:
    """Promote the @challenger to @champion if it passes evaluation/gates.yaml."""
    from nba.training.registry import promote

    result = promote(_settings(), model, to=to, reason=reason)
    _echo(str(result))


@app.command("rollback")
def rollback_cmd(
    model: Annotated[str, typer.Argument(help="Registered model name.")],
    reason: Annotated[str, typer.Option(help="Why (kept as a tag).")] = "",
) -> None:
    """Move @champion back to the previous champion."""
    from nba.training.registry import rollback

    _echo(str(rollback(_settings(), model, reason=reason)))


# --- serving -----------------------------------------------------------------------


@bundle_app.command("build")
def bundle_build() -> None:
    """Resolve every @champion the catalog reads, import them into BentoML, build the Bento.

    Compiles serving/actions.yaml and serving/policies.yaml against the feature service and
    the MLflow registry first: a bad rule, an unknown feature or model fails here, naming the
    action, the rule and the reason.
    """
    from nba.serving.bundle import build

    settings = _settings()
    result = build(settings, progress=lambda tag: _echo(f"  imported {tag}"))
    _echo(f"bundle {result.bundle_dir} (catalog {result.catalog_version})")
    for m in result.models:
        _echo(f"  {m.name:<40} v{m.version:<4} {', '.join(m.roles)}")
    _echo(f"Bento {result.bento_tag} in {settings.bentoml_home}; serve it with `nba serve`")


@bundle_app.command("show")
def bundle_show() -> None:
    """Print the bundle's manifest: catalog version, models and versions, Bento tag."""
    from nba.serving.bundle import read_manifest

    manifest = read_manifest(_settings().bundle_dir)
    _echo(json.dumps({k: v for k, v in manifest.items() if k != "features"}, indent=2))


@app.command("serve")
def serve_cmd(
    port: Annotated[int, typer.Option(help="Port on localhost.", min=1, max=65535)] = 3000,
    host: Annotated[str, typer.Option(help="Interface to bind (loopback by default).")] = "127.0.0.1",
    workers: Annotated[int | None, typer.Option(help="Worker processes [default: NBA_SERVE_WORKERS, 2].",
                                                 min=1)] = None,
) -> None:
    """Serve the built Bento (`nba bundle build`) with BentoML: /decide, /decide_batch,
    /respond, /healthz, /readyz; the OpenAPI page at /docs.json and the UI at /."""
    from nba.serving.run import serve

    serve(_settings(), host=host, port=port, workers=workers, echo=_echo)


@app.command("decide-batch")
def decide_batch_cmd(
    customers: Annotated[Path, typer.Option(help="Parquet (or CSV) with customer_id; feature columns of the "
                                                 "feature service are used when present, else read online.")],
    channel: Annotated[str, typer.Option(help="Channel of every decision (e.g. email).")],
    out: Annotated[Path, typer.Option(help="Ranked decisions, one row per customer and rank (Parquet).")],
    k: Annotated[int | None, typer.Option(help="Actions to rank per customer [default: the policies' k].",
                                          min=1)] = None,
    timestamp: Annotated[str | None, typer.Option(help="Moment of the decisions [default: now].")] = None,
    chunk: Annotated[int, typer.Option(help="Customers per vectorised pass.", min=1)] = 100_000,
) -> None:
    """Outbound decisions for a file of customers: the same core, models and log records as
    /decide, vectorised; the shown actions count as contacts for the contact policies."""
    from nba.serving.batch import decide_batch

    at = _parse_time(timestamp, "--timestamp")
    summary = decide_batch(_settings(), customers, channel, out, k=k,
                           timestamp=at.timestamp() if at else None, chunk=chunk, progress=True)
    _echo(summary.describe())


# --- quickstart --------------------------------------------------------------------


@app.command("quickstart")
def quickstart(
    customers: Annotated[int, typer.Option(help="Simulated customers.", min=100)] = 40_000,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 7,
    data_dir: DataDirOpt = None,
    train: Annotated[bool, typer.Option(help="Also tune, train, register and promote every model.")] = True,
    tune_trials: Annotated[int, typer.Option(help="Optuna trials per tuned model (0: no tuning).", min=0)] = 3,
    serve: Annotated[bool, typer.Option(help="End by running the decision service until Ctrl-C.")] = True,
    port: Annotated[int, typer.Option(help="Port of the decision service on localhost.", min=1, max=65535)] = 3000,
) -> None:
    """Run the main job end to end on embedded defaults.

    Loads and verifies the real data sets (when NBA_DATA_DIR is set), simulates the bank,
    applies and materialises the feature store, reads one customer online, then tunes (a
    small budget), trains, registers and promotes every model to @champion, builds the serving
    bundle, and ends with the decision service running on localhost (its URL, OpenAPI page and a
    ready-to-paste curl are printed).
    """
    from nba.quickstart import run

    run(_settings(data_dir=data_dir), customers=customers, seed=seed, echo=_echo, train=train,
        tune_trials=tune_trials, serve=serve, port=port)


def _register_evaluation() -> None:
    # The evaluation commands live beside their code; each module imports its stack lazily.
    from nba.evaluation import commands_experiments, commands_monitoring

    for module in (commands_experiments, commands_monitoring):
        module.register(evaluate_app, app)


_register_evaluation()


def main() -> None:
    try:
        app()
    except NbaError as exc:
        if _state["debug"]:
            raise
        typer.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except Exception as exc:  # an unexpected failure: one line, the traceback on request
        if _state["debug"]:
            raise
        typer.echo(f"error: {type(exc).__name__}: {exc} (run `nba --debug ...` for the traceback)", err=True)
        sys.exit(1)
