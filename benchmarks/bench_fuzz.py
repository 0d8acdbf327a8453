"""Schemathesis against the served decision service: at least 10,000 generated requests.

Builds a small bank (`--build`, about 2 minutes; else the work folder's bank), serves its
Bento with API keys on a free localhost port (one worker, the decision log and contact state in
a private copy of the work folder), and runs schemathesis' CLI on the service's own
`/docs.json` with every check and every phase (`tests/fuzz_env.py`), with a key that has every
scope. The run is repeated with more examples per operation until it has made `--requests`
calls. Prints per run: the calls made (schemathesis' hooks count every one, the checks' own
included), the statuses, the failures schemathesis reports, the 5xx answers, and the refused
calls (4xx, 5xx) after which the decision log or the event log had more rows than before the
call (`tests/fuzz_hooks.py`; none may).

    python benchmarks/bench_fuzz.py --build [--requests 10000] [--examples 100] [--seed 1]
    PYTHONPATH=. python benchmarks/bench_fuzz.py --work BANK/var --home BANK/home --mlflow BANK/mlflow --source
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from bench_decide import private_work, prologue, serving  # one way to serve
from bench_events import build_bank

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=ROOT / "var")
    parser.add_argument("--mlflow", type=Path, default=ROOT / "mlflow")
    parser.add_argument("--build", action="store_true", help="build a small bank first (about 2 minutes)")
    parser.add_argument("--requests", type=int, default=10_000, help="calls to make at least")
    parser.add_argument("--examples", type=int, default=100, help="examples per operation in the first run")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--home", type=Path, default=ROOT, help="the bank's project folder (without --build)")
    parser.add_argument("--source", action="store_true",
                        help="serve this source tree's service (nba.serving.service) instead of the bank's Bento")
    args = parser.parse_args()

    from nba.serving.auth import new_key
    from nba.settings import Settings
    from tests.fuzz_env import fuzz

    prologue(args.work)
    key, entry = new_key("fuzz", ["decide:*", "respond", "events", "customers", "admin"], rate=1e6, burst=1_000_000)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.build:
            bank_settings = build_bank(tmp)
            bank, home, mlflow = bank_settings.work, bank_settings.home, bank_settings.mlflow_path
        else:
            bank, home, mlflow = args.work.resolve(), args.home.resolve(), args.mlflow
        settings = Settings(home=home, work_dir=private_work(bank, tmp / "w"), mlflow_dir=mlflow,
                            api_keys=json.dumps([entry]))
        total = errors = violations = failures = 0
        examples, seed, runs = args.examples, args.seed, 0
        target = "nba.serving.service:DecisionService" if args.source else None
        with serving(settings, tmp / "server.log", target=target) as port:
            url = f"http://127.0.0.1:{port}"
            while total < args.requests:
                t0 = time.perf_counter()
                run = fuzz(url, key, settings.work, tmp / f"run{runs}", max_examples=examples, seed=seed)
                runs += 1
                total += run.requests
                errors += run.server_errors
                violations += len(run.violations)
                failures += len(run.failures)
                print(f"run {runs} (seed {seed}, {examples} examples per operation, {time.perf_counter() - t0:.0f} s): "
                      f"{run.requests:,} calls, statuses {run.statuses}; schemathesis exit {run.returncode}, "
                      f"failures {run.failures or 'none'}; 5xx {run.server_errors}; refused calls that wrote "
                      f"{len(run.violations)}{' ' + json.dumps(run.violations[:3]) if run.violations else ''}",
                      flush=True)
                if run.returncode != 0:  # what failed, with schemathesis' reproduction (curl) of each
                    out = run.output
                    start = out.find("FAILURES")
                    print(out[start:start + 12_000] if start >= 0 and run.failures else out[-3000:])
                seed += 1
                examples *= 2
        print(f"total: {total:,} calls in {runs} run(s); {failures} failure(s) reported by schemathesis, {errors} 5xx, "
              f"{violations} refused call(s) that wrote a log row")


if __name__ == "__main__":
    main()
