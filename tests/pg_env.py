"""A Postgres database of a test's own on the loopback server (tests/constants), migrated to this
release's schema, dropped after the test."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

ADMIN_DSN = os.environ.get("NBA_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test")


@contextmanager
def pg_database(tag: str, *, migrated: bool = True) -> Iterator[str]:
    """A fresh database named after the test module, the process and a uuid; yields its DSN."""
    from nba.stores.postgres import create_database, drop_database, migrate

    name = f"nba_{tag}_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    dsn = create_database(ADMIN_DSN, name)
    try:
        if migrated:
            migrate(dsn)
        yield dsn
    finally:
        drop_database(ADMIN_DSN, name)
