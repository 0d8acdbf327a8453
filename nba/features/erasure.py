"""A customer's rows out of the feature store: the online store (Feast) and the offline
sources (Parquet, rewritten), for erasure (`nba.erasure`)."""

from __future__ import annotations

import logging
from pathlib import Path

from nba import schemas
from nba.features import feast_adapter
from nba.settings import Settings

logger = logging.getLogger(__name__)


def erase_online(settings: Settings, customer_id: int) -> int:
    """Delete the customer's rows from every feature view of the online store."""
    from nba.features.store import get_store

    if not (settings.feast_repo / "feature_store.yaml").is_file():
        return 0
    return feast_adapter.delete_entity(get_store(settings).config, schemas.ENTITY_KEY, customer_id)


def source_files(settings: Settings) -> list[Path]:
    """The bank's Parquet sources keyed by customer id: the simulator's output (labels and
    entity rows of the training frames) and the feature repository's offline sources. (The
    public data sets' tables are keyed by their own ids, other people: they are left alone.)"""
    import pyarrow.parquet as pq

    files = []
    for folder in (settings.sim_dir, settings.feast_repo / "data"):
        if not folder.is_dir():
            continue
        for path in sorted(folder.rglob("*.parquet")):
            if schemas.ENTITY_KEY in pq.read_schema(path).names:
                files.append(path)
    return files


def erase_offline(settings: Settings, customer_id: int) -> dict[str, int]:
    """Rewrite each source without the customer's rows (atomically: a reader sees the old file
    or the new one); returns the rows removed per file that held any."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from nba.io import atomic_path

    out: dict[str, int] = {}
    for path in source_files(settings):
        table = pq.read_table(path)
        hit = pc.equal(table.column(schemas.ENTITY_KEY), int(customer_id))
        n = int(pc.sum(hit).as_py() or 0)
        if not n:
            continue
        kept = table.filter(pc.invert(hit))
        target = path.resolve()  # a work folder may link to a shared simulator output: the file itself
        with atomic_path(target) as tmp:
            pq.write_table(kept, tmp)
        out[str(path)] = n
        logger.info("erasure: %d rows removed from %s", n, path)
    return out
