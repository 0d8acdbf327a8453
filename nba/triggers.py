"""Triggers as data: `serving/triggers.yaml`, validated at load like the catalog.

A trigger starts a decision when something happens (an event of a declared type) or when a
scheduled scan finds a customer in a state (`nba triggers scan`). Each one has

* `id`, `name`;
* `on`: the event types it listens to (`serving/events.yaml`), or `{schedule: hourly | daily}`
  for the scans;
* `when`: a condition in the rule language (`nba.rules`) over the features of the feature
  service, the scores (`churn_risk`, `clv`), the streaming features and the ones derived at
  decision time (`STREAMING_FEATURES`, the always-on loop's contract), the properties of the
  event (`event.kind`) and an action's own `propensity(<action>)` and `value(<action>)`;
* `actions` and / or `issues`: what the decision it starts may propose (neither: any action);
* `channels`: the channels it may use (the engine chooses among them); `outbound: true` (the
  default) means the bank sends, so every channel must be outbound;
* `dedup_days`: it fires at most once per customer in this window;
* `priority`: among the triggers that fire for one event, the highest starts the decision
  (one decision per customer per event).

A trigger never bypasses rules, consent or contact policies: it starts a decision and the core
still decides (it may well decide to do nothing).

Everything that can be wrong fails at load, naming the file, the trigger and the reason: an
unknown event type, feature, score, action, issue, channel or event property, an inbound
channel for an outbound trigger, an action none of its channels offers, a duplicate id or
priority.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from nba.catalog import Catalog, Issue, _hint
from nba.config import StrictModel, load_yaml_model
from nba.errors import ConfigError
from nba.rules import ACTION_FUNCS, EVENT, Expression, ExpressionError, parse

TRIGGERS_FILE = Path("serving") / "triggers.yaml"
EVENTS_FILE = Path("serving") / "events.yaml"

# The streaming features (contract 2 of the always-on loop): pushed by the event ingest into
# the online store; and the ones the engine derives from them at the decision's own moment.
# Conditions may read them before the feature service serves them: they read as missing
# (NaN, "") until it does, so a condition on them is false.
STREAMING_NUMBERS = ("page_views_7d", "card_searches_7d", "logins_7d", "application_open", "last_interaction_s",
                     "geofence_at_s", "days_late", "outages_30d", "last_life_event_s", "card_expires_at_s",
                     "service_contacts_30d", "complaints_30d")
STREAMING_STRINGS = ("application_product", "geofence_branch", "last_life_event")
DERIVED_FEATURES = ("days_since_interaction", "application_open_hours", "days_since_life_event",
                    "days_to_card_expiry", "hours_since_geofence")
SCHEDULES = ("hourly", "daily")


class Schedule(StrictModel):
    schedule: Literal["hourly", "daily"]


class TriggerSpec(StrictModel):
    id: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    name: str = ""
    on: list[str] | Schedule
    when: str
    actions: list[str] = Field(default_factory=list)
    issues: list[Issue] = Field(default_factory=list)
    channels: list[str] = Field(min_length=1)
    outbound: bool = True
    dedup_days: float = Field(gt=0)
    priority: int

    @model_validator(mode="before")
    @classmethod
    def _on_key(cls, data: Any) -> Any:
        """YAML 1.1 reads a bare `on:` key as the boolean true: it is the `on` field."""
        if isinstance(data, dict) and True in data and "on" not in data:
            data = {("on" if k is True else k): v for k, v in data.items()}
        return data


class TriggersFile(StrictModel):
    version: str = Field(min_length=1)
    triggers: list[TriggerSpec] = Field(min_length=1)


class EventType(StrictModel):
    interaction: bool = False
    properties: dict[str, object] = Field(default_factory=dict)


class EventsFile(StrictModel):
    version: str
    max_future_s: float = 300
    types: dict[str, EventType]


def event_properties(events: EventsFile) -> dict[str, dict[str, str]]:
    """Event type -> property -> "number" or "string" (an enum and a string are strings)."""
    out: dict[str, dict[str, str]] = {}
    for t, spec in events.types.items():
        props = {}
        for p, decl in spec.properties.items():
            kind = decl.get("type") if isinstance(decl, dict) else decl
            props[p] = "string" if isinstance(kind, list) or kind == "string" else "number"
        out[t] = props
    return out


@dataclass(frozen=True)
class CompiledTrigger:
    index: int  # position in the file (priority order is `TriggerSet.triggers`)
    id: str
    name: str
    on: frozenset[str]  # event types; empty for a schedule
    schedule: str | None
    when: Expression
    propose: tuple[bool, ...]  # (A,) the actions it may propose
    channels: tuple[bool, ...]  # (C,) the channels it may use
    outbound: bool
    dedup_s: float
    priority: int
    event_names: Mapping[str, str]  # "event.<p>" -> "number" | "string"
    propensity_of: tuple[int, ...]  # actions whose propensity(...) it reads
    value_of: tuple[int, ...]


@dataclass(frozen=True, eq=False)
class TriggerSet:
    version: str
    triggers: tuple[CompiledTrigger, ...]  # highest priority first
    event_types: frozenset[str]  # every declared event type

    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(t.id for t in self.triggers)

    def by_id(self, trigger_id: str) -> CompiledTrigger:
        for t in self.triggers:
            if t.id == trigger_id:
                return t
        raise KeyError(trigger_id)

    @property
    def scheduled(self) -> tuple[CompiledTrigger, ...]:
        return tuple(t for t in self.triggers if t.schedule)

    def listening(self, event_type: str) -> tuple[CompiledTrigger, ...]:
        return tuple(t for t in self.triggers if event_type in t.on)


def rule_names(catalog: Catalog) -> frozenset[str]:
    """Features, scores, streaming and derived features: what a condition may read besides
    the event's properties and the actions' own P and V."""
    return catalog.rule_names | frozenset(STREAMING_NUMBERS + STREAMING_STRINGS + DERIVED_FEATURES)


def compile_triggers(spec: TriggersFile, catalog: Catalog, events: EventsFile, *, digest: str = "",
                     where: str = "triggers") -> TriggerSet:
    props = event_properties(events)
    names = rule_names(catalog)
    actions = {a.id: a for a in catalog.actions}
    channels = catalog.channel_names
    seen: dict[str, int] = {}
    priorities: dict[int, str] = {}
    compiled = []
    for i, t in enumerate(spec.triggers):
        here = f"{where}: trigger '{t.id}'"
        if t.id in seen:
            raise ConfigError(f"{here} (position {i + 1}): duplicate id; it is already trigger {seen[t.id] + 1}")
        seen[t.id] = i
        if t.priority in priorities:
            raise ConfigError(f"{here}: priority {t.priority} is already trigger '{priorities[t.priority]}''s; "
                              "priorities decide which trigger starts the decision and must differ")
        priorities[t.priority] = t.id
        if isinstance(t.on, Schedule):
            on: frozenset[str] = frozenset()
            schedule: str | None = t.on.schedule
            readable: dict[str, str] = {}
        else:
            if not t.on:
                raise ConfigError(f"{here}: 'on' lists no event type; expected event types or {{schedule: daily}}")
            bad = [e for e in t.on if e not in props]
            if bad:
                raise ConfigError(f"{here}: unknown event type(s) {bad}{_hint(bad[0], props)}; "
                                  f"{EVENTS_FILE} declares {sorted(props)}")
            on, schedule = frozenset(t.on), None
            readable = {}
            for e in t.on:  # a property of any of its event types (missing on the others)
                readable.update({f"{EVENT}.{p}": kind for p, kind in props[e].items()})
        bad = [a for a in t.actions if a not in actions]
        if bad:
            raise ConfigError(f"{here}: unknown action(s) {bad}{_hint(bad[0], actions)}; the catalog has "
                              f"{sorted(actions)}")
        bad = [c for c in t.channels if c not in channels]
        if bad:
            raise ConfigError(f"{here}: unknown channel(s) {bad}{_hint(bad[0], channels)}; policies define "
                              f"{list(channels)}")
        if t.outbound:
            inbound = [c for c in t.channels if catalog.channel(c).direction != "outbound"]
            if inbound:
                raise ConfigError(f"{here}: channel(s) {inbound} are inbound; an outbound trigger sends, so its "
                                  "channels must be outbound (or set outbound: false)")
        propose = tuple((not t.actions and not t.issues) or a.id in t.actions or a.issue in t.issues
                        for a in catalog.actions)
        if not any(propose):
            raise ConfigError(f"{here}: no action of the catalog has issue(s) {t.issues}")
        offered = [a.id for a, p in zip(catalog.actions, propose, strict=True) if p and a.channels & set(t.channels)]
        if not offered:
            raise ConfigError(f"{here}: none of its actions is offered on its channels {t.channels}")
        unoffered = [a for a in t.actions if not actions[a].channels & set(t.channels)]
        if unoffered:
            raise ConfigError(f"{here}: action(s) {unoffered} are offered on none of its channels {t.channels}")
        when = _condition(t.when, names, readable, actions, f"{here} when")
        p_of = tuple(actions[n[len("propensity("):-1]].index for n in sorted(when.names) if n.startswith("propensity("))
        v_of = tuple(actions[n[len("value("):-1]].index for n in sorted(when.names) if n.startswith("value("))
        compiled.append(CompiledTrigger(
            index=i, id=t.id, name=t.name or t.id, on=on, schedule=schedule, when=when, propose=propose,
            channels=tuple(c in t.channels for c in channels), outbound=t.outbound,
            dedup_s=float(t.dedup_days) * 86400.0, priority=t.priority,
            event_names={n: k for n, k in readable.items() if n in when.names}, propensity_of=p_of, value_of=v_of))
    ordered = tuple(sorted(compiled, key=lambda c: -c.priority))
    return TriggerSet(version=f"{spec.version}+{digest[:8]}" if digest else spec.version, triggers=ordered,
                      event_types=frozenset(props))


def _condition(text: str, names: frozenset[str], readable: Mapping[str, str], actions: Collection[str],
               where: str) -> Expression:
    expr = parse(text, kind="rule", where=where)
    known = names | frozenset(readable) | {f"{f}({a})" for f in ACTION_FUNCS for a in actions}
    unknown = sorted(expr.names - known)
    if not unknown:
        return expr
    u = unknown[0]
    if u.startswith(f"{EVENT}."):
        reason = (f"reads the event property '{u[len(EVENT) + 1:]}', which none of its event types declares"
                  + (f" (they declare {sorted(p[len(EVENT) + 1:] for p in readable)})" if readable else
                     " (a scheduled trigger has no event)"))
    elif "(" in u:
        fn, _, rest = u.partition("(")
        reason = f"reads {u}: '{rest[:-1]}' is not an action of the catalog{_hint(rest[:-1], actions)}"
    else:
        reason = (f"reads unknown name(s) {unknown}{_hint(u, names)}; conditions read features, scores, "
                  "event.<property>, propensity(<action>) and value(<action>)")
    raise ExpressionError(f"{where}: '{expr.text}' {reason}")


def read_events(home: Path, path: Path | None = None) -> EventsFile:
    return load_yaml_model(Path(path) if path else home / EVENTS_FILE, EventsFile, "event declaration")


def load_triggers(home: Path, catalog: Catalog, *, path: Path | None = None, events: Path | None = None
                  ) -> TriggerSet:
    """Read, validate and compile `serving/triggers.yaml` against the catalog and the events."""
    t_path = Path(path) if path else home / TRIGGERS_FILE
    spec = load_yaml_model(t_path, TriggersFile, "trigger file")
    ev = read_events(home, events)
    digest = hashlib.sha256(t_path.read_bytes()).hexdigest()
    return compile_triggers(spec, catalog, ev, digest=digest, where=str(t_path))
