"""Benchmark hold-out incrementality on 10,000,000 logged decisions (target: under 30 s).

Generates a decision table with numpy (2,000,000 customers x 5 decisions; a 5 % hold-out of
customers, 5 % exploration; five channels, ten actions; conversion and value by group) and
writes it as one Parquet file with dictionary-encoded strings, as a decision log export would
be. Then times what `nba evaluate incrementality --data FILE --arm-column experiment_group
--control holdout --outcome accepted --value-column outcome_value --cluster-column customer_id
--by channel --by action_id` computes: reading the Parquet, the overall lifts (clustered by
customer) and the per-channel and per-action lifts, and prints the figures.

    .venv/bin/python benchmarks/bench_incrementality.py [--rows 10000000] [--keep FILE]

Our machine has 2 cores, shared with other jobs: wall time depends on the load (printed),
CPU time does not.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ACTIONS = ("rewards_card", "mortgage", "add_email", "travel_notification", "sick_leave_support",
           "loyalty_points_alert", "annual_fee_waiver", "finance_course", "mobile_app", "payment_plan")
CHANNELS = ("email", "sms", "push", "call_centre", "web")


def generate(rows: int, path: Path, seed: int = 7) -> dict[str, float]:
    """Write the synthetic decision table; returns the true lifts it was generated with."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    per = 5
    customers = rows // per
    cid = np.repeat(np.arange(1, customers + 1, dtype=np.int64), per)[:rows]
    holdout = np.repeat(rng.random(customers) < 0.05, per)[:rows]
    explore = ~holdout & (rng.random(rows) < 0.05)
    group = np.where(holdout, 0, np.where(explore, 2, 1)).astype(np.int8)  # holdout, nba, explore
    action = rng.integers(0, len(ACTIONS), size=rows).astype(np.int8)
    channel = rng.integers(0, len(CHANNELS), size=rows).astype(np.int8)
    # a customer effect, so decisions of one customer are correlated (clustering matters)
    base = np.repeat(rng.beta(2, 30, size=customers), per)[:rows]
    rate = base * np.array([1.0, 1.6, 1.3])[group]
    accepted = (rng.random(rows) < rate).astype(np.int8)
    value = accepted * rng.gamma(2.0, 20.0, size=rows)
    shown = np.where(holdout, len(ACTIONS), action).astype(np.int8)

    def dict_col(codes: np.ndarray, names: tuple[str, ...]) -> pa.DictionaryArray:
        return pa.DictionaryArray.from_arrays(pa.array(codes, type=pa.int8()), pa.array(list(names)))

    table = pa.table({
        "customer_id": cid,
        "experiment_group": dict_col(group, ("holdout", "nba", "explore")),
        "channel": dict_col(channel, CHANNELS),
        "action_id": dict_col(shown, (*ACTIONS, "do_nothing")),
        "intended_action": dict_col(action, ACTIONS),
        "accepted": accepted,
        "outcome_value": value,
    })
    pq.write_table(table, path, row_group_size=1_000_000)
    mean_base = float(base.mean())
    return {"nba": 0.6 * mean_base, "explore": 0.3 * mean_base}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--keep", type=Path, default=None, help="write the Parquet here and keep it")
    args = parser.parse_args(argv)
    root = Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(root))
    from nba.config import gates_path, load_gates
    from nba.evaluation.experiments import experiment_incrementality, read_table
    from nba.settings import Settings

    limits = load_gates(gates_path(Settings(home=root).home)).evaluation
    with tempfile.TemporaryDirectory(prefix="nba-bench-inc-") as tmp:
        path = args.keep or Path(tmp) / "decisions.parquet"
        t0 = time.perf_counter()
        truth = generate(args.rows, path)
        gen_s = time.perf_counter() - t0
        size_mb = path.stat().st_size / 2**20
        load = os.getloadavg()[0]

        cpu0, t0 = time.process_time(), time.perf_counter()
        table = read_table(path, ["experiment_group", "accepted", "outcome_value", "customer_id", "channel",
                                  "intended_action"])
        read_s = time.perf_counter() - t0
        t1 = time.perf_counter()
        overall = experiment_incrementality(table, arm_column="experiment_group", control="holdout",
                                            outcome="accepted", value_column="outcome_value",
                                            cluster_column="customer_id", source=str(path), limits=limits)
        overall_s = time.perf_counter() - t1
        t1 = time.perf_counter()
        full = experiment_incrementality(table, arm_column="experiment_group", control="holdout",
                                         outcome="accepted", value_column="outcome_value",
                                         cluster_column="customer_id", segment_columns=["channel", "intended_action"],
                                         source=str(path), limits=limits)
        full_s = time.perf_counter() - t1
        cpu_s = time.process_time() - cpu0
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        # the command as a user runs it: a fresh process, imports included
        out = Path(tmp) / "inc.json"
        t1 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "nba", "evaluate", "incrementality", "--data", str(path),
                               "--arm-column", "experiment_group", "--control", "holdout", "--outcome", "accepted",
                               "--value-column", "outcome_value", "--cluster-column", "customer_id",
                               "--by", "channel", "--by", "intended_action", "--json", str(out), "--no-publish"],
                              cwd=root, capture_output=True, text=True)
        cli_s = time.perf_counter() - t1
        if proc.returncode != 0:
            print(proc.stderr)
            return 1
    print(f"rows {args.rows:,} ({args.rows // 5:,} customers), Parquet {size_mb:.0f} MiB, generated in {gen_s:.1f} s; "
          f"load average {load:.1f}")
    print(f"  read the Parquet (6 columns)                                   {read_s:6.2f} s")
    print(f"  overall lifts, 2 outcomes, clustered by customer              {overall_s:6.2f} s")
    print(f"  overall + per channel + per intended action ({len(full.segments)} segments)     {full_s:6.2f} s")
    print(f"  read + overall + segments                                      {read_s + full_s:6.2f} s "
          f"(all three steps {read_s + overall_s + full_s:.2f} s wall, {cpu_s:.2f} s CPU, peak RSS {rss:.2f} GiB)")
    print(f"  `nba evaluate incrementality ... --by channel --by intended_action --json` as a process "
          f"{cli_s:6.2f} s")
    for r in overall.results:
        for a in r.arms:
            t = f" (true {truth[a.arm]:.5f})" if r.outcome == "accepted" else ""
            print(f"  {r.outcome:<14} {a.arm:<8} lift {a.lift:.5f} [{a.ci_low:.5f}, {a.ci_high:.5f}]{t}  "
                  f"rel {a.relative_lift:+.1%}  p {a.p_value:.2g}  units {a.units:,}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
