"""The decisioning core as a pure function: the mission's worked example, every filtering stage,
contact policies from a history, arbitration and the experiment layer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from nba.catalog import load_catalog
from nba.decisioning import core, experiment
from nba.decisioning.core import NOTHING, ContactHistory, MatrixScorer, decide, trace
from nba.schemas import ACTIONS
from tests.conftest import PROJECT_ROOT
from tests.test_catalog import FEATURES

MARIE = PROJECT_ROOT / "tests" / "data" / "marie"
DAY = 86400.0
NA = len(ACTIONS)  # the bank catalog's actions (serving/actions.yaml)
NOW = 1_764_579_600.0  # 2025-12-01 09:00 UTC


def _marie():
    return load_catalog(PROJECT_ROOT, {"has_mortgage", "consent_web"}, actions=MARIE / "actions.yaml",
                        policies=MARIE / "policies.yaml")


def _run(cat, env, n, P, *, channel=0, history=None, ids=None, keys=None, k=3, now=NOW):
    return decide(cat, env, n, channel=np.full(n, channel), now=np.full(n, now),
                  history=history or ContactHistory.empty(), scorer=MatrixScorer(np.asarray(P)),
                  customer_ids=np.arange(n) if ids is None else ids,
                  decision_keys=np.arange(n) + 1 if keys is None else keys, k=k)


def test_the_mission_worked_example_marie():
    """P, V and boost L as given in the mission: the priorities and the winner, exactly."""
    cat = _marie()
    P = [[0.003, 0.5, 0.001, 0.04, 0.03, 0.64, 0.14, 0.05, 0.03, 0.21]]
    expected = [1.68, None, 0.83, 3.30, 1.04, 29.44, 17.43, 2.40, 4.86, 5.04]
    for env in ({"has_mortgage": 0, "consent_web": 1},  # one customer: scalars
                {"has_mortgage": np.array([0.0]), "consent_web": np.array([1.0])}):  # a batch of one
        d = _run(cat, env, 1, P)
        got = [None if np.isnan(x) else round(float(x), 2) for x in d.priority[0]]
        assert got == expected
        assert cat.actions[int(d.shown[0])].id == "sick_leave_support"
        assert [cat.actions[int(j)].id for j in d.ranked[0]] == ["sick_leave_support", "loyalty_points_alert",
                                                                 "mobile_app"]
        assert trace(cat, d, 0) == [{"action_id": "home_equity_loan", "stage": "eligibility",
                                     "rule": "has_mortgage == 1"}]
        assert d.probability[0] == 1.0 and core.GROUPS[d.group[0]] == "nba"


def _bank(tmp_path: Path, **policy_changes):
    p = yaml.safe_load((PROJECT_ROOT / "serving" / "policies.yaml").read_text())
    for key, value in policy_changes.items():
        section, _, field = key.partition("__")
        p[section][field] = value
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    return load_catalog(PROJECT_ROOT, FEATURES, policies=tmp_path / "p.yaml")


def _customer(**overrides):
    """A customer for whom most bank actions are eligible on every channel."""
    f = {name: 0.0 for name in FEATURES}
    f.update(age=25.0, income=60_000.0, tenure_months=40.0, credit_score=720.0, debt_to_income=0.2,
             has_email=1.0, has_mobile_app=0.0, has_credit_card=0.0, has_mortgage=0.0, travels_abroad=1.0,
             recency_days=30.0, logins_30d=1.0, email_open_rate=0.1, churn_risk=0.01, clv=50.0,
             consent_email=1.0, consent_sms=1.0, consent_push=1.0, consent_call_centre=1.0, consent_web=1.0,
             region="north", rfm_segment="other")
    f.update(overrides)
    return f


def _batch(rows: list[dict]) -> dict:
    return {k: np.array([r[k] for r in rows], dtype=object if isinstance(rows[0][k], str) else np.float64)
            for k in rows[0]}


def test_each_stage_removes_with_its_rule(tmp_path):
    cat = _bank(tmp_path, experiment__holdout_share=0.0, experiment__exploration_share=0.0)
    rows = [_customer(), _customer(has_credit_card=1.0, collections_open=1.0, missed_payments_90d=2.0),
            _customer(consent_web=0.0)]
    P = np.full((3, len(cat.actions)), 0.1)
    d = _run(cat, _batch(rows), 3, P, channel=cat.channel_names.index("web"))
    stages = {(t["action_id"], t["stage"]) for t in trace(cat, d, 0)}
    assert ("rewards_card", "eligibility") not in stages  # no card: eligible
    assert ("mortgage", "eligibility") not in stages and ("mortgage", "suitability") not in stages
    assert ("sick_leave_support", "applicability") in stages
    assert ("loyalty_points_alert", "eligibility") in stages
    # an open collections case: only collections and wellbeing actions may remain
    second = {t["action_id"]: t for t in trace(cat, d, 1)}
    assert second["travel_notification"]["stage"] == "suppression"
    assert "collections_open" in second["travel_notification"]["rule"]
    assert {cat.actions[j].issue for j in np.flatnonzero(d.alive[1])} <= {"collections", "wellbeing"}
    assert d.alive[1, cat.action_ids.index("payment_plan")]
    # no consent on the channel: nothing, and the reason is the consent rule
    assert not d.alive[2].any() and d.shown[2] == NOTHING
    assert {t["stage"] for t in trace(cat, d, 2) if t["action_id"] == "mobile_app"} == {"consent"}


def test_the_channel_and_the_active_dates_filter(tmp_path):
    cat = _bank(tmp_path, experiment__holdout_share=0.0, experiment__exploration_share=0.0)
    env = _batch([_customer(has_email=0.0)])
    d = _run(cat, env, 1, np.full((1, NA), 0.1), channel=cat.channel_names.index("email"))
    assert {t["action_id"]: t["stage"] for t in trace(cat, d, 0)}["add_email"] == "channel"


def _history(cat, events: list[tuple], rejections: list[tuple] = ()) -> ContactHistory:
    """events: (row, action_id, channel, days ago); rejections: (row, action_id, days ago)."""
    a = {x: i for i, x in enumerate(cat.action_ids)}
    groups = cat.groups
    return ContactHistory(
        contact_row=np.array([e[0] for e in events], dtype=np.int64),
        contact_action=np.array([a[e[1]] for e in events], dtype=np.int64),
        contact_group=np.array([groups.index(cat.actions[a[e[1]]].group) for e in events], dtype=np.int64),
        contact_channel=np.array([cat.channel_names.index(e[2]) for e in events], dtype=np.int64),
        contact_ts=np.array([NOW - e[3] * DAY for e in events]),
        reject_row=np.array([r[0] for r in rejections], dtype=np.int64),
        reject_action=np.array([a[r[1]] for r in rejections], dtype=np.int64),
        reject_ts=np.array([NOW - r[2] * DAY for r in rejections]))


def test_caps_and_cooldowns_from_the_contact_history(tmp_path):
    cat = _bank(tmp_path, experiment__holdout_share=0.0, experiment__exploration_share=0.0)
    env = _batch([_customer()] * 6)
    web = cat.channel_names.index("web")
    h = _history(cat, [
        (0, "mobile_app", "email", 2),  # action cap 1 per 7 days: mobile_app blocked for row 0
        (1, "mobile_app", "email", 8),  # 8 days ago: outside the 7-day window, inside 3 per 30
        (2, "rewards_card", "sms", 20), (2, "rewards_card", "sms", 25), (2, "annual_fee_waiver", "web", 10),
        # group 'cards' cap 3 per 30 days: every card action blocked for row 2
        *[(3, "travel_notification", "web", 0.01 * i) for i in range(20)],  # web cap 20 per day: row 3 blocked
    ], rejections=[(4, "finance_course", 10), (5, "finance_course", 40)])  # cool-down 30 days
    d = _run(cat, env, 6, np.full((6, NA), 0.1), channel=web, history=h)
    by_row = [{t["action_id"]: t for t in trace(cat, d, i)} for i in range(6)]
    assert by_row[0]["mobile_app"]["stage"] == "cap" and "at most 1 per 7 days" in by_row[0]["mobile_app"]["rule"]
    assert "mobile_app" not in by_row[1]
    assert {x for x, t in by_row[2].items() if t["stage"] == "cap"} >= {"rewards_card"}
    assert "group 'cards': at most 3 per 30 days" in by_row[2]["rewards_card"]["rule"]
    assert not d.alive[3].any() and "channel 'web': at most 20 per 1 days" in by_row[3]["mobile_app"]["rule"]
    assert by_row[4]["finance_course"]["stage"] == "cooldown"
    assert "finance_course" not in by_row[5]  # rejected 40 days ago: the 30-day cool-down is over
    # the same customers on another channel: the web cap does not apply
    d_sms = _run(cat, env, 6, np.full((6, NA), 0.1), channel=cat.channel_names.index("sms"), history=h)
    assert d_sms.alive[3].any()


def test_threshold_top_k_and_deterministic_ties(tmp_path):
    cat = _bank(tmp_path, experiment__holdout_share=0.0, experiment__exploration_share=0.0,
                arbitration__threshold=1.0)
    env = _batch([_customer()])
    P = np.zeros((1, NA))
    j = {a: i for i, a in enumerate(cat.action_ids)}
    # travel (V 4, L .2) and mobile app (V 12, L .2): equal priorities 3.6 when P is 0.75 and 0.25
    P[0, j["travel_notification"]] = 0.75
    P[0, j["mobile_app"]] = 0.25
    P[0, j["finance_course"]] = 0.01  # 15 x 1.2 x 0.01 = 0.18 <= threshold 1
    d = _run(cat, env, 1, P, k=3)
    ranked = [cat.action_ids[int(x)] for x in d.ranked[0] if x >= 0]
    assert ranked == ["travel_notification", "mobile_app"]  # tie broken by catalog order; finance below threshold
    assert d.priority[0, j["travel_notification"]] == pytest.approx(d.priority[0, j["mobile_app"]])
    assert {t["action_id"]: t["stage"] for t in trace(cat, d, 0)}["finance_course"] == "threshold"
    nothing = _run(cat, env, 1, np.full((1, NA), 1e-5))  # mortgage: 1e-5 x 0.04 x 60,000 = 0.024
    assert nothing.shown[0] == NOTHING and nothing.alive[0].any()


def test_the_holdout_is_stable_salted_and_of_the_configured_share():
    ids = np.arange(200_000)
    a = experiment.in_holdout(ids, "salt-1", 0.05)
    b = experiment.in_holdout(ids, "salt-1", 0.05)
    c = experiment.in_holdout(ids, "salt-2", 0.05)
    assert (a == b).all()
    sd = np.sqrt(0.05 * 0.95 / ids.size)
    assert abs(a.mean() - 0.05) < 4 * sd
    assert abs(c.mean() - 0.05) < 4 * sd
    assert 0.002 < (a & c).mean() < 0.004  # another salt: an independent draw (0.05^2 = 0.0025)
    # the same customers in a different order, one at a time: the same membership
    assert [bool(experiment.in_holdout(np.array([i]), "salt-1", 0.05)[0]) for i in (17, 4242, 199_999)] == [
        bool(a[17]), bool(a[4242]), bool(a[199_999])]


def test_exploration_draws_uniformly_and_logs_the_exact_probability(tmp_path):
    """Over many decisions for the same customer, each action is shown as often as the logged
    probability says: (1 - eps) + eps / n for the winner, eps / n for the others."""
    eps = 0.2
    cat = _bank(tmp_path, experiment__holdout_share=0.0, experiment__exploration_share=eps)
    n = 40_000
    env = _batch([_customer()])
    env = {k: np.repeat(v, n) for k, v in env.items()}
    P = np.tile(np.linspace(0.05, 0.5, NA), (n, 1))
    keys = experiment.splitmix64(np.arange(n, dtype=np.uint64)).view(np.int64)
    d = _run(cat, env, n, P, ids=np.full(n, 7), keys=keys, k=1)
    cands = np.flatnonzero(d.alive[0])
    greedy = int(d.greedy[0])
    m = cands.size
    freq = {int(a): float(np.mean(d.shown == a)) for a in cands}
    for a in cands:
        p = (1 - eps) * (a == greedy) + eps / m
        assert abs(freq[int(a)] - p) < 4 * np.sqrt(p * (1 - p) / n)
        logged = d.probability[d.shown == a]
        assert np.allclose(logged, p)
    assert abs(np.mean(core.GROUPS_ARRAY[d.group] == "explore") - eps) < 4 * np.sqrt(eps * (1 - eps) / n)


def test_holdout_customers_get_nothing_or_a_random_action(tmp_path):
    cat = _bank(tmp_path, experiment__holdout_share=0.5, experiment__exploration_share=0.0)
    n = 2_000
    env = {k: np.repeat(v, n) for k, v in _batch([_customer()]).items()}
    d = _run(cat, env, n, np.full((n, NA), 0.2), ids=np.arange(n))
    hold = core.GROUPS_ARRAY[d.group] == "holdout"
    assert 0.45 < hold.mean() < 0.55
    assert (d.shown[hold] == NOTHING).all() and (d.probability[hold] == 1.0).all()
    assert (d.ranked[hold] == NOTHING).all()
    assert (d.greedy[hold] != NOTHING).all()  # what the arbitration would have shown is kept
    rnd = _bank(tmp_path, experiment__holdout_share=0.5, experiment__exploration_share=0.0,
                experiment__holdout_treatment="random")
    d2 = _run(rnd, env, n, np.full((n, NA), 0.2), ids=np.arange(n))
    hold2 = core.GROUPS_ARRAY[d2.group] == "holdout"
    assert (hold2 == hold).all()
    m = d2.alive[0].sum()
    assert (d2.shown[hold2] != NOTHING).all() and np.allclose(d2.probability[hold2], 1 / m)


def test_one_customer_and_a_batch_decide_alike(tmp_path):
    """The scalar path (one request) and the array path (a batch) give the same decisions."""
    cat = _bank(tmp_path)
    rng = np.random.default_rng(3)
    rows = [_customer(age=float(rng.integers(18, 90)), credit_score=float(rng.integers(400, 850)),
                      has_credit_card=float(rng.integers(0, 2)), missed_payments_90d=float(rng.integers(0, 3)),
                      on_sick_leave=float(rng.integers(0, 2)), consent_sms=float(rng.integers(0, 2)),
                      collections_open=float(rng.random() < 0.2)) for _ in range(50)]
    P = rng.random((50, NA)) * 0.3
    ids = np.arange(50) * 7919
    keys = np.arange(50) * 104729 + 1
    batch = _run(cat, _batch(rows), 50, P, channel=cat.channel_names.index("sms"), ids=ids, keys=keys)
    for i in range(50):
        one = _run(cat, rows[i], 1, P[i:i + 1], channel=cat.channel_names.index("sms"), ids=ids[i:i + 1],
                   keys=keys[i:i + 1])
        assert (one.alive[0] == batch.alive[i]).all() and (one.reason[0] == batch.reason[i]).all()
        assert np.allclose(one.priority[0], batch.priority[i], equal_nan=True)
        assert (one.ranked[0] == batch.ranked[i]).all() and one.shown[0] == batch.shown[i]
        assert one.probability[0] == batch.probability[i]


def test_the_priority_formula_is_configurable(tmp_path):
    """Uplift x value, and a context weight per channel: the same candidates, another order."""
    p = yaml.safe_load((PROJECT_ROOT / "serving" / "policies.yaml").read_text())
    p["experiment"].update(holdout_share=0.0, exploration_share=0.0)
    p["arbitration"]["priority"] = "uplift * value * channel_weight"
    p["channels"]["sms"]["weight"] = 2.0
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    a = yaml.safe_load((PROJECT_ROOT / "serving" / "actions.yaml").read_text())
    for action in a["actions"]:
        action["uplift_model"] = f"nba-uplift-{action['id']}"
    (tmp_path / "a.yaml").write_text(yaml.safe_dump(a, sort_keys=False))
    cat = load_catalog(PROJECT_ROOT, FEATURES, actions=tmp_path / "a.yaml", policies=tmp_path / "p.yaml")
    assert cat.uses_uplift
    env = _batch([_customer(), _customer()])
    j = {x: i for i, x in enumerate(cat.action_ids)}
    P = np.full((2, NA), 0.5)
    U = np.zeros((2, NA))
    U[:, j["mobile_app"]] = 0.10  # 0.10 x 12 = 1.2
    U[:, j["travel_notification"]] = 0.20  # 0.20 x 4 = 0.8
    d = decide(cat, env, 2, channel=np.array([cat.channel_names.index("web"), cat.channel_names.index("sms")]),
               now=np.full(2, NOW), history=ContactHistory.empty(), scorer=MatrixScorer(P, U),
               customer_ids=np.arange(2), decision_keys=np.arange(2) + 1, k=1)
    assert cat.action_ids[int(d.shown[0])] == "mobile_app"
    assert d.priority[0, j["mobile_app"]] == pytest.approx(1.2)
    assert d.priority[1, j["mobile_app"]] == pytest.approx(2.4)  # the sms weight doubles it
    assert d.priority[0, j["rewards_card"]] == pytest.approx(0.0)  # no uplift, no priority
