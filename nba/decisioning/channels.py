"""The engine chooses the channel: arbitration over action x channel pairs.

When a trigger fires, or a request asks for the best channel, the core runs once over every
(customer, allowed channel) pair: consent, caps and the channel's own offer apply per channel
as in any decision, then each channel's best action is scored

    net = priority x weight - cost

(`weight` is the channel's context weight, `cost` its declared cost per contact in euros; when
the priority formula reads `channel_weight` itself, the weight is not applied twice). The
channel whose best pair has the highest net wins; ties go to the catalog's channel order. A
high-value customer at churn risk is worth a 4 EUR call, a low-value one an e-mail; a channel
without consent, or whose cap is used up, has no candidate and cannot win. Inbound and outbound
channels are separate channels with their own caps (an agent's inbound call never uses up the
outbound call-centre cap); which of them a request may use is the caller's choice (a trigger:
outbound only).

Pure: numpy in, arrays out, the same code for one event and a scan of a million customers.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from nba.catalog import Catalog
from nba.decisioning.core import NOTHING, ContactHistory, Decisions, Preferences, Scorer, decide, reason_table


@dataclass(frozen=True)
class ChannelChoice:
    """Per customer, the channels weighed and why the chosen one won."""

    candidates: tuple[int, ...]  # catalog channel indices weighed (m)
    chosen: np.ndarray  # (n,) catalog channel index
    net: np.ndarray  # (n, m) priority x weight - cost of each channel's best action; -inf: none / not allowed
    priority: np.ndarray  # (n, m) that action's priority (NaN: none)
    allowed: np.ndarray  # (n, m) bool: the request allowed the channel
    reason: np.ndarray  # (n, m, A) the removal codes of every channel's pairs (for the trace)
    best: np.ndarray  # (n, m) each channel's best action, NOTHING if none
    proposed: np.ndarray  # (n, A) bool: the actions the decision could propose (a trigger's)


@dataclass(frozen=True)
class _PerCustomer:
    """The scorer of the n customers for their n x m (customer, channel) rows: a propensity
    does not depend on the channel, so each customer is scored once, on its own features."""

    scorer: Scorer
    env: Mapping[str, Any]
    n: int
    m: int

    def propensity(self, env: Mapping[str, Any], n: int, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        return self._pairs(self.scorer.propensity, rows, cols)

    def uplift(self, env: Mapping[str, Any], n: int, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        return self._pairs(self.scorer.uplift, rows, cols)

    @property
    def cold_start(self) -> Any:
        return getattr(self.scorer, "cold_start", None)

    def _pairs(self, fn: Any, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        r = rows // self.m
        pairs = np.unique(np.stack([r, cols]), axis=1) if rows.size else np.zeros((2, 0), dtype=np.int64)
        out = np.asarray(fn(self.env, self.n, pairs[0], pairs[1]), dtype=np.float64)
        A = int(cols.max()) + 1 if cols.size else 1
        full = np.full((self.n, A), np.nan)
        full[pairs[0], pairs[1]] = out
        return full[r, cols]


def _expand(x: Any, n: int, m: int) -> Any:
    return np.repeat(x, m, axis=0) if isinstance(x, np.ndarray) and np.ndim(x) and len(x) == n else x


def decide_channels(catalog: Catalog, env: Mapping[str, Any], n: int, *, channels: np.ndarray, now: np.ndarray,
                    history: ContactHistory, scorer: Scorer, customer_ids: np.ndarray, decision_keys: np.ndarray,
                    k: int, propose: np.ndarray | None = None,
                    preferences: Preferences | None = None) -> tuple[Decisions, ChannelChoice]:
    """Decide for n customers, each on the best of the channels `channels` ((n, C) or (C,) bool
    over the catalog's channels) allows it. Returns the decisions on the chosen channels (as
    `decide` returns them for one channel each) and the choice."""
    C = len(catalog.channels)
    allow = np.broadcast_to(np.asarray(channels, dtype=bool), (n, C))
    cand = tuple(int(c) for c in np.flatnonzero(allow.any(axis=0)))
    if not cand:
        raise ValueError("no channel allowed")
    m = len(cand)
    N = n * m
    now = np.broadcast_to(np.asarray(now, dtype=np.float64).reshape(-1), (n,))
    xenv = {name: _expand(v, n, m) for name, v in env.items()}
    # history rows: customer r becomes rows r*m .. r*m + m - 1
    step = np.arange(m)

    def rows(r: np.ndarray) -> np.ndarray:
        return (np.repeat(r * m, m) + np.tile(step, r.size)).astype(np.int64)

    def rep(x: np.ndarray) -> np.ndarray:
        return np.repeat(x, m)

    h = history
    xh = ContactHistory(rows(h.contact_row), rep(h.contact_action), rep(h.contact_group), rep(h.contact_channel),
                        rep(h.contact_ts), rows(h.reject_row), rep(h.reject_action), rep(h.reject_ts))
    chan = np.tile(np.asarray(cand, dtype=np.int64), n)
    xprop = None
    if propose is not None:
        p = np.asarray(propose, dtype=bool)
        xprop = np.repeat(p, m, axis=0) if p.ndim == 2 else p
    d = decide(catalog, xenv, N, channel=chan, now=np.repeat(now, m), history=xh, scorer=_PerCustomer(scorer, env, n, m),
               customer_ids=np.repeat(np.asarray(customer_ids, dtype=np.int64), m),
               decision_keys=np.repeat(np.asarray(decision_keys), m), k=k, propose=xprop,
               preferences=None if preferences is None else preferences.expanded(m),
               thompson=False)  # one draw per channel row would make the channel's winner inexact to log
    allowed = allow[:, list(cand)]
    best = d.greedy.reshape(n, m)
    has = (best != NOTHING) & allowed
    bi = np.maximum(d.greedy, 0)
    pr = d.priority[np.arange(N), bi].reshape(n, m)
    weight = np.array([catalog.channels[c].weight for c in cand])
    cost = np.array([catalog.channels[c].cost for c in cand])
    w = np.ones(m) if "channel_weight" in catalog.priority.names else weight
    net = np.where(has, pr * w[None, :] - cost[None, :], -np.inf)
    pr = np.where(has, pr, np.nan)
    # the best net; without any candidate, the first allowed channel (the decision shows nothing)
    j = np.where(has.any(axis=1), np.argmax(net, axis=1), np.argmax(allowed, axis=1))
    sel = np.arange(n) * m + j
    out = Decisions(n=n, alive=d.alive[sel], reason=d.reason[sel], propensity=d.propensity[sel], value=d.value[sel],
                    uplift=d.uplift[sel], priority=d.priority[sel], lever=d.lever, ranked=d.ranked[sel],
                    shown=d.shown[sel], group=d.group[sel], probability=d.probability[sel], greedy=d.greedy[sel])
    choice = ChannelChoice(candidates=cand, chosen=np.asarray(cand, dtype=np.int64)[j], net=net, priority=pr,
                           allowed=allowed, reason=d.reason.reshape(n, m, -1), best=np.where(allowed, best, NOTHING),
                           proposed=np.broadcast_to(np.ones(len(catalog.actions), dtype=bool) if propose is None
                                                    else np.asarray(propose, dtype=bool), (n, len(catalog.actions))))
    return out, choice


def channel_reason(catalog: Catalog, choice: ChannelChoice, i: int) -> str:
    """Why customer i's decision went to its channel, in words (the decision trace)."""
    table = reason_table(catalog)
    parts = []
    chosen = int(choice.chosen[i])
    head = ""
    for j, c in enumerate(choice.candidates):
        ch = catalog.channels[c]
        if not choice.allowed[i, j]:
            continue
        if np.isfinite(choice.net[i, j]):
            a = catalog.actions[int(choice.best[i, j])].id
            text = (f"{ch.name}: {a} priority {choice.priority[i, j]:.2f} x weight {ch.weight:g} - cost "
                    f"{ch.cost:.2f} = {choice.net[i, j]:.2f}")
        else:
            codes = choice.reason[i, j][choice.proposed[i]]  # what removed the actions it might propose
            codes = codes[codes >= 0]
            if codes.size:  # the distinct reasons, the most frequent first
                counts = np.bincount(codes)
                top = [int(c) for c in np.argsort(-counts, kind="stable")[:3] if counts[c]]
                text = f"{ch.name}: no candidate ({'; '.join(f'{table[c].stage}: {table[c].rule}' for c in top)})"
            else:
                text = f"{ch.name}: no candidate"
        if c == chosen:
            head = text
        else:
            parts.append(text)
    if not np.isfinite(choice.net[i]).any():
        return f"no channel has an action worth a contact; {'; '.join([head, *parts])}"
    return f"{catalog.channels[chosen].name} has the highest net priority: {head}" + (
        f"; others: {'; '.join(parts)}" if parts else "")
