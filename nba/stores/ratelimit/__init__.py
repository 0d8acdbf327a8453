"""Rate limits per API key: a token bucket per key, `rate` tokens a second up to `burst`; a
request takes one token, or is refused with the seconds until one is there.

    memory.py  in the worker's memory (embedded: each worker holds its own buckets)
    redis.py   in Redis, one Lua script per request: every worker of every replica shares them
"""

from __future__ import annotations

from typing import Protocol

from nba.errors import NbaError


class RateLimitError(NbaError):
    """The rate limiter's store is down."""

    exit_code = 3


class RateLimiter(Protocol):
    async def take(self, key: str, rate: float, burst: int) -> float:
        """Take one token of `key`'s bucket: 0.0 if there was one, else the seconds to wait."""
        ...


def rate_limiter(kind: str, *, redis_url: str = "", prefix: str = "nba") -> RateLimiter:
    if kind == "redis":
        from nba.stores.ratelimit.redis import RedisRateLimiter

        return RedisRateLimiter(redis_url, prefix=f"{prefix}:ratelimit")
    from nba.stores.ratelimit.memory import MemoryRateLimiter

    return MemoryRateLimiter()
