"""Erasure of one customer (GDPR art. 17): every store that holds them, a receipt, the list.

`erase_customer(settings, customer_id, by=...)` adds the id to the erasure list
(`nba.stores.erasures`: every training frame excludes it, the service makes no decision for it
and stores none of its events), then asks every erasable store, in turn, to forget the customer
(`erase_customer(customer_id) -> int`, the rows removed or pseudonymised), and writes a receipt
(`<work>/privacy/receipts/<id>-<time>.json`: what each store removed, when, by whom). Running it
again finds nothing left: the receipt says so and the call succeeds.

What happens where, and why:

| store | treatment | why |
| --- | --- | --- |
| online store (Feast, SQLite or Redis) | deleted | features are personal data; nothing aggregates them |
| offline sources (simulator output, the feature repository's Parquet) | rows deleted, files rewritten | training data |
| decision log (decisions, candidates, filtered, outcomes, batch index, batch segments; SQLite or Postgres) | pseudonymised irreversibly | incrementality, OPE and KPIs are aggregates over every decision; see `DecisionLog.erase_customer` |
| contact-policy state (SQLite; Redis when configured) | deleted | only the customer's own caps read it |
| preferences and their audit (SQLite or Postgres) | deleted | the receipt is the record that they existed |
| event log, outbox and receipts (SQLite or Postgres) | deleted | the events are re-exported without them; a delivered copy is the receiver's |

Other stores plug in with `register(factory)`: a factory takes the settings and returns an
`Erasable` (or None when that store is not there), e.g. the event log and the outbox.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from nba.io import write_text
from nba.settings import Settings

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Erasable:
    name: str
    treatment: str  # deleted | pseudonymised | rewritten
    erase: Callable[[int], Any]  # -> rows (int) or {part: rows}
    where: str = ""


Factory = Callable[[Settings], "Erasable | None"]
_FACTORIES: list[Factory] = []


def register(factory: Factory) -> Factory:
    """Add a store to every erasure (usable as a decorator); registered once per factory."""
    if factory not in _FACTORIES:
        _FACTORIES.append(factory)
    return factory


def _online(settings: Settings) -> Erasable | None:
    from nba.features.erasure import erase_online

    return Erasable("online_store", "deleted", lambda cid: erase_online(settings, cid), str(settings.feast_repo))


def _offline(settings: Settings) -> Erasable | None:
    from nba.features.erasure import erase_offline

    return Erasable("offline_sources", "rewritten", lambda cid: erase_offline(settings, cid),
                    f"{settings.sim_dir}, {settings.feast_repo / 'data'}")


def _decision_log(settings: Settings) -> Erasable | None:
    from nba.stores.decisions import DB_FILE
    from nba.stores.decisions.sqlite import DecisionLog

    if settings.log_backend == "postgres":
        from nba.stores.decisions.postgres import PostgresDecisionLog
        from nba.stores.postgres import redact

        def erase_pg(cid: int) -> int:
            log = PostgresDecisionLog(settings.decision_log_dsn, settings.decision_log_dir)
            try:
                return log.erase_customer(cid)
            finally:
                log.close()

        return Erasable("decision_log", "pseudonymised", erase_pg,
                        f"{redact(settings.decision_log_dsn)}, {settings.decision_log_dir}")
    if not (settings.decision_log_dir / DB_FILE).is_file():
        return None

    def erase(cid: int) -> int:
        log = DecisionLog(settings.decision_log_dir)
        try:
            return log.erase_customer(cid)
        finally:
            log.close()

    return Erasable("decision_log", "pseudonymised", erase, str(settings.decision_log_dir))


def _policy_sqlite(settings: Settings) -> Erasable | None:
    from nba.stores.policy_state.sqlite import SqlitePolicyStore

    if not settings.policy_state_path.is_file():
        return None

    def erase(cid: int) -> int:
        store = SqlitePolicyStore(settings.policy_state_path)
        try:
            return store.erase_customer(cid)
        finally:
            store.close()

    return Erasable("contact_policy_state", "deleted", erase, str(settings.policy_state_path))


def _policy_redis(settings: Settings) -> Erasable | None:
    if (settings.policy_store or ("redis" if settings.profile == "production" else "sqlite")) != "redis":
        return None
    from nba.stores.policy_state.redis import RedisPolicyStore

    def erase(cid: int) -> int:
        store = RedisPolicyStore(settings.redis_url, prefix=f"{settings.redis_prefix}:policy")
        try:
            return store.erase_customer(cid)
        finally:
            store.close()

    return Erasable("contact_policy_state_redis", "deleted", erase, settings.redis_url)


def _preferences(settings: Settings) -> Erasable | None:
    from nba.stores.preferences import open_preference_store
    from nba.stores.preferences.sqlite import SqlitePreferenceStore

    if settings.log_backend == "postgres":
        return _pg_erasable("preferences", settings, open_preference_store)
    if not settings.preferences_path.is_file():
        return None

    def erase(cid: int) -> int:
        store = SqlitePreferenceStore(settings.preferences_path)
        try:
            return store.erase_customer(cid)
        finally:
            store.close()

    return Erasable("preferences", "deleted", erase, str(settings.preferences_path))


def _outbox(settings: Settings) -> Erasable | None:
    """The outbox beside the decision log: messages and receipts deleted (a delivered copy is
    the receiver's; the decision itself stays, pseudonymised, in the log)."""
    from nba.stores.decisions import DB_FILE
    from nba.stores.outbox import Outbox
    from nba.stores.outbox_postgres import open_outbox

    if settings.log_backend == "postgres":
        return _pg_erasable("outbox", settings, open_outbox)
    path = settings.decision_log_dir / DB_FILE
    if not path.is_file():
        return None

    def erase(cid: int) -> int:
        box = Outbox(path)
        try:
            return box.erase_customer(cid)
        finally:
            box.close()

    return Erasable("outbox", "deleted", erase, str(path))


def _event_log(settings: Settings) -> Erasable | None:
    """The behavioural events (also the streaming features' offline source): deleted; the next
    `nba features apply` exports the source again without them."""
    from nba.stores.events import open_event_log
    from nba.stores.events.sqlite import EventLog

    if settings.log_backend == "postgres":
        return _pg_erasable("event_log", settings, open_event_log)
    if not settings.event_log_path.is_file():
        return None

    def erase(cid: int) -> int:
        log = EventLog(settings.event_log_path)
        try:
            return log.erase_customer(cid)
        finally:
            log.close()

    return Erasable("event_log", "deleted", erase, str(settings.event_log_path))


def _pg_erasable(name: str, settings: Settings, opener: Callable[[Settings], Any]) -> Erasable:
    """A store of the production profile in the logs' Postgres database: its rows deleted."""
    from nba.stores.postgres import redact

    def erase(cid: int) -> int:
        store = opener(settings)
        try:
            return int(store.erase_customer(cid))
        finally:
            store.close()

    return Erasable(name, "deleted", erase, redact(settings.decision_log_dsn))


def _trigger_state(settings: Settings) -> Erasable | None:
    """Each trigger's last firing per customer (dedup windows): deleted."""
    from nba.stores.trigger_state import open_trigger_store

    production = (settings.policy_store or ("redis" if settings.profile == "production" else "sqlite")) == "redis"
    if not production and not settings.trigger_state_path.is_file():
        return None

    def erase(cid: int) -> int:
        store = open_trigger_store(settings)
        try:
            return store.erase_customer(cid)
        finally:
            store.close()

    return Erasable("trigger_state", "deleted", erase,
                    settings.redis_url if production else str(settings.trigger_state_path))


for _f in (_online, _offline, _decision_log, _outbox, _policy_sqlite, _policy_redis, _preferences, _trigger_state,
           _event_log):
    register(_f)


def erasable_stores(settings: Settings) -> list[Erasable]:
    return [e for e in (f(settings) for f in _FACTORIES) if e is not None]


def _rows(result: Any) -> int:
    return int(sum(result.values())) if isinstance(result, dict) else int(result)


def erase_customer(settings: Settings, customer_id: int, *, by: str) -> dict[str, Any]:
    """Erase the customer everywhere; returns the receipt (also written to a file).

    The id goes on the erasure list first: from then on the service refuses decisions for it and
    stores none of its events, so nothing new of the customer arrives in a store while the
    stores are being emptied (what arrived before is erased below)."""
    from nba.stores.erasures import open_erasure_list

    cid = int(customer_id)
    if cid < 0:
        raise ValueError(f"customer_id {customer_id}: expected an id >= 0")
    started = time.time()
    stamp = datetime.fromtimestamp(started, tz=UTC)
    receipt_path = settings.privacy_dir / "receipts" / f"{cid}-{stamp.strftime('%Y%m%dT%H%M%S%fZ')}.json"
    erasures = open_erasure_list(settings)
    try:
        before = erasures.get(cid)
        erasures.add(cid, started, by, str(receipt_path))
        where = erasures.where
    finally:
        erasures.close()
    stores: dict[str, Any] = {}
    for e in erasable_stores(settings):
        result = e.erase(cid)
        stores[e.name] = {"treatment": e.treatment, "rows": _rows(result), "where": e.where,
                          **({"files": result} if isinstance(result, dict) and result else {})}
        logger.info("erasure of customer %d: %s %s %d rows", cid, e.name, e.treatment, _rows(result))
    total = sum(s["rows"] for s in stores.values())
    receipt = {
        "customer_id": cid, "erased_at": stamp.isoformat().replace("+00:00", "Z"), "erased_by": by,
        "rows": total, "nothing_left": total == 0,
        "previously_erased_at": (datetime.fromtimestamp(before["erased_at"], tz=UTC).isoformat()
                                 .replace("+00:00", "Z") if before else None),
        "stores": stores,
        "erasure_list": where,
        "note": "the erasure list and these receipts keep the id, as the record of the erasure; training "
                "frames exclude every listed id, and the service makes no decision for it and stores none of "
                "its events",
    }
    write_text(json.dumps(receipt, indent=2) + "\n", receipt_path)
    receipt["receipt"] = str(receipt_path)
    return receipt
