"""The delivery worker: outbox -> connectors, at least once, with receipts.

Each cycle claims a batch of due messages with a lease (`Outbox.claim`), sends each channel's
share through its connector (the channels concurrently; a webhook sends many at once), and
settles every attempt in one transaction: delivered; failed with the reason and a retry after
an exponential back-off with jitter; dead with the reason after the channel's max attempts (or
at once for an answer that will not change, a webhook's 400). A worker killed mid-batch leaves
its messages leased: when the lease expires they are due again and are sent again (the
idempotency key lets the receiver see each once). Several workers may run side by side.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from nba.activation.config import Activation, Retry, channel_directions, load_activation
from nba.activation.connectors import Connector, Result, build_connectors, close_all
from nba.settings import Settings
from nba.stores.decisions import DB_FILE
from nba.stores.outbox import Message, Outbox, Settlement
from nba.stores.outbox_postgres import open_outbox

logger = logging.getLogger(__name__)

BATCH = 500  # messages per claim
LEASE_S = 60.0  # how long a claim holds at least [default: longer than a batch of timeouts takes]
POLL_S = 0.2  # the pause when nothing is due


def backoff_s(retry: Retry, attempt: int, rng: random.Random | None = None) -> float:
    """The pause before retrying after the `attempt`-th failure: backoff_s * 2^(attempt-1),
    capped, times a random 0.5-1.5."""
    base = min(retry.max_backoff_s, retry.backoff_s * 2.0 ** (attempt - 1))
    return base * (rng or random).uniform(0.5, 1.5)


@dataclass
class Totals:
    """What a worker did."""

    delivered: int = 0
    failed: int = 0
    dead: int = 0
    batches: int = 0
    seconds: float = 0.0
    per_channel: dict[str, dict[str, int]] = field(default_factory=dict)

    def add(self, channel: str, state: str) -> None:
        setattr(self, state, getattr(self, state) + 1)
        row = self.per_channel.setdefault(channel, {"delivered": 0, "failed": 0, "dead": 0})
        row[state] += 1


def outbox_path(settings: Settings) -> Path:
    """The outbox is in the decision log's SQLite file."""
    return settings.decision_log_dir / DB_FILE


class DeliveryWorker:
    """Claims, sends and settles outbox messages; `run` loops until stopped."""

    def __init__(self, outbox: Outbox, connectors: Mapping[str, Connector], retry: Mapping[str, Retry], *,
                 batch: int = BATCH, lease_s: float | None = None, poll_s: float = POLL_S, owner: str | None = None,
                 clock: Callable[[], float] = time.time, seed: int | None = None):
        self.outbox = outbox
        self.connectors = dict(connectors)
        self.retry = dict(retry)
        self.batch = batch
        # by default a claim outlives the slowest batch (every webhook request timing out), so no
        # other worker takes over messages this one is still sending
        worst = max((getattr(c, "worst_s", lambda n: 0.0)(batch) for c in self.connectors.values()), default=0.0)
        self.lease_s = lease_s if lease_s is not None else max(LEASE_S, worst + 5.0)
        self.poll_s = poll_s
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{os.urandom(3).hex()}"
        self.clock = clock
        self._rng = random.Random(seed)
        self._pool = ThreadPoolExecutor(max(1, len({id(c) for c in self.connectors.values()})),
                                        thread_name_prefix="nba-channel")
        self.stopping = threading.Event()

    def _send(self, channel: str, messages: list[Message]) -> list[Result]:
        connector = self.connectors.get(channel)
        if connector is None:
            return [Result(False, f"no connector for channel '{channel}' (not an outbound channel of "
                                  "serving/policies.yaml)", permanent=True)] * len(messages)
        try:
            return connector.send(messages)
        except Exception as exc:  # a connector bug must not lose the batch: retried like a failure
            logger.exception("the %s connector of channel %s failed", connector.kind, channel)
            return [Result(False, f"{connector.kind} connector error: {type(exc).__name__}: {exc}")] * len(messages)

    def cycle(self, totals: Totals | None = None) -> int:
        """Claim one batch, send it, settle it; returns how many messages were attempted."""
        now = self.clock()
        messages = self.outbox.claim(self.owner, limit=self.batch, lease_s=self.lease_s, now=now)
        if not messages:
            return 0
        by_channel: dict[str, list[Message]] = {}
        for m in messages:
            by_channel.setdefault(m.channel, []).append(m)
        futures = {ch: self._pool.submit(self._send, ch, ms) for ch, ms in by_channel.items()}
        done = self.clock()
        settlements: list[Settlement] = []
        dead: dict[str, list[str]] = {}
        for ch, ms in by_channel.items():
            results = futures[ch].result()
            connector = self.connectors.get(ch)
            kind = connector.kind if connector is not None else "none"
            retry = self.retry.get(ch) or Retry()
            for m, r in zip(ms, results, strict=True):
                attempt = m.attempts + 1
                if r.ok:
                    state, nxt = "delivered", 0.0
                elif r.permanent or attempt >= retry.max_attempts:
                    state, nxt = "dead", 0.0
                else:
                    state, nxt = "failed", done + backoff_s(retry, attempt, self._rng)
                detail = r.detail if r.ok or state == "failed" else (
                    f"{r.detail} (attempt {attempt} of {retry.max_attempts}"
                    + (", not retried: the receiver refuses it" if r.permanent else "") + ")")
                settlements.append(Settlement(m.idempotency_key, state, detail, kind, attempt, nxt))
                if totals is not None:
                    totals.add(ch, state)
                if state == "dead":
                    dead.setdefault(ch, []).append(detail)
        self.outbox.settle(self.owner, settlements, now=self.clock())
        for ch, reasons in dead.items():  # one line per channel and batch, not one per message
            logger.warning("%d outbox message(s) of channel %s are dead; the first: %s", len(reasons), ch, reasons[0])
        if totals is not None:
            totals.batches += 1
        return len(messages)

    def run(self, *, once: bool = False, max_seconds: float | None = None) -> Totals:
        """Deliver until stopped (`stopping` set, SIGTERM in the CLI); with `once`, until
        nothing is due. Leases still held are given back on the way out."""
        totals = Totals()
        t0 = time.monotonic()
        try:
            while not self.stopping.is_set():
                n = self.cycle(totals)
                if max_seconds is not None and time.monotonic() - t0 >= max_seconds:
                    break
                if n == 0:
                    if once:
                        break
                    self.stopping.wait(self.poll_s)
        finally:
            self.outbox.release(self.owner)
            totals.seconds = time.monotonic() - t0
        return totals

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        close_all(self.connectors)
        self.outbox.close()


def load(settings: Settings, *, activation_file: Path | None = None) -> Activation:
    """`serving/activation.yaml` checked against the channels of `serving/policies.yaml`."""
    return load_activation(settings.home, channel_directions(settings.home), path=activation_file,
                           webhook_url=settings.webhook_url)


def make_worker(settings: Settings, *, batch: int = BATCH, lease_s: float | None = None, poll_s: float = POLL_S,
                activation_file: Path | None = None) -> DeliveryWorker:
    """The worker of the settings' decision log, with the connectors of the activation file."""
    activation = load(settings, activation_file=activation_file)  # a bad file fails before the outbox opens
    connectors = build_connectors(activation, settings)
    return DeliveryWorker(open_outbox(settings), connectors, activation.retry, batch=batch, lease_s=lease_s,
                          poll_s=poll_s)
