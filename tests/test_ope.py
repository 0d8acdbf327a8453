"""Off-policy value: IPS, SNIPS and DR checked by hand on five rows, bad input refused or
flagged, the true value of target policies recovered from the simulator's logged decisions,
and `nba evaluate ope` as a real process."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from nba.config import gates_path, load_gates
from nba.evaluation import ope
from nba.evaluation.ope import OpeInputError
from tests.conftest import PROJECT_ROOT
from tests.constants import SEED
from tests.test_cli import assert_one_line_error, run
from tests.test_incrementality import cli_env  # noqa: F401  (fixture)

LIMITS = load_gates(gates_path(PROJECT_ROOT)).evaluation
Z = 1.959963984540054

# Five logged decisions over two actions.
ACTION = [0, 1, 0, 1, 0]
REWARD = [1.0, 0.0, 0.0, 1.0, 1.0]
MU = [0.5, 0.5, 0.25, 0.75, 0.5]
TARGET = [[1.0, 0.0], [0.5, 0.5], [0.0, 1.0], [0.2, 0.8], [1.0, 0.0]]


def _sd_mean(terms: list[float]) -> float:
    m = sum(terms) / len(terms)
    return math.sqrt(sum((t - m) ** 2 for t in terms) / (len(terms) - 1) / len(terms))


def test_ips_snips_dr_by_hand():
    pv = ope.off_policy_value(REWARD, ACTION, MU, TARGET, policy="hand")
    w = [1 / 0.5, 0.5 / 0.5, 0 / 0.25, 0.8 / 0.75, 1 / 0.5]  # pi(a_i | x_i) / mu_i
    ips_terms = [wi * ri for wi, ri in zip(w, REWARD, strict=True)]  # 2, 0, 0, 16/15, 2
    ips = pv.estimate("ips")
    assert ips.value == pytest.approx((2 + 16 / 15 + 2) / 5)
    assert ips.se == pytest.approx(_sd_mean(ips_terms))
    assert (ips.ci_low, ips.ci_high) == pytest.approx((ips.value - Z * ips.se, ips.value + Z * ips.se))

    snips = pv.estimate("snips")
    v = (2 + 16 / 15 + 2) / sum(w)
    assert snips.value == pytest.approx(v)
    psi = [wi * (ri - v) / (sum(w) / 5) for wi, ri in zip(w, REWARD, strict=True)]
    assert snips.se == pytest.approx(_sd_mean(psi))

    # DR with q-hat = each action's mean reward: action 0: (1 + 0 + 1) / 3, action 1: (0 + 1) / 2
    q0, q1 = 2 / 3, 1 / 2
    dr_terms = [
        1.0 * q0 + 2 * (1 - q0),
        0.5 * q0 + 0.5 * q1 + 1 * (0 - q1),
        1.0 * q1 + 0 * (0 - q0),
        0.2 * q0 + 0.8 * q1 + (0.8 / 0.75) * (1 - q1),
        1.0 * q0 + 2 * (1 - q0),
    ]
    dr = pv.estimate("dr")
    assert dr.value == pytest.approx(sum(dr_terms) / 5) and dr.se == pytest.approx(_sd_mean(dr_terms))

    logged = pv.estimate("logged")
    assert logged.value == pytest.approx(0.6) and logged.se == pytest.approx(_sd_mean(REWARD))
    d = pv.diagnostics
    assert d.ess == pytest.approx(sum(w) ** 2 / sum(x * x for x in w))
    assert d.max_weight == pytest.approx(2.0) and d.mean_weight == pytest.approx(sum(w) / 5)
    assert d.unsupported_share == 0.0 and not d.support_known


def test_a_supplied_q_hat_and_a_perfect_reward_model():
    # with q = the true reward of every (row, action), DR is exact whatever the weights
    truth = np.array([[1.0, 0.0], [0.3, 0.0], [0.0, 0.0], [0.0, 1.0], [1.0, 0.2]])
    reward = truth[np.arange(5), ACTION]
    pv = ope.off_policy_value(reward, ACTION, MU, TARGET, q_hat=truth)
    assert pv.estimate("dr").value == pytest.approx(float((np.array(TARGET) * truth).sum(axis=1).mean()))
    assert pv.estimate("dr").se == pytest.approx(float(np.std((np.array(TARGET) * truth).sum(axis=1), ddof=1)
                                                       / math.sqrt(5)))


def test_invalid_input_is_refused_with_the_row():
    with pytest.raises(OpeInputError, match=r"logging probability: 1 row\(s\) invalid, first at row 2 \(0\)"):
        ope.off_policy_value(REWARD, ACTION, [0.5, 0.5, 0.0, 0.75, 0.5], TARGET)
    with pytest.raises(OpeInputError, match=r"logging probability: 1 row\(s\) invalid, first at row 1; expected"):
        ope.off_policy_value(REWARD, ACTION, [0.5, float("nan"), 0.25, 0.75, 0.5], TARGET)
    with pytest.raises(OpeInputError, match=r"do not sum to 1 \(row 1: 0\.9\)"):
        ope.off_policy_value(REWARD, ACTION, MU, [[1, 0], [0.5, 0.4], [0, 1], [0.2, 0.8], [1, 0]])
    with pytest.raises(OpeInputError, match="reward"):
        ope.off_policy_value([1, 0, float("nan"), 1, 1], ACTION, MU, TARGET)
    with pytest.raises(OpeInputError, match="no logged rows"):
        ope.off_policy_value([], [], [], np.zeros((0, 2)))


def test_thin_or_unsupported_estimates_are_flagged():
    rng = np.random.default_rng(0)
    n = 1_000
    action = rng.integers(0, 2, n)  # actions 0 and 1 logged uniformly; action 2 never
    reward = rng.random(n) < 0.3
    mu = np.full(n, 0.5)
    # support violation: a tenth of the target's mass on the never-logged action 2
    target = np.tile([0.45, 0.45, 0.10], (n, 1))
    pv = ope.off_policy_value(reward, action, mu, target, limits=LIMITS, action_names=["a", "b", "c"])
    assert pv.diagnostics.unsupported_share == pytest.approx(0.10)
    assert not pv.reliable and not pv.estimate("ips").reliable and not pv.estimate("dr").reliable
    assert any("10.0% of the target policy's probability" in f and "never logged: c" in f for f in pv.diagnostics.flags)
    assert pv.estimate("logged").reliable  # the logged value does not depend on the target

    # tiny effective sample size: the target follows one rare logged action
    mu2 = np.where(np.arange(n) < 5, 0.001, 0.999)
    action2 = np.where(np.arange(n) < 5, 1, 0)
    tiny = ope.off_policy_value(reward, action2, mu2, np.tile([0.0, 1.0], (n, 1)), limits=LIMITS)
    assert tiny.diagnostics.ess == pytest.approx(5.0)
    assert any("effective sample size 5.0" in f and "min_ess 100" in f for f in tiny.diagnostics.flags)

    # few rows
    few = ope.off_policy_value(REWARD, ACTION, MU, TARGET, limits=LIMITS)
    assert any("5 logged rows, below min_rows 200" in f for f in few.diagnostics.flags)

    # a deterministic logging policy supports nothing else: rows logged with probability 1
    det = ope.off_policy_value([1, 0, 1], [0, 0, 0], [1.0, 1.0, 1.0], [[0.5, 0.5]] * 3, limits=LIMITS)
    assert det.diagnostics.unsupported_share == pytest.approx(0.5)
    # an exact support matrix replaces the lower bound
    exact = ope.off_policy_value(reward, action, mu, target, support=np.tile([True, True, False], (n, 1)))
    assert exact.diagnostics.support_known and exact.diagnostics.unsupported_share == pytest.approx(0.10)


def test_greedy_and_uniform_targets():
    score = np.array([[0.2, 0.9, np.nan], [0.5, 0.5, 0.1], [0.0, 0.0, 0.0]])
    avail = np.array([[True, True, False], [True, True, True], [False, False, False]])
    g = ope.greedy_target(score, avail, fallback=2)
    np.testing.assert_array_equal(g, [[0, 1, 0], [1, 0, 0], [0, 0, 1]])  # tie: the first column
    t = ope.greedy_target(score, avail, fallback=2, threshold=0.6)
    np.testing.assert_array_equal(t.argmax(axis=1), [1, 2, 2])
    u = ope.uniform_target(avail[:2])
    np.testing.assert_allclose(u, [[0.5, 0.5, 0], [1 / 3, 1 / 3, 1 / 3]])
    with pytest.raises(OpeInputError, match="no available action"):
        ope.uniform_target(avail)


# --- truth recovery: the simulator's decisions as a logged bandit -------------------------------


@pytest.fixture(scope="module")
def bandit():
    """The last month's decisions of a simulated bank, whose truth (true P(convert) of every
    action, contacted or not) is known. The logging policy mixes the legacy softmax (80 %, always
    contacts) and exploration (20 %: a uniform eligible action, contacted with probability 1/2);
    an arm is (action, contacted), and the mixture's probability of each is rebuilt exactly."""
    from nba.data.simulator import SimulationConfig, simulate
    from nba.schemas import CAMPAIGN_ACTIONS as ACTIONS

    # the campaign's log (its ten actions), without behavioural events: the truth table is its truth
    cfg = SimulationConfig(customers=20_000, seed=SEED, months=2, event_months=0)
    sim = simulate(cfg)
    truth, inter = sim.truth, sim.interactions[sim.interactions["action_id"].isin(ACTIONS)]
    last = inter[inter["event_timestamp"] >= truth["event_timestamp"].iloc[0]].reset_index(drop=True)
    wide = {c: truth.pivot(index="customer_id", columns="action_id", values=c)[list(ACTIONS)].loc[last["customer_id"]]
            .to_numpy() for c in ("true_p_treated", "true_p_control", "eligible")}
    pt, pc, elig = wide["true_p_treated"], wide["true_p_control"], wide["eligible"].astype(bool)
    k = len(ACTIONS)
    logit = np.where(elig, np.log(pt / (1 - pt)), -np.inf)
    soft = np.exp(logit - logit.max(axis=1, keepdims=True))
    soft /= soft.sum(axis=1, keepdims=True)
    n_elig = elig.sum(axis=1, keepdims=True)
    explore = cfg.explore_share
    # arms: 2j = action j not contacted, 2j + 1 = contacted
    mu = np.zeros((len(last), 2 * k))
    mu[:, 1::2] = (1 - explore) * soft + explore * 0.5 * elig / n_elig
    mu[:, 0::2] = explore * 0.5 * elig / n_elig
    action = pd.Categorical(last["action_id"].astype(str), categories=ACTIONS).codes.astype(np.int64)
    arm = 2 * action + last["treated"].to_numpy()
    rows = np.arange(len(last))
    # the rebuilt conditional probabilities are the ones the simulator logged
    legacy = (last["policy"] == "legacy").to_numpy()
    np.testing.assert_allclose(soft[rows, action][legacy], last["assignment_probability"][legacy], rtol=1e-9)
    np.testing.assert_allclose((0.5 / n_elig[:, 0])[~legacy], last["assignment_probability"][~legacy], rtol=1e-12)
    reward_of_arm = np.zeros((len(last), 2 * k))
    reward_of_arm[:, 1::2], reward_of_arm[:, 0::2] = pt, pc
    return {"reward": last["converted"].to_numpy(np.float64), "arm": arm, "mu": mu, "p": mu[rows, arm],
            "truth": reward_of_arm, "elig": elig, "customer": last["customer_id"].to_numpy(), "k": k,
            "uplift": pt - pc}


def _policies(b) -> dict[str, np.ndarray]:
    n, k = len(b["reward"]), b["k"]
    uniform = np.zeros((n, 2 * k))
    uniform[:, 1::2] = b["elig"] / b["elig"].sum(axis=1, keepdims=True)
    best = np.zeros((n, 2 * k))
    best[np.arange(n), 2 * np.argmax(np.where(b["elig"], b["uplift"], -np.inf), axis=1) + 1] = 1.0
    silent = np.zeros((n, 2 * k))
    silent[:, 0::2] = b["elig"] / b["elig"].sum(axis=1, keepdims=True)
    return {"uniform contact": uniform, "contact the highest true uplift": best, "contact nobody": silent}


@pytest.mark.parametrize("name", ["uniform contact", "contact the highest true uplift", "contact nobody"])
def test_ips_and_dr_recover_the_true_value_of_a_target_policy(bandit, name: str):
    target = _policies(bandit)[name]
    true_value = float((target * bandit["truth"]).sum(axis=1).mean())
    pv = ope.off_policy_value(bandit["reward"], bandit["arm"], bandit["p"], target, policy=name,
                              support=bandit["mu"] > 0, clusters=bandit["customer"], limits=LIMITS)
    assert pv.diagnostics.unsupported_share == 0.0 and pv.reliable, pv.diagnostics
    for estimator in ("ips", "snips", "dr"):
        e = pv.estimate(estimator)
        assert e.ci_low <= true_value <= e.ci_high, (estimator, e, true_value)
        assert abs(e.value - true_value) < 0.25 * true_value + 0.005
    # the logged policy's own value is another policy's: reading it as the target's would be wrong
    logged = pv.estimate("logged")
    assert logged.value == pytest.approx(bandit["reward"].mean())
    assert not logged.ci_low <= true_value <= logged.ci_high


def test_the_uplift_policy_beats_uniform_contact_as_the_truth_says(bandit):
    pols = _policies(bandit)
    vals = {name: ope.off_policy_value(bandit["reward"], bandit["arm"], bandit["p"], t).estimate("dr").value
            for name, t in pols.items()}
    truth = {name: float((t * bandit["truth"]).sum(axis=1).mean()) for name, t in pols.items()}
    assert truth["contact the highest true uplift"] > truth["uniform contact"] > truth["contact nobody"]
    assert vals["contact the highest true uplift"] > vals["uniform contact"] > vals["contact nobody"]


# --- the command line ---------------------------------------------------------------------------


@pytest.fixture
def logged_csv(tmp_path: Path) -> Path:
    path = tmp_path / "logged.csv"
    pd.DataFrame({"act": ["a", "b", "a", "b", "a"], "r": REWARD, "p": MU}).to_csv(path, index=False)
    return path


def test_cli_uniform_and_a_long_target_file(cli_env, tmp_path: Path, logged_csv: Path):  # noqa: F811
    out = tmp_path / "ope.json"
    proc = run(["evaluate", "ope", "--data", str(logged_csv), "--action-column", "act", "--reward-column", "r",
                "--propensity-column", "p", "--target", "uniform", "--json", str(out)], cli_env)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(out.read_text())
    est = {e["estimator"]: e for e in doc["estimates"]}
    assert set(est) == {"ips", "snips", "dr", "logged"}
    for e in est.values():
        assert {"estimator", "value", "ci_low", "ci_high", "flags", "reliable"} <= set(e)
    w = [0.5 / m for m in MU]
    assert est["ips"]["value"] == pytest.approx(sum(wi * r for wi, r in zip(w, REWARD, strict=True)) / 5)
    assert any("below min_rows 200" in f for f in est["ips"]["flags"]) and not est["ips"]["reliable"]

    # the hand-checked target, as a long file, plus mass on an action never logged ("c")
    target = tmp_path / "target.csv"
    long = [(i, a, p) for i, row in enumerate(TARGET) for a, p in zip("ab", row, strict=True) if p > 0]
    pd.DataFrame(long, columns=["row", "action", "probability"]).to_csv(target, index=False)
    proc = run(["evaluate", "ope", "--data", str(logged_csv), "--action-column", "act", "--reward-column", "r",
                "--propensity-column", "p", "--target", str(target), "--json", str(out)], cli_env)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(out.read_text())
    ips = next(e for e in doc["estimates"] if e["estimator"] == "ips")
    assert ips["value"] == pytest.approx((2 + 16 / 15 + 2) / 5)

    shifted = tmp_path / "shifted.csv"
    pd.DataFrame({"a": [0.5] * 5, "b": [0.3] * 5, "c": [0.2] * 5}).to_csv(shifted, index=False)  # wide format
    proc = run(["evaluate", "ope", "--data", str(logged_csv), "--action-column", "act", "--reward-column", "r",
                "--propensity-column", "p", "--target", str(shifted), "--json", str(out)], cli_env)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(out.read_text())
    assert doc["diagnostics"]["unsupported_share"] == pytest.approx(0.2)
    assert any("never logged: c" in f for f in doc["diagnostics"]["flags"])
    assert "UNRELIABLE" in proc.stdout


def test_cli_refuses_zero_propensities_and_bad_targets(cli_env, tmp_path: Path, logged_csv: Path):  # noqa: F811
    bad = tmp_path / "bad.csv"
    pd.DataFrame({"act": ["a", "b"], "r": [1, 0], "p": [0.5, 0.0]}).to_csv(bad, index=False)
    proc = run(["evaluate", "ope", "--data", str(bad), "--action-column", "act", "--reward-column", "r",
                "--propensity-column", "p", "--target", "uniform"], cli_env)
    assert_one_line_error(proc, str(bad), "column 'p'", "row 1: 0", "(0, 1]")
    target = tmp_path / "t.csv"
    pd.DataFrame({"a": [0.5, 0.5], "b": [0.2, 0.5]}).to_csv(target, index=False)  # row 0 sums to 0.7, rows 2 of 5
    proc = run(["evaluate", "ope", "--data", str(logged_csv), "--action-column", "act", "--reward-column", "r",
                "--propensity-column", "p", "--target", str(target)], cli_env)
    assert_one_line_error(proc, str(target), "2 rows but --data has 5")
    sums = tmp_path / "sums.csv"
    pd.DataFrame({"a": [0.5] * 5, "b": [0.2] + [0.5] * 4}).to_csv(sums, index=False)
    proc = run(["evaluate", "ope", "--data", str(logged_csv), "--action-column", "act", "--reward-column", "r",
                "--propensity-column", "p", "--target", str(sums)], cli_env)
    assert_one_line_error(proc, str(sums), "do not sum to 1 (row 0: 0.7)")
