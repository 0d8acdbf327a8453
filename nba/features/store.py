"""The Feast feature store: staging the repository, apply, materialise, offline and online reads.

The declarations live in the project's `features/` folder. `stage_repo` copies them with the
active profile's `feature_store.yaml` into `<work>/feature_repo/`, so every work folder (a
user's `var/`, a test's temporary directory) is a complete Feast repository whose offline
sources, registry and online store sit in its own `data/` folder. Feast resolves the relative
source paths of the declarations against that folder.

Every function takes `Settings` and returns plain values; the CLI wraps them.
"""

from __future__ import annotations

import logging
import shutil
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nba import console, schemas
from nba.errors import FeatureStoreError
from nba.features.sources import write_source
from nba.io import atomic_path, read_table, write_text
from nba.settings import Settings

if TYPE_CHECKING:
    import pandas as pd
    from feast import FeatureStore

logger = logging.getLogger(__name__)

# Offline source file (under data/) -> the table contract it must satisfy.
SOURCE_TABLES: dict[str, schemas.TableSchema] = {t.name: t for t in schemas.SIM_FEATURE_TABLES}
PROFILE_YAML = {"local": "feature_store.yaml", "production": "feature_store.production.yaml",
                "spark": "feature_store.spark.yaml"}


@dataclass(frozen=True)
class ApplySummary:
    repo: Path
    entities: list[str]
    feature_views: list[str]
    on_demand_feature_views: list[str]
    feature_services: list[str]
    sources: dict[str, int]  # source table -> rows


@dataclass(frozen=True)
class MaterializeSummary:
    repo: Path
    start: datetime
    end: datetime
    feature_views: list[str]
    online_store: str


def stage_repo(settings: Settings) -> Path:
    """Copy the declarations and the profile's yaml into the work folder's Feast repository."""
    src = settings.feature_repo_src
    if not (src / "definitions.py").is_file():
        raise FeatureStoreError(f"feature repository {src} has no definitions.py (setting NBA_FEATURE_REPO)")
    yaml_name = PROFILE_YAML[settings.profile]
    yaml_src = src / yaml_name
    if not yaml_src.is_file():
        raise FeatureStoreError(f"feature repository {src} has no {yaml_name} for profile '{settings.profile}'")
    repo = settings.feast_repo
    (repo / "data").mkdir(parents=True, exist_ok=True)
    for f in sorted(src.glob("*.py")):
        with atomic_path(repo / f.name) as tmp:
            shutil.copyfile(f, tmp)
    ignore = src / ".feastignore"
    if ignore.is_file():
        with atomic_path(repo / ".feastignore") as tmp:
            shutil.copyfile(ignore, tmp)
    write_text(_render_yaml(yaml_src.read_text(), settings), repo / "feature_store.yaml")
    return repo


def _render_yaml(text: str, settings: Settings) -> str:
    """Fill the production yaml's placeholders from the settings (the local one has none)."""
    redis = settings.redis_url.removeprefix("redis://")
    host_port, _, db = redis.partition("/")
    redis_conn = host_port + (f",db={db}" if db else "")
    pg = settings.postgres_dsn
    if pg.startswith("postgresql://"):
        pg = "postgresql+psycopg://" + pg.removeprefix("postgresql://")
    return text.replace("${REDIS_CONNECTION_STRING}", redis_conn).replace("${POSTGRES_SQLALCHEMY_URL}", pg)


def publish_sources(source_dir: Path, settings: Settings) -> dict[str, int]:
    """Copy the feature tables (profile, rfm, engagement, risk, consent) into the repository.

    Each table is validated against its contract first, so a bad file fails here, naming
    the file and the column, not inside Feast.
    """
    import pyarrow.parquet as pq

    source_dir = Path(source_dir)
    missing = [f"{n}.parquet" for n in SOURCE_TABLES if not (source_dir / f"{n}.parquet").is_file()]
    if missing:
        raise FeatureStoreError(
            f"feature tables {missing} not found in {source_dir}: run `nba data simulate` "
            "first or pass --sources with a folder holding them"
        )
    rows: dict[str, int] = {}
    target = settings.feast_repo / "data"
    target.mkdir(parents=True, exist_ok=True)
    for name, schema in SOURCE_TABLES.items():
        path = source_dir / f"{name}.parquet"
        pf = pq.ParquetFile(path)
        head = pf.read_row_group(0).slice(0, 1).to_pandas() if pf.metadata.num_row_groups else None
        if head is not None:
            schemas.validate_frame(head, schema, source=str(path))
        rows[name] = write_source(pq.read_table(path), target / f"{name}.parquet")
    return rows


def publish_realtime_source(settings: Settings) -> int:
    """The streaming view's offline source, derived from the event log (empty without one)."""
    from nba.features.streaming import REALTIME_SOURCE, export_source

    log = settings.event_log_path if settings.event_log_path.is_file() else None
    types = None
    if log is not None:
        from nba.events import event_types

        types = event_types(settings.home)
    return export_source(log, types, settings.feast_repo / "data" / REALTIME_SOURCE)


def get_store(settings: Settings) -> FeatureStore:
    """Open the staged repository (an error if `apply` has not staged it)."""
    repo = settings.feast_repo
    if not (repo / "feature_store.yaml").is_file():
        raise FeatureStoreError(f"no feature repository at {repo}: run `nba features apply` first")
    from feast import FeatureStore

    return FeatureStore(repo_path=str(repo))


def apply(settings: Settings, sources: Path | None = None) -> ApplySummary:
    """Stage the repository, publish the offline sources, and register every object."""
    repo = stage_repo(settings)
    source_rows = publish_sources(sources if sources is not None else settings.sim_dir, settings)
    if settings.data_dir is not None:
        from nba.features.real import publish_real_sources

        source_rows.update(publish_real_sources(settings))
    source_rows["realtime"] = publish_realtime_source(settings)
    store = get_store(settings)
    objects = collect_objects(repo)
    store.apply([o for group in objects.values() for o in group])
    return ApplySummary(
        repo=repo,
        entities=sorted(e.name for e in objects["entities"]),
        feature_views=sorted(v.name for v in objects["feature_views"]),
        on_demand_feature_views=sorted(v.name for v in objects["on_demand_feature_views"]),
        feature_services=sorted(s.name for s in objects["feature_services"]),
        sources=source_rows,
    )


def collect_objects(repo: Path) -> dict[str, list[Any]]:
    """Import each declaration file of `repo` by path and collect its Feast objects.

    Feast's own `parse_repo` imports files relative to the working directory and caches them
    in `sys.modules` under their bare name, so a second repository in the same process would
    get the first one's objects. Loading by path under a private name avoids both, and the
    on-demand view's function is then serialised by value (it is not importable by name).
    """
    import importlib.util

    from feast import Entity, FeatureService, FeatureView, OnDemandFeatureView
    from feast.data_source import DataSource  # the base class of every source (not re-exported by `feast`)

    kinds: dict[str, type] = {
        "entities": Entity,
        "data_sources": DataSource,
        "feature_views": FeatureView,
        "on_demand_feature_views": OnDemandFeatureView,
        "feature_services": FeatureService,
    }
    found: dict[str, list[Any]] = {k: [] for k in kinds}
    for i, path in enumerate(sorted(repo.glob("*.py"))):
        spec = importlib.util.spec_from_file_location(f"_nba_feature_repo_{i}_{path.stem}", path)
        if spec is None or spec.loader is None:
            raise FeatureStoreError(f"cannot import feature declarations from {path}")
        module = importlib.util.module_from_spec(spec)
        try:
            spec.loader.exec_module(module)
        except Exception as exc:  # a user's declaration file: report where it broke
            raise FeatureStoreError(f"{path}: {type(exc).__name__}: {exc}") from exc
        for value in vars(module).values():
            for kind, cls in kinds.items():
                if isinstance(value, cls) and not any(value is o for o in found[kind]):
                    found[kind].append(value)
    for view in found["feature_views"]:
        if view.batch_source is not None and not any(view.batch_source is s for s in found["data_sources"]):
            found["data_sources"].append(view.batch_source)
    for source in found["data_sources"]:
        # Relative paths are relative to the repository: make them absolute at registration,
        # since not every offline store resolves them (the duckdb store reads them from cwd).
        options = getattr(source, "file_options", None)
        if options is not None and options.uri and not Path(options.uri).is_absolute() and "://" not in options.uri:
            options.uri = str((repo / options.uri).resolve())
        spark = getattr(source, "spark_options", None)  # a SparkSource (the spark profile): Spark reads from cwd
        if spark is not None and spark.path and not Path(spark.path).is_absolute() and "://" not in spark.path:
            spark.path = str((repo / spark.path).resolve())
    if not found["feature_views"]:
        raise FeatureStoreError(f"feature repository {repo} declares no feature view")
    return found


def materialize(settings: Settings, start: datetime | None = None, end: datetime | None = None) -> MaterializeSummary:
    """Load the latest values of every feature view into the online store.

    `end` defaults to the newest snapshot in the offline sources (not the wall clock, so a
    simulated year in the past materialises too); `start` to `end` minus the longest TTL.
    """
    store = get_store(settings)
    views = store.list_feature_views()
    if not views:
        raise FeatureStoreError("the registry has no feature views: run `nba features apply` first")
    if end is None:
        end = _newest_source_timestamp(settings) + timedelta(seconds=1)
    if start is None:
        ttl = max((v.ttl for v in views if v.ttl), default=timedelta(days=62))
        start = end - ttl
    start, end = _utc(start), _utc(end)
    if start >= end:
        raise FeatureStoreError(f"materialize: start {start.isoformat()} is not before end {end.isoformat()}")
    _offline_session(settings, store)
    with console.library_prints(logger):  # Feast's coloured banner: the summary says the same
        store.materialize(start_date=start, end_date=end)
    online = store.config.online_store.type
    return MaterializeSummary(settings.feast_repo, start, end, sorted(v.name for v in views), str(online))


def _newest_source_timestamp(settings: Settings) -> datetime:
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    newest: datetime | None = None
    for name in SOURCE_TABLES:
        path = settings.feast_repo / "data" / f"{name}.parquet"
        if not path.is_file():
            raise FeatureStoreError(f"offline source {path} is missing: run `nba features apply`")
        col = pq.read_table(path, columns=[schemas.EVENT_TS]).column(0)
        value = pc.max(col).as_py()
        if value is not None and (newest is None or value > newest):
            newest = value
    if newest is None:
        raise FeatureStoreError(f"the offline sources in {settings.feast_repo / 'data'} are empty")
    return _utc(newest)


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def feature_service_names(store: FeatureStore) -> list[str]:
    return sorted(s.name for s in store.list_feature_services())


def feature_service(store: FeatureStore, name: str):
    names = feature_service_names(store)
    if name not in names:
        raise FeatureStoreError(f"unknown feature service '{name}'; registered services: {', '.join(names)}")
    return store.get_feature_service(name)


# Resolved feature services per open store. Resolving a service from the registry costs
# ~100 ms (protobuf decoding with type checks); the read itself ~3 ms.
_SERVICES: weakref.WeakKeyDictionary[Any, dict[str, Any]] = weakref.WeakKeyDictionary()


def _cached_service(store: FeatureStore, name: str):
    per_store = _SERVICES.setdefault(store, {})
    if name not in per_store:
        per_store[name] = feature_service(store, name)
    return per_store[name]


def _needs_request_ts(service) -> bool:
    return any(p.name == "request_context" for p in service.feature_view_projections)


def read_entities(path: Path, keys: Sequence[str] = (schemas.ENTITY_KEY,)) -> pd.DataFrame:
    """Read an entity frame (CSV or Parquet) with the join key(s) and `event_timestamp` columns."""
    frame = read_table(path, "entity file", FeatureStoreError)
    return validate_entities(frame, keys=keys, source=str(path))


def validate_entities(
    frame: pd.DataFrame, *, keys: Sequence[str] = (schemas.ENTITY_KEY,), source: str = "entity frame"
) -> pd.DataFrame:
    """Check and normalise an entity frame: integer ids, UTC timestamps, no missing values."""
    import pandas as pd

    for col in (*keys, schemas.EVENT_TS):
        if col not in frame.columns:
            raise FeatureStoreError(
                f"{source}: missing column '{col}'; an entity frame needs columns "
                f"{[*keys, schemas.EVENT_TS]} (got {list(frame.columns)})"
            )
    frame = frame.copy()
    for key in keys:
        try:
            frame[key] = frame[key].astype("int64")
        except (TypeError, ValueError) as exc:
            raise FeatureStoreError(f"{source}: column '{key}' must hold integer ids ({exc})") from None
    try:
        frame[schemas.EVENT_TS] = pd.to_datetime(frame[schemas.EVENT_TS], utc=True)
    except (TypeError, ValueError) as exc:
        raise FeatureStoreError(f"{source}: column '{schemas.EVENT_TS}' must hold timestamps ({exc})") from None
    if frame[schemas.EVENT_TS].isna().any():
        bad = int(frame[schemas.EVENT_TS].isna().sum())
        raise FeatureStoreError(f"{source}: column '{schemas.EVENT_TS}' has {bad} missing value(s)")
    return frame


def epoch_seconds(ts: pd.Series) -> pd.Series:
    """Whole seconds since the epoch, whatever the resolution of the timestamps."""
    import pandas as pd

    return ((ts - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)).astype("int64")


def service_join_keys(settings: Settings, service: str, store: FeatureStore | None = None) -> list[str]:
    """The entity join keys of a feature service's views (e.g. ['customer_id'])."""
    store = store or get_store(settings)
    fs = feature_service(store, service)
    keys: list[str] = []
    view_names = {v.name for v in store.list_feature_views()}
    for proj in fs.feature_view_projections:
        if proj.name in view_names:
            for col in store.get_feature_view(proj.name).entity_columns:
                if col.name not in keys:
                    keys.append(col.name)
    return keys


def training_frame(settings: Settings, service: str, entities: pd.DataFrame) -> pd.DataFrame:
    """A point-in-time correct frame: for each entity row, the latest feature values stamped
    at or before its `event_timestamp` (and within the view's TTL), via `get_historical_features`.

    Extra columns of `entities` (labels, treatment) are carried through unchanged."""
    store = get_store(settings)
    fs = feature_service(store, service)
    keys = service_join_keys(settings, service, store)
    entities = validate_entities(entities, keys=keys)
    if _needs_request_ts(fs) and schemas.REQUEST_TS not in entities.columns:
        # In training the decision happened at the entity timestamp.
        entities[schemas.REQUEST_TS] = epoch_seconds(entities[schemas.EVENT_TS])
    spark = _offline_session(settings, store)
    job = store.get_historical_features(entity_df=entities, features=fs)
    frame = job.to_df()
    if spark:
        frame = _like_embedded(frame)
    return frame.sort_values([schemas.EVENT_TS, *keys], kind="stable").reset_index(drop=True)


def _offline_session(settings: Settings, store: FeatureStore) -> bool:
    """Under the Spark offline store, start the process's session (`nba.spark`: Java checked,
    loopback, quiet) before Feast would start one of its own; True if it is Spark."""
    if getattr(store.config.offline_store, "type", None) != "spark":
        return False
    from nba import spark

    spark.session(settings)
    return True


def _like_embedded(frame: pd.DataFrame) -> pd.DataFrame:
    """A Spark frame in the embedded store's terms: timestamps UTC-aware microseconds (Spark
    hands back naive nanoseconds of the session time zone, which `nba.spark` sets to UTC); every
    other column already comes as DuckDB's does (tests/test_spark.py compares the dtypes too)."""
    import pandas as pd

    frame = frame.copy()
    for col in frame.columns:
        s = frame[col]
        if pd.api.types.is_datetime64_any_dtype(s):
            s = s.dt.tz_localize("UTC") if s.dt.tz is None else s.dt.tz_convert("UTC")
            frame[col] = s.dt.as_unit("us")  # DuckDB's resolution, whatever the entity frame's
    return frame


def online_features(
    settings: Settings,
    service: str,
    customer_ids: Sequence[int],
    request_ts: int | None = None,
    store: FeatureStore | None = None,
) -> dict[str, list[Any]]:
    """Online feature values for customers, as column lists (no DataFrame on the hot path)."""
    store = store or get_store(settings)
    fs = _cached_service(store, service)
    rows: list[dict[str, Any]] = [{schemas.ENTITY_KEY: int(c)} for c in customer_ids]
    if _needs_request_ts(fs):
        ts = int(request_ts if request_ts is not None else datetime.now(UTC).timestamp())
        for r in rows:
            r[schemas.REQUEST_TS] = ts
    return store.get_online_features(features=fs, entity_rows=rows).to_dict()
