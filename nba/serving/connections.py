"""Keep-alive connections recycled after a number of requests, so workers share the load.

BentoML's workers share one listening socket, and a worker keeps each connection it accepts
for the connection's life. Clients that open their keep-alive connections together (a channel
app starting its pool, a load balancer) wake every worker at once, and the first awake accepts
the whole burst: measured with 16 clients and 2 workers, one worker often held all 16 and the
other stayed idle (their CPU over 8 s: 0.0 and 8.0 s), half the machine unused for as long as
the connections lived (`benchmarks/RESULTS.md`).

So, as nginx's `keepalive_requests` and Envoy's `max_requests_per_connection` do, the answer to
a connection's `NBA_SERVE_KEEPALIVE_REQUESTS`-th request says `connection: close` (uvicorn then
closes it once the answer is sent). The client opens a new connection, which the least busy
worker tends to accept first; every HTTP client does this by itself. At 100 requests a
reconnect on loopback costs about a microsecond per request.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

TRACKED = 8192  # connections counted at once; the oldest is forgotten first (it has gone, most likely)


class KeepAliveLimit:
    """ASGI middleware: `connection: close` on each connection's `limit`-th answer."""

    def __init__(self, app: Any, limit: int | None = None):
        if limit is None:
            from nba.settings import Settings

            limit = Settings().serve_keepalive_requests
        self.app = app
        self.limit = int(limit)
        self._served: OrderedDict[tuple[Any, ...], int] = OrderedDict()

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        client = scope.get("client")
        if scope.get("type") != "http" or not client or self.limit <= 0:
            await self.app(scope, receive, send)
            return
        key = (tuple(client), tuple(scope.get("server") or ()))
        n = self._served.pop(key, 0) + 1
        if n < self.limit:
            self._served[key] = n
            if len(self._served) > TRACKED:
                self._served.popitem(last=False)
            await self.app(scope, receive, send)
            return

        async def closing(message: dict) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"connection"]
                message = {**message, "headers": [*headers, (b"connection", b"close")]}
            await send(message)

        await self.app(scope, receive, closing)
