"""Token buckets in Redis (the production profile): `<prefix>:<key>` is a hash (tokens, at);
one Lua script refills and takes atomically on Redis' own clock, so replicas on machines
whose clocks differ share one bucket exactly. A bucket expires once it would be full again."""

from __future__ import annotations

from typing import Any

from nba.stores.ratelimit import RateLimitError

TAKE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local s = redis.call('HMGET', KEYS[1], 'n', 'at')
local n = tonumber(s[1])
local at = tonumber(s[2])
if n == nil then n = burst; at = now end
n = math.min(burst, n + math.max(0, now - at) * rate)
local wait = 0
if n >= 1 then n = n - 1 else wait = (1 - n) / rate end
redis.call('HSET', KEYS[1], 'n', tostring(n), 'at', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return tostring(wait)
"""


class RedisRateLimiter:
    def __init__(self, url: str, *, prefix: str = "nba:ratelimit"):
        self.url = url
        self.prefix = prefix
        self._client: Any = None
        self._script: Any = None

    def _connect(self) -> Any:
        if self._script is None:
            import redis.asyncio as aioredis

            self._client = aioredis.Redis.from_url(self.url, socket_connect_timeout=2, socket_timeout=2)
            self._script = self._client.register_script(TAKE)
        return self._script

    async def take(self, key: str, rate: float, burst: int) -> float:
        import redis

        try:
            wait = await self._connect()(keys=[f"{self.prefix}:{key}"], args=[rate, burst])
        except (redis.RedisError, OSError) as exc:
            raise RateLimitError(f"rate limiter: Redis at {self.url} did not answer ({exc}); "
                                 "check that it runs (NBA_REDIS_URL)") from None
        return float(wait)

    async def clear(self) -> None:
        self._connect()
        async for k in self._client.scan_iter(match=f"{self.prefix}:*"):
            await self._client.delete(k)
