"""Cold start that borrows strength: a pooled prior and Thompson sampling for immature actions.

An action with no trained model, or with too few accepted outcomes in the log (fewer than
`cold_start.mature_positives` of evaluation/gates.yaml), has no propensity to trust. Its
acceptance probability gets a Beta prior pooled over the actions it resembles (partial
pooling, `pooled_prior`): every action's rate, shrunk into its issue's, shrunk into its group's,
each level weighing `prior_strength` pseudo-observations against its own data; the action's
own logged outcomes then update it (`posterior`). Decisions draw its P from the posterior
(Thompson sampling, `thompson`): the action is shown when its drawn priority beats the best
mature candidate's, which explores it exactly as much as its uncertainty warrants, and stops
once it matures (a model trained on the log then takes over behind the gates).

The logged probability stays an honest propensity: the probability that the Thompson rule
shows the action is P(the action's drawn priority is the highest), which has no closed form
with several immature candidates; it is estimated from `draws` posterior draws per decision
(the shown action is the first draw's winner, so it is always among the winners and its
estimate is > 0; standard error at most 0.5 / sqrt(draws)). The experiment layer then mixes
it with exploration as for any winner: P = (1 - eps) P_thompson + eps / n_candidates.

Pure numpy: draws come from a generator the caller seeds (from the decision keys).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class BetaPrior:
    alpha: float
    beta: float

    def __post_init__(self) -> None:
        if not (self.alpha > 0 and self.beta > 0):
            raise ValueError(f"a Beta prior needs alpha > 0 and beta > 0 (got {self.alpha}, {self.beta})")

    @property
    def mean(self) -> float:
        return self.alpha / (self.alpha + self.beta)


def pooled_prior(action: int, successes: np.ndarray, trials: np.ndarray, issue: Sequence[str],
                 group: Sequence[str], strength: float) -> BetaPrior:
    """The Beta prior of `action` from every action's logged (successes, trials): the rate of all
    actions, the issue's rate shrunk towards it, the group's (within the issue) shrunk towards
    the issue's, each by `strength` pseudo-observations; the action's own data are left out
    (they enter through `posterior`). Prior = Beta(strength * m, strength * (1 - m))."""
    s = np.asarray(successes, dtype=np.float64)
    n = np.asarray(trials, dtype=np.float64)
    others = np.arange(len(s)) != action
    total_n = n[others].sum()
    m_all = (s[others].sum() + 1.0) / (total_n + 2.0)  # Laplace: defined with no data at all
    same_issue = others & (np.asarray(issue) == issue[action])
    m_issue = (s[same_issue].sum() + strength * m_all) / (n[same_issue].sum() + strength)
    same_group = same_issue & (np.asarray(group) == group[action])
    m_group = (s[same_group].sum() + strength * m_issue) / (n[same_group].sum() + strength)
    m = float(np.clip(m_group, 1e-4, 1 - 1e-4))
    return BetaPrior(strength * m, strength * (1.0 - m))


def posterior(prior: BetaPrior, successes: float, trials: float) -> BetaPrior:
    return BetaPrior(prior.alpha + successes, prior.beta + (trials - successes))


def is_mature(positives: int, mature_positives: int) -> bool:
    return positives >= mature_positives


def thompson(rng: np.random.Generator, alpha: np.ndarray, beta: np.ndarray, multiplier: np.ndarray,
             candidate: np.ndarray, fixed: np.ndarray, *, draws: int) -> tuple[np.ndarray, np.ndarray]:
    """Thompson choice among candidates for n decisions.

    `alpha`, `beta` (A,): the posterior of each action (used where `fixed` is NaN, the immature
    actions); `multiplier` (n, A): what P is multiplied by in the priority (V x (1 + L));
    `candidate` (n, A) bool; `fixed` (n, A): the priority of mature actions (NaN for immature).
    Returns the chosen action per row (-1 without candidates) and the Monte Carlo estimate of
    the probability that the Thompson rule chooses it (over `draws` draws, the first of which
    made the choice)."""
    n, A = candidate.shape
    immature = np.isnan(fixed)
    base = np.where(candidate & ~immature, fixed, -np.inf)  # (n, A)
    theta = rng.beta(alpha[None, None, :], beta[None, None, :], size=(draws, n, A))
    pri = np.where((candidate & immature)[None], theta * multiplier[None], base[None])  # (draws, n, A)
    winner = pri.argmax(axis=2)  # first maximum: ties by catalog order, as the arbitration
    none = ~np.isfinite(np.take_along_axis(pri, winner[..., None], axis=2)[..., 0])
    winner = np.where(none, -1, winner)
    choice = winner[0]
    prob = (winner == choice[None]).mean(axis=0)
    return choice, prob
