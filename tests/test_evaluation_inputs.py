"""The files the evaluate commands read, parsed without the CLI: the OPE logged decisions and
target / q-hat files (`nba.evaluation.policy_file`), the incrementality experiment table
(`nba.evaluation.experiment_table`) and the `evaluation:` limits (`nba.evaluation.limits`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import yaml

from nba.config import gates_path, load_gates
from nba.errors import ConfigError, SchemaError
from nba.evaluation import policy_file as pf
from nba.evaluation.experiment_table import HILLSTROM_OUTCOMES, experiment_table
from nba.evaluation.limits import evaluation_limits
from nba.evaluation.ope import OpeInputError
from nba.settings import Settings
from tests.conftest import PROJECT_ROOT

LIMITS = load_gates(gates_path(PROJECT_ROOT)).evaluation
ACTIONS = ["a", "b"]
REWARD = [1.0, 0.0, 0.0, 1.0, 1.0]
MU = [0.5, 0.5, 0.25, 0.75, 0.5]
LOGGED = ["a", "b", "a", "b", "a"]
N = len(LOGGED)


@pytest.fixture
def logged_csv(tmp_path: Path) -> Path:
    path = tmp_path / "logged.csv"
    pd.DataFrame({"act": LOGGED, "r": REWARD, "p": MU, "cust": [1, 1, 2, 3, 3]}).to_csv(path, index=False)
    return path


def write(tmp_path: Path, name: str, frame: pd.DataFrame) -> Path:
    path = tmp_path / name
    frame.to_parquet(path, index=False) if path.suffix == ".parquet" else frame.to_csv(path, index=False)
    return path


# --- target and q-hat files -------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_a_wide_file_is_one_column_per_action_and_may_name_an_unlogged_one(tmp_path: Path, suffix: str):
    path = write(tmp_path, f"wide{suffix}", pd.DataFrame({"b": [0.3] * N, "c": [0.2] * N, "a": [0.5] * N}))
    matrix, actions = pf.read_policy_file(path, N, ACTIONS)
    assert actions == ["a", "b", "c"]  # the data's actions first, then the file's new ones
    np.testing.assert_array_equal(matrix, np.tile([0.5, 0.3, 0.2], (N, 1)))


def test_a_long_file_lists_pairs_and_leaves_the_rest_at_zero(tmp_path: Path):
    path = write(tmp_path, "long.csv", pd.DataFrame({"row": [0, 1, 1, 4], "action": ["a", "a", "c", "b"],
                                                     "probability": [1.0, 0.4, 0.6, 1.0]}))
    matrix, actions = pf.read_policy_file(path, N, ACTIONS)
    assert actions == ["a", "b", "c"]
    expected = np.zeros((N, 3))
    expected[0, 0], expected[1, 0], expected[1, 2], expected[4, 1] = 1.0, 0.4, 0.6, 1.0
    np.testing.assert_array_equal(matrix, expected)


@pytest.mark.parametrize(("frame", "fragments"), [
    (pd.DataFrame({"row": [0, 7], "action": ["a", "b"], "probability": [1.0, 1.0]}),
     ["column 'row' has value 7", "row number 0..4 of --data"]),
    (pd.DataFrame({"row": [0, 1.5], "action": ["a", "b"], "probability": [1.0, 1.0]}),
     ["column 'row' has value 1.5"]),
    (pd.DataFrame({"row": [0, 1], "action": ["a", "b"], "probability": [1.0, "lots"]}),
     ["column 'probability' has a non-numeric value at row 1", "'lots'", "expected a probability"]),
    (pd.DataFrame({"row": [0, 0], "action": ["a", "a"], "probability": [0.5, 0.5]}),
     ["(row, action) [0, 'a'] appears twice"]),
    (pd.DataFrame({"a": [0.5, 0.5], "b": [0.5, 0.5]}),
     ["2 rows but --data has 5", "long format (columns row, action, probability)"]),
    (pd.DataFrame({"a": [0.5] * N, "b": ["x"] * N}),
     ["column(s) ['b'] are not numeric", "the data's actions: ['a', 'b']"]),
])
def test_a_malformed_policy_file_names_the_file_and_the_column(tmp_path: Path, frame: pd.DataFrame,
                                                                fragments: list[str]):
    path = write(tmp_path, "target.csv", frame)
    with pytest.raises(OpeInputError) as err:
        pf.read_policy_file(path, N, ACTIONS, "--target")
    assert str(err.value).startswith(f"--target {path}: ")
    for fragment in fragments:
        assert fragment in str(err.value), (fragment, str(err.value))


def test_a_q_hat_file_needs_every_logged_action_and_says_expected_reward(tmp_path: Path):
    path = write(tmp_path, "q.csv", pd.DataFrame({"a": [0.1] * N}))
    with pytest.raises(OpeInputError, match=r"--q-hat .*q.csv: no column for logged action\(s\) \['b'\]"):
        pf.read_policy_file(path, N, ACTIONS, "--q-hat", probabilities=False)
    long = write(tmp_path, "q_long.csv", pd.DataFrame({"row": [0], "action": ["a"], "probability": ["?"]}))
    with pytest.raises(OpeInputError, match="expected an expected reward"):
        pf.read_policy_file(long, N, ACTIONS, "--q-hat", probabilities=False)


def test_a_missing_or_unknown_format_file_is_refused(tmp_path: Path):
    with pytest.raises(OpeInputError, match=r"--target .*nope.csv: no such file \(expected 'uniform'"):
        pf.read_policy_file(tmp_path / "nope.csv", N, ACTIONS)
    text = tmp_path / "target.txt"
    text.write_text("a,b\n")
    with pytest.raises(OpeInputError, match="unknown format '.txt'; expected .csv or .parquet"):
        pf.read_policy_file(text, N, ACTIONS)


# --- logged decisions -----------------------------------------------------------------------------


def test_logged_decisions_are_read_as_arrays(logged_csv: Path):
    logged = pf.read_logged(logged_csv, action_column="act", reward_column="r", propensity_column="p",
                            cluster_column="cust")
    assert logged.source == str(logged_csv) and logged.n == N
    assert logged.actions == ACTIONS and [logged.actions[c] for c in logged.codes] == LOGGED
    np.testing.assert_array_equal(logged.reward, REWARD)
    np.testing.assert_array_equal(logged.propensity, MU)
    np.testing.assert_array_equal(logged.clusters, [1, 1, 2, 3, 3])


@pytest.mark.parametrize(("values", "fragments"), [
    ([0.5, None, 0.5], ["column 'p' has 1 missing propensit(ies) (first at row 1)"]),
    ([0.5, 0.0, 0.5], ["column 'p' has 1 propensit(ies) outside (0, 1]", "(row 1: 0)"]),
    ([0.5, 1.5, 0.5], ["outside (0, 1]", "(row 1: 1.5)"]),
    (["high", "low", "mid"], ["column 'p' holds string", "expected probabilities in (0, 1]"]),
])
def test_propensities_that_cannot_be_weights_are_refused_with_the_row(values: list, fragments: list[str]):
    table = pa.table({"p": values})
    with pytest.raises(OpeInputError) as err:
        pf.read_propensities(table, "p", "logged.csv")
    assert str(err.value).startswith("logged.csv: ")
    for fragment in fragments:
        assert fragment in str(err.value), (fragment, str(err.value))


def test_an_empty_log_and_a_missing_column_are_refused(tmp_path: Path, logged_csv: Path):
    empty = write(tmp_path, "empty.parquet", pd.DataFrame({"act": pd.Series([], dtype=str), "r": [], "p": []}))
    with pytest.raises(OpeInputError, match="empty.parquet: no rows"):
        pf.read_logged(empty, action_column="act", reward_column="r", propensity_column="p")
    with pytest.raises(SchemaError, match="propensity"):
        pf.read_logged(logged_csv, action_column="act", reward_column="r", propensity_column="propensity")


# --- valuing a target -----------------------------------------------------------------------------


def test_the_uniform_target_is_valued_by_hand_checked_ips(logged_csv: Path):
    logged = pf.read_logged(logged_csv, action_column="act", reward_column="r", propensity_column="p")
    valued = pf.value_target(logged, pf.UNIFORM, limits=LIMITS)
    ips = valued.result.estimate("ips").value
    assert ips == pytest.approx(sum(0.5 / m * r for m, r in zip(MU, REWARD, strict=True)) / N)
    doc = valued.to_dict()
    assert doc["policy"] == "uniform" and doc["rows"] == N and doc["actions"] == ACTIONS
    assert {e["estimator"] for e in doc["estimates"]} == {"ips", "snips", "dr", "logged"}
    assert not doc["reliable"]  # five rows are below min_rows
    np.testing.assert_array_equal(pf.uniform_policy(2, 4), np.full((2, 4), 0.25))


def test_a_q_hat_naming_a_new_action_widens_the_target(tmp_path: Path, logged_csv: Path):
    logged = pf.read_logged(logged_csv, action_column="act", reward_column="r", propensity_column="p")
    q = write(tmp_path, "q.csv", pd.DataFrame({"a": [0.6] * N, "b": [0.4] * N, "c": [0.9] * N}))
    valued = pf.value_target(logged, pf.UNIFORM, q, limits=LIMITS)
    assert valued.actions == ["a", "b", "c"]
    assert valued.result.diagnostics.unsupported_share == 0.0  # the widened target puts nothing on c


def test_a_target_that_is_not_a_distribution_names_the_files(tmp_path: Path, logged_csv: Path):
    logged = pf.read_logged(logged_csv, action_column="act", reward_column="r", propensity_column="p")
    sums = write(tmp_path, "sums.csv", pd.DataFrame({"a": [0.5] * N, "b": [0.2] + [0.5] * 4}))
    with pytest.raises(OpeInputError) as err:
        pf.value_target(logged, str(sums), limits=LIMITS)
    assert str(err.value).startswith(f"{logged_csv} with --target {sums}: ")
    assert "do not sum to 1 (row 0: 0.7)" in str(err.value)


# --- the incrementality experiment table ----------------------------------------------------------


def test_a_file_needs_its_arm_control_and_outcome_named(tmp_path: Path):
    settings = Settings(home=PROJECT_ROOT, work_dir=tmp_path / "var")
    path = write(tmp_path, "exp.csv", pd.DataFrame({"arm": ["t", "c"], "y": [1, 0], "rev": [3.0, 0.0]}))
    with pytest.raises(ConfigError, match=r"--data .*exp.csv: --control, --outcome required"):
        experiment_table(settings, str(path), arm_column="arm")
    t = experiment_table(settings, str(path), arm_column="arm", control="c", outcome=["y"], value_column="rev")
    assert (t.source, t.arm_column, t.control, t.outcomes, t.value_column) == (str(path), "arm", "c", ["y"], "rev")
    assert t.table.column_names == ["arm", "y", "rev"] and t.table.num_rows == 2


def test_hillstrom_by_name_fills_in_its_columns(settings: Settings):
    t = experiment_table(settings, "Hillstrom")
    assert (t.source, t.arm_column, t.control) == ("hillstrom", "arm", "No E-Mail")
    assert t.outcomes == list(HILLSTROM_OUTCOMES)
    assert t.table.num_rows == 64_000 and set(t.table.column("arm").to_pylist()) == {
        "No E-Mail", "Mens E-Mail", "Womens E-Mail"}


# --- the evaluation limits --------------------------------------------------------------------------


def test_the_limits_are_the_gates_files_and_a_missing_section_is_named(tmp_path: Path):
    assert evaluation_limits(Settings(home=PROJECT_ROOT, work_dir=tmp_path / "var")) == LIMITS
    home = tmp_path / "home"
    gates = gates_path(home)
    gates.parent.mkdir(parents=True)
    doc = yaml.safe_load(gates_path(PROJECT_ROOT).read_text())
    del doc["evaluation"]
    gates.write_text(yaml.safe_dump(doc))
    with pytest.raises(ConfigError, match=rf"{gates}: no 'evaluation:' section \(min_arm_size"):
        evaluation_limits(Settings(home=home, work_dir=tmp_path / "var"))
