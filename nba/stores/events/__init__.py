"""The event log: every behavioural event accepted, appended durably, deduplicated on its id,
read back per customer (the streaming features are derived from it) or as a frame (the
offline source of point-in-time training frames).

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


class EventLogStore(Protocol):
    path: Path

    def append(self, events: Sequence[Mapping[str, Any]], ingested_at: float) -> AppendResult:
        """Append stored events (`nba.events`) durably in one transaction; a known id is a duplicate."""
        ...

    def history(self, customer_ids: Sequence[int], since: float | None = None) -> dict[int, list[LoggedEvent]]:
        """Each customer's events in time order (at or after `since`, if given)."""
        ...

    def count(self) -> int: ...

    def erase_customer(self, customer_id: int) -> int:
        """Remove every event of the customer (GDPR erasure); returns how many."""
        ...

    def close(self) -> None: ...
