"""`nba evaluate drift | uplift` and `nba report`: Evidently reports and dashboards."""

from __future__ import annotations

import typer


def register(evaluate_app: typer.Typer, root_app: typer.Typer) -> None:
    """Add this module's commands to `nba evaluate` (and `nba`)."""
