"""The customer 360 a call-centre agent reads, and the preference centre's writes.

`customer_view(engine, id)` gathers, for one customer: the profile, segments (RFM), scores
(churn risk, CLV), consents (the features, and the preference centre's word where it
overrides them), preferences with their audit, holdings, recent events (where an event log is
wired: `engine.event_log`), the last decisions with their reasons and outcomes, and the next
best actions per channel as a preview (`DecisionEngine.decide(..., preview=True)`: nothing is
logged and no contact counted until a channel asks `/decide` and shows it).

A customer is unknown when neither the online store nor the decision log holds them: 404
naming the id.
"""

from __future__ import annotations

import json
import math
import re
import time
from typing import Any

from nba import schemas
from nba.serving.engine import DecisionEngine, DecisionRequest, RequestError, Unavailable, iso

HOLDINGS = ("has_credit_card", "has_mortgage", "has_savings", "has_personal_loan", "num_products")
SECTIONS = {"customer_profile": "profile", "customer_rfm": "segments", "customer_engagement": "engagement",
            "customer_risk": "risk", "customer_consent": "consents"}

_STAGE_WORDS = {
    "inactive": "not on offer now", "channel": "not offered on this channel", "eligibility": "not eligible",
    "applicability": "does not apply now", "suitability": "not suitable for the customer",
    "consent": "no consent", "preference": "the customer's preference", "suppression": "suppressed",
    "cooldown": "recently rejected", "cap": "contact limit reached", "threshold": "not worth a contact now",
}


def in_words(stage: str, rule: str) -> str:
    """A filtered action's reason as a sentence an agent can read out."""
    lead = _STAGE_WORDS.get(stage, stage)
    if stage in ("eligibility", "applicability", "suitability", "consent") and "preference centre" not in rule:
        return f"{lead}: requires {rule}"
    return f"{lead}: {rule}"


def action_in_words(a: dict[str, Any], n_candidates: int | None = None) -> str:
    """A ranked action's reason in words: how likely, what it is worth, the boost, its rank."""
    p, v, lev, pri = a["propensity"], a["value"], a["lever"], a["priority"]
    boost = f", boosted x{1 + lev:g} by the business" if lev else ""
    of = f" of {n_candidates} candidates" if n_candidates else ""
    lead = a["reason"].split(":")[0] + ": " if a["reason"].startswith(("exploration", "hold-out")) else ""
    return (f"{lead}{p:.0%} likely to accept, worth {v:,.2f} EUR if accepted{boost}: priority {pri:.2f}, "
            f"rank {a['rank']}{of}")


def _plain(v: Any) -> Any:
    if hasattr(v, "item"):
        v = v.item()
    return None if isinstance(v, float) and math.isnan(v) else v


def _known(engine: DecisionEngine, cid: int, found: bool) -> bool:
    """In the online store (fresh or not: a read as of time 0 finds any stored row) or the log."""
    if found or engine.features.read([cid], [0])[1][0]:
        return True
    has = getattr(engine.log, "has_customer", None)
    return bool(has(cid)) if has is not None else False


def customer_view(engine: DecisionEngine, customer_id: int, *, now: float | None = None, decisions: int = 10,
                  k: int = 3) -> dict[str, Any]:
    """The customer 360 (see the module docstring)."""
    from nba.errors import NbaError

    cid = int(customer_id)
    ts = float(now) if now is not None else time.time()
    try:
        cols, found = engine.features.read([cid], [int(ts)])
    except NbaError as exc:
        raise Unavailable(str(exc)) from None
    if not _known(engine, cid, found[0]):
        raise RequestError(f"customer {cid} is unknown: not in the online store ({engine.catalog.feature_service}) "
                           "and not in the decision log", field="customer_id", status=404)
    values = {name: _plain(v[0]) for name, v in cols.items() if name != schemas.ENTITY_KEY}
    reader = engine.features
    sections: dict[str, dict[str, Any]] = {s: {} for s in SECTIONS.values()}
    for v in reader.views:
        section = SECTIONS.get(v.view.name, "other")
        for f in v.features:
            if f in HOLDINGS:
                continue
            sections.setdefault(section, {})[f] = values.get(f)
    holdings = {f: values.get(f) for f in HOLDINGS if f in values}
    scores: dict[str, Any] = {}
    if found[0]:
        env = engine._env(cols, 1, ())
        scores = {name: float(val[0]) for name, val in engine.models.score(env, 1).items()}
    prefs = engine.customer_preferences([cid])[0]
    stored = engine.preferences.get([cid]).get(cid)
    consents = {}
    for c in engine.catalog.channel_names:
        feature = sections["consents"].get(f"consent_{c}")
        given = prefs.consent.get(c) if prefs is not None else None
        consents[c] = {"feature": feature, "preference_centre": given,
                       "effective": bool(given) if given is not None else (feature == 1)}
    previews = engine.decide([DecisionRequest(cid, c, {}, ts, k) for c in engine.catalog.channel_names],
                             preview=True)
    nba_by_channel = {}
    for c, d in zip(engine.catalog.channel_names, previews, strict=True):
        m = re.search(r"of (\d+) (?:candidates|eligible)", d["actions"][0]["reason"]) if d["actions"] else None
        n_cand = int(m.group(1)) if m else None
        nba_by_channel[c] = {
            "preview": True, "experiment_group": d["experiment_group"], "features_missing": d["features_missing"],
            "direction": engine.catalog.channels[engine.catalog.channel_names.index(c)].direction,
            "actions": [{**a, "reason_in_words": action_in_words(a, n_cand)} for a in d["actions"]],
            "filtered": [{**f, "reason_in_words": in_words(f["stage"], f["rule"])} for f in d["filtered"]],
        }
    last = []
    reader_fn = getattr(engine.log, "customer_decisions", None)
    for row in (reader_fn(cid, decisions) if reader_fn is not None else []):
        shown = row["action_id"]
        reason = None
        if row["propensity"] is not None:
            reason = (f"{row['propensity']:.0%} likely to accept, worth {row['value']:,.2f} EUR, boost "
                      f"{row['lever']:g}: priority {row['priority']:.2f} ({row['experiment_group']} group)")
        last.append({"decision_id": row["decision_id"], "decided_at": iso(row["decided_at"]), "channel": row["channel"],
                     "action_id": shown, "experiment_group": row["experiment_group"], "source": row["source"],
                     "reason_in_words": reason or "nothing shown (no action above the do-nothing threshold, or hold-out)",
                     "outcomes": [{**o, "responded_at": iso(o["responded_at"])} for o in row["outcomes"]],
                     "filtered": [{**f, "reason_in_words": in_words(f["stage"], f["rule"])} for f in row["filtered"]]})
    events: list[dict[str, Any]] | None = None
    if getattr(engine, "_events", None) is not None:  # the engine takes events: its event log
        history = engine.events.log.history([cid]).get(cid, [])
        events = [{"type": e.type, "timestamp": iso(e.timestamp), "properties": dict(e.properties)}
                  for e in sorted(history, key=lambda e: e.timestamp, reverse=True)[:20]]
    return {
        "customer_id": cid, "as_of": iso(ts), "features_missing": not found[0],
        "profile": sections["profile"], "segments": sections["segments"], "engagement": sections["engagement"],
        "risk": sections["risk"], "holdings": holdings, "scores": scores, "consents": consents,
        "preferences": None if stored is None else {**prefs.to_json(), "updated_at": iso(stored.updated_at),  # type: ignore[union-attr]
                                                    "updated_by": stored.updated_by},
        "preference_audit": [{**a, "changed_at": iso(a["changed_at"])} for a in engine.preferences.audit(cid)],
        "recent_events": events if events is not None else [],
        "events_note": None if events is not None else "no event log is wired into this service",
        "last_decisions": last,
        "next_best_actions": nba_by_channel,
        "preview_note": "next_best_actions are previews: not logged, not counted as contacts; a channel that shows "
                        "one asks /decide (logged, counted) and reports the outcome to /respond",
    }


def put_preferences(engine: DecisionEngine, customer_id: int, payload: Any, *, by: str) -> dict[str, Any]:
    """Validate and store a customer's preferences (honoured from the next decision on)."""
    from nba.errors import NbaError
    from nba.preferences import PreferenceError, parse

    cid = int(customer_id)
    try:
        prefs = parse(payload, engine.catalog)
    except PreferenceError as exc:
        raise RequestError(str(exc), field=exc.field) from None
    try:
        known = _known(engine, cid, False)
    except NbaError as exc:
        raise Unavailable(str(exc)) from None
    if not known:
        raise RequestError(f"customer {cid} is unknown: not in the online store and not in the decision log",
                           field="customer_id", status=404)
    at = time.time()
    previous = engine.preferences.put(cid, prefs.dumps(), by, at)
    return {"customer_id": cid, "preferences": prefs.to_json(), "updated_at": iso(at), "updated_by": by,
            "previous": None if previous is None else json.loads(previous.preferences)}
