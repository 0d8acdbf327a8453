"""The stream consumer (production profile): events from a NATS JetStream stream, fed to the same
ingest-and-trigger function as `POST /events` (`DecisionEngine.ingest`: stored, pushed, then the
triggers start decisions and outbox messages).

Why NATS JetStream (RabbitMQ runs here too): a stream is a replayable, durable log of the
events, which is what an event source is (a new consumer, or a rebuilt event log, can read it
again from the start; a RabbitMQ queue forgets a message once it is acknowledged); a pull
consumer fetches a batch at a time, and a batch goes to the list form of the ingest (one
append, one push per batch: the fast path); `Nats-Msg-Id` set to the event id makes the server
drop a producer's retry within its duplicate window, before the log's own deduplication. The
client (nats-py) is one small pure-Python package.

At-least-once, nothing counted twice: a batch's messages are acknowledged only after its
events are durably in the event log (and the features pushed). A consumer killed before that
leaves them unacknowledged; the server delivers them again after `ack_wait`, and the log
recognises the ids it already holds (a duplicate is not stored or counted again; its
customer's features are pushed again from the log, the same values). A message that is not an
event (bad JSON, an unknown type...) is terminated (never redelivered) and logged with the
reason; when the online store is down the batch is not acknowledged (redelivered later).
The triggers run on the events new to the log, as for `POST /events`, and the batch is
acknowledged after them. A consumer killed after a batch's append but before its triggers
finished leaves those events stored and pending (`nba.records.TRIGGER_PENDING`): the
redelivery finds them duplicates still pending and runs their triggers then, idempotently (an
event's decision made before the kill is found by its derived id and not made again); `nba
events consume` also runs, when it starts, the triggers of events left pending longer than
`--recover-after` (a `POST /events` whose client never retried).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from nba.errors import NbaError
from nba.events import EventError

logger = logging.getLogger(__name__)

DEFAULT_URL = "nats://127.0.0.1:4222"
DEFAULT_STREAM = "NBA_EVENTS"
DEFAULT_SUBJECT = "nba.events"
DEFAULT_DURABLE = "nba-ingest"


class BrokerError(NbaError):
    """The broker cannot be reached or refuses the stream or consumer."""

    exit_code = 3


@dataclass
class ConsumeStats:
    received: int = 0  # messages fetched
    stored: int = 0  # events new to the log
    duplicates: int = 0  # events the log already held (a redelivery, a producer's retry)
    rejected: int = 0  # messages that are not valid events (terminated)
    batches: int = 0
    unavailable: int = 0  # batches left unacknowledged because a store was down
    decisions: int = 0  # decisions the triggers started (`DecisionEngine.ingest`; 0 without triggers)
    messages: int = 0  # of them, those that wrote an outbox message

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


async def _connect(url: str) -> Any:
    import nats

    try:
        return await nats.connect(url, connect_timeout=5, max_reconnect_attempts=3, allow_reconnect=True)
    except Exception as exc:
        raise BrokerError(f"cannot connect to NATS at {url}: {type(exc).__name__}: {exc}") from None


async def ensure_stream(js: Any, stream: str, subject: str, duplicate_window_s: float = 120.0) -> None:
    """Create the stream (file storage: it survives a restart of the server) if absent."""
    from nats.js.api import StorageType, StreamConfig
    from nats.js.errors import NotFoundError

    try:
        await js.stream_info(stream)
    except NotFoundError:
        await js.add_stream(StreamConfig(name=stream, subjects=[subject], storage=StorageType.FILE,
                                         duplicate_window=duplicate_window_s))


async def publish(events: Sequence[dict[str, Any]], *, url: str = DEFAULT_URL, stream: str = DEFAULT_STREAM,
                  subject: str = DEFAULT_SUBJECT) -> int:
    """Publish events (JSON-shaped) to the stream, each acknowledged by the server; an event's
    id (when it has one) is its `Nats-Msg-Id`. Returns how many."""
    nc = await _connect(url)
    try:
        js = nc.jetstream()
        await ensure_stream(js, stream, subject)
        pending = []
        for e in events:
            headers = {"Nats-Msg-Id": str(e["event_id"])} if e.get("event_id") else None
            pending.append(js.publish(subject, json.dumps(e).encode(), stream=stream, headers=headers))
            if len(pending) >= 256:
                await asyncio.gather(*pending)
                pending = []
        if pending:
            await asyncio.gather(*pending)
    finally:
        await nc.close()
    return len(events)


async def delete_stream(stream: str, *, url: str = DEFAULT_URL) -> bool:
    from nats.js.errors import NotFoundError

    nc = await _connect(url)
    try:
        return bool(await nc.jetstream().delete_stream(stream))
    except NotFoundError:
        return False
    finally:
        await nc.close()


async def consume(ingest: Callable[[Any], Any], *, url: str = DEFAULT_URL, stream: str = DEFAULT_STREAM,
                  subject: str = DEFAULT_SUBJECT, durable: str = DEFAULT_DURABLE, batch: int = 500,
                  ack_wait_s: float = 30.0, idle_exit_s: float | None = None, max_messages: int | None = None,
                  on_batch: Callable[[ConsumeStats], None] | None = None) -> ConsumeStats:
    """Fetch batches from the stream's durable pull consumer and ingest them; acknowledge a
    batch once stored. Stops after `idle_exit_s` without a message, or `max_messages` (None:
    runs until cancelled)."""
    from nats.errors import TimeoutError as NatsTimeout
    from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

    nc = await _connect(url)
    stats = ConsumeStats()
    try:
        js = nc.jetstream()
        await ensure_stream(js, stream, subject)
        config = ConsumerConfig(durable_name=durable, ack_policy=AckPolicy.EXPLICIT, ack_wait=ack_wait_s,
                                deliver_policy=DeliverPolicy.ALL, max_ack_pending=max(batch * 4, 1000))
        sub = await js.pull_subscribe(subject, durable=durable, stream=stream, config=config)
        idle_since = time.monotonic()
        while max_messages is None or stats.received < max_messages:
            want = batch if max_messages is None else min(batch, max_messages - stats.received)
            try:
                msgs = await sub.fetch(want, timeout=1.0)
            except (TimeoutError, NatsTimeout):
                if idle_exit_s is not None and time.monotonic() - idle_since >= idle_exit_s:
                    break
                continue
            idle_since = time.monotonic()
            stats.received += len(msgs)
            stats.batches += 1
            await _handle(ingest, msgs, stats)
            if on_batch is not None:
                on_batch(stats)
    finally:
        await nc.close()
    return stats


async def _handle(ingest: Callable[[Any], Any], msgs: list[Any], stats: ConsumeStats) -> None:
    good: list[tuple[Any, Any]] = []
    for m in msgs:
        try:
            good.append((m, json.loads(m.data)))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            logger.warning("message %s is not JSON (%s): terminated", m.metadata.sequence.stream, exc)
            stats.rejected += 1
            await m.term()
    if not good:
        return
    try:
        result = ingest([p for _, p in good])
    except EventError:
        # one bad event fails the whole list: ingest one by one, terminate the bad ones
        for m, p in good:
            try:
                r = ingest(p)
            except EventError as exc:
                logger.warning("message %s is not a valid event (%s): terminated", m.metadata.sequence.stream, exc)
                stats.rejected += 1
                await m.term()
                continue
            except NbaError as exc:
                logger.warning("event not ingested (%s): left for redelivery", exc)
                stats.unavailable += 1
                continue
            _count(stats, r)
            await m.ack()
        return
    except NbaError as exc:  # a store is down: nothing acknowledged, redelivered after ack_wait
        logger.warning("batch of %d not ingested (%s): left for redelivery", len(good), exc)
        stats.unavailable += 1
        return
    _count(stats, result)
    await asyncio.gather(*(m.ack() for m, _ in good))


def _count(stats: ConsumeStats, result: Any) -> None:
    stats.stored += len(result.stored)
    stats.duplicates += len(result.duplicates)
    for fired in getattr(result, "triggers", ()):
        if fired.get("decision") is not None:
            stats.decisions += 1
            stats.messages += int(bool(fired["decision"].get("outbox")))
