"""Triggers in the engine: events start decisions, scans find customers in a state.

    stored events -> online features + scores (one read for the events of a call) -> event
    properties -> nba.decisioning.triggers.evaluate (conditions, dedup windows, priority)
    -> claim the firing (atomic, in the trigger store) -> one decision per firing through the
    whole core, on the trigger's actions and channels (the engine chooses the channel),
    `source` `trigger:<id>`, `deliver` for an outbound trigger -> the decision log

`Triggering.on_events` is what `POST /events` calls after the events are stored and pushed
(`DecisionEngine.on_events` delegates here). A trigger never bypasses rules, consent or
contact policies: the decision it starts may be "do nothing", and it still counts as fired
(its dedup window starts: a customer is not re-evaluated on every click).
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Collection, Mapping, Sequence
from typing import Any

import numpy as np

from nba.catalog import Catalog
from nba.decisioning.triggers import NONE, TriggerHits, evaluate, why
from nba.stores.decisions import AlreadyLogged
from nba.stores.trigger_state import Fire, TriggerStore
from nba.triggers import CompiledTrigger, TriggerSet

logger = logging.getLogger(__name__)


def trigger_request_fields(catalog: Catalog, t: CompiledTrigger) -> dict[str, Any]:
    """What a decision started by trigger `t` may use: its channels and actions."""
    return {"channels": tuple(c.name for c, ok in zip(catalog.channels, t.channels, strict=True) if ok),
            "actions": tuple(a.id for a, ok in zip(catalog.actions, t.propose, strict=True) if ok),
            "deliver": t.outbound, "trigger_id": t.id}


def subset(env: Mapping[str, Any], rows: np.ndarray, n: int) -> dict[str, Any]:
    """The environment of some rows (scalars for one row, as the engine builds it)."""
    if n == 1:
        return dict(env)
    one = rows.size == 1
    out = {}
    for k, v in env.items():
        if isinstance(v, np.ndarray) and v.ndim == 1 and v.size == n:
            out[k] = v[rows[0]].item() if one and v.dtype != object else (v[rows[0]] if one else v[rows])
        else:
            out[k] = v
    return out


class Triggering:
    """The triggers of one engine and their state."""

    def __init__(self, engine: Any, triggers: TriggerSet, store: TriggerStore):
        self.engine = engine
        self.triggers = triggers
        self.store = store

    def on_events(self, events: Sequence[Mapping[str, Any]], again: Collection[str] = ()) -> list[dict[str, Any]]:
        """Evaluate the triggers for each stored event's customer (`event_id, customer_id, type,
        timestamp` (epoch seconds), `properties`): what fired, with the decision it started.

        `again`: the ids of events whose triggers may have run before (stored, then the process
        was killed before it marked them triggered). For them it is idempotent: their own last
        firing does not hold a trigger back, the claim of the same event is granted again, and
        the decision (its id derived from the trigger and the event) is not made twice when the
        log already holds it."""
        from nba.serving.engine import BEST, DecisionRequest, Unavailable

        t0 = time.perf_counter()
        evs = [e for e in events if self.triggers.listening(str(e["type"]))]
        if not evs:
            return []
        eng = self.engine
        cat: Catalog = eng.catalog
        trig = self.triggers.triggers
        n = len(evs)
        ids = [int(e["customer_id"]) for e in evs]
        now = np.array([float(e["timestamp"]) for e in evs], dtype=np.float64)
        try:
            cols, found = eng.features.read(ids, [int(t) for t in now])
        except Exception as exc:
            raise Unavailable(str(exc)) from None
        env, missing = eng.environment(ids, cols, found)
        for t in trig:  # the event's properties, missing where its type has none of that name
            for name, kind in t.event_names.items():
                if name in env:
                    continue
                p = name.split(".", 1)[1]
                values = [e.get("properties", {}).get(p) for e in evs]
                if kind == "number":
                    nums = [np.nan if v is None else float(v) for v in values]
                    env[name] = nums[0] if n == 1 else np.asarray(nums, dtype=np.float64)
                else:
                    env[name] = values[0] if n == 1 else np.asarray(values, dtype=object)
        again = {e for e in again if e is not None}
        rerun = np.array([e.get("event_id") in again for e in evs], dtype=bool)
        try:
            last = self.store.last_fired(ids, [t.id for t in trig])
            if rerun.any():  # a firing for the same event is the one being run again, not an earlier one
                by = self.store.fired_by(ids, [t.id for t in trig])
                own = (by == np.array([e.get("event_id") for e in evs], dtype=object)[:, None]) & rerun[:, None]
                last = np.where(own, np.nan, last)
        except Exception as exc:
            raise Unavailable(str(exc)) from None
        hits = evaluate(cat, trig, env, n, scorer=eng.models, now=now if n > 1 else float(now[0]),
                        last_fired=last, event_type=[e["type"] for e in evs])
        rows = np.flatnonzero(hits.chosen != NONE)
        claimed = self.store.claim([Fire(trig[hits.chosen[i]].id, ids[i], float(now[i]), evs[i].get("event_id"),
                                         trig[hits.chosen[i]].dedup_s) for i in rows])
        started = {int(i): None for i, ok in zip(rows, claimed, strict=True) if ok}
        dids = {i: trigger_decision_id(trig[hits.chosen[i]].id, evs[i].get("event_id")) for i in started}
        logged: set[str] = set()
        if rerun.any():
            redo = [d for i, d in dids.items() if rerun[i] and d is not None]
            logged = {r[0] for r in eng.log.select(redo, ("decision_id",))} if redo else set()
        decisions: dict[int, dict[str, Any]] = {}
        for j in sorted({int(hits.chosen[i]) for i in started}):
            t = trig[j]
            fields = trigger_request_fields(cat, t)
            for attempt in range(2):
                sel = np.array([i for i in started if hits.chosen[i] == j and dids[i] not in logged], dtype=np.int64)
                if not sel.size:
                    break
                reqs = [DecisionRequest(ids[i], BEST, timestamp=float(now[i]), event_id=evs[i].get("event_id"),
                                        **fields) for i in sel]
                sub_cols = {k: [v[i] for i in sel] for k, v in cols.items()}
                sub_env = subset(env, sel, n)
                sub_missing = [int(k) for k, i in enumerate(sel) if i in set(missing)]
                given = [dids[i] for i in sel]
                derived = all(d is not None for d in given)
                try:
                    out = eng.decide_read(reqs, now[sel], sub_cols, [found[i] for i in sel], source=f"trigger:{t.id}",
                                          prepared=(sub_env, sub_missing), decision_ids=given if derived else None)
                except AlreadyLogged:
                    # another process ran the same events' triggers at the same moment and logged
                    # first (nothing of this append was written, its contacts were given back):
                    # its decisions stand, the others are decided once more
                    if not derived or attempt:
                        raise
                    logged |= {r[0] for r in eng.log.select(given, ("decision_id",))}
                    continue
                decisions.update({int(i): d for i, d in zip(sel, out, strict=True)})
                break
        before = {i: dids[i] for i in started if dids[i] in logged}
        result = _fired(evs, ids, trig, hits, decisions, started, before)
        logger.debug("%d events, %d decisions started in %.1f ms", n, len(decisions), (time.perf_counter() - t0) * 1e3)
        return result


def trigger_decision_id(trigger_id: str, event_id: str | None) -> str | None:
    """The id of the decision a trigger starts for an event (32 hex characters): derived, so
    the event's triggers run again after a restart find the decision they made (None for a
    firing without an event)."""
    if event_id is None:
        return None
    return hashlib.sha256(f"trigger:{trigger_id}:{event_id}".encode()).hexdigest()[:32]


def _fired(evs: Sequence[Mapping[str, Any]], ids: Sequence[int], trig: Sequence[CompiledTrigger], hits: TriggerHits,
           decisions: Mapping[int, dict[str, Any]], started: Mapping[int, Any],
           before: Mapping[int, str | None] | None = None) -> list[dict[str, Any]]:
    """One entry per event for which some trigger fired: the one that started the decision
    (with it; `before`: those whose decision was made before a restart, named but not made
    again) or why none did (held back by a dedup window)."""
    before = before or {}
    out = []
    for i, e in enumerate(evs):
        if not hits.fired[i].any():
            continue
        chosen = int(hits.chosen[i])
        states = [w for w in why(trig, hits, i) if w["fired"]]
        if chosen != NONE and i not in started:  # the store refused the claim: it fired moments ago
            for w in states:
                if w["trigger_id"] == trig[chosen].id:
                    w["state"] = "held back: fired within its dedup window (for an event just before)"
        if i in before:
            for w in states:
                if w["trigger_id"] == trig[chosen].id:
                    w["state"] = ("decided before a restart, or by another process at the same moment (found in the "
                                  "decision log): not decided again")
        out.append({"event_id": e.get("event_id"), "customer_id": ids[i], "type": e["type"],
                    "trigger_id": trig[chosen].id if chosen != NONE and i in started else None,
                    "decision_id": decisions[i]["decision_id"] if i in decisions else before.get(i),
                    "decision": decisions.get(i), "triggers": states})
    return out


def tally(entries: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per trigger, what `on_events` answered (for a file, a stream or a replayed day): `fired`
    (its condition held on an event), `held_back` (by its dedup window), `decisions` started,
    `with_action` (of them, those that show an action: the rest decided to do nothing) and
    `messages` (outbox messages written, per channel)."""
    out: dict[str, dict[str, Any]] = {}

    def row(tid: str) -> dict[str, Any]:
        return out.setdefault(tid, {"fired": 0, "held_back": 0, "decisions": 0, "with_action": 0, "messages": {}})

    for e in entries:
        for w in e["triggers"]:
            r = row(w["trigger_id"])
            r["fired"] += 1
            r["held_back"] += int(str(w["state"]).startswith("held back"))
        d = e.get("decision")
        if e["trigger_id"] is None or d is None:
            continue
        r = row(e["trigger_id"])
        r["decisions"] += 1
        r["with_action"] += int(bool(d["actions"]))
        sent = d.get("outbox")
        if sent:
            r["messages"][sent["channel"]] = r["messages"].get(sent["channel"], 0) + 1
    for r in out.values():
        r["messages"] = dict(sorted(r["messages"].items()))
    return dict(sorted(out.items()))
