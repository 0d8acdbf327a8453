"""`nba report`: every evaluation that has data, and where the dashboards and reports are."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from nba.cli.common import echo, settings


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
    from nba.evaluation import dashboards
    from nba.evaluation.monitoring_report import run_report

    s = settings()
    summary = run_report(s, log_dir=log, days=days, echo=echo)
    echo("")
    echo(f"Evidently workspace: {dashboards.workspace_path(s)} (projects: {', '.join(summary.projects)})")
    echo(f"HTML reports:        {s.reports_dir}" + (f" ({len(summary.html)} written now)" if summary.html else ""))
    echo(f"Dashboards:          {dashboards.ui_command(s, port)}   then open http://127.0.0.1:{port}")
