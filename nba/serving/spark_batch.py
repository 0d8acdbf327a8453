"""Outbound batch decisions on Spark: `nba decide-batch --engine spark`.

The same chunk function as the embedded batch (`nba.serving.batch.decide_chunk`: features ->
the engine's core -> the log's tables) runs in each partition through `mapInPandas`; each
Python worker loads the bundle's engine once and keeps it between tasks. Per partition:

    customers (Parquet / CSV, read by Spark) -> decide_chunk per Arrow batch
       -> the ranked rows (the job's output, written by Spark as a folder of Parquet parts)
       -> the log segment's records and the contacts, as Parquet parts in a staging folder

Then the driver publishes the segment (`nba.stores.decisions.segments.publish_parts`, the same
files the embedded batch writes), indexes its decisions in the decision log through the log
store's `index_batch` (SQLite or Postgres, whichever the engine opened), so `/respond` accepts
their outcomes like any batch decision's, and records the contacts in the contact-policy
store. A run that fails before the index leaves no segment and no contact.

Decision ids are the run's prefix and the customer's row number in the input (a Spark job
counts each partition's rows first), exactly as the embedded batch numbers them: given the same
prefix, both engines decide the same file into the same decisions.

Workers read the feature store, the contact-policy and preference stores and the bundle from
the paths of the settings: on one machine (local[N]) that is the work folder; on a cluster it
must be storage every node sees (and Redis / Postgres for the stores).
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nba import schemas
from nba.errors import DataFileError
from nba.serving.batch import BatchSummary, new_batch_id, run_prefix, summarise
from nba.settings import Settings

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

# The ranked output's columns (`nba.serving.batch._ranked`), as Spark declares them.
RANKED_SCHEMA = ("customer_id long, decision_id string, rank long, action_id string, propensity double, "
                 "value double, lever double, priority double, experiment_group string, probability double")
CONTACTS = "contacts"  # the staging folder's contacts (customer, action, group, channel, time, decision)
CONTACT_COLUMNS = ("customer_id", "action_id", "group", "channel", "ts", "decision_id")

# The engine of each Python worker, by work folder and bundle (loaded on its first task).
_ENGINES: dict[tuple[str, str], Any] = {}


def read_customers(spark: SparkSession, path: Path) -> DataFrame:
    """The customers file as a Spark frame, checked as the embedded batch checks it: a
    `customer_id` column of integers without missing values, and at least one row."""
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    path = Path(path)
    if not path.exists():
        raise DataFileError(f"customers file {path} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        frame = spark.read.csv(str(path), header=True, inferSchema=True)
    elif suffix in (".parquet", ".pq") or path.is_dir():
        frame = spark.read.parquet(str(path))
    else:
        raise DataFileError(f"customers file {path}: expected a .parquet or .csv file (or a folder of Parquet parts)")
    if schemas.ENTITY_KEY not in frame.columns:
        raise DataFileError(f"customers file {path}: no column '{schemas.ENTITY_KEY}' (columns: {frame.columns[:20]})")
    kind = frame.schema[schemas.ENTITY_KEY].dataType
    if not isinstance(kind, T.IntegralType):
        raise DataFileError(f"customers file {path}: column '{schemas.ENTITY_KEY}' must hold integer ids "
                            f"(got {kind.simpleString()})")
    row = frame.agg(F.count(F.lit(1)).alias("n"),
                    F.sum(F.col(schemas.ENTITY_KEY).isNull().cast("long")).alias("missing")).first()
    assert row is not None  # an aggregate always has one row
    if row["missing"]:
        raise DataFileError(f"customers file {path}: column '{schemas.ENTITY_KEY}' has {row['missing']} "
                            "missing value(s)")
    if not row["n"]:
        raise DataFileError(f"customers file {path} has no rows")
    return frame.withColumn(schemas.ENTITY_KEY, F.col(schemas.ENTITY_KEY).cast("long"))


def decide_batch_spark(settings: Settings, customers: Path, channel: str, out: Path, *, k: int | None = None,
                       timestamp: float | None = None, source: str = "batch", decision_prefix: str | None = None,
                       engine: Any = None, spark: SparkSession | None = None) -> BatchSummary:
    """`nba.serving.batch.decide_batch` on Spark (see the module docstring). `out` is a folder
    of Parquet parts (Spark's layout; pandas and pyarrow read it as one table)."""
    from pyspark.sql import functions as F

    from nba import spark as nba_spark
    from nba.serving.bundle import load_engine
    from nba.serving.engine import DecisionRequest
    from nba.stores.decisions import BATCH_DIR
    from nba.stores.decisions.segments import part_files, publish_parts
    from nba.stores.erasures import erased_ids

    t0 = time.perf_counter()
    spark = spark or nba_spark.session(settings)
    frame = read_customers(spark, customers)  # a bad file fails before the models load
    gone = erased_ids(settings)
    erased = 0
    if gone:  # no decision for an erased customer (the erasure list), as in the embedded engine
        is_gone = F.col(schemas.ENTITY_KEY).isin(sorted(gone))
        erased = frame.filter(is_gone).count()
        frame = frame.filter(~is_gone)
    engine = engine or load_engine(settings, nthread=1)
    engine.check(DecisionRequest(0, channel, {}, timestamp, k))
    prefix = run_prefix(decision_prefix)
    stored = list(engine.features.stored_names)
    from_file = all(c in frame.columns for c in stored)
    now = float(timestamp if timestamp is not None else time.time())
    k = k or engine.catalog.default_k
    ci = engine.catalog.channel_names.index(channel)
    batch_id = new_batch_id(now, channel)
    staging = (settings.decision_log_dir / BATCH_DIR / f".{batch_id}.parts").resolve()
    frame = frame.select(schemas.ENTITY_KEY, *(stored if from_file else []))
    # each partition's first row number: the rows of the partitions before it
    sizes = {int(r["p"]): int(r["n"]) for r in
             frame.groupBy(F.spark_partition_id().alias("p")).agg(F.count(F.lit(1)).alias("n")).collect()}
    bases, total = {}, 0
    for p in sorted(sizes):
        bases[p], total = total, total + sizes[p]
    task = _PartitionTask(settings=settings, bundle=str(engine.bundle), stored=stored, from_file=from_file, now=now,
                          channel_index=ci, k=k, source=source, prefix=prefix, bases=bases, staging=str(staging))
    t_loaded = time.perf_counter()
    try:
        frame.mapInPandas(task, schema=RANKED_SCHEMA).write.mode("overwrite").parquet(str(out))
        segment = publish_parts(settings.decision_log_dir, batch_id, staging)
        import pyarrow.parquet as pq

        dec = pq.read_table(segment / "decisions.parquet",
                            columns=["decision_id", "customer_id", "action_id", "experiment_group", "features_missing"])
        engine.log.index_batch(batch_id, dec.column("decision_id").to_pylist(), dec.column("customer_id").to_pylist(),
                               channel)
        for f in part_files(staging, CONTACTS):
            engine.policy.record_contacts(list(zip(*pq.read_table(f).to_pydict().values(), strict=True)))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return summarise(dec, customers=total, out=Path(out), batch_id=batch_id, seconds=time.perf_counter() - t_loaded,
                     load_seconds=t_loaded - t0, erased=erased,
                     feature_source=("the file" if from_file else f"the online store ({engine.catalog.feature_service})")
                     + f" on Spark ({settings.spark_master}, {len(sizes)} partitions)")


class _PartitionTask:
    """The function `mapInPandas` runs in a worker: each Arrow batch of its partition through
    `decide_chunk`, the log's tables and the contacts to the staging folder, the ranked rows
    out. Plain values only, so it pickles small."""

    def __init__(self, *, settings: Settings, bundle: str, stored: list[str], from_file: bool, now: float,
                 channel_index: int, k: int, source: str, prefix: str, bases: dict[int, int], staging: str):
        self.settings = settings
        self.bundle = bundle
        self.stored = stored
        self.from_file = from_file
        self.now = now
        self.channel_index = channel_index
        self.k = k
        self.source = source
        self.prefix = prefix
        self.bases = bases
        self.staging = staging

    def __call__(self, batches: Any) -> Any:
        import pyarrow as pa
        from pyspark import TaskContext

        from nba import console
        from nba.serving.batch import decide_chunk, row_decision_ids
        from nba.stores.decisions.segments import part_path, write_part

        console.quiet_libraries()
        ctx = TaskContext.get()
        partition = ctx.partitionId() if ctx is not None else 0
        engine = _engine(self.settings, self.bundle)
        row = self.bases.get(partition, 0)
        staging = Path(self.staging)
        for seq, part in enumerate(batches):
            if part.empty:
                continue
            res = decide_chunk(engine, part.reset_index(drop=True), stored=self.stored, from_file=self.from_file,
                               now=self.now, channel_index=self.channel_index, k=self.k, source=self.source,
                               deliver=False, decision_ids=row_decision_ids(self.prefix, row, len(part)))
            row += len(part)
            for name, table in res.segments.items():
                write_part(table, part_path(staging, name, partition, seq))
            columns: list[Any] = (list(zip(*res.contacts, strict=True)) if res.contacts
                                  else [[] for _ in CONTACT_COLUMNS])
            write_part(pa.table({c: pa.array(v, type=t) for c, v, t in zip(
                CONTACT_COLUMNS, columns, (pa.int64(), pa.string(), pa.string(), pa.string(), pa.float64(),
                                           pa.string()), strict=True)}),
                part_path(staging, CONTACTS, partition, seq))
            ranked = res.ranked
            for col in ("action_id", "experiment_group"):
                ranked[col] = ranked[col].astype(str)
            yield ranked


def _engine(settings: Settings, bundle: str) -> Any:
    """This worker's engine over the settings' bundle (loaded once, kept between tasks)."""
    key = (str(settings.work), bundle)
    if key not in _ENGINES:
        from nba.serving.bundle import load_engine

        _ENGINES[key] = load_engine(settings, nthread=1)
    return _ENGINES[key]
