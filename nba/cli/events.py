"""`nba events ingest | consume | export`: behavioural events into the event log and the
online store, without the decision service (the same ingest function as `POST /events`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from nba.cli.common import echo, settings

app = typer.Typer(help="Behavioural events: replay a file, consume a stream, export the log.", no_args_is_help=True)


def ingest_file(path: Path, *, chunk: int = 2_000, progress: bool = True) -> dict[str, int]:
    """Replay a CSV, Parquet or JSONL file of events (serving/events.yaml) in chunks; a bad
    event stops the replay naming its field (the chunks before it are stored)."""
    from nba import console
    from nba.serving.ingest import event_ingestor, read_event_file

    ingestor = event_ingestor(settings())
    total, chunks = read_event_file(path, ingestor.types, chunk)
    out = {"received": 0, "stored": 0, "duplicates": 0, "unknown_customers": 0, "customers_updated": 0}
    unknown: set[int] = set()
    bar = console.progress(total, "events", "event", enabled=progress)
    try:
        for part in chunks:
            r = ingestor.ingest(part)
            out["received"] += r.received
            out["stored"] += len(r.stored)
            out["duplicates"] += len(r.duplicates)
            out["customers_updated"] += r.customers_pushed
            unknown.update(r.unknown_customers)
            bar.update(r.received)
    finally:
        bar.close()
    out["unknown_customers"] = len(unknown)
    return out


@app.command("ingest")
def ingest_cmd(
    file: Annotated[Path, typer.Argument(help="Events: .csv or .parquet (flattened: customer_id, type, timestamp, "
                                              "event_id, one column per property) or .jsonl (one event a line).")],
    chunk: Annotated[int, typer.Option(min=1, max=10_000, help="Events per append and push.")] = 2_000,
    json_out: Annotated[bool, typer.Option("--json", help="Print the counts as JSON.")] = False,
) -> None:
    """Validate a file of events, append them to the event log (a duplicate id is recognised, not
    stored twice) and push the streaming features to the online store."""
    out = ingest_file(file, chunk=chunk, progress=not json_out)
    if json_out:
        echo(json.dumps(out))
        return
    echo(f"{out['received']:,} events read from {file}: {out['stored']:,} stored, {out['duplicates']:,} duplicates, "
         f"{out['unknown_customers']:,} unknown customers (stored, flagged)")


@app.command("consume")
def consume_cmd(
    url: Annotated[str, typer.Option(help="The NATS server.")] = "nats://127.0.0.1:4222",
    stream: Annotated[str, typer.Option(help="The JetStream stream (created if absent).")] = "NBA_EVENTS",
    subject: Annotated[str, typer.Option(help="The subject events are published on.")] = "nba.events",
    durable: Annotated[str, typer.Option(help="The durable consumer's name (its position survives a restart).")
                       ] = "nba-ingest",
    batch: Annotated[int, typer.Option(min=1, max=10_000, help="Messages per fetch (one append and push).")] = 500,
    ack_wait: Annotated[float, typer.Option(min=0.5, help="Seconds before an unacknowledged message is delivered "
                                                          "again.")] = 30.0,
    idle_exit: Annotated[float | None, typer.Option(help="Stop after this many seconds without a message "
                                                         "[default: run until interrupted].")] = None,
) -> None:
    """Consume events from NATS JetStream into the event log and the online store (production
    profile; the embedded default takes events through POST /events and `nba events ingest`).
    A batch is acknowledged only once stored: a crash redelivers it, and nothing is counted twice."""
    import asyncio

    from nba.serving.consumer import consume
    from nba.serving.ingest import event_ingestor

    ingestor = event_ingestor(settings())
    echo(f"consuming {stream} ({subject}) from {url} as {durable}")
    try:
        stats = asyncio.run(consume(ingestor.ingest, url=url, stream=stream, subject=subject, durable=durable,
                                    batch=batch, ack_wait_s=ack_wait, idle_exit_s=idle_exit))
    except KeyboardInterrupt:
        echo("interrupted")
        return
    echo(json.dumps(stats.as_dict()))


@app.command("export")
def export_cmd(
    out: Annotated[Path, typer.Option(help="The Parquet file to write.")],
) -> None:
    """Write the event log as a flattened Parquet frame (one column per property)."""
    from nba.io import write_parquet
    from nba.stores.events.sqlite import read_events

    frame = read_events(settings().event_log_path)
    write_parquet(frame, out)
    echo(f"{len(frame):,} events written to {out}")
