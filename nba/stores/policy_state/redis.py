"""Contact-policy state in Redis (the production profile)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from nba.stores.policy_state import Contact, PolicyStoreError, RawHistory, empty_raw, rows_to_raw


class RedisPolicyStore:
    """Contact-policy state in Redis: `<prefix>:c:<customer>` holds the contacts (a sorted set
    scored by time), `<prefix>:r:<customer>` the rejections; both expire `retention_s` after
    the last write, so the store holds no more than the policies look at."""

    def __init__(self, url: str, *, prefix: str = "nba:policy", retention_s: float = 400 * 86400.0):
        import redis

        self.url = url
        self.prefix = prefix
        self.retention_s = int(max(retention_s, 86400))
        self._redis = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=5)

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
        try:
            for start in range(0, len(uniq), 5_000):
                chunk = uniq[start:start + 5_000]
                pipe = self._redis.pipeline(transaction=False)
                for cid in chunk:
                    pipe.zrangebyscore(self._key("c", cid), f"({since}", "+inf", withscores=True)
                    pipe.zrangebyscore(self._key("r", cid), f"({since}", "+inf", withscores=True)
                replies = pipe.execute()
                for i, cid in enumerate(chunk):
                    for member, ts in replies[2 * i]:
                        _, action, group, channel = member.decode().split("|")
                        contacts.append((cid, action, group, channel, ts))
                    for member, ts in replies[2 * i + 1]:
                        _, action = member.decode().split("|")
                        rejects.append((cid, action, ts))
        except redis.RedisError as exc:
            raise PolicyStoreError(f"contact-policy store {self.url}: {exc}") from None
        return rows_to_raw(ids, contacts, rejects)

    def record_contacts(self, contacts: Sequence[Contact] | Sequence[tuple]) -> None:
        import redis

        try:
            for start in range(0, len(contacts), 10_000):
                pipe = self._redis.pipeline(transaction=False)
                # by position: a batch's contacts are plain tuples of the Contact fields
                for cid, action, group, channel, ts, did in contacts[start:start + 10_000]:
                    key = self._key("c", cid)
                    pipe.zadd(key, {f"{did}|{action}|{group}|{channel}": float(ts)})
                    pipe.zremrangebyscore(key, "-inf", float(ts) - self.retention_s)
                    pipe.expire(key, self.retention_s)
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

        keys = [self._key("c", customer_id), self._key("r", customer_id)]
        try:
            pipe = self._redis.pipeline(transaction=True)
            for k in keys:
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
