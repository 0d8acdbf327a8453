"""The service's gate: one ASGI middleware in front of every route that reads or changes a
customer (`DecisionService` adds it outermost).

For each such call, in this order:

    401  no key, or a key the service does not know (a key-free service: a caller that is not
         on loopback); `WWW-Authenticate: Bearer`
    403  the key lacks the scope (`nba.serving.auth`): the channel of a decision, `respond`,
         `events`, `customers`, `admin`
    429  the key's token bucket is empty; `Retry-After` in whole seconds
    415  a body that is not `application/json`
    413  a body over the limit (NBA_MAX_BODY_BYTES, NBA_MAX_BATCH_BODY_BYTES), with the limit

Every refusal is `{"error": ..., "field": ...}` (the error shape of the engine's own 400, 404
and 503, `nba.serving.openapi.ErrorBody`), and nothing of a refused call reaches the engine.
BentoML's own validation answers (400, `{"error": "1 validation error", "detail": [...]}`)
are rewritten to the same shape, naming the field. `GET /docs.json` answers the exact
OpenAPI document of this bundle (`nba.serving.openapi`).

A fault of the service itself (an exception no layer answered) is a 500 at once, its
traceback in the service's log. Raised out of the middleware, BentoML left the call without
an answer until its 60 s request timeout.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from typing import Any

from starlette.responses import JSONResponse

from nba.serving.auth import ANONYMOUS, Caller, is_loopback

logger = logging.getLogger(__name__)

BENTO_ROUTES = ("/decide", "/decide_batch", "/respond")  # validated by BentoML (its 400s are rewritten)
JSON_TYPES = ("application/json",)


@dataclass(frozen=True)
class Route:
    kind: str  # decide | decide_batch | respond | events | customers | admin
    scope: str | None  # the scope it needs (decide routes: the channels, checked on the body)
    batch: bool = False  # the larger body limit
    body: bool = True


def route_of(path: str, method: str) -> Route | None:
    """The protected route a call is for (None: a public one, or one BentoML answers 404/405)."""
    if method == "POST":
        if path == "/decide":
            return Route("decide", None)
        if path == "/decide_batch":
            return Route("decide_batch", None, batch=True)
        if path == "/respond":
            return Route("respond", "respond")
        if path == "/events":
            return Route("events", "events", batch=True)
    if path.startswith("/customers/"):
        rest = path[len("/customers/"):].rstrip("/")
        parts = rest.split("/")
        if len(parts) == 1 and parts[0]:
            if method == "GET":
                return Route("customers", "customers", body=False)
            if method == "DELETE":
                return Route("admin", "admin", body=False)
        elif len(parts) == 2 and parts[0] and parts[1] == "preferences":
            if method == "GET":
                return Route("customers", "customers", body=False)
            if method == "PUT":
                return Route("admin", "admin")
    return None


def refusal(status: int, error: str, field: str | None = None, headers: dict[str, str] | None = None,
            **extra: Any) -> JSONResponse:
    return JSONResponse({"error": error, "field": field, **extra}, status_code=status, headers=headers)


def _credential(scope: dict) -> str | None:
    """The key of a call: `Authorization: Bearer <key>` or `X-API-Key: <key>`."""
    auth = xkey = None
    for name, value in scope.get("headers", ()):
        if name == b"authorization":
            auth = value.decode("latin-1").strip()
        elif name == b"x-api-key":
            xkey = value.decode("latin-1").strip()
    if auth:
        kind, _, token = auth.partition(" ")
        if kind.lower() == "bearer" and token.strip():
            return token.strip()
        return auth  # not a bearer credential: an unknown key
    return xkey or None


def _header(scope: dict, wanted: bytes) -> str | None:
    for name, value in scope.get("headers", ()):
        if name == wanted:
            return value.decode("latin-1")
    return None


def rewrite_validation(payload: Any) -> dict[str, Any]:
    """BentoML's 400 (`{"error": "N validation errors for Input", "detail": [pydantic errors]}`,
    or `[{"error": ...}]`) in the service's error shape, naming the first field."""
    if isinstance(payload, list):
        payload = payload[0] if payload and isinstance(payload[0], dict) else {"error": str(payload)}
    if not isinstance(payload, dict):
        return {"error": str(payload), "field": None}
    detail = payload.get("detail")
    if isinstance(detail, list) and detail:
        parts, field = [], None
        for d in detail:
            loc = ".".join(str(x) for x in d.get("loc", ()))
            field = field or (loc or None)
            parts.append(f"{loc or 'body'}: {d.get('msg', '')} ({d.get('type', '')})")
        return {"error": "; ".join(parts), "field": field, "detail": detail}
    return {"error": str(payload.get("error", payload)), "field": payload.get("field")}


class Gate:
    """See the module's docstring. The keys, the rate limiter and the spec are the ones of this
    worker's service instance (built once in its `__init__`); before it is built, 503."""

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope.get("type") != "http":
            await self.app(scope, receive, send)
            return
        path, method = scope.get("path", ""), scope.get("method", "GET")
        if path == "/docs.json" and method in ("GET", "HEAD"):
            await self._spec(scope, receive, send)
            return
        route = route_of(path, method)
        if route is None:
            await self.app(scope, receive, send)
            return
        service = _service()
        if service is None:
            await refusal(503, "the service is starting")(scope, receive, send)
            return
        resp, caller = self._caller(scope, route, service)
        if resp is None and caller.id != ANONYMOUS:
            resp = await self._rate(caller, service)
        if resp is not None:
            await resp(scope, receive, send)
            return
        body = b""
        if route.body:
            resp, body = await self._body(scope, receive, route, service)
            if resp is None and route.kind in ("decide", "decide_batch") and caller.channels is not None:
                resp = _channels_refused(caller, body, route, service)
            if resp is not None:
                await resp(scope, receive, send)
                return
        started = False

        async def sending(message: dict) -> None:
            nonlocal started
            started = True
            await send(message)

        try:
            await self.app(scope, _replay(body, receive), _reshaping(sending) if path in BENTO_ROUTES else sending)
        except Exception:
            if started:  # half an answer is out: the connection is broken, as the server would break it
                raise
            logger.exception("%s %s failed inside the service", method, path)
            await refusal(500, f"{method} {_route_name(route)} failed inside the service (not the request's fault; "
                               "the service's log has the traceback)")(scope, receive, send)

    # --- the steps -----------------------------------------------------------------------

    @staticmethod
    def _caller(scope: dict, route: Route, service: Any) -> tuple[JSONResponse | None, Caller]:
        ring = service.keyring
        nobody = Caller(ANONYMOUS, None, frozenset({"respond", "events", "customers"}))
        challenge = {"WWW-Authenticate": "Bearer"}
        if not ring.keyed:
            client = (scope.get("client") or ("", 0))[0]
            if not is_loopback(client):
                return refusal(401, f"this service has no API keys and answers loopback callers only, not {client}",
                               "authorization", challenge), nobody
        presented = _credential(scope)
        if presented is None:
            if ring.keyed:
                return refusal(401, "an API key is needed: Authorization: Bearer <key> (or X-API-Key: <key>)",
                               "authorization", challenge), nobody
            if route.scope != "admin" or scope["method"] != "DELETE":  # key-free: only erasure needs the token
                return None, nobody
            if not ring.admin_token:
                return refusal(401, "admin calls over HTTP are disabled: no API key has the admin scope and no "
                                    "NBA_ADMIN_TOKEN is set; use `nba customers erase ID`", "authorization",
                               challenge), nobody
            return refusal(401, "an admin call needs a key with the admin scope (or Authorization: Bearer "
                                "<NBA_ADMIN_TOKEN>)", "authorization", challenge), nobody
        caller = ring.authenticate(presented)
        if caller is None:
            return refusal(401, "the API key is not known to this service", "authorization", challenge), nobody
        if route.scope is not None and not caller.may(route.scope):
            return refusal(403, f"key '{caller.id}' lacks the scope '{route.scope}' that {scope['method']} "
                                f"{_route_name(route)} needs", "authorization"), caller
        if route.kind in ("decide", "decide_batch") and caller.channels is not None and not caller.channels:
            return refusal(403, f"key '{caller.id}' may decide for no channel (no decide:<channel> scope)",
                           "authorization"), caller
        return None, caller

    @staticmethod
    async def _rate(caller: Caller, service: Any) -> JSONResponse | None:
        from nba.stores.ratelimit import RateLimitError

        rate, burst = service.keyring.bucket(caller)
        try:
            wait = await service.limiter.take(caller.id, rate, burst)
        except RateLimitError as exc:
            return refusal(503, str(exc))
        if wait <= 0:
            return None
        after = max(1, math.ceil(wait))
        return refusal(429, f"key '{caller.id}' is over its rate limit ({rate:g} requests/s, bursts of {burst}); "
                            f"retry in {after} s", "authorization", {"Retry-After": str(after)},
                       retry_after=after)

    @staticmethod
    async def _body(scope: dict, receive: Any, route: Route, service: Any) -> tuple[JSONResponse | None, bytes]:
        settings = service.keyring_settings
        limit, name = ((settings.max_batch_body_bytes, "NBA_MAX_BATCH_BODY_BYTES") if route.batch
                       else (settings.max_body_bytes, "NBA_MAX_BODY_BYTES"))
        ctype = _header(scope, b"content-type")
        if ctype is not None and ctype.split(";")[0].strip().lower() not in JSON_TYPES:
            return refusal(415, f"Content-Type {ctype.split(';')[0].strip()!r} is not accepted: send "
                                "application/json", "content-type"), b""
        too_big = refusal(413, f"the body is over {limit} bytes, the limit of {scope['method']} {_route_name(route)} "
                               f"({name}); send less per call", "body", limit=limit)
        declared = _header(scope, b"content-length")
        if declared is not None and declared.strip().isdigit() and int(declared) > limit:
            return too_big, b""
        body = bytearray()
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > limit:
                return too_big, b""
        return None, bytes(body)

    @staticmethod
    async def _spec(scope: dict, receive: Any, send: Any) -> None:
        service = _service()
        if service is None:
            await refusal(503, "the service is starting")(scope, receive, send)
            return
        from starlette.responses import Response

        await Response(service.openapi_json(), media_type="application/json")(scope, receive, send)


def _route_name(route: Route) -> str:
    return {"decide": "/decide", "decide_batch": "/decide_batch", "respond": "/respond", "events": "/events",
            "customers": "/customers/{id}", "admin": "/customers/{id}"}[route.kind]


def _channels_refused(caller: Caller, body: bytes, route: Route, service: Any) -> JSONResponse | None:
    """403 unless the key may decide for every channel the body's decisions may use. A body
    that is not the expected JSON passes: BentoML answers it 400."""
    try:
        payload = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    reqs = payload.get("requests") if route.kind == "decide_batch" and isinstance(payload, dict) else [payload]
    if not isinstance(reqs, list):
        return None
    wanted: set[str] = set()
    for r in reqs:
        if not isinstance(r, dict):
            continue
        channels = r.get("channels")
        if isinstance(channels, list) and channels:
            wanted.update(c for c in channels if isinstance(c, str))
        elif r.get("channel") == "best":
            wanted.update(service.outbound_channels)
        elif isinstance(r.get("channel"), str):
            wanted.add(r["channel"])
    missing = caller.missing_channels(wanted)
    if missing:
        return refusal(403, f"key '{caller.id}' may not decide for {', '.join(missing)} (its channels: "
                            f"{', '.join(sorted(caller.channels or ())) or 'none'})", "channel")
    return None


def _service() -> Any:
    import bentoml
    from bentoml.exceptions import BentoMLException

    try:
        service = bentoml.get_current_service()
    except BentoMLException:
        return None
    return service if getattr(service, "keyring", None) is not None else None


def _replay(body: bytes, receive: Any) -> Any:
    sent = False

    async def replay() -> dict:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


def _reshaping(send: Any) -> Any:
    """`send` that rewrites BentoML's 400 bodies into the service's error shape."""
    start: dict | None = None
    chunks: list[bytes] = []

    async def reshaping(message: dict) -> None:
        nonlocal start
        if message["type"] == "http.response.start" and message["status"] == 400:
            start = message
            return
        if start is None:
            await send(message)
            return
        chunks.append(message.get("body", b""))
        if message.get("more_body", False):
            return
        raw = b"".join(chunks)
        try:
            payload = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            payload = {"error": raw.decode(errors="replace")}
        if not (isinstance(payload, dict) and "field" in payload):  # the engine's own 400 is shaped already
            payload = rewrite_validation(payload)
        out = json.dumps(payload).encode()
        headers = [(k, v) for k, v in start.get("headers", []) if k.lower() not in (b"content-length", b"content-type")]
        headers += [(b"content-length", str(len(out)).encode()), (b"content-type", b"application/json")]
        await send({**start, "headers": headers})
        await send({"type": "http.response.body", "body": out, "more_body": False})

    return reshaping
