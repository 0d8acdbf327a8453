"""`nba evaluate drift | uplift` and `nba report`: Evidently reports and dashboards.

Thin commands over `nba.evaluation.drift.evaluate_drift`, `nba.evaluation.uplift.evaluate_uplift`
and the workspace (`nba.evaluation.dashboards`); the stack is imported inside each command.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

DRIFT_HELP = """Drift of served features and scores against each champion's training frame.

Compares, per champion model, the features (and the model's score) the decision log served
recently, or a batch frame given with --current, with a sample of the frame the champion was
trained on, using Evidently's data-drift tests with the methods and thresholds of
evaluation/gates.yaml (monitoring.drift). Prints which features drifted and by how much,
writes a JSON summary and an HTML report, stores a snapshot in the Evidently workspace
(dashboards) and logs the HTML to the champion's MLflow run.

Exit code: 0 = within the limits; 3 = drift beyond the limits (more than max_drift_share of the
features drifted, or the prediction drifted); 2 = bad input (unknown model, unreadable file,
missing column, too few rows).
"""


def register(evaluate_app: typer.Typer, root_app: typer.Typer) -> None:
    """Add this module's commands to `nba evaluate` (and `nba`)."""
    evaluate_app.command("drift", help=DRIFT_HELP)(drift_cmd)
    evaluate_app.command("uplift")(uplift_cmd)
    root_app.command("report")(report_cmd)


def _settings():
    from nba.cli import _settings as settings

    return settings()


def _echo(msg: str = "") -> None:
    typer.echo(msg)


def _bar(total: int, desc: str):
    from tqdm import tqdm

    bar = tqdm(total=total, desc=desc, unit="model", leave=False, disable=None)  # no bar when not a terminal
    started: list[str] = []

    def advance(name: str) -> None:
        if started:
            bar.update(1)  # the previous model is done
        started.append(name)
        bar.set_postfix_str(name)

    return bar, advance


def drift_cmd(
    model: Annotated[list[str] | None, typer.Option(
        "--model", help="Registered model to check, e.g. nba-propensity-mortgage (repeat); default: every "
                        "champion with served data.")] = None,
    current: Annotated[Path | None, typer.Option(
        help="A batch frame (Parquet or CSV) with the model's inputs (and optionally a 'prediction' column) "
             "instead of the decision log.")] = None,
    log: Annotated[Path | None, typer.Option(help="Decision log folder [default: <work>/decision_log].")] = None,
    since: Annotated[str | None, typer.Option(help="Served decisions from this date (e.g. 2025-12-01).")] = None,
    days: Annotated[int, typer.Option(help="Without --since: the last N days of the log.", min=1)] = 30,
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write the summary of every model here.")] = None,
    publish: Annotated[bool, typer.Option(help="Store the snapshot, HTML and MLflow artifact.")] = True,
) -> None:
    from nba.cli import _parse_time
    from nba.evaluation import drift

    settings = _settings()
    names = list(model or [])
    total = len(names) or len(drift.champion_names(settings))
    bar, advance = _bar(total, "drift")
    try:
        run = drift.evaluate_drift(settings, names or None, current=current, log_dir=log,
                                   since=_parse_time(since, "--since"), days=days, publish=publish, progress=advance)
    finally:
        bar.close()
    for result in run.results:
        for line in result.lines():
            _echo(line)
        if result.html:
            _echo(f"  report: {result.html}" + (f" (logged to MLflow run {result.mlflow_run_id})"
                                                 if result.mlflow_run_id else ""))
    for name, why in run.skipped:
        _echo(f"{name}: skipped: {why}")
    if json_out:
        drift.write_summary(list(run.results), json_out)
        _echo(f"summary: {json_out}")
    exceeded = [r.model for r in run.results if r.exceeded]
    if exceeded:
        _echo(f"drift beyond the limits of evaluation/gates.yaml in {len(exceeded)} model(s): {', '.join(exceeded)} "
              f"(exit code {drift.EXIT_DRIFT})")
        raise typer.Exit(drift.EXIT_DRIFT)
    _echo(f"no drift beyond the limits in {len(run.results)} model(s)")


def uplift_cmd(
    model: Annotated[list[str] | None, typer.Option(
        "--model", help="Uplift model, e.g. nba-uplift-hillstrom-womens_email (repeat); default: every "
                        "nba-uplift-* champion.")] = None,
    current: Annotated[Path | None, typer.Option(
        help="A randomised frame (Parquet or CSV): the model's inputs, 'treated' (0/1), 'label' and optionally "
             "'true_uplift'; default: the champion run's hold-out part.")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write the summary of every model here.")] = None,
    publish: Annotated[bool, typer.Option(help="Store the snapshot, HTML and MLflow artifact.")] = True,
) -> None:
    """Uplift per action on randomised data: Qini, AUUC, uplift in the top k %, recovery of the truth.

    Qini curve and coefficient, AUUC, the observed uplift in the top k % by predicted uplift,
    and the correlation and error against the simulator's true uplift where it is known.

    Each nba-uplift-* champion is scored on the randomised rows its training run held out
    (Hillstrom: the e-mail arm against the No E-Mail hold-out; the bank: exploration decisions,
    contacted or not at random, whose true uplift the simulator knows). The figures are
    Evidently metrics: a snapshot in the workspace's `uplift` project, an HTML report, logged
    to the champion's MLflow run.
    """
    from nba.evaluation import uplift
    from nba.evaluation.champions import champion_names

    settings = _settings()
    names = list(model or [])
    bar, advance = _bar(len(names) or len(champion_names(settings, ["uplift"])), "uplift")
    try:
        run = uplift.evaluate_uplift(settings, names or None, current=current, publish=publish, progress=advance)
    finally:
        bar.close()
    for result in run.results:
        for line in result.lines():
            _echo(line)
        if result.html:
            _echo(f"  report: {result.html}")
    for name, why in run.skipped:
        _echo(f"{name}: skipped: {why}")
    if json_out:
        from nba.evaluation.drift import write_summary

        write_summary(list(run.results), json_out)  # type: ignore[arg-type]
        _echo(f"summary: {json_out}")


def report_cmd(
    log: Annotated[Path | None, typer.Option(help="Decision log folder [default: <work>/decision_log].")] = None,
    days: Annotated[int, typer.Option(help="Drift over the last N days of the decision log.", min=1)] = 30,
    port: Annotated[int, typer.Option(help="Port shown in the `evidently ui` command.")] = 8000,
) -> None:
    """Run every evaluation that has data and say where the dashboards and reports are.

    Drift for each champion the decision log has served data for, uplift for each nba-uplift-*
    champion, hold-out incrementality and policy value when their evaluations are available;
    each run adds a snapshot to the local Evidently workspace (a project per model family and
    one for the platform), writes an HTML report and logs it to the model's MLflow run. Ends
    with the workspace, the reports folder and the `evidently ui` command that opens them.
    """
    from nba.evaluation.monitoring_report import run_report

    settings = _settings()
    summary = run_report(settings, log_dir=log, days=days, echo=_echo)
    from nba.evaluation import dashboards

    _echo("")
    _echo(f"Evidently workspace: {dashboards.workspace_path(settings)} (projects: {', '.join(summary.projects)})")
    _echo(f"HTML reports:        {settings.reports_dir}" + (f" ({len(summary.html)} written now)" if summary.html else ""))
    _echo(f"Dashboards:          {dashboards.ui_command(settings, port)}   then open http://127.0.0.1:{port}")
