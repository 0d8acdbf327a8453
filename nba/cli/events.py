"""`nba events ingest | consume | export`: behavioural events into the event log and the
online store, and the triggers on them, without the decision service (the same ingest-and-
trigger function as `POST /events`: `DecisionEngine.ingest`)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from nba.cli.common import echo, settings

app = typer.Typer(help="Behavioural events: replay a file, consume a stream, export the log.", no_args_is_help=True)


def event_sink(s: Any, *, triggers: bool = True) -> tuple[Callable[[Any], Any], Any, Any]:
    """(the ingest function, the event types, the engine or None) of a command: the decision
    engine's `ingest` over the bundle (stored, pushed, then the triggers start decisions and
    outbox messages, as `POST /events` does), or with `triggers` False the ingestion alone
    (stored and pushed)."""
    if not triggers:
        from nba.serving.ingest import event_ingestor

        ingestor = event_ingestor(s)
        return ingestor.ingest, ingestor.types, None
    from nba.serving.bundle import load_engine

    engine = load_engine(s)
    return engine.ingest, engine.events.types, engine


def ingest_file(path: Path, *, chunk: int = 2_000, progress: bool = True, triggers: bool = True) -> dict[str, Any]:
    """Replay a CSV, Parquet or JSONL file of events (serving/events.yaml) in chunks through the
    one ingest-and-trigger path of `POST /events`; a bad event stops the replay naming its
    field (the chunks before it are stored, and their triggers ran)."""
    from nba import console
    from nba.serving.ingest import read_event_file
    from nba.serving.triggering import tally

    ingest, types, engine = event_sink(settings(), triggers=triggers)
    total, chunks = read_event_file(path, types, chunk)
    out: dict[str, Any] = {"received": 0, "stored": 0, "duplicates": 0, "unknown_customers": 0,
                           "erased_customers": 0, "customers_updated": 0}
    unknown: set[int] = set()
    erased: set[int] = set()
    fired: list[dict[str, Any]] = []
    bar = console.progress(total, "events", "event", enabled=progress)
    try:
        for part in chunks:
            r = ingest(part)
            out["received"] += r.received
            out["stored"] += len(r.stored)
            out["duplicates"] += len(r.duplicates)
            out["customers_updated"] += r.customers_pushed
            unknown.update(r.unknown_customers)
            erased.update(r.erased_customers)
            fired += r.triggers
            bar.update(r.received)
    finally:
        bar.close()
        if engine is not None:
            engine.flush_triggered()
    out["unknown_customers"] = len(unknown)
    out["erased_customers"] = len(erased)
    per = tally(fired)
    out["triggers"] = per
    out["decisions"] = sum(t["decisions"] for t in per.values())
    out["outbox_messages"] = sum(sum(t["messages"].values()) for t in per.values())
    return out


NoTriggersOpt = Annotated[bool, typer.Option("--no-triggers", help="Only store the events and push the features "
                                                                   "(no decision, no outbox message; needs no "
                                                                   "bundle).")]


@app.command("ingest")
def ingest_cmd(
    file: Annotated[Path, typer.Argument(help="Events: .csv or .parquet (flattened: customer_id, type, timestamp, "
                                              "event_id, one column per property) or .jsonl (one event a line).")],
    chunk: Annotated[int, typer.Option(min=1, max=10_000, help="Events per append and push.")] = 2_000,
    json_out: Annotated[bool, typer.Option("--json", help="Print the counts as JSON.")] = False,
    no_triggers: NoTriggersOpt = False,
) -> None:
    """Validate a file of events, append them to the event log (a duplicate id is recognised, not
    stored twice), push the streaming features to the online store, and run the triggers
    (serving/triggers.yaml): a firing starts a decision and its outbox message, as POST /events
    does. The delivery worker (`nba activation run`, or the one beside `nba serve`) sends them."""
    out = ingest_file(file, chunk=chunk, progress=not json_out, triggers=not no_triggers)
    if json_out:
        echo(json.dumps(out))
        return
    echo(f"{out['received']:,} events read from {file}: {out['stored']:,} stored, {out['duplicates']:,} duplicates, "
         f"{out['unknown_customers']:,} unknown customers (stored, flagged)"
         + (f", {out['erased_customers']:,} erased customers (not stored)" if out["erased_customers"] else ""))
    if no_triggers:
        return
    echo(f"triggers: {out['decisions']:,} decisions started, {out['outbox_messages']:,} outbox messages"
         + ("" if out["triggers"] else " (no trigger fired)"))
    for tid, t in out["triggers"].items():
        sent = ", ".join(f"{ch} {n:,}" for ch, n in t["messages"].items()) or "none"
        echo(f"  {tid:<20} fired {t['fired']:,}, held back {t['held_back']:,}, decisions {t['decisions']:,}, "
             f"messages: {sent}")


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
    no_triggers: NoTriggersOpt = False,
    recover_after: Annotated[float, typer.Option(
        min=0.0, help="At start, run the triggers of events stored more than this many seconds ago whose "
                      "triggers never ran (a consumer or server killed in between); idempotent.")] = 60.0,
) -> None:
    """Consume events from NATS JetStream through the one ingest-and-trigger path of POST /events
    (production profile; the embedded default takes events through POST /events and `nba events
    ingest`): stored, pushed, then the triggers start decisions and outbox messages. A batch is
    acknowledged only once stored and its triggers ran: a crash redelivers it, nothing is counted
    twice, and the triggers of events stored before a crash run on their redelivery (or at the
    next start)."""
    import asyncio

    from nba.serving.consumer import consume

    ingest, _, engine = event_sink(settings(), triggers=not no_triggers)
    if engine is not None:
        # events a killed consumer stored and left untriggered, once their redelivery is due
        n, recovered = engine.recover_triggers(older_than_s=recover_after)
        if n:
            started = sum(1 for r in recovered if r.get("decision") is not None)
            echo(f"ran the triggers of {n:,} event(s) a stopped process had left pending: "
                 f"{started:,} decision(s) started")
    echo(f"consuming {stream} ({subject}) from {url} as {durable}")
    try:
        stats = asyncio.run(consume(ingest, url=url, stream=stream, subject=subject, durable=durable,
                                    batch=batch, ack_wait_s=ack_wait, idle_exit_s=idle_exit))
    except KeyboardInterrupt:
        echo("interrupted")
        return
    finally:
        if engine is not None:
            engine.flush_triggered()
    echo(json.dumps(stats.as_dict()))


@app.command("export")
def export_cmd(
    out: Annotated[Path, typer.Option(help="The Parquet file to write.")],
) -> None:
    """Write the event log as a flattened Parquet frame (one column per property)."""
    from nba.io import write_parquet

    s = settings()
    if s.log_backend == "postgres":
        from nba.stores.events.postgres import read_events_pg

        frame = read_events_pg(s.decision_log_dsn)
    else:
        from nba.stores.events.sqlite import read_events

        frame = read_events(s.event_log_path)
    write_parquet(frame, out)
    echo(f"{len(frame):,} events written to {out}")
