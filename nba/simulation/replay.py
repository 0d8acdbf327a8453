"""A simulated day of events replayed through the decision service (the quickstart's always-on
step, issue 11 item 7).

    events (the simulator's `events.parquet`: customer_id, type, timestamp, one column per
    property) -> one simulated day -> POST /events in list form (batches), over real HTTP, to a
    running service -> its triggers start decisions; their outbox messages -> the delivery
    worker (the connectors of serving/activation.yaml: files by default) until drained
    -> per trigger: how many fired, how many decisions followed (the decision log), how many
    messages landed per channel (the outbox and its receipts)

The service is a real one (`nba serve`, or the one `served` starts on a free loopback port);
the replay is a client of it like any channel. Each customer's events are sent in time order
(customers are split over `concurrency` connections, each posting its share in order), so a
third outage is the third the service sees. Counting comes from the stores, not from what the
client was told: `fired` and `held_back` from the answers (the log keeps decisions, not the
conditions that held), `decisions` and `with_action` from the decision log, `messages` from
the outbox's delivered rows with their receipts.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from nba.errors import NbaError
from nba.settings import Settings

logger = logging.getLogger(__name__)

EVENTS_FILE = "events.parquet"  # the simulator writes it beside its other tables
BATCH = 500  # events per POST (the list form's fast path)
DRAIN_S = 120.0  # how long the delivery worker may take to drain the replay's messages


class ReplayError(NbaError):
    """The service refused a batch of events or could not be reached."""

    exit_code = 3


@dataclass
class ReplaySummary:
    """What a replayed day did (`summary_lines` prints it)."""

    day: str  # YYYY-MM-DD (UTC)
    events: int  # the day's events sent
    stored: int
    duplicates: int
    unknown_customers: int  # distinct customers the feature store did not know (stored, flagged)
    calls: int  # POST /events calls
    post_s: float  # sending the day and the service answering (ingest, triggers, decisions, outbox)
    deliver_s: float  # the delivery worker draining the day's messages
    # trigger -> fired, held_back, decisions, with_action, messages {channel: n} (see the module docstring)
    triggers: dict[str, dict[str, Any]] = field(default_factory=dict)
    undelivered: dict[str, int] = field(default_factory=dict)  # state -> messages not delivered when it stopped
    decision_ids: list[str] = field(default_factory=list)
    where: dict[str, str] = field(default_factory=dict)

    @property
    def decisions(self) -> int:
        return sum(t["decisions"] for t in self.triggers.values())

    @property
    def messages(self) -> dict[str, int]:
        """Messages delivered per channel, every trigger together."""
        out: dict[str, int] = {}
        for t in self.triggers.values():
            for ch, n in t["messages"].items():
                out[ch] = out.get(ch, 0) + n
        return dict(sorted(out.items()))

    def as_dict(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        out.pop("decision_ids")
        out["decisions"] = self.decisions
        out["messages"] = self.messages
        return out


def events_path(settings: Settings) -> Path:
    return settings.sim_dir / EVENTS_FILE


def read_events(path: Path) -> Any:
    """The simulator's events as a DataFrame (timestamps as UTC datetimes)."""
    import pandas as pd

    frame = pd.read_parquet(path)
    missing = [c for c in ("customer_id", "type", "timestamp") if c not in frame.columns]
    if missing:
        raise NbaError(f"events file {path}: missing column(s) {missing}; expected customer_id, type, timestamp and "
                       "one column per property")
    frame["timestamp"] = pd.to_datetime(frame["timestamp"], utc=True)
    return frame


def pick_day(frame: Any, day: date | str | None = None) -> date:
    """The day to replay: `day`, else the newest day of the frame (UTC; the bank's features are
    freshest then)."""
    import pandas as pd

    if frame.empty:
        raise NbaError("the events frame is empty: there is no day to replay")
    if day is not None:
        return pd.Timestamp(day).date()
    return frame["timestamp"].max().tz_convert("UTC").date()


def day_events(frame: Any, day: date, types: Any) -> list[dict[str, Any]]:
    """The day's events as POST /events takes them (flattened rows -> `properties`), in time order."""
    import pandas as pd

    from nba.events import from_flat

    start = pd.Timestamp(day, tz="UTC")
    part = frame[(frame["timestamp"] >= start) & (frame["timestamp"] < start + timedelta(days=1))]
    part = part.sort_values("timestamp", kind="stable")
    plain = part.astype(object).where(part.notna(), None)  # NaN, NaT, pd.NA: a property the type has not
    return from_flat(plain.to_dict("records"), types)


def lanes(events: Sequence[dict[str, Any]], n: int) -> list[list[dict[str, Any]]]:
    """The events split over n connections by customer, each share in time order."""
    out: list[list[dict[str, Any]]] = [[] for _ in range(max(1, n))]
    for e in events:
        out[int(e["customer_id"]) % len(out)].append(e)
    return [x for x in out if x]


class _Client:
    """One keep-alive HTTP connection to the service."""

    def __init__(self, url: str, timeout: float = 120.0):
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ReplayError(f"service URL '{url}': expected http://host:port")
        self.url = url
        self.conn = http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=timeout)

    def post(self, path: str, body: Any) -> tuple[int, Any]:
        data = json.dumps(body).encode()
        for attempt in (1, 2):  # a keep-alive connection the server closed: once more on a new one
            try:
                self.conn.request("POST", path, body=data, headers={"Content-Type": "application/json"})
                resp = self.conn.getresponse()
                raw = resp.read()
                break
            except (ConnectionError, http.client.HTTPException, OSError) as exc:
                self.conn.close()
                if attempt == 2:
                    raise ReplayError(f"POST {self.url}{path}: {type(exc).__name__}: {exc}") from None
        try:
            return resp.status, json.loads(raw)
        except json.JSONDecodeError:
            return resp.status, raw.decode(errors="replace")

    def close(self) -> None:
        self.conn.close()


def post_events(url: str, events: Sequence[dict[str, Any]], *, batch: int = BATCH, concurrency: int = 2,
                progress: Callable[[int], None] | None = None) -> list[dict[str, Any]]:
    """POST the events in list form, `batch` a call, over `concurrency` connections (each
    customer's events on one, in order). Returns the service's answers. A refused batch (4xx,
    5xx) raises `ReplayError` with the service's reason."""

    def run(share: list[dict[str, Any]]) -> list[dict[str, Any]]:
        client = _Client(url)
        answers = []
        try:
            for start in range(0, len(share), batch):
                part = share[start:start + batch]
                status, out = client.post("/events", part)
                if status != 200:
                    reason = out.get("error") if isinstance(out, dict) else out
                    raise ReplayError(f"POST {url}/events answered {status} for a batch of {len(part)} events: "
                                      f"{reason}")
                answers.append(out)
                if progress is not None:
                    progress(len(part))
        finally:
            client.close()
        return answers

    shares = lanes(events, concurrency)
    with ThreadPoolExecutor(max(1, len(shares)), thread_name_prefix="nba-replay") as pool:
        return [a for part in pool.map(run, shares) for a in part]


def drain(settings: Settings, decision_ids: Sequence[str], *, timeout_s: float = DRAIN_S
          ) -> tuple[float, dict[str, int]]:
    """Run the delivery worker (serving/activation.yaml's connectors) until none of the
    messages of these decisions is pending or failed, or `timeout_s`. Returns (seconds, the
    undelivered ones per state)."""
    from nba.activation.worker import make_worker

    t0 = time.perf_counter()
    worker = make_worker(settings, poll_s=0.05)
    left: dict[str, int] = {}
    try:
        while True:
            worker.run(once=True)
            left = {}
            for m in worker.outbox.of_decisions(decision_ids):
                if m["state"] != "delivered":
                    left[m["state"]] = left.get(m["state"], 0) + 1
            if not left.get("pending") and not left.get("failed"):
                break
            if time.perf_counter() - t0 >= timeout_s:
                logger.warning("the delivery worker stopped after %.0f s with messages left: %s", timeout_s, left)
                break
            time.sleep(0.2)  # a failed message waits for its back-off
    finally:
        worker.close()
    return time.perf_counter() - t0, left


def replay_day(settings: Settings, url: str, frame: Any, *, day: date | str | None = None, batch: int = BATCH,
               concurrency: int = 2, deliver: bool = True, drain_s: float = DRAIN_S,
               progress: Callable[[int], None] | None = None) -> ReplaySummary:
    """Replay one simulated day of `frame` (the events.parquet contract) through the service at
    `url`, run the delivery worker until its messages are out, and summarise from the stores
    (`settings` are the service's: its work folder holds the decision log and the outbox)."""
    from nba.events import events_path as declaration
    from nba.events import load_event_types
    from nba.records import NO_ACTION
    from nba.serving.triggering import tally
    from nba.stores.decisions.sqlite import DecisionLog
    from nba.stores.outbox import Outbox

    types = load_event_types(declaration(settings.home))
    chosen = pick_day(frame, day)
    events = day_events(frame, chosen, types)
    t0 = time.perf_counter()
    answers = post_events(url, events, batch=batch, concurrency=concurrency, progress=progress) if events else []
    post_s = time.perf_counter() - t0
    fired = [x for a in answers for x in a["triggers"]]
    told = tally(fired)
    decision_ids = [x["decision_id"] for x in fired if x["decision_id"] is not None]
    log = DecisionLog(settings.decision_log_dir)
    try:
        rows = log.select(decision_ids, ("decision_id", "source", "action_id"))
    finally:
        log.close()
    source = {did: src for did, src, _ in rows}
    outbox = Outbox(log.path)
    try:
        pending = outbox.of_decisions(decision_ids)
        deliver_s, _ = drain(settings, decision_ids, timeout_s=drain_s) if deliver and pending else (0.0, {})
        messages = outbox.of_decisions(decision_ids)
    finally:
        outbox.close()
    per: dict[str, dict[str, Any]] = {tid: {"fired": t["fired"], "held_back": t["held_back"], "decisions": 0,
                                            "with_action": 0, "messages": {}} for tid, t in told.items()}
    for _, src, action in rows:
        tid = str(src).removeprefix("trigger:")
        r = per.setdefault(tid, {"fired": 0, "held_back": 0, "decisions": 0, "with_action": 0, "messages": {}})
        r["decisions"] += 1
        r["with_action"] += int(action != NO_ACTION)
    undelivered: dict[str, int] = {}
    for m in messages:
        if m["state"] == "delivered" and m["delivered_receipts"] > 0:
            r = per[str(source[m["decision_id"]]).removeprefix("trigger:")]
            r["messages"][m["channel"]] = r["messages"].get(m["channel"], 0) + 1
        else:
            undelivered[m["state"]] = undelivered.get(m["state"], 0) + 1
    for r in per.values():
        r["messages"] = dict(sorted(r["messages"].items()))
    unknown = {c for a in answers for c in a["unknown_customers"]}
    return ReplaySummary(
        day=chosen.isoformat(), events=len(events), stored=sum(a["stored"] for a in answers),
        duplicates=sum(len(a["duplicates"]) for a in answers), unknown_customers=len(unknown), calls=len(answers),
        post_s=post_s, deliver_s=deliver_s, triggers=dict(sorted(per.items())), undelivered=undelivered,
        decision_ids=decision_ids, where=where_to_look(settings))


def where_to_look(settings: Settings) -> dict[str, str]:
    return {
        "messages": f"{settings.activation_dir}/<channel>.jsonl (the file connector; serving/activation.yaml "
                    "names each channel's)",
        "delivery": "nba activation status  (pending, delivered, failed, dead per channel)",
        "decisions": f"{settings.decision_log_dir}  (source trigger:<id>; nba.stores.decisions.read_log)",
        "events": f"{settings.event_log_path}  (nba events export --out FILE)",
    }


def summary_lines(s: ReplaySummary) -> list[str]:
    """The summary as a person reads it."""
    rate = s.events / s.post_s if s.post_s > 0 else 0.0
    out = [f"{s.events:,} events of {s.day} in {s.calls:,} calls: {s.stored:,} stored, {s.duplicates:,} duplicates, "
           f"{s.unknown_customers:,} unknown customers; {s.post_s:.1f} s ({rate:,.0f} events/s), delivery "
           f"{s.deliver_s:.1f} s"]
    if not s.triggers:
        out.append("no trigger fired")
    width = max([len(t) for t in s.triggers] + [7])
    out.append(f"{'trigger':<{width}}  {'fired':>7}  {'held back':>9}  {'decisions':>9}  {'with action':>11}  "
               "messages per channel")
    for tid, t in s.triggers.items():
        sent = ", ".join(f"{ch} {n:,}" for ch, n in t["messages"].items()) or "-"
        out.append(f"{tid:<{width}}  {t['fired']:>7,}  {t['held_back']:>9,}  {t['decisions']:>9,}  "
                   f"{t['with_action']:>11,}  {sent}")
    total = ", ".join(f"{ch} {n:,}" for ch, n in s.messages.items()) or "none"
    out.append(f"{'all':<{width}}  {'':>7}  {'':>9}  {s.decisions:>9,}  {'':>11}  {total}")
    if s.undelivered:
        out.append("not delivered: " + ", ".join(f"{n:,} {state}" for state, n in sorted(s.undelivered.items())))
    out += [f"{k + ':':<11}{v}" for k, v in s.where.items()]
    return out


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def served(settings: Settings, *, workers: int | None = None, log_file: Path | None = None,
           timeout_s: float = 180.0) -> Iterator[str]:
    """The built Bento served on a free loopback port (no delivery worker beside it: the replay
    runs its own) for the length of the block; yields its URL."""
    from nba.serving.run import start, stop, wait_ready

    port = free_port()
    proc = start(settings, port=port, workers=workers, log_file=log_file)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, proc, timeout=timeout_s)
        yield url
    finally:
        stop(proc)
