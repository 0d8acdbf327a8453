"""Cold start that borrows strength: a pooled prior and Thompson sampling for immature actions.

An action with no trained model (a catalog action marked `cold_start: true` whose model has
no @champion yet: `nba.serving.bundle` serves it cold) has no propensity to trust, and gets one
trained on the log only once it has `cold_start.mature_positives` accepted outcomes (evaluation/
gates.yaml; the closed loop's retraining waits for them, then the gates decide). Its
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

from collections.abc import Callable, Sequence
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


@dataclass(frozen=True)
class ColdStart:
    """The immature actions of a catalog and their posteriors, as the core reads them.

    `cold` (A,) bool: the actions scored from their posterior (no model, or one trained on too
    few positives); `alpha`, `beta` (A,): their Beta posteriors (ignored where not cold);
    `draws`: posterior draws per decision for the Monte Carlo logged probability."""

    cold: np.ndarray
    alpha: np.ndarray
    beta: np.ndarray
    draws: int = 4000

    def __post_init__(self) -> None:
        c = self.cold
        if not (np.asarray(self.alpha)[c] > 0).all() or not (np.asarray(self.beta)[c] > 0).all():
            raise ValueError("a cold action's posterior needs alpha > 0 and beta > 0")
        if self.draws < 1:
            raise ValueError(f"thompson draws = {self.draws}: expected at least 1")

    @property
    def mean(self) -> np.ndarray:
        """(A,) the posterior means: the P the arbitration ranks and the log records."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.cold, self.alpha / (self.alpha + self.beta), np.nan)


def posteriors(successes: np.ndarray, trials: np.ndarray, cold: np.ndarray, issue: Sequence[str],
               group: Sequence[str], strength: float, draws: int) -> ColdStart:
    """The `ColdStart` of a catalog from every action's logged (successes, trials): each cold
    action's pooled prior (from the other actions) updated with its own outcomes."""
    s = np.asarray(successes, dtype=np.float64)
    n = np.asarray(trials, dtype=np.float64)
    cold = np.asarray(cold, dtype=bool)
    alpha = np.ones(len(s))
    beta = np.ones(len(s))
    for j in np.flatnonzero(cold):
        post = posterior(pooled_prior(int(j), s, n, issue, group, strength), s[j], n[j])
        alpha[j], beta[j] = post.alpha, post.beta
    return ColdStart(cold, alpha, beta, int(draws))


def seed_of(keys: np.ndarray) -> np.random.Generator:
    """A generator seeded from the decisions' 64-bit keys (the same decisions, the same draws)."""
    words = np.ascontiguousarray(np.asarray(keys, dtype=np.int64)).view(np.uint32)
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(words.tolist())))


def thompson_counts(rng: np.random.Generator, fixed: np.ndarray, pair_row: np.ndarray, pair_col: np.ndarray,
                    alpha: np.ndarray, beta: np.ndarray, priority_of: Callable[[np.ndarray, np.ndarray], np.ndarray],
                    threshold: float, draws: int, budget: int = 4_000_000) -> tuple[np.ndarray, np.ndarray]:
    """Thompson sampling among the candidates of r decisions.

    `fixed` (r, A): the priority of each mature candidate (-inf where not a candidate, immature,
    or at or below the do-nothing threshold); the immature candidates are the pairs
    (`pair_row`, `pair_col`) with Beta(`alpha`, `beta`) posteriors per pair; `priority_of(theta,
    pairs)` gives their priority for drawn propensities `theta` (flattened (d, pairs) ->
    same shape; `pairs` the pair index of each theta). A drawn priority at or below `threshold`
    cannot win.

    Returns the first draw's winner per row (its choice: an action index, or -1 for "do
    nothing") and the (r, A + 1) share of the draws each action won (the last column: "do
    nothing"), the Monte Carlo estimate of the probability the Thompson rule shows it. Draws
    are taken `budget` // (r x A) at a time, so memory stays bounded."""
    r, A = fixed.shape
    counts = np.zeros((r, A + 1))
    choice = np.full(r, -1, dtype=np.int64)
    if r == 0:
        return choice, counts
    # each row's best mature candidate (one number per row: the immature draws race against it)
    best_col = fixed.argmax(axis=1)  # the first maximum: ties by catalog order, as the arbitration
    best = fixed[np.arange(r), best_col]
    best_col = np.where(np.isfinite(best), best_col, A)  # A: "do nothing"
    # slot k of a row holds its k-th immature pair (catalog order)
    order = np.lexsort((pair_col, pair_row))
    pair_row, pair_col = pair_row[order], pair_col[order]
    alpha, beta = np.asarray(alpha)[order], np.asarray(beta)[order]
    first = np.searchsorted(pair_row, pair_row, side="left")
    slot = np.arange(pair_row.size) - first
    K = int(slot.max()) + 1 if slot.size else 0
    col_of = np.full((r, K + 1), A, dtype=np.int64)  # column 0: the best mature candidate
    col_of[:, 0] = best_col
    col_of[pair_row, slot + 1] = pair_col
    p = pair_row.size
    rows = np.arange(r)
    step = max(1, budget // max(1, r * (K + 1)))
    done = 0
    while done < draws:
        d = min(step, draws - done)
        theta = rng.beta(alpha[None, :], beta[None, :], size=(d, p))
        pri = np.asarray(priority_of(theta.ravel(), np.tile(np.arange(p), d)), dtype=np.float64).reshape(d, p)
        pri = np.where(pri > threshold, pri, -np.inf)
        race = np.full((d, r, K + 1), -np.inf)
        race[:, :, 0] = best
        race[:, pair_row, slot + 1] = pri
        k = race.argmax(axis=2)
        top = np.take_along_axis(race, k[..., None], axis=2)[..., 0]
        win = np.where(np.isfinite(top), col_of[rows[None, :], k], A)
        if done == 0:
            choice = np.where(win[0] == A, -1, win[0])
        counts += np.bincount((rows[None, :] * (A + 1) + win).ravel(), minlength=r * (A + 1)).reshape(r, A + 1)
        done += d
    return choice, counts / draws
