"""The experiment table `nba evaluate incrementality --data` reads: the verified Hillstrom data
set by name (with its arm, control and outcome columns as defaults), or any CSV / Parquet file
whose arm, control and outcome columns the caller names."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from nba.errors import ConfigError
from nba.evaluation.experiments import read_table
from nba.settings import Settings

HILLSTROM = "hillstrom"
HILLSTROM_OUTCOMES = ("visit", "conversion", "spend")


@dataclass(frozen=True)
class ExperimentTable:
    """An experiment table with its columns resolved (the defaults of a named data set filled in)."""

    table: pa.Table
    source: str
    arm_column: str
    control: str
    outcomes: list[str]
    value_column: str | None


def is_hillstrom(data: str) -> bool:
    return data.lower() == HILLSTROM


def experiment_table(settings: Settings, data: str, *, arm_column: str | None = None, control: str | None = None,
                     outcome: Sequence[str] | None = None, value_column: str | None = None,
                     cluster_column: str | None = None, by: Sequence[str] | None = None) -> ExperimentTable:
    """The columns an incrementality run needs of `data` ('hillstrom', or a .csv/.parquet path).

    A file needs its arm column, control value and outcome column(s) named (the error names
    the missing `--arm-column`, `--control`, `--outcome`); unknown columns are refused by the
    reader, naming the file."""
    if is_hillstrom(data):
        from nba.data.hillstrom import CONTROL_ARM, load_hillstrom

        frame = load_hillstrom(settings=settings).experiment
        arm, ctrl = arm_column or "arm", control or CONTROL_ARM
        outcomes = list(outcome or HILLSTROM_OUTCOMES)
        keep = [c for c in dict.fromkeys([arm, *outcomes, *([value_column] if value_column else []),
                                          *([cluster_column] if cluster_column else []), *(by or [])])
                if c in frame.columns]
        table = pa.Table.from_pandas(frame[keep].astype({arm: str}) if arm in keep else frame[keep],
                                     preserve_index=False)
        return ExperimentTable(table, HILLSTROM, arm, ctrl, outcomes, value_column)
    missing = [name for name, value in (("--arm-column", arm_column), ("--control", control),
                                        ("--outcome", outcome)) if not value]
    if not arm_column or not control or not outcome:
        raise ConfigError(f"--data {data}: {', '.join(missing)} required (which column holds the arm, which value "
                          "is the control, which column is the outcome)")
    path = Path(data)
    columns = [arm_column, *outcome, *([value_column] if value_column else []),
               *([cluster_column] if cluster_column else []), *(by or [])]
    return ExperimentTable(read_table(path, columns), str(path), arm_column, control, list(outcome), value_column)
