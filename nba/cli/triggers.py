"""`nba triggers check | scan | recover`: the triggers of `serving/triggers.yaml`, the scheduled scans,
and the triggers of events a killed process left pending."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from nba.cli.common import echo, parse_time, settings

app = typer.Typer(help="Triggers: check the trigger file, run the scheduled scans.", no_args_is_help=True)


@app.command("check")
def check_cmd() -> None:
    """Validate serving/triggers.yaml against the bundle's catalog and serving/events.yaml."""
    from nba.serving.bundle import load_catalog_from_bundle, read_manifest
    from nba.triggers import load_triggers

    s = settings()
    cat = load_catalog_from_bundle(s.bundle_dir, read_manifest(s.bundle_dir))
    triggers = load_triggers(s.home, cat)
    echo(f"{len(triggers.triggers)} triggers ({triggers.version}), highest priority first:")
    for t in triggers.triggers:
        on = f"schedule {t.schedule}" if t.schedule else ", ".join(sorted(t.on))
        echo(f"  {t.priority:>4} {t.id:<22} on {on}: {t.when.text}")


@app.command("scan")
def scan_cmd(
    customers: Annotated[Path, typer.Option(help="Parquet (or CSV) with customer_id: the population; feature "
                                                 "columns of the feature service (and streaming features) are "
                                                 "used when present, else read online.")],
    at: Annotated[str | None, typer.Option("--at", help="Moment of the scan (ISO 8601) [default: now].")] = None,
    trigger: Annotated[list[str] | None, typer.Option(help="Only this schedule trigger (repeatable).")] = None,
    chunk: Annotated[int, typer.Option(help="Customers per vectorised pass.", min=1)] = 100_000,
) -> None:
    """Evaluate the schedule triggers (no interaction, expiry, upgrade, abandoned application)
    over the whole population and start their decisions: the same core, dedup windows and
    log records as an event's trigger; the engine chooses each decision's channel."""
    from nba.serving.scan import scan

    when = parse_time(at, "--at")
    summary = scan(settings(), customers, at=when.timestamp() if when else None, trigger_ids=trigger or None,
                   chunk=chunk, progress=True)
    echo(summary.describe())


@app.command("recover")
def recover_cmd(
    older_than: Annotated[float, typer.Option(min=0.0, help="Only events stored at least this many seconds ago "
                                                            "(an event being handled now is not pending for "
                                                            "long).")] = 60.0,
) -> None:
    """Run the triggers of events that were stored but whose triggers never ran (the server or
    consumer handling them was killed in between). Idempotent: a decision made before the kill
    is found in the log and not made again. `nba events consume` does this when it starts."""
    from nba.serving.bundle import load_engine
    from nba.serving.triggering import tally

    engine = load_engine(settings())
    n, fired = engine.recover_triggers(older_than_s=older_than)
    if not n:
        echo("no event was left with its triggers pending")
        return
    per = tally(fired)
    echo(f"ran the triggers of {n:,} pending event(s): a trigger fired on {len(fired):,}, "
         f"{sum(t['decisions'] for t in per.values()):,} decision(s) started")
