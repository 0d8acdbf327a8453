"""The preference centre without a server: payload validation (errors name the field) and the
core's preference stage (arrays in, filtered actions with the stage and the reason out)."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pytest

from nba.catalog import load_catalog
from nba.decisioning.core import ContactHistory, MatrixScorer, decide, trace
from nba.preferences import PreferenceError, parse, to_arrays
from tests.conftest import PROJECT_ROOT
from tests.test_catalog import FEATURES

NOW = datetime(2025, 12, 1, 9, 0, tzinfo=UTC).timestamp()  # 10:00 in Amsterdam


@pytest.fixture(scope="module")
def cat():
    return load_catalog(PROJECT_ROOT, FEATURES)


def _env(n: int, **overrides: float) -> dict:
    """Customers every action applies to, with every consent."""
    base = {f: np.zeros(n) for f in FEATURES}
    for f in ("consent_email", "consent_sms", "consent_push", "consent_call_centre", "consent_web", "has_email",
              "has_mobile_app", "travels_abroad", "on_sick_leave"):
        base[f] = np.ones(n)
    base.update(credit_score=np.full(n, 800.0), age=np.full(n, 40.0), income=np.full(n, 60_000.0),
                churn_risk=np.full(n, 0.5), clv=np.full(n, 300.0), recency_days=np.full(n, 30.0))
    base.update({k: np.full(n, float(v)) for k, v in overrides.items()})
    return base


def _decide(cat, prefs, channel: str, *, n: int = 1, now: float = NOW, history=None, env=None):
    ch = np.full(n, cat.channel_names.index(channel))
    t = np.full(n, now)
    return decide(cat, env or _env(n), n, channel=ch, now=t, history=history or ContactHistory.empty(),
                  scorer=MatrixScorer(np.full((n, len(cat.actions)), 0.5)), customer_ids=np.arange(n) + 10**6,
                  decision_keys=np.arange(n) + 1, k=3, preferences=to_arrays(cat, prefs, t))


def test_no_preferences_change_nothing(cat):
    a = _decide(cat, [None], "email")
    b = decide(cat, _env(1), 1, channel=np.array([cat.channel_names.index("email")]), now=np.array([NOW]),
               history=ContactHistory.empty(), scorer=MatrixScorer(np.full((1, len(cat.actions)), 0.5)),
               customer_ids=np.array([10**6]), decision_keys=np.array([1]), k=3)
    assert np.array_equal(a.alive, b.alive) and np.array_equal(a.ranked, b.ranked)


def test_withdrawn_consent_filters_the_channel_with_the_reason(cat):
    prefs = [parse({"consent": {"email": False}}, cat), None]
    d = _decide(cat, prefs, "email", n=2)
    assert not d.alive[0].any() and d.alive[1].any()
    # what the rules left for the customer is removed by the withdrawn consent, with its reason
    offered = {cat.actions[j].id for j in np.flatnonzero(d.alive[1])}
    assert {(t["stage"], t["rule"]) for t in trace(cat, d, 0) if t["action_id"] in offered} == {
        ("consent", "email: consent withdrawn in the preference centre")}
    assert _decide(cat, prefs[:1], "sms").alive[0].any()  # other channels are untouched


def test_the_customers_frequency_limit_counts_their_contacts_on_the_channel(cat):
    prefs = [parse({"frequency": {"sms": {"count": 1, "days": 10}}}, cat)]
    sms = cat.channel_names.index("sms")

    def history(days_ago: float) -> ContactHistory:
        return ContactHistory(np.array([0]), np.array([-1]), np.array([-1]), np.array([sms]),
                              np.array([NOW - days_ago * 86400.0]), np.zeros(0, np.int64), np.zeros(0, np.int64),
                              np.zeros(0))

    full = _decide(cat, prefs, "sms", history=history(3))
    assert not full.alive[0].any()
    assert "sms: the customer's own frequency limit (preference centre)" in {t["rule"] for t in trace(cat, full, 0)}
    assert _decide(cat, prefs, "sms", history=history(11)).alive[0].any()  # outside the window
    never = _decide(cat, [parse({"frequency": {"sms": {"count": 0, "days": 10}}}, cat)], "sms")
    assert not never.alive[0].any()


@pytest.mark.parametrize(("start", "end", "hour_utc", "quiet"), [
    ("21:00", "10:00", 8, True),   # 09:00 Amsterdam, inside a range over midnight
    ("21:00", "10:00", 9, False),  # 10:00: the end is not inside
    ("21:00", "10:00", 20, True),  # 21:00
    ("12:00", "14:00", 12, True),  # 13:00, a range within the day
    ("12:00", "14:00", 9, False),
])
def test_quiet_hours_in_the_customers_time_zone_hold_outbound_contact(cat, start, end, hour_utc, quiet):
    prefs = [parse({"quiet_hours": {"start": start, "end": end}, "timezone": "Europe/Amsterdam"}, cat)]
    now = datetime(2025, 12, 1, hour_utc, 0, tzinfo=UTC).timestamp()
    d = _decide(cat, prefs, "sms", now=now)
    assert bool(d.alive[0].any()) is not quiet
    if quiet:
        offered = {cat.actions[j].id for j in np.flatnonzero(_decide(cat, [None], "sms", now=now).alive[0])}
        assert {(t["stage"], t["rule"]) for t in trace(cat, d, 0) if t["action_id"] in offered} == {
            ("preference", "sms: the customer's quiet hours (no outbound contact)")}
    assert _decide(cat, prefs, "web", now=now).alive[0].any()  # inbound: the customer came to us


def test_unwanted_topics_remove_their_issues_and_groups(cat):
    prefs = [parse({"topics_blocked": ["sales", "cards"]}, cat)]
    env = _env(1, has_credit_card=1)  # card holders: the cards group's retention actions apply
    assert {cat.actions[j].group for j in np.flatnonzero(_decide(cat, [None], "web", env=env).alive[0])} >= {"cards"}
    d = _decide(cat, prefs, "web", env=env)
    left = {cat.actions[j] for j in np.flatnonzero(d.alive[0])}
    assert left and all(a.issue != "sales" and a.group != "cards" for a in left)
    rules = {t["rule"] for t in trace(cat, d, 0) if t["stage"] == "preference"}
    assert rules == {"the customer does not want 'sales' messages (preference centre)",
                     "the customer does not want 'cards' messages (preference centre)"}


@pytest.mark.parametrize(("payload", "field"), [
    ({"consent": {"fax": True}}, "consent.fax"),
    ({"consent": ["email"]}, "consent"),
    ({"frequency": {"email": {"count": 1.5}}}, "frequency.email.count"),
    ({"frequency": {"email": {"count": 1, "days": -2}}}, "frequency.email.days"),
    ({"frequency": {"email": 3}}, "frequency.email"),
    ({"quiet_hours": {"start": "9:00", "end": "10:00"}}, "quiet_hours.start"),
    ({"quiet_hours": {"start": "09:00", "end": "24:00"}}, "quiet_hours.end"),
    ({"quiet_hours": "22-07"}, "quiet_hours"),
    ({"timezone": ""}, "timezone"),
    ({"topics_blocked": "sales"}, "topics_blocked"),
    ([1, 2], "body"),
])
def test_bad_payloads_name_the_field(cat, payload, field):
    with pytest.raises(PreferenceError) as err:
        parse(payload, cat)
    assert err.value.field == field


def test_preferences_round_trip_as_json(cat):
    p = parse({"consent": {"sms": True}, "frequency": {"email": {"count": 2, "days": 14}},
               "quiet_hours": {"start": "22:00", "end": "07:30"}, "timezone": "Europe/Lisbon",
               "topics_blocked": ["risk", "risk"]}, cat)
    assert p.quiet_hours == (22 * 60, 7 * 60 + 30) and p.topics_blocked == ("risk",)
    assert parse(p.to_json(), cat) == p
