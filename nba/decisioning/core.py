"""The decisioning core: one pure function from arrays to arrays.

    rules -> contact policies -> propensity (P) -> value (V) -> lever (L) -> priority
          -> "do nothing" threshold -> top-k -> experiment layer (hold-out, exploration)

`decide` runs them as named stages, in that order, over one (n, A) `alive` / `reason` pair:
`_on_offer` (active dates, channel), `_apply_rules` (eligibility, applicability,
suitability), `_apply_contact_policies` (the customer's own preferences, consent,
suppressions, cool-downs, caps), `_score`
(P, V, L, uplift, priority), `_arbitrate` (threshold, top-k), `_experiment_layer` (hold-out,
exploration, logging probability) and `_show_first` (the shown action heads the list).

`decide` takes the compiled catalog, the customers' features (an environment mapping each name
to an array with one entry per customer, or to a scalar when there is one customer), the
channel and moment of each decision, the customers' contact history and a scorer, and returns
a `Decisions` of arrays: which actions survived each stage (and, for those removed, the stage
and the rule), P, V, L and priority of every surviving action, the ranked top-k, the action
shown, the experiment group and the probability with which the logging policy showed it.
The service calls it with one customer, `nba decide-batch` with a hundred thousand at a time:
the same code.

Every removal is recorded as an index into `reason_table(catalog)`, a list of (stage, rule)
pairs built once per catalog, so the trace costs one small integer per customer and action.

Ties in priority are broken by the action's position in the catalog (deterministic).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from nba.catalog import STAGES, Cap, Catalog, Experiment
from nba.decisioning import experiment

STAGE_CODE = {s: i + 1 for i, s in enumerate((*STAGES, "threshold"))}  # 0 = survived
STAGE_NAME = {v: k for k, v in STAGE_CODE.items()}
GROUPS = ("holdout", "nba", "explore")
GROUP_CODE = {g: i for i, g in enumerate(GROUPS)}
GROUPS_ARRAY = np.array(GROUPS, dtype=object)  # group code -> name, vectorised
NOTHING = -1  # the shown-action index of "do nothing"


class Scorer(Protocol):
    """What the core needs from the models; `nba.serving.models.ModelSet` implements it."""

    def propensity(self, env: Mapping[str, Any], n: int, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """P(accept) of action `cols[i]` for customer `rows[i]`."""

    def uplift(self, env: Mapping[str, Any], n: int, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """Predicted uplift of each pair (NaN where the action has no uplift model)."""


@dataclass(frozen=True)
class ContactHistory:
    """Past contacts and rejections of the customers of one call (row = customer position).

    `*_action` and `contact_group` are indices into the catalog's actions and groups (-1 for an
    action or group no longer in the catalog: it still counts for channel caps).
    """

    contact_row: np.ndarray
    contact_action: np.ndarray
    contact_group: np.ndarray
    contact_channel: np.ndarray
    contact_ts: np.ndarray
    reject_row: np.ndarray
    reject_action: np.ndarray
    reject_ts: np.ndarray

    @classmethod
    def empty(cls) -> ContactHistory:
        i = np.zeros(0, dtype=np.int64)
        f = np.zeros(0, dtype=np.float64)
        return cls(i, i, i, i, f, i, i, f)


@dataclass(frozen=True)
class Preferences:
    """What the customers of one call told the preference centre, as arrays (row = customer
    position, C = the catalog's channels, I = `catalog_issues(catalog)`, G = the catalog's groups).
    The engine reads them from the preference store; the core only compares numbers.

    `consent`: (n, C) int8, -1 no preference (the consent features decide), 0 withdrawn (the
    channel is filtered, stage consent), 1 given. `cap_count` / `cap_days`: (n, C) the
    customer's own frequency limit per channel (count -1: none), counted over the same
    contact history as the catalog's caps. `quiet_start` / `quiet_end`: (n,) minutes after
    midnight in the customer's time zone (-1: none; start > end wraps midnight) and
    `local_minute` (n,) the decision's moment in that zone: no outbound contact inside.
    `no_issue` (n, I) / `no_group` (n, G) bool: topics the customer does not want.
    """

    consent: np.ndarray
    cap_count: np.ndarray
    cap_days: np.ndarray
    quiet_start: np.ndarray
    quiet_end: np.ndarray
    local_minute: np.ndarray
    no_issue: np.ndarray
    no_group: np.ndarray

    @classmethod
    def none(cls, catalog: Catalog, n: int) -> Preferences:
        C, n_issues, G = len(catalog.channels), len(catalog_issues(catalog)), len(catalog.groups)
        m = np.full(n, -1, dtype=np.int64)
        return cls(np.full((n, C), -1, dtype=np.int8), np.full((n, C), -1, dtype=np.int64),
                   np.zeros((n, C)), m, m.copy(), m.copy(), np.zeros((n, n_issues), dtype=bool), np.zeros((n, G), dtype=bool))

    def expanded(self, m: int) -> Preferences:
        """Each customer's row repeated m times in a row (the channel choice decides each
        customer once per candidate channel: rows r*m .. r*m + m - 1)."""
        return Preferences(*(np.repeat(getattr(self, f.name), m, axis=0) for f in dataclasses.fields(self)))


def catalog_issues(catalog: Catalog) -> tuple[str, ...]:
    """The issues the catalog's actions cover, in first-seen order (the columns of `no_issue`)."""
    return tuple(dict.fromkeys(a.issue for a in catalog.actions))


@dataclass(frozen=True)
class Reason:
    stage: str
    rule: str


@functools.cache
def reason_table(catalog: Catalog) -> tuple[Reason, ...]:
    """Every (stage, rule) that can remove an action, indexed by the codes `decide` records."""
    return _reasons(catalog)[0]


@functools.cache
def _reasons(catalog: Catalog) -> tuple[tuple[Reason, ...], dict[tuple[Any, ...], int]]:
    table: list[Reason] = []
    index: dict[tuple[Any, ...], int] = {}

    def add(key: tuple[Any, ...], stage: str, rule: str) -> None:
        index[key] = len(table)
        table.append(Reason(stage, rule))

    for a in catalog.actions:
        lo = "" if a.active_from_s == float("-inf") else _date(a.active_from_s)
        hi = "" if a.active_to_s == float("inf") else _date(a.active_to_s)
        add(("inactive", a.index), "inactive", f"active from {lo or 'always'} to {hi or 'open'}")
        add(("channel", a.index), "channel", f"offered on {', '.join(sorted(a.channels))} only")
        add(("trigger", a.index), "trigger", "not among the actions the trigger proposes")
        for r, rule in enumerate(a.rules):
            add(("rule", a.index, r), rule.stage, rule.text)
        add(("cooldown", a.index), "cooldown", f"rejected in the last {a.cooldown_s / 86400:g} days")
        for cap in a.caps:
            add(("cap", "action", a.index, cap), "cap", f"action '{a.id}': at most {cap.count} per {cap.days:g} days")
    for c in catalog.channels:
        add(("pref_consent", c.name), "consent", f"{c.name}: consent withdrawn in the preference centre")
        add(("pref_cap", c.name), "cap", f"{c.name}: the customer's own frequency limit (preference centre)")
        add(("pref_quiet", c.name), "preference", f"{c.name}: the customer's quiet hours (no outbound contact)")
        for r, req in enumerate(c.requires):
            add(("consent", c.name, r), "consent", f"{c.name}: {req.text}")
        for cap in c.caps:
            add(("cap", "channel", c.name, cap), "cap", f"channel '{c.name}': at most {cap.count} per {cap.days:g} days")
    for g, caps in catalog.group_caps.items():
        for cap in caps:
            add(("cap", "group", g, cap), "cap", f"group '{g}': at most {cap.count} per {cap.days:g} days")
    for s in catalog.suppressions:
        allowed = ", ".join(sorted(s.allow_issues)) or "none"
        add(("suppression", s.name), "suppression", f"{s.name}: {s.when.text} (allowed issues: {allowed})")
    for issue in catalog_issues(catalog):
        add(("pref_issue", issue), "preference", f"the customer does not want '{issue}' messages (preference centre)")
    for g in catalog.groups:
        add(("pref_group", g), "preference", f"the customer does not want '{g}' messages (preference centre)")
    add(("threshold",), "threshold", f"priority <= {catalog.threshold:g} (do-nothing threshold)")
    return tuple(table), index


def _date(epoch: float) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(epoch, tz=UTC).date().isoformat()


@dataclass(frozen=True)
class _Static:
    """Per-catalog arrays the core reuses on every call."""

    offered: np.ndarray  # (channels, actions) bool
    active_from: np.ndarray
    active_to: np.ndarray
    lever: np.ndarray
    cooldown_s: np.ndarray
    action_group: np.ndarray  # group index per action
    issue_of: tuple[str, ...]
    const_value: np.ndarray  # NaN where the value is a formula
    channel_weight: np.ndarray
    dated: np.ndarray  # (A,) bool: has an active-from or active-to date
    code_inactive: np.ndarray  # (A,) reason codes
    code_channel: np.ndarray
    code_trigger: np.ndarray
    suppression_allows: tuple[np.ndarray, ...]  # per suppression, (A,) bool: the action's issue is allowed
    # reason codes, looked up once per catalog (hashing the keys on every call cost ~0.2 ms)
    rule_codes: tuple[tuple[int, ...], ...]  # per action, per rule
    consent_codes: tuple[tuple[int, ...], ...]  # per channel, per requirement
    suppression_codes: tuple[int, ...]
    cooldown_codes: np.ndarray  # (A,)
    action_cap_codes: tuple[tuple[int, ...], ...]  # per action, per cap
    group_cap_codes: Mapping[str, tuple[int, ...]]
    channel_cap_codes: tuple[tuple[int, ...], ...]
    threshold_code: int
    pref_codes: tuple[tuple[int, int, int], ...]  # per channel: consent, cap, quiet hours
    outbound: np.ndarray  # (C,) bool
    action_issue: np.ndarray  # (A,) index into catalog_issues
    issue_codes: np.ndarray  # (I,) reason codes
    group_codes: np.ndarray  # (G,)


@functools.cache
def _static(catalog: Catalog) -> _Static:
    A = len(catalog.actions)
    offered = np.zeros((len(catalog.channels), A), dtype=bool)
    for ci, c in enumerate(catalog.channels):
        for a in catalog.actions:
            offered[ci, a.index] = c.name in a.channels
    groups = catalog.groups
    _, rindex = _reasons(catalog)
    active_from = np.array([a.active_from_s for a in catalog.actions])
    active_to = np.array([a.active_to_s for a in catalog.actions])
    return _Static(
        offered=offered,
        active_from=active_from,
        active_to=active_to,
        lever=np.array([a.lever for a in catalog.actions]),
        cooldown_s=np.array([a.cooldown_s for a in catalog.actions]),
        action_group=np.array([groups.index(a.group) for a in catalog.actions], dtype=np.int64),
        issue_of=tuple(a.issue for a in catalog.actions),
        const_value=np.array([a.value if isinstance(a.value, float) else np.nan for a in catalog.actions]),
        channel_weight=np.array([c.weight for c in catalog.channels]),
        dated=np.isfinite(active_from) | np.isfinite(active_to),
        code_inactive=np.array([rindex[("inactive", a.index)] for a in catalog.actions], dtype=np.int32),
        code_channel=np.array([rindex[("channel", a.index)] for a in catalog.actions], dtype=np.int32),
        code_trigger=np.array([rindex[("trigger", a.index)] for a in catalog.actions], dtype=np.int32),
        suppression_allows=tuple(np.array([a.issue in sup.allow_issues for a in catalog.actions])
                                 for sup in catalog.suppressions),
        rule_codes=tuple(tuple(rindex[("rule", a.index, r)] for r in range(len(a.rules))) for a in catalog.actions),
        consent_codes=tuple(tuple(rindex[("consent", c.name, r)] for r in range(len(c.requires)))
                            for c in catalog.channels),
        suppression_codes=tuple(rindex[("suppression", s.name)] for s in catalog.suppressions),
        cooldown_codes=np.array([rindex[("cooldown", a.index)] for a in catalog.actions], dtype=np.int32),
        action_cap_codes=tuple(tuple(rindex[("cap", "action", a.index, cap)] for cap in a.caps)
                               for a in catalog.actions),
        group_cap_codes={g: tuple(rindex[("cap", "group", g, cap)] for cap in caps)
                         for g, caps in catalog.group_caps.items()},
        channel_cap_codes=tuple(tuple(rindex[("cap", "channel", c.name, cap)] for cap in c.caps)
                                for c in catalog.channels),
        threshold_code=rindex[("threshold",)],
        pref_codes=tuple((rindex[("pref_consent", c.name)], rindex[("pref_cap", c.name)],
                          rindex[("pref_quiet", c.name)]) for c in catalog.channels),
        outbound=np.array([c.direction == "outbound" for c in catalog.channels], dtype=bool),
        action_issue=np.array([catalog_issues(catalog).index(a.issue) for a in catalog.actions], dtype=np.int64),
        issue_codes=np.array([rindex[("pref_issue", i)] for i in catalog_issues(catalog)], dtype=np.int32),
        group_codes=np.array([rindex[("pref_group", g)] for g in groups], dtype=np.int32),
    )


@dataclass
class Decisions:
    """The core's output for n customers and A actions (catalog order)."""

    n: int
    alive: np.ndarray  # (n, A) bool: survived rules and contact policies (the candidates)
    reason: np.ndarray  # (n, A) int32: index into reason_table, -1 where alive
    propensity: np.ndarray  # (n, A) float, NaN where not scored
    value: np.ndarray
    uplift: np.ndarray
    priority: np.ndarray
    lever: np.ndarray  # (A,)
    ranked: np.ndarray  # (n, k) action index, -1 padding; first = the shown action
    shown: np.ndarray  # (n,) action index or NOTHING
    group: np.ndarray  # (n,) index into GROUPS
    probability: np.ndarray  # (n,) P(logging policy shows `shown`)
    greedy: np.ndarray  # (n,) the arbitration's winner (or NOTHING), whatever the experiment did

    @property
    def n_candidates(self) -> np.ndarray:
        return self.alive.sum(axis=1)


def decide(catalog: Catalog, env: Mapping[str, Any], n: int, *, channel: np.ndarray, now: np.ndarray,
           history: ContactHistory, scorer: Scorer, customer_ids: np.ndarray, decision_keys: np.ndarray,
           k: int, propose: np.ndarray | None = None, preferences: Preferences | None = None,
           thompson: bool = True) -> Decisions:
    """Decide for n customers. `env` maps every feature and score name to an array of n
    values (or, when n == 1, to a scalar); `channel` holds channel indices, `now` epoch
    seconds, `decision_keys` 64-bit integers from the decision ids (exploration draws);
    `propose` ((A,) or (n, A) bool), when given, the actions a trigger may propose (the others
    are removed at the `trigger` stage); `preferences` what the customers told the preference
    centre (None: nothing).

    A scorer with a `cold_start` (`nba.decisioning.coldstart.ColdStart`) scores its immature
    actions at their posterior mean; with `thompson`, a decision with an immature candidate
    chooses by Thompson sampling (`_thompson`) and logs the Monte Carlo probability of what
    it showed; without (the channel choice, which weighs every channel's winner), the posterior
    mean ranks them like any P and the choice stays deterministic.

    The stages in the order of the architecture, each removing what it refuses (with its
    reason code) from the same (n, A) `alive` and `reason` arrays."""
    st = _static(catalog)
    channel = np.asarray(channel, dtype=np.int64).reshape(n)
    now = np.asarray(now, dtype=np.float64).reshape(n)
    k = max(1, min(int(k), len(catalog.actions)))
    alive, reason = _on_offer(st, n, channel, now)
    if propose is not None:
        _remove_matrix(alive, reason, ~np.broadcast_to(np.asarray(propose, dtype=bool), alive.shape), st.code_trigger)
    cache: dict[str, Any] = {}  # each distinct rule text evaluated once per call, across stages
    _apply_rules(catalog, st, env, n, alive, reason, cache)
    if preferences is not None:
        _apply_preferences(catalog, st, n, channel, now, history, preferences, alive, reason)
    _apply_contact_policies(catalog, st, env, n, channel, now, history, alive, reason, cache)
    s = _score(catalog, st, env, n, channel, alive, scorer)
    ranked, greedy = _arbitrate(catalog, st, alive, reason, s.priority, k)
    cold = getattr(scorer, "cold_start", None) if thompson else None
    wins = None
    if cold is not None and cold.cold.any():
        wins = _thompson(catalog, st, env, channel, alive, s, cold, np.asarray(decision_keys))
        if wins is not None:
            chosen = greedy.copy()
            chosen[wins[0]] = wins[1]
            won = wins[0][wins[1] != NOTHING]
            reason[won, chosen[won]] = -1  # a drawn priority above the threshold: not removed by it
            _show_first(ranked, chosen, greedy, k)  # the Thompson choice heads the list
            greedy = chosen
    shown, group, probability = _experiment_layer(catalog.experiment, alive, greedy, customer_ids, decision_keys,
                                                  wins)
    _show_first(ranked, shown, greedy, k)
    return Decisions(n=n, alive=alive, reason=reason, propensity=s.propensity, value=s.value, uplift=s.uplift,
                     priority=s.priority, lever=st.lever, ranked=ranked, shown=shown, group=group,
                     probability=probability, greedy=greedy)


# --- the stages, in the order `decide` runs them -----------------------------------------


def _on_offer(st: _Static, n: int, channel: np.ndarray, now: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The (n, A) `alive` and `reason` arrays after the active dates and the channel: what the
    catalog offers at this moment on this channel (all actions at once)."""
    A = len(st.lever)
    alive = np.ones((n, A), dtype=bool)
    reason = np.full((n, A), -1, dtype=np.int32)
    if st.dated.any():
        inactive = ~((st.active_from[None, :] <= now[:, None]) & (now[:, None] < st.active_to[None, :]))
        _remove_matrix(alive, reason, inactive, st.code_inactive)
    _remove_matrix(alive, reason, ~st.offered[channel], st.code_channel)
    return alive, reason


def _apply_rules(catalog: Catalog, st: _Static, env: Mapping[str, Any], n: int, alive: np.ndarray,
                 reason: np.ndarray, cache: dict[str, Any]) -> None:
    """Eligibility, applicability and suitability: each action's rules in catalog order, a rule
    skipped once no customer has the action left."""
    scalar = n == 1
    for a in catalog.actions:
        j = a.index
        for r, rule in enumerate(a.rules):
            if not (alive[0, j] if scalar else alive[:, j].any()):
                break
            ok = cache.get(rule.text)
            if ok is None:
                ok = cache[rule.text] = rule.expression.evaluate(env)
            if scalar and np.ndim(ok) == 0:
                if not ok:
                    alive[0, j] = False
                    reason[0, j] = st.rule_codes[j][r]
                continue
            _remove_col(alive, reason, np.broadcast_to(np.asarray(np.logical_not(ok), dtype=bool), (n,)), j,
                        st.rule_codes[j][r])


def _apply_preferences(catalog: Catalog, st: _Static, n: int, channel: np.ndarray, now: np.ndarray,
                       history: ContactHistory, p: Preferences, alive: np.ndarray, reason: np.ndarray) -> None:
    """The customer's own word first (it overrides the consent features): a withdrawn consent,
    their frequency limit on the channel, their quiet hours (outbound channels), the topics
    (issues, groups) they do not want."""
    rows = np.arange(n)
    consent = p.consent[rows, channel]
    cap_count = p.cap_count[rows, channel]
    cap_days = p.cap_days[rows, channel]
    start, end, minute = p.quiet_start, p.quiet_end, p.local_minute
    quiet = (start >= 0) & (end >= 0) & st.outbound[channel] & np.where(
        start <= end, (minute >= start) & (minute < end), (minute >= start) | (minute < end))
    for ci in np.unique(channel):
        on = channel == ci
        code_consent, code_cap, code_quiet = st.pref_codes[int(ci)]
        withdrawn = on & (consent == 0)
        if withdrawn.any():
            _remove_rows(alive, reason, withdrawn, code_consent)
        limited = on & (cap_count >= 0)
        if limited.any() and history.contact_row.size:
            c = history.contact_row
            recent = (history.contact_channel == ci) & (history.contact_ts > now[c] - cap_days[c] * 86400.0)
            used = np.bincount(c[recent], minlength=n)
            full = limited & (used >= cap_count)
        else:
            full = limited & (cap_count == 0)
        if full.any():
            _remove_rows(alive, reason, full, code_cap)
        if (on & quiet).any():
            _remove_rows(alive, reason, on & quiet, code_quiet)
    if p.no_issue.any():
        _remove_matrix(alive, reason, p.no_issue[:, st.action_issue], st.issue_codes[st.action_issue])
    if p.no_group.any():
        _remove_matrix(alive, reason, p.no_group[:, st.action_group], st.group_codes[st.action_group])


def _apply_contact_policies(catalog: Catalog, st: _Static, env: Mapping[str, Any], n: int, channel: np.ndarray,
                            now: np.ndarray, history: ContactHistory, alive: np.ndarray, reason: np.ndarray,
                            cache: dict[str, Any]) -> None:
    """Consent per channel, suppressions, then cool-downs and caps from the contact history."""
    A = len(catalog.actions)
    for ci, c in enumerate(catalog.channels):
        on_channel = channel == ci
        if not on_channel.any():
            continue
        for r, req in enumerate(c.requires):
            ok = cache.get(req.text)
            if ok is None:
                ok = cache[req.text] = req.evaluate(env)
            bad = on_channel & ~np.asarray(ok, dtype=bool)
            if bad.any():
                _remove_rows(alive, reason, bad, st.consent_codes[ci][r])
    for s, allowed, code in zip(catalog.suppressions, st.suppression_allows, st.suppression_codes, strict=True):
        active = np.broadcast_to(np.asarray(s.when.evaluate(env), dtype=bool), (n,))
        if active.any():
            _remove_matrix(alive, reason, active[:, None] & ~allowed[None, :], np.full(A, code, dtype=np.int32))
    _apply_history(catalog, st, history, now, channel, alive, reason, n)


@dataclass(frozen=True)
class _Scores:
    """(n, A) P, V, uplift and priority; NaN where the action is not a candidate."""

    propensity: np.ndarray
    value: np.ndarray
    uplift: np.ndarray
    priority: np.ndarray


def _score(catalog: Catalog, st: _Static, env: Mapping[str, Any], n: int, channel: np.ndarray, alive: np.ndarray,
           scorer: Scorer) -> _Scores:
    """P (the scorer), V (the action's value), L (its lever), the uplift where the priority
    uses it, and the priority formula over them: for the candidates only."""
    A = len(catalog.actions)
    rows, cols = np.nonzero(alive)
    prop = np.full((n, A), np.nan)
    value = np.full((n, A), np.nan)
    upl = np.full((n, A), np.nan)
    pri = np.full((n, A), np.nan)
    if rows.size:
        p = np.asarray(scorer.propensity(env, n, rows, cols), dtype=np.float64)
        prop[rows, cols] = p
        v = _values(catalog, st, env, n, rows, cols)
        value[rows, cols] = v
        u = (np.asarray(scorer.uplift(env, n, rows, cols), dtype=np.float64) if catalog.uses_uplift
             else np.full(rows.size, np.nan))
        upl[rows, cols] = u
        pri[rows, cols] = _priority(catalog, st, env, channel, rows, cols, p, v, u)
    return _Scores(prop, value, upl, pri)


def _priority(catalog: Catalog, st: _Static, env: Mapping[str, Any], channel: np.ndarray, rows: np.ndarray,
              cols: np.ndarray, p: np.ndarray, v: np.ndarray, u: np.ndarray) -> np.ndarray:
    """The priority formula over pairs (rows, cols) with propensities p, values v, uplifts u."""
    penv: dict[str, Any] = {"propensity": p, "value": v, "lever": st.lever[cols], "uplift": u,
                            "channel_weight": st.channel_weight[channel[rows]]}
    for name in catalog.priority.names - penv.keys():
        x = env[name]
        penv[name] = np.asarray(x)[rows] if isinstance(x, np.ndarray) else x
    pr = np.asarray(catalog.priority.evaluate(penv), dtype=np.float64)
    return np.broadcast_to(pr, rows.shape)


def _thompson(catalog: Catalog, st: _Static, env: Mapping[str, Any], channel: np.ndarray, alive: np.ndarray,
              s: _Scores, cold: Any, decision_keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Thompson sampling for the decisions with an immature candidate: its P drawn from its
    posterior, the mature candidates at their priority (`nba.decisioning.coldstart`). Returns
    those rows, their choice (NOTHING: none above the threshold) and the share of the draws
    each action (and, last, "do nothing") won; None when no decision has one."""
    from nba.decisioning.coldstart import seed_of, thompson_counts

    immature = alive & cold.cold[None, :]
    rows_c = np.flatnonzero(immature.any(axis=1))
    if not rows_c.size:
        return None
    sub = alive[rows_c]
    pri = s.priority[rows_c]
    fixed = np.where(sub & ~cold.cold[None, :] & (pri > catalog.threshold), pri, -np.inf)
    pr, pc = np.nonzero(immature[rows_c])
    grow = rows_c[pr]
    v, u = s.value[grow, pc], s.uplift[grow, pc]

    def priority_of(theta: np.ndarray, at: np.ndarray) -> np.ndarray:
        return _priority(catalog, st, env, channel, grow[at], pc[at], theta, v[at], u[at])

    choice, shares = thompson_counts(seed_of(decision_keys[rows_c]), fixed, pr, pc, cold.alpha[pc], cold.beta[pc],
                                     priority_of, catalog.threshold, int(cold.draws))
    return rows_c, np.where(choice < 0, NOTHING, choice), shares


def _arbitrate(catalog: Catalog, st: _Static, alive: np.ndarray, reason: np.ndarray, priority: np.ndarray,
               k: int) -> tuple[np.ndarray, np.ndarray]:
    """The "do nothing" threshold (a candidate at or below it gets the threshold's reason but
    stays a candidate), then the top k by priority, ties by catalog order. Returns the (n, k)
    ranking (NOTHING padding) and its first entry, the arbitration's winner."""
    above = alive & (priority > catalog.threshold)
    below = alive & ~above
    if below.any():
        reason[below] = st.threshold_code
    key = np.where(above, priority, -np.inf)
    order = np.argsort(-key, axis=1, kind="stable")[:, :k]
    top = np.take_along_axis(key, order, axis=1)
    ranked = np.where(np.isfinite(top), order, NOTHING)
    return ranked, ranked[:, 0].copy()


def _experiment_layer(exp: Experiment, alive: np.ndarray, greedy: np.ndarray, customer_ids: np.ndarray,
                      decision_keys: np.ndarray, wins: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The universal hold-out (a salted hash of the customer) and exploration (a hash of the
    decision): the action shown, the group, and the probability the logging policy showed it.
    `wins` (rows, their Thompson choice, the (rows, A + 1) shares of the draws each action won):
    on those rows the winner is random, so P(show a) = (1 - eps) share(a) + eps / n_alive."""
    n = len(greedy)
    n_alive = alive.sum(axis=1)
    holdout = experiment.in_holdout(customer_ids, exp.salt, exp.holdout_share)
    u_explore = experiment.unit_hash(decision_keys, exp.salt + ":explore")
    u_choice = experiment.unit_hash(decision_keys, exp.salt + ":choice")
    # the uniformly random candidate each decision would show if it explored
    pick = np.minimum((u_choice * n_alive).astype(np.int64), np.maximum(n_alive - 1, 0))
    cum = np.cumsum(alive, axis=1)
    random_action = np.where(n_alive > 0, np.argmax(cum > pick[:, None], axis=1), NOTHING)

    eps = exp.exploration_share
    explore = ~holdout & (u_explore < eps) & (n_alive > 0)
    shown = greedy.copy()
    group = np.full(n, GROUP_CODE["nba"], dtype=np.int8)
    with np.errstate(divide="ignore", invalid="ignore"):
        uniform = np.where(n_alive > 0, 1.0 / n_alive, 0.0)
    # non-hold-out: P(show a) = (1 - eps) 1[a = greedy] + eps / n_alive (a a candidate); nothing when no candidate
    prob = np.where(n_alive > 0, (1 - eps) + eps * uniform * (greedy != NOTHING), 1.0)
    shown[explore] = random_action[explore]
    group[explore] = GROUP_CODE["explore"]
    differs = explore & (random_action != greedy)
    prob[differs] = eps * uniform[differs]
    if wins is not None:
        rc, _, shares = wins
        sc = shown[rc]
        won = shares[np.arange(rc.size), np.where(sc == NOTHING, alive.shape[1], sc)]
        prob[rc] = (1 - eps) * won + eps * uniform[rc] * (sc != NOTHING)
    if holdout.any():
        group[holdout] = GROUP_CODE["holdout"]
        if exp.holdout_treatment == "random":
            shown[holdout] = random_action[holdout]
            prob[holdout] = np.where(n_alive[holdout] > 0, uniform[holdout], 1.0)
        else:
            shown[holdout] = NOTHING
            prob[holdout] = 1.0
    return shown, group, prob


def _show_first(ranked: np.ndarray, shown: np.ndarray, greedy: np.ndarray, k: int) -> None:
    """The list shown, in place: where the experiment layer changed the action, that action
    first, then the arbitration's ranking without it (nothing at all for "do nothing")."""
    changed = shown != greedy
    if changed.any():
        idx = np.flatnonzero(changed)
        for i in idx:
            if shown[i] == NOTHING:
                ranked[i] = NOTHING
            else:
                rest = [a for a in ranked[i] if a != NOTHING and a != shown[i]]
                row = [shown[i], *rest][:k]
                ranked[i] = row + [NOTHING] * (k - len(row))


# --- helpers of the stages ---------------------------------------------------------------


def _remove_matrix(alive: np.ndarray, reason: np.ndarray, fail: np.ndarray, codes: np.ndarray) -> None:
    """Remove every alive (row, action) where `fail`, recording the action's code."""
    hit = alive & fail
    if hit.any():
        reason[hit] = np.broadcast_to(codes, alive.shape)[hit]
        alive[hit] = False


def _remove_rows(alive: np.ndarray, reason: np.ndarray, rows: np.ndarray, code: int) -> None:
    hit = alive & rows[:, None]
    reason[hit] = code
    alive[hit] = False


def _values(catalog: Catalog, st: _Static, env: Mapping[str, Any], n: int, rows: np.ndarray,
            cols: np.ndarray) -> np.ndarray:
    v = st.const_value[cols].copy()
    for a in catalog.actions:
        if isinstance(a.value, float):
            continue
        at = cols == a.index
        if not at.any():
            continue
        x = a.value.evaluate(env)
        v[at] = np.asarray(x, dtype=np.float64)[rows[at]] if np.ndim(x) else float(x)
    return np.maximum(np.nan_to_num(v, nan=0.0), 0.0)


def _apply_history(catalog: Catalog, st: _Static, h: ContactHistory,
                   now: np.ndarray, channel: np.ndarray, alive: np.ndarray, reason: np.ndarray, n: int) -> None:
    """Cool-downs after rejections, then caps per action, group and channel."""
    if h.reject_row.size:
        known = h.reject_action >= 0
        r, ra, ts = h.reject_row[known], h.reject_action[known], h.reject_ts[known]
        cooling = (now[r] - ts) < st.cooldown_s[ra]
        r, ra = r[cooling], ra[cooling]
        hit = alive[r, ra]
        if hit.any():
            for j in np.unique(ra[hit]):
                rows = np.zeros(n, dtype=bool)
                rows[r[hit & (ra == j)]] = True
                _remove_col(alive, reason, rows, int(j), int(st.cooldown_codes[j]))
    if not h.contact_row.size:
        return
    A = len(catalog.actions)
    G = len(catalog.groups)
    C = len(catalog.channels)
    windows: dict[float, dict[str, np.ndarray]] = {}

    def counts(days: float) -> dict[str, np.ndarray]:
        if days not in windows:
            m = h.contact_ts > now[h.contact_row] - days * 86400.0
            r = h.contact_row[m]
            out = {"action": np.zeros((n, A), np.int64), "group": np.zeros((n, G), np.int64),
                   "channel": np.zeros((n, C), np.int64)}
            ca, g, c = h.contact_action[m], h.contact_group[m], h.contact_channel[m]
            np.add.at(out["action"], (r[ca >= 0], ca[ca >= 0]), 1)
            np.add.at(out["group"], (r[g >= 0], g[g >= 0]), 1)
            np.add.at(out["channel"], (r[c >= 0], c[c >= 0]), 1)
            windows[days] = out
        return windows[days]

    for a in catalog.actions:
        for cap, code in zip(a.caps, st.action_cap_codes[a.index], strict=True):
            full = counts(cap.days)["action"][:, a.index] >= cap.count
            if full.any():
                _remove_col(alive, reason, full, a.index, code)
    groups = catalog.groups
    for g, caps in catalog.group_caps.items():
        gi = groups.index(g)
        members = np.flatnonzero(st.action_group == gi)
        for cap, code in zip(caps, st.group_cap_codes[g], strict=True):
            full = counts(cap.days)["group"][:, gi] >= cap.count
            if full.any():
                for j in members:
                    _remove_col(alive, reason, full, int(j), code)
    for ci, c in enumerate(catalog.channels):
        on = channel == ci
        for cap, code in zip(c.caps, st.channel_cap_codes[ci], strict=True):
            if not on.any():
                break
            full = on & (counts(cap.days)["channel"][:, ci] >= cap.count)
            if full.any():
                _remove_rows(alive, reason, full, code)


def _remove_col(alive: np.ndarray, reason: np.ndarray, rows: np.ndarray, j: int, code: int) -> None:
    hit = alive[:, j] & rows
    if hit.any():
        reason[hit, j] = code
        alive[hit, j] = False


def cap_windows_days(catalog: Catalog) -> float:
    """The longest window any cap or cool-down looks back over: the history a call needs."""
    caps: list[Cap] = [c for a in catalog.actions for c in a.caps]
    caps += [c for ch in catalog.channels for c in ch.caps]
    caps += [c for cs in catalog.group_caps.values() for c in cs]
    longest = max((c.days for c in caps), default=0.0)
    cool = max((a.cooldown_s for a in catalog.actions), default=0.0) / 86400.0
    return max(longest, cool)


def trace(catalog: Catalog, d: Decisions, i: int) -> list[dict[str, str]]:
    """The actions removed for customer i, with the stage and the rule (catalog order)."""
    table = reason_table(catalog)
    out = []
    for j in np.flatnonzero(d.reason[i] >= 0):
        r = table[int(d.reason[i, j])]
        out.append({"action_id": catalog.actions[int(j)].id, "stage": r.stage, "rule": r.rule})
    return out



@dataclass(frozen=True)
class MatrixScorer:
    """Propensities (and uplifts) given as (n, A) matrices rather than models: for what-if
    runs with known probabilities (the simulator's truth, a worked example)."""

    propensities: np.ndarray
    uplifts: np.ndarray | None = None

    def propensity(self, env: Mapping[str, Any], n: int, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        return np.asarray(self.propensities, dtype=np.float64).reshape(n, -1)[rows, cols]

    def uplift(self, env: Mapping[str, Any], n: int, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        if self.uplifts is None:
            return np.full(rows.size, np.nan)
        return np.asarray(self.uplifts, dtype=np.float64).reshape(n, -1)[rows, cols]
