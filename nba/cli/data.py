"""`nba data simulate | load | rfm`: the simulator and the verified public data sets."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from nba.cli.common import DataDirOpt, echo, parse_time, settings

app = typer.Typer(help="Real data sets (Hillstrom, CDNOW), the bank simulator, RFM.", no_args_is_help=True)


@app.command("simulate")
def data_simulate(
    customers: Annotated[int, typer.Option(help="Number of customers to simulate.", min=1)] = 20_000,
    seed: Annotated[int, typer.Option(help="Random seed: the same seed gives the same bank.")] = 7,
    months: Annotated[int, typer.Option(help="Months of history (one feature snapshot per month).", min=2)] = 12,
    out: Annotated[Path | None, typer.Option(help="Output folder [default: <work>/sim].")] = None,
) -> None:
    """Simulate the retail bank with known ground truth.

    Writes customers, monthly feature snapshots, contacts and outcomes, and the true
    acceptance probability and uplift of every customer-action pair, one Parquet per table.
    """
    from nba.data.simulator import simulate_to_dir

    target = out or settings().sim_dir
    manifest = simulate_to_dir(customers=customers, seed=seed, out_dir=target, months=months, progress=True)
    echo(f"simulated {customers:,} customers (seed {seed}, {months} months) into {target}")
    for table, rows in manifest["rows"].items():
        echo(f"  {table:<15} {rows:>12,} rows")


@app.command("load")
def data_load(
    data_dir: DataDirOpt = None,
    out: Annotated[Path | None, typer.Option(help="Write tidy Parquet tables here [default: <work>/real].")] = None,
) -> None:
    """Verify the checksums of the public data sets and write them as tidy Parquet tables."""
    from nba.data.cdnow import load_cdnow
    from nba.data.hillstrom import load_hillstrom
    from nba.io import write_parquet

    s = settings(data_dir=data_dir)
    target = out or s.work / "real"
    hill = load_hillstrom(settings=s)
    cd = load_cdnow(settings=s)
    tables = {
        "hillstrom_customers": hill.customers,
        "hillstrom_experiment": hill.experiment,
        "cdnow_transactions": cd,
    }
    for name, frame in tables.items():
        write_parquet(frame, target / f"{name}.parquet")
        echo(f"  {name:<22} {len(frame):>8,} rows -> {target / (name + '.parquet')}")
    arms = hill.experiment.groupby("arm")[["visit", "conversion", "spend"]].mean()
    echo("Hillstrom arm means (visit, conversion, spend):")
    for arm, row in arms.iterrows():
        echo(f"  {arm:<14} {row['visit']:.4f} {row['conversion']:.4f} {row['spend']:.2f}")


@app.command("rfm")
def data_rfm(
    cutoff: Annotated[str, typer.Option(help="Compute features as of this date (e.g. 1997-09-30).")],
    data_dir: DataDirOpt = None,
    out: Annotated[Path | None, typer.Option(help="Write the RFM table to this Parquet file.")] = None,
    lookback_days: Annotated[int, typer.Option(help="Frequency / monetary look-back window in days.", min=1)] = 365,
) -> None:
    """RFM scores (quintiles) and named segments of the CDNOW customers as of a cut-off date."""
    from nba.data.cdnow import load_cdnow
    from nba.data.rfm import rfm_from_transactions
    from nba.io import write_parquet

    s = settings(data_dir=data_dir)
    at = parse_time(cutoff, "--cutoff")
    rfm = rfm_from_transactions(load_cdnow(settings=s), at, lookback_days=lookback_days)
    summary = rfm.groupby("rfm_segment").agg(
        customers=("customer_id", "size"), recency_days=("recency_days", "mean"),
        frequency=("frequency", "mean"), monetary=("monetary", "mean"))
    echo(f"CDNOW RFM as of {at:%Y-%m-%d}: {len(rfm):,} customers")
    echo(summary.round(2).to_string())
    if out:
        write_parquet(rfm, out)
        echo(f"written to {out}")
