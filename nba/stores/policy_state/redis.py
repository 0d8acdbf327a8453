"""Contact-policy state in Redis (the production profile)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from nba.stores.policy_state import (
    Contact,
    PolicyStoreError,
    RawHistory,
    contact_customers,
    empty_raw,
    rows_to_raw,
)

# KEYS: per customer its version and contacts keys; ARGV: retention, then per customer the
# version read, its number of contacts and their (member, score) pairs. All or nothing: the
# script runs alone on the server, so no other decision's contacts land between check and record.
_RESERVE = """
local retention = tonumber(ARGV[1])
local i = 2
for k = 1, #KEYS, 2 do
  local v = tonumber(redis.call('GET', KEYS[k]) or '0')
  if v ~= tonumber(ARGV[i]) then return 0 end
  i = i + 2 + 2 * tonumber(ARGV[i + 1])
end
i = 2
for k = 1, #KEYS, 2 do
  local n = tonumber(ARGV[i + 1])
  for j = 0, n - 1 do
    local score = tonumber(ARGV[i + 3 + 2 * j])
    redis.call('ZADD', KEYS[k + 1], score, ARGV[i + 2 + 2 * j])
    redis.call('ZREMRANGEBYSCORE', KEYS[k + 1], '-inf', score - retention)
  end
  redis.call('EXPIRE', KEYS[k + 1], retention)
  redis.call('INCR', KEYS[k])
  redis.call('EXPIRE', KEYS[k], retention)
  i = i + 2 + 2 * n
end
return 1
"""


class RedisPolicyStore:
    """Contact-policy state in Redis: `<prefix>:c:<customer>` holds the contacts (a sorted set
    scored by time), `<prefix>:r:<customer>` the rejections, `<prefix>:v:<customer>` the state's
    version; all expire `retention_s` after the last write, so the store holds no more than the
    policies look at."""

    def __init__(self, url: str, *, prefix: str = "nba:policy", retention_s: float = 400 * 86400.0):
        import redis

        self.url = url
        self.prefix = prefix
        self.retention_s = int(max(retention_s, 86400))
        self._redis = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=5)
        self._reserve = self._redis.register_script(_RESERVE)

    def _key(self, kind: str, customer_id: int) -> str:
        return f"{self.prefix}:{kind}:{int(customer_id)}"

    def history(self, customer_ids: Sequence[int] | np.ndarray, since: float) -> RawHistory:
        import redis

        ids = np.asarray(customer_ids, dtype=np.int64)
        if ids.size == 0:
            return empty_raw()
        uniq = sorted(set(ids.tolist()))
        contacts: list[tuple] = []
        rejects: list[tuple] = []
        versions: dict[int, int] = {}
        try:
            for start in range(0, len(uniq), 5_000):
                chunk = uniq[start:start + 5_000]
                pipe = self._redis.pipeline(transaction=False)
                # the versions first (commands run in order): a write in between makes them look old
                for cid in chunk:
                    pipe.get(self._key("v", cid))
                for cid in chunk:
                    pipe.zrangebyscore(self._key("c", cid), f"({since}", "+inf", withscores=True)
                    pipe.zrangebyscore(self._key("r", cid), f"({since}", "+inf", withscores=True)
                replies = pipe.execute()
                m = len(chunk)
                for i, cid in enumerate(chunk):
                    if replies[i] is not None:
                        versions[cid] = int(replies[i])
                    for member, ts in replies[m + 2 * i]:
                        _, action, group, channel = member.decode().split("|")
                        contacts.append((cid, action, group, channel, ts))
                    for member, ts in replies[m + 2 * i + 1]:
                        _, action = member.decode().split("|")
                        rejects.append((cid, action, ts))
        except redis.RedisError as exc:
            raise PolicyStoreError(f"contact-policy store {self.url}: {exc}") from None
        return rows_to_raw(ids, contacts, rejects, versions)

    def record_contacts(self, contacts: Sequence[Contact] | Sequence[tuple]) -> None:
        import redis

        try:
            for start in range(0, len(contacts), 10_000):
                pipe = self._redis.pipeline(transaction=False)
                # by position: a batch's contacts are plain tuples of the Contact fields
                part = contacts[start:start + 10_000]
                for cid, action, group, channel, ts, did in part:
                    key = self._key("c", cid)
                    pipe.zadd(key, {f"{did}|{action}|{group}|{channel}": float(ts)})
                    pipe.zremrangebyscore(key, "-inf", float(ts) - self.retention_s)
                    pipe.expire(key, self.retention_s)
                for cid in contact_customers(part):
                    pipe.incr(self._key("v", cid))
                    pipe.expire(self._key("v", cid), self.retention_s)
                pipe.execute()
        except redis.RedisError as exc:
            raise PolicyStoreError(f"contact-policy store {self.url}: {exc}") from None

    def reserve(self, contacts: Sequence[Contact] | Sequence[tuple], versions: dict[int, int]) -> bool:
        import redis

        if not contacts:
            return True
        by_customer: dict[int, list[tuple]] = {}
        for c in contacts:
            by_customer.setdefault(int(c[0]), []).append(c)
        keys: list[str] = []
        args: list[Any] = [self.retention_s]
        for cid, cs in by_customer.items():
            keys += [self._key("v", cid), self._key("c", cid)]
            args += [int(versions.get(cid, 0)), len(cs)]
            for _, action, group, channel, ts, did in cs:
                args += [f"{did}|{action}|{group}|{channel}", float(ts)]
        try:
            return bool(self._reserve(keys=keys, args=args))
        except redis.RedisError as exc:
            raise PolicyStoreError(f"contact-policy store {self.url}: {exc}") from None

    def release(self, contacts: Sequence[Contact] | Sequence[tuple]) -> None:
        import redis

        if not contacts:
            return
        try:
            pipe = self._redis.pipeline(transaction=True)
            for cid, action, group, channel, _ts, did in contacts:
                pipe.zrem(self._key("c", cid), f"{did}|{action}|{group}|{channel}")
            for cid in contact_customers(contacts):
                pipe.incr(self._key("v", cid))
            pipe.execute()
        except redis.RedisError as exc:
            raise PolicyStoreError(f"contact-policy store {self.url}: {exc}") from None

    def record_rejection(self, customer_id: int, action_id: str, ts: float, decision_id: str) -> None:
        import redis

        key = self._key("r", customer_id)
        try:
            pipe = self._redis.pipeline(transaction=False)
            pipe.zadd(key, {f"{decision_id}|{action_id}": float(ts)})
            pipe.expire(key, self.retention_s)
            pipe.incr(self._key("v", customer_id))
            pipe.expire(self._key("v", customer_id), self.retention_s)
            pipe.execute()
        except redis.RedisError as exc:
            raise PolicyStoreError(f"contact-policy store {self.url}: {exc}") from None

    def ping(self) -> None:
        import redis

        try:
            self._redis.ping()
        except redis.RedisError as exc:
            raise PolicyStoreError(f"contact-policy store {self.url}: {exc}") from None

    def erase_customer(self, customer_id: int) -> int:
        """Delete the customer's contacts and rejections; returns how many entries they held."""
        import redis

        keys = [self._key("c", customer_id), self._key("r", customer_id), self._key("v", customer_id)]
        try:
            pipe = self._redis.pipeline(transaction=True)
            for k in keys[:2]:
                pipe.zcard(k)
            pipe.delete(*keys)
            replies = pipe.execute()
        except redis.RedisError as exc:
            raise PolicyStoreError(f"contact-policy store {self.url}: {exc}") from None
        return int(sum(replies[:2]))

    def clear(self) -> int:
        """Delete every key under the prefix (tests, and a reset of a staging store)."""
        keys = list(self._redis.scan_iter(f"{self.prefix}:*", count=1000))
        return int(self._redis.delete(*keys)) if keys else 0

    def close(self) -> None:
        self._redis.close()
