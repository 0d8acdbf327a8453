"""`nba features apply | materialize | training-frame | online`: the Feast feature store."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from nba.cli.common import echo, parse_time, settings

app = typer.Typer(help="The Feast feature store: apply, materialize, read.", no_args_is_help=True)


@app.command("apply")
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

    summary = apply(settings(), sources)
    echo(f"applied feature repository {summary.repo}")
    echo(f"  entities:          {', '.join(summary.entities)}")
    echo(f"  feature views:     {', '.join(summary.feature_views)}")
    echo(f"  on-demand views:   {', '.join(summary.on_demand_feature_views)}")
    echo(f"  feature services:  {', '.join(summary.feature_services)}")
    echo(f"  offline sources:   {sum(summary.sources.values()):,} rows in {len(summary.sources)} tables")


@app.command("materialize")
def features_materialize(
    start: Annotated[str | None, typer.Option(help="Start of the window [default: end minus the TTL].")] = None,
    end: Annotated[str | None, typer.Option(help="End of the window [default: newest snapshot].")] = None,
) -> None:
    """Load the latest feature values into the online store."""
    from nba.features.store import materialize

    summary = materialize(settings(), parse_time(start, "--start"), parse_time(end, "--end"))
    echo(
        f"materialized {len(summary.feature_views)} feature views from {summary.start:%Y-%m-%d %H:%M} "
        f"to {summary.end:%Y-%m-%d %H:%M} into the {summary.online_store} online store"
    )


@app.command("training-frame")
def features_training_frame(
    service: Annotated[str, typer.Option(help="Feature service, e.g. propensity_v1.")],
    entities: Annotated[Path, typer.Option(help="CSV/Parquet with customer_id and event_timestamp columns.")],
    out: Annotated[Path | None, typer.Option(help="Write the frame to this Parquet or CSV file.")] = None,
) -> None:
    """A point-in-time correct training frame (Feast get_historical_features)."""
    from nba.features.store import read_entities, service_join_keys, training_frame
    from nba.io import atomic_path

    s = settings()
    keys = service_join_keys(s, service)
    frame = training_frame(s, service, read_entities(entities, keys))
    if out is None:
        echo(frame.head(20).to_string())
        echo(f"[{len(frame):,} rows x {frame.shape[1]} columns]")
        return
    with atomic_path(out) as tmp:
        if out.suffix.lower() == ".csv":
            frame.to_csv(tmp, index=False)
        else:
            frame.to_parquet(tmp, index=False)
    echo(f"wrote {len(frame):,} rows x {frame.shape[1]} columns to {out}")


@app.command("online")
def features_online(
    customer: Annotated[list[int], typer.Option(help="Customer id (repeat for several).")],
    service: Annotated[str, typer.Option(help="Feature service.")] = "serving_v1",
) -> None:
    """Read online features for customers (as /decide will), printed as JSON."""
    from nba.features.store import online_features

    echo(json.dumps(online_features(settings(), service, customer), indent=2, default=str))
