"""`nba quickstart`: the main job end to end on embedded defaults."""

from __future__ import annotations

from typing import Annotated

import typer

from nba.cli.common import DataDirOpt, echo, settings


def quickstart_cmd(
    customers: Annotated[int, typer.Option(help="Simulated customers.", min=100)] = 40_000,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 7,
    data_dir: DataDirOpt = None,
    train: Annotated[bool, typer.Option(help="Also tune, train, register and promote every model.")] = True,
    tune_trials: Annotated[int, typer.Option(help="Optuna trials per tuned model (0: no tuning).", min=0)] = 3,
    serve: Annotated[bool, typer.Option(help="End by running the decision service until Ctrl-C.")] = True,
    port: Annotated[int, typer.Option(help="Port of the decision service on localhost.", min=1, max=65535)] = 3000,
    loop: Annotated[bool, typer.Option(help="After the bundle, four simulated weeks of the closed loop (outcomes "
                                            "on the dashboards).")] = True,
    events: Annotated[bool, typer.Option(help="After the bundle, replay a simulated day of events through POST "
                                              "/events of a service started for it (even with --no-serve): what "
                                              "the triggers fired, decided and delivered per channel.")] = True,
) -> None:
    """Run the main job end to end on embedded defaults.

    Loads and verifies the real data sets (when NBA_DATA_DIR is set), simulates the bank,
    applies and materialises the feature store, reads one customer online, then tunes (a
    small budget), trains, registers and promotes every model to @champion, builds the serving
    bundle, replays a simulated day of events through the triggers and the outbox, and ends with
    the decision service running on localhost (its URL, OpenAPI page and a ready-to-paste curl
    are printed).
    """
    from nba.quickstart import run

    run(settings(data_dir=data_dir), customers=customers, seed=seed, echo=echo, train=train,
        tune_trials=tune_trials, serve=serve, port=port, loop=loop, events=events)
