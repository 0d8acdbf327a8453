"""Statistics of a randomised comparison: each arm's mean and its standard error, the lift of
every treated arm over a control arm with its confidence interval and p-value, a bootstrap
check of those intervals, and sample-size planning. No I/O: arrays in, value objects out.

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

What feeds it: `nba.evaluation.experiments` (experiment tables, CSV or Parquet) and
`nba.evaluation.incrementality` (the platform's decision log against its hold-out).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from nba.errors import NbaError

if TYPE_CHECKING:
    from nba.config import EvaluationLimits

DEFAULT_CONFIDENCE = 0.95


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
        return {k: jsonable(v) for k, v in out.items()}


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
            "control_stats": {k: jsonable(v) for k, v in asdict(self.control).items()},
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


# --- output helpers -------------------------------------------------------------------------


def slug(text: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in str(text).lower()).strip("_")


def jsonable(v: Any) -> Any:
    """NaN and infinities become None (JSON has neither); numpy scalars become Python ones."""
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, tuple | list):
        return [jsonable(x) for x in v]
    return v
