"""Cold start: the pooled prior, the Thompson choice and its logged probability, convergence."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from nba.decisioning.coldstart import BetaPrior, is_mature, pooled_prior, posterior, thompson

ISSUE = ["sales", "sales", "sales", "service", "service"]
GROUP = ["cards", "cards", "lending", "service", "service"]


def test_the_prior_borrows_from_the_group_then_the_issue_then_everyone():
    s = np.array([0, 300, 5, 20, 20])  # action 0 is new: no data
    n = np.array([0, 1000, 1000, 1000, 1000])
    prior = pooled_prior(0, s, n, ISSUE, GROUP, strength=20)
    # its group (cards: 30 %) dominates, pulled a little towards sales (15.25 %) and everyone
    assert 0.25 < prior.mean < 0.30
    assert prior.alpha + prior.beta == pytest.approx(20)
    # an action alone in its group takes its issue's rate, shrunk towards everyone's
    lending = pooled_prior(2, s, n, ISSUE, GROUP, strength=20)
    everyone = (300 + 20 + 20 + 1) / (3000 + 2)  # every other action, Laplace-smoothed
    issue_rate = (300 + 20 * everyone) / (1000 + 20)  # sales without lending: the cards actions
    assert lending.mean == pytest.approx(issue_rate, rel=1e-9)
    # the action's own data never enter its prior (they are the likelihood)
    s2 = s.copy()
    s2[0], n[0] = 0, 500
    assert pooled_prior(0, s2, n, ISSUE, GROUP, strength=20).mean == pytest.approx(prior.mean)
    with pytest.raises(ValueError, match="alpha > 0"):
        BetaPrior(0.0, 1.0)
    assert is_mature(30, 30) and not is_mature(29, 30)


def test_the_thompson_probability_matches_the_closed_form():
    # one immature action (Beta(3, 17), value x 10) against a mature one of fixed priority 1.2:
    # P(show the new one) = P(10 theta > 1.2) = 1 - BetaCDF(0.12)
    rng = np.random.default_rng(1)
    n = 200
    alpha, beta = np.array([3.0, 1.0]), np.array([17.0, 1.0])
    mult = np.tile([10.0, 1.0], (n, 1))
    cand = np.ones((n, 2), dtype=bool)
    fixed = np.tile([np.nan, 1.2], (n, 1))
    choice, prob = thompson(rng, alpha, beta, mult, cand, fixed, draws=4000)
    exact = 1 - stats.beta.cdf(0.12, 3, 17)
    p_new = np.where(choice == 0, prob, 1 - prob)
    se = np.sqrt(exact * (1 - exact) / 4000)
    assert np.abs(p_new - exact).max() < 5 * se
    # the choice itself follows the same law (the first draw made it)
    assert abs((choice == 0).mean() - exact) < 4 * np.sqrt(exact * (1 - exact) / n)
    # a row without candidates chooses nothing
    cand[0] = False
    choice, _ = thompson(rng, alpha, beta, mult, cand, fixed, draws=500)
    assert choice[0] == -1


def test_an_immature_action_converges_to_its_truth_and_ips_stays_unbiased():
    """A new action (true acceptance 0.12) from a prior pooled at 0.05, against a mature action
    of fixed priority: Thompson keeps showing it while it might win; the posterior mean reaches
    the truth, and IPS with the Monte Carlo logged probabilities recovers its rate."""
    rng = np.random.default_rng(7)
    truth, value, rival = 0.12, 10.0, 1.0  # shown while 10 theta > 1: theta > 0.1
    post = BetaPrior(1.0, 19.0)  # pooled prior mean 0.05
    ips_terms, shows = [], 0
    for _ in range(40):  # 40 rounds of 100 decisions, the posterior updated between rounds
        n = 100
        choice, prob = thompson(rng, np.array([post.alpha, 1.0]), np.array([post.beta, 1.0]),
                                np.tile([value, 1.0], (n, 1)), np.ones((n, 2), dtype=bool),
                                np.tile([np.nan, rival], (n, 1)), draws=2000)
        shown = choice == 0
        accepted = rng.random(n) < truth
        post = posterior(post, float((shown & accepted).sum()), float(shown.sum()))
        shows += int(shown.sum())
        ips_terms += list(np.where(shown, accepted / prob, 0.0))
    assert shows > 1000  # it kept being explored: its upside beat the rival
    assert abs(post.mean - truth) < 0.02
    est = np.mean(ips_terms)
    se = np.std(ips_terms) / np.sqrt(len(ips_terms))
    assert abs(est - truth) < 3 * se + 0.005


# --- wired into the decisioning core --------------------------------------------------------


class _ColdScorer:
    """Known P for the mature actions (a matrix), a cold-start state for the others: the shape
    `nba.serving.models.ModelSet` gives the core."""

    def __init__(self, P, cold_start):
        from nba.decisioning.core import MatrixScorer

        self._m = MatrixScorer(np.asarray(P, dtype=np.float64))
        self.cold_start = cold_start

    def propensity(self, env, n, rows, cols):
        p = self._m.propensity(env, n, rows, cols)
        cold = self.cold_start.cold[cols]
        p[cold] = self.cold_start.mean[cols[cold]]
        return p

    def uplift(self, env, n, rows, cols):
        return self._m.uplift(env, n, rows, cols)


def _marie_exploring(tmp_path, share=0.1):
    import yaml

    from nba.catalog import load_catalog
    from tests.conftest import PROJECT_ROOT

    marie = PROJECT_ROOT / "tests" / "data" / "marie"
    pol = yaml.safe_load((marie / "policies.yaml").read_text())
    pol["experiment"]["exploration_share"] = share
    (tmp_path / "policies.yaml").write_text(yaml.safe_dump(pol))
    return load_catalog(PROJECT_ROOT, {"has_mortgage", "consent_web"}, actions=marie / "actions.yaml",
                        policies=tmp_path / "policies.yaml")


def test_the_core_explores_a_cold_action_by_thompson_and_logs_its_probability(tmp_path):
    """The mission's customer Marie, 3,000 times: finance_course has no model (posterior
    Beta(3, 17)), the best mature action is sick_leave_support at priority 29.44. The core shows
    finance_course when 135 x 1.2 x theta beats it, and logs P = (1 - eps) P(win) + eps / 9."""
    from nba.decisioning.coldstart import ColdStart
    from nba.decisioning.core import GROUP_CODE, ContactHistory, decide

    cat = _marie_exploring(tmp_path)
    eps = cat.experiment.exploration_share
    fc, sick = cat.action_ids.index("finance_course"), cat.action_ids.index("sick_leave_support")
    n = 3000
    P = np.tile([0.003, 0.5, 0.001, 0.04, 0.03, 0.64, 0.14, 0.05, 0.03, 0.21], (n, 1))
    cold = np.zeros(len(cat.actions), dtype=bool)
    cold[fc] = True
    alpha, beta = np.ones(len(cold)), np.ones(len(cold))
    alpha[fc], beta[fc] = 3.0, 17.0
    scorer = _ColdScorer(P, ColdStart(cold, alpha, beta, draws=4000))
    env = {"has_mortgage": np.zeros(n), "consent_web": np.ones(n)}

    def run(keys):
        return decide(cat, env, n, channel=np.zeros(n, dtype=np.int64), now=np.full(n, 1.76e9),
                      history=ContactHistory.empty(), scorer=scorer, customer_ids=np.arange(n),
                      decision_keys=keys, k=3)

    keys = np.arange(n, dtype=np.int64) * 7919 + 11
    d = run(keys)
    win = 1 - stats.beta.cdf(29.44 / (135 * 1.2), 3, 17)  # P(the drawn priority beats the mature best)
    assert 0.2 < win < 0.5
    n_alive = 9  # home_equity_loan needs a mortgage
    assert (d.n_candidates == n_alive).all()
    # the P the arbitration ranks and the log records is the posterior mean
    assert np.allclose(d.propensity[:, fc], 3 / 20)
    nba = d.group == GROUP_CODE["nba"]
    show_fc, show_sick = nba & (d.shown == fc), nba & (d.shown == sick)
    assert set(np.unique(d.shown[nba])) == {fc, sick}  # nothing else can win a draw here
    mc_se = 0.5 / np.sqrt(4000)
    assert np.abs(d.probability[show_fc] - ((1 - eps) * win + eps / n_alive)).max() < 5 * mc_se
    assert np.abs(d.probability[show_sick] - ((1 - eps) * (1 - win) + eps / n_alive)).max() < 5 * mc_se
    # the choice follows the same law, and inverse-probability weights add up to the decisions
    expected = (1 - eps) * win + eps / n_alive
    assert abs((d.shown == fc).mean() - expected) < 4 * np.sqrt(expected * (1 - expected) / n)
    ht = ((d.shown == fc) / d.probability).sum()
    assert abs(ht - n) < 0.1 * n
    # the shown action heads the ranked list; the same decisions draw the same
    assert (d.ranked[:, 0] == d.shown).all()
    again = run(keys)
    assert (again.shown == d.shown).all() and np.array_equal(again.probability, d.probability)
    # without a cold action the choice is the deterministic winner, logged with 1 - eps + eps / n
    warm = decide(cat, env, n, channel=np.zeros(n, dtype=np.int64), now=np.full(n, 1.76e9),
                  history=ContactHistory.empty(), scorer=_ColdScorer(P, ColdStart(np.zeros_like(cold), alpha, beta)),
                  customer_ids=np.arange(n), decision_keys=keys, k=3)
    on = warm.group == GROUP_CODE["nba"]
    assert (warm.shown[on] == sick).all() and np.allclose(warm.probability[on], 1 - eps + eps / n_alive)


def test_the_loop_catalog_leaves_out_unread_uplift_and_brings_a_new_action_in_cold(tmp_path):
    """The loop's own strategy copy: no uplift model the priority does not read (the 20,000 x 6
    run stopped on one), a withheld action absent, then present with `cold_start: true`; the
    catalog compiles and a cold action's unregistered model passes the model check."""
    from nba.catalog import check_models, load_catalog
    from nba.settings import Settings
    from nba.simulation.loop import strategy_copy
    from tests.conftest import PROJECT_ROOT
    from tests.test_catalog import FEATURES

    s = Settings(home=PROJECT_ROOT, work_dir=tmp_path / "var", mlflow_dir=tmp_path / "mlflow", data_dir=None)
    first, notes = strategy_copy(s, PROJECT_ROOT, withhold=("finance_course",))
    assert first.home == (tmp_path / "var" / "loop_home").resolve() and first.work == (tmp_path / "var").resolve()
    assert any("uplift models of" in n for n in notes) and any("withheld" in n for n in notes)
    cat = load_catalog(first.home, FEATURES)
    assert "finance_course" not in cat.action_ids and not any(a.uplift_model for a in cat.actions)
    from nba.triggers import load_triggers

    trig = load_triggers(first.home, cat)  # a trigger proposing the withheld action proposes the others
    assert trig.triggers
    later, notes = strategy_copy(first, PROJECT_ROOT, cold=("finance_course",))
    cat = load_catalog(later.home, FEATURES)
    assert [a.id for a in cat.actions if a.cold_start] == ["finance_course"]
    registered = {m for role, m in cat.models.items() if role != "propensity:finance_course"}
    check_models(cat, registered)  # the cold action may come before its model
    registered.discard("nba-propensity-mortgage")
    with pytest.raises(Exception, match="mortgage"):  # a warm action's missing model still fails
        check_models(cat, registered)


def test_the_bundle_state_gives_each_cold_action_its_pooled_posterior():
    from nba.catalog import load_catalog
    from nba.serving.bundle import cold_start_of
    from tests.conftest import PROJECT_ROOT
    from tests.test_catalog import FEATURES

    cat = load_catalog(PROJECT_ROOT, FEATURES)
    counts = {a: {"successes": 0, "trials": 0} for a in cat.action_ids}
    counts["mobile_app"] = {"successes": 50, "trials": 500}  # the same issue (information), another group
    counts["finance_course"] = {"successes": 6, "trials": 100}
    state = {"cold": ["finance_course"], "counts": counts, "prior_strength": 20.0, "thompson_draws": 4000}
    cs = cold_start_of(cat, state)
    j = cat.action_ids.index("finance_course")
    assert cs.cold.sum() == 1 and cs.cold[j]
    prior = pooled_prior(j, np.array([counts[a]["successes"] for a in cat.action_ids]),
                         np.array([counts[a]["trials"] for a in cat.action_ids]),
                         [a.issue for a in cat.actions], [a.group for a in cat.actions], 20.0)
    assert cs.alpha[j] == pytest.approx(prior.alpha + 6) and cs.beta[j] == pytest.approx(prior.beta + 94)
    assert cs.mean[j] == pytest.approx((prior.alpha + 6) / (20 + 100))
    assert cold_start_of(cat, None) is None and cold_start_of(cat, {**state, "cold": []}) is None


def test_thompson_counts_with_two_cold_candidates_agree_with_the_full_race():
    """Two immature actions and mature ones: the race against each row's best mature candidate
    (what the core runs) gives the same win shares as racing every candidate (`thompson`)."""
    from nba.decisioning.coldstart import seed_of, thompson_counts

    n, A = 50, 4
    rng = np.random.default_rng(3)
    fixed = np.where(rng.random((n, A)) < 0.8, rng.uniform(0.5, 1.5, (n, A)), np.nan)
    fixed[:, [1, 3]] = np.nan  # actions 1 and 3 are immature
    cand = np.ones((n, A), dtype=bool)
    cand[::7, 3] = False  # some rows lack one of them
    mult = np.tile([1.0, 8.0, 1.0, 12.0], (n, 1))
    alpha, beta = np.array([1.0, 2.0, 1.0, 1.5]), np.array([1.0, 18.0, 1.0, 20.0])
    draws = 20_000  # the law of the full race (every candidate drawn or fixed), by brute-force sampling
    theta = rng.beta(alpha, beta, size=(draws, n, A))
    pri = np.where(cand & np.isnan(fixed), theta * mult, np.where(cand, np.nan_to_num(fixed, nan=-np.inf), -np.inf))
    pri = np.where(pri > 0.6, pri, -np.inf)  # the do-nothing threshold
    win = np.where(np.isfinite(pri.max(axis=2)), pri.argmax(axis=2), A)
    law = np.stack([(win == a).mean(axis=0) for a in range(A + 1)], axis=1)
    pr, pc = np.nonzero(cand & np.isnan(fixed))
    mature = np.where(cand & ~np.isnan(fixed) & (np.nan_to_num(fixed, nan=-np.inf) > 0.6), fixed, -np.inf)
    choice, shares = thompson_counts(seed_of(np.arange(n)), mature, pr, pc, alpha[pc], beta[pc],
                                     lambda th, at: th * mult[pr[at], pc[at]], 0.6, 4000, budget=50_000)
    assert np.allclose(shares.sum(axis=1), 1.0)
    assert np.abs(shares - law).max() < 5 * 0.5 / np.sqrt(4000)
    assert ((choice == -1) | (shares[np.arange(n), np.maximum(choice, 0)] > 0)).all()
    assert (shares[::7, 3] == 0).all() and shares[:, 1].max() > 0.05 and shares[:, 3].max() > 0.05
