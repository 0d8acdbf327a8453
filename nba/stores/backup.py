"""Backup and restore of the embedded profile's stores, and the retention compaction of the
decision log (both profiles).

A backup is a folder: each SQLite file copied with SQLite's online backup API (a consistent
copy while the service writes: the copy is of one moment, and the writers are not stopped),
the decision log's Parquet segments and the erasure receipts copied as files, and a
`manifest.json` (what, when, row counts). `restore` copies them back the same way; it refuses
to overwrite a live log (any of the files present) without `force`.

The Postgres stores of the production profile are backed up with the database's own tools
(`pg_dump`, or the server's base backups and WAL archive): `backup` says so.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import time
from pathlib import Path
from typing import Any

from nba.errors import NbaError

MANIFEST = "manifest.json"


class BackupError(NbaError):
    """A backup cannot be made or restored."""

    exit_code = 3


def sqlite_files(settings: Any) -> dict[str, Path]:
    """The embedded stores' SQLite files, by their path relative to the work folder."""
    from nba.stores.decisions import DB_FILE
    from nba.stores.erasures import FILE as ERASURES

    paths = [settings.decision_log_dir / DB_FILE, settings.event_log_path, settings.preferences_path,
             settings.policy_state_path, settings.trigger_state_path, settings.privacy_dir / ERASURES]
    return {str(p.relative_to(settings.work)): p for p in paths}


def file_trees(settings: Any) -> dict[str, Path]:
    """The folders copied as files: the batch segments and the erasure receipts."""
    from nba.stores.decisions import BATCH_DIR

    paths = [settings.decision_log_dir / BATCH_DIR, settings.privacy_dir / "receipts"]
    return {str(p.relative_to(settings.work)): p for p in paths}


def _embedded_only(settings: Any, what: str) -> None:
    if settings.log_backend != "sqlite":
        from nba.stores.postgres import redact

        raise BackupError(f"nba stores {what}: the logs of this profile are in Postgres at "
                          f"{redact(settings.decision_log_dsn)}; back them up with pg_dump / pg_restore or the "
                          "server's base backups (this command is for the embedded profile)")


def _counts(path: Path) -> dict[str, int]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        names = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' "
                                            "AND name NOT LIKE 'sqlite_%' ORDER BY name")]
        return {n: int(conn.execute(f'SELECT count(*) FROM "{n}"').fetchone()[0]) for n in names}
    finally:
        conn.close()


def _copy_db(src: Path, dst: Path) -> None:
    """SQLite's online backup of `src` into `dst` (created or overwritten page by page under
    SQLite's own locks, so a process that has `dst` open sees the old or the new file)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    s = sqlite3.connect(f"file:{src}?mode=ro", uri=True)
    d = sqlite3.connect(dst)
    try:
        s.backup(d)
        d.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        d.close()
        s.close()


def backup(settings: Any, dest: Path) -> dict[str, Any]:
    """Back up the embedded stores into the new folder `dest`; returns the manifest."""
    _embedded_only(settings, "backup")
    dest = Path(dest)
    if dest.exists() and any(dest.iterdir()):
        raise BackupError(f"nba stores backup: {dest} exists and is not empty; give a new folder")
    found = {rel: p for rel, p in sqlite_files(settings).items() if p.is_file()}
    if not found:
        raise BackupError(f"nba stores backup: no store under {settings.work} (nothing logged yet)")
    dest.mkdir(parents=True, exist_ok=True)
    manifest: dict[str, Any] = {"created_at": time.time(), "work": str(settings.work), "databases": {}, "trees": {}}
    for rel, path in found.items():
        _copy_db(path, dest / rel)
        manifest["databases"][rel] = _counts(dest / rel)
    for rel, path in file_trees(settings).items():
        if path.is_dir():
            shutil.copytree(path, dest / rel, ignore=shutil.ignore_patterns(".*"))
            manifest["trees"][rel] = sorted(str(p.relative_to(dest / rel)) for p in (dest / rel).rglob("*")
                                            if p.is_file())
    (dest / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def restore(settings: Any, src: Path, *, force: bool = False) -> dict[str, Any]:
    """Restore a backup made by `backup` into the work folder. Refuses (naming what is there)
    when any of the stores exists, unless `force`: then the stores become the backup's (a store
    the backup does not hold is removed)."""
    _embedded_only(settings, "restore")
    src = Path(src)
    try:
        manifest = json.loads((src / MANIFEST).read_text())
    except (OSError, ValueError) as exc:
        raise BackupError(f"nba stores restore: {src} is not a backup ({MANIFEST}: {exc})") from None
    live = [str(p) for p in sqlite_files(settings).values() if p.is_file()]
    if live and not force:
        raise BackupError(f"nba stores restore: {', '.join(live)} exist (a live log); stop the service and pass "
                          "--force to replace them with the backup")
    for rel, path in sqlite_files(settings).items():
        if rel in manifest["databases"]:
            _copy_db(src / rel, path)
        elif path.is_file():
            for p in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
                p.unlink(missing_ok=True)
    for rel, path in file_trees(settings).items():
        if path.is_dir():
            shutil.rmtree(path)
        if rel in manifest["trees"]:
            shutil.copytree(src / rel, path)
    return manifest


def compact(settings: Any, *, days: float | None = None, now: float | None = None) -> dict[str, Any]:
    """Drop the features of the decisions older than `days` (default: the setting
    `feature_retention_days`), in the profile's decision log; the decisions and outcomes stay."""
    from nba.stores.decisions import open_decision_log

    days = settings.feature_retention_days if days is None else float(days)
    if days <= 0:
        raise BackupError(f"nba stores compact: --days {days}: expected a number of days > 0")
    before = (time.time() if now is None else now) - days * 86_400.0
    log: Any = open_decision_log(settings)
    try:
        n = log.compact(before)
    finally:
        log.close()
    return {"days": days, "before": before, "decisions_compacted": n}
