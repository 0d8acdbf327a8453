"""Trigger evaluation: which trigger, if any, starts a decision for each customer. Pure.

For n customers (one event's customer, or a million in a scheduled scan: the same code) and
the compiled triggers (`nba.triggers`, highest priority first):

1. a trigger applies to a row when it listens to the row's event type (event mode) or has a
   schedule (scan mode);
2. its condition is evaluated over the environment: features, scores, streaming and derived
   features (`derived_features`), the event's properties (`event.<p>`, missing where the
   event lacks one) and, for the actions it reads, `propensity(<a>)` from the scorer and
   `value(<a>)` from the catalog's value formula;
3. a trigger that fired for the customer within its dedup window (`last_fired`) is held back;
4. of the rest, the highest-priority one starts the decision (one per customer per event).

The decision it starts goes through the whole core (rules, consent, contact policies,
arbitration, the experiment layer) on the trigger's actions and channels: a trigger never
bypasses any of them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from nba.catalog import Catalog
from nba.decisioning.core import Scorer, _static, _values
from nba.triggers import STREAMING_STRINGS, CompiledTrigger

NONE = -1  # no trigger starts a decision
DAY = 86400.0


@dataclass(frozen=True)
class TriggerHits:
    """For n customers and T triggers (priority order)."""

    applies: np.ndarray  # (n, T) bool: the trigger listens to this event (or runs in this scan)
    fired: np.ndarray  # (n, T) bool: applies and its condition holds
    deduped: np.ndarray  # (n, T) bool: fired, but it already fired within its dedup window
    chosen: np.ndarray  # (n,) index of the trigger that starts the decision, or NONE


def derived_features(env: Mapping[str, Any], now: np.ndarray | float) -> dict[str, Any]:
    """The features derived from the streaming ones at the decision's own moment (contract 2),
    for those the environment lacks: times of 0 (never) give a missing value."""
    out: dict[str, Any] = {}

    def since(name: str, scale: float) -> Any:
        t = env.get(name)
        if t is None:
            return None
        t = np.asarray(t, dtype=np.float64)
        with np.errstate(invalid="ignore"):
            v = np.where(t > 0, (np.asarray(now, dtype=np.float64) - t) / scale, np.nan)
        return float(v) if v.ndim == 0 else v

    for name, source, scale, sign in (("days_since_interaction", "last_interaction_s", DAY, 1),
                                      ("days_since_life_event", "last_life_event_s", DAY, 1),
                                      ("hours_since_geofence", "geofence_at_s", 3600.0, 1),
                                      ("days_to_card_expiry", "card_expires_at_s", DAY, -1)):
        if name not in env:
            v = since(source, scale)
            if v is not None:
                out[name] = -v if sign < 0 else v
    return out


def _filled(env: Mapping[str, Any], names: set[str], n: int, strings: Mapping[str, str]) -> dict[str, Any]:
    """The environment with every name a condition reads: a missing one is NaN (a number) or
    None (a string), so a condition on it is false."""
    out = dict(env)
    for name in names:
        if name not in out:
            is_str = strings.get(name) == "string" or name in STREAMING_STRINGS
            out[name] = (None if is_str else np.nan) if n == 1 else np.full(
                n, None if is_str else np.nan, dtype=object if is_str else np.float64)
    return out


def evaluate(catalog: Catalog, triggers: Sequence[CompiledTrigger], env: Mapping[str, Any], n: int, *,
             scorer: Scorer, now: np.ndarray | float, last_fired: np.ndarray | None = None,
             event_type: np.ndarray | Sequence[str] | None = None) -> TriggerHits:
    """Which trigger starts a decision for each of n customers.

    `env` maps names to arrays of n values (scalars when n == 1), event properties as
    `event.<p>`; `event_type` is each row's event type (None: a scheduled scan);
    `last_fired` ((n, T) epoch seconds, NaN: never) the last firing of each trigger for the
    customer."""
    T = len(triggers)
    now_a = np.broadcast_to(np.asarray(now, dtype=np.float64).reshape(-1), (n,))
    applies = np.zeros((n, T), dtype=bool)
    if event_type is None:
        applies[:] = [t.schedule is not None for t in triggers]
    else:
        et = np.asarray(event_type, dtype=object).reshape(n)
        for j, t in enumerate(triggers):
            for e in t.on:
                applies[:, j] |= et == e
    fired = np.zeros((n, T), dtype=bool)
    work = dict(env)
    work.update(derived_features(env, now_a[0] if n == 1 else now_a))
    rows = np.arange(n)
    st = _static(catalog)
    for j, t in enumerate(triggers):
        if not applies[:, j].any():
            continue
        for a in t.propensity_of:
            key = f"propensity({catalog.actions[a].id})"
            if key not in work:
                p = np.asarray(scorer.propensity(work, n, rows, np.full(n, a)), dtype=np.float64)
                work[key] = float(p[0]) if n == 1 else p
        for a in t.value_of:
            key = f"value({catalog.actions[a].id})"
            if key not in work:
                v = _values(catalog, st, work, n, rows, np.full(n, a, dtype=np.int64))
                work[key] = float(v[0]) if n == 1 else v
        ok = t.when.evaluate(_filled(work, t.when.names, n, t.event_names))
        fired[:, j] = applies[:, j] & np.broadcast_to(np.asarray(ok, dtype=bool), (n,))
    deduped = np.zeros((n, T), dtype=bool)
    if last_fired is not None and fired.any():
        window = np.array([t.dedup_s for t in triggers])
        with np.errstate(invalid="ignore"):
            deduped = fired & ((now_a[:, None] - np.asarray(last_fired, dtype=np.float64)) < window[None, :])
    go = fired & ~deduped
    chosen = np.where(go.any(axis=1), np.argmax(go, axis=1), NONE)
    return TriggerHits(applies=applies, fired=fired, deduped=deduped, chosen=chosen)


def why(triggers: Sequence[CompiledTrigger], hits: TriggerHits, i: int) -> list[dict[str, Any]]:
    """Per trigger that applied to row i: whether it fired, was held back, or started the decision."""
    out = []
    for j, t in enumerate(triggers):
        if not hits.applies[i, j]:
            continue
        state = ("started the decision" if hits.chosen[i] == j else
                 "held back: fired within its dedup window" if hits.deduped[i, j] else
                 "fired; a trigger of higher priority started the decision" if hits.fired[i, j] else
                 "condition false")
        out.append({"trigger_id": t.id, "priority": t.priority, "condition": t.when.text,
                    "fired": bool(hits.fired[i, j]), "state": state})
    return out
