"""The closed loop's speed and figures: `python benchmarks/bench_loop.py --customers 20000 --months 6`.

Prints the bootstrap time (history, Feast apply, first models, bundle), each month's time by
phase (decide and bank, respond, evaluate, retrain and bundle) and the loop's figures.
Target (issue 12): 20,000 customers x 6 months in under 15 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from nba.settings import Settings, disable_telemetry


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--customers", type=int, default=20_000)
    ap.add_argument("--months", type=int, default=6)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--out", type=Path, default=None, help="where to write loop.json and loop.html")
    ap.add_argument("--new-action", default=None, help="withhold this action, add it cold at --new-action-month")
    ap.add_argument("--new-action-month", type=int, default=3)
    args = ap.parse_args()
    disable_telemetry()
    from nba.console import quiet_libraries
    from nba.simulation.loop import ClosedLoop, LoopConfig, write_html, write_json

    quiet_libraries()
    root = Path(tempfile.mkdtemp(prefix="nba-bench-loop-"))
    home = Path(__file__).resolve().parents[1]
    s = Settings(home=home, work_dir=root / "var", mlflow_dir=root / "mlflow", data_dir=None)
    loop = ClosedLoop(s, LoopConfig(customers=args.customers, months=args.months, seed=args.seed,
                                    new_action=args.new_action, new_action_month=args.new_action_month), echo=print)
    t0 = time.perf_counter()
    champions = loop.bootstrap()
    for note in loop.strategy_notes:
        print(f"  loop catalog: {note}")
    for name, version in champions.items():
        if "refused" in version:
            print(f"  {name}: v{version}")
    t_boot = time.perf_counter() - t0
    print(f"bootstrap (history {args.customers:,} x 12 months, Feast apply, first models, bundle): {t_boot:.1f} s")
    report = loop.run()
    total = time.perf_counter() - t0
    print(report.describe())
    for m in report.months:
        print(f"  month {m.month}: " + ", ".join(f"{k} {v:.1f} s" for k, v in m.seconds.items())
              + (f"; promoted {len(m.retrain.get('promoted', {}))}, refused {len(m.retrain.get('refused', {}))}"
                 if m.retrain else ""))
    print(f"loop {report.seconds['total']:.1f} s; bootstrap + loop {total:.1f} s ({total / 60:.1f} min)")
    out = args.out or root
    write_json(report, out / "loop.json")
    write_html(report, out / "loop.html")
    print(json.dumps({"coverage": {e: report.coverage(e) for e in ("ips", "snips", "dr")}}))
    print(f"report: {out / 'loop.html'}")


if __name__ == "__main__":
    main()
