"""What every command group shares: settings, console output, time options, progress bars,
and writing a command's figures as JSON and HTML.

Only light modules at the top: `nba --help` imports this file.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from nba import console
from nba.errors import ConfigError, NbaError

if TYPE_CHECKING:
    from nba.settings import Settings

DataDirOpt = Annotated[
    Path | None,
    typer.Option("--data-dir", help="Folder with hillstrom.csv.zip and CDNOW_master.txt.gz [env NBA_DATA_DIR]"),
]


def settings(**overrides: Any) -> Settings:
    """The settings with the command's options over the environment; a bad value is one line
    naming the setting and its environment variable."""
    from pydantic import ValidationError

    from nba.settings import Settings

    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        raise ConfigError(
            f"setting '{field}' (env NBA_{field.upper()}): {first['msg']} (got {first.get('input')!r})"
        ) from None


def echo(msg: str = "") -> None:
    typer.echo(msg)


def parse_time(value: str | None, option: str) -> datetime | None:
    """A date or timestamp option as an aware UTC datetime (naive values are taken as UTC)."""
    if value is None:
        return None
    import pandas as pd

    try:
        ts = pd.Timestamp(value)
    except ValueError:
        raise NbaError(f"{option}: '{value}' is not a date or timestamp (expected e.g. 2025-06-30)") from None
    ts = ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")
    return ts.to_pydatetime()


@contextmanager
def progress(total: int, desc: str, unit: str, *, leave: bool = True) -> Iterator[Callable[[str], None]]:
    """A bar that counts one step per call of the yielded function (whose argument is shown
    beside the bar); closed on the way out, also on an error. No bar when the output is not a
    terminal (`nba.console.progress`)."""
    bar = console.progress(total, desc, unit, leave=leave)

    def step(what: str) -> None:
        bar.set_postfix_str(what)
        bar.update(1)

    try:
        yield step
    finally:
        bar.close()


@contextmanager
def model_progress(total: int, desc: str) -> Iterator[Callable[[str], None]]:
    """A bar over models whose callback is called as each model STARTS: it counts the previous
    one as done. Hidden when the output is not a terminal."""
    bar = console.progress(total, desc, "model", leave=False)
    started: list[str] = []

    def advance(name: str) -> None:
        if started:
            bar.update(1)  # the previous model is done
        started.append(name)
        bar.set_postfix_str(name)

    try:
        yield advance
    finally:
        bar.close()


def write_outputs(payload: Mapping[str, Any], json_out: Path | None, html_out: Path | None, title: str,
                  sections: Sequence[tuple[str, Any]]) -> None:
    """Write a command's figures as JSON and its tables as a self-contained HTML page, each
    only when asked for, and say where."""
    if not (json_out or html_out):
        return
    from nba.evaluation.render import html_page, json_text
    from nba.io import write_text

    if json_out:
        write_text(json_text(payload), json_out)
        echo(f"wrote {json_out}")
    if html_out:
        write_text(html_page(title, sections, payload.get("notes", [])), html_out)
        echo(f"wrote {html_out}")
