"""`nba activation run | status | retry-dead`: the outbox's delivery worker and its state."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from nba.cli.common import echo, settings

app = typer.Typer(help="Outbound activation: deliver the outbox's messages through the channel connectors "
                       "(serving/activation.yaml).", no_args_is_help=True)

ActivationFileOpt = Annotated[Path | None, typer.Option("--file", help="Activation file [default: "
                                                                        "serving/activation.yaml].")]


@app.command("run")
def run_cmd(
    once: Annotated[bool, typer.Option("--once", help="Deliver what is due now, then exit.")] = False,
    batch: Annotated[int, typer.Option(help="Messages per claim.", min=1, max=10_000)] = 500,
    lease: Annotated[float | None, typer.Option(help="Seconds a claim holds; a killed worker's messages are sent "
                                                     "again after it [default: 60, or longer than a batch whose "
                                                     "every webhook request times out].", min=0.1)] = None,
    poll: Annotated[float, typer.Option(help="Seconds between looks at the outbox when nothing is due.",
                                        min=0.01)] = 0.2,
    file: ActivationFileOpt = None,
) -> None:
    """Deliver the outbox at least once: claim due messages with a lease, send them through
    each channel's connector (NBA_WEBHOOK_URL: all to that webhook), record receipts, retry
    failures with back-off, dead-letter after the channel's max attempts. Runs until Ctrl-C or
    SIGTERM (then it finishes its batch and gives back its leases)."""
    import signal

    from nba.activation.worker import load, make_worker

    s = settings()
    activation = load(s, activation_file=file)
    worker = make_worker(s, batch=batch, lease_s=lease, poll_s=poll, activation_file=file)
    previous = {sig: signal.signal(sig, lambda *_: worker.stopping.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
    echo(f"delivering {worker.outbox.path} ({activation.source}); batches of {batch}, leases of "
         f"{worker.lease_s:g} s")
    for channel, c in worker.connectors.items():
        echo(f"  {channel:<12} {c.kind:<13} {c.target}")
    try:
        totals = worker.run(once=once)
    finally:
        worker.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    rate = (totals.delivered + totals.failed + totals.dead) / max(totals.seconds, 1e-9)
    echo(f"{totals.delivered:,} delivered, {totals.failed:,} failed (to retry), {totals.dead:,} dead in "
         f"{totals.seconds:.1f} s ({rate:,.0f} attempts/s)")


@app.command("status")
def status_cmd(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    dead: Annotated[int, typer.Option(help="Also list up to N dead messages with their reason.", min=0)] = 0,
) -> None:
    """Delivery state per channel: pending, delivered, failed (to retry), dead, in flight."""
    import time

    s = settings()
    outbox, path = _outbox(s)
    status: dict[str, dict[str, int]] = {}
    dead_rows: list[dict] = []
    if outbox is not None:
        try:
            status = outbox.status(now=time.time())
            if dead:
                dead_rows = [{k: m[k] for k in ("idempotency_key", "channel", "customer_id", "action_id", "attempts",
                                                "error")} for m in outbox.messages(state="dead", limit=dead)]
        finally:
            outbox.close()
    if as_json:
        echo(json.dumps({"outbox": str(path), "channels": status, **({"dead": dead_rows} if dead else {})}, indent=2))
        return
    if not status:
        echo(f"no outbox messages in {path}")
        return
    cols = ("pending", "delivered", "failed", "dead", "in_flight")
    echo(f"outbox {path}")
    echo(f"{'channel':<12}" + "".join(f"{c:>11}" for c in cols))
    for channel, row in status.items():
        echo(f"{channel:<12}" + "".join(f"{row[c]:>11,}" for c in cols))
    for m in dead_rows:
        echo(f"dead {m['idempotency_key']} {m['channel']} customer {m['customer_id']} after {m['attempts']} "
             f"attempt(s): {m['error']}")


def _outbox(s: Any) -> tuple[Any, str]:
    """The profile's outbox (None: the embedded one was never written) and where it is."""
    if s.log_backend == "postgres":
        from nba.stores.outbox_postgres import open_outbox
        from nba.stores.postgres import redact

        return open_outbox(s), redact(s.decision_log_dsn)
    from nba.activation.worker import outbox_path
    from nba.stores.outbox import Outbox

    path = outbox_path(s)
    return (Outbox(path) if path.is_file() else None), str(path)


@app.command("retry-dead")
def retry_dead_cmd(
    channel: Annotated[str | None, typer.Option(help="Only this channel's dead messages.")] = None,
) -> None:
    """Make dead messages pending again (once the receiver is fixed); the worker sends them."""
    outbox, path = _outbox(settings())
    if outbox is None:
        echo(f"no outbox messages in {path}")
        return
    try:
        n = outbox.retry_dead(channel)
    finally:
        outbox.close()
    echo(f"{n:,} dead message(s) pending again")
