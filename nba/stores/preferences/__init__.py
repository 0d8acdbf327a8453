"""The preference centre's store: each customer's current preferences and the audit of every
change (who, when, before and after), tables from `nba.records` (PREFERENCE, PREFERENCE_AUDIT).

One backend, `nba.stores.preferences.sqlite.SqlitePreferenceStore`: a SQLite file in WAL mode
that every worker of the service reads on each decision (one key lookup) and `PUT
/customers/{id}/preferences` writes. The values are the JSON of
`nba.preferences.CustomerPreferences`; the store does not interpret them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from nba.errors import NbaError


class PreferenceStoreError(NbaError):
    """The preference store cannot be opened or used."""

    exit_code = 3


@dataclass(frozen=True)
class StoredPreferences:
    customer_id: int
    preferences: str  # JSON
    updated_at: float
    updated_by: str


class PreferenceStore(Protocol):
    def get(self, customer_ids: Sequence[int]) -> dict[int, StoredPreferences]: ...

    def put(self, customer_id: int, preferences: str, by: str, at: float) -> StoredPreferences | None:
        """Replace the customer's preferences and audit the change; returns the previous ones."""
        ...

    def audit(self, customer_id: int) -> list[dict]: ...

    def erase_customer(self, customer_id: int) -> int: ...

    def close(self) -> None: ...


def open_preference_store(settings: Any) -> PreferenceStore:
    """The profile's preference store: a SQLite file (embedded) or the logs' Postgres database
    (production; refused at start, in one line, if it does not answer or is not migrated)."""
    if settings.log_backend == "postgres":
        from nba.stores.preferences.postgres import PostgresPreferenceStore

        return PostgresPreferenceStore(settings.decision_log_dsn)
    from nba.stores.preferences.sqlite import SqlitePreferenceStore

    return SqlitePreferenceStore(settings.preferences_path)
