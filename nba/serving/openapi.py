"""The service's OpenAPI document (3.1), exact for the bundle it serves.

BentoML's own document describes its generic API (free strings where the catalog has a
closed list, 400 bodies of a shape the service does not send, no 401/403/404/413/415/429/503,
a `/metrics` route that answers 404, nothing of the mounted routes). This one is built from
the same pydantic models the service validates with (`nba.serving.service`) and the bundle's
catalog: the channels, actions and outcomes as enums, `k` within the catalog's range, the
context's keys and types from the feature service, every status each route answers with its
body (`ErrorBody` is the one error shape), the security schemes of the keys
(`nba.serving.auth`), `/events` and `/customers` as they are served. `GET /docs.json` answers
it (`nba.serving.gate`), and the Swagger UI at `/` reads it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import BaseModel, Field

from nba import records


class ErrorBody(BaseModel):
    """Every refusal: what was wrong, naming the value and what was expected."""

    error: str = Field(description="the reason, naming the value and what was expected")
    field: str | None = Field(None, description="the field (or header, `authorization`, `content-type`, `body`)")
    detail: list[dict[str, Any]] | None = Field(None, description="the validation errors (loc, msg, type)")
    limit: int | None = Field(None, description="413: the largest body accepted, in bytes")
    retry_after: int | None = Field(None, description="429: seconds until the key may call again")


MAX_CUSTOMER_ID = 2**63 - 1  # customer ids are int64 in the feature store and the log

# the years the platform takes as written (1970 to 2199, `nba.events.check_year`)
YEARS = "^(19[7-9][0-9]|2[01][0-9][0-9])-"
TIME = {"type": "string", "format": "date-time", "pattern": YEARS,
        "description": "ISO 8601 (RFC 3339), the years 1970 to 2199"}

STATUS_TEXT = {
    400: "the request is malformed or names something the catalog does not have (the field is named)",
    401: "no API key, or one this service does not know (a key-free service: a caller not on loopback)",
    403: "the key lacks the scope this call needs (a channel, respond, events, customers, admin)",
    404: "unknown (the decision, the customer) or erased (the customer, GDPR art. 17)",
    405: "the method is not served on this path",
    413: "the body is over the limit (`limit` in bytes)",
    415: "the body is not application/json",
    429: "the key is over its rate limit (Retry-After: seconds)",
    503: "a component the call needs is down, or the service is starting (the reason is named)",
}


def _error(status: int) -> dict[str, Any]:
    out: dict[str, Any] = {"description": STATUS_TEXT[status],
                           "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}}
    if status == 429:
        out["headers"] = {"Retry-After": {"required": True, "description": "seconds until a token is there",
                                          "schema": {"type": "string", "pattern": "^[0-9]+$"}}}
    if status == 401:
        out["headers"] = {"WWW-Authenticate": {"required": True, "schema": {"type": "string"}}}
    return out


def _schema(model: type[BaseModel], defs: dict[str, Any], mode: str = "validation") -> dict[str, Any]:
    """A model's JSON schema with its definitions moved into `defs` (components/schemas)."""
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}", mode=mode)  # type: ignore[arg-type]
    for name, sub in schema.pop("$defs", {}).items():
        defs.setdefault(name, sub)
    return schema


def _json(schema: dict[str, Any], description: str = "") -> dict[str, Any]:
    return {"description": description or "OK", "content": {"application/json": {"schema": schema}}}


def build_spec(models: Mapping[str, type[BaseModel]], *, title: str, version: str, channels: Sequence[str], outbound: Sequence[str],
               actions: Sequence[str], max_k: int, features: Mapping[str, str], issues_and_groups: Sequence[str],
               event_types: Any, keyed: bool, admin_token: bool, metrics: bool, max_body: int, max_batch_body: int) -> dict[str, Any]:
    """The document; `models` are the service's DecideRequest, RespondRequest, Decision and
    Outcome; `features` maps each feature a context may override to number | string."""

    defs: dict[str, Any] = {"ErrorBody": ErrorBody.model_json_schema()}
    decide_req = _schema(models["DecideRequest"], defs)
    decide_req["properties"]["customer_id"] = {"type": "integer", "minimum": 0, "maximum": MAX_CUSTOMER_ID,
                                               "description": "the customer"}
    decide_req["properties"]["timestamp"] = {"anyOf": [TIME, {"type": "null"}], "description": "the moment; default now"}
    decide_req["properties"]["channel"] = {
        "type": "string", "enum": [*channels, "best"],
        "description": f"the channel, or best: the engine chooses among the outbound channels ({', '.join(outbound)})"}
    decide_req["properties"]["channels"] = {
        "anyOf": [{"type": "array", "items": {"type": "string", "enum": list(channels)}}, {"type": "null"}],
        "description": "the channels the engine may choose among (the chosen one is the decision's)"}
    decide_req["properties"]["actions"] = {
        "anyOf": [{"type": "array", "minItems": 1, "items": {"type": "string", "enum": list(actions)}},
                  {"type": "null"}],
        "description": "the actions the decision may propose (the others are not considered); default any"}
    decide_req["properties"]["k"] = {"anyOf": [{"type": "integer", "minimum": 1, "maximum": max_k}, {"type": "null"}],
                                     "description": f"how many actions to rank (1 to {max_k}; default the policies')"}
    decide_req["properties"]["context"] = {
        "type": "object", "additionalProperties": False,
        "description": "request-time values overriding the features of the same name",
        "properties": {n: {"type": "number" if kind == "number" else "string"} for n, kind in sorted(features.items())}}
    defs["DecideRequest"] = decide_req
    batch_req = {"type": "object", "required": ["requests"], "properties": {"requests": {
        "type": "array", "minItems": 1, "maxItems": 1000, "items": {"$ref": "#/components/schemas/DecideRequest"}}}}
    respond_req = _schema(models["RespondRequest"], defs)
    respond_req["properties"]["action_id"] = {"type": "string", "enum": [*actions, records.NO_ACTION],
                                              "description": "the action shown (do_nothing: the decision showed none)"}
    respond_req["properties"]["timestamp"] = {"anyOf": [TIME, {"type": "null"}], "description": "default now"}
    respond_req["properties"]["outcome"] = {"type": "string", "enum": list(records.OUTCOME_KINDS)}
    decision = _schema(models["Decision"], defs, "serialization")
    outcome = _schema(models["Outcome"], defs, "serialization")

    defs["Event"] = _events_schema(event_types)
    common = [401, 403, 413, 415, 429, 503]
    secured: list[dict[str, list[str]]] = [{"bearer": []}, {"apiKey": []}]
    admin_security = secured if (keyed or admin_token) else [{"bearer": []}]
    open_security = secured if keyed else [{}]

    def op(summary: str, body: dict[str, Any] | None, ok: dict[str, Any], statuses: Sequence[int],
           security: list[dict[str, list[str]]], scope: str, limit: int | None = None, **extra: Any) -> dict[str, Any]:
        out: dict[str, Any] = {"summary": summary, "description": f"Scope: {scope}." + (
            f" Body at most {limit} bytes." if limit else ""), "responses": {"200": ok}, "security": security, **extra}
        if body is not None:
            out["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
        for s in sorted(set(statuses)):
            out["responses"][str(s)] = _error(s)
        return out

    cid_param = {"name": "customer_id", "in": "path", "required": True,
                 "schema": {"type": "integer", "minimum": 0, "maximum": MAX_CUSTOMER_ID}}
    prefs_body = _preferences_schema(channels, issues_and_groups)
    paths: dict[str, Any] = {
        "/decide": {"post": op(
            "the next best action(s) for one customer in one channel, with the reasons",
            {"$ref": "#/components/schemas/DecideRequest"}, _json(decision), [400, 404, *common],
            open_security, "decide:<channel> (channel best: every outbound channel)", max_body,
            operationId="decide")},
        "/decide_batch": {"post": op(
            "decisions for up to 1,000 customers in one call", batch_req,
            _json({"type": "array", "items": decision}), [400, 404, *common], open_security,
            "decide:<channel> for every channel of the list", max_batch_body, operationId="decide_batch")},
        "/respond": {"post": op(
            "record the outcome of a shown action (idempotent on decision and action)",
            respond_req, _json(outcome), [400, 404, *common], open_security, "respond", max_body,
            operationId="respond")},
        "/events": {"post": op(
            "one event or a list of events (serving/events.yaml): appended, pushed, then the triggers",
            {"anyOf": [{"$ref": "#/components/schemas/Event"},
                       {"type": "array", "minItems": 1, "maxItems": 10_000,
                        "items": {"$ref": "#/components/schemas/Event"}}]},
            _json({"type": "object", "required": ["triggers", "erased_customers"], "properties": {
                "triggers": {"type": "array"},
                "erased_customers": {"type": "array", "items": {"type": "integer"},
                                     "description": "customers on the erasure list: their events neither stored nor "
                                                    "pushed"}}}),
            [400, *common], open_security, "events", max_batch_body, operationId="events")},
        "/customers/{customer_id}": {
            "get": op("the customer 360 (as of now, or of `at`)", None,
                      _json({"type": "object", "required": ["customer_id", "as_of", "features_missing"]}),
                      [400, 404, 401, 403, 429, 503], open_security, "customers (or admin)",
                      parameters=[cid_param, {"name": "at", "in": "query", "required": False,
                                              "schema": TIME}],
                      operationId="customer"),
            "delete": op("erase the customer everywhere; the receipt", None,
                         _json({"type": "object", "required": ["customer_id"]}), [400, 401, 403, 429, 503],
                         admin_security, "admin", parameters=[cid_param], operationId="erase_customer")},
        "/customers/{customer_id}/preferences": {
            "get": op("the customer's preferences and their audit", None,
                      _json({"type": "object", "required": ["customer_id", "preferences", "audit"]}),
                      [400, 404, 401, 403, 429, 503], open_security, "customers (or admin)", parameters=[cid_param],
                      operationId="get_preferences"),
            "put": op("replace the customer's preferences", prefs_body,
                      _json({"type": "object", "required": ["customer_id", "preferences"]}),
                      [400, 404, 401, 403, 413, 415, 429, 503], open_security, "admin (key-free: open)", max_body,
                      parameters=[cid_param], operationId="put_preferences")},
        "/healthz": {"get": {"summary": "the process is alive", "security": [],
                             "responses": {"200": {"description": "alive"}}, "operationId": "healthz"}},
        "/livez": {"get": {"summary": "the process is alive (BentoML's name)", "security": [],
                           "responses": {"200": {"description": "alive"}}, "operationId": "livez"}},
        "/readyz": {"get": {"summary": "each component with its state", "security": [], "operationId": "readyz",
                            "responses": {s: _json({"type": "object", "required": ["ready", "checks", "worker"],
                                                    "properties": {"ready": {"type": "boolean"},
                                                                   "checks": {"type": "object"},
                                                                   "worker": {"type": "integer", "description":
                                                                              "the pid of the worker that answered"}}},
                                                   d)
                                          for s, d in (("200", "ready"), ("503", "a component is down"))}}},
    }
    if metrics:
        paths["/metrics"] = {"get": {"summary": "Prometheus metrics", "security": [], "operationId": "metrics",
                                     "responses": {"200": {"description": "metrics",
                                                           "content": {"text/plain": {"schema": {"type": "string"}}}}}}}
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version, "description": (
            "One central decision authority for every channel. "
            + ("Every call but the health checks needs an API key (Authorization: Bearer <key> or X-API-Key)."
               if keyed else "Key-free (loopback callers only); admin calls need the admin token.")
            + " Errors are ErrorBody.")},
        "servers": [{"url": "."}],
        "paths": paths,
        "components": {"schemas": defs, "securitySchemes": {
            "bearer": {"type": "http", "scheme": "bearer",
                       "description": "an API key (nba_<id>_<secret>), or NBA_ADMIN_TOKEN for admin calls"},
            "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key", "description": "an API key"}}},
    }


def _preferences_schema(channels: Sequence[str], topics: Sequence[str]) -> dict[str, Any]:
    from zoneinfo import available_timezones

    from nba.preferences import MAX_COUNT, MAX_DAYS

    hhmm = {"type": "string", "pattern": "^([01][0-9]|2[0-3]):[0-5][0-9]$"}
    per_channel = {c: {"type": "boolean"} for c in channels}
    freq = {c: {"type": "object", "required": ["count"], "additionalProperties": False,
                "properties": {"count": {"type": "integer", "minimum": 0, "maximum": MAX_COUNT},
                               "days": {"type": "number", "exclusiveMinimum": 0, "maximum": MAX_DAYS}}}
            for c in channels}
    return {"type": "object", "additionalProperties": False, "properties": {
        "consent": {"type": "object", "properties": per_channel, "additionalProperties": False},
        "frequency": {"type": "object", "properties": freq, "additionalProperties": False},
        "quiet_hours": {"anyOf": [{"type": "object", "required": ["start", "end"], "additionalProperties": False,
                                   "properties": {"start": hhmm, "end": hhmm},
                                   "description": "start and end differ (the same time twice is refused, 400)"}, {"type": "null"}]},
        "timezone": {"type": "string", "enum": sorted(available_timezones())},
        "topics_blocked": {"type": "array", "items": {"type": "string", "enum": list(topics)}},
        "updated_by": {"type": "string", "minLength": 1, "pattern": "[^\\s]"}}}


def _events_schema(types: Any) -> dict[str, Any]:
    """One event, a `oneOf` by `type` (serving/events.yaml): its properties with their types."""
    from nba.events import MAX_ID

    kinds: dict[str, dict[str, Any]] = {"string": {"type": "string"}, "int": {"type": "integer", "minimum": -(2**63), "maximum": 2**63 - 1}, "float": {"type": "number"},
             "bool": {"type": "boolean"}}
    # the service refuses a time more than `max_future_s` ahead of its clock (400): a bound
    # that moves with the clock, which a schema cannot state
    when = {"anyOf": [TIME, {"type": "number", "minimum": 0, "exclusiveMaximum": 7_258_118_400}, {"type": "null"}],
            "description": f"ISO 8601 or epoch seconds, at most {types.max_future_s:g} s ahead of the service's "
                           "clock (else 400); default now"}
    variants = []
    for name, spec in types.types.items():
        props: dict[str, Any] = {}
        for pname, p in spec.properties.items():
            if isinstance(p.type, list):
                props[pname] = {"type": "string", "enum": list(p.type)}
            elif p.type == "timestamp":
                props[pname] = {k: v for k, v in when.items() if k != "description"}
            else:
                props[pname] = dict(kinds[p.type])
            if not p.required:  # null is taken for absent
                props[pname] = {"anyOf": [props[pname], {"type": "null"}]}
        required = [n for n, p in spec.properties.items() if p.required]
        pschema: dict[str, Any] = {"type": "object", "additionalProperties": False, "properties": props}
        if required:
            pschema["required"] = required
        variants.append({
            "type": "object", "title": name, "additionalProperties": False,
            "required": ["customer_id", "type", *(["properties"] if required else [])],
            "properties": {
                "event_id": {"anyOf": [{"type": "string", "minLength": 1, "maxLength": MAX_ID}, {"type": "null"}]},
                "customer_id": {"type": "integer", "minimum": 0, "maximum": 2**63 - 1},
                "type": {"const": name}, "timestamp": when,
                "properties": pschema if required else {"anyOf": [pschema, {"type": "null"}]}}})
    return {"oneOf": variants, "description": "an event of a declared type (serving/events.yaml)"}
