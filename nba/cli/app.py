"""The `nba` command line: one Typer app, thin commands over plain functions.

Each command group is a module of this package (`data`, `features`, `train`, `serving`,
`triggers`, `events`, `activation`, `evaluate`, `simulate`, `report`, `quickstart`, `customers`, `stores`); this module wires them into one app in the order
`nba --help` lists them. Heavy libraries are imported inside the commands, so `nba --help`
answers at once. Errors a user can cause (`NbaError`) print as one line on stderr with a
non-zero exit code; `--debug` shows the traceback.
"""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer

from nba.cli import (
    activation,
    customers,
    data,
    evaluate,
    events,
    features,
    keys,
    quickstart,
    report,
    serving,
    simulate,
    stores,
    train,
    triggers,
)
from nba.errors import NbaError

app = typer.Typer(
    name="nba",
    help="Next-Best-Action platform: data, features, models, decisions, evaluation.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # help texts say "[default: ...]" literally; rich markup would swallow it
)
app.add_typer(data.app, name="data")
app.add_typer(features.app, name="features")
app.add_typer(train.app, name="train")
app.add_typer(serving.bundle_app, name="bundle")
app.add_typer(events.app, name="events")
app.add_typer(evaluate.app, name="evaluate")
app.add_typer(triggers.app, name="triggers")
app.add_typer(customers.app, name="customers")
app.add_typer(keys.app, name="keys")
app.add_typer(simulate.app, name="simulate")
app.command("tune")(train.tune_cmd)
app.command("promote")(train.promote_cmd)
app.command("rollback")(train.rollback_cmd)
app.command("serve")(serving.serve_cmd)
app.command("decide-batch")(serving.decide_batch_cmd)
app.add_typer(activation.app, name="activation")
app.add_typer(stores.app, name="stores")
app.command("quickstart")(quickstart.quickstart_cmd)
app.command("report")(report.report_cmd)

_state: dict[str, Any] = {"debug": False}


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks on errors.")] = False,
) -> None:
    _state["debug"] = debug
    from nba.console import quiet_libraries
    from nba.settings import disable_telemetry

    disable_telemetry()
    quiet_libraries()


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
