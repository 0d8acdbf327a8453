"""`nba keys new`: an API key for a client of the decision service (`nba.serving.auth`)."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from nba.cli.common import echo

app = typer.Typer(help="API keys of the decision service's clients.", no_args_is_help=True)


@app.command("new")
def new(
    key_id: Annotated[str, typer.Option("--id", help="The client's name (letters, digits, '-').")],
    scope: Annotated[list[str], typer.Option(help="decide:<channel>, decide:*, respond, events, customers, admin "
                                                  "(repeat the option).")],
    rate: Annotated[float | None, typer.Option(help="Requests per second [default: NBA_RATE_LIMIT].",
                                               min=0.001)] = None,
    burst: Annotated[int | None, typer.Option(help="Requests at once [default: NBA_RATE_BURST].", min=1)] = None,
) -> None:
    """Print a new key (give it to the client; it is shown once) and the entry the service
    stores: add the entry to NBA_API_KEYS (a JSON list) or to the `keys:` of NBA_API_KEYS_FILE."""
    from nba.serving.auth import new_key

    key, entry = new_key(key_id, scope, rate=rate, burst=burst)
    echo(f"key (give it to the client; it is not stored): {key}")
    echo(f"entry (for NBA_API_KEYS or NBA_API_KEYS_FILE): {json.dumps(entry)}")
