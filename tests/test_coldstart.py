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
