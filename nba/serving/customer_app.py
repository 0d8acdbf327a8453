"""The customer routes of the decision service, a Starlette app BentoML mounts beside its own
(`DecisionService` in `nba.serving.service`):

    GET    /customers/{id}[?at=ISO time] the customer 360 (`nba.serving.customers.customer_view`),
                                         as of now or of `at`
    GET    /customers/{id}/preferences   the preferences and their audit
    PUT    /customers/{id}/preferences   replace them (body: the preferences, and `updated_by`)
    DELETE /customers/{id}               erasure (`nba.erasure`); admin only

    GET    /agent/, /agent/{id}          the call-centre agent's page (one self-contained HTML)

Who may call which route (the `customers` and `admin` scopes, the keys, the rate limits and
the body limits) is checked before any of these runs, by the service's gate
(`nba.serving.gate`). The engine is the one of this worker's service instance (`bentoml.get_current_service()`).
Errors answer `{"error": ..., "field": ...}` with the engine's status (400, 404, 503).
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route


def _engine() -> Any:
    import bentoml
    from bentoml.exceptions import BentoMLException

    from nba.serving.engine import Unavailable

    try:
        engine = bentoml.get_current_service().engine
    except BentoMLException:
        engine = None
    if engine is None:
        raise Unavailable("the decision engine is starting")
    return engine


def _answer(exc: Exception) -> Response:
    from nba.errors import NbaError
    from nba.serving.engine import RequestError

    if isinstance(exc, RequestError):
        return JSONResponse({"error": str(exc), "field": exc.field}, status_code=exc.status)
    if isinstance(exc, NbaError):
        return JSONResponse({"error": str(exc), "field": None}, status_code=503)
    raise exc


def _customer_id(request: Request) -> int:
    from nba.serving.engine import RequestError

    raw = request.path_params["customer_id"]
    whole = raw[:-2] if raw.endswith(".0") else raw  # 3.0 is an integer in JSON (and its schemas)
    if not (whole.isascii() and whole.isdigit() and len(whole) <= 19 and int(whole) < 2**63):
        raise RequestError(f"customer_id '{raw}' is not a customer id: expected a whole number >= 0",
                           field="customer_id")
    return int(whole)


def _at(request: Request) -> float | None:
    """The moment of the view (`?at=` ISO 8601; default now)."""
    from datetime import UTC, datetime

    from nba.serving.engine import RequestError

    raw = request.query_params.get("at")
    if raw is None:
        return None
    try:
        ts = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise RequestError(f"at = {raw!r}: expected an ISO 8601 time such as 2025-12-01T09:00:00Z", field="at") from None
    from nba.events import FIRST_YEAR, LAST_YEAR

    if not FIRST_YEAR <= ts.year <= LAST_YEAR:
        raise RequestError(f"at = {raw!r}: the year {ts.year} is out of range; expected {FIRST_YEAR} to {LAST_YEAR}",
                           field="at")
    return (ts if ts.tzinfo else ts.replace(tzinfo=UTC)).timestamp()


async def customer(request: Request) -> Response:
    from nba.serving.customers import customer_view

    try:
        cid = _customer_id(request)
        engine = _engine()
        if request.method == "DELETE":
            return await _erase(request, engine, cid)
        at = _at(request)
        body = await run_in_threadpool(lambda: customer_view(engine, cid, now=at))
    except Exception as exc:
        return _answer(exc)
    return JSONResponse(body)


async def _erase(request: Request, engine: Any, cid: int) -> Response:
    from nba.erasure import erase_customer

    try:
        receipt = await run_in_threadpool(erase_customer, engine.settings, cid, by="api:admin")
    except (OSError, sqlite3.Error) as exc:  # a store could not be rewritten: say which, retry is safe
        return JSONResponse({"error": f"erasure of customer {cid} did not complete ({type(exc).__name__}: {exc}); "
                                      "it is safe to run again", "field": None}, status_code=503)
    return JSONResponse(receipt)


async def preferences(request: Request) -> Response:
    from nba.serving.customers import put_preferences
    from nba.serving.engine import RequestError, Unavailable, iso

    try:
        cid = _customer_id(request)
        engine = _engine()
        if request.method == "GET":
            from nba.errors import NbaError
            from nba.serving.customers import _known

            stored = engine.preferences.get([cid]).get(cid)
            try:
                known = await run_in_threadpool(_known, engine, cid, False)
            except NbaError as exc:
                raise Unavailable(str(exc)) from None
            if not known:  # as PUT says, and as the 360 says (an erased customer is unknown)
                raise RequestError(f"customer {cid} is unknown: not in the online store and not in the decision log",
                                   field="customer_id", status=404)
            return JSONResponse({"customer_id": cid,
                                 "preferences": None if stored is None else json.loads(stored.preferences),
                                 "audit": [{**a, "changed_at": iso(a["changed_at"])}
                                           for a in engine.preferences.audit(cid)]})
        try:
            payload = json.loads(await request.body())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise RequestError(f"the body is not JSON: {exc}", field="body") from None
        by = "api"
        if isinstance(payload, dict) and "updated_by" in payload:
            by = payload.pop("updated_by")
            if not isinstance(by, str) or not by.strip():
                raise RequestError(f"updated_by = {by!r}: expected who changes them (a name)", field="updated_by")
        body = await run_in_threadpool(put_preferences, engine, cid, payload, by=by)
    except Exception as exc:
        return _answer(exc)
    return JSONResponse(body)


async def agent_page(request: Request) -> Response:
    from nba.serving.agent_page import PAGE

    try:
        channels = list(_engine().catalog.channel_names)
    except Exception as exc:
        return _answer(exc)
    # the agent's own channel first
    channels.sort(key=lambda c: c != "call_centre")
    return HTMLResponse(PAGE.replace("__CHANNELS__", json.dumps(channels)))


customers_app = Starlette(routes=[
    Route("/{customer_id}", customer, methods=["GET", "DELETE"]),
    Route("/{customer_id}/preferences", preferences, methods=["GET", "PUT"]),
])
agent_app = Starlette(routes=[Route("/", agent_page), Route("/{customer_id}", agent_page)])
