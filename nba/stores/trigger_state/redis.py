"""Trigger state in Redis (the production profile)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from nba.stores.trigger_state import Fire, TriggerStoreError

# record the firing unless the last one is within the window: atomic, so two replicas handling
# two events of one customer start one decision
# (or when it is the same event's: its triggers run again after a restart); KEYS[2] holds the
# event of each last firing ('' for a scan)
_CLAIM = """
local last = redis.call('HGET', KEYS[1], ARGV[1])
if last and (tonumber(ARGV[2]) - tonumber(last)) < tonumber(ARGV[3]) then
  if ARGV[4] == '' or redis.call('HGET', KEYS[2], ARGV[1]) ~= ARGV[4] then return 0 end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[4])
return 1
"""


class RedisTriggerStore:
    """`<prefix>:<trigger>` is a hash: customer -> epoch seconds of the trigger's last firing."""

    def __init__(self, url: str, *, prefix: str = "nba:trigger"):
        import redis

        self.url = url
        self.prefix = prefix
        self._redis = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=5)
        self._claim = self._redis.register_script(_CLAIM)

    def _key(self, trigger_id: str) -> str:
        return f"{self.prefix}:{trigger_id}"

    def _event_key(self, trigger_id: str) -> str:
        return f"{self.prefix}:{trigger_id}:event"

    def last_fired(self, customer_ids: Sequence[int] | np.ndarray, trigger_ids: Sequence[str]) -> np.ndarray:
        import redis

        ids = np.asarray(customer_ids, dtype=np.int64)
        out = np.full((ids.size, len(trigger_ids)), np.nan)
        if not ids.size or not trigger_ids:
            return out
        try:
            for start in range(0, ids.size, 10_000):
                part = ids[start:start + 10_000].tolist()
                pipe = self._redis.pipeline(transaction=False)
                for t in trigger_ids:
                    pipe.hmget(self._key(t), part)
                for j, values in enumerate(pipe.execute()):
                    out[start:start + len(part), j] = [np.nan if v is None else float(v) for v in values]
        except redis.RedisError as exc:
            raise TriggerStoreError(f"trigger store {self.url}: {exc}") from None
        return out

    def fired_by(self, customer_ids: Sequence[int] | np.ndarray, trigger_ids: Sequence[str]) -> np.ndarray:
        import redis

        ids = np.asarray(customer_ids, dtype=np.int64)
        out = np.full((ids.size, len(trigger_ids)), None, dtype=object)
        if not ids.size or not trigger_ids:
            return out
        try:
            pipe = self._redis.pipeline(transaction=False)
            for t in trigger_ids:
                pipe.hmget(self._event_key(t), ids.tolist())
            for j, values in enumerate(pipe.execute()):
                out[:, j] = [v.decode() if v else None for v in values]
        except redis.RedisError as exc:
            raise TriggerStoreError(f"trigger store {self.url}: {exc}") from None
        return out

    def claim(self, fires: Sequence[Fire]) -> list[bool]:
        import redis

        try:
            pipe = self._redis.pipeline(transaction=False)
            for f in fires:
                self._claim(keys=[self._key(f.trigger_id), self._event_key(f.trigger_id)],
                            args=[int(f.customer_id), float(f.fired_at), float(f.window_s), f.event_id or ""],
                            client=pipe)
            return [bool(r) for r in pipe.execute()] if fires else []
        except redis.RedisError as exc:
            raise TriggerStoreError(f"trigger store {self.url}: {exc}") from None

    def erase_customer(self, customer_id: int) -> int:
        n = 0
        for key in self._redis.scan_iter(match=f"{self.prefix}:*", count=1000):
            gone = int(self._redis.hdel(key, str(int(customer_id))))
            n += 0 if key.decode().endswith(":event") else gone  # firings, not their event ids
        return n

    def clear(self) -> int:
        keys = list(self._redis.scan_iter(match=f"{self.prefix}:*", count=1000))
        return int(self._redis.delete(*keys)) if keys else 0

    def ping(self) -> None:
        import redis

        try:
            self._redis.ping()
        except redis.RedisError as exc:
            raise TriggerStoreError(f"trigger store {self.url}: {exc}") from None

    def close(self) -> None:
        self._redis.close()
