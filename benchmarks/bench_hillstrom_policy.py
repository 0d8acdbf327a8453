"""The real-data proof: a targeting policy learnt on Hillstrom against the blanket e-mails.

`nba evaluate policy --data hillstrom` on seeded splits (half the customers held out,
stratified by arm): cross-fitted outcome models per arm, doubly-robust scores net of the
e-mail cost, a policy tree (or weighted classifier) fitted to them, and the safe-improvement
rule; the learnt policy, all:Mens, all:Womens, none and random valued by DR on the held-out
half. This script prints, per split and outcome, each policy's value and the learnt
policy's paired difference to the best single e-mail (its CI and p), and the time of each
run; with `--variants`, the same for every method (tree depth 1 and 2, the weighted
classifier) with and without the safe-improvement rule, which is how the default was chosen.

    NBA_DATA_DIR=../shared/data .venv/bin/python benchmarks/bench_hillstrom_policy.py
    .venv/bin/python benchmarks/bench_hillstrom_policy.py --seeds 11 12 13 14 15 16 --variants --markdown
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

VARIANTS = [("tree", 2, True), ("tree", 1, True), ("classifier", 2, True),
            ("tree", 2, False), ("tree", 1, False), ("classifier", 2, False)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[11, 12, 13, 14, 15, 16])
    parser.add_argument("--outcomes", nargs="+", default=["spend", "conversion"])
    parser.add_argument("--variants", action="store_true", help="every method, with and without the safe rule")
    parser.add_argument("--markdown", action="store_true", help="print the per-split tables as markdown")
    args = parser.parse_args(argv)
    root = Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(root))
    data_dir = os.environ.get("NBA_DATA_DIR") or (root.parent / "shared" / "data")

    from nba.config import gates_path, load_gates
    from nba.evaluation import policy_experiment as pe
    from nba.settings import Settings, disable_telemetry

    disable_telemetry()
    settings = Settings(home=root, data_dir=Path(data_dir))
    limits = load_gates(gates_path(root)).evaluation
    t0 = time.perf_counter()
    frame = pe.hillstrom_frame(settings)
    print(f"Hillstrom loaded in {time.perf_counter() - t0:.1f} s: {len(frame):,} rows")
    variants = VARIANTS if args.variants else VARIANTS[:1]
    sep = " | " if args.markdown else "  "
    for outcome in args.outcomes:
        for method, depth, safe in variants:
            label = f"{method}{f' depth {depth}' if method == 'tree' else ''}, {'safe rule' if safe else 'no safe rule'}"
            print(f"\n### {outcome}: {label}")
            head = ["seed", "learned", "all:Mens", "all:Womens", "none", "random", "best single",
                    "learned - best [95% CI]", "p", "learned - none", "mailed", "Womens share", "deviates", "s"]
            if args.markdown:
                print("| " + " | ".join(head) + " |")
                print("|" + "---|" * len(head))
            else:
                print(sep.join(head))
            diffs, worse, vs_none_pos, times, parts = [], 0, 0, [], []
            for seed in args.seeds:
                t0 = time.perf_counter()
                spec = pe.hillstrom_spec(outcome=outcome, seed=seed, method=method, depth=depth, safe=safe)
                r = pe.learn_and_value(frame, spec, source="hillstrom", limits=limits)
                took = time.perf_counter() - t0
                times.append(took)
                parts.append(r.timing)
                lv = r.get(pe.LEARNED)
                d, dn = lv.versus["best_single"], lv.versus["none"]
                diffs.append(d.diff)
                worse += int(d.p_value < 0.05 and d.diff < 0)
                vs_none_pos += int(dn.diff > 0)
                v = {p.name: p.net.value for p in r.policies}
                mailed = 1 - lv.shares["No E-Mail"]
                cells = [str(seed), f"{v['learned']:.4f}", f"{v['all:Mens E-Mail']:.4f}",
                         f"{v['all:Womens E-Mail']:.4f}", f"{v['none']:.4f}", f"{v['random']:.4f}",
                         r.best_single.removeprefix("all:"), f"{d.diff:+.4f} [{d.ci_low:+.4f}, {d.ci_high:+.4f}]",
                         f"{d.p_value:.3f}", f"{dn.diff:+.4f}", f"{mailed:.2f}", f"{lv.shares['Womens E-Mail']:.2f}",
                         "yes" if r.policy.deviates else "no", f"{took:.1f}"]
                print(("| " + " | ".join(cells) + " |") if args.markdown else sep.join(cells))
                if not args.markdown and r.policy.deviates:
                    print("      " + "; ".join(r.policy.describe()))
            diffs_a = np.array(diffs)
            print(f"mean learned - best single {diffs_a.mean():+.4f} (sd {diffs_a.std(ddof=1):.4f}) over "
                  f"{len(diffs)} splits; significantly worse on {worse}; better than none on {vs_none_pos}/"
                  f"{len(diffs)}; time per run {min(times):.1f}-{max(times):.1f} s")
            print("median s: " + ", ".join(f"{k} {np.median([p[k] for p in parts]):.2f}" for k in parts[0])
                  + f" (load average {os.getloadavg()[0]:.1f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
