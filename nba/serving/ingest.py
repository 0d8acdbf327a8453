"""Event ingestion: the one function `POST /events`, `nba events ingest FILE` and the stream
consumer share.

    events (JSON-shaped) -> validate (nba.events) -> known customer? (the profile in the online
    store) -> event log (durable, deduplicated) -> each customer's streaming state derived from
    the log -> Feast push (customer_realtime; customer_consent for consent changes)

The append is durable before anything is pushed, and the features are derived from the log
(not incremented), so a call repeated after a crash (a broker's redelivery) stores nothing
twice and pushes the same values again. Triggers run after this, in the engine
(`DecisionEngine.ingest` -> `on_events`, the one path of `POST /events`, `nba events ingest`
and `nba events consume`), on the events new to the log, and on those stored before whose
triggers never ran (pending in the log: the process was killed between the append and them).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nba.errors import DataFileError
from nba.events import EventError, EventsFile, from_flat, validate_events
from nba.features import streaming
from nba.settings import Settings
from nba.stores.erasures import ErasureList
from nba.stores.events import EventLogStore

logger = logging.getLogger(__name__)

# the streaming features each event type changes (what a response says was updated)
_WINDOW_FEATURES = {"page_view": ["page_views_7d"], "card_search": ["card_searches_7d"], "app_login": ["logins_7d"],
                    "outage": ["outages_30d"], "service_contact": ["service_contacts_30d"],
                    "complaint": ["complaints_30d"]}
_STATE_FEATURES = {
    "application_started": ["application_open", "application_product", "application_open_hours"],
    "application_completed": ["application_open", "application_product", "application_open_hours"],
    "geofence_entered": ["geofence_branch", "geofence_at_s", "hours_since_geofence"],
    "payment_missed": ["days_late"], "payment_made": ["days_late"],
    "life_event": ["last_life_event", "last_life_event_s", "days_since_life_event"],
    "product_expiry": ["card_expires_at_s", "days_to_card_expiry"],
}


def features_of(event: Mapping[str, Any], types: EventsFile) -> list[str]:
    """The features an event updates."""
    typ = event["type"]
    out = list(_WINDOW_FEATURES.get(typ, ())) + list(_STATE_FEATURES.get(typ, ()))
    if typ == "page_view":
        out.append(f"views_{event['properties']['product']}_7d")
    if typ == "consent_changed":
        out.append(f"consent_{event['properties']['channel']}")
    if types.types[typ].interaction:
        out += ["last_interaction_s", "days_since_interaction"]
    return out


@dataclass
class IngestResult:
    received: int
    stored: list[dict[str, Any]]  # the events new to the log, in order (contract 6)
    duplicates: list[str]  # ids the log already held (or sent twice in the call)
    unknown_customers: list[int]
    features_updated: list[str]
    customers_pushed: int
    timing: dict[str, float] = field(default_factory=dict)
    # what the triggers did on the stored events (`DecisionEngine.ingest`; empty without them):
    # one entry per event some trigger fired on, with the decision it started
    triggers: list[dict[str, Any]] = field(default_factory=list)
    # duplicates whose triggers had not run (a process killed between the append and them): as
    # stored, for the engine to run them now (`ingest(..., pending=True)` only)
    untriggered: list[dict[str, Any]] = field(default_factory=list)
    # customers on the erasure list: their events were received, and neither stored nor pushed
    erased_customers: list[int] = field(default_factory=list)

    def response(self) -> dict[str, Any]:
        return {"received": self.received, "stored": len(self.stored), "duplicates": self.duplicates,
                "unknown_customers": self.unknown_customers, "erased_customers": self.erased_customers,
                "features_updated": self.features_updated, "customers_updated": self.customers_pushed,
                "event_ids": [e["event_id"] for e in self.stored], "timing": self.timing,
                "triggers": self.triggers}


class EventIngestor:
    """Validates, appends and pushes events; safe to share between threads."""

    def __init__(self, types: EventsFile, log: EventLogStore, pusher: streaming.FeaturePusher,
                 erasures: ErasureList | None = None):
        self.types = types
        self.log = log
        self.pusher = pusher
        self.erasures = erasures  # None: nobody is ever erased (a store of its own, in a test)

    def ingest(self, payload: Any, *, now: float | None = None, pending: bool = False,
               triggered: Sequence[str] = ()) -> IngestResult:
        """One event or a list (JSON-shaped). Raises `nba.events.EventError` (naming the field)
        before anything is stored if any event is bad; `FeatureStoreError` if the online store
        is down (the events are stored by then: a retry stores nothing twice). `pending`: the
        caller runs the triggers on the new events and then marks them `triggered` in the log
        (an event stored without that, the caller killed, is returned in `untriggered` when it
        comes again); `triggered`: events whose triggers have run since, marked in the append's
        transaction."""
        t0 = time.perf_counter()
        now = time.time() if now is None else now
        events = validate_events(payload, self.types, now)
        received = len(events)
        customers = list(dict.fromkeys(e["customer_id"] for e in events))
        known = dict(zip(customers, self.pusher.known(customers), strict=True))
        # an erased customer is not made known again: their events are neither stored nor pushed
        # (the online store does not know them: only those are looked up)
        gone = self.erasures.erased([c for c, k in known.items() if not k]) if self.erasures is not None else {}
        if gone:
            logger.info("%d event(s) of %d erased customer(s): not stored",
                        sum(1 for e in events if e["customer_id"] in gone), len(gone))
            events = [e for e in events if e["customer_id"] not in gone]
            customers = [c for c in customers if c not in gone]
        for e in events:
            e["known_customer"] = known[e["customer_id"]]
        t_valid = time.perf_counter()
        res = self.log.append(events, now, pending=pending, triggered=triggered)
        untriggered = self.log.pending(res.duplicates) if pending and res.duplicates else []
        t_log = time.perf_counter()
        new_ids = set(res.new)
        stored = []
        for e in events:
            if e["event_id"] in new_ids:
                stored.append(e)
                new_ids.discard(e["event_id"])  # a second copy in the same call is a duplicate
        # every customer of the call, duplicates too: a redelivery after a crash between the
        # append and the push pushes the same state again
        histories = self.log.history(customers)
        rows = streaming.realtime_rows(histories, self.types)
        self.pusher.push(streaming.REALTIME_PUSH, rows)
        consent: dict[int, tuple[dict[str, Any], float]] = {}
        for cid in {e["customer_id"] for e in events if e["type"] == "consent_changed" and e["known_customer"]}:
            state = streaming.consent_state(histories[cid])
            if not state:  # its event was a duplicate of another customer's event id: nothing of it stored
                continue
            consent[cid] = ({f"consent_{ch}": g for ch, (g, _) in state.items()},
                            max(ts for _, ts in state.values()))
        self.pusher.update(streaming.CONSENT_VIEW, streaming.CONSENT_PUSH, consent)
        t_push = time.perf_counter()
        updated = sorted({f for e in events for f in features_of(e, self.types)})
        unknown = sorted(c for c, k in known.items() if not k and c not in gone)
        if unknown:
            logger.info("%d event(s) for %d customer(s) the feature store does not know: stored, flagged",
                        sum(1 for e in events if not e["known_customer"]), len(unknown))
        timing = {"validate_ms": round((t_valid - t0) * 1e3, 3), "log_ms": round((t_log - t_valid) * 1e3, 3),
                  "push_ms": round((t_push - t_log) * 1e3, 3)}
        return IngestResult(received, stored, list(res.duplicates), unknown, updated, len(rows), timing,
                            untriggered=untriggered, erased_customers=sorted(gone))

    def set_holding(self, customer_id: int, feature: str, when: float) -> bool:
        """An accepted product is held at once: its flag in the profile is set (and the product
        count raised when it was not held). False if the profile does not know the customer."""
        def change(current: Mapping[str, Any]) -> dict[str, Any]:
            if current.get(feature) == 1:
                return {}
            return {feature: 1, "num_products": int(current.get("num_products") or 0) + 1}

        done = self.pusher.update(streaming.PROFILE_VIEW, streaming.PROFILE_PUSH, {customer_id: (change, when)})
        return bool(done)


def event_ingestor(settings: Settings, bundle_dir: Path | None = None, *, store: Any = None,
                   erasures: ErasureList | None = None) -> EventIngestor:
    """The event ingestion over the work folder's event log and feature store; the declaration
    from the bundle (else the project's serving/events.yaml); `erasures` the erasure list to
    share (an engine's), else the profile's is opened."""
    from nba.events import events_path, load_event_types
    from nba.features.store import get_store
    from nba.stores.erasures import open_erasure_list
    from nba.stores.events import open_event_log

    packed = Path(bundle_dir) / "events.yaml" if bundle_dir is not None else None
    types = load_event_types(packed if packed is not None and packed.is_file() else events_path(settings.home))
    return EventIngestor(types, open_event_log(settings), streaming.FeaturePusher(store or get_store(settings)),
                         open_erasure_list(settings) if erasures is None else erasures)


# --- files ----------------------------------------------------------------------------------

FILE_KINDS = (".csv", ".parquet", ".jsonl", ".ndjson")


def read_event_file(path: Path, types: EventsFile, chunk: int) -> tuple[int, Iterator[list[dict[str, Any]]]]:
    """(how many events, their chunks as JSON-shaped events) of a CSV, Parquet or JSONL file.
    CSV and Parquet are flattened (contract 1); a JSONL line is an event object (with
    `properties`) or a flattened row. A bad line is an `EventError` naming its line."""
    path = Path(path)
    if not path.is_file():
        raise DataFileError(f"event file {path} not found")
    kind = path.suffix.lower()
    if kind not in FILE_KINDS:
        raise DataFileError(f"event file {path}: expected a {', '.join(FILE_KINDS)} file")
    if kind in (".jsonl", ".ndjson"):
        lines = [ln for ln in path.read_text().splitlines() if ln.strip()]

        def gen_json() -> Iterator[list[dict[str, Any]]]:
            for start in range(0, len(lines), chunk):
                part = []
                for i, ln in enumerate(lines[start:start + chunk], start=start + 1):
                    try:
                        obj = json.loads(ln)
                    except json.JSONDecodeError as exc:
                        raise EventError(f"{path}: line {i}: not valid JSON ({exc})", field=f"line {i}") from None
                    part.append(obj if not isinstance(obj, dict) or "properties" in obj
                                else from_flat([obj], types)[0])
                yield part

        return len(lines), gen_json()
    if kind == ".csv":
        import pyarrow.csv as pacsv

        # an empty cell is a missing value (a flattened file has every type's property columns)
        table = pacsv.read_csv(path, convert_options=pacsv.ConvertOptions(
            column_types={"event_id": "string", "type": "string", "timestamp": "string"}, strings_can_be_null=True))
    else:
        import pyarrow.parquet as pq

        table = pq.read_table(path)
    missing = [c for c in ("customer_id", "type") if c not in table.column_names]
    if missing:
        raise DataFileError(f"event file {path}: missing column(s) {missing}; expected customer_id, type, "
                            "timestamp, event_id and one column per property")

    def gen_table() -> Iterator[list[dict[str, Any]]]:
        for start in range(0, table.num_rows, chunk):
            yield from_flat(table.slice(start, chunk).to_pylist(), types)

    return table.num_rows, gen_table()
