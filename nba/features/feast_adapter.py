"""The one place that reads Feast below its public API: the SQLite online store in one query,
the Redis one in one round trip.

Feast's public online reads are `FeatureStore.get_online_features` (about 3 ms for the 39
features of `serving_v1`, most of it building a response object feature by feature) and the
provider's `online_read`, one call per feature view (about 0.8 ms for the five views of
`serving_v1`, each call serialising the keys again). The decision service reads the SQLite
online store of the local profile with one query over every view's table instead (about
0.3 ms for one customer; `benchmarks/bench_online_read.py`). That query depends on how Feast
0.67 lays the store out, none of which is a documented interface:

* the database file: `online_store.path`, relative to the repository;
* one table per view, named by `feast.infra.online_stores.helpers.compute_table_id`, with the
  columns `entity_key, feature_name, value, event_ts`;
* keys serialised by `feast.infra.key_encoding_utils.serialize_entity_key`;
* values as serialised `ValueProto`s, `event_ts` as epoch seconds (Feast's sqlite3 adapter).

So the installed Feast version is checked once, at import, against the range this was tested
with (`TESTED_RANGE`, the range `pyproject.toml` pins; a test keeps the two equal). Outside it
the reader falls back to the public `online_read`, with one logged warning, rather than
refusing to start: the public path gives the same values, only slower. `OnlineFeatureReader(...,
fast=False)` forces the public path whatever the version. A test checks that the fast path,
the public path and `get_online_features` give the same values.

No other module of `nba` may import Feast internals.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import logging
import re
import sqlite3
import threading
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

TESTED_RANGE = ">=0.67,<0.68"  # the Feast versions the fast path was written and tested against
_LOWEST, _ABOVE = (0, 67), (0, 68)  # TESTED_RANGE as (major, minor) bounds: lowest included, above excluded

FEAST_VERSION = importlib.metadata.version("feast")  # the installed version, detected once
_WARNED: set[str] = set()


def _major_minor(version: str) -> tuple[int, int] | None:
    m = re.match(r"(\d+)\.(\d+)", version)
    return (int(m.group(1)), int(m.group(2))) if m else None


def version_supported(version: str | None = None) -> bool:
    """Whether the fast path may run on `version` (default: the installed Feast). Outside the
    tested range, logs one warning per version naming it and the range, and returns False."""
    version = version or FEAST_VERSION
    mm = _major_minor(version)
    ok = mm is not None and _LOWEST <= mm < _ABOVE
    if not ok and version not in _WARNED:
        _WARNED.add(version)
        log.warning("feast %s is installed; the fast SQLite online read is tested with feast%s only: "
                    "reading through the provider's public online_read instead (same values, slower)",
                    version, TESTED_RANGE)
    return ok


version_supported()  # at import: the one warning, when the installed Feast is outside the range


# Serialised ValueProto -> its Python value. Most stored values repeat (ages, flags, scores,
# categories: 18,000 distinct among 170,000 in the bank's online store), and a dictionary
# lookup costs a tenth of decoding one. Only immutable scalars are kept, up to a bound.
_DECODED: dict[bytes, Any] = {}
_DECODED_MAX = 100_000
_SCALARS = (int, float, str, bool, bytes)
_MISSING = object()


def value(proto: Any) -> Any:
    """The Python value a Feast `ValueProto` holds (None when unset)."""
    which = proto.WhichOneof("val")
    if not which:
        return None
    val = getattr(proto, which)
    return list(val.val) if which.endswith("_list_val") else val


def held(protos: Mapping[str, Any]) -> bool:
    """Whether a row of the provider's `online_read` holds any value. Its Redis store answers
    a customer it does not hold with a row of empty values stamped 1970, not with None."""
    return any(p.WhichOneof("val") for p in protos.values())


def _decode(raw: bytes) -> Any:
    from feast.protos.feast.types.Value_pb2 import Value as ValueProto

    val = value(ValueProto.FromString(raw))
    if len(_DECODED) < _DECODED_MAX and (val is None or isinstance(val, _SCALARS)):
        _DECODED[raw] = val
    return val


def online_views(config: Any, views: Sequence[Any], *, fast: bool = True) -> SqliteViews | RedisViews | None:
    """The fast reader of `views` when it may run: `fast` is not switched off, the installed
    Feast is in the tested range and the online store is SQLite or a plain Redis (not a
    cluster or a sentinel, and through redis-py). None otherwise (read through the provider's
    `online_read`)."""
    if not fast:
        return None
    kind = str(config.online_store.type)
    if kind == "sqlite" and version_supported():
        return SqliteViews(config, views)
    store = config.online_store
    if (kind == "redis" and str(getattr(store.redis_type, "value", store.redis_type)) == "redis"
            and str(getattr(store.client, "value", store.client)) != "glide" and version_supported()):
        return RedisViews(config, views)
    return None


class SqliteViews:
    """Every view of a feature service read from Feast's SQLite online store in one query."""

    CHUNK = 5_000  # keys per query (x views, under SQLite's limit of bound parameters)
    MMAP = 1 << 30  # bytes of the online store mapped (address space, not memory)

    def __init__(self, config: Any, views: Sequence[Any]):
        from feast.infra.online_stores.helpers import compute_table_id

        self.config = config
        path = Path(config.online_store.path)
        self.path = str(config.repo_path / path if config.repo_path and not path.is_absolute() else path)
        versioning = bool(getattr(config.registry, "enable_online_feature_view_versioning", False))
        self.tables = [compute_table_id(config.project, v, versioning) for v in views]
        self.features = [{f.name for f in v.features} for v in views]
        self._local = threading.local()
        self._sql: dict[int, str] = {}

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            if not Path(self.path).is_file():
                raise FileNotFoundError(f"online store {self.path} does not exist: run `nba features materialize`")
            # event_ts comes back as stored (epoch seconds) and is converted once per (view,
            # customer) below, not once per feature row; the file is memory-mapped (read-only): no
            # read() call and no copy per page
            conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, check_same_thread=False)
            conn.execute(f"PRAGMA mmap_size={self.MMAP}")
            self._local.conn = conn
        return conn

    def reset(self) -> None:
        """Forget this thread's connection (after a failed read: the file may have been replaced,
        or changed journal mode; the next read opens it again)."""
        conn = getattr(self._local, "conn", None)
        self._local.conn = None
        if conn is not None:
            with contextlib.suppress(sqlite3.Error):
                conn.close()

    def _query(self, k: int) -> str:
        if k not in self._sql:
            marks = ",".join("?" * k)
            self._sql[k] = " UNION ALL ".join(
                f'SELECT {i}, entity_key, feature_name, value, event_ts FROM "{t}" WHERE entity_key IN ({marks})'
                for i, t in enumerate(self.tables))
        return self._sql[k]

    def read(self, keys: Sequence[Any]) -> list[list[tuple[Any, dict[str, Any] | None]]]:
        """Per view, per key (`EntityKey` proto): (event time, feature -> value) or (None, None),
        as `online_read` gives but with each value decoded from its ValueProto."""
        from feast.infra.key_encoding_utils import serialize_entity_key

        cache = _DECODED
        version = self.config.entity_key_serialization_version
        blobs = [serialize_entity_key(k, entity_key_serialization_version=version) for k in keys]
        where: dict[bytes, list[int]] = {}  # a customer asked for twice gets its values twice
        for i, b in enumerate(blobs):
            where.setdefault(b, []).append(i)
        unique = list(where)
        found: list[list[dict[str, Any]]] = [[{} for _ in blobs] for _ in self.tables]
        times: list[list[Any]] = [[None] * len(blobs) for _ in self.tables]
        conn = self._conn()
        for start in range(0, len(unique), self.CHUNK):
            part = unique[start:start + self.CHUNK]
            rows = conn.execute(self._query(len(part)), part * len(self.tables)).fetchall()
            for vi, key, feature, raw, event_ts in rows:
                if feature not in self.features[vi]:
                    continue
                val = cache.get(raw, _MISSING)
                if val is _MISSING:
                    val = _decode(raw)
                for i in where[key]:
                    found[vi][i][feature] = val
                    times[vi][i] = event_ts
        out = []
        for vi in range(len(self.tables)):
            view_rows: list[tuple[Any, dict[str, Any] | None]] = []
            for i in range(len(blobs)):
                if not found[vi][i]:
                    view_rows.append((None, None))
                    continue
                t = times[vi][i]  # Feast writes int(event_ts.timestamp()): the epoch second, UTC
                t = datetime.fromtimestamp(int(t), tz=UTC) if t is not None else None
                view_rows.append((t, found[vi][i]))
            out.append(view_rows)
        return out


_TIMES: dict[bytes, datetime] = {}  # serialised Timestamp -> its time: a materialisation stamps many rows alike


def _time(raw: bytes) -> datetime:
    t = _TIMES.get(raw)
    if t is None:
        from google.protobuf.timestamp_pb2 import Timestamp

        ts = Timestamp.FromString(raw)
        t = datetime.fromtimestamp(ts.seconds + ts.nanos / 1e9, tz=UTC)  # as Feast's online_read converts it
        if len(_TIMES) < _DECODED_MAX:
            _TIMES[raw] = t
    return t


class RedisViews:
    """Every view of a feature service read from Feast's Redis online store in one round trip.

    Feast 0.67 keeps one hash per entity, named by the serialised entity key and the project,
    with a field per feature (the murmur3 hash of `view:feature`, `helpers._mmh3`) and a
    `_ts:view` field per view holding its serialised event time. The provider's `online_read`
    sends one pipeline per view and decodes every value; here one HMGET per customer asks for
    every view's fields at once (one command for one customer, one pipeline for many), on the
    provider's own client, and each distinct stored value is decoded once (`_DECODED`). A view
    without its `_ts` field holds nothing for the customer: (None, None), as the SQLite read
    gives (the public read gives an empty row stamped 1970, which the view's TTL drops).
    """

    def __init__(self, config: Any, views: Sequence[Any]):
        from feast.infra.online_stores.helpers import _mmh3, compute_versioned_name

        self.config = config
        versioning = bool(getattr(config.registry, "enable_online_feature_view_versioning", False))
        self.fields: list[bytes] = []
        self.slots: list[tuple[int, str | None]] = []  # per field: (view index, feature; None: the view's time)
        for vi, v in enumerate(views):
            name = compute_versioned_name(v, versioning)
            for f in v.features:
                self.fields.append(_mmh3(f"{name}:{f.name}"))
                self.slots.append((vi, f.name))
            self.fields.append(f"_ts:{name}".encode())
            self.slots.append((vi, None))
        self.views = len(views)
        self.project = config.project.encode("utf-8")
        self._client: Any = None

    def client(self) -> Any:
        if self._client is None:
            from feast.infra.online_stores.redis import RedisOnlineStore

            self._client = RedisOnlineStore()._get_client(self.config.online_store)  # Feast's own connection settings
        return self._client

    def reset(self) -> None:
        """Nothing to forget: redis-py reconnects on the next command."""

    def read(self, keys: Sequence[Any]) -> list[list[tuple[Any, dict[str, Any] | None]]]:
        """Per view, per key (`EntityKey` proto): (event time, feature -> value) or (None, None)."""
        from feast.infra.key_encoding_utils import serialize_entity_key

        version = self.config.entity_key_serialization_version
        names = [serialize_entity_key(k, entity_key_serialization_version=version) + self.project for k in keys]
        client = self.client()
        if len(names) == 1:
            replies = [client.hmget(names[0], self.fields)]
        else:
            unique = list(dict.fromkeys(names))
            with client.pipeline(transaction=False) as pipe:
                for name in unique:
                    pipe.hmget(name, self.fields)
                by_name = dict(zip(unique, pipe.execute(), strict=True))
            replies = [by_name[name] for name in names]
        cache = _DECODED
        out: list[list[tuple[Any, dict[str, Any] | None]]] = [[] for _ in range(self.views)]
        for reply in replies:
            rows: list[dict[str, Any]] = [{} for _ in range(self.views)]
            times: list[datetime | None] = [None] * self.views
            for (vi, feature), raw in zip(self.slots, reply, strict=True):
                if raw is None:
                    continue
                if feature is None:
                    times[vi] = _time(raw)
                    continue
                val = cache.get(raw, _MISSING)
                rows[vi][feature] = _decode(raw) if val is _MISSING else val
            for vi in range(self.views):
                out[vi].append((times[vi], rows[vi]) if times[vi] is not None else (None, None))
        return out


def delete_entity(config: Any, join_key: str, entity_id: int) -> int:
    """Delete every feature row of one entity from the online store (erasure); returns how many.

    Feast 0.67 has no public call for one entity (the Redis store's `delete_entity_values`
    deletes every entity of a join key). The SQLite store keeps one table per view keyed by
    the serialised entity key (see the module docstring): each table of the file is cleared of
    that key. The Redis store keeps one hash per entity, named by the serialised key and the
    project (`feast.infra.online_stores.helpers._redis_key`): it is deleted.
    """
    from feast.infra.key_encoding_utils import serialize_entity_key
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.protos.feast.types.Value_pb2 import Value

    key = serialize_entity_key(EntityKey(join_keys=[join_key], entity_values=[Value(int64_val=int(entity_id))]),
                               entity_key_serialization_version=config.entity_key_serialization_version)
    store = config.online_store
    kind = getattr(store, "type", "sqlite")
    if kind == "redis":
        import redis

        url = str(store.connection_string)
        host_port, *opts = url.split(",")
        host, _, port = host_port.partition(":")
        kw = dict(o.split("=", 1) for o in opts if "=" in o)
        client = redis.Redis(host=host or "127.0.0.1", port=int(port or 6379), db=int(kw.get("db", 0)),
                             password=kw.get("password"))
        try:
            name = key + config.project.encode("utf-8")
            n = int(client.hlen(name))
            client.delete(name)
            return n
        finally:
            client.close()
    path = Path(store.path)
    path = config.repo_path / path if config.repo_path and not path.is_absolute() else path
    if not path.is_file():
        return 0
    conn = sqlite3.connect(path, timeout=30)
    try:
        conn.execute("PRAGMA secure_delete=ON")
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        n = 0
        with conn:
            for t in tables:
                cols = {r[1] for r in conn.execute(f'PRAGMA table_info("{t}")')}
                if "entity_key" in cols:
                    n += conn.execute(f'DELETE FROM "{t}" WHERE entity_key = ?', (key,)).rowcount
        return n
    finally:
        conn.close()


def tune_sqlite_writes(store: Any) -> bool:
    """Make pushes to the SQLite online store cheap: the file in WAL mode (a persistent property
    of the file; readers are then never blocked by a push) and Feast's write connection at
    `synchronous=NORMAL` (a commit is not fsynced; the WAL is, at checkpoints). The online store
    is a cache: every value in it can be derived again from the event log and the offline
    sources, which are durable. A push under the default rollback journal cost 3 fsyncs, 25 ms
    on a busy disk. Only in the tested Feast range (it reaches Feast's connection); False otherwise."""
    config = store.config
    if str(config.online_store.type) != "sqlite" or not version_supported():
        return False
    online = store.provider.online_store
    conn = online._get_conn(config)  # the one connection Feast's SQLite store writes with
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
    except sqlite3.DatabaseError as exc:  # locked by another process (or not a database): pushes stay correct, only slower
        log.warning("online store %s: WAL mode not set (%s); pushes fsync as Feast's default does", config.online_store.path, exc)
        return False
    return True


_SCALAR_PROTOS: dict[tuple[str, Any], Any] = {}
_PROTO_FIELDS = {"Int64": "int64_val", "Int32": "int32_val", "Float64": "double_val", "Float32": "float_val",
                 "String": "string_val", "Bool": "bool_val"}
_LIST_FIELDS = {"Array(Int64)": ("int64_list_val", "Int64List"), "Array(String)": ("string_list_val", "StringList"),
                "Array(Float64)": ("double_list_val", "DoubleList")}


def rows_to_protos(view: Any, rows: Sequence[Mapping[str, Any]], join_key: str, event_ts: str) -> Any:
    """`rows` (join key, event time, every feature of `view`) as the (entity key, feature ->
    ValueProto, event time, created time) tuples a provider's public `online_write_batch` takes,
    built straight from Python values (Feast's `ingest_df` goes through pandas and Arrow: about
    5 ms for one row). None when a feature's type is not one of the few handled here (the caller
    then uses `ingest_df`). A test checks the values online equal `FeatureStore.push`'s."""
    from feast.protos.feast.types import Value_pb2
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey

    Value = Value_pb2.Value
    kinds: list[tuple[str, str, Any]] = []
    for f in view.features:
        t = str(f.dtype)
        if t in _PROTO_FIELDS:
            kinds.append((f.name, _PROTO_FIELDS[t], None))
        elif t in _LIST_FIELDS:
            field, cls = _LIST_FIELDS[t]
            kinds.append((f.name, field, getattr(Value_pb2, cls)))
        else:
            return None
    out = []
    empty = Value()
    cache = _SCALAR_PROTOS
    for r in rows:
        key = EntityKey(join_keys=[join_key], entity_values=[Value(int64_val=int(r[join_key]))])
        values: dict[str, Any] = {}
        for name, field, lst in kinds:
            v = r.get(name)
            if v is None:
                values[name] = empty
            elif lst is not None:
                listed = Value()
                getattr(listed, field).val.extend(v)
                values[name] = listed
            else:
                # repeated scalars (0, "") share one proto: Feast only serialises them
                proto: Any = cache.get((field, v))
                if proto is None:
                    proto = Value()
                    setattr(proto, field, v)
                    if len(cache) < _DECODED_MAX:
                        cache[(field, v)] = proto
                values[name] = proto
        ts = r[event_ts]
        out.append((key, values, ts if ts.tzinfo else ts.replace(tzinfo=UTC), None))
    return out
