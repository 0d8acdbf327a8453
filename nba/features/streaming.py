"""Streaming features: derived from the event log, pushed to the online store through Feast push
sources, and exported as the offline source of the same view.

* `RealtimeState` folds a customer's events (in time order) into the row of the
  `customer_realtime` view (features/definitions.py): the event times of the windows (the
  last 7 or 30 days before the customer's newest event; the `realtime_context` view counts
  them at the decision's own time), and the states (an open application, days late, the
  last life event, the card's expiry, the last geofence, the last interaction).
* `consent_state` gives the newest `consent_changed` of each channel.
* `FeaturePusher` writes rows through `FeatureStore.push(..., to=PushMode.ONLINE)` and reads a
  view's current row (the holdings and consents are read, changed and pushed whole).
* `export_source` writes `data/realtime.parquet`: one row per event, the state right after it,
  so a point-in-time join at any moment sees what a decision at that moment saw.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nba import schemas
from nba.errors import FeatureStoreError

if TYPE_CHECKING:
    from feast import FeatureStore

    from nba.events import EventsFile
    from nba.stores.events import LoggedEvent

logger = logging.getLogger(__name__)

REALTIME_VIEW = "customer_realtime"
REALTIME_PUSH = "realtime_push"
PROFILE_VIEW, PROFILE_PUSH = "customer_profile", "profile_push"
CONSENT_VIEW, CONSENT_PUSH = "customer_consent", "consent_push"
REALTIME_SOURCE = "realtime.parquet"  # under the staged repository's data/

DAY = 86400.0
# event type -> (the array of its times, the window it is kept for, in days)
WINDOWED = {"page_view": ("page_view_ts", 7), "card_search": ("card_search_ts", 7), "app_login": ("login_ts", 7),
            "outage": ("outage_ts", 30), "service_contact": ("service_contact_ts", 30),
            "complaint": ("complaint_ts", 30)}
MAX_TIMES = 1_000  # times kept per window (a bot's page views must not grow a row without bound)
ARRAYS = ("page_view_ts", "page_view_product", "card_search_ts", "login_ts", "outage_ts", "service_contact_ts",
          "complaint_ts")
SCALARS: dict[str, Any] = {"application_open": 0, "application_product": "", "application_started_s": 0,
                           "last_interaction_s": 0, "geofence_branch": "", "geofence_at_s": 0, "days_late": 0,
                           "last_life_event": "", "last_life_event_s": 0, "card_expires_at_s": 0}
CONSENT_CHANNELS = ("email", "sms", "push", "call_centre", "web")


class RealtimeState:
    """One customer's streaming state, folded event by event (in time order)."""

    def __init__(self, interaction_types: Iterable[str]):
        self.interaction = frozenset(interaction_types)
        self.times: dict[str, list[int]] = {col: [] for col, _ in WINDOWED.values()}
        self.products: list[str] = []
        self.scalars = dict(SCALARS)
        self.application_id = ""
        self.newest = 0.0

    def apply(self, typ: str, ts: float, props: Mapping[str, Any]) -> None:
        t = int(ts)
        self.newest = max(self.newest, ts)
        s = self.scalars
        if typ in WINDOWED:
            self.times[WINDOWED[typ][0]].append(t)
            if typ == "page_view":
                self.products.append(str(props.get("product", "")))
        if typ in self.interaction:
            s["last_interaction_s"] = max(s["last_interaction_s"], t)
        if typ == "application_started":
            s.update(application_open=1, application_product=props["product"], application_started_s=t)
            self.application_id = props.get("application_id", "")
        elif typ == "application_completed":
            if s["application_open"] and props.get("application_id") in (self.application_id, None):
                s.update(application_open=0, application_product="", application_started_s=0)
                self.application_id = ""
        elif typ == "geofence_entered":
            s.update(geofence_branch=props["branch_id"], geofence_at_s=t)
        elif typ == "payment_missed":
            s["days_late"] = int(props["days_late"])
        elif typ == "payment_made":
            s["days_late"] = 0
        elif typ == "life_event":
            s.update(last_life_event=props["kind"], last_life_event_s=t)
        elif typ == "product_expiry" and props.get("product") == "credit_card":
            s["card_expires_at_s"] = int(props["expires_at"])

    def row(self) -> dict[str, Any]:
        """The view's row: the windows' times within their window before the newest event."""
        out: dict[str, Any] = dict(self.scalars)
        for typ, (col, days) in WINDOWED.items():
            lo = self.newest - days * DAY
            times = self.times[col]
            keep = [i for i, t in enumerate(times) if t > lo][-MAX_TIMES:]
            if len(keep) != len(times):  # forget what left the window: the next row is as small
                self.times[col] = [times[i] for i in keep]
                if typ == "page_view":
                    self.products = [self.products[i] for i in keep]
            out[col] = list(self.times[col])
            if typ == "page_view":
                out["page_view_product"] = list(self.products)
        return out


def interaction_types(types: EventsFile) -> frozenset[str]:
    return frozenset(name for name, t in types.types.items() if t.interaction)


def realtime_rows(histories: Mapping[int, Sequence[LoggedEvent]], types: EventsFile) -> list[dict[str, Any]]:
    """The `customer_realtime` row of each customer with events (its newest event's time as the
    row's `event_timestamp`)."""
    inter = interaction_types(types)
    rows = []
    for cid, events in histories.items():
        if not events:
            continue
        st = RealtimeState(inter)
        for e in events:
            st.apply(e.type, e.timestamp, e.properties)
        rows.append({schemas.ENTITY_KEY: cid, schemas.EVENT_TS: _utc(st.newest), **st.row()})
    return rows


def consent_state(events: Sequence[LoggedEvent]) -> dict[str, tuple[int, float]]:
    """channel -> (granted 0/1, when) of the newest `consent_changed` event of each channel."""
    out: dict[str, tuple[int, float]] = {}
    for e in events:
        if e.type == "consent_changed":
            out[e.properties["channel"]] = (int(bool(e.properties["granted"])), e.timestamp)
    return out


def _utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, tz=UTC)


# --- pushing ----------------------------------------------------------------------------


class FeaturePusher:
    """Pushes rows into the online store through Feast push sources, and reads a view's current
    rows (for a read-change-push of the holdings and consents). One per process; thread-safe.

    `FeatureStore.push` resolves the push source's views from the registry on every call: about
    40 ms (protobuf decoding of every view and feature service, with type checks), while the
    write itself is a few milliseconds. So the views of each push source are resolved once,
    the same way (`stream_source.name`), and each push ends as `FeatureStore.push` does, in
    the provider's public `online_write_batch`, with the value protos built from the rows
    directly (`feast_adapter.rows_to_protos`; Feast's own `ingest_df` when a type is not
    handled there). `fast=False` calls `FeatureStore.push` itself (a test checks both leave the
    same values online)."""

    def __init__(self, store: FeatureStore, *, fast: bool = True):
        from nba.features import feast_adapter

        self.store = store
        self.fast = fast
        self._lock = threading.Lock()
        self._views: dict[str, Any] = {}
        self._pushed: dict[str, list[Any]] = {}
        self._readers: dict[str, Any] = {}
        if fast:
            feast_adapter.tune_sqlite_writes(store)

    def view(self, name: str) -> Any:
        if name not in self._views:
            self._views[name] = self.store.get_feature_view(name)
        return self._views[name]

    def views_of(self, source: str) -> list[Any]:
        """The feature views fed by a push source (resolved once)."""
        if source not in self._pushed:
            views = [v for v in self.store.list_feature_views()
                     if v.stream_source is not None and v.stream_source.name == source]
            if not views:
                raise FeatureStoreError(f"no feature view is fed by push source '{source}': run `nba features apply`")
            self._pushed[source] = views
        return self._pushed[source]

    def push(self, source: str, rows: Sequence[Mapping[str, Any]]) -> int:
        """Write `rows` (customer_id, event_timestamp, every feature of the view) online."""
        if not rows:
            return 0
        import pandas as pd

        from nba.features import feast_adapter

        with self._lock:  # Feast's SQLite online store shares one connection per store object
            try:
                if self.fast:
                    provider = self.store.provider
                    for view in self.views_of(source):
                        data = feast_adapter.rows_to_protos(view, rows, schemas.ENTITY_KEY, schemas.EVENT_TS)
                        if data is not None:
                            provider.online_write_batch(self.store.config, view, data, None)
                        else:
                            provider.ingest_df(view, pd.DataFrame(list(rows)))
                else:
                    from feast.data_source import PushMode

                    self.store.push(source, pd.DataFrame(list(rows)), to=PushMode.ONLINE)
            except FeatureStoreError:
                raise
            except Exception as exc:  # the online store is down or refuses the rows
                raise FeatureStoreError(f"push to {source} failed: {type(exc).__name__}: {exc}") from exc
        return len(rows)

    def current(self, view_name: str, customer_ids: Sequence[int]) -> list[tuple[datetime | None, dict[str, Any] | None]]:
        """Per customer: (the row's event time, feature -> value) in the online store, or (None, None)."""
        from feast.protos.feast.types.EntityKey_pb2 import EntityKey
        from feast.protos.feast.types.Value_pb2 import Value

        from nba.features import feast_adapter
        from nba.features.feast_adapter import value

        view = self.view(view_name)
        keys = [EntityKey(join_keys=[schemas.ENTITY_KEY], entity_values=[Value(int64_val=int(c))])
                for c in customer_ids]
        if view_name not in self._readers:
            self._readers[view_name] = feast_adapter.online_views(self.store.config, [view], fast=self.fast)
        fast_reader = self._readers[view_name]
        if fast_reader is not None:  # the adapter's one-query read of Feast's SQLite or Redis store (decoded)
            try:
                return fast_reader.read(keys)[0]
            except Exception as exc:
                fast_reader.reset()
                raise FeatureStoreError(f"online read of {view_name} failed: {type(exc).__name__}: {exc}") from exc
        try:
            with self._lock:
                rows = self.store.provider.online_read(config=self.store.config, table=view, entity_keys=keys,
                                                       requested_features=[f.name for f in view.features])
        except Exception as exc:
            raise FeatureStoreError(f"online read of {view_name} failed: {type(exc).__name__}: {exc}") from exc
        return [(ts, {k: value(v) for k, v in vals.items()}) if vals is not None and feast_adapter.held(vals)
                else (None, None) for ts, vals in rows]

    def known(self, customer_ids: Sequence[int]) -> list[bool]:
        """Whether the bank's profile (a snapshot) holds each customer, whatever its age."""
        return [vals is not None for _, vals in self.current(PROFILE_VIEW, customer_ids)]

    def update(self, view_name: str, source: str, changes: Mapping[int, tuple[Any, float]]) -> list[int]:
        """Read each customer's current row of the view, apply `changes` (customer -> (feature ->
        value, or a function of the current row giving them; when)), and push the whole rows
        back; customers without a row are skipped. Returns the customers updated."""
        if not changes:
            return []
        ids = list(changes)
        current = self.current(view_name, ids)
        rows = []
        for cid, (ts, vals) in zip(ids, current, strict=True):
            if vals is None:
                continue
            new, when = changes[cid]
            if callable(new):
                new = new(vals)
            stamp = max(ts.timestamp() if ts else 0.0, when)
            rows.append({schemas.ENTITY_KEY: cid, schemas.EVENT_TS: _utc(stamp), **vals, **new})
        self.push(source, rows)
        return [r[schemas.ENTITY_KEY] for r in rows]


# --- the offline source -------------------------------------------------------------------


def realtime_schema() -> Any:
    import pyarrow as pa

    fields = [pa.field(schemas.ENTITY_KEY, pa.int64()), pa.field(schemas.EVENT_TS, pa.timestamp("us", tz="UTC"))]
    for name, default in SCALARS.items():
        fields.append(pa.field(name, pa.string() if isinstance(default, str) else pa.int64()))
    for name in ARRAYS:
        fields.append(pa.field(name, pa.list_(pa.string() if name == "page_view_product" else pa.int64())))
    return pa.schema(fields)


def export_source(event_log: Path | None, types: EventsFile | None, target: Path) -> int:
    """Write the realtime view's offline source from the event log: per customer, one row after
    each of its events (the state then). An absent log gives an empty source. Returns the rows."""
    import pyarrow as pa

    from nba.features.sources import write_source

    schema = realtime_schema()
    cols: dict[str, list[Any]] = {f.name: [] for f in schema}
    if event_log is not None and Path(event_log).is_file() and types is not None:
        from nba.stores.events.sqlite import EventLog

        log = EventLog(Path(event_log))
        inter = interaction_types(types)
        states: dict[int, RealtimeState] = {}
        for _eid, cid, typ, ts, _known, _at, props in log.rows():
            st = states.get(cid)
            if st is None:
                st = states[cid] = RealtimeState(inter)
            st.apply(typ, ts, props)
            row = st.row()
            cols[schemas.ENTITY_KEY].append(cid)
            cols[schemas.EVENT_TS].append(_utc(ts))
            for name in (*SCALARS, *ARRAYS):
                cols[name].append(row[name])
        log.close()
    table = pa.Table.from_pydict(cols, schema=schema)
    if not Path(target).parent.is_dir():
        raise FeatureStoreError(f"feature repository data folder {Path(target).parent} does not exist")
    return write_source(table, Path(target))
