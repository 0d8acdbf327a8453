"""The decision records of a core call, column-wise: what goes in each column of the decision log.

`decision_tables` is the one definition of the `decisions`, `candidates`, `filtered` and
`features` rows (`nba.records`); `/decide` calls it for the requests of a call, `nba
decide-batch` for a chunk of a million customers, and the stores turn its columns into rows
(SQLite) or Arrow tables (a batch segment). `contacts` gives the shown actions the contact
policies count; `outbox` the outbound messages of the decisions asked to deliver (written with
the decision rows, in one transaction). Pure: numpy in, arrays out.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import numpy as np

from nba.catalog import Catalog
from nba.decisioning.core import GROUPS, Decisions, reason_table
from nba.records import (
    CANDIDATE,
    DECISION,
    FEATURES,
    FILTERED,
    NO_ACTION,
    OUTBOX,
    Coded,
    Columns,
    DecisionTables,
)


@functools.cache
def _names(catalog: Catalog) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    """Action codes (A = do nothing), and the stage and rule of each reason code."""
    table = reason_table(catalog)
    return ((*catalog.action_ids, NO_ACTION), tuple(r.stage for r in table), tuple(r.rule for r in table))


@functools.cache
def _contact_names(catalog: Catalog) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Action ids, action groups and channel names by code, as object arrays."""
    return (np.array(catalog.action_ids, dtype=object), np.array([a.group for a in catalog.actions], dtype=object),
            np.array(catalog.channel_names, dtype=object))


def _shown(d: Decisions, k: int | np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(row, rank - 1, action) of every shown action: the first k of each decision's ranking."""
    per_row = isinstance(k, np.ndarray) and k.ndim == 1
    kk = min(int(k.max()) if per_row else int(k), d.ranked.shape[1])  # type: ignore[union-attr, arg-type]
    sub = d.ranked[:, :kk]
    ok = sub >= 0
    if per_row:
        ok &= np.arange(kk) < k[:, None]  # type: ignore[index]
    r, c = ok.nonzero()
    return r, c, sub[r, c]


def ranks(d: Decisions, k: int | np.ndarray) -> np.ndarray:
    """(n, A) rank of each action in its decision: 1..k if shown, 0 if not (k per row or one)."""
    rank = np.zeros(d.alive.shape, dtype=np.int64)
    r, c, a = _shown(d, k)
    rank[r, a] = c + 1
    return rank


def decision_tables(catalog: Catalog, d: Decisions, *, decision_ids: list[str], customer_ids: np.ndarray,
                    channel: np.ndarray, now: float | np.ndarray, features_missing: np.ndarray, k: int | np.ndarray,
                    source: str, env: Mapping[str, Any], model_versions: Mapping[str, str],
                    deliver: bool | np.ndarray = False) -> DecisionTables:
    """The log records of the n decisions `d`: `channel` holds codes into the catalog's channels,
    `now` epoch seconds, `k` how many actions each decision shows, `env` the features and scores
    the core saw (scalars when n = 1, arrays otherwise). `deliver` (one flag, or one per
    decision): the decisions whose shown action is to be sent on their (outbound) channel get an
    outbox message (`outbox`)."""
    n = d.n
    A = len(catalog.actions)
    actions, stages, rules = _names(catalog)
    zeros = np.zeros(n, dtype=np.int32)
    top = d.ranked[:, 0]
    none = top < 0  # nothing ranked: the shown action's numbers are missing
    any_none = bool(none.any())
    rows = np.arange(n)
    ti = np.maximum(top, 0)

    def at_top(m: np.ndarray) -> np.ndarray:
        v = m[rows, ti] if m.ndim == 2 else m[ti]
        if any_none:
            v[none] = np.nan
        return v

    decisions = Columns(DECISION, n, {
        "decision_id": decision_ids, "customer_id": np.asarray(customer_ids, dtype=np.int64),
        "channel": Coded(np.asarray(channel), catalog.channel_names),
        "decided_at": now if isinstance(now, np.ndarray) and now.ndim == 1 else np.full(n, now, dtype=np.float64),
        "experiment_group": Coded(d.group, GROUPS), "action_id": Coded(np.where(d.shown >= 0, d.shown, A), actions),
        "probability": d.probability, "propensity": at_top(d.propensity), "value": at_top(d.value),
        "lever": at_top(d.lever), "priority": at_top(d.priority), "uplift": at_top(d.uplift),
        "n_candidates": np.add.reduce(d.alive, axis=1, dtype=np.int64),
        "features_missing": np.asarray(features_missing, dtype=np.int64),
        "catalog_version": Coded(zeros, (catalog.version,)), "source": Coded(zeros, (source,)),
    })
    rank = ranks(d, k)
    cr, cc = d.alive.nonzero()
    candidates = Columns(CANDIDATE, cr.size, {
        "decision_id": Coded(cr, decision_ids), "action_id": Coded(cc, actions), "rank": rank[cr, cc],
        "propensity": d.propensity[cr, cc], "value": d.value[cr, cc], "lever": d.lever[cc],
        "priority": d.priority[cr, cc], "uplift": d.uplift[cr, cc]})
    fr, fc = (d.reason >= 0).nonzero()
    codes = d.reason[fr, fc]
    filtered = Columns(FILTERED, fr.size, {
        "decision_id": Coded(fr, decision_ids), "action_id": Coded(fc, actions),
        "stage": Coded(codes, stages), "rule": Coded(codes, rules)})
    features = Columns(FEATURES, n, {"decision_id": decision_ids,
                                     **{name: (value if n > 1 else [value]) for name, value in env.items()}})
    outbox = None
    if np.any(deliver):
        outbox = outbox_columns(catalog, d, decisions, np.broadcast_to(np.asarray(deliver, dtype=bool), (n,)), k)
        outbox = outbox if outbox.n else None  # nothing to send: no outbox rows at all
    return DecisionTables(decisions, candidates, filtered, features, model_versions, outbox)


@functools.cache
def _outbound(catalog: Catalog) -> np.ndarray:
    """(C,) bool: is each channel outbound (sent by the bank)?"""
    return np.array([c.direction == "outbound" for c in catalog.channels], dtype=bool)


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def outbox_columns(catalog: Catalog, d: Decisions, decisions: Columns, deliver: np.ndarray,
                   k: int | np.ndarray) -> Columns:
    """The outbox messages of the decisions that `deliver`, on an outbound channel, with an
    action shown (not do_nothing: the hold-out's "no action" sends nothing). One message per
    decision: its shown action, and in the payload every action it shows in rank order. The
    idempotency key is `<decision_id>-<action_id>`, the same on every attempt."""
    channel = np.asarray(decisions.values["channel"].codes)
    send = deliver & _outbound(catalog)[channel] & (d.shown >= 0)
    rows = np.flatnonzero(send)
    m = int(rows.size)
    actions = catalog.actions
    dec = {c: decisions.pylist(c) for c in ("decision_id", "customer_id", "channel", "decided_at",
                                            "experiment_group", "probability", "propensity", "value", "lever",
                                            "priority", "source", "catalog_version")}
    kr = np.broadcast_to(np.asarray(k), (d.n,))
    keys, payloads = [], []
    for i in rows.tolist():
        a = actions[int(d.shown[i])]
        did = dec["decision_id"][i]
        keys.append(f"{did}-{a.id}")
        shown = [actions[j].id for j in d.ranked[i][:int(kr[i])].tolist() if j >= 0]
        payloads.append(json.dumps({
            "decision_id": did, "customer_id": dec["customer_id"][i], "channel": dec["channel"][i],
            "action_id": a.id, "name": a.name, "issue": a.issue, "group": a.group,
            "actions": shown or [a.id], "decided_at": _iso(dec["decided_at"][i]),
            "experiment_group": dec["experiment_group"][i], "probability": dec["probability"][i],
            "propensity": dec["propensity"][i],
            "value": dec["value"][i], "lever": dec["lever"][i], "priority": dec["priority"][i],
            "source": dec["source"][i], "catalog_version": dec["catalog_version"][i]}, sort_keys=True))
    action_names = catalog.action_ids
    zeros = np.zeros(m, dtype=np.float64)
    return Columns(OUTBOX, m, {
        "idempotency_key": keys, "decision_id": [dec["decision_id"][i] for i in rows.tolist()],
        "customer_id": np.asarray(decisions.values["customer_id"])[rows].astype(np.int64),
        "action_id": Coded(np.asarray(d.shown)[rows], action_names),
        "channel": Coded(channel[rows], catalog.channel_names),
        "created_at": np.asarray(decisions.values["decided_at"], dtype=np.float64)[rows],
        "payload": payloads, "state": Coded(np.zeros(m, dtype=np.int32), ("pending",)),
        "attempts": np.zeros(m, dtype=np.int64), "next_attempt_at": zeros, "lease_until": zeros,
        "lease_owner": [None] * m, "error": [None] * m, "delivered_at": [None] * m,
    })


def contacts(catalog: Catalog, d: Decisions, *, decision_ids: list[str], customer_ids: np.ndarray,
             channel: int | np.ndarray, now: float | np.ndarray, k: int | np.ndarray) -> list[tuple]:
    """(customer, action, group, channel, time, decision) of every shown action (the contact
    policies' `Contact` fields), as plain tuples: a batch's million go to the store as they are.
    `channel` (a code) and `now` are one value for every decision, or one per decision."""
    action_ids, groups, channels = _contact_names(catalog)
    r, _, a = _shown(d, k)
    m = r.size
    ch = channels[np.asarray(channel)[r]].tolist() if np.ndim(channel) else [channels[int(channel)]] * m
    ts = np.asarray(now, dtype=np.float64)[r].tolist() if np.ndim(now) else [float(now)] * m  # type: ignore[arg-type]
    return list(zip(np.asarray(customer_ids, dtype=np.int64)[r].tolist(), action_ids[a].tolist(), groups[a].tolist(),
                    ch, ts, np.asarray(decision_ids, dtype=object)[r].tolist(), strict=True))
