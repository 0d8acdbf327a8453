"""The decision engine: everything a decision needs, loaded once, around the pure core.

    request -> validate -> online features (Feast) -> scores (churn_risk, clv) -> contact history
            -> the customer's preferences -> nba.decisioning.core.decide -> contacts reserved in
            the contact-policy state (checked and recorded atomically; decided again if another
            worker or replica moved the customer's state) -> decision log + outbox (durable, one
            transaction; the reservation is taken back if it fails) -> response

A preview (`decide(..., preview=True)`, what `GET /customers/{id}` shows per channel) runs the
same path but logs nothing and counts no contact: it becomes a contact once a channel asks
`/decide` for it and shows it.

The BentoML service (`nba.serving.service`) and `nba decide-batch` are thin shells over
`DecisionEngine`: both produce the same decisions and the same log records.

Errors a caller can cause are `RequestError`s carrying an HTTP status (400 malformed, 404
unknown customer or decision) and the field they are about; a store that is down is
`Unavailable` (503, with the reason). Components that fail to come up (the feature store, a
model) do not stop the server: readiness says which and why, decisions answer 503, and the
engine tries again (at most once a second) until they are up.
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import numpy as np

from nba import records, schemas
from nba.catalog import Catalog
from nba.decisioning import core
from nba.decisioning.experiment import decision_keys
from nba.decisioning.tables import contacts, decision_tables
from nba.errors import NbaError, NotWritten
from nba.records import DecisionTables
from nba.settings import Settings
from nba.stores.decisions import DecisionLogStore, UnknownDecision
from nba.stores.policy_state import PolicyStore, to_history

if TYPE_CHECKING:
    from nba.serving.ingest import IngestResult

RETRY_S = 1.0
RESERVE_ATTEMPTS = 8  # decisions of one call lost to concurrent contacts before it answers 503


class RequestError(NbaError):
    """A request the engine cannot serve as asked; `status` is the HTTP status to answer."""

    status = 400

    def __init__(self, message: str, *, field: str | None = None, status: int | None = None):
        super().__init__(message)
        self.field = field
        if status is not None:
            self.status = status


class Unavailable(NbaError):
    """A component the decision needs is down (503)."""

    status = 503
    exit_code = 3


BEST = "best"  # the channel of a request that lets the engine choose (among every outbound channel)


@dataclass(frozen=True)
class DecisionRequest:
    customer_id: int
    channel: str  # a channel of the catalog, or "best": the engine chooses among the outbound ones
    context: Mapping[str, Any] = field(default_factory=dict)
    timestamp: float | None = None  # epoch seconds; None: now
    k: int | None = None
    deliver: bool = False  # an outbound decision that shows an action writes an outbox message
    channels: tuple[str, ...] | None = None  # the channels the engine may choose among (the chosen one is `channel`)
    actions: tuple[str, ...] | None = None  # the actions the decision may propose (a trigger's); None: any
    trigger_id: str | None = None  # the trigger that started the decision
    event_id: str | None = None  # the event that fired it

    @property
    def chooses(self) -> bool:
        """Does the engine choose this request's channel?"""
        return self.channel == BEST or bool(self.channels)


def freeze_loaded_heap() -> int:
    """Exempt what a worker has loaded (the bundle's models, the catalog, the libraries: about
    370,000 objects) from the cyclic garbage collector: each full collection walked them all,
    about 190 ms during which the worker answered nothing, and under load it fell due every few
    seconds. Called once a worker is warm; what it allocates later is collected as before.
    Returns the objects frozen (`gc.freeze`)."""
    import gc

    gc.collect()  # the garbage of loading goes first, so it is not kept for good
    gc.freeze()
    return gc.get_freeze_count()


def _now() -> float:
    return time.time()


def new_decision_ids(n: int) -> list[str]:
    """n unique decision ids of 32 hex characters. One request: 128 random bits. A batch: 64
    random bits then a counter, so a million ids are appended in key order (a random key per
    row made the log's index inserts ten times slower)."""
    if n == 1:
        return [os.urandom(16).hex()]
    prefix = os.urandom(8).hex()
    return [f"{prefix}{i:016x}" for i in range(n)]


class _NoTriggers:
    """The triggering of an engine without triggers (`nba.serving.triggering.Triggering` else)."""

    def on_events(self, stored_events: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        return []


def _no_triggers(engine: Any) -> Any:
    return _NoTriggers()


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class _Lazy:
    """A component built on first use and rebuilt (at most once per RETRY_S) after a failure."""

    def __init__(self, name: str, build: Any):
        self.name = name
        self._build = build
        self.value: Any = None
        self.error: str | None = None
        self._last_try = 0.0
        self._lock = threading.Lock()

    def get(self) -> Any:
        if self.value is not None:
            return self.value
        with self._lock:
            if self.value is None and time.monotonic() - self._last_try >= RETRY_S:
                self._last_try = time.monotonic()
                try:
                    self.value = self._build()
                    self.error = None
                except Exception as exc:
                    self.error = f"{type(exc).__name__}: {exc}"
        if self.value is None:
            raise Unavailable(f"{self.name} is not available: {self.error}")
        return self.value


class DecisionEngine:
    """Decides for customers and records outcomes; safe to share between threads."""

    def __init__(self, settings: Settings, catalog: Catalog, *, models: Any, features: Any, policy: Any,
                 log: DecisionLogStore, model_versions: Mapping[str, str], bundle: str = "source",
                 triggering: Any = None, preferences: Any = None, events: Any = None, erasures: Any = None):
        """`models`, `features`, `policy`, `preferences`, `events` and `erasures` are callables
        building the `ModelSet`, the `OnlineFeatureReader`, the `PolicyStore`, the
        `PreferenceStore`, the `EventIngestor` and the `ErasureList` (or the objects themselves;
        preferences and erasures default to the profile's stores; `events` None: this engine
        takes no events); `triggering` one taking the engine and building its `Triggering`
        (None: no triggers)."""
        self.settings = settings
        self.catalog = catalog
        self._models = _Lazy("the model set", models if callable(models) else (lambda: models))
        self._features = _Lazy(f"the feature store ({catalog.feature_service})",
                               features if callable(features) else (lambda: features))
        self._policy = _Lazy("the contact-policy store", policy if callable(policy) else (lambda: policy))
        if preferences is None:
            def preferences() -> Any:
                from nba.stores.preferences import open_preference_store

                return open_preference_store(settings)
        self._preferences = _Lazy("the preference store",
                                  preferences if callable(preferences) else (lambda: preferences))
        if erasures is None:
            def erasures() -> Any:
                from nba.stores.erasures import open_erasure_list

                return open_erasure_list(settings)
        self._erasures = _Lazy("the erasure list", erasures if callable(erasures) else (lambda: erasures))
        self._events = None if events is None else _Lazy(
            "the event ingestion (event log and feature push)", events if callable(events) else (lambda: events))
        self.log = log
        self.model_versions = dict(model_versions)
        self.bundle = bundle
        self.window_s = core.cap_windows_days(catalog) * 86400.0
        self._channel_index = {c: i for i, c in enumerate(catalog.channel_names)}
        self._action_index = {a: i for i, a in enumerate(catalog.action_ids)}
        self._numbers: set[str] | None = None
        self._triggering = _Lazy("the trigger set", lambda: (triggering or _no_triggers)(self))
        self.has_triggers = triggering is not None and events is not None
        self._ran: list[str] = []  # events whose triggers ran, marked triggered with the next append
        self._ran_lock = threading.Lock()

    # --- components ----------------------------------------------------------------------

    @property
    def models(self) -> Any:
        return self._models.get()

    @property
    def features(self) -> Any:
        return self._features.get()

    @property
    def policy(self) -> PolicyStore:
        return self._policy.get()

    @property
    def preferences(self) -> Any:
        return self._preferences.get()

    def customer_preferences(self, ids: Sequence[int]) -> list[Any]:
        """Each customer's `CustomerPreferences` (None: none set), as the store holds them now."""
        from nba.preferences import loads

        try:
            stored = self.preferences.get(ids)
        except NbaError as exc:
            raise Unavailable(str(exc)) from None
        parsed = {cid: loads(p.preferences, self.catalog) for cid, p in stored.items()}
        return [parsed.get(int(c)) for c in ids]

    @property
    def erasures(self) -> Any:
        """The `ErasureList` (the engine's event ingestion shares it)."""
        return self._erasures.get()

    def refuse_erased(self, ids: Sequence[int], found: Sequence[bool]) -> None:
        """A decision for an erased customer (`nba.stores.erasures`) is refused, 404 (as the
        customer 360 answers for them), before anything is written. Only the customers without
        online features are looked up: an erasure deletes them there, and none of their events
        is stored to bring them back."""
        unknown = [c for c, f in zip(ids, found, strict=True) if not f]
        if not unknown:
            return
        try:
            gone = self.erasures.erased(unknown)
        except NbaError as exc:
            raise Unavailable(str(exc)) from None
        if gone:
            cid = next(int(c) for c in ids if int(c) in gone)
            raise RequestError(f"customer {cid} was erased at {iso(gone[cid])} (GDPR art. 17): no decision is made "
                               "for an erased customer; a customer who comes back is given a new id",
                               field="customer_id", status=404)

    @property
    def events(self) -> Any:
        if self._events is None:
            raise Unavailable("this engine was built without an event log")
        return self._events.get()

    def warm(self, rows: int = 1) -> None:
        """Build every component and score `rows` made-up customers (the first calls of a model
        are slow: one row warms the numpy trees the service uses, a batch's size XGBoost)."""
        for part in (self._models, self._features, self._policy, self._erasures, self._events):
            if part is None:
                continue
            try:
                part.get()
            except Unavailable:
                continue
        try:
            models = self._models.get()
            reader = self._features.get()
        except Unavailable:
            return
        env = self._env({f.name: [None] * rows for f in reader.fields}, rows, [{}] * rows)
        env.update({k: (float(v[0]) if rows == 1 else v) for k, v in models.score(env, rows).items()})
        idx = np.arange(len(self.catalog.actions))
        for _ in range(3):
            models.propensity(env, rows, np.repeat(np.arange(rows), idx.size), np.tile(idx, rows))

    def readiness(self) -> dict[str, Any]:
        """Is each component up? (`/readyz`)"""
        checks: dict[str, dict[str, Any]] = {}

        def check(name: str, fn: Any) -> None:
            try:
                detail = fn()
                checks[name] = {"ok": True, "detail": detail}
            except Exception as exc:
                checks[name] = {"ok": False, "detail": str(exc) if isinstance(exc, NbaError) else
                                f"{type(exc).__name__}: {exc}"}

        check("models", lambda: f"{len(self.model_versions)} models loaded "
                                f"({len(self.models.groups)} propensity scoring group(s))")

        def features() -> str:
            reader = self.features
            try:
                reader.ping()
            except Exception as exc:
                raise Unavailable(f"feature service {self.catalog.feature_service}: {exc}") from None
            return f"feature service {self.catalog.feature_service} ({len(reader.fields)} features) readable"

        check("feature_store", features)

        def policy() -> str:
            self.policy.ping()
            return type(self.policy).__name__

        check("policy_store", policy)
        check("decision_log", lambda: f"{self.log.path} ({self.log.count()} decisions)")
        if self._events is not None:
            check("event_log", lambda: f"{self.events.log.path} ({self.events.log.count()} events)")
        return {"ready": all(c["ok"] for c in checks.values()), "checks": checks,
                "catalog_version": self.catalog.version, "bundle": self.bundle}

    @property
    def triggering(self) -> Any:
        return self._triggering.get()

    def on_events(self, stored_events: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """The triggers on stored events (`POST /events`): what fired, with the decisions started."""
        return self.triggering.on_events(stored_events)

    # --- requests ------------------------------------------------------------------------

    def check(self, req: DecisionRequest) -> None:
        """Reject what cannot be decided, naming the field, the value and what was expected."""
        if req.channel not in self._channel_index and req.channel != BEST:
            raise RequestError(f"channel '{req.channel}' is not a channel of the catalog; expected one of "
                               f"{', '.join(self.catalog.channel_names)} or '{BEST}'", field="channel")
        for c in req.channels or ():
            if c not in self._channel_index:
                raise RequestError(f"channels: '{c}' is not a channel of the catalog; expected some of "
                                   f"{', '.join(self.catalog.channel_names)}", field="channels")
        for a in req.actions or ():
            if a not in self._action_index:
                raise RequestError(f"actions: '{a}' is not an action of the catalog; expected some of "
                                   f"{', '.join(self.catalog.action_ids)}", field="actions")
        if req.k is not None and not 1 <= req.k <= self.catalog.max_k:
            raise RequestError(f"k = {req.k} is out of range; expected 1 to {self.catalog.max_k}", field="k")
        if req.timestamp is not None and not (isinstance(req.timestamp, int | float) and math.isfinite(req.timestamp)):
            raise RequestError(f"timestamp {req.timestamp!r} is not a time", field="timestamp")
        numbers = self._number_features()
        for key, value in req.context.items():
            if key not in self.catalog.feature_names:
                raise RequestError(f"context key '{key}' is not a feature of {self.catalog.feature_service}; "
                                   "context values override features of the same name", field=f"context.{key}")
            if key in numbers:
                if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                    raise RequestError(f"context.{key} = {value!r}: expected a number", field=f"context.{key}")
            elif not isinstance(value, str):
                raise RequestError(f"context.{key} = {value!r}: expected a string", field=f"context.{key}")

    def _number_features(self) -> set[str]:
        if self._numbers is None:
            self._numbers = {f.name for f in self.features.fields if f.kind == "number"}
        return self._numbers

    def _env(self, cols: Mapping[str, list[Any]], n: int, contexts: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        """The core's environment: scalars for one customer, arrays for several."""
        numbers = self._number_features()
        env: dict[str, Any] = {}
        for name, values in cols.items():
            if name == schemas.ENTITY_KEY:
                continue
            overrides = [(i, ctx[name]) for i, ctx in enumerate(contexts) if name in ctx]
            if overrides:
                values = list(values)
                for i, v in overrides:
                    values[i] = v
            if n == 1:
                v = values[0]
                env[name] = (np.nan if v is None else float(v)) if name in numbers else v
            elif name in numbers:
                env[name] = np.asarray(values, dtype=np.float64)
            else:
                env[name] = np.asarray(values, dtype=object)
        return env

    def _fill_defaults(self, cols: dict[str, list[Any]], missing: Sequence[int]) -> None:
        defaults = self.catalog.missing_features.defaults
        for i in missing:
            for name, value in defaults.items():
                cols[name][i] = value
        # the streaming features of a customer without events: their defaults, known or not
        for name in getattr(self.features, "event_names", ()):
            if name in defaults and name in cols:
                values = cols[name]
                if None in values:
                    d = defaults[name]
                    cols[name] = [d if v is None else v for v in values]

    def environment(self, ids: Sequence[int], cols: dict[str, list[Any]], found: Sequence[bool],
                    contexts: Sequence[Mapping[str, Any]] | None = None, *,
                    prefs: Sequence[Any] | None = None) -> tuple[dict[str, Any], list[int]]:
        """Features (the defaults where a customer has none) and scores of n customers: what
        rules, triggers and the core read. Returns it and the rows without features. `prefs`:
        the customers' preferences when the caller has read them (else read here)."""
        n = len(ids)
        missing = [i for i, f in enumerate(found) if not f]
        if missing and self.catalog.missing_features.mode == "reject":
            raise RequestError(f"customer {ids[missing[0]]} has no online features in "
                               f"{self.catalog.feature_service}", field="customer_id", status=404)
        self._fill_defaults(cols, missing)
        from nba.preferences import consent_feature

        for i, p in enumerate(prefs if prefs is not None else self.customer_preferences(ids)):  # their consent wins
            if p is None:
                continue
            for c, ok in p.consent.items():
                if consent_feature(c) in cols:
                    cols[consent_feature(c)] = list(cols[consent_feature(c)])
                    cols[consent_feature(c)][i] = int(ok)
        env = self._env(cols, n, contexts or ())
        scores = self.models.score(env, n)
        env.update({name: (float(v[0]) if n == 1 else v) for name, v in scores.items()})
        return env, missing

    def run_core(self, ids: Sequence[int], channel: np.ndarray, now: np.ndarray, cols: dict[str, list[Any]],
                 found: Sequence[bool], k: int, contexts: Sequence[Mapping[str, Any]] | None = None, *,
                 decision_ids: Sequence[str] | None = None
                 ) -> tuple[core.Decisions, dict[str, Any], list[int], list[str]]:
        """Features -> scores -> contact history -> the core, for n customers. Returns the
        decisions, the environment they were made on, the rows without features (filled with
        the defaults) and the decision ids (new ones unless a batch gives its own)."""
        env, missing = self.environment(ids, cols, found, contexts)
        d, dids, _ = self.decide_env(ids, channel, now, env, k, decision_ids=decision_ids)
        return d, env, missing, dids

    def decide_env(self, ids: Sequence[int], channel: np.ndarray, now: np.ndarray, env: Mapping[str, Any], k: int, *,
             allow: np.ndarray | None = None, propose: np.ndarray | None = None,
             prefs: Sequence[Any] | None = None, decision_ids: Sequence[str] | None = None,
             versions_out: dict[int, int] | None = None) -> tuple[core.Decisions, list[str], Any]:
        """Contact history -> the core, on an environment. With `allow` ((n, C) bool) the core
        chooses each decision's channel among the allowed ones: `channel` is set to the chosen
        ones and the choice is returned (else None); `propose` ((n, A) bool) limits the actions
        (a trigger's); `prefs` the customers' preferences when already read; `versions_out`
        receives the contact-state versions the history was read at (for `policy.reserve`).
        Returns the decisions, their ids and the choice."""
        from nba.preferences import to_arrays

        n = len(ids)
        if prefs is None:
            prefs = self.customer_preferences(ids)  # the customer's own frequency limits widen the history read
        window_s = max([self.window_s, *(days * 86400.0 for p in prefs if p is not None
                                         for _, days in p.frequency.values())])
        try:
            raw = self.policy.history(ids, float(np.min(now)) - window_s)
        except NbaError as exc:
            raise Unavailable(str(exc)) from None
        if versions_out is not None:
            versions_out.update(raw.versions)
        dids = new_decision_ids(n) if decision_ids is None else list(decision_ids)
        if len(dids) != n:
            raise ValueError(f"{len(dids)} decision ids for {n} customers")
        common: dict[str, Any] = dict(now=now, history=to_history(self.catalog, raw), scorer=self.models,
                                      customer_ids=np.asarray(ids, dtype=np.int64),
                                      decision_keys=decision_keys(dids), k=k, propose=propose,
                                      preferences=to_arrays(self.catalog, prefs, now))
        if allow is None:
            return core.decide(self.catalog, env, n, channel=channel, **common), dids, None
        from nba.decisioning.channels import decide_channels

        d, choice = decide_channels(self.catalog, env, n, channels=allow, **common)
        channel[:] = choice.chosen
        return d, dids, choice

    def decide(self, requests: Sequence[DecisionRequest], *, source: str = "api",
               preview: bool = False) -> list[dict[str, Any]]:
        """Decide for each request (validated first); log every decision durably, then count
        the shown actions as contacts. Returns the decision responses.

        `preview`: the same decisions, neither logged nor counted as contacts (no outcome can
        be reported against them: their `decision_id` is None, `preview` true)."""
        return self.begin_decide(requests, source=source, preview=preview)()

    def begin_decide(self, requests: Sequence[DecisionRequest], *, source: str = "api",
                     preview: bool = False) -> Callable[[], list[dict[str, Any]]]:
        """`decide` up to the log: the decisions are made and their contacts reserved; the
        function returned appends them to the log (the commit) and returns the responses. A
        caller may decide the next requests while that commit is in flight (the service's
        decider thread: `nba.serving.batching`); nobody sees a response before its commit.
        Raises what `decide` raises before the log (a refused request: nothing reserved)."""
        t0 = time.perf_counter()
        for r in requests:
            self.check(r)
        ids = [int(r.customer_id) for r in requests]
        if not preview and len(set(ids)) < len(ids):
            # a customer twice in one call: decided one after the other (in waves of distinct
            # customers), so the second decision sees the first one's contact and no cap is
            # exceeded within the call
            seen: dict[int, int] = {}
            wave = []  # which occurrence of its customer each request is
            for c in ids:
                wave.append(seen.get(c, 0))
                seen[c] = wave[-1] + 1
            out: list[dict[str, Any] | None] = [None] * len(ids)
            for w in range(max(wave) + 1):
                at = [i for i, x in enumerate(wave) if x == w]
                for i, resp in zip(at, self.decide([requests[i] for i in at], source=source), strict=True):
                    out[i] = resp
            return lambda: out  # type: ignore[return-value]  # each wave logged before the next
        now = np.array([r.timestamp if r.timestamp is not None else _now() for r in requests], dtype=np.float64)
        try:
            cols, found = self.features.read(ids, [int(t) for t in now])
        except NbaError as exc:
            raise Unavailable(str(exc)) from None
        return self.begin_decide_read(requests, now, cols, found, source=source, t0=t0, preview=preview)

    def decide_read(self, requests: Sequence[DecisionRequest], now: np.ndarray, cols: dict[str, list[Any]],
                    found: Sequence[bool], *, source: str = "api",
                    prepared: tuple[dict[str, Any], list[int]] | None = None,
                    preview: bool = False, decision_ids: Sequence[str] | None = None) -> list[dict[str, Any]]:
        """`decide` once the features are read (a trigger has read them to evaluate its
        condition); `decision_ids` the decisions' ids when the caller derives them (a trigger's)."""
        return self.begin_decide_read(requests, now, cols, found, source=source, prepared=prepared, preview=preview,
                                      decision_ids=decision_ids)()

    def begin_decide_read(self, requests: Sequence[DecisionRequest], now: np.ndarray, cols: dict[str, list[Any]],
                          found: Sequence[bool], *, source: str = "api", t0: float | None = None,
                          prepared: tuple[dict[str, Any], list[int]] | None = None, preview: bool = False,
                          decision_ids: Sequence[str] | None = None) -> Callable[[], list[dict[str, Any]]]:
        """`decide_read` up to the log, as `begin_decide` is `decide`'s."""
        t0 = time.perf_counter() if t0 is None else t0
        n = len(requests)
        ids = [int(r.customer_id) for r in requests]
        self.refuse_erased(ids, found)
        t_features = time.perf_counter()
        channel = np.array([self._channel_index.get(r.channel, 0) for r in requests], dtype=np.int64)
        k = max(r.k or self.catalog.default_k for r in requests)
        allow = propose = None
        if any(r.chooses for r in requests):
            allow = np.zeros((n, len(self.catalog.channels)), dtype=bool)
            outbound = np.array([c.direction == "outbound" for c in self.catalog.channels])
            for i, r in enumerate(requests):
                if r.channels:
                    allow[i, [self._channel_index[c] for c in r.channels]] = True
                elif r.channel == BEST:
                    allow[i] = outbound
                else:
                    allow[i, channel[i]] = True
        if any(r.actions is not None for r in requests):
            propose = np.ones((n, len(self.catalog.actions)), dtype=bool)
            for i, r in enumerate(requests):
                if r.actions is not None:
                    propose[i] = False
                    propose[i, [self._action_index[a] for a in r.actions]] = True
        prefs = self.customer_preferences(ids)  # read once: the consent overrides and the core's arrays
        env, missing = prepared or self.environment(ids, cols, found, [r.context for r in requests], prefs=prefs)
        kr = np.array([r.k or self.catalog.default_k for r in requests], dtype=np.int64)
        fm = np.zeros(n, dtype=np.int64)
        fm[missing] = 1
        cust = np.asarray(ids, dtype=np.int64)
        deliver = np.array([bool(r.deliver) for r in requests], dtype=bool)
        asked = channel.copy()
        # Check and record are one atomic step (`policy.reserve`): a decision whose customers'
        # contact state moved on while it was decided (another worker or replica contacted
        # them) is decided again on the new history, so no cap is exceeded under concurrency.
        for _attempt in range(RESERVE_ATTEMPTS):
            versions: dict[int, int] = {}
            channel[:] = asked
            d, dids, choice = self.decide_env(ids, channel, now, env, k, allow=allow, propose=propose, prefs=prefs,
                                              versions_out=versions, decision_ids=decision_ids)
            t_decide = time.perf_counter()
            tables = decision_tables(self.catalog, d, decision_ids=dids, customer_ids=cust,
                                     channel=channel, now=now, features_missing=fm, k=kr, source=source, env=env,
                                     model_versions=self.model_versions, deliver=deliver)
            if preview:
                break
            shown = contacts(self.catalog, d, decision_ids=dids, customer_ids=cust, channel=channel, now=now, k=kr)
            try:
                if self.policy.reserve(shown, versions):
                    break
            except NbaError as exc:
                raise Unavailable(str(exc)) from None
        else:
            raise Unavailable(f"the contact state of customer(s) {sorted(set(ids))[:5]} kept changing under "
                              f"{RESERVE_ATTEMPTS} concurrent decisions: retry")
        t_policy = time.perf_counter()
        responses = self._responses(d, tables, kr)
        if choice is not None:
            from nba.decisioning.channels import channel_reason

            for i, (resp, r) in enumerate(zip(responses, requests, strict=True)):
                if r.chooses:
                    resp["channel_reason"] = channel_reason(self.catalog, choice, i)
        for resp, r in zip(responses, requests, strict=True):
            if r.trigger_id is not None:
                resp["trigger_id"] = r.trigger_id
                resp["event_id"] = r.event_id
            resp["deliver"] = bool(r.deliver)
        if preview:
            for resp in responses:
                resp["decision_id"] = None
                resp["preview"] = True
        if deliver.any():  # what was put in the outbox (a trigger's answer names it)
            sent = {}
            if tables.outbox is not None:
                out = tables.outbox
                sent = {did: {"idempotency_key": key, "channel": ch, "action_id": a, "state": "pending"}
                        for did, key, ch, a in zip(out.pylist("decision_id"), out.pylist("idempotency_key"),
                                                   out.pylist("channel"), out.pylist("action_id"), strict=True)}
            for resp, flag in zip(responses, deliver.tolist(), strict=True):
                if flag:
                    resp["outbox"] = sent.get(resp["decision_id"])  # None: nothing to send
        t_ready = time.perf_counter()

        def commit() -> list[dict[str, Any]]:
            t_log = time.perf_counter()
            if not preview:
                try:
                    self.log.append(tables)
                except NotWritten as exc:
                    with contextlib.suppress(Exception):  # not logged: not a contact (the error says why)
                        self.policy.release(self._unlogged(shown, exc))
                    raise
                # any other failure (a commit cut short) may have logged it: the contact stays
                # counted, so a cap errs on the safe side
            t_end = time.perf_counter()
            timing = {"features_ms": round((t_features - t0) * 1e3, 3),
                      "decide_ms": round((t_decide - t_features) * 1e3, 3),
                      "policy_ms": round((t_policy - t_decide) * 1e3, 3), "log_ms": round((t_end - t_log) * 1e3, 3),
                      # the engine's own time; the wait for a commit thread is beside it
                      "total_ms": round((t_ready - t0 + t_end - t_log) * 1e3, 3),
                      "commit_wait_ms": round((t_log - t_ready) * 1e3, 3),
                      "batch": n}  # decided together with batch - 1 others
            for resp in responses:
                resp["timing"] = timing
            return responses

        return commit

    def _unlogged(self, shown: list[tuple], exc: NotWritten) -> list[tuple]:
        """The contacts to give back after an append that wrote nothing: all of them, except,
        when another process logged the same decision ids first (`AlreadyLogged`: a trigger's
        derived ids), those of the actions its decision showed: a contact is one entry per
        customer, decision and action, so that entry is the other decision's, and stays."""
        from nba.stores.decisions import AlreadyLogged

        if not isinstance(exc, AlreadyLogged):
            return shown
        theirs = {(str(d), str(a)) for d, a, rank in self.log.select(
            exc.decision_ids, ("decision_id", "action_id", "rank"), record=records.CANDIDATE) if rank > 0}
        return [c for c in shown if (str(c[5]), str(c[1])) not in theirs]

    def _responses(self, d: core.Decisions, tables: DecisionTables, k: np.ndarray) -> list[dict[str, Any]]:
        """The decision responses: the logged decision rows, their ranked actions with the
        reasons, and their filtered rows as logged."""
        cat = self.catalog
        dec = tables.decisions
        cols = {c: dec.pylist(c) for c in ("decision_id", schemas.ENTITY_KEY, "channel", "decided_at",
                                           "experiment_group", "features_missing", "probability", "n_candidates")}
        filt = tables.filtered
        frows = filt.values["decision_id"].codes
        bounds = frows.searchsorted(np.arange(dec.n + 1)).tolist()
        fa, fs, fr = filt.pylist("action_id"), filt.pylist("stage"), filt.pylist("rule")
        cold = getattr(self.models, "cold_start", None)
        out = []
        for i in range(dec.n):
            group = cols["experiment_group"][i]
            shown = int(d.shown[i])
            n_cand = cols["n_candidates"][i]
            actions = []
            for rank, j in enumerate((int(j) for j in d.ranked[i][:int(k[i])] if j >= 0), start=1):
                a = cat.actions[j]
                p, v, lev, pri, u = (float(d.propensity[i, j]), float(d.value[i, j]), float(d.lever[j]),
                                     float(d.priority[i, j]), float(d.uplift[i, j]))
                if rank == 1 and group != "nba" and shown != int(d.greedy[i]):
                    reason = (f"{'exploration' if group == 'explore' else 'hold-out (random treatment)'}: drawn "
                              f"uniformly among {n_cand} eligible actions")
                elif cat.priority.text == "propensity * value * (1 + lever)":
                    reason = f"P {p:.4f} x V {v:.2f} x (1 + L {lev:g}) = {pri:.4f}; rank {rank} of {n_cand} candidates"
                else:
                    reason = f"priority {pri:.4f} = {cat.priority.text}; rank {rank} of {n_cand} candidates"
                if cold is not None and cold.cold[j]:
                    reason += (f" (cold start: no model yet, P is the mean of its Beta({cold.alpha[j]:.1f}, "
                               f"{cold.beta[j]:.1f}) posterior pooled over {a.issue} / {a.group}; Thompson sampling "
                               "explores it)")
                actions.append({"rank": rank, "action_id": a.id, "name": a.name, "issue": a.issue, "group": a.group,
                                "propensity": p, "value": v, "lever": lev, "priority": pri,
                                "uplift": None if math.isnan(u) else u, "reason": reason})
            lo, hi = bounds[i], bounds[i + 1]
            filtered = [{"action_id": a, "stage": st, "rule": ru}
                        for a, st, ru in zip(fa[lo:hi], fs[lo:hi], fr[lo:hi], strict=True)]
            out.append({
                "decision_id": cols["decision_id"][i], "customer_id": cols[schemas.ENTITY_KEY][i],
                "channel": cols["channel"][i], "decided_at": iso(cols["decided_at"][i]), "experiment_group": group,
                "features_missing": bool(cols["features_missing"][i]), "probability": cols["probability"][i],
                "actions": actions, "filtered": filtered,
                "versions": {"catalog": cat.version, "bundle": self.bundle, "models": self.model_versions},
            })
        return out

    # --- events ------------------------------------------------------------------------

    def ingest(self, payload: Any, *, now: float | None = None) -> IngestResult:
        """The one ingest-and-trigger path of every event source (`POST /events`, `nba events
        ingest FILE`, `nba events consume`): validate, append durably, push the streaming
        features, then run the triggers on the events new to the log (`on_events`); their
        decisions and outbox messages are logged like any other. Returns the ingestion's
        `IngestResult` with `triggers` set. Raises `nba.events.EventError` (naming the field)
        before anything is stored if an event is bad, an `NbaError` when a store is down."""
        if not self.has_triggers:
            result: IngestResult = self.events.ingest(payload, now=now)
            return result
        # The new events are appended pending; their triggers run; they are marked triggered in
        # the next append's transaction (no commit of its own on the hot path). Killed in
        # between, an event stays pending: its next delivery, or `recover_triggers` at a
        # consumer's start, runs its triggers again, idempotently (`Triggering.on_events`).
        with self._ran_lock:
            ran, self._ran = self._ran, []
        try:
            result = self.events.ingest(payload, now=now, pending=True, triggered=ran)
        except BaseException:
            with self._ran_lock:
                self._ran[:0] = ran
            raise
        todo = [*result.stored, *result.untriggered]
        if todo:
            result.triggers = self.triggering.on_events(todo, again=[e["event_id"] for e in result.untriggered])
            with self._ran_lock:
                self._ran += [e["event_id"] for e in todo]
        return result

    def flush_triggered(self) -> int:
        """Mark the events whose triggers have run since the last append (at a clean stop)."""
        with self._ran_lock:
            ran, self._ran = self._ran, []
        return self.events.log.triggered(ran) if ran else 0

    def recover_triggers(self, *, older_than_s: float = 60.0, now: float | None = None,
                         limit: int = 10_000) -> tuple[int, list[dict[str, Any]]]:
        """Run the triggers of the events left pending (stored, then the process was killed
        before their triggers ran or were marked) more than `older_than_s` ago; idempotent (an
        event's decision made before the kill is not made again). What `nba events consume`
        does when it starts. Returns how many events were pending, and what fired on them."""
        if not self.has_triggers:
            return 0, []
        self.flush_triggered()
        cutoff = (time.time() if now is None else now) - older_than_s
        out: list[dict[str, Any]] = []
        n = 0
        while True:
            left = self.events.log.pending(before=cutoff, limit=limit)
            if not left:
                return n, out
            n += len(left)
            out += self.triggering.on_events(left, again=[e["event_id"] for e in left])
            self.events.log.triggered([e["event_id"] for e in left])

    def ingest_events(self, payload: Any, *, now: float | None = None) -> dict[str, Any]:
        """`ingest` as the service answers it: the counts, the duplicates, the unknown
        customers, the features updated and what the triggers did; a bad event is a
        `RequestError` (400), a store that is down `Unavailable` (503)."""
        from nba.events import EventError

        try:
            result = self.ingest(payload, now=now)
        except EventError as exc:
            raise RequestError(str(exc), field=exc.field) from None
        except (RequestError, Unavailable):
            raise
        except NbaError as exc:  # the event log or the online store is down
            raise Unavailable(str(exc)) from None
        out: dict[str, Any] = result.response()
        return out

    def respond(self, decision_id: str, action_id: str, outcome: str, value: float = 0.0,
                timestamp: float | None = None, *, opt_out: bool = False) -> dict[str, Any]:
        """Record an outcome once (idempotent on decision and action); a rejection starts the
        action's cool-down for the customer; an acceptance of a product sets its holding flag
        at once (the action's `holds`), so the next decision does not offer it again;
        `opt_out` withdraws the consent of the decision's channel (a `consent_changed` event)."""
        if outcome not in records.OUTCOME_KINDS:
            raise RequestError(f"outcome '{outcome}' is not one of {', '.join(records.OUTCOME_KINDS)}",
                               field="outcome")
        if action_id != records.NO_ACTION and action_id not in self._action_index:
            raise RequestError(f"action_id '{action_id}' is not an action of the catalog (or "
                               f"'{records.NO_ACTION}'); expected one of {', '.join(self.catalog.action_ids)}",
                               field="action_id")
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
            raise RequestError(f"value {value!r} is not an amount >= 0", field="value")
        ts = float(timestamp) if timestamp is not None else _now()
        try:
            res = self.log.append_outcome(decision_id, action_id, outcome, float(value), ts)
        except UnknownDecision as exc:
            raise RequestError(str(exc), field="decision_id", status=404) from None
        if res.outcome == "rejected":
            # also on a duplicate: the first report may have been logged before the state update failed
            try:
                self.policy.record_rejection(res.customer_id, action_id, res.responded_at, decision_id)
            except NbaError as exc:
                raise Unavailable(str(exc)) from None
        holding = None
        if res.outcome == "accepted" and action_id in self._action_index and self._events is not None:
            holds = self.catalog.actions[self._action_index[action_id]].holds
            if holds:  # also on a duplicate (idempotent): the first report may have failed to push
                try:
                    self.events.set_holding(res.customer_id, holds, res.responded_at)
                except NbaError as exc:
                    raise Unavailable(str(exc)) from None
                holding = holds
        opted_out = None
        if opt_out:
            event = {"event_id": f"opt-out:{decision_id}", "customer_id": res.customer_id, "type": "consent_changed",
                     "timestamp": min(ts, _now()), "properties": {"channel": res.channel, "granted": False}}
            self.ingest_events(event)
            opted_out = res.channel
        return {"decision_id": decision_id, "action_id": action_id, "outcome": res.outcome, "value": res.value,
                "recorded": res.recorded, "duplicate": not res.recorded, "responded_at": iso(res.responded_at),
                "customer_id": res.customer_id, "holding_set": holding, "opted_out": opted_out}

