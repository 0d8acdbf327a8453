"""Benchmark the bank simulator: simulate N customers (default 1,000,000) with the default
configuration into a temporary folder, writing Parquet, and print wall time, peak RSS and
rows per table.

    .venv/bin/python benchmarks/bench_simulator.py --customers 1000000 --seed 7

Target: 1,000,000 customers (with the default month of behavioural events) in under 60 s and
under 4 GiB peak RSS on 2 cores. The events' own share is printed too: the time spent drawing
them, looking up their effects for every contact, and writing them (timed around the
simulator's methods), their rows, in-memory columns and Parquet size. The simulator
uses both cores (two worker threads store each month while the next is simulated), so run it
on an otherwise idle machine; the CPU time it prints does not depend on other jobs.
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path


def peak_rss_gib() -> float:
    """Peak resident set size of this process so far (ru_maxrss is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


class EventTimer:
    """Wall time spent in the simulator's event methods (drawing, effect look-up, writing)."""

    def __init__(self) -> None:
        self.seconds = {"draw": 0.0, "effects": 0.0, "write": 0.0}
        self.column_bytes = 0

    def install(self) -> None:
        from nba.data.simulator import _Run

        timer = self

        def timed(name: str, method):  # type: ignore[no-untyped-def]
            def wrapper(*args, **kwargs):  # type: ignore[no-untyped-def]
                t0 = time.perf_counter()
                out = method(*args, **kwargs)
                timer.seconds[name] += time.perf_counter() - t0
                if name == "draw":
                    timer.column_bytes = max(timer.column_bytes, sum(v.nbytes for v in out.values()))
                return out
            return wrapper

        _Run._events = timed("draw", _Run._events)  # type: ignore[method-assign]
        _Run._shift = timed("effects", _Run._shift)  # type: ignore[method-assign]
        _Run._store_events = timed("write", _Run._store_events)  # type: ignore[method-assign]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--months", type=int, default=12)
    parser.add_argument("--progress", action="store_true", help="show the progress bars")
    parser.add_argument("--out", type=Path, default=None, help="keep the output here instead of a temp folder")
    args = parser.parse_args(argv)

    t_import = time.perf_counter()
    from nba.data.simulator import simulate_to_dir

    import_s = time.perf_counter() - t_import
    events = EventTimer()
    events.install()
    with tempfile.TemporaryDirectory(prefix="nba-bench-sim-") as tmp:
        out = args.out or Path(tmp)
        t0 = time.perf_counter()
        manifest = simulate_to_dir(args.customers, args.seed, out, months=args.months, progress=args.progress)
        wall = time.perf_counter() - t0
        size = sum((out / f).stat().st_size for f in manifest["files"].values())
        events_size = (out / manifest["files"]["events"]).stat().st_size

    print(f"customers        {args.customers:,} (seed {args.seed}, {args.months} months, default config)")
    print(f"wall             {wall:.1f} s (simulate + write Parquet + manifest; imports {import_s:.1f} s not included)")
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(f"CPU time         {usage.ru_utime + usage.ru_stime:.1f} s (user {usage.ru_utime:.1f} + sys "
          f"{usage.ru_stime:.1f}; on a shared machine, wall time grows with other jobs, CPU time does not)")
    print(f"peak RSS         {peak_rss_gib():.2f} GiB")
    print(f"Parquet on disk  {size / 2**20:,.0f} MiB")
    for table, rows in manifest["rows"].items():
        print(f"  {table:<15} {rows:>12,} rows")
    ev = events.seconds
    print(f"events           {manifest['rows']['events']:,} rows ({manifest['config']['event_months']} month(s)); "
          f"{sum(ev.values()):.1f} s of the wall (draw {ev['draw']:.1f}, effect look-ups {ev['effects']:.1f}, "
          f"write {ev['write']:.1f}); columns {events.column_bytes / 2**20:,.0f} MiB in memory; "
          f"{events_size / 2**20:,.0f} MiB of Parquet")
    return 0


if __name__ == "__main__":
    sys.exit(main())
