"""Benchmark the drift report: 1,000,000 rows x 30 features, reference against current.

A reference and a current frame of `--rows` rows each (25 numeric features of different
shapes, 5 categorical ones, and a prediction), with four numeric features and one categorical
feature moved in the current frame. `nba.evaluation.drift.compare` runs the whole Evidently
report as `nba evaluate drift` does (the limits of evaluation/gates.yaml: both frames sampled
to `monitoring.drift.sample_rows` rows, seeded, uniform, without replacement, and the report
says so), then the HTML is written. Prints the time of each step, the CPU time and the peak
memory, and which features were found drifted.

    .venv/bin/python benchmarks/bench_drift.py
    .venv/bin/python benchmarks/bench_drift.py --rows 200000 --sample-rows 200000   # no sampling

Our machine has 2 cores, and other jobs may share them: compare figures of one run.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

MOVED_NUMERIC = ("x00", "x05", "x10", "x15")
MOVED_CATEGORICAL = "c0"


def frames(rows: int, seed: int):
    """Reference and current frames; the current one has MOVED_* shifted."""
    import pandas as pd

    def make(rng: np.random.Generator) -> pd.DataFrame:
        cols: dict[str, np.ndarray] = {}
        for i in range(25):
            kind = i % 5
            if kind == 0:
                cols[f"x{i:02d}"] = rng.normal(0, 1, rows)
            elif kind == 1:
                cols[f"x{i:02d}"] = rng.lognormal(3, 1, rows)  # amounts
            elif kind == 2:
                cols[f"x{i:02d}"] = rng.poisson(4, rows).astype("int64") + rng.integers(0, 20, rows)  # counts
            elif kind == 3:
                cols[f"x{i:02d}"] = rng.uniform(0, 1, rows)  # rates
            else:
                cols[f"x{i:02d}"] = rng.gamma(2, 50, rows)
        for j in range(5):
            cols[f"c{j}"] = rng.choice(np.array(["north", "south", "east", "west", "centre", "abroad"]), rows,
                                       p=[0.3, 0.25, 0.2, 0.15, 0.07, 0.03])
        cols["prediction"] = 1 / (1 + np.exp(-rng.normal(-2, 1, rows)))
        return pd.DataFrame(cols)

    reference = make(np.random.default_rng(seed))
    current = make(np.random.default_rng(seed + 1))
    for c in MOVED_NUMERIC:
        current[c] = current[c] * 1.3 + current[c].std() * 0.3
    current[MOVED_CATEGORICAL] = np.where(np.random.default_rng(seed + 2).random(rows) < 0.3, "abroad",
                                          current[MOVED_CATEGORICAL])
    return reference, current


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows of each frame")
    parser.add_argument("--sample-rows", type=int, default=None,
                        help="rows Evidently compares per frame [default: monitoring.drift.sample_rows]")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)

    root = Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(root))
    t0 = time.perf_counter()
    from nba.settings import Settings, disable_telemetry

    disable_telemetry()
    from nba.evaluation import drift

    import_s = time.perf_counter() - t0
    settings = Settings(home=root)
    limits = drift.drift_limits(settings)
    if args.sample_rows:
        limits = limits.model_copy(update={"sample_rows": args.sample_rows})

    t = time.perf_counter()
    reference, current = frames(args.rows, args.seed)
    build_s = time.perf_counter() - t
    features = [c for c in reference.columns if c != "prediction"]

    cpu0 = time.process_time()
    t = time.perf_counter()
    result, snapshot = drift.compare(reference, current, features, limits, model="bench", seed=args.seed,
                                     reference_source=f"synthetic reference, {args.rows:,} rows",
                                     current_source=f"synthetic current, {args.rows:,} rows")
    compare_s = time.perf_counter() - t
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        html = Path(tmp) / "drift.html"
        snapshot.save_html(str(html))
        html_s = time.perf_counter() - t
        html_mib = html.stat().st_size / 2**20
    cpu_s = time.process_time() - cpu0
    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    load = os.getloadavg()[0]

    drifted = [f.feature for f in result.drifted_features]
    expected = {*MOVED_NUMERIC, MOVED_CATEGORICAL}
    print(f"frames: {args.rows:,} rows x {len(features)} features (+ prediction), reference and current "
          f"(built in {build_s:.1f} s, not counted)")
    print(f"sampling: {result.sampling}; compared {result.compared_reference_rows:,} + "
          f"{result.compared_current_rows:,} rows")
    print(f"import of the stack: {import_s:.1f} s (not counted)")
    print(f"drift report (sample, {len(features) + 1} Evidently column tests, preset, verdict): {compare_s:.1f} s")
    print(f"HTML written: {html_s:.1f} s, {html_mib:.1f} MiB")
    print(f"total: {compare_s + html_s:.1f} s wall, {cpu_s:.1f} s CPU, peak RSS {peak_gib:.2f} GiB, load {load:.1f}")
    print(f"drifted: {len(drifted)} of {len(features)} ({result.drift_share:.0%}): {', '.join(drifted)}; "
          f"prediction {'drifted' if result.prediction_drifted else 'no drift'}")
    print(f"expected the moved ones {sorted(expected)}: {'found exactly' if set(drifted) == expected else 'DIFFERENT'}")
    return 0 if set(drifted) == expected else 1


if __name__ == "__main__":
    raise SystemExit(main())
