"""Trigger state: when each trigger last fired for each customer (its dedup window).

One small interface (`TriggerStore`), two durable implementations, one module each:

* `nba.stores.trigger_state.sqlite.SqliteTriggerStore` (the embedded default): one row per
  (trigger, customer) in a SQLite file (WAL), shared by every worker and the scans;
* `nba.stores.trigger_state.redis.RedisTriggerStore` (`NBA_PROFILE=production`): one hash per
  trigger, customer -> last firing, written by a script that checks the window atomically.

`claim` is the only write: it records a firing only if the trigger has not fired for the
customer within its window, atomically, so two workers handling two events of one customer
start one decision, not two. `last_fired` is the read the pure evaluation takes (it holds
back a trigger inside its window, and a lower-priority one may then start the decision).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple, Protocol

import numpy as np

from nba.errors import NbaError
from nba.settings import Settings


class TriggerStoreError(NbaError):
    """The trigger store cannot be reached or used."""

    exit_code = 3


class Fire(NamedTuple):
    trigger_id: str
    customer_id: int
    fired_at: float  # epoch seconds
    event_id: str | None
    window_s: float  # the trigger's dedup window


class TriggerStore(Protocol):
    def last_fired(self, customer_ids: Sequence[int] | np.ndarray, trigger_ids: Sequence[str]) -> np.ndarray:
        """(n, T) epoch seconds of each trigger's last firing per customer; NaN: never."""

    def fired_by(self, customer_ids: Sequence[int] | np.ndarray, trigger_ids: Sequence[str]) -> np.ndarray:
        """(n, T) the event id of each trigger's last firing per customer; None: never, or a scan."""

    def claim(self, fires: Sequence[Fire]) -> list[bool]:
        """Record each firing unless its trigger fired for the customer within the window
        before it, for another event; True where recorded (the decision may start). The same
        event claiming again (its triggers run again after a restart) is recorded again."""

    def erase_customer(self, customer_id: int) -> int: ...

    def ping(self) -> None: ...

    def close(self) -> None: ...


def open_trigger_store(settings: Settings) -> TriggerStore:
    """The profile's trigger store (sqlite locally, redis under production; `NBA_POLICY_STORE` too)."""
    from nba.stores.trigger_state.redis import RedisTriggerStore
    from nba.stores.trigger_state.sqlite import SqliteTriggerStore

    kind = settings.policy_store or ("redis" if settings.profile == "production" else "sqlite")
    if kind == "redis":
        return RedisTriggerStore(settings.redis_url, prefix=f"{settings.redis_prefix}:trigger")
    return SqliteTriggerStore(settings.trigger_state_path)
