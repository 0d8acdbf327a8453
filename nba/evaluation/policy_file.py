"""The files `nba evaluate ope` reads: logged decisions (action, reward, the logging policy's
propensity, optionally a cluster) and a target policy, or the expected rewards (q-hat) of DR,
as a CSV or Parquet file in one of two layouts:

* wide: one row per logged row (same order), one column per action named by its value;
* long: columns `row`, `action`, `probability` (`row` = 0-based row number of the logged data;
  pairs not listed have probability 0).

A file may name actions the data never logged: the matrix widens, and off-policy evaluation
reports their mass as unsupported. Every error names the file, the column and the row.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from nba.evaluation import experiments as inc
from nba.evaluation.ope import DEFAULT_CONFIDENCE, OpeInputError, PolicyValue, off_policy_value

if TYPE_CHECKING:
    import pyarrow as pa

    from nba.config import EvaluationLimits

UNIFORM = "uniform"
LONG_COLUMNS = ("row", "action", "probability")


@dataclass(frozen=True)
class LoggedDecisions:
    """Logged decisions as arrays: action codes into `actions`, rewards, propensities, clusters."""

    source: str
    codes: np.ndarray
    actions: list[str]
    reward: np.ndarray
    propensity: np.ndarray
    clusters: np.ndarray | None = None

    @property
    def n(self) -> int:
        return len(self.codes)


@dataclass(frozen=True)
class TargetValue:
    """The off-policy value of a target policy on a file of logged decisions."""

    source: str
    policy: str
    rows: int
    actions: list[str]
    result: PolicyValue

    def to_dict(self) -> dict[str, Any]:
        return {"data": self.source, "policy": self.policy, "rows": self.rows, "actions": self.actions,
                "estimates": [e.to_dict() for e in self.result.estimates],
                "diagnostics": self.result.diagnostics.to_dict(), "reliable": self.result.reliable}


def read_logged(path: Path, *, action_column: str, reward_column: str, propensity_column: str,
                cluster_column: str | None = None) -> LoggedDecisions:
    """The logged decisions of a CSV or Parquet file, one row per decision."""
    columns = [action_column, reward_column, propensity_column, *([cluster_column] if cluster_column else [])]
    table = inc.read_table(path, columns)
    source = str(path)
    if table.num_rows == 0:
        raise OpeInputError(f"{source}: no rows")
    codes, actions = inc.column_codes(table, action_column, source)
    reward = inc.column_numbers(table, reward_column, source)
    mu = read_propensities(table, propensity_column, source)
    clusters = table.column(cluster_column).to_numpy() if cluster_column else None
    return LoggedDecisions(source, codes, actions, reward, mu, clusters)


def read_propensities(table: pa.Table, column: str, source: str) -> np.ndarray:
    """The logging probabilities, refusing missing, zero and out-of-range values with the file and row."""
    import pyarrow as pa
    import pyarrow.compute as pc

    col = table.column(column)
    if col.null_count:
        first = int(pc.index(pc.is_null(col), True).as_py())
        raise OpeInputError(f"{source}: column '{column}' has {col.null_count} missing propensit(ies) (first at "
                            f"row {first}); every logged decision needs the probability its action was taken with")
    if not (pa.types.is_floating(col.type) or pa.types.is_integer(col.type)):
        raise OpeInputError(f"{source}: column '{column}' holds {col.type}; expected probabilities in (0, 1]")
    mu = inc.column_numbers(table, column, source)
    bad = (mu <= 0) | (mu > 1)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise OpeInputError(f"{source}: column '{column}' has {int(bad.sum())} propensit(ies) outside (0, 1] "
                            f"(row {i}: {mu[i]:g}); a logged action was taken, so its probability is > 0")
    return mu


def uniform_policy(n: int, k: int) -> np.ndarray:
    """Every one of `k` actions equally likely, for each of `n` rows."""
    return np.full((n, k), 1.0 / k)


def read_policy_file(path: Path, n: int, actions: list[str], option: str = "--target", *,
                     probabilities: bool = True) -> tuple[np.ndarray, list[str]]:
    """A target policy (`probabilities`) or q-hat file as an n x K matrix over `actions`,
    extended by any action the file names that the data never logged; returns the matrix and
    the extended action list. `option` names the file in errors (`--target`, `--q-hat`)."""
    if not path.is_file():
        raise OpeInputError(f"{option} {path}: no such file (expected 'uniform' or a .csv/.parquet policy file)")
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".pq"):
        frame = pd.read_parquet(path)
    elif suffix == ".csv":
        frame = pd.read_csv(path)
    else:
        raise OpeInputError(f"{option} {path}: unknown format '{suffix}'; expected .csv or .parquet")
    what = "probability" if probabilities else "expected reward"
    if set(LONG_COLUMNS) <= set(frame.columns):
        return _long_matrix(frame, path, n, actions, option, what)
    return _wide_matrix(frame, path, n, actions, option, what, probabilities)


def _long_matrix(frame: pd.DataFrame, path: Path, n: int, actions: list[str], option: str,
                 what: str) -> tuple[np.ndarray, list[str]]:
    value_col = "probability"
    rows = pd.to_numeric(frame["row"], errors="coerce")
    invalid = rows.isna() | (rows < 0) | (rows >= n) | (rows % 1 != 0)
    if invalid.any():
        bad = _plain(frame.loc[invalid, "row"].iloc[0])
        raise OpeInputError(f"{option} {path}: column 'row' has value {bad!r}; expected a row number 0..{n - 1} "
                            "of --data")
    names = [str(a) for a in frame["action"].astype(str).unique()]
    extended = actions + [a for a in names if a not in actions]
    col = {a: j for j, a in enumerate(extended)}
    vals = pd.to_numeric(frame[value_col], errors="coerce")
    if vals.isna().any():
        i = int(np.flatnonzero(vals.isna().to_numpy())[0])
        article = "an" if what[0] in "aeiou" else "a"
        raise OpeInputError(f"{option} {path}: column '{value_col}' has a non-numeric value at row {i} "
                            f"({_plain(frame[value_col].iloc[i])!r}); expected {article} {what}")
    if frame.duplicated(["row", "action"]).any():
        dup = [_plain(v) for v in frame.loc[frame.duplicated(["row", "action"]), ["row", "action"]].iloc[0]]
        raise OpeInputError(f"{option} {path}: (row, action) {dup} appears twice; expected one {what} per pair")
    out = np.zeros((n, len(extended)))
    out[rows.to_numpy(np.int64), frame["action"].astype(str).map(col).to_numpy(np.int64)] = vals.to_numpy()
    return out, extended


def _plain(value: Any) -> Any:
    """A numpy scalar as the Python value it holds, so a message shows `7`, not `np.int64(7)`."""
    return value.item() if isinstance(value, np.generic) else value


def _wide_matrix(frame: pd.DataFrame, path: Path, n: int, actions: list[str], option: str, what: str,
                 probabilities: bool) -> tuple[np.ndarray, list[str]]:
    if len(frame) != n:
        raise OpeInputError(f"{option} {path}: {len(frame):,} rows but --data has {n:,}; a wide file needs one row "
                            "per logged row (same order), or use the long format (columns row, action, probability)")
    names = [str(c) for c in frame.columns]
    extended = actions + [c for c in names if c not in actions]
    nonnum = [c for c in frame.columns if not pd.api.types.is_numeric_dtype(frame[c])]
    if nonnum:
        raise OpeInputError(f"{option} {path}: column(s) {nonnum[:5]} are not numeric; a wide file has one "
                            f"{what} column per action (the data's actions: {actions[:10]})")
    out = np.zeros((n, len(extended)))
    for c, name in zip(frame.columns, names, strict=True):
        out[:, extended.index(name)] = frame[c].to_numpy(np.float64)
    missing = [a for a in actions if a not in names]
    if missing and not probabilities:
        raise OpeInputError(f"{option} {path}: no column for logged action(s) {missing[:5]}; q-hat needs every action")
    return out, extended


def value_target(logged: LoggedDecisions, target: str, q_hat: Path | None = None, *,
                 confidence: float = DEFAULT_CONFIDENCE, limits: EvaluationLimits | None = None) -> TargetValue:
    """IPS, SNIPS and DR values of `target` ('uniform' or a policy file) on the logged
    decisions, with q-hat from a file for DR (default: each action's mean logged reward)."""
    n, actions = logged.n, list(logged.actions)
    if target == UNIFORM:
        pi = uniform_policy(n, len(actions))
        name = UNIFORM
    else:
        pi, actions = read_policy_file(Path(target), n, actions, "--target")
        name = Path(target).name
    q = None
    if q_hat is not None:
        q, with_q = read_policy_file(q_hat, n, actions, "--q-hat", probabilities=False)
        if with_q != actions:  # q-hat named an action the target did not: widen the target with zeros
            pi = np.hstack([pi, np.zeros((n, len(with_q) - len(actions)))])
            actions = with_q
    try:
        result = off_policy_value(logged.reward, logged.codes, logged.propensity, pi, policy=name, q_hat=q,
                                  clusters=logged.clusters, confidence=confidence, limits=limits,
                                  action_names=actions)
    except OpeInputError as exc:  # name the files the rows came from
        where = logged.source + ("" if target == UNIFORM else f" with --target {target}")
        raise OpeInputError(f"{where}{f' and --q-hat {q_hat}' if q_hat else ''}: {exc}") from None
    return TargetValue(logged.source, name, n, actions, result)
