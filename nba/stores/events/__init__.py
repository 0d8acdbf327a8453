"""The event log: every behavioural event accepted, appended durably, deduplicated on its id,
read back per customer (the streaming features are derived from it) or as a frame (the
offline source of point-in-time training frames).

An event appended with its triggers to run is pending (`nba.records.TRIGGER_PENDING`, in the
append's transaction) until the engine has run them (`triggered`): a process killed in between
leaves it pending, and the next delivery of the event or a consumer's start runs them.

The embedded backend is one SQLite file (`nba.stores.events.sqlite`, WAL, synchronous=FULL,
group-committed like the decision log). `EventLogStore` is what the ingest needs of a backend.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from nba.errors import NbaError


class EventLogError(NbaError):
    """The event log cannot be opened or read."""


@dataclass(frozen=True)
class AppendResult:
    """What an append stored: the ids new to the log, and those it already held (or that came
    twice in the same call), in the order given."""

    new: tuple[str, ...]
    duplicates: tuple[str, ...]


@dataclass(frozen=True)
class LoggedEvent:
    """One event of a customer's history, as the feature derivation reads it."""

    type: str
    timestamp: float
    properties: Mapping[str, Any]


def pending_event(row: Sequence[Any]) -> dict[str, Any]:
    """A pending event as the triggers read it, from a backend's row (event_id, customer_id,
    type, timestamp, properties as JSON text)."""
    import json

    return {"event_id": row[0], "customer_id": int(row[1]), "type": row[2], "timestamp": float(row[3]),
            "properties": json.loads(row[4])}


class EventLogStore(Protocol):
    @property
    def path(self) -> Path | str:
        """Where it is: a file, or a Postgres DSN without its password."""
        ...

    def append(self, events: Sequence[Mapping[str, Any]], ingested_at: float, *,
               pending: bool = False, triggered: Sequence[str] = ()) -> AppendResult:
        """Append stored events (`nba.events`) durably in one transaction; a known id is a
        duplicate. `pending`: the new events' triggers are to run (`TRIGGER_PENDING` rows in
        the same transaction, until `triggered`); `triggered`: events whose triggers have run
        since, marked in the same transaction (no commit of their own on the hot path)."""
        ...

    def pending(self, event_ids: Sequence[str] | None = None, *, before: float | None = None,
                limit: int = 10_000) -> list[dict[str, Any]]:
        """The events (as stored: `event_id, customer_id, type, timestamp, properties`) whose
        triggers have not run: of `event_ids`, or every one appended before `before`; in time order."""
        ...

    def triggered(self, event_ids: Sequence[str]) -> int:
        """Their triggers have run: the pending rows go. Returns how many."""
        ...

    def history(self, customer_ids: Sequence[int], since: float | None = None) -> dict[int, list[LoggedEvent]]:
        """Each customer's events in time order (at or after `since`, if given)."""
        ...

    def count(self) -> int: ...

    def erase_customer(self, customer_id: int) -> int:
        """Remove every event of the customer (GDPR erasure); returns how many."""
        ...

    def close(self) -> None: ...


def open_event_log(settings: Any) -> EventLogStore:
    """The profile's event log: a SQLite file (embedded) or the logs' Postgres database
    (production; refused at start, in one line, if it does not answer or is not migrated)."""
    if settings.log_backend == "postgres":
        from nba.stores.events.postgres import PostgresEventLog

        return PostgresEventLog(settings.decision_log_dsn)
    from nba.stores.events.sqlite import EventLog

    return EventLog(settings.event_log_path)
