"""The behavioural events the platform accepts: the declaration (`serving/events.yaml`) and the
validator every entry point shares (`POST /events`, `nba events ingest`, the stream consumer).

`load_event_types` reads the declaration through `nba.config.load_yaml_model`, so a bad entry
fails at load naming the file, the entry and the reason. `validate_events` turns what a caller
sent (one event or a list, JSON-shaped) into stored events, or raises `EventError` naming the
field (`events[3].properties.days_late`), the value and what was expected.

A stored event (the shape of contract 6) is a dict:

    event_id        given, or derived from the other fields (the deduplication key)
    customer_id     int >= 0
    type            a declared type
    timestamp       epoch seconds (float); ISO 8601 in, default now
    properties      name -> value, typed as declared; a `timestamp` property as epoch seconds
    known_customer  filled in by the ingest (whether the feature store knows the customer)

Flattened rows (CSV, Parquet: `customer_id, type, timestamp, event_id`, then one column per
property) become this shape through `from_flat`.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator, model_validator

from nba.config import StrictModel, load_yaml_model
from nba.errors import NbaError

EVENTS_FILE = Path("serving") / "events.yaml"
TOP_LEVEL = ("event_id", "customer_id", "type", "timestamp", "properties")
MAX_EVENTS = 10_000  # events in one call (a file is read in chunks of fewer)
MAX_ID = 128  # characters of a caller's event id
_NAME = r"^[a-z][a-z0-9_]*$"

KINDS = ("string", "int", "float", "bool", "timestamp")


class EventError(NbaError):
    """An event that does not follow the declaration; `field` names where (HTTP 400)."""

    status = 400

    def __init__(self, message: str, *, field: str | None = None):
        super().__init__(message)
        self.field = field


class PropertySpec(StrictModel):
    """One property: a type, or a list of allowed strings (an enum)."""

    type: str | list[str]
    required: bool = True

    @field_validator("type")
    @classmethod
    def _enum(cls, v: Any) -> Any:
        if isinstance(v, str) and v not in KINDS:
            raise ValueError(f"'{v}' is not a property type; expected one of {', '.join(KINDS)}, or a list of "
                             "allowed strings")
        if isinstance(v, list):
            if not v:
                raise ValueError("an enum needs at least one allowed value")
            if len(set(v)) != len(v):
                raise ValueError(f"the enum {v} repeats a value")
        return v

    def expected(self) -> str:
        if isinstance(self.type, list):
            return f"one of {', '.join(self.type)}"
        return {"string": "a string", "int": "an integer", "float": "a number", "bool": "true or false",
                "timestamp": "an ISO 8601 time"}[self.type]


def _shorthand(value: Any) -> Any:
    """`product: [a, b]` and `days_late: int` are short for `{type: ...}`."""
    return {"type": value} if isinstance(value, str | list) else value


class EventType(StrictModel):
    interaction: bool = Field(description="the customer did it themselves (resets the days since the last interaction)")
    properties: dict[str, PropertySpec] = Field(default_factory=dict)

    @field_validator("properties", mode="before")
    @classmethod
    def _short(cls, v: Any) -> Any:
        return {k: _shorthand(p) for k, p in v.items()} if isinstance(v, dict) else v

    @field_validator("properties")
    @classmethod
    def _names(cls, v: dict[str, PropertySpec]) -> dict[str, PropertySpec]:
        for name in v:
            if not re.match(_NAME, name) or name in TOP_LEVEL or name == "known_customer":
                raise ValueError(f"property name '{name}' is not a lower-case identifier, or is a reserved "
                                 f"name ({', '.join(TOP_LEVEL)})")
        return v


class EventsFile(StrictModel):
    version: str = Field(min_length=1)
    max_future_s: float = Field(300.0, ge=0, description="a timestamp further ahead of the clock is refused")
    types: dict[str, EventType] = Field(min_length=1)

    @model_validator(mode="after")
    def _type_names(self) -> EventsFile:
        bad = [t for t in self.types if not re.match(_NAME, t)]
        if bad:
            raise ValueError(f"event type name(s) {bad} are not lower-case identifiers")
        return self

    def enum(self, type_name: str, prop: str) -> tuple[str, ...]:
        """The allowed values of an enum property (page_view's products)."""
        spec = self.types[type_name].properties[prop].type
        return tuple(spec) if isinstance(spec, list) else ()


def events_path(home: Path) -> Path:
    return Path(home) / EVENTS_FILE


def load_event_types(path: Path) -> EventsFile:
    """Read and validate the declaration; errors name the file, the entry and the reason."""
    return load_yaml_model(Path(path), EventsFile, "event declaration")


@cache
def _load_cached(path: str, mtime: float) -> EventsFile:
    return load_event_types(Path(path))


def event_types(home: Path) -> EventsFile:
    """The project's declaration, read once per version of the file."""
    p = events_path(home)
    return _load_cached(str(p), p.stat().st_mtime if p.is_file() else 0.0)


# --- validation --------------------------------------------------------------------------


def _short(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


# the times the platform takes: the years 1970 to 2199 as written (the log's readers hold
# pandas timestamps, which end in 2262); epoch seconds from 0 to the start of 2200
FIRST_YEAR, LAST_YEAR = 1970, 2199
LATEST_S = 7_258_118_400.0


def check_year(ts: datetime, where: str) -> None:
    """A time outside the years the platform takes is refused, naming the field."""
    if not FIRST_YEAR <= ts.year <= LAST_YEAR:
        raise EventError(f"{where} = {ts.isoformat()}: the year {ts.year} is out of range; expected {FIRST_YEAR} "
                         f"to {LAST_YEAR}", field=where)


def parse_time(value: Any, where: str) -> float:
    """Epoch seconds from an ISO 8601 string (a naive time is UTC) or a number of epoch seconds."""
    if isinstance(value, bool):
        raise EventError(f"{where} = {value!r}: expected an ISO 8601 time", field=where)
    if isinstance(value, int | float):
        if not (math.isfinite(value) and 0 <= value < LATEST_S):
            raise EventError(f"{where} = {value!r}: expected an ISO 8601 time, or epoch seconds from 0 to "
                             f"{LATEST_S:.0f} (the year {LAST_YEAR + 1})", field=where)
        return float(value)
    if isinstance(value, datetime):
        check_year(value, where)
        return (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()
    if isinstance(value, str):
        text = value.strip()
        try:
            ts = datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith(("Z", "z")) else text)
        except ValueError:
            raise EventError(f"{where} = {_short(value)}: expected an ISO 8601 time such as "
                             "2025-12-01T09:00:00Z", field=where) from None
        check_year(ts, where)
        return (ts if ts.tzinfo else ts.replace(tzinfo=UTC)).timestamp()
    raise EventError(f"{where} = {_short(value)}: expected an ISO 8601 time", field=where)


def _property(value: Any, spec: PropertySpec, where: str) -> Any:
    kind = spec.type
    ok = True
    if isinstance(kind, list):
        ok = isinstance(value, str) and value in kind
    elif kind == "string":
        ok = isinstance(value, str)
    elif kind == "int":
        if isinstance(value, float) and value.is_integer():  # 3.0 is an integer in JSON (and its schemas)
            value = int(value)
        ok = isinstance(value, int) and not isinstance(value, bool)
        if ok and not -(2**63) <= value < 2**63:  # the stores and the online features hold int64
            raise EventError(f"{where} = {_short(value)}: expected an integer from -2**63 to 2**63 - 1", field=where)
    elif kind == "float":
        ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        value = float(value) if ok else value
    elif kind == "bool":
        ok = isinstance(value, bool)
    elif kind == "timestamp":
        return parse_time(value, where)
    if not ok:
        raise EventError(f"{where} = {_short(value)}: expected {spec.expected()}", field=where)
    return value


def derive_event_id(customer_id: int, type_name: str, timestamp: float, properties: Mapping[str, Any]) -> str:
    """The id of an event sent without one: a hash of what it says, so the same event sent
    twice is recognised as one (32 hex characters)."""
    body = json.dumps([customer_id, type_name, round(timestamp, 3), properties], sort_keys=True,
                      separators=(",", ":"), default=str)
    return hashlib.sha256(body.encode()).hexdigest()[:32]


def validate_event(raw: Any, types: EventsFile, now: float, where: str = "event") -> dict[str, Any]:
    """One event as sent -> a stored event (see the module docstring), or `EventError`."""
    if not isinstance(raw, Mapping):
        raise EventError(f"{where}: expected an object with customer_id, type, timestamp, properties; "
                         f"got {_short(raw)}", field=where)
    unknown = [k for k in raw if k not in TOP_LEVEL]
    if unknown:
        raise EventError(f"{where}.{unknown[0]}: unknown field; an event has {', '.join(TOP_LEVEL)}",
                         field=f"{where}.{unknown[0]}")
    for key in ("customer_id", "type"):
        if key not in raw or raw[key] is None:
            raise EventError(f"{where}.{key}: missing; an event needs customer_id and type", field=f"{where}.{key}")
    cid = raw["customer_id"]
    if isinstance(cid, float) and cid.is_integer():  # 3.0 is an integer in JSON (and its schemas)
        cid = int(cid)
    if isinstance(cid, bool) or not isinstance(cid, int) or not 0 <= cid < 2**63:  # int64, as the stores keep it
        raise EventError(f"{where}.customer_id = {_short(cid)}: expected an integer >= 0 and < 2**63",
                         field=f"{where}.customer_id")
    type_name = raw["type"]
    spec = types.types.get(type_name) if isinstance(type_name, str) else None
    if spec is None:
        raise EventError(f"{where}.type = {_short(type_name)}: unknown event type; expected one of "
                         f"{', '.join(types.types)}", field=f"{where}.type")
    ts_raw = raw.get("timestamp")
    ts = now if ts_raw is None else parse_time(ts_raw, f"{where}.timestamp")
    if ts > now + types.max_future_s:
        raise EventError(f"{where}.timestamp = {_short(ts_raw)}: {ts - now:.0f} s in the future; expected at most "
                         f"{types.max_future_s:g} s ahead of the clock", field=f"{where}.timestamp")
    props_raw = raw.get("properties")
    if props_raw is None:
        props_raw = {}
    if not isinstance(props_raw, Mapping):
        raise EventError(f"{where}.properties = {_short(props_raw)}: expected an object", field=f"{where}.properties")
    extra = [k for k in props_raw if k not in spec.properties]
    if extra:
        raise EventError(f"{where}.properties.{extra[0]}: not a property of '{type_name}'; expected "
                         f"{', '.join(spec.properties) or 'none'}", field=f"{where}.properties.{extra[0]}")
    props: dict[str, Any] = {}
    for name, pspec in spec.properties.items():
        here = f"{where}.properties.{name}"
        if name not in props_raw or props_raw[name] is None:
            if pspec.required:
                raise EventError(f"{here}: missing; '{type_name}' needs it ({pspec.expected()})", field=here)
            continue
        props[name] = _property(props_raw[name], pspec, here)
    eid = raw.get("event_id")
    if eid is None:
        eid = derive_event_id(cid, type_name, ts, props)
    elif not isinstance(eid, str) or not 0 < len(eid) <= MAX_ID:
        raise EventError(f"{where}.event_id = {_short(eid)}: expected a string of 1 to {MAX_ID} characters",
                         field=f"{where}.event_id")
    return {"event_id": eid, "customer_id": cid, "type": type_name, "timestamp": ts, "properties": props,
            "known_customer": True}


def validate_events(payload: Any, types: EventsFile, now: float) -> list[dict[str, Any]]:
    """One event (an object) or a list of them -> stored events, in order. The first bad event
    raises `EventError` naming `events[i].<field>` (a single event: `event.<field>`)."""
    if isinstance(payload, Mapping):
        return [validate_event(payload, types, now)]
    if not isinstance(payload, Sequence) or isinstance(payload, str | bytes):
        raise EventError(f"events: expected an event object or a list of them; got {_short(payload)}",
                         field="events")
    if not payload:
        raise EventError("events: the list is empty; expected 1 to "
                         f"{MAX_EVENTS:,} events", field="events")
    if len(payload) > MAX_EVENTS:
        raise EventError(f"events: {len(payload):,} events in one call; expected at most {MAX_EVENTS:,}",
                         field="events")
    return [validate_event(e, types, now, f"events[{i}]") for i, e in enumerate(payload)]


def from_flat(rows: Iterable[Mapping[str, Any]], types: EventsFile) -> list[dict[str, Any]]:
    """Flattened rows (a CSV or Parquet file: `customer_id, type, timestamp, event_id`, then one
    column per property) -> events as JSON would send them. A property column that is empty for
    a row is left out; a whole number read as a float (a column with gaps) is an integer again
    where the property is one; a time value becomes ISO 8601."""
    out = []
    for row in rows:
        type_name = row.get("type")
        spec = types.types.get(type_name) if isinstance(type_name, str) else None
        event: dict[str, Any] = {}
        props: dict[str, Any] = {}
        for key, value in row.items():
            value = _plain(value)
            if key in ("customer_id", "type", "timestamp", "event_id"):
                if value is not None:
                    event[key] = value
                continue
            if value is None:
                continue
            pspec = spec.properties.get(key) if spec else None
            if pspec is not None and pspec.type == "int" and isinstance(value, float) and value.is_integer():
                value = int(value)
            elif pspec is not None and pspec.type == "string" and isinstance(value, int) and not isinstance(value, bool):
                value = str(value)  # a CSV column of ids that look like numbers
            props[key] = value
        cid = event.get("customer_id")
        if isinstance(cid, float) and cid.is_integer():
            event["customer_id"] = int(cid)
        event["properties"] = props
        out.append(event)
    return out


def _plain(value: Any) -> Any:
    """A pandas / numpy cell as a JSON-like Python value (NaN, NaT, None: missing)."""
    if value is None:
        return None
    if hasattr(value, "isoformat") and hasattr(value, "tzinfo"):  # datetime, pandas Timestamp
        if value != value:  # NaT
            return None
        ts = value if value.tzinfo else value.replace(tzinfo=UTC)
        return ts.isoformat()
    if hasattr(value, "item") and not isinstance(value, str | bytes):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value
