"""Token buckets in the worker's memory (the embedded profile)."""

from __future__ import annotations

import time
from collections.abc import Callable


class MemoryRateLimiter:
    """One bucket per key, refilled lazily on each take; a worker's event loop is its only user."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, at)

    def take_now(self, key: str, rate: float, burst: int) -> float:
        now = self._clock()
        tokens, at = self._buckets.get(key, (float(burst), now))
        tokens = min(float(burst), tokens + max(0.0, now - at) * rate)
        if tokens >= 1.0:
            self._buckets[key] = (tokens - 1.0, now)
            return 0.0
        self._buckets[key] = (tokens, now)
        return (1.0 - tokens) / rate

    async def take(self, key: str, rate: float, burst: int) -> float:
        return self.take_now(key, rate, burst)
