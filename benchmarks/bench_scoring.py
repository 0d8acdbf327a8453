"""Serve-time tree scoring, one thread: ONNX Runtime against XGBoost's `inplace_predict` (and
the numpy tree walker the service used before, for the before/after figure).

Trains models of the champions' shapes on synthetic rows (60 columns, 15 % missing): the
pooled propensity and churn models (depth 2, 200 trees), CLV (depth 3, 300 trees) and the
deepest the tuning spaces allow (depth 6, 300 trees); converts them as `nba bundle build` does
(`nba.serving.models.to_onnx`) and times the margin of 1..512 rows through each path of
`FastModel` with one thread each (the service runs several workers). Prints a table per
shape, the crossover (the fewest rows at which XGBoost is faster) and the per-decision cost
of scoring one customer (10 actions through the pooled model, churn and CLV one row each).
Three interleaved runs; each figure is the median of a run, and the spread is over runs.

`nba.serving.models.SWITCH_WORK` (the rows x trees x depth from which a model is scored by
XGBoost) is chosen from this benchmark's crossovers (benchmarks/RESULTS.md).

    python benchmarks/bench_scoring.py [--runs 3] [--budget 0.04]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

import numpy as np
import pandas as pd

ROWS = [1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512]
SHAPES = {  # name: (max_depth, n_estimators, objective)
    "propensity/churn d2x200": (2, 200, "binary:logistic"),
    "clv d3x300": (3, 300, "reg:tweedie"),
    "deepest d6x300": (6, 300, "binary:logistic"),
}
WIDTH = 60
ACTIONS = 10  # a decision scores every action of the catalog through the pooled model


class OldTreeWalker:
    """The numpy tree walker of `nba/serving/models.py` at commit 356c7ad (`TreeEnsemble`),
    kept here only to measure the cost before ONNX Runtime; margins only."""

    def __init__(self, booster: Any):
        config = json.loads(booster.save_config())
        objective = config["learner"]["objective"]["name"]
        link = {"binary:logistic": "logit", "reg:tweedie": "log"}[objective]
        base = float(str(config["learner"]["learner_model_param"]["base_score"]).strip("[]").split(",")[0])
        self.base_margin = float(np.log(base / (1 - base))) if link == "logit" else float(np.log(base))
        feat: list[int] = []
        thr: list[float] = []
        left: list[int] = []
        miss_right: list[bool] = []
        leaf: list[float] = []
        roots: list[int] = []
        depth = 0

        def place() -> int:
            feat.append(0)
            thr.append(np.nan)
            left.append(len(left))
            miss_right.append(False)
            leaf.append(0.0)
            return len(feat) - 1

        for dump in booster.get_dump(dump_format="json"):
            tree = json.loads(dump)
            queue = [(tree, place(), 0)]
            roots.append(queue[0][1])
            while queue:
                node, at, d = queue.pop(0)
                depth = max(depth, d)
                if "leaf" in node:
                    leaf[at] = float(node["leaf"])
                    continue
                children = {c["nodeid"]: c for c in node["children"]}
                yes, no = children[node["yes"]], children[node["no"]]
                y_at, n_at = place(), place()
                feat[at] = int(str(node["split"]).lstrip("f"))
                thr[at] = float(node["split_condition"])
                left[at] = y_at
                miss_right[at] = node["missing"] == node["no"]
                queue.extend([(yes, y_at, d + 1), (no, n_at, d + 1)])
        self.depth = depth
        self.feat = np.asarray(feat, dtype=np.int32)
        self.thr = np.asarray(thr, dtype=np.float32)
        self.left = np.asarray(left, dtype=np.int32)
        self.miss_right = np.asarray(miss_right, dtype=np.int32)
        self.leaf = np.asarray(leaf, dtype=np.float32)
        self.roots = np.asarray(roots, dtype=np.int32)

    def margin(self, X: np.ndarray) -> np.ndarray:
        missing = bool(np.isnan(X).any())
        if X.shape[0] == 1:
            x = X[0]
            node = self.roots
            for _ in range(self.depth):
                v = x[self.feat[node]]
                right = v >= self.thr[node]
                if missing:
                    right = np.where(np.isnan(v), self.miss_right[node], right)
                node = self.left[node] + right
            return np.array([self.leaf[node].sum(dtype=np.float64) + self.base_margin])
        node = np.broadcast_to(self.roots, (X.shape[0], self.roots.size))
        r = np.arange(X.shape[0])[:, None]
        for _ in range(self.depth):
            v = X[r, self.feat[node]]
            right = v >= self.thr[node]
            if missing:
                right = np.where(np.isnan(v), self.miss_right[node], right)
            node = self.left[node] + right
        return self.leaf[node].sum(axis=1, dtype=np.float64) + self.base_margin


def train(depth: int, trees: int, objective: str, seed: int) -> Any:
    from nba.serving.models import FastModel, to_onnx
    from nba.training.models import CalibratedXGBClassifier, XGBRegressorOnFrame

    rng = np.random.default_rng(seed)
    n = 20_000
    frame = pd.DataFrame(rng.normal(size=(n, WIDTH)), columns=[f"x{i}" for i in range(WIDTH)])
    z = frame.iloc[:, :12].to_numpy() @ rng.normal(size=12) + frame["x0"] * frame["x1"]
    frame = frame.mask(rng.random(frame.shape) < 0.15)
    params = {"max_depth": depth, "n_estimators": trees, "objective": objective}
    if objective == "binary:logistic":
        model = CalibratedXGBClassifier(params, calibration="sigmoid", n_jobs=2, random_state=seed)
        model.fit(frame, (z + rng.normal(size=n) > 1).astype(int))
    else:
        model = XGBRegressorOnFrame(params, n_jobs=2, random_state=seed)
        model.fit(frame, np.where(z > 0.5, np.exp(3 + 0.3 * z), 0.0))
    return FastModel(f"d{depth}x{trees}", model, to_onnx(model), nthread=1)


def per_call(fn: Any, X: np.ndarray, budget: float) -> float:
    """Median seconds of one call, repeating for about `budget` seconds (at least 15 calls)."""
    for _ in range(3):
        fn(X)  # warm
    times: list[float] = []
    end = time.perf_counter() + budget
    while len(times) < 15 or time.perf_counter() < end:
        t = time.perf_counter()
        fn(X)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--budget", type=float, default=0.04, help="seconds per (shape, rows, path) per run")
    args = parser.parse_args()

    from nba.serving.models import SWITCH_WORK

    models = {name: train(*shape, seed=i) for i, (name, shape) in enumerate(SHAPES.items())}
    walkers = {name: OldTreeWalker(m.booster) for name, m in models.items()}
    rng = np.random.default_rng(0)
    X = rng.normal(size=(max(ROWS), WIDTH)).astype(np.float32)
    X[rng.random(X.shape) < 0.15] = np.nan
    for name, m in models.items():  # the three give the same margins
        assert np.array_equal(m.margin_onnx(X), m.margin_xgboost(X)), name
        assert np.allclose(walkers[name].margin(X), m.margin_xgboost(X), atol=1e-4), name
    paths = {"onnx": lambda m, w: m.margin_onnx, "xgboost": lambda m, w: m.margin_xgboost,
             "numpy walker (before)": lambda m, w: w.margin}
    # times[shape][path][rows] = [one median per run]
    times: dict[str, dict[str, dict[int, list[float]]]] = {
        s: {p: {r: [] for r in ROWS} for p in paths} for s in models}
    decision: dict[str, list[float]] = {"before": [], "after": []}
    prop, clv = models["propensity/churn d2x200"], models["clv d3x300"]
    wprop, wclv = walkers["propensity/churn d2x200"], walkers["clv d3x300"]
    for _ in range(args.runs):
        for s, m in models.items():
            for r in ROWS:
                for p, get in paths.items():
                    if p.startswith("numpy") and r > 256:
                        continue  # the old code handed more than 256 rows to XGBoost
                    times[s][p][r].append(per_call(get(m, walkers[s]), X[:r], args.budget))
        # one decision: the pooled propensity model on 10 rows, churn and CLV on one row each
        decision["before"].append(per_call(lambda x: (wprop.margin(x[:ACTIONS]), wprop.margin(x[:1]),
                                                      wclv.margin(x[:1])), X, args.budget * 3))
        decision["after"].append(per_call(lambda x: (prop.margin(x[:ACTIONS]), prop.margin(x[:1]),
                                                     clv.margin(x[:1])), X, args.budget * 3))

    def fmt(v: list[float]) -> str:
        return f"{statistics.median(v) * 1e6:7.0f} ({min(v) * 1e6:.0f}-{max(v) * 1e6:.0f})"

    crossover: dict[str, int | None] = {}
    work = {name: shape[0] * shape[1] for name, shape in SHAPES.items()}
    for s in models:
        print(f"\n{s}: us per call, median of {args.runs} runs (min-max)")
        print(f"{'rows':>5}  {'onnx':>18}  {'xgboost':>18}  {'numpy walker (before)':>22}")
        for r in ROWS:
            walk = fmt(times[s]["numpy walker (before)"][r]) if times[s]["numpy walker (before)"][r] else "-"
            print(f"{r:>5}  {fmt(times[s]['onnx'][r]):>18}  {fmt(times[s]['xgboost'][r]):>18}  {walk:>22}")
        faster = [r for r in ROWS if statistics.median(times[s]["xgboost"][r]) < statistics.median(times[s]["onnx"][r])]
        crossover[s] = faster[0] if faster else None
    print()
    for s, r in crossover.items():
        at = f"{r} rows ({r * work[s]:,} rows x trees x depth)" if r else f"more than {max(ROWS)} rows"
        print(f"crossover {s}: XGBoost faster from {at}; the service switches above {models[s].small} rows")
    print(f"nba.serving.models.SWITCH_WORK = {SWITCH_WORK:,} rows x trees x depth")
    print(f"one decision's tree scoring ({ACTIONS} actions pooled + churn + CLV), us: "
          f"before {fmt(decision['before'])}, after {fmt(decision['after'])}")


if __name__ == "__main__":
    main()
