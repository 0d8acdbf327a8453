"""The records the platform writes: each declared once, every store and the batch path derive from it.

A `Record` is a named table: its columns (name, kind, nullability, a short doc) and its key.
From that one declaration come

* the SQLite DDL and insert statements (`nba.stores.sqlite.create_table`, `insert_sql`),
* the Arrow (Parquet) schema of a batch segment (`arrow_schema`),
* the dtypes and time columns of the DataFrames `read_log` returns (`Record.dtypes`,
  `Record.time_columns`),
* the fields the API's response models share with a record (`model_fields`),
* the column builder of the decision records (`nba.decisioning.tables`), which both `/decide`
  and `nba decide-batch` call.

Kinds are abstract (`Kind`): a backend maps them to its own types, so the Postgres store and
the event and outbox records of the always-on loop are added here and derived the same way.
A `JSON` column holds a nested value (model versions, the features of a decision): a row
store keeps it inline, a columnar segment keeps it beside the table (schema metadata, the
`features` table), so it is not part of the tabular columns (`Record.tabular`).

This module imports only the standard library (and `nba.schemas`); pyarrow and pydantic are
imported by the functions that need them.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, NamedTuple

from nba.schemas import ENTITY_KEY


class Kind(StrEnum):
    """What a column holds, independent of any backend."""

    TEXT = "text"
    INT = "int"
    FLOAT = "float"  # NaN is a missing value: stored as NULL where the column is nullable
    TIME = "time"  # a moment: epoch seconds in the row stores and the column builder, UTC timestamps in frames
    JSON = "json"  # a nested value (row stores only; see the module docstring)


TEXT, INT, FLOAT, TIME, JSON = Kind.TEXT, Kind.INT, Kind.FLOAT, Kind.TIME, Kind.JSON

# the pandas dtype of each tabular kind, as `read_log` returns it
PANDAS_DTYPES = {TEXT: "string", INT: "int64", FLOAT: "float64", TIME: "datetime64[ns, UTC]"}


@dataclass(frozen=True)
class Column:
    name: str
    kind: Kind
    nullable: bool = False
    doc: str = ""
    # few distinct values per table (channel, action, stage): dictionary-encoded in columnar storage
    categorical: bool = False


@dataclass(frozen=True)
class Record:
    """A named table: columns in storage order, the key (empty: append-only, no key), a doc."""

    name: str
    columns: tuple[Column, ...]
    key: tuple[str, ...] = ()
    doc: str = ""
    # more columns than declared are allowed (the `features` record: one per feature served)
    open: bool = False
    _by_name: Mapping[str, Column] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        by_name = {c.name: c for c in self.columns}
        if len(by_name) != len(self.columns):
            raise ValueError(f"record '{self.name}': duplicate column names")
        missing = [k for k in self.key if k not in by_name]
        if missing:
            raise ValueError(f"record '{self.name}': key column(s) {missing} are not columns")
        object.__setattr__(self, "_by_name", by_name)

    def __getitem__(self, name: str) -> Column:
        return self._by_name[name]

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    @functools.cached_property
    def names(self) -> tuple[str, ...]:
        """Every column, in storage order."""
        return tuple(c.name for c in self.columns)

    @functools.cached_property
    def tabular(self) -> tuple[Column, ...]:
        """The columns a frame or a Parquet segment holds (all but the JSON ones)."""
        return tuple(c for c in self.columns if c.kind is not JSON)

    @functools.cached_property
    def tabular_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.tabular)

    @functools.cached_property
    def float_names(self) -> frozenset[str]:
        return frozenset(c.name for c in self.columns if c.kind is FLOAT)

    @functools.cached_property
    def tabular_set(self) -> frozenset[str]:
        return frozenset(self.tabular_names)

    @functools.cached_property
    def dtypes(self) -> dict[str, str]:
        """Column -> pandas dtype of the tabular columns (what `read_log` returns)."""
        return {c.name: PANDAS_DTYPES[c.kind] for c in self.tabular}

    @functools.cached_property
    def time_columns(self) -> frozenset[str]:
        return frozenset(c.name for c in self.columns if c.kind is TIME)

    def with_columns(self, *columns: Column) -> Record:
        """This record with more columns (a test, or a record the next issue extends)."""
        return Record(self.name, (*self.columns, *columns), self.key, self.doc, self.open)


# --- the decision log ----------------------------------------------------------------------
# Every decision the platform makes (`/decide`, `nba decide-batch`) is appended to the decision
# log before it is returned; every outcome a channel reports to it. Evaluation (incrementality,
# off-policy value, drift) reads nothing else (`nba.stores.decisions.read_log`).

NO_ACTION = "do_nothing"  # the action_id of a decision that shows nothing
EXPERIMENT_GROUPS = ("holdout", "nba", "explore")
OUTCOME_KINDS = ("accepted", "rejected", "ignored")

DECISION = Record(
    "decisions",
    (
        Column("decision_id", TEXT, doc="32 hex characters, unique"),
        Column(ENTITY_KEY, INT, doc="the customer"),
        Column("channel", TEXT, doc="one of the catalog's channels", categorical=True),
        Column("decided_at", TIME, doc="the moment the decision is for"),
        Column("experiment_group", TEXT, categorical=True,
               doc="holdout: the customer is in the universal hold-out (stable per customer); explore: the shown "
                   "action was drawn uniformly among the eligible ones; nba: the shown action is the "
                   "arbitration's winner (or nothing)"),
        Column("action_id", TEXT, categorical=True, doc=f"the first action shown, or {NO_ACTION}"),
        Column("probability", FLOAT,
               doc="P(the logging policy shows `action_id` | customer, moment): the exact mixture of the "
                   "arbitration and the exploration draw (off-policy evaluation divides by it)"),
        Column("propensity", FLOAT, nullable=True, doc="P of the shown action (missing for do_nothing)"),
        Column("value", FLOAT, nullable=True, doc="V of the shown action"),
        Column("lever", FLOAT, nullable=True, doc="L of the shown action (a boost: 0.5 multiplies by 1.5)"),
        Column("priority", FLOAT, nullable=True, doc="its priority under the catalog's formula"),
        Column("uplift", FLOAT, nullable=True, doc="its predicted uplift (missing without an uplift model)"),
        Column("n_candidates", INT, doc="actions left after rules and contact policies"),
        Column("features_missing", INT, doc="1 if the customer had no online features (defaults used)"),
        Column("catalog_version", TEXT, categorical=True),
        Column("source", TEXT, categorical=True, doc="api | batch"),
        Column("model_versions", JSON, doc="registered model -> version (a segment: its schema metadata)"),
        Column("features", JSON, doc="feature name -> value (a segment: its features table)"),
    ),
    key=("decision_id",),
    doc="One row per decision. `read_log` gives beside it `candidates`, `filtered` and the served features.",
)

CANDIDATE = Record(
    "candidates",
    (
        Column("decision_id", TEXT),
        Column("action_id", TEXT, categorical=True),
        Column("rank", INT, doc="1..k if shown, 0 if not"),
        Column("propensity", FLOAT, nullable=True, doc="P: probability the customer accepts"),
        Column("value", FLOAT, nullable=True, doc="V: what an acceptance is worth"),
        Column("lever", FLOAT, nullable=True, doc="L: business boost; the priority is multiplied by 1 + L"),
        Column("priority", FLOAT, nullable=True),
        Column("uplift", FLOAT, nullable=True),
    ),
    doc="One row per decision and action left after rules and contact policies: what a counterfactual "
        "policy could have chosen (off-policy evaluation). Append-only, read whole: no key to maintain on "
        "the hot path.",
)

FILTERED = Record(
    "filtered",
    (
        Column("decision_id", TEXT),
        Column("action_id", TEXT, categorical=True),
        Column("stage", TEXT, categorical=True,
               doc="inactive | channel | eligibility | applicability | suitability | consent | preference | suppression | "
                   "cooldown | cap | threshold"),
        Column("rule", TEXT, categorical=True),
    ),
    doc="One row per decision and action removed, with the stage and the rule that removed it (a 200-action "
        "catalog writes ~200 per decision: no key).",
)

FEATURES = Record(
    "features",
    (Column("decision_id", TEXT),),
    open=True,
    doc="The feature values a decision was made on (drift monitoring): decision_id, then one column per "
        "feature and score (numbers float64, strings text).",
)

OUTCOME = Record(
    "outcomes",
    (
        Column("decision_id", TEXT),
        Column("action_id", TEXT),
        Column("outcome", TEXT, doc=" | ".join(OUTCOME_KINDS)),
        Column("value", FLOAT, doc="value realised (0 unless accepted)"),
        Column("responded_at", TIME),
    ),
    key=("decision_id", "action_id"),
    doc="One row per (decision, action) outcome a channel reported; a duplicate is ignored.",
)

BATCH_INDEX = Record(
    "batch_index",
    (
        Column("decision_id", TEXT),
        Column(ENTITY_KEY, INT),
        Column("channel", TEXT),
        Column("batch", TEXT, doc="the batch segment holding the decision's full record"),
    ),
    key=("decision_id",),
    doc="Where each decision of a batch run is (row stores only), so outcomes are reported against it.",
)

# what a batch segment of the decision log holds, one Parquet file each
SEGMENT_RECORDS = (DECISION, CANDIDATE, FILTERED, FEATURES)
# every table of the decision log's row store
LOG_RECORDS = (DECISION, CANDIDATE, FILTERED, BATCH_INDEX, OUTCOME)


# --- the outbox (outbound activation) ---------------------------------------------------------
# A decision with an outbound action to send writes one outbox message in the same transaction
# as its decision rows (the decision log's SQLite file); the delivery worker
# (`nba.activation.worker`) sends it through the channel's connector at least once and records
# a receipt per attempt. The idempotency key makes the delivery exactly once for a receiver
# that honours it.

OUTBOX_STATES = ("pending", "delivered", "failed", "dead")

OUTBOX = Record(
    "outbox",
    (
        Column("idempotency_key", TEXT, doc="<decision_id>-<action_id>: the same on every attempt of the message"),
        Column("decision_id", TEXT),
        Column(ENTITY_KEY, INT, doc="the customer"),
        Column("action_id", TEXT, categorical=True, doc="the action to send (never do_nothing)"),
        Column("channel", TEXT, categorical=True, doc="an outbound channel of the catalog"),
        Column("created_at", TIME, doc="the moment of the decision"),
        Column("payload", TEXT, doc="a JSON object: what the channel needs to send the action"),
        Column("state", TEXT, categorical=True,
               doc="pending: not attempted yet | delivered | failed: the last attempt failed (`error`), retried "
                   "at `next_attempt_at` | dead: given up after the connector's max attempts (`error`)"),
        Column("attempts", INT, doc="delivery attempts so far"),
        Column("next_attempt_at", TIME, doc="not before (epoch seconds of the worker's clock; 0: at once)"),
        Column("lease_until", TIME, doc="a worker has claimed it until then (0: unclaimed); a killed worker's "
                                        "claims expire and are delivered again"),
        Column("lease_owner", TEXT, nullable=True, doc="the worker holding the lease"),
        Column("error", TEXT, nullable=True, doc="why the last attempt failed"),
        Column("delivered_at", TIME, nullable=True),
    ),
    key=("idempotency_key",),
    doc="One outbound message per decision that sends an action, with its delivery state.",
)

RECEIPT = Record(
    "receipts",
    (
        Column("idempotency_key", TEXT),
        Column("attempt", INT, doc="1, 2, ..."),
        Column("at", TIME),
        Column("connector", TEXT, categorical=True, doc="webhook | redis_stream | file | nats"),
        Column("outcome", TEXT, categorical=True, doc="delivered | failed | dead"),
        Column("detail", TEXT, doc="the receiver's answer (HTTP status, stream entry id, file line) or the error"),
        Column("worker", TEXT, doc="the delivery worker that made the attempt"),
    ),
    doc="One row per delivery attempt of an outbox message. Append-only, no key: after a lease expired two "
        "workers may both have attempted the same message.",
)

OUTBOX_RECORDS = (OUTBOX, RECEIPT)


# --- contact-policy state --------------------------------------------------------------------

CONTACT = Record(
    "contacts",
    (
        Column(ENTITY_KEY, INT),
        Column("ts", TIME),
        Column("action_id", TEXT),
        Column("grp", TEXT, doc="the action's group"),
        Column("channel", TEXT),
        Column("decision_id", TEXT),
    ),
    key=(ENTITY_KEY, "decision_id", "action_id"),
    doc="One shown action (what frequency caps count); idempotent on (customer, decision, action).",
)

REJECTION = Record(
    "rejections",
    (
        Column(ENTITY_KEY, INT),
        Column("ts", TIME),
        Column("action_id", TEXT),
        Column("decision_id", TEXT),
    ),
    key=(ENTITY_KEY, "decision_id", "action_id"),
    doc="One rejected action (what cool-downs look at).",
)

POLICY_VERSION = Record(
    "policy_versions",
    (
        Column(ENTITY_KEY, INT),
        Column("v", INT, doc="bumped by every contact or rejection recorded for the customer"),
    ),
    key=(ENTITY_KEY,),
    doc="A customer's contact-state version: a decision records its contacts only if the version "
        "it read its history at is still current (check and record atomic across workers and replicas).",
)


# --- trigger state ---------------------------------------------------------------------------

TRIGGER_FIRE = Record(
    "trigger_fires",
    (
        Column("trigger_id", TEXT),
        Column(ENTITY_KEY, INT),
        Column("fired_at", TIME, doc="the moment of the event (or scan) it fired for"),
        Column("event_id", TEXT, nullable=True, doc="the event that fired it (none for a scan)"),
    ),
    key=("trigger_id", ENTITY_KEY),
    doc="The last firing of a trigger for a customer: what its dedup window looks at.",
)

# --- the preference centre and erasure -------------------------------------------------------

PREFERENCE = Record(
    "preferences",
    (
        Column(ENTITY_KEY, INT),
        Column("preferences", JSON, doc="the customer's preferences (`nba.preferences.CustomerPreferences`)"),
        Column("updated_at", TIME),
        Column("updated_by", TEXT, doc="who set them: the customer, an agent, a system"),
    ),
    key=(ENTITY_KEY,),
    doc="The customer's current preferences: consent, frequency limit per channel, quiet hours, topics.",
)

PREFERENCE_AUDIT = Record(
    "preference_audit",
    (
        Column(ENTITY_KEY, INT),
        Column("changed_at", TIME),
        Column("changed_by", TEXT),
        Column("before", JSON, nullable=True, doc="the preferences before the change (null: none were set)"),
        Column("after", JSON, doc="the preferences after it"),
    ),
    doc="Every change of a customer's preferences: who and when, before and after (append-only).",
)

ERASURE = Record(
    "erasures",
    (
        Column(ENTITY_KEY, INT),
        Column("erased_at", TIME),
        Column("erased_by", TEXT),
        Column("receipt", TEXT, doc="the receipt file of the (first) erasure"),
    ),
    key=(ENTITY_KEY,),
    doc="Customers erased (GDPR art. 17): every training frame excludes them. With the receipts, the one place "
        "that keeps the id: the proof that the erasure was done, and what keeps re-published sources out.",
)

# --- the event log ---------------------------------------------------------------------------
# Every behavioural event accepted (`POST /events`, `nba events ingest`, the stream consumer),
# appended durably before the features are pushed (`nba.stores.events`). It is also the offline
# source of the streaming features: their value at any moment is derived from it.

EVENT = Record(
    "events",
    (
        Column("event_id", TEXT, doc="given by the sender, or a hash of the other fields: the deduplication key"),
        Column(ENTITY_KEY, INT, doc="the customer"),
        Column("type", TEXT, categorical=True, doc="a type declared in serving/events.yaml"),
        Column("timestamp", TIME, doc="when it happened"),
        Column("known_customer", INT, doc="1 if the feature store knew the customer when it arrived, else 0 (flagged)"),
        Column("ingested_at", TIME, doc="when it was appended"),
        Column("properties", JSON, doc="property -> value, typed as declared (a timestamp property: epoch seconds)"),
    ),
    key=("event_id",),
    doc="One row per event; a second event with the same id is a duplicate, recognised and not stored again.",
)

# An event whose triggers have not run yet: written in the transaction that appends the event,
# deleted once its triggers have run (their decisions logged). A process killed in between
# leaves the row, and the next delivery of the event (a broker's redelivery, a client's retry,
# a file ingested again) or a consumer's start runs the triggers then: nothing is lost.
TRIGGER_PENDING = Record(
    "trigger_pending",
    (
        Column("event_id", TEXT),
        Column(ENTITY_KEY, INT),
        Column("ingested_at", TIME, doc="when the event was appended"),
    ),
    key=("event_id",),
    doc="Events stored whose triggers have not run yet (the triggers' outbox).",
)


# --- records in memory, column-wise ---------------------------------------------------------------


class Coded(NamedTuple):
    """A text column as codes into its names (dictionary encoding): one small integer per row,
    no string per row until a store asks for them. (A tuple: one request builds a dozen.)"""

    codes: Any  # integer array
    names: Sequence[str]


@functools.cache
def np_ndarray() -> Any:
    """numpy's array type (numpy is imported on first use: `nba --help` reads this module)."""
    import numpy as np

    return np.ndarray


@dataclass(frozen=True)
class Columns:
    """n rows of one record, column-wise: each column a numpy array (a time in epoch seconds) or
    a `Coded`; an open record may hold more columns than it declares. The form the column
    builder (`nba.decisioning.tables`) makes and the stores take."""

    record: Record
    n: int
    values: Mapping[str, Any]
    _lists: dict[str, list[Any]] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        declared = self.record.tabular_set
        keys = self.values.keys()
        if keys == declared or (self.record.open and keys >= declared):
            return
        missing = declared - set(keys)
        extra = set(keys) - declared
        if missing or (extra and not self.record.open):
            raise ValueError(f"record '{self.record.name}': columns {sorted(missing)} missing, "
                             f"{sorted(extra)} not declared")

    def pylist(self, name: str) -> list[Any]:
        """One column as Python values: names for codes, None for NaN (a row store's NULL).
        Made once per column (the response and the store of a request share them)."""
        out = self._lists.get(name)
        if out is None:
            v: Any = self.values[name]
            if isinstance(v, Coded):
                names = v.names
                out = [names[i] for i in v.codes.tolist()]
            else:
                out = v.tolist() if isinstance(v, np_ndarray()) else list(v)
                if name in self.record.float_names:
                    out = [None if x != x else x for x in out]  # NaN -> None
            self._lists[name] = out
        return out

    def rows(self) -> list[tuple[Any, ...]]:
        """The rows in declaration order (every declared column must be present, JSON too)."""
        return list(zip(*(self.pylist(c) for c in self.record.names), strict=True)) if self.n else []


@dataclass(frozen=True)
class DecisionTables:
    """The records of n decisions: one `Columns` per segment record, and the model versions they
    were made with (a JSON column of every decision row in a row store, the segment's metadata)."""

    decisions: Columns
    candidates: Columns
    filtered: Columns
    features: Columns
    model_versions: Mapping[str, str]
    # the outbox messages of the decisions that send an outbound action (`deliver` requests):
    # appended with the decisions, in the same transaction
    outbox: Columns | None = None

    @property
    def n(self) -> int:
        return self.decisions.n


# --- derived representations -------------------------------------------------------------------


def arrow_type(column: Column) -> Any:
    import pyarrow as pa

    if column.kind is TEXT:
        return pa.dictionary(pa.int32(), pa.string()) if column.categorical else pa.string()
    return {INT: pa.int64(), FLOAT: pa.float64(), TIME: pa.timestamp("us", tz="UTC")}[column.kind]


def arrow_schema(record: Record, extra: Iterable[Any] = ()) -> Any:
    """The Arrow (Parquet) schema of the record's tabular columns; `extra` fields follow (an open
    record's own columns). Nullability as declared."""
    import pyarrow as pa

    fields = [pa.field(c.name, arrow_type(c), nullable=c.nullable) for c in record.tabular]
    if not record.open and list(extra):
        raise ValueError(f"record '{record.name}' is closed: no extra columns")
    return pa.schema([*fields, *extra])


def to_arrow(columns: Columns, metadata: Mapping[str, str] | None = None, *, _names: dict | None = None) -> Any:
    """The Arrow table of `columns` under the record's schema: codes become dictionary arrays
    (categorical) or plain strings, times UTC microseconds; an open record's own columns are
    float64 (numbers) or strings."""
    import numpy as np
    import pyarrow as pa

    names_cache: dict[int, Any] = {} if _names is None else _names

    def names_of(v: Coded) -> Any:
        key = id(v.names)
        if key not in names_cache:
            names_cache[key] = (v.names, pa.array(list(v.names), pa.string()))
        return names_cache[key][1]

    arrays: list[Any] = []
    fields: list[Any] = []
    for c in columns.record.tabular:
        v = columns.values[c.name]
        typ = arrow_type(c)
        if isinstance(v, Coded):
            names = names_of(v)
            codes = pa.array(np.asarray(v.codes, dtype=np.int32))
            arr = pa.DictionaryArray.from_arrays(codes, names) if c.categorical else names.take(codes)
        elif c.kind is TIME:
            arr = pa.array(np.asarray(np.asarray(v, dtype=np.float64) * 1e6).astype(np.int64)).cast(typ)
        elif c.kind is TEXT:
            arr = names_of(Coded(None, v)) if isinstance(v, list) else pa.array(list(v), typ)
        else:
            arr = pa.array(np.asarray(v), typ)
        arrays.append(arr)
        fields.append(pa.field(c.name, typ, nullable=c.nullable))
    for name, v in columns.values.items():
        if name in columns.record:
            continue
        a = np.asarray(v)
        arr = pa.array(a.tolist(), pa.string()) if a.dtype == object else pa.array(a)
        arrays.append(arr)
        fields.append(pa.field(name, arr.type))
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields, metadata=metadata))


def segment_tables(tables: DecisionTables, metadata: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The four Arrow tables of a batch segment (the decisions carry the model versions and
    `metadata` as schema metadata)."""
    import json

    cache: dict[int, Any] = {}
    meta = {"nba.model_versions": json.dumps(dict(tables.model_versions), sort_keys=True), **(metadata or {})}
    return {"decisions": to_arrow(tables.decisions, meta, _names=cache),
            "candidates": to_arrow(tables.candidates, _names=cache),
            "filtered": to_arrow(tables.filtered, _names=cache),
            "features": to_arrow(tables.features, _names=cache)}


_PYTHON_TYPES: dict[Kind, type] = {TEXT: str, INT: int, FLOAT: float, TIME: str}


def model_fields(record: Record, names: Sequence[str], *, required: Sequence[str] = ()) -> dict[str, Any]:
    """Pydantic field definitions (for `pydantic.create_model`) of the named columns: the type
    of the column's kind (a time is an ISO 8601 string in a response), `| None` where nullable
    and not `required`, the column's doc as the description."""
    from pydantic import Field

    out: dict[str, Any] = {}
    for name in names:
        c = record[name]
        typ: Any = _PYTHON_TYPES[c.kind]
        if c.nullable and name not in required:
            typ = typ | None
        doc = f"{c.doc} (ISO 8601, UTC)" if c.kind is TIME and c.doc else c.doc
        out[name] = (typ, Field(description=doc) if doc else ...)
    return out
