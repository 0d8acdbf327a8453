"""`nba customers erase ID`: a customer's erasure (GDPR art. 17) from every store."""

from __future__ import annotations

import getpass
import json
from typing import Annotated

import typer

from nba.cli.common import echo, settings

app = typer.Typer(help="Customers: erasure (the preference centre and the customer 360 are in the service).",
                  no_args_is_help=True)


@app.command("erase")
def erase_cmd(
    customer_id: Annotated[int, typer.Argument(help="The customer to erase.", min=0)],
    by: Annotated[str | None, typer.Option(help="Who asks (the receipt names them) [default: the OS user].")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the receipt as JSON.")] = False,
) -> None:
    """List the id on the erasure list first (training frames exclude it; the service answers
    404 to a decision for it and stores none of its events), then remove the customer from the
    online store, the offline sources (rewritten), the decision log (pseudonymised), the
    contact-policy and trigger state, the preferences, the event log and the outbox; write a
    receipt.
    Erasing twice reports that nothing was left."""
    from nba.erasure import erase_customer

    receipt = erase_customer(settings(), customer_id, by=by or f"cli:{getpass.getuser()}")
    if as_json:
        echo(json.dumps(receipt, indent=2))
        return
    if receipt["nothing_left"]:
        echo(f"customer {customer_id}: nothing was left to erase"
             + (f" (erased before, at {receipt['previously_erased_at']})" if receipt["previously_erased_at"] else ""))
    else:
        echo(f"customer {customer_id} erased: {receipt['rows']} rows")
    for name, s in receipt["stores"].items():
        echo(f"  {name:<28} {s['treatment']:<14} {s['rows']:>8} rows")
    echo(f"receipt {receipt['receipt']}")
