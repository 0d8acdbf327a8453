"""The BentoML decision service: a thin, typed shell over `DecisionEngine`.

    POST /decide         one decision (customer id, channel, optional context, timestamp, k); channel
                         `best` (or a list `channels`): the engine chooses the channel
    POST /decide_batch   decisions for a list of customers (vectorised in one core call)
    POST /respond        an outcome: accepted | rejected | ignored, with value (idempotent); an
                         accepted product is held at once, `opt_out` withdraws the channel's consent
    POST /events         one event or a list (serving/events.yaml): validated, appended to the event
                         log, the streaming features pushed, then the triggers (`triggers` in the answer)
    GET  /customers/{id} the customer 360; PUT /customers/{id}/preferences, the preference centre;
                         DELETE /customers/{id}, erasure (admin token); GET /agent/{id}, the agent's
                         page (`nba.serving.customer_app`)
    GET  /healthz        the process is alive (BentoML)
    GET  /readyz         models, feature store, contact-policy store and decision log, each with
                         its state; 503 with the reasons when one is down

Malformed JSON and fields of the wrong type are answered 400 by BentoML's validation (the body
names the field and the reason); the engine's checks (unknown channel, k out of range, unknown
context key) answer 400, an unknown decision 404, a customer without features 404 (when the
policies say `reject`), a store that is down 503, each as `{"error": ..., "field": ...}`.

Settings come from `nba.settings.Settings` (`NBA_*` variables): the worker count and the
metrics switch when BentoML reads the service's configuration (at import), the rest when a
worker builds its service instance; the bundle from `NBA_BUNDLE_DIR`, else the `bundle/`
folder of the Bento this module was built into, else `<work>/bundle`. The engine lives on
the service instance; `/readyz` reaches it through `bentoml.get_current_service()`.
"""

from __future__ import annotations

import json
import os
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import bentoml
from pydantic import BaseModel, BeforeValidator, Field, StrictFloat, StrictInt, StrictStr, create_model
from starlette.responses import JSONResponse, Response

from nba import records
from nba.console import one_line_client_errors
from nba.records import model_fields
from nba.serving.batching import DecideBatcher
from nba.serving.connections import KeepAliveLimit
from nba.serving.gate import Gate
from nba.settings import Settings, disable_telemetry

if TYPE_CHECKING:
    from nba.serving.engine import DecisionRequest

disable_telemetry()  # this module is an entry point (bentoml serve): no library phones home
one_line_client_errors()  # a refused request is the caller's error: one line, not a traceback (nba.console)


def bundle_location(settings: Settings) -> Path:
    if settings.serve_bundle is not None:
        return settings.path(settings.serve_bundle)
    packed = Path(__file__).resolve().parents[2] / "bundle"  # inside a built Bento
    if (packed / "bundle.json").is_file():
        return packed
    return settings.bundle_dir


# The response models share their fields with the records they report (`nba.records`): the
# type, nullability and description of each such field come from the declaration.
RankedAction = create_model(
    "RankedAction",
    **model_fields(records.CANDIDATE, ("rank", "action_id")),
    name=(str, ...), issue=(str, ...), group=(str, ...),
    # a ranked action was scored: its numbers are never missing
    **model_fields(records.CANDIDATE, ("propensity", "value", "lever", "priority", "uplift"),
                   required=("propensity", "value", "lever", "priority")),
    reason=(str, ...),
)

FilteredAction = create_model("FilteredAction", **model_fields(records.FILTERED, ("action_id", "stage", "rule")))


class Versions(BaseModel):
    catalog: str
    bundle: str
    models: dict[str, str]


Decision = create_model(
    "Decision",
    **model_fields(records.DECISION, ("decision_id", "customer_id", "channel", "decided_at", "experiment_group")),
    features_missing=(bool, Field(description="the customer had no online features (defaults used)")),
    probability=(float, Field(description="P(the logging policy shows the first action, or nothing)")),
    actions=(list[RankedAction], Field(description="ranked, best first; empty: do nothing")),  # type: ignore[valid-type]
    filtered=(list[FilteredAction], ...),  # type: ignore[valid-type]
    versions=(Versions, ...),
    timing=(dict[str, float], ...),
    channel_reason=(str | None, Field(None, description="why the engine chose this channel (channel 'best' or a "
                                                          "list of channels)")),
)


MAX_CUSTOMER_ID = 2**63 - 1  # customer ids are int64 in the feature store and the log


def _integral(v: Any) -> Any:
    """3.0 is an integer in JSON (and in its schemas): accepted as 3; "3", true and 3.5 are not."""
    return int(v) if isinstance(v, float) and v.is_integer() and abs(v) < 2**63 else v


Whole = Annotated[int, BeforeValidator(_integral), Field(strict=True)]
# a context value: a number or a string, as the feature is (true is not a number, "3" not a number)
ContextValue = StrictFloat | StrictInt | StrictStr


class DecideRequest(BaseModel):
    customer_id: Annotated[Whole, Field(ge=0, le=MAX_CUSTOMER_ID)]
    channel: str
    channels: list[str] | None = None
    context: dict[str, ContextValue] = Field(default_factory=dict)
    timestamp: Annotated[datetime | None, Field(strict=True)] = None
    k: Whole | None = None
    actions: Annotated[list[str] | None, Field(min_length=1)] = None


class RespondRequest(BaseModel):
    """The body of /respond (the parameters of `DecisionService.respond`; its OpenAPI schema)."""

    decision_id: str
    action_id: str
    outcome: str
    value: Annotated[float, Field(ge=0, strict=True, allow_inf_nan=False,
                                  description="value realised (0 unless accepted)")] = 0.0
    timestamp: Annotated[datetime | None, Field(strict=True)] = None
    opt_out: Annotated[bool, Field(strict=True, description="the customer withdrew the consent of the decision's "
                                                            "channel")] = False


Outcome = create_model(
    "Outcome",
    **model_fields(records.OUTCOME, ("decision_id", "action_id", "outcome", "value")),
    recorded=(bool, ...), duplicate=(bool, ...),
    **model_fields(records.OUTCOME, ("responded_at",)),
    customer_id=(int, ...),
    holding_set=(str | None, Field(None, description="the holding flag the acceptance set")),
    opted_out=(str | None, Field(None, description="the channel whose consent was withdrawn")),
)


def _error(exc: Exception) -> Response:
    from nba.errors import NbaError
    from nba.serving.engine import RequestError, Unavailable

    if isinstance(exc, RequestError):
        return JSONResponse({"error": str(exc), "field": exc.field}, status_code=exc.status)
    if isinstance(exc, Unavailable):
        return JSONResponse({"error": str(exc), "field": None}, status_code=503)
    if isinstance(exc, NbaError):
        return JSONResponse({"error": str(exc), "field": None}, status_code=503)
    raise exc


def _epoch(ts: datetime | None, where: str = "timestamp") -> float | None:
    """Epoch seconds of a request's time; a year outside 1970-2199 is a 400 naming the field."""
    if ts is None:
        return None
    from datetime import UTC

    from nba.events import FIRST_YEAR, LAST_YEAR
    from nba.serving.engine import RequestError

    if not FIRST_YEAR <= ts.year <= LAST_YEAR:
        raise RequestError(f"{where} = {ts.isoformat()}: the year {ts.year} is out of range; expected {FIRST_YEAR} "
                           f"to {LAST_YEAR}", field=where)

    return (ts if ts.tzinfo else ts.replace(tzinfo=UTC)).timestamp()


def _decision_request(customer_id: int, channel: str, context: dict[str, Any], timestamp: datetime | None,
                      k: int | None, channels: list[str] | None, actions: list[str] | None,
                      where: str = "timestamp") -> DecisionRequest:
    """The engine's request from the fields of /decide (or one of /decide_batch's requests)."""
    from nba.serving.engine import DecisionRequest

    return DecisionRequest(customer_id, channel, context, _epoch(timestamp, where), k,
                           channels=tuple(channels) if channels else None,
                           actions=tuple(actions) if actions is not None else None)


class ReadinessMiddleware:
    """`GET /readyz` with the state of each component (BentoML's own says only ready or not).
    The engine is the one of this worker's service instance (BentoML sets it once the
    instance is built); before that, the answer is 503 "starting"."""

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope.get("type") == "http" and scope.get("path") == "/readyz" and scope.get("method") == "GET":
            from bentoml.exceptions import BentoMLException

            try:
                engine = bentoml.get_current_service().engine
            except BentoMLException:  # the instance is not built yet
                engine = None
            if engine is None:
                body = {"ready": False, "checks": {"engine": {"ok": False, "detail": "starting"}}}
            else:
                body = engine.readiness()
            body["worker"] = os.getpid()  # which worker answered: a server is ready once all of them are
            resp = JSONResponse(body, status_code=200 if body["ready"] else 503)
            await resp(scope, receive, send)
            return
        await self.app(scope, receive, send)


MAX_EVENTS_BODY = 8 << 20  # bytes of one POST /events body


class EventsMiddleware:
    """`POST /events`: one event (a JSON object) or a list of them, straight from the body (a
    BentoML API maps a body's keys to parameters; an event's keys are its own). Validated,
    appended durably and pushed before the answer; a bad event answers 400 naming the field
    (`events[3].properties.days_late`), nothing of the call stored."""

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope.get("type") != "http" or scope.get("path") != "/events":
            await self.app(scope, receive, send)
            return
        if scope.get("method") != "POST":
            await JSONResponse({"error": "POST /events takes an event or a list of events"}, status_code=405,
                               headers={"Allow": "POST"})(scope, receive, send)
            return
        body = bytearray()
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > MAX_EVENTS_BODY:
                resp = JSONResponse({"error": f"body over {MAX_EVENTS_BODY} bytes; send fewer events per call",
                                     "field": "events"}, status_code=413)
                await resp(scope, receive, send)
                return
        from bentoml.exceptions import BentoMLException
        from starlette.concurrency import run_in_threadpool

        try:
            engine = bentoml.get_current_service().engine
        except BentoMLException:  # the instance is not built yet
            engine = None
        if engine is None:
            await JSONResponse({"error": "the service is starting"}, status_code=503)(scope, receive, send)
            return
        # in a thread: the appends of concurrent calls share one commit (group commit)
        resp = await run_in_threadpool(self._answer, engine, bytes(body))
        await resp(scope, receive, send)

    @staticmethod
    def _answer(engine: Any, body: bytes) -> Any:
        try:
            payload = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            return JSONResponse({"error": f"body is not valid JSON: {exc}", "field": "events"}, status_code=400)
        try:
            out = engine.ingest_events(payload)
        except Exception as exc:
            return _error(exc)
        return Response(json.dumps(out), media_type="application/json")


def service_config(settings: Settings) -> dict[str, Any]:
    """The service's BentoML configuration (benchmarks/floor_service.py measures BentoML's own
    request path under the same one).

    One request at a time per worker (async API: no thread hop); a worker waiting on its log's
    fsync leaves its core to the others, so the default is one worker more than the 2 cores.
    BentoML's Prometheus middleware and an OpenTelemetry span per request cost about 20 % of
    the CPU of a decision (py-spy on a serving worker); both are off unless NBA_SERVE_METRICS=1.
    """
    untraced = [] if settings.serve_metrics else ["/decide", "/decide_batch", "/respond", "/events", "/readyz",
                                                  "/healthz"]
    return {
        "workers": settings.serve_workers,
        "traffic": {"timeout": 60},
        "logging": {"access": {"enabled": False}},  # console access logs cost ~15 % throughput (PERFORMANCE.md)
        "metrics": {"enabled": settings.serve_metrics},
        "tracing": {"excluded_urls": untraced},
    }


CONFIG = service_config(Settings())  # BentoML reads a service's configuration from its decorator


@bentoml.service(name="nba_decision", **CONFIG)
class DecisionService:
    """One central decision authority for every channel."""

    def __init__(self) -> None:
        """The engine over the bundle, warmed. A component that does not load (a model, the
        feature store) is retried on use and `/readyz` says why; a bundle that cannot be read
        at all stops the worker with the reason in its log."""
        from nba.serving.auth import load_keyring
        from nba.serving.bundle import load_engine
        from nba.serving.engine import freeze_loaded_heap
        from nba.stores.ratelimit import rate_limiter

        settings = Settings()
        self.engine = load_engine(settings, bundle_location(settings))
        self.engine.warm()
        # concurrent calls together, committed while the next are decided (Settings.commit_threads)
        self.batcher = DecideBatcher(self.engine.begin_decide, max_batch=settings.serve_batch,
                                     commits=settings.commit_threads)
        catalog = self.engine.catalog
        # the gate's (nba.serving.gate): keys checked against the catalog's channels, at start
        self.keyring_settings = settings
        self.keyring = load_keyring(settings, catalog.channel_names)
        kind = settings.rate_limit_store or ("redis" if settings.profile == "production" else "memory")
        self.limiter = rate_limiter(kind, redis_url=settings.redis_url, prefix=settings.redis_prefix)
        self.outbound_channels = tuple(c.name for c in catalog.channels if c.direction == "outbound")
        self._openapi: bytes | None = None
        if settings.serve_gc_freeze:
            freeze_loaded_heap()  # loaded for good: no full collection walks it again

    def openapi_json(self) -> bytes:
        """The exact OpenAPI document of this bundle (`nba.serving.openapi`), built once."""
        if self._openapi is None:
            from nba.preferences import ISSUES, catalog_issues
            from nba.serving.bundle import read_manifest
            from nba.serving.openapi import build_spec

            settings, cat = self.keyring_settings, self.engine.catalog
            manifest = read_manifest(bundle_location(settings))
            kinds = {f["name"]: f["kind"] for f in manifest["features"]}
            models: dict[str, Any] = {"DecideRequest": DecideRequest, "RespondRequest": RespondRequest,
                                      "Decision": Decision, "Outcome": Outcome}
            spec = build_spec(
                models, title="nba_decision", version=f"{cat.version} ({self.engine.bundle})", channels=cat.channel_names,
                outbound=self.outbound_channels, actions=cat.action_ids, max_k=cat.max_k,
                features={n: kinds.get(n, "number") for n in cat.feature_names},
                issues_and_groups=tuple(dict.fromkeys((*ISSUES, *catalog_issues(cat), *cat.groups))),
                keyed=self.keyring.keyed, admin_token=bool(settings.admin_token), metrics=settings.serve_metrics,
                event_types=self._event_types(), max_body=settings.max_body_bytes, max_batch_body=settings.max_batch_body_bytes)
            self._openapi = json.dumps(spec).encode()
        return self._openapi

    def _event_types(self) -> Any:
        from nba.events import event_types

        return event_types(self.keyring_settings.home)

    @bentoml.api(route="/decide")
    async def decide(self, customer_id: Annotated[Whole, Field(ge=0, le=MAX_CUSTOMER_ID, description="the customer")],
               channel: Annotated[str, Field(description="email | sms | push | call_centre | web | agent, or best: "
                                                         "the engine chooses among the outbound channels")],
               context: Annotated[dict[str, ContextValue], Field(
                   description="request-time values overriding features of the same name")] = {},  # noqa: B006
               timestamp: Annotated[datetime | None, Field(strict=True, description="the moment (ISO 8601); "
                                                                                     "default now")] = None,
               k: Annotated[Whole | None, Field(description="how many actions to rank")] = None,
               channels: Annotated[list[str] | None, Field(
                   description="the channels the engine may choose among (the chosen one is the decision's)")] = None,
               actions: Annotated[list[str] | None, Field(
                   min_length=1, description="the actions the decision may propose; default any")] = None,
               ) -> Decision:  # type: ignore[valid-type]
        """The next best action(s) for one customer in one channel, with the reasons."""
        try:
            out = await self.batcher.decide(_decision_request(customer_id, channel, context, timestamp, k, channels,
                                                              actions))
        except Exception as exc:
            return _error(exc)  # type: ignore[return-value]
        return Response(json.dumps(out), media_type="application/json")  # type: ignore[return-value]

    @bentoml.api(route="/decide_batch")
    def decide_batch(self, requests: Annotated[list[DecideRequest], Field(min_length=1, max_length=1000)]
                     ) -> list[Decision]:  # type: ignore[valid-type]
        """Decisions for up to 1,000 customers in one call (one vectorised pass of the core)."""
        try:
            reqs = [_decision_request(r.customer_id, r.channel, r.context, r.timestamp, r.k, r.channels, r.actions,
                                      f"requests[{i}].timestamp")
                    for i, r in enumerate(requests)]
            out = self.engine.decide(reqs)
        except Exception as exc:
            return _error(exc)  # type: ignore[return-value]
        return Response(json.dumps(out), media_type="application/json")  # type: ignore[return-value]

    @bentoml.api(route="/respond")
    async def respond(self, decision_id: str, action_id: str,
                outcome: Annotated[str, Field(description="accepted | rejected | ignored")],
                value: Annotated[float, Field(ge=0, strict=True, allow_inf_nan=False,
                                              description="value realised (0 unless accepted)")] = 0.0,
                timestamp: Annotated[datetime | None, Field(strict=True)] = None,
                opt_out: Annotated[bool, Field(strict=True, description="the customer withdrew the consent of the "
                                                                        "decision's channel")] = False,
                ) -> Outcome:  # type: ignore[valid-type]
        """Record the outcome of a shown action; idempotent on (decision_id, action_id). An
        accepted product is held at once; `opt_out` withdraws the channel's consent."""
        try:
            out = self.engine.respond(decision_id, action_id, outcome, value, _epoch(timestamp), opt_out=opt_out)
        except Exception as exc:
            return _error(exc)  # type: ignore[return-value]
        return Response(json.dumps(out), media_type="application/json")  # type: ignore[return-value]


DecisionService.add_asgi_middleware(KeepAliveLimit)  # type: ignore[attr-defined]  # first: outermost of ours
DecisionService.add_asgi_middleware(Gate)  # type: ignore[attr-defined]
DecisionService.add_asgi_middleware(ReadinessMiddleware)  # type: ignore[attr-defined]
DecisionService.add_asgi_middleware(EventsMiddleware)  # type: ignore[attr-defined]


def _mount_customer_routes() -> None:
    """GET/DELETE /customers/{id}, GET/PUT /customers/{id}/preferences and the agent page at
    /agent/ (`nba.serving.customer_app`), mounted beside the API."""
    from nba.serving.customer_app import agent_app, customers_app

    DecisionService.mount_asgi_app(customers_app, path="/customers", name="customers")  # type: ignore[attr-defined]
    DecisionService.mount_asgi_app(agent_app, path="/agent", name="agent")  # type: ignore[attr-defined]


_mount_customer_routes()
