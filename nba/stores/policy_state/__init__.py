"""Contact-policy state: who was contacted with what, on which channel, when; who rejected what.

One small interface (`PolicyStore`), two durable implementations, one module each:

* `nba.stores.policy_state.sqlite.SqlitePolicyStore` (the embedded default): one SQLite file in
  WAL mode, shared safely by every worker process of the service and by `nba decide-batch`.
* `nba.stores.policy_state.redis.RedisPolicyStore` (`NBA_PROFILE=production`): a sorted set of
  contacts and one of rejections per customer, each expiring after the longest window any
  policy looks at.

`open_policy_store(settings, catalog)` opens the one the settings name.

Writes are idempotent on (decision id, action id): recording the same contact or rejection
twice (a retried request, a duplicate outcome) counts once.

Caps hold exactly across the workers of a service and across replicas: each customer's state
has a version, bumped by every contact or rejection recorded. `history` returns the versions it
read (read before the rows, so a write in between makes the read look older, never newer), and
`reserve` records a decision's contacts only if every one of its customers' versions is still
the one read, atomically (a transaction under SQLite's write lock; one Lua script in Redis). A
decision that loses the race is decided again on the new history; `release` takes a reserved
decision's contacts back when its log write fails. The decisioning core never sees
a store: the engine reads a `RawHistory` for the customers of a call and turns it into the
core's index arrays with `to_history`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import NamedTuple, Protocol

import numpy as np

from nba.catalog import Catalog
from nba.decisioning.core import ContactHistory, cap_windows_days
from nba.errors import NbaError
from nba.settings import Settings


class PolicyStoreError(NbaError):
    """The contact-policy store cannot be reached or used."""

    exit_code = 3


class Contact(NamedTuple):
    """One shown action. A tuple, so a batch's million contacts go to the store as they are."""

    customer_id: int
    action_id: str
    group: str
    channel: str
    ts: float  # epoch seconds
    decision_id: str  # (the fields of `nba.records.CONTACT`, `group` stored as `grp`)


@dataclass(frozen=True)
class RawHistory:
    """Contacts and rejections since some moment, for the customers of a call (row = position)."""

    contact_row: np.ndarray
    contact_action: list[str]
    contact_group: list[str]
    contact_channel: list[str]
    contact_ts: np.ndarray
    reject_row: np.ndarray
    reject_action: list[str]
    reject_ts: np.ndarray
    versions: dict[int, int] = field(default_factory=dict)  # customer id -> state version, as read


class PolicyStore(Protocol):
    def history(self, customer_ids: Sequence[int] | np.ndarray, since: float) -> RawHistory: ...

    def record_contacts(self, contacts: Sequence[Contact] | Sequence[tuple]) -> None: ...

    def reserve(self, contacts: Sequence[Contact] | Sequence[tuple], versions: dict[int, int]) -> bool:
        """Record the contacts only if each of their customers' state is still at `versions`
        (as `history` read it); False, recording nothing, if any has moved on."""
        ...

    def release(self, contacts: Sequence[Contact] | Sequence[tuple]) -> None:
        """Take back contacts `reserve` recorded (their decision could not be logged)."""
        ...

    def record_rejection(self, customer_id: int, action_id: str, ts: float, decision_id: str) -> None: ...

    def ping(self) -> None: ...

    def erase_customer(self, customer_id: int) -> int:
        """Forget every contact and rejection of the customer; returns how many."""
        ...

    def close(self) -> None: ...


def to_history(catalog: Catalog, raw: RawHistory) -> ContactHistory:
    """Catalog indices for a raw history (-1 for actions or groups the catalog no longer has)."""
    aidx = {a: i for i, a in enumerate(catalog.action_ids)}
    gidx = {g: i for i, g in enumerate(catalog.groups)}
    cidx = {c: i for i, c in enumerate(catalog.channel_names)}

    def codes(values: list[str], index: dict[str, int]) -> np.ndarray:
        return np.fromiter((index.get(v, -1) for v in values), dtype=np.int64, count=len(values))

    return ContactHistory(
        contact_row=np.asarray(raw.contact_row, dtype=np.int64),
        contact_action=codes(raw.contact_action, aidx),
        contact_group=codes(raw.contact_group, gidx),
        contact_channel=codes(raw.contact_channel, cidx),
        contact_ts=np.asarray(raw.contact_ts, dtype=np.float64),
        reject_row=np.asarray(raw.reject_row, dtype=np.int64),
        reject_action=codes(raw.reject_action, aidx),
        reject_ts=np.asarray(raw.reject_ts, dtype=np.float64),
    )


def empty_raw() -> RawHistory:
    i = np.zeros(0, dtype=np.int64)
    f = np.zeros(0, dtype=np.float64)
    return RawHistory(i, [], [], [], f, i, [], f)


def rows_to_raw(ids: np.ndarray, contacts: list[tuple], rejects: list[tuple],
                versions: dict[int, int] | None = None) -> RawHistory:
    """Map (customer_id, ...) rows onto the call's rows; a customer asked for twice gets both."""
    import pandas as pd

    if not contacts and not rejects:
        return _with_versions(empty_raw(), versions)
    index = pd.Index(ids) if ids.size > 64 else None
    if index is None and len(set(ids.tolist())) == ids.size:
        where = {int(c): i for i, c in enumerate(ids.tolist())}

        def rows_of(cids: list[int]) -> tuple[np.ndarray, np.ndarray]:
            pos = np.array([where.get(int(c), -1) for c in cids], dtype=np.int64)
            keep = np.flatnonzero(pos >= 0)
            return pos[keep], keep
    elif index is not None and index.is_unique:
        def rows_of(cids: list[int]) -> tuple[np.ndarray, np.ndarray]:
            pos = index.get_indexer(np.asarray(cids, dtype=np.int64))
            keep = np.flatnonzero(pos >= 0)
            return pos[keep], keep
    else:
        def rows_of(cids: list[int]) -> tuple[np.ndarray, np.ndarray]:
            order = np.argsort(ids, kind="stable")
            sorted_ids = ids[order]
            c = np.asarray(cids, dtype=np.int64)
            lo = np.searchsorted(sorted_ids, c, "left")
            hi = np.searchsorted(sorted_ids, c, "right")
            src = np.repeat(np.arange(c.size), hi - lo)
            pos = order[np.concatenate([np.arange(a, b) for a, b in zip(lo, hi, strict=True)])] if src.size else \
                np.zeros(0, dtype=np.int64)
            return pos.astype(np.int64), src

    if contacts:
        c_cid, c_act, c_grp, c_ch, c_ts = zip(*contacts, strict=True)
        c_row, keep = rows_of(list(c_cid))
        contact = (c_row, [c_act[i] for i in keep], [c_grp[i] for i in keep], [c_ch[i] for i in keep],
                   np.asarray(c_ts, dtype=np.float64)[keep])
    else:
        contact = (np.zeros(0, np.int64), [], [], [], np.zeros(0))
    if rejects:
        r_cid, r_act, r_ts = zip(*rejects, strict=True)
        r_row, keep = rows_of(list(r_cid))
        reject = (r_row, [r_act[i] for i in keep], np.asarray(r_ts, dtype=np.float64)[keep])
    else:
        reject = (np.zeros(0, np.int64), [], np.zeros(0))
    return RawHistory(*contact, *reject, versions=dict(versions or {}))


def _with_versions(raw: RawHistory, versions: dict[int, int] | None) -> RawHistory:
    return raw if not versions else replace(raw, versions=dict(versions))


def contact_customers(contacts: Sequence[Contact] | Sequence[tuple]) -> list[int]:
    """The distinct customers of some contacts, in first-seen order."""
    return list(dict.fromkeys(int(c[0]) for c in contacts))


def open_policy_store(settings: Settings, catalog: Catalog) -> PolicyStore:
    """The profile's contact-policy store (`NBA_POLICY_STORE` overrides: sqlite | redis)."""
    # the backends import this module, so they are imported here
    from nba.stores.policy_state.redis import RedisPolicyStore
    from nba.stores.policy_state.sqlite import SqlitePolicyStore

    kind = settings.policy_store or ("redis" if settings.profile == "production" else "sqlite")
    if kind == "redis":
        retention = max(cap_windows_days(catalog), 1.0) * 86400.0
        return RedisPolicyStore(settings.redis_url, prefix=f"{settings.redis_prefix}:policy", retention_s=retention)
    return SqlitePolicyStore(settings.policy_state_path)
