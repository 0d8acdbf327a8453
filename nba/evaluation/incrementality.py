"""Hold-out incrementality: what each treated group gained over a randomised control group.

For every treated arm against the control arm: n, mean (a response rate for a 0/1 outcome,
a value per unit for a numeric one), the absolute lift (treated mean - control mean), the
relative lift (treated mean / control mean - 1), a confidence interval of each and a
two-sided p-value. Everything is vectorised (one `np.bincount` per moment), so ten million
rows take seconds (benchmarks/bench_incrementality.py).

Estimators
----------
* Standard error of an arm's mean: s / sqrt(n) without clusters. With a cluster column (the
  customer: one customer has many decisions, and a hold-out is drawn per customer, not per
  decision) the mean is a ratio estimator sum(y) / sum(n) over clusters and its variance is
  K / (K - 1) sum_c (Y_c - mean N_c)^2 / N^2 (K clusters, Y_c and N_c a cluster's outcome sum
  and row count, N all rows): the usual cluster-robust variance. With one row per cluster it
  is exactly s^2 / n.
* Absolute lift: Welch's test. se = sqrt(se_t^2 + se_c^2), degrees of freedom by
  Welch-Satterthwaite (clusters counted as the sample sizes); CI lift +- t se, p-value from the
  same t (for thousands of rows it is the z-test).
* Relative lift: the delta method on the ratio of means R = m_t / m_c (independent arms):
  var(R) ~ se_t^2 / m_c^2 + m_t^2 se_c^2 / m_c^4; CI (R - 1) +- t se_R. Undefined (NaN, flagged)
  when the control mean is 0.
* `bootstrap_lift` resamples each arm (seeded, percentile CI) to check the delta-method
  intervals; the tests compare both.
* `sample_size` plans a test: customers per arm to detect a lift with a two-sided level
  alpha and a power, n_c = (z_{1-alpha/2} + z_power)^2 (sd_t^2 / ratio + sd_c^2) / lift^2,
  n_t = ratio n_c (unpooled variances, the Wald test this module runs).

An estimate too thin to trust is still reported, with `flags` naming why (`evaluation:` limits
of evaluation/gates.yaml): too few units in an arm, too few responders, no variation, a zero
control mean.

The platform's decision log
---------------------------
`log_incrementality` reads what `nba.decisioning.log.read_log` returns and compares each
treated group (`nba`: the arbitration's choice; `explore`: a uniformly random candidate)
with the universal hold-out (`holdout`: chosen by a salted hash of the customer, so it is a
random sample of customers; with `holdout_treatment: none` it is shown nothing).

* Unit and outcome: one decision. A decision *converted* if any outcome reported against it is
  `accepted`; its *value* is the sum of the values reported against it. A hold-out decision shows
  nothing, so the only outcome it can have is one a channel reports against action `do_nothing`:
  the customer did what the action would have asked for (bought, paid, ...) without being asked.
  Channels must report those, or the hold-out's rate is zero by omission and every lift is
  inflated: a hold-out without a single reported outcome, beside treated groups with some, is
  flagged. (`LogFrames.joined()` keeps only the outcome of the first shown action; this module
  counts every outcome of the decision.)
* Variance: clustered by customer, because the hold-out is drawn per customer and a customer's
  decisions are correlated. Hold-out and treated customers are disjoint, so the two arms of a
  comparison are independent.
* Overall and per channel: the channel is known before the experiment layer acts, so each
  channel's treated decisions are compared with that channel's hold-out decisions.
* Per action, honestly: a hold-out decision shows `do_nothing`, so its `action_id` cannot be
  the key. The key is the *intended action*: the action the arbitration picks for the decision
  (the candidate of highest priority among those the "do nothing" threshold kept, ties by the
  order the candidates were logged, which is the catalog's; `do_nothing` when none is left). The
  log records the threshold's verdict: a candidate below it also has a `filtered` row with stage
  `threshold` (`nba.serving`); an explicit `threshold` adds priority > threshold. It is a
  pre-treatment quantity computed the same way in every group, from the candidates the log keeps
  for hold-out decisions too, so "per action" compares customers for whom the platform would
  choose that action, treated (nba) or not (hold-out): an intent-to-treat lift. For `explore`
  decisions the same key measures "a random candidate instead of the intended action" against
  nothing. The intended action of an `nba` decision must be the action it showed: the share for
  which it is (`intended_agreement`) is reported, and below 99 % the per-action figures are
  flagged (a threshold or tie-break other than the one assumed). If the log keeps no candidates
  for hold-out decisions, per-action incrementality is not reported, and the report says so.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from nba.errors import DataFileError, NbaError, SchemaError

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

    from nba.stores.decisions import LogFrames
    from nba.training.gates import EvaluationLimits

DEFAULT_CONFIDENCE = 0.95
NO_ACTION = "do_nothing"  # nba.schemas.NO_ACTION (not imported: keeps this module's imports small)
INTENDED_AGREEMENT_MIN = 0.99


class ExperimentDataError(NbaError):
    """An experiment table or decision log cannot support the requested comparison."""


# --- value objects ----------------------------------------------------------------------


@dataclass(frozen=True)
class ArmStats:
    """One arm's sample: rows, independent units (clusters), mean and its standard error."""

    arm: str
    n: int
    units: int
    mean: float
    se: float
    responders: int  # rows with an outcome > 0

    def __post_init__(self) -> None:
        if self.n < 0 or self.units < 0 or self.units > self.n:
            raise ValueError(f"arm '{self.arm}': n = {self.n}, units = {self.units}: expected 0 <= units <= n")
        if self.responders < 0 or self.responders > self.n:
            raise ValueError(f"arm '{self.arm}': responders = {self.responders}: expected 0..{self.n}")


@dataclass(frozen=True)
class ArmLift:
    """A treated arm against the control: the lift, its CI and p-value, and any flags."""

    arm: str
    control: str
    n: int
    units: int
    mean: float
    se: float
    responders: int
    control_mean: float
    lift: float
    lift_se: float
    ci_low: float
    ci_high: float
    relative_lift: float
    relative_se: float
    relative_ci_low: float
    relative_ci_high: float
    p_value: float
    df: float
    confidence: float = DEFAULT_CONFIDENCE
    flags: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not 0.0 < self.confidence < 1.0:
            raise ValueError(f"confidence {self.confidence}: expected a level in (0, 1)")
        if not (math.isnan(self.ci_low) or self.ci_low <= self.lift <= self.ci_high):
            raise ValueError(f"arm '{self.arm}': lift {self.lift} outside its CI [{self.ci_low}, {self.ci_high}]")

    @property
    def reliable(self) -> bool:
        return not self.flags

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["flags"] = list(self.flags)
        out["reliable"] = self.reliable
        return {k: _jsonable(v) for k, v in out.items()}


@dataclass(frozen=True)
class Incrementality:
    """Every treated arm of one outcome (and one segment) against the control arm."""

    outcome: str
    control: ArmStats
    arms: tuple[ArmLift, ...]
    unit: str = "row"  # what an independent unit is: "row" or the cluster column
    segment: str = "overall"
    confidence: float = DEFAULT_CONFIDENCE

    def arm(self, name: str) -> ArmLift:
        for a in self.arms:
            if a.arm == name:
                return a
        raise KeyError(f"no arm '{name}'; arms: {[a.arm for a in self.arms]}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "outcome": self.outcome,
            "segment": self.segment,
            "unit": self.unit,
            "confidence": self.confidence,
            "control": self.control.arm,
            "control_stats": {k: _jsonable(v) for k, v in asdict(self.control).items()},
            "arms": [a.to_dict() for a in self.arms],
        }


@dataclass(frozen=True)
class BootstrapInterval:
    """Percentile bootstrap CIs of the absolute and relative lift (a check of the delta method)."""

    lift_low: float
    lift_high: float
    relative_low: float
    relative_high: float
    replicates: int
    seed: int
    confidence: float = DEFAULT_CONFIDENCE


@dataclass(frozen=True)
class SampleSize:
    """Units needed per arm to detect `lift` with a two-sided test at `alpha` with `power`."""

    control: int
    treated: int
    base: float
    lift: float
    sd_control: float
    sd_treated: float
    alpha: float
    power: float
    ratio: float

    @property
    def total(self) -> int:
        return self.control + self.treated


# --- the estimators ---------------------------------------------------------------------


@dataclass(frozen=True)
class ClusterPairs:
    """Which (cell, cluster) pair each row belongs to, built once and reused for every outcome.

    `pair` maps a row to its pair (0..n_pairs-1); `pair_cell` and `pair_n` give each pair's cell
    and row count. Built with one dense bincount when cells x clusters is small enough, else
    one hash factorisation: no sort of the rows."""

    pair: np.ndarray
    pair_cell: np.ndarray
    pair_n: np.ndarray

    DENSE_LIMIT = 1 << 24  # cells x clusters up to which one dense count array is used

    @classmethod
    def build(cls, cells: np.ndarray, n_cells: int, cluster_codes: np.ndarray, n_clusters: int) -> ClusterPairs:
        cells = np.asarray(cells, dtype=np.int64)
        codes = np.asarray(cluster_codes, dtype=np.int64)
        k = max(n_clusters, 1)
        size = k * n_cells
        if size <= cls.DENSE_LIMIT:
            key = codes * n_cells + cells
            counts = np.bincount(key, minlength=size)
            nz = np.flatnonzero(counts)
            remap = np.zeros(size, dtype=np.int64)
            remap[nz] = np.arange(len(nz))
            return cls(remap[key], nz % n_cells, counts[nz].astype(np.float64))
        if size <= 16 * len(cells) + cls.DENSE_LIMIT:
            # one dense count over clusters per cell: O(cells x clusters), no hashing
            small = cells.astype(np.int16) if n_cells < (1 << 15) else cells  # 16 bits: numpy's radix sort
            order = np.argsort(small, kind="stable")
            bounds = np.searchsorted(cells[order], np.arange(n_cells + 1))
            pair = np.empty(len(cells), dtype=np.int64)
            remap = np.empty(k, dtype=np.int64)
            pair_cell, pair_n, offset = [], [], 0
            for c in range(n_cells):
                idx = order[bounds[c]:bounds[c + 1]]
                if len(idx) == 0:
                    continue
                sub = codes[idx]
                counts = np.bincount(sub, minlength=k)
                nz = np.flatnonzero(counts)
                remap[nz] = np.arange(offset, offset + len(nz))
                pair[idx] = remap[sub]
                pair_cell.append(np.full(len(nz), c, dtype=np.int64))
                pair_n.append(counts[nz])
                offset += len(nz)
            return cls(pair, np.concatenate(pair_cell), np.concatenate(pair_n).astype(np.float64))
        import pandas as pd

        pair, uniques = pd.factorize(codes * n_cells + cells, sort=False)
        return cls(pair.astype(np.int64), np.asarray(uniques) % n_cells,
                   np.bincount(pair, minlength=len(uniques)).astype(np.float64))


def cluster_codes(clusters: Any) -> tuple[np.ndarray, int]:
    """Dense integer codes 0..K-1 of a cluster column (any hashable values) and K."""
    import pandas as pd

    codes, uniques = pd.factorize(np.asarray(clusters), sort=False)
    if (codes < 0).any():
        raise ExperimentDataError(f"the cluster column has {int((codes < 0).sum())} missing value(s)")
    return codes.astype(np.int64), len(uniques)


def cell_moments(y: np.ndarray, cells: np.ndarray, n_cells: int, clusters: np.ndarray | None = None, *,
                 pairs: ClusterPairs | None = None) -> dict[str, np.ndarray]:
    """Per cell (arm, or arm x segment): rows, units, mean, standard error of the mean, responders.

    `cells` holds integer codes 0..n_cells-1. Rows are independent unless `clusters` (the unit
    of each row, any hashable values) or prebuilt `pairs` say otherwise: then the mean's
    standard error is the cluster-robust one (module docstring). Vectorised: a few bincounts.
    """
    y = np.asarray(y, dtype=np.float64)
    cells = np.asarray(cells, dtype=np.int64)
    n = np.bincount(cells, minlength=n_cells).astype(np.int64)
    total = np.bincount(cells, weights=y, minlength=n_cells)
    responders = np.bincount(cells, weights=(y > 0), minlength=n_cells).astype(np.int64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = total / n
    if pairs is None and clusters is not None:
        codes, k = cluster_codes(clusters)
        pairs = ClusterPairs.build(cells, n_cells, codes, k)
    if pairs is None:
        dev = y - mean[cells]
        ss = np.bincount(cells, weights=dev * dev, minlength=n_cells)
        with np.errstate(invalid="ignore", divide="ignore"):
            var = np.where(n > 1, ss / np.maximum(n - 1, 1), np.nan)
            se = np.sqrt(var / n)
        units = n
    else:
        pair_y = np.bincount(pairs.pair, weights=y, minlength=len(pairs.pair_n))
        units = np.bincount(pairs.pair_cell, minlength=n_cells).astype(np.int64)
        resid = pair_y - mean[pairs.pair_cell] * pairs.pair_n
        ss = np.bincount(pairs.pair_cell, weights=resid * resid, minlength=n_cells)
        with np.errstate(invalid="ignore", divide="ignore"):
            var_mean = np.where(units > 1, units / np.maximum(units - 1, 1) * ss / (n.astype(np.float64) ** 2),
                                np.nan)
        se = np.sqrt(var_mean)
    return {"n": n, "units": units, "mean": mean, "se": se, "responders": responders}


def compare(treated: ArmStats, control: ArmStats, *, confidence: float = DEFAULT_CONFIDENCE,
            flags: Sequence[str] = ()) -> ArmLift:
    """The lift of `treated` over `control` (independent samples): Welch for the absolute
    lift, the delta method for the relative one."""
    from scipy.special import stdtr, stdtrit  # Student t CDF and quantile (scipy.stats imports far more)

    _check_confidence(confidence)
    mt, mc, st, sc = treated.mean, control.mean, treated.se, control.se
    lift = mt - mc
    vt, vc = st * st, sc * sc
    se = math.sqrt(vt + vc) if math.isfinite(vt + vc) else math.nan
    denom = (vt * vt / (treated.units - 1) if treated.units > 1 else math.inf) + \
        (vc * vc / (control.units - 1) if control.units > 1 else math.inf)
    df = (vt + vc) ** 2 / denom if denom > 0 and math.isfinite(denom) else math.nan
    if se > 0 and math.isfinite(df):
        q = float(stdtrit(df, 0.5 + confidence / 2))
        p = float(2 * stdtr(df, -abs(lift) / se))
    else:
        q, p = math.nan, math.nan
    lo, hi = lift - q * se, lift + q * se
    if mc != 0 and math.isfinite(mc):
        rel = mt / mc - 1.0
        rel_se = math.sqrt(vt / mc**2 + mt**2 * vc / mc**4) if math.isfinite(vt + vc) else math.nan
        rlo, rhi = rel - q * rel_se, rel + q * rel_se
    else:
        rel = rel_se = rlo = rhi = math.nan
    return ArmLift(
        arm=treated.arm, control=control.arm, n=treated.n, units=treated.units, mean=mt, se=st,
        responders=treated.responders, control_mean=mc, lift=lift, lift_se=se, ci_low=lo, ci_high=hi,
        relative_lift=rel, relative_se=rel_se, relative_ci_low=rlo, relative_ci_high=rhi, p_value=p, df=df,
        confidence=confidence, flags=tuple(flags))


def lift_flags(treated: ArmStats, control: ArmStats, limits: EvaluationLimits | None) -> list[str]:
    """Why a comparison should not be trusted (empty: nothing found)."""
    out: list[str] = []
    for role, a in (("control", control), ("arm", treated)):
        if a.n == 0:
            out.append(f"{role} '{a.arm}' has no rows")
            continue
        if limits is not None and a.units < limits.min_arm_size:
            out.append(f"{role} '{a.arm}' has {a.units} units, below min_arm_size {limits.min_arm_size}")
        if limits is not None and a.responders < limits.min_responses:
            out.append(f"{role} '{a.arm}' has {a.responders} responders, below min_responses "
                       f"{limits.min_responses}")
        if a.units < 2:
            out.append(f"{role} '{a.arm}' has {a.units} unit(s): no standard error")
    if treated.n and control.n and treated.se == 0 and control.se == 0:
        out.append("no variation in the outcome in either arm: no test is possible")
    if control.n and control.mean == 0:
        out.append(f"control '{control.arm}' mean is 0: the relative lift is undefined")
    return out


def incrementality(y: Any, arms: Any, control: Any, *, names: Sequence[str] | None = None,
                   clusters: Any = None, outcome: str = "outcome", unit: str | None = None,
                   segment: str = "overall", confidence: float = DEFAULT_CONFIDENCE,
                   limits: EvaluationLimits | None = None) -> Incrementality:
    """Every arm of `arms` against `control`, for outcome `y` (0/1 or numeric).

    `arms` holds labels (any values), or integer codes into `names` when `names` is given;
    `control` is a label (a name). `clusters`: the unit of randomisation per row (customer id),
    if rows are not independent.
    """
    y = _outcome_array(y, outcome)
    codes, labels = _codes(arms, names)
    if len(codes) != len(y):
        raise ExperimentDataError(f"{len(y)} outcome values but {len(codes)} arm labels; they must match")
    clus = None if clusters is None else cluster_codes(clusters)
    (result,) = segmented({outcome: y}, codes, labels, control, np.zeros(len(y), dtype=np.int64), [segment],
                          clusters=clus, unit=unit or ("cluster" if clusters is not None else "row"),
                          confidence=confidence, limits=limits)
    return result


def _arm_stats(name: str, m: Mapping[str, np.ndarray], i: int) -> ArmStats:
    return ArmStats(arm=str(name), n=int(m["n"][i]), units=int(m["units"][i]), mean=float(m["mean"][i]),
                    se=float(m["se"][i]), responders=int(m["responders"][i]))


def _codes(arms: Any, names: Sequence[str] | None) -> tuple[np.ndarray, list[str]]:
    if names is not None:
        codes = np.asarray(arms, dtype=np.int64)
        if len(codes) and (codes.min() < 0 or codes.max() >= len(names)):
            raise ExperimentDataError(f"arm codes outside 0..{len(names) - 1}")
        return codes, [str(n) for n in names]
    import pandas as pd

    codes, uniques = pd.factorize(np.asarray(arms), sort=True)
    if (codes < 0).any():
        raise ExperimentDataError(f"the arm labels have {int((codes < 0).sum())} missing value(s)")
    return codes.astype(np.int64), [str(u) for u in uniques]


def _control_index(labels: Sequence[str], control: Any) -> int:
    key = str(control)
    if key not in labels:
        raise ExperimentDataError(f"control arm '{key}' is not among the arms {list(labels)}")
    return list(labels).index(key)


def _outcome_array(y: Any, name: str) -> np.ndarray:
    arr = np.asarray(y)
    if arr.dtype == bool:
        arr = arr.astype(np.float64)
    if not np.issubdtype(arr.dtype, np.number):
        raise ExperimentDataError(f"outcome '{name}' is not numeric (dtype {arr.dtype}); expected 0/1 or numbers")
    arr = arr.astype(np.float64, copy=False)
    bad = ~np.isfinite(arr)
    if bad.any():
        raise ExperimentDataError(f"outcome '{name}' has {int(bad.sum())} missing or infinite value(s) "
                                  f"(first at row {int(np.flatnonzero(bad)[0])}); expected a number in every row")
    return arr


def _check_confidence(confidence: float) -> None:
    if not 0.0 < confidence < 1.0:
        raise ExperimentDataError(f"confidence {confidence}: expected a level in (0, 1), e.g. 0.95")


# --- bootstrap check and sample-size planning ------------------------------------------


def bootstrap_lift(treated: Any, control: Any, *, replicates: int = 2000, seed: int = 0,
                   confidence: float = DEFAULT_CONFIDENCE, chunk: int = 200) -> BootstrapInterval:
    """Percentile bootstrap of the absolute and relative lift, each arm resampled on its own
    (seeded). A 0/1 outcome is resampled exactly by a binomial draw of the responders; a
    numeric one by resampled row indices, `chunk` replicates at a time."""
    _check_confidence(confidence)
    yt = _outcome_array(treated, "treated")
    yc = _outcome_array(control, "control")
    if len(yt) < 2 or len(yc) < 2:
        raise ExperimentDataError(f"bootstrap needs 2+ rows per arm (treated {len(yt)}, control {len(yc)})")
    rng = np.random.default_rng(seed)
    mt, mc = _resampled_means(yt, replicates, rng, chunk), _resampled_means(yc, replicates, rng, chunk)
    a = (1 - confidence) / 2
    lift = mt - mc
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = mt / mc - 1.0
    rel = rel[np.isfinite(rel)]
    rlo, rhi = (np.quantile(rel, [a, 1 - a]) if len(rel) else (math.nan, math.nan))
    lo, hi = np.quantile(lift, [a, 1 - a])
    return BootstrapInterval(float(lo), float(hi), float(rlo), float(rhi), replicates, seed, confidence)


def _resampled_means(y: np.ndarray, replicates: int, rng: np.random.Generator, chunk: int) -> np.ndarray:
    n = len(y)
    if np.isin(y, (0.0, 1.0)).all():
        return rng.binomial(n, y.mean(), size=replicates) / n
    out = np.empty(replicates)
    for start in range(0, replicates, chunk):
        k = min(chunk, replicates - start)
        out[start:start + k] = y[rng.integers(0, n, size=(k, n))].mean(axis=1)
    return out


def sample_size(base: float, *, lift: float | None = None, relative_lift: float | None = None,
                sd: float | None = None, alpha: float = 0.05, power: float = 0.8, ratio: float = 1.0) -> SampleSize:
    """Units per arm to detect an absolute `lift` (or a `relative_lift`) over `base` with a
    two-sided test at level `alpha` and the given power.

    Without `sd`, `base` is a response rate in (0, 1) and each arm's sd is sqrt(p (1 - p));
    with `sd`, `base` is a mean and both arms share that sd. `ratio` = treated / control units
    (a 10 % hold-out beside 90 % treated is ratio 9).
    """
    from statistics import NormalDist

    if (lift is None) == (relative_lift is None):
        raise ExperimentDataError("sample size: give exactly one of lift (absolute) or relative_lift")
    if not 0 < alpha < 1 or not 0 < power < 1:
        raise ExperimentDataError(f"sample size: alpha {alpha} and power {power} must each be in (0, 1)")
    if not ratio > 0:
        raise ExperimentDataError(f"sample size: ratio {ratio} must be > 0 (treated units per control unit)")
    delta = float(lift) if lift is not None else float(base) * float(relative_lift)  # type: ignore[arg-type]
    if delta == 0 or not math.isfinite(delta):
        raise ExperimentDataError(f"sample size: the lift to detect is {delta}; expected a non-zero number")
    if sd is None:
        p0, p1 = float(base), float(base) + delta
        for what, p in (("base rate", p0), ("base rate + lift", p1)):
            if not 0 < p < 1:
                raise ExperimentDataError(f"sample size: {what} = {p}; a rate must be in (0, 1) (pass sd for a "
                                          "numeric outcome)")
        sd_c, sd_t = math.sqrt(p0 * (1 - p0)), math.sqrt(p1 * (1 - p1))
    else:
        if not sd > 0:
            raise ExperimentDataError(f"sample size: sd {sd} must be > 0")
        sd_c = sd_t = float(sd)
    z = NormalDist().inv_cdf(1 - alpha / 2) + NormalDist().inv_cdf(power)
    n_c = z * z * (sd_t**2 / ratio + sd_c**2) / delta**2
    n_control = math.ceil(n_c - 1e-9)
    return SampleSize(control=n_control, treated=math.ceil(ratio * n_c - 1e-9), base=float(base), lift=delta,
                      sd_control=sd_c, sd_treated=sd_t, alpha=alpha, power=power, ratio=float(ratio))


# --- experiment tables (CSV / Parquet) ---------------------------------------------------


@dataclass(frozen=True)
class ExperimentReport:
    """Incrementality of one experiment table: the primary outcome, the value column if any,
    and per-segment figures."""

    source: str
    arm_column: str
    control: str
    results: tuple[Incrementality, ...]  # overall: the outcome, then the value column
    segments: tuple[tuple[str, Incrementality], ...] = ()  # (segment column, result)
    notes: tuple[str, ...] = ()
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def primary(self) -> Incrementality:
        return self.results[0]

    def to_dict(self) -> dict[str, Any]:
        primary = self.primary.to_dict()
        out: dict[str, Any] = {
            "source": self.source,
            "arm_column": self.arm_column,
            "control": self.control,
            "outcome": primary["outcome"],
            "unit": primary["unit"],
            "confidence": primary["confidence"],
            "control_stats": primary["control_stats"],
            "arms": primary["arms"],
            "outcomes": [r.to_dict() for r in self.results],
            "segments": [{"by": by, **r.to_dict()} for by, r in self.segments],
            "notes": list(self.notes),
        }
        out.update({k: _jsonable(v) for k, v in self.extra.items()})
        return out

    def values(self, prefix: str = "incrementality") -> dict[str, float]:
        """Flat figures for dashboards: `incrementality.<table>.<arm>.<outcome>.lift` (and
        `relative_lift`, `p_value`, `<table>.control.<outcome>.mean`), `<table>` the file's stem."""
        table = _slug(Path(self.source).stem) or "table"
        out: dict[str, float] = {}
        for r in self.results:
            for a in r.arms:
                base = f"{prefix}.{table}.{_slug(a.arm)}.{_slug(r.outcome)}"
                out[f"{base}.lift"] = a.lift
                out[f"{base}.relative_lift"] = a.relative_lift
                out[f"{base}.p_value"] = a.p_value
            out[f"{prefix}.{table}.control.{_slug(r.outcome)}.mean"] = r.control.mean
        return {k: float(v) for k, v in out.items() if v == v}


def read_table(path: Path, columns: Sequence[str]) -> pa.Table:
    """The named columns of a CSV or Parquet file; errors name the file and what is missing."""
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    path = Path(path)
    if not path.is_file():
        raise DataFileError(f"{path}: no such file (expected a CSV or Parquet experiment table)")
    cols = list(dict.fromkeys(columns))
    suffix = path.suffix.lower()
    try:
        if suffix in (".parquet", ".pq"):
            available = pq.read_schema(path).names
            _require_columns(path, cols, available)
            return pq.read_table(path, columns=cols)
        if suffix in (".csv", ".txt") or path.name.lower().endswith(".csv.gz"):
            header = pacsv.open_csv(path).schema.names
            _require_columns(path, cols, header)
            return pacsv.read_csv(path, convert_options=pacsv.ConvertOptions(include_columns=cols))
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataFileError(f"{path}: cannot read it as {suffix.lstrip('.') or 'a table'} ({exc})") from None
    raise DataFileError(f"{path}: unknown table format '{suffix}'; expected .csv or .parquet")


def _require_columns(path: Path, wanted: Sequence[str], available: Sequence[str]) -> None:
    missing = [c for c in wanted if c not in available]
    if missing:
        raise SchemaError(f"{path}: no column(s) {missing}; the file has {list(available)}")


def column_codes(table: pa.Table, column: str, source: str) -> tuple[np.ndarray, list[str]]:
    """Integer codes and labels of a categorical column, without building Python strings per row."""
    import pyarrow as pa

    col = table.column(column)
    if col.null_count:
        raise SchemaError(f"{source}: column '{column}' has {col.null_count} empty value(s); every row needs one")
    if pa.types.is_dictionary(col.type):  # already encoded (Parquet from Arrow): use its indices
        enc = col.unify_dictionaries().combine_chunks() if col.num_chunks != 1 else col.chunk(0)
    else:
        enc = col.combine_chunks().dictionary_encode() if col.num_chunks != 1 else col.chunk(0).dictionary_encode()
    codes = enc.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    labels = [str(v) for v in enc.dictionary.to_pylist()]
    used = np.bincount(codes, minlength=len(labels)) > 0
    if not used.all():  # a dictionary may hold values no row uses: drop them
        remap = np.cumsum(used) - 1
        codes, labels = remap[codes], [lab for lab, u in zip(labels, used, strict=True) if u]
    if len(set(labels)) != len(labels):  # e.g. 1 and "1" in one column: merge equal labels
        import pandas as pd

        merged, uniques = pd.factorize(np.asarray(labels, dtype=object))
        codes, labels = merged[codes].astype(np.int64), [str(u) for u in uniques]
    return codes, labels


def column_numbers(table: pa.Table, column: str, source: str) -> np.ndarray:
    """A numeric (or boolean) column as float64; errors name the file, the column and the value."""
    import pyarrow as pa
    import pyarrow.compute as pc

    col = table.column(column)
    if pa.types.is_boolean(col.type):
        col = col.cast(pa.int8())
    if not (pa.types.is_integer(col.type) or pa.types.is_floating(col.type) or pa.types.is_decimal(col.type)):
        sample = next((v for v in col.to_pylist()[:100] if v is not None), None)
        raise SchemaError(f"{source}: column '{column}' holds {col.type} values (e.g. {sample!r}); "
                          "expected 0/1 or numbers")
    if col.null_count:
        first = int(pc.index(pc.is_null(col), True).as_py())
        raise SchemaError(f"{source}: column '{column}' has {col.null_count} empty value(s) (first at row "
                          f"{first}); expected a number in every row")
    arr = col.to_numpy().astype(np.float64, copy=False)
    bad = ~np.isfinite(arr)
    if bad.any():
        raise SchemaError(f"{source}: column '{column}' has {int(bad.sum())} infinite or NaN value(s) (first at "
                          f"row {int(np.flatnonzero(bad)[0])}); expected finite numbers")
    return arr


def experiment_incrementality(table: pa.Table | pd.DataFrame, *, arm_column: str, control: str,
                              outcome: str | Sequence[str], value_column: str | None = None,
                              cluster_column: str | None = None, segment_columns: Sequence[str] = (),
                              source: str = "table", confidence: float = DEFAULT_CONFIDENCE,
                              limits: EvaluationLimits | None = None) -> ExperimentReport:
    """Incrementality of every arm over `control` in an experiment table (one row per unit,
    or per decision with `cluster_column` naming the unit), for one outcome column or several
    (the first is the primary) and the value column if any."""
    import pyarrow as pa

    if not isinstance(table, pa.Table):
        table = pa.Table.from_pandas(table, preserve_index=False)
    outcomes = [outcome] if isinstance(outcome, str) else list(dict.fromkeys(outcome))
    if not outcomes:
        raise ExperimentDataError(f"{source}: no outcome column given")
    needed = [arm_column, *outcomes, *([value_column] if value_column else []),
              *([cluster_column] if cluster_column else []), *segment_columns]
    _require_columns(Path(source), needed, table.schema.names)
    if table.num_rows == 0:
        raise ExperimentDataError(f"{source}: the table has no rows")
    codes, labels = column_codes(table, arm_column, source)
    if str(control) not in labels:
        shown = labels[:20]
        raise ExperimentDataError(f"{source}: control value '{control}' does not occur in column '{arm_column}'; "
                                  f"its values are {shown}{' ...' if len(labels) > 20 else ''}")
    if len(labels) < 2:
        raise ExperimentDataError(f"{source}: column '{arm_column}' holds only '{labels[0]}'; expected the control "
                                  "and at least one treated arm")
    clusters = None
    if cluster_column:
        col = table.column(cluster_column)
        if col.null_count:
            raise SchemaError(f"{source}: column '{cluster_column}' has {col.null_count} empty value(s); every row "
                              "needs its unit")
        clusters = cluster_codes(col.combine_chunks().to_numpy(zero_copy_only=False))
    ys = {name: column_numbers(table, name, source) for name in outcomes}
    if value_column and value_column not in ys:
        ys[value_column] = column_numbers(table, value_column, source)
    unit = cluster_column or "row"
    results = tuple(segmented(ys, codes, labels, control, np.zeros(len(codes), dtype=np.int64), ["overall"],
                              clusters=clusters, unit=unit, confidence=confidence, limits=limits))
    segments: list[tuple[str, Incrementality]] = []
    for seg_col in segment_columns:
        seg_codes, seg_labels = column_codes(table, seg_col, source)
        segments.extend((seg_col, r) for r in segmented(
            ys, codes, labels, control, seg_codes, seg_labels, clusters=clusters, unit=unit,
            confidence=confidence, limits=limits))
    return ExperimentReport(source=source, arm_column=arm_column, control=str(control), results=results,
                            segments=tuple(segments), extra={"rows": table.num_rows})


def segmented(ys: Mapping[str, np.ndarray], arm_codes: np.ndarray, arm_labels: Sequence[str], control: str,
              seg_codes: np.ndarray, seg_labels: Sequence[str], *, clusters: tuple[np.ndarray, int] | None = None,
              unit: str = "row", confidence: float = DEFAULT_CONFIDENCE, limits: EvaluationLimits | None = None,
              prefix: str = "") -> list[Incrementality]:
    """`incrementality` of every outcome of `ys` within each segment, from one pass over the
    (segment, arm) cells: the cluster pairs are built once for all outcomes. `clusters`: the
    (codes, count) of `cluster_codes`. Results are ordered by outcome, then segment."""
    k = len(arm_labels)
    ctrl = _control_index(arm_labels, control)
    cells = np.asarray(seg_codes, dtype=np.int64) * k + np.asarray(arm_codes, dtype=np.int64)
    n_cells = len(seg_labels) * k
    pairs = ClusterPairs.build(cells, n_cells, *clusters) if clusters is not None else None
    out = []
    for outcome, y in ys.items():
        m = cell_moments(y, cells, n_cells, pairs=pairs)
        for s, seg in enumerate(seg_labels):
            st = [_arm_stats(arm_labels[i], m, s * k + i) for i in range(k)]
            if all(a.n == 0 for a in st):
                continue
            lifts = tuple(compare(st[i], st[ctrl], confidence=confidence,
                                  flags=lift_flags(st[i], st[ctrl], limits)) for i in range(k) if i != ctrl)
            out.append(Incrementality(outcome=outcome, control=st[ctrl], arms=lifts, unit=unit,
                                      segment=f"{prefix}{seg}", confidence=confidence))
    return out


# --- the platform's decision log -----------------------------------------------------------


HOLDOUT, NBA_GROUP, EXPLORE = "holdout", "nba", "explore"


def decision_outcomes(frames: LogFrames, *, threshold: float | None = None) -> pd.DataFrame:
    """One row per logged decision: its group, channel, shown and intended action, `converted`
    (0/1: an `accepted` outcome reported against the decision, any action) and `value` (the sum
    of the values reported against it). See the module docstring for the definitions."""
    import pandas as pd

    d = frames.decisions
    if len(d) == 0:
        raise ExperimentDataError("the decision log holds no decision")
    cols = ["decision_id", "customer_id", "channel", "experiment_group", "action_id", "probability",
            *(["n_candidates"] if "n_candidates" in d.columns else [])]
    out = d[cols].copy()
    o = frames.outcomes
    if len(o):
        per = pd.DataFrame({"decision_id": o["decision_id"].astype(str),
                            "accepted": (o["outcome"].astype(str) == "accepted").astype(np.int64),
                            "value": o["value"].astype(np.float64)})
        agg = per.groupby("decision_id", sort=False).agg(converted=("accepted", "max"), value=("value", "sum"),
                                                          reported=("accepted", "size"))
        out = out.merge(agg, left_on="decision_id", right_index=True, how="left")
    else:
        out["converted"], out["value"], out["reported"] = 0, 0.0, 0
    out["converted"] = out["converted"].fillna(0).astype(np.int64)
    out["value"] = out["value"].fillna(0.0).astype(np.float64)
    out["reported"] = out["reported"].fillna(0).astype(np.int64)
    out["intended_action"] = intended_actions(frames.candidates, out["decision_id"], filtered=frames.filtered,
                                              threshold=threshold)
    has_cands = set(frames.candidates["decision_id"].astype(str)) if len(frames.candidates) else set()
    out["has_candidates"] = out["decision_id"].astype(str).isin(has_cands)
    return out


def above_threshold(candidates: pd.DataFrame, filtered: pd.DataFrame | None, threshold: float | None = None
                    ) -> np.ndarray:
    """Per candidate row: did the "do nothing" threshold keep it? False where the log has a
    `filtered` row with stage `threshold` for the same decision and action, or (with an explicit
    `threshold`) where its priority is not above it."""
    import pandas as pd

    keep = np.ones(len(candidates), dtype=bool)
    if filtered is not None and len(filtered) and len(candidates):
        below = filtered[filtered["stage"].astype(str) == "threshold"]
        if len(below):
            key = pd.MultiIndex.from_arrays([below["decision_id"].astype(str), below["action_id"].astype(str)])
            cand = pd.MultiIndex.from_arrays([candidates["decision_id"].astype(str),
                                               candidates["action_id"].astype(str)])
            keep &= ~cand.isin(key)
    if threshold is not None and len(candidates):
        keep &= candidates["priority"].astype(np.float64).to_numpy() > threshold
    return keep


def intended_actions(candidates: pd.DataFrame, decision_ids: pd.Series, *, filtered: pd.DataFrame | None = None,
                     threshold: float | None = None, score: str = "priority") -> np.ndarray:
    """The action the arbitration picks per decision: the candidate of highest `score` that the
    threshold kept (`above_threshold`), ties by the order the candidates were logged;
    `do_nothing` without one."""
    import pandas as pd

    ids = decision_ids.astype(str).to_numpy()
    out = np.full(len(ids), NO_ACTION, dtype=object)
    if len(candidates) == 0:
        return out
    c = candidates[["decision_id", "action_id", score]].copy()
    c["decision_id"] = c["decision_id"].astype(str)
    c["_order"] = np.arange(len(c))
    c = c[above_threshold(candidates, filtered, threshold) & c[score].notna().to_numpy()]
    if len(c) == 0:
        return out
    c = c.sort_values(["decision_id", score, "_order"], ascending=[True, False, True], kind="stable")
    best = c.drop_duplicates("decision_id", keep="first")
    winner = pd.Series(best["action_id"].astype(str).to_numpy(), index=best["decision_id"].to_numpy())
    hit = winner.reindex(ids)
    mask = hit.notna().to_numpy()
    out[mask] = hit.to_numpy()[mask]
    return out


@dataclass(frozen=True)
class LogIncrementality:
    """Incrementality of the platform's treated groups over the hold-out, from the decision log."""

    overall: tuple[Incrementality, ...]  # converted, value
    by_channel: tuple[Incrementality, ...]
    by_action: tuple[Incrementality, ...]
    diagnostics: Mapping[str, Any]
    notes: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        primary = self.overall[0].to_dict()
        return {
            "source": "decision_log",
            "arm_column": "experiment_group",
            "control": HOLDOUT,
            "outcome": primary["outcome"],
            "unit": primary["unit"],
            "confidence": primary["confidence"],
            "control_stats": primary["control_stats"],
            "arms": primary["arms"],
            "outcomes": [r.to_dict() for r in self.overall],
            "segments": [{"by": "channel", **r.to_dict()} for r in self.by_channel]
            + [{"by": "intended_action", **r.to_dict()} for r in self.by_action],
            "diagnostics": {k: _jsonable(v) for k, v in self.diagnostics.items()},
            "notes": list(self.notes),
        }

    def values(self, prefix: str = "incrementality") -> dict[str, float]:
        """Flat figures for dashboards: `incrementality.overall.lift` (nba over the hold-out,
        conversion), `incrementality.overall.<group>.<outcome>.lift`, per channel and action."""
        out: dict[str, float] = {}
        for r in self.overall:
            for a in r.arms:
                out[f"{prefix}.overall.{a.arm}.{r.outcome}.lift"] = a.lift
                out[f"{prefix}.overall.{a.arm}.{r.outcome}.relative_lift"] = a.relative_lift
                if a.arm == NBA_GROUP and r.outcome == "converted":
                    out[f"{prefix}.overall.lift"] = a.lift
                    out[f"{prefix}.overall.relative_lift"] = a.relative_lift
                    out[f"{prefix}.overall.p_value"] = a.p_value
        for by, results in (("channel", self.by_channel), ("action", self.by_action)):
            for r in results:
                for a in r.arms:
                    if a.arm == NBA_GROUP:
                        out[f"{prefix}.{by}.{_slug(r.segment)}.{r.outcome}.lift"] = a.lift
        return {k: float(v) for k, v in out.items() if v == v}


def log_incrementality(frames: LogFrames, *, threshold: float | None = None, confidence: float = DEFAULT_CONFIDENCE,
                       limits: EvaluationLimits | None = None) -> LogIncrementality:
    """`nba` and `explore` decisions against the hold-out: overall, per channel and per intended
    action, for conversion and value, clustered by customer."""
    frame = decision_outcomes(frames, threshold=threshold)
    groups = frame["experiment_group"].astype(str)
    unknown = sorted(set(groups) - {HOLDOUT, NBA_GROUP, EXPLORE})
    if unknown:
        raise ExperimentDataError(f"decision log: experiment_group value(s) {unknown}; expected holdout, nba, "
                                  "explore")
    arm_labels = [HOLDOUT, NBA_GROUP, EXPLORE]
    present = [g for g in arm_labels if (groups == g).any()]
    if HOLDOUT not in present:
        raise ExperimentDataError(f"decision log: no hold-out decision among {len(frame):,} decisions, so there is "
                                  "no control to measure incrementality against (is experiment.holdout_share 0?)")
    if present == [HOLDOUT]:
        raise ExperimentDataError(f"decision log: all {len(frame):,} decisions are in the hold-out; no treated "
                                  "decision to compare")
    codes = groups.map({g: i for i, g in enumerate(present)}).to_numpy(np.int64)
    clusters = cluster_codes(frame["customer_id"].to_numpy())
    ys = {"converted": frame["converted"].to_numpy(np.float64), "value": frame["value"].to_numpy(np.float64)}

    is_h = (groups == HOLDOUT).to_numpy()
    notes: list[str] = [
        "unit: decision; variance clustered by customer (the hold-out is drawn per customer)",
        "converted: an 'accepted' outcome reported against the decision (hold-out: against do_nothing); "
        "value: the sum of the values reported against it",
    ]
    extra_flags: list[str] = []
    reported_h = int(frame.loc[is_h, "reported"].sum())
    if reported_h == 0 and int(frame.loc[~is_h, "reported"].sum()) > 0:
        extra_flags.append("no outcome was reported against any hold-out decision: a conversion without contact "
                           "must be reported with action_id do_nothing, else the hold-out rate is 0 by omission")
    shown_h = frame.loc[is_h, "action_id"].astype(str) != NO_ACTION
    control_treatment = ("nothing" if not shown_h.any() else "random candidate" if shown_h.all() else "mixed")
    if control_treatment != "nothing":
        notes.append(f"the hold-out was shown {'a random candidate' if control_treatment != 'mixed' else 'an action'} "
                     f"in {float(shown_h.mean()):.1%} of its decisions: the lift is over that, not over nothing")

    def by(seg_codes: np.ndarray, seg_labels: list[str], flags: Sequence[str]) -> tuple[Incrementality, ...]:
        return tuple(_with_flags(r, flags) for r in segmented(
            ys, codes, present, HOLDOUT, seg_codes, seg_labels, clusters=clusters, unit="customer_id",
            confidence=confidence, limits=limits))

    overall = by(np.zeros(len(frame), dtype=np.int64), ["overall"], extra_flags)
    by_channel = by(*_factorize(frame["channel"].astype(str).to_numpy()), extra_flags)

    is_nba = (groups == NBA_GROUP).to_numpy()
    agreement = (float((frame.loc[is_nba, "intended_action"].astype(str)
                        == frame.loc[is_nba, "action_id"].astype(str)).mean()) if is_nba.any() else math.nan)
    # hold-out decisions that had candidates (n_candidates > 0) but whose candidates the log lacks
    h_cands = frame.loc[is_h, "has_candidates"].to_numpy(bool)
    h_should = (frame.loc[is_h, "n_candidates"].to_numpy() > 0) if "n_candidates" in frame else h_cands
    h_missing = int((h_should & ~h_cands).sum())
    by_action: tuple[Incrementality, ...] = ()
    if h_should.any() and h_missing == int(h_should.sum()):
        notes.append("per-action incrementality is not reported: the log keeps no candidates for hold-out "
                     "decisions, so the action the arbitration would have chosen for them is unknown; see the "
                     "overall and per-channel figures")
    else:
        act_flags = list(extra_flags)
        if h_missing:
            act_flags.append(f"{h_missing} hold-out decision(s) with candidates have none in the log: their "
                             "intended action counts as do_nothing")
        if agreement == agreement and agreement < INTENDED_AGREEMENT_MIN:
            act_flags.append(f"the intended action (highest priority kept by the threshold) matches the shown "
                             f"action in only {agreement:.1%} of nba decisions: the threshold or tie-break assumed "
                             "is not the arbitration's")
        by_action = by(*_factorize(frame["intended_action"].astype(str).to_numpy()), act_flags)
        notes.append("per action: by the intended action (the arbitration's pick: highest priority kept by the "
                     "threshold, same rule in every group), an intent-to-treat comparison")
    diagnostics = {
        "decisions": len(frame),
        "customers": int(frame["customer_id"].nunique()),
        **{f"{g}_decisions": int((groups == g).sum()) for g in arm_labels},
        "holdout_outcomes_reported": reported_h,
        "holdout_treatment": control_treatment,
        "holdout_decisions_missing_candidates": h_missing,
        "intended_agreement": agreement,
        "threshold": threshold,
    }
    return LogIncrementality(overall=overall, by_channel=by_channel, by_action=by_action, diagnostics=diagnostics,
                             notes=tuple(notes))


def _with_flags(r: Incrementality, flags: Sequence[str]) -> Incrementality:
    if not flags:
        return r
    from dataclasses import replace

    return replace(r, arms=tuple(replace(a, flags=(*a.flags, *flags)) for a in r.arms))


def _factorize(values: np.ndarray) -> tuple[np.ndarray, list[str]]:
    import pandas as pd

    codes, uniques = pd.factorize(values, sort=True)
    return codes.astype(np.int64), [str(u) for u in uniques]


# --- output helpers -------------------------------------------------------------------------


def _slug(text: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in str(text).lower()).strip("_")


def _jsonable(v: Any) -> Any:
    """NaN and infinities become None (JSON has neither); numpy scalars become Python ones."""
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, tuple | list):
        return [_jsonable(x) for x in v]
    return v
