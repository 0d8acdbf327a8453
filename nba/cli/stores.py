"""`nba stores migrate | status | compact | backup | restore`: the schema of the production
profile's Postgres logs, the retention of the decision log's features, backups of the
embedded profile's SQLite stores."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from nba.cli.common import echo, settings

app = typer.Typer(help="The stores: schema migration, retention, backup and restore.", no_args_is_help=True)

DsnOpt = Annotated[str | None, typer.Option("--dsn", help="Postgres DSN [default: NBA_LOG_DSN, else NBA_POSTGRES_DSN]")]


@app.command("migrate")
def migrate_cmd(dsn: DsnOpt = None) -> None:
    """Create or migrate the Postgres schema of the logs (decision log, outbox, event log,
    preferences) to this release's version; safe to run again and from several machines."""
    from nba.stores.postgres import SCHEMA_VERSION, migrate, redact

    target = dsn or settings().decision_log_dsn
    done = migrate(target)
    for m in done:
        echo(f"applied version {m.version}: {m.description}")
    echo(f"{redact(target)}: schema at version {SCHEMA_VERSION}" + ("" if done else " (nothing to do)"))


@app.command("status")
def status_cmd(dsn: DsnOpt = None) -> None:
    """Where the logs are and, for Postgres, the schema version (refused if not this release's)."""
    s = settings()
    if s.log_backend == "sqlite" and dsn is None:
        echo(f"backend: sqlite; decision log {s.decision_log_dir}; event log {s.event_log_path}; "
             f"preferences {s.preferences_path}")
        return
    from nba.stores.postgres import SCHEMA_VERSION, check_schema, connect, redact

    target = dsn or s.decision_log_dsn
    conn = connect(target, "nba stores status", autocommit=True)
    try:
        check_schema(conn, target, "nba stores status")
    finally:
        conn.close()
    echo(f"backend: postgres; {redact(target)}: schema at version {SCHEMA_VERSION} (current)")


@app.command("compact")
def compact_cmd(
    days: Annotated[float | None, typer.Option(help="Keep the features of this many days [default: "
                                                    "NBA_FEATURE_RETENTION_DAYS, 90]")] = None,
) -> None:
    """Drop the features of the decisions older than the retention (both profiles); the
    decisions and their outcomes stay."""
    from nba.stores.backup import compact

    out = compact(settings(), days=days)
    echo(f"features of {out['decisions_compacted']} decisions older than {out['days']:g} days dropped")


@app.command("backup")
def backup_cmd(dest: Annotated[Path, typer.Argument(help="A new folder for the backup")]) -> None:
    """Back up the embedded profile's stores (SQLite online backup, Parquet segments) while
    the service runs."""
    from nba.stores.backup import backup

    manifest = backup(settings(), dest)
    echo(f"backed up {len(manifest['databases'])} databases and {len(manifest['trees'])} folders to {dest}")


@app.command("restore")
def restore_cmd(
    src: Annotated[Path, typer.Argument(help="A folder made by `nba stores backup`")],
    force: Annotated[bool, typer.Option("--force", help="Replace the stores that exist (stop the service first)")]
    = False,
) -> None:
    """Restore a backup of the embedded profile; refuses to overwrite a live log without --force."""
    from nba.stores.backup import restore

    manifest = restore(settings(), src, force=force)
    echo(f"restored {len(manifest['databases'])} databases and {len(manifest['trees'])} folders from {src}")
