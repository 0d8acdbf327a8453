"""Callers are known, and the OpenAPI tells the truth: API keys with scopes (hashed, from the
environment or a secret file), 401/403 with reasons, body limits (413), unsupported media
types (415), per-key token buckets (429 with Retry-After; in memory, and in Redis db 11 shared
by replicas), a non-loopback bind without keys refused, and a short schemathesis run against
the real served service with every check (benchmarks/bench_fuzz.py runs 10,000 and more)."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import urllib.error
import urllib.request
import uuid

import pytest

from nba.errors import ConfigError
from nba.serving.auth import Caller, check_bind, hash_key, load_keyring, new_key
from nba.serving.gate import rewrite_validation, route_of
from nba.settings import Settings
from nba.stores.ratelimit.memory import MemoryRateLimiter
from tests.serving_env import DECISION_TIME, build_served_bank, start_server

REDIS_URL = "redis://127.0.0.1:6379/11"
CHANNELS = ("email", "sms", "push", "call_centre", "web", "agent")
EVERY_SCOPE = ["decide:*", "respond", "events", "customers", "admin"]


# --- keys, scopes, buckets (no server) -----------------------------------------------------


def test_a_key_is_stored_hashed_and_only_the_key_itself_authenticates():
    key, entry = new_key("web-shop", ["decide:web", "respond"])
    assert key.startswith("nba_web-shop_") and len(key) == len("nba_web-shop_") + 64
    assert key not in json.dumps(entry) and entry["hash"].startswith("sha256$")
    ring = load_keyring(Settings(api_keys=json.dumps([entry])))
    caller = ring.authenticate(key)
    assert caller == Caller("web-shop", frozenset({"web"}), frozenset({"respond"}))
    assert ring.authenticate(key[:-1] + ("0" if key[-1] != "0" else "1")) is None  # one character off
    assert ring.authenticate(key.replace("web-shop", "other")) is None  # another id, same secret
    assert ring.authenticate("nba_web-shop") is None
    # the same key hashed with another salt is another stored form; both verify it
    assert hash_key(key) != hash_key(key) and hash_key(key, b"s").split("$")[2] != hash_key(key, b"t").split("$")[2]


def test_keys_come_from_the_environment_and_a_secret_file_and_are_checked(tmp_path):
    k1, e1 = new_key("web", ["decide:web"])
    k2, e2 = new_key("ops", ["admin"], rate=2, burst=3)
    secret = tmp_path / "keys.yaml"
    secret.write_text(f"keys:\n  - {json.dumps(e2)}\n")
    ring = load_keyring(Settings(api_keys=json.dumps([e1]), api_keys_file=secret, admin_token="legacy"),
                        CHANNELS)
    assert len(ring) == 2 and ring.keyed
    assert ring.authenticate(k1).id == "web" and ring.authenticate(k2).may("customers")  # admin reads too
    assert ring.bucket(ring.authenticate(k2)) == (2.0, 3) and ring.bucket(ring.authenticate(k1)) == (50.0, 100)
    legacy = ring.authenticate("legacy")  # NBA_ADMIN_TOKEN: the admin scope only
    assert legacy.id == "admin-token" and legacy.may("admin") and not legacy.may("respond") and legacy.channels == set()
    assert not load_keyring(Settings(admin_token="legacy")).keyed  # a token alone keeps the service key-free

    bad = [({**e1, "scopes": ["decide:fax"]}, "scope 'decide:fax': 'fax' is not a channel of the catalog"),
           ({**e1, "scopes": ["delete"]}, "scope 'delete' is unknown"),
           ({**e1, "hash": "md5$00$00"}, "expected sha256$<salt hex>$<digest hex>"),
           ({**e1, "id": "a b"}, "id = 'a b'"),
           ({**e1, "colour": 1}, "unknown key(s) colour"),
           ({**e1, "rate": 0}, "rate = 0")]
    for entry, fragment in bad:
        with pytest.raises(ConfigError) as exc:
            load_keyring(Settings(api_keys=json.dumps([entry])), CHANNELS)
        assert fragment in str(exc.value) and "NBA_API_KEYS[0]" in str(exc.value)
    with pytest.raises(ConfigError, match="given twice"):
        load_keyring(Settings(api_keys=json.dumps([e1, e1])))
    secret.write_text("keys: {}\n")
    with pytest.raises(ConfigError, match=f"NBA_API_KEYS_FILE {secret}: expected one top-level `keys:` list"):
        load_keyring(Settings(api_keys_file=secret))


def test_a_non_loopback_bind_without_keys_is_refused_at_start(tmp_path):
    from nba.serving.run import start

    bare = Settings(home=tmp_path, work_dir=tmp_path / "var")
    for host in ("127.0.0.1", "localhost", "::1", "127.0.0.2"):
        check_bind(bare, host)
    with pytest.raises(ConfigError) as exc:
        start(bare, host="0.0.0.0", port=1)  # refused before a process is started or the bundle read
    message = str(exc.value)
    assert "\n" not in message and message.startswith("refusing to serve on 0.0.0.0: no API keys are set")
    _, entry = new_key("ops", ["admin"])
    check_bind(bare.model_copy(update={"api_keys": json.dumps([entry])}), "0.0.0.0")


def test_the_memory_bucket_refills_at_its_rate():
    now = [100.0]
    limiter = MemoryRateLimiter(clock=lambda: now[0])
    assert [limiter.take_now("k", 2.0, 3) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.take_now("k", 2.0, 3) == pytest.approx(0.5)  # empty: one token in half a second
    assert limiter.take_now("other", 2.0, 3) == 0.0  # buckets are per key
    now[0] += 0.5
    assert limiter.take_now("k", 2.0, 3) == 0.0
    now[0] += 10  # never more than the burst
    assert [limiter.take_now("k", 2.0, 3) for _ in range(4)][-1] > 0


def test_the_redis_bucket_is_shared_by_replicas():
    """Two limiters (two replicas) on one Redis: one bucket; 5 tokens in all, whichever asks."""
    from nba.stores.ratelimit.redis import RedisRateLimiter

    prefix = f"nba-test-{uuid.uuid4().hex[:8]}:ratelimit"
    a, b = RedisRateLimiter(REDIS_URL, prefix=prefix), RedisRateLimiter(REDIS_URL, prefix=prefix)

    async def run() -> list[float]:
        try:
            waits = [await (a if i % 2 else b).take("key", 0.5, 5) for i in range(7)]
            await a.clear()
            return waits
        finally:
            await a._client.aclose()
            await b._client.aclose()

    waits = asyncio.run(run())
    assert waits[:5] == [0.0] * 5
    assert 1.5 < waits[5] <= 2.0 and 1.5 < waits[6] <= 2.0  # 0.5 tokens/s: about 2 s for the next


def test_routes_and_the_validation_shape():
    assert route_of("/decide", "POST").kind == "decide" and route_of("/decide", "GET") is None
    assert route_of("/customers/7", "DELETE").scope == "admin"
    assert route_of("/customers/7/preferences", "PUT").scope == "admin"
    assert route_of("/customers/7/preferences", "GET").scope == "customers"
    assert route_of("/healthz", "GET") is None and route_of("/readyz", "GET") is None
    shaped = rewrite_validation({"error": "1 validation error for Input", "detail": [
        {"type": "greater_than_equal", "loc": ["requests", 3, "customer_id"], "msg": "Input should be >= 0"}]})
    assert shaped["field"] == "requests.3.customer_id"
    assert shaped["error"] == "requests.3.customer_id: Input should be >= 0 (greater_than_equal)"
    assert rewrite_validation([{"error": "bad"}]) == {"error": "bad", "field": None}


def test_a_fault_behind_the_gate_is_a_500_at_once_with_the_traceback_logged(monkeypatch, caplog):
    """An exception no layer answered (the fuzzer's 60 s hang: BentoML waited for its request
    timeout) is answered 500 at once, in the service's error shape; a fault after the answer
    started is raised on (the server breaks that connection)."""
    from types import SimpleNamespace

    from nba.serving import gate

    key, entry = new_key("ops", EVERY_SCOPE)
    settings = Settings(api_keys=json.dumps([entry]))
    monkeypatch.setattr(gate, "_service", lambda: SimpleNamespace(  # the worker's service instance, as built
        keyring=load_keyring(settings), limiter=MemoryRateLimiter(), keyring_settings=settings))

    async def failing(scope, receive, send):
        await receive()
        raise ValueError("max() arg is an empty sequence")

    async def half(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        raise ValueError("after the start")

    def run(app):
        sent = []
        body = json.dumps({"customer_id": 1, "type": "app_login"}).encode()
        scope = {"type": "http", "method": "POST", "path": "/events", "client": ("127.0.0.1", 1),
                 "headers": [(b"authorization", f"Bearer {key}".encode()), (b"content-type", b"application/json")]}

        async def receive():
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message):
            sent.append(message)

        asyncio.run(asyncio.wait_for(gate.Gate(app)(scope, receive, send), 5))
        return sent

    with caplog.at_level("ERROR", logger="nba.serving.gate"):
        sent = run(failing)
    assert sent[0]["status"] == 500
    out = json.loads(sent[1]["body"])
    assert out["field"] is None and "POST /events failed inside the service" in out["error"]
    assert "max() arg is an empty sequence" in caplog.text  # the traceback, in the log only
    assert "empty sequence" not in out["error"]
    with pytest.raises(ValueError, match="after the start"):
        run(half)


# --- the served service -------------------------------------------------------------------



@pytest.fixture(scope="module")
def keys() -> dict[str, tuple[str, dict]]:
    return {"web": new_key("web", ["decide:web", "decide:agent"]),
            "outbound": new_key("outbound", ["decide:email", "decide:sms", "decide:push", "decide:call_centre",
                                             "respond"]),
            "slow": new_key("slow", ["decide:*"], rate=0.2, burst=2),
            "ops": new_key("ops", ["admin"]),
            "fuzz": new_key("fuzz", EVERY_SCOPE, rate=100_000, burst=100_000)}


@pytest.fixture(scope="module")
def served(feature_env: Settings, tmp_path_factory) -> Settings:
    return build_served_bank(feature_env, tmp_path_factory.mktemp("keys_bank"))


@pytest.fixture(scope="module")
def server(served: Settings, keys, tmp_path_factory):
    env = {"NBA_API_KEYS": json.dumps([e for _, e in keys.values()]), "NBA_MAX_BODY_BYTES": "4096"}
    srv = start_server(served, tmp_path_factory.mktemp("keys_logs") / "server.log", workers=1, extra_env=env)
    yield srv
    srv.stop()


def _call(url: str, path: str, body: object = None, *, key: str | None = None, header: str = "authorization",
          raw: bytes | None = None, ctype: str = "application/json", method: str | None = None
          ) -> tuple[int, dict, object]:
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    headers = {"Content-Type": ctype} if data is not None else {}
    if key is not None:
        headers["Authorization" if header == "authorization" else "X-API-Key"] = (
            f"Bearer {key}" if header == "authorization" else key)
    req = urllib.request.Request(url + path, data=data, headers=headers,
                                 method=method or ("POST" if data is not None else "GET"))
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, dict(resp.headers), json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), json.loads(exc.read() or b"null")


def _decisions(settings: Settings) -> int:
    path = settings.decision_log_dir / "log.db"
    if not path.is_file():
        return 0
    conn = sqlite3.connect(path)
    try:
        return conn.execute("SELECT count(*) FROM decisions").fetchone()[0]
    finally:
        conn.close()


WEB = {"customer_id": 11, "channel": "web", "timestamp": DECISION_TIME}


@pytest.mark.slow
@pytest.mark.integration
def test_a_call_without_a_known_key_is_401_and_writes_nothing(server, served, keys):
    before = _decisions(served)
    status, headers, body = _call(server.url, "/decide", WEB)
    assert status == 401 and headers["www-authenticate"] == "Bearer"
    assert body == {"error": "an API key is needed: Authorization: Bearer <key> (or X-API-Key: <key>)",
                    "field": "authorization"}
    status, _, body = _call(server.url, "/decide", WEB, key="nba_web_" + "0" * 64)
    assert status == 401 and body["error"] == "the API key is not known to this service"
    status, _, body = _call(server.url, "/respond", {"decision_id": "x", "action_id": "mortgage",
                                                      "outcome": "accepted"}, key="not-a-key")
    assert status == 401
    assert _decisions(served) == before
    # health, readiness and the OpenAPI page need no key
    assert _call(server.url, "/readyz")[0] == 200 and _call(server.url, "/docs.json")[0] == 200


@pytest.mark.slow
@pytest.mark.integration
def test_scopes_the_channels_respond_and_admin(server, served, keys):
    web, outbound, ops = keys["web"][0], keys["outbound"][0], keys["ops"][0]
    status, _, d = _call(server.url, "/decide", WEB, key=web)
    assert status == 200 and d["channel"] == "web"
    status, _, d2 = _call(server.url, "/decide", WEB, key=web, header="x-api-key")
    assert status == 200
    before = _decisions(served)
    status, _, body = _call(server.url, "/decide", {**WEB, "channel": "email"}, key=web)
    assert status == 403 and body == {"error": "key 'web' may not decide for email (its channels: agent, web)",
                                      "field": "channel"}
    status, _, body = _call(server.url, "/decide_batch", {"requests": [WEB, {**WEB, "channel": "sms"}]}, key=web)
    assert status == 403 and "may not decide for sms" in body["error"]
    # best: the engine may choose any outbound channel, so the key needs them all
    status, _, body = _call(server.url, "/decide", {**WEB, "channel": "best"}, key=web)
    assert status == 403 and "call_centre, email, push, sms" in body["error"]
    assert _decisions(served) == before  # nothing of a refused call reached the engine
    status, _, best = _call(server.url, "/decide", {**WEB, "channel": "best"}, key=outbound)
    assert status == 200 and best["channel"] in ("email", "sms", "push", "call_centre")
    # respond: the web key lacks it, the outbound key has it
    outcome = {"decision_id": d["decision_id"], "action_id": d["actions"][0]["action_id"] if d["actions"]
               else "do_nothing", "outcome": "ignored"}
    status, _, body = _call(server.url, "/respond", outcome, key=web)
    assert status == 403 and body["error"] == "key 'web' lacks the scope 'respond' that POST /respond needs"
    status, _, r = _call(server.url, "/respond", outcome, key=outbound)
    assert status == 200 and r["recorded"] is True
    # the customer 360 is `customers` (admin has it); erasure is admin
    assert _call(server.url, "/customers/11", key=web)[0] == 403
    status, _, view = _call(server.url, "/customers/11", key=ops)
    assert status == 200 and view["customer_id"] == 11
    status, _, body = _call(server.url, "/customers/11", key=outbound, method="DELETE")
    assert status == 403 and "lacks the scope 'admin'" in body["error"]
    status, _, body = _call(server.url, "/events", {"customer_id": 11, "type": "app_login"}, key=outbound)
    assert status == 403 and "'events'" in body["error"]


@pytest.mark.slow
@pytest.mark.integration
def test_bodies_are_bounded_and_json(server, served, keys):
    fuzz = keys["fuzz"][0]
    big = {**WEB, "context": {"region": "x" * 5000}}
    before = _decisions(served)
    status, _, body = _call(server.url, "/decide", big, key=fuzz)
    assert status == 413 and body["limit"] == 4096 and body["field"] == "body"
    assert "over 4096 bytes, the limit of POST /decide (NBA_MAX_BODY_BYTES)" in body["error"]
    status, _, body = _call(server.url, "/decide", raw=b"x", key=fuzz, ctype="multipart/form-data")
    assert status == 415 and body == {"error": "Content-Type 'multipart/form-data' is not accepted: send "
                                               "application/json", "field": "content-type"}
    status, _, body = _call(server.url, "/respond", raw=b"x", key=fuzz, ctype="multipart/form-data; boundary=")
    assert status == 415
    # BentoML's own validation answers in the service's error shape, naming the field
    status, _, body = _call(server.url, "/decide", {**WEB, "customer_id": -3}, key=fuzz)
    assert status == 400 and body["field"] == "customer_id" and "greater_than_equal" in body["error"]
    status, _, body = _call(server.url, "/decide", {**WEB, "customer_id": 2**63}, key=fuzz)
    assert status == 400 and body["field"] == "customer_id"  # was a 500 (int64 overflow)
    status, _, body = _call(server.url, "/decide", {**WEB, "timestamp": "3818-12-18T23:53:22Z"}, key=fuzz)
    assert status == 400 and "the year 3818 is out of range" in body["error"]
    status, _, body = _call(server.url, "/decide", {**WEB, "context": {"age": True}}, key=fuzz)
    assert status == 400 and body["field"].startswith("context.age")
    status, _, d = _call(server.url, "/decide", {**WEB, "customer_id": 12.0, "k": 2.0}, key=fuzz)
    assert status == 200 and d["customer_id"] == 12  # 12.0 is an integer in JSON
    assert _decisions(served) == before + 1


@pytest.mark.slow
@pytest.mark.integration
def test_each_key_is_rate_limited(server, keys):
    slow = keys["slow"][0]
    answers = [_call(server.url, "/decide", WEB, key=slow) for _ in range(3)]
    assert [a[0] for a in answers[:2]] == [200, 200]
    status, headers, body = answers[2]
    assert status == 429 and int(headers["retry-after"]) in (4, 5)  # 0.2 tokens/s: 5 s for the next one
    assert body["retry_after"] == int(headers["retry-after"])
    assert body["error"].startswith("key 'slow' is over its rate limit (0.2 requests/s, bursts of 2)")
    assert _call(server.url, "/decide", WEB, key=keys["web"][0])[0] == 200  # other keys are unaffected


@pytest.mark.slow
@pytest.mark.integration
def test_the_openapi_document_is_exact(server, keys):
    status, _, spec = _call(server.url, "/docs.json")
    assert status == 200 and spec["openapi"] == "3.1.0"
    assert set(spec["paths"]) == {"/decide", "/decide_batch", "/respond", "/events", "/customers/{customer_id}",
                                  "/customers/{customer_id}/preferences", "/healthz", "/livez", "/readyz"}
    assert "/metrics" not in spec["paths"]  # served only with NBA_SERVE_METRICS=1
    schemas = spec["components"]["schemas"]
    req = schemas["DecideRequest"]["properties"]
    assert req["channel"]["enum"] == [*CHANNELS, "best"]
    assert req["k"]["anyOf"][0] == {"type": "integer", "minimum": 1, "maximum": 10}
    assert req["context"]["additionalProperties"] is False and req["context"]["properties"]["region"] == {
        "type": "string"}
    respond = spec["paths"]["/respond"]["post"]
    body = respond["requestBody"]["content"]["application/json"]["schema"]["properties"]
    assert body["outcome"]["enum"] == ["accepted", "rejected", "ignored"]
    assert "mortgage" in body["action_id"]["enum"] and "do_nothing" in body["action_id"]["enum"]
    assert set(respond["responses"]) == {"200", "400", "401", "403", "404", "413", "415", "429", "503"}
    assert respond["responses"]["429"]["headers"]["Retry-After"]["required"] is True
    assert respond["security"] == [{"bearer": []}, {"apiKey": []}]
    assert spec["components"]["securitySchemes"]["apiKey"] == {"type": "apiKey", "in": "header", "name": "X-API-Key",
                                                               "description": "an API key"}
    error = schemas["ErrorBody"]
    assert error["required"] == ["error"] and "field" in error["properties"]
    events = {v["title"] for v in schemas["Event"]["oneOf"]}
    assert {"page_view", "payment_missed", "consent_changed"} <= events
    assert spec["paths"]["/healthz"]["get"]["security"] == []


@pytest.mark.slow
@pytest.mark.integration
def test_schemathesis_finds_nothing_in_a_short_run(server, served, keys, tmp_path):
    """Every check of schemathesis, its fuzzing and stateful phases, a few examples per
    operation: no 5xx, every response as documented, no refused call wrote a row. The coverage
    phase (a minute and more of boundary cases) and erasure (it rewrites the served bank's
    sources, which the module's other tests read) are the benchmark's."""
    from tests.fuzz_env import fuzz

    run = fuzz(server.url, keys["fuzz"][0], served.work, tmp_path / "fuzz", max_examples=10, seed=3,
               phases="examples,fuzzing,stateful", exclude_methods=("DELETE",), timeout=300)
    (tmp_path / "fuzz" / "output.txt").write_text(run.output)
    assert run.requests > 100, run.output[-3000:]
    assert run.server_errors == 0 and run.violations == [], (run.statuses, run.violations)
    assert run.failures == [] and run.returncode == 0, run.output[-5000:]
    assert {"200", "400"} <= set(run.statuses)
