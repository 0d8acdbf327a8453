"""`nba simulate loop`: the platform deciding for the simulated bank, month by month."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from nba.cli.common import echo, settings

app = typer.Typer(help="Closed-loop runs of the platform on the simulated bank.", no_args_is_help=True)


@app.command("loop")
def loop_cmd(
    customers: Annotated[int, typer.Option(help="Simulated customers.", min=100)] = 20_000,
    months: Annotated[int, typer.Option(help="Months the platform decides for the bank.", min=1)] = 6,
    seed: Annotated[int, typer.Option(help="Random seed (the same seed: the same bank).", min=0)] = 7,
    history_months: Annotated[int, typer.Option(help="Months of legacy history the first models learn from.",
                                                min=2)] = 12,
    work: Annotated[Path, typer.Option(help="Work folder of the run (its bank, models, log and bundle).")]
    = Path("var/loop"),
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the monthly figures as JSON here.")] = None,
    html_out: Annotated[Path | None, typer.Option("--html", help="Write the report (table and plot) as HTML here.")]
    = None,
    retrain: Annotated[bool, typer.Option(help="Retrain, gate and rebuild the bundle after each month.")] = True,
    new_action: Annotated[str | None, typer.Option(help="Withhold this action of the catalog, then add it with no "
                                                        "history and no model (cold start) at --new-action-month.")]
    = None,
    new_action_month: Annotated[int, typer.Option(help="The month the withheld action joins.", min=2)] = 3,
) -> None:
    """Simulate the bank's legacy history, train and promote the first models, build the bundle,
    then each month: decide through the engine, answer from the truth through /respond's path,
    value every policy (truth and off-policy estimates from the log), retrain, gate, rebuild."""
    from nba.simulation.loop import ClosedLoop, LoopConfig, write_html, write_json

    base = settings()
    s = base.model_copy(update={"work_dir": work, "mlflow_dir": work / "mlflow", "data_dir": None})
    cfg = LoopConfig(customers=customers, months=months, seed=seed, history_months=history_months, retrain=retrain,
                     new_action=new_action, new_action_month=new_action_month)
    loop = ClosedLoop(s, cfg, echo=echo)
    echo(f"==> The bank's history: {customers:,} customers, {history_months} months under the legacy policy; "
         "first models and bundle")
    loop.bootstrap()
    echo(f"==> The closed loop: {months} months")
    report = loop.run()
    echo(report.describe())
    if json_out:
        echo(f"figures -> {write_json(report, json_out)}")
    if html_out:
        echo(f"report  -> {write_html(report, html_out)}")
