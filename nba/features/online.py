"""Online features for decisions: one feature service, read through Feast's online store.

The service's feature views are resolved once from the registry; a request reads every view
of the service, applies each view's TTL the way Feast does (an older value is missing), and
runs the on-demand view's own (Python) transformation from the registry on the request
time. The stored features are read

* from the SQLite online store (the local profile) with one query over the views' tables, and
  from the Redis one (production) with one HMGET per customer for every view, in
  `nba.features.feast_adapter`, the one module that reads Feast below its public API (about
  0.3 ms for one customer from SQLite; from Redis 0.95 against 2.5 ms through `online_read`);
* otherwise through the provider's public `online_read`, once per view: any other online
  store, a Feast outside the adapter's tested versions (one logged warning), or `fast=False`
  (about 0.8 ms for one customer from SQLite).

`FeatureStore.get_online_features` gives the same values in about 3 ms; a test checks both
paths against it for the same customers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from nba import schemas
from nba.errors import FeatureStoreError
from nba.features import feast_adapter
from nba.features.store import feature_service, get_store
from nba.settings import Settings

if TYPE_CHECKING:
    from feast import FeatureStore

_NUMERIC = ("INT", "FLOAT", "DOUBLE", "BOOL", "UNIX")  # Feast primitive type names read as numbers


@dataclass(frozen=True)
class FeatureField:
    name: str
    kind: str  # "number" or "string"


@dataclass(frozen=True)
class _View:
    view: Any
    features: tuple[str, ...]
    ttl_s: float  # 0: no TTL
    from_events: bool = False  # fed by events only (tag fed_by: events): its values alone do not make a customer known


def _kind(dtype: Any) -> str:
    """number, string, or list (an array: an input of an on-demand view, not read by rules)."""
    name = str(getattr(dtype, "name", None) or dtype).upper()
    if "ARRAY" in name or "LIST" in name:
        return "list"
    return "number" if any(t in name for t in _NUMERIC) else "string"


class OnlineFeatureReader:
    """Reads one feature service for a list of customers: columns as Python lists."""

    def __init__(self, settings: Settings, service: str, store: FeatureStore | None = None, *, fast: bool = True):
        """`fast=False` reads through the provider's public `online_read` even where the
        adapter's one-query SQLite read could run (see `feast_adapter`)."""
        self.settings = settings
        self.service_name = service
        self.store = store or get_store(settings)
        fs = feature_service(self.store, service)
        view_names = {v.name for v in self.store.list_feature_views()}
        self.views: list[_View] = []
        self.odfvs: list[Any] = []
        fields: list[FeatureField] = []
        for proj in fs.feature_view_projections:
            feats = [f.name for f in proj.features]
            if proj.name in view_names:
                view = self.store.get_feature_view(proj.name)
                ttl = view.ttl.total_seconds() if view.ttl else 0.0
                self.views.append(_View(view, tuple(feats), ttl, (view.tags or {}).get("fed_by") == "events"))
            else:
                self.odfvs.append(self.store.get_on_demand_feature_view(proj.name))
            fields.extend(FeatureField(f.name, _kind(f.dtype)) for f in proj.features)
        # arrays (the event times of a window) feed the on-demand views only: read, not served
        self.fields = tuple(f for f in fields if f.kind != "list")
        self.list_names = tuple(f.name for f in fields if f.kind == "list")
        self.event_names = tuple(
            [f for v in self.views if v.from_events for f in v.features if f not in self.list_names]
            + [f.name for o in self.odfvs if any(self._from_events(p.name) for p in o.source_feature_view_projections.values())
               for f in o.features])
        self.provider = self.store.provider
        self.config = self.store.config
        self.join_key = schemas.ENTITY_KEY
        self._views = feast_adapter.online_views(self.config, [v.view for v in self.views], fast=fast)

    def _from_events(self, view_name: str) -> bool:
        return any(v.view.name == view_name and v.from_events for v in self.views)

    @property
    def fast(self) -> bool:
        """Whether reads take the adapter's one-query path (SQLite or Redis; else the provider's online_read)."""
        return self._views is not None

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.fields)

    def ping(self) -> None:
        """Read one (possibly unknown) customer: raises if the online store is unreachable."""
        self.read([0], int(datetime.now(UTC).timestamp()))

    def read(self, customer_ids: Sequence[int], request_ts: int | Sequence[int]) -> tuple[dict[str, list[Any]], list[bool]]:
        """Feature columns (name -> one value per customer, None when missing) and, per
        customer, whether the store held any (fresh) value for it."""
        from feast.protos.feast.types.EntityKey_pb2 import EntityKey
        from feast.protos.feast.types.Value_pb2 import Value

        n = len(customer_ids)
        ts = [int(request_ts)] * n if isinstance(request_ts, int | float) else [int(t) for t in request_ts]
        keys = [EntityKey(join_keys=[self.join_key], entity_values=[Value(int64_val=int(c))]) for c in customer_ids]
        out: dict[str, list[Any]] = {}
        found = [False] * n
        per_view = None
        if self._views is not None:
            try:
                per_view = self._views.read(keys)
            except Exception as exc:  # the SQLite file is missing, locked or not a database; Redis is down
                self._views.reset()  # the next read opens the file again (it may be restored by then)
                raise FeatureStoreError(f"online store read of feature view '{self.views[0].view.name}' failed: "
                                        f"{type(exc).__name__}: {exc}") from exc
        for vi, v in enumerate(self.views):
            if per_view is not None:
                rows = per_view[vi]
            else:
                try:
                    rows = self.provider.online_read(config=self.config, table=v.view, entity_keys=keys,
                                                     requested_features=list(v.features))
                except Exception as exc:  # the online store (Redis...) is unreachable or broken
                    raise FeatureStoreError(f"online store read of feature view '{v.view.name}' failed: "
                                            f"{type(exc).__name__}: {exc}") from exc
            cols = {f: [None] * n for f in v.features}
            decoded = per_view is not None  # the adapter decodes as it reads; online_read gives protos
            for i, (event_ts, values) in enumerate(rows):
                if values is None or not (decoded or feast_adapter.held(values)):
                    continue
                if v.ttl_s and event_ts is not None and event_ts.timestamp() < ts[i] - v.ttl_s:
                    continue  # stale: Feast reports it as outside the max age
                if not v.from_events:
                    found[i] = True
                for f in v.features:
                    val = values.get(f)
                    if val is not None:
                        cols[f][i] = val if decoded else feast_adapter.value(val)
            out.update(cols)
        out.update(self.transform(out, ts))
        for name in self.list_names:
            del out[name]
        return out, found

    @property
    def stored_names(self) -> tuple[str, ...]:
        """The features held in the store (not computed at request time), arrays aside."""
        return tuple(f for v in self.views for f in v.features if f not in self.list_names)

    def transform(self, columns: dict[str, Any], request_ts: Sequence[int]) -> dict[str, list[Any]]:
        """The on-demand views' features, computed by their own (registered) transformations
        from stored feature columns and the request times."""
        out: dict[str, list[Any]] = {}
        for odfv in self.odfvs:
            n = len(request_ts)
            inputs: dict[str, list[Any]] = {schemas.REQUEST_TS: list(request_ts)}
            for source in odfv.source_feature_view_projections.values():
                for f in source.features:
                    # a frame without the event arrays (a batch file): no events
                    inputs[f.name] = list(columns[f.name]) if f.name in columns else [None] * n
            # The view's public Python transformation on short feature names (the declarations
            # use mode="python"); `odfv.transform_dict` gives the same but costs 70 us more a call
            # (typeguard checks its arguments), a fifth of a one-customer read.
            result = odfv.feature_transformation.transform(inputs)
            for f in odfv.features:
                out[f.name] = list(result[f.name])
        return out
