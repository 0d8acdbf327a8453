"""A batch segment written in parts: each Spark partition writes its own Parquet files of the
segment's records (`<parts>/<record>/part-*.parquet`), and `publish_parts` streams them into
the segment the log reads (`<log>/batch/<batch_id>/<record>.parquet`, one row group per part),
atomically, as `write_batch` does for a segment built in memory. Nothing of the batch is held
in memory at once but one part.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from nba.records import SEGMENT_RECORDS
from nba.stores.decisions import BATCH_DIR, DecisionLogError
from nba.stores.decisions.sqlite import conform

PART_GLOB = "part-*.parquet"


def part_path(parts: Path, record: str, partition: int, seq: int) -> Path:
    """Where partition `partition` writes its `seq`-th table of `record` (a retried task
    writes the same names again, so a retry never duplicates rows)."""
    return Path(parts) / record / f"part-{partition:05d}-{seq:05d}.parquet"


def write_part(table: Any, path: Path) -> None:
    """One part, written whole or not at all (a temporary name, then renamed)."""
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, path)


def part_files(parts: Path, record: str) -> list[Path]:
    return sorted((Path(parts) / record).glob(PART_GLOB))


def publish_parts(folder: Path, batch_id: str, parts: Path) -> Path:
    """Stream the parts of every segment record into `<folder>/batch/<batch_id>/`, each
    checked against (and cast to) its record's schema; the folder appears complete or not at
    all. Returns it."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    final = Path(folder) / BATCH_DIR / batch_id
    if final.exists():
        raise DecisionLogError(f"batch {batch_id} is already in the decision log {folder}")
    tmp = final.parent / f".{batch_id}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        for record in SEGMENT_RECORDS:
            files = part_files(parts, record.name)
            if not files:
                raise DecisionLogError(f"batch {batch_id}: no parts of '{record.name}' in {parts}")
            # a column all missing in one part is typed null there: the parts' common schema
            schema = pa.unify_schemas([pq.read_schema(f) for f in files], promote_options="permissive")
            schema = conform(record, schema.empty_table()).schema
            target = tmp / f"{record.name}.parquet"
            # dictionary-encode the repeated strings, not the unique decision ids
            with pq.ParquetWriter(target, schema,
                                  use_dictionary=[f.name for f in schema if f.name != "decision_id"]) as writer:
                for f in files:
                    writer.write_table(conform(record, pq.read_table(f)).cast(schema))
            with open(target, "rb") as fh:
                os.fsync(fh.fileno())
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return final
