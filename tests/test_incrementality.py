"""Hold-out incrementality: hand-checked lifts, CIs and p-values, the bootstrap check, clustered
errors, the sample-size planner against statsmodels, the published Hillstrom lifts, and
`nba evaluate incrementality` as a real process."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from nba.config import EvaluationLimits, gates_path, load_gates
from nba.evaluation import experiments
from nba.evaluation import stats as ab
from nba.evaluation.stats import ExperimentDataError
from tests.conftest import PROJECT_ROOT
from tests.constants import HILLSTROM_ARM_MEANS, HILLSTROM_ROWS
from tests.test_cli import assert_one_line_error, run

LIMITS = load_gates(gates_path(PROJECT_ROOT)).evaluation
CONTROL = "No E-Mail"
EMAILS = ("Mens E-Mail", "Womens E-Mail")


def test_the_shipped_limits_are_read_from_the_gates_file():
    assert isinstance(LIMITS, EvaluationLimits)
    assert LIMITS.min_arm_size == 100 and LIMITS.max_unsupported_share == 0.01


# --- hand-checked small cases ------------------------------------------------------------


def test_lift_ci_and_p_value_by_hand():
    treated = [1, 0, 1, 1]  # mean 3/4, sample variance 1/4
    control = [0, 0, 1, 0]  # mean 1/4, sample variance 1/4
    r = ab.incrementality(treated + control, ["t"] * 4 + ["c"] * 4, "c", outcome="y")
    a = r.arm("t")
    se = math.sqrt(0.25 / 4 + 0.25 / 4)  # sqrt(1/8)
    df = (1 / 8) ** 2 / ((1 / 16) ** 2 / 3 * 2)  # Welch-Satterthwaite: 6
    q = stats.t.ppf(0.975, 6)
    assert (a.n, a.mean, r.control.mean, a.lift) == (4, 0.75, 0.25, 0.5)
    assert a.lift_se == pytest.approx(se) and a.df == pytest.approx(df) and df == pytest.approx(6.0)
    assert (a.ci_low, a.ci_high) == pytest.approx((0.5 - q * se, 0.5 + q * se))
    assert a.p_value == pytest.approx(2 * stats.t.sf(0.5 / se, 6))
    assert a.p_value == pytest.approx(stats.ttest_ind(treated, control, equal_var=False).pvalue)
    # relative lift 0.75 / 0.25 - 1 = 2; delta method: se^2 = v_t / m_c^2 + m_t^2 v_c / m_c^4
    rel_se = math.sqrt((1 / 16) / 0.25**2 + 0.75**2 * (1 / 16) / 0.25**4)
    assert a.relative_lift == pytest.approx(2.0) and a.relative_se == pytest.approx(rel_se)
    assert (a.relative_ci_low, a.relative_ci_high) == pytest.approx((2 - q * rel_se, 2 + q * rel_se))


def test_numeric_outcome_and_several_arms():
    y = [10.0, 12.0, 14.0, 1.0, 2.0, 3.0, 5.0, 5.0, 8.0]
    arm = ["b"] * 3 + ["ctl"] * 3 + ["a"] * 3
    r = ab.incrementality(y, arm, "ctl", outcome="spend")
    assert [x.arm for x in r.arms] == ["a", "b"]
    assert r.arm("b").lift == pytest.approx(12.0 - 2.0) and r.arm("a").lift == pytest.approx(6.0 - 2.0)
    assert r.arm("b").relative_lift == pytest.approx(12.0 / 2.0 - 1)
    assert r.arm("b").p_value == pytest.approx(stats.ttest_ind(y[:3], y[3:6], equal_var=False).pvalue)


def test_clustered_errors_count_customers_not_rows():
    rng = np.random.default_rng(0)
    y = rng.random(400) < np.repeat([0.2, 0.3], 200)
    arm = np.repeat(["c", "t"], 200)
    plain = ab.incrementality(y, arm, "c").arm("t")
    # every row once per cluster: the clustered error is the plain one
    one = ab.incrementality(y, arm, "c", clusters=np.arange(400)).arm("t")
    assert one.lift_se == pytest.approx(plain.lift_se, rel=1e-12)
    # each customer logged twice: the rows double, the information does not
    twice = ab.incrementality(np.repeat(y, 2), np.repeat(arm, 2), "c", clusters=np.repeat(np.arange(400), 2))
    naive = ab.incrementality(np.repeat(y, 2), np.repeat(arm, 2), "c").arm("t")
    t = twice.arm("t")
    assert t.units == 200 and t.n == 400 and t.lift == pytest.approx(plain.lift)
    assert t.lift_se == pytest.approx(plain.lift_se, rel=1e-12)
    assert naive.lift_se == pytest.approx(plain.lift_se / math.sqrt(2), rel=0.01)


def test_cluster_pairs_paths_agree():
    """The dense, per-cell and hashed ways of grouping (cell, customer) pairs give one answer."""
    rng = np.random.default_rng(1)
    n, k_cells, k_clusters = 5_000, 6, 900
    cells = rng.integers(0, k_cells, n)
    clusters = rng.integers(0, k_clusters, n)
    y = rng.random(n)
    ref = ab.cell_moments(y, cells, k_cells, clusters)
    for limit in (1 << 24, 10, 0):  # dense, per cell, hashed
        old = ab.ClusterPairs.DENSE_LIMIT
        try:
            ab.ClusterPairs.DENSE_LIMIT = limit
            if limit == 0:
                pairs = ab.ClusterPairs.build(cells, k_cells, clusters, 10**9)  # forces hashing
            else:
                pairs = ab.ClusterPairs.build(cells, k_cells, clusters, k_clusters)
        finally:
            ab.ClusterPairs.DENSE_LIMIT = old
        m = ab.cell_moments(y, cells, k_cells, pairs=pairs)
        for key in ("n", "units", "mean", "se"):
            np.testing.assert_allclose(m[key], ref[key], rtol=1e-12)


def test_thin_or_degenerate_arms_are_flagged_not_hidden():
    y = [0, 0, 0, 1, 0, 1]
    r = ab.incrementality(y, ["c", "c", "c", "t", "t", "t"], "c", limits=LIMITS)
    a = r.arm("t")
    assert not a.reliable
    joined = " | ".join(a.flags)
    assert "min_arm_size 100" in joined and "min_responses 10" in joined
    assert "control 'c' mean is 0" in joined and math.isnan(a.relative_lift)


def test_bad_input_names_what_is_wrong():
    with pytest.raises(ExperimentDataError, match="control arm 'x' is not among the arms"):
        ab.incrementality([1, 0], ["a", "b"], "x")
    with pytest.raises(ExperimentDataError, match=r"outcome 'y' has 1 missing.*row 1"):
        ab.incrementality([1, float("nan")], ["a", "b"], "a", outcome="y")
    with pytest.raises(ExperimentDataError, match="not numeric"):
        ab.incrementality(["yes", "no"], ["a", "b"], "a")


# --- bootstrap and sample size --------------------------------------------------------------


@pytest.fixture(scope="module")
def hillstrom(data_dir: Path) -> pd.DataFrame:
    from nba.data.hillstrom import load_hillstrom

    return load_hillstrom(data_dir).experiment


@pytest.mark.parametrize("outcome", ["visit", "conversion", "spend"])
def test_delta_method_ci_agrees_with_the_bootstrap(hillstrom: pd.DataFrame, outcome: str):
    """Both e-mails' delta-method CIs (absolute and relative) sit within 10 % (absolute) and 15 %
    (relative, a skewed ratio) of their width of the percentile bootstrap's."""
    r = ab.incrementality(hillstrom[outcome], hillstrom["arm"].astype(str), CONTROL, outcome=outcome)
    yc = hillstrom.loc[hillstrom["arm"] == CONTROL, outcome].to_numpy()
    for email in EMAILS:
        a = r.arm(email)
        yt = hillstrom.loc[hillstrom["arm"] == email, outcome].to_numpy()
        boot = ab.bootstrap_lift(yt, yc, replicates=1000 if outcome == "spend" else 4000, seed=3)
        width = a.ci_high - a.ci_low
        assert abs(boot.lift_low - a.ci_low) < 0.10 * width and abs(boot.lift_high - a.ci_high) < 0.10 * width
        rel_width = a.relative_ci_high - a.relative_ci_low
        assert abs(boot.relative_low - a.relative_ci_low) < 0.15 * rel_width
        assert abs(boot.relative_high - a.relative_ci_high) < 0.15 * rel_width


def test_bootstrap_is_seeded():
    y1, y0 = np.r_[np.ones(30), np.zeros(70)], np.r_[np.ones(20), np.zeros(80)]
    assert ab.bootstrap_lift(y1, y0, seed=5) == ab.bootstrap_lift(y1, y0, seed=5)
    assert ab.bootstrap_lift(y1 * 2.5, y0, seed=5) == ab.bootstrap_lift(y1 * 2.5, y0, seed=5)


def test_sample_size_matches_the_formula_and_statsmodels():
    from statsmodels.stats.power import NormalIndPower

    # rate: 10.62 % (Hillstrom's no e-mail visit rate), detect one point, alpha 5 %, power 80 %
    s = ab.sample_size(0.1062, lift=0.01)
    z = stats.norm.ppf(0.975) + stats.norm.ppf(0.8)  # 2.8016
    by_hand = z**2 * (0.1162 * 0.8838 + 0.1062 * 0.8938) / 0.01**2
    assert s.control == s.treated == math.ceil(by_hand) == 15_511
    effect = 0.01 / math.sqrt((0.1162 * 0.8838 + 0.1062 * 0.8938) / 2)
    sm = NormalIndPower().solve_power(effect_size=effect, alpha=0.05, power=0.8, ratio=1.0)
    assert abs(s.control - sm) <= 1
    # the relative form is the same test
    assert ab.sample_size(0.1062, relative_lift=0.01 / 0.1062).control == s.control
    # numeric: mean spend 1.08, sd 16, detect 0.30 $ with a 10 % hold-out (9 treated per control)
    m = ab.sample_size(1.08, lift=0.30, sd=16.0, ratio=9.0, power=0.9)
    sm9 = NormalIndPower().solve_power(effect_size=0.30 / 16.0, alpha=0.05, power=0.9, ratio=9.0)
    assert abs(m.control - sm9) <= 1 and abs(m.treated - 9 * sm9) <= 9  # statsmodels: nobs2 = ratio x nobs1
    with pytest.raises(ExperimentDataError, match="exactly one of lift"):
        ab.sample_size(0.1, lift=0.01, relative_lift=0.1)
    with pytest.raises(ExperimentDataError, match="must be in"):
        ab.sample_size(0.95, lift=0.1)


# --- Hillstrom: the published lifts -------------------------------------------------------------


def test_hillstrom_lifts_are_the_published_ones(hillstrom: pd.DataFrame):
    report = experiments.experiment_incrementality(hillstrom, arm_column="arm", control=CONTROL, outcome="visit",
                                           value_column="spend", source="hillstrom", limits=LIMITS)
    assert report.extra["rows"] == HILLSTROM_ROWS
    visit, spend = report.results
    for email in EMAILS:
        want_visit, _, want_spend = HILLSTROM_ARM_MEANS[email]
        a = visit.arm(email)
        assert a.mean == pytest.approx(want_visit, abs=5e-5)
        assert a.lift == pytest.approx(want_visit - HILLSTROM_ARM_MEANS[CONTROL][0], abs=1e-4)
        assert a.ci_low < a.lift < a.ci_high and a.p_value < 1e-40 and a.reliable
        s = spend.arm(email)
        assert s.lift == pytest.approx(want_spend - HILLSTROM_ARM_MEANS[CONTROL][2], abs=0.01)
        assert s.ci_low > 0  # both e-mails raise spend significantly
    # Mens: 0.1828 - 0.1062 = 0.0766, CI [0.0700, 0.0832]
    assert (visit.arm("Mens E-Mail").ci_low, visit.arm("Mens E-Mail").ci_high) == pytest.approx((0.0700, 0.0832),
                                                                                                abs=1e-4)


# --- the command line ---------------------------------------------------------------------------


@pytest.fixture
def cli_env(tmp_path: Path, data_dir: Path) -> dict[str, str]:
    import os

    e = {k: v for k, v in os.environ.items() if not k.startswith("NBA_")}
    e.update(NBA_HOME=str(PROJECT_ROOT), NBA_WORK_DIR=str(tmp_path / "var"), NBA_DATA_DIR=str(data_dir))
    return e


@pytest.mark.slow
@pytest.mark.integration
def test_cli_on_hillstrom_writes_the_json_schema_and_publishes(cli_env, tmp_path: Path):
    """JSON and HTML outputs, and (without --no-publish) an Evidently snapshot of the `platform`
    project with the named figures and its HTML report (nba.evaluation.reporting.publish)."""
    out, page = tmp_path / "inc.json", tmp_path / "inc.html"
    proc = run(["evaluate", "incrementality", "--data", "hillstrom", "--json", str(out), "--html", str(page)],
               cli_env)
    assert proc.returncode == 0, proc.stderr
    assert "published to the 'platform' dashboard" in proc.stdout
    work = tmp_path / "var"
    assert len(list((work / "reports" / "platform").glob("*-incrementality.html"))) == 1
    (snapshot,) = list((work / "evidently").glob("*/snapshots/*.json"))
    assert "incrementality.hillstrom.mens_e_mail.visit.lift" in snapshot.read_text()
    doc = json.loads(out.read_text())
    assert doc["control"] == CONTROL and doc["outcome"] == "visit"
    arms = {a["arm"]: a for a in doc["arms"]}
    assert set(arms) == set(EMAILS)
    for a in arms.values():
        assert {"arm", "n", "mean", "lift", "ci_low", "ci_high", "p_value", "relative_lift"} <= set(a)
    assert arms["Mens E-Mail"]["lift"] == pytest.approx(0.1828 - 0.1062, abs=1e-4)
    assert [o["outcome"] for o in doc["outcomes"]] == ["visit", "conversion", "spend"]
    assert "<table" in page.read_text() and "Mens E-Mail" in proc.stdout


def test_cli_on_a_csv_table_with_segments(cli_env, tmp_path: Path, hillstrom: pd.DataFrame):
    table = tmp_path / "exp.csv"
    hillstrom[["customer_id", "arm", "conversion", "spend"]].assign(
        zip=np.where(hillstrom["customer_id"] % 2 == 0, "even", "odd")).to_csv(table, index=False)
    out = tmp_path / "inc.json"
    proc = run(["evaluate", "incrementality", "--data", str(table), "--arm-column", "arm", "--control", CONTROL,
                "--outcome", "conversion", "--value-column", "spend", "--by", "zip", "--json", str(out),
                "--no-publish"], cli_env)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(out.read_text())
    mens = next(a for a in doc["arms"] if a["arm"] == "Mens E-Mail")
    assert mens["lift"] == pytest.approx(0.0125 - 0.0057, abs=2e-4)
    assert {(s["by"], s["segment"], s["outcome"]) for s in doc["segments"]} == {
        ("zip", z, o) for z in ("even", "odd") for o in ("conversion", "spend")}


def test_cli_bad_inputs_are_one_line(cli_env, tmp_path: Path):
    table = tmp_path / "exp.csv"
    pd.DataFrame({"arm": ["a", "b", "a"], "y": [1, 0, 1]}).to_csv(table, index=False)
    missing = run(["evaluate", "incrementality", "--data", str(table), "--arm-column", "group", "--control", "a",
                   "--outcome", "y", "--no-publish"], cli_env)
    assert_one_line_error(missing, str(table), "'group'", "['arm', 'y']")
    control = run(["evaluate", "incrementality", "--data", str(table), "--arm-column", "arm", "--control", "zz",
                   "--outcome", "y", "--no-publish"], cli_env)
    assert_one_line_error(control, "control value 'zz'", "'arm'", "['a', 'b']")
    text = tmp_path / "text.csv"
    pd.DataFrame({"arm": ["a", "b"], "y": ["yes", "no"]}).to_csv(text, index=False)
    wrong = run(["evaluate", "incrementality", "--data", str(text), "--arm-column", "arm", "--control", "a",
                 "--outcome", "y", "--no-publish"], cli_env)
    assert_one_line_error(wrong, str(text), "column 'y'", "expected 0/1 or numbers")

