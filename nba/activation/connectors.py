"""Channel connectors: each sends a batch of one channel's outbox messages and says, per
message, whether it was delivered (and the receiver's answer) or why not.

* `WebhookConnector`: an HTTP POST of the message as JSON with an `Idempotency-Key` header,
  many in flight at once over kept-alive connections (one per sending thread). 2xx is
  delivered; 5xx, 408, 429, a timeout or no answer is a failure to retry; any other 4xx is
  permanent (the message is dead at once: resending will not change the answer).
* `RedisStreamConnector`: XADD to one stream per channel, pipelined; the entry id is the receipt.
* `FileConnector`: appends JSONL lines to one file per channel, fsynced before the batch counts
  as delivered (the embedded default).
* `NatsConnector`: a JetStream publish per message on one subject per channel, with the
  idempotency key as `Nats-Msg-Id` (the server drops duplicates within its window).

The worker (`nba.activation.worker`) retries and dead-letters; a connector only reports.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from nba.activation.config import Activation, FileSpec, NatsSpec, RedisStreamSpec, WebhookSpec
from nba.settings import Settings
from nba.stores.outbox import Message

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Result:
    ok: bool
    detail: str  # the receiver's answer, or the reason it failed
    permanent: bool = False  # retrying will not help: dead at once


class Connector(Protocol):
    kind: str
    target: str  # where it sends (for status and receipts)

    def send(self, messages: Sequence[Message]) -> list[Result]:
        """Deliver each message once; one result per message, in order. Never raises for a
        receiver's failure (a result says it)."""
        ...

    def close(self) -> None: ...


def _error(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"[:500]


# --- webhook ---------------------------------------------------------------------------


class WebhookConnector:
    kind = "webhook"

    def __init__(self, spec: WebhookSpec):
        import http.client

        self.spec = spec
        self.target = spec.url
        parts = urlsplit(spec.url)
        self._https = parts.scheme == "https"
        self._host = parts.hostname or ""
        self._port = parts.port or (443 if self._https else 80)
        self._path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self._http = http.client
        self._local = threading.local()
        self._conns: list[Any] = []
        self._conns_lock = threading.Lock()
        self._pool = ThreadPoolExecutor(spec.concurrency, thread_name_prefix="nba-webhook")
        self._headers = {"Content-Type": "application/json", **spec.headers}

    def _conn(self, fresh: bool = False) -> Any:
        conn = getattr(self._local, "conn", None)
        if conn is not None and not fresh:
            return conn
        if conn is not None:
            conn.close()
        cls = self._http.HTTPSConnection if self._https else self._http.HTTPConnection
        conn = cls(self._host, self._port, timeout=self.spec.timeout_s)
        self._local.conn = conn
        with self._conns_lock:
            self._conns.append(conn)
        return conn

    def _post(self, message: Message) -> Result:
        body = json.dumps(message.body()).encode()
        headers = {**self._headers, "Idempotency-Key": message.idempotency_key, "X-NBA-Channel": message.channel,
                   "X-NBA-Attempt": str(message.attempts + 1)}
        reused = getattr(self._local, "conn", None) is not None
        for attempt in (0, 1):  # a kept-alive connection the server closed: once more on a new one
            conn = self._conn(fresh=attempt == 1)
            try:
                conn.request("POST", self._path, body=body, headers=headers)
                resp = conn.getresponse()
                text = resp.read(2000).decode(errors="replace").strip()
                if resp.will_close:
                    conn.close()
                    self._local.conn = None
                break
            except (ConnectionResetError, BrokenPipeError, self._http.RemoteDisconnected,
                    self._http.CannotSendRequest, self._http.ResponseNotReady) as exc:
                conn.close()
                self._local.conn = None
                if attempt == 0 and reused:
                    continue
                return Result(False, f"no answer from {self.target}: {_error(exc)}")
            except (OSError, self._http.HTTPException) as exc:
                conn.close()
                self._local.conn = None
                return Result(False, f"no answer from {self.target}: {_error(exc)}")
        status = resp.status
        detail = f"HTTP {status}" + (f": {text[:200]}" if text and not 200 <= status < 300 else "")
        if 200 <= status < 300:
            return Result(True, detail)
        permanent = 400 <= status < 500 and status not in (408, 425, 429)
        return Result(False, detail, permanent)

    def send(self, messages: Sequence[Message]) -> list[Result]:
        return list(self._pool.map(self._post, messages))

    def worst_s(self, n: int) -> float:
        """How long n messages can take when every request times out (twice: the reconnect)."""
        return -(-n // self.spec.concurrency) * self.spec.timeout_s * 2

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        with self._conns_lock:
            for c in self._conns:
                c.close()
            self._conns.clear()


# --- Redis stream ------------------------------------------------------------------------


class RedisStreamConnector:
    kind = "redis_stream"

    def __init__(self, spec: RedisStreamSpec, url: str, stream: str):
        import redis

        self.spec = spec
        self.stream = stream
        self.target = f"{url} {stream}"
        self._client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)

    def send(self, messages: Sequence[Message]) -> list[Result]:
        import redis

        pipe = self._client.pipeline(transaction=False)
        for m in messages:
            fields = {"idempotency_key": m.idempotency_key, "decision_id": m.decision_id,
                      "customer_id": str(m.customer_id), "action_id": m.action_id, "channel": m.channel,
                      "attempt": str(m.attempts + 1), "payload": m.payload}
            pipe.xadd(self.stream, fields, maxlen=self.spec.maxlen, approximate=True)  # type: ignore[arg-type]
        try:
            answers = pipe.execute(raise_on_error=False)
        except (redis.RedisError, OSError) as exc:
            return [Result(False, f"Redis {self.target}: {_error(exc)}")] * len(messages)
        out = []
        for a in answers:
            if isinstance(a, Exception):
                out.append(Result(False, f"Redis {self.target}: {_error(a)}"))
            else:
                out.append(Result(True, f"{self.stream} {a.decode() if isinstance(a, bytes) else a}"))
        return out

    def close(self) -> None:
        self._client.close()


# --- file --------------------------------------------------------------------------------


class FileConnector:
    kind = "file"

    def __init__(self, path: Path):
        self.path = Path(path)
        self.target = str(self.path)

    def send(self, messages: Sequence[Message]) -> list[Result]:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "ab") as f:
                start = f.tell()
                f.write(b"".join(json.dumps(m.body(), sort_keys=True).encode() + b"\n" for m in messages))
                f.flush()
                os.fsync(f.fileno())
        except OSError as exc:
            return [Result(False, f"{self.path}: {_error(exc)}")] * len(messages)
        return [Result(True, f"{self.path.name} from byte {start}")] * len(messages)

    def close(self) -> None:
        pass


# --- NATS JetStream ----------------------------------------------------------------------


class NatsConnector:
    """JetStream publishes from a private event loop thread (nats-py is asyncio)."""

    kind = "nats"

    def __init__(self, spec: NatsSpec, subject: str, stream_subjects: Sequence[str] = ()):
        import asyncio

        self.spec = spec
        self.subject = subject
        # every channel's subject on this stream: whichever connector creates the stream
        # creates it whole, so the channels never race to add their subjects one by one
        self.stream_subjects = list(dict.fromkeys([*stream_subjects, subject]))
        self.target = f"{spec.url} {subject}"
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="nba-nats", daemon=True)
        self._thread.start()
        self._nc: Any = None
        self._js: Any = None

    def _run(self, coro: Any) -> Any:
        import asyncio

        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(self.spec.timeout_s * 4 + 10)

    async def _connect(self) -> None:
        import nats
        from nats.js.errors import APIError, NotFoundError

        if self._nc is not None and self._nc.is_connected:
            return
        self._nc = await nats.connect(self.spec.url, connect_timeout=self.spec.timeout_s, max_reconnect_attempts=1,
                                      allow_reconnect=False)
        self._js = self._nc.jetstream(timeout=self.spec.timeout_s)
        for attempt in range(5):  # the connectors of other channels may be adding their subjects meanwhile
            try:
                try:
                    info = await self._js.stream_info(self.spec.stream)
                except NotFoundError:
                    await self._js.add_stream(name=self.spec.stream, subjects=self.stream_subjects)
                    return
                if not any(_subject_matches(s, self.subject) for s in info.config.subjects or []):
                    config = info.config
                    config.subjects = [*(config.subjects or []), self.subject]
                    await self._js.update_stream(config)
                return
            except APIError:
                if attempt == 4:
                    raise

    async def _publish(self, messages: Sequence[Message]) -> list[Result]:
        import asyncio

        try:
            await self._connect()
        except Exception as exc:
            self._nc = None
            return [Result(False, f"NATS {self.spec.url}: {_error(exc)}")] * len(messages)

        async def one(m: Message) -> Result:
            try:
                ack = await self._js.publish(self.subject, json.dumps(m.body()).encode(),
                                             headers={"Nats-Msg-Id": m.idempotency_key})
            except Exception as exc:
                return Result(False, f"NATS {self.target}: {_error(exc)}")
            return Result(True, f"{ack.stream} seq {ack.seq}" + (" (duplicate)" if ack.duplicate else ""))

        return list(await asyncio.gather(*(one(m) for m in messages)))

    def send(self, messages: Sequence[Message]) -> list[Result]:
        try:
            return self._run(self._publish(messages))
        except Exception as exc:  # the loop timed out: nothing is known delivered
            return [Result(False, f"NATS {self.target}: {_error(exc)}")] * len(messages)

    def close(self) -> None:
        async def drain() -> None:
            if self._nc is not None and self._nc.is_connected:
                await self._nc.drain()

        try:
            self._run(drain())
        except Exception as exc:  # closing: nothing left to deliver
            logger.debug("closing the NATS connection: %s", exc)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)


def _subject_matches(pattern: str, subject: str) -> bool:
    p, s = pattern.split("."), subject.split(".")
    for i, tok in enumerate(p):
        if tok == ">":
            return len(s) > i
        if i >= len(s) or (tok != "*" and tok != s[i]):
            return False
    return len(p) == len(s)


# --- building ------------------------------------------------------------------------------


def build_connectors(activation: Activation, settings: Settings) -> dict[str, Connector]:
    """One connector per outbound channel (webhooks to the same URL share one)."""
    out: dict[str, Connector] = {}
    hooks: dict[tuple, WebhookConnector] = {}
    nats_subjects: dict[tuple[str, str], list[str]] = {}
    for channel, spec in activation.channels.items():
        if isinstance(spec, NatsSpec):
            nats_subjects.setdefault((spec.url, spec.stream), []).append(_nats_subject(spec, channel))
    for channel, spec in activation.channels.items():
        if isinstance(spec, WebhookSpec):
            key = (spec.url, spec.timeout_s, spec.concurrency, tuple(sorted(spec.headers.items())))
            if key not in hooks:
                hooks[key] = WebhookConnector(spec)
            out[channel] = hooks[key]
        elif isinstance(spec, RedisStreamSpec):
            out[channel] = RedisStreamConnector(spec, spec.url or settings.redis_url,
                                                spec.stream or f"{settings.redis_prefix}:activation:{channel}")
        elif isinstance(spec, FileSpec):
            out[channel] = FileConnector(settings.path(spec.path) if spec.path
                                         else settings.activation_dir / f"{channel}.jsonl")
        elif isinstance(spec, NatsSpec):
            out[channel] = NatsConnector(spec, _nats_subject(spec, channel), nats_subjects[(spec.url, spec.stream)])
    return out


def _nats_subject(spec: NatsSpec, channel: str) -> str:
    return spec.subject or f"nba.activation.{channel}"


def close_all(connectors: Mapping[str, Connector]) -> None:
    for c in {id(c): c for c in connectors.values()}.values():
        try:
            c.close()
        except Exception as exc:  # closing: log it, close the others
            logger.warning("closing the %s connector %s: %s", c.kind, c.target, exc)
