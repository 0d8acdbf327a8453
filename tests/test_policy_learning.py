"""Policy learning (`nba.training.policy_learning`, `nba.evaluation.policy_experiment`): the DR
scores and a policy's value on hand-computed cases, the policy tree against a brute-force
search, the safe-improvement rule on data with and without a real segment, every bad input
named, and `nba evaluate policy --data FILE` on a CSV written here (the JSON schema)."""

from __future__ import annotations

import json
from itertools import product
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from nba.config import gates_path, load_gates
from nba.errors import ConfigError, NbaError, SchemaError
from nba.evaluation import policy_experiment as pe
from nba.evaluation.stats import ExperimentDataError
from nba.training import policy_learning as pl
from tests.conftest import PROJECT_ROOT
from tests.constants import SEED
from tests.test_cli import assert_one_line_error, run
from tests.test_incrementality import cli_env  # noqa: F401  (fixture)

LIMITS = load_gates(gates_path(PROJECT_ROOT)).evaluation
ARMS = ["Offer A", "Offer B", "Control"]


# --- hand-computed cases ------------------------------------------------------------------------


def test_dr_scores_by_hand():
    """Gamma_ik = q_ik + 1[a_i = k] (y_i - q_ik) / e_i - c_k, row by row."""
    y = np.array([1.0, 0.0, 2.0])
    arm = np.array([0, 1, 0])
    e = np.array([0.5, 0.25, 0.5])
    q = np.array([[0.5, 0.2], [0.4, 0.1], [1.0, 1.0]])
    g = pl.dr_scores(y, arm, e, q, costs=np.array([0.1, 0.0]))
    expected = np.array([
        [0.5 + (1 - 0.5) / 0.5 - 0.1, 0.2],  # row 0 got arm 0: corrected by its residual / 0.5
        [0.4 - 0.1, 0.1 + (0 - 0.1) / 0.25],  # row 1 got arm 1 with probability 1/4
        [1.0 + (2 - 1.0) / 0.5 - 0.1, 1.0],
    ])
    np.testing.assert_allclose(g, expected)
    np.testing.assert_allclose(pl.dr_scores(y, arm, e, q), expected + np.array([0.1, 0.0]))
    with pytest.raises(pl.PolicyLearningError, match="propensities must lie in"):
        pl.dr_scores(y, arm, np.array([0.5, 0.0, 0.5]), q)


def test_policy_value_by_hand():
    """The value of a policy is the mean of its rows' scores net of the costs of the arm it
    gives; a randomising policy mixes the arms' scores."""
    gamma = np.array([[1.5, 0.2], [0.4, -0.3], [3.0, 1.0], [0.0, 2.0]])
    costs = np.array([0.1, 0.0])
    pick = np.array([[1, 0], [0, 1], [1, 0], [0, 1]], dtype=float)  # arm 0, 1, 0, 1
    terms = pe.policy_terms(gamma, pick, costs)
    np.testing.assert_allclose(terms, [1.4, -0.3, 2.9, 2.0])
    assert terms.mean() == pytest.approx((1.4 - 0.3 + 2.9 + 2.0) / 4)
    half = np.full((4, 2), 0.5)
    np.testing.assert_allclose(pe.policy_terms(gamma, half), [0.85, 0.05, 2.0, 1.0])
    with pytest.raises(ExperimentDataError, match="same n x K shape"):
        pe.policy_terms(gamma, half[:3])


def test_the_policy_tree_finds_the_best_depth_2_partition():
    """The histogram search returns the partition a brute force over every threshold pair finds."""
    rng = np.random.default_rng(SEED)
    n = 400
    X = np.column_stack([rng.integers(0, 6, n), rng.integers(0, 5, n), rng.normal(size=n).round(1)]).astype(float)
    scores = rng.normal(size=(n, 3)) + np.where(X[:, [0]] > 2, [0, 1, 0], [1, 0, 0]) \
        + np.where(X[:, [1]] > 1, [0, 0, 0.8], 0)
    tree = pl.PolicyTree(depth=2, min_leaf=20).fit(X, scores)

    def leaf_value(rows: np.ndarray) -> float:
        return float(scores[rows].sum(axis=0).max()) if rows.sum() >= 20 else -np.inf

    edges = pl.bin_edges(X)
    best = scores.sum(axis=0).max()
    for f, g1, g2 in product(range(3), repeat=3):
        for t in edges[f]:
            left = X[:, f] <= t
            v_left = max([leaf_value(left)] + [leaf_value(left & (X[:, g1] <= s)) + leaf_value(left & (X[:, g1] > s))
                                               for s in edges[g1]])
            v_right = max([leaf_value(~left)] + [leaf_value(~left & (X[:, g2] <= s))
                                                 + leaf_value(~left & (X[:, g2] > s)) for s in edges[g2]])
            best = max(best, v_left + v_right)
    assert tree.value_ * n == pytest.approx(best)
    chosen = np.array([tree.leaves_[i].arm for i in tree.apply(X)])
    assert scores[np.arange(n), chosen].sum() == pytest.approx(best)
    assert len(tree.describe(["x0", "x1", "x2"], ARMS)) == len(tree.leaves_) <= 4


# --- the safe-improvement rule ------------------------------------------------------------------------


def experiment(n: int, seed: int, heterogeneous: bool) -> pd.DataFrame:
    """Three arms at 1/3 each. Heterogeneous: Offer A adds 1 where x < 0, Offer B adds 1 where
    x > 0 and 0.2 elsewhere (best blanket: Offer B, 0.6). Otherwise both add 0.3 everywhere."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, n)
    z = rng.normal(size=n)
    region = rng.choice(["north east", "south"], n)
    arm = rng.choice(ARMS, n)
    if heterogeneous:
        effect = np.where(arm == "Offer A", np.where(x < 0, 1.0, 0.0), np.where(arm == "Offer B",
                                                                                np.where(x > 0, 1.0, 0.2), 0.0))
    else:
        effect = np.where(arm == "Control", 0.0, 0.3)
    y = 1 + 0.5 * z + effect + rng.normal(size=n)
    return pd.DataFrame({"x": x, "z": z, "region": region, "offer": arm, "revenue": y})


SPEC = dict(arm_column="offer", control="Control", outcome="revenue", assignment={a: 1 / 3 for a in ARMS})


def test_a_real_segment_is_found_and_kept():
    frame = experiment(9_000, SEED, heterogeneous=True)
    r = pe.learn_and_value(frame, pe.PolicySpec(**SPEC, seed=SEED), source="synthetic", limits=LIMITS)
    assert r.best_blanket_arm == "Offer B" and r.policy.deviates
    kept = [s for s in r.policy.segments if s.arm == "Offer A"]
    assert kept and all(s.kept and s.lower_bound > 0 for s in kept)
    learned = r.get(pe.LEARNED)
    assert 0.3 < learned.shares["Offer A"] < 0.7 and learned.shares["Control"] == 0
    d = r.learned_vs_best_single
    assert r.best_single == "all:Offer B" and d.diff > 0.2 and d.ci_low > 0 and d.p_value < 0.01
    # the truth of the learnt policy is about 1 + 1.0 (both halves get their +1); all:Offer B's 1.6
    assert learned.net.ci_low < 2.0 < learned.net.ci_high
    assert r.get("all:Offer B").net.ci_low < 1.6 < r.get("all:Offer B").net.ci_high
    assert all(p.flags == () for p in r.policies)


def test_without_a_real_segment_the_safe_rule_keeps_the_best_blanket_arm():
    frame = experiment(9_000, SEED, heterogeneous=False)
    unsafe = pe.learn_and_value(frame, pe.PolicySpec(**SPEC, seed=SEED, safe=False), limits=LIMITS)
    safe = pe.learn_and_value(frame, pe.PolicySpec(**SPEC, seed=SEED), limits=LIMITS)
    assert unsafe.policy.deviates  # the tree always finds some noise to follow
    assert not safe.policy.deviates
    assert all(s.arm == safe.best_blanket_arm for s in safe.policy.segments)
    assert any("not confidently better" in s.reason for s in safe.policy.segments if s.proposed != s.arm)
    assert any("no segment's advantage" in note for note in safe.notes)
    d = safe.learned_vs_best_single
    if safe.best_single == pe.all_arm(safe.best_blanket_arm):
        assert d.diff == 0 and d.p_value == 1.0


def test_costs_move_the_best_arm_and_the_classifier_is_checked_too():
    frame = experiment(6_000, SEED, heterogeneous=True)
    costly = pe.PolicySpec(**SPEC, seed=SEED, costs={"Offer B": 0.7}, method="classifier")
    r = pe.learn_and_value(frame, costly, limits=LIMITS)
    b, a = r.get("all:Offer B"), r.get("all:Offer A")
    assert b.gross.value - b.net.value == pytest.approx(0.7) and b.cost == pytest.approx(0.7)
    assert a.net.value == a.gross.value and r.best_single == "all:Offer A"
    assert all(s.name.startswith("proposed ") for s in r.policy.segments)
    assert r.to_dict()["method"] == "classifier"


# --- bad input, named ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small() -> pd.DataFrame:
    return experiment(600, SEED, heterogeneous=True)


@pytest.mark.parametrize(("change", "spec", "error", "fragments"), [
    (lambda f: f.assign(offer="Control"), {}, ExperimentDataError, ["'offer'", "holds only 'Control'"]),
    (None, {"control": "Nobody"}, ExperimentDataError, ["control value 'Nobody'", "'offer'", "its values are"]),
    (lambda f: f.assign(revenue=np.where(f.index % 2, "high", "low")), {}, SchemaError,
     ["outcome column 'revenue'", "expected 0/1 or numbers"]),
    (None, {"assignment": {"Offer A": 0.5, "Offer B": 0.3, "Control": 0.3}}, ConfigError,
     ["--assignment-probability", "sum to 1.1", "expected 1"]),
    (None, {"assignment": {"Offer A": 0.0, "Offer B": 0.5, "Control": 0.5}}, ConfigError,
     ["Offer A=0", "expected a probability in (0, 1]"]),
    (None, {"assignment": {"Offer A": 0.5, "Control": 0.5}}, ConfigError, ["no probability for arm(s) ['Offer B']"]),
    (None, {"features": ("x", "age")}, SchemaError, ["no column(s) ['age']", "--features"]),
    (lambda f: f.assign(flat=3), {"features": ("x", "flat")}, ExperimentDataError,
     ["feature column 'flat' is constant", "cannot tell customers apart"]),
    (None, {"costs": {"Offer C": 1.0}}, ConfigError, ["--cost", "['Offer C']", "'offer'"]),
    (None, {"propensity_column": "p", "assignment": None}, SchemaError, ["no column(s) ['p']"]),
])
def test_bad_input_names_the_column_and_the_reason(small, change, spec, error, fragments):
    frame = change(small) if change else small
    with pytest.raises(error) as exc:
        pe.learn_and_value(frame, pe.PolicySpec(**{**SPEC, **spec}), source="data.csv")
    for fragment in fragments:
        assert fragment in str(exc.value), (fragment, str(exc.value))


def test_a_test_table_with_other_columns_or_arms_is_refused(small):
    spec = pe.PolicySpec(**{**SPEC, "features": ("x", "region")})
    with pytest.raises(SchemaError, match=r"--test t.csv: no column\(s\) \['region'\]"):
        pe.learn_and_value(small, spec, test=small.drop(columns=["region"]), test_source="--test t.csv")
    with pytest.raises(ExperimentDataError, match=r"column 'offer' has arm\(s\) \['Offer Z'\]"):
        pe.learn_and_value(small, spec, test=small.assign(offer="Offer Z"), test_source="--test t.csv")
    with pytest.raises(NbaError, match="propensit"):
        pe.learn_and_value(small.assign(p=0.0), pe.PolicySpec(arm_column="offer", control="Control",
                                                              outcome="revenue", propensity_column="p"))


def test_the_option_pairs_parse_arm_names_with_spaces():
    assert pe.parse_assignments(["Mens E-Mail=0.1", "a=b=2"], "--cost") == {"Mens E-Mail": 0.1, "a=b": 2.0}
    for bad, why in (("Mens E-Mail", "expected ARM=NUMBER"), ("x=cheap", "'cheap' is not a number")):
        with pytest.raises(ConfigError, match=why):
            pe.parse_assignments([bad], "--cost")


# --- the command on a CSV written here ------------------------------------------------------------------


def test_cli_on_a_csv_writes_the_json_schema(cli_env, tmp_path: Path):  # noqa: F811
    """A small randomised experiment with a separate test file. The outcome models cannot split
    (fewer rows per arm than their minimum leaf), so they predict a constant per arm and the DR
    value of all:<arm> is exactly that arm's mean on the test rows (each arm 1/3 of them, its
    assignment probability): hand-checkable. 180 test rows are below min_rows: every estimate
    is flagged."""
    train, test = experiment(270, SEED, heterogeneous=True), experiment(180, SEED + 1, heterogeneous=True)
    test["offer"] = np.repeat(ARMS, 60)  # exactly 1/3 per arm
    train.to_csv(tmp_path / "train.csv", index=False)
    test.to_csv(tmp_path / "test.csv", index=False)
    out = tmp_path / "policy.json"
    proc = run(["evaluate", "policy", "--data", str(tmp_path / "train.csv"), "--arm-column", "offer",
                "--control", "Control", "--outcome", "revenue", "--value-per-outcome", "2",
                "--cost", "Offer A=0.5", "--cost", "Offer B=0.25", "--features", "x,z,region",
                "--assignment-probability", "Offer A=0.3333333333", "--assignment-probability", "Offer B=0.3333333333",
                "--assignment-probability", "Control=0.3333333334", "--test", str(tmp_path / "test.csv"),
                "--seed", "3", "--json", str(out), "--html", str(tmp_path / "p.html"), "--no-publish"], cli_env)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(out.read_text())
    names = [p["name"] for p in doc["policies"]]
    assert names == ["learned", "all:Offer A", "all:Offer B", "none", "random"]
    pol = {p["name"]: p for p in doc["policies"]}
    means = {a: 2 * test.loc[test["offer"] == a, "revenue"].mean() for a in ARMS}
    cost = {"Offer A": 0.5, "Offer B": 0.25, "Control": 0.0}
    for arm, name in (("Offer A", "all:Offer A"), ("Offer B", "all:Offer B"), ("Control", "none")):
        assert pol[name]["gross_value"] == pytest.approx(means[arm], rel=1e-6)
        assert pol[name]["value"] == pytest.approx(means[arm] - cost[arm], rel=1e-6)
        assert pol[name]["cost"] == pytest.approx(cost[arm])
    assert pol["random"]["value"] == pytest.approx(np.mean([means[a] - cost[a] for a in ARMS]), rel=1e-6)
    for p in doc["policies"]:
        assert {"name", "value", "ci_low", "ci_high", "gross_value", "cost", "shares", "flags",
                "vs_best_single"} <= set(p)
        assert p["ci_low"] <= p["value"] <= p["ci_high"]
        assert not p["reliable"] and any("below min_rows 200" in f for f in p["flags"])
    best = max(("all:Offer A", "all:Offer B"), key=lambda n: pol[n]["value"])
    lvb = doc["learned_vs_best_single"]
    assert lvb["best_single"] == best and {"diff", "ci_low", "ci_high", "p_value"} <= set(lvb)
    assert lvb["diff"] == pytest.approx(pol["learned"]["value"] - pol[best]["value"], abs=1e-9)
    assert doc["costs"] == cost and doc["value_per_outcome"] == 2.0 and doc["features"] == ["x", "z", "region"]
    assert doc["split"]["train_rows"] == 270 and doc["split"]["test_rows"] == 180
    # 135 check rows cannot confirm a segment: the learnt policy keeps the best blanket arm, and says why
    assert not doc["learned_policy"]["deviates"]
    assert "UNRELIABLE" in proc.stdout and (tmp_path / "p.html").is_file()


def test_cli_bad_input_is_one_line(cli_env, tmp_path: Path):  # noqa: F811
    experiment(300, SEED, heterogeneous=False).to_csv(tmp_path / "d.csv", index=False)
    base = ["evaluate", "policy", "--data", str(tmp_path / "d.csv"), "--arm-column", "offer", "--outcome", "revenue",
            "--no-publish"]
    assert_one_line_error(run([*base, "--control", "Nobody"], cli_env), "control value 'Nobody'", "'offer'")
    assert_one_line_error(run([*base, "--control", "Control", "--assignment-probability", "Offer A=0.5"], cli_env),
                          "--assignment-probability", "no probability for arm(s)")
    assert_one_line_error(run(base, cli_env), "--control", "required")


# --- the normalised Qini (scikit-uplift's qini_auc_score) ----------------------------------------------


def test_normalised_qini_by_hand():
    """y = (1, 0, 1, 0), treated = (1, 1, 0, 0), scores 0.4 > 0.3 > 0.2 > 0.1.

    Model curve, in customers targeted: after 1: 1 treated responder, no control -> 1; after 2:
    still 1; after 3: 1 - 1 x 2/1 = -1; after 4: 1 - 1 x 2/2 = 0. Area (trapezoids):
    0.5 + 1 + 0 - 0.5 = 1. Random line from (0, 0) to (4, 0): area 0. Perfect curve (scores
    y t - y (1 - t) = (1, 0, -1, 0)): the treated responder first (1), then the two rows of
    score 0 as one step (3 targeted: 1 - 0 = 1), the control responder last (4: 0); area
    0.5 + 2 + 0.5 = 3. Normalised: (1 - 0) / (3 - 0) = 1/3. Every figure here is what
    scikit-uplift 0.5.1's `qini_auc_score` returns (checked once by hand; it is no dependency)."""
    from nba.training.metrics import qini_auc_score

    y, t = np.array([1, 0, 1, 0]), np.array([1, 1, 0, 0])
    assert qini_auc_score(np.array([0.4, 0.3, 0.2, 0.1]), y, t) == pytest.approx(1 / 3)
    perfect = y * t - y * (1 - t)
    assert qini_auc_score(perfect, y, t) == pytest.approx(1.0)
    # control responder first, treated responder last: curve 0, 0, -1, -1/2, 0 -> area -1.5 (-0.5 in scikit-uplift)
    assert qini_auc_score(np.array([0.1, 0.3, 0.4, 0.2]), y, t) == pytest.approx(-0.5)
    # equal scores form one step: all tied is the random line
    assert qini_auc_score(np.zeros(4), y, t) == pytest.approx(0.0)


def test_the_uplift_champion_keeps_the_default_learner_within_the_noise():
    from nba.training.uplift import Candidate, choose

    def cand(name: str, qini: float) -> Candidate:
        return Candidate(name, None, qini, (np.zeros(1), np.zeros(1)))

    s, t, x = cand("s_learner", 0.010), cand("t_learner", 0.012), cand("x_learner", 0.0125)
    assert choose([s, t, x], margin=0.003).learner == "s_learner"  # both rivals within the noise
    assert choose([s, t, x], margin=0.001).learner == "x_learner"  # both beat it: the highest
    assert choose([s, t, x]).learner == "x_learner"
    assert choose([cand("s_learner", float("nan")), t, x], margin=0.5).learner == "x_learner"
    assert choose([s, cand("t_learner", float("nan"))], margin=0.0).learner == "s_learner"
